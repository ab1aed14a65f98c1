"""Misconfiguration fails fast and says how to fix it: at construction for specs, when a provider
starts for its monitor and fallback, when a saga coordinator starts for its targets; choices and
did-you-mean for names and paths; install hints for optional extras; asyncio named."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Actor,
    ConfigError,
    ConfigWarning,
    MemoryJournal,
    MonitorActor,
    ProviderActor,
    ResilienceConfig,
    SagaCoordinator,
    SagaDefinition,
    SagaFailed,
    SagaStep,
    SagaStepMessage,
    StartSaga,
    loads_config,
    open_actor,
)
from supervisors import (
    ChildSpec,
    ChildStartFailed,
    NoSuchChild,
    RestartBackoff,
    SupervisorSpec,
    admin_spec,
    open_supervisor,
)
from supervisors._operator import _cli as cli
from supervisors._operator._cli import main


class Echo(Actor[str, str]):
    async def handle(self, message: str) -> str:
        return message


class SyncHandle(Actor[str, str]):
    def handle(self, message: str) -> str:  # type: ignore[override]
        return message


# ------------------------------------------------------------------ specs, at construction


@pytest.mark.parametrize(
    ("build", "choices", "close"),
    [
        (lambda: ChildSpec("a", Echo, restart="always"), "'permanent', 'transient'", None),
        (lambda: ChildSpec("a", Echo, restart="transiant"), "'temporary'", "'transient'"),
        (lambda: SupervisorSpec("s", strategy="one-for-one"), "'rest_for_one'", "'one_for_one'"),
        (lambda: SupervisorSpec("s", restart="Permanent"), "'temporary'", "'permanent'"),
    ],
)
def test_enum_values_list_the_choices_and_the_closest(
    build: Any, choices: str, close: str | None
) -> None:
    """A restart type or strategy that does not exist names every choice and, when one is
    close, suggests it."""
    with pytest.raises(ValueError, match="must be one of") as caught:
        build()
    message = str(caught.value)
    assert choices in message
    if close is not None:
        assert f"did you mean {close}?" in message


@pytest.mark.parametrize(
    "build",
    [
        lambda: ChildSpec("a", Echo, backoff={"min_delay": 1}),
        lambda: SupervisorSpec("s", backoff={"min_delay": 1}),
        lambda: SupervisorSpec("s", backoff=2.0),
    ],
)
def test_a_backoff_that_is_not_a_restart_backoff_is_refused_at_construction(build: Any) -> None:
    """``backoff={...}`` used to be accepted and to kill the tree at the first crash."""
    with pytest.raises(TypeError, match=r"RestartBackoff\(min_delay="):
        build()


def test_a_spec_of_an_actor_class_with_a_sync_handle_is_refused_at_construction() -> None:
    """A non-async ``handle`` is found when the spec is built, not at the first message."""
    with pytest.raises(TypeError, match="async def handle"):
        ChildSpec("s", SyncHandle)


def test_a_spec_of_a_class_that_is_not_an_actor_is_refused() -> None:
    """A factory that is a class must build an Actor."""
    with pytest.raises(TypeError, match="not an Actor subclass"):
        ChildSpec("s", dict)


async def test_a_factory_returning_a_non_actor_is_named_at_start(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A factory returning something else: a TypeError naming the child and what it returned,
    never an AttributeError from inside the runtime."""
    async with open_supervisor([ChildSpec("echo", Echo)]) as root:
        with pytest.raises(ChildStartFailed) as caught:
            await root.start_child(ChildSpec("odd", lambda: 42))  # type: ignore[arg-type,return-value]
    cause = caught.value.__cause__
    assert isinstance(cause, TypeError)
    assert "'odd'" in str(cause)
    assert "returned 42" in str(cause)
    assert "not an Actor" in str(cause)


