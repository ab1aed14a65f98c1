"""Bad input where it enters from outside: configuration documents and journal files.

The configuration loader gets random bytes, random text, random JSON-like documents and TOML
written from documents shaped like the schema (real section and field names, values of every
kind): it either builds a configuration or raises ``ConfigError``, never anything else, and it
changes nothing it was given.  The journal opener gets files of random bytes (with and without
a SQLite header) and real journals with random bytes overwritten: ``JournalError`` (and the
file untouched) or a journal that opens; nothing else.  Journaled event sequences of any shape
fold into a state or raise ``SagaSequenceError``.
"""

from __future__ import annotations

import json
import math
import pickle
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actors._errors import ConfigError
from actors._policies._config._monitoring import MonitorSettings
from actors._policies._config._schema import (
    ProviderSettings,
    ResilienceConfig,
    load_config,
    loads_config,
)
from actors._saga._journals._records import (
    JournalError,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaSequenceError,
)
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._journals._state import saga_state
from actors.chaos import ChaosSettings

VALID = """
[defaults.retry]
max_attempts = 5
[providers.openai.breaker]
failure_threshold = 3
"""


def valid_config() -> ResilienceConfig:
    return loads_config(VALID, format="toml")


EXPECTED = valid_config()


def load_any(load: Any, *args: Any, **kwargs: Any) -> ResilienceConfig | None:
    """Call the loader; a ConfigError is a fine answer, anything else fails the test."""
    try:
        config = load(*args, **kwargs)
    except ConfigError as exc:
        error = exc
    else:
        assert isinstance(config, ResilienceConfig)
        event("configuration built")
        return config
    assert str(error)  # a message a person can read
    event(f"ConfigError at {error.path.partition('.')[0] or '(document)'}")
    return None


# --------------------------------------------------------------------- schema-shaped documents

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(
        ["network", "timeout", "exponential", "full", "constant", "openai", "", "nan", "-1"]
    ),
    st.sampled_from([0, 1, 3, 10, -1, 0.5, 1.5, 1e9, 2**31]),
)

json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)


def _fields(kind: type[msgspec.Struct]) -> list[str]:
    return list(kind.__struct_fields__)


SECTION_FIELDS: dict[str, list[str]] = {
    name: _fields(type(getattr(ProviderSettings(), name)))
    for name in ("breaker", "retry", "budget", "bulkhead", "idempotency")
}
SECTION_FIELDS["rate_limit"] = ["rate", "burst"]
SECTION_FIELDS["chaos"] = _fields(ChaosSettings)
SECTION_FIELDS["backoff"] = ["kind", "base_delay", "multiplier", "max_delay", "jitter"]


def field_values(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.one_of(st.sampled_from(names), st.text(max_size=6))
    return st.dictionaries(keys, json_like, max_size=5)


def provider_document() -> st.SearchStrategy[dict[str, Any]]:
    sections = {name: field_values(fields) for name, fields in SECTION_FIELDS.items()}
    retry = st.builds(
        lambda base, backoff: {**base, "backoff": backoff},
        field_values(SECTION_FIELDS["retry"]),
        st.one_of(field_values(SECTION_FIELDS["backoff"]), json_like),
    )
    sections["retry"] = st.one_of(retry, sections["retry"])
    return st.fixed_dictionaries(
        {},
        optional={
            **{name: st.one_of(strategy, json_like) for name, strategy in sections.items()},
            "fallback": json_like,
            "hedging_delay": json_like,
        },
    )


documents = st.fixed_dictionaries(
    {},
    optional={
        "defaults": st.one_of(provider_document(), json_like),
        "providers": st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(["openai", "ollama", "a b", ""]), st.text(max_size=5)),
                st.one_of(provider_document(), json_like),
                max_size=3,
            ),
            json_like,
        ),
        "monitoring": st.one_of(field_values(_fields(MonitorSettings)), json_like),
        "idempotency": st.one_of(field_values(["ttl", "max_records"]), json_like),
    },
)


