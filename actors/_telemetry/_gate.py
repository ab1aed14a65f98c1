"""Whether aura-actors records OpenTelemetry traces and metrics, and with what.

Theory of operation
-------------------
OpenTelemetry is optional (the ``otel`` extra: ``opentelemetry-api`` only).  Its API does
nothing until the application installs an SDK's providers, and aura-actors then does nothing
either, at no measurable cost: the built-in actors resolve a :class:`Telemetry` once, when
an incarnation starts (:func:`telemetry`), and get ``None`` when the API is not installed or no
provider is configured; their hot paths test that ``None`` and nothing else.  A caller's side
(:func:`current_trace_context`, used by the ``Provider`` client) reads one module global, set
by the same resolution, before it looks at any context.

So configure OpenTelemetry (``trace.set_tracer_provider``, ``metrics.set_meter_provider``)
before the tree starts, or call :func:`configure_telemetry` with the providers to use: actors
started afterwards (a restart included) pick them up.

Traces cross actors in messages, not in ``contextvars`` (an actor's tasks do not inherit their
callers'): :meth:`Telemetry.capture` turns the current span into a :class:`TraceContext`, and
:meth:`Telemetry.start` starts a span whose parent is one (or a fresh trace without).  Under
trio, a task's ``contextvars`` are its own, so what an actor attaches in one of its tasks
(the attempt's span, while the service's function runs) is never seen by another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from actors._telemetry import _names as N
from actors._telemetry._trace import TraceContext

__all__ = ["Telemetry", "configure_telemetry", "current_trace_context", "telemetry"]

#: The histogram buckets (seconds) suggested to the SDK for durations: API calls from 5 ms to
#: 2 minutes (the same as the Prometheus exposition's default ``histogram_buckets``).
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

_force_setattr: Any = getattr(msgspec.structs, "force_setattr", lambda *_: None)

# The providers given to configure_telemetry (None: OpenTelemetry's global ones).
_chosen: tuple[Any, Any] = (None, None)
# The resolved telemetry per (tracer provider, meter provider), so instruments are created
# once per provider (an SDK warns about duplicates).
_resolved: dict[tuple[int, int], Telemetry] = {}
# The telemetry the last resolution found, when it traces: what a caller's side reads.
_tracing: Telemetry | None = None


def configure_telemetry(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Record aura-actors' spans and metrics with these OpenTelemetry providers.

    ``None`` (the default for each) means OpenTelemetry's global provider, which records
    nothing until the application sets one; ``configure_telemetry()`` goes back to the global
    ones.  Actors started from now on use them (running actors keep what they resolved when
    they started).  Needs the ``otel`` extra only to record: without OpenTelemetry installed
    this does nothing.
    """
    global _chosen
    _chosen = (tracer_provider, meter_provider)
    telemetry()


def fill_trace(message: Any) -> None:
    """Give ``message`` (a frozen Struct with a ``trace`` field left ``None``) the current
    span's context, when aura-actors traces: what ``__post_init__`` of the messages that carry
    a trace calls.  One global read when it does not trace."""
    active = _tracing
    if active is not None and message.trace is None:
        trace = active.capture()
        if trace is not None:
            _force_setattr(message, "trace", trace)


def current_trace_context() -> TraceContext | None:
    """The current span's context as a :class:`TraceContext`, to put in a message (``Call``,
    ``StartSaga``) so that what it causes joins the caller's trace.

    ``None`` when aura-actors does not trace (OpenTelemetry not installed or not configured
    when the actors started) or no valid span is current.  Never raises.
    """
    active = _tracing
    if active is None:
        return None
    return active.capture()


def telemetry() -> Telemetry | None:
    """Resolve what to record with now: ``None`` when nothing is recorded.

    Actors call it when an incarnation starts; it also updates what
    :func:`current_trace_context` reads.
    """
    global _tracing
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        _tracing = None
        return None
    tracer_provider, meter_provider = _chosen
    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
    if _noop_tracer_provider(tracer_provider):
        tracer_provider = None
    if _noop_meter_provider(meter_provider):
        meter_provider = None
    if tracer_provider is None and meter_provider is None:
        _tracing = None
        return None
    key = (id(tracer_provider), id(meter_provider))
    found = _resolved.get(key)
    if found is None:
        found = _resolved[key] = Telemetry(tracer_provider, meter_provider)
    _tracing = found if found.tracer is not None else None
    return found


# (Telemetry attribute, instrument, description) of the duration histograms, in seconds.
_HISTOGRAMS: Final = (
    ("call_duration", N.CALL_DURATION, "Provider calls, from admission to the answer."),
    ("attempt_duration", N.ATTEMPT_DURATION, "Attempts against a provider's service."),
    ("saga_duration", N.SAGA_DURATION, "Sagas, from their start (or recovery) to their end."),
    ("saga_step_duration", N.SAGA_STEP_DURATION, "Saga steps and compensations."),
)
# (Telemetry attribute, instrument, unit, description) of the counters.
_COUNTERS: Final = (
    ("events", N.EVENTS, "{event}", "Resilience events of provider actors."),
    ("retry_calls", N.RETRY_CALLS, "{call}", "Provider calls by retry outcome."),
    ("not_permitted", N.NOT_PERMITTED, "{call}", "Calls the circuit breaker refused."),
)


