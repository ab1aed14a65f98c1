"""Moving a single-host SQLite journal into a PostgreSQL one (``aura journal migrate``).

Theory of operation
-------------------
A team that grows from one host to a fleet keeps its sagas: :func:`migrate_sqlite_to_postgres`
copies every saga of a :class:`~actors.SqliteJournal` file (unfinished, finished, and those
waiting for an operator) with all its events into the schema of a
:class:`~actors.PostgresJournal`, creating the schema if it is missing, in one transaction:
all of it lands, or none.

* **The source is read, never changed, and never while in use.**  The file is opened without
  being created (a missing path is an error) and held under SQLite's write lock for the whole
  copy: a coordinator that still has it open (its journal keeps the lock while it runs) makes
  the migration stop with an error, and a coordinator starting meanwhile cannot open it.  A
  file of another application, of a newer schema, or whose events are not a valid saga
  history, is refused before anything is written.
* **Idempotent.**  A saga whose id is already in the PostgreSQL journal is left alone when it
  is the same saga (the same header, and the stored events begin with the file's events: a
  coordinator may have advanced it since it was copied); a different saga under the same id
  is an error that names it, and nothing is copied.  Running it again copies nothing twice.
* **Ownership.**  Copied sagas belong to an instance row of the migration itself, closed when
  the copy commits (its host and pid say where it ran).  Coordinators on the PostgreSQL journal
  take its unfinished sagas over as they would a dead instance's (``claim_orphans``): at once
  for one connected for a whole lease already, else within one lease of starting, and resume
  them (a step in flight is re-sent with its idempotency key).
* **Secrets.**  Errors and the report name the server as ``postgresql://user@host:port/db``:
  the URL's password never appears.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import quote, urlsplit

import attrs
import msgspec
import psycopg

from actors._errors import ErrorCategory
from actors._policies._redact import redact
from actors._saga._journals._postgres._schema import (
    APPLICATION,
    check_schema_name,
    prepare,
    state_columns,
)
from actors._saga._journals._postgres._writer import conninfo, display_url
from actors._saga._journals._records import (
    JournalError,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaSequenceError,
)
from actors._saga._journals._sqlite._schema import APPLICATION_ID
from actors._saga._journals._sqlite._schema import SCHEMA_VERSION as SQLITE_VERSION
from actors._saga._journals._state import SagaState, saga_state

__all__ = ["MigrationReport", "migrate_sqlite_to_postgres"]

_KINDS: Final = {kind.value: kind for kind in SagaEventKind}
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
#: Seconds to wait for the SQLite file's lock before calling it in use.
_LOCK_WAIT: Final = 0.5
_ATTENTION: Final = SagaPhase.COMPENSATION_FAILED
#: Conflicting saga ids named in the error (the count says how many there are).
_NAMED: Final = 5


@attrs.frozen
class MigrationReport:
    """What a migration did.

    Attributes:
        source: the SQLite file.
        target: the PostgreSQL journal (``postgresql://user@host:port/db (schema S)``, no
            password).
        unfinished, finished, attention: sagas copied, by state (``attention``: ended
            ``compensation_failed``, waiting for an operator).
        events: events copied.
        already_there: sagas of the file already in the target (copied before): left alone.
        owner: the migration's instance id, owner of the sagas copied (``""`` if none were).
    """

    source: str
    target: str
    unfinished: int
    finished: int
    attention: int
    events: int
    already_there: int
    owner: str

    @property
    def copied(self) -> int:
        """Sagas copied."""
        return self.unfinished + self.finished + self.attention

    def describe(self) -> str:
        """The report as a few lines for a person."""
        if not self.copied:
            return (
                f"nothing to copy: the {self.already_there} saga(s) of {self.source} are in "
                f"{self.target} already."
            )
        lines = [
            f"copied {self.copied} saga(s) with {self.events} event(s) from {self.source} into "
            f"{self.target}: {self.unfinished} unfinished, {self.finished} finished, "
            f"{self.attention} waiting for an operator (compensation_failed)."
        ]
        if self.already_there:
            lines.append(f"{self.already_there} saga(s) were there already: left as they are.")
        if self.unfinished:
            lines.append(
                f"The unfinished sagas belong to the migration's instance {self.owner} (closed): "
                "coordinators on this journal take them over and resume them within one lease "
                "of starting."
            )
        return "\n".join(lines)


@attrs.frozen
class _Saga:
    header: SagaHeader
    events: list[SagaEvent]
    state: SagaState
    finished_at: float | None


def migrate_sqlite_to_postgres(path: str, url: str, *, schema: str = "aura") -> MigrationReport:
    """Copy the SQLite journal at ``path`` into the PostgreSQL journal at ``url`` (schema
    ``schema``, created if missing): see the module docstring.  Blocking (run it off a trio
    thread).

    Raises:
        JournalError: the file is missing, in use (locked), not a journal of ours, of a newer
            schema, or holds an invalid saga; the schema is foreign or newer; a saga id is in
            both with different content (nothing copied).  Category CONFIGURATION for what the
            user must point elsewhere, DEPENDENCY when the server cannot be reached.
    """
    try:
        check_schema_name(schema)
    except ValueError as exc:
        raise _config(f"The schema name {exc}.", path) from None
    shown = display_url(url)
    where = f"{shown} (schema {schema})"
    with _locked_source(path) as source:
        try:
            sagas = _read_sqlite(source, path)
        except sqlite3.Error as exc:  # a damaged file, or tables not of a journal
            raise JournalError(
                f"The journal file {path} cannot be read: {type(exc).__name__}: {exc}.",
                path=path,
                suggested_action="Restore the file from a backup; nothing was copied.",
            ) from None
        conn = _connect(url, shown)
        try:
            return _copy(conn, schema, where, path, sagas)
        except psycopg.Error as exc:
            raise JournalError(
                f"Copying into {where} failed: {_clean(exc, url)}",
                category=ErrorCategory.DEPENDENCY,
                suggested_action="Nothing was copied; fix the cause and run it again.",
            ) from None
        finally:
            conn.close()


# ------------------------------------------------------------------------------ the source


@contextlib.contextmanager
def _locked_source(path: str) -> Iterator[sqlite3.Connection]:
    """The SQLite file opened (never created) under its write lock, for the copy."""
    try:
        with open(path, "rb") as file:
            head = file.read(100)
    except FileNotFoundError:
        raise _config(f"The journal file {path} does not exist.", path) from None
    except IsADirectoryError:
        raise _config(f"The journal path {path} is a directory, not a file.", path) from None
    except OSError as exc:
        raise _config(f"The journal file {path} cannot be read: {exc.strerror}.", path) from None
    if not head.startswith(_SQLITE_MAGIC):
        raise _config(f"The file {path} is not a SQLite database (nor a journal).", path)
    try:
        conn = sqlite3.connect(
            f"file:{quote(os.path.abspath(path))}?mode=rw",
            uri=True,
            isolation_level=None,
            timeout=_LOCK_WAIT,
        )
    except sqlite3.Error as exc:
        raise _config(f"The journal file {path} cannot be opened: {exc}.", path) from None
    try:
        try:
            # The write lock, held until the copy ends: a coordinator that has the file open
            # keeps it (so this fails), and one starting meanwhile cannot take it.
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise JournalError(
                    f"The journal file {path} is in use (locked): a coordinator still has it open.",
                    path=path,
                    category=ErrorCategory.INVALID_STATE,
                    suggested_action=(
                        "Stop the application that uses it, then run the migration again."
                    ),
                ) from None
            raise _config(f"The journal file {path} cannot be opened: {exc}.", path) from None
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")  # nothing was written: release the lock
    finally:
        conn.close()


def _config(message: str, path: str) -> JournalError:
    return JournalError(message, path=path, category=ErrorCategory.CONFIGURATION)


def _read_sqlite(conn: sqlite3.Connection, path: str) -> list[_Saga]:
    """Every saga of the file, oldest first, each validated by folding its events."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise _config(
            f"The file {path} is a SQLite database of another application (application_id "
            f"{app_id:#010x}), not an aura-actors saga journal: nothing to migrate.",
            path,
        )
    if version > SQLITE_VERSION:
        raise _config(
            f"The journal file {path} has schema version {version}, newer than this version of "
            f"aura-actors reads ({SQLITE_VERSION}): upgrade aura-actors first.",
            path,
        )
    if version < 1:
        raise _config(f"The journal file {path} has unknown schema version {version}.", path)
    # Version 1 stored one event per row; version 2 may keep a second one in the same row.
    pair = "next_kind, next_step" if version >= 2 else "NULL, NULL"
    sagas = conn.execute(
        "SELECT saga_no, saga_id, definition, created_at, payload, metadata, outcome, "
        "finished_at FROM sagas ORDER BY created_at, saga_no"
    ).fetchall()
    events: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in conn.execute(
        f"SELECT saga_no, seq, kind, step, at, data, {pair} FROM events ORDER BY saga_no, seq"
    ):
        events[row[0]].append(row[1:])
    out = []
    for number, saga_id, definition, created_at, payload, metadata, outcome, finished_at in sagas:
        try:
            header = SagaHeader(
                saga_id, definition, created_at, bytes(payload), msgspec.json.decode(metadata)
            )
            history: list[SagaEvent] = []
            for seq, kind, step, at, data, next_kind, next_step in events.get(number, ()):
                history.append(SagaEvent(saga_id, seq, _KINDS[kind], step, at, bytes(data)))
                if next_kind is not None:
                    history.append(SagaEvent(saga_id, seq + 1, _KINDS[next_kind], next_step, at))
            state = saga_state(header, history)
        except SagaSequenceError as exc:
            raise JournalError(
                f"The journal file {path} holds an invalid saga {saga_id!r}: {exc}", path=path
            ) from None
        except (KeyError, ValueError, TypeError, msgspec.DecodeError) as exc:
            raise JournalError(
                f"The journal file {path} holds an unreadable saga {saga_id!r}: "
                f"{type(exc).__name__}: {exc}",
                path=path,
            ) from None
        if (outcome is None) == state.finished or (
            outcome is not None and outcome != state.phase.value
        ):
            raise JournalError(
                f"The journal file {path} is inconsistent: saga {saga_id!r} is recorded as "
                f"{outcome or 'unfinished'} but its events end in {state.phase.value}.",
                path=path,
            )
        out.append(_Saga(header, history, state, finished_at))
    return out


