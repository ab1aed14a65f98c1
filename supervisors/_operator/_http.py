"""A small HTTP/1.1 server for the admin API: ASGI over h11 on trio, every resource bounded.

Theory of operation
-------------------
:class:`HttpServer` serves one ASGI application on a TCP address.  It exists because an admin
endpoint is exposed to whoever can reach it, and a general-purpose server's defaults let a
handful of clients hold memory, file descriptors and shutdown hostage (HTTP/2 streams that
never open their window, readers that never read, a send that cannot be cancelled).  Here
every resource has a bound, and the bound is enforced by a trio deadline, never by the
client's goodwill:

* **Connections.**  At most ``max_connections`` are open; one more is answered ``503`` at once
  and closed.  Each connection is one task that owns its socket and closes it in a ``finally``,
  so a connection ended for any reason (the client left, a deadline, a protocol error, the
  server's stop) gives its file descriptor back immediately.
* **Reading.**  A request (head and body) must arrive within ``request_timeout`` of its first
  byte; a kept-alive connection may idle ``keep_alive`` seconds between requests.  The head
  is at most ``max_header_bytes`` (431), the body at most ``max_body`` bytes (413, without
  reading it).  Only HTTP/1.0 and 1.1: an HTTP/2 preface is answered ``505`` and closed, and
  ``Upgrade: h2c`` is ignored, so no stream multiplexing, flow-control windows or per-stream
  buffers exist to be abused.
* **Writing.**  A response is built in memory by the application (whose answers are bounded),
  then written under ``write_timeout``: a client that does not read it in time is cut off.
  The kernel's send buffer per connection is capped (``send_buffer``), so a client that does
  not read holds at most that much kernel memory.  Nothing is shielded from cancellation.
* **Streaming.**  A response whose application sends ``more_body=True`` (Server-Sent Events)
  is written as it comes, chunk by chunk, each chunk under ``write_timeout``; a chunk the
  client does not take in time, or a client that went away, makes the application's
  ``send()`` raise :class:`ClientDisconnected` (an ``OSError``, as ASGI 2.4 says).  While it
  streams, ``receive()`` reads (and drops, at most ``max_header_bytes``) what the client sends
  and answers ``http.disconnect`` as soon as the client closes its side or the server stops,
  so the application ends its stream at once.  A streamed response always closes its
  connection.  What the application keeps for a slow client is its own to bound (the admin
  API's event stream keeps a bounded buffer per client and resynchronises it when it
  overflows); the server holds one chunk per stream.
* **Stopping.**  :meth:`HttpServer.stop` closes the listeners and idle connections at once,
  and tells streaming responses to end (``http.disconnect``); requests in progress get
  ``graceful_timeout`` seconds to be answered (with ``Connection: close``); then every
  remaining connection is cancelled and closed.  So the server stops within
  ``graceful_timeout`` whatever its clients (and its streams) do.

The application sees a standard ASGI ``http`` scope: ``receive()`` returns the whole body at
once (it is already read and bounded), then ``http.disconnect`` once the response is written
(or, while a response streams, once the client leaves or the server stops).
:meth:`HttpServer.statistics` counts connections, refusals, timeouts and the bytes of responses
being written, so tests and operators can check the bounds hold.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

import attrs
import h11
import trio

from actors._policies._logs import library_logger

__all__ = ["ClientDisconnected", "HttpLimits", "HttpServer", "HttpStatistics"]

logger: Final = library_logger("supervisors.admin")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
ASGIApp: TypeAlias = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
#: Builds an error response body: ``(status, code, message) -> (content type, body)``.
ErrorBody: TypeAlias = Callable[[int, str, str], tuple[bytes, bytes]]

_RECEIVE_SIZE: Final = 64 * 1024
# Accept errors that mean "out of a resource for now": wait a little and accept again.
_ACCEPT_RETRY: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def _positive(_instance: Any, attribute: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"admin {attribute.name} must be a positive number, got {value!r}")


def _count(_instance: Any, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"admin {attribute.name} must be an int >= 1, got {value!r}")


@attrs.frozen
class HttpLimits:
    """The bounds :class:`HttpServer` enforces (see the module docstring).

    Attributes:
        max_connections: connections open at once (64); one more gets 503.
        max_header_bytes: the largest request head (16 KiB); larger gets 431.
        max_body: the largest request body in bytes (64 KiB); larger gets 413.
        request_timeout: seconds from a request's first byte to its last (10).
        keep_alive: seconds a connection may idle between requests (5).
        write_timeout: seconds to write one response (10); then the connection is cut.
        graceful_timeout: seconds requests in progress get when the server stops (1).
        max_requests: requests served on one connection before it is closed (1000).
        send_buffer: the kernel send buffer of each connection, in bytes (256 KiB; the
            kernel doubles it): what a client that does not read can make the kernel hold,
            instead of the megabytes loopback and LAN connections otherwise grow to.
    """

    max_connections: int = attrs.field(default=64, validator=_count)
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=_count)
    max_body: int = attrs.field(default=64 * 1024, validator=_count)
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    keep_alive: float = attrs.field(default=5.0, validator=_positive)
    write_timeout: float = attrs.field(default=10.0, validator=_positive)
    graceful_timeout: float = attrs.field(default=1.0, validator=_positive)
    max_requests: int = attrs.field(default=1000, validator=_count)
    send_buffer: int = attrs.field(default=256 * 1024, validator=_count)


@attrs.frozen
class HttpStatistics:
    """What an :class:`HttpServer` holds and has done.

    Attributes:
        open_connections: connections open now (at most ``max_connections``).
        most_connections: the most that were open at once.
        writing_bytes: bytes of responses being written now (each is freed once written or
            cut off).
        streams: responses streaming now (Server-Sent Events).
        accepted: connections accepted and served.
        refused: connections answered 503 because ``max_connections`` were open.
        requests: requests answered.
        read_timeouts: connections closed because a request took longer than
            ``request_timeout`` to arrive, or the connection idled past ``keep_alive``.
        write_timeouts: connections cut off because a response was not read in time.
        protocol_errors: requests refused as malformed, too large, or not HTTP/1.x.
        closed_at_stop: connections still busy when the graceful timeout ended.
    """

    open_connections: int
    most_connections: int
    writing_bytes: int
    streams: int
    accepted: int
    refused: int
    requests: int
    read_timeouts: int
    write_timeouts: int
    protocol_errors: int
    closed_at_stop: int


class _Refused(Exception):
    """A request the server answers itself (a status, a code, a message), then closes."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Closed(Exception):
    """The client closed the connection, or it timed out between requests."""


