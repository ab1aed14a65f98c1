"""A two-level supervision tree whose workers crash at seeded random moments.

Run it with ``python -m examples.supervision_tree [--seed N] [--seconds S]``.

The tree::

    (root, one_for_one, at most 20 restarts in 5 s)
    ├── ingest      one_for_one: three workers that crash now and then; only the one that
    │               crashed is restarted
    ├── pipeline    one_for_all: parse -> enrich -> store; a crash of any stage restarts all
    │               three; at most 2 restarts in 1 s, so a burst of crashes makes the whole
    │               subtree give up, and the root restarts it
    └── events      an actor that counts the supervision events it is told about

Clients ask the workers without pause.  Every ask ends in exactly one outcome: a reply, or a
typed error (``ActorCrashed`` for the message that crashed a worker, ``ActorStopped`` for one
interrupted by a sibling's restart).  Messages queued behind a crash are handled by the
restarted worker, and refs stay valid across every restart.  The run ends with a summary table
and exits 0 when every invariant held.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter
from typing import Any

import trio

from actors import Actor, ActorCrashed, ActorRef, ActorStopped, AskTimeout
from supervisors import (
    ChildSpec,
    EventKind,
    RestartBackoff,
    SupervisionEvent,
    SupervisorSpec,
    open_supervisor,
)


class Worker(Actor[int, int]):
    """Doubles numbers; crashes with probability ``crash_rate`` per message."""

    def __init__(self, rng: random.Random, crash_rate: float) -> None:
        self.rng = rng
        self.crash_rate = crash_rate
        self.handled = 0

    async def handle(self, message: int) -> int:
        await trio.sleep(0.0005)  # a little work
        if self.rng.random() < self.crash_rate:
            raise RuntimeError(f"{self.path} lost its connection while handling {message}")
        self.handled += 1
        return message * 2


class EventCounter(Actor[Any, dict[str, int]]):
    """Counts supervision events; asked with ``"report"`` returns the counts."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def handle(self, message: Any) -> dict[str, int]:
        if isinstance(message, SupervisionEvent):
            self.counts[message.kind.value] += 1
            if message.kind is EventKind.GAVE_UP:
                self.counts[f"gave_up:{message.path}"] += 1
        return dict(self.counts)


def build_tree(seed: int) -> SupervisorSpec:
    rng = random.Random(seed)

    def worker(rate: float) -> ChildSpec[int, int]:
        worker_rng = random.Random(rng.random())
        return ChildSpec("w", lambda: Worker(worker_rng, rate), shutdown=1.0)

    ingest = SupervisorSpec(
        "ingest",
        [
            ChildSpec(f"worker-{i}", worker(0.02).factory, shutdown=1.0, mailbox_capacity=64)
            for i in range(3)
        ],
        strategy="one_for_one",
        max_restarts=50,
        period=1.0,
        backoff=RestartBackoff(min_delay=0.005, max_delay=0.1, jitter=0.2, reset_after=0.5),
    )
    pipeline = SupervisorSpec(
        "pipeline",
        [
            ChildSpec(name, worker(rate).factory, shutdown=1.0)
            for name, rate in (("parse", 0.004), ("enrich", 0.006), ("store", 0.004))
        ],
        strategy="one_for_all",
        max_restarts=2,
        period=1.0,
    )
    return SupervisorSpec(
        "root",
        [ingest, pipeline, ChildSpec("events", EventCounter)],
        strategy="one_for_one",
        max_restarts=20,
        period=5.0,
    )


async def client(ref: ActorRef[int, int], outcomes: Counter[str], stop_at: float) -> None:
    n = 0
    while trio.current_time() < stop_at:
        n += 1
        try:
            reply = await ref.ask(n, timeout=2.0)
        except ActorCrashed:
            outcomes["crashed"] += 1
        except ActorStopped:
            outcomes["stopped"] += 1
        except AskTimeout:
            outcomes["timeout"] += 1
        else:
            outcomes["ok" if reply == 2 * n else "wrong"] += 1
        outcomes["asked"] += 1


async def main(seed: int, seconds: float) -> int:
    outcomes: dict[str, Counter[str]] = {}
    async with open_supervisor(build_tree(seed), seed=seed) as root:
        events = root.ref("events")
        root.add_listener(events.tell_nowait)
        paths = [f"ingest/worker-{i}" for i in range(3)] + [
            f"pipeline/{s}" for s in ("parse", "enrich", "store")
        ]
        stop_at = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for path in paths:
                outcomes[path] = Counter()
                for _ in range(4):
                    nursery.start_soon(client, root.ref(path), outcomes[path], stop_at)
        counts: dict[str, int] = await events.ask("report")
        snapshot = root.snapshot()

    print(f"\nsupervision tree run: seed={seed}, {seconds:g} s\n")
    columns = ("restarts", "asked", "ok", "crashed", "stopped", "timeout")
    print(f"{'actor':<20} " + " ".join(f"{c:>8}" for c in columns))
    for node in snapshot.walk():
        if node.kind != "actor" or node.path not in outcomes:
            continue
        o = outcomes[node.path]
        values = (node.restarts, o["asked"], o["ok"], o["crashed"], o["stopped"], o["timeout"])
        print(f"{node.path:<20} " + " ".join(f"{v:>8}" for v in values))
    subtree = {n.path: n.restarts for n in snapshot.walk() if n.kind == "supervisor" and n.path}
    print(f"\nsubtree restarts by their parent: {subtree}")
    print(f"supervision events: { {k: v for k, v in sorted(counts.items())} }")

    problems = []
    for path, o in outcomes.items():
        ended = o["ok"] + o["crashed"] + o["stopped"] + o["timeout"] + o["wrong"]
        if ended != o["asked"]:
            problems.append(f"{path}: {o['asked']} asks but {ended} outcomes")
        if o["wrong"]:
            problems.append(f"{path}: {o['wrong']} wrong replies")
        if o["ok"] == 0:
            problems.append(f"{path}: no successful reply at all")
    restarted_one = sum(n.restarts for n in snapshot.walk() if n.path.startswith("ingest/"))
    if restarted_one == 0:
        problems.append("no one_for_one restart happened: run longer or raise the crash rate")
    if counts.get("gave_up:pipeline", 0) == 0:
        print("note: the pipeline subtree did not exceed its intensity in this run")
    for problem in problems:
        print(f"INVARIANT VIOLATED: {problem}")
    print("\nall invariants held" if not problems else "")
    return 1 if problems else 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--verbose", action="store_true", help="log every supervision event")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    return trio.run(main, args.seed, args.seconds)


if __name__ == "__main__":
    sys.exit(cli())
