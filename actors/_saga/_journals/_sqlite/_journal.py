"""The durable saga journal: stdlib sqlite3 on one long-lived writer thread, with group commit.

Theory of operation
-------------------
One :class:`SqliteJournal` owns one thread, which owns the one ``sqlite3`` connection.  Trio
tasks never touch the connection and never hop to a thread per write (a hop costs ~260 us):
a write is validated in the calling task (against the in-memory state of its saga), staged, and
the task parks.  The first write staged in a scheduler pass schedules one flush
(``run_sync_soon`` from the trio thread runs after the pass), which hands everything staged in
the pass to the writer at once: waking the writer at the first write of a pass would let it
take the GIL mid-pass and commit a partial batch, making the rest wait a whole extra commit.
The writer thread takes *everything* queued (up to 1,024 requests), writes it in ONE
transaction, commits (one fsync at ``synchronous=FULL``), then hands the whole batch back to
trio with ONE ``TrioToken.run_sync_soon``, which reschedules every waiting task.  While a batch
commits, the next one queues up, so the rows per commit grow with the number of concurrent
writers: that is group commit, and it is why throughput grows with concurrency without
weakening durability.  Reads (``get``, ``load_unfinished``) go
through the same queue and run after the batch's commit, so a read sees every write queued
before it.

Durability: the database is in WAL mode with ``synchronous=FULL`` by default, so a write that
returned survives a process kill *and* a power cut (the WAL is fsynced at every commit).
``synchronous="NORMAL"`` skips that fsync: still safe against ``kill -9`` of the process, but
the last commits may roll back after a power cut or OS crash; it is several times cheaper per
commit.  The connection holds an exclusive lock on the file (``locking_mode=EXCLUSIVE``), so a
second journal (or process) opening the same file gets :class:`JournalError` instead of
resuming the same sagas twice.

Storage: ``sagas`` holds one row per saga (its header, and its outcome once finished) keyed by
an integer ``saga_no`` the journal allocates in creation order (``saga_id`` is a UNIQUE
column); ``events`` is keyed by ``(saga_no, seq)``.  Sagas running together are recent, so
their events sit together at the right edge of the tree: a 100-row group commit dirties about
15 pages (keyed by the text ``saga_id`` it was 85, and fsync time grows with the bytes).  An
event written together with the next one of its saga, when that one has the same time and no
data (a step's completion and the next step's start, a saga's start and its first step's
start), shares its row (columns ``next_kind``, ``next_step``): a saga's step costs one row.
The view ``event_log`` lists every event as its own row, for people reading the file.

The writer runs few statements per transaction: rows are inserted (and sagas finished)
several per statement.  sqlite3 releases the GIL around each statement and takes it back after;
while the trio thread is busy that costs the writer a wait, and the Python work of both threads
is what limits throughput under load (an fsync, with the GIL released, overlaps with trio).

Identity and safety: the file carries ``PRAGMA application_id`` :data:`APPLICATION_ID` and
``PRAGMA user_version`` :data:`SCHEMA_VERSION`, repeated in a ``meta`` table.  Opening checks
them, runs ``PRAGMA quick_check``, and folds every unfinished saga: a file that is not SQLite,
is truncated or corrupt, belongs to another application or has a newer schema raises
:class:`JournalError` naming the path.  A file is never reset or overwritten; only a missing or
empty file becomes a new journal.  A file of an older schema of ours is upgraded in place, in
one transaction, once it passed those checks (version 1 to 2 adds the shared-row columns; old
rows stay as they are).

Cancellation: a caller cancelled while waiting for room in the queue wrote nothing; a caller
cancelled after its write was queued just stops waiting: the write still lands (unless the
journal fails).  Failure: if a transaction fails (disk full, I/O error), the writer rolls it
back and every waiting and later caller gets :class:`JournalError` at once; the thread keeps
answering queued requests with that error until the journal is closed, so nothing hangs.
Backpressure: at most ``max_pending`` requests are queued; further callers wait for room.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from itertools import chain
from types import TracebackType
from typing import Any, Final, Literal, Self

import msgspec
import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

from actors._errors import ConfigError, ErrorCategory
from actors._saga._journals._records import (
    DEFAULT_RETAIN_FOR,
    DEFAULT_RETAIN_LAST,
    JournalError,
    JournalStatistics,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaIndex,
    SagaPhase,
    SagaSequenceError,
    SagaState,
    SagaSummary,
    Tracked,
    check_count,
    event_bytes,
    normalize_header,
    saga_state,
    seconds,
    storable,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SqliteJournal"]

#: ``PRAGMA application_id`` of every aura-actors journal (ASCII "AURJ").
APPLICATION_ID: Final = 0x4155524A
#: ``PRAGMA user_version`` this code writes and reads; newer files are refused, older ones
#: are migrated when opened.
SCHEMA_VERSION: Final = 2
#: Requests queued before callers wait for room.
DEFAULT_MAX_PENDING: Final = 4096

_log = logging.getLogger("actors.journal")

_APPLICATION_NAME: Final = "aura-actors saga journal"
_MAX_BATCH: Final = 1024
_BUSY_TIMEOUT: Final = 2.0
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
#: ``PRAGMA synchronous`` levels as the connection reports them.
_SYNCHRONOUS_LEVELS: Final = {"NORMAL": 1, "FULL": 2}
#: Files SQLite keeps beside the journal (all are checked like the journal itself).
_COMPANIONS: Final = ("-wal", "-shm", "-journal")
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
#: Errors one request can cause (a value SQLite or the driver refuses): that request fails
#: alone.  Anything else (I/O, a full disk, corruption) fails the journal.
_REQUEST_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    OverflowError,
    ValueError,
    TypeError,
)
_ATTENTION: Final = SagaPhase.COMPENSATION_FAILED.value

#: Every event as its own row, in order (rows that hold two events are split): for people
#: reading a journal file with the sqlite3 shell.
_EVENT_LOG: Final = """
CREATE VIEW event_log (saga_no, seq, kind, step, at, data) AS
    SELECT saga_no, seq, kind, step, at, data FROM events
    UNION ALL
    SELECT saga_no, seq + 1, next_kind, next_step, at, X'' FROM events
    WHERE next_kind IS NOT NULL;
