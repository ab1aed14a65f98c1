"""``aura journal migrate``: a SQLite journal moved into PostgreSQL for a fleet.

Sagas left in every phase (unfinished ones in each intermediate state, finished ones of each
outcome, one waiting for an operator) are copied with their events; a coordinator on the
PostgreSQL journal then takes the unfinished ones over and finishes them as a restarted one
would over the file; running the migration again copies nothing; a different saga under a
copied id is refused; bad inputs say what is wrong, and never print the URL's password.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from actors._saga._journals._postgres._journal import PostgresJournal
from actors._saga._journals._postgres._migrate import migrate_sqlite_to_postgres
from actors._saga._journals._records import JournalError, SagaHeader
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._journals._sqlite._schema import APPLICATION_ID
from actors._saga._journals._state import SagaState
from actors._saga._messages import GetSaga
from supervisors._operator._cli import main
from tests.postgres_helpers import run_sql
from tests.test_saga import World, chain, saga_tree
from tests.test_saga_recovery import CASES, DEFINITE, K, done, journal_at

#: Unfinished sagas: one per intermediate state of the recovery cases, by id.
UNFINISHED = {f"u{n}": case for n, case in enumerate(CASES.values())}
#: Finished sagas: (moves after `started`, the phase they end in).
FINISHED: dict[str, tuple[list[Any], str]] = {
    "f-completed": ([*done("f-completed", 0, 1, 2), (K.COMPLETED, None, b"")], "completed"),
    "f-compensated": (
        [
            *done("f-compensated", 0),
            (K.STEP_STARTED, 1, b""),
            (K.STEP_FAILED, 1, DEFINITE),
            (K.COMPENSATING, None, DEFINITE),
            (K.COMPENSATION_STARTED, 0, b""),
            (K.COMPENSATED_STEP, 0, b""),
            (K.COMPENSATED, None, b""),
        ],
        "compensated",
    ),
    "f-failed": (
        [(K.STEP_STARTED, 0, b""), (K.STEP_FAILED, 0, DEFINITE), (K.FAILED, None, DEFINITE)],
        "failed",
    ),
    "f-cancelled": ([(K.CANCELLED, None, b"")], "cancelled"),
    "f-operator": (
        [
            *done("f-operator", 0),
            (K.COMPENSATING, None, DEFINITE),
            (K.COMPENSATION_STARTED, 0, b""),
            (K.COMPENSATION_FAILED, 0, DEFINITE),
        ],
        "compensation_failed",
    ),
}
ALL = len(UNFINISHED) + len(FINISHED)


async def _sqlite_journal(path: Path) -> None:
    """A SQLite journal with a saga in every phase."""
    async with SqliteJournal(path) as journal:
        for saga_id, (moves, *_rest) in UNFINISHED.items():
            await journal_at(journal, saga_id, moves)
        for saga_id, (moves, _phase) in FINISHED.items():
            await journal_at(journal, saga_id, moves)


async def _contents(journal: Any, ids: list[str]) -> dict[str, Any]:
    return {saga_id: await journal.get(saga_id) for saga_id in ids}


async def aura(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await trio.to_thread.run_sync(lambda: main(list(args), stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def _counts(url: str, schema: str) -> tuple[int, int]:
    sagas = run_sql(url, f'SELECT count(*) FROM "{schema}".sagas')[0][0]
    events = run_sql(url, f'SELECT count(*) FROM "{schema}".events')[0][0]
    return sagas, events


async def test_a_migrated_journal_is_resumed_on_postgres_and_a_rerun_copies_nothing(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    path = tmp_path / "sagas.db"
    await _sqlite_journal(path)
    async with SqliteJournal(path) as source:
        before = await _contents(source, [*UNFINISHED, *FINISHED])
        events = sum(len(found[1]) for found in before.values())

    code, out, err = await aura(
        "journal", "migrate", "--from", f"sqlite:{path}", "--to", postgres_url,
        "--schema", postgres_schema,
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith(
        f"copied {ALL} saga(s) with {events} event(s) from {path} into postgresql://"
    )
    assert f"{len(UNFINISHED)} unfinished, 4 finished, 1 waiting for an operator" in out
    assert (await trio.to_thread.run_sync(_counts, postgres_url, postgres_schema)) == (ALL, events)

    # Each saga is in PostgreSQL as it was in the file: header and events.
    async with PostgresJournal(postgres_url, schema=postgres_schema) as copy:
        assert await _contents(copy, list(before)) == before
        listed = {s.saga_id: s for s in await copy.list_unfinished()}
        assert set(listed) == {*UNFINISHED, "f-operator"}
        owner = listed["u0"].owner
        assert owner is not None
        assert owner.startswith("migrated-")
        (instance,) = [i for i in await copy.instances() if i.instance_id != copy.instance_id]
        assert (instance.instance_id, instance.closed, instance.sagas_owned) == (
            owner,
            True,
            len(UNFINISHED),
        )

    # Again: nothing copied, nothing changed.
    code, out, err = await aura(
        "journal", "migrate", "--from", str(path), "--to", postgres_url,
        "--schema", postgres_schema,
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.strip() == (
        f"nothing to copy: the {ALL} saga(s) of {path} are in postgresql://"
        + out.split("postgresql://", 1)[1].strip()
    )
    assert (await trio.to_thread.run_sync(_counts, postgres_url, postgres_schema)) == (ALL, events)

    # A coordinator on PostgreSQL takes the unfinished sagas over and ends each as a restarted
    # coordinator over the file would.
    world = World()
    async with (
        PostgresJournal(postgres_url, schema=postgres_schema, lease_duration=2.0) as journal,
        saga_tree(world, [chain(3)], journal=journal) as root,
    ):
        outcomes: dict[str, str] = {}
        with trio.fail_after(60):
            for saga_id in UNFINISHED:
                while True:
                    info = await root.ref("sagas").ask(GetSaga(saga_id))
                    if info.finished:
                        outcomes[saga_id] = info.phase
                        break
                    await trio.sleep(0.05)
        assert outcomes == {saga_id: case[2] for saga_id, case in UNFINISHED.items()}
        for saga_id, (_moves, phase) in FINISHED.items():
            assert (await root.ref("sagas").ask(GetSaga(saga_id))).phase == phase
        # Left: the saga waiting for an operator (a finished saga is never claimed).
        listed = {s.saga_id: s.owner for s in await journal.list_unfinished()}
        assert listed == {"f-operator": owner}

    # The copies have moved on since: running it again still copies (and refuses) nothing.
    code, out, err = await aura(
        "journal", "migrate", "--from", str(path), "--to", postgres_url,
        "--schema", postgres_schema,
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith(f"nothing to copy: the {ALL} saga(s)")


async def test_a_different_saga_under_a_copied_id_is_refused_and_nothing_is_copied(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    async with SqliteJournal(first) as journal:
        await journal_at(journal, "shared-id", done("shared-id", 0))
    async with SqliteJournal(second) as journal:
        await journal_at(journal, "other", [])
        header = SagaHeader("shared-id", "order", 1000.0, msgspec.msgpack.encode({"x": 1}))
        await journal.create(header, SagaState.new(header).next_event(K.STARTED, at=1000.0))
    report = await trio.to_thread.run_sync(
        lambda: migrate_sqlite_to_postgres(str(first), postgres_url, schema=postgres_schema)
    )
    assert (report.copied, report.unfinished, report.already_there) == (1, 1, 0)
    counts = await trio.to_thread.run_sync(_counts, postgres_url, postgres_schema)
    code, out, err = await aura(
        "journal", "migrate", "--from", str(second), "--to", postgres_url,
        "--schema", postgres_schema,
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert "1 saga id(s) of" in err
    assert "with different content (another saga under the same id): 'shared-id'" in err
    assert "Nothing was copied." in err
    assert (await trio.to_thread.run_sync(_counts, postgres_url, postgres_schema)) == counts


async def test_a_journal_in_use_is_refused(tmp_path: Path, postgres_url: str) -> None:
    """While a coordinator's journal holds the file, the migration refuses and copies
    nothing; the running journal goes on writing."""
    path = tmp_path / "sagas.db"
    async with SqliteJournal(path) as journal:
        await journal_at(journal, "busy", [])
        code, out, err = await aura("journal", "migrate", "--from", str(path), "--to", postgres_url)
        assert (code, out) == (1, "")
        assert f"error: The journal file {path} is in use (locked)" in err
        assert "Stop the application that uses it" in err
        await journal_at(journal, "after", [])  # the journal was not disturbed


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")


def _damaged_journal(path: Path) -> None:
    """Our application id and schema version, but no journal tables."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 2")
        conn.execute("CREATE TABLE notes (body TEXT)")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "The journal file {path} does not exist."),
        (lambda p: p.write_text("hello"), "The file {path} is not a SQLite database"),
        (_foreign_sqlite, "The file {path} is a SQLite database of another application"),
        (_damaged_journal, "The journal file {path} cannot be read: OperationalError: no such"),
        (lambda p: p.mkdir(), "The journal path {path} is a directory, not a file."),
    ],
)
async def test_a_bad_source_is_refused_with_what_is_wrong(
    tmp_path: Path, postgres_url: str, make: Any, message: str
) -> None:
    path = tmp_path / "sagas.db"
    if make is not None:
        make(path)
    code, out, err = await aura(
        "journal", "migrate", "--from", f"sqlite:{path}", "--to", postgres_url
    )
    assert (code, out) == (1, "")
    assert err.startswith("error: " + message.format(path=path))
    if make is None:
        assert not path.exists()  # never created


