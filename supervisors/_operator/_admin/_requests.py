"""What every admin endpoint shares: the JSON error shape (:class:`ApiError`), the
:class:`AdminBackend` that asks the tree's actors, request parsing (names, integers, booleans,
durations, bounded bodies) and the bearer-token check, with :class:`FailedAttempts` limiting
wrong tokens per client address."""

from __future__ import annotations

import contextlib
import hmac
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from actors._core._ref import ActorRef
from actors._errors import ActorError, AuraError, FleetStoreUnavailable, JournalUnavailable
from actors._monitor._alerts import UnknownAlert
from actors._monitor._types import InvalidQuery, UnknownService
from actors._policies._logs import library_logger
from actors._policies._ratelimit import RateLimiter, RateLimiterSettings
from actors._policies._redact import escape_control, redact
from actors._protocol import FleetMember
from actors._saga._journals._fleet import FleetStatistics
from actors._saga._journals._records import JournalError, JournalStatistics
from actors._saga._messages import JournalStatus, SagaInfo
from supervisors._events import TreeNode
from supervisors._operator._admin._settings import MAX_THROTTLED_CLIENTS, AdminSettings

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response


logger: Final = library_logger("supervisors.admin")

_MAX_NAME: Final = 200

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
        # Messages may quote an actor's error (a crash, a provider's failure): redacted here,
        # the one place every error answer passes.
        message = redact(message)
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


class SagaDiscarded(msgspec.Struct, frozen=True):
    """The body of ``POST /api/resilience/sagas/{saga_id}/discard``: the finished saga removed
    from the journal, and the phase it ended in (``compensation_failed`` is the usual case:
    an operator undid by hand what its compensations could not)."""

    saga_id: str
    phase: str
    discarded: bool = True


class JournalInstance(msgspec.Struct, frozen=True):
    """One instance sharing a fleet journal, in ``GET /api/resilience/journal``.

    ``lease`` is ``"live"`` (renewed within its duration), ``"expired"`` (the instance stopped
    renewing: dead, frozen or cut off; survivors take its sagas over) or ``"closed"`` (it
    closed its journal gracefully).  ``lease_remaining`` is in seconds by the server's clock
    (negative: expired that long ago); ``started_at`` is wall-clock time.
    """

    instance_id: str
    host: str
    pid: int
    started_at: float
    lease: str
    lease_remaining: float
    sagas_owned: int
    this_instance: bool


class JournalView(msgspec.Struct, frozen=True):
    """The body of ``GET /api/resilience/journal``: the saga coordinator's journal.

    ``kind`` is its class (``PostgresJournal``, ``SqliteJournal``, ``MemoryJournal``);
    ``where`` its file or server (no password); ``available`` whether it accepts writes, and
    ``reason`` why not (redacted).  A journal shared by a fleet (``shared``) names this
    instance (``instance_id``), every instance with a lease row (``instances``, oldest first;
    ``live`` counts the live ones) and its connection and ownership counters
    (``fleet_statistics``); a journal of one instance has none of these (``""``, ``[]``, 0,
    ``null``).
    """

    kind: str
    where: str
    available: bool
    reason: str
    shared: bool
    instance_id: str
    live: int
    instances: list[JournalInstance]
    statistics: JournalStatistics
    fleet_statistics: FleetStatistics | None


def journal_view(status: JournalStatus) -> JournalView:
    """The admin API's view of a coordinator's :class:`~actors.JournalStatus`."""
    instances = [
        JournalInstance(
            instance_id=i.instance_id,
            host=i.host,
            pid=i.pid,
            started_at=i.started_at,
            lease="closed" if i.closed else ("live" if i.alive else "expired"),
            lease_remaining=round(i.lease_remaining, 3),
            sagas_owned=i.sagas_owned,
            this_instance=i.instance_id == status.instance_id,
        )
        for i in status.instances
    ]
    return JournalView(
        kind=status.kind,
        where=redact(status.where),
        available=status.available,
        reason=redact(status.reason),
        shared=status.fleet is not None,
        instance_id=status.instance_id,
        live=sum(1 for i in status.instances if i.alive),
        instances=instances,
        statistics=status.statistics,
        fleet_statistics=status.fleet,
    )


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
        fleets: returns this instance's fleet members (usually one, or none).
    """

    def __init__(
        self,
        settings: AdminSettings,
        *,
        lookup: Callable[[str], ActorRef[Any, Any]],
        tree: Callable[[], TreeNode],
        providers: Callable[[], Mapping[str, ActorRef[Any, Any]]],
        fleets: Callable[[], Sequence[FleetMember]] = tuple,
    ) -> None:
        self.settings = settings
        self.lookup = lookup
        self.tree = tree
        self.providers = providers
        self.fleets = fleets
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
        except JournalUnavailable as exc:
            # The saga journal's server is down: the coordinator answers, its journal cannot.
            raise ApiError(
                503,
                "journal_unavailable",
                f"The {what} cannot read its journal: {exc}",
                action=exc.suggested_action,
                headers={"Retry-After": "5"},
            ) from exc
        except FleetStoreUnavailable as exc:
            # An isolate or reset reached this instance but not the fleet.
            raise ApiError(
                503,
                "fleet_store_unavailable",
                f"The {what} acted on this instance only: {exc}",
                action=exc.suggested_action,
            ) from exc
        except AuraError as exc:
            if isinstance(exc, JournalError) and not isinstance(exc, ValueError):
                # A failed or closed journal: nothing to read until it is fixed.
                message = f"The {what}'s journal: {exc}"
                raise ApiError(503, "journal_error", message, action=exc.suggested_action) from exc
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
        ApiError: 403 when no token is configured (writes are disabled then, whatever the
            request sends); 401 without a well-formed ``Authorization: Bearer`` header, 429
            while the client is throttled for wrong tokens, 403 for a wrong token.
    """
    if not tokens:
        # Checked first: no credentials can ever open it, so "authenticate" (401) would mislead.
        raise ApiError(
            403,
            "forbidden",
            "writes are disabled: no admin token is configured",
            action="Start the admin API with a token to allow POST requests.",
        )
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
