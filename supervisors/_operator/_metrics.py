"""Operator snapshots and their Prometheus exposition.

Theory of operation
-------------------
Everything an operator looks at (the admin API's ``/metrics``, the live terminal view) is read
from one :class:`OperatorSnapshot`: the monitor's health, metrics, breakers, alerts and
statistics, the supervision tree's snapshot, the provider actors' statuses, and the saga
coordinator's sagas and statistics, taken by :func:`take_snapshot`.  Taking it asks each actor
once; a part whose actor is missing, stopped or slow is left ``None`` and named in
:attr:`OperatorSnapshot.problems` rather than failing the whole snapshot.

The exposition is built from a snapshot in two steps that never hold the event loop for long:
the families are filled a slice of services (or tree nodes) at a time, and their text is
written a slice of samples at a time, with a checkpoint whenever about half a millisecond of
work was done (:func:`render_metrics_async`, what the admin API serves; :func:`render_metrics`
does the same work in one go).  The text is byte for byte what prometheus-client's
``generate_latest`` writes for the same families (:mod:`supervisors._operator._exposition`
writes it), and :class:`AuraCollector` gives those families to a prometheus-client registry.
Names follow the Prometheus conventions: an ``aura_`` prefix, counters ending in ``_total``,
times in seconds, latency as a histogram (``_bucket`` / ``_count`` / ``_sum``, which sums
across instances, unlike quantiles), enumerations (breaker state, health, actor state) as one
0/1 gauge series per possible value, ``aura_build_info`` always 1, and the labels ``service``,
``category``, ``state``, ``rule``, ``severity``, ``kind``, ``le`` and ``path`` (the tree's
root is ``path="(root)"``).  With :attr:`OperatorSnapshot.instance` set, every sample also
carries ``instance`` (the admin API of a fleet member sets it to the member's id unless it was
given another).  See :data:`METRIC_NAMES` for the list.

Adding families (the fleet's, say): give :class:`OperatorSnapshot` a part, fill it in
:func:`take_snapshot`, append its families in :func:`_families` (a builder that yields after
each service keeps the scrape sliced), and list their names in :data:`METRIC_NAMES`.  The
``instance`` label, the text and the collector come with it.

Counters never go down for the life of the process: the monitor's totals survive an operator's
reset (which clears windows only), the eviction of an idle service and a restart of the
monitor, and the provider counters survive restarts of the provider.  Every error category
is exported from the start (at 0), so ``rate()`` sees the first error of a category.  What the
runtime drops is exported too: the monitor's dropped, invalid and evicted counts, the alert
events its subscribers missed, the supervision events its listeners missed, and the reports
the saga coordinator could not send.
"""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import math
import platform
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from actors._core._ref import ActorRef
from actors._errors import AuraError, ErrorCategory
from actors._monitor._actor import (
    GetAlerts,
    GetBreakers,
    GetHealth,
    GetMetrics,
    GetMonitorStatistics,
)
from actors._monitor._alerts import RULE_SEVERITY, AlertList
from actors._monitor._types import (
    BreakerList,
    HealthReport,
    HealthStatus,
    MetricsReport,
    MonitorStatistics,
)
from actors._protocol import (
    BREAKER_STATES,
    DEPENDENCY_STATES,
    SUPERVISION_KINDS,
    FleetMember,
    FleetStatus,
)
from actors._provider._messages import GetStatus, ProviderStatus
from actors._saga._messages import GetSagaStatistics
from supervisors._events import TreeNode
from supervisors._operator._exposition import (
    _client_family,
    _counter,
    _Family,
    _gauge,
    _histogram,
    _Writer,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "METRICS_CONTENT_TYPE",
    "METRIC_NAMES",
    "AuraCollector",
    "OperatorSnapshot",
    "render_metrics",
    "render_metrics_async",
    "take_snapshot",
]

