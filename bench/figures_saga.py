"""Saga coordinator figures: the coordinator's cost per step, and its throughput on SQLite.

Theory of operation
-------------------
* ``saga_step_us``: sagas of 10 steps run one after another by one caller through a
  :class:`~actors._saga.SagaCoordinator` on a :class:`~actors._journal.MemoryJournal`; each step
  is an ask to an actor that replies at once.  The figure is the caller's time per step
  (``StartSaga`` round trip and the saga's start and end amortised over its 10 steps).
* ``ask_us``: one bare ``ActorRef.ask`` to the same kind of actor, in the same run.
* ``saga_step_vs_ask``: their ratio: the coordinator's own cost on top of the step's ask
  (journaling, building the step message, the saga task).  Goal <= 1.5.
* ``ask_in_tree_us`` and ``saga_step_vs_ask_in_tree``: the same ask made as the coordinator
  makes it (from an actor's background task in a supervision tree, whose deeper cancel-scope
  nesting costs every ask a little more), and the step's ratio to it.
* ``saga_steps_per_s_sqlite``: 100 callers each running 10-step sagas back to back through
  one coordinator on a :class:`~actors._sqlite_journal.SqliteJournal` at its default
  durability (WAL, ``synchronous=FULL``): steps completed per second.
* ``sqlite_floor_rows_per_s``: the journal's rows inserted one transaction per row with the same
  settings (``bench.figures_journal``'s floor), in the same run.
* ``saga_sqlite_vs_floor``: steps per second over floor rows per second (one commit, one fsync,
  per row is the floor; a step writes one row: its completion and the next step's start share
  it, as a saga's start and its first step's start do).  Goal >= 10.
* ``saga_rows_per_commit_sqlite``: mean events per journal transaction in the saga runs.

Reference figures say how much of a step is the journal's, which the coordinator cannot go
below: ``saga_journal_step_us`` is the journal writes of one step alone (a 10-step saga's
writes, as the coordinator makes them, on a ``MemoryJournal``, without any actor), and
``saga_ask_plus_journal_vs_ask`` is ``(ask in the tree + journal) / ask``: the ratio a
coordinator costing nothing itself would reach.  ``saga_journal_steps_per_s_sqlite`` is the
SQLite journal alone taking the same writes from 100 concurrent tasks: the ceiling of
``saga_steps_per_s_sqlite``.

Candidates are interleaved (``bench._harness.interleave``), medians of several repetitions.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import msgspec
import trio

from actors._actor import Actor
from actors._journal import Journal, MemoryJournal, SagaEvent, SagaEventKind, SagaHeader
from actors._ref import ActorRef
from actors._runtime import open_actor
from actors._saga import SagaCoordinator
from actors._saga_definition import SagaDefinition, SagaStep
from actors._saga_messages import StartSaga
from actors._sqlite_journal import SqliteJournal
from bench._harness import interleave, now_ns, timed_trio
from bench.figures_journal import _floor, _new_journal_file
from supervisors import ChildSpec, open_supervisor

GOALS = {"saga_step_vs_ask": ("<=", 1.5), "saga_sqlite_vs_floor": (">=", 10.0)}

_STEPS = 10
_CALLERS = 100
_SCALE = 20  # saga steps per floor row in one repetition (the floor is that much slower)
_rows_per_commit: list[float] = []
_NONE = msgspec.msgpack.encode(None)  # the saga's input
_ONE = msgspec.msgpack.encode(1)  # the Echo actor's reply
K = SagaEventKind


class Echo(Actor[Any, Any]):
    """Replies at once."""

    async def handle(self, message: Any) -> Any:
        return 1


def _definition() -> SagaDefinition:
    return SagaDefinition(
        "bench",
        [
            SagaStep(f"s{i}", "echo", action=lambda ctx: ctx.step, compensate=lambda ctx: None)
            for i in range(_STEPS)
        ],
    )


def _tree(journal: Journal) -> list[Any]:
    definition = _definition()
    return [
        ChildSpec("echo", Echo, mailbox_capacity=10_000),
        ChildSpec(
            "sagas",
            lambda: SagaCoordinator(journal, [definition]),
            mailbox_capacity=10_000,
        ),
    ]


async def _saga_steps(n: int) -> float:
    sagas = max(1, n // _STEPS)
    async with MemoryJournal() as journal, open_supervisor(_tree(journal)) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("bench"))  # warm the target cache
        t0 = now_ns()
        for _ in range(sagas):
            await coordinator.ask(StartSaga("bench"))
        return (now_ns() - t0) / (sagas * _STEPS)


async def _ask(n: int) -> float:
    async with open_actor(Echo) as ref:
        await ref.ask(0)
        t0 = now_ns()
        for i in range(n):
            await ref.ask(i)
        return (now_ns() - t0) / n


class _Asker(Actor[Any, float]):
    """Makes ``n`` asks to the echo actor from a background task, as the coordinator does."""

    async def handle(self, message: Any) -> Any:
        self.spawn(self._run, self.defer(), message)
        return None

    async def _run(self, reply: Any, n: int) -> None:
        echo = self.lookup("echo")
        await echo.ask(0, timeout=30.0)
        t0 = now_ns()
        for i in range(n):
            await echo.ask(i, timeout=30.0)
        reply.set((now_ns() - t0) / n)


async def _ask_in_tree(n: int) -> float:
    tree = [ChildSpec("echo", Echo), ChildSpec("asker", _Asker)]
    async with open_supervisor(tree) as root:
        result: float = await root.ref("asker").ask(n, timeout=600)
        return result


async def _caller(coordinator: ActorRef[Any, Any], sagas: int) -> None:
    for _ in range(sagas):
        await coordinator.ask(StartSaga("bench"), timeout=600)


async def _sqlite_body(path: str, steps: int) -> float:
    sagas = max(1, steps // (_STEPS * _CALLERS))
    async with SqliteJournal(path) as journal, open_supervisor(_tree(journal)) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("bench"), timeout=600)
        before = journal.statistics()
        t0 = now_ns()
        async with trio.open_nursery() as nursery:
            for _ in range(_CALLERS):
                nursery.start_soon(_caller, coordinator, sagas)
        elapsed = now_ns() - t0
        after = journal.statistics()
    commits = after.commits - before.commits
    _rows_per_commit.append((after.rows - before.rows) / commits if commits else 0.0)
    return elapsed / (sagas * _CALLERS * _STEPS)


def _sqlite(n: int) -> float:
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = _new_journal_file(directory)
        return trio.run(_sqlite_body, path, max(_STEPS * _CALLERS, n * _SCALE))


# ------------------------------------------------------------- the journal's share, alone


async def _journal_saga(journal: Journal, saga_id: str) -> None:
    """The writes the coordinator makes for one 10-step saga (replies of the Echo actor): the
    saga with its first step's start, then each step's completion with the next step's start
    (or the end) in one write; on the in-memory journal without a coroutine, as it does."""
    at = time.time()
    state = await journal.create(
        SagaHeader(saga_id, "bench", at, _NONE),
        SagaEvent(saga_id, 0, K.STARTED, None, at),
        then=(SagaEvent(saga_id, 1, K.STEP_STARTED, 0, at),),
    )
    now = journal.append_saga_nowait if type(journal) is MemoryJournal else None
    for i in range(_STEPS):
        seq = state.next_seq
        at = time.time()
        done = SagaEvent(saga_id, seq, K.STEP_COMPLETED, i, at, _ONE)
        if i < _STEPS - 1:
            then = SagaEvent(saga_id, seq + 1, K.STEP_STARTED, i + 1, at)
        else:
            then = SagaEvent(saga_id, seq + 1, K.COMPLETED, None, at)
        written = now((done, then)) if now is not None else None
        state = (
            written if written is not None else (await journal.append_many((done, then)))[saga_id]
        )


async def _journal_steps(n: int) -> float:
    sagas = max(1, n // _STEPS)
    async with MemoryJournal() as journal:
        t0 = now_ns()
        for k in range(sagas):
            await _journal_saga(journal, f"j{k}")
        return (now_ns() - t0) / (sagas * _STEPS)


async def _journal_sqlite_body(path: str, steps: int) -> float:
    sagas = max(1, steps // (_STEPS * _CALLERS))

    async def writer(task: int) -> None:
        for k in range(sagas):
            await _journal_saga(journal, f"j{task}-{k}")

    async with SqliteJournal(path) as journal:
        t0 = now_ns()
        async with trio.open_nursery() as nursery:
            for task in range(_CALLERS):
                nursery.start_soon(writer, task)
        return (now_ns() - t0) / (sagas * _CALLERS * _STEPS)


def _journal_sqlite(n: int) -> float:
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = _new_journal_file(directory)
        return trio.run(_journal_sqlite_body, path, max(_STEPS * _CALLERS, n * _SCALE))


def collect(quick: bool) -> dict[str, float]:
    """Per-step cost against a bare ask; SQLite steps/s against the one-fsync-per-row floor."""
    n, reps = (3000, 5) if quick else (20000, 9)
    ns = interleave(
        {
            "saga": timed_trio(_saga_steps),
            "ask": timed_trio(_ask),
            "ask_in_tree": timed_trio(_ask_in_tree),
            "journal": timed_trio(_journal_steps),
        },
        n=n,
        reps=reps,
    )
    _rows_per_commit.clear()
    m, reps_sqlite = (100, 5) if quick else (400, 7)
    io = interleave(
        {"floor": _floor, "saga": _sqlite, "journal": _journal_sqlite}, n=m, reps=reps_sqlite
    )
    floor = 1e9 / io["floor"]
    steps = 1e9 / io["saga"]
    commits = sorted(_rows_per_commit[1:])  # the first is the warm-up round
    return {
        "saga_step_us": ns["saga"] / 1000,
        "ask_us": ns["ask"] / 1000,
        "saga_step_vs_ask": ns["saga"] / ns["ask"],
        "ask_in_tree_us": ns["ask_in_tree"] / 1000,
        "saga_step_vs_ask_in_tree": ns["saga"] / ns["ask_in_tree"],
        "saga_journal_step_us": ns["journal"] / 1000,
        "saga_ask_plus_journal_vs_ask": (ns["ask_in_tree"] + ns["journal"]) / ns["ask"],
        "saga_steps_per_s_sqlite": steps,
        "saga_journal_steps_per_s_sqlite": 1e9 / io["journal"],
        "sqlite_floor_rows_per_s": floor,
        "saga_sqlite_vs_floor": steps / floor,
        "saga_rows_per_commit_sqlite": commits[len(commits) // 2] if commits else 0.0,
    }
