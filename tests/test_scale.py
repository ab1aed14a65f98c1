"""Many actors in one process: 100,000 of them, idle ones that never wake, and stop, start and
terminate costs that do not grow with the number of children.

Costs are counted, never timed: the work of an operation is the number of Python lines it
executes (a ``sys.settrace`` line counter), and an idle actor's wake-ups are the task steps a
trio Instrument sees over virtual time.  Wall-clock figures are in ``bench/figures_scale.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Actor,
    ActorRef,
    ActorStopped,
    CellState,
    MonitorActor,
    Provider,
    ProviderActor,
)
from supervisors import (
    ChildCounts,
    ChildSpec,
    DynamicSupervisorSpec,
    SupervisorSpec,
    open_supervisor,
)

MANY = 100_000


class Echo(Actor[int, int]):
    async def handle(self, message: int) -> int:
        return message


async def _echo_service(payload: Any) -> Any:
    return payload


def _count_tasks() -> int:
    """The tasks alive in this trio run (walked from the root task)."""
    count = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


class _Lines:
    """Counts the Python lines executed while ``counting`` (a work count, not a timing)."""

    def __init__(self) -> None:
        self.lines = 0

    def _local(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            self.lines += 1
        return self._local

    def _global(self, frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_lines = True
        return self._local

    async def count(self, work: Callable[[], Awaitable[object]]) -> int:
        previous = sys.gettrace()
        self.lines = 0
        sys.settrace(self._global)
        try:
            await work()
        finally:
            sys.settrace(previous)
        return self.lines


# --------------------------------------------------------------------- 100,000 actors


async def test_one_hundred_thousand_actors_start_answer_and_stop() -> None:
    """100,000 plain actors in one process: every one starts, answers its ask with its own
    value, and stops; nothing is left running and the counts say so at every step.

    On trio's real clock: nothing here waits for time, and a MockClock's autojump task would
    be woken at every idle moment of the scheduler, tripling the run time."""
    before = _count_tasks()
    spec = SupervisorSpec("root", [ChildSpec(f"a{i}", Echo) for i in range(MANY)])
    async with open_supervisor(spec) as root:
        assert root.count_children() == ChildCounts(
            specs=MANY, active=MANY, supervisors=0, workers=MANY
        )
        # One task per actor, and nothing else per actor.
        assert _count_tasks() - before <= MANY + 10
        refs: list[ActorRef[int, int]] = [root.ref(f"a{i}") for i in range(MANY)]
        answered = 0
        for i, ref in enumerate(refs):
            assert await ref.ask(i) == i
            answered += 1
        assert answered == MANY
    assert _count_tasks() == before
    stats = [ref.statistics() for ref in refs]
    assert all(stat.state is CellState.STOPPED for stat in stats)
    assert sum(stat.handled for stat in stats) == MANY
    with pytest.raises(ActorStopped):
        await refs[MANY // 2].ask(0)


# --------------------------------------------------------------------- idle actors sleep


class _Steps(trio.abc.Instrument):
    """Counts the task steps of every task but ``waiter``."""

    def __init__(self, waiter: trio.lowlevel.Task) -> None:
        self.waiter = waiter
        self.steps: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self.waiter:
            self.steps.append(task.name)


async def test_idle_actors_providers_and_monitor_take_no_task_step(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Plain actors, provider actors and their monitor, once idle (their calls answered, the
    reports delivered, the monitor's windows aged out, the idempotency records expired), are
    never scheduled: over an idle day of virtual time no task of the tree takes a step."""

    def provider(i: int) -> ChildSpec[Any, Any]:
        return ChildSpec(f"p{i}", lambda: ProviderActor(f"p{i}", _echo_service, monitor="monitor"))

    tree = [
        ChildSpec("monitor", MonitorActor),
        SupervisorSpec("providers", [provider(i) for i in range(20)]),
        DynamicSupervisorSpec("pool", template=ChildSpec("a", Echo)),
    ]
    async with open_supervisor(tree) as root:
        pool = root.dynamic_supervisor("pool")
        plain = [await pool.start_child() for _ in range(20)]
        for i, ref in enumerate(plain):
            assert await ref.ask(i) == i
        for i in range(20):
            client = Provider(root.ref(f"providers/p{i}", ProviderActor))
            assert await client.call(i) == i
            assert await client.call(i, key=f"k{i}") == i
        # Everything due happens: reports, the windows' ageing, the records' expiry (24 h).
        await trio.sleep(2 * 86_400.0)
        steps = _Steps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            await trio.sleep(86_400.0)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.steps == []
        assert root.count_children().active == 3


