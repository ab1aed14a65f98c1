"""A saga coordinator's OpenTelemetry spans and metrics (only when telemetry is configured).

Theory of operation
-------------------
The coordinator resolves its :class:`~actors._telemetry.Telemetry` when an incarnation starts
(``None``: nothing is recorded; the driver tests ``run.obs is None`` and nothing else).  With
telemetry, every saga it drives gets a :class:`_SagaObs`:

* the *saga span* ``"saga {definition}"``, whose parent is the caller's span, is started when
  the coordinator takes the saga on and ended when the saga ends;
* one span per step (``"step {definition}.{step}"``) and per compensation
  (``"compensate {definition}.{step}"``) under it, covering its retries; its context goes in
  the step's message (``Call.trace``, ``SagaStepMessage.trace``), so the target's work (a
  provider's call span) is its child.

The caller's context is journaled with the saga (``StartSaga.trace`` goes into the header's
metadata as ``traceparent`` / ``tracestate``), so a coordinator that resumes the saga after a
restart, a crash or a ``kill -9`` starts a new saga span under the same parent: the trace
continues (the span says ``aura.saga.recovered``).  A saga span cut short by the coordinator
stopping ends without an outcome (``aura.saga.interrupted``).

Failures set the span status to error with ``error.type`` = the error category.  Metrics:
``aura.saga.duration`` (``aura.outcome`` = the final phase) and ``aura.saga.step.duration``,
in seconds on trio's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from actors._telemetry import Telemetry, TraceContext
from actors._telemetry import _names as N

__all__: list[str] = []

#: The metadata keys the caller's trace context is journaled under (W3C's header names).
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_CANCELLATION: Final = "cancellation"


def journaled_metadata(metadata: dict[str, Any], trace: TraceContext | None) -> dict[str, Any]:
    """``metadata`` with the caller's trace context added (unless it has one already)."""
    if trace is None or TRACEPARENT in metadata:
        return metadata
    out = dict(metadata)
    out[TRACEPARENT] = trace.traceparent
    if trace.tracestate:
        out[TRACESTATE] = trace.tracestate
    return out


def journaled_trace(metadata: Mapping[str, Any]) -> TraceContext | None:
    """The trace context journaled in a saga's metadata (``None`` without a usable one)."""
    parent = metadata.get(TRACEPARENT)
    if not isinstance(parent, str):
        return None
    state = metadata.get(TRACESTATE)
    return TraceContext(parent, state if isinstance(state, str) else "")


class _SagaObs:
    """What is recorded about one saga run: its span, and the step (or compensation) in
    progress."""

    __slots__ = (
        "definition",
        "span",
        "started",
        "step",
        "step_name",
        "step_span",
        "step_started",
        "step_trace",
        "tel",
    )

    def __init__(self, tel: Telemetry, definition: str, span: Any, now: float) -> None:
        self.tel = tel
        self.definition = definition
        self.span = span
        self.started = now
        self.step: str | None = None  # "step" or "compensate" while one is in progress
        self.step_name = ""
        self.step_span: Any = None
        self.step_started = 0.0
        #: The context the step's messages carry (``None`` without a tracer).
        self.step_trace: TraceContext | None = None


def saga_started(
    tel: Telemetry,
    saga_id: str,
    definition: str,
    metadata: Mapping[str, Any],
    now: float,
    *,
    recovered: bool,
) -> _SagaObs:
    """The coordinator takes a saga on (new, or resumed from its journal)."""
    span = None
    if tel.tracer is not None:
        attributes = {
            N.SAGA_ID: saga_id,
            N.SAGA_DEFINITION: definition,
            N.SAGA_RECOVERED: recovered,
        }
        span = tel.start(f"saga {definition}", tel.parent(journaled_trace(metadata)), attributes)
    return _SagaObs(tel, definition, span, now)


def step_started(obs: _SagaObs, index: int, name: str, now: float, *, compensate: bool) -> None:
    """A step (or a compensation) begins: its span, whose context its messages carry."""
    if obs.step is not None:  # one left open (the forward part was cut short)
        step_ended(obs, now, _CANCELLATION)
    obs.step = "compensate" if compensate else "step"
    obs.step_name = name
    obs.step_started = now
    if obs.span is not None:
        tel = obs.tel
        span = obs.step_span = tel.start(
            f"{obs.step} {obs.definition}.{name}",
            obs.span,
            {
                N.SAGA_DEFINITION: obs.definition,
                N.SAGA_STEP: name,
                N.SAGA_COMPENSATION: compensate,
                N.SAGA_STEP_INDEX: index,
            },
        )
        obs.step_trace = tel.context_of(span)


def step_ended(obs: _SagaObs, now: float, error_type: str | None = None) -> None:
    """The step (or compensation) in progress ended: failed with ``error_type``, or not."""
    if obs.step is None:
        return
    tel = obs.tel
    span = obs.step_span
    if span is not None:
        if error_type is not None:
            tel.fail(span, error_type)
        span.end()
    histogram = tel.saga_step_duration
    if histogram is not None:
        attributes: dict[str, Any] = {
            N.SAGA_DEFINITION: obs.definition,
            N.SAGA_STEP: obs.step_name,
            N.SAGA_COMPENSATION: obs.step == "compensate",
            N.OUTCOME: "success" if error_type is None else "failure",
        }
        if error_type is not None:
            attributes[N.ERROR_TYPE] = error_type
        histogram.record(now - obs.step_started, attributes)
    obs.step = None
    obs.step_span = obs.step_trace = None


def saga_ended(obs: _SagaObs, now: float, phase: str, error_type: str | None) -> None:
    """The saga ended in ``phase`` (``error_type``: why it did not complete)."""
    step_ended(obs, now, _CANCELLATION)
    tel = obs.tel
    span = obs.span
    if span is not None:
        obs.span = None
        span.set_attribute(N.OUTCOME, phase)
        if error_type is not None:
            tel.fail(span, error_type, phase)
        span.end()
    histogram = tel.saga_duration
    if histogram is not None:
        histogram.record(now - obs.started, {N.SAGA_DEFINITION: obs.definition, N.OUTCOME: phase})


def saga_left(obs: _SagaObs, now: float) -> None:
    """The coordinator lets go of a saga it did not end (it is stopping): the span ends
    without an outcome; a coordinator that resumes the saga continues the trace."""
    if obs.span is None:
        return
    step_ended(obs, now, _CANCELLATION)
    span = obs.span
    obs.span = None
    span.set_attribute("aura.saga.interrupted", True)
    span.end()
