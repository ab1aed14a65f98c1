"""The ``aura`` command: run (live and plain views), config check, status.

This module is also the tree ``aura run tests.test_cli`` runs: ``build_tree`` and ``workload``
below follow the ``aura run`` convention.
"""

from __future__ import annotations

import io
import json
import re
import socket
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from rich.console import Console

from actors import (
    Actor,
    AuraError,
    Call,
    GetAlerts,
    MonitorActor,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
)
from actors._protocol import BreakerReport, CallReport
from supervisors import ChildSpec, Supervisor, SupervisorSpec, TreeNode, open_supervisor
from supervisors._operator._admin._actor import GetAdminAddress, admin_spec
from supervisors._operator._cli import describe_config, main

ROOT = Path(__file__).resolve().parent.parent


# ================================================================================ the demo tree


async def _always_down(payload: Any) -> Any:
    raise ConnectionError("connection refused")


class Crashy(Actor[str, str]):
    """Crashes on "crash", echoes anything else."""

    async def handle(self, message: str) -> str:
        if message == "crash":
            raise RuntimeError("asked to crash")
        return message


def build_tree(config: Any = None) -> SupervisorSpec:
    """A monitor, a provider whose service is down, and an actor that crashes on demand."""
    settings = ProviderSettings(retry=RetrySettings(max_attempts=1))
    return SupervisorSpec(
        "demo",
        [
            ChildSpec("monitor", MonitorActor),
            SupervisorSpec(
                "providers",
                [
                    ChildSpec(
                        "shaky",
                        lambda: ProviderActor(
                            "shaky", _always_down, settings, monitor="monitor", report_interval=0.01
                        ),
                    )
                ],
            ),
            ChildSpec("crashy", Crashy),
        ],
    )


async def workload(root: Supervisor) -> None:
    """Crash one actor once, fail calls until the breaker opens, wait for the alert."""
    try:
        await root.ref("crashy").ask("crash")
    except AuraError:
        pass
    provider = root.ref("providers/shaky")
    for i in range(8):
        try:
            await provider.ask(Call(i), timeout=5)
        except AuraError:
            pass
    monitor = root.ref("monitor")
    with trio.fail_after(10):
        while True:
            alerts = await monitor.ask(GetAlerts())
            if any(a.rule.value == "breaker_open" for a in alerts.active):
                return
            await trio.sleep(0.01)


def _recording_console() -> Console:
    return Console(
        file=io.StringIO(), record=True, width=140, force_terminal=True, color_system=None
    )


# ================================================================================ aura run


def test_run_live_view_shows_tree_breaker_and_alert() -> None:
    """The live view shows the tree (with a restart), the open breaker and its alert."""
    console = _recording_console()
    err = io.StringIO()
    code = main(["run", "tests.test_cli", "--refresh", "0.05"], console=console, stderr=err)
    assert code == 0, err.getvalue()
    text = console.export_text()
    for expected in ("supervision tree", "monitor", "providers", "crashy", "restarts=1"):
        assert expected in text, expected
    assert "shaky" in text
    assert "open" in text
    assert "breaker_open" in text
    assert "critical" in text
    final = text[text.rindex("tests.test_cli | health") :]
    assert "health unhealthy" in final
    assert "alerts 1" in final


def test_run_plain_logs_changes() -> None:
    """--no-live logs the breaker opening, the alert, the restart and a final summary as plain
    lines, each once: the library's own lines say them, the view adds only health changes."""
    err = io.StringIO()
    code = main(["run", "tests.test_cli", "--no-live", "--refresh", "0.05"], stderr=err)
    assert code == 0
    text = err.getvalue()
    lines = text.splitlines()
    assert "crashy crashed" in text
    opened = [line for line in lines if "shaky" in line and "closed -> open" in line]
    assert len(opened) == 1, opened
    assert "circuit breaker of 'shaky' closed -> open" in opened[0]
    raised = [line for line in lines if "#1" in line and "breaker_open shaky" in line]
    assert len(raised) == 1, raised
    assert "alert #1 raised: critical breaker_open shaky" in raised[0]
    restarted = [line for line in lines if "crashy restarted (restarts=1)" in line]
    assert len(restarted) == 1, restarted
    assert "health - -> " in text  # the view's own line
    assert "final: health=unhealthy" in text


