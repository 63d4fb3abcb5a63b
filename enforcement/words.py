"""Policies in plain words, for people: selectors, peers and ports as ``explain`` and
``describe`` print them.

Pure string functions of the model's records (no snapshot, no I/O). Selectors are written the
way ``kubectl describe`` writes them (``app=web,tier in (a,b),!debug``), so what a person reads
here matches what they typed in the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from enforcement.clusterpolicy import ClusterPeer, NamespacedPods
from enforcement.model import IPBlock, LabelRequirement, LabelSelector, Peer, PolicyPort

ALL_TRAFFIC_WORDS = "all ports and protocols (ICMP included)"
"""What a rule without ``ports`` (``protocols``) admits."""


def requirement_words(requirement: LabelRequirement) -> str:
    """One ``matchExpressions`` entry: ``tier in (a,b)``, ``!debug``, ``env notin (x)``."""
    values = ",".join(sorted(requirement.values))
    if requirement.operator == "In":
        return f"{requirement.key} in ({values})"
    if requirement.operator == "NotIn":
        return f"{requirement.key} notin ({values})"
    if requirement.operator == "Exists":
        return requirement.key
    return f"!{requirement.key}"


def selector_words(selector: LabelSelector) -> str:
    """A label selector as ``kubectl`` prints it; ``<all>`` for the empty selector."""
    if selector.is_empty:
        return "<all>"
    parts = [f"{key}={value}" for key, value in selector.match_labels]
    parts += [requirement_words(requirement) for requirement in selector.match_expressions]
    return ",".join(parts)


def labels_words(labels: Mapping[str, str]) -> str:
    """Labels as ``kubectl get --show-labels`` prints them; ``<none>`` when there are none."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "<none>"


def pods_words(pods: LabelSelector | None) -> str:
    """``pods app=web`` or ``every pod``."""
    return "every pod" if pods is None or pods.is_empty else f"pods {selector_words(pods)}"


def namespaces_words(namespaces: LabelSelector) -> str:
    """``every namespace`` or ``namespaces team=a``."""
    return "every namespace" if namespaces.is_empty else f"namespaces {selector_words(namespaces)}"


def ip_block_words(block: IPBlock) -> str:
    """``10.0.0.0/16 except 10.0.1.0/24, 10.0.2.0/24``."""
    text = str(block.cidr)
    if block.excepts:
        text += " except " + ", ".join(str(hole) for hole in block.excepts)
    return text


def peer_words(peer: Peer, policy_namespace: str) -> str:
    """One NetworkPolicy ``from``/``to`` entry; a pod selector alone means the policy's own
    namespace (networking.k8s.io/v1 NetworkPolicyPeer)."""
    if peer.ip_block is not None:
        return f"addresses {ip_block_words(peer.ip_block)}"
    if peer.namespace_selector is None:
        if peer.pod_selector is None:
            return "nothing (an empty peer)"
        return f"{pods_words(peer.pod_selector)} in namespace {policy_namespace}"
    return f"{pods_words(peer.pod_selector)} in {namespaces_words(peer.namespace_selector)}"


def peers_words(peers: Sequence[Peer], policy_namespace: str) -> str:
    """A rule's peers, ORed; every address when there are none."""
    if not peers:
        return "every address (pods and others)"
    return " or ".join(peer_words(peer, policy_namespace) for peer in peers)


def namespaced_pods_words(pods: NamespacedPods) -> str:
    return f"{pods_words(pods.pod_selector)} in {namespaces_words(pods.namespace_selector)}"


def cluster_peer_words(peer: ClusterPeer) -> str:
    """One ClusterNetworkPolicy peer."""
    if peer.namespaces is not None:
        return f"every pod in {namespaces_words(peer.namespaces)}"
    if peer.pods is not None:
        return namespaced_pods_words(peer.pods)
    if peer.nodes is not None:
        if peer.nodes.is_empty:
            return "every node's addresses"
        return f"addresses of nodes {selector_words(peer.nodes)}"
    if peer.networks:
        return "networks " + ", ".join(str(network) for network in peer.networks)
    return "nothing (an empty peer)"


def cluster_peers_words(peers: Iterable[ClusterPeer]) -> str:
    return " or ".join(cluster_peer_words(peer) for peer in peers) or "nothing"


def policy_port_words(port: PolicyPort) -> str:
    """``TCP/80``, ``TCP/8000-8100``, ``UDP/dns`` (a named port), ``SCTP (every port)``."""
    if port.port is None:
        return f"{port.protocol} (every port)"
    if isinstance(port.port, str):
        return f"{port.protocol}/{port.port}"
    if port.end_port is not None:
        return f"{port.protocol}/{port.port}-{port.end_port}"
    return f"{port.protocol}/{port.port}"


def ports_words(ports: Sequence[PolicyPort]) -> str:
    """A rule's ports, ORed; everything when there are none."""
    if not ports:
        return ALL_TRAFFIC_WORDS
    return ", ".join(policy_port_words(port) for port in ports)


def cluster_ports_words(ports: Sequence[PolicyPort]) -> str:
    """A ClusterNetworkPolicy rule's ``protocols``: a ``destinationNamedPort`` is one entry per
    protocol at the edge (enforcement/clusterpolicy.py), shown once here."""
    if not ports:
        return ALL_TRAFFIC_WORDS
    seen: list[str] = []
    for port in ports:
        text = f"named port {port.port}" if isinstance(port.port, str) else policy_port_words(port)
        if text not in seen:
            seen.append(text)
    return ", ".join(seen)
