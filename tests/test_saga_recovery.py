"""Saga recovery: a coordinator resumes journals left in every intermediate state, after an
actor restart and after the process is gone, applying every effect at most once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import hypothesis.strategies as st
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings

from actors import Actor, ActorCrashed, ActorStopped, MemoryJournal
from actors._protocol import SagaReport
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, StepError
from actors._saga._journals._records import (
    Journal,
    JournalStatistics,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaSummary,
)
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._journals._state import SagaState
from actors._saga._messages import GetSaga, GetSagaStatistics, ListSagas, SagaInfo, StartSaga
from supervisors import ChildSpec, open_supervisor
from tests.test_saga import SERVICES, World, chain, saga_tree, service, wait_finished

K = SagaEventKind
Move = tuple[SagaEventKind, int | None, bytes]

DEFINITE = msgspec.msgpack.encode(StepError("ValueError", "rejected", "validation"))
UNCERTAIN = msgspec.msgpack.encode(StepError("AskTimeout", "no reply", "timeout", uncertain=True))
CANCELLED = msgspec.msgpack.encode(
    StepError("Cancelled", "caller gone", "cancellation", uncertain=True, cancelled=True)
)


def with_step(definition: SagaDefinition, index: int, **changes: Any) -> SagaDefinition:
    """``definition`` with step ``index`` changed."""
    steps = list(definition.steps)
    steps[index] = attrs.evolve(steps[index], **changes)
    return attrs.evolve(definition, steps=steps)


def reply(saga_id: str, step: int) -> bytes:
    """The journaled reply of a step, as the fake service answers it."""
    key = f"{saga_id}:s{step}"
    return msgspec.msgpack.encode({"by": SERVICES[step], "key": key, "payload": None})


async def journal_at(journal: Journal, saga_id: str, moves: Sequence[Move]) -> SagaState:
    """Write a saga of the 'order' definition that went through ``moves`` (after ``started``)."""
    header = SagaHeader(saga_id, "order", 1000.0, msgspec.msgpack.encode(None))
    state = await journal.create(header, SagaState.new(header).next_event(K.STARTED, at=1000.0))
    for kind, step, data in moves:
        state = await journal.append(state.next_event(kind, step, data))
    return state


def done(saga_id: str, *steps: int) -> list[Move]:
    """Moves of steps that started and completed."""
    moves: list[Move] = []
    for i in steps:
        moves += [(K.STEP_STARTED, i, b""), (K.STEP_COMPLETED, i, reply(saga_id, i))]
    return moves


def applied_before(world: World, *keys: str) -> None:
    """Effects the services applied before the crash (their replies were never journaled)."""
    for key in keys:
        step = int(key.split(":")[1][1:])
        world.applied[key] += 1
        world.order.append(key)
        world.replies[key] = {"by": SERVICES[step], "key": key, "payload": None}


S = "r1"
CASES: dict[str, tuple[list[Move], list[str], str, list[str]]] = {
    # name: (moves after `started`, keys applied before the crash, outcome, keys delivered)
    "started only": ([], [], "completed", ["r1:s0", "r1:s1", "r1:s2"]),
    "running after step 0": (done(S, 0), ["r1:s0"], "completed", ["r1:s1", "r1:s2"]),
    "running after the last step": (done(S, 0, 1, 2), ["r1:s0", "r1:s1", "r1:s2"], "completed", []),
    "step in flight, applied": (
        [*done(S, 0), (K.STEP_STARTED, 1, b"")],
        ["r1:s0", "r1:s1"],
        "completed",
        ["r1:s1", "r1:s2"],
    ),
    "step in flight, not applied": (
        [*done(S, 0), (K.STEP_STARTED, 1, b"")],
        ["r1:s0"],
        "completed",
        ["r1:s1", "r1:s2"],
    ),
    "step re-sent twice before": (
        [*done(S, 0), *[(K.STEP_STARTED, 1, b"")] * 3],
        ["r1:s0"],
        "completed",
        ["r1:s1", "r1:s2"],
    ),
    "step failed, definite": (
        [*done(S, 0), (K.STEP_STARTED, 1, b""), (K.STEP_FAILED, 1, DEFINITE)],
        ["r1:s0"],
        "compensated",
        ["r1:s0:compensate"],
    ),
    "step failed, uncertain": (
        [*done(S, 0), (K.STEP_STARTED, 1, b""), (K.STEP_FAILED, 1, UNCERTAIN)],
        ["r1:s0", "r1:s1"],
        "compensated",
        ["r1:s1:compensate", "r1:s0:compensate"],
    ),
    "step failed, cancelled": (
        [(K.STEP_STARTED, 0, b""), (K.STEP_FAILED, 0, CANCELLED)],
        [],
        "compensated",
        ["r1:s0:compensate"],
    ),
    "first step failed, definite": (
        [(K.STEP_STARTED, 0, b""), (K.STEP_FAILED, 0, DEFINITE)],
        [],
        "failed",
        [],
    ),
    "compensating, nothing started": (
        [
            *done(S, 0, 1),
            (K.STEP_STARTED, 2, b""),
            (K.STEP_FAILED, 2, DEFINITE),
            (K.COMPENSATING, None, DEFINITE),
        ],
        ["r1:s0", "r1:s1"],
        "compensated",
        ["r1:s1:compensate", "r1:s0:compensate"],
    ),
    "compensating, one compensated": (
        [
            *done(S, 0, 1),
            (K.STEP_STARTED, 2, b""),
            (K.STEP_FAILED, 2, DEFINITE),
            (K.COMPENSATING, None, DEFINITE),
            (K.COMPENSATION_STARTED, 1, b""),
            (K.COMPENSATED_STEP, 1, b""),
        ],
        ["r1:s0", "r1:s1", "r1:s1:compensate"],
        "compensated",
        ["r1:s0:compensate"],
    ),
    "compensation in flight, applied": (
        [
            *done(S, 0, 1),
            (K.STEP_STARTED, 2, b""),
            (K.STEP_FAILED, 2, DEFINITE),
            (K.COMPENSATING, None, DEFINITE),
            (K.COMPENSATION_STARTED, 1, b""),
        ],
        ["r1:s0", "r1:s1", "r1:s1:compensate"],
        "compensated",
        ["r1:s1:compensate", "r1:s0:compensate"],
    ),
    "compensation waiting for a retry": (
        [
            *done(S, 0),
            (K.STEP_STARTED, 1, b""),
            (K.STEP_FAILED, 1, DEFINITE),
            (K.COMPENSATING, None, DEFINITE),
            (K.COMPENSATION_STARTED, 0, b""),
            (K.COMPENSATION_FAILED_STEP, 0, DEFINITE),
        ],
        ["r1:s0"],
        "compensated",
        ["r1:s0:compensate"],
    ),
    "every compensation done, not yet ended": (
        [
            *done(S, 0),
            (K.STEP_STARTED, 1, b""),
            (K.STEP_FAILED, 1, DEFINITE),
            (K.COMPENSATING, None, DEFINITE),
            (K.COMPENSATION_STARTED, 0, b""),
            (K.COMPENSATED_STEP, 0, b""),
        ],
        ["r1:s0", "r1:s0:compensate"],
        "compensated",
        [],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_coordinator_resumes_a_saga_left_in_any_state(
    mock_clock: trio.testing.MockClock, case: str
) -> None:
    """Every intermediate state: the saga ends as expected; no effect is applied twice and
    the steps and compensations already journaled are not sent again."""
    moves, before, outcome, delivered = CASES[case]
    world = World()
    applied_before(world, *before)
    async with MemoryJournal() as journal:
        await journal_at(journal, S, moves)
        async with saga_tree(world, [chain(3)], journal=journal) as root:
            info = await wait_finished(root, S)
            stats = await root.ref("sagas").ask(GetSagaStatistics())
    assert info.phase == outcome
    assert world.delivered == delivered
    assert max(world.applied.values(), default=1) == 1
    assert stats.recovered == 1
    if outcome == "completed":
        assert world.forward(S) == ["s0", "s1", "s2"]
        assert world.compensations(S) == []
    else:
        compensated = world.compensations(S)
        # every applied step (all are compensatable) is compensated exactly once, last first
        assert set(world.forward(S)) <= set(compensated)
        assert sorted(set(compensated), reverse=True) == compensated


async def test_a_resent_step_sees_its_attempt_number(mock_clock: trio.testing.MockClock) -> None:
    """After two earlier sends, the re-sent step's context says attempt 3."""
    attempts: list[int] = []
    definition = chain(2)
    original = definition.steps[1].action

    def spy(ctx: Any) -> Any:
        attempts.append(ctx.attempt)
        return original(ctx)

    definition = with_step(definition, 1, action=spy)
    async with MemoryJournal() as journal:
        await journal_at(
            journal, S, [*done(S, 0), (K.STEP_STARTED, 1, b""), (K.STEP_STARTED, 1, b"")]
        )
        async with saga_tree(World(), [definition], journal=journal) as root:
            info = await wait_finished(root, S)
    assert attempts == [3]
    assert [e.detail for e in info.events if e.kind == "step_started"][-1] == (
        "re-sent (attempt 3)"
    )


