"""The benchmarks' one percentile formula (agent/bench/stats.py): known values, and agreement
with the standard library's inclusive quantiles and median."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.bench.stats import Percentiles, median, percentile, summarize

samples = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=200
)


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        pytest.param([3.0, 1.0, 2.0], 0.5, 2.0, id="median-odd-unsorted"),
        pytest.param([1.0, 2.0, 3.0, 4.0], 0.5, 2.5, id="median-even-between-the-middle-two"),
        pytest.param([1.0, 2.0], 0.5, 1.5, id="median-of-two"),
        pytest.param([float(v) for v in range(101)], 0.99, 99.0, id="p99-of-0-to-100"),
        pytest.param([float(v) for v in range(1, 101)], 0.99, 99.01, id="p99-of-1-to-100"),
        pytest.param([float(v) for v in range(1, 1001)], 0.99, 990.01, id="p99-of-1-to-1000"),
        pytest.param([10.0, 20.0, 30.0, 40.0, 50.0], 0.25, 20.0, id="p25-on-a-rank"),
        pytest.param([10.0, 20.0], 0.9, 19.0, id="p90-interpolated"),
        pytest.param([5.0], 0.99, 5.0, id="single"),
        pytest.param([1.0, 2.0], 0.0, 1.0, id="min"),
        pytest.param([1.0, 2.0], 1.0, 2.0, id="max"),
    ],
)
def test_percentile_known_values(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("values", "fraction"),
    [
        pytest.param([], 0.5, id="no-values"),
        pytest.param([1.0], -0.1, id="below-0"),
        pytest.param([1.0], 1.5, id="above-1"),
    ],
)
def test_percentile_refuses(values: list[float], fraction: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, fraction)


@given(samples)
def test_percentiles_are_the_inclusive_quantiles(values: list[float]) -> None:
    # statistics.quantiles(method="inclusive") is Hyndman and Fan's definition 7 as well.
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for k in (1, 25, 50, 90, 99):
        assert percentile(values, k / 100) == pytest.approx(cuts[k - 1], rel=1e-9, abs=1e-6)


@given(samples)
def test_median_is_the_standard_median(values: list[float]) -> None:
    assert median(values) == pytest.approx(statistics.median(values), rel=1e-9, abs=1e-9)


def test_summary() -> None:
    assert summarize([4.0, 1.0, 3.0, 2.0]) == Percentiles(
        p50=2.5, p99=pytest.approx(3.97), mean=2.5, samples=4
    )
