"""The supervisor engine: starting, watching, restarting and stopping children.

Theory of operation
-------------------
A supervisor is one trio task (its *run*) that owns a nursery with one task per running child.
Child tasks never raise into the nursery: each one reports its exit (normal, or the crash) to
the supervisor's inbox and the supervisor decides, one event at a time, so decisions are
sequential and easy to reason about:

1. A child exits.  If it must not be restarted (temporary; transient with a normal exit) it
   is retired: its slot closes and queued asks get ``ActorStopped``.
2. Otherwise the restart is counted against the intensity (``max_restarts`` within
   ``period``).  Past it, the supervisor stops every child in reverse start order and raises
   :class:`SupervisorGaveUp` to its parent; at the root that leaves ``open_supervisor``.
3. Else the strategy picks the restart group (the child; every child; the child and those
   started after it), stops the rest of the group in reverse order, and schedules the group to
   start again, in start order, after the backoff delay.

Persistent vs per-run state: a supervisor's *node* (its children's records, their slots and
restart counts, dynamic children) lives as long as the tree; a *run* (nursery, inbox,
intensity window) lives as long as one incarnation of the supervisor.  When a supervisor fails
and its parent restarts it, the new run reuses the node, so actor slots, the messages queued in
them and every ``ActorRef`` survive the restart of a whole subtree.  Stopping a child is
*terminal* (its slots close) only when nothing will restart it: a termination, a retirement, or
the tree shutting down.  Stops on the way to a restart or an escalation keep the slots open.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from actors._core._actor import check_actor
from actors._core._cell import CellState, _Cell, is_cancellation, is_fatal, run_actor, unwrap
from actors._core._reply import _Timers
from actors._errors import ActorNotFound, AuraError, ErrorCategory
from actors._policies._logs import describe_exception
from supervisors._events import EventKind, SupervisionEvent, TreeNode, _EventBus
from supervisors._spec import AnySpec, ChildSpec, Restart, RestartBackoff, Strategy, SupervisorSpec

__all__ = [
    "ChildStartFailed",
    "NoSuchChild",
    "SupervisorError",
    "SupervisorGaveUp",
    "SupervisorNotRunning",
]


class SupervisorError(AuraError):
    """Base class of supervision errors."""

    default_category = ErrorCategory.INVALID_STATE


class SupervisorGaveUp(SupervisorError):
    """A supervisor exceeded its restart intensity, stopped its children and gave up.

    Attributes:
        path: the supervisor's path (``""`` for the root).
        child: the path of the child whose exit exceeded the intensity.
        max_restarts, period: the intensity that was exceeded.
        cause: the child's last crash (also ``__cause__``), or ``None`` for a normal exit.
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(
        self,
        *,
        path: str,
        child: str,
        max_restarts: int,
        period: float,
        cause: BaseException | None,
    ) -> None:
        what = "exited" if cause is None else f"crashed ({describe_exception(cause)})"
        super().__init__(
            f"Supervisor {path or '(root)'!r} gave up: {child!r} {what} and more than "
            f"{max_restarts} restart(s) happened within {period:g} s.",
            suggested_action=(
                "Look at the cause of the repeated crashes; raise max_restarts/period or add a "
                "restart backoff only if the failures are expected to pass."
            ),
        )
        self.path = path
        self.child = child
        self.max_restarts = max_restarts
        self.period = period
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause


class NoSuchChild(SupervisorError, ActorNotFound):
    """No child (or actor, or supervisor) exists at the given name or path."""

    default_category = ErrorCategory.VALIDATION

    def __init__(self, path: str, detail: str = "") -> None:
        AuraError.__init__(
            self,
            f"No such child: {path!r}{detail}.",
            suggested_action="Check the name against Supervisor.snapshot().",
        )
        self.path = path
        self.actor = path


