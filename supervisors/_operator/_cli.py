"""The ``aura`` command: run a supervision tree with a live view, check configuration, ask status.

Theory of operation
-------------------
``aura run MODULE[:TREE]`` imports ``MODULE`` (the current directory is added at the *end* of
the import path, so a file there named like an installed package never shadows it) and builds
its tree. By convention the module defines ``build_tree(config) -> SupervisorSpec``; ``TREE``
names another attribute: a ``SupervisorSpec``, or a callable taking the configuration (or
nothing) and returning one. An optional ``async def workload(root) -> None`` drives traffic; the
run ends when it returns, after ``--seconds``, or on Ctrl-C (the first one stops the run
gracefully: the tree shuts down in order). While the tree runs, its supervision events are
forwarded to the monitor (``--monitor PATH``, default ``monitor``), the live view redraws from
snapshots (``supervisors._operator._live``) that include the saga coordinator's unfinished sagas
when there is one (``--sagas PATH``, default ``sagas``), and ``--admin-port`` adds the admin API as
a dynamic child of the root (named ``aura-admin``; its write token comes from ``$AURA_ADMIN_TOKEN``
or ``--admin-token-file``, never the command line, which every user of the machine can read; an
optional read token, which every read but health then needs, from ``$AURA_ADMIN_READ_TOKEN`` or
``--admin-read-token-file``). With ``--no-live``, or when stdout is not a terminal, the view is
plain log lines instead: what changed between snapshots, and a summary line every ``--every``
seconds.

``aura config example`` prints the example configuration that ships with the package (every
setting, commented), to copy and edit.  ``aura config check FILE`` loads a configuration with
:func:`actors.load_config` and prints every provider's effective settings; an invalid file
prints the error with the dotted path of the offending field and exits 1.

``aura status URL`` reads health, breakers, alerts, the fleet (when the application is one
of a fleet) and the saga journal (with the instances sharing it, for a PostgreSQL journal) from
a running application's admin API with httpx, sending
``$AURA_ADMIN_READ_TOKEN`` (or ``$AURA_ADMIN_TOKEN``, or the contents of ``--token-file``) as
its bearer token when one is set.  ``aura isolate URL SERVICE`` and ``aura reset URL SERVICE``
hold a provider's breaker open or close it through the admin API (fleet-wide when the provider
shares its breaker), with the write token (``$AURA_ADMIN_TOKEN`` or ``--token-file``);
``aura discard URL SAGA_ID`` removes a saga that ended (a ``compensation_failed`` one an
operator has fixed by hand) from the journal, with the same token.

``aura sagas URL [SAGA_ID]`` lists the unfinished sagas with their owners (or prints one
saga), and ``aura journal migrate --from sqlite:PATH --to URL`` copies a SQLite journal into
PostgreSQL: both in ``supervisors._operator._cli_journal``.

``aura --version`` prints the installed version.  A command that needs an optional dependency
(``rich`` for the live view, ``httpx`` for ``status``, the admin API's for ``--admin-port``)
checks it first and says which extra installs it (``pip install 'aura-actors[cli]'``).

Exit codes: 0 success (``status``: healthy or degraded); 1 an error (bad file, failed run,
unreachable server); 2 bad command-line usage (argparse's) or, for ``status``, an unhealthy
application; 130 a run stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import io
import logging
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import msgspec
import trio

from actors._errors import ActorError, AuraError, ConfigError
from actors._policies._config._fleet import safe_url
from actors._policies._config._schema import ResilienceConfig, example_config, load_config
from actors._policies._logs import format_exception, library_logger
from actors._policies._redact import redact
from actors._saga._messages import ListSagas
from supervisors._errors import NoSuchChild
from supervisors._events import SupervisionEvent
from supervisors._operator._cli_journal import (
    add_journal_commands,
    cmd_journal,
    cmd_sagas,
    format_journal,
    shown_text,
)
from supervisors._operator._extras import install_hint, require
from supervisors._operator._logging import CorrelationFilter, JsonFormatter, configure_logging
from supervisors._operator._metrics import OperatorSnapshot, take_snapshot
from supervisors._spec import SupervisorSpec
from supervisors._tree import Supervisor, open_supervisor

if TYPE_CHECKING:
    from rich.console import Console

    from supervisors._operator._admin._settings import AdminSettings

__all__ = ["main"]

logger: Final = library_logger("supervisors.cli")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_UNHEALTHY: Final = 2
EXIT_INTERRUPTED: Final = 130


class UsageError(Exception):
    """A problem with what the user asked for (a module, a tree attribute): exit 1."""


# ================================================================================ aura run


def _import(target: str) -> tuple[Any, str | None]:
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise UsageError(f"expected MODULE[:TREE], got {target!r}")
    # The current directory goes *last*: the tree's module and its siblings import from it,
    # but a stray ./starlette.py (or any file named like a dependency) shadows nothing.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    return module, attribute or None


def load_tree(
    target: str, config: ResilienceConfig | None
) -> tuple[SupervisorSpec, Callable[[Supervisor], Awaitable[object]] | None]:
    """Import ``MODULE[:TREE]`` and build its tree; also return its ``workload``, if any.

    Raises:
        UsageError: the module cannot be imported, the attribute is missing, or it does not
            give a ``SupervisorSpec``.
    """
    module, attribute = _import(target)
    name = attribute or "build_tree"
    if not hasattr(module, name):
        raise UsageError(
            f"{module.__name__} has no {name!r}: define build_tree(config) -> SupervisorSpec, "
            "or name the tree with MODULE:ATTRIBUTE"
        )
    source = getattr(module, name)
    spec = source
    if callable(source) and not isinstance(source, SupervisorSpec):
        positional = (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        )
        try:
            parameters = inspect.signature(source).parameters.values()
            takes_config = any(p.kind in positional for p in parameters)
        except (TypeError, ValueError):
            takes_config = True
        spec = source(config) if takes_config else source()
    if not isinstance(spec, SupervisorSpec):
        raise UsageError(
            f"{module.__name__}.{name} must be (or return) a SupervisorSpec, "
            f"not {type(spec).__name__}"
        )
    workload = getattr(module, "workload", None)
    if workload is not None and not callable(workload):
        raise UsageError(f"{module.__name__}.workload must be an async function")
    return spec, workload


class _Forwarder:
    """Forwards supervision events to the monitor without ever raising into the tree."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor
        self.dropped = 0

    def __call__(self, event: SupervisionEvent) -> None:
        try:
            self.monitor.tell_nowait(event)
        except ActorError:
            self.dropped += 1