"""

SCHEMA: Final = f"""
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE sagas (
    saga_no INTEGER PRIMARY KEY,
    saga_id TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL,
    created_at REAL NOT NULL,
    payload BLOB NOT NULL,
    metadata TEXT NOT NULL,
    outcome TEXT,
    finished_at REAL
);
CREATE INDEX sagas_open ON sagas (created_at) WHERE outcome IS NULL;
CREATE INDEX sagas_prunable ON sagas (finished_at)
    WHERE outcome IS NOT NULL AND outcome != '{_ATTENTION}';
CREATE TABLE events (
    saga_no INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER,
    at REAL NOT NULL,
    data BLOB NOT NULL,
    next_kind TEXT,
    next_step INTEGER,
    PRIMARY KEY (saga_no, seq)
) WITHOUT ROWID;
{_EVENT_LOG}
INSERT INTO meta VALUES ('application', '{_APPLICATION_NAME}');
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

#: Upgrades of older files, by the version they upgrade (run in one transaction, after the
#: file passed every check).  Version 1 stored one event per row; version 2 may store a
#: second event in the same row (``next_kind``, ``next_step``).
_MIGRATIONS: Final = {
    1: f"""
ALTER TABLE events ADD COLUMN next_kind TEXT;
ALTER TABLE events ADD COLUMN next_step INTEGER;
{_EVENT_LOG}
UPDATE meta SET value = '2' WHERE key = 'schema_version';
PRAGMA user_version = 2;
""",
}

#: The statements a journal write runs (the benchmark's floor runs the same ones); event rows
#: are inserted several per statement (see :func:`insert_events`).
INSERT_EVENT: Final = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_SAGA: Final = "INSERT OR IGNORE INTO sagas VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)"
FINISH_SAGA: Final = "UPDATE sagas SET outcome = ?, finished_at = ? WHERE saga_no = ?"
_PRUNABLE: Final = f"outcome IS NOT NULL AND outcome != '{_ATTENTION}'"
_HEADER_COLUMNS: Final = "saga_no, saga_id, definition, created_at, payload, metadata"
_KINDS: Final = {kind.value: kind for kind in SagaEventKind}

# Request operations.
_CREATE, _APPEND, _PRUNE, _DISCARD, _READ, _CLOSE = range(6)
_WRITES: Final = frozenset({_CREATE, _APPEND, _PRUNE, _DISCARD})

Row = tuple[Any, ...]
#: What the writer hands trio at open: (header, state, saga number) per tracked saga, and the
#: next free saga number.
_Loaded = tuple[list[tuple[SagaHeader, SagaState, int]], int]


class _Request:
    """One unit of work for the writer thread; ``task`` waits for it (``None``: nobody)."""

    __slots__ = (
        "error",
        "events",
        "fn",
        "nbytes",
        "op",
        "rows",
        "saga",
        "task",
        "undo",
        "value",
    )

    def __init__(self, op: int) -> None:
        self.op = op
        self.rows: list[Row] = []  # event rows
        self.events = 0  # events in them
        # CREATE: saga row; APPEND: finish rows; DISCARD: the id; PRUNE: (cutoff, keep)
        self.saga: Any = ()
        #: APPEND: (saga, its state before this write, its epoch) per saga written: how to
        #: roll the in-memory state back if the writer refuses this request alone.
        self.undo: tuple[tuple[Tracked, SagaState, int], ...] = ()
        self.fn: Callable[[sqlite3.Connection], Any] | None = None
        self.task: Task | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.nbytes = 0

    def abort(self, raise_cancel: RaiseCancelT) -> Abort:
        self.task = None  # the write (if queued) still lands; the caller just stops waiting
        return Abort.SUCCEEDED


_ENDS: Final = frozenset(phase for phase in SagaPhase if phase.finished)
_KIND_VALUES: Final = {kind: kind.value for kind in SagaEventKind}  # `.value` is slow on 3.11


def _multi_row(statement: str, count: int) -> str:
    """``statement`` (an INSERT of one row of parameters) made to insert ``count`` rows."""
    head, _, values = statement.partition(" VALUES ")
    return f"{head} VALUES {', '.join([values] * count)}"


#: Rows per multi-row INSERT: powers of two (each statement text is prepared once and
#: cached; at most 8 parameters a row keeps the largest under SQLite's parameter limits).
_CHUNKS: Final = (256, 128, 64, 32, 16, 8, 4, 2, 1)
_INSERT_EVENTS: Final = {n: _multi_row(INSERT_EVENT, n) for n in _CHUNKS}
_INSERT_SAGAS: Final = {n: _multi_row(INSERT_SAGA, n) for n in _CHUNKS}


def _insert_many(conn: sqlite3.Connection, statements: dict[int, str], rows: list[Row]) -> int:
    """Run the multi-row ``statements`` (by rows per statement) over ``rows``: a few
    statements instead of one per row; the number of rows changed."""
    added = 0
    start = 0
    left = len(rows)
    for size in _CHUNKS:
        while left >= size:
            params = list(chain.from_iterable(rows[start : start + size]))
            added += conn.execute(statements[size], params).rowcount
            start += size
            left -= size
    return added


#: Finish several sagas in one statement (``UPDATE ... FROM`` needs SQLite 3.33; older
#: libraries run FINISH_SAGA once per saga).
_FINISH_FROM: Final = sqlite3.sqlite_version_info >= (3, 33, 0)
_FINISH_SAGAS: Final = {
    n: "UPDATE sagas SET outcome = v.column1, finished_at = v.column2 FROM (VALUES "
    + ", ".join(["(?, ?, ?)"] * n)
    + ") AS v WHERE sagas.saga_no = v.column3"
    for n in _CHUNKS
}


