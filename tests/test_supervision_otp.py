"""Erlang/OTP's supervisor semantics where children fail to start, and child administration.

Each test is named after the OTP behaviour it checks (most after the case of OTP's own
``supervisor_SUITE`` that checks it there): ``failed_to_start_child`` at start, failed restarts
during group restarts (``*_other_child_fails_restart``) and their escalation, ``start_child`` /
``restart_child`` reporting a start error, ``child_adm`` (terminate, restart, delete), the
``restarting`` state of ``hanging_restart_loop``, ``sup_flags`` (no infinite period), and a
transient supervisor that gave up (``shutdown``) not being restarted.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from actors import Actor, ActorCrashed, ActorStopped
from supervisors import (
    ChildCounts,
    ChildRunning,
    ChildSpec,
    ChildStartFailed,
    EventKind,
    NoSuchChild,
    RestartBackoff,
    SupervisionEvent,
    Supervisor,
    SupervisorGaveUp,
    SupervisorSpec,
    open_supervisor,
)

LOG: list[tuple[str, str]] = []
#: Paths whose next starts fail: the number of starts left to fail (-1: every start).
FAIL: dict[str, int] = {}


class StartFails(OSError):
    """The start of a child failed on purpose."""


class Worker(Actor[Any, Any]):
    """Logs its starts and stops; its start fails while ``FAIL`` says so; "crash" crashes it."""

    async def on_start(self) -> None:
        left = FAIL.get(self.path, 0)
        if left:
            FAIL[self.path] = left - 1 if left > 0 else left
            LOG.append(("start-failed", self.path))
            raise StartFails(f"{self.path} cannot start")
        LOG.append(("start", self.path))

    async def on_stop(self) -> None:
        LOG.append(("stop", self.path))

    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.path} crashed on purpose")
        return (self.path, message)


@pytest.fixture(autouse=True)
def _reset() -> None:
    LOG.clear()
    FAIL.clear()


def w(name: str, restart: str = "permanent", **kw: Any) -> ChildSpec[Any, Any]:
    return ChildSpec(name, Worker, restart=restart, **kw)


async def crash(root: Supervisor, path: str) -> None:
    with pytest.raises(ActorCrashed):
        await root.ref(path).ask("crash")
    await trio.testing.wait_all_tasks_blocked()


def states(root: Supervisor) -> dict[str, tuple[str, int]]:
    return {n.path: (n.state, n.restarts) for n in root.snapshot().walk() if n.path}


# ---------------------------------------------------------------------- failed_to_start_child


async def test_failed_to_start_child_at_start_stops_started_children_in_reverse(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP init_children: a child that fails to start makes ``open_supervisor`` raise
    ``ChildStartFailed`` naming it and its cause at once (no retry, no time spent even with a
    restart backoff), after stopping the children already started in reverse order; the body
    never runs and the children after it never start."""
    FAIL["c"] = -1
    backoff = RestartBackoff(min_delay=5, max_delay=60, jitter=0)
    body_ran = False
    with pytest.raises(ChildStartFailed) as info:
        async with open_supervisor([w("a"), w("b"), w("c"), w("d")], backoff=backoff):
            body_ran = True
    assert not body_ran
    assert trio.current_time() == 0.0
    error = info.value
    assert (error.path, error.origin) == ("c", "c")
    assert isinstance(error.cause, StartFails)
    assert error.__cause__ is error.cause
    assert "Child 'c' failed to start: StartFails: c cannot start" in str(error)
    assert LOG == [
        ("start", "a"),
        ("start", "b"),
        ("start-failed", "c"),
        ("stop", "b"),
        ("stop", "a"),
    ]


