"""Configuration: one schema for every resilience policy, loaded from TOML, JSON or a dict.

Theory of operation
-------------------
A configuration document has five sections, each optional::

    [defaults]            # ProviderSettings every provider starts from
    [providers.NAME]      # partial overrides for one provider, merged over [defaults]
    [monitoring]          # MonitorSettings of the monitor actor
    [idempotency]         # the idempotency settings (ttl, max_records)
    [fleet]               # FleetSettings: the shared store of a fleet of instances

:class:`ProviderSettings` groups what a provider actor owns: ``breaker``
(:class:`~actors.BreakerSettings`), ``retry`` (:class:`~actors.RetrySettings`,
with its ``backoff`` and per-attempt timeout), ``budget``
(:class:`~actors.BudgetSettings`), ``bulkhead``
(:class:`~actors.BulkheadSettings`), ``rate_limit`` (optional
:class:`~actors.RateLimiterSettings`), ``idempotency``
(:class:`~actors.IdempotencySettings`), plus ``fallback`` (another provider's
name), ``hedging_delay`` (seconds after which a hedged second request may be sent) and
``chaos`` (fault, latency and outcome injection, :class:`~actors.chaos.ChaosSettings`; off by
default) and ``fleet`` (what it shares with a fleet of instances,
:class:`~actors.FleetProviderSettings`; inert unless the provider is given a fleet member).

Merging.  A provider's effective settings are its override merged *key by key, recursively*
over ``[defaults]`` (``providers.openai.retry.backoff.base_delay = 2`` changes that one number
and keeps the rest of ``defaults.retry``), then completed with the schema's defaults.  Arrays
(``retry_on``) and scalars replace.  The top-level ``[idempotency]`` section is the base of
``defaults.idempotency``, so a file with only an ``[idempotency]`` section configures every
provider's table too.  A provider never falls back to itself: ``defaults.fallback = "ollama"``
gives every provider but ollama that fallback.  Providers not named in the file get
``[defaults]`` (:meth:`ResilienceConfig.for_provider`).  TOML has no null, so an optional field
set in ``[defaults]`` (``rate_limit``) cannot be unset for one provider in TOML; JSON's ``null``
can.

Durations in files are numbers of seconds; in code they accept float seconds or
:class:`datetime.timedelta` (in :meth:`ResilienceConfig.from_dict` too).  Backoff strategies
are two fields, each with a closed set of names: ``kind`` (``constant``, ``linear``,
``exponential``) and ``jitter`` (``none``, ``full``, ``equal``, ``decorrelated``), so the
"exponential backoff with jitter" is ``kind = "exponential"``, ``jitter = "full"``.

Errors.  Every problem raises one :class:`~actors._errors.ConfigError` whose ``path`` names the
field in the document (``providers.openai.retry.max_attempts``), whose message states the rule
broken, and whose ``source`` is the file.  msgspec's validation errors (``$.retry.backoff``) and
the settings' own checks are translated at one boundary (:func:`_translate`), chained with
``raise ... from``.  Unknown keys are errors everywhere (with a suggestion when one is close).
A document nested more than :data:`MAX_DEPTH` levels (a "config bomb" of nested arrays or
tables, or a dict containing itself) is a ConfigError too, found before anything recurses.
"""

from __future__ import annotations

import datetime
import difflib
import os
import re
import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import msgspec
import msgspec.inspect as mi

from actors._errors import ConfigError, ConfigWarning, did_you_mean
from actors._errors._hints import closest
from actors._policies._backoff import _optional_duration
from actors._policies._breaker import BreakerSettings
from actors._policies._budget import BudgetSettings
from actors._policies._bulkhead import BulkheadSettings
from actors._policies._config._chaos import ChaosSettings
from actors._policies._config._fleet import FleetProviderSettings, FleetSettings
from actors._policies._config._monitoring import MonitorSettings
from actors._policies._idempotency import IdempotencySettings
from actors._policies._ratelimit import RateLimiterSettings
from actors._policies._retry import RETRY_PRESETS, RetrySettings

__all__ = [
    "ConfigFormat",
    "ProviderSettings",
    "ResilienceConfig",
    "example_config",
    "load_config",
    "loads_config",
]

ConfigFormat = Literal["toml", "json"]

_SECTIONS: Final[Mapping[str, type[msgspec.Struct]]] = {
    "breaker": BreakerSettings,
    "retry": RetrySettings,
    "budget": BudgetSettings,
    "bulkhead": BulkheadSettings,
    "rate_limit": RateLimiterSettings,
    "idempotency": IdempotencySettings,
    "fleet": FleetProviderSettings,
}

