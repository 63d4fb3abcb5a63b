"""Stage 1, second policy kind: ClusterNetworkPolicy compiled into ordered tier rules.

    ClusterSnapshot.cluster_policies --TierCompiler--> DirectionPlan (tables.py) per local pod

:mod:`enforcement.compiler` owns the snapshot's indexes (namespaces, identities, local pods)
and the memoised peer selections; this module turns ClusterNetworkPolicies into what the
tables walk, through the few primitives it is handed:

- *subjects*: for each local identity, the policies that select it, per tier, in evaluation
  order: (priority, name) (the API leaves equal priorities undefined; the name decides here);
- *rules*: each rule once, as a :class:`enforcement.tables.RuleMatch` (peers as shared pod
  sets and address intervals, ports unresolved, its action and the fields of the
  :class:`RuleRef` that names it), whatever number of pods it applies to;
- *plans*: per direction, the admin rules, the NetworkPolicy table and the baseline rules,
  interned so pods with the same three share one :class:`DirectionPlan`.

Semantics (apis/v1alpha2/clusternetworkpolicy_types.go of kubernetes-sigs/network-policy-api,
summarised in enforcement/clusterpolicy.py): first match within a tier; Accept and Deny end the
walk, Pass leaves the tier; ``networks`` match any address in them, pod addresses included;
``nodes`` match the selected nodes' own addresses; host-network pods are never subjects nor pod
peers (the compiler gives them no identity); a named port never matches a non-pod.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from enforcement.clusterpolicy import ClusterNetworkPolicy, ClusterRule, Tier
from enforcement.model import Direction, LabelSelector, NetworkPolicy, Node, PolicyPort
from enforcement.tables import (
    AddressSet,
    DirectionPlan,
    PodSet,
    PolicyTable,
    PortMatch,
    RefFields,
    RuleMatch,
)

NETWORK_POLICY_KIND = "NetworkPolicy"
CLUSTER_NETWORK_POLICY_KIND = "ClusterNetworkPolicy"
NETWORK_POLICY_TIER = "NetworkPolicy"
"""The tier name of NetworkPolicy refs (between ``Admin`` and ``Baseline``)."""
ALLOW_ACTION = "Allow"
"""The action of a NetworkPolicy rule that allowed a flow."""
ISOLATE_ACTION = "Isolate"
"""The action of a NetworkPolicy that denied a flow by isolating the pod without allowing it."""


def network_policy_rule_ref(policy: NetworkPolicy, number: int) -> RefFields:
    """What names rule ``number`` (of its direction) of a NetworkPolicy, when it allowed."""
    return (
        NETWORK_POLICY_KIND,
        policy.namespace,
        policy.name,
        NETWORK_POLICY_TIER,
        number,
        "",
        ALLOW_ACTION,
        policy.staged,
    )


def network_policy_isolation_ref(policy: NetworkPolicy) -> RefFields:
    """What names a NetworkPolicy that isolates a pod, when none of its rules allowed."""
    return (
        NETWORK_POLICY_KIND,
        policy.namespace,
        policy.name,
        NETWORK_POLICY_TIER,
        None,
        "",
        ISOLATE_ACTION,
        policy.staged,
    )


def cluster_rule_ref(policy: ClusterNetworkPolicy, number: int, rule: ClusterRule) -> RefFields:
    """What names rule ``number`` (of its direction) of a ClusterNetworkPolicy."""
    return (
        CLUSTER_NETWORK_POLICY_KIND,
        None,
        policy.name,
        policy.tier.value,
        number,
        rule.name,
        rule.action.value,
        policy.staged,
    )


def _addresses(ranges: Iterable[tuple[int, int, int]], version: int) -> AddressSet | None:
    chosen = [(first, last) for family, first, last in ranges if family == version]
    return AddressSet(chosen) if chosen else None


class TierCompiler:
    """The ClusterNetworkPolicies of one compilation (one per :class:`_Compiler`)."""

    def __init__(
        self,
        policies: Sequence[ClusterNetworkPolicy],
        nodes: Sequence[Node],
        *,
        select_namespaces: Callable[[LabelSelector], Iterable[str]],
        local_identities: Callable[[str, LabelSelector], Iterable[int]],
        pod_set: Callable[[LabelSelector | None, LabelSelector], PodSet],
        port_match: Callable[[tuple[PolicyPort, ...]], PortMatch],
    ) -> None:
        """``select_namespaces``: names of the namespaces a selector selects (with pods or
        not); ``local_identities(namespace, selector)``: local identities of that namespace
        the pod selector selects; ``pod_set(pods, namespaces)``: the shared selection of a
        peer (pod selector None: every pod of the namespaces); ``port_match``: the interned
        match of a ``ports`` list."""
        # Evaluation order: the tier, then (priority, name); a name is unique (cluster-scoped).
        self._policies = sorted(policies, key=lambda p: (p.tier is Tier.BASELINE, p.order))
        self._nodes = nodes
        self._select_namespaces = select_namespaces
        self._local_identities = local_identities
        self._pod_set = pod_set
        self._port_match = port_match
        self._rules: dict[tuple[int, Direction], tuple[RuleMatch, ...]] = {}
        self._node_ranges: dict[LabelSelector, tuple[tuple[int, int, int], ...]] = {}
        self._plans: dict[
            tuple[Direction, tuple[int, ...], PolicyTable | None], DirectionPlan | None
        ] = {}

    def __bool__(self) -> bool:
        return bool(self._policies)

    def subjects(self) -> dict[int, tuple[int, ...]]:
        """Local identity number -> the policies selecting it (indices in evaluation order)."""
        selected: dict[int, list[int]] = {}
        for index, policy in enumerate(self._policies):
            subject = policy.subject
            if subject.pods is not None:
                namespaces, pods = subject.pods.namespace_selector, subject.pods.pod_selector
            elif subject.namespaces is not None:
                namespaces, pods = subject.namespaces, LabelSelector()
            else:
                continue  # no subject: rejected at the edge, selects nothing here
            for namespace in self._select_namespaces(namespaces):
                for number in self._local_identities(namespace, pods):
                    selected.setdefault(number, []).append(index)
        return {number: tuple(indices) for number, indices in selected.items()}

    def plan(
        self, direction: Direction, indices: tuple[int, ...], table: PolicyTable | None
    ) -> DirectionPlan | None:
        """The plan of one direction of pods selected by policies ``indices`` (from
        :meth:`subjects`) whose NetworkPolicy tier is ``table``; None when those policies have
        no rules for this direction (the table alone decides)."""
        key = (direction, indices, table)
        if key in self._plans:
            return self._plans[key]
        admin: list[RuleMatch] = []
        baseline: list[RuleMatch] = []
        names: list[str] = []
        for index in indices:
            rules = self._rules_of(index, direction)
            if not rules:
                continue
            policy = self._policies[index]
            names.append(policy.name)
            (admin if policy.tier is Tier.ADMIN else baseline).extend(rules)
        plan = None
        if names:
            plan = DirectionPlan(direction, tuple(admin), table, tuple(baseline), tuple(names))
        self._plans[key] = plan
        return plan

    def _rules_of(self, index: int, direction: Direction) -> tuple[RuleMatch, ...]:
        rules = self._rules.get((index, direction))
        if rules is None:
            policy = self._policies[index]
            written = policy.ingress if direction is Direction.INGRESS else policy.egress
            rules = self._rules[(index, direction)] = tuple(
                self._rule(policy, number, rule) for number, rule in enumerate(written)
            )
        return rules

    def _rule(self, policy: ClusterNetworkPolicy, number: int, rule: ClusterRule) -> RuleMatch:
        ranges: list[tuple[int, int, int]] = []
        pods: list[PodSet] = []
        for peer in rule.peers:
            if peer.namespaces is not None:
                pods.append(self._pod_set(None, peer.namespaces))
            elif peer.pods is not None:
                pods.append(self._pod_set(peer.pods.pod_selector, peer.pods.namespace_selector))
            elif peer.nodes is not None:
                ranges.extend(self._nodes_ranges(peer.nodes))
            for network in peer.networks:
                first, last = int(network.network_address), int(network.broadcast_address)
                ranges.append((network.version, first, last))
        return RuleMatch(
            self._port_match(rule.ports),
            False,
            _addresses(ranges, 4),
            _addresses(ranges, 6),
            tuple(pods),
            rule.action,
            cluster_rule_ref(policy, number, rule),
        )

    def _nodes_ranges(self, selector: LabelSelector) -> tuple[tuple[int, int, int], ...]:
        ranges = self._node_ranges.get(selector)
        if ranges is None:
            ranges = self._node_ranges[selector] = tuple(
                (address.version, int(address), int(address))
                for node in self._nodes
                if selector.matches(node.labels)
                for address in node.addresses
            )
        return ranges
