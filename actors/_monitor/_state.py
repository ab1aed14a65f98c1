"""The monitor's state: rolling windows, totals, breakers, recent errors, alerts and health.

Theory of operation
-------------------
:class:`MonitorState` is the sans-I/O core of the monitor actor.  Provider actors send it
reports (:class:`CallReport` per attempt, :class:`BreakerReport` per breaker transition) and
supervisors send :class:`SupervisionReport`; the actor passes each to :meth:`MonitorState.record`
with its clock's ``now``, calls :meth:`MonitorState.evaluate` every ``check_interval`` seconds,
publishes the :class:`AlertEvent` s both return, and answers queries with the result types of
:mod:`actors._monitor._types` (msgspec Structs shaped as the JSON bodies of the admin
endpoints).  Every public name of the monitor is importable from this module.

Windows.  Each service has two rings of time buckets aligned on ``floor(t / width)``: a *count*
ring (``buckets`` buckets; calls, errors, retries and errors per category) and a *latency* ring
(``latency_buckets`` coarser buckets, each a histogram with fixed log-spaced bins).  Recording
bumps a few counters of the report's bucket, O(1); advancing a ring to a later bucket zeroes the
buckets that fall out of the window, O(bucket size) per elapsed bucket, never per report.  The
count ring keeps running sums of calls and errors, so the alert rules read them in O(1); queries
sum the other fields over the buckets (see :mod:`actors._monitor._windows`).  Memory is fixed
when the service is first seen: it never grows with traffic.  A report is placed by its own
``at`` (so a report delayed in a mailbox still lands in the right bucket); one older than the
window counts in the totals only, and one from the future lands in the newest bucket.

Percentiles are read from the merged histogram: the smallest bin whose cumulative count reaches
the nearest rank ``ceil(p/100 x n)`` gives its geometric midpoint.  With ``k`` bins per decade
the relative error is at most ``10**(1/(2k)) - 1`` (about 5.9 % at the default 20) for latencies
inside ``[latency_min, latency_max)``; below ``latency_min`` the estimate is ``latency_min / 2``,
at or above the top of the range (``latency_max`` rounded up to a whole bin) it is that top.

Rates.  There is one definition of an error rate: the errors in a window divided by the time
the window spans so far, that is the whole buckets before the current one plus the elapsed part
of the current one (dividing by whole buckets would under-report a short window, whose newest
bucket has only partly elapsed).  Below ``min_calls`` calls in the window neither the rate nor
the ratio is judged: the alert rules skip them and health says ``unknown``.

Totals (calls, errors by category, retries, breaker transitions and trips, and a latency
histogram with the fixed bucket bounds ``histogram_buckets`` and the latencies' sum) are exact
counts since the service was first seen, never sampled: they are what load tests compare with
ground truth, and they only ever go up for the life of the monitor (Prometheus counters).  A
reset clears the windows only; an evicted service's counters are kept aside (for up to
``max_services`` evicted services) and continue if it comes back.

Breakers.  The monitor's copy of each breaker's state changes on a :class:`BreakerReport`: a
transition, or a *state report* (``old == new``) that a provider sends whenever an incarnation
starts, so a restart of the provider or of the monitor never leaves a stale state behind.  A
supervision ``stopped`` event for the provider's path (or a path above it) means the provider
is gone for good: its breaker reads ``closed`` again and its ``breaker_open`` alert is resolved
(resolution ``stopped``).

Alerts and health: see :mod:`actors._monitor._alerts` for the rules and their hysteresis and
:meth:`MonitorState.health` for how health is derived from breakers, active alerts and the
amount of data.

Bounds: ``max_services`` services (an idle service is evicted to make room, see
:meth:`MonitorState.record`), ``recent_errors`` error records, ``resolved_alerts`` resolved
alerts, messages cut at ``max_message_length`` and redacted (:func:`~actors.redact`).

Layout: this module takes reports in and raises and resolves alerts; the queries (health,
breakers, metrics, recent errors, error rates, alerts, statistics) are in ``_queries``; the
windows in ``_windows``, the alert book in ``_alerts``, the query results in ``_types``.
"""

from __future__ import annotations

