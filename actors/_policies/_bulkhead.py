"""A sans-I/O bulkhead: at most ``max_concurrent`` calls run, at most ``max_queued`` wait.

Theory of operation
-------------------
The bulkhead only counts; the owner (a trio shell) does the waiting.  A call asks
:meth:`Bulkhead.try_enter`:

* :data:`ENTERED` (``0``): a slot was free and the call now holds it;
* a positive *ticket*: every slot is busy, the call is queued (FIFO) and must wait until the
  bulkhead hands that ticket out from :meth:`~Bulkhead.leave`;
* :class:`~actors._errors.BulkheadFull`: the queue is full too.

A call that holds a slot calls :meth:`~Bulkhead.leave` exactly once when it is done.  If a call
is queued, ``leave`` passes the slot straight to the oldest queued ticket and returns it: the
shell wakes that waiter, which now holds the slot (so a slot never looks free while someone
waits, and nobody can jump the queue).  A waiter that gives up calls
:meth:`~Bulkhead.cancel`: ``True`` means it was still queued and is gone; ``False`` means it had
already been handed a slot, which it must give back with ``leave``.

The trio shell, in full::

    ticket = bulkhead.try_enter()              # may raise BulkheadFull
    if ticket != ENTERED:
        event = waiters[ticket] = trio.Event()
        try:
            await event.wait()
        except BaseException:
            del waiters[ticket]
            if not bulkhead.cancel(ticket):    # admitted meanwhile: pass the slot on
                wake(bulkhead.leave())
            raise
        del waiters[ticket]
    try:
        ...                                    # the call
    finally:
        wake(bulkhead.leave())                 # wake(None) does nothing; else waiters[t].set()

Every operation is O(1): the queue is an ``OrderedDict`` of tickets, so cancelling from the
middle costs the same as admitting from the front.  Memory is bounded by ``max_queued``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import attrs
import msgspec

from actors._errors import BulkheadFull, ConfigError

__all__ = ["ENTERED", "Bulkhead", "BulkheadSettings", "BulkheadStatistics"]

#: Returned by :meth:`Bulkhead.try_enter` when the call got a slot at once.
ENTERED: Final = 0


class BulkheadSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Limits of a :class:`Bulkhead`.

    Attributes:
        max_concurrent: calls allowed to run at once (1-1,000,000; 10).
        max_queued: calls allowed to wait for a slot (0-1,000,000; 20).  0 means no queue:
            a call that finds every slot busy is rejected at once.

    A bad value raises :class:`~actors._errors.ConfigError` naming the field.
    """

    max_concurrent: int = 10
    max_queued: int = 20

    def __post_init__(self) -> None:
        for name, minimum in (("max_concurrent", 1), ("max_queued", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"must be an integer, not {value!r}", path=name)
            if not minimum <= value <= 1_000_000:
                raise ConfigError(
                    f"must be between {minimum} and 1000000, not {value!r}", path=name
                )


@attrs.frozen
class BulkheadStatistics:
    """A snapshot of a :class:`Bulkhead`.

    Attributes:
        name: the bulkhead's name.
        running: calls holding a slot.
        queued: calls waiting for one.
        max_concurrent, max_queued: the limits.
        entered: calls that got a slot at once, since creation.
        admitted_from_queue: queued calls that were later handed a slot.
        rejected: calls refused with ``BulkheadFull``.
        cancelled: queued calls that gave up before getting a slot.
    """

    name: str
    running: int
    queued: int
    max_concurrent: int
    max_queued: int
    entered: int
    admitted_from_queue: int
    rejected: int
    cancelled: int


class Bulkhead:
    """Counts running and queued calls for one service (see the module docstring).

    Args:
        settings: the limits (defaults: 10 running, 20 queued).
        name: the service's name, used in :class:`~actors._errors.BulkheadFull`.
    """

    __slots__ = (
        "_admitted",
        "_cancelled",
        "_entered",
        "_last_ticket",
        "_max_concurrent",
        "_max_queued",
        "_queue",
        "_rejected",
        "_running",
        "_settings",
        "name",
    )

    def __init__(self, settings: BulkheadSettings | None = None, name: str = "") -> None:
        if settings is None:
            settings = BulkheadSettings()
        if not isinstance(settings, BulkheadSettings):
            raise TypeError(f"settings must be BulkheadSettings, not {settings!r}")
        self._settings = settings
        self.name = name
        self._max_concurrent = settings.max_concurrent
        self._max_queued = settings.max_queued
        self._running = 0
        self._queue: OrderedDict[int, None] = OrderedDict()
        self._last_ticket = 0
        self._entered = 0
        self._admitted = 0
        self._rejected = 0
        self._cancelled = 0

    @property
    def settings(self) -> BulkheadSettings:
        """The limits."""
        return self._settings

    @property
    def running(self) -> int:
        """Calls holding a slot."""
        return self._running

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._queue)

    def try_enter(self) -> int:
        """Take a slot (:data:`ENTERED`) or a place in the queue (a positive ticket).

        Raises :class:`~actors._errors.BulkheadFull` when every slot is busy and the queue is
        full; nothing changes then.
        """
        if self._running < self._max_concurrent:
            # A free slot implies an empty queue: leave() hands slots to waiters first.
            self._running += 1
            self._entered += 1
            return ENTERED
        if len(self._queue) < self._max_queued:
            self._last_ticket += 1
            ticket = self._last_ticket
            self._queue[ticket] = None
            return ticket
        self._rejected += 1
        raise BulkheadFull(
            service=self.name, max_concurrent=self._max_concurrent, max_queued=self._max_queued
        )

    def leave(self) -> int | None:
        """Give back a slot.  Returns the queued ticket the slot was handed to (wake it), or
        ``None`` when nobody waits.  Raises ``RuntimeError`` if no slot is held."""
        if self._running <= 0:
            raise RuntimeError("Bulkhead.leave() called without a slot being held")
        if self._queue:
            ticket, _ = self._queue.popitem(last=False)
            self._admitted += 1
            return ticket
        self._running -= 1
        return None

    def cancel(self, ticket: int) -> bool:
        """Withdraw a queued ``ticket``.

        Returns ``True`` if it was waiting and is now gone, ``False`` if it is not queued: it
        was already handed a slot by :meth:`leave` (the caller holds that slot and must
        ``leave``), or it was cancelled before.  Raises ``ValueError`` for a value that was
        never issued as a ticket.
        """
        if isinstance(ticket, bool) or not isinstance(ticket, int):
            raise TypeError(f"ticket must be an int, not {ticket!r}")
        if not 0 < ticket <= self._last_ticket:
            raise ValueError(f"{ticket!r} is not a ticket this bulkhead issued")
        if ticket in self._queue:
            del self._queue[ticket]
            self._cancelled += 1
            return True
        return False

    def statistics(self) -> BulkheadStatistics:
        """A :class:`BulkheadStatistics` snapshot."""
        return BulkheadStatistics(
            name=self.name,
            running=self._running,
            queued=len(self._queue),
            max_concurrent=self._max_concurrent,
            max_queued=self._max_queued,
            entered=self._entered,
            admitted_from_queue=self._admitted,
            rejected=self._rejected,
            cancelled=self._cancelled,
        )
