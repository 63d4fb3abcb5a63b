"""Tests of enforcement/explain.py: the reason of every semantics row, and what the walk says.

The rows of test_compiler.py (NetworkPolicy semantics, one row per behaviour) must get the same
reason from the explanation; hand-built tiered clusters check the walk itself: the tiers in
order, each rule's match or the reason it does not match (peer, protocol, port, named port),
the refs named, the cluster view across nodes, staged policies and the JSON form.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from enforcement.explain import explain
from enforcement.explanation import Endpoint, ExplainError, find_endpoint
from enforcement.model import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, ClusterSnapshot
from enforcement.verdict import Reason, RuleRef
from tests.builders import (
    cluster,
    cpeer,
    crule,
    make_cluster_policy,
    make_namespace,
    make_node,
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
from tests.enforcement.test_compiler import Flow, _rows

TCP, UDP, ICMP = IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP


def at(text: str) -> Endpoint:
    return Endpoint(address=ipaddress.ip_address(text))


@pytest.mark.parametrize(("snapshot", "node", "flow"), _rows())
def test_every_semantics_row_gets_its_reason(
    snapshot: ClusterSnapshot, node: str, flow: Flow
) -> None:
    got = explain(snapshot, at(flow.src), at(flow.dst), flow.protocol, flow.port, node=node)
    assert got.reason is flow.expected


# A shop: frontend (node-1) calls backend (node-2) on its named port http=8080; a Baseline
# default-deny for team namespaces, an Admin Pass for the shop's own traffic, an Admin Deny
# from the lab namespace, and the shop's own NetworkPolicy.
FRONTEND, BACKEND, TOOL, DB = "10.244.1.2", "10.244.2.2", "10.244.1.3", "10.244.2.3"
SHOP = (
    make_namespace("shop", team="shop"),
    make_namespace("lab", team="lab"),
    make_pod("shop", "frontend", FRONTEND, {"app": "frontend"}, node="node-1"),
    make_pod("shop", "backend", BACKEND, {"app": "backend"}, [("http", 8080)], node="node-2"),
    make_pod("lab", "tool", TOOL, {"app": "tool"}, node="node-1"),
    make_pod("shop", "db", DB, {"app": "db"}, node="node-2"),
    make_node("node-1", "172.18.0.2"),
    make_node("node-2", "172.18.0.3"),
    make_cluster_policy(
        "shop-own",
        priority=10,
        applies_to=subject(namespaces=selector(team="shop")),
        ingress=[crule("Pass", cpeer(namespaces=selector(team="shop")), name="own-team")],
    ),
    make_cluster_policy(
        "no-lab",
        priority=20,
        applies_to=subject(namespaces=selector(team="shop")),
        ingress=[crule("Deny", cpeer(namespaces=selector(team="lab")), name="lab")],
    ),
    make_cluster_policy(
        "baseline-deny",
        "Baseline",
        priority=10,
        applies_to=subject(namespaces=selector(team="shop")),
        ingress=[crule("Deny", cpeer(namespaces=selector()), name="everyone")],
    ),
    make_policy(
        "shop",
        "backend-in",
        selector(app="backend"),
        [rule(peer(pods=selector(app="frontend")), ports=[port("http"), port(9000, end=9100)])],
    ),
)


def pod(key: str) -> Endpoint:
    return find_endpoint(cluster(*SHOP), key)


def test_admin_pass_then_network_policy_allows_by_named_port() -> None:
    got = explain(cluster(*SHOP), pod("shop/frontend"), pod("shop/backend"), TCP, 8080)
    assert got.allowed and got.reason is Reason.ALLOWED
    allow = RuleRef("NetworkPolicy", "shop", "backend-in", "NetworkPolicy", 0, "", "Allow")
    assert got.decided_by == (allow,)
    ingress = got.enforced.ingress
    assert (ingress.subject, ingress.node, ingress.decided_by) == (
        "shop/backend",
        "node-2",
        (allow,),
    )
    admin, network_policy = ingress.tiers
    assert (admin.tier, admin.result) == ("Admin", "Pass")
    assert [p.name for p in admin.policies] == ["shop-own"]  # the Pass ends the tier
    assert network_policy.result == "Allow"
    assert "8080 on shop/backend" in network_policy.policies[0].rules[0].ports.words
    egress = got.enforced.egress
    assert egress.enforced and egress.allowed and not egress.decided_by
    assert egress.node == "node-1"


@pytest.mark.parametrize(
    ("port_number", "protocol", "why"),
    [
        pytest.param(80, TCP, "TCP/http (8080 on shop/backend)", id="named-port-number"),
        pytest.param(9101, TCP, "port 9101 matches none of", id="outside-range"),
        pytest.param(8080, UDP, "covers TCP only, not UDP", id="protocol"),
        pytest.param(None, ICMP, "ICMP has none", id="no-port"),
    ],
)
def test_network_policy_denial_says_why_each_rule_fails(
    port_number: int | None, protocol: int, why: str
) -> None:
    got = explain(cluster(*SHOP), pod("shop/frontend"), pod("shop/backend"), protocol, port_number)
    isolate = RuleRef("NetworkPolicy", "shop", "backend-in", "NetworkPolicy", None, "", "Isolate")
    assert got.reason is Reason.DENIED_INGRESS and got.decided_by == (isolate,)
    step = got.enforced.ingress.tiers[1].policies[0].rules[0]
    assert step.peers.matches and not step.ports.matches
    assert why in step.ports.words


def test_end_port_range_matches() -> None:
    got = explain(cluster(*SHOP), pod("shop/frontend"), pod("shop/backend"), TCP, 9100)
    assert got.allowed


def test_admin_deny_before_network_policy() -> None:
    got = explain(cluster(*SHOP), pod("lab/tool"), pod("shop/backend"), TCP, 8080)
    deny = RuleRef("ClusterNetworkPolicy", None, "no-lab", "Admin", 0, "lab", "Deny")
    assert (got.reason, got.decided_by) == (Reason.DENIED_INGRESS, (deny,))
    rules = [step for policy in got.enforced.ingress.tiers[0].policies for step in policy.rules]
    assert not rules[0].matches and "is not team=shop" in rules[0].peers.words
    assert rules[1].matches


def test_baseline_decides_when_no_network_policy_isolates() -> None:
    got = explain(cluster(*SHOP), pod("shop/frontend"), pod("shop/db"), TCP, 5432)
    deny = RuleRef("ClusterNetworkPolicy", None, "baseline-deny", "Baseline", 0, "everyone", "Deny")
    assert (got.reason, got.decided_by) == (Reason.DENIED_INGRESS, (deny,))
    assert [tier.result for tier in got.enforced.ingress.tiers] == ["Pass", "not isolated", "Deny"]


def test_peer_reasons_name_the_selector_and_the_block() -> None:
    snapshot = cluster(
        *SHOP,
        make_policy(
            "shop",
            "db-in",
            selector(app="db"),
            [rule(peer(cidr="10.244.0.0/16", excepts=["10.244.1.0/24"]))],
        ),
    )
    got = explain(snapshot, pod("shop/frontend"), pod("shop/db"), TCP, 5432)
    assert got.reason is Reason.DENIED_INGRESS
    step = got.enforced.ingress.tiers[1].policies[0].rules[0]
    assert f"{FRONTEND} is in 10.244.1.0/24, an except of" in step.peers.words
    outside = explain(snapshot, at("192.0.2.1"), pod("shop/db"), TCP, 5432)
    step = outside.enforced.ingress.tiers[1].policies[0].rules[0]
    assert "192.0.2.1 is not in 10.244.0.0/16" in step.peers.words
    assert outside.enforced.egress.enforced is False
    assert "is not a pod" in outside.enforced.egress.summary


def test_cluster_view_egress_denied_never_reaches_ingress() -> None:
    snapshot = cluster(
        *SHOP, make_policy("shop", "frontend-out", selector(app="frontend"), egress=[])
    )
    got = explain(snapshot, pod("shop/frontend"), pod("shop/backend"), TCP, 8080)
    isolate = RuleRef("NetworkPolicy", "shop", "frontend-out", "NetworkPolicy", None, "", "Isolate")
    assert (got.reason, got.decided_by) == (Reason.DENIED_EGRESS, (isolate,))
    assert not got.enforced.ingress.reached and got.enforced.ingress.allowed
    # On node-2 alone the egress is not decided: node-2 admits what reaches it.
    there = explain(snapshot, pod("shop/frontend"), pod("shop/backend"), TCP, 8080, node="node-2")
    assert there.allowed and not there.enforced.egress.enforced


def test_unreadable_pod_is_denied_on_its_node() -> None:
    snapshot = cluster(*SHOP, make_unreadable_pod("shop", "bad", "10.244.2.9", node="node-2"))
    got = explain(snapshot, pod("shop/frontend"), find_endpoint(snapshot, "shop/bad"), TCP, 80)
    assert (got.reason, got.decided_by) == (Reason.UNKNOWN_ENDPOINT, ())
    assert "could not be read" in got.enforced.ingress.summary
    # Its address as a peer elsewhere matches no selector.
    back = explain(snapshot, find_endpoint(snapshot, "shop/bad"), pod("shop/db"), TCP, 80)
    assert back.reason is Reason.UNKNOWN_ENDPOINT


def test_traffic_from_the_pods_own_node_is_allowed() -> None:
    snapshot = cluster(*SHOP, make_policy("shop", "db-in", selector(app="db")))
    got = explain(snapshot, at("172.18.0.3"), pod("shop/db"), TCP, 5432)
    assert got.reason is Reason.HOST and got.allowed
    other = explain(snapshot, at("172.18.0.2"), pod("shop/db"), TCP, 5432)
    assert other.reason is Reason.DENIED_INGRESS


def test_staged_default_deny_would_deny() -> None:
    staged = replace(
        make_policy("shop", "try-deny", selector(app="frontend"), egress=[]), staged=True
    )
    snapshot = cluster(*SHOP, staged)
    got = explain(snapshot, pod("shop/frontend"), pod("shop/backend"), TCP, 80)
    assert not got.allowed  # backend-in denies port 80 already: nothing to change
    report = got.staged_report()
    assert report is not None and not report.would_deny
    tool = explain(snapshot, pod("shop/frontend"), pod("shop/backend"), TCP, 8080)
    report = tool.staged_report()
    assert tool.allowed and report is not None and report.would_deny
    isolate = RuleRef(
        "NetworkPolicy", "shop", "try-deny", "NetworkPolicy", None, "", "Isolate", staged=True
    )
    assert report.changed_by == (isolate,)
    data = tool.as_dict()
    assert data["staged"]["would_deny"] is True
    assert data["staged"]["changed_by"] == [isolate.as_dict()]


def test_json_form_has_the_promised_keys() -> None:
    got = explain(cluster(*SHOP), pod("lab/tool"), pod("shop/backend"), TCP, 8080)
    data = got.as_dict()
    assert data["verdict"] == "denied"
    assert data["egress"]["verdict"] == "allowed" and data["egress"]["decided_by"] == []
    assert data["ingress"]["verdict"] == "denied"
    assert data["ingress"]["decided_by"] == [r.as_dict() for r in got.decided_by]
    assert data["decided_by"] == data["egress"]["decided_by"] + data["ingress"]["decided_by"]
    assert (data["src"]["name"], data["dst"]["address"]) == ("lab/tool", BACKEND)
    assert "staged" not in data


def test_priority_ties_are_warned_about() -> None:
    tie = make_cluster_policy(
        "also-20",
        priority=20,
        applies_to=subject(namespaces=selector(team="shop")),
        ingress=[crule("Accept", cpeer(namespaces=selector()), ports=named_port("http"))],
    )
    got = explain(cluster(*SHOP, tie), pod("lab/tool"), pod("shop/backend"), TCP, 8080)
    assert any("also-20, no-lab share priority 20" in warning for warning in got.warnings)
    assert got.decided_by[0].name == "also-20"  # by name: also-20 before no-lab


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("shop/nobody", "no pod shop/nobody", id="unknown-pod"),
        pytest.param("not-an-address", "neither namespace/name", id="garbage"),
    ],
)
def test_endpoint_errors(text: str, message: str) -> None:
    with pytest.raises(ExplainError, match=message):
        find_endpoint(cluster(*SHOP), text)


def test_endpoint_family() -> None:
    snapshot = cluster(make_pod("a", "b", "10.0.0.1", ipv6="fd00::1"))
    assert str(find_endpoint(snapshot, "a/b").address) == "10.0.0.1"
    assert str(find_endpoint(snapshot, "a/b", 6).address) == "fd00::1"
    assert find_endpoint(cluster(make_pod("a", "c", None)), "a/c").address is None
