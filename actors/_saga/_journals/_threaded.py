"""The trio side every journal with a writer thread shares (SQLite, PostgreSQL).

Theory of operation
-------------------
A threaded journal's writes are validated in the calling task (against the in-memory
:class:`~actors._saga._journals._index.SagaIndex`), then *staged*: the first request staged in
a scheduler pass schedules one flush (``TrioToken.run_sync_soon`` runs it after the pass), which
hands everything staged in the pass to the writer thread at once, so a batch is never cut in
the middle of a pass.  The caller parks with ``wait_task_rescheduled(request.abort)``; the
writer answers a whole batch with one ``run_sync_soon`` of the journal's ``_deliver``, which
reschedules every caller with its value or a fresh error.  At most ``max_pending`` requests
are queued; further callers wait for room (and a failed or closed journal wakes them to raise).

:class:`ThreadedJournal` holds that plumbing: the lifecycle (``open`` parks until the writer
thread has opened the storage, ``aclose`` flushes and waits for the thread), staging and
flushing, backpressure, the failure state every later call raises, retention arguments, and
the counters of :meth:`ThreadedJournal.statistics`.  Each journal keeps its writes' hot paths,
its writer thread and its ``_deliver`` (what a batch's outcome means for its index).

Cancellation: a caller cancelled while waiting for room wrote nothing; cancelled after its
request was queued, it just stops waiting (``request.abort``) and the write still lands.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol, Self

import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

from actors._errors import ConfigError
from actors._saga._journals._index import SagaIndex, check_count, seconds
from actors._saga._journals._records import JournalError, JournalStatistics

__all__ = ["QueuedRequest", "ThreadedJournal"]


class QueuedRequest(Protocol):
    """What the shared plumbing needs of a journal's request."""

    op: int
    task: Task | None

    def abort(self, raise_cancel: RaiseCancelT) -> Abort: ...


