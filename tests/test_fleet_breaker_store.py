"""The fleet breaker store's contract: the same tests on the in-memory store (MockClock) and on
the Lua scripts in a real Redis (real time, conditions polled with deadlines)."""

from __future__ import annotations

import secrets

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors._fleet._breaker_store import (
    BreakerSnapshot,
    BreakerStore,
    BreakPolicy,
    MemoryBreakerStore,
    QuorumPolicy,
    RedisBreakerStore,
)
from actors._fleet._client import open_store_client
from actors._fleet._memory import MemoryServer
from actors._policies._config._fleet import FleetSettings
from tests.fixtures_redis import StoreEnv

BREAKS = BreakPolicy.from_seconds(0.3, 2.0, 10.0)
LONG = BreakPolicy.from_seconds(60.0, 2.0, 600.0)
QUORUM = QuorumPolicy(0.5, 2)


async def trip(
    store: BreakerStore,
    instance: str,
    epoch: int = 0,
    scope: str = "local",
    retry_after: float = 0.0,
    breaks: BreakPolicy = BREAKS,
    vote_ttl: float = 60.0,
) -> tuple[str, BreakerSnapshot]:
    reply = await store.trip(
        "p",
        instance,
        epoch,
        scope,
        retry_after,
        breaks,
        QUORUM,
        vote_ttl,
        60.0,  # type: ignore[arg-type]
    )
    return reply.outcome, reply.snapshot


async def live_fleet(store: BreakerStore, n: int) -> None:
    for i in range(n):
        await store.heartbeat(f"i{i}", 60.0)