def finish_sagas(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Record sagas as finished (rows of FINISH_SAGA parameters) the way the writer does."""
    if _FINISH_FROM:
        _insert_many(conn, _FINISH_SAGAS, rows)
    else:  # pragma: no cover - an old SQLite library
        conn.executemany(FINISH_SAGA, rows)


def insert_events(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert event rows (from :func:`event_rows`) the way the journal's writer does."""
    _insert_many(conn, _INSERT_EVENTS, rows)


def event_rows(number: int, events: Sequence[SagaEvent]) -> list[Row]:
    """The ``events`` rows of one saga's (validated) events, in order.

    An event followed by one at the same time with no data (a step's completion and the next
    step's start, a saga's start and its first step's start) shares its row: the second one is
    stored as ``next_kind`` and ``next_step``, so a saga's step costs one row, not two.
    """
    rows: list[Row] = []
    kinds = _KIND_VALUES
    i = 0
    n = len(events)
    while i < n:
        e = events[i]
        at = float(e.at)
        if i + 1 < n:
            then = events[i + 1]
            if not then.data and then.at == at:
                rows.append(
                    (number, e.seq, kinds[e.kind], e.step, at, e.data, kinds[then.kind], then.step)
                )
                i += 2
                continue
        rows.append((number, e.seq, kinds[e.kind], e.step, at, e.data, None, None))
        i += 1
    return rows


class SqliteJournal:
    """A durable :class:`~actors._journal.Journal` in one SQLite file (WAL, group commit).

    Open it with ``async with`` (or :meth:`open` / :meth:`aclose`) inside trio; the writer
    thread lives exactly as long.  See the module docstring for durability, cancellation and
    failure behaviour.

    Args:
        path: the journal file; created if missing (its directory must exist).  The only
            setting most users need.
        synchronous: ``"FULL"`` (default: durable across power loss) or ``"NORMAL"`` (durable
            across process crashes only, cheaper per commit).
        retain_for, retain_last, auto_prune: retention of finished sagas, as for
            :class:`~actors._journal.MemoryJournal` (defaults: 7 days, last 10,000, on).
        max_pending: queued requests before callers wait for room (default 4096).

    Raises:
        ConfigError: a bad setting (at construction).
        JournalError: at :meth:`open`, when the file is unusable (see the module docstring).

    Example::

        async with SqliteJournal("sagas.db") as journal:
            for header, events in await journal.load_unfinished():
                resume(header, saga_state(header, events))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        retain_for: float | timedelta = DEFAULT_RETAIN_FOR,
        retain_last: int = DEFAULT_RETAIN_LAST,
        auto_prune: bool = True,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(
                f"must be 'FULL' or 'NORMAL', got {synchronous!r}", path="synchronous"
            )
        self._path = os.fspath(path)
        self._synchronous = synchronous
        self._retain_for = seconds(retain_for, "retain_for")
        self._retain_last = check_count(retain_last, "retain_last")
        self._auto_prune = bool(auto_prune)
        if check_count(max_pending, "max_pending") < 1:
            raise ConfigError("must be at least 1", path="max_pending")
        self._max_pending = max_pending
        self._status = "new"  # new -> opening -> open -> closing -> closed
        self._index = SagaIndex()
        self._queue: queue.SimpleQueue[list[_Request]] = queue.SimpleQueue()
        self._staged: list[_Request] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._next_number = 1  # saga_no of the next create (set at open)
        self._room = trio.lowlevel.ParkingLot()
        self._pending = 0
        self._failure: tuple[str, BaseException] | None = None
        self._open_task: Task | None = None
        self._closed = trio.Event()
        self._close_error: BaseException | None = None
        self._writer: _Writer | None = None
        self._thread: threading.Thread | None = None
        self._appends = 0
        self._rows = 0
        self._commits = 0
        self._bytes = 0
        self._pruned = 0

    @property
    def path(self) -> str:
        """The journal file."""
        return self._path

    # -------------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Open (or create) the file on a new writer thread and load the unfinished sagas.

        Raises:
            JournalError: the file is unusable (not SQLite, corrupt, foreign, newer schema,
                locked by another journal, cannot be created); or the journal was opened
                before.
        """
        if self._status != "new":
            raise JournalError(f"The journal {self._path} was already opened.", path=self._path)
        self._status = "opening"
        self._token = trio.lowlevel.current_trio_token()
        self._writer = _Writer(self, self._token)
        self._thread = threading.Thread(
            target=self._writer.run, name=f"aura-journal {self._path}", daemon=True
        )
        self._open_task = current_task()
        self._thread.start()

        def abort(raise_cancel: RaiseCancelT) -> Abort:
            self._open_task = None  # _opened closes the journal when it arrives
            self._status = "closing"
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def _opened(self, loaded: _Loaded | None, error: BaseException | None) -> None:
        # Runs in trio (run_sync_soon from the writer thread).
        task, self._open_task = self._open_task, None
        if error is not None:
            self._status = "closed"
            self._closed.set()
        else:
            assert loaded is not None
            tracked_sagas, self._next_number = loaded
            for header, state, number in tracked_sagas:
                tracked = Tracked(header, state, confirmed=True, number=number)
                if state.phase is SagaPhase.COMPENSATION_FAILED:
                    self._index.attention[header.saga_id] = tracked
                else:
                    self._index.open[header.saga_id] = tracked
            if task is None:  # the opener was cancelled: nobody owns the journal, close it
                self._queue.put([_Request(_CLOSE)])
            else:
                self._status = "open"
        if task is not None:
            reschedule(task, outcome.Value(None) if error is None else outcome.Error(error))

    async def aclose(self) -> None:
        """Flush every queued write, close the file and stop the writer thread.

        Idempotent.  If cancelled, stops waiting; the thread still finishes the flush.

        Raises:
            JournalError: closing the file failed (the writes that returned are durable).
        """
        if self._status in ("new", "closed"):
            self._status = "closed"
            await trio.lowlevel.checkpoint()
            return
        if self._status == "opening":
            raise JournalError(f"The journal {self._path} is still opening.", path=self._path)
        if self._status == "open":
            self._status = "closing"
            self._room.unpark_all()
            self._stage(_Request(_CLOSE))
        await self._closed.wait()
        self._status = "closed"
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------ writes

    async def create(
        self, header: SagaHeader, first_event: SagaEvent, *, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        """Durably store a new saga with its ``started`` event (``seq`` 0) and the events
        ``then`` (in the same transaction); return its state.

        Raises:
            SagaSequenceError: ``first_event`` is not a valid ``started`` event, or an event
                of ``then`` is not a valid transition.
            JournalError: the saga id is already in the journal; or the journal failed.
            TypeError, ValueError: a malformed header (named field).
        """
        header, metadata = normalize_header(header)
        await self._wait_for_room()
        state = self._index.check_create(header, first_event, then)
        request = _Request(_CREATE)
        number = self._next_number
        self._next_number += 1
        request.saga = (
            number,
            header.saga_id,
            header.definition,
            header.created_at,
            header.payload,
            metadata.decode(),
        )
        request.rows = event_rows(number, (first_event, *then))
        request.events = 1 + len(then)
        request.nbytes = len(header.payload) + len(metadata) + len(first_event.data)
        request.nbytes += event_bytes(then)
        self._index.open[header.saga_id] = Tracked(header, state, False, number)
        await self._submit(request)
        return state

    async def append(self, event: SagaEvent) -> SagaState:
        """Durably append one event; return the saga's state after it (see
        :meth:`append_many`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if (
            self._status != "open"
            or self._failure is not None
            or self._pending >= self._max_pending
        ):
            await self._wait_for_room()
        index = self._index
        found = (
            index.open.get(event.saga_id)
            if type(event) is SagaEvent and type(event.saga_id) is str
            else None
        )
        undo = () if found is None else ((found, found.state, found.epoch),)
        tracked = index.advance_one(event)  # raises (nothing recorded) if invalid
        request = self._queue_write(tracked, (event,))
        request.undo = undo
        await wait_task_rescheduled(request.abort)
        return tracked.state

    async def append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        """Durably append events (of one or more sagas) in one transaction, in order.

        Returns when they are committed, with the state of each saga touched.  Validation
        happens first: on error nothing is written.

        Raises:
            SagaSequenceError: an event is not a valid transition (or its saga is unknown,
                finished, or its create has not returned yet).
            JournalError: the journal is closed or failed.
        """
        # The hot path of a saga (a step's completion and the next start): _wait_for_room and
        # _submit inlined, a coroutine frame each.
        await trio.lowlevel.checkpoint_if_cancelled()
        if (
            self._status != "open"
            or self._failure is not None
            or self._pending >= self._max_pending
        ):
            await self._wait_for_room()
        index = self._index
        if len(events) == 2:  # a step's completion and what follows: the common write
            done, then = events
            tracked = (
                index.open.get(done.saga_id)
                if type(done) is SagaEvent and type(done.saga_id) is str
                else None
            )
            if tracked is not None and tracked.confirmed:
                state = tracked.state._advance_pair(done, then)
                if state is not None:
                    request = _Request(_APPEND)
                    request.undo = ((tracked, tracked.state, tracked.epoch),)
                    number = tracked.number
                    if state.phase in _ENDS:
                        index.commit({state.saga_id: state})
                        request.saga = [(state.phase.value, state.updated_at, number)]
                    else:
                        tracked.state = state
                    at = done.at
                    if not then.data and then.at == at:  # one row (see event_rows)
                        kind, following = _KIND_VALUES[done.kind], _KIND_VALUES[then.kind]
                        row = (number, done.seq, kind, done.step, at, done.data, following)
                        request.rows = [(*row, then.step)]
                    else:
                        request.rows = event_rows(number, events)
                    request.nbytes = len(done.data) + len(then.data)
                    request.events = 2
                    request.task = current_task()
                    self._pending += 1
                    if not self._staged:
                        assert self._token is not None
                        self._token.run_sync_soon(self._flush)
                    self._staged.append(request)
                    await wait_task_rescheduled(request.abort)
                    return {state.saga_id: state}
        first = events[0] if events else None
        found = (
            index.open.get(first.saga_id)
            if type(first) is SagaEvent and type(first.saga_id) is str
            else None
        )
        undo = () if found is None else ((found, found.state, found.epoch),)
        tracked = index.advance_saga(events)
        if tracked is not None:  # one saga's events
            request = self._queue_write(tracked, events)
            request.undo = undo
            await wait_task_rescheduled(request.abort)
            state = tracked.state
            return {state.saga_id: state}
        states = index.check_append(events)
        numbers = {saga_id: index.open[saga_id].number for saga_id in states}
        priors = [index.open[saga_id] for saga_id in states]
        undos = tuple((t, t.state, t.epoch) for t in priors)
        index.commit(states)
        request = _Request(_APPEND)
        request.undo = undos
        for saga_id, number in numbers.items():
            request.rows += event_rows(number, [e for e in events if e.saga_id == saga_id])
        request.saga = [
            (state.phase.value, state.updated_at, numbers[saga_id])
            for saga_id, state in states.items()
            if state.finished
        ]
        request.nbytes = event_bytes(events)
        request.events = len(events)
        await self._submit(request)
        return states

    def _queue_write(self, tracked: Tracked, events: Sequence[SagaEvent]) -> _Request:
        """Queue the (validated) ``events`` of one saga for the current task, which then waits
        for it with ``wait_task_rescheduled(request.abort)``."""
        state = tracked.state
        request = _Request(_APPEND)
        request.rows = event_rows(tracked.number, events)
        if state.phase in _ENDS:
            request.saga = [(state.phase.value, state.updated_at, tracked.number)]
        nbytes = 0
        for event in events:
            nbytes += len(event.data)
        request.nbytes = nbytes
        request.events = len(events)
        request.task = current_task()
        self._pending += 1
        if not self._staged:
            assert self._token is not None
            self._token.run_sync_soon(self._flush)
        self._staged.append(request)
        return request

    async def prune_finished(
        self,
        older_than: float | timedelta | None = None,
        keep_last: int | None = None,
        *,
        now: float | None = None,
    ) -> int:
        """Remove finished sagas older than ``older_than`` seconds or beyond the ``keep_last``
        most recently finished (defaults: the journal's retention); return how many.

        Unfinished and ``compensation_failed`` sagas are never removed.  ``now`` defaults to
        ``time.time()``.
        """
        age = self._retain_for if older_than is None else seconds(older_than, "older_than")
        keep = self._retain_last if keep_last is None else check_count(keep_last, "keep_last")
        if now is not None and (isinstance(now, bool) or not math.isfinite(now)):
            raise ValueError(f"now must be a finite time, got {now!r}")
        cutoff = (time.time() if now is None else now) - age
        await self._wait_for_room()
        request = _Request(_PRUNE)
        request.saga = (cutoff, keep)
        result: int = await self._submit(request)
        return result

    async def discard(self, saga_id: str) -> bool:
        """Remove one finished saga; ``False`` if unknown.

        Raises:
            JournalError: the saga is not finished (or its create has not returned).
        """
        await self._wait_for_room()
        if saga_id in self._index.open:
            raise JournalError(
                f"Saga {saga_id!r} is not finished; only finished sagas can be discarded.",
                path=self._path,
            )
        if not storable(saga_id):  # no saga can have it: never hand it to the writer
            return False
        request = _Request(_DISCARD)
        request.saga = saga_id
        found: int = await self._submit(request)
        return bool(found)

    # ------------------------------------------------------------------------- reads

    async def load_unfinished(self) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        """Every resumable saga with its events, oldest first (read after queued writes)."""
        await self._wait_for_room()

        def read(conn: sqlite3.Connection) -> list[tuple[SagaHeader, list[SagaEvent]]]:
            rows = conn.execute(
                f"SELECT {_HEADER_COLUMNS} FROM sagas WHERE outcome IS NULL "
                "ORDER BY created_at, saga_id"
            ).fetchall()
            return [(_header(row), _events(conn, row[0], row[1])) for row in rows]

        request = _Request(_READ)
        request.fn = read
        found: list[tuple[SagaHeader, list[SagaEvent]]] = await self._submit(request)
        return found

    async def get(self, saga_id: str) -> tuple[SagaHeader, list[SagaEvent]] | None:
        """One saga's header and events, or ``None`` if unknown or pruned."""
        await self._wait_for_room()
        if not storable(saga_id):  # no saga can have it
            return None

        def read(conn: sqlite3.Connection) -> tuple[SagaHeader, list[SagaEvent]] | None:
            row = conn.execute(
                f"SELECT {_HEADER_COLUMNS} FROM sagas WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            return None if row is None else (_header(row), _events(conn, row[0], saga_id))

        request = _Request(_READ)
        request.fn = read
        found: tuple[SagaHeader, list[SagaEvent]] | None = await self._submit(request)
        return found

    async def list_unfinished(self) -> list[SagaSummary]:
        """Running and ``compensation_failed`` sagas, oldest first (from memory: no I/O)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        return self._index.summaries()

    def statistics(self) -> JournalStatistics:
        """A snapshot of the counters; ``commits`` counts group-commit transactions."""
        sagas_open, attention = self._index.counts()
        return JournalStatistics(
            sagas_open=sagas_open,
            sagas_needing_attention=attention,
            appends=self._appends,
            rows=self._rows,
            commits=self._commits,
            rows_per_commit=self._rows / self._commits if self._commits else 0.0,
            queue_depth=self._pending,
            bytes_written=self._bytes,
            sagas_pruned=self._pruned,
        )

    # --------------------------------------------------------------- trio-side plumbing

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure_error()
        if self._status != "open":
            state = "not open yet" if self._status in ("new", "opening") else "closed"
            raise JournalError(f"The journal {self._path} is {state}.", path=self._path)

    def _failure_error(self) -> JournalError:
        assert self._failure is not None
        message, cause = self._failure
        error = JournalError(
            message,
            path=self._path,
            suggested_action=(
                "Check the disk (free space, permissions, I/O errors) and restart; every "
                "write that returned is in the file and will be recovered."
            ),
        )
        error.__cause__ = cause
        return error

    async def _wait_for_room(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        while self._pending >= self._max_pending:
            await self._room.park()
            self._check_usable()

    async def _submit(self, request: _Request) -> Any:
        # Called right after _wait_for_room with no checkpoint in between.
        request.task = current_task()
        self._pending += 1
        self._stage(request)
        return await wait_task_rescheduled(request.abort)

    def _stage(self, request: _Request) -> None:
        if not self._staged:
            assert self._token is not None
            self._token.run_sync_soon(self._flush)
        self._staged.append(request)

    def _flush(self) -> None:
        # Runs in trio after the scheduler pass that staged the requests.
        staged, self._staged = self._staged, []
        self._queue.put(staged)

    def _deliver(self, batch: list[_Request], commits: int, pruned: int) -> None:
        # Runs in trio, once per batch (run_sync_soon from the writer thread).
        failed = self._failure is not None
        index = self._index
        done = appends = rows = nbytes = 0
        for request in batch:
            op = request.op
            if failed and op != _CLOSE:
                request.error = self._failure_error()
            error = request.error
            if op == _APPEND:  # the common case first
                if error is None:
                    appends += 1
                    rows += request.events
                    nbytes += request.nbytes
            elif op == _CLOSE:
                self._close_error = error
                self._closed.set()
                continue
            elif op == _CREATE:
                saga_id = request.saga[1]
                tracked = index.open.get(saga_id)
                if error is None:
                    appends += 1
                    rows += request.events
                    nbytes += request.nbytes
                    if tracked is not None:
                        tracked.confirmed = True
                elif tracked is not None and not tracked.confirmed:
                    del index.open[saga_id]
            elif op == _DISCARD and error is None and request.value:
                index.attention.pop(request.saga, None)
            if op == _APPEND and error is not None and not failed:
                # The writer refused this request alone: its sagas' states go back.
                for tracked, prior, epoch in request.undo:
                    index.roll_back(tracked, prior, epoch)
            done += 1
            task = request.task
            if task is not None:
                request.task = None
                if error is None:
                    reschedule(task, outcome.Value(request.value))
                else:
                    reschedule(task, outcome.Error(error))
        self._appends += appends
        self._rows += rows
        self._bytes += nbytes
        self._commits += commits
        self._pruned += pruned
        self._pending -= done
        if failed:
            self._room.unpark_all()
        elif done:
            self._room.unpark(count=done)

    def _fail(self, message: str, cause: BaseException, batch: list[_Request]) -> None:
        # Runs in trio: the writer hit an error it cannot recover from.
        if self._failure is None:
            self._failure = (message, cause)
        self._deliver(batch, 0, 0)  # every caller gets a fresh error naming the failure


class _Writer:
    """The writer thread's side: owns the connection; talks to trio only via the token."""

    def __init__(self, journal: SqliteJournal, token: trio.lowlevel.TrioToken) -> None:
        self.journal = journal
        self.token = token
        self.path = journal._path
        self.queue = journal._queue
        self.prune_every = max(1, journal._retain_last // 10)
        self.finished_since_prune = 0
        #: Saga number -> epoch of a write refused alone (see _write_isolated).
        self.refused: dict[int, int] = {}
        #: Called on the writer thread just before each COMMIT (tests inject failures here).
        self.before_commit: Callable[[sqlite3.Connection], None] | None = None

    def _call(self, fn: Callable[..., None], *args: Any) -> bool:
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def run(self) -> None:
        journal = self.journal
        try:
            conn = _open(self.path, journal._synchronous)
        except BaseException as exc:
            self._call(journal._opened, None, _translate(exc, self.path))
            return
        try:
            loaded = _load_tracked(conn, self.path)
        except BaseException as exc:
            conn.close()
            self._call(journal._opened, None, _translate(exc, self.path))
            return
        if not self._call(journal._opened, loaded, None):
            conn.close()
            return
        self._serve(conn)

    def _serve(self, conn: sqlite3.Connection) -> None:
        journal = self.journal
        failed = False
        while True:
            batch = self._take()
            closing = batch[-1].op == _CLOSE
            if failed:
                if closing:
                    _close_quietly(conn)
                if not self._call(journal._deliver, batch, 0, 0) or closing:
                    _close_quietly(conn)  # the trio run is gone (or this is the close)
                    return
                continue
            try:
                commits, pruned = self._process(conn, batch)
            except BaseException as exc:
                failed = True
                message = f"The journal {self.path} failed: {type(exc).__name__}: {exc}"
                if closing:
                    _close_quietly(conn)
                if not self._call(journal._fail, message, exc, batch) or closing:
                    _close_quietly(conn)
                    return
                continue
            if closing:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    batch[-1].error = _translate(exc, self.path)
            if not self._call(journal._deliver, batch, commits, pruned) or closing:
                if not closing:
                    _close_quietly(conn)
                return

    def _take(self) -> list[_Request]:
        # Everything queued, in order, up to _MAX_BATCH requests (whole staged groups).
        batch = self.queue.get()
        get = self.queue.get_nowait
        while len(batch) < _MAX_BATCH and batch[-1].op != _CLOSE:
            try:
                batch += get()
            except queue.Empty:
                break
        return batch

    def _process(self, conn: sqlite3.Connection, batch: list[_Request]) -> tuple[int, int]:
        # Few statements per batch: sqlite3 releases the GIL around each step and must take it
        # back after, which costs up to a switch interval (5 ms) while the trio thread runs.
        commits = pruned = 0
        if any(r.op in _WRITES for r in batch):
            isolate = bool(self.refused) and self._touches_refused(batch)
            if not isolate:
                try:
                    pruned, finished = self._write(conn, batch)
                except _REQUEST_ERRORS:
                    isolate = True  # one request is bad: find it, fail it alone
            if isolate:
                pruned, finished = self._write_isolated(conn, batch)
            commits = 1
            self.finished_since_prune += finished
            pruned += self._auto_prune(conn)
        for r in batch:
            if r.op == _READ:
                assert r.fn is not None
                try:
                    r.value = r.fn(conn)
                except (sqlite3.Error, msgspec.DecodeError, KeyError, ValueError) as exc:
                    r.error = _translate(exc, self.path)
        return commits, pruned

    def _write(self, conn: sqlite3.Connection, batch: list[_Request]) -> tuple[int, int]:
        """Every write of ``batch`` in one transaction, in the order queued (appends and
        creates grouped into a few statements between prunes and discards); (sagas pruned,
        sagas finished).  Rolls back and raises on any error."""
        pruned = finished = 0
        rows: list[Row] = []
        finishes: list[Row] = []
        creates: list[_Request] = []
        with self._transaction(conn):
            for r in batch:
                op = r.op
                if op == _APPEND:
                    rows += r.rows
                    finishes += r.saga
                elif op == _CREATE:
                    creates.append(r)
                elif op in (_PRUNE, _DISCARD):
                    # What was queued before it first: a saga finished and then discarded in
                    # one batch must be finished when the discard looks for it.
                    finished += self._store(conn, creates, rows, finishes)
                    rows, finishes, creates = [], [], []
                    r.value = _prune(conn, *r.saga) if op == _PRUNE else _discard(conn, r.saga)
                    pruned += r.value
            finished += self._store(conn, creates, rows, finishes)
        return pruned, finished

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction: committed (after the test hook) or rolled back on error."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            if self.before_commit is not None:
                self.before_commit(conn)
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise

    def _store(
        self,
        conn: sqlite3.Connection,
        creates: list[_Request],
        rows: list[Row],
        finishes: list[Row],
    ) -> int:
        """Insert the sagas of ``creates``, then the event ``rows`` (and those of the creates
        that were inserted), then record the ``finishes``; the number of sagas finished that
        retention may prune."""
        if creates:
            self._create(conn, creates, rows)
        if rows:
            insert_events(conn, rows)
        if finishes:
            finish_sagas(conn, finishes)
        return sum(1 for f in finishes if f[0] != _ATTENTION)

    def _write_isolated(self, conn: sqlite3.Connection, batch: list[_Request]) -> tuple[int, int]:
        """Like :meth:`_write`, but each write in a savepoint of its own: a request that cannot
        be stored (a value SQLite refuses) fails alone, with nothing of it written, and so do
        the writes of the same saga queued behind it (they would leave a gap); the others
        commit.  Only a batch where a request failed pays for this."""
        pruned = finished = 0
        for r in batch:
            if r.op in _WRITES:
                r.error = None  # the first try's verdicts were rolled back with it
        with self._transaction(conn):
            for r in batch:
                op = r.op
                if op not in _WRITES:
                    continue
                if self.refused and self._is_refused(r):
                    r.error = self._refusal(None)
                    continue
                conn.execute("SAVEPOINT request")
                try:
                    if op == _APPEND:
                        insert_events(conn, r.rows)
                        if r.saga:
                            finish_sagas(conn, r.saga)
                    elif op == _CREATE:
                        rows: list[Row] = []
                        self._create(conn, [r], rows)
                        if rows:
                            insert_events(conn, rows)
                    elif op == _PRUNE:
                        r.value = _prune(conn, *r.saga)
                    else:
                        r.value = _discard(conn, r.saga)
                except _REQUEST_ERRORS as exc:
                    conn.execute("ROLLBACK TO request")
                    conn.execute("RELEASE request")
                    r.error = self._refusal(exc)
                    for tracked, _, epoch in r.undo:
                        self.refused[tracked.number] = epoch
                    continue
                conn.execute("RELEASE request")
                if op == _APPEND:
                    finished += sum(1 for f in r.saga if f[0] != _ATTENTION)
                elif op != _CREATE:
                    pruned += r.value
        return pruned, finished

    def _is_refused(self, request: _Request) -> bool:
        """Whether ``request`` writes a saga whose earlier write was refused, validated before
        the trio side rolled that saga back (its epoch is not newer)."""
        refused = self.refused
        for tracked, _, epoch in request.undo:
            last = refused.get(tracked.number)
            if last is not None:
                if epoch <= last:
                    return True
                # Written after the rollback: nothing stale can follow it (the queue is FIFO).
                del refused[tracked.number]
        return False

    def _touches_refused(self, batch: list[_Request]) -> bool:
        found = False
        for r in batch:
            if r.op == _APPEND and self._is_refused(r):
                found = True
        return found

    def _refusal(self, exc: BaseException | None) -> JournalError:
        if exc is None:
            why = "an earlier write of the same saga could not be stored"
        else:
            why = f"{type(exc).__name__}: {exc}"
        error = JournalError(
            f"The journal {self.path} refused this write: it could not be stored ({why}); "
            "nothing of it was written, and the journal goes on.",
            path=self.path,
            suggested_action=(
                "This is a bug in what was written (report it); the saga's journaled state is "
                "what it was before this write."
            ),
        )
        error.__cause__ = exc
        return error

    def _auto_prune(self, conn: sqlite3.Connection) -> int:
        """Retention, every ``prune_every`` finished sagas, in its own transaction after the
        batch's commit; the sagas pruned.  A failure here is logged and retried at the next
        round: the batch before it is committed and its callers are answered as such."""
        journal = self.journal
        if not journal._auto_prune or self.finished_since_prune < self.prune_every:
            return 0
        self.finished_since_prune = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                pruned = _prune(conn, time.time() - journal._retain_for, journal._retain_last)
                conn.execute("COMMIT")
            except BaseException:
                _rollback_quietly(conn)
                raise
        except Exception as exc:
            _log.warning(
                "journal %s: removing old finished sagas failed (%s: %s); the writes before "
                "it are committed, and it is tried again later",
                self.path,
                type(exc).__name__,
                exc,
            )
            return 0
        return pruned

    def _create(self, conn: sqlite3.Connection, creates: list[_Request], rows: list[Row]) -> None:
        """Insert the saga rows of ``creates`` (several per statement); the event rows of those
        inserted go to ``rows``, the others (the id exists) get their error."""
        added = _insert_many(conn, _INSERT_SAGAS, [r.saga for r in creates])
        if added == len(creates):
            for r in creates:
                rows += r.rows
            return
        # Some ids were in the journal already.  Saga numbers are new, so a number found in the
        # table is a saga inserted just now.
        numbers = [r.saga[0] for r in creates]
        found = {
            number
            for chunk in range(0, len(numbers), 500)
            for (number,) in conn.execute(
                "SELECT saga_no FROM sagas WHERE saga_no IN "
                f"({', '.join('?' * len(numbers[chunk : chunk + 500]))})",
                numbers[chunk : chunk + 500],
            )
        }
        for r in creates:
            if r.saga[0] in found:
                rows += r.rows
            else:
                r.error = JournalError(
                    f"Saga {r.saga[1]!r} already exists in the journal {self.path}.",
                    path=self.path,
                )


# --------------------------------------------------------------------- thread-side helpers


def _open(path: str, synchronous: str) -> sqlite3.Connection:
    """Open, check and (if new) initialise the journal file; runs on the writer thread."""
    fd = _open_private(path)
    try:
        known = os.fstat(fd)
        if known.st_size:
            head = os.pread(fd, 100, 0)
            if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
                raise JournalError(
                    f"The journal file {path} is not a SQLite database (or is truncated): "
                    "refusing to use or overwrite it.",
                    path=path,
                    category=ErrorCategory.CONFIGURATION,
                    suggested_action="Point the journal at its own file, or move this one away.",
                )
    finally:
        os.close(fd)
    conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT)
    try:
        # SQLite opened the path again: it must still be the file checked above (not a link
        # swapped in meanwhile).
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (known.st_dev, known.st_ino) or stat.S_ISLNK(now.st_mode):
            raise _unsafe(path, "was replaced while it was being opened")
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.executescript(SCHEMA)
        else:
            _check_identity(conn, path, app_id, version)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(
                f"The journal file {path} cannot use WAL mode (got {mode!r}).", path=path
            )
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        if level != _SYNCHRONOUS_LEVELS[synchronous]:  # never less durable than promised
            raise JournalError(
                f"The journal file {path} cannot be written at synchronous={synchronous} (the "
                f"connection runs at level {level}).",
                path=path,
                category=ErrorCategory.CONFIGURATION,
            )
        # Take the write lock now and keep it (locking_mode=EXCLUSIVE): one journal per file.
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def _unsafe(path: str, problem: str) -> JournalError:
    return JournalError(
        f"The journal path {path} {problem}: refusing to use it.",
        path=path,
        category=ErrorCategory.CONFIGURATION,
        suggested_action=(
            "Keep the journal in a directory only its user can write, as a regular file of "
            "that user (mode 0600)."
        ),
    )


def _check_existing(path: str, found: os.stat_result, what: str) -> None:
    """Refuse a journal file (or a companion of it) that someone else could have planted."""
    if stat.S_ISLNK(found.st_mode):
        raise _unsafe(path, f"is a symbolic link{what}")
    if stat.S_ISDIR(found.st_mode) and not what:
        raise JournalError(
            f"The journal path {path} is a directory, not a file.",
            path=path,
            category=ErrorCategory.CONFIGURATION,
        )
    if not stat.S_ISREG(found.st_mode):
        raise _unsafe(path, f"is not a regular file{what}")
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and found.st_uid != geteuid():
        raise _unsafe(path, f"is owned by user id {found.st_uid}, not by this process's user{what}")
    if found.st_mode & stat.S_IWOTH:
        raise _unsafe(path, f"is writable by other users (mode {found.st_mode & 0o777:o}){what}")


def _open_private(path: str) -> int:
    """A descriptor of the journal file, opened without following a symbolic link after the
    file and its companions (``-wal``, ``-shm``) passed :func:`_check_existing`; a missing file
    is created with mode 0600 (SQLite gives its companions the file's mode)."""
    for suffix in _COMPANIONS:
        try:
            found = os.lstat(path + suffix)
        except FileNotFoundError:
            continue
        _check_existing(path, found, f" (its {suffix} file)")
    existing: os.stat_result | None
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    try:
        if existing is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
            fd = os.open(path, flags, 0o600)
            os.fchmod(fd, 0o600)  # exactly, whatever the umask
            return fd
        _check_existing(path, existing, "")
        return os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link appeared after the check
            raise _unsafe(path, "is a symbolic link") from exc
        if exc.errno == errno.EEXIST:  # something appeared after the check
            raise _unsafe(path, "was created by someone else while it was being opened") from exc
        raise


def _check_identity(conn: sqlite3.Connection, path: str, app_id: int, version: int) -> None:
    if app_id != APPLICATION_ID:
        raise JournalError(
            f"The file {path} is a SQLite database of another application "
            f"(application_id {app_id:#010x}, expected {APPLICATION_ID:#010x}): refusing to "
            "use or overwrite it.",
            path=path,
            category=ErrorCategory.CONFIGURATION,
            suggested_action="Point the journal at its own file, or move this one away.",
        )
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"The journal file {path} has schema version {version}, newer than this version "
            f"of aura-actors supports ({SCHEMA_VERSION}).",
            path=path,
            category=ErrorCategory.CONFIGURATION,
            suggested_action="Upgrade aura-actors to the version that wrote the journal.",
        )
    if version != SCHEMA_VERSION and version not in _MIGRATIONS:
        raise JournalError(
            f"The journal file {path} has unknown schema version {version}.",
            path=path,
            category=ErrorCategory.CONFIGURATION,
        )
    result = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if result != ["ok"]:
        raise JournalError(
            f"The journal file {path} is corrupt (quick_check: {'; '.join(result[:3])}).",
            path=path,
            suggested_action=(
                "Restore the file from a backup or move it away; it is never reset automatically."
            ),
        )
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("application") != _APPLICATION_NAME or meta.get("schema_version") != str(version):
        raise JournalError(
            f"The journal file {path} has an inconsistent meta table ({meta!r}).", path=path
        )
    while version < SCHEMA_VERSION:  # an older journal of ours, checked: upgrade it in place
        try:
            conn.executescript(f"BEGIN IMMEDIATE;{_MIGRATIONS[version]}COMMIT;")
        except BaseException:
            _rollback_quietly(conn)
            raise
        upgraded = conn.execute("PRAGMA user_version").fetchone()[0]
        if upgraded <= version:  # pragma: no cover - a migration that does not say it ran
            raise JournalError(f"Upgrading the journal file {path} failed.", path=path)
        version = upgraded


def _load_tracked(conn: sqlite3.Connection, path: str) -> _Loaded:
    """Fold every unfinished and every ``compensation_failed`` saga, checking consistency;
    also the next free saga number."""
    out: list[tuple[SagaHeader, SagaState, int]] = []
    rows = conn.execute(
        f"SELECT {_HEADER_COLUMNS}, outcome FROM sagas "
        "WHERE outcome IS NULL OR outcome = ? ORDER BY created_at",
        (_ATTENTION,),
    ).fetchall()
    for row in rows:
        try:
            header = _header(row)
            state = saga_state(header, _events(conn, row[0], header.saga_id))
        except SagaSequenceError as exc:
            raise JournalError(
                f"The journal file {path} holds an invalid event sequence: {exc}", path=path
            ) from exc
        except (KeyError, ValueError, TypeError, msgspec.DecodeError) as exc:
            raise JournalError(
                f"The journal file {path} holds an unreadable saga {row[1]!r}: "
                f"{type(exc).__name__}: {exc}",
                path=path,
            ) from exc
        stored = row[6]
        if (stored is None and state.finished) or (
            stored is not None and state.phase.value != stored
        ):
            raise JournalError(
                f"The journal file {path} is inconsistent: saga {header.saga_id!r} is recorded "
                f"as {stored or 'unfinished'} but its events end in {state.phase.value}.",
                path=path,
            )
        out.append((header, state, row[0]))
    (last,) = conn.execute("SELECT max(saga_no) FROM sagas").fetchone()
    return out, (last or 0) + 1


def _header(row: Row) -> SagaHeader:
    return SagaHeader(row[1], row[2], row[3], row[4], msgspec.json.decode(row[5]))


def _events(conn: sqlite3.Connection, number: int, saga_id: str) -> list[SagaEvent]:
    rows = conn.execute(
        "SELECT seq, kind, step, at, data, next_kind, next_step FROM events "
        "WHERE saga_no = ? ORDER BY seq",
        (number,),
    ).fetchall()
    events: list[SagaEvent] = []
    for seq, kind, step, at, data, next_kind, next_step in rows:
        events.append(SagaEvent(saga_id, seq, _KINDS[kind], step, at, data))
        if next_kind is not None:
            events.append(SagaEvent(saga_id, seq + 1, _KINDS[next_kind], next_step, at, b""))
    return events


def _prune(conn: sqlite3.Connection, cutoff: float, keep: int) -> int:
    numbers = conn.execute(
        f"SELECT saga_no FROM (SELECT saga_no FROM sagas WHERE {_PRUNABLE} "
        "ORDER BY finished_at DESC LIMIT -1 OFFSET ?) "
        f"UNION SELECT saga_no FROM sagas WHERE {_PRUNABLE} AND finished_at < ?",
        (keep, cutoff),
    ).fetchall()
    conn.executemany("DELETE FROM events WHERE saga_no = ?", numbers)
    conn.executemany("DELETE FROM sagas WHERE saga_no = ?", numbers)
    return len(numbers)


def _discard(conn: sqlite3.Connection, saga_id: str) -> int:
    row = conn.execute(
        "SELECT saga_no FROM sagas WHERE saga_id = ? AND outcome IS NOT NULL", (saga_id,)
    ).fetchone()
    if row is None:
        return 0
    conn.execute("DELETE FROM events WHERE saga_no = ?", row)
    conn.execute("DELETE FROM sagas WHERE saga_no = ?", row)
    return 1


def _translate(exc: BaseException, path: str) -> BaseException:
    """A library error as a JournalError naming the path (JournalErrors pass through)."""
    if isinstance(exc, JournalError) or not isinstance(exc, Exception):
        return exc
    text = str(exc)
    if "locked" in text:
        what = "is in use by another journal or process (it is locked)"
        category = ErrorCategory.INVALID_STATE
    elif "not a database" in text or "malformed" in text or "corrupt" in text:
        what = "is corrupt or not a SQLite database"
        category = ErrorCategory.INVALID_STATE
    elif "unable to open" in text or isinstance(exc, OSError):
        what = "cannot be opened or created (check the directory and permissions)"
        category = ErrorCategory.CONFIGURATION
    else:
        what = "could not be used"
        category = ErrorCategory.INVALID_STATE
    error = JournalError(
        f"The journal file {path} {what}: {type(exc).__name__}: {exc}",
        path=path,
        category=category,
    )
    error.__cause__ = exc
    return error


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back (SQLite may have rolled back itself)


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass  # the journal already failed; the original error is what callers see
