"""The shared provider quota: the GCRA bucket's contract on both backends, the sans-I/O lease,
and instances leasing ahead of need without exceeding the fleet's quota."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors._fleet._memory import MemoryServer
from actors._fleet._quota import FleetQuotas, MemoryQuotaStore, QuotaLease
from tests.fixtures_redis import StoreEnv

# ------------------------------------------------------------------------ store contract


async def test_a_bucket_grants_its_burst_then_says_how_long_to_wait(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A full bucket grants up to ``want`` and at most ``burst``; an empty one grants nothing
    and answers the wait for one token (at most one token's time)."""
    store = store_env.quota_store()
    assert await store.take("p", 10.0, 5.0, 3) == (3, 0.0)
    granted, wait = await store.take("p", 10.0, 5.0, 3)
    assert (granted, wait) == (2, 0.0)
    granted, wait = await store.take("p", 10.0, 5.0, 1)
    assert granted == 0
    assert 0 < wait <= 0.1 + 0.002
    await trio.sleep(wait + 0.01)
    granted, _ = await store.take("p", 10.0, 5.0, 1)
    assert granted == 1


async def test_buckets_are_per_provider(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Emptying one provider's bucket leaves another's full."""
    store = store_env.quota_store()
    assert (await store.take("a", 1.0, 2.0, 2))[0] == 2
    assert (await store.take("a", 1.0, 2.0, 1))[0] == 0
    assert (await store.take("b", 1.0, 2.0, 2))[0] == 2


async def test_the_fleet_never_exceeds_burst_plus_rate_times_time(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Many takers over 1.5 s take at most burst + rate x elapsed tokens (plus one token of
    clock granularity), and the quota is used (at least the rate over the time, minus one)."""
    store = store_env.quota_store()
    rate, burst = 40.0, 5.0
    taken = 0
    start = trio.current_time()
    rng = random.Random(3)

    async def taker() -> None:
        nonlocal taken
        while trio.current_time() - start < 1.5:
            granted, wait = await store.take("q", rate, burst, rng.randint(1, 3))
            taken += granted
            await trio.sleep(wait if not granted else rng.random() * 0.01)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(taker)
    elapsed = trio.current_time() - start
    assert taken <= burst + rate * elapsed + 1
    assert taken >= rate * 1.5 * 0.8


# ------------------------------------------------------------------------- lease (sans-I/O)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("take"), st.floats(0, 0.5)),
            st.tuples(st.just("grant"), st.integers(0, 10)),
            st.tuples(st.just("fail"), st.just(0)),
        ),
        max_size=60,
    )
)
def test_a_lease_never_hands_out_more_than_it_was_granted(ops: list[tuple[str, float]]) -> None:
    """Tokens taken + wasted + held == tokens granted; expired tokens are never taken; while
    the store is down and the lease is empty the answer is None."""
    lease = QuotaLease("p", batch=4, lease=1.0)
    now = 0.0
    granted_total = 0
    for op, value in ops:
        if op == "take":
            now += value
            held_before = lease.available if now < lease.expires_at else 0
            answer = lease.try_take(now)
            if held_before:
                assert answer == 0.0
            elif lease.store_down:
                assert answer is None
            else:
                assert answer is not None
                assert answer > 0
        elif op == "grant":
            lease.granted(int(value), 0.1, now)
            granted_total += int(value)
        else:
            lease.failed(now, 1.0)
        assert lease.taken + lease.wasted + lease.available == granted_total
        assert lease.available >= 0


def test_a_lease_asks_for_a_refill_when_half_empty() -> None:
    """The owner is told once, when fewer than half a batch is left."""
    calls = []
    lease = QuotaLease("p", batch=4, lease=10.0, on_low=lambda: calls.append(1))
    lease.granted(4, 0.0, 0.0)
    assert lease.try_take(0.0) == 0.0  # 3 left
    assert calls == []
    assert lease.try_take(0.0) == 0.0  # 2 left: not below half
    assert lease.try_take(0.0) == 0.0  # 1 left: below half
    assert calls == [1]
    assert lease.try_take(0.0) == 0.0
    assert calls == [1]  # one request per refill
    lease.granted(0, 0.25, 0.0)
    assert lease.try_take(0.0) == pytest.approx(0.25)
    assert calls == [1, 1]


# --------------------------------------------------------------------- instances leasing


