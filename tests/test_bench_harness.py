"""The benchmark harness: medians of per-round values with their spread, interleaved and
rotated rounds, and ``python -m bench --check`` failing on a missed goal (no timing here: the
candidates are scripted)."""

from __future__ import annotations

import json
import math
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench._harness import Figure, interleave, measure


def scripted(
    values: list[float], calls: list[tuple[str, int]], name: str
) -> Callable[[int], float]:
    """A candidate returning ``values`` in turn (after the warm-up call) and logging its calls."""
    it: Iterator[float] = iter(values)

    def run(n: int) -> float:
        calls.append((name, n))
        if len(calls) <= 2:  # the warm-up round of a two-candidate measure
            return math.nan
        return next(it)

    return run


def test_a_figure_is_the_median_of_its_samples_with_their_quartiles() -> None:
    """Figure.of: median, first and third quartiles (inclusive method), number of rounds."""
    figure = Figure.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (figure.value, figure.q1, figure.q3, figure.rounds) == (3.0, 2.0, 4.0, 5)
    assert figure.has_spread
    single = Figure.of([7.0])
    assert (single.value, single.rounds, single.has_spread) == (7.0, 1, False)
    assert math.isnan(Figure.of([]).value)
    assert math.isnan(Figure.of([math.nan, math.nan]).value)


def test_a_round_without_a_figure_does_not_vote() -> None:
    """nan samples (a round where the figure could not be formed) are left out and not
    counted in ``rounds``."""
    figure = Figure.of([1.0, math.nan, 3.0, 2.0])
    assert (figure.value, figure.rounds) == (2.0, 3)


def test_figure_conversions_keep_the_quartiles_in_order() -> None:
    """ns/op to ops/s swaps the quartiles; scaling keeps them."""
    figure = Figure.of([100.0, 200.0, 400.0])
    per_second = figure.inverse(1e9)
    assert per_second.value == pytest.approx(1e9 / 200.0)
    assert per_second.q1 < per_second.value < per_second.q3
    assert figure.scaled(0.001).q3 == pytest.approx(figure.q3 / 1000)


def test_a_ratio_is_the_median_of_per_round_ratios() -> None:
    """Ratios are formed inside each round: here the median of ratios is 2 while the ratio of
    the medians would be 1."""
    calls: list[tuple[str, int]] = []
    candidates = {
        "a": scripted([1.0, 2.0, 30.0], calls, "a"),
        "b": scripted([2.0, 1.0, 10.0], calls, "b"),
    }
    figures = measure(candidates, lambda ns: {"a_vs_b": ns["a"] / ns["b"]}, n=100, rounds=3)
    assert figures["a_vs_b"].value == 2.0
    assert (figures["a_vs_b"].q1, figures["a_vs_b"].q3) == (1.25, 2.5)
    assert figures["a_vs_b"].rounds == 3


def test_rounds_rotate_the_order_and_start_with_a_short_warm_up() -> None:
    """A warm-up of n // 10 per candidate, then each round starts with the next candidate;
    rotate=False keeps the given order (for a candidate replaying an earlier one)."""
    calls: list[tuple[str, int]] = []
    candidates = {
        "a": scripted([1.0] * 4, calls, "a"),
        "b": scripted([1.0] * 4, calls, "b"),
    }
    measure(candidates, dict, n=50, rounds=4)
    assert calls[:2] == [("a", 5), ("b", 5)]
    assert [name for name, _ in calls[2:]] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert {n for _, n in calls[2:]} == {50}
    calls.clear()
    candidates = {
        "a": scripted([1.0] * 3, calls, "a"),
        "b": scripted([1.0] * 3, calls, "b"),
    }
    measure(candidates, dict, n=50, rounds=3, rotate=False)
    assert [name for name, _ in calls[2:]] == ["a", "b"] * 3


def test_interleave_still_returns_medians() -> None:
    """The older helper: each candidate's median ns/op over the repetitions."""
    calls: list[tuple[str, int]] = []
    candidates = {
        "a": scripted([3.0, 1.0, 2.0], calls, "a"),
        "b": scripted([5.0, 6.0, 4.0], calls, "b"),
    }
    assert interleave(candidates, n=10, reps=3) == {"a": 2.0, "b": 5.0}


def fake_module(result: dict[str, Any], goals: dict[str, tuple[str, float]]) -> Any:
    return types.SimpleNamespace(
        __name__="bench.figures_fake", collect=lambda quick: result, GOALS=goals
    )


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    def run(modules: list[Any], *argv: str) -> int:
        monkeypatch.setattr(bench_main, "_modules", lambda only: modules)
        return bench_main.main(list(argv))

    return run


def test_check_exits_non_zero_only_when_a_goal_is_missed(
    run_main: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --check the exit status is 0 whatever the figures; with it, 1 on a miss."""
    good = fake_module({"x_vs_y": Figure(0.9, 0.8, 1.0, 9)}, {"x_vs_y": ("<=", 1.0)})
    bad = fake_module({"x_vs_y": Figure(1.2, 1.1, 1.3, 9)}, {"x_vs_y": ("<=", 1.0)})
    assert run_main([good], "--check") == 0
    assert run_main([bad]) == 0
    assert run_main([bad], "--check") == 1
    out = capsys.readouterr().out
    assert "1.10 - 1.30" in out  # the spread is printed
    assert "MISSED" in out
    assert "1 goals: 0 met, 1 missed (x_vs_y)" in out


def test_a_figure_that_could_not_be_measured_misses_its_goal(
    run_main: Callable[..., int],
) -> None:
    """A nan figure (a peer not installed) is reported n/a and fails --check."""
    module = fake_module({"x_vs_peer": math.nan}, {"x_vs_peer": ("<=", 1.0)})
    assert run_main([module], "--check") == 1


def test_json_carries_each_figure_with_its_spread_and_verdict(
    run_main: Callable[..., int], tmp_path: Path
) -> None:
    """--json: value, quartiles, rounds, goal and verdict per figure; null where none."""
    module = fake_module(
        {"x_vs_y": Figure(0.9, 0.8, 1.0, 9), "bytes": 207.0, "peer": math.nan},
        {"x_vs_y": ("<=", 1.0), "bytes": ("<=", 180.0)},
    )
    target = tmp_path / "bench.json"
    assert run_main([module], "--json", str(target)) == 0
    document = json.loads(target.read_text())
    assert document["x_vs_y"] == {
        "value": 0.9,
        "q1": 0.8,
        "q3": 1.0,
        "rounds": 9,
        "goal": "<= 1",
        "met": True,
    }
    assert document["bytes"] == {
        "value": 207.0,
        "q1": None,
        "q3": None,
        "rounds": 1,
        "goal": "<= 180",
        "met": False,
    }
    assert document["peer"]["value"] is None
    assert document["peer"]["met"] is None


def test_the_journal_option_reaches_modules_that_take_it(run_main: Callable[..., int]) -> None:
    """--journal is passed to a module whose collect() has a journal parameter, only."""
    seen: list[str] = []

    def collect(quick: bool, journal: str = "memory") -> dict[str, float]:
        seen.append(journal)
        return {"soak": 1.0}

    with_journal = types.SimpleNamespace(__name__="bench.figures_soakish", collect=collect)
    without = fake_module({"other": 1.0}, {})
    assert run_main([with_journal, without], "--journal", "sqlite") == 0
    assert seen == ["sqlite"]
