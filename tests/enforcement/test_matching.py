"""Tests of enforcement/matching.py: ownership of addresses, unknown endpoints, and one peer or
port list against one end of a flow, with the reason when it does not match."""

from __future__ import annotations

import ipaddress

import pytest

from enforcement.matching import Check, Cluster, Party, ports_check
from enforcement.model import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PolicyPort
from tests.builders import (
    cluster,
    cpeer,
    make_namespace,
    make_node,
    make_pod,
    make_unreadable_pod,
    peer,
    port,
    selector,
)

SNAPSHOT = cluster(
    make_namespace("a", team="x"),
    make_pod("a", "web", "10.0.0.1", {"app": "web"}, [("http", 8080)], node="node-1"),
    make_pod("a", "twin-far", "10.0.0.2", node="node-2"),
    make_pod("b", "twin-near", "10.0.0.2", node="node-1"),
    make_pod("a", "host", "172.18.0.2", node="node-1", host_network=True),
    make_unreadable_pod("a", "broken", "10.0.0.9", node=None),
    make_node("node-1", "172.18.0.2", zone="z1"),
)
CLUSTER = Cluster(SNAPSHOT)


def owner(address: str, node: str | None, local_first: bool = True) -> str:
    return CLUSTER.owner(ipaddress.ip_address(address), node, local_first=local_first).name


def test_owner_of_an_address() -> None:
    assert owner("10.0.0.2", "node-1") == "b/twin-near"  # the node's own pod
    assert owner("10.0.0.2", "node-2") == "a/twin-far"
    assert owner("10.0.0.2", None, local_first=False) == "a/twin-far"  # the smaller key
    assert owner("172.18.0.2", "node-1") == "172.18.0.2"  # a hostNetwork pod is its node
    assert owner("10.0.0.9", "node-2") == "a/broken"
    broken = CLUSTER.owner(ipaddress.ip_address("10.0.0.9"), "node-2")
    assert CLUSTER.unknown_at(broken, "node-2") and CLUSTER.unknown_at(broken, "node-1")
    assert not CLUSTER.unknown_at(CLUSTER.owner(ipaddress.ip_address("10.0.0.1"), None), None)


def party(address: str) -> Party:
    return CLUSTER.owner(ipaddress.ip_address(address), "node-1")


@pytest.mark.parametrize(
    ("address", "chosen", "check"),
    [
        pytest.param(
            "10.0.0.1", peer(pods=selector(app="web")), Check(True, "pods app=web in namespace a"),
            id="pod-selector",
        ),
        pytest.param(
            "10.0.0.2",
            peer(pods=selector()),
            Check(False, "b/twin-near is not in the policy's namespace a "
                  "(every pod in namespace a)"),
            id="other-namespace",
        ),
        pytest.param(
            "10.0.0.1",
            peer(namespaces=selector(team="y")),
            Check(False, "namespace a (kubernetes.io/metadata.name=a,team=x) is not team=y "
                  "(every pod in namespaces team=y)"),
            id="namespace-labels",
        ),
        pytest.param(
            "10.0.0.9",
            peer(namespaces=selector()),
            Check(False, "a/broken could not be read: its labels are unknown "
                  "(every pod in every namespace)"),
            id="unreadable",
        ),
        pytest.param(
            "192.0.2.1",
            peer(pods=selector()),
            Check(False, "192.0.2.1 is not a pod (every pod in namespace a)"),
            id="not-a-pod",
        ),
        pytest.param(
            "10.0.0.9",
            peer(cidr="10.0.0.0/24", excepts=["10.0.0.8/29"]),
            Check(False, "10.0.0.9 is in 10.0.0.8/29, an except of addresses 10.0.0.0/24 except "
                  "10.0.0.8/29"),
            id="except",
        ),
    ],
)  # fmt: skip
def test_network_policy_peer(address: str, chosen: object, check: Check) -> None:
    assert CLUSTER.peer_check(chosen, "a", party(address)) == check  # type: ignore[arg-type]


def test_cluster_peers() -> None:
    node = CLUSTER.cluster_peer_check(cpeer(nodes=selector(zone="z1")), party("172.18.0.2"))
    assert node == Check(True, "node node-1's address (addresses of nodes zone=z1)")
    network = CLUSTER.cluster_peer_check(cpeer(networks=["10.0.0.0/30"]), party("10.0.0.9"))
    assert network == Check(False, "10.0.0.9 is not in networks 10.0.0.0/30")
    assert CLUSTER.cluster_peers_check((cpeer(networks=["10.0.0.0/8"]),), party("10.0.0.9")).matches


@pytest.mark.parametrize(
    ("ports", "protocol", "number", "check"),
    [
        pytest.param((), IPPROTO_ICMP, None, Check(True, "every port and protocol"), id="none"),
        pytest.param((port(80),), IPPROTO_ICMP, None,
                     Check(False, "the rule lists ports, and ICMP has none"), id="icmp"),
        pytest.param((port(80),), IPPROTO_UDP, 80,
                     Check(False, "the rule covers TCP only, not UDP"), id="protocol"),
        pytest.param((port(70, end=80),), IPPROTO_TCP, 80, Check(True, "TCP/70-80"), id="end-port"),
        pytest.param((port("http"),), IPPROTO_TCP, 8080,
                     Check(True, "TCP/http (8080 on a/web)"), id="named"),
        pytest.param((port("http"), port(81)), IPPROTO_TCP, 80,
                     Check(False, "port 80 matches none of TCP/http (8080 on a/web), TCP/81"),
                     id="named-elsewhere"),
        pytest.param((port("dns", "UDP"),), IPPROTO_UDP, 53,
                     Check(False, "port 53 matches none of UDP/dns (not declared on a/web)"),
                     id="named-undeclared"),
    ],
)  # fmt: skip
def test_ports(
    ports: tuple[PolicyPort, ...], protocol: int, number: int | None, check: Check
) -> None:
    assert ports_check(ports, protocol, number, party("10.0.0.1")) == check


def test_named_port_needs_a_pod() -> None:
    check = ports_check((port("http"),), IPPROTO_TCP, 8080, party("192.0.2.1"))
    assert check == Check(False, "port 8080 matches none of TCP/http (192.0.2.1 is not a pod)")


def test_selection() -> None:
    web = CLUSTER.pods["a/web"]
    assert [p.key for p in CLUSTER.peer_pods(peer(cidr="10.0.0.0/30"))] == [
        "a/twin-far",
        "a/web",
        "b/twin-near",
    ]
    assert CLUSTER.cluster_selecting(web, staged=False) == []
