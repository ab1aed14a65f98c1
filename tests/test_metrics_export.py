"""Prometheus exposition of operator snapshots: conventions, values, parsing round trips."""

from __future__ import annotations

import importlib.metadata
import math
import platform
import re
from typing import Any

import attrs
import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors import (
    BackoffSettings,
    BreakerSettings,
    BudgetSettings,
    Call,
    ConfigError,
    ErrorCategory,
    GetStatus,
    MonitorActor,
    ProviderActor,
    ProviderSettings,
    ProviderStatus,
    Reset,
    RetrySettings,
    open_actor,
)
from actors._monitor._state import MonitorState
from actors._policies._config._monitoring import MonitorSettings
from actors._protocol import BreakerReport, CallReport, DependencyReport, SupervisionReport
from supervisors import TreeNode
from supervisors._operator._metrics import (
    METRIC_NAMES,
    AuraCollector,
    OperatorSnapshot,
    render_metrics,
    render_metrics_async,
    take_snapshot,
)

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def snapshot_of(state: MonitorState, now: float, **parts: Any) -> OperatorSnapshot:
    """The monitor parts of a snapshot, straight from the sans-I/O monitor state."""
    return OperatorSnapshot(
        at=now,
        health=state.health(now),
        metrics=state.metrics(now),
        breakers=state.breakers(),
        alerts=state.alerts(),
        **parts,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def without_build_info(
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: value for key, value in got.items() if key[0] != "aura_build_info"}


def busy_state() -> MonitorState:
    state = MonitorState(MonitorSettings(min_calls=1))
    for i in range(10):
        state.record(CallReport("openai", True, 0.2, float(i)), float(i))
    for i in range(4):
        state.record(
            CallReport("anthropic", False, 1.0, 10.0 + i, category=ErrorCategory.TIMEOUT), 10.0 + i
        )
    state.record(BreakerReport("anthropic", "closed", "open", 14.0), 14.0)
    return state


TREE = TreeNode(
    name="",
    path="",
    kind="supervisor",
    state="running",
    restarts=0,
    strategy="one_for_one",
    children=(
        TreeNode(name="monitor", path="monitor", kind="actor", state="running", restarts=0),
        TreeNode(
            name="providers",
            path="providers",
            kind="supervisor",
            state="restarting",
            restarts=2,
            strategy="one_for_all",
            children=(
                TreeNode(
                    name="openai",
                    path="providers/openai",
                    kind="actor",
                    state="restarting",
                    restarts=3,
                    mailbox_depth=7,
                ),
            ),
        ),
    ),
)


STATUS = ProviderStatus(
    service="openai", breaker="open", retry_after=3.0, budget_balance=9, running=2,
    queued=1, waiting=0, cached=5, calls=20, succeeded=17, failed=2, attempts=24, retries=4,
    rejected=1, fallbacks=1, hedges=0, reports_dropped=3,
)  # fmt: skip


class Saga:
    def __init__(self, phase: str) -> None:
        self.phase = phase


class SagaStatistics:
    reports_dropped = 6


def full_snapshot(state: MonitorState | None = None) -> OperatorSnapshot:
    """A snapshot with every part: monitor, statistics, tree, providers, sagas."""
    state = busy_state() if state is None else state
    state.record(SupervisionReport("providers", "gave_up", "too many restarts"), 15.0)
    return snapshot_of(
        state,
        15.0,
        monitor_statistics=attrs.evolve(state.statistics(), events_dropped=2),
        tree=msgspec.structs.replace(TREE, events_dropped=4),
        providers={"openai": STATUS},
        sagas=[Saga("running"), Saga("compensation_failed"), Saga("compensating")],
        saga_statistics=SagaStatistics(),
    )


def test_names_follow_prometheus_conventions() -> None:
    """Every family is aura_-prefixed, documented, listed; counters expose _total samples."""
    text = render_metrics(full_snapshot()).decode()
    families = list(text_string_to_metric_families(text))
    assert families
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    for family in families:
        assert NAME.match(family.name)
        assert family.name.startswith("aura_")
        assert family.name in METRIC_NAMES
        assert family.documentation
        if family.type == "counter":
            assert {s.name for s in family.samples} == {f"{family.name}_total"}
        if family.type == "histogram":
            assert {s.name for s in family.samples} == {
                f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum")
            }
        if "seconds" in family.name:
            assert family.name.endswith("_seconds")
        for sample in family.samples:
            assert set(sample.labels) <= {"service", "category", "state", "status", "le",
                                          "rule", "severity", "path", "kind", "version",
                                          "python_version", "trio_version",
                                          "dependency"}  # fmt: skip
            assert "quantile" not in sample.labels  # latency is a histogram: it sums


def test_values_match_the_monitor() -> None:
    """Counters equal the monitor's totals; enumerations have one 1 per subject."""
    state = busy_state()
    got = samples(render_metrics(snapshot_of(state, 15.0)).decode())
    assert got[("aura_monitor_up", ())] == 1
    assert got[("aura_service_attempts_total", (("service", "openai"),))] == 10
    assert got[("aura_service_attempts_total", (("service", "anthropic"),))] == 4
    assert (
        got[("aura_service_errors_total", (("category", "timeout"), ("service", "anthropic")))] == 4
    )
    assert got[("aura_service_error_ratio", (("service", "anthropic"),))] == 1.0
    assert got[("aura_circuit_breaker_trips_total", (("service", "anthropic"),))] == 1
    states = {
        labels: value
        for (name, labels), value in got.items()
        if name == "aura_circuit_breaker_state"
    }
    assert states[(("service", "anthropic"), ("state", "open"))] == 1
    assert sum(v for k, v in states.items() if ("service", "anthropic") in k) == 1
    assert sum(v for k, v in states.items() if ("service", "openai") in k) == 1
    assert got[("aura_health_status", (("status", "degraded"),))] == 1
    assert got[("aura_alerts_active", (("rule", "breaker_open"), ("severity", "critical")))] == 1
    assert got[("aura_alerts_active", (("rule", "high_error_rate"), ("severity", "warning")))] == 0
    assert got[("aura_monitor_window_seconds", ())] == 300
    openai = (("service", "openai"),)
    assert got[("aura_service_latency_seconds_count", openai)] == 10
    assert got[("aura_service_latency_seconds_sum", openai)] == pytest.approx(2.0)
    assert got[("aura_service_latency_seconds_bucket", (("le", "0.1"), *openai))] == 0
    assert got[("aura_service_latency_seconds_bucket", (("le", "0.25"), *openai))] == 10
    assert got[("aura_service_latency_seconds_bucket", (("le", "+Inf"), *openai))] == 10


def test_dependency_state_is_exported() -> None:
    """Each reported dependency has one 1 among its states."""
    state = busy_state()
    state.record(DependencyReport("saga journal", "unavailable", "refused"), now=15.0)
    got = samples(render_metrics(snapshot_of(state, 15.0)).decode())
    series = {
        labels: value for (name, labels), value in got.items() if name == "aura_dependency_state"
    }
    assert series == {
        (("dependency", "saga journal"), ("state", "failed")): 0,
        (("dependency", "saga journal"), ("state", "ok")): 0,
        (("dependency", "saga journal"), ("state", "unavailable")): 1,
    }


def latency_buckets(text: str, service: str) -> dict[str, float]:
    """``le`` -> cumulative count of one service's latency histogram."""
    return {
        dict(labels)["le"]: value
        for (name, labels), value in samples(text).items()
        if name == "aura_service_latency_seconds_bucket" and ("service", service) in labels
    }


def test_latency_histogram_buckets_are_cumulative_and_exact() -> None:
    """A latency lands in the first bucket whose bound is >= it (a latency equal to a bound
    counts in that bound's bucket); above the top bound it counts in +Inf only; the count and
    sum are exact."""
    settings = MonitorSettings(histogram_buckets=(0.1, 1.0, 10.0))
    state = MonitorState(settings)
    for latency in (0.0, 0.05, 0.1, 0.100001, 1.0, 9.0, 10.0, 10.5, 500.0):
        state.record(CallReport("svc", True, latency, 0.0), 0.0)
    text = render_metrics(snapshot_of(state, 1.0)).decode()
    assert latency_buckets(text, "svc") == {"0.1": 3, "1.0": 5, "10.0": 7, "+Inf": 9}
    got = samples(text)
    assert got[("aura_service_latency_seconds_count", (("service", "svc"),))] == 9
    total = 0.0 + 0.05 + 0.1 + 0.100001 + 1.0 + 9.0 + 10.0 + 10.5 + 500.0
    assert got[("aura_service_latency_seconds_sum", (("service", "svc"),))] == pytest.approx(total)


def test_latency_histogram_counts_for_the_life_of_the_service() -> None:
    """Unlike the window's percentiles, the histogram keeps attempts older than the window,
    survives a reset of the windows and the eviction of an idle service that comes back."""
    state = MonitorState(MonitorSettings(window=60, buckets=6, latency_buckets=6, max_services=1))
    state.record(CallReport("quiet", True, 0.2, 0.0), 0.0)
    state.record(CallReport("quiet", True, 2.0, 1.0), 1.0)
    state.reset("quiet", 2.0)
    text = render_metrics(snapshot_of(state, 1000.0)).decode()
    assert latency_buckets(text, "quiet")["+Inf"] == 2
    state.record(CallReport("other", True, 0.1, 1000.0), 1000.0)  # evicts the idle "quiet"
    state.record(CallReport("quiet", True, 0.3, 2000.0), 2000.0)  # evicts "other"; comes back
    text = render_metrics(snapshot_of(state, 2000.0)).decode()
    assert latency_buckets(text, "quiet") == {
        "0.005": 0, "0.01": 0, "0.025": 0, "0.05": 0, "0.1": 0, "0.25": 1, "0.5": 2, "1.0": 2,
        "2.5": 3, "5.0": 3, "10.0": 3, "30.0": 3, "60.0": 3, "120.0": 3, "+Inf": 3,
    }  # fmt: skip
    got = samples(text)
    assert got[("aura_service_latency_seconds_sum", (("service", "quiet"),))] == pytest.approx(2.5)
    assert got[("aura_service_attempts_total", (("service", "quiet"),))] == 3


def test_tree_metrics() -> None:
    """Actors and supervisors get state, restarts and mailbox depth; the root is "(root)"."""
    snap = OperatorSnapshot(at=0.0, tree=TREE)
    got = samples(render_metrics(snap).decode())
    assert got[("aura_supervisor_state", (("path", "(root)"), ("state", "running")))] == 1
    assert got[("aura_supervisor_state", (("path", "providers"), ("state", "restarting")))] == 1
    assert got[("aura_supervisor_restarts_total", (("path", "providers"),))] == 2
    assert got[("aura_actor_restarts_total", (("path", "providers/openai"),))] == 3
    assert got[("aura_actor_mailbox_depth", (("path", "providers/openai"),))] == 7
    assert got[("aura_actor_state", (("path", "monitor"), ("state", "stopped")))] == 0
    assert got[("aura_monitor_up", ())] == 0


def test_provider_and_saga_metrics() -> None:
    """Provider statuses become aura_provider_* series; unfinished sagas a count."""
    status = ProviderStatus(
        service="openai", breaker="closed", retry_after=None, budget_balance=9, running=2,
        queued=1, waiting=0, cached=5, calls=20, succeeded=17, failed=2, attempts=24, retries=4,
        rejected=1, fallbacks=1, hedges=0, reports_dropped=0,
    )  # fmt: skip
    snap = OperatorSnapshot(at=0.0, providers={"openai": status}, sagas=["a", "b", "c"])
    got = samples(render_metrics(snap).decode())
    assert got[("aura_provider_calls_total", (("service", "openai"),))] == 20
    assert got[("aura_provider_retries_total", (("service", "openai"),))] == 4
    assert got[("aura_provider_running", (("service", "openai"),))] == 2
    assert got[("aura_provider_retry_budget", (("service", "openai"),))] == 9
    assert got[("aura_provider_idempotency_records", (("service", "openai"),))] == 5
    assert got[("aura_sagas_unfinished", ())] == 3


def test_collector_in_a_registry() -> None:
    """AuraCollector works in a registry: up 0 before the first update, data after it."""
    registry = CollectorRegistry(auto_describe=False)
    collector = AuraCollector()
    registry.register(collector)
    assert without_build_info(samples(generate_latest(registry).decode())) == {
        ("aura_monitor_up", ()): 0
    }
    collector.update(snapshot_of(busy_state(), 15.0))
    assert samples(generate_latest(registry).decode())[("aura_monitor_up", ())] == 1


# Service names are printable text (the monitor refuses the others at intake); quotes,
# backslashes and non-ASCII letters stay, as label values must escape them.
_SERVICES = st.text(min_size=1, max_size=12).filter(str.isprintable)
_REPORT = st.tuples(
    _SERVICES,
    st.booleans(),
    st.sampled_from(list(ErrorCategory)),
    st.floats(min_value=0, max_value=100, allow_nan=False),
)


@given(reports=st.lists(_REPORT, max_size=40))
def test_any_reports_round_trip_through_the_parser(
    reports: list[tuple[str, bool, ErrorCategory, float]],
) -> None:
    """For any reports (any service names) the parsed counters equal the monitor's totals."""
    state = MonitorState()
    for i, (service, ok, category, latency) in enumerate(reports):
        state.record(CallReport(service, ok, latency, float(i), category=category), float(i))
    now = float(len(reports))
    got = samples(render_metrics(snapshot_of(state, now)).decode())
    for service, metrics in state.metrics(now).services.items():
        assert got[("aura_service_attempts_total", (("service", service),))] == metrics.totals.calls
        errors = sum(
            value
            for (name, labels), value in got.items()
            if name == "aura_service_errors_total" and ("service", service) in labels
        )
        assert errors == metrics.totals.errors


async def test_take_snapshot_from_actors() -> None:
    """take_snapshot asks a running monitor; a stopped one leaves parts None with a reason."""
    async with open_actor(MonitorActor) as monitor:
        monitor.tell_nowait(CallReport("svc", True, 0.1, trio.current_time()))
        snap = await take_snapshot(monitor, tree=TREE)
        assert snap.problems == ()
        assert snap.metrics is not None
        assert list(snap.metrics.services) == ["svc"]
        assert snap.tree is TREE
    gone = await take_snapshot(monitor)
    assert gone.health is None
    assert gone.metrics is None
    assert len(gone.problems) == 5
    assert "monitor health" in gone.problems[0]
    assert without_build_info(samples(render_metrics(gone).decode())) == {
        ("aura_monitor_up", ()): 0
    }


# ================================================================================ what is new


def test_every_error_category_is_exported_from_zero() -> None:
    """Each service has a series for each of the ten categories from the start, so rate()
    sees the first error of a category."""
    state = MonitorState()
    state.record(CallReport("svc", True, 0.1, 0.0), 0.0)
    got = samples(render_metrics(snapshot_of(state, 1.0)).decode())
    errors = {
        dict(labels)["category"]: value
        for (name, labels), value in got.items()
        if name == "aura_service_errors_total"
    }
    assert errors == {category.value: 0.0 for category in ErrorCategory}


def test_error_ratio_is_nan_below_min_calls() -> None:
    """The exported error ratio is NaN (not 0, not a judged ratio) with too few calls."""
    state = MonitorState(MonitorSettings(min_calls=3))
    state.record(CallReport("few", False, 0.1, 0.0, ErrorCategory.NETWORK), 0.0)
    state.record(CallReport("idle", True, 0.1, 0.0), 0.0)
    for _ in range(3):
        state.record(CallReport("enough", False, 0.1, 0.0, ErrorCategory.NETWORK), 0.0)
    got = samples(render_metrics(snapshot_of(state, 1.0)).decode())
    assert math.isnan(got[("aura_service_error_ratio", (("service", "few"),))])
    assert math.isnan(got[("aura_service_error_ratio", (("service", "idle"),))])
    assert got[("aura_service_error_ratio", (("service", "enough"),))] == 1.0


def test_failed_sagas_are_not_counted_as_unfinished() -> None:
    """Sagas that could not be compensated have their own gauge."""
    got = samples(render_metrics(full_snapshot()).decode())
    assert got[("aura_sagas_unfinished", ())] == 2
    assert got[("aura_sagas_compensation_failed", ())] == 1


def test_drop_counters_are_exported() -> None:
    """What the monitor, the tree's event bus and the saga coordinator dropped is exported."""
    state = MonitorState(MonitorSettings(max_services=1))
    state.record(CallReport("a", True, 0.1, 0.0), 0.0)
    state.record(CallReport("b", True, 0.1, 0.0), 0.0)  # dropped: "a" is busy
    state.record_batch(["junk"], 0.0)
    got = samples(render_metrics(full_snapshot(state)).decode())
    assert got[("aura_monitor_reports_dropped_total", ())] == 1
    assert got[("aura_monitor_reports_invalid_total", ())] == 1
    assert got[("aura_monitor_services_evicted_total", ())] == 0
    assert got[("aura_monitor_alerts_dropped_total", ())] == 0
    assert got[("aura_monitor_events_dropped_total", ())] == 2
    assert got[("aura_monitor_alert_events_total", ())] == state.statistics().alert_events
    assert got[("aura_supervision_events_dropped_total", ())] == 4
    assert got[("aura_saga_reports_dropped_total", ())] == 6
    assert got[("aura_provider_reports_dropped_total", (("service", "openai"),))] == 3
    assert got[("aura_supervisor_gave_up_total", (("path", "providers"),))] == 1
    assert got[("aura_monitor_supervision_events_total", (("kind", "gave_up"),))] == 1


def test_provider_breaker_state_is_exported() -> None:
    """The provider's own breaker state is a 0/1 series per state."""
    got = samples(render_metrics(full_snapshot()).decode())
    states = {
        dict(labels)["state"]: value
        for (name, labels), value in got.items()
        if name == "aura_provider_breaker_state"
    }
    assert states == {"closed": 0.0, "half_open": 0.0, "isolated": 0.0, "open": 1.0}


_NAMES = st.text(min_size=1, max_size=10).filter(str.isprintable)


@given(
    names=st.lists(_NAMES, min_size=1, max_size=6, unique=True),
    latency=st.floats(min_value=0, max_value=2000, allow_nan=False),
)
def test_text_is_what_prometheus_client_writes(names: list[str], latency: float) -> None:
    """The exposition is byte for byte generate_latest's for the same families, whatever the
    service names (quotes, backslashes, newlines); the async rendering is the same text."""
    state = MonitorState(MonitorSettings(min_calls=1))
    for i, name in enumerate(names):
        state.record(CallReport(name, i % 2 == 0, latency, float(i), ErrorCategory.TIMEOUT), 1.0)
        state.record(BreakerReport(name, "closed", "open", 1.0, "x", f"p/{name}"), 1.0)
    snap = full_snapshot(state)
    expected = generate_latest(AuraCollector(snap))
    assert render_metrics(snap) == expected
    assert trio.run(render_metrics_async, snap) == expected
    empty = OperatorSnapshot(at=0.0)
    assert render_metrics(empty) == generate_latest(AuraCollector(empty))


async def test_render_async_takes_checkpoints() -> None:
    """Rendering a snapshot lets other tasks run between slices of work (here a slice is as
    short as can be: the clock is read every 16 samples)."""
    state = MonitorState()
    for i in range(30):
        state.record(CallReport(f"s{i:03d}", True, 0.1, 0.0), 0.0)
    snap = snapshot_of(state, 1.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        before = ticks
        text = await render_metrics_async(snap, slice_seconds=0.0)
        during = ticks - before
        nursery.cancel_scope.cancel()
    assert text == render_metrics(snap)
    assert during >= 30


# ======================================================================= fleets and builds


def test_build_info_names_the_versions() -> None:
    """aura_build_info is 1 with the versions of aura-actors, Python and trio, with or
    without a monitor."""
    for snap in (full_snapshot(), OperatorSnapshot(at=0.0)):
        infos = [
            (dict(labels), value)
            for (name, labels), value in samples(render_metrics(snap).decode()).items()
            if name == "aura_build_info"
        ]
        assert len(infos) == 1
        labels, value = infos[0]
        assert value == 1
        assert labels["python_version"] == platform.python_version()
        assert labels["trio_version"] == trio.__version__
        assert labels["version"] == importlib.metadata.version("aura-actors")


def test_instance_label_on_every_sample() -> None:
    """With an instance name every sample carries it as ``instance`` (buckets too); without
    one no sample has an instance label."""
    snap = attrs.evolve(full_snapshot(), instance="eu-1")
    families = list(text_string_to_metric_families(render_metrics(snap).decode()))
    assert {f.type for f in families} == {"gauge", "counter", "histogram"}
    for family in families:
        for sample in family.samples:
            assert sample.labels["instance"] == "eu-1"
    plain = list(text_string_to_metric_families(render_metrics(full_snapshot()).decode()))
    assert all("instance" not in s.labels for f in plain for s in f.samples)
    # Apart from the label, the same samples.
    assert {
        (name, tuple(pair for pair in labels if pair[0] != "instance")): value
        for (name, labels), value in samples(render_metrics(snap).decode()).items()
    }.keys() == samples(render_metrics(full_snapshot()).decode()).keys()


@given(
    names=st.lists(_NAMES, min_size=1, max_size=4, unique=True),
    latencies=st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), max_size=6),
    instance=st.none() | _NAMES,
)
def test_histograms_and_instance_text_is_what_prometheus_client_writes(
    names: list[str], latencies: list[float], instance: str | None
) -> None:
    """Histograms and the instance label are written byte for byte as generate_latest writes
    them (label order with ``le`` and ``instance``, escaping of the instance name)."""
    state = MonitorState(MonitorSettings(min_calls=1))
    for name in names:
        for latency in latencies:
            state.record(CallReport(name, True, latency, 0.0), 0.0)
    snap = attrs.evolve(full_snapshot(state), instance=instance)
    expected = generate_latest(AuraCollector(snap))
    assert render_metrics(snap) == expected
    assert trio.run(render_metrics_async, snap) == expected


