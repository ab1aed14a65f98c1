"""The monitor and the providers' reporting through restarts, terminations and overloads."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Actor,
    ActorError,
    BreakerSettings,
    ProviderActor,
    ProviderError,
    ProviderSettings,
    RetrySettings,
    chaos,
    open_actor,
)
from actors._monitor._actor import (
    AcknowledgeAlerts,
    GetAlerts,
    GetBreaker,
    GetErrorRate,
    GetHealth,
    GetMetrics,
    GetMonitorStatistics,
    GetServiceMetrics,
    MonitorActor,
    SubscribeAlerts,
)
from actors._monitor._alerts import AlertEvent
from actors._monitor._types import HealthStatus
from actors._policies._config._monitoring import MonitorSettings
from actors._protocol import BreakerReport, CallReport
from actors._provider._client import Provider
from supervisors import ChildSpec, open_supervisor


class Switch:
    """A service that fails while `down` is set."""

    def __init__(self, down: bool = True) -> None:
        self.down = down
        self.calls = 0

    async def __call__(self, payload: Any) -> Any:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        return payload


class Collector(Actor[Any, Any]):
    """Keeps every message it is told; answers "seen" with them."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def handle(self, message: Any) -> Any:
        if message == "seen":
            return list(self.seen)
        self.seen.append(message)
        return None


def breaker_settings(**kw: Any) -> ProviderSettings:
    return ProviderSettings(
        retry=RetrySettings(max_attempts=1),
        breaker=BreakerSettings(failure_threshold=3, break_duration=10.0, **kw),
    )


async def fail_until_open(p: Provider[Any, Any], n: int = 3) -> None:
    for _ in range(n):
        with pytest.raises(ProviderError):
            await p.call("x")


def crashing(factory: Any) -> tuple[Any, chaos.CrashInjector]:
    """A factory whose actors crash on the message "crash"."""
    crash = chaos.CrashInjector(rate=1.0, when=lambda message: message == "crash")
    return chaos.wrap_actor(factory, crash), crash


# ================================================================================ monitor restarts


@pytest.mark.parametrize("how", ["crash", "restart"])
async def test_monitor_restart_keeps_its_state_alerts_and_subscribers(
    mock_clock: trio.testing.MockClock, how: str
) -> None:
    """A monitor that crashes or is restarted keeps its services, windows, counters, breaker
    states, alerts (a failed-saga alert stays until acknowledged) and subscribers."""
    factory, _ = crashing(lambda: MonitorActor(MonitorSettings(min_calls=1)))
    events: list[Any] = []
    tree = [ChildSpec("monitor", factory), ChildSpec("events", lambda: Collector(events))]
    async with open_supervisor(tree) as root:
        monitor = root.ref("monitor")
        await monitor.ask(SubscribeAlerts(root.ref("events")))
        now = trio.current_time()
        monitor.tell_nowait([CallReport("a", True, 0.1, now), CallReport("a", False, 0.1, now)])
        monitor.tell_nowait(BreakerReport("a", "closed", "open", now))

        class SagaReport:
            saga_id = "s-1"
            definition = "video"
            status = "compensation_failed"
            detail = "render"

        monitor.tell_nowait(SagaReport())
        await trio.testing.wait_all_tasks_blocked()
        before = (
            await monitor.ask(GetServiceMetrics("a")),
            await monitor.ask(GetBreaker("a")),
            await monitor.ask(GetAlerts()),
        )
        assert {a.rule.value for a in before[2].active} == {
            "breaker_open",
            "critical_error_ratio",
            "saga_compensation_failed",
        }
        if how == "crash":
            with pytest.raises(ActorError):
                await monitor.ask("crash")
        else:
            await root.terminate_child("monitor")
            await root.restart_child("monitor")
        await trio.testing.wait_all_tasks_blocked()
        assert monitor.statistics().incarnation == 2
        after = (
            await monitor.ask(GetServiceMetrics("a")),
            await monitor.ask(GetBreaker("a")),
            await monitor.ask(GetAlerts()),
        )
        assert after == before
        # The subscription survived: the next event reaches the collector, numbered on.
        monitor.tell_nowait(BreakerReport("a", "open", "closed", trio.current_time()))
        await trio.testing.wait_all_tasks_blocked()
        published = [e for e in events if isinstance(e, AlertEvent)]
        assert published[-1].kind == "resolved"
        assert [e.seq for e in published] == list(range(1, len(published) + 1))


