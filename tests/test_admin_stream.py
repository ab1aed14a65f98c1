"""The admin API's event stream (Server-Sent Events) and the live dashboard's page.

The hub's bookkeeping (sequence numbers, bounded buffers, resync) is tested without a network,
with hypothesis; the stream itself over real HTTP on loopback: what a client receives, the read
token, the stream limit, heartbeats, a slow reader that must not grow memory, and shutdown.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from supervisors import Supervisor, open_supervisor
from supervisors._operator._admin._actor import GetAdminAddress
from supervisors._operator._admin._dashboard import ASSETS, SECURITY_HEADERS, asset
from supervisors._operator._admin._settings import AdminSettings
from supervisors._operator._admin._stream import StreamHub, Subscriber
from tests.test_admin_api import AUTH, READ_TOKEN, _tree, breaker, calls, report
from tests.test_admin_limits import _admin, wait_until
from tests.test_admin_limits import stats as http_stats

# ================================================================================ SSE frames


def frames(data: bytes) -> Iterator[dict[str, Any]]:
    """The events in ``data`` (whole frames only): ``{"event", "id", "data", "comment"}``."""
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        event: dict[str, Any] = {"event": "message", "id": None, "data": None, "comment": None}
        lines = []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "":
                event["comment"] = value
            elif field == "data":
                lines.append(value)
            elif field in ("event", "id", "retry"):
                event[field] = value
        if lines:
            event["data"] = json.loads("\n".join(lines))
        yield event


class Client:
    """What a dashboard does with the stream: a snapshot replaces, an update must be next."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.sections: dict[str, Any] = {}
        self.snapshots = 0

    def apply(self, data: bytes) -> None:
        for event in frames(data):
            if event["event"] == "snapshot":
                self.seq = event["data"]["seq"]
                self.sections = dict(event["data"]["sections"])
                self.snapshots += 1
            elif event["event"] == "update":
                assert self.seq is not None, "an update before any snapshot"
                assert event["data"]["seq"] == self.seq + 1, "a gap in the sequence"
                self.seq = event["data"]["seq"]
                self.sections[event["data"]["section"]] = event["data"]["data"]
                assert event["id"] == str(self.seq)


# ================================================================================ the hub


async def _never() -> dict[str, Any]:
    raise AssertionError("not polled in these tests")


def test_only_changed_sections_are_published_with_consecutive_numbers() -> None:
    """A section is published when its JSON changes, each change with the next number."""
    hub = StreamHub(_never)
    subscriber = hub.subscribe()
    assert subscriber is not None
    assert hub.take(subscriber) == b""  # nothing polled yet: the snapshot waits for data
    assert hub.publish({"a": 1, "b": [1, 2]}) == 2
    client = Client()
    client.apply(hub.take(subscriber))
    assert (client.seq, client.sections, client.snapshots) == (2, {"a": 1, "b": [1, 2]}, 1)
    assert hub.publish({"a": 1, "b": [1, 2]}) == 0  # unchanged: nothing
    assert hub.take(subscriber) == b""
    assert hub.publish({"a": 2, "b": [1, 2]}) == 1
    assert hub.publish({"b": [3]}) == 1
    client.apply(hub.take(subscriber))
    assert (client.seq, client.sections, client.snapshots) == (4, {"a": 2, "b": [3]}, 1)


def test_a_client_past_its_buffer_is_dropped_to_a_snapshot_and_the_others_are_not() -> None:
    """A slow client's buffer is bounded: past it the buffer is emptied and its next write is
    a snapshot; a client that keeps up gets every update."""
    hub = StreamHub(_never, max_pending=4, buffer_bytes=10_000)
    slow, fast = hub.subscribe(), hub.subscribe()
    assert slow is not None
    assert fast is not None
    hub.publish({"x": 0})
    slow_client, fast_client = Client(), Client()
    slow_client.apply(hub.take(slow))
    fast_client.apply(hub.take(fast))
    for i in range(1, 11):
        hub.publish({"x": i})
        fast_client.apply(hub.take(fast))
        assert len(slow.pending) <= 4
    assert slow.resync
    assert not slow.pending
    slow_client.apply(hub.take(slow))
    assert slow_client.snapshots == 2
    assert fast_client.snapshots == 1
    assert slow_client.sections == fast_client.sections == {"x": 10}
    assert slow_client.seq == fast_client.seq == 11
    assert hub.statistics().resyncs == 1


