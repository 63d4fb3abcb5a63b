"""Decision time: AllowTables.evaluate timed per flow, interleaved over sets of tables."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent.bench.scale.flows import Flow
from agent.bench.stats import median
from enforcement.tables import AllowTables

BATCH: Final = 1_000
"""Flows per timed batch; the garbage collector is off inside a batch."""


@dataclass(slots=True)
class DecisionTiming:
    """Decision times of one set of tables over the flow mix."""

    samples: list[float] = field(default_factory=list)
    """Seconds per flow, one per evaluation timed on its own."""
    total_ns: int = 0
    """Nanoseconds of the untimed tight loops, over ``evaluations`` flows."""
    evaluations: int = 0

    @property
    def mean_s(self) -> float:
        return self.total_ns / 1e9 / max(self.evaluations, 1)


def clock_overhead_ns(reads: int = 10_000) -> float:
    """Median nanoseconds between two consecutive ``perf_counter_ns`` reads."""
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(reads):
        before = clock()
        gaps.append(clock() - before)
    return median(gaps)


def time_decisions(
    tables: Mapping[int, AllowTables], flows: Sequence[Flow], rounds: int = 1
) -> dict[int, DecisionTiming]:
    """Time ``evaluate`` of each set of tables on every flow, ``rounds`` times.

    The sets are interleaved batch by batch (:data:`BATCH` flows, the order of the sets
    rotating), so that a busy moment of the machine falls on all of them alike. Per flow:
    ``perf_counter_ns`` read right before and after each call, minus the median cost of
    reading the clock twice. Mean: each batch evaluated again in a tight loop with no clock
    inside, total over flows, free of the clock's own cost. The collector is off in a batch.
    """
    clock = time.perf_counter_ns
    overhead = clock_overhead_ns()
    keys = list(tables)
    timings = {key: DecisionTiming() for key in keys}
    enabled = gc.isenabled()
    turn = 0
    for _ in range(max(rounds, 1)):
        for start in range(0, len(flows), BATCH):
            batch = flows[start : start + BATCH]
            turn += 1
            for key in keys[turn % len(keys) :] + keys[: turn % len(keys)]:
                evaluate = tables[key].evaluate
                timing = timings[key]
                samples = timing.samples
                gc.disable()
                try:
                    for src, dst, protocol, port in batch:
                        before = clock()
                        evaluate(src, dst, protocol, port)
                        after = clock()
                        samples.append(max(after - before - overhead, 0) / 1e9)
                    before = clock()
                    for src, dst, protocol, port in batch:
                        evaluate(src, dst, protocol, port)
                    timing.total_ns += clock() - before
                    timing.evaluations += len(batch)
                finally:
                    if enabled:
                        gc.enable()
    return timings


def verdict_counts(tables: AllowTables, flows: Sequence[Flow]) -> dict[str, int]:
    """How many flows of the mix get each verdict (to show that the mix reaches the tables)."""
    counts: dict[str, int] = {}
    for src, dst, protocol, port in flows:
        reason = tables.evaluate(src, dst, protocol, port).value
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))
