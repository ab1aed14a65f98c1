"""Shared fixtures: a MockClock that jumps as soon as every task is blocked, and fuzz sizes.

``pytest --long`` runs the fuzzers with their long seed sets (the closing runs of a change);
without it they run the fixed, smaller seed sets that CI runs.
"""

from __future__ import annotations

import pytest
import trio.testing
from hypothesis import HealthCheck, settings

from tests.fixtures_postgres import *  # noqa: F403  (server fixtures, see that module)
from tests.fixtures_redis import *  # noqa: F403  (server fixtures, see that module)

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("default")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the fuzzers with their long seed sets (thousands of runs) instead of CI's",
    )


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --long``: fuzzers widen their fixed seed sets."""
    return bool(request.config.getoption("--long"))


def fuzz_seeds(config: pytest.Config, *, ci: int, long: int) -> range:
    """The seed set of a fuzzer: ``ci`` seeds by default, ``long`` seeds under ``--long``."""
    return range(long if config.getoption("--long") else ci)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """Virtual time: sleeping tests finish in milliseconds (pytest-trio picks this fixture up)."""
    return trio.testing.MockClock(autojump_threshold=0)
