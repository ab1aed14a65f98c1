"""Retry budget: Finagle semantics against a reference model, and the real-time guarantee."""

from __future__ import annotations

import copy
import datetime
import math
from fractions import Fraction

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors._errors import ConfigError
from actors._policies._budget import BUCKETS, SCALE, BudgetSettings, RetryBudget
from tests.strategies_retry import budget_settings, time_steps


class BudgetModel:
    """The obviously-correct budget: lists of (bucket, time) and a sum over the window."""

    def __init__(self, settings: BudgetSettings) -> None:
        self.settings = settings
        self.width = settings.ttl / BUCKETS
        self.deposit_units = math.floor(Fraction(settings.retry_ratio) * SCALE)
        self.reserve = math.floor(
            Fraction(settings.min_retries_per_s) * Fraction(settings.ttl) * SCALE
        )
        self.latest: int | None = None
        self.deposits: list[tuple[int, float]] = []
        self.withdrawals: list[tuple[int, float]] = []

    def bucket(self, now: float) -> int:
        """The bucket an input at ``now`` lands in (the latest one seen if time stepped back)."""
        b = math.floor(now / self.width)
        return b if self.latest is None else max(b, self.latest)

    def _input(self, now: float) -> int:
        self.latest = self.bucket(now)
        return self.latest

    def units(self, now: float) -> int:
        b = self.bucket(now)
        deposits = sum(1 for d, _ in self.deposits if d > b - BUCKETS)
        withdrawals = sum(1 for w, _ in self.withdrawals if w >= b - BUCKETS)
        return self.reserve + self.deposit_units * deposits - SCALE * withdrawals

    def deposit(self, now: float) -> None:
        self.deposits.append((self._input(now), now))

    def try_withdraw(self, now: float) -> bool:
        if self.units(now) >= SCALE:
            self.withdrawals.append((self._input(now), now))
            return True
        self._input(now)
        return False

    def balance(self, now: float) -> int:
        """The balance an observer sees at ``now`` (changes nothing)."""
        return max(0, self.units(now) // SCALE)


class BudgetMachine(RuleBasedStateMachine):
    """RetryBudget behaves exactly like BudgetModel, and never breaks the real-time bound."""

    @initialize(
        settings=budget_settings(),
        origin=st.sampled_from([0.0, -1000.0, 123456.5, 1e7]),
    )
    def setup(self, settings: BudgetSettings, origin: float) -> None:
        self.budget = RetryBudget(settings)
        self.model = BudgetModel(settings)
        self.now = origin
        self.granted = 0
        self.refused = 0

    @rule(step=time_steps)
    def advance(self, step: float) -> None:
        self.now += step

    @rule(count=st.integers(min_value=1, max_value=5))
    def deposit(self, count: int) -> None:
        for _ in range(count):
            self.budget.deposit(self.now)
            self.model.deposit(self.now)

    @rule()
    def try_withdraw(self) -> None:
        expected = self.model.try_withdraw(self.now)
        assert self.budget.try_withdraw(self.now) is expected
        if expected:
            self.granted += 1
            self.check_real_time_bound()
        else:
            self.refused += 1

    def check_real_time_bound(self) -> None:
        s = self.model.settings
        start = self.now - s.ttl
        retries = sum(1 for _, t in self.model.withdrawals if start < t <= self.now)
        requests = sum(1 for _, t in self.model.deposits if start < t <= self.now)
        floor = Fraction(s.min_retries_per_s) * Fraction(s.ttl)
        assert retries <= Fraction(s.retry_ratio) * requests + floor

    @precondition(lambda self: hasattr(self, "budget"))
    @invariant()
    def balance_matches_the_model(self) -> None:
        # Observed on a copy: balance(now) ages the budget it is asked about, and aging the
        # budget under test between inputs would hide an input path that forgets to.
        assert copy.deepcopy(self.budget).balance(self.now) == self.model.balance(self.now)

    @precondition(lambda self: hasattr(self, "budget"))
    @invariant()
    def statistics_count_every_call(self) -> None:
        stats = self.budget.statistics()
        assert stats.total_withdrawals == self.granted
        assert stats.total_rejections == self.refused
        assert stats.total_deposits == len(self.model.deposits)


TestBudgetMachine = BudgetMachine.TestCase


def test_a_fresh_budget_allows_the_floor_then_refuses() -> None:
    """With no requests, exactly min_retries_per_s * ttl retries are allowed."""
    budget = RetryBudget(BudgetSettings(ttl=10.0, min_retries_per_s=2.0, retry_ratio=0.2))
    granted = sum(budget.try_withdraw(0.0) for _ in range(50))
    assert granted == 20
    assert budget.balance(0.0) == 0


def test_requests_pay_for_retries_at_the_ratio() -> None:
    """Without a floor, ten requests at ratio 0.1 pay for exactly one retry."""
    budget = RetryBudget(BudgetSettings(min_retries_per_s=0.0, retry_ratio=0.1))
    for _ in range(10):
        budget.deposit(5.0)
    assert budget.balance(5.0) == 1
    assert budget.try_withdraw(5.0)
    assert not budget.try_withdraw(5.0)


def test_deposits_expire_after_ttl() -> None:
    """A deposit no longer counts once its bucket has left the window."""
    budget = RetryBudget(BudgetSettings(ttl=10.0, min_retries_per_s=0.0, retry_ratio=1.0))
    budget.deposit(0.0)
    assert budget.balance(8.9) == 1
    assert budget.balance(10.0) == 0
    assert not budget.try_withdraw(10.0)


def test_withdrawals_are_remembered_one_bucket_longer_than_deposits() -> None:
    """A retry keeps counting for up to ttl + one bucket: the bound holds in real time."""
    budget = RetryBudget(BudgetSettings(ttl=10.0, min_retries_per_s=0.1, retry_ratio=0.0))
    assert budget.try_withdraw(0.5)
    assert not budget.try_withdraw(10.4)
    assert budget.try_withdraw(11.0)


def test_an_empty_budget_never_allows_a_retry() -> None:
    """Both the floor and the ratio at zero: no retry ever."""
    budget = RetryBudget(BudgetSettings(min_retries_per_s=0.0, retry_ratio=0.0))
    for _ in range(100):
        budget.deposit(1.0)
    assert not budget.try_withdraw(1.0)


def test_a_clock_stepping_back_counts_as_the_latest_time() -> None:
    """An earlier now does not bring back expired deposits."""
    budget = RetryBudget(BudgetSettings(ttl=1.0, min_retries_per_s=0.0, retry_ratio=1.0))
    budget.deposit(0.0)
    assert budget.balance(5.0) == 0
    assert budget.balance(0.0) == 0
    budget.deposit(0.0)  # lands in the latest bucket
    assert budget.balance(5.5) == 1


def test_a_failing_dependency_sees_at_most_ratio_more_load() -> None:
    """Every call failing and retried as long as allowed: retries <= ratio x requests + floor."""
    settings = BudgetSettings()
    budget = RetryBudget(settings)
    requests = retries = 0
    seconds = 120
    for tick in range(seconds * 100):  # 100 requests per second, every attempt fails
        now = tick / 100
        budget.deposit(now)
        requests += 1
        while budget.try_withdraw(now):
            retries += 1
    bound = settings.retry_ratio * requests + settings.min_retries_per_s * (seconds + settings.ttl)
    assert retries <= bound
    assert retries >= 0.8 * settings.retry_ratio * requests  # and the budget is not useless


def test_statistics_report_the_window() -> None:
    """statistics() counts what is in the window as of the latest time seen."""
    budget = RetryBudget(BudgetSettings(min_retries_per_s=0.0, retry_ratio=0.5))
    budget.deposit(0.0)
    budget.deposit(0.0)
    assert budget.try_withdraw(0.0)
    assert not budget.try_withdraw(0.0)
    stats = budget.statistics()
    assert (stats.deposits_in_window, stats.withdrawals_in_window, stats.balance) == (2, 1, 0)
    assert (stats.total_deposits, stats.total_withdrawals, stats.total_rejections) == (2, 1, 1)


def test_ttl_accepts_a_timedelta() -> None:
    """ttl may be a timedelta; it is stored as float seconds."""
    assert BudgetSettings(ttl=datetime.timedelta(seconds=30)).ttl == 30.0


@pytest.mark.parametrize(
    ("kwargs", "path", "message"),
    [
        ({"ttl": 0}, "ttl", "must be a duration > 0"),
        ({"ttl": -1.0}, "ttl", "must be a duration > 0"),
        ({"min_retries_per_s": -1}, "min_retries_per_s", "must be >= 0"),
        ({"retry_ratio": -0.1}, "retry_ratio", "must be between 0 and 1000"),
        ({"retry_ratio": 1001}, "retry_ratio", "must be between 0 and 1000"),
        ({"retry_ratio": math.nan}, "retry_ratio", "finite"),
        ({"retry_ratio": "0.2"}, "retry_ratio", "must be a number, not str"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_field(
    kwargs: dict[str, object], path: str, message: str
) -> None:
    """Each invalid value raises ConfigError whose path is the field and message the rule."""
    with pytest.raises(ConfigError, match=message) as info:
        BudgetSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.path == path