async def test_an_unknown_provider_reads_as_closed_at_epoch_0(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A provider never tripped is closed, epoch 0, no votes."""
    store = store_env.breaker_store()
    live, [snap] = await store.read(["p"])
    assert live == 0
    assert (snap.state, snap.epoch, snap.votes, snap.open_ms) == ("closed", 0, 0, 0)


async def test_heartbeats_count_live_instances_and_expire(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Heartbeats add instances to the live set; one not renewed drops out after its TTL."""
    store = store_env.breaker_store()
    assert await store.heartbeat("a", 60.0) == 1
    assert await store.heartbeat("b", 0.2) == 2
    assert await store.heartbeat("a", 60.0) == 2

    async def live() -> int:
        return (await store.read([]))[0]

    counts: list[int] = []

    async def poll() -> None:
        counts.append(await live())

    with trio.move_on_after(10):
        while not counts or counts[-1] != 1:
            await poll()
            await trio.sleep(0.02)
    assert counts[-1] == 1
    await store.leave("a")
    assert await live() == 0


async def test_path_local_failures_open_only_at_the_quorum(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """With 3 live instances, one local trip votes and the second opens (max(2, half))."""
    store = store_env.breaker_store()
    await live_fleet(store, 3)
    outcome, snap = await trip(store, "i0")
    assert (outcome, snap.state, snap.votes) == ("voted", "closed", 1)
    outcome, snap = await trip(store, "i0")  # the same instance again: still one vote
    assert (outcome, snap.votes) == ("voted", 1)
    outcome, snap = await trip(store, "i1")
    assert (outcome, snap.state, snap.epoch, snap.streak) == ("opened", "open", 1, 1)
    assert snap.break_ms == BREAKS.base
    assert 0 < snap.open_ms <= BREAKS.base
    assert snap.votes == 0


async def test_a_fleet_of_one_trips_alone(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """The quorum is capped at the live count: a single instance's trip opens."""
    store = store_env.breaker_store()
    outcome, snap = await trip(store, "solo")
    assert (outcome, snap.state) == ("opened", "open")


async def test_provider_wide_failures_open_on_one_instance(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A rate limit or 5xx ("wide") trip opens the breaker with one vote in a fleet of five."""
    store = store_env.breaker_store()
    await live_fleet(store, 5)
    outcome, snap = await trip(store, "i3", scope="wide")
    assert (outcome, snap.state) == ("opened", "open")


async def test_a_stale_epoch_is_a_no_op(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A vote carrying an old epoch changes nothing and is answered with the current state."""
    store = store_env.breaker_store()
    await live_fleet(store, 3)
    await trip(store, "i0")
    await trip(store, "i1")  # opens: epoch 1
    await store.operate("p", "reset", BREAKS)  # epoch 2, closed
    outcome, snap = await trip(store, "i2", epoch=1)
    assert (outcome, snap.state, snap.epoch, snap.votes) == ("stale", "closed", 2, 0)
    outcome, snap = await trip(store, "i2", epoch=0, scope="wide")
    assert (outcome, snap.state) == ("stale", "closed")


async def test_an_open_breaker_stays_open_at_least_the_retry_after(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Retry-After longer than the break sets the open time; a later wide trip extends it."""
    store = store_env.breaker_store()
    outcome, snap = await trip(store, "i0", scope="wide", retry_after=5.0)
    assert outcome == "opened"
    assert 4000 < snap.open_ms <= 5000
    outcome, snap = await trip(store, "i1", epoch=1, scope="wide", retry_after=20.0)
    assert outcome == "extended"
    assert 19000 < snap.open_ms <= 20000
    assert snap.epoch == 1
    outcome, snap = await trip(store, "i1", epoch=1, scope="wide", retry_after=1.0)
    assert outcome == "ignored"
    assert snap.open_ms > 18000
    outcome, _ = await trip(store, "i1", epoch=1, scope="local", retry_after=60.0)
    assert outcome == "ignored"


async def test_votes_expire(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A vote older than the vote TTL no longer counts towards the quorum."""
    store = store_env.breaker_store()
    await live_fleet(store, 4)
    await trip(store, "i0", vote_ttl=0.1)
    with trio.move_on_after(10):
        while (await store.read(["p"]))[1][0].votes:  # noqa: ASYNC110 (polls the store)
            await trio.sleep(0.02)
    outcome, snap = await trip(store, "i1", vote_ttl=60.0)
    assert (outcome, snap.votes) == ("voted", 1)


async def wait_for_break_end(store: BreakerStore) -> BreakerSnapshot:
    with trio.fail_after(10):
        while True:
            _, [snap] = await store.read(["p"])
            if snap.state == "open" and snap.open_ms == 0:
                return snap
            await trio.sleep(0.02)


async def test_exactly_one_probe_under_a_lease_with_fencing(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """After the break one instance gets the probe lease; others are denied; the lease lapses
    to another instance, and the first prober's late outcome is refused (fencing)."""
    store = store_env.breaker_store()
    _, snap = await trip(store, "a", scope="wide")
    assert (await store.acquire_probe("p", "b", snap.epoch, 0.3)).outcome == "denied"
    snap = await wait_for_break_end(store)
    first = await store.acquire_probe("p", "a", snap.epoch, 0.3)
    assert first.outcome == "granted"
    assert (first.snapshot.state, first.snapshot.probe_owner) == ("half_open", "a")
    assert 0 < first.snapshot.probe_ms <= 300
    assert (await store.acquire_probe("p", "b", first.snapshot.epoch, 0.3)).outcome == "denied"
    # The holder asking again is granted again (renewal), at a new epoch.
    again = await store.acquire_probe("p", "a", first.snapshot.epoch, 0.3)
    assert again.outcome == "granted"
    assert again.snapshot.epoch == first.snapshot.epoch + 1
    with trio.fail_after(10):
        while True:
            taken = await store.acquire_probe("p", "b", again.snapshot.epoch, 0.3)
            if taken.outcome == "granted":
                break
            assert taken.outcome == "denied"
            await trio.sleep(0.02)
    assert taken.snapshot.probe_owner == "b"
    late = await store.settle_probe("p", "a", again.snapshot.epoch, True, 0.0, BREAKS)
    assert (late.outcome, late.snapshot.state) == ("stale", "half_open")
    wrong = await store.settle_probe("p", "a", taken.snapshot.epoch, True, 0.0, BREAKS)
    assert wrong.outcome == "stale"  # right epoch, not the holder


async def test_a_probe_success_closes_and_a_failure_reopens_with_a_grown_break(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Failure: open again for base x factor (streak 2); success: closed, streak 0."""
    store = store_env.breaker_store()
    await trip(store, "a", scope="wide")
    snap = await wait_for_break_end(store)
    granted = await store.acquire_probe("p", "a", snap.epoch, 5.0)
    failed = await store.settle_probe("p", "a", granted.snapshot.epoch, False, 0.0, BREAKS)
    assert failed.outcome == "reopened"
    assert (failed.snapshot.state, failed.snapshot.streak) == ("open", 2)
    assert failed.snapshot.break_ms == 2 * BREAKS.base
    assert BREAKS.base < failed.snapshot.open_ms <= 2 * BREAKS.base
    snap = await wait_for_break_end(store)
    granted = await store.acquire_probe("p", "b", snap.epoch, 5.0)
    closed = await store.settle_probe("p", "b", granted.snapshot.epoch, True, 0.0, BREAKS)
    assert closed.outcome == "closed"
    assert (closed.snapshot.state, closed.snapshot.streak, closed.snapshot.break_ms) == (
        "closed",
        0,
        BREAKS.base,
    )
    assert closed.snapshot.epoch == granted.snapshot.epoch + 1


async def test_a_failed_probe_honours_a_longer_retry_after(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A probe failing with Retry-After 30 s reopens for 30 s, more than the grown break."""
    store = store_env.breaker_store()
    await trip(store, "a", scope="wide")
    snap = await wait_for_break_end(store)
    granted = await store.acquire_probe("p", "a", snap.epoch, 5.0)
    reply = await store.settle_probe("p", "a", granted.snapshot.epoch, False, 30.0, BREAKS)
    assert 29000 < reply.snapshot.open_ms <= 30000


async def test_the_grown_break_is_capped(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Repeated failed probes grow the break by the factor up to the maximum."""
    store = store_env.breaker_store()
    capped = BreakPolicy(base=50, factor=3.0, maximum=200)
    await trip(store, "a", scope="wide", breaks=capped)
    lengths = []
    for _ in range(4):
        snap = await wait_for_break_end(store)
        granted = await store.acquire_probe("p", "a", snap.epoch, 5.0)
        reply = await store.settle_probe("p", "a", granted.snapshot.epoch, False, 0.0, capped)
        lengths.append(reply.snapshot.break_ms)
    assert lengths == [150, 200, 200, 200]


async def test_isolate_and_reset_act_whatever_the_epoch(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Isolate holds the breaker; trips are ignored; reset closes it and clears votes."""
    store = store_env.breaker_store()
    await live_fleet(store, 4)
    await trip(store, "i0")
    isolated = await store.operate("p", "isolate", BREAKS)
    assert (isolated.outcome, isolated.snapshot.state, isolated.snapshot.epoch) == (
        "isolated",
        "isolated",
        1,
    )
    outcome, snap = await trip(store, "i1", epoch=1, scope="wide")
    assert (outcome, snap.state) == ("ignored", "isolated")
    assert (await store.acquire_probe("p", "i1", 1, 1.0)).outcome == "denied"
    reset = await store.operate("p", "reset", BREAKS)
    assert (reset.snapshot.state, reset.snapshot.epoch, reset.snapshot.votes) == ("closed", 2, 0)


async def test_every_change_is_published(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Subscribers receive each change (open, probe, close) in order, with the new state."""
    store = store_env.breaker_store()
    seen: list[BreakerSnapshot] = []
    subscribed = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: store.listen(
                seen.append, on_subscribed=subscribed.set, task_status=task_status
            )
        )
        await subscribed.wait()
        await trip(store, "a", scope="wide")
        snap = await wait_for_break_end(store)
        granted = await store.acquire_probe("p", "a", snap.epoch, 5.0)
        await store.settle_probe("p", "a", granted.snapshot.epoch, True, 0.0, BREAKS)
        await store.operate("p", "isolate", BREAKS)
        await store_env.wait_until(lambda: len(seen) >= 4, what="four published changes")
        nursery.cancel_scope.cancel()
    assert [(s.state, s.epoch) for s in seen] == [
        ("open", 1),
        ("half_open", 2),
        ("closed", 3),
        ("isolated", 4),
    ]
    assert all(s.name == "p" for s in seen)


# --------------------------------------------------------------- Lua and memory in lockstep

OPS = st.lists(
    st.tuples(
        st.sampled_from(["trip", "trip_wide", "stale_trip", "isolate", "reset", "heartbeat"]),
        st.integers(0, 4),
    ),
    max_size=25,
)


def _timeless(snap: BreakerSnapshot) -> tuple[object, ...]:
    return (snap.state, snap.epoch, snap.break_ms, snap.streak, snap.probe_owner, snap.votes)


@given(ops=OPS)
async def test_the_lua_scripts_and_the_memory_store_agree(
    redis_url: str, ops: list[tuple[str, int]]
) -> None:
    """Random sequences of time-independent changes give the same outcomes and states on the
    Lua scripts and on the in-memory store (long breaks, so no timer fires meanwhile)."""
    prefix = f"lockstep-{secrets.token_hex(6)}"
    settings = FleetSettings(redis_url=redis_url, key_prefix=prefix, command_timeout=2.0)
    async with open_store_client(settings) as client:
        redis = RedisBreakerStore(client, prefix)
        memory = MemoryBreakerStore(MemoryServer(), prefix)
        for op, who in ops:
            results = []
            for store in (redis, memory):
                instance = f"i{who}"
                epoch = (await store.read(["p"]))[1][0].epoch
                if op == "heartbeat":
                    results.append((await store.heartbeat(instance, 600.0),))
                    continue
                if op in ("isolate", "reset"):
                    reply = await store.operate("p", op, LONG)  # type: ignore[arg-type]
                else:
                    reply = await store.trip(
                        "p",
                        instance,
                        epoch - 1 if op == "stale_trip" else epoch,
                        "wide" if op == "trip_wide" else "local",
                        0.0,
                        LONG,
                        QUORUM,
                        600.0,
                        600.0,
                    )
                results.append((reply.outcome, reply.live, _timeless(reply.snapshot)))
            assert results[0] == results[1], (op, who)
