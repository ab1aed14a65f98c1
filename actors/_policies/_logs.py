"""The library's loggers: nothing they let out carries a secret.

Theory of operation
-------------------
Exception text is the usual carrier of secrets: a provider error quotes the request that failed
(a URL with a password, an ``Authorization`` header, an ``sk-...`` key), and that text ends up in
crash lines, saga lines and tracebacks.  Rather than trust every call site to redact what it
logs, every logger of the library is made by :func:`library_logger`, which attaches one
:class:`RedactingFilter`: the filter runs on every record the logger emits, before any handler
sees it, and

* replaces the record's message (its ``msg % args``) by its redacted text;
* formats its traceback (``exc_info``) once, redacts it line by line, and stores the result as
  the record's ``exc_text`` with ``exc_info`` cleared, so the stdlib formatter (and ours) prints
  the redacted traceback and no handler can format the raw one again.

A test lists every logger under ``actors`` and ``supervisors`` and checks each has the filter,
so a module that takes ``logging.getLogger`` directly is caught.

Cost: a filter runs only for records that are emitted (the logger is enabled for the level), so
a disabled DEBUG line costs what ``isEnabledFor`` costs.  Call sites on hot paths check
``logger.isEnabledFor(level)`` before they build arguments.

:func:`describe_exception` is the redacted ``"Type: message"`` of an exception, for text that
leaves the process by other ways (supervision events, error replies, alerts).
"""

from __future__ import annotations

import logging
import traceback
from typing import Final

from actors._policies._redact import redact

__all__ = [
    "LOG_MAX_LENGTH",
    "RedactingFilter",
    "describe_exception",
    "format_exception",
    "library_logger",
    "redact_lines",
]

#: The longest message a library record carries (longer ones are cut, marked, and redacted).
LOG_MAX_LENGTH: Final = 4000

#: The longest line of a traceback kept (each line is redacted on its own).
_LINE_MAX_LENGTH: Final = 2000


def describe_exception(exc: BaseException, *, max_length: int = 1000) -> str:
    """``"Type: message"`` of ``exc``, redacted and bounded; never raises.

    An exception whose ``__str__`` raises is described by its type alone.
    """
    try:
        text = str(exc)
    except Exception:
        text = ""
    name = type(exc).__name__
    return f"{name}: {redact(text, max_length=max_length)}" if text else name


def redact_lines(text: str) -> str:
    """``text`` redacted line by line (a traceback: each line bounded, newlines kept)."""
    return "\n".join(redact(line, max_length=_LINE_MAX_LENGTH) for line in text.split("\n"))


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` (with its chained causes and grouped exceptions), redacted.

    What can carry a secret is an exception's message (and a note), not a frame: the lines
    naming a file, a line and a function, and the source line shown under them, are code.  So
    only the other lines are redacted, and the frames are written without the column carets
    (``^^^^``), which cost a parse of the source line per frame: a crash line stays cheap.
    """
    try:
        summary = traceback.TracebackException.from_exception(exc)
        _without_carets(summary, set())
        chunks = list(summary.format())
    except Exception:  # a broken __str__ deep in the chain: keep what can be said
        return describe_exception(exc)
    for index, chunk in enumerate(chunks):
        if not chunk.lstrip(" |").startswith('File "'):
            chunks[index] = redact_lines(chunk)
    return "".join(chunks).rstrip("\n")


def _without_carets(summary: traceback.TracebackException, seen: set[int]) -> None:
    """Drop the column positions of every frame of ``summary`` and of the exceptions linked to
    it (causes, contexts, groups), so that formatting draws no carets."""
    if id(summary) in seen:
        return
    seen.add(id(summary))
    for frame in summary.stack:
        frame.colno = frame.end_colno = None
    linked = [summary.__cause__, summary.__context__, *(getattr(summary, "exceptions", None) or ())]
    for other in linked:
        if other is not None:
            _without_carets(other, seen)


class RedactingFilter(logging.Filter):
    """Redacts a record's message and traceback in place (see the module docstring).

    Never rejects a record.  Attached to every library logger by :func:`library_logger`;
    attach it to a handler to cover records of other loggers too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record``'s message and traceback; keep the record.

        A record logged with ``extra={"_aura_redacted": True}`` declares its message built from
        redacted parts (a crash line quoting a reason redacted where it was made): its message
        is kept as it is, its traceback is still redacted.
        """
        if not record.__dict__.get("_aura_redacted"):
            try:
                message = record.getMessage()
            except Exception:
                # A message that does not format: never with raw arguments.
                message = str(record.msg)
            record.msg = redact(message, max_length=LOG_MAX_LENGTH)
            record.args = None
            record._aura_redacted = True
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            record.exc_text = format_exception(exc_info[1])
            record.exc_info = None
        elif record.exc_text and not record.__dict__.get("_aura_exc_redacted"):
            record.exc_text = redact_lines(record.exc_text)
        record._aura_exc_redacted = True
        return True


_FILTER: Final = RedactingFilter()


def library_logger(name: str) -> logging.Logger:
    """The stdlib logger ``name`` with the library's :class:`RedactingFilter` attached.

    Every module of ``actors`` and ``supervisors`` that logs takes its logger here.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(_FILTER)
    return logger
