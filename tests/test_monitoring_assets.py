"""The Grafana dashboard and the Prometheus alerting rules shipped in ``monitoring/``.

promtool (Debian's ``prometheus`` package) checks the rules and runs their unit tests, which
feed them series in the project's metric names; every metric the dashboard, the rules and
those tests name must be one a real ``/metrics`` exports, so a renamed family breaks this test
rather than a dashboard in production.  promtool is not optional: without it these tests fail
and say what to install (``apt-get install -y prometheus``; ``.ci/run`` does).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors import (
    AuraError,
    BackoffSettings,
    BreakerSettings,
    Call,
    Fleet,
    FleetSettings,
    MemoryJournal,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
    open_fleet,
)
from actors._monitor._actor import MonitorActor
from actors._policies._config._monitoring import MonitorSettings
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep
from actors._saga._messages import StartSaga
from supervisors import ChildSpec, SupervisorSpec, open_supervisor
from supervisors._operator._admin._actor import GetAdminAddress, admin_spec

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
DASHBOARD = MONITORING / "grafana" / "aura-actors.json"
RULES = MONITORING / "prometheus" / "aura-alerts.yml"
RULE_TESTS = MONITORING / "prometheus" / "aura-alerts.test.yml"

#: A metric name of the project in PromQL or in a series selector.
_NAME = re.compile(r"\baura_[a-z0-9_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "the alerting rules' tests need promtool, from Debian's prometheus package: "
            "apt-get install -y prometheus (.ci/run installs it)"
        )
    return found


def _queries(value: Any) -> Iterator[str]:
    """Every PromQL text of a Grafana dashboard: panel targets and variable queries."""
    if isinstance(value, dict):
        for key, item in value.items():
            texts = ("expr", "definition") if isinstance(item, str) else ()
            if key in texts or (key == "query" and isinstance(item, str) and "(" in item):
                yield item
            else:
                yield from _queries(item)
    elif isinstance(value, list):
        for item in value:
            yield from _queries(item)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_names() -> set[str]:
    return {name for query in _queries(dashboard()) for name in _NAME.findall(query)}


def rule_names() -> set[str]:
    return set(_NAME.findall(RULES.read_text()))


def rule_test_names() -> set[str]:
    return set(re.findall(r"series: '(aura_[a-z0-9_]+)\{", RULE_TESTS.read_text()))


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), flags=re.M)


# ================================================================================ promtool


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the rules file."""
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    """`promtool test rules` passes: each alert fires on the series it is about, at the
    thresholds, and stays quiet on the others."""
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_and_covers_what_an_operator_needs() -> None:
    """Each rule has a unit test, and the rules cover an open breaker past its break, the
    monitor's two error thresholds, the retry budget, a full bulkhead, failed compensations,
    supervisors that gave up, the fleet store and the shared saga journal."""
    names = alert_names()
    assert sorted(names) == sorted(
        [
            "AuraBreakerOpenPastItsBreak",
            "AuraHighErrorRate",
            "AuraCriticalErrorRatio",
            "AuraRetryBudgetExhausted",
            "AuraBulkheadFull",
            "AuraSagaCompensationFailed",
            "AuraSupervisorGaveUp",
            "AuraFleetStoreDown",
            "AuraSagaJournalUnavailable",
        ]
    )
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(names)
    settings = MonitorSettings()
    text = RULES.read_text()
    assert f">= {settings.high_error_rate:g}" in text
    assert f">= {settings.critical_error_ratio:g}" in text
    assert f">= {settings.min_calls}" in text


# ================================================================================ the dashboard


