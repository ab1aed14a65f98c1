"""Chaos in your own tests: copy this file next to your tests and adapt it.

It tests a small application (a ``weather`` provider in front of a flaky HTTP API, and a
``Reporter`` actor that asks it) the way aura-actors tests itself: inject faults, latency and
crashes on purpose, in virtual time, with seeds, and assert what must hold anyway.

Run it with ``pytest chaos_test_example.py`` once pytest and pytest-trio are installed: the
tests are marked ``trio`` (``pytestmark`` below), so no pytest configuration is needed (with
``trio_mode = true`` in yours, the mark is harmless).  aura-actors runs these same tests in its
suite (``tests/test_chaos_example.py``), and runs a copy of this file alone, outside the
project and without its configuration, to keep it copy-ready.

What to take from it:

* wrap the *service function* (``chaos.wrap``) to test your provider's policies: the faults
  look like what real clients raise, so your classifier and retries see real-looking errors;
* wrap the *actor factory* (``chaos.wrap_actor``) to test supervision: crashes while
  handling, crashes at start, without subclassing your actors;
* give every injector a ``seed`` and put the seed in your assertion messages: a failing run is
  replayed exactly;
* use ``MockClock(autojump_threshold=0)``: latency injection is a trio sleep, so minutes of
  chaos take milliseconds.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Actor,
    ActorCrashed,
    AuraError,
    CircuitOpen,
    Provider,
    ProviderActor,
    chaos,
    loads_config,
)
from supervisors import ChildSpec, open_supervisor

#: Every test here is a trio test (pytest-trio), whatever your pytest configuration says.
pytestmark = pytest.mark.trio

SEED = 20240601

# ------------------------------------------------------------------------ the application


async def fetch_weather(city: str) -> dict[str, Any]:
    """Stands in for an HTTP call to a weather API."""
    await trio.sleep(0.05)
    return {"city": city, "temperature": 21}


class Reporter(Actor[str, str]):
    """Answers a one-line report for a city, using the weather provider."""

    async def handle(self, city: str) -> str:
        weather = Provider[str, dict[str, Any]](self.lookup("weather"))
        reading = await weather.call(city, timeout=5.0)
        return f"{reading['city']}: {reading['temperature']} C"


CONFIG = """
[providers.weather.retry]
max_attempts = 4
attempt_timeout = 1.0
[providers.weather.retry.backoff]
base_delay = 0.1
"""


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time for pytest-trio: sleeping tests run in milliseconds."""
    return trio.testing.MockClock(autojump_threshold=0)


# ------------------------------------------------------------------------------- the tests


async def test_transient_faults_are_absorbed_by_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With 30 % injected network faults and 429s, retries make (almost) every call succeed,
    and every failure is a typed error."""
    faults = chaos.FaultInjector("network", "rate_limit", rate=0.3, retry_after=0.5, seed=SEED)
    settings = loads_config(CONFIG, format="toml").for_provider("weather")
    flaky = chaos.wrap(fetch_weather, faults)
    tree = [ChildSpec("weather", lambda: ProviderActor("weather", flaky, settings))]
    ok = failed = rejected = 0
    async with open_supervisor(tree) as root:
        weather = Provider[str, dict[str, Any]](root.ref("weather"))
        for n in range(200):
            try:
                await weather.call(f"city-{n}", timeout=30.0)
                ok += 1
            except CircuitOpen as exc:
                # A well-behaved caller waits for the breaker instead of hammering it.
                rejected += 1
                await trio.sleep(exc.retry_after or 1.0)
            except AuraError:
                failed += 1
    stats = faults.statistics()
    assert stats.injected > 0, stats
    assert ok + failed + rejected == 200
    # Four attempts each fail with probability 0.3**4, under 1 %: allow a little more.
    assert failed <= 4, f"replay with seed={stats.seed}: {failed} calls failed"
    assert rejected <= 10, f"replay with seed={stats.seed}: the breaker refused {rejected}"


async def test_latency_spikes_never_break_the_callers_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Injected 3-second stalls: every call ends within its 2-second deadline, one way or
    another."""
    stalls = chaos.LatencyInjector(3.0, rate=0.2, seed=SEED)
    flaky = chaos.wrap(fetch_weather, stalls)
    tree = [ChildSpec("weather", lambda: ProviderActor("weather", flaky))]
    async with open_supervisor(tree) as root:
        weather = Provider[str, dict[str, Any]](root.ref("weather"))
        for n in range(50):
            start = trio.current_time()
            try:
                await weather.call(f"city-{n}", timeout=2.0)
            except AuraError:
                pass
            assert trio.current_time() - start <= 2.0, f"seed={SEED}, call {n}"
    assert stalls.statistics().injected > 0


async def test_crashing_actor_is_restarted_and_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reporter crashes on 10 % of its messages: those callers get ActorCrashed, the
    supervisor restarts it, and every other message is answered."""
    crashes = chaos.CrashInjector(rate=0.1, seed=SEED)
    tree: list[ChildSpec[Any, Any]] = [
        ChildSpec("weather", lambda: ProviderActor("weather", fetch_weather)),
        ChildSpec("reporter", chaos.wrap_actor(Reporter, crashes)),
    ]
    answered = crashed = 0
    async with open_supervisor(tree, max_restarts=100, period=1.0) as root:
        reporter = root.ref("reporter")
        for n in range(100):
            try:
                report = await reporter.ask(f"city-{n}")
            except ActorCrashed as exc:
                injected = chaos.is_injected(exc)
                crashed += 1
            else:
                assert report == f"city-{n}: 21 C"
                answered += 1
                continue
            assert injected, "only injected crashes are expected"
        assert reporter.statistics().restarts == crashed
    assert crashed == crashes.statistics().injected > 0
    assert answered == 100 - crashed


async def test_chaos_can_be_switched_off_mid_test(autojump_clock: trio.testing.MockClock) -> None:
    """A game day: chaos from the configuration file's `chaos` section; the code path for
    switching chaos on and off by hand is `injector.enabled`."""
    game_day = loads_config(
        CONFIG
        + """
        [providers.weather.chaos]
        enabled = true
        seed = 7
        outcome_rate = 1.0
        outcome = {city = "(chaos)", temperature = -273}
        """,
        format="toml",
    ).for_provider("weather")
    tree = [ChildSpec("weather", lambda: ProviderActor("weather", fetch_weather, game_day))]
    async with open_supervisor(tree) as root:
        weather = Provider[str, dict[str, Any]](root.ref("weather"))
        assert (await weather.call("Oslo"))["temperature"] == -273

    outage = chaos.FaultInjector("dependency", rate=1.0, seed=SEED)
    flaky = chaos.wrap(fetch_weather, outage)
    tree = [ChildSpec("weather", lambda: ProviderActor("weather", flaky))]
    async with open_supervisor(tree) as root:
        weather = Provider[str, dict[str, Any]](root.ref("weather"))
        with pytest.raises(AuraError):
            await weather.call("Oslo", timeout=10.0)
        outage.enabled = False  # the outage is over
        with trio.fail_after(60):
            while True:  # the breaker may be open for a while: wait until it lets calls by
                try:
                    assert (await weather.call("Oslo"))["temperature"] == 21
                    break
                except AuraError:
                    await trio.sleep(1.0)
