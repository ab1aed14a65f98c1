"""Figures for the circuit breaker and the classifier, against pybreaker and purgatory.

Theory of operation
-------------------
Every figure is the extra cost a policy adds around a trivial call, measured in one process
with the candidates interleaved (:func:`bench._harness.interleave`) and taken as medians:

* ``breaker_permit_record_ns``: our closed breaker, ``acquire(now)`` + ``record_success``
  around ``f()``, minus calling ``f()`` bare in the same loop.
* ``pybreaker_call_overhead_ns``: ``pybreaker.CircuitBreaker().call(f)`` minus ``f()``.
* ``purgatory_call_overhead_ns``: purgatory's cheapest API, its synchronous breaker fetched
  once from a ``SyncCircuitBreakerFactory`` and reused as a context manager (``with brk: f()``)
  minus ``f()``.  (Its decorator looks the breaker up again on every call, which costs more.)
* ``breaker_vs_cheapest_peer``: ours divided by the cheaper peer; the goal is <= 0.33.
* ``breaker_open_reject_ns``: an open breaker refusing a call (``CircuitOpen`` raised and
  caught), for comparison with the peers' 4-19 us quoted in DESIGN.md.
* ``classify_ns``: classifying a ``ConnectionResetError`` (the cached per-type path), minus
  an empty loop.

A figure is ``nan`` when a peer is not installed (``pip install aura-actors[bench]``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from actors._breaker import BreakerSettings, CircuitBreaker
from actors._classify import Classifier
from actors._errors import CircuitOpen, ErrorCategory
from bench._harness import Candidate, interleave

__all__ = ["GOALS", "collect"]

GOALS = {"breaker_vs_cheapest_peer": ("<=", 0.33)}


def _f() -> None:
    return None


def _bare(n: int) -> float:
    f = _f
    t0 = time.perf_counter_ns()
    for _ in range(n):
        f()
    return (time.perf_counter_ns() - t0) / n


def _ours() -> Candidate:
    breaker = CircuitBreaker(BreakerSettings(), name="bench")
    acquire, record = breaker.acquire, breaker.record_success

    def run(n: int) -> float:
        f = _f
        now = 1000.0
        t0 = time.perf_counter_ns()
        for _ in range(n):
            permit = acquire(now)
            f()
            record(permit, now, 0.0)
        return (time.perf_counter_ns() - t0) / n

    return run


def _pybreaker() -> Candidate | None:
    try:
        import pybreaker
    except ImportError:
        return None
    breaker = pybreaker.CircuitBreaker()

    def run(n: int) -> float:
        call, f = breaker.call, _f
        t0 = time.perf_counter_ns()
        for _ in range(n):
            call(f)
        return (time.perf_counter_ns() - t0) / n

    return run


def _purgatory() -> Candidate | None:
    try:
        from purgatory import SyncCircuitBreakerFactory
    except ImportError:
        return None
    breaker = SyncCircuitBreakerFactory().get_breaker("bench")

    def run(n: int) -> float:
        f = _f
        t0 = time.perf_counter_ns()
        for _ in range(n):
            with breaker:
                f()
        return (time.perf_counter_ns() - t0) / n

    return run


def _open_reject() -> Candidate:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1, break_duration=1e9))
    breaker.record_failure(breaker.acquire(0.0), 0.0, ErrorCategory.TIMEOUT)
    acquire = breaker.acquire

    def run(n: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            try:
                acquire(1.0)
            except CircuitOpen:
                pass
        return (time.perf_counter_ns() - t0) / n

    return run


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


def collect(quick: bool) -> dict[str, float]:
    """Measure the figures listed in the module docstring."""
    n, reps = (20_000, 5) if quick else (200_000, 15)
    candidates: dict[str, Candidate] = {"bare": _bare, "ours": _ours()}
    peers: dict[str, Callable[[], Candidate | None]] = {
        "pybreaker": _pybreaker,
        "purgatory": _purgatory,
    }
    for name, build in peers.items():
        candidate = build()
        if candidate is not None:
            candidates[name] = candidate
    candidates["empty"] = _empty
    candidates["classify"] = _classify()
    candidates["reject"] = _open_reject()
    medians = interleave(candidates, n=n, reps=reps)

    def overhead(name: str) -> float:
        if name not in medians:
            return math.nan
        return medians[name] - medians["bare"]

    ours = overhead("ours")
    peer_costs = [overhead(p) for p in peers if p in medians]
    cheapest = min(peer_costs) if peer_costs else math.nan
    return {
        "breaker_permit_record_ns": ours,
        "pybreaker_call_overhead_ns": overhead("pybreaker"),
        "purgatory_call_overhead_ns": overhead("purgatory"),
        "breaker_vs_cheapest_peer": ours / cheapest if cheapest > 0 else math.nan,
        "breaker_open_reject_ns": medians["reject"] - medians["empty"],
        "classify_ns": medians["classify"] - medians["empty"],
    }
