"""The PostgreSQL saga journal's schema: tables, versions, migrations, statements and the
requests that carry their parameters to the writer thread.

Theory of operation
-------------------
A journal lives in one PostgreSQL schema (default ``aura``), shared by every instance of a
fleet.  ``meta`` names the application and the schema version; ``instances`` holds one lease
row per journal instance (renewed periodically, judged by the *server's* clock, so instance
clocks never matter); ``sagas`` holds one row per saga: its header, its owner and fencing
epoch, the ``seq`` its next event must have, a summary of its state (so fleet-wide listings
need no fold) and, once it has ended, its outcome; ``events`` holds every event, keyed by
``(saga_no, seq)``.  ``saga_no`` is allocated by the server in creation order.

Opening (:func:`prepare`) runs under a transaction-scoped advisory lock per schema, so
instances starting together create or upgrade it once: a missing or empty schema gets the
current tables; a schema of ours of an older version is upgraded in the same transaction by
:data:`MIGRATIONS`; a newer version, or a schema holding tables that are not a journal of
ours, is refused with a :class:`~actors.JournalError` of category CONFIGURATION.

Every statement that writes is conditional, which is what makes the journal safe to share:
an append updates the saga row only where ``owner``, ``epoch`` and ``next_seq`` are what the
writer expects (:data:`APPEND`), and inserts its events only for the rows it updated; a
claim updates a saga's ``owner`` and ``epoch`` only where both still are what the claimer read
(:data:`CLAIM`), so of several claimers racing for one saga exactly one wins, under READ
COMMITTED, whatever the interleaving.  Liveness (lease expiry) only picks *candidates*
(:data:`CANDIDATES`); the compare-and-set decides.

Batches go through ``unnest`` over one array per column: every statement text is fixed
whatever the batch size, so the server prepares each once.  A trigger notifies the channel
:data:`CHANNEL` when a saga ends (payload ``schema:md5(saga_id)``), for instances waiting for a
saga owned elsewhere to finish.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from trio.lowlevel import Abort, RaiseCancelT, Task

from actors._errors import ErrorCategory
from actors._saga._journals._index import Tracked
from actors._saga._journals._records import JournalError, SagaPhase
from actors._saga._journals._state import SagaState

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "APPLICATION",
    "CHANNEL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Request",
    "Statements",
    "prepare",
    "saga_row",
    "state_columns",
]

#: What ``meta.application`` says in every journal schema of ours.
APPLICATION: Final = "aura-actors saga journal"
#: The version this code writes and reads; newer schemas are refused, older ones upgraded.
SCHEMA_VERSION: Final = 1
#: The LISTEN/NOTIFY channel on which finished sagas are announced (one per database).
CHANNEL: Final = "aura_saga_finished"

_ATTENTION: Final = SagaPhase.COMPENSATION_FAILED.value
_ENDS: Final = frozenset(phase for phase in SagaPhase if phase.finished)
_PHASE_TEXT: Final = {phase: phase.value for phase in SagaPhase}
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_TABLES: Final = frozenset({"meta", "instances", "sagas", "events"})


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain identifier (letters, digits, ``_``; at most 63 bytes), so
    it can be written into statements unquoted-safe; else ``ValueError``."""
    if not isinstance(schema, str) or not _NAME.fullmatch(schema):
        raise ValueError(
            f"must be a plain identifier (a letter or _, then letters, digits or _; at most "
            f"63 characters), got {schema!r}"
        )
    return schema


