"""The PostgreSQL journal's threads: the writer (one connection, group commit), the watchdog and
the listener.

Theory of operation
-------------------
The writer thread owns the journal's one write connection (psycopg's sync API: its async API
is asyncio-only).  It takes everything queued (whole scheduler passes of requests staged by
trio, up to 1,024 requests), writes it in one transaction per segment (creates and appends
together; a prune, a discard or a claim runs in its own), commits, then hands the whole batch
back to trio with one ``TrioToken.run_sync_soon``.  Each transaction is a few statements
whatever its size: every create of the batch in one statement, every append in one more (see
:mod:`actors._saga._journals._postgres._schema`), so the rows per commit grow with the number of
concurrent sagas while the round trips per commit stay fixed.

Outages.  A transient error (the connection dropped, the server restarting or shutting down,
a serialization failure, a full disk) closes the connection, tells trio the journal is
unavailable, and retries the *same* batch on a new connection with growing pauses (50 ms to
1 s) until it succeeds: a write is never dropped.  Because the last commit may have landed
before the connection dropped, the retried batch is a *replay*: a compare-and-set that misses
is checked against the row, and a row that already holds exactly this write (same owner,
epoch and resulting ``next_seq``; for a create, same owner and creation) counts as written,
so nothing is applied twice.  Segments that committed before the failure are not run again.
A value the database refuses (a data or integrity error, which no check on the trio side
could foresee) fails only the request carrying it, as in the SQLite journal: the segment is
written again with one savepoint per request, and that request (with any write of the same
saga queued behind it, now out of step) gets a :class:`~actors.JournalError` while the rest
commits.  Any other error (a bug, a damaged schema) fails the journal for good: every waiting
and later call gets a :class:`~actors.JournalError`.

Leases.  The writer registers the instance at every (re)connection (``connected_at``) and
renews its lease every third of the lease duration: between batches when busy, on a timed
wait when idle.  Leases are judged by the server's clock.

The watchdog thread wakes every tick while the writer is busy on one batch and asks trio to
expire callers that have waited longer than ``write_timeout`` (they get
:class:`~actors._errors.JournalUnavailable`; their writes stay queued): a writer blocked in a
network call, on a server that hangs, cannot do it itself.

The listener thread (started on the first ``wait_finished``) holds a second connection that
LISTENs on :data:`~actors._saga._journals._postgres._schema.CHANNEL` and hands each notification for
the journal's schema to trio; after every (re)connection it tells trio to check every waited saga
again, since notifications sent while it was away are lost.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec
import psycopg
import psycopg.errors
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actors._errors import ErrorCategory, JournalUnavailable, OwnershipLost
from actors._policies._logs import library_logger
from actors._policies._redact import redact
from actors._saga._journals._postgres._schema import (
    APPEND,
    CHANNEL,
    CLAIM,
    CLOSE,
    CREATE,
    DISCARD,
    LOAD,
    PRUNE,
    READ,
    Request,
    Statements,
    prepare,
)
from actors._saga._journals._records import (
    JournalError,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaSequenceError,
)
from actors._saga._journals._state import SagaState, saga_state

if TYPE_CHECKING:
    from actors._saga._journals._postgres._journal import PostgresJournal

__all__ = ["Listener", "Watchdog", "Writer", "conninfo", "display_url"]

logger = library_logger("actors.journal.postgres")

_SEGMENT: Final = frozenset({CREATE, APPEND})

_MAX_BATCH: Final = 1024
#: Errors one request's values can cause (a value the database refuses): that request fails
#: alone (see Writer.write).  Anything else fails the journal, or is retried if transient.
_REQUEST_ERRORS: Final = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)
_BACKOFF_FIRST: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_KINDS: Final = {kind.value: kind for kind in SagaEventKind}

#: libpq settings the journal uses unless the URL sets them: fail a connection attempt in 5 s;
#: notice a silent peer through keepalives and unacknowledged sends within about 10 s.
_CONNECTION_DEFAULTS: Final = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}

Conn = psycopg.Connection[Any]
Row = tuple[Any, ...]


def conninfo(url: str, application: str, idle_in_transaction: float | None = None) -> str:
    """``url`` with the journal's connection defaults added (settings in ``url`` win).

    ``idle_in_transaction`` (seconds): the server ends a session of the journal that stays
    idle inside a transaction this long.  A process frozen mid-transaction (a stopped VM, a
    debugger, SIGSTOP) would otherwise hold its rows' locks for as long as it stays frozen,
    and every survivor claiming its sagas would wait on them.
    """
    params = conninfo_to_dict(url)
    for key, value in _CONNECTION_DEFAULTS.items():
        params.setdefault(key, value)
    params.setdefault("application_name", application)
    if idle_in_transaction is not None:
        option = (
            f"-c idle_in_transaction_session_timeout={max(1, round(idle_in_transaction * 1000))}"
        )
        params["options"] = f"{params['options']} {option}" if params.get("options") else option
    return make_conninfo("", **params)


def display_url(url: str) -> str:
    """``url`` for messages and logs: ``postgresql://user@host:port/dbname``, no password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<an unparsable PostgreSQL URL>"
    user = params.get("user")
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or user or ""
    return f"postgresql://{f'{user}@' if user else ''}{host}:{port}/{dbname}"