async def test_failed_to_start_child_in_a_nested_supervisor_propagates(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP: a supervisor whose child fails to start fails to start itself
    (``{shutdown, {failed_to_start_child, ...}}``), and so on up to ``open_supervisor``; each
    level stops what it had started, in reverse order."""
    FAIL["outer/inner/y"] = -1
    inner = SupervisorSpec("inner", [w("x"), w("y"), w("z")])
    outer = SupervisorSpec("outer", [w("first"), inner, w("last")])
    with pytest.raises(ChildStartFailed) as info:
        async with open_supervisor([w("top"), outer]):
            pytest.fail("the body must not run")
    error = info.value
    assert error.path == "outer"
    assert isinstance(error.cause, ChildStartFailed)
    assert error.cause.path == "outer/inner"
    assert error.origin == "outer/inner/y"
    assert isinstance(error.cause.cause, ChildStartFailed)
    assert isinstance(error.cause.cause.cause, StartFails)
    assert str(error) == (
        "Child 'outer' failed to start: its child 'outer/inner' failed to start: its child "
        "'outer/inner/y' failed to start: StartFails: outer/inner/y cannot start."
    )
    assert LOG == [
        ("start", "top"),
        ("start", "outer/first"),
        ("start", "outer/inner/x"),
        ("start-failed", "outer/inner/y"),
        ("stop", "outer/inner/x"),
        ("stop", "outer/first"),
        ("stop", "top"),
    ]


async def test_a_restarted_supervisor_whose_child_fails_to_start_is_a_failed_restart(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP: when a parent restarts a supervisor whose child now fails to start, that is a
    failed restart of the supervisor: retried, and counted toward the parent's intensity."""
    sub = SupervisorSpec("sub", [w("x")], max_restarts=0)
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor([sub], max_restarts=2, period=10) as root:
            FAIL["sub/x"] = -1
            await crash(root, "sub/x")  # sub gives up; its restarts fail until root gives up
            await trio.sleep_forever()
    assert isinstance(info.value.cause, ChildStartFailed)
    assert info.value.cause.origin == "sub/x"
    # The exit counts 1, the failed restart 2, its failed retry 3 > max_restarts: given up.
    assert LOG.count(("start-failed", "sub/x")) == 2


# ---------------------------------------------------------------------- failed restarts


async def test_one_for_one_escalation_failed_restarts_count_toward_intensity(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP one_for_one_escalation: a child that crashes and then fails to start is retried,
    each failed restart counting toward the intensity, until the supervisor gives up and
    stops its other children."""
    events: list[SupervisionEvent] = []
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor([w("a"), w("b")], max_restarts=4, period=3600) as root:
            root.add_listener(events.append)
            FAIL["a"] = -1
            await crash(root, "a")
            await trio.sleep_forever()
    assert isinstance(info.value.cause, StartFails)
    assert LOG.count(("start-failed", "a")) == 4  # restarts 1..4; the 5th count gives up
    assert LOG[-1] == ("stop", "b")
    crashed = [e.reason for e in events if e.kind is EventKind.CRASHED]
    assert crashed[0].startswith("RuntimeError")
    assert all(r.endswith("(failed to start)") for r in crashed[1:])
    assert len(crashed) == 5


async def test_one_for_one_failed_restart_is_retried_until_it_starts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP try_again_restart: within the intensity, a failed restart is retried (after the
    backoff delay when there is one) and the child comes back."""
    backoff = RestartBackoff(min_delay=1, max_delay=10, factor=2, jitter=0)
    async with open_supervisor([w("a")], max_restarts=5, period=100, backoff=backoff) as root:
        FAIL["a"] = 2
        started = trio.current_time()
        await crash(root, "a")
        assert await root.ref("a").ask("ping") == ("a", "ping")  # waits for the restart
        assert trio.current_time() - started == pytest.approx(1 + 2 + 4)
        assert states(root)["a"] == ("running", 1)
    assert [e for e in LOG if e[1] == "a"][:4] == [
        ("start", "a"),
        ("start-failed", "a"),
        ("start-failed", "a"),
        ("start", "a"),
    ]


async def test_rest_for_one_other_child_fails_restart(mock_clock: trio.testing.MockClock) -> None:
    """OTP rest_for_one_other_child_fails_restart: a group restart stops at the first child
    that fails to start; the children after it stay down (never started) until it starts;
    then the rest of the group starts after it, in order."""
    backoff = RestartBackoff(min_delay=1, max_delay=1, jitter=0)
    children = [w("a"), w("db"), w("web"), w("api")]
    async with open_supervisor(
        children, strategy="rest_for_one", max_restarts=10, period=100, backoff=backoff
    ) as root:
        FAIL["db"] = 3
        LOG.clear()
        await crash(root, "db")
        for _ in range(3):  # each retry waits the backoff; web and api stay down meanwhile
            await trio.sleep(1)
            await trio.testing.wait_all_tasks_blocked()
            snapshot = states(root)
            assert snapshot["web"][0] == "restarting"
            assert snapshot["api"][0] == "restarting"
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        assert {path: state for path, (state, _) in states(root).items()} == dict.fromkeys(
            ["a", "db", "web", "api"], "running"
        )
    assert LOG[:8] == [
        ("stop", "api"),
        ("stop", "web"),
        ("start-failed", "db"),
        ("start-failed", "db"),
        ("start-failed", "db"),
        ("start", "db"),
        ("start", "web"),
        ("start", "api"),
    ]
    assert ("start", "a") not in LOG  # a, before db, was never touched


async def test_rest_for_one_a_later_child_fails_restart(mock_clock: trio.testing.MockClock) -> None:
    """When a later child of the group fails to start, the group restart stops there: the
    children after it stay down, and its own restart (counted) starts them after it."""
    children = [w("db"), w("web"), w("api")]
    async with open_supervisor(children, strategy="rest_for_one", max_restarts=5) as root:
        FAIL["web"] = 1
        LOG.clear()
        await crash(root, "db")
        assert LOG == [
            ("stop", "api"),
            ("stop", "web"),
            ("start", "db"),
            ("start-failed", "web"),
            ("start", "web"),
            ("start", "api"),
        ]
        assert {s for s, _ in states(root).values()} == {"running"}


async def test_one_for_all_other_child_fails_restart(mock_clock: trio.testing.MockClock) -> None:
    """OTP one_for_all_other_child_fails_restart: when a child fails to start during a
    one_for_all restart, the children restarted before it are stopped again and the whole
    group is restarted once more."""
    async with open_supervisor([w("c1"), w("c2"), w("c3")], strategy="one_for_all") as root:
        FAIL["c2"] = 1
        LOG.clear()
        await crash(root, "c1")
        assert LOG == [
            ("stop", "c3"),
            ("stop", "c2"),
            ("start", "c1"),
            ("start-failed", "c2"),  # c3 is never started in this attempt
            ("stop", "c1"),  # the restarted c1 is stopped again
            ("start", "c1"),
            ("start", "c2"),
            ("start", "c3"),
        ]
        assert {s for s, _ in states(root).values()} == {"running"}


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_group_escalation_when_a_child_never_starts_again(
    mock_clock: trio.testing.MockClock, strategy: str
) -> None:
    """OTP one_for_all_escalation / rest_for_one_escalation: a sibling that never starts
    again makes the group restart fail every time, until the supervisor gives up."""
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor(
            [w("c1"), w("c2")], strategy=strategy, max_restarts=4, period=3600
        ) as root:
            FAIL["c2"] = -1
            await crash(root, "c1")
            await trio.sleep_forever()
    assert isinstance(info.value.cause, StartFails)
    assert info.value.child == "c2"
    assert LOG.count(("start-failed", "c2")) == 4


# ---------------------------------------------------------------------- start errors


async def test_start_child_returns_error_and_the_supervisor_is_unaffected(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP sup_start_child_returns_error: start_child whose start fails raises
    ChildStartFailed (its cause attached); the child is not kept, nothing is restarted and
    no restart is counted (max_restarts=0 and the supervisor still runs)."""
    async with open_supervisor([w("a")], max_restarts=0) as root:
        FAIL["b"] = -1
        with pytest.raises(ChildStartFailed) as info:
            await root.start_child(w("b"))
        assert isinstance(info.value.cause, StartFails)
        assert info.value.path == "b"
        assert [n.path for n in root.snapshot().walk()] == ["", "a"]
        with pytest.raises(NoSuchChild):
            root.ref("b")
        FAIL.clear()
        ref = await root.start_child(w("b"))  # the name is free again
        assert await ref.ask(1) == ("b", 1)
        assert states(root)["a"] == ("running", 0)


async def test_restart_child_returns_error_and_the_child_stays_down(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP sup_start_restart_child_returns_error: restart_child of a terminated child whose
    start fails raises ChildStartFailed; the child stays terminated (its ref stopped), the
    supervisor is unaffected and no restart is counted; a later restart_child works."""
    async with open_supervisor([w("a"), w("b")], max_restarts=0) as root:
        ref = root.ref("b")
        await root.terminate_child("b")
        FAIL["b"] = 1
        with pytest.raises(ChildStartFailed) as info:
            await root.restart_child("b")
        assert isinstance(info.value.cause, StartFails)
        await trio.testing.wait_all_tasks_blocked()
        assert states(root) == {"a": ("running", 0), "b": ("stopped", 0)}
        with pytest.raises(ActorStopped):
            await ref.ask(1)
        await root.restart_child("b")
        assert await ref.ask(2) == ("b", 2)
        assert states(root) == {"a": ("running", 0), "b": ("running", 1)}


# ---------------------------------------------------------------------- administration


async def test_child_adm(mock_clock: trio.testing.MockClock) -> None:
    """OTP child_adm: terminate_child keeps the spec until delete_child; restart_child of a
    running child is ``running``; the errors of unknown children; count_children."""
    async with open_supervisor([w("child1")]) as root:
        ref = root.ref("child1")
        assert root.count_children() == ChildCounts(specs=1, active=1, supervisors=0, workers=1)
        with pytest.raises(ValueError, match=r"already has a child named 'child1' \(running\)"):
            await root.start_child(w("child1"))
        with pytest.raises(NoSuchChild):
            await root.terminate_child("hej")

        await root.terminate_child("child1")
        assert states(root) == {"child1": ("stopped", 0)}
        assert root.count_children() == ChildCounts(specs=1, active=0, supervisors=0, workers=1)
        with pytest.raises(ActorStopped):
            await ref.ask(1)
        await root.terminate_child("child1")  # terminating a terminated child is fine
        with pytest.raises(ValueError, match="present but not running"):
            await root.start_child(w("child1"))

        await root.restart_child("child1")
        assert await ref.ask(2) == ("child1", 2)  # the same ref works again
        assert root.count_children().active == 1
        with pytest.raises(ChildRunning) as running:
            await root.restart_child("child1")
        assert running.value.state == "running"
        with pytest.raises(NoSuchChild):
            await root.restart_child("child2")

        with pytest.raises(ChildRunning):
            await root.delete_child("child1")
        with pytest.raises(NoSuchChild):
            await root.delete_child("hej")
        await root.terminate_child("child1")
        await root.delete_child("child1")
        with pytest.raises(NoSuchChild):
            await root.restart_child("child1")
        assert root.count_children() == ChildCounts(specs=0, active=0, supervisors=0, workers=0)
        assert root.snapshot().children == ()

        new = await root.start_child(w("child1"))
        assert await new.ask(3) == ("child1", 3)
        assert new != ref  # a new slot: the deleted child's refs stay stopped
        with pytest.raises(ActorStopped):
            await ref.ask(4)


async def test_do_not_save_child_specs_for_temporary_children(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP: terminating a temporary child removes it (its spec is not kept), so its name can
    be used again at once; a permanent one is kept (``already present``)."""
    async with open_supervisor([]) as root:
        await root.start_child(w("tmp", "temporary"))
        await root.start_child(w("perm"))
        await root.terminate_child("tmp")
        await root.terminate_child("perm")
        assert [n.name for n in root.snapshot().children] == ["perm"]
        await root.start_child(w("tmp", "temporary"))
        with pytest.raises(ValueError, match="present"):
            await root.start_child(w("perm"))


async def test_terminate_child_stops_a_pending_restart(mock_clock: trio.testing.MockClock) -> None:
    """OTP hanging_restart_loop: a child waiting to be restarted is ``restarting`` to
    restart_child and delete_child, is not active; terminate_child ends its restart loop (it
    stays terminated, nothing restarts it) and restart_child then starts it."""
    backoff = RestartBackoff(min_delay=10, max_delay=10, jitter=0)
    async with open_supervisor([w("a"), w("b")], backoff=backoff, max_restarts=100) as root:
        FAIL["a"] = -1
        await crash(root, "a")
        await trio.sleep(25)  # two failed restarts so far; the next one is due at 30
        assert states(root)["a"] == ("restarting", 0)
        assert root.count_children() == ChildCounts(specs=2, active=1, supervisors=0, workers=2)
        for request in (root.restart_child, root.delete_child):
            with pytest.raises(ChildRunning) as info:
                await request("a")
            assert info.value.state == "restarting"
        await root.terminate_child("a")
        assert states(root)["a"] == ("stopped", 0)
        await trio.sleep(100)
        assert LOG.count(("start-failed", "a")) == 2  # the loop ended
        FAIL.clear()
        await root.restart_child("a")
        assert states(root)["a"] == ("running", 1)


async def test_hanging_restart_loop_does_not_hold_up_shutdown(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP hanging_restart_loop: a supervisor whose child keeps failing to start still stops
    promptly when its tree shuts down."""
    backoff = RestartBackoff(min_delay=1, max_delay=1, jitter=0)
    async with open_supervisor([w("a")], backoff=backoff, max_restarts=10**6) as root:
        FAIL["a"] = -1
        await crash(root, "a")
        await trio.sleep(5.5)
    assert trio.current_time() == pytest.approx(5.5)
    assert LOG.count(("start-failed", "a")) == 5


# ---------------------------------------------------------------------- flags and exits


@pytest.mark.parametrize("period", [math.inf, math.nan, 0, -1])
def test_sup_flags_period_must_be_finite_and_positive(period: float) -> None:
    """OTP sup_flags: ``period`` must be a positive integer; here a finite number of seconds
    > 0.  An infinite period (which would make max_restarts a lifetime budget) is refused."""
    with pytest.raises(ValueError, match="period must be a finite number of seconds > 0"):
        SupervisorSpec("s", [], period=period)


async def test_sup_flags_period_of_open_supervisor_must_be_finite() -> None:
    """open_supervisor's own period argument is checked the same way."""
    with pytest.raises(ValueError, match="period"):
        async with open_supervisor([], period=math.inf):
            pass


async def test_transient_shutdown_a_transient_supervisor_that_gave_up_is_not_restarted(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP transient_shutdown: a supervisor that gives up exits with reason ``shutdown``; a
    transient one is then not restarted (nor counted against its parent's intensity): it is
    stopped, its spec kept, and restart_child starts it again."""
    sub = SupervisorSpec("sub", [w("x")], max_restarts=0, restart="transient")
    events: list[SupervisionEvent] = []
    async with open_supervisor([w("other"), sub], max_restarts=0) as root:
        root.add_listener(events.append)
        ref = root.ref("sub/x")
        await crash(root, "sub/x")
        assert states(root) == {
            "other": ("running", 0),
            "sub": ("stopped", 0),
            "sub/x": ("stopped", 0),
        }
        with pytest.raises(ActorStopped):
            await ref.ask(1)
        stopped = [e for e in events if e.kind is EventKind.STOPPED and e.path == "sub"]
        assert len(stopped) == 1
        assert stopped[0].reason.startswith("gave up (SupervisorGaveUp")
        assert not [e for e in events if e.kind is EventKind.CRASHED and e.path == "sub"]
        await root.restart_child("sub")
        assert states(root)["sub"] == ("running", 1)
        assert await root.ref("sub/x").ask(2) == ("sub/x", 2)


async def test_permanent_supervisor_that_gave_up_is_restarted(
    mock_clock: trio.testing.MockClock,
) -> None:
    """For a permanent supervisor the same exit is a crash: it is restarted (and counted)."""
    sub = SupervisorSpec("sub", [w("x")], max_restarts=0)
    async with open_supervisor([sub], max_restarts=1) as root:
        await crash(root, "sub/x")
        assert states(root) == {"sub": ("running", 1), "sub/x": ("running", 0)}


async def test_temporary_children_are_not_restarted_with_their_supervisor(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP terminate_children: when a supervisor gives up, its temporary children are
    dropped; restarted by its parent, it starts its spec's children again (a temporary one
    listed there comes back, as OTP's ``init`` returns it), while a temporary child added at
    run time does not."""
    sub = SupervisorSpec("sub", [w("perm"), w("tmp", "temporary")], max_restarts=0)
    async with open_supervisor([sub], max_restarts=1) as root:
        handle = root.supervisor("sub")
        await handle.start_child(w("extra", "temporary"))
        await handle.start_child(w("kept"))
        await crash(root, "sub/perm")
        assert [n.name for n in handle.snapshot().children] == ["perm", "tmp", "kept"]
        assert {s for s, _ in states(handle).values()} == {"running"}
