"""The monitor's vocabulary: query results out, and its errors.

Theory of operation
-------------------
Everything that crosses the monitor's boundary is a msgspec Struct, so it can be journaled,
sent between processes, or served as JSON without change.  The structs made by the thousand
(reports, and the per-service parts of query results) are not tracked by the garbage
collector (``gc=False``): they hold only values, strings and containers of them, so they can
be in no reference cycle, and a scrape or a batch of reports then triggers no collections of
its own (a full one at a thousand actors holds the event loop for tens of milliseconds):

* :class:`~actors.MonitorSettings` is configuration, with the rest of the configuration schema
  (``actors._policies._config``);
* reports (:class:`~actors.CallReport`, :class:`~actors.BreakerReport`,
  :class:`~actors.SupervisionReport`) are tagged and small, because provider actors build one
  per attempt; they are shared with the reporters, in ``actors._protocol``;
* query results (:class:`HealthReport`, :class:`BreakerList`, :class:`ServiceMetrics`, ...)
  are the JSON bodies of the admin endpoints, one type per endpoint: they are here.

The logic lives in ``actors._monitor._state``.
"""

from __future__ import annotations

import enum

import attrs
import msgspec

from actors._errors import AuraError, ErrorCategory

__all__ = [
    "BreakerInfo",
    "BreakerList",
    "BreakerTransitionInfo",
    "DependencyHealth",
    "ErrorRate",
    "ErrorRecord",
    "HealthReport",
    "HealthStatus",
    "InvalidQuery",
    "InvalidReport",
    "MetricsReport",
    "MonitorStatistics",
    "RecentErrors",
    "ServiceHealth",
    "ServiceMetrics",
    "ServiceTotals",
    "UnknownService",
]


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


class DependencyHealth(msgspec.Struct, frozen=True, gc=False):
    """A shared dependency's health as last reported (a :class:`~actors.DependencyReport`).

    Attributes:
        status: ``healthy`` when ``ok``, else ``unhealthy``.
        state: the reported state (``ok``, ``unavailable``, ``failed``).
        reason: why it is not ``ok`` (redacted).
        where: where it is (no password), or ``""``.
        since: wall-clock time of the report that set the state.
    """

    status: HealthStatus
    state: str
    reason: str
    where: str
    since: float


class HealthReport(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/health`` (serve 503 when ``status`` is unhealthy)."""

    status: HealthStatus
    services: dict[str, ServiceHealth]
    active_alerts: int
    checked_at: float
    reasons: list[str]
    dependencies: dict[str, DependencyHealth] = msgspec.field(default_factory=dict)


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

    ``latency_counts`` is the histogram of those attempts' latencies: how many fell in each
    bucket of :attr:`MetricsReport.latency_bounds` (the monitor's ``histogram_buckets``), not
    cumulated, with one more count at the end for latencies above the top bound;
    ``latency_sum`` is the sum of the latencies, in seconds.
    """

    calls: int
    errors: int
    retries: int
    errors_by_category: dict[str, int]
    since: float
    latency_counts: list[int] = msgspec.field(default_factory=list)
    latency_sum: float = 0.0


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
    """The body of ``GET /api/resilience/metrics``: every service's metrics at ``at``.

    ``latency_bounds`` are the upper bounds (seconds) of the buckets of each service's
    lifetime latency histogram (:attr:`ServiceTotals.latency_counts`).
    """

    window: float
    at: float
    services: dict[str, ServiceMetrics]
    latency_bounds: tuple[float, ...] = ()


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