async def run_fleet(
    rate: float, burst: float, period: float, pause: float, members: int = 3, batch: int = 5
) -> tuple[int, int, int]:
    """``members`` instances calling for ``period`` seconds, ``pause`` seconds apart (or the
    lease's wait when refused, at most 1 ms: impatient callers).  Returns (admitted,
    refused, round trips)."""
    server = MemoryServer()
    env = StoreEnv("memory", "q", "redis://127.0.0.1:1/0", server=server)
    admitted = refused = 0
    async with trio.open_nursery() as nursery:
        leases = []
        for i in range(members):
            member = FleetQuotas(
                MemoryQuotaStore(server, "q"), env.settings(f"i{i}", quota_batch=batch)
            )
            leases.append(member.register("p", rate, burst))
            await nursery.start(member.run)
        await trio.sleep(0.01)
        start = trio.current_time()
        trips_before = server.round_trips

        async def caller(lease: QuotaLease) -> None:
            nonlocal admitted, refused
            while trio.current_time() - start < period:
                wait = lease.try_take(trio.current_time())
                assert wait is not None
                if wait == 0.0:
                    admitted += 1
                    await trio.sleep(pause)
                else:
                    refused += 1
                    await trio.sleep(min(wait, 0.001))

        async with trio.open_nursery() as callers:
            for lease in leases:
                callers.start_soon(caller, lease)
        nursery.cancel_scope.cancel()
    return admitted, refused, server.round_trips - trips_before


async def test_instances_never_exceed_the_fleet_quota(mock_clock: trio.testing.MockClock) -> None:
    """Three impatient instances over 10 s admit at most burst + rate x 10 calls and use most
    of the quota; their refills stay bounded by the quota, not by their thousands of tries."""
    rate, burst = 20.0, 10.0
    admitted, refused, trips = await run_fleet(rate, burst, 10.0, pause=0.0005)
    assert admitted <= burst + rate * 10.02
    assert admitted >= rate * 10.0 * 0.7
    assert refused > 10 * admitted  # they tried far more than the quota allowed
    assert trips <= 3 * (rate / 4) * 10.0 * 1.5  # about one per batch-worth per instance


async def test_below_the_quota_a_round_trip_serves_a_batch(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Instances using half the quota make about one round trip per batch of calls."""
    admitted, refused, trips = await run_fleet(60.0, 60.0, 10.0, pause=0.1, batch=5)
    assert refused == 0
    assert admitted == pytest.approx(300, rel=0.05)
    assert trips <= admitted / 5 * 1.5


async def test_a_store_outage_answers_none_and_recovers(mock_clock: trio.testing.MockClock) -> None:
    """While the store is down an empty lease answers None (the store-down policy decides);
    once it is back, tokens come again without a caller asking twice."""
    server = MemoryServer()
    env = StoreEnv("memory", "q", "redis://127.0.0.1:1/0", server=server)
    async with trio.open_nursery() as nursery:
        member = FleetQuotas(MemoryQuotaStore(server, "q"), env.settings("i", quota_lease=0.5))
        lease = member.register("p", 100.0, 10.0)
        await nursery.start(member.run)
        await trio.sleep(0.01)
        assert lease.try_take(trio.current_time()) == 0.0
        server.stop()
        await trio.sleep(1.0)  # the leased tokens expire
        answers = {lease.try_take(trio.current_time()) for _ in range(3)}
        await trio.sleep(0.01)
        answers |= {lease.try_take(trio.current_time())}
        assert None in answers
        server.start()
        await trio.sleep(member.settings.refresh_interval + 0.05)
        assert lease.try_take(trio.current_time()) == 0.0
        nursery.cancel_scope.cancel()


def test_register_needs_a_positive_rate_and_updates_a_known_quota() -> None:
    """A quota needs a rate > 0; registering a name again keeps its lease, with the new rate."""
    env = StoreEnv("memory", "q", "redis://127.0.0.1:1/0", server=MemoryServer(clock=lambda: 0))
    member = FleetQuotas(MemoryQuotaStore(MemoryServer(clock=lambda: 0.0)), env.settings())
    with pytest.raises(ValueError, match="rate > 0"):
        member.register("p", 0.0)
    lease = member.register("p", 5.0)
    assert member.register("p", 8.0, 16.0) is lease
    assert member._quotas["p"].rate == 8.0
    assert member._quotas["p"].burst == 16.0
