"""Per-session and per-request actors under dynamic supervisors.

Run it with ``python -m examples.sessions [--seed N] [--seconds S] [--users U]``.

The tree::

    (root, one_for_one)
    ├── sessions    dynamic supervisor: one Session actor per signed-in user, started on the
    │               user's first request, stopped by itself after a quiet spell (transient:
    │               a crash restarts it for the same user, an idle stop is final)
    └── requests    dynamic supervisor: one Render actor per request, which answers once and
                    stops (temporary); at most ``max_children`` at a time, so a burst is
                    refused (MaxChildrenReached) instead of piling up

Simulated users send requests at random.  The front end (plain code, not an actor) finds the
user's session or starts one, asks it, and has a fresh Render actor do the slow part.  Every
request ends with exactly one outcome; the run prints the counts of both supervisors as it
goes (``count_children()``, which does not list the children) and exits 0 when every
invariant held: no request lost or answered twice, never more renders than allowed, and every
session gone once the users are quiet.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter

import trio

from actors import Actor, ActorCrashed, ActorRef, ActorStopped
from supervisors import (
    ChildSpec,
    DynamicSupervisor,
    DynamicSupervisorSpec,
    MaxChildrenReached,
    open_supervisor,
)

IDLE = 0.5  # seconds without a request before a session stops itself
MAX_RENDERS = 8


class Session(Actor[str, str]):
    """One user's session: counts their requests; stops itself after ``IDLE`` quiet seconds;
    crashes on a "poison" request (it is restarted for the same user)."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.requests = 0
        self.quiet_since = 0.0

    async def on_start(self) -> None:
        self.quiet_since = trio.current_time()
        self.spawn(self._expire)

    async def _expire(self) -> None:
        while True:
            await trio.sleep_until(self.quiet_since + IDLE)
            if trio.current_time() >= self.quiet_since + IDLE:
                self.stop()  # a normal exit: final for a transient child
                return

    async def handle(self, message: str) -> str:
        self.quiet_since = trio.current_time()
        if message == "poison":
            raise RuntimeError(f"session of {self.user} hit a bad request")
        self.requests += 1
        return f"{self.user}#{self.requests}"


class Render(Actor[str, str]):
    """Does one request's slow part, answers, and stops (a temporary, per-request actor)."""

    def __init__(self, work: float) -> None:
        self.work = work

    async def handle(self, message: str) -> str:
        await trio.sleep(self.work)
        self.stop()
        return message.upper()


TREE = [
    DynamicSupervisorSpec(
        "sessions",
        template=ChildSpec("session", Session, restart="transient", shutdown=1.0),
        max_restarts=100,
        period=1.0,
    ),
    DynamicSupervisorSpec(
        "requests",
        template=ChildSpec("render", Render, restart="temporary", shutdown=1.0),
        max_children=MAX_RENDERS,
    ),
]


class FrontEnd:
    """Routes a user's request to their session, starting it when there is none."""

    def __init__(self, sessions: DynamicSupervisor, requests: DynamicSupervisor) -> None:
        self.sessions = sessions
        self.requests = requests
        self.by_user: dict[str, ActorRef[str, str]] = {}
        self.outcomes: Counter[str] = Counter()
        self.peak_renders = 0

    async def request(self, user: str, text: str) -> None:
        self.outcomes["sent"] += 1
        try:
            await self._request(user, text)
        except ActorCrashed:
            self.outcomes["crashed"] += 1  # the poison request itself
        except MaxChildrenReached:
            self.outcomes["busy"] += 1  # too many renders at once: refused, not queued
        else:
            self.outcomes["ok"] += 1

    async def _request(self, user: str, text: str) -> None:
        for _ in range(2):
            session = self.by_user.get(user)
            if session is None:
                session = self.by_user[user] = await self.sessions.start_child(user)
            try:
                await session.ask(text, timeout=2.0)
                break
            except ActorStopped:
                del self.by_user[user]  # it stopped after a quiet spell: start a new one
        if text == "poison":
            return
        render = await self.requests.start_child(0.02)
        self.peak_renders = max(self.peak_renders, self.requests.count_children().active)
        await render.ask(text, timeout=2.0)


async def user(front: FrontEnd, name: str, rng: random.Random, stop_at: float) -> None:
    while trio.current_time() < stop_at:
        text = "poison" if rng.random() < 0.02 else f"hello from {name}"
        await front.request(name, text)
        await trio.sleep(rng.choice((0.01, 0.05, 0.2, 0.8)))  # 0.8 s: the session expires


async def main(seed: int, seconds: float, users: int) -> int:
    rng = random.Random(seed)
    async with open_supervisor(TREE, seed=seed) as root:
        front = FrontEnd(root.dynamic_supervisor("sessions"), root.dynamic_supervisor("requests"))
        stop_at = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for i in range(users):
                nursery.start_soon(user, front, f"user-{i}", random.Random(rng.random()), stop_at)
            while trio.current_time() < stop_at:
                await trio.sleep(min(0.5, max(0.0, stop_at - trio.current_time())))
                s, r = front.sessions.count_children(), front.requests.count_children()
                print(f"sessions active {s.active:>4}   renders active {r.active:>3}")
        await trio.sleep(IDLE * 3)  # the users are quiet: every session stops itself
        left = front.sessions.count_children()
        renders_left = front.requests.count_children()

    o = front.outcomes
    print(f"\nsessions run: seed={seed}, {seconds:g} s, {users} users")
    print(f"requests: {dict(sorted(o.items()))}")
    print(f"most renders at once: {front.peak_renders} (max_children={MAX_RENDERS})")
    problems = []
    if o["sent"] != o["ok"] + o["crashed"] + o["busy"]:
        problems.append(f"{o['sent']} requests sent but {o['ok'] + o['crashed'] + o['busy']} ended")
    if o["ok"] == 0:
        problems.append("no request succeeded")
    if front.peak_renders > MAX_RENDERS:
        problems.append(f"{front.peak_renders} renders ran at once (max {MAX_RENDERS})")
    if left.specs or renders_left.specs:
        problems.append(f"left behind: {left.specs} sessions, {renders_left.specs} renders")
    for problem in problems:
        print(f"INVARIANT VIOLATED: {problem}")
    print("\nall invariants held" if not problems else "")
    return 1 if problems else 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--verbose", action="store_true", help="log every supervision event")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    result: int = trio.run(main, args.seed, args.seconds, args.users)
    return result


if __name__ == "__main__":
    sys.exit(cli())
