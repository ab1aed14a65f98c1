"""The admin API under adversarial clients: every resource stays bounded, shutdown stays prompt.

These tests talk to a real server over loopback with raw sockets, so they run on real time.
They never assert how fast something is: they assert what is bounded (connections, bytes being
written, file descriptors), that the event loop is never blocked for long (the longest single
task step, measured by a trio Instrument, against a generous bound), that health is answered
*while* an attack is in progress, and that shutdown does not wait for clients (a liveness
bound many times the configured grace).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import h2.config
import h2.connection
import h2.settings
import httpx
import pytest
import trio

from supervisors import Supervisor, open_supervisor
from supervisors._operator._admin._actor import AdminActor, GetAdminAddress
from supervisors._operator._http import HttpLimits, HttpStatistics
from tests.test_admin_api import _tree, calls, report

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc/self/fd"
)

#: The longest a single task step may block the event loop (a generous bound: normal steps
#: take microseconds to a few milliseconds; a backtracking regex took seconds).
MAX_STEP = 1.0

FAST = {
    "max_connections": 16,
    "request_timeout": 1.0,
    "write_timeout": 1.0,
    "keep_alive": 1.0,
    "graceful_timeout": 0.5,
}

#: The limits of the attack test: a write timeout far longer than the test, so a slow reader's
#: response stays stuck until the test lets it go (the write timeout has a test of its own), and
#: a tiny kernel send buffer, so a slow reader's first response already blocks.
ATTACK: dict[str, Any] = {**FAST, "write_timeout": 60.0, "send_buffer": 4096}


class LongestStep(trio.abc.Instrument):
    """Measures the longest single step of any task: how long the loop was ever blocked."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started: float | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is not None:  # the step that added the instrument had no start
            self.longest = max(self.longest, time.perf_counter() - self._started)
        self._started = None


@contextmanager
def longest_step() -> Iterator[LongestStep]:
    instrument = LongestStep()
    trio.lowlevel.add_instrument(instrument)
    try:
        yield instrument
    finally:
        trio.lowlevel.remove_instrument(instrument)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _admin(root: Supervisor) -> AdminActor:
    actor = root._tree.cells["admin"].incarnation.actor  # type: ignore[union-attr]
    assert isinstance(actor, AdminActor)
    return actor


def stats(root: Supervisor) -> HttpStatistics:
    found = _admin(root).statistics()
    assert found is not None
    return found


@asynccontextmanager
async def served(**admin: Any) -> AsyncIterator[tuple[Supervisor, str, int]]:
    """A tree with the admin API on loopback; yields the root, the host and the port."""
    spec, holder = _tree(**admin)
    async with open_supervisor(spec) as root:
        holder["root"] = root
        address = await root.ref("admin").ask(GetAdminAddress())
        yield root, address.host, address.port
        holder["gate"].set()


async def connect(host: str, port: int, *, receive_buffer: int | None = None) -> trio.SocketStream:
    """A raw TCP connection (a small receive buffer makes a reader that reads nothing slow)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect((host, port))
    return trio.SocketStream(sock)


def get(path: str, *, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


async def read_all(stream: trio.SocketStream, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes (fails if it does not close in time)."""
    data = bytearray()
    with trio.fail_after(limit):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return bytes(data)


def h2_zero_window_streams(streams: int, path: str) -> bytes:
    """An HTTP/2 client's opening: a zero initial window, then `streams` GETs of `path`."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for _ in range(streams):
        stream_id = conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http")]
        conn.send_headers(stream_id, [*headers, (":authority", "127.0.0.1")], end_stream=True)
    return conn.data_to_send()


def populate(root: Supervisor, services: int) -> None:
    for i in range(services):
        report(root, *calls(f"service-{i:03d}", 3, 2))


async def wait_until(predicate: Any, limit: float = 10.0) -> None:
    """Poll the server's counters (another component's state: no event to wait on)."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


# ================================================================================ one attack