# ================================================================================ provider restarts


@pytest.mark.parametrize("how", ["crash", "restart"])
async def test_provider_restart_keeps_its_breaker_and_the_monitor_agrees(
    mock_clock: trio.testing.MockClock, how: str
) -> None:
    """A provider keeps its breaker through a crash or a restart (an open breaker stays open)
    and reports its state as it starts; once it closes after good calls, the monitor says
    closed too, health is not unhealthy and the breaker alert is resolved."""
    service = Switch()
    factory, _ = crashing(
        lambda: ProviderActor("svc", service, breaker_settings(), monitor="monitor")
    )
    tree = [ChildSpec("monitor", MonitorActor), ChildSpec("svc", factory)]
    async with open_supervisor(tree) as root:
        monitor = root.ref("monitor")
        p: Provider[Any, Any] = Provider(root.ref("svc"))
        await fail_until_open(p)
        await trio.testing.wait_all_tasks_blocked()
        assert (await monitor.ask(GetBreaker("svc"))).state == "open"
        if how == "crash":
            with pytest.raises(ActorError):
                await root.ref("svc").ask("crash")
        else:
            await root.terminate_child("svc")
            await root.restart_child("svc")
        await trio.testing.wait_all_tasks_blocked()
        assert root.ref("svc").statistics().incarnation == 2
        assert (await p.status()).breaker == "open"  # a restart does not heal the service
        assert (await monitor.ask(GetBreaker("svc"))).state == "open"
        service.down = False
        await trio.sleep(10.0)  # the break ends
        for i in range(100):
            assert await p.call(i) == i
        await trio.sleep(1.0)  # a report flush
        assert (await p.status()).breaker == "closed"
        assert (await monitor.ask(GetBreaker("svc"))).state == "closed"
        health = await monitor.ask(GetHealth())
        assert health.services["svc"].status is HealthStatus.HEALTHY
        alerts = await monitor.ask(GetAlerts(include_resolved=True))
        assert [a.rule.value for a in alerts.active] == []
        assert [a.resolution for a in alerts.resolved] == ["breaker_closed"]


