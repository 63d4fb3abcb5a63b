"""Explain: why the cluster allows or denies one flow, walked the slow way for people.

    ClusterSnapshot + flow --explain--> Explanation (per direction: tiers, policies, rules)

For each direction (the source's egress, the destination's ingress) it walks the tiers as the
dataplane does (docs/design-tiers.md, section 1): the Admin ClusterNetworkPolicies selecting
the subject by (priority, name), rules in order, first match (Accept, Deny, or Pass out of the
tier); then the NetworkPolicies isolating it (allowed by the first rule that admits the flow,
policies by name; else denied by isolation); then the Baseline tier; then allow. Every rule
walked says whether it matches, or which peer, protocol, port or named port kept it from
matching (enforcement/matching.py).

What decided is named with the very references the tables and the flow log use
(enforcement/tiers.py builds them): for a NetworkPolicy denial, every isolating policy with
action ``Isolate`` and rule null; for a NetworkPolicy allow, the first admitting rule; for a
ClusterNetworkPolicy, its matching Accept or Deny rule. ``decided_by`` of an explanation is what
the flow log records for the flow (egress first; nothing from an ingress the packet never
reaches). The walk shares no code with the compiler, so the two check each other
(tests/enforcement/test_explain_properties.py).

Where a direction is decided: ``node`` given, only there (the source's egress if it is a pod
of that node, the destination's ingress likewise), exactly as ``compile_tables(snapshot,
node)`` decides; ``node=None``, as the cluster does: egress on the source's node, ingress on
the destination's (a packet an egress denies never reaches the other node). Unreadable pods
are unknown endpoints (fail-closed on their node), hostNetwork pods are their node, traffic
from a pod's own node is always allowed (decided before the tables, enforcement/decide.py).

Staged policies (model.STAGED_ANNOTATION) never decide here either; when the snapshot has any,
the same walk with them enforced too says what they would change (``Explanation.staged``, as
flow records report it: enforcement/staged.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from enforcement.clusterpolicy import (
    ClusterNetworkPolicy,
    RuleAction,
    Tier,
    describe_tie,
    priority_ties,
)
from enforcement.events import verdict_word
from enforcement.explanation import (
    DirectionExplanation,
    Endpoint,
    Explanation,
    PolicyStep,
    RuleStep,
    TierStep,
    Verdicts,
)
from enforcement.matching import Cluster, Party, ports_check
from enforcement.model import ClusterSnapshot, Direction, Pod
from enforcement.tiers import (
    CLUSTER_NETWORK_POLICY_KIND,
    NETWORK_POLICY_KIND,
    NETWORK_POLICY_TIER,
    cluster_rule_ref,
    network_policy_isolation_ref,
    network_policy_rule_ref,
)
from enforcement.verdict import Reason, RuleRef

DENIALS = frozenset({Reason.DENIED_EGRESS, Reason.DENIED_INGRESS, Reason.UNKNOWN_ENDPOINT})


# -- the walk -------------------------------------------------------------------------------


def explain(
    snapshot: ClusterSnapshot,
    source: Endpoint,
    destination: Endpoint,
    protocol: int,
    port: int | None,
    *,
    node: str | None = None,
) -> Explanation:
    """Explain a new flow from ``source`` to ``destination`` (``protocol`` an IANA number,
    ``port`` the destination port, None for ICMP), as node ``node`` decides it, or (None) as
    the cluster does."""
    cluster = Cluster(snapshot)
    walk = _Walk(cluster, source, destination, protocol, port, node)
    enforced = walk.verdicts(staged=False)
    has_staged = any(p.staged for p in snapshot.policies) or any(
        p.staged for p in snapshot.cluster_policies
    )
    staged = walk.verdicts(staged=True) if has_staged else None
    home = walk.party(source, walk.src_home), walk.party(destination, walk.dst_home)
    return Explanation(
        home[0], home[1], protocol, port, node, enforced, staged, walk.warnings(home)
    )


@dataclass(frozen=True, slots=True)
class _Side:
    """One direction at one node: its explanation and what the tables' decider would be."""

    explanation: DirectionExplanation
    denies: bool
    opinion: bool
    """Something decided (a rule, or NetworkPolicy isolation); False: no opinion (allowed)."""