#: The content type of :func:`render_metrics`' output (Prometheus text format 0.0.4).
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: The actor and supervisor states of tree snapshots (``CellState`` values).
TREE_STATES: Final = ("starting", "running", "restarting", "stopping", "stopped")

#: Root label value of tree metrics (Prometheus treats an empty label as a missing one).
ROOT_LABEL: Final = "(root)"

_CATEGORY_NAMES: Final = tuple(c.value for c in ErrorCategory)
_BREAKER_NAMES: Final = tuple(sorted(BREAKER_STATES))
_COMPENSATION_FAILED: Final = "compensation_failed"


@attrs.frozen
class OperatorSnapshot:
    """What an operator sees at one moment (see the module docstring).

    Attributes:
        at: trio time when the snapshot was taken.
        health, metrics, breakers, alerts, monitor_statistics: the monitor's answers
            (``None`` without a monitor or when it did not answer).
        tree: the supervision tree's snapshot (``None`` when not available).
        providers: each provider actor's status, by service name.
        sagas: the saga coordinator's list of unfinished sagas (``None`` without one).
        saga_statistics: the coordinator's statistics (``None`` without one).
        problems: why parts are missing, one line each.
        instance: the name of this instance in a fleet: every exported sample gets it as its
            ``instance`` label (``None``: no such label, the scraping Prometheus's target
            label names the instance).
        fleets: this instance's fleet members' states (none when it runs alone).
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
    monitor_statistics: MonitorStatistics | None = None
    saga_statistics: Any | None = None
    instance: str | None = None
    fleets: Sequence[FleetStatus] = ()


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
    instance: str | None = None,
    fleets: Sequence[FleetMember] = (),
) -> OperatorSnapshot:
    """Ask the monitor, the providers and the saga coordinator for an :class:`OperatorSnapshot`.

    Args:
        monitor: the monitor actor (``None``: no monitor parts).
        tree: the tree snapshot to include (``Supervisor.snapshot()``).
        providers: provider actors by service name; each is asked ``GetStatus``.
        sagas: the saga coordinator; it is asked ``sagas_query`` and its statistics.
        sagas_query: the query listing its unfinished sagas (its reply, a sequence, becomes
            :attr:`OperatorSnapshot.sagas`).
        ask_timeout: seconds each ask may take.
        instance: this instance's name in a fleet (:attr:`OperatorSnapshot.instance`).
        fleets: fleet members whose status to include (read without asking anyone).

    Never raises for an actor that is missing or fails: the part is ``None`` and the reason is
    in ``problems``.  Cancellation propagates.
    """
    problems: list[str] = []
    health = metrics = breakers = alerts = statistics = None
    if monitor is not None:
        health = await _ask(monitor, GetHealth(), ask_timeout, problems, "monitor health")
        metrics = await _ask(monitor, GetMetrics(), ask_timeout, problems, "monitor metrics")
        breakers = await _ask(monitor, GetBreakers(), ask_timeout, problems, "monitor breakers")
        alerts = await _ask(monitor, GetAlerts(), ask_timeout, problems, "monitor alerts")
        statistics = await _ask(
            monitor, GetMonitorStatistics(), ask_timeout, problems, "monitor statistics"
        )
    statuses: dict[str, ProviderStatus] = {}
    for service, ref in (providers or {}).items():
        status = await _ask(ref, GetStatus(), ask_timeout, problems, f"provider {service}")
        if isinstance(status, ProviderStatus):
            statuses[service] = status
    saga_list: Sequence[Any] | None = None
    saga_statistics: Any | None = None
    if sagas is not None and sagas_query is not None:
        reply = await _ask(sagas, sagas_query, ask_timeout, problems, "sagas")
        if reply is not None:
            saga_list = _as_sequence(reply)
        saga_statistics = await _ask(
            sagas, GetSagaStatistics(), ask_timeout, problems, "saga statistics"
        )
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
        monitor_statistics=statistics if isinstance(statistics, MonitorStatistics) else None,
        saga_statistics=saga_statistics,
        instance=instance,
        fleets=tuple(member.status() for member in fleets),
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

#: Every metric family name the exposition may produce (counters without ``_total``).
METRIC_NAMES: Final = (
    "aura_build_info",
    "aura_monitor_up",
    "aura_health_status",
    "aura_service_health_status",
    "aura_dependency_state",
    "aura_monitor_window_seconds",
    "aura_service_attempts",
    "aura_service_retries",
    "aura_service_errors",
    "aura_service_window_attempts",
    "aura_service_window_errors",
    "aura_service_error_ratio",
    "aura_service_latency_seconds",
    "aura_circuit_breaker_state",
    "aura_circuit_breaker_transitions",
    "aura_circuit_breaker_trips",
    "aura_alerts_active",
    "aura_alerts_acknowledged",
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
    "aura_provider_breaker_state",
    "aura_provider_retry_budget_rejections",
    "aura_provider_bulkhead_rejections",
    "aura_provider_breaker_open_seconds",
    "aura_provider_breaker_break_seconds",
    "aura_sagas_unfinished",
    "aura_sagas_compensation_failed",
    "aura_monitor_reports",
    "aura_monitor_reports_dropped",
    "aura_monitor_reports_invalid",
    "aura_monitor_services_evicted",
    "aura_monitor_alerts_dropped",
    "aura_monitor_alert_events",
    "aura_monitor_events_dropped",
    "aura_monitor_supervision_events",
    "aura_supervisor_gave_up",
    "aura_supervision_events_dropped",
    "aura_saga_reports_dropped",
    "aura_sagas_started",
    "aura_sagas_ended",
    "aura_fleet_instances_live",
    "aura_fleet_store_up",
    "aura_fleet_health_status",
    "aura_fleet_store_round_trips",
    "aura_fleet_store_errors",
    "aura_fleet_changes_dropped",
    "aura_fleet_breaker_state",
    "aura_fleet_breaker_fresh",
    "aura_fleet_idempotency_events",
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
    (
        "retry_budget_rejections",
        "Calls that failed because the retry budget refused their retry.",
    ),
    ("bulkhead_rejections", "Calls the bulkhead refused: every slot busy and the queue full."),
)
_PROVIDER_GAUGES: Final = (
    ("running", "running", "Attempts in progress."),
    ("queued", "queued", "Calls waiting for a bulkhead slot."),
    ("waiting", "waiting", "Calls waiting for a retry delay or a rate-limit token."),
    ("retry_budget", "budget_balance", "Retries the retry budget allows right now."),
    ("idempotency_records", "cached", "Idempotency records held."),
    (
        "breaker_open_seconds",
        "open_for",
        "Seconds since the breaker tripped from closed, while it has not closed since "
        "(0 when closed or isolated).",
    ),
    ("breaker_break_seconds", "break_duration", "The breaker's break duration after a trip."),
)
#: The outcomes of a saga, as the coordinator's statistics count them.
_SAGA_OUTCOMES: Final = ("completed", "compensated", "failed", "cancelled", "compensation_failed")
_MONITOR_COUNTERS: Final = (
    ("reports", "reports", "Reports the monitor recorded."),
    (
        "reports_dropped",
        "reports_dropped",
        "Reports not recorded: max_services services were tracked and none was idle.",
    ),
    ("reports_invalid", "reports_invalid", "Reports skipped as invalid."),
    ("services_evicted", "services_evicted", "Idle services evicted to make room for new ones."),
    (
        "alerts_dropped",
        "alerts_dropped",
        "Alerts not raised because their rule had max_services alerts active.",
    ),
    ("alert_events", "alert_events", "Alert events produced (raised, acknowledged, ...)."),
    (
        "events_dropped",
        "events_dropped",
        "Alert events a subscriber could not take (its mailbox was full).",
    ),
)

# Work between two checkpoints of render_metrics_async (seconds), and how many items pass
# between two readings of the clock.
_SLICE_SECONDS: Final = 0.0005
_CLOCK_EVERY: Final = 16


def _label(path: str) -> str:
    return path or ROOT_LABEL


def _phase(saga: Any) -> str:
    phase = getattr(saga, "phase", None)
    return str(getattr(phase, "value", phase))


# ------------------------------------------------------------------------------ building
#
# The builders append families to ``out`` and yield (nothing) after each service or node:
# the caller decides whether to take a checkpoint there.


@functools.cache
def _versions() -> tuple[str, str, str]:
    """This build's versions: aura-actors, Python, trio (read once)."""
    try:
        version = importlib.metadata.version("aura-actors")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        version = "unknown"
    return version, platform.python_version(), trio.__version__


