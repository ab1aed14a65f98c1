"""The monitor actor: reports from providers and supervisors, queries, periodic checks."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors import Actor, ActorRef, ProviderActor, ProviderError, ProviderSettings, RetrySettings
from actors._monitor._actor import (
    AcknowledgeAlert,
    GetAlerts,
    GetBreaker,
    GetBreakers,
    GetErrorRate,
    GetHealth,
    GetMetrics,
    GetRecentErrors,
    GetServiceMetrics,
    MonitorActor,
    ResetService,
    SubscribeAlerts,
)
from actors._monitor._alerts import AlertEvent
from actors._monitor._types import UnknownService
from actors._policies._breaker import BreakerSettings
from actors._policies._config._monitoring import MonitorSettings
from actors._protocol import CallReport, DependencyReport
from actors._provider._client import Provider
from supervisors import ChildSpec, SupervisorSpec, open_supervisor


class Collector(Actor[Any, Any]):
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, message: Any) -> Any:
        if message == "events":
            return list(self.events)
        self.events.append(message)
        return None


class Failing:
    """A service that fails while `down` is set."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def __call__(self, payload: Any) -> Any:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused; api_key=sk-abcdefghijklmnopqrstuv")
        return payload


async def test_provider_reports_reach_metrics_breakers_and_alerts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A failing provider's attempts, breaker opening and alerts show up in the monitor's
    queries; secrets in error messages are redacted; health turns unhealthy then recovers."""
    service = Failing()
    settings = ProviderSettings(
        retry=RetrySettings(max_attempts=1),
        breaker=BreakerSettings(failure_threshold=3, break_duration=10.0),
    )
    tree = [
        ChildSpec("monitor", lambda: MonitorActor(MonitorSettings(check_interval=5.0))),
        ChildSpec("events", Collector),
        ChildSpec(
            "svc",
            lambda: ProviderActor("svc", service, settings, monitor="monitor", report_interval=1),
        ),
    ]
    async with open_supervisor(tree) as root:
        monitor = root.ref("monitor")
        await monitor.ask(SubscribeAlerts(root.ref("events")))
        p: Provider[Any, Any] = Provider(root.ref("svc"))
        for _ in range(3):
            with pytest.raises(ProviderError):
                await p.call("x")
        await trio.sleep(1.5)  # a report flush
        metrics = await monitor.ask(GetServiceMetrics("svc"))
        assert metrics.totals.calls == 3
        assert metrics.totals.errors == 3
        breaker = await monitor.ask(GetBreaker("svc"))
        assert breaker.state == "open"
        health = await monitor.ask(GetHealth())
        assert health.status.value in ("degraded", "unhealthy")
        errors = await monitor.ask(GetRecentErrors(limit=10))
        assert errors.total == 3
        assert all("sk-abcdef" not in e.message for e in errors.items)
        alerts = await monitor.ask(GetAlerts())
        assert "breaker_open" in {a.rule.value for a in alerts.active}
        service.down = False
        await trio.sleep(10.0)
        assert await p.call("y") == "y"
        await trio.sleep(11.0)  # flushes and two periodic checks
        breaker = await monitor.ask(GetBreaker("svc"))
        assert breaker.state == "closed"
        events = await root.ref("events").ask("events")
        kinds = [(e.kind, e.alert.rule.value) for e in events if isinstance(e, AlertEvent)]
        assert ("raised", "breaker_open") in kinds
        assert ("resolved", "breaker_open") in kinds


async def test_queries_and_bad_input(mock_clock: trio.testing.MockClock) -> None:
    """Every query answers; unknown services and bad windows are typed errors; the actor
    survives messages of the wrong type."""
    async with open_supervisor([ChildSpec("monitor", MonitorActor)]) as root:
        monitor = root.ref("monitor")
        now = trio.current_time()
        monitor.tell_nowait([CallReport("a", True, 0.01, now), CallReport("a", False, 0.2, now)])
        monitor.tell_nowait(["not a report", 42])
        await trio.testing.wait_all_tasks_blocked()
        assert (await monitor.ask(GetMetrics())).services
        breakers = (await monitor.ask(GetBreakers())).breakers
        assert [(b.service, b.state) for b in breakers] == [("a", "closed")]
        rate = await monitor.ask(GetErrorRate("a", 60.0))
        assert (rate.calls, rate.errors) == (2, 1)
        with pytest.raises(UnknownService):
            await monitor.ask(GetServiceMetrics("nope"))
        with pytest.raises(ValueError, match="window"):
            await monitor.ask(GetErrorRate("a", -1.0))
        with pytest.raises(TypeError, match="accepts reports"):
            await monitor.ask("what is this")
        with pytest.raises(KeyError):
            await monitor.ask(AcknowledgeAlert(12345))
        reset = await monitor.ask(ResetService("a"))
        assert (reset.calls, reset.totals.calls) == (0, 2)  # the windows go, the counters stay
        assert monitor.statistics().incarnation == 1
        encoded = msgspec.json.encode(await monitor.ask(GetHealth()))
        assert b"status" in encoded


async def test_a_dependency_report_reaches_health(mock_clock: trio.testing.MockClock) -> None:
    """A DependencyReport told to the monitor shows in health; a bad one asked is refused."""
    async with open_supervisor([ChildSpec("monitor", MonitorActor)]) as root:
        monitor = root.ref("monitor")
        monitor.tell_nowait(DependencyReport("saga journal", "unavailable", "refused", "pg"))
        await trio.testing.wait_all_tasks_blocked()
        health = await monitor.ask(GetHealth())
        assert health.status.value == "degraded"
        assert health.reasons[-1] == "saga journal unavailable: refused"
        with pytest.raises(ValueError, match="status"):
            await monitor.ask(DependencyReport("saga journal", "grumpy"))


async def test_supervision_and_saga_reports_raise_alerts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A supervisor giving up and a saga that could not be compensated raise alerts."""

    class Crasher(Actor[Any, Any]):
        async def handle(self, message: Any) -> Any:
            raise RuntimeError("boom")

    class SagaReport(msgspec.Struct, frozen=True):
        saga_id: str
        definition: str
        status: str
        step: int | None
        detail: str
        at: float

    sub = SupervisorSpec("sub", [ChildSpec("c", Crasher)], max_restarts=0)
    async with open_supervisor([ChildSpec("monitor", MonitorActor), sub]) as root:
        monitor: ActorRef[Any, Any] = root.ref("monitor")
        root.add_listener(monitor.tell_nowait)
        with pytest.raises(Exception, match="crashed"):
            await root.ref("sub/c").ask("x")
        monitor.tell_nowait(SagaReport("s-1", "video", "compensation_failed", 2, "render", 0.0))
        await trio.testing.wait_all_tasks_blocked()
        listing = await monitor.ask(GetAlerts(include_resolved=True))
        active = {a.rule.value for a in listing.active}
        resolved = {a.rule.value for a in listing.resolved}
        assert "saga_compensation_failed" in active  # until an operator acknowledges it
        assert "supervisor_gave_up" in resolved  # the root restarted the subtree
