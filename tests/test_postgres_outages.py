"""PostgresJournal when its server is down, restarts, hangs, or loses an acknowledgement.

Each test runs its own server (``postgres_server``) so it can stop, kill, freeze and restart
it.  Time is real (the journal's threads wait on real sockets); bounds on how long a call
may take are deadlines the journal promises (``write_timeout``), checked with generous
margins, never performance figures.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import pytest
import trio

from actors._errors import JournalUnavailable
from actors._saga._journals._postgres._journal import PostgresJournal
from actors._saga._journals._records import JournalError, SagaEventKind, SagaHeader, SagaPhase
from actors._saga._journals._state import saga_state
from actors.testing import PostgresServer
from tests.fixtures_postgres import new_schema_name
from tests.postgres_helpers import open_journal, sql, waiting_for_end
from tests.test_journal import Driver, ev, header

K = SagaEventKind
P = SagaPhase
WRITE_TIMEOUT = 0.5
#: Generous bound on how long a call may take past write_timeout (a loaded 2-core machine).
MARGIN = 10.0


_schemas: dict[str, str] = {}


async def _journal(server: PostgresServer, **options: Any) -> PostgresJournal:
    """A journal on a schema of its own (the server is shared by this module's tests)."""
    options.setdefault("write_timeout", WRITE_TIMEOUT)
    schema = _schemas[server.url] = new_schema_name()
    return await open_journal(server.url, schema, **options)


async def _stored(url: str, saga_id: str) -> list[tuple[Any, ...]]:
    """(seq, kind, step) of a saga's stored events, in the schema of the last _journal."""
    schema = _schemas[url]
    return await sql(
        url,
        f"SELECT e.seq, e.kind, e.step FROM {schema}.events AS e JOIN {schema}.sagas AS s "
        "USING (saga_no) WHERE s.saga_id = %s ORDER BY e.seq",
        (saga_id,),
    )


async def test_writes_fail_within_the_timeout_while_the_server_is_down_and_land_after(
    postgres_server: PostgresServer,
) -> None:
    """With the server down, a queued write raises JournalUnavailable (in doubt) within
    write_timeout and later calls are refused at once with nothing written; once the server
    is back the journal reconnects by itself, the queued write lands exactly once, the saga
    is handed back by claim_orphans, a waiter for its end is woken, and it goes on."""
    journal = await _journal(postgres_server)
    finished: list[SagaPhase | None] = []
    try:
        saga = await Driver(journal, "a").start()
        async with trio.open_nursery() as nursery:

            async def wait_end() -> None:
                finished.append(await journal.wait_finished("a"))

            nursery.start_soon(wait_end)
            await waiting_for_end(journal)
            await trio.to_thread.run_sync(postgres_server.stop)
            with trio.fail_after(WRITE_TIMEOUT + MARGIN), pytest.raises(JournalUnavailable) as info:
                await journal.append(ev("a", 1, K.STEP_STARTED, 0))
            assert info.value.in_doubt
            assert not journal.available
            assert journal.fleet_statistics().unavailable_reason
            for refused in (
                journal.create(header("b"), ev("b", 0, K.STARTED)),
                journal.append(ev("a", 2, K.STEP_COMPLETED, 0)),
                journal.get("a"),
                journal.claim_orphans(),
            ):
                with trio.fail_after(MARGIN), pytest.raises(JournalUnavailable) as info:
                    await refused
                assert not info.value.in_doubt
            await trio.to_thread.run_sync(postgres_server.start)
            with trio.fail_after(60):
                await journal.wait_available()
            assert await _stored(postgres_server.url, "a") == [
                (0, "started", None),
                (1, "step_started", 0),
            ]
            ((h, events),) = await journal.claim_orphans()
            state = saga_state(h, events)
            assert state.phase is P.STEP_IN_FLIGHT
            state = await journal.append(state.next_event(K.STEP_COMPLETED, 0, b"r"))
            await journal.append(state.next_event(K.COMPLETED))
        assert finished == [P.COMPLETED]
        assert await journal.get("b") is None
        assert journal.fleet_statistics().reconnects >= 1
        assert journal.fleet_statistics().writes_in_doubt == 1
        assert saga.state.next_seq == 1  # the driver's own view stopped at the failure
    finally:
        await journal.aclose()


class Fleet:
    """Drives sagas the way a coordinator must through outages: retry a refused write after
    the server is back; stop on a write in doubt and resume what claim_orphans hands back."""

    def __init__(self, journal: PostgresJournal, steps: int) -> None:
        self.journal = journal
        self.steps = steps
        self.progress = 0
        self.refused = 0
        self.in_doubt = 0
        self.half = trio.Event()
        self.gate: trio.Event | None = None  # when set (and not yet open), writes wait for it
        self.target = 0

    async def write(self, call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        while True:
            try:
                return await call()
            except JournalUnavailable as exc:
                if exc.in_doubt:
                    self.in_doubt += 1
                    return None  # claim_orphans hands the saga back once settled
                self.refused += 1
                await self.journal.wait_available()

    async def start(self, saga_id: str) -> None:
        h = SagaHeader(saga_id, "fleet", 1.0, b"in")
        first = ev(saga_id, 0, K.STARTED)
        state = await self.write(
            lambda: self.journal.create(h, first, then=[ev(saga_id, 1, K.STEP_STARTED, 0)])
        )
        if state is not None:
            await self.drive(state)

    async def drive(self, state: Any) -> None:
        while not state.finished:
            i = state.step_in_flight
            done = state.next_event(K.STEP_COMPLETED, i, b"r%d" % i, at=1.0)
            after = state.advance(done)
            if i + 1 < self.steps:
                then = after.next_event(K.STEP_STARTED, i + 1, at=1.0)
            else:
                then = after.next_event(K.COMPLETED, at=1.0)
            result = await self.write(lambda d=done, t=then: self.journal.append_many([d, t]))
            if result is None:
                return
            state = result[state.saga_id]
            self.progress += 1
            if self.progress >= self.target // 2 and not self.half.is_set():
                self.gate = trio.Event()  # hold the writes until the server is down
                self.half.set()

    async def claim_loop(self, nursery: trio.Nursery, done: trio.Event) -> None:
        while not done.is_set():
            try:
                for h, events in await self.journal.claim_orphans():
                    nursery.start_soon(self.drive, saga_state(h, events))
            except JournalUnavailable:
                pass
            await trio.sleep(0.05)


@pytest.mark.parametrize("mode", ["fast", "kill"])
async def test_a_server_restart_mid_run_loses_nothing_and_applies_nothing_twice(
    postgres_server: PostgresServer, mode: str
) -> None:
    """Twelve sagas of eight steps run; halfway through, the server stops (cleanly, or killed,
    with the writes in flight then) and the drivers' next writes meet the outage; then it
    starts again: every saga completes, and each step is journaled started and completed
    exactly once."""
    journal = await _journal(postgres_server)
    sagas, steps = 12, 8
    fleet = Fleet(journal, steps)
    fleet.target = sagas * steps
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                everyone = trio.Event()
                nursery.start_soon(fleet.claim_loop, nursery, everyone)
                for i in range(sagas):
                    nursery.start_soon(fleet.start, f"s{i}")
                await fleet.half.wait()
                await trio.to_thread.run_sync(postgres_server.stop, mode)
                assert fleet.progress < fleet.target  # the outage hits the run midway
                assert fleet.gate is not None
                fleet.gate.set()
                with trio.fail_after(WRITE_TIMEOUT + MARGIN):
                    while fleet.refused + fleet.in_doubt == 0:  # noqa: ASYNC110
                        await trio.sleep(0.02)  # until the drivers have met the outage
                await trio.to_thread.run_sync(postgres_server.start)
                while True:
                    rows = await sql(
                        postgres_server.url,
                        f"SELECT count(*) FROM {journal.schema}.sagas WHERE outcome = 'completed'",
                    )
                    if rows[0][0] == sagas:
                        break
                    await trio.sleep(0.05)
                everyone.set()
        for i in range(sagas):
            found = await journal.get(f"s{i}")
            assert found is not None
            state = saga_state(*found)
            assert state.phase is P.COMPLETED
            kinds = [(e.kind, e.step) for e in found[1]]
            for step in range(steps):
                assert kinds.count((K.STEP_STARTED, step)) == 1
                assert kinds.count((K.STEP_COMPLETED, step)) == 1
        assert fleet.refused + fleet.in_doubt > 0
        assert journal.fleet_statistics().reconnects >= 1
        assert journal.statistics().sagas_open == 0
    finally:
        await journal.aclose()


async def test_a_commit_whose_acknowledgement_is_lost_is_recognised_on_replay(
    postgres_server: PostgresServer,
) -> None:
    """A batch that committed but whose connection dropped before the writer learnt it is
    replayed on a new connection; the writer recognises its own creates and appends there,
    so every caller gets its state and nothing is stored twice."""
    journal = await _journal(postgres_server, write_timeout=30.0)
    assert journal._writer is not None
    writer = journal._writer
    lost: list[int] = []

    def drop_once(conn: psycopg.Connection[Any]) -> None:
        if not lost:
            lost.append(1)
            conn.close()
            raise psycopg.OperationalError("the connection dropped after COMMIT")

    try:
        writer.after_commit = drop_once
        drivers = [Driver(journal, f"s{i}") for i in range(5)]
        async with trio.open_nursery() as nursery:
            for driver in drivers:
                nursery.start_soon(driver.start)
        assert lost == [1]
        lost.clear()
        async with trio.open_nursery() as nursery:
            for driver in drivers:
                nursery.start_soon(driver.steps, 1)
        assert lost == [1]
        writer.after_commit = None
        for driver in drivers:
            found = await journal.get(driver.header.saga_id)
            assert found is not None
            assert saga_state(*found) == driver.state
            assert len(found[1]) == 3
        assert writer.reconnects == 2
        assert journal.statistics().sagas_open == 5
    finally:
        await journal.aclose()


async def test_a_server_that_stops_answering_fails_callers_within_the_timeout(
    postgres_server: PostgresServer,
) -> None:
    """A server process that hangs mid-commit (SIGSTOP) cannot answer: the watchdog fails
    the caller within write_timeout and marks the journal unavailable; when it resumes, the
    write lands and the saga is handed back."""
    journal = await _journal(postgres_server)
    try:
        await Driver(journal, "a").start()
        ((pid,),) = await sql(
            postgres_server.url,
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (f"aura-actors journal {journal.instance_id[:8]}",),
        )
        os.kill(pid, signal.SIGSTOP)
        try:
            with trio.fail_after(WRITE_TIMEOUT + MARGIN), pytest.raises(JournalUnavailable) as info:
                await journal.append(ev("a", 1, K.STEP_STARTED, 0))
            assert info.value.in_doubt
            with trio.fail_after(MARGIN):
                while journal.available:  # noqa: ASYNC110 (set by the watchdog's thread)
                    await trio.sleep(0.02)
        finally:
            os.kill(pid, signal.SIGCONT)
        with trio.fail_after(60):
            await journal.wait_available()
            handed: list[Any] = []
            while not handed:
                handed = await journal.claim_orphans()
        ((h, events),) = handed
        assert [e.seq for e in events] == [0, 1]
        assert saga_state(h, events).phase is P.STEP_IN_FLIGHT
    finally:
        await journal.aclose()


async def test_a_create_with_a_shorter_bound_hears_of_a_hung_server_within_it(
    postgres_server: PostgresServer,
) -> None:
    """``create(answer_within=...)`` raises JournalUnavailable (in doubt) within its bound
    while the server hangs, though write_timeout is far longer; the create stays queued,
    lands once the server answers, and claim_orphans hands the saga out."""
    journal = await _journal(postgres_server, write_timeout=120.0)
    try:
        ((pid,),) = await sql(
            postgres_server.url,
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (f"aura-actors journal {journal.instance_id[:8]}",),
        )
        os.kill(pid, signal.SIGSTOP)
        try:
            with trio.fail_after(60), pytest.raises(JournalUnavailable) as info:
                await journal.create(header("a"), ev("a", 0, K.STARTED), answer_within=0.2)
            assert info.value.in_doubt
        finally:
            os.kill(pid, signal.SIGCONT)
        with trio.fail_after(60):
            handed: list[Any] = []
            while not handed:  # the create settles on the writer's thread
                handed = await journal.claim_orphans()
                await trio.sleep(0.02)
        ((h, events),) = handed
        assert h.saga_id == "a"
        assert [e.seq for e in events] == [0]
    finally:
        await journal.aclose()


async def test_an_error_that_is_not_transient_fails_the_journal_for_good(
    postgres_server: PostgresServer,
) -> None:
    """A transaction failing for a reason a retry cannot fix, and that no single request's
    values explain (a table gone), fails every waiting and later call with JournalError;
    nothing of that batch is stored."""
    journal = await _journal(postgres_server)
    assert journal._writer is not None

    def broken(conn: psycopg.Connection[Any]) -> None:
        raise psycopg.errors.UndefinedTable('relation "events" does not exist')

    try:
        saga = await Driver(journal, "a").start()
        journal._writer.before_commit = broken
        with pytest.raises(JournalError, match="failed"):
            await saga.go(K.STEP_STARTED, 0)
        with pytest.raises(JournalError, match="failed"):
            await journal.get("a")
        assert len(await _stored(postgres_server.url, "a")) == 1
    finally:
        await journal.aclose()


async def test_closing_while_the_server_is_down_gives_up_after_the_timeout(
    postgres_server: PostgresServer,
) -> None:
    """aclose with writes queued and the server down returns after about write_timeout; the
    writes that never committed are not stored (their callers were told they were in
    doubt)."""
    journal = await _journal(postgres_server)
    await Driver(journal, "a").start()
    await trio.to_thread.run_sync(postgres_server.stop)
    with pytest.raises(JournalUnavailable):
        await journal.append(ev("a", 1, K.STEP_STARTED, 0))
    with trio.fail_after(WRITE_TIMEOUT + MARGIN):
        await journal.aclose()
    await trio.to_thread.run_sync(postgres_server.start)
    assert await _stored(postgres_server.url, "a") == [(0, "started", None)]
