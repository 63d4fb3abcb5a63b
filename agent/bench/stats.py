"""The benchmarks' one percentile formula, and the summary of a set of samples built on it.

Every p50, p99 and median the benchmarks report comes from :func:`percentile`, so that figures
of ``bench``, ``bench scale`` and the hand-run harnesses compare with each other.

The formula is linear interpolation between the closest ranks: the ``q`` quantile of ``n``
sorted values sits at position ``(n - 1) * q`` (counted from 0), between the two values around
it. It is definition 7 of Hyndman and Fan, "Sample quantiles in statistical packages" (The
American Statistician 50(4), 1996), the default of R's ``quantile``, of NumPy's ``percentile``
and of Python's ``statistics.quantiles(method="inclusive")``; its 0.5 quantile is exactly
``statistics.median`` (the mean of the two middle values of an even count), so a median and a
p50 are one figure. Nearest-rank, the other common choice, would make a p99 of a few hundred
samples jump from one sample to the next as a single sample moves.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (sorted or not) by linear interpolation.

    ``fraction`` is in [0, 1]: 0.5 is the median, 0.99 the 99th percentile. Raises ValueError
    for no values or a fraction outside [0, 1].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"percentile fraction {fraction} is outside [0, 1]")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The 0.5 quantile of :func:`percentile` (equal to ``statistics.median``)."""
    return percentile(values, 0.5)


@dataclass(frozen=True, slots=True)
class Percentiles:
    """A set of samples summed up, in the samples' own unit (seconds for times)."""

    p50: float
    p99: float
    mean: float
    samples: int
    """How many values were summed up."""


def summarize(values: Sequence[float]) -> Percentiles:
    """p50, p99 (:func:`percentile`), arithmetic mean and count of ``values``."""
    return Percentiles(
        p50=percentile(values, 0.5),
        p99=percentile(values, 0.99),
        mean=statistics.fmean(values),
        samples=len(values),
    )
