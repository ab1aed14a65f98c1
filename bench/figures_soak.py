"""Soak figures: the throughput sustained with every chaos injector on, and memory growth.

Theory of operation
-------------------
:func:`collect` runs the reliability suite (``python -m bench.soak``) in a fresh subprocess,
so its resident memory is measured alone, for 12 s of load (``quick``) or 60 s, on the saga
journal chosen with ``python -m bench --journal memory|sqlite`` (the in-memory journal by
default; ``sqlite`` is a :class:`~actors.SqliteJournal` at its default
durability in a temporary directory), and reads the figures it writes with ``--json``:

* ``soak_asks_per_s``: asks ended per second of load, every injector on (faults, latency,
  substitute outcomes, behaviours, actor crashes, escalations), sagas and tells included.  It is
  an absolute rate on this machine, not a ratio: compare it only within one run of
  ``python -m bench``;
* ``rss_growth_pct``: resident memory at the end relative to memory after the warm-up (the
  first 20 % of the run), in percent; the goal is at most 10 %;
* ``soak_invariants_violated``: how many of the soak's eight invariants failed (goal 0).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent

GOALS = {
    "rss_growth_pct": ("<=", 10.0),
    "soak_invariants_violated": ("<=", 0.0),
}


def collect(quick: bool, journal: str = "memory") -> dict[str, float]:
    """Run one soak on ``journal`` in a subprocess; return its throughput and memory growth."""
    seconds = 12 if quick else 60
    with tempfile.TemporaryDirectory(prefix="aura-soak-figures-") as directory:
        target = Path(directory) / "soak.json"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.soak",
                "--seconds",
                str(seconds),
                "--seed",
                "1",
                "--journal",
                journal,
                "--json",
                str(target),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds * 4 + 120,
            check=False,
        )
        if not target.exists():
            print(result.stdout + result.stderr[-2000:], file=sys.stderr)
            return {
                "soak_asks_per_s": math.nan,
                "rss_growth_pct": math.nan,
                "soak_invariants_violated": math.nan,
            }
        figures = json.loads(target.read_text())
    if result.returncode != 0:
        print(result.stdout, file=sys.stderr)  # the failed invariants, for the reader
    return {
        "soak_asks_per_s": float(figures["soak_asks_per_s"]),
        "rss_growth_pct": float(figures["rss_growth_pct"]),
        "soak_invariants_violated": float(figures["soak_invariants_violated"]),
    }
