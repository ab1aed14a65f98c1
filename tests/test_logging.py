"""Structured logging: correlation ids on every record, the JSON formatter, setup."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from actors import Actor
from supervisors import ChildSpec, open_supervisor
from supervisors._operator._logging import (
    CORRELATION_FIELDS,
    CorrelationFilter,
    JsonFormatter,
    configure_logging,
    correlation,
    correlation_ids,
)


class Capture(logging.Handler):
    """Keeps the records it handles (after its filters ran)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(CorrelationFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    log = logging.getLogger("aura.test")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


log = logging.getLogger("aura.test")


def ids(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in CORRELATION_FIELDS}


def test_records_carry_the_bound_ids(captured: Capture) -> None:
    """A record logged inside correlation() carries its saga id, key and service."""
    with correlation(saga_id="order-42", idempotency_key="order-42:charge", service="payments"):
        log.info("charging")
    assert ids(captured.records[0]) == {
        "saga_id": "order-42",
        "idempotency_key": "order-42:charge",
        "service": "payments",
    }
    assert captured.records[0].correlation == (  # type: ignore[attr-defined]
        " [saga_id=order-42 idempotency_key=order-42:charge service=payments]"
    )


def test_every_record_has_the_fields_even_unbound(captured: Capture) -> None:
    """Outside any block the fields exist and are None; the text form is empty."""
    log.warning("plain")
    assert ids(captured.records[0]) == dict.fromkeys(CORRELATION_FIELDS)
    assert captured.records[0].correlation == ""  # type: ignore[attr-defined]


def test_nested_blocks_merge_and_restore(captured: Capture) -> None:
    """An inner block adds ids over the outer ones; leaving it restores the outer ids."""
    with correlation(saga_id="s1"):
        with correlation(service="openai"):
            log.info("inner")
            assert correlation_ids() == {"saga_id": "s1", "service": "openai"}
        log.info("outer")
    log.info("outside")
    assert [ids(r) for r in captured.records] == [
        {"saga_id": "s1", "idempotency_key": None, "service": "openai"},
        {"saga_id": "s1", "idempotency_key": None, "service": None},
        dict.fromkeys(CORRELATION_FIELDS),
    ]


def test_restored_after_an_exception(captured: Capture) -> None:
    """Ids are unbound when the block is left by an exception."""
    with pytest.raises(RuntimeError), correlation(saga_id="s2"):
        raise RuntimeError("boom")
    assert correlation_ids() == {}


def test_extra_given_at_the_call_wins(captured: Capture) -> None:
    """A value passed with extra= is kept; the context fills only what is missing."""
    with correlation(service="ctx", saga_id="s"):
        log.info("x", extra={"service": "explicit"})
    assert ids(captured.records[0]) == {
        "saga_id": "s",
        "idempotency_key": None,
        "service": "explicit",
    }


def test_ids_must_be_strings() -> None:
    """A non-string id raises TypeError and binds nothing."""
    with pytest.raises(TypeError, match="saga_id"), correlation(saga_id=42):  # type: ignore[arg-type]
        pass
    assert correlation_ids() == {}


async def test_tasks_inherit_ids_and_siblings_do_not_leak(captured: Capture) -> None:
    """A task started inside a block sees its ids; ids bound in one task stay in that task."""
    seen: dict[str, object] = {}

    async def child(name: str, bind: str | None) -> None:
        if bind is None:
            await trio.sleep(0.01)
            seen[name] = dict(correlation_ids())
            return
        with correlation(idempotency_key=bind):
            await trio.sleep(0.02)
            seen[name] = dict(correlation_ids())

    with correlation(saga_id="parent"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child, "binder", "k1")
            nursery.start_soon(child, "sibling", None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(child, "outside", None)
    assert seen == {
        "binder": {"saga_id": "parent", "idempotency_key": "k1"},
        "sibling": {"saga_id": "parent"},
        "outside": {},
    }


class Logs(Actor[str, None]):
    """Logs each message with the service id bound."""

    async def handle(self, message: str) -> None:
        with correlation(service="echo", idempotency_key=message):
            log.info("handled %s", message)


async def test_ids_bound_in_an_actor_reach_its_records(captured: Capture) -> None:
    """An actor binds its own ids while it handles a message; its records carry them."""
    async with open_supervisor([ChildSpec("echo", Logs)]) as root:
        await root.ref("echo").ask("k-7")
    record = next(r for r in captured.records if r.getMessage() == "handled k-7")
    assert ids(record) == {"saga_id": None, "idempotency_key": "k-7", "service": "echo"}


# ================================================================================ JSON


def _json_line(record_factory: logging.LogRecord) -> dict[str, object]:
    formatter = JsonFormatter()
    CorrelationFilter().filter(record_factory)
    line = formatter.format(record_factory)
    assert "\n" not in line
    return json.loads(line)  # type: ignore[no-any-return]


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("aura.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_the_standard_fields() -> None:
    """A JSON line has time (UTC), level, logger, message and the three ids."""
    with correlation(saga_id="s9"):
        data = _json_line(_record("hello %s", "world"))
    assert data["level"] == "WARNING"
    assert data["logger"] == "aura.test"
    assert data["message"] == "hello world"
    assert data["saga_id"] == "s9"
    assert data["idempotency_key"] is None
    assert str(data["time"]).endswith("Z")


def test_json_line_keeps_extras_and_stringifies_the_rest() -> None:
    """Extra fields are kept; values JSON cannot carry are written with str()."""
    data = _json_line(_record("x", aura_event="crashed", count=3, thing=object(), when={1, 2}))
    assert data["aura_event"] == "crashed"
    assert data["count"] == 3
    assert str(data["thing"]).startswith("<object object")
    assert "correlation" not in data


def test_json_line_with_an_exception() -> None:
    """An exception's traceback goes into the exception field."""
    formatter = JsonFormatter()
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.getLogger("aura.test").makeRecord(
            "aura.test", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    data = json.loads(formatter.format(record))
    assert "ValueError: bad value" in data["exception"]


@given(
    message=st.text(max_size=200),
    saga=st.none() | st.text(max_size=40),
    service=st.none() | st.text(max_size=40),
)
def test_json_lines_round_trip_any_text(
    message: str, saga: str | None, service: str | None
) -> None:
    """Any message and ids come back unchanged from the JSON line."""
    with correlation(saga_id=saga, service=service):
        data = _json_line(_record("%s", message))
    assert data["message"] == message
    assert data["saga_id"] == saga
    assert data["service"] == service


async def test_supervision_events_as_json() -> None:
    """A crash under supervision is logged as JSON with its event kind and path."""
    stream = io.StringIO()
    target = logging.getLogger("supervisors")
    level = target.level
    handler = configure_logging(json=True, stream=stream, logger=target)

    class Crash(Actor[str, str]):
        async def handle(self, message: str) -> str:
            raise RuntimeError("boom")

    try:
        async with open_supervisor([ChildSpec("crash", Crash)]) as root:
            with pytest.raises(Exception, match="crash"):
                await root.ref("crash").ask("x")
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    crashed = [r for r in records if r.get("aura_event") == "crashed"]
    assert crashed[0]["aura_path"] == "crash"
    assert crashed[0]["level"] == "WARNING"
    assert "RuntimeError: boom" in crashed[0]["message"]


def test_configure_logging_plain_text_shows_ids() -> None:
    """The plain format shows the bound ids between the logger name and the message."""
    stream = io.StringIO()
    target = logging.getLogger("aura.plain")
    handler = configure_logging(stream=stream, logger=target, level="DEBUG")
    try:
        with correlation(saga_id="s1", service="ollama"):
            target.debug("step done")
        target.info("no ids")
    finally:
        target.removeHandler(handler)
        target.setLevel(logging.NOTSET)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("aura.plain [saga_id=s1 service=ollama]: step done")
    assert second.endswith("aura.plain: no ids")
