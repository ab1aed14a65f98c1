"""Supervision: strategies x restart types, intensity, backoff, shutdown, refs, dynamic children."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from actors import Actor, ActorCrashed, ActorStopped, Reply
from supervisors import (
    ChildSpec,
    EventKind,
    NoSuchChild,
    Restart,
    RestartBackoff,
    Strategy,
    SupervisionEvent,
    Supervisor,
    SupervisorGaveUp,
    SupervisorSpec,
    open_supervisor,
)

STARTS: list[str] = []
STOPS: list[str] = []
HANDLED: list[Any] = []


class Worker(Actor[Any, Any]):
    """Echoes; ``"crash"`` crashes, ``"exit"`` stops normally, ``("sleep", s)`` is slow."""

    def __init__(self, stop_delay: float = 0.0) -> None:
        self.stop_delay = stop_delay

    async def on_start(self) -> None:
        STARTS.append(self.path)

    async def on_stop(self) -> None:
        await trio.sleep(self.stop_delay)
        STOPS.append(self.path)

    async def handle(self, message: Any) -> Any:
        HANDLED.append(message)
        if message == "crash":
            raise RuntimeError(f"{self.path} crashed on purpose")
        if message == "exit":
            self.stop()
            return "bye"
        if isinstance(message, tuple) and message[0] == "sleep":
            await trio.sleep(message[1])
        if isinstance(message, tuple) and message[0] == "defer":
            reply: Reply[Any] = self.defer()
            self.spawn(self._answer, reply, message[1])
        return (self.path, message)

    async def _answer(self, reply: Reply[Any], seconds: float) -> None:
        await trio.sleep(seconds)
        reply.set("late")


class FailsToStart(Actor[Any, Any]):
    async def on_start(self) -> None:
        raise OSError("cannot connect")


@pytest.fixture(autouse=True)
def _reset() -> None:
    STARTS.clear()
    STOPS.clear()
    HANDLED.clear()


def spec(name: str, restart: str = "permanent", **kw: Any) -> ChildSpec[Any, Any]:
    stop_delay = kw.pop("stop_delay", 0.0)
    return ChildSpec(name, lambda: Worker(stop_delay), restart=restart, **kw)


async def crash(root: Supervisor, path: str) -> None:
    with pytest.raises(ActorCrashed):
        await root.ref(path).ask("crash")
    await trio.testing.wait_all_tasks_blocked()


def restarts(root: Supervisor) -> dict[str, int]:
    return {n.path: n.restarts for n in root.snapshot().walk() if n.kind == "actor"}


def states(root: Supervisor) -> dict[str, str]:
    return {n.path: n.state for n in root.snapshot().walk() if n.kind == "actor"}


@pytest.mark.parametrize(
    ("strategy", "crashed", "expected"),
    [
        ("one_for_one", "b", {"a": 0, "b": 1, "c": 0}),
        ("one_for_all", "b", {"a": 1, "b": 1, "c": 1}),
        ("rest_for_one", "b", {"a": 0, "b": 1, "c": 1}),
        ("rest_for_one", "a", {"a": 1, "b": 1, "c": 1}),
        ("rest_for_one", "c", {"a": 0, "b": 0, "c": 1}),
    ],
)
async def test_strategy_restarts_the_right_children(
    mock_clock: trio.testing.MockClock, strategy: str, crashed: str, expected: dict[str, int]
) -> None:
    """Each strategy restarts exactly its group, the others keep running untouched."""
    children = [spec("a"), spec("b"), spec("c")]
    async with open_supervisor(children, strategy=strategy) as root:
        await crash(root, crashed)
        assert restarts(root) == expected
        assert set(states(root).values()) == {"running"}
        for name in "abc":
            assert await root.ref(name).ask(1) == (name, 1)


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
@pytest.mark.parametrize(
    ("restart", "how", "restarted", "state"),
    [
        ("permanent", "crash", True, "running"),
        ("permanent", "exit", True, "running"),
        ("transient", "crash", True, "running"),
        ("transient", "exit", False, "stopped"),
        ("temporary", "crash", False, None),
        ("temporary", "exit", False, None),
    ],
)
async def test_restart_types_under_every_strategy(
    mock_clock: trio.testing.MockClock,
    strategy: str,
    restart: str,
    how: str,
    restarted: bool,
    state: str | None,
) -> None:
    """permanent always restarts; transient only after a crash; temporary never (and is removed)."""
    async with open_supervisor([spec("x", restart), spec("y")], strategy=strategy) as root:
        ref = root.ref("x")
        if how == "crash":
            with pytest.raises(ActorCrashed):
                await ref.ask("crash")
        else:
            assert await ref.ask("exit") == "bye"
        await trio.testing.wait_all_tasks_blocked()
        snapshot = {n.path: n for n in root.snapshot().walk()}
        if state is None:
            assert "x" not in snapshot
            with pytest.raises(NoSuchChild):
                root.ref("x")
        else:
            assert snapshot["x"].state == state
            assert snapshot["x"].restarts == (1 if restarted else 0)
        if restarted:
            assert await ref.ask(2) == ("x", 2)
        else:
            with pytest.raises(ActorStopped):
                await ref.ask(2)
        # A sibling is restarted alongside only when x was restarted by a group strategy.
        expect_y = 1 if restarted and strategy in ("one_for_all", "rest_for_one") else 0
        assert snapshot["y"].restarts == expect_y
        assert await root.ref("y").ask(3) == ("y", 3)


async def test_temporary_bystander_and_group_restart_of_kept_specs(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP temporary_bystander: a group restart drops temporary siblings; and, as OTP restarts
    every child spec it keeps, a transient sibling that had exited normally starts again."""
    children = [spec("p"), spec("tmp", "temporary"), spec("tr", "transient")]
    async with open_supervisor(children, strategy="one_for_all") as root:
        assert await root.ref("tr").ask("exit") == "bye"
        await trio.testing.wait_all_tasks_blocked()
        assert states(root)["tr"] == "stopped"
        await crash(root, "p")
        snap = {n.path: n for n in root.snapshot().walk()}
        assert "tmp" not in snap
        assert (snap["tr"].state, snap["tr"].restarts) == ("running", 1)
        assert snap["p"].restarts == 1
        assert await root.ref("tr").ask(1) == ("tr", 1)


