"""The scale benchmark (agent/bench/scale/): the synthetic cluster generator, the flow mix,
the target checks, and a tiny ``netpol-agent bench scale`` run end to end.

No root, nothing timed against a limit: speed is the benchmark's business, these tests check
that it measures what it says and reports every figure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.bench.command import add_scale_arguments
from agent.bench.machine import GiB
from agent.bench.scale.changes import ClusterMaps, make_change
from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.flows import focus_pods, generate_flows
from agent.bench.scale.policies import SHAPES
from agent.bench.scale.results import ScaleReport, SizeResult, evaluate_targets
from agent.bench.scale.run import measure_size, run_scale
from agent.bench.scale.sizes import (
    FULL_SIZES,
    NODE,
    QUICK_SIZES,
    TARGET_SIZE,
    Size,
    parse_size,
    sweep_counts,
)
from agent.bench.scale.table import render_table
from agent.bench.scale.timing import time_decisions
from agent.bench.scale.worker import WorkerSpec
from agent.convert import namespace_from_k8s, pod_from_k8s, policy_from_k8s
from enforcement.compiler import compile_tables
from enforcement.model import (
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Rule,
)
from enforcement.verdict import Reason
from tests.reference import reference_allows

TINY = Size(300, 40, 4)
SMALL = Size(1_000, 100, 10)

# -- sizes ----------------------------------------------------------------------------------------


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


# -- the generator --------------------------------------------------------------------------------


def test_generator_is_deterministic() -> None:
    first, again = generate_cluster(SMALL, seed=7), generate_cluster(SMALL, seed=7)
    assert first.snapshot() == again.snapshot()
    other = generate_cluster(SMALL, seed=8)
    assert other.pods != first.pods
    assert other.policies != first.policies


def test_fewer_policies_keep_the_pods_and_a_prefix_of_the_policies() -> None:
    full = generate_cluster(SMALL)
    fewer = generate_cluster(SMALL, policies=25)
    assert fewer.pods == full.pods
    assert fewer.namespaces == full.namespaces
    assert fewer.policies == full.policies[:25]


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(TINY, id="300-pods"),
        pytest.param(SMALL, id="1k-pods"),
        pytest.param(Size(5_000, 2_000, 20), id="100-policies-per-namespace"),
    ],
)
def test_generator_produces_the_requested_shape(size: Size) -> None:
    cluster = generate_cluster(size)
    snapshot = cluster.snapshot()
    assert len(snapshot.pods) == size.pods
    assert len(snapshot.policies) == size.policies
    assert len(snapshot.namespaces) == size.namespaces
    assert {n.name for n in snapshot.namespaces} >= {"kube-system", "monitoring"}

    # Names are unique per namespace, as the API server guarantees.
    assert len({p.key for p in snapshot.pods}) == size.pods
    assert len({p.key for p in snapshot.policies}) == size.policies
    known = {n.name for n in snapshot.namespaces}
    assert all(p.namespace in known for p in snapshot.pods)
    assert all(p.namespace in known for p in snapshot.policies)

    # Dual stack from 10.0.0.0/8 and fd00::/8, one address per family, none shared.
    pods = [p for p in snapshot.pods if not p.host_network]
    v4, v6 = ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")
    for pod in pods:
        assert [a.version for a in pod.ips] == [4, 6]
        assert pod.ips[0] in v4
        assert pod.ips[1] in v6
    addresses = [a for p in pods for a in p.ips]
    assert len(set(addresses)) == len(addresses)

    # Pods share label sets: several pods per identity.
    identities = {(p.namespace, p.labels) for p in pods}
    assert len(identities) * 4 <= len(pods)

    # Spread over the nodes; node-1 holds about its share.
    nodes = Counter(p.node_name for p in snapshot.pods)
    assert len(nodes) == size.nodes
    share = size.pods / size.nodes
    assert 0.5 * share <= nodes[NODE] <= 1.5 * share


def test_policies_mix_every_shape() -> None:
    policies = generate_cluster(SMALL).policies
    assert {p.name.rsplit("-", 1)[0] for p in policies} == set(SHAPES)
    peers = [peer for p in policies for r in (*p.ingress, *p.egress) for peer in r.peers]
    ports = [port for p in policies for r in (*p.ingress, *p.egress) for port in r.ports]
    selectors = [p.pod_selector for p in policies] + [
        s for peer in peers for s in (peer.pod_selector, peer.namespace_selector) if s is not None
    ]
    blocks = [peer.ip_block for peer in peers if peer.ip_block is not None]

    assert any(not p.ingress and not p.egress and len(p.policy_types) == 2 for p in policies)
    assert any(peer.pod_selector and peer.namespace_selector for peer in peers)
    assert any(peer.namespace_selector and peer.pod_selector is None for peer in peers)
    assert any(peer.pod_selector and peer.namespace_selector is None for peer in peers)
    assert {req.operator for s in selectors for req in s.match_expressions} == {
        "In",
        "NotIn",
        "Exists",
        "DoesNotExist",
    }
    assert {b.cidr.version for b in blocks if b.excepts} == {4, 6}
    assert any(isinstance(port.port, str) for port in ports)
    assert any(port.end_port is not None for port in ports)
    assert any(port.port == 53 and port.protocol == "UDP" for port in ports)
    assert any(p.egress and not p.ingress for p in policies)


# Records as the Kubernetes API would serve them, to check that the edge accepts the generated
# records and converts them back to exactly the same thing.


def _selector_k8s(selector: LabelSelector) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if selector.match_labels:
        result["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        result["matchExpressions"] = [
            {
                "key": r.key,
                "operator": r.operator,
                **({"values": sorted(r.values)} if r.values else {}),
            }
            for r in selector.match_expressions
        ]
    return result


def _block_k8s(block: IPBlock) -> dict[str, Any]:
    result: dict[str, Any] = {"cidr": str(block.cidr)}
    if block.excepts:
        result["except"] = [str(e) for e in block.excepts]
    return result


def _peer_k8s(peer: Peer) -> dict[str, Any]:
    if peer.ip_block is not None:
        return {"ipBlock": _block_k8s(peer.ip_block)}
    result: dict[str, Any] = {}
    if peer.pod_selector is not None:
        result["podSelector"] = _selector_k8s(peer.pod_selector)
    if peer.namespace_selector is not None:
        result["namespaceSelector"] = _selector_k8s(peer.namespace_selector)
    return result


def _port_k8s(port: PolicyPort) -> dict[str, Any]:
    result: dict[str, Any] = {"protocol": port.protocol}
    if port.port is not None:
        result["port"] = port.port
    if port.end_port is not None:
        result["endPort"] = port.end_port
    return result


def _rule_k8s(rule: Rule, peers_key: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if rule.peers:
        result[peers_key] = [_peer_k8s(p) for p in rule.peers]
    if rule.ports:
        result["ports"] = [_port_k8s(p) for p in rule.ports]
    return result


def _policy_k8s(policy: NetworkPolicy) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": policy.namespace, "name": policy.name},
        "spec": {
            "podSelector": _selector_k8s(policy.pod_selector),
            "policyTypes": sorted(d.value for d in policy.policy_types),
            "ingress": [_rule_k8s(r, "from") for r in policy.ingress],
            "egress": [_rule_k8s(r, "to") for r in policy.egress],
        },
    }


def _pod_k8s(pod: Pod) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": pod.namespace, "name": pod.name, "labels": dict(pod.labels)},
        "spec": {
            "nodeName": pod.node_name,
            "hostNetwork": pod.host_network,
            "containers": [
                {
                    "name": "main",
                    "ports": [
                        {"name": p.name, "containerPort": p.port, "protocol": p.protocol}
                        for p in pod.ports
                    ],
                }
            ],
        },
        "status": {"phase": "Running", "podIPs": [{"ip": str(a)} for a in pod.ips]},
    }


def _namespace_k8s(namespace: Namespace) -> Mapping[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace.name, "labels": dict(namespace.labels)},
    }


def test_records_are_what_the_edge_makes_of_valid_objects() -> None:
    cluster = generate_cluster(Size(1_000, 300, 10))
    for namespace in cluster.namespaces:
        assert namespace_from_k8s(_namespace_k8s(namespace)) == namespace
    for pod in cluster.pods:
        assert pod_from_k8s(_pod_k8s(pod), strict=True) == pod
    for policy in cluster.policies:
        assert policy_from_k8s(_policy_k8s(policy), strict=True) == policy


# -- flows and the decision sweep -----------------------------------------------------------------


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


# -- changes --------------------------------------------------------------------------------------


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


# -- targets --------------------------------------------------------------------------------------


def _result(
    size: Size = TARGET_SIZE,
    compile_s: float | None = 3.0,
    peak: int = 300 * 2**20,
    change_s: float = 2.5,
    decisions: Mapping[int, float] | None = None,
) -> SizeResult:
    result = SizeResult(size, nodes=size.nodes)
    result.compile_s = compile_s
    result.baseline_rss_bytes = 20 * 2**20
    result.peak_rss_bytes = peak
    for kind in ("pod_relabel", "namespace_relabel", "policy_added"):
        result.changes[kind] = [
            {"snapshot_s": 0.003, "compile_s": change_s, "in_force_s": change_s + 0.003}
        ]
    for count, p50 in (decisions or {10: 1.5e-6, 10_000: 1.6e-6}).items():
        result.decisions[count] = {
            "p50_s": p50,
            "p99_s": p50 * 3,
            "mean_s": p50 * 0.8,
            "flows": 1000,
            "rounds": 1,
            "verdicts": {"allowed": 1000},
        }
    return result


def _verdicts(results: list[SizeResult]) -> dict[str, bool | None]:
    return {
        check.name.split(",")[0].split(" (")[0]: check.met for check in evaluate_targets(results)
    }


def test_targets_met_and_not_met() -> None:
    checks = evaluate_targets([_result()])
    met = {check.name: check.met for check in checks}
    assert met == {
        "full compile, 100k pods/10k pol": True,
        "peak memory, 100k pods/10k pol": True,
        "one change in force (pod relabel), 100k pods": False,
        "one change in force (namespace relabel), 100k pods": False,
        "one change in force (policy added), 100k pods": False,
        "decision time, 10k pol / 10 pol (p50)": True,
    }
    change = checks[2]
    assert change.value == pytest.approx(2.503)
    assert "50.1x the limit" in change.note
    assert "not met" in change.render().lower()


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(
            _result(compile_s=12.0, peak=GiB + 1, change_s=0.02),
            {"full compile": False, "peak memory": False, "one change in force": True},
            id="slow-compile-big-memory-fast-change",
        ),
        pytest.param(
            _result(compile_s=10.0, peak=GiB, change_s=0.045),
            {"full compile": True, "peak memory": True, "one change in force": True},
            id="exactly-at-the-limits",
        ),
        pytest.param(
            _result(decisions={10: 1.0e-6, 1_000: 1.1e-6, 10_000: 1.3e-6}),
            {"decision time": False},
            id="decision-ratio-1.3",
        ),
        pytest.param(
            _result(decisions={10: 1.0e-6, 1_000: 1.5e-6}),
            {"decision time": None},
            id="no-10k-policies-no-ratio",
        ),
    ],
)
def test_target_evaluation(result: SizeResult, expected: dict[str, bool | None]) -> None:
    verdicts = _verdicts([result])
    for name, met in expected.items():
        assert verdicts[name] is met, name


def test_targets_not_measured_without_the_target_size() -> None:
    quick = _result(size=Size(10_000, 1_000, 100), decisions={10: 1e-6, 100: 1e-6, 1_000: 1e-6})
    checks = evaluate_targets([quick])
    assert all(check.met is None for check in checks)
    assert all(check.value is None for check in checks)
    assert "needs the 100k pods" in checks[0].note


def test_abandoned_compile_is_not_met_by_at_least_the_timeout() -> None:
    result = _result(compile_s=None)
    result.compile_timeout_s = 300.0
    check = evaluate_targets([result])[0]
    assert check.met is False
    assert check.value == 300.0
    assert "at least 30x" in check.note


def test_decision_ratio_uses_the_largest_size_with_10k_policies() -> None:
    small = _result(size=Size(10_000, 10_000, 100), decisions={10: 1e-6, 10_000: 2e-6})
    large = _result(decisions={10: 1e-6, 10_000: 1.1e-6})
    check = evaluate_targets([small, large])[-1]
    assert check.value == pytest.approx(1.1)
    assert check.met is True
    assert "at 100k pods" in check.note


# -- end to end -----------------------------------------------------------------------------------


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def test_tiny_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_scale_arguments(parser)
    args = parser.parse_args(
        ["--sizes", "200:20:4", "--flows", "2000", "--output", str(tmp_path / "out")]
    )
    assert run_scale(args) == 0
    printed = capsys.readouterr().out
    assert "200 pods/20 pol/4 ns" in printed
    assert "targets:" in printed

    [json_path] = (tmp_path / "out").glob("scale-*.json")
    assert json_path.with_suffix(".png").stat().st_size > 0
    report = json.loads(json_path.read_text())
    assert report["benchmark"] == "scale"
    [size] = report["sizes"]
    assert (size["pods"], size["policies"], size["namespaces"]) == (200, 20, 4)
    assert size["error"] is None
    assert size["compile_timeout_s"] is None
    for key in (
        "nodes",
        "local_pods",
        "identities",
        "tables",
        "generate_s",
        "compile_s",
        "baseline_rss_bytes",
        "snapshot_rss_bytes",
        "peak_rss_bytes",
        "net_peak_rss_bytes",
        "rss_after_compile_bytes",
        "peak_rss_change_bytes",
        "worker_s",
    ):
        assert _positive(size[key]), key
    assert set(size["changes"]) == {"pod_relabel", "namespace_relabel", "policy_added"}
    for change in size["changes"].values():
        assert _positive(change["in_force_s"])
        for measurement in change["measurements"]:
            assert all(_positive(measurement[k]) for k in ("snapshot_s", "compile_s", "in_force_s"))
    assert set(size["decisions"]) == {"10", "20"}
    for decision in size["decisions"].values():
        assert decision["flows"] == 2000
        assert all(_positive(decision[k]) for k in ("p50_s", "p99_s", "mean_s"))
        assert sum(decision["verdicts"].values()) == 2000
    assert len(report["targets"]) == 6
    assert report["machine"]["cpus"]


def test_a_worker_past_its_timeout_is_stopped_and_reported() -> None:
    # The largest size the bench accepts: generating a million pods alone takes seconds on any
    # machine, so the worker is always still busy when the half-second timeout stops it.
    result = measure_size(WorkerSpec(Size(1_000_000, 100_000, 1_000)), timeout=0.5)
    assert result.error == "worker stopped after 500.0 ms"
    assert result.compile_s is None
    table = render_table(ScaleReport("now", False, 1, {"cpus": 2}, [result]))
    assert "(failed)" in table
    assert "error: 1000k pods/100k pol/1k ns: worker stopped after 500.0 ms" in table
