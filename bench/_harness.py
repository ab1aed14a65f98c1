"""Measurement helpers shared by the figure modules.

Theory of operation
-------------------
This machine is noisy, so absolute times do not travel and figures from two runs must never be
compared.  Every ratio is therefore measured *inside one process* with its candidates
*interleaved*: each repetition runs every candidate once, in turn, and the figure is the median
over repetitions.  A candidate is a callable ``run(n) -> ns_per_op`` that performs ``n``
operations and returns the mean cost of one; the harness never times anything itself so each
candidate can exclude its own set-up.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable

import trio

Candidate = Callable[[int], float]

__all__ = ["Candidate", "interleave", "timed_trio"]


def interleave(candidates: dict[str, Candidate], *, n: int, reps: int) -> dict[str, float]:
    """Run every candidate ``reps`` times, round-robin, and return each one's median ns/op.

    A warm-up round (``n // 10`` operations each) is run first and discarded.
    """
    for run in candidates.values():
        run(max(1, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(reps):
        for name, run in candidates.items():
            gc.collect()
            samples[name].append(run(n))
    return {name: statistics.median(values) for name, values in samples.items()}


def timed_trio(body: Callable[[int], Awaitable[float]]) -> Candidate:
    """Turn ``async def body(n) -> ns_per_op`` into a candidate that runs it in a fresh trio.run."""

    def run(n: int) -> float:
        return trio.run(body, n)

    return run


def now_ns() -> int:
    """The clock every candidate uses."""
    return time.perf_counter_ns()
