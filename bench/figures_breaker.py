"""Figures for the circuit breaker and the classifier, against pybreaker, purgatory, aiobreaker.

Theory of operation
-------------------
Every figure is the extra cost a breaker adds around a trivial call ``f()``, measured inside a
trio run, on the same workload for every candidate: a fresh breaker per run, **one counted
failure** recorded first (so the window holds a failure, as a service's window usually does),
then ``n`` successful calls.  Rounds interleave the candidates (:func:`bench._harness.measure`);
each figure is the median of its per-round values, with the interquartile range.

* ``breaker_clocked_ns``: our breaker's per-call work *as the provider does it*:
  ``start = clock()``, ``acquire(start)``, ``f()``, ``end = clock()``,
  ``record_success(permit, end, end - start)``; minus ``f()`` called bare in the same kind of
  loop.  The clock reads count: the provider makes them for the breaker, reading the run's
  clock directly (``trio.lowlevel.current_clock().current_time``, fetched once per actor
  incarnation, as here once per run).
* ``pybreaker_call_ns``: ``pybreaker.CircuitBreaker().call(f)`` minus ``f()``.
* ``purgatory_call_ns``: purgatory's cheapest correct form, its synchronous breaker fetched once
  from a ``SyncCircuitBreakerFactory`` and reused as a context manager (``with brk: f()``)
  minus ``f()`` (its decorator looks the breaker up again on every call, which costs more).
* ``aiobreaker_call_ns``: ``aiobreaker.CircuitBreaker().call(f)`` (its synchronous form, cheaper
  than ``call_async``) minus ``f()``.
* ``breaker_clocked_vs_cheapest_peer``: ours over the cheapest peer of the same round.  Each
  peer reads its own clock as it needs to (pybreaker and aiobreaker only when a call fails).
* ``breaker_open_reject_ns``: an open breaker refusing a call (``CircuitOpen`` raised and
  caught), for comparison with the peers' rejections in ``bench.figures_provider``.
* ``classify_ns``: classifying a ``ConnectionResetError`` (the cached per-type path), minus
  an empty loop.

A peer's figure is ``nan`` when it is not installed (``pip install aura-actors[bench]``); the
ratio uses the peers that are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import trio

from actors._errors import CircuitOpen, ErrorCategory
from actors._policies._breaker import BreakerSettings, BreakerState, CircuitBreaker
from actors._policies._classify import Classifier
from bench._harness import Candidate, Figure, measure, now_ns, timed_trio

__all__ = ["GOALS", "collect"]

GOALS = {"breaker_clocked_vs_cheapest_peer": ("<=", 0.5)}

_PEERS = ("pybreaker", "purgatory", "aiobreaker")


class _Failure(ConnectionError):
    """The one counted failure every breaker sees before the timed calls."""


def _f() -> None:
    return None


def _fail() -> None:
    raise _Failure("connection reset")


async def _bare(n: int) -> float:
    f = _f
    t0 = now_ns()
    for _ in range(n):
        f()
    return (now_ns() - t0) / n


async def _ours(n: int) -> float:
    breaker = CircuitBreaker(BreakerSettings(), name="bench")
    clock = trio.lowlevel.current_clock().current_time  # as the provider reads it
    failed = clock()
    breaker.record_failure(breaker.acquire(failed), clock(), ErrorCategory.NETWORK, 0.0)
    acquire, record = breaker.acquire, breaker.record_success
    f = _f
    t0 = now_ns()
    for _ in range(n):
        start = clock()
        permit = acquire(start)
        f()
        end = clock()
        record(permit, end, end - start)
    elapsed = now_ns() - t0
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().window_failures == 1, "the failure must stay in the window"
    return elapsed / n


def _calling(make: Callable[[], Any], closed: Callable[[Any], bool]) -> Candidate:
    """A peer whose fastest form is ``breaker.call(f)`` (pybreaker, aiobreaker)."""

    async def body(n: int) -> float:
        breaker = make()
        call, f = breaker.call, _f
        try:
            call(_fail)
        except _Failure:
            pass
        t0 = now_ns()
        for _ in range(n):
            call(f)
        elapsed = now_ns() - t0
        assert closed(breaker)
        return elapsed / n

    return timed_trio(body)


def _pybreaker() -> Candidate | None:
    try:
        import pybreaker
    except ImportError:
        return None
    return _calling(pybreaker.CircuitBreaker, lambda b: b.current_state == "closed")


def _purgatory() -> Candidate | None:
    try:
        from purgatory import SyncCircuitBreakerFactory
    except ImportError:
        return None

    async def body(n: int) -> float:
        breaker = SyncCircuitBreakerFactory().get_breaker("bench")
        try:
            with breaker:
                _fail()
        except _Failure:
            pass
        f = _f
        t0 = now_ns()
        for _ in range(n):
            with breaker:
                f()
        elapsed = now_ns() - t0
        assert breaker.context.state == "closed"
        return elapsed / n

    return timed_trio(body)


def _aiobreaker() -> Candidate | None:
    try:
        import aiobreaker
    except ImportError:
        return None
    closed = aiobreaker.CircuitBreakerState.CLOSED
    return _calling(aiobreaker.CircuitBreaker, lambda b: b.current_state is closed)


def _open_reject(n: int) -> float:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1, break_duration=1e9))
    breaker.record_failure(breaker.acquire(0.0), 0.0, ErrorCategory.TIMEOUT)
    acquire = breaker.acquire
    t0 = time.perf_counter_ns()
    for _ in range(n):
        try:
            acquire(1.0)
        except CircuitOpen:
            pass
    return (time.perf_counter_ns() - t0) / n


def _empty(n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pass
    return (time.perf_counter_ns() - t0) / n


def _classify() -> Candidate:
    classify = Classifier().classify
    exc = ConnectionResetError(104, "Connection reset by peer")

    def run(n: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            classify(exc)
        return (time.perf_counter_ns() - t0) / n

    return run


def _round(ns: dict[str, float]) -> dict[str, float]:
    def overhead(name: str) -> float:
        return ns[name] - ns["bare"] if name in ns else math.nan

    ours = overhead("ours")
    peers = [overhead(p) for p in _PEERS if p in ns]
    cheapest = min(peers) if peers else math.nan
    # A preemption during the short bare loop can make a difference negative: that round has
    # no ratio (nan does not vote, see Figure.of).
    ratio = ours / cheapest if min(ours, cheapest) > 0 else math.nan
    return {
        "breaker_clocked_ns": ours,
        "pybreaker_call_ns": overhead("pybreaker"),
        "purgatory_call_ns": overhead("purgatory"),
        "aiobreaker_call_ns": overhead("aiobreaker"),
        "breaker_clocked_vs_cheapest_peer": ratio,
        "breaker_open_reject_ns": ns["reject"] - ns["empty"],
        "classify_ns": ns["classify"] - ns["empty"],
    }


def collect(quick: bool) -> dict[str, Figure]:
    """Measure the figures listed in the module docstring."""
    n, rounds = (10_000, 15) if quick else (20_000, 41)
    candidates: dict[str, Candidate] = {"bare": timed_trio(_bare), "ours": timed_trio(_ours)}
    peers: dict[str, Callable[[], Candidate | None]] = {
        "pybreaker": _pybreaker,
        "purgatory": _purgatory,
        "aiobreaker": _aiobreaker,
    }
    for name, build in peers.items():
        candidate = build()
        if candidate is not None:
            candidates[name] = candidate
    candidates["empty"] = _empty
    candidates["classify"] = _classify()
    candidates["reject"] = _open_reject
    return measure(candidates, _round, n=n, rounds=rounds)
