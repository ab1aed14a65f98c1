"""The monitor's vocabulary: settings, reports in, query results out, and its errors.

Theory of operation
-------------------
Everything that crosses the monitor's boundary is a msgspec Struct, so it can be journaled,
sent between processes, or served as JSON without change.  The structs made by the thousand
(reports, and the per-service parts of query results) are not tracked by the garbage
collector (``gc=False``): they hold only values, strings and containers of them, so they can
be in no reference cycle, and a scrape or a batch of reports then triggers no collections of
its own (a full one at a thousand actors holds the event loop for tens of milliseconds):

* :class:`MonitorSettings` is configuration (frozen, unknown fields rejected, every value
  checked in ``__post_init__`` with a :class:`~actors._errors.ConfigError` naming the field);
* reports (:class:`CallReport`, :class:`BreakerReport`, :class:`SupervisionReport`) are tagged
  and small, because provider actors build one per attempt;
* query results (:class:`HealthReport`, :class:`BreakerList`, :class:`ServiceMetrics`, ...)
  are the JSON bodies of the admin endpoints, one type per endpoint.

States and kinds are plain lower-case strings (:data:`BREAKER_STATES`,
:data:`SUPERVISION_KINDS`) rather than another module's enums, so reporters and the monitor do
not depend on each other's internals.  The logic lives in :mod:`actors._monitoring`.
"""

from __future__ import annotations

import enum
import math
from typing import Final

import attrs
import msgspec

from actors._errors import AuraError, ConfigError, ErrorCategory

__all__ = [
    "BREAKER_STATES",
    "SUPERVISION_KINDS",
    "BreakerInfo",
    "BreakerList",
    "BreakerReport",
    "BreakerTransitionInfo",
    "CallReport",
    "ErrorRate",
    "ErrorRecord",
    "HealthReport",
    "HealthStatus",
    "InvalidQuery",
    "InvalidReport",
    "MetricsReport",
    "MonitorSettings",
    "MonitorStatistics",
    "RecentErrors",
    "Report",
    "ServiceHealth",
    "ServiceMetrics",
    "ServiceTotals",
    "SupervisionReport",
    "UnknownService",
]

#: The breaker state names a :class:`BreakerReport` may carry.
BREAKER_STATES: Final = frozenset({"closed", "open", "half_open", "isolated"})
#: The kinds a :class:`SupervisionReport` may carry.
SUPERVISION_KINDS: Final = frozenset({"started", "crashed", "restarted", "stopped", "gave_up"})


# ================================================================================ errors


class UnknownService(AuraError, KeyError):
    """The monitor has no data for this service (never reported, or evicted)."""

    default_category = ErrorCategory.VALIDATION

    def __init__(self, service: str) -> None:
        super().__init__(
            f"The monitor knows no service named {service!r}.",
            suggested_action="Check the name; a service appears once it has sent a report.",
        )
        self.service = service


class InvalidQuery(AuraError, ValueError):
    """A query argument is out of range (a window, an offset, a limit)."""

    default_category = ErrorCategory.VALIDATION

    def __init__(self, problem: str, *, argument: str) -> None:
        super().__init__(f"Invalid {argument}: {problem}", suggested_action=f"Fix `{argument}`.")
        self.argument = argument


class InvalidReport(AuraError, ValueError):
    """A report has a field the monitor cannot use; nothing of it was recorded."""

    default_category = ErrorCategory.VALIDATION

    def __init__(self, problem: str, *, field: str) -> None:
        super().__init__(
            f"Invalid monitor report field `{field}`: {problem}",
            suggested_action="Fix the code that builds the report.",
        )
        self.field = field


# ================================================================================ settings


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


class MonitorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the monitor measures, alerts and bounds itself.  Every field has a default.

    Attributes:
        check_interval: seconds between periodic alert checks (seed: 60).
        window: seconds covered by the rolling window (300).
        buckets: count buckets in the window (60: 5-second buckets).
        latency_buckets: latency histogram buckets in the window (10: 30-second buckets;
            coarser, because a histogram is much larger than a count).
        high_error_rate: errors per minute over the window that raise ``high_error_rate``
            (seed: 10).
        critical_error_ratio: errors / calls over the window that raise
            ``critical_error_ratio`` (seed: 0.5), in (0, 1].
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


def _bin_count(settings: MonitorSettings) -> int:
    decades = math.log10(settings.latency_max / settings.latency_min)
    return max(1, math.ceil(decades * settings.latency_bins_per_decade - 1e-9))


def _percentile_name(p: float) -> str:
    return f"p{p:g}"


# ================================================================================ reports


class CallReport(msgspec.Struct, frozen=True, tag=True, gc=False):
    """The outcome of one attempt of a provider call.

    Attributes:
        service: the provider's name.
        ok: whether the attempt succeeded.
        latency: seconds the attempt took (>= 0).
        at: when it ended, on the monitor's monotonic clock (trio's ``current_time()``).
        category: the failure's :class:`ErrorCategory` (or its string value); ``None`` on a
            failure counts as ``unknown``; ignored when ``ok``.
        error: the failure's message (redacted and cut on intake); ignored when ``ok``.
        retried: the attempt was a retry of an earlier failed attempt of the same call.
    """

    service: str
    ok: bool
    latency: float
    at: float
    category: ErrorCategory | None = None
    error: str | None = None
    retried: bool = False


class BreakerReport(msgspec.Struct, frozen=True, tag=True, gc=False):
    """A circuit breaker moved from ``old`` to ``new`` (names in :data:`BREAKER_STATES`).

    A report with ``old == new`` is a *state report*, not a transition: a provider actor
    sends one each time an incarnation starts, so the monitor's copy of the state is right
    again after a restart of either side.  ``path`` is where the provider actor runs, so the
    monitor can forget the breaker when that actor is stopped for good (a supervision
    ``stopped`` event for the path or a path above it).
    """

    service: str
    old: str
    new: str
    at: float
    reason: str = ""
    path: str = ""


class SupervisionReport(msgspec.Struct, frozen=True, tag=True):
    """A supervision event: ``kind`` (in :data:`SUPERVISION_KINDS`) happened at ``path``.

    For ``gave_up`` the path is the supervisor that gave up; ``detail`` is free text (redacted).
    """

    path: str
    kind: str
    detail: str = ""


#: Anything :meth:`MonitorState.record` accepts.
Report = CallReport | BreakerReport | SupervisionReport


# ================================================================================ results


class HealthStatus(enum.Enum):
    """Health of a service or of the whole application.

    ``healthy``, ``degraded`` and ``unhealthy`` are judged from data, best to worst;
    ``unknown`` means there is too little data to judge (fewer than ``min_calls`` calls in the
    window, or no service at all): it is never read as healthy, nor as a failure.
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class ServiceHealth(msgspec.Struct, frozen=True, gc=False):
    """One service's health, its breaker state and why it is not healthy."""

    status: HealthStatus
    breaker: str
    reasons: list[str]