class ThreadedJournal:
    """The shared trio side of a journal served by writer threads (see the module docstring).

    Subclasses call :meth:`_init_threaded` from their constructor, start their threads with
    :meth:`_start_threads` from ``open``, and answer batches through their own ``_deliver``
    (using :meth:`_wake` and :meth:`_account`).
    """

    #: How messages name the journal (a path, a URL without password and a schema).
    _where: str
    #: The file of a journal kept in one (``JournalError.path``), else ``None``.
    _path: str | None = None
    #: What a failed journal's error suggests.
    _failure_action = "Check the storage and restart; every write that returned is durable."

    def _init_threaded(
        self,
        *,
        retain_for: float | timedelta,
        retain_last: int,
        auto_prune: bool,
        max_pending: int,
    ) -> None:
        self._retain_for = seconds(retain_for, "retain_for")
        self._retain_last = check_count(retain_last, "retain_last")
        self._auto_prune = bool(auto_prune)
        if check_count(max_pending, "max_pending") < 1:
            raise ConfigError("must be at least 1", path="max_pending")
        self._max_pending = max_pending
        self._status = "new"  # new -> opening -> open -> closing -> closed
        self._index = SagaIndex()
        self._queue: Any = None  # queue.SimpleQueue[list[request]]: the writer's inbox
        self._staged: list[Any] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._room = trio.lowlevel.ParkingLot()
        self._pending = 0
        self._failure: tuple[str, BaseException] | None = None
        self._open_task: Task | None = None
        self._closed = trio.Event()
        self._close_error: BaseException | None = None
        self._appends = self._rows = self._commits = self._bytes = self._pruned = 0

    # -------------------------------------------------------------------- lifecycle

    async def _start_threads(self, threads: Sequence[tuple[Callable[[], object], str]]) -> None:
        """Start the journal's threads (``(target, name)`` pairs, daemons) and park until the
        writer reports the storage open (``_opened``); a cancelled opener leaves the journal
        to be closed as soon as it has opened."""
        self._status = "opening"
        self._token = trio.lowlevel.current_trio_token()
        self._open_task = current_task()
        for target, name in threads:
            threading.Thread(target=target, name=name, daemon=True).start()

        def abort(raise_cancel: RaiseCancelT) -> Abort:
            self._open_task = None  # _opened closes the journal when it arrives
            self._status = "closing"
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def _answer_opener(self, error: BaseException | None) -> None:
        """Wake the task waiting in ``open`` (runs in trio, from ``_opened``)."""
        task, self._open_task = self._open_task, None
        if task is not None:
            reschedule(task, outcome.Value(None) if error is None else outcome.Error(error))

    def _check_not_opened(self) -> None:
        if self._status != "new":
            raise JournalError(f"The journal {self._where} was already opened.", path=self._path)

    async def _close(self, close_request: Any) -> None:
        """The shared part of ``aclose``: queue ``close_request`` (built by the caller, who
        may prepare its threads first) unless closing already, wait for the writer to finish,
        raise its close error.  Idempotent."""
        if self._status in ("new", "closed"):
            self._status = "closed"
            await trio.lowlevel.checkpoint()
            return
        if self._status == "opening":
            raise JournalError(f"The journal {self._where} is still opening.", path=self._path)
        if self._status == "open":
            self._status = "closing"
            self._room.unpark_all()
            self._stage(close_request)
        await self._closed.wait()
        self._status = "closed"
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error

    async def open(self) -> None:  # pragma: no cover - every journal defines it
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover - every journal defines it
        raise NotImplementedError

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

    # ----------------------------------------------------------------- the queue

    def _check_open(self) -> None:
        """Raise if the journal failed, or is not open."""
        if self._failure is not None:
            raise self._failure_error()
        if self._status != "open":
            state = "not open yet" if self._status in ("new", "opening") else "closed"
            raise JournalError(f"The journal {self._where} is {state}.", path=self._path)

    def _check_usable(self) -> None:
        """Raise if a call cannot be queued now (a journal with a server adds availability)."""
        self._check_open()

    def _failure_error(self) -> JournalError:
        """A fresh error naming the failure (every caller gets its own)."""
        assert self._failure is not None
        message, cause = self._failure
        error = JournalError(message, path=self._path, suggested_action=self._failure_action)
        error.__cause__ = cause
        return error

    async def _wait_for_room(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        while self._pending >= self._max_pending:
            await self._room.park()
            self._check_usable()

    async def _submit(self, request: QueuedRequest) -> Any:
        """Queue ``request`` for the current task and wait for its outcome.  Called right
        after :meth:`_wait_for_room`, with no checkpoint in between."""
        self._enqueue(request)
        return await wait_task_rescheduled(request.abort)

    def _enqueue(self, request: QueuedRequest) -> None:
        request.task = current_task()
        self._pending += 1
        self._stage(request)

    def _stage(self, request: QueuedRequest) -> None:
        if not self._staged:
            assert self._token is not None
            self._token.run_sync_soon(self._flush)
        self._staged.append(request)

    def _flush(self) -> None:
        # Runs in trio after the scheduler pass that staged the requests.
        staged, self._staged = self._staged, []
        self._queue.put(staged)

    # --------------------------------------------------------------- deliveries

    @staticmethod
    def _wake(request: QueuedRequest, value: Any, error: BaseException | None) -> None:
        """Reschedule the task waiting for ``request`` (if it still waits)."""
        task = request.task
        if task is not None:
            request.task = None
            reschedule(task, outcome.Value(value) if error is None else outcome.Error(error))

    def _account(
        self, done: int, appends: int, rows: int, nbytes: int, commits: int, pruned: int
    ) -> None:
        """Count a delivered batch and give its room back to the waiting callers."""
        self._appends += appends
        self._rows += rows
        self._bytes += nbytes
        self._commits += commits
        self._pruned += pruned
        self._pending -= done
        if self._failure is not None:
            self._room.unpark_all()
        elif done:
            self._room.unpark(count=done)

    def _fail(self, message: str, cause: BaseException, batch: list[Any]) -> None:
        # Runs in trio: the writer hit an error it cannot recover from.
        if self._failure is None:
            self._failure = (message, cause)
        self._deliver_failed(batch)

    def _deliver_failed(self, batch: list[Any]) -> None:  # pragma: no cover - journals define it
        raise NotImplementedError

    # --------------------------------------------------------------------- facts

    def _retention(
        self,
        older_than: float | timedelta | None,
        keep_last: int | None,
        now: float | None,
    ) -> tuple[float, int]:
        """``prune_finished``'s arguments as (cutoff time, finished sagas to keep)."""
        age = self._retain_for if older_than is None else seconds(older_than, "older_than")
        keep = self._retain_last if keep_last is None else check_count(keep_last, "keep_last")
        if now is not None and (isinstance(now, bool) or not math.isfinite(now)):
            raise ValueError(f"now must be a finite time, got {now!r}")
        return (time.time() if now is None else now) - age, keep

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
