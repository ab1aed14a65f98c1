"""FleetSettings: defaults, validation errors that name the field, per-provider settings."""

from __future__ import annotations

import datetime
import re

import pytest

from actors import ResilienceConfig
from actors._errors import ConfigError
from actors._policies._config._fleet import (
    FleetProviderSettings,
    FleetSettings,
    fresh_instance_id,
    store_address,
)


def test_defaults_are_valid_and_each_process_gets_a_fresh_instance_id() -> None:
    """The defaults validate; two settings objects get two instance ids."""
    a, b = FleetSettings(), FleetSettings()
    assert a.instance != b.instance
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+-\d+-[0-9a-f]{8}", a.instance)
    assert FleetProviderSettings().on_store_down == "local"
    assert a.store == "127.0.0.1:6379"


def test_durations_accept_timedeltas() -> None:
    """Durations are float seconds or timedeltas."""
    settings = FleetSettings(command_timeout=datetime.timedelta(milliseconds=250))
    assert settings.command_timeout == 0.25


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"redis_url": "http://x"}, "fleet.redis_url", "redis://"),
        ({"key_prefix": "a b"}, "fleet.key_prefix", "characters"),
        ({"instance_id": ""}, "fleet.instance_id", "characters"),
        ({"quorum_ratio": 0}, "fleet.quorum_ratio", "(0, 1]"),
        ({"min_quorum": 0}, "fleet.min_quorum", ">= 1"),
        ({"command_timeout": -1}, "fleet.command_timeout", "> 0"),
        ({"command_timeout": "fast"}, "fleet.command_timeout", "a number"),
        ({"heartbeat_interval": 2, "instance_ttl": 3}, "fleet.instance_ttl", "heartbeat"),
        ({"refresh_interval": 3, "stale_after": 3}, "fleet.stale_after", "refresh_interval"),
        ({"idempotency_max_records": 0}, "fleet.idempotency_max_records", ">= 1"),
        ({"quorum": 2}, "fleet.quorum", "unknown key"),
    ],
)
def test_bad_values_name_their_field(data: dict[str, object], path: str, words: str) -> None:
    """Every problem of the [fleet] section is one ConfigError whose path names the field and
    whose message says the rule."""
    with pytest.raises(ConfigError) as caught:
        ResilienceConfig.from_dict({"fleet": data})
    assert caught.value.path == path
    assert words in caught.value.problem


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"on_store_down": "drop"}, "providers.pay.fleet.on_store_down", "'local'"),
        ({"quota_burst": 5}, "providers.pay.fleet.quota_burst", "quota_rate"),
        ({"quota_rate": -1}, "providers.pay.fleet.quota_rate", "> 0"),
        ({"breaker": "yes"}, "providers.pay.fleet.breaker", "true or false"),
        ({"shared": True}, "providers.pay.fleet.shared", "unknown key"),
    ],
)
def test_bad_provider_values_name_their_field(
    data: dict[str, object], path: str, words: str
) -> None:
    """A provider's fleet table is validated like its other settings, errors naming the
    field."""
    with pytest.raises(ConfigError) as caught:
        ResilienceConfig.from_dict({"providers": {"pay": {"fleet": data}}})
    assert caught.value.path == path
    assert words in caught.value.problem


def test_credentials_never_appear_in_errors_or_addresses() -> None:
    """A URL's password shows neither in a validation error nor in the store address."""
    with pytest.raises(ConfigError) as caught:
        FleetSettings(redis_url="http://user:s3cret@host:1")
    assert "s3cret" not in str(caught.value)
    settings = FleetSettings(redis_url="redis://user:s3cret@cache.internal:6380/2")
    assert settings.store == "cache.internal:6380"
    assert store_address("unix:///run/redis.sock") == "/run/redis.sock"


def test_per_provider_settings_merge_over_the_defaults() -> None:
    """A provider's fleet table merges over [defaults.fleet] key by key, like its other
    settings; the [fleet] section is optional."""
    config = ResilienceConfig.from_dict(
        {
            "defaults": {"fleet": {"quota_rate": 50}},
            "providers": {"pay": {"fleet": {"on_store_down": "reject", "quota_burst": 10}}},
        }
    )
    assert config.fleet is None
    assert config.for_provider("pay").fleet == FleetProviderSettings(
        on_store_down="reject", quota_rate=50, quota_burst=10
    )
    assert config.for_provider("llm").fleet == FleetProviderSettings(quota_rate=50)


def test_the_fleet_section_loads_from_toml() -> None:
    """[fleet] in a TOML file builds FleetSettings; durations are seconds."""
    from actors import loads_config

    config = loads_config(
        'fleet = { redis_url = "redis://cache:6380/1", key_prefix = "shop", '
        'command_timeout = 0.25, instance_id = "web-1" }',
        format="toml",
    )
    assert config.fleet == FleetSettings(
        redis_url="redis://cache:6380/1",
        key_prefix="shop",
        command_timeout=0.25,
        instance_id="web-1",
    )


def test_fresh_instance_ids_are_safe_keys() -> None:
    """Generated ids pass the instance_id rule."""
    for _ in range(20):
        assert FleetSettings(instance_id=fresh_instance_id())
