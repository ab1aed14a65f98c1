"""SQLite journal figures, and the SQLite yardsticks the saga figures share.

Theory of operation
-------------------
Every SQLite candidate writes to a fresh journal file in a temporary directory on ``/tmp`` (a
disk here, not tmpfs) at the journal's default durability: WAL, ``synchronous=FULL``, an
exclusive lock, the connection opened by the journal's own ``_open``.  Two yardsticks, both
plain ``sqlite3`` on one thread of their own, doing the least work that writes the same rows:

* **the commit floor** (:func:`commit_floor`): one event row per transaction
  (``BEGIN IMMEDIATE``, the journal's own ``INSERT``, ``COMMIT``): what one durable write costs
  on this disk in this run, fsync included (``sqlite_commit_us`` in ``bench.figures_saga``).
* **the ceiling** (:class:`Recorder` and :func:`replay`): while a journal candidate runs, the
  rows its writer inserts (sagas, events, finishes: the statements and parameters it passes to
  the journal's ``_insert_many``) are recorded transaction by transaction; the ceiling then
  commits exactly those rows, in the same transactions, with the same statements, on a fresh
  file.  Whatever the journal (and everything in front of it) adds to the durable writes
  themselves shows as the ratio of the two times.

Figures of this module (rounds interleaved, medians of per-round values with their IQR):

* ``journal_steps_per_s_sqlite_100``: 100 concurrent trio tasks each writing 10-step sagas as
  a saga coordinator does (a saga with its first step's start, then each step's completion
  with the next step's start, one write each, awaited), without any actor: steps per second.
* ``journal_vs_ceiling_sqlite_100``: the ceiling's time over the journal's for the same rows:
  the journal's own share of ``saga_sqlite_vs_ceiling`` (1 would be a journal costing nothing
  beyond its commits).
* ``journal_rows_per_commit_sqlite_100``: event rows per commit in those runs (group commit).
"""

from __future__ import annotations

import os
import queue
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import trio

import actors._saga._journals._sqlite._file as sqlite_file
import actors._saga._journals._sqlite._schema as sqlite_schema
import actors._saga._journals._sqlite._writer as sqlite_writer
from actors._saga._journals._memory import MemoryJournal
from actors._saga._journals._records import Journal, SagaEvent, SagaEventKind, SagaHeader
from actors._saga._journals._sqlite._journal import SqliteJournal
from bench._harness import Figure, measure, now_ns

__all__ = [
    "CommitFloor",
    "RecordedRun",
    "Recorder",
    "collect",
    "commit_floor",
    "journal_saga",
    "new_journal_file",
    "replay",
]

STEPS = 10  # steps per saga, in this module and in bench.figures_saga
TASKS = 100  # concurrent writers (sagas) in the concurrent figures
K = SagaEventKind
_NONE = msgspec.msgpack.encode(None)  # a saga's input
_ONE = msgspec.msgpack.encode(1)  # a step's reply

#: The journal writer's insert helper, recorded by :class:`Recorder` and called by
#: :func:`replay` (one private name, bound in the schema and writer modules that call it: the
#: bench's only hook into the writer besides the ``before_commit`` test hook).
_insert_many = sqlite_schema._insert_many

Transaction = list[tuple[dict[int, str], list[Any]]]


def new_journal_file(directory: str, name: str = "journal.db") -> str:
    """A fresh, initialised journal file ``name`` in ``directory``."""
    path = os.path.join(directory, name)

    async def init() -> None:
        async with SqliteJournal(path):
            pass

    trio.run(init)
    return path


