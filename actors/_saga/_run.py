"""One saga's records while it runs, and the coordinator's fields and shared constants.

``_Run`` is a running saga (its state, its waiters, its cancel scope), ``_Plan`` what a
definition's steps need at run time (decoders, targets once resolved), ``_Counters`` the
coordinator's counters; :class:`_CoordinatorBase` declares the fields
``SagaCoordinator.__init__`` sets, for the parts of the class kept in other modules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeAlias

import attrs
import msgspec
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task

from actors._core._actor import Actor
from actors._core._ref import ActorRef
from actors._core._reply import Reply
from actors._errors import ErrorCategory
from actors._policies._classify import Classifier
from actors._policies._logs import library_logger
from actors._policies._redact import redact
from actors._policies._retry import RetryPolicy
from actors._saga._definition import SagaDefinition, SagaView, StepError, decoder
from actors._saga._journals._fleet import FleetJournal
from actors._saga._journals._index import storable
from actors._saga._journals._records import Journal, SagaEvent, SagaEventKind, SagaHeader, SagaPhase
from actors._saga._journals._state import SagaState
from actors._saga._messages import SagaMessage
from actors._saga._tracing import _SagaObs
from actors._telemetry import Telemetry

_log = library_logger("actors.saga")

# Enum member lookups cost a descriptor call each on Python 3.11: module constants instead.
_K = SagaEventKind
_P = SagaPhase
_STARTED: Final = _K.STARTED
_STEP_STARTED: Final = _K.STEP_STARTED
_STEP_COMPLETED: Final = _K.STEP_COMPLETED
_STEP_FAILED: Final = _K.STEP_FAILED
_COMPLETED: Final = _K.COMPLETED
_RUNNING: Final = _P.RUNNING
_STEP_IN_FLIGHT: Final = _P.STEP_IN_FLIGHT
_DONE: Final = _P.COMPLETED
_COMPENSATION_PHASES: Final = frozenset(
    {_P.COMPENSATING, _P.COMPENSATION_IN_FLIGHT, _P.COMPENSATION_RETRYING}
)
_DEFAULT_MAX_RUNNING: Final = 10_000
_MAX_IDLE_WORKERS: Final = 256

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder.decode  # (decoder, data)


@attrs.define
class _Counters:
    started: int = 0
    recovered: int = 0
    unresumable: int = 0
    completed: int = 0
    compensated: int = 0
    failed: int = 0
    cancelled: int = 0
    compensation_failed: int = 0
    steps_sent: int = 0
    step_retries: int = 0
    compensations_sent: int = 0
    compensation_retries: int = 0
    reports_sent: int = 0
    reports_dropped: int = 0
    taken_over: int = 0
    ownership_lost: int = 0
    writes_in_doubt: int = 0
    journal_waits: int = 0


# ------------------------------------------------------------------------------- one saga


class _Run:
    """One saga driven by this coordinator."""

    __slots__ = (
        "abandoned",
        "cancellable",
        "cause",
        "definition",
        "error",
        "finished",
        "forwarding",
        "header",
        "obs",
        "pending",
        "plan",
        "scope",
        "sent",
        "sent_seq",
        "state",
        "view",
        "waiters",
    )

    def __init__(
        self,
        header: SagaHeader,
        definition: SagaDefinition,
        input: Any,
        plan: _Plan | None = None,
    ) -> None:
        self.header = header
        self.definition = definition
        self.plan = _Plan(definition) if plan is None else plan
        self.view = SagaView(header.saga_id, definition, input)
        self.state = SagaState(header.saga_id, header.definition)
        self.waiters: list[Reply[Any]] = []
        # While `forwarding`, the cancel scope its forward part runs in (its worker's): its
        # caller giving up cancels it.
        self.scope: trio.CancelScope | None = None
        self.forwarding = False
        self.cancellable = False  # whether a caller can cancel it (then `scope` is used)
        self.abandoned = False  # its caller gave up
        self.finished = False
        self.sent: int | None = None  # the step whose message this run sent last
        self.sent_seq = -1  # the seq of the step_started (or compensation_started) sent last
        self.obs: _SagaObs | None = None  # its spans, when telemetry is on
        self.pending: tuple[int, bytes] | None = None  # a reply being journaled
        self.cause: BaseException | None = None  # the live exception that failed the saga
        self.error: StepError | None = None  # decoded step_error (cache)


_Job: TypeAlias = "tuple[_Run, Reply[Any] | None, bool]"
#: A step's target and how messages are delivered to it (one of the constants below).
_Target: TypeAlias = "tuple[ActorRef[Any, Any], str]"
_CALL: Final = "call"
_ENVELOPE: Final = "envelope"
_RAW: Final = "raw"
_DELIVERIES: Final = {"call": _CALL, "envelope": _ENVELOPE, "raw": _RAW}


class _Plan:
    """What a coordinator keeps about one definition, shared by the sagas that run it."""

    __slots__ = ("checked", "decoders", "input", "names", "retrying", "targets")

    def __init__(self, definition: SagaDefinition) -> None:
        steps = definition.steps
        self.names = tuple(step.name for step in steps)
        self.input = decoder(definition.input_type)
        #: Per step: the decoder of its replies; whether replies must be validated by it;
        #: whether it may be retried; its target, once resolved.
        self.decoders = tuple(decoder(step.reply_type) for step in steps)
        self.checked = tuple(step.reply_type is not Any for step in steps)
        self.retrying = tuple(step.retry.max_attempts > 1 for step in steps)
        self.targets: list[_Target | None] = [None] * len(steps)


def _shown(text: object) -> str:
    """Text for a log line or a monitor report: redacted (provider errors quote credentials)."""
    try:
        value = str(text)
    except Exception as exc:  # an exception's __str__ may raise
        value = f"<str() raised {type(exc).__name__}>"
    return redact(value, max_length=_MAX_SHOWN)


#: Report statuses that need an operator: delivered to the monitor even when its mailbox is
#: full (waiting for room), never dropped while the coordinator runs.
_CRITICAL: Final = frozenset({_P.COMPENSATION_FAILED.value, "unresumable"})
#: Critical reports waiting for room in the monitor's mailbox, at most.
_MAX_PENDING_REPORTS: Final = 1000
#: Longest text a log line or report carries (redaction bounds it).
_MAX_SHOWN: Final = 4000


def _category(error: StepError) -> ErrorCategory:
    try:
        return ErrorCategory(error.category)
    except ValueError:
        return ErrorCategory.UNKNOWN


def _abort_idle(raise_cancel: RaiseCancelT) -> Abort:
    return Abort.SUCCEEDED


_CANCELLED_IN_FLIGHT: Final = "the saga's caller stopped waiting while the step was in flight"
_NOT_RUNNING: Final = (
    "it is not running (stopped, or waiting to restart), so how to deliver to it is unknown"
)
#: Why a saga without a failed step is compensated: it was cancelled between two steps.
_CANCELLED_BETWEEN_STEPS: Final = StepError(
    type="Cancelled",
    message="the saga's caller stopped waiting",
    category=ErrorCategory.CANCELLATION.value,
    cancelled=True,
)


def _bad_id(message: str, saga_id: str) -> ValueError:
    # Never the id itself: it cannot even be encoded.
    return ValueError(
        f"{message}.saga_id holds characters that cannot be stored (a lone surrogate, at "
        f"position {next(i for i, c in enumerate(saga_id) if not storable(c))}): use valid text"
    )


def _not_a_str(field: str, value: object) -> TypeError:
    # Never repr() the value: a bad input may not even print.
    return TypeError(f"{field} must be a str, not {type(value).__name__}")


class _CoordinatorBase(Actor[SagaMessage, Any]):
    """The fields of a :class:`~actors.SagaCoordinator`, declared once for the parts of the
    class that live in other modules (driving, ending); ``SagaCoordinator.__init__`` sets
    them."""

    counters: _Counters
    _journal: Journal
    #: The journal when it is shared by a fleet (``PostgresJournal``), else ``None``.
    _fleet: FleetJournal | None
    #: The journal's writes as the driver calls them: the journal's own, or for a fleet
    #: journal wrappers that wait out an outage (see ``actors._saga._fleet``).
    _append: Callable[[SagaEvent], Awaitable[SagaState]]
    _append_many: Callable[[Sequence[SagaEvent]], Awaitable[dict[str, SagaState]]]
    _step_now: Callable[[SagaState, bytes, bool], SagaState | None] | None
    _definitions: dict[str, SagaDefinition]
    _monitor_spec: ActorRef[Any, Any] | str | None
    _monitor: ActorRef[Any, Any] | None
    _max_running: int
    _classifier: Classifier
    _rng: Any
    _runs: dict[str, _Run]
    _idle: list[Task]
    _plans: dict[str, _Plan]
    _policies: dict[tuple[str, int, bool], RetryPolicy]
    _prefix: str
    _next_id: int
    _token: trio.lowlevel.TrioToken | None
    _pending_reports: int
    _tel: Telemetry | None
