"""The admin app: one small function per endpoint, the route table, the trusted-hosts check,
and :func:`build_admin_app`, which puts them together in a starlette router (starlette is
imported when the app is built, so the operator surface imports without the admin extra)."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import msgspec
import trio

from actors._core._ref import ActorRef
from actors._errors import ActorError
from actors._monitor._actor import (
    AcknowledgeAlert,
    AcknowledgeAlerts,
    GetAlerts,
    GetBreaker,
    GetBreakers,
    GetErrorRate,
    GetHealth,
    GetMetrics,
    GetRecentErrors,
    GetServiceMetrics,
    ResetService,
)
from actors._monitor._types import HealthReport, HealthStatus
from actors._protocol import FleetStatus
from actors._provider._messages import GetStatus, Isolate
from actors._provider._messages import Reset as ResetProvider
from actors._saga._messages import DiscardSaga, GetJournalStatus, GetSaga, ListSagas
from supervisors._operator._admin._dashboard import DASHBOARD_ROUTES
from supervisors._operator._admin._requests import (
    _MAX_NAME,
    AdminBackend,
    ApiError,
    SagaDiscarded,
    SagaPage,
    _authorize,
    _bool_param,
    _duration_param,
    _error_response,
    _hide_input,
    _http_exception,
    _int_param,
    _json,
    _name,
    _query,
    _read_body,
    _response,
    journal_view,
    logger,
)
from supervisors._operator._admin._settings import AdminSettings
from supervisors._operator._admin._stream import EventStream, StreamHub
from supervisors._operator._admin._times import with_iso_times
from supervisors._operator._metrics import METRICS_CONTENT_TYPE, render_metrics_async, take_snapshot

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send


Endpoint: TypeAlias = "Callable[[Request, AdminBackend], Awaitable[object]]"


#: Who may call an endpoint: anyone, a reader (anyone unless a read token is set), a writer.
Access: TypeAlias = Literal["public", "read", "write"]


def _tokens(settings: AdminSettings, access: Access) -> tuple[str, ...] | None:
    """The tokens that open an endpoint of ``access`` (``None``: no token needed)."""
    write = (settings.token,) if settings.token is not None else ()
    if access == "write":
        return write
    if access == "read" and settings.read_token is not None:
        return (settings.read_token, *write)
    return None


def _wrap(fn: Endpoint, backend: AdminBackend, *, access: Access) -> Callable[..., Any]:
    from starlette.responses import Response

    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response | EventStream:
        try:
            tokens = _tokens(backend.settings, access)
            if tokens is not None:
                _authorize(request, tokens, backend.failed_auth)
            result = await fn(request, backend)
        except ApiError as error:
            return _error_response(error)
        except Exception:
            logger.exception("admin endpoint %s %s failed", request.method, request.url.path)
            return _error_response(ApiError(500, "internal_error", "the request failed"))
        if isinstance(result, Response | EventStream):
            return result
        return _json(_timed(result, wall_clock=fn in _WALL_CLOCK))

    return endpoint


def _timed(result: object, *, wall_clock: bool = False) -> object:
    """``result`` as JSON-ready data with ISO 8601 wall-clock times beside its timestamps
    (``supervisors._operator._admin._times``)."""
    return with_iso_times(
        msgspec.to_builtins(result),
        wall_clock=wall_clock,
        now=trio.current_time(),
        now_wall=time.time(),
    )


async def _index(request: Request, backend: AdminBackend) -> object:
    endpoints = [f"{method} {path}" for method, path, _fn, _access in _ROUTES]
    endpoints += [f"GET {_API}/stream", "GET /dashboard"]
    return {"endpoints": endpoints}


async def _health(request: Request, backend: AdminBackend) -> object:
    report: HealthReport = await backend.ask(backend.settings.monitor, GetHealth(), "monitor")
    status = 503 if report.status is HealthStatus.UNHEALTHY else 200
    return _json(_timed(report), status)


async def _breakers(request: Request, backend: AdminBackend) -> object:
    return await backend.ask(backend.settings.monitor, GetBreakers(), "monitor")


async def _breaker(request: Request, backend: AdminBackend) -> object:
    message = GetBreaker(_name(request, "service"))
    return await backend.ask(backend.settings.monitor, message, "monitor")


async def _metrics_all(request: Request, backend: AdminBackend) -> object:
    return await backend.ask(backend.settings.monitor, GetMetrics(), "monitor")


async def _metrics_one(request: Request, backend: AdminBackend) -> object:
    message = GetServiceMetrics(_name(request, "service"))
    return await backend.ask(backend.settings.monitor, message, "monitor")


async def _error_rate(request: Request, backend: AdminBackend) -> object:
    service = _name(request, "service")
    window = None  # by default the monitor's own window: the rate its alerts use
    if _query(request, "window") is not None:
        window = _duration_param(request, "window", 0.0)
    return await backend.ask(backend.settings.monitor, GetErrorRate(service, window), "monitor")


async def _reset(request: Request, backend: AdminBackend) -> object:
    service = _name(request, "service")
    await _read_body(request, backend.settings.max_body)
    return await backend.ask(backend.settings.monitor, ResetService(service), "monitor")


async def _recent_errors(request: Request, backend: AdminBackend) -> object:
    offset = _int_param(request, "offset", 0, 0, 1_000_000)
    limit = _int_param(
        request, "limit", min(50, backend.settings.max_page), 1, backend.settings.max_page
    )
    service = _query(request, "service")
    if service is not None and (len(service) > _MAX_NAME or not service.isprintable()):
        raise ApiError(400, "invalid_query", f"`service` must be at most {_MAX_NAME} characters")
    message = GetRecentErrors(offset=offset, limit=limit, service=service)
    return await backend.ask(backend.settings.monitor, message, "monitor")


async def _alerts(request: Request, backend: AdminBackend) -> object:
    message = GetAlerts(include_resolved=_bool_param(request, "include_resolved"))
    return await backend.ask(backend.settings.monitor, message, "monitor")


async def _acknowledge(request: Request, backend: AdminBackend) -> object:
    raw = _name(request, "alert_id")
    if not re.fullmatch(r"[0-9]{1,15}", raw):
        raise ApiError(400, "invalid_name", f"an alert id is a positive integer, got {raw!r}")
    await _read_body(request, backend.settings.max_body)
    return await backend.ask(backend.settings.monitor, AcknowledgeAlert(int(raw)), "monitor")


async def _acknowledge_all(request: Request, backend: AdminBackend) -> object:
    rule = _query(request, "rule")  # the monitor refuses an unknown rule (400)
    subject = _query(request, "subject") or ""
    for key, value in (("rule", rule or ""), ("subject", subject)):
        if len(value) > _MAX_NAME or not value.isprintable():
            raise ApiError(
                400, "invalid_query", f"`{key}` must be at most {_MAX_NAME} printable characters"
            )
    await _read_body(request, backend.settings.max_body)
    message = AcknowledgeAlerts(rule=rule, subject=subject)
    return await backend.ask(backend.settings.monitor, message, "monitor")


async def _tree(request: Request, backend: AdminBackend) -> object:
    return backend.tree()


def _provider_ref(request: Request, backend: AdminBackend) -> tuple[str, ActorRef[Any, Any]]:
    service = _name(request, "service")
    ref = backend.providers().get(service)
    if ref is None:
        raise ApiError(
            404,
            "unknown_provider",
            f"no provider actor serves {service!r}",
            action="GET /api/resilience/providers lists them.",
        )
    return service, ref


async def _providers(request: Request, backend: AdminBackend) -> object:
    statuses = {}
    for service, ref in sorted(backend.providers().items()):
        statuses[service] = await backend.ask_ref(ref, GetStatus(), f"provider {service!r}")
    return {"providers": statuses}


async def _provider(request: Request, backend: AdminBackend) -> object:
    service, ref = _provider_ref(request, backend)
    return await backend.ask_ref(ref, GetStatus(), f"provider {service!r}")


async def _isolate(request: Request, backend: AdminBackend) -> object:
    service, ref = _provider_ref(request, backend)
    await _read_body(request, backend.settings.max_body)
    return await backend.ask_ref(ref, Isolate(), f"provider {service!r}")


async def _provider_reset(request: Request, backend: AdminBackend) -> object:
    service, ref = _provider_ref(request, backend)
    await _read_body(request, backend.settings.max_body)
    return await backend.ask_ref(ref, ResetProvider(), f"provider {service!r}")


def _sagas_path(backend: AdminBackend) -> str:
    path = backend.settings.sagas
    if path is None:
        raise ApiError(
            503,
            "unavailable",
            "the admin API was configured without a saga coordinator",
            action="Give the coordinator's path to admin_spec(sagas=...).",
        )
    return path


class FleetMembers(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/fleet``: this instance's fleet members (one, or none
    when it runs alone)."""

    members: list[FleetStatus]


