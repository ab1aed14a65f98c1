"""Replies: the one-shot slot an ask waits on, and the timer that enforces ask timeouts.

Theory of operation
-------------------
An ask is the hottest path of the runtime, so it avoids every per-call trio object that costs
a scheduler pass or a cancel scope.  The asking task parks itself with
``trio.lowlevel.wait_task_rescheduled`` and leaves a :class:`Reply` in the mailbox beside the
message.  Exactly one of three things then reschedules it:

* the actor answers (:meth:`Reply.set` / :meth:`Reply.fail`), or the runtime answers for it
  (``ActorCrashed`` when the actor crashes, ``ActorStopped`` when it stops);
* the :class:`_Timers` service finds the reply past its deadline and fails it with
  ``AskTimeout``;
* the caller's own trio cancel scope fires: trio calls the abort function, which marks the reply
  abandoned.

A reply moves from ``PENDING`` to ``DONE`` or ``ABANDONED`` exactly once; everything after that
is a no-op, so "every ask ends with exactly one outcome" is a property of this state machine.
An abandoned reply whose message is still queued is skipped by the actor: a caller that gave up
before its message was handled never has it handled.

The timer is one long-lived task per runtime (not a cancel scope per ask): a heap of
``(deadline, seq, reply)`` entries whose sleep deadline is moved earlier only when a new ask has
an earlier deadline than any pending one.  Answered asks leave stale heap entries behind:
those at the top of the heap are popped as the next entry is added (with one timeout for all
asks that is nearly all of them, so a reply dies by reference counting soon after it is
answered instead of aging into the garbage collector's older generations), and the heap is
compacted whenever it grows past twice the size it had after the last compaction, so its
memory is bounded by the asks in flight, not by traffic.  The caller's own trio deadline
needs no timer (trio's cancellation already bounds the wait); it is looked up only when the
actor reads :attr:`Reply.deadline`, since walking up the caller's cancel scopes costs more than
the rest of an ask deep inside a tree.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, final

import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, reschedule

from actors._errors import AskTimeout

if TYPE_CHECKING:
    from actors._core._cell import _Cell

__all__ = ["PENDING", "Failure", "Reply"]

R = TypeVar("R")

PENDING: Final = 0
DONE: Final = 1
ABANDONED: Final = 2


@final
class Failure:
    """An expected failure returned by an actor as its reply.

    ``handle`` returns ``Failure(exc)`` to answer the ask with ``exc`` raised in the caller,
    without crashing the actor (raising from ``handle`` is a crash).  Use it for the errors a
    caller must handle: an open circuit breaker, a rejected request::

        async def handle(self, message):
            if not self.ready:
                return Failure(CircuitOpen(service="render", retry_after=3.0))
            ...
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        if not isinstance(error, BaseException):
            raise TypeError(f"Failure() takes an exception, got {type(error).__name__}")
        self.error = error

    def __repr__(self) -> str:
        return f"Failure({self.error!r})"


