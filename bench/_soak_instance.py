"""One instance of the fleet soak: the soak's tree over a shared PostgreSQL journal.

Run by ``bench/_soak_fleet.py`` as ``python -m bench._soak_instance ...``.  It builds the tree of
``bench/soak.py`` with a :class:`~actors.PostgresJournal` (a fresh instance id) shared by the
fleet, and with the sagas' step targets applying each effect once across the fleet through the
shared Redis store (:mod:`bench._fleet_effects`): the inventory is a
:class:`~bench._fleet_effects.FleetTarget`, the payments provider's backend applies its keyed
calls through :class:`~bench._fleet_effects.Effects`.  Its coordinator takes over the sagas of
instances that die, like any survivor.

Protocol, one line each on stdout: ``READY <instance id>`` once the journal is open;
``S <saga id>`` before each ``StartSaga`` and ``A <saga id> <outcome>`` after it (``ok`` or the
error's type); ``RESULT <json>`` (this instance's :class:`~bench.soak.Result`) once drained.  The
line ``drain`` on stdin (or its end) stops the load (a lighter one than the single-process
soak's: :data:`CALLERS` provider callers); the instance then drains (every saga of the
fleet finished), checks its own invariants, prints ``RESULT`` and exits.  The ``--instances``
processes of the fleet, and both servers, share the cores the single-process soak has to
itself: a scheduler pass of one can wait behind all the others, so an ask may end up to
``--instances`` times the soak's :data:`~bench._soak_truth.TOLERANCE` after its deadline.  The
parent may kill it with SIGKILL at any moment.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import zlib
from typing import Any, Final

import attrs
import trio

from actors import Failure, FleetSettings
from actors._fleet._client import open_store_client
from actors._saga._journals._postgres._journal import PostgresJournal
from bench._fleet_effects import Effects, FleetTarget
from bench._soak_truth import TOLERANCE, AskBook, Backend, Sagas, Soak, all_tasks
from bench.soak import StepTargets, _result, _tree_run

__all__ = ["FleetPayments", "main"]

#: Provider callers per instance (the single-process soak runs 48 on its own).
CALLERS: Final = 8
#: Seconds a step target's claim on a key lasts (a dead claimant holds the key this long).
CLAIM_LEASE: Final = 1.0
#: The payments operations: the step and whether it is the step's effect or its undoing.
OPERATIONS: Final = {
    "charge": ("charge", "do"),
    "refund": ("charge", "compensate"),
    "ship": ("ship", "do"),
}


class FleetPayments(Backend):
    """The payments service of a fleet: each keyed call's effect applied once across the fleet
    (counted in the shared store by saga, step, and effect or undoing)."""

    def __init__(self, name: str, seed: int, effects: Effects) -> None:
        super().__init__(name, seed)
        self.fleet = effects

    async def __call__(self, payload: tuple[str, str | None, int]) -> Any:
        self.requests += 1
        op, key, _ = payload
        if key is None:
            raise ValueError(f"payments take saga steps with keys, not {payload!r}")
        step, kind = OPERATIONS[op]

        async def latency() -> None:
            delay = self.rng.choice((0.0, 0.0, 0.001, 0.003))
            if delay:
                await trio.sleep(delay)

        outcome = await self.fleet.apply(
            key, list(payload), f"{Sagas.saga_of(key)}:{step}:{kind}", list(payload), before=latency
        )
        if isinstance(outcome, Failure):
            raise outcome.error
        return tuple(outcome)


async def main(args: argparse.Namespace) -> None:
    seed = zlib.crc32(f"{args.seed}:{args.label}".encode())  # chaos of its own per instance
    soak = Soak(
        seed=seed,
        seconds=args.seconds,
        rng=random.Random(seed),
        sagas=Sagas(),
        saga_prefix=f"{args.label}-",
        book=AskBook(TOLERANCE * args.instances),
    )

    def told(saga_id: str, outcome: str) -> None:
        if outcome == "started":
            say("S", saga_id)
        else:
            say("A", saga_id, outcome)

    soak.on_saga = told
    settings = FleetSettings(redis_url=args.redis, key_prefix=args.prefix, command_timeout=5.0)
    journal = PostgresJournal(
        args.url,
        schema=args.schema,
        lease_duration=args.lease,
        retain_last=1_000_000_000,  # the fleet's audit reads every saga at the end
        auto_prune=False,
    )
    tasks_before = all_tasks()
    await journal.open()
    try:
        async with open_store_client(settings) as client:
            payments = FleetPayments(
                "payments", seed, Effects(client, args.prefix, "payments", lease=CLAIM_LEASE)
            )
            targets = StepTargets(
                inventory=lambda: FleetTarget(client, args.prefix, "inventory", lease=CLAIM_LEASE),
                payments=payments,
            )
            say("READY", journal.instance_id)
            metrics, statuses, load_seconds, drained = await _tree_run(
                soak, journal, targets=targets, until=_drain_command, callers=CALLERS
            )
            unfinished = list(await journal.list_unfinished())
    finally:
        await journal.aclose()
    tasks_after = all_tasks()
    result = _result(
        soak,
        metrics,
        statuses,
        load_seconds,
        drained,
        unfinished,
        tasks_before,
        tasks_after,
        "postgres",
        fleet=True,
    )
    say("RESULT", json.dumps(attrs.asdict(result)))


async def _drain_command() -> None:
    """Return at the line ``drain`` on stdin (or at its end: the parent is gone)."""
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line or line.strip() == "drain":
            return


def say(*parts: object) -> None:
    print(*parts, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._soak_instance")
    for name in ("url", "schema", "redis", "prefix", "label"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--instances", type=int, default=1)
    # Injected crashes and compensation retries are logged by design: thousands of lines.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.CRITICAL)
    trio.run(main, parser.parse_args())
