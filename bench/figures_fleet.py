"""Fleet figures: what sharing a provider's breaker and keys through Redis costs a call.

Theory of operation
-------------------
Every figure runs against a real Redis on loopback: ``$AURA_BENCH_REDIS_URL`` when it is set,
else a ``redis-server`` the module starts (:class:`actors.testing.RedisServer`).  Round trips
are *counted* (the store client counts the commands it sends, per operation), not timed; the
one figure that needs time is expressed in round-trip times measured in the same run.

* ``fleet_gate_on_ns`` / ``fleet_gate_off_ns`` and ``fleet_breaker_gate_overhead``: an
  unkeyed ``Provider.call`` (default settings, no monitor) on a provider sharing its breaker
  with a fleet (the gate reads the cached view: closed and fresh) against the same provider
  with no fleet; interleaved rounds, the median of per-round ratios (goal <= 1.1).
* ``fleet_breaker_rtts_per_call``: during the gate-on candidate's calls, the store round trips
  other than the member's periodic heartbeats and refreshes, per call (goal 0).
* ``fleet_trip_propagation_rtts``: two members, A and B, on their own connections (in one
  process, so B's calls and A's store traffic share one event loop); A's service answers 503,
  which trips A's breaker and opens the fleet breaker (one instance suffices for a
  provider-wide failure).  The time from A's breaker tripping (its transition, on trio's clock)
  until B's first call rejected by the fleet breaker (B calls in a loop), divided by the
  median round-trip time of a ``PING`` on A's connection measured around the trips of the same
  round; a round makes seven trips (the fleet breaker reset between them) and takes their
  median (goal <= 5).
* ``redis_idempotency_rtts_per_call``: keyed calls with fresh keys on a provider sharing its
  keyed calls: the store round trips of the claims and finishes (the success path; renewals
  are periodic, per batch of claims held, and counted apart) per call, counted once every
  finish reached the store (goal <= 2).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import statistics
from typing import Any

import trio

from actors import (
    BreakerSettings,
    CircuitOpen,
    FleetProviderSettings,
    FleetSettings,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
    open_actor,
    open_fleet,
)
from actors._fleet._member import Fleet
from actors._provider._client import Provider
from actors.chaos import fault
from bench._harness import Candidate, Figure, default_logging, measure, now_ns, server_url

GOALS = {
    "fleet_breaker_rtts_per_call": ("<=", 0.0),
    "fleet_breaker_gate_overhead": ("<=", 1.1),
    "fleet_trip_propagation_rtts": ("<=", 5.0),
    "redis_idempotency_rtts_per_call": ("<=", 2.0),
}

#: The member's periodic operations: not made for any call.
_PERIODIC = frozenset({"fleet.heartbeat", "breaker.read", "fleet.leave", "idempotency.renew"})
_PER_KEY = ("idempotency.claim", "idempotency.finish", "idempotency.release")


async def service(payload: Any) -> Any:
    return payload


def _settings(url: str, instance: str, prefix: str) -> FleetSettings:
    return FleetSettings(redis_url=url, key_prefix=prefix, instance_id=instance)


def _per_call(fleet: Fleet) -> int:
    """Round trips of the member's client so far, its periodic ones left out."""
    assert fleet._client is not None
    counts = fleet._client.statistics().by_operation
    return sum(count for op, count in counts.items() if op not in _PERIODIC)


async def _fresh(fleet: Fleet, name: str) -> None:
    """Wait until the member's view of ``name`` was read (a fresh, closed gate)."""
    with trio.fail_after(10):
        while True:
            status = fleet.status()
            if any(b.service == name and b.fresh for b in status.breakers):
                return
            await trio.sleep(0.001)


# ----------------------------------------------------------------------------- the gate


