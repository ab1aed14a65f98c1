"""Provider actors sharing a fleet (in-memory store under MockClock): the breaker gate, trip votes
and the one fleet-wide probe; keys run once in the fleet; the fleet quota; the store-down
policies; isolate and reset fleet-wide; and a hot path that makes no round trip."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors import (
    CircuitOpen,
    FleetProviderSettings,
    FleetSettings,
    FleetStoreUnavailable,
    IdempotencyConflict,
    RateLimited,
    open_actor,
    open_fleet,
)
from actors._fleet._member import Fleet
from actors._fleet._memory import MemoryServer
from actors._policies._breaker import BreakerSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from actors._provider._messages import Isolate, Reset
from actors.chaos import fault

FAST: dict[str, Any] = {
    "redis_url": "redis://127.0.0.1:1/0",
    "key_prefix": "t",
    "command_timeout": 0.5,
    "heartbeat_interval": 0.2,
    "instance_ttl": 1.0,
    "refresh_interval": 0.3,
    "stale_after": 1.0,
    "probe_lease": 2.0,
    "idempotency_lease": 1.0,
    "idempotency_poll": 0.1,
}

BREAKER = BreakerSettings(
    failure_threshold=1, break_duration=5.0, break_duration_factor=2.0, max_break_duration=60.0
)


def provider_settings(**fleet: Any) -> ProviderSettings:
    return ProviderSettings(
        breaker=BREAKER,
        retry=RetrySettings(max_attempts=1, attempt_timeout=30.0),
        fleet=FleetProviderSettings(**fleet),
    )


class Service:
    """A service whose behaviour the test sets: ``ok``, a failure category, or ``block``
    (waits until released).  Records every payload it is called with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.calls: list[Any] = []
        self.release = trio.Event()
        self.retry_after: float | None = None
        self.reply: Any = lambda payload: f"{payload}@{name}"

    async def __call__(self, payload: Any) -> Any:
        self.calls.append(payload)
        if self.mode == "block":
            await self.release.wait()
        elif self.mode != "ok":
            raise fault(self.mode, retry_after=self.retry_after)
        return self.reply(payload)


class Instance:
    def __init__(self, name: str, fleet: Fleet, provider: Provider[Any, Any], service: Service):
        self.name = name
        self.fleet = fleet
        self.provider = provider
        self.service = service

    def fleet_state(self) -> str:
        status = self.fleet.status().breakers
        return status[0].state if status else "-"


@contextlib.asynccontextmanager
async def fleet_of(
    server: MemoryServer,
    names: Sequence[str],
    settings: ProviderSettings | None = None,
    reply_types: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[list[Instance]]:
    """One fleet member and one provider actor ("svc") per name, all on ``server``."""
    settings = provider_settings() if settings is None else settings
    async with contextlib.AsyncExitStack() as stack:
        instances = []
        for name in names:
            fleet_settings = FleetSettings(**{**FAST, "instance_id": name, **overrides})
            fleet = await stack.enter_async_context(
                open_fleet(fleet_settings, server=server, reply_types=reply_types)
            )
            service = Service(name)
            ref = await stack.enter_async_context(
                open_actor(
                    lambda f=fleet, s=service: ProviderActor("svc", s, settings, fleet=f),
                    name=f"svc-{name}",
                )
            )
            instances.append(Instance(name, fleet, Provider(ref), service))
        # Every member has heard of every other (heartbeats) before the test starts.
        await trio.sleep(FAST["heartbeat_interval"] * 2)
        yield instances


async def wait_for(predicate: Any, *, within: float = 30.0) -> None:
    """Poll ``predicate`` (virtual time) until it holds; fail after ``within`` seconds."""
    with trio.move_on_after(within):
        while not predicate():  # noqa: ASYNC110 (state other tasks change)
            await trio.sleep(0.01)
        return
    raise AssertionError("the condition did not hold in time")


async def outcome(provider: Provider[Any, Any], payload: Any, key: str | None = None) -> Any:
    try:
        return await provider.call(payload, key=key, timeout=60)
    except Exception as exc:
        return exc


# ------------------------------------------------------------------------- breaker gate


async def test_one_instance_tripping_on_a_5xx_opens_the_fleet_breaker_everywhere(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A provider-wide failure (503) on one instance opens the fleet breaker: the others
    reject at once (CircuitOpen with fleet=True) without calling their service, although
    their own breakers are closed."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b", "c"]) as (a, b, c):
        a.service.mode = "dependency"
        assert isinstance(await outcome(a.provider, 1), Exception)
        await wait_for(lambda: b.fleet_state() == "open" and c.fleet_state() == "open")
        for other in (b, c):
            error = await outcome(other.provider, 2)
            assert isinstance(error, CircuitOpen)
            assert error.fleet
            assert error.retry_after is not None
            assert 0 < error.retry_after <= 5.0
            assert other.service.calls == []
            status = await other.provider.status()
            assert status.breaker == "closed"
            assert status.fleet == "open"