async def test_a_saga_with_an_unknown_definition_is_left_alone_and_reported(
    mock_clock: trio.testing.MockClock,
) -> None:
    """No definition for a journaled saga: it is not touched, stays listed, is reported."""
    reports: list[Any] = []
    async with MemoryJournal() as journal:
        header = SagaHeader("ghost", "retired", 5.0)
        await journal.create(header, SagaState.new(header).next_event(K.STARTED))
        await journal_at(journal, "too-far", [*done("too-far", 0, 1, 2), (K.STEP_STARTED, 3, b"")])
        async with saga_tree(World(), [chain(3)], journal=journal, reports=reports) as root:
            await trio.sleep(1.0)
            listed = await root.ref("sagas").ask(ListSagas())
            stats = await root.ref("sagas").ask(GetSagaStatistics())
            info = await root.ref("sagas").ask(GetSaga("ghost"))
    assert sorted(s.saga_id for s in listed) == ["ghost", "too-far"]
    assert stats.unresumable == 2
    assert stats.recovered == 0
    assert {(r.saga_id, r.status) for r in reports if isinstance(r, SagaReport)} == {
        ("ghost", "unresumable"),
        ("too-far", "unresumable"),
    }
    assert info.events[0].kind == "started"
    assert len(info.events) == 1


