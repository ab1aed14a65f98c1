"""The saga coordinator's protocol: messages, replies, audit records, reports, statistics.

Theory of operation
-------------------
Every message a :class:`~actors.SagaCoordinator` accepts or sends is a frozen, tagged
``msgspec.Struct`` (principle 6: they can be journaled, sent over HTTP or between processes
unchanged).  This module also turns a journaled saga (header and events) into the
:class:`SagaInfo` a ``GetSaga`` query answers, with a human-readable audit trail; it imports
no trio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import attrs
import msgspec

from actors._errors import ErrorCategory, shown
from actors._saga._definition import SagaDefinition, StepError, decoder
from actors._saga._journals._fleet import FleetStatistics, InstanceInfo
from actors._saga._journals._records import (
    JournalStatistics,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
)
from actors._saga._journals._state import saga_state
from actors._telemetry import TraceContext, fill_trace

__all__ = [
    "DiscardSaga",
    "GetSaga",
    "GetJournalStatus",
    "GetSagaStatistics",
    "JournalStatus",
    "ListSagas",
    "SagaAuditEntry",
    "SagaCoordinatorStatistics",
    "SagaInfo",
    "SagaMessage",
    "SagaResult",
    "SagaStarted",
    "StartSaga",
    "decode_error",
    "saga_info",
]

_SENDS = frozenset({SagaEventKind.STEP_STARTED, SagaEventKind.COMPENSATION_STARTED})
#: Events after a send that say it was answered (or failed after leaving, unless their error
#: says it never left).
_OUTCOMES = frozenset(
    {
        SagaEventKind.STEP_COMPLETED,
        SagaEventKind.STEP_FAILED,
        SagaEventKind.COMPENSATED_STEP,
        SagaEventKind.COMPENSATION_FAILED_STEP,
        SagaEventKind.COMPENSATION_FAILED,
    }
)
#: The audit detail of a step reply when personal data is hidden.
REPLY_HIDDEN: Final = "completed (reply hidden)"


class StartSaga(msgspec.Struct, frozen=True, tag="saga.start"):
    """Start a saga (the reply depends on ``wait``).

    Attributes:
        definition: the name of a registered :class:`SagaDefinition`.
        input: the saga's input (msgspec-encodable; builders see it as ``ctx.input``).
        saga_id: the saga's id (default: a fresh unique id): printable text (no control,
            separator or format characters: ids reach terminals and logs).  Starting an id that
            is running joins it; an id that finished (and is still in the journal) answers its
            outcome; the same id with another definition or input is an
            ``IdempotencyConflict``.
        wait: ``True`` (default): the reply is the saga's :class:`SagaResult`, or the error
            ``SagaFailed`` / ``CompensationFailed``; if this caller stops waiting (its ask times
            out or is cancelled) the saga is cancelled and compensated.  ``False``: the reply
            is :class:`SagaStarted` as soon as the saga is in the journal, and the saga runs to
            its end regardless of the caller.
        metadata: a small JSON-compatible dict stored with the saga (audit, listings).
        trace: the caller's span, the parent of the saga's span: by default the span current
            where the message is made (:func:`~actors.current_trace_context`), when
            aura-actors traces.  It is journaled (in the metadata, as ``traceparent`` and
            ``tracestate``), so a saga resumed after a restart continues the caller's trace.
    """

    definition: str
    input: Any = None
    saga_id: str | None = None
    wait: bool = True
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    trace: TraceContext | None = None

    def __post_init__(self) -> None:
        if self.trace is None:
            fill_trace(self)


class GetSaga(msgspec.Struct, frozen=True, tag="saga.get"):
    """Ask for one saga's :class:`SagaInfo` (audit trail included); ``None`` if unknown."""

    saga_id: str


class ListSagas(msgspec.Struct, frozen=True, tag="saga.list"):
    """Ask for the unfinished sagas and those that need an operator (``compensation_failed``):
    a list of :class:`~actors.SagaSummary`, oldest first."""


class DiscardSaga(msgspec.Struct, frozen=True, tag="saga.discard"):
    """Remove a finished saga from the journal (an operator's action after fixing a
    ``compensation_failed`` saga by hand); the reply is whether it was found."""

    saga_id: str


class GetSagaStatistics(msgspec.Struct, frozen=True, tag="saga.statistics"):
    """Ask for the coordinator's :class:`SagaCoordinatorStatistics`."""


class GetJournalStatus(msgspec.Struct, frozen=True, tag="saga.journal"):
    """Ask for the coordinator's :class:`JournalStatus`: its journal's state and, for a
    journal shared by a fleet, the instances that share it."""


class SagaStarted(msgspec.Struct, frozen=True, tag="saga.started"):
    """The reply to ``StartSaga(wait=False)``: the saga is durable in the journal."""

    saga_id: str


