"""Stage: revoking accepted connections that a policy change no longer allows (fast path).

In fast-path mode the agent decides only the first packet of a connection; the kernel marks the
accepted connection (connmark ``MARK_ACCEPTED``) and passes the rest of it, both directions,
without asking again. The kernel's conntrack table is then the record of accepted connections.
After every change of the tables the agent deletes the entries the new tables deny. The next
packet of such a connection finds no entry, gets a new unmarked one, goes to the queue and is
dropped: the connection is cut within one sync, instead of lingering until it ends
(kube-network-policies rescans every 30 s).

**Judged by the real endpoints.** The filter hooks, where the agent decided the first packet,
run after DNAT and before SNAT (netfilter priorities: nat PREROUTING/OUTPUT at -100, filter at
0, nat POSTROUTING/INPUT at +100). A conntrack entry's original tuple keeps the address the
client dialled (a Service ClusterIP); the reply tuple has the translations applied. So the
endpoints judged are the ones the agent saw: source = the original tuple's source, destination =
the reply tuple's source (the pod behind the ClusterIP), destination port = the reply tuple's
source port (the targetPort). A connection is also cut when an endpoint is an address of this
node's pod ranges that no known pod has (the firewall would drop its new packets as an unknown
endpoint; without the cut, an accepted entry would outlive its pod and pass traffic for whoever
gets the address next), or when a local pod it belonged to is gone or replaced.

**Cost independent of the number of connections.** A decision depends only on the two endpoints'
entries in the tables: each one's pod (labels, namespace and its labels, named ports) and, for
a local pod, the policies of its tables. :func:`changed_addresses` compares the previous
generation with the new one and names the addresses whose entry may decide differently; only
connections touching them are read back (filtered in the kernel by address when they are few,
see ``enforcement/ctnetlink.py``) and judged. A change that touches no address reads nothing.
Whenever the comparison cannot be trusted (first sync, pod ranges changed, a snapshot field it
does not know, any error), every accepted connection is judged: never fewer.

Connections the node opened itself (``MARK_HOST`` saved with the mark) are never revoked:
NetworkPolicy always allows a pod's own node.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import operator
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.ctnetlink import ConntrackEntry, CtNetlink
from enforcement.decide import ACCEPTING
from enforcement.firewall import MARK_ACCEPTED, MARK_HOST
from enforcement.model import ClusterSnapshot, Namespace, NetworkPolicy, Node, Pod
from enforcement.tables import AllowTables, DirectionPlan, Endpoint, PolicyTable
from enforcement.verdict import Reason

log = logging.getLogger(__name__)

FILTERED_DUMP_LIMIT = 32
"""Changed addresses per family up to which the kernel is asked once per address and tuple
side (two dumps each, filtered in the kernel); above, one dump of every accepted connection is
read and filtered here. Each filtered dump still walks the whole table in the kernel (cheap in
C, but not free), so many of them cost more than one full read."""

_KNOWN_SNAPSHOT_FIELDS = frozenset(
    {"namespaces", "pods", "policies", "unreadable_pods", "cluster_policies", "nodes"}
)
_POD_KEY: Callable[[Pod], str] = operator.attrgetter("key")
_NAMESPACE_NAME: Callable[[Namespace], str] = operator.attrgetter("name")
_POLICY_KEY: Callable[[NetworkPolicy], str] = operator.attrgetter("key")
_CLUSTER_POLICY_NAME: Callable[[ClusterNetworkPolicy], str] = operator.attrgetter("name")
_NODE_NAME: Callable[[Node], str] = operator.attrgetter("name")


@dataclass(frozen=True, slots=True)
class TrackedConnection:
    """An accepted connection, by the endpoints the agent judged (after DNAT, before SNAT)."""

    src: bytes
    """The original tuple's source: the client as the filter hooks saw it (SNAT comes later)."""
    dst: bytes
    """The reply tuple's source: the real destination (the pod behind a Service address)."""
    protocol: int
    dst_port: int | None
    """The reply tuple's source port (the pod's port after DNAT); None for protocols without
    ports (ICMP echo is matched by rules without ports only)."""
    mark: int
    entry: ConntrackEntry | None = None
    """The kernel entry, to delete it (None in unit tests)."""

    @classmethod
    def from_entry(cls, entry: ConntrackEntry) -> TrackedConnection:
        return cls(
            src=entry.original.src,
            dst=entry.reply.src,
            protocol=entry.original.protocol,
            dst_port=entry.reply.src_port,
            mark=entry.mark,
            entry=entry,
        )


