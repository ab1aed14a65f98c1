"""The token-bucket rate limiter: settings, admission and waits, the rate bound as a property,
and a stateful comparison with an exact (Fraction) token-count model."""

from __future__ import annotations

import math
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from actors._errors import ConfigError, RateLimited
from actors._policies._ratelimit import RateLimiter, RateLimiterSettings
from tests.strategies_policies import rate_limiter_settings


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("rate", 0),
        ("rate", -1.0),
        ("rate", math.nan),
        ("rate", math.inf),
        ("rate", True),
        ("rate", "10"),
        ("burst", 0.5),
        ("burst", math.inf),
        ("burst", -3),
    ],
)
def test_bad_settings_name_the_field(field_name: str, value: object) -> None:
    """Invalid rate or burst raises ConfigError with the field as path."""
    options: dict[str, object] = {"rate": 1.0, field_name: value}
    with pytest.raises(ConfigError) as info:
        RateLimiterSettings(**options)  # type: ignore[arg-type]
    assert info.value.path == field_name


def test_burst_defaults_to_one_seconds_worth() -> None:
    """burst=None means max(1, rate)."""
    assert RateLimiterSettings(rate=50).effective_burst == 50.0
    assert RateLimiterSettings(rate=0.2).effective_burst == 1.0
    assert RateLimiterSettings(rate=1, burst=7).effective_burst == 7.0


def test_settings_decode_and_reject_unknown_keys() -> None:
    """RateLimiterSettings decodes from JSON; rate is required; typos are errors."""
    assert msgspec.json.decode(b'{"rate": 2}', type=RateLimiterSettings).rate == 2
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b"{}", type=RateLimiterSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"rate": 2, "burts": 3}', type=RateLimiterSettings)


def test_bucket_starts_full_then_refills_at_the_rate() -> None:
    """burst calls pass at once; then one per 1/rate seconds; a denial takes nothing."""
    limiter = RateLimiter(RateLimiterSettings(rate=2, burst=4))
    assert [limiter.try_acquire(10.0) for _ in range(4)] == [0.0] * 4
    assert limiter.try_acquire(10.0) == 0.5
    assert limiter.try_acquire(10.25) == 0.25  # the denial above consumed nothing
    assert limiter.try_acquire(10.5) == 0.0
    assert limiter.tokens(10.5) == 0.0
    assert limiter.tokens(1e6) == 4.0  # never above burst


def test_multi_token_requests() -> None:
    """A request may take several tokens; more than burst is refused outright."""
    limiter = RateLimiter(RateLimiterSettings(rate=1, burst=3))
    assert limiter.try_acquire(0.0, 2) == 0.0
    assert limiter.try_acquire(0.0, 3) == 2.0
    assert limiter.try_acquire(2.0, 3) == 0.0
    for bad in (0, -1, 3.5, math.nan):
        with pytest.raises(ValueError, match="tokens"):
            limiter.try_acquire(2.0, bad)
    with pytest.raises(TypeError):
        limiter.try_acquire(2.0, "1")  # type: ignore[arg-type]
    assert limiter.statistics(2.0).admitted == 2


def test_acquire_nowait_raises_rate_limited_with_retry_after() -> None:
    """acquire_nowait raises RateLimited carrying the wait and the service name."""
    limiter = RateLimiter(RateLimiterSettings(rate=4, burst=1), name="openai")
    limiter.acquire_nowait(0.0)
    with pytest.raises(RateLimited) as info:
        limiter.acquire_nowait(0.0)
    assert info.value.retry_after == 0.25
    assert info.value.service == "openai"
    assert info.value.transient


def test_time_going_backwards_only_makes_it_stricter() -> None:
    """An earlier now refills nothing and never admits more than the bucket holds."""
    limiter = RateLimiter(RateLimiterSettings(rate=1, burst=2))
    limiter.try_acquire(100.0, 2)
    assert limiter.try_acquire(50.0) > 0.0
    assert 0.0 <= limiter.tokens(50.0) <= 2.0


