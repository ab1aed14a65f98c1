"""Measurement helpers shared by the figure modules.

Theory of operation
-------------------
This machine is noisy, so absolute times do not travel and figures from two runs must never be
compared.  Every ratio is therefore measured *inside one process* with its candidates
*interleaved*: a *round* runs every candidate once, in turn (the order rotated from round to
round so that no candidate always runs first, right after a ``gc.collect()`` or a slow
neighbour), and each round yields one value of every figure, ratios included: both sides of a
ratio saw the same machine load.  The reported figure is the **median of the per-round
values**, with their spread: the interquartile range (first and third quartiles) over the
rounds.  A ratio of two medians would pair numbers measured seconds apart; a median of ratios
pairs numbers measured side by side.

A candidate is a callable ``run(n) -> ns_per_op`` that performs ``n`` operations and returns
the mean cost of one; the harness never times anything itself, so each candidate can exclude
its own set-up (opening a trio run, an actor tree, a file).

A figure module (``bench/figures_*.py``) defines ``collect(quick: bool) -> dict`` mapping each
figure's name to a :class:`Figure` (a measured value with its spread) or a plain ``float`` (a
value with no spread: a count, a deterministic size), and ``GOALS`` mapping names to
``(operator, target)``.  :func:`measure` returns :class:`Figure` values; :func:`interleave`
(medians only, no spread) is kept for modules that have not moved to :func:`measure` yet.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

Candidate = Callable[[int], float]
#: Turns one round's ns/op per candidate into that round's figures.
Derive = Callable[[dict[str, float]], Mapping[str, float]]

__all__ = [
    "Candidate",
    "Figure",
    "StepCounter",
    "default_logging",
    "interleave",
    "measure",
    "now_ns",
    "server_url",
    "timed_trio",
]


@dataclass(frozen=True)
class Figure:
    """A measured figure: the median of its per-round values, with their quartiles.

    ``q1`` and ``q3`` are ``nan`` when there is no spread to report (one sample, or a figure
    computed rather than sampled).  ``rounds`` is the number of samples.
    """

    value: float
    q1: float = math.nan
    q3: float = math.nan
    rounds: int = 1

    @classmethod
    def of(cls, samples: Sequence[float]) -> Figure:
        """The median and quartiles of ``samples``.

        A ``nan`` sample is a round in which the figure could not be formed (a peer that is
        not installed; a difference that a preemption made negative): it does not vote, and
        ``rounds`` counts only the samples that did.  No valid sample gives ``nan``.
        """
        valid = [s for s in samples if not math.isnan(s)]
        if not valid:
            return cls(math.nan, rounds=0)
        if len(valid) == 1:
            return cls(valid[0], rounds=1)
        q1, median, q3 = statistics.quantiles(valid, n=4, method="inclusive")
        return cls(median, q1, q3, len(valid))

    @classmethod
    def exact(cls, value: float) -> Figure:
        """A figure with no spread (a count, a deterministic size)."""
        return cls(float(value))

    def scaled(self, factor: float) -> Figure:
        """The same figure in another unit (``factor`` > 0)."""
        return Figure(self.value * factor, self.q1 * factor, self.q3 * factor, self.rounds)

    def inverse(self, numerator: float = 1.0) -> Figure:
        """``numerator / figure`` (ns per op to ops per second): the quartiles swap."""
        return Figure(numerator / self.value, numerator / self.q3, numerator / self.q1, self.rounds)

    @property
    def has_spread(self) -> bool:
        return not (math.isnan(self.q1) or math.isnan(self.q3))


def measure(
    candidates: Mapping[str, Candidate],
    derive: Derive,
    *,
    n: int,
    rounds: int,
    rotate: bool = True,
    warm_up: bool = True,
) -> dict[str, Figure]:
    """Run every candidate once per round for ``rounds`` rounds; return each derived figure
    as the median of its per-round values, with their quartiles.

    ``derive`` gets one round's ``{candidate: ns_per_op}`` and returns that round's figures
    (raw times, differences, ratios).  A warm-up round (``n // 10`` operations each) runs first
    and is discarded.  ``rotate=False`` keeps the candidates' order in every round, for
    candidates that depend on an earlier one of the same round (a replay of what it did).
    """
    names = list(candidates)
    if warm_up:
        for name in names:
            candidates[name](max(1, n // 10))
    samples: dict[str, list[float]] = {}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if rotate else names
        ns: dict[str, float] = {}
        for name in order:
            gc.collect()
            ns[name] = candidates[name](n)
        for figure, value in derive({name: ns[name] for name in names}).items():
            samples.setdefault(figure, []).append(value)
    return {figure: Figure.of(values) for figure, values in samples.items()}


def interleave(candidates: dict[str, Candidate], *, n: int, reps: int) -> dict[str, float]:
    """Run every candidate ``reps`` times, round-robin, and return each one's median ns/op.

    A warm-up round (``n // 10`` operations each) is run first and discarded.  Prefer
    :func:`measure`, which also gives the spread and forms ratios inside each round.
    """
    figures = measure(candidates, dict, n=n, rounds=reps, rotate=False)
    return {name: figure.value for name, figure in figures.items()}


def timed_trio(body: Callable[[int], Awaitable[float]]) -> Candidate:
    """Turn ``async def body(n) -> ns_per_op`` into a candidate that runs it in a fresh trio.run."""

    def run(n: int) -> float:
        return trio.run(body, n)

    return run


def now_ns() -> int:
    """The clock every candidate uses."""
    return time.perf_counter_ns()


class StepCounter(trio.abc.Instrument):
    """Counts trio task steps while :attr:`counting` is true (a bench's same-work check)."""

    def __init__(self) -> None:
        self.steps = 0
        self.counting = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            self.steps += 1


@contextlib.contextmanager
def default_logging() -> Iterator[None]:
    """Logging as an application has it: a handler at ``WARNING`` on the root logger (writing
    to ``os.devnull``, formatted as a real one is), and the library's loggers at their default
    level, not silenced.  Restores the previous configuration on exit."""
    from actors._policies._logs import library_logger
    from supervisors import configure_logging

    root = logging.getLogger()
    saved_root = root.level
    ours = [library_logger(name) for name in ("actors", "supervisors")]
    saved = [(logger, logger.level, logger.disabled) for logger in ours]
    for logger in ours:
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    with open(os.devnull, "w") as sink:
        handler = configure_logging(level=logging.WARNING, stream=sink)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(saved_root)
            for logger, level, disabled in saved:
                logger.setLevel(level)
                logger.disabled = disabled


@contextlib.contextmanager
def server_url(env: str, start: Callable[[], Any], what: str) -> Iterator[str | None]:
    """The URL in ``$env``, else that of a server ``start()`` returns started (an
    ``actors.testing`` server: ``.url``, ``.close()``), closed on exit; ``None`` (and a note on
    stderr) when it cannot start: its figures cannot be measured."""
    configured = os.environ.get(env)
    if configured:
        yield configured
        return
    try:
        server = start()
    except Exception as exc:
        print(f"# {what}: no server ({exc})", file=sys.stderr)
        yield None
        return
    try:
        yield server.url
    finally:
        server.close()
