"""Text from callers and remote services reaches terminals and logs escaped, never raw.

Saga ids, service names and error text are chosen by callers or by remote services.  Written
raw, an ``ESC[2J`` clears the operator's screen and a newline forges a log line.  Every text
sink (``aura status``, the plain and JSON log formats, the console log handler under the live
view, the rich live view itself) escapes C0 and C1 control characters, line separators and
bidirectional overrides; intake refuses them in names with :func:`check_printable`.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import unicodedata
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from actors._monitor._state import MonitorState
from actors._policies._redact import check_printable, escape_control
from actors._protocol import BreakerReport, CallReport
from supervisors._events import TreeNode
from supervisors._operator._cli import format_status
from supervisors._operator._live import ChangeLog, ConsoleLogHandler, render_view, summary_line
from supervisors._operator._logging import (
    JsonFormatter,
    PlainFormatter,
    configure_logging,
    correlation,
)
from supervisors._operator._metrics import OperatorSnapshot

CLEAR = "\x1b[2J\x1b[H"
FORGED = "\nINFO supervisors.live: health=healthy"
HOSTILE = f"evil{CLEAR}{FORGED}\r\x9b31m\u202egnp.exe\u2028x\x00"

#: What a terminal or a log reader acts on: C0, DEL, C1, line/paragraph separators and the
#: bidirectional formatting characters.
_ACTIVE = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x061C]}
_ACTIVE |= {chr(c) for c in [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]}


def _active(text: str, *, newlines: bool = False) -> set[str]:
    found = {c for c in text if c in _ACTIVE}
    return found - {"\n"} if newlines else found


def _forged_lines(text: str) -> list[str]:
    """Lines that start like a record of their own (a forged one)."""
    return [line for line in text.split("\n") if line.startswith("INFO supervisors")]


# ================================================================================ the helpers


@given(st.text())
def test_escaped_text_has_no_active_characters(text: str) -> None:
    """Whatever the input, the escaped text has no control, separator or bidi character."""
    escaped = escape_control(text)
    assert not _active(escaped)
    assert escape_control(escaped) == escaped  # escaping twice changes nothing more


@given(st.text(alphabet=st.characters(exclude_characters=sorted(_ACTIVE))))
def test_text_without_active_characters_is_unchanged(text: str) -> None:
    """Ordinary text (any script, emoji, spaces) comes back exactly."""
    assert escape_control(text) == text


def test_escapes_are_readable() -> None:
    """Escapes look like Python's: \\n, \\t, \\x1b, \\u202e; newlines may be kept."""
    assert escape_control("a\nb\tc\x1b[2J\x9b\u202e") == "a\\nb\\tc\\x1b[2J\\x9b\\u202e"
    assert escape_control("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"


@pytest.mark.parametrize(
    "value", ["a\nb", "\x1b[2J", "x\u202ey", "x\u2028", "tab\there", "", "nul\x00", "\x85"]
)
def test_check_printable_refuses_control_characters(value: str) -> None:
    """A name with a control, format or separator character (or empty) is a ValueError."""
    with pytest.raises(ValueError, match="saga id") as info:
        check_printable(value, "saga id")
    assert not _active(str(info.value))


def test_check_printable_accepts_names_and_checks_types_and_length() -> None:
    """Printable names of any script pass; a non-str is a TypeError; length is bounded."""
    for name in ("order-42", "Zahlung für Bestellung 7", "注文-7", "a b", "x" * 200):
        assert check_printable(name, "service name", max_length=200) == name
    with pytest.raises(TypeError, match="service name"):
        check_printable(42, "service name")
    with pytest.raises(ValueError, match="at most 10"):
        check_printable("x" * 11, "service name", max_length=10)


@given(st.text(min_size=1, max_size=50))
def test_check_printable_agrees_with_escaping(name: str) -> None:
    """A name passes exactly when it is printable; every passing name needs no escaping."""
    try:
        check_printable(name, "name")
    except ValueError:
        assert not name.isprintable()
    else:
        assert escape_control(name) == name
        assert all(unicodedata.category(c)[0] != "C" for c in name)


# ================================================================================ aura status


def test_status_escapes_what_the_server_sent() -> None:
    """`aura status` prints remote names, reasons and messages escaped, on their own lines."""
    results: dict[str, Any] = {
        "health": {
            "status": "degraded",
            "reasons": [f"reason{CLEAR}{FORGED}"],
            "services": {HOSTILE: {"status": "unhealthy"}},
        },
        "breakers": {"breakers": [{"service": HOSTILE, "state": f"open{CLEAR}", "trips": 1}]},
        "alerts": {
            "active": [
                {
                    "id": 1,
                    "severity": "critical",
                    "rule": "breaker_open",
                    "service": HOSTILE,
                    "message": f"breaker open{FORGED}",
                }
            ]
        },
    }
    text = format_status("http://127.0.0.1:9470", results)
    assert not _active(text, newlines=True)
    assert not _forged_lines(text)
    assert "evil\\x1b[2J" in text


# ================================================================================ log formats


def test_plain_format_keeps_a_record_on_its_own_lines() -> None:
    """The plain format escapes the message and the ids: one line; no forged record."""
    stream = io.StringIO()
    target = logging.getLogger("aura.safety.plain")
    handler = configure_logging(stream=stream, logger=target)
    try:
        with correlation(saga_id=f"s{FORGED}", service=HOSTILE):
            target.warning("breaker %s opened", HOSTILE)
    finally:
        target.removeHandler(handler)
        target.setLevel(logging.NOTSET)
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert not _active(text, newlines=True)
    assert not _forged_lines(text)


def test_plain_format_indents_tracebacks_and_escapes_them() -> None:
    """A traceback keeps its line breaks, but every line after the first is indented."""
    formatter = PlainFormatter()
    try:
        raise ValueError(f"bad{CLEAR}{FORGED}")
    except ValueError:
        record = logging.getLogger("aura.safety").makeRecord(
            "aura.safety", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first.endswith("failed")
    assert rest
    assert all(line.startswith("  ") for line in rest)
    assert not _active(text, newlines=True)
    assert not _forged_lines(text)
    assert record.exc_text is None  # the record is left as it was for other handlers


@given(message=st.text(max_size=100), saga=st.text(max_size=30))
def test_plain_format_is_one_line_for_any_message(message: str, saga: str) -> None:
    """Any message and saga id give exactly one line without active characters."""
    record = logging.LogRecord("aura.t", logging.INFO, __file__, 1, "%s", (message,), None)
    record.correlation = f" [saga_id={saga}]"
    text = PlainFormatter("%(levelname)s %(name)s%(correlation)s: %(message)s").format(record)
    assert "\n" not in text
    assert not _active(text)


@given(message=st.text(max_size=100))
def test_json_lines_escape_c1_and_bidi_and_round_trip(message: str) -> None:
    """JSON lines have no raw control, separator or bidi character, and decode to the text."""
    record = logging.LogRecord("aura.t", logging.INFO, __file__, 1, "%s", (message,), None)
    line = JsonFormatter().format(record)
    assert not _active(line)
    assert json.loads(line)["message"] == message


def test_console_log_handler_escapes_records() -> None:
    """Records printed above the live view are escaped, whatever formatter they went through."""
    console = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=200)
    handler = ConsoleLogHandler(console)
    target = logging.getLogger("aura.safety.console")
    target.addHandler(handler)
    target.propagate = False
    try:
        target.warning("alert for %s", HOSTILE)
        handler.setFormatter(logging.Formatter("%(message)s"))  # a formatter that escapes nothing
        target.warning("again %s", HOSTILE)
    finally:
        target.removeHandler(handler)
        target.propagate = True
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert not _active(output, newlines=True)
    assert not _forged_lines(output)


# ================================================================================ views


_STANDIN = "stand-in-service-name"
_T = TypeVar("_T")


def _hostile(answer: _T) -> _T:
    """``answer`` (a monitor's answer, a msgspec Struct) with the stand-in name made hostile."""
    text = msgspec.json.encode(answer)
    hostile = msgspec.json.encode(HOSTILE)[1:-1]
    return msgspec.json.decode(text.replace(_STANDIN.encode(), hostile), type=type(answer))


def _hostile_snapshot() -> OperatorSnapshot:
    from actors import SagaPhase, SagaSummary

    # The monitor refuses such a name at intake; the sinks must still escape one that got in
    # by another way, so the hostile name is put into the monitor's answers afterwards.
    state = MonitorState()
    state.record(CallReport(_STANDIN, False, 0.1, 0.0, error=f"boom{FORGED}"), 0.0)
    state.record(BreakerReport(_STANDIN, "closed", "open", 1.0), 1.0)
    saga = SagaSummary(
        saga_id=HOSTILE, definition=f"video{CLEAR}", created_at=0.0,
        phase=SagaPhase("compensating"), next_step=1, step_in_flight=None,
        compensation_step=0, compensated=0, events=3, updated_at=0.0, metadata={},
    )  # fmt: skip
    tree = TreeNode(
        name="", path="", kind="supervisor", state="running", restarts=0,
        children=(TreeNode(name=HOSTILE, path=HOSTILE, kind="actor", state="running",
                           restarts=1),),
    )  # fmt: skip
    return OperatorSnapshot(
        at=2.0,
        health=_hostile(state.health(2.0)),
        metrics=_hostile(state.metrics(2.0)),
        breakers=_hostile(state.breakers()),
        alerts=_hostile(state.alerts()),
        tree=tree,
        sagas=[saga],
        problems=[f"monitor: {HOSTILE}"],
    )


def test_live_view_escapes_names_ids_and_messages() -> None:
    """The rich view shows hostile names escaped: no escape sequence reaches the terminal."""
    console = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=300)
    console.print(render_view(_hostile_snapshot(), title=f"app{CLEAR}", started_at=0.0))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert not _active(output, newlines=True)
    assert not _forged_lines(output)
    assert "evil\\x1b[2J" in output


def test_plain_view_messages_are_escaped() -> None:
    """What `aura run --no-live` logs (changes and summaries) carries no active character."""
    snapshot = _hostile_snapshot()
    messages = [message for _level, message in ChangeLog().changes(snapshot)]
    messages.append(summary_line(snapshot))
    assert messages
    for message in messages:
        assert not _active(message), message
