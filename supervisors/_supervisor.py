"""The supervisor engine: starting, watching, restarting and stopping children (Erlang/OTP).

Theory of operation
-------------------
A supervisor is one trio task (its *run*) that owns a nursery with one task per running child.
Child tasks never raise into the nursery: each one reports its exit (normal, or the crash) to
the supervisor's inbox and the supervisor decides, one event at a time, so decisions are
sequential and easy to reason about.  Every rule below is Erlang/OTP's ``supervisor``, by name:

* **start** (``init``): children start in order, each once its ``on_start`` has returned.  If
  one fails to start (``failed_to_start_child``), the children already started are stopped in
  reverse order and the supervisor fails with :class:`ChildStartFailed`, to ``open_supervisor``
  or to its parent, which sees a child (this supervisor) that failed to start.
* **exit**: a child that must not be restarted (temporary; transient after a normal exit, or
  a transient supervisor that gave up, whose exit is OTP's ``shutdown``) is stopped for good:
  its slot closes, queued asks get ``ActorStopped``; a temporary child is forgotten, another
  keeps its record (``restart_child`` can start it again).
* **restart**: otherwise the restart is counted against the intensity (``max_restarts``
  within ``period``); past it, the supervisor stops every child in reverse start order and
  raises :class:`SupervisorGaveUp` to its parent (``shutdown``).  Else the strategy picks the
  group (the child; every child; the child and those after it), stops the rest of it in
  reverse order (temporary ones are forgotten), and restarts the group in start order, after
  the backoff delay if there is one.
* **a failed restart** stops the group restart at that child: the children after it stay
  down.  It counts toward the intensity like a crash, and the child's group is restarted again
  from it (``try_again_restart``), so a child that never starts makes its supervisor give up.
* **administration**: ``terminate_child`` stops a child and keeps its record (a temporary
  child's is dropped), ``restart_child`` starts a terminated child again, ``delete_child``
  drops a terminated child's record; a running child is ``running`` to the last two, and one
  waiting to be restarted ``restarting``.  A start that fails there is the caller's error
  (:class:`ChildStartFailed`): the child stays down and nothing is counted.

A dynamic supervisor (``DynamicSupervisorSpec``, OTP's ``simple_one_for_one``) runs the same
engine with children added at run time under generated names; a child that stops for good is
forgotten, and all of them are stopped at once, each within its grace, when it stops.

A crash that the supervisor would answer with an immediate restart of that child alone is
handled in the child's own task (:meth:`_Run._restart_inline`): the common restart costs no task
spawn and no hop through the inbox.

Persistent vs per-run state: a supervisor's *node* (``_node``) lives as long as the tree; a run
(nursery, inbox, intensity window) as long as one incarnation of the supervisor.  When a
supervisor fails and its parent restarts it, the new run reuses the node, so actor slots, the
messages queued in them and every ``ActorRef`` survive the restart of a whole subtree.
Stopping a child is *terminal* (its slots close) only when nothing will restart it.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from actors._core._actor import Actor, check_actor
from actors._core._cell import CellState, is_cancellation, is_fatal, run_actor, unwrap
from actors._policies._logs import describe_exception
from supervisors._errors import (
    ChildRunning,
    ChildStartFailed,
    MaxChildrenReached,
    NoSuchChild,
    SupervisorGaveUp,
    SupervisorNotRunning,
)
from supervisors._events import EventKind
from supervisors._node import _Child, _Control, _Node, _Stop
from supervisors._spec import (
    AnySpec,
    ChildSpec,
    DynamicSupervisorSpec,
    Restart,
    RestartBackoff,
    Strategy,
)

__all__: list[str] = []

_FAILED_TO_START: Final = " (failed to start)"


@attrs.frozen
class _Exit:
    child: _Child
    gen: int
    error: BaseException | None


class _Countdown:
    """Set once ``n`` children have told it they ended (a concurrent stop's waiter)."""

    __slots__ = ("event", "n")

    def __init__(self) -> None:
        self.n = 0
        self.event = trio.Event()

    def set(self) -> None:
        self.n -= 1
        if self.n <= 0:
            self.event.set()


class _Run:
    """One incarnation of a supervisor."""

    def __init__(self, node: _Node) -> None:
        self.node = node
        self.tree = node.tree
        self.spec = node.spec
        self.restart_times: deque[float] = deque()
        self.due: list[tuple[float, int, _Child]] = []  # restarts waiting, by time
        self._seq = itertools.count()
        self.nursery: trio.Nursery | None = None
        self.idle = False
        self.stopping = False  # a stop request is queued: no more starts or control requests
        self.start_scope: trio.CancelScope | None = None  # around the wait for a start
        self.send, self.receive = trio.open_memory_channel[Any](math.inf)

    async def main(self, started: Callable[[], None]) -> None:
        """Start the children, call ``started``, then supervise until stopped or giving up."""
        node = self.node
        node.inbox = self.send
        node.current = self
        node.state = CellState.STARTING
        node.refresh()
        terminal = False
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    for child in list(node.children.values()):
                        if not await self._start(child, restarted=False):
                            if self.stopping:
                                break  # abandoned: the stop request waits in the inbox
                            # failed_to_start_child: stop what started, then fail.
                            raise ChildStartFailed(child.path, child.start_error)
                    node.state = CellState.RUNNING
                    started()
                    terminal = await self._loop()
                except BaseException as exc:
                    if is_cancellation(exc) or is_fatal(exc):
                        raise
                    # Giving up, a failed start (or an internal error): stop the children,
                    # keep their slots for whoever restarts this supervisor, and fail.
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
            for child in node.children.values():
                child.running = False  # after a cancellation their tasks are gone too
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

    def _next_due(self) -> float:
        due = self.due
        while due and due[0][2].restart_due != due[0][0]:
            heapq.heappop(due)  # the child was started or stopped meanwhile
        return due[0][0] if due else math.inf

    async def _loop(self) -> bool:
        """Process events until a stop request (returns whether it is terminal)."""
        while True:
            due = self._next_due()
            if due <= trio.current_time() and not self.stopping:
                await self._start_due()
                continue
            message = None
            self.idle = True
            try:
                if due == math.inf or self.stopping:
                    message = await self.receive.receive()
                else:
                    with trio.move_on_at(due):
                        message = await self.receive.receive()
            finally:
                self.idle = False
            if message is None:
                continue
            if isinstance(message, _Exit):
                child = message.child
                if message.gen == child.gen and child.running and not child.expected_exit:
                    await self._on_exit(child, message.error)
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
        """Start ``child`` and wait until it has started or failed to.  Returns success.

        On failure the child is not running and ``child.start_error`` says why (``None`` when
        the start was abandoned because this supervisor is stopping).
        """
        assert self.nursery is not None
        self.node.revive(child)
        child.gen += 1
        child.running = True
        child.done = False
        child.expected_exit = False
        child.restart_due = None
        child.start_error = None
        child.exit_error = None
        child.started_ok = False
        child.restarted_start = restarted
        child.scope = trio.CancelScope()
        child.state = CellState.STARTING
        ready = child.ready = trio.Event()
        self.nursery.start_soon(self._child_main, child, name=child.path)
        # Waiting for on_start must not freeze the supervisor: a stop request (the tree's
        # shutdown, a parent's restart) abandons the start and stops the child within its
        # grace.  Control requests and exits wait in the inbox meanwhile.
        with trio.CancelScope() as scope:
            self.start_scope = scope
            if self.stopping:
                scope.cancel()
            await ready.wait()
        self.start_scope = None
        child.ready = None
        if not ready.is_set():
            await self._stop(child, terminal=False)
            child.start_error = None
            return False
        if not child.started_ok:
            child.running = False
            child.state = CellState.RESTARTING
            return False
        return True

    def mark_started(self, child: _Child) -> None:
        """Called by the child once it has started (see ``_Child.mark_started``)."""
        child.started_ok = True
        child.state = CellState.RUNNING
        child.started_at = trio.current_time()
        if child.restarted_start:
            child.restarts += 1
            if child.cell is not None:
                child.cell.restarts = child.restarts
            self.tree.emit(
                EventKind.RESTARTED,
                child.path,
                self.node.path,
                restarts=child.restarts,
                delay=child.restart_delay,
            )
        else:
            self.tree.emit(EventKind.STARTED, child.path, self.node.path, restarts=child.restarts)
        if child.ready is not None:
            child.ready.set()

    async def _child_main(self, child: _Child) -> None:
        """The task of one child: runs its incarnations until one must go to the supervisor.

        Its background tasks run in this supervisor's nursery (each in its own cancel scope,
        cancelled and waited for when the incarnation ends), so a child costs one task.
        """
        error: BaseException | None = None
        scope = child.scope
        assert scope is not None
        try:
            with scope:
                while True:
                    error = None
                    try:
                        # Awaited here, not in a helper coroutine: one coroutine fewer per
                        # child for as long as it runs.
                        if child.node is not None:
                            await _Run(child.node).main(child.mark_started)
                        else:
                            assert child.cell is not None
                            assert self.nursery is not None
                            actor = self._new_actor(child)
                            await run_actor(
                                child.cell, actor, child.mark_started, self.nursery, scope
                            )
                    except BaseException as exc:
                        if is_cancellation(exc) or is_fatal(exc):
                            raise
                        error = unwrap(exc)
                    if not self._restart_inline(child, error):
                        break
        finally:
            if not child.started_ok:
                child.start_error = error
            child.exit_error = error
            child.done = True
            waiter = child.waiter
            if waiter is not None:
                child.waiter = None
                waiter.set()
            if child.ready is not None:
                child.ready.set()
            try:
                self.send.send_nowait(_Exit(child, child.gen, error))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    @staticmethod
    def _new_actor(child: _Child) -> Actor[Any, Any]:
        """A new actor instance for ``child`` (an actor child), from its factory."""
        spec = child.spec
        assert isinstance(spec, ChildSpec)
        kwargs = child.kwargs
        actor = spec.factory(*child.args, **kwargs) if kwargs else spec.factory(*child.args)
        check_actor(actor, lambda: f"child {child.path!r}")
        if spec.restart is Restart.TEMPORARY:
            # Never needed again (OTP keeps no arguments for them either).
            child.args, child.kwargs = (), None
        return actor

    def _restart_inline(self, child: _Child, error: BaseException | None) -> bool:
        """Restart ``child`` in its own task if that is exactly what the loop would decide.

        Only when the supervisor is idle (so decisions stay sequential), the strategy restarts
        this child alone, without delay, and the restart stays within the intensity; anything
        else goes to the supervisor's loop.  A start that fails here is a crash like any other
        (counted, and retried or escalated the same way).
        """
        if (
            not self.idle
            or self.stopping
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
            self._crashed(child, error, "" if child.started_ok else _FAILED_TO_START)
        times.append(now)
        child.gen += 1
        child.restart_delay = 0.0
        child.started_ok = False
        child.restarted_start = True
        child.state = CellState.STARTING
        return True

    async def _start_due(self) -> None:
        now = trio.current_time()
        due = self.due
        while due and due[0][0] <= now and not self.stopping:
            at, _, child = heapq.heappop(due)
            if child.restart_due != at:
                continue  # started or stopped meanwhile
            child.restart_due = None
            await self._restart_group(child)

    async def _restart_group(self, trigger: _Child) -> None:
        """Restart ``trigger``'s group in start order, stopping at the first child that fails
        to start (the rest stays down until it starts: the failure is handled as a crash)."""
        group = self._group(trigger)
        for other in reversed(group):
            if other is not trigger and other.running:
                await self._stop(other, terminal=False)
        members = []
        for member in group:
            if member is not trigger and member.spec.restart is Restart.TEMPORARY:
                self._retire(member, "a sibling's restart stopped it and it is temporary")
            else:
                members.append(member)
        for member in members:
            if await self._start(member, restarted=True):
                continue
            if self.stopping:
                return  # abandoned: the supervisor is stopping
            error = member.start_error
            if error is not None:
                self._crashed(member, error, _FAILED_TO_START)
            await self._schedule_restart(member, error, trio.current_time())
            return

    # ------------------------------------------------------------------ exits and restarts

    async def _on_exit(self, child: _Child, error: BaseException | None) -> None:
        child.running = False
        child.state = CellState.RESTARTING
        # A supervisor that gave up exits with OTP's reason ``shutdown``: a normal exit for a
        # transient child (not restarted), a crash for a permanent one.
        shutdown = child.node is not None and isinstance(error, SupervisorGaveUp)
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (
            restart is Restart.TRANSIENT and (error is None or shutdown)
        ):
            reason = "normal exit"
            if shutdown:
                assert error is not None
                reason = f"gave up ({describe_exception(error)})"
            elif error is not None:
                reason = self._crashed(child, error)
            self.tree.emit(
                EventKind.STOPPED,
                child.path,
                self.node.path,
                reason=reason,
                restarts=child.restarts,
            )
            self._retire(child, "it exited and is not restarted")
            return
        if error is not None:
            self._crashed(child, error, "" if child.started_ok else _FAILED_TO_START)
        await self._schedule_restart(child, error, trio.current_time())

    async def _schedule_restart(
        self, child: _Child, error: BaseException | None, now: float
    ) -> None:
        """Count a restart of ``child`` (giving up past the intensity), stop the rest of its
        group, and have the group restarted after the backoff delay."""
        self._count_restart(child, error, now)
        delay = self._backoff(child, now)
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.running:
                await self._stop(other, terminal=False)
        for member in group:
            if member is not child and member.spec.restart is Restart.TEMPORARY:
                self._retire(member, "a sibling's restart stopped it and it is temporary")
            else:
                member.state = CellState.RESTARTING
        child.restart_delay = delay
        child.restart_due = now + delay
        heapq.heappush(self.due, (child.restart_due, next(self._seq), child))

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
        """The children a restart of ``child`` restarts, in start order: every child of the
        group, stopped ones included (as OTP restarts every child spec it keeps)."""
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [child]
        children = list(self.node.children.values())
        if strategy is Strategy.ONE_FOR_ALL:
            return children
        return children[children.index(child) :]  # rest_for_one: it and those after it

    def _retire(self, child: _Child, reason: str) -> None:
        """``child`` stopped for good: close its slots; forget it if it is temporary (or under
        a dynamic supervisor)."""
        child.running = False
        child.restart_due = None
        child.state = CellState.STOPPED
        self.node.close(child, reason)
        if child.spec.restart is Restart.TEMPORARY or self.node.dynamic:
            self.node.remove(child)

    # ------------------------------------------------------------------ stopping

    async def _stop(self, child: _Child, *, terminal: bool) -> None:
        """Stop ``child`` gracefully within its shutdown grace, then cancel it."""
        child.restart_due = None
        if child.running:
            child.expected_exit = True
            child.state = CellState.STOPPING
            self._request_stop(child, terminal)
            if not child.done:
                waiter = child.waiter = trio.Event()
                with trio.move_on_after(child.spec.shutdown):
                    await waiter.wait()
                if not child.done:
                    assert child.scope is not None
                    child.scope.cancel()
                    await waiter.wait()
            self._stopped(child)
        self._after_stop(child, terminal)

    @staticmethod
    def _request_stop(child: _Child, terminal: bool) -> None:
        if child.node is not None:
            child.node.request_stop(terminal)
        elif child.cell is not None:
            child.cell.request_stop()

    def _stopped(self, child: _Child) -> None:
        child.running = False
        error = child.exit_error
        if error is not None:
            # It failed on its way out (on_stop raised): the exit is expected, so the loop
            # ignores it, but the failure is still a crash to report.
            child.exit_error = None
            self._crashed(child, error, " (while stopping)")

    def _after_stop(self, child: _Child, terminal: bool) -> None:
        if terminal:
            child.state = CellState.STOPPED
            self.node.close(child, "it was stopped by its supervisor")
        else:
            child.state = CellState.RESTARTING

    async def _stop_all(self, *, terminal: bool) -> None:
        """Stop every child: in reverse start order, or all at once (a dynamic supervisor).
        When this supervisor will run again, its temporary children are forgotten (OTP never
        restarts them)."""
        children = list(self.node.children.values())
        if self.node.dynamic:
            await self._stop_at_once(children, terminal)
        else:
            for child in reversed(children):
                await self._stop(child, terminal=terminal)
        if not terminal:
            for child in children:
                if child.spec.restart is Restart.TEMPORARY:
                    self._retire(child, "its supervisor stopped and it is temporary")

    async def _stop_at_once(self, children: list[_Child], terminal: bool) -> None:
        """Ask every child to stop at once, wait for each within its own grace, then cancel
        the ones still running (OTP's ``simple_one_for_one`` shutdown)."""
        waiting: dict[float, tuple[_Countdown, list[_Child]]] = {}
        for child in children:
            child.restart_due = None
            if not child.running:
                continue
            child.expected_exit = True
            child.state = CellState.STOPPING
            self._request_stop(child, terminal)
            if not child.done:
                countdown, group = waiting.setdefault(child.spec.shutdown, (_Countdown(), []))
                countdown.n += 1
                group.append(child)
                child.waiter = countdown
        began = trio.current_time()
        for shutdown in sorted(waiting):
            countdown, group = waiting[shutdown]
            with trio.move_on_at(began + shutdown):
                await countdown.event.wait()
            for child in group:
                if not child.done:
                    assert child.scope is not None
                    child.scope.cancel()
        for countdown, _ in waiting.values():
            await countdown.event.wait()
        for child in children:
            if child.running:
                self._stopped(child)
            self._after_stop(child, terminal)

    # ------------------------------------------------------------------ administration

    def _find(self, name: str) -> _Child:
        return self.node.find(name)

    async def _start_new(self, child: _Child, restarted: bool) -> _Child:
        """Start a child just added; a failure is the caller's error and the child is not
        kept."""
        self.node.add(child)
        if await self._start(child, restarted=restarted):
            return child
        self.node.remove(child)
        self.node.close(child, "it failed to start")
        if self.stopping and child.start_error is None:
            raise SupervisorNotRunning(self.node.path)  # abandoned: the supervisor stops
        raise ChildStartFailed(child.path, child.start_error)

    async def start_child(self, spec: AnySpec) -> _Child:
        existing = self.node.children.get(spec.name)
        if existing is not None:
            state = "running" if existing.running else "present but not running"
            raise ValueError(
                f"supervisor {self.node.path or '(root)'!r} already has a child named "
                f"{spec.name!r} ({state})"
            )
        return await self._start_new(self.node.make_child(spec), restarted=False)

    async def start_dynamic(
        self, spec: AnySpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Child:
        """A dynamic supervisor's ``start_child``: a new child under a generated name."""
        node = self.node
        assert isinstance(node.spec, DynamicSupervisorSpec)
        limit = node.spec.max_children
        if limit is not None and len(node.children) >= limit:
            raise MaxChildrenReached(node.path, limit)
        node.seq += 1
        child = node.make_child(spec, f"{spec.name}-{node.seq}", args, kwargs)
        return await self._start_new(child, restarted=False)

    async def terminate_child(self, name: str) -> None:
        child = self._find(name)
        was_stopped = child.state is CellState.STOPPED and not child.running
        await self._stop(child, terminal=True)
        if child.spec.restart is Restart.TEMPORARY or self.node.dynamic:
            self.node.remove(child)
        if not was_stopped:
            self.tree.emit(
                EventKind.STOPPED,
                child.path,
                self.node.path,
                reason="terminated",
                restarts=child.restarts,
            )

    def _check_terminated(self, child: _Child) -> None:
        if child.running:
            raise ChildRunning(child.path, "running")
        if child.state is not CellState.STOPPED:
            raise ChildRunning(child.path, "restarting")

    async def restart_child(self, name: str) -> None:
        child = self._find(name)
        self._check_terminated(child)
        child.restart_delay = 0.0
        if await self._start(child, restarted=True):
            return
        child.state = CellState.STOPPED
        self.node.close(child, "it failed to start")
        if self.stopping and child.start_error is None:
            raise SupervisorNotRunning(self.node.path)
        raise ChildStartFailed(child.path, child.start_error)

    async def delete_child(self, name: str) -> None:
        child = self._find(name)
        self._check_terminated(child)
        self.node.remove(child)

    def find_child_of(self, path: str) -> _Child | None:
        """The child at ``path`` if it is one of this supervisor's, else ``None``."""
        parent, _, name = path.rpartition("/")
        if parent != self.node.path:
            raise NoSuchChild(path, f" (not a child of supervisor {self.node.path or '(root)'!r})")
        return self.node.children.get(name)
