"""The monitor's settings: what it measures, when it alerts, and its bounds.

Pure configuration (frozen, unknown fields rejected, every value checked in ``__post_init__``
with a :class:`~actors.ConfigError` naming the field), kept apart from the monitor actor so the
configuration schema imports no trio.  ``_bin_count`` and ``_percentile_name`` derive the
latency histogram's shape and the percentile names from the settings; the monitor's windows
use them too.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

from actors._errors import ConfigError


def _number(name: str, value: object, *, integer: bool = False) -> float:
    ok_types: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"must be {kind}, got {value!r}", path=name)
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise ConfigError(f"must be finite, got {value!r}", path=name)
    return float(value)  # type: ignore[arg-type]


def _at_least(name: str, value: object, low: float, *, integer: bool = False) -> None:
    if _number(name, value, integer=integer) < low:
        raise ConfigError(f"must be at least {low:g}, got {value!r}", path=name)


def _positive(name: str, value: object) -> None:
    if _number(name, value) <= 0:
        raise ConfigError(f"must be greater than 0, got {value!r}", path=name)


#: The default upper bounds (seconds) of the exported latency histogram's buckets.
DEFAULT_HISTOGRAM_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
#: The most buckets a latency histogram may have (each is a series per service).
MAX_HISTOGRAM_BUCKETS: Final = 64


class MonitorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the monitor measures, alerts and bounds itself.  Every field has a default.

    Attributes:
        check_interval: seconds between periodic alert checks (default 60).
        window: seconds covered by the rolling window (300).
        buckets: count buckets in the window (60: 5-second buckets).
        latency_buckets: latency histogram buckets in the window (10: 30-second buckets;
            coarser, because a histogram is much larger than a count).
        high_error_rate: errors per minute over the window that raise ``high_error_rate``
            (default 10).
        critical_error_ratio: errors / calls over the window that raise
            ``critical_error_ratio`` (default 0.5), in (0, 1].
        min_calls: calls needed in the window before it is judged (10): below it the error
            rate and ratio are not measured (the alert rules neither raise nor resolve on
            them) and the service's health is ``unknown``, so one failure out of one call is
            not critical and silence is not recovery.
        resolve_factor: a threshold alert resolves only below ``threshold x resolve_factor``
            (0.8), in (0, 1].
        resolve_checks: ... for this many periodic checks in a row (2).
        percentiles: latency percentiles reported, each in (0, 100] (50, 90, 99).
        latency_min / latency_max: the histogram's range in seconds (0.0001 / 1000).
        latency_bins_per_decade: histogram resolution (20: at most ~5.9 % relative error).
        histogram_buckets: upper bounds, in seconds, of the buckets of the latency histogram
            kept for the life of each service and exported to Prometheus (the ``le`` labels;
            ``+Inf`` is implied): strictly increasing, finite, > 0, at most 64.  The default
            covers API calls from 5 ms to 2 minutes (Prometheus's default buckets plus 30,
            60 and 120 s for slow model calls).
        recent_errors: how many recent errors are kept (200).
        max_message_length: stored error messages are cut at this length (1000).
        resolved_alerts: how many resolved alerts are kept (100).
        max_services: services tracked at once (1000); see :meth:`MonitorState.record`.  It
            also bounds the counters kept for evicted services, and the active alerts of
            each rule (every rule has its own limit, so no rule crowds out another).

    Raises:
        ConfigError: a value is out of range (the error's ``path`` names the field).

    >>> MonitorSettings(window=60, buckets=12).bucket_width
    5.0
    """

    check_interval: float = 60.0
    window: float = 300.0
    buckets: int = 60
    latency_buckets: int = 10
    high_error_rate: float = 10.0
    critical_error_ratio: float = 0.5
    min_calls: int = 10
    resolve_factor: float = 0.8
    resolve_checks: int = 2
    percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)
    latency_min: float = 1e-4
    latency_max: float = 1e3
    latency_bins_per_decade: int = 20
    histogram_buckets: tuple[float, ...] = DEFAULT_HISTOGRAM_BUCKETS
    recent_errors: int = 200
    max_message_length: int = 1000
    resolved_alerts: int = 100
    max_services: int = 1000

    def __post_init__(self) -> None:
        _positive("check_interval", self.check_interval)
        _positive("window", self.window)
        _at_least("buckets", self.buckets, 1, integer=True)
        if self.buckets > 10_000:
            raise ConfigError(f"must be at most 10000, got {self.buckets}", path="buckets")
        _at_least("latency_buckets", self.latency_buckets, 1, integer=True)
        if self.latency_buckets > 10_000:
            raise ConfigError(
                f"must be at most 10000, got {self.latency_buckets}", path="latency_buckets"
            )
        _positive("high_error_rate", self.high_error_rate)
        for name in ("critical_error_ratio", "resolve_factor"):
            value = getattr(self, name)
            _positive(name, value)
            if value > 1:
                raise ConfigError(f"must be at most 1, got {value!r}", path=name)
        _at_least("min_calls", self.min_calls, 1, integer=True)
        _at_least("resolve_checks", self.resolve_checks, 1, integer=True)
        if not isinstance(self.percentiles, tuple) or not self.percentiles:
            raise ConfigError("must be a non-empty list of numbers", path="percentiles")
        for p in self.percentiles:
            _positive("percentiles", p)
            if p > 100:
                raise ConfigError(f"must be at most 100, got {p!r}", path="percentiles")
        if len({_percentile_name(p) for p in self.percentiles}) != len(self.percentiles):
            raise ConfigError("must not repeat a percentile", path="percentiles")
        _positive("latency_min", self.latency_min)
        _positive("latency_max", self.latency_max)
        if self.latency_max <= self.latency_min:
            raise ConfigError(
                f"must be greater than latency_min ({self.latency_min!r})", path="latency_max"
            )
        _at_least("latency_bins_per_decade", self.latency_bins_per_decade, 1, integer=True)
        if self.latency_bins_per_decade > 1000:
            raise ConfigError("must be at most 1000", path="latency_bins_per_decade")
        if _bin_count(self) > 4096:
            raise ConfigError(
                "the latency range needs more than 4096 bins: narrow it or lower the resolution",
                path="latency_bins_per_decade",
            )
        _check_histogram_buckets(self.histogram_buckets)
        _at_least("recent_errors", self.recent_errors, 0, integer=True)
        _at_least("max_message_length", self.max_message_length, 16, integer=True)
        _at_least("resolved_alerts", self.resolved_alerts, 0, integer=True)
        _at_least("max_services", self.max_services, 1, integer=True)

    @property
    def bucket_width(self) -> float:
        """Seconds per count bucket (``window / buckets``)."""
        return self.window / self.buckets

    @property
    def latency_bucket_width(self) -> float:
        """Seconds per latency bucket (``window / latency_buckets``)."""
        return self.window / self.latency_buckets

    @property
    def latency_relative_error(self) -> float:
        """The largest relative error of a reported percentile inside the latency range."""
        return float(10 ** (1 / (2 * self.latency_bins_per_decade)) - 1)


def _check_histogram_buckets(bounds: object) -> None:
    name = "histogram_buckets"
    if not isinstance(bounds, tuple) or not bounds:
        raise ConfigError("must be a non-empty list of numbers", path=name)
    if len(bounds) > MAX_HISTOGRAM_BUCKETS:
        raise ConfigError(
            f"must have at most {MAX_HISTOGRAM_BUCKETS} bounds, got {len(bounds)}", path=name
        )
    previous = 0.0
    for bound in bounds:
        _positive(name, bound)
        if bound <= previous:
            raise ConfigError(
                f"must be strictly increasing, got {bound!r} after {previous!r}", path=name
            )
        previous = bound


def _bin_count(settings: MonitorSettings) -> int:
    decades = math.log10(settings.latency_max / settings.latency_min)
    return max(1, math.ceil(decades * settings.latency_bins_per_decade - 1e-9))


def _percentile_name(p: float) -> str:
    return f"p{p:g}"
