"""The admin HTTP API: an ASGI app over the monitor and the tree, served by a supervised actor.

Theory of operation
-------------------
:func:`admin_spec` returns the :class:`~supervisors.ChildSpec` of an :class:`AdminActor`.  Added
to a supervision tree, the actor starts an :class:`~supervisors._http.HttpServer` (HTTP/1.1 over
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
the tree (``monitor``, ``sagas``).  Provider actors are found by walking the tree's actor slots
for running :class:`~actors.ProviderActor` instances, or given as a ``{service: path}``
mapping.  The supervision snapshot comes from the :class:`~supervisors.Supervisor` handle when
one is given (``tree=root``, or a function returning it); otherwise it is rebuilt from the
actor slots (actors exactly; their supervisors with state ``running`` and no restart count).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import ipaddress
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import attrs
import msgspec
import trio

from actors._core._actor import Actor
from actors._core._ref import ActorRef
from actors._core._reply import Failure
from actors._errors import ActorError, AuraError
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
from actors._monitor._alerts import UnknownAlert
from actors._monitor._types import HealthReport, HealthStatus, InvalidQuery, UnknownService
from actors._policies._ratelimit import RateLimiter, RateLimiterSettings
from actors._policies._redact import escape_control, redact
from actors._provider._actor import ProviderActor
from actors._provider._messages import GetStatus, Isolate
from actors._provider._messages import Reset as ResetProvider
from actors._saga._messages import GetSaga, ListSagas, SagaInfo
from supervisors._events import TreeNode
from supervisors._operator._metrics import METRICS_CONTENT_TYPE, render_metrics_async, take_snapshot
from supervisors._spec import ChildSpec
from supervisors._tree import root_of

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

    from actors._core._cell import _Cell
    from supervisors._operator._http import HttpLimits, HttpServer, HttpStatistics
    from supervisors._tree import Supervisor

__all__ = [
    "AdminActor",
    "AdminAddress",
    "AdminSettings",
    "GetAdminAddress",
    "admin_spec",
    "build_admin_app",
    "find_providers",
]

logger: Final = logging.getLogger("supervisors.admin")

#: The default port of the admin API.
DEFAULT_PORT: Final = 9470
#: Loopback host names accepted in the ``Host`` header while bound to loopback.
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_MAX_NAME: Final = 200
#: The shortest admin token accepted.
MIN_TOKEN_LENGTH: Final = 16
#: Wrong tokens one client may send: 5, then one more every 12 seconds.
DEFAULT_FAILED_AUTH: Final = RateLimiterSettings(rate=5 / 60, burst=5)
#: The most client addresses whose failed attempts are remembered.
MAX_THROTTLED_CLIENTS: Final = 4096
#: The longest duration text accepted (``"1.5e3 ms"`` needs 8): checked before any pattern.
MAX_DURATION_TEXT: Final = 32
# One way to read any text: the number's parts cannot trade characters (digits, then an
# optional fraction with digits, then an optional exponent), and blanks only separate it from
# the unit.  Matched with fullmatch on text already stripped and length-capped, so it is linear
# in at most MAX_DURATION_TEXT characters.
_DURATION: Final = re.compile(
    r"((?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)(?:[ \t]*(ms|s|m|h))?"
)
_UNITS: Final = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _check_port(_instance: Any, _attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"admin port must be an int from 0 to 65535, got {value!r}")


def _check_token(_instance: Any, _attribute: Any, value: str | None) -> None:
    if value is None:
        return
    # The message never quotes the value: it is a secret, even when it is a bad one.
    if (
        not isinstance(value, str)
        or len(value) < MIN_TOKEN_LENGTH
        or not (value.isascii() and value.isprintable())
        or " " in value
    ):
        raise ValueError(
            f"the admin token must be at least {MIN_TOKEN_LENGTH} characters of printable "
            "ASCII without spaces; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )


def _check_hosts(_instance: Any, _attribute: Any, value: frozenset[str] | None) -> None:
    if value is None:
        return
    if not isinstance(value, frozenset) or not all(isinstance(h, str) and h for h in value):
        raise ValueError(f"admin allowed_hosts must be non-empty host names, got {value!r}")


def _positive_int(name: str) -> Callable[[Any, Any, int], None]:
    def check(_instance: Any, _attribute: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"admin {name} must be an int >= 1, got {value!r}")

    return check


@attrs.frozen
class AdminSettings:
    """Settings of the admin API (see the module docstring for the safety rules).

    Args:
        host: the address to bind (default ``127.0.0.1``).  Binding a non-loopback address
            exposes the read endpoints to the network: put it behind your own access control.
        port: the TCP port (default 9470; ``0`` picks a free one, see :class:`AdminAddress`).
        token: the bearer token every ``POST`` needs: at least 16 printable ASCII characters
            without spaces; ``None`` (default) disables writes.
        read_token: a bearer token every ``GET`` but ``/api/resilience/health`` needs (the
            write ``token`` is accepted too); ``None`` (default): reads are public.  Same
            rules as ``token``.
        failed_auth: how many wrong tokens one client address may send: a token bucket
            (default 5, refilled at 5 a minute).  Past it the client gets 429 with
            ``Retry-After``, whatever it sends, until the bucket refills.
        monitor: the monitor's path in the tree (default ``monitor``).
        sagas: the saga coordinator's path (default ``sagas``; ``None`` for none).
        providers: ``{service: path}`` of provider actors; ``None`` (default) finds them.
        max_page: the largest page of recent errors (default 100, at most 1000).
        max_body: the largest request body accepted, in bytes (default 64 KiB).
        ask_timeout: seconds each ask to another actor may take (default 5).
        allowed_hosts: the ``Host`` names accepted (the defence against DNS rebinding);
            ``None`` (default): loopback names, which needs ``host`` to be a loopback address.
            Bound anywhere else it must be given: the names clients use to reach the API, or
            ``{"*"}`` to accept any (logged as a warning at start).
        graceful_timeout: seconds requests in progress get to be answered when the server
            stops (default 1); then every connection is closed.
        max_connections: connections open at once (default 64); one more gets 503.
        request_timeout: seconds a request may take to arrive, from its first byte (default
            10).
        write_timeout: seconds a response may take to be read by the client (default 10);
            then the connection is cut.
        keep_alive: seconds a connection may idle between requests (default 5).
        saga_input: show each saga's input, metadata and step replies in ``GET .../sagas``
            and ``GET .../sagas/{id}`` (default ``False``: they may hold personal data; the
            audit trail's details are always redacted).

    Raises:
        ValueError: a value is out of range.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=DEFAULT_PORT, validator=_check_port)
    token: str | None = attrs.field(default=None, validator=_check_token, repr=False)
    read_token: str | None = attrs.field(default=None, validator=_check_token, repr=False)
    monitor: str = "monitor"
    sagas: str | None = "sagas"
    providers: Mapping[str, str] | None = None
    max_page: int = attrs.field(default=100, validator=_positive_int("max_page"))
    max_body: int = attrs.field(default=64 * 1024, validator=_positive_int("max_body"))
    ask_timeout: float = 5.0
    allowed_hosts: frozenset[str] | None = attrs.field(default=None, validator=_check_hosts)
    graceful_timeout: float = 1.0
    saga_input: bool = False
    failed_auth: RateLimiterSettings = DEFAULT_FAILED_AUTH
    max_connections: int = attrs.field(default=64, validator=_positive_int("max_connections"))
    request_timeout: float = 10.0
    write_timeout: float = 10.0
    keep_alive: float = 5.0

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"admin host must be a non-empty string, got {self.host!r}")
        if self.max_page > 1000:
            raise ValueError(f"admin max_page must be at most 1000, got {self.max_page}")
        for name in (
            "ask_timeout",
            "graceful_timeout",
            "request_timeout",
            "write_timeout",
            "keep_alive",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"admin {name} must be a positive number, got {value!r}")
        if self.allowed_hosts is None and not _is_loopback(self.host):
            raise ValueError(
                f"admin host {self.host!r} is not a loopback address: give allowed_hosts, the "
                "Host names clients use to reach the API (the defence against DNS rebinding, "
                "off otherwise), or allowed_hosts=['*'] to accept any Host"
            )
        if not isinstance(self.failed_auth, RateLimiterSettings):
            raise ValueError(
                f"admin failed_auth must be RateLimiterSettings, got {self.failed_auth!r}"
            )

    def limits(self) -> HttpLimits:
        """The :class:`~supervisors._http.HttpLimits` the server enforces.

        Needs the ``admin`` extra (h11), like the server; raises ``ImportError`` without it.
        """
        from supervisors._operator._http import HttpLimits

        return HttpLimits(
            max_connections=self.max_connections,
            max_body=self.max_body,
            request_timeout=self.request_timeout,
            keep_alive=self.keep_alive,
            write_timeout=self.write_timeout,
            graceful_timeout=self.graceful_timeout,
        )

    def hosts(self) -> frozenset[str] | None:
        """The accepted ``Host`` names (``None``: any, with ``allowed_hosts={"*"}``)."""
        if self.allowed_hosts is not None:
            if "*" in self.allowed_hosts:
                return None
            return frozenset(h.lower() for h in self.allowed_hosts)
        return LOOPBACK_NAMES

    def host_allowed(self, hostname: str) -> bool:
        """Whether a request naming ``hostname`` (no port) in its ``Host`` header is served.

        Without ``allowed_hosts`` (bound to loopback): ``localhost`` and loopback addresses.
        """
        if self.allowed_hosts is None:
            return _is_loopback(hostname)
        hosts = self.hosts()
        return hosts is None or hostname.lower() in hosts


