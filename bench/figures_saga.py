"""Saga coordinator figures: its cost per step against an ask, and on the default SQLite journal
against the disk's own yardsticks measured in the same run.

Theory of operation
-------------------
Sagas of 10 steps, each step an ask to an actor that replies at once, run through a
:class:`~actors.SagaCoordinator` in a supervision tree.  Rounds interleave the candidates
(:func:`bench._harness.measure`); each figure is the median of its per-round values, with the
interquartile range.

On the in-memory journal:

* ``saga_step_us``: one caller running sagas back to back on a
  :class:`~actors.MemoryJournal`; the caller's time per step (the ``StartSaga`` round
  trip and the saga's start and end amortised over its 10 steps).
* ``ask_us``: one bare ``ActorRef.ask`` to the same kind of actor.
* ``saga_step_vs_ask``: their per-round ratio, the coordinator's own cost on top of the step's
  ask (journaling, building the step message, the saga task).  Goal <= 1.5.
* ``saga_step_vs_ask_in_tree``: the step against an ask made as the coordinator makes it (from
  an actor's background task in a supervision tree, whose deeper cancel-scope nesting costs
  every ask a little more), ``ask_in_tree_us``.
* ``saga_ask_plus_journal_vs_ask``: ``(ask in the tree + the journal's writes of one step,
  alone) / ask``: the ratio a coordinator costing nothing itself would reach
  (``saga_journal_step_us`` is those writes).

On the default :class:`~actors.SqliteJournal` (WAL, ``synchronous=FULL``, a
fresh file on ``/tmp``, a disk here), against the yardsticks of ``bench.figures_journal``:

* ``saga_sqlite_step_us``: one saga at a time, one caller: the latency of a step, which is one
  durable commit (a step's completion and the next step's start share one row).
* ``sqlite_commit_us``: a single-row ``synchronous=FULL`` commit from a plain thread, in the
  same rounds: the disk's fsync latency as this run sees it.
* ``saga_sqlite_step_vs_fsync``: their per-round ratio.  Goal <= 1.3.
* ``saga_steps_per_s_sqlite``: 100 callers each running sagas back to back (100 sagas in
  flight): steps per second.
* ``saga_sqlite_vs_ceiling``: a plain ``sqlite3`` writer thread committing the same rows in the
  same transactions (recorded from the saga run, see :class:`bench.figures_journal.Recorder`)
  at the same durability, its time over the sagas' time: the share of the durable-write
  ceiling the coordinator reaches.  Goal >= 0.8.
* ``saga_rows_per_commit_sqlite``: event rows per commit in the concurrent runs.
"""

from __future__ import annotations

import tempfile
from typing import Any

import trio

from actors._core._actor import Actor
from actors._core._runtime import open_actor
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep
from actors._saga._journals._memory import MemoryJournal
from actors._saga._journals._records import Journal
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._messages import StartSaga
from bench._harness import Figure, measure, now_ns, timed_trio
from bench.figures_journal import (
    STEPS,
    TASKS,
    CommitFloor,
    RecordedRun,
    journal_saga,
    new_journal_file,
)
from supervisors import ChildSpec, open_supervisor

GOALS = {
    "saga_step_vs_ask": ("<=", 1.5),
    "saga_sqlite_step_vs_fsync": ("<=", 1.3),
    "saga_sqlite_vs_ceiling": (">=", 0.8),
}


class Echo(Actor[Any, Any]):
    """Replies at once."""

    async def handle(self, message: Any) -> Any:
        return 1


