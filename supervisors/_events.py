"""Supervision events, tree snapshots, and their delivery to logging and subscribers.

Theory of operation
-------------------
Every decision a supervisor takes is an event: a child *started*, *crashed*, was *restarted*
(with the delay it waited), *stopped* (a normal exit or a termination), or a supervisor *gave
up*.  Events are msgspec Structs so they can be logged as JSON, served over HTTP or journaled.

A crash is logged (``WARNING`` on the ``supervisors`` logger) with its traceback, the only
place the traceback of a crash caused by a ``tell`` is ever shown (the same crash again, from
the same actor, exception type and line, within :data:`TRACEBACK_REPEAT_AFTER` seconds, is
logged without it: a crash loop costs one traceback, not one per restart); the logger redacts
the traceback (:func:`actors._policies._logs.library_logger`), and the event's ``reason`` is
redacted where it is made, so the line, subscribers and the monitor never see a secret either.

Delivery never blocks a supervisor.  Listeners are plain callables run synchronously (the
monitor actor's listener does a ``tell_nowait``); a listener that raises is removed and
logged, never allowed to break supervision.  :class:`Subscription` wraps a bounded memory
channel: when its reader falls behind, new events are dropped and counted rather than queued
without bound.
"""

from __future__ import annotations

import enum
import logging
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Final

import attrs
import msgspec
import trio

from actors._errors import ActorStopped, MailboxFull
from actors._policies._logs import library_logger

__all__ = ["ChildCounts", "EventKind", "Subscription", "SupervisionEvent", "TreeNode"]

logger: Final = library_logger("supervisors")


class EventKind(enum.Enum):
    """What happened to a supervised child."""

    STARTED = "started"
    CRASHED = "crashed"
    RESTARTED = "restarted"
    STOPPED = "stopped"
    GAVE_UP = "gave_up"


class SupervisionEvent(msgspec.Struct, frozen=True, tag=True):
    """One supervision event.

    Attributes:
        kind: an :class:`EventKind` value.
        path: the child's path (for ``gave_up``, the supervisor's own path; the root is ``""``).
        supervisor: the path of the supervisor that took the decision.
        at: trio time of the event.
        reason: the crash or exit reason, as text (``""`` when there is none).
        restarts: the child's restart count after the event.
        delay: for ``restarted``, the backoff delay waited before the restart, in seconds.
    """

    kind: EventKind
    path: str
    supervisor: str
    at: float
    reason: str = ""
    restarts: int = 0
    delay: float = 0.0


