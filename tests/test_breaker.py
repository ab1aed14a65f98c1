"""The circuit breaker: settings validation, each transition, and a stateful comparison with a
reference model that recomputes everything from a plain list of outcomes."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from actors._errors import CircuitOpen, ConfigError, ErrorCategory
from actors._policies._breaker import (
    BreakerSettings,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    Permit,
    bucket_of,
    permit_is_probe,
)
from tests.strategies_policies import breaker_settings, categories, durations, time_steps

CLOSED, OPEN, HALF_OPEN, ISOLATED = (
    BreakerState.CLOSED,
    BreakerState.OPEN,
    BreakerState.HALF_OPEN,
    BreakerState.ISOLATED,
)
TIMEOUT = ErrorCategory.TIMEOUT
VALIDATION = ErrorCategory.VALIDATION


def make(**overrides: object) -> tuple[CircuitBreaker, list[BreakerTransition]]:
    events: list[BreakerTransition] = []
    options: dict[str, object] = {"minimum_throughput": 1000, **overrides}
    breaker = CircuitBreaker(
        BreakerSettings(**options),  # type: ignore[arg-type]
        name="svc",
        listener=events.append,
    )
    return breaker, events


def fail(
    breaker: CircuitBreaker, now: float, n: int = 1, category: ErrorCategory = TIMEOUT
) -> None:
    for _ in range(n):
        breaker.record_failure(breaker.acquire(now), now, category)


def succeed(breaker: CircuitBreaker, now: float, n: int = 1, duration: float = 0.0) -> None:
    for _ in range(n):
        breaker.record_success(breaker.acquire(now), now, duration)


# ------------------------------------------------------------------------------ settings


def test_defaults_are_the_seeds() -> None:
    """Defaults: 5 consecutive failures, ratio 0.5, 30 s break, 5 min window, 10 calls."""
    s = BreakerSettings()
    assert (s.failure_threshold, s.failure_ratio, s.break_duration, s.window) == (
        5,
        0.5,
        30.0,
        300.0,
    )
    assert (s.minimum_throughput, s.half_open_max_probes, s.buckets) == (10, 1, 10)
    assert s.slow_call_duration is None
    assert s.break_duration_factor == 1.0


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", 1.5),
        ("failure_threshold", True),
        ("failure_ratio", 0.0),
        ("failure_ratio", 1.5),
        ("failure_ratio", math.nan),
        ("break_duration", -1.0),
        ("break_duration", 0.0),
        ("break_duration", math.inf),
        ("window", 0),
        ("window", "300"),
        ("minimum_throughput", 0),
        ("half_open_max_probes", 0),
        ("slow_call_duration", 0.0),
        ("slow_call_ratio", 0.0),
        ("slow_call_ratio", 2.0),
        ("break_duration_factor", 0.5),
        ("max_break_duration", -5.0),
        ("buckets", 0),
        ("buckets", 100_000),
        ("counted_categories", frozenset({"timeout"})),
    ],
)
def test_bad_setting_raises_config_error_naming_the_field(field_name: str, value: object) -> None:
    """Each invalid value raises ConfigError whose path is the field."""
    with pytest.raises(ConfigError) as info:
        BreakerSettings(**{field_name: value})  # type: ignore[arg-type]
    assert info.value.path == field_name
    assert field_name in str(info.value)


def test_cap_below_break_duration_is_an_error_only_with_growth() -> None:
    """max_break_duration < break_duration is rejected only when the factor grows it."""
    BreakerSettings(break_duration=900.0)  # factor 1: the default cap is irrelevant
    with pytest.raises(ConfigError) as info:
        BreakerSettings(break_duration=900.0, break_duration_factor=2.0)
    assert info.value.path == "max_break_duration"


def test_settings_decode_from_json_and_reject_unknown_fields() -> None:
    """Settings decode with msgspec, category names by value, and unknown keys are errors."""
    s = msgspec.json.decode(
        b'{"failure_threshold": 3, "counted_categories": ["timeout", "network"]}',
        type=BreakerSettings,
    )
    assert s.failure_threshold == 3
    assert s.counted_categories == frozenset({ErrorCategory.TIMEOUT, ErrorCategory.NETWORK})
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.json.decode(b'{"failure_treshold": 3}', type=BreakerSettings)
    with pytest.raises(msgspec.ValidationError, match="failure_ratio"):
        msgspec.json.decode(b'{"failure_ratio": 3}', type=BreakerSettings)


def test_breaker_rejects_wrong_settings_type() -> None:
    """CircuitBreaker needs BreakerSettings and a non-negative history."""
    with pytest.raises(TypeError):
        CircuitBreaker({"failure_threshold": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history"):
        CircuitBreaker(history=-1)


# ------------------------------------------------------------------------------ closed


def test_closed_permits_are_the_same_int_and_not_probes() -> None:
    """While closed every permit is the same int (no allocation) and is not a probe."""
    breaker, _ = make()
    first = breaker.acquire(0.0)
    assert breaker.acquire(1.0) is first
    assert not permit_is_probe(first)


def test_consecutive_failures_trip() -> None:
    """failure_threshold consecutive counting failures open the breaker."""
    breaker, events = make(failure_threshold=3)
    fail(breaker, 0.0, 2)
    assert breaker.state is CLOSED
    fail(breaker, 0.0)
    assert breaker.state is OPEN
    assert [(e.old, e.new, e.reason) for e in events] == [(CLOSED, OPEN, "consecutive_failures")]
    assert events[0].service == "svc"


def test_a_success_restarts_the_consecutive_count() -> None:
    """A success between failures resets the streak."""
    breaker, _ = make(failure_threshold=3)
    fail(breaker, 0.0, 2)
    succeed(breaker, 0.0)
    fail(breaker, 0.0, 2)
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_failures == 2


def test_non_counting_failures_are_ignored() -> None:
    """Validation errors neither trip the breaker nor reset the streak."""
    breaker, _ = make(failure_threshold=2)
    fail(breaker, 0.0, 10, VALIDATION)
    assert breaker.state is CLOSED
    fail(breaker, 0.0)
    fail(breaker, 0.0, 1, VALIDATION)
    fail(breaker, 0.0)
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert stats.ignored == 11
    assert stats.failures == 2


def test_counted_categories_setting_overrides_the_table() -> None:
    """counted_categories replaces CATEGORY_INFO's counts_against_breaker."""
    breaker, _ = make(failure_threshold=1, counted_categories=frozenset({VALIDATION}))
    fail(breaker, 0.0, 3, TIMEOUT)
    assert breaker.state is CLOSED
    fail(breaker, 0.0, 1, VALIDATION)
    assert breaker.state is OPEN