# ================================================================================ errors


class ErrorInfo(msgspec.Struct, frozen=True):
    """The ``error`` member of every error body."""

    status: int
    code: str
    message: str
    action: str = ""


class ErrorBody(msgspec.Struct, frozen=True):
    """An error response body: ``{"error": {...}}``."""

    error: ErrorInfo


class ApiError(Exception):
    """An HTTP error answered as JSON (raised inside endpoints)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        action: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.action = action
        self.headers = dict(headers or {})


_encoder: Final = msgspec.json.Encoder()


def _response(
    content: bytes, media_type: str, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    from starlette.responses import Response

    return Response(content, status_code=status, media_type=media_type, headers=headers)


def _json(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return _response(_encoder.encode(body), "application/json", status, headers)


def _error_response(error: ApiError) -> Response:
    info = ErrorInfo(error.status, error.code, error.message[:1000], error.action[:500])
    return _json(ErrorBody(info), error.status, error.headers)


_HTTP_CODES: Final = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


async def _http_exception(request: Request, exc: Exception) -> Response:
    status: int = getattr(exc, "status_code", 400)
    return _error_response(
        ApiError(
            status,
            _HTTP_CODES.get(status, "http_error"),
            str(getattr(exc, "detail", "")),
            action="See GET /api/resilience for the endpoints." if status in (404, 405) else "",
            headers=getattr(exc, "headers", None),
        )
    )


# ================================================================================ sagas


class SagaPage(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/sagas``: a page of unfinished sagas, oldest first.

    ``items`` are the coordinator's :class:`~actors.SagaSummary` records (running sagas and
    those that ended ``compensation_failed`` and wait for an operator); ``total`` counts them
    all.
    """

    items: list[Any]
    offset: int
    limit: int
    total: int


