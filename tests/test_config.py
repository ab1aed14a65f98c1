"""Configuration: the seed example, merging, formats, and errors that name the field."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import ConfigError, ErrorCategory
from actors._policies._backoff import BackoffKind, Jitter
from actors._policies._budget import BudgetSettings
from actors._policies._config._schema import (
    ProviderSettings,
    ResilienceConfig,
    _merge,
    load_config,
    loads_config,
)
from actors._policies._idempotency import IdempotencySettings
from actors._policies._ratelimit import RateLimiterSettings
from actors._policies._retry import RETRY_PRESETS, RetrySettings
from tests.strategies_retry import budget_settings, retry_settings

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_toml(text: str) -> ResilienceConfig:
    return loads_config(text, format="toml", source="test.toml")


# --------------------------------------------------------------------------- the seed example


@pytest.mark.parametrize("name", ["resilience.toml", "resilience.json"])
def test_the_example_files_reproduce_the_seed(name: str) -> None:
    """examples/resilience.{toml,json} load to ResilienceConfig.default()."""
    assert load_config(EXAMPLES / name) == ResilienceConfig.default()


def test_the_seed_has_the_seed_values() -> None:
    """Breaker 5 / 0.5 / 30 s / 5 min, 10 s attempts, monitor 60 s / 10 / 0.5, 24 h / 10,000."""
    config = ResilienceConfig.default()
    breaker = config.defaults.breaker
    assert (breaker.failure_threshold, breaker.failure_ratio) == (5, 0.5)
    assert (breaker.break_duration, breaker.window) == (30.0, 300.0)
    assert config.defaults.retry.attempt_timeout == 10.0
    monitoring = config.monitoring
    assert (monitoring.check_interval, monitoring.high_error_rate) == (60.0, 10.0)
    assert monitoring.critical_error_ratio == 0.5
    assert config.idempotency == IdempotencySettings(ttl=86400, max_records=10_000)
    for name in ("openai", "anthropic", "ollama"):
        assert config.for_provider(name).retry == RETRY_PRESETS[name]
    assert config.for_provider("some-other").retry == RETRY_PRESETS["default"]


def test_an_empty_document_is_the_built_in_defaults() -> None:
    """Every section is optional: an empty file is ResilienceConfig()."""
    assert load_toml("") == ResilienceConfig()


# ------------------------------------------------------------------------------------ merging


def test_provider_overrides_merge_key_by_key_over_defaults() -> None:
    """An override changes only what it names; the rest comes from [defaults], not the schema."""
    config = load_toml(
        """
        [defaults.retry]
        max_attempts = 5
        attempt_timeout = 3
        [defaults.retry.backoff]
        base_delay = 0.5
        max_delay = 8
        [providers.openai.retry.backoff]
        base_delay = 2
        """
    )
    openai = config.for_provider("openai").retry
    assert (openai.max_attempts, openai.attempt_timeout) == (5, 3.0)
    assert (openai.backoff.base_delay, openai.backoff.max_delay) == (2.0, 8.0)
    assert config.for_provider("other").retry.backoff.base_delay == 0.5


def test_arrays_replace_instead_of_merging() -> None:
    """retry_on in an override replaces the default list."""
    config = load_toml(
        """
        [defaults.retry]
        retry_on = ["timeout", "network"]
        [providers.p.retry]
        retry_on = ["rate_limit"]
        """
    )
    assert config.for_provider("p").retry.retry_on == {ErrorCategory.RATE_LIMIT}
    assert config.defaults.retry.retry_on == {ErrorCategory.TIMEOUT, ErrorCategory.NETWORK}


def test_top_level_idempotency_is_the_base_of_every_provider_table() -> None:
    """[idempotency] reaches defaults and providers unless they override it."""
    config = load_toml(
        """
        [idempotency]
        ttl = 3600
        max_records = 50
        [providers.a.idempotency]
        max_records = 7
        """
    )
    assert config.idempotency == IdempotencySettings(ttl=3600, max_records=50)
    assert config.defaults.idempotency == IdempotencySettings(ttl=3600, max_records=50)
    assert config.for_provider("a").idempotency == IdempotencySettings(ttl=3600, max_records=7)


def test_optional_sections_fallback_and_hedging() -> None:
    """rate_limit, fallback and hedging_delay are off by default and settable per provider."""
    config = load_toml(
        """
        [defaults]
        fallback = "ollama"
        [providers.openai]
        hedging_delay = 1.5
        rate_limit = { rate = 0.5, burst = 3 }
        """
    )
    openai = config.for_provider("openai")
    assert openai.rate_limit == RateLimiterSettings(rate=0.5, burst=3)
    assert (openai.fallback, openai.hedging_delay) == ("ollama", 1.5)
    assert config.for_provider("ollama").fallback is None  # never itself
    assert config.defaults.rate_limit is None


def test_json_null_unsets_an_optional_default() -> None:
    """In JSON a provider can turn off a rate limit set in defaults."""
    config = loads_config(
        b'{"defaults": {"rate_limit": {"rate": 5}}, "providers": {"p": {"rate_limit": null}}}',
        format="json",
    )
    assert config.defaults.rate_limit == RateLimiterSettings(rate=5)
    assert config.for_provider("p").rate_limit is None


def test_from_dict_accepts_timedelta_durations() -> None:
    """In code, durations may be timedeltas, also inside from_dict()."""
    config = ResilienceConfig.from_dict(
        {
            "defaults": {
                "breaker": {"break_duration": datetime.timedelta(minutes=1)},
                "retry": {"attempt_timeout": datetime.timedelta(seconds=4)},
            },
            "idempotency": {"ttl": datetime.timedelta(hours=2)},
        }
    )
    assert config.defaults.breaker.break_duration == 60.0
    assert config.defaults.retry.attempt_timeout == 4.0
    assert config.idempotency.ttl == 7200.0
    assert ProviderSettings(hedging_delay=datetime.timedelta(seconds=2)).hedging_delay == 2.0


def test_an_explicit_format_overrides_the_extension(tmp_path: Path) -> None:
    """format= reads a file whatever its name."""
    path = tmp_path / "settings.conf"
    path.write_text("[defaults.bulkhead]\nmax_concurrent = 3\n")
    assert load_config(path, format="toml").defaults.bulkhead.max_concurrent == 3


@given(
    defaults_retry=retry_settings(),
    provider_retry=retry_settings(),
    budget=budget_settings(),
)
def test_to_dict_and_from_dict_round_trip(
    defaults_retry: RetrySettings, provider_retry: RetrySettings, budget: BudgetSettings
) -> None:
    """from_dict(config.to_dict()) == config, and the dict is valid JSON that loads back."""
    defaults = ProviderSettings(retry=defaults_retry, budget=budget)
    config = ResilienceConfig(
        defaults=defaults,
        providers={"p": msgspec.structs.replace(defaults, retry=provider_retry)},
    )
    document = config.to_dict()
    assert ResilienceConfig.from_dict(document) == config
    assert loads_config(msgspec.json.encode(document), format="json") == config


@given(
    base=st.dictionaries(
        st.sampled_from("abcd"),
        st.integers() | st.dictionaries(st.sampled_from("xyz"), st.integers(), max_size=3),
        max_size=4,
    ),
    override=st.dictionaries(
        st.sampled_from("abcd"),
        st.integers() | st.dictionaries(st.sampled_from("xyz"), st.integers(), max_size=3),
        max_size=4,
    ),
)
def test_merge_takes_every_override_and_keeps_everything_else(
    base: dict[str, Any], override: dict[str, Any]
) -> None:
    """_merge: an override's scalars win, tables merge, keys it does not name are kept."""
    merged = _merge(base, override)
    assert set(merged) == set(base) | set(override)
    for key, value in merged.items():
        if key not in override:
            assert value == base[key]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            assert value == {**base[key], **override[key]}
        else:
            assert value == override[key]


