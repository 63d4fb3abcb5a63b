"""Tier compilation (enforcement/tiers.py) through the tables: what decides, and who is named.

Each row is a small cluster and one flow, with the reason node-1 gives it and the refs that
decided each direction, written as (name, rule, action) triples.
"""

from __future__ import annotations

import ipaddress

import pytest

from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.compiler import compile_tables
from enforcement.model import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ClusterSnapshot,
    NetworkPolicy,
    Node,
    Pod,
    UnreadablePod,
)
from enforcement.tables import OUTCOMES
from enforcement.verdict import Reason, RuleRef
from tests.builders import (
    cluster,
    cpeer,
    crule,
    ip,
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
from tests.reference import reference_outcome

WEB = make_pod("prod", "web", "10.244.1.2", labels={"app": "web"}, ports=[("http", 8080)])
DB = make_pod("prod", "db", "10.244.1.3", labels={"app": "db"})
CLIENT = make_pod("dev", "client", "10.244.1.4", labels={"app": "client"})
PROM = make_pod("monitoring", "prom", "10.244.2.5", labels={"app": "prom"}, node="node-2")
HOSTNET = make_pod("kube-system", "proxy", "172.18.0.2", host_network=True)
WORKER = make_node("node-2", "172.18.0.3", role="worker")
CONTROL = make_node("node-1", "172.18.0.2", role="control-plane")
EXTERNAL = "203.0.113.10"

BASE: tuple[object, ...] = (
    make_namespace("prod", team="a"),
    make_namespace("dev"),
    make_namespace("monitoring", role="monitoring"),
    WEB,
    DB,
    CLIENT,
    PROM,
    HOSTNET,
    WORKER,
    CONTROL,
)

FROM_DEV = cpeer(namespaces=selector(labels={"kubernetes.io/metadata.name": "dev"}))
FROM_MONITORING = cpeer(namespaces=selector(role="monitoring"))
EVERYONE = cpeer(namespaces=selector())
ON_WEB = subject(pods=selector(app="web"))
WEB_FROM_DEV = make_policy(
    "prod", "web-from-dev", selector(app="web"), ingress=[rule(peer(namespaces=selector()))]
)
WEB_ISOLATED = make_policy("prod", "web-closed", selector(app="web"), ingress=[])


def admin(name: str, priority: int = 10, **rules: object) -> ClusterNetworkPolicy:
    return make_cluster_policy(name, "Admin", priority, ON_WEB, **rules)  # type: ignore[arg-type]


def baseline(name: str, priority: int = 10, **rules: object) -> ClusterNetworkPolicy:
    return make_cluster_policy(name, "Baseline", priority, ON_WEB, **rules)  # type: ignore[arg-type]


Refs = tuple[tuple[str, int | None, str], ...]
Objects = ClusterNetworkPolicy | NetworkPolicy | Pod | Node | UnreadablePod


def snapshot_of(objects: tuple[object, ...]) -> ClusterSnapshot:
    return cluster(*objects)  # type: ignore[arg-type]


def short(refs: tuple[RuleRef, ...]) -> Refs:
    return tuple((ref.name, ref.rule, ref.action) for ref in refs)


ROWS = [
    pytest.param(
        (WEB_FROM_DEV, admin("no-dev", ingress=[crule("Deny", FROM_DEV)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.DENIED_INGRESS, (), (("no-dev", 0, "Deny"),), id="admin-deny-beats-np-allow"),
    pytest.param(
        (WEB_ISOLATED, admin("monitoring-in", ingress=[crule("Accept", FROM_MONITORING)])),
        PROM, WEB, IPPROTO_TCP, 9090,
        Reason.ALLOWED, (), (("monitoring-in", 0, "Accept"),), id="admin-accept-beats-isolation"),
    pytest.param(
        (WEB_FROM_DEV, admin("pass-dev", ingress=[crule("Pass", FROM_DEV),
                                                  crule("Deny", EVERYONE)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.ALLOWED, (), (("web-from-dev", 0, "Allow"),), id="admin-pass-defers-to-np"),
    pytest.param(
        (WEB_ISOLATED, admin("pass-dev", ingress=[crule("Pass", FROM_DEV)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.DENIED_INGRESS, (), (("web-closed", None, "Isolate"),), id="pass-then-np-isolates"),
    pytest.param(
        (admin("pass-dev", ingress=[crule("Pass", FROM_DEV)]),
         baseline("default-deny", ingress=[crule("Deny", EVERYONE)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.DENIED_INGRESS, (), (("default-deny", 0, "Deny"),), id="pass-then-baseline"),
    pytest.param(
        (baseline("default-deny", ingress=[crule("Deny", EVERYONE)]), WEB_FROM_DEV),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.ALLOWED, (), (("web-from-dev", 0, "Allow"),), id="np-overrides-baseline"),
    pytest.param(
        (baseline("default-deny", ingress=[crule("Deny", EVERYONE)]), WEB_ISOLATED),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.DENIED_INGRESS, (), (("web-closed", None, "Isolate"),),
        id="np-isolation-beats-baseline-accept-order"),
    pytest.param(
        (baseline("pass-all", ingress=[crule("Pass", EVERYONE)]),
         baseline("z-deny", 10, ingress=[crule("Deny", EVERYONE)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.NOT_ISOLATED, (), (), id="baseline-pass-means-default-allow"),
    pytest.param(
        (admin("late-accept", 10, ingress=[crule("Accept", EVERYONE)]),
         admin("early-deny", 5, ingress=[crule("Deny", FROM_DEV)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.DENIED_INGRESS, (), (("early-deny", 0, "Deny"),), id="lower-priority-first"),
    pytest.param(
        (admin("b-accept", 5, ingress=[crule("Accept", EVERYONE)]),
         admin("a-deny", 5, ingress=[crule("Deny", FROM_DEV)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.DENIED_INGRESS, (), (("a-deny", 0, "Deny"),), id="equal-priority-by-name"),
    pytest.param(
        (admin("ordered", ingress=[crule("Accept", EVERYONE, ports=[port(80)]),
                                   crule("Deny", EVERYONE)]),),
        CLIENT, WEB, IPPROTO_TCP, 81,
        Reason.DENIED_INGRESS, (), (("ordered", 1, "Deny"),), id="rules-in-order"),
    pytest.param(
        (make_cluster_policy("no-internet", applies_to=subject(namespaces=selector(team="a")),
                             egress=[crule("Deny", cpeer(networks=["203.0.113.0/24"]))]),),
        DB, EXTERNAL, IPPROTO_UDP, 53,
        Reason.DENIED_EGRESS, (("no-internet", 0, "Deny"),), (), id="networks"),
    pytest.param(
        (make_cluster_policy("no-pod-range", applies_to=subject(namespaces=selector(team="a")),
                             egress=[crule("Deny", cpeer(networks=["10.244.0.0/16"]))]),),
        DB, PROM, IPPROTO_TCP, 9090,
        Reason.DENIED_EGRESS, (("no-pod-range", 0, "Deny"),), (), id="networks-cover-pods"),
    pytest.param(
        (make_cluster_policy("no-workers", applies_to=subject(namespaces=selector(team="a")),
                             egress=[crule("Deny", cpeer(nodes=selector(role="worker")))]),),
        DB, "172.18.0.3", IPPROTO_TCP, 10250,
        Reason.DENIED_EGRESS, (("no-workers", 0, "Deny"),), (), id="nodes-selected"),
    pytest.param(
        (make_cluster_policy("no-workers", applies_to=subject(namespaces=selector(team="a")),
                             egress=[crule("Deny", cpeer(nodes=selector(role="worker")))]),),
        DB, "172.18.0.2", IPPROTO_TCP, 10250,
        Reason.NOT_ISOLATED, (), (), id="nodes-not-selected"),
    pytest.param(
        (admin("http-in", ingress=[crule("Accept", EVERYONE, ports=named_port("http"))]),
         baseline("default-deny", ingress=[crule("Deny", EVERYONE)])),
        CLIENT, WEB, IPPROTO_TCP, 8080,
        Reason.ALLOWED, (), (("http-in", 0, "Accept"),), id="named-port-of-subject"),
    pytest.param(
        (make_cluster_policy(
            "http-out", applies_to=subject(namespaces=selector(team="a")),
            egress=[crule("Accept", cpeer(networks=["0.0.0.0/0"]), ports=named_port("http")),
                    crule("Deny", cpeer(networks=["0.0.0.0/0"]))]),),
        DB, EXTERNAL, IPPROTO_TCP, 8080,
        Reason.DENIED_EGRESS, (("http-out", 1, "Deny"),), (), id="named-port-never-a-non-pod"),
    pytest.param(
        (make_cluster_policy(
            "http-out", applies_to=subject(namespaces=selector(team="a")),
            egress=[crule("Accept", cpeer(networks=["0.0.0.0/0"]), ports=named_port("http")),
                    crule("Deny", cpeer(networks=["0.0.0.0/0"]))]),),
        DB, WEB, IPPROTO_TCP, 8080,
        Reason.ALLOWED, (("http-out", 0, "Accept"),), (), id="named-port-of-destination"),
    pytest.param(
        (admin("no-dev", ingress=[crule("Deny", FROM_DEV)]),),
        CLIENT, WEB, IPPROTO_ICMP, None,
        Reason.DENIED_INGRESS, (), (("no-dev", 0, "Deny"),), id="no-protocols-means-icmp-too"),
    pytest.param(
        (admin("no-dev", ingress=[crule("Deny", FROM_DEV, ports=[port(8080)])]),),
        CLIENT, WEB, IPPROTO_ICMP, None,
        Reason.NOT_ISOLATED, (), (), id="ports-never-match-icmp"),
    pytest.param(
        (make_cluster_policy("everyone-out", egress=[crule("Deny", EVERYONE)]),),
        "172.18.0.2", WEB, IPPROTO_TCP, 8080,
        Reason.NOT_ISOLATED, (), (), id="host-network-never-a-subject"),
    pytest.param(
        (make_cluster_policy("no-pods-in", ingress=[crule("Deny", EVERYONE)],
                             applies_to=subject(pods=selector(app="web"))),),
        "172.18.0.2", WEB, IPPROTO_TCP, 8080,
        Reason.NOT_ISOLATED, (), (), id="host-network-never-a-pod-peer"),
    pytest.param(
        (make_cluster_policy("db-out", applies_to=subject(pods=selector(app="db")),
                             egress=[crule("Accept", EVERYONE)]),
         admin("no-db", ingress=[crule("Deny", cpeer(pods=selector(app="db")))])),
        DB, WEB, IPPROTO_TCP, 8080,
        Reason.DENIED_INGRESS, (("db-out", 0, "Accept"),), (("no-db", 0, "Deny"),),
        id="both-directions-named"),
    pytest.param(
        (admin("monitoring-in", ingress=[crule("Accept", FROM_MONITORING)]),
         make_unreadable_pod("prod", "broken", "10.244.1.9")),
        "10.244.1.9", WEB, IPPROTO_TCP, 8080,
        Reason.UNKNOWN_ENDPOINT, (), (), id="unreadable-pod-above-all-tiers"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("objects", "src", "dst", "protocol", "dst_port", "reason", "egress", "ingress"), ROWS
)
def test_tiers_decide_and_name(
    objects: tuple[Objects, ...],
    src: Pod | str,
    dst: Pod | str,
    protocol: int,
    dst_port: int | None,
    reason: Reason,
    egress: Refs,
    ingress: Refs,
) -> None:
    snapshot = snapshot_of((*BASE, *objects))
    tables = compile_tables(snapshot, "node-1")
    source = src if isinstance(src, str) else str(src.ips[0])
    destination = dst if isinstance(dst, str) else str(dst.ips[0])
    outcome = tables.outcome(ip(source), ip(destination), protocol, dst_port)
    assert (outcome.reason, short(outcome.egress), short(outcome.ingress)) == (
        reason,
        egress,
        ingress,
    )
    assert tables.evaluate(ip(source), ip(destination), protocol, dst_port) is reason
    expected = reference_outcome(snapshot, "node-1", source, destination, protocol, dst_port)
    assert (expected.reason, expected.egress, expected.ingress) == (
        outcome.reason,
        outcome.egress,
        outcome.ingress,
    )


def test_a_cluster_rule_is_named_in_full() -> None:
    policy = admin("monitoring-in", 3, ingress=[crule("Accept", FROM_MONITORING, name="scrape")])
    tables = compile_tables(snapshot_of((*BASE, policy)), "node-1")
    outcome = tables.outcome(PROM.ips[0].packed, WEB.ips[0].packed, IPPROTO_TCP, 8080)
    assert outcome.ingress == (
        RuleRef("ClusterNetworkPolicy", None, "monitoring-in", "Admin", 0, "scrape", "Accept"),
    )


def test_every_local_pod_a_cluster_policy_selects_is_queued() -> None:
    # A policy with no rules for a direction still selects its subjects: they are queued.
    selects_db = make_cluster_policy("db", applies_to=subject(pods=selector(app="db")))
    tables = compile_tables(snapshot_of((*BASE, selects_db)), "node-1")
    assert tables.isolated_local_addresses() == {DB.ips[0].packed}
    endpoint = tables.endpoint(DB.ips[0].packed)
    assert endpoint is not None and endpoint.tiered
    assert endpoint.ingress_plan is None and endpoint.egress_plan is None
    assert (
        tables.outcome(DB.ips[0].packed, WEB.ips[0].packed, IPPROTO_TCP, 80)
        is OUTCOMES[Reason.NOT_ISOLATED]
    )


def test_pods_with_the_same_policies_share_one_plan() -> None:
    web_2 = make_pod("prod", "web-2", "10.244.1.7", labels={"app": "web"}, ports=[("http", 81)])
    policy = admin("monitoring-in", ingress=[crule("Accept", FROM_MONITORING)])
    tables = compile_tables(snapshot_of((*BASE, web_2, policy, WEB_FROM_DEV)), "node-1")
    one, two = tables.endpoint(WEB.ips[0].packed), tables.endpoint(web_2.ips[0].packed)
    assert one is not None and two is not None
    # Named ports resolve at lookup: other named ports do not split the plan.
    assert one.ingress_plan is not None and one.ingress_plan is two.ingress_plan
    assert one.ingress_plan.policies == ("monitoring-in",)
    assert one.ingress_plan.table is one.ingress_table


def test_equal_outcomes_are_one_object() -> None:
    policy = admin("no-dev", ingress=[crule("Deny", FROM_DEV)])
    tables = compile_tables(snapshot_of((*BASE, policy)), "node-1")
    first = tables.outcome(CLIENT.ips[0].packed, WEB.ips[0].packed, IPPROTO_TCP, 80)
    again = tables.outcome(CLIENT.ips[0].packed, WEB.ips[0].packed, IPPROTO_UDP, 53)
    assert first is again
    assert first.verdict.reason is Reason.DENIED_INGRESS


def test_nodes_peer_matches_every_address_of_the_node() -> None:
    dual = make_node("node-3", "172.18.0.4", "fc00:f853::4", role="worker")
    policy = make_cluster_policy(
        "no-workers",
        applies_to=subject(namespaces=selector(team="a")),
        egress=[crule("Deny", cpeer(nodes=selector(role="worker")))],
    )
    tables = compile_tables(snapshot_of((*BASE, dual, policy)), "node-1")
    for address in dual.addresses:
        reason = tables.evaluate(DB.ips[0].packed, address.packed, IPPROTO_TCP, 22)
        assert reason is Reason.DENIED_EGRESS, address
    outside = ipaddress.ip_address("172.18.0.5").packed
    assert tables.evaluate(DB.ips[0].packed, outside, IPPROTO_TCP, 22) is Reason.NOT_ISOLATED
