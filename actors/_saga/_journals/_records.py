"""Saga journal: records, the saga state machine's vocabulary, and the journal protocol.

Theory of operation
-------------------
A saga coordinator writes every transition of every saga to a *journal* before it acts on it
(write-ahead): it journals ``step_started`` and only then sends the step's message, so after a
crash the journal says what may have been sent.  A saga is a :class:`SagaHeader` (id, definition
name, creation time, input payload, small metadata) and an append-only sequence of
:class:`SagaEvent` records numbered ``seq = 0, 1, 2, ...`` without gaps.

The state machine of one saga, in terms of event kinds (the table :data:`TRANSITIONS` is the
authority; ``i`` is a forward step, ``j`` a step being compensated)::

    (new) --started--> running
    running --step_started(i = next_step)--> step_in_flight
    step_in_flight --step_started(i)--> step_in_flight            (re-sent after recovery)
    step_in_flight --step_completed(i)--> running                 (data = the step's reply)
    step_in_flight --step_failed(i)--> step_failed                (data = the error)
    running | step_failed --compensating--> compensating          (data = the reason)
    running --completed--> COMPLETED
    running | step_failed --failed--> FAILED                      (ended, nothing compensated)
    running | step_failed --cancelled--> CANCELLED                (ended, nothing compensated)
    compensating --compensation_started(j < compensate_below)--> compensation_in_flight
    compensation_in_flight --compensation_started(j)--> compensation_in_flight   (re-sent)
    compensation_in_flight --compensated_step(j)--> compensating
    compensation_in_flight --compensation_failed_step(j)--> compensation_retrying
    compensation_retrying --compensation_started(j)--> compensation_in_flight    (retry)
    compensating --compensated--> COMPENSATED
    compensating | compensation_in_flight | compensation_retrying
        --compensation_failed(step = the step being compensated, or None)--> COMPENSATION_FAILED

Upper-case phases end a saga: no event may follow them.  Compensations run in strictly
decreasing step order, each step at most once: on entering ``compensating`` the bound
``compensate_below`` is ``next_step`` (plus one when a step failed, so the failed step, whose
effect is uncertain after a timeout or cancellation, may be compensated too), and every new
``compensation_started(j)`` needs ``j < compensate_below`` and lowers the bound to ``j``.  Which
steps are compensatable is the definition's business, not the journal's: skipping is allowed.

Recovery reads the phase of the folded :class:`SagaState`:

* ``running``: start ``next_step`` (or finish the saga if it has no more steps);
* ``step_in_flight``: the step may or may not have taken effect: re-send ``step_in_flight``
  with the same idempotency key (journal another ``step_started`` first);
* ``step_failed``: decide again (compensate, or end ``failed``/``cancelled``);
* ``compensating``: continue with the compensatable steps below ``compensate_below``;
* ``compensation_in_flight`` / ``compensation_retrying``: re-send the compensation of
  ``compensation_step`` with its idempotency key.

:func:`saga_state` folds a header and its events into that state and rejects any impossible
sequence with :class:`SagaSequenceError`.  Journals validate every event the same way when it is
written, so an impossible sequence never reaches the disk.

Retention: unfinished sagas are never pruned, and neither are sagas that ended
``compensation_failed`` (they wait for an operator, who removes them with ``discard``).  Other
finished sagas are kept while they are both younger than ``retain_for`` (default 7 days) and
among the ``retain_last`` (default 10,000) most recently finished; journals prune themselves
every ``max(1, retain_last // 10)`` finished sagas, so their size is bounded without any call.

Layout: the records, kinds, phases and the :class:`Journal` protocol here; the fold
(:class:`SagaState`, :func:`saga_state`) in ``_state``; the bookkeeping every journal shares in
``_index``; the in-memory journal in ``_memory``; the SQLite and PostgreSQL journals in their
own packages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

import attrs
import msgspec

from actors._errors import AuraError, ErrorCategory

if TYPE_CHECKING:  # the state module builds on these records
    from actors._saga._journals._state import SagaState

__all__ = [
    "DEFAULT_RETAIN_FOR",
    "DEFAULT_RETAIN_LAST",
    "TRANSITIONS",
    "Journal",
    "JournalError",
    "JournalStatistics",
    "SagaEvent",
    "SagaEventKind",
    "SagaHeader",
    "SagaPhase",
    "SagaSequenceError",
    "SagaSummary",
]

#: Finished sagas younger than this (seconds) are kept, if also among the last ``retain_last``.
DEFAULT_RETAIN_FOR: Final = 7 * 24 * 3600.0
#: At most this many finished sagas (other than ``compensation_failed`` ones) are kept.
DEFAULT_RETAIN_LAST: Final = 10_000
#: Largest accepted header metadata, JSON-encoded.
MAX_METADATA_BYTES: Final = 64 * 1024


# ------------------------------------------------------------------------------------ errors


class JournalError(AuraError):
    """The journal cannot do what was asked: it is closed, failed, or its file is unusable.

    Raised when a journal file is corrupt, not a SQLite database, belongs to another
    application or has a newer schema (category CONFIGURATION or INVALID_STATE); when the
    journal's writer failed (disk full, I/O error: every pending and later call gets one); and
    when a call is made on a closed journal.

    Attributes:
        path: the journal file (``None`` for an in-memory journal).
    """

    default_category = ErrorCategory.INVALID_STATE

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        category: ErrorCategory | None = None,
        suggested_action: str | None = None,
    ) -> None:
        super().__init__(message, category=category, suggested_action=suggested_action)
        self.path = path


class SagaSequenceError(JournalError, ValueError):
    """An event is not a valid next transition of its saga (a coordinator bug, never stored).

    Attributes:
        saga_id: the saga.
        seq: the offending event's sequence number (``-1`` when there is no event).
        problem: what is wrong with it.
    """

    def __init__(self, *, saga_id: str, seq: int, problem: str) -> None:
        if type(seq) is not int:  # a malformed event: say what its seq was
            where = f"an event with seq {seq!r}"
        else:
            where = f"event #{seq}" if seq >= 0 else "its events"
        super().__init__(
            f"Saga {saga_id!r}: {where} is not a valid transition: {problem}.",
            suggested_action=(
                "This is a bug in the code that writes the saga's events: fix the sequence; "
                "the journal did not store the event."
            ),
        )
        self.saga_id = saga_id
        self.seq = seq
        self.problem = problem


# ------------------------------------------------------------------------------------ kinds


class SagaEventKind(enum.Enum):
    """What a :class:`SagaEvent` records (the value is stored in journals and audit trails)."""

    STARTED = "started"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    COMPENSATING = "compensating"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATED_STEP = "compensated_step"
    COMPENSATION_FAILED_STEP = "compensation_failed_step"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    COMPENSATION_FAILED = "compensation_failed"
    CANCELLED = "cancelled"

    # Members are singletons compared by identity; Enum's own __hash__ runs Python code, and
    # the fold hashes kinds and phases several times per event.
    __hash__ = object.__hash__


class SagaPhase(enum.Enum):
    """Where a saga is, as folded from its events (see the module docstring)."""

    __hash__ = object.__hash__

    NEW = "new"  # header only, ``started`` not yet applied (never stored)
    RUNNING = "running"
    STEP_IN_FLIGHT = "step_in_flight"
    STEP_FAILED = "step_failed"
    COMPENSATING = "compensating"
    COMPENSATION_IN_FLIGHT = "compensation_in_flight"
    COMPENSATION_RETRYING = "compensation_retrying"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    COMPENSATION_FAILED = "compensation_failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the saga has ended (no event may follow)."""
        return self in _FINISHED

    @property
    def resumable(self) -> bool:
        """Whether a recovering coordinator must continue the saga (started, not finished)."""
        return self not in _FINISHED and self is not SagaPhase.NEW


