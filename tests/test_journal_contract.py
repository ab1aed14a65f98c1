"""The journal contract: the same tests against the memory, SQLite and PostgreSQL journals.

Every journal keeps the same records and semantics (validation, write-ahead, all-or-nothing
batches, retention, restarts); each test runs once per implementation, each built through its
public constructor (the Postgres one on the suite's server, in a fresh schema per test).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import hypothesis.strategies as st
import msgspec
import pytest
import trio
from hypothesis import given, settings

from actors._errors import ConfigError
from actors._saga._journals._memory import MemoryJournal
from actors._saga._journals._postgres._journal import PostgresJournal
from actors._saga._journals._records import (
    Journal,
    JournalError,
    JournalStatistics,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaSequenceError,
)
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._journals._state import saga_state
from tests.fixtures_postgres import drop_schema, new_schema_name
from tests.test_journal import Driver, ev, header

K = SagaEventKind
P = SagaPhase


@attrs.define
class Kit:
    """Builds one journal implementation, through its public constructor, and "restarts" it
    the way a crashed process would: the memory journal by a snapshot, the SQLite journal by
    reopening its file, the Postgres journal by a new instance that takes over the sagas of
    the one closed (a fresh instance owns nothing until it claims)."""

    kind: str
    path: Path
    postgres: tuple[str, str] | None = None  # (url, schema)
    journals: list[Any] = attrs.field(factory=list)

    async def _new(self, **options: Any) -> Any:
        if self.kind == "memory":
            return MemoryJournal(**options)
        if self.kind == "sqlite":
            journal: Any = SqliteJournal(self.path, synchronous="NORMAL", **options)
        else:
            assert self.postgres is not None
            url, schema = self.postgres
            journal = PostgresJournal(url, schema=schema, **options)
        await journal.open()
        return journal

    async def open(self, **options: Any) -> Any:
        journal = await self._new(**options)
        self.journals.append(journal)
        return journal

    async def reopen(self, journal: Any, **options: Any) -> Any:
        if self.kind == "memory":
            again = journal.snapshot()
            await journal.aclose()
        elif self.kind == "sqlite":
            await journal.aclose()
            again = await self._new(**options)
        else:
            again = await self._new(**options)  # a survivor, connected before the close
            await journal.aclose()  # expires the old instance's lease at once
            await again.claim_orphans()
        self.journals.append(again)
        return again


KINDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=KINDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    postgres = None
    if request.param == "postgres":
        postgres = (
            request.getfixturevalue("postgres_url"),
            request.getfixturevalue("postgres_schema"),
        )
    made = Kit(request.param, tmp_path / "journal.db", postgres)
    yield made
    for journal in made.journals:
        await journal.aclose()


@pytest.fixture
async def journal(kit: Kit) -> Any:
    return await kit.open()


async def test_a_pair_of_one_saga_is_all_or_nothing(journal: Any) -> None:
    """A step's completion followed by an invalid event stores neither; the valid pair then
    lands and reads back in order."""
    h = header("pair")
    state = await journal.create(h, ev("pair", 0, K.STARTED))
    state = await journal.append(ev("pair", 1, K.STEP_STARTED, 0))
    with pytest.raises(SagaSequenceError):
        await journal.append_many(
            [ev("pair", 2, K.STEP_COMPLETED, 0, b"r"), ev("pair", 3, K.STEP_STARTED, 5)]
        )
    found = await journal.get("pair")
    assert [e.seq for e in found[1]] == [0, 1]
    states = await journal.append_many(
        [ev("pair", 2, K.STEP_COMPLETED, 0, b"r"), ev("pair", 3, K.STEP_STARTED, 1)]
    )
    assert states["pair"] == state.advance(ev("pair", 2, K.STEP_COMPLETED, 0, b"r")).advance(
        ev("pair", 3, K.STEP_STARTED, 1)
    )
    found = await journal.get("pair")
    assert found[1] == [
        ev("pair", 0, K.STARTED),
        ev("pair", 1, K.STEP_STARTED, 0),
        ev("pair", 2, K.STEP_COMPLETED, 0, b"r"),
        ev("pair", 3, K.STEP_STARTED, 1),
    ]


def test_every_journal_implements_the_protocol(tmp_path: Path) -> None:
    """MemoryJournal, SqliteJournal and PostgresJournal are Journals (checked by mypy on this
    file)."""
    journals: list[Journal] = [
        MemoryJournal(),
        SqliteJournal(tmp_path / "j.db"),
        PostgresJournal("postgresql://nobody@127.0.0.1:1/none"),
    ]
    assert all(callable(j.append_many) for j in journals)


async def test_create_then_get_returns_the_saga_and_its_events(journal: Any) -> None:
    """get returns the header (metadata JSON-normalised) and every event, in order."""
    saga = await Driver(journal, "a").start()
    await saga.steps(2)
    found = await journal.get("a")
    assert found is not None
    got_header, events = found
    assert got_header == msgspec.structs.replace(saga.header, metadata={"user": "u1", "n": [1, 2]})
    assert [e.seq for e in events] == list(range(5))
    assert saga_state(got_header, events) == saga.state
    assert await journal.get("missing") is None


async def test_duplicate_saga_ids_are_refused(journal: Any) -> None:
    """Creating a saga whose id is in the journal (running or finished) raises JournalError."""
    await Driver(journal, "a").start()
    with pytest.raises(JournalError, match="already exists"):
        await Driver(journal, "a").start()
    done = await Driver(journal, "b").start()
    await done.finish()
    with pytest.raises(JournalError, match="already exists"):
        await Driver(journal, "b").start()
    found = await journal.get("b")
    assert found is not None
    assert len(found[1]) == 2


async def test_a_create_must_start_with_a_started_event(journal: Any) -> None:
    """A create whose first event is not started/seq 0 is rejected and stores nothing."""
    h = header("a")
    for bad in (ev("a", 0, K.STEP_STARTED, 0), ev("a", 1, K.STARTED), ev("b", 0, K.STARTED)):
        with pytest.raises(SagaSequenceError):
            await journal.create(h, bad)
    assert await journal.get("a") is None
    assert journal.statistics().rows == 0


async def test_a_create_can_carry_the_first_steps_start(journal: Any, kit: Kit) -> None:
    """create(..., then=[step_started(0)]) stores both events in one write; events that are
    invalid or end the saga are refused and nothing is stored."""
    h = header("t")
    with pytest.raises(SagaSequenceError, match="unfinished"):
        await journal.create(h, ev("t", 0, K.STARTED), then=[ev("t", 1, K.COMPLETED)])
    with pytest.raises(SagaSequenceError):
        await journal.create(h, ev("t", 0, K.STARTED), then=[ev("t", 1, K.STEP_STARTED, 3)])
    assert await journal.get("t") is None
    commits = journal.statistics().commits
    state = await journal.create(h, ev("t", 0, K.STARTED), then=[ev("t", 1, K.STEP_STARTED, 0)])
    assert state.phase is P.STEP_IN_FLIGHT
    assert state.step_in_flight == 0
    assert journal.statistics().commits == commits + 1
    assert journal.statistics().rows == 2
    with pytest.raises(JournalError, match="already exists"):
        await journal.create(h, ev("t", 0, K.STARTED), then=[ev("t", 1, K.STEP_STARTED, 0)])
    state = await journal.append(ev("t", 2, K.STEP_COMPLETED, 0, b"r"))
    reopened = await kit.reopen(journal)
    found = await reopened.get("t")
    assert found is not None
    assert found[1] == [
        ev("t", 0, K.STARTED),
        ev("t", 1, K.STEP_STARTED, 0),
        ev("t", 2, K.STEP_COMPLETED, 0, b"r"),
    ]
    assert saga_state(*found) == state


async def test_invalid_appends_store_nothing_and_the_saga_stays_usable(journal: Any) -> None:
    """An invalid event raises SagaSequenceError; the saga continues from where it was."""
    saga = await Driver(journal, "a").start()
    with pytest.raises(SagaSequenceError):
        await journal.append(ev("a", 1, K.STEP_COMPLETED, 0))
    with pytest.raises(SagaSequenceError, match="not open"):
        await journal.append(ev("nobody", 0, K.STEP_STARTED, 0))
    await saga.steps(1)
    found = await journal.get("a")
    assert found is not None
    assert [e.kind for e in found[1]] == [K.STARTED, K.STEP_STARTED, K.STEP_COMPLETED]


async def test_append_many_is_all_or_nothing_across_sagas(journal: Any) -> None:
    """append_many stores events of several sagas in order, or none if one is invalid."""
    a = await Driver(journal, "a").start()
    b = await Driver(journal, "b").start()
    good = [a.event(K.STEP_STARTED, 0), b.event(K.STEP_STARTED, 0), a.event(K.STEP_COMPLETED, 0)]
    assert await journal.append_many(good) == {"a": a.state, "b": b.state}
    bad = [b.event(K.STEP_COMPLETED, 0), ev("b", 3, K.STEP_COMPLETED, 5)]
    with pytest.raises(SagaSequenceError):
        await journal.append_many(bad)
    found_a, found_b = await journal.get("a"), await journal.get("b")
    assert found_a is not None
    assert found_b is not None
    assert len(found_a[1]) == 3
    assert len(found_b[1]) == 2  # the valid first event of the bad batch was not stored


async def test_no_event_may_follow_the_end_of_a_saga(journal: Any) -> None:
    """After a terminal event the saga is closed to appends."""
    saga = await Driver(journal, "a").start()
    await saga.finish(K.CANCELLED)
    with pytest.raises(SagaSequenceError):
        await journal.append(ev("a", 2, K.STEP_STARTED, 0))


async def test_load_unfinished_returns_running_sagas_oldest_first(journal: Any) -> None:
    """load_unfinished: every running or compensating saga, by creation time; no finished."""
    newer = await Driver(journal, "newer", created_at=3000.0).start()
    older = await Driver(journal, "older", created_at=1000.0).start()
    await older.steps(1)
    await older.go(K.STEP_STARTED, 1)
    comp = await Driver(journal, "comp", created_at=2000.0).start()
    await comp.steps(2)
    await comp.go(K.COMPENSATING, data=b"why")
    await comp.go(K.COMPENSATION_STARTED, 1)
    for name, end in (("done", K.COMPLETED), ("stuck", K.COMPENSATION_FAILED)):
        saga = await Driver(journal, name, created_at=500.0).start()
        if end is K.COMPENSATION_FAILED:
            await saga.go(K.COMPENSATING)
        await saga.finish(end)
    loaded = await journal.load_unfinished()
    assert [h.saga_id for h, _ in loaded] == ["older", "comp", "newer"]
    states = {h.saga_id: saga_state(h, events) for h, events in loaded}
    assert states["older"] == older.state
    assert states["older"].step_in_flight == 1
    assert states["comp"].phase is P.COMPENSATION_IN_FLIGHT
    assert states["newer"] == newer.state


async def test_list_unfinished_includes_sagas_waiting_for_an_operator(journal: Any) -> None:
    """list_unfinished summarises running sagas and compensation_failed ones, oldest first."""
    run = await Driver(journal, "run", created_at=2000.0).start()
    await run.steps(1)
    stuck = await Driver(journal, "stuck", created_at=1000.0).start()
    await stuck.steps(1)
    await stuck.go(K.COMPENSATING)
    await stuck.go(K.COMPENSATION_STARTED, 0)
    await stuck.go(K.COMPENSATION_FAILED, 0)
    done = await Driver(journal, "done").start()
    await done.finish()
    summaries = await journal.list_unfinished()
    assert [(s.saga_id, s.phase) for s in summaries] == [
        ("stuck", P.COMPENSATION_FAILED),
        ("run", P.RUNNING),
    ]
    assert summaries[1].next_step == 1
    assert summaries[1].events == 3
    assert summaries[1].metadata == {"user": "u1", "n": [1, 2]}
    stats = journal.statistics()
    assert (stats.sagas_open, stats.sagas_needing_attention) == (1, 1)


async def test_a_restarted_journal_has_every_saga_in_the_same_state(kit: Kit) -> None:
    """After a restart, unfinished sagas fold to the state they had; new events continue."""
    journal = await kit.open()
    saga = await Driver(journal, "a").start()
    await saga.steps(2)
    await saga.go(K.STEP_STARTED, 2)
    stuck = await Driver(journal, "stuck").start()
    await stuck.go(K.COMPENSATING)
    await stuck.go(K.COMPENSATION_FAILED)
    again = await kit.reopen(journal)
    ((h, events),) = await again.load_unfinished()
    assert saga_state(h, events) == saga.state
    assert [s.saga_id for s in await again.list_unfinished()] == ["a", "stuck"]
    saga.journal = again
    await saga.go(K.STEP_COMPLETED, 2)
    await saga.finish()
    assert await again.load_unfinished() == []


async def test_pruning_keeps_unfinished_and_operator_sagas(journal: Any) -> None:
    """prune_finished removes old and surplus finished sagas, never running or stuck ones."""
    running = await Driver(journal, "running").start()
    stuck = await Driver(journal, "stuck").start()
    await stuck.go(K.COMPENSATING)
    await stuck.go(K.COMPENSATION_FAILED)
    for i in range(5):
        saga = await Driver(journal, f"f{i}").start()
        await saga.steps(i)
        await saga.finish()  # f_i finishes at seq 1 + 2i, so at 2001 + 2i
    assert await journal.prune_finished(older_than=10_000.0, keep_last=3, now=5000.0) == 2
    assert await journal.get("f0") is None
    assert await journal.get("f1") is None
    assert await journal.get("f2") is not None
    # Age: everything finished before now - 4 = 2005.5 goes (f2 ended at 2005.0).
    assert await journal.prune_finished(older_than=4.0, keep_last=100, now=2009.5) == 1
    assert await journal.get("f2") is None
    assert await journal.get("f3") is not None
    assert await journal.prune_finished(older_than=1.0, keep_last=0, now=1e9) == 2
    assert await journal.get("running") is not None
    assert await journal.get("stuck") is not None
    assert journal.statistics().sagas_pruned == 5
    await running.steps(1)


async def test_journals_prune_themselves_to_stay_bounded(kit: Kit) -> None:
    """With retain_last=10 (pruned every finish), 60 finished sagas leave the last 10."""
    journal = await kit.open(retain_last=10)
    base = time.time()
    running = await Driver(journal, "running", at=base).start()
    for i in range(60):
        saga = await Driver(journal, f"s{i}", at=base + i).start()
        await saga.finish()
    kept = [i for i in range(60) if await journal.get(f"s{i}") is not None]
    assert kept == list(range(50, 60))
    assert journal.statistics().sagas_pruned == 50
    assert await journal.get("running") is not None
    await running.steps(1)


async def test_discard_removes_only_finished_sagas(journal: Any) -> None:
    """discard removes a finished (or stuck) saga; refuses a running one; False if unknown."""
    running = await Driver(journal, "running").start()
    stuck = await Driver(journal, "stuck").start()
    await stuck.go(K.COMPENSATING)
    await stuck.go(K.COMPENSATION_FAILED)
    with pytest.raises(JournalError, match="not finished"):
        await journal.discard("running")
    assert await journal.discard("stuck") is True
    assert await journal.discard("stuck") is False
    assert await journal.discard("never") is False
    assert [s.saga_id for s in await journal.list_unfinished()] == ["running"]
    assert await journal.get("stuck") is None
    await running.steps(1)


async def test_statistics_count_writes_rows_and_bytes(journal: Any) -> None:
    """statistics() counts write calls, rows and bytes of payload, metadata and data."""
    saga = await Driver(journal, "a").start()
    await saga.go(K.STEP_STARTED, 0, b"12345")
    await journal.append_many([saga.event(K.STEP_COMPLETED, 0, b"abc"), saga.event(K.COMPLETED)])
    stats = journal.statistics()
    assert isinstance(stats, JournalStatistics)
    assert (stats.appends, stats.rows) == (3, 4)
    metadata = len(msgspec.json.encode({"user": "u1", "n": [1, 2]}))
    assert stats.bytes_written == len(b"input") + metadata + 5 + 3
    assert stats.commits <= stats.appends
    assert stats.rows_per_commit == stats.rows / stats.commits
    assert stats.queue_depth == 0
    assert (stats.sagas_open, stats.sagas_needing_attention) == (0, 0)


async def test_a_closed_journal_refuses_every_call(journal: Any) -> None:
    """After aclose (idempotent) every call raises JournalError."""
    await journal.aclose()
    await journal.aclose()
    with pytest.raises(JournalError, match="closed"):
        await Driver(journal, "a").start()
    with pytest.raises(JournalError, match="closed"):
        await journal.get("a")
    with pytest.raises(JournalError, match="closed"):
        await journal.list_unfinished()


async def test_a_caller_cancelled_before_writing_writes_nothing(journal: Any) -> None:
    """A write called inside an already-cancelled scope raises Cancelled and stores nothing."""
    saga = await Driver(journal, "a").start()
    event = saga.event(K.STEP_STARTED, 0)
    with trio.CancelScope() as scope:
        scope.cancel()
        await journal.append(event)
    assert scope.cancelled_caught
    found = await journal.get("a")
    assert found is not None
    assert len(found[1]) == 1
    await journal.append(event)  # still the valid next event: nothing advanced


async def test_bad_headers_are_rejected_with_the_field_named(journal: Any) -> None:
    """Headers with a non-JSON or oversized metadata, or a non-bytes payload, are rejected."""
    first = ev("a", 0, K.STARTED)
    with pytest.raises(TypeError, match="metadata"):
        await journal.create(header("a", metadata={"x": object()}), first)
    with pytest.raises(ValueError, match="at most"):
        await journal.create(header("a", metadata={"x": "y" * 70_000}), first)
    with pytest.raises(TypeError, match="payload"):
        await journal.create(SagaHeader("a", "d", 1.0, "text"), first)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="saga_id"):
        await journal.create(SagaHeader("", "d", 1.0), ev("", 0, K.STARTED))
    assert await journal.get("a") is None


def test_bad_retention_settings_raise_config_errors() -> None:
    """Retention must be positive seconds and a count >= 0; errors name the setting."""
    with pytest.raises(ConfigError, match="retain_for"):
        MemoryJournal(retain_for=0)
    with pytest.raises(ConfigError, match="retain_last"):
        MemoryJournal(retain_last=-1)
    with pytest.raises(ConfigError, match="synchronous"):
        SqliteJournal("x.db", synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pending"):
        SqliteJournal("x.db", max_pending=0)
    url = "postgresql://app@127.0.0.1/app"
    for setting, bad in (
        ("retain_for", 0),
        ("retain_last", -1),
        ("max_pending", 0),
        ("lease_duration", -1.0),
        ("write_timeout", float("nan")),
        ("schema", "no-dashes"),
        ("schema", "x" * 64),
    ):
        with pytest.raises(ConfigError, match=setting):
            PostgresJournal(url, **{setting: bad})
    with pytest.raises(ConfigError, match="url"):
        PostgresJournal("")


# ------------------------------------------------------------------- pruning as a property


@settings(max_examples=25)
@given(
    outcomes=st.lists(st.sampled_from(["open", "completed", "compensation_failed"]), max_size=12),
    older_than=st.floats(1.0, 30.0),
    keep_last=st.integers(0, 12),
    impl=st.sampled_from(KINDS),
)
def test_pruning_matches_the_retention_rule(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    outcomes: list[str],
    older_than: float,
    keep_last: int,
    impl: str,
) -> None:
    """Kept: unfinished, compensation_failed, and finished sagas recent AND in the last N."""
    path = tmp_path_factory.mktemp("prune") / "j.db"
    schema = new_schema_name()

    async def main() -> set[str]:
        kit = Kit(impl, path, (postgres_url, schema))
        journal = await kit.open(auto_prune=False)
        try:
            for i, what in enumerate(outcomes):
                saga = await Driver(journal, f"s{i}", at=float(i)).start()
                if what == "completed":
                    await saga.finish()
                elif what == "compensation_failed":
                    await saga.go(K.COMPENSATING)
                    await saga.finish(K.COMPENSATION_FAILED)
            await journal.prune_finished(older_than=older_than, keep_last=keep_last, now=20.0)
            return {f"s{i}" for i in range(len(outcomes)) if await journal.get(f"s{i}")}
        finally:
            await journal.aclose()

    try:
        kept = trio.run(main)
    finally:
        drop_schema(postgres_url, schema)
    finished = [i for i, what in enumerate(outcomes) if what == "completed"]
    recent_rank = {i: rank for rank, i in enumerate(sorted(finished, reverse=True))}
    expected = {
        f"s{i}"
        for i, what in enumerate(outcomes)
        if what != "completed" or (recent_rank[i] < keep_last and i >= 20.0 - older_than)
    }
    assert kept == expected


async def test_a_pair_that_ends_the_saga_finishes_it(kit: Kit) -> None:
    """The last step's completion and the saga's end in one write: the saga is finished (no
    longer listed, no event may follow) and reads back so after a restart."""
    journal = await kit.open()
    saga = await Driver(journal, "end", at=7.0).start()
    await saga.go(K.STEP_STARTED, 0)
    done = saga.event(K.STEP_COMPLETED, 0, b"r")
    end = saga.event(K.COMPLETED)
    before = journal.statistics()
    states = await journal.append_many([done, end])
    assert states == {"end": saga.state}
    assert saga.state.phase is P.COMPLETED
    assert await journal.list_unfinished() == []
    after = journal.statistics()
    assert (after.rows - before.rows, after.bytes_written - before.bytes_written) == (2, 1)
    with pytest.raises(SagaSequenceError):
        await journal.append(ev("end", 4, K.STEP_STARTED, 1))
    again = await kit.reopen(journal)
    found = await again.get("end")
    assert found is not None
    assert saga_state(*found) == saga.state
    assert await again.load_unfinished() == []
