"""Provider actors at the edges: cancellation, joins, timeouts in the same batch as an answer,
fallbacks, hedging, the bulkhead's queue, graceful stops and the counters.

Races that depend on the order trio runs the tasks of one batch are repeated over many seeded
schedules (``tests.trio_seeds``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Actor,
    ActorStopped,
    AskTimeout,
    BulkheadFull,
    CircuitOpen,
    ProviderError,
    ProviderTimeout,
    open_actor,
)
from actors._policies._backoff import BackoffSettings
from actors._policies._breaker import BreakerSettings
from actors._policies._bulkhead import BulkheadSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._protocol import Call, CallReport
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from actors._provider._messages import ProviderStatus
from tests.test_provider import FakeService, HTTPStatus
from tests.trio_seeds import run_seeded

SEEDS = range(100)


def settings(
    *,
    attempts: int = 1,
    attempt_timeout: float = 30.0,
    total_timeout: float | None = 600.0,
    max_concurrent: int = 4,
    max_queued: int = 4,
    **kw: Any,
) -> ProviderSettings:
    retry = RetrySettings(
        max_attempts=attempts,
        attempt_timeout=attempt_timeout,
        total_timeout=total_timeout,
        backoff=BackoffSettings(kind="constant", base_delay=1.0, jitter="none"),
    )
    bulkhead = BulkheadSettings(max_concurrent=max_concurrent, max_queued=max_queued)
    return ProviderSettings(retry=retry, bulkhead=bulkhead, **kw)


@asynccontextmanager
async def provider(
    service: Any, config: ProviderSettings, shutdown: float = 5.0, **kw: Any
) -> AsyncIterator[Provider[Any, Any]]:
    async with open_actor(
        lambda: ProviderActor("svc", service, config, **kw), name="svc", shutdown=shutdown
    ) as ref:
        yield Provider(ref)


def balanced(s: ProviderStatus) -> bool:
    """Every call the provider took ended once, as a success or a failure."""
    return s.calls == s.succeeded + s.failed


async def settle(p: Provider[Any, Any], seconds: float = 60.0) -> ProviderStatus:
    """The provider's status once nothing is left to run (every delay has passed)."""
    await trio.sleep(seconds)
    s = await p.status()
    assert (s.running, s.queued, s.waiting) == (0, 0, 0), s
    return s


# ------------------------------------------------------------------ the direct lane


async def test_bulkhead_full_leaves_the_callers_task_alone(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A call refused with BulkheadFull has nothing left behind: the caller's task sleeps,
    waits and exits later without being woken by the refused call's timeout."""
    service = FakeService(("sleep", 20.0))
    async with provider(service, settings(max_concurrent=1, max_queued=0)) as p:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(p.call, "slow", timeout=1000.0))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(BulkheadFull):
                await p.call("x", timeout=5.0)
            start = trio.current_time()
            await trio.sleep(60.0)  # past the refused call's timeout
            assert trio.current_time() - start == 60.0
            event = trio.Event()
            nursery.start_soon(trio.sleep, 1.0)
            with trio.move_on_after(10.0):
                await event.wait()  # parked on something else: not woken by a stale timer
        s = await settle(p)
        assert (s.calls, s.rejected) == (2, 1)
        assert balanced(s), s