def test_run_json_logs_are_json_lines() -> None:
    """--no-live --log-json writes one JSON object per line, with the correlation ids."""
    err = io.StringIO()
    code = main(
        ["run", "tests.test_cli", "--no-live", "--log-json", "--refresh", "0.05"], stderr=err
    )
    assert code == 0
    records = [json.loads(line) for line in err.getvalue().splitlines()]
    assert records
    for record in records:
        assert {"time", "level", "logger", "message", "saga_id", "service"} <= set(record)
    crashed = [r for r in records if r.get("aura_event") == "crashed"]
    assert crashed
    assert crashed[0]["aura_path"] == "crashy"


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


IDLE = """
    from actors import MonitorActor
    from supervisors import ChildSpec, SupervisorSpec

    SPEC = SupervisorSpec("idle", [ChildSpec("monitor", MonitorActor)])
    seen = []

    def build_tree(config):
        seen.append(config)
        return SPEC

    def no_args():
        return SPEC

    def keywords_only(*, seed=7):
        return SPEC

    NOT_A_TREE = 42
"""


def test_run_without_workload_stops_after_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a workload the run lasts --seconds and exits 0; the config reaches build_tree."""
    name = _module(tmp_path, monkeypatch, "aura_idle_tree", IDLE)
    err = io.StringIO()
    config = ROOT / "examples" / "resilience.toml"
    code = main(["run", name, "--no-live", "--seconds", "0.2", "--config", str(config)], stderr=err)
    assert code == 0, err.getvalue()
    module = __import__(name)
    assert module.seen[-1] is not None
    assert module.seen[-1].for_provider("openai").retry.max_attempts == 4
    assert "final: health=unknown" in err.getvalue()  # no service, no data to judge


@pytest.mark.parametrize("attribute", ["SPEC", "no_args", "keywords_only"])
def test_run_names_a_tree_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attribute: str
) -> None:
    """MODULE:TREE runs a SupervisorSpec attribute or a zero-argument function."""
    name = _module(tmp_path, monkeypatch, "aura_idle_named", IDLE)
    err = io.StringIO()
    assert main(["run", f"{name}:{attribute}", "--no-live", "--seconds", "0.1"], stderr=err) == 0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_anywhere", "cannot import"),
        ("aura_idle_bad:missing", "has no 'missing'"),
        ("aura_idle_bad:NOT_A_TREE", "must be (or return) a SupervisorSpec"),
    ],
)
def test_run_reports_bad_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, message: str
) -> None:
    """A module that cannot be imported or an attribute that is not a tree exits 1."""
    _module(tmp_path, monkeypatch, "aura_idle_bad", IDLE)
    err = io.StringIO()
    assert main(["run", target, "--no-live", "--seconds", "0.1"], stderr=err) == 1
    assert message in err.getvalue()


def test_run_does_not_let_the_current_directory_shadow_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The current directory goes last on sys.path: a ./starlette.py shadows nothing."""
    import importlib.machinery
    import sys

    (tmp_path / "aura_cwd_tree.py").write_text(textwrap.dedent(IDLE))
    (tmp_path / "starlette.py").write_text("raise ImportError('the shadow was imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    err = io.StringIO()
    assert main(["run", "aura_cwd_tree", "--no-live", "--seconds", "0.1"], stderr=err) == 0
    assert sys.path[-1] == str(tmp_path)  # the tree's module and its siblings still import
    found = importlib.machinery.PathFinder.find_spec("starlette", sys.path)
    assert found is not None
    assert found.origin is not None
    assert not found.origin.startswith(str(tmp_path)), found.origin


FAILING = """
    from actors import MonitorActor
    from supervisors import ChildSpec, SupervisorSpec

    def build_tree():
        return SupervisorSpec("failing", [ChildSpec("monitor", MonitorActor)])

    async def workload(root):
        raise LookupError("the workload lost its way")
"""


def test_a_failing_workload_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workload that raises ends the run with exit 1 and its traceback on stderr."""
    name = _module(tmp_path, monkeypatch, "aura_failing_tree", FAILING)
    err = io.StringIO()
    assert main(["run", name, "--no-live"], stderr=err) == 1
    assert "error: the run failed" in err.getvalue()
    assert "LookupError: the workload lost its way" in err.getvalue()


def test_run_with_an_invalid_config_exits_1(tmp_path: Path) -> None:
    """--config with an invalid file exits 1 and names the field."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults.retry]\nmax_attempts = 0\n")
    err = io.StringIO()
    assert main(["run", "tests.test_cli", "--config", str(bad)], stderr=err) == 1
    assert "defaults.retry.max_attempts" in err.getvalue()


