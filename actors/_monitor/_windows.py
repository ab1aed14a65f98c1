"""Rolling windows of the monitor: bucket rings, the latency histogram layout, per-service data.

Theory of operation
-------------------
A :class:`_Ring` is ``n`` time buckets of ``stride`` unsigned 32-bit counters in one flat
``array``.  Bucket ``j`` (``floor(t / width)``) lives at offset ``(j % n) * stride``; ``head`` is
the newest bucket.  :meth:`_Ring.advance` zeroes every slot it moves the head over, so every slot
holds either a live bucket or zeros and a window sum is a plain sum over all slots.  A jump of a
whole window zeroes everything.

Recording touches as few counters as possible, because an ``array`` item update costs a boxing
round trip: the call count and, for errors, the error and category counts in the count ring, one
bin in the latency ring.  The count ring also keeps running sums of calls and errors (what the
alert rules read on every error and every check); everything else (retries, categories, the
merged histogram) is summed over the buckets when a query asks, O(buckets x fields).

Memory is fixed: ``4 x n x stride`` bytes plus two integers, allocated at a ring's first count
and released when a whole window passes without one (an idle service, of thousands a monitor
may know, costs no buckets).  It does not grow with traffic, which the memory benchmark checks.

A :class:`_LatencyLayout` maps a latency to a histogram bin: bin 0 holds values below
``latency_min``, bins ``1..B`` are log-spaced (``bins_per_decade`` per factor of ten), bin
``B + 1`` holds values at or above the top of the range; field ``b`` of a latency bucket counts
bin ``b``.  Percentiles come from the merged (summed) histogram by
nearest rank and are reported as the bin's geometric midpoint.

:class:`_Series` is everything kept about one service: its two rings, exact totals, its
breaker, and a latency histogram with fixed bucket bounds (``histogram_buckets``) kept for its
whole life, so it can be exported as a Prometheus histogram and summed across instances.  These
are private: :mod:`actors._monitor._state` is the public face.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from actors._errors import ErrorCategory
from actors._monitor._types import BreakerTransitionInfo
from actors._policies._config._monitoring import MonitorSettings, _bin_count, _percentile_name

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


#: The buckets of a ring with no count in its window (never written: writers call ``fill``).
_EMPTY: Final = array("I")
#: One zeroed bucket per stride, shared by every ring.
_ZEROS: dict[int, array[int]] = {}


class _Ring:
    """A ring of ``n`` buckets of ``stride`` counters (see the module docstring).

    ``head`` is the absolute number (``floor(t / width)``) of the newest bucket; bucket ``j``
    lives at offset ``(j % n) * stride``.  Every slot holds a live bucket or zeros, because
    :meth:`advance` zeroes the slots it reuses.  When ``summed``, :attr:`calls` and
    :attr:`errors` are the running sums of fields 0 and 1 over the live buckets.
    """

    __slots__ = ("calls", "cells", "errors", "head", "n", "stride", "summed", "zero")

    def __init__(self, n: int, stride: int, head: int, *, summed: bool) -> None:
        self.n = n
        self.stride = stride
        self.head = head
        self.summed = summed
        zero = _ZEROS.get(stride)
        if zero is None:
            zero = _ZEROS[stride] = array("I", bytes(4 * stride))
        self.zero = zero
        self.cells = _EMPTY  # no count yet: see fill()
        self.calls = 0
        self.errors = 0

    def fill(self) -> array[int]:
        """The buckets, allocated (zeroed) if the ring had none: call before writing."""
        cells = self.cells
        if not cells:
            cells = self.cells = array("I", bytes(4 * self.n * self.stride))
        return cells

    def advance(self, k: int) -> None:
        """Make bucket ``k`` the newest, expiring the buckets that leave the window."""
        head = self.head
        if k <= head:
            return
        n, stride, cells, zero = self.n, self.stride, self.cells, self.zero
        if k - head >= n or not cells:
            self.clear()
        else:
            for j in range(head + 1, k + 1):
                base = (j % n) * stride
                if self.summed:
                    self.calls -= cells[base]
                    self.errors -= cells[base + 1]
                cells[base : base + stride] = zero
        self.head = k

    def clear(self) -> None:
        """Zero every bucket and sum (the head stays); the buckets are released."""
        self.cells = _EMPTY
        self.calls = self.errors = 0

    def fields(self) -> list[int]:
        """The sum of each field over the live buckets (O(n x stride), for queries)."""
        cells, stride = self.cells, self.stride
        if not cells:
            return [0] * stride
        return [sum(cells[f::stride]) for f in range(stride)]

    def recent(self, field: int, buckets: int) -> int:
        """Sum of ``field`` over the newest ``buckets`` buckets."""
        n, stride, cells = self.n, self.stride, self.cells
        if not cells:
            return 0
        return sum(
            cells[(j % n) * stride + field] for j in range(self.head - buckets + 1, self.head + 1)
        )


class _Series:
    """Everything the monitor keeps about one service.

    The totals (``t_*``), ``transitions`` and ``trips`` are counters for the life of the
    monitor: a reset clears the windows only, and an evicted service's counters are kept
    aside (:class:`_Counts`) and picked up again if it comes back.
    """

    __slots__ = ("breaker", "breaker_since", "counts", "last_seen", "last_transition", "latency",
                 "name", "path", "since", "t_calls", "t_categories", "t_errors", "t_histogram",
                 "t_latency", "t_retries", "transitions", "trips")  # fmt: skip

    def __init__(
        self, name: str, counts: _Ring, latency: _Ring, now: float, histogram_buckets: int
    ) -> None:
        self.name = name
        self.counts = counts
        self.latency = latency
        self.since = now
        self.last_seen = now
        self.t_calls = 0
        self.t_errors = 0
        self.t_retries = 0
        self.t_categories = [0] * len(_CATEGORIES)
        # The lifetime latency histogram: one count per bucket (the last one for values above
        # the top bound), and the sum of the latencies.
        self.t_histogram = [0] * (histogram_buckets + 1)
        self.t_latency = 0.0
        self.breaker = "closed"
        self.breaker_since: float | None = None
        self.last_transition: BreakerTransitionInfo | None = None
        self.transitions = 0
        self.trips = 0
        self.path = ""  # where its provider actor runs (from its breaker reports)

    def counters(self) -> _Counts:
        """The counters to keep when the service is evicted."""
        return _Counts(
            self.since,
            self.t_calls,
            self.t_errors,
            self.t_retries,
            tuple(self.t_categories),
            self.transitions,
            self.trips,
            tuple(self.t_histogram),
            self.t_latency,
        )

    def restore(self, kept: _Counts) -> None:
        """Continue the counters of an evicted service that came back."""
        self.since = kept.since
        self.t_calls = kept.calls
        self.t_errors = kept.errors
        self.t_retries = kept.retries
        self.t_categories = list(kept.categories)
        self.transitions = kept.transitions
        self.trips = kept.trips
        if len(kept.histogram) == len(self.t_histogram):
            self.t_histogram = list(kept.histogram)
            self.t_latency = kept.latency


class _Counts(NamedTuple):
    """The counters of an evicted service (a few small ints, kept for a bounded number)."""

    since: float
    calls: int
    errors: int
    retries: int
    categories: tuple[int, ...]
    transitions: int
    trips: int
    histogram: tuple[int, ...]
    latency: float


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
        # under-range bin, the regular bins, over-range bin
        self.stride = 1 + self.bins + 1
        #: The over-range bin (the last one).
        self.over = self.stride - 1

    def bin(self, latency: float) -> int:
        """The bin that counts ``latency`` (a finite number >= 0)."""
        if latency < self.lo:
            return 0
        b = int((math.log(latency) - self.log_lo) * self.inv_log_g) + 1
        return b if b <= self.bins else self.over

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
        total = sum(sums)
        out: dict[str, float | None] = {}
        for p in percentiles:
            name = _percentile_name(p)
            if not total:
                out[name] = None
                continue
            rank = max(1, math.ceil(p * total / 100))
            seen = 0
            for b, count in enumerate(sums):
                seen += count
                if seen >= rank:
                    out[name] = self.value(b)
                    break
        return out