async def _watch_interrupts(scope: trio.CancelScope, interrupted: list[bool]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if interrupted:
                raise KeyboardInterrupt  # a second Ctrl-C: stop without waiting
            interrupted.append(True)
            logger.warning("stopping (Ctrl-C again to force)")
            scope.cancel()


async def run_tree(
    spec: SupervisorSpec,
    workload: Callable[[Supervisor], Awaitable[object]] | None,
    args: argparse.Namespace,
    console: Console | None,
    admin_settings: AdminSettings | None = None,
) -> int:
    """Run the tree with the view until the workload ends, time runs out or Ctrl-C.

    With ``admin_settings`` the admin API runs beside the view (the child ``aura-admin``).
    """
    interrupted: list[bool] = []
    async with open_supervisor(spec) as root:
        try:
            monitor = root.ref(args.monitor)
        except NoSuchChild:
            logger.warning("no monitor at %r: the view shows the tree only", args.monitor)
            monitor = None
        forwarder = _Forwarder(monitor) if monitor is not None else None
        remove = root.add_listener(forwarder) if forwarder is not None else None
        if admin_settings is not None:
            from supervisors._operator._admin._actor import AdminActor, GetAdminAddress
            from supervisors._spec import ChildSpec

            settings = admin_settings
            admin = await root.start_child(
                ChildSpec("aura-admin", lambda: AdminActor(settings, tree=root), shutdown=5.0)
            )
            address = await admin.ask(GetAdminAddress())
            writes = "need the token" if settings.token else "disabled: no token"
            logger.warning(
                "admin API on %s (writes %s); live dashboard: %s/dashboard",
                address.url,
                writes,
                address.url,
            )

        try:
            sagas = root.ref(args.sagas)
        except NoSuchChild:
            sagas = None

        async def snapshot() -> OperatorSnapshot:
            from supervisors._operator._admin._actor import find_providers

            return await take_snapshot(
                monitor,
                tree=root.snapshot(),
                providers=find_providers(root),
                sagas=sagas,
                sagas_query=ListSagas(),
            )

        with trio.CancelScope() as run_scope:
            if args.seconds is not None:
                run_scope.deadline = trio.current_time() + args.seconds
            async with trio.open_nursery() as nursery:
                if threading_is_main():
                    nursery.start_soon(_watch_interrupts, run_scope, interrupted)
                if console is not None:
                    from supervisors._operator._live import run_live

                    nursery.start_soon(
                        lambda: run_live(snapshot, console, refresh=args.refresh, title=args.target)
                    )
                else:
                    from supervisors._operator._live import run_plain

                    nursery.start_soon(
                        lambda: run_plain(snapshot, refresh=args.refresh, summary_every=args.every)
                    )
                if workload is not None:
                    await workload(root)
                    logger.info("the workload finished")
                else:
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()
        if remove is not None:
            remove()
        if forwarder is not None and forwarder.dropped:
            logger.warning("%d supervision events were not forwarded (monitor full)",
                           forwarder.dropped)  # fmt: skip
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def threading_is_main() -> bool:
    """Whether signals can be received here (only the main thread gets them)."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _cmd_run(args: argparse.Namespace, console: Console | None, stderr: TextIO) -> int:
    config = None
    if args.config is not None:
        config = load_config(args.config)
    if args.admin_port is not None:
        require("the admin API (--admin-port)", "h11", "starlette", "prometheus_client")
    spec, workload = load_tree(args.target, config)
    # Without a terminal (CI, a pipe) a live view would only show its last frame: log lines.
    live = not args.no_live and (console is not None or _is_terminal(sys.stdout))
    view_console = None
    root_logger = logging.getLogger()
    previous_level = root_logger.level
    if live:
        require("aura run's live view (--no-live needs nothing more)", "rich")
        from rich.console import Console

        view_console = console or Console()
        handler: logging.Handler = _console_handler(view_console, args.log_json)
        root_logger.addHandler(handler)
        root_logger.setLevel(args.log_level or logging.WARNING)
    else:
        handler = configure_logging(
            json=args.log_json, level=args.log_level or logging.INFO, stream=stderr
        )
    try:
        admin = _admin_settings(args)
        return trio.run(run_tree, spec, workload, args, view_console, admin)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except UsageError:
        raise
    except Exception as exc:
        error = _leaf(exc)
        if isinstance(error, AuraError):
            raise error from None  # main() prints its message
        print("error: the run failed:", file=stderr)
        print(format_exception(error), file=stderr)
        return EXIT_ERROR
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous_level)


TOKEN_VARIABLE: Final = "AURA_ADMIN_TOKEN"
READ_TOKEN_VARIABLE: Final = "AURA_ADMIN_READ_TOKEN"


def _admin_settings(args: argparse.Namespace) -> AdminSettings | None:
    """The admin API's settings from the command line (``None`` without ``--admin-port``).

    The token comes from ``--admin-token-file`` or ``$AURA_ADMIN_TOKEN``, never from the
    command line, where every user of the machine can read it (``/proc/PID/cmdline``).

    Raises:
        UsageError: the token file cannot be read, or a setting is refused (a short token, a
            non-loopback address without ``--admin-allowed-host``).
    """
    if args.admin_port is None:
        return None
    from supervisors._operator._admin._settings import AdminSettings

    token = os.environ.get(TOKEN_VARIABLE) or None
    if args.admin_token_file is not None:
        token = _read_token_file(args.admin_token_file)
    read_token = os.environ.get(READ_TOKEN_VARIABLE) or None
    if args.admin_read_token_file is not None:
        read_token = _read_token_file(args.admin_read_token_file)
    try:
        return AdminSettings(
            host=args.admin_host,
            port=args.admin_port,
            token=token,
            read_token=read_token,
            monitor=args.monitor,
            sagas=args.sagas,
            allowed_hosts=frozenset(args.admin_allowed_host) if args.admin_allowed_host else None,
        )
    except ValueError as exc:
        hint = ""
        if "allowed_hosts" in str(exc):
            hint = " (aura run: --admin-allowed-host NAME, once per name)"
        elif "token" in str(exc):
            hint = (
                f" (aura run: ${TOKEN_VARIABLE} or --admin-token-file FILE; "
                f"${READ_TOKEN_VARIABLE} or --admin-read-token-file FILE)"
            )
        raise UsageError(f"{exc}{hint}") from None


def _read_token_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot read the admin token file {path!r}: {reason}") from None
    if mode & 0o077:
        logger.warning(
            "the admin token file %r is readable by other users (mode %o): chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return text.strip()


class _RefuseTokenArgument(argparse.Action):
    """``--admin-token VALUE`` is refused: the process list would show the token."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        parser.error(
            f"--admin-token would show the token to every user in the process list: set "
            f"${TOKEN_VARIABLE} or use --admin-token-file FILE"
        )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _leaf(exc: BaseException) -> BaseException:
    """The single exception inside nested one-exception groups (``exc`` itself otherwise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _console_handler(console: Console, json: bool) -> logging.Handler:
    from supervisors._operator._live import ConsoleLogHandler

    handler = ConsoleLogHandler(console)  # plain, escaped lines by default
    handler.addFilter(CorrelationFilter())
    if json:
        handler.setFormatter(JsonFormatter())
    return handler


# ================================================================================ aura config check


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        out[prefix] = ",".join(str(v) for v in value) or "[]"
    else:
        out[prefix] = (
            "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        )


def describe_config(config: ResilienceConfig) -> str:
    """The effective settings as text.

    Every default is listed; then, per named provider, the settings in which its effective
    settings differ from the defaults (everything else it takes from the defaults); then the
    monitoring and idempotency sections, and the fleet's when there is one (its store's URL
    without credentials).
    """
    data = _printable(config)
    defaults: dict[str, str] = {}
    _flatten(data["defaults"], "", defaults)
    width = max(len(key) for key in defaults)
    lines = ["defaults (every setting a provider does not override, and providers not named):"]
    lines += [f"  {key.ljust(width)}  {value}" for key, value in defaults.items()]
    lines += ["", "providers (their settings that differ from the defaults):"]
    if not data["providers"]:
        lines.append("  (none named)")
    for name, settings in data["providers"].items():
        rows: dict[str, str] = {}
        _flatten(settings, "", rows)
        changed = {k: v for k, v in rows.items() if defaults.get(k) != v}
        lines.append(f"  {name}" + ("" if changed else ": the defaults"))
        lines += [
            f"    {key.ljust(width - 2)}  {value}  (default {defaults.get(key, '-')})"
            for key, value in changed.items()
        ]
    for section in ("monitoring", "idempotency", "fleet"):
        if data[section] is None:
            continue
        rows = {}
        _flatten(data[section], "", rows)
        lines += ["", f"{section}:"]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows.items()]
    return "\n".join(lines)


def _printable(config: ResilienceConfig) -> dict[str, Any]:
    """The configuration as plain data, the fleet store's credentials hidden."""
    data = config.to_dict()
    if data.get("fleet") is not None:
        data["fleet"]["redis_url"] = safe_url(data["fleet"]["redis_url"])
    return data