def _ddl(s: str) -> list[str]:
    """The statements creating schema version :data:`SCHEMA_VERSION` in schema ``s``."""
    return [
        f'CREATE SCHEMA IF NOT EXISTS "{s}"',
        f'CREATE TABLE "{s}".meta (key text PRIMARY KEY, value text NOT NULL)',
        f"""CREATE TABLE "{s}".instances (
            instance_id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL,
            connected_at timestamptz NOT NULL,
            lease_until timestamptz NOT NULL,
            closed_at timestamptz
        )""",
        # fillfactor: every append updates its saga row; room on the page keeps those
        # updates HOT (no index touched: the indexed columns change only at the end).
        f"""CREATE TABLE "{s}".sagas (
            saga_no bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            saga_id text NOT NULL UNIQUE,
            definition text NOT NULL,
            created_at double precision NOT NULL,
            payload bytea NOT NULL,
            metadata text NOT NULL,
            owner text NOT NULL,
            epoch bigint NOT NULL,
            next_seq integer NOT NULL,
            phase text NOT NULL,
            next_step integer NOT NULL,
            step_in_flight integer,
            compensation_step integer,
            compensated integer NOT NULL,
            updated_at double precision NOT NULL,
            outcome text,
            finished_at double precision
        ) WITH (fillfactor = 80)""",
        f"""CREATE INDEX sagas_owned ON "{s}".sagas (owner, created_at)
            WHERE outcome IS NULL""",
        f"""CREATE INDEX sagas_attention ON "{s}".sagas (created_at)
            WHERE outcome = '{_ATTENTION}'""",
        f"""CREATE INDEX sagas_prunable ON "{s}".sagas (finished_at)
            WHERE outcome IS NOT NULL AND outcome <> '{_ATTENTION}'""",
        f"""CREATE TABLE "{s}".events (
            saga_no bigint NOT NULL,
            seq integer NOT NULL,
            kind text NOT NULL,
            step integer,
            at double precision NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (saga_no, seq)
        )""",
        f"""CREATE FUNCTION "{s}".notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA || ':' || md5(NEW.saga_id));
                RETURN NULL;
            END $$""",
        f"""CREATE TRIGGER sagas_finished AFTER UPDATE OF outcome ON "{s}".sagas
            FOR EACH ROW WHEN (OLD.outcome IS NULL AND NEW.outcome IS NOT NULL)
            EXECUTE FUNCTION "{s}".notify_finished()""",
        f"""INSERT INTO "{s}".meta VALUES ('application', '{APPLICATION}'),
            ('schema_version', '{SCHEMA_VERSION}')""",
    ]


#: Upgrades of older schemas, by the version they upgrade (each ends by recording the next
#: version in ``meta``); run in the opening transaction, after the schema passed every check.
MIGRATIONS: Final[dict[int, list[str]]] = {}


