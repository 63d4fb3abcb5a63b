"""Differential property tests of enforcement/explain.py against the compiled tables.

The explanation walks the policies itself (enforcement/matching.py), sharing nothing with the
compiler but the model; the tables are checked against tests/reference.py elsewhere. Here, on
the random clusters of test_compiler_properties.py (NetworkPolicies, ClusterNetworkPolicies of
both tiers with ties, Nodes, unreadable pods, hostNetwork pods, shared addresses, named ports),
with some policies staged at random (and clusters of one-rule ClusterNetworkPolicies that
compete in one tier, where nothing broad hides a mistake, and clusters where an Admin Pass
comes before a rule that would decide):

- on one node, the explanation must give every flow the reason ``AllowTables.outcome`` gives,
  AND name the same refs for each direction (what the flow log records), and with the staged
  policies enforced too the same as ``AllowTables.staged``, with the same staged report
  (would deny / would allow, changed_by) a flow record carries;
- for the cluster (no node), the verdict must be what every node on the way says (the
  source's node for egress, then the destination's for ingress), and ``decided_by`` the refs
  those nodes record, in order, up to the first that denies.

Flows from a pod's own node are decided before the tables (always allowed); the explanation
says so (reason ``host``) and those flows are checked for that alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from enforcement.clusterpolicy import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    ClusterSubject,
    RuleAction,
    Tier,
)
from enforcement.compiler import compile_tables
from enforcement.events import staged_report
from enforcement.explain import explain
from enforcement.explanation import Endpoint
from enforcement.model import ClusterSnapshot, Direction, IPAddress, LabelSelector
from enforcement.packets import PacketInfo
from enforcement.tables import AllowTables, Outcome
from enforcement.verdict import Reason, RuleRef
from tests.enforcement.test_compiler_properties import (
    NODES,
    PROFILE,
    Flow,
    all_flows,
    cluster_ports_st,
    single_cluster_rule_snapshot_st,
    snapshot_st,
)

FLOWS_PER_CLUSTER = 40


def some_flows(data: st.DataObject, snapshot: ClusterSnapshot) -> list[Flow]:
    """Flows of the cluster, three in four between two pods' addresses (where selectors have
    something to match), the rest from or to outside addresses too."""
    flows = all_flows(snapshot)
    claimed = {str(a) for p in (*snapshot.pods, *snapshot.unreadable_pods) for a in p.ips}
    between_pods = [f for f in flows if f.src in claimed and f.dst in claimed] or flows
    count = FLOWS_PER_CLUSTER // 4
    return data.draw(st.lists(st.sampled_from(between_pods), max_size=3 * count)) + data.draw(
        st.lists(st.sampled_from(flows), max_size=count)
    )


@st.composite
def staged_snapshot_st(draw: st.DrawFn) -> ClusterSnapshot:
    """A random cluster with about a third of its policies of both kinds staged; half the
    time one whose ClusterNetworkPolicies have one rule each, often competing in one tier at
    one priority (nothing broad hides a rule's mistake, a Pass included)."""
    snapshot = draw(
        st.one_of(snapshot_st(), single_cluster_rule_snapshot_st(), passing_snapshot_st())
    )
    return replace(
        snapshot,
        policies=tuple(replace(p, staged=draw(st.integers(0, 2)) == 0) for p in snapshot.policies),
        cluster_policies=tuple(
            replace(p, staged=draw(st.integers(0, 2)) == 0) for p in snapshot.cluster_policies
        ),
    )


@st.composite
def passing_snapshot_st(draw: st.DrawFn) -> ClusterSnapshot:
    """A random cluster whose first Admin policy passes most pod traffic of one direction
    while a later one of the same tier would decide it: a Pass must end the tier (and the
    NetworkPolicies or the Baseline tier decide instead). Pass is rare in random clusters."""
    snapshot = draw(snapshot_st())
    direction = draw(st.sampled_from(tuple(Direction)))
    everyone = (ClusterPeer(namespaces=LabelSelector()),)

    def one(name: str, priority: int, action: RuleAction, tier: Tier) -> ClusterNetworkPolicy:
        rule = ClusterRule(action, everyone, draw(cluster_ports_st()), f"{name}-rule")
        return ClusterNetworkPolicy(
            name,
            tier,
            priority,
            ClusterSubject(namespaces=LabelSelector()),
            ingress=(rule,) if direction is Direction.INGRESS else (),
            egress=(rule,) if direction is Direction.EGRESS else (),
        )

    later = draw(st.sampled_from((RuleAction.ACCEPT, RuleAction.DENY)))
    policies = (
        one("pass-first", 0, RuleAction.PASS, Tier.ADMIN),
        one("then-decide", 5, later, Tier.ADMIN),
        one("baseline", 5, draw(st.sampled_from(tuple(RuleAction))), Tier.BASELINE),
    )
    return replace(snapshot, cluster_policies=policies + snapshot.cluster_policies[:1])


def _end(text: str) -> Endpoint:
    return Endpoint(address=ipaddress.ip_address(text))


def _from_own_node(snapshot: ClusterSnapshot, flow: Flow) -> bool:
    """The source is an address of the node of the pod that owns the destination."""
    source = ipaddress.ip_address(flow.src)
    destination = ipaddress.ip_address(flow.dst)
    owners = [p for p in snapshot.pods if destination in p.ips and not p.host_network]
    nodes = {node.name: node for node in snapshot.nodes}
    return any(
        owner.node_name in nodes and source in nodes[owner.node_name].addresses for owner in owners
    )


def _packet(flow: Flow) -> PacketInfo:
    family = 4 if len(flow.packed_src) == 4 else 6
    return PacketInfo(
        family=family,
        src=flow.packed_src,
        dst=flow.packed_dst,
        protocol=flow.protocol,
        src_port=None if flow.port is None else 40000,
        dst_port=flow.port,
    )


@settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 2))
@given(data=st.data(), snapshot=staged_snapshot_st(), node=st.sampled_from(NODES))
def test_explain_on_a_node_agrees_with_the_tables(
    data: st.DataObject, snapshot: ClusterSnapshot, node: str
) -> None:
    tables = compile_tables(snapshot, node)
    for flow in some_flows(data, snapshot):
        got = explain(snapshot, _end(flow.src), _end(flow.dst), flow.protocol, flow.port, node=node)
        if got.reason is Reason.HOST:
            assert _from_own_node(snapshot, flow), flow
            continue
        outcome = tables.outcome(flow.packed_src, flow.packed_dst, flow.protocol, flow.port)
        assert (got.reason, got.decided_by) == (outcome.reason, outcome.refs), flow
        assert got.enforced.egress.decided_by == outcome.egress, flow
        if got.enforced.ingress.reached:
            assert got.enforced.ingress.decided_by == outcome.ingress, flow
        assert got.enforced.egress.allowed or got.reason is not Reason.ALLOWED
        if tables.staged is None:
            assert got.staged is None
            continue
        assert got.staged is not None
        staged = tables.staged.outcome(flow.packed_src, flow.packed_dst, flow.protocol, flow.port)
        assert (got.staged.reason, got.staged.decided_by) == (staged.reason, staged.refs), flow
        assert got.staged_report() == staged_report(_packet(flow), outcome, tables), flow


