"""The slow, talkative side of matching, for ``explain`` and ``describe``: who selects a pod,
who owns an address, and for one rule whether it matches a flow or why not.

A plain walk over the model's records (networking.k8s.io/v1 NetworkPolicy and the
network-policy-api ClusterNetworkPolicy), sharing nothing with the compiled tables but the
records themselves: that is what lets ``tests/enforcement/test_explain_properties.py`` compare
the two. Each check answers a :class:`Check`: matched or not, and in words which peer or port
matched, or what kept each from matching.

Conventions are the compiler's (enforcement/compiler.py module docstring): an address two pods
claim belongs, on a node, to its local claimant, then to the smaller ``namespace/name``; an
unreadable pod (model.UnreadablePod) owns every address it claims and matches no selector;
hostNetwork pods are their node, never pods; ipBlocks and ``networks`` match pod addresses too;
a namespace missing from the snapshot has only its ``kubernetes.io/metadata.name`` label.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from enforcement.clusterpolicy import ClusterNetworkPolicy, ClusterPeer, NamespacedPods, Tier
from enforcement.compiler import namespace_labels
from enforcement.model import (
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    ClusterSnapshot,
    Direction,
    IPAddress,
    Labels,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    UnreadablePod,
)
from enforcement.words import (
    cluster_peer_words,
    ip_block_words,
    labels_words,
    peer_words,
    policy_port_words,
    selector_words,
)


@dataclass(frozen=True, slots=True)
class Check:
    """Whether one part of a rule (its peers, its ports) matches a flow, and why (not)."""

    matches: bool
    words: str
    """What matched, or what kept every alternative from matching."""


@dataclass(frozen=True, slots=True)
class Party:
    """One end of a flow as one node sees it."""

    address: IPAddress | None
    """The address the flow uses; None for a pod without one (manifests without status)."""
    pod: Pod | None = None
    """The readable pod that owns the address (never a hostNetwork pod)."""
    unreadable: UnreadablePod | None = None
    """The unreadable pod that owns the address: labels unknown, matched by no selector."""
    namespace_labels: Labels | None = None
    """The labels of ``pod``'s namespace."""
    host_pod: str = ""
    """``namespace/name`` of the hostNetwork pod named for this end (it is its node)."""

    @property
    def name(self) -> str:
        """``namespace/name`` of the pod, else the address: as flow records name endpoints."""
        if self.pod is not None:
            return self.pod.key
        if self.unreadable is not None:
            return self.unreadable.key
        if self.address is None:
            return f"{self.host_pod or '?'} (hostNetwork: its node)"
        return str(self.address)

    @property
    def is_pod(self) -> bool:
        return self.pod is not None or self.unreadable is not None


