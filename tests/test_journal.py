"""Saga journal: the state machine fold (the contract every journal implementation meets is in
tests/test_journal_contract.py)."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from actors._errors import AuraError, ErrorCategory
from actors._saga._journals._memory import MemoryJournal
from actors._saga._journals._records import (
    TRANSITIONS,
    Journal,
    JournalError,
    SagaEvent,
    SagaEventKind,
    SagaHeader,
    SagaPhase,
    SagaSequenceError,
)
from actors._saga._journals._state import SagaState, saga_state

K = SagaEventKind
P = SagaPhase
TERMINAL_KINDS = {K.COMPLETED, K.COMPENSATED, K.FAILED, K.COMPENSATION_FAILED, K.CANCELLED}


# --------------------------------------------------------------------------- reference model


class RefSaga:
    """An obviously-correct model of one saga's rules, written without the transition table."""

    def __init__(self) -> None:
        self.started = False
        self.ended: SagaEventKind | None = None
        self.results: list[bytes] = []
        self.in_flight: int | None = None
        self.starts = 0
        self.failed: int | None = None
        self.step_error = b""
        self.compensating = False
        self.comp_history: list[int] = []  # steps whose compensation was started, in order
        self.comp_cur: int | None = None
        self.comp_cur_failed = False
        self.comp_attempts = 0
        self.compensated: list[int] = []
        self.compensation_error = b""
        self.reason = b""
        self.events = 0

    def bound(self) -> int:
        return len(self.results) + (0 if self.failed is None else 1)

    def moves(self) -> set[tuple[SagaEventKind, int | None]]:
        if self.ended is not None:
            return set()
        if not self.started:
            return {(K.STARTED, None)}
        if not self.compensating:
            if self.in_flight is not None:
                i = self.in_flight
                return {(K.STEP_STARTED, i), (K.STEP_COMPLETED, i), (K.STEP_FAILED, i)}
            ends: set[tuple[SagaEventKind, int | None]] = {
                (K.COMPENSATING, None),
                (K.FAILED, None),
                (K.CANCELLED, None),
            }
            if self.failed is not None:
                return ends
            return ends | {(K.STEP_STARTED, len(self.results)), (K.COMPLETED, None)}
        if self.comp_cur is not None:
            j = self.comp_cur
            if self.comp_cur_failed:
                return {(K.COMPENSATION_STARTED, j), (K.COMPENSATION_FAILED, j)}
            return {
                (K.COMPENSATION_STARTED, j),
                (K.COMPENSATED_STEP, j),
                (K.COMPENSATION_FAILED_STEP, j),
                (K.COMPENSATION_FAILED, j),
            }
        limit = min(self.comp_history, default=self.bound())
        return {(K.COMPENSATION_STARTED, j) for j in range(limit)} | {
            (K.COMPENSATED, None),
            (K.COMPENSATION_FAILED, None),
        }

    def apply(self, kind: SagaEventKind, step: int | None, data: bytes) -> None:
        assert (kind, step) in self.moves()
        self.events += 1
        if kind is K.STARTED:
            self.started = True
        elif kind is K.STEP_STARTED:
            self.in_flight = step
            self.starts += 1
        elif kind is K.STEP_COMPLETED:
            self.results.append(data)
            self.in_flight = None
            self.starts = 0
        elif kind is K.STEP_FAILED:
            self.failed, self.in_flight, self.step_error = step, None, data
        elif kind is K.COMPENSATING:
            self.compensating, self.reason = True, data
        elif kind is K.COMPENSATION_STARTED:
            if self.comp_cur is None:
                assert step is not None
                self.comp_history.append(step)
                self.comp_cur, self.comp_attempts = step, 0
            self.comp_cur_failed = False
            self.comp_attempts += 1
        elif kind is K.COMPENSATED_STEP:
            assert step is not None
            self.compensated.append(step)
            self.comp_cur, self.comp_attempts = None, 0
        elif kind is K.COMPENSATION_FAILED_STEP:
            self.comp_cur_failed, self.compensation_error = True, data
        else:
            self.ended, self.reason = kind, data

    def phase(self) -> SagaPhase:
        if self.ended is not None:
            return SagaPhase(self.ended.value)
        if not self.started:
            return P.NEW
        if self.compensating:
            if self.comp_cur is None:
                return P.COMPENSATING
            return P.COMPENSATION_RETRYING if self.comp_cur_failed else P.COMPENSATION_IN_FLIGHT
        if self.in_flight is not None:
            return P.STEP_IN_FLIGHT
        return P.STEP_FAILED if self.failed is not None else P.RUNNING

    def expected(self) -> dict[str, Any]:
        return {
            "phase": self.phase(),
            "next_seq": self.events,
            "next_step": len(self.results),
            "step_in_flight": self.in_flight,
            "step_attempts": self.starts,
            "failed_step": self.failed,
            "results": tuple(self.results),
            "compensate_below": (
                min(self.comp_history, default=self.bound()) if self.compensating else None
            ),
            "compensation_step": self.comp_cur,
            "compensation_attempts": self.comp_attempts,
            "compensated": tuple(self.compensated),
            "step_error": self.step_error,
            "compensation_error": self.compensation_error,
            "reason": self.reason,
        }


