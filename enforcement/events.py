"""The stream of verdict events: what the queue decided, for people and for metrics.

    queue loop --offer--> EventBuffer --drain--> VerdictRecord(s) --> flow log, trace, metrics

Every decision worth reporting (a connection opened, refused or cut; with ``--trace``, every
packet) is offered to a bounded buffer as a :class:`VerdictEvent`: the packet, the interned
:class:`enforcement.tables.Outcome` that decided it, and the tables it was decided with. That is
a few references and one small object: the packet path never formats, looks up names or
waits. When the buffer is full the event is dropped and counted, never the packet (an attacker
who floods the node with denied packets fills the buffer, not the agent's memory).

A pump (``agent.flowlog``) drains the buffer off the packet path and turns events into
:class:`VerdictRecord` values with :func:`record_of`: names resolved with the same tables that
decided, the deciding rules as :class:`enforcement.verdict.RuleRef`, and, when staged policies
exist, what they would decide. Records are plain data: a worker process sends them to the
runner over its pipe, and ``as_dict`` is the JSON form of the flow log and ``lab flows``.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enforcement.conntrack import TrackedConnection
from enforcement.model import PROTOCOL_NAMES
from enforcement.packets import PacketInfo
from enforcement.staged import staged_verdict
from enforcement.tables import OUTCOMES, AllowTables, Outcome
from enforcement.verdict import Reason, RuleRef

QUIET_REASONS = frozenset({Reason.FLOW, Reason.RELATED, Reason.NEIGHBOR_DISCOVERY})
"""Verdicts that decide no connection: packets of a connection already decided (or the link's
own neighbour discovery). They are counted per packet, but become events only when tracing."""

POLICY_DENIALS = frozenset(
    {Reason.DENIED_EGRESS, Reason.DENIED_INGRESS, Reason.REVOKED, Reason.UNKNOWN_ENDPOINT}
)
"""Drops that policy decided (what ``--audit`` lets through); the rest (malformed, invalid,
fail-closed) are the agent's own safety, enforced in audit mode too."""

EVENT_BUFFER_SIZE = 8192
"""Events held between two drains (about 50 ms apart): several times the largest burst of new
connections a probe of a 50-pod lab makes, and at most a few MiB of references."""


class EventKind:
    """What a record says happened (the ``event`` key of the flow log)."""

    CONNECTION = "connection"
    """A new connection decided (allowed or denied), or, traced, any other packet."""
    REVOKED = "revoked"
    """A tracked connection that a policy change cut."""
    REPEAT = "repeat"
    """More denied packets of a connection already reported, folded (``packets`` counts them)."""


@dataclass(slots=True)
class VerdictEvent:
    """One decision as the queue saw it. Built on the packet path: references only."""

    time: float
    """Wall-clock seconds (time.time) when the packet was decided."""
    packet: PacketInfo | None
    """None for a packet that could not be parsed."""
    outcome: Outcome
    tables: AllowTables
    """The tables that decided (names are resolved with them, not with later ones)."""
    enforced: bool = True
    """False when ``--audit`` let through what the policies deny."""
    revoked: bool = False
    """A tracked connection cut by a policy change (``outcome`` names the denying rules)."""
    cached: bool = False
    """Admitted by the kernel's verdict cache (docs/design-verdict-cache.md), not the queue."""


class EventBuffer:
    """A bounded, thread-safe buffer of events: the one meeting point of the packet path and
    the consumers. ``offer`` never blocks and never grows the buffer past ``capacity``."""

    __slots__ = ("_events", "capacity", "dropped")

    def __init__(self, capacity: int = EVENT_BUFFER_SIZE) -> None:
        self.capacity = capacity
        self._events: deque[VerdictEvent] = deque()
        self.dropped = 0
        """Events refused because the buffer was full (the packets were decided all the same)."""

    def offer(self, event: VerdictEvent) -> None:
        # deque.append and len are atomic under the GIL; the count may overshoot by the
        # number of threads offering at once, which is one.
        if len(self._events) < self.capacity:
            self._events.append(event)
        else:
            self.dropped += 1

    def drain(self) -> list[VerdictEvent]:
        """Take every event offered so far, oldest first."""
        events = self._events
        taken = []
        try:
            while True:
                taken.append(events.popleft())
        except IndexError:
            return taken

    def __len__(self) -> int:
        return len(self._events)


