"""Tests for enforcement/conntrack.py: which accepted connections a change cuts, and that reading
back only the connections of changed addresses cuts exactly what judging all of them cuts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.compiler import compile_tables
from enforcement.conntrack import (
    Generation,
    PodRanges,
    Revoker,
    TrackedConnection,
    changed_addresses,
    revocation_reason,
    to_revoke,
)
from enforcement.firewall import MARK_ACCEPTED, MARK_HOST
from enforcement.model import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    ClusterSnapshot,
    Labels,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    UnreadablePod,
)
from enforcement.tables import AllowTables
from enforcement.verdict import Reason
from tests.builders import (
    METADATA_NAME,
    cluster,
    cpeer,
    crule,
    ip,
    make_cluster_policy,
    make_namespace,
    make_node,
    make_pod,
    make_policy,
    make_unreadable_pod,
    peer,
    rule,
    selector,
    subject,
)
from tests.enforcement.test_compiler_properties import (
    CLUSTER_POLICY_NAMES,
    NODES,
    OUTSIDE_V4,
    cluster_policy_st,
    labels_st,
    node_st,
    pod_st,
    policy_st,
    snapshot_st,
    v4,
    v6,
)

NODE = "node-1"
SERVICE = "10.96.0.10"
"""A ClusterIP: no pod has it; kube-proxy DNATs it to a pod."""
NODE_IP = "10.0.0.1"
POD_RANGES = PodRanges(["10.244.1.0/24", "fd00:10:244:1::/64"])

A = make_pod("x", "a", "10.244.1.2", labels={"pod": "a"})
B = make_pod("x", "b", "10.244.1.3", labels={"pod": "b"}, ports=[("http", 8080)])
C = make_pod("x", "c", "10.244.1.4", labels={"pod": "c"})
D = make_pod("x", "d", "10.244.1.5", labels={"pod": "d"})
B_FROM_A = make_policy("x", "b-from-a", selector(pod="b"), ingress=[rule(peer(selector(pod="a")))])
D_OUT_192 = make_policy(
    "x", "d-out", selector(pod="d"), egress=[rule(peer(cidr="192.0.2.0/24"))]
)  # fmt: skip


def tables_of(snapshot: ClusterSnapshot, generation: int = 1) -> AllowTables:
    return compile_tables(snapshot, NODE, generation)


BASE = cluster(make_namespace("x"), A, B, C, D, B_FROM_A, D_OUT_192)


def connection(
    src: str,
    dst: str,
    dst_port: int | None = 8080,
    *,
    protocol: int = IPPROTO_TCP,
    mark: int = MARK_ACCEPTED,
) -> TrackedConnection:
    return TrackedConnection(ip(src), ip(dst), protocol, dst_port, mark)


@pytest.mark.parametrize(
    ("conn", "previous", "expected"),
    [
        pytest.param(connection(A.ips[0].exploded, B.ips[0].exploded), None, None,
                     id="allowed-direct"),
        pytest.param(connection(C.ips[0].exploded, B.ips[0].exploded), None,
                     Reason.DENIED_INGRESS, id="denied-direct"),
        pytest.param(connection(C.ips[0].exploded, B.ips[0].exploded, mark=MARK_ACCEPTED
                                | MARK_HOST), None, None, id="opened-by-the-node-never-cut"),
        pytest.param(connection(D.ips[0].exploded, "192.0.2.9", 443), None, None,
                     id="egress-allowed-by-ipblock"),
        pytest.param(connection(D.ips[0].exploded, "198.51.100.9", 443), None,
                     Reason.DENIED_EGRESS, id="egress-denied"),
        pytest.param(connection(C.ips[0].exploded, "10.244.1.77"), None,
                     Reason.UNKNOWN_ENDPOINT, id="unknown-address-of-the-pod-ranges"),
        pytest.param(connection("10.244.1.77", C.ips[0].exploded), None,
                     Reason.UNKNOWN_ENDPOINT, id="unknown-source-of-the-pod-ranges"),
        pytest.param(connection(C.ips[0].exploded, "192.0.2.9"), None, None,
                     id="unknown-address-outside-the-pod-ranges"),
        pytest.param(connection(C.ips[0].exploded, "10.244.2.9"), None, None,
                     id="remote-node-address"),
        pytest.param(connection(C.ips[0].exploded, "10.244.9.9"),
                     cluster(make_namespace("x"), A, B, C, D,
                             make_pod("x", "gone", "10.244.9.9")),
                     Reason.UNKNOWN_ENDPOINT, id="local-pod-deleted-outside-the-ranges"),
        pytest.param(connection(C.ips[0].exploded, "10.244.9.9"),
                     cluster(make_namespace("x"), A, B, C, D,
                             make_pod("x", "gone", "10.244.9.9", node="node-2")),
                     None, id="remote-pod-deleted-is-an-outside-address"),
        pytest.param(connection(C.ips[0].exploded, A.ips[0].exploded),
                     cluster(make_namespace("x"), B, C, D,
                             make_pod("x", "old-a", A.ips[0].exploded)),
                     Reason.UNKNOWN_ENDPOINT, id="address-now-owned-by-another-pod"),
        pytest.param(connection(C.ips[0].exploded, A.ips[0].exploded), BASE, None,
                     id="same-pods-as-before"),
    ],
)  # fmt: skip
def test_revocation_reason(
    conn: TrackedConnection, previous: ClusterSnapshot | None, expected: Reason | None
) -> None:
    before = tables_of(previous, 0) if previous is not None else None
    reason = revocation_reason(conn, tables_of(BASE), previous=before, pod_ranges=POD_RANGES)
    assert reason == expected


def test_a_service_connection_is_judged_by_the_pod_behind_the_clusterip() -> None:
    """The entry kube-proxy's DNAT leaves: original c -> ClusterIP:80, reply b:8080 -> c."""
    from enforcement.ctnetlink import ConntrackEntry, TupleEnds

    entry = ConntrackEntry(
        family=2,
        original=TupleEnds(ip("10.244.1.4"), ip(SERVICE), IPPROTO_TCP, 40000, 80),
        reply=TupleEnds(ip("10.244.1.3"), ip("10.244.1.4"), IPPROTO_TCP, 8080, 40000),
        mark=MARK_ACCEPTED,
        entry_id=1,
        zone=None,
        original_attribute=b"",
    )
    tracked = TrackedConnection.from_entry(entry)
    assert (tracked.src, tracked.dst, tracked.dst_port) == (
        ip("10.244.1.4"),
        ip("10.244.1.3"),
        8080,
    )
    assert list(to_revoke([tracked], tables_of(BASE))) == [tracked]


