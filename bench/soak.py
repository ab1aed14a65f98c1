"""The reliability suite: a supervision tree under mixed load with every chaos injector on.

Run it with ``python -m bench.soak --seconds N --seed S [--journal memory|sqlite] [--json FILE]``.
It exits 0 when every invariant held, 1 otherwise.  ``--journal postgres --instances N
[--kill-instances]`` runs N instances of this tree as a fleet sharing a PostgreSQL journal and
a Redis store, killing and restarting them (``bench/_soak_fleet.py``).

Theory of operation
-------------------
The tree (real clock, no MockClock)::

    soak (one_for_one, 1000 restarts/s: the root must never give up)
    ├── monitor           MonitorActor: every provider's reports, supervision events, sagas
    ├── providers         one_for_one
    │   ├── llm, search, render   keyed and unkeyed load; faults, latency, outcomes, behaviours
    │   ├── payments      the sagas' charge / refund / ship steps (keys from the sagas)
    │   └── flaky         unkeyed load; its actor crashes while handling and at start
    ├── fragile           max 2 restarts per second: gives up now and then (an escalation)
    │   ├── inventory     the sagas' reserve / release steps; crashes; poisoned releases
    │   └── ledger        receives tells; crashes while handling
    └── sagas             SagaCoordinator over a journal; crashes while handling and at start

Every service function is a fake backend (ground truth: requests, effects per key) wrapped
with chaos injectors: latency (short, and spikes past the attempt timeout), transient faults
(network, timeout, 429 with Retry-After, 503), substitute outcomes, and a behaviour that
restarts the ledger like an operator would.  Callers run for ``--seconds``: provider calls
(half with idempotency keys from a bounded key space, so duplicates happen, half without),
sagas (with ``wait`` true and false, and short timeouts that cancel some), status asks that
crash ``flaky`` at a rate, tells to the ledger, and monitor queries.

Then the drain: callers stop, every injector is switched off, and the suite waits until every
saga has finished and been audited.  Invariants checked at the end:

1. every ask ended with exactly one outcome (none twice, none pending, no untyped error);
2. no ask outlived its deadline by more than :data:`TOLERANCE` (the timer task and the asking
   task each need a scheduler pass after the deadline, and the machine is shared: a pass can
   wait behind other runnable tasks or a garbage collection, the warm-up sample's included);
3. each idempotency key took effect at most once (the backends count effects per key);
4. every saga completed or was compensated with its effects undone; ``compensation_failed``
   only where an injected failure (a poisoned release) explains it, listed for an operator
   and then discarded from the journal as an operator would; none unfinished after the drain;
5. the monitor's attempt totals equal what the backends saw, for every provider, ``flaky``
   included: its unsent reports and the attempts it was running when it crashed are reported
   by its next incarnation;
6. every tell to the ledger was handled, except the one message lost to each injected crash
   and those an operator's ``terminate_child`` found queued (its slot counts them);
7. no task outlived the tree;
8. resident memory at the end is within :data:`MAX_RSS_GROWTH` percent of memory after the
   warm-up (the first 20 % of the run; ``gc.collect()`` before each sample).  The workload is
   bounded so memory cannot legitimately grow: keys per provider are fewer than the
   idempotency tables' ``max_records``, the journal keeps the last 1,000 finished sagas, the
   auditor forgets each saga's ground truth once it is verified, callers are a fixed pool.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from actors import (
    ActorError,
    ActorStopped,
    AuraError,
    BackoffSettings,
    BreakerSettings,
    BulkheadSettings,
    ErrorCategory,
    Failure,
    GetMetrics,
    GetStatus,
    IdempotencySettings,
    MemoryJournal,
    MonitorActor,
    MonitorSettings,
    Provider,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
    SqliteJournal,
    chaos,
)
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep, SagaStepMessage, StepContext
from actors._saga._journals._records import Journal
from actors._saga._messages import StartSaga
from bench._soak_truth import (
    INJECTED,
    AskBook,
    Backend,
    Inventory,
    Ledger,
    Sagas,
    Service,
    Soak,
    all_tasks,
    audit_one,
    auditor,
    sample_rss,
)
from supervisors import ChildSpec, EventKind, Supervisor, SupervisorSpec, open_supervisor

__all__ = ["AskBook", "Backend", "Result", "Sagas", "Soak", "audit_one", "main", "run"]

#: Largest allowed growth of resident memory from the warm-up sample to the end, in percent.
MAX_RSS_GROWTH: Final = 10.0
#: Keys per keyed provider (fewer than its idempotency table's max_records).
KEYS: Final = 400
KEYED: Final = ("llm", "search", "render")
SUBSTITUTE: Final = ("substitute", INJECTED)
DRAIN_LIMIT: Final = 60.0
#: Finished sagas the journal keeps: the auditor reads each one within a second of its end.
RETAIN: Final = 1000
INVARIANTS: Final = 8
#: Seconds of load an instance of a fleet needs before its memory is checked (a restarted
#: one's warm-up sample and end are too close together before that).
MIN_MEMORY_SECONDS: Final = 30.0


# ------------------------------------------------------------------------------------ the tree


def provider_settings(max_records: int) -> ProviderSettings:
    return ProviderSettings(
        breaker=BreakerSettings(failure_threshold=8, break_duration=0.5, window=10.0),
        retry=RetrySettings(
            max_attempts=3,
            attempt_timeout=0.25,
            total_timeout=3.0,
            backoff=BackoffSettings(base_delay=0.02, max_delay=0.2),
        ),
        bulkhead=BulkheadSettings(max_concurrent=32, max_queued=128),
        idempotency=IdempotencySettings(max_records=max_records),
    )


def call_injectors(soak: Soak, name: str) -> list[chaos.Injector]:
    """The chaos inside one provider's service: latency, spikes, faults, outcomes, behaviour."""

    async def restart_ledger(payload: Any) -> None:
        # An operator restarting another component while this call is made (OTP style:
        # terminate it, then start it again; tells queued meanwhile are discarded, and
        # counted by the ledger's slot).
        if soak.root is not None:
            try:
                handle = soak.root.supervisor("fragile")
                await handle.terminate_child("ledger")
                await handle.restart_child("ledger")
            except AuraError:
                pass  # the fragile subtree is restarting: nothing to restart

    chain: list[chaos.Injector] = [
        chaos.LatencyInjector(0.002, max_delay=0.03, rate=0.05, rng=soak.injector_rng(name, 1)),
        chaos.LatencyInjector(0.3, max_delay=0.6, rate=0.01, rng=soak.injector_rng(name, 2)),
        chaos.FaultInjector(
            "network",
            "timeout",
            "rate_limit",
            "dependency",
            rate=0.08,
            retry_after=0.05,
            rng=soak.injector_rng(name, 3),
        ),
    ]
    if name == "payments":
        chain.append(
            chaos.FaultInjector(
                "validation",
                rate=0.02,
                rng=soak.injector_rng(name, 4),
                when=lambda payload: payload[0] == "charge",
            )
        )
    else:
        chain.append(chaos.OutcomeInjector(SUBSTITUTE, rate=0.01, rng=soak.injector_rng(name, 5)))
    if name == "render":
        chain.append(
            chaos.BehaviourInjector(restart_ledger, rate=0.002, rng=soak.injector_rng(name, 6))
        )
    for injector in chain:
        soak.add(injector)
    return chain


