"""The admin API's settings (:class:`AdminSettings`): where it binds, its token, the hosts it
answers, its limits; checked when built, so a bad value fails at start-up with its name."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from actors._policies._ratelimit import RateLimiterSettings
from actors._policies._redact import check_printable

if TYPE_CHECKING:
    from supervisors._operator._http import HttpLimits


#: The default port of the admin API.
DEFAULT_PORT: Final = 9470
#: Loopback host names accepted in the ``Host`` header while bound to loopback.
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

#: The shortest admin token accepted.
MIN_TOKEN_LENGTH: Final = 16
#: Wrong tokens one client may send: 5, then one more every 12 seconds.
DEFAULT_FAILED_AUTH: Final = RateLimiterSettings(rate=5 / 60, burst=5)
#: The most client addresses whose failed attempts are remembered.
MAX_THROTTLED_CLIENTS: Final = 4096


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

    Attributes:
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
        send_buffer: the kernel send buffer of each connection, in bytes (default 256 KiB):
            what a client that does not read can make the kernel hold for it.
        max_streams: clients of the event stream (``/api/resilience/stream``, the live
            dashboard) at once, fewer than ``max_connections`` (default 8, or half of
            ``max_connections`` when that is less; 0 turns the stream off); one more gets 503.
        stream_interval: seconds between two reads of the actors while anyone streams
            (default 1).
        stream_heartbeat: seconds of silence after which a stream writes a keep-alive comment
            (default 15), so a client that went away is noticed.
        stream_buffer: bytes of events kept for one streaming client that reads slowly
            (default 1 MiB); past it they are dropped and the client gets a fresh snapshot.
        saga_input: show each saga's input, metadata and step replies in ``GET .../sagas``
            and ``GET .../sagas/{id}`` (default ``False``: they may hold personal data; the
            audit trail's details are always redacted).
        instance: this instance's name in a fleet, put as the ``instance`` label on every
            sample of ``/metrics`` (``None``, default: no such label; the scraping Prometheus
            adds its target's).  Printable, at most 200 characters.

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
    instance: str | None = None
    send_buffer: int = attrs.field(default=256 * 1024, validator=_positive_int("send_buffer"))
    max_streams: int = attrs.field()
    stream_interval: float = 1.0
    stream_heartbeat: float = 15.0
    stream_buffer: int = attrs.field(default=1024 * 1024, validator=_positive_int("stream_buffer"))

    @max_streams.default
    def _max_streams(self) -> int:
        return min(8, self.max_connections // 2)

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
            "stream_interval",
            "stream_heartbeat",
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
        if self.instance is not None:
            check_printable(self.instance, "admin instance", max_length=200)
        streams = self.max_streams
        if isinstance(streams, bool) or not isinstance(streams, int) or streams < 0:
            raise ValueError(f"admin max_streams must be an int >= 0, got {streams!r}")
        if streams >= self.max_connections:
            raise ValueError(
                f"admin max_streams ({streams}) must be less than max_connections "
                f"({self.max_connections}): streams must leave connections for the API"
            )
        if not isinstance(self.failed_auth, RateLimiterSettings):
            raise ValueError(
                f"admin failed_auth must be RateLimiterSettings, got {self.failed_auth!r}"
            )

    def limits(self) -> HttpLimits:
        """The :class:`~supervisors._operator._http.HttpLimits` the server enforces.

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
            send_buffer=self.send_buffer,
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
