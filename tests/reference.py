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

ClusterNetworkPolicies (policy.networking.k8s.io, the tiers) are walked just as plainly, for
each direction of each local pod: the Admin tier's policies that select the pod, sorted by
(priority, name), their rules in order, first match (Accept: allowed, Deny: denied, Pass: on
to the next tier); then the NetworkPolicies as above if any isolates the pod; then the Baseline
tier likewise; then allowed. What decided is named as a RuleRef (built here, not taken from the
compiler): the ClusterNetworkPolicy rule; the first NetworkPolicy rule that allows, policies by
name and rules in order; or every isolating NetworkPolicy, by name, when none allows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from enforcement.clusterpolicy import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    RuleAction,
    Tier,
)
from enforcement.model import (
    PROTOCOL_NUMBERS,
    ClusterSnapshot,
    Direction,
    IPAddress,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Rule,
)
from enforcement.verdict import Reason, RuleRef


@dataclass(frozen=True)
class ReferenceOutcome:
    """What the naive walk decides for one flow, and what decided each direction."""

    reason: Reason
    egress: tuple[RuleRef, ...]
    """Empty when the source's egress is not enforced here or nothing had an opinion."""
    ingress: tuple[RuleRef, ...]
    """Likewise; also empty when the egress denied (ingress is then not looked at)."""

    @property
    def allowed(self) -> bool:
        return self.reason in (Reason.ALLOWED, Reason.NOT_ISOLATED)


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
    return reference_outcome(snapshot, node_name, src_ip, dst_ip, protocol, dst_port).allowed


def reference_outcome(
    snapshot: ClusterSnapshot,
    node_name: str,
    src_ip: str,
    dst_ip: str,
    protocol: int,
    dst_port: int | None,
) -> ReferenceOutcome:
    """The reason node ``node_name`` gives a new flow, with the refs that decided it."""
    src = ipaddress.ip_address(src_ip)
    dst = ipaddress.ip_address(dst_ip)
    if unknown_here(snapshot, node_name, src) or unknown_here(snapshot, node_name, dst):
        return ReferenceOutcome(Reason.UNKNOWN_ENDPOINT, (), ())
    src_pod = find_pod(snapshot, node_name, src)
    dst_pod = find_pod(snapshot, node_name, dst)

    egress: tuple[RuleRef, ...] = ()
    if src_pod is not None and src_pod.node_name == node_name:
        allowed, egress = direction_decision(
            snapshot, src_pod, Direction.EGRESS, dst, dst_pod, protocol, dst_port, dst_pod
        )
        if not allowed:
            return ReferenceOutcome(Reason.DENIED_EGRESS, egress, ())

    ingress: tuple[RuleRef, ...] = ()
    if dst_pod is not None and dst_pod.node_name == node_name:
        allowed, ingress = direction_decision(
            snapshot, dst_pod, Direction.INGRESS, src, src_pod, protocol, dst_port, dst_pod
        )
        if not allowed:
            return ReferenceOutcome(Reason.DENIED_INGRESS, egress, ingress)

    if not egress and not ingress:
        return ReferenceOutcome(Reason.NOT_ISOLATED, (), ())
    return ReferenceOutcome(Reason.ALLOWED, egress, ingress)


def direction_decision(
    snapshot: ClusterSnapshot,
    subject: Pod,
    direction: Direction,
    peer_address: IPAddress,
    peer_pod: Pod | None,
    protocol: int,
    dst_port: int | None,
    dst_pod: Pod | None,
) -> tuple[bool, tuple[RuleRef, ...]]:
    """One direction of one local pod: Admin tier, NetworkPolicy tier, Baseline tier, allow."""
    flow = (peer_address, peer_pod, protocol, dst_port, dst_pod)
    decided = tier_decision(snapshot, Tier.ADMIN, subject, direction, *flow)
    if decided is not None:
        return decided
    policies = sorted(isolating_policies(snapshot, subject, direction), key=lambda p: p.name)
    if policies:
        for policy in policies:
            for number, rule in enumerate(policy.rules(direction)):
                if rule_allows(snapshot, policy, rule, *flow):
                    return True, (
                        RuleRef("NetworkPolicy", policy.namespace, policy.name,
                                "NetworkPolicy", number, "", "Allow"),
                    )  # fmt: skip
        return False, tuple(
            RuleRef("NetworkPolicy", p.namespace, p.name, "NetworkPolicy", None, "", "Isolate")
            for p in policies
        )
    decided = tier_decision(snapshot, Tier.BASELINE, subject, direction, *flow)
    if decided is not None:
        return decided
    return True, ()