def _home(snapshot: ClusterSnapshot, address: IPAddress) -> tuple[bool, str]:
    """Whether a node enforces this address's pod, and which (an unreadable pod whose node
    is unknown: any, every node denies it)."""
    unreadable = sorted(
        (p for p in snapshot.unreadable_pods if address in p.ips), key=lambda p: p.key
    )
    if unreadable:
        return True, unreadable[0].node_name or NODES[0]
    pods = [p for p in snapshot.pods if address in p.ips and not p.host_network]
    if not pods:
        return False, ""
    owner = min(pods, key=lambda p: p.key)
    return owner.node_name is not None, owner.node_name or ""


def _cluster_expectation(
    snapshot: ClusterSnapshot, tables: dict[str, AllowTables], flow: Flow
) -> tuple[bool, tuple[RuleRef, ...]]:
    nodes: list[str] = []
    for text in (flow.src, flow.dst):
        enforced, node = _home(snapshot, ipaddress.ip_address(text))
        if enforced and node not in nodes:
            nodes.append(node)
    refs: tuple[RuleRef, ...] = ()
    for node in nodes:
        outcome: Outcome = tables[node].outcome(
            flow.packed_src, flow.packed_dst, flow.protocol, flow.port
        )
        refs += outcome.refs
        if not outcome.verdict.accepted:
            return False, refs
    return True, refs


@settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 2))
@given(
    data=st.data(),
    snapshot=st.one_of(snapshot_st(), single_cluster_rule_snapshot_st(), passing_snapshot_st()),
)
def test_explain_for_the_cluster_agrees_with_each_node(
    data: st.DataObject, snapshot: ClusterSnapshot
) -> None:
    tables = {node: compile_tables(snapshot, node) for node in NODES}
    for flow in some_flows(data, snapshot):
        got = explain(snapshot, _end(flow.src), _end(flow.dst), flow.protocol, flow.port)
        if got.reason is Reason.HOST:
            assert _from_own_node(snapshot, flow), flow
            continue
        allowed, refs = _cluster_expectation(snapshot, tables, flow)
        assert (got.allowed, got.decided_by) == (allowed, refs), flow
