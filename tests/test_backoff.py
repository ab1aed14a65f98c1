"""Backoff: the delay formula, every kind x jitter combination, Retry-After and validation."""

from __future__ import annotations

import datetime
import itertools
import math
import random

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import ConfigError
from actors._policies._backoff import Backoff, BackoffKind, BackoffSettings, Jitter, compute_delay
from tests.strategies_retry import attempts, backoff_settings, seconds, unit_samples

KINDS = list(BackoffKind)
JITTERS = list(Jitter)
COMBINATIONS = [
    (kind, jitter)
    for kind in KINDS
    for jitter in JITTERS
    if jitter is not Jitter.DECORRELATED or kind is BackoffKind.EXPONENTIAL
]


def test_every_valid_combination_is_covered() -> None:
    """Nine kind x jitter pairs plus exponential x decorrelated are the valid combinations."""
    assert len(COMBINATIONS) == 10


@pytest.mark.parametrize(("kind", "jitter"), COMBINATIONS, ids=lambda v: v.value)
@hypothesis.settings(max_examples=50)
@given(data=st.data())
def test_delay_is_between_zero_and_max_delay(
    kind: BackoffKind, jitter: Jitter, data: st.DataObject
) -> None:
    """Without Retry-After every delay is in [0, max_delay] for every combination."""
    settings = data.draw(backoff_settings(kind=kind, jitter=jitter))
    attempt = data.draw(attempts)
    u = data.draw(unit_samples)
    previous = data.draw(st.none() | seconds)
    delay = compute_delay(settings, attempt, u, previous=previous)
    assert 0.0 <= delay <= settings.max_delay


@pytest.mark.parametrize(("kind", "jitter"), COMBINATIONS, ids=lambda v: v.value)
@hypothesis.settings(max_examples=50)
@given(data=st.data())
def test_retry_after_wins_when_longer_and_is_capped(
    kind: BackoffKind, jitter: Jitter, data: st.DataObject
) -> None:
    """delay = max(computed, min(retry_after, max_retry_after)) for every combination."""
    settings = data.draw(backoff_settings(kind=kind, jitter=jitter))
    attempt = data.draw(attempts)
    u = data.draw(unit_samples)
    retry_after = data.draw(seconds)
    computed = compute_delay(settings, attempt, u)
    delay = compute_delay(settings, attempt, u, retry_after=retry_after)
    assert delay == max(computed, min(retry_after, settings.max_retry_after))
    assert delay <= max(settings.max_delay, settings.max_retry_after)
    assert delay >= computed


@given(settings=backoff_settings(), attempt=attempts)
def test_unjittered_base_grows_monotonically_and_is_capped(
    settings: BackoffSettings, attempt: int
) -> None:
    """base(n) <= base(n + 1) <= max_delay: the un-jittered delay never shrinks."""
    backoff = Backoff(settings)
    assert backoff.base(attempt) <= backoff.base(attempt + 1) <= settings.max_delay


@given(settings=backoff_settings(jitter=Jitter.NONE), attempt=attempts, u=unit_samples)
def test_no_jitter_is_the_capped_base(settings: BackoffSettings, attempt: int, u: float) -> None:
    """With jitter 'none' the delay is exactly the capped base, whatever the sample."""
    assert compute_delay(settings, attempt, u) == Backoff(settings).base(attempt)


@given(settings=backoff_settings(jitter=Jitter.FULL), attempt=attempts, u=unit_samples)
def test_full_jitter_is_a_fraction_of_the_base(
    settings: BackoffSettings, attempt: int, u: float
) -> None:
    """Full jitter: delay = u * base(n), so 0 <= delay <= base(n)."""
    base = Backoff(settings).base(attempt)
    delay = compute_delay(settings, attempt, u)
    assert delay == u * base
    assert 0.0 <= delay <= base


@given(settings=backoff_settings(jitter=Jitter.EQUAL), attempt=attempts, u=unit_samples)
def test_equal_jitter_keeps_at_least_half_the_base(
    settings: BackoffSettings, attempt: int, u: float
) -> None:
    """Equal jitter: base(n) / 2 <= delay <= base(n)."""
    base = Backoff(settings).base(attempt)
    delay = compute_delay(settings, attempt, u)
    assert base / 2 <= delay <= base


@given(
    settings=backoff_settings(jitter=Jitter.DECORRELATED),
    attempt=attempts,
    u=unit_samples,
    previous=st.none() | seconds,
)
def test_decorrelated_jitter_stays_between_base_and_three_times_previous(
    settings: BackoffSettings, attempt: int, u: float, previous: float | None
) -> None:
    """Decorrelated: min(max, base) <= delay <= min(max, max(base, 3 * previous))."""
    delay = compute_delay(settings, attempt, u, previous=previous)
    prev = settings.base_delay if previous is None else previous
    high = max(settings.base_delay, 3 * prev)
    assert min(settings.max_delay, settings.base_delay) <= delay
    assert delay <= min(settings.max_delay, high) * (1 + 1e-12)


@given(settings=backoff_settings(), seed=st.integers(min_value=0, max_value=2**32))
def test_a_seeded_random_source_replays_the_same_delays(
    settings: BackoffSettings, seed: int
) -> None:
    """Two backoffs with equally seeded random sources produce the same delays."""
    first = list(Backoff(settings, random=random.Random(seed)).delays(12))
    second = list(Backoff(settings, random=random.Random(seed)).delays(12))
    assert first == second


