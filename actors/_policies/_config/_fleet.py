"""The fleet's settings: where the shared store is, who this instance is, and the timings.

Theory of operation
-------------------
:class:`FleetSettings` (the ``[fleet]`` section of a configuration) and
:class:`FleetProviderSettings` (a provider's ``fleet`` table, merged over ``[defaults]`` like
its other settings) are msgspec schemas validated like every other settings struct (see
``actors._policies._config._schema``): durations are float seconds or
:class:`datetime.timedelta`, a bad value raises :class:`~actors._errors.ConfigError` whose
``path`` names the field, unknown keys are errors.  Relations between fields are checked too
(an instance's liveness must outlast a few heartbeats; a view is stale only after a refresh had
a chance to run), because a violation would silently break the fleet's guarantees rather than
fail.

``instance_id`` defaults to a fresh id per process (host, PID and random bits): two processes
never share one, and a restarted process is a new instance (its predecessor's leases and
votes lapse on their own).
"""

from __future__ import annotations

import datetime
import math
import os
import re
import secrets
import socket
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urlsplit

import msgspec

from actors._errors import ConfigError
from actors._policies._backoff import _duration, _integer

__all__ = [
    "FleetProviderSettings",
    "FleetSettings",
    "StoreDownPolicy",
    "fresh_instance_id",
    "safe_url",
    "store_address",
]

#: What a provider does while the fleet store is down: ``"local"`` goes on with the local
#: policies alone (an LLM provider), ``"reject"`` refuses keyed calls (a payment provider:
#: running a charge twice is worse than not running it).
StoreDownPolicy = Literal["local", "reject"]

_PREFIX: Final = re.compile(r"[A-Za-z0-9_.:{}\-]{1,64}\Z")
_INSTANCE: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,128}\Z")
_SCHEMES: Final = ("redis", "rediss", "unix")


def fresh_instance_id() -> str:
    """A new instance id: ``host-pid-random`` (random enough that restarts never collide)."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "_", socket.gethostname())[:48] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def store_address(url: str) -> str:
    """``host:port`` (or the socket path) of a store URL, without its credentials: safe to log."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{host}:{port}"


def safe_url(url: str) -> str:
    """``url`` with its user name and password replaced by ``***``: safe to print."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()


class FleetProviderSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a provider shares with the fleet (its ``fleet`` table in a configuration).

    A provider actor given a fleet member shares these through it; without a member they are
    inert.

    Attributes:
        breaker: share the circuit breaker (the fleet gate, trip votes, one probe fleet-wide;
            default true).
        idempotency: share keyed calls' outcomes through the store, so a key runs once in the
            whole fleet (default true).
        on_store_down: ``"local"`` (default) or ``"reject"``: see :data:`StoreDownPolicy`.
            The breaker gate never rejects because the store is down: it is ignored then.
        quota_rate: the provider's fleet-wide quota in calls per second, shared by every
            instance through the store, or ``None`` (default) for no shared quota.
        quota_burst: the most calls the quota admits at once (>= 1), or ``None`` (default) for
            ``max(1, quota_rate)``.
    """

    breaker: bool = True
    idempotency: bool = True
    # Typed ``str`` and checked below, so a bad value's error lists the valid ones.
    on_store_down: str = "local"
    quota_rate: float | None = None
    quota_burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("breaker", "idempotency"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"must be true or false, not {getattr(self, name)!r}", path=name)
        if self.on_store_down not in ("local", "reject"):
            raise ConfigError(
                f"must be 'local' or 'reject', not {self.on_store_down!r}", path="on_store_down"
            )
        for name in ("quota_rate", "quota_burst"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"must be a number, not {value!r}", path=name)
            low = 0.0 if name == "quota_rate" else 1.0
            if not math.isfinite(value) or value > 1e9 or value < low or value == 0.0:
                raise ConfigError(f"must be finite, > {low:g} and <= 1e9, not {value!r}", path=name)
        if self.quota_burst is not None and self.quota_rate is None:
            raise ConfigError("needs quota_rate", path="quota_burst")


class FleetSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How this instance takes part in a fleet sharing one Redis-protocol store.

    Attributes:
        redis_url: the store, ``redis://[user:password@]host:port/db``, ``rediss://...`` or
            ``unix:///path``; credentials never appear in logs or errors.
        key_prefix: prefix of every key and channel (``[A-Za-z0-9_.:{}-]``, 1-64 characters;
            ``"aura"``): fleets sharing one store need different prefixes.
        instance_id: this instance's id, or ``None`` (default) for a fresh one per process.
        quorum_ratio: share of live instances whose local breakers must trip on path-local
            failures (timeouts, network, unknown) to open the fleet breaker (0 < r <= 1; 0.5).
        min_quorum: the least number of such instances (>= 1; 2), capped at the number of
            live instances, so a fleet of one still trips.  Provider-wide failures (rate
            limits, 5xx) need one instance.
        command_timeout: deadline of each store call, seconds (> 0; 0.5).
        connect_timeout: deadline of opening a connection, seconds (> 0; 1.0).
        heartbeat_interval: seconds between liveness heartbeats (> 0; 1.0).
        instance_ttl: an instance not heard from for this long is not live (>= 2 heartbeat
            intervals; 5.0).
        refresh_interval: seconds between full refreshes of the fleet view, which catch any
            change pub/sub missed (> 0; 1.0).
        stale_after: a fleet view older than this is ignored: the local breaker decides alone
            and health is ``degraded`` (> refresh_interval; 3.0).
        vote_ttl: how long an instance's trip vote counts towards the quorum (> 0; 60.0).
        probe_lease: lease of the one fleet-wide half-open probe; a prober that dies frees it
            after this long (> 0; 15.0, more than a call's usual per-attempt timeout).
        idempotency_lease: lease of a claimed idempotency key, renewed while the call runs;
            a joiner takes over after the owner stopped renewing for this long (> 0; 10.0).
        idempotency_poll: seconds between a joiner's polls, beside pub/sub (> 0; 0.5).
        idempotency_ttl: how long a finished outcome is kept (> 0; 86400, 24 h).
        idempotency_max_records: the most finished outcomes kept per provider; the oldest are
            dropped first, calls in flight never (>= 1; 10000).
        quota_lease: seconds a batch of leased quota tokens stays usable (> 0; 1.0).
        quota_batch: tokens leased per round trip at most (>= 1; 10).

    What each provider shares, and what it does while the store is down, is in its own
    settings (:class:`FleetProviderSettings`, ``ProviderSettings.fleet``).
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "aura"
    instance_id: str | None = None
    quorum_ratio: float = 0.5
    min_quorum: int = 2
    command_timeout: float = 0.5
    connect_timeout: float = 1.0
    heartbeat_interval: float = 1.0
    instance_ttl: float = 5.0
    refresh_interval: float = 1.0
    stale_after: float = 3.0
    vote_ttl: float = 60.0
    probe_lease: float = 15.0
    idempotency_lease: float = 10.0
    idempotency_poll: float = 0.5
    idempotency_ttl: float = 86400.0
    idempotency_max_records: int = 10_000
    quota_lease: float = 1.0
    quota_batch: int = 10

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            redis_url: str = ...,
            key_prefix: str = ...,
            instance_id: str | None = ...,
            quorum_ratio: float = ...,
            min_quorum: int = ...,
            command_timeout: float | datetime.timedelta = ...,
            connect_timeout: float | datetime.timedelta = ...,
            heartbeat_interval: float | datetime.timedelta = ...,
            instance_ttl: float | datetime.timedelta = ...,
            refresh_interval: float | datetime.timedelta = ...,
            stale_after: float | datetime.timedelta = ...,
            vote_ttl: float | datetime.timedelta = ...,
            probe_lease: float | datetime.timedelta = ...,
            idempotency_lease: float | datetime.timedelta = ...,
            idempotency_poll: float | datetime.timedelta = ...,
            idempotency_ttl: float | datetime.timedelta = ...,
            idempotency_max_records: int = ...,
            quota_lease: float | datetime.timedelta = ...,
            quota_batch: int = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        url = self.redis_url
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            raise ConfigError(
                f"must be a redis://, rediss:// or unix:// URL, not {_safe(url)}", path="redis_url"
            )
        if not isinstance(self.key_prefix, str) or not _PREFIX.match(self.key_prefix):
            raise ConfigError(
                f"must be 1-64 characters of [A-Za-z0-9_.:{{}}-], not {self.key_prefix!r}",
                path="key_prefix",
            )
        if self.instance_id is None:
            msgspec.structs.force_setattr(self, "instance_id", fresh_instance_id())
        elif not isinstance(self.instance_id, str) or not _INSTANCE.match(self.instance_id):
            raise ConfigError(
                f"must be 1-128 characters of [A-Za-z0-9_.:-], not {self.instance_id!r}",
                path="instance_id",
            )
        ratio = self.quorum_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigError(f"must be a number in (0, 1], not {ratio!r}", path="quorum_ratio")
        msgspec.structs.force_setattr(self, "quorum_ratio", float(ratio))
        _integer(self, "min_quorum", minimum=1)
        for name in (
            "command_timeout",
            "connect_timeout",
            "heartbeat_interval",
            "instance_ttl",
            "refresh_interval",
            "stale_after",
            "vote_ttl",
            "probe_lease",
            "idempotency_lease",
            "idempotency_poll",
            "idempotency_ttl",
            "quota_lease",
        ):
            _duration(self, name, positive=True)
        _integer(self, "idempotency_max_records", minimum=1)
        _integer(self, "quota_batch", minimum=1)
        if self.instance_ttl < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"must be >= 2 x heartbeat_interval ({2 * self.heartbeat_interval:g} s), got "
                f"{self.instance_ttl:g}: one late heartbeat would drop a live instance",
                path="instance_ttl",
            )
        if self.stale_after <= self.refresh_interval:
            raise ConfigError(
                f"must be > refresh_interval ({self.refresh_interval:g} s), got "
                f"{self.stale_after:g}: every view would go stale before its refresh",
                path="stale_after",
            )

    @property
    def instance(self) -> str:
        """This instance's id (``instance_id``, always set after validation)."""
        assert self.instance_id is not None
        return self.instance_id

    @property
    def store(self) -> str:
        """The store's ``host:port`` without credentials (for logs and errors)."""
        return store_address(self.redis_url)

    def quorum(self, live: int) -> int:
        """Trip votes needed for path-local failures with ``live`` live instances.

        ``max(min_quorum, ceil(quorum_ratio * live))``, capped at ``max(1, live)``.
        """
        needed = max(self.min_quorum, math.ceil(self.quorum_ratio * live - 1e-9))
        return max(1, min(needed, live))


def _safe(value: object) -> str:
    """A URL without its credentials for an error message."""
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.password or parts.username:
            return repr(f"{parts.scheme}://***@{parts.hostname or ''}")
        return repr(value[:80])
    return type(value).__name__
