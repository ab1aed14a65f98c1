"""Cells (the supervised slots actors live in) and the loop that runs one actor incarnation.

Theory of operation
-------------------
A :class:`_Cell` is the stable identity behind an :class:`~actors.ActorRef`: its path, its
bounded mailbox and its counters.  It outlives any one actor instance.  An *incarnation* is one
actor instance running in the cell; when it crashes the supervisor builds a fresh instance from
the factory and runs it in the same cell, so the mailbox, and every message queued in it,
carries over and refs never need to be re-resolved.

Cell states::

    starting --on_start done--> running --crash/stop--> restarting --> starting ...
        \\                          \\--terminal stop--> stopping --> stopped
         \\--close()-------------------------------------------------> stopped

A cell accepts messages in every state but ``stopped``: while an actor restarts, its mailbox
keeps filling (up to its capacity) and the next incarnation handles the messages.  Closing a
cell (it will not run again) fails every queued ask with ``ActorStopped``.

The mailbox is a ``deque`` plus at most one parked receiver (the incarnation's loop).  Senders
append and reschedule the receiver if it is parked; the loop drains the deque without a
checkpoint per message and yields every ``_FAIRNESS`` messages so a busy actor cannot starve
other tasks.  Only a full mailbox takes the slow path (a ``ParkingLot`` and a cancel scope).

The loop (:func:`run_actor`) hands each message to ``actor.handle``.  The return value answers
the ask (a :class:`~actors.Failure` answers with its error).  An exception from ``handle`` is a
crash: the message's caller gets ``ActorCrashed`` immediately, then the exception leaves the
incarnation for the supervisor to act on.  Replies the actor deferred and had not answered are
failed when the incarnation ends (``ActorCrashed`` after a crash, ``ActorStopped`` otherwise),
so no ask is ever left waiting on an incarnation that is gone.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from outcome import Value
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

from actors._core._reply import DONE, PENDING, Failure, Reply, _Timers
from actors._errors import ActorCrashed, ActorStopped, AskTimeout, ErrorCategory, MailboxFull

if TYPE_CHECKING:
    from actors._core._actor import Actor

__all__ = ["ActorStatistics", "CellState"]

#: Messages handled back to back before the loop yields to other tasks.
_FAIRNESS: Final = 64

#: Default mailbox capacity and ask timeout (documented on ChildSpec / open_actor).
DEFAULT_CAPACITY: Final = 1000
DEFAULT_ASK_TIMEOUT: Final = 30.0


class CellState(enum.Enum):
    """Lifecycle state of an actor's slot (see the module docstring for transitions)."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


@attrs.frozen
class ActorStatistics:
    """A snapshot of one actor slot's counters (``ActorRef.statistics()``).

    Attributes:
        path: the actor's path in its tree.
        state: the slot's :class:`CellState`.
        mailbox_depth: messages queued and not yet handled.
        mailbox_capacity: the mailbox bound.
        received: messages accepted into the mailbox.
        handled: messages handled (answered or told) without a crash.
        crashed: messages whose handling crashed the actor.
        dropped: messages skipped because their caller had already given up.
        discarded: messages still queued when the slot closed (stopped for good, terminated):
            their asks were answered ``ActorStopped``, their tells were lost.
        restarts: how many times the slot's actor was restarted.
        incarnation: how many actor instances have run in the slot.
    """

    path: str
    state: CellState
    mailbox_depth: int
    mailbox_capacity: int
    received: int
    handled: int
    crashed: int
    dropped: int
    restarts: int
    incarnation: int
    discarded: int = 0