def _hide_input(info: SagaInfo, show_input: bool) -> SagaInfo:
    """A saga's input, metadata and step replies may hold personal data: hidden unless
    configured; details redacted."""
    if not show_input:
        info = info.without_personal_data()
    events = [msgspec.structs.replace(e, detail=redact(e.detail)) for e in info.events]
    return msgspec.structs.replace(info, events=events)


# ================================================================================ backend


class AdminBackend:
    """Where the app finds the actors it asks and the tree it shows.

    Args:
        settings: the :class:`AdminSettings`.
        lookup: the ref of an actor by its path from the root (raises ``ActorNotFound``).
        tree: returns the supervision snapshot.
        providers: returns the provider actors' refs by service name.
    """

    def __init__(
        self,
        settings: AdminSettings,
        *,
        lookup: Callable[[str], ActorRef[Any, Any]],
        tree: Callable[[], TreeNode],
        providers: Callable[[], Mapping[str, ActorRef[Any, Any]]],
    ) -> None:
        self.settings = settings
        self.lookup = lookup
        self.tree = tree
        self.providers = providers
        self.failed_auth = FailedAttempts(settings.failed_auth)

    async def ask(self, path: str, message: object, what: str) -> Any:
        """Ask the actor at ``path``; translate its errors to :class:`ApiError`."""
        try:
            ref = self.lookup(path)
        except ActorError as exc:
            raise ApiError(
                503, "unavailable", f"The {what} is not running: {exc}", action=exc.suggested_action
            ) from exc
        return await self.ask_ref(ref, message, what)

    async def ask_ref(self, ref: ActorRef[Any, Any], message: object, what: str) -> Any:
        """Ask ``ref``; translate its errors to :class:`ApiError`."""
        try:
            return await ref.ask(message, timeout=self.settings.ask_timeout)
        except (UnknownService, UnknownAlert) as exc:
            raise ApiError(404, _code(exc), str(exc), action=exc.suggested_action) from exc
        except InvalidQuery as exc:
            raise ApiError(400, "invalid_query", str(exc), action=exc.suggested_action) from exc
        except ActorError as exc:
            raise ApiError(
                503,
                "unavailable",
                f"The {what} did not answer: {exc}",
                action=exc.suggested_action,
            ) from exc
        except AuraError as exc:
            if isinstance(exc, LookupError):
                raise ApiError(404, _code(exc), str(exc), action=exc.suggested_action) from exc
            if isinstance(exc, ValueError):
                raise ApiError(400, _code(exc), str(exc), action=exc.suggested_action) from exc
            raise