# ------------------------------------------------------------------------------------- errors

BAD_DOCUMENTS = [
    pytest.param(
        '[providers.openai.retry]\nmax_attempts = "four"',
        "providers.openai.retry.max_attempts",
        "wrong type: expected an integer, got a string",
        id="wrong-type",
    ),
    pytest.param(
        "[defaults.bulkhead]\nmax_concurrent = true",
        "defaults.bulkhead.max_concurrent",
        "expected an integer, got true or false",
        id="bool-for-integer",
    ),
    pytest.param(
        "[defaults.retry]\nattempt_timeout = -1",
        "defaults.retry.attempt_timeout",
        "must be a duration > 0 seconds, got -1",
        id="negative-duration",
    ),
    pytest.param(
        "[providers.p.budget]\nttl = -10",
        "providers.p.budget.ttl",
        "must be a duration > 0",
        id="negative-ttl",
    ),
    pytest.param(
        "[defaults.breaker]\nfailure_ratio = 1.5",
        "defaults.breaker.failure_ratio",
        "must be <= 1",
        id="ratio-above-one",
    ),
    pytest.param(
        "[monitoring]\ncritical_error_ratio = 2",
        "monitoring.critical_error_ratio",
        "must be at most 1",
        id="monitor-ratio-above-one",
    ),
    pytest.param(
        "[defaults.retry]\nmax_attemps = 3",
        "defaults.retry.max_attemps",
        "unknown key `max_attemps` (did you mean `max_attempts`?)",
        id="unknown-key",
    ),
    pytest.param(
        "[retries]\nmax_attempts = 3",
        "retries",
        "unknown key `retries`; expected one of: defaults, fleet, idempotency, monitoring, "
        "providers",
        id="unknown-top-level-section",
    ),
    pytest.param(
        "[providers.openai.retyr]\nmax_attempts = 3",
        "providers.openai.retyr",
        "unknown key `retyr` (did you mean `retry`?)",
        id="provider-override-of-unknown-section",
    ),
    pytest.param(
        '[providers.ollama.retry.backoff]\nkind = "fibonacci"',
        "providers.ollama.retry.backoff.kind",
        "unknown name 'fibonacci'; expected one of 'constant', 'linear', 'exponential'",
        id="unknown-strategy-name",
    ),
    pytest.param(
        '[defaults.retry.backoff]\njitter = "lots"',
        "defaults.retry.backoff.jitter",
        "unknown name 'lots'; expected one of 'none', 'full', 'equal', 'decorrelated'",
        id="bad-jitter-name",
    ),
    pytest.param(
        "[providers.openai.retry.backoff]\nbase_delay = 60",
        "providers.openai.retry.backoff.max_delay",
        "must be >= base_delay (60 s), got 30 s",
        id="max-delay-below-base-delay",
    ),
    pytest.param(
        '[defaults.retry.backoff]\njitter = "decorrelated"\n'
        '[providers.ollama.retry.backoff]\nkind = "constant"',
        "providers.ollama.retry.backoff.jitter",
        "needs kind = 'exponential', not 'constant'",
        id="merged-combination-invalid",
    ),
    pytest.param(
        '[defaults.retry]\nretry_on = ["timeout", "flaky"]',
        "defaults.retry.retry_on[1]",
        "unknown name 'flaky'; expected one of 'timeout', 'network'",
        id="unknown-category",
    ),
    pytest.param(
        "[defaults.retry.backoff]\nbase_delay = nan",
        "defaults.retry.backoff.base_delay",
        "must be a finite number of seconds",
        id="nan-duration",
    ),
    pytest.param(
        "[providers]\nopenai = 5",
        "providers.openai",
        "must be a table, not a number",
        id="provider-not-a-table",
    ),
    pytest.param(
        "[providers.p.rate_limit]\nburst = 5",
        "providers.p.rate_limit.rate",
        "the required key `rate` is missing",
        id="missing-required-key",
    ),
    pytest.param(
        "[idempotency]\nmax_records = 0",
        "idempotency.max_records",
        "must be >= 1, got 0",
        id="zero-capacity",
    ),
    pytest.param(
        "[providers.a]\nfallback = 'b'\n[providers.b]\nfallback = 'a'",
        "providers.a.fallback",
        "the fallback chain a -> b -> a is a cycle",
        id="fallback-cycle",
    ),
    pytest.param(
        "[providers.'my.provider']\nhedging_delay = -1",
        "providers.'my.provider'.hedging_delay",
        "must be a duration > 0",
        id="quoted-provider-name",
    ),
    pytest.param(
        "[defaults\nbreaker = 1",
        "",
        "malformed TOML: ",
        id="malformed-toml",
    ),
]