def test_record_failure_rejects_a_non_category() -> None:
    """A category that is not an ErrorCategory is a TypeError and changes nothing."""
    breaker, _ = make(failure_threshold=1)
    permit = breaker.acquire(0.0)
    with pytest.raises(TypeError):
        breaker.record_failure(permit, 0.0, "timeout")  # type: ignore[arg-type]
    assert breaker.state is CLOSED
    assert breaker.statistics().failures == 0


def test_failure_ratio_trips_only_after_minimum_throughput() -> None:
    """Ratio rule: no trip below minimum_throughput, trip as soon as it is met."""
    breaker, events = make(failure_threshold=100, minimum_throughput=4, failure_ratio=0.5)
    succeed(breaker, 0.0)
    fail(breaker, 0.0, 2)  # 2/3 failed, but only 3 calls
    assert breaker.state is CLOSED
    succeed(breaker, 0.0)  # 2/4 = 0.5 with 4 calls: a success can complete the evidence
    assert breaker.state is OPEN
    assert events[-1].reason == "failure_ratio"


def test_successes_after_old_failures_can_complete_the_ratio_evidence() -> None:
    """Failures in an earlier bucket plus later successes trip once minimum throughput is met."""
    breaker, events = make(
        failure_threshold=100, minimum_throughput=3, failure_ratio=0.25, window=4.0, buckets=4
    )
    fail(breaker, 0.0)
    succeed(breaker, 1.0)
    assert breaker.state is CLOSED
    succeed(breaker, 1.0)  # 1 of 3 failed >= 0.25
    assert breaker.state is OPEN
    assert events[-1].reason == "failure_ratio"


