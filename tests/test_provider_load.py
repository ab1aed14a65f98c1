"""Load: 100,000 asks from 1,000 concurrent callers against providers with 30% faults.

Checks, in virtual time: every ask ends with exactly one outcome; each idempotency key takes
effect at most once; the monitor's totals equal what the fake services counted; no task
outlives the tree.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import trio
import trio.testing

from actors import (
    AuraError,
    BreakerSettings,
    BulkheadSettings,
    GetMetrics,
    IdempotencySettings,
    MonitorActor,
    Provider,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
)
from supervisors import ChildSpec, SupervisorSpec, open_supervisor

CALLERS = 1000
ASKS_PER_CALLER = 100
FAULT_RATE = 0.3


class StatusError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class FakeService:
    """Counts every request and every effect (a success) per idempotency key."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = random.Random(seed)
        self.requests = 0
        self.effects: Counter[str] = Counter()

    async def __call__(self, payload: tuple[str, int]) -> Any:
        key, value = payload
        self.requests += 1
        rng = self.rng
        # Quantized latencies: many calls finish at the same virtual instant, as in a burst.
        await trio.sleep(rng.choice((0.01, 0.02, 0.05)))
        roll = rng.random()
        if roll < FAULT_RATE:
            fault = rng.randrange(4)
            if fault == 0:
                raise ConnectionResetError("reset")
            if fault == 1:
                raise StatusError(503)
            if fault == 2:
                raise StatusError(400)  # not transient: cached under its key
            await trio.sleep(60)  # past the attempt timeout
        self.effects[key] += 1
        return value * 2


def _tasks() -> set[trio.lowlevel.Task]:
    found: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


async def test_load_100k_asks_1k_callers(mock_clock: trio.testing.MockClock) -> None:
    """100,000 asks end with exactly one outcome each; keys take effect at most once; monitor
    totals equal ground truth; no task leaks."""
    services = {name: FakeService(name, seed) for seed, name in enumerate("abc")}
    # The breaker stays on, with a consecutive-failure threshold that 30% independent faults
    # do not reach, so calls exercise retries rather than fast rejections.
    settings = ProviderSettings(
        bulkhead=BulkheadSettings(max_concurrent=200, max_queued=2000),
        retry=RetrySettings(max_attempts=3, attempt_timeout=1.0, total_timeout=20.0),
        breaker=BreakerSettings(failure_threshold=25),
        # Room for every key of the run: "at most once" holds while a key's record is kept
        # (its TTL, and max_records with oldest-first eviction).
        idempotency=IdempotencySettings(max_records=100_000),
    )
    tree = SupervisorSpec(
        "app",
        [
            ChildSpec("monitor", MonitorActor),
            SupervisorSpec(
                "providers",
                [
                    ChildSpec(
                        name,
                        lambda name=name: ProviderActor(
                            name, services[name], settings, monitor="monitor"
                        ),
                    )
                    for name in services
                ],
            ),
        ],
    )
    asked = 0
    ended: Counter[str] = Counter()
    per_ask: dict[int, int] = {}
    rng = random.Random(42)
    before = _tasks()

    async with open_supervisor(tree) as root:
        providers = {name: Provider(root.ref(f"providers/{name}")) for name in services}

        async def caller(number: int) -> None:
            nonlocal asked
            recent: list[tuple[str, str, int]] = []
            for i in range(ASKS_PER_CALLER):
                if recent and rng.random() < 0.1:
                    name, key, value = rng.choice(recent)  # the same request again
                else:
                    name = rng.choice("abc")
                    key = f"{number}-{i}"
                    value = rng.randrange(1000)
                    recent.append((name, key, value))
                ask_id = asked
                asked += 1
                per_ask[ask_id] = 0
                try:
                    result = await providers[name].call((key, value), key=key, timeout=30.0)
                except AuraError as exc:
                    ended[type(exc).__name__] += 1
                else:
                    assert result == value * 2
                    ended["ok"] += 1
                per_ask[ask_id] += 1

        async with trio.open_nursery() as nursery:
            for number in range(CALLERS):
                nursery.start_soon(caller, number)
        await trio.sleep(2.0)  # the providers' last report flush
        metrics = (await root.ref("monitor").ask(GetMetrics())).services

    assert asked == CALLERS * ASKS_PER_CALLER
    assert sum(ended.values()) == asked
    assert all(count == 1 for count in per_ask.values())
    assert ended["ok"] > asked // 2, ended
    for name, service in services.items():
        assert max(service.effects.values()) == 1, f"{name}: a key took effect twice"
        assert metrics[name].totals.calls == service.requests
    assert _tasks() == before
