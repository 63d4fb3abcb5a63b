"""The measured changes (agent/bench/scale/changes.py)."""

from __future__ import annotations

import pytest

from agent.bench.scale.changes import ClusterMaps, make_change
from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.sizes import NODE
from enforcement.model import Namespace, Pod
from tests.agent.bench.scale.test_cluster import SMALL


@pytest.mark.parametrize("kind", ["pod_relabel", "namespace_relabel", "policy_added"])
def test_each_change_changes_one_object_that_node_1_enforces(kind: str) -> None:
    cluster = generate_cluster(SMALL)
    maps = ClusterMaps(cluster.snapshot())
    assert maps.snapshot() == cluster.snapshot()
    change = make_change(cluster, kind, 0)
    original = maps.current(change)
    maps.apply(change)
    changed = maps.snapshot()
    before = cluster.snapshot()
    differing = (
        sum(a != b for a, b in zip(before.pods, changed.pods, strict=True))
        + sum(a != b for a, b in zip(before.namespaces, changed.namespaces, strict=True))
        + len(changed.policies)
        - len(before.policies)
    )
    assert differing == 1
    local_namespaces = {p.namespace for p in cluster.pods if p.node_name == NODE}
    if isinstance(change, Pod):
        assert change.node_name == NODE
        assert change.labels["canary"] == "true"
    else:
        name = change.name if isinstance(change, Namespace) else change.namespace
        assert name in local_namespaces
    assert make_change(cluster, kind, 0) == change
    maps.undo(change, original)
    assert maps.snapshot() == cluster.snapshot()
