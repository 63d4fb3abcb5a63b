"""Stage 0 of the pipeline: the cluster snapshot.

These are netpol-agent's own small, frozen records of the Kubernetes objects that matter for
NetworkPolicy. ``agent/convert.py`` builds them from Kubernetes objects at the edge (and validates
them there, once); nothing in ``enforcement/`` ever sees a Kubernetes client object.

Semantics follow networking.k8s.io/v1 as documented in
https://kubernetes.io/docs/concepts/services-networking/network-policies/ .
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from enforcement.clusterpolicy import ClusterNetworkPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PortProtocol = Literal["TCP", "UDP", "SCTP"]

# IANA protocol numbers, as they appear in the IPv4 protocol / IPv6 next-header field.
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

PROTOCOL_NUMBERS: Mapping[PortProtocol, int] = {
    "TCP": IPPROTO_TCP,
    "UDP": IPPROTO_UDP,
    "SCTP": IPPROTO_SCTP,
}
PROTOCOL_NAMES: Mapping[int, str] = {
    IPPROTO_ICMP: "ICMP",
    IPPROTO_TCP: "TCP",
    IPPROTO_UDP: "UDP",
    IPPROTO_ICMPV6: "ICMPv6",
    IPPROTO_SCTP: "SCTP",
}


STAGED_ANNOTATION = "netpol-agent.io/staged"
"""Set to ``"true"`` on a NetworkPolicy or ClusterNetworkPolicy: the policy is staged. The
agent evaluates it and reports what it would change (flow log, explain), but does not enforce
it, so a default-deny can be tried on a live cluster before it bites (Calico's staged policies
do the same with kinds of their own; this works on the upstream kinds)."""


class Direction(Enum):
    """Which side of a pod a policy rule guards."""

    INGRESS = "Ingress"
    """Traffic arriving at the selected pod; the peer is the source."""
    EGRESS = "Egress"
    """Traffic leaving the selected pod; the peer is the destination."""


class Labels(Mapping[str, str]):
    """An immutable, hashable label map (Kubernetes ``metadata.labels``)."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = dict(sorted((items or {}).items()))
        self._hash = hash(tuple(self._items.items()))

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Labels({self._items!r})"


SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: SelectorOperator
    values: frozenset[str] = frozenset()
    """Non-empty for In/NotIn, empty for Exists/DoesNotExist (validated at the edge)."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            # A pod without the key satisfies NotIn (apimachinery labels.Selector semantics).
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A metav1.LabelSelector: ``matchLabels`` and ``matchExpressions``, all ANDed.

    The empty selector selects everything.
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    """Sorted (key, value) pairs."""
    match_expressions: tuple[LabelRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(requirement.matches(labels) for requirement in self.match_expressions)


SELECT_ALL = LabelSelector()


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """One ``spec.containers[].ports[]`` entry of a pod."""

    port: int
    protocol: PortProtocol = "TCP"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Labels = field(default_factory=Labels)
    """Includes ``kubernetes.io/metadata.name``, which the API server always sets."""


@dataclass(frozen=True, slots=True)
class Node:
    """A cluster node, for ClusterNetworkPolicy ``nodes`` peers (egress to nodes' addresses)."""

    name: str
    labels: Labels = field(default_factory=Labels)
    addresses: tuple[IPAddress, ...] = ()
    """The node's own addresses (``status.addresses`` of types InternalIP and ExternalIP)."""


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    labels: Labels = field(default_factory=Labels)
    ips: tuple[IPAddress, ...] = ()
    """``status.podIPs``: at most one address per family. Empty until the pod has an address."""
    ports: tuple[ContainerPort, ...] = ()
    """Every declared container port; the named ones resolve NetworkPolicy named ports."""
    node_name: str | None = None
    host_network: bool = False
    """hostNetwork pods use the node's addresses: they are the node, not selectable pods."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: PortProtocol) -> int | None:
        """The number a NetworkPolicy named port resolves to on this pod, or None."""
        for container_port in self.ports:
            if container_port.name == name and container_port.protocol == protocol:
                return container_port.port
        return None


@dataclass(frozen=True, slots=True)
class UnreadablePod:
    """A Pod object that could not be read fully: an *unknown endpoint*, enforced fail-closed.

    Its labels and named ports are unknown (``agent/convert.py`` failed on some field), so no
    selector may match it and no policy may be trusted to isolate or open it. The addresses it
    claims still matter: leaving them out would make its traffic look like a non-pod's and go
    through un-isolated. So, for every address here:

    - on the node that runs it (``node_name``, or every node when that is unknown), all traffic
      to and from the address is denied, whatever the policies say (only the node's own
      traffic passes, as for every pod);
    - elsewhere it is a peer that matches no pod or namespace selector; ``ipBlock`` rules
      still match it by address;
    - it wins every address it shares with a readable pod: an address in doubt is unknown.
    """

    namespace: str
    """Empty when the object does not say (readably)."""
    name: str
    """Empty when the object does not say (readably)."""
    ips: tuple[IPAddress, ...] = ()
    """Every address that could be read from ``status.podIPs``/``status.podIP``, leniently;
    empty for a pod in a terminal phase or with ``hostNetwork: true`` (as for :class:`Pod`)."""
    node_name: str | None = None
    """The node that runs it; None when unknown (unreadable or unset): every node then enforces
    it as its own, since any of them may be the one."""
    error: str = ""
    """Why the object could not be read, for logs and humans."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def runs_on(self, node_name: str) -> bool:
        """Whether node ``node_name`` must enforce this pod as its own (fail-closed)."""
        return self.node_name is None or self.node_name == node_name


@dataclass(frozen=True, slots=True)
class PolicyPort:
    """One ``ports[]`` entry of a NetworkPolicy rule."""

    protocol: PortProtocol = "TCP"
    port: int | str | None = None
    """A number, a named container port, or None for every port of the protocol."""
    end_port: int | None = None
    """With a numeric ``port``: the inclusive end of a range. Never set with a named port."""


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()
    """Sub-ranges of ``cidr`` that the block does not match (same family, validated)."""

    def contains(self, address: IPAddress) -> bool:
        if address.version != self.cidr.version or address not in self.cidr:
            return False
        return not any(address in excluded for excluded in self.excepts)


@dataclass(frozen=True, slots=True)
class Peer:
    """One ``from``/``to`` entry. Exactly one of the shapes below (validated at the edge):

    - ``ip_block`` alone;
    - ``pod_selector`` and/or ``namespace_selector``: both set means both must match (AND);
      ``pod_selector`` alone means pods of the policy's own namespace; ``namespace_selector``
      alone means every pod of the selected namespaces.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One ingress or egress rule."""

    peers: tuple[Peer, ...] = ()
    """Empty means every peer (``from``/``to`` omitted or empty)."""
    ports: tuple[PolicyPort, ...] = ()
    """Empty means every port of every protocol, ICMP included."""


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[Direction]
    """After defaulting: Ingress always, Egress when the spec has an egress section."""
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    staged: bool = False
    """Marked staged (``STAGED_ANNOTATION``): evaluated and reported, never enforced."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Everything the compiler reads. Immutable; a change produces a new snapshot."""

    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    unreadable_pods: tuple[UnreadablePod, ...] = ()
    """Pods whose objects could not be read fully: unknown endpoints (see UnreadablePod)."""
    cluster_policies: tuple[ClusterNetworkPolicy, ...] = ()
    """ClusterNetworkPolicies of both tiers (enforcement/clusterpolicy.py), any order."""
    nodes: tuple[Node, ...] = ()
    """Nodes with their labels and addresses, for ``nodes`` peers of ClusterNetworkPolicies."""
