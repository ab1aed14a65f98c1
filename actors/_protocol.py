"""The messages and reports the built-in actors share, and nothing else.

Theory of operation
-------------------
The built-in actors (provider, monitor, saga coordinator, fleet) are independent of each other:
none imports another.  What crosses between them is defined here, as plain data:

* the reports the monitor takes in: a provider's :class:`CallReport` per attempt and its
  :class:`BreakerReport` per transition, a :class:`SupervisionReport`, the coordinator's
  :class:`SagaReport` about a saga that did not complete, and a :class:`DependencyReport` about
  something shared the application needs besides its providers (a saga journal's database).
  States and kinds are lower-case strings (:data:`BREAKER_STATES`, :data:`SUPERVISION_KINDS`,
  :data:`DEPENDENCY_STATES`), not another package's enums;
* the provider's :class:`Call`, which the coordinator sends a saga step in when its target
  takes calls, and :class:`CallReceiver`, the marker by which it knows such a target without
  importing the provider;
* what a provider needs from a fleet member (``actors._fleet``) without importing it: the
  :class:`FleetMember` and :class:`FleetLink` protocols, the gate's :class:`GateVerdict`, and
  the plain status records the operator surface reads (:class:`FleetStatus`).

Who talks to whom is decided where the tree is built (the user's code, or the supervisors
layer): a provider is given the monitor's ref or path, a coordinator the monitor's and its
steps' targets.  Everything here is a msgspec Struct, an enum, a protocol or a marker class over the
error vocabulary and the policies' settings, so this module imports neither trio nor any
actor.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from actors._errors import ErrorCategory, FleetStoreUnavailable
from actors._telemetry import TraceContext, fill_trace

if TYPE_CHECKING:
    from actors._policies._breaker import BreakerSettings
    from actors._policies._config._fleet import FleetProviderSettings

__all__ = [
    "BREAKER_STATES",
    "DEPENDENCY_STATES",
    "SUPERVISION_KINDS",
    "BreakerReport",
    "Call",
    "CallReceiver",
    "CallReport",
    "DependencyReport",
    "FleetBreakerStatus",
    "FleetLink",
    "FleetMember",
    "FleetStatus",
    "GateVerdict",
    "Report",
    "SagaReport",
    "SupervisionReport",
]

#: The breaker state names a :class:`BreakerReport` may carry.
BREAKER_STATES: Final = frozenset({"closed", "open", "half_open", "isolated"})
#: The kinds a :class:`SupervisionReport` may carry.
SUPERVISION_KINDS: Final = frozenset({"started", "crashed", "restarted", "stopped", "gave_up"})
#: The states a :class:`DependencyReport` may carry.
DEPENDENCY_STATES: Final = frozenset({"ok", "unavailable", "failed"})


# ---------------------------------------------------------------------------- provider calls


class Call(msgspec.Struct, frozen=True, tag="call"):
    """Ask a provider actor to call its service with ``payload``.

    Attributes:
        payload: what the service function receives.
        key: an idempotency key: calls with the same key (and the same payload) run the
            service at most once within the key's TTL; others join or get the stored outcome.
        trace: the caller's span, the parent of the provider's call span: by default the
            span current where the call is made (:func:`~actors.current_trace_context`), when
            aura-actors traces; ``None`` otherwise.
    """

    payload: Any
    key: str | None = None
    trace: TraceContext | None = None

    def __post_init__(self) -> None:
        if self.trace is None:
            fill_trace(self)


class CallReceiver:
    """Marker base of the actors that take :class:`Call` messages (the provider actor).

    A saga step whose ``delivery`` is ``"auto"`` is sent to such an actor in a :class:`Call`
    carrying the step's idempotency key, and to any other actor in a ``SagaStepMessage``.
    """

    __slots__ = ()


# ----------------------------------------------------------------------------------- reports


class CallReport(msgspec.Struct, frozen=True, tag=True, gc=False):
    """The outcome of one attempt of a provider call.

    Attributes:
        service: the provider's name.
        ok: whether the attempt succeeded.
        latency: seconds the attempt took (>= 0).
        at: when it ended, on the monitor's monotonic clock (trio's ``current_time()``).
        category: the failure's :class:`ErrorCategory` (or its string value); ``None`` on a
            failure counts as ``unknown``; ignored when ``ok``.
        error: the failure's message (redacted and cut on intake); ignored when ``ok``.
        retried: the attempt was a retry of an earlier failed attempt of the same call.
    """

    service: str
    ok: bool
    latency: float
    at: float
    category: ErrorCategory | None = None
    error: str | None = None
    retried: bool = False


class BreakerReport(msgspec.Struct, frozen=True, tag=True, gc=False):
    """A circuit breaker moved from ``old`` to ``new`` (names in :data:`BREAKER_STATES`).

    A report with ``old == new`` is a *state report*, not a transition: a provider actor
    sends one each time an incarnation starts, so the monitor's copy of the state is right
    again after a restart of either side.  ``path`` is where the provider actor runs, so the
    monitor can forget the breaker when that actor is stopped for good (a supervision
    ``stopped`` event for the path or a path above it).
    """

    service: str
    old: str
    new: str
    at: float
    reason: str = ""
    path: str = ""


class SupervisionReport(msgspec.Struct, frozen=True, tag=True):
    """A supervision event: ``kind`` (in :data:`SUPERVISION_KINDS`) happened at ``path``.

    For ``gave_up`` the path is the supervisor that gave up; ``detail`` is free text (redacted).
    """

    path: str
    kind: str
    detail: str = ""


class DependencyReport(msgspec.Struct, frozen=True, tag=True):
    """The state of a dependency the application shares with its other instances, besides its
    providers: the database of a saga journal, a fleet store.  Sent when the state changes
    (and again by a reporter that starts).

    States (:data:`DEPENDENCY_STATES`): ``ok``; ``unavailable``: it cannot be reached now
    and its user waits for it (the application is *degraded*: the outage is shared by every
    instance, so no instance is better taken out of rotation); ``failed``: this instance
    cannot use it until it is restarted (the application is *unhealthy*).

    Attributes:
        name: what it is, for people (``"saga journal"``); one state per name.
        status: its state (see above).
        reason: why it is not ``ok`` (redacted and cut on intake).
        where: where it is (a URL without password), or ``""``.
        at: wall-clock time of the report (``time.time()``).
    """

    name: str
    status: str
    reason: str = ""
    where: str = ""
    at: float = 0.0


#: Anything :meth:`MonitorState.record` accepts.
Report = CallReport | BreakerReport | SupervisionReport | DependencyReport


class SagaReport(msgspec.Struct, frozen=True, tag=True):
    """What the coordinator tells the monitor about a saga that did not complete.

    Sent with ``tell_nowait`` (never blocking the saga) when a saga ends ``compensated``,
    ``failed``, ``cancelled`` or ``compensation_failed`` (the last one needs an operator: the
    monitor raises an alert), and with status ``"unresumable"`` for a journaled saga the
    coordinator cannot resume (unknown or incompatible definition).  When the monitor's mailbox
    is full an ordinary report is dropped and counted; a ``compensation_failed`` or
    ``unresumable`` one is handed to a background task that waits for room.  A coordinator that
    starts sends the report of every ``compensation_failed`` saga still in its journal again.
    ``detail`` is redacted.

    Attributes:
        saga_id, definition: the saga.
        status: the saga's outcome (a phase value) or ``"unresumable"``.
        step: the step that failed, or whose compensation failed.
        detail: a one-line explanation.
        at: wall-clock time of the report.
    """

    saga_id: str
    definition: str
    status: str
    step: int | None
    detail: str
    at: float


# ------------------------------------------------------------------------------------ fleet


class GateVerdict(enum.Enum):
    """What a fleet breaker gate says about one call (read from a cached view, no I/O).

    ``PASS``: the fleet breaker is closed, the local breaker decides.  ``REJECT``: it is open,
    isolated, or another instance holds the half-open probe: fail fast.  ``PROBE``: the break
    is over: the call may become the fleet's one probe (after ``acquire_probe``).
    ``IGNORE``: the view is stale or the store unreachable: the local breaker decides alone.
    """

    PASS = "pass"
    REJECT = "reject"
    PROBE = "probe"
    IGNORE = "ignore"

    __hash__ = object.__hash__


class FleetBreakerStatus(msgspec.Struct, frozen=True, gc=False):
    """One provider's fleet breaker as this instance sees it.

    Attributes:
        service: the provider.
        state: ``closed``, ``open``, ``half_open`` or ``isolated`` (the last state heard of).
        fresh: whether the view is fresh; a stale view is ignored (the local breaker decides
            alone).
        epoch: the shared breaker's epoch (+1 per change; -1 before the first read).
        retry_after: seconds until the fleet lets a probe through (0 when closed, ``None``
            when isolated).
        votes: trip votes counting towards the quorum.
        probe_owner: while half-open, the instance holding the probe lease.
        break_length: the current break in seconds.
    """

    service: str
    state: str
    fresh: bool
    epoch: int
    retry_after: float | None
    votes: int
    probe_owner: str
    break_length: float


class FleetStatus(msgspec.Struct, frozen=True):
    """A fleet member's state for the operator surface (admin API, metrics, ``aura``).

    Attributes:
        instance: this instance's id.
        store: the store's ``host:port`` (never its credentials).
        status: ``healthy``, or ``degraded`` while the store is unreachable or a view is
            stale (calls go on under the local policies meanwhile).
        reasons: why it is degraded, one line each.
        available: whether the last store call reached the store.
        live: live instances at the last heartbeat (0 before the first).
        round_trips: commands sent to the store; ``errors`` store calls that failed.
        dropped: trip votes and probe outcomes that could not be sent.
        breakers: each shared provider's fleet breaker, by service name.
        idempotency: per provider, counters of the shared idempotency store (``claims``,
            ``replays``, ``joins``, ``takeovers``, ``conflicts``, ``finished``, ``fenced``,
            ``failures``).
    """

    instance: str
    store: str
    status: str
    reasons: list[str]
    available: bool
    live: int
    round_trips: int
    errors: int
    dropped: int
    breakers: list[FleetBreakerStatus]
    idempotency: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


class FleetLink(Protocol):
    """What one provider actor uses of a fleet member (made by :meth:`FleetMember.attach`).

    The hot path only reads: :attr:`check` and :meth:`take_quota` make no round trip.  What
    must reach the store without the caller waiting (trip votes, probe outcomes, finished
    keys) is queued with the ``*_nowait``-style methods, which never block and never raise
    for a store that is down.
    """

    #: The service's name.
    service: str
    #: The provider's store-down policy for keyed calls and quotas: ``"local"`` or ``"reject"``.
    on_store_down: str
    #: The gate's verdict at ``now`` (``None`` when the breaker is not shared).
    check: Callable[[float], GateVerdict] | None
    #: Whether keyed calls go through the shared idempotency store.
    shares_idempotency: bool
    #: Whether the provider has a fleet-wide quota.
    has_quota: bool

    # ---------------------------------------------------------------- breaker

    def retry_after(self, now: float) -> float | None:
        """Seconds a call the gate rejected should wait (``None``: isolated)."""
        ...

    def isolated(self) -> bool:
        """Whether the fleet breaker is isolated by an operator."""
        ...

    async def acquire_probe(self) -> bool:
        """Try to become the fleet's one half-open probe (one round trip at most; False
        when another caller or instance probes, or the store did not answer)."""
        ...

    def release_probe(self) -> None:
        """Give back a probe taken with :meth:`acquire_probe` without an outcome."""
        ...

    def settle_probe(self, ok: bool, retry_after: float | None) -> None:
        """Queue the probe's outcome: a success closes the fleet breaker, a failure reopens
        it for at least ``retry_after`` seconds."""
        ...

    def report_trip(self, category: ErrorCategory | None, retry_after: float | None) -> None:
        """Queue this instance's trip vote (its local breaker opened after ``category``)."""
        ...

    async def isolate(self) -> None:
        """Hold the fleet breaker open on every instance (raises FleetStoreUnavailable)."""
        ...

    async def reset(self) -> None:
        """Close the fleet breaker on every instance (raises FleetStoreUnavailable)."""
        ...

    def status(self, now: float) -> FleetBreakerStatus | None:
        """The fleet breaker as this instance sees it (``None`` when not shared)."""
        ...

    # ---------------------------------------------------------------- idempotency

    async def claim(self, key: str, payload: object) -> object:
        """Claim ``key`` for a call with ``payload`` fleet-wide, or get its outcome.

        Returns an opaque claim to pass to :meth:`finish` or :meth:`abandon`, or a
        ``Completed`` (the outcome of the call that ran somewhere in the fleet).  Waits while
        another instance runs the key; cancellable.

        Raises:
            IdempotencyConflict: the key was used with another payload.
            FleetStoreUnavailable: the store did not answer (the store-down policy decides).
        """
        ...

    def finish(self, claim: object, outcome: object, *, failed: bool, transient: bool) -> None:
        """Queue the claimed call's outcome for the store (a transient failure releases the
        key instead)."""
        ...

    def abandon(self, claim: object) -> None:
        """Queue the release of a claim whose call ended without an outcome."""
        ...

    def abandon_all(self) -> None:
        """Queue the release of every claim held for this service (its provider restarted:
        the calls they were made for died with the previous incarnation)."""
        ...

    # ---------------------------------------------------------------- quota

    def take_quota(self, now: float) -> float | None:
        """Take one token of the fleet-wide quota: ``0.0`` taken, else seconds to wait;
        ``None`` while the store cannot be reached."""
        ...

    def give_back_quota(self) -> None:
        """Return a token taken with :meth:`take_quota` and not used."""
        ...

    def store_down(self, operation: str) -> FleetStoreUnavailable:
        """The error a call refused by the ``"reject"`` policy gets."""
        ...

    # ---------------------------------------------------------------- health

    def watch_health(self, callback: Callable[[DependencyReport], None]) -> DependencyReport:
        """Call ``callback`` with a :class:`DependencyReport` (name ``"fleet store"``) whenever
        the fleet's health changes (``ok``, or ``unavailable`` while the store cannot be
        reached or the views are stale); replaces this service's earlier callback.  Returns
        the report of the state now."""
        ...


class FleetMember(Protocol):
    """This instance's member of a fleet, as the provider actors and the operator surface
    see it (``actors.fleet.Fleet`` is one)."""

    #: This instance's id.
    instance: str

    def attach(
        self, service: str, breaker: BreakerSettings, settings: FleetProviderSettings
    ) -> FleetLink:
        """The link of provider ``service`` (the same one for every incarnation)."""
        ...

    def status(self) -> FleetStatus:
        """The member's state now."""
        ...