@dataclass(frozen=True, slots=True)
class StagedReport:
    """What the verdict would be if the staged policies were enforced too
    (``enforcement.staged``)."""

    verdict: str
    """``allowed`` or ``denied``."""
    would_deny: bool
    """Allowed now, denied once the staged policies are enforced."""
    would_allow: bool
    """Denied now, allowed once the staged policies are enforced."""
    decided_by: tuple[RuleRef, ...]
    """What would decide (staged and enforced rules alike)."""
    changed_by: tuple[RuleRef, ...]
    """The staged policies' rules that change the verdict; empty when it stays the same."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "would_deny": self.would_deny,
            "would_allow": self.would_allow,
            "decided_by": [ref.as_dict() for ref in self.decided_by],
            "changed_by": [ref.as_dict() for ref in self.changed_by],
        }


TABLE_REASONS = frozenset(
    {
        Reason.ALLOWED,
        Reason.NOT_ISOLATED,
        Reason.DENIED_EGRESS,
        Reason.DENIED_INGRESS,
        Reason.UNKNOWN_ENDPOINT,
    }
)
"""Outcomes the tables gave (the rest were decided before the tables were asked, and staged
policies cannot change them)."""


def staged_report(packet: PacketInfo, outcome: Outcome, tables: AllowTables) -> StagedReport | None:
    """What the staged policies would make of a connection the tables decided; None when
    nothing is staged or the tables did not decide it."""
    staged_tables = tables.staged
    if staged_tables is None or outcome.reason not in TABLE_REASONS:
        return None
    staged_outcome = staged_tables.outcome(packet.src, packet.dst, packet.protocol, packet.dst_port)
    staged = staged_verdict(outcome, staged_outcome)
    return StagedReport(
        verdict=verdict_word(staged.verdict.accepted),
        would_deny=staged.would_deny,
        would_allow=staged.would_allow,
        decided_by=staged_outcome.refs,
        changed_by=staged.changed_by,
    )


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    """One line of the flow log: a decided connection (or a folded run of denied packets)."""

    time: float
    node: str
    event: str
    """An :class:`EventKind` value."""
    src: str
    """``namespace/name`` of the pod that owns the source address, else the address."""
    dst: str
    src_ip: str
    dst_ip: str
    protocol: str
    """``TCP``, ``UDP``, ``SCTP``, ``ICMP``, ``ICMPv6`` or the protocol number."""
    family: int
    src_port: int | None
    dst_port: int | None
    directions: tuple[str, ...]
    """The directions enforced on this node: ``egress`` for a local source, ``ingress`` for a
    local destination (both when both are local pods)."""
    verdict: str
    """``allowed`` or ``denied``: what the policies in force decide."""
    reason: str
    """The :class:`enforcement.verdict.Reason` value (``allowed``, ``denied-ingress``, ...)."""
    decided_by: tuple[RuleRef, ...]
    """The rules that decided, egress first; empty when nothing isolates either side."""
    enforced: bool = True
    """False in audit mode when the packet passed although the verdict is ``denied``."""
    packets: int = 1
    """Packets this record stands for (more than one for a folded ``repeat``)."""
    staged: StagedReport | None = None
    """Present when staged policies exist: what they would decide."""
    cached: bool = False
    """Admitted by the kernel's verdict cache: an earlier connection of the same tuple was
    allowed by the same tables."""

    @property
    def flow_key(self) -> tuple[str, str, int | None, str, int | None]:
        """The connection this record is about (to fold repeats of it)."""
        return (self.protocol, self.src_ip, self.src_port, self.dst_ip, self.dst_port)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (flow log lines, ``lab flows -o json``)."""
        data: dict[str, Any] = {
            "time": format_time(self.time),
            "node": self.node,
            "event": self.event,
            "src": self.src,
            "dst": self.dst,
            "src_ip": self.src_ip,
            "dst_ip": self.dst_ip,
            "protocol": self.protocol,
            "family": self.family,
            "src_port": self.src_port,
            "dst_port": self.dst_port,
            "directions": list(self.directions),
            "verdict": self.verdict,
            "reason": self.reason,
            "decided_by": [ref.as_dict() for ref in self.decided_by],
            "enforced": self.enforced,
            "packets": self.packets,
        }
        if self.staged is not None:
            data["staged"] = self.staged.as_dict()
        if self.cached:
            data["cached"] = True
        return data


def kernel_decided(packet: PacketInfo, tables: AllowTables, now: float) -> VerdictEvent | None:
    """The event of a connection the kernel let through without asking the queue, from the
    first packet the firewall logged (``enforcement/nflog.py``); None when the queue decides
    it (it reports it itself: the address became isolated since) or when no pod of this node
    takes part.

    The firewall queues every packet to or from an address that policy isolates here
    (``AllowTables.isolated_local_addresses``); anything else between local pods and their peers
    passes in the kernel: nothing isolates either side, so its outcome is ``not-isolated``.
    """
    isolated = tables.isolated_local_addresses()
    if packet.src in isolated or packet.dst in isolated:
        return None
    source, destination = tables.endpoint(packet.src), tables.endpoint(packet.dst)
    if not (source is not None and source.local) and not (
        destination is not None and destination.local
    ):
        return None
    return VerdictEvent(now, packet, OUTCOMES[Reason.NOT_ISOLATED], tables)


