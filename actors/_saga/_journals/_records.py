"""Saga journal: records, the saga state machine, the journal protocol and the in-memory journal.

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
"""

from __future__ import annotations

import enum
import math
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, Protocol, Self

import attrs
import msgspec
import trio

from actors._errors import AuraError, ConfigError, ErrorCategory

__all__ = [
    "DEFAULT_RETAIN_FOR",
    "DEFAULT_RETAIN_LAST",
    "TRANSITIONS",
    "Journal",
    "JournalError",
    "JournalStatistics",
    "MemoryJournal",
    "SagaEvent",
    "SagaEventKind",
    "SagaHeader",
    "SagaPhase",
    "SagaSequenceError",
    "SagaState",
    "SagaSummary",
    "saga_state",
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


class SagaState(msgspec.Struct, frozen=True, gc=False):
    """Everything recovery needs to know about a saga, folded from its events.

    Build it with :func:`saga_state` (or :meth:`new` and :meth:`advance`, one event at a
    time).

    Attributes:
        saga_id, definition: from the header.
        phase: where the saga is (:class:`SagaPhase`).
        next_seq: the ``seq`` the next event must have.
        next_step: the next forward step to start; steps ``0 .. next_step - 1`` completed.
        step_in_flight: the step started and not completed or failed, else ``None``.
        step_attempts: how often ``step_in_flight`` was started (more than 1 after a re-send).
        failed_step: the step whose ``step_failed`` was recorded, else ``None``.
        results: ``results[i]`` is the data of step ``i``'s ``step_completed`` (its reply).
        compensate_below: while compensating, compensations still to start are of steps
            below this; ``None`` before compensation began.
        compensation_step: the step whose compensation started and did not succeed yet.
        compensation_attempts: how often ``compensation_step``'s compensation was started.
        compensated: steps compensated, in the order they were.
        step_error: data of the ``step_failed`` event (``b""`` if none).
        compensation_error: data of the last ``compensation_failed_step`` (``b""`` if none).
        reason: data of the ``compensating`` event or of the final event.
        started_at, updated_at: ``at`` of the first and of the last event.
    """

    saga_id: str
    definition: str
    phase: SagaPhase = SagaPhase.NEW
    next_seq: int = 0
    next_step: int = 0
    step_in_flight: int | None = None
    step_attempts: int = 0
    failed_step: int | None = None
    results: tuple[bytes, ...] = ()
    compensate_below: int | None = None
    compensation_step: int | None = None
    compensation_attempts: int = 0
    compensated: tuple[int, ...] = ()
    step_error: bytes = b""
    compensation_error: bytes = b""
    reason: bytes = b""
    started_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def new(cls, header: SagaHeader) -> SagaState:
        """The state before any event (phase ``new``)."""
        return cls(saga_id=header.saga_id, definition=header.definition)

    @property
    def finished(self) -> bool:
        """Whether the saga has ended."""
        return self.phase in _FINISHED

    @property
    def steps_completed(self) -> range:
        """The forward steps that completed (``range(next_step)``)."""
        return range(self.next_step)

    def next_event(
        self,
        kind: SagaEventKind,
        step: int | None = None,
        data: bytes = b"",
        at: float | None = None,
    ) -> SagaEvent:
        """An event for this saga with the next ``seq`` (``at`` defaults to ``time.time()``).

        The event is not validated here; :meth:`advance` (or the journal) does that.
        """
        return SagaEvent(
            self.saga_id, self.next_seq, kind, step, time.time() if at is None else at, data
        )

    def advance(self, event: SagaEvent) -> SagaState:
        """The state after ``event``; this state is unchanged.

        Raises:
            SagaSequenceError: ``event`` is not a valid next transition (wrong saga, wrong
                ``seq``, a transition the table does not allow, a wrong step number, or fields
                of the wrong type).
        """
        # Fast path: a saga starting, or a forward step starting or completing, well-formed
        # (nearly every event a saga writes).  It checks exactly what the general path checks
        # for these transitions and builds the same state, without the table and the dict of
        # changes; anything else (including every invalid event) takes the general path.
        if type(event) is SagaEvent:
            kind = event.kind
            seq = event.seq
            step = event.step
            at = event.at
            if (
                type(seq) is int
                and seq == self.next_seq
                and type(at) is float
                and at - at == 0.0  # finite (NaN and infinities fail this)
                and type(event.data) is bytes
                and event.saga_id == self.saga_id
            ):
                phase = self.phase
                if type(step) is not int:
                    if kind is _STARTED and step is None and phase is _NEW:
                        return SagaState(
                            self.saga_id,
                            self.definition,
                            _RUNNING,
                            seq + 1,
                            self.next_step,
                            self.step_in_flight,
                            self.step_attempts,
                            self.failed_step,
                            self.results,
                            self.compensate_below,
                            self.compensation_step,
                            self.compensation_attempts,
                            self.compensated,
                            self.step_error,
                            self.compensation_error,
                            self.reason,
                            at,
                            at,
                        )
                elif kind is _STEP_COMPLETED:
                    if phase is _STEP_IN_FLIGHT and step == self.step_in_flight:
                        return SagaState(
                            self.saga_id,
                            self.definition,
                            _RUNNING,
                            seq + 1,
                            self.next_step + 1,
                            None,
                            0,
                            self.failed_step,
                            (*self.results, event.data),
                            self.compensate_below,
                            self.compensation_step,
                            self.compensation_attempts,
                            self.compensated,
                            self.step_error,
                            self.compensation_error,
                            self.reason,
                            self.started_at,
                            at,
                        )
                elif kind is _STEP_STARTED and phase is _RUNNING and step == self.next_step:
                    return SagaState(
                        self.saga_id,
                        self.definition,
                        _STEP_IN_FLIGHT,
                        seq + 1,
                        self.next_step,
                        step,
                        self.step_attempts + 1,
                        self.failed_step,
                        self.results,
                        self.compensate_below,
                        self.compensation_step,
                        self.compensation_attempts,
                        self.compensated,
                        self.step_error,
                        self.compensation_error,
                        self.reason,
                        self.started_at,
                        at,
                    )
        return self._advance_checked(event)

    def _advance_pair(self, done: SagaEvent, then: SagaEvent) -> SagaState | None:
        """The state after ``done`` then ``then`` when they are a step's completion and the
        next step's start (or the saga's completion), well-formed: what a saga writes once per
        step, built at once; ``None`` for anything else (fold those with :meth:`advance`).

        The result equals ``self.advance(done).advance(then)``; nothing is raised here.
        """
        if (
            type(done) is not SagaEvent
            or type(then) is not SagaEvent
            or self.phase is not _STEP_IN_FLIGHT
            or done.kind is not _STEP_COMPLETED
        ):
            return None
        seq = done.seq
        step = done.step
        at = then.at
        saga_id = self.saga_id
        if not (
            type(seq) is int
            and seq == self.next_seq
            and type(step) is int
            and step == self.step_in_flight
            and type(done.at) is float
            and done.at - done.at == 0.0  # finite
            and type(done.data) is bytes
            and done.saga_id == saga_id
            and then.saga_id == saga_id
            and type(then.seq) is int
            and then.seq == seq + 1
            and type(at) is float
            and at - at == 0.0
            and type(then.data) is bytes
        ):
            return None
        kind = then.kind
        following = then.step
        next_step = self.next_step + 1
        if kind is _STEP_STARTED and type(following) is int and following == next_step:
            phase: SagaPhase = _STEP_IN_FLIGHT
            attempts = 1
            reason = self.reason
        elif kind is _COMPLETED and following is None:
            phase = _DONE
            attempts = 0
            following = None
            reason = then.data
        else:
            return None
        return SagaState(
            saga_id,
            self.definition,
            phase,
            seq + 2,
            next_step,
            following,
            attempts,
            self.failed_step,
            (*self.results, done.data),
            self.compensate_below,
            self.compensation_step,
            self.compensation_attempts,
            self.compensated,
            self.step_error,
            self.compensation_error,
            reason,
            self.started_at,
            at,
        )

    def _advance_checked(self, event: SagaEvent) -> SagaState:
        """:meth:`advance` by the general rules: the transition table and a dict of changes
        (the reference the fast path of :meth:`advance` is tested against)."""
        if type(event) is not SagaEvent:
            raise SagaSequenceError(
                saga_id=self.saga_id, seq=-1, problem=f"{type(event).__name__} is not a SagaEvent"
            )
        seq = event.seq
        if event.saga_id != self.saga_id:
            raise SagaSequenceError(
                saga_id=self.saga_id, seq=seq, problem=f"it belongs to saga {event.saga_id!r}"
            )
        if seq != self.next_seq or type(seq) is not int:
            raise SagaSequenceError(
                saga_id=self.saga_id, seq=seq, problem=f"expected seq {self.next_seq}"
            )
        kind = event.kind
        phase = self.phase
        if type(kind) is not SagaEventKind:
            raise SagaSequenceError(
                saga_id=self.saga_id, seq=seq, problem=f"{kind!r} is not a SagaEventKind"
            )
        to = TRANSITIONS.get((phase, kind))
        if to is None:
            raise SagaSequenceError(
                saga_id=self.saga_id,
                seq=seq,
                problem=f"{kind.value!r} cannot follow phase {phase.value!r}",
            )
        step = event.step
        at = event.at
        if type(event.data) is not bytes or not isinstance(at, (float, int)):
            raise SagaSequenceError(
                saga_id=self.saga_id, seq=seq, problem="`data` must be bytes and `at` a float"
            )
        if not math.isfinite(at):  # a NaN would be stored as NULL, an infinity is no time
            raise SagaSequenceError(
                saga_id=self.saga_id, seq=seq, problem=f"`at` must be a finite float, not {at!r}"
            )
        if kind in STEP_KINDS:
            if type(step) is not int or step < 0:
                raise SagaSequenceError(
                    saga_id=self.saga_id,
                    seq=seq,
                    problem=f"{kind.value!r} needs a step number >= 0, got {step!r}",
                )
        elif kind is _COMPENSATION_FAILED:
            if step != self.compensation_step or (step is not None and type(step) is not int):
                raise SagaSequenceError(
                    saga_id=self.saga_id,
                    seq=seq,
                    problem=f"'compensation_failed' must name step {self.compensation_step!r}",
                )
        elif step is not None:
            raise SagaSequenceError(
                saga_id=self.saga_id, seq=seq, problem=f"{kind.value!r} takes no step number"
            )
        return self._apply(event, kind, to, step)

    def _apply(
        self, event: SagaEvent, kind: SagaEventKind, to: SagaPhase, step: int | None
    ) -> SagaState:
        at = float(event.at)
        changes: dict[str, Any] = {"phase": to, "next_seq": event.seq + 1, "updated_at": at}
        if kind is _STEP_STARTED:
            expected = self.next_step if self.phase is _RUNNING else self.step_in_flight
            self._expect_step(event, step, expected)
            changes.update(step_in_flight=step, step_attempts=self.step_attempts + 1)
        elif kind is _STEP_COMPLETED:
            self._expect_step(event, step, self.step_in_flight)
            changes.update(next_step=self.next_step + 1, step_in_flight=None, step_attempts=0)
            changes["results"] = (*self.results, event.data)
        elif kind is _STEP_FAILED:
            self._expect_step(event, step, self.step_in_flight)
            changes.update(step_in_flight=None, failed_step=step, step_error=event.data)
        elif kind is _COMPENSATION_STARTED:
            if self.phase is _IN_COMPENSATION:  # a new compensation: below the last one
                below = self.compensate_below
                if step is None or below is None or step >= below:
                    raise SagaSequenceError(
                        saga_id=self.saga_id,
                        seq=event.seq,
                        problem=(
                            f"compensation of step {step} is out of order: only steps below "
                            f"{below} remain to compensate"
                        ),
                    )
                changes.update(compensate_below=step, compensation_step=step)
                changes["compensation_attempts"] = 1
            else:  # a re-send or a retry of the current one
                self._expect_step(event, step, self.compensation_step)
                changes["compensation_attempts"] = self.compensation_attempts + 1
        elif kind is _COMPENSATED_STEP:
            self._expect_step(event, step, self.compensation_step)
            assert step is not None
            changes.update(compensation_step=None, compensation_attempts=0)
            changes["compensated"] = (*self.compensated, step)
        elif kind is _COMPENSATION_FAILED_STEP:
            self._expect_step(event, step, self.compensation_step)
            changes["compensation_error"] = event.data
        elif kind is _STARTED:
            changes["started_at"] = at
        elif kind is _COMPENSATING:
            below = self.next_step + (0 if self.failed_step is None else 1)
            changes.update(compensate_below=below, reason=event.data)
        else:  # completed, compensated, failed, cancelled, compensation_failed: the saga ends
            changes["reason"] = event.data
        return msgspec.structs.replace(self, **changes)

    def _expect_step(self, event: SagaEvent, step: int | None, expected: int | None) -> None:
        if step != expected:
            raise SagaSequenceError(
                saga_id=self.saga_id,
                seq=event.seq,
                problem=f"{event.kind.value!r} must name step {expected}, not {step}",
            )


def saga_state(header: SagaHeader, events: Iterable[SagaEvent]) -> SagaState:
    """Fold a saga's events into its :class:`SagaState`, validating the whole sequence.

    Example::

        state = saga_state(header, events)
        if state.phase is SagaPhase.STEP_IN_FLIGHT:
            resend(state.step_in_flight)

    Raises:
        SagaSequenceError: no events, or an event that is not a valid transition (see
            :meth:`SagaState.advance`).
    """
    state = SagaState.new(header)
    for event in events:
        state = state.advance(event)
    if state.phase is _P.NEW:
        raise SagaSequenceError(saga_id=header.saga_id, seq=-1, problem="there are no events")
    return state


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


# ----------------------------------------------------------------------- shared bookkeeping


def seconds(value: float | timedelta, name: str) -> float:
    """``value`` in seconds: a finite number > 0 (raises ``ConfigError`` naming ``name``)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be seconds (float or timedelta), got {value!r}", path=name)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"must be a finite number of seconds > 0, got {value!r}", path=name)
    return float(value)


def check_count(value: int, name: str) -> int:
    """``value`` as an int >= 0 (raises ``ConfigError`` naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"must be an integer >= 0, got {value!r}", path=name)
    return value


def storable(text: str) -> bool:
    """Whether ``text`` can be stored: journals keep text as UTF-8, which has no lone
    surrogates (``"x\\udcff"`` is a valid Python str that no file can hold)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def normalize_header(header: SagaHeader) -> tuple[SagaHeader, bytes]:
    """Check a header's fields and return it with JSON-normalised metadata, plus that JSON.

    Raises ``TypeError`` / ``ValueError`` naming the bad field.
    """
    if type(header) is not SagaHeader:
        raise TypeError(f"expected a SagaHeader, got {type(header).__name__}")
    if type(header.saga_id) is not str or not header.saga_id:
        raise TypeError(f"SagaHeader.saga_id must be a non-empty str, got {header.saga_id!r}")
    if type(header.definition) is not str:
        raise TypeError(f"SagaHeader.definition must be a str, got {header.definition!r}")
    for field in ("saga_id", "definition"):
        if not storable(getattr(header, field)):
            raise ValueError(
                f"SagaHeader.{field} holds characters that cannot be stored (a lone surrogate)"
            )
    if isinstance(header.created_at, bool) or not isinstance(header.created_at, (int, float)):
        raise TypeError(f"SagaHeader.created_at must be a float, got {header.created_at!r}")
    if not math.isfinite(header.created_at):
        raise ValueError(f"SagaHeader.created_at must be finite, got {header.created_at!r}")
    if type(header.payload) is not bytes:
        raise TypeError(f"SagaHeader.payload must be bytes, got {type(header.payload).__name__}")
    metadata = header.metadata
    if type(metadata) is dict and not metadata:  # the common case: no JSON round trip
        created_at = float(header.created_at)
        return msgspec.structs.replace(header, created_at=created_at, metadata={}), b"{}"
    if not isinstance(metadata, dict) or not all(type(k) is str for k in metadata):
        raise TypeError("SagaHeader.metadata must be a dict with str keys")
    try:
        encoded = msgspec.json.encode(metadata)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:  # ValueError: a lone surrogate
        raise TypeError(f"SagaHeader.metadata is not JSON-compatible: {exc}") from exc
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(
            f"SagaHeader.metadata is {len(encoded)} bytes encoded; at most "
            f"{MAX_METADATA_BYTES} are allowed (keep large data in the payload)"
        )
    normalized = msgspec.structs.replace(
        header, created_at=float(header.created_at), metadata=msgspec.json.decode(encoded)
    )
    return normalized, encoded


class Tracked:
    """A saga the journal tracks in memory: running ones, and ``compensation_failed`` ones.

    ``number`` is the storage's own key for the saga (the SQLite journal's ``saga_no``);
    ``stored`` is the in-memory journal's record of it.  ``epoch`` counts the times its state
    was rolled back after a write the storage refused (the SQLite journal's writes queued
    before a rollback carry the old epoch, and are refused too).
    """

    __slots__ = ("confirmed", "epoch", "header", "number", "state", "stored")

    def __init__(
        self,
        header: SagaHeader,
        state: SagaState,
        confirmed: bool,
        number: int = 0,
        stored: Any = None,
    ) -> None:
        self.header = header
        self.state = state
        self.confirmed = confirmed
        self.number = number
        self.stored = stored
        self.epoch = 0


class SagaIndex:
    """In-memory view of the sagas a journal must validate and list (shared by both journals).

    ``open`` holds unfinished sagas (``confirmed`` once their create is durable), ``attention``
    the ``compensation_failed`` ones.  Validation happens here, before a write is queued, so an
    impossible event never reaches storage.
    """

    __slots__ = ("attention", "open")

    def __init__(self) -> None:
        self.open: dict[str, Tracked] = {}
        self.attention: dict[str, Tracked] = {}

    def check_create(
        self, header: SagaHeader, event: SagaEvent, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        """Validate a create; the state after ``started`` and ``then``.  Raises if the id is
        tracked (or an event is invalid).  Changes nothing."""
        saga_id = header.saga_id
        if saga_id in self.open or saga_id in self.attention:
            raise JournalError(f"Saga {saga_id!r} already exists in the journal.")
        state = SagaState.new(header).advance(event)
        for later in then:
            state = state.advance(later)
            if state.phase in _FINISHED:
                raise SagaSequenceError(
                    saga_id=saga_id,
                    seq=later.seq,
                    problem="the events of a create must leave the saga unfinished",
                )
        return state

    def check_append(self, events: Iterable[SagaEvent]) -> dict[str, SagaState]:
        """Validate events in order; the new state of each saga touched.  Changes nothing."""
        pending: dict[str, SagaState] = {}
        for event in events:
            saga_id = getattr(event, "saga_id", None)
            state = pending.get(saga_id) if type(saga_id) is str else None
            if state is None:
                tracked = self.open.get(saga_id) if type(saga_id) is str else None
                if tracked is None or not tracked.confirmed:
                    if type(event) is not SagaEvent:
                        raise TypeError(f"expected a SagaEvent, got {type(event).__name__}")
                    raise SagaSequenceError(
                        saga_id=event.saga_id,
                        seq=event.seq,
                        problem=(
                            "the saga is not open in this journal (unknown, finished, or its "
                            "create has not returned yet)"
                        ),
                    )
                state = tracked.state
            pending[event.saga_id] = state.advance(event)
        return pending

    def advance_one(self, event: SagaEvent) -> Tracked:
        """Validate and record one event (the fast path of ``append``); its saga, advanced."""
        tracked = self.open.get(event.saga_id) if type(event) is SagaEvent else None
        if tracked is None or not tracked.confirmed:
            self.check_append((event,))  # raises the precise error
            raise AssertionError("unreachable")  # pragma: no cover
        state = tracked.state.advance(event)
        if state.phase in _FINISHED:
            self.commit({event.saga_id: state})
        else:
            tracked.state = state
        return tracked

    def advance_saga(self, events: Sequence[SagaEvent]) -> Tracked | None:
        """Validate and record events that all belong to one open saga (the fast path of
        ``append_many``); its saga, advanced.  ``None`` (nothing recorded) when the events
        are not all of one confirmed open saga: use :meth:`check_append` and :meth:`commit`.
        Raises like :meth:`check_append` (nothing recorded)."""
        if not events:
            return None
        first = events[0]
        if type(first) is not SagaEvent or type(first.saga_id) is not str:
            return None
        saga_id = first.saga_id
        tracked = self.open.get(saga_id)
        if tracked is None or not tracked.confirmed:
            return None
        state = tracked.state
        paired = state._advance_pair(first, events[1]) if len(events) == 2 else None
        if paired is not None:
            state = paired
        else:
            for event in events:
                if type(event) is not SagaEvent or event.saga_id != saga_id:
                    return None
                state = state.advance(event)
        if state.phase in _FINISHED:
            self.commit({saga_id: state})
        else:
            tracked.state = state
        return tracked

    def commit(self, states: Mapping[str, SagaState]) -> None:
        """Record validated states; finished sagas leave ``open``."""
        for saga_id, state in states.items():
            tracked = self.open[saga_id]
            tracked.state = state
            if state.phase in _FINISHED:
                del self.open[saga_id]
                if state.phase is _NEEDS_OPERATOR:
                    self.attention[saga_id] = tracked

    def roll_back(self, tracked: Tracked, prior: SagaState, epoch: int) -> None:
        """Undo a recorded write the storage refused: the saga's state is ``prior`` again
        (open again, if that write had ended it).  Only the first refused write of an epoch
        rolls back; the writes queued after it were refused with it."""
        if tracked.epoch != epoch:
            return
        tracked.epoch += 1
        tracked.state = prior
        saga_id = tracked.header.saga_id
        if self.attention.get(saga_id) is tracked:
            del self.attention[saga_id]
        self.open[saga_id] = tracked

    def summaries(self) -> list[SagaSummary]:
        """Summaries of confirmed open sagas and of attention sagas, oldest first."""
        out = [_summary(t) for t in (*self.open.values(), *self.attention.values()) if t.confirmed]
        out.sort(key=lambda s: (s.created_at, s.saga_id))
        return out

    def counts(self) -> tuple[int, int]:
        """(open, attention) counts."""
        return len(self.open), len(self.attention)


def _summary(tracked: Tracked) -> SagaSummary:
    header, state = tracked.header, tracked.state
    return SagaSummary(
        saga_id=header.saga_id,
        definition=header.definition,
        created_at=header.created_at,
        phase=state.phase,
        next_step=state.next_step,
        step_in_flight=state.step_in_flight,
        compensation_step=state.compensation_step,
        compensated=len(state.compensated),
        events=state.next_seq,
        updated_at=state.updated_at,
        metadata=header.metadata,
    )


def event_bytes(events: Iterable[SagaEvent]) -> int:
    """Data bytes carried by ``events`` (for ``bytes_written``)."""
    total = 0
    for event in events:
        total += len(event.data)
    return total


_finished_at = operator.attrgetter("finished_at")


# ------------------------------------------------------------------------ in-memory journal


class _Stored:
    __slots__ = ("events", "finished_at", "header", "outcome")

    def __init__(self, header: SagaHeader, events: list[SagaEvent]) -> None:
        self.header = header
        self.events = events
        self.finished_at: float | None = None
        self.outcome: SagaPhase | None = None


class MemoryJournal:
    """A :class:`Journal` kept in memory: the same semantics and bounds, no durability.

    Every call completes at once: it is a cancel point (a caller already cancelled raises
    ``Cancelled`` and nothing is written) but not a schedule point, so journaling costs a
    saga step about a microsecond.  :meth:`snapshot` returns what a restarted process would
    find, for crash-recovery tests.

    Args:
        retain_for: finished sagas older than this (seconds or ``timedelta``) are pruned;
            default 7 days.
        retain_last: at most this many finished sagas are kept; default 10,000.
        auto_prune: prune every ``max(1, retain_last // 10)`` finished sagas (default on).

    Example::

        async with MemoryJournal() as journal:
            await journal.create(header, SagaEvent(header.saga_id, 0, SagaEventKind.STARTED,
                                                   None, time.time()))
    """

    def __init__(
        self,
        *,
        retain_for: float | timedelta = DEFAULT_RETAIN_FOR,
        retain_last: int = DEFAULT_RETAIN_LAST,
        auto_prune: bool = True,
    ) -> None:
        self._retain_for = seconds(retain_for, "retain_for")
        self._retain_last = check_count(retain_last, "retain_last")
        self._auto_prune = bool(auto_prune)
        self._prune_every = max(1, self._retain_last // 10)
        self._index = SagaIndex()
        self._sagas: dict[str, _Stored] = {}
        self._finished: dict[str, _Stored] = {}  # finished, prunable (not attention)
        self._finished_since_prune = 0
        self._closed = False
        self._appends = 0
        self._rows = 0
        self._bytes = 0
        self._pruned = 0

    # -- writes

    async def create(
        self, header: SagaHeader, first_event: SagaEvent, *, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        """Store a new saga with its ``started`` event and the events ``then``; its state
        (see :class:`Journal`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        header, encoded = normalize_header(header)
        if header.saga_id in self._sagas:
            raise JournalError(f"Saga {header.saga_id!r} already exists in the journal.")
        state = self._index.check_create(header, first_event, then)
        stored = self._sagas[header.saga_id] = _Stored(header, [first_event, *then])
        self._index.open[header.saga_id] = Tracked(header, state, True, 0, stored)
        self._appends += 1
        self._rows += len(stored.events)
        self._bytes += len(header.payload) + len(encoded) + event_bytes(stored.events)
        return state

    async def append(self, event: SagaEvent) -> SagaState:
        """Append one event; the saga's new state (see :class:`Journal`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        state = self._index.advance_one(event).state
        stored = self._sagas[event.saga_id]
        stored.events.append(event)
        if state.phase in _FINISHED:
            self._finish(stored, state)
        self._appends += 1
        self._rows += 1
        self._bytes += len(event.data)
        return state

    async def append_many(self, events: Sequence[SagaEvent]) -> dict[str, SagaState]:
        """Append events atomically, in order: all are stored or, on error, none.  Returns the
        state of each saga touched."""
        await trio.lowlevel.checkpoint_if_cancelled()
        state = self.append_saga_nowait(events)
        if state is not None:
            return {state.saga_id: state}
        states = self._index.check_append(events)
        self._index.commit(states)
        sagas = self._sagas
        for event in events:
            sagas[event.saga_id].events.append(event)
        for saga_id, state in states.items():
            if state.phase in _FINISHED:
                self._finish(sagas[saga_id], state)
        self._appends += 1
        self._rows += len(events)
        self._bytes += event_bytes(events)
        return states

    def append_saga_nowait(self, events: Sequence[SagaEvent]) -> SagaState | None:
        """Append events that all belong to one saga, as :meth:`append_many` does, without its
        checkpoint (it never blocks, and it is not a cancel point); the saga's new state.

        ``None``, with nothing written, when the events are not all of one open saga (use
        :meth:`append_many`).  Raises like :meth:`append_many`.
        """
        if self._closed:
            self._check_open()
        if len(events) == 2:  # a step's completion and what follows: the common write
            done, then = events
            tracked = (
                self._index.open.get(done.saga_id)
                if type(done) is SagaEvent and type(done.saga_id) is str
                else None
            )
            if tracked is not None and tracked.confirmed:
                state = tracked.state._advance_pair(done, then)
                if state is not None:
                    stored: _Stored = tracked.stored
                    stored.events += events
                    if state.phase in _FINISHED:
                        self._index.commit({state.saga_id: state})
                        self._finish(stored, state)
                    else:
                        tracked.state = state
                    self._appends += 1
                    self._rows += 2
                    self._bytes += len(done.data) + len(then.data)
                    return state
        found = self._index.advance_saga(events)
        if found is None:
            return None
        state = found.state
        stored = found.stored
        stored.events += events
        if state.phase in _FINISHED:
            self._finish(stored, state)
        self._appends += 1
        self._rows += len(events)
        for event in events:
            self._bytes += len(event.data)
        return state

    def _finish(self, stored: _Stored, state: SagaState) -> None:
        stored.finished_at = state.updated_at
        stored.outcome = state.phase
        if state.phase is _NEEDS_OPERATOR:
            return
        self._finished[stored.header.saga_id] = stored
        self._finished_since_prune += 1
        if self._auto_prune and self._finished_since_prune >= self._prune_every:
            self._prune(self._retain_for, self._retain_last, time.time())

    # -- reads

    async def load_unfinished(self) -> list[tuple[SagaHeader, list[SagaEvent]]]:
        """Every resumable saga with its events, oldest first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        found = [self._sagas[saga_id] for saga_id in self._index.open]
        found.sort(key=lambda s: (s.header.created_at, s.header.saga_id))
        return [(s.header, list(s.events)) for s in found]

    async def get(self, saga_id: str) -> tuple[SagaHeader, list[SagaEvent]] | None:
        """One saga's header and events, or ``None``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        stored = self._sagas.get(saga_id)
        return None if stored is None else (stored.header, list(stored.events))

    async def list_unfinished(self) -> list[SagaSummary]:
        """Running and ``compensation_failed`` sagas, oldest first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        return self._index.summaries()

    # -- retention

    async def prune_finished(
        self,
        older_than: float | timedelta | None = None,
        keep_last: int | None = None,
        *,
        now: float | None = None,
    ) -> int:
        """Remove old finished sagas (see :class:`Journal`); ``now`` defaults to ``time.time()``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if now is not None and (isinstance(now, bool) or not math.isfinite(now)):
            raise ValueError(f"now must be a finite time, got {now!r}")
        age = self._retain_for if older_than is None else seconds(older_than, "older_than")
        keep = self._retain_last if keep_last is None else check_count(keep_last, "keep_last")
        return self._prune(age, keep, time.time() if now is None else now)

    def _prune(self, older_than: float, keep_last: int, now: float) -> int:
        self._finished_since_prune = 0
        cutoff = now - older_than
        # Newest first (every finished saga has its finished_at): the sagas older than the
        # cutoff are a suffix, so the doomed ones are everything past the kept prefix.
        by_age = sorted(self._finished.values(), key=_finished_at, reverse=True)
        kept = min(keep_last, len(by_age))
        while kept and (by_age[kept - 1].finished_at or 0.0) < cutoff:
            kept -= 1
        doomed = by_age[kept:]
        for stored in doomed:
            saga_id = stored.header.saga_id
            del self._finished[saga_id]
            del self._sagas[saga_id]
        self._pruned += len(doomed)
        return len(doomed)

    async def discard(self, saga_id: str) -> bool:
        """Remove one finished saga (see :class:`Journal`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if saga_id in self._index.open:
            raise JournalError(
                f"Saga {saga_id!r} is not finished; only finished sagas can be discarded."
            )
        stored = self._sagas.pop(saga_id, None)
        if stored is None:
            return False
        self._finished.pop(saga_id, None)
        self._index.attention.pop(saga_id, None)
        self._pruned += 1
        return True

    # -- the rest

    def snapshot(self) -> MemoryJournal:
        """A new journal with everything written so far, as a restarted process would see it.

        The state of every unfinished saga is folded again from its events.
        """
        copy = MemoryJournal(
            retain_for=self._retain_for, retain_last=self._retain_last, auto_prune=self._auto_prune
        )
        for saga_id, stored in self._sagas.items():
            new = _Stored(stored.header, list(stored.events))
            new.finished_at, new.outcome = stored.finished_at, stored.outcome
            copy._sagas[saga_id] = new
            if stored.outcome is None or stored.outcome is _NEEDS_OPERATOR:
                state = saga_state(stored.header, stored.events)
                tracked = Tracked(stored.header, state, True, 0, new)
                if stored.outcome is None:
                    copy._index.open[saga_id] = tracked
                else:
                    copy._index.attention[saga_id] = tracked
            else:
                copy._finished[saga_id] = new
        return copy

    def statistics(self) -> JournalStatistics:
        """A snapshot of the counters (every write call is one commit)."""
        sagas_open, attention = self._index.counts()
        return JournalStatistics(
            sagas_open=sagas_open,
            sagas_needing_attention=attention,
            appends=self._appends,
            rows=self._rows,
            commits=self._appends,
            rows_per_commit=self._rows / self._appends if self._appends else 0.0,
            queue_depth=0,
            bytes_written=self._bytes,
            sagas_pruned=self._pruned,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError("The in-memory journal is closed.")

    async def aclose(self) -> None:
        """Close the journal; later calls raise :class:`JournalError`.  Idempotent."""
        self._closed = True
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