# --------------------------------------------------------------------- costs per child


async def _stop_work(n: int) -> int:
    """Lines executed to stop a tree of ``n`` plain actors (from the end of its body)."""
    lines = _Lines()
    spec = SupervisorSpec("root", [ChildSpec(f"a{i}", Echo) for i in range(n)])
    manager = open_supervisor(spec)
    await manager.__aenter__()
    return await lines.count(lambda: manager.__aexit__(None, None, None))


async def test_stopping_a_tree_costs_the_same_per_child_at_any_size(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Stopping a tree does O(n) work: per child, a tree of 800 actors executes no more
    lines than one of 100 (within a tenth)."""
    small, large = await _stop_work(100), await _stop_work(800)
    assert large / 800 <= 1.1 * small / 100, (small, large)


async def _added_work(existing: int, added: int, *, terminate: bool) -> int:
    """Lines executed to start ``added`` dynamic children (or to terminate them) next to
    ``existing`` others."""
    lines = _Lines()
    spec = DynamicSupervisorSpec("pool", template=ChildSpec("a", Echo))
    async with open_supervisor([spec]) as root:
        pool = root.dynamic_supervisor("pool")
        for _ in range(existing):
            await pool.start_child()
        refs: list[ActorRef[Any, Any]] = []

        async def start() -> None:
            for _ in range(added):
                refs.append(await pool.start_child())

        async def stop() -> None:
            for ref in refs:
                await pool.terminate_child(ref)

        started = await lines.count(start)
        if not terminate:
            return started
        stopped = await lines.count(stop)
        assert pool.count_children().active == existing
        return stopped


@pytest.mark.parametrize("terminate", [False, True], ids=["start_child", "terminate_child"])
async def test_dynamic_start_and_terminate_cost_the_same_whatever_the_children(
    mock_clock: trio.testing.MockClock, terminate: bool
) -> None:
    """Starting (or terminating) 50 dynamic children next to 2,000 others executes no more
    lines than next to 10 (within a tenth): O(1) each."""
    few = await _added_work(10, 50, terminate=terminate)
    many = await _added_work(2_000, 50, terminate=terminate)
    assert many <= 1.1 * few, (few, many)


# --------------------------------------------------------------------- what an actor holds


async def test_an_idle_plain_actor_holds_no_lazily_made_structure(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A plain actor's slot makes its waiting senders' parking lot, its kept state and its
    incarnation's background-task set only when they are first needed."""

    class Spawner(Actor[str, str]):
        async def handle(self, message: str) -> str:
            self.spawn(trio.sleep_forever)
            return message

    async with open_supervisor([ChildSpec("idle", Echo), ChildSpec("spawner", Spawner)]) as root:
        idle = root.ref("idle", Echo)
        assert await idle.ask(1) == 1
        cell = idle._cell
        assert cell.space is None
        assert cell._keep is None
        assert cell.incarnation is not None
        assert cell.incarnation.background is None
        spawner = root.ref("spawner", Spawner)
        assert await spawner.ask("go") == "go"
        await trio.testing.wait_all_tasks_blocked()
        inc = spawner._cell.incarnation
        assert inc is not None
        assert inc.background is not None
        assert len(inc.background) == 1