_K = SagaEventKind
_P = SagaPhase
_FINISHED: Final = frozenset(
    {_P.COMPLETED, _P.COMPENSATED, _P.FAILED, _P.COMPENSATION_FAILED, _P.CANCELLED}
)

#: The saga state machine as data: ``(phase, kind) -> next phase``.  A pair that is not here is
#: an impossible transition.  Step numbers are checked on top (see :meth:`SagaState.advance`).
TRANSITIONS: Final[Mapping[tuple[SagaPhase, SagaEventKind], SagaPhase]] = {
    (_P.NEW, _K.STARTED): _P.RUNNING,
    (_P.RUNNING, _K.STEP_STARTED): _P.STEP_IN_FLIGHT,
    (_P.RUNNING, _K.COMPENSATING): _P.COMPENSATING,
    (_P.RUNNING, _K.COMPLETED): _P.COMPLETED,
    (_P.RUNNING, _K.FAILED): _P.FAILED,
    (_P.RUNNING, _K.CANCELLED): _P.CANCELLED,
    (_P.STEP_IN_FLIGHT, _K.STEP_STARTED): _P.STEP_IN_FLIGHT,
    (_P.STEP_IN_FLIGHT, _K.STEP_COMPLETED): _P.RUNNING,
    (_P.STEP_IN_FLIGHT, _K.STEP_FAILED): _P.STEP_FAILED,
    (_P.STEP_FAILED, _K.COMPENSATING): _P.COMPENSATING,
    (_P.STEP_FAILED, _K.FAILED): _P.FAILED,
    (_P.STEP_FAILED, _K.CANCELLED): _P.CANCELLED,
    (_P.COMPENSATING, _K.COMPENSATION_STARTED): _P.COMPENSATION_IN_FLIGHT,
    (_P.COMPENSATING, _K.COMPENSATED): _P.COMPENSATED,
    (_P.COMPENSATING, _K.COMPENSATION_FAILED): _P.COMPENSATION_FAILED,
    (_P.COMPENSATION_IN_FLIGHT, _K.COMPENSATION_STARTED): _P.COMPENSATION_IN_FLIGHT,
    (_P.COMPENSATION_IN_FLIGHT, _K.COMPENSATED_STEP): _P.COMPENSATING,
    (_P.COMPENSATION_IN_FLIGHT, _K.COMPENSATION_FAILED_STEP): _P.COMPENSATION_RETRYING,
    (_P.COMPENSATION_IN_FLIGHT, _K.COMPENSATION_FAILED): _P.COMPENSATION_FAILED,
    (_P.COMPENSATION_RETRYING, _K.COMPENSATION_STARTED): _P.COMPENSATION_IN_FLIGHT,
    (_P.COMPENSATION_RETRYING, _K.COMPENSATION_FAILED): _P.COMPENSATION_FAILED,
}

