"""The reliability suite at CI size: a 25-second soak with every chaos injector on."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from actors import AskTimeout, MemoryJournal
from actors._saga._journals._records import SagaEventKind, SagaHeader
from actors._saga._journals._state import SagaState
from bench import _soak_truth as truth

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_ci_sized_soak_keeps_every_invariant(tmp_path: Path) -> None:
    """`python -m bench.soak --seconds 25 --seed 1` exits 0, reports all eight invariants
    checked and none violated, after surviving faults, crashes, escalations and sagas."""
    figures_file = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--seconds",
            "25",
            "--seed",
            "1",
            "--json",
            str(figures_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    summary = re.search(r"soak summary: (\d+) invariants checked, (\d+) violated", out)
    assert summary is not None, out
    assert summary.groups() == ("8", "0"), out
    assert out.count("[ok]") == 8, out
    figures = json.loads(figures_file.read_text())
    assert figures["soak_invariants_violated"] == 0
    assert figures["soak_asks"] > 1000
    assert figures["soak_faults"] > 0
    assert figures["soak_crashes"] > 0
    assert figures["soak_escalations"] > 0
    assert figures["soak_sagas"] > 0
    assert figures["rss_growth_pct"] <= 10.0


# ------------------------------------------------------------------ the checker can fail


async def test_the_ask_book_counts_late_and_repeated_ends(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An ask ended past its deadline plus the tolerance, or ended twice, is counted."""
    book = truth.AskBook()
    first = book.begin()
    book.end(first, trio.current_time(), "ok")
    book.end(first, trio.current_time(), "ok")
    late = book.begin()
    deadline = trio.current_time()
    await trio.sleep(truth.TOLERANCE * 2)
    book.end(late, deadline, "AskTimeout")
    assert (book.started, book.ended, book.twice, book.late) == (2, 3, 1, 1)
    assert book.max_late == pytest.approx(truth.TOLERANCE * 2)
    assert not book.pending


async def test_the_ask_book_flags_untyped_errors(mock_clock: trio.testing.MockClock) -> None:
    """An exception that is not an AuraError is recorded as untyped; typed ones by name."""

    def fail(exc: Exception) -> None:
        raise exc

    book = truth.AskBook()
    with book.ask(1.0):
        fail(KeyError("oops"))
    with book.ask(1.0):
        fail(AskTimeout(actor="x", timeout=1.0))
    assert book.untyped == {"KeyError": 1}
    assert book.outcomes == {"untyped KeyError": 1, "AskTimeout": 1}


async def test_a_backend_records_a_second_effect_of_a_key(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The ground truth sees a key that takes effect twice."""
    backend = truth.Backend("svc", seed=0)
    await backend(("load", "k", 1))
    await backend(("load", None, 2))
    assert backend.doubles == []
    await backend(("load", "k", 1))
    assert backend.doubles == ["k"]
    assert backend.requests == 3


async def test_the_auditor_flags_a_completed_saga_without_its_effects() -> None:
    """A completed saga whose steps did not all take effect is a violation; one whose
    effects are all there is not; a finished saga's ground truth is forgotten."""
    run = truth.Soak(seed=0, seconds=1.0, rng=random.Random(0), sagas=truth.Sagas())
    async with MemoryJournal() as journal:
        for saga_id in ("good", "bad"):
            run.sagas.open[saga_id] = False
            await complete(journal, saga_id)
        for step in ("reserve", "charge", "ship"):
            run.sagas.payments[f"good:{step}"] = 1
        run.sagas.payments["bad:reserve"] = 1
        assert await truth.audit_one(run, journal, "good")
        assert run.violations == []
        assert await truth.audit_one(run, journal, "bad")
        assert len(run.violations) == 1
        assert "completed saga bad" in run.violations[0]
        assert run.sagas.open == {}
        assert run.sagas.payments == {}


async def complete(journal: MemoryJournal, saga_id: str) -> None:
    header = SagaHeader(saga_id, "order", time.time(), b"\x80", {})
    state = SagaState.new(header)
    state = await journal.create(header, state.next_event(SagaEventKind.STARTED))
    for step in range(3):
        state = await journal.append(state.next_event(SagaEventKind.STEP_STARTED, step))
        state = await journal.append(state.next_event(SagaEventKind.STEP_COMPLETED, step, b"\xc0"))
    await journal.append(state.next_event(SagaEventKind.COMPLETED))