@given(
    shares=st.lists(
        st.tuples(st.integers(0, 2), st.floats(min_value=0, max_value=300, allow_nan=False)),
        max_size=40,
    )
)
def test_histograms_of_a_fleet_sum_to_one_instance_seeing_everything(
    shares: list[tuple[int, float]],
) -> None:
    """What quantile gauges could not do: the buckets, counts and sums of three instances'
    histograms add up (as ``sum by (le)`` does) to those of one monitor that saw every
    attempt."""
    fleet = [MonitorState() for _ in range(3)]
    whole = MonitorState()
    for which, latency in shares:
        fleet[which].record(CallReport("svc", True, latency, 0.0), 0.0)
        whole.record(CallReport("svc", True, latency, 0.0), 0.0)
    summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for i, state in enumerate(fleet):
        snap = attrs.evolve(snapshot_of(state, 1.0), instance=f"i{i}")
        for (name, labels), value in samples(render_metrics(snap).decode()).items():
            if name.startswith("aura_service_latency_seconds"):
                key = (name, tuple(pair for pair in labels if pair[0] != "instance"))
                summed[key] = summed.get(key, 0.0) + value
    alone = {
        key: value
        for key, value in samples(render_metrics(snapshot_of(whole, 1.0)).decode()).items()
        if key[0].startswith("aura_service_latency_seconds")
    }
    assert summed.keys() == alone.keys()
    for key, value in alone.items():
        assert summed[key] == pytest.approx(value)