@final
class Reply(Generic[R]):
    """The answer slot of one ask.

    An actor gets one with :meth:`Actor.defer` when it wants to answer later (from a background
    task, after a slow operation) instead of returning from ``handle``.  Exactly one of
    :meth:`set` and :meth:`fail` takes effect; later calls, and calls after the caller gave up,
    are ignored and return ``False``.

    Attributes:
        deadline: the trio time after which the caller no longer waits (its ask timeout or its
            own trio deadline, whichever is earlier); ``math.inf`` for a tell.
    """

    __slots__ = (
        "_cell",
        "_deadline",
        "_limit",
        "_on_abandon",
        "_state",
        "_task",
        "_timeout",
        "deferred",
    )

    _cell: _Cell | None
    _on_abandon: Callable[[Reply[Any]], object] | None
    _state: int
    _task: Task
    _timeout: float
    _deadline: float | None
    _limit: float
    deferred: bool

    def __init__(self) -> None:
        raise TypeError("Reply objects are made by the runtime; use Actor.defer() to get one")

    @classmethod
    def _new(
        cls, task: Task | None, cell: _Cell | None, deadline: float, timeout: float = 0.0
    ) -> Reply[R]:
        # ``ActorRef.ask`` makes its replies in line, the same way: keep the two in step.
        self = object.__new__(cls)
        self._task = task  # type: ignore[assignment]  # None only for inert tell replies
        self._cell = cell
        self._state = PENDING if task is not None else DONE
        self._timeout = timeout
        self._on_abandon = None
        self._limit = deadline
        self._deadline = None if task is not None else deadline
        self.deferred = False
        return self

    @property
    def deadline(self) -> float:
        """The trio time after which the caller no longer waits: the earlier of its ask timeout
        and its own trio deadline (read when first asked for, so asks that never need it do
        not pay for the walk up the caller's cancel scopes)."""
        deadline = self._deadline
        if deadline is None:
            deadline = self._limit
            status = getattr(self._task, "_cancel_status", None)
            if status is not None and not self.done:
                caller = status.effective_deadline()
                if caller < deadline:
                    deadline = caller
            self._deadline = deadline
        return deadline

    @property
    def done(self) -> bool:
        """Whether the caller has its outcome (or gave up): further answers are ignored."""
        return self._state != PENDING

    @property
    def abandoned(self) -> bool:
        """Whether the caller stopped waiting (timed out or cancelled) before an answer."""
        return self._state == ABANDONED

    def set(self, value: R) -> bool:
        """Answer the ask with ``value``.  Returns whether the answer was delivered."""
        if self._state != PENDING:
            return False
        self._state = DONE
        self._forget()
        reschedule(self._task, outcome.Value(value))
        return True

    def fail(self, error: BaseException) -> bool:
        """Answer the ask by raising ``error`` in the caller.  Returns whether it was delivered."""
        if self._state != PENDING:
            return False
        self._state = DONE
        self._forget()
        reschedule(self._task, outcome.Error(error))
        return True

    def _retire(self) -> None:
        """The ask never started waiting (its message was refused before the caller parked):
        close the slot without waking anyone, so neither the timer nor the runtime ever
        reschedules the caller's task on its account."""
        self._state = DONE
        self._forget()

    def _forget(self) -> None:
        self._on_abandon = None  # drop the callback's references (no reference cycles)
        if self.deferred and self._cell is not None:
            inc = self._cell.incarnation
            if inc is not None:
                inc.deferred.discard(self)

    def on_abandon(self, callback: Callable[[Reply[R]], object] | None) -> None:
        """Call ``callback(reply)`` if the caller gives up (times out or is cancelled).

        It runs from within trio's cancellation machinery, so it must only record the fact
        (set a flag, schedule work with ``TrioToken.run_sync_soon``), never cancel scopes or
        block.  ``None`` removes it.
        """
        self._on_abandon = callback

    def _abort(self, raise_cancel: RaiseCancelT) -> Abort:
        # Called by trio when the asking task's cancel scope fires.
        self._state = ABANDONED
        hook = self._on_abandon
        self._forget()
        if hook is not None:
            hook(self)
        return Abort.SUCCEEDED

    def _expire(self) -> None:
        if self._state != PENDING:
            return
        self._state = ABANDONED
        hook = self._on_abandon
        self._forget()
        path = self._cell.path if self._cell is not None else "?"
        reschedule(self._task, outcome.Error(AskTimeout(actor=path, timeout=self._timeout)))
        if hook is not None:
            hook(self)

    def __repr__(self) -> str:
        state = ("pending", "done", "abandoned")[self._state]
        return f"<Reply {state} deadline={self.deadline:.6g}>"


#: A reply for a tell: nobody waits on it, so answers go nowhere.
def _tell_reply() -> Reply[Any]:
    return Reply._new(None, None, math.inf)


class Expiring(Protocol):
    """What the timer service holds: something pending that may expire (a reply, a deadline)."""

    _state: int

    def _expire(self) -> None: ...


