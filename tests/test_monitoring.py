"""The monitor's sans-I/O state (actors._monitor): windows, totals, queries, health, bounds."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors._errors import ConfigError, ErrorCategory
from actors._monitor._alerts import AlertRule
from actors._monitor._state import MonitorState
from actors._monitor._types import (
    BreakerList,
    ErrorRate,
    HealthReport,
    HealthStatus,
    InvalidQuery,
    InvalidReport,
    MetricsReport,
    RecentErrors,
    ServiceMetrics,
    UnknownService,
)
from actors._policies._config._monitoring import MonitorSettings
from actors._protocol import BreakerReport, CallReport, DependencyReport, SupervisionReport


class FakeWall:
    """A wall clock for tests: always ``1_700_000_000 + now`` as told."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def make(**overrides: Any) -> MonitorState:
    return MonitorState(MonitorSettings(**overrides), wall_clock=FakeWall())


def ok(service: str, at: float, latency: float = 0.1, retried: bool = False) -> CallReport:
    return CallReport(service, True, latency, at, retried=retried)


def err(
    service: str,
    at: float,
    category: ErrorCategory | None = ErrorCategory.TIMEOUT,
    error: str | None = "boom",
    latency: float = 0.1,
    retried: bool = False,
) -> CallReport:
    return CallReport(service, False, latency, at, category, error, retried)


# ================================================================================ settings


def test_defaults_follow_the_seed() -> None:
    """Check every 60 s, high error rate 10/min, critical ratio 0.5, a 5-minute window."""
    s = MonitorSettings()
    assert (s.check_interval, s.high_error_rate, s.critical_error_ratio, s.window) == (
        60.0,
        10.0,
        0.5,
        300.0,
    )
    assert s.bucket_width == 5.0
    assert s.latency_bucket_width == 30.0
    assert s.percentiles == (50.0, 90.0, 99.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("check_interval", 0),
        ("check_interval", math.nan),
        ("window", -1.0),
        ("window", math.inf),
        ("buckets", 0),
        ("buckets", 2.5),
        ("buckets", True),
        ("buckets", 20_000),
        ("latency_buckets", 0),
        ("latency_buckets", 20_000),
        ("high_error_rate", 0),
        ("critical_error_ratio", 1.5),
        ("critical_error_ratio", 0),
        ("min_calls", 0),
        ("resolve_factor", 0),
        ("resolve_factor", 1.2),
        ("resolve_checks", 0),
        ("percentiles", ()),
        ("percentiles", (50.0, 101.0)),
        ("percentiles", (0.0,)),
        ("percentiles", (50.0, 50.0)),
        ("latency_min", 0),
        ("latency_max", 1e-5),
        ("latency_bins_per_decade", 0),
        ("latency_bins_per_decade", 5000),
        ("recent_errors", -1),
        ("max_message_length", 3),
        ("resolved_alerts", -1),
        ("max_services", 0),
        ("max_services", "many"),
    ],
)
def test_bad_setting_names_its_field(field: str, value: Any) -> None:
    """Each out-of-range setting raises ConfigError whose path is the field."""
    with pytest.raises(ConfigError) as info:
        MonitorSettings(**{field: value})
    assert info.value.path == field


def test_settings_decode_from_json_and_reject_unknown_fields() -> None:
    """Settings load from JSON; unknown fields and bad values fail naming the field."""
    s = msgspec.json.decode(b'{"window": 60, "buckets": 12}', type=MonitorSettings)
    assert s.bucket_width == 5.0
    with pytest.raises(msgspec.ValidationError, match="windo"):
        msgspec.json.decode(b'{"windo": 60}', type=MonitorSettings)
    with pytest.raises(msgspec.ValidationError, match="window"):
        msgspec.json.decode(b'{"window": 0}', type=MonitorSettings)


def test_state_rejects_non_settings() -> None:
    """MonitorState needs MonitorSettings, not a dict."""
    with pytest.raises(TypeError, match="MonitorSettings"):
        MonitorState({"window": 60})  # type: ignore[arg-type]


# ================================================================================ windows


def test_report_counts_until_its_bucket_leaves_the_window() -> None:
    """A report counts while its bucket is one of the newest `buckets` buckets."""
    m = make(window=60, buckets=6)  # 10-second buckets
    m.record(ok("a", at=5.0), now=5.0)
    assert m.service_metrics("a", now=59.9).calls == 1
    assert m.service_metrics("a", now=60.0).calls == 0  # bucket 0 expired at bucket 6
    assert m.service_metrics("a", now=60.0).totals.calls == 1


def test_jump_longer_than_the_window_clears_it() -> None:
    """After a silence longer than the window, the window is empty."""
    m = make(window=60, buckets=6)
    for t in range(0, 50, 7):
        m.record(err("a", at=float(t)), now=float(t))
    assert m.service_metrics("a", now=50).errors == 8
    metrics = m.service_metrics("a", now=10_000.0)
    assert (metrics.calls, metrics.errors, metrics.retries) == (0, 0, 0)
    assert metrics.errors_by_category == {}
    assert metrics.latency == {"p50": None, "p90": None, "p99": None}
    assert metrics.totals.errors == 8


def test_delayed_report_lands_in_its_own_bucket() -> None:
    """A report recorded late is placed by its `at` and expires with that bucket."""
    m = make(window=60, buckets=6)
    m.record(ok("a", at=50.0), now=50.0)
    m.record(ok("a", at=12.0), now=50.0)  # delayed: bucket 1
    assert m.service_metrics("a", now=50.0).calls == 2
    assert m.error_rate("a", window=20, now=50.0).calls == 1
    assert m.service_metrics("a", now=70.0).calls == 1  # bucket 1 gone at head 7


def test_report_older_than_the_window_counts_in_totals_only() -> None:
    """A report from before the window is a total, never a window count."""
    m = make(window=60, buckets=6)
    m.record(err("a", at=200.0), now=200.0)
    m.record(err("a", at=100.0), now=200.0)
    metrics = m.service_metrics("a", now=200.0)
    assert (metrics.errors, metrics.totals.errors) == (1, 2)


def test_report_from_the_future_counts_in_the_newest_bucket() -> None:
    """An `at` ahead of `now` lands in the newest bucket, not outside the ring."""
    m = make(window=60, buckets=6)
    m.record(ok("a", at=1_000.0), now=10.0)
    assert m.service_metrics("a", now=10.0).calls == 1
    assert m.error_rate("a", window=10, now=10.0).calls == 1


def test_time_going_backwards_is_treated_as_the_latest_time() -> None:
    """An earlier `now` than one already seen does not rewind the windows."""
    m = make(window=60, buckets=6)
    m.record(ok("a", at=100.0), now=100.0)
    m.record(ok("a", at=100.0), now=20.0)
    assert m.service_metrics("a", now=20.0).calls == 2


