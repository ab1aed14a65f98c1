"""Idempotency table: against a reference model, plus conflicts, outcomes, bounds, fingerprints."""

from __future__ import annotations

import datetime
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, rule

from actors._errors import ConfigError, IdempotencyConflict
from actors._policies._idempotency import (
    Completed,
    IdempotencySettings,
    IdempotencyTable,
    IdempotencyTableFull,
    InFlight,
    Joined,
    Started,
    fingerprint,
)
from tests.strategies_retry import small_time_steps

FP_A = fingerprint({"order": 1})
FP_B = fingerprint({"order": 2})


class IdempotencyModel:
    """The obviously-correct table: two dicts, swept eagerly, evicting the oldest completion."""

    def __init__(self, settings: IdempotencySettings) -> None:
        self.ttl = settings.ttl
        self.max_records = settings.max_records
        self.inflight: dict[str, int] = {}
        # key -> (fingerprint, value, failed, expiry); dict order is completion order.
        self.done: dict[str, tuple[int, object, bool, float]] = {}
        self.latest = -math.inf

    def sweep(self, now: float) -> None:
        self.done = {k: v for k, v in self.done.items() if v[3] > now}

    def begin(self, key: str, fp: int, now: float) -> tuple[str, Any]:
        self.sweep(now)
        if key in self.done:
            stored, value, failed, _ = self.done[key]
            return ("conflict", None) if stored != fp else ("completed", (value, failed))
        if key in self.inflight:
            return ("conflict", None) if self.inflight[key] != fp else ("joined", None)
        if len(self.inflight) + len(self.done) >= self.max_records:
            if not self.done:
                return ("full", None)
            del self.done[next(iter(self.done))]
        self.inflight[key] = fp
        return ("started", None)

    def finish(self, key: str, now: float, outcome: tuple[object, bool] | None) -> None:
        fp = self.inflight.pop(key)
        if outcome is not None:
            self.latest = max(self.latest, now)
            self.done[key] = (fp, outcome[0], outcome[1], self.latest + self.ttl)