@pytest.mark.parametrize(
    ("bounds", "problem"),
    [
        ((), "non-empty"),
        ((0.1, 0.1), "strictly increasing"),
        ((1.0, 0.5), "strictly increasing"),
        ((0.0, 1.0), "greater than 0"),
        ((0.1, math.inf), "finite"),
        (tuple(float(i) for i in range(1, 66)), "at most 64"),
    ],
)
def test_histogram_buckets_are_checked(bounds: tuple[float, ...], problem: str) -> None:
    """Bad histogram bounds are refused with an error naming the field."""
    with pytest.raises(ConfigError, match=problem) as caught:
        MonitorSettings(histogram_buckets=bounds)
    assert caught.value.path == "histogram_buckets"


# ================================================================================ alerts' inputs


def test_saga_outcomes_are_counted_by_outcome() -> None:
    """The coordinator's outcome counters become aura_sagas_ended_total{outcome} (every
    outcome from 0) and aura_sagas_started_total."""

    class Statistics:
        started, completed, compensated, failed, cancelled, compensation_failed = 9, 5, 2, 1, 0, 1
        reports_dropped = 0

    got = samples(render_metrics(OperatorSnapshot(at=0.0, saga_statistics=Statistics())).decode())
    assert got[("aura_sagas_started_total", ())] == 9
    ended = {
        dict(labels)["outcome"]: value
        for (name, labels), value in got.items()
        if name == "aura_sagas_ended_total"
    }
    assert ended == {
        "completed": 5,
        "compensated": 2,
        "failed": 1,
        "cancelled": 0,
        "compensation_failed": 1,
    }


