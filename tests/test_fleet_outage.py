"""A real Redis dying, hanging and coming back mid-test: store calls fail fast with
FleetStoreUnavailable within their deadline, and everything recovers by itself."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from actors._errors import ErrorCategory, FleetStoreUnavailable
from actors._fleet._breaker_store import RedisBreakerStore
from actors._fleet._breaker_view import GateVerdict
from actors._fleet._breakers import FleetBreakers
from actors._fleet._client import open_store_client
from actors._fleet._idempotency_shared import SharedClaim, SharedIdempotency
from actors._fleet._idempotency_store import RedisIdempotencyStore
from actors._fleet._quota import FleetQuotas, RedisQuotaStore
from actors._policies._config._fleet import FleetSettings
from actors.testing import RedisServer

TIMEOUT = 0.3


def settings(server: RedisServer, instance: str = "i1") -> FleetSettings:
    return FleetSettings(
        redis_url=server.url,
        key_prefix="outage",
        instance_id=instance,
        command_timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
        heartbeat_interval=0.1,
        instance_ttl=1.0,
        refresh_interval=0.1,
        stale_after=0.5,
        idempotency_lease=0.5,
        idempotency_poll=0.05,
        quota_lease=0.5,
    )


async def poll(condition: object, within: float = 15.0) -> None:
    assert callable(condition)
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (a server in another process changes it)
            await trio.sleep(0.01)


async def test_a_killed_server_fails_calls_fast_and_a_restart_recovers(
    private_redis: RedisServer,
) -> None:
    """Kill -9: each call raises FleetStoreUnavailable (naming the store, no credentials)
    within its deadline; after a restart on the same port the next calls work again."""
    fleet = settings(private_redis)
    async with open_store_client(fleet) as client:
        store = RedisBreakerStore(client, "outage")
        assert await store.heartbeat("a", 5.0) == 1
        private_redis.kill()
        for _ in range(3):
            started = trio.current_time()
            with pytest.raises(FleetStoreUnavailable) as caught:
                await store.read(["p"])
            assert trio.current_time() - started <= TIMEOUT + 0.2
            assert caught.value.category is ErrorCategory.DEPENDENCY
            assert caught.value.store == f"127.0.0.1:{private_redis.port}"
        assert not client.available
        await trio.to_thread.run_sync(private_redis.start)
        live, [snap] = await store.read(["p"])  # a fresh server: no data, scripts reloaded
        assert (live, snap.state, snap.epoch) == (0, "closed", 0)
        assert client.available
        statistics = client.statistics()
        assert statistics.script_loads >= 2
        # Round trips are counted per operation too: each failed read and each load counts.
        assert statistics.by_operation["breaker.read"] == 3 + 1 + 2
        assert statistics.by_operation["fleet.heartbeat"] == 1 + 2  # its script was loaded
        assert sum(statistics.by_operation.values()) == statistics.round_trips


async def test_a_hung_server_costs_each_call_its_deadline_only(
    private_redis: RedisServer,
) -> None:
    """A stopped (SIGSTOP) server answers nothing: each call gives up at its deadline with
    FleetStoreUnavailable; after SIGCONT the same client works, replies not mixed up."""
    fleet = settings(private_redis)
    async with open_store_client(fleet) as client:
        store = RedisBreakerStore(client, "outage")
        await store.heartbeat("a", 5.0)
        pid = private_redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = trio.current_time()
            with pytest.raises(FleetStoreUnavailable, match="no answer within"):
                await store.read(["p"])
            assert TIMEOUT <= trio.current_time() - started <= TIMEOUT + 0.2
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await store.read(["p"]))[0] == 1
        assert await store.heartbeat("b", 5.0) == 2
        assert client.statistics().timeouts == 1


async def test_the_fleet_breaker_degrades_to_local_and_recovers(
    private_redis: RedisServer,
) -> None:
    """Two members: the fleet breaker opens; Redis dies: the gate is ignored and health is
    degraded; Redis restarts empty: the members re-register, views are fresh (closed: the
    state was not persisted) and health is healthy, with no help from the test."""
    first, second = settings(private_redis, "i0"), settings(private_redis, "i1")
    async with open_store_client(first) as c0, open_store_client(second) as c1:
        members = [
            FleetBreakers(RedisBreakerStore(c0, "outage"), first),
            FleetBreakers(RedisBreakerStore(c1, "outage"), second),
        ]

        def verdicts() -> list[GateVerdict]:
            now = trio.current_time()
            return [m.view("p").check(now) for m in members]

        async with trio.open_nursery() as nursery:
            for member in members:
                member.register("p")
                await nursery.start(member.run)
            await members[0].report_trip("p", ErrorCategory.RATE_LIMIT, retry_after=60.0)
            await poll(lambda: verdicts() == [GateVerdict.REJECT] * 2)
            private_redis.kill()
            await poll(lambda: verdicts() == [GateVerdict.IGNORE] * 2)
            assert all(m.health().status == "degraded" for m in members)
            assert members[1].report_trip_nowait("p", ErrorCategory.TIMEOUT)  # no error escapes
            await trio.to_thread.run_sync(private_redis.start)
            await poll(lambda: verdicts() == [GateVerdict.PASS] * 2)
            await poll(lambda: all(m.health().status == "healthy" and m.live == 2 for m in members))
            nursery.cancel_scope.cancel()


async def test_idempotency_and_quota_recover_after_a_restart(
    private_redis: RedisServer,
) -> None:
    """While Redis is down a claim fails fast and an empty quota lease answers None; once it
    is back both work again without being restarted."""
    fleet = settings(private_redis)
    async with open_store_client(fleet) as client, trio.open_nursery() as nursery:
        tier = SharedIdempotency(RedisIdempotencyStore(client, "outage", "svc"), fleet, "svc")
        await nursery.start(tier.run)
        quotas = FleetQuotas(RedisQuotaStore(client, "outage"), fleet)
        lease = quotas.register("p", 1000.0, 10.0)
        await nursery.start(quotas.run)
        await poll(lambda: lease.available > 0)
        private_redis.kill()
        with pytest.raises(FleetStoreUnavailable):
            await tier.begin("k", "req")
        await poll(lambda: lease.try_take(trio.current_time()) is None)
        await trio.to_thread.run_sync(private_redis.start)
        claim = await tier.begin("k", "req")
        assert isinstance(claim, SharedClaim)
        assert await tier.complete(claim, "ok")
        await poll(lambda: lease.try_take(trio.current_time()) == 0.0)
        nursery.cancel_scope.cancel()
