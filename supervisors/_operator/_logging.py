"""Structured logging: correlation ids on every record, a JSON formatter, one-call setup.

Theory of operation
-------------------
Correlation ids (the saga id, the idempotency key and the service a piece of work is for) live
in one :class:`contextvars.ContextVar` holding an immutable mapping.  :func:`correlation` binds
ids for the duration of a ``with`` block, on top of the ids already bound, and restores the
previous mapping when the block ends.  trio gives every task a copy of the context of the task
that started it, so ids bound around ``nursery.start_soon`` (or an actor's ``spawn``) flow into
the work started there, and never leak into sibling tasks.

:class:`CorrelationFilter` copies the current ids onto every :class:`logging.LogRecord` that
passes it, as the attributes ``saga_id``, ``idempotency_key`` and ``service`` (``None`` when
unbound; a value given with ``extra=`` wins), plus ``correlation``: the bound ids as
``key=value`` text for plain formats.  Attach it to a *handler* (as :func:`configure_logging`
does), not to a logger: a handler's filters see the records of every logger that propagates to
it.

:class:`JsonFormatter` writes one JSON object per line (msgspec-encoded): time (UTC, ISO 8601),
level, logger, message, the three ids, the ``extra`` fields of the record (the supervision
events' ``aura_event`` / ``aura_path``, say), and the exception's traceback when there is one.
Values JSON cannot carry are written as their ``str()``.

Log lines cannot be forged or turned against a terminal.  Saga ids, service names and error
text are often chosen by callers or remote services, so both formats escape what a terminal or
a log reader would act on (see :func:`actors._policies._redact.escape_control`):
:class:`PlainFormatter` writes the record's line with every control character escaped (a newline in
a message or an id is ``\\n``, an ``ESC`` is ``\\x1b``) and indents each line of a traceback, so
every line that starts a record is a record; :class:`JsonFormatter` leaves no raw C1 control,
separator or bidi character in the JSON (msgspec already escapes C0).

Nor can they carry a secret.  The library's own loggers redact their records before any handler
sees them (:mod:`actors._policies._logs`); both formatters redact every record's message and
traceback too, so lines of other loggers (an SDK quoting the request it sent) are clean as well.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Final, TextIO

import msgspec

from actors._core._correlation import CORRELATION, EMPTY_IDS
from actors._policies._logs import LOG_MAX_LENGTH, format_exception, redact_lines
from actors._policies._redact import escape_control, redact

__all__ = [
    "CORRELATION_FIELDS",
    "CorrelationFilter",
    "JsonFormatter",
    "PlainFormatter",
    "configure_logging",
    "correlation",
    "correlation_ids",
]

#: The correlation ids every record carries, in the order they are printed.
CORRELATION_FIELDS: Final = ("saga_id", "idempotency_key", "service")

_EMPTY: Final[Mapping[str, str]] = EMPTY_IDS
_IDS: Final = CORRELATION  # shared with the built-in actors, which bind it around their work

# Attributes every LogRecord has; anything else on a record came from `extra=` (or a filter).
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "correlation", *CORRELATION_FIELDS}

PLAIN_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s%(correlation)s: %(message)s"


@contextmanager
def correlation(
    *,
    saga_id: str | None = None,
    idempotency_key: str | None = None,
    service: str | None = None,
) -> Iterator[Mapping[str, str]]:
    """Bind correlation ids for the ``with`` block (and the tasks started inside it).

    Ids given as ``None`` keep the value bound by an enclosing block.  Yields the ids now
    bound.  Raises ``TypeError`` when an id is not a string.

    Example::

        with correlation(saga_id="order-42", service="payments"):
            log.info("charging")     # the record carries saga_id and service
    """
    given = {"saga_id": saga_id, "idempotency_key": idempotency_key, "service": service}
    current = dict(_IDS.get())
    for name, value in given.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError(f"correlation id {name} must be a string, got {value!r}")
        current[name] = value
    ids = MappingProxyType(current)
    token = _IDS.set(ids)
    try:
        yield ids
    finally:
        _IDS.reset(token)


def correlation_ids() -> Mapping[str, str]:
    """The correlation ids bound in the current context (read-only; empty when none)."""
    return _IDS.get()


class CorrelationFilter(logging.Filter):
    """Adds the bound correlation ids to every record (see the module docstring).

    Never rejects a record.  Example::

        handler = logging.StreamHandler()
        handler.addFilter(CorrelationFilter())
        handler.setFormatter(logging.Formatter("%(service)s %(saga_id)s %(message)s"))
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``saga_id``, ``idempotency_key``, ``service`` and ``correlation``; keep it."""
        ids = _IDS.get()
        fields = record.__dict__
        parts = None
        for name in CORRELATION_FIELDS:
            value = fields.get(name)
            if value is None:
                value = fields[name] = ids.get(name) if ids else None
            if value is not None:
                if parts is None:
                    parts = []
                parts.append(f"{name}={value}")
        fields["correlation"] = f" [{' '.join(parts)}]" if parts else ""
        return True


def _fallback(value: object) -> object:
    return str(value)


# msgspec escapes C0 controls in JSON strings but writes DEL, C1 controls, separators and bidi
# characters raw: these become JSON escapes (the line still decodes to the same text).
_JSON_ESCAPES: Final = {
    code: f"\\u{code:04x}"
    for code in (0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
                 *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}  # fmt: skip


_IDS_FILTER: Final = CorrelationFilter()


def _message(record: logging.LogRecord) -> str:
    """The record's message, redacted (once: a library record's is redacted already)."""
    message = record.getMessage()
    if record.__dict__.get("_aura_redacted"):
        return message
    return redact(message, max_length=LOG_MAX_LENGTH)


def _exception_text(record: logging.LogRecord) -> str:
    """The record's traceback, redacted (a library record's is redacted already; records of
    other loggers, an SDK's say, are redacted here)."""
    if record.exc_info and record.exc_info[1] is not None:
        return format_exception(record.exc_info[1])
    if record.exc_text:
        if record.__dict__.get("_aura_exc_redacted"):
            return record.exc_text
        return redact_lines(record.exc_text)
    return ""


class PlainFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose lines cannot be forged (see the module docstring).

    The record's line (``fmt``, default ``time LEVEL logger [ids]: message``) has every
    control character escaped, so it stays one line; a traceback or stack keeps its line
    breaks, escaped otherwise, with every line indented by two spaces.  The record itself is
    not changed (its cached ``exc_text`` is left for other handlers).
    """

    def __init__(self, fmt: str = "", datefmt: str | None = None) -> None:
        super().__init__(fmt or PLAIN_FORMAT, datefmt)
        self._uses_time = self.usesTime()
        # The last second formatted and its text: a burst of lines (a crash loop) formats the
        # date once a second rather than once a line.
        self._stamp: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As :meth:`logging.Formatter.formatTime`, the date part reused within a second."""
        if datefmt or self.converter is not time.localtime:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached_second, date = self._stamp
        if second != cached_second:
            date = time.strftime(self.default_time_format, time.localtime(record.created))
            self._stamp = (second, date)
        return self.default_msec_format % (date, record.msecs) if self.default_msec_format else date

    def format(self, record: logging.LogRecord) -> str:
        """The record as one escaped line, then its indented traceback, if any."""
        if "correlation" not in record.__dict__:
            _IDS_FILTER.filter(record)  # used without the filter: the ids bound now
        record.message = _message(record)
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        text = escape_control(self.formatMessage(record))
        blocks = []
        exception = _exception_text(record)
        if exception:
            blocks.append(exception)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            for line in escape_control(block, keep_newlines=True).split("\n"):
                text += "\n  " + line
        return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the fields).

    Example output::

        {"time":"2025-01-01T12:00:00.000Z","level":"WARNING","logger":"supervisors",
         "message":"workers/w1 crashed (restarts=0): RuntimeError: boom",
         "saga_id":null,"idempotency_key":null,"service":null,
         "aura_event":"crashed","aura_path":"workers/w1"}
    """

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder(enc_hook=_fallback)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line (no trailing newline)."""
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        data: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        ids = _IDS.get()
        for name in CORRELATION_FIELDS:
            value = record.__dict__.get(name)
            data[name] = ids.get(name) if value is None else value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        exception = _exception_text(record)
        if exception:
            data["exception"] = exception
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        try:
            line = self._encoder.encode(data).decode()
        except (TypeError, ValueError, OverflowError):
            # A value msgspec refuses even through the fallback (a non-string dict key):
            # stringify every extra rather than lose the record.
            safe = {k: v if isinstance(v, str) else str(v) for k, v in data.items()}
            line = self._encoder.encode(safe).decode()
        return line if line.isprintable() else line.translate(_JSON_ESCAPES)


def configure_logging(
    *,
    json: bool = False,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    logger: logging.Logger | None = None,
) -> logging.Handler:
    """Send log records to ``stream`` with correlation ids, as plain text or JSON lines.

    Args:
        json: one JSON object per line (:class:`JsonFormatter`) instead of plain text
            (``time LEVEL logger [ids]: message``).
        level: the level set on ``logger`` (default ``INFO``).
        stream: where to write (default ``sys.stderr``).
        logger: the logger to attach the handler to (default: the root logger).

    Returns:
        The handler added (remove it with ``logger.removeHandler(handler)``).  Calling this
        again adds another handler; it does not replace the first.
    """
    target = logging.getLogger() if logger is None else logger
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if json else PlainFormatter())
    target.addHandler(handler)
    target.setLevel(level)
    return handler
