"""The fleet breaker gate: the sans-I/O view the hot path reads, and fleet members sharing one
store (in memory under MockClock, and on the real server)."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import ErrorCategory
from actors._fleet._breaker_store import BreakerSnapshot
from actors._fleet._breaker_view import FleetBreakerView, GateVerdict, trip_scope
from actors._fleet._breakers import FleetBreakers
from actors._fleet._memory import MemoryServer
from actors._policies._breaker import BreakerSettings, BreakerState
from tests.fixtures_redis import StoreEnv

BREAKER = BreakerSettings(break_duration=0.5, break_duration_factor=2.0, max_break_duration=5.0)

# ----------------------------------------------------------------------------- the view

snapshots = st.builds(
    BreakerSnapshot,
    name=st.just("p"),
    state=st.sampled_from(["closed", "open", "half_open", "isolated"]),
    epoch=st.integers(0, 20),
    open_ms=st.integers(0, 5000),
    break_ms=st.integers(0, 5000),
    streak=st.integers(0, 5),
    probe_owner=st.sampled_from(["", "me", "other"]),
    probe_ms=st.integers(0, 5000),
    votes=st.integers(0, 3),
)


def expected_verdict(snap: BreakerSnapshot, received: float, now: float) -> GateVerdict:
    """The gate's rules written out from the snapshot (the model)."""
    if now > received + 2.0:
        return GateVerdict.IGNORE
    if snap.state == "closed":
        return GateVerdict.PASS
    if snap.state == "open":
        return GateVerdict.REJECT if now < received + snap.open_ms / 1000 else GateVerdict.PROBE
    if snap.state == "half_open":
        mine = snap.probe_owner == "me"
        lapsed = now >= received + snap.probe_ms / 1000
        return GateVerdict.PROBE if mine or lapsed else GateVerdict.REJECT
    return GateVerdict.REJECT


@given(snap=snapshots, received=st.floats(0, 1e6), later=st.floats(0, 10))
def test_the_view_verdict_follows_the_snapshot(
    snap: BreakerSnapshot, received: float, later: float
) -> None:
    """check(now) is what the snapshot says, with times taken relative to its receipt."""
    view = FleetBreakerView("p", "me", stale_after=2.0)
    view.replace(snap, received)
    now = received + later
    assert view.check(now) is expected_verdict(snap, received, now)
    retry = view.retry_after(now)
    if snap.state == "isolated":
        assert retry is None
    else:
        assert retry is not None
        assert retry >= 0.0


@given(updates=st.lists(st.tuples(snapshots, st.booleans()), max_size=30))
def test_published_changes_never_move_the_view_back(
    updates: list[tuple[BreakerSnapshot, bool]],
) -> None:
    """Applied changes keep the view at the highest epoch seen; a read (replace) may go back
    (a store restarted empty) and is taken whole."""
    view = FleetBreakerView("p", "me", stale_after=2.0)
    highest = -1
    for i, (snap, is_read) in enumerate(updates):
        if is_read:
            view.replace(snap, float(i))
            highest = snap.epoch
            assert view.state is BreakerState(snap.state)
        else:
            taken = view.apply(snap, float(i), authoritative=False)
            assert taken == (snap.epoch >= highest)
            highest = max(highest, snap.epoch)
        assert view.epoch == highest


def test_a_new_view_is_ignored_until_its_first_update() -> None:
    """Before any read the gate is ignored (the local breaker decides)."""
    view = FleetBreakerView("p", "me", stale_after=2.0)
    assert view.check(0.0) is GateVerdict.IGNORE
    view.replace(BreakerSnapshot("p", "closed", 0, 0, 0, 0, "", 0, 0), 10.0)
    assert view.check(10.0) is GateVerdict.PASS
    assert view.check(12.0) is GateVerdict.PASS
    assert view.check(12.001) is GateVerdict.IGNORE
    view.touch(12.0)
    assert view.check(12.001) is GateVerdict.PASS
    view.expire()
    assert view.check(12.001) is GateVerdict.IGNORE


