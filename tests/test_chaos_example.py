"""The chaos example users copy (examples/chaos_test_example.py) runs in our suite too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from examples.chaos_test_example import (  # noqa: F401  (collected by pytest from here)
    autojump_clock,
    test_chaos_can_be_switched_off_mid_test,
    test_crashing_actor_is_restarted_and_keeps_serving,
    test_latency_spikes_never_break_the_callers_deadline,
    test_transient_faults_are_absorbed_by_retries,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_runs_alone_outside_the_project(tmp_path: Path) -> None:
    """Copied on its own into a directory with an empty pytest configuration (no trio_mode, no
    conftest), the example's tests run and pass: it is copy-ready."""
    copy = tmp_path / "test_chaos_copy.py"
    shutil.copy(ROOT / "examples" / "chaos_test_example.py", copy)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(copy)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
