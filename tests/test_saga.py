"""Saga coordinator: forward runs, failure, compensation, cancellation, queries (virtual time)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given

from actors import (
    Actor,
    AskTimeout,
    BulkheadFull,
    ConfigError,
    ErrorCategory,
    Failure,
    IdempotencyConflict,
    MemoryJournal,
)
from actors._policies._backoff import BackoffSettings
from actors._policies._retry import RetrySettings
from actors._protocol import Call, SagaReport
from actors._provider._actor import ProviderActor
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import (
    CompensationFailed,
    SagaDefinition,
    SagaFailed,
    SagaStep,
    SagaStepMessage,
    StepContext,
    UnknownSagaDefinition,
    step_key,
)
from actors._saga._journals._records import Journal, SagaEvent, SagaEventKind, SagaHeader
from actors._saga._journals._state import SagaState
from actors._saga._messages import (
    DiscardSaga,
    GetSaga,
    GetSagaStatistics,
    ListSagas,
    SagaInfo,
    SagaResult,
    SagaStarted,
    StartSaga,
)
from supervisors import ChildSpec, Supervisor, open_supervisor

# ------------------------------------------------------------------------------ test world

SERVICES = ("a", "b", "c", "d", "e")


class World:
    """Ground truth shared by the fake services of one test.

    ``script[key]`` lists what the service does on successive deliveries of ``key``:
    ``"ok"`` (default), ``"reject"`` (answers an error, no effect), ``"lose"`` (applies the
    effect, then never answers: the caller times out), ``"crash"`` (applies, then the service
    crashes), ``("sleep", s)`` (waits ``s`` seconds, then applies and answers).  Effects are
    idempotent by key, like a real service that honours idempotency keys: a key applied before
    answers its stored reply again without a second effect.
    """

    def __init__(self) -> None:
        self.script: dict[str, list[Any]] = defaultdict(list)
        self.delivered: list[str] = []  # every key received, in order (re-sends included)
        self.applied: Counter[str] = Counter()  # effects applied, by key (never above 1)
        self.order: list[str] = []  # keys in the order their effects were applied
        self.replies: dict[str, Any] = {}

    def plan(self, key: str, *behaviours: Any) -> None:
        self.script[key].extend(behaviours)

    def forward(self, saga_id: str) -> list[str]:
        """Forward steps applied for ``saga_id``, in order."""
        return [
            k.split(":")[1]
            for k in self.order
            if k.startswith(f"{saga_id}:") and not k.endswith(":compensate")
        ]

    def compensations(self, saga_id: str) -> list[str]:
        """Compensations applied for ``saga_id``, in order (step names)."""
        return [
            k.split(":")[1]
            for k in self.order
            if k.startswith(f"{saga_id}:") and k.endswith(":compensate")
        ]


class Service(Actor[Any, Any]):
    """A fake service that plays its world's script (see :class:`World`).

    Slow behaviours run in the background, so one slow request never blocks the others (as
    with a real service).  A forward effect that arrives after its compensation was applied
    is refused, as a service honouring idempotency keys does.
    """

    def __init__(self, name: str, world: World) -> None:
        self.name = name
        self.world = world

    async def handle(self, message: Any) -> Any:
        if isinstance(message, SagaStepMessage):
            key, payload = message.key, message.payload
        else:  # raw delivery: the builder put the key in a dict
            key, payload = message["key"], message
        world = self.world
        world.delivered.append(key)
        queue = world.script.get(key)
        behaviour = queue.pop(0) if queue else "ok"
        if behaviour == "reject":
            return Failure(ValueError(f"{self.name} rejects {key}"))
        if behaviour == "crash":
            self.apply(key, payload)
            raise RuntimeError(f"{self.name} crashed after applying {key}")
        if behaviour == "ok":
            return self.apply(key, payload)
        reply = self.defer()
        self.spawn(self.slowly, reply, key, payload, behaviour)
        return None

    async def slowly(self, reply: Any, key: str, payload: Any, behaviour: Any) -> None:
        if behaviour == "lose":
            self.apply(key, payload)
            await trio.sleep(math.inf)
        await trio.sleep(behaviour[1])
        reply.set(self.apply(key, payload))

    def apply(self, key: str, payload: Any) -> Any:
        world = self.world
        if key not in world.replies:
            if f"{key}:compensate" in world.replies:
                return Failure(ValueError(f"{key} arrived after its compensation"))
            world.applied[key] += 1
            world.order.append(key)
            world.replies[key] = {"by": self.name, "key": key, "payload": payload}
        return world.replies[key]


class Recorder(Actor[Any, Any]):
    """Collects everything it is told (a stand-in monitor)."""

    def __init__(self, into: list[Any]) -> None:
        self.into = into

    async def handle(self, message: Any) -> Any:
        self.into.append(message)
        return None


#: Compensation retries for tests: 3 attempts, 1 s apart, on any error.
QUICK_RETRY = RetrySettings(
    max_attempts=3,
    retry_on=frozenset(ErrorCategory),
    total_timeout=None,
    backoff=BackoffSettings(kind="constant", base_delay=1.0, jitter="none"),
)


def chain(
    n: int = 3,
    *,
    name: str = "order",
    compensatable: Sequence[bool] | None = None,
    timeout: float = 5.0,
    **step_options: Any,
) -> SagaDefinition:
    """A saga of ``n`` steps ``s0..s{n-1}`` on services ``a, b, c, ...``."""
    compensatable = compensatable or [True] * n

    def action(ctx: StepContext) -> Any:
        return {"step": ctx.name, "input": ctx.input, "seen": sorted(ctx.results)}

    def undo(ctx: StepContext) -> Any:
        return {"undo": ctx.name, "reply": ctx.reply}

    options = {"compensation_retry": QUICK_RETRY, **step_options}
    return SagaDefinition(
        name,
        [
            SagaStep(
                f"s{i}",
                SERVICES[i],
                action=action,
                compensate=undo if compensatable[i] else None,
                timeout=timeout,
                **options,
            )
            for i in range(n)
        ],
    )


def service(name: str, world: World) -> Callable[[], Service]:
    """A factory of the fake service ``name``."""
    return lambda: Service(name, world)


@asynccontextmanager
async def saga_tree(
    world: World,
    definitions: Sequence[SagaDefinition],
    *,
    journal: Journal | None = None,
    reports: list[Any] | None = None,
    extra: Sequence[ChildSpec[Any, Any]] = (),
    **options: Any,
) -> AsyncIterator[Supervisor]:
    """A tree with the fake services, an optional recording monitor and the coordinator."""
    own = journal is None
    journal = journal if journal is not None else MemoryJournal()
    specs: list[Any] = [ChildSpec(name, service(name, world)) for name in SERVICES]
    specs += extra
    if reports is not None:
        specs.append(ChildSpec("monitor", lambda: Recorder(reports)))
        options.setdefault("monitor", "monitor")
    specs.append(ChildSpec("sagas", lambda: SagaCoordinator(journal, definitions, **options)))
    try:
        async with open_supervisor(specs, max_restarts=1000, period=1.0) as root:
            yield root
    finally:
        if own:
            await journal.aclose()


async def wait_finished(root: Supervisor, saga_id: str, *, limit: float = 3600.0) -> SagaInfo:
    """Poll the coordinator (in virtual time) until the saga has ended."""
    coordinator = root.ref("sagas")
    deadline = trio.current_time() + limit
    while trio.current_time() < deadline:
        info = await coordinator.ask(GetSaga(saga_id))
        if info is not None and info.finished:
            return info  # type: ignore[no-any-return]
        await trio.sleep(0.05)
    raise AssertionError(f"saga {saga_id} did not finish within {limit} s")


def kinds(info: SagaInfo) -> list[str]:
    return [e.kind for e in info.events]


# ------------------------------------------------------------------------------ forward runs


async def test_a_saga_runs_every_step_in_order_and_returns_every_reply(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Forward success: each step once, in order; the reply holds every step's reply."""
    world = World()
    async with saga_tree(world, [chain(3)]) as root:
        result = await root.ref("sagas").ask(StartSaga("order", {"id": 7}, saga_id="o1"))
    assert isinstance(result, SagaResult)
    assert list(result.results) == ["s0", "s1", "s2"]
    assert result.results["s1"]["key"] == "o1:s1"
    assert world.forward("o1") == ["s0", "s1", "s2"]
    assert world.compensations("o1") == []
    assert world.delivered == ["o1:s0", "o1:s1", "o1:s2"]