_TOP_LEVEL: Final = ("defaults", "fleet", "idempotency", "monitoring", "providers")

_T = TypeVar("_T")


class ProviderSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything one provider actor is configured with (see the module docstring).

    Attributes:
        breaker: circuit breaker settings (default: 5 failures, ratio 0.5, 30 s open, 5 min).
        retry: retry settings, with the backoff and the per-attempt timeout (default: 3 attempts,
            1 s exponential backoff with full jitter, 10 s per attempt).
        budget: retry budget settings (Finagle's: 10 s, 10 retries/s, ratio 0.2).
        bulkhead: concurrency limits (10 running, 20 queued).
        rate_limit: a token bucket for providers with quotas, or ``None`` (default) for none.
        idempotency: the provider's idempotency table (default: 24 h, 10,000 records).
        fallback: the name of the provider to fall back to, or ``None`` (default).
        hedging_delay: seconds after which a hedged second request may be sent, or ``None``
            (default) for no hedging; float seconds or :class:`datetime.timedelta`.
        fleet: what the provider shares with a fleet (:class:`~actors.FleetProviderSettings`:
            breaker, idempotency, a quota, the store-down policy); used only when the provider
            actor is given a fleet member.
        chaos: fault, latency and outcome injection around the service function
            (:class:`~actors.chaos.ChaosSettings`), or ``None`` (default): no chaos.  For tests
            and game days; a section is inert unless its ``enabled`` is true.

    Invalid values raise :class:`~actors._errors.ConfigError` naming the field.
    """

    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    budget: BudgetSettings = BudgetSettings()
    bulkhead: BulkheadSettings = BulkheadSettings()
    rate_limit: RateLimiterSettings | None = None
    idempotency: IdempotencySettings = IdempotencySettings()
    fallback: str | None = None
    hedging_delay: float | None = None
    chaos: ChaosSettings | None = None
    fleet: FleetProviderSettings = FleetProviderSettings()

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            breaker: BreakerSettings = ...,
            retry: RetrySettings = ...,
            budget: BudgetSettings = ...,
            bulkhead: BulkheadSettings = ...,
            rate_limit: RateLimiterSettings | None = ...,
            idempotency: IdempotencySettings = ...,
            fallback: str | None = ...,
            hedging_delay: float | datetime.timedelta | None = ...,
            chaos: ChaosSettings | None = ...,
            fleet: FleetProviderSettings = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        for name, kind in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, kind) and not (name == "rate_limit" and value is None):
                raise ConfigError(f"must be {kind.__name__}, not {type(value).__name__}", path=name)
        fallback = self.fallback
        if fallback is not None and (not isinstance(fallback, str) or not fallback.strip()):
            raise ConfigError(f"must be a provider name, not {fallback!r}", path="fallback")
        _optional_duration(self, "hedging_delay", positive=True)
        if self.chaos is not None and not isinstance(self.chaos, ChaosSettings):
            raise ConfigError(
                f"must be ChaosSettings, not {type(self.chaos).__name__}", path="chaos"
            )


class ResilienceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole resilience configuration, with every provider's effective settings.

    Attributes:
        defaults: the settings of a provider not named in ``providers``.
        providers: each named provider's *effective* settings (overrides already merged over
            ``defaults``); treat it as read-only.
        monitoring: the monitor's settings (default: check every 60 s, 10 errors per minute,
            critical error ratio 0.5).
        idempotency: the idempotency settings (default: 24 h, 10,000 records); also the base of
            ``defaults.idempotency`` when loading a document.
        fleet: where the fleet's shared store is and its timings (:class:`~actors.FleetSettings`),
            or ``None`` (default): this instance runs alone.  ``actors.fleet.open_fleet(
            config.fleet)`` opens the member the providers are given.

    Build one with :func:`load_config`, :func:`loads_config` or :meth:`from_dict` (which merge
    partial provider overrides), with :meth:`default` (the built-in defaults and retry table),
    or directly from fully
    built settings.  A fallback cycle (``a -> b -> a``) raises
    :class:`~actors._errors.ConfigError` at ``providers.a.fallback``.
    """

    defaults: ProviderSettings = ProviderSettings()
    providers: dict[str, ProviderSettings] = msgspec.field(default_factory=dict)
    monitoring: MonitorSettings = MonitorSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    fleet: FleetSettings | None = None

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, type], ...] = (
            ("defaults", ProviderSettings),
            ("monitoring", MonitorSettings),
            ("idempotency", IdempotencySettings),
        )
        for name, kind in checks:
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(
                    f"must be {kind.__name__}, not {type(getattr(self, name)).__name__}",
                    path=name,
                )
        if self.fleet is not None and not isinstance(self.fleet, FleetSettings):
            raise ConfigError(
                f"must be FleetSettings or None, not {type(self.fleet).__name__}", path="fleet"
            )
        if not isinstance(self.providers, dict):
            raise ConfigError(
                f"must be a dict of provider settings, not {type(self.providers).__name__}",
                path="providers",
            )
        for name, settings in self.providers.items():
            _check_provider_name(name)
            if not isinstance(settings, ProviderSettings):
                raise ConfigError(
                    f"must be ProviderSettings, not {type(settings).__name__}",
                    path=_provider_path(name),
                )
        for name, settings in self.providers.items():
            fallback = settings.fallback
            if fallback is not None and fallback not in self.providers:
                close = closest(fallback, [p for p in self.providers if p != name])
                if close:
                    warnings.warn(
                        f"{_provider_path(name)}.fallback names {fallback!r}, which has no "
                        f"section (did you mean {close[0]!r}?)",
                        ConfigWarning,
                        stacklevel=2,
                    )
        for name in self.providers:
            chain = [name]
            current = self._effective(name).fallback
            while current is not None:
                if current in chain:
                    cycle = " -> ".join([*chain[chain.index(current) :], current])
                    raise ConfigError(
                        f"the fallback chain {cycle} is a cycle",
                        path=f"{_provider_path(name)}.fallback",
                    )
                chain.append(current)
                current = self._effective(current).fallback

    def for_provider(self, name: str) -> ProviderSettings:
        """The effective settings of provider ``name`` (``defaults`` if it is not named).

        A fallback naming the provider itself (inherited from ``defaults``) is dropped.  A name
        with no section, close to a section's name (``openai`` and ``[providers.opneai]``),
        gets the defaults with a :class:`~actors.ConfigWarning`: the section is probably a typo.
        """
        if name not in self.providers and self.providers:
            close = closest(name, self.providers)
            if close:
                warnings.warn(
                    f"no [providers.{name}] section: provider {name!r} gets the defaults "
                    f"(did you mean [providers.{close[0]}]?)",
                    ConfigWarning,
                    stacklevel=2,
                )
        return self._effective(name)

    def _effective(self, name: str) -> ProviderSettings:
        settings = self.providers.get(name, self.defaults)
        if settings.fallback == name:
            return msgspec.structs.replace(settings, fallback=None)
        return settings

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> ResilienceConfig:
        """Build a configuration from a document already parsed into dicts.

        Provider overrides are merged over ``defaults`` (see the module docstring).
        ``datetime.timedelta`` values are taken as durations.  Raises ConfigError naming the
        offending field; ``source`` (a file name) is included in its message.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"the document must be a mapping of sections, not {_kind(data)}", source=source
            )
        _check_depth(data, source)
        return _build(_normalise(data), source)

    @classmethod
    def default(cls) -> ResilienceConfig:
        """The built-in configuration: every default, plus the retry table of openai and
        anthropic (4 attempts, 2 s exponential backoff with full jitter) and ollama (3 attempts,
        100 ms apart).

        Equal to loading :func:`example_config`, the file that writes it all out.
        """
        defaults = ProviderSettings(retry=RETRY_PRESETS["default"])
        return cls(
            defaults=defaults,
            providers={
                name: msgspec.structs.replace(defaults, retry=RETRY_PRESETS[name])
                for name in ("openai", "anthropic", "ollama")
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (JSON-ready; providers fully expanded)."""
        result: dict[str, Any] = _plain(self)
        return result