def _gate(url: str, on: bool, rtts: dict[str, float]) -> Candidate:
    def run(n: int) -> float:
        async def body() -> float:
            prefix = f"bench-{secrets.token_hex(4)}"
            async with contextlib.AsyncExitStack() as stack:
                fleet: Fleet | None = None
                if on:
                    fleet = await stack.enter_async_context(
                        open_fleet(_settings(url, "gate", prefix))
                    )
                ref = await stack.enter_async_context(
                    open_actor(lambda: ProviderActor("svc", service, fleet=fleet), name="svc")
                )
                p: Provider[Any, Any] = Provider(ref)
                if fleet is not None:
                    await _fresh(fleet, "svc")
                    before = _per_call(fleet)
                await p.call(-1)
                t0 = now_ns()
                for i in range(n):
                    await p.call(i)
                elapsed = now_ns() - t0
                if fleet is not None:
                    rtts["gate"] = (_per_call(fleet) - before) / n
                return elapsed / n

        return trio.run(body)

    return run


# ----------------------------------------------------------------------------- propagation


class _Failing:
    def __init__(self) -> None:
        self.down = False

    async def __call__(self, payload: Any) -> Any:
        if self.down:
            raise fault("dependency")
        return payload


def _propagation(url: str, out: dict[str, float]) -> Candidate:
    """Per round, ``_TRIPS`` trips (the fleet breaker reset between them); the round's figures
    are their medians, and the median of the round's pings (before and after each trip)."""

    def run(n: int) -> float:
        async def body() -> float:
            prefix = f"bench-{secrets.token_hex(4)}"
            settings = ProviderSettings(
                breaker=BreakerSettings(failure_threshold=1, break_duration=60.0),
                retry=RetrySettings(max_attempts=1),
                fleet=FleetProviderSettings(idempotency=False),
            )
            failing = _Failing()
            async with (
                open_fleet(_settings(url, "a", prefix)) as fleet_a,
                open_fleet(_settings(url, "b", prefix)) as fleet_b,
                open_actor(
                    lambda: ProviderActor("svc", failing, settings, fleet=fleet_a), name="a"
                ) as ref_a,
                open_actor(
                    lambda: ProviderActor("svc", service, settings, fleet=fleet_b), name="b"
                ) as ref_b,
            ):
                a: Provider[Any, Any] = Provider(ref_a)
                b: Provider[Any, Any] = Provider(ref_b)
                client = fleet_a._client
                assert client is not None
                pings: list[float] = []
                trips: list[float] = []

                async def ping(count: int) -> None:
                    for _ in range(count):
                        t = now_ns()
                        await client.call("ping", lambda redis: redis.ping())
                        pings.append(now_ns() - t)

                for _ in range(_TRIPS):
                    await _closed(fleet_a)
                    await _closed(fleet_b)
                    await ping(5)
                    trips.append(await _trip(a, b, failing, ref_a))
                    await ping(5)
                    failing.down = False
                    await a.reset()  # fleet-wide and a's own breaker
                    await b.reset()
                rtt = statistics.median(pings)
                out["rtt_ns"] = rtt
                out["rtts"] = statistics.median(trips) / rtt
                return statistics.median(trips)

        return trio.run(body)

    return run


_TRIPS = 7


async def _closed(fleet: Fleet) -> None:
    """Wait until the member's view of ``svc`` is fresh and closed."""
    with trio.fail_after(10):
        while True:
            status = fleet.status()
            if any(b.service == "svc" and b.fresh and b.state == "closed" for b in status.breakers):
                return
            await trio.sleep(0.001)


async def _trip(
    a: Provider[Any, Any], b: Provider[Any, Any], failing: _Failing, ref_a: Any
) -> float:
    """ns from A's breaker tripping until B's first call the fleet breaker rejects (B calls in
    a loop meanwhile).  The trip's time is the transition's, on trio's clock."""
    failing.down = True
    rejected_at = 0.0
    started = trio.Event()
    rejected = trio.Event()

    async def b_calls() -> None:
        nonlocal rejected_at
        started.set()
        while True:
            try:
                await b.call(0)
            except CircuitOpen as exc:
                if exc.fleet:
                    rejected_at = trio.current_time()
                    rejected.set()
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(b_calls)
        await started.wait()
        with contextlib.suppress(Exception):
            await a.call(1)
        with trio.fail_after(10):
            await rejected.wait()
    tripped = ref_a._cell.incarnation.actor._breaker.transitions()[-1]
    assert tripped.new.value == "open"
    return (rejected_at - tripped.at) * 1e9