async def test_path_local_failures_need_a_quorum(mock_clock: trio.testing.MockClock) -> None:
    """Network failures are this instance's path: one instance's trip only votes; the second
    vote of three live instances (max(2, half)) opens the fleet breaker."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b", "c"]) as (a, b, c):
        a.service.mode = "network"
        await outcome(a.provider, 1)
        await wait_for(lambda: a.fleet.status().breakers[0].votes == 1)
        await trio.sleep(1.0)
        assert c.fleet_state() == "closed"
        assert await outcome(c.provider, "fine") == "fine@c"
        b.service.mode = "network"
        await outcome(b.provider, 2)
        await wait_for(lambda: c.fleet_state() == "open")
        assert isinstance(await outcome(c.provider, 3), CircuitOpen)


async def test_exactly_one_probe_runs_fleet_wide_and_its_success_closes_everywhere(
    mock_clock: trio.testing.MockClock,
) -> None:
    """After the break, concurrent calls on every instance make exactly one service call (the
    fleet's probe); the others are rejected; its success closes the fleet breaker on every
    instance."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b", "c"]) as instances:
        a = instances[0]
        a.service.mode = "dependency"
        await outcome(a.provider, 0)
        await wait_for(lambda: all(i.fleet_state() == "open" for i in instances))
        for i in instances:
            i.service.calls.clear()
            i.service.mode = "block"
        await trio.sleep(5.5)  # the break is over
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            for i in instances:
                for n in range(5):
                    nursery.start_soon(lambda i=i, n=n: _append(results, i.provider, n))
            await wait_for(lambda: sum(len(i.service.calls) for i in instances) == 1)
            await wait_for(lambda: len(results) == 14)  # every call but the probe answered
            assert all(isinstance(r, CircuitOpen) for r in results)
            assert sum(len(i.service.calls) for i in instances) == 1
            for i in instances:
                i.service.mode = "ok"
                i.service.release.set()
        assert sum(1 for r in results if isinstance(r, str)) == 1
        await wait_for(lambda: all(i.fleet_state() == "closed" for i in instances))
        for i in instances:
            assert await outcome(i.provider, "after") == f"after@{i.name}"


async def _append(results: list[Any], provider: Provider[Any, Any], payload: Any) -> None:
    results.append(await outcome(provider, payload))