ADMIN_TOKEN = "cli-test-token-0123456789abcdef"


def test_run_with_admin_port_serves_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--admin-port starts the admin API beside the view; its address is logged; the token
    comes from $AURA_ADMIN_TOKEN."""
    name = _module(tmp_path, monkeypatch, "aura_admin_run", IDLE + AUTO_STATUS)
    monkeypatch.setenv("AURA_ADMIN_TOKEN", ADMIN_TOKEN)
    err = io.StringIO()
    code = main(["run", name, "--no-live", "--admin-port", "0"], stderr=err)
    assert code == 0, err.getvalue()
    module = __import__(name)
    assert module.answers["health"] == 200
    assert module.answers["reset"] == 401
    assert module.answers["reset_with_token"] == 404  # authorized; the service is unknown
    assert "admin API on http://127.0.0.1:" in err.getvalue()
    assert re.search(r"live dashboard: http://127\.0\.0\.1:[0-9]+/dashboard\b", err.getvalue())
    assert ADMIN_TOKEN not in err.getvalue()


def test_run_reads_the_admin_token_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--admin-token-file reads the token (a trailing newline is dropped); a file others can
    read is accepted with a warning."""
    name = _module(tmp_path, monkeypatch, "aura_admin_file", IDLE + AUTO_STATUS)
    monkeypatch.delenv("AURA_ADMIN_TOKEN", raising=False)
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    token_file.chmod(0o600)
    err = io.StringIO()
    argv = ["run", name, "--no-live", "--admin-port", "0", "--admin-token-file", str(token_file)]
    assert main(argv, stderr=err) == 0, err.getvalue()
    assert __import__(name).answers["reset_with_token"] == 404
    assert "readable by" not in err.getvalue()
    token_file.chmod(0o644)
    err = io.StringIO()
    assert main(argv, stderr=err) == 0, err.getvalue()
    assert "readable by other users" in err.getvalue()


def test_the_admin_token_is_refused_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """--admin-token VALUE would show in the process list: a usage error naming the options."""
    with pytest.raises(SystemExit) as info:
        main(["run", "x", "--admin-port", "0", "--admin-token", ADMIN_TOKEN])
    assert info.value.code == 2
    message = capsys.readouterr().err
    assert "AURA_ADMIN_TOKEN" in message
    assert "--admin-token-file" in message
    assert ADMIN_TOKEN not in message


@pytest.mark.parametrize("source", ["env", "file", "missing-file"])
def test_a_bad_admin_token_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """A token shorter than 16 characters, or an unreadable token file, exits 1 saying why."""
    name = _module(tmp_path, monkeypatch, "aura_admin_short", IDLE)
    argv = ["run", name, "--no-live", "--seconds", "0.1", "--admin-port", "0"]
    monkeypatch.delenv("AURA_ADMIN_TOKEN", raising=False)
    if source == "env":
        monkeypatch.setenv("AURA_ADMIN_TOKEN", "short")
    else:
        token_file = tmp_path / "admin.token"
        if source == "file":
            token_file.write_text("short\n")
        argv += ["--admin-token-file", str(token_file)]
    err = io.StringIO()
    assert main(argv, stderr=err) == 1
    expected = "cannot read" if source == "missing-file" else "at least 16 characters"
    assert expected in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_an_admin_host_off_loopback_needs_allowed_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--admin-host 0.0.0.0 without --admin-allowed-host exits 1 saying why."""
    name = _module(tmp_path, monkeypatch, "aura_admin_wild", IDLE)
    argv = ["run", name, "--no-live", "--seconds", "0.1", "--admin-port", "0"]
    err = io.StringIO()
    assert main([*argv, "--admin-host", "0.0.0.0"], stderr=err) == 1
    assert "--admin-allowed-host" in err.getvalue()


AUTO_STATUS = """
    import httpx

    from supervisors import GetAdminAddress

    answers = {}

    async def workload(root):
        address = await root.ref("aura-admin").ask(GetAdminAddress())
        async with httpx.AsyncClient(base_url=address.url) as client:
            answers["health"] = (await client.get("/api/resilience/health")).status_code
            answers["reset"] = (await client.post("/api/resilience/metrics/x/reset")).status_code
            answers["reset_with_token"] = (
                await client.post(
                    "/api/resilience/metrics/x/reset",
                    headers={"Authorization": "Bearer cli-test-token-0123456789abcdef"},
                )
            ).status_code
