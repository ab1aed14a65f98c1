"""The in-memory journal: :class:`MemoryJournal`, for tests and for sagas that need not
survive the process.  It keeps every promise of the :class:`~actors.Journal` protocol except
durability; its writes never block."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Self

import trio

from actors._saga._journals._index import (
    SagaIndex,
    Tracked,
    _finished_at,
    check_count,
    event_bytes,
    normalize_header,
    seconds,
)
from actors._saga._journals._records import (
    _COMPLETED,
    _FINISHED,
    _NEEDS_OPERATOR,
    _STEP_COMPLETED,
    _STEP_IN_FLIGHT,
    _STEP_STARTED,
    DEFAULT_RETAIN_FOR,
    DEFAULT_RETAIN_LAST,
    JournalError,
    JournalStatistics,
    SagaEvent,
    SagaHeader,
    SagaPhase,
    SagaSummary,
)
from actors._saga._journals._state import SagaState, saga_state


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

    def _step_completed_nowait(self, state: SagaState, data: bytes, last: bool) -> SagaState | None:
        """The saga coordinator's per-step write, built here: the step in flight of ``state``
        completed with the reply ``data``, and the next step started (or, if ``last``, the
        saga completed), in one append as :meth:`append_saga_nowait` would make it; the
        saga's new state.

        ``state`` must be the very state this journal last returned for the saga: every field
        of both events then follows from it (``seq``, ``step``, the saga's id; ``at`` is read
        here), so they need no validation again.  ``None``, with nothing written, for any
        other state, or when the journal is closed (use :meth:`append_many`, which says why).
        Not a cancel point (the caller checks cancellation first).
        """
        tracked = self._index.open.get(state.saga_id)
        if (
            tracked is None
            or tracked.state is not state
            or not tracked.confirmed
            or self._closed
            or state.phase is not _STEP_IN_FLIGHT
            or type(data) is not bytes
        ):
            return None
        saga_id = state.saga_id
        seq = state.next_seq
        at = time.time()
        done = SagaEvent(saga_id, seq, _STEP_COMPLETED, state.step_in_flight, at, data)
        if last:
            then = SagaEvent(saga_id, seq + 1, _COMPLETED, None, at)
        else:
            then = SagaEvent(saga_id, seq + 1, _STEP_STARTED, state.next_step + 1, at)
        new = state._step_completed(data, at, last)
        stored: _Stored = tracked.stored
        stored.events += (done, then)
        if last:
            self._index.commit({saga_id: new})
            self._finish(stored, new)
        else:
            tracked.state = new
        self._appends += 1
        self._rows += 2
        self._bytes += len(data)
        return new

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
