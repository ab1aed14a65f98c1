"""How a function's running time grows with its input: linear, or worse.

A test never asserts an absolute time (machines differ, CI is loaded).  It compares the best
of several runs on an input and on one ``factor`` times longer: linear work grows about
``factor``-fold, quadratic ``factor**2``-fold, cubic ``factor**3``-fold.  Noise only ever adds
time, so the best of a few runs is a stable estimate of each.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int = 7) -> float:
    """The shortest of ``repeats`` timed runs of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def growth(fn: Callable[[str], object], make: Callable[[int], str], n: int, factor: int) -> float:
    """How many times longer ``fn(make(n * factor))`` takes than ``fn(make(n))``."""
    small, large = make(n), make(n * factor)
    # Warm up (regex compilation caches, first-call costs) before timing either.
    fn(small)
    fn(large)
    return best_time(lambda: fn(large)) / max(best_time(lambda: fn(small)), 1e-7)


def assert_linear(fn: Callable[[str], object], make: Callable[[int], str], n: int) -> None:
    """``fn`` handles ``make(n)`` in time linear in ``n`` (far below quadratic).

    An 8-fold longer input may take up to 24 times longer: linear work takes about 8, quadratic
    64, cubic 512.
    """
    ratio = growth(fn, make, n, 8)
    assert ratio < 24, f"8x the input took {ratio:.1f}x the time: worse than linear"