class Statements:
    """Every statement the journal runs, written for one schema (see the module docstring)."""

    def __init__(self, schema: str) -> None:
        s = f'"{check_schema_name(schema)}"'
        self.schema = schema
        self.register = f"""
            INSERT INTO {s}.instances AS i
                (instance_id, host, pid, started_at, connected_at, lease_until)
            VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp(),
                    clock_timestamp() + %s * interval '1 second')
            ON CONFLICT (instance_id) DO UPDATE
                SET connected_at = EXCLUDED.connected_at, lease_until = EXCLUDED.lease_until,
                    closed_at = NULL"""
        self.renew = f"""
            UPDATE {s}.instances SET lease_until = clock_timestamp() + %s * interval '1 second'
            WHERE instance_id = %s AND closed_at IS NULL"""
        self.release = f"""
            UPDATE {s}.instances SET lease_until = clock_timestamp(),
                closed_at = clock_timestamp()
            WHERE instance_id = %s"""
        # Creates: one row per saga (ON CONFLICT: the id exists), then the events of the rows
        # inserted, in one statement; saga numbers follow the order of the batch.  The batched
        # writes take their parameters in binary (%b): as text, every array element is quoted
        # and escaped by psycopg and parsed back by the server, which cost about a third of
        # the time of batches of 100 sagas replayed on a plain connection.
        self.create = f"""
            WITH ins AS (
                INSERT INTO {s}.sagas (saga_id, definition, created_at, payload, metadata,
                    owner, epoch, next_seq, phase, next_step, step_in_flight,
                    compensation_step, compensated, updated_at)
                SELECT v.saga_id, v.definition, v.created_at, v.payload, v.metadata,
                    %b, 0, v.next_seq, v.phase, v.next_step, v.step_in_flight,
                    v.compensation_step, v.compensated, v.updated_at
                FROM unnest(%b::text[], %b::text[], %b::float8[], %b::bytea[], %b::text[],
                            %b::int4[], %b::text[], %b::int4[], %b::int4[], %b::int4[],
                            %b::int4[], %b::float8[])
                    WITH ORDINALITY AS v(saga_id, definition, created_at, payload, metadata,
                        next_seq, phase, next_step, step_in_flight, compensation_step,
                        compensated, updated_at, ord)
                ORDER BY v.ord
                ON CONFLICT (saga_id) DO NOTHING
                RETURNING saga_no, saga_id
            ), ev AS (
                INSERT INTO {s}.events (saga_no, seq, kind, step, at, data)
                SELECT ins.saga_no, e.seq, e.kind, e.step, e.at, e.data
                FROM unnest(%b::text[], %b::int4[], %b::text[], %b::int4[], %b::float8[],
                            %b::bytea[]) AS e(saga_id, seq, kind, step, at, data)
                JOIN ins USING (saga_id)
            )
            SELECT saga_id, saga_no FROM ins"""
        # Appends: the compare-and-set on (owner, epoch, next_seq) per saga, then the events
        # of the sagas it matched; the rows returned are the sagas written.
        self.append = f"""
            WITH u AS (
                UPDATE {s}.sagas AS s SET next_seq = v.new_seq, phase = v.phase,
                    next_step = v.next_step, step_in_flight = v.step_in_flight,
                    compensation_step = v.compensation_step, compensated = v.compensated,
                    updated_at = v.updated_at, outcome = v.outcome,
                    finished_at = v.finished_at
                FROM unnest(%b::int8[], %b::int8[], %b::int4[], %b::int4[], %b::text[],
                            %b::int4[], %b::int4[], %b::int4[], %b::int4[], %b::float8[],
                            %b::text[], %b::float8[])
                    AS v(saga_no, epoch, expect, new_seq, phase, next_step, step_in_flight,
                         compensation_step, compensated, updated_at, outcome, finished_at)
                WHERE s.saga_no = v.saga_no AND s.owner = %b AND s.epoch = v.epoch
                    AND s.next_seq = v.expect
                RETURNING s.saga_no
            ), ev AS (
                INSERT INTO {s}.events (saga_no, seq, kind, step, at, data)
                SELECT e.saga_no, e.seq, e.kind, e.step, e.at, e.data
                FROM unnest(%b::int8[], %b::int4[], %b::text[], %b::int4[], %b::float8[],
                            %b::bytea[]) AS e(saga_no, seq, kind, step, at, data)
                WHERE e.saga_no IN (SELECT saga_no FROM u)
            )
            SELECT saga_no FROM u"""
        self.rows_of = f"""
            SELECT saga_no, saga_id, owner, epoch, next_seq, outcome, created_at
            FROM {s}.sagas WHERE saga_no = ANY(%s)"""
        self.rows_by_id = f"""
            SELECT saga_no, saga_id, owner, epoch, next_seq, outcome, created_at
            FROM {s}.sagas WHERE saga_id = ANY(%s)"""
        # Claims.  Candidates: unfinished sagas of instances whose lease has expired (or that
        # have no lease row), provided this instance can judge: its own connection predates
        # the expiry, or it has been connected for a whole lease (after an outage of the
        # server every lease looks expired; live instances renew within that time).  Rows
        # locked by a transaction still open (its instance frozen mid-write) are skipped, not
        # waited for: the server ends that transaction after a lease idle, and a later claim
        # takes them.
        self.candidates = f"""
            WITH me AS (SELECT connected_at FROM {s}.instances WHERE instance_id = %(me)s)
            SELECT s.saga_no, s.owner, s.epoch
            FROM {s}.sagas AS s
            LEFT JOIN {s}.instances AS i ON i.instance_id = s.owner
            WHERE s.outcome IS NULL AND s.owner <> %(me)s
                AND (i.lease_until IS NULL OR i.lease_until < clock_timestamp())
                AND ((SELECT connected_at FROM me) <= clock_timestamp() - %(grace)s
                        * interval '1 second'
                     OR i.lease_until > (SELECT connected_at FROM me))
                AND s.saga_no <> ALL(%(skip)s::int8[])
                AND (%(definitions)s::text[] IS NULL OR s.definition = ANY(%(definitions)s))
            ORDER BY s.created_at, s.saga_no
            LIMIT %(limit)s
            FOR UPDATE OF s SKIP LOCKED"""
        self.claim = f"""
            UPDATE {s}.sagas AS s SET owner = %s, epoch = s.epoch + 1
            FROM unnest(%s::int8[], %s::text[], %s::int8[]) AS c(saga_no, owner, epoch)
            WHERE s.saga_no = c.saga_no AND s.owner = c.owner AND s.epoch = c.epoch
                AND s.outcome IS NULL
                AND NOT EXISTS (SELECT 1 FROM {s}.instances AS i WHERE i.instance_id = c.owner
                                AND i.lease_until >= clock_timestamp())
            RETURNING s.saga_no, s.epoch"""
        self.owned_untracked = f"""
            SELECT saga_no, epoch FROM {s}.sagas
            WHERE owner = %s AND outcome IS NULL AND saga_id <> ALL(%s::text[])"""
        self.headers = f"""
            SELECT saga_no, saga_id, definition, created_at, payload, metadata
            FROM {s}.sagas WHERE saga_no = ANY(%s) ORDER BY created_at, saga_no"""
        self.events_of = f"""
            SELECT saga_no, seq, kind, step, at, data FROM {s}.events
            WHERE saga_no = ANY(%s) ORDER BY saga_no, seq"""
        self.owned = f"""
            SELECT saga_no FROM {s}.sagas WHERE owner = %s AND outcome IS NULL"""
        self.housekeep = f"""
            DELETE FROM {s}.instances AS i
            WHERE i.lease_until < clock_timestamp() - interval '1 day'
                AND NOT EXISTS (SELECT 1 FROM {s}.sagas AS s
                                WHERE s.owner = i.instance_id AND s.outcome IS NULL)"""
        # Reads.
        self.get = f"""
            SELECT saga_no, saga_id, definition, created_at, payload, metadata
            FROM {s}.sagas WHERE saga_id = %s"""
        self.summaries = f"""
            SELECT saga_id, definition, created_at, phase, next_step, step_in_flight,
                compensation_step, compensated, next_seq, updated_at, metadata, owner
            FROM {s}.sagas WHERE outcome IS NULL OR outcome = '{_ATTENTION}'
            ORDER BY created_at, saga_id"""
        self.ownership = f"""
            SELECT s.saga_id, s.owner, s.epoch, s.phase, s.outcome IS NOT NULL,
                coalesce(i.lease_until >= clock_timestamp() AND i.closed_at IS NULL, false)
            FROM {s}.sagas AS s LEFT JOIN {s}.instances AS i ON i.instance_id = s.owner
            WHERE s.saga_id = %s"""
        self.instances = f"""
            SELECT i.instance_id, i.host, i.pid, extract(epoch FROM i.started_at)::float8,
                extract(epoch FROM i.lease_until - clock_timestamp())::float8,
                i.closed_at IS NOT NULL,
                (SELECT count(*) FROM {s}.sagas AS s
                 WHERE s.owner = i.instance_id AND s.outcome IS NULL)
            FROM {s}.instances AS i ORDER BY i.started_at, i.instance_id"""
        self.outcome = f"SELECT outcome FROM {s}.sagas WHERE saga_id = %s"
        # Retention.
        prunable = f"outcome IS NOT NULL AND outcome <> '{_ATTENTION}'"
        self.prune = f"""
            WITH doomed AS (
                SELECT saga_no FROM (
                    SELECT saga_no FROM {s}.sagas WHERE {prunable} AND finished_at < %s
                    FOR UPDATE SKIP LOCKED) AS expired
                UNION
                SELECT saga_no FROM (
                    SELECT saga_no FROM {s}.sagas WHERE {prunable}
                    ORDER BY finished_at DESC, saga_no DESC OFFSET %s
                    FOR UPDATE SKIP LOCKED) AS surplus
            ), gone AS (
                DELETE FROM {s}.events WHERE saga_no IN (SELECT saga_no FROM doomed)
            )
            DELETE FROM {s}.sagas WHERE saga_no IN (SELECT saga_no FROM doomed)
            RETURNING saga_no"""
        self.discard = f"""
            WITH doomed AS (
                DELETE FROM {s}.sagas WHERE saga_id = %s AND outcome IS NOT NULL
                RETURNING saga_no
            ), gone AS (
                DELETE FROM {s}.events WHERE saga_no IN (SELECT saga_no FROM doomed)
            )
            SELECT count(*) FROM doomed"""
        self.discardable = f"SELECT outcome IS NOT NULL FROM {s}.sagas WHERE saga_id = %s"


