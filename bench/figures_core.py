"""Runtime-core figures: an ask against the minimal two-task floor, tell throughput, restarts.

Theory of operation
-------------------
* ``ask_ns``: one ``ref.ask`` to an actor that replies at once, the default ask timeout in
  force (the reply is registered with the runtime's timer).
* ``min_floor_ask_ns``: the least work that carries a request to another task and its reply
  back: two tasks, a ``collections.deque`` of requests, and
  ``trio.lowlevel.wait_task_rescheduled`` / ``reschedule`` to park and wake each side.  No
  channel, no event, no timeout.
* ``ask_vs_min_floor``: ask over floor, the median of per-round ratios.  Both sides take the
  same number of trio task steps per round trip (two: the server wakes, the client wakes);
  :func:`collect` counts them with a trio Instrument in an untimed run and refuses to report
  the figure if they differ (``ask_task_steps`` and ``min_floor_task_steps``).
* ``tell_per_s``: messages per second from one sender awaiting ``ref.tell`` to a counting actor.
* ``restart_us``: from sending a message that crashes a supervised actor to the reply, from the
  restarted actor, to the message queued right behind it, with logging as an application has
  it (a handler at ``WARNING`` on the root logger: each crash is logged and formatted);
  ``restart_vs_ask`` its per-round ratio to ``ask_ns`` measured in the same rounds.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import outcome
import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from actors import Actor, open_actor
from bench._harness import Figure, StepCounter, default_logging, measure, now_ns, timed_trio
from supervisors import ChildSpec, open_supervisor

GOALS = {"ask_vs_min_floor": ("<=", 1.15), "restart_vs_ask": ("<=", 3.0)}


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


async def _ask(n: int, steps: StepCounter | None = None) -> float:
    async with open_actor(Echo) as ref:
        await ref.ask(0)
        if steps is not None:
            steps.counting = True
        t0 = now_ns()
        for i in range(n):
            await ref.ask(i)
        elapsed = now_ns() - t0
        if steps is not None:
            steps.counting = False
        return elapsed / n


class _Parked:
    """Which task of the floor is parked, if any."""

    server: Task | None = None
    client: Task | None = None


async def _min_floor(n: int, steps: StepCounter | None = None) -> float:
    requests: deque[int] = deque()
    parked = _Parked()

    def server_abort(_: Any) -> Abort:
        parked.server = None
        return Abort.SUCCEEDED

    def client_abort(_: Any) -> Abort:
        parked.client = None
        return Abort.SUCCEEDED

    async def server() -> None:
        while True:
            if not requests:
                parked.server = current_task()
                await wait_task_rescheduled(server_abort)
            request = requests.popleft()
            client, parked.client = parked.client, None
            assert client is not None
            reschedule(client, outcome.Value(request))

    async def ask(request: int) -> int:
        requests.append(request)
        if parked.server is not None:
            task, parked.server = parked.server, None
            reschedule(task)
        parked.client = current_task()
        reply: int = await wait_task_rescheduled(client_abort)
        return reply

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await ask(0)
        if steps is not None:
            steps.counting = True
        t0 = now_ns()
        for i in range(n):
            await ask(i)
        elapsed = now_ns() - t0
        if steps is not None:
            steps.counting = False
        nursery.cancel_scope.cancel()
    return elapsed / n


def task_steps(body: Any, n: int = 2000) -> float:
    """Trio task steps per operation of ``body`` (run once, untimed, with a step counter)."""
    counter = StepCounter()
    trio.run(body, n, counter, instruments=[counter])
    return counter.steps / n


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


def _asks(ns: dict[str, float]) -> dict[str, float]:
    return {
        "ask_ns": ns["ask"],
        "min_floor_ask_ns": ns["floor"],
        "ask_vs_min_floor": ns["ask"] / ns["floor"],
    }


def _restarts(ns: dict[str, float]) -> dict[str, float]:
    return {"restart_us": ns["restart"] / 1000, "restart_vs_ask": ns["restart"] / ns["ask"]}


def collect(quick: bool) -> dict[str, Figure | float]:
    """Measure the figures listed in the module docstring."""
    ask_steps, floor_steps = task_steps(_ask), task_steps(_min_floor)
    if abs(ask_steps - floor_steps) > 0.01:
        raise AssertionError(
            f"an ask takes {ask_steps:.3f} task steps per round trip and the floor "
            f"{floor_steps:.3f}: the floor is not doing the same work"
        )
    n, rounds = (2000, 15) if quick else (10000, 41)
    figures: dict[str, Figure | float] = {
        "ask_task_steps": ask_steps,
        "min_floor_task_steps": floor_steps,
    }
    figures.update(
        measure(
            {"ask": timed_trio(_ask), "floor": timed_trio(_min_floor)}, _asks, n=n, rounds=rounds
        )
    )
    tell = measure({"tell": timed_trio(_tell)}, dict, n=n, rounds=max(5, rounds // 3))["tell"]
    figures["tell_per_s"] = tell.inverse(1e9)
    restart_n = 200 if quick else 1000
    with default_logging():
        figures.update(
            measure(
                {"restart": timed_trio(_restart), "ask": timed_trio(_ask)},
                _restarts,
                n=restart_n,
                rounds=rounds,
            )
        )
    return figures
