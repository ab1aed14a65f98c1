"""Provider actors: every path of the call flow, in virtual time."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    BulkheadFull,
    CircuitOpen,
    ErrorCategory,
    IdempotencyConflict,
    ProviderError,
    RateLimited,
    RetriesExhausted,
    RetryBudgetExhausted,
    open_actor,
)
from actors._policies._backoff import BackoffSettings
from actors._policies._breaker import BreakerSettings
from actors._policies._budget import BudgetSettings
from actors._policies._bulkhead import BulkheadSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._ratelimit import RateLimiterSettings
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from actors._provider._messages import GetStatus, ProviderStatus


class HTTPStatus(Exception):
    """An error that carries an HTTP status, like an HTTP client's status error."""

    def __init__(self, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        if retry_after is not None:
            self.headers = {"Retry-After": str(retry_after)}


class FakeService:
    """Plays a script of outcomes (exceptions to raise, ("sleep", s), or values) per call."""

    def __init__(self, *script: Any) -> None:
        self.script: deque[Any] = deque(script)
        self.calls: list[tuple[float, Any]] = []
        self.finished = 0
        self.cancelled = 0

    async def __call__(self, payload: Any) -> Any:
        self.calls.append((trio.current_time(), payload))
        step = self.script.popleft() if self.script else "ok"
        try:
            while isinstance(step, tuple) and step[0] == "sleep":
                await trio.sleep(step[1])
                step = step[2] if len(step) > 2 else "ok"
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.finished += 1
        if isinstance(step, BaseException):
            raise step
        return ("reply", payload) if step == "ok" else step


def settings(**kw: Any) -> ProviderSettings:
    retry = kw.pop("retry", None) or RetrySettings(
        max_attempts=kw.pop("attempts", 3),
        attempt_timeout=kw.pop("attempt_timeout", 10.0),
        total_timeout=kw.pop("total_timeout", 60.0),
        backoff=BackoffSettings(kind="constant", base_delay=kw.pop("delay", 1.0), jitter="none"),
    )
    return ProviderSettings(retry=retry, **kw)


@asynccontextmanager
async def provider(
    service: FakeService, config: ProviderSettings | None = None, **kw: Any
) -> AsyncIterator[Provider[Any, Any]]:
    async with open_actor(
        lambda: ProviderActor("svc", service, config or settings(), **kw), name="svc"
    ) as ref:
        yield Provider(ref)


async def status(p: Provider[Any, Any]) -> ProviderStatus:
    return await p.status()


async def test_success_path(mock_clock: trio.testing.MockClock) -> None:
    """A call returns the service's reply; counters record one attempt."""
    service = FakeService()
    async with provider(service) as p:
        assert await p.call(1) == ("reply", 1)
        s = await status(p)
        assert (s.calls, s.succeeded, s.attempts, s.retries) == (1, 1, 1, 0)


async def test_retry_then_success(mock_clock: trio.testing.MockClock) -> None:
    """Transient failures are retried after the backoff delay until one succeeds."""
    service = FakeService(ConnectionError("reset"), TimeoutError("slow"), "ok")
    async with provider(service, settings(attempts=3, delay=2.0)) as p:
        start = trio.current_time()
        assert await p.call("x") == ("reply", "x")
        assert [t - start for t, _ in service.calls] == pytest.approx([0.0, 2.0, 4.0])
        assert (await status(p)).retries == 2


async def test_retries_exhausted(mock_clock: trio.testing.MockClock) -> None:
    """Every attempt failing ends in RetriesExhausted with the last error and its category."""
    service = FakeService(*[ConnectionError(f"reset {i}") for i in range(5)])
    async with provider(service, settings(attempts=3)) as p:
        with pytest.raises(RetriesExhausted) as info:
            await p.call("x")
        assert info.value.attempts == 3
        assert info.value.category is ErrorCategory.NETWORK
        assert isinstance(info.value.last_error, ProviderError)
        assert "reset 2" in str(info.value.last_error)
        assert len(service.calls) == 3


async def test_non_transient_is_not_retried(mock_clock: trio.testing.MockClock) -> None:
    """A validation failure is answered at once, classified, with the cause chained."""
    service = FakeService(HTTPStatus(422))
    async with provider(service) as p:
        with pytest.raises(ProviderError) as info:
            await p.call("bad")
        assert info.value.category is ErrorCategory.VALIDATION
        assert info.value.status_code == 422
        assert isinstance(info.value.__cause__, HTTPStatus)
        assert len(service.calls) == 1


async def test_retry_after_is_honoured(mock_clock: trio.testing.MockClock) -> None:
    """A 429 with Retry-After waits at least that long before the retry."""
    service = FakeService(HTTPStatus(429, retry_after=7), "ok")
    async with provider(service, settings(delay=0.5)) as p:
        start = trio.current_time()
        assert await p.call("x") == ("reply", "x")
        assert service.calls[1][0] - start == pytest.approx(7.0)


async def test_attempt_timeout_then_retry(mock_clock: trio.testing.MockClock) -> None:
    """An attempt past its timeout is cancelled, counted as a timeout, and retried."""
    service = FakeService(("sleep", 100.0), "ok")
    async with provider(service, settings(attempt_timeout=3.0, delay=1.0)) as p:
        start = trio.current_time()
        assert await p.call("x") == ("reply", "x")
        assert service.cancelled == 1
        assert service.calls[1][0] - start == pytest.approx(4.0)


async def test_deadline_stops_retries(mock_clock: trio.testing.MockClock) -> None:
    """No retry starts when its delay would pass the caller's deadline."""
    service = FakeService(*[ConnectionError("reset")] * 5)
    async with provider(service, settings(attempts=5, delay=4.0)) as p:
        start = trio.current_time()
        with pytest.raises(RetriesExhausted) as info:
            await p.call("x", timeout=10.0)
        assert info.value.attempts == 3  # at 0, 4, 8; the next (12) would pass 10
        assert trio.current_time() - start == pytest.approx(8.0)


async def test_attempts_capped_by_callers_deadline(mock_clock: trio.testing.MockClock) -> None:
    """An attempt never runs past the caller's deadline."""
    service = FakeService(("sleep", 100.0))
    async with provider(service, settings(attempt_timeout=30.0)) as p:
        start = trio.current_time()
        with pytest.raises(TimeoutError):  # ProviderTimeout or AskTimeout: both at 5 s
            await p.call("x", timeout=5.0)
        assert trio.current_time() - start == pytest.approx(5.0)
        await trio.testing.wait_all_tasks_blocked()
        assert service.cancelled == 1  # the attempt was cancelled with the caller


async def test_budget_exhausted(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """When the retry budget is spent, a failure is not retried: RetryBudgetExhausted.  The
    refusal is counted and logged at WARNING (the first at once, then one line a minute)."""
    caplog.set_level(logging.WARNING, logger="actors.provider")
    service = FakeService(*[ConnectionError("down")] * 50)
    budget = BudgetSettings(ttl=10.0, min_retries_per_s=0.0, retry_ratio=0.0)
    async with provider(service, settings(attempts=5, budget=budget)) as p:
        with pytest.raises(RetryBudgetExhausted) as info:
            await p.call("x")
        assert isinstance(info.value.last_error, ProviderError)
        assert len(service.calls) == 1
        with pytest.raises(RetryBudgetExhausted):
            await p.call("x")
        status = await p.ref.ask(GetStatus())
    assert status.retry_budget_rejections == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.provider"]
    assert lines == [
        "'svc': retry budget exhausted: failures are not retried (RetryBudgetExhausted); "
        "1 refused since the last such line (one a minute at most)"
    ]


async def test_breaker_opens_and_fails_fast(mock_clock: trio.testing.MockClock) -> None:
    """Consecutive failures open the breaker; calls then fail fast with retry_after and
    never reach the service; after the break a probe that succeeds closes it."""
    service = FakeService(*[ConnectionError("down")] * 3)
    breaker = BreakerSettings(failure_threshold=3, break_duration=30.0)
    async with provider(service, settings(attempts=1, breaker=breaker)) as p:
        for _ in range(3):
            with pytest.raises(ProviderError):
                await p.call("x")
        start = trio.current_time()
        with pytest.raises(CircuitOpen) as info:
            await p.call("x")
        assert trio.current_time() == start  # no round trip, no wait
        assert info.value.retry_after == pytest.approx(30.0)
        assert len(service.calls) == 3
        assert (await status(p)).breaker == "open"
        await trio.sleep(30.0)
        assert await p.call("probe") == ("reply", "probe")  # half-open probe succeeds
        assert (await status(p)).breaker == "closed"


async def test_half_open_probe_failure_reopens(mock_clock: trio.testing.MockClock) -> None:
    """A failing half-open probe re-opens the breaker for another break."""
    service = FakeService(ConnectionError("a"), ConnectionError("probe fails"))
    breaker = BreakerSettings(failure_threshold=1, break_duration=10.0)
    async with provider(service, settings(attempts=1, breaker=breaker)) as p:
        with pytest.raises(ProviderError):
            await p.call("x")
        await trio.sleep(10.0)
        with pytest.raises(ProviderError):
            await p.call("probe")
        assert (await status(p)).breaker == "open"
        with pytest.raises(CircuitOpen):
            await p.call("x")


async def test_validation_errors_do_not_trip_the_breaker(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Failures that do not count against the breaker never open it."""
    service = FakeService(*[HTTPStatus(400)] * 10)
    breaker = BreakerSettings(failure_threshold=2)
    async with provider(service, settings(breaker=breaker)) as p:
        for _ in range(10):
            with pytest.raises(ProviderError):
                await p.call("x")
        assert (await status(p)).breaker == "closed"


async def test_isolate_and_reset(mock_clock: trio.testing.MockClock) -> None:
    """An operator can hold the breaker open and close it again."""
    service = FakeService()
    async with provider(service) as p:
        assert (await p.isolate()).breaker == "isolated"
        with pytest.raises(CircuitOpen) as info:
            await p.call("x")
        assert info.value.retry_after is None
        assert info.value.isolated
        assert (await p.reset()).breaker == "closed"
        assert await p.call("x") == ("reply", "x")


async def test_bulkhead_full(mock_clock: trio.testing.MockClock) -> None:
    """Past max_concurrent running and max_queued waiting, calls get BulkheadFull."""
    service = FakeService(*[("sleep", 5.0)] * 10)
    bulkhead = BulkheadSettings(max_concurrent=2, max_queued=1)
    async with provider(service, settings(bulkhead=bulkhead)) as p:
        results: list[Any] = []

        async def call(i: int) -> None:
            results.append(await p.call(i))

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()
            s = await status(p)
            assert (s.running, s.queued) == (2, 1)
            with pytest.raises(BulkheadFull):
                await p.call(99)
        assert sorted(r[1] for r in results) == [0, 1, 2]
        assert len(service.calls) == 3


async def test_rate_limited(mock_clock: trio.testing.MockClock) -> None:
    """Calls wait for a token when the wait fits their deadline, else get RateLimited."""
    service = FakeService()
    limit = RateLimiterSettings(rate=1.0, burst=2)
    async with provider(service, settings(rate_limit=limit)) as p:
        start = trio.current_time()
        for i in range(3):
            await p.call(i)
        assert [t - start for t, _ in service.calls] == pytest.approx([0.0, 0.0, 1.0])
        await p.call(3)  # spends the token that came back at 2.0
        with pytest.raises(RateLimited) as info:
            await p.call(4, timeout=0.5)
        assert info.value.retry_after > 0.5


async def test_idempotent_cache_hit(mock_clock: trio.testing.MockClock) -> None:
    """The same key and payload runs once; later calls get the stored reply."""
    service = FakeService()
    async with provider(service) as p:
        first = await p.call({"n": 1}, key="k")
        assert await p.call({"n": 1}, key="k") == first
        assert len(service.calls) == 1


async def test_idempotent_join(mock_clock: trio.testing.MockClock) -> None:
    """A second caller with the same key joins the call in flight: one execution, two replies."""
    service = FakeService(("sleep", 3.0))
    async with provider(service) as p:
        results: list[Any] = []

        async def call() -> None:
            results.append(await p.call("same", key="k"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call)
        assert results == [("reply", "same")] * 2
        assert len(service.calls) == 1


async def test_idempotency_conflict(mock_clock: trio.testing.MockClock) -> None:
    """The same key with a different payload is an IdempotencyConflict."""
    service = FakeService()
    async with provider(service) as p:
        await p.call("one", key="k")
        with pytest.raises(IdempotencyConflict) as info:
            await p.call("two", key="k")
        assert info.value.key == "k"
        assert len(service.calls) == 1


async def test_transient_failures_are_not_cached(mock_clock: trio.testing.MockClock) -> None:
    """A key whose call failed transiently runs again; a validation failure is cached."""
    service = FakeService(ConnectionError("down"), "ok", HTTPStatus(422))
    async with provider(service, settings(attempts=1)) as p:
        with pytest.raises(ProviderError):
            await p.call("x", key="t")
        assert await p.call("x", key="t") == ("reply", "x")
        with pytest.raises(ProviderError):
            await p.call("y", key="v")
        with pytest.raises(ProviderError) as info:
            await p.call("y", key="v")
        assert info.value.category is ErrorCategory.VALIDATION
        assert len(service.calls) == 3


async def test_cancelled_caller_cancels_unshared_work(mock_clock: trio.testing.MockClock) -> None:
    """When the only caller gives up, the attempt in flight is cancelled."""
    service = FakeService(("sleep", 100.0))
    async with provider(service) as p:
        with trio.move_on_after(2.0):
            await p.call("x", key="k")
        await trio.testing.wait_all_tasks_blocked()
        assert service.cancelled == 1
        s = await status(p)
        assert (s.running, s.queued, s.waiting) == (0, 0, 0)
        # The abandoned key is forgotten: the next call runs the service again.
        assert await p.call("x", key="k") == ("reply", "x")


async def test_cancelled_caller_keeps_shared_work(mock_clock: trio.testing.MockClock) -> None:
    """A caller giving up does not cancel work another caller joined."""
    service = FakeService(("sleep", 5.0))
    async with provider(service) as p:
        got: list[Any] = []

        async def patient() -> None:
            got.append(await p.call("x", key="k", timeout=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patient)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(1.0):
                await p.call("x", key="k")
        assert got == [("reply", "x")]
        assert service.cancelled == 0
        assert len(service.calls) == 1


async def test_fallback_function(mock_clock: trio.testing.MockClock) -> None:
    """A call that fails for good is answered by the fallback, which sees the error."""
    service = FakeService(*[ConnectionError("down")] * 3)
    seen: list[BaseException] = []

    async def fallback(payload: Any, error: BaseException) -> Any:
        seen.append(error)
        return ("fallback", payload)

    async with provider(service, settings(attempts=2), fallback=fallback) as p:
        assert await p.call("x") == ("fallback", "x")
        assert isinstance(seen[0], RetriesExhausted)
        assert (await status(p)).fallbacks == 1


async def test_fallback_provider_on_open_breaker(mock_clock: trio.testing.MockClock) -> None:
    """With an open breaker, calls go to the fallback provider actor."""
    primary = FakeService(ConnectionError("down"))
    backup = FakeService()
    breaker = BreakerSettings(failure_threshold=1, break_duration=60.0)
    async with (
        open_actor(lambda: ProviderActor("backup", backup), name="backup") as backup_ref,
        provider(primary, settings(attempts=1, breaker=breaker), fallback=backup_ref) as p,
    ):
        assert await p.call("a") == ("reply", "a")  # primary fails once: fallback answers
        assert await p.call("b") == ("reply", "b")  # breaker open: straight to the fallback
        assert len(primary.calls) == 1
        assert [payload for _, payload in backup.calls] == ["a", "b"]


async def test_hedging(mock_clock: trio.testing.MockClock) -> None:
    """A slow attempt is hedged after the delay; the first success wins, the loser is
    cancelled."""
    service = FakeService(("sleep", 50.0), ("sleep", 1.0))
    async with provider(service, settings(hedging_delay=2.0)) as p:
        start = trio.current_time()
        assert await p.call("x") == ("reply", "x")
        assert trio.current_time() - start == pytest.approx(3.0)
        assert service.cancelled == 1
        assert (await status(p)).hedges == 1


async def test_bad_messages_get_clear_errors(mock_clock: trio.testing.MockClock) -> None:
    """A message of the wrong type is refused with a TypeError; the actor survives."""
    service = FakeService()
    async with open_actor(lambda: ProviderActor("svc", service), name="svc") as ref:
        with pytest.raises(TypeError, match="accepts Call"):
            await ref.ask("not a call")
        status_reply = await ref.ask(GetStatus())
        assert status_reply.calls == 0
        assert ref.statistics().incarnation == 1


async def test_provider_function_raising_base_exception(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A service raising a non-cancellation BaseException gets a classified error reply."""

    class Weird(BaseException):
        pass

    async def weird(payload: Any) -> Any:
        raise Weird("odd")

    async with open_actor(lambda: ProviderActor("svc", weird), name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        with pytest.raises(ProviderError) as info:
            await p.call("x")
        assert info.value.category is ErrorCategory.UNKNOWN
        assert ref.statistics().incarnation == 1


def test_constructor_validation() -> None:
    """A provider needs an async function (or an object with `call`)."""
    with pytest.raises(TypeError, match="async function"):
        ProviderActor("svc", 42)

    class Client:
        async def call(self, payload: Any) -> Any:
            return payload

    assert ProviderActor("svc", Client()).name == "svc"


async def test_reports_never_block_and_drops_are_counted(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With the monitor's mailbox full, reports wait for a later flush; past
    max_pending_reports they are dropped and counted, and calls never wait for the monitor."""
    from actors import Actor

    class SlowMonitor(Actor[Any, Any]):
        def __init__(self) -> None:
            self.reports = 0

        async def handle(self, message: Any) -> Any:
            if message == "count":
                return self.reports
            await trio.sleep(1000.0)  # stuck: its mailbox (capacity 1) fills up
            return None

    service = FakeService()
    async with open_actor(SlowMonitor, name="monitor", capacity=1) as monitor:
        monitor.tell_nowait("block")  # the monitor is busy with this one
        await trio.testing.wait_all_tasks_blocked()
        monitor.tell_nowait("fill")  # and its mailbox is full
        async with provider(
            service, monitor=monitor, report_interval=1.0, max_pending_reports=5
        ) as p:
            start = trio.current_time()
            for i in range(12):
                await p.call(i)
            assert trio.current_time() == start  # no call waited for the monitor
            await trio.sleep(1.5)  # a flush attempt: the monitor cannot take the batch
            s = await status(p)
            # 13 reports (the start-up breaker state report and 12 calls): the state report
            # is kept, with the 4 newest call reports.
            assert s.reports_dropped == 13 - 5
            assert s.succeeded == 12


async def test_attempts_carry_correlation_ids(mock_clock: trio.testing.MockClock) -> None:
    """Log records written during an attempt carry the service and the idempotency key."""
    from actors._core._correlation import CORRELATION

    seen: list[dict[str, str]] = []

    async def service(payload: Any) -> Any:
        seen.append(dict(CORRELATION.get()))
        return payload

    async with open_actor(lambda: ProviderActor("svc", service), name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        await p.call(1, key="k-1")
        await p.call(2)
    assert seen == [{"service": "svc", "idempotency_key": "k-1"}, {"service": "svc"}]


async def test_idempotency_outlives_a_restart(mock_clock: trio.testing.MockClock) -> None:
    """A key completed before the provider restarted is answered from its stored outcome
    after the restart; the service does not run it again."""
    from supervisors import ChildSpec, open_supervisor

    service = FakeService()
    async with open_supervisor([ChildSpec("svc", lambda: ProviderActor("svc", service))]) as root:
        p: Provider[Any, Any] = Provider(root.ref("svc"))
        first = await p.call("x", key="once")
        await root.terminate_child("svc")
        await root.restart_child("svc")
        assert root.ref("svc").statistics().incarnation == 2
        assert await p.call("x", key="once") == first
        assert len(service.calls) == 1


async def test_unsent_reports_survive_a_restart(mock_clock: trio.testing.MockClock) -> None:
    """Reports a provider could not send yet (no monitor reachable) are sent by the next
    incarnation: the monitor's totals still equal the attempts made."""
    from actors import GetServiceMetrics, MonitorActor
    from supervisors import ChildSpec, open_supervisor

    service = FakeService()
    spec = ChildSpec("svc", lambda: ProviderActor("svc", service, monitor="monitor"))
    async with open_supervisor([spec]) as root:
        p: Provider[Any, Any] = Provider(root.ref("svc"))
        for i in range(3):
            await p.call(i)
        await trio.sleep(1.0)  # a flush finds no monitor: the reports wait
        await root.terminate_child("svc")
        await root.restart_child("svc")
        monitor = await root.start_child(ChildSpec("monitor", MonitorActor))
        await p.call(3)
        await trio.sleep(1.0)
        metrics = await monitor.ask(GetServiceMetrics("svc"))
        assert metrics.totals.calls == len(service.calls) == 4


async def test_successful_calls_leave_no_garbage_cycles() -> None:
    """A finished call's job, idempotency entry and reply are freed by reference counting:
    the hot path leaves the garbage collector nothing to find (it would cost every call)."""
    import gc

    async def echo(payload: Any) -> Any:
        return payload

    async with open_actor(lambda: ProviderActor("svc", echo), name="svc") as ref:
        provider: Provider[Any, Any] = Provider(ref)
        await provider.call(0, key="warm")
        gc.collect()
        gc.disable()
        try:
            for i in range(2000):
                await provider.call(i, key=f"k{i}")
                await provider.call(i)
            found = gc.collect()
        finally:
            gc.enable()
    assert found < 100, f"{found} objects were left in reference cycles by 4000 calls"


@pytest.mark.parametrize("how", ["crash", "restart"])
async def test_attempts_cut_short_by_a_crash_are_reported(
    mock_clock: trio.testing.MockClock, how: str
) -> None:
    """Attempts running when the provider actor crashes (or is restarted) are reported by the
    next incarnation as cancelled attempts: the monitor counts every attempt the service saw."""
    from actors import ActorError, ErrorCategory, GetServiceMetrics, MonitorActor, chaos
    from supervisors import ChildSpec, open_supervisor

    service = FakeService(("sleep", 100.0), ("sleep", 100.0), ("sleep", 100.0))
    crash = chaos.CrashInjector(rate=1.0, enabled=False)
    factory = chaos.wrap_actor(lambda: ProviderActor("svc", service, monitor="monitor"), crash)
    tree = [ChildSpec("monitor", MonitorActor), ChildSpec("svc", factory)]
    outcomes: list[BaseException] = []
    async with open_supervisor(tree) as root:
        p: Provider[Any, Any] = Provider(root.ref("svc"))

        async def caller(i: int) -> None:
            try:
                await p.call(i, timeout=1000)
            except ActorError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(caller, i)
            await trio.sleep(1.0)  # virtual time: every attempt has started
            assert len(service.calls) == 3
            if how == "crash":
                crash.enabled = True
                with pytest.raises(ActorError):
                    await p.status()  # handled through the mailbox: the actor crashes
                crash.enabled = False
            else:
                await root.terminate_child("svc")
                await root.restart_child("svc")
        assert len(outcomes) == 3  # every caller got an outcome from the runtime
        await p.call(3)  # queued for the next incarnation if it is not running yet
        assert root.ref("svc").statistics().incarnation == 2
        await trio.sleep(1.0)  # the next flush
        metrics = await root.ref("monitor").ask(GetServiceMetrics("svc"))
        assert metrics.totals.calls == len(service.calls) == 4
        assert metrics.totals.errors == 3
        assert metrics.totals.errors_by_category[ErrorCategory.CANCELLATION.value] == 3