async def _fleet(request: Request, backend: AdminBackend) -> object:
    members = sorted(backend.fleets(), key=lambda member: member.instance)
    return FleetMembers([member.status() for member in members])


async def _sagas(request: Request, backend: AdminBackend) -> object:
    most = backend.settings.max_page
    offset = _int_param(request, "offset", 0, 0, 1_000_000)
    limit = _int_param(request, "limit", min(50, most), 1, most)
    sagas = await backend.ask(_sagas_path(backend), ListSagas(), "saga coordinator")
    page = list(sagas[offset : offset + limit])
    if not backend.settings.saga_input:  # metadata may hold personal data
        page = [msgspec.structs.replace(s, metadata={}) for s in page]
    return SagaPage(page, offset, limit, len(sagas))


async def _saga(request: Request, backend: AdminBackend) -> object:
    saga_id = _name(request, "saga_id")
    info = await backend.ask(_sagas_path(backend), GetSaga(saga_id), "saga coordinator")
    if info is None:
        raise _unknown_saga(saga_id)
    return _hide_input(info, backend.settings.saga_input)


async def _discard(request: Request, backend: AdminBackend) -> object:
    """Remove a finished saga from the journal (the last step of the runbook's
    ``compensation_failed`` case): 404 for an unknown saga, 409 for one that has not ended."""
    saga_id = _name(request, "saga_id")
    await _read_body(request, backend.settings.max_body)
    path = _sagas_path(backend)
    info = await backend.ask(path, GetSaga(saga_id), "saga coordinator")
    if info is None:
        raise _unknown_saga(saga_id)
    if not info.finished:
        raise ApiError(
            409,
            "saga_not_finished",
            f"the saga {saga_id!r} is {info.phase}: only a saga that ended can be discarded",
            action="Wait for it to end; a running saga completes or compensates by itself.",
        )
    if not await backend.ask(path, DiscardSaga(saga_id), "saga coordinator"):
        raise _unknown_saga(saga_id)  # discarded meanwhile (another operator, retention)
    logger.warning(
        "admin API: saga %r (%s, %s) discarded from the journal by an operator",
        saga_id,
        info.definition,
        info.phase,
    )
    return SagaDiscarded(saga_id, info.phase)


