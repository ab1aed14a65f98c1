"""What a supervision tree keeps across restarts: the tree, each supervisor's node, its children.

Theory of operation
-------------------
A :class:`_Tree` is what every supervisor of one tree shares: the ask timers, the registry of
actor slots by path (how refs and ``Actor.lookup`` find an actor), the supervisors' nodes by
path, the event bus and the random source of backoff jitter.

A supervisor's :class:`_Node` lives as long as the tree (or until the supervisor is stopped for
good); each incarnation of the supervisor (a *run*, in ``_supervisor``) works on it.  The node
holds its children's records (:class:`_Child`) in a dict by name, in start order, so finding,
adding and removing a child cost the same whatever the number of children, and it keeps the
counts behind ``count_children()`` up to date as children come, go, start and stop.

Stopping a child for good closes its slot, or every slot of its subtree for a supervisor,
walking that subtree only: stopping a tree costs time proportional to its size.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from actors._core._cell import CellState, _Cell
from actors._core._reply import _Timers
from supervisors._errors import NoSuchChild, SupervisorNotRunning
from supervisors._events import ChildCounts, EventKind, SupervisionEvent, TreeNode, _EventBus
from supervisors._spec import AnySpec, AnySupervisorSpec, ChildSpec, DynamicSupervisorSpec

if TYPE_CHECKING:
    from supervisors._supervisor import _Run

__all__: list[str] = []


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class _Tree:
    """What every supervisor of one tree shares: timers, slot registry, events, randomness."""

    def __init__(self, timers: _Timers, *, seed: int | None = None) -> None:
        self.timers = timers
        self.cells: dict[str, _Cell] = {}
        self.nodes: dict[str, _Node] = {}
        self.bus = _EventBus()
        self.rng = random.Random(seed)

    def emit(
        self,
        kind: EventKind,
        path: str,
        supervisor: str,
        error: BaseException | None = None,
        **kw: Any,
    ) -> None:
        bus = self.bus
        if not bus.wanted(kind):
            return
        bus.emit(
            SupervisionEvent(
                kind=kind, path=path, supervisor=supervisor, at=trio.current_time(), **kw
            ),
            error,
        )

    def close_all(self, reason: str) -> None:
        """The tree is gone: close every slot and forget every node (once, at the end)."""
        for cell in self.cells.values():
            cell.close(reason)
        self.cells.clear()
        for node in self.nodes.values():
            node.retired = True
        self.nodes.clear()


class _Child:
    """A supervisor's record of one child, kept across restarts of child and supervisor.

    ``running`` is true from the moment the supervisor starts the child until it has handled
    its exit; changing it keeps the owner's count of active children right.
    """

    __slots__ = (
        "_running",
        "args",
        "cell",
        "consecutive",
        "done",
        "exit_error",
        "expected_exit",
        "gen",
        "kwargs",
        "node",
        "owner",
        "path",
        "ready",
        "restart_delay",
        "restart_due",
        "restarted_start",
        "restarts",
        "scope",
        "spec",
        "start_error",
        "started_at",
        "started_ok",
        "state",
        "waiter",
    )

    def __init__(
        self,
        owner: _Node,
        spec: AnySpec,
        path: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.owner = owner
        self.spec = spec
        self.path = path
        # The template factory's arguments (a dynamic supervisor's children).
        self.args = args
        self.kwargs = kwargs
        self.cell: _Cell | None = None
        self.node: _Node | None = None  # the child's own node, when it is a supervisor
        self.restarts = 0
        self.consecutive = 0  # restarts in a row, for the backoff
        self.state = CellState.RESTARTING
        self._running = False
        # Per incarnation of the child:
        self.gen = 0
        self.expected_exit = False
        self.scope: trio.CancelScope | None = None
        self.done = True  # its task has ended (or never ran)
        self.waiter: Any = None  # told (``.set()``) when the task ends: an Event or a countdown
        self.ready: trio.Event | None = None  # set once it has started or failed to
        self.restarted_start = False  # whether the incarnation starting is a restart
        self.started_at = 0.0
        self.restart_due: float | None = None  # when the supervisor restarts it (its group)
        self.restart_delay = 0.0
        self.start_error: BaseException | None = None
        self.exit_error: BaseException | None = None  # how the last incarnation ended
        self.started_ok = False

    @property
    def running(self) -> bool:
        return self._running

    @running.setter
    def running(self, value: bool) -> None:
        if value is not self._running:
            self._running = value
            self.owner.active += 1 if value else -1

    @property
    def is_supervisor(self) -> bool:
        return self.node is not None

    def mark_started(self) -> None:
        """The child's ``on_start`` (or a supervisor's start) is done: tell its supervisor."""
        run = self.owner.current
        if run is not None:
            run.mark_started(self)

    def __repr__(self) -> str:
        return f"<_Child {self.path!r} {self.state.value}>"


@attrs.define
class _Control:
    """A request run inside the supervisor's task (``start_child`` and the like)."""

    op: Callable[[_Run], Awaitable[Any]]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@attrs.frozen
class _Stop:
    terminal: bool


