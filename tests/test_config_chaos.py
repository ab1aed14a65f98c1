"""The `chaos` configuration section: off by default, merged, validated, applied by providers."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors import ErrorCategory, ProviderError, open_actor
from actors._errors import ConfigError
from actors._policies._config._schema import ProviderSettings, ResilienceConfig, loads_config
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from actors.chaos import (
    ChaosSettings,
    FaultInjector,
    LatencyInjector,
    OutcomeInjector,
    injectors_from_settings,
    wrap_provider_function,
)


def load(text: str) -> ResilienceConfig:
    return loads_config(text, format="toml", source="chaos.toml")


def test_chaos_is_off_by_default() -> None:
    """No section: no chaos; a section is inert until enabled."""
    assert ProviderSettings().chaos is None
    assert load("").for_provider("x").chaos is None
    assert ChaosSettings().enabled is False
    assert injectors_from_settings(ChaosSettings(fault_rate=1.0)) == ()


def test_a_section_loads_with_its_values() -> None:
    """A TOML section builds ChaosSettings with every field."""
    config = load(
        """
        [providers.openai.chaos]
        enabled = true
        seed = 7
        fault_rate = 0.25
        faults = ["network", "rate_limit"]
        retry_after = 3
        latency_rate = 0.5
        latency = 0.05
        latency_max = 0.5
        outcome_rate = 0.1
        outcome = {text = "(chaos)"}
        """
    )
    chaos = config.for_provider("openai").chaos
    assert chaos == ChaosSettings(
        enabled=True,
        seed=7,
        fault_rate=0.25,
        faults=frozenset({ErrorCategory.NETWORK, ErrorCategory.RATE_LIMIT}),
        retry_after=3.0,
        latency_rate=0.5,
        latency=0.05,
        latency_max=0.5,
        outcome_rate=0.1,
        outcome={"text": "(chaos)"},
    )
    assert config.for_provider("other").chaos is None


def test_defaults_merge_key_by_key() -> None:
    """[defaults.chaos] applies to every provider; an override changes only what it names."""
    config = load(
        """
        [defaults.chaos]
        enabled = true
        fault_rate = 0.1
        [providers.ollama.chaos]
        enabled = false
        """
    )
    assert config.for_provider("openai").chaos == ChaosSettings(enabled=True, fault_rate=0.1)
    assert config.for_provider("ollama").chaos == ChaosSettings(enabled=False, fault_rate=0.1)


def test_round_trip_through_to_dict() -> None:
    """to_dict() then from_dict() gives the same configuration, chaos included."""
    config = load(
        """
        [defaults.chaos]
        enabled = true
        fault_rate = 0.1
        faults = ["timeout"]
        outcome = [1, 2]
        """
    )
    assert ResilienceConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("text", "path", "match"),
    [
        ("fault_rate = 1.5", "defaults.chaos.fault_rate", "between 0 and 1"),
        ("latency_rate = -0.1", "defaults.chaos.latency_rate", "between 0 and 1"),
        ('enabled = "yes"', "defaults.chaos.enabled", "true or false"),
        ('faults = ["netwerk"]', "defaults.chaos.faults[0]", "unknown name"),
        ("latency = -1", "defaults.chaos.latency", ">= 0"),
        ("latency = 2\nlatency_max = 1", "defaults.chaos.latency_max", ">= latency"),
        ("fault_rat = 0.1", "defaults.chaos.fault_rat", "did you mean `fault_rate`"),
        ("seed = 1.5", "defaults.chaos.seed", "integer"),
        ("fault_rate = 0.1\nfaults = []", "defaults.chaos.faults", "at least one"),
    ],
)
def test_errors_name_the_field(text: str, path: str, match: str) -> None:
    """Every invalid value is a ConfigError whose path names the field."""
    with pytest.raises(ConfigError, match=match) as info:
        load(f"[defaults.chaos]\n{text}\n")
    assert info.value.path == path
    assert info.value.source == "chaos.toml"


def test_a_section_of_the_wrong_type_is_refused() -> None:
    """`chaos` must be a table (or ChaosSettings in code)."""
    with pytest.raises(ConfigError) as info:
        load("[defaults]\nchaos = 3\n")
    assert info.value.path == "defaults.chaos"
    with pytest.raises(ConfigError, match="ChaosSettings") as code:
        ProviderSettings(chaos={"enabled": True})  # type: ignore[arg-type]
    assert code.value.path == "chaos"


def test_code_accepts_timedeltas() -> None:
    """Durations accept timedelta in code and are stored as float seconds."""
    settings = ChaosSettings(latency=datetime.timedelta(milliseconds=250))
    assert settings.latency == 0.25


def test_injectors_from_settings_build_latency_fault_outcome_in_order() -> None:
    """Enabled settings build one injector per non-zero rate, in a fixed order."""
    chain = injectors_from_settings(
        ChaosSettings(enabled=True, fault_rate=0.1, latency_rate=0.2, outcome_rate=0.3), "svc"
    )
    assert [type(i) for i in chain] == [LatencyInjector, FaultInjector, OutcomeInjector]
    assert [i.rate for i in chain] == [0.2, 0.1, 0.3]
    only = injectors_from_settings(ChaosSettings(enabled=True, fault_rate=0.1))
    assert [type(i) for i in only] == [FaultInjector]


@given(seed=st.integers(0, 2**31), name=st.sampled_from(["a", "b"]))
def test_a_seed_makes_providers_replayable(seed: int, name: str) -> None:
    """The same seed and provider name give the same decisions; another name differs."""
    settings = ChaosSettings(enabled=True, seed=seed, fault_rate=0.5)
    first = injectors_from_settings(settings, name)[0]
    again = injectors_from_settings(settings, name)[0]
    assert [first.decide() for _ in range(64)] == [again.decide() for _ in range(64)]


def test_wrap_provider_function_is_identity_when_off() -> None:
    """Without enabled chaos the service function is returned unchanged."""

    async def fn(payload: Any) -> Any:
        return payload

    assert wrap_provider_function(fn, None) is fn
    assert wrap_provider_function(fn, ChaosSettings(fault_rate=1.0)) is fn
    assert wrap_provider_function(fn, ChaosSettings(enabled=True)) is fn


async def test_a_provider_applies_its_chaos_section(mock_clock: trio.testing.MockClock) -> None:
    """A provider with an enabled section injects faults and latency around its function."""
    served: list[Any] = []

    async def service(payload: Any) -> Any:
        served.append(payload)
        return payload

    settings = ProviderSettings(
        retry=RetrySettings(max_attempts=1),
        chaos=ChaosSettings(
            enabled=True,
            seed=1,
            fault_rate=1.0,
            faults=["validation"],
            latency_rate=1.0,
            latency=2.0,
        ),
    )
    async with open_actor(lambda: ProviderActor("svc", service, settings)) as ref:
        start = trio.current_time()
        with pytest.raises(ProviderError) as info:
            await Provider[Any, Any](ref).call("x")
        assert info.value.category is ErrorCategory.VALIDATION
        assert trio.current_time() - start == pytest.approx(2.0)
    assert served == []


async def test_a_disabled_section_changes_nothing(mock_clock: trio.testing.MockClock) -> None:
    """enabled = false: calls reach the service untouched."""

    async def service(payload: Any) -> Any:
        return ("ok", payload)

    settings = ProviderSettings(chaos=ChaosSettings(enabled=False, fault_rate=1.0))
    async with open_actor(lambda: ProviderActor("svc", service, settings)) as ref:
        assert await Provider[Any, Any](ref).call(1) == ("ok", 1)
