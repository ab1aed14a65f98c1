"""The bulkhead: limits, FIFO hand-over, cancellation, and a stateful comparison with a model
that keeps a plain list as its queue."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from actors._errors import BulkheadFull, ConfigError, ErrorCategory
from actors._policies._bulkhead import ENTERED, Bulkhead, BulkheadSettings
from tests.strategies_policies import bulkhead_settings


def test_defaults() -> None:
    """Ten running and twenty queued by default."""
    s = BulkheadSettings()
    assert (s.max_concurrent, s.max_queued) == (10, 20)
    assert Bulkhead().settings == s


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("max_concurrent", 0),
        ("max_concurrent", -1),
        ("max_concurrent", 1.5),
        ("max_concurrent", True),
        ("max_queued", -1),
        ("max_queued", "3"),
        ("max_queued", 10**9),
    ],
)
def test_bad_settings_name_the_field(field_name: str, value: object) -> None:
    """Invalid limits raise ConfigError with the field as path."""
    with pytest.raises(ConfigError) as info:
        BulkheadSettings(**{field_name: value})  # type: ignore[arg-type]
    assert info.value.path == field_name


def test_settings_decode_and_reject_unknown_keys() -> None:
    """BulkheadSettings decodes from JSON; a typo is an error."""
    s = msgspec.json.decode(b'{"max_concurrent": 2, "max_queued": 0}', type=BulkheadSettings)
    assert s == BulkheadSettings(max_concurrent=2, max_queued=0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"max_concurent": 2}', type=BulkheadSettings)


def test_enters_then_queues_then_rejects() -> None:
    """Slots first, then FIFO tickets, then BulkheadFull naming the limits."""
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=2, max_queued=1), name="render")
    assert bulkhead.try_enter() == ENTERED
    assert bulkhead.try_enter() == ENTERED
    ticket = bulkhead.try_enter()
    assert ticket > 0
    with pytest.raises(BulkheadFull) as info:
        bulkhead.try_enter()
    assert (info.value.max_concurrent, info.value.max_queued) == (2, 1)
    assert info.value.service == "render"
    assert info.value.category is ErrorCategory.RATE_LIMIT
    stats = bulkhead.statistics()
    assert (stats.running, stats.queued, stats.rejected) == (2, 1, 1)


def test_leave_hands_the_slot_to_the_oldest_ticket() -> None:
    """FIFO: the first queued ticket gets the first freed slot; nobody jumps the queue."""
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_queued=3))
    bulkhead.try_enter()
    first, second = bulkhead.try_enter(), bulkhead.try_enter()
    assert bulkhead.leave() == first
    assert bulkhead.running == 1  # the slot went to `first`, not back to the pool
    third = bulkhead.try_enter()  # still queued behind `second`
    assert third > second
    assert bulkhead.leave() == second
    assert bulkhead.leave() == third
    assert bulkhead.leave() is None
    assert (bulkhead.running, bulkhead.queued) == (0, 0)


def test_cancel_removes_a_waiter_or_reports_it_was_admitted() -> None:
    """cancel() is True for a queued ticket, False once leave() handed it a slot."""
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_queued=3))
    bulkhead.try_enter()
    first, second, third = (bulkhead.try_enter() for _ in range(3))
    assert bulkhead.cancel(second) is True
    assert bulkhead.cancel(second) is False  # already gone
    assert bulkhead.leave() == first
    assert bulkhead.cancel(first) is False  # admitted: the caller holds a slot
    assert bulkhead.leave() == third
    assert bulkhead.statistics().cancelled == 1


def test_misuse_raises_without_changing_state() -> None:
    """leave() without a slot, and cancel() of a foreign value, are errors."""
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_queued=0))
    with pytest.raises(RuntimeError, match="without a slot"):
        bulkhead.leave()
    with pytest.raises(ValueError, match="not a ticket"):
        bulkhead.cancel(7)
    with pytest.raises(ValueError, match="not a ticket"):
        bulkhead.cancel(ENTERED)
    with pytest.raises(TypeError):
        bulkhead.cancel("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Bulkhead({"max_concurrent": 1})  # type: ignore[arg-type]
    assert bulkhead.statistics().running == 0


def test_no_queue_rejects_at_once() -> None:
    """max_queued=0: a call that finds every slot busy is rejected."""
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_queued=0))
    bulkhead.try_enter()
    with pytest.raises(BulkheadFull):
        bulkhead.try_enter()


class BulkheadAgainstModel(RuleBasedStateMachine):
    """Random enters, leaves and cancels: the bulkhead matches a list-based model."""

    tickets = Bundle("tickets")

    @initialize(s=bulkhead_settings)
    def setup(self, s: BulkheadSettings) -> None:
        self.s = s
        self.bulkhead = Bulkhead(s)
        self.running = 0
        self.queue: list[int] = []
        self.admitted: list[int] = []
        self.counts = {"entered": 0, "admitted": 0, "rejected": 0, "cancelled": 0}

    @rule(target=tickets)
    def enter(self) -> object:
        if self.running < self.s.max_concurrent:
            assert self.bulkhead.try_enter() == ENTERED
            self.running += 1
            self.counts["entered"] += 1
            return multiple()
        if len(self.queue) < self.s.max_queued:
            ticket = self.bulkhead.try_enter()
            assert ticket > 0
            assert all(ticket > t for t in self.queue)
            self.queue.append(ticket)
            return ticket
        with pytest.raises(BulkheadFull):
            self.bulkhead.try_enter()
        self.counts["rejected"] += 1
        return multiple()

    @precondition(lambda self: self.running > 0)
    @rule()
    def leave(self) -> None:
        handed = self.bulkhead.leave()
        if self.queue:
            assert handed == self.queue.pop(0)
            self.admitted.append(handed)
            self.counts["admitted"] += 1
        else:
            assert handed is None
            self.running -= 1

    @rule(ticket=consumes(tickets))
    def cancel(self, ticket: int) -> None:
        expected = ticket in self.queue
        assert self.bulkhead.cancel(ticket) is expected
        if expected:
            self.queue.remove(ticket)
            self.counts["cancelled"] += 1

    @precondition(lambda self: self.running == 0)
    @rule()
    def leave_without_slot(self) -> None:
        with pytest.raises(RuntimeError):
            self.bulkhead.leave()

    @invariant()
    def agrees(self) -> None:
        stats = self.bulkhead.statistics()
        assert (stats.running, stats.queued) == (self.running, len(self.queue))
        assert stats.running <= self.s.max_concurrent
        assert stats.queued <= self.s.max_queued
        assert not self.queue or self.running == self.s.max_concurrent
        assert (stats.entered, stats.admitted_from_queue) == (
            self.counts["entered"],
            self.counts["admitted"],
        )
        assert (stats.rejected, stats.cancelled) == (
            self.counts["rejected"],
            self.counts["cancelled"],
        )


TestBulkheadAgainstModel = BulkheadAgainstModel.TestCase
TestBulkheadAgainstModel.settings = settings(max_examples=100, stateful_step_count=50)


def test_cancelling_half_of_a_long_queue_keeps_fifo_order() -> None:
    """Cancelling every other waiter of 200,000 leaves the rest in order."""
    bulkhead = Bulkhead(BulkheadSettings(max_concurrent=1, max_queued=200_000))
    bulkhead.try_enter()
    tickets = [bulkhead.try_enter() for _ in range(200_000)]
    for ticket in tickets[::2]:
        assert bulkhead.cancel(ticket)
    assert bulkhead.leave() == tickets[1]
    assert bulkhead.queued == 99_999