async def test_a_fresh_breaker_corrects_the_monitor_at_start(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An incarnation built with other breaker settings starts with a fresh, closed breaker;
    its start-up state report closes the monitor's copy at once."""
    service = Switch()
    built: list[ProviderSettings] = []

    def factory() -> ProviderActor:
        config = breaker_settings(minimum_throughput=10 + len(built))
        built.append(config)
        return ProviderActor("svc", service, config, monitor="monitor")

    tree = [ChildSpec("monitor", MonitorActor), ChildSpec("svc", factory)]
    async with open_supervisor(tree) as root:
        monitor = root.ref("monitor")
        p: Provider[Any, Any] = Provider(root.ref("svc"))
        await fail_until_open(p)
        await trio.testing.wait_all_tasks_blocked()
        assert (await monitor.ask(GetBreaker("svc"))).state == "open"
        await root.terminate_child("svc")
        await root.restart_child("svc")
        await trio.testing.wait_all_tasks_blocked()
        assert (await p.status()).breaker == "closed"
        info = await monitor.ask(GetBreaker("svc"))
        assert (info.state, info.transitions, info.trips) == ("closed", 1, 1)
        assert (await monitor.ask(GetAlerts())).active == []


async def test_a_terminated_provider_leaves_no_open_breaker_behind(
    mock_clock: trio.testing.MockClock,
) -> None:
    """terminate_child on a provider whose breaker is open: the monitor forgets the breaker
    (closed) and resolves its alert as stopped, so health is not held unhealthy forever."""
    service = Switch()
    tree = [
        ChildSpec("monitor", MonitorActor),
        ChildSpec(
            "svc", lambda: ProviderActor("svc", service, breaker_settings(), monitor="monitor")
        ),
        ChildSpec("other", lambda: ProviderActor("other", Switch(False), monitor="monitor")),
    ]
    async with open_supervisor(tree) as root:
        monitor = root.ref("monitor")
        root.add_listener(monitor.tell_nowait)
        await fail_until_open(Provider(root.ref("svc")))
        await trio.testing.wait_all_tasks_blocked()
        assert (await monitor.ask(GetBreaker("svc"))).state == "open"
        await root.terminate_child("svc")
        await trio.testing.wait_all_tasks_blocked()
        assert (await monitor.ask(GetBreaker("svc"))).state == "closed"
        alerts = await monitor.ask(GetAlerts(include_resolved=True))
        assert alerts.active == []
        assert [(a.service, a.resolution) for a in alerts.resolved] == [("svc", "stopped")]
        health = await monitor.ask(GetHealth())
        assert health.services["svc"].status is not HealthStatus.UNHEALTHY


async def test_provider_counters_count_through_restarts(mock_clock: trio.testing.MockClock) -> None:
    """The counters behind ProviderStatus (and aura_provider_*_total) belong to the slot."""
    service = Switch(down=False)
    factory, _ = crashing(lambda: ProviderActor("svc", service))
    async with open_supervisor([ChildSpec("svc", factory)]) as root:
        p: Provider[Any, Any] = Provider(root.ref("svc"))
        for i in range(5):
            await p.call(i)
        await root.terminate_child("svc")
        await root.restart_child("svc")
        with pytest.raises(ActorError):
            await root.ref("svc").ask("crash")
        for i in range(2):
            await p.call(i)
        status = await p.status()
        assert (status.calls, status.succeeded, status.attempts) == (7, 7, 7)


# ============================================================================ order, overflow


async def test_an_attempt_is_reported_before_the_transition_it_caused(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The failure that trips the breaker is reported before the BreakerReport, and the probe
    that closes it before the closing one."""
    seen: list[Any] = []
    service = Switch()
    async with (
        open_actor(lambda: Collector(seen), name="collector") as collector,
        open_actor(
            lambda: ProviderActor("svc", service, breaker_settings(), monitor=collector),
            name="svc",
        ) as ref,
    ):
        p: Provider[Any, Any] = Provider(ref)
        await fail_until_open(p)
        await trio.sleep(10.0)
        service.down = False
        await p.call("probe")
        await trio.sleep(1.0)
    flat = [r for batch in seen for r in batch]
    kinds = [
        ("call", r.ok) if isinstance(r, CallReport) else ("breaker", r.old, r.new) for r in flat
    ]
    assert kinds == [
        ("breaker", "closed", "closed"),  # the start-up state report
        ("call", False),
        ("call", False),
        ("call", False),
        ("breaker", "closed", "open"),
        ("breaker", "open", "half_open"),
        ("call", True),
        ("breaker", "half_open", "closed"),
    ]


async def test_report_overflow_never_drops_a_breaker_transition(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With the monitor unable to take reports, the oldest call reports are dropped beyond
    max_pending_reports, but every breaker transition is kept and delivered in order."""
    seen: list[Any] = []
    gate = trio.Event()

    class Gated(Collector):
        async def handle(self, message: Any) -> Any:
            if message == "block":
                await gate.wait()
                return None
            return await super().handle(message)

    service = Switch()
    async with open_actor(lambda: Gated(seen), name="monitor", capacity=1) as monitor:
        monitor.tell_nowait("block")
        await trio.testing.wait_all_tasks_blocked()
        monitor.tell_nowait("fill")  # the mailbox is full
        async with open_actor(
            lambda: ProviderActor(
                "svc", service, breaker_settings(), monitor=monitor, max_pending_reports=5
            ),
            name="svc",
        ) as ref:
            p: Provider[Any, Any] = Provider(ref)
            await fail_until_open(p)
            await trio.sleep(10.0)
            service.down = False
            for i in range(21):
                await p.call(i)
            await trio.sleep(1.0)  # a flush attempt fails: the buffer is trimmed
            status = await p.status()
            # 1 state report + 3 failures + open + half_open + 21 successes + closed = 28.
            assert status.reports_dropped == 28 - 5
            gate.set()
            await trio.sleep(1.0)
    flat = [r for batch in seen if isinstance(batch, list) for r in batch]
    transitions = [(r.old, r.new) for r in flat if isinstance(r, BreakerReport)]
    assert transitions == [
        ("closed", "closed"),
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert [type(r).__name__ for r in flat].count("CallReport") == 1  # the newest one


# ========================================================================= statistics, queries


async def test_monitor_statistics_count_what_was_lost(mock_clock: trio.testing.MockClock) -> None:
    """GetMonitorStatistics reports what the monitor dropped, events a subscriber missed
    included; the counts survive a restart of the monitor."""
    async with open_supervisor(
        [
            ChildSpec("monitor", lambda: MonitorActor(MonitorSettings(max_services=1))),
            ChildSpec("slow", lambda: Collector([]), mailbox_capacity=1),
        ]
    ) as root:
        monitor = root.ref("monitor")
        await monitor.ask(SubscribeAlerts(root.ref("slow")))
        now = trio.current_time()
        monitor.tell_nowait([CallReport("a", True, 0.1, now), "junk"])
        monitor.tell_nowait([CallReport("b", True, 0.1, now)])  # "a" is busy: dropped
        for service in ("a", "a"):  # two events at once: the slow subscriber misses one
            monitor.tell_nowait(BreakerReport(service, "closed", "open", now))
            monitor.tell_nowait(BreakerReport(service, "open", "closed", now))
        await trio.testing.wait_all_tasks_blocked()
        stats = await monitor.ask(GetMonitorStatistics())
        assert (stats.reports_invalid, stats.reports_dropped) == (1, 1)
        assert stats.events_dropped >= 1
        await root.terminate_child("monitor")
        await root.restart_child("monitor")
        assert await monitor.ask(GetMonitorStatistics()) == stats


async def test_error_rate_defaults_to_the_monitors_window(
    mock_clock: trio.testing.MockClock,
) -> None:
    """GetErrorRate without a window answers the rate the monitor's metrics and alerts use."""
    async with open_actor(MonitorActor) as monitor:
        now = trio.current_time()
        monitor.tell_nowait([CallReport("a", False, 0.1, now) for _ in range(30)])
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(7.0)
        rate = await monitor.ask(GetErrorRate("a"))
        metrics = await monitor.ask(GetServiceMetrics("a"))
        assert rate.rate_per_min == metrics.error_rate_per_min
        assert rate.window == pytest.approx(295.0 + 2.0)


async def test_metrics_of_many_services_are_answered_in_slices(
    mock_clock: trio.testing.MockClock,
) -> None:
    """GetMetrics over many services is computed a slice at a time (the monitor's loop yields
    between slices) and equals the metrics computed in one go."""
    steps: list[str] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith(":metrics"):
                steps.append(task.name)

    built: list[MonitorActor] = []

    def factory() -> MonitorActor:
        built.append(MonitorActor())
        return built[-1]

    async with open_actor(factory, name="monitor") as monitor:
        now = trio.current_time()
        monitor.tell_nowait([CallReport(f"s{i:03d}", i % 3 > 0, 0.1, now) for i in range(100)])
        await trio.testing.wait_all_tasks_blocked()
        instrument = Steps()
        trio.lowlevel.add_instrument(instrument)
        try:
            report = await monitor.ask(GetMetrics())
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert report == built[0].state.metrics(trio.current_time())
        assert len(steps) >= 4  # 100 services, 25 a slice


async def test_acknowledge_alerts_in_bulk(mock_clock: trio.testing.MockClock) -> None:
    """AcknowledgeAlerts acknowledges every matching alert and publishes each event."""
    async with open_actor(MonitorActor) as monitor:
        now = trio.current_time()
        for service in ("a", "b"):
            monitor.tell_nowait(BreakerReport(service, "closed", "open", now))
        await trio.testing.wait_all_tasks_blocked()
        events = await monitor.ask(AcknowledgeAlerts(rule="breaker_open"))
        assert [(e.kind, e.alert.service) for e in events] == [
            ("acknowledged", "a"),
            ("acknowledged", "b"),
        ]
        with pytest.raises(ValueError, match="rule"):
            await monitor.ask(AcknowledgeAlerts(rule="no_such_rule"))


async def test_an_idle_provider_does_not_wake_up(mock_clock: trio.testing.MockClock) -> None:
    """A provider with nothing to report, no open breaker and no records to expire sleeps:
    its housekeeping task is not scheduled during an idle hour."""
    steps: list[str] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith(":housekeeping"):
                steps.append(task.name)

    async with (
        open_actor(MonitorActor, name="monitor") as monitor,
        open_actor(lambda: ProviderActor("svc", Switch(False), monitor=monitor), name="svc") as ref,
    ):
        await Provider(ref).call(1)
        await trio.sleep(5.0)  # the report goes out
        instrument = Steps()
        trio.lowlevel.add_instrument(instrument)
        try:
            await trio.sleep(3600.0)
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert steps == []
        metrics = await monitor.ask(GetServiceMetrics("svc"))
        assert metrics.totals.calls == 1
