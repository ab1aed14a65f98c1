"""OpenTelemetry for sagas: the saga span under the caller's, a span per step and per
compensation, the step's context in the messages it sends, and a trace that continues when a
restarted coordinator (or another process) resumes the saga from its journal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from actors import (
    Actor,
    ActorStopped,
    MemoryJournal,
    ProviderActor,
    SagaStepMessage,
    TraceContext,
    current_trace_context,
)
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep, StepContext
from actors._saga._messages import GetSaga, StartSaga
from actors._telemetry import _names as N
from supervisors import ChildSpec, open_supervisor
from tests.test_provider import FakeService
from tests.test_saga import QUICK_RETRY, World, chain, saga_tree, wait_finished
from tests.test_telemetry import Otel, parent_of, recording, span_id


@pytest.fixture
def otel() -> Iterator[Otel]:
    with recording() as found:
        yield found


def one(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


class Recorder(Actor[Any, Any]):
    """Answers every step message and keeps what it received."""

    def __init__(self, seen: list[SagaStepMessage]) -> None:
        self.seen = seen

    async def handle(self, message: Any) -> Any:
        self.seen.append(message)
        return {"done": message.step}


async def test_saga_and_step_spans_follow_the_caller(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """The caller's span is the saga span's parent; each step has a span under the saga span;
    a step sent to a provider carries its span (the provider's call span is the step's child),
    a step sent to another actor carries it in SagaStepMessage.trace."""
    seen: list[SagaStepMessage] = []

    def build(ctx: StepContext) -> Any:
        return {"step": ctx.name}

    definition = SagaDefinition(
        "order",
        [
            SagaStep("reserve", "recorder", build),
            SagaStep("charge", "payments", build),
        ],
    )
    tree = [
        ChildSpec("recorder", lambda: Recorder(seen)),
        ChildSpec("payments", lambda: ProviderActor("payments", FakeService())),
        ChildSpec("sagas", lambda: SagaCoordinator(MemoryJournal(), [definition])),
    ]
    async with open_supervisor(tree) as root:
        with otel.tracer.start_as_current_span("checkout") as caller:
            start = StartSaga("order", saga_id="o1")  # the current span by default
            assert start.trace == current_trace_context()
            result = await root.ref("sagas").ask(start)
        assert list(result.results) == ["reserve", "charge"]
    saga = one(otel.finished("saga order"))
    assert parent_of(saga) == span_id(caller)
    assert saga.attributes[N.SAGA_ID] == "o1"
    assert saga.attributes[N.SAGA_RECOVERED] is False
    assert saga.attributes[N.OUTCOME] == "completed"
    reserve = one(otel.finished("step order.reserve"))
    charge = one(otel.finished("step order.charge"))
    assert parent_of(reserve) == parent_of(charge) == saga.context.span_id
    assert {s.context.trace_id for s in otel.finished()} == {caller.get_span_context().trace_id}
    [message] = seen
    assert message.trace is not None
    assert message.trace.traceparent.split("-")[2] == f"{reserve.context.span_id:016x}"
    with otel.tracer.start_as_current_span("work", context=message.trace.otel_context()) as work:
        pass
    assert parent_of(one(otel.finished("work"))) == reserve.context.span_id
    assert work.get_span_context().trace_id == reserve.context.trace_id
    call = one(otel.finished("call payments"))
    assert parent_of(call) == charge.context.span_id
    assert parent_of(one(otel.finished("attempt payments"))) == call.context.span_id


async def test_compensation_spans_and_a_failed_saga(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """A failing step's span is an error; each compensation has its span under the saga's;
    the saga span ends as an error with its outcome; the saga metrics count it."""
    world = World()
    world.plan("c1:s2", *["reject"] * 10)
    async with saga_tree(world, [chain(3, retry=QUICK_RETRY)]) as root:
        with otel.tracer.start_as_current_span("caller"), pytest.raises(Exception, match="s2"):
            await root.ref("sagas").ask(
                StartSaga("order", saga_id="c1", trace=current_trace_context())
            )
    saga = one(otel.finished("saga order"))
    assert saga.status.status_code is StatusCode.ERROR
    assert saga.attributes[N.OUTCOME] == "compensated"
    failed = one(otel.finished("step order.s2"))
    assert failed.status.status_code is StatusCode.ERROR
    compensations = [s for s in otel.finished() if s.name.startswith("compensate ")]
    # s1 and s0, and s2 whose retried sends may have landed.
    assert {c.name for c in compensations} >= {"compensate order.s1", "compensate order.s0"}
    assert all(parent_of(c) == saga.context.span_id for c in compensations)
    assert all(c.attributes[N.SAGA_COMPENSATION] is True for c in compensations)
    assert otel.count(N.SAGA_DURATION, **{N.OUTCOME: "compensated"}) == 1
    assert otel.count(N.SAGA_STEP_DURATION, **{N.SAGA_COMPENSATION: True}) == len(compensations)
    assert otel.count(N.SAGA_STEP_DURATION, **{N.OUTCOME: "failure"}) == 1


async def test_a_restarted_coordinator_continues_the_trace(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """The coordinator is restarted mid-step: the caller's context was journaled with the
    saga, so the new incarnation's saga span (recovered) has the caller's span as parent."""
    world = World()
    world.plan("op:s1", ("sleep", 3.0))
    async with saga_tree(world, [chain(3)]) as root:
        coordinator = root.ref("sagas")
        with otel.tracer.start_as_current_span("caller") as caller:
            context = current_trace_context()
        async with trio.open_nursery() as nursery:

            async def first() -> None:
                with pytest.raises(ActorStopped):
                    await coordinator.ask(StartSaga("order", saga_id="op", trace=context))

            nursery.start_soon(first)
            await trio.sleep(1.0)
            await root.terminate_child("sagas")
            await root.restart_child("sagas")
        info = await wait_finished(root, "op")
        assert info.phase == "completed"
        assert info.metadata["traceparent"] == context.traceparent  # type: ignore[union-attr]
    sagas = sorted(otel.finished("saga order"), key=lambda s: s.start_time or 0)
    assert [s.attributes[N.SAGA_RECOVERED] for s in sagas] == [False, True]
    assert sagas[0].attributes.get("aura.saga.interrupted") is True
    assert all(parent_of(s) == span_id(caller) for s in sagas)
    assert sagas[1].attributes[N.OUTCOME] == "completed"


async def test_another_process_resumes_the_saga_in_the_callers_trace(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """A journal left by one tree (a process that went away) is resumed by a new tree: its
    saga span continues the trace the caller started, and the steps it sends carry it on."""
    journal = MemoryJournal()
    world = World()
    world.plan("p1:s1", ("sleep", 1000.0))
    with otel.tracer.start_as_current_span("caller") as caller:
        context = current_trace_context()
    async with saga_tree(world, [chain(3)], journal=journal) as root:
        await root.ref("sagas").ask(StartSaga("order", saga_id="p1", wait=False, trace=context))
        await trio.sleep(1.0)  # s1 is in flight when the "process" stops
    again = World()
    async with saga_tree(again, [chain(3)], journal=journal) as root:
        info = await wait_finished(root, "p1")
        assert info.phase == "completed"
        assert (await root.ref("sagas").ask(GetSaga("p1"))).metadata["traceparent"]
    resumed = [s for s in otel.finished("saga order") if s.attributes[N.SAGA_RECOVERED]]
    saga = one(resumed)
    assert parent_of(saga) == span_id(caller)
    steps = [s for s in otel.finished() if s.name.startswith("step ") and
             parent_of(s) == saga.context.span_id]  # fmt: skip
    assert {s.name for s in steps} == {"step order.s1", "step order.s2"}


async def test_without_a_trace_nothing_is_journaled(mock_clock: trio.testing.MockClock) -> None:
    """Without telemetry a saga's metadata is the caller's, untouched."""
    world = World()
    async with saga_tree(world, [chain(2)]) as root:
        await root.ref("sagas").ask(StartSaga("order", saga_id="n1", metadata={"a": 1}))
        info = await root.ref("sagas").ask(GetSaga("n1"))
    assert info.metadata == {"a": 1}


async def test_the_trace_context_survives_an_sqlite_journal(tmp_path: Path) -> None:
    """What a resumed saga reads back from an SQLite file (a new process) is the caller's
    context, exactly."""
    from actors import SagaHeader, SagaState, SqliteJournal
    from actors._saga._journals._records import SagaEventKind
    from actors._saga._tracing import journaled_metadata, journaled_trace

    context = TraceContext("00-" + "1f" * 16 + "-" + "2e" * 8 + "-01", "congo=t61rcWkgMzE")
    metadata = journaled_metadata({"order": 42}, context)
    header = SagaHeader("t1", "order", 1000.0, b"", metadata)
    async with SqliteJournal(tmp_path / "sagas.db") as journal:
        await journal.create(header, SagaState.new(header).next_event(SagaEventKind.STARTED))
    async with SqliteJournal(tmp_path / "sagas.db") as journal:
        [(found, _events)] = await journal.load_unfinished()
    assert journaled_trace(found.metadata) == context
    assert found.metadata["order"] == 42
    assert journaled_metadata({"traceparent": "mine"}, context) == {"traceparent": "mine"}