async def test_a_sync_handle_behind_a_lambda_fails_its_start(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Behind a lambda the class cannot be checked at construction: the actor fails its start
    (``ChildStartFailed``), before any message is lost to it."""
    async with open_supervisor([ChildSpec("echo", Echo)]) as root:
        with pytest.raises(ChildStartFailed) as caught:
            await root.start_child(ChildSpec("sync", lambda: SyncHandle()))
    assert "async def handle" in str(caught.value.__cause__ or caught.value)
    with pytest.raises(TypeError, match="async def handle"):
        async with open_actor(SyncHandle()):
            pass


# ------------------------------------------------------------------ paths


async def test_a_path_with_the_roots_name_says_the_root_is_not_part_of_paths(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``root.ref("app/providers/openai")`` tells that paths start below the root."""
    tree = SupervisorSpec("app", [SupervisorSpec("providers", [ChildSpec("openai", Echo)])])
    async with open_supervisor(tree) as root:
        with pytest.raises(NoSuchChild) as caught:
            root.ref("app/providers/openai")
        assert "root's name is not part of paths" in str(caught.value)
        assert "'providers/openai'" in str(caught.value)
        with pytest.raises(NoSuchChild, match="did you mean 'providers/openai'"):
            root.ref("providers/opneai")
        with pytest.raises(NoSuchChild, match="did you mean 'providers'"):
            root.supervisor("provider")


# ------------------------------------------------------------------ provider start


async def _ok(payload: Any) -> Any:
    return payload


async def test_a_provider_warns_at_start_when_its_monitor_path_resolves_nowhere(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reports would be held (then dropped) in silence: the start says so, with the path
    that was probably meant."""
    caplog.set_level(logging.WARNING, logger="actors.provider")
    tree = [
        ChildSpec("monitor", MonitorActor),
        ChildSpec("svc", lambda: ProviderActor("svc", _ok, monitor="monitr")),
    ]
    async with open_supervisor(tree):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.provider"]
    assert any("'monitr'" in line and "did you mean 'monitor'" in line for line in lines), lines


async def test_a_provider_whose_monitor_starts_after_it_does_not_warn(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A monitor declared later in the tree is found (its slot exists before it starts)."""
    caplog.set_level(logging.WARNING, logger="actors.provider")
    tree = [
        ChildSpec("svc", lambda: ProviderActor("svc", _ok, monitor="monitor")),
        ChildSpec("monitor", MonitorActor),
    ]
    async with open_supervisor(tree):
        pass
    assert not [r for r in caplog.records if r.name == "actors.provider"]


async def test_a_provider_warns_at_start_when_its_fallback_resolves_nowhere(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actors.provider")
    tree = [
        ChildSpec("ollama", lambda: ProviderActor("ollama", _ok)),
        ChildSpec("svc", lambda: ProviderActor("svc", _ok, fallback="olama")),
    ]
    async with open_supervisor(tree):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.provider"]
    assert any("fallback" in line and "did you mean 'ollama'" in line for line in lines), lines


# ------------------------------------------------------------------ saga coordinator start


class Ledger(Actor[SagaStepMessage, str]):
    async def handle(self, message: SagaStepMessage) -> str:
        return "done"


async def test_a_saga_target_that_does_not_exist_fails_the_coordinators_start(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Found when the coordinator starts, before any saga has taken effect."""
    sent: list[Any] = []

    class Recording(Actor[SagaStepMessage, str]):
        async def handle(self, message: SagaStepMessage) -> str:
            sent.append(message)
            return "done"

    order = SagaDefinition(
        "order",
        [SagaStep("reserve", "ledger", lambda ctx: 1), SagaStep("charge", "ledgre", lambda ctx: 2)],
    )
    journal = MemoryJournal()
    async with open_supervisor([ChildSpec("ledger", Recording)]) as root:
        with pytest.raises(ChildStartFailed) as caught:
            await root.start_child(ChildSpec("sagas", lambda: SagaCoordinator(journal, [order])))
    cause = caught.value.__cause__
    assert isinstance(cause, ConfigError)
    assert "'charge'" in str(cause)
    assert "'ledgre'" in str(cause)
    assert "did you mean 'ledger'" in str(cause)
    assert not sent


async def test_a_restarted_coordinator_starts_despite_a_missing_target(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The check refuses only the coordinator's first start.  Restarted (here after its
    target was terminated by an operator), it starts with a WARNING naming the step and the
    target, and a saga that reaches that step fails through the step's normal path (and is
    compensated), instead of the coordinator's restarts failing until its supervisor gives up."""
    order = SagaDefinition(
        "order",
        [
            SagaStep("reserve", "ledger", lambda ctx: 1, compensate=lambda ctx: -1),
            SagaStep("charge", "bank", lambda ctx: 2),
        ],
    )
    journal = MemoryJournal()
    tree = [
        ChildSpec("ledger", Ledger),
        ChildSpec("bank", Ledger),
        ChildSpec("sagas", lambda: SagaCoordinator(journal, [order])),
    ]
    async with open_supervisor(tree) as root:
        await root.terminate_child("bank")
        await root.terminate_child("sagas")
        with caplog.at_level(logging.WARNING, logger="actors.saga"):
            await root.restart_child("sagas")  # refused before: ChildStartFailed(ConfigError)
        warnings = [r for r in caplog.records if r.name == "actors.saga"]
        assert len(warnings) == 1, warnings
        assert warnings[0].levelno == logging.WARNING
        assert "'charge'" in warnings[0].getMessage()
        assert "'bank'" in warnings[0].getMessage()
        with pytest.raises(SagaFailed) as failed:
            await root.ref("sagas").ask(StartSaga("order", None, saga_id="o-1"), timeout=60)
        assert failed.value.step_name == "charge"
        assert failed.value.outcome == "compensated"
        assert list(failed.value.compensated) == ["reserve"]
        # Restarted once the target is back, the coordinator runs sagas through it again.
        await root.restart_child("bank")
        result = await root.ref("sagas").ask(StartSaga("order", None, saga_id="o-2"), timeout=60)
        assert set(result.results) == {"reserve", "charge"}


# ------------------------------------------------------------------ configuration


def test_a_provider_section_with_a_typo_is_pointed_out() -> None:
    """``[providers.opneai]`` and a provider named "openai": asking for openai's settings
    warns that it gets the defaults and names the section that was probably meant."""
    config = loads_config(
        "[providers.opneai]\nretry.max_attempts = 7\n", format="toml", source="r.toml"
    )
    with pytest.warns(ConfigWarning, match=r"did you mean \[providers\.opneai\]"):
        settings = config.for_provider("openai")
    assert settings.retry.max_attempts == config.defaults.retry.max_attempts


def test_a_fallback_with_a_typo_is_pointed_out() -> None:
    with pytest.warns(ConfigWarning, match="did you mean 'ollama'"):
        loads_config('[providers.ollama]\n[providers.openai]\nfallback = "olama"\n', format="toml")


def test_an_enum_value_in_a_file_gets_a_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="did you mean 'exponential'"):
        loads_config('[defaults.retry.backoff]\nkind = "exponental"\n', format="toml")


def test_the_default_configuration_is_named_without_jargon() -> None:
    config = ResilienceConfig.default()
    assert config.for_provider("openai").retry.max_attempts == 4


# ------------------------------------------------------------------ optional extras, asyncio


def test_aura_status_without_httpx_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    err = io.StringIO()
    assert main(["status", "http://127.0.0.1:1"], stdout=io.StringIO(), stderr=err) == 1
    assert "pip install 'aura-actors[cli]'" in err.getvalue()


def test_aura_run_without_rich_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "aura_plain_tree.py").write_text(
        "from actors import MonitorActor\n"
        "from supervisors import ChildSpec, SupervisorSpec\n"
        "def build_tree():\n"
        "    return SupervisorSpec('plain', [ChildSpec('monitor', MonitorActor)])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: True)  # a live view is due
    err = io.StringIO()
    assert main(["run", "aura_plain_tree", "--seconds", "0.1"], stderr=err) == 1
    assert "pip install 'aura-actors[cli]'" in err.getvalue()


def test_the_admin_api_without_its_extra_says_which_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(ImportError, match=r"pip install 'aura-actors\[admin\]'"):
        admin_spec(port=0)


def test_under_asyncio_the_error_names_trio() -> None:
    async def main() -> None:
        async with open_supervisor([ChildSpec("echo", Echo)]):
            pass

    with pytest.raises(RuntimeError, match=r"runs under trio: use trio\.run\(main\)"):
        asyncio.run(main())

    async def unsupervised() -> None:
        async with open_actor(Echo()):
            pass

    with pytest.raises(RuntimeError, match="runs under trio"):
        asyncio.run(unsupervised())


def test_a_backoff_given_as_a_restart_backoff_still_works() -> None:
    spec = ChildSpec("a", Echo, backoff=RestartBackoff(min_delay=0.5))
    assert spec.backoff is not None


def test_aura_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("aura-actors 0.")


def test_the_example_configuration_ships_with_the_package() -> None:
    """It loads from the installed package, equals the built-in defaults, and ``aura config
    example`` prints it (identical to the copy in examples/)."""
    from actors import example_config, load_config

    path = example_config()
    assert load_config(path) == ResilienceConfig.default()
    out = io.StringIO()
    assert main(["config", "example"], stdout=out) == 0
    assert out.getvalue() == path.read_text()
    examples = Path(__file__).resolve().parent.parent / "examples" / "resilience.toml"
    assert examples.read_text() == path.read_text()
    assert "seed" not in path.read_text().lower()