def order_definition() -> SagaDefinition:
    retry = RetrySettings(
        max_attempts=6,
        retry_on=frozenset(ErrorCategory)
        - {ErrorCategory.VALIDATION, ErrorCategory.AUTHENTICATION, ErrorCategory.CONFIGURATION},
        total_timeout=8.0,
        backoff=BackoffSettings(base_delay=0.1, max_delay=1.0),
    )

    def op(name: str) -> Callable[[StepContext], Any]:
        return lambda ctx: (name, ctx.key, ctx.input["order"])

    def release(ctx: StepContext) -> Any:
        return {"order": ctx.input["order"], "poison": ctx.input["poison"]}

    common: dict[str, Any] = {"compensation_timeout": 1.0, "compensation_retry": retry}
    return SagaDefinition(
        "order",
        [
            SagaStep(
                "reserve",
                "fragile/inventory",
                action=lambda ctx: {"order": ctx.input["order"]},
                compensate=release,
                timeout=1.0,
                delivery="envelope",
                **common,
            ),
            SagaStep(
                "charge",
                "providers/payments",
                action=op("charge"),
                compensate=op("refund"),
                timeout=1.5,
                delivery="call",
                **common,
            ),
            SagaStep("ship", "providers/payments", action=op("ship"), timeout=1.5, delivery="call"),
        ],
        compensation_deadline=15.0,
    )