# ------------------------------------------------------------------------------ the target


def _clean(exc: BaseException, url: str) -> str:
    """An error's text without the URL's password (libpq may quote the connection string)."""
    text = redact(" ".join(str(exc).split()))  # libpq's messages span lines
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    return text


def _connect(url: str, shown: str) -> psycopg.Connection[Any]:
    try:
        info = conninfo(url, "aura-actors journal migrate")
    except psycopg.Error:
        raise JournalError(
            f"Not a valid PostgreSQL connection URL: {shown}.",
            category=ErrorCategory.CONFIGURATION,
            suggested_action="Give postgresql://user@host:port/dbname.",
        ) from None
    try:
        return psycopg.connect(info, autocommit=True)
    except psycopg.Error as exc:
        raise JournalError(
            f"Cannot reach the PostgreSQL server at {shown}: {_clean(exc, url)}",
            category=ErrorCategory.DEPENDENCY,
            suggested_action="Check the server is up and the URL, user and password are right.",
        ) from None


def _copy(
    conn: psycopg.Connection[Any], schema: str, where: str, path: str, sagas: list[_Saga]
) -> MigrationReport:
    prepare(conn, schema, where)  # create, check or upgrade the schema (refuses a foreign one)
    s = f'"{schema}"'
    owner = f"migrated-{uuid.uuid4().hex}"
    with conn.transaction():
        # One migration into a schema at a time (two would both see an id missing).
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"{APPLICATION}:{schema}:migrate",),
        )
        present = _present(conn, s, [saga.header.saga_id for saga in sagas])
        conflicts = [
            saga.header.saga_id
            for saga in sagas
            if saga.header.saga_id in present and not _same(saga, present[saga.header.saga_id])
        ]
        if conflicts:
            named = ", ".join(repr(saga_id) for saga_id in conflicts[:_NAMED])
            raise JournalError(
                f"{len(conflicts)} saga id(s) of {path} are in {where} with different content "
                f"(another saga under the same id): {named}. Nothing was copied.",
                path=path,
                category=ErrorCategory.CONFIGURATION,
                suggested_action=(
                    "Migrate into a schema of its own (--schema), or discard those sagas from "
                    "the PostgreSQL journal first if they are finished and not needed."
                ),
            )
        new = [saga for saga in sagas if saga.header.saga_id not in present]
        counts = {"unfinished": 0, "finished": 0, "attention": 0}
        for saga in new:
            phase = saga.state.phase
            if phase is _ATTENTION:
                counts["attention"] += 1
            else:
                counts["finished" if phase.finished else "unfinished"] += 1
        if new:
            conn.execute(
                f"""INSERT INTO {s}.instances (instance_id, host, pid, started_at, connected_at,
                    lease_until, closed_at)
                VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp(), clock_timestamp(),
                    clock_timestamp())""",
                (owner, socket.gethostname()[:200], os.getpid()),
            )
            numbers = _insert_sagas(conn, s, owner, new)
            with conn.cursor().copy(
                f"COPY {s}.events (saga_no, seq, kind, step, at, data) FROM STDIN"
            ) as copy:
                for saga in new:
                    number = numbers[saga.header.saga_id]
                    for e in saga.events:
                        copy.write_row((number, e.seq, e.kind.value, e.step, e.at, e.data))
    return MigrationReport(
        source=path,
        target=where,
        events=sum(len(saga.events) for saga in new),
        already_there=len(sagas) - len(new),
        owner=owner if new else "",
        **counts,
    )