import collections
import functools
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from actors._errors import shown
from actors._monitor._alerts import (
    Alert,
    AlertBook,
    AlertEvent,
    AlertList,
    AlertRule,
    Severity,
    UnknownAlert,
)
from actors._monitor._queries import _Queries
from actors._monitor._types import (
    BreakerInfo,
    BreakerList,
    BreakerTransitionInfo,
    DependencyHealth,
    ErrorRate,
    ErrorRecord,
    HealthReport,
    HealthStatus,
    InvalidQuery,
    InvalidReport,
    MetricsReport,
    MonitorStatistics,
    RecentErrors,
    ServiceHealth,
    ServiceMetrics,
    ServiceTotals,
    UnknownService,
)
from actors._monitor._windows import (
    _CAT0,
    _CATEGORIES,
    _CATEGORY_INDEX,
    _ERRORS,
    _RETRIES,
    _STRIDE,
    _UNKNOWN_INDEX,
    _Counts,
    _LatencyLayout,
    _Ring,
    _Series,
)
from actors._policies._config._monitoring import MonitorSettings
from actors._policies._redact import check_printable, redact
from actors._protocol import (
    BREAKER_STATES,
    DEPENDENCY_STATES,
    SUPERVISION_KINDS,
    BreakerReport,
    CallReport,
    DependencyReport,
    Report,
    SupervisionReport,
)

# The monitor's whole public vocabulary is importable from here.
__all__ = [
    "BREAKER_STATES",
    "SUPERVISION_KINDS",
    "Alert",
    "AlertEvent",
    "AlertList",
    "AlertRule",
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
    "MonitorState",
    "MonitorStatistics",
    "RecentErrors",
    "Report",
    "ServiceHealth",
    "ServiceMetrics",
    "ServiceTotals",
    "Severity",
    "SupervisionReport",
    "UnknownAlert",
    "UnknownService",
]

_INF: Final = math.inf
_MAX_SERVICE_NAME: Final = 200
_REPORT_TYPES: Final = frozenset({CallReport, BreakerReport, SupervisionReport, DependencyReport})
#: Dependencies tracked at most (a report naming one more is refused).
_MAX_DEPENDENCIES: Final = 64
_NO_EVENTS: Final[tuple[AlertEvent, ...]] = ()


# ================================================================================ state