def test_a_masqueraded_connection_is_judged_by_the_pod_that_opened_it() -> None:
    """SNAT comes after the filter hooks: the pod's own address is what its egress judged."""
    from enforcement.ctnetlink import ConntrackEntry, TupleEnds

    entry = ConntrackEntry(
        family=2,
        original=TupleEnds(ip("10.244.1.5"), ip("192.0.2.9"), IPPROTO_TCP, 40000, 443),
        reply=TupleEnds(ip("192.0.2.9"), ip(NODE_IP), IPPROTO_TCP, 443, 61000),
        mark=MARK_ACCEPTED,
        entry_id=1,
        zone=None,
        original_attribute=b"",
    )
    tracked = TrackedConnection.from_entry(entry)
    assert tracked.src == ip("10.244.1.5")
    assert list(to_revoke([tracked], tables_of(BASE))) == []
    denied = dataclasses.replace(tracked, dst=ip("198.51.100.9"))
    assert list(to_revoke([denied], tables_of(BASE))) == [denied]


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        pytest.param("10.244.1.0", True, id="v4-first"),
        pytest.param("10.244.1.255", True, id="v4-last"),
        pytest.param("10.244.2.0", False, id="v4-next"),
        pytest.param("fd00:10:244:1::9", True, id="v6-inside"),
        pytest.param("fd00:10:244:2::9", False, id="v6-outside"),
    ],
)
def test_pod_ranges(address: str, inside: bool) -> None:
    assert (ip(address) in POD_RANGES) is inside
    assert ip(address) not in PodRanges()