class Cluster:
    """The snapshot's lookups explain and describe need, built once per snapshot."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot
        self.namespace_labels: dict[str, Labels] = namespace_labels(snapshot)
        self.pods: dict[str, Pod] = {pod.key: pod for pod in snapshot.pods}
        self.unreadable: dict[str, UnreadablePod] = {
            pod.key: pod for pod in snapshot.unreadable_pods
        }
        self.nodes: dict[str, Node] = {node.name: node for node in snapshot.nodes}

    def labels_of(self, namespace: str) -> Labels:
        return self.namespace_labels.get(namespace) or Labels()

    def party(self, pod: Pod | UnreadablePod, address: IPAddress | None) -> Party:
        if isinstance(pod, UnreadablePod):
            return Party(address, unreadable=pod)
        if pod.host_network:
            return Party(address, host_pod=pod.key)
        return Party(address, pod, namespace_labels=self.labels_of(pod.namespace))

    def owner(self, address: IPAddress, node: str | None, *, local_first: bool = True) -> Party:
        """Who the tables of ``node`` say own ``address`` (``local_first=False``: who owns it
        seen from no node in particular, to find the node a flow starts or ends on)."""
        unreadable = sorted(
            (pod for pod in self.snapshot.unreadable_pods if address in pod.ips),
            key=lambda pod: pod.key,
        )
        if unreadable:
            return Party(address, unreadable=unreadable[0])
        claimants = [
            pod for pod in self.snapshot.pods if not pod.host_network and address in pod.ips
        ]
        if not claimants:
            return Party(address)
        pod = min(claimants, key=lambda p: (local_first and p.node_name != node, p.key))
        return self.party(pod, address)

    def unknown_at(self, party: Party, node: str | None) -> bool:
        """Whether ``node`` enforces this end as an unknown endpoint of its own (fail-closed):
        an unreadable pod that runs there (or whose node is unknown), or an address such a pod
        shares with a pod of that node."""
        if party.unreadable is None:
            return False
        if party.address is None:
            return party.unreadable.node_name in (None, node)
        claimants = [pod for pod in self.snapshot.unreadable_pods if party.address in pod.ips]
        if any(pod.node_name is None or pod.node_name == node for pod in claimants):
            return True
        return any(
            not pod.host_network and party.address in pod.ips and pod.node_name == node
            for pod in self.snapshot.pods
        )

    # -- who selects whom ----------------------------------------------------------------

    def isolating(self, pod: Pod, direction: Direction, *, staged: bool) -> list[NetworkPolicy]:
        """NetworkPolicies of the pod's namespace that select it for ``direction``, by name;
        ``staged``: staged policies too."""
        return sorted(
            (
                policy
                for policy in self.snapshot.policies
                if (staged or not policy.staged)
                and policy.namespace == pod.namespace
                and direction in policy.policy_types
                and policy.pod_selector.matches(pod.labels)
            ),
            key=lambda policy: policy.name,
        )

    def cluster_selecting(self, pod: Pod, *, staged: bool) -> list[ClusterNetworkPolicy]:
        """ClusterNetworkPolicies whose subject selects the pod, in evaluation order (Admin
        by (priority, name), then Baseline likewise)."""
        if pod.host_network:
            return []
        selected = [
            policy
            for policy in self.snapshot.cluster_policies
            if (staged or not policy.staged) and self.subject_selects(policy, pod)
        ]
        return sorted(selected, key=lambda p: (p.tier is Tier.BASELINE, p.order))

    def subject_selects(self, policy: ClusterNetworkPolicy, pod: Pod) -> bool:
        subject = policy.subject
        labels = self.labels_of(pod.namespace)
        if subject.namespaces is not None:
            return subject.namespaces.matches(labels)
        if subject.pods is not None:
            return self._in(subject.pods, pod)
        return False

    def _in(self, pods: NamespacedPods, pod: Pod) -> bool:
        return pods.namespace_selector.matches(
            self.labels_of(pod.namespace)
        ) and pods.pod_selector.matches(pod.labels)

    def selected_pods(self, policy: NetworkPolicy | ClusterNetworkPolicy) -> list[Pod]:
        """The readable pods a policy applies to now, by key (hostNetwork pods never)."""
        pods = sorted(
            (pod for pod in self.snapshot.pods if not pod.host_network), key=lambda p: p.key
        )
        if isinstance(policy, NetworkPolicy):
            return [
                pod
                for pod in pods
                if pod.namespace == policy.namespace and policy.pod_selector.matches(pod.labels)
            ]
        return [pod for pod in pods if self.subject_selects(policy, pod)]

    def peer_pods(self, peer: Peer | ClusterPeer, policy_namespace: str = "") -> list[Pod]:
        """The readable pods a selector peer stands for now (an address peer: those whose
        addresses it covers)."""
        return [
            pod
            for pod in sorted(self.snapshot.pods, key=lambda p: p.key)
            if not pod.host_network
            and any(
                self._peer_check(peer, policy_namespace, self.party(pod, address)).matches
                for address in (pod.ips or (None,))
            )
        ]

    def _peer_check(self, peer: Peer | ClusterPeer, namespace: str, party: Party) -> Check:
        if isinstance(peer, Peer):
            return self.peer_check(peer, namespace, party)
        return self.cluster_peer_check(peer, party)

    # -- one peer ---------------------------------------------------------------------------

    def peer_check(self, peer: Peer, policy_namespace: str, party: Party) -> Check:
        """One NetworkPolicy peer against one end of the flow."""
        words = peer_words(peer, policy_namespace)
        if peer.ip_block is not None:
            block = peer.ip_block
            if party.address is None:
                return Check(False, f"{party.name} has no address of its own for {words}")
            if block.contains(party.address):
                return Check(True, words)
            if party.address.version == block.cidr.version and party.address in block.cidr:
                hole = next(h for h in block.excepts if party.address in h)
                return Check(False, f"{party.address} is in {hole}, an except of {words}")
            return Check(False, f"{party.address} is not in {ip_block_words(block)}")
        if peer.pod_selector is None and peer.namespace_selector is None:
            return Check(False, "an empty peer matches nothing")
        problem = self._pod_problem(party)
        if problem is not None:
            return Check(False, f"{problem} ({words})")
        assert party.pod is not None and party.namespace_labels is not None
        pod = party.pod
        if peer.namespace_selector is None:
            if pod.namespace != policy_namespace:
                return Check(
                    False,
                    f"{pod.key} is not in the policy's namespace {policy_namespace} ({words})",
                )
        elif not peer.namespace_selector.matches(party.namespace_labels):
            return Check(
                False,
                f"namespace {pod.namespace} ({labels_words(party.namespace_labels)}) is not "
                f"{selector_words(peer.namespace_selector)} ({words})",
            )
        if peer.pod_selector is not None and not peer.pod_selector.matches(pod.labels):
            return Check(
                False,
                f"{pod.key} ({labels_words(pod.labels)}) is not "
                f"{selector_words(peer.pod_selector)} ({words})",
            )
        return Check(True, words)

    def cluster_peer_check(self, peer: ClusterPeer, party: Party) -> Check:
        """One ClusterNetworkPolicy peer against one end of the flow."""
        words = cluster_peer_words(peer)
        if peer.networks:
            if party.address is not None and any(
                party.address.version == network.version and party.address in network
                for network in peer.networks
            ):
                return Check(True, words)
            return Check(False, f"{party.address or party.name} is not in {words}")
        if peer.nodes is not None:
            for node in self.snapshot.nodes:
                if peer.nodes.matches(node.labels) and party.address in node.addresses:
                    return Check(True, f"node {node.name}'s address ({words})")
            return Check(False, f"{party.address or party.name} is no address of {words}")
        problem = self._pod_problem(party)
        if problem is not None:
            return Check(False, f"{problem} ({words})")
        assert party.pod is not None and party.namespace_labels is not None
        pod, labels = party.pod, party.namespace_labels
        if peer.namespaces is not None:
            if peer.namespaces.matches(labels):
                return Check(True, words)
            return Check(
                False,
                f"namespace {pod.namespace} ({labels_words(labels)}) is not "
                f"{selector_words(peer.namespaces)} ({words})",
            )
        if peer.pods is not None:
            if not peer.pods.namespace_selector.matches(labels):
                return Check(
                    False,
                    f"namespace {pod.namespace} ({labels_words(labels)}) is not "
                    f"{selector_words(peer.pods.namespace_selector)} ({words})",
                )
            if not peer.pods.pod_selector.matches(pod.labels):
                return Check(
                    False,
                    f"{pod.key} ({labels_words(pod.labels)}) is not "
                    f"{selector_words(peer.pods.pod_selector)} ({words})",
                )
            return Check(True, words)
        return Check(False, "an empty peer matches nothing")

    @staticmethod
    def _pod_problem(party: Party) -> str | None:
        """Why a selector cannot match this end at all, or None for a readable pod."""
        if party.unreadable is not None:
            return f"{party.name} could not be read: its labels are unknown"
        if party.pod is None:
            return f"{party.name} is not a pod"
        return None

    # -- a rule's peers and ports -----------------------------------------------------------

    def peers_check(self, peers: Sequence[Peer], policy_namespace: str, party: Party) -> Check:
        """A NetworkPolicy rule's peers (ORed; none: every address)."""
        if not peers:
            return Check(True, "every address")
        return _first(self.peer_check(peer, policy_namespace, party) for peer in peers)

    def cluster_peers_check(self, peers: Sequence[ClusterPeer], party: Party) -> Check:
        return _first(self.cluster_peer_check(peer, party) for peer in peers)