class PodRanges:
    """This node's pod address ranges (``FirewallConfig.pod_cidrs``), for membership tests."""

    __slots__ = ("_ranges", "cidrs")

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
        self.cidrs = tuple(sorted(str(network) for network in networks))
        """Canonical form, to compare two generations."""
        self._ranges = {
            width: [
                (int(network.network_address), int(network.netmask))
                for network in networks
                if network.max_prefixlen == width * 8
            ]
            for width in (4, 16)
        }

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, bytes):
            return False
        ranges = self._ranges.get(len(address))
        if not ranges:
            return False
        number = int.from_bytes(address, "big")
        return any(number & mask == base for base, mask in ranges)


NO_POD_RANGES = PodRanges()


def revocation_reason(
    connection: TrackedConnection,
    tables: AllowTables,
    *,
    previous: AllowTables | None = None,
    pod_ranges: PodRanges = NO_POD_RANGES,
) -> Reason | None:
    """Why ``tables`` no longer allow this accepted connection, or None if they do (pure)."""
    if connection.mark & MARK_HOST:
        return None
    for address in (connection.src, connection.dst):
        now = tables.endpoint(address)
        if now is None and address in pod_ranges:
            return Reason.UNKNOWN_ENDPOINT
        before = previous.endpoint(address) if previous is not None else None
        if before is not None and before.local and (now is None or now.key != before.key):
            return Reason.UNKNOWN_ENDPOINT  # the local pod it was accepted for is gone
    reason = tables.evaluate(connection.src, connection.dst, connection.protocol,
                             connection.dst_port)  # fmt: skip
    return None if reason in ACCEPTING else reason


def to_revoke(
    connections: Iterable[TrackedConnection],
    tables: AllowTables,
    *,
    previous: AllowTables | None = None,
    pod_ranges: PodRanges = NO_POD_RANGES,
) -> Iterator[TrackedConnection]:
    """The accepted connections that ``tables`` no longer allow (pure).

    ``previous``: the tables the connections were last judged (or accepted) under, to cut
    connections of a local pod that is gone. ``pod_ranges``: this node's pod ranges, whose
    addresses without a known pod are cut like the firewall drops them.
    """
    for connection in connections:
        if revocation_reason(connection, tables, previous=previous, pod_ranges=pod_ranges):
            yield connection


# -- what a change can affect -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generation:
    """What the connections were judged against at one sync."""

    tables: AllowTables
    snapshot: ClusterSnapshot
    """What ``tables`` were compiled from."""
    pod_ranges: PodRanges


_T = TypeVar("_T")


def _changed_keys(
    before: Sequence[_T], after: Sequence[_T], key: Callable[[_T], str]
) -> tuple[set[str], dict[str, _T], dict[str, _T]]:
    """Keys of the objects added, removed or replaced, and both sides by key.

    The state cache hands out the same objects until they change and keeps their order, so an
    untouched kind is settled by one identity pass in C, without building anything."""
    if len(before) == len(after):
        if all(map(operator.is_, before, after)):
            return set(), {}, {}
        # Objects replaced in place (an update keeps its position): compare only those.
        moved = [(old, new) for old, new in zip(before, after, strict=True) if old is not new]
        if all(key(old) == key(new) for old, new in moved):
            changed = {key(new) for old, new in moved if old != new}
            return changed, {key(old): old for old, _ in moved}, {key(new): new for _, new in moved}
    old = {key(item): item for item in before}
    new = {key(item): item for item in after}
    changed = {name for name in old if name not in new}
    for name, item in new.items():
        previous = old.get(name)
        if previous is not item and previous != item:
            changed.add(name)
    return changed, old, new


