"""Run a trio program under one chosen schedule: for races that depend on task order.

trio runs the tasks of one batch in random order.  With hypothesis installed (the test suite
always imports it), trio sorts each batch and shuffles it with its private random source, so
seeding that source (and running under ``MockClock``) makes one run replayable: a race is
tested by repeating the run over many seeds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
import trio.testing
from trio._core import _run as trio_run_module

T = TypeVar("T")


def run_seeded(async_fn: Callable[..., Awaitable[T]], seed: int, *args: Any) -> T:
    """``trio.run(async_fn, *args)`` in virtual time with trio's scheduler seeded by ``seed``."""
    trio_run_module._r.seed(seed)
    return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def deterministic_scheduling() -> bool:
    """Whether trio shuffles batches with its seeded source (hypothesis's plugin switched it
    on); without it a seed still changes the order, but replays are not exact."""
    return bool(trio_run_module._ALLOW_DETERMINISTIC_SCHEDULING)
