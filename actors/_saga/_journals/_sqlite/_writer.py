"""The SQLite journal's writer thread: it owns the connection, takes queued requests in
batches and commits each batch in one transaction (group commit), answering trio through the
token.  A request SQLite refuses alone fails alone (the batch is retried without it); any other
error fails the journal."""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task

from actors._policies._logs import library_logger
from actors._saga._journals._index import Tracked
from actors._saga._journals._records import JournalError
from actors._saga._journals._sqlite._file import _close_quietly, _open, _translate
from actors._saga._journals._sqlite._schema import (
    _ATTENTION,
    _INSERT_SAGAS,
    Row,
    _discard,
    _insert_many,
    _load_tracked,
    _prune,
    _rollback_quietly,
    finish_sagas,
    insert_events,
)
from actors._saga._journals._state import SagaState

if TYPE_CHECKING:  # the journal owns its writer
    from actors._saga._journals._sqlite._journal import SqliteJournal

_log = library_logger("actors.journal")

_MAX_BATCH: Final = 1024

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

# Request operations.
_CREATE, _APPEND, _PRUNE, _DISCARD, _READ, _CLOSE = range(6)
_WRITES: Final = frozenset({_CREATE, _APPEND, _PRUNE, _DISCARD})


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


class _Writer:
    """The writer thread's side: owns the connection; talks to trio only via the token."""

    def __init__(self, journal: SqliteJournal, token: trio.lowlevel.TrioToken) -> None:
        self.journal = journal
        self.token = token
        self.path = journal.path
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