def test_the_stream_limit_refuses_one_more_client() -> None:
    """Past max_streams, subscribe() refuses (the endpoint answers 503) and counts it."""
    hub = StreamHub(_never, max_streams=2)
    first, second = hub.subscribe(), hub.subscribe()
    assert first is not None
    assert second is not None
    assert hub.subscribe() is None
    hub.unsubscribe(first)
    assert hub.subscribe() is not None
    assert hub.statistics().refused == 1


def test_the_last_client_leaving_forgets_the_sections() -> None:
    """A client arriving after everyone left never gets a stale snapshot: it waits for a
    fresh poll."""
    hub = StreamHub(_never)
    first = hub.subscribe()
    assert first is not None
    hub.publish({"a": 1})
    hub.unsubscribe(first)
    second = hub.subscribe()
    assert second is not None
    assert hub.take(second) == b""


class HubMachine(RuleBasedStateMachine):
    """Clients that read at their own pace always rebuild the hub's exact state from what they
    are given, see consecutive numbers between snapshots, and never hold more than their bound."""

    MAX_PENDING = 5
    BUFFER = 400

    @initialize()
    def start(self) -> None:
        self.hub = StreamHub(_never, max_streams=4, max_pending=self.MAX_PENDING,
                             buffer_bytes=self.BUFFER)  # fmt: skip
        self.clients: dict[int, tuple[Subscriber, Client]] = {}
        self.truth: dict[str, Any] = {}
        self.next_id = 0

    @rule()
    def subscribe(self) -> None:
        subscriber = self.hub.subscribe()
        if len(self.clients) >= 4:
            assert subscriber is None
            return
        assert subscriber is not None
        self.clients[self.next_id] = (subscriber, Client())
        self.next_id += 1

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.clients)))
        subscriber, _ = self.clients.pop(key)
        self.hub.unsubscribe(subscriber)
        if not self.clients:
            self.truth.clear()

    @rule(
        changes=st.dictionaries(
            st.sampled_from(["health", "services", "alerts", "sagas", "tree"]),
            st.one_of(st.integers(), st.text(max_size=120), st.lists(st.integers(), max_size=8)),
            max_size=5,
        )
    )
    def publish(self, changes: dict[str, Any]) -> None:
        if not self.clients:
            return  # the hub publishes only while someone streams
        self.hub.publish(changes)
        self.truth.update(changes)

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.clients)))
        subscriber, client = self.clients[key]
        client.apply(self.hub.take(subscriber))
        if self.truth:
            assert client.sections == self.truth
            assert client.seq == self.hub.statistics().published

    @invariant()
    def bounded(self) -> None:
        if not hasattr(self, "hub"):
            return
        for subscriber, _ in self.clients.values():
            assert len(subscriber.pending) <= self.MAX_PENDING
            assert subscriber.pending_bytes <= self.BUFFER
            assert subscriber.pending_bytes == sum(len(d) for _, _, d in subscriber.pending)


TestHubMachine = HubMachine.TestCase
TestHubMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# ================================================================================ over HTTP


@asynccontextmanager
async def served(**admin: Any) -> AsyncIterator[tuple[Supervisor, str]]:
    """A tree with the admin API on loopback; yields the root and the base URL."""
    admin.setdefault("stream_interval", 0.05)
    spec, holder = _tree(**admin)
    async with open_supervisor(spec) as root:
        holder["root"] = root
        address = await root.ref("admin").ask(GetAdminAddress())
        yield root, address.url
        holder["gate"].set()


_OPENED: list[RawStream] = []


@pytest.fixture(autouse=True)
def _close_raw_streams() -> Iterator[None]:
    """A failed test leaves no socket behind to warn in the next one."""
    yield
    while _OPENED:
        _OPENED.pop().close()