def _unknown_saga(saga_id: str) -> ApiError:
    return ApiError(
        404,
        "unknown_saga",
        f"the saga coordinator has no saga {saga_id!r}",
        action="GET /api/resilience/sagas lists the unfinished sagas.",
    )


async def _journal(request: Request, backend: AdminBackend) -> object:
    status = await backend.ask(_sagas_path(backend), GetJournalStatus(), "saga coordinator")
    return journal_view(status)


async def _prometheus(request: Request, backend: AdminBackend) -> object:
    settings = backend.settings
    try:
        monitor: ActorRef[Any, Any] | None = backend.lookup(settings.monitor)
    except ActorError:
        monitor = None
    sagas: ActorRef[Any, Any] | None = None
    if settings.sagas is not None:
        try:
            sagas = backend.lookup(settings.sagas)
        except ActorError:
            sagas = None
    fleets = backend.fleets()  # a fleet member's id is its instance label by default
    snapshot = await take_snapshot(
        monitor,
        tree=backend.tree(),
        providers=backend.providers(),
        sagas=sagas,
        sagas_query=ListSagas(),
        ask_timeout=settings.ask_timeout,
        instance=settings.instance or (fleets[0].instance if len(fleets) == 1 else None),
        fleets=fleets,
    )
    return _response(await render_metrics_async(snapshot), METRICS_CONTENT_TYPE)


#: Endpoints whose documents are stamped with the wall clock (the saga journal's times).
_WALL_CLOCK: Final = frozenset({_sagas, _saga, _journal})

