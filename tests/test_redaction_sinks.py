"""One redactor at every way out: logs, events, error replies and what the ``aura`` command prints.

Every test puts :data:`tests.secret_samples.LEAK` (a secret of every shape the redactor knows)
into what a sink shows and checks that no secret value comes out, while the sink still says
what happened.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import pkgutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import actors
import supervisors
from actors import Actor
from actors._policies._logs import RedactingFilter
from supervisors import ChildSpec, SupervisorGaveUp, SupervisorSpec, open_supervisor
from supervisors._operator._admin._requests import ApiError
from supervisors._operator._cli import main
from supervisors._operator._logging import JsonFormatter, PlainFormatter
from tests.secret_samples import LEAK, leaked


class Leaky(Actor[str, str]):
    """Crashes with an error quoting every kind of secret."""

    async def handle(self, message: str) -> str:
        raise RuntimeError(LEAK)


def _all_modules() -> None:
    for package in (actors, supervisors):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)


def test_every_library_logger_redacts() -> None:
    """Every logger the library creates (every module imported) carries the redacting filter,
    so no module can log a secret by taking ``logging.getLogger`` directly."""
    _all_modules()
    names = [
        name
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.split(".")[0] in ("actors", "supervisors")
    ]
    assert "supervisors" in names
    assert "actors.saga" in names
    missing = [
        name
        for name in names
        if not any(isinstance(f, RedactingFilter) for f in logging.getLogger(name).filters)
    ]
    assert not missing


async def test_a_told_crash_is_logged_with_its_traceback_redacted(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A fire-and-forget message that crashes its actor: the crash line carries the traceback
    (nothing else would ever show it), and neither the line, the traceback nor the supervision
    event a subscriber gets holds a secret."""
    caplog.set_level(logging.WARNING, logger="supervisors")
    async with open_supervisor([ChildSpec("leaky", Leaky)]) as root:
        with root.subscribe() as events:
            await root.ref("leaky").tell("boom")
            crashed = None
            async for event in events:
                if event.kind.value == "crashed":
                    crashed = event
                    break
    assert crashed is not None
    assert "RuntimeError" in crashed.reason
    assert "[REDACTED]" in crashed.reason
    assert not leaked(crashed.reason)
    records = [r for r in caplog.records if r.name == "supervisors" and "crashed" in r.getMessage()]
    assert len(records) == 1
    text = logging.Formatter().format(records[0])
    assert "Traceback (most recent call last)" in text
    assert "in handle" in text  # the frame that raised
    assert "[REDACTED]" in text
    assert not leaked(text)
    # Any formatter, including one that would format exc_info itself, sees only the redacted text.
    assert records[0].exc_info is None
    assert not leaked(JsonFormatter().format(records[0]))


async def test_a_supervisor_that_gives_up_says_so_without_secrets(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The SupervisorGaveUp that leaves the root (printed by ``aura run``) quotes its cause's
    message redacted."""
    spec = SupervisorSpec("app", [ChildSpec("leaky", Leaky)], max_restarts=0)
    with pytest.raises(SupervisorGaveUp) as caught:
        async with open_supervisor(spec) as root:
            await root.ref("leaky").tell("boom")
            await trio.sleep(1)
    message = str(caught.value)
    assert "RuntimeError" in message
    assert "[REDACTED]" in message
    assert not leaked(message)


@pytest.mark.parametrize("formatter", [PlainFormatter(), JsonFormatter()])
def test_the_operator_formatters_redact_records_of_any_logger(
    formatter: logging.Formatter,
) -> None:
    """``configure_logging``'s formats (and so ``aura run``'s) redact the message and traceback
    of records from loggers outside the library too (an SDK quoting its request)."""
    try:
        raise ValueError(LEAK)
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("some.sdk", logging.ERROR, __file__, 1, "%s", (LEAK,), exc_info)
    text = formatter.format(record)
    assert "ValueError" in text
    assert "[REDACTED]" in text
    assert not leaked(text)


def test_admin_api_error_messages_are_redacted() -> None:
    """An error answered by the admin API (which may quote an actor's crash) is redacted."""
    error = ApiError(503, "unavailable", f"The monitor did not answer: {LEAK}")
    assert "[REDACTED]" in error.message
    assert not leaked(error.message)
    assert not leaked(str(error))


FAILING = """
    from actors import MonitorActor
    from supervisors import ChildSpec, SupervisorSpec
    from tests.secret_samples import LEAK

    def build_tree():
        return SupervisorSpec("failing", [ChildSpec("monitor", MonitorActor)])

    async def workload(root):
        raise LookupError(LEAK)
"""


def test_aura_run_prints_a_failed_runs_traceback_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``aura run`` prints a failing run's traceback to the operator: redacted."""
    (tmp_path / "aura_leaky_tree.py").write_text(textwrap.dedent(FAILING))
    monkeypatch.syspath_prepend(str(tmp_path))
    err = io.StringIO()
    assert main(["run", "aura_leaky_tree", "--no-live"], stderr=err) == 1
    text = err.getvalue()
    assert "error: the run failed" in text
    assert "LookupError" in text
    assert "[REDACTED]" in text
    assert not leaked(text)


def test_aura_status_never_prints_a_password_of_its_url() -> None:
    """``aura status`` with credentials in the URL: its error line keeps them out."""
    err = io.StringIO()
    url = "http://admin:Hunter2Pa55word@127.0.0.1:1"
    assert main(["status", url], stdout=io.StringIO(), stderr=err) == 1
    assert "cannot reach" in err.getvalue()
    assert not leaked(err.getvalue())


def test_library_log_lines_are_redacted_for_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    """A library logger's record is redacted before any handler sees it: message, arguments
    and traceback (a JSON handler of the application's own gets the same clean record)."""
    from actors._policies._logs import library_logger

    log = library_logger("actors.test_sink")
    caplog.set_level(logging.DEBUG, logger="actors.test_sink")
    try:
        raise ConnectionError(LEAK)
    except ConnectionError:
        log.exception("call to %s failed", "https://u:Hunter2Pa55word@h/")
    (record,) = [r for r in caplog.records if r.name == "actors.test_sink"]
    texts = [record.getMessage(), logging.Formatter().format(record), caplog.text]
    for text in texts:
        assert not leaked(text), text
    assert "ConnectionError" in texts[1]
    payload: Any = json.loads(JsonFormatter().format(record))
    assert "ConnectionError" in payload["exception"]
