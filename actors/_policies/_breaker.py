"""A sans-I/O circuit breaker: closed, open, half-open, and isolated by an operator.

Theory of operation
-------------------
The breaker is a state machine driven by three kinds of input, each stamped with ``now`` (float
seconds on any monotonic clock): a caller asks for a :data:`Permit` before a call
(:meth:`CircuitBreaker.acquire`), reports how the call went (:meth:`~CircuitBreaker.record_success`
or :meth:`~CircuitBreaker.record_failure`), and an operator may :meth:`~CircuitBreaker.isolate` or
:meth:`~CircuitBreaker.reset` it.  Nothing happens between inputs: the open state's timer is
checked lazily when the next input arrives (or when the owner calls :meth:`~CircuitBreaker.poll`).

``CLOSED``
    Calls pass.  Each recorded outcome goes into a rolling window of ``window`` seconds split
    into ``buckets`` buckets of equal width (an outcome at time ``t`` is in bucket
    ``floor(t / width)``; the window at ``now`` is the current bucket and the ``buckets - 1``
    before it).  After each record the breaker *trips* (goes ``OPEN``) when

    * the last ``failure_threshold`` recorded outcomes were all counting failures
      (consecutive-failure rule), or
    * the window holds at least ``minimum_throughput`` calls and
      ``failures / calls >= failure_ratio`` (failure-ratio rule, as Polly's and resilience4j's
      breakers do), or
    * ``slow_call_duration`` is set, the window holds at least ``minimum_throughput`` calls and
      ``slow calls / calls >= slow_call_ratio``, a slow call being any recorded call whose
      ``duration >= slow_call_duration`` (resilience4j's slow-call rule).

``OPEN``
    Every call is rejected with :class:`~actors._errors.CircuitOpen` carrying ``retry_after``.
    Once the break duration has elapsed the next :meth:`acquire` (or :meth:`poll`) moves the
    breaker to ``HALF_OPEN``.  The break duration is ``break_duration`` for the first trip and
    is multiplied by ``break_duration_factor`` for each further trip without the breaker
    closing in between, capped at ``max_break_duration``; it starts again from
    ``break_duration`` once the breaker closes.

``HALF_OPEN``
    At most ``half_open_max_probes`` probe calls are in flight at a time; others are rejected.
    When ``half_open_max_probes`` probes have succeeded the breaker closes (with an empty
    window); the first probe that fails (or succeeds but is slow, when slow calls are tracked)
    re-opens it for a longer break.

``ISOLATED``
    Held open by an operator until :meth:`reset`; rejections carry ``retry_after=None``.

Only categories that count against the breaker
(:attr:`~actors._errors.ErrorCategory.counts_against_breaker`, or the ``counted_categories``
setting) are failures for the breaker.  Any other failure (a validation error, a cancellation)
is *ignored*: it is neither a success nor a failure, so it does not enter the window, does not
reset the consecutive count, and in ``HALF_OPEN`` it frees the probe's slot without deciding
anything (resilience4j's "ignored exceptions").

**Permits and stale outcomes.**  A permit is a small ``int``.  Every permit issued while closed
in one *epoch* is the same int (no allocation); each probe gets a unique odd int.  The epoch
changes on every transition and on :meth:`reset`, so the outcome of a call that was admitted
before a transition (a call that started while closed and ends after the breaker opened, a
probe still running when another probe re-opened the breaker) is *stale*: it is counted in the
lifetime statistics (and in ``stale``) and changes nothing else.  Every permit must be recorded
exactly once (a caller that gives up calls :meth:`release`); a probe recorded twice is stale
the second time.

Cost: :meth:`acquire` on a closed breaker is one attribute test; a record is O(1) except when
time crossed bucket boundaries, where rotating costs O(min(crossed, buckets)), so amortised O(1).
Memory is three lists of ``buckets`` ints plus the last ``history`` transitions.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from typing import Final, NewType

import attrs
import msgspec

from actors._errors import CircuitOpen, ConfigError, ErrorCategory

__all__ = [
    "BreakerSettings",
    "BreakerState",
    "BreakerStatistics",
    "BreakerTransition",
    "CircuitBreaker",
    "Permit",
    "bucket_of",
    "permit_is_probe",
]

#: What :meth:`CircuitBreaker.acquire` returns: an opaque int to hand back with the outcome.
Permit = NewType("Permit", int)

_DEFAULT_COUNTED: Final = frozenset(c for c in ErrorCategory if c.counts_against_breaker)


class BreakerState(enum.Enum):
    """The state of a :class:`CircuitBreaker`; values are stable lower-case names."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    ISOLATED = "isolated"


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_new_error: Final = BaseException.__new__
_ISOLATED: Final = BreakerState.ISOLATED


