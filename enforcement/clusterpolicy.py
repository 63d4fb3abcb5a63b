"""Stage 0, second policy kind: ClusterNetworkPolicy records (policy.networking.k8s.io).

The cluster-scoped, tiered policy of the network-policy-api project (release v0.2.0 serves it as
``v1alpha2``; upstream's main branch as ``v1beta1``; both have this shape). Like model.py's
records these are netpol-agent's own frozen values, built and validated at the edge
(``agent/``); the compiler reads them from :class:`enforcement.model.ClusterSnapshot`.

Semantics (the API's own documentation, apis/v1alpha2/clusternetworkpolicy_types.go):

- Tiers are evaluated Admin, then NetworkPolicy, then Baseline, then the default (allow).
  Within a tier, policies by ascending ``priority`` (0-1000), and within a policy its rules in
  the order written; the first rule that matches decides: ``Accept`` (allowed, no later tier
  looks), ``Deny`` (denied), ``Pass`` (skip the rest of this tier; evaluation goes on in the next
  tier). Ingress and egress are decided separately; pod-to-pod traffic needs both.
- Two policies of one tier with the same priority: the API leaves the order undefined. We order
  them by name, so the result is deterministic (and ``explain`` warns about the tie).
- A subject selects pods by namespace selector alone, or by namespace AND pod selector;
  host-network pods are never subjects nor pod peers.
- A peer is exactly one of: ``namespaces``, ``pods``, and for egress also ``nodes`` (the nodes'
  own addresses, by node labels) and ``networks`` (CIDRs, which match pod addresses too).
- ``protocols`` empty means all traffic (every protocol, ICMP included). A
  ``destinationNamedPort`` is resolved on each destination pod, whatever its protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from enforcement.model import IPNetwork, LabelSelector, PolicyPort

MIN_PRIORITY = 0
MAX_PRIORITY = 1000
"""``spec.priority`` bounds (kubebuilder Minimum/Maximum)."""

MAX_RULES = 25
"""Most ingress (and most egress) rules in one policy; also the most peers in one rule, CIDRs in
one ``networks`` peer and entries in one ``protocols`` list (kubebuilder MaxItems)."""

MAX_RULE_NAME = 100
"""Longest rule ``name`` (kubebuilder MaxLength)."""


class Tier(Enum):
    """Where a ClusterNetworkPolicy sits relative to NetworkPolicy."""

    ADMIN = "Admin"
    """Before NetworkPolicy: its Accept and Deny cannot be overridden by namespaces."""
    BASELINE = "Baseline"
    """After NetworkPolicy: only for traffic that no NetworkPolicy isolates."""


class RuleAction(Enum):
    ACCEPT = "Accept"
    """Allowed; no later rule or tier of this direction is looked at."""
    DENY = "Deny"
    """Denied; no later rule or tier of this direction is looked at."""
    PASS = "Pass"
    """Skip the rest of this tier; the next tier decides."""


@dataclass(frozen=True, slots=True)
class NamespacedPods:
    """Pods selected by both selectors (``pods`` in a subject or a peer)."""

    namespace_selector: LabelSelector
    """Empty selects every namespace."""
    pod_selector: LabelSelector
    """Empty selects every pod of the selected namespaces."""


@dataclass(frozen=True, slots=True)
class ClusterSubject:
    """The pods a policy applies to: exactly one field set (validated at the edge)."""

    namespaces: LabelSelector | None = None
    """Every pod of the namespaces this selects."""
    pods: NamespacedPods | None = None


@dataclass(frozen=True, slots=True)
class ClusterPeer:
    """One ``from``/``to`` entry: exactly one field set (validated at the edge)."""

    namespaces: LabelSelector | None = None
    """Every pod of the namespaces this selects (host-network pods excluded)."""
    pods: NamespacedPods | None = None
    nodes: LabelSelector | None = None
    """Egress only: the addresses of the nodes this selects (empty: every node)."""
    networks: tuple[IPNetwork, ...] = ()
    """Egress only: these ranges, any address in them (pod addresses included)."""


@dataclass(frozen=True, slots=True)
class ClusterRule:
    """One ingress or egress rule of a ClusterNetworkPolicy."""

    action: RuleAction
    peers: tuple[ClusterPeer, ...]
    """Never empty (the API requires at least one); any peer matching makes the rule match."""
    ports: tuple[PolicyPort, ...] = ()
    """Empty: all traffic. ``tcp``/``udp``/``sctp`` ``destinationPort`` become one entry with a
    number or a range; a ``destinationNamedPort`` becomes one entry per protocol with the name,
    so it matches the destination pod's container port of that name whatever its protocol."""
    name: str = ""
    """The rule's optional name, for people (flow logs, explain)."""


@dataclass(frozen=True, slots=True)
class ClusterNetworkPolicy:
    name: str
    tier: Tier
    priority: int
    """0-1000; lower is evaluated first within the tier."""
    subject: ClusterSubject
    ingress: tuple[ClusterRule, ...] = ()
    """In precedence order; none means the policy does not affect ingress."""
    egress: tuple[ClusterRule, ...] = ()
    staged: bool = False
    """Marked staged (``enforcement.model.STAGED_ANNOTATION``): evaluated and reported, never
    enforced."""

    @property
    def key(self) -> str:
        """Cluster-scoped: the name alone."""
        return self.name

    @property
    def order(self) -> tuple[int, str]:
        """Evaluation order within the tier: priority, then name (the API leaves ties open)."""
        return (self.priority, self.name)


def priority_ties(
    policies: Iterable[ClusterNetworkPolicy],
) -> tuple[tuple[ClusterNetworkPolicy, ...], ...]:
    """Groups of two or more policies that share a tier and a priority, each in the order they
    are evaluated (by name), the groups by tier (Admin first) and priority.

    The API leaves the relative order of such policies undefined (``spec.priority``: "the
    behavior is undefined if two policies have the same priority"), so a cluster that relies on
    it may behave differently under another implementation. Whether a tie matters depends on
    whether the subjects overlap and the rules compete; that changes with every pod, so every
    tie is reported and the reader judges.
    """
    groups: dict[tuple[int, int], list[ClusterNetworkPolicy]] = {}
    tiers = list(Tier)
    for policy in policies:
        groups.setdefault((tiers.index(policy.tier), policy.priority), []).append(policy)
    return tuple(
        tuple(sorted(group, key=lambda policy: policy.order))
        for _key, group in sorted(groups.items(), key=lambda item: item[0])
        if len(group) > 1
    )


def describe_tie(group: Sequence[ClusterNetworkPolicy]) -> str:
    """One line for people: which policies tie, and the order netpol-agent chose."""
    first = group[0]
    names = ", ".join(policy.name for policy in group)
    return (
        f"ClusterNetworkPolicies {names} share priority {first.priority} in the {first.tier.value} "
        "tier: the API leaves their order undefined; netpol-agent evaluates them by name "
        "(other implementations may not)"
    )
