"""A provider actor over real HTTP on loopback (httpx client, a local misbehaving server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from actors import (
    BackoffSettings,
    ErrorCategory,
    Provider,
    ProviderActor,
    ProviderError,
    ProviderSettings,
    RetriesExhausted,
    RetrySettings,
    open_actor,
)

# httpx is in the test extra: a missing install fails here instead of skipping.
from examples.http_provider import FlakyHTTPServer, http_service


def settings(attempts: int = 3, attempt_timeout: float = 2.0) -> ProviderSettings:
    return ProviderSettings(
        retry=RetrySettings(
            max_attempts=attempts,
            attempt_timeout=attempt_timeout,
            total_timeout=20.0,
            backoff=BackoffSettings(kind="constant", base_delay=0.05, jitter="none"),
        )
    )


@asynccontextmanager
async def served(
    *script: str, config: ProviderSettings | None = None
) -> AsyncIterator[tuple[FlakyHTTPServer, Provider[str, Any]]]:
    server = FlakyHTTPServer()
    server.script.extend(script)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        fn = http_service(f"http://127.0.0.1:{port}")
        async with open_actor(lambda: ProviderActor("http", fn, config or settings())) as ref:
            yield server, Provider(ref)
        nursery.cancel_scope.cancel()


async def test_ok() -> None:
    """A 200 answer is the call's reply (decoded JSON)."""
    async with served("ok") as (server, p):
        assert await p.call("/render?frame=1") == {"rendered": "/render?frame=1"}
        assert len(server.requests) == 1


async def test_429_retry_after_is_honoured() -> None:
    """A 429 is retried no sooner than its Retry-After says, then succeeds."""
    async with served("429", "ok") as (server, p):
        server.retry_after = 1
        assert await p.call("/a") == {"rendered": "/a"}
        (first, _, what1), (second, _, what2) = server.requests
        assert (what1, what2) == ("429", "ok")
        assert second - first >= 1.0  # waited for Retry-After, not the 50 ms backoff


async def test_5xx_retried_then_exhausted() -> None:
    """503s are retried up to max_attempts; the last error says DEPENDENCY and HTTP 503."""
    async with served("503", "503", "503") as (server, p):
        with pytest.raises(RetriesExhausted) as info:
            await p.call("/b")
        assert info.value.attempts == 3
        assert info.value.category is ErrorCategory.DEPENDENCY
        last = info.value.last_error
        assert isinstance(last, ProviderError)
        assert last.status_code == 503
        assert len(server.requests) == 3


async def test_slow_answer_times_out_and_is_retried() -> None:
    """An answer slower than the attempt timeout is abandoned and the call retried."""
    async with served("slow", "ok", config=settings(attempt_timeout=0.3)) as (server, p):
        server.slow_for = 5.0
        assert await p.call("/c") == {"rendered": "/c"}
        assert [what for _, _, what in server.requests] == ["slow", "ok"]
        assert (await p.status()).retries == 1


async def test_dropped_connection_is_a_network_error_and_retried() -> None:
    """A connection closed without a response is a NETWORK failure; the retry succeeds."""
    async with served("drop", "ok") as (server, p):
        assert await p.call("/d") == {"rendered": "/d"}
        assert [what for _, _, what in server.requests] == ["drop", "ok"]


async def test_refused_connection() -> None:
    """Nothing listening: connection refused, classified NETWORK, retried, then exhausted."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    fn = http_service(f"http://127.0.0.1:{port}")
    async with open_actor(lambda: ProviderActor("http", fn, settings(attempts=2))) as ref:
        with pytest.raises(RetriesExhausted) as info:
            await Provider(ref).call("/e")
        assert info.value.category is ErrorCategory.NETWORK
        assert info.value.attempts == 2