def _definition() -> SagaDefinition:
    return SagaDefinition(
        "bench",
        [
            SagaStep(f"s{i}", "echo", action=lambda ctx: ctx.step, compensate=lambda ctx: None)
            for i in range(STEPS)
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


# ------------------------------------------------------------------ the memory journal


async def _saga_steps(n: int) -> float:
    sagas = max(1, n // STEPS)
    async with MemoryJournal() as journal, open_supervisor(_tree(journal)) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("bench"))  # warm the target cache
        t0 = now_ns()
        for _ in range(sagas):
            await coordinator.ask(StartSaga("bench"))
        return (now_ns() - t0) / (sagas * STEPS)


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


async def _journal_steps(n: int) -> float:
    sagas = max(1, n // STEPS)
    async with MemoryJournal() as journal:
        t0 = now_ns()
        for k in range(sagas):
            await journal_saga(journal, f"j{k}")
        return (now_ns() - t0) / (sagas * STEPS)


def _memory(ns: dict[str, float]) -> dict[str, float]:
    return {
        "saga_step_us": ns["saga"] / 1000,
        "ask_us": ns["ask"] / 1000,
        "saga_step_vs_ask": ns["saga"] / ns["ask"],
        "ask_in_tree_us": ns["ask_in_tree"] / 1000,
        "saga_step_vs_ask_in_tree": ns["saga"] / ns["ask_in_tree"],
        "saga_journal_step_us": ns["journal"] / 1000,
        "saga_ask_plus_journal_vs_ask": (ns["ask_in_tree"] + ns["journal"]) / ns["ask"],
    }


# ------------------------------------------------------------------ the SQLite journal


class _Serial:
    """One caller running sagas back to back on the SQLite journal, each saga followed by as
    many single-row commits of the commit floor as it had steps: the two sides of
    ``saga_sqlite_step_vs_fsync`` measured a few milliseconds apart, on the same disk.  The
    floor's commits are requested one at a time from trio, so they are spaced by a thread
    round trip as the journal's are by the saga's work (a shared disk serves a burst of
    fsyncs more slowly than spaced ones); only the commits themselves are timed."""

    def __init__(self) -> None:
        self.floor_ns = 0.0

    def __call__(self, steps: int) -> float:
        with tempfile.TemporaryDirectory(dir="/tmp") as directory:
            floor = CommitFloor(new_journal_file(directory, "floor.db"))
            try:
                return trio.run(self._body, new_journal_file(directory), floor, steps)
            finally:
                floor.close()

    async def _body(self, path: str, floor: CommitFloor, steps: int) -> float:
        sagas = max(1, steps // STEPS)
        saga_ns = floor_ns = 0
        async with SqliteJournal(path) as journal, open_supervisor(_tree(journal)) as root:
            coordinator = root.ref("sagas")
            await coordinator.ask(StartSaga("bench"), timeout=600)
            for _ in range(sagas):
                t0 = now_ns()
                await coordinator.ask(StartSaga("bench"), timeout=600)
                saga_ns += now_ns() - t0
                for _ in range(STEPS):  # one at a time, spaced as the saga's commits are
                    floor_ns += await trio.to_thread.run_sync(floor.commits, 1)
        self.floor_ns = floor_ns / (sagas * STEPS)
        return saga_ns / (sagas * STEPS)


class _Concurrent(RecordedRun):
    """:data:`TASKS` callers running sagas back to back through one coordinator."""

    async def work(self, journal: SqliteJournal, sagas: int) -> int:
        async with open_supervisor(_tree(journal)) as root:
            coordinator = root.ref("sagas")
            await coordinator.ask(StartSaga("bench"), timeout=600)

            async def caller(task: int) -> None:
                for _ in range(sagas):
                    await coordinator.ask(StartSaga("bench"), timeout=600)

            await self.timed(journal, caller)
        return sagas * TASKS * STEPS


def collect(quick: bool) -> dict[str, Figure]:
    """Measure the figures listed in the module docstring."""
    n, rounds = (3000, 11) if quick else (20000, 21)
    figures = measure(
        {
            "saga": timed_trio(_saga_steps),
            "ask": timed_trio(_ask),
            "ask_in_tree": timed_trio(_ask_in_tree),
            "journal": timed_trio(_journal_steps),
        },
        _memory,
        n=n,
        rounds=rounds,
    )

    serial = _Serial()
    sqlite_rounds = 7 if quick else 15
    figures.update(
        measure(
            {"serial": serial},
            lambda ns: {
                "saga_sqlite_step_us": ns["serial"] / 1000,
                "sqlite_commit_us": serial.floor_ns / 1000,
                "saga_sqlite_step_vs_fsync": ns["serial"] / serial.floor_ns,
            },
            n=200 if quick else 1000,
            rounds=sqlite_rounds,
        )
    )

    concurrent = _Concurrent()
    figures.update(
        measure(
            {"sagas": concurrent, "ceiling": concurrent.ceiling},
            lambda ns: {
                "saga_steps_per_s_sqlite": 1e9 / ns["sagas"],
                "saga_sqlite_vs_ceiling": ns["ceiling"] / concurrent.elapsed,
                "saga_rows_per_commit_sqlite": concurrent.rows_per_commit,
            },
            n=5_000 if quick else 20_000,
            rounds=sqlite_rounds,
            rotate=False,
        )
    )
    return figures
