"""The trio side of the PostgreSQL journal's requests: queueing them for the writer thread
(with backpressure), delivering the writer's outcomes to the waiting tasks, and the journal's
availability as the writer and the watchdog see it.

A request is staged and handed to the writer thread in batches; the writer answers through the
trio token with ``_deliver``, which wakes each caller with its value or a fresh error, adopts or
forgets the sagas the batch touched (a write that lost ownership forgets its saga), and moves
the journal between available and unavailable.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Final

import outcome
import trio
from trio.lowlevel import Task, current_task, reschedule, wait_task_rescheduled

from actors._errors import JournalUnavailable
from actors._saga._journals._index import SagaIndex, Tracked
from actors._saga._journals._postgres._schema import (
    APPEND,
    CLAIM,
    CLOSE,
    CREATE,
    DISCARD,
    READ,
    Request,
)
from actors._saga._journals._records import JournalError, SagaPhase

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


class _Pipeline:
    """The trio side of :class:`~actors.PostgresJournal`'s requests (see the module docstring);
    the fields are set by ``PostgresJournal.__init__``."""

    _schema: str
    _url: str
    _lease: float
    _write_timeout: float
    _retain_for: float
    _retain_last: int
    _auto_prune: bool
    _max_pending: int
    _instance_id: str
    _where: str
    _status: str
    _index: SagaIndex
    _queue: Any
    _staged: list[Request]
    _waiting: collections.deque[Request]
    _token: trio.lowlevel.TrioToken | None
    _room: trio.lowlevel.ParkingLot
    _pending: int
    _failure: tuple[str, BaseException] | None
    _available: bool
    _unavailable_reason: str
    _available_lot: trio.lowlevel.ParkingLot
    _open_task: Task | None
    _closed: trio.Event
    _close_error: BaseException | None
    _writer: Writer | None
    _watchdog: Watchdog | None
    _listener: Listener | None
    _listening: bool
    _listen_lot: trio.lowlevel.ParkingLot
    _finish_waiters: dict[str, set[_FinishWaiter]]
    _lost: collections.OrderedDict[str, None]
    _reload: set[int]
    _check_owned: bool
    _appends: int
    _rows: int
    _commits: int
    _bytes: int
    _pruned: int
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

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure_error()
        if self._status != "open":
            state = "not open yet" if self._status in ("new", "opening") else "closed"
            raise JournalError(f"The journal {self._where} is {state}.")

    def _check_usable(self) -> None:
        self._check_open()
        if not self._available:
            raise JournalUnavailable(
                f"The journal database {self._where} is unreachable "
                f"({self._unavailable_reason or 'reconnecting'}); nothing was written.",
                journal=self._where,
            )

    def _failure_error(self) -> JournalError:
        assert self._failure is not None
        message, cause = self._failure
        error = JournalError(
            message,
            suggested_action=(
                "Check the database (its logs, the journal schema) and restart; every write "
                "that returned is stored and will be recovered."
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

    async def _submit(self, request: Request) -> Any:
        # Called right after _wait_for_room with no checkpoint in between.
        self._enqueue(request)
        return await wait_task_rescheduled(request.abort)

    def _enqueue(self, request: Request) -> None:
        request.task = current_task()
        request.deadline = time.monotonic() + self._write_timeout
        self._pending += 1
        self._waiting.append(request)
        self._stage(request)

    def _stage(self, request: Request) -> None:
        if not self._staged:
            assert self._token is not None
            self._token.run_sync_soon(self._flush)
        self._staged.append(request)

    def _flush(self) -> None:
        # Runs in trio after the scheduler pass that staged the requests.
        staged, self._staged = self._staged, []
        self._queue.put(staged)

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
        now = time.monotonic()
        waiting = self._waiting
        while waiting and (waiting[0].done or waiting[0].deadline <= now):
            request = waiting.popleft()
            if request.done:
                continue
            request.abandoned = True
            task, request.task = request.task, None
            if task is None:
                continue
            write = request.op != READ
            if write:
                self._in_doubt += 1
            error = JournalUnavailable(
                f"The journal database {self._where} did not answer within "
                f"{self._write_timeout:g} s"
                + (
                    "; the write stays queued and may still land: act on nothing it announces."
                    if write
                    else "."
                ),
                journal=self._where,
                in_doubt=write,
            )
            reschedule(task, outcome.Error(error))

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
                    self._forget(request)
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
            elif op == DISCARD and error is None and request.value:
                index.attention.pop(request.saga[0], None)
            done += 1
            task = request.task
            if task is not None:
                request.task = None
                if error is None:
                    reschedule(task, outcome.Value(request.value))
                else:
                    reschedule(task, outcome.Error(error))
        waiting = self._waiting
        while waiting and waiting[0].done:
            waiting.popleft()
        self._appends += appends
        self._rows += rows
        self._bytes += nbytes
        self._commits += commits
        self._pruned += pruned
        self._pending -= done
        if failed:
            self._room.unpark_all()
            self._available_lot.unpark_all()
        elif done:
            self._room.unpark(count=done)

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
        found = request.value
        index = self._index
        for header, _events, state, number, epoch in found:
            saga_id = header.saga_id
            self._lost.pop(saga_id, None)
            self._reload.discard(number)
            index.attention.pop(saga_id, None)
            if state.phase is _ATTENTION:
                index.attention[saga_id] = Tracked(header, state, True, number, epoch)
            else:
                index.open[saga_id] = Tracked(header, state, True, number, epoch)
        self._claimed += len(found)
        self._check_owned = False

    def _fail(self, message: str, cause: BaseException, batch: list[Request]) -> None:
        # Runs in trio: the writer hit an error it cannot recover from.
        if self._failure is None:
            self._failure = (message, cause)
        self._deliver(batch, 0, 0, False)  # every caller gets a fresh error naming the failure
