"""Tests of enforcement/words.py: selectors, peers and ports as people read them."""

from __future__ import annotations

import pytest

from enforcement.model import LabelSelector, Peer, PolicyPort
from enforcement.words import (
    ALL_TRAFFIC_WORDS,
    cluster_peer_words,
    cluster_ports_words,
    labels_words,
    peer_words,
    peers_words,
    ports_words,
    selector_words,
)
from tests.builders import cpeer, expr, named_port, peer, port, selector


@pytest.mark.parametrize(
    ("chosen", "words"),
    [
        pytest.param(selector(), "<all>", id="empty"),
        pytest.param(selector(app="web", tier="a"), "app=web,tier=a", id="labels"),
        pytest.param(
            selector(
                expr("tier", "In", "b", "a"),
                expr("env", "NotIn", "x"),
                expr("debug", "DoesNotExist"),
                expr("team", "Exists"),
            ),
            "tier in (a,b),env notin (x),!debug,team",
            id="expressions",
        ),
    ],
)
def test_selector_words(chosen: LabelSelector, words: str) -> None:
    assert selector_words(chosen) == words


@pytest.mark.parametrize(
    ("chosen", "words"),
    [
        pytest.param(peer(pods=selector(app="db")), "pods app=db in namespace shop", id="pods"),
        pytest.param(
            peer(namespaces=selector(team="a")),
            "every pod in namespaces team=a",
            id="namespaces",
        ),
        pytest.param(
            peer(pods=selector(app="db"), namespaces=selector()),
            "pods app=db in every namespace",
            id="both",
        ),
        pytest.param(
            peer(cidr="10.0.0.0/8", excepts=["10.1.0.0/16"]),
            "addresses 10.0.0.0/8 except 10.1.0.0/16",
            id="ip-block",
        ),
        pytest.param(Peer(), "nothing (an empty peer)", id="empty"),
    ],
)
def test_peer_words(chosen: Peer, words: str) -> None:
    assert peer_words(chosen, "shop") == words


def test_rule_parts() -> None:
    assert peers_words((), "shop") == "every address (pods and others)"
    assert ports_words(()) == ALL_TRAFFIC_WORDS
    ports: tuple[PolicyPort, ...] = (port(80), port(8000, end=8100), port("dns", "UDP"))
    assert ports_words((*ports, port(protocol="SCTP"))) == (
        "TCP/80, TCP/8000-8100, UDP/dns, SCTP (every port)"
    )
    assert cluster_ports_words((*named_port("metrics"), port(53, "UDP"))) == (
        "named port metrics, UDP/53"
    )
    assert labels_words({}) == "<none>"
    assert labels_words({"b": "2", "a": "1"}) == "a=1,b=2"


@pytest.mark.parametrize(
    ("chosen", "words"),
    [
        pytest.param(cpeer(namespaces=selector()), "every pod in every namespace", id="namespaces"),
        pytest.param(
            cpeer(pods=selector(app="x"), namespaces=selector(team="a")),
            "pods app=x in namespaces team=a",
            id="pods",
        ),
        pytest.param(cpeer(nodes=selector()), "every node's addresses", id="every-node"),
        pytest.param(cpeer(nodes=selector(zone="a")), "addresses of nodes zone=a", id="some-nodes"),
        pytest.param(
            cpeer(networks=["10.0.0.0/8", "fd00::/8"]),
            "networks 10.0.0.0/8, fd00::/8",
            id="networks",
        ),
    ],
)
def test_cluster_peer_words(chosen: object, words: str) -> None:
    assert cluster_peer_words(chosen) == words  # type: ignore[arg-type]