# -- what a change can affect -----------------------------------------------------------------


def generation(
    snapshot: ClusterSnapshot, number: int, ranges: PodRanges = POD_RANGES
) -> Generation:
    return Generation(tables_of(snapshot, number), snapshot, ranges)


def replaced(
    snapshot: ClusterSnapshot, *objects: Namespace | Pod | NetworkPolicy
) -> ClusterSnapshot:
    """``snapshot`` with objects of the same key replaced (or added)."""
    namespaces = {n.name: n for n in snapshot.namespaces}
    pods = {p.key: p for p in snapshot.pods}
    policies = {p.key: p for p in snapshot.policies}
    for item in objects:
        if isinstance(item, NetworkPolicy):
            policies[item.key] = item
        elif isinstance(item, Pod):
            pods[item.key] = item
        else:
            namespaces[item.name] = item
    return ClusterSnapshot(
        tuple(namespaces.values()), tuple(pods.values()), tuple(policies.values())
    )


def addresses(*pods: Pod) -> frozenset[bytes]:
    return frozenset(address.packed for pod in pods for address in pod.ips)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        pytest.param(BASE, frozenset(), id="nothing-changed"),
        pytest.param(replaced(BASE, dataclasses.replace(C, labels=Labels({"pod": "a"}))),
                     addresses(C), id="peer-labels"),
        pytest.param(replaced(BASE, dataclasses.replace(D, ports=(B.ports[0],))),
                     addresses(D), id="named-ports"),
        pytest.param(ClusterSnapshot(BASE.namespaces, (A, B, C), BASE.policies),
                     addresses(D), id="pod-deleted"),
        pytest.param(replaced(BASE, make_pod("x", "e", "10.244.1.9")),
                     frozenset({ip("10.244.1.9")}), id="pod-added"),
        pytest.param(replaced(BASE, make_policy("x", "b-from-a", selector(pod="b"),
                                                ingress=[rule(peer(selector(pod="c")))])),
                     addresses(B), id="policy-changed"),
        pytest.param(ClusterSnapshot(BASE.namespaces, BASE.pods, (D_OUT_192,)),
                     addresses(B), id="policy-deleted"),
        pytest.param(replaced(BASE, make_policy("x", "deny-c", selector(pod="c"))),
                     addresses(C), id="policy-added"),
        pytest.param(replaced(BASE, make_namespace("x", team="blue")),
                     addresses(A, B, C, D), id="namespace-labels"),
    ],
)  # fmt: skip
def test_changed_addresses(after: ClusterSnapshot, expected: frozenset[bytes]) -> None:
    assert changed_addresses(generation(BASE, 1), generation(after, 2)) == expected


def with_unreadable(snapshot: ClusterSnapshot, *pods: UnreadablePod) -> ClusterSnapshot:
    return dataclasses.replace(snapshot, unreadable_pods=pods)


BROKEN_C = make_unreadable_pod("x", "c", "10.244.1.4")
"""Pod c, whose object turned unreadable: its address becomes an unknown endpoint."""
BROKEN_E = make_unreadable_pod("x", "e", "10.244.1.9")


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(with_unreadable(BASE, BROKEN_E), with_unreadable(BASE, BROKEN_E),
                     frozenset(), id="unchanged"),
        pytest.param(BASE, with_unreadable(BASE, BROKEN_C), addresses(C), id="pod-turns-bad"),
        pytest.param(with_unreadable(BASE, BROKEN_C), BASE, addresses(C), id="pod-fixed"),
        pytest.param(BASE, with_unreadable(BASE, BROKEN_E), frozenset({ip("10.244.1.9")}),
                     id="bad-pod-added"),
        pytest.param(with_unreadable(BASE, BROKEN_E),
                     with_unreadable(BASE, make_unreadable_pod("x", "e", "10.244.1.2")),
                     frozenset({ip("10.244.1.9"), ip("10.244.1.2")}), id="bad-pod-readdressed"),
    ],
)  # fmt: skip
def test_changed_addresses_of_unreadable_pods(
    before: ClusterSnapshot, after: ClusterSnapshot, expected: frozenset[bytes]
) -> None:
    changed = changed_addresses(generation(before, 1), generation(after, 2))
    assert changed == expected
    # Every connection between unchanged addresses keeps its verdict: check it for all pairs.
    old, new = tables_of(before, 1), tables_of(after, 2)
    everyone = [a.packed for p in (*before.pods, *before.unreadable_pods, *after.pods,
                                   *after.unreadable_pods) for a in p.ips]  # fmt: skip
    for src in everyone:
        for dst in everyone:
            if src not in changed and dst not in changed:
                assert old.evaluate(src, dst, 6, 80) == new.evaluate(src, dst, 6, 80)


