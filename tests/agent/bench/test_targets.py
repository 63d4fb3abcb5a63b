"""Targets (agent/bench/targets.py): met, NOT met, not measured, and how values are shown."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.bench.machine import GiB, MiB
from agent.bench.targets import Target, Unit, at_least, at_most, in_unit, render_targets


def test_at_most_says_by_how_much() -> None:
    missed = at_most("x", "≤ 50 ms", 2.4, 0.05, "s")
    assert (missed.met, missed.note) == (False, "48.0x the limit")
    assert at_most("x", "≤ 10 s", 2.5, 10, "s").note == "0.25x the limit"
    assert at_most("x", "≤ 10 s", 10.0, 10, "s").met is True  # the limit itself is met
    noted = at_most("x", "≤ 1.2", 1.1, 1.2, "ratio", "at 100k pods")
    assert noted.note == "0.92x the limit; at 100k pods"


def test_at_least() -> None:
    assert at_least("x", "≥ 0.95", 0.95, 0.95, "ratio").met is True
    below = at_least("x", "≥ 1.0", 0.67, 1.0, "ratio", "one policy")
    assert (below.met, below.note) == (False, "one policy")


@pytest.mark.parametrize("check", [at_most, at_least], ids=["at-most", "at-least"])
def test_not_measured(check: Callable[..., Target]) -> None:
    target = check("x", "≤ 1", None, 1.0, "ratio")
    assert (target.value, target.met) == (None, None)
    assert target.render() == "x: - (target ≤ 1): not measured"


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        pytest.param(2.5, "s", "2.50 s", id="seconds"),
        pytest.param(0.0123, "s", "12.3 ms", id="milliseconds"),
        pytest.param(40e-6, "µs", "40.0 µs", id="microseconds"),
        pytest.param(300 * MiB, "bytes", "300 MiB", id="mebibytes"),
        pytest.param(1.5 * GiB, "bytes", "1.50 GiB", id="gibibytes"),
        pytest.param(30e3, "k", "30.0k", id="thousands"),
        pytest.param(0.666, "ratio", "0.67", id="ratio"),
    ],
)
def test_values_in_their_unit(value: float, unit: Unit, shown: str) -> None:
    assert in_unit(value, unit) == shown


def test_rendered_lines() -> None:
    targets = [
        at_least("conns", "≥ 1.0", 0.666, 1.0, "ratio"),
        at_least("worker", "≥ 100k", 30e3, 100e3, "k", "55k per CPU-second"),
        at_most("p99", "≤ 50 µs", 40e-6, 50e-6, "µs"),
    ]
    assert render_targets(targets) == [
        "targets:",
        "  conns: 0.67 (target ≥ 1.0): NOT met",
        "  worker: 30.0k (target ≥ 100k): NOT met (55k per CPU-second)",
        "  p99: 40.0 µs (target ≤ 50 µs): met (0.80x the limit)",
    ]
