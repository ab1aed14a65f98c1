"""Supervision at the edges: control requests cut short, children that block in ``on_start``
during a restart, ``on_stop`` errors, and stray cancellations."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from actors import Actor, ActorCrashed
from supervisors import (
    ChildSpec,
    EventKind,
    SupervisionEvent,
    SupervisorNotRunning,
    open_supervisor,
)
from tests.test_actor_core import StrayCancel


class Echo(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crashed on purpose")
        return message


class SlowStop(Echo):
    async def on_stop(self) -> None:
        await trio.sleep(3600.0)


class BadStop(Echo):
    async def on_stop(self) -> None:
        raise ValueError("cleanup failed")


def blocks_on_restart() -> Callable[[], Actor[Any, Any]]:
    """A factory whose second and later actors block in ``on_start`` forever."""
    starts = 0

    class Blocking(Echo):
        async def on_start(self) -> None:
            nonlocal starts
            starts += 1
            if starts > 1:
                await trio.sleep_forever()

    return Blocking


async def test_a_control_request_cut_short_by_cancellation_is_answered(
    mock_clock: trio.testing.MockClock,
) -> None:
    """terminate_child of a child with a slow on_stop, when the tree is cancelled meanwhile,
    answers its caller (SupervisorNotRunning) instead of leaving it waiting."""
    outcome: list[BaseException | None] = []
    done = trio.Event()

    async def terminate(root: Any) -> None:
        try:
            await root.terminate_child("slow")
            outcome.append(None)
        except SupervisorNotRunning as exc:
            outcome.append(exc)
        finally:
            done.set()

    async with trio.open_nursery() as outer:
        with trio.move_on_after(10.0):
            tree = [ChildSpec("slow", SlowStop, shutdown=math.inf)]
            async with open_supervisor(tree) as root:
                outer.start_soon(terminate, root)
                await trio.sleep_forever()
        with trio.move_on_after(1.0) as late:
            await done.wait()
        assert not late.cancelled_caught, "the control request was never answered"
    assert len(outcome) == 1
    assert isinstance(outcome[0], SupervisorNotRunning)


async def test_a_child_blocking_in_on_start_during_a_restart_does_not_freeze_the_tree(
    mock_clock: trio.testing.MockClock,
) -> None:
    """While a restarted child blocks in on_start, leaving the body still stops the tree
    within that child's shutdown grace, and a control request made meanwhile is answered."""
    tree = [ChildSpec("a", Echo), ChildSpec("b", blocks_on_restart(), shutdown=2.0)]
    answered: list[BaseException] = []
    with trio.move_on_after(3600.0) as guard:
        async with trio.open_nursery() as outer:
            async with open_supervisor(tree, strategy="one_for_all") as root:
                with pytest.raises(ActorCrashed):
                    await root.ref("b").ask("crash")
                await trio.testing.wait_all_tasks_blocked()  # b blocks in on_start

                async def control() -> None:
                    try:
                        await root.restart_child("a")
                    except SupervisorNotRunning as exc:
                        answered.append(exc)

                outer.start_soon(control)
                await trio.testing.wait_all_tasks_blocked()
                start = trio.current_time()
            assert trio.current_time() - start == pytest.approx(2.0)
    assert not guard.cancelled_caught, "the tree's shutdown hung"
    assert len(answered) == 1


async def test_on_stop_errors_in_a_supervised_stop_are_reported(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_stop that raises while its supervisor stops the child (terminate_child, the
    tree's shutdown) is reported as a crash event and logged, not dropped."""
    caplog.set_level(logging.INFO, logger="supervisors")
    events: list[SupervisionEvent] = []
    async with open_supervisor([ChildSpec("x", BadStop), ChildSpec("y", BadStop)]) as root:
        root.add_listener(events.append)
        await root.terminate_child("x")
    crashed = [e for e in events if e.kind is EventKind.CRASHED]
    assert [e.path for e in crashed] == ["x", "y"]
    assert all("ValueError: cleanup failed" in e.reason for e in crashed)
    assert sum("cleanup failed" in r.getMessage() for r in caplog.records) == 2


async def test_a_stray_cancelled_is_a_crash(mock_clock: trio.testing.MockClock) -> None:
    """trio.Cancelled raised by actor code outside any cancelled scope is a crash: the caller
    gets ActorCrashed, a crash event is emitted and a transient child is restarted."""
    events: list[SupervisionEvent] = []
    async with open_supervisor([ChildSpec("t", StrayCancel, restart="transient")]) as root:
        root.add_listener(events.append)
        with pytest.raises(ActorCrashed):
            await root.ref("t").ask("x")
        await trio.testing.wait_all_tasks_blocked()
        assert root.ref("t").statistics().incarnation == 2
        assert [e.kind for e in events] == [EventKind.CRASHED, EventKind.RESTARTED]
        assert "stray trio.Cancelled" in events[0].reason
