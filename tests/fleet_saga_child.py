"""One instance of the fleet the kill test runs: a saga coordinator over a shared PostgreSQL
journal, with step targets that dedupe through a shared Redis.

Run by ``tests/test_saga_fleet_kill.py`` (``python -m tests.fleet_saga_child ...``).  It opens
a :class:`~actors.PostgresJournal` (a fresh instance id, a short lease) and a tree with the
two targets of ``tests/saga_fleet.py`` (:class:`bench._fleet_effects.FleetTarget`: each effect
applied once across the fleet, counted in Redis) and a coordinator, which takes over the sagas
of dead instances while it runs.  It prints ``READY <instance id>``, then starts sagas
``{label}-{n}`` for n = ``--first``, ``--first`` + 1, ... from four callers (``S <n>`` as each
one starts; ``StartSaga`` of an id already in the journal waits for that saga's end, wherever it
runs; one refused while the journal is unreachable is tried again), and ``STATS <json>`` with
its counters every 0.2 s.  On the line ``drain`` on stdin it stops starting sagas and prints
``DRAINED`` once its callers are answered; on ``exit`` it closes and prints ``BYE``.  The test
kills it with SIGKILL (or freezes it with SIGSTOP) at any moment.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from typing import Any

import attrs
import trio

from actors import FleetSettings
from actors._errors import AuraError, JournalUnavailable
from actors._fleet._client import open_store_client
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaStepMessage
from actors._saga._journals._postgres._journal import PostgresJournal
from actors._saga._messages import GetSagaStatistics, StartSaga
from bench._fleet_effects import FleetTarget, declined
from supervisors import ChildSpec, open_supervisor
from tests.saga_fleet import definition

CALLERS = 4


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(f"{args.seed}:{args.label}:{args.first}")
    settings = FleetSettings(redis_url=args.redis, key_prefix=args.prefix, command_timeout=5.0)
    journal = PostgresJournal(
        args.url,
        schema=args.schema,
        lease_duration=args.lease,
        write_timeout=1.0,
        retain_last=1_000_000,
    )
    await journal.open()

    def declines(message: SagaStepMessage) -> bool:
        return declined(message.saga_id, message.step, args.seed, 0.2)

    def latency() -> float:
        return rng.choice((0.0, 0.002, 0.01, 0.03))

    try:
        async with open_store_client(settings) as client:
            tree = [
                ChildSpec(
                    "inventory",
                    lambda: FleetTarget(client, args.prefix, "inventory", latency=latency),
                ),
                ChildSpec(
                    "payments",
                    lambda: FleetTarget(
                        client, args.prefix, "payments", declines=declines, latency=latency
                    ),
                ),
                ChildSpec("sagas", lambda: SagaCoordinator(journal, [definition()])),
            ]
            async with open_supervisor(tree) as root:
                state = _State(args.first)
                say("READY", journal.instance_id)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_stats, root, journal)
                    async with trio.open_nursery() as callers:
                        for _ in range(CALLERS):
                            callers.start_soon(_caller, root, args.label, state, rng)
                        nursery.start_soon(_commands, state)
                    say("DRAINED")
                    await state.leave.wait()
                    nursery.cancel_scope.cancel()
    finally:
        await journal.aclose()
    say("BYE")


@attrs.define
class _State:
    next: int
    draining: bool = False
    leave: trio.Event = attrs.field(factory=trio.Event)


async def _caller(root: Any, label: str, state: _State, rng: random.Random) -> None:
    sagas = root.ref("sagas")
    while not state.draining:
        n = state.next
        state.next += 1
        saga_id = f"{label}-{n}"
        say("S", n)
        while True:
            try:
                await sagas.ask(StartSaga("order", {"order": n}, saga_id=saga_id), timeout=120)
            except JournalUnavailable:
                await trio.sleep(0.05)  # the journal's server is down: try again
                continue
            except AuraError:
                pass  # the saga failed and was compensated: an outcome like any other
            break
        await trio.sleep(rng.random() * 0.05)


async def _stats(root: Any, journal: PostgresJournal) -> None:
    sagas = root.ref("sagas")
    while True:
        try:
            stats = await sagas.ask(GetSagaStatistics(), timeout=5)
        except AuraError:
            stats = None
        fleet = journal.fleet_statistics()
        out = {
            "ownership_lost": 0 if stats is None else stats.ownership_lost,
            "in_doubt": 0 if stats is None else stats.writes_in_doubt,
            "taken_over": 0 if stats is None else stats.taken_over,
            "completed": 0 if stats is None else stats.completed,
            "compensated": 0 if stats is None else stats.compensated,
            "journal_ownership_lost": fleet.ownership_lost,
            "available": fleet.available,
        }
        say("STATS", json.dumps(out))
        await trio.sleep(0.2)


async def _commands(state: _State) -> None:
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        command = line.strip()
        if command == "drain":
            state.draining = True
        elif command == "exit" or not line:  # EOF: the test is gone
            state.draining = True
            state.leave.set()
            return


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("url", "schema", "redis", "prefix", "label"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lease", type=float, default=1.0)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    trio.run(main, parser.parse_args())
