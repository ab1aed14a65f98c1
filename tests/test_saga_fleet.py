"""Saga coordinators sharing a PostgreSQL journal: ownership, takeovers, outages, queries.

Several coordinator instances (each with its own journal object, so its own instance id and
lease) run in one trio run against the suite's real PostgreSQL server, with step targets that
dedupe through the suite's real Redis (``tests/saga_fleet.py``).  Time is real: leases are
short (1 s) and expired by writing the lease rows; waits are on conditions with generous
bounds, never timing assertions.  Killing whole processes is in test_saga_fleet_kill.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from actors import FleetSettings, GetHealth, HealthStatus
from actors._errors import IdempotencyConflict, JournalUnavailable
from actors._fleet._client import StoreClient, open_store_client
from actors._saga._definition import SagaFailed
from actors._saga._messages import (
    GetJournalStatus,
    GetSaga,
    GetSagaStatistics,
    ListSagas,
    SagaResult,
    SagaStarted,
    StartSaga,
)
from actors.testing import PostgresServer
from bench._fleet_effects import audit, read_effects
from tests.fixtures_postgres import drop_schema, new_schema_name
from tests.postgres_helpers import expire_lease, sql
from tests.saga_fleet import COMPENSATABLE, STEPS, Box, eventually, instance


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[StoreClient]:
    settings = FleetSettings(redis_url=redis_url, key_prefix=redis_prefix, command_timeout=5.0)
    async with open_store_client(settings) as client:
        yield client


def boxes(store: StoreClient, prefix: str, *labels: str, **options: Any) -> list[Box]:
    return [Box(label, store, prefix, **options) for label in labels]


def start(order: int, saga_id: str, *, wait: bool = True) -> StartSaga:
    return StartSaga("order", {"order": order}, saga_id=saga_id, wait=wait)


async def check_effects(store: StoreClient, prefix: str, outcomes: dict[str, str]) -> None:
    effects = await read_effects(store, prefix)
    assert audit(outcomes.items(), effects, STEPS, COMPENSATABLE) == []


async def outcomes_of(url: str, schema: str) -> dict[str, str]:
    rows = await sql(url, f'SELECT saga_id, coalesce(outcome, phase) FROM "{schema}".sagas')
    return dict(rows)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ ownership


@pytest.mark.parametrize("where", ["before_claim", "after_claim"])
async def test_an_owner_whose_lease_lapsed_stops_and_a_survivor_finishes_its_saga(
    postgres_url: str, postgres_schema: str, store: StoreClient, redis_prefix: str, where: str
) -> None:
    """A's step is held at its target while A's lease lapses: B claims the saga and re-sends
    the step with its key.  Whether A's target had claimed the key or not, the effect happens
    once (B's target waits out A's claim); A's late append is refused (OwnershipLost), A sends
    nothing more for the saga, and A's caller still gets the saga's result."""
    a_box, b_box = boxes(store, redis_prefix, "a", "b", after_claim=where == "after_claim")
    gate = a_box.gates[("s1", "reserve")] = trio.Event()
    async with (
        instance(postgres_url, postgres_schema, a_box) as a,
        instance(postgres_url, postgres_schema, b_box) as b,
    ):
        answers: list[Any] = []

        async def caller() -> None:
            answers.append(await a.sagas.ask(start(1, "s1"), timeout=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)

            async def held() -> bool:
                if where == "after_claim":
                    return a_box.claimed.is_set()
                return ("a", "s1", "reserve") in a_box.received

            await eventually(held, "A's target holds the step")
            assert a.journal._writer is not None
            a.journal._writer.renew = lambda conn: None  # type: ignore[method-assign]
            await expire_lease(postgres_url, postgres_schema, a.journal.instance_id)

            async def b_finished() -> bool:
                return (await outcomes_of(postgres_url, postgres_schema)).get("s1") == "completed"

            await eventually(b_finished, "B finishes the saga")
            gate.set()
        (result,) = answers
        assert isinstance(result, SagaResult)
        assert list(result.results) == list(STEPS)
        a_stats = await a.sagas.ask(GetSagaStatistics())
        b_stats = await b.sagas.ask(GetSagaStatistics())
        assert (a_stats.ownership_lost, a_stats.completed) == (1, 0)
        assert (b_stats.taken_over, b_stats.completed) == (1, 1)
        assert a.journal.fleet_statistics().ownership_lost == 1
        # A sent the first step only; everything after it came from B.
        assert [r for r in a_box.received if r[1] == "s1"] == [("a", "s1", "reserve")]
        assert ("b", "s1", "ship") in b_box.received
    await check_effects(store, redis_prefix, await outcomes_of(postgres_url, postgres_schema))


async def test_starting_a_saga_another_instance_runs_waits_for_its_end(
    postgres_url: str, postgres_schema: str, store: StoreClient, redis_prefix: str
) -> None:
    """StartSaga on B for an id A is running: with ``wait`` it answers the saga's outcome
    once A finishes it (through LISTEN/NOTIFY); without, at once that it started; with
    another input, IdempotencyConflict.  Nothing runs twice."""
    a_box, b_box = boxes(store, redis_prefix, "a", "b")
    gate = a_box.gates[("x", "charge")] = trio.Event()
    async with (
        instance(postgres_url, postgres_schema, a_box) as a,
        instance(postgres_url, postgres_schema, b_box) as b,
    ):
        answers: dict[str, Any] = {}

        async def ask(name: str, ref: Any, message: StartSaga) -> None:
            answers[name] = await ref.ask(message, timeout=60)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "a", a.sagas, start(7, "x"))

            async def charging() -> bool:
                return ("a", "x", "charge") in a_box.received

            await eventually(charging, "A charges")
            nursery.start_soon(ask, "b", b.sagas, start(7, "x"))
            assert await b.sagas.ask(start(7, "x", wait=False), timeout=10) == SagaStarted("x")
            with pytest.raises(IdempotencyConflict):
                await b.sagas.ask(start(8, "x"), timeout=10)
            await eventually(lambda: _waiting(b.journal), "B waits for the saga's end", within=10)
            assert "b" not in answers
            gate.set()
        assert isinstance(answers["a"], SagaResult)
        assert answers["b"] == answers["a"]
        assert not [r for r in b_box.received if r[1] == "x"]  # B sent nothing for it
    await check_effects(store, redis_prefix, await outcomes_of(postgres_url, postgres_schema))


async def _waiting(journal: Any) -> bool:
    await trio.lowlevel.checkpoint()
    return any(
        waiter.event.statistics().tasks_waiting
        for waiters in journal._finish_waiters.values()
        for waiter in waiters
    )


async def test_queries_are_fleet_wide_and_show_owners_and_instances(
    postgres_url: str, postgres_schema: str, store: StoreClient, redis_prefix: str
) -> None:
    """ListSagas and GetSaga on one instance show every instance's sagas with their owner;
    GetJournalStatus lists the live instances sharing the journal."""
    a_box, b_box = boxes(store, redis_prefix, "a", "b")
    a_box.gates[("ma", "ship")] = gate_a = trio.Event()
    b_box.gates[("mb", "ship")] = gate_b = trio.Event()
    async with (
        instance(postgres_url, postgres_schema, a_box) as a,
        instance(postgres_url, postgres_schema, b_box) as b,
    ):
        await a.sagas.ask(start(1, "ma", wait=False), timeout=10)
        await b.sagas.ask(start(2, "mb", wait=False), timeout=10)

        async def both_shipping() -> bool:
            return ("a", "ma", "ship") in a_box.received and ("b", "mb", "ship") in b_box.received

        await eventually(both_shipping, "both sagas are at their last step")
        listed = await a.sagas.ask(ListSagas(), timeout=10)
        assert [(s.saga_id, s.owner) for s in listed] == [
            ("ma", a.journal.instance_id),
            ("mb", b.journal.instance_id),
        ]
        info = await a.sagas.ask(GetSaga("mb"), timeout=10)
        assert (info.owner, info.owner_alive, info.running_here) == (
            b.journal.instance_id,
            True,
            False,
        )
        status = await a.sagas.ask(GetJournalStatus(), timeout=10)
        assert (status.kind, status.available, status.instance_id) == (
            "PostgresJournal",
            True,
            a.journal.instance_id,
        )
        live = {i.instance_id: i.sagas_owned for i in status.instances if i.alive}
        assert live == {a.journal.instance_id: 1, b.journal.instance_id: 1}
        assert status.fleet is not None
        assert status.fleet.available
        gate_a.set()
        gate_b.set()


# -------------------------------------------------------------------------------- outages


async def test_sagas_pause_while_the_server_is_down_and_finish_after_it_restarts(
    postgres_server: PostgresServer, store: StoreClient, redis_prefix: str
) -> None:
    """The server stops with sagas in flight: they pause (nothing is sent past a write that
    did not commit), health turns degraded with the journal's reason, and a new StartSaga
    fails with JournalUnavailable within its deadline.  Once the server is back, every saga
    finishes by itself, each effect applied exactly once, and health is healthy again."""
    url = postgres_server.url
    schema = new_schema_name()
    (box,) = boxes(store, redis_prefix, "a", decline_rate=0.3, seed=3)
    box.gates[("s0", "charge")] = gate = trio.Event()  # one saga surely in flight
    try:
        async with instance(url, schema, box, write_timeout=0.5) as a:
            answers: dict[str, Any] = {}

            async def caller(n: int) -> None:
                try:
                    answers[f"s{n}"] = await a.sagas.ask(start(n, f"s{n}"), timeout=120)
                except Exception as exc:
                    answers[f"s{n}"] = exc

            async with trio.open_nursery() as nursery:
                for n in range(12):
                    nursery.start_soon(caller, n)

                async def charging() -> bool:
                    return ("a", "s0", "charge") in box.received

                await eventually(charging, "s0 is charging")
                await trio.to_thread.run_sync(postgres_server.stop)
                gate.set()  # its completion cannot be journaled now: the saga pauses

                async def degraded() -> bool:
                    health = await a.root.ref("monitor").ask(GetHealth())
                    return any("saga journal unavailable" in r for r in health.reasons)

                await eventually(degraded, "health shows the journal down")
                health = await a.root.ref("monitor").ask(GetHealth())
                assert health.status is HealthStatus.DEGRADED
                with trio.fail_after(30), pytest.raises(JournalUnavailable) as info:
                    await a.sagas.ask(start(99, "new"), timeout=2.0)
                assert info.value.category.value == "dependency"
                sent_while_down = len(box.received)
                await trio.to_thread.run_sync(postgres_server.start)
            stats = await a.sagas.ask(GetSagaStatistics())
            assert stats.journal_waits >= 1
            assert len(answers) == 12
            for value in answers.values():  # their outcomes: no JournalUnavailable, no timeout
                assert isinstance(value, SagaResult) or (
                    isinstance(value, SagaFailed) and value.outcome == "compensated"
                ), value
            assert sent_while_down <= len(box.received)

            async def healthy() -> bool:
                health = await a.root.ref("monitor").ask(GetHealth())
                return health.dependencies["saga journal"].state == "ok"

            await eventually(healthy, "health shows the journal back")
        outcomes = await outcomes_of(url, schema)
        assert set(outcomes.values()) <= {"completed", "compensated"}
        assert "new" not in outcomes
        await check_effects(store, redis_prefix, outcomes)
    finally:
        await trio.to_thread.run_sync(drop_schema, url, schema)


async def test_a_write_in_doubt_stops_the_saga_until_the_journal_hands_it_back(
    postgres_server: PostgresServer, store: StoreClient, redis_prefix: str
) -> None:
    """The server hangs mid-run (its backend frozen): writes that cannot commit within
    write_timeout are in doubt, so their sagas stop where they are, sending nothing more.
    When the server answers again the journal hands them back and they finish, each effect
    once; their callers get their outcomes."""
    url = postgres_server.url
    schema = new_schema_name()
    (box,) = boxes(store, redis_prefix, "a")
    box.gates[("d0", "charge")] = gate = trio.Event()
    try:
        async with instance(url, schema, box, write_timeout=0.5) as a:
            answers: dict[str, Any] = {}

            async def caller(n: int) -> None:
                answers[f"d{n}"] = await a.sagas.ask(start(n, f"d{n}"), timeout=120)

            async with trio.open_nursery() as nursery:
                for n in range(6):
                    nursery.start_soon(caller, n)

                async def charging() -> bool:
                    return ("a", "d0", "charge") in box.received

                await eventually(charging, "d0 is charging")
                ((pid,),) = await sql(
                    url,
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                    (f"aura-actors journal {a.journal.instance_id[:8]}",),
                )
                os.kill(pid, signal.SIGSTOP)
                try:
                    gate.set()

                    async def in_doubt() -> bool:
                        return a.journal.fleet_statistics().writes_in_doubt > 0

                    await eventually(in_doubt, "a write is in doubt")
                finally:
                    os.kill(pid, signal.SIGCONT)
            assert len(answers) == 6
            assert all(isinstance(v, SagaResult) for v in answers.values()), answers
            stats = await a.sagas.ask(GetSagaStatistics())
            assert stats.taken_over >= 1  # handed back by the journal
        outcomes = await outcomes_of(url, schema)
        assert set(outcomes.values()) == {"completed"}
        await check_effects(store, redis_prefix, outcomes)
    finally:
        await trio.to_thread.run_sync(drop_schema, url, schema)


async def test_an_instance_leaves_sagas_of_definitions_it_does_not_know(
    postgres_url: str, postgres_schema: str
) -> None:
    """claim_orphans(definitions=...) claims only sagas of those definitions."""
    from tests.postgres_helpers import open_journal
    from tests.test_journal import Driver

    a = await open_journal(postgres_url, postgres_schema)
    b = await open_journal(postgres_url, postgres_schema)
    try:
        await Driver(a, "s").start()  # its definition is "video" (tests.test_journal.header)
        await a.aclose()
        assert await b.claim_orphans(definitions=["other"]) == []
        assert [h.saga_id for h, _ in await b.claim_orphans(definitions=["video", "x"])] == ["s"]
    finally:
        await b.aclose()