async def test_queued_messages_survive_a_crash(mock_clock: trio.testing.MockClock) -> None:
    """Messages queued behind the crashing one are handled by the restarted actor, in order."""
    async with open_supervisor([spec("w")]) as root:
        ref = root.ref("w")
        results: list[Any] = []
        errors: list[BaseException] = []

        async def send(message: Any) -> None:
            try:
                results.append(await ref.ask(message))
            except ActorCrashed as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, ("sleep", 1.0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "crash")
            await trio.testing.wait_all_tasks_blocked()
            for i in range(5):
                nursery.start_soon(send, i)
                await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 1
        assert sorted(results, key=str) == sorted(
            [("w", ("sleep", 1.0))] + [("w", i) for i in range(5)], key=str
        )
        assert HANDLED == [("sleep", 1.0), "crash", 0, 1, 2, 3, 4]  # in order, none lost
        assert restarts(root) == {"w": 1}


async def test_refs_are_stable_across_restarts_and_subtree_restarts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A ref taken once keeps working after its actor and its whole subtree restart."""
    sub = SupervisorSpec("sub", [spec("w")], max_restarts=0)
    async with open_supervisor([sub]) as root:
        ref = root.ref("sub/w")
        handle = root.supervisor("sub")
        await crash(root, "sub/w")  # max_restarts=0: sub gives up, root restarts it
        assert await ref.ask("hi") == ("sub/w", "hi")
        assert root.ref("sub/w") == ref
        assert handle.snapshot().state == "running"
        assert root.snapshot().find("sub").restarts == 1  # type: ignore[union-attr]


async def test_intensity_escalates_across_two_levels(mock_clock: trio.testing.MockClock) -> None:
    """Past its intensity a subtree gives up; its parent restarts it; past the parent's, the root
    fails out of open_supervisor with SupervisorGaveUp."""
    sub = SupervisorSpec("sub", [spec("w")], max_restarts=1, period=10)
    events: list[SupervisionEvent] = []
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor([sub], max_restarts=1, period=10) as root:
            root.add_listener(events.append)
            ref = root.ref("sub/w")
            for _ in range(2):  # 2 crashes > 1 restart: sub gives up; root restarts sub
                with pytest.raises(ActorCrashed):
                    await ref.ask("crash")
                await trio.testing.wait_all_tasks_blocked()
            assert root.snapshot().find("sub").restarts == 1  # type: ignore[union-attr]
            for _ in range(2):  # sub gives up again: root's second restart exceeds its intensity
                with pytest.raises(ActorCrashed):
                    await ref.ask("crash")
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep_forever()
    assert info.value.path == ""
    assert isinstance(info.value.cause, SupervisorGaveUp)
    assert info.value.cause.path == "sub"
    gave_up = [e.path for e in events if e.kind is EventKind.GAVE_UP]
    assert gave_up == ["sub", "sub", ""]
    with pytest.raises(ActorStopped):
        await ref.ask("after the end")


async def test_restarts_outside_the_period_do_not_count(mock_clock: trio.testing.MockClock) -> None:
    """Intensity counts restarts within `period` only: spaced-out crashes never give up."""
    async with open_supervisor([spec("w")], max_restarts=2, period=5) as root:
        for _ in range(6):
            await crash(root, "w")
            await trio.sleep(3)
        assert restarts(root) == {"w": 6}


async def test_restart_backoff_delays_grow_and_cap(mock_clock: trio.testing.MockClock) -> None:
    """Backoff waits min_delay * factor**n (capped), and resets after a stable period."""
    backoff = RestartBackoff(min_delay=1.0, max_delay=5.0, factor=2.0, jitter=0.0, reset_after=30)
    events: list[SupervisionEvent] = []
    async with open_supervisor([spec("w")], max_restarts=100, backoff=backoff) as root:
        root.add_listener(events.append)
        ref = root.ref("w")
        delays = []
        for _ in range(5):
            with pytest.raises(ActorCrashed):
                await ref.ask("crash")
            start = trio.current_time()
            assert await ref.ask("ping") == ("w", "ping")  # waits for the restart
            delays.append(trio.current_time() - start)
        assert delays == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])
        await trio.sleep(31)  # stable for reset_after: the next delay is min_delay again
        with pytest.raises(ActorCrashed):
            await ref.ask("crash")
        start = trio.current_time()
        await ref.ask("ping")
        assert trio.current_time() - start == pytest.approx(1.0)
    restarted = [e.delay for e in events if e.kind is EventKind.RESTARTED]
    assert restarted == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0, 1.0])


async def test_messages_wait_during_backoff(mock_clock: trio.testing.MockClock) -> None:
    """While a child waits out its backoff, tells queue up and are handled after the restart."""
    backoff = RestartBackoff(min_delay=10.0, max_delay=10.0, jitter=0.0)
    async with open_supervisor([spec("w")], backoff=backoff) as root:
        ref = root.ref("w")
        await crash(root, "w")
        assert ref.statistics().state.value == "restarting"
        for i in range(3):
            await ref.tell(i)
        assert ref.statistics().mailbox_depth == 3
        await trio.sleep(10)
        await trio.testing.wait_all_tasks_blocked()
        assert ref.statistics().mailbox_depth == 0
        assert ref.statistics().handled >= 3


def test_backoff_jitter_stays_within_bounds() -> None:
    """Jittered delays stay within [base, min(max, base * (1 + jitter))]."""
    import random

    backoff = RestartBackoff(min_delay=0.5, max_delay=8.0, factor=3.0, jitter=0.5)
    rng = random.Random(1)
    for n in range(8):
        base = min(8.0, 0.5 * 3.0**n)
        for _ in range(50):
            delay = backoff.delay(n, rng)
            assert base <= delay <= min(8.0, base * 1.5)


async def test_shutdown_is_reverse_start_order(mock_clock: trio.testing.MockClock) -> None:
    """Children start in order and stop in reverse order, each on_stop running."""
    sub = SupervisorSpec("sub", [spec("s1"), spec("s2")])
    async with open_supervisor([spec("a"), sub, spec("b")]):
        assert STARTS == ["a", "sub/s1", "sub/s2", "b"]
    assert STOPS == ["b", "sub/s2", "sub/s1", "a"]


async def test_shutdown_grace_then_cancel(mock_clock: trio.testing.MockClock) -> None:
    """A child slower to stop than its grace is cancelled when the grace runs out."""
    children = [
        spec("quick", stop_delay=1.0, shutdown=5.0),
        spec("slow", stop_delay=60.0, shutdown=2.0),
    ]
    start = trio.current_time()
    async with open_supervisor(children):
        pass
    # slow is stopped first (reverse order): cancelled after 2 s; then quick takes 1 s.
    assert trio.current_time() - start == pytest.approx(3.0)
    assert STOPS == ["quick"]


async def test_lookup_and_snapshot(mock_clock: trio.testing.MockClock) -> None:
    """Refs by name and path; snapshots list kinds, states, restarts and mailbox depth."""
    tree = SupervisorSpec(
        "app", [SupervisorSpec("providers", [spec("openai")], strategy="one_for_all"), spec("m")]
    )
    async with open_supervisor(tree) as root:
        assert root.ref("providers/openai").path == "providers/openai"
        providers = root.supervisor("providers")
        assert providers.ref("openai") == root.ref("providers/openai")
        for bad in ("nope", "providers/nope", "providers"):
            with pytest.raises(NoSuchChild):
                root.ref(bad)
        with pytest.raises(ValueError, match="relative path"):
            root.ref("/providers")
        snap = root.snapshot()
        assert [(n.path, n.kind, n.state) for n in snap.walk()] == [
            ("", "supervisor", "running"),
            ("providers", "supervisor", "running"),
            ("providers/openai", "actor", "running"),
            ("m", "actor", "running"),
        ]
        assert snap.find("providers").strategy == "one_for_all"  # type: ignore[union-attr]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(root.ref("m").ask, ("sleep", 5.0))
            await trio.testing.wait_all_tasks_blocked()
            root.ref("m").tell_nowait("x")
            assert root.snapshot().find("m").mailbox_depth == 1  # type: ignore[union-attr]


async def test_events_reach_subscribers_and_logging(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """started, crashed, restarted and stopped events go to subscribers and stdlib logging."""
    caplog.set_level(logging.INFO, logger="supervisors")
    async with open_supervisor([spec("w", "transient")]) as root:
        with root.subscribe(buffer=2) as sub:
            await crash(root, "w")
            await root.ref("w").ask("exit")
            await trio.testing.wait_all_tasks_blocked()
            got = [sub.receive_nowait().kind, sub.receive_nowait().kind]
            assert got == [EventKind.CRASHED, EventKind.RESTARTED]
            assert sub.dropped == 1  # the STOPPED event found the buffer full
    messages = [r.getMessage() for r in caplog.records]
    assert any("w crashed" in m for m in messages)
    assert any("w restarted" in m for m in messages)
    assert any("w stopped" in m for m in messages)
    assert any(r.levelno == logging.WARNING for r in caplog.records)


async def test_failing_listener_is_removed(mock_clock: trio.testing.MockClock) -> None:
    """A listener that raises is removed and never breaks supervision."""
    calls = 0

    def bad(event: SupervisionEvent) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("listener bug")

    async with open_supervisor([spec("w")]) as root:
        root.add_listener(bad)
        await crash(root, "w")
        await crash(root, "w")
        assert calls == 1
        assert await root.ref("w").ask(1) == ("w", 1)


async def test_body_exception_cancels_tree_and_propagates(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An exception in the body leaves open_supervisor unwrapped, the tree cancelled."""
    with pytest.raises(KeyError):
        async with open_supervisor([spec("w", stop_delay=100.0)]):
            raise KeyError("body failed")
    assert STOPS == []


