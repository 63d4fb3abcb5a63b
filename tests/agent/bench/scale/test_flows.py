"""The flow mix (agent/bench/scale/flows.py): deterministic, reaching isolated node-1 pods, and
decided by the tables as the reference evaluator decides it."""

from __future__ import annotations

import ipaddress
from collections import Counter

from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.flows import focus_pods, generate_flows
from agent.bench.scale.sizes import NODE, sweep_counts
from enforcement.compiler import compile_tables
from enforcement.verdict import Reason
from tests.agent.bench.scale.test_cluster import SMALL, TINY
from tests.reference import reference_allows


def test_flows_are_deterministic_and_touch_isolated_local_pods() -> None:
    cluster = generate_cluster(SMALL)
    flows = generate_flows(cluster, 2_000)
    assert flows == generate_flows(cluster, 2_000)
    focus = {a.packed for p in focus_pods(cluster) for a in p.ips}
    assert focus
    assert all(src in focus or dst in focus for src, dst, _, _ in flows)
    # At every count of the sweep, the mix reaches the tables of an isolated pod.
    for count in sweep_counts(SMALL.policies):
        tables = compile_tables(cluster.adopted(count), NODE, 1)
        verdicts = Counter(tables.evaluate(*flow) for flow in flows)
        assert Reason.NOT_ISOLATED not in verdicts
        assert verdicts[Reason.ALLOWED] > 0


def test_adopted_clusters_are_prefixes_of_one_order() -> None:
    cluster = generate_cluster(SMALL)
    order = cluster.adoption_order()
    assert sorted(p.key for p in order) == sorted(p.key for p in cluster.policies)
    first = cluster.adopted(10).policies
    assert first == order[:10]
    # The first namespace to adopt brings its whole set, default deny first.
    assert {p.namespace for p in first} == {first[0].namespace}
    assert first[0].name.startswith("default-deny")


def test_compiled_tables_agree_with_the_reference_on_the_mix() -> None:
    cluster = generate_cluster(TINY)
    snapshot = cluster.snapshot()
    tables = compile_tables(snapshot, NODE, 1)
    for src, dst, protocol, port in generate_flows(cluster, 400):
        expected = reference_allows(
            snapshot,
            NODE,
            str(ipaddress.ip_address(src)),
            str(ipaddress.ip_address(dst)),
            protocol,
            port,
        )
        verdict = tables.evaluate(src, dst, protocol, port)
        assert (verdict in (Reason.ALLOWED, Reason.NOT_ISOLATED)) == expected
