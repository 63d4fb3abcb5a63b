"""Differential property tests of staged policies in enforcement/compiler.py and
enforcement/staged.py, over the random clusters of test_compiler_properties.py.

A random part of each cluster's NetworkPolicies and ClusterNetworkPolicies is marked staged.
Then, for every flow of the cluster (every pair of addresses, every probe):

- the tables ``compile_tables`` returns decide exactly as the tables of the cluster *without*
  its staged policies (reason and refs), and queue the same addresses: a staged policy changes
  no verdict and isolates nobody;
- ``tables.staged`` is None exactly when nothing is staged, and otherwise decides exactly as
  the tables of the cluster with every policy *unstaged* (reason, and refs equal but for their
  ``staged`` flag), with the same generation; ``RuleRef.staged`` is true exactly for the refs
  of staged policies;
- ``staged_verdict`` reports a change exactly when the two actions differ, and names only
  staged refs among those that decided the staged outcome; a change it cannot name comes from
  a staged ``Pass`` rule (the one case the module docstring documents).

The comparison tables are compiled afresh, each by its own compiler: the staged and enforced
tables share one compiler's indexes and memos, and these properties are what shows that the
sharing changes no decision. The fresh compiles are themselves checked against the naive
evaluator by test_compiler_properties.py.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from enforcement.clusterpolicy import RuleAction
from enforcement.compiler import compile_tables
from enforcement.model import ClusterSnapshot, Direction
from enforcement.staged import staged_verdict
from enforcement.tables import AllowTables, Outcome
from enforcement.verdict import RuleRef
from tests.enforcement.test_compiler_properties import (
    LARGE_SELECTIONS,
    NODES,
    PROFILE,
    Flow,
    all_flows,
    only,
    snapshot_st,
    sometimes,
)


@st.composite
def staged_snapshot_st(draw: st.DrawFn) -> ClusterSnapshot:
    """A random cluster with about a third of its policies of each kind staged (now and then
    none, now and then all)."""
    snapshot = draw(snapshot_st())
    how = draw(st.sampled_from(("some", "some", "some", "none", "all")))

    def staged() -> bool:
        return how == "all" or (how == "some" and draw(sometimes(3)))

    return replace(
        snapshot,
        policies=tuple(replace(p, staged=staged()) for p in snapshot.policies),
        cluster_policies=tuple(replace(p, staged=staged()) for p in snapshot.cluster_policies),
    )


def enforced_only(snapshot: ClusterSnapshot) -> ClusterSnapshot:
    """The cluster without its staged policies."""
    return replace(
        snapshot,
        policies=tuple(p for p in snapshot.policies if not p.staged),
        cluster_policies=tuple(p for p in snapshot.cluster_policies if not p.staged),
    )


def all_enforced(snapshot: ClusterSnapshot) -> ClusterSnapshot:
    """The cluster with every policy unstaged."""
    return replace(
        snapshot,
        policies=tuple(replace(p, staged=False) for p in snapshot.policies),
        cluster_policies=tuple(replace(p, staged=False) for p in snapshot.cluster_policies),
    )


def staged_keys(snapshot: ClusterSnapshot) -> set[tuple[str, str | None, str]]:
    """(kind, namespace, name) of the staged policies, as their RuleRefs name them."""
    keys: set[tuple[str, str | None, str]] = set()
    for policy in snapshot.policies:
        if policy.staged:
            keys.add(("NetworkPolicy", policy.namespace, policy.name))
    for cluster_policy in snapshot.cluster_policies:
        if cluster_policy.staged:
            keys.add(("ClusterNetworkPolicy", None, cluster_policy.name))
    return keys


def decision(tables: AllowTables, flow: Flow) -> Outcome:
    return tables.outcome(flow.packed_src, flow.packed_dst, flow.protocol, flow.port)


def unstaged(refs: tuple[RuleRef, ...]) -> tuple[RuleRef, ...]:
    return tuple(replace(ref, staged=False) for ref in refs)


def has_staged_pass(snapshot: ClusterSnapshot) -> bool:
    return any(
        rule.action is RuleAction.PASS
        for policy in snapshot.cluster_policies
        if policy.staged
        for rule in (*policy.ingress, *policy.egress)
    )


@PROFILE
@given(
    snapshot=staged_snapshot_st(),
    node=st.sampled_from((*NODES, NODES[0])),
    direction=st.sampled_from((None, Direction.INGRESS, Direction.EGRESS)),
    large_selection=LARGE_SELECTIONS,
    generation=st.integers(0, 3),
)
def test_staged_policies_are_reported_and_never_enforced(
    snapshot: ClusterSnapshot,
    node: str,
    direction: Direction | None,
    large_selection: int | None,
    generation: int,
) -> None:
    snapshot = only(snapshot, direction)
    tables = compile_tables(snapshot, node, generation, large_selection=large_selection)
    without = compile_tables(enforced_only(snapshot), node, large_selection=large_selection)
    everything = compile_tables(all_enforced(snapshot), node, large_selection=large_selection)
    keys = staged_keys(snapshot)
    assert tables.isolated_local_addresses() == without.isolated_local_addresses()
    assert tables.local_addresses() == without.local_addresses()
    staged = tables.staged
    if not keys:
        assert staged is None
        return
    assert staged is not None and staged.staged is None
    assert (staged.generation, staged.node_name) == (generation, node)
    assert staged.isolated_local_addresses() == everything.isolated_local_addresses()
    for flow in all_flows(snapshot):
        enforced, expected = decision(tables, flow), decision(without, flow)
        assert (enforced.reason, enforced.egress, enforced.ingress) == (
            expected.reason,
            expected.egress,
            expected.ingress,
        ), flow
        assert tables.evaluate(flow.packed_src, flow.packed_dst, flow.protocol, flow.port) is (
            expected.reason
        )
        assert not any(ref.staged for ref in enforced.refs), flow
        would, expected = decision(staged, flow), decision(everything, flow)
        assert (would.reason, unstaged(would.egress), unstaged(would.ingress)) == (
            expected.reason,
            expected.egress,
            expected.ingress,
        ), flow
        for ref in would.refs:
            assert ref.staged == ((ref.kind, ref.namespace, ref.name) in keys), (flow, ref)
        report = staged_verdict(enforced, would)
        assert report.verdict is would.verdict
        assert report.changed == (enforced.verdict.action is not would.verdict.action), flow
        assert set(report.changed_by) <= {ref for ref in would.refs if ref.staged}
        if not report.changed:
            assert report.changed_by == ()
        elif not report.changed_by:
            # Only a staged Pass can hand the decision to an enforced policy of a later tier.
            assert has_staged_pass(snapshot), (flow, enforced, would)
        assert report.would_deny == (enforced.verdict.accepted and not would.verdict.accepted)
        assert report.would_allow == (would.verdict.accepted and not enforced.verdict.accepted)
