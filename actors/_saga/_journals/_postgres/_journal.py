"""The fleet saga journal: PostgreSQL through psycopg's sync API, with ownership and group commit.

Theory of operation
-------------------
:class:`PostgresJournal` keeps every promise of the :class:`~actors.Journal` protocol
(the same records, the same validation, write-ahead: a write returns only once committed)
and adds what a fleet of instances sharing one database needs.  Trio tasks never touch a
connection: a write is validated in the calling task against the in-memory state of its saga,
staged, and the task parks; the first write staged in a scheduler pass schedules one flush that
hands the pass's writes to the writer thread, which commits them together and wakes every
caller with one ``run_sync_soon`` (see :mod:`actors._saga._journals._postgres._writer`).  This is
the SQLite journal's design, with the database on the other end of a socket.

Ownership.  Each journal instance has a fresh id (``instance_id``, random: never a reused pod
name) and a lease row that its writer renews every third of ``lease_duration``.  Each saga row
names its owner and a fencing epoch; every append is a compare-and-set on (owner, epoch, next
``seq``).  When it misses, the write raises :class:`~actors._errors.OwnershipLost`, nothing is
stored, and this instance stops tracking the saga: another instance owns it now.
:meth:`PostgresJournal.claim_orphans` takes over the unfinished sagas of instances whose lease
expired (one compare-and-set per saga on its owner and epoch, so racing survivors claim each
saga exactly once) and returns them to be resumed.  A graceful :meth:`~PostgresJournal.aclose`
expires the lease at once, so survivors take over without waiting.  :meth:`load_unfinished`
returns only the sagas this instance owns (a fresh instance owns none: what a previous process
left is claimed, by it or by any survivor, once that process's lease has expired);
:meth:`get`, :meth:`list_unfinished`, pruning and :meth:`discard` are fleet-wide.
:meth:`wait_finished` waits, through LISTEN/NOTIFY, for a saga owned elsewhere to end.

Outages.  While the server is unreachable the journal is *unavailable*: new calls raise
:class:`~actors._errors.JournalUnavailable` at once (nothing written); writes already queued
stay queued and land once the writer has reconnected (by itself, retrying with growing
pauses), and their callers, if still waiting after ``write_timeout`` seconds of real time,
get ``JournalUnavailable`` with ``in_doubt=True``: the write may still land, so nothing it
announces may be acted on.  A saga whose write was in doubt is handed out again by
:meth:`claim_orphans` once the write is settled, with its stored state.  After a replay the
writer recognises its own writes that committed just before the connection dropped, so
nothing is applied twice (see :mod:`actors._saga._journals._postgres._writer`).

A write whose values the database refuses fails alone, as in the SQLite journal: its sagas'
states go back to what they were and the journal goes on.  :meth:`load_unfinished` (what a
restarted coordinator calls) tracks every saga this instance owns again, as stored.

Cancellation: as the SQLite journal.  A caller cancelled before its write was queued wrote
nothing; cancelled after, it just stops waiting and the write still lands.

What a coordinator must do with ``OwnershipLost`` and ``JournalUnavailable``, and how to call
:meth:`claim_orphans`, is the contract of :class:`~actors._saga._journals._fleet.FleetJournal`.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio
from trio.lowlevel import wait_task_rescheduled

from actors._errors import ConfigError, ErrorCategory, JournalUnavailable, OwnershipLost
from actors._saga._journals._fleet import FleetJournal, FleetStatistics, InstanceInfo, SagaOwnership
from actors._saga._journals._index import Tracked, normalize_header, seconds
from actors._saga._journals._postgres._pipeline import _FinishWaiter, _Pipeline
from actors._saga._journals._postgres._schema import (
    APPEND,
    CLAIM,
    CLOSE,
    CREATE,
    DISCARD,
    LOAD,
    PRUNE,
    SCHEMA_VERSION,
    Request,
    check_schema_name,
    saga_row,
    state_columns,
)
from actors._saga._journals._records import (
    DEFAULT_RETAIN_FOR,
    DEFAULT_RETAIN_LAST,
    JournalError,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaSummary,
)
from actors._saga._journals._state import SagaState

if TYPE_CHECKING:
    from actors._saga._journals._postgres._writer import Listener, Watchdog, Writer

__all__ = ["DEFAULT_LEASE_DURATION", "DEFAULT_WRITE_TIMEOUT", "SCHEMA_VERSION", "PostgresJournal"]

#: Seconds an instance's lease lasts without renewal (renewed every third of it).
DEFAULT_LEASE_DURATION: Final = 10.0
#: Seconds of real time a caller waits for its write before ``JournalUnavailable``.
DEFAULT_WRITE_TIMEOUT: Final = 5.0
#: Requests queued before callers wait for room.
DEFAULT_MAX_PENDING: Final = 4096

_KIND_VALUES: Final = {kind: kind.value for kind in SagaEventKind}
_PHASES: Final = {phase.value: phase for phase in SagaPhase}


# ---------------------------------------------------------------------------- journal


class PostgresJournal(_Pipeline):
    """A :class:`~actors.Journal` in PostgreSQL, shared safely by a fleet.

    Open it with ``async with`` (or :meth:`open` / :meth:`aclose`) inside trio; its threads
    live exactly as long.  See the module docstring for ownership, outages and cancellation.
    Needs the ``postgres`` extra (``pip install 'aura-actors[postgres]'``).

    Args:
        url: a libpq connection URL or ``key=value`` string; its password never appears in
            messages or logs.
        schema: the PostgreSQL schema holding the journal's tables (created if missing);
            instances that share sagas share it.  Default ``"aura"``.
        lease_duration: seconds an instance's lease lasts without renewal (default 10);
            survivors take over its sagas once it has expired.
        write_timeout: seconds (real time) a call waits for its write while the server does
            not answer, before ``JournalUnavailable`` (default 5).
        retain_for: how long finished sagas are kept, fleet-wide, as for
            :class:`~actors.MemoryJournal` (default 7 days).
        retain_last: how many finished sagas are kept at least (default 10,000).
        auto_prune: whether finished sagas past retention are pruned (default on).
        max_pending: queued requests before callers wait for room (default 4096).

    Raises:
        ConfigError: a bad setting (at construction).
        JournalError: at :meth:`open`, when the schema is foreign, newer or damaged
            (CONFIGURATION), or psycopg is not installed.
        JournalUnavailable: at :meth:`open`, when the server cannot be reached.

    Example::

        async with PostgresJournal("postgresql://app@db/app") as journal:
            for header, events in await journal.claim_orphans():
                resume(header, saga_state(header, events))
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "aura",
        lease_duration: float | timedelta = DEFAULT_LEASE_DURATION,
        write_timeout: float | timedelta = DEFAULT_WRITE_TIMEOUT,
        retain_for: float | timedelta = DEFAULT_RETAIN_FOR,
        retain_last: int = DEFAULT_RETAIN_LAST,
        auto_prune: bool = True,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigError(f"must be a PostgreSQL connection URL, got {url!r}", path="url")
        try:
            self._schema = check_schema_name(schema)
        except ValueError as exc:
            raise ConfigError(str(exc), path="schema") from None
        self._url = url
        self._lease = seconds(lease_duration, "lease_duration")
        self._write_timeout = seconds(write_timeout, "write_timeout")
        self._init_threaded(
            retain_for=retain_for,
            retain_last=retain_last,
            auto_prune=auto_prune,
            max_pending=max_pending,
        )
        self._instance_id = uuid.uuid4().hex
        self._where = f"{_display(url)} (schema {self._schema})"
        self._waiting: collections.deque[Request] = collections.deque()
        self._available = False
        self._unavailable_reason = ""
        self._available_lot = trio.lowlevel.ParkingLot()
        self._writer: Writer | None = None
        self._watchdog: Watchdog | None = None
        self._listener: Listener | None = None
        self._listening = False
        self._listen_lot = trio.lowlevel.ParkingLot()
        self._finish_waiters: dict[str, set[_FinishWaiter]] = {}
        self._lost: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._reload: set[int] = set()  # saga_nos to hand out again (claim_orphans)
        self._check_owned = False  # after an outage: look for owned, untracked sagas
        self._ownership_lost = self._claimed = self._in_doubt = 0

    # ------------------------------------------------------------------------ facts

    @property
    def instance_id(self) -> str:
        """This instance's id: random, fresh for every journal object."""
        return self._instance_id

    @property
    def schema(self) -> str:
        """The PostgreSQL schema of the journal's tables."""
        return self._schema

    @property
    def where(self) -> str:
        """The journal for messages: its URL without password, and its schema."""
        return self._where

    @property
    def lease_duration(self) -> float:
        """Seconds a lease lasts without renewal."""
        return self._lease

    @property
    def write_timeout(self) -> float:
        """Seconds a call waits for its write while the server does not answer."""
        return self._write_timeout

    @property
    def available(self) -> bool:
        """Whether the server is reachable (new calls are accepted)."""
        return self._available and self._failure is None and self._status == "open"

    # -------------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Connect, create or check (and upgrade) the schema, register this instance's lease,
        and start the writer thread.

        Raises:
            JournalError: the schema is unusable (foreign, newer, damaged), psycopg is not
                installed, or the journal was opened before.
            JournalUnavailable: the server cannot be reached.
        """
        self._check_not_opened()
        try:
            import queue

            from actors._saga._journals._postgres._writer import Watchdog, Writer, conninfo
        except ImportError as exc:
            raise JournalError(
                f"PostgresJournal needs psycopg ({exc}).",
                category=ErrorCategory.CONFIGURATION,
                suggested_action="Install the extra: pip install 'aura-actors[postgres]'.",
            ) from exc
        try:
            info = conninfo(self._url, f"aura-actors journal {self._instance_id[:8]}", self._lease)
        except Exception as exc:
            raise ConfigError(
                f"not a valid PostgreSQL connection URL ({exc})", path="url"
            ) from None
        self._queue = queue.SimpleQueue()
        token = trio.lowlevel.current_trio_token()
        self._writer = Writer(self, token, info)
        self._watchdog = Watchdog(self, self._writer, token)
        name = f"aura-journal {self._where}"
        await self._start_threads(
            [(self._writer.run, name), (self._watchdog.run, f"{name} watchdog")]
        )

    def _opened(self, error: BaseException | None) -> None:
        # Runs in trio (run_sync_soon from the writer thread).
        if error is not None:
            self._status = "closed"
            self._stop_threads()
            self._closed.set()
        elif self._open_task is None:  # the opener was cancelled: nobody owns it, close it
            self._queue.put([Request(CLOSE)])
        else:
            self._status = "open"
            self._available = True
        self._answer_opener(error)

    async def aclose(self) -> None:
        """Flush every queued write, expire this instance's lease (survivors may take over its
        unfinished sagas at once), close the connections and stop the threads.

        Idempotent.  If the server is unreachable, gives up after ``write_timeout`` seconds:
        writes still queued then are not stored (their callers were told so).  If cancelled,
        stops waiting; the thread still finishes.

        Raises:
            JournalError: closing failed (writes that returned are durable).
        """
        if self._status == "open":
            assert self._writer is not None
            self._writer.close_by = time.monotonic() + self._write_timeout
            self._available_lot.unpark_all()
            self._wake_finish_waiters()
            if self._listener is not None:
                self._listener.stop.set()
        await self._close(Request(CLOSE))

    # ----------------------------------------------------------------------- writes

    async def create(
        self,
        header: SagaHeader,
        first_event: SagaEvent,
        *,
        then: Sequence[SagaEvent] = (),
        answer_within: float | None = None,
    ) -> SagaState:
        """Durably store a new saga, owned by this instance, with its ``started`` event and
        the events ``then`` (one transaction); return its state.

        ``answer_within`` (seconds of real time; ``write_timeout`` when longer or ``None``)
        bounds the wait for a server that does not answer: past it the call raises
        ``JournalUnavailable`` with ``in_doubt=True`` and the write stays queued (the saga may
        still be created: :meth:`claim_orphans` then hands it out), so a caller with a
        deadline hears of an outage before its deadline.

        Raises:
            SagaSequenceError: an event is invalid, or ``then`` ends the saga.
            JournalError: the id is already in the journal (any instance's); or the journal
                failed or is closed.
            JournalUnavailable: the server is unreachable (see the module docstring).
            TypeError, ValueError: a malformed header (named field), including text
                PostgreSQL cannot store (NUL characters).
        """
        header, metadata = normalize_header(header)
        _check_text(header.saga_id, "saga_id")
        _check_text(header.definition, "definition")
        await self._wait_for_room()
        state = self._index.check_create(header, first_event, then)
        request = Request(CREATE)
        request.saga = (
            header.saga_id,
            header.definition,
            header.created_at,
            header.payload,
            metadata.decode(),
            *state_columns(state),
        )
        kinds = _KIND_VALUES
        request.rows = [
            (e.saga_id, e.seq, kinds[e.kind], e.step, float(e.at), e.data)
            for e in (first_event, *then)
        ]
        request.ids = [header.saga_id]
        request.events = 1 + len(then)
        request.nbytes = len(header.payload) + len(metadata) + len(first_event.data)
        request.nbytes += sum(len(e.data) for e in then)
        self._index.open[header.saga_id] = Tracked(header, state, False, 0, 0)
        self._enqueue(request)
        if answer_within is not None and answer_within < self._write_timeout:
            request.deadline = time.monotonic() + max(answer_within, 0.0)
        await wait_task_rescheduled(request.abort)
        return state

    async def append(self, event: SagaEvent) -> SagaState:
        """Durably append one event to a saga this instance owns; return its state after it.

        Raises like :meth:`append_many`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._ready():
            await self._wait_for_room()
        if self._lost and type(event) is SagaEvent and event.saga_id in self._lost:
            raise OwnershipLost(saga_id=event.saga_id)
        index = self._index
        found = index.open.get(event.saga_id) if type(event) is SagaEvent else None
        undo = () if found is None else ((found, found.state, found.epoch),)
        tracked = index.advance_one(event)
        state = tracked.state
        request = self._queue_write(tracked, state, (event,))
        request.undo = undo
        await wait_task_rescheduled(request.abort)
        return state

    async def append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        """Durably append events (of one or more sagas this instance owns) in one
        transaction, in order, all or none; return each saga's state after them.

        Raises:
            SagaSequenceError: an event is not a valid transition, or its saga is not open
                in this journal (unknown, finished, owned elsewhere, or its create has not
                returned yet).  Nothing is written.
            OwnershipLost: another instance owns one of the sagas now.  Nothing is written.
            JournalUnavailable: the server is unreachable (see the module docstring).
            JournalError: the journal failed or is closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._ready():
            await self._wait_for_room()
        if self._lost:
            for event in events:
                if type(event) is SagaEvent and event.saga_id in self._lost:
                    raise OwnershipLost(saga_id=event.saga_id)
        index = self._index
        first = events[0] if events else None
        found = index.open.get(first.saga_id) if type(first) is SagaEvent else None
        undo = () if found is None else ((found, found.state, found.epoch),)
        tracked = index.advance_saga(events)
        if tracked is not None:  # one saga's events: the common write
            state = tracked.state
            request = self._queue_write(tracked, state, events)
            request.undo = undo
            await wait_task_rescheduled(request.abort)
            return {state.saga_id: state}
        states = index.check_append(events)
        owned = {saga_id: index.open[saga_id] for saga_id in states}
        request = Request(APPEND)
        request.undo = tuple((t, t.state, t.epoch) for t in owned.values())
        index.commit(states)
        kinds = _KIND_VALUES
        for saga_id, state in states.items():
            mine = owned[saga_id]
            first = next(e for e in events if e.saga_id == saga_id)
            request.ids.append(saga_id)
            request.sagas.append(saga_row(mine, first.seq, state))
            request.rows += [
                (mine.number, e.seq, kinds[e.kind], e.step, float(e.at), e.data)
                for e in events
                if e.saga_id == saga_id
            ]
        request.nbytes = sum(len(e.data) for e in events)
        request.events = len(events)
        await self._submit(request)
        return states

    def _ready(self) -> bool:
        return (
            self._status == "open"
            and self._failure is None
            and self._available
            and self._pending < self._max_pending
        )

    def _queue_write(
        self, tracked: Tracked, state: SagaState, events: Sequence[SagaEvent]
    ) -> Request:
        """Queue the (validated) ``events`` of one saga for the current task, which then waits
        for it with ``wait_task_rescheduled(request.abort)``."""
        request = Request(APPEND)
        number = tracked.number
        kinds = _KIND_VALUES
        if len(events) == 2:  # a step's completion and the next start: nearly every write
            done, then = events
            request.rows = [
                (number, done.seq, kinds[done.kind], done.step, float(done.at), done.data),
                (number, then.seq, kinds[then.kind], then.step, float(then.at), then.data),
            ]
            request.nbytes = len(done.data) + len(then.data)
            request.events = 2
        else:
            nbytes = 0
            rows = request.rows
            for e in events:
                rows.append((number, e.seq, kinds[e.kind], e.step, float(e.at), e.data))
                nbytes += len(e.data)
            request.nbytes = nbytes
            request.events = len(events)
        request.ids = [state.saga_id]
        request.sagas = [saga_row(tracked, events[0].seq, state)]
        self._enqueue(request)
        return request

    async def prune_finished(
        self,
        older_than: float | timedelta | None = None,
        keep_last: int | None = None,
        *,
        now: float | None = None,
    ) -> int:
        """Remove finished sagas (of every instance) older than ``older_than`` seconds or
        beyond the ``keep_last`` most recently finished (defaults: the journal's retention);
        return how many.  Unfinished and ``compensation_failed`` sagas are never removed.
        ``now`` defaults to ``time.time()``."""
        cutoff, keep = self._retention(older_than, keep_last, now)
        await self._wait_for_room()
        request = Request(PRUNE)
        request.value = (cutoff, keep)
        result: int = await self._submit(request)
        return result

    async def discard(self, saga_id: str) -> bool:
        """Remove one finished saga (of any instance); ``False`` if unknown.

        Raises:
            JournalError: the saga is not finished.
        """
        await self._wait_for_room()
        if saga_id in self._index.open:
            raise JournalError(
                f"Saga {saga_id!r} is not finished; only finished sagas can be discarded."
            )
        request = Request(DISCARD)
        request.saga = (saga_id,)
        found: int = await self._submit(request)
        return bool(found)

    # ------------------------------------------------------------------------ reads

    async def load_unfinished(self) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        """Every unfinished saga *this instance owns*, with its events, oldest first (read
        after queued writes), to be driven by the caller from now on: they are tracked as
        stored and no longer handed out by :meth:`claim_orphans`.  A fresh instance owns
        none: see :meth:`claim_orphans`."""
        await self._wait_for_room()
        request = Request(LOAD)
        found: list[tuple[SagaHeader, list[SagaEvent]]] = await self._submit(request)
        return found

    async def get(self, saga_id: str) -> tuple[SagaHeader, list[SagaEvent]] | None:
        """One saga's header and events (whichever instance owns it), or ``None``."""
        from actors._saga._journals._postgres._writer import read_get

        return await self._read(read_get(self._stmts(), saga_id))  # type: ignore[no-any-return]

    async def list_unfinished(self) -> list[SagaSummary]:
        """Running and ``compensation_failed`` sagas of the whole fleet, oldest first."""
        stmts = self._stmts()

        def read(conn: Any) -> list[SagaSummary]:
            return [
                SagaSummary(
                    saga_id=row[0],
                    definition=row[1],
                    created_at=row[2],
                    phase=_PHASES[row[3]],
                    next_step=row[4],
                    step_in_flight=row[5],
                    compensation_step=row[6],
                    compensated=row[7],
                    events=row[8],
                    updated_at=row[9],
                    metadata=msgspec.json.decode(row[10]),
                    owner=row[11],
                )
                for row in conn.execute(stmts.summaries)
            ]

        return await self._read(read)  # type: ignore[no-any-return]

    async def ownership(self, saga_id: str) -> SagaOwnership | None:
        """Who owns the saga, its epoch and phase, and whether the owner is alive; ``None``
        if the saga is unknown."""
        stmts = self._stmts()

        def read(conn: Any) -> SagaOwnership | None:
            row = conn.execute(stmts.ownership, (saga_id,)).fetchone()
            if row is None:
                return None
            return SagaOwnership(row[0], row[1], row[2], _PHASES[row[3]], row[4], row[5])

        return await self._read(read)  # type: ignore[no-any-return]

    async def instances(self) -> list[InstanceInfo]:
        """Every instance with a lease row (live ones, and dead ones not yet cleaned up:
        rows expired for a day and owning nothing are removed), oldest first."""
        stmts = self._stmts()

        def read(conn: Any) -> list[InstanceInfo]:
            return [InstanceInfo(*row) for row in conn.execute(stmts.instances)]

        return await self._read(read)  # type: ignore[no-any-return]

    def fleet_statistics(self) -> FleetStatistics:
        """A snapshot of the connection and ownership counters (for health and metrics)."""
        writer = self._writer
        failure = self._failure
        if failure is not None:
            reason = failure[0]
        else:
            reason = "" if self._available else self._unavailable_reason
        return FleetStatistics(
            instance_id=self._instance_id,
            available=self.available,
            unavailable_reason=reason,
            reconnects=0 if writer is None else writer.reconnects,
            ownership_lost=self._ownership_lost,
            sagas_claimed=self._claimed,
            writes_in_doubt=self._in_doubt,
            failed=failure is not None,
        )

    # ----------------------------------------------------------------------- fleet

    async def wait_available(self) -> None:
        """Return once the server is reachable (at once if it is).

        Raises:
            JournalError: the journal failed or is closed (also while waiting).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            if self._available:
                return
            await self._available_lot.park()

    async def claim_orphans(
        self, limit: int = 100, *, definitions: Collection[str] | None = None
    ) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        """Take over sagas that nobody drives, and return them (oldest first, at most
        ``limit`` claimed from other instances) with their events, to be resumed.
        ``definitions``: claim only sagas of these definitions from other instances (an
        instance that cannot run a definition leaves its sagas to one that can).

        They are: the unfinished sagas of instances whose lease has expired, each claimed
        with a compare-and-set on its owner and epoch (several survivors racing claim each
        saga exactly once); and this instance's own sagas whose write was in doubt (see the
        module docstring) or that a failed write left out of step, read back as stored.  An
        instance judges an expired lease only when its own connection predates the expiry,
        or after being connected for a whole lease (after an outage every lease looks
        expired, and live instances need that long to renew).  Sagas that cannot be read
        back are left unclaimed and logged.

        Raises:
            JournalUnavailable, JournalError: as for the other calls.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"must be an integer >= 1, got {limit!r}", path="limit")
        names = None
        if definitions is not None:
            names = sorted(definitions)
            if not all(isinstance(name, str) for name in names):
                raise ConfigError("must be names (str)", path="definitions")
        await self._wait_for_room()
        tracked = None
        if self._check_owned:
            # Every saga the trio side knows, by id: a create still unconfirmed here may have
            # committed before the claim runs, and is driven by its creator.
            index = self._index
            tracked = sorted((*index.open, *index.attention))
        request = Request(CLAIM)
        request.value = (limit, sorted(self._reload), tracked, names)
        found: list[tuple[SagaHeader, list[SagaEvent], SagaState, int, int]]
        found = await self._submit(request)
        return [(header, events) for header, events, *_ in found]

    async def wait_finished(self, saga_id: str) -> SagaPhase | None:
        """Wait until the saga (whichever instance owns it) has ended, through LISTEN/NOTIFY;
        return its final phase, or ``None`` if no such saga is in the journal (never
        created, or pruned).  Returns at once for a finished saga.

        A second connection listens for finished sagas from the first call on.  Waits
        without a deadline (put one around it), through outages of the server: the saga is
        checked again whenever the listener or the journal reconnects.  If the journal
        closes or fails meanwhile, raises ``JournalError``.
        """
        key = hashlib.md5(saga_id.encode(), usedforsecurity=False).hexdigest()
        waiter = _FinishWaiter()
        self._finish_waiters.setdefault(key, set()).add(waiter)
        try:
            while True:
                waiter.event = trio.Event()
                try:
                    await self._ensure_listening()
                    stored = await self._outcome(saga_id)
                except JournalUnavailable:
                    await self.wait_available()  # then check again: notes sent meanwhile are lost
                    continue
                if stored is None:
                    return None
                if stored:
                    return _PHASES[stored]
                await waiter.event.wait()
        finally:
            waiters = self._finish_waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._finish_waiters[key]

    async def _outcome(self, saga_id: str) -> str | None:
        """``None`` if the saga is unknown, ``""`` if unfinished, else its outcome."""
        stmts = self._stmts()

        def read(conn: Any) -> str | None:
            row = conn.execute(stmts.outcome, (saga_id,)).fetchone()
            return None if row is None else (row[0] or "")

        return await self._read(read)  # type: ignore[no-any-return]

    async def _ensure_listening(self) -> None:
        self._check_usable()
        if self._listener is None:
            from actors._saga._journals._postgres._writer import Listener

            assert self._token is not None
            assert self._writer is not None
            self._listener = Listener(self, self._token, self._writer.info)
            threading.Thread(
                target=self._listener.run, name=f"aura-journal {self._where} listener", daemon=True
            ).start()
        while not self._listening:
            self._check_usable()
            await self._listen_lot.park()

    def _set_listening(self, listening: bool) -> None:
        # Runs in trio: the listener (re)connected, or lost its connection.
        self._listening = listening
        if listening:
            self._listen_lot.unpark_all()
            self._wake_finish_waiters()  # notifications sent while away are lost: check again

    def _notified(self, key: str) -> None:
        # Runs in trio: a saga of this schema ended (key: md5 of its id).
        for waiter in self._finish_waiters.get(key, ()):
            waiter.event.set()

    def _wake_finish_waiters(self) -> None:
        for waiters in self._finish_waiters.values():
            for waiter in waiters:
                waiter.event.set()
        self._listen_lot.unpark_all()


def _check_text(value: str, name: str) -> None:
    """PostgreSQL text holds no NUL character: say so up front, rather than failing the
    writer's batch (``normalize_header`` has refused text that UTF-8 cannot hold)."""
    if "\x00" in value:
        raise ValueError(f"SagaHeader.{name} must not contain NUL characters (PostgreSQL text)")


def _display(url: str) -> str:
    try:
        from actors._saga._journals._postgres._writer import display_url
    except ImportError:  # psycopg missing: open() says so; never show the URL's password
        return "<a PostgreSQL URL>"
    return display_url(url)


if TYPE_CHECKING:  # mypy checks that the journal meets the protocols

    def _is_a_fleet_journal(journal: PostgresJournal) -> FleetJournal:
        return journal