@pytest.mark.parametrize(("text", "path", "message"), BAD_DOCUMENTS)
def test_bad_configuration_names_the_field_and_the_rule(text: str, path: str, message: str) -> None:
    """Each kind of bad configuration raises ConfigError with the field's path and the rule."""
    with pytest.raises(ConfigError) as info:
        load_toml(text)
    error = info.value
    assert error.path == path
    assert message in error.problem
    assert error.source == "test.toml"
    assert "test.toml" in str(error)
    assert (f"`{path}`" in str(error)) is bool(path)


def test_type_errors_are_chained_to_msgspec() -> None:
    """The translated error keeps msgspec's ValidationError as its cause."""
    with pytest.raises(ConfigError) as info:
        load_toml("[defaults.bulkhead]\nmax_queued = 'x'")
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


def test_malformed_json_is_a_config_error() -> None:
    """A JSON syntax error raises ConfigError mentioning JSON, from the decode error."""
    with pytest.raises(ConfigError, match="malformed JSON") as info:
        loads_config(b'{"defaults": ', format="json", source="x.json")
    assert isinstance(info.value.__cause__, msgspec.DecodeError)


def test_a_json_document_that_is_not_an_object_is_refused() -> None:
    """The top level must be a table of sections."""
    with pytest.raises(ConfigError, match="must be a table of sections, not an array"):
        loads_config(b"[1, 2]", format="json")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file raises ConfigError naming the file, chained to the OSError."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read the file") as info:
        load_config(missing)
    assert info.value.source == str(missing)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_an_unknown_extension_needs_an_explicit_format(tmp_path: Path) -> None:
    """A .yaml file without format= is refused with a hint."""
    path = tmp_path / "settings.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="pass format='toml' or format='json'"):
        load_config(path)


