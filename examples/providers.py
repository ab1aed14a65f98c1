"""Provider actors for openai, anthropic and ollama over simulated services, plus the monitor.

Run it with ``python -m examples.providers [--seed N] [--minutes M] [--real-time]``.

The tree::

    (root)
    ├── monitor        health, metrics and alerts from every provider's reports
    └── providers      one_for_one
        ├── openai     4 attempts, 2 s exponential backoff + jitter  (seed retry table)
        ├── anthropic  4 attempts, 2 s exponential backoff + jitter
        └── ollama     3 attempts, 100 ms constant; openai falls back to it

Each provider wraps a simulated LLM service with seeded faults: rate limits (429 with
Retry-After), 503s, dropped connections, hangs past the attempt timeout, the odd invalid
request, and one outage per service, long enough to open its circuit breaker.  Callers send
prompts with idempotency keys, some of them twice.

By default the run is simulated in virtual time (``trio.testing.MockClock``): minutes of traffic
in a few seconds.  ``--real-time`` runs on the wall clock.  At the end it prints, per provider,
calls, attempts, retries, breaker trips, alerts and health, and checks that the monitor counted
exactly the attempts the simulated services saw.

``build_tree(config)`` and ``workload(root)`` follow the ``aura run`` convention, so
``aura run examples.providers`` shows the same tree in the live view.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter
from typing import Any

import msgspec
import trio
import trio.testing

from actors import (
    AuraError,
    GetAlerts,
    GetBreakers,
    GetHealth,
    GetMetrics,
    MonitorActor,
    Provider,
    ProviderActor,
    ResilienceConfig,
)
from supervisors import ChildSpec, Supervisor, SupervisorSpec, open_supervisor

#: name -> (median latency s, fault rate, outage start s, outage length s)
PROFILES: dict[str, tuple[float, float, float, float]] = {
    "openai": (0.8, 0.12, 120.0, 60.0),
    "anthropic": (1.0, 0.10, 240.0, 45.0),
    "ollama": (0.3, 0.05, 400.0, 20.0),
}


class ServiceError(Exception):
    """What an HTTP client raises for an error status (status code and headers)."""

    def __init__(self, status_code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}


class SimulatedLLM:
    """A fake LLM API with seeded faults; counts every request it sees (the ground truth)."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.latency, self.fault_rate, outage_at, outage_for = PROFILES[name]
        self.outage = (outage_at, outage_at + outage_for)
        self.rng = random.Random(f"{name}:{seed}")
        self.started: float | None = None
        self.requests = 0
        self.outcomes: Counter[str] = Counter()

    async def __call__(self, prompt: str) -> str:
        now = trio.current_time()
        if self.started is None:
            self.started = now
        self.requests += 1
        elapsed = now - self.started
        rng = self.rng
        await trio.sleep(self.latency * rng.lognormvariate(0.0, 0.4))
        if self.outage[0] <= elapsed < self.outage[1]:
            self.outcomes["outage"] += 1
            raise ConnectionResetError(f"{self.name}: connection reset by peer")
        roll = rng.random()
        if roll < self.fault_rate:
            fault = rng.choice(["429", "503", "reset", "hang", "400"])
            self.outcomes[fault] += 1
            if fault == "429":
                raise ServiceError(429, "rate limit exceeded", retry_after=rng.choice([1, 2, 5]))
            if fault == "503":
                raise ServiceError(503, "service overloaded")
            if fault == "reset":
                raise ConnectionResetError(f"{self.name}: connection reset by peer")
            if fault == "hang":
                await trio.sleep(3600)  # the attempt timeout cuts it short
            raise ServiceError(400, "invalid request: prompt too long")
        self.outcomes["ok"] += 1
        return f"{self.name} completion of {prompt!r}"


#: The simulated services of the last tree built (for the ground-truth check).
SERVICES: dict[str, SimulatedLLM] = {}


def build_tree(config: ResilienceConfig | None = None, *, seed: int = 7) -> SupervisorSpec:
    """The example tree; ``config`` defaults to ``ResilienceConfig.default()``."""
    config = config or ResilienceConfig.default()
    SERVICES.clear()
    providers = []
    for name in PROFILES:
        service = SERVICES[name] = SimulatedLLM(name, seed)
        settings = config.for_provider(name)
        if name == "openai" and settings.fallback is None:
            settings = msgspec.structs.replace(settings, fallback="ollama")

        def factory(name: str = name, service: SimulatedLLM = service, settings: Any = settings):
            return ProviderActor(
                name, service, settings, monitor="monitor", rng=random.Random(f"jitter:{name}")
            )

        providers.append(ChildSpec(name, factory, shutdown=5.0))
    return SupervisorSpec(
        "app",
        [
            ChildSpec("monitor", lambda: MonitorActor(config.monitoring)),
            SupervisorSpec("providers", providers, strategy="one_for_one"),
        ],
    )