class _Node:
    """A supervisor's persistent state (one per supervisor path in a tree)."""

    def __init__(self, tree: _Tree, spec: AnySupervisorSpec, path: str) -> None:
        self.tree = tree
        self.spec = spec
        self.path = path
        self.dynamic = isinstance(spec, DynamicSupervisorSpec)
        self.children: dict[str, _Child] = {}
        self.inbox: trio.MemorySendChannel[Any] | None = None
        self.current: _Run | None = None  # the incarnation running now
        self.retired = False
        self.state = CellState.RESTARTING
        self.active = 0  # children running now
        self.supervisors = 0  # children that are supervisors
        self.seq = 0  # the last number given to a dynamic child's name
        tree.nodes[path] = self
        for child_spec in spec.children:
            self.add(self.make_child(child_spec))

    # ------------------------------------------------------------------ children records

    def make_child(
        self,
        spec: AnySpec,
        name: str = "",
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> _Child:
        """A record for ``spec`` under ``name`` (default: the spec's), with its slot: the
        slot already registered at that path if there is one (its refs stay valid)."""
        path = join(self.path, name or spec.name)
        child = _Child(self, spec, path, args, kwargs or None)
        if isinstance(spec, ChildSpec):
            cell = self.tree.cells.get(path)
            if cell is None:
                cell = _Cell(
                    path,
                    registry=self.tree.cells,
                    timers=self.tree.timers,
                    capacity=spec.mailbox_capacity,
                    ask_timeout=spec.ask_timeout,
                )
                self.tree.cells[path] = cell
            elif cell.closed:
                cell.reopen()
            cell.owner = self.tree
            child.cell = cell
        else:
            node = self.tree.nodes.get(path)
            if node is None or node.retired:
                node = _Node(self.tree, spec, path)
            child.node = node
        return child

    def add(self, child: _Child) -> None:
        self.children[child.path.rpartition("/")[2]] = child
        if child.node is not None:
            self.supervisors += 1

    def remove(self, child: _Child) -> None:
        """Forget ``child`` (it is not running)."""
        name = child.path.rpartition("/")[2]
        if self.children.get(name) is child:
            del self.children[name]
            child.running = False
            if child.node is not None:
                self.supervisors -= 1

    def refresh(self) -> None:
        """Before each run: the spec's children in their order (one removed when it stopped,
        a temporary one say, comes back, as Erlang/OTP's ``init`` would return it), then the
        children added at run time, in the order they were added."""
        rebuilt: dict[str, _Child] = {}
        for spec in self.spec.children:
            child = self.children.get(spec.name)
            if child is None:
                child = self.make_child(spec)
                if child.node is not None:
                    self.supervisors += 1
            rebuilt[spec.name] = child
        if (
            len(rebuilt) != len(self.children)
            or list(rebuilt) != list(self.children)[: len(rebuilt)]
        ):
            for name, child in self.children.items():
                rebuilt.setdefault(name, child)
            self.children = rebuilt

    def revive(self, child: _Child) -> None:
        """Make a child that was stopped for good startable again (same slot, same refs)."""
        if child.cell is not None and child.cell.closed:
            child.cell.reopen()
            self.tree.cells[child.path] = child.cell
        if child.node is not None and child.node.retired:
            assert not isinstance(child.spec, ChildSpec)
            child.node = _Node(self.tree, child.spec, child.path)

    def find(self, name: str) -> _Child:
        child = self.children.get(name) if isinstance(name, str) else None
        if child is None:
            raise NoSuchChild(
                join(self.path, str(name)), f" under supervisor {self.path or '(root)'!r}"
            )
        return child

    def close(self, child: _Child, reason: str) -> None:
        """Close the slots of ``child``'s subtree (it will not run again unless revived) and
        forget the nodes in it: a walk of that subtree only."""
        cells = self.tree.cells
        if child.cell is not None:
            if cells.get(child.path) is child.cell:
                del cells[child.path]
            child.cell.close(reason)
        sub = child.node
        if sub is not None and not sub.retired:
            for grandchild in sub.children.values():
                sub.close(grandchild, reason)
            if self.tree.nodes.get(child.path) is sub:
                del self.tree.nodes[child.path]
            sub.retired = True
            sub.state = CellState.STOPPED

    # ------------------------------------------------------------------ views

    def counts(self) -> ChildCounts:
        specs = len(self.children)
        return ChildCounts(
            specs=specs,
            active=self.active,
            supervisors=self.supervisors,
            workers=specs - self.supervisors,
        )

    def snapshot(
        self, name: str = "", restarts: int = 0, restart_type: str = "permanent"
    ) -> TreeNode:
        nodes = []
        for child in self.children.values():
            if child.node is not None:
                nodes.append(
                    child.node.snapshot(
                        child.path.rpartition("/")[2], child.restarts, child.spec.restart.value
                    )
                )
            else:
                assert child.cell is not None
                nodes.append(
                    TreeNode(
                        name=child.cell.name,
                        path=child.path,
                        kind="actor",
                        state=child.cell.state.value,
                        restarts=child.restarts,
                        mailbox_depth=len(child.cell.queue),
                        restart_type=child.spec.restart.value,
                    )
                )
        return TreeNode(
            name=name,
            path=self.path,
            kind="supervisor",
            state=self.state.value,
            restarts=restarts,
            restart_type=restart_type,
            strategy="dynamic" if self.dynamic else self.spec.strategy.value,
            children=tuple(nodes),
        )

    # ------------------------------------------------------------------ control (from handles)

    async def control(self, op: Callable[[_Run], Awaitable[Any]]) -> Any:
        """Run ``await op(run)`` inside the supervisor's task and return its result."""
        inbox = self.inbox
        if inbox is None or self.retired:
            raise SupervisorNotRunning(self.path)
        request = _Control(op)
        try:
            inbox.send_nowait(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SupervisorNotRunning(self.path) from None
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def request_stop(self, terminal: bool) -> bool:
        inbox = self.inbox
        if inbox is None:
            return False
        try:
            inbox.send_nowait(_Stop(terminal))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        run = self.current
        if run is not None:
            # A child blocked in on_start must not hold the stop up: the start is abandoned
            # (the child gets its shutdown grace) and the loop then reads the stop request.
            run.stopping = True
            if run.start_scope is not None:
                run.start_scope.cancel()
        return True
