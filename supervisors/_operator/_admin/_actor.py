"""The admin HTTP API: an ASGI app over the monitor and the tree, served by a supervised actor.

Theory of operation
-------------------
:func:`admin_spec` returns the :class:`~supervisors.ChildSpec` of an :class:`AdminActor`.  Added
to a supervision tree, the actor starts an :class:`~supervisors._operator._http.HttpServer`
(HTTP/1.1 over
h11, every resource bounded: connections, read and write deadlines, no HTTP/2) in its own scope,
so the tree's shutdown, or a restart, stops the server: the actor's ``on_stop`` stops it, which
takes at most ``graceful_timeout``, and a cancellation cuts it short.  Requests are served by
tasks of that scope; they read the monitor, provider actors and saga coordinator by *asking*
them, so the HTTP layer holds no state of its own and never blocks an actor.

The app (:func:`build_admin_app`) is a starlette router with one small function per endpoint.
Everything it answers, errors included, is JSON encoded with msgspec; every error body is::

    {"error": {"status": 404, "code": "unknown_service", "message": "...", "action": "..."}}

Safety, by default:

* the server binds ``127.0.0.1``, and while it is bound to a loopback address it answers only
  requests whose ``Host`` is a loopback name (a browser tricked by DNS rebinding gets 400);
  bound to any other address it needs ``allowed_hosts`` (the names clients use, or ``*`` for
  any, logged as a warning), so the defence is never switched off silently;
* every ``POST`` needs ``Authorization: Bearer <token>`` with the configured token (at least
  16 characters): 401 without one, 403 with a wrong one (compared with
  :func:`hmac.compare_digest`) or when no token is configured, which disables writes; a client
  address that sent too many wrong tokens gets 429 until its bucket refills
  (:class:`FailedAttempts`);
* reads are public by default; with a ``read_token`` every ``GET`` but
  ``/api/resilience/health`` needs ``Authorization: Bearer`` with the read token or the write
  token (the same 401/403/429 rules), as an actuator exposes only health without credentials;
* bad input is the client's error: an unknown route 404, a wrong method 405, an unknown
  service or alert 404, a malformed query value or body 400, a body over ``max_body`` bytes
  413; never a 5xx.  503 means the monitor (or the actor asked) is not available, and answers
  ``GET /api/resilience/health`` when the application is unhealthy;
* responses are bounded: recent errors come in pages of at most ``max_page`` records; other
  lists are bounded by the monitor's own limits (``max_services``, the alert history) and by
  the size of the tree.

Finding the other actors.  The monitor and the saga coordinator are found by their paths in
the tree (``monitor``, ``sagas``).  Provider actors are found by walking the tree's actor
slots for running :class:`~actors.ProviderActor` instances, or given as a ``{service: path}``
mapping; the fleet member (``GET /api/resilience/fleet``, the ``aura_fleet_*`` metrics) is
the one they were given, or ``fleet=``.  The supervision snapshot comes from the
:class:`~supervisors.Supervisor` handle when one is given (``tree=root``, or a function
returning it); otherwise it is rebuilt from the actor slots (actors exactly; their
supervisors with state ``running`` and no restart count).

The live dashboard.  The actor also runs a :class:`~supervisors._operator._admin._stream.StreamHub`
that reads the actors while anyone watches and pushes what changed over Server-Sent Events
(``GET /api/resilience/stream``, a read endpoint: the read token applies), to the page served
at ``GET /dashboard`` from the package (``_dashboard``; public: it holds no data).

Layout: the actor, its spec and the tree snapshot here; :class:`AdminSettings` in
``_settings``; the app's routes and endpoints in ``_routes``; what every endpoint shares (the
error shape, the backend that asks the actors, request parsing, the token check) in
``_requests``; the event stream in ``_stream``; the dashboard's page in ``_dashboard`` and its
files in ``dashboard/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from actors._core._actor import Actor
from actors._core._ref import ActorRef
from actors._core._reply import Failure
from actors._errors import ActorError
from actors._policies._ratelimit import RateLimiterSettings
from actors._protocol import FleetMember
from actors._provider._actor import ProviderActor
from supervisors._events import TreeNode
from supervisors._operator._admin._requests import (
    AdminBackend,
    ErrorBody,
    ErrorInfo,
    _encoder,
    logger,
)
from supervisors._operator._admin._routes import build_admin_app
from supervisors._operator._admin._settings import DEFAULT_FAILED_AUTH, DEFAULT_PORT, AdminSettings
from supervisors._operator._admin._stream import StreamHub, StreamStatistics, collect_sections
from supervisors._operator._extras import require
from supervisors._spec import ChildSpec
from supervisors._tree import root_of

if TYPE_CHECKING:
    from actors._core._cell import _Cell
    from supervisors._operator._http import HttpServer, HttpStatistics
    from supervisors._tree import Supervisor

__all__ = [
    "AdminActor",
    "AdminAddress",
    "GetAdminAddress",
    "admin_spec",
    "find_providers",
]


# ================================================================================ the actor


class GetAdminAddress(msgspec.Struct, frozen=True, tag=True):
    """Ask an :class:`AdminActor` where it listens; the reply is an :class:`AdminAddress`."""


class AdminAddress(msgspec.Struct, frozen=True):
    """Where the admin API listens: ``host``, the bound ``port`` and the base ``url``."""

    host: str
    port: int
    url: str


TreeSource = "Supervisor | Callable[[], Supervisor | None] | None"


class AdminActor(Actor[GetAdminAddress, AdminAddress]):
    """Serves the admin HTTP API while it runs (see the module docstring).

    Args:
        settings: the :class:`AdminSettings`.
        tree: the tree's :class:`~supervisors.Supervisor` (or a function returning it) for
            ``/api/resilience/tree``; without it the snapshot is rebuilt from the actor slots.
        fleet: the fleet member to show; by default the one the tree's provider actors were
            given (none: the instance runs alone).

    Answers :class:`GetAdminAddress` with the bound :class:`AdminAddress`;
    :meth:`statistics` counts the server's connections, refusals and timeouts.  A failure to
    bind (the port is taken) crashes the actor at start, like any failing ``on_start``.
    Stopping (the tree's shutdown, a restart) takes at most ``graceful_timeout``: the server
    closes every connection then, whatever its clients do.
    """

    def __init__(
        self,
        settings: AdminSettings,
        *,
        tree: Supervisor | Callable[[], Supervisor | None] | None = None,
        fleet: FleetMember | None = None,
    ) -> None:
        self.settings = settings
        self._tree_source = tree
        self._fleet = fleet
        self._address: AdminAddress | None = None
        self._server: HttpServer | None = None
        self._hub: StreamHub | None = None
        self._done = trio.Event()
        self._provider_paths: dict[str, str] = dict(settings.providers or {})

    async def on_start(self) -> None:
        """Start the HTTP server; return once it listens (a bind failure crashes the actor)."""
        backend = AdminBackend(
            self.settings,
            lookup=self.lookup,
            tree=self._snapshot,
            providers=self._providers,
            fleets=self._fleets,
        )
        from supervisors._operator._http import HttpServer

        settings = self.settings
        hub = StreamHub(
            lambda: collect_sections(backend),
            interval=settings.stream_interval,
            max_streams=settings.max_streams,
            buffer_bytes=settings.stream_buffer,
        )
        self._hub = hub
        app = build_admin_app(backend, hub=hub)
        server = HttpServer(app, settings.limits(), error_body=_error_body)
        self._server = server
        ready = trio.Event()
        self.spawn(hub.run, name=f"{self.path}:stream")
        self.spawn(self._serve, server, ready, name=f"{self.path}:http")
        await ready.wait()

    async def _serve(self, server: HttpServer, ready: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                settings = self.settings
                host, port = await nursery.start(server.serve, settings.host, settings.port)
                self._address = _address(host, port)
                logger.info("admin API listening on %s", self._address.url)
                if self.settings.hosts() is None:
                    logger.warning(
                        "admin API on %s accepts any Host header (allowed_hosts=['*']): the "
                        "DNS-rebinding defence is off; list the names clients use instead",
                        self._address.url,
                    )
                ready.set()
        finally:
            self._done.set()

    async def on_stop(self) -> None:
        """Stop the server: at most ``graceful_timeout`` for requests in progress."""
        if self._server is not None:
            self._server.stop()
        await self._done.wait()

    async def handle(self, message: object) -> AdminAddress | Failure:
        """Answer :class:`GetAdminAddress`; anything else gets a ``TypeError``."""
        if not isinstance(message, GetAdminAddress):
            problem = f"the admin actor answers GetAdminAddress, not {type(message).__name__}"
            return Failure(TypeError(problem))
        assert self._address is not None
        return self._address

    def statistics(self) -> HttpStatistics | None:
        """The server's :class:`~supervisors._operator._http.HttpStatistics` (``None`` before
        start)."""
        return None if self._server is None else self._server.statistics()

    def stream_statistics(self) -> StreamStatistics | None:
        """The event stream's :class:`~supervisors._operator._admin._stream.StreamStatistics`
        (``None`` before start)."""
        return None if self._hub is None else self._hub.statistics()

    @property
    def address(self) -> AdminAddress | None:
        """Where the server listens, once started."""
        return self._address

    # ------------------------------------------------------------------ what the app reads

    def _cells(self) -> Mapping[str, _Cell]:
        return self._context().cell.registry

    def _snapshot(self) -> TreeNode:
        source = self._tree_source
        supervisor = source() if callable(source) else source
        if supervisor is None:
            try:
                supervisor = root_of(self)
            except LookupError:  # not supervised: rebuild what the slots show
                return tree_from_slots(self._cells())
        return supervisor.snapshot()

    def _fleets(self) -> list[FleetMember]:
        if self._fleet is not None:
            return [self._fleet]
        return fleet_members(self._cells())

    def _providers(self) -> dict[str, ActorRef[Any, Any]]:
        if self.settings.providers is None:
            for service, path in provider_paths(self._cells()).items():
                self._provider_paths.setdefault(service, path)
        refs: dict[str, ActorRef[Any, Any]] = {}
        for service, path in self._provider_paths.items():
            try:
                refs[service] = self.lookup(path)
            except ActorError:
                continue
        return refs


def provider_paths(cells: Mapping[str, _Cell]) -> dict[str, str]:
    """``{service: path}`` of the provider actors running in these slots.

    A provider between two incarnations (restarting) is not running and is left out.
    """
    found: dict[str, str] = {}
    for path, cell in list(cells.items()):
        incarnation = cell.incarnation
        actor = None if incarnation is None else incarnation.actor
        if isinstance(actor, ProviderActor):
            found.setdefault(actor.name, path)
    return found


def fleet_members(cells: Mapping[str, _Cell]) -> list[FleetMember]:
    """The fleet members the provider actors running in these slots were given (each once)."""
    found: dict[int, FleetMember] = {}
    for cell in list(cells.values()):
        incarnation = cell.incarnation
        actor = None if incarnation is None else incarnation.actor
        if isinstance(actor, ProviderActor) and actor._fleet is not None:
            found.setdefault(id(actor._fleet), actor._fleet)
    return list(found.values())


def find_providers(root: Supervisor) -> dict[str, ActorRef[Any, Any]]:
    """The refs of the provider actors running in ``root``'s tree, by service name."""
    cells = root._tree.cells
    return {
        service: ActorRef._create(cells[path]) for service, path in provider_paths(cells).items()
    }


