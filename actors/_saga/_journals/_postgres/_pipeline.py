"""The trio side of the PostgreSQL journal's requests: their deadlines, delivering the
writer's outcomes to the waiting tasks, and the journal's availability as the writer and the
watchdog see it (staging, flushing and backpressure are the shared
:mod:`actors._saga._journals._threaded`'s).

The writer answers each batch through the trio token with ``_deliver``, which wakes each
caller with its value or a fresh error, adopts, rolls back or forgets the sagas the batch
touched (a write the database refused rolls its sagas back; one that lost ownership forgets
them; a claim or a load adopts what it read), and moves the journal between available and
unavailable.  The watchdog's ``_expire`` tells callers whose deadline passed (``write_timeout``,
or a create's own shorter bound) that their write is in doubt.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Final

import outcome
import trio
from trio.lowlevel import current_task, reschedule

from actors._errors import JournalUnavailable
from actors._saga._journals._index import Tracked
from actors._saga._journals._postgres._schema import (
    APPEND,
    CLAIM,
    CLOSE,
    CREATE,
    DISCARD,
    LOAD,
    READ,
    Request,
)
from actors._saga._journals._records import SagaEvent, SagaHeader, SagaPhase
from actors._saga._journals._state import SagaState
from actors._saga._journals._threaded import ThreadedJournal

if TYPE_CHECKING:
    from actors._saga._journals._postgres._schema import Statements
    from actors._saga._journals._postgres._writer import Listener, Watchdog, Writer


#: Saga ids remembered as lost to another owner (so their writes raise OwnershipLost).
_LOST_MEMORY: Final = 10_000
_ATTENTION: Final = SagaPhase.COMPENSATION_FAILED


class _FinishWaiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = trio.Event()


class _Pipeline(ThreadedJournal):
    """The trio side of :class:`~actors.PostgresJournal`'s requests (see the module docstring);
    the fields are set by ``PostgresJournal.__init__``."""

    _failure_action = (
        "Check the database (its logs, the journal schema) and restart; every write that "
        "returned is stored and will be recovered."
    )
    _schema: str
    _url: str
    _lease: float
    _write_timeout: float
    _instance_id: str
    _waiting: collections.deque[Request]
    _available: bool
    _unavailable_reason: str
    _available_lot: trio.lowlevel.ParkingLot
    _writer: Writer | None
    _watchdog: Watchdog | None
    _listener: Listener | None
    _listening: bool
    _listen_lot: trio.lowlevel.ParkingLot
    _finish_waiters: dict[str, set[_FinishWaiter]]
    _lost: collections.OrderedDict[str, None]
    _reload: set[int]
    _check_owned: bool
    _ownership_lost: int
    _claimed: int
    _in_doubt: int

    def _stop_threads(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop.set()
        if self._listener is not None:
            self._listener.stop.set()

    def _stmts(self) -> Statements:
        if self._writer is None:
            self._check_open()  # raises: not open yet
        assert self._writer is not None
        return self._writer.stmts

    async def _read(self, fn: Any) -> Any:
        await self._wait_for_room()
        request = Request(READ)
        request.fn = fn
        return await self._submit(request)

    def _check_usable(self) -> None:
        self._check_open()
        if not self._available:
            raise JournalUnavailable(
                f"The journal database {self._where} is unreachable "
                f"({self._unavailable_reason or 'reconnecting'}); nothing was written.",
                journal=self._where,
            )

    def _enqueue(self, request: Request) -> None:  # type: ignore[override]
        request.task = current_task()
        request.deadline = time.monotonic() + self._write_timeout
        self._pending += 1
        self._waiting.append(request)
        self._stage(request)

    def _set_available(self, available: bool, reason: str) -> None:
        # Runs in trio: the writer lost or regained the server.
        if available:
            if not self._available:
                self._check_owned = True  # a claim in doubt may have landed: reconcile
            self._available = True
            self._unavailable_reason = ""
            self._available_lot.unpark_all()
        else:
            self._available = False
            self._unavailable_reason = reason

    def _expire(self, busy_for: float) -> None:
        # Runs in trio (from the watchdog): the writer has been on one batch for busy_for s.
        writer = self._writer
        if (
            busy_for >= self._write_timeout
            and self._available
            and writer is not None
            and writer.busy_since is not None
        ):
            self._set_available(False, f"no answer for {busy_for:.1f} s")
            # The writer announces the server again once its batch is through (and at its
            # next lease renewal at the latest).
            writer.available = False
        # Deadlines are not in queue order (a call may bring a shorter one): look at all.
        now = time.monotonic()
        kept: collections.deque[Request] = collections.deque()
        for request in self._waiting:
            if request.done:
                continue
            if request.deadline > now:
                kept.append(request)
                continue
            task, request.task = request.task, None
            if task is None:
                # Its caller stopped waiting (cancelled) and was told nothing: whoever
                # cancelled it reads the saga back (the write still lands).
                continue
            write = request.op != READ
            if write:
                request.abandoned = True  # claim_orphans hands its sagas back once settled
                self._in_doubt += 1
            error = JournalUnavailable(
                f"The journal database {self._where} did not answer in time"
                + (
                    "; the write stays queued and may still land: act on nothing it announces."
                    if write
                    else "."
                ),
                journal=self._where,
                in_doubt=write,
            )
            reschedule(task, outcome.Error(error))
        self._waiting = kept

    def _deliver(self, batch: list[Request], commits: int, pruned: int, back: bool) -> None:
        # Runs in trio, once per batch (run_sync_soon from the writer thread); ``back``: the
        # server is reachable again (said here, before anyone is woken, so that callers woken
        # by this batch find the journal available and wait_available's see it settled).
        if back:
            self._set_available(True, "")
        failed = self._failure is not None
        index = self._index
        done = appends = rows = nbytes = 0
        for request in batch:
            request.done = True
            op = request.op
            if failed and op != CLOSE:
                request.error = self._failure_error()
            error = request.error
            if op == APPEND:  # the common case first
                if error is None:
                    appends += 1
                    rows += request.events
                    nbytes += request.nbytes
                    if request.abandoned:
                        self._reload.update(saga[0] for saga in request.sagas)
                elif not failed:
                    self._refused(request)
            elif op == CLOSE:
                self._close_error = error
                self._stop_threads()
                self._closed.set()
                continue
            elif op == CREATE:
                saga_id = request.saga[0]
                tracked = index.open.get(saga_id)
                if error is None:
                    appends += 1
                    rows += request.events
                    nbytes += request.nbytes
                    if tracked is not None:
                        tracked.number = request.value
                        tracked.confirmed = True
                    if request.abandoned:
                        self._reload.add(request.value)
                elif tracked is not None and not tracked.confirmed:
                    del index.open[saga_id]
            elif op == CLAIM and error is None:
                self._adopt(request)
            elif op == LOAD and error is None:
                request.value = self._adopt_owned(request.value)
            elif op == DISCARD and error is None and request.value:
                index.attention.pop(request.saga[0], None)
            done += 1
            self._wake(request, request.value, error)
        waiting = self._waiting
        while waiting and waiting[0].done:
            waiting.popleft()
        self._account(done, appends, rows, nbytes, commits, pruned)
        if failed:
            self._available_lot.unpark_all()

    def _deliver_failed(self, batch: list[Request]) -> None:
        self._deliver(batch, 0, 0, False)  # every caller gets a fresh error naming the failure

    def _refused(self, request: Request) -> None:
        """A write was not stored.  If the database refused its values (``request.refused``),
        its sagas' states go back to what they were, and the journal goes on with them; a
        write validated before that rollback (queued behind the refused one, so out of step
        with the store) just fails.  Any other miss (the saga owned elsewhere, out of step
        with the store) stops tracking its sagas (:meth:`_forget`)."""
        index = self._index
        if request.refused:
            for tracked, prior, epoch in request.undo:
                index.roll_back(tracked, prior, epoch)
            return
        if (
            not request.lost
            and request.undo
            and all(tracked.epoch != epoch for tracked, _, epoch in request.undo)
        ):
            return  # behind a refused write of its saga, which was rolled back already
        self._forget(request)

    def _forget(self, request: Request) -> None:
        """A write of sagas failed: stop tracking them (the lost ones are owned elsewhere; the
        others are read back from the journal by the next claim_orphans)."""
        index = self._index
        lost = set(request.lost)
        if lost:
            self._ownership_lost += 1
        for saga_id, saga in zip(request.ids, request.sagas, strict=True):
            index.open.pop(saga_id, None)
            index.attention.pop(saga_id, None)
            if saga_id in lost:
                self._lost[saga_id] = None
                if len(self._lost) > _LOST_MEMORY:
                    self._lost.popitem(last=False)
            else:
                self._reload.add(saga[0])

    def _adopt(self, request: Request) -> None:
        """A claim's sagas: tracked as stored from now on (see :meth:`_take`)."""
        request.value = self._take(request.value)
        self._claimed += len(request.value)

    def _adopt_owned(
        self, found: list[tuple[SagaHeader, list[SagaEvent], SagaState, int, int]]
    ) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        """The sagas ``load_unfinished`` read: tracked as stored (see :meth:`_take`), and no
        longer handed out through claim_orphans: the caller drives them now."""
        return [(header, events) for header, events, *_ in self._take(found)]

    def _take(
        self, found: list[tuple[SagaHeader, list[SagaEvent], SagaState, int, int]]
    ) -> list[tuple[SagaHeader, list[SagaEvent], SagaState, int, int]]:
        """Track each saga of ``found`` (read by a claim or a load) as stored, and return
        them, but for a saga whose tracked state is *ahead* of what was read: a write of it
        was validated after the read, so whoever made it drives it; it keeps its state and is
        not handed out (tracking the older state would refuse that driver's next write)."""
        index = self._index
        taken = []
        for item in found:
            header, _events, state, number, epoch = item
            saga_id = header.saga_id
            mine = index.open.get(saga_id)
            if (
                mine is not None
                and mine.confirmed
                and mine.stored == epoch
                and mine.state.next_seq > state.next_seq
            ):
                continue
            self._lost.pop(saga_id, None)
            self._reload.discard(number)
            index.attention.pop(saga_id, None)
            if state.phase is _ATTENTION:
                index.attention[saga_id] = Tracked(header, state, True, number, epoch)
            else:
                index.open[saga_id] = Tracked(header, state, True, number, epoch)
            taken.append(item)
        self._check_owned = False
        return taken
