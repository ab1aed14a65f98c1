"""Fuzz the monitor in a real tree against a brute-force reference, through restarts.

Each run draws a plan from its seed and plays it in virtual time under a seeded trio schedule
(:func:`tests.trio_seeds.run_seeded`): three provider actors call scripted services (successes,
network failures, timeouts, validation errors, slow calls cut short), and between the calls
time passes, providers crash, are restarted, isolated, reset, terminated and added again, the
monitor crashes and is restarted, services are reset and alerts acknowledged.

The monitor's state is observed, never changed: a subclass logs every input it is given (report
batches, supervision reports, periodic checks, resets, acknowledgements) with the ``now`` it was
given, and :class:`Reference` replays that log with the plainest possible arithmetic: lists of
reports scanned in full for every window, no rings, no running sums.  At each quiet point
(every call answered, every report flushed) the monitor's answers must equal the reference's:

* windows (calls, errors) and counters of every service, and error rates over random windows;
* breaker states, transitions and trips; the active alerts (id, rule, subject, acknowledged);
* health per service and overall.

And against the ground truth, whatever restarts happened:

* the monitor counted every attempt each service saw, exactly once;
* the monitor's breaker state is the provider's own (closed once the provider is removed);
* every exported counter is at least what it was at the previous scrape (provider counters
  while the provider keeps its slot), and every alert event reached the subscriber with the
  next sequence number.

CI runs a fixed seed set; ``pytest --long`` runs 500 seeds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from actors import (
    Actor,
    ActorError,
    AuraError,
    BreakerSettings,
    Isolate,
    ProviderActor,
    ProviderSettings,
    Reset,
    RetrySettings,
    chaos,
)
from actors._monitor._actor import (
    AcknowledgeAlert,
    GetAlerts,
    GetBreakers,
    GetErrorRate,
    GetHealth,
    GetMetrics,
    GetMonitorStatistics,
    MonitorActor,
    ResetService,
    SubscribeAlerts,
    _Kept,
)
from actors._monitor._alerts import EVENT_RULES, AlertEvent, AlertRule
from actors._monitor._state import MonitorState
from actors._monitor._types import HealthStatus
from actors._policies._config._monitoring import MonitorSettings
from actors._protocol import BreakerReport, CallReport, SupervisionReport
from actors._provider._client import Provider
from supervisors import ChildSpec, Supervisor, SupervisorSpec, open_supervisor
from supervisors._operator._metrics import render_metrics, take_snapshot
from tests.trio_seeds import run_seeded

CI_SEEDS = 30
LONG_SEEDS = 500
STEPS = 50

SETTINGS = MonitorSettings(
    window=60.0,
    buckets=6,
    latency_buckets=3,
    check_interval=10.0,
    high_error_rate=6.0,
    critical_error_ratio=0.5,
    min_calls=3,
    resolve_factor=0.5,
    resolve_checks=2,
    recent_errors=5,
    resolved_alerts=50,
    max_services=10,
)
PROVIDER = ProviderSettings(
    retry=RetrySettings(max_attempts=1),
    breaker=BreakerSettings(failure_threshold=3, break_duration=7.0, minimum_throughput=4),
)
SERVICES = ("p0", "p1", "p2")
REPORT_INTERVAL = 0.5
RATE, RATIO, BREAKER = (
    AlertRule.HIGH_ERROR_RATE,
    AlertRule.CRITICAL_ERROR_RATIO,
    AlertRule.BREAKER_OPEN,
)


# ================================================================================ the tree


class Service:
    """A provider's service: each call's payload says how it ends and how long it takes."""

    def __init__(self) -> None:
        self.attempts = 0  # ground truth: attempts that reached the service

    async def __call__(self, payload: tuple[str, float]) -> str:
        self.attempts += 1
        outcome, latency = payload
        await trio.sleep(latency)
        if outcome == "fail":
            raise ConnectionError("connection reset by peer; token=s3cret")
        if outcome == "timeout":
            raise TimeoutError("upstream timed out")
        if outcome == "invalid":
            raise ValueError("bad request")
        return "ok"


class ObservedState(MonitorState):
    """The monitor's state, logging every input it is given (and changing nothing)."""

    def __init__(self, settings: MonitorSettings, log: list[tuple[Any, ...]]) -> None:
        super().__init__(settings)
        self.log = log
        self.inside = False

    def record(self, report: Any, now: float) -> Any:
        if not self.inside:
            self.log.append(("one", now, report))
        return super().record(report, now)

    def record_batch(self, reports: Iterable[object], now: float) -> Any:
        reports = list(reports)
        self.log.append(("batch", now, reports))
        self.inside = True
        try:
            return super().record_batch(reports, now)
        finally:
            self.inside = False

    def evaluate(self, now: float) -> Any:
        self.log.append(("evaluate", now))
        return super().evaluate(now)

    def reset(self, service: str, now: float) -> Any:
        self.log.append(("reset", now, service))
        return super().reset(service, now)

    def acknowledge(self, alert_id: int, now: float) -> Any:
        self.log.append(("acknowledge", now, alert_id))
        return super().acknowledge(alert_id, now)