def test_failures_leave_the_window_as_time_passes() -> None:
    """Outcomes older than the window's buckets no longer count."""
    breaker, _ = make(
        failure_threshold=100, minimum_throughput=2, failure_ratio=0.9, window=10.0, buckets=5
    )
    fail(breaker, 0.0)  # bucket 0 (0-2 s)
    succeed(breaker, 1.0, 3)
    assert breaker.statistics(9.9).window_calls == 4  # buckets 0-4 still in the window
    stats = breaker.statistics(10.0)  # bucket 5: bucket 0 dropped
    assert (stats.window_calls, stats.window_failures) == (0, 0)
    fail(breaker, 10.0)  # 1/1 but below minimum throughput
    assert breaker.state is CLOSED


@pytest.mark.parametrize("state", [OPEN, HALF_OPEN, ISOLATED])
def test_statistics_age_the_window_in_every_state(state: BreakerState) -> None:
    """statistics(now) reports the window as of now whatever the state: the calls that
    tripped the breaker leave the window as time passes, open, half-open or isolated."""
    breaker, _ = make(failure_threshold=2, window=10.0, buckets=5, break_duration=1.0)
    succeed(breaker, 0.0)
    if state is ISOLATED:
        breaker.isolate(0.5)
    else:
        fail(breaker, 0.5, 2)
        assert breaker.state is OPEN
        if state is HALF_OPEN:
            breaker.acquire(1.5)  # the break elapsed: this call is the probe
    assert breaker.state is state
    before = breaker.statistics(9.9)
    assert before.window_calls == (1 if state is ISOLATED else 3)
    stats = breaker.statistics(10.0)  # bucket 0 (0-2 s) left the window
    assert (stats.window_calls, stats.window_failures, stats.window_failure_ratio) == (0, 0, 0.0)
    assert stats.state is state
    assert stats.consecutive_failures == before.consecutive_failures  # not a window figure


def test_a_long_time_jump_clears_the_whole_window() -> None:
    """Jumping many windows ahead drops every bucket."""
    breaker, _ = make(failure_threshold=100, minimum_throughput=3, window=4.0, buckets=4)
    fail(breaker, 0.0)
    succeed(breaker, 2.5, 2)
    assert breaker.statistics().window_calls == 3
    fail(breaker, 1e6)
    stats = breaker.statistics()
    assert (stats.window_calls, stats.window_failures) == (1, 1)


def test_slow_calls_trip_by_their_own_ratio() -> None:
    """With slow_call_duration set, a window of mostly slow successes trips."""
    breaker, events = make(
        failure_threshold=100, minimum_throughput=4, slow_call_duration=2.0, slow_call_ratio=0.5
    )
    succeed(breaker, 0.0, 2, duration=0.1)
    succeed(breaker, 0.0, 1, duration=2.0)
    assert breaker.state is CLOSED
    succeed(breaker, 0.0, 1, duration=5.0)
    assert breaker.state is OPEN
    assert events[-1].reason == "slow_call_ratio"


def test_slow_calls_are_not_tracked_by_default() -> None:
    """Without slow_call_duration, durations do not matter."""
    breaker, _ = make(minimum_throughput=1)
    succeed(breaker, 0.0, 20, duration=1e9)
    assert breaker.state is CLOSED
    assert breaker.statistics().window_slow_calls == 0


# ------------------------------------------------------------------------------ open


def test_open_rejects_with_retry_after_until_the_break_ends() -> None:
    """Open: CircuitOpen with the rest of the break; allows/retry_after agree."""
    breaker, _ = make(failure_threshold=1, break_duration=30.0)
    fail(breaker, 100.0)
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire(110.0)
    assert info.value.retry_after == pytest.approx(20.0)
    assert info.value.service == "svc"
    assert not info.value.isolated
    assert not breaker.allows(129.9)
    assert breaker.retry_after(110.0) == pytest.approx(20.0)
    assert breaker.allows(130.0)
    assert breaker.statistics(110.0).rejected == 1


