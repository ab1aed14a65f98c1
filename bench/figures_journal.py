"""Saga journal figures: group commit through the SQLite journal against one fsync per row.

Theory of operation
-------------------
Both candidates write the same workload to a fresh journal file in a temporary directory on
``/tmp`` at the journal's default durability (WAL, ``synchronous=FULL``, exclusive lock): sagas
of 22 events each (``started`` with its header row, ten ``step_started`` / ``step_completed``
pairs, ``completed`` with the header's final update), each appended on its own, so each is its
own row (the rows the journal writes for single appends, built by its own ``event_rows``).

* ``sqlite_floor_rows_per_s``: plain ``sqlite3`` on one thread, one transaction per journal
  write, running the journal's own statements: the cost of one commit (one fsync) per row.
* ``journal_rows_per_s_sqlite_100``: 100 concurrent trio tasks, each running sagas through
  :class:`~actors._sqlite_journal.SqliteJournal`, every ``append`` awaited before the next
  (write-ahead, as a coordinator does).  Group commit lets them share transactions.
* ``journal_group_commit_vs_floor``: their ratio; the saga figure needs >= 10.
* ``journal_rows_per_commit_sqlite_100``: mean rows per transaction in the journal runs.

The journal candidate writes ``_SCALE`` times more rows than the floor in the same repetition
(the floor is that much slower per row), so both run for comparable times; each reports its
own cost per row and excludes opening and closing the file.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from typing import Any

import trio

from actors._journal import SagaEvent, SagaEventKind, SagaHeader, SagaState
from actors._sqlite_journal import (
    FINISH_SAGA,
    INSERT_EVENT,
    INSERT_SAGA,
    SqliteJournal,
    event_rows,
)
from bench._harness import interleave, now_ns

GOALS = {"journal_group_commit_vs_floor": (">=", 10.0)}

_TASKS = 100
_STEPS = 10
_SCALE = 20
K = SagaEventKind
_rows_per_commit: list[float] = []


def _saga_events(saga_id: str) -> tuple[SagaHeader, list[SagaEvent]]:
    header = SagaHeader(saga_id, "bench", time.time(), b"payload")
    state = SagaState.new(header)
    events = []
    moves: list[tuple[SagaEventKind, int | None]] = [(K.STARTED, None)]
    for i in range(_STEPS):
        moves += [(K.STEP_STARTED, i), (K.STEP_COMPLETED, i)]
    moves.append((K.COMPLETED, None))
    for kind, step in moves:
        event = state.next_event(kind, step, b"reply" if kind is K.STEP_COMPLETED else b"")
        state = state.advance(event)
        events.append(event)
    return header, events


def _new_journal_file(directory: str) -> str:
    path = os.path.join(directory, "journal.db")

    async def init() -> None:
        async with SqliteJournal(path):
            pass

    trio.run(init)
    return path


# ---------------------------------------------------------------------------------- floor


def _floor_writes(rows: int) -> list[list[tuple[str, tuple[Any, ...]]]]:
    """The journal's writes as lists of (statement, parameters), one list per transaction."""
    writes: list[list[tuple[str, tuple[Any, ...]]]] = []
    i = 0
    while len(writes) < rows:
        i += 1
        header, events = _saga_events(f"floor-{i}")
        for event in events:
            (row,) = event_rows(i, [event])  # a single append's row, as the journal writes it
            if event.kind is K.STARTED:
                h = header
                saga = (i, h.saga_id, h.definition, h.created_at, h.payload, "{}")
                writes.append([(INSERT_SAGA, saga), (INSERT_EVENT, row)])
            elif event.kind is K.COMPLETED:
                finish = ("completed", event.at, i)
                writes.append([(INSERT_EVENT, row), (FINISH_SAGA, finish)])
            else:
                writes.append([(INSERT_EVENT, row)])
    return writes[:rows]


def _floor(n: int) -> float:
    writes = _floor_writes(n)
    result: list[float] = []
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = _new_journal_file(directory)

        def work() -> None:
            try:
                conn = sqlite3.connect(path, isolation_level=None)
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                start = now_ns()
                for statements in writes:
                    conn.execute("BEGIN IMMEDIATE")
                    for sql, params in statements:
                        conn.execute(sql, params)
                    conn.execute("COMMIT")
                result.append((now_ns() - start) / len(writes))
                conn.close()
            except BaseException as exc:  # reported in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    if errors:
        raise errors[0]
    return result[0]


# -------------------------------------------------------------------------------- journal


async def _appender(journal: SqliteJournal, task: int, budget: int) -> None:
    written = 0
    i = 0
    while written < budget:
        # Events are built as a coordinator builds them: one at a time, from the state the
        # journal returns for the previous one.
        header = SagaHeader(f"t{task}-{i}", "bench", time.time(), b"payload")
        i += 1
        state = await journal.create(header, SagaState.new(header).next_event(K.STARTED))
        written += 1
        step = 0
        while written < budget and not state.finished:
            if step == _STEPS:
                event = state.next_event(K.COMPLETED)
            elif state.step_in_flight is None:
                event = state.next_event(K.STEP_STARTED, step)
            else:
                event = state.next_event(K.STEP_COMPLETED, step, b"reply")
                step += 1
            state = await journal.append(event)
            written += 1


async def _journal_body(path: str, rows: int) -> float:
    async with SqliteJournal(path) as journal:
        start = now_ns()
        async with trio.open_nursery() as nursery:
            for task in range(_TASKS):
                nursery.start_soon(_appender, journal, task, rows // _TASKS)
        elapsed = now_ns() - start
        stats = journal.statistics()
    _rows_per_commit.append(stats.rows_per_commit)
    return elapsed / stats.rows


def _journal(n: int) -> float:
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = _new_journal_file(directory)
        return trio.run(_journal_body, path, max(_TASKS, n * _SCALE))


def collect(quick: bool) -> dict[str, float]:
    """Median rows/s of the floor and of the journal with 100 appenders, and their ratio."""
    n, reps = (200, 5) if quick else (800, 9)
    _rows_per_commit.clear()
    ns = interleave({"floor": _floor, "journal": _journal}, n=n, reps=reps)
    floor = 1e9 / ns["floor"]
    journal = 1e9 / ns["journal"]
    commits = sorted(_rows_per_commit[1:])  # the first is the warm-up round
    return {
        "sqlite_floor_rows_per_s": floor,
        "journal_rows_per_s_sqlite_100": journal,
        "journal_group_commit_vs_floor": journal / floor,
        "journal_rows_per_commit_sqlite_100": commits[len(commits) // 2],
    }