class _Walk:
    def __init__(
        self,
        cluster: Cluster,
        source: Endpoint,
        destination: Endpoint,
        protocol: int,
        port: int | None,
        node: str | None,
    ) -> None:
        self.cluster = cluster
        self.source, self.destination = source, destination
        self.protocol, self.port = protocol, port
        self.node = node
        self.src_home = self.dst_home = node
        self.src_enforced = self.dst_enforced = True
        if node is None:
            self.src_enforced, self.src_home = self._home(source)
            self.dst_enforced, self.dst_home = self._home(destination)

    def _home(self, endpoint: Endpoint) -> tuple[bool, str | None]:
        """Whether some node enforces this end, and which (seen from no node in particular)."""
        party = self.party(endpoint, None, local_first=False)
        if party.pod is not None:
            return True, party.pod.node_name
        if party.unreadable is not None:
            return True, party.unreadable.node_name
        return False, None

    def party(self, endpoint: Endpoint, node: str | None, *, local_first: bool = True) -> Party:
        """The end as ``node`` sees it: by address when it has one (the dataplane knows
        nothing else), else the pod named."""
        if endpoint.address is not None:
            return self.cluster.owner(endpoint.address, node, local_first=local_first)
        if endpoint.pod is not None:
            return self.cluster.party(endpoint.pod, None)
        if endpoint.unreadable_key is not None:
            return self.cluster.party(self.cluster.unreadable[endpoint.unreadable_key], None)
        return Party(None)

    def verdicts(self, *, staged: bool) -> Verdicts:
        nodes: list[str | None] = []
        if self.src_enforced:
            nodes.append(self.src_home)
        if self.dst_enforced and self.dst_home not in nodes:
            nodes.append(self.dst_home)
        src_at = {n: self.party(self.source, n) for n in nodes}
        dst_at = {n: self.party(self.destination, n) for n in nodes}
        host = self._from_own_node()
        egress = ingress = None
        decided_by: tuple[RuleRef, ...] = ()
        reason = Reason.NOT_ISOLATED
        denied = False
        for at in nodes:
            src, dst = src_at[at], dst_at[at]
            if host and at == self.dst_home:
                continue
            node_egress, node_ingress, node_reason, refs = self._at_node(at, src, dst, staged)
            if self.src_enforced and at == self.src_home and egress is None:
                egress = node_egress
            if self.dst_enforced and at == self.dst_home and ingress is None:
                reached = not denied and node_reason is not Reason.DENIED_EGRESS
                ingress = _reached(node_ingress, reached)
            if not denied:
                # What this node records, whichever of its pods it decided for (with a shared
                # address, the source's node may hold the destination's address too).
                decided_by += refs[0] + refs[1]
                if node_reason in DENIALS:
                    reason, denied = node_reason, True
                elif node_reason is Reason.ALLOWED:
                    reason = Reason.ALLOWED
        src_home_party = self.party(self.source, self.src_home)
        dst_home_party = self.party(self.destination, self.dst_home)
        if egress is None:
            egress = _not_enforced(Direction.EGRESS, src_home_party, self.node)
        if ingress is None:
            if host:
                ingress = _not_enforced(Direction.INGRESS, dst_home_party, self.node, host=True)
                if not denied:
                    reason = Reason.HOST if reason is Reason.NOT_ISOLATED else reason
            else:
                ingress = _not_enforced(Direction.INGRESS, dst_home_party, self.node)
        return Verdicts(reason, egress, ingress, decided_by)

    def _from_own_node(self) -> bool:
        """The source is the destination pod's own node: always allowed, before any table
        ("traffic to and from the node where a Pod is running is always allowed",
        kubernetes.io NetworkPolicy docs; enforcement/decide.py step 4)."""
        destination = self.party(self.destination, self.dst_home)
        if destination.pod is None or not self.dst_enforced:
            return False
        node_name = destination.pod.node_name
        if self.node is not None and node_name != self.node:
            return False  # the node asked about does not decide the destination's ingress
        if self.source.pod is not None and self.source.pod.host_network:
            return self.source.pod.node_name == node_name
        source = self.party(self.source, self.dst_home)
        node = self.cluster.nodes.get(node_name or "")
        return (
            not source.is_pod
            and source.address is not None
            and node is not None
            and source.address in node.addresses
        )

    def _at_node(
        self, node: str | None, src: Party, dst: Party, staged: bool
    ) -> tuple[
        DirectionExplanation,
        DirectionExplanation,
        Reason,
        tuple[tuple[RuleRef, ...], tuple[RuleRef, ...]],
    ]:
        """Both directions as ``node``'s tables decide them, the reason, and the refs it
        records (egress, ingress)."""
        cluster = self.cluster
        if cluster.unknown_at(src, node) or cluster.unknown_at(dst, node):
            unknown = src if cluster.unknown_at(src, node) else dst
            return (
                _unknown(Direction.EGRESS, src, node, unknown),
                _unknown(Direction.INGRESS, dst, node, unknown),
                Reason.UNKNOWN_ENDPOINT,
                ((), ()),
            )
        egress = self._side(Direction.EGRESS, src, dst, node, staged)
        ingress = self._side(Direction.INGRESS, dst, src, node, staged)
        egress_refs = egress.explanation.decided_by
        if egress.denies:
            return egress.explanation, ingress.explanation, Reason.DENIED_EGRESS, (egress_refs, ())
        ingress_refs = ingress.explanation.decided_by
        if ingress.denies:
            reason = Reason.DENIED_INGRESS
        elif egress.opinion or ingress.opinion:
            reason = Reason.ALLOWED
        else:
            reason = Reason.NOT_ISOLATED
        return egress.explanation, ingress.explanation, reason, (egress_refs, ingress_refs)

    def _side(
        self, direction: Direction, subject: Party, peer: Party, node: str | None, staged: bool
    ) -> _Side:
        pod = subject.pod
        if pod is None or pod.node_name != node:
            return _Side(_not_enforced(direction, subject, node), False, False)
        destination = peer if direction is Direction.EGRESS else subject
        tiers: list[TierStep] = []
        selecting = self.cluster.cluster_selecting(pod, staged=staged)
        admin = [p for p in selecting if p.tier is Tier.ADMIN]
        baseline = [p for p in selecting if p.tier is Tier.BASELINE]
        step, decided = self._tier(Tier.ADMIN.value, admin, direction, peer, destination)
        tiers.append(step)
        if decided is None:
            step, decided = self._network_policies(pod, direction, peer, destination, staged)
            tiers.append(step)
        if decided is None:
            step, decided = self._tier(Tier.BASELINE.value, baseline, direction, peer, destination)
            tiers.append(step)
        name = direction.value.lower()
        if decided is None:
            if any(tier.result == RuleAction.PASS.value for tier in tiers):
                summary = "allowed: a Pass left its tier and nothing later decides"
            elif any(tier.policies for tier in tiers):
                summary = "allowed: no rule matches, and the default allows"
            else:
                summary = f"allowed: no policy of any tier selects {pod.key} for {name}"
            return _Side(
                DirectionExplanation(
                    direction, pod.key, node, True, True, (), tuple(tiers), summary
                ),
                False,
                False,
            )
        allowed, refs = decided
        summary = f"{verdict_word(allowed)} by " + ", ".join(_ref_words(ref) for ref in refs)
        explanation = DirectionExplanation(
            direction, pod.key, node, True, allowed, refs, tuple(tiers), summary
        )
        return _Side(explanation, not allowed, True)

    def _tier(
        self,
        tier: str,
        policies: list[ClusterNetworkPolicy],
        direction: Direction,
        peer: Party,
        destination: Party,
    ) -> tuple[TierStep, tuple[bool, tuple[RuleRef, ...]] | None]:
        """First match over the tier's policies; Pass leaves the tier (no decision). Only
        policies with rules for this direction take part (the others do not affect it)."""
        steps: list[PolicyStep] = []
        rules_of = {
            policy.name: policy.ingress if direction is Direction.INGRESS else policy.egress
            for policy in policies
        }
        policies = [policy for policy in policies if rules_of[policy.name]]
        result = "no match" if policies else "none"
        decided = None
        for policy in policies:
            rules = rules_of[policy.name]
            walked: list[RuleStep] = []
            matched = None
            for number, rule in enumerate(rules):
                step = RuleStep(
                    RuleRef(*cluster_rule_ref(policy, number, rule)),
                    self.cluster.cluster_peers_check(rule.peers, peer),
                    ports_check(rule.ports, self.protocol, self.port, destination),
                )
                walked.append(step)
                if step.matches:
                    matched = (rule, step)
                    break
            steps.append(
                PolicyStep(
                    CLUSTER_NETWORK_POLICY_KIND,
                    None,
                    policy.name,
                    policy.priority,
                    policy.staged,
                    tuple(walked),
                )
            )
            if matched is not None:
                rule, step = matched
                result = rule.action.value
                if rule.action is not RuleAction.PASS:
                    decided = (rule.action is RuleAction.ACCEPT, (step.ref,))
                break
        return TierStep(tier, tuple(steps), result), decided

    def _network_policies(
        self, pod: Pod, direction: Direction, peer: Party, destination: Party, staged: bool
    ) -> tuple[TierStep, tuple[bool, tuple[RuleRef, ...]] | None]:
        """The union of the isolating NetworkPolicies; the first admitting rule (policies by
        name, rules in order) names the allow, every isolating policy the denial."""
        isolating = self.cluster.isolating(pod, direction, staged=staged)
        if not isolating:
            return TierStep(NETWORK_POLICY_TIER, (), "not isolated"), None
        steps: list[PolicyStep] = []
        first: RuleRef | None = None
        for policy in isolating:
            walked = []
            for number, rule in enumerate(policy.rules(direction)):
                step = RuleStep(
                    RuleRef(*network_policy_rule_ref(policy, number)),
                    self.cluster.peers_check(rule.peers, policy.namespace, peer),
                    ports_check(rule.ports, self.protocol, self.port, destination),
                )
                walked.append(step)
                if step.matches and first is None:
                    first = step.ref
            steps.append(
                PolicyStep(
                    NETWORK_POLICY_KIND,
                    policy.namespace,
                    policy.name,
                    None,
                    policy.staged,
                    tuple(walked),
                )
            )
        if first is not None:
            return TierStep(NETWORK_POLICY_TIER, tuple(steps), "Allow"), (True, (first,))
        refs = tuple(RuleRef(*network_policy_isolation_ref(p)) for p in isolating)
        return TierStep(NETWORK_POLICY_TIER, tuple(steps), "Isolate"), (False, refs)

    def warnings(self, parties: tuple[Party, Party]) -> tuple[str, ...]:
        """Priority ties among the ClusterNetworkPolicies selecting either end (the API
        leaves their order undefined: enforcement/clusterpolicy.py ``priority_ties``)."""
        names: set[str] = set()
        for party in parties:
            if party.pod is not None:
                names |= {p.name for p in self.cluster.cluster_selecting(party.pod, staged=True)}
        ties = priority_ties(self.cluster.snapshot.cluster_policies)
        return tuple(
            describe_tie(group) for group in ties if sum(p.name in names for p in group) > 1
        )