_API: Final = "/api/resilience"
_ROUTES: Final[tuple[tuple[str, str, Endpoint, Access], ...]] = (
    ("GET", _API, _index, "read"),
    ("GET", f"{_API}/health", _health, "public"),
    ("GET", f"{_API}/circuit-breakers", _breakers, "read"),
    ("GET", f"{_API}/circuit-breakers/{{service}}", _breaker, "read"),
    ("GET", f"{_API}/metrics", _metrics_all, "read"),
    ("GET", f"{_API}/metrics/{{service}}", _metrics_one, "read"),
    ("GET", f"{_API}/metrics/{{service}}/error-rate", _error_rate, "read"),
    ("POST", f"{_API}/metrics/{{service}}/reset", _reset, "write"),
    ("GET", f"{_API}/errors/recent", _recent_errors, "read"),
    ("GET", f"{_API}/alerts", _alerts, "read"),
    ("POST", f"{_API}/alerts/acknowledge", _acknowledge_all, "write"),
    ("POST", f"{_API}/alerts/{{alert_id}}/acknowledge", _acknowledge, "write"),
    ("GET", f"{_API}/tree", _tree, "read"),
    ("GET", f"{_API}/providers", _providers, "read"),
    ("GET", f"{_API}/providers/{{service}}", _provider, "read"),
    ("POST", f"{_API}/providers/{{service}}/isolate", _isolate, "write"),
    ("POST", f"{_API}/providers/{{service}}/reset", _provider_reset, "write"),
    ("GET", f"{_API}/fleet", _fleet, "read"),
    ("GET", f"{_API}/sagas", _sagas, "read"),
    ("GET", f"{_API}/sagas/{{saga_id}}", _saga, "read"),
    ("POST", f"{_API}/sagas/{{saga_id}}/discard", _discard, "write"),
    ("GET", f"{_API}/journal", _journal, "read"),
    ("GET", "/metrics", _prometheus, "read"),
)


class _TrustedHosts:
    """Refuse requests whose ``Host`` is not allowed (a JSON 400), before any routing."""

    def __init__(self, app: ASGIApp, settings: AdminSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = ""
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    host = value.decode("latin-1")
                    break
            if host.startswith("[") and "]" in host:
                hostname = host[1 : host.index("]")]
            else:
                hostname = host.rsplit(":", 1)[0]
            if not self.settings.host_allowed(hostname):
                problem = f"the Host header {host[:100]!r} is not allowed"
                response = _error_response(ApiError(400, "untrusted_host", problem))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _stream_endpoint(hub: StreamHub | None) -> Endpoint:
    async def _stream(request: Request, backend: AdminBackend) -> object:
        if hub is None or hub.max_streams == 0:
            raise ApiError(
                503,
                "unavailable",
                "the event stream is off here: it runs in the admin actor (admin_spec), "
                "with max_streams > 0",
            )

        def refuse() -> Response:
            problem = f"{hub.max_streams} clients are streaming already; try again later"
            return _error_response(
                ApiError(503, "too_many_streams", problem, headers={"Retry-After": "5"})
            )

        return EventStream(hub, heartbeat=backend.settings.stream_heartbeat, refuse=refuse)

    return _stream


def build_admin_app(backend: AdminBackend, *, hub: StreamHub | None = None) -> ASGIApp:
    """The ASGI application of the admin API over ``backend`` (see the module docstring).

    ``hub`` feeds the event stream (``GET /api/resilience/stream``) and the live dashboard
    (``GET /dashboard``); the :class:`~supervisors.AdminActor` runs one.  Without it the
    stream answers 503.  Needs the ``admin`` extra (starlette); raises ``ImportError``
    without it.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    table = [
        *_ROUTES,
        ("GET", f"{_API}/stream", _stream_endpoint(hub), "read"),
        *DASHBOARD_ROUTES,
    ]
    routes = [
        Route(path, _wrap(fn, backend, access=access), methods=[method])
        for method, path, fn, access in table
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    # A redirect is no answer to a malformed path: "/health/" is a 404 like any unknown path.
    app.router.redirect_slashes = False
    return _TrustedHosts(app, backend.settings)
