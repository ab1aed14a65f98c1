"""Stateful test: random crashes, exits, asks, dynamic children and time against a model.

The tree runs in its own trio thread (virtual time, no autojump: time moves only when a rule
says so); each hypothesis rule runs one operation in it through ``trio.from_thread.run`` and
waits until every task is blocked again, then compares the tree with a small model of OTP
semantics: which children exist, their states, their restart counts, the subtree's restart
count, and when the subtree gives up.  At the end every ask ever sent must have ended with
exactly one outcome, and no task may outlive the tree.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors import Actor, ActorCrashed, ActorRef, ActorStopped, AskTimeout, Reply
from supervisors import ChildRunning, ChildSpec, NoSuchChild, SupervisorSpec, open_supervisor
from supervisors._tree import Supervisor

T = TypeVar("T")

MAX_RESTARTS = 3
PERIOD = 10.0
NAMES = ["a", "b", "c", "d", "e", "f"]


class Node(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash requested")
        if message == "exit":
            self.stop()
            return "bye"
        if message == "slow":
            reply: Reply[Any] = self.defer()
            self.spawn(self._later, reply)
        return (self.path, message)

    async def _later(self, reply: Reply[Any]) -> None:
        await trio.sleep(25.0)
        reply.set("late")


@dataclass
class ModelChild:
    name: str
    restart: str
    status: str = "running"  # running | stopped (terminated, spec kept) | removed
    restarts: int = 0
    dynamic: bool = False  # added with start_child (else one of the spec's children)
    fresh: bool = False  # made again from the spec: its old refs stay stopped


@dataclass
class Model:
    strategy: str
    children: list[ModelChild]
    now: float = 0.0
    times: list[float] = field(default_factory=list)
    sub_restarts: int = 0

    def live(self) -> list[ModelChild]:
        return [c for c in self.children if c.status != "removed"]

    def exit(self, child: ModelChild, abnormal: bool) -> None:
        if child.restart == "temporary":
            child.status = "removed"
            return
        if child.restart == "transient" and not abnormal:
            child.status = "stopped"
            return
        self.times = [t for t in self.times if t > self.now - PERIOD] + [self.now]
        if len(self.times) > MAX_RESTARTS:
            # The subtree gives up (its temporary children are dropped); the root
            # (one_for_one) restarts it: every child of its spec starts again (a temporary
            # or removed one is made afresh), and so does every child added at run time that
            # it kept, whatever its state (a start, not a restart: counts stay).
            self.sub_restarts += 1
            self.times = []
            for c in self.children:
                if not c.dynamic and (c.status == "removed" or c.restart == "temporary"):
                    c.status, c.restarts, c.fresh = "running", 0, True
                elif c.restart == "temporary" and c.dynamic:
                    c.status = "removed"
                elif c.status != "removed":
                    c.status = "running"
            return
        # OTP restarts every child of the group it keeps a spec for, stopped ones included;
        # a temporary bystander is dropped.
        live = self.live()
        if self.strategy == "one_for_one":
            group = [child]
        elif self.strategy == "one_for_all":
            group = live
        else:
            group = live[live.index(child) :]
        for member in group:
            if member is not child and member.restart == "temporary":
                member.status = "removed"
            else:
                member.restarts += 1
                member.status = "running"


def _all_tasks() -> set[trio.lowlevel.Task]:
    found: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


class TreeMachine(RuleBasedStateMachine):
    """Drives one supervision tree through random operations."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = trio.testing.MockClock()
        self.ready = threading.Event()
        self.failure: list[BaseException] = []
        self.outcomes: dict[int, list[str]] = {}
        self.refs: dict[str, ActorRef[Any, Any]] = {}
        self.model: Model | None = None
        self.root: Supervisor | None = None
        self.thread: threading.Thread | None = None
        self.leaked: set[trio.lowlevel.Task] = set()

    # ---------------------------------------------------------------- the trio side

    def _run_trio(self, spec: SupervisorSpec) -> None:
        try:
            trio.run(self._trio_main, spec, clock=self.clock)
        except BaseException as exc:
            self.failure.append(exc)
            self.ready.set()

    async def _trio_main(self, spec: SupervisorSpec) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.finish = trio.Event()
        before = _all_tasks()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            async with open_supervisor([spec], max_restarts=10**6, period=1.0) as root:
                self.root = root
                self.ready.set()
                await self.finish.wait()
                await trio.testing.wait_all_tasks_blocked()
            self.leaked = _all_tasks() - before - {t for t in nursery.child_tasks}
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def wrapped() -> T:
            result = await fn()
            await trio.testing.wait_all_tasks_blocked()
            return result

        return trio.from_thread.run(wrapped, trio_token=self.token)

    # ---------------------------------------------------------------- setup and teardown

    @initialize(
        strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
        restarts=st.lists(
            st.sampled_from(["permanent", "transient", "temporary"]), min_size=1, max_size=4
        ),
    )
    def start(self, strategy: str, restarts: list[str]) -> None:
        children = [ModelChild(NAMES[i], r) for i, r in enumerate(restarts)]
        self.model = Model(strategy, children)
        spec = SupervisorSpec(
            "sub",
            [ChildSpec(c.name, Node, restart=c.restart) for c in children],
            strategy=strategy,
            max_restarts=MAX_RESTARTS,
            period=PERIOD,
        )
        self.thread = threading.Thread(target=self._run_trio, args=(spec,), daemon=True)
        self.thread.start()
        self.ready.wait(30)
        assert not self.failure, self.failure
        assert self.root is not None
        for c in children:
            self.refs[c.name] = self.root.ref(f"sub/{c.name}")

    def teardown(self) -> None:
        if self.thread is None:
            return

        async def finish() -> None:
            self.clock.jump(100.0)  # let every deferred reply fire
            await trio.testing.wait_all_tasks_blocked()
            self.finish.set()

        if not self.failure:
            trio.from_thread.run(finish, trio_token=self.token)
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert not self.failure, self.failure
        assert not self.leaked, f"tasks outlived the tree: {self.leaked}"
        for ask_id, results in self.outcomes.items():
            assert len(results) == 1, f"ask {ask_id} ended with {results}"

    # ---------------------------------------------------------------- helpers

    def child(self, index: int) -> ModelChild:
        assert self.model is not None
        return self.model.children[index % len(self.model.children)]

    def record(self, ask_id: int, outcome: str) -> None:
        self.outcomes.setdefault(ask_id, []).append(outcome)

    async def ask(self, name: str, message: Any) -> str:
        ask_id = len(self.outcomes)
        self.outcomes[ask_id] = []
        try:
            reply = await self.refs[name].ask(message, timeout=1000.0)
        except ActorCrashed:
            result = "crashed"
        except ActorStopped:
            result = "stopped"
        except AskTimeout:
            result = "timeout"
        else:
            result = "reply" if reply in (("sub/" + name, message), "bye") else f"wrong {reply}"
        self.record(ask_id, result)
        return result

    # ---------------------------------------------------------------- rules

    @rule(index=st.integers(0, 5), how=st.sampled_from(["crash", "exit"]))
    def exit_child(self, index: int, how: str) -> None:
        """A child crashes, or stops normally; the model applies the strategy."""
        assert self.model is not None
        child = self.child(index)
        result = self.call(lambda: self.ask(child.name, how))
        if child.status == "running":
            assert result == ("crashed" if how == "crash" else "reply")
            self.model.exit(child, abnormal=how == "crash")
            self.refresh_refs()
        else:
            assert result == "stopped"

    @rule(index=st.integers(0, 5))
    def ask_child(self, index: int) -> None:
        """An ask gets a reply from a running child and ActorStopped otherwise."""
        child = self.child(index)
        result = self.call(lambda: self.ask(child.name, "ping"))
        assert result == ("reply" if child.status == "running" else "stopped")

    @rule(index=st.integers(0, 5))
    def slow_ask(self, index: int) -> None:
        """Start an ask answered later from a background task (ends however it ends)."""
        child = self.child(index)

        async def launch() -> None:
            self.nursery.start_soon(self.ask, child.name, "slow")

        self.call(launch)

    @rule(dt=st.floats(0.5, 12.0))
    def advance(self, dt: float) -> None:
        """Time passes: old restarts leave the intensity window, deferred replies fire."""
        assert self.model is not None

        async def jump() -> None:
            self.clock.jump(dt)

        self.call(jump)
        self.model.now += dt

    @precondition(lambda self: self.model is not None and len(self.model.children) < len(NAMES))
    @rule(restart=st.sampled_from(["permanent", "transient", "temporary"]))
    def start_child(self, restart: str) -> None:
        """A dynamic child joins at the end of the start order."""
        assert self.model is not None
        assert self.root is not None
        name = NAMES[len(self.model.children)]
        sub = self.root.supervisor("sub")
        ref = self.call(lambda: sub.start_child(ChildSpec(name, Node, restart=restart)))
        self.refs[name] = ref
        self.model.children.append(ModelChild(name, restart, dynamic=True))

    @rule(index=st.integers(0, 5))
    def terminate_child(self, index: int) -> None:
        """A child is terminated: its spec is kept (stopped), a temporary one's is dropped."""
        assert self.root is not None
        child = self.child(index)
        sub = self.root.supervisor("sub")
        outcome = self.call(lambda: _outcome(sub.terminate_child(child.name)))
        if child.status == "removed":
            assert outcome == "not found"
            return
        assert outcome == "ok"
        child.status = "removed" if child.restart == "temporary" else "stopped"

    @rule(index=st.integers(0, 5))
    def restart_child(self, index: int) -> None:
        """restart_child starts a terminated child; a running one answers ``running``."""
        assert self.root is not None
        child = self.child(index)
        sub = self.root.supervisor("sub")
        outcome = self.call(lambda: _outcome(sub.restart_child(child.name)))
        expected = {"removed": "not found", "running": "running", "stopped": "ok"}
        assert outcome == expected[child.status]
        if child.status == "stopped":
            child.status = "running"
            child.restarts += 1

    @rule(index=st.integers(0, 5))
    def delete_child(self, index: int) -> None:
        """delete_child drops a terminated child's spec; a running one answers ``running``."""
        assert self.root is not None
        child = self.child(index)
        sub = self.root.supervisor("sub")
        outcome = self.call(lambda: _outcome(sub.delete_child(child.name)))
        expected = {"removed": "not found", "running": "running", "stopped": "ok"}
        assert outcome == expected[child.status]
        if child.status == "stopped":
            child.status = "removed"

    def refresh_refs(self) -> None:
        """Children made afresh from the spec have new slots: take their new refs."""
        assert self.model is not None
        assert self.root is not None
        root = self.root
        for c in self.model.children:
            if c.fresh:
                self.refs[c.name] = self.call(partial(_ref, root, f"sub/{c.name}"))
                c.fresh = False

    # ---------------------------------------------------------------- invariants

    @invariant()
    def tree_matches_model(self) -> None:
        if self.model is None or self.root is None:
            return
        root = self.root
        snapshot = self.call(lambda: _snapshot(root))
        sub = snapshot.find("sub")
        assert sub is not None
        assert sub.state == "running"
        assert sub.restarts == self.model.sub_restarts
        actual = {n.name: (n.state, n.restarts) for n in sub.children}
        expected = {
            c.name: (c.status, c.restarts) for c in self.model.children if c.status != "removed"
        }
        assert actual == expected


async def _snapshot(root: Supervisor) -> Any:
    return root.snapshot()


async def _ref(root: Supervisor, path: str) -> ActorRef[Any, Any]:
    return root.ref(path)


async def _outcome(request: Awaitable[None]) -> str:
    """What an administration request answered: ok, running/restarting, or not found."""
    try:
        await request
    except ChildRunning as exc:
        return exc.state
    except NoSuchChild:
        return "not found"
    return "ok"


TreeMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_supervision_tree = TreeMachine.TestCase
