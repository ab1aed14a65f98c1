"""The OpenTelemetry names aura-actors records under: its meter and tracer, instruments,
attributes and events (the shape of Polly v8's ``resilience.polly.*`` telemetry and of
resilience4j's Micrometer meters, with OpenTelemetry's units: seconds)."""

from __future__ import annotations

from typing import Final

__all__: list[str] = []

#: The instrumentation scope (tracer and meter name).
SCOPE: Final = "aura-actors"

# ------------------------------------------------------------------------------ instruments

#: Histogram (s): one provider call, from admission to its answer (retries, waits and the
#: fallback included).  Polly: ``resilience.polly.pipeline.duration``.
CALL_DURATION: Final = "aura.provider.call.duration"
#: Histogram (s): one attempt against the service.  Polly:
#: ``resilience.polly.strategy.attempt.duration``.
ATTEMPT_DURATION: Final = "aura.provider.attempt.duration"
#: Counter: resilience events (``event.name``: ``OnRetry``, ``OnTimeout``, ``OnHedging``,
#: ``OnFallback``, ``OnCircuitOpened``, ...).  Polly: ``resilience.polly.strategy.events``.
EVENTS: Final = "aura.provider.events"
#: Counter: calls by retry outcome (``kind``: ``successful_without_retry``,
#: ``successful_with_retry``, ``failed_without_retry``, ``failed_with_retry``).
#: resilience4j: ``resilience4j.retry.calls``.
RETRY_CALLS: Final = "aura.retry.calls"
#: Counter: calls the circuit breaker refused.  resilience4j:
#: ``resilience4j.circuitbreaker.not.permitted.calls``.
NOT_PERMITTED: Final = "aura.circuitbreaker.not_permitted.calls"
#: Gauge: 1 for a breaker's current state, 0 for the others (``state``).  resilience4j:
#: ``resilience4j.circuitbreaker.state``.
BREAKER_STATE: Final = "aura.circuitbreaker.state"
#: Histogram (s): one saga run by a coordinator, from its start (or recovery) to its end.
SAGA_DURATION: Final = "aura.saga.duration"
#: Histogram (s): one saga step or compensation, retries included.
SAGA_STEP_DURATION: Final = "aura.saga.step.duration"

#: Every instrument, for documentation and tests.
INSTRUMENTS: Final = (
    CALL_DURATION,
    ATTEMPT_DURATION,
    EVENTS,
    RETRY_CALLS,
    NOT_PERMITTED,
    BREAKER_STATE,
    SAGA_DURATION,
    SAGA_STEP_DURATION,
)

# ------------------------------------------------------------------------------ attributes

SERVICE: Final = "aura.service"
OUTCOME: Final = "aura.outcome"
ERROR_TYPE: Final = "error.type"  # OpenTelemetry's: the error category here
ATTEMPT_NUMBER: Final = "aura.attempt.number"  # from 0, as Polly's attempt.number
ATTEMPT_HANDLED: Final = "aura.attempt.handled"  # the attempt failed (Polly's attempt.handled)
EVENT_NAME: Final = "event.name"
EVENT_SEVERITY: Final = "event.severity"
KIND: Final = "kind"
STATE: Final = "state"
SAGA_ID: Final = "aura.saga.id"
SAGA_DEFINITION: Final = "aura.saga.definition"
SAGA_STEP: Final = "aura.saga.step"
SAGA_STEP_INDEX: Final = "aura.saga.step.index"
SAGA_RECOVERED: Final = "aura.saga.recovered"
SAGA_COMPENSATION: Final = "aura.saga.compensation"

# ------------------------------------------------------------------------------ events (Polly)

ON_RETRY: Final = "OnRetry"
ON_TIMEOUT: Final = "OnTimeout"
ON_HEDGING: Final = "OnHedging"
ON_FALLBACK: Final = "OnFallback"
ON_CIRCUIT: Final = {
    "open": "OnCircuitOpened",
    "closed": "OnCircuitClosed",
    "half_open": "OnCircuitHalfOpened",
    "isolated": "OnCircuitIsolated",
}