@pytest.mark.parametrize(
    ("category", "scope"),
    [
        (ErrorCategory.RATE_LIMIT, "wide"),
        (ErrorCategory.DEPENDENCY, "wide"),
        (ErrorCategory.TIMEOUT, "local"),
        (ErrorCategory.NETWORK, "local"),
        (ErrorCategory.UNKNOWN, "local"),
    ],
)
def test_trip_scope_of_each_category(category: ErrorCategory, scope: str) -> None:
    """Rate limits and 5xx are the provider's; timeouts, network and unknown may be a path's."""
    assert trip_scope(category) == scope


# -------------------------------------------------------------------------- the members


@asynccontextmanager
async def fleet(
    env: StoreEnv, n: int, **overrides: object
) -> AsyncIterator[tuple[list[FleetBreakers], trio.Nursery]]:
    """``n`` members sharing ``env``'s store, each registering provider ``p``, running."""
    members = []
    async with trio.open_nursery() as nursery:
        for i in range(n):
            member = FleetBreakers(env.breaker_store(), env.settings(f"i{i}", **overrides))
            member.register("p", BREAKER)
            members.append(member)
        for member in members:
            await nursery.start(member.run)
        for member in members:  # every member's heartbeat seen by every read
            await member.refresh()
        yield members, nursery
        nursery.cancel_scope.cancel()


def verdicts(members: list[FleetBreakers]) -> list[GateVerdict]:
    now = trio.current_time()
    return [m.view("p").check(now) for m in members]