async def test_builders_see_the_input_and_earlier_replies_decoded(
    mock_clock: trio.testing.MockClock,
) -> None:
    """ctx.input, ctx.result(name) and ctx.results hold the decoded input and replies."""
    world = World()
    async with saga_tree(world, [chain(3)]) as root:
        result = await root.ref("sagas").ask(StartSaga("order", [1, 2], saga_id="o"))
    payloads = [world.replies[f"o:s{i}"]["payload"] for i in range(3)]
    assert [p["input"] for p in payloads] == [[1, 2]] * 3
    assert [p["seen"] for p in payloads] == [[], ["s0"], ["s0", "s1"]]
    assert result.results["s0"]["payload"]["step"] == "s0"


class Order(msgspec.Struct):
    item: str
    quantity: int


class Receipt(msgspec.Struct):
    by: str
    key: str
    payload: Any


async def test_typed_input_and_replies_are_decoded_to_their_declared_types(
    mock_clock: trio.testing.MockClock,
) -> None:
    """input_type and reply_type give builders and the result typed values."""
    world = World()
    seen: list[Any] = []

    def second(ctx: StepContext) -> Any:
        seen.append((ctx.input, ctx.result("first")))
        return ctx.input.item

    definition = SagaDefinition(
        "typed",
        [
            SagaStep("first", "a", action=lambda ctx: ctx.input.quantity, reply_type=Receipt),
            SagaStep("second", "b", action=second),
        ],
        input_type=Order,
    )
    async with saga_tree(world, [definition]) as root:
        result = await root.ref("sagas").ask(StartSaga("typed", Order("owl", 2), saga_id="t"))
    assert seen == [(Order("owl", 2), Receipt(by="a", key="t:first", payload=2))]
    assert isinstance(result.results["first"], Receipt)


async def test_every_message_carries_the_idempotency_key_of_its_step(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Steps carry "{saga}:{step}", compensations "{saga}:{step}:compensate"."""
    world = World()
    world.plan("k:s2", "reject")
    async with saga_tree(world, [chain(3)]) as root:
        with pytest.raises(SagaFailed):
            await root.ref("sagas").ask(StartSaga("order", saga_id="k"))
    assert world.delivered == ["k:s0", "k:s1", "k:s2", "k:s1:compensate", "k:s0:compensate"]
    assert step_key("k", "s1") == "k:s1"
    assert step_key("k", "s1", compensate=True) == "k:s1:compensate"


async def test_raw_delivery_sends_the_builder_value_which_carries_the_key(
    mock_clock: trio.testing.MockClock,
) -> None:
    """delivery="raw": the message is the builder's value; ctx.key gives it the key."""
    world = World()
    definition = SagaDefinition(
        "raw", [SagaStep("only", "a", action=lambda ctx: {"key": ctx.key}, delivery="raw")]
    )
    async with saga_tree(world, [definition]) as root:
        await root.ref("sagas").ask(StartSaga("raw", saga_id="r"))
    assert world.delivered == ["r:only"]


class RecordingProvider(ProviderActor):
    """A provider actor that also records the Call messages it receives."""

    def __init__(self, calls: list[Call], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = calls

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Call):
            self.calls.append(message)
        return await super().handle(message)


async def test_a_provider_target_gets_a_call_with_the_step_key(
    mock_clock: trio.testing.MockClock,
) -> None:
    """delivery="auto" sends Call(payload, key) to a provider actor."""
    calls: list[Call] = []
    effects: list[Any] = []

    async def render(payload: Any) -> Any:
        effects.append(payload)
        return {"video": payload["scene"]}

    provider = ChildSpec("render", lambda: RecordingProvider(calls, "render", render))
    definition = SagaDefinition(
        "video", [SagaStep("render", "render", action=lambda ctx: {"scene": ctx.input})]
    )
    async with saga_tree(World(), [definition], extra=[provider]) as root:
        result = await root.ref("sagas").ask(StartSaga("video", "owls", saga_id="v"))
    assert calls == [Call({"scene": "owls"}, "v:render")]
    assert effects == [{"scene": "owls"}]
    assert result.results == {"render": {"video": "owls"}}


# ------------------------------------------------------------------- failure and compensation


@pytest.mark.parametrize("failing", [0, 1, 2, 3])
async def test_a_definite_failure_compensates_the_completed_steps_in_reverse_order(
    mock_clock: trio.testing.MockClock, failing: int
) -> None:
    """A step that answers an error: every completed step is compensated, last first."""
    world = World()
    world.plan(f"f:s{failing}", "reject")
    async with saga_tree(world, [chain(4)]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="f"))
        info = await root.ref("sagas").ask(GetSaga("f"))
    completed = [f"s{i}" for i in range(failing)]
    error = caught.value
    assert world.forward("f") == completed
    assert world.compensations("f") == completed[::-1]
    assert error.step == failing
    assert error.step_name == f"s{failing}"
    assert error.compensated == tuple(completed[::-1])
    assert "ValueError" in error.reason
    assert error.category is ErrorCategory.VALIDATION
    assert error.outcome == ("compensated" if failing else "failed")
    assert not error.cancelled
    assert info.phase == error.outcome
    assert info.failed_step == f"s{failing}"
    assert info.compensated == completed[::-1]