def test_breaker_open_time_its_break_and_budget_refusals_are_exported() -> None:
    """What the alerting rules compare: how long the breaker has been open against its break,
    and the calls the retry budget and the bulkhead refused."""
    status = msgspec.structs.replace(
        STATUS, retry_budget_rejections=4, break_duration=30.0, open_for=45.5, bulkhead_rejections=7
    )
    got = samples(render_metrics(OperatorSnapshot(at=0.0, providers={"openai": status})).decode())
    service = (("service", "openai"),)
    assert got[("aura_provider_retry_budget_rejections_total", service)] == 4
    assert got[("aura_provider_bulkhead_rejections_total", service)] == 7
    assert got[("aura_provider_breaker_break_seconds", service)] == 30.0
    assert got[("aura_provider_breaker_open_seconds", service)] == 45.5


async def test_a_provider_reports_its_open_time_break_and_budget_refusals(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A provider's status counts the calls its retry budget refused, gives its break, and
    how long its breaker has been open since it last closed: growing across a failed probe,
    0 once it closes."""
    failing = True

    async def service(payload: Any) -> Any:
        if failing:
            raise ConnectionError("connection reset by peer")
        return "ok"

    settings = ProviderSettings(
        retry=RetrySettings(max_attempts=3, backoff=BackoffSettings(base_delay=0.01)),
        budget=BudgetSettings(retry_ratio=0.0, min_retries_per_s=0.0),
        breaker=BreakerSettings(failure_threshold=2, break_duration=30.0),
    )
    async with open_actor(lambda: ProviderActor("svc", service, settings)) as ref:
        for _ in range(2):
            with pytest.raises(Exception, match="retry budget"):
                await ref.ask(Call("x"))
        status = await ref.ask(GetStatus())
        assert status.retry_budget_rejections == 2
        assert status.break_duration == 30.0
        assert status.breaker == "open"
        assert status.open_for == 0.0  # tripped just now
        await trio.sleep(31)  # the break elapses: the next call is a probe, and fails
        with pytest.raises(Exception, match="svc"):
            await ref.ask(Call("x"))
        await trio.sleep(5)
        status = await ref.ask(GetStatus())
        assert status.breaker == "open"
        assert 36.0 <= status.open_for < 37.0  # since the first trip, past its break
        failing = False
        await ref.ask(Reset())
        assert (await ref.ask(GetStatus())).open_for == 0.0