async def workload(
    root: Supervisor, *, seconds: float = 600.0, clients: int = 12, seed: int = 7
) -> Counter[str]:
    """Clients sending prompts (some re-sent with the same key) for ``seconds``."""
    outcomes: Counter[str] = Counter()
    stop_at = trio.current_time() + seconds
    rng = random.Random(seed)
    clients_of = {name: Provider(root.ref(f"providers/{name}")) for name in PROFILES}

    async def client(number: int) -> None:
        i = 0
        while trio.current_time() < stop_at:
            i += 1
            name = rng.choice(list(PROFILES))
            key = f"client{number}-{i}"
            for _ in range(2 if rng.random() < 0.1 else 1):  # a retry by the user, same key
                try:
                    await clients_of[name].call(f"prompt {i}", key=key, timeout=45.0)
                except AuraError as exc:
                    outcomes[f"{name}:{type(exc).__name__}"] += 1
                else:
                    outcomes[f"{name}:ok"] += 1
            await trio.sleep(rng.expovariate(1.0))

    async with trio.open_nursery() as nursery:
        for number in range(clients):
            nursery.start_soon(client, number)
    return outcomes


async def main(seed: int, seconds: float) -> int:
    async with open_supervisor(build_tree(seed=seed)) as root:
        root.add_listener(root.ref("monitor").tell_nowait)  # supervision events -> monitor
        outcomes = await workload(root, seconds=seconds, seed=seed)
        await trio.sleep(1.0)  # the last report flush
        monitor = root.ref("monitor")
        metrics = (await monitor.ask(GetMetrics())).services
        breakers = {b.service: b for b in (await monitor.ask(GetBreakers())).breakers}
        alerts = await monitor.ask(GetAlerts(include_resolved=True))
        health = await monitor.ask(GetHealth())
        statuses = {
            name: await Provider(root.ref(f"providers/{name}")).status() for name in PROFILES
        }

    print(f"\nprovider run: seed={seed}, {seconds / 60:g} simulated minutes\n")
    columns = (
        "calls",
        "ok",
        "failed",
        "cached",
        "attempts",
        "retries",
        "fallbk",
        "trips",
        "breaker",
    )
    print(f"{'provider':<10} " + " ".join(f"{c:>8}" for c in columns))
    # calls = ok + failed once nothing is in flight; cached = idempotency records held
    for name in PROFILES:
        s = statuses[name]
        row = (
            s.calls, s.succeeded, s.failed, s.cached, s.attempts,
            s.retries, s.fallbacks,
            breakers[name].trips if name in breakers else 0, s.breaker,
        )  # fmt: skip
        print(f"{name:<10} " + " ".join(f"{v:>8}" for v in row))
    raised = Counter(f"{a.rule.value}:{a.service}" for a in alerts.active + alerts.resolved)
    print(f"\nalerts raised: {dict(sorted(raised.items()))}")
    print(f"health: {health.status.value} " + ", ".join(
        f"{name}={h.status.value}" for name, h in sorted(health.services.items())
    ))  # fmt: skip
    failures = {k: v for k, v in sorted(outcomes.items()) if not k.endswith(":ok")}
    print(f"caller-visible failures: {failures}")

    problems = []
    for name, service in SERVICES.items():
        counted = metrics[name].totals.calls if name in metrics else 0
        if counted != service.requests:
            problems.append(
                f"{name}: monitor counted {counted} attempts, service saw {service.requests}"
            )
    trips = sum(b.trips for b in breakers.values())
    if trips == 0:
        problems.append("no circuit breaker opened: the outages were too short")
    for problem in problems:
        print(f"INVARIANT VIOLATED: {problem}")
    print("\nmonitor totals equal the services' own counts" if not problems else "")
    return 1 if problems else 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes")
    parser.add_argument("--real-time", action="store_true", help="run on the wall clock")
    parser.add_argument("--verbose", action="store_true", help="log supervision events")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)
    clock = None if args.real_time else trio.testing.MockClock(autojump_threshold=0)
    return trio.run(main, args.seed, args.minutes * 60.0, clock=clock)


if __name__ == "__main__":
    sys.exit(cli())
