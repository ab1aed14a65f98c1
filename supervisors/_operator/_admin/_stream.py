"""The admin API's event stream (``GET /api/resilience/stream``): what the live dashboard shows,
pushed over Server-Sent Events.

Theory of operation
-------------------
One :class:`StreamHub` per admin API polls the tree's actors while at least one client
watches (every ``stream_interval`` seconds; not at all otherwise) and cuts what it learns into
*sections*: ``health``, ``services`` (each service's breaker, error rate and ratio, latency,
retry budget and bulkhead), ``alerts``, ``sagas`` and ``tree``.  Each section is encoded to JSON
once; a section whose JSON changed gets the next *sequence number* and is offered to every
client as one ``update`` event.  The encoded sections are shared: a client holds references,
never copies.

Each client (:class:`Subscriber`) has a bounded buffer of events not yet written (at most
``max_pending`` events and ``stream_buffer`` bytes).  A client that reads slower than the
sections change fills it; then its buffer is dropped at once and the client is marked for
*resync*: the next thing written to it is a ``snapshot`` event holding every section and the
current sequence number, from which it starts again.  So a slow reader costs a bounded amount
of memory (its buffer, one event being written and the kernel's send buffer) and never slows
the others, and a client always knows where it is: ``update`` events carry consecutive
sequence numbers, and a snapshot replaces everything.  A client that falls so far behind that
a chunk is not taken within the server's ``write_timeout`` is cut off; the browser reconnects
and starts from a snapshot.

The wire format (``text/event-stream``)::

    retry: 2000                                  (reconnect after 2 s)

    id: 41
    event: snapshot
    data: {"seq":41,"sections":{"health":{...},"services":[...],...}}

    id: 42
    event: update
    data: {"seq":42,"section":"alerts","data":{...}}

    : keep-alive                                 (every stream_heartbeat seconds of silence)

At most ``max_streams`` clients stream at once (one more gets 503 with ``Retry-After``), so
streams never take the connections the API needs.  A stream ends when the client leaves, when
its heartbeat or an event cannot be written within ``write_timeout``, and at once when the
server stops (the HTTP server tells it to end: a stream never holds shutdown).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
import trio

from actors._core._ref import ActorRef
from actors._errors import ActorError
from actors._monitor._types import HealthReport, MetricsReport
from actors._provider._messages import ProviderStatus
from actors._saga._messages import ListSagas
from supervisors._operator._metrics import OperatorSnapshot, take_snapshot

if TYPE_CHECKING:
    from supervisors._operator._admin._requests import AdminBackend

__all__ = ["EventStream", "StreamHub", "StreamStatistics", "Subscriber", "dashboard_sections"]

logger: Final = logging.getLogger("supervisors.admin")

#: The sections of the dashboard's state, in the order a snapshot lists them.
SECTIONS: Final = ("health", "services", "alerts", "sagas", "tree")
#: What a stream writes when it has been silent for ``stream_heartbeat`` seconds.
HEARTBEAT: Final = b": keep-alive\n\n"
#: The reconnection delay a browser is told to use (milliseconds).
RETRY_MS: Final = 2000

_encoder: Final = msgspec.json.Encoder()


@attrs.frozen
class StreamStatistics:
    """What a :class:`StreamHub` holds and has done.

    Attributes:
        subscribers: clients streaming now.
        published: section changes published (the last sequence number).
        polls: times the hub asked the actors.
        resyncs: times a client's buffer overflowed and was dropped for a snapshot.
        refused: clients refused because ``max_streams`` were streaming.
        most_pending_bytes: the most bytes of events one client's buffer ever held (at most
            the hub's ``buffer_bytes``).
    """

    subscribers: int
    published: int
    polls: int
    resyncs: int
    refused: int
    most_pending_bytes: int


class Subscriber:
    """One streaming client's place at a :class:`StreamHub`: its bounded buffer of events.

    Made by :meth:`StreamHub.subscribe`; the stream writes what :meth:`StreamHub.take` gives
    it after :meth:`wait` returns.
    """

    __slots__ = ("_wakeup", "pending", "pending_bytes", "resync")

    def __init__(self) -> None:
        #: Events not yet written: ``(seq, section, encoded data)``.
        self.pending: collections.deque[tuple[int, str, bytes]] = collections.deque()
        self.pending_bytes = 0
        #: The next write is a snapshot (a new client, or one whose buffer overflowed).
        self.resync = True
        self._wakeup = trio.Event()

    async def wait(self) -> None:
        """Wait until there is something to write (a new event or a snapshot)."""
        await self._wakeup.wait()


class StreamHub:
    """Polls the actors while clients watch and fans the changes out (see the module
    docstring).

    Args:
        collect: returns the current sections (``{name: JSON-encodable value}``); called
            every ``interval`` seconds while anyone streams.
        interval: seconds between two polls.
        max_streams: clients streaming at once.
        max_pending: events a client's buffer holds before it is dropped for a snapshot.
        buffer_bytes: bytes of events a client's buffer holds before it is dropped.
    """

    def __init__(
        self,
        collect: Callable[[], Awaitable[Mapping[str, object]]],
        *,
        interval: float = 1.0,
        max_streams: int = 8,
        max_pending: int = 256,
        buffer_bytes: int = 1024 * 1024,
    ) -> None:
        self._collect = collect
        self.interval = interval
        self.max_streams = max_streams
        self.max_pending = max_pending
        self.buffer_bytes = buffer_bytes
        self._subscribers: set[Subscriber] = set()
        self._sections: dict[str, bytes] = {}
        self._seq = 0
        self._polls = 0
        self._resyncs = 0
        self._refused = 0
        self._most_pending = 0
        self._wanted = trio.Event()

    def statistics(self) -> StreamStatistics:
        """A snapshot of :class:`StreamStatistics`."""
        return StreamStatistics(
            subscribers=len(self._subscribers),
            published=self._seq,
            polls=self._polls,
            resyncs=self._resyncs,
            refused=self._refused,
            most_pending_bytes=self._most_pending,
        )

    # ------------------------------------------------------------------ clients

    def subscribe(self) -> Subscriber | None:
        """A new client's :class:`Subscriber` (its first write is a snapshot), or ``None``
        when ``max_streams`` clients stream already."""
        if len(self._subscribers) >= self.max_streams:
            self._refused += 1
            return None
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        if self._sections:
            subscriber._wakeup.set()  # the snapshot is ready now
        self._wanted.set()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a client (idempotent).  When the last one goes the hub stops polling and
        forgets the sections, so the next client never starts from stale ones."""
        self._subscribers.discard(subscriber)
        subscriber.pending.clear()
        if not self._subscribers:
            self._sections.clear()

    def take(self, subscriber: Subscriber) -> bytes:
        """The frames to write to ``subscriber`` now (``b""``: nothing yet), emptying its
        buffer: a snapshot when it must resync, else its pending updates in order."""
        if subscriber.resync:
            if not self._sections:
                subscriber._wakeup = trio.Event()
                return b""  # no poll has finished yet: the snapshot comes with the first
            subscriber.resync = False
            subscriber.pending.clear()
            subscriber.pending_bytes = 0
            subscriber._wakeup = trio.Event()
            return self.snapshot_frame()
        frames = [_update_frame(seq, name, data) for seq, name, data in subscriber.pending]
        subscriber.pending.clear()
        subscriber.pending_bytes = 0
        subscriber._wakeup = trio.Event()
        return b"".join(frames)

    def snapshot_frame(self) -> bytes:
        """A ``snapshot`` event of every section at the current sequence number."""
        parts = [b'"' + name.encode() + b'":' + self._sections[name] for name in self._sections]
        data = b'{"seq":%d,"sections":{%s}}' % (self._seq, b",".join(parts))
        return b"id: %d\nevent: snapshot\ndata: %s\n\n" % (self._seq, data)

    # ------------------------------------------------------------------ publishing

    def publish(self, sections: Mapping[str, object]) -> int:
        """Encode ``sections``; give each one that changed the next sequence number and offer
        it to every client.  Returns how many changed.  A client whose buffer would pass
        ``max_pending`` events or ``buffer_bytes`` bytes is dropped to a resync instead."""
        changed = 0
        for name, value in sections.items():
            data = _encoder.encode(value)
            if self._sections.get(name) == data:
                continue
            self._sections[name] = data
            self._seq += 1
            changed += 1
            for subscriber in self._subscribers:
                self._offer(subscriber, self._seq, name, data)
        return changed

    def _offer(self, subscriber: Subscriber, seq: int, name: str, data: bytes) -> None:
        if not subscriber.resync:
            if (
                len(subscriber.pending) >= self.max_pending
                or subscriber.pending_bytes + len(data) > self.buffer_bytes
            ):
                # Too far behind: drop what it has not read; a snapshot takes its place.
                subscriber.pending.clear()
                subscriber.pending_bytes = 0
                subscriber.resync = True
                self._resyncs += 1
            else:
                subscriber.pending.append((seq, name, data))
                subscriber.pending_bytes += len(data)
                if subscriber.pending_bytes > self._most_pending:
                    self._most_pending = subscriber.pending_bytes
        subscriber._wakeup.set()

    async def run(self) -> None:
        """Poll while anyone streams, every ``interval`` seconds; runs until cancelled.

        A poll that fails (an actor that does not answer) is logged and retried at the next
        interval; the sections it could not read keep their last value.
        """
        while True:
            if not self._subscribers:
                self._wanted = trio.Event()
                await self._wanted.wait()
            self._polls += 1
            try:
                sections = await self._collect()
            except Exception:
                logger.exception("admin API: the event stream could not read the actors")
            else:
                if self._subscribers:
                    self.publish(sections)
            await trio.sleep(self.interval)