def _same_table(
    before: PolicyTable | None, after: PolicyTable | None, changed_policies: set[str]
) -> bool:
    if before is None or after is None:
        return before is after
    if before.policies != after.policies:
        return False
    return not any(key in changed_policies for key in after.policies)


def _same_plan(
    before: DirectionPlan | None, after: DirectionPlan | None, changed_cluster_policies: set[str]
) -> bool:
    """Same ClusterNetworkPolicies, none of them changed (the NetworkPolicy tier is the
    endpoint's table, compared on its own)."""
    if before is None or after is None:
        return before is after
    if before.policies != after.policies:
        return False
    return not any(name in changed_cluster_policies for name in after.policies)


def _same_endpoint(
    before: Endpoint,
    after: Endpoint,
    changed_pods: set[str],
    changed_namespaces: set[str],
    changed_policies: set[str],
    changed_cluster_policies: set[str],
) -> bool:
    return (
        before.key == after.key
        and before.local == after.local
        and before.namespace == after.namespace
        and after.key not in changed_pods
        and after.namespace not in changed_namespaces
        and before.port_names == after.port_names
        and _same_table(before.ingress_table, after.ingress_table, changed_policies)
        and _same_table(before.egress_table, after.egress_table, changed_policies)
        and before.tiered == after.tiered
        and _same_plan(before.ingress_plan, after.ingress_plan, changed_cluster_policies)
        and _same_plan(before.egress_plan, after.egress_plan, changed_cluster_policies)
    )