def _number(name: str, value: object, *, minimum: float, strict: bool, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, not {value!r}", path=name)
    if not math.isfinite(value):
        raise ConfigError(f"must be finite, not {value!r}", path=name)
    if value < minimum or (strict and value == minimum):
        rule = ">" if strict else ">="
        raise ConfigError(f"must be {rule} {minimum:g}, not {value!r}", path=name)
    if value > maximum:
        raise ConfigError(f"must be <= {maximum:g}, not {value!r}", path=name)


def _integer(name: str, value: object, *, minimum: int, maximum: int = 2**31) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer, not {value!r}", path=name)
    if not minimum <= value <= maximum:
        raise ConfigError(f"must be between {minimum} and {maximum}, not {value!r}", path=name)


class BreakerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a :class:`CircuitBreaker` decides (defaults as in ``ResilienceConfig.default()``).

    Attributes:
        failure_threshold: trip after this many consecutive counting failures (>= 1; 5).
        failure_ratio: trip when failures / calls in the window reach this (0 < r <= 1; 0.5).
        break_duration: seconds the breaker stays open after the first trip (> 0; 30).
        window: length of the rolling window in seconds (> 0; default 300: 5 minutes).
        minimum_throughput: calls the window must hold before the ratio rules apply (>= 1;
            10).  A ratio over a handful of calls is noise: with 2 calls one failure is 50%.
            Polly and resilience4j default to 100, which a provider called a few times a
            minute never reaches in 5 minutes; 10 keeps the ratio rule meaningful at low
            traffic, and the consecutive rule covers what it misses.
        half_open_max_probes: probes allowed in flight while half-open, and successes needed
            to close (>= 1; 1).
        slow_call_duration: seconds from which a call counts as slow, or ``None`` (default)
            to not track slow calls.
        slow_call_ratio: trip when slow calls / calls in the window reach this, once
            ``minimum_throughput`` is met (0 < r <= 1; 0.5).  Only used with
            ``slow_call_duration``.
        break_duration_factor: each further trip without closing multiplies the break
            duration by this (>= 1; 1.0 = no growth).
        max_break_duration: cap of the grown break duration in seconds (600); must be
            >= ``break_duration`` when the factor is above 1.
        buckets: how many buckets the window is split into (1-1000; 10).  More buckets make
            the window's edge sharper and cost memory, not time.
        counted_categories: the categories that count as failures, or ``None`` (default)
            for those whose ``counts_against_breaker`` is true.

    Every field is checked on construction (and on decoding); a bad value raises
    :class:`~actors._errors.ConfigError` whose ``path`` is the field's name.
    """

    failure_threshold: int = 5
    failure_ratio: float = 0.5
    break_duration: float = 30.0
    window: float = 300.0
    minimum_throughput: int = 10
    half_open_max_probes: int = 1
    slow_call_duration: float | None = None
    slow_call_ratio: float = 0.5
    break_duration_factor: float = 1.0
    max_break_duration: float = 600.0
    buckets: int = 10
    counted_categories: frozenset[ErrorCategory] | None = None

    def __post_init__(self) -> None:
        big = 1e12
        _integer("failure_threshold", self.failure_threshold, minimum=1)
        _number("failure_ratio", self.failure_ratio, minimum=0.0, strict=True, maximum=1.0)
        _number("break_duration", self.break_duration, minimum=0.0, strict=True, maximum=big)
        _number("window", self.window, minimum=0.0, strict=True, maximum=big)
        _integer("minimum_throughput", self.minimum_throughput, minimum=1)
        _integer("half_open_max_probes", self.half_open_max_probes, minimum=1, maximum=10_000)
        if self.slow_call_duration is not None:
            _number(
                "slow_call_duration",
                self.slow_call_duration,
                minimum=0.0,
                strict=True,
                maximum=big,
            )
        _number("slow_call_ratio", self.slow_call_ratio, minimum=0.0, strict=True, maximum=1.0)
        _number(
            "break_duration_factor",
            self.break_duration_factor,
            minimum=1.0,
            strict=False,
            maximum=100.0,
        )
        _number(
            "max_break_duration", self.max_break_duration, minimum=0.0, strict=True, maximum=big
        )
        if self.break_duration_factor > 1.0 and self.max_break_duration < self.break_duration:
            raise ConfigError(
                f"must be >= break_duration ({self.break_duration:g}) when "
                f"break_duration_factor > 1, not {self.max_break_duration!r}",
                path="max_break_duration",
            )
        _integer("buckets", self.buckets, minimum=1, maximum=1000)
        if self.counted_categories is not None:
            counted = self.counted_categories
            if not isinstance(counted, frozenset) or not all(
                isinstance(c, ErrorCategory) for c in counted
            ):
                raise ConfigError(
                    f"must be a frozenset of ErrorCategory, not {counted!r}",
                    path="counted_categories",
                )


class BreakerTransition(msgspec.Struct, frozen=True, tag=True):
    """A change of a breaker's state.

    Attributes:
        service: the breaker's name.
        old: the state before.
        new: the state after.
        reason: a stable code: ``"consecutive_failures"``, ``"failure_ratio"``,
            ``"slow_call_ratio"``, ``"break_elapsed"``, ``"probe_failed"``,
            ``"probes_succeeded"``, ``"isolated"`` or ``"reset"``.
        at: the ``now`` of the input that caused it.
        detail: the numbers behind the reason, for a person.
    """

    service: str
    old: BreakerState
    new: BreakerState
    reason: str
    at: float
    detail: str = ""


@attrs.frozen
class BreakerStatistics:
    """A snapshot of a :class:`CircuitBreaker` (see :meth:`CircuitBreaker.statistics`).

    Window figures are as of the last input, or as of ``now`` when it was given.
    ``retry_after`` is ``None`` unless ``now`` was given (and for an isolated breaker).
    Lifetime counters include stale outcomes.
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    window_failure_ratio: float
    window_slow_call_ratio: float
    probes_in_flight: int
    probe_successes: int
    trips: int
    break_duration: float
    open_until: float | None
    retry_after: float | None
    successes: int
    failures: int
    ignored: int
    rejected: int
    stale: int


def bucket_of(t: float, width: float) -> int:
    """The index of the window bucket holding time ``t``: the ``k`` with
    ``k * width <= t < (k + 1) * width`` (products rounded as floats)."""
    k = math.floor(t / width)
    while (k + 1) * width <= t:
        k += 1
    while k * width > t:
        k -= 1
    return k


def permit_is_probe(permit: Permit) -> bool:
    """Whether ``permit`` was issued for a half-open probe."""
    return bool(permit & 1)


Listener = Callable[[BreakerTransition], None]


class CircuitBreaker:
    """A circuit breaker for one service (see the module docstring for the semantics).

    Args:
        settings: the :class:`BreakerSettings`.
        name: the service's name, used in events and errors.
        listener: called synchronously with each :class:`BreakerTransition`, after the state
            changed.  An exception it raises propagates to the caller of the method that caused
            the transition; the breaker's state is already consistent by then.
        history: how many recent transitions :meth:`transitions` keeps (>= 0; 32).

    Example (the provider actor's loop, simplified)::

        try:
            permit = breaker.acquire(now)          # raises CircuitOpen
        except CircuitOpen as exc:
            return reply_error(exc)
        started = now
        try:
            result = await call()
        except Exception as exc:
            verdict = classifier.classify(exc)
            breaker.record_failure(permit, clock(), verdict.category, clock() - started)
        except BaseException:
            breaker.release(permit, clock())       # cancelled: no verdict on the service
            raise
        else:
            breaker.record_success(permit, clock(), clock() - started)
    """

    __slots__ = (
        "_accept",
        "_b_fail",
        "_b_slow",
        "_b_total",
        "_bad",
        "_break",
        "_bucket",
        "_bucket_end",
        "_c_fail",
        "_c_slow",
        "_closed",
        "_consecutive",
        "_counted",
        "_epoch",
        "_failures",
        "_fast_until",
        "_history",
        "_ignored",
        "_listener",
        "_next_probe",
        "_ok",
        "_ok_at_fail",
        "_ok_mark",
        "_open_until",
        "_other_successes",
        "_permit",
        "_probe_successes",
        "_probes",
        "_r_fail",
        "_r_slow",
        "_r_total",
        "_rejected",
        "_settings",
        "_slow_threshold",
        "_stale",
        "_state",
        "_streak",
        "_tripped_at",
        "_trips",
        "_width",
        "name",
    )

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        name: str = "",
        *,
        listener: Listener | None = None,
        history: int = 32,
    ) -> None:
        if settings is None:
            settings = BreakerSettings()
        if not isinstance(settings, BreakerSettings):
            raise TypeError(f"settings must be BreakerSettings, not {settings!r}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"history must be an int >= 0, not {history!r}")
        self._settings = settings
        self.name = name
        self._listener = listener
        self._history: deque[BreakerTransition] = deque(maxlen=history)
        self._counted = (
            _DEFAULT_COUNTED
            if settings.counted_categories is None
            else frozenset(settings.counted_categories)
        )
        slow = settings.slow_call_duration
        self._slow_threshold = math.inf if slow is None else float(slow)
        self._width = settings.window / settings.buckets
        n = settings.buckets
        self._b_total = [0] * n
        self._b_fail = [0] * n
        self._b_slow = [0] * n
        self._state = _CLOSED
        self._closed = True
        self._epoch = 0
        self._permit = Permit(0)
        self._accept: object = 0
        self._next_probe = 0
        self._probes: set[int] = set()
        self._probe_successes = 0
        self._open_until = -math.inf
        self._break = float(settings.break_duration)
        self._streak = 0
        self._trips = 0
        self._tripped_at = -math.inf
        self._ok = 0
        self._ok_mark = 0
        self._ok_at_fail = 0
        self._other_successes = 0
        self._failures = 0
        self._ignored = 0
        self._rejected = 0
        self._stale = 0
        self._r_total = self._r_fail = self._r_slow = 0
        self._c_fail = self._c_slow = self._bad = 0
        self._consecutive = 0
        self._bucket = 0
        self._bucket_end = -math.inf
        self._fast_until = -math.inf

    # ------------------------------------------------------------------ queries

    @property
    def settings(self) -> BreakerSettings:
        """The settings the breaker was built with."""
        return self._settings

    @property
    def state(self) -> BreakerState:
        """The current state, as of the last input (an elapsed break is noticed lazily)."""
        return self._state

    def allows(self, now: float) -> bool:
        """Whether :meth:`acquire` at ``now`` would succeed.  Changes nothing."""
        state = self._state
        if state is _CLOSED:
            return True
        if state is _OPEN:
            return now >= self._open_until
        if state is _HALF_OPEN:
            return len(self._probes) < self._settings.half_open_max_probes
        return False

    def refusal(self, now: float) -> CircuitOpen | None:
        """The :class:`CircuitOpen` that :meth:`acquire` at ``now`` would raise, or ``None``
        when it would admit the call.  Changes nothing (it is not counted as a rejection):
        an owner that refuses calls before asking for a permit (the open breaker's hot path)
        raises it."""
        state = self._state
        if state is _OPEN:
            until = self._open_until
            if now < until:
                # CircuitOpen(service=..., retry_after=...) without its Python __init__: the
                # open breaker's hot path (the other fields keep their class defaults).
                error: CircuitOpen = _new_error(CircuitOpen)
                error.service = self.name
                error.retry_after = until - now
                return error
            return None
        if state is _CLOSED:
            return None
        if state is _ISOLATED:
            return CircuitOpen(service=self.name, retry_after=None, isolated=True)
        if len(self._probes) < self._settings.half_open_max_probes:
            return None
        return CircuitOpen(service=self.name, retry_after=self._break)

    def retry_after(self, now: float) -> float | None:
        """Seconds until a call could be admitted: ``0.0`` if :meth:`allows`, the rest of the
        break when open, ``None`` when isolated.  While half-open with every probe slot taken
        it is the last break duration: a conservative hint, since the probes' outcome decides.
        """
        state = self._state
        if state is _CLOSED:
            return 0.0
        if state is _OPEN:
            return max(0.0, self._open_until - now)
        if state is _HALF_OPEN:
            if len(self._probes) < self._settings.half_open_max_probes:
                return 0.0
            return self._break
        return None

    def open_for(self, now: float) -> float:
        """Seconds since the breaker tripped from closed, while it has not closed since (it is
        open, or half-open waiting for its probes); ``0.0`` when closed or isolated.

        Longer than the break duration means the break elapsed without the breaker closing:
        the probes failed (it is open again) or none came (it is half-open).
        """
        if self._state is _OPEN or self._state is _HALF_OPEN:
            return max(0.0, now - self._tripped_at)
        return 0.0

    def transitions(self) -> list[BreakerTransition]:
        """The most recent transitions, oldest first (at most ``history``)."""
        return list(self._history)

    def statistics(self, now: float | None = None) -> BreakerStatistics:
        """A :class:`BreakerStatistics` snapshot; with ``now`` the window is aged to ``now``.

        Aging applies in every state: an open, half-open or isolated breaker's window still
        holds the outcomes that tripped it (it is only cleared when the breaker closes), and
        they leave it as time passes.  Aging changes no decision: a breaker aged here decides
        its next input exactly as one aged by that input.
        """
        if now is not None and now >= self._bucket_end:
            self._advance(now)
        calls = self._window_calls()
        failures = self._r_fail + self._c_fail
        slow = self._r_slow + self._c_slow
        return BreakerStatistics(
            name=self.name,
            state=self._state,
            consecutive_failures=self._consecutive if self._ok == self._ok_at_fail else 0,
            window_calls=calls,
            window_failures=failures,
            window_slow_calls=slow,
            window_failure_ratio=failures / calls if calls else 0.0,
            window_slow_call_ratio=slow / calls if calls else 0.0,
            probes_in_flight=len(self._probes),
            probe_successes=self._probe_successes,
            trips=self._trips,
            break_duration=self._break,
            open_until=self._open_until if self._state is _OPEN else None,
            retry_after=None if now is None else self.retry_after(now),
            successes=self._ok + self._other_successes,
            failures=self._failures,
            ignored=self._ignored,
            rejected=self._rejected,
            stale=self._stale,
        )

    # ------------------------------------------------------------------ hot path

    def acquire(self, now: float) -> Permit:
        """A permit for one call at ``now``, or :class:`~actors._errors.CircuitOpen`.

        Closed: always admitted (the same permit int for the whole closed period).  Open:
        rejected with ``retry_after`` = rest of the break, unless the break has elapsed, in
        which case the breaker turns half-open and this call is a probe.  Half-open: admitted
        as a probe if a probe slot is free, else rejected.  Isolated: rejected with
        ``retry_after=None``.
        """
        if self._closed:
            return self._permit
        return self._acquire_other(now)

    def record_success(self, permit: Permit, now: float, duration: float = 0.0) -> None:
        """Record that the call admitted with ``permit`` succeeded at ``now`` after
        ``duration`` seconds (used only for the slow-call rule)."""
        # Fast path: closed, a success cannot trip the breaker (no failure or slow call in the
        # window, or failures in a window past its minimum throughput that did not trip), slow
        # calls not tracked, same bucket, current permit.  ``_fast_until`` is the bucket's end
        # in that case and -inf otherwise.  The success is only counted:
        # the window's call count and the consecutive-failure streak are derived from ``_ok``
        # when needed.
        if now < self._fast_until and permit is self._accept:
            self._ok += 1
            return
        if permit != self._accept:
            self._other_successes += 1
            self._record_other(permit, now, None, duration)
            return
        if now >= self._bucket_end:
            self._advance(now)
        self._ok += 1
        if duration >= self._slow_threshold:
            self._c_slow += 1
            self._bad += 1
            self._fast_until = -math.inf
        if self._bad:
            self._evaluate(now)
            if (
                self._state is _CLOSED
                and self._slow_threshold == math.inf
                and self._window_calls() >= self._settings.minimum_throughput
            ):
                # The window is past its minimum throughput and did not trip: a success now
                # only lowers the failure ratio (and ends any streak), so none can trip the
                # breaker until calls leave the window, at the bucket's end: the fast path
                # holds until then (a failure or a state change closes it again).
                self._fast_until = self._bucket_end

    def record_failure(
        self, permit: Permit, now: float, category: ErrorCategory, duration: float = 0.0
    ) -> None:
        """Record that the call admitted with ``permit`` failed with ``category`` at ``now``.

        A category that does not count against the breaker is ignored (see the module
        docstring); a counting failure may trip the breaker (closed) or re-open it
        (half-open probe).
        """
        if category not in self._counted:
            if not isinstance(category, ErrorCategory):
                raise TypeError(f"category must be an ErrorCategory, not {category!r}")
            self.release(permit, now)
            return
        self._failures += 1
        if permit != self._accept:
            self._record_other(permit, now, category, duration)
            return
        if now >= self._bucket_end:
            self._advance(now)
        if self._ok != self._ok_at_fail:
            # A success came after the previous failure: the streak starts again.
            self._consecutive = 0
            self._ok_at_fail = self._ok
        self._consecutive += 1
        self._c_fail += 1
        self._bad += 1
        self._fast_until = -math.inf
        if duration >= self._slow_threshold:
            self._c_slow += 1
            self._bad += 1
        self._evaluate(now)

    def release(self, permit: Permit, now: float) -> None:
        """Give ``permit`` back without an outcome that says anything about the service (the
        call was cancelled, or failed with a category that does not count).  Frees a probe
        slot; changes nothing else."""
        self._ignored += 1
        if permit & 1:
            if self._state is _HALF_OPEN and permit in self._probes:
                self._probes.discard(permit)
            else:
                self._stale += 1
        elif permit != self._accept:
            self._stale += 1

    # ------------------------------------------------------------------ operator controls

    def poll(self, now: float) -> BreakerState:
        """Apply time-driven transitions due at ``now`` (open -> half-open) and return the
        state.  The owner may call this from a timer so the transition event is timely."""
        if self._state is _OPEN and now >= self._open_until:
            self._to_half_open(now)
        return self._state

    def isolate(self, now: float) -> None:
        """Hold the breaker open until :meth:`reset`.  In-flight calls become stale."""
        if self._state is _ISOLATED:
            return
        old = self._state
        self._enter(_ISOLATED)
        self._emit(old, _ISOLATED, "isolated", now, "held open by an operator")

    def reset(self, now: float) -> None:
        """Close the breaker with an empty window and the initial break duration.

        Works from any state (a closed breaker just forgets its window).  In-flight calls
        become stale.  Emits a transition unless the breaker was already closed.
        """
        old = self._state
        self._streak = 0
        self._break = float(self._settings.break_duration)
        self._enter(_CLOSED)
        self._clear_window(now)
        if old is not _CLOSED:
            self._emit(old, _CLOSED, "reset", now, "closed by an operator")

    # ------------------------------------------------------------------ internals

    def _acquire_other(self, now: float) -> Permit:
        state = self._state
        if state is _OPEN and now >= self._open_until:
            self._to_half_open(now)
            state = _HALF_OPEN
        if state is _HALF_OPEN and len(self._probes) < self._settings.half_open_max_probes:
            self._next_probe += 1
            permit = Permit((self._next_probe << 1) | 1)
            self._probes.add(permit)
            return permit
        self._rejected += 1
        if state is _ISOLATED:
            raise CircuitOpen(service=self.name, retry_after=None, isolated=True)
        raise CircuitOpen(service=self.name, retry_after=self.retry_after(now))

    def _record_other(
        self, permit: Permit, now: float, category: ErrorCategory | None, duration: float
    ) -> None:
        if not (permit & 1) or self._state is not _HALF_OPEN or permit not in self._probes:
            self._stale += 1
            return
        self._probes.discard(permit)
        if category is not None:
            self._trip(now, "probe_failed", f"probe failed with {category.value}")
        elif duration >= self._slow_threshold:
            self._trip(now, "probe_failed", f"probe was slow ({duration:g} s)")
        else:
            self._probe_successes += 1
            needed = self._settings.half_open_max_probes
            if self._probe_successes >= needed:
                self._streak = 0
                self._break = float(self._settings.break_duration)
                self._enter(_CLOSED)
                self._clear_window(now)
                self._emit(
                    _HALF_OPEN, _CLOSED, "probes_succeeded", now, f"{needed} probe(s) succeeded"
                )

    def _evaluate(self, now: float) -> None:
        s = self._settings
        if self._ok == self._ok_at_fail and self._consecutive >= s.failure_threshold:
            self._trip(now, "consecutive_failures", f"{self._consecutive} consecutive failures")
            return
        calls = self._window_calls()
        if calls < s.minimum_throughput:
            return
        failures = self._r_fail + self._c_fail
        if failures / calls >= s.failure_ratio:
            self._trip(now, "failure_ratio", f"{failures} of {calls} calls failed")
            return
        slow = self._r_slow + self._c_slow
        if slow and slow / calls >= s.slow_call_ratio:
            self._trip(now, "slow_call_ratio", f"{slow} of {calls} calls were slow")

    def _trip(self, now: float, reason: str, detail: str) -> None:
        old = self._state
        s = self._settings
        if self._streak:
            self._break = min(self._break * s.break_duration_factor, s.max_break_duration)
            self._break = max(self._break, float(s.break_duration))
        else:
            self._break = float(s.break_duration)
            self._tripped_at = now  # the first trip since the breaker was closed
        self._streak += 1
        self._trips += 1
        self._open_until = now + self._break
        self._enter(_OPEN)
        self._emit(old, _OPEN, reason, now, f"{detail}; open for {self._break:g} s")

    def _to_half_open(self, now: float) -> None:
        self._enter(_HALF_OPEN)
        self._emit(_OPEN, _HALF_OPEN, "break_elapsed", now, f"break of {self._break:g} s elapsed")

    def _enter(self, state: BreakerState) -> None:
        """Switch state and start a new epoch: permits issued before become stale."""
        self._state = state
        self._closed = state is _CLOSED
        self._epoch += 1
        self._permit = Permit(self._epoch << 1)
        # ``_accept`` is what a record must match to take the closed fast path: the current
        # permit while closed, NaN (equal to nothing) otherwise.
        self._accept = self._permit if state is _CLOSED else math.nan
        self._fast_until = -math.inf  # _clear_window() re-opens the fast path when closing
        self._probes.clear()
        self._probe_successes = 0

    def _emit(self, old: BreakerState, new: BreakerState, reason: str, now: float, d: str) -> None:
        event = BreakerTransition(self.name, old, new, reason, now, d)
        self._history.append(event)
        if self._listener is not None:
            self._listener(event)

    def _clear_window(self, now: float) -> None:
        n = self._settings.buckets
        self._b_total[:] = [0] * n
        self._b_fail[:] = [0] * n
        self._b_slow[:] = [0] * n
        self._r_total = self._r_fail = self._r_slow = 0
        self._c_fail = self._c_slow = self._bad = 0
        self._ok_mark = self._ok_at_fail = self._ok
        self._consecutive = 0
        if math.isfinite(now):
            self._bucket = bucket_of(now, self._width)
            self._bucket_end = (self._bucket + 1) * self._width
        else:
            self._bucket = 0
            self._bucket_end = -math.inf
        self._refresh_fast_path()

    def _refresh_fast_path(self) -> None:
        # With slow calls tracked every success needs its duration checked: no fast path.
        fast = self._state is _CLOSED and not self._bad and self._slow_threshold == math.inf
        self._fast_until = self._bucket_end if fast else -math.inf

    def _window_calls(self) -> int:
        return self._r_total + self._ok - self._ok_mark + self._c_fail

    def _advance(self, now: float) -> None:
        """Move the current bucket forward to the one holding ``now``.

        Invariant: ring slot ``j % n`` holds bucket ``j`` for the ``n - 1`` buckets before the
        current one, and the ``_r_*`` sums are over exactly those; the current bucket's counts
        are in ``_c_*``.
        """
        new = bucket_of(now, self._width)
        if not math.isfinite(self._bucket_end):
            # First record ever: nothing to flush.
            self._ok_mark = self._ok
            self._bucket = new
            self._bucket_end = (new + 1) * self._width
            self._refresh_fast_path()
            return
        old = self._bucket
        if new <= old:
            # Rounding put ``now`` on the boundary; the bucket is unchanged.
            self._bucket_end = (old + 1) * self._width
            self._refresh_fast_path()
            return
        n = self._settings.buckets
        steps = new - old
        if steps >= n:
            self._b_total[:] = [0] * n
            self._b_fail[:] = [0] * n
            self._b_slow[:] = [0] * n
            self._r_total = self._r_fail = self._r_slow = 0
        else:
            total, fail, slow = self._b_total, self._b_fail, self._b_slow
            i = old % n
            current = self._ok - self._ok_mark + self._c_fail
            total[i] = current
            fail[i] = self._c_fail
            slow[i] = self._c_slow
            self._r_total += current
            self._r_fail += self._c_fail
            self._r_slow += self._c_slow
            # Buckets old-n+1 .. new-n leave the window (old itself stays when steps < n).
            for j in range(old - n + 1, new - n + 1):
                k = j % n
                self._r_total -= total[k]
                self._r_fail -= fail[k]
                self._r_slow -= slow[k]
                total[k] = fail[k] = slow[k] = 0
        self._c_fail = self._c_slow = 0
        self._bad = self._r_fail + self._r_slow
        self._ok_mark = self._ok
        self._bucket = new
        self._bucket_end = (new + 1) * self._width
        self._refresh_fast_path()