class IdempotencyMachine(RuleBasedStateMachine):
    """IdempotencyTable answers every call exactly as IdempotencyModel does."""

    entries = Bundle("entries")

    @initialize(
        max_records=st.integers(min_value=1, max_value=4),
        ttl=st.sampled_from([0.5, 1.0, 2.5, 10.0]),
        origin=st.sampled_from([0.0, -1000.0, 100000.25]),
    )
    def setup(self, max_records: int, ttl: float, origin: float) -> None:
        settings = IdempotencySettings(ttl=ttl, max_records=max_records)
        self.table = IdempotencyTable(settings)
        self.model = IdempotencyModel(settings)
        self.now = origin
        self.counter = 0
        self.live: dict[str, InFlight] = {}

    @rule(step=small_time_steps)
    def advance(self, step: float) -> None:
        self.now += step

    @rule(target=entries, key=st.sampled_from("abcde"), fp=st.sampled_from([FP_A, FP_B]))
    def begin(self, key: str, fp: int) -> InFlight | None:
        expected, detail = self.model.begin(key, fp, self.now)
        if expected == "conflict":
            with pytest.raises(IdempotencyConflict):
                self.table.begin(key, fp, self.now)
            return None
        if expected == "full":
            with pytest.raises(IdempotencyTableFull):
                self.table.begin(key, fp, self.now)
            return None
        result = self.table.begin(key, fp, self.now)
        if expected == "completed":
            assert isinstance(result, Completed)
            value, failed = detail
            assert result.value is value
            assert result.failed is failed
            return None
        if expected == "joined":
            assert isinstance(result, Joined)
            assert result.entry is self.live[key]
            return None
        assert isinstance(result, Started)
        assert result.entry.key == key
        assert result.entry.fingerprint == fp
        self.live[key] = result.entry
        return result.entry

    @rule(key=st.sampled_from("abcde"), fp=st.sampled_from([FP_A, FP_B]))
    def peek(self, key: str, fp: int) -> None:
        """``holds`` and ``peek`` answer as ``begin`` would, and admit, join or drop nothing
        (the later rules see the table unchanged)."""
        self.model.sweep(self.now)
        stats = self.table.statistics()
        done, inflight = self.model.done.get(key), self.model.inflight.get(key)
        assert self.table.holds(key, self.now) is (done is not None or inflight is not None)
        held = done[0] if done is not None else inflight
        if held is not None and held != fp:
            with pytest.raises(IdempotencyConflict):
                self.table.peek(key, fp, self.now)
            assert self.table.statistics().conflicts == stats.conflicts + 1
            return
        result = self.table.peek(key, fp, self.now)
        after = self.table.statistics()
        if done is not None:
            assert isinstance(result, Completed)
            assert (result.value, result.failed) == (done[1], done[2])
            assert after.hits == stats.hits + 1
        elif inflight is not None:
            assert result is self.live[key]
        else:
            assert result is None
        assert (after.misses, after.joins, after.records) == (
            stats.misses,
            stats.joins,
            stats.records,
        )

    def _finish(self, entry: InFlight | None, outcome: str) -> None:
        if entry is None:
            return
        if self.live.get(entry.key) is not entry:
            with pytest.raises(ValueError, match="not in flight"):
                self.table.abandon(entry)
            return
        del self.live[entry.key]
        self.counter += 1
        token = ("reply", self.counter)
        if outcome == "value":
            assert self.table.complete(entry, self.now, token) is entry.waiters
            self.model.finish(entry.key, self.now, (token, False))
        elif outcome == "error":
            error = ValueError(self.counter)
            self.table.fail(entry, self.now, error, transient=False)
            self.model.finish(entry.key, self.now, (error, True))
        elif outcome == "transient":
            self.table.fail(entry, self.now, TimeoutError(), transient=True)
            self.model.finish(entry.key, self.now, None)
        else:
            self.table.abandon(entry)
            self.model.finish(entry.key, self.now, None)

    @rule(
        entry=consumes(entries), outcome=st.sampled_from(["value", "error", "transient", "abandon"])
    )
    def finish(self, entry: InFlight | None, outcome: str) -> None:
        self._finish(entry, outcome)

    @rule()
    def counts_match_after_sweeping(self) -> None:
        self.table.expire(self.now)
        self.model.sweep(self.now)
        stats = self.table.statistics()
        assert stats.in_flight == len(self.model.inflight)
        assert stats.completed == len(self.model.done)
        assert len(self.table) == stats.records <= stats.max_records
        # White-box: the expiry/eviction order is the completion order of the live records.
        assert self.table._completed_keys() == list(self.model.done)


TestIdempotencyMachine = IdempotencyMachine.TestCase


def new_table(**kwargs: Any) -> IdempotencyTable:
    return IdempotencyTable(IdempotencySettings(**kwargs))


def start(table: IdempotencyTable, key: str, fp: int = FP_A, now: float = 0.0) -> InFlight:
    result = table.begin(key, fp, now)
    assert isinstance(result, Started)
    return result.entry


def test_a_completed_call_is_replayed() -> None:
    """After complete(), begin() with the same key and request returns the cached reply."""
    table = new_table()
    reply = object()
    table.complete(start(table, "k"), 1.0, reply)
    assert table.begin("k", FP_A, 2.0) == Completed(reply, failed=False)
    assert table.statistics().hits == 1


def test_a_second_caller_joins_the_call_in_flight() -> None:
    """The same key while in flight joins: same entry, joins counted, waiters handed back."""
    table = new_table()
    entry = start(table, "k")
    joined = table.begin("k", FP_A, 0.5)
    assert joined == Joined(entry)
    entry.waiters.append("waiter-1")
    assert entry.joins == 1
    assert table.complete(entry, 1.0, "reply") == ["waiter-1"]