def _present(
    conn: psycopg.Connection[Any], s: str, ids: list[str]
) -> dict[str, tuple[SagaHeader, list[tuple[Any, ...]]]]:
    """The sagas of ``ids`` already in the target: header and event rows, by id."""
    rows = conn.execute(
        f"SELECT saga_no, saga_id, definition, created_at, payload, metadata FROM {s}.sagas "
        "WHERE saga_id = ANY(%s)",
        (ids,),
    ).fetchall()
    if not rows:
        return {}
    by_number = {row[0]: row[1] for row in rows}
    events: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in conn.execute(
        f"SELECT saga_no, seq, kind, step, at, data FROM {s}.events WHERE saga_no = ANY(%s) "
        "ORDER BY saga_no, seq",
        (list(by_number),),
    ):
        events[by_number[row[0]]].append((row[1], row[2], row[3], row[4], bytes(row[5])))
    return {
        row[1]: (
            SagaHeader(row[1], row[2], row[3], bytes(row[4]), msgspec.json.decode(row[5])),
            events.get(row[1], []),
        )
        for row in rows
    }


def _same(saga: _Saga, stored: tuple[SagaHeader, list[tuple[Any, ...]]]) -> bool:
    """Whether ``stored`` is ``saga``: the same header, and its events begin with the file's
    (a coordinator may have advanced the copy since)."""
    header, rows = stored
    if header != saga.header:
        return False
    mine = [(e.seq, e.kind.value, e.step, e.at, e.data) for e in saga.events]
    return rows[: len(mine)] == mine