def test_break_elapsed_admits_one_probe() -> None:
    """After the break, the next acquire turns the breaker half-open and is a probe."""
    breaker, events = make(failure_threshold=1, break_duration=5.0)
    fail(breaker, 0.0)
    probe = breaker.acquire(5.0)
    assert permit_is_probe(probe)
    assert breaker.state is HALF_OPEN
    assert events[-1].reason == "break_elapsed"
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire(5.0)
    assert info.value.retry_after == 5.0  # conservative hint: the last break duration


def test_poll_applies_the_elapsed_break_without_a_call() -> None:
    """poll(now) moves open -> half-open when due, and does nothing before."""
    breaker, _ = make(failure_threshold=1, break_duration=5.0)
    fail(breaker, 0.0)
    assert breaker.poll(4.0) is OPEN
    assert breaker.poll(5.0) is HALF_OPEN


def test_probe_success_closes_with_a_fresh_window() -> None:
    """The probe's success closes the breaker and forgets the old outcomes."""
    breaker, events = make(failure_threshold=2, break_duration=5.0)
    fail(breaker, 0.0, 2)
    breaker.record_success(breaker.acquire(5.0), 5.5)
    assert breaker.state is CLOSED
    assert events[-1].reason == "probes_succeeded"
    stats = breaker.statistics()
    assert (stats.window_calls, stats.consecutive_failures) == (0, 0)
    fail(breaker, 6.0)
    assert breaker.state is CLOSED  # a single failure is not two consecutive ones


def test_several_probes_must_all_succeed() -> None:
    """half_open_max_probes probes run at once; all must succeed to close."""
    breaker, _ = make(failure_threshold=1, break_duration=1.0, half_open_max_probes=3)
    fail(breaker, 0.0)
    probes = [breaker.acquire(1.0) for _ in range(3)]
    assert len(set(probes)) == 3
    assert not breaker.allows(1.0)
    breaker.record_success(probes[0], 1.0)
    breaker.record_success(probes[1], 1.0)
    assert breaker.state is HALF_OPEN
    breaker.record_success(probes[2], 1.0)
    assert breaker.state is CLOSED


def test_one_failed_probe_reopens_and_the_others_become_stale() -> None:
    """A failing probe re-opens; the other probes' outcomes then only count as stale."""
    breaker, events = make(failure_threshold=1, break_duration=1.0, half_open_max_probes=2)
    fail(breaker, 0.0)
    first, second = breaker.acquire(1.0), breaker.acquire(1.0)
    breaker.record_failure(first, 1.5, TIMEOUT)
    assert breaker.state is OPEN
    assert events[-1].reason == "probe_failed"
    breaker.record_success(second, 1.6)
    assert breaker.state is OPEN
    assert breaker.statistics().stale == 1


def test_a_slow_probe_counts_as_failed_when_slow_calls_are_tracked() -> None:
    """With slow_call_duration set, a slow successful probe re-opens the breaker."""
    breaker, _ = make(failure_threshold=1, break_duration=1.0, slow_call_duration=1.0)
    fail(breaker, 0.0)
    breaker.record_success(breaker.acquire(1.0), 3.0, 2.0)
    assert breaker.state is OPEN


def test_ignored_probe_outcome_frees_the_slot_without_deciding() -> None:
    """A non-counting failure of a probe lets another probe through and stays half-open."""
    breaker, _ = make(failure_threshold=1, break_duration=1.0)
    fail(breaker, 0.0)
    breaker.record_failure(breaker.acquire(1.0), 1.0, VALIDATION)
    assert breaker.state is HALF_OPEN
    probe = breaker.acquire(1.0)
    breaker.release(probe, 1.0)
    assert breaker.allows(1.0)


def test_break_duration_grows_on_repeated_trips_and_resets_after_closing() -> None:
    """Each re-open multiplies the break by the factor, up to the cap; closing resets it."""
    breaker, _ = make(
        failure_threshold=1, break_duration=10.0, break_duration_factor=2.0, max_break_duration=35.0
    )
    fail(breaker, 0.0)
    now = 0.0
    seen = []
    for _ in range(4):
        seen.append(breaker.retry_after(now))
        now += breaker.retry_after(now) or 0.0
        breaker.record_failure(breaker.acquire(now), now, TIMEOUT)
    assert seen == [10.0, 20.0, 35.0, 35.0]
    now += breaker.retry_after(now) or 0.0
    breaker.record_success(breaker.acquire(now), now)
    assert breaker.state is CLOSED
    fail(breaker, now)
    assert breaker.retry_after(now) == 10.0