class SagaResult(msgspec.Struct, frozen=True, tag="saga.result"):
    """The reply to ``StartSaga`` for a completed saga: its final context.

    Attributes:
        saga_id, definition: the saga.
        results: every step's reply, by step name, in step order.
    """

    saga_id: str
    definition: str
    results: dict[str, Any]


class SagaAuditEntry(msgspec.Struct, frozen=True):
    """One line of a saga's audit trail.

    Attributes:
        seq: the event's position (0, 1, 2, ...).
        kind: the event kind (``"step_started"``, ``"compensated_step"``, ...).
        step: the step's index, for step events.
        step_name: the step's name, when the definition is known.
        at: wall-clock time of the event (``time.time()``).
        detail: what happened: the error for failures, the reply (abridged) for completed
            steps; for a send (``step_started``, ``compensation_started``) what became of it:
            ``"sent"`` or ``"re-sent (attempt N)"`` (followed by ``" after <error>"`` for a
            retry), ``"not sent"`` (its builder raised, its target was missing, the caller
            gave up first), ``"in flight"`` (no outcome yet) or ``"interrupted (may not have
            been sent)"`` (the coordinator stopped before its outcome was known, and sent it
            again after restarting).
    """

    seq: int
    kind: str
    step: int | None
    step_name: str | None
    at: float
    detail: str


class SagaInfo(msgspec.Struct, frozen=True):
    """One saga as the journal has it (the reply to :class:`GetSaga`).

    Attributes:
        saga_id, definition: the saga.
        phase: where it is (``"running"``, ``"completed"``, ``"compensation_failed"``, ...).
        finished: whether it ended.
        created_at, updated_at: wall-clock times of its creation and of its last event.
        input: its input, decoded.
        completed_steps: names of the forward steps that completed.
        failed_step: the name of the step that failed, if one did.
        compensated: names of the steps compensated, in the order they were.
        running_here: whether this coordinator is driving it right now.
        metadata: from ``StartSaga``.
        events: the audit trail.
        owner: the instance that owns it, in a journal shared by a fleet
            (:class:`~actors.PostgresJournal`; ``None`` otherwise).
        owner_alive: whether that instance's lease is current (``None`` without an owner).
    """

    saga_id: str
    definition: str
    phase: str
    finished: bool
    created_at: float
    updated_at: float
    input: Any
    completed_steps: list[str]
    failed_step: str | None
    compensated: list[str]
    running_here: bool
    metadata: dict[str, Any]
    events: list[SagaAuditEntry]
    owner: str | None = None
    owner_alive: bool | None = None

    def without_personal_data(self) -> SagaInfo:
        """A copy without what may hold personal data: the input (``None``), the metadata
        (``{}``) and the step replies (each ``step_completed`` detail reads
        ``"completed (reply hidden)"``).  Errors, names and times are kept.

        The admin API serves this unless it was configured with ``saga_input=True``.
        """
        events = [
            msgspec.structs.replace(e, detail=REPLY_HIDDEN) if e.kind == _COMPLETED_KIND else e
            for e in self.events
        ]
        return msgspec.structs.replace(self, input=None, metadata={}, events=events)


_COMPLETED_KIND: Final = SagaEventKind.STEP_COMPLETED.value


SagaMessage: TypeAlias = (
    StartSaga | GetSaga | ListSagas | DiscardSaga | GetSagaStatistics | GetJournalStatus
)


@attrs.frozen
class JournalStatus:
    """A coordinator's journal as its operator needs to see it (the reply to
    :class:`GetJournalStatus`).

    Attributes:
        kind: the journal's class name (``"PostgresJournal"``, ``"SqliteJournal"``, ...).
        where: where it keeps its sagas (a path, a URL without password), or ``""``.
        available: whether it accepts writes now.
        reason: why not, when it does not (redacted).
        instance_id: this instance's id in a fleet journal, else ``""``.
        instances: every instance sharing a fleet journal (live and recently dead), oldest
            first; empty for a journal of one instance.
        statistics: its counters.
        fleet: its connection and ownership counters, for a fleet journal.
    """

    kind: str
    where: str
    available: bool
    reason: str
    instance_id: str
    instances: list[InstanceInfo]
    statistics: JournalStatistics
    fleet: FleetStatistics | None


