"""Retry budget: retries stay a bounded fraction of requests (Finagle's RetryBudget).

Theory of operation
-------------------
Per-call retry limits multiply under load: when a dependency fails, every caller retries, and
the dependency sees several times the offered load just when it can least take it.  A retry
budget is shared by every call to one service and caps retries *in aggregate*: each request
*deposits* into it, each retry must *withdraw* from it, and deposits expire after ``ttl``.
With ``retry_ratio`` 0.2, five requests pay for one retry, so a dependency that fails every
call sees at most 1.2 times the offered load (plus a small floor), never a retry storm.  A
floor of ``min_retries_per_s * ttl`` retries is always available so a service with little
traffic, or one that has just started, can still retry.

This follows Finagle's ``RetryBudget`` (``ttl`` 10 s, ``minRetriesPerSec`` 10,
``percentCanRetry`` 0.2, which we call ``retry_ratio``): Finagle keeps a leaky token bucket
over a windowed counter in which deposits add tokens, withdrawals subtract them, and both
expire after ``ttl``.  We do the same with exact integer arithmetic: a retry costs
``SCALE`` units, a deposit earns ``floor(retry_ratio * SCALE)`` units and the floor is
``floor(min_retries_per_s * ttl * SCALE)`` units, all computed once with exact fractions, so
rounding can only make the budget stricter, never looser.

Time is cut into ``BUCKETS`` buckets of ``ttl / BUCKETS`` seconds, kept in a ring of
``BUCKETS + 1`` slots with running sums, so every operation is O(1) amortised and memory is
fixed whatever the traffic.  Bucketing is *conservative* so the guarantee holds in real time,
not just in buckets: a deposit counts only while its bucket is among the newest ``BUCKETS``
(all of them lie inside the last ``ttl`` seconds), and a withdrawal is remembered one bucket
longer (the newest ``BUCKETS + 1`` cover the last ``ttl`` seconds).  Hence the invariant,
checked by the stateful tests:

    whenever a retry is granted at time t, counting it,
    retries in (t - ttl, t]  <=  retry_ratio * requests in (t - ttl, t]  +  min_retries_per_s * ttl

and therefore over any window of ``ttl`` seconds, retries <= ``retry_ratio`` x requests in that
window and the ``ttl`` before it + ``min_retries_per_s * ttl``.  (No online budget can bound
retries by the requests of the *same* arbitrary window: requests just before it legitimately
pay for retries inside it.)  The price of conservatism is that a deposit may count for as
little as ``ttl * (BUCKETS - 1) / BUCKETS``.

``now`` is any monotonic clock in seconds.  A ``now`` earlier than one already seen counts as
the latest time seen, so a clock that steps back cannot resurrect expired deposits.
"""

from __future__ import annotations

import datetime
import math
from fractions import Fraction
from typing import TYPE_CHECKING, Final

import attrs
import msgspec

from actors._errors import ConfigError
from actors._policies._backoff import _duration, _number

__all__ = ["BUCKETS", "SCALE", "BudgetSettings", "BudgetStatistics", "RetryBudget"]

#: Number of time buckets per ``ttl`` (as Finagle's windowed adder).
BUCKETS: Final = 10

#: Units one retry costs; deposits and the floor are rounded down to whole units.
SCALE: Final = 1_000_000

#: Upper limit of ``retry_ratio`` (Finagle's ``percentCanRetry`` allows up to 1000 too).
MAX_RETRY_RATIO: Final = 1000.0


class BudgetSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Settings of a :class:`RetryBudget` (Finagle's defaults).

    Attributes:
        ttl: seconds a deposit stays in the budget (default 10.0, > 0).
        min_retries_per_s: retries always allowed per second, on top of the ratio (default
            10.0, >= 0); the floor is ``min_retries_per_s * ttl`` retries per ``ttl``.
        retry_ratio: retries each request pays for (default 0.2, in ``[0, 1000]``); Finagle
            calls it ``percentCanRetry``.  0.2 means one retry per five requests.

    With both ``min_retries_per_s`` and ``retry_ratio`` at 0 the budget never allows a retry.
    ``ttl`` accepts float seconds or :class:`datetime.timedelta`.  Invalid values raise
    :class:`~actors._errors.ConfigError` naming the field.
    """

    ttl: float = 10.0
    min_retries_per_s: float = 10.0
    retry_ratio: float = 0.2

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            ttl: float | datetime.timedelta = ...,
            min_retries_per_s: float = ...,
            retry_ratio: float = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        _duration(self, "ttl", positive=True)
        if _number(self, "min_retries_per_s") < 0.0:
            raise ConfigError(
                f"must be >= 0, got {self.min_retries_per_s:g}", path="min_retries_per_s"
            )
        ratio = _number(self, "retry_ratio")
        if not 0.0 <= ratio <= MAX_RETRY_RATIO:
            raise ConfigError(
                f"must be between 0 and {MAX_RETRY_RATIO:g} (retries per request), got {ratio:g}",
                path="retry_ratio",
            )


@attrs.frozen
class BudgetStatistics:
    """A snapshot of a :class:`RetryBudget`, as of the latest time it was given.

    Attributes:
        balance: retries that could be made now.
        deposits_in_window: requests still counted (their bucket is among the newest).
        withdrawals_in_window: retries still remembered.
        total_deposits: requests since creation.
        total_withdrawals: retries granted since creation.
        total_rejections: retries refused since creation.
    """

    balance: int
    deposits_in_window: int
    withdrawals_in_window: int
    total_deposits: int
    total_withdrawals: int
    total_rejections: int


class RetryBudget:
    """A Finagle-style retry budget shared by every call to one service.

    Call :meth:`deposit` once per request (first attempt) and :meth:`try_withdraw` before each
    retry: it returns ``True`` and spends one retry when the budget allows it, ``False`` (and
    changes nothing) otherwise.  See the module docstring for the guarantee.

    Example::

        budget = RetryBudget(BudgetSettings(retry_ratio=0.1, min_retries_per_s=0))
        for _ in range(10):
            budget.deposit(now)
        budget.try_withdraw(now)  # True: ten requests pay for one retry
        budget.try_withdraw(now)  # False
    """

    __slots__ = (
        "_bucket",
        "_current",
        "_dep",
        "_deposit_units",
        "_edge",
        "_reserve",
        "_total_deposits",
        "_total_rejections",
        "_total_withdrawals",
        "_units",
        "_wd",
        "_width",
        "settings",
    )

    settings: BudgetSettings

    def __init__(self, settings: BudgetSettings | None = None) -> None:
        self.settings = settings = BudgetSettings() if settings is None else settings
        ttl = Fraction(settings.ttl)
        self._deposit_units = math.floor(Fraction(settings.retry_ratio) * SCALE)
        self._reserve = math.floor(Fraction(settings.min_retries_per_s) * ttl * SCALE)
        self._width = settings.ttl / BUCKETS
        # Ring of BUCKETS + 1 slots; slot i holds the counts of one bucket.  _bucket is the
        # number of the newest bucket (None before the first call), _current its slot, _edge
        # the time at which the next bucket starts.
        # _units is the balance in units: the reserve, plus deposit_units for each deposit in
        # the newest BUCKETS slots, minus SCALE for each withdrawal in all BUCKETS + 1 slots.
        self._dep = [0] * (BUCKETS + 1)
        self._wd = [0] * (BUCKETS + 1)
        self._units = self._reserve
        self._bucket: int | None = None
        self._current = 0
        self._edge = -math.inf
        self._total_deposits = 0
        self._total_withdrawals = 0
        self._total_rejections = 0

    def _advance(self, now: float) -> None:
        bucket = math.floor(now / self._width)
        previous = self._bucket
        if previous is not None and bucket <= previous:
            return  # the clock stepped back or rounding put us at the edge: stay put
        self._edge = (bucket + 1) * self._width
        slots = BUCKETS + 1
        if previous is None or bucket - previous >= slots:
            self._dep = [0] * slots
            self._wd = [0] * slots
            self._units = self._reserve
            self._bucket = bucket
            self._current = bucket % slots
            return
        dep, wd = self._dep, self._wd
        current = self._current
        units = self._units
        for _ in range(bucket - previous):
            current = (current + 1) % slots
            # The slot being reused held the oldest remembered bucket: its withdrawals leave
            # the window now; its deposits left one bucket ago.  The next slot's deposits
            # (the new oldest bucket) stop counting now.
            units += SCALE * wd[current]
            wd[current] = 0
            dep[current] = 0
            units -= self._deposit_units * dep[(current + 1) % slots]
        self._units = units
        self._current = current
        self._bucket = bucket

    def deposit(self, now: float) -> None:
        """Record one request (a first attempt) at time ``now``."""
        if now >= self._edge:
            self._advance(now)
        self._dep[self._current] += 1
        self._units += self._deposit_units
        self._total_deposits += 1

    def try_withdraw(self, now: float) -> bool:
        """Spend one retry if the budget allows it at ``now``; return whether it did.

        A refusal changes nothing but the rejection count.
        """
        if now >= self._edge:
            self._advance(now)
        if self._units >= SCALE:
            self._wd[self._current] += 1
            self._units -= SCALE
            self._total_withdrawals += 1
            return True
        self._total_rejections += 1
        return False

    def balance(self, now: float) -> int:
        """How many retries could be made at ``now`` (never negative)."""
        if now >= self._edge:
            self._advance(now)
        return max(0, self._units // SCALE)

    def _window(self) -> tuple[int, int]:
        """(deposits, withdrawals) still counted."""
        oldest = (self._current + 1) % (BUCKETS + 1)
        return sum(self._dep) - self._dep[oldest], sum(self._wd)

    def statistics(self) -> BudgetStatistics:
        """Counts and balance as of the latest ``now`` this budget was given."""
        deposits, withdrawals = self._window()
        return BudgetStatistics(
            balance=max(0, self._units // SCALE),
            deposits_in_window=deposits,
            withdrawals_in_window=withdrawals,
            total_deposits=self._total_deposits,
            total_withdrawals=self._total_withdrawals,
            total_rejections=self._total_rejections,
        )

    def __repr__(self) -> str:
        return f"<RetryBudget {self.settings!r} balance={max(0, self._units // SCALE)}>"