"""


# ================================================================================ aura config check


def test_config_check_prints_effective_settings() -> None:
    """A valid file: exit 0, every default, and each provider's differences from them."""
    out = io.StringIO()
    code = main(["config", "check", str(ROOT / "examples" / "resilience.toml")], stdout=out)
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("resilience.toml: valid")
    assert "  retry.max_attempts             3" in lines
    openai = lines.index("  openai")
    assert lines[openai + 1].split() == ["retry.max_attempts", "4", "(default", "3)"]
    ollama = lines.index("  ollama")
    assert lines[ollama + 1].split() == [
        "retry.backoff.kind",
        "constant",
        "(default",
        "exponential)",
    ]
    assert "monitoring:" in lines
    assert any(line.split() == ["high_error_rate", "10"] for line in lines)


def test_config_check_json() -> None:
    """--json prints the effective configuration as JSON."""
    out = io.StringIO()
    path = str(ROOT / "examples" / "resilience.json")
    assert main(["config", "check", path, "--json"], stdout=out) == 0
    data = json.loads(out.getvalue())
    assert set(data) == {"defaults", "providers", "monitoring", "idempotency", "fleet"}
    assert data["fleet"] is None


def test_config_check_shows_the_fleet_without_its_credentials(tmp_path: Path) -> None:
    """A [fleet] section is printed (text and JSON) with the store URL's password hidden."""
    path = tmp_path / "fleet.toml"
    path.write_text('[fleet]\nredis_url = "redis://app:s3cret@cache.internal:6380/2"\n')
    for extra in ([], ["--json"]):
        out = io.StringIO()
        assert main(["config", "check", str(path), *extra], stdout=out) == 0
        assert "s3cret" not in out.getvalue()
        assert "redis://***@cache.internal:6380/2" in out.getvalue()


@pytest.mark.parametrize(
    ("content", "path"),
    [
        ("[providers.openai.retry]\nmax_attempts = 0\n", "providers.openai.retry.max_attempts"),
        ("[defaults.breaker]\nfailure_ratio = 2\n", "defaults.breaker.failure_ratio"),
        ("[defaults.retyr]\n", "defaults.retyr"),
        ("[monitoring]\nwindow = 'x'\n", "monitoring.window"),
    ],
)
def test_config_check_names_the_bad_field(tmp_path: Path, content: str, path: str) -> None:
    """An invalid file: exit 1, the error on stderr with the dotted path of the field."""
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    out, err = io.StringIO(), io.StringIO()
    assert main(["config", "check", str(bad)], stdout=out, stderr=err) == 1
    assert out.getvalue() == ""
    assert f"field: {path}" in err.getvalue()


@pytest.mark.parametrize(("name", "content"), [("x.toml", "[[["), ("x.yaml", "a: 1")])
def test_config_check_malformed_or_unknown_files(tmp_path: Path, name: str, content: str) -> None:
    """Malformed TOML, an unknown extension or a missing file: exit 1 with the reason."""
    file = tmp_path / name
    file.write_text(content)
    err = io.StringIO()
    assert main(["config", "check", str(file)], stderr=err) == 1
    assert err.getvalue().startswith("error: Invalid configuration")
    missing = io.StringIO()
    assert main(["config", "check", str(tmp_path / "absent.toml")], stderr=missing) == 1
    assert "cannot read" in missing.getvalue()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bomb.toml", "a = " + "[" * 50_000 + "]" * 50_000),
        ("bomb.json", '{"defaults": ' + '{"a":' * 50_000 + "1" + "}" * 50_001),
    ],
)
def test_config_check_of_a_config_bomb_exits_1(tmp_path: Path, name: str, content: str) -> None:
    """Deeply nested TOML or JSON: exit 1 with a ConfigError saying so, no traceback."""
    file = tmp_path / name
    file.write_text(content)
    err = io.StringIO()
    assert main(["config", "check", str(file)], stderr=err) == 1
    assert err.getvalue().startswith("error: Invalid configuration")
    assert "nested too deeply" in err.getvalue()


