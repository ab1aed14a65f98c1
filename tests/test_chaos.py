"""Chaos injectors: decisions, switches, replay, composition, actors, providers."""

from __future__ import annotations

import inspect
import math
import random
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors import (
    Actor,
    ActorCrashed,
    ConfigError,
    ErrorCategory,
    Failure,
    ProviderError,
    RetriesExhausted,
    chaos,
    open_actor,
)
from actors._policies._backoff import BackoffSettings
from actors._policies._classify import Classifier
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from supervisors import ChildSpec, RestartBackoff, open_supervisor

CATEGORIES = list(ErrorCategory)


async def echo(payload: Any, *, suffix: str = "") -> Any:
    """A service: returns what it got."""
    await trio.lowlevel.checkpoint()
    return ("echo", payload, suffix)


# ----------------------------------------------------------------------------- realistic faults


@pytest.mark.parametrize("category", CATEGORIES, ids=[c.value for c in CATEGORIES])
def test_each_fault_is_classified_back_into_its_category(category: ErrorCategory) -> None:
    """fault(category) builds an exception the built-in classifier sorts into that category."""
    exc = chaos.fault(category)
    assert Classifier().classify(exc).category is category
    assert chaos.is_injected(exc)
    assert "injected by chaos" in str(exc)


def test_fault_shapes_are_what_clients_raise() -> None:
    """Network is a ConnectionResetError, timeout a TimeoutError, 429 carries Retry-After."""
    assert isinstance(chaos.fault("network"), ConnectionResetError)
    assert isinstance(chaos.fault("timeout"), TimeoutError)
    limited = chaos.fault("rate_limit", retry_after=7)
    assert isinstance(limited, chaos.InjectedHTTPError)
    assert limited.status_code == 429
    assert limited.headers == {"Retry-After": "7"}
    assert Classifier().classify(limited).retry_after == 7.0
    assert chaos.fault("dependency").status_code == 503  # type: ignore[attr-defined]
    assert chaos.fault("validation").status_code == 400  # type: ignore[attr-defined]


def test_each_fault_is_a_fresh_object() -> None:
    """Two faults are two exception objects (no cached exception is re-raised)."""
    assert chaos.fault("network") is not chaos.fault("network")


def test_unknown_category_is_a_config_error() -> None:
    """An unknown category name is refused with the accepted names."""
    with pytest.raises(ConfigError, match="unknown error category 'netwerk'"):
        chaos.fault("netwerk")


def test_is_injected_follows_causes() -> None:
    """An error caused by an injected fault is injected; a real one is not."""
    wrapped = RetriesExhausted(attempts=2, last_error=chaos.fault("network"))
    assert chaos.is_injected(wrapped)
    assert not chaos.is_injected(RetriesExhausted(attempts=2, last_error=OSError("real")))
    assert not chaos.is_injected(ValueError("plain"))


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_bad_rates_are_refused(rate: Any) -> None:
    """A rate must be a number within [0, 1]."""
    with pytest.raises(ConfigError) as info:
        chaos.CrashInjector(rate=rate)
    assert info.value.path == "rate"