@attrs.frozen
class StepTargets:
    """The sagas' step targets of one instance of a fleet (``bench/_soak_fleet.py``): the
    inventory actor's factory and the payments provider's backend, both applying each effect
    once across the fleet."""

    inventory: Callable[[], Any]
    payments: Backend


def build_tree(soak: Soak, journal: Journal, targets: StepTargets | None = None) -> SupervisorSpec:
    def provider(name: str, max_records: int, sagas: Sagas | None = None) -> Callable[[], Any]:
        backend = Backend(name, soak.seed, sagas)
        if name == "payments" and targets is not None:
            backend = targets.payments
        service = soak.services[name] = Service(backend, call_injectors(soak, name))
        rng = soak.injector_rng(name, "jitter")
        settings = provider_settings(max_records)
        return lambda: ProviderActor(
            name, service.call, settings, monitor="monitor", rng=rng, report_interval=0.1
        )

    providers = [ChildSpec(name, provider(name, 2 * KEYS)) for name in KEYED]
    providers.append(ChildSpec("payments", provider("payments", 1000, soak.sagas)))
    crash = soak.add(
        chaos.CrashInjector(
            rate=0.02,
            rng=soak.injector_rng("flaky", "crash"),
            when=lambda message: isinstance(message, GetStatus),
        )
    )
    start = soak.add(
        chaos.CrashInjector(rate=0.2, rng=soak.injector_rng("flaky", "start")), at_start=True
    )
    providers.append(
        ChildSpec("flaky", chaos.wrap_actor(provider("flaky", 10), crash, start=[start]))
    )

    poison = soak.add(
        chaos.OutcomeInjector(
            factory=lambda message: Failure(ValueError(f"release refused ({INJECTED})")),
            rate=1.0,
            when=lambda message: (
                isinstance(message, SagaStepMessage)
                and message.compensate
                and bool(message.payload.get("poison"))
            ),
        )
    )
    inventory = chaos.wrap_actor(
        (lambda: Inventory(soak.sagas)) if targets is None else targets.inventory,
        poison,
        soak.add(chaos.CrashInjector(rate=0.01, rng=soak.injector_rng("inventory", "crash"))),
        start=[
            soak.add(
                chaos.CrashInjector(rate=0.1, rng=soak.injector_rng("inventory", 0)), at_start=True
            )
        ],
    )
    soak.ledger_crash = soak.add(
        chaos.CrashInjector(rate=0.003, rng=soak.injector_rng("ledger", "crash"))
    )
    assert soak.ledger_crash is not None
    ledger = chaos.wrap_actor(lambda: Ledger(soak.ledger), soak.ledger_crash)

    definition = order_definition()
    coordinator_rng = soak.injector_rng("sagas", "jitter")
    sagas = chaos.wrap_actor(
        lambda: SagaCoordinator(journal, [definition], monitor="monitor", rng=coordinator_rng),
        soak.add(chaos.CrashInjector(rate=0.005, rng=soak.injector_rng("sagas", "crash"))),
        start=[
            soak.add(
                chaos.CrashInjector(rate=0.2, rng=soak.injector_rng("sagas", "start")),
                at_start=True,
            )
        ],
    )
    monitor_settings = MonitorSettings(check_interval=1.0)
    return SupervisorSpec(
        "soak",
        [
            ChildSpec("monitor", lambda: MonitorActor(monitor_settings)),
            SupervisorSpec("providers", providers, max_restarts=200, period=1.0),
            SupervisorSpec(
                "fragile",
                [ChildSpec("inventory", inventory), ChildSpec("ledger", ledger)],
                max_restarts=2,
                period=1.0,
            ),
            ChildSpec("sagas", sagas, mailbox_capacity=5000),
        ],
        max_restarts=1000,
        period=1.0,
    )


