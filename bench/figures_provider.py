"""Provider figures: a keyed provider call against an in-line stack doing the same work, and
open-breaker rejections against the peers'.

Theory of operation
-------------------
Every candidate runs ``n`` calls in a fresh trio run, from one caller task, to a service
function that returns its payload; rounds interleave the candidates and each figure is the
median of its per-round values, with the interquartile range.

* ``provider_call_ns``: ``Provider.call(i, key=f"request-{i}")`` (a fresh idempotency key per
  call) on a provider actor with the default :class:`~actors.ProviderSettings`: the
  breaker, the retry policy with its budget, the bulkhead, the idempotency table (with the
  payload's fingerprint), the per-attempt timeout and the outcome counters.  No monitor.
* ``equal_stack_ns``: the same work written in-line under trio with the usual libraries, in
  their fastest correct form and with the provider's default numbers: the payload's
  fingerprint (deterministic msgpack, BLAKE2b-128) checked against a ``dict`` idempotency
  cache of ``(fingerprint, reply)``; outcome counters; a ``trio.Semaphore(10)`` bulkhead; a
  ``tenacity.retry`` (3 attempts or 60 s, exponential backoff with full jitter, retrying
  network errors and timeouts, ``sleep=trio.sleep``; the decorator copies its retry state per
  call, as concurrent callers need); a purgatory breaker (fetched once); and ``trio.fail_after``
  per attempt.
* ``provider_vs_equal_stack``: their per-round ratio (goal < 1).
* ``provider_monitored_call_ns`` and ``provider_vs_ask``: the keyed call on a provider that
  reports every attempt to a running monitor actor (both in a supervision tree), and its ratio
  to a bare ``ActorRef.ask`` (``ask_ns``).
* ``provider_rejected_ns``: an unkeyed call while the breaker is *open* (tripped by a failure,
  not isolated by an operator); ``provider_rejected_keyed_ns`` the same with an idempotency key
  that has no stored outcome (a fresh one per call).
* ``peer_rejected_ns``: the cheapest open-breaker rejection of aiobreaker
  (``await breaker.call_async(f)``) and purgatory (``async with breaker``), tripped the same
  way, under trio; ``peer_rejected_keyed_ns`` the same after the equal stack's cache lookup
  (a miss), in its fastest correct form: the payload's fingerprint is computed only when the
  key is found (to replay or refuse a conflict), as the provider does while its breaker is
  open.  ``provider_rejected_vs_peer`` and
  ``provider_rejected_keyed_vs_peer`` are our per-round ratios to them (goals <= 1).
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from actors import Actor, CircuitOpen, open_actor
from actors._monitor._actor import MonitorActor
from actors._policies._breaker import BreakerSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from bench._harness import Candidate, Figure, measure, now_ns, timed_trio
from supervisors import ChildSpec, open_supervisor

GOALS = {
    "provider_vs_ask": ("<=", 2.5),
    "provider_vs_equal_stack": ("<", 1.0),
    "provider_rejected_vs_peer": ("<=", 1.0),
    "provider_rejected_keyed_vs_peer": ("<=", 1.0),
}

_NAN = math.nan


async def service(payload: Any) -> Any:
    if payload == "fail":
        raise ConnectionError("connection reset by peer")
    return payload


class Echo(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        return message


async def _keyed_calls(p: Provider[Any, Any], n: int) -> float:
    await p.call(-1, key="warm")
    t0 = now_ns()
    for i in range(n):
        await p.call(i, key=f"request-{i}")
    return (now_ns() - t0) / n


async def _provider(n: int) -> float:
    async with open_actor(lambda: ProviderActor("svc", service), name="svc") as ref:
        return await _keyed_calls(Provider(ref), n)


async def _provider_monitored(n: int) -> float:
    specs = [
        ChildSpec("monitor", MonitorActor),
        ChildSpec("svc", lambda: ProviderActor("svc", service, monitor="monitor")),
    ]
    async with open_supervisor(specs) as root:
        return await _keyed_calls(Provider(root.ref("svc")), n)


async def _ask(n: int) -> float:
    async with open_actor(Echo) as ref:
        await ref.ask(0)
        t0 = now_ns()
        for i in range(n):
            await ref.ask(i)
        return (now_ns() - t0) / n


class _Counters:
    __slots__ = ("attempts", "calls", "failed", "succeeded")

    def __init__(self) -> None:
        self.calls = self.attempts = self.succeeded = self.failed = 0


_ENCODER = msgspec.msgpack.Encoder(order="deterministic")


def _fingerprint(payload: Any) -> bytes:
    return hashlib.blake2b(_ENCODER.encode(payload), digest_size=16).digest()


def _equal_stack() -> Candidate | None:
    try:
        import tenacity
        from purgatory import AsyncCircuitBreakerFactory
    except ImportError:
        return None

    async def body(n: int) -> float:
        breaker = await AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30).get_breaker(
            "svc"
        )
        bulkhead = trio.Semaphore(10)
        cache: dict[str, tuple[bytes, Any]] = {}
        counters = _Counters()

        @tenacity.retry(
            stop=tenacity.stop_after_attempt(3) | tenacity.stop_after_delay(60),
            wait=tenacity.wait_random_exponential(multiplier=1, max=30),
            retry=tenacity.retry_if_exception_type((ConnectionError, TimeoutError)),
            sleep=trio.sleep,
            reraise=True,
        )
        async def attempt(payload: Any) -> Any:
            counters.attempts += 1
            async with breaker:
                with trio.fail_after(10.0):
                    return await service(payload)

        async def call(payload: Any, key: str) -> Any:
            fingerprint = _fingerprint(payload)
            hit = cache.get(key)
            if hit is not None:
                if hit[0] != fingerprint:
                    raise ValueError(f"idempotency key {key!r} reused with another payload")
                return hit[1]
            counters.calls += 1
            async with bulkhead:
                try:
                    value = await attempt(payload)
                except Exception:
                    counters.failed += 1
                    raise
            counters.succeeded += 1
            cache[key] = (fingerprint, value)
            return value

        await call(-1, "warm")
        t0 = now_ns()
        for i in range(n):
            await call(i, f"request-{i}")
        elapsed = now_ns() - t0
        assert counters.succeeded == n + 1
        return elapsed / n

    return timed_trio(body)


# ------------------------------------------------------------------------------ rejections

_OPEN = ProviderSettings(
    breaker=BreakerSettings(failure_threshold=1, break_duration=1e9),
    retry=RetrySettings(max_attempts=1),
)


def _rejected(keyed: bool) -> Candidate:
    async def body(n: int) -> float:
        async with open_actor(lambda: ProviderActor("svc", service, _OPEN), name="svc") as ref:
            p: Provider[Any, Any] = Provider(ref)
            try:
                await p.call("fail")
            except Exception:  # the failure that trips the breaker
                pass
            keys = [f"request-{i}" if keyed else None for i in range(n)]
            rejected = 0
            t0 = now_ns()
            for i in range(n):
                try:
                    await p.call(i, key=keys[i])
                except CircuitOpen:
                    rejected += 1
            elapsed = now_ns() - t0
            assert rejected == n, "every call must be rejected by the open breaker"
            return elapsed / n

    return timed_trio(body)


Reject = Callable[[Any], Awaitable[Any]]


def _peer_rejected(
    open_breaker: Callable[[], Awaitable[tuple[Reject, type[Exception]]]],
) -> Callable[[bool], Candidate]:
    """Candidates (unkeyed, keyed) rejecting every call on a peer's open breaker."""

    def candidate(keyed: bool) -> Candidate:
        async def body(n: int) -> float:
            reject, error = await open_breaker()
            cache: dict[str, tuple[bytes, Any]] = {}
            keys = [f"request-{i}" for i in range(n)]
            rejected = 0
            t0 = now_ns()
            for i in range(n):
                try:
                    if keyed:
                        hit = cache.get(keys[i])
                        if hit is not None and hit[0] == _fingerprint(i):
                            continue
                    await reject(i)
                except error:
                    rejected += 1
            elapsed = now_ns() - t0
            assert rejected == n, "every call must be rejected by the open breaker"
            return elapsed / n

        return timed_trio(body)

    return candidate