def test_categories_retries_and_totals_are_exact() -> None:
    """Errors per category, retries and totals are exact counts."""
    m = make()
    cats = [ErrorCategory.TIMEOUT, ErrorCategory.NETWORK, None, "rate_limit"]
    for i in range(400):
        if i % 3:
            m.record(ok("svc", at=float(i), retried=i % 5 == 0), now=float(i))
        else:
            cat = cats[i % 4]
            m.record(err("svc", at=float(i), category=cat, retried=i % 5 == 0), now=float(i))  # type: ignore[arg-type]
    metrics = m.service_metrics("svc", now=399.0)
    totals = metrics.totals
    assert totals.calls == 400
    assert totals.errors == len(range(0, 400, 3))
    assert totals.retries == len(range(0, 400, 5))
    assert sum(totals.errors_by_category.values()) == totals.errors
    assert set(totals.errors_by_category) == {"timeout", "network", "unknown", "rate_limit"}
    # The window (300 s, 60 buckets of 5 s) at t=399 holds buckets 20..79: t in [100, 399].
    assert metrics.calls == 300
    assert metrics.errors == len([i for i in range(100, 400) if i % 3 == 0])
    assert metrics.retries == len([i for i in range(100, 400) if i % 5 == 0])
    assert metrics.error_ratio == pytest.approx(metrics.errors / metrics.calls)
    # Per minute of the span: 59 whole buckets plus 4 s of the current one (t = 395..399).
    assert metrics.error_rate_per_min == pytest.approx(metrics.errors * 60 / 299.0)


def test_ok_report_ignores_category_and_message() -> None:
    """A success never counts as an error, whatever else it carries."""
    m = make()
    m.record(CallReport("a", True, 0.1, 1.0, ErrorCategory.NETWORK, "x"), now=1.0)
    metrics = m.service_metrics("a", now=1.0)
    assert (metrics.calls, metrics.errors, metrics.errors_by_category) == (1, 0, {})
    assert m.recent_errors().total == 0


def test_ring_memory_does_not_grow_with_traffic() -> None:
    """The buckets are sized when a service is first seen and keep their size."""
    m = make(window=60, buckets=6)
    m.record(ok("a", at=0.0), now=0.0)
    series = m._series["a"]
    sizes = (len(series.counts.cells), len(series.latency.cells))
    for i in range(5_000):
        t = i * 0.37
        m.record(err("a", at=t) if i % 4 == 0 else ok("a", at=t, latency=i % 97 / 10), now=t)
    assert (len(series.counts.cells), len(series.latency.cells)) == sizes
    assert m.recent_errors(limit=200).total == 200


def test_ring_buckets_are_allocated_at_the_first_count_and_released_when_idle() -> None:
    """A service known but idle for a whole window holds no buckets; a new report brings
    them back, zeroed, and the window counts only it."""
    m = make(window=60, buckets=6)
    m.record(err("a", at=0.0), now=0.0)
    series = m._series["a"]
    sizes = (len(series.counts.cells), len(series.latency.cells))
    assert min(sizes) > 0
    assert m.service_metrics("a", now=200.0).calls == 0
    assert (len(series.counts.cells), len(series.latency.cells)) == (0, 0)
    assert not m.check_due()
    m.record(ok("a", at=201.0), now=201.0)
    assert (len(series.counts.cells), len(series.latency.cells)) == sizes
    metrics = m.service_metrics("a", now=201.0)
    assert (metrics.calls, metrics.errors, metrics.totals.calls) == (1, 0, 2)


# ================================================================================ error rate


def test_error_rate_over_a_shorter_window() -> None:
    """error_rate counts the current bucket's elapsed part and the whole buckets before it
    that cover the window (rounded up), and divides by that span."""
    m = make(window=60, buckets=6)
    for t in range(60):
        m.record(err("a", at=float(t)) if t % 2 else ok("a", at=float(t)), now=float(t))
    # 15 s: two whole buckets (t in [30, 50)) and 9 s of the current one (t in [50, 59]).
    rate = m.error_rate("a", window=15, now=59.0)
    assert rate == ErrorRate("a", 29.0, 15, 30, 15 * 60.0 / 29.0, 0.5)
    whole = m.error_rate("a", window=60, now=59.0)  # at most the monitor's window
    assert (whole.window, whole.errors, whole.calls) == (59.0, 30, 60)


@pytest.mark.parametrize("window", [0, -5, 61, math.nan, math.inf, True, "60"])
def test_error_rate_window_out_of_range(window: Any) -> None:
    """A window outside (0, configured window] is an InvalidQuery naming `window`."""
    m = make(window=60, buckets=6)
    m.record(ok("a", at=0.0), now=0.0)
    with pytest.raises(InvalidQuery) as info:
        m.error_rate("a", window=window, now=1.0)
    assert info.value.argument == "window"
    assert isinstance(info.value, ValueError)


def test_unknown_service_is_a_key_error() -> None:
    """Queries about an unknown service raise UnknownService, a KeyError (HTTP 404)."""
    m = make()
    for call in (
        lambda: m.service_metrics("nope", now=0.0),
        lambda: m.breaker("nope"),
        lambda: m.error_rate("nope", window=10, now=0.0),
        lambda: m.reset("nope", now=0.0),
    ):
        with pytest.raises(UnknownService) as info:
            call()
        assert isinstance(info.value, KeyError)
        assert info.value.category is ErrorCategory.VALIDATION
        assert "nope" in str(info.value)


# ================================================================================ percentiles


@given(
    latencies=st.lists(
        st.floats(min_value=1e-6, max_value=5e3, allow_nan=False), min_size=1, max_size=300
    ),
    percentile=st.sampled_from([1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0]),
)
def test_percentile_within_the_bin_error_bound(latencies: list[float], percentile: float) -> None:
    """Each percentile is within the histogram's relative error of the exact nearest rank."""
    m = make(percentiles=(percentile,))
    for lat in latencies:
        m.record(ok("a", at=1.0, latency=lat), now=1.0)
    got = m.service_metrics("a", now=1.0).latency[f"p{percentile:g}"]
    ordered = sorted(latencies)
    exact = ordered[max(1, math.ceil(percentile * len(ordered) / 100)) - 1]
    assert got is not None
    s = m.settings
    bound = s.latency_relative_error * (1 + 1e-9) + 1e-12
    if exact < s.latency_min:
        assert got == s.latency_min / 2
    elif exact >= s.latency_max * (1 + 1e-9):
        assert got == pytest.approx(s.latency_max)
    else:
        assert abs(got / exact - 1) <= bound


def test_latency_percentiles_follow_the_window() -> None:
    """Latencies leave the percentiles when their latency bucket leaves the window."""
    m = make(window=60, buckets=6, latency_buckets=2)  # 30-second latency buckets
    for _ in range(10):
        m.record(ok("a", at=1.0, latency=2.0), now=1.0)
    m.record(ok("a", at=40.0, latency=0.01), now=40.0)
    p50 = m.service_metrics("a", now=40.0).latency["p50"]
    assert p50 == pytest.approx(2.0, rel=0.06)
    assert m.service_metrics("a", now=60.0).latency["p50"] == pytest.approx(0.01, rel=0.06)


# ================================================================================ recent errors


def test_recent_errors_newest_first_with_pagination() -> None:
    """Pages are newest first; offset and limit slice; total counts all held."""
    m = make(recent_errors=10)
    for i in range(25):
        m.record(err("a" if i % 2 else "b", at=float(i), error=f"e{i}"), now=float(i))
    page = m.recent_errors(offset=0, limit=3)
    assert [r.message for r in page.items] == ["e24", "e23", "e22"]
    assert (page.offset, page.limit, page.total) == (0, 3, 10)
    page = m.recent_errors(offset=8, limit=5)
    assert [r.message for r in page.items] == ["e16", "e15"]
    page = m.recent_errors(offset=50, limit=5)
    assert page.items == []
    only_a = m.recent_errors(limit=10, service="a")
    assert [r.message for r in only_a.items] == ["e23", "e21", "e19", "e17", "e15"]
    assert only_a.total == 5


def test_recent_error_record_fields() -> None:
    """A record holds service, category, redacted message, monotonic and wall times."""
    wall = FakeWall()
    m = MonitorState(MonitorSettings(), wall_clock=wall)
    m.record(err("a", at=7.0, error="GET https://u:hunter2@host failed", retried=True), now=8.0)
    m.record(err("a", at=9.0, category=None, error=None), now=9.0)
    older, newer = reversed(m.recent_errors().items)
    assert older.message == "GET https://u:[REDACTED]@host failed"
    assert (older.service, older.category, older.at, older.wall, older.retried) == (
        "a",
        ErrorCategory.TIMEOUT,
        7.0,
        wall.t,
        True,
    )
    assert newer.category is ErrorCategory.UNKNOWN
    assert newer.message == ErrorCategory.UNKNOWN.info.message


def test_long_error_messages_are_cut() -> None:
    """Stored messages are bounded by max_message_length."""
    m = make(max_message_length=50)
    m.record(err("a", at=0.0, error="word " * 1000), now=0.0)
    message = m.recent_errors().items[0].message
    assert len(message) <= 50 + len("... [truncated, 5000 chars]")


@pytest.mark.parametrize(
    ("offset", "limit", "argument"),
    [
        (-1, 10, "offset"),
        (0, 0, "limit"),
        (0, 1001, "limit"),
        (True, 10, "offset"),
        (0, 1.5, "limit"),
    ],
)
def test_recent_errors_bad_page(offset: Any, limit: Any, argument: str) -> None:
    """A negative offset or a limit outside [1, 1000] is an InvalidQuery."""
    with pytest.raises(InvalidQuery) as info:
        make().recent_errors(offset=offset, limit=limit)
    assert info.value.argument == argument


# ================================================================================ reset


def test_reset_clears_windows_and_metric_alerts_but_not_totals() -> None:
    """Reset empties the service's windows and resolves its rate/ratio alerts; its totals are
    counters and keep their values."""
    m = make(min_calls=1, high_error_rate=0.2)  # one error in 5 minutes is 0.2 per minute
    m.record(BreakerReport("a", "closed", "open", 1.0, "failures"), now=1.0)
    events = m.record(err("a", at=1.0), now=1.0)
    assert {e.alert.rule for e in events} == {
        AlertRule.HIGH_ERROR_RATE,
        AlertRule.CRITICAL_ERROR_RATIO,
    }
    events = m.reset("a", now=2.0)
    assert {(e.kind, e.alert.rule, e.alert.resolution) for e in events} == {
        ("resolved", AlertRule.HIGH_ERROR_RATE, "reset"),
        ("resolved", AlertRule.CRITICAL_ERROR_RATIO, "reset"),
    }
    metrics = m.service_metrics("a", now=2.0)
    assert (metrics.calls, metrics.errors, metrics.totals.calls, metrics.totals.since) == (
        0,
        0,
        1,
        1.0,
    )
    assert metrics.latency["p50"] is None
    assert m.breaker("a").state == "open"  # the breaker is not a metric
    assert [a.rule for a in m.alerts().active] == [AlertRule.BREAKER_OPEN]
    assert m.recent_errors().total == 1  # the error log is kept
    m.record(ok("a", at=3.0), now=3.0)
    assert m.service_metrics("a", now=3.0).calls == 1
    assert m.service_metrics("a", now=3.0).totals.calls == 2


# ================================================================================ breakers


def test_breaker_defaults_to_closed_and_tracks_transitions() -> None:
    """A service's breaker is closed until reported; transitions, trips and reasons are kept."""
    m = make()
    m.record(ok("a", at=0.0), now=0.0)
    info = m.breaker("a")
    assert (info.state, info.since, info.transitions, info.trips, info.last_transition) == (
        "closed",
        None,
        0,
        0,
        None,
    )
    m.record(BreakerReport("a", "closed", "open", 5.0, "5 failures; api_key=abc"), now=5.0)
    m.record(BreakerReport("a", "open", "half_open", 35.0), now=35.0)
    m.record(BreakerReport("a", "half_open", "open", 36.0, "probe failed"), now=36.0)
    info = m.breaker("a")
    assert (info.state, info.since, info.transitions, info.trips) == ("open", 36.0, 3, 2)
    assert info.last_transition is not None
    assert info.last_transition.reason == "probe failed"
    m.record(BreakerReport("b", "closed", "isolated", 40.0, ""), now=40.0)
    listing = m.breakers()
    assert [(b.service, b.state) for b in listing.breakers] == [("a", "open"), ("b", "isolated")]


def test_breaker_reason_is_redacted() -> None:
    """Breaker reasons pass through redaction like error messages."""
    m = make()
    m.record(BreakerReport("a", "closed", "open", 5.0, "failed with api_key=abc123"), now=5.0)
    transition = m.breaker("a").last_transition
    assert transition is not None
    assert transition.reason == "failed with api_key=[REDACTED]"


# ================================================================================ invalid input


@pytest.mark.parametrize(
    ("report", "field"),
    [
        (CallReport("a", True, -0.1, 1.0), "latency"),
        (CallReport("a", True, math.nan, 1.0), "latency"),
        (CallReport("a", True, math.inf, 1.0), "latency"),
        (CallReport("a", True, "fast", 1.0), "latency"),  # type: ignore[arg-type]
        (CallReport("a", True, 0.1, math.nan), "at"),
        (CallReport("a", True, 0.1, None), "at"),  # type: ignore[arg-type]
        (CallReport("a", False, 0.1, 1.0, "bogus"), "category"),  # type: ignore[arg-type]
        (CallReport("a", False, 0.1, 1.0, []), "category"),  # type: ignore[arg-type]
        (CallReport("a", False, 0.1, 1.0, None, 42), "error"),  # type: ignore[arg-type]
        (CallReport("", True, 0.1, 1.0), "service"),
        (CallReport("x" * 201, True, 0.1, 1.0), "service"),
        (CallReport(7, True, 0.1, 1.0), "service"),  # type: ignore[arg-type]
        (BreakerReport("a", "closed", "ajar", 1.0), "new"),
        (BreakerReport("a", "CLOSED", "open", 1.0), "old"),
        (BreakerReport("a", "closed", "open", math.inf), "at"),
        (BreakerReport("a", "closed", "open", 1.0, None), "reason"),  # type: ignore[arg-type]
        (SupervisionReport("root/a", "exploded"), "kind"),
        (SupervisionReport("", "started"), "path"),
        (SupervisionReport("root", "gave_up", None), "detail"),  # type: ignore[arg-type]
    ],
)
def test_invalid_report_records_nothing(report: Any, field: str) -> None:
    """A report with an unusable field raises InvalidReport naming it and changes nothing."""
    m = make()
    m.record(ok("a", at=0.0), now=0.0)
    before = (m.statistics(), m.service_metrics("a", now=0.0), m.breakers(), m.alerts(True))
    with pytest.raises(InvalidReport) as info:
        m.record(report, now=1.0)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    after = (m.statistics(), m.service_metrics("a", now=0.0), m.breakers(), m.alerts(True))
    assert after == before


def test_batch_skips_and_counts_invalid_reports() -> None:
    """record_batch records the good reports in order and counts the bad ones."""
    m = make(min_calls=1)
    events = m.record_batch(
        [ok("a", at=0.0), CallReport("a", True, -1.0, 0.0), "junk", err("a", at=1.0)], now=1.0
    )
    assert [e.alert.rule for e in events] == [AlertRule.CRITICAL_ERROR_RATIO]
    assert m.service_metrics("a", now=1.0).totals.calls == 2
    assert m.statistics().reports_invalid == 2


def test_non_report_is_a_type_error() -> None:
    """Only report types are accepted."""
    with pytest.raises(TypeError, match="not a monitor report"):
        make().record("hello", now=0.0)  # type: ignore[arg-type]


# ================================================================================ max services


def test_new_service_evicts_the_least_recent_idle_one() -> None:
    """At max_services, a new service replaces the idle service reported least recently."""
    m = make(window=60, buckets=6, max_services=2)
    m.record(ok("a", at=0.0), now=0.0)
    m.record(ok("b", at=10.0), now=10.0)
    m.record(ok("c", at=100.0), now=100.0)  # a and b idle; a least recent
    assert m.services() == ["b", "c"]
    assert m.statistics().services_evicted == 1


def test_busy_services_are_not_evicted_and_the_report_is_dropped() -> None:
    """Services with window calls, a non-closed breaker or an active alert stay; the new
    service's report is dropped and counted."""
    m = make(window=60, buckets=6, max_services=2)
    m.record(ok("a", at=0.0), now=0.0)
    m.record(BreakerReport("b", "closed", "open", 0.0), now=0.0)
    assert m.record(ok("c", at=30.0), now=30.0) == ()  # a has calls in the window
    assert m.services() == ["a", "b"]
    assert m.statistics().reports_dropped == 1
    assert m.record(ok("c", at=100.0), now=100.0) == ()  # a idle now; b's breaker is open
    assert m.services() == ["b", "c"]
    m2 = make(window=60, buckets=6, max_services=1, min_calls=1)
    m2.record(err("a", at=0.0), now=0.0)  # critical ratio alert active
    m2.record(ok("z", at=100.0), now=100.0)
    assert m2.services() == ["a"]


# ================================================================================ counters


def test_counters_never_go_down_through_resets_and_evictions() -> None:
    """Totals, transitions and trips are counters for the life of the monitor: a reset clears
    the windows only, and an evicted service picks its counters up again when it returns."""
    m = make(window=60, buckets=6, max_services=1, min_calls=1)
    for t in (0.0, 1.0):
        m.record(err("a", at=t), now=t)
    m.record(BreakerReport("a", "closed", "open", 2.0), now=2.0)
    m.record(BreakerReport("a", "open", "closed", 3.0), now=3.0)
    m.reset("a", now=4.0)
    before = m.service_metrics("a", now=4.0)
    assert (before.calls, before.totals.calls, before.totals.errors) == (0, 2, 2)
    m.evaluate(4.0)
    m.evaluate(200.0)  # the window is empty: "a" is idle and may be evicted
    m.record(ok("b", at=200.0), now=200.0)
    assert m.services() == ["b"]
    assert m.statistics().services_evicted == 1
    m.record(ok("b", at=300.0), now=300.0)
    m.evaluate(400.0)
    m.record(ok("a", at=400.0), now=400.0)  # "a" comes back, evicting "b"
    again = m.service_metrics("a", now=400.0)
    assert (again.totals.calls, again.totals.errors, again.totals.since) == (3, 2, 0.0)
    assert again.totals.errors_by_category == {"timeout": 2}
    info = m.breaker("a")
    assert (info.transitions, info.trips) == (2, 1)
    m.record(ok("b", at=500.0), now=500.0)
    assert m.service_metrics("b", now=500.0).totals.calls == 3


def test_counters_of_evicted_services_are_bounded() -> None:
    """At most max_services evicted services' counters are kept (oldest forgotten first)."""
    m = make(window=60, buckets=6, max_services=2)
    for i in range(10):
        t = 100.0 * i
        m.record(ok(f"s{i}", at=t), now=t)
    assert len(m._retired) == 2
    assert list(m._retired) == ["s6", "s7"]


# ================================================================================ batches


def test_malformed_breaker_report_in_a_batch_is_skipped() -> None:
    """A BreakerReport whose service or path is not a str (even an unhashable one) is counted
    as invalid in a batch, and the rest of the batch is recorded."""
    m = make()
    batch = [
        ok("a", at=0.0),
        BreakerReport(["a"], "closed", "open", 0.0),  # type: ignore[arg-type]
        BreakerReport({"a": 1}, "closed", "open", 0.0),  # type: ignore[arg-type]
        BreakerReport(7, "closed", "open", 0.0),  # type: ignore[arg-type]
        BreakerReport("a", "closed", "open", 0.0, "", ["p"]),  # type: ignore[arg-type]
        ok("a", at=1.0),
    ]
    assert m.record_batch(batch, now=1.0) == []
    assert m.service_metrics("a", now=1.0).totals.calls == 2
    assert m.statistics().reports_invalid == 4
    assert m.breaker("a").state == "closed"
    with pytest.raises(InvalidReport) as info:
        m.record(BreakerReport(["a"], "closed", "open", 0.0), now=1.0)  # type: ignore[arg-type]
    assert info.value.field == "service"


# ================================================================================ rates


def test_short_window_rate_is_not_under_reported() -> None:
    """One error a second is 60 per minute over any window, also a 5-second one whose newest
    bucket has only partly elapsed; the monitor's own rate uses the same definition."""
    m = make(window=300, buckets=60)
    t = 0.5
    for now in (1000.0, 1001.7, 1003.9):
        while t <= now:
            m.record(err("a", at=t), now=t)
            t += 1.0
        short = m.error_rate("a", window=5, now=now)
        # The elapsed part of the current bucket and one whole bucket before it.
        assert short.window == pytest.approx(5.0 + now % 5.0)
        assert short.rate_per_min == pytest.approx(60.0, rel=0.25)
        whole = m.error_rate("a", window=300, now=now)
        assert whole.rate_per_min == pytest.approx(60.0, rel=0.01)
        assert m.service_metrics("a", now=now).error_rate_per_min == whole.rate_per_min
    exact = make(window=300, buckets=60)
    for i in range(1000):
        exact.record(err("a", at=i + 0.5), now=i + 0.5)
    rate = exact.error_rate("a", window=5, now=1000.0)  # t = 995.5 ... 999.5
    assert (rate.errors, rate.window, rate.rate_per_min) == (5, 5.0, 60.0)


def test_error_ratio_is_not_judged_below_min_calls() -> None:
    """enough_calls says whether the window holds min_calls calls."""
    m = make(min_calls=3)
    m.record(err("a", at=0.0), now=0.0)
    m.record(ok("a", at=0.0), now=0.0)
    assert m.service_metrics("a", now=0.0).enough_calls is False
    m.record(ok("a", at=0.0), now=0.0)
    assert m.service_metrics("a", now=0.0).enough_calls is True


# ================================================================================ breakers


def test_state_report_corrects_the_breaker_without_counting_a_transition() -> None:
    """A state report (old == new) sets the monitor's copy, raising or resolving the breaker
    alert, without counting a transition; one that agrees changes nothing."""
    m = make()
    m.record(BreakerReport("a", "closed", "open", 1.0, "failures"), now=1.0)
    assert m.record(BreakerReport("a", "open", "open", 2.0, "started", "p/a"), now=2.0) == ()
    events = m.record(BreakerReport("a", "closed", "closed", 3.0, "started", "p/a"), now=3.0)
    assert [(e.kind, e.alert.resolution) for e in events] == [("resolved", "breaker_closed")]
    info = m.breaker("a")
    assert (info.state, info.since, info.transitions, info.trips) == ("closed", 3.0, 1, 1)
    assert info.last_transition is not None
    assert info.last_transition.new == "open"
    events = m.record(BreakerReport("a", "open", "open", 4.0, "started", "p/a"), now=4.0)
    assert [(e.kind, e.alert.rule) for e in events] == [("raised", AlertRule.BREAKER_OPEN)]
    assert m.breaker("a").transitions == 1


def test_a_provider_stopped_for_good_leaves_no_open_breaker() -> None:
    """A supervision "stopped" event for a provider's path, or a path above it, closes its
    breaker in the monitor and resolves its alert (resolution "stopped"); other paths
    are untouched."""
    m = make()
    m.record(BreakerReport("a", "closed", "open", 1.0, "x", "providers/a"), now=1.0)
    m.record(BreakerReport("b", "closed", "isolated", 1.0, "x", "providers2/b"), now=1.0)
    m.record(BreakerReport("c", "closed", "open", 1.0, "x"), now=1.0)  # path unknown
    events = m.record(SupervisionReport("providers", "stopped", "terminated"), now=5.0)
    assert [(e.alert.service, e.alert.resolution) for e in events] == [("a", "stopped")]
    assert [(b.service, b.state) for b in m.breakers().breakers] == [
        ("a", "closed"),
        ("b", "isolated"),
        ("c", "open"),
    ]
    assert m.breaker("a").since == 5.0
    assert m.statistics().supervision["stopped"] == 1
    events = m.record(SupervisionReport("providers2/b", "stopped"), now=6.0)
    assert [(e.alert.service, e.alert.resolution) for e in events] == [("b", "stopped")]


# ================================================================================ health


def _health_of(m: MonitorState) -> dict[str, HealthStatus]:
    return {name: h.status for name, h in m.health(now=0.0).services.items()}


def test_health_rules_per_service() -> None:
    """Open/isolated breaker or critical ratio: unhealthy; half-open or high rate: degraded;
    too few calls to judge: unknown."""
    m = make(min_calls=2, high_error_rate=0.4, critical_error_ratio=0.9)
    m.record(ok("fine", at=0.0), now=0.0)
    m.record(ok("fine", at=0.0), now=0.0)
    m.record(ok("quiet", at=0.0), now=0.0)
    m.record(BreakerReport("open", "closed", "open", 0.0), now=0.0)
    m.record(BreakerReport("iso", "closed", "isolated", 0.0), now=0.0)
    m.record(BreakerReport("half", "open", "half_open", 0.0), now=0.0)
    for _ in range(2):
        m.record(err("failing", at=0.0), now=0.0)  # ratio 1.0 with 2 calls
    for call in (ok("slowburn", 0.0), ok("slowburn", 0.0), err("slowburn", 0.0)):
        m.record(call, now=0.0)
    assert m.record(err("slowburn", at=0.0), now=0.0)[0].alert.rule is AlertRule.HIGH_ERROR_RATE
    # slowburn: 0.4 errors/min reaches the rate threshold; its ratio 0.5 is below 0.9.
    assert _health_of(m) == {
        "failing": HealthStatus.UNHEALTHY,
        "fine": HealthStatus.HEALTHY,
        "half": HealthStatus.DEGRADED,
        "iso": HealthStatus.UNHEALTHY,
        "open": HealthStatus.UNHEALTHY,
        "quiet": HealthStatus.UNKNOWN,
        "slowburn": HealthStatus.DEGRADED,
    }
    report = m.health(now=3.0)
    assert report.status is HealthStatus.DEGRADED
    assert report.checked_at == 3.0
    assert report.active_alerts == len(m.alerts().active)
    assert report.services["half"].reasons == [
        "circuit breaker half_open",
        "too few calls to judge (0 in the window, fewer than 2)",
    ]
    assert report.services["quiet"].reasons == [
        "too few calls to judge (1 in the window, fewer than 2)"
    ]


def test_silence_is_not_recovery() -> None:
    """After a burst of failures and then no calls at all, the alerts stay active and health
    never reads healthy, a day later too; a service with too few calls is unknown."""
    m = make(min_calls=10)
    for i in range(100):
        m.record(err("a", at=float(i) / 10), now=float(i) / 10)
    rules = {a.rule for a in m.alerts().active}
    assert rules == {AlertRule.HIGH_ERROR_RATE, AlertRule.CRITICAL_ERROR_RATIO}
    for check in range(1, 24 * 60 + 1):  # a check a minute for a day, no calls
        assert m.evaluate(60.0 * check) == []
    report = m.health(now=86_400.0)
    assert report.services["a"].status is HealthStatus.UNHEALTHY
    assert report.status is HealthStatus.UNHEALTHY  # its only service
    assert {a.rule for a in m.alerts().active} == rules
    fresh = make(min_calls=10)
    for i in range(9):
        fresh.record(ok("b", at=float(i)), now=float(i))
    assert fresh.health(now=9.0).services["b"].status is HealthStatus.UNKNOWN
    assert fresh.health(now=9.0).status is HealthStatus.UNKNOWN
    fresh.record(ok("b", at=9.0), now=9.0)
    assert fresh.health(now=9.0).status is HealthStatus.HEALTHY
    assert fresh.health(now=400.0).status is HealthStatus.UNKNOWN  # the window emptied


def test_overall_health() -> None:
    """Unknown with no data; unhealthy only when every service is, or a supervisor gave up."""
    m = make(min_calls=1)
    assert m.health(now=0.0).status is HealthStatus.UNKNOWN
    assert m.health(now=0.0).reasons == ["no service has reported yet"]
    m.record(ok("a", at=0.0), now=0.0)
    m.record(ok("b", at=0.0), now=0.0)
    m.record(BreakerReport("b", "closed", "open", 0.0), now=0.0)
    assert m.health(now=0.0).status is HealthStatus.DEGRADED
    m.record(BreakerReport("a", "closed", "open", 0.0), now=0.0)
    report = m.health(now=0.0)
    assert report.status is HealthStatus.UNHEALTHY
    assert "every service is unhealthy" in report.reasons
    m.record(BreakerReport("a", "open", "closed", 1.0), now=1.0)
    m.record(BreakerReport("b", "open", "closed", 1.0), now=1.0)
    assert m.health(now=1.0).status is HealthStatus.HEALTHY
    m.record(SupervisionReport("root/providers", "gave_up", "too many restarts"), now=2.0)
    report = m.health(now=2.0)
    assert report.status is HealthStatus.UNHEALTHY
    assert report.reasons == ["supervisor 'root/providers' gave up"]


def test_a_shared_dependency_degrades_health_while_unavailable_and_fails_it_when_failed() -> None:
    """A dependency reported unavailable makes health degraded with its reason (redacted),
    one that failed makes it unhealthy; reported ok again, health is what the services say;
    each dependency shows in the report's ``dependencies`` with its last state."""
    m = make(min_calls=1)
    m.record(ok("a", at=0.0), now=0.0)
    assert m.health(now=0.0).status is HealthStatus.HEALTHY
    down = DependencyReport(
        "saga journal", "unavailable", "connection refused (password=hunter2)", "pg:5432", 5.0
    )
    m.record(down, now=1.0)
    report = m.health(now=1.0)
    assert report.status is HealthStatus.DEGRADED
    (reason,) = report.reasons
    assert reason.startswith("saga journal unavailable: connection refused")
    assert "hunter2" not in reason
    shown = report.dependencies["saga journal"]
    assert (shown.status, shown.state, shown.where, shown.since) == (
        HealthStatus.UNHEALTHY,
        "unavailable",
        "pg:5432",
        5.0,
    )
    m.record(DependencyReport("saga journal", "failed", "schema damaged", at=6.0), now=2.0)
    report = m.health(now=2.0)
    assert report.status is HealthStatus.UNHEALTHY
    assert report.reasons == ["saga journal failed: schema damaged"]
    m.record(DependencyReport("saga journal", "ok", "ignored when ok", at=7.0), now=3.0)
    report = m.health(now=3.0)
    assert report.status is HealthStatus.HEALTHY
    assert report.reasons == []
    assert report.dependencies["saga journal"].reason == ""
    # With no service data at all, an unavailable dependency still shows: degraded.
    fresh = make()
    fresh.record(DependencyReport("fleet store", "unavailable", "timeout", at=1.0), now=1.0)
    assert fresh.health(now=1.0).status is HealthStatus.DEGRADED


@pytest.mark.parametrize(
    ("report", "field"),
    [
        (DependencyReport("", "ok"), "name"),
        (DependencyReport("journal\x1b[2J", "ok"), "name"),
        (DependencyReport("journal", "sleepy"), "status"),
        (DependencyReport("journal", "ok", reason=3), "reason"),  # type: ignore[arg-type]
        (DependencyReport("journal", "ok", at=math.nan), "at"),
    ],
)
def test_a_bad_dependency_report_is_refused_and_changes_nothing(
    report: DependencyReport, field: str
) -> None:
    m = make()
    with pytest.raises(InvalidReport) as info:
        m.record(report, now=0.0)
    assert info.value.field == field
    assert m.health(now=0.0).dependencies == {}


def test_dependencies_are_bounded() -> None:
    """At most 64 dependencies are tracked; a report for one more is refused, updates of
    known ones are not."""
    m = make()
    for i in range(64):
        m.record(DependencyReport(f"d{i}", "ok"), now=0.0)
    with pytest.raises(InvalidReport, match="at most 64"):
        m.record(DependencyReport("one more", "ok"), now=0.0)
    m.record(DependencyReport("d0", "unavailable", "down"), now=0.0)
    assert len(m.health(now=0.0).dependencies) == 64


# ================================================================================ JSON bodies


def test_query_results_are_json_bodies() -> None:
    """Every query result encodes to JSON and decodes back to an equal value."""
    m = make(min_calls=1)
    m.record(ok("a", at=0.0), now=0.0)
    m.record(err("a", at=1.0), now=1.0)
    m.record(BreakerReport("a", "closed", "open", 2.0, "x"), now=2.0)
    results: list[tuple[Any, type]] = [
        (m.health(now=3.0), HealthReport),
        (m.breakers(), BreakerList),
        (m.metrics(now=3.0), MetricsReport),
        (m.service_metrics("a", now=3.0), ServiceMetrics),
        (m.recent_errors(), RecentErrors),
        (m.error_rate("a", window=60, now=3.0), ErrorRate),
        (m.alerts(include_resolved=True), type(m.alerts())),
    ]
    for value, kind in results:
        data = msgspec.json.encode(value)
        assert msgspec.json.decode(data, type=kind) == value
    body = msgspec.json.decode(msgspec.json.encode(m.health(now=3.0)))
    assert body["status"] == "unhealthy"
    assert body["services"]["a"]["breaker"] == "open"


def test_reports_round_trip_as_tagged_messages() -> None:
    """Reports are tagged structs: a union decodes to the right type."""
    reports = [
        ok("a", at=1.0),
        err("a", at=2.0),
        BreakerReport("a", "closed", "open", 3.0, "r"),
        SupervisionReport("root", "crashed", "ValueError"),
    ]
    union = CallReport | BreakerReport | SupervisionReport
    for report in reports:
        assert msgspec.json.decode(msgspec.json.encode(report), type=union) == report


def test_statistics_count_reports() -> None:
    """statistics() counts services, reports, supervision kinds and alerts."""
    m = make(min_calls=1)
    m.record(ok("a", at=0.0), now=0.0)
    m.record(err("a", at=0.0), now=0.0)
    m.record(SupervisionReport("root/a", "crashed"), now=0.0)
    m.record(SupervisionReport("root/a", "restarted"), now=0.0)
    stats = m.statistics()
    assert (stats.services, stats.reports, stats.recent_errors) == (1, 4, 1)
    assert stats.supervision == {
        "crashed": 1,
        "gave_up": 0,
        "restarted": 1,
        "started": 0,
        "stopped": 0,
    }
    assert stats.alerts_raised == stats.active_alerts == 1


# ================================================================================ stateful


SERVICES = ["alpha", "beta", "gamma"]
CATEGORIES = [ErrorCategory.TIMEOUT, ErrorCategory.NETWORK, ErrorCategory.VALIDATION, None]
# Small numbers so the rules fire often: a 60-second window of six 10-second buckets.
MACHINE_SETTINGS = MonitorSettings(
    window=60.0,
    buckets=6,
    latency_buckets=3,
    high_error_rate=6.0,
    critical_error_ratio=0.5,
    min_calls=4,
    resolve_factor=0.5,
    resolve_checks=2,
    recent_errors=5,
    resolved_alerts=4,
    max_services=10,
)
RATE, RATIO, BREAKER = (
    AlertRule.HIGH_ERROR_RATE,
    AlertRule.CRITICAL_ERROR_RATIO,
    AlertRule.BREAKER_OPEN,
)


class MonitorMachine(RuleBasedStateMachine):
    """Random reports, time steps, checks, resets and breaker moves against a list model."""

    @initialize()
    def setup(self) -> None:
        self.m = MonitorState(MACHINE_SETTINGS, wall_clock=FakeWall())
        self.now = 1_000.0
        # Model: reports per service since its last reset, as (at, ok, category, retried).
        self.reports: dict[str, list[tuple[float, bool, ErrorCategory | None, bool]]] = {}
        self.totals: dict[str, list[int]] = {}  # calls, errors, retries
        self.errors_log: list[tuple[str, float]] = []
        self.breaker: dict[str, str] = {}
        self.active: set[tuple[AlertRule, str]] = set()
        self.streak: dict[tuple[AlertRule, str], int] = {}

    # ------------------------------------------------------------------ model helpers

    def k(self) -> int:
        return int(self.now // MACHINE_SETTINGS.bucket_width)

    def window_counts(self, service: str, buckets: int = 6) -> tuple[int, int, int]:
        k = self.k()
        live = [
            r
            for r in self.reports.get(service, [])
            if k - buckets < int(r[0] // MACHINE_SETTINGS.bucket_width) <= k
        ]
        return (
            len(live),
            sum(1 for r in live if not r[1]),
            sum(1 for r in live if r[3]),
        )

    def span(self, whole: int) -> float:
        """The current bucket's elapsed part plus ``whole`` buckets before it."""
        width = MACHINE_SETTINGS.bucket_width
        return whole * width + min(width, max(0.0, self.now - self.k() * width))

    def values(self, service: str) -> tuple[float | None, float | None]:
        """Rate and ratio, or None for each when there are too few calls to judge."""
        calls, errors, _ = self.window_counts(service)
        if calls < MACHINE_SETTINGS.min_calls:
            return None, None
        return errors * 60.0 / self.span(5), errors / calls

    def intake_raise(self, service: str) -> None:
        rate, ratio = self.values(service)
        if rate is not None and rate >= MACHINE_SETTINGS.high_error_rate:
            self.raise_(RATE, service)
        if ratio is not None and ratio >= MACHINE_SETTINGS.critical_error_ratio:
            self.raise_(RATIO, service)

    def raise_(self, rule: AlertRule, service: str) -> None:
        if (rule, service) not in self.active:
            self.active.add((rule, service))
            self.streak.pop((rule, service), None)

    def resolve(self, rule: AlertRule, service: str) -> None:
        self.active.discard((rule, service))
        self.streak.pop((rule, service), None)

    # ------------------------------------------------------------------ rules

    def one(
        self,
        service: str,
        is_ok: bool,
        category: ErrorCategory | None,
        delay: float,
        latency: float,
        retried: bool,
    ) -> None:
        at = self.now - delay
        report = CallReport(service, is_ok, latency, at, category, "token=s3cret", retried)
        self.m.record(report, now=self.now)
        self.reports.setdefault(service, []).append((at, is_ok, category, retried))
        totals = self.totals.setdefault(service, [0, 0, 0])
        totals[0] += 1
        totals[1] += not is_ok
        totals[2] += retried
        self.breaker.setdefault(service, "closed")
        if not is_ok:
            self.errors_log.append((service, at))
            self.intake_raise(service)

    @rule(
        service=st.sampled_from(SERVICES),
        is_ok=st.booleans(),
        category=st.sampled_from(CATEGORIES),
        delay=st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=90.0)),
        latency=st.floats(min_value=0.0, max_value=100.0),
        retried=st.booleans(),
    )
    def report(
        self,
        service: str,
        is_ok: bool,
        category: ErrorCategory | None,
        delay: float,
        latency: float,
        retried: bool,
    ) -> None:
        self.one(service, is_ok, category, delay, latency, retried)

    @rule(
        service=st.sampled_from(SERVICES),
        outcomes=st.lists(
            st.tuples(st.booleans(), st.sampled_from([0.0, 0.0, 5.0, 25.0])),
            min_size=1,
            max_size=8,
        ),
    )
    def burst(self, service: str, outcomes: list[tuple[bool, float]]) -> None:
        """Several reports at once: enough traffic for the threshold rules to fire."""
        for is_ok, delay in outcomes:
            self.one(service, is_ok, ErrorCategory.NETWORK, delay, 0.05, not is_ok)

    @rule(dt=st.one_of(st.floats(min_value=0.0, max_value=15.0), st.sampled_from([10.0, 200.0])))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(dt=st.sampled_from([10.0, 20.0, 30.0]))
    def periodic_check(self, dt: float) -> None:
        """What the actor does every check interval: time passes, then a check."""
        self.now += dt
        self.evaluate()

    @rule()
    def evaluate(self) -> None:
        self.m.evaluate(self.now)
        s = MACHINE_SETTINGS
        for service in self.breaker:
            rate, ratio = self.values(service)
            for rule_, value, threshold in ((RATE, rate, s.high_error_rate),
                                            (RATIO, ratio, s.critical_error_ratio)):  # fmt: skip
                key = (rule_, service)
                if value is None:  # not measured: neither raises nor moves the streak
                    continue
                if value >= threshold:
                    if key in self.active:
                        self.streak[key] = 0
                    else:
                        self.raise_(rule_, service)
                elif key in self.active:
                    if value >= threshold * s.resolve_factor:
                        self.streak[key] = 0
                    else:
                        self.streak[key] = self.streak.get(key, 0) + 1
                        if self.streak[key] >= s.resolve_checks:
                            self.resolve(rule_, service)

    @precondition(lambda self: bool(self.breaker))
    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        service = data.draw(st.sampled_from(sorted(self.breaker)))
        self.m.reset(service, now=self.now)
        # Only the windows: the totals are counters for the life of the monitor.
        self.reports[service] = []
        self.resolve(RATE, service)
        self.resolve(RATIO, service)

    @rule(
        service=st.sampled_from(SERVICES),
        new=st.sampled_from(["closed", "open", "half_open", "isolated"]),
    )
    def move_breaker(self, service: str, new: str) -> None:
        old = self.breaker.get(service, "closed")
        self.m.record(BreakerReport(service, old, new, self.now, "why"), now=self.now)
        self.breaker[service] = new
        self.reports.setdefault(service, [])
        self.totals.setdefault(service, [0, 0, 0])
        if new in ("open", "isolated"):
            self.raise_(BREAKER, service)
        elif new == "closed":
            self.resolve(BREAKER, service)

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        """Acknowledging silences: the alert stays active until its condition clears."""
        alert = data.draw(st.sampled_from(self.m.alerts().active))
        event = self.m.acknowledge(alert.id, now=self.now)
        assert (event.kind, event.alert.id, event.alert.resolution) == (
            "acknowledged",
            alert.id,
            None,
        )
        assert event.alert.acknowledged_at is not None

    @precondition(lambda self: bool(self.breaker))
    @rule(data=st.data(), window=st.floats(min_value=0.5, max_value=60.0))
    def check_error_rate(self, data: st.DataObject, window: float) -> None:
        service = data.draw(st.sampled_from(sorted(self.breaker)))
        whole = min(5, max(1, math.ceil(window / 10 - 1e-9)))
        calls, errors, _ = self.window_counts(service, whole + 1)
        got = self.m.error_rate(service, window, now=self.now)
        assert (got.calls, got.errors, got.window) == (calls, errors, self.span(whole))
        assert got.rate_per_min == errors * 60.0 / self.span(whole)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def windows_and_totals_match(self) -> None:
        if not hasattr(self, "m"):
            return
        assert self.m.services() == sorted(self.breaker)
        for service in self.breaker:
            metrics = self.m.service_metrics(service, now=self.now)
            calls, errors, retries = self.window_counts(service)
            assert (metrics.calls, metrics.errors, metrics.retries) == (calls, errors, retries)
            assert sum(metrics.errors_by_category.values()) == errors
            assert [
                metrics.totals.calls,
                metrics.totals.errors,
                metrics.totals.retries,
            ] == self.totals[service]
            assert metrics.breaker == self.breaker[service]
            assert (metrics.latency["p50"] is None) == (self.latency_empty(service))

    def latency_empty(self, service: str) -> bool:
        k = int(self.now // MACHINE_SETTINGS.latency_bucket_width)
        return not any(
            k - 3 < int(r[0] // MACHINE_SETTINGS.latency_bucket_width) <= k
            for r in self.reports.get(service, [])
        )

    @invariant()
    def alerts_match(self) -> None:
        if not hasattr(self, "m"):
            return
        got = {(a.rule, a.service) for a in self.m.alerts().active}
        assert got == self.active
        assert len(self.m.alerts(include_resolved=True).resolved) <= 4

    @invariant()
    def recent_errors_match(self) -> None:
        if not hasattr(self, "m"):
            return
        page = self.m.recent_errors(limit=5)
        expected = list(reversed(self.errors_log))[:5]
        assert [(r.service, r.at) for r in page.items] == expected
        assert all(r.message == "token=[REDACTED]" for r in page.items)


TestMonitorMachine = MonitorMachine.TestCase


def test_model_bucket_arithmetic_on_an_example() -> None:
    """The reference model's bucket arithmetic agrees with the state on a fixed example."""
    m = MonitorState(MACHINE_SETTINGS, wall_clock=FakeWall())
    for t in (1000.0, 1009.9, 1010.0, 1059.9):
        m.record(err("alpha", at=t), now=t)
    # At 1059.9 the head bucket is 105; live buckets 100..105 hold all four reports.
    assert m.service_metrics("alpha", now=1059.9).errors == 4
    assert m.service_metrics("alpha", now=1060.0).errors == 2


@pytest.mark.parametrize("name", ["a\x1b[2Jb", "line\nbreak", "bidi\u202eevil", "nul\x00"])
def test_non_printable_service_names_are_refused_at_intake(name: str) -> None:
    """A service name with control, separator or format characters is refused, not tracked."""
    monitor = make()
    with pytest.raises(InvalidReport, match="printable") as info:
        monitor.record(CallReport(name, True, 0.01, 0.0), 0.0)
    assert info.value.field == "service"
    with pytest.raises(InvalidReport, match="printable"):
        monitor.record(BreakerReport(name, "closed", "open", 0.0), 0.0)
    assert monitor.services() == []