# ------------------------------------------------------------------------------------ the load


async def provider_caller(soak: Soak, root: Supervisor, number: int) -> None:
    rng = soak.injector_rng("caller", number)
    clients = {name: Provider[Any, Any](root.ref(f"providers/{name}")) for name in soak.services}
    recent: deque[tuple[str, int]] = deque(maxlen=8)
    while not soak.stopping:
        name = rng.choice((*KEYED, *KEYED, "flaky"))
        key: str | None = None
        if name == "flaky" or rng.random() < 0.5:
            value = rng.randrange(1000)
        elif recent and rng.random() < 0.2:
            name, index = rng.choice(recent)  # the same request again: a duplicate
            key, value = f"{name}-{index}", index
        else:
            index = soak.next_key.get(name, 0)
            if index < KEYS:
                soak.next_key[name] = index + 1  # fill the key space once, then reuse it
            else:
                index = rng.randrange(KEYS)
            recent.append((name, index))
            key, value = f"{name}-{index}", index
        timeout = rng.choice((0.2, 0.5, 1.0, 2.0))
        with soak.book.ask(timeout) as outcome:
            reply = await clients[name].call(("load", key, value), key=key, timeout=timeout)
            if reply == SUBSTITUTE:
                outcome[0] = "substitute"
            elif reply != ("load", key, value):
                soak.book.wrong_replies += 1
        await trio.sleep(rng.random() * 0.002)


async def saga_caller(soak: Soak, root: Supervisor, number: int) -> None:
    rng = soak.injector_rng("saga caller", number)
    ref = root.ref("sagas")
    while not soak.stopping:
        soak.next_saga += 1
        saga_id = f"s{soak.seed}-{soak.saga_prefix}{soak.next_saga}"
        poison = rng.random() < 0.05
        if soak.on_saga is None:
            soak.sagas.open[saga_id] = poison
        else:
            soak.on_saga(saga_id, "started")
        wait = rng.random() < 0.9
        timeout = rng.choice((0.5, 1.5, 4.0)) if wait else 2.0
        start = StartSaga(
            "order", {"order": soak.next_saga, "poison": poison}, saga_id=saga_id, wait=wait
        )
        with soak.book.ask(timeout) as outcome:
            await ref.ask(start, timeout=timeout)
        if soak.on_saga is None:
            soak.audit.append((trio.current_time() + 0.2, saga_id))
        else:  # audited across the fleet at the end
            soak.on_saga(saga_id, outcome[0])
        await trio.sleep(rng.random() * 0.01)


async def teller(soak: Soak, root: Supervisor) -> None:
    ref = root.ref("fragile/ledger")
    while not soak.stopping:
        try:
            await ref.tell(("add", 1))
        except ActorStopped:
            soak.ledger.refused += 1  # terminated by the operator, not started again yet
        else:
            soak.ledger.sent += 1
        await trio.sleep(0.002)


async def pinger(soak: Soak, root: Supervisor) -> None:
    """Status asks (crashing ``flaky`` at a rate) and monitor queries."""
    refs = [root.ref(f"providers/{name}") for name in soak.services]
    monitor = root.ref("monitor")
    rng = soak.injector_rng("pinger")
    while not soak.stopping:
        with soak.book.ask(0.5):
            await rng.choice(refs).ask(GetStatus(), timeout=0.5)
        with soak.book.ask(0.5):
            await monitor.ask(GetMetrics(), timeout=0.5)
        await trio.sleep(0.02)


