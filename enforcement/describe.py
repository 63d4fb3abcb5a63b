"""Describe: what selects a pod and what a policy selects, in words (``netpol-agent describe``).

    ClusterSnapshot --describe_pod / describe_policy--> lines of text

``describe pod`` lists, per direction, every policy of every kind and tier that selects the pod,
in the order the dataplane evaluates them (docs/design-tiers.md, section 1), and what each rule
lets in or out. ``describe policy`` is ``kubectl describe networkpolicy`` with the selectors
resolved: the pods the policy applies to now, and for each rule the pods its peers stand for.
Staged policies (model.STAGED_ANNOTATION) are listed where they would be evaluated, marked as
not enforced. Pure: the snapshot in, lines out.
"""

from __future__ import annotations

from collections.abc import Sequence

from enforcement.clusterpolicy import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    Tier,
    describe_tie,
    priority_ties,
)
from enforcement.explanation import ExplainError
from enforcement.matching import Cluster
from enforcement.model import (
    ClusterSnapshot,
    Direction,
    NetworkPolicy,
    Peer,
    Pod,
    Rule,
    UnreadablePod,
)
from enforcement.words import (
    cluster_peer_words,
    cluster_ports_words,
    labels_words,
    peer_words,
    ports_words,
    selector_words,
)

MAX_NAMES = 8
"""Pods named in one "now:" list; the rest are counted."""

STAGED_MARK = " [staged: not enforced]"

_FROM_TO = {Direction.INGRESS: "from", Direction.EGRESS: "to"}


def describe_pod(snapshot: ClusterSnapshot, key: str) -> list[str]:
    """Every policy selecting pod ``namespace/name``, per direction, in evaluation order."""
    cluster = Cluster(snapshot)
    pod = cluster.pods.get(key)
    if pod is None:
        unreadable = cluster.unreadable.get(key)
        if unreadable is None:
            raise ExplainError(f"no pod {key} in the cluster state")
        return _unreadable_pod(unreadable)
    lines = [
        f"Pod:         {pod.key}",
        f"Node:        {pod.node_name or '<not scheduled>'}",
        f"Addresses:   {', '.join(str(a) for a in pod.ips) or '<none>'}",
        f"Labels:      {labels_words(pod.labels)}",
        f"Namespace:   {pod.namespace} ({labels_words(cluster.labels_of(pod.namespace))})",
    ]
    named = [f"{p.name}={p.protocol}/{p.port}" for p in pod.ports if p.name]
    lines.append(f"Named ports: {', '.join(named) or '<none>'}")
    if pod.host_network:
        lines.append(
            f"hostNetwork: the pod is its node ({pod.node_name}): no policy selects it, and "
            "its traffic is the node's (always allowed to the node's own pods)"
        )
        return lines
    for direction in (Direction.INGRESS, Direction.EGRESS):
        lines.append("")
        lines += _pod_direction(cluster, pod, direction)
    ties = _ties(cluster, pod)
    if ties:
        lines.append("")
        lines += [f"Warning: {tie}" for tie in ties]
    return lines


def _unreadable_pod(pod: UnreadablePod) -> list[str]:
    where = f"on {pod.node_name}" if pod.node_name else "on every node (its node is unknown)"
    return [
        f"Pod:         {pod.key}",
        f"Addresses:   {', '.join(str(a) for a in pod.ips) or '<none>'}",
        f"Unreadable:  {pod.error or 'the object could not be read'}",
        f"An unknown endpoint: all its traffic is denied {where} (fail-closed); elsewhere no "
        "selector matches it, only address peers (ipBlock, networks) do",
    ]