async def test_abandoned_queued_calls_free_their_places(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Direct-lane calls whose callers gave up while queued no longer count against
    max_queued: a new call is queued, not refused."""
    service = FakeService(("sleep", 100.0))
    async with (
        provider(service, settings(max_concurrent=1, max_queued=2)) as p,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(p.call, "slow")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(2):
            with pytest.raises(AskTimeout):
                await p.call(i, timeout=1.0)
        assert (await p.status()).queued == 0
        with trio.move_on_after(1.0):
            await p.call("queued")  # waits its turn instead of BulkheadFull
        assert (await p.status()).rejected == 0
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ the worker's cancel scope


def test_a_timeout_in_the_same_batch_as_the_answer_spares_the_next_call() -> None:
    """An answer that arrives in the same batch as the attempt's timeout leaves the worker
    fit for the next call: the next queued call runs its full attempt (over 100 schedules).

    The first answer is released by another task at the timeout's instant, so whether the
    timer or the answer comes first depends on the schedule."""

    async def main() -> tuple[Any, Any]:
        gate = trio.Event()

        async def service(payload: int) -> Any:
            if payload == 0:
                await gate.wait()
            else:
                await trio.sleep(1.0)
            return ("reply", payload)

        async def release() -> None:
            await trio.sleep(2.0)
            gate.set()

        outcomes: list[Any] = [None, None]
        config = settings(attempt_timeout=2.0, max_concurrent=1, max_queued=1)
        async with provider(service, config) as p:

            async def call(i: int) -> None:
                try:
                    outcomes[i] = await p.call(i)
                except ProviderTimeout as exc:
                    outcomes[i] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(release)
                nursery.start_soon(call, 0)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(call, 1)
            status = await p.status()
            assert balanced(status), status
        return outcomes[0], outcomes[1]

    answered_in_time = 0
    for seed in SEEDS:
        first, second = run_seeded(main, seed)
        assert first == ("reply", 0) or isinstance(first, ProviderTimeout), (seed, first)
        assert second == ("reply", 1), (seed, second)
        answered_in_time += first == ("reply", 0)
    assert 0 < answered_in_time < len(SEEDS)  # both orders were run


# ------------------------------------------------------------------ joins


def test_a_caller_joining_as_the_last_one_gives_up_is_answered() -> None:
    """A caller that joins a keyed call in the batch where its last caller gave up gets an
    answer, within its own timeout (over 100 schedules)."""

    async def main() -> tuple[Any, float]:
        service = FakeService(("sleep", 5.0), ("sleep", 5.0))
        got: list[Any] = []
        async with provider(service, settings()) as p:

            async def first() -> None:
                with trio.move_on_after(1.0):
                    await p.call("x", key="k")

            async def second() -> None:
                await trio.sleep(1.0)
                got.append(await p.call("x", key="k", timeout=math.inf))

            with trio.move_on_after(100.0) as guard:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first)
                    nursery.start_soon(second)
            assert not guard.cancelled_caught, "the joiner was never answered"
            status = await settle(p)
            assert status.calls == status.succeeded + status.failed, status
        return got[0], trio.current_time()

    for seed in SEEDS:
        reply, _ = run_seeded(main, seed)
        assert reply == ("reply", "x"), seed


async def test_a_joined_call_lives_as_long_as_its_longest_caller(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Two callers share a key: the one with the short timeout gives up at its own deadline
    and the other still gets the reply; the attempt is not cut at the first deadline."""
    service = FakeService(("sleep", 3.0))
    async with provider(service, settings()) as p:
        results: dict[str, Any] = {}

        async def call(name: str, seconds: float) -> None:
            try:
                results[name] = (await p.call("x", key="k", timeout=seconds), trio.current_time())
            except TimeoutError as exc:
                results[name] = (exc, trio.current_time())

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "a", 1.0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "b", 10.0)
        error, at = results["a"]
        assert isinstance(error, TimeoutError)
        assert at - start == 1.0
        assert results["b"] == (("reply", "x"), start + 3.0)
        assert service.cancelled == 0
        assert len(service.calls) == 1