def test_from_dict_refuses_a_non_mapping() -> None:
    """from_dict() of a list raises ConfigError."""
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        ResilienceConfig.from_dict([("defaults", {})])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "path", "message"),
    [
        ({"retry": {"max_attempts": 3}}, "retry", "must be RetrySettings, not dict"),
        ({"fallback": ""}, "fallback", "must be a provider name"),
        ({"hedging_delay": 0}, "hedging_delay", "must be a duration > 0"),
    ],
)
def test_provider_settings_built_in_code_are_checked(
    kwargs: dict[str, object], path: str, message: str
) -> None:
    """ProviderSettings checks its sections, fallback and hedging delay."""
    with pytest.raises(ConfigError, match=message) as info:
        ProviderSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.path == path


def test_a_config_built_in_code_checks_fallback_cycles() -> None:
    """Direct construction checks the fallback chain too."""
    with pytest.raises(ConfigError, match="cycle") as info:
        ResilienceConfig(
            providers={"a": ProviderSettings(fallback="b"), "b": ProviderSettings(fallback="a")}
        )
    assert info.value.path == "providers.a.fallback"


def test_config_values_keep_their_types() -> None:
    """Loaded enums are members, categories a frozenset, durations floats."""
    config = load_toml('[defaults.retry.backoff]\nkind = "linear"\njitter = "equal"')
    backoff = config.defaults.retry.backoff
    assert (backoff.kind, backoff.jitter) == (BackoffKind.LINEAR, Jitter.EQUAL)
    assert isinstance(config.defaults.retry.retry_on, frozenset)
    assert isinstance(config.defaults.breaker.break_duration, float)
    assert config.defaults.budget == BudgetSettings()


# ----------------------------------------------------------------------------- config bombs


def _nested(open_: str, close: str, depth: int, inner: str = "1") -> str:
    return open_ * depth + inner + close * depth


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("a = " + _nested("[", "]", 100_000, ""), "toml"),
        ("[defaults]\nx = " + _nested("{b = ", "}", 5_000), "toml"),
        (_nested("[", "]", 100_000, ""), "json"),
        ('{"providers": {"x": ' + _nested('{"a":', "}", 5_000) + "}}", "json"),
        ('{"defaults": {"retry": {"retry_on": ' + _nested("[", "]", 3_000, "") + "}}}", "json"),
    ],
    ids=["toml-arrays", "toml-tables", "json-arrays", "json-objects", "json-in-a-field"],
)
def test_a_deeply_nested_document_is_a_config_error(text: str, fmt: Any) -> None:
    """Nesting past any sane depth ends in ConfigError (never RecursionError), naming the file."""
    with pytest.raises(ConfigError, match="nested") as info:
        loads_config(text, format=fmt, source="bomb")
    assert info.value.source == "bomb"


def test_a_moderately_nested_value_gets_the_usual_field_error() -> None:
    """Nesting within the bound is checked as usual: the error names the field."""
    text = '{"defaults": {"retry": {"retry_on": ' + _nested("[", "]", 20, "") + "}}}"
    with pytest.raises(ConfigError) as info:
        loads_config(text, format="json")
    assert "nested" not in str(info.value)
    assert info.value.path.startswith("defaults.retry.retry_on")


def test_from_dict_refuses_deep_and_cyclic_documents() -> None:
    """A dict nested too deeply, or one containing itself, is a ConfigError."""
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5_000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(ConfigError, match="nested") as info:
        ResilienceConfig.from_dict({"defaults": deep})
    assert info.value.path.startswith("defaults.a.a")
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(ConfigError, match="nested"):
        ResilienceConfig.from_dict({"providers": {"x": cyclic}})