def toml_value(value: Any) -> str | None:
    """``value`` as a TOML value (inline tables and arrays); ``None`` for what TOML cannot say."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        items = [toml_value(item) for item in value]
        return "[" + ", ".join(item for item in items if item is not None) + "]"
    assert isinstance(value, dict)
    pairs = [(json.dumps(k), toml_value(v)) for k, v in value.items()]
    return "{" + ", ".join(f"{k} = {v}" for k, v in pairs if v is not None) + "}"


def toml_document(document: dict[str, Any]) -> str:
    lines = []
    for key, value in document.items():
        text = toml_value(value)
        if text is not None:
            lines.append(f"{json.dumps(key)} = {text}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- configuration


@settings(max_examples=150)
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["toml", "json"]))
def test_random_bytes_give_a_config_error_or_a_configuration(data: bytes, fmt: str) -> None:
    """Random bytes in either format: ConfigError (or, rarely, a valid document)."""
    load_any(loads_config, data, format=fmt, source="random")


@settings(max_examples=150)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_random_text_gives_a_config_error_or_a_configuration(text: str) -> None:
    """Random text as TOML and as JSON: ConfigError or a configuration."""
    load_any(loads_config, text, format="toml")
    load_any(loads_config, text, format="json")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(document=st.one_of(documents, json_like))
def test_random_documents_never_raise_anything_but_config_error(document: Any) -> None:
    """Schema-shaped and arbitrary documents: ConfigError or a configuration; the document
    given is not modified; the loader still loads a valid document afterwards."""
    before = pickle.dumps(document)
    load_any(ResilienceConfig.from_dict, document, source="doc")
    assert pickle.dumps(document) == before, "from_dict modified its input"
    if isinstance(document, dict):
        load_any(loads_config, toml_document(document), format="toml")
        try:
            encoded = msgspec.json.encode(document)
        except (TypeError, OverflowError, msgspec.EncodeError):
            pass  # NaN and huge integers have no JSON form: nothing to load
        else:
            load_any(loads_config, encoded, format="json")
    assert valid_config() == EXPECTED


def test_the_document_strategy_reaches_deep_fields() -> None:
    """A schema-shaped document can be valid (so deep validation paths are reached)."""
    document = {"defaults": {"retry": {"max_attempts": 2, "backoff": {"kind": "constant"}}}}
    assert toml_document(document) == '"defaults" = {"retry" = {"max_attempts" = 2, ' + (
        '"backoff" = {"kind" = "constant"}}}\n'
    )
    config = loads_config(toml_document(document), format="toml")
    assert config.defaults.retry.max_attempts == 2


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".toml", ".json", ".txt", ""]))
def test_random_files_give_config_errors_and_stay_untouched(
    tmp_path: Path, data: bytes, suffix: str
) -> None:
    """load_config of a file with random bytes: ConfigError naming the file; file unchanged."""
    path = tmp_path / f"config{suffix}"
    path.write_bytes(data)
    load_any(load_config, path)
    assert path.read_bytes() == data


# -------------------------------------------------------------------------------- journals


def open_outcome(path: Path) -> str:
    """Open and close a journal at ``path``: ``"refused"`` (JournalError) or ``"opened"``."""

    async def body() -> str:
        try:
            async with SqliteJournal(path, synchronous="NORMAL"):
                return "opened"
        except JournalError as exc:
            error = exc
        assert error.path == str(path)
        return "refused"

    return trio.run(body)


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=5000),
    header=st.sampled_from([b"", b"SQLite format 3\x00"]),
)
def test_random_bytes_are_refused_by_the_journal_and_left_alone(data: bytes, header: bytes) -> None:
    """A file of random bytes (with or without the SQLite magic string) is refused with
    JournalError and left exactly as it was."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "journal.db"
        path.write_bytes(header + data)
        assert open_outcome(path) == "refused"
        assert path.read_bytes() == header + data


def make_journal(path: Path) -> None:
    async def body() -> None:
        async with SqliteJournal(path, synchronous="NORMAL") as journal:
            for n in range(20):
                header = SagaHeader(f"s{n}", "order", 1.0, b"x" * 100)
                await journal.create(
                    header, SagaEvent(f"s{n}", 0, SagaEventKind.STARTED, None, 1.0)
                )
                await journal.append(SagaEvent(f"s{n}", 1, SagaEventKind.STEP_STARTED, 0, 1.0))

    trio.run(body)


@settings(max_examples=30, deadline=None)
@given(
    damage=st.lists(
        st.tuples(st.integers(0, 2**20), st.binary(min_size=1, max_size=64)),
        min_size=1,
        max_size=4,
    )
)
def test_damaged_journals_are_refused_or_open_never_anything_else(
    damage: list[tuple[int, bytes]],
) -> None:
    """Random bytes written over a real journal: it is refused with JournalError (and left
    untouched) or, when the damage missed everything that matters, it opens."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "journal.db"
        make_journal(path)
        data = bytearray(path.read_bytes())
        for offset, garbage in damage:
            at = offset % len(data)
            data[at : at + len(garbage)] = garbage
        path.write_bytes(bytes(data))
        outcome = open_outcome(path)
        event(f"damaged journal {outcome}")
        if outcome == "refused":
            assert path.read_bytes() == bytes(data)


# ---------------------------------------------------------------------------- event sequences

events = st.builds(
    SagaEvent,
    saga_id=st.sampled_from(["s", "other"]),
    seq=st.integers(-2, 8),
    kind=st.sampled_from(list(SagaEventKind)),
    step=st.one_of(st.none(), st.integers(-1, 4)),
    at=st.floats(allow_nan=True),
    data=st.binary(max_size=8),
)


@given(sequence=st.lists(events, max_size=10))
def test_any_event_sequence_folds_or_is_a_sequence_error(sequence: list[SagaEvent]) -> None:
    """saga_state over any events gives a state or SagaSequenceError, nothing else."""
    header = SagaHeader("s", "order", 0.0)
    try:
        state = saga_state(header, sequence)
    except SagaSequenceError as exc:
        error = exc
    else:
        assert state.phase is not None
        return
    assert error.saga_id == "s"