# ------------------------------------------------------------------------------ operator


def test_isolate_holds_open_until_reset() -> None:
    """Isolated: rejected with retry_after None however long we wait; reset closes."""
    breaker, events = make()
    breaker.isolate(0.0)
    breaker.isolate(1.0)  # already isolated: no second event
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire(1e9)
    assert info.value.isolated
    assert info.value.retry_after is None
    assert breaker.retry_after(1e9) is None
    assert not breaker.allows(1e9)
    breaker.reset(1e9)
    assert breaker.state is CLOSED
    assert [(e.old, e.new, e.reason) for e in events] == [
        (CLOSED, ISOLATED, "isolated"),
        (ISOLATED, CLOSED, "reset"),
    ]


def test_reset_of_a_closed_breaker_forgets_the_window_without_an_event() -> None:
    """reset() while closed clears counts, emits nothing, and makes in-flight permits stale."""
    breaker, events = make(failure_threshold=3)
    in_flight = breaker.acquire(0.0)
    fail(breaker, 0.0, 2)
    breaker.reset(0.0)
    assert events == []
    breaker.record_failure(in_flight, 0.0, TIMEOUT)
    stats = breaker.statistics()
    assert (stats.consecutive_failures, stats.window_calls, stats.stale) == (0, 0, 1)


def test_a_call_started_while_closed_and_ended_after_the_trip_is_stale() -> None:
    """A late outcome from an earlier state updates statistics only."""
    breaker, _ = make(failure_threshold=1, break_duration=10.0)
    slow_call = breaker.acquire(0.0)
    fail(breaker, 0.0)
    assert breaker.state is OPEN
    breaker.record_success(slow_call, 1.0)
    assert breaker.state is OPEN
    # Half-open now; the old permit must not count as a probe either.
    probe = breaker.acquire(10.0)
    breaker.record_success(slow_call, 10.0)
    breaker.record_failure(slow_call, 10.0, TIMEOUT)
    assert breaker.state is HALF_OPEN
    stats = breaker.statistics()
    assert (stats.stale, stats.probes_in_flight) == (3, 1)
    breaker.record_success(probe, 10.0)
    assert breaker.state is CLOSED


def test_a_probe_recorded_twice_is_stale_the_second_time() -> None:
    """Recording a probe permit again cannot free another probe's slot."""
    breaker, _ = make(failure_threshold=1, break_duration=1.0, half_open_max_probes=2)
    fail(breaker, 0.0)
    first, _second = breaker.acquire(1.0), breaker.acquire(1.0)
    breaker.release(first, 1.0)
    breaker.release(first, 1.0)
    assert breaker.statistics().probes_in_flight == 1
    assert breaker.statistics().stale == 1


def test_listener_errors_propagate_after_the_state_changed() -> None:
    """A listener that raises does not leave the breaker half-way."""

    def explode(event: BreakerTransition) -> None:
        raise RuntimeError("listener")

    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1), listener=explode)
    with pytest.raises(RuntimeError, match="listener"):
        breaker.record_failure(breaker.acquire(0.0), 0.0, TIMEOUT)
    assert breaker.state is OPEN
    assert len(breaker.transitions()) == 1


def test_history_keeps_only_the_last_transitions() -> None:
    """transitions() is bounded by history."""
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1), history=3)
    for i in range(5):
        breaker.isolate(float(i))
        breaker.reset(float(i))
    kept = breaker.transitions()
    assert len(kept) == 3
    assert kept[-1].at == 4.0


def test_transition_events_encode_as_tagged_json() -> None:
    """BreakerTransition is a tagged msgspec Struct with state values as strings."""
    event = BreakerTransition("svc", CLOSED, OPEN, "consecutive_failures", 1.5, "5 failures")
    data = msgspec.json.decode(msgspec.json.encode(event))
    assert data["type"] == "BreakerTransition"
    assert (data["old"], data["new"]) == ("closed", "open")
    assert msgspec.json.decode(msgspec.json.encode(event), type=BreakerTransition) == event