# -------------------------------------------------------------------------------------- a run


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str


@attrs.frozen
class Result:
    """What a run measured and checked."""

    seconds: float
    seed: int
    journal: str
    asks: int
    asks_per_s: float
    outcomes: dict[str, int]
    faults: int
    latencies: int
    outcomes_injected: int
    behaviours: int
    crashes: int
    start_crashes: int
    escalations: int
    supervision: dict[str, int]
    sagas: dict[str, int]
    tells: int
    operator: list[str]
    checks: list[Check]
    violations: list[str]
    rss_warm_mb: float
    rss_end_mb: float
    rss_growth_pct: float
    max_late: float

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


@contextmanager
def open_journal_file(kind: str) -> Iterator[str | None]:
    if kind == "memory":
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="aura-soak-") as directory:
        yield str(Path(directory) / "sagas.db")


async def run(seconds: float, seed: int, journal_kind: str = "memory") -> Result:
    """Run the soak for ``seconds`` of load (plus the drain) and check the invariants."""
    soak = Soak(seed=seed, seconds=seconds, rng=random.Random(seed), sagas=Sagas())
    tasks_before = all_tasks()
    with open_journal_file(journal_kind) as path:
        journal: Any = (
            MemoryJournal(retain_last=RETAIN)
            if path is None
            else SqliteJournal(path, retain_last=RETAIN)
        )
        async with journal:
            metrics, statuses, load_seconds, drained = await _tree_run(soak, journal)
            unfinished = list(await journal.list_unfinished())
    tasks_after = all_tasks()
    return _result(
        soak,
        metrics,
        statuses,
        load_seconds,
        drained,
        unfinished,
        tasks_before,
        tasks_after,
        journal_kind,
    )


async def _tree_run(
    soak: Soak,
    journal: Journal,
    *,
    targets: StepTargets | None = None,
    until: Callable[[], Awaitable[None]] | None = None,
    callers: int = 48,
) -> tuple[Any, dict[str, Any], float, bool]:
    """Run the tree under load until ``seconds`` have passed (or ``until()`` returns), drain it,
    and read the monitor's metrics and the providers' statuses."""
    tree = build_tree(soak, journal, targets)
    if targets is not None:
        # A fleet's instances each draw their own chaos: the tree's first start must succeed
        # (a child failing it fails open_supervisor); crashes at start begin with restarts.
        for injector in soak.start_injectors:
            injector.enabled = False
    async with open_supervisor(tree, seed=soak.seed) as root:
        for injector in soak.start_injectors:
            injector.enabled = True
        soak.root = root
        monitor = root.ref("monitor")

        def listen(event: Any) -> None:
            soak.events[event.kind.value] += 1
            if event.kind is EventKind.GAVE_UP and event.path == "fragile":
                soak.escalations += 1
            try:
                monitor.tell_nowait(event)
            except ActorError:
                soak.events["not told to the monitor"] += 1

        root.add_listener(listen)
        started = trio.current_time()
        async with trio.open_nursery() as audit_nursery:
            audit_nursery.start_soon(auditor, soak, journal)
            async with trio.open_nursery() as load:
                for number in range(callers):
                    load.start_soon(provider_caller, soak, root, number)
                for number in range(8):
                    load.start_soon(saga_caller, soak, root, number)
                load.start_soon(teller, soak, root)
                load.start_soon(pinger, soak, root)
                if until is None:
                    await trio.sleep(soak.seconds * 0.2)
                    soak.rss_warm = sample_rss()
                    await trio.sleep_until(started + soak.seconds)
                else:
                    async with trio.open_nursery() as warm:
                        warm.start_soon(_warm_sample, soak)
                        await until()
                        warm.cancel_scope.cancel()
                soak.stopping = True  # callers finish the ask they are in, then stop
            load_seconds = trio.current_time() - started
            for injector in soak.injectors:
                injector.enabled = False
            drained = await _drain(soak, root, journal)
            audit_nursery.cancel_scope.cancel()
        await trio.sleep(0.5)  # the providers' last report flush (every 0.1 s)
        metrics = (await monitor.ask(GetMetrics())).services
        statuses = {
            name: await root.ref(f"providers/{name}").ask(GetStatus()) for name in soak.services
        }
        soak.ledger.discarded = root.ref("fragile/ledger").statistics().discarded
        soak.rss_end = sample_rss()
        soak.root = None
    return metrics, statuses, load_seconds, drained


