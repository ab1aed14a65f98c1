"""The trio side of the fleet store: one coredis client, deadlines, scripts, pub/sub.

Theory of operation
-------------------
:func:`open_store_client` opens a coredis connection pool inside an ``async with`` (coredis is
built on anyio and runs natively under trio) and yields a :class:`StoreClient`.  Every store
call goes through :meth:`StoreClient.call` (or :meth:`~StoreClient.script`, built on it), which

* runs it under its own trio deadline (``command_timeout``): coredis sets no socket timeouts by
  default, and a stopped server must cost a caller at most this long;
* translates every failure to reach or use the store, at this one boundary, into
  :class:`~actors._errors.FleetStoreUnavailable` chained to the original error;
* keeps the client's health: whether the last call worked, since when it fails and why, and the
  number of round trips made (benchmarks count them instead of timing them).

coredis's own retries are off: a call either answers within its deadline or fails, and the
caller (a refresh loop, a heartbeat, a joiner) decides what to do next.  A lost connection is
replaced by the pool on the next call, so the client recovers by itself once the server is
back.

Lua scripts are :class:`LuaScript` values made once at import time; :meth:`StoreClient.script`
runs one by its SHA (``EVALSHA``) and, when the server does not know it (a fresh or restarted
server answers ``NOSCRIPT``), loads it and runs it again, inside the same deadline.

:meth:`StoreClient.listen` is a pub/sub subscription run as a trio task: it calls a handler for
every message, and when the subscription breaks it resubscribes with capped backoff and calls
``on_subscribed`` again, so the owner can refresh what it may have missed meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

from actors._errors import FleetStoreUnavailable
from actors._policies._config._fleet import FleetSettings
from actors._policies._logs import library_logger

if TYPE_CHECKING:
    import coredis

    Redis = coredis.Redis[bytes]

__all__ = ["LUA_PRELUDE", "LuaScript", "StoreClient", "StoreClientStatistics", "open_store_client"]

_log = library_logger("actors.fleet.store")

_T = TypeVar("_T")


@functools.cache
def _store_errors() -> tuple[type[BaseException], ...]:
    """Failures to reach or use the store; anything else (a TypeError in our own arguments)
    is a bug and propagates unchanged.  coredis and anyio are imported when a client is first
    used, so the fleet layer imports without the ``fleet`` extra."""
    import anyio
    import coredis.exceptions

    return (
        coredis.exceptions.RedisError,
        OSError,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.EndOfStream,
    )


#: The start of every script: the server's clock in whole ms (``now_ms()``).  Redis 6.x needs
#: ``redis.replicate_commands`` before a script writes after reading TIME (7.0 and later
#: always replicate effects; there it is a no-op).
LUA_PRELUDE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""


@attrs.frozen
class LuaScript:
    """A Lua script run by its SHA: ``name`` (for errors and logs), ``source`` and ``sha``."""

    name: str
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


@attrs.frozen
class StoreClientStatistics:
    """A snapshot of a :class:`StoreClient`.

    Attributes:
        store: the store's ``host:port``.
        available: whether the last call reached the store.
        round_trips: commands sent to the store; ``by_operation`` the same per operation
            (``"breaker.read"``, ``"idempotency.claim"``, ...), so a benchmark can tell the
            round trips a call makes from the member's periodic ones.
        calls: store calls made; ``failures`` of them failed, ``timeouts`` by their deadline.
        down_since: trio time of the first failure of the current outage, or ``None``.
        last_error: the last failure's reason, or ``None``.
        script_loads: scripts (re)loaded after ``NOSCRIPT``.
    """

    store: str
    available: bool
    round_trips: int
    by_operation: dict[str, int]
    calls: int
    failures: int
    timeouts: int
    down_since: float | None
    last_error: str | None
    script_loads: int


def _is_store_error(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_store_error(inner) for inner in exc.exceptions)
    return isinstance(exc, _store_errors())


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class StoreClient:
    """A coredis client with deadlines, one error type, health and script caching.

    Made by :func:`open_store_client`; valid inside its ``async with`` only.
    """

    def __init__(self, redis: Redis, settings: FleetSettings) -> None:
        self.redis = redis
        self.settings = settings
        self.store = settings.store
        self.timeout = settings.command_timeout
        self.available = True
        self.round_trips = 0
        self._by_operation: dict[str, int] = {}
        self._calls = 0
        self._failures = 0
        self._timeouts = 0
        self._script_loads = 0
        self.down_since: float | None = None
        self.last_error: str | None = None

    async def call(
        self, operation: str, function: Callable[[Redis], Awaitable[_T]], *, round_trips: int = 1
    ) -> _T:
        """Run ``function(redis)`` under the command deadline.

        ``round_trips`` is how many commands ``function`` sends (for the statistics).

        Raises:
            FleetStoreUnavailable: the store could not be reached or answered an error, or the
                deadline passed (the command is then abandoned; coredis discards its reply).
        Cancellation from outside propagates as usual.
        """
        self._calls += 1
        self.round_trips += round_trips
        by_operation = self._by_operation
        by_operation[operation] = by_operation.get(operation, 0) + round_trips
        with trio.move_on_after(self.timeout) as scope:
            try:
                result = await function(self.redis)
            except BaseException as exc:
                if not _is_store_error(exc):
                    raise
                raise self._failed(operation, _reason(exc)) from exc
        if scope.cancelled_caught:
            self._timeouts += 1
            raise self._failed(operation, f"no answer within {self.timeout:g} s")
        self._succeeded()
        return result

    async def script(
        self, operation: str, script: LuaScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run ``script`` with ``keys`` and ``args`` by its SHA, loading it on ``NOSCRIPT``.

        Raises FleetStoreUnavailable like :meth:`call` (the load shares the deadline).
        """

        from coredis.exceptions import NoScriptError

        async def run(redis: Redis) -> Any:
            try:
                return await redis.evalsha(script.sha, keys=keys, args=args)
            except NoScriptError:
                self._script_loads += 1
                self.round_trips += 2
                self._by_operation[operation] += 2
                _log.debug("loading script %s (%s) into the store", script.name, script.sha)
                await redis.script_load(script.source)
                return await redis.evalsha(script.sha, keys=keys, args=args)

        return await self.call(operation, run)

    def _failed(self, operation: str, reason: str) -> FleetStoreUnavailable:
        self._failures += 1
        if self.available:
            self.available = False
            self.down_since = trio.current_time()
            _log.warning("fleet store %s unavailable (%s): %s", self.store, operation, reason)
        self.last_error = reason
        return FleetStoreUnavailable(operation=operation, store=self.store, reason=reason)

    def _succeeded(self) -> None:
        if not self.available:
            self.available = True
            _log.warning("fleet store %s available again", self.store)
            self.down_since = None

    async def listen(
        self,
        channels: Sequence[str],
        on_message: Callable[[str, bytes], None],
        *,
        on_subscribed: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe to ``channels`` and call ``on_message(channel, data)`` for each message.

        Runs until cancelled.  ``task_status.started()`` is called at once (the first
        subscription may fail while the store is down); ``on_subscribed`` is called after each
        (re)subscription, so the owner can catch up on what it missed.  A broken subscription
        is retried with capped exponential backoff (0.05 s to 2 s).  ``on_message`` must not
        block; an exception from it propagates and ends the task.
        """
        task_status.started()
        delay = 0.05
        while True:
            try:
                async with self.redis.pubsub(
                    channels=list(channels),
                    retry_policy=None,
                    ignore_subscribe_messages=True,
                    subscription_timeout=self.settings.connect_timeout,
                ) as pubsub:
                    self._succeeded()
                    delay = 0.05
                    if on_subscribed is not None:
                        on_subscribed()
                    async for message in pubsub:
                        if message["type"] == "message":
                            channel = message["channel"]
                            name = channel.decode() if isinstance(channel, bytes) else channel
                            data = message["data"]
                            on_message(
                                name, data if isinstance(data, bytes) else str(data).encode()
                            )
            except BaseException as exc:
                if not _is_store_error(exc):
                    raise
                self._failed("pubsub", _reason(exc))
            await trio.sleep(delay)
            delay = min(2.0, delay * 2)

    def statistics(self) -> StoreClientStatistics:
        """Counters and health of the client."""
        return StoreClientStatistics(
            store=self.store,
            available=self.available,
            round_trips=self.round_trips,
            by_operation=dict(self._by_operation),
            calls=self._calls,
            failures=self._failures,
            timeouts=self._timeouts,
            down_since=self.down_since,
            last_error=self.last_error,
            script_loads=self._script_loads,
        )


@contextlib.asynccontextmanager
async def open_store_client(settings: FleetSettings) -> AsyncIterator[StoreClient]:
    """Open a connection pool to ``settings.redis_url`` for the duration of the block.

    Opening does not contact the store (the first call does), so a fleet member starts while
    the store is down and reaches it once it is up.  Raises ConfigError-free: the URL was
    checked by :class:`FleetSettings`; ImportError naming the extra when coredis is not
    installed.
    """
    try:
        import coredis
        import coredis.retry
    except ImportError as exc:
        raise ImportError(
            "a fleet needs the coredis client: pip install 'aura-actors[fleet]'"
        ) from exc
    redis: Redis = coredis.Redis.from_url(
        settings.redis_url,
        decode_responses=False,
        retry_policy=coredis.retry.NoRetryPolicy(),
        connect_timeout=settings.connect_timeout,
        verify_version=False,
    )
    pool = redis.connection_pool
    pool.connection_class = _closing(pool.connection_class)
    async with redis:
        yield StoreClient(redis, settings)


_BUFFERS: Final = (
    "_write_buffer_in",
    "_write_buffer_out",
    "_push_message_buffer_in",
    "_push_message_buffer_out",
    "_streamed_message_buffer_in",
    "_streamed_message_buffer_out",
)


def _closing(kind: type[Any]) -> type[Any]:
    """``kind`` (a coredis connection class) closing its buffers when it ends.

    A coredis connection makes its in-memory buffers when it is built and closes them only if
    it connected: one that fails to connect (the server is down) leaves them to the garbage
    collector, which warns (ResourceWarning) at an unpredictable later moment.
    """

    import anyio

    async def run(self: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await kind.run(self, task_status=task_status)
        finally:
            for name in _BUFFERS:
                stream = getattr(self, name, None)
                if stream is not None:
                    stream.close()

    return type(f"Closing{kind.__name__}", (kind,), {"run": run})