#: Kinds whose event names a step (``step`` is an int); the others carry ``step=None``, except
#: ``compensation_failed``, whose step is the one being compensated (or ``None``).
STEP_KINDS: Final = frozenset(
    {
        _K.STEP_STARTED,
        _K.STEP_COMPLETED,
        _K.STEP_FAILED,
        _K.COMPENSATION_STARTED,
        _K.COMPENSATED_STEP,
        _K.COMPENSATION_FAILED_STEP,
    }
)

# Enum member lookups (``SagaEventKind.X``) cost ~0.2 us each on Python 3.11; the fold compares
# kinds several times per event, so it uses these module constants instead.
_STARTED: Final = _K.STARTED
_STEP_STARTED: Final = _K.STEP_STARTED
_STEP_COMPLETED: Final = _K.STEP_COMPLETED
_STEP_FAILED: Final = _K.STEP_FAILED
_COMPENSATING: Final = _K.COMPENSATING
_COMPENSATION_STARTED: Final = _K.COMPENSATION_STARTED
_COMPENSATED_STEP: Final = _K.COMPENSATED_STEP
_COMPENSATION_FAILED_STEP: Final = _K.COMPENSATION_FAILED_STEP
_COMPENSATION_FAILED: Final = _K.COMPENSATION_FAILED
_COMPLETED: Final = _K.COMPLETED
_DONE: Final = _P.COMPLETED
_NEW: Final = _P.NEW
_RUNNING: Final = _P.RUNNING
_STEP_IN_FLIGHT: Final = _P.STEP_IN_FLIGHT
_IN_COMPENSATION: Final = _P.COMPENSATING
_NEEDS_OPERATOR: Final = _P.COMPENSATION_FAILED


# ---------------------------------------------------------------------------------- records


class SagaHeader(msgspec.Struct, frozen=True, tag=True):
    """What a saga is: written once, with its first event, by ``Journal.create``.

    Attributes:
        saga_id: unique in the journal (also the prefix of the idempotency keys).
        definition: the name of the saga definition that runs it.
        created_at: wall-clock time (``time.time()``) the saga was created.
        payload: the saga's input, encoded by the coordinator (for example with msgspec).
        metadata: a small JSON-compatible dict (at most 64 KiB encoded); journals store and
            return it JSON-normalised (tuples come back as lists).
    """

    saga_id: str
    definition: str
    created_at: float
    payload: bytes = b""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class SagaEvent(msgspec.Struct, frozen=True, tag=True, gc=False):
    """One transition of one saga.

    Attributes:
        saga_id: the saga.
        seq: position in the saga's sequence, contiguous from 0.
        kind: the transition (see :class:`SagaEventKind` and the module docstring).
        step: the step it concerns (for step kinds), else ``None``.
        at: wall-clock time (``time.time()``) for the audit trail; never used for ordering.
        data: a step's reply (``step_completed``), an error (``step_failed``,
            ``compensation_failed_step``) or a reason, encoded by the coordinator.
    """

    saga_id: str
    seq: int
    kind: SagaEventKind
    step: int | None
    at: float
    data: bytes = b""