class HealthReport(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/health`` (serve 503 when ``status`` is unhealthy)."""

    status: HealthStatus
    services: dict[str, ServiceHealth]
    active_alerts: int
    checked_at: float
    reasons: list[str]


class BreakerTransitionInfo(msgspec.Struct, frozen=True, gc=False):
    """One breaker transition as reported."""

    old: str
    new: str
    reason: str
    at: float


class BreakerInfo(msgspec.Struct, frozen=True, gc=False):
    """The body of ``GET /api/resilience/circuit-breakers/{service}``.

    A service whose breaker never reported a transition is ``closed``.  ``trips`` counts
    transitions to ``open``; ``since`` is when the current state began (``None`` if never
    reported).
    """

    service: str
    state: str
    since: float | None
    transitions: int
    trips: int
    last_transition: BreakerTransitionInfo | None


class BreakerList(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/circuit-breakers`` (sorted by service)."""

    breakers: list[BreakerInfo]


class ServiceTotals(msgspec.Struct, frozen=True, gc=False):
    """Exact counts since ``since`` (the service's first report, monotonic seconds).

    They only ever go up for the life of the monitor (a reset clears the windows only, and the
    counts of an evicted service are picked up again when it comes back), so they can be
    exported as Prometheus counters.

    ``calls`` counts reported attempts; ``retries`` the attempts flagged ``retried``, so
    ``calls - retries`` is the number of first attempts (logical calls) when every attempt is
    reported.
    """

    calls: int
    errors: int
    retries: int
    errors_by_category: dict[str, int]
    since: float


class ServiceMetrics(msgspec.Struct, frozen=True, gc=False):
    """The body of ``GET /api/resilience/metrics/{service}``.

    Window figures cover the last ``window`` seconds.  ``error_rate_per_min`` is the monitor's
    one definition of an error rate: errors in the window divided by the time the window
    spans so far (the whole buckets before the current one plus the elapsed part of the
    current one), per minute.  ``error_ratio`` is 0 without calls; ``enough_calls`` says
    whether the window holds ``min_calls`` calls, below which neither the rate nor the ratio
    is judged.  ``errors_by_category`` lists non-zero categories only; ``latency`` maps
    ``"p50"`` etc. to seconds (``None`` without calls in the window).
    """

    service: str
    window: float
    calls: int
    errors: int
    retries: int
    error_rate_per_min: float
    error_ratio: float
    errors_by_category: dict[str, int]
    latency: dict[str, float | None]
    breaker: str
    totals: ServiceTotals
    enough_calls: bool = True


class MetricsReport(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/metrics``: every service's metrics at ``at``."""

    window: float
    at: float
    services: dict[str, ServiceMetrics]


class ErrorRecord(msgspec.Struct, frozen=True, gc=False):
    """One recent error: ``at`` on the monotonic clock, ``wall`` in seconds since the epoch."""

    service: str
    category: ErrorCategory
    message: str
    at: float
    wall: float
    retried: bool


class RecentErrors(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/errors/recent``: a page, newest first."""

    items: list[ErrorRecord]
    offset: int
    limit: int
    total: int


class ErrorRate(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/metrics/{service}/error-rate``.

    ``window`` is the span measured, in seconds: the elapsed part of the current bucket plus
    as many whole buckets before it as the window asked for needs (so at least that window,
    up to the monitor's own); ``rate_per_min`` is ``errors`` per minute of that span (the
    definition of :attr:`ServiceMetrics.error_rate_per_min`).
    """

    service: str
    window: float
    errors: int
    calls: int
    rate_per_min: float
    ratio: float


@attrs.frozen
class MonitorStatistics:
    """Counters of a :class:`MonitorState`.

    Attributes:
        services: services tracked now.
        reports: reports recorded (all kinds).
        reports_dropped: reports not recorded because ``max_services`` services were tracked
            and none was idle.
        reports_invalid: reports skipped by ``record_batch`` as invalid.
        services_evicted: idle services dropped to make room for new ones.
        recent_errors: error records held.
        active_alerts / alerts_raised / alerts_resolved / alerts_dropped: see the alert book.
        supervision: supervision reports seen, by kind.
        gave_up: ``gave_up`` reports by supervisor path (a supervisor that gave up and was
            restarted at once shows here even though its alert was resolved at once).
        alert_events: alert events produced (the ``seq`` of the latest one).
        events_dropped: alert events the monitor actor could not tell a subscriber (its
            mailbox was full); 0 for a bare :class:`MonitorState`.
    """

    services: int
    reports: int
    reports_dropped: int
    reports_invalid: int
    services_evicted: int
    recent_errors: int
    active_alerts: int
    alerts_raised: int
    alerts_resolved: int
    alerts_dropped: int
    supervision: dict[str, int]
    gave_up: dict[str, int] = attrs.field(factory=dict)
    alert_events: int = 0
    events_dropped: int = 0
