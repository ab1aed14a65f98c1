"""Figures for the circuit breaker and the classifier, against pybreaker and purgatory.

Theory of operation
-------------------
Every figure is the extra cost a policy adds around a trivial call, measured in one process.
Each *round* runs every candidate once, interleaved (:func:`bench._harness.interleave`), and
yields one value of each figure (ratios are formed inside the round, so both sides of a ratio
saw the same machine load); the reported figure is the median over rounds.  Short runs and many
rounds keep a busy machine's preemptions from skewing the medians.

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
import statistics
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
    n, rounds = (10_000, 9) if quick else (20_000, 41)
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
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        ns = interleave(candidates, n=n, reps=1)
        for name, value in _round_figures(ns, list(peers)).items():
            samples.setdefault(name, []).append(value)
    return {name: statistics.median(values) for name, values in samples.items()}


def _round_figures(ns: dict[str, float], peers: list[str]) -> dict[str, float]:
    def overhead(name: str) -> float:
        return ns[name] - ns["bare"] if name in ns else math.nan

    ours = overhead("ours")
    peer_costs = [overhead(p) for p in peers if p in ns]
    cheapest = min(peer_costs) if peer_costs else math.nan
    return {
        "breaker_permit_record_ns": ours,
        "pybreaker_call_overhead_ns": overhead("pybreaker"),
        "purgatory_call_overhead_ns": overhead("purgatory"),
        "breaker_vs_cheapest_peer": ours / cheapest if cheapest > 0 else math.nan,
        "breaker_open_reject_ns": ns["reject"] - ns["empty"],
        "classify_ns": ns["classify"] - ns["empty"],
    }
