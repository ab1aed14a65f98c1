"""The chaos example users copy (examples/chaos_test_example.py) runs in our suite too."""

from __future__ import annotations

from examples.chaos_test_example import (  # noqa: F401  (collected by pytest from here)
    autojump_clock,
    test_chaos_can_be_switched_off_mid_test,
    test_crashing_actor_is_restarted_and_keeps_serving,
    test_latency_spikes_never_break_the_callers_deadline,
    test_transient_faults_are_absorbed_by_retries,
)
