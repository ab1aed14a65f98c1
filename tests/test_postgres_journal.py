"""PostgresJournal: its schema, ownership (leases, fencing epochs, claims) and LISTEN/NOTIFY.

The journal contract it shares with the other journals is in test_journal_contract.py; outages
and restarts of the server are in test_postgres_outages.py.  These tests run on the real
clock against the suite's real server, each in a fresh schema; leases are expired by writing
the server's lease rows (never by sleeping).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

import actors._saga._journals._postgres._schema as schema_module
from actors._errors import ConfigError, ErrorCategory, JournalUnavailable, OwnershipLost
from actors._saga._journals._postgres._journal import PostgresJournal
from actors._saga._journals._records import (
    JournalError,
    SagaEventKind,
    SagaPhase,
    SagaSequenceError,
)
from actors._saga._journals._state import saga_state
from tests.postgres_helpers import age_connection, expire_lease, open_journal, owners, sql, travel
from tests.test_journal import Driver, ev, header

K = SagaEventKind
P = SagaPhase


@pytest.fixture
async def journals(postgres_url: str, postgres_schema: str) -> Any:
    """Opens journals on the test's schema; closes them all at the end."""
    opened: list[PostgresJournal] = []

    async def make(**options: Any) -> PostgresJournal:
        journal = await open_journal(postgres_url, postgres_schema, **options)
        opened.append(journal)
        return journal

    yield make
    for journal in opened:
        await journal.aclose()


# ------------------------------------------------------------------------------ schema


