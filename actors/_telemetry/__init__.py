"""OpenTelemetry support shared by the built-in actors: the trace context messages carry, the
resolution of what to record with, and the names recorded under.  No trio, and no
OpenTelemetry import until something is recorded (see ``_gate``)."""

from actors._telemetry._gate import (
    DURATION_BUCKETS,
    Telemetry,
    configure_telemetry,
    current_trace_context,
    fill_trace,
    telemetry,
)
from actors._telemetry._trace import TraceContext

__all__ = [
    "DURATION_BUCKETS",
    "Telemetry",
    "TraceContext",
    "configure_telemetry",
    "current_trace_context",
    "fill_trace",
    "telemetry",
]
