"""Runtime-core figures: ask round trip vs the bare-trio floor, tell throughput, restart cost.

* ``ask_ns``: one ``ref.ask`` to an actor that replies at once, the default ask timeout in
  force (the reply is registered with the runtime's timer).
* ``floor_ask_ns``: the same request/response written with bare trio: a server task reading
  ``(request, trio.Event, slot)`` from a memory channel, filling the slot, setting the event.
* ``ask_vs_floor``: their ratio.
* ``tell_per_s``: messages per second from one sender awaiting ``ref.tell`` to a counting actor.
* ``restart_us``: from sending a message that crashes a supervised actor to the reply, from the
  restarted actor, to the message queued right behind it; ``restart_vs_ask`` its ratio to
  ``ask_ns``.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
import trio.lowlevel

from actors import Actor, open_actor
from bench._harness import interleave, now_ns, timed_trio
from supervisors import ChildSpec, open_supervisor

GOALS = {"ask_vs_floor": ("<=", 1.5), "restart_vs_ask": ("<=", 5.0)}


class Echo(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash requested")
        return message


class Count(Actor[Any, int]):
    def __init__(self) -> None:
        self.n = 0

    async def handle(self, message: Any) -> int:
        self.n += 1
        return self.n


async def _ask(n: int) -> float:
    async with open_actor(Echo) as ref:
        await ref.ask(0)
        t0 = now_ns()
        for i in range(n):
            await ref.ask(i)
        return (now_ns() - t0) / n


async def _floor(n: int) -> float:
    send, receive = trio.open_memory_channel[tuple[int, trio.Event, list[int]]](100)

    async def server() -> None:
        async for request, event, slot in receive:
            slot.append(request)
            event.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await trio.lowlevel.checkpoint()
        t0 = now_ns()
        for i in range(n):
            event = trio.Event()
            slot: list[int] = []
            await send.send((i, event, slot))
            await event.wait()
        elapsed = (now_ns() - t0) / n
        nursery.cancel_scope.cancel()
    return elapsed


async def _tell(n: int) -> float:
    async with open_actor(Count, capacity=1000) as ref:
        t0 = now_ns()
        for i in range(n):
            await ref.tell(i)
        await ref.ask("sync")
        return (now_ns() - t0) / n


async def _restart(n: int) -> float:
    spec = ChildSpec("echo", Echo)
    async with open_supervisor([spec], max_restarts=10**9, period=1.0) as root:
        ref = root.ref("echo")
        total = 0
        for i in range(n):
            t0 = now_ns()
            ref.tell_nowait("crash")  # queued first: crashes the actor
            await ref.ask(i)  # queued behind it: answered by the restarted actor
            total += now_ns() - t0
        return total / n


def collect(quick: bool) -> dict[str, float]:
    # Restarts log a warning per crash; the figure measures supervision, not a log handler.
    logging.getLogger("supervisors").setLevel(logging.CRITICAL)
    n, reps = (3000, 5) if quick else (20000, 9)
    asks = interleave({"ask": timed_trio(_ask), "floor": timed_trio(_floor)}, n=n, reps=reps)
    tell = interleave({"tell": timed_trio(_tell)}, n=n, reps=reps)["tell"]
    restart_n = 200 if quick else 1000
    both = interleave(
        {"restart": timed_trio(_restart), "ask": timed_trio(_ask)}, n=restart_n, reps=reps
    )
    return {
        "ask_ns": asks["ask"],
        "floor_ask_ns": asks["floor"],
        "ask_vs_floor": asks["ask"] / asks["floor"],
        "tell_per_s": 1e9 / tell,
        "restart_us": both["restart"] / 1000,
        "restart_vs_ask": both["restart"] / both["ask"],
    }