async def test_no_task_outlives_the_tree(mock_clock: trio.testing.MockClock) -> None:
    """After open_supervisor exits, every task it started is gone."""

    def tasks() -> set[trio.lowlevel.Task]:
        found: set[trio.lowlevel.Task] = set()
        todo = [trio.lowlevel.current_root_task()]
        while todo:
            task = todo.pop()
            found.add(task)
            for nursery in task.child_nurseries:
                todo.extend(nursery.child_tasks)
        return found

    before = tasks()
    sub = SupervisorSpec("sub", [spec("x"), spec("y")], strategy="one_for_all")
    async with open_supervisor([spec("a"), sub]) as root:
        await crash(root, "sub/x")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(root.ref("a").ask, ("defer", 100.0))  # a background task
            await trio.testing.wait_all_tasks_blocked()
            assert len(tasks()) > len(before)
            nursery.cancel_scope.cancel()
    assert tasks() == before


def test_spec_validation_messages() -> None:
    """Bad specs fail at construction with a message naming the child and the rule."""
    with pytest.raises(ValueError, match="must not contain '/'"):
        spec("a/b")
    with pytest.raises(ValueError, match="non-empty"):
        spec("")
    with pytest.raises(ValueError, match=r"restart must be one of .*got 'permanently'"):
        spec("a", "permanently")
    with pytest.raises(ValueError, match="shutdown must be >= 0"):
        spec("a", shutdown=-1)
    with pytest.raises(ValueError, match="mailbox_capacity"):
        spec("a", mailbox_capacity=0)
    with pytest.raises(ValueError, match="two children are named 'a'"):
        SupervisorSpec("s", [spec("a"), spec("a")])
    with pytest.raises(ValueError, match="max_restarts"):
        SupervisorSpec("s", [], max_restarts=-1)
    with pytest.raises(ValueError, match="period"):
        SupervisorSpec("s", [], period=0)
    with pytest.raises(ValueError, match=r"strategy must be one of .*'one-for-one'"):
        SupervisorSpec("s", [], strategy="one-for-one")
    with pytest.raises(ValueError, match="max_delay"):
        RestartBackoff(min_delay=5, max_delay=1)
    with pytest.raises(TypeError, match="factory must be callable"):
        ChildSpec("a", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ChildSpec, SupervisorSpec or DynamicSupervisorSpec"):
        SupervisorSpec("s", ["nope"])  # type: ignore[list-item]
    assert ChildSpec("a", Worker, restart=Restart.TRANSIENT).restart is Restart.TRANSIENT
    assert SupervisorSpec("s", [], strategy=Strategy.REST_FOR_ONE).strategy is Strategy.REST_FOR_ONE


class BackgroundCrasher(Actor[Any, Any]):
    """A background task that fails crashes the actor; it then works again."""

    async def handle(self, message: Any) -> Any:
        if message == "explode-later":
            reply: Reply[Any] = self.defer()
            self.spawn(self._explode, reply)
        return ("ok", message)

    async def _explode(self, reply: Reply[Any]) -> None:
        await trio.sleep(1.0)
        raise OSError("background work failed")


async def test_background_task_crash_restarts_the_actor(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A failing background task crashes its incarnation: the deferred ask gets ActorCrashed
    with the cause, the supervisor restarts the actor, and the ref works again."""
    events: list[SupervisionEvent] = []
    async with open_supervisor([ChildSpec("bg", BackgroundCrasher)]) as root:
        root.add_listener(events.append)
        ref = root.ref("bg")
        with pytest.raises(ActorCrashed) as info:
            await ref.ask("explode-later")
        assert isinstance(info.value.cause, OSError)
        assert await ref.ask(1) == ("ok", 1)
        assert ref.statistics().incarnation == 2
    assert [e.kind for e in events][:2] == [EventKind.CRASHED, EventKind.RESTARTED]


async def test_root_of_finds_the_tree(mock_clock: trio.testing.MockClock) -> None:
    """root_of(actor or ref) is the root Supervisor of the actor's tree; unsupervised actors
    have none."""
    from actors import open_actor
    from supervisors import root_of

    sub = SupervisorSpec("sub", [spec("w")])
    async with open_supervisor([sub]) as root:
        ref = root.ref("sub/w")
        assert root_of(ref).snapshot() == root.snapshot()
    async with open_actor(Worker) as lone:
        with pytest.raises(LookupError):
            root_of(lone)


async def test_listener_on_a_full_mailbox_keeps_listening(
    mock_clock: trio.testing.MockClock,
) -> None:
    """add_listener(ref.tell_nowait): a full mailbox drops that event but keeps the listener."""
    from actors import open_actor

    class Sink(Actor[Any, Any]):
        def __init__(self) -> None:
            self.got: list[Any] = []

        async def handle(self, message: Any) -> Any:
            if message == "got":
                return len(self.got)
            if message == "block":
                await trio.sleep(10)
                return None
            self.got.append(message)
            return None

    async with open_actor(Sink, capacity=1) as sink, open_supervisor([spec("w")]) as root:
        root.add_listener(sink.tell_nowait)
        sink.tell_nowait("block")
        await trio.testing.wait_all_tasks_blocked()
        sink.tell_nowait("filler")
        await crash(root, "w")  # two events; the mailbox is full: both dropped
        await trio.sleep(11)
        await crash(root, "w")  # still listening
        assert await sink.ask("got") >= 2


async def test_a_restart_waits_for_the_old_incarnations_background_tasks(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A background task the scheduler had already resumed when its actor crashed runs to its
    next checkpoint and exits before the next incarnation's ``on_start``: incarnations of one
    slot never overlap."""
    log: list[str] = []

    class Overlapping(Actor[str, str]):
        async def on_start(self) -> None:
            log.append("start")
            self.wake = trio.Event()
            self.spawn(self.worker)

        async def worker(self) -> None:
            await self.wake.wait()
            log.append("old worker resumed")  # runs: it was rescheduled before the crash
            await trio.sleep_forever()

        async def handle(self, message: str) -> str:
            self.wake.set()  # the worker is resumed with a value...
            raise RuntimeError("boom")  # ...and the incarnation crashes in the same step

    async with open_supervisor([ChildSpec("a", Overlapping)]) as root:
        with pytest.raises(ActorCrashed):
            await root.ref("a").ask("go")
        await trio.sleep(1)
        assert root.ref("a").statistics().incarnation == 2
    assert log == ["start", "old worker resumed", "start"]