@attrs.frozen
class SagaCoordinatorStatistics:
    """A snapshot of a coordinator's counters, kept in its slot: they never go down when the
    coordinator restarts (``running`` is the sagas driven now).

    Attributes:
        running: sagas being driven now.
        started: sagas started by ``StartSaga``.
        recovered: unfinished sagas resumed from the journal at start.
        unresumable: journaled sagas left alone (unknown or incompatible definition).
        completed, compensated, failed, cancelled, compensation_failed: outcomes.
        steps_sent: step messages sent (attempts and re-sends included).
        step_retries: step retries after a failure.
        compensations_sent: compensation messages sent (retries included).
        compensation_retries: compensation retries after a failure.
        reports_sent, reports_dropped: monitor reports.
        taken_over: sagas a fleet journal handed to this coordinator after it started (from
            an instance whose lease expired, or its own after a write in doubt).
        ownership_lost: sagas this coordinator stopped driving because another instance
            owns them now.
        writes_in_doubt: sagas this coordinator stopped driving because a write of theirs was
            in doubt (the journal hands them back once it has settled, unless another
            instance owns them by then).
        journal_waits: writes that waited for the journal's server to be reachable again.
    """

    running: int
    started: int
    recovered: int
    unresumable: int
    completed: int
    compensated: int
    failed: int
    cancelled: int
    compensation_failed: int
    steps_sent: int
    step_retries: int
    compensations_sent: int
    compensation_retries: int
    reports_sent: int
    reports_dropped: int
    taken_over: int = 0
    ownership_lost: int = 0
    writes_in_doubt: int = 0
    journal_waits: int = 0


def decode_error(data: bytes) -> StepError:
    """The :class:`StepError` journaled in ``data`` (an "Unknown" one if unreadable)."""
    if data:
        try:
            return msgspec.msgpack.decode(data, type=StepError)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    return StepError(type="Unknown", message="", category=ErrorCategory.UNKNOWN.value)


def saga_info(
    header: SagaHeader,
    events: Sequence[SagaEvent],
    definition: SagaDefinition | None,
    *,
    running_here: bool = False,
    owner: str | None = None,
    owner_alive: bool | None = None,
) -> SagaInfo:
    """The :class:`SagaInfo` of a journaled saga (``definition`` names its steps, if known).

    Raises:
        SagaSequenceError: ``events`` is not a valid sequence.
    """
    state = saga_state(header, events)
    steps = definition.steps if definition is not None else ()

    def name(step: int | None) -> str | None:
        return steps[step].name if step is not None and 0 <= step < len(steps) else None

    try:
        value = decoder(definition.input_type if definition else Any).decode(header.payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        value = None
    entries: list[SagaAuditEntry] = []
    sends: dict[tuple[SagaEventKind, int | None], int] = {}
    for k, event in enumerate(events):
        kind = event.kind
        if kind in _SENDS:
            attempt = sends[kind, event.step] = sends.get((kind, event.step), 0) + 1
            following = events[k + 1] if k + 1 < len(events) else None
            detail = _send_detail(event, following, attempt)
        elif kind is SagaEventKind.STEP_COMPLETED:
            detail = _abridge(event.data)
        elif event.data:
            detail = decode_error(event.data).describe()
        else:
            detail = ""
        entries.append(
            SagaAuditEntry(event.seq, kind.value, event.step, name(event.step), event.at, detail)
        )
    return SagaInfo(
        saga_id=header.saga_id,
        definition=header.definition,
        phase=state.phase.value,
        finished=state.finished,
        created_at=header.created_at,
        updated_at=state.updated_at,
        input=value,
        completed_steps=[n for n in (name(i) for i in state.steps_completed) if n],
        failed_step=name(state.failed_step),
        compensated=[n for n in (name(j) for j in state.compensated) if n],
        running_here=running_here,
        metadata=header.metadata,
        events=entries,
        owner=owner,
        owner_alive=owner_alive,
    )


def _send_detail(event: SagaEvent, following: SagaEvent | None, attempt: int) -> str:
    """What became of the send ``event`` announced, told by the event after it.

    A send is journaled before it is made (write-ahead), so its own event cannot say whether
    it left: the next event of the saga (always about the same step) does.  An outcome, or a
    retry carrying the error of this attempt, says it was sent unless that error says it
    never left; a re-send without an error is a restarted coordinator's, which cannot know
    whether this one left.
    """
    sent = "sent" if attempt == 1 else f"re-sent (attempt {attempt})"
    if event.data:  # a retry: the error of the attempt before it
        sent += f" after {decode_error(event.data).describe()}"
    if following is None:
        return "in flight" if attempt == 1 else f"in flight (attempt {attempt})"
    if following.kind in _OUTCOMES or (following.kind is event.kind and following.data):
        failure = following.kind is not SagaEventKind.STEP_COMPLETED  # whose data is a reply
        if failure and following.data and decode_error(following.data).unsent:
            return "not sent" if attempt == 1 else f"not sent (attempt {attempt})"
        return sent
    if following.kind is event.kind:  # re-sent by a restarted coordinator
        return "interrupted (may not have been sent)"
    return sent  # pragma: no cover - no other event can follow a send


def _abridge(data: bytes) -> str:
    """A step reply for the audit trail: its repr, at most 200 characters."""
    try:
        value = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return f"<{len(data)} bytes>"
    return shown(value, 200)
