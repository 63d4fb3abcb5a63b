"""Decision timing (agent/bench/scale/timing.py)."""

from __future__ import annotations

from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.flows import generate_flows
from agent.bench.scale.sizes import NODE
from agent.bench.scale.timing import time_decisions
from enforcement.compiler import compile_tables
from tests.agent.bench.scale.test_cluster import TINY


def test_time_decisions_times_every_flow_of_every_table_set() -> None:
    cluster = generate_cluster(TINY)
    flows = generate_flows(cluster, 1_500)
    tables = {count: compile_tables(cluster.adopted(count), NODE, 1) for count in (10, 40)}
    timings = time_decisions(tables, flows, rounds=2)
    for timing in timings.values():
        assert len(timing.samples) == 2 * len(flows)
        assert timing.evaluations == 2 * len(flows)
        assert timing.mean_s > 0
        assert all(sample >= 0 for sample in timing.samples)