def _code(exc: BaseException) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


# ================================================================================ request parsing


def _name(request: Request, key: str) -> str:
    value: str = request.path_params[key]
    if len(value) > _MAX_NAME or not value.isprintable():
        raise ApiError(
            400, "invalid_name", f"`{key}` must be at most {_MAX_NAME} printable characters"
        )
    return value


def _query(request: Request, key: str) -> str | None:
    values = request.query_params.getlist(key)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "invalid_query", f"`{key}` is given {len(values)} times; give it once")
    return values[0]


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = _query(request, key)
    if raw is None:
        return default
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,12}", text) or not low <= int(text) <= high:
        raise ApiError(
            400, "invalid_query", f"`{key}` must be an integer from {low} to {high}, got {raw!r}"
        )
    return int(text)


def _bool_param(request: Request, key: str) -> bool:
    raw = _query(request, key)
    if raw is None or raw.strip().lower() in _FALSE:
        return False
    if raw.strip().lower() in _TRUE:
        return True
    raise ApiError(400, "invalid_query", f"`{key}` must be true or false, got {raw!r}")


def parse_duration(text: str) -> float | None:
    """Seconds from ``60``, ``30s``, ``1.5 m``, ``250ms`` or ``1h``; ``None`` if not one.

    Blanks around the number and before the unit are allowed.  Text longer than
    :data:`MAX_DURATION_TEXT` characters, and durations that are not positive and finite, are
    ``None``.  Linear in the text: the length is checked before the (unambiguous) pattern.
    """
    if len(text) > MAX_DURATION_TEXT:
        return None
    match = _DURATION.fullmatch(text.strip(" \t"))
    if match is None:
        return None
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return seconds if 0 < seconds < math.inf else None