def example_config() -> Path:
    """The path of the example configuration file that ships with the package.

    It writes out every setting of :meth:`ResilienceConfig.default` with a comment each: copy
    it to start a configuration of your own (``aura config example > resilience.toml``), or
    load it (``load_config(example_config())``).
    """
    return Path(__file__).with_name("resilience.toml")


def load_config(
    path: str | os.PathLike[str], *, format: ConfigFormat | None = None
) -> ResilienceConfig:
    """Load a configuration file: TOML (``.toml``) or JSON (``.json``), or as ``format`` says.

    Raises ConfigError (with ``source`` set to the file) when the file cannot be read, its
    format is unknown or malformed, or any setting is invalid.
    """
    file = Path(path)
    if format is None:
        suffix = file.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise ConfigError(
                f"cannot tell the format from the extension {suffix or '(none)'!r}: use .toml "
                "or .json, or pass format='toml' or format='json'",
                source=str(file),
            )
        format = "toml" if suffix == ".toml" else "json"
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=str(file)) from exc
    return loads_config(data, format=format, source=str(file))


def loads_config(
    text: str | bytes, *, format: ConfigFormat, source: str | None = None
) -> ResilienceConfig:
    """Parse a TOML or JSON document and build its configuration (see :func:`load_config`)."""
    document: object
    try:
        if format == "toml":
            try:
                decoded = text.decode("utf-8") if isinstance(text, bytes) else text
                document = tomllib.loads(decoded)
            except UnicodeDecodeError as exc:
                raise ConfigError(f"the file is not UTF-8 text: {exc}", source=source) from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"malformed TOML: {exc}", source=source) from exc
        elif format == "json":
            try:
                document = msgspec.json.decode(text)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"malformed JSON: {exc}", source=source) from exc
        else:
            raise ConfigError(
                f"unknown format {format!r}; expected 'toml' or 'json'", source=source
            )
    except RecursionError:
        # Both parsers recurse once per level of nesting: a "config bomb" of nested arrays or
        # tables ends here rather than escaping as a RecursionError.
        raise ConfigError(
            f"the document is nested too deeply to parse (a configuration is at most "
            f"{MAX_DEPTH} levels deep)",
            source=source,
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            f"the document must be a table of sections, not {_kind(document)}", source=source
        )
    _check_depth(document, source)
    return _build(document, source)