class SupervisorNotRunning(SupervisorError):
    """The supervisor is stopped or restarting, so it cannot take the request now."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"Supervisor {path or '(root)'!r} is not running.",
            suggested_action="Retry once the supervisor is running again.",
        )


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
        self.bus.emit(
            SupervisionEvent(
                kind=kind, path=path, supervisor=supervisor, at=trio.current_time(), **kw
            ),
            error,
        )

    def close_under(self, path: str, reason: str) -> None:
        """Close every actor slot at or below ``path`` (``""``: the whole tree).

        Used when a subtree will not run again; its supervisors' nodes are forgotten too, so a
        child added later under the same name starts afresh.
        """

        def inside(p: str) -> bool:
            return not path or p == path or p.startswith(path + "/")

        for cell_path in [p for p in self.cells if inside(p)]:
            self.cells.pop(cell_path).close(reason)
        for node_path in [p for p in self.nodes if p and inside(p)]:
            self.nodes.pop(node_path).retired = True


@attrs.define(eq=False)
class _Child:
    """A supervisor's record of one child, kept across restarts of child and supervisor."""

    spec: AnySpec
    path: str
    cell: _Cell | None = None
    node: _Node | None = None
    restarts: int = 0
    consecutive: int = 0
    state: CellState = CellState.RESTARTING
    # per incarnation of the child:
    gen: int = 0
    running: bool = False
    expected_exit: bool = False
    scope: trio.CancelScope | None = None
    exited: trio.Event | None = None
    started_at: float = 0.0
    restart_due: float | None = None
    restart_delay: float = 0.0
    start_error: BaseException | None = None
    exit_error: BaseException | None = None  # how the last incarnation ended (a crash)
    started_ok: bool = False

    @property
    def is_supervisor(self) -> bool:
        return self.node is not None


@attrs.frozen
class _Exit:
    child: _Child
    gen: int
    error: BaseException | None


@attrs.frozen
class _Stop:
    terminal: bool