class _Cell:
    """The stable slot behind an ActorRef.  Private: the runtime and supervisors use it."""

    __slots__ = (
        "__weakref__",
        "_keep",
        "ask_timeout",
        "capacity",
        "closed",
        "crashed",
        "discarded",
        "dropped",
        "generation",
        "handled",
        "incarnation",
        "name",
        "owner",
        "path",
        "queue",
        "received",
        "receiver",
        "registry",
        "restarts",
        "space",
        "state",
        "stop_reason",
        "timers",
    )

    def __init__(
        self,
        path: str,
        *,
        timers: _Timers,
        capacity: int = DEFAULT_CAPACITY,
        ask_timeout: float = DEFAULT_ASK_TIMEOUT,
        registry: dict[str, _Cell] | None = None,
    ) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"mailbox capacity of {path!r} must be an int >= 1, got {capacity!r}")
        if not (isinstance(ask_timeout, int | float) and ask_timeout > 0):
            raise ValueError(f"ask_timeout of {path!r} must be a number > 0, got {ask_timeout!r}")
        self.path = path
        self.name = path.rpartition("/")[2]
        self.timers = timers
        # Every slot of the same tree, by path: how an actor finds its peers (Actor.lookup).
        self.registry: dict[str, _Cell] = {path: self} if registry is None else registry
        # The supervision tree the slot belongs to (opaque here; see supervisors.root_of).
        self.owner: object | None = None
        # State a built-in actor keeps across its restarts (a provider's idempotency table):
        # made at first use, like ``space``, so a plain actor's slot stays small.
        self._keep: dict[str, Any] | None = None
        self.capacity = capacity
        self.ask_timeout = float(ask_timeout)
        self.queue: deque[tuple[Any, Reply[Any] | None]] = deque()
        self.receiver: Task | None = None
        # Senders waiting for room in a full mailbox; made when the first one has to wait.
        self.space: trio.lowlevel.ParkingLot | None = None
        self.state = CellState.RESTARTING
        self.closed = False
        self.stop_reason = "it is stopped"
        self.incarnation: _Incarnation | None = None
        self.generation = 0
        self.received = 0
        self.handled = 0
        self.crashed = 0
        self.dropped = 0
        self.discarded = 0
        self.restarts = 0

    @property
    def keep(self) -> dict[str, Any]:
        """State a built-in actor keeps across its restarts (made at first use)."""
        keep = self._keep
        if keep is None:
            keep = self._keep = {}
        return keep

    def senders(self) -> trio.lowlevel.ParkingLot:
        """The parking lot of senders waiting for room (made at first use)."""
        space = self.space
        if space is None:
            space = self.space = trio.lowlevel.ParkingLot()
        return space

    # ---------------------------------------------------------------- sending (hot path)

    def put_nowait(self, message: Any, reply: Reply[Any] | None) -> None:
        """Queue a message; the caller has checked ``closed`` and capacity."""
        self.queue.append((message, reply))
        self.received += 1
        receiver = self.receiver
        if receiver is not None:
            self.receiver = None
            reschedule(receiver)

    def abort_receive(self, raise_cancel: RaiseCancelT) -> Abort:
        """Abort function of the parked receiver: it must not be rescheduled twice."""
        self.receiver = None
        return Abort.SUCCEEDED

    def check_open(self) -> None:
        if self.closed:
            raise ActorStopped(actor=self.path, reason=self.stop_reason)

    async def wait_for_space(self, deadline: float, seconds: float) -> None:
        """Slow path: wait until the mailbox has room, the cell closes, or ``deadline``."""
        with trio.move_on_at(deadline) as scope:
            while len(self.queue) >= self.capacity and not self.closed:
                await self.senders().park()
        if scope.cancelled_caught:
            raise AskTimeout(actor=self.path, timeout=seconds)
        self.check_open()

    def tell_nowait(self, message: Any) -> None:
        if self.closed:
            raise ActorStopped(actor=self.path, reason=self.stop_reason)
        if len(self.queue) >= self.capacity:
            raise MailboxFull(actor=self.path, capacity=self.capacity)
        self.put_nowait(message, None)

    # ---------------------------------------------------------------- lifecycle

    def close(self, reason: str = "it is stopped") -> None:
        """The slot will not run again: fail queued asks and refuse new messages."""
        if self.closed:
            return
        self.closed = True
        self.stop_reason = reason
        self.state = CellState.STOPPED
        queue = self.queue
        self.discarded += len(queue)
        while queue:
            _, reply = queue.popleft()
            if reply is not None:
                reply.fail(ActorStopped(actor=self.path, reason=reason))
        if self.space is not None:
            self.space.unpark_all()

    def reopen(self) -> None:
        """Make a closed slot usable again (a supervisor restarting a stopped child)."""
        self.closed = False
        self.stop_reason = "it is stopped"
        self.state = CellState.RESTARTING

    def request_stop(self) -> None:
        """Ask the running incarnation to stop after the message it is handling."""
        inc = self.incarnation
        if inc is not None:
            inc.stop_requested = True
            receiver = self.receiver
            if receiver is not None:
                self.receiver = None
                reschedule(receiver)

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            path=self.path,
            state=self.state,
            mailbox_depth=len(self.queue),
            mailbox_capacity=self.capacity,
            received=self.received,
            handled=self.handled,
            crashed=self.crashed,
            dropped=self.dropped,
            restarts=self.restarts,
            incarnation=self.generation,
            discarded=self.discarded,
        )

    def __repr__(self) -> str:
        return f"<_Cell {self.path!r} {self.state.value} depth={len(self.queue)}>"


