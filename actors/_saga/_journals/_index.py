"""The bookkeeping every journal shares: argument checks, header normalisation, and
:class:`SagaIndex`, the in-memory index of tracked sagas that validates each write against the
saga's state before it is queued (so an impossible sequence never reaches storage) and keeps
the summaries, counts and retention order."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import msgspec

from actors._errors import ConfigError
from actors._saga._journals._records import (
    _FINISHED,
    _NEEDS_OPERATOR,
    MAX_METADATA_BYTES,
    JournalError,
    SagaEvent,
    SagaHeader,
    SagaSequenceError,
    SagaSummary,
)
from actors._saga._journals._state import SagaState


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
