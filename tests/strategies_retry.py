"""Shared hypothesis strategies for the backoff, retry, budget and idempotency tests.

Times are drawn on a grid of 1/8 s and TTLs are chosen so that a tenth of them is exact in
binary floating point: bucket boundaries then fall exactly where the arithmetic says, and the
reference models can be compared with the implementations without rounding slack.
"""

from __future__ import annotations

from hypothesis import strategies as st

from actors._errors import ErrorCategory
from actors._policies._backoff import BackoffKind, BackoffSettings, Jitter
from actors._policies._budget import BudgetSettings
from actors._policies._retry import RetrySettings

#: Finite, non-negative seconds small enough to keep products finite.
seconds = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)

#: Strictly positive seconds.
positive_seconds = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)

#: A uniform random sample as :func:`actors._policies._backoff.compute_delay` takes it.
unit_samples = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)

#: Retry numbers, including ones far past the point where exponential growth overflows.
attempts = st.integers(min_value=1, max_value=64) | st.integers(min_value=64, max_value=5000)

categories = st.sampled_from(list(ErrorCategory))

#: Time steps on an exact binary grid (multiples of 1/8 s).
time_steps = st.integers(min_value=0, max_value=200).map(lambda k: k / 8)

#: Short time steps on the same grid (up to 2 s), for tables whose TTLs are a few seconds.
small_time_steps = st.integers(min_value=0, max_value=16).map(lambda k: k / 8)

#: TTLs whose tenth is exact in binary floating point.
exact_ttls = st.sampled_from([1.25, 2.5, 5.0, 10.0, 20.0])


@st.composite
def backoff_settings(
    draw: st.DrawFn, *, kind: BackoffKind | None = None, jitter: Jitter | None = None
) -> BackoffSettings:
    """Any valid BackoffSettings (optionally with a fixed kind and/or jitter)."""
    jitter_ = draw(st.sampled_from(list(Jitter))) if jitter is None else jitter
    if jitter_ is Jitter.DECORRELATED:
        kind_ = BackoffKind.EXPONENTIAL
    else:
        kind_ = draw(st.sampled_from(list(BackoffKind))) if kind is None else kind
    base = draw(seconds)
    max_delay = base + draw(seconds)
    return BackoffSettings(
        kind=kind_,
        jitter=jitter_,
        base_delay=base,
        multiplier=draw(st.floats(min_value=1.0, max_value=10.0)),
        max_delay=max_delay,
        max_retry_after=draw(seconds),
    )


@st.composite
def retry_settings(draw: st.DrawFn) -> RetrySettings:
    """Any valid RetrySettings."""
    return RetrySettings(
        max_attempts=draw(st.integers(min_value=1, max_value=8)),
        retry_on=draw(st.frozensets(categories)),
        attempt_timeout=draw(positive_seconds),
        total_timeout=draw(st.none() | positive_seconds),
        backoff=draw(backoff_settings()),
    )


@st.composite
def budget_settings(draw: st.DrawFn) -> BudgetSettings:
    """BudgetSettings with an exact-tenth TTL and small, exactly representable rates."""
    return BudgetSettings(
        ttl=draw(exact_ttls),
        min_retries_per_s=draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0])),
        retry_ratio=draw(st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 2.0])),
    )