class _Redo(Exception):
    """Roll the transaction back and run the segment again without the failed requests."""


def post(token: trio.lowlevel.TrioToken, fn: Callable[..., None], *args: Any) -> bool:
    """Run ``fn(*args)`` in trio soon (from a thread); ``False`` if the trio run is over."""
    try:
        token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        return False
    return True


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` (from psycopg) may go away by itself: connection trouble, the server
    restarting, shutting down or out of resources, a serialization failure or deadlock, a
    read-only server (a failover in progress), a session ended for idling in a
    transaction."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    # 25P03: the server ended a session left idle inside a transaction (this process was
    # frozen mid-write): a new connection replays the batch.
    return sqlstate[:2] in ("08", "40", "53", "57", "58") or sqlstate in (
        "25006",
        "25P03",
        "55P03",
    )


def translate(exc: BaseException, where: str) -> BaseException:
    """A library error as a journal error naming ``where`` (journal errors pass through)."""
    if isinstance(exc, (JournalError, JournalUnavailable)) or not isinstance(exc, Exception):
        return exc
    detail = redact(f"{type(exc).__name__}: {exc}")
    error: BaseException
    if transient(exc):
        error = JournalUnavailable(
            f"The journal database {where} is unreachable: {detail}", journal=where
        )
    else:
        category = (
            ErrorCategory.CONFIGURATION
            if isinstance(exc, (psycopg.ProgrammingError, ValueError))
            else ErrorCategory.INVALID_STATE
        )
        error = JournalError(
            f"The journal database {where} could not be used: {detail}", category=category
        )
    error.__cause__ = exc
    return error


# --------------------------------------------------------------------------- the writer


class Writer:
    """The writer thread's side: owns the connection; talks to trio only via the token."""

    def __init__(self, journal: PostgresJournal, token: trio.lowlevel.TrioToken, info: str) -> None:
        self.journal = journal
        self.token = token
        self.info = info
        self.where = journal.where
        self.me = journal.instance_id
        self.lease = journal.lease_duration
        self.stmts = Statements(journal.schema)
        self.queue: queue.SimpleQueue[list[Request]] = journal._queue
        self.prune_every = max(1, journal._retain_last // 10)
        self.finished_since_prune = 0
        self.conn: Conn | None = None
        self.available = False
        #: monotonic time the current batch started, ``None`` when idle (read by the watchdog).
        self.busy_since: float | None = None
        #: set by trio when closing: give up retrying after this monotonic time.
        self.close_by: float | None = None
        self.abandon = False
        self.lease_due = 0.0
        self.unreadable: set[int] = set()
        self.reconnects = 0
        #: Test hooks, called on the writer thread: just before and just after each COMMIT
        #: of a segment (an error raised after it stands for an acknowledgement lost with
        #: the connection), and between a claim's choice of candidates and its
        #: compare-and-set.
        self.before_commit: Callable[[Conn], None] | None = None
        self.after_commit: Callable[[Conn], None] | None = None
        self.before_claim: Callable[[], None] | None = None

    def post(self, fn: Callable[..., None], *args: Any) -> bool:
        return post(self.token, fn, *args)

    # ------------------------------------------------------------------- connection

    def connect(self, first: bool) -> Conn:
        conn: Conn = psycopg.connect(self.info, autocommit=True)
        try:
            if first:
                prepare(conn, self.stmts.schema, self.where)
            conn.execute(
                self.stmts.register, (self.me, socket.gethostname(), os.getpid(), self.lease)
            )
        except BaseException:
            conn.close()
            raise
        self.lease_due = time.monotonic() + self.lease / 3
        return conn

    def ensure_connected(self) -> Conn:
        if self.conn is None or self.conn.closed:
            self.conn = self.connect(first=False)
            self.reconnects += 1
        return self.conn

    def back(self) -> bool:
        """Whether the server just became reachable again (after an outage, or after trio
        judged it unavailable); trio is told with the delivery of the batch in hand, so that
        callers woken by ``wait_available`` find the writes that were in doubt settled, and
        callers woken by the delivery find the journal available."""
        if self.available:
            return False
        self.available = True
        logger.warning("The saga journal %s is reachable again.", self.where)
        return True

    def disconnected(self, exc: BaseException) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass  # the connection is already broken; the original error is what counts
        if self.available:
            self.available = False
            message = redact(f"{type(exc).__name__}: {exc}")
            logger.error("The saga journal %s is unreachable: %s", self.where, message)
            self.post(self.journal._set_available, False, message)

    def renew(self, conn: Conn) -> None:
        if conn.execute(self.stmts.renew, (self.lease, self.me)).rowcount == 0:
            conn.execute(  # the row was removed (by an operator): register again
                self.stmts.register, (self.me, socket.gethostname(), os.getpid(), self.lease)
            )
        self.lease_due = time.monotonic() + self.lease / 3

    # ------------------------------------------------------------------------- serving

    def run(self) -> None:
        journal = self.journal
        try:
            self.conn = self.connect(first=True)
        except BaseException as exc:
            self.post(journal._opened, translate(exc, self.where))
            return
        self.available = True
        if not self.post(journal._opened, None):
            self.conn.close()
            return
        try:
            self.serve()
        finally:
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:
                    pass  # closing a broken connection

    def take(self) -> list[Request] | None:
        """Everything queued, in order, up to _MAX_BATCH requests; ``None`` when the lease is
        due for renewal first."""
        wait = self.lease_due - time.monotonic()
        try:
            batch = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None
        get = self.queue.get_nowait
        while len(batch) < _MAX_BATCH and batch[-1].op != CLOSE:
            try:
                batch += get()
            except queue.Empty:
                break
        return batch

    def serve(self) -> None:
        journal = self.journal
        failed = False
        while True:
            batch = self.take()
            if batch is None:
                self.idle_renew()
                continue
            closing = batch[-1].op == CLOSE
            if failed or self.abandon:
                if self.abandon and not failed:
                    self.give_up(batch)
                self.post(journal._deliver, batch, 0, 0, False)
                if closing:
                    return
                continue
            try:
                commits, pruned = self.run_batch(batch)
            except BaseException as exc:
                failed = True
                message = redact(f"The journal {self.where} failed: {type(exc).__name__}: {exc}")
                logger.error("%s", message)
                if not self.post(journal._fail, message, exc, batch) or closing:
                    return
                continue
            if closing and not self.abandon and self.conn is not None:
                try:
                    self.conn.execute(self.stmts.release, (self.me,))
                except psycopg.Error as exc:
                    batch[-1].error = translate(exc, self.where)
            if not self.post(journal._deliver, batch, commits, pruned, self.back()) or closing:
                return

    def idle_renew(self) -> None:
        try:
            self.renew(self.ensure_connected())
            if self.back():
                self.post(self.journal._set_available, True, "")
        except Exception as exc:
            if not transient(exc):
                raise
            self.disconnected(exc)
            self.lease_due = time.monotonic() + _BACKOFF_MAX

    def give_up(self, batch: list[Request]) -> None:
        """Fail every request of ``batch`` that is not done: the journal is closing and the
        server did not come back in time."""
        for r in batch:
            if not r.committed and r.error is None and r.op != CLOSE:
                r.error = JournalUnavailable(
                    f"The journal {self.where} closed while its server was unreachable; this "
                    "write may not have been stored.",
                    journal=self.where,
                    in_doubt=True,
                )

    def run_batch(self, batch: list[Request]) -> tuple[int, int]:
        """Run ``batch``, retrying it on new connections through transient errors."""
        replay = False
        backoff = _BACKOFF_FIRST
        self.busy_since = time.monotonic()
        try:
            while True:
                try:
                    conn = self.ensure_connected()
                    if time.monotonic() >= self.lease_due:
                        self.renew(conn)
                    return self.process(conn, batch, replay)
                except Exception as exc:
                    if not transient(exc):
                        raise
                    self.disconnected(exc)
                    replay = True
                    if self.close_by is not None and time.monotonic() >= self.close_by:
                        self.abandon = True
                        self.give_up(batch)
                        return 0, 0
                    time.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            self.busy_since = None

    def process(self, conn: Conn, batch: list[Request], replay: bool) -> tuple[int, int]:
        commits = pruned = 0
        segment: list[Request] = []
        for r in batch:
            if r.committed or r.error is not None:
                continue
            op = r.op
            if op in _SEGMENT:
                segment.append(r)
            elif op in (PRUNE, DISCARD, CLAIM, LOAD):
                if segment:
                    commits += self.write(conn, segment, replay)
                    segment = []
                if op == PRUNE:
                    cutoff, keep = r.value
                    with conn.transaction():
                        r.value = self.prune(conn, cutoff, keep)
                    pruned += r.value
                elif op == DISCARD:
                    with conn.transaction():
                        r.value = self.discard(conn, r.saga[0])
                    if r.value < 0:
                        r.error = JournalError(
                            f"Saga {r.saga[0]!r} is not finished; only finished sagas can be "
                            "discarded."
                        )
                    else:
                        pruned += r.value
                elif op == CLAIM:
                    r.value = self.claim(conn, *r.value)
                else:
                    r.value = self.load_owned(conn)
                r.committed = True
        if segment:
            commits += self.write(conn, segment, replay)
        journal = self.journal
        if journal._auto_prune and self.finished_since_prune >= self.prune_every:
            self.finished_since_prune = 0
            with conn.transaction():
                pruned += self.prune(conn, time.time() - journal._retain_for, journal._retain_last)
        for r in batch:
            if r.op == READ and not r.committed and r.task is not None:
                assert r.fn is not None
                try:
                    with conn.transaction():
                        r.value = r.fn(conn)
                except (msgspec.DecodeError, KeyError, ValueError, TypeError) as exc:
                    r.error = JournalError(
                        f"The journal {self.where} holds an unreadable record: "
                        f"{type(exc).__name__}: {exc}"
                    )
                r.committed = True
        return commits, pruned

    # -------------------------------------------------------------------------- writes

    def write(self, conn: Conn, segment: list[Request], replay: bool) -> int:
        """Creates and appends of ``segment`` in one transaction; requests that cannot be
        written get their error and the rest is committed.  If the database refuses a value
        (a data or integrity error: nothing the trio side could check), the segment is
        written again with each request in a savepoint of its own, so only the offending
        request fails (``refused``), and the writes behind it of the same saga fail too (out
        of step with the store); the journal goes on."""
        isolate = False
        while True:
            live = [r for r in segment if r.error is None]
            if not live:
                break
            try:
                with conn.transaction():
                    if isolate:
                        self.write_isolated(conn, live, replay)
                    else:
                        creates = [r for r in live if r.op == CREATE]
                        appends = [r for r in live if r.op == APPEND]
                        if creates:
                            self.creates(conn, creates, replay)
                        if appends:
                            self.appends(conn, appends, replay)
                    if self.before_commit is not None:
                        self.before_commit(conn)
            except _Redo:
                continue
            except _REQUEST_ERRORS:
                if isolate:
                    raise  # not one request's values: fail the journal
                isolate = True
                continue
            if self.after_commit is not None:
                self.after_commit(conn)
            break
        for r in segment:
            r.committed = True
            if r.error is None and r.op == APPEND:
                for row in r.sagas:
                    if row[10] is not None and row[10] != "compensation_failed":
                        self.finished_since_prune += 1
        return 1

    def write_isolated(self, conn: Conn, live: list[Request], replay: bool) -> None:
        """Each request of ``live`` in a savepoint of its own, in order: one the database
        refuses is rolled back alone and fails (``refused``)."""
        for r in live:
            try:
                with conn.transaction():  # a savepoint inside the segment's transaction
                    if r.op == CREATE:
                        self.creates(conn, [r], replay)
                    else:
                        self.appends(conn, [r], replay)
                    if r.error is not None:
                        raise _Redo  # a write of several sagas lost one: none of it
            except _Redo:
                continue
            except _REQUEST_ERRORS as exc:
                r.refused = True
                r.error = JournalError(
                    f"The journal {self.where} refused this write: the database could not "
                    f"store it ({redact(f'{type(exc).__name__}: {exc}')}); nothing of it was "
                    "written, and the journal goes on.",
                    suggested_action=(
                        "This is a bug in what was written (report it); the saga's journaled "
                        "state is what it was before this write."
                    ),
                )
                r.error.__cause__ = exc

    def creates(self, conn: Conn, creates: list[Request], replay: bool) -> None:
        sagas = list(zip(*(r.saga for r in creates), strict=True))
        events = list(zip(*(row for r in creates for row in r.rows), strict=True))
        params = [self.me, *map(list, sagas), *map(list, events)]
        # Not prepared: after five runs the server would switch a prepared statement to its
        # generic plan, which knows nothing of the arrays' sizes and runs the batch several
        # times slower than the plan made for each one (unnamed statements).
        made = dict(conn.execute(self.stmts.create, params, prepare=False).fetchall())
        missing = [r for r in creates if r.saga[0] not in made]
        for r in creates:
            number = made.get(r.saga[0])
            if number is not None:
                r.value = number
        if not missing:
            return
        found = {
            row[1]: row
            for row in conn.execute(self.stmts.rows_by_id, ([r.saga[0] for r in missing],))
        }
        for r in missing:
            saga_id = r.saga[0]
            row = found.get(saga_id)
            # (saga_no, saga_id, owner, epoch, next_seq, outcome, created_at)
            if (
                replay
                and row is not None
                and row[2] == self.me
                and row[3] == 0
                and row[4] == r.saga[5]
                and row[5] is None
                and row[6] == r.saga[2]
            ):
                r.value = row[0]  # this create landed before the connection dropped
            else:
                r.error = JournalError(f"Saga {saga_id!r} already exists in the journal.")

    def appends(self, conn: Conn, appends: list[Request], replay: bool) -> None:
        # One compare-and-set row per saga, in the order of their first write; the rows are
        # the requests' own tuples (no copy) unless a saga is written twice in the batch.
        merged: dict[int, Row] = {}
        names: dict[int, str] = {}
        rows: list[Row] = []
        for r in appends:
            for saga_id, saga in zip(r.ids, r.sagas, strict=True):
                number = saga[0]
                current = merged.get(number)
                if current is None:
                    merged[number] = saga
                    names[number] = saga_id
                else:  # a later write of the same saga: the expected seq stays the first's
                    merged[number] = (*current[:3], *saga[3:])
            rows += r.rows
        columns = list(zip(*merged.values(), strict=True))
        events: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 6
        params = [*map(list, columns), self.me, *map(list, events)]
        # Not prepared, as the creates (see there).
        matched = {row[0] for row in conn.execute(self.stmts.append, params, prepare=False)}
        if len(matched) == len(merged):
            return
        missed = [number for number in merged if number not in matched]
        found = {row[0]: row for row in conn.execute(self.stmts.rows_of, (missed,))}
        failures: dict[int, Callable[[], BaseException]] = {}
        lost: set[int] = set()
        for number in missed:
            cas = merged[number]  # (saga_no, epoch, expect, new_seq, ...)
            row = found.get(number)
            saga_id = names[number]
            if row is not None and row[2] == self.me and row[3] == cas[1]:
                if replay and row[4] == cas[3]:
                    continue  # written before the connection dropped
                failures[number] = _out_of_step(saga_id, row[4], cas[2], self.where)
            else:
                failures[number] = _lost(saga_id, row)
                lost.add(number)
        if not failures:
            return
        redo = False
        for r in appends:
            hit = [saga[0] for saga in r.sagas if saga[0] in failures]
            if hit:
                r.error = failures[hit[0]]()
                r.lost = [names[number] for number in hit if number in lost]
                redo = redo or len(hit) < len(r.sagas)
        if redo:  # a write of several sagas lost one of them: write none of it
            raise _Redo

    # ------------------------------------------------------------------- other writes

    def prune(self, conn: Conn, cutoff: float, keep: int) -> int:
        return len(conn.execute(self.stmts.prune, (cutoff, keep)).fetchall())

    def discard(self, conn: Conn, saga_id: str) -> int:
        """1 if the finished saga was removed, 0 if unknown, -1 if it is not finished."""
        found = conn.execute(self.stmts.discard, (saga_id,)).fetchone()
        if found is not None and found[0]:
            return 1
        row = conn.execute(self.stmts.discardable, (saga_id,)).fetchone()
        return -1 if row is not None and not row[0] else 0

    def claim(
        self,
        conn: Conn,
        limit: int,
        reload: list[int],
        tracked: list[str] | None,
        definitions: list[str] | None,
    ) -> list[tuple[SagaHeader, list[SagaEvent], SagaState, int, int]]:
        """Claim unfinished sagas of expired instances (compare-and-set on owner and epoch),
        adopt this instance's own sagas listed in ``reload`` (and, when ``tracked`` is given,
        every owned saga not in it), and return each with its events, folded."""
        stmts = self.stmts
        while True:
            try:
                with conn.transaction():
                    candidates = conn.execute(
                        stmts.candidates,
                        {
                            "me": self.me,
                            "grace": self.lease,
                            "skip": sorted(self.unreadable),
                            "limit": limit,
                            "definitions": definitions,
                        },
                    ).fetchall()
                    if self.before_claim is not None:
                        self.before_claim()
                    owned: dict[int, int] = {}
                    if candidates:
                        numbers, owners, epochs = (list(c) for c in zip(*candidates, strict=True))
                        owned.update(conn.execute(stmts.claim, (self.me, numbers, owners, epochs)))
                    if tracked is not None:
                        owned.update(conn.execute(stmts.owned_untracked, (self.me, tracked)))
                    if reload:
                        owned.update(
                            (row[0], row[3])
                            for row in conn.execute(stmts.rows_of, (reload,))
                            if row[2] == self.me and row[5] is None
                        )
                    for number in self.unreadable:
                        owned.pop(number, None)
                    return self.load(conn, owned)
            except _Redo:
                continue  # an unreadable saga was set aside: claim again without it

    def load_owned(
        self, conn: Conn
    ) -> list[tuple[SagaHeader, list[SagaEvent], SagaState, int, int]]:
        """Every unfinished saga this instance owns (but those set aside as unreadable), with
        its events, folded."""
        while True:
            try:
                with conn.transaction():
                    owned = dict(conn.execute(self.stmts.owned_untracked, (self.me, [])))
                    for number in self.unreadable:
                        owned.pop(number, None)
                    return self.load(conn, owned)
            except _Redo:
                continue  # an unreadable saga was set aside: read again without it

    def load(
        self, conn: Conn, owned: dict[int, int]
    ) -> list[tuple[SagaHeader, list[SagaEvent], SagaState, int, int]]:
        if not owned:
            return []
        numbers = list(owned)
        events: dict[int, list[Row]] = {}
        for row in conn.execute(self.stmts.events_of, (numbers,)):
            events.setdefault(row[0], []).append(row)
        out = []
        for row in conn.execute(self.stmts.headers, (numbers,)):
            number = row[0]
            try:
                header = _header(row)
                folded = [_event(header.saga_id, e) for e in events.get(number, [])]
                state = saga_state(header, folded)
            except (SagaSequenceError, KeyError, ValueError, TypeError, msgspec.DecodeError):
                logger.exception(
                    "The journal %s holds an unreadable saga %r (saga_no %d): it is left "
                    "unclaimed for an operator.",
                    self.where,
                    row[1],
                    number,
                )
                self.unreadable.add(number)
                raise _Redo from None
            out.append((header, folded, state, number, owned[number]))
        return out


def _lost(saga_id: str, row: Row | None) -> Callable[[], BaseException]:
    owner = None if row is None else row[2]
    epoch = None if row is None else row[3]
    return lambda: OwnershipLost(saga_id=saga_id, owner=owner, epoch=epoch)


def _out_of_step(saga_id: str, stored: int, expected: int, where: str) -> Callable[[], Exception]:
    return lambda: JournalError(
        f"Saga {saga_id!r}: the journal {where} holds {stored} events but this write follows "
        f"event {expected - 1} (an earlier write of the saga failed); nothing was written.",
        suggested_action="Reload the saga from the journal (it is handed out again by "
        "claim_orphans) and continue from its stored state.",
    )


def _header(row: Row) -> SagaHeader:
    # (saga_no, saga_id, definition, created_at, payload, metadata)
    return SagaHeader(row[1], row[2], row[3], bytes(row[4]), msgspec.json.decode(row[5]))


def _event(saga_id: str, row: Row) -> SagaEvent:
    # (saga_no, seq, kind, step, at, data)
    return SagaEvent(saga_id, row[1], _KINDS[row[2]], row[3], row[4], bytes(row[5]))


def read_get(stmts: Statements, saga_id: str) -> Callable[[Conn], Any]:
    def read(conn: Conn) -> tuple[SagaHeader, list[SagaEvent]] | None:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute(stmts.get, (saga_id,)).fetchone()
        if row is None:
            return None
        events = conn.execute(stmts.events_of, ([row[0]],)).fetchall()
        return _header(row), [_event(saga_id, e) for e in events]

    return read


# ------------------------------------------------------------------------ the watchdog


class Watchdog:
    """Wakes every ``tick`` seconds; while the writer is busy on one batch longer than a tick,
    asks trio to expire the callers that waited past ``write_timeout``."""

    def __init__(self, journal: PostgresJournal, writer: Writer, token: trio.lowlevel.TrioToken):
        self.journal = journal
        self.writer = writer
        self.token = token
        self.tick = min(0.1, journal.write_timeout / 4)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.tick):
            since = self.writer.busy_since
            if since is None or time.monotonic() - since < self.tick:
                continue
            if not post(self.token, self.journal._expire, time.monotonic() - since):
                return


# ------------------------------------------------------------------------ the listener


class Listener:
    """LISTENs for finished sagas on a connection of its own and tells trio (see the module
    docstring).  Stops within ``_POLL`` seconds of ``stop`` being set."""

    _POLL: Final = 0.25

    def __init__(self, journal: PostgresJournal, token: trio.lowlevel.TrioToken, info: str):
        self.journal = journal
        self.token = token
        self.info = info
        self.prefix = f"{journal.schema}:"
        self.stop = threading.Event()

    def run(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.info, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not post(self.token, self.journal._set_listening, True):
                        return
                    backoff = _BACKOFF_FIRST
                    while not self.stop.is_set():
                        for note in conn.notifies(timeout=self._POLL):
                            if note.payload.startswith(self.prefix) and not post(
                                self.token, self.journal._notified, note.payload[len(self.prefix) :]
                            ):
                                return
            except psycopg.Error:
                if not post(self.token, self.journal._set_listening, False):
                    return
                self.stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