def _build_info() -> _Family:
    info = _gauge(
        "aura_build_info",
        "Always 1: the versions of aura-actors, Python and trio this process runs.",
        labels=["version", "python_version", "trio_version"],
    )
    info.add(_versions(), 1.0)
    return info


def _families(snap: OperatorSnapshot | None, out: list[_Family]) -> Iterator[None]:
    out.append(_build_info())
    up = _gauge("aura_monitor_up", "1 when the monitor answered the last snapshot's queries.")
    up.add((), 1.0 if snap is not None and snap.health is not None else 0.0)
    out.append(up)
    if snap is None:
        return
    if snap.health is not None:
        yield from _health(snap.health, out)
    if snap.metrics is not None:
        yield from _services(snap.metrics, out)
    if snap.breakers is not None:
        yield from _breakers(snap.breakers, out)
    if snap.alerts is not None:
        _alerts(snap.alerts, out)
    if snap.tree is not None:
        yield from _tree(snap.tree, out)
    if snap.providers:
        yield from _providers(snap.providers, out)
    if snap.sagas is not None:
        _sagas(snap.sagas, out)
    if snap.monitor_statistics is not None:
        _monitor_statistics(snap.monitor_statistics, out)
    if snap.tree is not None:
        dropped = _counter(
            "aura_supervision_events_dropped",
            "Supervision events a listener (the monitor) could not take: its mailbox was full.",
        )
        dropped.add((), float(snap.tree.events_dropped))
        out.append(dropped)
    if snap.fleets:
        _fleets(snap.fleets, out)
    reports_dropped = getattr(snap.saga_statistics, "reports_dropped", None)
    if isinstance(reports_dropped, int):
        family = _counter(
            "aura_saga_reports_dropped",
            "Saga reports the coordinator could not send to the monitor.",
        )
        family.add((), float(reports_dropped))
        out.append(family)
    if isinstance(getattr(snap.saga_statistics, "started", None), int):
        _saga_outcomes(snap.saga_statistics, out)