def _reached(explanation: DirectionExplanation, reached: bool) -> DirectionExplanation:
    if reached or not explanation.enforced:
        return explanation
    summary = explanation.summary + " (not reached: the egress denied it first)"
    return replace(explanation, reached=False, summary=summary)


def _not_enforced(
    direction: Direction, party: Party, node: str | None, *, host: bool = False
) -> DirectionExplanation:
    name = direction.value.lower()
    if host:
        why = f"from {party.name}'s own node: always allowed (kubelet probes), before any policy"
    elif party.pod is not None:
        why = f"{party.name} runs on {party.pod.node_name}, not {node}: not decided here"
    elif party.unreadable is not None:
        why = f"{party.name} could not be read: not decided here"
    else:
        why = (
            f"{party.name} is not a pod (an address outside the cluster, a node or a "
            f"hostNetwork pod): no {name} policy applies"
        )
    return DirectionExplanation(direction, party.name, node, False, True, (), (), why)


def _unknown(
    direction: Direction, party: Party, node: str | None, unknown: Party
) -> DirectionExplanation:
    local = party.pod is not None and party.pod.node_name == node
    if party is not unknown and not local:
        return _not_enforced(direction, party, node)
    where = f"node {node}" if node is not None else "its node"
    summary = (
        f"denied: {unknown.name} is a pod whose object could not be read, an unknown "
        f"endpoint: {where} denies all its traffic (fail-closed)"
    )
    return DirectionExplanation(direction, party.name, node, True, False, (), (), summary)


def _ref_words(ref: RuleRef) -> str:
    name = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    text = f"{ref.kind} {name}"
    if ref.rule is not None:
        text += f" rule {ref.rule}" + (f" ({ref.rule_name})" if ref.rule_name else "")
    text += f" {ref.action}"
    return text + (" [staged]" if ref.staged else "")