def test_statistics() -> None:
    """Statistics count admitted calls and tokens and rejections; tokens stay in [0, burst]."""
    limiter = RateLimiter(RateLimiterSettings(rate=1, burst=2), name="x")
    assert limiter.statistics().tokens == 2.0
    limiter.try_acquire(0.0, 1.5)
    limiter.try_acquire(0.0)
    stats = limiter.statistics()
    assert (stats.admitted, stats.admitted_tokens, stats.rejected) == (1, 1.5, 1)
    assert stats.tokens == 0.5
    assert limiter.statistics(10.0).tokens == 2.0
    with pytest.raises(TypeError):
        RateLimiter({"rate": 1})  # type: ignore[arg-type]


@settings(max_examples=200)
@given(
    rate=st.floats(0.01, 1000),
    burst=st.floats(1, 100),
    start=st.floats(-1e6, 1e9),
    steps=st.lists(st.tuples(st.floats(0, 10), st.floats(0.01, 1)), min_size=1, max_size=60),
)
def test_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    """Over any interval of length d at most burst + rate*d tokens are admitted, tokens stay
    within [0, burst], and waiting the returned delay gets the request admitted."""
    limiter = RateLimiter(RateLimiterSettings(rate=rate, burst=burst))
    now = start
    admitted: list[tuple[float, float]] = []
    for dt, fraction in steps:
        now += dt
        tokens = max(fraction * burst, 1e-9)
        wait = limiter.try_acquire(now, tokens)
        assert 0.0 <= limiter.tokens(now) <= burst
        if wait == 0.0:
            admitted.append((now, tokens))
            continue
        assert wait > 0.0
        # Waiting the delay lands where the request fits (allowing one rounding step).
        retry = now + wait
        second = limiter.try_acquire(retry, tokens)
        if second:
            assert second <= 4 * math.ulp(max(abs(retry), 1.0))
            retry += second
            assert limiter.try_acquire(retry, tokens) == 0.0
        now = retry
        admitted.append((now, tokens))
    slack = 1e-9 * max(1.0, abs(now)) * rate + 1e-9 * burst
    for i in range(len(admitted)):
        total = 0.0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            elapsed = admitted[j][0] - admitted[i][0]
            assert total <= burst + rate * elapsed + slack + 1e-6 * total


class LimiterAgainstModel(RuleBasedStateMachine):
    """On an exact grid (dyadic times, power-of-two rates) the limiter equals a Fraction-based
    token bucket, decision for decision and wait for wait."""

    @initialize(s=rate_limiter_settings)
    def setup(self, s: RateLimiterSettings) -> None:
        self.limiter = RateLimiter(s)
        self.rate = Fraction(s.rate)
        self.burst = Fraction(s.effective_burst)
        self.tokens = self.burst
        self.last: Fraction | None = None
        self.now = Fraction(0)

    @rule(dt=st.sampled_from([0, 1, 2, 4, 8, 24]))
    def advance(self, dt: int) -> None:
        self.now += Fraction(dt, 8)

    @rule(n=st.sampled_from([1, 2, 3]))
    def acquire(self, n: int) -> None:
        if n > self.burst:
            with pytest.raises(ValueError, match="tokens"):
                self.limiter.try_acquire(float(self.now), n)
            return
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (self.now - self.last) * self.rate)
        self.last = self.now
        if self.tokens >= n:
            self.tokens -= n
            expected = Fraction(0)
        else:
            expected = (n - self.tokens) / self.rate
        assert self.limiter.try_acquire(float(self.now), n) == expected

    @invariant()
    def tokens_agree(self) -> None:
        if self.last is not None:
            held = min(self.burst, self.tokens + (self.now - self.last) * self.rate)
            assert self.limiter.tokens(float(self.now)) == held


TestLimiterAgainstModel = LimiterAgainstModel.TestCase
TestLimiterAgainstModel.settings = settings(max_examples=100, stateful_step_count=50)
