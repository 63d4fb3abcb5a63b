"""A deliberately naive NetworkPolicy evaluator: the oracle of the differential tests.

Written straight from the networking.k8s.io/v1 documentation, walking every policy for every
question, and sharing no code with ``enforcement/compiler.py`` or ``enforcement/tables.py``:
only the model records (and their ``LabelSelector.matches`` / ``IPBlock.contains``). Slow on
purpose; clarity is the whole point.

Conventions the API leaves open, chosen to match the compiler's documented ones: ipBlocks match
pod addresses too; if two pods claim one address, the local pod, then the smaller
"namespace/name", owns it; a namespace missing from the snapshot carries only the
``kubernetes.io/metadata.name`` label.

Unreadable pods (``ClusterSnapshot.unreadable_pods``) are unknown endpoints, fail-closed: an
address any of them claims is unknown, whoever else claims it. On a node where some claimant of
that address runs (an unreadable pod whose node is unknown runs everywhere), nothing to or from
the address is allowed. Elsewhere it is a peer without labels that no selector matches, and
only ipBlocks match it, by address.
"""

from __future__ import annotations

import ipaddress

from enforcement.model import (
    PROTOCOL_NUMBERS,
    ClusterSnapshot,
    Direction,
    IPAddress,
    NetworkPolicy,
    Peer,
    Pod,
    Rule,
)


def reference_allows(
    snapshot: ClusterSnapshot,
    node_name: str,
    src_ip: str,
    dst_ip: str,
    protocol: int,
    dst_port: int | None,
) -> bool:
    """Whether node ``node_name`` lets a new flow from ``src_ip`` to ``dst_ip`` through.

    The node enforces only its own pods: the source's egress if the source is a local pod,
    the destination's ingress if the destination is a local pod. Both must allow.
    """
    src = ipaddress.ip_address(src_ip)
    dst = ipaddress.ip_address(dst_ip)
    if unknown_here(snapshot, node_name, src) or unknown_here(snapshot, node_name, dst):
        return False
    src_pod = find_pod(snapshot, node_name, src)
    dst_pod = find_pod(snapshot, node_name, dst)

    if src_pod is not None and src_pod.node_name == node_name:
        policies = isolating_policies(snapshot, src_pod, Direction.EGRESS)
        if policies and not any(
            rule_allows(snapshot, policy, rule, dst, dst_pod, protocol, dst_port, dst_pod)
            for policy in policies
            for rule in policy.egress
        ):
            return False

    if dst_pod is not None and dst_pod.node_name == node_name:
        policies = isolating_policies(snapshot, dst_pod, Direction.INGRESS)
        if policies and not any(
            rule_allows(snapshot, policy, rule, src, src_pod, protocol, dst_port, dst_pod)
            for policy in policies
            for rule in policy.ingress
        ):
            return False

    return True


def unknown_here(snapshot: ClusterSnapshot, node_name: str, address: IPAddress) -> bool:
    """Whether ``address`` is an unknown endpoint that node ``node_name`` enforces as its own."""
    unreadable = [pod for pod in snapshot.unreadable_pods if address in pod.ips]
    if not unreadable:
        return False
    if any(pod.node_name is None or pod.node_name == node_name for pod in unreadable):
        return True
    return any(
        not pod.host_network and address in pod.ips and pod.node_name == node_name
        for pod in snapshot.pods
    )


def find_pod(snapshot: ClusterSnapshot, node_name: str, address: IPAddress) -> Pod | None:
    """The pod that has this address, if any. hostNetwork pods are the node, not pods; an
    address an unreadable pod claims belongs to no pod we know (no selector matches it)."""
    if any(address in pod.ips for pod in snapshot.unreadable_pods):
        return None
    owners = [pod for pod in snapshot.pods if not pod.host_network and address in pod.ips]
    if not owners:
        return None
    return min(owners, key=lambda pod: (pod.node_name != node_name, pod.key))


def isolating_policies(
    snapshot: ClusterSnapshot, pod: Pod, direction: Direction
) -> list[NetworkPolicy]:
    """Policies of the pod's namespace that select it and list ``direction`` in policyTypes."""
    return [
        policy
        for policy in snapshot.policies
        if policy.namespace == pod.namespace
        and policy.pod_selector.matches(pod.labels)
        and direction in policy.policy_types
    ]


def rule_allows(
    snapshot: ClusterSnapshot,
    policy: NetworkPolicy,
    rule: Rule,
    peer_address: IPAddress,
    peer_pod: Pod | None,
    protocol: int,
    dst_port: int | None,
    dst_pod: Pod | None,
) -> bool:
    """A rule allows a flow when some peer matches (or it has none) and some port does."""
    if rule.peers and not any(
        peer_matches(snapshot, policy, peer, peer_address, peer_pod) for peer in rule.peers
    ):
        return False
    if not rule.ports:
        return True  # every port of every protocol, ICMP included
    if dst_port is None:
        return False  # a packet without ports cannot match a rule that lists ports
    for policy_port in rule.ports:
        if PROTOCOL_NUMBERS[policy_port.protocol] != protocol:
            continue
        if policy_port.port is None:
            return True
        if isinstance(policy_port.port, str):
            # A named port means the port of that name on the destination pod.
            if dst_pod is not None:
                number = dst_pod.named_port(policy_port.port, policy_port.protocol)
                if number == dst_port:
                    return True
            continue
        end = policy_port.end_port if policy_port.end_port is not None else policy_port.port
        if policy_port.port <= dst_port <= end:
            return True
    return False


def peer_matches(
    snapshot: ClusterSnapshot,
    policy: NetworkPolicy,
    peer: Peer,
    address: IPAddress,
    pod: Pod | None,
) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(address)
    if pod is None:
        return False  # selectors only ever match pods
    if peer.pod_selector is None and peer.namespace_selector is None:
        return False
    if peer.namespace_selector is None:
        in_namespace = pod.namespace == policy.namespace
    else:
        in_namespace = peer.namespace_selector.matches(namespace_labels(snapshot, pod.namespace))
    if not in_namespace:
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)


def namespace_labels(snapshot: ClusterSnapshot, name: str) -> dict[str, str]:
    for namespace in snapshot.namespaces:
        if namespace.name == name:
            return dict(namespace.labels)
    return {"kubernetes.io/metadata.name": name}