def test_describe_config_names_providers_equal_to_the_defaults() -> None:
    """A provider whose settings equal the defaults is listed as such."""
    from actors import ResilienceConfig

    config = ResilienceConfig.from_dict({"providers": {"plain": {}}})
    text = describe_config(config)
    assert "  plain: the defaults" in text.splitlines()
    assert "breaker.failure_threshold" in text


# ================================================================================ aura status


class AppThread:
    """A tree with a monitor and the admin API, in a trio loop of its own thread."""

    def __init__(self, *reports: tuple[str, str], read_token: str | None = None) -> None:
        self.reports = reports
        self.read_token = read_token
        self.url = ""
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        admin = admin_spec(port=0, read_token=self.read_token)
        spec = SupervisorSpec("app", [ChildSpec("monitor", MonitorActor), admin])
        async with open_supervisor(spec) as root:
            now = trio.current_time()
            for service, state in self.reports:
                root.ref("monitor").tell_nowait(CallReport(service, True, 0.1, now))
                if state != "closed":
                    root.ref("monitor").tell_nowait(BreakerReport(service, "closed", state, now))
            self.url = (await root.ref("admin").ask(GetAdminAddress())).url
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> AppThread:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)


def test_status_of_a_healthy_app() -> None:
    """status prints health, breakers and alerts, and exits 0 when healthy or degraded."""
    with AppThread(("alpha", "closed"), ("beta", "open")) as app:
        out = io.StringIO()
        assert main(["status", app.url], stdout=out) == 0
    text = out.getvalue()
    assert text.startswith(f"{app.url}: degraded")
    assert "alpha" in text
    assert "beta" in text
    assert "open" in text
    assert "alerts: 1 active" in text
    assert "breaker_open" in text


def test_status_of_an_unhealthy_app_exits_2() -> None:
    """An unhealthy app (the admin API answers 503) makes status exit 2; --json is JSON."""
    with AppThread(("alpha", "open")) as app:
        out = io.StringIO()
        assert main(["status", app.url.removeprefix("http://"), "--json"], stdout=out) == 2
    data = json.loads(out.getvalue())
    assert data["health"]["status"] == "unhealthy"
    assert data["breakers"]["breakers"][0]["state"] == "open"


def test_status_sends_the_read_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a read token on the server, status needs it: from the environment or a file."""
    token = "status-read-token-0123456789"
    monkeypatch.delenv("AURA_ADMIN_READ_TOKEN", raising=False)
    monkeypatch.delenv("AURA_ADMIN_TOKEN", raising=False)
    with AppThread(("alpha", "closed"), read_token=token) as app:
        err = io.StringIO()
        assert main(["status", app.url], stdout=io.StringIO(), stderr=err) == 1
        assert "answered 401" in err.getvalue()
        monkeypatch.setenv("AURA_ADMIN_READ_TOKEN", token)
        assert main(["status", app.url], stdout=io.StringIO()) == 0
        monkeypatch.delenv("AURA_ADMIN_READ_TOKEN")
        file = tmp_path / "token"
        file.write_text(token + "\n")
        file.chmod(0o600)
        out = io.StringIO()
        assert main(["status", app.url, "--token-file", str(file)], stdout=out) == 0
    assert "alpha" in out.getvalue()


def test_status_of_an_unreachable_app_exits_1() -> None:
    """Nothing listening: status exits 1 with the reason."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = io.StringIO()
    assert main(["status", f"http://127.0.0.1:{port}", "--timeout", "2"], stderr=err) == 1
    assert "cannot reach" in err.getvalue()