# ------------------------------------------------------------------------------ opening


def prepare(conn: psycopg.Connection[Any], schema: str, where: str) -> None:
    """Create, check or upgrade the journal schema (in one transaction, under an advisory
    lock); ``where`` names the journal in errors.  Runs on the writer thread.

    Raises:
        JournalError: the schema is foreign, newer, or inconsistent (CONFIGURATION).
    """
    s = check_schema_name(schema)
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"{APPLICATION}:{s}",),
        )
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN "
                "('r', 'p', 'v', 'm', 'f')",
                (s,),
            )
        }
        if not tables:
            for statement in _ddl(s):
                conn.execute(statement)
            return
        if "meta" not in tables:
            raise _foreign(where, s, f"it holds tables ({', '.join(sorted(tables)[:5])})")
        meta: Mapping[str, str] = dict(
            conn.execute(f'SELECT key, value FROM "{s}".meta').fetchall()
        )
        if meta.get("application") != APPLICATION:
            raise _foreign(where, s, f"its meta table names {meta.get('application')!r}")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise JournalError(
                f"The journal schema {s!r} at {where} has an unreadable version "
                f"({meta.get('schema_version')!r}).",
                category=ErrorCategory.CONFIGURATION,
            ) from None
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"The journal schema {s!r} at {where} has version {version}, newer than this "
                f"version of aura-actors supports ({SCHEMA_VERSION}).",
                category=ErrorCategory.CONFIGURATION,
                suggested_action=(
                    "Upgrade aura-actors on this instance to the version the rest of the "
                    "fleet runs."
                ),
            )
        if version != SCHEMA_VERSION and version not in MIGRATIONS:
            raise JournalError(
                f"The journal schema {s!r} at {where} has unknown version {version}.",
                category=ErrorCategory.CONFIGURATION,
            )
        missing = _TABLES - tables
        if missing:
            raise JournalError(
                f"The journal schema {s!r} at {where} is incomplete (missing "
                f"{', '.join(sorted(missing))}).",
                category=ErrorCategory.CONFIGURATION,
                suggested_action="Restore the schema from a backup, or point at another one.",
            )
        while version < SCHEMA_VERSION:  # an older journal of ours, checked: upgrade it
            for statement in MIGRATIONS[version]:
                conn.execute(statement.format(schema=f'"{s}"'))
            (text,) = conn.execute(  # type: ignore[misc]
                f"SELECT value FROM \"{s}\".meta WHERE key = 'schema_version'"
            ).fetchone()
            if int(text) <= version:  # pragma: no cover - a migration that does not say so
                raise JournalError(f"Upgrading the journal schema {s!r} at {where} failed.")
            version = int(text)