def _insert_sagas(
    conn: psycopg.Connection[Any], s: str, owner: str, sagas: list[_Saga]
) -> dict[str, int]:
    """Insert the saga rows (in order, so saga numbers follow creation); their numbers by id."""
    columns: list[list[Any]] = [[] for _ in range(15)]
    for saga in sagas:
        header, state = saga.header, saga.state
        ended = state.finished
        row = (
            header.saga_id,
            header.definition,
            header.created_at,
            header.payload,
            msgspec.json.encode(header.metadata).decode(),
            *state_columns(state),
            state.phase.value if ended else None,
            (saga.finished_at if saga.finished_at is not None else state.updated_at)
            if ended
            else None,
            len(columns[0]),
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    found = conn.execute(
        f"""INSERT INTO {s}.sagas (saga_id, definition, created_at, payload, metadata, owner,
                epoch, next_seq, phase, next_step, step_in_flight, compensation_step,
                compensated, updated_at, outcome, finished_at)
            SELECT v.saga_id, v.definition, v.created_at, v.payload, v.metadata, %s, 0,
                v.next_seq, v.phase, v.next_step, v.step_in_flight, v.compensation_step,
                v.compensated, v.updated_at, v.outcome, v.finished_at
            FROM unnest(%s::text[], %s::text[], %s::float8[], %s::bytea[], %s::text[],
                        %s::int4[], %s::text[], %s::int4[], %s::int4[], %s::int4[], %s::int4[],
                        %s::float8[], %s::text[], %s::float8[], %s::int4[])
                AS v(saga_id, definition, created_at, payload, metadata, next_seq, phase,
                     next_step, step_in_flight, compensation_step, compensated, updated_at,
                     outcome, finished_at, ord)
            ORDER BY v.ord
            RETURNING saga_id, saga_no""",
        (owner, *columns),
    ).fetchall()
    return {row[0]: row[1] for row in found}
