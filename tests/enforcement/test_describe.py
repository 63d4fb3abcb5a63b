"""Tests of enforcement/describe.py: what selects a pod, what a policy selects and admits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from enforcement.describe import describe_pod, describe_policy
from enforcement.explanation import ExplainError
from tests.builders import (
    cluster,
    cpeer,
    crule,
    make_cluster_policy,
    make_namespace,
    make_pod,
    make_policy,
    make_unreadable_pod,
    named_port,
    peer,
    port,
    rule,
    selector,
    subject,
)

SNAPSHOT = cluster(
    make_namespace("shop", team="shop"),
    make_namespace("lab", team="lab"),
    make_pod("shop", "frontend", "10.0.0.1", {"app": "frontend"}),
    make_pod("shop", "backend", "10.0.0.2", {"app": "backend"}, [("http", 8080)]),
    make_pod("lab", "tool", "10.0.0.3", {"app": "tool"}),
    make_pod("lab", "node-exporter", "172.18.0.2", host_network=True),
    make_unreadable_pod("shop", "broken", "10.0.0.9", node=None),
    make_cluster_policy(
        "no-lab",
        priority=20,
        applies_to=subject(namespaces=selector(team="shop")),
        ingress=[crule("Deny", cpeer(namespaces=selector(team="lab")), name="lab")],
    ),
    make_cluster_policy(
        "scrape",
        "Baseline",
        priority=5,
        applies_to=subject(pods=selector(app="backend")),
        ingress=[crule("Accept", cpeer(pods=selector(app="tool")), ports=named_port("http"))],
    ),
    make_policy(
        "shop",
        "backend-in",
        selector(app="backend"),
        [
            rule(peer(pods=selector(app="frontend")), ports=[port("http")]),
            rule(peer(cidr="10.0.0.0/30")),
        ],
    ),
    replace(make_policy("shop", "try-deny", selector(), egress=[]), staged=True),
)


def text(lines: list[str]) -> str:
    return "\n".join(lines)


def test_describe_pod_lists_every_tier_in_order() -> None:
    out = text(describe_pod(SNAPSHOT, "shop/backend"))
    assert "Named ports: http=TCP/8080" in out
    ingress = out[out.index("Ingress") : out.index("Egress")]
    admin = ingress.index("ClusterNetworkPolicy no-lab (priority 20)")
    network_policy = ingress.index("NetworkPolicy tier: isolated for ingress by backend-in")
    baseline = ingress.index("ClusterNetworkPolicy scrape (priority 5)")
    assert admin < network_policy < baseline
    assert "rule 0 (lab): Deny from every pod in namespaces team=lab" in ingress
    assert "rule 0: Allow from pods app=frontend in namespace shop, on TCP/http" in ingress
    assert "try-deny [staged: not enforced]" in ingress
    egress = out[out.index("Egress") :]
    assert "isolated for egress by try-deny [staged: not enforced]" in egress
    assert "(only once staged policies are enforced)" in egress


def test_describe_pod_special_cases() -> None:
    assert "hostNetwork" in text(describe_pod(SNAPSHOT, "lab/node-exporter"))
    unreadable = text(describe_pod(SNAPSHOT, "shop/broken"))
    assert "denied on every node (its node is unknown)" in unreadable
    with pytest.raises(ExplainError, match="no pod shop/ghost"):
        describe_pod(SNAPSHOT, "shop/ghost")


def test_describe_network_policy_resolves_pods() -> None:
    out = text(describe_policy(SNAPSHOT, "shop", "backend-in"))
    assert "Selects now:  shop/backend" in out
    assert "Policy types: Ingress" in out
    assert "pods app=frontend in namespace shop: now shop/frontend" in out
    assert "addresses 10.0.0.0/30: now lab/tool, shop/backend, shop/frontend" in out
    assert "<not affected: Egress is not in policyTypes>" in out


def test_describe_cluster_policy_and_errors() -> None:
    out = text(describe_policy(SNAPSHOT, None, "no-lab"))
    assert "Tier:        Admin, priority 20" in out
    assert "Selects now: shop/backend, shop/frontend" in out
    assert "every pod in namespaces team=lab: now lab/tool" in out
    assert "<none>: the policy does not affect egress" in out
    staged = text(describe_policy(SNAPSHOT, "shop", "try-deny"))
    assert "Staged:       yes" in staged
    with pytest.raises(ExplainError, match="no ClusterNetworkPolicy backend-in"):
        describe_policy(SNAPSHOT, None, "backend-in")
    with pytest.raises(ExplainError, match="no NetworkPolicy lab/no-lab"):
        describe_policy(SNAPSHOT, "lab", "no-lab")