def _duration_param(request: Request, key: str, default: float) -> float:
    raw = _query(request, key)
    if raw is None:
        return default
    seconds = parse_duration(raw)
    if seconds is None:
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise ApiError(
            400,
            "invalid_query",
            f"`{key}` must be a positive duration of at most {MAX_DURATION_TEXT} characters "
            f"such as 60, 30s, 5m or 1h, got {shown!r}",
        )
    return seconds


async def _read_body(request: Request, limit: int) -> object:
    """The request body as JSON (``None`` when empty); 413 past ``limit``, 400 if malformed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body must be at most {limit} bytes")
    chunks = bytearray()
    async with contextlib.aclosing(request.stream()) as stream:
        async for chunk in stream:
            chunks += chunk
            if len(chunks) > limit:
                raise ApiError(413, "body_too_large", f"the body must be at most {limit} bytes")
    if not chunks.strip():
        return None
    try:
        body = msgspec.json.decode(bytes(chunks))
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_body", f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object (or empty)")
    return body


class FailedAttempts:
    """Wrong tokens sent by each client address, limited by a token bucket per client.

    Sans-I/O (times are passed in).  :meth:`wait` is how long a client must wait before its
    token is checked again (``0.0``: now); :meth:`failed` records a wrong token.  At most
    ``max_clients`` buckets are kept: when full, buckets that have refilled completely are
    dropped first (those clients are forgiven), then the oldest.
    """

    def __init__(
        self, settings: RateLimiterSettings, *, max_clients: int = MAX_THROTTLED_CLIENTS
    ) -> None:
        self.settings = settings
        self.max_clients = max_clients
        self._clients: dict[str, RateLimiter] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def wait(self, client: str, now: float) -> float:
        """Seconds before ``client``'s next token is checked (``0.0``: it is checked now)."""
        limiter = self._clients.get(client)
        if limiter is None:
            return 0.0
        missing = 1.0 - limiter.tokens(now)
        return missing / self.settings.rate if missing > 1e-9 else 0.0

    def failed(self, client: str, now: float) -> None:
        """Record a wrong token from ``client`` at ``now``."""
        limiter = self._clients.get(client)
        if limiter is None:
            if len(self._clients) >= self.max_clients:
                self._evict(now)
            limiter = self._clients[client] = RateLimiter(self.settings, client)
        limiter.try_acquire(now)

    def _evict(self, now: float) -> None:
        burst = self.settings.effective_burst
        for client, limiter in list(self._clients.items()):
            if limiter.tokens(now) >= burst:
                del self._clients[client]
        while len(self._clients) >= self.max_clients:
            del self._clients[next(iter(self._clients))]