async def _warm_sample(soak: Soak) -> None:
    await trio.sleep(soak.seconds * 0.2)
    soak.rss_warm = sample_rss()


async def _drain(soak: Soak, root: Supervisor, journal: Journal) -> bool:
    """Wait until every saga finished and was audited and every mailbox is empty."""
    refs = [root.ref(path) for path in ("fragile/ledger", "fragile/inventory", "sagas")]
    with trio.move_on_after(DRAIN_LIMIT):
        while True:
            unfinished = [
                s for s in await journal.list_unfinished() if s.phase.value != "compensation_failed"
            ]
            queued = sum(ref.statistics().mailbox_depth for ref in refs)
            if not unfinished and not soak.audit and not queued:
                return True
            await trio.sleep(0.1)
    return False


def _result(
    soak: Soak,
    metrics: Any,
    statuses: dict[str, Any],
    load_seconds: float,
    drained: bool,
    unfinished: list[Any],
    tasks_before: set[trio.lowlevel.Task],
    tasks_after: set[trio.lowlevel.Task],
    journal_kind: str,
    *,
    fleet: bool = False,
) -> Result:
    """The invariants' verdicts.  In a fleet (``fleet``), the sagas are audited across the
    fleet at the end (``bench/_soak_fleet.py``): here only this instance's drain is checked
    (no saga of the fleet left running; ``compensation_failed`` ones are left to that audit),
    and memory only when the instance ran long enough to be sampled after its warm-up."""
    book = soak.book
    by_kind: Counter[str] = Counter()
    for injector in soak.injectors:
        by_kind[injector.kind] += injector.injected
    crash_injected = by_kind["crash"]
    start_crashes = sum(i.injected for i in soak.start_injectors)
    checks: list[Check] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append(Check(name, ok, detail))

    check(
        "every ask ended with exactly one outcome",
        book.ended == book.started
        and not book.pending
        and not book.twice
        and not book.untyped
        and not book.wrong_replies,
        f"{book.started:,} asks, {book.ended:,} ended, {book.twice} twice, "
        f"{len(book.pending)} pending, untyped errors {dict(book.untyped) or 0}, "
        f"wrong replies {book.wrong_replies}",
    )
    check(
        "no ask outlived its deadline",
        book.late == 0,
        f"latest end {max(book.max_late, 0.0) * 1000:.1f} ms after its deadline "
        f"(tolerance {book.tolerance * 1000:.0f} ms); {book.late} past it",
    )
    doubles = [key for service in soak.services.values() for key in service.backend.doubles]
    keyed_effects = sum(len(soak.services[n].backend.effects) for n in KEYED)
    check(
        "each idempotency key took effect at most once",
        not doubles and soak.sagas.late == 0,
        f"{keyed_effects:,} load keys took effect"
        + (
            "; saga steps: checked across the fleet"
            if fleet
            else f", saga steps deduplicated ({soak.sagas.redeliveries} redeliveries absorbed)"
        )
        + f"; twice: {doubles[:10] or 'none'}; effects after a saga was audited: "
        f"{soak.sagas.late}",
    )
    if fleet:
        unfinished = [s for s in unfinished if s.phase.value != "compensation_failed"]
    leftover = [s.saga_id for s in unfinished]
    stuck = Counter(s.phase.value for s in unfinished)
    sagas_total = sum(soak.saga_outcomes.values())
    check(
        "the fleet drained: no saga left running"
        if fleet
        else "every saga completed or compensated",
        drained
        and not leftover
        and not soak.sagas.open
        and not soak.audit
        and not soak.violation_count,
        ("" if fleet else f"{sagas_total:,} audited ({dict(soak.saga_outcomes)}); ")
        + f"unfinished after the drain: {len(leftover)}{f' {dict(stuck)}' if stuck else ''}"
        + ("" if fleet else f"; compensation_failed listed for an operator: {len(soak.operator)}")
        + "".join(f"\n      VIOLATION {v}" for v in soak.violations[:10]),
    )
    gaps = []
    monitor_ok = True
    for name, service in soak.services.items():
        counted = metrics[name].totals.calls if name in metrics else 0
        dropped = statuses[name].reports_dropped
        monitor_ok &= counted == service.attempts and dropped == 0
        gaps.append(f"{name} {counted:,}/{service.attempts:,}")
    check("monitor counts equal ground truth", monitor_ok, "attempts " + ", ".join(gaps))
    lost = soak.ledger_crash.injected if soak.ledger_crash is not None else 0
    ledger = soak.ledger
    check(
        "every tell was handled, or lost to an injected crash or an operator's terminate",
        ledger.sent == ledger.handled + lost + ledger.discarded,
        f"{ledger.sent:,} sent = {ledger.handled:,} handled + {lost} lost to crashes + "
        f"{ledger.discarded} queued at a terminate ({ledger.refused} refused meanwhile)",
    )
    leaked = tasks_after - tasks_before
    check(
        "no task leaked",
        not leaked,
        f"{len(tasks_before)} tasks before the tree, {len(tasks_after)} after"
        + (f": {sorted(t.name for t in leaked)[:5]}" if leaked else ""),
    )
    growth = 100.0 * (soak.rss_end - soak.rss_warm) / soak.rss_warm if soak.rss_warm else math.nan
    if fleet and (load_seconds < MIN_MEMORY_SECONDS or not soak.rss_warm):
        check(
            "memory steady after warm-up",
            True,
            f"not checked: {load_seconds:.0f} s of load since this instance started "
            f"(under {MIN_MEMORY_SECONDS:g} s, or its warm-up sample not taken)",
        )
    else:
        check(
            "memory steady after warm-up",
            growth <= MAX_RSS_GROWTH,
            f"RSS {soak.rss_warm / 2**20:.1f} MB after warm-up, {soak.rss_end / 2**20:.1f} MB "
            f"at the end ({growth:+.1f} %, limit {MAX_RSS_GROWTH:g} %)",
        )
    assert len(checks) == INVARIANTS
    return Result(
        seconds=load_seconds,
        seed=soak.seed,
        journal=journal_kind,
        asks=book.ended,
        asks_per_s=book.ended / load_seconds if load_seconds > 0 else 0.0,
        outcomes=dict(book.outcomes.most_common()),
        faults=by_kind["fault"],
        latencies=by_kind["latency"],
        outcomes_injected=by_kind["outcome"],
        behaviours=by_kind["behaviour"],
        crashes=crash_injected - start_crashes,
        start_crashes=start_crashes,
        escalations=soak.escalations,
        supervision=dict(soak.events),
        sagas=dict(soak.saga_outcomes),
        tells=ledger.sent,
        operator=list(soak.operator),
        checks=checks,
        violations=list(soak.violations),
        rss_warm_mb=soak.rss_warm / 2**20,
        rss_end_mb=soak.rss_end / 2**20,
        rss_growth_pct=growth,
        max_late=book.max_late,
    )