async def test_a_failed_probe_reopens_with_the_grown_break(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The probe fails: the fleet breaker reopens everywhere for the grown break (x2)."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        a.service.mode = b.service.mode = "dependency"
        await outcome(a.provider, 0)
        await wait_for(lambda: b.fleet_state() == "open")
        await trio.sleep(5.5)
        await outcome(b.provider, 1)  # the probe, on b: fails
        await wait_for(lambda: a.fleet.status().breakers[0].break_length == 10.0)
        assert a.fleet_state() == "open"
        error = await outcome(a.provider, 2)
        assert isinstance(error, CircuitOpen)
        assert error.retry_after is not None
        assert 9.0 < error.retry_after <= 10.0


async def test_the_fleet_breaker_stays_open_for_the_providers_retry_after(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A 429 with Retry-After 40 s opens the fleet breaker for at least 40 s (the break is 5)."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        a.service.mode = "rate_limit"
        a.service.retry_after = 40.0
        await outcome(a.provider, 0)
        await wait_for(lambda: b.fleet_state() == "open")
        await trio.sleep(20.0)
        error = await outcome(b.provider, 1)
        assert isinstance(error, CircuitOpen)
        assert error.retry_after is not None
        assert error.retry_after > 15.0
        assert b.service.calls == []


async def test_isolate_and_reset_act_fleet_wide(mock_clock: trio.testing.MockClock) -> None:
    """Isolate on one instance holds every instance's calls; Reset closes them everywhere."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        status = await a.provider.ref.ask(Isolate())
        assert status.breaker == "isolated"
        assert status.fleet == "isolated"
        await wait_for(lambda: b.fleet_state() == "isolated")
        error = await outcome(b.provider, 1)
        assert isinstance(error, CircuitOpen)
        assert error.isolated
        assert error.fleet
        assert error.retry_after is None
        await b.provider.ref.ask(Reset())
        await wait_for(lambda: a.fleet_state() == "closed")
        assert (await a.provider.status()).breaker == "isolated"  # a's own breaker: a's reset
        await a.provider.reset()
        assert await outcome(a.provider, 2) == "2@a"
        assert await outcome(b.provider, 3) == "3@b"


async def test_isolate_with_the_store_down_isolates_locally_and_says_so(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Isolate while the store is down: this instance's breaker is isolated, and the operator
    is told the fleet was not (FleetStoreUnavailable)."""
    server = MemoryServer()
    async with fleet_of(server, ["a"]) as (a,):
        server.stop()
        with pytest.raises(FleetStoreUnavailable):
            await a.provider.isolate()
        assert (await a.provider.status()).breaker == "isolated"


async def test_a_store_down_is_ignored_by_the_gate_and_recovers_by_itself(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With the store down (and the fleet breaker open before it), calls go on under the
    local breaker, health says degraded with the reason; when the store is back everything
    is fresh again by itself."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        a.service.mode = "dependency"
        await outcome(a.provider, 0)
        await wait_for(lambda: b.fleet_state() == "open")
        server.stop()
        await wait_for(lambda: b.fleet.status().status == "degraded")
        reasons = " ".join(b.fleet.status().reasons)
        assert "unreachable" in reasons
        assert (await b.provider.status()).fleet == "stale"
        for n in range(5):
            assert await outcome(b.provider, n) == f"{n}@b"
        server.start()
        await wait_for(lambda: b.fleet.status().status == "healthy")
        assert b.fleet.status().available
        assert (await b.provider.status()).fleet in ("open", "half_open", "closed")


async def test_the_monitor_shows_the_fleet_store_down_and_back(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A provider with a fleet tells its monitor the fleet store's state: health is degraded
    with the reason while the store is down, and healthy again after (by itself)."""
    from actors import GetHealth, MonitorActor
    from supervisors import ChildSpec, open_supervisor

    server = MemoryServer()
    settings = FleetSettings(**{**FAST, "instance_id": "a"})
    async with (
        open_fleet(settings, server=server) as fleet,
        open_supervisor(
            [
                ChildSpec("monitor", MonitorActor),
                ChildSpec(
                    "svc",
                    lambda: ProviderActor(
                        "svc", Service("a"), provider_settings(), monitor="monitor", fleet=fleet
                    ),
                ),
            ]
        ) as root,
    ):
        monitor = root.ref("monitor")

        async def health() -> Any:
            return await monitor.ask(GetHealth())

        await trio.sleep(1.0)
        report = await health()
        assert report.dependencies["fleet store"].state == "ok"
        server.stop()
        with trio.fail_after(10):
            while (await health()).dependencies["fleet store"].state == "ok":  # noqa: ASYNC110
                await trio.sleep(0.1)
        report = await health()
        assert report.status.value == "degraded"
        assert any("fleet store unavailable" in r and "unreachable" in r for r in report.reasons)
        server.start()
        with trio.fail_after(10):
            while (await health()).dependencies["fleet store"].state != "ok":  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert not any("fleet store" in r for r in (await health()).reasons)


async def test_unkeyed_calls_make_no_round_trip(mock_clock: trio.testing.MockClock) -> None:
    """With the fleet breaker closed, 200 calls cost the store nothing: the gate reads the
    cached view (background heartbeats aside: no virtual time passes during the calls)."""
    server = MemoryServer()
    async with fleet_of(server, ["a"]) as (a,):
        await trio.sleep(0.05)  # off the heartbeats' ticks: what is due now has run
        before = server.round_trips
        started = trio.current_time()
        for n in range(200):
            assert await a.provider.call(n) == f"{n}@a"
        assert trio.current_time() == started
        assert server.round_trips == before


# ------------------------------------------------------------------------- idempotency


async def test_a_key_runs_once_in_the_fleet(mock_clock: trio.testing.MockClock) -> None:
    """The same key on two instances, concurrently and later: the service runs once; every
    caller gets the first instance's reply; a later call on the first instance is answered
    by its own table (no round trip)."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        a.service.mode = b.service.mode = "block"
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _keyed(results, a.provider, "p", "k2"))
            await wait_for(lambda: len(a.service.calls) == 1)
            nursery.start_soon(lambda: _keyed(results, b.provider, "p", "k2"))
            nursery.start_soon(lambda: _keyed(results, b.provider, "p", "k2"))
            await trio.sleep(2.0)  # b's callers wait (joiners), beyond a lease: a renews
            assert b.service.calls == []
            a.service.release.set()
        assert results == ["p@a", "p@a", "p@a"]
        before = server.round_trips
        assert await b.provider.call("p", key="k2") == "p@a"  # b's table keeps it now
        assert await a.provider.call("p", key="k2") == "p@a"
        assert server.round_trips == before
        assert len(a.service.calls) == 1
        assert b.service.calls == []


async def _keyed(results: list[Any], provider: Provider[Any, Any], payload: Any, key: str) -> None:
    results.append(await outcome(provider, payload, key))


class Receipt(msgspec.Struct, frozen=True):
    order: int
    by: str


async def test_a_reply_type_decodes_the_fleets_stored_reply(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With ``reply_types``, another instance gets the stored reply as that type (a Struct),
    not as plain builtins."""
    server = MemoryServer()

    async with fleet_of(server, ["a", "b"], reply_types={"svc": Receipt}) as (a, b):
        for instance in (a, b):
            instance.service.reply = lambda payload, name=instance.name: Receipt(payload, name)
        first = await a.provider.call(7, key="order-7")
        again = await b.provider.call(7, key="order-7")
        assert first == again == Receipt(7, "a")
        assert type(again) is Receipt
        assert b.service.calls == []


async def test_another_payload_under_a_fleet_key_is_a_conflict(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A key used on one instance with another payload is an IdempotencyConflict on another;
    nothing is cached for it there: the right payload later gets the stored reply."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        assert await outcome(a.provider, "x", "k") == "x@a"
        error = await outcome(b.provider, "y", "k")
        assert isinstance(error, IdempotencyConflict)
        assert await outcome(b.provider, "x", "k") == "x@a"
        assert b.service.calls == []


async def test_a_permanent_failure_is_replayed_on_other_instances(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A keyed call failing for good (400) is stored: another instance replays the error
    (same category) without calling its service; a transient failure is not stored."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        a.service.mode = "validation"
        first = await outcome(a.provider, "x", "bad")
        replayed = await outcome(b.provider, "x", "bad")
        assert isinstance(replayed, Exception)
        assert getattr(replayed, "category", None) == getattr(first, "category", "?")
        assert b.service.calls == []
        a.service.mode = "network"
        await outcome(a.provider, "x", "flaky")
        await a.provider.reset()
        assert await outcome(b.provider, "x", "flaky") == "x@b"


async def test_the_owner_of_a_key_stopping_its_provider_frees_the_key_for_a_joiner(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A joiner on another instance takes a key over as soon as its owner's caller gives up
    (the claim is released, not left to lapse)."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        a.service.mode = "block"
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            owner = trio.CancelScope()

            async def call_on_a() -> None:
                with owner:
                    await a.provider.call("p", key="k", timeout=60)

            nursery.start_soon(call_on_a)
            await wait_for(lambda: len(a.service.calls) == 1)
            nursery.start_soon(lambda: _keyed(results, b.provider, "p", "k"))
            await trio.sleep(0.3)
            assert b.service.calls == []
            started = trio.current_time()
            owner.cancel()
            await wait_for(lambda: len(results) == 1)
            assert trio.current_time() - started < FAST["idempotency_lease"]
        assert results == ["p@b"]
        assert b.fleet.status().idempotency["svc"]["takeovers"] == 1


@pytest.mark.parametrize("policy", ["local", "reject"])
async def test_keyed_calls_while_the_store_is_down_follow_the_policy(
    mock_clock: trio.testing.MockClock, policy: str
) -> None:
    """With the store down a keyed call runs on this instance alone (``local``) or is refused
    with FleetStoreUnavailable (``reject``); unkeyed calls run either way."""
    server = MemoryServer()
    async with fleet_of(server, ["a"], provider_settings(on_store_down=policy)) as (a,):
        server.stop()
        result = await outcome(a.provider, "x", "k")
        if policy == "local":
            assert result == "x@a"
        else:
            assert isinstance(result, FleetStoreUnavailable)
            assert a.service.calls == []
        assert await outcome(a.provider, "y") == "y@a"


async def test_a_caller_leaving_while_its_key_waits_for_another_instance(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A joiner whose caller gives up is dropped (nothing left running or claimed); the
    owner's call is not disturbed."""
    server = MemoryServer()
    async with fleet_of(server, ["a", "b"]) as (a, b):
        a.service.mode = "block"
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _keyed(results, a.provider, "p", "k"))
            await wait_for(lambda: len(a.service.calls) == 1)
            error = await outcome_with_timeout(b.provider, "p", "k", 1.0)
            assert isinstance(error, Exception)
            status = await b.provider.status()
            assert status.waiting == 0
            assert status.running == 0
            assert b.fleet.status().idempotency["svc"]["claims"] == 0
            a.service.release.set()
        assert results == ["p@a"]
        assert await outcome(b.provider, "p", "k") == "p@a"


async def outcome_with_timeout(
    provider: Provider[Any, Any], payload: Any, key: str, seconds: float
) -> Any:
    try:
        return await provider.call(payload, key=key, timeout=seconds)
    except Exception as exc:
        return exc


async def test_a_restarted_provider_releases_the_keys_its_crashed_incarnation_held(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Claims of calls that died with a crashed incarnation are released by the next one, so
    a joiner elsewhere takes over before the lease would lapse."""
    from supervisors import ChildSpec, open_supervisor

    server = MemoryServer()
    settings = FleetSettings(**{**FAST, "instance_id": "a", "idempotency_lease": 30.0})
    service = Service("a")
    service.mode = "block"
    async with (
        open_fleet(settings, server=server) as fleet_a,
        fleet_of(server, ["b"]) as (b,),
        open_supervisor(
            [
                ChildSpec(
                    "svc",
                    lambda: ProviderActor("svc", service, provider_settings(), fleet=fleet_a),
                    shutdown=0.1,  # the running call is cut short: its claim dies with it
                )
            ]
        ) as root,
    ):
        a = Provider(root.ref("svc"))
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _keyed(results, a, "p", "k"))
            await wait_for(lambda: len(service.calls) == 1)
            nursery.start_soon(lambda: _keyed(results, b.provider, "p", "k"))
            await trio.sleep(0.3)
            started = trio.current_time()
            await root.terminate_child("svc")
            await root.restart_child("svc")
            await wait_for(lambda: "p@b" in results)
            assert trio.current_time() - started < 1.0  # not the 30 s lease
        assert len(results) == 2


# ------------------------------------------------------------------------- quota


async def test_the_fleet_quota_bounds_calls_across_instances(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Two instances calling as fast as they can share one quota: over 5 s at most burst +
    rate x 5 calls run, whatever the instances do; callers that would wait past their
    deadline get RateLimited."""
    server = MemoryServer()
    settings = provider_settings(quota_rate=10.0, quota_burst=5.0, idempotency=False)
    async with fleet_of(server, ["a", "b"], settings, quota_batch=2) as (a, b):
        started = trio.current_time()
        limited = 0

        async def hammer(instance: Instance) -> None:
            nonlocal limited
            while trio.current_time() - started < 5.0:
                try:
                    await instance.provider.call("q", timeout=0.05)
                except RateLimited:
                    limited += 1
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hammer, a)
            nursery.start_soon(hammer, b)
        ran = len(a.service.calls) + len(b.service.calls)
        # The quota started with the members (at 0 on the mock clock): tokens leased then
        # may be used within the test's five seconds.
        assert ran <= 5 + 10 * trio.current_time() + 1
        assert ran >= 0.6 * 10 * 5
        assert limited > 0


async def test_a_quota_with_the_store_down_follows_the_policy(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With the store down a quota'd call runs (``local``) or is refused (``reject``)."""
    server = MemoryServer()
    local = provider_settings(quota_rate=100.0, idempotency=False)
    async with fleet_of(server, ["a"], local) as (a,):
        server.stop()
        await trio.sleep(1.0)
        results = [await outcome(a.provider, n) for n in range(20)]
        assert all(r == f"{n}@a" for n, r in enumerate(results))
    server = MemoryServer()
    strict = provider_settings(quota_rate=100.0, idempotency=False, on_store_down="reject")
    async with fleet_of(server, ["a"], strict) as (a,):
        server.stop()
        results = [await outcome(a.provider, n) for n in range(40)]
        assert any(isinstance(r, FleetStoreUnavailable) for r in results)


def test_fleet_settings_are_inert_without_a_member() -> None:
    """A provider whose settings share everything but that is given no fleet member works
    alone (nothing to wire)."""
    actor = ProviderActor("svc", Service("x"), provider_settings(quota_rate=1.0))
    assert actor._link is None
    assert actor._gate is None
    assert not math.isnan(0.0)


# ------------------------------------------------------------------------- schedules


async def _probe_race() -> tuple[int, list[Any], list[str]]:
    server = MemoryServer()
    async with fleet_of(server, ["a", "b", "c"]) as instances:
        instances[0].service.mode = "dependency"
        await outcome(instances[0].provider, 0)
        await wait_for(lambda: all(i.fleet_state() == "open" for i in instances))
        for i in instances:
            i.service.calls.clear()
            i.service.mode = "ok"
        await trio.sleep(5.5)
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            for i in instances:
                for n in range(4):
                    nursery.start_soon(_append, results, i.provider, n)
        await wait_for(lambda: all(i.fleet_state() == "closed" for i in instances))
        return (
            sum(len(i.service.calls) for i in instances),
            results,
            [i.fleet_state() for i in instances],
        )


def test_one_probe_whatever_the_schedule() -> None:
    """Over 100 schedules of 12 concurrent calls on 3 instances after the break: exactly one
    reaches a service (the fleet's probe), every caller is answered once, and the fleet
    breaker ends closed everywhere."""
    from tests.trio_seeds import run_seeded

    for seed in range(100):
        calls, results, states = run_seeded(_probe_race, seed)
        assert calls == 1, seed
        assert len(results) == 12, seed
        assert sum(isinstance(r, str) for r in results) == 1, seed
        assert all(isinstance(r, str | CircuitOpen) for r in results), seed
        assert states == ["closed"] * 3, seed


async def _key_race() -> tuple[list[Instance], list[tuple[str, Any]]]:
    server = MemoryServer()
    async with fleet_of(server, ["a", "b", "c"]) as instances:
        results: list[tuple[str, Any]] = []

        async def call(i: Instance, key: str) -> None:
            results.append((key, await outcome(i.provider, key, key)))

        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(call, instances[n % 3], f"k{n % 6}")
        return instances, results


def test_each_key_runs_once_whatever_the_schedule() -> None:
    """Over 100 schedules of 30 concurrent keyed calls (6 keys) on 3 instances: each key runs
    once in the fleet and all its callers get that run's reply."""
    from tests.trio_seeds import run_seeded

    for seed in range(100):
        instances, results = run_seeded(_key_race, seed)
        runs = [payload for i in instances for payload in i.service.calls]
        assert sorted(runs) == [f"k{n}" for n in range(6)], seed
        assert len(results) == 30, seed
        by_key: dict[str, set[Any]] = {}
        for key, value in results:
            by_key.setdefault(key, set()).add(value)
        assert all(len(values) == 1 for values in by_key.values()), (seed, by_key)
        assert all(next(iter(v)).startswith(k + "@") for k, v in by_key.items()), seed


# ------------------------------------------------------------------------- open_providers


async def test_open_providers_with_a_fleet_section_joins_the_fleet(
    redis_url: str, redis_prefix: str
) -> None:
    """``open_providers`` of a configuration with a [fleet] section opens the member for the
    block: a keyed call made by one instance and retried by another (on a real Redis) runs
    once."""
    from actors import ResilienceConfig
    from supervisors import open_providers, resilient

    runs: list[str] = []

    @resilient("pay", key=lambda order: f"order-{order}")
    async def charge(order: int) -> str:
        runs.append(f"order-{order}")
        return f"charged {order}"

    def config(instance: str) -> ResilienceConfig:
        fleet = {**FAST, "redis_url": redis_url, "key_prefix": redis_prefix}
        fleet["instance_id"] = instance
        return ResilienceConfig.from_dict({"fleet": fleet, "providers": {"pay": {}}})

    async with open_providers(config("a")):
        assert await charge(7) == "charged 7"
    async with open_providers(config("b")) as second:
        assert await charge(7) == "charged 7"  # the fleet's stored reply
        pay = await second.get("pay")
        with trio.fail_after(10):  # its view of the fleet breaker is read soon after it starts
            while (await pay.status()).fleet != "closed":  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert runs == ["order-7"]
