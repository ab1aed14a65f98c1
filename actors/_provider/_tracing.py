"""A provider's OpenTelemetry spans and metrics (only when telemetry is configured).

Theory of operation
-------------------
A provider actor resolves its :class:`~actors._telemetry.Telemetry` when an incarnation starts
(``None``: nothing is recorded, and the job machinery tests ``job.obs is None`` and nothing
else).  With telemetry, every job gets an :class:`_Obs`:

* the *call span* ``"call {service}"``, whose parent is the caller's span carried in the
  message (``Call.trace``, or the ``Provider`` client's direct lane), starts when the call is
  admitted and ends with its answer (every joiner shares it);
* one *attempt span* ``"attempt {service}"`` per attempt under it, current in the worker task
  while the service's function runs, so the spans the function makes (an instrumented HTTP
  client's) are its children; it ends with the attempt's outcome.

Failures set the span status to error with ``error.type`` = the error category (never the
error's message, which may hold a secret).  Metrics: ``aura.provider.call.duration`` and
``aura.provider.attempt.duration`` (seconds on trio's clock), ``aura.retry.calls`` by
resilience4j's kinds, ``aura.provider.events`` by Polly's event names, the breaker state gauge
and the breaker's refusals (see ``actors._telemetry._names``).
"""

from __future__ import annotations

from typing import Any, Final

from actors._errors import ErrorCategory
from actors._protocol import BREAKER_STATES
from actors._telemetry import Telemetry, TraceContext
from actors._telemetry import _names as N

__all__: list[str] = []

_STATES: Final = tuple(sorted(BREAKER_STATES))
_CANCELLATION: Final = ErrorCategory.CANCELLATION.value


class _Obs:
    """What is recorded about one job: its call span and the running attempt's span."""

    __slots__ = ("attempt", "span", "tel", "token")

    def __init__(self, tel: Telemetry, span: Any) -> None:
        self.tel = tel
        self.span = span
        self.attempt: Any = None
        self.token: object = None  # the attempt span made current in the worker task


def call_started(tel: Telemetry, service: str, trace: TraceContext | None) -> _Obs:
    """A call was admitted: its span, under the caller's."""
    span = None
    if tel.tracer is not None:
        span = tel.start(f"call {service}", tel.parent(trace), {N.SERVICE: service})
    return _Obs(tel, span)


def attempt_started(service: str, obs: _Obs, number: int) -> None:
    """An attempt starts in this (worker) task: its span is current until it ends."""
    if obs.span is None:
        return
    tel = obs.tel
    span = obs.attempt = tel.start(
        f"attempt {service}", obs.span, {N.SERVICE: service, N.ATTEMPT_NUMBER: number}
    )
    obs.token = tel.current(span)


def attempt_left(obs: _Obs) -> None:
    """The worker task is done with the attempt: its span is no longer current there."""
    token = obs.token
    if token is not None:
        obs.token = None
        obs.tel.detach(token)


def attempt_ended(
    service: str,
    obs: _Obs,
    number: int,
    latency: float,
    category: ErrorCategory | str | None = None,
) -> None:
    """An attempt's outcome: success without ``category``, else a failure of that category."""
    tel = obs.tel
    failed = category is not None
    error_type = getattr(category, "value", category) if failed else ""
    span = obs.attempt
    if span is not None:
        obs.attempt = None
        span.set_attribute(N.ATTEMPT_HANDLED, failed)
        if failed:
            tel.fail(span, str(error_type))
        span.end()
    histogram = tel.attempt_duration
    if histogram is not None:
        attributes: dict[str, Any] = {
            N.SERVICE: service,
            N.ATTEMPT_NUMBER: number,
            N.ATTEMPT_HANDLED: failed,
        }
        if failed:
            attributes[N.ERROR_TYPE] = error_type
        histogram.record(latency, attributes)


def call_ended(
    service: str,
    obs: _Obs,
    duration: float,
    attempts: int,
    error: BaseException | None = None,
    *,
    cancelled: bool = False,
) -> None:
    """A call was answered (``error`` for a failure), or abandoned (``cancelled``: every
    caller gave up)."""
    tel = obs.tel
    failed = cancelled or error is not None
    error_type = ""
    if cancelled:
        error_type = _CANCELLATION
    elif error is not None:
        category = getattr(error, "category", None)
        error_type = str(getattr(category, "value", category or ErrorCategory.UNKNOWN.value))
    span = obs.span
    if span is not None:
        obs.span = None
        span.set_attribute(N.ATTEMPT_NUMBER, max(0, attempts - 1))
        if failed:
            tel.fail(span, error_type)
        span.end()
    histogram = tel.call_duration
    if histogram is None:
        return
    attributes: dict[str, Any] = {N.SERVICE: service, N.OUTCOME: "failure" if failed else "success"}
    if failed:
        attributes[N.ERROR_TYPE] = error_type
    histogram.record(duration, attributes)
    if cancelled:
        return
    retried = "with_retry" if attempts > 1 else "without_retry"
    kind = f"failed_{retried}" if failed else f"successful_{retried}"
    tel.retry_calls.add(1, {N.SERVICE: service, N.KIND: kind})


def stopped_during(service: str, obs: _Obs, attempts: int, running_for: float) -> None:
    """The actor stopped (or crashed) while the call was in progress: its callers were told
    so; its attempt (if one was running) and the call end as cancelled."""
    if obs.attempt is not None:
        attempt_ended(service, obs, max(0, attempts - 1), running_for, _CANCELLATION)
    obs.token = None  # it was current in a task that is gone
    call_ended(service, obs, running_for, attempts, cancelled=True)


def not_permitted(tel: Telemetry, service: str) -> None:
    """The circuit breaker refused a call (resilience4j's ``not_permitted`` calls)."""
    if tel.not_permitted is not None:
        tel.not_permitted.add(1, {N.SERVICE: service})


def breaker_state(tel: Telemetry, service: str, state: str) -> None:
    """The breaker's state as an incarnation starts (the gauge only: no transition)."""
    tel.breaker(service, state, _STATES)


def breaker_moved(tel: Telemetry, service: str, new: str) -> None:
    """A breaker transition: the state gauge and Polly's ``OnCircuit...`` event."""
    tel.breaker(service, new, _STATES)
    name = N.ON_CIRCUIT.get(new)
    if name is not None:
        tel.event(name, service, "Error" if new == "open" else "Information")