@pytest.mark.parametrize("failing", [0, 2])
async def test_a_timed_out_step_is_compensated_too_because_its_effect_is_uncertain(
    mock_clock: trio.testing.MockClock, failing: int
) -> None:
    """A step whose reply never came (it may have taken effect) is compensated first."""
    world = World()
    world.plan(f"u:s{failing}", "lose")
    async with saga_tree(world, [chain(3, timeout=2.0)]) as root:
        start = trio.current_time()
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="u"))
        assert trio.current_time() - start == pytest.approx(2.0)
    expected = [f"s{i}" for i in range(failing, -1, -1)]
    assert world.compensations("u") == expected
    assert caught.value.compensated == tuple(expected)
    assert caught.value.category is ErrorCategory.TIMEOUT
    assert caught.value.outcome == "compensated"


async def test_a_crashed_target_counts_as_uncertain(mock_clock: trio.testing.MockClock) -> None:
    """ActorCrashed from the target: the step may have happened, so it is compensated."""
    world = World()
    world.plan("x:s1", "crash")
    async with saga_tree(world, [chain(2)]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="x"))
    assert world.compensations("x") == ["s1", "s0"]
    assert "crashed" in caught.value.reason


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [("always", ["s1", "s0"]), ("never", ["s0"]), ("uncertain", ["s0"])],
)
async def test_compensate_failed_decides_whether_a_failed_step_is_compensated(
    mock_clock: trio.testing.MockClock, policy: str, outcome: list[str]
) -> None:
    """compensate_failed: always / never / only when uncertain (a rejection is certain)."""
    world = World()
    world.plan("p:s1", "reject")
    async with saga_tree(world, [chain(2, compensate_failed=policy)]) as root:
        with pytest.raises(SagaFailed):
            await root.ref("sagas").ask(StartSaga("order", saga_id="p"))
    assert world.compensations("p") == outcome


async def test_steps_without_compensation_are_skipped_when_compensating(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Non-compensatable steps stay done; the others are undone in reverse order."""
    world = World()
    world.plan("n:s4", "reject")
    definition = chain(5, compensatable=[True, False, True, False, True])
    async with saga_tree(world, [definition]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="n"))
    assert world.compensations("n") == ["s2", "s0"]
    assert caught.value.outcome == "compensated"


async def test_a_failure_with_nothing_to_compensate_ends_failed(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Only non-compensatable steps completed: the saga ends failed, nothing is sent."""
    world = World()
    world.plan("z:s1", "reject")
    async with saga_tree(world, [chain(2, compensatable=[False, False])]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="z"))
        info = await root.ref("sagas").ask(GetSaga("z"))
    assert caught.value.outcome == "failed"
    assert world.compensations("z") == []
    assert kinds(info)[-2:] == ["step_failed", "failed"]