def test_state_values_are_stable_names() -> None:
    """BreakerState values are the lower-case names used in config and metrics."""
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open", "isolated"]


@given(
    t=st.floats(-1e9, 1e9, allow_nan=False),
    width=st.floats(1e-3, 1e4, allow_nan=False),
)
def test_bucket_of_brackets_the_time(t: float, width: float) -> None:
    """bucket_of(t, w) is the k with k*w <= t < (k+1)*w (in float products)."""
    k = bucket_of(t, width)
    assert k * width <= t < (k + 1) * width


# ------------------------------------------------------------------------------ reference model


def observe(breaker: CircuitBreaker) -> CircuitBreaker:
    """A deep copy of ``breaker`` to query (its listener detached): ``statistics(now)`` ages
    the window it is asked about, and a model test must never change the object under test
    while observing it."""
    return copy.deepcopy(breaker, {id(breaker._listener): None})


@dataclass
class ModelPermit:
    phase: int
    probe: int | None  # probe id, or None for a closed permit


@dataclass
class Model:
    """The breaker recomputed from a list of (time, failed, slow) outcomes since it closed."""

    s: BreakerSettings
    state: BreakerState = CLOSED
    outcomes: list[tuple[float, bool, bool]] = field(default_factory=list)
    phase: int = 0
    probes: set[int] = field(default_factory=set)
    next_probe: int = 0
    probe_successes: int = 0
    open_until: float = -math.inf
    break_: float = 0.0
    streak: int = 0
    trips: int = 0
    tripped_at: float = -math.inf
    transitions: list[tuple[BreakerState, BreakerState, str, float]] = field(default_factory=list)
    successes: int = 0
    failures: int = 0
    ignored: int = 0
    rejected: int = 0
    stale: int = 0

    def __post_init__(self) -> None:
        self.break_ = self.s.break_duration

    # -- derived
    def counted(self, category: ErrorCategory) -> bool:
        if self.s.counted_categories is None:
            return category.counts_against_breaker
        return category in self.s.counted_categories

    def slow(self, duration: float) -> bool:
        return self.s.slow_call_duration is not None and duration >= self.s.slow_call_duration

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        width = self.s.window / self.s.buckets
        current = math.floor(now / width)
        return [o for o in self.outcomes if math.floor(o[0] / width) > current - self.s.buckets]

    def consecutive(self) -> int:
        n = 0
        for _, failed, _ in reversed(self.outcomes):
            if not failed:
                break
            n += 1
        return n

    # -- transitions
    def go(self, new: BreakerState, reason: str, now: float) -> None:
        old = self.state
        self.state = new
        self.phase += 1
        self.probes.clear()
        self.probe_successes = 0
        self.transitions.append((old, new, reason, now))

    def trip(self, reason: str, now: float) -> None:
        if self.streak == 0:
            self.break_ = self.s.break_duration
            self.tripped_at = now
        else:
            grown = min(self.break_ * self.s.break_duration_factor, self.s.max_break_duration)
            self.break_ = max(grown, self.s.break_duration)
        self.streak += 1
        self.trips += 1
        self.open_until = now + self.break_
        self.go(OPEN, reason, now)

    def close(self, reason: str, now: float, *, event: bool = True) -> None:
        self.streak = 0
        self.break_ = self.s.break_duration
        self.outcomes = []
        old = self.state
        self.go(CLOSED, reason, now)
        if not event or old is CLOSED:
            self.transitions.pop()

    # -- inputs
    def acquire(self, now: float) -> ModelPermit | float | None:
        """A permit, or the retry_after of the rejection (None when isolated)."""
        if self.state is CLOSED:
            return ModelPermit(self.phase, None)
        if self.state is OPEN and now >= self.open_until:
            self.go(HALF_OPEN, "break_elapsed", now)
        if self.state is HALF_OPEN and len(self.probes) < self.s.half_open_max_probes:
            self.next_probe += 1
            self.probes.add(self.next_probe)
            return ModelPermit(self.phase, self.next_probe)
        self.rejected += 1
        if self.state is ISOLATED:
            return None
        if self.state is OPEN:
            return self.open_until - now
        return self.break_

    def current(self, permit: ModelPermit) -> bool:
        if permit.probe is None:
            return self.state is CLOSED and permit.phase == self.phase
        return self.state is HALF_OPEN and permit.probe in self.probes

    def record(
        self, permit: ModelPermit, now: float, category: ErrorCategory | None, duration: float
    ) -> None:
        if category is not None and not self.counted(category):
            self.ignored += 1
            if self.current(permit):
                self.probes.discard(permit.probe or -1)
            else:
                self.stale += 1
            return
        if category is None:
            self.successes += 1
        else:
            self.failures += 1
        if not self.current(permit):
            self.stale += 1
            return
        if permit.probe is not None:
            self.probes.discard(permit.probe)
            if category is not None or self.slow(duration):
                self.trip("probe_failed", now)
                return
            self.probe_successes += 1
            if self.probe_successes >= self.s.half_open_max_probes:
                self.close("probes_succeeded", now)
            return
        self.outcomes.append((now, category is not None, self.slow(duration)))
        if self.consecutive() >= self.s.failure_threshold:
            self.trip("consecutive_failures", now)
            return
        window = self.window(now)
        calls = len(window)
        if calls < self.s.minimum_throughput:
            return
        failures = sum(1 for o in window if o[1])
        slow = sum(1 for o in window if o[2])
        if failures / calls >= self.s.failure_ratio:
            self.trip("failure_ratio", now)
        elif slow and slow / calls >= self.s.slow_call_ratio:
            self.trip("slow_call_ratio", now)

    def release(self, permit: ModelPermit) -> None:
        self.ignored += 1
        if self.current(permit):
            self.probes.discard(permit.probe or -1)
        else:
            self.stale += 1