NODE_2 = make_node("node-2", "10.0.0.2", "10.0.0.3", role="worker")
C_TO_NODES = make_cluster_policy(
    "c-to-nodes",
    applies_to=subject(pods=selector(pod="c")),
    egress=[crule("Deny", cpeer(nodes=selector(role="worker")))],
)
DENY_B_FROM_C = make_cluster_policy(
    "deny-b-from-c",
    applies_to=subject(pods=selector(pod="b")),
    ingress=[crule("Deny", cpeer(pods=selector(pod="c")))],
)
TIERED = dataclasses.replace(BASE, cluster_policies=(C_TO_NODES,), nodes=(NODE_2,))


def with_cluster(
    snapshot: ClusterSnapshot, *objects: ClusterNetworkPolicy | Node
) -> ClusterSnapshot:
    """``snapshot`` with these ClusterNetworkPolicies and Nodes instead of its own."""
    return dataclasses.replace(
        snapshot,
        cluster_policies=tuple(o for o in objects if isinstance(o, ClusterNetworkPolicy)),
        nodes=tuple(o for o in objects if isinstance(o, Node)),
    )


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(TIERED, TIERED, frozenset(), id="unchanged"),
        pytest.param(TIERED, with_cluster(TIERED, C_TO_NODES, NODE_2, DENY_B_FROM_C),
                     addresses(B), id="cluster-policy-added"),
        pytest.param(with_cluster(TIERED, C_TO_NODES, NODE_2, DENY_B_FROM_C), TIERED,
                     addresses(B), id="cluster-policy-deleted"),
        pytest.param(TIERED, with_cluster(TIERED, dataclasses.replace(C_TO_NODES, priority=3),
                                          NODE_2),
                     addresses(C), id="cluster-policy-changed"),
        pytest.param(TIERED, with_cluster(TIERED, C_TO_NODES,
                                          dataclasses.replace(NODE_2, labels=Labels())),
                     frozenset({ip("10.0.0.2"), ip("10.0.0.3")}), id="node-labels"),
        pytest.param(TIERED, with_cluster(TIERED, C_TO_NODES,
                                          make_node("node-2", "10.0.0.9", role="worker")),
                     frozenset({ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.9")}),
                     id="node-readdressed"),
        pytest.param(TIERED, with_cluster(TIERED, C_TO_NODES),
                     frozenset({ip("10.0.0.2"), ip("10.0.0.3")}), id="node-deleted"),
    ],
)  # fmt: skip
def test_changed_addresses_of_tiers(
    before: ClusterSnapshot, after: ClusterSnapshot, expected: frozenset[bytes]
) -> None:
    changed = changed_addresses(generation(before, 1), generation(after, 2))
    assert changed == expected
    # Every connection between unchanged addresses keeps its verdict: check it for all pairs.
    old, new = tables_of(before, 1), tables_of(after, 2)
    everyone = {a.packed for s in (before, after) for p in s.pods for a in p.ips}
    everyone |= {a.packed for s in (before, after) for n in s.nodes for a in n.addresses}
    for src in everyone:
        for dst in everyone:
            if src not in changed and dst not in changed:
                assert old.evaluate(src, dst, 6, 80) == new.evaluate(src, dst, 6, 80)


def test_changed_pod_ranges_mean_everything_may_have_changed() -> None:
    other = PodRanges(["10.244.7.0/24"])
    assert changed_addresses(generation(BASE, 1), generation(BASE, 2, other)) is None


