"""Retry policy: whether, and when, to try a failed call again.

Theory of operation
-------------------
A :class:`RetryPolicy` belongs to one provider and is shared by all its calls; it holds the
:class:`RetrySettings`, a :class:`~actors.Backoff` and, optionally, the provider's
:class:`~actors.RetryBudget`.  Each call gets its own small :class:`RetryState` from
:meth:`RetryPolicy.begin`, and the trio shell drives it::

    state = policy.begin(now, deadline)           # counts one request in the budget
    while True:
        timeout = state.attempt_timeout(now)      # min(attempt timeout, time to the deadline)
        try:
            return await attempt(timeout)
        except ProviderError as exc:
            decision = state.on_failure(now, exc.category, exc.retry_after)
            if isinstance(decision, GiveUp):
                raise ...                         # see decision.reason
            await sleep(decision.delay)

:meth:`RetryState.on_failure` answers with a :class:`RetryAt` or a :class:`GiveUp`; the checks
run in this order, and the first that fails names the reason:

1. ``not_transient``: the failure's category is not in ``retry_on`` (by default the transient
   categories of :data:`~actors._errors.CATEGORY_INFO`: timeout, network, rate_limit,
   dependency);
2. ``attempts_exhausted``: ``max_attempts`` attempts (the first included) have been made;
3. ``deadline``: waiting the next delay (backoff, or the provider's longer Retry-After) would
   reach the call's deadline, so there is no time left for another attempt: stop now rather
   than sleep and fail anyway;
4. ``budget``: the provider's retry budget refuses the retry.  The budget is asked last, so a
   retry that would be refused anyway spends nothing.

A call's deadline is the earlier of the caller's deadline and ``now + total_timeout``.  A
:class:`RetryState` that gave up is finished: using it again raises :class:`RuntimeError`.

Nothing here sleeps or reads a clock: time is the ``now`` argument (seconds, any monotonic
origin), the random source of the jitter is injected, so decisions are replayable.
"""

from __future__ import annotations

import datetime
import enum
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import attrs
import msgspec

from actors._errors import ConfigError, ErrorCategory
from actors._policies._backoff import (
    Backoff,
    BackoffKind,
    BackoffSettings,
    Jitter,
    RandomSource,
    _duration,
    _integer,
    _optional_duration,
    _set,
)
from actors._policies._budget import RetryBudget

__all__ = [
    "RETRY_PRESETS",
    "TRANSIENT_CATEGORIES",
    "GiveUp",
    "GiveUpReason",
    "RetryAt",
    "RetryPolicy",
    "RetrySettings",
    "RetryState",
    "RetryStatistics",
]

#: The categories that retry by default: those whose :attr:`ErrorCategory.transient` is true.
TRANSIENT_CATEGORIES: Final[frozenset[ErrorCategory]] = frozenset(
    category for category in ErrorCategory if category.transient
)


class RetrySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How one provider's calls are retried.

    Attributes:
        max_attempts: attempts per call, the first included (default 3, >= 1; 1 disables
            retries).
        retry_on: the error categories that are retried (default
            :data:`TRANSIENT_CATEGORIES`); accepts category names.
        attempt_timeout: seconds one attempt may take (default 10.0, > 0), capped by the time
            left to the call's deadline.
        total_timeout: seconds from the first attempt after which no retry starts (default
            60.0, > 0), or ``None`` for no overall limit (attempts are still bounded by
            ``max_attempts * attempt_timeout`` plus the delays).  TOML has no null, so a file
            can only set a number.
        backoff: the delays between attempts (default :class:`BackoffSettings`).

    Durations accept float seconds or :class:`datetime.timedelta`.  Invalid values raise
    :class:`~actors._errors.ConfigError` naming the field.
    """

    max_attempts: int = 3
    retry_on: frozenset[ErrorCategory] = TRANSIENT_CATEGORIES
    attempt_timeout: float = 10.0
    total_timeout: float | None = 60.0
    backoff: BackoffSettings = BackoffSettings()

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            max_attempts: int = ...,
            retry_on: Iterable[ErrorCategory | str] = ...,
            attempt_timeout: float | datetime.timedelta = ...,
            total_timeout: float | datetime.timedelta | None = ...,
            backoff: BackoffSettings = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        _integer(self, "max_attempts", minimum=1)
        _duration(self, "attempt_timeout", positive=True)
        _optional_duration(self, "total_timeout", positive=True)
        if not isinstance(self.backoff, BackoffSettings):
            raise ConfigError(
                f"must be BackoffSettings, not {type(self.backoff).__name__}", path="backoff"
            )
        retry_on: object = self.retry_on
        if isinstance(retry_on, str | bytes) or not isinstance(retry_on, Iterable):
            raise ConfigError(
                f"must be a collection of category names, not {type(retry_on).__name__}",
                path="retry_on",
            )
        categories = set()
        for item in retry_on:
            try:
                categories.add(item if isinstance(item, ErrorCategory) else ErrorCategory(item))
            except ValueError:
                names = ", ".join(repr(c.value) for c in ErrorCategory)
                raise ConfigError(
                    f"unknown error category {item!r}; expected one of {names}", path="retry_on"
                ) from None
        if not isinstance(retry_on, frozenset) or len(categories) != len(retry_on):
            _set(self, "retry_on", frozenset(categories))


def _exponential(attempts: int, base: float) -> RetrySettings:
    return RetrySettings(
        max_attempts=attempts,
        backoff=BackoffSettings(kind=BackoffKind.EXPONENTIAL, base_delay=base, jitter=Jitter.FULL),
    )


RETRY_PRESETS: Final[Mapping[str, RetrySettings]] = MappingProxyType(
    {
        "openai": _exponential(4, 2.0),
        "anthropic": _exponential(4, 2.0),
        "ollama": RetrySettings(
            max_attempts=3,
            backoff=BackoffSettings(kind=BackoffKind.CONSTANT, base_delay=0.1, jitter=Jitter.NONE),
        ),
        "default": _exponential(3, 1.0),
    }
)
"""The built-in per-provider retry table, by provider name: openai and anthropic 4 attempts, 2 s
base, exponential with full jitter; ollama 3 attempts, 100 ms constant without jitter; default 3
attempts, 1 s base, exponential with full jitter.  Every preset keeps the default attempt
timeout (10 s) and total timeout (60 s).
"""


class GiveUpReason(enum.Enum):
    """Why a :class:`RetryState` stopped retrying (see the module docstring for the order)."""

    NOT_TRANSIENT = "not_transient"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    DEADLINE = "deadline"
    BUDGET = "budget"


# Module-level aliases: enum attribute access costs a descriptor call on Python 3.11.
_NOT_TRANSIENT: Final = GiveUpReason.NOT_TRANSIENT
_ATTEMPTS_EXHAUSTED: Final = GiveUpReason.ATTEMPTS_EXHAUSTED
_DEADLINE: Final = GiveUpReason.DEADLINE
_BUDGET: Final = GiveUpReason.BUDGET


class RetryAt(msgspec.Struct, frozen=True, gc=False):
    """Decision: wait ``delay`` seconds (until ``at``), then make attempt number ``attempt``."""

    delay: float
    at: float
    attempt: int


class GiveUp(msgspec.Struct, frozen=True, gc=False):
    """Decision: stop; ``attempts`` attempts were made and ``reason`` says why no more."""

    reason: GiveUpReason
    attempts: int


@attrs.frozen
class RetryStatistics:
    """Counters of a :class:`RetryPolicy` since it was created.

    Attributes:
        calls: states begun (requests).
        retries: retries granted.
        gave_up: how many calls gave up, by reason.
    """

    calls: int
    retries: int
    gave_up: Mapping[GiveUpReason, int]


class RetryPolicy:
    """The retry policy of one provider; :meth:`begin` starts the bookkeeping of one call.

    Arguments:
        settings: the retry settings (default ``RetrySettings()``).
        budget: the provider's retry budget, shared by its calls; ``None`` for no budget.
        random: the jitter's random source (see :class:`~actors.Backoff`).
    """

    __slots__ = ("_backoff", "_calls", "_gave_up", "_retries", "_retry_on", "budget", "settings")

    settings: RetrySettings
    budget: RetryBudget | None

    def __init__(
        self,
        settings: RetrySettings | None = None,
        *,
        budget: RetryBudget | None = None,
        random: RandomSource | None = None,
    ) -> None:
        self.settings = settings = RetrySettings() if settings is None else settings
        self.budget = budget
        self._backoff = Backoff(settings.backoff, random=random)
        # A tuple: membership compares by identity first, where a set would call the enum's
        # Python-level __hash__.
        self._retry_on = tuple(settings.retry_on)
        self._calls = 0
        self._retries = 0
        self._gave_up = dict.fromkeys(GiveUpReason, 0)

    def begin(self, now: float, deadline: float | None = None) -> RetryState:
        """Start a call at ``now`` whose caller waits until ``deadline`` (``None``: no limit).

        Counts the call as one request in the budget.  The call's effective deadline is the
        earlier of ``deadline`` and ``now + total_timeout``.
        """
        total = self.settings.total_timeout
        limit = math.inf if total is None else now + total
        if deadline is not None and deadline < limit:
            limit = deadline
        if self.budget is not None:
            self.budget.deposit(now)
        self._calls += 1
        return RetryState(self, now, limit)

    def statistics(self) -> RetryStatistics:
        """Counts of calls, retries and give-ups by reason."""
        return RetryStatistics(
            calls=self._calls,
            retries=self._retries,
            gave_up=MappingProxyType(dict(self._gave_up)),
        )

    def __repr__(self) -> str:
        return f"RetryPolicy({self.settings!r}, budget={self.budget!r})"


class RetryState:
    """The retry bookkeeping of one call (made by :meth:`RetryPolicy.begin`).

    Attributes:
        started: the ``now`` the call began.
        deadline: the call's effective deadline (``math.inf`` when there is none).
        attempt: the number of the attempt in progress (1 for the first).
        previous_delay: the last delay waited (``None`` before the first retry).
        finished: whether the state has given up.
    """

    __slots__ = ("_policy", "attempt", "deadline", "finished", "previous_delay", "started")

    def __init__(self, policy: RetryPolicy, started: float, deadline: float) -> None:
        self._policy = policy
        self.started = started
        self.deadline = deadline
        self.attempt = 1
        self.previous_delay: float | None = None
        self.finished = False

    def attempt_timeout(self, now: float) -> float:
        """Seconds the attempt starting at ``now`` may take: ``min(attempt_timeout, left)``.

        0.0 when the deadline has passed.
        """
        left = self.deadline - now
        timeout = self._policy.settings.attempt_timeout
        if left < timeout:
            return left if left > 0.0 else 0.0
        return timeout

    def on_failure(
        self, now: float, category: ErrorCategory, retry_after: float | None = None
    ) -> RetryAt | GiveUp:
        """The current attempt failed at ``now`` with ``category``: retry or give up?

        Arguments:
            now: the time of the failure.
            category: the failure's category (from the classifier).
            retry_after: seconds the provider asked us to wait, if it did.

        Returns a :class:`RetryAt` (and counts the attempt) or a :class:`GiveUp` (and the state
        is finished).  Raises :class:`RuntimeError` when the state already gave up.
        """
        if self.finished:
            raise RuntimeError(
                f"this call's retry state gave up after {self.attempt} attempt(s); "
                "begin a new one for a new call"
            )
        policy = self._policy
        if category not in policy._retry_on:
            return self._give_up(_NOT_TRANSIENT)
        if self.attempt >= policy.settings.max_attempts:
            return self._give_up(_ATTEMPTS_EXHAUSTED)
        delay = policy._backoff.delay(
            self.attempt, previous=self.previous_delay, retry_after=retry_after
        )
        at = now + delay
        if at >= self.deadline:
            return self._give_up(_DEADLINE)
        budget = policy.budget
        if budget is not None and not budget.try_withdraw(now):
            return self._give_up(_BUDGET)
        self.attempt += 1
        self.previous_delay = delay
        policy._retries += 1
        return RetryAt(delay=delay, at=at, attempt=self.attempt)

    def _give_up(self, reason: GiveUpReason) -> GiveUp:
        self.finished = True
        self._policy._gave_up[reason] += 1
        return GiveUp(reason=reason, attempts=self.attempt)

    def __repr__(self) -> str:
        return (
            f"<RetryState attempt={self.attempt} deadline={self.deadline:g} "
            f"finished={self.finished}>"
        )