def test_the_dashboard_is_a_grafana_dashboard_with_the_panels_it_promises() -> None:
    """The JSON imports as a dashboard: a uid, a Prometheus datasource variable used by every
    panel, unique panel ids inside the 24-column grid; and its panels cover errors by
    category, breakers, retries and the budget, the bulkhead, latency quantiles, sagas,
    supervision and alerts."""
    board = dashboard()
    assert board["uid"] == "aura-actors"
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"instance", "service"} <= set(variables)
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0, p["title"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
    queries = " ".join(_queries(board))
    for needed in (
        "sum by (category) (rate(aura_service_errors_total",
        "aura_provider_breaker_state",
        "aura_provider_retries_total",
        "aura_provider_retry_budget{",
        "aura_provider_retry_budget_rejections_total",
        "aura_provider_bulkhead_rejections_total",
        "aura_provider_running",
        "aura_provider_queued",
        "histogram_quantile(0.5, sum by (le, service) (rate(aura_service_latency_seconds_bucket",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "aura_sagas_ended_total",
        "aura_actor_restarts_total",
        "aura_supervisor_gave_up_total",
        "aura_alerts_active",
        'ALERTS{alertname=~"Aura.*"',
    ):
        assert needed in queries, needed


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel's query (Grafana's variables filled in), as the recording
    rules of a scratch rules file."""
    board = dashboard()
    exprs = [
        target["expr"]
        for p in board["panels"]
        for target in p.get("targets", ())
        if target.get("expr")
    ]
    assert len(exprs) > 20
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        filled = (
            expr.replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$service", ".*")
        )
        assert "$" not in filled, expr
        rules += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(filled)}"]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text("\n".join(rules) + "\n")
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


# ================================================================================ drift


async def _llm(payload: Any) -> Any:
    if payload == "fail":
        raise ConnectionError("connection reset by peer")
    return {"text": "ok"}


async def exported_names() -> set[str]:
    """The metric names a real /metrics exports, from a tree with providers that succeeded,
    failed and retried, a saga coordinator that finished a saga, and the admin API showing a
    fleet member (whose store is down: nothing listens on its port)."""
    async with open_fleet(FleetSettings(redis_url="redis://127.0.0.1:1/0")) as fleet:
        return await _exported_names(fleet)


async def _exported_names(fleet: Fleet) -> set[str]:
    settings = ProviderSettings(
        retry=RetrySettings(max_attempts=2, backoff=BackoffSettings(base_delay=0.001)),
        breaker=BreakerSettings(failure_threshold=3),
    )
    checkout = SagaDefinition(
        "checkout", [SagaStep("draft", "providers/openai", action=lambda ctx: ctx.input)]
    )
    tree = SupervisorSpec(
        "app",
        [
            ChildSpec("monitor", lambda: MonitorActor(MonitorSettings())),
            SupervisorSpec(
                "providers",
                [
                    ChildSpec(
                        "openai",
                        lambda: ProviderActor(
                            "openai", _llm, settings, monitor="monitor", report_interval=0.01
                        ),
                    )
                ],
            ),
            ChildSpec("sagas", lambda: SagaCoordinator(MemoryJournal(), [checkout])),
            admin_spec(port=0, fleet=fleet),
        ],
    )
    async with open_supervisor(tree) as root:
        root.add_listener(root.ref("monitor").tell_nowait)
        await root.ref("sagas").ask(StartSaga("checkout", "hello"), timeout=5)
        provider = root.ref("providers/openai")
        for payload in ("ok", "fail", "ok", "fail", "fail", "fail"):
            try:
                await provider.ask(Call(payload), timeout=5)
            except AuraError:
                pass
        url = (await root.ref("admin").ask(GetAdminAddress())).url
        async with httpx.AsyncClient(base_url=url) as client:
            text = (await client.get("/metrics")).text
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def test_every_metric_the_dashboard_and_the_rules_use_is_exported() -> None:
    """The dashboard's queries, the rules and the rules' unit tests name only metrics that
    /metrics exports (ALERTS, Prometheus's own series of firing alerts, aside)."""
    exported = await exported_names()
    used = {
        "the Grafana dashboard": dashboard_names(),
        "the alerting rules": rule_names(),
        "the rules' unit tests": rule_test_names(),
    }
    for where, names in used.items():
        assert names, where
        missing = sorted(names - exported)
        assert not missing, f"metrics named by {where} that /metrics does not export: {missing}"
    assert all(re.fullmatch("Aura.*", name) for name in alert_names())
