"""Cluster sizes (agent/bench/scale/sizes.py): parsing, the defaults, the sweep."""

from __future__ import annotations

import argparse

import pytest

from agent.bench.scale.sizes import (
    FULL_SIZES,
    QUICK_SIZES,
    TARGET_SIZE,
    Size,
    parse_size,
    sweep_counts,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("1000:100:10", Size(1_000, 100, 10), id="plain"),
        pytest.param("100k:10k:1000", Size(100_000, 10_000, 1_000), id="thousands"),
        pytest.param("1.5k:20:3", Size(1_500, 20, 3), id="fraction"),
        pytest.param("200:1:2", Size(200, 1, 2), id="smallest-namespaces"),
    ],
)
def test_parse_size(text: str, size: Size) -> None:
    assert parse_size(text) == size
    assert parse_size(str(size)) == size


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("1000:100", id="two-parts"),
        pytest.param("1000:x:10", id="not-a-number"),
        pytest.param("0:1:2", id="no-pods"),
        pytest.param("99:1:2", id="too-few-pods"),
        pytest.param("100:1:1", id="one-namespace"),
        pytest.param("10:1:20", id="more-namespaces-than-pods"),
        pytest.param("2000k:1:10", id="too-many-pods"),
    ],
)
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_default_sizes_and_sweep() -> None:
    assert FULL_SIZES[-1] == TARGET_SIZE == Size(100_000, 10_000, 1_000)
    assert max(s.pods for s in QUICK_SIZES) == 10_000
    assert sweep_counts(10_000) == (10, 100, 1_000, 10_000)
    assert sweep_counts(100) == (10, 100)
    assert sweep_counts(40) == (10, 40)
    assert sweep_counts(5) == (5,)
    assert [s.nodes for s in FULL_SIZES] == [10, 10, 100]