class CancelAt:
    """A deadline on the timer service that cancels a scope (cheaper than moving the scope's
    own deadline, which trio re-registers on every change).  Set ``_state = DONE`` when the
    guarded work finished in time."""

    __slots__ = ("_state", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self._state = PENDING
        self.scope = scope

    def _expire(self) -> None:
        if self._state == PENDING:
            self._state = ABANDONED
            self.scope.cancel()


def _system_clock_offset(clock: object) -> float | None:
    """The offset of trio's default clock, whose reading is ``offset + perf_counter()``;
    ``None`` for any other clock (trio's class is private: it is recognised by name, and its
    reading checked once)."""
    kind = type(clock)
    if kind.__name__ != "SystemClock" or not kind.__module__.startswith("trio."):
        return None
    offset = getattr(clock, "offset", None)
    if type(offset) is not float:
        return None
    before = time.perf_counter() + offset
    reading = clock.current_time()  # type: ignore[attr-defined]
    after = time.perf_counter() + offset
    return offset if before <= reading <= after else None


class _Timers:
    """The deadline service of one runtime (ask timeouts and the like): one task, one heap.

    ``now`` reads the run's clock: ``trio.current_time`` until the service runs, then the
    clock's own method (the same reading, without trio's two dispatching calls on each ask).
    ``read() + offset`` is the same reading again, one Python call cheaper with trio's own
    clock (``time.perf_counter`` plus the clock's offset, what its method adds); with any
    other clock (``MockClock``) it is the clock's method plus ``0.0``.
    """

    __slots__ = ("_compact_at", "_scope", "_wake", "heap", "now", "offset", "read", "seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Expiring]] = []
        self.seq = itertools.count()
        self._scope: trio.CancelScope | None = None
        self._wake = math.inf  # the deadline ``_scope`` wakes at (kept here: no property read)
        self._compact_at = 1024
        self.now: Callable[[], float] = trio.current_time
        self.read: Callable[[], float] = trio.current_time
        self.offset = 0.0

    def add(self, deadline: float, reply: Expiring) -> None:
        # ``ActorRef.ask`` does the same in line: keep the two in step.
        heap = self.heap
        entry = (deadline, next(self.seq), reply)
        # Answered entries at the top go now (with one timeout for all, that is nearly all of
        # them), so what they hold dies young instead of waiting for the next compaction; the
        # first one is replaced by the new entry in the same heap operation.
        if heap and heap[0][2]._state != PENDING:
            heapq.heapreplace(heap, entry)
            while heap[0][2]._state != PENDING:  # stops at the latest, pending, entry at worst
                heapq.heappop(heap)
        else:
            self.push(entry)
        if deadline < self._wake:
            self.wake_at(deadline)

    def push(self, entry: tuple[float, int, Expiring]) -> None:
        """Add ``entry`` to the heap, growing it (compacted when it grew too much)."""
        heap = self.heap
        heapq.heappush(heap, entry)
        if len(heap) > self._compact_at:  # only a push grows the heap
            self._compact()

    def wake_at(self, deadline: float) -> None:
        """Have the service wake at ``deadline`` (earlier than it would)."""
        scope = self._scope
        if scope is not None:
            scope.deadline = self._wake = deadline

    def _compact(self) -> None:
        live = [entry for entry in self.heap if entry[2]._state == PENDING]
        heapq.heapify(live)
        self.heap = live
        self._compact_at = max(1024, 2 * len(live))

    def __len__(self) -> int:
        return len(self.heap)

    async def run(self) -> None:
        """Expire replies past their deadline, forever (cancel to stop)."""
        clock = trio.lowlevel.current_clock()
        self.now = clock.current_time
        offset = _system_clock_offset(clock)
        if offset is not None:
            self.read, self.offset = time.perf_counter, offset
        else:
            self.read, self.offset = self.now, 0.0
        while True:
            heap = self.heap
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2]._expire()
            while heap and heap[0][2]._state != PENDING:
                heapq.heappop(heap)
            self._wake = heap[0][0] if heap else math.inf
            scope = trio.CancelScope(deadline=self._wake)
            self._scope = scope
            with scope:
                await trio.sleep_forever()
            self._scope = None
            self._wake = math.inf
