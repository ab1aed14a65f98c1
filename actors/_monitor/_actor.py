"""The monitor actor: outcome reports in; health, metrics and alerts out.

Theory of operation
-------------------
A thin trio shell around :class:`~actors.MonitorState` (the sans-I/O core that
keeps the windows, totals, breaker states, recent errors and alerts).  The actor

* records every report it is told: a provider's batches (lists of ``CallReport`` /
  ``BreakerReport``), supervision events (from ``Supervisor.add_listener(monitor.tell_nowait)``,
  turned into ``SupervisionReport``), and saga reports (a saga that could not be compensated
  raises a critical alert);
* answers the query messages below, one per admin endpoint;
* runs the periodic check every ``check_interval`` seconds (60 by default), so alerts are
  raised and resolved even when no report arrives; its timer is armed only while a check can
  change something (a service has ``min_calls`` calls in its window): an idle monitor sleeps
  until the next report, which re-arms it on the same schedule of checks;
* publishes every alert event to its subscribers (refs told with ``tell_nowait``: a slow
  subscriber loses events, counted, and never blocks the monitor; every event carries a
  ``seq`` number one more than the previous one, so a subscriber sees the gap).

Restarts: the state (services, windows, counters, breaker states, alerts), the subscribers and
the drop counter belong to the actor's slot, not to one incarnation, so a monitor that crashes
or is restarted keeps everything it knew (a factory that builds it with different settings
starts afresh).  Only the reports that were in the mailbox of a crashing message are lost.

Scrapes: ``GetMetrics`` over many services is computed a slice of services at a time, with a
checkpoint between slices, so a scrape never holds the event loop for long; the services of one
answer are read within the same few milliseconds, not at one instant.

Reports never get a reply (they are tells).  A report of the wrong shape is counted in
``statistics().reports_invalid`` and otherwise ignored; a query of the wrong shape is answered
with a ``TypeError`` naming the accepted messages.  Bad query arguments (an unknown service, a
window out of range) are answered with ``UnknownService`` / ``InvalidQuery``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

import attrs
import msgspec
import trio

from actors._core._actor import Actor
from actors._core._ref import ActorRef
from actors._core._reply import Failure, Reply
from actors._errors import ActorError
from actors._monitor._alerts import AlertEvent, AlertList
from actors._monitor._state import MonitorState
from actors._monitor._types import (
    BreakerInfo,
    BreakerList,
    ErrorRate,
    HealthReport,
    MetricsReport,
    MonitorStatistics,
    RecentErrors,
    ServiceMetrics,
)
from actors._policies._config._monitoring import MonitorSettings
from actors._policies._logs import library_logger
from actors._protocol import BreakerReport, CallReport, DependencyReport, SupervisionReport

__all__ = [
    "AcknowledgeAlert",
    "AcknowledgeAlerts",
    "GetAlerts",
    "GetBreaker",
    "GetBreakers",
    "GetErrorRate",
    "GetHealth",
    "GetMetrics",
    "GetMonitorStatistics",
    "GetRecentErrors",
    "GetServiceMetrics",
    "MonitorActor",
    "ResetService",
    "SubscribeAlerts",
    "UnsubscribeAlerts",
]


class GetHealth(msgspec.Struct, frozen=True, tag=True):
    """Query: overall and per-service health (``GET /api/resilience/health``)."""


class GetBreakers(msgspec.Struct, frozen=True, tag=True):
    """Query: every circuit breaker's state (``GET .../circuit-breakers``)."""


class GetBreaker(msgspec.Struct, frozen=True, tag=True):
    """Query: one service's breaker (``GET .../circuit-breakers/{service}``)."""

    service: str


class GetMetrics(msgspec.Struct, frozen=True, tag=True):
    """Query: every service's metrics (``GET .../metrics``)."""


class GetServiceMetrics(msgspec.Struct, frozen=True, tag=True):
    """Query: one service's metrics (``GET .../metrics/{service}``)."""

    service: str


class GetRecentErrors(msgspec.Struct, frozen=True, tag=True):
    """Query: a page of recent (redacted) errors, newest first (``GET .../errors/recent``)."""

    offset: int = 0
    limit: int = 50
    service: str | None = None