def _first(checks: Iterable[Check]) -> Check:
    """The first check that matches, else all the reasons joined."""
    reasons = []
    for check in checks:
        if check.matches:
            return check
        reasons.append(check.words)
    return Check(False, "; ".join(reasons) or "no peer")


def ports_check(
    ports: Sequence[PolicyPort], protocol: int, port: int | None, destination: Party
) -> Check:
    """A rule's ports against the flow's protocol and destination port; named ports are
    resolved on the destination pod (networking.k8s.io/v1 NetworkPolicyPort: "a named port on
    a pod"), and never match a destination that is no readable pod."""
    if not ports:
        return Check(True, "every port and protocol")
    protocol_name = PROTOCOL_NAMES.get(protocol, str(protocol))
    if port is None:
        return Check(False, f"the rule lists ports, and {protocol_name} has none")
    same = [entry for entry in ports if PROTOCOL_NUMBERS[entry.protocol] == protocol]
    if not same:
        listed = sorted({entry.protocol for entry in ports})
        return Check(False, f"the rule covers {', '.join(listed)} only, not {protocol_name}")
    reasons = []
    for entry in same:
        words = policy_port_words(entry)
        if entry.port is None:
            return Check(True, words)
        if isinstance(entry.port, str):
            pod = destination.pod
            if pod is None:
                reasons.append(f"{words} ({destination.name} is not a pod)")
                continue
            number = pod.named_port(entry.port, entry.protocol)
            if number is None:
                reasons.append(f"{words} (not declared on {pod.key})")
            elif number == port:
                return Check(True, f"{words} ({number} on {pod.key})")
            else:
                reasons.append(f"{words} ({number} on {pod.key})")
            continue
        last = entry.port if entry.end_port is None else entry.end_port
        if entry.port <= port <= last:
            return Check(True, words)
        reasons.append(words)
    return Check(False, f"port {port} matches none of " + ", ".join(reasons))