async def test_a_new_schema_records_the_application_and_version(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """Opening an empty schema creates the journal's tables and records who owns them."""
    await journals()
    meta = dict(await sql(postgres_url, f'SELECT key, value FROM "{postgres_schema}".meta'))
    assert meta == {
        "application": "aura-actors saga journal",
        "schema_version": str(schema_module.SCHEMA_VERSION),
    }


async def test_instances_opening_a_missing_schema_together_create_it_once(
    postgres_url: str, postgres_schema: str
) -> None:
    """Several instances starting at once on a schema that does not exist all open it."""
    name = f"{postgres_schema}_fresh"
    opened: list[PostgresJournal] = []

    async def one() -> None:
        opened.append(await open_journal(postgres_url, name))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert len({j.instance_id for j in opened}) == 4
        assert len(await opened[0].instances()) == 4
    finally:
        for journal in opened:
            await journal.aclose()
        await sql(postgres_url, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def test_a_schema_holding_other_tables_is_refused_and_left_alone(
    postgres_url: str, postgres_schema: str
) -> None:
    """A schema with tables but no journal meta, or a meta naming another application, is
    refused with a configuration error, and nothing in it changes."""
    await sql(postgres_url, f'CREATE TABLE "{postgres_schema}".orders (id int)')
    with pytest.raises(JournalError, match="not an aura-actors journal") as info:
        await open_journal(postgres_url, postgres_schema)
    assert info.value.category is ErrorCategory.CONFIGURATION
    await sql(postgres_url, f'CREATE TABLE "{postgres_schema}".meta (key text, value text)')
    await sql(
        postgres_url, f"INSERT INTO \"{postgres_schema}\".meta VALUES ('application', 'billing')"
    )
    with pytest.raises(JournalError, match="billing"):
        await open_journal(postgres_url, postgres_schema)
    tables = await sql(
        postgres_url,
        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
        (postgres_schema,),
    )
    assert tables == [("meta",), ("orders",)]


async def test_a_newer_or_incomplete_schema_is_refused(
    postgres_url: str, postgres_schema: str
) -> None:
    """A journal schema of a later version, or with a table missing, is refused (the
    fleet's instances must run one schema)."""
    journal = await open_journal(postgres_url, postgres_schema)
    await journal.aclose()
    meta = f'"{postgres_schema}".meta'
    await sql(postgres_url, f"UPDATE {meta} SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="version 99, newer") as info:
        await open_journal(postgres_url, postgres_schema)
    assert info.value.category is ErrorCategory.CONFIGURATION
    version = str(schema_module.SCHEMA_VERSION)
    await sql(
        postgres_url, f"UPDATE {meta} SET value = %s WHERE key = 'schema_version'", (version,)
    )
    await sql(postgres_url, f'DROP TABLE "{postgres_schema}".events')
    with pytest.raises(JournalError, match="incomplete"):
        await open_journal(postgres_url, postgres_schema)


async def test_an_older_schema_is_upgraded_in_place_keeping_its_sagas(
    postgres_url: str, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema of the previous version is migrated when opened: its sagas stay and go on."""
    old = await open_journal(postgres_url, postgres_schema)
    saga = await Driver(old, "kept").start()
    await saga.steps(1)
    await old.aclose()
    current = schema_module.SCHEMA_VERSION
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(
        schema_module.MIGRATIONS,
        current,
        [
            "ALTER TABLE {schema}.sagas ADD COLUMN note text",
            f"UPDATE {{schema}}.meta SET value = '{current + 1}' WHERE key = 'schema_version'",
        ],
    )
    new = await open_journal(postgres_url, postgres_schema)
    try:
        version = await sql(
            postgres_url,
            f"SELECT value FROM \"{postgres_schema}\".meta WHERE key = 'schema_version'",
        )
        assert version == [(str(current + 1),)]
        columns = await sql(
            postgres_url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'sagas' AND column_name = 'note'",
            (postgres_schema,),
        )
        assert columns == [("note",)]
        await age_connection(postgres_url, postgres_schema, new.instance_id, 60.0)
        ((h, events),) = await new.claim_orphans()
        assert saga_state(h, events) == saga.state
    finally:
        await new.aclose()


# ---------------------------------------------------------------------------- ownership


async def test_instance_ids_are_fresh_for_every_journal(journals: Any) -> None:
    """Two journals of one process, and a journal opened after another closed, never share
    an instance id."""
    a, b = await journals(), await journals()
    c = PostgresJournal("postgresql://x@127.0.0.1/x")
    assert len({a.instance_id, b.instance_id, c.instance_id}) == 3
    assert len(a.instance_id) == 32


async def test_sagas_are_read_fleet_wide_but_written_and_loaded_only_by_their_owner(
    journals: Any,
) -> None:
    """get and list_unfinished see every instance's sagas; load_unfinished and writes are
    the owner's alone; another instance cannot create the same id."""
    a, b = await journals(), await journals()
    saga = await Driver(a, "mine").start()
    await saga.steps(1)
    found = await b.get("mine")
    assert found is not None
    assert saga_state(*found) == saga.state
    assert [s.saga_id for s in await b.list_unfinished()] == ["mine"]
    assert await b.load_unfinished() == []
    assert [h.saga_id for h, _ in await a.load_unfinished()] == ["mine"]
    with pytest.raises(SagaSequenceError, match="not open"):
        await b.append(ev("mine", 3, K.STEP_STARTED, 1))
    with pytest.raises(JournalError, match="already exists"):
        await Driver(b, "mine").start()
    owner = await b.ownership("mine")
    assert owner is not None
    assert (owner.owner, owner.epoch, owner.owner_alive) == (a.instance_id, 0, True)
    assert owner.phase is P.RUNNING
    assert await b.ownership("nobody") is None


async def test_survivors_take_over_sagas_of_an_expired_lease_and_fence_the_old_owner(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """Once A's lease has expired, B claims A's unfinished sagas (with their events, epoch
    one higher); every later append of A is refused with OwnershipLost and stores nothing."""
    a, b = await journals(), await journals()
    one = await Driver(a, "one", created_at=1.0).start()
    await one.go(K.STEP_STARTED, 0)
    two = await Driver(a, "two", created_at=2.0).start()
    done = await Driver(a, "done").start()
    await done.finish()
    assert await b.claim_orphans() == []  # A's lease is current
    await expire_lease(postgres_url, postgres_schema, a.instance_id)
    claimed = await b.claim_orphans()
    assert [h.saga_id for h, _ in claimed] == ["one", "two"]
    assert saga_state(*claimed[0]) == one.state
    assert saga_state(*claimed[1]) == two.state
    assert (await owners(postgres_url, postgres_schema))["one"] == (b.instance_id, 1)
    late = ev("one", 2, K.STEP_COMPLETED, 0, b"late")
    with pytest.raises(OwnershipLost) as info:
        await a.append(late)
    assert (info.value.saga_id, info.value.owner, info.value.epoch) == ("one", b.instance_id, 1)
    with pytest.raises(OwnershipLost):  # remembered: refused without a round trip
        await a.append(late)
    with pytest.raises(OwnershipLost):
        await a.append_many([ev("two", 1, K.STEP_STARTED, 0)])
    found = await b.get("one")
    assert found is not None
    assert len(found[1]) == 2  # the late append was not stored
    assert [h.saga_id for h, _ in await b.load_unfinished()] == ["one", "two"]
    assert await a.load_unfinished() == []
    assert a.fleet_statistics().ownership_lost == 2
    assert b.fleet_statistics().sagas_claimed == 2
    # B continues the claimed saga where A left it.
    one.journal = b
    await one.go(K.STEP_COMPLETED, 0, b"r")
    await one.finish()
    assert b.statistics().sagas_open == 1


async def test_a_closed_instance_hands_its_sagas_over_at_once(journals: Any) -> None:
    """aclose expires the lease: survivors claim at their next call, without waiting."""
    a, b = await journals(), await journals()
    await Driver(a, "s").start()
    await a.aclose()
    assert [h.saga_id for h, _ in await b.claim_orphans()] == ["s"]
    (info,) = [i for i in await b.instances() if i.instance_id == a.instance_id]
    assert info.closed
    assert not info.alive


async def test_an_instance_connected_after_a_lease_expired_waits_a_lease_before_claiming(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """After an outage every lease looks expired: an instance whose connection is younger
    than the expiry claims only once it has been connected for a whole lease."""
    a = await journals(lease_duration=600.0)  # renews every 200 s: not during this test
    await Driver(a, "s").start()
    await expire_lease(postgres_url, postgres_schema, a.instance_id)
    late = await journals(lease_duration=30.0)  # connected after the expiry
    assert await late.claim_orphans() == []
    await travel(postgres_url, postgres_schema, 29.0)  # 29 s pass on the server's clock
    assert await late.claim_orphans() == []
    await travel(postgres_url, postgres_schema, 1.5)
    assert [h.saga_id for h, _ in await late.claim_orphans()] == ["s"]


async def test_claims_respect_the_limit_oldest_first(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """claim_orphans claims at most `limit` sagas of other instances per call, oldest first."""
    a, b = await journals(), await journals()
    for i in range(5):
        await Driver(a, f"s{i}", created_at=float(10 - i)).start()
    await expire_lease(postgres_url, postgres_schema, a.instance_id)
    first = [h.saga_id for h, _ in await b.claim_orphans(limit=2)]
    rest = [h.saga_id for h, _ in await b.claim_orphans(limit=10)]
    assert (first, rest) == (["s4", "s3"], ["s2", "s1", "s0"])
    with pytest.raises(ConfigError, match="limit"):
        await b.claim_orphans(limit=0)


async def _race_claims(
    postgres_url: str, postgres_schema: str, claimers: list[PostgresJournal], sagas: int, tag: str
) -> dict[str, list[str]]:
    """A fresh owner creates ``sagas`` sagas and closes; every claimer reads its candidates
    before any of them claims (a barrier on the writer threads forces it), then all claim at
    once.  Returns saga_id -> the instances that were handed it."""
    owner = await open_journal(postgres_url, postgres_schema)
    for i in range(sagas):
        await Driver(owner, f"{tag}-{i}").start()
    await owner.aclose()
    barrier = threading.Barrier(len(claimers))
    for claimer in claimers:
        assert claimer._writer is not None
        claimer._writer.before_claim = lambda: barrier.wait(timeout=30)
    got: dict[str, list[str]] = {f"{tag}-{i}": [] for i in range(sagas)}

    async def claim(journal: PostgresJournal) -> None:
        for h, _ in await journal.claim_orphans(limit=sagas):
            got[h.saga_id].append(journal.instance_id)

    async with trio.open_nursery() as nursery:
        for claimer in claimers:
            nursery.start_soon(claim, claimer)
    for claimer in claimers:
        assert claimer._writer is not None
        claimer._writer.before_claim = None
    return got


_SKIP_LOCKED = "FOR UPDATE OF s SKIP LOCKED"


@pytest.mark.parametrize("locks", ["locked candidates", "compare-and-set alone"])
async def test_racing_claimers_claim_each_saga_exactly_once(
    postgres_url: str, postgres_schema: str, journals: Any, locks: str
) -> None:
    """Four survivors that all read their candidates before any claims claim each saga
    exactly once, over 10 rounds: candidates are locked (SKIP LOCKED), and even without those
    locks the compare-and-set on owner and epoch decides under READ COMMITTED (every
    survivor then chose the same candidates)."""
    claimers = [await journals() for _ in range(4)]
    if locks != "locked candidates":
        for claimer in claimers:
            assert claimer._writer is not None
            stmts = claimer._writer.stmts
            assert _SKIP_LOCKED in stmts.candidates
            stmts.candidates = stmts.candidates.replace(_SKIP_LOCKED, "")
    for round_ in range(10):
        got = await _race_claims(postgres_url, postgres_schema, claimers, 12, f"r{round_}")
        assert all(len(who) == 1 for who in got.values()), got
        stored = await owners(postgres_url, postgres_schema)
        for saga_id, (who,) in got.items():
            assert stored[saga_id] == (who, 1)
    # Each survivor tracks exactly what it was handed.
    assert sum(c.statistics().sagas_open for c in claimers) == 10 * 12


async def test_without_the_compare_and_set_the_same_race_claims_twice(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """The race above is real: without locked candidates, a claim that updates by saga
    number alone (check, then act) hands the same sagas to several survivors."""
    claimers = [await journals() for _ in range(3)]
    for claimer in claimers:
        assert claimer._writer is not None
        stmts = claimer._writer.stmts
        stmts.candidates = stmts.candidates.replace(_SKIP_LOCKED, "")
        stmts.claim = stmts.claim.replace(
            "AND s.owner = c.owner AND s.epoch = c.epoch", "AND c.owner IS NOT NULL"
        )
    got = await _race_claims(postgres_url, postgres_schema, claimers, 6, "naive")
    assert any(len(who) > 1 for who in got.values())


async def test_a_saga_lost_in_a_write_of_several_is_not_written_at_all(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """append_many over two sagas, one of them claimed meanwhile by another instance: the
    write raises OwnershipLost and stores nothing of either; the kept saga is handed out
    again, as stored, by the next claim_orphans."""
    a, b = await journals(), await journals()
    kept = await Driver(a, "kept", created_at=1.0).start()
    taken = await Driver(a, "taken", created_at=2.0).start()
    await expire_lease(postgres_url, postgres_schema, a.instance_id)
    assert len(await b.claim_orphans()) == 2
    # Give "kept" back to A, as if A had claimed it again.
    await sql(
        postgres_url,
        f'UPDATE "{postgres_schema}".sagas SET owner = %s, epoch = 2 WHERE saga_id = %s',
        (a.instance_id, "kept"),
    )
    await sql(
        postgres_url,
        f'UPDATE "{postgres_schema}".instances SET lease_until = clock_timestamp() '
        "+ interval '1 minute' WHERE instance_id = %s",
        (a.instance_id,),
    )
    tracked = a._index.open["kept"]
    tracked.stored = 2  # the epoch A would have after claiming it back
    with pytest.raises(OwnershipLost, match="taken"):
        await a.append_many([kept.event(K.STEP_STARTED, 0), taken.event(K.STEP_STARTED, 0)])
    for saga_id in ("kept", "taken"):
        found = await a.get(saga_id)
        assert found is not None
        assert len(found[1]) == 1
    handed = await a.claim_orphans()
    assert [h.saga_id for h, _ in handed] == ["kept"]
    assert len(handed[0][1]) == 1


# ----------------------------------------------------------------------- LISTEN/NOTIFY


async def test_an_instance_waits_for_a_saga_owned_elsewhere_to_finish(journals: Any) -> None:
    """wait_finished returns the final phase once the owner ends the saga (notified, not
    polled), at once for a finished saga, and None for an unknown one."""
    a, b = await journals(), await journals()
    saga = await Driver(a, "long").start()
    results: list[SagaPhase | None] = []

    async def waiter() -> None:
        results.append(await b.wait_finished("long"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        with trio.fail_after(10):  # until the waiter has read the saga and parked
            while not any(  # noqa: ASYNC110 (a condition of another task, not an event)
                w.event.statistics().tasks_waiting for ws in b._finish_waiters.values() for w in ws
            ):
                await trio.sleep(0.01)
        await saga.steps(1)
        assert results == []
        await saga.finish(K.CANCELLED)
    assert results == [P.CANCELLED]
    assert await b.wait_finished("long") is P.CANCELLED
    assert await b.wait_finished("never") is None
    assert b._finish_waiters == {}


async def test_a_closed_journal_refuses_fleet_calls(journals: Any) -> None:
    """After aclose the fleet calls raise JournalError like the others."""
    a = await journals()
    await a.aclose()
    for call in (a.claim_orphans(), a.instances(), a.ownership("x"), a.wait_finished("x")):
        with pytest.raises(JournalError, match="closed"):
            await call
    assert not a.available


async def test_text_postgres_cannot_store_is_refused_before_anything_is_written(
    journals: Any,
) -> None:
    """A saga id or definition with a NUL character is a ValueError naming the field; the
    journal stays usable."""
    a = await journals()
    with pytest.raises(ValueError, match="saga_id"):
        await a.create(header("a\x00b"), ev("a\x00b", 0, K.STARTED))
    with pytest.raises(ValueError, match="definition"):
        await a.create(header("a", definition="v\x00"), ev("a", 0, K.STARTED))
    await Driver(a, "a").start()
    assert a.statistics().appends == 1


async def test_a_password_in_the_url_never_appears_in_errors() -> None:
    """An unreachable server's error names the journal by URL without its password."""
    journal = PostgresJournal("postgresql://app:hunter2secret@127.0.0.1:9/app", schema="s")
    assert "hunter2secret" not in journal.where
    with pytest.raises(JournalUnavailable) as info:
        await journal.open()
    assert "hunter2secret" not in info.value.describe()
    assert "127.0.0.1:9" in str(info.value)
    assert info.value.category is ErrorCategory.DEPENDENCY


# ------------------------------------------------------------------------- group commit


async def test_concurrent_sagas_share_commits(journals: Any) -> None:
    """Fifty sagas stepping at once are written in far fewer transactions than writes (group
    commit), and every write reads back."""
    journal = await journals()
    drivers = [Driver(journal, f"g{i}") for i in range(50)]
    async with trio.open_nursery() as nursery:
        for driver in drivers:
            nursery.start_soon(driver.start)
    async with trio.open_nursery() as nursery:
        for driver in drivers:
            nursery.start_soon(driver.steps, 3)
    stats = journal.statistics()
    assert stats.appends == 50 * 7
    assert stats.commits * 5 <= stats.appends
    assert stats.rows_per_commit >= 5
    for driver in drivers:
        found = await journal.get(driver.header.saga_id)
        assert found is not None
        assert saga_state(*found) == driver.state


async def test_a_frozen_owner_s_locked_rows_are_skipped_then_claimed_once_its_session_ends(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """An owner frozen in the middle of a transaction holds its sagas' row locks: survivors
    claiming skip those rows instead of waiting on them (their journal stays available,
    though waiting would outlast their write_timeout), and claim them once the server has
    ended the frozen session (idle in transaction for a lease)."""
    a = await journals(lease_duration=3.0)  # its session is ended after 3 s idle
    b = await journals(lease_duration=1.0, write_timeout=0.5)  # would time out waiting
    await Driver(a, "held").start()
    await Driver(a, "free").start()
    frozen = threading.Event()
    thaw = threading.Event()
    assert a._writer is not None

    def freeze(conn: Any) -> None:  # a's transaction stays open on the "held" row
        frozen.set()
        thaw.wait(timeout=60)

    a._writer.renew = lambda conn: None  # type: ignore[method-assign]
    a._writer.before_commit = freeze
    late: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_late, a.append(ev("held", 1, K.STEP_STARTED, 0)), late)
        await trio.to_thread.run_sync(frozen.wait, 30)
        await expire_lease(postgres_url, postgres_schema, a.instance_id)
        claimed: list[str] = []
        with trio.fail_after(30):
            while "held" not in claimed:
                claimed += [h.saga_id for h, _ in await b.claim_orphans()]
                assert b.available
                if "held" not in claimed:
                    assert claimed == ["free"]  # the locked row was skipped, not waited for
                await trio.sleep(0.05)
        a._writer.before_commit = None
        thaw.set()
    assert (await owners(postgres_url, postgres_schema))["held"] == (b.instance_id, 1)
    # The thawed owner's write was replayed on a new connection and refused by the fence;
    # its journal goes on (a session ended by the server is not a failure of the journal).
    (error,) = late
    assert isinstance(error, OwnershipLost | JournalUnavailable), error
    with trio.fail_after(30):
        await a.wait_available()
    assert a.fleet_statistics().ownership_lost == 1
    assert not a.fleet_statistics().failed


async def _late(call: Any, errors: list[BaseException]) -> None:
    try:
        await call
    except Exception as exc:
        errors.append(exc)


# ------------------------------------------------------------------- refused writes


async def test_a_write_the_database_refuses_fails_alone_and_its_saga_goes_on(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """A value the database refuses (here: a CHECK the schema gained) fails only the write
    carrying it: writes of other sagas committed in the same batch land, the refused saga's
    state goes back to what it was (the next write from there is accepted), and the journal
    stays usable."""
    journal = await journals()
    await sql(
        postgres_url,
        f'ALTER TABLE "{postgres_schema}".events ADD CONSTRAINT no_poison '
        "CHECK (data <> '\\x706f69736f6e'::bytea)",  # b"poison"
    )
    bad = await Driver(journal, "bad").start()
    good = await Driver(journal, "good").start()
    await bad.go(K.STEP_STARTED, 0)
    await good.go(K.STEP_STARTED, 0)
    before = bad.state
    refused: list[BaseException] = []

    async def poison() -> None:
        with pytest.raises(JournalError, match="refused this write") as info:
            await bad.go(K.STEP_COMPLETED, 0, b"poison")
        refused.append(info.value)

    async with trio.open_nursery() as nursery:  # one batch: both writes staged in one pass
        nursery.start_soon(poison)
        nursery.start_soon(good.go, K.STEP_COMPLETED, 0, b"fine")
    assert len(refused) == 1
    assert journal.available
    found = await journal.get("good")
    assert found is not None
    assert saga_state(*found) == good.state
    found = await journal.get("bad")
    assert found is not None
    assert saga_state(*found) == before  # nothing of the refused write was stored
    bad.state = before  # the coordinator's view goes back with the journal's
    await bad.go(K.STEP_COMPLETED, 0, b"cured")
    await bad.finish()
    found = await journal.get("bad")
    assert found is not None
    assert saga_state(*found).phase is P.COMPLETED


async def test_a_write_queued_behind_a_refused_one_of_its_saga_fails_too(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """Two writes of one saga in one batch, the first refused by the database: the second,
    validated after the first, fails as well (it would leave a gap), and the saga's state is
    the one before both."""
    journal = await journals()
    await sql(
        postgres_url,
        f'ALTER TABLE "{postgres_schema}".events ADD CONSTRAINT no_poison '
        "CHECK (data <> '\\x706f69736f6e'::bytea)",
    )
    saga = await Driver(journal, "s").start()
    await saga.go(K.STEP_STARTED, 0)
    before = saga.state
    first = saga.event(K.STEP_COMPLETED, 0, b"poison")
    second = saga.event(K.STEP_STARTED, 1)
    errors: list[BaseException] = []

    async def write(event: Any) -> None:
        try:
            await journal.append(event)
        except JournalError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, first)
        await trio.lowlevel.checkpoint()  # queued in order, validated in order
        nursery.start_soon(write, second)
    assert len(errors) == 2
    found = await journal.get("s")
    assert found is not None
    assert saga_state(*found) == before
    saga.state = before
    await saga.go(K.STEP_COMPLETED, 0, b"fine")  # the journal goes on from `before`
    assert journal.statistics().sagas_open == 1


# --------------------------------------------------------------------- reloading


async def test_load_unfinished_takes_back_what_a_failed_write_left_out_of_step(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """A saga forgotten after a write that missed the store (its row moved on behind the
    journal's back) is tracked again, as stored, by load_unfinished, which a restarted
    coordinator calls; claim_orphans no longer hands it out, and writes from the stored state
    are accepted."""
    journal = await journals()
    saga = await Driver(journal, "s").start()
    await saga.go(K.STEP_STARTED, 0)
    await sql(  # an event the journal did not write: its next write is out of step
        postgres_url,
        f'UPDATE "{postgres_schema}".sagas SET next_seq = next_seq + 1 WHERE saga_id = %s',
        ("s",),
    )
    with pytest.raises(JournalError, match="holds 3 events"):
        await saga.go(K.STEP_COMPLETED, 0, b"r")
    await sql(
        postgres_url,
        f'UPDATE "{postgres_schema}".sagas SET next_seq = next_seq - 1 WHERE saga_id = %s',
        ("s",),
    )
    assert journal.statistics().sagas_open == 0  # forgotten, to be read back
    ((h, events),) = await journal.load_unfinished()
    state = saga_state(h, events)
    assert state.next_seq == 2
    assert journal.statistics().sagas_open == 1
    assert await journal.claim_orphans() == []  # loaded: not handed out again
    await journal.append(state.next_event(K.STEP_COMPLETED, 0, b"r"))


async def test_list_unfinished_names_each_saga_s_owner(journals: Any) -> None:
    """Fleet-wide listings say which instance drives each saga."""
    a, b = await journals(), await journals()
    await Driver(a, "a1", created_at=1.0).start()
    await Driver(b, "b1", created_at=2.0).start()
    listed = await a.list_unfinished()
    assert [(s.saga_id, s.owner) for s in listed] == [
        ("a1", a.instance_id),
        ("b1", b.instance_id),
    ]


async def test_a_saga_a_write_left_out_of_step_is_handed_back_not_called_lost(
    postgres_url: str, postgres_schema: str, journals: Any
) -> None:
    """A write that finds the saga's row moved on (same owner and epoch: not a takeover)
    fails with a JournalError, not OwnershipLost; the saga is handed back by claim_orphans as
    stored and goes on from there."""
    journal = await journals()
    saga = await Driver(journal, "s").start()
    await saga.go(K.STEP_STARTED, 0)
    bump = f'UPDATE "{postgres_schema}".sagas SET next_seq = next_seq + %s WHERE saga_id = %s'
    await sql(postgres_url, bump, (1, "s"))
    with pytest.raises(JournalError, match="holds 3 events") as info:
        await saga.go(K.STEP_COMPLETED, 0, b"r")
    assert not isinstance(info.value, OwnershipLost)
    await sql(postgres_url, bump, (-1, "s"))
    ((h, events),) = await journal.claim_orphans()
    state = saga_state(h, events)
    assert state.next_seq == 2
    await journal.append(state.next_event(K.STEP_COMPLETED, 0, b"r"))
    assert journal.fleet_statistics().ownership_lost == 0


async def test_a_claim_after_a_reconnection_leaves_a_saga_being_created_to_its_creator(
    journals: Any,
) -> None:
    """After a reconnection a claim also hands back this instance's owned sagas that the
    trio side does not track; a saga whose create was still unconfirmed when the claim was
    asked for (but committed before it ran) is tracked, by its creator: it is not handed out,
    and its creator's writes go on."""
    journal = await journals()
    assert journal._writer is not None
    creating = threading.Event()
    release = threading.Event()

    def hold(conn: Any) -> None:
        creating.set()
        release.wait(timeout=30)

    journal._writer.before_commit = hold
    journal._check_owned = True  # as after a reconnection
    saga = Driver(journal, "new")
    handed: list[str] = []

    async def claim() -> None:
        await trio.to_thread.run_sync(creating.wait, 30)
        assert journal._writer is not None
        journal._writer.before_commit = None
        request = journal.claim_orphans()  # asked while the create is unconfirmed
        release.set()
        handed.extend(h.saga_id for h, _ in await request)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(saga.start)
        nursery.start_soon(claim)
    assert handed == []
    await saga.steps(1)  # the creator's view and the journal's agree
    await saga.finish()
