"""The trace context a message carries: W3C ``traceparent`` and ``tracestate``, as data.

A :class:`TraceContext` is what the built-in messages (``Call``, ``StartSaga``,
``SagaStepMessage``) carry so that a trace crosses the mailbox, a process boundary or a
journal: the actor's tasks do not inherit the caller's ``contextvars``, so the context travels
in the message instead.  It is plain text in the W3C Trace Context format, so it is small
(about 60 bytes), journals and encodes as any other field, and means the same to every
OpenTelemetry SDK.  This module imports neither trio nor OpenTelemetry.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["TraceContext"]


class TraceContext(msgspec.Struct, frozen=True, gc=False):
    """A span's context as W3C Trace Context headers (the parent of what a message causes).

    Build one with :func:`~actors.current_trace_context` (the caller's span, or ``None`` when
    no span is active or OpenTelemetry is not configured); the :class:`~actors.Provider`
    client and the saga coordinator fill it in for you.  A context that does not parse is
    ignored (the work then starts a new trace): it never fails a call.

    Attributes:
        traceparent: ``"00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"``.
        tracestate: the vendors' ``tracestate`` header, if any (``""``).
    """

    traceparent: str
    tracestate: str = ""

    def otel_context(self) -> Any:
        """The OpenTelemetry ``Context`` whose current span is this one: pass it as the
        ``context`` of a span your actor starts for the work a message asks (an empty context,
        so a new trace, when it does not parse).  Needs ``opentelemetry-api``.

        Example::

            with tracer.start_as_current_span("reserve", context=message.trace.otel_context()):
                ...
        """
        from opentelemetry.context import Context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {"traceparent": self.traceparent}
        if self.tracestate:
            carrier["tracestate"] = self.tracestate
        try:
            return TraceContextTextMapPropagator().extract(carrier)
        except Exception:  # anything a foreign message may hold
            return Context()