@dataclasses.dataclass(frozen=True, slots=True)
class ExtendedSnapshot(ClusterSnapshot):
    """A snapshot with a field the comparison does not know (a future kind of object)."""

    extra: tuple[str, ...] = ()


def test_a_snapshot_field_the_comparison_does_not_know_means_everything() -> None:
    before = ExtendedSnapshot(BASE.namespaces, BASE.pods, BASE.policies, extra=("one",))
    after = ExtendedSnapshot(BASE.namespaces, BASE.pods, BASE.policies, extra=("two",))
    assert changed_addresses(generation(before, 1), generation(after, 2)) is None
    assert changed_addresses(generation(before, 1), generation(before, 2)) == frozenset()


# -- the revoker ------------------------------------------------------------------------------


class ListConnections:
    """An in-memory conntrack table: what the kernel holds, for the revoker's logic."""

    def __init__(self, connections: Iterable[TrackedConnection]) -> None:
        self.table = list(connections)
        self.read: list[TrackedConnection] = []
        """What the last read returned."""
        self.full_reads = 0

    def accepted(self) -> list[TrackedConnection]:
        self.full_reads += 1
        self.read = list(self.table)
        return self.read

    def touching(self, addresses: frozenset[bytes]) -> list[TrackedConnection]:
        self.read = [c for c in self.table if c.src in addresses or c.dst in addresses]
        return self.read

    def delete(self, connections: Iterable[TrackedConnection]) -> int:
        doomed = set(connections)
        before = len(self.table)
        self.table = [c for c in self.table if c not in doomed]
        return before - len(self.table)


def all_connections(snapshots: Iterable[ClusterSnapshot]) -> list[TrackedConnection]:
    """Every pair of pod and outside addresses, with TCP to port 80 and with ICMP."""
    hosts = {a.packed for s in snapshots for p in s.pods for a in p.ips}
    hosts |= {a.packed for s in snapshots for n in s.nodes for a in n.addresses}
    hosts |= {ip(OUTSIDE_V4[0]), ip(v4(200)), ip(v6(200))}
    connections = []
    for src in sorted(hosts):
        for dst in sorted(hosts):
            if len(src) != len(dst) or src == dst:
                continue
            for protocol, dst_port in ((IPPROTO_TCP, 80), (IPPROTO_ICMP, None)):
                connections.append(TrackedConnection(src, dst, protocol, dst_port, MARK_ACCEPTED))
    return connections


RANGES = PodRanges(["10.0.0.0/28", "fd00::/124"])
"""Covers some of the property test's pod addresses (v4(n), v6(n)), not all."""


EDITS = (
    "pod-labels",
    "pod-ports",
    "pod-node",
    "pod-deleted",
    "pod-added",
    "namespace-labels",
    "policy-replaced",
    "policy-deleted",
    "policy-added",
    "cluster-policy-replaced",
    "cluster-policy-deleted",
    "cluster-policy-added",
    "node-replaced",
)