def tier_decision(
    snapshot: ClusterSnapshot,
    tier: Tier,
    subject: Pod,
    direction: Direction,
    peer_address: IPAddress,
    peer_pod: Pod | None,
    protocol: int,
    dst_port: int | None,
    dst_pod: Pod | None,
) -> tuple[bool, tuple[RuleRef, ...]] | None:
    """First matching rule of the tier's policies selecting ``subject``; None: no opinion
    (no rule matched, or a Pass)."""
    selecting = [
        policy
        for policy in snapshot.cluster_policies
        if policy.tier is tier and cluster_subject_selects(snapshot, policy, subject)
    ]
    for policy in sorted(selecting, key=lambda p: (p.priority, p.name)):
        rules = policy.ingress if direction is Direction.INGRESS else policy.egress
        for number, rule in enumerate(rules):
            if cluster_rule_matches(snapshot, rule, peer_address, peer_pod, protocol, dst_port,
                                    dst_pod):  # fmt: skip
                if rule.action is RuleAction.PASS:
                    return None
                ref = RuleRef("ClusterNetworkPolicy", None, policy.name, tier.value, number,
                              rule.name, rule.action.value)  # fmt: skip
                return rule.action is RuleAction.ACCEPT, (ref,)
    return None


def cluster_subject_selects(
    snapshot: ClusterSnapshot, policy: ClusterNetworkPolicy, pod: Pod
) -> bool:
    if pod.host_network:
        return False
    subject = policy.subject
    namespace = namespace_labels(snapshot, pod.namespace)
    if subject.namespaces is not None:
        return subject.namespaces.matches(namespace)
    if subject.pods is not None:
        return subject.pods.namespace_selector.matches(
            namespace
        ) and subject.pods.pod_selector.matches(pod.labels)
    return False


def cluster_rule_matches(
    snapshot: ClusterSnapshot,
    rule: ClusterRule,
    peer_address: IPAddress,
    peer_pod: Pod | None,
    protocol: int,
    dst_port: int | None,
    dst_pod: Pod | None,
) -> bool:
    return any(
        cluster_peer_matches(snapshot, peer, peer_address, peer_pod) for peer in rule.peers
    ) and ports_match(rule.ports, protocol, dst_port, dst_pod)


def cluster_peer_matches(
    snapshot: ClusterSnapshot, peer: ClusterPeer, address: IPAddress, pod: Pod | None
) -> bool:
    if any(address.version == n.version and address in n for n in peer.networks):
        return True  # networks match any address, pods' included
    if peer.nodes is not None:
        return any(
            peer.nodes.matches(node.labels) and address in node.addresses for node in snapshot.nodes
        )
    if pod is None:
        return False  # selectors only ever match pods (never host-network ones)
    namespace = namespace_labels(snapshot, pod.namespace)
    if peer.namespaces is not None:
        return peer.namespaces.matches(namespace)
    if peer.pods is not None:
        return peer.pods.namespace_selector.matches(namespace) and peer.pods.pod_selector.matches(
            pod.labels
        )
    return False


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
    return ports_match(rule.ports, protocol, dst_port, dst_pod)


def ports_match(
    ports: Sequence[PolicyPort], protocol: int, dst_port: int | None, dst_pod: Pod | None
) -> bool:
    """Whether some entry of ``ports`` matches (none: every port of every protocol)."""
    if not ports:
        return True  # every port of every protocol, ICMP included
    if dst_port is None:
        return False  # a packet without ports cannot match a rule that lists ports
    for policy_port in ports:
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