@pytest.mark.parametrize("completed", [False, True])
def test_the_same_key_with_a_different_request_is_a_conflict(completed: bool) -> None:
    """A different fingerprint under a held key raises IdempotencyConflict naming the key."""
    table = new_table()
    entry = start(table, "order-7")
    if completed:
        table.complete(entry, 0.0, "ok")
    with pytest.raises(IdempotencyConflict, match="order-7") as info:
        table.begin("order-7", FP_B, 0.0)
    assert info.value.key == "order-7"
    assert table.statistics().conflicts == 1


def test_non_transient_failures_are_cached_and_transient_ones_are_not() -> None:
    """A validation-like error is replayed; after a transient one the key runs again."""
    table = new_table()
    error = ValueError("bad request")
    table.fail(start(table, "a"), 0.0, error, transient=False)
    assert table.begin("a", FP_A, 1.0) == Completed(error, failed=True)
    table.fail(start(table, "b"), 0.0, TimeoutError(), transient=True)
    assert isinstance(table.begin("b", FP_A, 1.0), Started)


def test_an_abandoned_call_can_be_started_again() -> None:
    """abandon() forgets the entry and returns its waiters."""
    table = new_table()
    entry = start(table, "k")
    entry.waiters.append("w")
    assert table.abandon(entry) == ["w"]
    assert isinstance(table.begin("k", FP_B, 0.0), Started)


def test_records_expire_after_ttl() -> None:
    """A completed record is replayed until ttl has passed since completion, then runs again."""
    table = new_table(ttl=60.0)
    table.complete(start(table, "k"), 10.0, "reply")
    assert isinstance(table.begin("k", FP_A, 69.9), Completed)
    assert isinstance(table.begin("k", FP_B, 70.0), Started)
    assert table.statistics().expirations == 1


def test_a_full_table_evicts_the_oldest_completed_record() -> None:
    """At max_records a new key evicts the oldest completion, never an in-flight call."""
    table = new_table(max_records=3)
    running = start(table, "running", now=0.0)
    table.complete(start(table, "old"), 1.0, "old")
    table.complete(start(table, "new"), 2.0, "new")
    assert isinstance(table.begin("fresh", FP_A, 3.0), Started)
    assert table.statistics().evictions == 1
    assert table.begin("new", FP_A, 3.0) == Completed("new", failed=False)
    assert table.begin("running", FP_A, 3.0) == Joined(running)
    assert isinstance(table.begin("old", FP_A, 3.0), Started)  # it was the one evicted


def test_eviction_order_is_completion_order() -> None:
    """The record evicted first is the one completed first, whatever the start order."""
    table = new_table(max_records=2)
    first = start(table, "first", now=0.0)
    second = start(table, "second", now=0.0)
    table.complete(second, 1.0, "2")
    table.complete(first, 2.0, "1")
    start(table, "third", now=3.0)
    assert isinstance(table.begin("first", FP_A, 3.0), Completed)
    assert table.statistics().evictions == 1
    assert table.statistics().completed == 1


@settings(max_examples=60, deadline=None)
@given(
    max_records=st.integers(1, 80),
    ttl=st.sampled_from([0.5, 3.0, 1000.0]),
    ops=st.lists(st.tuples(st.integers(0, 120), st.floats(0.0, 0.4)), min_size=300, max_size=400),
)
def test_long_runs_keep_every_outcome_at_its_key(
    max_records: int, ttl: float, ops: list[tuple[int, float]]
) -> None:
    """Hundreds of completions, expiries and evictions (the record lists are compacted on
    the way): every key still held answers its own outcome, and only the newest completions
    are held, in completion order."""
    table = new_table(max_records=max_records, ttl=ttl)
    now = 0.0
    outcome: dict[str, tuple[object, float]] = {}  # key -> (value, completed at)
    order: list[str] = []
    for n, (i, step) in enumerate(ops):
        now += step
        key = f"k{i}"
        result = table.begin(key, FP_A, now)
        if isinstance(result, Completed):
            assert result.value is outcome[key][0]
            continue
        assert isinstance(result, Started)
        value = ("v", n)
        table.complete(result.entry, now, value)
        outcome[key] = (value, now)
        order = [k for k in order if k != key] + [key]
    # What the table holds: the newest completions (at most max_records) not expired.
    held = [k for k in order if math.ceil(outcome[k][1] * 1000.0 + ttl * 1000.0) > now * 1000.0]
    held = held[-max_records:]
    table.expire(now)
    assert table._completed_keys() == held
    assert table._head <= len(table._keys) <= 2 * len(held) + 32
    for key in held:
        assert table.begin(key, FP_A, now) == Completed(outcome[key][0], False)


