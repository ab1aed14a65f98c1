"""The state machine of one saga: :class:`SagaState`, folded from its events and advanced by
each new one, and :func:`saga_state`, which folds a whole sequence (see the theory of
operation in ``actors._saga._journals._records`` and its table ``TRANSITIONS``)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from actors._saga._journals._records import (
    _COMPENSATED_STEP,
    _COMPENSATING,
    _COMPENSATION_FAILED,
    _COMPENSATION_FAILED_STEP,
    _COMPENSATION_STARTED,
    _COMPLETED,
    _DONE,
    _FINISHED,
    _IN_COMPENSATION,
    _NEW,
    _P,
    _RUNNING,
    _STARTED,
    _STEP_COMPLETED,
    _STEP_FAILED,
    _STEP_IN_FLIGHT,
    _STEP_STARTED,
    STEP_KINDS,
    TRANSITIONS,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaSequenceError,
)


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

    def _step_completed(self, data: bytes, at: float, last: bool) -> SagaState:
        """The state after the step in flight completed with ``data`` at ``at``, and the next
        step started (the saga completed, if ``last``): what :meth:`_advance_pair` returns for
        those two events, built without checking them.

        Only for a caller that builds the two events from this very state (the in-memory
        journal's ``_step_completed_nowait``): phase ``step_in_flight``, ``data`` bytes, ``at``
        a finite float.  Nothing is raised or checked here.
        """
        if last:
            phase: SagaPhase = _DONE
            following: int | None = None
            attempts = 0
            reason = b""
        else:
            phase = _STEP_IN_FLIGHT
            following = self.next_step + 1
            attempts = 1
            reason = self.reason
        return SagaState(
            self.saga_id,
            self.definition,
            phase,
            self.next_seq + 2,
            self.next_step + 1,
            following,
            attempts,
            self.failed_step,
            self.results + (data,),  # noqa: RUF005 (a quarter of the time of unpacking)
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
