"""Rolling windows of the monitor: bucket rings, the latency histogram layout, per-service data.

Theory of operation
-------------------
A :class:`_Ring` is ``n`` time buckets of ``stride`` counters in one flat list, plus the running
sum of the live buckets in another.  Bucket ``j`` (``floor(t / width)``) lives at offset
``(j % n) * stride``; ``head`` is the newest bucket.  Recording bumps one bucket and the sum;
reading the whole window reads the sum; :meth:`_Ring.advance` subtracts every bucket that leaves
the window from the sum and zeroes it, skipping empty ones (field 0 of a bucket is its sample
count, non-zero whenever any field is).  A jump of a whole window zeroes everything.

Memory is fixed when the ring is made and does not grow with traffic.  The counters are lists,
not ``array``: an ``array`` item update boxes and unboxes the number and made recording twice as
slow.  A list costs 8 bytes a counter, plus an int object for each counter above 256 (small ints
are shared), and how many those can be is bounded by the ring's size, not by traffic.

A :class:`_LatencyLayout` maps a latency to a histogram bin: bin 0 holds values below
``latency_min``, bins ``1..B`` are log-spaced (``bins_per_decade`` per factor of ten), bin
``B + 1`` holds values at or above the top of the range.  In a latency bucket, field 0 is the
count and field ``1 + b`` is bin ``b``.  Percentiles come from the merged (summed) histogram by
nearest rank and are reported as the bin's geometric midpoint.

:class:`_Series` is everything kept about one service: its two rings, exact totals and its
breaker.  These are private: :mod:`actors._monitoring` is the public face.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

from actors._errors import ErrorCategory
from actors._monitoring_types import (
    BreakerTransition,
    MonitorSettings,
    _bin_count,
    _percentile_name,
)

__all__: list[str] = []

_CATEGORIES: Final = tuple(ErrorCategory)
_CATEGORY_INDEX: Final[dict[object, int]] = {
    **{c: i for i, c in enumerate(_CATEGORIES)},
    **{c.value: i for i, c in enumerate(_CATEGORIES)},
}
_UNKNOWN_INDEX: Final = _CATEGORIES.index(ErrorCategory.UNKNOWN)
# Layout of one count bucket: calls, errors, retries, then errors per category.
_CALLS, _ERRORS, _RETRIES, _CAT0 = 0, 1, 2, 3
_STRIDE: Final = _CAT0 + len(_CATEGORIES)


class _Ring:
    """A ring of ``n`` buckets of ``stride`` counters and the running sum of the live ones.

    ``head`` is the absolute number (``floor(t / width)``) of the newest bucket; bucket ``j``
    lives at offset ``(j % n) * stride``.  Field 0 of a bucket must be non-zero whenever any
    field is (a count of samples), so empty buckets are skipped when they expire.
    """

    __slots__ = ("cells", "head", "n", "stride", "sums")

    def __init__(self, n: int, stride: int, head: int) -> None:
        self.n = n
        self.stride = stride
        self.head = head
        self.cells = [0] * (n * stride)
        self.sums = [0] * stride

    def advance(self, k: int) -> None:
        """Make bucket ``k`` the newest, expiring the buckets that leave the window."""
        head = self.head
        if k <= head:
            return
        n, stride, cells, sums = self.n, self.stride, self.cells, self.sums
        if k - head >= n:
            self.clear()
        else:
            zero = [0] * stride
            for j in range(head + 1, k + 1):
                base = (j % n) * stride
                if cells[base]:
                    for i in range(stride):
                        sums[i] -= cells[base + i]
                    cells[base : base + stride] = zero
        self.head = k

    def clear(self) -> None:
        """Zero every bucket and sum (the head stays)."""
        self.cells = [0] * (self.n * self.stride)
        self.sums = [0] * self.stride

    def recent(self, field: int, buckets: int) -> int:
        """Sum of ``field`` over the newest ``buckets`` buckets."""
        n, stride, cells = self.n, self.stride, self.cells
        return sum(
            cells[(j % n) * stride + field] for j in range(self.head - buckets + 1, self.head + 1)
        )


class _Series:
    """Everything the monitor keeps about one service."""

    __slots__ = ("breaker", "breaker_since", "counts", "last_seen", "last_transition", "latency",
                 "name", "since", "t_calls", "t_categories", "t_errors", "t_retries",
                 "transitions", "trips")  # fmt: skip

    def __init__(self, name: str, counts: _Ring, latency: _Ring, now: float) -> None:
        self.name = name
        self.counts = counts
        self.latency = latency
        self.since = now
        self.last_seen = now
        self.t_calls = 0
        self.t_errors = 0
        self.t_retries = 0
        self.t_categories = [0] * len(_CATEGORIES)
        self.breaker = "closed"
        self.breaker_since: float | None = None
        self.last_transition: BreakerTransition | None = None
        self.transitions = 0
        self.trips = 0

    def reset_totals(self, now: float) -> None:
        self.since = now
        self.t_calls = self.t_errors = self.t_retries = 0
        self.t_categories = [0] * len(_CATEGORIES)


class _LatencyLayout:
    """The histogram bins of a latency bucket (see the module docstring)."""

    __slots__ = ("bins", "g", "inv_log_g", "lo", "log_lo", "over", "stride", "top")

    def __init__(self, settings: MonitorSettings) -> None:
        self.lo = settings.latency_min
        self.log_lo = math.log(settings.latency_min)
        self.g = 10 ** (1 / settings.latency_bins_per_decade)
        self.inv_log_g = settings.latency_bins_per_decade / math.log(10)
        self.bins = _bin_count(settings)
        self.top = float(self.lo * self.g**self.bins)
        # count, under-range bin, the regular bins, over-range bin
        self.stride = 1 + 1 + self.bins + 1
        #: The bucket field of the over-range bin (the last one).
        self.over = self.stride - 1

    def field(self, latency: float) -> int:
        """The bucket field (``1 + bin``) that counts ``latency`` (a finite number >= 0)."""
        if latency < self.lo:
            return 1
        b = int((math.log(latency) - self.log_lo) * self.inv_log_g) + 1
        return 1 + (b if b <= self.bins else self.bins + 1)

    def value(self, b: int) -> float:
        """The value reported for bin ``b``: half of ``lo`` below the range, the top of the
        range above it, else the bin's geometric midpoint."""
        if b == 0:
            return self.lo / 2
        if b > self.bins:
            return self.top
        return float(self.lo * self.g ** (b - 0.5))

    def percentiles(
        self, sums: Sequence[int], percentiles: Iterable[float]
    ) -> dict[str, float | None]:
        """Nearest-rank percentiles (``"p50"`` -> seconds) of a merged histogram."""
        total = sums[0]
        out: dict[str, float | None] = {}
        for p in percentiles:
            name = _percentile_name(p)
            if not total:
                out[name] = None
                continue
            rank = max(1, math.ceil(p * total / 100))
            seen = 0
            for i in range(1, self.stride):
                seen += sums[i]
                if seen >= rank:
                    out[name] = self.value(i - 1)
                    break
        return out
