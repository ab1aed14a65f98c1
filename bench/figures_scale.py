"""Scale figures: many actors in one process (memory, idle wake-ups, start and stop costs).

Theory of operation
-------------------
* ``plain_actor_bytes``: resident memory per idle plain actor with ``LARGE`` of them (100,000;
  20,000 with ``--quick``) under a dynamic supervisor, each started from the template: the
  process's RSS after the tree started and a ``gc.collect()``, minus the RSS before, divided by
  the number of actors.  Measured in a fresh process (``python -m bench.figures_scale``), so
  what earlier figures allocated and freed cannot hide in the difference.
* ``provider_actor_bytes``: the same for 10,000 idle :class:`~actors.ProviderActor` (default
  settings, reporting to one :class:`~actors.MonitorActor`, which then knows 10,000 services),
  children of one supervisor, specs included.
* ``idle_wakeups_per_actor_s``: in that same process, task steps counted by a trio
  Instrument (``before_task_step``) over at least 5 s of wall-clock time while the 10,000
  providers and their monitor are idle, per provider per second.  The one task that waits out
  the 5 s is not counted.
* ``stop_per_child_large_vs_small``: the time from the end of the ``async with`` body of a tree
  of ``LARGE`` actors (children of one supervisor, stopped one by one in reverse order, as OTP
  does) until ``open_supervisor`` returns, per child, over the same for 1,000 actors; the
  median of per-round ratios (:func:`bench._harness.measure`).
* ``start_child_large_vs_small``: the time to add ``LARGE`` children to a dynamic supervisor
  with ``start_child`` (each one started before the next is added), per child, over the same
  for 1,000.
* ``actors_large``, ``start_large_s``, ``ask_each_large_s``, ``stop_large_s``: the absolute
  times (seconds) to start ``LARGE`` plain actors under a dynamic supervisor (one
  ``start_child`` each), to ask each of them once (one caller, one ask after the other), and
  to stop them all (the tree's end), from the memory figure's process.  Absolute times do not
  travel between machines: they are printed to show the order of magnitude, without goals.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from typing import Any

import trio

from actors import Actor, MonitorActor, ProviderActor
from bench._harness import Figure, measure, now_ns
from bench._soak_truth import rss_bytes
from supervisors import ChildSpec, DynamicSupervisorSpec, SupervisorSpec, open_supervisor

__all__ = ["GOALS", "collect"]

GOALS = {
    "plain_actor_bytes": ("<=", 6144.0),
    "provider_actor_bytes": ("<=", 20480.0),
    "idle_wakeups_per_actor_s": ("<=", 0.01),
    "stop_per_child_large_vs_small": ("<=", 1.5),
    "start_child_large_vs_small": ("<=", 1.5),
}

LARGE = 100_000
LARGE_QUICK = 20_000
SMALL = 1_000
PROVIDERS = 10_000
IDLE_SECONDS = 5.0


class Echo(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        return message


async def _service(payload: Any) -> Any:
    return payload


class _Steps(trio.abc.Instrument):
    """Counts task steps while ``counting``, except those of the task that waits."""

    def __init__(self) -> None:
        self.steps = 0
        self.counting = False
        self.waiter: trio.lowlevel.Task | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting and task is not self.waiter:
            self.steps += 1


# --------------------------------------------------------------------- in a fresh process


async def _plain(n: int) -> dict[str, float]:
    pool_spec = DynamicSupervisorSpec("pool", template=ChildSpec("a", Echo))
    async with open_supervisor([pool_spec]) as root:  # warm up: imports, caches, first allocs
        for _ in range(100):
            await root.dynamic_supervisor("pool").start_child()
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    async with open_supervisor([pool_spec]) as root:
        pool = root.dynamic_supervisor("pool")
        refs = [await pool.start_child() for _ in range(n)]
        t1 = time.perf_counter()
        gc.collect()
        after = rss_bytes()
        t2 = time.perf_counter()
        for i, ref in enumerate(refs):
            await ref.ask(i)
        t3 = time.perf_counter()
        del refs
    t4 = time.perf_counter()
    return {
        "plain_actor_bytes": (after - before) / n,
        "start_large_s": t1 - t0,
        "ask_each_large_s": t3 - t2,
        "stop_large_s": t4 - t3,
    }


async def _providers(n: int, steps: _Steps) -> dict[str, float]:
    def provider(i: int) -> ChildSpec[Any, Any]:
        name = f"p{i}"
        return ChildSpec(name, lambda: ProviderActor(name, _service, monitor="monitor"))

    async with open_supervisor([ChildSpec("monitor", MonitorActor), provider(0)]):
        pass  # warm up
    gc.collect()
    before = rss_bytes()
    tree = [
        ChildSpec("monitor", MonitorActor),
        SupervisorSpec("providers", map(provider, range(n))),
    ]
    async with open_supervisor(tree):
        await trio.sleep(1.0)  # the start-up reports reach the monitor and are handled
        gc.collect()
        after = rss_bytes()
        steps.waiter = trio.lowlevel.current_task()
        steps.steps = 0
        steps.counting = True
        started = time.perf_counter()
        await trio.sleep(IDLE_SECONDS)
        counted = time.perf_counter() - started
        steps.counting = False
    return {
        "provider_actor_bytes": (after - before) / n,
        "idle_wakeups_per_actor_s": steps.steps / n / counted,
    }


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.figures_scale")
    parser.add_argument("what", choices=("plain", "providers"))
    parser.add_argument("n", type=int)
    args = parser.parse_args(argv)
    if args.what == "plain":
        result = trio.run(_plain, args.n)
    else:
        steps = _Steps()
        result = trio.run(_providers, args.n, steps, instruments=[steps])
    print(json.dumps(result))


def _in_fresh_process(what: str, n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.figures_scale", what, str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


# --------------------------------------------------------------------- interleaved ratios


def _stop(n: int) -> float:
    """ns per child to stop a tree of ``n`` actors (one supervisor, reverse order)."""
    spec = SupervisorSpec("root", [ChildSpec(f"a{i}", Echo) for i in range(n)])

    async def body() -> float:
        async with open_supervisor(spec):
            t0 = now_ns()
        return (now_ns() - t0) / n

    return trio.run(body)


def _start_child(n: int) -> float:
    """ns per child to add ``n`` children to a dynamic supervisor, one after the other."""

    async def body() -> float:
        pool_spec = DynamicSupervisorSpec("pool", template=ChildSpec("a", Echo))
        async with open_supervisor([pool_spec]) as root:
            pool = root.dynamic_supervisor("pool")
            t0 = now_ns()
            for _ in range(n):
                await pool.start_child()
            return (now_ns() - t0) / n

    return trio.run(body)


def collect(quick: bool) -> dict[str, Figure | float]:
    """Measure the figures listed in the module docstring."""
    large = LARGE_QUICK if quick else LARGE
    rounds = 3 if quick else 5
    figures: dict[str, Figure | float] = {"actors_large": float(large)}
    figures.update(_in_fresh_process("plain", large))
    figures.update(_in_fresh_process("providers", PROVIDERS))
    for size in (SMALL, 2 * SMALL):  # warm up both paths (imports, first allocations)
        _stop(size)
        _start_child(size)
    figures.update(
        measure(
            {"stop_small": lambda _: _stop(SMALL), "stop_large": lambda _: _stop(large)},
            lambda ns: {"stop_per_child_large_vs_small": ns["stop_large"] / ns["stop_small"]},
            n=large,
            rounds=rounds,
            warm_up=False,
        )
    )
    figures.update(
        measure(
            {
                "start_small": lambda _: _start_child(SMALL),
                "start_large": lambda _: _start_child(large),
            },
            lambda ns: {"start_child_large_vs_small": ns["start_large"] / ns["start_small"]},
            n=large,
            rounds=rounds,
            warm_up=False,
        )
    )
    return figures


if __name__ == "__main__":
    _child_main(sys.argv[1:])
