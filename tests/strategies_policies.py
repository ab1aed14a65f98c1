"""Shared hypothesis strategies for the sans-I/O policies (classifier, breaker, bulkhead, rate
limiter).

Times and durations are drawn from a grid of quarter seconds and window widths from values
whose quotients are exact in binary floating point, so reference models can use plain ``floor``
and ``/`` without rounding disagreements.
"""

from __future__ import annotations

import datetime

from hypothesis import strategies as st

from actors._errors import ErrorCategory
from actors._policies._breaker import BreakerSettings
from actors._policies._bulkhead import BulkheadSettings
from actors._policies._ratelimit import RateLimiterSettings

categories = st.sampled_from(list(ErrorCategory))

#: Small steps of time, with the occasional jump far past any window or break.
time_steps = st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.25, 2.0, 3.0, 5.0, 50.0])

#: Call durations around the slow-call thresholds drawn by :func:`breaker_settings`.
durations = st.sampled_from([0.0, 0.25, 1.0, 2.0, 4.0])


@st.composite
def breaker_settings(draw: st.DrawFn) -> BreakerSettings:
    """Small breakers that trip, expire and recover within a few dozen steps."""
    window, buckets = draw(
        st.sampled_from([(4.0, 1), (4.0, 2), (4.0, 4), (8.0, 4), (10.0, 4), (10.0, 5), (6.0, 3)])
    )
    break_duration = draw(st.sampled_from([1.0, 2.0, 5.0]))
    factor = draw(st.sampled_from([1.0, 1.5, 2.0]))
    return BreakerSettings(
        failure_threshold=draw(st.integers(1, 5)),
        failure_ratio=draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])),
        break_duration=break_duration,
        window=window,
        minimum_throughput=draw(st.integers(1, 6)),
        half_open_max_probes=draw(st.integers(1, 3)),
        slow_call_duration=draw(st.sampled_from([None, 1.0, 2.0])),
        slow_call_ratio=draw(st.sampled_from([0.5, 1.0])),
        break_duration_factor=factor,
        max_break_duration=draw(st.sampled_from([break_duration, 8.0, 20.0])),
        buckets=buckets,
        counted_categories=draw(st.none() | st.frozensets(categories, min_size=1)),
    )


bulkhead_settings = st.builds(
    BulkheadSettings, max_concurrent=st.integers(1, 4), max_queued=st.integers(0, 4)
)

#: Rates and bursts that are exact in binary floating point (powers of two and small ints).
rate_limiter_settings = st.builds(
    RateLimiterSettings,
    rate=st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0]),
    burst=st.none() | st.sampled_from([1.0, 2.0, 3.0, 5.0, 8.0]),
)


@st.composite
def http_dates(draw: st.DrawFn, *, now: float) -> tuple[str, float]:
    """An IMF-fixdate string and the non-negative seconds it is after ``now`` (0 if before)."""
    offset = draw(st.integers(-(10**6), 10**6))
    when = datetime.datetime.fromtimestamp(int(now) + offset, tz=datetime.UTC)
    text = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    return text, max(0.0, float(int(now) + offset) - now)


#: Strings that are not a valid Retry-After: junk, negatives, non-finite numbers.
invalid_retry_after = st.one_of(
    st.sampled_from(["", " ", "soon", "-1", "-0.5", "nan", "NaN", "inf", "-inf", "1e999", "Tue"]),
    st.text(alphabet="xyz!?;:", min_size=1, max_size=10),
    st.integers(max_value=-1).map(str),
)
