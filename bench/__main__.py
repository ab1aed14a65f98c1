"""Run the benchmarks: ``python -m bench [--quick] [--json FILE] [--only NAME ...]``.

Each module ``bench/figures_*.py`` defines ``collect(quick: bool) -> dict[str, float]`` and may
define ``GOALS: dict[str, tuple[str, float]]`` (for example ``{"ask_vs_floor": ("<=", 1.5)}``).
The figures of every module are printed as one table (with the goal and whether this run met
it) and, with ``--json FILE``, written as one JSON object mapping each figure's name to its
number.  ``--quick`` runs fewer, shorter repetitions (the whole run stays under two minutes).
Figures from two runs must not be compared: ratios are only meaningful inside one run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

_OPS = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI-sized checks")
    parser.add_argument("--json", metavar="FILE", help="write {figure: number} to FILE")
    parser.add_argument(
        "--only", nargs="*", default=[], help="run only modules whose name contains one of these"
    )
    args = parser.parse_args(argv)

    figures: dict[str, float] = {}
    goals: dict[str, tuple[str, float]] = {}
    started = time.monotonic()
    for module in _modules(args.only):
        t0 = time.monotonic()
        result = module.collect(args.quick)
        figures.update(result)
        goals.update(getattr(module, "GOALS", {}))
        print(f"# {module.__name__}: {time.monotonic() - t0:.1f} s", file=sys.stderr)

    width = max((len(k) for k in figures), default=10)
    print(f"{'figure':<{width}}  {'value':>14}  goal")
    for name, value in figures.items():
        goal = goals.get(name)
        mark = ""
        if goal is not None:
            op, target = goal
            met = _OPS[op](value, target)
            mark = f"{op} {target:g}  {'met' if met else 'MISSED'}"
        print(f"{name:<{width}}  {_fmt(value):>14}  {mark}")
    print(f"# total {time.monotonic() - started:.1f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