class _Incarnation:
    """One actor instance running in a cell: its background tasks, current message and
    deferred replies.

    Background tasks run in the ``host`` nursery of whoever runs the incarnation (a child
    task of a supervisor lives across inline restarts; ``open_actor`` uses its runtime's),
    each inside its own cancel scope, so an incarnation costs no nursery of its own (opening
    and closing one costs more than a message round trip).  When a background task fails, the
    incarnation records the error and cancels ``kill``, the scope its runner put around it.

    When an incarnation ends, its background tasks are cancelled and :func:`run_actor` waits
    for the last of them to exit before it returns: a restarted actor never overlaps the
    tasks of the incarnation it replaces (a task the scheduler had already resumed would
    otherwise go on running, against state the slot keeps for the next incarnation).
    """

    __slots__ = (
        "actor",
        "background",
        "cell",
        "closed",
        "current",
        "deferred",
        "drained",
        "error",
        "host",
        "kill",
        "stop_requested",
    )

    def __init__(
        self, cell: _Cell, actor: Actor[Any, Any], host: trio.Nursery, kill: trio.CancelScope
    ) -> None:
        self.cell = cell
        self.actor = actor
        self.host = host
        self.kill = kill
        self.background: set[trio.CancelScope] | None = None  # made by the first task
        self.current: Reply[Any] | None = None
        self.deferred: set[Reply[Any]] = set()
        self.drained: trio.Event | None = None  # set when the last background task exits
        self.stop_requested = False
        self.closed = False
        self.error: BaseException | None = None

    def spawn(self, async_fn: Callable[..., Any], args: tuple[Any, ...], name: str) -> None:
        if self.closed:
            raise RuntimeError(f"actor {self.cell.path!r} is not running: cannot spawn {name}")
        self.host.start_soon(self._background, async_fn, args, name=name)

    async def _background(self, async_fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self.closed:  # the incarnation ended before this task first ran: nobody cancels it
            return
        scope = trio.CancelScope()
        background = self.background
        if background is None:
            background = self.background = set()
        background.add(scope)
        try:
            with scope:
                await async_fn(*args)
        except BaseException as exc:
            if is_cancellation(exc) and not _cancelled_here():
                exc = stray_cancellation(self.cell, exc)
            if is_cancellation(exc) or is_fatal(exc):
                raise
            # A failing background task crashes its incarnation (not the host's other tasks).
            if self.error is None and not self.closed:
                self.error = exc
                self.kill.cancel()
        finally:
            background.discard(scope)
            if self.drained is not None and not background:
                self.drained.set()


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is trio cancellation (possibly wrapped in exception groups)."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(is_cancellation(e) for e in exc.exceptions)
    return False


def is_fatal(exc: BaseException) -> bool:
    """Exceptions an actor must never swallow as a crash: they stop the whole program."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(is_fatal(e) for e in exc.exceptions)
    return False


def _cancelled_here() -> bool:
    """Whether the current task is inside a cancelled scope (a real cancellation)."""
    return trio.current_effective_deadline() == -math.inf


class StrayCancellation(RuntimeError):
    """Actor code raised ``trio.Cancelled`` while no scope around the actor was cancelled."""


def stray_cancellation(cell: _Cell, exc: BaseException) -> BaseException:
    """The crash a stray ``trio.Cancelled`` from actor code stands for (chained to it)."""
    if isinstance(exc, StrayCancellation):
        return exc
    error = StrayCancellation(
        f"actor {cell.path!r} raised a stray trio.Cancelled (no scope around it was "
        "cancelled): a cancellation caught elsewhere must not be re-raised; counted as a crash"
    )
    error.__cause__ = exc
    return error


def unwrap(exc: BaseException) -> BaseException:
    """The single leaf of a chain of one-exception groups, with cancellations removed.

    A group with more than one real exception is returned as it is (minus cancellations).
    """
    while isinstance(exc, BaseExceptionGroup):
        real = [e for e in exc.exceptions if not is_cancellation(e)]
        if len(real) != 1:
            if len(real) == len(exc.exceptions) or not real:
                return exc
            return exc.derive(real)
        exc = real[0]
    return exc


async def _serve(inc: _Incarnation) -> None:
    cell = inc.cell
    queue = cell.queue
    handle = inc.actor.handle
    budget = _FAIRNESS
    while not inc.stop_requested:
        if not queue:
            cell.receiver = current_task()
            await wait_task_rescheduled(cell.abort_receive)
            cell.receiver = None
            budget = _FAIRNESS
            continue
        message, reply = queue.popleft()
        space = cell.space
        if space:  # None, or a parking lot: true when a sender waits in it
            space.unpark()
        if reply is not None and reply._state != PENDING:
            cell.dropped += 1
            continue
        inc.current = reply
        try:
            result = await handle(message)
        except BaseException as exc:
            error = exc
            if is_cancellation(exc):
                if _cancelled_here():
                    raise
                error = stray_cancellation(cell, exc)  # a bug in the actor: a crash
            if not is_fatal(error):
                cell.crashed += 1
                if reply is not None:
                    reply.fail(ActorCrashed(actor=cell.path, cause=error))
            if error is exc:
                raise
            raise error from exc
        inc.current = None
        cell.handled += 1
        if reply is not None and not reply.deferred:
            if type(result) is Failure:
                reply.fail(result.error)
            elif reply._state == PENDING:
                # ``Reply.set`` in line (the hottest answer: a reply that is not deferred has
                # nothing else to forget).
                reply._state = DONE
                reply._on_abandon = None
                reschedule(reply._task, Value(result))
        budget -= 1
        if not budget:
            budget = _FAIRNESS
            # A full checkpoint, not a shielded one: an actor that keeps its own mailbox
            # non-empty (and never awaits in handle) must still see its cancellation here.
            await trio.lowlevel.checkpoint()


async def run_actor(
    cell: _Cell,
    actor: Actor[Any, Any],
    started: Callable[[], None],
    host: trio.Nursery,
    kill: trio.CancelScope,
) -> None:
    """Run one incarnation of ``actor`` in ``cell`` until it stops, crashes or is cancelled.

    ``started`` is called once ``on_start`` has returned.  Background tasks go to ``host``;
    ``kill`` is a cancel scope the caller put around this call: a failing background task
    cancels it, and this function then raises that task's exception.  A crash propagates; the
    caller (a supervisor) decides what happens next.  The cell is never closed here: that is
    the supervisor's decision.
    """
    inc = _Incarnation(cell, actor, host, kill)
    cell.generation += 1
    cell.incarnation = inc
    cell.state = CellState.STARTING
    actor._inc = inc
    error: BaseException | None = None
    try:
        await actor.on_start()
        if not cell.closed:
            cell.state = CellState.RUNNING
        started()
        await _serve(inc)
        if not cell.closed:
            cell.state = CellState.STOPPING
        await actor.on_stop()
    except BaseException as exc:
        error = exc
        if inc.error is not None and is_cancellation(exc):
            error = inc.error
            raise inc.error from None
        if is_cancellation(exc) and not _cancelled_here():
            # trio.Cancelled with no cancelled scope around: actor code raised one it had
            # caught elsewhere.  That is a bug in the actor, so a crash, not a stop.
            error = stray_cancellation(cell, exc)
            raise error from exc
        raise
    finally:
        inc.closed = True
        background = inc.background or ()
        for scope in background:
            scope.cancel()
        if error is None and inc.error is not None:
            error = inc.error  # on_stop finished while a background task was failing
        _end_incarnation(inc, error)
        if background:  # cancelled, but some may be scheduled already: let them exit
            inc.drained = trio.Event()
            with trio.CancelScope(shield=True):
                await inc.drained.wait()
    if inc.error is not None:
        raise inc.error


def _end_incarnation(inc: _Incarnation, error: BaseException | None) -> None:
    cell = inc.cell
    if cell.incarnation is inc:
        cell.incarnation = None
    if cell.receiver is not None:
        cell.receiver = None
    if not cell.closed:
        cell.state = CellState.RESTARTING
    pending = [r for r in (inc.current, *inc.deferred) if r is not None and not r.done]
    inc.current = None
    inc.deferred.clear()
    if not pending:
        return
    if error is not None and not is_cancellation(error):
        cause = unwrap(error)
        for reply in pending:
            reply.fail(ActorCrashed(actor=cell.path, cause=cause))
    else:
        reason = "it stopped before answering"
        if error is not None:
            reason = "it was stopped while handling the message"
        for reply in pending:
            reply.fail(
                ActorStopped(actor=cell.path, reason=reason, category=ErrorCategory.DEPENDENCY)
            )


def new_reply(cell: _Cell, seconds: float, now: float) -> Reply[Any]:
    """The reply slot of an ask from the current task, registered with the ask timer.

    The timer enforces ``now + seconds``; the caller's own trio deadline is enforced by trio's
    cancellation and is only looked up if the actor reads ``Reply.deadline`` (walking up the
    caller's cancel scopes costs more than the rest of an ask, deep in a tree).
    """
    limit = now + seconds
    reply: Reply[Any] = Reply._new(current_task(), cell, limit, seconds)
    cell.timers.add(limit, reply)
    return reply


def effective_timeout(timeout: float | None, cell: _Cell) -> float:
    """Validate an ask timeout argument."""
    if timeout is None:
        return cell.ask_timeout
    if not timeout > 0:  # also rejects NaN
        raise ValueError(f"ask timeout must be > 0 seconds, got {timeout!r}")
    return float(timeout)


_INF: Final = math.inf