def _aiobreaker() -> Callable[[bool], Candidate] | None:
    try:
        import aiobreaker
    except ImportError:
        return None

    async def open_breaker() -> tuple[Reject, type[Exception]]:
        breaker = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=datetime.timedelta(days=1))
        try:
            await breaker.call_async(service, "fail")
        except aiobreaker.CircuitBreakerError:
            pass

        async def reject(payload: Any) -> Any:
            return await breaker.call_async(service, payload)

        return reject, aiobreaker.CircuitBreakerError

    return _peer_rejected(open_breaker)


def _purgatory() -> Callable[[bool], Candidate] | None:
    try:
        from purgatory import AsyncCircuitBreakerFactory
        from purgatory.domain.model import OpenedState
    except ImportError:
        return None

    async def open_breaker() -> tuple[Reject, type[Exception]]:
        factory = AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=1e9)
        breaker = await factory.get_breaker("svc")
        try:
            async with breaker:
                await service("fail")
        except ConnectionError:
            pass

        async def reject(payload: Any) -> Any:
            async with breaker:
                return await service(payload)

        return reject, OpenedState

    return _peer_rejected(open_breaker)


def _calls(ns: dict[str, float]) -> dict[str, float]:
    stack = ns.get("stack", _NAN)
    return {
        "provider_call_ns": ns["provider"],
        "equal_stack_ns": stack,
        "provider_vs_equal_stack": ns["provider"] / stack,
        "provider_monitored_call_ns": ns["monitored"],
        "ask_ns": ns["ask"],
        "provider_vs_ask": ns["monitored"] / ns["ask"],
    }


