"""The fleet soak at CI size: three instances share a PostgreSQL journal and a Redis store, one
of them killed with kill -9 every few seconds, and the fleet's audit can fail."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench._fleet_effects import audit
from bench._soak_fleet import COMPENSATABLE, STEPS

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_a_short_fleet_soak_with_kills_keeps_every_invariant(
    postgres_url: str, redis_url: str
) -> None:
    """`python -m bench.soak --instances 3 --journal postgres --kill-instances` exits 0 after
    killing instances mid-saga: every invariant checked, none violated, sagas taken over."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            *("--seconds", "8", "--seed", "7", "--instances", "3", "--journal", "postgres"),
            "--kill-instances",
            *("--postgres-url", postgres_url, "--redis-url", redis_url),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    summary = re.search(
        r"soak summary: (\d+) invariants checked, (\d+) violated, ([\d,]+) sagas, (\d+) kills", out
    )
    assert summary is not None, out
    checked, violated, sagas, kills = summary.groups()
    assert (checked, violated) == ("12", "0"), out
    assert out.count("[ok]") == 12, out
    assert int(sagas.replace(",", "")) > 50, out
    assert int(kills) >= 1, out


def test_the_fleet_audit_flags_doubles_and_unexplained_outcomes() -> None:
    """A compensation left to an operator is checked for doubles only; any other unexpected
    outcome, an effect applied twice, or an effect left undone is a violation."""
    effects = {
        "ok:reserve:do": 1,
        "ok:charge:do": 1,
        "ok:ship:do": 1,
        "stuck:reserve:do": 1,
        "twice:reserve:do": 1,
        "twice:reserve:compensate": 2,
        "undone:reserve:do": 1,
    }
    sagas = [
        ("ok", "completed"),
        ("stuck", "compensation_failed"),
        ("twice", "compensation_failed"),
        ("undone", "compensated"),
        ("odd", "failed_somehow"),
    ]
    problems = audit(
        sagas, effects, STEPS, COMPENSATABLE, left_to_operator=("compensation_failed",)
    )
    assert len(problems) == 3, problems
    assert any("twice" in p and "undo reserve x2" in p for p in problems)
    assert any("undone" in p and "not undone" in p for p in problems)
    assert any("odd" in p for p in problems)
    assert audit(sagas[:2], effects, STEPS, COMPENSATABLE) == [
        "saga stuck ended compensation_failed"
    ]