def changed_addresses(before: Generation, after: Generation) -> frozenset[bytes] | None:
    """Addresses whose table entry may decide differently in ``after``; None: any may have.

    A connection's verdict depends only on its two endpoints' entries: for each, the pod (its
    labels, namespace and namespace labels, named ports, which pod owns the address) and, for a
    local pod, the policies its ingress and egress tables unite and the ClusterNetworkPolicies
    its plans walk (same policy objects, same tables: the compiler is a pure function of them
    and of the peers, whose own changes put the peers' addresses here). A ClusterNetworkPolicy
    that changed, came or went thus changes its subjects' entries, before and after.

    The one peer that is no pod is a node, for ``nodes`` peers: a node whose labels or
    addresses changed (or that came or went) can only change the verdict of connections to or
    from its own addresses, old and new, so those addresses are named. A connection between
    two unchanged addresses keeps its verdict.
    """
    if before.pod_ranges.cidrs != after.pod_ranges.cidrs:
        return None
    for known in dataclasses.fields(after.snapshot):
        if known.name not in _KNOWN_SNAPSHOT_FIELDS and getattr(
            before.snapshot, known.name
        ) != getattr(after.snapshot, known.name):
            return None  # a field this comparison does not understand: judge everything
    changed_pods, old_pods, new_pods = _changed_keys(
        before.snapshot.pods, after.snapshot.pods, _POD_KEY
    )
    changed_namespaces, _, _ = _changed_keys(
        before.snapshot.namespaces, after.snapshot.namespaces, _NAMESPACE_NAME
    )
    changed_policies, _, _ = _changed_keys(
        before.snapshot.policies, after.snapshot.policies, _POLICY_KEY
    )
    changed_cluster_policies, _, _ = _changed_keys(
        before.snapshot.cluster_policies, after.snapshot.cluster_policies, _CLUSTER_POLICY_NAME
    )
    changed_nodes, old_nodes, new_nodes = _changed_keys(
        before.snapshot.nodes, after.snapshot.nodes, _NODE_NAME
    )
    changed: set[bytes] = set()
    for name in changed_nodes:
        for node in (old_nodes.get(name), new_nodes.get(name)):
            if node is not None:
                changed.update(address.packed for address in node.addresses)
    # Unknown endpoints (pods that could not be read) win every address they claim: one that
    # came, went or changed changes the entries of its addresses, old and new.
    unreadable_before = before.snapshot.unreadable_pods
    unreadable_after = after.snapshot.unreadable_pods
    unreadable_changed = len(unreadable_before) != len(unreadable_after) or not all(
        map(operator.is_, unreadable_before, unreadable_after)
    )
    if unreadable_changed:
        for broken in set(unreadable_before) ^ set(unreadable_after):
            changed.update(address.packed for address in broken.ips)
    # The pods that changed, at their old and new addresses (the compiler keys its ipcache by
    # ``address.packed``); with a namespace's labels, every pod in it.
    for key in changed_pods:
        for pod in (old_pods.get(key), new_pods.get(key)):
            if pod is not None:
                changed.update(address.packed for address in pod.ips)
    if changed_namespaces:
        for pods in (before.snapshot.pods, after.snapshot.pods):
            for pod in pods:
                if pod.namespace in changed_namespaces:
                    changed.update(address.packed for address in pod.ips)
    old = before.tables.endpoints()
    new = after.tables.endpoints()
    if changed_pods or unreadable_changed:
        # Addresses that appeared or vanished, whatever the reason (set operations in C). The
        # ipcache is compiled from the pods alone: with the same pods, the same addresses.
        changed.update(old.keys() ^ new.keys())
    # Local pods whose tables may differ: other policies, or a policy that changed.
    for address in before.tables.local_addresses() | after.tables.local_addresses():
        if address in changed:
            continue
        previous, endpoint = old.get(address), new.get(address)
        if (
            previous is None
            or endpoint is None
            or not _same_endpoint(
                previous,
                endpoint,
                changed_pods,
                changed_namespaces,
                changed_policies,
                changed_cluster_policies,
            )
        ):
            changed.add(address)
    return frozenset(changed)


# -- the kernel side --------------------------------------------------------------------------


class ConnectionSource(Protocol):
    """Where accepted connections are read and deleted (the kernel, or a list in tests)."""

    def accepted(self) -> list[TrackedConnection]:
        """Every accepted connection, both families."""
        ...

    def touching(self, addresses: frozenset[bytes]) -> list[TrackedConnection]:
        """The accepted connections with ``src`` or ``dst`` in ``addresses`` (at least those)."""
        ...

    def delete(self, connections: Iterable[TrackedConnection]) -> int:
        """Delete these connections; returns how many were still there."""
        ...


class KernelConnections:
    """The conntrack table of the current network namespace (``enforcement/ctnetlink.py``)."""

    def __init__(self, filtered_dump_limit: int = FILTERED_DUMP_LIMIT) -> None:
        self.filtered_dump_limit = filtered_dump_limit

    def accepted(self) -> list[TrackedConnection]:
        with CtNetlink() as netlink:
            connections = [
                TrackedConnection.from_entry(entry)
                for family in (socket.AF_INET, socket.AF_INET6)
                for entry in netlink.dump(family, MARK_ACCEPTED, MARK_ACCEPTED)
            ]
            _report_skipped(netlink)
        return connections

    def touching(self, addresses: frozenset[bytes]) -> list[TrackedConnection]:
        found: dict[tuple[int | None, bytes], TrackedConnection] = {}
        with CtNetlink() as netlink:
            for family, width in ((socket.AF_INET, 4), (socket.AF_INET6, 16)):
                wanted = [address for address in addresses if len(address) == width]
                if not wanted:
                    continue
                if len(wanted) > self.filtered_dump_limit:
                    entries = [
                        entry
                        for entry in netlink.dump(family, MARK_ACCEPTED, MARK_ACCEPTED)
                        if entry.original.src in addresses or entry.reply.src in addresses
                    ]
                else:
                    entries = [
                        entry
                        for address in wanted
                        for side in ("original_src", "reply_src")
                        for entry in netlink.dump(
                            family, MARK_ACCEPTED, MARK_ACCEPTED, **{side: address}
                        )
                    ]
                for entry in entries:
                    found[(entry.entry_id, entry.original_attribute)] = (
                        TrackedConnection.from_entry(entry)
                    )
            _report_skipped(netlink)
        return list(found.values())

    def delete(self, connections: Iterable[TrackedConnection]) -> int:
        entries = [c.entry for c in connections if c.entry is not None]
        if not entries:
            return 0
        with CtNetlink() as netlink:
            return netlink.delete(entries)


