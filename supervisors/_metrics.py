"""Operator snapshots and their Prometheus exposition.

Theory of operation
-------------------
Everything an operator looks at (the admin API's ``/metrics``, the live terminal view) is read
from one :class:`OperatorSnapshot`: the monitor's health, metrics, breakers and alerts, the
supervision tree's snapshot, the provider actors' statuses and the unfinished sagas, taken at
one moment by :func:`take_snapshot`.  Taking it asks each actor once (a few tens of
microseconds each); a part whose actor is missing, stopped or slow is left ``None`` and named
in :attr:`OperatorSnapshot.problems` rather than failing the whole snapshot.

prometheus-client collectors are synchronous while the monitor answers asks, so the exposition
is split in two: the async part takes a snapshot, and :class:`AuraCollector` turns the latest
snapshot into metric families when a registry (or :func:`render_metrics`) collects it.  Names
follow the Prometheus conventions: an ``aura_`` prefix, counters ending in ``_total``, times in
seconds, enumerations (breaker state, health, actor state) as one 0/1 gauge series per possible
value, and the labels ``service``, ``category``, ``state``, ``rule``, ``severity`` and ``path``
(the tree's root is ``path="(root)"``).  See :data:`METRIC_NAMES` for the list.

Counters come from the monitor's totals, which an operator's reset (``POST
.../metrics/{service}/reset``) sets back to zero: Prometheus's ``rate()`` treats that as a
counter reset, as it does a process restart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from actors._errors import AuraError
from actors._monitor import GetAlerts, GetBreakers, GetHealth, GetMetrics
from actors._monitoring_alerts import RULE_SEVERITY, AlertList
from actors._monitoring_types import (
    BREAKER_STATES,
    BreakerList,
    HealthReport,
    HealthStatus,
    MetricsReport,
)
from actors._provider import GetStatus, ProviderStatus
from actors._ref import ActorRef
from supervisors._events import TreeNode

if TYPE_CHECKING:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "METRICS_CONTENT_TYPE",
    "METRIC_NAMES",
    "AuraCollector",
    "OperatorSnapshot",
    "render_metrics",
    "take_snapshot",
]

#: The content type of :func:`render_metrics`' output (Prometheus text format 0.0.4).
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: The actor and supervisor states of tree snapshots (``CellState`` values).
TREE_STATES: Final = ("starting", "running", "restarting", "stopping", "stopped")

#: Root label value of tree metrics (Prometheus treats an empty label as a missing one).
ROOT_LABEL: Final = "(root)"


@attrs.frozen
class OperatorSnapshot:
    """What an operator sees at one moment (see the module docstring).

    Attributes:
        at: trio time when the snapshot was taken.
        health, metrics, breakers, alerts: the monitor's answers (``None`` without a monitor
            or when it did not answer).
        tree: the supervision tree's snapshot (``None`` when not available).
        providers: each provider actor's status, by service name.
        sagas: the saga coordinator's list of unfinished sagas (``None`` without one).
        problems: why parts are missing, one line each.
    """

    at: float
    health: HealthReport | None = None
    metrics: MetricsReport | None = None
    breakers: BreakerList | None = None
    alerts: AlertList | None = None
    tree: TreeNode | None = None
    providers: Mapping[str, ProviderStatus] = attrs.field(factory=dict)
    sagas: Sequence[Any] | None = None
    problems: Sequence[str] = ()


async def _ask(
    ref: ActorRef[Any, Any], message: object, ask_timeout: float, problems: list[str], what: str
) -> Any:
    try:
        return await ref.ask(message, timeout=ask_timeout)
    except AuraError as exc:
        problems.append(f"{what}: {exc}")
    except (KeyError, ValueError, TypeError) as exc:
        problems.append(f"{what}: {type(exc).__name__}: {exc}")
    return None


async def take_snapshot(
    monitor: ActorRef[Any, Any] | None,
    *,
    tree: TreeNode | None = None,
    providers: Mapping[str, ActorRef[Any, Any]] | None = None,
    sagas: ActorRef[Any, Any] | None = None,
    sagas_query: object | None = None,
    ask_timeout: float = 2.0,
) -> OperatorSnapshot:
    """Ask the monitor, the providers and the saga coordinator for an :class:`OperatorSnapshot`.

    Args:
        monitor: the monitor actor (``None``: no monitor parts).
        tree: the tree snapshot to include (``Supervisor.snapshot()``).
        providers: provider actors by service name; each is asked ``GetStatus``.
        sagas, sagas_query: the saga coordinator and the query listing its unfinished sagas
            (its reply, a sequence, becomes :attr:`OperatorSnapshot.sagas`).
        ask_timeout: seconds each ask may take.

    Never raises for an actor that is missing or fails: the part is ``None`` and the reason is
    in ``problems``.  Cancellation propagates.
    """
    problems: list[str] = []
    health = metrics = breakers = alerts = None
    if monitor is not None:
        health = await _ask(monitor, GetHealth(), ask_timeout, problems, "monitor health")
        metrics = await _ask(monitor, GetMetrics(), ask_timeout, problems, "monitor metrics")
        breakers = await _ask(monitor, GetBreakers(), ask_timeout, problems, "monitor breakers")
        alerts = await _ask(monitor, GetAlerts(), ask_timeout, problems, "monitor alerts")
    statuses: dict[str, ProviderStatus] = {}
    for service, ref in (providers or {}).items():
        status = await _ask(ref, GetStatus(), ask_timeout, problems, f"provider {service}")
        if isinstance(status, ProviderStatus):
            statuses[service] = status
    saga_list: Sequence[Any] | None = None
    if sagas is not None and sagas_query is not None:
        reply = await _ask(sagas, sagas_query, ask_timeout, problems, "sagas")
        if reply is not None:
            saga_list = _as_sequence(reply)
    return OperatorSnapshot(
        at=trio.current_time(),
        health=health,
        metrics=metrics,
        breakers=breakers,
        alerts=alerts,
        tree=tree,
        providers=statuses,
        sagas=saga_list,
        problems=tuple(problems),
    )


def _as_sequence(reply: Any) -> Sequence[Any]:
    """A saga list reply as a sequence: a list, or a Struct with one list field."""
    if isinstance(reply, list | tuple):
        return reply
    for name in ("sagas", "items", "unfinished"):
        value = getattr(reply, name, None)
        if isinstance(value, list | tuple):
            return value
    return [reply]


# ================================================================================ exposition

#: Every metric family name :class:`AuraCollector` may produce (counters without ``_total``).
METRIC_NAMES: Final = (
    "aura_monitor_up",
    "aura_health_status",
    "aura_service_health_status",
    "aura_service_attempts",
    "aura_service_retries",
    "aura_service_errors",
    "aura_service_window_attempts",
    "aura_service_window_errors",
    "aura_service_error_ratio",
    "aura_service_latency_seconds",
    "aura_monitor_window_seconds",
    "aura_circuit_breaker_state",
    "aura_circuit_breaker_transitions",
    "aura_circuit_breaker_trips",
    "aura_alerts_active",
    "aura_actor_state",
    "aura_actor_restarts",
    "aura_actor_mailbox_depth",
    "aura_supervisor_state",
    "aura_supervisor_restarts",
    "aura_provider_calls",
    "aura_provider_succeeded",
    "aura_provider_failed",
    "aura_provider_rejected",
    "aura_provider_attempts",
    "aura_provider_retries",
    "aura_provider_fallbacks",
    "aura_provider_hedges",
    "aura_provider_reports_dropped",
    "aura_provider_running",
    "aura_provider_queued",
    "aura_provider_waiting",
    "aura_provider_retry_budget",
    "aura_provider_idempotency_records",
    "aura_sagas_unfinished",
)

_PROVIDER_COUNTERS: Final = (
    ("calls", "Calls admitted by the provider actor."),
    ("succeeded", "Calls that ended with a reply."),
    ("failed", "Calls that ended with an error."),
    ("rejected", "Calls refused before any attempt (breaker, bulkhead, rate limit, conflict)."),
    ("attempts", "Attempts made against the service."),
    ("retries", "Attempts that were retries."),
    ("fallbacks", "Calls answered by the fallback."),
    ("hedges", "Hedged second attempts sent."),
    ("reports_dropped", "Monitor reports dropped because the monitor could not keep up."),
)
_PROVIDER_GAUGES: Final = (
    ("running", "running", "Attempts in progress."),
    ("queued", "queued", "Calls waiting for a bulkhead slot."),
    ("waiting", "waiting", "Calls waiting for a retry delay or a rate-limit token."),
    ("retry_budget", "budget_balance", "Retries the retry budget allows right now."),
    ("idempotency_records", "cached", "Idempotency records held."),
)


# prometheus-client is imported when metrics are collected, so that this module (and the
# snapshots the live view uses) works without the `admin` extra.


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    from prometheus_client.metrics_core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, labels=labels)


def _counter(name: str, documentation: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    from prometheus_client.metrics_core import CounterMetricFamily

    return CounterMetricFamily(name, documentation, labels=labels)


def _quantile(name: str) -> str:
    """``"p99.9"`` -> ``"0.999"`` (the Prometheus quantile label of a percentile name)."""
    try:
        return f"{float(name.lstrip('p')) / 100:g}"
    except ValueError:
        return name


def _label(path: str) -> str:
    return path or ROOT_LABEL


class AuraCollector:
    """A prometheus-client collector over the latest :class:`OperatorSnapshot`.

    Register it in a ``CollectorRegistry`` (or pass it to ``generate_latest``) and call
    :meth:`update` with fresh snapshots; ``collect()`` reads the latest one.  Before the first
    update it yields only ``aura_monitor_up 0``.

    Example::

        collector = AuraCollector()
        collector.update(await take_snapshot(monitor, tree=root.snapshot()))
        text = generate_latest(collector)
    """

    def __init__(self, snapshot: OperatorSnapshot | None = None) -> None:
        self._snapshot = snapshot

    def update(self, snapshot: OperatorSnapshot) -> None:
        """Use ``snapshot`` from now on."""
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """The metric families of the latest snapshot (see :data:`METRIC_NAMES`)."""
        snap = self._snapshot
        up = _gauge("aura_monitor_up", "1 when the monitor answered the last snapshot's queries.")
        up.add_metric([], 1.0 if snap is not None and snap.health is not None else 0.0)
        yield up
        if snap is None:
            return
        if snap.health is not None:
            yield from self._health(snap.health)
        if snap.metrics is not None:
            yield from self._services(snap.metrics)
        if snap.breakers is not None:
            yield from self._breakers(snap.breakers)
        if snap.alerts is not None:
            yield self._alerts(snap.alerts)
        if snap.tree is not None:
            yield from self._tree(snap.tree)
        if snap.providers:
            yield from self._providers(snap.providers)
        if snap.sagas is not None:
            sagas = _gauge(
                "aura_sagas_unfinished", "Sagas started and not finished (running or compensating)."
            )
            sagas.add_metric([], float(len(snap.sagas)))
            yield sagas

    @staticmethod
    def _health(health: HealthReport) -> Iterator[Metric]:
        overall = _gauge(
            "aura_health_status",
            "Overall health: 1 for the current status, 0 for the others.",
            labels=["status"],
        )
        for status in HealthStatus:
            overall.add_metric([status.value], float(health.status is status))
        yield overall
        per = _gauge(
            "aura_service_health_status",
            "Health of each service: 1 for its current status, 0 for the others.",
            labels=["service", "status"],
        )
        for service, info in health.services.items():
            for status in HealthStatus:
                per.add_metric([service, status.value], float(info.status is status))
        yield per

    @staticmethod
    def _services(report: MetricsReport) -> Iterator[Metric]:
        window = _gauge(
            "aura_monitor_window_seconds",
            "Length of the monitor's rolling window.",
        )
        window.add_metric([], report.window)
        yield window
        attempts = _counter(
            "aura_service_attempts",
            "Attempts reported to the monitor since the first report or the last reset.",
            labels=["service"],
        )
        retries = _counter(
            "aura_service_retries",
            "Reported attempts that were retries, since the first report or the last reset.",
            labels=["service"],
        )
        errors = _counter(
            "aura_service_errors",
            "Failed attempts by error category, since the first report or the last reset.",
            labels=["service", "category"],
        )
        w_attempts = _gauge(
            "aura_service_window_attempts",
            "Attempts reported within the rolling window.",
            labels=["service"],
        )
        w_errors = _gauge(
            "aura_service_window_errors",
            "Failed attempts within the rolling window.",
            labels=["service"],
        )
        ratio = _gauge(
            "aura_service_error_ratio",
            "Failed attempts / attempts within the rolling window (0 without attempts).",
            labels=["service"],
        )
        latency = _gauge(
            "aura_service_latency_seconds",
            "Attempt latency percentiles within the rolling window.",
            labels=["service", "quantile"],
        )
        for service, m in report.services.items():
            attempts.add_metric([service], float(m.totals.calls))
            retries.add_metric([service], float(m.totals.retries))
            for category, count in sorted(m.totals.errors_by_category.items()):
                errors.add_metric([service, category], float(count))
            w_attempts.add_metric([service], float(m.calls))
            w_errors.add_metric([service], float(m.errors))
            ratio.add_metric([service], m.error_ratio)
            for name, seconds in m.latency.items():
                latency.add_metric(
                    [service, _quantile(name)], math.nan if seconds is None else seconds
                )
        yield from (attempts, retries, errors, w_attempts, w_errors, ratio, latency)

    @staticmethod
    def _breakers(breakers: BreakerList) -> Iterator[Metric]:
        state = _gauge(
            "aura_circuit_breaker_state",
            "Circuit breaker state: 1 for the current state, 0 for the others.",
            labels=["service", "state"],
        )
        transitions = _counter(
            "aura_circuit_breaker_transitions",
            "Circuit breaker state changes reported.",
            labels=["service"],
        )
        trips = _counter(
            "aura_circuit_breaker_trips",
            "Circuit breaker transitions to open.",
            labels=["service"],
        )
        for info in breakers.breakers:
            for name in sorted(BREAKER_STATES):
                state.add_metric([info.service, name], float(info.state == name))
            transitions.add_metric([info.service], float(info.transitions))
            trips.add_metric([info.service], float(info.trips))
        yield from (state, transitions, trips)

    @staticmethod
    def _alerts(alerts: AlertList) -> Metric:
        family = _gauge("aura_alerts_active", "Active alerts by rule.", labels=["rule", "severity"])
        counts = {rule: 0 for rule in RULE_SEVERITY}
        for alert in alerts.active:
            counts[alert.rule] = counts.get(alert.rule, 0) + 1
        for rule, count in counts.items():
            family.add_metric([rule.value, RULE_SEVERITY[rule].value], float(count))
        return family

    @staticmethod
    def _tree(tree: TreeNode) -> Iterator[Metric]:
        a_state = _gauge(
            "aura_actor_state",
            "Actor slot state: 1 for the current state, 0 for the others.",
            labels=["path", "state"],
        )
        a_restarts = _counter(
            "aura_actor_restarts", "Restarts of the actor by its supervisor.", labels=["path"]
        )
        depth = _gauge(
            "aura_actor_mailbox_depth", "Messages queued in the actor's mailbox.", labels=["path"]
        )
        s_state = _gauge(
            "aura_supervisor_state",
            "Supervisor state: 1 for the current state, 0 for the others.",
            labels=["path", "state"],
        )
        s_restarts = _counter(
            "aura_supervisor_restarts",
            "Restarts of the supervisor (its whole subtree) by its parent.",
            labels=["path"],
        )
        for node in tree.walk():
            label = _label(node.path)
            if node.kind == "actor":
                for name in TREE_STATES:
                    a_state.add_metric([label, name], float(node.state == name))
                a_restarts.add_metric([label], float(node.restarts))
                depth.add_metric([label], float(node.mailbox_depth))
            else:
                for name in TREE_STATES:
                    s_state.add_metric([label, name], float(node.state == name))
                s_restarts.add_metric([label], float(node.restarts))
        yield from (a_state, a_restarts, depth, s_state, s_restarts)

    @staticmethod
    def _providers(statuses: Mapping[str, ProviderStatus]) -> Iterable[Metric]:
        families: list[Metric] = []
        for field, help_text in _PROVIDER_COUNTERS:
            family = _counter(f"aura_provider_{field}", help_text, labels=["service"])
            for service, status in statuses.items():
                family.add_metric([service], float(getattr(status, field)))
            families.append(family)
        for name, field, help_text in _PROVIDER_GAUGES:
            gauge = _gauge(f"aura_provider_{name}", help_text, labels=["service"])
            for service, status in statuses.items():
                gauge.add_metric([service], float(getattr(status, field)))
            families.append(gauge)
        return families


def render_metrics(snapshot: OperatorSnapshot) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``snapshot``.

    Serve it with the content type :data:`METRICS_CONTENT_TYPE`.  Needs prometheus-client
    (the ``admin`` extra).
    """
    from prometheus_client.exposition import generate_latest

    return generate_latest(AuraCollector(snapshot))