async def test_each_joined_caller_times_out_at_its_own_deadline(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With a service slower than both callers, each caller's error comes at its own deadline
    and names its own timeout; the attempt is cancelled when the last one gives up."""
    service = FakeService(("sleep", 100.0))
    async with provider(service, settings()) as p:
        seen: dict[str, tuple[str, float]] = {}

        async def call(name: str, seconds: float) -> None:
            try:
                await p.call("x", key="k", timeout=seconds)
            except TimeoutError as exc:
                seen[name] = (str(exc), trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "a", 1.0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "b", 10.0)
        assert seen["a"][1] == 1.0
        assert seen["b"][1] == 10.0
        assert " 10 s" in seen["b"][0] or "10.0" in seen["b"][0], seen["b"][0]
        await trio.testing.wait_all_tasks_blocked()
        assert service.cancelled == 1
        await settle(p)


# ------------------------------------------------------------------ fallbacks


async def test_a_fallback_stops_with_its_last_caller_and_a_key_runs_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A fallback running for a call whose every caller left is cancelled, and the key stays
    in flight until it is: a retry with the same key never applies the fallback twice."""
    service = FakeService(*[HTTPStatus(503)] * 5)
    applied: list[str] = []
    cancelled: list[str] = []

    async def fallback(payload: Any, error: BaseException) -> Any:
        try:
            await trio.sleep(5.0)
        except trio.Cancelled:
            cancelled.append(payload)
            raise
        applied.append(payload)
        return ("fallback", payload)

    async with provider(service, settings(), fallback=fallback) as p:
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()  # cancelled from outside: no deadline the actor sees

            async def cancel_soon() -> None:
                await trio.sleep(1.0)
                scope.cancel()

            nursery.start_soon(cancel_soon)
            with scope:
                await p.call("order-7", key="order-7")
        await trio.testing.wait_all_tasks_blocked()
        assert cancelled == ["order-7"]
        assert await p.call("order-7", key="order-7") == ("fallback", "order-7")
        assert await p.call("order-7", key="order-7") == ("fallback", "order-7")
        s = await settle(p)
    assert applied == ["order-7"]
    assert balanced(s), s


async def test_a_failing_fallback_gives_every_caller_one_typed_error(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A fallback that raises a library error is translated at the provider's boundary, like
    the service's own failures: every caller of the call gets a ProviderError chained to it."""
    service = FakeService(("sleep", 1.0, HTTPStatus(503)))

    async def fallback(payload: Any, error: BaseException) -> Any:
        raise ConnectionError("fallback down")

    errors: list[BaseException] = []
    async with provider(service, settings(), fallback=fallback) as p:

        async def call() -> None:
            try:
                await p.call("x", key="k")
            except ProviderError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call)
    assert len(errors) == 2
    for error in errors:
        assert isinstance(error.__cause__, ConnectionError)


def test_a_caller_joining_a_cancelled_fallback_is_answered() -> None:
    """A caller joining a key whose fallback is being cancelled gets the fallback's answer
    (over 100 schedules)."""

    async def main() -> list[Any]:
        service = FakeService(*[HTTPStatus(503)] * 5)
        applied: list[Any] = []

        async def fallback(payload: Any, error: BaseException) -> Any:
            await trio.sleep(5.0)
            applied.append(payload)
            return ("fallback", payload)

        got: list[Any] = []
        async with provider(service, settings(), fallback=fallback) as p:

            async def first() -> None:
                with trio.move_on_after(1.0):
                    await p.call("x", key="k")

            async def second() -> None:
                await trio.sleep(1.0)
                got.append(await p.call("x", key="k", timeout=50.0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                nursery.start_soon(second)
            await settle(p)
        assert len(applied) == 1
        return got

    for seed in SEEDS:
        assert run_seeded(main, seed) == [("fallback", "x")], seed


# ------------------------------------------------------------------ hedging


def test_a_hedged_answer_in_the_batch_its_last_caller_leaves_is_kept() -> None:
    """With hedging on, an answer that arrives as the attempt is cancelled (its last caller
    left) is still the key's outcome, as it is without hedging: the service ran the call, so
    the next caller with the key gets that answer instead of running it again (over 100
    schedules)."""

    async def main() -> int:
        gate = trio.Event()
        runs: list[float] = []

        async def service(payload: Any) -> Any:
            await gate.wait()
            runs.append(trio.current_time())
            return ("reply", payload)

        async def release() -> None:
            await trio.sleep(2.0)
            gate.set()

        async with provider(service, settings(hedging_delay=5.0)) as p:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(release)
                with trio.move_on_after(2.0):
                    await p.call("x", key="k")
            await trio.sleep(1.0)
            assert await p.call("x", key="k") == ("reply", "x")
        return len(runs)

    for seed in SEEDS:
        assert run_seeded(main, seed) == 1, seed


async def test_hedging_never_resends_a_fast_failure(mock_clock: trio.testing.MockClock) -> None:
    """A first attempt that fails before the hedging delay is not hedged: a 400 is sent once
    and answered at once."""
    service = FakeService(HTTPStatus(400), "ok")
    async with provider(service, settings(attempts=3, hedging_delay=2.0)) as p:
        with pytest.raises(ProviderError):
            await p.call("x")
        s = await p.status()
    assert len(service.calls) == 1
    assert (s.hedges, s.attempts) == (0, 1)


async def test_hedging_retries_a_fast_transient_failure_by_the_policy(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A fast transient failure is retried after the backoff delay, as without hedging."""
    service = FakeService(HTTPStatus(503), "ok")
    async with provider(service, settings(attempts=2, hedging_delay=2.0)) as p:
        start = trio.current_time()
        assert await p.call("x") == ("reply", "x")
    assert [t - start for t, _ in service.calls] == [0.0, 1.0]


class ReportSink(Actor[Any, None]):
    """Stands in for the monitor: keeps every call report a provider sends."""

    def __init__(self, reports: list[CallReport]) -> None:
        self.reports = reports

    async def handle(self, message: Any) -> None:
        self.reports.extend(r for r in message if type(r) is CallReport)


@pytest.mark.parametrize(
    ("script", "outcome"),
    [
        # The first send is slow, the hedge answers first: the loser is reported cancelled.
        ((("sleep", 10.0), ("sleep", 1.0)), "ok"),
        # The first send answers first, after the hedge was sent: the hedge is cancelled.
        ((("sleep", 3.0), ("sleep", 10.0)), "ok"),
        # Both fail after the delay: both failures are reported.
        ((("sleep", 3.0, HTTPStatus(400)), ("sleep", 2.0, HTTPStatus(400))), "failed"),
        # Both are cut by the attempt timeout: two cancellations/timeouts, one per send.
        ((("sleep", 100.0), ("sleep", 100.0)), "timeout"),
    ],
)
async def test_the_monitor_sees_every_hedged_send(
    mock_clock: trio.testing.MockClock, script: tuple[Any, ...], outcome: str
) -> None:
    """With hedging on, the monitor gets one report per send the service saw, so its totals
    still equal the service's calls."""
    reports: list[CallReport] = []
    service = FakeService(*script)
    async with open_actor(lambda: ReportSink(reports), name="sink") as sink:
        config = settings(attempt_timeout=20.0, hedging_delay=2.0)
        async with provider(service, config, monitor=sink, report_interval=0.1) as p:
            if outcome == "ok":
                assert await p.call("x") == ("reply", "x")
            elif outcome == "failed":
                with pytest.raises(ProviderError):
                    await p.call("x")
            else:
                with pytest.raises(ProviderTimeout):
                    await p.call("x")
            s = await settle(p)
        await trio.sleep(1.0)
    assert s.hedges == 1
    assert len(service.calls) == 2
    assert len(reports) == len(service.calls), reports
    assert sum(r.ok for r in reports) == (1 if outcome == "ok" else 0)


# ------------------------------------------------------------------ graceful stop


async def test_a_graceful_stop_lets_calls_in_flight_finish(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Calls running (or waiting for a retry) when the provider stops gracefully finish
    within the shutdown grace; calls sent after the stop request wait for the mailbox."""
    failed: list[str] = []

    async def service(payload: str) -> Any:
        if payload == "slow":
            await trio.sleep(3.0)
        elif not failed:
            failed.append(payload)
            raise ConnectionError("reset")
        return ("reply", payload)

    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        async with provider(service, settings(attempts=2), shutdown=10.0) as p:

            async def call(payload: Any) -> None:
                got.append((await p.call(payload), trio.current_time()))

            nursery.start_soon(call, "slow")
            nursery.start_soon(call, "retried")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
        assert trio.current_time() - start == 3.0
    assert sorted(got) == [(("reply", "retried"), start + 1.0), (("reply", "slow"), start + 3.0)]


def test_a_graceful_stop_waits_for_a_call_handed_to_a_worker() -> None:
    """A call handed to an idle worker in the batch the stop is requested in (the worker has
    not taken it yet) finishes too (over 100 schedules; in those where the call comes after
    the stop request, it goes to the mailbox and is refused as the actor stops)."""

    async def main() -> tuple[bool, Any]:
        async def service(payload: Any) -> Any:
            await trio.sleep(1.0)
            return ("reply", payload)

        got: list[Any] = []
        direct: list[bool] = []
        async with (
            trio.open_nursery() as nursery,
            provider(service, settings(), shutdown=10.0) as p,
        ):
            await p.call("warm")  # a worker now waits idle

            async def call() -> None:
                inc = p.ref._cell.incarnation
                direct.append(inc is not None and not inc.stop_requested)
                try:
                    got.append(await p.call("x"))
                except ActorStopped as exc:
                    got.append(exc)

            nursery.start_soon(call)
            await trio.lowlevel.checkpoint()  # the call is handed over as the block ends
        return direct[0], got[0]

    handed = 0
    for seed in SEEDS:
        direct, got = run_seeded(main, seed)
        if direct:
            handed += 1
            assert got == ("reply", "x"), (seed, got)
    assert handed > 0


async def test_a_graceful_stop_past_its_grace_fails_the_rest(
    mock_clock: trio.testing.MockClock,
) -> None:
    """What has not finished within the shutdown grace gets ActorStopped."""
    service = FakeService(("sleep", 100.0))
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async with provider(service, settings(), shutdown=2.0) as p:

            async def call() -> None:
                try:
                    await p.call("x")
                except ActorStopped as exc:
                    errors.append(exc)

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
        assert trio.current_time() - start == 2.0
    assert len(errors) == 1


# ------------------------------------------------------------------ counters


@pytest.mark.parametrize("lane", ["client", "ask"])
async def test_counters_add_up_for_breaker_rejections(
    mock_clock: trio.testing.MockClock, lane: str
) -> None:
    """A call refused by the open breaker counts as a call, a rejection and a failure, whether
    the client refused it locally or the actor did."""
    service = FakeService(ConnectionError("down"))
    breaker = BreakerSettings(failure_threshold=1, break_duration=60.0)
    async with provider(service, settings(breaker=breaker)) as p:
        with pytest.raises(ProviderError):
            await p.call("x")
        with pytest.raises(CircuitOpen):
            if lane == "client":
                await p.call("y")
            else:
                await p.ref.ask(Call("y"))
        s = await p.status()
    assert (s.calls, s.succeeded, s.failed, s.rejected) == (2, 0, 2, 1)


@pytest.mark.parametrize("lane", ["client", "ask"])
async def test_counters_add_up_for_bulkhead_rejections(
    mock_clock: trio.testing.MockClock, lane: str
) -> None:
    """A call refused by a full bulkhead counts the same way on both lanes."""
    service = FakeService(("sleep", 10.0))
    async with provider(service, settings(max_concurrent=1, max_queued=0)) as p:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.call, "slow")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(BulkheadFull):
                if lane == "client":
                    await p.call("y")
                else:
                    await p.ref.ask(Call("y"))
        s = await p.status()
    assert (s.calls, s.succeeded, s.failed, s.rejected) == (2, 1, 1, 1)
    assert s.bulkhead_rejections == 1


@pytest.mark.parametrize("lane", ["client", "ask"])
async def test_bulkhead_refusals_are_logged_once_a_minute_with_a_count(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, lane: str
) -> None:
    """A full bulkhead says so in the log: the first refusal at once (WARNING), the next ones
    within the minute only counted, and the first after the minute gives their number.  The
    status counts every one."""
    caplog.set_level(logging.WARNING, logger="actors.provider")
    service = FakeService(("sleep", 500.0))
    config = settings(attempt_timeout=1000.0, total_timeout=None, max_concurrent=1, max_queued=0)
    async with provider(service, config) as p:

        async def refused() -> None:
            with pytest.raises(BulkheadFull):
                if lane == "client":
                    await p.call("y", timeout=5.0)
                else:
                    await p.ref.ask(Call("y"), timeout=5.0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(p.call, "slow", timeout=1000.0))
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(4):
                await refused()
                await trio.sleep(10.0)
            await trio.sleep(30.0)
            await refused()  # 70 s after the first line
        s = await p.status()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "actors.provider" and getattr(r, "aura_refusal", None) == "bulkhead"
    ]
    head = (
        "'svc': bulkhead full (max_concurrent=1, max_queued=0): calls are refused with "
        "BulkheadFull; "
    )
    tail = " refused since the last such line (one a minute at most)"
    assert lines == [f"{head}1{tail}", f"{head}4{tail}"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "actors.provider")
    assert (s.rejected, s.bulkhead_rejections) == (5, 5)


async def test_counters_count_every_caller_of_a_key(mock_clock: trio.testing.MockClock) -> None:
    """Joiners, stored outcomes and conflicts are calls that end too: calls always equals
    succeeded + failed once nothing is in flight."""
    service = FakeService(("sleep", 3.0), ("sleep", 5.0))
    async with provider(service, settings()) as p:

        async def joined() -> None:
            assert await p.call("x", key="k") == ("reply", "x")

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(joined)
        assert await p.call("x", key="k") == ("reply", "x")  # the stored outcome
        with pytest.raises(Exception, match=r"[Cc]onflict|different"):
            await p.call("other", key="k")
        with trio.move_on_after(1.0):
            await p.call("slow", key="gone")  # the caller gives up
        s = await settle(p)
    assert (s.calls, s.succeeded, s.failed) == (6, 4, 2)


@pytest.mark.parametrize("name", ["a\x1b[2Jb", "line\nbreak", "bidi\u202eevil", ""])
def test_a_provider_name_must_be_printable(name: str) -> None:
    """A provider's name reaches terminals, logs and metric labels: control characters refused."""

    async def fn(payload: object) -> object:
        return payload

    with pytest.raises(ValueError, match="provider name"):
        ProviderActor(name, fn)
