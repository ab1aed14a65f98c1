"""Provider idempotency while a key is in flight: a different payload under the held key is a
conflict, answered at once, and the call holding the key is not disturbed."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import CircuitOpen, IdempotencyConflict, ProviderError, open_actor
from actors._policies._backoff import BackoffSettings
from actors._policies._breaker import BreakerSettings
from actors._policies._bulkhead import BulkheadSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider

#: The phases of a keyed call that holds its key before it has an outcome.
PHASES = ["running", "backing_off"]


class Service:
    """Counts calls per payload; ``"slow"`` payloads take 3 s, ``fail_first`` fails once."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.calls: list[Any] = []
        self.fail_first = fail_first

    async def __call__(self, payload: Any) -> Any:
        self.calls.append(payload)
        if self.fail_first and len(self.calls) == 1:
            raise ConnectionError("connection reset by peer")
        await trio.sleep(3.0)
        return ("reply", payload)


def _settings(phase: str) -> ProviderSettings:
    retry = RetrySettings(
        max_attempts=3,
        attempt_timeout=10.0,
        backoff=BackoffSettings(kind="constant", base_delay=2.0, jitter="none"),
    )
    bulkhead = BulkheadSettings(max_concurrent=1 if phase == "queued" else 10, max_queued=5)
    return ProviderSettings(retry=retry, bulkhead=bulkhead)


