"""How a function's running time grows with its input: linear, or worse.

A test never asserts an absolute time (machines differ, CI is loaded).  It compares the best
of several runs on an input and on one ``factor`` times longer: linear work grows about
``factor``-fold, quadratic ``factor**2``-fold, cubic ``factor**3``-fold.  Noise only ever adds
time, so the best of a few runs is a stable estimate of each.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _timed(fn: Callable[[str], object], text: str) -> float:
    start = time.perf_counter()
    fn(text)
    return time.perf_counter() - start


def growth(
    fn: Callable[[str], object], make: Callable[[int], str], n: int, factor: int, rounds: int = 11
) -> float:
    """How many times longer ``fn(make(n * factor))`` takes than ``fn(make(n))``.

    The two inputs are timed alternately, ``rounds`` times each, so a stretch of load on the
    machine slows both alike; the best of each is compared.
    """
    small, large = make(n), make(n * factor)
    # Warm up (regex compilation caches, first-call costs) before timing either.
    fn(small)
    fn(large)
    best_small = best_large = float("inf")
    for _ in range(rounds):
        best_small = min(best_small, _timed(fn, small))
        best_large = min(best_large, _timed(fn, large))
    return best_large / max(best_small, 1e-7)


def assert_linear(fn: Callable[[str], object], make: Callable[[int], str], n: int) -> None:
    """``fn`` handles ``make(n)`` in time linear in ``n`` (far below quadratic).

    An 8-fold longer input may take up to 24 times longer: linear work takes about 8 (a little
    more once the input outgrows a CPU cache), quadratic 64, cubic 512.  Keep ``make(8 * n)``
    to some tens of kilobytes.
    """
    # Noise only ever adds time, and a stretch of load can still land on the larger input's
    # best runs: measure again (up to three times) before calling it worse than linear.  Work
    # that really is quadratic grows about 64-fold every time.
    ratio = float("inf")
    for _ in range(3):
        ratio = min(ratio, growth(fn, make, n, 8))
        if ratio < 24:
            return
    assert ratio < 24, f"8x the input took {ratio:.1f}x the time: worse than linear"
