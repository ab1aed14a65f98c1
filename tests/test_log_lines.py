"""What the library says on stdlib loggers when embedded (no ``aura run``): breaker transitions,
scheduled retries and alerts, at levels an operator can filter, and never a secret."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors import (
    Actor,
    BackoffSettings,
    BreakerSettings,
    MonitorActor,
    MonitorSettings,
    Provider,
    ProviderActor,
    ProviderSettings,
    RetriesExhausted,
    RetrySettings,
    SubscribeAlerts,
)
from supervisors import ChildSpec, open_supervisor
from supervisors._operator._logging import PlainFormatter
from tests.secret_samples import LEAK, leaked


def _records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


async def _down(payload: Any) -> Any:
    raise ConnectionError(LEAK)


SETTINGS = ProviderSettings(
    breaker=BreakerSettings(failure_threshold=2, break_duration=10),
    retry=RetrySettings(
        max_attempts=2, backoff=BackoffSettings(kind="constant", base_delay=0.5, jitter="none")
    ),
)


async def test_breaker_transitions_and_retries_are_logged(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider whose service is down: each scheduled retry is a DEBUG line with the attempt
    and the wait (as stamina logs them), the breaker opening a WARNING, half-open and closing
    INFO lines; the service's error text is redacted."""
    caplog.set_level(logging.DEBUG, logger="actors.provider")
    healthy = False

    async def service(payload: Any) -> Any:
        if healthy:
            return "ok"
        raise ConnectionError(LEAK)

    async with open_supervisor(
        [ChildSpec("svc", lambda: ProviderActor("svc", service, SETTINGS))]
    ) as root:
        svc: Provider[str, str] = Provider(root.ref("svc"))
        with pytest.raises(RetriesExhausted):
            await svc.call("x", timeout=5)
        healthy = True
        await trio.sleep(11)  # the break ends: half-open
        assert await svc.call("x", timeout=5) == "ok"
    records = _records(caplog, "actors.provider")
    retries = [r for r in records if r.levelno == logging.DEBUG and "retry" in r.getMessage()]
    assert len(retries) == 1
    assert "attempt 2 of 2" in retries[0].getMessage()
    assert "0.5 s" in retries[0].getMessage()
    assert retries[0].__dict__["aura_attempt"] == 2
    assert retries[0].__dict__["aura_wait"] == pytest.approx(0.5)
    opened = [r for r in records if "-> open" in r.getMessage()]
    assert [r.levelno for r in opened] == [logging.WARNING]
    assert "'svc'" in opened[0].getMessage()
    assert "consecutive_failures" in opened[0].getMessage()
    closed = [r for r in records if "-> closed" in r.getMessage()]
    assert [r.levelno for r in closed] == [logging.INFO]
    assert any("-> half_open" in r.getMessage() for r in records)
    for record in records:
        assert not leaked(logging.Formatter().format(record))


async def test_nothing_is_built_for_disabled_levels(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With the provider logger at WARNING, retries make no record at all."""
    caplog.set_level(logging.WARNING, logger="actors.provider")
    async with open_supervisor(
        [ChildSpec("svc", lambda: ProviderActor("svc", _down, SETTINGS))]
    ) as root:
        with pytest.raises(RetriesExhausted):
            await Provider(root.ref("svc")).call("x", timeout=5)
    assert all(r.levelno >= logging.WARNING for r in _records(caplog, "actors.provider"))


async def test_alerts_raised_and_resolved_are_logged(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor logs each alert it raises (WARNING, ERROR when critical) and resolves (INFO),
    whether or not anybody subscribed to its alerts."""
    caplog.set_level(logging.INFO, logger="actors.monitor")
    healthy = False

    async def service(payload: Any) -> Any:
        if healthy:
            return "ok"
        raise ConnectionError(LEAK)

    tree = [
        ChildSpec("monitor", lambda: MonitorActor(MonitorSettings(check_interval=1))),
        ChildSpec("svc", lambda: ProviderActor("svc", service, SETTINGS, monitor="monitor")),
    ]
    async with open_supervisor(tree) as root:
        svc: Provider[str, str] = Provider(root.ref("svc"))
        with pytest.raises(RetriesExhausted):
            await svc.call("x", timeout=5)
        await trio.sleep(2)
        healthy = True
        await trio.sleep(11)
        assert await svc.call("x", timeout=5) == "ok"
        await trio.sleep(2)
    records = _records(caplog, "actors.monitor")
    raised = [r for r in records if "raised" in r.getMessage()]
    resolved = [r for r in records if "resolved" in r.getMessage()]
    assert any(r.levelno == logging.ERROR and "breaker_open" in r.getMessage() for r in raised)
    assert any(r.levelno == logging.INFO and "breaker_open" in r.getMessage() for r in resolved)
    for record in records:
        assert not leaked(logging.Formatter().format(record))
    assert SubscribeAlerts  # the logs do not depend on a subscriber (none was added)


class Crashy(Actor[str, str]):
    """Crashes on "a" and "b", from two different lines."""

    async def handle(self, message: str) -> str:
        if message == "a":
            raise RuntimeError("crash a")
        if message == "b":
            raise KeyError("crash b")
        return message


async def test_a_crash_loop_logs_one_traceback_per_crash_and_minute(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The same crash (actor, exception type, line) repeated within a minute is logged without
    its traceback again, saying so; another crash, or the same one a minute later, with it."""
    caplog.set_level(logging.WARNING, logger="supervisors")
    async with open_supervisor([ChildSpec("crashy", Crashy)], max_restarts=100) as root:
        ref = root.ref("crashy")
        for message in ("a", "a", "a", "b", "a"):
            await ref.tell(message)
            assert await ref.ask("sync") == "sync"
        await trio.sleep(61)
        await ref.tell("a")
        assert await ref.ask("sync") == "sync"
    crashes = [r for r in caplog.records if r.name == "supervisors" and "crashed" in r.getMessage()]
    with_traceback = ["Traceback" in logging.Formatter().format(r) for r in crashes]
    assert with_traceback == [True, False, False, True, False, True]
    assert "the same crash as a traceback logged" in crashes[1].getMessage()


@given(st.lists(st.floats(min_value=1e9, max_value=1e9 + 5, allow_nan=False), max_size=30))
def test_the_plain_formatter_writes_the_time_the_stdlib_formatter_writes(
    times: list[float],
) -> None:
    """The plain formatter reuses the date of the last second it formatted: whatever the order
    of the records' times, each line carries the time the stdlib formatter gives it."""
    ours, stdlib = PlainFormatter(), logging.Formatter()
    for created in times:
        record = logging.LogRecord("x", logging.WARNING, "x", 0, "line", None, None)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        assert ours.formatTime(record) == stdlib.formatTime(record)