async def test_a_quorum_of_local_trips_opens_the_breaker_on_every_instance(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """One of three instances tripping on timeouts is not enough; the second opens the fleet
    breaker, and every instance rejects within a published change."""
    async with fleet(store_env, 3) as (members, _):
        assert verdicts(members) == [GateVerdict.PASS] * 3
        reply = await members[0].report_trip("p", ErrorCategory.TIMEOUT)
        assert reply.outcome == "voted"
        assert verdicts(members) == [GateVerdict.PASS] * 3
        assert members[1].report_trip_nowait("p", ErrorCategory.TIMEOUT)
        await store_env.wait_until(
            lambda: verdicts(members) == [GateVerdict.REJECT] * 3, what="all instances reject"
        )
        retry = members[2].view("p").retry_after(trio.current_time())
        assert retry is not None
        assert 0 < retry <= BREAKER.break_duration


async def test_a_rate_limit_on_one_instance_opens_for_the_retry_after(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A provider-wide failure opens the fleet breaker at once, for at least Retry-After."""
    async with fleet(store_env, 3) as (members, _):
        reply = await members[2].report_trip("p", ErrorCategory.RATE_LIMIT, retry_after=3.0)
        assert reply.outcome == "opened"
        await store_env.wait_until(lambda: verdicts(members) == [GateVerdict.REJECT] * 3)
        retry = members[0].view("p").retry_after(trio.current_time())
        assert retry is not None
        assert 2.0 < retry <= 3.0


async def test_exactly_one_probe_runs_fleet_wide(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """After the break, many callers on every instance race for the probe: one wins; its
    success closes the breaker everywhere."""
    async with fleet(store_env, 3) as (members, _):
        await members[0].report_trip("p", "wide")
        await store_env.wait_until(lambda: verdicts(members) == [GateVerdict.PROBE] * 3)
        wins: list[str] = []

        async def caller(member: FleetBreakers) -> None:
            if await member.acquire_probe("p"):
                wins.append(member.instance)

        async with trio.open_nursery() as nursery:
            for member in members:
                for _ in range(5):
                    nursery.start_soon(caller, member)
        assert len(wins) == 1
        winner = next(m for m in members if m.instance == wins[0])
        await store_env.wait_until(
            lambda: sorted(v.value for v in verdicts(members)) == ["probe", "reject", "reject"],
            what="others reject while the probe runs",
        )
        assert winner.view("p").check(trio.current_time()) is GateVerdict.PROBE
        reply = await winner.settle_probe("p", ok=True)
        assert reply.outcome == "closed"
        await store_env.wait_until(lambda: verdicts(members) == [GateVerdict.PASS] * 3)


@pytest.mark.parametrize("seed", range(100))
async def test_one_probe_over_many_schedules(seed: int, mock_clock: trio.testing.MockClock) -> None:
    """Over 100 task orders, concurrent probe attempts on three instances grant one probe."""
    random.seed(seed)
    trio._core._run._r.seed(seed)
    server = MemoryServer()
    env = StoreEnv("memory", "seeded", "redis://127.0.0.1:1/0", server=server)
    async with fleet(env, 3) as (members, _):
        await members[random.randrange(3)].report_trip("p", "wide")
        await trio.sleep(BREAKER.break_duration + 0.01)
        wins: list[str] = []

        async def caller(member: FleetBreakers) -> None:
            await trio.sleep(random.random() * 0.001)
            if await member.acquire_probe("p"):
                wins.append(member.instance)

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(caller, random.choice(members))
        assert len(wins) == 1, wins


async def test_a_failed_probe_reopens_with_the_grown_break_everywhere(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """The probe's failure reopens the breaker on every instance for the doubled break."""
    async with fleet(store_env, 2) as (members, _):
        await members[0].report_trip("p", "wide")
        await store_env.wait_until(lambda: verdicts(members) == [GateVerdict.PROBE] * 2)
        assert await members[1].acquire_probe("p")
        assert members[1].settle_probe_nowait("p", ok=False)
        await store_env.wait_until(
            lambda: (
                members[0].view("p").streak == 2 and verdicts(members) == [GateVerdict.REJECT] * 2
            )
        )
        assert members[0].view("p").break_length == 2 * BREAKER.break_duration


async def test_a_dead_probers_lease_lapses_to_another_instance(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A prober that never settles loses the lease after probe_lease; another instance probes,
    and the first prober's late outcome is refused."""
    async with fleet(store_env, 2, probe_lease=0.3) as (members, _):
        await members[0].report_trip("p", "wide")
        await store_env.wait_until(lambda: verdicts(members) == [GateVerdict.PROBE] * 2)
        assert await members[0].acquire_probe("p")  # ... and the prober dies here
        await store_env.wait_until(
            lambda: members[1].view("p").state is BreakerState.HALF_OPEN,
            what="the other instance sees the probe",
        )
        assert members[1].view("p").check(trio.current_time()) is GateVerdict.REJECT
        await store_env.wait_until(
            lambda: members[1].view("p").check(trio.current_time()) is GateVerdict.PROBE,
            what="the lapsed lease is offered again",
        )
        assert await members[1].acquire_probe("p")
        late = await members[0].settle_probe("p", ok=True)
        assert late.outcome == "stale"
        assert members[1].view("p").state is BreakerState.HALF_OPEN


async def test_isolate_and_reset_are_fleet_wide(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """An operator's isolate on one instance makes every instance reject with no retry time;
    reset makes them all pass again."""
    async with fleet(store_env, 3) as (members, _):
        await members[1].isolate("p")
        await store_env.wait_until(lambda: verdicts(members) == [GateVerdict.REJECT] * 3)
        assert members[2].view("p").retry_after(trio.current_time()) is None
        await members[2].reset("p")
        await store_env.wait_until(lambda: verdicts(members) == [GateVerdict.PASS] * 3)


async def test_heartbeats_make_instances_live_and_leaving_drops_them(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Running members count each other; a member that stops leaves the live set."""
    async with fleet(store_env, 3) as (members, _):
        await store_env.wait_until(lambda: all(m.live == 3 for m in members))
        probe = FleetBreakers(store_env.breaker_store(), store_env.settings("observer"))
        probe.register("p")
    await probe.refresh()
    assert probe.live == 0


async def test_the_hot_path_reads_without_a_round_trip(mock_clock: trio.testing.MockClock) -> None:
    """check() and report_trip_nowait() make no store call and never checkpoint."""
    server = MemoryServer()
    env = StoreEnv("memory", "hot", "redis://127.0.0.1:1/0", server=server)
    async with fleet(env, 1) as (members, _):
        view = members[0].view("p")
        before = server.round_trips
        for _ in range(1000):
            assert view.check(trio.current_time()) is GateVerdict.PASS
        assert server.round_trips == before


async def test_a_store_outage_degrades_to_local_and_recovers(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Store down: the gate is ignored (the local breaker decides), votes are dropped without
    an error, health says degraded with the reason; store back: fresh views, healthy."""
    server = MemoryServer()
    env = StoreEnv("memory", "outage", "redis://127.0.0.1:1/0", server=server)
    async with fleet(env, 2) as (members, _):
        await members[0].report_trip("p", "wide")
        await trio.sleep(0.05)
        assert verdicts(members) == [GateVerdict.REJECT] * 2
        server.stop()
        await trio.sleep(members[0].settings.refresh_interval + 0.01)
        assert verdicts(members) == [GateVerdict.IGNORE] * 2
        health = members[1].health()
        assert health.status == "degraded"
        assert "unreachable" in health.reasons[0]
        assert "the store is down" in health.reasons[0]
        assert members[1].report_trip_nowait("p", ErrorCategory.TIMEOUT)
        await trio.sleep(0.01)
        assert members[1].statistics().dropped == 1
        server.start()
        await trio.sleep(members[0].settings.refresh_interval + 0.01)
        assert verdicts(members) == [GateVerdict.REJECT] * 2
        assert members[0].health().status == "healthy"


async def test_a_store_restarted_empty_is_followed(mock_clock: trio.testing.MockClock) -> None:
    """A store that lost its data (restart without persistence) is read as closed at epoch 0,
    although the views had a higher epoch."""
    server = MemoryServer()
    env = StoreEnv("memory", "restart", "redis://127.0.0.1:1/0", server=server)
    async with fleet(env, 2) as (members, _):
        await members[0].report_trip("p", "wide")
        await trio.sleep(0.05)
        assert members[1].view("p").epoch == 1
        server.restart()
        await trio.sleep(1.0)
        assert verdicts(members) == [GateVerdict.PASS] * 2
        assert members[1].view("p").epoch == 0
        assert members[0].live == 2  # heartbeats re-registered both


async def test_a_view_goes_stale_when_refreshes_stop(mock_clock: trio.testing.MockClock) -> None:
    """A view not refreshed for stale_after is ignored, with a 'stale' health reason."""
    server = MemoryServer()
    settings_env = StoreEnv("memory", "stale", "redis://127.0.0.1:1/0", server=server)
    member = FleetBreakers(settings_env.breaker_store(), settings_env.settings("lonely"))
    member.register("p")
    assert await member.refresh()
    now = trio.current_time()
    assert member.view("p").check(now) is GateVerdict.PASS
    later = now + member.settings.stale_after + 0.001
    assert member.view("p").check(later) is GateVerdict.IGNORE
    health = member.health(later)
    assert health.status == "degraded"
    assert "stale" in health.reasons[0]
    assert "p" in health.reasons[0]


def test_quorum_policy_table() -> None:
    """max(2, ceil(half)) capped at the live count, never below one."""
    from actors._fleet._breaker_store import QuorumPolicy

    q = QuorumPolicy(0.5, 2)
    assert [q.needed(n) for n in range(0, 8)] == [1, 1, 2, 2, 2, 3, 3, 4]
    assert QuorumPolicy(1.0, 1).needed(5) == 5
    assert math.isclose(QuorumPolicy(0.3, 1).needed(10), 3)
