"""Alerts: the alert book's hysteresis (actors._monitor._alerts) and the monitor's rules."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import ErrorCategory
from actors._monitor._alerts import (
    RULE_SEVERITY,
    Alert,
    AlertBook,
    AlertEvent,
    AlertRule,
    Severity,
    UnknownAlert,
)
from actors._monitor._state import MonitorState
from actors._monitor._types import HealthStatus
from actors._policies._config._monitoring import MonitorSettings
from actors._protocol import BreakerReport, CallReport, SupervisionReport

RATE = AlertRule.HIGH_ERROR_RATE


def book(history: int = 10, max_active: int = 100) -> AlertBook:
    return AlertBook(history=history, max_active=max_active, wall_clock=lambda: 1.7e9)


def check(
    b: AlertBook, value: float | None, now: float = 0.0, checks: int = 2
) -> AlertEvent | None:
    return b.check(
        RATE,
        "svc",
        value,
        10.0,
        resolve_factor=0.8,
        resolve_checks=checks,
        now=now,
        message=lambda v: f"rate {v}",
    )


# ================================================================================ the book


def test_raise_then_duplicate_then_resolve() -> None:
    """One alert per (rule, subject); resolving it moves it to the history with its reason."""
    b = book()
    raised = b.raise_alert(RATE, "svc", "too many", 5.0, value=12.0, threshold=10.0)
    assert raised is not None
    assert raised.kind == "raised"
    alert = raised.alert
    assert (alert.id, alert.rule, alert.service, alert.severity) == (
        1,
        RATE,
        "svc",
        Severity.WARNING,
    )
    assert (alert.value, alert.threshold, alert.raised_at, alert.raised_wall) == (
        12.0,
        10.0,
        5.0,
        1.7e9,
    )
    assert alert.active
    assert b.raise_alert(RATE, "svc", "again", 6.0) is None
    assert b.raise_alert(AlertRule.BREAKER_OPEN, "svc", "open", 6.0) is not None
    resolved = b.resolve(RATE, "svc", 9.0, "recovered")
    assert resolved is not None
    assert resolved.kind == "resolved"
    assert (resolved.alert.id, resolved.alert.resolved_at, resolved.alert.resolution) == (
        1,
        9.0,
        "recovered",
    )
    assert not resolved.alert.active
    assert b.resolve(RATE, "svc", 9.0, "recovered") is None
    assert [a.rule for a in b.active_alerts()] == [AlertRule.BREAKER_OPEN]
    assert b.history() == [resolved.alert]


def test_history_is_bounded_and_newest_first() -> None:
    """Only the newest `history` resolved alerts are kept."""
    b = book(history=3)
    for i in range(5):
        b.raise_alert(RATE, f"s{i}", "x", float(i))
        b.resolve(RATE, f"s{i}", float(i), "recovered")
    assert [a.service for a in b.history()] == ["s4", "s3", "s2"]
    assert b.listing().resolved == []
    assert [a.service for a in b.listing(include_resolved=True).resolved] == ["s4", "s3", "s2"]
    stats = b.statistics()
    assert (stats.raised, stats.resolved, stats.history, stats.active) == (5, 5, 3, 0)


def test_max_active_drops_and_counts() -> None:
    """Past max_active active alerts, new ones are dropped and counted."""
    b = book(max_active=2)
    assert b.raise_alert(RATE, "a", "x", 0.0) is not None
    assert b.raise_alert(RATE, "b", "x", 0.0) is not None
    assert b.raise_alert(RATE, "c", "x", 0.0) is None
    assert b.statistics().dropped == 1
    b.resolve(RATE, "a", 1.0, "recovered")
    assert b.raise_alert(RATE, "c", "x", 1.0) is not None


def test_acknowledge_silences_conditions_and_resolves_events_by_id() -> None:
    """An operator acknowledges an active alert by id: a condition alert stays active,
    silenced; an event alert (a failed saga) is resolved; an unknown id is an UnknownAlert
    (KeyError)."""
    b = book()
    event = b.raise_alert(AlertRule.SUPERVISOR_GAVE_UP, "root/x", "gave up", 0.0)
    assert event is not None
    done = b.acknowledge(event.alert.id, 3.0)
    assert (done.kind, done.alert.acknowledged_at, done.alert.resolved_at) == (
        "acknowledged",
        3.0,
        None,
    )
    assert b.is_active(AlertRule.SUPERVISOR_GAVE_UP, "root/x")
    saga = b.raise_alert(AlertRule.SAGA_COMPENSATION_FAILED, "saga:video", "failed", 0.0)
    assert saga is not None
    done = b.acknowledge(saga.alert.id, 3.0)
    assert (done.kind, done.alert.resolution, done.alert.resolved_at) == (
        "resolved",
        "acknowledged",
        3.0,
    )
    with pytest.raises(UnknownAlert) as info:
        b.acknowledge(saga.alert.id, 4.0)
    assert isinstance(info.value, KeyError)
    assert info.value.category is ErrorCategory.VALIDATION


def test_severities() -> None:
    """Error rate warns; ratio, breaker, supervisor and saga alerts are critical."""
    assert RULE_SEVERITY == {
        AlertRule.HIGH_ERROR_RATE: Severity.WARNING,
        AlertRule.CRITICAL_ERROR_RATIO: Severity.CRITICAL,
        AlertRule.BREAKER_OPEN: Severity.CRITICAL,
        AlertRule.SUPERVISOR_GAVE_UP: Severity.CRITICAL,
        AlertRule.SAGA_COMPENSATION_FAILED: Severity.CRITICAL,
    }


def test_events_are_tagged_json() -> None:
    """Alert events encode to JSON and decode back."""
    b = book()
    event = b.raise_alert(RATE, "svc", "x", 0.0, value=11.0, threshold=10.0)
    assert event is not None
    data = msgspec.json.encode(event)
    assert msgspec.json.decode(data)["type"] == "AlertEvent"
    assert msgspec.json.decode(data, type=AlertEvent) == event
    assert msgspec.json.decode(msgspec.json.encode(event.alert), type=Alert) == event.alert


# ================================================================================ hysteresis


def test_check_raises_at_threshold_and_resolves_after_consecutive_low_checks() -> None:
    """Raise at >= threshold; resolve after `resolve_checks` checks below threshold x factor."""
    b = book()
    assert check(b, 9.99) is None
    event = check(b, 10.0, now=1.0)
    assert event is not None
    assert event.kind == "raised"
    assert check(b, 7.9, now=2.0) is None  # first low check
    assert check(b, 8.0, now=3.0) is None  # in the dead band: streak restarts
    assert check(b, 7.9, now=4.0) is None
    assert check(b, None, now=5.0) is None  # not measurable: the streak neither moves nor ends
    event = check(b, 7.9, now=5.0)
    assert event is not None
    assert event.kind == "resolved"
    assert event.alert.resolution == "recovered"
    assert event.alert.resolved_at == 5.0


@given(
    values=st.lists(
        st.one_of(
            st.none(),
            st.floats(min_value=0.0, max_value=20.0),
            st.sampled_from([7.99, 8.0, 9.99, 10.0]),
        ),
        max_size=60,
    ),
    checks=st.integers(min_value=1, max_value=4),
)
def test_no_flapping(values: list[float | None], checks: int) -> None:
    """Between a resolution and the next raise the value went back to the threshold, and
    every resolution follows `checks` measured checks in a row below threshold x factor
    (unmeasurable checks in between neither count nor break the run)."""
    b = book()
    low_run = 0
    active = False
    for i, value in enumerate(values):
        if value is None:
            assert check(b, value, now=float(i), checks=checks) is None
            assert b.is_active(RATE, "svc") == active
            continue
        low = value < 8.0
        event = check(b, value, now=float(i), checks=checks)
        if event is not None and event.kind == "raised":
            assert not active
            assert value is not None
            assert value >= 10.0
            active = True
        elif event is not None:
            assert active
            assert low
            assert low_run + 1 >= checks
            active = False
        else:
            # Nothing happened: not above while inactive, not resolvable while active.
            assert active or value < 10.0
            assert not active or not low or low_run + 1 < checks
        low_run = low_run + 1 if low and active else 0
        assert b.is_active(RATE, "svc") == active


@given(
    values=st.lists(st.floats(min_value=8.0, max_value=100.0), min_size=1, max_size=40),
)
def test_value_in_the_dead_band_never_resolves(values: list[float]) -> None:
    """Once raised, an alert whose value stays at or above threshold x factor stays active."""
    b = book()
    check(b, 10.0)
    for i, value in enumerate(values):
        assert check(b, value, now=float(i + 1)) is None
    assert b.is_active(RATE, "svc")


# ================================================================================ monitor rules


def state(**overrides: object) -> MonitorState:
    return MonitorState(MonitorSettings(**overrides), wall_clock=lambda: 1.7e9)  # type: ignore[arg-type]


def fail(service: str, at: float) -> CallReport:
    return CallReport(service, False, 0.1, at, ErrorCategory.NETWORK, "reset by peer")


def good(service: str, at: float) -> CallReport:
    return CallReport(service, True, 0.1, at)


def test_one_failure_out_of_one_call_is_not_critical() -> None:
    """The ratio counts only with min_calls calls in the window."""
    m = state()
    assert m.record(fail("a", 0.0), now=0.0) == ()
    assert m.evaluate(60.0) == []
    for i in range(9):
        m.record(good("a", 1.0 + i), now=1.0 + i)
    assert m.evaluate(60.0) == []  # 1 error in 10 calls
    events: list[AlertEvent] = []
    for i in range(10):
        events += m.record(fail("a", 20.0 + i), now=20.0 + i)
    assert [e.alert.rule for e in events] == [AlertRule.CRITICAL_ERROR_RATIO]  # raised on intake
    assert events[0].alert.value == 0.5


def test_high_error_rate_raised_on_intake_and_resolved_by_checks() -> None:
    """50 errors in the 299 s the window spans at t=49 is 10/min: raised at once; resolved
    after two checks that measured a low rate."""
    m = state(critical_error_ratio=1.0)  # keep the ratio rule out of this test
    m.record(good("a", 0.0), now=0.0)
    events: list[AlertEvent] = []
    for i in range(50):
        events += m.record(fail("a", float(i)), now=float(i))
    assert [(e.kind, e.alert.rule) for e in events] == [("raised", RATE)]
    assert "10 errors per minute" in events[0].alert.message
    assert m.evaluate(60.0) == []
    assert m.evaluate(400.0) == []  # window empty: not measured, silence is not recovery
    assert m.alerts().active != []
    for i in range(10):
        m.record(good("a", 400.0 + i), now=400.0 + i)
    assert m.evaluate(410.0) == []  # first low check
    resolved = m.evaluate(460.0)
    assert [(e.kind, e.alert.resolution) for e in resolved] == [("resolved", "recovered")]
    assert m.alerts().active == []
    assert m.alerts(include_resolved=True).resolved[0].id == events[0].alert.id


def test_rate_hovering_near_the_threshold_does_not_flap() -> None:
    """A rate moving between 80 % and 100 % of the threshold keeps one alert, raised once."""
    m = state(window=60, buckets=6, high_error_rate=10, min_calls=1, critical_error_ratio=1.0)
    events: list[AlertEvent] = []
    now = 0.0
    for i in range(100):
        now += 60.0  # the previous minute's errors have left the 60-second window
        m.record(good("a", now), now=now)  # keeps the ratio below 1
        # At a bucket boundary the window spans 50 s: 10 errors are 12/min, 8 are 9.6/min.
        for _ in range(10 if i % 3 == 0 else 8):
            events += m.record(fail("a", now), now=now)
        events += m.evaluate(now)
    assert [e.kind for e in events] == ["raised"]


def test_acknowledged_threshold_alert_stays_active_silenced_until_it_recovers() -> None:
    """Acknowledging a firing threshold alert silences it: it stays active (same id, not
    raised again by the next check) and is resolved as recovered when its value is."""
    m = state(min_calls=1)
    first = m.record(fail("a", 0.0), now=0.0)[0].alert
    ack = m.acknowledge(first.id, now=1.0)
    assert (ack.kind, ack.alert.id, ack.alert.resolution) == ("acknowledged", first.id, None)
    assert (ack.alert.acknowledged_at, ack.alert.acknowledged_wall) == (1.0, 1.7e9)
    assert m.evaluate(60.0) == []
    assert [(a.id, a.acknowledged) for a in m.alerts().active] == [(first.id, True)]
    assert m.health(60.0).services["a"].status is HealthStatus.UNHEALTHY  # silenced, not healed
    again = m.acknowledge(first.id, now=61.0)  # acknowledging twice keeps the first time
    assert again.alert.acknowledged_at == 1.0
    for t in (400.0, 401.0):
        m.record(good("a", t), now=t)
    resolved = m.evaluate(401.0) + m.evaluate(460.0)
    assert [(e.kind, e.alert.id, e.alert.resolution) for e in resolved] == [
        ("resolved", first.id, "recovered")
    ]
    assert resolved[0].alert.acknowledged_at == 1.0
    with pytest.raises(UnknownAlert):
        m.acknowledge(first.id, now=461.0)


def test_breaker_alert_follows_the_breaker() -> None:
    """Raised on open (critical, with the reason), kept through half-open, resolved on close."""
    m = state()
    events = m.record(BreakerReport("a", "closed", "open", 1.0, "5 failures"), now=1.0)
    assert len(events) == 1
    alert = events[0].alert
    assert (alert.rule, alert.severity, alert.service) == (
        AlertRule.BREAKER_OPEN,
        Severity.CRITICAL,
        "a",
    )
    assert "5 failures" in alert.message
    assert m.record(BreakerReport("a", "open", "half_open", 31.0), now=31.0) == ()
    assert m.record(BreakerReport("a", "half_open", "open", 31.5), now=31.5) == ()
    events = m.record(BreakerReport("a", "open", "closed", 62.0), now=62.0)
    assert [(e.kind, e.alert.resolution) for e in events] == [("resolved", "breaker_closed")]
    events = m.record(BreakerReport("a", "closed", "isolated", 70.0), now=70.0)
    assert "isolated" in events[0].alert.message


def test_supervisor_gave_up_until_the_subtree_starts_again() -> None:
    """Raised on gave_up; resolved when that path or one below it starts, not a sibling."""
    m = state()
    events = m.record(SupervisionReport("root/providers", "gave_up", "token=abc"), now=1.0)
    alert = events[0].alert
    assert (alert.rule, alert.service) == (AlertRule.SUPERVISOR_GAVE_UP, "root/providers")
    assert "token=[REDACTED]" in alert.message
    assert m.record(SupervisionReport("root/providers2", "started"), now=2.0) == ()
    assert m.record(SupervisionReport("root", "crashed"), now=2.0) == ()
    events = m.record(SupervisionReport("root/providers/openai", "started"), now=3.0)
    assert [(e.kind, e.alert.resolution) for e in events] == [("resolved", "restarted")]
    m.record(SupervisionReport("root/sagas", "gave_up"), now=4.0)
    events = m.record(SupervisionReport("root/sagas", "restarted"), now=5.0)
    assert [e.alert.resolution for e in events] == ["restarted"]
    event = m.record(SupervisionReport("root/x", "gave_up"), now=6.0)[0]
    assert m.acknowledge(event.alert.id, now=7.0).alert.acknowledged
    assert [a.id for a in m.alerts().active] == [event.alert.id]
    assert m.statistics().gave_up == {"root/providers": 1, "root/sagas": 1, "root/x": 1}


def test_alert_listing_newest_first() -> None:
    """Active alerts are listed newest first; resolved ones only on request."""
    m = state()
    m.record(BreakerReport("a", "closed", "open", 1.0), now=1.0)
    m.record(BreakerReport("b", "closed", "open", 2.0), now=2.0)
    m.record(BreakerReport("a", "open", "closed", 3.0), now=3.0)
    m.record(BreakerReport("c", "closed", "open", 4.0), now=4.0)
    listing = m.alerts()
    assert [a.service for a in listing.active] == ["c", "b"]
    assert listing.resolved == []
    assert [a.service for a in m.alerts(include_resolved=True).resolved] == ["a"]


# ================================================================================ limits, sagas


def test_failed_sagas_fold_into_one_alert_per_definition() -> None:
    """Thousands of failed sagas take one alert per definition (its count goes up, each one an
    `updated` event) and never crowd out other alerts: a breaker opening is still raised."""
    m = state(max_services=10)
    events: list[AlertEvent] = []
    for i in range(4000):
        event = m.saga_compensation_failed(f"s-{i}", "video", "render failed", float(i))
        assert event is not None
        events.append(event)
    assert [e.kind for e in events[:2]] == ["raised", "updated"]
    assert {e.alert.id for e in events} == {events[0].alert.id}
    (alert,) = m.alerts().active
    assert (alert.service, alert.count) == ("saga:video", 4000)
    assert "s-3999" in alert.message
    for i in range(20):  # more definitions than the rule's limit of 10
        m.saga_compensation_failed(f"x-{i}", f"def{i}", "boom", 5000.0)
    raised = m.record(BreakerReport("a", "closed", "open", 5001.0), now=5001.0)
    assert [e.alert.rule for e in raised] == [AlertRule.BREAKER_OPEN]
    stats = m.statistics()
    assert stats.alerts_dropped == 11  # the definitions past the limit, once each
    assert stats.active_alerts == 11


def test_alerts_dropped_counts_alerts_not_attempts() -> None:
    """A raise refused for lack of room is counted once per (rule, subject) however often it
    is tried, and counted again only after room was made."""
    b = book(max_active=1)
    assert b.raise_alert(RATE, "a", "x", 0.0) is not None
    for i in range(100):
        assert b.raise_alert(RATE, "b", "x", float(i)) is None
        assert b.raise_alert(RATE, "c", "x", float(i)) is None
    assert b.statistics().dropped == 2
    # Another rule has its own limit.
    assert b.raise_alert(AlertRule.BREAKER_OPEN, "b", "x", 0.0) is not None
    b.resolve(RATE, "a", 1.0, "recovered")
    assert b.raise_alert(RATE, "b", "x", 2.0) is not None
    assert b.raise_alert(RATE, "c", "x", 3.0) is None
    assert b.statistics().dropped == 3


def test_acknowledge_all_by_rule_and_subject() -> None:
    """acknowledge_all acknowledges the matching alerts at once: a definition's failed sagas
    (resolved), or every alert of a rule (silenced)."""
    m = state()
    m.saga_compensation_failed("s-1", "video", "x", 0.0)
    m.saga_compensation_failed("s-2", "video", "x", 0.0)
    m.saga_compensation_failed("s-3", "videos", "x", 0.0)
    m.saga_compensation_failed("s-4", "audio", "x", 0.0)
    m.record(BreakerReport("a", "closed", "open", 0.0), now=0.0)
    m.record(BreakerReport("b", "closed", "open", 0.0), now=0.0)
    done = m.acknowledge_all(1.0, rule="saga_compensation_failed", subject="saga:video")
    assert [(e.kind, e.alert.service, e.alert.count) for e in done] == [
        ("resolved", "saga:video", 2)
    ]
    done = m.acknowledge_all(2.0, rule=AlertRule.BREAKER_OPEN)
    assert [(e.kind, e.alert.service) for e in done] == [
        ("acknowledged", "a"),
        ("acknowledged", "b"),
    ]
    assert m.acknowledge_all(3.0, rule=AlertRule.BREAKER_OPEN) == []  # already acknowledged
    assert {a.service for a in m.alerts().active} == {"saga:videos", "saga:audio", "a", "b"}
    done = m.acknowledge_all(4.0, subject="saga")
    assert {e.alert.service for e in done} == {"saga:videos", "saga:audio"}
    with pytest.raises(ValueError, match="rule"):
        m.acknowledge_all(5.0, rule="nope")


def test_every_event_has_the_next_sequence_number() -> None:
    """Events are numbered 1, 2, 3, ... across kinds, so a subscriber can see a gap."""
    m = state(min_calls=1)
    events: list[AlertEvent] = []
    events += m.record(BreakerReport("a", "closed", "open", 0.0), now=0.0)
    events += m.record(fail("b", 0.0), now=0.0)
    events.append(m.acknowledge(events[0].alert.id, now=1.0))
    events += m.record(BreakerReport("a", "open", "closed", 2.0), now=2.0)
    ev = m.saga_compensation_failed("s", "d", "x", 3.0)
    assert ev is not None
    events.append(ev)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert m.statistics().alert_events == len(events)
