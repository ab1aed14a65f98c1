"""Fixtures for tests against a real Redis server (started by the suite when no URL is given).

Every name in ``__all__`` is imported into tests/conftest.py.

* ``redis_url`` (session): ``AURA_TEST_REDIS_URL`` when it is set, else the URL of a
  ``redis-server`` the suite starts itself (:class:`actors.testing.RedisServer`).  A missing
  server binary is an error, never a skip.
* ``redis_prefix``: a key prefix unique to the test, so tests sharing one server never see
  each other's keys.
* ``private_redis``: a server of the test's own (function scope), for tests that kill and
  restart it; always started by the suite, whatever ``AURA_TEST_REDIS_URL`` says.
* ``store_kind`` / ``store_clock`` / ``store_env``: the fleet contract suite's backends, the
  in-memory server under MockClock and the real server in real time (:class:`StoreEnv`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors._fleet._breaker_store import BreakerStore, MemoryBreakerStore, RedisBreakerStore
from actors._fleet._client import StoreClient, open_store_client
from actors._fleet._idempotency_store import (
    IdempotencyRecordStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from actors._fleet._memory import MemoryServer
from actors._fleet._quota import MemoryQuotaStore, QuotaStore, RedisQuotaStore
from actors._policies._config._fleet import FleetSettings
from actors.testing import RedisServer

__all__ = [
    "StoreEnv",
    "private_redis",
    "redis_prefix",
    "redis_url",
    "store_clock",
    "store_env",
    "store_kind",
]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a Redis server for the whole session (see the module docstring)."""
    configured = os.environ.get("AURA_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis server of this test's own, which the test may kill and restart."""
    with RedisServer() as server:
        yield server


# ------------------------------------------------------------------ contract-suite backends


@attrs.define
class StoreEnv:
    """One store backend for the fleet contract tests: ``"memory"`` (a MemoryServer under
    MockClock) or ``"redis"`` (the session's real server, real time)."""

    kind: str
    prefix: str
    url: str
    server: MemoryServer | None = None
    client: StoreClient | None = None

    def settings(self, instance: str = "i1", **overrides: Any) -> FleetSettings:
        """Fleet settings on this backend with short timings (overridable)."""
        values: dict[str, Any] = {
            "redis_url": self.url,
            "key_prefix": self.prefix,
            "instance_id": instance,
            "command_timeout": 2.0,
            "heartbeat_interval": 0.1,
            "instance_ttl": 1.0,
            "refresh_interval": 0.2,
            "stale_after": 1.0,
            "probe_lease": 1.0,
            "idempotency_lease": 0.6,
            "idempotency_poll": 0.1,
        }
        values.update(overrides)
        return FleetSettings(**values)

    def breaker_store(self) -> BreakerStore:
        """A breaker store on this backend."""
        if self.server is not None:
            return MemoryBreakerStore(self.server, self.prefix)
        assert self.client is not None
        return RedisBreakerStore(self.client, self.prefix)

    def idempotency_store(self, service: str = "svc") -> IdempotencyRecordStore:
        """An idempotency record store of ``service`` on this backend."""
        if self.server is not None:
            return MemoryIdempotencyStore(self.server, self.prefix, service)
        assert self.client is not None
        return RedisIdempotencyStore(self.client, self.prefix, service)

    def quota_store(self) -> QuotaStore:
        """A quota store on this backend."""
        if self.server is not None:
            return MemoryQuotaStore(self.server, self.prefix)
        assert self.client is not None
        return RedisQuotaStore(self.client, self.prefix)

    async def wait_until(
        self, predicate: Callable[[], bool], *, within: float = 10.0, what: str = "condition"
    ) -> None:
        """Poll ``predicate`` until it holds; fail the test after ``within`` seconds.

        Polling, not an Event: the condition is state another task or a server changes.
        """
        with trio.move_on_after(within):
            while not predicate():  # noqa: ASYNC110 (see the docstring)
                await trio.sleep(0.005)
            return
        raise AssertionError(f"{what} did not hold within {within:g} s")


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which backend a contract test runs on."""
    kind: str = request.param
    return kind


@pytest.fixture
def store_clock(store_kind: str) -> trio.testing.MockClock | None:
    """MockClock for the memory backend, real time (None) for Redis.  A contract test must
    take this fixture as an argument so pytest-trio runs it on this clock."""
    return trio.testing.MockClock(autojump_threshold=0) if store_kind == "memory" else None


@pytest.fixture
async def store_env(store_kind: str, redis_url: str, redis_prefix: str) -> AsyncIterator[StoreEnv]:
    """The backend of a contract test (see :class:`StoreEnv`)."""
    if store_kind == "memory":
        yield StoreEnv("memory", redis_prefix, redis_url, server=MemoryServer())
        return
    settings = FleetSettings(redis_url=redis_url, key_prefix=redis_prefix, command_timeout=2.0)
    async with open_store_client(settings) as client:
        yield StoreEnv("redis", redis_prefix, redis_url, client=client)