class RawStream:
    """A stream client over a raw socket: it reads the HTTP head, then the chunked body as it
    comes, applying whole events to a :class:`Client`; it tells a body the server ended (the
    last chunk) from a connection that was cut."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""  # bytes received, not yet de-chunked
        self.body = b""  # de-chunked bytes, not yet whole events
        self.status = 0
        self.headers: dict[str, str] = {}
        self.client = Client()
        self.comments: list[str] = []
        self.ended = False  # the server sent the last chunk

    @classmethod
    async def open(
        cls, url: str, *, headers: dict[str, str] | None = None, receive_buffer: int | None = None
    ) -> RawStream:
        host, port = re.fullmatch(r"http://(.+):(\d+)", url).groups()  # type: ignore[union-attr]
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect((host, int(port)))
        self = cls(trio.SocketStream(sock))
        _OPENED.append(self)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = f"GET /api/resilience/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"
        await self.stream.send_all(request.encode())
        with trio.fail_after(10):
            while b"\r\n\r\n" not in self.buffer:
                await self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        return self

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def _dechunk(self) -> None:
        while not self.ended:
            size_line, found, rest = self.buffer.partition(b"\r\n")
            if not found:
                return
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.buffer = rest[size + 2 :]
            if size == 0:
                self.ended = True

    def _apply(self) -> None:
        whole, _, self.body = self.body.rpartition(b"\n\n")
        if whole:
            whole += b"\n\n"
            self.comments += [f["comment"] for f in frames(whole) if f["comment"]]
            self.client.apply(whole)

    async def until(self, predicate: Any, limit: float = 10.0) -> None:
        """Read until ``predicate(client)`` holds."""
        with trio.fail_after(limit):
            while True:
                self._dechunk()
                self._apply()
                if predicate(self.client):
                    return
                await self._fill()

    async def to_end(self, limit: float = 10.0) -> bool:
        """Read until the connection closes; whether the server ended the body first."""
        with trio.fail_after(limit):
            try:
                while True:
                    self._dechunk()
                    await self._fill()
            except (EOFError, trio.BrokenResourceError):
                pass
        self._dechunk()
        return self.ended

    def close(self) -> None:
        self.stream.socket.close()


async def test_the_stream_starts_with_a_snapshot_and_pushes_changes_as_they_happen() -> None:
    """A client gets every section at once, then each change as an update with the next
    sequence number: a breaker that opens shows up without asking again."""
    async with served() as (root, url):
        report(root, *calls("flaky", 8, 2))
        stream = await RawStream.open(url)
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-store"
        assert stream.headers["transfer-encoding"] == "chunked"
        await stream.until(lambda c: c.snapshots == 1)
        sections = stream.client.sections
        assert set(sections) == {"health", "services", "alerts", "sagas", "tree"}
        assert sections["tree"]["kind"] == "supervisor"
        assert {s["service"] for s in sections["services"]} == {"flaky"}

        # A service without a provider actor here shows the monitor's copy of its breaker;
        # a provider's row shows the provider's own breaker.
        report(root, *calls("payments", 5, 0), breaker("payments", "closed", "open"))
        report(root, breaker("flaky", "closed", "open"))

        def row(client: Client, service: str) -> dict[str, Any]:
            rows = {s["service"]: s for s in client.sections["services"]}
            return rows.get(service, {})

        await stream.until(lambda c: row(c, "payments").get("breaker") == "open")
        await stream.until(
            lambda c: any(a["rule"] == "breaker_open" for a in c.sections["alerts"]["active"])
        )
        assert stream.client.snapshots == 1  # one snapshot, then updates only
        assert row(stream.client, "flaky")["breaker"] == "closed"
        assert row(stream.client, "flaky")["provider"] is True
        stream.close()


async def test_sagas_metadata_stays_hidden_unless_configured() -> None:
    """The sagas section lists unfinished sagas without their metadata (personal data)."""
    from actors._saga._messages import StartSaga

    async with served() as (root, url):
        started = await root.ref("sagas").ask(
            StartSaga("order", {"what": "hold"}, metadata={"email": "a@example.com"}, wait=False)
        )
        stream = await RawStream.open(url)
        await stream.until(lambda c: c.snapshots == 1 and c.sections["sagas"]["total"] == 1)
        (item,) = stream.client.sections["sagas"]["items"]
        assert item["saga_id"] == started.saga_id
        assert item["metadata"] == {}
        assert "a@example.com" not in json.dumps(stream.client.sections)
        assert stream.client.sections["sagas"]["outcomes"]["running"] == 1
        stream.close()


async def test_the_stream_needs_the_read_token_when_one_is_set() -> None:
    """With a read token the stream answers 401 without it, 403 with a wrong one, and streams
    with the read token or the write token; the page itself stays public (it holds no data)."""
    async with (
        served(read_token=READ_TOKEN) as (root, url),
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await http.get("/api/resilience/stream")).status_code == 401
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        assert (await http.get("/api/resilience/stream", headers=wrong)).status_code == 403
        for headers in ({"Authorization": f"Bearer {READ_TOKEN}"}, AUTH):
            stream = await RawStream.open(url, headers=headers)
            assert stream.status == 200
            await stream.until(lambda c: c.snapshots == 1)
            stream.close()
        assert (await http.get("/dashboard")).status_code == 200
        assert http_stats(root).streams <= 2


async def test_one_stream_past_the_limit_gets_503_and_the_api_stays_served() -> None:
    """max_streams clients stream; one more gets 503 with Retry-After; the API answers."""
    async with served(max_streams=2) as (root, url), httpx.AsyncClient(base_url=url) as http:
        first, second = await RawStream.open(url), await RawStream.open(url)
        assert (first.status, second.status) == (200, 200)
        await wait_until(lambda: http_stats(root).streams == 2)
        refused = await http.get("/api/resilience/stream")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert refused.headers["retry-after"] == "5"
        assert (await http.get("/api/resilience/health")).status_code in (200, 503)
        first.close()
        second.close()
        hub = _admin(root)._hub
        assert hub is not None
        await wait_until(lambda: hub.statistics().subscribers == 0)
        assert hub.statistics().refused == 1


async def test_a_quiet_stream_sends_heartbeats() -> None:
    """With nothing changing, the stream writes a keep-alive comment every stream_heartbeat
    seconds, so a client that went away is noticed by a failed write."""
    async with served(stream_heartbeat=0.1) as (_root, url):
        stream = await RawStream.open(url)
        await stream.until(lambda c: c.snapshots == 1)
        await stream.until(lambda c: stream.comments.count("keep-alive") >= 2)
        assert stream.client.snapshots == 1
        stream.close()


async def test_a_client_that_leaves_frees_its_connection_at_once() -> None:
    """A client closing its side ends its stream without waiting for a heartbeat."""
    async with served(stream_heartbeat=3600) as (root, url):
        stream = await RawStream.open(url)
        await stream.until(lambda c: c.snapshots == 1)
        assert http_stats(root).streams == 1
        await stream.stream.aclose()
        await wait_until(lambda: http_stats(root).open_connections == 0, limit=5)
        assert http_stats(root).streams == 0
        hub = _admin(root)._hub
        assert hub is not None
        assert hub.statistics().subscribers == 0


async def test_a_slow_reader_is_bounded_resynced_then_cut_off() -> None:
    """A client that does not read: the sections keep changing, its buffer never holds more
    than stream_buffer bytes (it is dropped for a snapshot instead), and once a write cannot
    be taken within write_timeout the connection is cut."""
    buffer = 32 * 1024
    async with served(
        stream_buffer=buffer, stream_heartbeat=0.05, write_timeout=1.0, send_buffer=4096
    ) as (root, url):
        stream = await RawStream.open(url, receive_buffer=4096)  # then it never reads
        hub = _admin(root)._hub
        assert hub is not None
        round_ = 0
        with trio.fail_after(30):
            while http_stats(root).write_timeouts == 0:
                # Change the services section every poll: 40 services with fresh numbers.
                round_ += 1
                for i in range(40):
                    report(root, *calls(f"service-{i:02d}", round_ % 7 + 1, round_ % 3))
                await trio.sleep(0.02)
        assert 0 < hub.statistics().most_pending_bytes <= buffer
        assert hub.statistics().resyncs >= 1
        await wait_until(lambda: http_stats(root).open_connections == 0)
        assert hub.statistics().subscribers == 0
        stream.close()


async def test_the_tree_stops_at_once_with_streams_open_and_ends_them_cleanly() -> None:
    """Streams do not hold shutdown: the server tells them to end, and each client sees the
    end of its body (the last chunk, not a cut connection)."""
    async with served(graceful_timeout=0.5, stream_heartbeat=3600) as (root, url):
        streams = [await RawStream.open(url) for _ in range(3)]
        for stream in streams:
            await stream.until(lambda c: c.snapshots == 1)
        assert http_stats(root).streams == 3
        admin = _admin(root)
        stopping = trio.current_time()
    stopped = trio.current_time() - stopping
    final = admin.statistics()
    assert final is not None
    assert [await stream.to_end() for stream in streams] == [True] * 3
    for stream in streams:
        stream.close()
    # Each body was ended by the server (a cut one would lack its last chunk), so no stream
    # waited for the grace to run out; the liveness bound is ten times the grace.
    assert final.closed_at_stop == 0
    assert final.streams == 0
    assert stopped < 5.0, f"the tree took {stopped:.2f} s to stop"


async def test_head_on_the_stream_answers_its_headers_only() -> None:
    """HEAD gets the stream's headers and an empty body, and holds no stream."""
    async with served() as (root, url), httpx.AsyncClient(base_url=url) as http:
        response = await http.head("/api/resilience/stream")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.content == b""
        assert http_stats(root).streams == 0