def _in_thread(work: Callable[[], float]) -> float:
    """Run ``work`` on a thread of its own (as the journal's writer is) and return its result."""
    result: list[float] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # reported in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class CommitFloor:
    """A plain ``sqlite3`` connection on a thread of its own, making single-row durable commits
    of event rows on request (:meth:`commits`), timed on that thread.  Close it when done."""

    def __init__(self, path: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[int, queue.SimpleQueue[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._opened: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()
        error = self._opened.get()
        if error is not None:
            raise error

    def _run(self, path: str) -> None:
        try:
            conn = sqlite_file._open(path, "FULL")
            at = time.time()
            _insert_many(
                conn, sqlite_schema._INSERT_SAGAS, [(1, "floor", "bench", at, _NONE, "{}")]
            )
        except BaseException as exc:  # reported to the opener
            self._opened.put(exc)
            return
        self._opened.put(None)
        seq = 0
        try:
            while (job := self._jobs.get()) is not None:
                count, done = job
                try:
                    start = now_ns()
                    for _ in range(count):
                        seq += 1
                        conn.execute("BEGIN IMMEDIATE")
                        row = (1, seq, "step_completed", 0, at, _ONE, None, None)
                        _insert_many(conn, sqlite_schema._INSERT_EVENTS, [row])
                        conn.execute("COMMIT")
                    done.put(now_ns() - start)
                except BaseException as exc:  # reported to the caller
                    done.put(exc)
        finally:
            conn.close()

    def commits(self, count: int) -> int:
        """Make ``count`` commits (blocking); the ns they took."""
        done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs.put((count, done))
        result = done.get()
        if isinstance(result, BaseException):
            raise result
        return int(result)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def commit_floor(n: int) -> float:
    """Mean ns of one single-row durable commit of an event row, ``n`` of them."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        floor = CommitFloor(new_journal_file(directory))
        try:
            return floor.commits(n) / n
        finally:
            floor.close()


class Recorder:
    """Records the rows a :class:`SqliteJournal`'s writer commits, transaction by transaction.

    Use :meth:`recording` around the part of a run to record; :attr:`transactions` then holds,
    per committed transaction, the ``(statements, rows)`` of each insert it ran.  The hooks
    are the journal module's ``_insert_many`` (wrapped for the block: one more Python call
    per insert statement on the writer thread) and its writer's ``before_commit`` test hook.
    """

    def __init__(self) -> None:
        self.transactions: list[Transaction] = []
        self._current: Transaction = []
        self.active = False

    def _insert(self, conn: sqlite3.Connection, statements: dict[int, str], rows: list[Any]) -> int:
        if self.active:
            self._current.append((statements, list(rows)))
        return _insert_many(conn, statements, rows)

    def _before_commit(self, conn: sqlite3.Connection) -> None:
        if self.active:
            self.transactions.append(self._current)
            self._current = []

    @contextmanager
    def recording(self, journal: SqliteJournal) -> Iterator[None]:
        """Record what ``journal``'s writer (open, idle) commits during the block.

        On a normal exit, checks that the recording holds exactly the transactions the
        journal reports committing meanwhile: the ceiling must commit no fewer.
        """
        writer = journal._writer
        assert writer is not None, "open the journal first"
        writer.before_commit = self._before_commit
        sqlite_schema._insert_many = sqlite_writer._insert_many = self._insert
        before = journal.statistics().commits
        self.active = True
        try:
            yield
        finally:
            self.active = False
            sqlite_schema._insert_many = sqlite_writer._insert_many = _insert_many
            writer.before_commit = None
        committed = journal.statistics().commits - before
        if len(self.transactions) != committed or self._current:
            raise AssertionError(
                f"recorded {len(self.transactions)} transactions, the journal committed "
                f"{committed}: the ceiling would not replay the same work"
            )

    @property
    def rows(self) -> int:
        """Event rows recorded (a saga's step is one row)."""
        events = sqlite_schema._INSERT_EVENTS
        return sum(len(rows) for tx in self.transactions for s, rows in tx if s is events)


def replay(transactions: list[Transaction]) -> float:
    """Commit ``transactions`` on a fresh journal file from a plain thread; total ns."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = new_journal_file(directory)

        def work() -> float:
            conn = sqlite_file._open(path, "FULL")
            try:
                start = now_ns()
                for tx in transactions:
                    conn.execute("BEGIN IMMEDIATE")
                    for statements, rows in tx:
                        _insert_many(conn, statements, rows)
                    conn.execute("COMMIT")
                return float(now_ns() - start)
            finally:
                conn.close()

        return _in_thread(work)


# ------------------------------------------------------------------ the journal alone


async def journal_saga(journal: Journal, saga_id: str) -> None:
    """The writes a coordinator makes for one 10-step saga whose steps all succeed: the saga
    with its first step's start, then each step's completion with the next step's start (or
    the saga's end) in one write; on the in-memory journal without a coroutine, the journal
    building both events, as it does."""
    at = time.time()
    state = await journal.create(
        SagaHeader(saga_id, "bench", at, _NONE),
        SagaEvent(saga_id, 0, K.STARTED, None, at),
        then=(SagaEvent(saga_id, 1, K.STEP_STARTED, 0, at),),
    )
    now = journal._step_completed_nowait if type(journal) is MemoryJournal else None
    for i in range(STEPS):
        if now is not None:
            written = now(state, _ONE, i == STEPS - 1)
            assert written is not None
            state = written
            continue
        seq = state.next_seq
        at = time.time()
        done = SagaEvent(saga_id, seq, K.STEP_COMPLETED, i, at, _ONE)
        if i < STEPS - 1:
            then = SagaEvent(saga_id, seq + 1, K.STEP_STARTED, i + 1, at)
        else:
            then = SagaEvent(saga_id, seq + 1, K.COMPLETED, None, at)
        state = (await journal.append_many((done, then)))[saga_id]


class RecordedRun:
    """A candidate running :data:`TASKS` concurrent writers on a fresh SQLite journal, recorded
    (:class:`Recorder`) for :meth:`ceiling`, the candidate that replays it; run them in that
    order in every round (``measure(..., rotate=False)``).  Subclasses write in :meth:`work`
    and return the steps they made; ``elapsed`` and ``rows_per_commit`` describe the last run.
    """

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.elapsed = 0.0
        self.rows_per_commit = 0.0

    def __call__(self, steps: int) -> float:
        self.recorder = Recorder()
        with tempfile.TemporaryDirectory(dir="/tmp") as directory:
            path = new_journal_file(directory)
            return trio.run(self._run, path, max(1, steps // (STEPS * TASKS)))

    async def _run(self, path: str, sagas: int) -> float:
        async with SqliteJournal(path) as journal:
            steps = await self.work(journal, sagas)
        return self.elapsed / steps

    async def work(self, journal: SqliteJournal, sagas: int) -> int:
        """Run ``sagas`` sagas per writer, timed and recorded (see :meth:`timed`)."""
        raise NotImplementedError

    async def timed(self, journal: SqliteJournal, writer: Callable[[int], Any]) -> None:
        """Run ``writer(task)`` for :data:`TASKS` tasks at once, timed and recorded."""
        with self.recorder.recording(journal):
            t0 = now_ns()
            async with trio.open_nursery() as nursery:
                for task in range(TASKS):
                    nursery.start_soon(writer, task)
            self.elapsed = now_ns() - t0

    def ceiling(self, _: int) -> float:
        """Replay the last run's transactions (total ns); sets ``rows_per_commit``."""
        transactions = self.recorder.transactions
        self.rows_per_commit = self.recorder.rows / max(1, len(transactions))
        return replay(transactions)


class _JournalRun(RecordedRun):
    """The journal alone, written as a coordinator writes it."""

    async def work(self, journal: SqliteJournal, sagas: int) -> int:
        async def writer(task: int) -> None:
            for k in range(sagas):
                await journal_saga(journal, f"j{task}-{k}")

        await self.timed(journal, writer)
        return sagas * TASKS * STEPS


def collect(quick: bool) -> dict[str, Figure]:
    """Measure the figures listed in the module docstring."""
    steps, rounds = (5_000, 7) if quick else (20_000, 15)
    journal = _JournalRun()

    def derive(ns: dict[str, float]) -> dict[str, float]:
        return {
            "journal_steps_per_s_sqlite_100": 1e9 / ns["journal"],
            "journal_vs_ceiling_sqlite_100": ns["ceiling"] / journal.elapsed,
            "journal_rows_per_commit_sqlite_100": journal.rows_per_commit,
        }

    return measure(
        {"journal": journal, "ceiling": journal.ceiling},
        derive,
        n=steps,
        rounds=rounds,
        rotate=False,
    )