def _noop_tracer_provider(provider: Any) -> bool:
    from opentelemetry import trace

    return isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _noop_meter_provider(provider: Any) -> bool:
    from opentelemetry import metrics

    if isinstance(provider, metrics.NoOpMeterProvider):
        return True
    # The API's stand-in until a provider is set (a private class: matched by name).
    return type(provider).__name__ == "_ProxyMeterProvider"


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("aura-actors")
    except importlib.metadata.PackageNotFoundError:  # a source tree
        return "unknown"


class Telemetry:
    """What the built-in actors record with: a tracer and the instruments (either may be
    ``None``), and the conversions between spans and :class:`TraceContext`.

    Made by :func:`telemetry` only.  Every method is safe to call with bad input (a context
    that does not parse starts a new trace).
    """

    __slots__ = (
        "_current_span",
        "_empty",
        "_error",
        "_providers",
        "_set_in_context",
        "attach",
        "attempt_duration",
        "breaker_state",
        "call_duration",
        "detach",
        "events",
        "not_permitted",
        "retry_calls",
        "saga_duration",
        "saga_step_duration",
        "tracer",
    )

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode

        self._providers = (tracer_provider, meter_provider)  # kept: their ids are the key
        version = _version()
        self.tracer: Any = (
            None if tracer_provider is None else tracer_provider.get_tracer(N.SCOPE, version)
        )
        self._set_in_context = trace.set_span_in_context
        self._current_span = trace.get_current_span
        self._empty = context.Context()
        self._error = (Status, StatusCode.ERROR)
        self.attach: Any = context.attach
        self.detach: Any = context.detach
        self.call_duration: Any = None
        self.attempt_duration: Any = None
        self.events: Any = None
        self.retry_calls: Any = None
        self.not_permitted: Any = None
        self.breaker_state: Any = None
        self.saga_duration: Any = None
        self.saga_step_duration: Any = None
        if meter_provider is not None:
            self._instruments(meter_provider.get_meter(N.SCOPE, version))

    def _instruments(self, meter: Any) -> None:
        buckets = list(DURATION_BUCKETS)
        for attribute, name, description in _HISTOGRAMS:
            histogram = meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=buckets,
            )
            setattr(self, attribute, histogram)
        for attribute, name, unit, description in _COUNTERS:
            setattr(self, attribute, meter.create_counter(name, unit, description))
        self.breaker_state = meter.create_gauge(
            N.BREAKER_STATE,
            unit="1",
            description="1 for the circuit breaker's current state, 0 for the others.",
        )

    # ------------------------------------------------------------------ trace contexts

    def capture(self) -> TraceContext | None:
        """The current span's context (``None`` without a valid one)."""
        span = self._current_span()
        if not span.get_span_context().is_valid:
            return None
        return self.context_of(span)

    @staticmethod
    def context_of(span: Any) -> TraceContext | None:
        """``span``'s context as a :class:`TraceContext` (``None`` for an invalid one)."""
        if span is None:
            return None
        sc = span.get_span_context()
        if not sc.is_valid:
            return None
        state = sc.trace_state.to_header() if sc.trace_state else ""
        return TraceContext(f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}", state)

    def parent(self, trace: TraceContext | None) -> Any:
        """The OpenTelemetry context whose span is ``trace`` (an empty one for ``None`` or a
        context that does not parse: the span started under it begins a new trace)."""
        if trace is None:
            return self._empty
        return trace.otel_context()

    def start(self, name: str, parent: Any, attributes: Mapping[str, Any] | None = None) -> Any:
        """Start a span named ``name`` under ``parent`` (an OpenTelemetry context from
        :meth:`parent`, or a span); ``None`` without a tracer."""
        tracer = self.tracer
        if tracer is None:
            return None
        if parent is not None and not isinstance(parent, Mapping):  # a span
            parent = self._set_in_context(parent)
        return tracer.start_span(name, context=parent, attributes=attributes)

    def current(self, span: Any) -> object:
        """Make ``span`` current in this task; returns the token for :attr:`detach`."""
        return self.attach(self._set_in_context(span))

    def fail(self, span: Any, error_type: str, description: str = "") -> None:
        """Mark ``span`` failed with ``error.type`` (a category, never a message that might
        hold a secret)."""
        status, code = self._error
        span.set_attribute(N.ERROR_TYPE, error_type)
        span.set_status(status(code, description or error_type))

    def event(self, name: str, service: str, severity: str = "Warning") -> None:
        """Count a resilience event (Polly's ``event.name`` / ``event.severity``)."""
        if self.events is not None:
            self.events.add(1, {N.SERVICE: service, N.EVENT_NAME: name, N.EVENT_SEVERITY: severity})

    def breaker(self, service: str, new: str, states: Sequence[str]) -> None:
        """Record a breaker's new state on the state gauge (1 for it, 0 for ``states``'
        others)."""
        gauge = self.breaker_state
        if gauge is None:
            return
        for state in states:
            gauge.set(1 if state == new else 0, {N.SERVICE: service, N.STATE: state})
