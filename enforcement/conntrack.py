"""Stage: revoking accepted connections that a policy change no longer allows (fast path).

In fast-path mode the agent decides only the first packet of a connection; the kernel marks the
accepted connection (connmark ``MARK_ACCEPTED``) and passes the rest of it, both directions,
without asking again. The kernel's conntrack table is then the record of accepted connections.
After every change of the tables the agent reads the accepted ones back (one netlink dump,
filtered by the mark in the kernel) and deletes the entries the new tables deny. The next packet
of such a connection finds no entry, gets a new unmarked one, goes to the queue and is dropped:
the connection is cut within one sync, instead of lingering until it ends (kube-network-policies
rescans every 30 s).

Connections the node opened itself (``MARK_HOST`` saved with the mark) are never revoked:
NetworkPolicy always allows a pod's own node.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from enforcement.decide import ACCEPTING
from enforcement.firewall import MARK_ACCEPTED, MARK_HOST
from enforcement.model import IPPROTO_ICMP, IPPROTO_ICMPV6
from enforcement.tables import AllowTables

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrackedConnection:
    """A kernel conntrack entry, in the original direction (who opened it)."""

    src: bytes
    dst: bytes
    protocol: int
    dst_port: int | None
    """None for protocols without ports (ICMP echo is matched by rules without ports only)."""
    mark: int
    handle: Any = None
    """What the kernel side needs to delete the entry (opaque here)."""


def to_revoke(
    connections: Iterable[TrackedConnection], tables: AllowTables
) -> Iterator[TrackedConnection]:
    """The accepted connections that ``tables`` no longer allow (pure)."""
    for connection in connections:
        if connection.mark & MARK_HOST:
            continue
        reason = tables.evaluate(
            connection.src, connection.dst, connection.protocol, connection.dst_port
        )
        if reason not in ACCEPTING:
            yield connection


class KernelConntrack:
    """The kernel's conntrack table of the current network namespace, over netlink (pyroute2)."""

    def accepted(self) -> list[TrackedConnection]:
        """Every entry carrying ``MARK_ACCEPTED``, both families (filtered in the kernel)."""
        from pyroute2 import Conntrack

        connections = []
        for family in (socket.AF_INET, socket.AF_INET6):
            table = Conntrack(nfgen_family=family)
            try:
                for entry in table.dump_entries(mark=MARK_ACCEPTED, mark_mask=MARK_ACCEPTED):
                    connection = _connection(entry)
                    if connection is not None:
                        connections.append(connection)
            finally:
                table.close()
        return connections

    def delete(self, connections: Iterable[TrackedConnection]) -> int:
        from pyroute2 import Conntrack

        deleted = 0
        tables: dict[int, Any] = {}
        try:
            for connection in connections:
                family = socket.AF_INET if len(connection.src) == 4 else socket.AF_INET6
                if family not in tables:
                    tables[family] = Conntrack(nfgen_family=family)
                try:
                    tables[family].delete(connection.handle)
                    deleted += 1
                except Exception as error:  # gone meanwhile (it ended): nothing left to cut
                    log.debug("conntrack entry already gone: %s", error)
        finally:
            for table in tables.values():
                table.close()
        return deleted

    def revoke_denied(self, tables: AllowTables) -> int:
        """Delete the accepted connections ``tables`` deny; returns how many were cut."""
        return self.delete(list(to_revoke(self.accepted(), tables)))


def _connection(entry: Any) -> TrackedConnection | None:
    original = entry.tuple_orig
    if original.saddr is None or original.daddr is None or original.proto is None:
        return None
    port = None if original.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) else original.dport
    return TrackedConnection(
        src=ipaddress.ip_address(original.saddr).packed,
        dst=ipaddress.ip_address(original.daddr).packed,
        protocol=original.proto,
        dst_port=port,
        mark=entry.mark or 0,
        handle=entry,
    )