def _pod_direction(cluster: Cluster, pod: Pod, direction: Direction) -> list[str]:
    name = direction.value
    selecting = cluster.cluster_selecting(pod, staged=True)
    lines = [f"{name} (evaluated in this order; the first tier that decides wins):"]
    for tier in (Tier.ADMIN, None, Tier.BASELINE):
        if tier is None:
            lines += _network_policy_tier(cluster, pod, direction)
            continue
        policies = [p for p in selecting if p.tier is tier and _rules(p, direction)]
        if not policies:
            lines.append(f"  {tier.value} tier: no ClusterNetworkPolicy with {name} rules")
            continue
        lines.append(f"  {tier.value} tier (first matching rule decides; Pass skips the tier):")
        for policy in policies:
            lines.append(
                f"    ClusterNetworkPolicy {policy.name} (priority {policy.priority})"
                + (STAGED_MARK if policy.staged else "")
            )
            for number, rule in enumerate(_rules(policy, direction)):
                lines.append(f"      {_cluster_rule_line(number, rule, direction)}")
    lines.append("  Otherwise: allowed (nothing had an opinion)")
    return lines


def _network_policy_tier(cluster: Cluster, pod: Pod, direction: Direction) -> list[str]:
    name = direction.value.lower()
    isolating = cluster.isolating(pod, direction, staged=True)
    if not isolating:
        return [f"  NetworkPolicy tier: not isolated for {name} (no NetworkPolicy selects it)"]
    enforced = [p for p in isolating if not p.staged]
    lines = [
        f"  NetworkPolicy tier: isolated for {name} by "
        + ", ".join(p.name + (STAGED_MARK if p.staged else "") for p in isolating)
        + "; allowed is what any of their rules allows, the rest is denied"
        + ("" if enforced else " (only once staged policies are enforced)"),
    ]
    for policy in isolating:
        rules = policy.rules(direction)
        marker = STAGED_MARK if policy.staged else ""
        if not rules:
            lines.append(
                f"    NetworkPolicy {policy.key}{marker}: no {name} rules (allows nothing)"
            )
            continue
        lines.append(f"    NetworkPolicy {policy.key}{marker}")
        for number, rule in enumerate(rules):
            lines.append(f"      {_rule_line(number, rule, policy.namespace, direction)}")
    lines.append("    (when a NetworkPolicy isolates the pod, the Baseline tier is not consulted)")
    return lines


def describe_policy(snapshot: ClusterSnapshot, namespace: str | None, name: str) -> list[str]:
    """A NetworkPolicy (``namespace`` given) or a ClusterNetworkPolicy (None): the pods it
    selects now and its rules in words, with the pods each peer stands for now."""
    cluster = Cluster(snapshot)
    if namespace is not None:
        for policy in snapshot.policies:
            if policy.namespace == namespace and policy.name == name:
                return _network_policy(cluster, policy)
        raise ExplainError(f"no NetworkPolicy {namespace}/{name} in the cluster state")
    for cluster_policy in snapshot.cluster_policies:
        if cluster_policy.name == name:
            return _cluster_policy(cluster, cluster_policy)
    raise ExplainError(
        f"no ClusterNetworkPolicy {name} in the cluster state (a NetworkPolicy is named "
        "namespace/name)"
    )


def _network_policy(cluster: Cluster, policy: NetworkPolicy) -> list[str]:
    lines = [
        f"Name:         {policy.name}",
        f"Namespace:    {policy.namespace}",
        "Kind:         NetworkPolicy",
    ]
    if policy.staged:
        lines.append("Staged:       yes: evaluated and reported, not enforced")
    lines += [
        f"Pod selector: {selector_words(policy.pod_selector)} (in namespace {policy.namespace})",
        f"Selects now:  {_names(cluster.selected_pods(policy))}",
        "Policy types: " + ", ".join(d.value for d in Direction if d in policy.policy_types),
    ]
    for direction in (Direction.INGRESS, Direction.EGRESS):
        lines.append(f"Allowing {direction.value.lower()} traffic:")
        if direction not in policy.policy_types:
            lines.append(f"  <not affected: {direction.value} is not in policyTypes>")
            continue
        rules = policy.rules(direction)
        if not rules:
            lines.append("  <none>: the selected pods are isolated and nothing is allowed")
        for number, rule in enumerate(rules):
            lines.append(f"  {_rule_line(number, rule, policy.namespace, direction)}")
            lines += _peer_pods(cluster, rule.peers, policy.namespace)
    return lines