class FlakyJournal:
    """A journal that raises once, at its ``fail_at``-th write, after (or instead of) it.

    The exception crashes the coordinator that made the write, like a bug or a lost process.
    """

    def __init__(self, inner: MemoryJournal, fail_at: int, *, lands: bool) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.lands = lands
        self.writes = 0
        self.crashed = trio.Event()

    async def _write(self, do: Callable[[], Any]) -> Any:
        self.writes += 1
        if self.writes != self.fail_at:
            return await do()
        if self.lands:
            await do()
        self.crashed.set()
        raise RuntimeError(f"injected crash at write {self.writes}")

    async def create(
        self, header: SagaHeader, first_event: SagaEvent, *, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        return await self._write(lambda: self.inner.create(header, first_event, then=then))  # type: ignore[no-any-return]

    async def append(self, event: SagaEvent) -> SagaState:
        return await self._write(lambda: self.inner.append(event))  # type: ignore[no-any-return]

    async def append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        return await self._write(lambda: self.inner.append_many(events))  # type: ignore[no-any-return]

    async def load_unfinished(self) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        return await self.inner.load_unfinished()

    async def get(self, saga_id: str) -> tuple[SagaHeader, list[SagaEvent]] | None:
        return await self.inner.get(saga_id)

    async def list_unfinished(self) -> list[SagaSummary]:
        return await self.inner.list_unfinished()

    async def prune_finished(self, older_than: Any = None, keep_last: Any = None) -> int:
        return await self.inner.prune_finished(older_than, keep_last)

    async def discard(self, saga_id: str) -> bool:
        return await self.inner.discard(saga_id)

    def statistics(self) -> JournalStatistics:
        return self.inner.statistics()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> FlakyJournal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@pytest.mark.parametrize("lands", [False, True])
@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5])
async def test_a_restarted_coordinator_finishes_the_saga_its_crash_interrupted(
    mock_clock: trio.testing.MockClock, fail_at: int, lands: bool
) -> None:
    """The coordinator crashes at a journal write; its supervisor restarts it, the new
    incarnation resumes the saga: the caller got ActorCrashed, the outcome is queryable and
    every effect happened once."""
    world = World()
    world.plan("c1:s2", *["reject"] * 5)  # on every delivery
    journal = FlakyJournal(MemoryJournal(), fail_at, lands=lands)
    async with saga_tree(world, [chain(3)], journal=journal) as root:
        coordinator = root.ref("sagas")
        try:
            await coordinator.ask(StartSaga("order", saga_id="c1"))
        except ActorCrashed:
            pass
        info = await wait_finished(root, "c1") if (fail_at > 1 or lands) else None
        await trio.sleep(0.1)  # the supervisor restarts the coordinator
        restarts = coordinator.statistics().restarts
    assert restarts == 1
    if info is None:  # the create itself failed: nothing was journaled or sent
        assert world.delivered == []
        return
    assert info.phase == "compensated"
    assert world.forward("c1") == ["s0", "s1"]
    # s2 re-sent after the crash may have landed the first time: it is compensated too.
    resent = [e for e in info.events if e.kind == "step_started" and e.step == 2][1:]
    assert world.compensations("c1") == (["s2", "s1", "s0"] if resent else ["s1", "s0"])
    assert max(world.applied.values()) == 1