class SagaSummary(msgspec.Struct, frozen=True):
    """One line of ``Journal.list_unfinished()``: a saga that is running or needs an operator.

    Attributes:
        saga_id, definition, created_at, metadata: from the header.
        phase: where it is (``compensation_failed`` means it waits for an operator).
        next_step: forward steps completed.
        step_in_flight: the step in flight, if any.
        compensation_step: the step being compensated, if any.
        compensated: how many steps were compensated.
        events: how many events it has.
        updated_at: ``at`` of its last event.
        owner: the instance that drives it, in a journal shared by a fleet
            (:class:`~actors.PostgresJournal`); ``None`` in a journal of one instance.
    """

    saga_id: str
    definition: str
    created_at: float
    phase: SagaPhase
    next_step: int
    step_in_flight: int | None
    compensation_step: int | None
    compensated: int
    events: int
    updated_at: float
    metadata: dict[str, Any]
    owner: str | None = None


@attrs.frozen
class JournalStatistics:
    """A snapshot of a journal's counters (``journal.statistics()``).

    Attributes:
        sagas_open: unfinished sagas (running or compensating).
        sagas_needing_attention: sagas that ended ``compensation_failed`` and are kept.
        appends: completed write calls (``create``, ``append``, ``append_many``).
        rows: events written.
        commits: transactions committed (group commit makes this smaller than ``appends``).
        rows_per_commit: mean events per transaction (0.0 before the first).
        queue_depth: requests waiting for the writer (always 0 for the in-memory journal).
        bytes_written: payload, metadata and event data bytes written.
        sagas_pruned: finished sagas removed by retention or ``discard``.
    """

    sagas_open: int
    sagas_needing_attention: int
    appends: int
    rows: int
    commits: int
    rows_per_commit: float
    queue_depth: int
    bytes_written: int
    sagas_pruned: int


# --------------------------------------------------------------------------------- protocol


class Journal(Protocol):
    """Where a saga coordinator writes every transition before acting on it.

    Writes are durable when they return (write-ahead): send the message an event announces
    only after its ``append`` returned.  A caller cancelled while waiting for a write just
    stops waiting; whether the write then lands is implementation-defined (the SQLite journal
    always lands a write that was queued).  A failed journal raises :class:`JournalError` from
    every call; an invalid event raises :class:`SagaSequenceError` and is not stored.
    """

    async def create(
        self, header: SagaHeader, first_event: SagaEvent, *, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        """Store a new saga with its ``started`` event (``seq`` 0), and the events ``then``
        after it in the same write (a coordinator passes the first step's start); return its
        state.

        Raises ``JournalError`` if the id is already in the journal, ``SagaSequenceError`` if
        an event is invalid or ``then`` ends the saga.
        """
        ...

    async def append(self, event: SagaEvent) -> SagaState:
        """Durably append one event to an unfinished saga created earlier; return the saga's
        state after it (the journal folds every event to validate it: use this state rather
        than folding again)."""
        ...

    async def append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        """Durably append several events (of one or more sagas) atomically, in order; return
        the state of each saga touched, after the batch."""
        ...

    async def load_unfinished(self) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        """Every resumable saga (not finished), oldest first, with all its events."""
        ...

    async def get(self, saga_id: str) -> tuple[SagaHeader, list[SagaEvent]] | None:
        """One saga's header and events (its audit trail), or ``None`` if unknown or pruned."""
        ...

    async def list_unfinished(self) -> list[SagaSummary]:
        """Running sagas and those that ended ``compensation_failed``, oldest first."""
        ...

    async def prune_finished(
        self, older_than: float | timedelta | None = None, keep_last: int | None = None
    ) -> int:
        """Remove finished sagas older than ``older_than`` seconds or beyond the ``keep_last``
        most recently finished (defaults: the journal's retention); return how many.

        Unfinished and ``compensation_failed`` sagas are never removed.
        """
        ...

    async def discard(self, saga_id: str) -> bool:
        """Remove one finished saga (an operator's action, e.g. after fixing a
        ``compensation_failed`` one); ``False`` if unknown.  Raises ``JournalError`` if it is
        not finished."""
        ...

    def statistics(self) -> JournalStatistics:
        """A snapshot of the journal's counters."""
        ...

    async def aclose(self) -> None:
        """Flush pending writes and release the journal; later calls raise ``JournalError``."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