def _authorize(request: Request, tokens: tuple[str, ...], attempts: FailedAttempts) -> None:
    """Check the request's bearer token against ``tokens`` (any of them is accepted).

    Raises:
        ApiError: 401 without a well-formed ``Authorization: Bearer`` header, 429 while the
            client is throttled for wrong tokens, 403 for a wrong token or when no token is
            configured (writes are disabled then).
    """
    header = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": 'Bearer realm="aura-admin"'}
    if header is None:
        raise ApiError(
            401,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <token>`",
            action="Send the admin token configured for this application.",
            headers=challenge,
        )
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        raise ApiError(
            401,
            "unauthorized",
            "the Authorization header must be `Bearer <token>`",
            headers={"WWW-Authenticate": 'Bearer realm="aura-admin", error="invalid_request"'},
        )
    if not tokens:
        raise ApiError(
            403,
            "forbidden",
            "writes are disabled: no admin token is configured",
            action="Start the admin API with a token to allow POST requests.",
        )
    client = request.client.host if request.client is not None else ""
    now = trio.current_time()
    wait = attempts.wait(client, now)
    if wait > 0:
        # Checked before the token: while blocked, a guess (even a right one) tells nothing.
        raise ApiError(
            429,
            "too_many_attempts",
            "too many wrong tokens from this address; try again later",
            action="Check the admin token configured for this application.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    # Header values arrive latin-1 decoded: encoding back gives the bytes that were sent.
    sent = credentials.encode("latin-1")
    # Every token is compared (no early exit), each in constant time.
    matches = [hmac.compare_digest(sent, token.encode("utf-8")) for token in tokens]
    if not any(matches):
        attempts.failed(client, now)
        if attempts.wait(client, now) > 0:
            logger.warning(
                "admin API: wrong tokens from %s; its requests are refused for %.0f s",
                escape_control(client),
                attempts.wait(client, now),
            )
        raise ApiError(403, "forbidden", "the token is not valid")


# ================================================================================ the app

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
    async def endpoint(request: Request) -> Response:
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
        if isinstance(result, Response):
            return result
        return _json(result)

    return endpoint


async def _index(request: Request, backend: AdminBackend) -> object:
    return {"endpoints": [f"{method} {path}" for method, path, _fn, _access in _ROUTES]}


async def _health(request: Request, backend: AdminBackend) -> object:
    report: HealthReport = await backend.ask(backend.settings.monitor, GetHealth(), "monitor")
    status = 503 if report.status is HealthStatus.UNHEALTHY else 200
    return _json(report, status)


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
        raise ApiError(
            404,
            "unknown_saga",
            f"the saga coordinator has no saga {saga_id!r}",
            action="GET /api/resilience/sagas lists the unfinished sagas.",
        )
    return _hide_input(info, backend.settings.saga_input)


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
    snapshot = await take_snapshot(
        monitor,
        tree=backend.tree(),
        providers=backend.providers(),
        sagas=sagas,
        sagas_query=ListSagas(),
        ask_timeout=settings.ask_timeout,
    )
    return _response(await render_metrics_async(snapshot), METRICS_CONTENT_TYPE)


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
    ("GET", f"{_API}/sagas", _sagas, "read"),
    ("GET", f"{_API}/sagas/{{saga_id}}", _saga, "read"),
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


def build_admin_app(backend: AdminBackend) -> ASGIApp:
    """The ASGI application of the admin API over ``backend`` (see the module docstring).

    Needs the ``admin`` extra (starlette); raises ``ImportError`` without it.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    routes = [
        Route(path, _wrap(fn, backend, access=access), methods=[method])
        for method, path, fn, access in _ROUTES
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    # A redirect is no answer to a malformed path: "/health/" is a 404 like any unknown path.
    app.router.redirect_slashes = False
    return _TrustedHosts(app, backend.settings)


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
    ) -> None:
        self.settings = settings
        self._tree_source = tree
        self._address: AdminAddress | None = None
        self._server: HttpServer | None = None
        self._done = trio.Event()
        self._provider_paths: dict[str, str] = dict(settings.providers or {})

    async def on_start(self) -> None:
        """Start the HTTP server; return once it listens (a bind failure crashes the actor)."""
        backend = AdminBackend(
            self.settings, lookup=self.lookup, tree=self._snapshot, providers=self._providers
        )
        from supervisors._operator._http import HttpServer

        app = build_admin_app(backend)
        server = HttpServer(app, self.settings.limits(), error_body=_error_body)
        self._server = server
        ready = trio.Event()
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
        """The server's :class:`~supervisors._http.HttpStatistics` (``None`` before start)."""
        return None if self._server is None else self._server.statistics()

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
    shutdown: float = 5.0,
) -> ChildSpec[GetAdminAddress, AdminAddress]:
    """The child spec of the admin API server (an :class:`AdminActor`).

    Add it to your tree beside the monitor; the server starts with the tree and stops with it.
    The arguments are those of :class:`AdminSettings`, plus ``tree`` (see
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
    )
    return ChildSpec(name, lambda: AdminActor(settings, tree=tree), shutdown=shutdown)