class TupleOutcomes:
    """The outcomes of (source, destination, protocol, destination port) under one generation
    of tables, remembered: connections the verdict cache admits repeat the same few tuples
    (that is why they were cached), so each is asked of the tables once per generation."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._tables: AllowTables | None = None
        self._outcomes: dict[tuple[bytes, bytes, int, int | None], Outcome] = {}

    def of(self, packet: PacketInfo, tables: AllowTables) -> Outcome:
        if tables is not self._tables or len(self._outcomes) >= self.limit:
            self._tables, self._outcomes = tables, {}
        key = (packet.src, packet.dst, packet.protocol, packet.dst_port)
        outcome = self._outcomes.get(key)
        if outcome is None:
            outcome = self._outcomes[key] = tables.outcome(*key)
        return outcome


def cache_decided(
    packet: PacketInfo, tables: AllowTables, now: float, outcomes: TupleOutcomes | None = None
) -> VerdictEvent:
    """The event of a connection the kernel's verdict cache admitted, from the first packet the
    firewall logged (``CACHED_PREFIX``): the cache only holds allow verdicts of the tables in
    force for this tuple, so the tables name the same rules the queue would have."""
    if outcomes is None:
        outcome = tables.outcome(packet.src, packet.dst, packet.protocol, packet.dst_port)
    else:
        outcome = outcomes.of(packet, tables)
    return VerdictEvent(now, packet, outcome, tables, cached=True)


def revoked_in_kernel(
    connection: TrackedConnection, tables: AllowTables, now: float
) -> VerdictEvent:
    """The event of an accepted connection that a policy change cut in the kernel's conntrack
    (fast path: the queue never sees it again), named by the rules that now deny it, between
    the endpoints the agent judged (the real destination, after DNAT)."""
    src_port = None if connection.entry is None else connection.entry.original.src_port
    packet = PacketInfo(
        family=4 if len(connection.src) == 4 else 6,
        src=connection.src,
        dst=connection.dst,
        protocol=connection.protocol,
        src_port=src_port,
        dst_port=connection.dst_port,
    )
    outcome = tables.outcome(
        connection.src, connection.dst, connection.protocol, connection.dst_port
    )
    return VerdictEvent(now, packet, outcome, tables, revoked=True)


def format_time(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds, as Kubernetes and Hubble print times."""
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def verdict_word(accepted: bool) -> str:
    return "allowed" if accepted else "denied"


def record_of(event: VerdictEvent, node: str) -> VerdictRecord:
    """The record of one event (off the packet path: resolves names with the event's tables)."""
    packet, outcome, tables = event.packet, event.outcome, event.tables
    reason = outcome.reason
    revoked = event.revoked or reason is Reason.REVOKED
    kind = EventKind.REVOKED if revoked else EventKind.CONNECTION
    if packet is None:
        return VerdictRecord(
            time=event.time,
            node=node,
            event=kind,
            src="",
            dst="",
            src_ip="",
            dst_ip="",
            protocol="",
            family=0,
            src_port=None,
            dst_port=None,
            directions=(),
            verdict=verdict_word(outcome.verdict.accepted),
            reason=Reason.REVOKED.value if revoked else reason.value,
            decided_by=(),
            enforced=event.enforced,
        )
    source, destination = tables.endpoint(packet.src), tables.endpoint(packet.dst)
    # inet_ntop: RFC 5952 text as ipaddress gives it, at a fifth of the cost (one per record).
    family = socket.AF_INET if packet.family == 4 else socket.AF_INET6
    src_ip, dst_ip = socket.inet_ntop(family, packet.src), socket.inet_ntop(family, packet.dst)
    directions = []
    if source is not None and source.local:
        directions.append("egress")
    if destination is not None and destination.local:
        directions.append("ingress")
    return VerdictRecord(
        time=event.time,
        node=node,
        event=kind,
        src=source.key if source is not None else src_ip,
        dst=destination.key if destination is not None else dst_ip,
        src_ip=src_ip,
        dst_ip=dst_ip,
        protocol=PROTOCOL_NAMES.get(packet.protocol, str(packet.protocol)),
        family=packet.family,
        src_port=packet.src_port,
        dst_port=packet.dst_port,
        directions=tuple(directions),
        verdict=verdict_word(outcome.verdict.accepted and not revoked),
        reason=Reason.REVOKED.value if revoked else reason.value,
        decided_by=outcome.refs,
        enforced=event.enforced,
        staged=None if revoked else staged_report(packet, outcome, tables),
        cached=event.cached,
    )
