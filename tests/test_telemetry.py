"""OpenTelemetry: trace context in messages, provider spans and metrics, read back with the
SDK's in-memory span exporter and metric reader."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import msgspec
import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from actors import (
    BreakerSettings,
    Call,
    CircuitOpen,
    ErrorCategory,
    ProviderActor,
    RetriesExhausted,
    TraceContext,
    configure_telemetry,
    current_trace_context,
    open_actor,
)
from actors._policies._config._monitoring import DEFAULT_HISTOGRAM_BUCKETS
from actors._provider._client import Provider
from actors._telemetry import DURATION_BUCKETS, telemetry
from actors._telemetry import _names as N
from tests.test_provider import FakeService, HTTPStatus, settings
from tests.trio_seeds import run_seeded


@attrs.define
class Otel:
    """The SDK's in-memory exporters, and a tracer for the callers' spans."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer: trace.Tracer

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.spans.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def points(self, instrument: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == instrument
            for point in metric.data.data_points
        ]

    def count(self, instrument: str, **attributes: Any) -> float:
        """The sum (counters) or count (histograms) of the points with these attributes."""
        total = 0.0
        for point in self.points(instrument):
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                total += point.count if hasattr(point, "count") else point.value
        return total


@contextmanager
def recording() -> Iterator[Otel]:
    """Record aura-actors' telemetry with the SDK's in-memory exporters meanwhile."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    configure_telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Otel(spans, reader, tracer_provider.get_tracer("test"))
    finally:
        configure_telemetry()
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    with recording() as found:
        yield found


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: Any) -> int:
    return int(span.get_span_context().span_id)


# ================================================================================ off


async def test_nothing_is_recorded_without_configuration() -> None:
    """With OpenTelemetry's providers not set, nothing resolves: no trace context is captured,
    calls carry none, and the provider records nothing (its hot path tests one None)."""
    assert telemetry() is None
    tracer = trace.get_tracer("test")  # the API's no-op tracer
    with tracer.start_as_current_span("caller"):
        assert current_trace_context() is None
    async with open_actor(lambda: ProviderActor("svc", FakeService()), name="svc") as ref:
        assert await Provider(ref).call(1) == ("reply", 1)
        assert ref._cell.incarnation.actor._tel is None  # type: ignore[union-attr]


def test_trace_context_is_a_small_message_field() -> None:
    """A Call (and a saga's messages) carry the context as plain W3C text: it survives msgpack
    and JSON, and a Call without one encodes as before."""
    context = TraceContext("00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", "vendor=x")
    call = Call({"q": 1}, "k", context)
    for module in (msgspec.msgpack, msgspec.json):
        assert module.decode(module.encode(call), type=Call) == call
    assert len(msgspec.msgpack.encode(context)) < 100
    bare = msgspec.json.encode(Call(1, "k"))
    assert b"trace" not in bare or b'"trace":null' in bare


def test_duration_buckets_match_the_prometheus_histogram() -> None:
    """The buckets suggested to the SDK are the Prometheus exposition's default."""
    assert DURATION_BUCKETS == DEFAULT_HISTOGRAM_BUCKETS


# ================================================================================ spans


async def test_call_and_attempt_spans_follow_the_caller(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """The caller's span is the parent of the call span, and each attempt's span is a child of
    the call span; failed attempts are errors with their category, the call is not."""
    service = FakeService(HTTPStatus(503), HTTPStatus(503), "ok")
    async with open_actor(lambda: ProviderActor("svc", service, settings()), name="svc") as ref:
        with otel.tracer.start_as_current_span("caller") as caller:
            assert await Provider(ref).call(1) == ("reply", 1)
    [call] = otel.finished("call svc")
    attempts = sorted(otel.finished("attempt svc"), key=lambda s: s.start_time or 0)
    assert parent_of(call) == span_id(caller)
    assert call.context.trace_id == caller.get_span_context().trace_id
    assert len(attempts) == 3
    for number, attempt in enumerate(attempts):
        assert parent_of(attempt) == call.context.span_id
        assert attempt.attributes[N.ATTEMPT_NUMBER] == number
        assert attempt.attributes[N.SERVICE] == "svc"
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert attempts[0].attributes[N.ERROR_TYPE] == ErrorCategory.DEPENDENCY.value
    assert attempts[0].attributes[N.ATTEMPT_HANDLED] is True
    assert attempts[2].attributes[N.ATTEMPT_HANDLED] is False
    assert call.status.status_code is StatusCode.UNSET
    assert call.attributes[N.ATTEMPT_NUMBER] == 2


async def test_the_service_function_runs_under_its_attempt_span(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """Spans the service's function makes (an instrumented HTTP client's) are children of the
    attempt's span, and the worker task forgets it afterwards."""
    inner: list[tuple[int, int | None]] = []
    outside: list[bool] = []

    async def service(payload: Any) -> Any:
        with otel.tracer.start_as_current_span("http") as span:
            inner.append((payload, parent_of(span)))  # type: ignore[arg-type]
        return payload

    async with open_actor(lambda: ProviderActor("svc", service), name="svc") as ref:
        provider: Provider[Any, Any] = Provider(ref)
        with otel.tracer.start_as_current_span("caller"):
            await provider.call(1)
        await provider.call(2)
        outside.append(trace.get_current_span().get_span_context().is_valid)
    attempts = {s.context.span_id: s for s in otel.finished("attempt svc")}
    for _payload, parent in inner:
        assert parent in attempts
    calls = otel.finished("call svc")
    assert len(calls) == 2
    untraced = next(c for c in calls if c.parent is None)  # no caller span: a trace of its own
    assert untraced.context.trace_id != next(c for c in calls if c.parent).context.trace_id
    assert outside == [False]


async def test_a_call_sent_to_the_mailbox_carries_the_trace(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """A Call asked through the mailbox carries the span current where it was made (or the
    one given): the call span is that span's child."""
    async with open_actor(lambda: ProviderActor("svc", FakeService()), name="svc") as ref:
        with otel.tracer.start_as_current_span("caller") as caller:
            trace_context = current_trace_context()
            assert trace_context is not None
            assert Call(6).trace == trace_context
            assert await ref.ask(Call(7)) == ("reply", 7)
        with otel.tracer.start_as_current_span("elsewhere"):
            assert await ref.ask(Call(8, trace=trace_context)) == ("reply", 8)
    calls = otel.finished("call svc")
    assert len(calls) == 2
    assert all(parent_of(call) == span_id(caller) for call in calls)


async def test_a_bad_trace_context_starts_a_new_trace(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """A context that does not parse (from another process, say) never fails the call."""
    async with open_actor(lambda: ProviderActor("svc", FakeService()), name="svc") as ref:
        for bad in ("garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", ""):
            assert await ref.ask(Call(1, trace=TraceContext(bad, "\x00"))) == ("reply", 1)
    calls = otel.finished("call svc")
    assert len(calls) == 3
    assert all(c.parent is None for c in calls)


class _Crashable(ProviderActor):
    """A provider that crashes on the message "crash" (to be restarted by its supervisor)."""

    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash requested")
        return await super().handle(message)


async def test_a_call_queued_across_a_restart_keeps_its_trace(
    otel: Otel, mock_clock: trio.testing.MockClock
) -> None:
    """A call waiting in the mailbox while the provider restarts is handled by the next
    incarnation under the caller's span (the context is in the message, not in a task); the
    attempt the restart cut short ends as cancelled."""
    from supervisors import ChildSpec, RestartBackoff, open_supervisor

    service = FakeService(("sleep", 100.0))
    backoff = RestartBackoff(min_delay=1.0, max_delay=1.0, jitter=0.0)
    spec = ChildSpec("svc", lambda: _Crashable("svc", service), backoff=backoff)
    async with open_supervisor([spec]) as root:
        provider: Provider[Any, Any] = Provider(root.ref("svc"))
        got: list[Any] = []

        async def cut_short() -> None:
            with otel.tracer.start_as_current_span("first"):
                try:
                    await provider.call(1, timeout=1000)
                except Exception as exc:
                    got.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut_short)
            await trio.sleep(1.0)  # the attempt runs
            root.ref("svc").tell_nowait("crash")  # restarted by its supervisor, after 1 s
            await trio.testing.wait_all_tasks_blocked()
            assert root.ref("svc").statistics().state.value == "restarting"
            with otel.tracer.start_as_current_span("second") as second:
                assert await provider.call(2, timeout=1000) == ("reply", 2)
        assert got == ["ActorCrashed"]
        assert root.ref("svc").statistics().incarnation == 2
    calls = {s.attributes.get(N.ERROR_TYPE, "ok"): s for s in otel.finished("call svc")}
    assert parent_of(calls["ok"]) == span_id(second)
    assert calls["cancellation"].status.status_code is StatusCode.ERROR
    cut = [a for a in otel.finished("attempt svc") if a.status.status_code is StatusCode.ERROR]
    assert len(cut) == 1
    assert cut[0].attributes[N.ERROR_TYPE] == ErrorCategory.CANCELLATION.value


def test_concurrent_callers_keep_their_own_traces() -> None:
    """Under trio every task has its own context: many callers with their own spans, calls
    interleaved on a few workers, over 100 schedules; every call span's parent is its
    caller's, every attempt's is its call's, every span the service makes is under its own
    attempt, and the workers are left with no current span."""
    for seed in range(100):
        spans = InMemorySpanExporter()
        provider_ = TracerProvider()
        provider_.add_span_processor(SimpleSpanProcessor(spans))
        configure_telemetry(tracer_provider=provider_)
        try:
            run_seeded(_concurrent_callers, seed, provider_.get_tracer("test"), seed)
        finally:
            configure_telemetry()
        _check_concurrent(list(spans.get_finished_spans()))


async def _concurrent_callers(tracer: trace.Tracer, seed: int) -> None:
    rng = random.Random(seed)

    async def service(payload: Any) -> Any:
        await trio.sleep(rng.random())
        with tracer.start_as_current_span(f"inner {payload}"):
            await trio.sleep(rng.random())
        if rng.random() < 0.3:
            raise HTTPStatus(503)
        return payload

    config = settings(attempts=3, delay=0.5, bulkhead=_bulkhead(3))
    async with open_actor(lambda: ProviderActor("svc", service, config), name="svc") as ref:
        provider: Provider[Any, Any] = Provider(ref)

        async def caller(i: int) -> None:
            await trio.sleep(rng.random())
            with tracer.start_as_current_span(f"caller {i}"):
                try:
                    await provider.call(i, key=f"k{i % 7}" if i % 2 else None, timeout=100)
                except (RetriesExhausted, HTTPStatus, CircuitOpen, Exception):
                    pass

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(caller, i)


def _bulkhead(n: int) -> Any:
    from actors import BulkheadSettings

    return BulkheadSettings(max_concurrent=n, max_queued=100)


def _check_concurrent(spans: list[ReadableSpan]) -> None:
    by_id = {s.context.span_id: s for s in spans}
    calls = [s for s in spans if s.name == "call svc"]
    assert calls
    for call in calls:
        caller = by_id[parent_of(call)]  # type: ignore[index]
        assert caller.name.startswith("caller ")
        assert call.context.trace_id == caller.context.trace_id
    for attempt in (s for s in spans if s.name == "attempt svc"):
        assert by_id[parent_of(attempt)].name == "call svc"  # type: ignore[index]
    for inner in (s for s in spans if s.name.startswith("inner ")):
        attempt = by_id[parent_of(inner)]  # type: ignore[index]
        assert attempt.name == "attempt svc"
        call = by_id[parent_of(attempt)]  # type: ignore[index]
        caller = by_id[parent_of(call)]  # type: ignore[index]
        payload = int(inner.name.split()[1])
        # The caller whose call ran (joined callers share the first caller's call).
        assert caller.name == f"caller {payload}"


# ================================================================================ metrics


async def test_provider_metrics(otel: Otel, mock_clock: trio.testing.MockClock) -> None:
    """Call and attempt durations (on trio's clock), retry outcomes by resilience4j's kinds,
    Polly's events, the breaker's state and its refusals."""
    service = FakeService(HTTPStatus(503), "ok", HTTPStatus(503), HTTPStatus(503))
    breaker = BreakerSettings(failure_threshold=2)
    config = settings(attempts=2, delay=1.0, breaker=breaker)
    async with open_actor(lambda: ProviderActor("svc", service, config), name="svc") as ref:
        provider: Provider[Any, Any] = Provider(ref)
        assert await provider.call(1) == ("reply", 1)  # a retry, then success
        with pytest.raises(Exception):  # noqa: B017, PT011 - two failures open the breaker
            await provider.call(2)
        with pytest.raises(CircuitOpen):
            await provider.call(3)
    assert otel.count(N.CALL_DURATION, **{N.SERVICE: "svc", N.OUTCOME: "success"}) == 1
    assert otel.count(N.CALL_DURATION, **{N.OUTCOME: "failure"}) == 1
    [success] = [p for p in otel.points(N.CALL_DURATION) if p.attributes[N.OUTCOME] == "success"]
    assert success.sum == pytest.approx(1.0)  # the retry's delay, in virtual seconds
    assert otel.count(N.ATTEMPT_DURATION, **{N.ATTEMPT_NUMBER: 0}) == 2
    assert otel.count(N.ATTEMPT_DURATION, **{N.ATTEMPT_NUMBER: 1}) == 2
    assert otel.count(N.ATTEMPT_DURATION, **{N.ATTEMPT_HANDLED: True}) == 3
    assert otel.count(N.RETRY_CALLS, kind="successful_with_retry") == 1
    assert otel.count(N.RETRY_CALLS, kind="failed_with_retry") == 1
    assert otel.count(N.EVENTS, **{N.EVENT_NAME: "OnRetry"}) == 2
    assert otel.count(N.EVENTS, **{N.EVENT_NAME: "OnCircuitOpened"}) == 1
    assert otel.count(N.NOT_PERMITTED, **{N.SERVICE: "svc"}) == 1
    states = {p.attributes[N.STATE]: p.value for p in otel.points(N.BREAKER_STATE)}
    assert states == {"open": 1, "closed": 0, "half_open": 0, "isolated": 0}