def test_a_table_full_of_calls_in_flight_refuses_new_keys() -> None:
    """When every entry is in flight a new key raises IdempotencyTableFull; joins still work."""
    table = new_table(max_records=2)
    entry = start(table, "a")
    start(table, "b")
    with pytest.raises(IdempotencyTableFull, match="all 2 entries are calls in flight") as info:
        table.begin("c", FP_A, 0.0)
    assert info.value.transient
    assert table.begin("a", FP_A, 0.0) == Joined(entry)
    assert table.statistics().rejections == 1


def test_finishing_an_entry_twice_is_refused() -> None:
    """complete(), fail() or abandon() on an entry no longer in flight raises ValueError."""
    table = new_table()
    entry = start(table, "k")
    table.complete(entry, 0.0, "ok")
    with pytest.raises(ValueError, match="not in flight"):
        table.complete(entry, 0.0, "again")
    with pytest.raises(ValueError, match="not in flight"):
        table.fail(entry, 0.0, ValueError(), transient=False)
    assert table.begin("k", FP_A, 0.0) == Completed("ok", failed=False)


def test_bad_keys_and_fingerprints_are_refused_without_changing_state() -> None:
    """A non-str key or an out-of-range fingerprint raises and admits nothing."""
    table = new_table()
    with pytest.raises(TypeError, match="must be a str"):
        table.begin(42, FP_A, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsigned 128-bit"):
        table.begin("k", -1, 0.0)
    with pytest.raises(TypeError, match="must be an int"):
        table.begin("k", b"fp", 0.0)  # type: ignore[arg-type]
    assert len(table) == 0


class Order(msgspec.Struct):
    item: str
    quantity: int


def test_fingerprints_ignore_dict_order_and_see_payload_and_type() -> None:
    """Equal requests match regardless of key order; other payloads and types differ."""
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint(Order("x", 1)) == fingerprint(Order("x", 1))
    assert fingerprint(Order("x", 1)) != fingerprint({"item": "x", "quantity": 1})
    assert 0 <= fingerprint(Order("x", 1)) < 2**128


def test_unencodable_requests_raise_type_error_unless_given_a_hook() -> None:
    """A request msgspec cannot encode raises TypeError; an enc_hook makes it encodable."""

    class Opaque:
        pass

    with pytest.raises(TypeError, match="cannot fingerprint a request of type"):
        fingerprint(Opaque())
    assert isinstance(fingerprint(Opaque(), enc_hook=lambda obj: "opaque"), int)


def test_settings_defaults_and_timedelta() -> None:
    """Defaults are the seed's (24 h, 10,000); ttl accepts a timedelta."""
    assert IdempotencySettings() == IdempotencySettings(ttl=86400.0, max_records=10_000)
    assert IdempotencySettings(ttl=datetime.timedelta(hours=1)).ttl == 3600.0


@pytest.mark.parametrize(
    ("kwargs", "path", "message"),
    [
        ({"ttl": 0}, "ttl", "must be a duration > 0"),
        ({"ttl": "1h"}, "ttl", "number of seconds or a timedelta"),
        ({"max_records": 0}, "max_records", "must be >= 1"),
        ({"max_records": 10.5}, "max_records", "must be an integer"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_field(
    kwargs: dict[str, object], path: str, message: str
) -> None:
    """Each invalid value raises ConfigError whose path is the field and message the rule."""
    with pytest.raises(ConfigError, match=message) as info:
        IdempotencySettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.path == path
