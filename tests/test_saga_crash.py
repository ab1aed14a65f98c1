"""Crash test: a process running sagas is killed with SIGKILL at seeded random moments.

After every restart the coordinator resumes what the SQLite journal holds.  At the end every
saga has ended (completed, compensated, or failed with nothing to compensate), and the
providers' own ledger shows no effect applied twice and no compensation missing.
"""

from __future__ import annotations

import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import trio

from actors._saga._journals._records import SagaPhase
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._journals._state import saga_state
from tests.saga_crash_child import STEPS

SEED = 20240611
KILLS = 32
NEW_PER_ROUND = 6
ROOT = Path(__file__).resolve().parent.parent


def start_child(tmp: Path, first: int, count: int, log: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "tests.saga_crash_child",
        f"--journal={tmp / 'journal.db'}",
        f"--ledger={tmp / 'ledger.db'}",
        f"--seed={SEED + first}",
        f"--first={first}",
        f"--count={count}",
    ]
    with log.open("a") as stderr:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)


def read_line(child: subprocess.Popen[str], timeout: float) -> str:
    """The child's next stdout line ('' if it exited or stayed silent for ``timeout`` s)."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    return child.stdout.readline().strip() if ready else ""


async def journal_outcomes(path: Path, total: int) -> tuple[dict[str, SagaPhase], int]:
    async with SqliteJournal(path) as journal:
        unfinished = len(await journal.load_unfinished())
        outcomes = {}
        for n in range(total):
            found = await journal.get(f"t{n}")
            assert found is not None, f"saga t{n} is missing from the journal"
            outcomes[f"t{n}"] = saga_state(*found).phase
    return outcomes, unfinished


@pytest.mark.slow
def test_sagas_survive_repeated_sigkill_without_double_effects_or_missing_compensations(
    tmp_path: Path,
) -> None:
    """32 SIGKILLs at seeded random moments, each followed by a restart over the same journal
    and ledger files; then a last run finishes everything.  Every saga ends completed,
    compensated or failed; per saga, step and kind the ledger holds at most one effect; a
    completed saga has every step's effect and no compensation; a saga that did not complete
    has a compensation for every effect it applied and no effect past its failed step."""
    rng = random.Random(SEED)
    log = tmp_path / "children.log"
    kills = total = 0
    started = time.monotonic()
    while kills < KILLS:  # a child that finished before its kill moment is not counted
        assert total < 3 * KILLS * NEW_PER_ROUND, "the children keep finishing before the kill"
        child = start_child(tmp_path, total, NEW_PER_ROUND, log)
        total += NEW_PER_ROUND
        try:
            line = read_line(child, 60.0)
            assert line == "READY", f"child said {line!r}; see {log.read_text()[-3000:]}"
            time.sleep(rng.uniform(0.0, 0.2))  # the kill moment, not a timing assertion
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                kills += 1
        finally:
            child.wait(30)
            assert child.stdout is not None
            child.stdout.close()
    # The last run also starts the sagas a kill prevented from starting (StartSaga with the
    # id of a saga already in the journal does not start it again).
    final = start_child(tmp_path, 0, total, log)
    try:
        assert read_line(final, 60.0) == "READY"
        assert read_line(final, 120.0) == "DONE", log.read_text()[-3000:]
        assert final.wait(30) == 0
    finally:
        if final.poll() is None:
            final.kill()
            final.wait()
        assert final.stdout is not None
        final.stdout.close()
    elapsed = time.monotonic() - started

    outcomes, unfinished = trio.run(journal_outcomes, tmp_path / "journal.db", total)
    assert unfinished == 0
    allowed = {SagaPhase.COMPLETED, SagaPhase.COMPENSATED, SagaPhase.FAILED}
    assert {saga: phase for saga, phase in outcomes.items() if phase not in allowed} == {}

    ledger = sqlite3.connect(tmp_path / "ledger.db")
    effects: dict[tuple[str, int, str], int] = defaultdict(int)
    for saga, step, kind in ledger.execute("SELECT saga, step, kind FROM effects"):
        effects[saga, step, kind] += 1
    deliveries = dict(ledger.execute("SELECT key, n FROM deliveries").fetchall())
    ledger.close()
    assert {k: n for k, n in effects.items() if n > 1} == {}  # no effect applied twice
    for saga, phase in outcomes.items():
        done = [step for step in range(STEPS) if effects.get((saga, step, "do"))]
        undone = [step for step in range(STEPS) if effects.get((saga, step, "undo"))]
        if phase is SagaPhase.COMPLETED:
            assert (done, undone) == (list(range(STEPS)), []), saga
        else:
            assert set(done) <= set(undone), f"{saga}: a compensation is missing"
            assert done == list(range(len(done))), f"{saga}: an effect past the failure"
    # the run exercised what it is meant to: re-sends after kills, and both outcomes
    resent = sum(1 for n in deliveries.values() if n > 1)
    print(
        f"{kills} kills in {elapsed:.1f} s; {len(outcomes)} sagas: "
        f"{sum(p is SagaPhase.COMPLETED for p in outcomes.values())} completed, "
        f"{sum(p is SagaPhase.COMPENSATED for p in outcomes.values())} compensated, "
        f"{sum(p is SagaPhase.FAILED for p in outcomes.values())} failed; "
        f"{resent} keys delivered more than once"
    )
    assert SagaPhase.COMPENSATED in outcomes.values()
    assert SagaPhase.COMPLETED in outcomes.values()


@pytest.mark.slow
def test_the_video_pipeline_example_completes_or_compensates_every_saga(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples.video_pipeline (real time, a SQLite journal) exits 0 and prints its table."""
    from examples.video_pipeline import cli

    assert cli(["--seed", "1", "--sagas", "8", "--journal", str(tmp_path / "v.db")]) == 0
    out = capsys.readouterr().out
    assert "every saga completed or was compensated" in out
    assert "compensated" in out.split("outcome", 1)[1]