def _address(host: str, port: int) -> AdminAddress:
    """``("::1", 8080)`` -> ``AdminAddress("::1", 8080, "http://[::1]:8080")``."""
    shown = f"[{host}]" if ":" in host else host
    return AdminAddress(host=host, port=port, url=f"http://{shown}:{port}")


def _error_body(status: int, code: str, message: str) -> tuple[bytes, bytes]:
    """The body of an error the HTTP server answers itself, in the API's error shape."""
    return b"application/json", _encoder.encode(ErrorBody(ErrorInfo(status, code, message)))


def tree_from_slots(cells: Mapping[str, _Cell]) -> TreeNode:
    """A tree snapshot rebuilt from the actor slots of a tree (see the module docstring)."""
    children: dict[str, list[str]] = {}
    actors: dict[str, _Cell] = {}
    for path, cell in cells.items():
        actors[path] = cell
        parts = path.split("/")
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            child = "/".join(parts[: depth + 1])
            siblings = children.setdefault(parent, [])
            if child not in siblings:
                siblings.append(child)

    def build(path: str) -> TreeNode:
        name = path.rpartition("/")[2]
        cell = actors.get(path)
        if cell is not None and path not in children:
            return TreeNode(
                name=name,
                path=path,
                kind="actor",
                state=cell.state.value,
                restarts=cell.restarts,
                mailbox_depth=len(cell.queue),
            )
        return TreeNode(
            name=name,
            path=path,
            kind="supervisor",
            state="running",
            restarts=0,
            children=tuple(build(child) for child in children.get(path, [])),
        )

    return build("")