async def test_a_failing_builder_fails_its_step_without_sending_anything(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An exception from a step's action is a step failure; nothing was sent for it."""
    world = World()

    def broken(ctx: StepContext) -> Any:
        raise KeyError("missing field")

    definition = SagaDefinition(
        "broken",
        [
            SagaStep("s0", "a", action=lambda ctx: 0, compensate=lambda ctx: 0),
            SagaStep("s1", "b", action=broken, compensate=lambda ctx: 0),
        ],
    )
    async with saga_tree(world, [definition]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("broken", saga_id="b"))
    assert world.delivered == ["b:s0", "b:s0:compensate"]
    assert "KeyError" in caught.value.reason
    assert isinstance(caught.value.cause, KeyError)


async def test_a_reply_that_cannot_be_journaled_fails_the_step_as_uncertain(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A reply msgspec cannot encode: the step did its work, so it is compensated too."""

    class Odd(Actor[Any, Any]):
        async def handle(self, message: Any) -> Any:
            return object() if not message.compensate else None

    world = World()
    definition = SagaDefinition(
        "odd",
        [
            SagaStep("s0", "a", action=lambda ctx: 0, compensate=lambda ctx: 0),
            SagaStep("s1", "odd", action=lambda ctx: 0, compensate=lambda ctx: 0),
        ],
    )
    async with saga_tree(world, [definition], extra=[ChildSpec("odd", Odd)]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("odd", saga_id="o"))
    assert caught.value.compensated == ("s1", "s0")
    assert "cannot be journaled" in caught.value.reason


async def test_a_step_is_retried_with_the_same_key_per_its_retry_policy(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Step retries wait the backoff, reuse the key and are journaled as re-sends."""
    world = World()
    world.plan("r:s0", ("sleep", 10.0), ("sleep", 10.0))  # two attempts time out
    retry = RetrySettings(
        max_attempts=3,
        total_timeout=None,
        backoff=BackoffSettings(kind="constant", base_delay=0.5, jitter="none"),
    )
    definition = SagaDefinition(
        "retry", [SagaStep("s0", "a", action=lambda c: 0, timeout=1.0, retry=retry)]
    )
    async with saga_tree(world, [definition]) as root:
        start = trio.current_time()
        await root.ref("sagas").ask(StartSaga("retry", saga_id="r"))
        elapsed = trio.current_time() - start
        info = await root.ref("sagas").ask(GetSaga("r"))
        stats = await root.ref("sagas").ask(GetSagaStatistics())
    assert elapsed == pytest.approx(1.0 + 0.5 + 1.0 + 0.5)
    assert world.delivered == ["r:s0"] * 3
    sends = [e.detail for e in info.events if e.kind == "step_started"]
    assert sends[0] == "sent"
    assert sends[1].startswith("re-sent (attempt 2) after AskTimeout")
    assert sends[2].startswith("re-sent (attempt 3) after AskTimeout")
    assert stats.step_retries == 2
    assert stats.steps_sent == 3


async def test_a_failing_compensation_is_retried_with_backoff_until_it_succeeds(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Compensation failures are journaled and retried after the backoff delay."""
    world = World()
    world.plan("c:s1", "reject")
    world.plan("c:s0:compensate", "reject", "reject")
    async with saga_tree(world, [chain(2)]) as root:
        start = trio.current_time()
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="c"))
        elapsed = trio.current_time() - start
        info = await root.ref("sagas").ask(GetSaga("c"))
    assert elapsed == pytest.approx(2.0)  # two 1 s backoff delays
    assert world.compensations("c") == ["s0"]
    assert world.delivered.count("c:s0:compensate") == 3
    assert caught.value.outcome == "compensated"
    assert kinds(info).count("compensation_failed_step") == 2
    assert "rejects" in next(e.detail for e in info.events if e.kind == "compensation_failed_step")


async def test_a_compensation_that_keeps_failing_ends_compensation_failed_and_alerts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Retries exhausted: CompensationFailed, a report to the monitor, listed until discarded."""
    world = World()
    reports: list[Any] = []
    world.plan("cf:s2", "reject")
    world.plan("cf:s1:compensate", "reject", "reject", "reject")
    async with saga_tree(world, [chain(3)], reports=reports) as root:
        coordinator = root.ref("sagas")
        with pytest.raises(CompensationFailed) as caught:
            await coordinator.ask(StartSaga("order", saga_id="cf"))
        listed = await coordinator.ask(ListSagas())
        await trio.sleep(0.1)
        stats = await coordinator.ask(GetSagaStatistics())
        assert await coordinator.ask(DiscardSaga("cf")) is True
        after = await coordinator.ask(ListSagas())
    error = caught.value
    assert error.compensation_step_name == "s1"
    assert error.step_name == "s2"
    assert error.compensated == ()
    assert "rejects cf:s1:compensate" in error.compensation_error
    assert error.category is ErrorCategory.INVALID_STATE
    # s0 was never compensated: an operator must look at it
    assert world.compensations("cf") == []
    assert [(s.saga_id, s.phase.value) for s in listed] == [("cf", "compensation_failed")]
    assert after == []
    assert [r for r in reports if isinstance(r, SagaReport)] == [
        SagaReport("cf", "order", "compensation_failed", 1, str(error), reports[0].at)
    ]
    assert stats.compensation_failed == 1
    assert stats.reports_sent == 1


async def test_the_compensation_deadline_bounds_the_whole_compensation(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A compensation that never answers is abandoned when the saga's deadline passes."""
    world = World()
    world.plan("d:s1", "reject")
    world.plan("d:s0:compensate", "lose", "lose", "lose", "lose")
    retry = RetrySettings(
        max_attempts=10,
        retry_on=frozenset(ErrorCategory),
        total_timeout=None,
        backoff=BackoffSettings(kind="constant", base_delay=1.0, jitter="none"),
    )
    definition = SagaDefinition(
        "deadline",
        [
            SagaStep(
                "s0",
                "a",
                action=lambda c: 0,
                compensate=lambda c: 0,
                compensation_timeout=4.0,
                compensation_retry=retry,
            ),
            SagaStep("s1", "b", action=lambda c: 0),
        ],
        compensation_deadline=10.0,
    )
    async with saga_tree(world, [definition]) as root:
        start = trio.current_time()
        with pytest.raises(CompensationFailed) as caught:
            await root.ref("sagas").ask(StartSaga("deadline", saga_id="d"))
        elapsed = trio.current_time() - start
    # attempts at 0 (4 s), 5 (4 s), then 10 would be past the deadline
    assert elapsed == pytest.approx(9.0)
    assert world.delivered.count("d:s0:compensate") == 2
    assert "AskTimeout" in caught.value.compensation_error


# ------------------------------------------------------------------------------ cancellation


async def test_a_caller_that_gives_up_mid_saga_gets_it_compensated(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Caller cancelled during step 2: the step is abandoned and everything is undone."""
    world = World()
    world.plan("cx:s2", ("sleep", 100.0))
    async with saga_tree(world, [chain(4, timeout=1000)]) as root:
        with trio.move_on_after(10.0):
            await root.ref("sagas").ask(StartSaga("order", saga_id="cx"), timeout=1000)
        info = await wait_finished(root, "cx")
    assert info.phase == "compensated"
    assert world.forward("cx") == ["s0", "s1"]  # s2 was abandoned before it took effect
    assert world.compensations("cx") == ["s2", "s1", "s0"]  # s2 was in flight: uncertain
    failed = next(e for e in info.events if e.kind == "step_failed")
    assert failed.step_name == "s2"
    assert "caller stopped waiting" in failed.detail
    assert "s3" not in world.delivered


async def test_an_ask_timeout_of_the_caller_cancels_the_saga(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The starting ask timing out counts as the caller giving up."""
    world = World()
    world.plan("at:s1", ("sleep", 100.0))
    async with saga_tree(world, [chain(2, timeout=1000)]) as root:
        with pytest.raises(AskTimeout):
            await root.ref("sagas").ask(StartSaga("order", saga_id="at"), timeout=5.0)
        info = await wait_finished(root, "at")
    assert info.phase == "compensated"
    assert world.compensations("at") == ["s1", "s0"]


class GatedJournal(MemoryJournal):
    """Holds the first write that ``when`` selects until ``release`` (or a cancellation)."""

    def __init__(self, when: Callable[[SagaEvent], bool]) -> None:
        super().__init__()
        self.when = when
        self.reached = trio.Event()
        self.release = trio.Event()

    async def _gate(self, events: Sequence[SagaEvent]) -> None:
        if not self.reached.is_set() and any(self.when(e) for e in events):
            self.reached.set()
            await self.release.wait()

    async def create(
        self, header: SagaHeader, first_event: SagaEvent, *, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        await self._gate([first_event, *then])
        return await super().create(header, first_event, then=then)

    async def append(self, event: SagaEvent) -> SagaState:
        await self._gate([event])
        return await super().append(event)

    async def append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        await self._gate(events)
        return await super().append_many(events)


async def test_cancelling_between_steps_journals_the_reply_and_compensates(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A cancellation while step 1's reply is being journaled: the reply is recorded, no step
    is in flight, the completed steps are undone and the next step is never sent."""
    world = World()
    journal = GatedJournal(lambda e: e.kind is SagaEventKind.STEP_COMPLETED and e.step == 1)
    async with saga_tree(world, [chain(3)], journal=journal) as root:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(root.ref("sagas").ask, StartSaga("order", saga_id="bt"))
                await journal.reached.wait()
                scope.cancel()
        info = await wait_finished(root, "bt")
    assert info.phase == "compensated"
    assert info.completed_steps == ["s0", "s1"]
    assert info.failed_step is None
    assert info.compensated == ["s1", "s0"]
    assert "bt:s2" not in world.delivered
    assert kinds(info)[4:6] == ["step_completed", "compensating"]
    assert info.events[-1].detail == "Cancelled: the saga's caller stopped waiting"


class _PlainJournal(MemoryJournal):
    """A subclass: the coordinator makes every write through the awaited calls."""


class _AnswersThenAbandons(Actor[Any, Any]):
    """Answers a step, then has the saga's caller give up before the saga's task resumes."""

    def __init__(self, world: World, coordinator: list[SagaCoordinator]) -> None:
        self.world = world
        self.coordinator = coordinator

    async def handle(self, message: Any) -> Any:
        self.world.delivered.append(message.key)
        self.world.order.append(message.key)
        reply = self.defer()
        reply.set({"key": message.key})
        if not message.compensate:
            coordinator = self.coordinator[0]
            coordinator._abandoned(coordinator._runs[message.saga_id])
        return None


@pytest.mark.parametrize("journal_type", [MemoryJournal, _PlainJournal])
async def test_a_caller_giving_up_as_a_reply_arrives_stops_before_the_next_write(
    mock_clock: trio.testing.MockClock, journal_type: type[MemoryJournal]
) -> None:
    """The caller gives up after step s1 answered, before the saga's task resumes: the reply
    is journaled, the next step is never journaled nor sent, completed steps are undone; the
    same whether the journal is written with or without awaiting."""
    world = World()
    made: list[SagaCoordinator] = []
    journal = journal_type()

    def coordinator() -> SagaCoordinator:
        made[:] = [SagaCoordinator(journal, [chain(3)])]
        return made[0]

    specs: list[Any] = [ChildSpec(name, service(name, world)) for name in SERVICES]
    specs[1] = ChildSpec("b", lambda: _AnswersThenAbandons(world, made))
    specs.append(ChildSpec("sagas", coordinator))
    async with open_supervisor(specs) as root:
        with pytest.raises(SagaFailed) as failed:
            await root.ref("sagas").ask(StartSaga("order", saga_id="ab"))
        info = await wait_finished(root, "ab")
    assert failed.value.cancelled
    assert kinds(info) == [
        "started",
        "step_started",
        "step_completed",
        "step_started",
        "step_completed",
        "compensating",
        "compensation_started",
        "compensated_step",
        "compensation_started",
        "compensated_step",
        "compensated",
    ]
    assert info.compensated == ["s1", "s0"]
    assert "ab:s2" not in world.delivered


class _LateGiveUp(MemoryJournal):
    """Has the caller of saga ``late`` give up just after its last write, before its task
    resumes (too late to cut anything short)."""

    def __init__(self) -> None:
        super().__init__()
        self.coordinator: list[SagaCoordinator] = []
        self.creates: list[str] = []

    async def create(
        self, header: SagaHeader, first_event: SagaEvent, *, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        self.creates.append(header.saga_id)
        return await super().create(header, first_event, then=then)

    async def append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        states = await super().append_many(events)
        if events[0].saga_id == "late" and events[-1].kind is SagaEventKind.COMPLETED:
            coordinator = self.coordinator[0]
            coordinator._abandoned(coordinator._runs["late"])
        return states


async def test_a_caller_giving_up_too_late_changes_nothing_for_the_next_sagas(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A caller that gives up after its saga's last write: the saga completes; the sagas the
    same worker runs next (one of them cancelled by its caller) are not affected."""
    world = World()
    journal = _LateGiveUp()

    def coordinator() -> SagaCoordinator:
        journal.coordinator[:] = [SagaCoordinator(journal, [chain(3)])]
        return journal.coordinator[0]

    specs: list[Any] = [ChildSpec(name, service(name, world)) for name in SERVICES]
    specs.append(ChildSpec("sagas", coordinator))
    world.plan("cut:s1", ("sleep", 5.0))
    async with open_supervisor(specs) as root:
        sagas = root.ref("sagas")
        late = await sagas.ask(StartSaga("order", saga_id="late"))
        assert isinstance(late, SagaResult)
        assert len(journal.coordinator[0]._idle) == 1  # one worker, reused below
        after = await sagas.ask(StartSaga("order", saga_id="after"))
        assert isinstance(after, SagaResult)
        with trio.move_on_after(2.0):
            await sagas.ask(StartSaga("order", saga_id="cut"), timeout=100)
        info = await wait_finished(root, "cut")
        again = await sagas.ask(StartSaga("order", saga_id="again"))
        assert isinstance(again, SagaResult)
        for saga_id in ("late", "after", "again"):
            assert (await wait_finished(root, saga_id)).phase == "completed"
    assert info.phase == "compensated"
    assert info.compensated == ["s1", "s0"]
    assert world.forward("again") == ["s0", "s1", "s2"]
    assert journal.creates == ["late", "after", "cut", "again"]  # no saga was driven twice


async def test_cancelling_before_the_first_step_ends_the_saga_cancelled(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A caller that gives up while the saga is being created: nothing is sent, the saga
    ends cancelled with nothing to compensate."""
    world = World()
    journal = GatedJournal(lambda e: e.kind is SagaEventKind.STARTED)
    async with saga_tree(world, [chain(2)], journal=journal) as root:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(root.ref("sagas").ask, StartSaga("order", saga_id="c0"))
                await journal.reached.wait()
                scope.cancel()
        await trio.sleep(0.1)
        journal.release.set()
        info = await wait_finished(root, "c0")
        stats = await root.ref("sagas").ask(GetSagaStatistics())
    # The first step's start is journaled with the saga (write-ahead); it was never sent, so
    # its failure is certain and there is nothing to compensate.
    assert kinds(info) == ["started", "step_started", "step_failed", "cancelled"]
    assert info.failed_step == "s0"
    assert info.compensated == []
    assert world.delivered == []
    assert stats.cancelled == 1


async def test_a_saga_started_without_waiting_runs_to_its_end(
    mock_clock: trio.testing.MockClock,
) -> None:
    """wait=False: SagaStarted once durable; the saga finishes regardless of the caller."""
    world = World()
    world.plan("nw:s1", ("sleep", 3.0))
    async with saga_tree(world, [chain(3)]) as root:
        started = await root.ref("sagas").ask(StartSaga("order", saga_id="nw", wait=False))
        info = await wait_finished(root, "nw")
    assert started == SagaStarted("nw")
    assert info.phase == "completed"
    assert world.forward("nw") == ["s0", "s1", "s2"]


async def test_a_caller_cannot_interrupt_compensation(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Compensation runs outside the caller's cancellation: giving up then changes nothing."""
    world = World()
    world.plan("ci:s2", "reject")
    world.plan("ci:s1:compensate", ("sleep", 50.0))
    async with saga_tree(world, [chain(3)]) as root:
        with trio.move_on_after(20.0):
            await root.ref("sagas").ask(StartSaga("order", saga_id="ci"), timeout=1000)
        info = await wait_finished(root, "ci")
    assert info.phase == "compensated"
    assert world.compensations("ci") == ["s1", "s0"]


# ------------------------------------------------------------------------------ concurrency


async def test_hundreds_of_concurrent_sagas_each_end_consistently(
    mock_clock: trio.testing.MockClock,
) -> None:
    """300 sagas at once, with slow steps and failures: each ends completed or compensated
    and its effects match its outcome; the coordinator's mailbox stays responsive."""
    world = World()
    outcomes: dict[str, str] = {}
    for n in range(300):
        if n % 7 == 3:
            world.plan(f"m{n}:s{n % 3}", "reject")
        world.plan(f"m{n}:s1", ("sleep", (n % 5) * 0.5))

    async def run(coordinator: Any, n: int) -> None:
        try:
            await coordinator.ask(StartSaga("order", n, saga_id=f"m{n}"), timeout=1000)
        except SagaFailed as exc:
            outcomes[f"m{n}"] = exc.outcome
        else:
            outcomes[f"m{n}"] = "completed"

    async with saga_tree(world, [chain(3)]) as root:
        coordinator = root.ref("sagas")
        async with trio.open_nursery() as nursery:
            for n in range(300):
                nursery.start_soon(run, coordinator, n)
            await trio.sleep(0.1)
            before = trio.current_time()
            running = await coordinator.ask(GetSagaStatistics())
            assert trio.current_time() == before  # answered while steps sleep
            assert running.running > 0
        stats = await coordinator.ask(GetSagaStatistics())
    assert len(outcomes) == 300
    for n in range(300):
        saga = f"m{n}"
        if n % 7 == 3:
            failed = n % 3
            assert outcomes[saga] == ("compensated" if failed else "failed")
            assert world.forward(saga) == [f"s{i}" for i in range(failed)]
            assert world.compensations(saga) == [f"s{i}" for i in range(failed - 1, -1, -1)]
        else:
            assert outcomes[saga] == "completed"
            assert world.forward(saga) == ["s0", "s1", "s2"]
    assert max(world.applied.values()) == 1
    assert stats.running == 0
    assert stats.started == 300


async def test_max_running_refuses_new_sagas_beyond_the_limit(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Past max_running, StartSaga is refused with BulkheadFull (nothing is journaled)."""
    world = World()
    world.plan("l0:s0", ("sleep", 10.0))
    async with saga_tree(world, [chain(1)], max_running=1) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("order", saga_id="l0", wait=False))
        with pytest.raises(BulkheadFull):
            await coordinator.ask(StartSaga("order", saga_id="l1"))
        assert await coordinator.ask(GetSaga("l1")) is None


# ------------------------------------------------------------------------------ identity


async def test_starting_a_running_saga_again_joins_it(mock_clock: trio.testing.MockClock) -> None:
    """The same id and input while it runs: both callers get the one outcome; one run."""
    world = World()
    world.plan("j:s0", ("sleep", 3.0))
    results: list[Any] = []

    async def start(coordinator: Any) -> None:
        results.append(await coordinator.ask(StartSaga("order", 1, saga_id="j")))

    async with saga_tree(world, [chain(2)]) as root, trio.open_nursery() as nursery:
        nursery.start_soon(start, root.ref("sagas"))
        await trio.sleep(1.0)
        nursery.start_soon(start, root.ref("sagas"))
    assert results[0] == results[1]
    assert world.delivered == ["j:s0", "j:s1"]


async def test_starting_a_finished_saga_again_returns_its_stored_outcome(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A finished saga still in the journal answers its outcome without running again."""
    world = World()
    world.plan("again:s1", "reject")
    async with saga_tree(world, [chain(2)]) as root:
        coordinator = root.ref("sagas")
        with pytest.raises(SagaFailed) as first:
            await coordinator.ask(StartSaga("order", saga_id="again"))
        with pytest.raises(SagaFailed) as second:
            await coordinator.ask(StartSaga("order", saga_id="again"))
        assert await coordinator.ask(StartSaga("order", saga_id="again", wait=False)) == (
            SagaStarted("again")
        )
    assert str(first.value) == str(second.value)
    assert second.value.compensated == ("s0",)
    assert world.delivered == ["again:s0", "again:s1", "again:s0:compensate"]


async def test_the_same_id_with_another_input_is_a_conflict(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Reusing a saga id for a different request raises IdempotencyConflict."""
    world = World()
    async with saga_tree(world, [chain(1)]) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("order", 1, saga_id="same"))
        with pytest.raises(IdempotencyConflict):
            await coordinator.ask(StartSaga("order", 2, saga_id="same"))


async def test_bad_requests_are_answered_with_typed_errors(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Unknown definition, unencodable input, bad metadata, unknown message: errors, no crash."""
    async with saga_tree(World(), [chain(1)]) as root:
        coordinator = root.ref("sagas")
        with pytest.raises(UnknownSagaDefinition, match="known: order"):
            await coordinator.ask(StartSaga("nope"))
        with pytest.raises(TypeError, match="input"):
            await coordinator.ask(StartSaga("order", object()))
        with pytest.raises(TypeError, match="metadata"):
            await coordinator.ask(StartSaga("order", metadata={"x": object()}))
        with pytest.raises(TypeError, match="accepts StartSaga"):
            await coordinator.ask("hello")
        assert coordinator.statistics().crashed == 0


async def test_sagas_get_fresh_unique_ids_by_default(mock_clock: trio.testing.MockClock) -> None:
    """Without saga_id, every saga gets its own id."""
    async with saga_tree(World(), [chain(1)]) as root:
        ids = {(await root.ref("sagas").ask(StartSaga("order"))).saga_id for _ in range(20)}
    assert len(ids) == 20


# ------------------------------------------------------------------------------ queries


async def test_the_audit_trail_lists_every_transition_with_timestamps(
    mock_clock: trio.testing.MockClock,
) -> None:
    """GetSaga: events in order with wall-clock times, step names and details."""
    world = World()
    world.plan("au:s1", "reject")
    async with saga_tree(world, [chain(2)]) as root:
        with pytest.raises(SagaFailed):
            await root.ref("sagas").ask(
                StartSaga("order", {"x": 1}, saga_id="au", metadata={"user": "u1"})
            )
        info = await root.ref("sagas").ask(GetSaga("au"))
        assert await root.ref("sagas").ask(GetSaga("unknown")) is None
    assert kinds(info) == [
        "started",
        "step_started",
        "step_completed",
        "step_started",
        "step_failed",
        "compensating",
        "compensation_started",
        "compensated_step",
        "compensated",
    ]
    assert [e.seq for e in info.events] == list(range(9))
    assert all(info.created_at <= e.at <= info.updated_at for e in info.events)
    assert info.events[2].step_name == "s0"
    assert "'key': 'au:s0'" in info.events[2].detail
    assert "rejects au:s1" in info.events[4].detail
    assert info.input == {"x": 1}
    assert info.metadata == {"user": "u1"}
    assert info.completed_steps == ["s0"]
    assert info.finished
    assert not info.running_here


async def test_list_shows_running_sagas_and_statistics_count_outcomes(
    mock_clock: trio.testing.MockClock,
) -> None:
    """ListSagas lists the unfinished; statistics count starts and outcomes."""
    world = World()
    world.plan("slow:s0", ("sleep", 4.0))
    world.plan("bad:s0", "reject")
    async with saga_tree(world, [chain(1)]) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("order", saga_id="slow", wait=False))
        with pytest.raises(SagaFailed):
            await coordinator.ask(StartSaga("order", saga_id="bad"))
        await coordinator.ask(StartSaga("order", saga_id="good"))
        listed = await coordinator.ask(ListSagas())
        running = await coordinator.ask(GetSaga("slow"))
        await wait_finished(root, "slow")
        stats = await coordinator.ask(GetSagaStatistics())
    assert [s.saga_id for s in listed] == ["slow"]
    assert running.running_here
    assert running.phase == "step_in_flight"
    assert (stats.started, stats.completed, stats.failed, stats.running) == (3, 2, 1, 0)


async def test_discarding_an_unfinished_saga_is_refused(mock_clock: trio.testing.MockClock) -> None:
    """DiscardSaga only removes finished sagas."""
    world = World()
    world.plan("busy:s0", ("sleep", 10.0))
    async with saga_tree(world, [chain(1)]) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("order", saga_id="busy", wait=False))
        with pytest.raises(Exception, match="running"):
            await coordinator.ask(DiscardSaga("busy"))
        assert await coordinator.ask(DiscardSaga("never-was")) is False


async def test_reports_are_dropped_and_counted_when_the_monitor_cannot_take_them(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A monitor path that does not exist: reports are dropped and counted, nothing blocks."""
    world = World()
    world.plan("dr:s0", "reject")
    async with saga_tree(world, [chain(1)], monitor="no/such/monitor") as root:
        with pytest.raises(SagaFailed):
            await root.ref("sagas").ask(StartSaga("order", saga_id="dr"))
        stats = await root.ref("sagas").ask(GetSagaStatistics())
    assert (stats.reports_sent, stats.reports_dropped) == (0, 1)


# ------------------------------------------------------------------------------ definitions


def _step(**overrides: Any) -> SagaStep:
    options: dict[str, Any] = {"name": "s", "target": "a", "action": lambda ctx: 0}
    options.update(overrides)
    return SagaStep(**options)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "bad:name"}, "name"),
        ({"name": ""}, "name"),
        ({"target": "/abs"}, "target"),
        ({"target": 3}, "target"),
        ({"action": "not callable"}, "action"),
        ({"compensate": 5}, "compensate"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"compensation_timeout": -1}, "compensation_timeout"),
        ({"retry": {"max_attempts": 2}}, "retry"),
        ({"delivery": "email"}, "delivery"),
        ({"compensate_failed": "sometimes"}, "compensate_failed"),
        ({"reply_type": int | str | bytes}, "reply_type"),
    ],
)
def test_a_bad_step_is_refused_with_the_field_named(overrides: dict[str, Any], field: str) -> None:
    """SagaStep validates every option and names the offending field."""
    with pytest.raises(ConfigError) as caught:
        _step(**overrides)
    assert caught.value.path == field


def test_a_bad_definition_is_refused() -> None:
    """No steps, duplicate step names, a bad deadline or input type: ConfigError."""
    with pytest.raises(ConfigError, match="no steps"):
        SagaDefinition("d", [])
    with pytest.raises(ConfigError, match="two steps"):
        SagaDefinition("d", [_step(), _step()])
    with pytest.raises(ConfigError, match="compensation_deadline"):
        SagaDefinition("d", [_step()], compensation_deadline=0)
    with pytest.raises(ConfigError, match="input_type"):
        SagaDefinition("d", [_step()], input_type=int | str | bytes)
    with pytest.raises(ConfigError, match="name"):
        SagaDefinition("a b", [_step()])
    with pytest.raises(ConfigError, match="SagaStep"):
        SagaDefinition("d", ["step"])  # type: ignore[list-item]


def test_a_coordinator_refuses_bad_settings() -> None:
    """Duplicate definitions, a bad max_running or monitor: ConfigError at construction."""
    journal = MemoryJournal()
    with pytest.raises(ConfigError, match="two saga definitions"):
        SagaCoordinator(journal, [chain(1), chain(1)])
    with pytest.raises(ConfigError, match="max_running"):
        SagaCoordinator(journal, [chain(1)], max_running=0)
    with pytest.raises(ConfigError, match="monitor"):
        SagaCoordinator(journal, [chain(1)], monitor=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="SagaDefinition"):
        SagaCoordinator(journal, ["order"])  # type: ignore[list-item]


def test_step_context_reads_only_completed_steps() -> None:
    """ctx.result of a step that has not completed raises KeyError naming it."""
    from actors._saga._definition import SagaView

    definition = chain(3)
    view = SagaView("s", definition, None)
    results = (msgspec.msgpack.encode({"r": 0}),)
    ctx = StepContext(view, 1, "s:s1", 1, results)
    assert ctx.result("s0") == {"r": 0}
    assert ctx.results == {"s0": {"r": 0}}
    assert ctx.reply is None
    with pytest.raises(KeyError, match="s2"):
        ctx.result("s2")
    with pytest.raises(KeyError, match="no step"):
        ctx.result("zz")
    assert (ctx.saga_id, ctx.definition, ctx.name, ctx.key) == ("s", "order", "s1", "s:s1")
    assert "s:s1" in repr(ctx)


@given(
    options=st.lists(
        st.tuples(st.booleans(), st.sampled_from(["uncertain", "always", "never"])),
        min_size=1,
        max_size=6,
    ),
    data=st.data(),
)
def test_the_compensation_plan_is_the_model_s(
    options: list[tuple[bool, str]], data: st.DataObject
) -> None:
    """The steps compensated, in order, are the completed compensatable ones, last first,
    preceded by the failed step when its policy (and the failure's certainty) says so."""
    from actors._saga._coordinator import _Run
    from actors._saga._definition import StepError

    n = len(options)
    completed = data.draw(st.integers(min_value=0, max_value=n - 1), label="completed")
    failed = data.draw(st.sampled_from([None, completed]), label="failed")
    uncertain = data.draw(st.booleans(), label="uncertain")
    definition = SagaDefinition(
        "plan",
        [
            SagaStep(
                f"s{i}",
                "a",
                action=lambda c: 0,
                compensate=(lambda c: 0) if comp else None,
                compensate_failed=policy,  # type: ignore[arg-type]
            )
            for i, (comp, policy) in enumerate(options)
        ],
    )
    error = StepError("E", "", "timeout" if uncertain else "validation", uncertain=uncertain)
    state = SagaState(
        saga_id="x",
        definition="plan",
        next_step=completed,
        failed_step=failed,
        step_error=msgspec.msgpack.encode(error) if failed is not None else b"",
    )
    coordinator = SagaCoordinator(MemoryJournal(), [definition])
    run = _Run(SagaHeader("x", "plan", 0.0), definition, None)
    plan = []
    below = completed + (0 if failed is None else 1)
    while (j := coordinator._next_compensation(run, state, below)) is not None:
        plan.append(j)
        below = j

    def wanted(j: int) -> bool:
        comp, policy = options[j]
        if not comp:
            return False
        if j < completed:
            return True
        return j == failed and (policy == "always" or (policy == "uncertain" and uncertain))

    assert plan == [j for j in range(n - 1, -1, -1) if wanted(j)]


async def test_the_coordinators_counters_never_go_down_across_restarts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The counters are exported as Prometheus counters: a restart of the coordinator keeps
    them (they live in its slot), so rate() never sees a reset."""
    world = World()
    async with saga_tree(world, [chain(2)]) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("order", {"id": 1}, saga_id="c1"))
        before = await coordinator.ask(GetSagaStatistics())
        await root.terminate_child("sagas")
        await root.restart_child("sagas")
        await coordinator.ask(StartSaga("order", {"id": 2}, saga_id="c2"))
        after = await coordinator.ask(GetSagaStatistics())
    assert (before.started, before.completed, before.steps_sent) == (1, 1, 2)
    assert (after.started, after.completed, after.steps_sent) == (2, 2, 4)