def _update_frame(seq: int, name: str, data: bytes) -> bytes:
    body = b'{"seq":%d,"section":"%s","data":%s}' % (seq, name.encode(), data)
    return b"id: %d\nevent: update\ndata: %s\n\n" % (seq, body)


# ================================================================================ the response


class EventStream:
    """The ASGI response of ``GET /api/resilience/stream`` for one client (see the module
    docstring): subscribes to ``hub``, writes a snapshot, then updates and heartbeats until
    the client leaves or the server stops.  Past ``max_streams`` it answers 503."""

    def __init__(
        self,
        hub: StreamHub,
        *,
        heartbeat: float,
        refuse: Callable[[], Callable[..., Awaitable[None]]],
    ) -> None:
        self.hub = hub
        self.heartbeat = heartbeat
        self._refuse = refuse

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        subscriber = self.hub.subscribe()
        if subscriber is None:
            await self._refuse()(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-store"),
                        (b"x-content-type-options", b"nosniff"),
                        (b"x-accel-buffering", b"no"),  # a proxy must not buffer the stream
                    ],
                }
            )
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            first = b"retry: %d\n\n" % RETRY_MS
            await send({"type": "http.response.body", "body": first, "more_body": True})
            ended = await self._pump(subscriber, receive, send)
            if ended:  # the server stops (or the client closed its side): end the body
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away, or did not read in time: the server closes it
        finally:
            self.hub.unsubscribe(subscriber)

    async def _pump(
        self,
        subscriber: Subscriber,
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> bool:
        """Write events until the client leaves or the server stops (``True``: the body can
        still be ended) or a write fails (``False``)."""
        ended = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal ended
                while (await receive())["type"] != "http.disconnect":
                    pass
                ended = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            while True:
                with trio.move_on_after(self.heartbeat):
                    await subscriber.wait()
                data = self.hub.take(subscriber) or HEARTBEAT
                try:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                except OSError:  # the client went away or did not read in time
                    nursery.cancel_scope.cancel()
                    break
        return ended


# ================================================================================ the sections


class ServiceView(msgspec.Struct, frozen=True):
    """One row of the dashboard's services: the monitor's view of a service joined with its
    provider actor's status (when one runs here)."""

    service: str
    breaker: str
    health: str | None
    calls: int
    errors: int
    error_rate_per_min: float
    error_ratio: float | None
    latency: dict[str, float | None]
    errors_by_category: dict[str, int]
    provider: bool = False
    retry_after: float | None = None
    budget: int | None = None
    running: int | None = None
    queued: int | None = None
    waiting: int | None = None


def _services(
    metrics: MetricsReport | None,
    health: HealthReport | None,
    providers: Mapping[str, ProviderStatus],
) -> list[ServiceView]:
    monitored = metrics.services if metrics is not None else {}
    rows = []
    for service in sorted(set(monitored) | set(providers)):
        m = monitored.get(service)
        p = providers.get(service)
        h = health.services.get(service) if health is not None else None
        breaker = p.breaker if p is not None else (m.breaker if m is not None else "closed")
        rows.append(
            ServiceView(
                service=service,
                breaker=breaker,
                health=h.status.value if h is not None else None,
                calls=m.calls if m is not None else 0,
                errors=m.errors if m is not None else 0,
                error_rate_per_min=m.error_rate_per_min if m is not None else 0.0,
                error_ratio=m.error_ratio if m is not None and m.enough_calls else None,
                latency=dict(m.latency) if m is not None else {},
                errors_by_category=dict(m.errors_by_category) if m is not None else {},
                provider=p is not None,
                retry_after=p.retry_after if p is not None else None,
                budget=p.budget_balance if p is not None else None,
                running=p.running if p is not None else None,
                queued=p.queued if p is not None else None,
                waiting=p.waiting if p is not None else None,
            )
        )
    return rows


def _sagas(snapshot: OperatorSnapshot, limit: int, show_metadata: bool) -> dict[str, Any]:
    items = list(snapshot.sagas or ())
    shown = items[:limit]
    if not show_metadata:  # metadata may hold personal data
        shown = [
            msgspec.structs.replace(s, metadata={}) if hasattr(s, "metadata") else s for s in shown
        ]
    outcomes: dict[str, int] = {}
    stats = snapshot.saga_statistics
    for name in ("running", "completed", "compensated", "failed", "cancelled"):
        value = getattr(stats, name, None)
        if isinstance(value, int):
            outcomes[name] = value
    value = getattr(stats, "compensation_failed", None)
    if isinstance(value, int):
        outcomes["compensation_failed"] = value
    return {
        "available": snapshot.sagas is not None,
        "total": len(items),
        "items": shown,
        "outcomes": outcomes,
    }


def dashboard_sections(
    snapshot: OperatorSnapshot, *, limit: int, saga_input: bool
) -> dict[str, Any]:
    """The dashboard's sections (see the module docstring) from an operator snapshot.

    ``limit`` bounds the sagas listed (their total is given); saga metadata is left out
    unless ``saga_input``.
    """
    health = snapshot.health
    return {
        "health": {
            "status": health.status.value if health is not None else "unknown",
            "reasons": list(health.reasons) if health is not None else [],
            "active_alerts": health.active_alerts if health is not None else 0,
            "problems": list(snapshot.problems),
        },
        "services": _services(snapshot.metrics, health, snapshot.providers),
        "alerts": {"active": list(snapshot.alerts.active) if snapshot.alerts else []},
        "sagas": _sagas(snapshot, limit, saga_input),
        "tree": snapshot.tree,
    }


async def collect_sections(backend: AdminBackend) -> dict[str, Any]:
    """Ask the tree's actors (as ``/metrics`` does) and cut the answers into sections."""
    settings = backend.settings

    def lookup(path: str | None) -> ActorRef[Any, Any] | None:
        if path is None:
            return None
        try:
            return backend.lookup(path)
        except ActorError:
            return None

    snapshot = await take_snapshot(
        lookup(settings.monitor),
        tree=backend.tree(),
        providers=backend.providers(),
        sagas=lookup(settings.sagas),
        sagas_query=ListSagas(),
        ask_timeout=settings.ask_timeout,
    )
    return dashboard_sections(snapshot, limit=settings.max_page, saga_input=settings.saga_input)
