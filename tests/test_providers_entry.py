"""The one-line entry point: ``@resilient(name)`` functions in ``async with open_providers()``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    CircuitOpen,
    ConfigWarning,
    GetHealth,
    IdempotencyConflict,
    ProviderError,
    ResilienceConfig,
    loads_config,
)
from supervisors import Providers, open_providers, resilient

CALLS: list[str] = []


@resilient("openai")
async def complete(prompt: str, *, temperature: float = 0.0) -> str:
    """Completes a prompt."""
    CALLS.append(prompt)
    return f"completion of {prompt!r} at {temperature}"


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()


async def test_a_decorated_function_runs_through_its_provider(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The call runs the function and returns its result; the provider and the monitor of the
    block counted it; the decorated function keeps its name and docstring."""
    assert complete.__name__ == "complete"
    assert complete.__doc__ == "Completes a prompt."
    assert complete.provider == "openai"
    async with open_providers() as providers:
        assert await complete("hi", temperature=0.5) == "completion of 'hi' at 0.5"
        client = await providers.get("openai")
        status = await client.status()
        assert (status.calls, status.succeeded, status.attempts) == (1, 1, 1)
        await trio.sleep(1)  # the provider's reports reach the monitor
        health = await providers.root.ref("monitor").ask(GetHealth())
        assert "openai" in health.services
        assert providers.names == ["openai", "anthropic", "ollama"]
    assert CALLS == ["hi"]


async def test_transient_failures_are_retried_with_the_configured_policy(
    mock_clock: trio.testing.MockClock,
) -> None:
    """openai's built-in policy: 4 attempts; two network errors then a success."""
    failures = [ConnectionError("reset"), ConnectionError("reset")]

    @resilient("openai")
    async def flaky(prompt: str) -> str:
        if failures:
            raise failures.pop()
        return prompt

    async with open_providers() as providers:
        assert await flaky("x") == "x"
        status = await (await providers.get("openai")).status()
        assert (status.attempts, status.retries) == (3, 2)


async def test_a_call_that_keeps_failing_gets_a_typed_error_then_the_breaker_opens(
    mock_clock: trio.testing.MockClock,
) -> None:
    @resilient("down")
    async def down() -> str:
        raise ConnectionError("refused")

    config = loads_config(
        "[providers.down]\nretry.max_attempts = 1\nbreaker.failure_threshold = 2\n", format="toml"
    )
    async with open_providers(config):
        for _ in range(2):
            with pytest.raises(ProviderError, match="network error"):
                await down()
        with pytest.raises(CircuitOpen):
            await down()


async def test_outside_open_providers_the_error_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"inside `async with open_providers\(\.\.\.\)`"):
        await complete("hi")


async def test_a_provider_not_in_the_configuration_starts_once_at_its_first_calls(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """25 callers race the first call to an unconfigured provider: one provider starts, with
    the defaults, and every caller is answered."""
    caplog.set_level(logging.INFO, logger="supervisors.providers")

    @resilient("render")
    async def render(frame: int) -> int:
        await trio.sleep(0.1)
        return frame * 2

    results: list[int] = []
    async with open_providers() as providers:

        async def one(i: int) -> None:
            results.append(await render(i))

        async with trio.open_nursery() as nursery:
            for i in range(25):
                nursery.start_soon(one, i)
        assert providers.names.count("render") == 1
        settings = (await providers.get("render")).ref
        assert settings.path == "providers/render"
    assert sorted(results) == [2 * i for i in range(25)]
    started = [r for r in caplog.records if "starting provider 'render'" in r.getMessage()]
    assert len(started) == 1


async def test_a_provider_one_letter_from_a_section_gets_a_warning(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``[providers.opneai]`` configured, ``@resilient("openai")`` called: the defaults are used,
    with a ConfigWarning naming the section that was probably meant."""
    config = loads_config("[providers.opneai]\nretry.max_attempts = 7\n", format="toml")
    async with open_providers(config):
        with pytest.warns(ConfigWarning, match=r"did you mean \[providers\.opneai\]"):
            assert await complete("x") == "completion of 'x' at 0.0"


async def test_a_key_runs_the_call_once_and_other_arguments_conflict(
    mock_clock: trio.testing.MockClock,
) -> None:
    runs: list[str] = []

    @resilient("payments", key=lambda order, amount: f"charge-{order}")
    async def charge(order: str, amount: int) -> str:
        runs.append(order)
        return f"charged {amount}"

    async with open_providers():
        assert await charge("o1", 5) == "charged 5"
        assert await charge("o1", 5) == "charged 5"
        with pytest.raises(IdempotencyConflict):
            await charge("o1", 6)
    assert runs == ["o1"]


async def test_a_fallback_answers_a_call_that_failed_for_good(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The fallback (itself resilient, through its own provider) answers; a validation error
    (the request is wrong) is not handed to it."""

    @resilient("ollama")
    async def local(prompt: str) -> str:
        return f"local {prompt}"

    @resilient("openai", fallback=local)
    async def remote(prompt: str) -> str:
        if prompt == "bad":
            raise ProviderError("400", service="openai", category=_validation())
        raise ConnectionError("down")

    async with open_providers() as providers:
        assert await remote("hi") == "local hi"
        with pytest.raises(ProviderError):
            await remote("bad")
        ollama = await (await providers.get("ollama")).status()
        assert ollama.succeeded == 1


def _validation() -> Any:
    from actors import ErrorCategory

    return ErrorCategory.VALIDATION


async def test_open_providers_takes_a_file(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text("[providers.search]\nretry.max_attempts = 2\n")
    async with open_providers(path) as providers:
        assert providers.names == ["search"]
        assert providers.config.for_provider("search").retry.max_attempts == 2


async def test_functions_called_from_tasks_started_in_the_block_find_the_providers(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_providers(ResilienceConfig()), trio.open_nursery() as nursery:
        nursery.start_soon(complete, "from a task")
    assert CALLS == ["from a task"]


async def test_the_handle_is_usable_only_in_its_block(mock_clock: trio.testing.MockClock) -> None:
    async with open_providers() as providers:
        assert isinstance(providers, Providers)
    with pytest.raises(RuntimeError, match="not running"):
        providers.root  # noqa: B018