class GetErrorRate(msgspec.Struct, frozen=True, tag=True):
    """Query: one service's error rate over a window (``GET .../metrics/{service}/error-rate``).

    ``window`` in seconds; ``None`` (the default) is the monitor's own window, so the answer
    is the rate its alerts and metrics use.
    """

    service: str
    window: float | None = None


class GetAlerts(msgspec.Struct, frozen=True, tag=True):
    """Query: active alerts, and resolved ones too if asked (``GET .../alerts``)."""

    include_resolved: bool = False


class ResetService(msgspec.Struct, frozen=True, tag=True):
    """Command: clear one service's windows and totals (``POST .../metrics/{service}/reset``)."""

    service: str


class AcknowledgeAlert(msgspec.Struct, frozen=True, tag=True):
    """Command: acknowledge an active alert (see :meth:`MonitorState.acknowledge`): a condition
    alert stays active, silenced, until it clears; a failed-saga alert is resolved.  The reply
    is the :class:`AlertEvent`."""

    alert_id: int


class AcknowledgeAlerts(msgspec.Struct, frozen=True, tag=True):
    """Command: acknowledge every active alert of ``rule`` (any when ``None``) whose subject
    is ``subject`` or below it (any when empty), for example every failed saga of one
    definition (``rule="saga_compensation_failed", subject="saga:checkout"``).  The reply is
    the list of :class:`AlertEvent` s."""

    rule: str | None = None
    subject: str = ""


class GetMonitorStatistics(msgspec.Struct, frozen=True, tag=True):
    """Query: the monitor's :class:`MonitorStatistics` (what it counted, dropped included)."""


class SubscribeAlerts(msgspec.Struct, frozen=True, tag=True):
    """Command: tell ``ref`` every :class:`AlertEvent` from now on (``tell_nowait``)."""

    ref: Any


class UnsubscribeAlerts(msgspec.Struct, frozen=True, tag=True):
    """Command: stop telling ``ref`` alert events."""

    ref: Any


_REPORTS = (CallReport, BreakerReport, SupervisionReport, DependencyReport)
_SERVICE_QUERIES = frozenset({GetBreaker, GetServiceMetrics, GetErrorRate, ResetService})
#: A ``GetMetrics`` answer over more services than this is computed in slices.
_METRICS_SLICE: Final = 25
#: Seconds of work between two checkpoints of a sliced ``GetMetrics`` answer.
_SLICE_SECONDS: Final = 0.0005


#: Alerts raised, updated, acknowledged and resolved (redacted, see ``_logs``).
log: Final = library_logger("actors.monitor")


def _log_alert(event: AlertEvent) -> None:
    """One line per alert event: raised (and updated) at WARNING, or ERROR when critical;
    acknowledged and resolved at INFO."""
    alert = event.alert
    if event.kind in ("raised", "updated"):
        level = logging.ERROR if alert.severity.value == "critical" else logging.WARNING
    else:
        level = logging.INFO
    if not log.isEnabledFor(level):
        return
    how = f" ({alert.resolution})" if event.kind == "resolved" and alert.resolution else ""
    log.log(
        level,
        "alert #%d %s%s: %s %s %s: %s",
        alert.id,
        event.kind,
        how,
        alert.severity.value,
        alert.rule.value,
        alert.service,
        alert.message,
        extra={"aura_alert": alert.id, "aura_rule": alert.rule.value, "aura_event": event.kind},
    )


class _Kept:
    """What the monitor keeps in its slot across restarts."""

    __slots__ = ("events_dropped", "state", "subscribers")

    def __init__(self, state: MonitorState) -> None:
        self.state = state
        self.subscribers: list[ActorRef[Any, Any]] = []
        self.events_dropped = 0