def _rejections(ns: dict[str, float]) -> dict[str, float]:
    peers = [ns[name] for name in ("aiobreaker", "purgatory") if name in ns]
    keyed = [ns[name] for name in ("aiobreaker_keyed", "purgatory_keyed") if name in ns]
    peer = min(peers) if peers else _NAN
    peer_keyed = min(keyed) if keyed else _NAN
    return {
        "provider_rejected_ns": ns["rejected"],
        "provider_rejected_keyed_ns": ns["rejected_keyed"],
        "peer_rejected_ns": peer,
        "peer_rejected_keyed_ns": peer_keyed,
        "provider_rejected_vs_peer": ns["rejected"] / peer,
        "provider_rejected_keyed_vs_peer": ns["rejected_keyed"] / peer_keyed,
    }


def collect(quick: bool) -> dict[str, Figure]:
    """Measure the figures listed in the module docstring."""
    n, rounds = (2000, 11) if quick else (10000, 31)
    candidates: dict[str, Candidate] = {
        "provider": timed_trio(_provider),
        "monitored": timed_trio(_provider_monitored),
        "ask": timed_trio(_ask),
    }
    stack = _equal_stack()
    if stack is not None:
        candidates["stack"] = stack
    figures = measure(candidates, _calls, n=n, rounds=rounds)
    rejections: dict[str, Candidate] = {
        "rejected": _rejected(keyed=False),
        "rejected_keyed": _rejected(keyed=True),
    }
    for name, build in (("aiobreaker", _aiobreaker), ("purgatory", _purgatory)):
        peer = build()
        if peer is not None:
            rejections[name] = peer(False)
            rejections[f"{name}_keyed"] = peer(True)
    figures.update(measure(rejections, _rejections, n=n, rounds=rounds))
    return figures
