"""Provider figures: our whole actor-mediated call against the stack a trio user builds today.

* ``provider_ask_ns``: ``Provider.call`` on the success path with every policy on: breaker,
  retry policy and budget, bulkhead, an idempotency key (a fresh one per call), the per-attempt
  timeout, and reports to a running monitor actor.
* ``provider_vs_ask``: its ratio to a bare ``ActorRef.ask`` measured in the same run.
* ``peer_stack_ns``: the same function called in-line under trio through tenacity's
  ``AsyncRetrying`` (``sleep=trio.sleep``) around a reused purgatory breaker;
  ``provider_vs_peer_stack`` our ratio to it.
* ``provider_rejected_ns``: a call while the breaker is open; ``provider_rejected_vs_peer`` its
  ratio to aiobreaker's open-breaker rejection under trio.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import trio

from actors import Actor, CircuitOpen, open_actor
from actors._config import ProviderSettings
from actors._provider import ProviderActor
from actors._provider_client import Provider
from bench._harness import Candidate, interleave, now_ns, timed_trio
from supervisors import ChildSpec, open_supervisor

GOALS = {
    "provider_vs_ask": ("<=", 2.5),
    "provider_vs_peer_stack": ("<", 1.0),
    "provider_rejected_vs_peer": ("<=", 1.0),
}


async def service(payload: Any) -> Any:
    return payload


class Echo(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        return message


def _monitor_factory() -> Any:
    try:
        from actors._monitor import MonitorActor
    except ImportError:  # pragma: no cover - until the monitor actor exists

        class Sink(Actor[Any, Any]):
            async def handle(self, message: Any) -> Any:
                return None

        return Sink
    return MonitorActor


async def _provider(n: int) -> float:
    specs = [
        ChildSpec("monitor", _monitor_factory()),
        ChildSpec(
            "svc",
            lambda: ProviderActor("svc", service, ProviderSettings(), monitor="monitor"),
        ),
    ]
    async with open_supervisor(specs) as root:
        p: Provider[Any, Any] = Provider(root.ref("svc"))
        await p.call(-1, key="warm")
        t0 = now_ns()
        for i in range(n):
            await p.call(i, key=f"request-{i}")
        return (now_ns() - t0) / n


async def _ask(n: int) -> float:
    async with open_actor(Echo) as ref:
        await ref.ask(0)
        t0 = now_ns()
        for i in range(n):
            await ref.ask(i)
        return (now_ns() - t0) / n


def _peer_stack() -> Candidate | None:
    try:
        import tenacity
        from purgatory import AsyncCircuitBreakerFactory
    except ImportError:
        return None

    async def body(n: int) -> float:
        breaker = await AsyncCircuitBreakerFactory().get_breaker("svc")

        async def call(payload: Any) -> Any:
            # What a trio user writes today: a retry loop per call around a shared breaker.
            retrying = tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(3),
                wait=tenacity.wait_exponential(multiplier=1, max=30),
                retry=tenacity.retry_if_exception_type((ConnectionError, TimeoutError)),
                sleep=trio.sleep,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    async with breaker:
                        return await service(payload)
            raise AssertionError("unreachable")

        await call(0)
        t0 = now_ns()
        for i in range(n):
            await call(i)
        return (now_ns() - t0) / n

    return timed_trio(body)


async def _rejected(n: int) -> float:
    async with open_actor(lambda: ProviderActor("svc", service), name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        await p.isolate()
        t0 = now_ns()
        for i in range(n):
            try:
                await p.call(i)
            except CircuitOpen:
                pass
        return (now_ns() - t0) / n


def _aiobreaker_rejected() -> Candidate | None:
    try:
        import aiobreaker
    except ImportError:
        return None

    async def body(n: int) -> float:
        breaker = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=datetime.timedelta(days=1))
        breaker.open()
        t0 = now_ns()
        for i in range(n):
            try:
                await breaker.call_async(service, i)
            except aiobreaker.CircuitBreakerError:
                pass
        return (now_ns() - t0) / n

    return timed_trio(body)


def collect(quick: bool) -> dict[str, float]:
    logging.getLogger("supervisors").setLevel(logging.CRITICAL)
    n, reps = (2000, 5) if quick else (10000, 9)
    candidates: dict[str, Candidate] = {
        "provider": timed_trio(_provider),
        "ask": timed_trio(_ask),
    }
    peer = _peer_stack()
    if peer is not None:
        candidates["peer"] = peer
    calls = interleave(candidates, n=n, reps=reps)
    rejections: dict[str, Candidate] = {"rejected": timed_trio(_rejected)}
    aio = _aiobreaker_rejected()
    if aio is not None:
        rejections["aiobreaker"] = aio
    rejected = interleave(rejections, n=n, reps=reps)
    nan = float("nan")
    return {
        "provider_ask_ns": calls["provider"],
        "provider_vs_ask": calls["provider"] / calls["ask"],
        "peer_stack_ns": calls.get("peer", nan),
        "provider_vs_peer_stack": calls["provider"] / calls.get("peer", nan),
        "provider_rejected_ns": rejected["rejected"],
        "provider_rejected_vs_peer": rejected["rejected"] / rejected.get("aiobreaker", nan),
    }