class MonitorActor(Actor[Any, Any]):
    """The monitor actor (see the module docstring).

    Args:
        settings: the :class:`MonitorSettings` (the configuration's ``monitoring`` section).
        wall_clock: the wall clock used for timestamps a person reads (``time.time``).

    Example::

        tree = [ChildSpec("monitor", MonitorActor), providers...]
        async with open_supervisor(tree) as root:
            monitor = root.ref("monitor")
            root.add_listener(monitor.tell_nowait)          # supervision events
            health = await monitor.ask(GetHealth())
    """

    def __init__(
        self,
        settings: MonitorSettings | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings = MonitorSettings() if settings is None else settings
        self.state = MonitorState(settings, wall_clock=wall_clock)
        self._kept = _Kept(self.state)
        self._subscribers = self._kept.subscribers
        self._check_scope: trio.CancelScope | None = None  # the check task's sleep
        self._check_origin = 0.0  # checks are due at origin + k x check_interval

    @property
    def events_dropped(self) -> int:
        """Alert events a subscriber could not take (kept across restarts)."""
        return self._kept.events_dropped

    async def on_start(self) -> None:
        # The state belongs to the slot: a restarted monitor goes on from what it knew.
        keep = self._inc.cell.keep
        kept = keep.get("monitor")
        if isinstance(kept, _Kept) and kept.state.settings == self.settings:
            self._kept = kept
            self.state = kept.state
            self._subscribers = kept.subscribers
        else:
            keep["monitor"] = self._kept
        self._check_origin = trio.current_time()
        self.spawn(self._periodic_check, name=f"{self.path}:check")

    def _next_check(self, now: float) -> float:
        """The first time on the checks' schedule after ``now``."""
        interval = self.settings.check_interval
        origin = self._check_origin
        at = origin + (math.floor((now - origin) / interval) + 1) * interval
        while at <= now:  # rounding: a check is never due twice at one time
            at += interval
        return at

    async def _periodic_check(self) -> None:
        due = self._next_check(trio.current_time())
        while True:
            # Sleep until the check is due while one can change something, else until a
            # report arms the timer (``_arm_check``).
            scope = trio.CancelScope(deadline=due if self.state.check_due() else math.inf)
            self._check_scope = scope
            with scope:
                await trio.sleep_forever()
            self._check_scope = None
            now = trio.current_time()
            if now >= scope.deadline:
                self._publish(self.state.evaluate(now))
            due = self._next_check(now)

    def _arm_check(self, now: float) -> None:
        """A report came in: the check timer, if disarmed, is armed for the next check."""
        scope = self._check_scope
        if scope is not None and scope.deadline == math.inf:
            scope.deadline = self._next_check(now)

    def _publish(self, events: list[AlertEvent] | Any) -> None:
        if not events:
            return
        if log.isEnabledFor(logging.INFO):
            for event in events:
                _log_alert(event)
        if not self._subscribers:
            return
        for ref in list(self._subscribers):
            for event in events:
                try:
                    ref.tell_nowait(event)
                except ActorError as exc:
                    self._kept.events_dropped += 1
                    if exc.category.value == "invalid_state":  # stopped for good
                        self._subscribers.remove(ref)
                        break

    async def handle(self, message: Any) -> Any:
        now = trio.current_time()
        state = self.state
        kind = type(message)
        if kind is list:
            self._publish(state.record_batch(message, now))
            self._arm_check(now)
            return None
        if kind in _REPORTS:
            try:
                self._publish(state.record(message, now))
            except (ValueError, TypeError) as exc:
                return Failure(exc)
            self._arm_check(now)
            return None
        if kind is GetHealth:
            return state.health(now)
        if kind is GetBreakers:
            return state.breakers()
        if kind is GetMetrics:
            services = state.services()
            if len(services) <= _METRICS_SLICE:
                return state.metrics(now)
            self.spawn(self._metrics_in_slices, services, self.defer(), name=f"{self.path}:metrics")
            return None
        if kind is GetMonitorStatistics:
            return attrs.evolve(state.statistics(), events_dropped=self._kept.events_dropped)
        if kind is GetAlerts:
            flag: object = message.include_resolved
            if flag is not True and flag is not False:
                return Failure(
                    TypeError(
                        f"GetAlerts.include_resolved must be a bool, not {type(flag).__name__}"
                    )
                )
            return state.alerts(flag)
        service = getattr(message, "service", None)
        if kind in _SERVICE_QUERIES and not isinstance(service, str):
            return Failure(
                TypeError(f"{kind.__name__}.service must be a str, not {type(service).__name__}")
            )
        try:
            if kind is GetBreaker:
                return state.breaker(message.service)
            if kind is GetServiceMetrics:
                return state.service_metrics(message.service, now)
            if kind is GetRecentErrors:
                return state.recent_errors(message.offset, message.limit, service=message.service)
            if kind is GetErrorRate:
                window = message.window
                if window is None:
                    window = state.settings.window
                return state.error_rate(message.service, window, now)
            if kind is ResetService:
                events = state.reset(message.service, now)
                self._publish(events)
                return state.service_metrics(message.service, now)
            if kind is AcknowledgeAlert:
                event = state.acknowledge(message.alert_id, now)
                self._publish([event])
                return event
            if kind is AcknowledgeAlerts:
                events = state.acknowledge_all(now, rule=message.rule, subject=message.subject)
                self._publish(events)
                return events
        except (KeyError, ValueError, TypeError) as exc:
            return Failure(exc)
        if kind is SubscribeAlerts:
            if not isinstance(message.ref, ActorRef):
                return Failure(TypeError("SubscribeAlerts needs an ActorRef"))
            if message.ref not in self._subscribers:
                self._subscribers.append(message.ref)
            return None
        if kind is UnsubscribeAlerts:
            if message.ref in self._subscribers:
                self._subscribers.remove(message.ref)
            return None
        return self._other(message, now)

    async def _metrics_in_slices(self, services: list[str], reply: Reply[MetricsReport]) -> None:
        # A slice is about half a millisecond of work (read on the wall clock: it is the event
        # loop's time that is shared), whatever a service costs on this machine.
        state = self.state
        out: dict[str, ServiceMetrics] = {}
        clock = time.perf_counter
        step = 4
        start = 0
        while start < len(services):
            began = clock()
            now = trio.current_time()
            while start < len(services) and clock() - began < _SLICE_SECONDS:
                out.update(state.metrics(now, services[start : start + step]).services)
                start += step
            if start < len(services):
                await trio.lowlevel.checkpoint()
                if reply.done:  # the caller gave up
                    return
        settings = state.settings
        reply.set(
            MetricsReport(
                settings.window,
                trio.current_time(),
                out,
                latency_bounds=settings.histogram_buckets,
            )
        )

    def _other(self, message: Any, now: float) -> Any:
        # Supervision events and saga reports are duck-typed: actors must not import
        # supervisors (the dependency goes the other way) nor the saga module.
        kind = getattr(message, "kind", None)
        path = getattr(message, "path", None)
        if kind is not None and isinstance(path, str) and hasattr(message, "supervisor"):
            report = SupervisionReport(
                path=path,
                kind=getattr(kind, "value", str(kind)),
                detail=str(getattr(message, "reason", "")),
            )
            try:
                self._publish(self.state.record(report, now))
            except (ValueError, TypeError):
                pass
            return None
        status = getattr(message, "status", None)
        saga_id = getattr(message, "saga_id", None)
        if isinstance(status, str) and isinstance(saga_id, str):
            if status in ("compensation_failed", "unresumable"):
                event = self.state.saga_compensation_failed(
                    saga_id,
                    str(getattr(message, "definition", "")),
                    str(getattr(message, "detail", "")),
                    now,
                )
                if event is not None:
                    self._publish([event])
            return None
        return Failure(
            TypeError(
                f"the monitor accepts reports (CallReport, BreakerReport, SupervisionReport, "
                f"DependencyReport, lists of them, supervision events, saga reports) and "
                f"queries (GetHealth, "
                f"GetBreakers, GetBreaker, GetMetrics, GetServiceMetrics, GetRecentErrors, "
                f"GetErrorRate, GetAlerts, GetMonitorStatistics, ResetService, AcknowledgeAlert, "
                f"AcknowledgeAlerts, SubscribeAlerts, UnsubscribeAlerts), "
                f"not {type(message).__name__}"
            )
        )


#: Result types of the queries, for type checkers and the HTTP layer.
QueryResult = (
    HealthReport
    | BreakerList
    | BreakerInfo
    | MetricsReport
    | ServiceMetrics
    | RecentErrors
    | ErrorRate
    | AlertList
    | AlertEvent
    | list[AlertEvent]
    | MonitorStatistics
)
