"""A provider actor's fields and the small records its parts share.

:class:`_ProviderBase` declares the fields ``ProviderActor.__init__`` sets, so the parts of the
class kept in other modules (``_reporting``, ``_jobs``) are type-checked against them; ``_Job`` is
one call in progress, ``_Counters`` the slot's counters, ``_BreakerRelay`` the breaker's listener
that outlives an incarnation.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeAlias

import attrs
import trio
from trio.lowlevel import Task

from actors._core._actor import Actor
from actors._core._ref import ActorRef
from actors._core._reply import CancelAt, Reply, _Timers
from actors._errors import AuraError, ErrorCategory, ProviderError
from actors._policies._breaker import BreakerState, BreakerTransition, CircuitBreaker, Permit
from actors._policies._budget import RetryBudget
from actors._policies._bulkhead import Bulkhead
from actors._policies._classify import Classifier
from actors._policies._config._schema import ProviderSettings
from actors._policies._idempotency import IdempotencyTable, InFlight
from actors._policies._ratelimit import RateLimiter
from actors._policies._retry import RetryPolicy, RetryState
from actors._protocol import FleetLink, FleetMember, GateVerdict
from actors._provider._messages import ProviderMessage
from actors._provider._tracing import _Obs
from actors._telemetry import Telemetry, TraceContext

ProviderFunction: TypeAlias = Callable[[Any], Awaitable[Any]]
Fallback: TypeAlias = "ActorRef[Any, Any] | str | Callable[[Any, BaseException], Awaitable[Any]]"

_FLUSH_EVERY: Final = 256
# Seconds between expiry sweeps of the idempotency table while it holds records (a store also
# expires what is due, so the sweep only frees the memory of a provider gone quiet).
_EXPIRE_EVERY: Final = 60.0
# Enum member look-ups are slow on Python 3.11: hot paths compare with these.
_CLOSED: Final = BreakerState.CLOSED
_ISOLATED: Final = BreakerState.ISOLATED
_NOT_FALLBACK: Final = frozenset({ErrorCategory.VALIDATION})
# A job's fleet probe (``_Job.probe``): the gate said PROBE at admission / the job holds it.
_WANTS_PROBE: Final = 1
_PROBING: Final = 2


class _Job:
    """One call in progress, shared by every caller waiting for it.

    ``live`` counts the callers still waiting and ``deadline`` is the latest of theirs (the
    job runs for its longest-waiting caller).  When ``live`` drops to zero the job is
    cancelled: at once if it is queued or waiting for a retry; else the task running it (a
    worker's attempt or the fallback) has its ``scope`` cancelled (``stopping``) and settles
    it.  A caller that joins before then revives the job (``cancelled`` is cleared) and is
    answered like any other.
    """

    __slots__ = (
        "attempts",
        "cancelled",
        "claim",
        "deadline",
        "done",
        "entry",
        "guard",
        "last_error",
        "live",
        "log_ids",
        "obs",
        "payload",
        "permit",
        "probe",
        "retry",
        "running",
        "scope",
        "started",
        "stopping",
        "ticket",
        "timeout",
        "waiters",
    )

    def __init__(
        self, payload: Any, entry: InFlight | None, retry: RetryState, log_ids: Mapping[str, str]
    ) -> None:
        self.payload = payload
        self.log_ids = log_ids
        self.entry = entry
        self.retry = retry
        self.deadline = retry.deadline
        self.waiters: list[Reply[Any]] = []
        self.live = 0
        self.attempts = 0
        self.last_error: BaseException | None = None
        self.done = False
        self.cancelled = False
        self.running = False
        self.stopping = False
        self.scope: trio.CancelScope | None = None
        self.guard: CancelAt | None = None  # the running attempt's timeout
        self.ticket = 0
        self.permit = Permit(0)
        self.started = 0.0
        self.timeout = 0.0
        self.claim: object = None  # the fleet's claim on the key (a shared idempotency tier)
        self.probe = 0  # the fleet's probe: 0 none, _WANTS_PROBE wanted, _PROBING held
        self.obs: _Obs | None = None  # its spans, when telemetry is on


#: A call queued on the direct lane: (payload, idempotency key, reply, the caller's trace).
_Fresh: TypeAlias = tuple[Any, "str | None", Reply[Any], "TraceContext | None"]


def _fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` for one more waiter (one exception object per raise)."""
    if isinstance(error, AuraError):
        fresh = copy.copy(error)  # copies the attributes, not the chain: keep it
        fresh.__cause__ = error.__cause__
        fresh.__context__ = error.__context__
        fresh.__suppress_context__ = error.__suppress_context__
        return fresh
    return ProviderError(str(error), category=ErrorCategory.UNKNOWN, cause=error)


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` for reports; never raises (an exception's ``__str__`` may)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception as error:
        return f"{type(exc).__name__}: <str() raised {type(error).__name__}>"


@attrs.define
class _Counters:
    calls: int = 0
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    rejected: int = 0
    fallbacks: int = 0
    hedges: int = 0
    reports_dropped: int = 0
    retry_budget_rejections: int = 0
    bulkhead_rejections: int = 0
    #: Refusals logged at most once a minute (see ``_Reporting._refusal_line``): kind ->
    #: (refusals since its last line, when the next line may be written).  Made at the first.
    lines: dict[str, tuple[int, float]] | None = None


class _BreakerRelay:
    """A provider's breaker and its listener, kept in the slot: it forwards each transition
    to the incarnation running now."""

    __slots__ = ("breaker", "target")

    breaker: CircuitBreaker

    def __init__(self, target: Callable[[BreakerTransition], None]) -> None:
        self.target = target

    def __call__(self, transition: BreakerTransition) -> None:
        self.target(transition)


#: The outcome of the winning send of a hedged attempt.
_WON: Final = object()


class _ProviderBase(Actor[ProviderMessage, Any]):
    """The fields of a :class:`~actors.ProviderActor`, declared once for the parts of the class
    that live in other modules (reporting, jobs); ``ProviderActor.__init__`` sets them."""

    name: str
    settings: ProviderSettings
    counters: _Counters
    _fn: ProviderFunction
    _classifier: Classifier
    _monitor_spec: ActorRef[Any, Any] | str | None
    _monitor: ActorRef[Any, Any] | None
    _fallback_spec: Fallback | None
    _relay: _BreakerRelay
    _breaker: CircuitBreaker
    _budget: RetryBudget
    _retry: RetryPolicy
    _bulkhead: Bulkhead
    _limiter: RateLimiter | None
    _table: IdempotencyTable
    _hedging: float | None
    _report_interval: float
    _max_pending: int
    _reports: list[Any]
    _keep: dict[str, Any]
    _housekeeper: trio.CancelScope | None
    _path: str
    _flush_at: float
    _expire_at: float
    _queued: dict[int, _Job]
    _attempting: set[_Job]
    _fresh: deque[_Fresh]
    _max_workers: int
    _max_queued: int
    _idle: list[Task]
    _workers: int
    _running: int
    _delayed: list[tuple[float, int, _Job]]
    _delay_seq: itertools.count[int]
    _waiting: int
    _jobs: int
    _drained: trio.Event | None
    _log_ids: Mapping[str, str]
    _timers: _Timers
    _token: trio.lowlevel.TrioToken | None
    _now: Callable[[], float]  # the run's clock, read directly (hot paths)
    # The fleet (see ``_fleet``): the member, this provider's link, and what the hot path
    # reads of it (``None`` / False when not shared).
    _fleet: FleetMember | None
    _link: FleetLink | None
    _gate: Callable[[float], GateVerdict] | None
    _quota: FleetLink | None
    _claims: bool
    _trip_hint: tuple[ErrorCategory | None, float | None]
    _tel: Telemetry | None
    _observed: set[_Job]
