"""An in-memory stand-in for the store server, for tests under ``MockClock``.

Theory of operation
-------------------
:class:`MemoryServer` plays the part of one Redis server shared by every fleet member of a
test: the memory stores (``MemoryBreakerStore``, ``MemoryIdempotencyStore``,
``MemoryQuotaStore``) keep their records in its :attr:`~MemoryServer.data` and apply, in
Python, the same rules the Lua scripts apply in Redis; the contract tests run one suite against
both so they cannot drift apart.  Time is the server's clock (``trio.current_time`` by default,
so ``MockClock`` drives expiries), read in whole milliseconds as Redis's ``TIME`` is.

Each operation is one "round trip": it checkpoints, counts itself, and fails with
:class:`~actors._errors.FleetStoreUnavailable` while the server is :meth:`down
<MemoryServer.stop>`.  Pub/sub delivers to subscribers through unbounded in-memory queues;
stopping the server breaks every subscription (messages published meanwhile are lost, as with
Redis) and :meth:`~MemoryServer.restart` starts it again with no data, as a Redis without
persistence restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import trio

from actors._errors import FleetStoreUnavailable

__all__ = ["MemoryServer"]


class _Subscription:
    __slots__ = ("broken", "channels", "send")

    def __init__(self, channels: frozenset[str], send: trio.MemorySendChannel[tuple[str, bytes]]):
        self.channels = channels
        self.send = send
        self.broken = False


class MemoryServer:
    """One shared in-memory store server (see the module docstring).

    Args:
        clock: the server's clock in seconds (default ``trio.current_time``).
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = trio.current_time if clock is None else clock
        self.data: dict[str, Any] = {}
        self.running = True
        self.round_trips = 0
        self._subscriptions: list[_Subscription] = []
        self._up = trio.Event()
        self._up.set()

    def now_ms(self) -> int:
        """The server's time in whole milliseconds (as a Lua script reads ``TIME``)."""
        return math.floor(self._clock() * 1000.0)

    async def begin(self, operation: str) -> int:
        """Start one operation: checkpoint, count a round trip, fail while the server is down.

        Returns the server time in ms.  Raises FleetStoreUnavailable while down.
        """
        await trio.lowlevel.checkpoint()
        self.round_trips += 1
        if not self.running:
            raise FleetStoreUnavailable(
                operation=operation, store="memory", reason="the store is down"
            )
        return self.now_ms()

    def stop(self) -> None:
        """Take the server down: operations fail and subscriptions break (data is kept)."""
        self.running = False
        self._up = trio.Event()
        for subscription in self._subscriptions:
            subscription.broken = True
            subscription.send.close()
        self._subscriptions.clear()

    def start(self) -> None:
        """Bring the server back with its data (a network partition that heals)."""
        self.running = True
        self._up.set()

    def restart(self) -> None:
        """Restart with no data, as a Redis without persistence does after a crash."""
        self.stop()
        self.data.clear()
        self.start()

    def publish(self, channel: str, data: bytes) -> int:
        """Deliver ``data`` to every subscriber of ``channel``; return how many."""
        count = 0
        for subscription in self._subscriptions:
            if channel in subscription.channels:
                subscription.send.send_nowait((channel, data))
                count += 1
        return count

    async def listen(
        self,
        channels: Sequence[str],
        on_message: Callable[[str, bytes], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe like :meth:`actors._fleet._client.StoreClient.listen` (until cancelled)."""
        task_status.started()
        while True:
            await self._up.wait()
            send, receive = trio.open_memory_channel[tuple[str, bytes]](math.inf)
            self._subscriptions.append(_Subscription(frozenset(channels), send))
            if on_subscribed is not None:
                on_subscribed()
            async with receive:
                async for channel, data in receive:
                    on_message(channel, data)
            await trio.sleep(0.05)  # a broken subscription retries after a pause
