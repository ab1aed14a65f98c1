"""``ActorRef``: the handle callers use to send to an actor.

Theory of operation
-------------------
A ref names a *cell* (a supervised slot), not an actor instance, so it stays valid across
restarts.  ``ask`` parks the calling task on a :class:`~actors.Reply` without a cancel scope per
call (see ``actors._core._reply``), which keeps a round trip close to the cost of two bare trio task
switches.  Deadlines: an ask waits at most ``timeout`` seconds (the cell's default when not
given) and never past the caller's own trio deadline; the earlier of the two is the
:attr:`Reply.deadline` the actor sees.
"""

from __future__ import annotations

from heapq import heappop, heapreplace
from typing import Any, Generic, TypeVar, final

import trio
from trio.lowlevel import current_task, reschedule, wait_task_rescheduled

from actors._core._cell import ActorStatistics, _Cell, effective_timeout
from actors._core._reply import PENDING, Reply

__all__ = ["ActorRef"]

M = TypeVar("M", contravariant=True)
R = TypeVar("R", covariant=True)


@final
class ActorRef(Generic[M, R]):
    """A stable reference to an actor's slot: ``ask`` it, ``tell`` it.

    Refs are obtained from a supervisor (``sup.ref("providers/openai")``) or from
    :func:`~actors.open_actor`; they cannot be constructed directly.  Two refs are equal when
    they name the same slot.

    Example::

        reply = await ref.ask(Ping(), timeout=2.0)
        await ref.tell(Log("hello"))      # waits for mailbox room
        ref.tell_nowait(Log("hello"))     # raises MailboxFull instead of waiting
    """

    __slots__ = ("_cell",)
    _cell: _Cell

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "ActorRef cannot be constructed directly; get one from a supervisor "
            "(sup.ref(path)) or from open_actor()"
        )

    @classmethod
    def _create(cls, cell: _Cell) -> ActorRef[Any, Any]:
        self = object.__new__(cls)
        self._cell = cell
        return self

    @property
    def path(self) -> str:
        """The slot's path in its tree, for example ``"providers/openai"``."""
        return self._cell.path

    @property
    def name(self) -> str:
        """The last component of :attr:`path`."""
        return self._cell.name

    # A timeout parameter rather than a cancel scope: a scope per ask would cost more than the
    # round trip itself (see the module docstring).
    async def ask(self, message: M, *, timeout: float | None = None) -> R:  # noqa: ASYNC109
        """Send ``message`` and wait for the reply.

        Args:
            message: the message.
            timeout: seconds to wait at most (default: the slot's ``ask_timeout``, 30 s unless
                configured).  The caller's own trio deadline also applies.

        Returns:
            The actor's reply.

        Raises:
            AskTimeout: no reply within ``timeout``, counted from the call (time spent waiting
                for room in a full mailbox included); the message is dropped if the actor had
                not started on it.
            ActorCrashed: the actor crashed while handling this message.
            ActorStopped: the actor is stopped, or stopped before answering.
            trio.Cancelled: the caller's scope was cancelled; the actor is unaffected.
            Exception: whatever error the actor answered with (``Failure(exc)``).
        """
        cell = self._cell
        if cell.closed:
            cell.check_open()
        seconds = cell.ask_timeout if timeout is None else effective_timeout(timeout, cell)
        timers = cell.timers
        now = timers.read() + timers.offset
        queue = cell.queue
        if len(queue) >= cell.capacity:
            # The wait for room counts against the timeout: the reply's deadline stays
            # ``now + seconds`` from the start of the ask.
            await cell.wait_for_space(now + seconds, seconds)
        # ``new_reply`` and ``put_nowait`` in line: this is the hottest path of the runtime.
        limit = now + seconds
        reply: Reply[Any] = object.__new__(Reply)  # ``Reply._new`` in line
        reply._task = current_task()
        reply._cell = cell
        reply._state = PENDING
        reply._timeout = seconds
        reply._on_abandon = None
        reply._limit = limit
        reply._deadline = None
        reply.deferred = False
        # ``_Timers.add`` in line.
        heap = timers.heap
        entry = (limit, next(timers.seq), reply)
        if heap and heap[0][2]._state != PENDING:
            heapreplace(heap, entry)
            while heap[0][2]._state != PENDING:
                heappop(heap)
        else:
            timers.push(entry)
        if limit < timers._wake:
            timers.wake_at(limit)
        queue.append((message, reply))
        cell.received += 1
        receiver = cell.receiver
        if receiver is not None:
            cell.receiver = None
            reschedule(receiver)
        return await wait_task_rescheduled(reply._abort)  # type: ignore[no-any-return]

    async def tell(self, message: M) -> None:
        """Send ``message`` without waiting for a reply; wait for mailbox room if it is full.

        This is a trio checkpoint.  Raises ``ActorStopped`` if the actor is stopped.
        """
        cell = self._cell
        await trio.lowlevel.checkpoint_if_cancelled()
        if len(cell.queue) >= cell.capacity and not cell.closed:
            while len(cell.queue) >= cell.capacity and not cell.closed:
                await cell.senders().park()
            cell.check_open()
            cell.put_nowait(message, None)
            return
        cell.check_open()
        cell.put_nowait(message, None)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def tell_nowait(self, message: M) -> None:
        """Send ``message`` if the mailbox has room.

        Raises:
            MailboxFull: the mailbox is at capacity.
            ActorStopped: the actor is stopped.
        """
        self._cell.tell_nowait(message)

    def statistics(self) -> ActorStatistics:
        """Counters and state of the slot (mailbox depth, handled, crashes, restarts, ...)."""
        return self._cell.statistics()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return hash(id(self._cell))

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.path!r} {self._cell.state.value}>"