async def test_a_foreign_schema_an_unreachable_server_and_a_bad_source_url_are_refused(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    path = tmp_path / "sagas.db"
    async with SqliteJournal(path) as journal:
        await journal_at(journal, "s", [])
    await trio.to_thread.run_sync(
        run_sql, postgres_url, f'CREATE TABLE "{postgres_schema}".orders (id int)'
    )
    code, out, err = await aura(
        "journal", "migrate", "--from", str(path), "--to", postgres_url,
        "--schema", postgres_schema,
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert f"The schema '{postgres_schema}' at postgresql://" in err
    assert "is not an aura-actors journal (it holds tables (orders))" in err

    secret = "hunter2-not-for-logs"
    down = f"postgresql://app:{secret}@127.0.0.1:1/app?connect_timeout=2"
    code, out, err = await aura("journal", "migrate", "--from", str(path), "--to", down)
    assert (code, out) == (1, "")
    assert err.startswith(
        "error: Cannot reach the PostgreSQL server at postgresql://app@127.0.0.1:1/app"
    )
    assert secret not in err
    assert len(err.strip().splitlines()) == 2  # the error and what to do, a line each

    code, out, err = await aura("journal", "migrate", "--from", "postgres://x/y", "--to", down)
    assert code == 1
    assert "--from must be sqlite:PATH" in err
    assert secret not in out + err


def test_the_report_reads_well() -> None:
    """The report's wording for a copy with sagas there already, and for nothing new."""
    from actors._saga._journals._postgres._migrate import MigrationReport

    report = MigrationReport("j.db", "postgresql://a@h:5432/d (schema aura)", 2, 3, 1, 40, 4, "m")
    assert report.describe().splitlines() == [
        "copied 6 saga(s) with 40 event(s) from j.db into postgresql://a@h:5432/d (schema aura): "
        "2 unfinished, 3 finished, 1 waiting for an operator (compensation_failed).",
        "4 saga(s) were there already: left as they are.",
        "The unfinished sagas belong to the migration's instance m (closed): coordinators on "
        "this journal take them over and resume them within one lease of starting.",
    ]
    with pytest.raises(JournalError):
        migrate_sqlite_to_postgres("j.db", "postgresql://x", schema="bad name")