@given(u=unit_samples)
def test_decorrelated_sequence_feeds_each_delay_into_the_next(u: float) -> None:
    """delays() threads the previous delay: each one is at most three times the one before."""
    settings = BackoffSettings(jitter="decorrelated", base_delay=0.5, max_delay=1000.0)
    delays = list(Backoff(settings, random=lambda: u).delays(10))
    for before, after in itertools.pairwise(delays):
        assert 0.5 <= after <= 3 * before * (1 + 1e-12)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (BackoffKind.CONSTANT, [2.0, 2.0, 2.0, 2.0, 2.0]),
        (BackoffKind.LINEAR, [2.0, 4.0, 6.0, 8.0, 10.0]),
        (BackoffKind.EXPONENTIAL, [2.0, 6.0, 10.0, 10.0, 10.0]),
    ],
)
def test_known_sequences_without_jitter(kind: BackoffKind, expected: list[float]) -> None:
    """The three kinds produce the documented sequences (exponential with multiplier 3)."""
    settings = BackoffSettings(
        kind=kind, base_delay=2.0, multiplier=3.0, max_delay=10.0, jitter="none"
    )
    assert list(Backoff(settings).delays(5)) == expected


def test_huge_attempt_numbers_do_not_overflow() -> None:
    """An exponential backoff at attempt 100,000 is max_delay, not an OverflowError."""
    settings = BackoffSettings(base_delay=1.0, max_delay=7.0, jitter="none")
    assert compute_delay(settings, 100_000, 0.5) == 7.0


def test_zero_base_delay_gives_immediate_retries() -> None:
    """base_delay 0 means retry at once (no 0 * inf = nan)."""
    settings = BackoffSettings(base_delay=0.0, max_delay=0.0, jitter="none")
    assert compute_delay(settings, 10_000, 0.0) == 0.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, 1.0), (0.5, 1.0), (3.0, 3.0), (100.0, 10.0), (-5.0, 1.0), (math.nan, 1.0)],
)
def test_retry_after_edge_values(retry_after: float | None, expected: float) -> None:
    """Retry-After: shorter is ignored, longer wins up to the cap, negative and NaN ignored."""
    settings = BackoffSettings(base_delay=1.0, jitter="none", max_retry_after=10.0)
    assert compute_delay(settings, 1, 0.0, retry_after=retry_after) == expected


def test_the_random_source_is_not_consulted_without_jitter() -> None:
    """A backoff without jitter never calls its random source."""

    def boom() -> float:
        raise AssertionError("sampled")

    assert Backoff(BackoffSettings(jitter="none"), random=boom).delay(3) == 4.0


def test_a_non_callable_random_source_is_refused() -> None:
    """random= must be a Random or a callable."""
    with pytest.raises(TypeError, match="random must be"):
        Backoff(random=42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempt": 0, "u": 0.5}, "attempt must be >= 1"),
        ({"attempt": 1, "u": 1.5}, "must be in"),
        ({"attempt": 1, "u": -0.1}, "must be in"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, float], message: str) -> None:
    """compute_delay rejects attempt < 1 and samples outside [0, 1]."""
    with pytest.raises(ValueError, match=message):
        compute_delay(BackoffSettings(), int(kwargs["attempt"]), kwargs["u"])


def test_negative_previous_raises_value_error() -> None:
    """Decorrelated jitter rejects a negative previous delay."""
    settings = BackoffSettings(jitter="decorrelated")
    with pytest.raises(ValueError, match="previous must be >= 0"):
        compute_delay(settings, 2, 0.5, previous=-1.0)


def test_durations_accept_timedelta_and_store_seconds() -> None:
    """timedelta durations are stored as float seconds; names become enum members."""
    settings = BackoffSettings(
        kind="linear",
        jitter="equal",
        base_delay=datetime.timedelta(milliseconds=250),
        max_delay=datetime.timedelta(minutes=1),
        max_retry_after=datetime.timedelta(seconds=5),
    )
    assert settings.base_delay == 0.25
    assert settings.max_delay == 60.0
    assert settings.max_retry_after == 5.0
    assert settings.kind is BackoffKind.LINEAR
    assert settings.jitter is Jitter.EQUAL


@pytest.mark.parametrize(
    ("kwargs", "path", "message"),
    [
        ({"base_delay": -1.0}, "base_delay", "must be a duration >= 0"),
        ({"base_delay": math.nan}, "base_delay", "finite"),
        ({"base_delay": "1s"}, "base_delay", "number of seconds or a timedelta, not str"),
        ({"base_delay": True}, "base_delay", "not bool"),
        ({"max_delay": math.inf}, "max_delay", "finite"),
        ({"base_delay": 5.0, "max_delay": 1.0}, "max_delay", "must be >= base_delay"),
        ({"multiplier": 0.5}, "multiplier", "must be >= 1"),
        ({"multiplier": "2"}, "multiplier", "must be a number"),
        ({"max_retry_after": -3}, "max_retry_after", ">= 0"),
        ({"kind": "fibonacci"}, "kind", "unknown name 'fibonacci'"),
        ({"jitter": "some"}, "jitter", "expected one of 'none', 'full', 'equal'"),
        ({"kind": "constant", "jitter": "decorrelated"}, "jitter", "needs kind = 'exponential'"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_field(
    kwargs: dict[str, object], path: str, message: str
) -> None:
    """Each invalid value raises ConfigError whose path is the field and message the rule."""
    with pytest.raises(ConfigError, match=message) as info:
        BackoffSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.path == path