def actual(state: SagaState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in RefSaga().expected()}


def header(saga_id: str = "s", created_at: float = 1000.0, **kw: Any) -> SagaHeader:
    return SagaHeader(saga_id, kw.pop("definition", "video"), created_at, b"input", **kw)


def ev(
    saga_id: str, seq: int, kind: SagaEventKind, step: int | None = None, data: bytes = b""
) -> SagaEvent:
    return SagaEvent(saga_id, seq, kind, step, 1000.0 + seq, data)


def fold(moves: list[tuple[SagaEventKind, int | None]], saga_id: str = "s") -> SagaState:
    events = [ev(saga_id, i, kind, step, b"d%d" % i) for i, (kind, step) in enumerate(moves)]
    return saga_state(header(saga_id), events)


def ref_events(ref_moves: list[tuple[SagaEventKind, int | None]]) -> list[SagaEvent]:
    return [ev("s", i, kind, step, b"d%d" % i) for i, (kind, step) in enumerate(ref_moves)]


class Recorder(RefSaga):
    """A reference saga that also remembers its moves."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[SagaEventKind, int | None]] = []

    def apply(self, kind: SagaEventKind, step: int | None, data: bytes) -> None:
        super().apply(kind, step, data)
        self.history.append((kind, step))


def draw_recorded(data: st.DataObject, max_events: int = 40) -> Recorder:
    ref = Recorder()
    for _ in range(data.draw(st.integers(0, max_events))):
        moves = sorted(ref.moves(), key=lambda m: (m[0].value, -1 if m[1] is None else m[1]))
        if not moves:
            break
        ending = [m for m in moves if m[0] in TERMINAL_KINDS]
        going = [m for m in moves if m[0] not in TERMINAL_KINDS]
        pool = ending if (not going or (ending and data.draw(st.integers(0, 9)) == 0)) else going
        kind, step = data.draw(st.sampled_from(pool))
        ref.apply(kind, step, b"d%d" % ref.events)
    return ref


# --------------------------------------------------------------------------------- the fold


@given(st.data())
def test_valid_sequences_fold_to_the_reference_state(data: st.DataObject) -> None:
    """Any valid event sequence folds to exactly the state the reference model predicts."""
    ref = draw_recorded(data)
    if not ref.history:
        with pytest.raises(SagaSequenceError, match="no events"):
            saga_state(header(), [])
        return
    state = saga_state(header(), ref_events(ref.history))
    assert actual(state) == ref.expected()
    assert state.finished == (ref.ended is not None)
    assert state.phase.resumable == (ref.ended is None)


@given(
    st.data(),
    st.sampled_from(list(SagaEventKind)),
    st.one_of(st.none(), st.integers(-1, 8)),
)
def test_an_event_is_accepted_exactly_when_the_reference_allows_it(
    data: st.DataObject, kind: SagaEventKind, step: int | None
) -> None:
    """After any valid prefix, a candidate event is accepted iff the reference model allows it."""
    ref = draw_recorded(data, max_events=25)
    state = SagaState.new(header())
    for event in ref_events(ref.history):
        state = state.advance(event)
    candidate = ev("s", ref.events, kind, step, b"x")
    if (kind, step) in ref.moves():
        after = state.advance(candidate)
        ref.apply(kind, step, b"x")
        assert actual(after) == ref.expected()
    else:
        with pytest.raises(SagaSequenceError) as info:
            state.advance(candidate)
        assert info.value.saga_id == "s"
        assert info.value.seq == ref.events


@given(st.data(), st.integers(-3, 3).filter(lambda d: d != 0))
def test_a_wrong_seq_is_rejected(data: st.DataObject, delta: int) -> None:
    """An event whose seq is not exactly the next one (a gap or a repeat) is rejected."""
    ref = draw_recorded(data, max_events=20)
    state = SagaState.new(header())
    for event in ref_events(ref.history):
        state = state.advance(event)
    for kind, step in ref.moves():
        with pytest.raises(SagaSequenceError, match="expected seq"):
            state.advance(ev("s", ref.events + delta, kind, step))


def _outcome(state: SagaState, event: Any) -> tuple[str, Any]:
    try:
        return "state", state.advance(event)
    except SagaSequenceError as exc:
        return "error", (exc.saga_id, exc.seq, exc.problem)


def _checked_outcome(state: SagaState, event: Any) -> tuple[str, Any]:
    try:
        return "state", state._advance_checked(event)
    except SagaSequenceError as exc:
        return "error", (exc.saga_id, exc.seq, exc.problem)


@settings(max_examples=300)
@given(
    st.data(),
    st.sampled_from(list(SagaEventKind)),
    st.one_of(st.none(), st.booleans(), st.integers(-1, 8)),
    st.sampled_from([0, 0, 0, -1, 1]),
    st.sampled_from(["s", "s", "other"]),
    st.one_of(st.floats(allow_nan=False), st.integers(0, 3), st.booleans(), st.just("soon")),
    st.one_of(st.binary(max_size=3), st.just("text")),
)
def test_the_fast_path_of_advance_matches_the_general_rules(
    data: st.DataObject,
    kind: SagaEventKind,
    step: Any,
    seq_delta: int,
    saga_id: str,
    at: Any,
    payload: Any,
) -> None:
    """`advance` (with its fast path for forward steps) gives the same state, or the same
    error, as the general fold for any event after any valid prefix."""
    ref = draw_recorded(data, max_events=25)
    state = SagaState.new(header())
    slow = SagaState.new(header())
    for event in ref_events(ref.history):
        state = state.advance(event)
        slow = slow._advance_checked(event)
        assert state == slow
    # Bias towards the fast path: often the move the reference expects next.
    moves = sorted(ref.moves(), key=lambda m: (m[0].value, -1 if m[1] is None else m[1]))
    use_move = data.draw(st.booleans())
    if moves and use_move:
        kind, step = data.draw(st.sampled_from(moves))
    candidate = SagaEvent(saga_id, ref.events + seq_delta, kind, step, at, payload)
    assert _outcome(state, candidate) == _checked_outcome(state, candidate)
    assert _outcome(state, "not an event") == _checked_outcome(state, "not an event")


def _pair_events(data: st.DataObject, ref: RefSaga) -> tuple[Any, Any]:
    """Two events after ``ref``'s history: mostly a step's completion and what follows it,
    sometimes perturbed in one field."""
    seq = ref.events
    i = ref.in_flight if ref.in_flight is not None else len(ref.results)
    done: dict[str, Any] = {
        "saga_id": "s",
        "seq": seq,
        "kind": K.STEP_COMPLETED,
        "step": i,
        "at": 1000.0 + seq,
        "data": b"r",
    }
    then: dict[str, Any] = {
        "saga_id": "s",
        "seq": seq + 1,
        "kind": data.draw(st.sampled_from([K.STEP_STARTED, K.COMPLETED])),
        "step": i + 1,
        "at": 1000.5 + seq,
        "data": b"",
    }
    if then["kind"] is K.COMPLETED:
        then["step"] = data.draw(st.sampled_from([None, None, i + 1]))
        then["data"] = data.draw(st.sampled_from([b"", b"why"]))
    bad = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-1, 9),
        st.sampled_from(list(SagaEventKind)),
        st.just("other"),
        st.just(1.5),
        st.just(b"x"),
    )
    if data.draw(st.integers(0, 2)) == 0:
        which = data.draw(st.sampled_from([done, then]))
        field = data.draw(st.sampled_from(sorted(which)))
        which[field] = data.draw(bad)
    return SagaEvent(**done), SagaEvent(**then)


@settings(max_examples=300)
@given(st.data())
def test_the_pair_fast_path_matches_two_folds(data: st.DataObject) -> None:
    """A step's completion and the next start (or the end), folded at once, give the state two
    general folds give; any other pair is left to the general fold."""
    if data.draw(st.booleans()):
        ref = draw_recorded(data, max_events=25)
    else:  # a saga going forward, with a step in flight (where the pair applies)
        ref = Recorder()
        ref.apply(K.STARTED, None, b"")
        for i in range(data.draw(st.integers(0, 4))):
            ref.apply(K.STEP_STARTED, i, b"")
            ref.apply(K.STEP_COMPLETED, i, b"d%d" % i)
        ref.apply(K.STEP_STARTED, len(ref.results), b"")
    state = saga_state(header(), ref_events(ref.history)) if ref.history else None
    if state is None:
        state = SagaState.new(header())
    done, then = _pair_events(data, ref)
    paired = state._advance_pair(done, then)
    first = _checked_outcome(state, done)
    if first[0] == "error":
        assert paired is None
        return
    second = _checked_outcome(first[1], then)
    if second[0] == "error":
        assert paired is None
        return
    if paired is not None:
        assert paired == second[1]
    else:  # only the common pair is built at once, and it must be
        assert not (
            state.phase is P.STEP_IN_FLIGHT
            and done.kind is K.STEP_COMPLETED
            and type(done.at) is float
            and type(then.at) is float
            and (then.kind, then.step)
            in {(K.STEP_STARTED, state.next_step + 1), (K.COMPLETED, None)}
        )


@settings(max_examples=200)
@given(st.data())
def test_the_in_memory_step_write_matches_the_general_append(data: st.DataObject) -> None:
    """The coordinator's per-step write on the in-memory journal (both events built by the
    journal from the state it returned) stores what ``append_many`` would store for the same
    two events and returns the state two general folds give; given any other state (stale,
    not in flight, finished, closed journal) or data that is not bytes, it writes nothing."""

    async def body() -> None:
        async with MemoryJournal() as journal:
            state = await journal.create(
                header(), ev("s", 0, K.STARTED), then=(ev("s", 1, K.STEP_STARTED, 0),)
            )
            stale: list[SagaState] = []
            for i in range(data.draw(st.integers(0, 4))):
                stale.append(state)
                state = (
                    await journal.append_many(
                        (
                            ev("s", state.next_seq, K.STEP_COMPLETED, i, b"r%d" % i),
                            ev("s", state.next_seq + 1, K.STEP_STARTED, i + 1),
                        )
                    )
                )["s"]
            last = data.draw(st.booleans())
            reply = data.draw(st.binary(max_size=8))
            given = state
            case = data.draw(st.sampled_from(["ok", "stale", "copy", "bytearray", "closed"]))
            if case == "stale" and stale:
                given = data.draw(st.sampled_from(stale))
            elif case == "copy":  # equal, but not the journal's own object
                given = msgspec.structs.replace(state)
            before = await journal.get("s")
            assert before is not None
            if case == "closed":
                await journal.aclose()
            written = journal._step_completed_nowait(
                given, bytearray(reply) if case == "bytearray" else reply, last
            )
            if case != "ok" and not (case == "stale" and not stale):
                assert written is None
                if case != "closed":
                    assert await journal.get("s") == before  # nothing written
                return
            assert written is not None
            after = await journal.get("s")
            assert after is not None
            done, then = after[1][len(before[1]) :]
            assert (done.kind, done.step, done.data) == (K.STEP_COMPLETED, state.next_step, reply)
            if last:
                assert (then.kind, then.step, then.data) == (K.COMPLETED, None, b"")
            else:
                assert (then.kind, then.step) == (K.STEP_STARTED, state.next_step + 1)
            assert (done.seq, then.seq) == (state.next_seq, state.next_seq + 1)
            assert written == state.advance(done).advance(then)
            assert written == saga_state(after[0], after[1])
            assert ("s" in {h.saga_id for h, _ in await journal.load_unfinished()}) is not last

    trio.run(body)


Moves = list[tuple[SagaEventKind, int | None]]


def _path_to(phase: SagaPhase) -> Moves:
    start: Moves = [(K.STARTED, None)]
    in_flight = [*start, (K.STEP_STARTED, 0)]
    comp = [*in_flight, (K.STEP_COMPLETED, 0), (K.COMPENSATING, None)]
    comp_flight = [*comp, (K.COMPENSATION_STARTED, 0)]
    paths: dict[SagaPhase, Moves] = {
        P.NEW: [],
        P.RUNNING: start,
        P.STEP_IN_FLIGHT: in_flight,
        P.STEP_FAILED: [*in_flight, (K.STEP_FAILED, 0)],
        P.COMPENSATING: comp,
        P.COMPENSATION_IN_FLIGHT: comp_flight,
        P.COMPENSATION_RETRYING: [*comp_flight, (K.COMPENSATION_FAILED_STEP, 0)],
        P.COMPLETED: [*start, (K.COMPLETED, None)],
        P.COMPENSATED: [*comp, (K.COMPENSATED, None)],
        P.FAILED: [*start, (K.FAILED, None)],
        P.COMPENSATION_FAILED: [*comp, (K.COMPENSATION_FAILED, None)],
        P.CANCELLED: [*start, (K.CANCELLED, None)],
    }
    return paths[phase]


@pytest.mark.parametrize("phase", list(SagaPhase))
@pytest.mark.parametrize("kind", list(SagaEventKind))
def test_pairs_missing_from_the_transition_table_are_rejected(
    phase: SagaPhase, kind: SagaEventKind
) -> None:
    """A (phase, kind) pair the table does not list is rejected whatever the step number."""
    moves = _path_to(phase)
    state = SagaState.new(header())
    for event in ref_events(moves):
        state = state.advance(event)
    assert state.phase is phase
    if (phase, kind) in TRANSITIONS:
        return
    for step in (None, 0, 1):
        with pytest.raises(SagaSequenceError, match="cannot follow phase"):
            state.advance(ev("s", len(moves), kind, step))


def test_finished_phases_are_exactly_those_with_no_outgoing_transition() -> None:
    """The phases that end a saga are the ones the table gives no way out of."""
    with_exits = {phase for phase, _ in TRANSITIONS}
    assert {p for p in SagaPhase if p.finished} == set(SagaPhase) - with_exits
    assert {p for p in SagaPhase if p.finished} == {
        P.COMPLETED,
        P.COMPENSATED,
        P.FAILED,
        P.COMPENSATION_FAILED,
        P.CANCELLED,
    }
    assert not P.NEW.resumable
    assert not P.NEW.finished


def test_compensations_must_run_in_strictly_decreasing_step_order() -> None:
    """After compensating step 1, compensating step 2 (or step 1 again) is rejected."""
    forward: Moves = [(K.STARTED, None)]
    for i in range(3):
        forward += [(K.STEP_STARTED, i), (K.STEP_COMPLETED, i)]
    base = [*forward, (K.COMPENSATING, None), (K.COMPENSATION_STARTED, 1), (K.COMPENSATED_STEP, 1)]
    state = fold(base)
    assert state.compensate_below == 1
    assert state.compensated == (1,)
    for step in (1, 2, 3):
        with pytest.raises(SagaSequenceError, match="out of order"):
            state.advance(ev("s", len(base), K.COMPENSATION_STARTED, step))
    assert state.advance(ev("s", len(base), K.COMPENSATION_STARTED, 0)).compensation_step == 0


def test_the_failed_step_may_be_compensated_but_not_steps_never_started() -> None:
    """Compensation may cover the failed step (its effect is uncertain) but nothing above it."""
    moves = [
        (K.STARTED, None),
        (K.STEP_STARTED, 0),
        (K.STEP_COMPLETED, 0),
        (K.STEP_STARTED, 1),
        (K.STEP_FAILED, 1),
        (K.COMPENSATING, None),
    ]
    state = fold(moves)
    assert state.failed_step == 1
    assert state.compensate_below == 2
    with pytest.raises(SagaSequenceError):
        state.advance(ev("s", len(moves), K.COMPENSATION_STARTED, 2))
    assert state.advance(ev("s", len(moves), K.COMPENSATION_STARTED, 1)).phase is (
        P.COMPENSATION_IN_FLIGHT
    )


def test_resending_a_step_counts_attempts_and_keeps_it_in_flight() -> None:
    """A repeated step_started for the step in flight (a re-send) counts attempts."""
    state = fold([(K.STARTED, None), (K.STEP_STARTED, 0), (K.STEP_STARTED, 0)])
    assert (state.phase, state.step_in_flight, state.step_attempts) == (
        P.STEP_IN_FLIGHT,
        0,
        2,
    )
    with pytest.raises(SagaSequenceError, match="must name step 0"):
        state.advance(ev("s", 3, K.STEP_STARTED, 1))


def test_a_compensation_retry_and_the_final_failure_name_the_step() -> None:
    """compensation_failed_step then a retry; compensation_failed must name the same step."""
    moves = [
        (K.STARTED, None),
        (K.STEP_STARTED, 0),
        (K.STEP_COMPLETED, 0),
        (K.COMPENSATING, None),
        (K.COMPENSATION_STARTED, 0),
        (K.COMPENSATION_FAILED_STEP, 0),
        (K.COMPENSATION_STARTED, 0),
        (K.COMPENSATION_FAILED_STEP, 0),
    ]
    state = fold(moves)
    assert state.phase is P.COMPENSATION_RETRYING
    assert state.compensation_attempts == 2
    assert state.compensation_error == b"d7"
    with pytest.raises(SagaSequenceError, match="must name step 0"):
        state.advance(ev("s", len(moves), K.COMPENSATION_FAILED, None))
    end = state.advance(ev("s", len(moves), K.COMPENSATION_FAILED, 0, b"gave up"))
    assert end.phase is P.COMPENSATION_FAILED
    assert end.finished
    assert end.reason == b"gave up"


def test_malformed_events_are_rejected_with_the_field_named() -> None:
    """Events with the wrong saga, kind type, data type or a missing step are rejected."""
    state = fold([(K.STARTED, None)])
    cases: list[tuple[Any, str]] = [
        (ev("other", 1, K.STEP_STARTED, 0), "belongs to saga 'other'"),
        (SagaEvent("s", 1, "step_started", 0, 1.0), "not a SagaEventKind"),  # type: ignore[arg-type]
        (SagaEvent("s", 1, K.STEP_STARTED, 0, 1.0, "x"), "must be bytes"),  # type: ignore[arg-type]
        (ev("s", 1, K.STEP_STARTED, None), "needs a step number"),
        (ev("s", 1, K.COMPLETED, 3), "takes no step"),
        ("not an event", "not a SagaEvent"),
    ]
    for event, text in cases:
        with pytest.raises(SagaSequenceError, match=text):
            state.advance(event)


def test_sequence_errors_are_journal_errors_and_value_errors() -> None:
    """SagaSequenceError is a JournalError (an AuraError) and a ValueError, INVALID_STATE."""
    with pytest.raises(SagaSequenceError) as info:
        saga_state(header(), [ev("s", 0, K.COMPLETED)])
    error = info.value
    assert isinstance(error, JournalError)
    assert isinstance(error, AuraError)
    assert isinstance(error, ValueError)
    assert error.category is ErrorCategory.INVALID_STATE
    assert "Saga 's'" in str(error)


def test_next_event_numbers_events_and_records_are_tagged_msgspec_structs() -> None:
    """next_event fills in saga and seq; records round-trip through msgspec with their tag."""
    state = SagaState.new(header())
    first = state.next_event(K.STARTED, at=5.0)
    assert (first.saga_id, first.seq, first.kind, first.at) == ("s", 0, K.STARTED, 5.0)
    state = state.advance(first)
    second = state.next_event(K.STEP_STARTED, 0, b"msg")
    assert second.seq == 1
    assert math.isfinite(second.at)
    for record in (first, header(metadata={"a": 1})):
        blob = msgspec.msgpack.encode(record)
        assert msgspec.msgpack.decode(blob, type=SagaEvent | SagaHeader) == record
    assert b"SagaEvent" in msgspec.json.encode(first)


class SagaMachine(RuleBasedStateMachine):
    """Advance a SagaState one random event at a time, beside the reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.ref = RefSaga()
        self.state = SagaState.new(header())

    @rule(
        kind=st.sampled_from(list(SagaEventKind)),
        step=st.one_of(st.none(), st.integers(0, 6)),
        data=st.binary(max_size=3),
    )
    def send(self, kind: SagaEventKind, step: int | None, data: bytes) -> None:
        event = ev("s", self.ref.events, kind, step, data)
        if (kind, step) in self.ref.moves():
            self.state = self.state.advance(event)
            self.ref.apply(kind, step, data)
        else:
            before = self.state
            with pytest.raises(SagaSequenceError):
                self.state.advance(event)
            assert self.state == before

    @rule(data=st.data())
    def valid(self, data: st.DataObject) -> None:
        moves = sorted(self.ref.moves(), key=lambda m: (m[0].value, m[1] or 0))
        if moves:
            kind, step = data.draw(st.sampled_from(moves))
            self.state = self.state.advance(ev("s", self.ref.events, kind, step))
            self.ref.apply(kind, step, b"")

    @invariant()
    def matches_reference(self) -> None:
        assert actual(self.state) == self.ref.expected()