async def test_a_conflicting_payload_queued_behind_the_key(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Calls waiting for a bulkhead slot take their key in queue order: the first one queued
    runs once and gets its reply, the later one with another payload gets IdempotencyConflict
    and never reaches the service."""
    service = Service()
    factory = lambda: ProviderActor("svc", service, _settings("queued"))  # noqa: E731
    async with open_actor(factory, name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        results: dict[str, Any] = {}

        async def call(name: str, payload: Any, key: str | None) -> None:
            try:
                results[name] = await p.call(payload, key=key)
            except IdempotencyConflict as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:
            for name, payload, key in [("blocker", "other", None), ("first", "one", "k")]:
                nursery.start_soon(call, name, payload, key)
                await trio.testing.wait_all_tasks_blocked()
            assert (await p.status()).queued == 1
            nursery.start_soon(call, "second", "two", "k")
        assert results["first"] == ("reply", "one")
        assert isinstance(results["second"], IdempotencyConflict)
        assert results["second"].key == "k"
        assert service.calls == ["other", "one"]


@pytest.mark.parametrize("phase", PHASES)
async def test_a_conflicting_payload_while_the_key_is_in_flight(
    mock_clock: trio.testing.MockClock, phase: str
) -> None:
    """While a keyed call runs or waits for its retry, the same key with another payload raises
    IdempotencyConflict at once (no attempt, no wait); the first call completes undisturbed,
    and its outcome is what the key holds afterwards."""
    service = Service(fail_first=phase == "backing_off")
    factory = lambda: ProviderActor("svc", service, _settings(phase))  # noqa: E731
    async with open_actor(factory, name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        results: dict[str, Any] = {}

        async def call(name: str, payload: Any, key: str | None) -> None:
            results[name] = await p.call(payload, key=key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "first", "one", "k")
            await trio.testing.wait_all_tasks_blocked()
            if phase == "backing_off":
                await trio.sleep(1.0)  # inside the 2 s delay before the retry
            status = await p.status()
            held = {"running": status.running, "backing_off": status.waiting}
            assert held[phase] == 1, status
            asked = trio.current_time()
            with pytest.raises(IdempotencyConflict) as info:
                await p.call("two", key="k")
            assert info.value.key == "k"
            assert trio.current_time() == asked  # refused at once, not after the first call
            assert "first" not in results
        assert results["first"] == ("reply", "one")
        assert "two" not in service.calls
        assert service.calls.count("one") == (2 if phase == "backing_off" else 1)
        # The key holds the first call's outcome: the same payload is answered from it, another
        # payload is still a conflict.
        assert await p.call("one", key="k") == ("reply", "one")
        with pytest.raises(IdempotencyConflict):
            await p.call("two", key="k")
        assert service.calls.count("one") == (2 if phase == "backing_off" else 1)
        status = await p.status()
        assert status.rejected == 2
        assert (status.running, status.queued, status.waiting) == (0, 0, 0)


async def test_a_conflict_does_not_cancel_the_joined_callers(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Callers that joined the key with the same payload get the reply even though a caller
    with another payload was refused in between."""
    service = Service()
    async with open_actor(lambda: ProviderActor("svc", service), name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        replies: list[Any] = []
        conflicts: list[IdempotencyConflict] = []

        async def call(payload: Any) -> None:
            try:
                replies.append(await p.call(payload, key="k"))
            except IdempotencyConflict as exc:
                conflicts.append(exc)

        async with trio.open_nursery() as nursery:
            for payload in ["one", "one", "two", "one"]:
                nursery.start_soon(call, payload)
                await trio.testing.wait_all_tasks_blocked()
        assert replies == [("reply", "one")] * 3
        assert [c.key for c in conflicts] == ["k"]
        assert service.calls == ["one"]


class _Scheduled(trio.abc.Instrument):
    """Counts tasks scheduled to run: a call answered in the caller's task schedules none."""

    def __init__(self) -> None:
        self.count = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def _answered_in_place(call: Any) -> Any:
    """Run ``call()`` and check that it was answered in the caller's task: no task was
    scheduled (no round trip to the actor) and no time passed.  Returns the outcome."""
    counter = _Scheduled()
    asked = trio.current_time()
    trio.lowlevel.add_instrument(counter)
    try:
        result: Any = await call()
    except Exception as exc:  # the outcome under test
        result = exc
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert counter.count == 0, "the call went through the actor"
    assert trio.current_time() == asked
    return result


def _open_breaker_settings() -> ProviderSettings:
    return ProviderSettings(
        breaker=BreakerSettings(failure_threshold=1, break_duration=100.0),
        retry=RetrySettings(max_attempts=1),
    )


class Flaky:
    """Fails ``"fail"`` payloads with a transient error, answers the others at once."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def __call__(self, payload: Any) -> Any:
        self.calls.append(payload)
        if payload == "fail":
            raise ConnectionError("connection refused")
        return ("reply", payload)


async def test_an_open_breaker_refuses_a_new_key_in_the_callers_task(
    mock_clock: trio.testing.MockClock,
) -> None:
    """While the breaker is open, a keyed call whose key holds nothing is refused with
    CircuitOpen as an unkeyed one is: in the caller's task, counted once (a call, rejected,
    failed), nothing left in the idempotency table; a key holding an outcome is still
    answered from it, and another payload under it is still a conflict."""
    service = Flaky()
    factory = lambda: ProviderActor("svc", service, _open_breaker_settings())  # noqa: E731
    async with open_actor(factory, name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        assert await p.call("one", key="done") == ("reply", "one")
        with pytest.raises(ProviderError):
            await p.call("fail")  # trips the breaker
        before = await p.status()
        assert before.breaker == "open"
        refused = await _answered_in_place(lambda: p.call("x", key="new"))
        assert isinstance(refused, CircuitOpen)
        assert refused.retry_after == pytest.approx(100.0)
        cached = await _answered_in_place(lambda: p.call("one", key="done"))
        assert cached == ("reply", "one")
        conflict = await _answered_in_place(lambda: p.call("two", key="done"))
        assert isinstance(conflict, IdempotencyConflict)
        after = await p.status()
        assert after.calls - before.calls == 3
        assert after.rejected - before.rejected == 2
        assert after.failed - before.failed == 2
        assert after.succeeded - before.succeeded == 1
        assert after.cached == 1  # only "done": the refused key left nothing behind
        assert service.calls == ["one", "fail"]


async def test_an_open_breaker_lets_a_key_in_flight_be_joined(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A keyed call waiting for its retry when the breaker opens still holds its key: a caller
    with the same key and payload joins it (it is not refused in its own task), and both get
    the call's outcome."""
    service = Service(fail_first=True)
    settings = ProviderSettings(
        breaker=BreakerSettings(failure_threshold=1, break_duration=1.0),
        retry=RetrySettings(
            max_attempts=3,
            attempt_timeout=10.0,
            backoff=BackoffSettings(kind="constant", base_delay=2.0, jitter="none"),
        ),
    )
    async with open_actor(lambda: ProviderActor("svc", service, settings), name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        results: list[Any] = []

        async def call() -> None:
            results.append(await p.call("one", key="k"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert (await p.status()).breaker == "open"  # the first attempt failed
            nursery.start_soon(call)
        assert results == [("reply", "one")] * 2
        assert service.calls == ["one", "one"]


async def test_a_stored_outcome_and_a_conflict_answer_while_every_worker_is_busy(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With every worker busy, a keyed call is checked against the idempotency table as it
    arrives: a stored outcome answers it, and another payload under a key (in flight or
    completed) is refused, at once in the caller's task, not after a worker frees up."""
    service = Service()
    factory = lambda: ProviderActor("svc", service, _settings("queued"))  # noqa: E731
    async with open_actor(factory, name="svc") as ref:
        p: Provider[Any, Any] = Provider(ref)
        assert await p.call("one", key="done") == ("reply", "one")
        results: dict[str, Any] = {}

        async def call(name: str, payload: Any, key: str | None) -> None:
            results[name] = await p.call(payload, key=key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "running", "two", "busy")
            await trio.testing.wait_all_tasks_blocked()
            assert (await p.status()).running == 1  # the only worker
            cached = await _answered_in_place(lambda: p.call("one", key="done"))
            assert cached == ("reply", "one")
            conflict = await _answered_in_place(lambda: p.call("other", key="done"))
            assert isinstance(conflict, IdempotencyConflict)
            in_flight = await _answered_in_place(lambda: p.call("other", key="busy"))
            assert isinstance(in_flight, IdempotencyConflict)
        assert results["running"] == ("reply", "two")
        assert service.calls == ["one", "two"]
        status = await p.status()
        assert (status.calls, status.succeeded, status.rejected, status.failed) == (5, 3, 2, 2)