def _saga_outcomes(stats: Any, out: list[_Family]) -> None:
    started = _counter(
        "aura_sagas_started", "Sagas started by the coordinator (recovered ones not counted)."
    )
    started.add((), float(stats.started))
    ended = _counter(
        "aura_sagas_ended",
        "Sagas that ended, by outcome: completed, compensated (every completed step undone), "
        "failed (nothing to undo), cancelled, compensation_failed (waits for an operator).",
        labels=["outcome"],
    )
    for outcome in _SAGA_OUTCOMES:
        ended.add((outcome,), float(getattr(stats, outcome, 0)))
    out += (started, ended)


def _health(health: HealthReport, out: list[_Family]) -> Iterator[None]:
    overall = _gauge(
        "aura_health_status",
        "Overall health: 1 for the current status, 0 for the others.",
        labels=["status"],
    )
    for status in HealthStatus:
        overall.add((status.value,), float(health.status is status))
    per = _gauge(
        "aura_service_health_status",
        "Health of each service: 1 for its current status, 0 for the others.",
        labels=["service", "status"],
    )
    dependencies = _gauge(
        "aura_dependency_state",
        "State of each shared dependency (a saga journal's database): 1 for its current "
        "state, 0 for the others.",
        labels=["dependency", "state"],
    )
    out += (overall, per, dependencies)
    for name, dependency in health.dependencies.items():
        for state in sorted(DEPENDENCY_STATES):
            dependencies.add((name, state), float(dependency.state == state))
    for service, info in health.services.items():
        for status in HealthStatus:
            per.add((service, status.value), float(info.status is status))
        yield