def test_bad_arguments_are_refused() -> None:
    """Each constructor names what is wrong."""
    with pytest.raises(ConfigError, match="seed or an rng"):
        chaos.CrashInjector(rate=0.1, seed=1, rng=random.Random(1))
    with pytest.raises(ConfigError, match="integer"):
        chaos.CrashInjector(rate=0.1, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one error category"):
        chaos.FaultInjector(rate=0.1)
    with pytest.raises(ConfigError, match="not both"):
        chaos.FaultInjector("network", rate=0.1, exception=lambda: OSError())
    with pytest.raises(ConfigError, match="exactly one"):
        chaos.OutcomeInjector(rate=0.1)
    with pytest.raises(ConfigError, match="exactly one"):
        chaos.OutcomeInjector(1, factory=lambda: 2, rate=0.1)
    with pytest.raises(ConfigError, match="max_delay"):
        chaos.LatencyInjector(2.0, max_delay=1.0, rate=0.1)
    with pytest.raises(ConfigError, match="delay"):
        chaos.LatencyInjector(-1.0, rate=0.1)
    with pytest.raises(ConfigError, match="callable"):
        chaos.BehaviourInjector(42, rate=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="injectors"):
        chaos.wrap(echo, "not an injector")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async callable"):
        chaos.wrap(42, chaos.CrashInjector(rate=0.1))  # type: ignore[arg-type]
    injector = chaos.CrashInjector(rate=0.1)
    with pytest.raises(ConfigError):
        injector.rate = 2.0
    assert injector.rate == 0.1


# -------------------------------------------------------------------------------- decisions


def test_rate_zero_never_and_rate_one_always() -> None:
    """Rate 0 never acts and rate 1 always does; both count decisions."""
    never = chaos.CrashInjector(rate=0.0, seed=1)
    always = chaos.CrashInjector(rate=1.0, seed=1)
    assert not any(never.decide() for _ in range(100))
    assert all(always.decide() for _ in range(100))
    assert (never.decisions, never.injected) == (100, 0)
    assert (always.decisions, always.injected) == (100, 100)


@settings(max_examples=30)
@given(rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_the_observed_rate_is_the_rate(rate: float, seed: int) -> None:
    """Over 4,000 decisions the injected fraction is within 5 standard deviations of the rate."""
    injector = chaos.CrashInjector(rate=rate, seed=seed)
    n = 4000
    hits = sum(injector.decide() for _ in range(n))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(hits - n * rate) <= 5 * sigma + 1
    assert injector.statistics().injected == hits


@given(rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_a_seed_replays_the_same_decisions(rate: float, seed: int) -> None:
    """Two injectors with the same seed decide the same way, call by call."""
    a = chaos.CrashInjector(rate=rate, seed=seed)
    b = chaos.CrashInjector(rate=rate, seed=seed)
    assert [a.decide() for _ in range(200)] == [b.decide() for _ in range(200)]


def test_a_drawn_seed_is_shown_for_replay() -> None:
    """Without a seed one is drawn; it is in the statistics and replays the run."""
    first = chaos.CrashInjector(rate=0.5)
    seed = first.statistics().seed
    assert isinstance(seed, int)
    replay = chaos.CrashInjector(rate=0.5, seed=seed)
    assert [first.decide() for _ in range(100)] == [replay.decide() for _ in range(100)]
    shared = chaos.CrashInjector(rate=0.5, rng=random.Random(3))
    assert shared.statistics().seed is None


def test_disabled_injectors_neither_act_nor_draw() -> None:
    """Off: no decision is made or counted, and no random number is drawn."""
    rng = random.Random(5)
    injector = chaos.CrashInjector(rate=1.0, enabled=False, rng=rng)
    state = rng.getstate()
    assert not any(injector.decide() for _ in range(10))
    assert rng.getstate() == state
    assert injector.statistics().decisions == 0
    injector.enabled = True
    assert injector.decide()


def test_when_selects_the_calls_considered() -> None:
    """Only calls accepted by `when` are considered (and counted)."""
    injector = chaos.CrashInjector(rate=1.0, seed=0, when=lambda n: n % 2 == 0)
    assert [injector.decide(n) for n in range(6)] == [True, False] * 3
    assert (injector.decisions, injector.injected) == (3, 3)


def test_statistics_are_a_frozen_snapshot() -> None:
    """statistics() is a frozen record that does not change after it is taken."""
    injector = chaos.FaultInjector("network", rate=1.0, seed=0)
    snapshot = injector.statistics()
    injector.decide()
    assert snapshot.decisions == 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snapshot.injected = 5  # type: ignore[misc]


class InjectorModel(RuleBasedStateMachine):
    """An injector against a reference model: same switch, rate, counters and draws."""

    def __init__(self) -> None:
        super().__init__()
        self.injector = chaos.CrashInjector(rate=0.5, seed=11)
        self.rng = random.Random(11)
        self.enabled = True
        self.rate = 0.5
        self.decisions = 0
        self.injected = 0

    @rule(on=st.booleans())
    def switch(self, on: bool) -> None:
        self.injector.enabled = on
        self.enabled = on

    @rule(rate=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    def set_rate(self, rate: float) -> None:
        self.injector.rate = rate
        self.rate = rate

    @rule()
    def decide(self) -> None:
        expected = False
        if self.enabled:
            self.decisions += 1
            if self.rate >= 1.0:
                expected = True
            elif self.rate > 0.0:
                expected = self.rng.random() < self.rate
            self.injected += expected
        assert self.injector.decide() is expected

    @invariant()
    def counters_agree(self) -> None:
        stats = self.injector.statistics()
        assert (stats.enabled, stats.rate) == (self.enabled, self.rate)
        assert (stats.decisions, stats.injected) == (self.decisions, self.injected)

    @precondition(lambda self: self.decisions > 0)
    @invariant()
    def injected_never_exceeds_decisions(self) -> None:
        assert self.injector.injected <= self.injector.decisions


TestInjectorModel = InjectorModel.TestCase


# ------------------------------------------------------------------------------- composition


async def test_wrap_keeps_the_signature_and_the_result() -> None:
    """A wrapped function has the same signature and name and returns the same result."""
    wrapped = chaos.wrap(echo, chaos.CrashInjector(rate=0.0, seed=0))
    assert inspect.signature(wrapped) == inspect.signature(echo)
    assert wrapped.__name__ == "echo"
    assert inspect.iscoroutinefunction(wrapped)
    assert await wrapped(1, suffix="!") == ("echo", 1, "!")


async def test_fault_injector_raises_instead_of_calling() -> None:
    """A fault ends the call: the function is not called; faults are counted by category."""
    calls: list[Any] = []

    async def service(payload: Any) -> Any:
        calls.append(payload)
        return payload

    faults = chaos.FaultInjector("network", "timeout", rate=1.0, seed=3)
    wrapped = chaos.wrap(service, faults)
    seen = set()
    for _ in range(20):
        with pytest.raises(OSError, match="injected by chaos") as info:
            await wrapped(1)
        seen.add(type(info.value))
    assert seen == {ConnectionResetError, TimeoutError}
    assert calls == []
    detail = faults.statistics().detail
    assert sum(detail.values()) == 20
    assert set(detail) == {"network", "timeout"}


async def test_fault_injector_with_an_exception_factory() -> None:
    """`exception` builds the injected exception (marked as injected)."""

    class ClientError(Exception):
        pass

    wrapped = chaos.wrap(echo, chaos.FaultInjector(rate=1.0, exception=lambda: ClientError("x")))
    with pytest.raises(ClientError) as info:
        await wrapped(1)
    assert chaos.is_injected(info.value)


async def test_outcome_injector_substitutes_the_result() -> None:
    """An outcome replaces the call's result: a value, or one built from the arguments."""
    fixed = chaos.wrap(echo, chaos.OutcomeInjector("cached", rate=1.0))
    assert await fixed(1) == "cached"
    built = chaos.wrap(echo, chaos.OutcomeInjector(factory=lambda p, **kw: p * 2, rate=1.0))
    assert await built(21) == 42


async def test_latency_injector_waits_in_trio_time(mock_clock: trio.testing.MockClock) -> None:
    """Latency is a trio sleep (virtual time), then the call is made."""
    fixed = chaos.wrap(echo, chaos.LatencyInjector(2.5, rate=1.0, seed=0))
    start = trio.current_time()
    assert await fixed(1) == ("echo", 1, "")
    assert trio.current_time() - start == pytest.approx(2.5)
    ranged = chaos.LatencyInjector(1.0, max_delay=3.0, rate=1.0, seed=0)
    wrapped = chaos.wrap(echo, ranged)
    for _ in range(20):
        start = trio.current_time()
        await wrapped(1)
        assert 1.0 <= trio.current_time() - start <= 3.0
    assert ranged.statistics().detail["milliseconds_total"] > 20 * 1000


async def test_latency_is_cancelled_by_a_deadline(mock_clock: trio.testing.MockClock) -> None:
    """A caller's deadline cancels an injected delay like a slow service."""
    wrapped = chaos.wrap(echo, chaos.LatencyInjector(60.0, rate=1.0, seed=0))
    with trio.move_on_after(1.0) as scope:
        await wrapped(1)
    assert scope.cancelled_caught


async def test_behaviour_injector_runs_before_the_call() -> None:
    """A behaviour gets the call's arguments and runs before the call."""
    order: list[str] = []

    async def behaviour(payload: Any, **kwargs: Any) -> None:
        order.append(f"behaviour {payload}")

    async def service(payload: Any, **kwargs: Any) -> Any:
        order.append(f"call {payload}")
        return payload

    wrapped = chaos.wrap(service, chaos.BehaviourInjector(behaviour, rate=1.0))
    assert await wrapped(7) == 7
    assert order == ["behaviour 7", "call 7"]


async def test_injectors_run_in_order_and_the_first_ending_one_wins(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Latency before a fault has run; an outcome after the fault is never reached."""
    latency = chaos.LatencyInjector(1.0, rate=1.0, seed=0)
    faults = chaos.FaultInjector("validation", rate=1.0, seed=0)
    outcome = chaos.OutcomeInjector("never", rate=1.0, seed=0)
    wrapped = chaos.wrap(echo, latency, faults, outcome)
    start = trio.current_time()
    with pytest.raises(chaos.InjectedHTTPError):
        await wrapped(1)
    assert trio.current_time() - start == pytest.approx(1.0)
    assert (latency.injected, faults.injected, outcome.decisions) == (1, 1, 0)
    assert chaos.injectors_of(wrapped) == (latency, faults, outcome)


async def test_wrapping_twice_puts_the_new_injectors_outside() -> None:
    """injectors_of lists the outer injectors first; both layers act."""
    inner = chaos.OutcomeInjector("inner", rate=1.0)
    outer = chaos.CrashInjector(rate=0.0, seed=0)
    wrapped = chaos.wrap(chaos.wrap(echo, inner), outer)
    assert chaos.injectors_of(wrapped) == (outer, inner)
    assert await wrapped(1) == "inner"
    assert chaos.injectors_of(echo) == ()


async def test_switching_off_at_run_time(mock_clock: trio.testing.MockClock) -> None:
    """Flipping `enabled` stops injection for the next call."""
    crash = chaos.CrashInjector(rate=1.0, seed=0)
    wrapped = chaos.wrap(echo, crash)
    with pytest.raises(chaos.InjectedCrash):
        await wrapped(1)
    crash.enabled = False
    assert await wrapped(1) == ("echo", 1, "")


# ------------------------------------------------------------------------------------ actors


class Counter(Actor[Any, Any]):
    """Counts messages; answers the count."""

    starts = 0

    def __init__(self) -> None:
        self.count = 0

    async def on_start(self) -> None:
        Counter.starts += 1

    async def handle(self, message: Any) -> Any:
        self.count += 1
        return self.count


async def test_crash_while_handling(mock_clock: trio.testing.MockClock) -> None:
    """A crash injected in handle: the caller gets ActorCrashed, the actor is restarted,
    the next message is handled by the fresh incarnation."""
    crash = chaos.CrashInjector(rate=1.0, seed=0, when=lambda message: message == "boom")
    spec = ChildSpec("counter", chaos.wrap_actor(Counter, crash))
    async with open_supervisor([spec]) as root:
        ref = root.ref("counter")
        assert await ref.ask("a") == 1
        with pytest.raises(ActorCrashed) as info:
            await ref.ask("boom")
        assert isinstance(info.value.cause, chaos.InjectedCrash)
        assert chaos.is_injected(info.value)
        assert await ref.ask("b") == 1  # a fresh instance
        stats = ref.statistics()
        assert (stats.crashed, stats.restarts, stats.incarnation) == (1, 1, 2)
    assert crash.statistics().injected == 1


async def test_crash_at_start_is_retried_by_the_supervisor(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A crash injected in on_start while the supervisor restarts the actor is a failed
    restart: retried (each one counting toward the intensity); the injector is shared by every
    incarnation, so its sequence carries on and the actor finally starts."""
    Counter.starts = 0
    start = chaos.CrashInjector(rate=0.5, seed=4, enabled=False)
    boom = chaos.CrashInjector(rate=1.0, seed=0, when=lambda message: message == "boom")
    spec = ChildSpec("counter", chaos.wrap_actor(Counter, boom, start=[start]))
    async with open_supervisor([spec], max_restarts=100, period=1.0) as root:
        ref = root.ref("counter")
        start.enabled = True  # from the restart on (a failed first start fails the tree)
        with pytest.raises(ActorCrashed):
            await ref.ask("boom")
        assert await ref.ask("x") == 1
        crashes = start.statistics().injected
        assert crashes >= 1
        assert start.statistics().decisions == crashes + 1
        assert ref.statistics().restarts == 1  # one restart, after the failed attempts
        assert Counter.starts == 2  # on_start ran at start and once more: crashes come before


async def test_outcome_in_an_actor_answers_instead_of_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An outcome injector on handle answers for the actor; Failure answers with an error."""
    outcome = chaos.OutcomeInjector(
        factory=lambda message: Failure(ValueError(f"refused {message}")), rate=1.0
    )
    async with open_actor(chaos.wrap_actor(Counter, outcome)) as ref:
        with pytest.raises(ValueError, match="refused 1"):
            await ref.ask(1)
        outcome.enabled = False
        assert await ref.ask(2) == 1
        assert ref.statistics().incarnation == 1


def test_wrap_actor_validates_its_arguments() -> None:
    """wrap_actor needs a factory and injectors."""
    with pytest.raises(TypeError, match="factory"):
        chaos.wrap_actor(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="injectors"):
        chaos.wrap_actor(Counter, start=["x"])  # type: ignore[list-item]
    factory = chaos.wrap_actor(Counter)
    assert isinstance(factory(), Counter)


# --------------------------------------------------------------------------------- providers


def quick_retry(attempts: int = 3) -> ProviderSettings:
    return ProviderSettings(
        retry=RetrySettings(
            max_attempts=attempts,
            backoff=BackoffSettings(kind="constant", base_delay=0.1, jitter="none"),
        )
    )


async def test_provider_retries_injected_transient_faults(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Injected network faults are classified and retried by the provider like real ones."""
    served: list[Any] = []

    async def service(payload: Any) -> Any:
        served.append(payload)
        return payload

    faults = chaos.FaultInjector("network", rate=1.0, seed=0)
    wrapped = chaos.wrap(service, faults)
    async with open_actor(lambda: ProviderActor("svc", wrapped, quick_retry(3))) as ref:
        p: Provider[Any, Any] = Provider(ref)
        with pytest.raises(RetriesExhausted) as info:
            await p.call("x")
        assert info.value.attempts == 3
        assert info.value.category is ErrorCategory.NETWORK
        assert chaos.is_injected(info.value)
        faults.rate = 0.0
        assert await p.call("y") == "y"
    assert faults.statistics().injected == 3
    assert served == ["y"]


async def test_provider_sees_retry_after_of_injected_rate_limits(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An injected 429 with Retry-After delays the provider's retry by that long."""
    times: list[float] = []

    async def service(payload: Any) -> Any:
        times.append(trio.current_time())
        return payload

    faults = chaos.FaultInjector(
        "rate_limit", rate=1.0, retry_after=4.0, seed=0, when=lambda payload: faults.injected == 0
    )
    wrapped = chaos.wrap(service, faults)
    async with open_actor(lambda: ProviderActor("svc", wrapped, quick_retry(2))) as ref:
        start = trio.current_time()
        assert await Provider[Any, Any](ref).call("x") == "x"
        assert times[0] - start == pytest.approx(4.0)


async def test_provider_validation_fault_is_not_retried(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An injected 400 is a validation error: answered at once, not retried."""
    faults = chaos.FaultInjector("validation", rate=1.0, seed=0)
    async with open_actor(
        lambda: ProviderActor("svc", chaos.wrap(echo, faults), quick_retry(3))
    ) as ref:
        with pytest.raises(ProviderError) as info:
            await Provider[Any, Any](ref).call("x")
        assert info.value.category is ErrorCategory.VALIDATION
        assert info.value.status_code == 400
    assert faults.injected == 1


class SpawnThenCrash(Actor[Any, Any]):
    """Spawns a background task that would run forever, then crashes in the same step."""

    async def handle(self, message: Any) -> Any:
        self.spawn(trio.sleep_forever)
        if message == "crash":
            raise RuntimeError("crash right after spawning")
        return message


async def test_a_crash_right_after_a_spawn_cancels_the_new_task(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A background task spawned in the step that crashes never outlives its incarnation:
    the actor is restarted and answers (found by the soak: the saga coordinator hung)."""
    # A restart backoff sends the crash through the supervisor's loop: the child's task ends.
    backoff = RestartBackoff(min_delay=0.1, max_delay=0.1, jitter=0.0)
    async with open_supervisor([ChildSpec("a", SpawnThenCrash)], backoff=backoff) as root:
        ref = root.ref("a")
        with trio.fail_after(10):
            with pytest.raises(ActorCrashed):
                await ref.ask("crash")
            assert await ref.ask("hello") == "hello"
        assert ref.statistics().incarnation == 2
