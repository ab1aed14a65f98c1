"""Fixtures for tests against a real Postgres server (started by the suite when no URL is given).

Every name in ``__all__`` is imported into tests/conftest.py.

* ``postgres_url`` (session): ``AURA_TEST_POSTGRES_URL`` if set, else the URL of a server this
  suite starts (:class:`actors.testing.PostgresServer`) and stops at the end.  There is no
  skip: a missing server or driver fails the test loudly.
* ``postgres_schema`` (function): a fresh, empty schema on that server, dropped afterwards, so
  tests never see each other's tables.
* ``postgres_server`` (function): a private server for tests that stop and restart it (they
  cannot do that to a shared one): one per test module, running when each test starts.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from actors.testing import PostgresServer

__all__ = ["_postgres_server_of_module", "postgres_schema", "postgres_server", "postgres_url"]

URL_ENV = "AURA_TEST_POSTGRES_URL"
_schemas = itertools.count()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session: ``AURA_TEST_POSTGRES_URL`` or our own."""
    configured = os.environ.get(URL_ENV)
    if configured:
        yield configured
        return
    with PostgresServer() as server:
        yield server.url


def new_schema_name() -> str:
    """A schema name no other test of this run uses."""
    return f"test_{os.getpid()}_{next(_schemas)}"


def drop_schema(url: str, name: str) -> None:
    """Drop the schema ``name`` and everything in it (if it exists)."""
    import psycopg  # the `postgres` extra; a missing driver fails here, loudly

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema name (created empty), dropped with everything in it after the test."""
    import psycopg  # the `postgres` extra; a missing driver fails here, loudly

    name = new_schema_name()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{name}"')
    yield name
    drop_schema(postgres_url, name)


@pytest.fixture(scope="module")
def _postgres_server_of_module() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_server(_postgres_server_of_module: PostgresServer) -> PostgresServer:
    """A private PostgreSQL server (one per test module), running when the test starts; the
    test may stop, kill and restart it.  Use a fresh schema per test on it."""
    _postgres_server_of_module.start()
    return _postgres_server_of_module