def _services(report: MetricsReport, out: list[_Family]) -> Iterator[None]:
    window = _gauge("aura_monitor_window_seconds", "Length of the monitor's rolling window.")
    window.add((), report.window)
    attempts = _counter(
        "aura_service_attempts",
        "Attempts reported to the monitor since the service was first seen.",
        labels=["service"],
    )
    retries = _counter(
        "aura_service_retries",
        "Reported attempts that were retries, since the service was first seen.",
        labels=["service"],
    )
    errors = _counter(
        "aura_service_errors",
        "Failed attempts by error category, since the service was first seen.",
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
        "Failed attempts / attempts within the rolling window "
        "(NaN below the monitor's min_calls: too few calls to judge).",
        labels=["service"],
    )
    out += (window, attempts, retries, errors, w_attempts, w_errors, ratio)
    latency = None
    if report.latency_bounds:
        latency = _histogram(
            "aura_service_latency_seconds",
            "Latency of the attempts reported to the monitor, since the service was first seen.",
            report.latency_bounds,
            labels=["service"],
        )
        out.append(latency)
    for service, m in report.services.items():
        attempts.add((service,), float(m.totals.calls))
        retries.add((service,), float(m.totals.retries))
        by_category = m.totals.errors_by_category
        for category in _CATEGORY_NAMES:
            errors.add((service, category), float(by_category.get(category, 0)))
        w_attempts.add((service,), float(m.calls))
        w_errors.add((service,), float(m.errors))
        ratio.add((service,), m.error_ratio if m.enough_calls else math.nan)
        counts = m.totals.latency_counts
        if latency is not None and len(counts) == len(report.latency_bounds) + 1:
            cumulative = list(itertools.accumulate(counts))
            latency.add_histogram((service,), cumulative, m.totals.latency_sum)
        yield