class BreakerAgainstModel(RuleBasedStateMachine):
    """Random traffic, time and operator actions: the breaker and the model always agree."""

    permits = Bundle("permits")

    @initialize(s=breaker_settings())
    def setup(self, s: BreakerSettings) -> None:
        self.now = 1000.0
        self.events: list[BreakerTransition] = []
        self.breaker = CircuitBreaker(s, name="m", listener=self.events.append, history=1000)
        self.model = Model(s)

    @rule(dt=time_steps)
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def wait_out_break(self) -> None:
        """Jump to the end of the break, as a caller honouring retry_after does."""
        if self.model.state is OPEN:
            self.now = max(self.now, self.model.open_until)

    def _acquire(self) -> tuple[Permit, ModelPermit] | None:
        # refusal() is read-only: asked on the breaker under test, it must agree with the
        # acquire() that follows (and the model checks that it changed nothing).
        refusal = self.breaker.refusal(self.now)
        expected = self.model.acquire(self.now)
        rejection: CircuitOpen | None = None
        try:
            permit = self.breaker.acquire(self.now)
        except CircuitOpen as exc:
            rejection = exc
        if rejection is not None:
            assert not isinstance(expected, ModelPermit), "breaker rejected, model admitted"
            assert rejection.retry_after == expected
            assert rejection.isolated == (self.model.state is ISOLATED)
            assert refusal is not None, "refusal() admitted what acquire() refused"
            assert (refusal.retry_after, refusal.isolated) == (expected, rejection.isolated)
            return None
        assert refusal is None, "refusal() refused what acquire() admitted"
        assert isinstance(expected, ModelPermit), "breaker admitted, model rejected"
        assert permit_is_probe(permit) == (expected.probe is not None)
        return (permit, expected)

    @rule(target=permits)
    def acquire(self) -> object:
        pair = self._acquire()
        return multiple() if pair is None else pair

    @rule(outcome=st.none() | categories, duration=durations)
    def call(self, outcome: ErrorCategory | None, duration: float) -> None:
        """A call that is admitted and recorded at once (the common case)."""
        pair = self._acquire()
        if pair is not None:
            self._record(pair, outcome, duration)

    def _record(
        self,
        pair: tuple[Permit, ModelPermit],
        outcome: ErrorCategory | None,
        duration: float,
    ) -> None:
        permit, model_permit = pair
        self.model.record(model_permit, self.now, outcome, duration)
        if outcome is None:
            self.breaker.record_success(permit, self.now, duration)
        else:
            self.breaker.record_failure(permit, self.now, outcome, duration)

    @rule(steps=st.integers(1, 4))
    def call_ok(self, steps: int) -> None:
        """A few quick successes in a row (healthy traffic between failures)."""
        for _ in range(steps):
            pair = self._acquire()
            if pair is not None:
                self._record(pair, None, 0.0)

    @rule(pair=consumes(permits), outcome=st.none() | categories, duration=durations)
    def record(
        self, pair: tuple[Permit, ModelPermit], outcome: ErrorCategory | None, duration: float
    ) -> None:
        self._record(pair, outcome, duration)

    @rule(pair=permits, outcome=st.none() | categories, duration=durations)
    def record_again(
        self, pair: tuple[Permit, ModelPermit], outcome: ErrorCategory | None, duration: float
    ) -> None:
        """A permit recorded more than once (a closed permit counts again, a probe is stale)."""
        self._record(pair, outcome, duration)

    @rule(pair=consumes(permits))
    def release(self, pair: tuple[Permit, ModelPermit]) -> None:
        self.model.release(pair[1])
        self.breaker.release(pair[0], self.now)

    @rule(dice=st.integers(0, 9))
    def isolate(self, dice: int) -> None:
        if dice == 0:
            if self.model.state is not ISOLATED:
                self.model.go(ISOLATED, "isolated", self.now)
            self.breaker.isolate(self.now)

    @rule(dice=st.integers(0, 4))
    def reset(self, dice: int) -> None:
        if dice == 0:
            self.model.close("reset", self.now)
            self.breaker.reset(self.now)

    @rule()
    def poll(self) -> None:
        if self.model.state is OPEN and self.now >= self.model.open_until:
            self.model.go(HALF_OPEN, "break_elapsed", self.now)
        assert self.breaker.poll(self.now) is self.model.state

    @invariant()
    def agrees(self) -> None:
        m, b = self.model, self.breaker
        assert b.state is m.state
        got = [(e.old, e.new, e.reason, e.at) for e in self.events]
        assert got == m.transitions
        assert [(e.old, e.new, e.reason, e.at) for e in b.transitions()] == m.transitions
        stats = b.statistics()  # without ``now``: changes nothing
        assert stats.trips == m.trips
        assert (stats.successes, stats.failures, stats.ignored) == (
            m.successes,
            m.failures,
            m.ignored,
        )
        assert (stats.rejected, stats.stale) == (m.rejected, m.stale)
        if m.state is HALF_OPEN:
            assert (stats.probes_in_flight, stats.probe_successes) == (
                len(m.probes),
                m.probe_successes,
            )
        # The window as of now, in every state, observed on a copy: aging the breaker under
        # test here would rotate its buckets between inputs and hide a record path that
        # forgets to.
        aged = observe(b).statistics(self.now)
        window = m.window(self.now)
        assert aged.window_calls == len(window)
        assert aged.window_failures == sum(1 for o in window if o[1])
        assert aged.window_slow_calls == sum(1 for o in window if o[2])
        assert aged.consecutive_failures == m.consecutive()
        if m.state is OPEN:
            assert stats.break_duration == m.break_
            assert stats.open_until == m.open_until
        expected_allows = (
            m.state is CLOSED
            or (m.state is OPEN and self.now >= m.open_until)
            or (m.state is HALF_OPEN and len(m.probes) < m.s.half_open_max_probes)
        )
        assert b.allows(self.now) == expected_allows
        if m.state is OPEN or m.state is HALF_OPEN:
            assert b.open_for(self.now) == self.now - m.tripped_at
        else:
            assert b.open_for(self.now) == 0.0


TestBreakerAgainstModel = BreakerAgainstModel.TestCase
TestBreakerAgainstModel.settings = settings(max_examples=150, stateful_step_count=60)