async def test_health_stays_served_memory_bounded_and_shutdown_prompt_under_attack() -> None:
    """The ReDoS request, slow readers, HTTP/2 zero-window streams and slowloris at once:
    /health is answered while they are in progress, the loop is never blocked, connections and
    bytes in flight stay bounded, every descriptor comes back, and the tree stops promptly."""
    baseline_fds = open_fds()
    with longest_step() as loop:
        async with served(**ATTACK) as (root, host, port):
            populate(root, 60)
            await trio.sleep(0.2)
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                size = len((await client.get("/metrics")).content)
            # A slow reader's response is larger than its connection's kernel buffers (the
            # server's send buffer is tiny here), so its first write blocks, and stays blocked
            # until the client goes (the write timeout is far longer than the test).  The
            # three of them hold about 3 * size bytes; nothing else holds more than a few KiB.
            assert size > 16 * ATTACK["send_buffer"]
            stuck = 5 * size // 2
            peak = {"connections": 0, "writing": 0}
            attackers: list[trio.SocketStream] = []
            slow_readers: list[trio.SocketStream] = []
            answers: dict[str, Any] = {}

            async def sample() -> None:
                while True:
                    now = stats(root)
                    peak["connections"] = max(peak["connections"], now.open_connections)
                    peak["writing"] = max(peak["writing"], now.writing_bytes)
                    await trio.sleep(0.005)

            async def redos() -> None:
                async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                    window = "1" * 1600 + " " * 1600 + "x"
                    response = await client.get(
                        "/api/resilience/metrics/service-001/error-rate", params={"window": window}
                    )
                    answers["redos"] = response.status_code

            async def slow_reader() -> None:
                stream = await connect(host, port, receive_buffer=4096)
                slow_readers.append(stream)
                await stream.send_all(get("/metrics") * 40)  # then never read

            async def h2_attack() -> None:
                stream = await connect(host, port)
                attackers.append(stream)
                await stream.send_all(h2_zero_window_streams(100, "/metrics"))
                answers["h2"] = await read_all(stream)

            async def slowloris() -> None:
                stream = await connect(host, port)
                attackers.append(stream)
                await stream.send_all(b"GET /api/resilience/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                try:
                    for _ in range(100):  # one more header byte now and then, never the end
                        await trio.sleep(0.05)
                        await stream.send_all(b"X")
                except trio.BrokenResourceError:
                    pass  # the server cut it off (read_timeouts counts it)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                nursery.start_soon(redos)
                for _ in range(3):
                    nursery.start_soon(slow_reader)
                nursery.start_soon(h2_attack)
                for _ in range(3):
                    nursery.start_soon(slowloris)
                # While the attack is in progress (the three slow readers' responses stuck in
                # their connections), health is answered, again and again.
                await wait_until(lambda: stats(root).writing_bytes >= stuck)
                async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                    for _ in range(10):
                        health = await client.get("/api/resilience/health")
                        assert health.status_code == 200
                        assert stats(root).writing_bytes >= stuck  # still under attack
                # The slow readers go; the deadlines end every other attacking connection;
                # the server lets go of them all.
                for stream in slow_readers:
                    stream.socket.close()
                await wait_until(lambda: stats(root).open_connections == 0)
                nursery.cancel_scope.cancel()
            final = stats(root)
            for stream in attackers:
                stream.socket.close()
            assert answers["redos"] == 400
            assert answers["h2"].startswith(b"HTTP/1.1 505 ")
            assert b"HTTP/2" not in answers["h2"]
            assert peak["connections"] <= ATTACK["max_connections"]
            # At most one response of each slow reader is held at a time.
            assert 0 < peak["writing"] <= 3 * 2 * 1024 * 1024
            assert final.read_timeouts >= 3
            assert final.writing_bytes == 0
            assert open_fds() <= baseline_fds + 2  # the tree's own sockets, nothing per client

            # Slow readers again, still connected when the tree stops: it does not wait for
            # them (their write timeout is far away; the grace is 0.5 s).
            slow_readers.clear()
            for _ in range(3):
                await slow_reader()
            await wait_until(lambda: stats(root).writing_bytes >= stuck)
            stopping = trio.current_time()
        stopped = trio.current_time() - stopping
        for stream in slow_readers:
            stream.socket.close()
    assert loop.longest < MAX_STEP, f"the event loop was blocked for {loop.longest:.2f} s"
    # Grace 0.5 s; a liveness bound ten times it (a server that waits for its clients to read
    # does not stop while they do not).
    assert stopped < 5.0, f"the tree took {stopped:.1f} s to stop"
    assert open_fds() <= baseline_fds


# ================================================================================ each bound


async def test_connections_past_the_limit_get_503_at_once() -> None:
    """Past max_connections a new connection is answered 503 and closed; the others live."""
    async with served(**FAST) as (root, host, port):
        idle = [await connect(host, port) for _ in range(FAST["max_connections"])]
        await wait_until(lambda: stats(root).open_connections == FAST["max_connections"])
        extra = await connect(host, port)
        await extra.send_all(get("/api/resilience/health"))
        answer = await read_all(extra, limit=5.0)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b'"too_many_connections"' in answer
        assert stats(root).refused >= 1
        assert stats(root).open_connections == FAST["max_connections"]
        for stream in idle:
            stream.socket.close()
        extra.socket.close()
        await wait_until(lambda: stats(root).open_connections == 0)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            assert (await client.get("/api/resilience/health")).status_code == 200


async def test_a_request_that_never_ends_is_cut_after_the_request_timeout() -> None:
    """A slowloris client (a head that never ends) is disconnected after request_timeout."""
    async with served(**FAST) as (root, host, port):
        stream = await connect(host, port)
        await stream.send_all(b"GET /api/resilience/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = trio.current_time()
        assert await read_all(stream) == b""  # closed without an answer
        assert trio.current_time() - started >= FAST["request_timeout"] * 0.9
        assert stats(root).read_timeouts == 1
        stream.socket.close()


async def test_a_reader_that_never_reads_is_cut_after_the_write_timeout() -> None:
    """A response not read within write_timeout is abandoned and the connection closed."""
    async with served(**FAST) as (root, host, port):
        populate(root, 60)
        stream = await connect(host, port, receive_buffer=4096)
        await stream.send_all(get("/metrics") * 40)
        await wait_until(lambda: stats(root).write_timeouts == 1)
        await wait_until(lambda: stats(root).open_connections == 0)
        assert stats(root).writing_bytes == 0
        stream.socket.close()


@pytest.mark.parametrize("streams", [1, 100])
async def test_http2_is_refused(streams: int) -> None:
    """An HTTP/2 connection (prior knowledge, zero window) gets an HTTP/1.1 505 and is closed."""
    async with served(**FAST) as (root, host, port):
        stream = await connect(host, port)
        await stream.send_all(h2_zero_window_streams(streams, "/metrics"))
        answer = await read_all(stream)
        assert answer.startswith(b"HTTP/1.1 505 ")
        assert b'"http_version"' in answer
        stream.socket.close()
        await wait_until(lambda: stats(root).open_connections == 0)
        assert stats(root).requests == 0


async def test_an_h2c_upgrade_is_answered_in_http11() -> None:
    """`Upgrade: h2c` is ignored: the request is answered over HTTP/1.1, never 101."""
    async with served(**FAST) as (_root, host, port):
        stream = await connect(host, port)
        await stream.send_all(
            b"GET /api/resilience/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        answer = await read_all(stream)
        assert answer.startswith(b"HTTP/1.1 200 ")
        stream.socket.close()


async def test_closed_connections_give_their_descriptors_back_at_once() -> None:
    """Connections the clients close are closed by the server while the tree runs on."""
    async with served(**FAST) as (root, host, port):
        baseline = open_fds()
        for _ in range(30):
            stream = await connect(host, port)
            await stream.send_all(get("/api/resilience/health"))
            await stream.receive_some(1)
            stream.socket.close()
        await wait_until(lambda: stats(root).open_connections == 0)
        assert open_fds() <= baseline
        assert stats(root).accepted == 30


async def test_pipelined_and_keep_alive_requests_are_answered_in_order() -> None:
    """Several requests on one connection are answered in order; `close` ends it."""
    async with served(**FAST) as (_root, host, port):
        stream = await connect(host, port)
        await stream.send_all(
            get("/api/resilience") + get("/nowhere") + get("/api/resilience/health", close=True)
        )
        answer = await read_all(stream)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200", b"404", b"200"]
        stream.socket.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET http://127.0.0.1/api/resilience HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"400"),
        (
            b"POST /api/resilience/metrics/a/reset HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 99999999\r\n\r\n",
            b"413",
        ),
    ],
)
async def test_malformed_or_oversized_requests_are_refused(
    request_bytes: bytes, status: bytes
) -> None:
    """A head too large, a malformed request, an absolute target or a huge declared body:
    a JSON 4xx, then the connection is closed."""
    async with served(**FAST) as (root, host, port):
        stream = await connect(host, port)
        await stream.send_all(request_bytes)
        answer = await read_all(stream)
        assert answer.split(b" ", 2)[1] == status, answer[:200]
        assert b'{"error":' in answer
        stream.socket.close()
        await wait_until(lambda: stats(root).open_connections == 0)


def test_limits_reject_bad_values() -> None:
    """Every limit must be positive."""
    for name in ("max_connections", "max_body", "request_timeout", "write_timeout"):
        with pytest.raises(ValueError, match=name):
            HttpLimits(**{name: 0})


def test_the_server_needs_the_admin_extra_only_when_it_is_asked_for() -> None:
    """`import supervisors` works without the admin extra (h11, starlette, prometheus-client);
    asking for the admin API without it fails at once, naming the extra to install."""
    blocked = ["h11", "starlette", "prometheus_client", "httpx", "rich"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # an import of it raises ImportError\n"
        "import supervisors\n"
        "from supervisors import admin_spec\n"
        "try:\n"
        "    admin_spec(port=0)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'aura-actors[admin]'" in result.stdout