async def test_a_saga_continues_after_its_coordinator_is_restarted_by_an_operator(
    mock_clock: trio.testing.MockClock,
) -> None:
    """restart_child stops the coordinator mid-step; the new one re-sends the step (same key)
    and the saga completes; a StartSaga with the same id joins it."""
    world = World()
    world.plan("op:s1", ("sleep", 3.0))
    async with saga_tree(world, [chain(3)]) as root:
        coordinator = root.ref("sagas")
        async with trio.open_nursery() as nursery:

            async def first() -> None:
                with pytest.raises(ActorStopped):
                    await coordinator.ask(StartSaga("order", saga_id="op"))

            nursery.start_soon(first)
            await trio.sleep(1.0)
            await root.terminate_child("sagas")
            await root.restart_child("sagas")
        result = await coordinator.ask(StartSaga("order", saga_id="op"))
    assert list(result.results) == ["s0", "s1", "s2"]
    assert world.delivered.count("op:s1") == 2
    assert world.applied["op:s1"] == 1


# ----------------------------------------------------------------------------- SQLite, reopened


class Gate:
    """Holds a step until released (real time, no sleeping)."""

    def __init__(self) -> None:
        self.reached = trio.Event()
        self.release = trio.Event()


async def test_an_sqlite_journal_reopened_by_a_new_process_finishes_the_saga(
    tmp_path: Path,
) -> None:
    """A tree torn down mid-saga (as a dying process) leaves the saga in the file; a new
    journal and coordinator over the file re-send the step in flight and complete it."""
    path = tmp_path / "sagas.db"
    world = World()
    gate = Gate()

    class Held(Actor[Any, Any]):
        async def handle(self, message: Any) -> Any:
            world.delivered.append(message.key)
            if not gate.reached.is_set():
                gate.reached.set()
                await gate.release.wait()
            return {"held": message.key}

    definition = with_step(chain(2), 1, target="held", timeout=60.0)
    held = ChildSpec("held", Held, shutdown=0.01)
    async with (
        SqliteJournal(path) as journal,
        saga_tree(world, [definition], journal=journal, extra=[held]) as root,
    ):
        await root.ref("sagas").ask(StartSaga("order", saga_id="sq", wait=False))
        await gate.reached.wait()
    assert world.delivered == ["sq:s0", "sq:s1"]
    async with SqliteJournal(path) as journal:
        listed = await journal.list_unfinished()
        assert [(s.saga_id, s.step_in_flight) for s in listed] == [("sq", 1)]
        async with saga_tree(world, [definition], journal=journal, extra=[held]) as root:
            info = await wait_finished(root, "sq")
    assert info.phase == "completed"
    assert world.delivered == ["sq:s0", "sq:s1", "sq:s1"]
    # The journal cannot know whether the send cut short by the teardown left.
    assert [e.detail for e in info.events if e.step == 1 and e.kind == "step_started"] == [
        "interrupted (may not have been sent)",
        "re-sent (attempt 2)",
    ]


# ----------------------------------------------------------------- property: crashes anywhere

BEHAVIOURS = st.sampled_from(["ok", "ok", "reject", "lose"])


