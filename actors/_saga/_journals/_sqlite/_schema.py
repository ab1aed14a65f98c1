"""The SQLite journal's file format: the schema and its upgrades, the statements a write runs,
and the thread-side reads (checking a file's identity, loading the tracked sagas, pruning).

``APPLICATION_ID`` and ``SCHEMA_VERSION`` identify a journal file; an older version is migrated
when opened (``_MIGRATIONS``), a newer one refused.  Events are stored a saga's step per row
(:func:`event_rows`), inserted several rows per statement (:func:`insert_events`); the benchmark's
floor runs these same statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import Any, Final

import msgspec

from actors._errors import ErrorCategory
from actors._saga._journals._records import (
    JournalError,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaSequenceError,
)
from actors._saga._journals._state import SagaState, saga_state

#: ``PRAGMA application_id`` of every aura-actors journal (ASCII "AURJ").
APPLICATION_ID: Final = 0x4155524A
#: ``PRAGMA user_version`` this code writes and reads; newer files are refused, older ones
#: are migrated when opened.
SCHEMA_VERSION: Final = 2

_APPLICATION_NAME: Final = "aura-actors saga journal"

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

Row = tuple[Any, ...]
#: What the writer hands trio at open: (header, state, saga number) per tracked saga, and the
#: next free saga number.
_Loaded = tuple[list[tuple[SagaHeader, SagaState, int]], int]

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


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back (SQLite may have rolled back itself)
