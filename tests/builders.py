"""Tiny builders for the model records (enforcement/model.py), shared by the whole test suite.

They default what the API server defaults (the namespace name label, policyTypes) so a test
reads like the YAML it stands for::

    cluster(
        make_namespace("prod", team="a"),
        make_pod("prod", "web", "10.0.0.1", labels={"app": "web"}, ports=[("http", 8080)]),
        make_policy("prod", "web-in", selector(app="web"), ingress=[rule(peer(pods=selector()))]),
    )
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from enforcement.clusterpolicy import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    ClusterSubject,
    NamespacedPods,
    RuleAction,
    Tier,
)
from enforcement.model import (
    PROTOCOL_NUMBERS,
    SELECT_ALL,
    ClusterSnapshot,
    ContainerPort,
    Direction,
    IPBlock,
    LabelRequirement,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    PortProtocol,
    Rule,
    SelectorOperator,
    UnreadablePod,
)

METADATA_NAME = "kubernetes.io/metadata.name"

PortSpec = ContainerPort | tuple[str, int] | tuple[str, int, PortProtocol]
"""A container port: a ContainerPort, or (name, number) for TCP, or (name, number, protocol)."""


def ip(text: str) -> bytes:
    """The packed form of an address, as it appears in an IP header."""
    return ipaddress.ip_address(text).packed


def make_namespace(name: str, **labels: str) -> Namespace:
    """A namespace with ``kubernetes.io/metadata.name`` set, as the API server does."""
    return Namespace(name, Labels({**labels, METADATA_NAME: name}))


def make_pod(
    ns: str,
    name: str,
    ip: str | None,
    labels: Mapping[str, str] | None = None,
    ports: Iterable[PortSpec] = (),
    node: str | None = "node-1",
    ipv6: str | None = None,
    host_network: bool = False,
) -> Pod:
    """A pod; ``ip`` None (and no ``ipv6``) is a pod that has no address yet."""
    addresses = tuple(ipaddress.ip_address(a) for a in (ip, ipv6) if a is not None)
    container_ports = tuple(_container_port(spec) for spec in ports)
    return Pod(
        namespace=ns,
        name=name,
        labels=Labels(labels or {}),
        ips=addresses,
        ports=container_ports,
        node_name=node,
        host_network=host_network,
    )


def make_unreadable_pod(
    ns: str, name: str, *ips: str, node: str | None = "node-1", error: str = "test"
) -> UnreadablePod:
    """A pod whose object could not be read (an unknown endpoint); ``node`` None: unknown."""
    return UnreadablePod(
        namespace=ns,
        name=name,
        ips=tuple(ipaddress.ip_address(a) for a in ips),
        node_name=node,
        error=error,
    )


def _container_port(spec: PortSpec) -> ContainerPort:
    if isinstance(spec, ContainerPort):
        return spec
    if len(spec) == 2:
        return ContainerPort(port=spec[1], name=spec[0])
    return ContainerPort(port=spec[1], protocol=spec[2], name=spec[0])


def make_policy(
    ns: str,
    name: str,
    selector: LabelSelector = SELECT_ALL,
    ingress: Iterable[Rule] | None = None,
    egress: Iterable[Rule] | None = None,
    types: Iterable[str | Direction] | None = None,
) -> NetworkPolicy:
    """A policy. ``types`` None defaults like the API: Ingress, plus Egress if ``egress`` is
    given (even empty). ``ingress``/``egress`` None mean the section is absent (no rules)."""
    if types is None:
        directions = {Direction.INGRESS}
        if egress is not None:
            directions.add(Direction.EGRESS)
    else:
        directions = {t if isinstance(t, Direction) else Direction(t) for t in types}
    return NetworkPolicy(
        namespace=ns,
        name=name,
        pod_selector=selector,
        policy_types=frozenset(directions),
        ingress=tuple(ingress or ()),
        egress=tuple(egress or ()),
    )


def expr(key: str, operator: SelectorOperator, *values: str) -> LabelRequirement:
    """One matchExpressions entry: ``expr("tier", "In", "web", "api")``."""
    return LabelRequirement(key, operator, frozenset(values))


def selector(
    *expressions: LabelRequirement,
    labels: Mapping[str, str] | None = None,
    **match_labels: str,
) -> LabelSelector:
    """``selector(app="web")``; ``selector()`` selects everything; keys that are not Python
    names go in ``labels={...}``; matchExpressions are positional (see :func:`expr`)."""
    pairs = {**(labels or {}), **match_labels}
    return LabelSelector(tuple(sorted(pairs.items())), tuple(expressions))


def peer(
    pods: LabelSelector | None = None,
    namespaces: LabelSelector | None = None,
    cidr: str | None = None,
    excepts: Iterable[str] = (),
) -> Peer:
    """A from/to entry: pod and/or namespace selectors, or an ipBlock (``cidr``/``excepts``)."""
    if cidr is not None:
        block = IPBlock(ipaddress.ip_network(cidr), tuple(ipaddress.ip_network(e) for e in excepts))
        return Peer(ip_block=block)
    return Peer(pod_selector=pods, namespace_selector=namespaces)


def rule(*peers: Peer, ports: Iterable[PolicyPort] = ()) -> Rule:
    """A rule; no peers means every peer, no ports means every port and protocol."""
    return Rule(peers=tuple(peers), ports=tuple(ports))


def port(
    number: int | str | None = None, protocol: PortProtocol = "TCP", end: int | None = None
) -> PolicyPort:
    """``port(80)``, ``port("http")``, ``port(53, "UDP")``, ``port(1000, end=2000)``,
    ``port(protocol="SCTP")`` (every SCTP port)."""
    return PolicyPort(protocol=protocol, port=number, end_port=end)


def make_node(name: str, *addresses: str, **labels: str) -> Node:
    """A Node with its labels and its own addresses (InternalIP/ExternalIP)."""
    return Node(name, Labels(labels), tuple(ipaddress.ip_address(a) for a in addresses))


def subject(
    namespaces: LabelSelector | None = None, pods: LabelSelector | None = None
) -> ClusterSubject:
    """A ClusterNetworkPolicy subject: ``subject(namespaces=selector(team="a"))`` (every pod of
    those namespaces), or with ``pods`` too (both selectors; ``namespaces`` None: every one)."""
    if pods is None:
        return ClusterSubject(namespaces=namespaces if namespaces is not None else SELECT_ALL)
    return ClusterSubject(pods=NamespacedPods(namespaces or SELECT_ALL, pods))


def cpeer(
    namespaces: LabelSelector | None = None,
    pods: LabelSelector | None = None,
    nodes: LabelSelector | None = None,
    networks: Iterable[str] = (),
) -> ClusterPeer:
    """A ClusterNetworkPolicy peer: ``cpeer(namespaces=...)``, ``cpeer(pods=..., namespaces=...)``
    (pods of those namespaces; ``namespaces`` None: any), ``cpeer(nodes=...)`` or
    ``cpeer(networks=["10.0.0.0/8"])``."""
    parsed = tuple(ipaddress.ip_network(n) for n in networks)
    if parsed:
        return ClusterPeer(networks=parsed)
    if nodes is not None:
        return ClusterPeer(nodes=nodes)
    if pods is not None:
        return ClusterPeer(pods=NamespacedPods(namespaces or SELECT_ALL, pods))
    return ClusterPeer(namespaces=namespaces if namespaces is not None else SELECT_ALL)


def crule(
    action: str | RuleAction,
    *peers: ClusterPeer,
    ports: Iterable[PolicyPort] = (),
    name: str = "",
) -> ClusterRule:
    """A ClusterNetworkPolicy rule: ``crule("Deny", cpeer(namespaces=selector()))``; no ports
    means all traffic. See :func:`named_port` for ``destinationNamedPort``."""
    chosen = action if isinstance(action, RuleAction) else RuleAction(action)
    return ClusterRule(chosen, tuple(peers), tuple(ports), name)


def named_port(name: str) -> tuple[PolicyPort, ...]:
    """A ``destinationNamedPort``: the name on each protocol, as the edge converts it."""
    return tuple(PolicyPort(protocol, name) for protocol in PROTOCOL_NUMBERS)


def make_cluster_policy(
    name: str,
    tier: str | Tier = Tier.ADMIN,
    priority: int = 10,
    applies_to: ClusterSubject | None = None,
    ingress: Iterable[ClusterRule] = (),
    egress: Iterable[ClusterRule] = (),
) -> ClusterNetworkPolicy:
    """A ClusterNetworkPolicy; ``applies_to`` None: every pod of every namespace."""
    return ClusterNetworkPolicy(
        name=name,
        tier=tier if isinstance(tier, Tier) else Tier(tier),
        priority=priority,
        subject=applies_to or subject(),
        ingress=tuple(ingress),
        egress=tuple(egress),
    )


ClusterObject = Namespace | Pod | NetworkPolicy | UnreadablePod | ClusterNetworkPolicy | Node


def cluster(*objects: ClusterObject) -> ClusterSnapshot:
    """A snapshot of the given objects, in the given order."""
    return ClusterSnapshot(
        namespaces=tuple(o for o in objects if isinstance(o, Namespace)),
        pods=tuple(o for o in objects if isinstance(o, Pod)),
        policies=tuple(o for o in objects if isinstance(o, NetworkPolicy)),
        unreadable_pods=tuple(o for o in objects if isinstance(o, UnreadablePod)),
        cluster_policies=tuple(o for o in objects if isinstance(o, ClusterNetworkPolicy)),
        nodes=tuple(o for o in objects if isinstance(o, Node)),
    )