async def test_the_stream_is_off_with_max_streams_zero() -> None:
    """max_streams=0 turns the stream off: 503 with a reason."""
    async with served(max_streams=0) as (_root, url), httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/api/resilience/stream")
        assert response.status_code == 503
        assert "max_streams" in response.json()["error"]["message"]


def test_stream_settings_are_checked() -> None:
    """max_streams must leave connections for the API; intervals must be positive."""
    assert AdminSettings().max_streams == 8
    assert AdminSettings(max_connections=6).max_streams == 3
    for bad in (
        {"max_streams": 64},
        {"max_streams": -1},
        {"stream_interval": 0},
        {"stream_heartbeat": float("inf")},
        {"stream_buffer": 0},
    ):
        with pytest.raises(ValueError, match="admin"):
            AdminSettings(**bad)


# ================================================================================ the page


async def test_the_page_and_its_files_are_served_from_the_package_with_a_strict_policy() -> None:
    """/dashboard, its script and its style sheet come from the package, each with the
    security headers; any other file is 404."""
    async with served() as (_root, url), httpx.AsyncClient(base_url=url) as http:
        page = await http.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.content == asset("index.html")
        for name, value in SECURITY_HEADERS.items():
            assert page.headers[name] == value
        for name in ("dashboard.js", "dashboard.css"):
            response = await http.get(f"/dashboard/{name}")
            assert response.status_code == 200
            assert response.headers["content-type"] == ASSETS[name]
            assert response.content == asset(name)
            assert response.headers["content-security-policy"].startswith("default-src 'none'")
        for missing in ("index.html", "secret.txt", "..%2fpyproject.toml"):
            assert (await http.get(f"/dashboard/{missing}")).status_code == 404


def test_the_page_names_no_external_asset() -> None:
    """No CDN, no remote font, no absolute URL: everything the page loads is relative to the
    admin API itself."""
    for name in ASSETS:
        text = asset(name).decode()
        assert not re.search(r"(?i)\b(?:https?:|wss?:)//", text), name
        assert not re.search(r"(?i)(?:src|href)\s*=\s*[\"']//", text), name
        assert "@import" not in text, name
        assert "url(" not in text, name
    html = asset("index.html").decode()
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == [
        "/dashboard/dashboard.css",
        "/dashboard/dashboard.js",
    ]
    assert "<script>" not in html  # no inline script: the policy forbids it
