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

import os
import queue
import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from typing import Final, Literal

import trio
from trio.lowlevel import current_task, wait_task_rescheduled

from actors._errors import ConfigError
from actors._saga._journals._index import (
    Tracked,
    event_bytes,
    normalize_header,
    storable,
)
from actors._saga._journals._records import (
    DEFAULT_RETAIN_FOR,
    DEFAULT_RETAIN_LAST,
    JournalError,
    SagaEvent,
    SagaHeader,
    SagaPhase,
    SagaSummary,
)
from actors._saga._journals._sqlite._schema import (
    _ENDS,
    _HEADER_COLUMNS,
    _KIND_VALUES,
    _events,
    _header,
    _Loaded,
    event_rows,
)
from actors._saga._journals._sqlite._writer import (
    _APPEND,
    _CLOSE,
    _CREATE,
    _DISCARD,
    _PRUNE,
    _READ,
    _Request,
    _Writer,
)
from actors._saga._journals._state import SagaState
from actors._saga._journals._threaded import ThreadedJournal

__all__ = [
    "SqliteJournal",
]

#: Requests queued before callers wait for room.
DEFAULT_MAX_PENDING: Final = 4096


class SqliteJournal(ThreadedJournal):
    """A durable :class:`~actors.Journal` in one SQLite file (WAL, group commit).

    Open it with ``async with`` (or :meth:`open` / :meth:`aclose`) inside trio; the writer
    thread lives exactly as long.  See the module docstring for durability, cancellation and
    failure behaviour.

    Args:
        path: the journal file; created if missing (its directory must exist).  The only
            setting most users need.
        synchronous: ``"FULL"`` (default: durable across power loss) or ``"NORMAL"`` (durable
            across process crashes only, cheaper per commit).
        retain_for: how long finished sagas are kept, as for :class:`~actors.MemoryJournal`
            (default 7 days).
        retain_last: how many finished sagas are kept at least (default 10,000).
        auto_prune: whether finished sagas past retention are pruned (default on).
        max_pending: queued requests before callers wait for room (default 4096).

    Raises:
        ConfigError: a bad setting (at construction).
        JournalError: at :meth:`open`, when the file is unusable (see the module docstring).

    Example::

        async with SqliteJournal("sagas.db") as journal:
            for header, events in await journal.load_unfinished():
                resume(header, saga_state(header, events))
    """

    _failure_action = (
        "Check the disk (free space, permissions, I/O errors) and restart; every write that "
        "returned is in the file and will be recovered."
    )

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
        self._path = self._where = os.fspath(path)
        self._synchronous = synchronous
        self._init_threaded(
            retain_for=retain_for,
            retain_last=retain_last,
            auto_prune=auto_prune,
            max_pending=max_pending,
        )
        self._queue: queue.SimpleQueue[list[_Request]] = queue.SimpleQueue()
        self._next_number = 1  # saga_no of the next create (set at open)
        self._writer: _Writer | None = None

    @property
    def path(self) -> str:
        """The journal file."""
        return self._where

    # -------------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Open (or create) the file on a new writer thread and load the unfinished sagas.

        Raises:
            JournalError: the file is unusable (not SQLite, corrupt, foreign, newer schema,
                locked by another journal, cannot be created); or the journal was opened
                before.
        """
        self._check_not_opened()
        self._writer = _Writer(self, trio.lowlevel.current_trio_token())
        await self._start_threads([(self._writer.run, f"aura-journal {self._path}")])

    def _opened(self, loaded: _Loaded | None, error: BaseException | None) -> None:
        # Runs in trio (run_sync_soon from the writer thread).
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
            if self._open_task is None:  # the opener was cancelled: nobody owns it, close it
                self._queue.put([_Request(_CLOSE)])
            else:
                self._status = "open"
        self._answer_opener(error)

    async def aclose(self) -> None:
        """Flush every queued write, close the file and stop the writer thread.

        Idempotent.  If cancelled, stops waiting; the thread still finishes the flush.

        Raises:
            JournalError: closing the file failed (the writes that returned are durable).
        """
        await self._close(_Request(_CLOSE))

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
        cutoff, keep = self._retention(older_than, keep_last, now)
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

    # ------------------------------------------------------------------- deliveries

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
            self._wake(request, request.value, error)
        self._account(done, appends, rows, nbytes, commits, pruned)

    def _deliver_failed(self, batch: list[_Request]) -> None:
        self._deliver(batch, 0, 0)  # every caller gets a fresh error naming the failure