def _report_skipped(netlink: CtNetlink) -> None:
    if netlink.skipped:
        # Unparseable entries cannot be judged nor named for deletion; the kernel's format is
        # fixed ABI, so this means a bug here, worth an error in the log.
        log.error(
            "conntrack entries could not be parsed and were not judged",
            extra={"fields": {"entries": netlink.skipped}},
        )


@dataclass(frozen=True, slots=True)
class Revocation:
    """What one revocation pass did."""

    cut: int
    """Connections deleted."""
    judged: int
    """Connections read back and judged."""
    full: bool
    """Every accepted connection was judged (first sync, or the comparison was not trusted)."""
    denied: tuple[TrackedConnection, ...] = ()
    """The connections judged denied and deleted (those already gone included), for the flow
    log."""


class Revoker:
    """Cuts, after each sync, the accepted connections the new tables deny.

    Remembers the generation it last judged against, to read back only the connections a change
    can affect. Not thread-safe: the runner's sync loop owns it.
    """

    def __init__(
        self,
        connections: ConnectionSource | None = None,
        *,
        compare: Callable[[Generation, Generation], frozenset[bytes] | None] = changed_addresses,
    ) -> None:
        self.connections: ConnectionSource = connections or KernelConnections()
        self._compare = compare
        self._last: Generation | None = None
        """The generation last judged against, if the next change may be compared with it."""
        self._last_tables: AllowTables | None = None
        """The tables connections were last judged under (to cut those of vanished pods)."""

    def revoke_denied(
        self,
        tables: AllowTables,
        snapshot: ClusterSnapshot | None = None,
        pod_cidrs: Iterable[str] = (),
    ) -> Revocation:
        """Delete the accepted connections ``tables`` deny.

        ``snapshot`` is what ``tables`` were compiled from (without it every connection is
        judged); ``pod_cidrs`` are this node's pod ranges.
        """
        pod_ranges = PodRanges(pod_cidrs)
        previous = self._last
        current = Generation(tables, snapshot, pod_ranges) if snapshot is not None else None
        before = self._last_tables
        try:
            changed = (
                self._compare(previous, current)
                if previous is not None and current is not None
                else None
            )
            if changed is not None:
                judged = self.connections.touching(changed) if changed else []
                denied = list(to_revoke(judged, tables, previous=before, pod_ranges=pod_ranges))
                result = Revocation(
                    self.connections.delete(denied), len(judged), full=False, denied=tuple(denied)
                )
                self._last, self._last_tables = current, tables
                return result
        except Exception:
            log.exception("filtered revocation failed; judging every accepted connection")
        try:
            judged = self.connections.accepted()
            denied = list(to_revoke(judged, tables, previous=before, pod_ranges=pod_ranges))
            result = Revocation(
                self.connections.delete(denied), len(judged), full=True, denied=tuple(denied)
            )
        except Exception:
            # Nothing to compare against next time: the next sync judges everything again.
            self._last = None
            log.exception("revocation failed: connections this change denies may still pass")
            return Revocation(0, 0, full=True)
        self._last, self._last_tables = current, tables
        return result


KernelConntrack = Revoker
"""The name the runner knew it by."""