def _cluster_policy(cluster: Cluster, policy: ClusterNetworkPolicy) -> list[str]:
    subject = policy.subject
    if subject.namespaces is not None:
        subject_words = f"every pod in namespaces {selector_words(subject.namespaces)}"
    elif subject.pods is not None:
        subject_words = (
            f"pods {selector_words(subject.pods.pod_selector)} in namespaces "
            f"{selector_words(subject.pods.namespace_selector)}"
        )
    else:
        subject_words = "<none>"
    lines = [
        f"Name:        {policy.name}",
        "Kind:        ClusterNetworkPolicy",
        f"Tier:        {policy.tier.value}, priority {policy.priority} (lower is evaluated first)",
    ]
    if policy.staged:
        lines.append("Staged:      yes: evaluated and reported, not enforced")
    lines += [
        f"Subject:     {subject_words}",
        f"Selects now: {_names(cluster.selected_pods(policy))}",
    ]
    for direction in (Direction.INGRESS, Direction.EGRESS):
        rules = _rules(policy, direction)
        lines.append(f"{direction.value} rules (in order; the first that matches decides):")
        if not rules:
            lines.append(f"  <none>: the policy does not affect {direction.value.lower()}")
        for number, rule in enumerate(rules):
            lines.append(f"  {_cluster_rule_line(number, rule, direction)}")
            lines += _peer_pods(cluster, rule.peers, "")
    for group in priority_ties(cluster.snapshot.cluster_policies):
        if policy in group:
            lines.append(f"Warning: {describe_tie(group)}")
    return lines


def _rules(policy: ClusterNetworkPolicy, direction: Direction) -> tuple[ClusterRule, ...]:
    return policy.ingress if direction is Direction.INGRESS else policy.egress


def _rule_line(number: int, rule: Rule, namespace: str, direction: Direction) -> str:
    peers = (
        " or ".join(peer_words(peer, namespace) for peer in rule.peers)
        if rule.peers
        else "every address"
    )
    return f"rule {number}: Allow {_FROM_TO[direction]} {peers}, on {ports_words(rule.ports)}"


def _cluster_rule_line(number: int, rule: ClusterRule, direction: Direction) -> str:
    label = f"rule {number}" + (f" ({rule.name})" if rule.name else "")
    peers = " or ".join(cluster_peer_words(peer) for peer in rule.peers)
    return (
        f"{label}: {rule.action.value} {_FROM_TO[direction]} {peers}, on "
        f"{cluster_ports_words(rule.ports)}"
    )


def _peer_pods(
    cluster: Cluster, peers: Sequence[Peer] | Sequence[ClusterPeer], namespace: str
) -> list[str]:
    """Per peer, the pods it stands for now."""
    lines = []
    for peer in peers:
        if isinstance(peer, Peer):
            words = peer_words(peer, namespace)
        else:
            words = cluster_peer_words(peer)
            if peer.nodes is not None:
                nodes = [n.name for n in cluster.snapshot.nodes if peer.nodes.matches(n.labels)]
                lines.append(f"    {words}: now {', '.join(sorted(nodes)) or '<no node>'}")
                continue
        lines.append(f"    {words}: now {_names(cluster.peer_pods(peer, namespace))}")
    return lines


def _names(pods: Sequence[Pod]) -> str:
    if not pods:
        return "<no pod>"
    names = [pod.key for pod in pods[:MAX_NAMES]]
    more = len(pods) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


def _ties(cluster: Cluster, pod: Pod) -> list[str]:
    names = {policy.name for policy in cluster.cluster_selecting(pod, staged=True)}
    return [
        describe_tie(group)
        for group in priority_ties(cluster.snapshot.cluster_policies)
        if sum(policy.name in names for policy in group) > 1
    ]