def test_usage_errors_exit_2() -> None:
    """argparse usage errors exit 2 (no command, a bad number)."""
    with pytest.raises(SystemExit) as missing:
        main([])
    assert missing.value.code == 2
    with pytest.raises(SystemExit) as bad:
        main(["run", "x", "--seconds", "-1"])
    assert bad.value.code == 2


# ================================================================================ the views


def _summary(saga_id: str, phase: str, owner: str | None = None) -> Any:
    from actors import SagaPhase, SagaSummary

    return SagaSummary(
        saga_id=saga_id, definition="video", created_at=0.0, phase=SagaPhase(phase),
        next_step=1, step_in_flight=1, compensation_step=None, compensated=0, events=3,
        updated_at=0.0, metadata={}, owner=owner,
    )  # fmt: skip


def test_view_shows_saga_progress() -> None:
    """The view lists unfinished sagas with their phase and progress."""
    from supervisors._operator._live import render_view
    from supervisors._operator._metrics import OperatorSnapshot

    snap = OperatorSnapshot(
        at=5.0, sagas=[_summary("video-7", "step_in_flight"), _summary("v-8", "compensating")]
    )
    console = _recording_console()
    console.print(render_view(snap, title="demo", started_at=0.0))
    text = console.export_text()
    assert "demo | health - | up 0:05" in text
    assert "sagas: 2 unfinished" in text
    assert "video-7" in text
    assert "step_in_flight" in text
    assert "compensating" in text
    assert "owner" not in text  # a journal of one instance: no owners


def test_view_shows_each_sagas_owner_in_a_fleet_journal() -> None:
    """With a journal shared by a fleet the sagas table names each saga's owner instance."""
    from supervisors._operator._live import render_view
    from supervisors._operator._metrics import OperatorSnapshot

    a, b = "3f2a9c1e4b7d" + "0" * 20, "8b1d77aa02c4" + "1" * 20
    snap = OperatorSnapshot(
        at=5.0, sagas=[_summary("video-7", "step_in_flight", a), _summary("v-8", "running", b)]
    )
    console = _recording_console()
    console.print(render_view(snap, title="demo", started_at=0.0))
    rows = {line.split()[0]: line.split() for line in console.export_text().splitlines() if line}
    assert "owner" in rows["saga"]
    assert rows["video-7"][-1] == a[:12]
    assert rows["v-8"][-1] == b[:12]


def test_change_log_reports_transitions() -> None:
    """The plain view logs health changes, breaker transitions, alerts and restarts once each."""
    from actors._monitor._state import MonitorState
    from actors._policies._config._monitoring import MonitorSettings
    from supervisors._operator._live import ChangeLog
    from supervisors._operator._metrics import OperatorSnapshot

    state = MonitorState(MonitorSettings(min_calls=1))
    changes = ChangeLog()

    def snap(now: float, restarts: int) -> OperatorSnapshot:
        tree = TreeNode(name="", path="", kind="supervisor", state="running", restarts=0,
                        children=(TreeNode(name="w", path="w", kind="actor", state="running",
                                           restarts=restarts),))  # fmt: skip
        return OperatorSnapshot(
            at=now,
            health=state.health(now),
            breakers=state.breakers(),
            alerts=state.alerts(),
            tree=tree,
        )

    state.record(CallReport("svc", True, 0.1, 0.0), 0.0)
    first = [message for _, message in changes.changes(snap(0.0, 0))]
    assert first == ["health - -> healthy"]
    state.record(BreakerReport("svc", "closed", "open", 1.0), 1.0)
    second = [message for _, message in changes.changes(snap(1.0, 1))]
    assert "health healthy -> unhealthy" in second
    assert "breaker svc: closed -> open" in second
    assert any(m.startswith("alert raised #1 critical breaker_open svc") for m in second)
    assert "w restarted (restarts=1)" in second
    assert list(changes.changes(snap(1.5, 1))) == []
    state.record(BreakerReport("svc", "open", "closed", 2.0), 2.0)
    third = [message for _, message in changes.changes(snap(2.0, 1))]
    assert "breaker svc: open -> closed" in third
    assert "alert resolved #1 breaker_open svc" in third