@attrs.define
class _Control:
    op: Callable[[_Run], Awaitable[Any]]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class _Node:
    """A supervisor's persistent state (one per supervisor path in a tree)."""

    def __init__(self, tree: _Tree, spec: SupervisorSpec, path: str) -> None:
        self.tree = tree
        self.spec = spec
        self.path = path
        self.children: list[_Child] = []
        self.inbox: trio.MemorySendChannel[Any] | None = None
        self.current: _Run | None = None  # the incarnation running now
        self.retired = False
        self.state = CellState.RESTARTING
        tree.nodes[path] = self
        for child_spec in spec.children:
            self.children.append(self._make_child(child_spec))

    # ------------------------------------------------------------------ children records

    def _make_child(self, spec: AnySpec) -> _Child:
        path = join(self.path, spec.name)
        child = _Child(spec=spec, path=path)
        if isinstance(spec, SupervisorSpec):
            node = self.tree.nodes.get(path)
            child.node = (
                node if node is not None and not node.retired else _Node(self.tree, spec, path)
            )
        else:
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
        return child

    def revive(self, child: _Child) -> None:
        """Make a child that was stopped for good startable again (same slot, same refs)."""
        if child.cell is not None and child.cell.closed:
            child.cell.reopen()
            self.tree.cells[child.path] = child.cell
        if child.node is not None and child.node.retired:
            child.node = _Node(self.tree, child.node.spec, child.path)

    def find(self, name: str) -> _Child:
        for child in self.children:
            if child.spec.name == name:
                return child
        raise NoSuchChild(join(self.path, name), f" under supervisor {self.path or '(root)'!r}")

    def snapshot(
        self, name: str = "", restarts: int = 0, restart_type: str = "permanent"
    ) -> TreeNode:
        nodes = []
        for child in self.children:
            if child.node is not None:
                nodes.append(
                    child.node.snapshot(child.spec.name, child.restarts, child.spec.restart.value)
                )
            else:
                assert child.cell is not None
                nodes.append(
                    TreeNode(
                        name=child.spec.name,
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
            strategy=self.spec.strategy.value,
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

    # ------------------------------------------------------------------ one run

    async def run(self, started: Callable[[], None]) -> None:
        """Run one incarnation of this supervisor until it is stopped or gives up."""
        run = _Run(self)
        await run.main(started)


class _Run:
    """One incarnation of a supervisor."""

    def __init__(self, node: _Node) -> None:
        self.node = node
        self.tree = node.tree
        self.spec = node.spec
        self.restart_times: deque[float] = deque()
        self.nursery: trio.Nursery | None = None
        self.idle = False
        self.stopping = False  # a stop request is queued: no more starts or control requests
        self.start_scope: trio.CancelScope | None = None  # around the wait for a start
        self.send, self.receive = trio.open_memory_channel[Any](math.inf)

    async def main(self, started: Callable[[], None]) -> None:
        node = self.node
        node.inbox = self.send
        node.current = self
        node.state = CellState.STARTING
        terminal = False
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    for child in list(node.children):
                        node.revive(child)
                        await self._start(child, restarted=False)
                    node.state = CellState.RUNNING
                    started()
                    terminal = await self._loop()
                except BaseException as exc:
                    if is_cancellation(exc) or is_fatal(exc):
                        raise
                    # Giving up (or an internal error): stop the children, keep their slots
                    # for whoever restarts this supervisor, and fail to the parent.
                    node.state = CellState.STOPPING
                    await self._stop_all(terminal=False)
                    raise
                node.state = CellState.STOPPING
                await self._stop_all(terminal=terminal)
                nursery.cancel_scope.cancel()
        finally:
            node.inbox = None
            if node.current is self:
                node.current = None
            self.send.close()
            node.state = CellState.STOPPED if terminal else CellState.RESTARTING
            self._fail_pending_controls()

    def _fail_pending_controls(self) -> None:
        while True:
            try:
                message = self.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if isinstance(message, _Control):
                message.error = SupervisorNotRunning(self.node.path)
                message.done.set()

    async def _loop(self) -> bool:
        """Process events until a stop request (returns whether it is terminal)."""
        while True:
            due = min(
                (c.restart_due for c in self.node.children if c.restart_due is not None),
                default=math.inf,
            )
            if due <= trio.current_time():
                await self._start_due()
                continue
            message = None
            self.idle = True
            try:
                if due == math.inf:
                    message = await self.receive.receive()
                else:
                    with trio.move_on_at(due):
                        message = await self.receive.receive()
            finally:
                self.idle = False
            if message is None:
                continue
            if isinstance(message, _Exit):
                if message.gen == message.child.gen and message.child.running:
                    await self._on_exit(message.child, message.error)
            elif isinstance(message, _Control):
                if self.stopping:  # a stop request is queued behind it: refuse
                    message.error = SupervisorNotRunning(self.node.path)
                    message.done.set()
                    continue
                try:
                    message.result = await message.op(self)
                except Exception as exc:
                    message.error = exc
                except BaseException:
                    # Cut short by cancellation (the tree is going away): its caller is
                    # answered all the same, then the cancellation goes on.
                    message.error = SupervisorNotRunning(self.node.path)
                    raise
                finally:
                    message.done.set()
            elif isinstance(message, _Stop):
                return message.terminal

    # ------------------------------------------------------------------ starting

    async def _start(self, child: _Child, *, restarted: bool) -> bool:
        """Start ``child`` and wait until it has started or failed to.  Returns success."""
        assert self.nursery is not None
        child.gen += 1
        child.running = True
        child.expected_exit = False
        child.restart_due = None
        child.start_error = None
        child.exit_error = None
        child.started_ok = False
        child.scope = trio.CancelScope()
        child.exited = trio.Event()
        child.state = CellState.STARTING
        ready = trio.Event()
        self.nursery.start_soon(
            self._child_main, child, ready, restarted, name=f"child {child.path}"
        )
        # Waiting for on_start must not freeze the supervisor: a stop request (the tree's
        # shutdown, a parent's restart) abandons the start and stops the child within its
        # grace.  Control requests and exits wait in the inbox meanwhile.
        with trio.CancelScope() as scope:
            self.start_scope = scope
            if self.stopping:
                scope.cancel()
            await ready.wait()
        self.start_scope = None
        if not ready.is_set():
            await self._stop(child, terminal=False)
            return False
        return child.started_ok

    def _mark_started(self, child: _Child, restarted: bool) -> None:
        child.started_ok = True
        child.state = CellState.RUNNING
        child.started_at = trio.current_time()
        if restarted:
            self.tree.emit(
                EventKind.RESTARTED,
                child.path,
                self.node.path,
                restarts=child.restarts,
                delay=child.restart_delay,
            )
        else:
            self.tree.emit(EventKind.STARTED, child.path, self.node.path, restarts=child.restarts)

    async def _child_main(self, child: _Child, ready: trio.Event, restarted: bool) -> None:
        """The task of one child: runs its incarnations until one must go to the supervisor.

        A crash that the supervisor would answer with an immediate restart of this child alone
        (see :meth:`_restart_inline`) is handled right here, in the same task: the common
        restart costs no task spawn and no hop through the supervisor's inbox.
        """
        error: BaseException | None = None
        assert child.scope is not None
        assert child.exited is not None

        def started() -> None:
            self._mark_started(child, restarted)
            ready.set()

        try:
            with child.scope:
                # The host of the child's background tasks, for all its inline incarnations.
                async with trio.open_nursery() as host:
                    while True:
                        error = None
                        try:
                            if child.node is not None:
                                await child.node.run(started)
                            else:
                                assert isinstance(child.spec, ChildSpec)
                                assert child.cell is not None
                                actor = child.spec.factory()
                                check_actor(actor, f"child {child.path!r}")
                                await run_actor(child.cell, actor, started, host, child.scope)
                        except BaseException as exc:
                            if is_cancellation(exc) or is_fatal(exc):
                                raise
                            error = unwrap(exc)
                        if not self._restart_inline(child, error):
                            break
                        restarted = True
        finally:
            if not child.started_ok:
                child.start_error = error
            child.exit_error = error
            child.exited.set()
            ready.set()
            try:
                self.send.send_nowait(_Exit(child, child.gen, error))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _restart_inline(self, child: _Child, error: BaseException | None) -> bool:
        """Restart ``child`` in its own task if that is exactly what the loop would decide.

        Only when the supervisor is idle (so decisions stay sequential), the strategy restarts
        this child alone, without delay, and the restart stays within the intensity; anything
        else goes to the supervisor's loop.
        """
        if (
            not self.idle
            or child.node is not None
            or child.scope is None
            or child.scope.cancel_called
            or child.expected_exit
            or self.spec.strategy is not Strategy.ONE_FOR_ONE
            or self.node.state is not CellState.RUNNING
            or self.receive.statistics().current_buffer_used
        ):
            return False
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and error is None):
            return False
        if self._backoff_settings(child) is not None:
            return False
        now = trio.current_time()
        times = self.restart_times
        while times and times[0] <= now - self.spec.period:
            times.popleft()
        if len(times) + 1 > self.spec.max_restarts:
            return False
        if error is not None:
            self._crashed(child, error)
        times.append(now)
        child.gen += 1
        child.restarts += 1
        if child.cell is not None:
            child.cell.restarts = child.restarts
        child.restart_delay = 0.0
        child.started_ok = False
        child.state = CellState.STARTING
        return True

    async def _start_due(self) -> None:
        now = trio.current_time()
        for child in list(self.node.children):
            if child.restart_due is not None and child.restart_due <= now:
                child.restarts += 1
                if child.cell is not None:
                    child.cell.restarts = child.restarts
                await self._start(child, restarted=True)

    # ------------------------------------------------------------------ exits and restarts

    async def _on_exit(self, child: _Child, error: BaseException | None) -> None:
        child.running = False
        now = trio.current_time()
        if child.expected_exit:
            return
        child.state = CellState.RESTARTING
        reason = "" if error is None else self._crashed(child, error)
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and error is None):
            self.tree.emit(
                EventKind.STOPPED,
                child.path,
                self.node.path,
                reason=reason or "normal exit",
                restarts=child.restarts,
            )
            self._retire(child, "it exited and is not restarted")
            return
        self._count_restart(child, error, now)
        delay = self._backoff(child, now)
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.running:
                await self._stop(other, terminal=False)
        for member in group:
            if member.spec.restart is Restart.TEMPORARY and member is not child:
                self._retire(member, "a sibling's restart stopped it and it is temporary")
                continue
            member.state = CellState.RESTARTING
            member.restart_due = now + delay
            member.restart_delay = delay

    def _crashed(self, child: _Child, error: BaseException, note: str = "") -> str:
        """Emit the ``crashed`` event of ``child`` (logged by the bus with the traceback);
        return its reason (redacted: it goes to subscribers, the monitor and the API)."""
        reason = describe_exception(error)
        self.tree.emit(
            EventKind.CRASHED,
            child.path,
            self.node.path,
            error,
            reason=reason + note,
            restarts=child.restarts,
        )
        return reason

    def _count_restart(self, child: _Child, error: BaseException | None, now: float) -> None:
        times = self.restart_times
        times.append(now)
        while times and times[0] <= now - self.spec.period:
            times.popleft()
        if len(times) > self.spec.max_restarts:
            self.tree.emit(
                EventKind.GAVE_UP,
                self.node.path,
                self.node.path,
                reason=f"{child.path} exited and more than {self.spec.max_restarts} restart(s) "
                f"happened within {self.spec.period:g} s",
            )
            raise SupervisorGaveUp(
                path=self.node.path,
                child=child.path,
                max_restarts=self.spec.max_restarts,
                period=self.spec.period,
                cause=error,
            )

    def _backoff_settings(self, child: _Child) -> RestartBackoff | None:
        if isinstance(child.spec, ChildSpec) and child.spec.backoff is not None:
            return child.spec.backoff
        return self.spec.backoff

    def _backoff(self, child: _Child, now: float) -> float:
        backoff = self._backoff_settings(child)
        if backoff is None:
            return 0.0
        if now - child.started_at >= backoff.reset_after:
            child.consecutive = 0
        delay = backoff.delay(child.consecutive, self.tree.rng)
        child.consecutive += 1
        return delay

    def _group(self, child: _Child) -> list[_Child]:
        children = self.node.children
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [child]
        if strategy is Strategy.ONE_FOR_ALL:
            members = children
        else:  # rest_for_one: the child and every child started after it
            members = children[children.index(child) :]
        # Children stopped for good (transient after a normal exit) stay stopped.
        return [c for c in members if c is child or c.running or c.restart_due is not None]

    def _retire(self, child: _Child, reason: str) -> None:
        child.running = False
        child.restart_due = None
        child.state = CellState.STOPPED
        self.tree.close_under(child.path, reason)
        if child.node is not None:
            child.node.state = CellState.STOPPED
        if child.spec.restart is Restart.TEMPORARY and child in self.node.children:
            self.node.children.remove(child)

    # ------------------------------------------------------------------ stopping

    async def _stop(self, child: _Child, *, terminal: bool) -> None:
        """Stop ``child`` gracefully within its shutdown grace, then cancel it."""
        child.restart_due = None
        if child.running and child.exited is not None:
            child.expected_exit = True
            child.state = CellState.STOPPING
            if child.node is not None:
                child.node.request_stop(terminal)
            elif child.cell is not None:
                child.cell.request_stop()
            with trio.move_on_after(child.spec.shutdown):
                await child.exited.wait()
            if not child.exited.is_set():
                assert child.scope is not None
                child.scope.cancel()
                await child.exited.wait()
            child.running = False
            error = child.exit_error
            if error is not None:
                # It failed on its way out (on_stop raised): the exit is expected, so the loop
                # ignores it, but the failure is still a crash to report.
                child.exit_error = None
                self._crashed(child, error, " (while stopping)")
        if terminal:
            child.state = CellState.STOPPED
            self.tree.close_under(child.path, "it was stopped by its supervisor")
        else:
            child.state = CellState.RESTARTING

    async def _stop_all(self, *, terminal: bool) -> None:
        for child in reversed(self.node.children):
            await self._stop(child, terminal=terminal)

    # ------------------------------------------------------------------ dynamic children

    async def start_child(self, spec: AnySpec) -> _Child:
        for existing in self.node.children:
            if existing.spec.name == spec.name:
                raise ValueError(
                    f"supervisor {self.node.path or '(root)'!r} already has a child named "
                    f"{spec.name!r}"
                )
        child = self.node._make_child(spec)
        self.node.children.append(child)
        if not await self._start(child, restarted=False):
            # The caller learns about a failed start; the child is not kept.
            self.node.children.remove(child)
            child.running = False
            self.tree.close_under(child.path, "it failed to start")
            if self.stopping and child.start_error is None:
                raise SupervisorNotRunning(self.node.path)  # abandoned: the supervisor stops
            raise ChildStartFailed(child.path, child.start_error)
        return child

    async def terminate_child(self, name: str) -> None:
        child = self.node.find(name)
        await self._stop(child, terminal=True)
        self.node.children.remove(child)
        self.tree.emit(
            EventKind.STOPPED,
            child.path,
            self.node.path,
            reason="terminated",
            restarts=child.restarts,
        )

    async def restart_child(self, name: str) -> None:
        child = self.node.find(name)
        await self._stop(child, terminal=False)
        self.node.revive(child)
        child.restarts += 1
        if child.cell is not None:
            child.cell.restarts = child.restarts
        child.restart_delay = 0.0
        await self._start(child, restarted=True)


class ChildStartFailed(SupervisorError):
    """A child added with ``start_child`` failed to start (its factory or ``on_start`` raised)."""

    default_category = ErrorCategory.DEPENDENCY

    def __init__(self, path: str, cause: BaseException | None) -> None:
        what = "" if cause is None else f": {type(cause).__name__}: {cause}"
        super().__init__(
            f"Child {path!r} failed to start{what}.",
            suggested_action="Fix the cause (see __cause__) and start the child again.",
        )
        self.path = path
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause
