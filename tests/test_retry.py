"""Retry policy: the four reasons to give up, deadlines, the budget, presets and validation."""

from __future__ import annotations

import datetime
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import ConfigError, ErrorCategory
from actors._policies._backoff import Backoff, BackoffKind, BackoffSettings, Jitter
from actors._policies._budget import BudgetSettings, RetryBudget
from actors._policies._retry import (
    RETRY_PRESETS,
    TRANSIENT_CATEGORIES,
    GiveUp,
    GiveUpReason,
    RetryAt,
    RetryPolicy,
    RetrySettings,
)
from tests.strategies_retry import categories, retry_settings, seconds

C = ErrorCategory
NO_JITTER = BackoffSettings(base_delay=1.0, jitter="none")


def policy(**kwargs: object) -> RetryPolicy:
    budget = kwargs.pop("budget", None)
    settings = RetrySettings(**kwargs)  # type: ignore[arg-type]
    return RetryPolicy(settings, budget=budget, random=random.Random(0))  # type: ignore[arg-type]


def test_transient_categories_are_those_of_the_category_table() -> None:
    """The default retry_on is every category whose table row says transient."""
    assert {C.TIMEOUT, C.NETWORK, C.RATE_LIMIT, C.DEPENDENCY} == TRANSIENT_CATEGORIES
    assert RetrySettings().retry_on == TRANSIENT_CATEGORIES


def test_a_non_transient_failure_gives_up_at_once() -> None:
    """A validation error is not retried: GiveUp(not_transient) after one attempt."""
    state = policy().begin(0.0)
    assert state.on_failure(0.1, C.VALIDATION) == GiveUp(GiveUpReason.NOT_TRANSIENT, 1)
    assert state.finished


def test_transient_failures_retry_until_attempts_are_exhausted() -> None:
    """Three attempts: two RetryAt with growing delays, then attempts_exhausted."""
    state = policy(max_attempts=3, backoff=NO_JITTER).begin(100.0)
    assert state.on_failure(100.0, C.TIMEOUT) == RetryAt(delay=1.0, at=101.0, attempt=2)
    assert state.on_failure(101.0, C.NETWORK) == RetryAt(delay=2.0, at=103.0, attempt=3)
    assert state.on_failure(103.0, C.TIMEOUT) == GiveUp(GiveUpReason.ATTEMPTS_EXHAUSTED, 3)


def test_a_retry_whose_delay_reaches_the_deadline_is_not_made() -> None:
    """If now + delay >= deadline, give up now instead of sleeping and failing anyway."""
    state = policy(max_attempts=10, backoff=NO_JITTER).begin(0.0, deadline=4.0)
    assert isinstance(state.on_failure(0.5, C.TIMEOUT), RetryAt)  # waits 1 s, until 1.5
    assert isinstance(state.on_failure(1.5, C.TIMEOUT), RetryAt)  # waits 2 s, until 3.5
    assert state.on_failure(3.5, C.TIMEOUT) == GiveUp(GiveUpReason.DEADLINE, 3)


def test_total_timeout_sets_the_deadline_unless_the_caller_is_earlier() -> None:
    """deadline = min(caller's deadline, now + total_timeout); None means no limit."""
    assert policy(total_timeout=30.0).begin(10.0).deadline == 40.0
    assert policy(total_timeout=30.0).begin(10.0, deadline=25.0).deadline == 25.0
    assert policy(total_timeout=30.0).begin(10.0, deadline=99.0).deadline == 40.0
    assert policy(total_timeout=None).begin(10.0).deadline == math.inf


def test_attempt_timeout_is_capped_by_the_time_left() -> None:
    """attempt_timeout(now) = min(attempt_timeout, deadline - now), and 0 once past."""
    state = policy(attempt_timeout=10.0).begin(0.0, deadline=25.0)
    assert state.attempt_timeout(0.0) == 10.0
    assert state.attempt_timeout(20.0) == 5.0
    assert state.attempt_timeout(30.0) == 0.0


def test_a_longer_retry_after_sets_the_delay() -> None:
    """The provider's Retry-After wins over a shorter backoff."""
    state = policy(backoff=NO_JITTER).begin(0.0)
    decision = state.on_failure(0.0, C.RATE_LIMIT, retry_after=7.5)
    assert decision == RetryAt(delay=7.5, at=7.5, attempt=2)


def test_a_retry_after_past_the_deadline_gives_up() -> None:
    """Retry-After counts in the deadline check: asked to wait past it, give up now."""
    state = policy(backoff=NO_JITTER).begin(0.0, deadline=5.0)
    assert state.on_failure(0.0, C.RATE_LIMIT, retry_after=30.0) == GiveUp(GiveUpReason.DEADLINE, 1)


def test_an_empty_budget_refuses_the_retry() -> None:
    """With the budget spent, a transient failure gives up with reason budget."""
    budget = RetryBudget(BudgetSettings(min_retries_per_s=0.0, retry_ratio=0.0))
    state = policy(budget=budget).begin(0.0)
    assert state.on_failure(0.0, C.TIMEOUT) == GiveUp(GiveUpReason.BUDGET, 1)
    assert budget.statistics().total_rejections == 1


def test_begin_deposits_and_retries_withdraw() -> None:
    """Each call deposits once; each granted retry withdraws once."""
    budget = RetryBudget(BudgetSettings(min_retries_per_s=0.0, retry_ratio=1.0))
    p = policy(budget=budget, backoff=NO_JITTER)
    state = p.begin(0.0)
    assert isinstance(state.on_failure(0.0, C.TIMEOUT), RetryAt)
    assert state.on_failure(1.0, C.TIMEOUT) == GiveUp(GiveUpReason.BUDGET, 2)
    stats = budget.statistics()
    assert (stats.total_deposits, stats.total_withdrawals) == (1, 1)


def test_the_budget_is_not_spent_when_another_reason_gives_up() -> None:
    """The budget is asked last: a call giving up for another reason spends nothing."""
    budget = RetryBudget(BudgetSettings(min_retries_per_s=1.0, retry_ratio=0.0))
    state = policy(budget=budget, max_attempts=1).begin(0.0)
    assert state.on_failure(0.0, C.TIMEOUT).reason is GiveUpReason.ATTEMPTS_EXHAUSTED  # type: ignore[union-attr]
    assert budget.balance(0.0) == 10


def test_a_finished_state_cannot_be_used_again() -> None:
    """on_failure after giving up raises RuntimeError."""
    state = policy().begin(0.0)
    state.on_failure(0.0, C.VALIDATION)
    with pytest.raises(RuntimeError, match="gave up after 1 attempt"):
        state.on_failure(0.0, C.TIMEOUT)


def test_statistics_count_calls_retries_and_give_ups() -> None:
    """statistics() counts calls, retries and give-ups by reason."""
    p = policy(max_attempts=2, backoff=NO_JITTER)
    p.begin(0.0).on_failure(0.0, C.VALIDATION)
    state = p.begin(0.0)
    state.on_failure(0.0, C.TIMEOUT)
    state.on_failure(1.0, C.TIMEOUT)
    stats = p.statistics()
    assert (stats.calls, stats.retries) == (2, 1)
    assert stats.gave_up[GiveUpReason.NOT_TRANSIENT] == 1
    assert stats.gave_up[GiveUpReason.ATTEMPTS_EXHAUSTED] == 1
    assert stats.gave_up[GiveUpReason.BUDGET] == 0


@given(
    settings=retry_settings(),
    failures=st.lists(st.tuples(categories, st.none() | seconds, seconds), max_size=12),
    seed=st.integers(min_value=0, max_value=2**16),
    deadline=st.none() | seconds,
)
def test_decisions_follow_the_documented_order(
    settings: RetrySettings,
    failures: list[tuple[ErrorCategory, float | None, float]],
    seed: int,
    deadline: float | None,
) -> None:
    """Every decision equals the reference: not_transient, attempts, deadline, then retry."""
    state = RetryPolicy(settings, random=random.Random(seed)).begin(0.0, deadline)
    reference = Backoff(settings.backoff, random=random.Random(seed))
    limit = math.inf if settings.total_timeout is None else settings.total_timeout
    if deadline is not None:
        limit = min(limit, deadline)
    now, attempt, previous = 0.0, 1, None
    for category, retry_after, elapsed in failures:
        now += elapsed
        decision = state.on_failure(now, category, retry_after)
        if category not in settings.retry_on:
            assert decision == GiveUp(GiveUpReason.NOT_TRANSIENT, attempt)
            return
        if attempt >= settings.max_attempts:
            assert decision == GiveUp(GiveUpReason.ATTEMPTS_EXHAUSTED, attempt)
            return
        delay = reference.delay(attempt, previous=previous, retry_after=retry_after)
        if now + delay >= limit:
            assert decision == GiveUp(GiveUpReason.DEADLINE, attempt)
            return
        attempt += 1
        previous = delay
        assert decision == RetryAt(delay=delay, at=now + delay, attempt=attempt)
        assert decision.at < state.deadline
        assert 0.0 <= state.attempt_timeout(now + delay) <= settings.attempt_timeout


def test_presets_reproduce_the_seed_table() -> None:
    """openai/anthropic 4 x 2 s exponential+jitter, ollama 3 x 100 ms constant, default 3 x 1 s."""
    for name in ("openai", "anthropic"):
        preset = RETRY_PRESETS[name]
        assert preset.max_attempts == 4
        assert preset.backoff.base_delay == 2.0
        assert preset.backoff.kind is BackoffKind.EXPONENTIAL
        assert preset.backoff.jitter is Jitter.FULL
    ollama = RETRY_PRESETS["ollama"]
    assert (ollama.max_attempts, ollama.backoff.base_delay) == (3, 0.1)
    assert (ollama.backoff.kind, ollama.backoff.jitter) == (BackoffKind.CONSTANT, Jitter.NONE)
    default = RETRY_PRESETS["default"]
    assert (default.max_attempts, default.backoff.base_delay) == (3, 1.0)
    assert all(p.attempt_timeout == 10.0 for p in RETRY_PRESETS.values())
    with pytest.raises(TypeError):
        RETRY_PRESETS["x"] = default  # type: ignore[index]


def test_retry_on_accepts_names_and_durations_accept_timedelta() -> None:
    """Category names become ErrorCategory members; timedelta becomes float seconds."""
    settings = RetrySettings(
        retry_on=["timeout", C.NETWORK],
        attempt_timeout=datetime.timedelta(seconds=3),
        total_timeout=datetime.timedelta(minutes=2),
    )
    assert settings.retry_on == frozenset({C.TIMEOUT, C.NETWORK})
    assert (settings.attempt_timeout, settings.total_timeout) == (3.0, 120.0)


@pytest.mark.parametrize(
    ("kwargs", "path", "message"),
    [
        ({"max_attempts": 0}, "max_attempts", "must be >= 1"),
        ({"max_attempts": 2.5}, "max_attempts", "must be an integer, not float"),
        ({"max_attempts": True}, "max_attempts", "must be an integer, not bool"),
        ({"attempt_timeout": 0.0}, "attempt_timeout", "must be a duration > 0"),
        ({"total_timeout": -5}, "total_timeout", "must be a duration > 0"),
        ({"retry_on": ["timeout", "flaky"]}, "retry_on", "unknown error category 'flaky'"),
        ({"retry_on": "timeout"}, "retry_on", "must be a collection of category names"),
        ({"backoff": {"base_delay": 1}}, "backoff", "must be BackoffSettings, not dict"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_field(
    kwargs: dict[str, object], path: str, message: str
) -> None:
    """Each invalid value raises ConfigError whose path is the field and message the rule."""
    with pytest.raises(ConfigError, match=message) as info:
        RetrySettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.path == path