def admin_spec(
    *,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    token: str | None = None,
    read_token: str | None = None,
    monitor: str = "monitor",
    sagas: str | None = "sagas",
    providers: Mapping[str, str] | None = None,
    tree: Supervisor | Callable[[], Supervisor | None] | None = None,
    fleet: FleetMember | None = None,
    name: str = "admin",
    max_page: int = 100,
    ask_timeout: float = 5.0,
    allowed_hosts: Sequence[str] | None = None,
    saga_input: bool = False,
    failed_auth: RateLimiterSettings = DEFAULT_FAILED_AUTH,
    max_connections: int = 64,
    request_timeout: float = 10.0,
    write_timeout: float = 10.0,
    keep_alive: float = 5.0,
    graceful_timeout: float = 1.0,
    send_buffer: int = 256 * 1024,
    max_streams: int | None = None,
    stream_interval: float = 1.0,
    stream_heartbeat: float = 15.0,
    stream_buffer: int = 1024 * 1024,
    shutdown: float = 5.0,
    instance: str | None = None,
) -> ChildSpec[GetAdminAddress, AdminAddress]:
    """The child spec of the admin API server (an :class:`AdminActor`).

    Add it to your tree beside the monitor; the server starts with the tree and stops with it.
    The arguments are those of :class:`AdminSettings`, plus ``tree`` and ``fleet`` (see
    :class:`AdminActor`), the child's ``name`` (default ``admin``) and its ``shutdown`` grace.

    Raises:
        ValueError: a setting is out of range.

    Example::

        tree = SupervisorSpec("app", [
            ChildSpec("monitor", MonitorActor),
            providers,
            admin_spec(port=9470, token=os.environ["AURA_ADMIN_TOKEN"]),
        ])
        async with open_supervisor(tree) as root:
            address = await root.ref("admin").ask(GetAdminAddress())
    """
    require("the admin API", "h11", "starlette", "prometheus_client")
    settings = AdminSettings(
        host=host,
        port=port,
        token=token,
        read_token=read_token,
        monitor=monitor,
        sagas=sagas,
        providers=providers,
        max_page=max_page,
        ask_timeout=ask_timeout,
        allowed_hosts=None if allowed_hosts is None else frozenset(allowed_hosts),
        saga_input=saga_input,
        failed_auth=failed_auth,
        max_connections=max_connections,
        request_timeout=request_timeout,
        write_timeout=write_timeout,
        keep_alive=keep_alive,
        graceful_timeout=graceful_timeout,
        instance=instance,
        send_buffer=send_buffer,
        **({} if max_streams is None else {"max_streams": max_streams}),
        stream_interval=stream_interval,
        stream_heartbeat=stream_heartbeat,
        stream_buffer=stream_buffer,
    )
    return ChildSpec(name, lambda: AdminActor(settings, tree=tree, fleet=fleet), shutdown=shutdown)