class TreeNode(msgspec.Struct, frozen=True):
    """A snapshot of one node of a supervision tree (``Supervisor.snapshot()``).

    Attributes:
        name: the child's name (``""`` for the root).
        path: its path (``""`` for the root).
        kind: ``"actor"`` or ``"supervisor"``.
        state: ``starting``, ``running``, ``restarting``, ``stopping`` or ``stopped``.
        restarts: how many times it was restarted.
        mailbox_depth: queued messages (actors; 0 for supervisors).
        restart_type: ``permanent``, ``transient`` or ``temporary``.
        strategy: the supervisor's strategy: ``one_for_one``, ``one_for_all``,
            ``rest_for_one``, or ``dynamic`` for a dynamic supervisor (``""`` for actors).
        children: the child nodes, in start order.
        events_dropped: supervision events a listener of the tree could not take (its
            mailbox was full, a busy monitor, or stopped, a terminated one); counted on the
            root's snapshot only.
    """

    name: str
    path: str
    kind: str
    state: str
    restarts: int
    mailbox_depth: int = 0
    restart_type: str = "permanent"
    strategy: str = ""
    children: tuple[TreeNode, ...] = ()
    events_dropped: int = 0

    def walk(self) -> list[TreeNode]:
        """This node and every node below it, depth first, in start order."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out

    def find(self, path: str) -> TreeNode | None:
        """The node at ``path`` in this snapshot, or ``None``."""
        for node in self.walk():
            if node.path == path:
                return node
        return None


@attrs.frozen
class ChildCounts:
    """A supervisor's children, counted (``count_children()``; Erlang/OTP's
    ``count_children``), without listing them.

    Attributes:
        specs: the children it has a record of, running or not (a terminated child whose spec
            is kept counts; a temporary child that stopped does not).
        active: the children running now (not stopped, not waiting to be restarted).
        supervisors: the children that are supervisors, running or not.
        workers: the children that are actors, running or not.
    """

    specs: int
    active: int
    supervisors: int
    workers: int


_LEVELS: Final = {
    EventKind.STARTED: logging.INFO,
    EventKind.RESTARTED: logging.INFO,
    EventKind.STOPPED: logging.INFO,
    EventKind.CRASHED: logging.WARNING,
    EventKind.GAVE_UP: logging.ERROR,
}

Listener = Callable[[SupervisionEvent], object]


#: A crash's traceback is logged again for the same crash (same actor, exception type and
#: raising line) only after this many seconds: a crash loop logs one traceback, not thousands.
TRACEBACK_REPEAT_AFTER: Final = 60.0
_MAX_CRASH_SITES: Final = 1024


def _crash_site(path: str, error: BaseException) -> tuple[str, type, str, int]:
    """What makes two crashes the same: the actor, the exception type and the raising line."""
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return path, type(error), "", 0
    return path, type(error), last.tb_frame.f_code.co_filename, last.tb_lineno


class _EventBus:
    """Fan-out of a tree's events to logging and to listeners filtered by path prefix."""

    __slots__ = ("_listeners", "_tracebacks", "dropped")

    def __init__(self) -> None:
        self._listeners: list[tuple[str, Listener]] = []
        self._tracebacks: dict[tuple[str, type, str, int], float] = {}
        self.dropped = 0

    def _traceback_due(self, event: SupervisionEvent, error: BaseException) -> bool:
        """Whether this crash's traceback is to be logged (not the same crash logged lately)."""
        site = _crash_site(event.path, error)
        last = self._tracebacks.get(site)
        if last is not None and event.at - last < TRACEBACK_REPEAT_AFTER:
            return False
        if len(self._tracebacks) >= _MAX_CRASH_SITES:
            self._tracebacks.clear()
        self._tracebacks[site] = event.at
        return True

    def add(self, prefix: str, listener: Listener) -> Callable[[], None]:
        entry = (prefix, listener)
        self._listeners.append(entry)

        def remove() -> None:
            try:
                self._listeners.remove(entry)
            except ValueError:
                pass

        return remove

    def wanted(self, kind: EventKind) -> bool:
        """Whether an event of ``kind`` would be logged or delivered (else it need not be made:
        a restart at the default ``WARNING`` level with no listener builds no event)."""
        return bool(self._listeners) or logger.isEnabledFor(_LEVELS[kind])

    def emit(self, event: SupervisionEvent, error: BaseException | None = None) -> None:
        """Log ``event`` (with the traceback of ``error``, a crash's exception, when given) and
        deliver it to the listeners whose prefix it falls under."""
        level = _LEVELS[event.kind]
        if logger.isEnabledFor(level):
            where = event.path or "(root)"
            extra = f": {event.reason}" if event.reason else ""
            if event.kind is EventKind.RESTARTED and event.delay:
                extra += f" after {event.delay:.3g} s"
            if error is not None and not self._traceback_due(event, error):
                error = None
                extra += " (the same crash as a traceback logged in the last minute)"
            # The record is made here rather than by ``logger.log``, which walks the stack to
            # find the caller (a crash loop logs a line per restart: that walk was a tenth of
            # the line's cost); the record names this function as its origin, as it did.
            frame = sys._getframe()
            record = logger.makeRecord(
                logger.name,
                level,
                frame.f_code.co_filename,
                frame.f_lineno,
                "%s %s (restarts=%d)%s",
                (where, event.kind.value, event.restarts, extra),
                (type(error), error, error.__traceback__) if error is not None else None,
                "emit",
                # Made of redacted parts (the reason is redacted where it is made), so the
                # logger's filter need not redact the line again: a crash line stays cheap.
                {"aura_event": event.kind.value, "aura_path": event.path, "_aura_redacted": True},
            )
            logger.handle(record)
        for prefix, listener in list(self._listeners):
            if prefix and not (event.path == prefix or event.path.startswith(prefix + "/")):
                continue
            try:
                listener(event)
            except (MailboxFull, ActorStopped):
                # A busy monitor (``add_listener(monitor.tell_nowait)``) loses this event but
                # keeps listening: a full mailbox is a passing condition, and so is a stopped
                # one (a terminated monitor that restart_child starts again).
                self.dropped += 1
            except Exception:
                logger.exception("supervision event listener %r failed; removing it", listener)
                try:
                    self._listeners.remove((prefix, listener))
                except ValueError:
                    pass


class Subscription:
    """A bounded stream of supervision events (``Supervisor.subscribe()``).

    Iterate it with ``async for``; use it as a context manager (``with``) to unsubscribe.
    When the reader falls ``buffer`` events behind, new events are dropped and counted in
    :attr:`dropped` instead of blocking the supervisors.

    Example::

        with sup.subscribe() as events:
            async for event in events:
                print(event.kind, event.path)
    """

    def __init__(self, bus: _EventBus, prefix: str, buffer: int) -> None:
        if not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"subscription buffer must be an int >= 1, got {buffer!r}")
        self._send, self._receive = trio.open_memory_channel[SupervisionEvent](buffer)
        self.dropped = 0
        self._remove = bus.add(prefix, self._deliver)

    def _deliver(self, event: SupervisionEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except trio.ClosedResourceError:
            self._remove()

    async def receive(self) -> SupervisionEvent:
        """The next event (waits for one).  Raises ``trio.EndOfChannel`` after :meth:`close`."""
        return await self._receive.receive()

    def receive_nowait(self) -> SupervisionEvent:
        """The next event if one is buffered, else raise ``trio.WouldBlock``."""
        return self._receive.receive_nowait()

    def close(self) -> None:
        """Stop receiving events."""
        self._remove()
        self._send.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> SupervisionEvent:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