class MonitorState(_Queries):
    """The monitor's sans-I/O state (see the module docstring).

    Args:
        settings: the :class:`MonitorSettings` (defaults when omitted).
        wall_clock: the wall-clock source stamped on error records and alerts
            (``time.time`` by default; tests pass a fake).

    Every method takes the caller's monotonic ``now`` where time matters; ``now`` must not go
    backwards (an earlier ``now`` is treated as the latest one seen).  Methods that change state
    return the :class:`AlertEvent` s to publish, oldest first.

    >>> state = MonitorState(MonitorSettings(min_calls=1))
    >>> state.record(CallReport("openai", ok=True, latency=0.2, at=10.0), now=10.0)
    ()
    >>> state.service_metrics("openai", now=10.0).calls
    1
    """

    __slots__ = ()  # the fields are _Queries' slots

    def __init__(
        self,
        settings: MonitorSettings | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if settings is None:
            settings = MonitorSettings()
        elif not isinstance(settings, MonitorSettings):
            raise TypeError(f"settings must be MonitorSettings, got {type(settings).__name__}")
        self._settings = settings
        self._wall_clock = wall_clock
        self._series: dict[str, _Series] = {}
        self._recent: collections.deque[ErrorRecord] = collections.deque(
            maxlen=settings.recent_errors
        )
        self._book = AlertBook(
            history=settings.resolved_alerts,
            # Per rule: one alert per service for the service rules (so they never overflow),
            # and as many supervision paths and saga definitions.
            max_active=settings.max_services,
            wall_clock=wall_clock,
        )
        # Counters of evicted services, oldest eviction first (bounded by max_services).
        self._retired: collections.OrderedDict[str, _Counts] = collections.OrderedDict()
        self._gave_up: dict[str, int] = {}
        self._dependencies: dict[str, DependencyHealth] = {}
        self._n = settings.buckets
        self._width = settings.bucket_width
        self._lat_n = settings.latency_buckets
        self._lat_width = settings.latency_bucket_width
        self._layout = _LatencyLayout(settings)
        self._bounds = settings.histogram_buckets
        self._reports = 0
        self._dropped = 0
        self._invalid = 0
        self._evicted = 0
        self._checks = 0
        self._supervision = dict.fromkeys(sorted(SUPERVISION_KINDS), 0)
        self._tick_until = -_INF
        self._k = self._k_base = self._lk = self._lk_base = 0
        self._k_start = self._lk_start = 0.0

    @property
    def settings(self) -> MonitorSettings:
        """The settings this state was built with."""
        return self._settings

    # ============================================================================ intake

    def record(self, report: Report, now: float) -> Sequence[AlertEvent]:
        """Take in one report; return the alert events it caused (usually none).

        O(1) amortised.  A failed :class:`CallReport` is added to the recent errors with its
        message redacted and may raise (never resolve) a threshold alert; a
        :class:`BreakerReport` raises ``breaker_open`` on ``open`` / ``isolated`` and resolves
        it on ``closed``; a :class:`SupervisionReport` raises ``supervisor_gave_up`` on
        ``gave_up`` and resolves it when that path, or a path under it, starts or restarts.

        A report for a new service when ``max_services`` services are tracked evicts the
        least recently reported *idle* service (no calls in the window, breaker closed, no
        active alert); if none is idle the report is dropped and counted in
        ``statistics().reports_dropped``.

        Raises:
            InvalidReport: a field is unusable (negative or non-finite latency, unknown
                category or breaker state, empty service name, ...); nothing was recorded.
            TypeError: ``report`` is not a report.
        """
        if type(report) is not CallReport:
            if type(report) is BreakerReport:
                return self._record_breaker(report, now)
            if type(report) is SupervisionReport:
                return self._record_supervision(report, now)
            if type(report) is DependencyReport:
                return self._record_dependency(report)
            raise TypeError(f"not a monitor report: {type(report).__name__}")
        # The hot path: one report per provider attempt.  Inlined and branch-light on purpose.
        r = report
        lat = r.latency
        at = r.at
        try:
            valid = 0.0 <= lat < _INF and -_INF < at < _INF
        except TypeError:
            valid = False
        if not valid:
            self._invalid_times(r)
        ok: object = r.ok  # typed bool, but reports come from anywhere
        retried: object = r.retried
        if (ok is not True and ok is not False) or (retried is not True and retried is not False):
            self._invalid_flags(r)
        ci = 0
        message = ""
        if not ok:
            ci, message = self._error_fields(r)
        try:
            s = self._series.get(r.service)
        except TypeError:  # unhashable: not a name
            raise InvalidReport(
                f"must be a str, got {type(r.service).__name__}", field="service"
            ) from None
        if now >= self._tick_until:
            self._tick(now)
        if s is None:
            s = self._admit(r.service, now)
            if s is None:
                return _NO_EVENTS

        # Count ring: the report's bucket is the newest one unless it is older (delayed).
        k = self._k
        ring = s.counts
        if ring.head != k:
            ring.advance(k)
        if at >= self._k_start:
            base = self._k_base
        else:
            j = int(at // self._width)
            base = (j % self._n) * _STRIDE if j > k - self._n else -1
        if base >= 0:
            cells = ring.cells or ring.fill()
            cells[base] += 1
            ring.calls += 1
            if not ok:
                cells[base + _ERRORS] += 1
                ring.errors += 1
                cells[base + _CAT0 + ci] += 1
            if retried:
                cells[base + _RETRIES] += 1

        # Latency ring, the same way.
        k = self._lk
        ring = s.latency
        if ring.head != k:
            ring.advance(k)
        if at >= self._lk_start:
            base = self._lk_base
        else:
            j = int(at // self._lat_width)
            base = (j % self._lat_n) * ring.stride if j > k - self._lat_n else -1
        if base >= 0:
            layout = self._layout
            cells = ring.cells or ring.fill()
            if lat < layout.lo:
                cells[base] += 1
            else:
                b = int((math.log(lat) - layout.log_lo) * layout.inv_log_g) + 1
                cells[base + (b if b < layout.over else layout.over)] += 1

        s.t_calls += 1
        s.t_histogram[bisect_left(self._bounds, lat)] += 1
        s.t_latency += lat
        s.last_seen = now
        self._reports += 1
        if retried:
            s.t_retries += 1
        if ok:
            return _NO_EVENTS
        s.t_errors += 1
        s.t_categories[ci] += 1
        self._recent.append(
            ErrorRecord(s.name, _CATEGORIES[ci], message, at, self._wall_clock(), bool(retried))
        )
        return self._raise_on_intake(s, now)

    def record_batch(self, reports: Iterable[object], now: float) -> list[AlertEvent]:
        """Record reports in order (as providers send them, in batches); return all events.

        Unlike :meth:`record`, a report that is invalid (or not a report at all) is skipped
        and counted in ``statistics().reports_invalid``, so one bad report does not cost the
        rest of its batch.
        """
        events: list[AlertEvent] = []
        record = self.record
        for report in reports:
            if type(report) not in _REPORT_TYPES:
                self._invalid += 1
                continue
            try:
                got = record(report, now)  # type: ignore[arg-type]
            except InvalidReport:
                self._invalid += 1
                continue
            if got:
                events.extend(got)
        return events

    @staticmethod
    def _invalid_times(r: CallReport) -> None:
        try:
            lat_ok = 0.0 <= r.latency < _INF
        except TypeError:
            lat_ok = False
        if not lat_ok:
            raise InvalidReport(
                f"must be a finite number >= 0, got {shown(r.latency)}", field="latency"
            )
        raise InvalidReport(f"must be a finite number, got {shown(r.at)}", field="at")

    @staticmethod
    def _invalid_flags(r: CallReport) -> None:
        name = "ok" if r.ok is not True and r.ok is not False else "retried"
        value = getattr(r, name)
        raise InvalidReport(f"must be a bool, got {type(value).__name__}", field=name)

    def _error_fields(self, r: CallReport) -> tuple[int, str]:
        category = r.category
        if category is None:
            ci = _UNKNOWN_INDEX
        else:
            try:
                # list.index compares by identity first, in C: cheaper than hashing an Enum.
                ci = _CATEGORIES.index(category)
            except ValueError:
                try:
                    ci = _CATEGORY_INDEX.get(category, -1)  # the category's string value
                except TypeError:
                    ci = -1
        if ci < 0:
            raise InvalidReport(f"not an error category: {shown(category)}", field="category")
        error = r.error
        if error is None:
            return ci, _CATEGORIES[ci].info.message
        if not isinstance(error, str):
            raise InvalidReport(f"must be a str or None, got {shown(error)}", field="error")
        return ci, redact(error, max_length=self._settings.max_message_length)

    def _raise_on_intake(self, s: _Series, now: float) -> Sequence[AlertEvent]:
        # Errors only make the rate and the ratio worse, so intake raises and never resolves.
        settings = self._settings
        book = self._book
        errors, calls = s.counts.errors, s.counts.calls
        if calls < settings.min_calls:
            return _NO_EVENTS
        events: list[AlertEvent] = []
        rate = errors * 60.0 / self._span(self._n - 1, now)
        if rate >= settings.high_error_rate and not book.is_active(
            AlertRule.HIGH_ERROR_RATE, s.name
        ):
            event = book.raise_alert(
                AlertRule.HIGH_ERROR_RATE,
                s.name,
                self._rate_message(s.name, rate),
                now,
                value=rate,
                threshold=settings.high_error_rate,
            )
            if event is not None:
                events.append(event)
        ratio = errors / calls
        if ratio >= settings.critical_error_ratio and not book.is_active(
            AlertRule.CRITICAL_ERROR_RATIO, s.name
        ):
            event = book.raise_alert(
                AlertRule.CRITICAL_ERROR_RATIO,
                s.name,
                self._ratio_message(s.name, ratio),
                now,
                value=ratio,
                threshold=settings.critical_error_ratio,
            )
            if event is not None:
                events.append(event)
        return tuple(events) if events else _NO_EVENTS

    def _record_breaker(self, r: BreakerReport, now: float) -> Sequence[AlertEvent]:
        if not isinstance(r.service, str):
            raise InvalidReport(f"must be a str, got {shown(r.service)}", field="service")
        if not isinstance(r.path, str):
            raise InvalidReport(f"must be a str, got {shown(r.path)}", field="path")
        for name in ("old", "new"):
            value = getattr(r, name)
            if not isinstance(value, str) or value not in BREAKER_STATES:
                raise InvalidReport(
                    f"must be one of {sorted(BREAKER_STATES)}, got {shown(value)}", field=name
                )
        try:
            at_ok = -_INF < r.at < _INF
        except TypeError:
            at_ok = False
        if not at_ok:
            raise InvalidReport(f"must be a finite number, got {shown(r.at)}", field="at")
        if not isinstance(r.reason, str):
            raise InvalidReport(f"must be a str, got {shown(r.reason)}", field="reason")
        reason = redact(r.reason, max_length=self._settings.max_message_length)
        if now >= self._tick_until:
            self._tick(now)
        s = self._series.get(r.service)
        if s is None:
            s = self._admit(r.service, now)
            if s is None:
                return _NO_EVENTS
        self._reports += 1
        s.last_seen = now
        if r.path:
            s.path = r.path
        if r.old == r.new:  # a state report: correct the copy, count no transition
            if s.breaker == r.new:
                return _NO_EVENTS
            s.breaker = r.new
            s.breaker_since = r.at
        else:
            s.breaker = r.new
            s.breaker_since = r.at
            s.last_transition = BreakerTransitionInfo(r.old, r.new, reason, r.at)
            s.transitions += 1
            if r.new == "open":
                s.trips += 1
        event: AlertEvent | None = None
        if r.new == "open" or r.new == "isolated":
            what = "opened" if r.new == "open" else "was isolated"
            event = self._book.raise_alert(
                AlertRule.BREAKER_OPEN,
                s.name,
                f"The circuit breaker of {s.name!r} {what}" + (f": {reason}" if reason else "."),
                now,
            )
        elif r.new == "closed":
            event = self._book.resolve(AlertRule.BREAKER_OPEN, s.name, now, "breaker_closed")
        return _NO_EVENTS if event is None else (event,)

    def _record_supervision(self, r: SupervisionReport, now: float) -> Sequence[AlertEvent]:
        if not isinstance(r.kind, str) or r.kind not in SUPERVISION_KINDS:
            raise InvalidReport(
                f"must be one of {sorted(SUPERVISION_KINDS)}, got {shown(r.kind)}", field="kind"
            )
        if not isinstance(r.path, str) or not r.path:
            raise InvalidReport(f"must be a non-empty str, got {shown(r.path)}", field="path")
        if not isinstance(r.detail, str):
            raise InvalidReport(f"must be a str, got {shown(r.detail)}", field="detail")
        self._reports += 1
        self._supervision[r.kind] += 1
        book = self._book
        if r.kind == "stopped":
            return self._provider_stopped(r.path, now)
        if r.kind == "gave_up":
            count = self._gave_up.get(r.path)
            if count is not None or len(self._gave_up) < self._settings.max_services:
                self._gave_up[r.path] = (count or 0) + 1
            detail = redact(r.detail, max_length=self._settings.max_message_length)
            event = book.raise_alert(
                AlertRule.SUPERVISOR_GAVE_UP,
                r.path,
                f"Supervisor {r.path!r} gave up" + (f": {detail}" if detail else "."),
                now,
            )
            return _NO_EVENTS if event is None else (event,)
        if r.kind == "started" or r.kind == "restarted":
            events = []
            for path in book.subjects(AlertRule.SUPERVISOR_GAVE_UP):
                if r.path == path or r.path.startswith(path + "/"):
                    event = book.resolve(AlertRule.SUPERVISOR_GAVE_UP, path, now, "restarted")
                    if event is not None:
                        events.append(event)
            return tuple(events)
        return _NO_EVENTS

    def _record_dependency(self, r: DependencyReport) -> Sequence[AlertEvent]:
        """A shared dependency's state (see :class:`~actors.DependencyReport`); health reads
        the last one per name."""
        name = r.name
        if not isinstance(name, str) or not name or len(name) > _MAX_SERVICE_NAME:
            raise InvalidReport(
                f"must be a non-empty str of at most {_MAX_SERVICE_NAME} characters, "
                f"got {shown(name)}",
                field="name",
            )
        try:
            check_printable(name, "name")
        except ValueError as exc:
            raise InvalidReport(str(exc), field="name") from None
        if not isinstance(r.status, str) or r.status not in DEPENDENCY_STATES:
            raise InvalidReport(
                f"must be one of {sorted(DEPENDENCY_STATES)}, got {shown(r.status)}",
                field="status",
            )
        for field in ("reason", "where"):
            if not isinstance(getattr(r, field), str):
                raise InvalidReport(f"must be a str, got {shown(getattr(r, field))}", field=field)
        at: object = r.at
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise InvalidReport(f"must be a finite time, got {shown(at)}", field="at")
        if name not in self._dependencies and len(self._dependencies) >= _MAX_DEPENDENCIES:
            raise InvalidReport(
                f"at most {_MAX_DEPENDENCIES} dependencies are tracked", field="name"
            )
        limit = self._settings.max_message_length
        self._dependencies[name] = DependencyHealth(
            HealthStatus.HEALTHY if r.status == "ok" else HealthStatus.UNHEALTHY,
            r.status,
            "" if r.status == "ok" else redact(r.reason, max_length=limit),
            redact(r.where, max_length=limit),
            float(at),
        )
        self._reports += 1
        return _NO_EVENTS

    def _provider_stopped(self, path: str, now: float) -> Sequence[AlertEvent]:
        """The actor at ``path`` (and everything under it) stopped for good: forget the
        breakers of the providers that ran there."""
        events = []
        for s in self._series.values():
            if not s.path or not (s.path == path or s.path.startswith(path + "/")):
                continue
            s.path = ""
            if s.breaker != "closed":
                s.breaker = "closed"
                s.breaker_since = now
            event = self._book.resolve(AlertRule.BREAKER_OPEN, s.name, now, "stopped")
            if event is not None:
                events.append(event)
        return tuple(events)

    def _admit(self, name: object, now: float) -> _Series | None:
        if not isinstance(name, str) or not name or len(name) > _MAX_SERVICE_NAME:
            raise InvalidReport(
                f"must be a non-empty str of at most {_MAX_SERVICE_NAME} characters, "
                f"got {shown(name)}",
                field="service",
            )
        if not name.isprintable():
            # Names reach terminals, log lines and label values: no control characters.
            raise InvalidReport(
                f"must be printable text (no control, separator or format characters), "
                f"got {name[:200]!r}",
                field="service",
            )
        retired = self._retired
        if len(self._series) >= self._settings.max_services:
            victim = self._idle_victim(now)
            if victim is None:
                self._dropped += 1
                return None
            gone = self._series.pop(victim)
            self._evicted += 1
            kept = retired.pop(name, None)  # before the bound below can forget it
            retired[victim] = gone.counters()
            if len(retired) > self._settings.max_services:
                retired.popitem(last=False)
        else:
            kept = retired.pop(name, None)
        s = _Series(
            name,
            _Ring(self._n, _STRIDE, self._k, summed=True),
            _Ring(self._lat_n, self._layout.stride, self._lk, summed=False),
            now,
            len(self._bounds),
        )
        if kept is not None:
            s.restore(kept)
        self._series[name] = s
        return s

    def _idle_victim(self, now: float) -> str | None:
        k = self._k
        busy = {alert.service for alert in self._book.active_alerts()}
        best: _Series | None = None
        for s in self._series.values():
            if s.breaker != "closed" or s.name in busy:
                continue
            s.counts.advance(k)
            if s.counts.calls:
                continue
            if best is None or s.last_seen < best.last_seen:
                best = s
        return None if best is None else best.name

    # ============================================================================ checks

    def evaluate(self, now: float) -> list[AlertEvent]:
        """The periodic check: evaluate the threshold rules of every service.

        Raises alerts whose value reached the threshold and resolves those whose value was
        measured below ``threshold x resolve_factor`` at ``resolve_checks`` checks in a row (see
        :mod:`actors._monitor._alerts`); a service with fewer than ``min_calls`` calls in the
        window is not measured.  Call it every ``settings.check_interval`` seconds.
        """
        settings = self._settings
        book = self._book
        events: list[AlertEvent] = []
        if now >= self._tick_until:
            self._tick(now)
        k = self._k
        self._checks += 1
        per_min = 60.0 / self._span(self._n - 1, now)
        min_calls = settings.min_calls
        for s in self._series.values():
            s.counts.advance(k)
            errors, calls = s.counts.errors, s.counts.calls
            measured = calls >= min_calls
            name = s.name
            event = book.check(
                AlertRule.HIGH_ERROR_RATE,
                name,
                errors * per_min if measured else None,
                settings.high_error_rate,
                resolve_factor=settings.resolve_factor,
                resolve_checks=settings.resolve_checks,
                now=now,
                message=functools.partial(self._rate_message, name),
            )
            if event is not None:
                events.append(event)
            event = book.check(
                AlertRule.CRITICAL_ERROR_RATIO,
                name,
                errors / calls if measured else None,
                settings.critical_error_ratio,
                resolve_factor=settings.resolve_factor,
                resolve_checks=settings.resolve_checks,
                now=now,
                message=functools.partial(self._ratio_message, name),
            )
            if event is not None:
                events.append(event)
        return events

    def check_due(self) -> bool:
        """Whether the next periodic check can raise or resolve an alert: a check judges only
        the services with at least ``min_calls`` calls in their window, and without a new
        report a window only loses calls.  (A ring not advanced since a bucket aged out still
        counts its calls: the answer errs on the side of a check.)"""
        min_calls = self._settings.min_calls
        return any(s.counts.calls >= min_calls for s in self._series.values())

    def saga_compensation_failed(
        self, saga_id: str, definition: str, detail: str, now: float
    ) -> AlertEvent | None:
        """Raise the critical alert for a saga that could not be compensated.

        There is one alert per saga definition, subject ``"saga:<definition>"``: the first
        failed saga raises it, each further one while it is active adds one to its ``count``
        and replaces its message (an ``updated`` event), so any number of failed sagas takes
        one alert per definition and never crowds out other alerts.  Nothing but an operator
        resolves it (by acknowledging it; :meth:`acknowledge_all` does a whole definition or
        every saga alert at once).  Returns the event, or ``None`` if the rule is full.
        """
        message = redact(
            f"saga {saga_id} ({definition}) could not be compensated: {detail}",
            max_length=self._settings.max_message_length,
        )
        return self._book.raise_or_count(
            AlertRule.SAGA_COMPENSATION_FAILED, f"saga:{definition}", message, now
        )

    def acknowledge(self, alert_id: int, now: float) -> AlertEvent:
        """Acknowledge an active alert on an operator's word.

        A condition alert (threshold, breaker, supervisor) stays active, silenced (an
        ``acknowledged`` event; ``acknowledged_at`` set), until its condition clears; health
        still counts it.  A ``saga_compensation_failed`` alert, which has no condition to
        clear, is resolved (resolution ``acknowledged``).

        Raises:
            UnknownAlert: no active alert has this id.
        """
        return self._book.acknowledge(alert_id, now)

    def acknowledge_all(
        self, now: float, *, rule: AlertRule | str | None = None, subject: str = ""
    ) -> list[AlertEvent]:
        """Acknowledge every active alert of ``rule`` (any rule when ``None``) whose subject is
        ``subject`` or below it (``subject:...`` or ``subject/...``; any subject when empty), as
        :meth:`acknowledge` does one.  ``acknowledge_all(now, subject="saga:checkout")``
        acknowledges the failed sagas of the ``checkout`` definition.

        Raises:
            InvalidQuery: ``rule`` is not a rule, or ``subject`` not a str.
        """
        if rule is not None and not isinstance(rule, AlertRule):
            try:
                rule = AlertRule(rule)
            except ValueError:
                raise InvalidQuery(
                    f"must be one of {sorted(r.value for r in AlertRule)}, got {shown(rule)}",
                    argument="rule",
                ) from None
        if not isinstance(subject, str):
            raise InvalidQuery(f"must be a str, got {shown(subject)}", argument="subject")
        return self._book.acknowledge_all(now, rule=rule, subject=subject)

    def reset(self, service: str, now: float) -> list[AlertEvent]:
        """Clear one service's windows (``POST .../metrics/{service}/reset``).

        Its error-rate and error-ratio alerts are resolved (resolution ``reset``): the data
        they stood on is gone.  Its totals are kept (they are counters for the life of the
        monitor), and so are its breaker state, breaker alert and recent error records: they
        describe the service, not its windows.

        Raises:
            UnknownService: the monitor has no such service.
        """
        s = self._get(service)
        s.counts.clear()
        s.latency.clear()
        events = []
        for rule in (AlertRule.HIGH_ERROR_RATE, AlertRule.CRITICAL_ERROR_RATIO):
            event = self._book.resolve(rule, service, now, "reset")
            if event is not None:
                events.append(event)
        return events

    def _rate_message(self, name: str, rate: float) -> str:
        s = self._settings
        return (
            f"{name}: {rate:.3g} errors per minute over the last {s.window:g} s "
            f"(threshold {s.high_error_rate:g})."
        )

    def _ratio_message(self, name: str, ratio: float) -> str:
        s = self._settings
        return (
            f"{name}: {ratio:.0%} of calls failed over the last {s.window:g} s "
            f"(threshold {s.critical_error_ratio:.0%})."
        )