@st.composite
def changed_snapshot_st(draw: st.DrawFn, before: ClusterSnapshot) -> ClusterSnapshot:
    """``before`` after one to three small edits, each of one object, as watch events make."""
    namespaces = {n.name: n for n in before.namespaces}
    pods = {p.key: p for p in before.pods}
    policies = {p.key: p for p in before.policies}
    cluster_policies = {p.name: p for p in before.cluster_policies}
    nodes = {n.name: n for n in before.nodes}
    for edit in draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=3)):
        if edit.startswith("pod-") and edit != "pod-added" and pods:
            key = draw(st.sampled_from(sorted(pods)))
            old = pods[key]
            if edit == "pod-labels":
                pods[key] = dataclasses.replace(old, labels=Labels(draw(labels_st)))
            elif edit == "pod-ports":
                pods[key] = dataclasses.replace(old, ports=draw(pod_st(0)).ports)
            elif edit == "pod-node":
                pods[key] = dataclasses.replace(old, node_name=draw(st.sampled_from(NODES)))
            else:
                del pods[key]
        elif edit == "pod-added":
            added = draw(pod_st(len(pods) + 10))
            pods[added.key] = added
        elif edit == "namespace-labels" and namespaces:
            name = draw(st.sampled_from(sorted(namespaces)))
            labels = Labels({**draw(labels_st), METADATA_NAME: name})
            namespaces[name] = dataclasses.replace(namespaces[name], labels=labels)
        elif edit == "policy-replaced" and policies:
            key = draw(st.sampled_from(sorted(policies)))
            index = int(key.rsplit("-", 1)[1])
            replacement = draw(policy_st(index))
            policies.pop(key)
            policies[replacement.key] = replacement
        elif edit == "policy-deleted" and policies:
            del policies[draw(st.sampled_from(sorted(policies)))]
        elif edit == "policy-added":
            added_policy = draw(policy_st(len(policies) + 10))
            policies[added_policy.key] = added_policy
        elif edit == "cluster-policy-replaced" and cluster_policies:
            name = draw(st.sampled_from(sorted(cluster_policies)))
            cluster_policies[name] = draw(cluster_policy_st(name))
        elif edit == "cluster-policy-deleted" and cluster_policies:
            del cluster_policies[draw(st.sampled_from(sorted(cluster_policies)))]
        elif edit == "cluster-policy-added":
            name = draw(st.sampled_from(CLUSTER_POLICY_NAMES))
            cluster_policies[name] = draw(cluster_policy_st(name))
        elif edit == "node-replaced":
            name = draw(st.sampled_from(NODES))
            nodes[name] = draw(node_st(name))
    return ClusterSnapshot(
        tuple(namespaces.values()),
        tuple(pods.values()),
        tuple(policies.values()),
        cluster_policies=tuple(cluster_policies.values()),
        nodes=tuple(nodes.values()),
    )


@st.composite
def change_st(draw: st.DrawFn) -> tuple[ClusterSnapshot, ClusterSnapshot]:
    before = draw(snapshot_st())
    return before, draw(changed_snapshot_st(before))


@settings(max_examples=300, deadline=None)
@given(change_st())
def test_filtered_revocation_cuts_what_a_full_one_cuts(
    change: tuple[ClusterSnapshot, ClusterSnapshot],
) -> None:
    """Differential: after a sync under ``before`` (every connection it denies already cut),
    the change to ``after`` cuts the same connections whether the revoker reads back only those
    of changed addresses or judges every one."""
    before, after = change
    old, new = tables_of(before, 1), tables_of(after, 2)
    table = ListConnections(all_connections((before, after)))
    revoker = Revoker(table)
    assert revoker.revoke_denied(old, before, RANGES.cidrs).full
    survivors = list(table.table)
    table.read = []

    filtered = revoker.revoke_denied(new, after, RANGES.cidrs)
    assert not filtered.full
    expected = set(to_revoke(survivors, new, previous=old, pod_ranges=RANGES))
    assert set(survivors) - set(table.table) == expected
    assert filtered.cut == len(expected)
    changed = changed_addresses(Generation(old, before, RANGES), Generation(new, after, RANGES))
    assert changed is not None
    assert all(c.src in changed or c.dst in changed for c in table.read)


def test_one_of_two_policies_deleted_changes_the_pods_they_selected() -> None:
    extra = make_policy("x", "b-extra", selector(pod="b"), ingress=[rule(peer(selector(pod="c")))])
    before = replaced(BASE, extra)
    assert changed_addresses(generation(before, 1), generation(BASE, 2)) == addresses(B)


def test_a_change_touching_no_endpoint_reads_nothing() -> None:
    connections = [connection(A.ips[0].exploded, B.ips[0].exploded)] * 3
    table = ListConnections(connections)
    revoker = Revoker(table)
    revoker.revoke_denied(tables_of(BASE, 1), BASE, POD_RANGES.cidrs)
    unrelated = replaced(BASE, make_policy("y", "other", selector(), ingress=[]))
    result = revoker.revoke_denied(tables_of(unrelated, 2), unrelated, POD_RANGES.cidrs)
    assert (result.judged, result.cut, result.full) == (0, 0, False)
    assert table.full_reads == 1