# ------------------------------------------------------------------------------------- output


def report(result: Result, out: Any = sys.stdout) -> None:
    """Print what the run survived and each invariant with its verdict."""
    sagas = sum(result.sagas.values())
    ok_asks = result.outcomes.get("ok", 0)
    print(
        f"soak: {result.seconds:.1f} s of load, seed {result.seed}, {result.journal} journal",
        file=out,
    )
    print(
        f"survived: {result.asks:,} asks ({ok_asks:,} ok; {result.asks_per_s:,.0f} asks/s), "
        f"{result.faults:,} injected faults, {result.latencies:,} latency injections, "
        f"{result.outcomes_injected:,} substitute outcomes, {result.behaviours:,} behaviours, "
        f"{result.crashes:,} crashes while handling and {result.start_crashes:,} at start, "
        f"{result.escalations:,} escalations, {sagas:,} sagas, {result.tells:,} tells",
        file=out,
    )
    outcomes = ", ".join(f"{name} {count:,}" for name, count in result.outcomes.items())
    print(f"ask outcomes: {outcomes}", file=out)
    events = ", ".join(f"{name} {count:,}" for name, count in sorted(result.supervision.items()))
    print(f"supervision events: {events}", file=out)
    if result.operator:
        print(
            f"sagas that need an operator (compensation_failed, {len(result.operator)}):",
            file=out,
        )
        for line in result.operator[:10]:
            print(f"  {line}", file=out)
        if len(result.operator) > 10:
            print(f"  ... and {len(result.operator) - 10} more", file=out)
    for check in result.checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}", file=out)
    failed = sum(not check.ok for check in result.checks)
    print(
        f"soak summary: {len(result.checks)} invariants checked, {failed} violated, "
        f"{result.asks:,} asks, {result.asks_per_s:,.0f} asks/s, "
        f"RSS growth {result.rss_growth_pct:+.1f} %",
        file=out,
    )