class ObservedMonitor(MonitorActor):
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        super().__init__(SETTINGS)
        # Each incarnation builds one; the first one's stays in the slot (the others go unused).
        self.state = ObservedState(SETTINGS, log)
        self._kept = _Kept(self.state)
        self._subscribers = self._kept.subscribers


class Events(Actor[Any, Any]):
    def __init__(self, seen: list[AlertEvent]) -> None:
        self.seen = seen

    async def handle(self, message: Any) -> Any:
        self.seen.append(message)
        return None


# ================================================================================ the reference


def bucket(t: float) -> int:
    return int(t // SETTINGS.bucket_width)


def span(whole: int, now: float) -> float:
    """The monitor's one definition: the current bucket's elapsed part plus whole buckets."""
    width = SETTINGS.bucket_width
    k_start = int(now // width) * width
    seconds = whole * width + min(width, max(0.0, now - k_start))
    return seconds if seconds > 0.0 else width


class Reference:
    """The monitor, replayed from its input log with lists and full scans."""

    def __init__(self) -> None:
        self.services: list[str] = []  # in the order first seen
        self.reports: dict[str, list[tuple[float, bool]]] = {}  # since the last reset
        self.totals: dict[str, list[int]] = {}  # calls, errors
        self.breaker: dict[str, str] = {}
        self.path: dict[str, str] = {}
        self.transitions: dict[str, list[int]] = {}  # transitions, trips
        self.active: dict[tuple[AlertRule, str], list[Any]] = {}  # id, acknowledged
        self.streak: dict[tuple[AlertRule, str], int] = {}
        self.next_id = 1
        self.done = 0  # log entries replayed

    # ------------------------------------------------------------------ windows

    def window(self, service: str, now: float, slots: int = SETTINGS.buckets) -> tuple[int, int]:
        k = bucket(now)
        live = [ok for at, ok in self.reports[service] if k - slots < bucket(at) <= k]
        return len(live), live.count(False)

    def values(self, service: str, now: float) -> tuple[float | None, float | None]:
        calls, errors = self.window(service, now)
        if calls < SETTINGS.min_calls:
            return None, None
        return errors * 60.0 / span(SETTINGS.buckets - 1, now), errors / calls

    # ------------------------------------------------------------------ alerts

    def raise_(self, rule: AlertRule, subject: str) -> None:
        if (rule, subject) not in self.active:
            self.active[(rule, subject)] = [self.next_id, False]
            self.next_id += 1
            self.streak.pop((rule, subject), None)

    def resolve(self, rule: AlertRule, subject: str) -> None:
        self.active.pop((rule, subject), None)
        self.streak.pop((rule, subject), None)

    # ------------------------------------------------------------------ replay

    def replay(self, log: list[tuple[Any, ...]]) -> None:
        for entry in log[self.done :]:
            kind, now = entry[0], entry[1]
            if kind == "batch":
                for report in entry[2]:
                    self.one(report, now)
            elif kind == "one":
                self.one(entry[2], now)
            elif kind == "evaluate":
                self.evaluate(now)
            elif kind == "reset":
                if entry[2] in self.reports:
                    self.reports[entry[2]] = []
                    self.resolve(RATE, entry[2])
                    self.resolve(RATIO, entry[2])
            elif kind == "acknowledge":
                for key, alert in self.active.items():
                    if alert[0] == entry[2]:
                        if key[0] in EVENT_RULES:
                            self.resolve(*key)
                        else:
                            alert[1] = True
                        break
        self.done = len(log)

    def see(self, service: str) -> None:
        if service not in self.reports:
            self.services.append(service)
            self.reports[service] = []
            self.totals[service] = [0, 0]
            self.breaker[service] = "closed"
            self.transitions[service] = [0, 0]

    def one(self, report: Any, now: float) -> None:
        if isinstance(report, CallReport):
            self.see(report.service)
            self.reports[report.service].append((report.at, report.ok))
            self.totals[report.service][0] += 1
            if not report.ok:
                self.totals[report.service][1] += 1
                self.intake(report.service, now)
        elif isinstance(report, BreakerReport):
            self.breaker_report(report)
        elif isinstance(report, SupervisionReport):
            self.supervision(report)

    def intake(self, service: str, now: float) -> None:
        rate, ratio = self.values(service, now)
        if rate is not None and rate >= SETTINGS.high_error_rate:
            self.raise_(RATE, service)
        if ratio is not None and ratio >= SETTINGS.critical_error_ratio:
            self.raise_(RATIO, service)

    def breaker_report(self, r: BreakerReport) -> None:
        self.see(r.service)
        if r.path:
            self.path[r.service] = r.path
        if r.old == r.new:
            if self.breaker[r.service] == r.new:
                return
        else:
            self.transitions[r.service][0] += 1
            self.transitions[r.service][1] += r.new == "open"
        self.breaker[r.service] = r.new
        if r.new in ("open", "isolated"):
            self.raise_(BREAKER, r.service)
        elif r.new == "closed":
            self.resolve(BREAKER, r.service)

    def supervision(self, r: SupervisionReport) -> None:
        if r.kind != "stopped":
            return  # gave_up never happens here: nothing else changes alerts
        for service, path in list(self.path.items()):
            if path and (path == r.path or path.startswith(r.path + "/")):
                self.path[service] = ""
                self.breaker[service] = "closed"
                self.resolve(BREAKER, service)

    def evaluate(self, now: float) -> None:
        for service in self.services:
            rate, ratio = self.values(service, now)
            for rule, value, threshold in (
                (RATE, rate, SETTINGS.high_error_rate),
                (RATIO, ratio, SETTINGS.critical_error_ratio),
            ):
                key = (rule, service)
                if value is None:
                    continue
                if value >= threshold:
                    if key in self.active:
                        self.streak[key] = 0
                    else:
                        self.raise_(rule, service)
                elif key in self.active:
                    if value >= threshold * SETTINGS.resolve_factor:
                        self.streak[key] = 0
                    else:
                        self.streak[key] = self.streak.get(key, 0) + 1
                        if self.streak[key] >= SETTINGS.resolve_checks:
                            self.resolve(rule, service)

    # ------------------------------------------------------------------ health

    def health(self, now: float) -> tuple[HealthStatus, dict[str, HealthStatus]]:
        per: dict[str, HealthStatus] = {}
        for service in self.services:
            status = HealthStatus.HEALTHY
            state = self.breaker[service]
            if state in ("open", "isolated") or (RATIO, service) in self.active:
                status = HealthStatus.UNHEALTHY
            elif state == "half_open" or (RATE, service) in self.active:
                status = HealthStatus.DEGRADED
            elif self.window(service, now)[0] < SETTINGS.min_calls:
                status = HealthStatus.UNKNOWN
            per[service] = status
        statuses = list(per.values())
        if statuses and all(s is HealthStatus.UNHEALTHY for s in statuses):
            overall = HealthStatus.UNHEALTHY
        elif any(s in (HealthStatus.UNHEALTHY, HealthStatus.DEGRADED) for s in statuses):
            overall = HealthStatus.DEGRADED
        elif all(s is HealthStatus.UNKNOWN for s in statuses):
            overall = HealthStatus.UNKNOWN
        else:
            overall = HealthStatus.HEALTHY
        return overall, per


# ================================================================================ one run


class Run:
    def __init__(self, seed: int, root: Supervisor, log: list[tuple[Any, ...]]) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.root = root
        self.log = log
        self.ref = Reference()
        self.services = {name: Service() for name in SERVICES}
        self.present = set(SERVICES)  # providers in the tree
        self.slot = dict.fromkeys(SERVICES, 0)  # bumped when a provider gets a new slot
        self.in_flight = 0
        self.idle = trio.Event()
        self.idle.set()
        self.events: list[AlertEvent] = []
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.counter_slot: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    def where(self) -> str:
        return f"seed {self.seed} at t={trio.current_time():.3f}"

    def provider(self, name: str) -> Provider[Any, Any]:
        return Provider(self.root.ref(f"providers/{name}"))

    def spawn_call(self, nursery: trio.Nursery, name: str, outcome: str, latency: float) -> None:
        # Counted before the task starts, so settle() never misses a call not yet started.
        self.in_flight += 1
        if self.in_flight == 1:
            self.idle = trio.Event()
        nursery.start_soon(self.call, name, outcome, latency)

    async def call(self, name: str, outcome: str, latency: float) -> None:
        try:
            await self.provider(name).call((outcome, latency), timeout=60.0)
        except AuraError:
            pass  # failures, open breakers, restarts: the caller is answered
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    # ------------------------------------------------------------------ the plan

    async def step(self, nursery: trio.Nursery) -> None:
        rng = self.rng
        present = sorted(self.present)
        roll = rng.random()
        if roll < 0.40 and present:
            name = rng.choice(present)
            outcome = rng.choices(["ok", "fail", "timeout", "invalid"], [5, 4, 1, 1])[0]
            latency = rng.choice([0.0, 0.05, 0.3, 2.0])
            for _ in range(rng.choice([1, 1, 3, 8])):
                self.spawn_call(nursery, name, outcome, latency)
            await trio.sleep(rng.choice([0.0, 0.1, 1.0]))
        elif roll < 0.55:
            await trio.sleep(rng.choice([0.2, 3.0, 9.5, 20.0, 65.0]))
        elif roll < 0.62 and present:
            handle, name = self.root.supervisor("providers"), rng.choice(present)
            await handle.terminate_child(name)
            await handle.restart_child(name)
        elif roll < 0.67 and present:
            try:
                await self.root.ref(f"providers/{rng.choice(present)}").ask("crash")
            except ActorError:
                pass
        elif roll < 0.71:
            try:
                await self.root.ref("monitor").ask("crash")
            except ActorError:
                pass
        elif roll < 0.74:
            # terminate_child discards what the monitor's mailbox holds (as a terminated
            # process's messages are gone in OTP): let it take every report first.  Restarts
            # amid traffic are the crashes above.
            await self.settle()
            await self.root.terminate_child("monitor")
            await self.root.restart_child("monitor")
        elif roll < 0.78 and present:
            message = rng.choice([Isolate(), Reset()])
            await self.root.ref(f"providers/{rng.choice(present)}").ask(message)
        elif roll < 0.82:
            service = rng.choice(SERVICES)
            try:
                await self.root.ref("monitor").ask(ResetService(service))
            except KeyError:
                pass  # never reported yet
        elif roll < 0.88:
            alerts = (await self.root.ref("monitor").ask(GetAlerts())).active
            if alerts:
                try:
                    await self.root.ref("monitor").ask(AcknowledgeAlert(rng.choice(alerts).id))
                except KeyError:
                    pass  # resolved meanwhile (a report came in between the two asks)
        elif roll < 0.94 and present:
            # Removed for good: only when none of its calls is running (a provider stopped
            # for good has no next incarnation to report attempts cut short).
            await self.settle()
            name = rng.choice(present)
            await self.root.supervisor("providers").terminate_child(name)
            await self.root.supervisor("providers").delete_child(name)
            self.present.discard(name)
        elif set(SERVICES) - self.present:
            name = rng.choice(sorted(set(SERVICES) - self.present))
            await self.root.supervisor("providers").start_child(provider_spec(name, self))
            self.present.add(name)
            self.slot[name] += 1

    async def settle(self) -> None:
        """Every caller answered, every report flushed (the monitor's checks may run)."""
        await self.idle.wait()
        await trio.sleep(REPORT_INTERVAL + 0.01)
        await trio.testing.wait_all_tasks_blocked()

    # ------------------------------------------------------------------ the checks

    async def check(self) -> None:
        monitor = self.root.ref("monitor")
        now = trio.current_time()
        health = await monitor.ask(GetHealth())
        breakers = {b.service: b for b in (await monitor.ask(GetBreakers())).breakers}
        alerts = (await monitor.ask(GetAlerts())).active
        metrics = (await monitor.ask(GetMetrics())).services
        assert trio.current_time() == now
        ref = self.ref
        ref.replay(self.log)
        where = self.where()
        # Windows, counters and rates.
        assert sorted(metrics) == sorted(ref.services), where
        for service, m in metrics.items():
            calls, errors = ref.window(service, now)
            assert (m.calls, m.errors) == (calls, errors), (where, service)
            assert [m.totals.calls, m.totals.errors] == ref.totals[service], (where, service)
            assert m.enough_calls == (calls >= SETTINGS.min_calls), (where, service)
            assert m.error_rate_per_min == errors * 60.0 / span(5, now), (where, service)
            window = self.rng.choice([1.0, 5.0, 12.0, 30.0, 60.0])
            rate = await monitor.ask(GetErrorRate(service, window))
            whole = min(5, max(1, math.ceil(window / 10.0 - 1e-9)))
            expected = ref.window(service, now, whole + 1)
            assert (rate.calls, rate.errors) == expected, (where, service, window)
            assert rate.window == span(whole, now), (where, service, window)
        # Breakers and alerts.
        for service, info in breakers.items():
            assert info.state == ref.breaker[service], (where, service)
            assert [info.transitions, info.trips] == ref.transitions[service], (where, service)
        got = {(a.id, a.rule, a.service, a.acknowledged) for a in alerts}
        want = {(v[0], k[0], k[1], v[1]) for k, v in ref.active.items()}
        assert got == want, where
        # Health.
        overall, per = ref.health(now)
        assert {s: h.status for s, h in health.services.items()} == per, where
        assert health.status is overall, where
        await self.check_truth(metrics, breakers)
        await self.check_scrape()

    async def check_truth(self, metrics: dict[str, Any], breakers: dict[str, Any]) -> None:
        """Against what happened, not against the reference."""
        where = self.where()
        for name, service in self.services.items():
            reported = metrics[name].totals.calls if name in metrics else 0
            assert reported == service.attempts, (where, name, reported, service.attempts)
            if name in self.present:
                status = await self.provider(name).status()
                assert breakers[name].state == status.breaker, (where, name)
            elif name in breakers:
                assert breakers[name].state == "closed", (where, name)
        stats = await self.root.ref("monitor").ask(GetMonitorStatistics())
        assert (stats.reports_invalid, stats.reports_dropped, stats.events_dropped) == (0, 0, 0)
        assert [e.seq for e in self.events] == list(range(1, stats.alert_events + 1)), where

    async def check_scrape(self) -> None:
        """No exported counter goes down (those of a provider's slot within that slot: a
        provider removed and added again is a new actor, with new counters)."""
        snapshot = await take_snapshot(
            self.root.ref("monitor"),
            tree=self.root.snapshot(),
            providers={name: self.root.ref(f"providers/{name}") for name in self.present},
        )
        text = render_metrics(snapshot).decode()
        for family in text_string_to_metric_families(text):
            if family.type != "counter":
                continue
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                slot = -1
                if sample.name.startswith("aura_provider_"):
                    slot = self.slot[sample.labels["service"]]
                elif sample.name == "aura_actor_restarts_total":
                    name = sample.labels["path"].rpartition("/")[2]
                    slot = self.slot.get(name, -1)
                old = self.counters.get(key)
                if old is not None and self.counter_slot[key] == slot:
                    assert sample.value >= old, (self.where(), key, old, sample.value)
                self.counters[key] = sample.value
                self.counter_slot[key] = slot


def provider_spec(name: str, run: Run) -> ChildSpec[Any, Any]:
    crash = chaos.CrashInjector(rate=1.0, when=lambda message: message == "crash")
    factory = chaos.wrap_actor(
        lambda: ProviderActor(
            name,
            run.services[name],
            PROVIDER,
            monitor="monitor",
            report_interval=REPORT_INTERVAL,
        ),
        crash,
    )
    return ChildSpec(name, factory)


async def fuzz_run(seed: int) -> int:
    log: list[tuple[Any, ...]] = []
    events: list[AlertEvent] = []
    crash = chaos.CrashInjector(rate=1.0, when=lambda message: message == "crash")
    holder: dict[str, Run] = {}

    def providers() -> SupervisorSpec:
        return SupervisorSpec(
            "providers",
            [provider_spec(name, holder["run"]) for name in SERVICES],
            max_restarts=1_000_000,
            period=1.0,
        )

    tree: list[Any] = [
        ChildSpec("monitor", chaos.wrap_actor(lambda: ObservedMonitor(log), crash)),
        ChildSpec("events", lambda: Events(events), mailbox_capacity=100_000),
    ]
    root_holder: list[Supervisor] = []
    with trio.move_on_after(100_000) as guard:
        async with open_supervisor(tree, max_restarts=1_000_000, period=1.0) as root:
            root_holder.append(root)
            run = holder["run"] = Run(seed, root, log)
            run.events = events
            root.add_listener(root.ref("monitor").tell_nowait)
            await root.ref("monitor").ask(SubscribeAlerts(root.ref("events")))
            await root.start_child(providers())
            async with trio.open_nursery() as nursery:
                for _ in range(STEPS):
                    await run.step(nursery)
                    if run.rng.random() < 0.3:
                        await run.settle()
                        await run.check()
                await run.settle()
                await run.check()
    assert not guard.cancelled_caught, f"seed {seed}: the run hung"
    return len(log)


def test_monitor_against_a_brute_force_reference(long_run: bool) -> None:
    """The fixed seed set (CI) or 500 seeds (``--long``): the monitor agrees with the
    reference and with the ground truth through restarts of providers and of the monitor."""
    seeds = range(LONG_SEEDS if long_run else CI_SEEDS)
    inputs = 0
    for seed in seeds:
        inputs += run_seeded(fuzz_run, seed, seed)
    assert inputs > 50 * len(seeds)  # the runs did exercise the monitor