TestSagaMachine = SagaMachine.TestCase
TestSagaMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# ------------------------------------------------------------------ a coordinator's writes


class Driver:
    """Writes one saga's events through a journal, tracking its state like a coordinator."""

    def __init__(
        self, journal: Journal, saga_id: str, created_at: float = 1000.0, at: float | None = None
    ) -> None:
        self.journal = journal
        self.header = header(saga_id, created_at, metadata={"user": "u1", "n": [1, 2]})
        self.state = SagaState.new(self.header)
        self.at = at  # every event's `at`; default 2000.0 + seq

    def event(self, kind: SagaEventKind, step: int | None = None, data: bytes = b"") -> SagaEvent:
        at = 2000.0 + self.state.next_seq if self.at is None else self.at
        event = self.state.next_event(kind, step, data, at=at)
        self.state = self.state.advance(event)
        return event

    async def start(self) -> Driver:
        returned = await self.journal.create(self.header, self.event(K.STARTED))
        assert returned == self.state
        return self

    async def go(self, kind: SagaEventKind, step: int | None = None, data: bytes = b"") -> None:
        returned = await self.journal.append(self.event(kind, step, data))
        assert returned == self.state  # the journal's fold is the coordinator's state

    async def steps(self, count: int) -> None:
        for _ in range(count):
            i = self.state.next_step
            await self.go(K.STEP_STARTED, i)
            await self.go(K.STEP_COMPLETED, i, b"reply %d" % i)

    async def finish(self, kind: SagaEventKind = K.COMPLETED) -> None:
        await self.go(kind)