def figures(result: Result) -> dict[str, float]:
    """The numbers ``--json`` writes (and ``bench/figures_soak.py`` reads)."""
    return {
        "soak_seconds": result.seconds,
        "soak_asks": float(result.asks),
        "soak_asks_per_s": result.asks_per_s,
        "rss_growth_pct": result.rss_growth_pct,
        "soak_faults": float(result.faults),
        "soak_crashes": float(result.crashes + result.start_crashes),
        "soak_escalations": float(result.escalations),
        "soak_sagas": float(sum(result.sagas.values())),
        "soak_max_late_ms": result.max_late * 1000,
        "soak_invariants_violated": float(sum(not c.ok for c in result.checks)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random source (1)")
    parser.add_argument(
        "--journal",
        choices=("memory", "sqlite", "postgres"),
        default="memory",
        help="saga journal (memory); postgres runs a fleet (bench/_soak_fleet.py)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="instance processes sharing one PostgreSQL journal and one Redis (1)",
    )
    parser.add_argument(
        "--kill-instances",
        action="store_true",
        help="kill -9 a random instance every few seconds, then start it again",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("AURA_TEST_REDIS_URL") or None,
        help="the fleet's Redis ($AURA_TEST_REDIS_URL; else one is started)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("AURA_TEST_POSTGRES_URL") or None,
        help="the fleet's PostgreSQL ($AURA_TEST_POSTGRES_URL; else one is started)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the runtime's log records")
    args = parser.parse_args(argv)
    if args.seconds < 5:
        parser.error("--seconds must be at least 5")
    fleet = args.journal == "postgres"
    if args.instances < 1:
        parser.error(f"--instances must be at least 1, got {args.instances}")
    if not fleet and (args.instances > 1 or args.kill_instances):
        parser.error("--instances and --kill-instances need --journal postgres (a shared journal)")
    if not args.verbose:
        # Injected crashes and compensation retries are logged by design: thousands of lines.
        logging.getLogger().addHandler(logging.NullHandler())
        logging.getLogger().setLevel(logging.CRITICAL)
    wall = time.monotonic()
    if fleet:
        from bench._soak_fleet import report as fleet_report
        from bench._soak_fleet import run_fleet

        outcome = run_fleet(
            args.seconds,
            args.seed,
            args.instances,
            kill=args.kill_instances,
            redis_url=args.redis_url,
            postgres_url=args.postgres_url,
        )
        fleet_report(outcome)
        print(f"# {time.monotonic() - wall:.1f} s wall-clock", file=sys.stderr)
        return 0 if outcome.ok else 1
    result = trio.run(run, args.seconds, args.seed, args.journal)
    report(result)
    print(f"# {time.monotonic() - wall:.1f} s wall-clock", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(figures(result), indent=2, sort_keys=True) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
