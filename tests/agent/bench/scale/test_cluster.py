"""The synthetic cluster (agent/bench/scale/cluster.py, plans.py, policies.py): deterministic,
of the requested shape, and made of records the edge would make of valid objects."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.policies import SHAPES
from agent.bench.scale.sizes import NODE, Size
from agent.convert import namespace_from_k8s, pod_from_k8s, policy_from_k8s
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

TINY = Size(300, 40, 4)
SMALL = Size(1_000, 100, 10)


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