def _cmd_config_check(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=stderr)
        if exc.path:
            print(f"field: {exc.path}", file=stderr)
        return EXIT_ERROR
    if args.json:
        print(msgspec.json.encode(_printable(config)).decode(), file=stdout)
    else:
        print(f"{args.file}: valid", file=stdout)
        print(describe_config(config), file=stdout)
    return EXIT_OK


# ================================================================================ aura status


def _cmd_status(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    require("aura status", "httpx")
    import httpx

    base = args.url.rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    results: dict[str, Any] = {}
    token = os.environ.get(READ_TOKEN_VARIABLE) or os.environ.get(TOKEN_VARIABLE) or None
    if args.token_file is not None:
        token = _read_token_file(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, timeout=args.timeout, headers=headers) as client:
            for key, path in (
                ("health", "/api/resilience/health"),
                ("breakers", "/api/resilience/circuit-breakers"),
                ("alerts", "/api/resilience/alerts"),
                ("fleet", "/api/resilience/fleet"),
                ("journal", "/api/resilience/journal"),
            ):
                response = client.get(path)
                if key == "fleet" and response.status_code == 404:
                    continue  # an application from before fleets
                if key == "journal" and response.status_code in (404, 503):
                    continue  # no saga coordinator (or an application from before fleets)
                if response.status_code not in (200, 503) or not response.headers.get(
                    "content-type", ""
                ).startswith("application/json"):
                    answered = f"answered {response.status_code}"
                    print(f"error: GET {_text(base)}{path} {answered}", file=stderr)
                    return EXIT_ERROR
                results[key] = response.json()
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {_text(base)}: {_text(exc)}", file=stderr)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"error: {_text(base)} did not answer JSON: {_text(exc)}", file=stderr)
        return EXIT_ERROR
    health = results["health"]
    if "status" not in health:
        print(f"error: {_text(base)}: {_text(health.get('error', health))}", file=stderr)
        return EXIT_ERROR
    if args.json:
        print(msgspec.json.encode(results).decode(), file=stdout)
    else:
        print(format_status(_text(base), results), file=stdout)
    return EXIT_UNHEALTHY if health["status"] == "unhealthy" else EXIT_OK


def format_status(base: str, results: dict[str, Any]) -> str:
    """The plain-text report of ``aura status``.

    Everything the server sent is escaped (:func:`~actors._policies._redact.escape_control`): a
    name or message cannot move the cursor, clear the screen or start a line of its own.
    """
    health = results["health"]
    lines = [f"{base}: {_text(health['status'])}"]
    lines += [f"  {_text(reason)}" for reason in health.get("reasons", [])]
    services = health.get("services", {})
    breakers = results.get("breakers", {}).get("breakers", [])
    lines += ["", "breakers:"]
    if not breakers:
        lines.append("  (none reported)")
    for b in breakers:
        service = services.get(b["service"], {})
        lines.append(
            f"  {_text(b['service']):<20} {_text(b['state']):<10} trips={_text(b['trips']):<4} "
            f"health={_text(service.get('status', '-'))}"
        )
    active = results.get("alerts", {}).get("active", [])
    lines += ["", f"alerts: {len(active)} active"]
    for a in active:
        lines.append(
            f"  #{_text(a['id'])} {_text(a['severity']):<8} {_text(a['rule']):<24} "
            f"{_text(a['service'])}: {_text(a['message'])}"
        )
    for member in results.get("fleet", {}).get("members", []):
        lines += [
            "",
            f"fleet: instance {_text(member['instance'])} at {_text(member['store'])}: "
            f"{_text(member['status'])}, {_text(member['live'])} live instance(s)",
        ]
        lines += [f"  {_text(reason)}" for reason in member.get("reasons", [])]
        for b in member.get("breakers", []):
            view = "" if b.get("fresh", True) else " (stale: ignored)"
            lines.append(
                f"  {_text(b['service']):<20} {_text(b['state']):<10} epoch={_text(b['epoch'])} "
                f"votes={_text(b['votes'])}{view}"
            )
    journal = results.get("journal")
    if journal is not None and "kind" in journal:
        lines += ["", *format_journal(journal)]
    return "\n".join(lines)


def _admin_client(args: argparse.Namespace, token_variables: Sequence[str]) -> Any:
    """An httpx client of the admin API at ``args.url`` with the bearer token of
    ``--token-file`` or the first of ``token_variables`` set."""
    import httpx

    base = args.url.rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    token = next((os.environ[v] for v in token_variables if os.environ.get(v)), None)
    if args.token_file is not None:
        token = _read_token_file(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, timeout=args.timeout, headers=headers)


def _cmd_breaker(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``aura isolate|reset URL SERVICE`` and ``aura discard URL SAGA_ID``: POST to the
    provider's breaker endpoint, or to the saga's discard endpoint."""
    import httpx

    base = args.url.rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    token = os.environ.get(TOKEN_VARIABLE) or None
    if args.token_file is not None:
        token = _read_token_file(args.token_file)
    if not token:
        print(
            f"error: {args.command} needs the admin API's write token: set ${TOKEN_VARIABLE} "
            "or give --token-file FILE",
            file=stderr,
        )
        return EXIT_ERROR
    from urllib.parse import quote

    if args.command == "discard":
        path = f"/api/resilience/sagas/{quote(args.saga_id, safe='')}/discard"
    else:
        path = f"/api/resilience/providers/{quote(args.service, safe='')}/{args.command}"
    try:
        with httpx.Client(base_url=base, timeout=args.timeout) as client:
            response = client.post(path, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {base}: {_text(exc)}", file=stderr)
        return EXIT_ERROR
    try:
        body = response.json()
    except ValueError:
        print(f"error: POST {base}{path} answered {response.status_code}", file=stderr)
        return EXIT_ERROR
    if response.status_code != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        print(
            f"error: {_text(error.get('message', response.status_code))}"
            + (f"\n{_text(error['action'])}" if error.get("action") else ""),
            file=stderr,
        )
        return EXIT_ERROR
    if args.command == "discard":
        print(
            f"saga {_text(body.get('saga_id'))} ({_text(body.get('phase'))}) discarded from "
            "the journal",
            file=stdout,
        )
        return EXIT_OK
    fleet = body.get("fleet")
    where = "" if fleet is None else f", fleet breaker {_text(fleet)}"
    print(f"{_text(args.service)}: breaker {_text(body.get('breaker'))}{where}", file=stdout)
    return EXIT_OK


_text = shown_text


# ================================================================================ main


def _level(text: str) -> int:
    value = logging.getLevelName(text.upper())
    if not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("aura-actors")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``aura`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="aura", description="Operate aura-actors supervision trees."
    )
    parser.add_argument("--version", action="version", version=f"aura-actors {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run a supervision tree with a live view",
        description="Run MODULE's tree (build_tree(config), or MODULE:TREE) with a live view; "
        "its optional `async def workload(root)` drives traffic.",
    )
    run.add_argument("target", metavar="MODULE[:TREE]")
    run.add_argument("--config", metavar="FILE", help="resilience configuration (TOML or JSON)")
    run.add_argument("--monitor", default="monitor", metavar="PATH", help="the monitor's path")
    run.add_argument(
        "--sagas", default="sagas", metavar="PATH", help="the saga coordinator's path, if any"
    )
    run.add_argument("--seconds", type=_positive, help="stop after this many seconds")
    run.add_argument(
        "--no-live",
        action="store_true",
        help="plain log lines (the default when stdout is not a terminal: CI, pipes)",
    )
    run.add_argument("--log-json", action="store_true", help="log records as JSON lines")
    run.add_argument("--log-level", type=_level, help="default INFO (--no-live), else WARNING")
    run.add_argument("--refresh", type=_positive, default=0.5, help="seconds between redraws")
    run.add_argument(
        "--every", type=_positive, default=5.0, help="seconds between summary lines (--no-live)"
    )
    run.add_argument("--admin-port", type=int, metavar="N", help="serve the admin API on port N")
    run.add_argument("--admin-host", default="127.0.0.1", help="the admin API's address")
    run.add_argument(
        "--admin-allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name clients use to reach the admin API (repeat; needed off loopback; "
        "'*' accepts any)",
    )
    run.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="read the bearer token for admin writes from FILE (default: $AURA_ADMIN_TOKEN; "
        "at least 16 characters; none disables writes)",
    )
    run.add_argument(
        "--admin-read-token-file",
        metavar="FILE",
        help="read a bearer token for admin reads from FILE (default: $AURA_ADMIN_READ_TOKEN; "
        "none: every read is public; health is always public)",
    )
    run.add_argument("--admin-token", action=_RefuseTokenArgument, help=argparse.SUPPRESS)

    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate a configuration file and print the effective settings"
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument("--json", action="store_true", help="print the settings as JSON")
    config_commands.add_parser(
        "example",
        help="print the example configuration (every default, commented) to copy and edit",
    )

    status = commands.add_parser(
        "status", help="health, breakers and alerts of a running app (its admin API)"
    )
    sagas = commands.add_parser(
        "sagas",
        help="the unfinished sagas of a running app with their owners, or one saga",
        description="List the unfinished sagas (and those waiting for an operator) of a "
        "running app from its admin API, each with its owner instance, and the journal's "
        "instances; with SAGA_ID, that saga's audit trail.",
    )
    for reader in (status, sagas):
        reader.add_argument("url", metavar="URL", help="the admin API, e.g. http://127.0.0.1:9470")
        if reader is sagas:
            reader.add_argument("saga_id", metavar="SAGA_ID", nargs="?", help="show this saga")
            reader.add_argument("--limit", type=int, default=50, help="sagas listed (default 50)")
        reader.add_argument("--json", action="store_true", help="print the raw JSON")
        reader.add_argument("--timeout", type=_positive, default=5.0, help="seconds per request")
        reader.add_argument(
            "--token-file",
            metavar="FILE",
            help="send the bearer token in FILE (default: $AURA_ADMIN_READ_TOKEN, else "
            "$AURA_ADMIN_TOKEN; needed when the admin API has a read token)",
        )
    add_journal_commands(commands)
    # The write commands: a POST to the admin API with the write token.
    discard_description = (
        "Remove a saga that ended from the journal of a running app, through its admin API: "
        "the last step after undoing by hand what a compensation_failed saga left done. A saga "
        "still running is refused."
    )
    for name, what, target, target_help, description in (
        (
            "isolate",
            "hold a provider's breaker open (fleet-wide when it is shared)",
            "service",
            "the provider's service name",
            None,
        ),
        (
            "reset",
            "close a provider's breaker (fleet-wide when it is shared)",
            "service",
            "the provider's service name",
            None,
        ),
        (
            "discard",
            "remove a finished saga from the journal (after fixing a compensation_failed one)",
            "saga_id",
            "the saga to remove",
            discard_description,
        ),
    ):
        command = commands.add_parser(
            name, help=what, description=description or f"{what[0].upper()}{what[1:]}."
        )
        command.add_argument("url", metavar="URL", help="the admin API")
        command.add_argument(target, metavar=target.upper(), help=target_help)
        command.add_argument("--timeout", type=_positive, default=5.0, help="seconds")
        command.add_argument(
            "--token-file",
            metavar="FILE",
            help="send the write token in FILE (default: $AURA_ADMIN_TOKEN)",
        )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    console: Console | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The ``aura`` command line; returns the exit code (see the module docstring).

    ``console`` (a ``rich.console.Console``), ``stdout`` and ``stderr`` replace the terminal,
    for tests and embedding.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, console, out, err)
    except BrokenPipeError:
        # The reader went away (`aura config check f | head`): stop quietly, like other tools.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return EXIT_ERROR


def _dispatch(args: argparse.Namespace, console: Console | None, out: TextIO, err: TextIO) -> int:
    try:
        if args.command == "run":
            return _cmd_run(args, console, err)
        if args.command == "config":
            if args.config_command == "example":
                out.write(example_config().read_text(encoding="utf-8"))
                return 0
            return _cmd_config_check(args, out, err)
        if args.command in ("isolate", "reset", "discard"):
            return _cmd_breaker(args, out, err)
        if args.command == "sagas":
            require("aura sagas", "httpx")
            with _admin_client(args, (READ_TOKEN_VARIABLE, TOKEN_VARIABLE)) as client:
                return cmd_sagas(args, client, out, err)
        if args.command == "journal":
            return cmd_journal(args, out, err)
        return _cmd_status(args, out, err)
    except (UsageError, ConfigError) as exc:
        print(f"error: {redact(str(exc))}", file=err)
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        # An optional dependency the command needs (its check names it), or one deeper down.
        text = str(exc)
        if "pip install" not in text and exc.name:
            text = f"{text}: {install_hint(exc.name)}"
        print(f"error: {text}", file=err)
        return EXIT_ERROR
    except AuraError as exc:
        print(f"error: {redact(str(exc))}", file=err)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