# ------------------------------------------------------------------------------- building


#: The deepest nesting a configuration document may have (the schema itself needs 5 levels).
MAX_DEPTH: Final = 32


def _check_depth(document: Mapping[str, Any], source: str | None) -> None:
    """Refuse a document nested more than :data:`MAX_DEPTH` levels (or containing itself).

    Merging, normalising and converting all recurse once per level, so the depth is bounded
    before any of them runs.  Depth first, so a document that contains itself is refused after
    at most ``MAX_DEPTH`` levels of one path, however wide it is.
    """
    stack: list[tuple[object, str, int]] = [(document, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, Mapping):
            items: list[tuple[str, object]] = [
                (f"{path}.{key}" if path else str(key), item) for key, item in value.items()
            ]
        elif isinstance(value, list | tuple):
            items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        else:
            continue
        if depth >= MAX_DEPTH and items:
            raise ConfigError(
                f"nested more than {MAX_DEPTH} levels deep (a configuration needs at most 5)",
                path=path[:200],
                source=source,
            )
        stack.extend((item, item_path, depth + 1) for item_path, item in items)


def _build(document: dict[str, Any], source: str | None) -> ResilienceConfig:
    for key in document:
        if key not in _TOP_LEVEL:
            raise ConfigError(_unknown_key(str(key), _TOP_LEVEL), path=str(key), source=source)
    monitoring = _convert(document.get("monitoring", {}), MonitorSettings, "monitoring", source)
    fleet = None
    if document.get("fleet") is not None:  # JSON's null (to_dict's) is no fleet
        fleet = _convert(document["fleet"], FleetSettings, "fleet", source)
    top_idempotency = document.get("idempotency", {})
    idempotency = _convert(top_idempotency, IdempotencySettings, "idempotency", source)

    defaults_raw = _table(document.get("defaults", {}), "defaults", source)
    if top_idempotency:
        defaults_raw = _merge({"idempotency": top_idempotency}, defaults_raw)
    defaults = _convert(defaults_raw, ProviderSettings, "defaults", source)

    providers: dict[str, ProviderSettings] = {}
    for name, override in _table(document.get("providers", {}), "providers", source).items():
        path = _provider_path(name)
        try:
            _check_provider_name(name)
        except ConfigError as exc:
            raise ConfigError(exc.problem, path=exc.path, source=source) from None
        merged = _merge(defaults_raw, _table(override, path, source))
        providers[name] = _convert(merged, ProviderSettings, path, source)
    try:
        return ResilienceConfig(
            defaults=defaults,
            providers=providers,
            monitoring=monitoring,
            idempotency=idempotency,
            fleet=fleet,
        )
    except ConfigError as exc:
        raise ConfigError(exc.problem, path=exc.path, source=source) from None


def _table(value: object, path: str, source: str | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"must be a table, not {_kind(value)}", path=path, source=source)
    return value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``: tables recursively, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    """Plain data with sets as sorted lists, so equal configurations give equal documents."""
    if isinstance(value, msgspec.Struct):
        return {name: _plain(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, frozenset | set):
        return sorted((_plain(item) for item in value), key=repr)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return msgspec.to_builtins(value)


def _normalise(value: Any) -> Any:
    """Plain data for msgspec: Mappings become dicts, timedeltas float seconds."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    return value


_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]+\Z")


def _provider_path(name: object) -> str:
    text = str(name)
    return f"providers.{text}" if _IDENTIFIER.match(text) else f"providers.{text!r}"


def _check_provider_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"a provider name must be a non-empty string, not {name!r}",
            path=_provider_path(name),
        )


# ---------------------------------------------------------------------------- translation


def _convert(raw: object, kind: type[_T], path: str, source: str | None) -> _T:
    if not isinstance(raw, dict):
        raise ConfigError(f"must be a table, not {_kind(raw)}", path=path, source=source)
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise _translate(exc, kind, path, source) from exc


_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]+)`$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.+)$")

_WORDS: Final = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
    "null": "null",
    "duration": "a timedelta",
}


def _translate(
    exc: msgspec.ValidationError, root: type, prefix: str, source: str | None
) -> ConfigError:
    """One ConfigError (dotted path, rule broken) from a msgspec ValidationError."""
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any string
    message = match["message"]
    segments: list[str | int] = [
        name if name else int(index) for name, index in _SEGMENT.findall(match["path"] or "")
    ]
    cause = exc.__cause__
    if isinstance(cause, ConfigError):  # a settings struct's own check, from __post_init__
        extra = cause.path.split(".") if cause.path else []
        return ConfigError(cause.problem, path=_join(prefix, [*segments, *extra]), source=source)
    if found := _UNKNOWN.match(message):
        key = found["key"]
        fields = _field_names(_type_at(root, segments))
        problem = _unknown_key(key, fields) if fields else f"unknown key `{key}`"
        return ConfigError(problem, path=_join(prefix, [*segments, key]), source=source)
    if found := _MISSING.match(message):
        key = found["key"]
        problem = f"the required key `{key}` is missing"
        return ConfigError(problem, path=_join(prefix, [*segments, key]), source=source)
    if found := _EXPECTED.match(message):
        want = " or ".join(_WORDS.get(w.strip(), w.strip()) for w in found["want"].split("|"))
        got = "a float" if found["got"] == "float" else _WORDS.get(found["got"], found["got"])
        problem = f"wrong type: expected {want}, got {got}"
        return ConfigError(problem, path=_join(prefix, segments), source=source)
    if found := _ENUM.match(message):
        enum_type = _type_at(root, segments)
        if isinstance(enum_type, mi.EnumType):
            values = [str(member.value) for member in enum_type.cls]
            names = ", ".join(repr(value) for value in values)
            hint = did_you_mean(found["value"].strip("'\""), values)
            problem = f"unknown name {found['value']}; expected one of {names}{hint}"
        else:
            problem = f"unknown name {found['value']}"
        return ConfigError(problem, path=_join(prefix, segments), source=source)
    return ConfigError(
        message[:1].lower() + message[1:], path=_join(prefix, segments), source=source
    )


def _join(prefix: str, segments: list[str | int]) -> str:
    path = prefix
    for segment in segments:
        if isinstance(segment, int):
            path += f"[{segment}]"
        else:
            path = f"{path}.{segment}" if path else segment
    return path


def _type_at(root: type, segments: list[str | int]) -> mi.Type | None:
    """The msgspec type found by following ``segments`` from ``root`` (None if lost)."""
    current: mi.Type | None = mi.type_info(root)
    for segment in segments:
        current = _unwrap(current)
        if isinstance(segment, int):
            current = getattr(current, "item_type", None)
        elif isinstance(current, mi.StructType):
            fields = {field.encode_name: field.type for field in current.fields}
            current = fields.get(segment)
        else:
            return None
    return _unwrap(current)


def _unwrap(kind: mi.Type | None) -> mi.Type | None:
    if isinstance(kind, mi.UnionType):
        members = [t for t in kind.types if not isinstance(t, mi.NoneType)]
        return members[0] if len(members) == 1 else kind
    return kind


def _field_names(kind: mi.Type | None) -> tuple[str, ...]:
    if isinstance(kind, mi.StructType):
        return tuple(field.encode_name for field in kind.fields)
    return ()


def _unknown_key(key: str, allowed: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return f"unknown key `{key}`{hint}; expected one of: {', '.join(sorted(allowed))}"


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