def _foreign(where: str, schema: str, why: str) -> JournalError:
    return JournalError(
        f"The schema {schema!r} at {where} is not an aura-actors journal ({why}): refusing to "
        "use or change it.",
        category=ErrorCategory.CONFIGURATION,
        suggested_action="Give the journal a schema of its own (the `schema` setting).",
    )


# ------------------------------------------------------------------------------ requests

#: Request operations (the writer's work, see actors._saga._journals._postgres._writer).
CREATE, APPEND, PRUNE, DISCARD, READ, CLAIM, LOAD, CLOSE = range(8)


class Request:
    """One unit of work for the writer thread; ``task`` waits for it (``None``: nobody).

    ``saga`` is a create's saga row; ``sagas`` an append's per-saga compare-and-set rows (see
    ``Statements.append``) with ``ids`` their saga ids; ``rows`` the event rows.  The writer
    sets ``value`` or ``error``, and ``committed`` once the request needs no replay.
    """

    __slots__ = (
        "abandoned",
        "committed",
        "deadline",
        "done",
        "error",
        "events",
        "fn",
        "ids",
        "lost",
        "nbytes",
        "op",
        "refused",
        "rows",
        "saga",
        "sagas",
        "task",
        "undo",
        "value",
    )

    def __init__(self, op: int) -> None:
        self.op = op
        self.rows: list[tuple[Any, ...]] = []
        self.sagas: list[tuple[Any, ...]] = []
        self.ids: list[str] = []
        self.saga: tuple[Any, ...] = ()
        self.events = 0
        self.nbytes = 0
        self.fn: Callable[[Any], Any] | None = None
        self.task: Task | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.lost: list[str] = []
        self.deadline = 0.0
        self.done = False
        self.abandoned = False  # its caller was told JournalUnavailable
        self.committed = False
        #: APPEND: (saga, its state before this write, its rollback epoch) per saga written:
        #: how to roll the in-memory state back if the database refuses this write alone.
        self.undo: tuple[tuple[Tracked, SagaState, int], ...] = ()
        self.refused = False  # the database refused this request's values

    def abort(self, raise_cancel: RaiseCancelT) -> Abort:
        self.task = None  # the write (if queued) still lands; the caller just stops waiting
        return Abort.SUCCEEDED


def saga_row(tracked: Tracked, expect: int, state: SagaState) -> tuple[Any, ...]:
    """The compare-and-set row of one saga's write (see ``Statements.append``): built once per
    write in the caller's task, so it reads each field once and takes the phase's text from a
    dict (``Enum.value`` is a descriptor call)."""
    phase = state.phase
    text = _PHASE_TEXT[phase]
    updated_at = state.updated_at
    ended = phase in _ENDS
    return (
        tracked.number,
        tracked.stored,
        expect,
        state.next_seq,
        text,
        state.next_step,
        state.step_in_flight,
        state.compensation_step,
        len(state.compensated),
        updated_at,
        text if ended else None,
        updated_at if ended else None,
    )


def state_columns(state: SagaState) -> tuple[Any, ...]:
    """The summary columns of a saga row, in statement order: next_seq, phase, next_step,
    step_in_flight, compensation_step, compensated, updated_at."""
    return (
        state.next_seq,
        _PHASE_TEXT[state.phase],
        state.next_step,
        state.step_in_flight,
        state.compensation_step,
        len(state.compensated),
        state.updated_at,
    )