def _breakers(breakers: BreakerList, out: list[_Family]) -> Iterator[None]:
    state = _gauge(
        "aura_circuit_breaker_state",
        "Circuit breaker state as the monitor last heard it: 1 for the current state.",
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
    out += (state, transitions, trips)
    for info in breakers.breakers:
        for name in _BREAKER_NAMES:
            state.add((info.service, name), float(info.state == name))
        transitions.add((info.service,), float(info.transitions))
        trips.add((info.service,), float(info.trips))
        yield


def _alerts(alerts: AlertList, out: list[_Family]) -> None:
    active = _gauge("aura_alerts_active", "Active alerts by rule.", labels=["rule", "severity"])
    acknowledged = _gauge(
        "aura_alerts_acknowledged",
        "Active alerts an operator acknowledged (silenced), by rule.",
        labels=["rule", "severity"],
    )
    counts = dict.fromkeys(RULE_SEVERITY, 0)
    acks = dict.fromkeys(RULE_SEVERITY, 0)
    for alert in alerts.active:
        counts[alert.rule] = counts.get(alert.rule, 0) + 1
        if alert.acknowledged_at is not None:
            acks[alert.rule] = acks.get(alert.rule, 0) + 1
    for rule, count in counts.items():
        labels = (rule.value, RULE_SEVERITY[rule].value)
        active.add(labels, float(count))
        acknowledged.add(labels, float(acks[rule]))
    out += (active, acknowledged)


def _tree(tree: TreeNode, out: list[_Family]) -> Iterator[None]:
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
    out += (a_state, a_restarts, depth, s_state, s_restarts)
    for node in tree.walk():
        label = _label(node.path)
        if node.kind == "actor":
            for name in TREE_STATES:
                a_state.add((label, name), float(node.state == name))
            a_restarts.add((label,), float(node.restarts))
            depth.add((label,), float(node.mailbox_depth))
        else:
            for name in TREE_STATES:
                s_state.add((label, name), float(node.state == name))
            s_restarts.add((label,), float(node.restarts))
        yield


def _providers(statuses: Mapping[str, ProviderStatus], out: list[_Family]) -> Iterator[None]:
    counters = [
        (field, _counter(f"aura_provider_{field}", help_text, labels=["service"]))
        for field, help_text in _PROVIDER_COUNTERS
    ]
    gauges = [
        (field, _gauge(f"aura_provider_{name}", help_text, labels=["service"]))
        for name, field, help_text in _PROVIDER_GAUGES
    ]
    breaker = _gauge(
        "aura_provider_breaker_state",
        "The provider's own circuit breaker state: 1 for the current state.",
        labels=["service", "state"],
    )
    out.extend(family for _, family in counters)
    out.extend(family for _, family in gauges)
    out.append(breaker)
    for service, status in statuses.items():
        key = (service,)
        for field, family in counters:
            family.add(key, float(getattr(status, field)))
        for field, family in gauges:
            family.add(key, float(getattr(status, field)))
        for name in _BREAKER_NAMES:
            breaker.add((service, name), float(status.breaker == name))
        yield


def _sagas(sagas: Sequence[Any], out: list[_Family]) -> None:
    failed = sum(1 for saga in sagas if _phase(saga) == _COMPENSATION_FAILED)
    unfinished = _gauge(
        "aura_sagas_unfinished", "Sagas started and not finished (running or compensating)."
    )
    unfinished.add((), float(len(sagas) - failed))
    needs_operator = _gauge(
        "aura_sagas_compensation_failed",
        "Sagas that could not be compensated and wait for an operator.",
    )
    needs_operator.add((), float(failed))
    out += (unfinished, needs_operator)


_FLEET_HEALTH: Final = ("healthy", "degraded")


def _fleets(fleets: Sequence[FleetStatus], out: list[_Family]) -> None:
    """The fleet families.  The snapshot's ``instance`` label tells the fleet's instances
    apart; a process with several members (tests, examples) adds ``member``."""
    extra = ["member"] if len(fleets) > 1 else []
    live = _gauge("aura_fleet_instances_live", "Live instances of the fleet.", extra)
    up = _gauge("aura_fleet_store_up", "1 when the last fleet store call reached the store.", extra)
    health = _gauge(
        "aura_fleet_health_status",
        "Fleet health: 1 for the current status (degraded: the store is unreachable or the "
        "views are stale; the local policies decide alone), 0 for the other.",
        [*extra, "status"],
    )
    trips = _counter("aura_fleet_store_round_trips", "Commands sent to the fleet store.", extra)
    errors = _counter("aura_fleet_store_errors", "Fleet store calls that failed.", extra)
    dropped = _counter(
        "aura_fleet_changes_dropped",
        "Trip votes, probe outcomes and finished keys that could not be sent to the store.",
        extra,
    )
    state = _gauge(
        "aura_fleet_breaker_state",
        "Fleet circuit breaker state as this instance sees it: 1 for the current state.",
        [*extra, "service", "state"],
    )
    fresh = _gauge(
        "aura_fleet_breaker_fresh",
        "1 while this instance's view of the fleet breaker is fresh (0: ignored, stale).",
        [*extra, "service"],
    )
    events = _counter(
        "aura_fleet_idempotency_events",
        "Shared idempotency store events: claims, replays, joins, takeovers, conflicts, "
        "finished, fenced (a finish refused: the claim was lost), failures.",
        [*extra, "service", "event"],
    )
    for fleet in fleets:
        member = (fleet.instance,) if extra else ()
        live.add(member, float(fleet.live))
        up.add(member, 1.0 if fleet.available else 0.0)
        for name in _FLEET_HEALTH:
            health.add((*member, name), 1.0 if fleet.status == name else 0.0)
        trips.add(member, float(fleet.round_trips))
        errors.add(member, float(fleet.errors))
        dropped.add(member, float(fleet.dropped))
        for breaker in fleet.breakers:
            for name in _BREAKER_NAMES:
                state.add((*member, breaker.service, name), float(breaker.state == name))
            fresh.add((*member, breaker.service), 1.0 if breaker.fresh else 0.0)
        for service, counts in fleet.idempotency.items():
            for event, count in sorted(counts.items()):
                events.add((*member, service, event), float(count))
    out.extend((live, up, health, trips, errors, dropped, state, fresh, events))


def _monitor_statistics(stats: MonitorStatistics, out: list[_Family]) -> None:
    for name, field, help_text in _MONITOR_COUNTERS:
        family = _counter(f"aura_monitor_{name}", help_text)
        family.add((), float(getattr(stats, field)))
        out.append(family)
    kinds = _counter(
        "aura_monitor_supervision_events",
        "Supervision events the monitor recorded, by kind.",
        labels=["kind"],
    )
    for kind in sorted(SUPERVISION_KINDS):
        kinds.add((kind,), float(stats.supervision.get(kind, 0)))
    gave_up = _counter(
        "aura_supervisor_gave_up",
        "Times a supervisor gave up (exceeded its restart intensity), by its path.",
        labels=["path"],
    )
    for path, count in sorted(stats.gave_up.items()):
        gave_up.add((_label(path),), float(count))
    out += (kinds, gave_up)


def _const_labels(snapshot: OperatorSnapshot | None) -> tuple[tuple[str, str], ...]:
    """The labels every sample of ``snapshot``'s exposition gets."""
    if snapshot is None or snapshot.instance is None:
        return ()
    return (("instance", snapshot.instance),)


#: What :func:`_render` yields when the final join comes: a checkpoint is due before it.
_JOIN: Final = True


def _render(snapshot: OperatorSnapshot | None) -> Generator[bool | None, None, bytes]:
    """Build and write the exposition, yielding after each unit of work; returns the text."""
    families: list[_Family] = []
    yield from _families(snapshot, families)
    writer = _Writer(_const_labels(snapshot))
    for family in families:
        writer.header(family)
        yield from writer.samples(family)
    families.clear()  # freeing the samples takes a while: not in the join's step
    yield _JOIN  # the final join is a step of its own
    return writer.text()


def render_metrics(snapshot: OperatorSnapshot) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``snapshot``, in one go.

    Serve it with the content type :data:`METRICS_CONTENT_TYPE`.  Needs prometheus-client
    (the ``admin`` extra).  In a running application prefer :func:`render_metrics_async`,
    which never holds the event loop for long.
    """
    steps = _render(snapshot)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            text: bytes = done.value
            return text


async def render_metrics_async(
    snapshot: OperatorSnapshot, *, slice_seconds: float = _SLICE_SECONDS
) -> bytes:
    """:func:`render_metrics`, with a checkpoint after each ``slice_seconds`` of work (half a
    millisecond by default; the clock is read every few samples).

    At a thousand services the exposition takes tens of milliseconds to build; done in one go
    it would stall every actor of the process that long.  Cancellation stops the rendering
    at the next checkpoint.
    """
    steps = _render(snapshot)
    clock = time.perf_counter
    started = clock()
    count = 0
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            text: bytes = done.value
            return text
        count += 1
        if step is _JOIN:
            await trio.lowlevel.checkpoint()
        elif count >= _CLOCK_EVERY:
            count = 0
            if clock() - started >= slice_seconds:
                await trio.lowlevel.checkpoint()
                started = clock()


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
        families: list[_Family] = []
        for _ in _families(self._snapshot, families):
            pass
        const = _const_labels(self._snapshot)
        for family in families:
            yield _client_family(family, const)
