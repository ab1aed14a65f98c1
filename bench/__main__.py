"""Run the benchmarks: ``python -m bench [--quick] [--check] [--json FILE] [--only NAME ...]``.

Each module ``bench/figures_*.py`` defines ``collect(quick: bool) -> dict`` mapping figure names
to :class:`bench._harness.Figure` values (the median of per-round values, with their
interquartile range) or plain numbers, and may define ``GOALS: dict[str, tuple[str, float]]``
(for example ``{"ask_vs_min_floor": ("<=", 1.15)}``).  A module whose ``collect`` also takes a
``journal`` argument gets ``--journal`` (the soak's saga journal).

The figures of every module are printed as one table: the value, its spread over the rounds
(first and third quartiles), and the goal with whether this run met it.  ``--json FILE`` writes
one JSON object mapping each figure's name to ``{"value", "q1", "q3", "rounds", "goal",
"met"}`` (``null`` where there is none).  ``--check`` exits with status 1 when a goal was
missed (a figure that could not be measured misses its goal); without it the exit status is 0
whatever the figures.  ``--quick`` runs fewer, shorter rounds.  Figures from two runs must not
be compared: ratios are only meaningful inside one run.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import pkgutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench._harness import Figure

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}

Goal = tuple[str, float]


def _modules(only: list[str]) -> list[Any]:
    here = Path(__file__).parent
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("figures_")
    )
    if only:
        names = [n for n in names if any(o in n for o in only)]
    return [importlib.import_module(f"bench.{n}") for n in names]


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _spread(figure: Figure) -> str:
    return f"{_fmt(figure.q1)} - {_fmt(figure.q3)}" if figure.has_spread else ""


def met(figure: Figure, goal: Goal) -> bool:
    """Whether ``figure`` meets ``goal`` (a figure that is ``nan`` does not)."""
    op, target = goal
    return not math.isnan(figure.value) and _OPS[op](figure.value, target)


def as_figures(result: Mapping[str, Figure | float]) -> dict[str, Figure]:
    """A module's result with plain numbers made into figures without spread."""
    return {
        name: value if isinstance(value, Figure) else Figure.exact(value)
        for name, value in result.items()
    }


def table(figures: Mapping[str, Figure], goals: Mapping[str, Goal]) -> list[str]:
    """The printed table: one line per figure, then a summary of the goals."""
    width = max((len(k) for k in figures), default=10)
    lines = [f"{'figure':<{width}}  {'value':>10}  {'spread (IQR)':>21}  goal"]
    for name, figure in figures.items():
        goal = goals.get(name)
        mark = ""
        if goal is not None:
            mark = f"{goal[0]} {goal[1]:g}  {'met' if met(figure, goal) else 'MISSED'}"
        lines.append(f"{name:<{width}}  {_fmt(figure.value):>10}  {_spread(figure):>21}  {mark}")
    checked = [name for name in figures if name in goals]
    missed = [name for name in checked if not met(figures[name], goals[name])]
    lines.append(
        f"# {len(checked)} goals: {len(checked) - len(missed)} met, {len(missed)} missed"
        + (f" ({', '.join(missed)})" if missed else "")
    )
    return lines


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def to_json(figures: Mapping[str, Figure], goals: Mapping[str, Goal]) -> dict[str, Any]:
    """The ``--json`` document: each figure with its spread, goal and verdict."""
    out: dict[str, Any] = {}
    for name, figure in figures.items():
        goal = goals.get(name)
        out[name] = {
            "value": _number(figure.value),
            "q1": _number(figure.q1),
            "q3": _number(figure.q3),
            "rounds": figure.rounds,
            "goal": None if goal is None else f"{goal[0]} {goal[1]:g}",
            "met": None if goal is None else met(figure, goal),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (CI)")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a goal is missed"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument(
        "--only", nargs="*", default=[], help="run only modules whose name contains one of these"
    )
    parser.add_argument(
        "--journal",
        choices=("memory", "sqlite"),
        default="memory",
        help="the saga journal the soak runs on (memory)",
    )
    args = parser.parse_args(argv)

    figures: dict[str, Figure] = {}
    goals: dict[str, Goal] = {}
    started = time.monotonic()
    for module in _modules(args.only):
        t0 = time.monotonic()
        options: dict[str, Any] = {}
        if "journal" in inspect.signature(module.collect).parameters:
            options["journal"] = args.journal
        figures.update(as_figures(module.collect(args.quick, **options)))
        goals.update(getattr(module, "GOALS", {}))
        print(f"# {module.__name__}: {time.monotonic() - t0:.1f} s", file=sys.stderr)

    for line in table(figures, goals):
        print(line)
    print(f"# total {time.monotonic() - started:.1f} s", file=sys.stderr)
    if args.json:
        document = to_json(figures, goals)
        Path(args.json).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    missed = any(not met(figures[name], goal) for name, goal in goals.items() if name in figures)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