class ClientDisconnected(OSError):
    """Raised by ``send()`` while a response streams: the client went away, or did not take
    a chunk within ``write_timeout`` (the connection is cut).  The application should stop
    streaming; the server closes the connection."""


class HttpServer:
    """Serves an ASGI application over HTTP/1.1 within :class:`HttpLimits`.

    Args:
        app: the ASGI application.
        limits: the :class:`HttpLimits`.
        error_body: builds the body of the errors the server answers itself (503 when full,
            400/413/431/505 for refused requests, 500 when the application fails); default a
            small JSON object.

    Use ``address = await nursery.start(server.serve, host, port)``; :meth:`stop` (or
    cancelling the task) ends it.
    """

    def __init__(
        self, app: ASGIApp, limits: HttpLimits, *, error_body: ErrorBody | None = None
    ) -> None:
        self.app = app
        self.limits = limits
        self._error_body = error_body or _default_error_body
        self._stopping = trio.Event()
        self._idle: set[trio.CancelScope] = set()
        self._open = 0
        self._refusing = 0
        self._most = 0
        self._writing = 0
        self._streams = 0
        self._counts = dict.fromkeys(
            (
                "accepted",
                "refused",
                "requests",
                "read_timeouts",
                "write_timeouts",
                "protocol_errors",
                "closed_at_stop",
            ),
            0,
        )

    def statistics(self) -> HttpStatistics:
        """A snapshot of :class:`HttpStatistics`."""
        return HttpStatistics(
            open_connections=self._open,
            most_connections=self._most,
            writing_bytes=self._writing,
            streams=self._streams,
            **self._counts,
        )

    def stop(self) -> None:
        """Stop accepting; close idle connections now, tell streams to end, and close the
        others after the grace."""
        self._stopping.set()
        for scope in list(self._idle):
            scope.cancel()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind ``host:port``, report the bound ``(host, port)``, and serve until stopped.

        Raises ``OSError`` if the address cannot be bound.  Returns once :meth:`stop` was
        called and every connection is closed (at most ``graceful_timeout`` later); on
        cancellation every connection is closed at once.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0:
            # Each address of a name gets its own free port: serve the first one only.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        bound = listeners[0].socket.getsockname()
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, connections)
                    task_status.started((bound[0], bound[1]))
                    await self._stopping.wait()
                    accepting.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                self.stop()  # idle connections opened meanwhile
                connections.cancel_scope.deadline = (
                    trio.current_time() + self.limits.graceful_timeout
                )
        finally:
            for listener in listeners:
                listener.socket.close()

    # ---------------------------------------------------------------------- connections

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY:
                    raise
                logger.warning("admin API: cannot accept a connection now: %s", exc)
                await trio.sleep(0.1)
                continue
            if self._open >= self.limits.max_connections:
                self._counts["refused"] += 1
                if self._refusing < self.limits.max_connections:
                    self._refusing += 1
                    nursery.start_soon(self._refuse, stream)
                else:
                    stream.socket.close()  # a flood: not even an answer
                continue
            try:
                stream.socket.setsockopt(
                    trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, self.limits.send_buffer
                )
            except OSError:
                pass  # a platform without the option keeps its default
            self._open += 1
            self._most = max(self._most, self._open)
            self._counts["accepted"] += 1
            nursery.start_soon(self._connection, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """Answer 503 to a connection past the limit, within half a second, and close it.

        At most ``max_connections`` refusals run at once (past that a connection is closed
        without an answer), each for at most half a second: a flood of connections costs a
        bounded number of descriptors for a bounded time.
        """
        content_type, body = self._error_body(
            503, "too_many_connections", "the admin API has too many open connections"
        )
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: {content_type.decode()}\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
        )
        try:
            with trio.move_on_after(0.5):
                await stream.send_all(head.encode() + body)
                await self._linger(stream, limit=4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._refusing -= 1
            stream.socket.close()

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        sock = stream.socket
        try:
            client = _address(sock.getpeername())
            server = _address(sock.getsockname())
            for served in range(self.limits.max_requests):
                try:
                    request, body = await self._read_request(conn, stream, first=served == 0)
                except _Closed:
                    return
                except _Refused as refused:
                    self._counts["protocol_errors"] += 1
                    if await self._send_error(conn, stream, refused):
                        await self._linger(stream)
                    return
                last = served + 1 == self.limits.max_requests
                close = last or self._stopping.is_set()
                if not await self._respond(conn, stream, request, body, client, server, close):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the client went away
        except trio.Cancelled:
            if self._stopping.is_set():
                self._counts["closed_at_stop"] += 1  # still busy when the grace ended
            raise
        finally:
            self._open -= 1
            sock.close()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream, *, first: bool
    ) -> tuple[h11.Request, bytes]:
        """The next request and its body, within the read deadlines."""
        limits = self.limits
        # Between requests the connection may idle `keep_alive`; a request's bytes must all
        # arrive within `request_timeout` of its first one.
        deadline = trio.current_time() + (limits.request_timeout if first else limits.keep_alive)
        started = first
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                code = "headers_too_large" if status == 431 else "bad_request"
                raise _Refused(status, code, f"malformed request: {exc}") from None
            if event is h11.NEED_DATA:
                if request is not None and conn.they_are_waiting_for_100_continue:
                    go_on = h11.InformationalResponse(status_code=100, headers=[])
                    await self._send(conn, stream, go_on)
                data = await self._receive(stream, deadline, idle=not started)
                if not started and data:
                    started = True
                    deadline = trio.current_time() + limits.request_timeout
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise _Closed
            if isinstance(event, h11.Request):
                request = event
                # h11 bounds a head only while it is incomplete: check the whole of it too.
                head = sum(len(name) + len(value) + 4 for name, value in event.headers)
                if head + len(event.target) > limits.max_header_bytes:
                    raise _Refused(431, "headers_too_large", "the request head is too large")
                if event.http_version not in (b"1.0", b"1.1"):
                    raise _Refused(505, "http_version", "only HTTP/1.0 and HTTP/1.1 are served")
                if not event.target.startswith(b"/"):
                    raise _Refused(400, "bad_request", "the request target must be a path")
                declared = dict(event.headers).get(b"content-length")
                if declared is not None and int(declared) > limits.max_body:
                    raise _Refused(413, "body_too_large", _too_large(limits.max_body))
                continue
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limits.max_body:
                    raise _Refused(413, "body_too_large", _too_large(limits.max_body))
                continue
            if isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            raise _Closed  # PAUSED cannot happen here: each cycle is finished before the next

    async def _receive(self, stream: trio.SocketStream, deadline: float, *, idle: bool) -> bytes:
        with trio.CancelScope(deadline=deadline) as scope:
            if idle:
                # stop() closes a connection waiting for its next request at once.
                self._idle.add(scope)
                if self._stopping.is_set():
                    scope.cancel()
            try:
                return await stream.receive_some(_RECEIVE_SIZE)
            finally:
                self._idle.discard(scope)
        if not self._stopping.is_set():
            self._counts["read_timeouts"] += 1
        raise _Closed

    async def _respond(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: h11.Request,
        body: bytes,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        close: bool,
    ) -> bool:
        """Run the application for one request and write its response; False: close now."""
        raw_path, _, query = request.target.partition(b"?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(name, value) for name, value in request.headers],
            "client": client,
            "server": server,
        }
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        written = trio.Event()
        delivered = False
        # A streamed response: its head is written with its first chunk; it ends with the
        # connection.  `ended`: its last chunk is written; `broken`: the client is gone.
        streaming = ended = broken = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            if streaming:
                await self._wait_for_disconnect(stream)
            else:
                await written.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status, headers, streaming, ended, broken
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
                return
            if message["type"] != "http.response.body":
                return
            chunk = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if not streaming and not more:
                chunks.append(chunk)  # a whole response: written once the application returns
                return
            if broken or ended:
                raise ClientDisconnected("the response was already ended")
            if not streaming:
                streaming = True
                self._streams += 1
                chunk = b"".join(chunks) + chunk
                chunks.clear()
                kept = [(k, v) for k, v in headers if k not in (b"content-length", b"connection")]
                head = h11.Response(
                    status_code=status,
                    headers=[*kept, (b"connection", b"close")],
                    reason=_reason(status),
                )
                data = conn.send(head)
            else:
                data = b""
            if chunk:
                data += conn.send(h11.Data(data=chunk))
            if not more:
                data += conn.send(h11.EndOfMessage())
                ended = True
            try:
                ok = await self._write(stream, data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                broken = True
                raise ClientDisconnected("the client went away") from exc
            except BaseException:
                broken = True  # cancelled mid-chunk: the body cannot be ended cleanly any more
                raise
            if not ok:
                broken = True
                raise ClientDisconnected("the client did not read the stream in time")

        try:
            await self.app(scope, receive, send)
        except ClientDisconnected:
            if not streaming:
                raise
        except Exception:
            if not streaming:
                logger.exception("admin API: the application failed on %s", scope["path"][:200])
                content_type, error = self._error_body(500, "internal_error", "the request failed")
                status, chunks = 500, [error]
                headers = [(b"content-type", content_type)]
            else:
                logger.exception("admin API: a stream failed on %s", scope["path"][:200])
        finally:
            if streaming:
                self._streams -= 1
        if streaming:
            self._counts["requests"] += 1
            written.set()
            if not (ended or broken) and conn.our_state is h11.SEND_BODY:
                await self._write(stream, conn.send(h11.EndOfMessage()))
            return False  # a streamed response ends its connection
        content = b"".join(chunks)
        self._counts["requests"] += 1
        headers = [(k, v) for k, v in headers if k not in (b"content-length", b"connection")]
        headers.append((b"content-length", str(len(content)).encode()))
        if close or self._stopping.is_set():
            headers.append((b"connection", b"close"))
        if request.method == b"HEAD":
            content = b""
        try:
            data = conn.send(
                h11.Response(status_code=status, headers=headers, reason=_reason(status))
            )
            if content:
                data += conn.send(h11.Data(data=content))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            logger.exception("admin API: cannot encode the response to %s", scope["path"][:200])
            return False
        ok = await self._write(stream, data)
        written.set()
        return ok

    async def _wait_for_disconnect(self, stream: trio.SocketStream) -> None:
        """While a response streams: return once the client closes its side (or sends more
        than ``max_header_bytes``, dropped unread: nothing more is served on a streaming
        connection) or the server stops."""
        left = self.limits.max_header_bytes
        with trio.CancelScope() as scope:
            # stop() cancels it with the idle connections: a stream ends at once, gracefully.
            self._idle.add(scope)
            if self._stopping.is_set():
                scope.cancel()
            try:
                while left > 0:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        break
                    left -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self._idle.discard(scope)

    async def _write(self, stream: trio.SocketStream, data: bytes) -> bool:
        """Write ``data`` within ``write_timeout``; False when the client did not read it."""
        self._writing += len(data)
        try:
            with trio.move_on_after(self.limits.write_timeout):
                await stream.send_all(data)
                return True
            self._counts["write_timeouts"] += 1
            return False
        finally:
            self._writing -= len(data)

    async def _send(
        self, conn: h11.Connection, stream: trio.SocketStream, event: h11.Event
    ) -> None:
        data = conn.send(event)
        if data and not await self._write(stream, data):
            raise _Closed

    async def _send_error(
        self, conn: h11.Connection, stream: trio.SocketStream, refused: _Refused
    ) -> bool:
        """Answer a refused request (when the protocol still allows an answer)."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        content_type, body = self._error_body(refused.status, refused.code, refused.message)
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            response = h11.Response(
                status_code=refused.status, headers=headers, reason=_reason(refused.status)
            )
            data = conn.send(response)
            data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return False
        return await self._write(stream, data)

    async def _linger(self, stream: trio.SocketStream, limit: int | None = None) -> None:
        """After an error answer, read (and drop) what the client is still sending, briefly.

        Closing a socket with unread data makes the kernel reset the connection, and a client
        still sending its request would lose the answer.  Bounded: one second, ``limit``
        bytes (default ``max_body``), and the server's stop.
        """
        try:
            await stream.send_eof()
            left = self.limits.max_body if limit is None else limit
            with trio.move_on_after(1.0) as scope:
                self._idle.add(scope)
                if self._stopping.is_set():
                    scope.cancel()
                while left > 0:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        break
                    left -= len(data)
            self._idle.discard(scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _too_large(limit: int) -> str:
    return f"the body must be at most {limit} bytes"


def _default_error_body(status: int, code: str, message: str) -> tuple[bytes, bytes]:
    import json

    body = json.dumps({"error": {"status": status, "code": code, "message": message}})
    return b"application/json", body.encode()
