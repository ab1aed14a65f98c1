"""The monitor's queries: health, breakers, metrics, recent errors, error rates, alerts and its
statistics, read from the state that ``actors._monitor._state`` keeps (see its theory of
operation).  Queries never change what the monitor counts; they tick the windows to ``now``.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Final

from actors._errors import shown
from actors._monitor._alerts import Alert, AlertBook, AlertList, AlertRule
from actors._monitor._types import (
    BreakerInfo,
    BreakerList,
    DependencyHealth,
    ErrorRate,
    ErrorRecord,
    HealthReport,
    HealthStatus,
    InvalidQuery,
    MetricsReport,
    MonitorStatistics,
    RecentErrors,
    ServiceHealth,
    ServiceMetrics,
    ServiceTotals,
    UnknownService,
)
from actors._monitor._windows import (
    _CALLS,
    _CAT0,
    _CATEGORIES,
    _ERRORS,
    _RETRIES,
    _STRIDE,
    _Counts,
    _LatencyLayout,
    _Series,
)
from actors._policies._config._monitoring import MonitorSettings

_MAX_PAGE: Final = 1000  # the largest page of recent errors


class _Queries:
    """The read side of :class:`~actors.MonitorState` and the helpers both sides share: the
    windows' clock (``_tick``, ``_span``) and the service look-up."""

    # The fields of every MonitorState, set by MonitorState.__init__.
    __slots__ = (
        "_book",
        "_bounds",
        "_checks",
        "_dependencies",
        "_dropped",
        "_evicted",
        "_gave_up",
        "_invalid",
        "_k",
        "_k_base",
        "_k_start",
        "_lat_n",
        "_lat_width",
        "_layout",
        "_lk",
        "_lk_base",
        "_lk_start",
        "_n",
        "_recent",
        "_reports",
        "_retired",
        "_series",
        "_settings",
        "_supervision",
        "_tick_until",
        "_wall_clock",
        "_width",
    )  # fmt: skip

    _settings: MonitorSettings
    _bounds: tuple[float, ...]
    _wall_clock: Callable[[], float]
    _series: dict[str, _Series]
    _recent: collections.deque[ErrorRecord]
    _book: AlertBook
    _retired: collections.OrderedDict[str, _Counts]
    _gave_up: dict[str, int]
    _dependencies: dict[str, DependencyHealth]
    _n: int
    _width: float
    _lat_n: int
    _lat_width: float
    _layout: _LatencyLayout
    _reports: int
    _dropped: int
    _invalid: int
    _evicted: int
    _checks: int
    _supervision: dict[str, int]
    _tick_until: float
    _k: int
    _k_base: int
    _lk: int
    _lk_base: int
    _k_start: float
    _lk_start: float

    def _tick(self, now: float) -> None:
        # Cache the newest bucket of each ring and when it ends: until then (most reports)
        # ``record`` does no division at all.  An earlier ``now`` never gets here, so time
        # never goes backwards for the windows.
        k = int(now // self._width)
        self._k = k
        self._k_start = k * self._width
        self._k_base = (k % self._n) * _STRIDE
        lk = int(now // self._lat_width)
        self._lk = lk
        self._lk_start = lk * self._lat_width
        self._lk_base = (lk % self._lat_n) * self._layout.stride
        self._tick_until = min((k + 1) * self._width, (lk + 1) * self._lat_width)

    def _span(self, whole: int, now: float) -> float:
        """Seconds covered by the current bucket's elapsed part and ``whole`` buckets before
        it (the windows have been ticked to ``now``)."""
        span = whole * self._width + min(self._width, max(0.0, now - self._k_start))
        return span if span > 0.0 else self._width

    # ============================================================================ queries

    def _get(self, service: str) -> _Series:
        s = self._series.get(service) if isinstance(service, str) else None
        if s is None:
            raise UnknownService(service)
        return s

    def services(self) -> list[str]:
        """The services tracked, sorted."""
        return sorted(self._series)

    def health(self, now: float) -> HealthReport:
        """Health per service and overall (``GET /api/resilience/health``).

        A service is *unhealthy* when its breaker is open or isolated or it has an active
        ``critical_error_ratio`` alert; *degraded* when its breaker is half-open or it has an
        active ``high_error_rate`` alert; otherwise *healthy* if its window holds at least
        ``min_calls`` calls and *unknown* if it does not (too little data: silence is not
        health).  Acknowledged alerts count: acknowledging silences, it does not heal.

        Overall health is *unhealthy* when a supervisor gave up (an alert is active: part of
        the tree is not running), when every service is unhealthy (nothing can be served) or
        when a shared dependency *failed* on this instance (a
        :class:`~actors.DependencyReport`: restart it); *degraded* when any service is
        degraded or unhealthy, or a dependency is *unavailable* (shared by every instance);
        *unknown* when no service has enough data (or there is no service); *healthy*
        otherwise.  One failing provider does
        not make the application unhealthy on purpose: the outage is shared by every instance,
        and a load balancer that took all of them out of rotation would turn a partial outage
        (with fallbacks still working) into a full one.

        Health reads the alerts as of the last check or report and the windows at ``now``.
        """
        book = self._book
        if now >= self._tick_until:
            self._tick(now)
        k = self._k
        min_calls = self._settings.min_calls
        services: dict[str, ServiceHealth] = {}
        unhealthy = not_healthy = unknown = 0
        for name in sorted(self._series):
            s = self._series[name]
            status = HealthStatus.HEALTHY
            reasons: list[str] = []
            if s.breaker == "open" or s.breaker == "isolated":
                status = HealthStatus.UNHEALTHY
                reasons.append(f"circuit breaker {s.breaker}")
            if book.is_active(AlertRule.CRITICAL_ERROR_RATIO, name):
                status = HealthStatus.UNHEALTHY
                reasons.append("critical error ratio")
            if s.breaker == "half_open":
                if status is HealthStatus.HEALTHY:
                    status = HealthStatus.DEGRADED
                reasons.append("circuit breaker half_open")
            if book.is_active(AlertRule.HIGH_ERROR_RATE, name):
                if status is HealthStatus.HEALTHY:
                    status = HealthStatus.DEGRADED
                reasons.append("high error rate")
            s.counts.advance(k)
            calls = s.counts.calls
            if calls < min_calls:
                if status is HealthStatus.HEALTHY:
                    status = HealthStatus.UNKNOWN
                reasons.append(
                    f"too few calls to judge ({calls} in the window, fewer than {min_calls})"
                )
            services[name] = ServiceHealth(status, s.breaker, reasons)
            unhealthy += status is HealthStatus.UNHEALTHY
            unknown += status is HealthStatus.UNKNOWN
            not_healthy += status is HealthStatus.UNHEALTHY or status is HealthStatus.DEGRADED
        overall = HealthStatus.HEALTHY
        reasons = [
            f"supervisor {path!r} gave up"
            for path in sorted(book.subjects(AlertRule.SUPERVISOR_GAVE_UP))
        ]
        if reasons:
            overall = HealthStatus.UNHEALTHY
        if services and unhealthy == len(services):
            overall = HealthStatus.UNHEALTHY
            reasons.append("every service is unhealthy")
        elif not_healthy:
            if overall is HealthStatus.HEALTHY:
                overall = HealthStatus.DEGRADED
            reasons.append(f"{not_healthy} of {len(services)} services not healthy")
        elif unknown == len(services) and overall is HealthStatus.HEALTHY:
            overall = HealthStatus.UNKNOWN
            reasons.append(
                "no service has reported yet"
                if not services
                else "no service has enough calls to judge"
            )
        for name, dependency in sorted(self._dependencies.items()):
            if dependency.state == "ok":
                continue
            why = f": {dependency.reason}" if dependency.reason else ""
            reasons.append(f"{name} {dependency.state}{why}")
            if dependency.state == "failed":
                overall = HealthStatus.UNHEALTHY
            elif overall is not HealthStatus.UNHEALTHY:
                overall = HealthStatus.DEGRADED
        if unknown and overall is not HealthStatus.UNKNOWN:
            reasons.append(f"{unknown} of {len(services)} services have too few calls to judge")
        return HealthReport(
            overall, services, book.active_count, now, reasons, dict(self._dependencies)
        )

    def breakers(self) -> BreakerList:
        """Every tracked service's breaker (``GET /api/resilience/circuit-breakers``)."""
        return BreakerList([self._breaker(self._series[name]) for name in sorted(self._series)])

    def breaker(self, service: str) -> BreakerInfo:
        """One service's breaker.

        Raises:
            UnknownService: the monitor has no such service.
        """
        return self._breaker(self._get(service))

    @staticmethod
    def _breaker(s: _Series) -> BreakerInfo:
        return BreakerInfo(
            s.name, s.breaker, s.breaker_since, s.transitions, s.trips, s.last_transition
        )

    def metrics(self, now: float, services: Iterable[str] | None = None) -> MetricsReport:
        """Every tracked service's metrics (``GET /api/resilience/metrics``), or only those of
        ``services`` that are tracked (in that order; unknown names are skipped)."""
        series = self._series
        names = sorted(series) if services is None else services
        return MetricsReport(
            self._settings.window,
            now,
            {name: self._metrics(series[name], now) for name in names if name in series},
            latency_bounds=self._bounds,
        )

    def service_metrics(self, service: str, now: float) -> ServiceMetrics:
        """One service's metrics over the window, with its totals.

        Raises:
            UnknownService: the monitor has no such service.
        """
        return self._metrics(self._get(service), now)

    def _metrics(self, s: _Series, now: float) -> ServiceMetrics:
        if now >= self._tick_until:
            self._tick(now)
        s.counts.advance(self._k)
        s.latency.advance(self._lk)
        sums = s.counts.fields()
        calls, errors = s.counts.calls, s.counts.errors
        return ServiceMetrics(
            service=s.name,
            window=self._settings.window,
            calls=calls,
            errors=errors,
            retries=sums[_RETRIES],
            error_rate_per_min=errors * 60.0 / self._span(self._n - 1, now),
            error_ratio=errors / calls if calls else 0.0,
            errors_by_category={
                c.value: sums[_CAT0 + i] for i, c in enumerate(_CATEGORIES) if sums[_CAT0 + i]
            },
            latency=self._layout.percentiles(s.latency.fields(), self._settings.percentiles),
            breaker=s.breaker,
            totals=ServiceTotals(
                calls=s.t_calls,
                errors=s.t_errors,
                retries=s.t_retries,
                errors_by_category={
                    c.value: s.t_categories[i]
                    for i, c in enumerate(_CATEGORIES)
                    if s.t_categories[i]
                },
                since=s.since,
                latency_counts=list(s.t_histogram),
                latency_sum=s.t_latency,
            ),
            enough_calls=calls >= self._settings.min_calls,
        )

    def recent_errors(
        self, offset: int = 0, limit: int = 50, *, service: str | None = None
    ) -> RecentErrors:
        """A page of the recent errors, newest first (``GET /api/resilience/errors/recent``).

        ``total`` counts every record held (of ``service`` only, when given).

        Raises:
            InvalidQuery: ``offset`` is negative, or ``limit`` is not in ``[1, 1000]``.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidQuery(f"must be an integer >= 0, got {shown(offset)}", argument="offset")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_PAGE:
            raise InvalidQuery(
                f"must be an integer from 1 to {_MAX_PAGE}, got {shown(limit)}", argument="limit"
            )
        if service is None:
            total = len(self._recent)
            items = list(itertools.islice(reversed(self._recent), offset, offset + limit))
        else:
            matching = [r for r in reversed(self._recent) if r.service == service]
            total = len(matching)
            items = matching[offset : offset + limit]
        return RecentErrors(items, offset, limit, total)

    def error_rate(self, service: str, window: float, now: float) -> ErrorRate:
        """Errors, calls, rate and ratio of one service over the last ``window`` seconds.

        The window measured is the elapsed part of the current bucket plus ``ceil(window /
        bucket_width)`` whole buckets before it (at most the monitor's window); the result
        says how long it was, and the rate is per minute of it (see :class:`ErrorRate`).

        Raises:
            UnknownService: the monitor has no such service.
            InvalidQuery: ``window`` is not a number in ``(0, settings.window]``.
        """
        s = self._get(service)
        limit = self._settings.window
        if (
            isinstance(window, bool)
            or not isinstance(window, int | float)
            or not 0 < window <= limit * (1 + 1e-9)
        ):
            raise InvalidQuery(
                f"must be a number of seconds in (0, {limit:g}], got {shown(window)}",
                argument="window",
            )
        whole = min(self._n - 1, max(1, math.ceil(window / self._width - 1e-9)))
        if now >= self._tick_until:
            self._tick(now)
        s.counts.advance(self._k)
        errors = s.counts.recent(_ERRORS, whole + 1)
        calls = s.counts.recent(_CALLS, whole + 1)
        measured = self._span(whole, now)
        return ErrorRate(
            service=s.name,
            window=measured,
            errors=errors,
            calls=calls,
            rate_per_min=errors * 60.0 / measured,
            ratio=errors / calls if calls else 0.0,
        )

    def alerts(self, include_resolved: bool = False) -> AlertList:
        """Active alerts, newest first, and (when asked) the resolved history."""
        return self._book.listing(include_resolved)

    def active_alerts(self) -> list[Alert]:
        """Active alerts, newest first."""
        return self._book.active_alerts()

    def statistics(self) -> MonitorStatistics:
        """Counters (see :class:`MonitorStatistics`)."""
        book = self._book.statistics()
        return MonitorStatistics(
            services=len(self._series),
            reports=self._reports,
            reports_dropped=self._dropped,
            reports_invalid=self._invalid,
            services_evicted=self._evicted,
            recent_errors=len(self._recent),
            active_alerts=book.active,
            alerts_raised=book.raised,
            alerts_resolved=book.resolved,
            alerts_dropped=book.dropped,
            supervision=dict(self._supervision),
            gave_up=dict(self._gave_up),
            alert_events=book.events,
        )