def test_a_change_reads_only_the_connections_of_changed_addresses() -> None:
    a_b = connection(A.ips[0].exploded, B.ips[0].exploded)
    c_a = connection(C.ips[0].exploded, A.ips[0].exploded, 80)
    table = ListConnections([a_b, c_a])
    revoker = Revoker(table)
    revoker.revoke_denied(tables_of(BASE, 1), BASE, POD_RANGES.cidrs)
    deny_b = replaced(BASE, make_policy("x", "b-from-a", selector(pod="b"), ingress=[]))
    result = revoker.revoke_denied(tables_of(deny_b, 2), deny_b, POD_RANGES.cidrs)
    assert table.read == [a_b]
    assert (result.judged, result.cut, result.full) == (1, 1, False)
    assert table.table == [c_a]


class Failing(ListConnections):
    def __init__(self, connections: Iterable[TrackedConnection], fail: str) -> None:
        super().__init__(connections)
        self.fail = fail

    def touching(self, addresses: frozenset[bytes]) -> list[TrackedConnection]:
        if self.fail in ("touching", "both"):
            raise OSError("netlink went away")
        return super().touching(addresses)

    def accepted(self) -> list[TrackedConnection]:
        if self.fail == "both" and self.full_reads >= 1:
            self.full_reads += 1
            raise OSError("netlink went away")
        return super().accepted()


def test_a_failing_filtered_read_falls_back_to_judging_everything() -> None:
    c_b = connection(C.ips[0].exploded, B.ips[0].exploded, 80)
    table = Failing([c_b], "touching")
    revoker = Revoker(table)
    # First sync under a policy that admits c; then the change that denies it.
    admits_c = replaced(BASE, make_policy("x", "b-from-a", selector(pod="b"), ingress=[rule()]))
    assert revoker.revoke_denied(tables_of(admits_c, 1), admits_c).cut == 0
    result = revoker.revoke_denied(tables_of(BASE, 2), BASE)
    assert (result.cut, result.full) == (1, True)
    assert table.table == []


def test_a_failing_comparison_falls_back_to_judging_everything() -> None:
    def broken(before: Generation, after: Generation) -> frozenset[bytes] | None:
        raise RuntimeError("bug")

    c_b = connection(C.ips[0].exploded, B.ips[0].exploded, 80)
    table = ListConnections([c_b])
    revoker = Revoker(table, compare=broken)
    admits_c = replaced(BASE, make_policy("x", "b-from-a", selector(pod="b"), ingress=[rule()]))
    revoker.revoke_denied(tables_of(admits_c, 1), admits_c)
    result = revoker.revoke_denied(tables_of(BASE, 2), BASE)
    assert (result.cut, result.full) == (1, True)


def test_after_a_failed_revocation_the_next_sync_judges_everything() -> None:
    c_b = connection(C.ips[0].exploded, B.ips[0].exploded, 80)
    table = Failing([c_b], "both")
    revoker = Revoker(table)
    admits_c = replaced(BASE, make_policy("x", "b-from-a", selector(pod="b"), ingress=[rule()]))
    revoker.revoke_denied(tables_of(admits_c, 1), admits_c)
    failed = revoker.revoke_denied(tables_of(BASE, 2), BASE)
    assert (failed.cut, failed.judged) == (0, 0)
    assert table.table == [c_b], "the kernel could not be read: nothing was cut"
    # Nothing changed since, yet the next sync must judge everything and cut c's connection.
    table.fail = "none"
    retried = revoker.revoke_denied(tables_of(BASE, 3), BASE)
    assert (retried.cut, retried.full) == (1, True)


def test_without_a_snapshot_every_connection_is_judged() -> None:
    table = ListConnections([connection(A.ips[0].exploded, B.ips[0].exploded)])
    revoker = Revoker(table)
    assert revoker.revoke_denied(tables_of(BASE, 1)).full
    assert revoker.revoke_denied(tables_of(BASE, 2)).full
    assert table.full_reads == 2
