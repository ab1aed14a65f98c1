"""Shared fixtures: a MockClock that jumps as soon as every task is blocked."""

from __future__ import annotations

import pytest
import trio.testing
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("default")


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """Virtual time: sleeping tests finish in milliseconds (pytest-trio picks this fixture up)."""
    return trio.testing.MockClock(autojump_threshold=0)