# ----------------------------------------------------------------------------- idempotency


def _keyed(url: str, out: dict[str, float]) -> Candidate:
    def run(n: int) -> float:
        async def body() -> float:
            prefix = f"bench-{secrets.token_hex(4)}"
            async with (
                open_fleet(_settings(url, "keys", prefix)) as fleet,
                open_actor(lambda: ProviderActor("svc", service, fleet=fleet), name="svc") as ref,
            ):
                p: Provider[Any, Any] = Provider(ref)
                await p.call(-1, key="warm")  # loads the scripts into the server
                await _finished(fleet, 1)
                client = fleet._client
                assert client is not None
                before = client.statistics().by_operation
                t0 = now_ns()
                for i in range(n):
                    await p.call(i, key=f"request-{i}")
                elapsed = now_ns() - t0
                await _finished(fleet, n + 1)
                after = client.statistics().by_operation
                per_key = sum(after.get(op, 0) - before.get(op, 0) for op in _PER_KEY)
                out["rtts"] = per_key / n
                out["renewals"] = after.get("idempotency.renew", 0) - before.get(
                    "idempotency.renew", 0
                )
                return elapsed / n

        return trio.run(body)

    return run


async def _finished(fleet: Fleet, count: int) -> None:
    with trio.fail_after(30):
        while fleet.status().idempotency["svc"]["finished"] < count:  # noqa: ASYNC110
            await trio.sleep(0.001)


# ----------------------------------------------------------------------------- collect


def _redis() -> contextlib.AbstractContextManager[str | None]:
    from actors.testing import RedisServer

    return server_url("AURA_BENCH_REDIS_URL", lambda: RedisServer().start(), "fleet figures")


def collect(quick: bool) -> dict[str, Figure]:
    """Measure the figures listed in the module docstring."""
    nan = Figure(math.nan, rounds=0)
    with _redis() as url, default_logging():
        if url is None:
            return dict.fromkeys(GOALS, nan)
        n, rounds = (2000, 11) if quick else (10000, 31)
        rtts: dict[str, float] = {}

        def gate(ns: dict[str, float]) -> dict[str, float]:
            return {
                "fleet_gate_on_ns": ns["on"],
                "fleet_gate_off_ns": ns["off"],
                "fleet_breaker_gate_overhead": ns["on"] / ns["off"],
                "fleet_breaker_rtts_per_call": rtts["gate"],
            }

        candidates = {"on": _gate(url, True, rtts), "off": _gate(url, False, rtts)}
        figures = measure(candidates, gate, n=n, rounds=rounds)

        propagation: dict[str, float] = {}

        def trip(ns: dict[str, float]) -> dict[str, float]:
            return {
                "fleet_trip_propagation_rtts": propagation["rtts"],
                "fleet_trip_propagation_us": ns["trip"] / 1000,
                "redis_rtt_us": propagation["rtt_ns"] / 1000,
            }

        figures.update(measure({"trip": _propagation(url, propagation)}, trip, n=n, rounds=rounds))

        keyed: dict[str, float] = {}

        def keys(ns: dict[str, float]) -> dict[str, float]:
            return {
                "redis_idempotency_rtts_per_call": keyed["rtts"],
                "redis_keyed_call_us": ns["keyed"] / 1000,
            }

        figures.update(
            measure({"keyed": _keyed(url, keyed)}, keys, n=max(200, n // 10), rounds=rounds)
        )
        return figures