@settings(max_examples=60, deadline=None)
@given(
    behaviours=st.lists(BEHAVIOURS, min_size=1, max_size=4),
    compensatable=st.lists(st.booleans(), min_size=4, max_size=4),
    flaky_compensation=st.lists(st.booleans(), min_size=4, max_size=4),
    fail_at=st.integers(min_value=1, max_value=20),
    lands=st.booleans(),
    process=st.booleans(),
)
def test_crashes_at_any_write_never_apply_an_effect_twice_or_skip_a_compensation(
    behaviours: list[str],
    compensatable: list[bool],
    flaky_compensation: list[bool],
    fail_at: int,
    lands: bool,
    process: bool,
) -> None:
    """Random step outcomes, a crash at a random journal write (landed or not), then an actor
    restart or a new process over the journal: the saga ends as a simple model says, every
    effect is applied at most once and every needed compensation exactly once, in reverse
    order."""
    n = len(behaviours)
    world = World()
    for i, behaviour in enumerate(behaviours):
        world.script[f"p:s{i}"] = [behaviour] * 10  # the same outcome on every delivery
        if flaky_compensation[i]:
            world.plan(f"p:s{i}:compensate", "reject")
    definition = chain(n, compensatable=compensatable[:n], timeout=2.0)

    async def main() -> None:
        inner = MemoryJournal()
        journal = FlakyJournal(inner, fail_at, lands=lands)
        restart = "temporary" if process else "permanent"
        specs: list[Any] = [ChildSpec(name, service(name, world)) for name in SERVICES]
        specs.append(
            ChildSpec(
                "sagas",
                lambda: SagaCoordinator(journal, [definition]),
                restart=restart,
            )
        )
        async with open_supervisor(specs, max_restarts=10, period=1.0) as root:
            try:
                await root.ref("sagas").ask(StartSaga("order", saga_id="p", wait=False))
            except ActorCrashed:
                pass
            with trio.move_on_after(600):  # (without a crash the saga just finishes)
                await journal.crashed.wait()
            if await inner.get("p") is None:
                return  # the create failed: nothing was journaled or sent
            if not process:  # the supervisor restarted the coordinator over the journal
                info = await wait_finished(root, "p")
        if process:  # a new process over what the journal holds
            async with saga_tree(world, [definition], journal=inner.snapshot()) as root:
                info = await wait_finished(root, "p")
        check(info)

    def check(info: SagaInfo) -> None:
        phase = info.phase
        first_failure = next((i for i, b in enumerate(behaviours) if b != "ok"), None)
        if first_failure is None:
            assert phase == "completed"
            assert world.forward("p") == [f"s{i}" for i in range(n)]
            assert world.compensations("p") == []
            return
        f = first_failure
        applied = list(range(f)) + ([f] if behaviours[f] == "lose" else [])
        # A step sent again after the crash may have landed before it (its refusal now says
        # nothing about the first send): it is compensated like one that timed out.
        resent = sum(1 for e in info.events if e.kind == "step_started" and e.step == f) > 1
        doubted = sorted({*applied, *([f] if resent else [])})
        undo = [j for j in reversed(doubted) if compensatable[j]]
        assert world.forward("p") == [f"s{i}" for i in applied]
        assert world.compensations("p") == [f"s{j}" for j in undo]
        assert phase == ("compensated" if undo else "failed")
        assert all(f"p:s{i}" not in world.delivered for i in range(f + 1, n))
        compensation_sends = [k for k in world.delivered if k.endswith(":compensate")]
        steps_sent = [int(k.split(":")[1][1:]) for k in compensation_sends]
        assert steps_sent == sorted(steps_sent, reverse=True)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert max(world.applied.values(), default=1) == 1


async def test_a_caller_giving_up_on_an_sqlite_journal_gets_the_saga_compensated(
    tmp_path: Path,
) -> None:
    """With the durable journal (whose cut-short writes still land), a caller that gives up
    mid-step gets the saga compensated, and the journal agrees with what was sent."""
    world = World()
    gate = Gate()

    class Held(Actor[Any, Any]):
        async def handle(self, message: Any) -> Any:
            world.delivered.append(message.key)
            if not message.compensate:
                gate.reached.set()
                await gate.release.wait()
            return {"held": message.key}

    definition = with_step(chain(3), 1, target="held", timeout=60.0)
    held = ChildSpec("held", Held, shutdown=0.01)
    async with (
        SqliteJournal(tmp_path / "sagas.db") as journal,
        saga_tree(world, [definition], journal=journal, extra=[held]) as root,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(root.ref("sagas").ask, StartSaga("order", saga_id="sc"))
            await gate.reached.wait()
            nursery.cancel_scope.cancel()
        gate.release.set()
        info = await wait_finished(root, "sc")
    assert info.phase == "compensated"
    assert world.delivered == ["sc:s0", "sc:s1", "sc:s1:compensate", "sc:s0:compensate"]
    assert info.compensated == ["s1", "s0"]
