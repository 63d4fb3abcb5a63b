"""Stage: connection tracking. A conntrack-style flow table for the decision stage.

Policy is evaluated once, for the first packet of a connection; the flow table then remembers the
allowed connection so that its later packets, and above all its return traffic, are accepted
without another policy walk, and so that nothing *else* is (a reply to a flow that was never
allowed is not found here). The model is Linux ``nf_conntrack``: the same tuple and reply tuple,
the same TCP states and the same default timeouts (the ``nf_conntrack_*_timeout*`` sysctls, see
Documentation/networking/nf_conntrack-sysctl.rst), simplified where we lack what the kernel has:
we see no sequence numbers, so there is no TCP window tracking.

The table is pure: no I/O and no clock. Every call that needs the time takes ``now``, in seconds
from a monotonic clock; ``now`` must never decrease between calls. It is **not thread-safe**: it
belongs to the queue loop thread, the only code that calls it.

Per-packet cost is a few dict operations: flows are found through a dict keyed by both of their
tuples, and expiry and eviction keep flows in insertion/refresh-ordered dicts, so neither ever
scans the table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from enum import Enum
from itertools import chain
from typing import TypeAlias

from enforcement.packets import PacketInfo

# IANA protocol numbers (IPv4 protocol / IPv6 next header).
_ICMP = 1
_TCP = 6
_UDP = 17
_ICMPV6 = 58
_SCTP = 132

_PORTED = frozenset({_TCP, _UDP, _SCTP})
"""Protocols whose flows must be keyed by ports: without them a packet cannot be tracked."""

# ICMP echo types: RFC 792 (request 8, reply 0) and RFC 4443 4.1/4.2 (request 128, reply 129).
_ECHO_REQUEST = {_ICMP: 8, _ICMPV6: 128}
_ECHO_REPLY = {_ICMP: 0, _ICMPV6: 129}

_ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
"""ICMPv4 messages that quote an offending packet (RFC 792): destination unreachable, source
quench, redirect, time exceeded, parameter problem; the set Linux's icmp_error() relates."""
_ICMPV6_ERRORS = frozenset({1, 2, 3, 4})
"""ICMPv6 error messages (RFC 4443 section 3): destination unreachable, packet too big, time
exceeded, parameter problem. Unassigned types below 128 quote nothing we could rely on."""

# TCP flag bits (RFC 9293 3.1; ECE/CWR from RFC 3168).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

_TCP_CORE = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK
"""The flags that drive the state machine; PSH, URG, ECE and CWR never change a state."""
_TCP_SYNACK = TCP_SYN | TCP_ACK
_TCP_FINACK = TCP_FIN | TCP_ACK
_TCP_VALID = frozenset({TCP_SYN, _TCP_SYNACK, TCP_RST, TCP_RST | TCP_ACK, _TCP_FINACK, TCP_ACK})
"""The combinations of core flags a real TCP sends. Every segment after the initial SYN carries
ACK (RFC 9293 3.10.7.4), so a FIN without ACK is bogus; SYN+FIN, SYN+RST and no flags at all
("null" and "Xmas" scans) are never sent by a TCP either. Linux's tcp_error() rejects the same
kinds of combination as INVALID before it even looks up the connection."""


def tcp_flags_valid(flags: int) -> bool:
    """Whether a TCP flags byte is a combination a real TCP sends (see ``_TCP_VALID``)."""
    return (flags & _TCP_CORE) in _TCP_VALID


FlowKey: TypeAlias = tuple[int, bytes, int, bytes, int]
"""(protocol, source address, source port, destination address, destination port).

Addresses are packed bytes (4 or 16). Ports are 0 for protocols without ports. For ICMP and
ICMPv6 echo the identifier takes the place of the *requester's* port: a request from A with
identifier I to B is (proto, A, I, B, 0) and its reply from B to A is (proto, B, 0, A, I), so a
packet's own key equals the key of its flow in the packet's direction, as for TCP and UDP."""


def reverse_key(key: FlowKey) -> FlowKey:
    """The key of the same flow seen from the other direction (conntrack's reply tuple)."""
    protocol, src, src_port, dst, dst_port = key
    return (protocol, dst, dst_port, src, src_port)


def _is_icmp_error(packet: PacketInfo) -> bool:
    protocol = packet.protocol
    if protocol == _ICMP:
        return packet.icmp_type in _ICMP_ERRORS
    if protocol == _ICMPV6:
        return packet.icmp_type in _ICMPV6_ERRORS
    return False


def _own_key(packet: PacketInfo) -> FlowKey | None:
    """The key of the flow this packet itself would be a packet of; None for ICMP errors."""
    if packet.fragment:
        # A non-first fragment has no transport header, so no ports and no ICMP identifier
        # (RFC 791, RFC 8200 4.5): it cannot be matched to a flow.
        return None
    protocol = packet.protocol
    src_port = packet.src_port
    dst_port = packet.dst_port
    if protocol in _PORTED:
        if src_port is None or dst_port is None:
            return None
        return (protocol, packet.src, src_port, packet.dst, dst_port)
    if protocol in (_ICMP, _ICMPV6):
        identifier = packet.icmp_id
        if identifier is None:
            return None
        icmp_type = packet.icmp_type
        if icmp_type == _ECHO_REQUEST[protocol]:
            return (protocol, packet.src, identifier, packet.dst, 0)
        if icmp_type == _ECHO_REPLY[protocol]:
            return (protocol, packet.src, 0, packet.dst, identifier)
        # Other informational messages (router/neighbour discovery, timestamps, MLD, ...) are not
        # request/response pairs we track.
        return None
    # Any other protocol (GRE, ESP, ...): one flow per address pair, like conntrack's generic
    # tracker; use ports only if the parser found some (e.g. UDP-Lite, DCCP).
    return (protocol, packet.src, src_port or 0, packet.dst, dst_port or 0)


def flow_key(packet: PacketInfo) -> FlowKey | None:
    """The key of the flow ``packet`` belongs to, or None if it cannot belong to a tracked flow.

    None for a non-first fragment, a TCP/UDP/SCTP packet without ports and an ICMP message that is
    neither an echo request/reply nor an error. An ICMP error belongs to the flow of the packet it
    quotes, and only as a *related* packet (see ``FlowTable.related``), so its key is the quoted
    packet's key (None if the quote is missing or is itself an error, RFC 1122 3.2.2).
    """
    key = _own_key(packet)
    if key is None and _is_icmp_error(packet):
        quoted = packet.embedded
        if quoted is not None and not _is_icmp_error(quoted):
            return _own_key(quoted)
    return key


class FlowDirection(Enum):
    """The direction of a packet within its flow. The value indexes ``Flow.packets``/``bytes``."""

    ORIGINAL = 0
    """Same direction as the packet that created the flow (the one policy allowed)."""
    REPLY = 1
    """The return direction."""


class FlowState(Enum):
    """Connection states, named after nf_conntrack's (include/uapi/.../nf_conntrack_tcp.h)."""

    # TCP (net/netfilter/nf_conntrack_proto_tcp.c)
    SYN_SENT = "syn_sent"
    """The originator's SYN was seen."""
    SYN_RECV = "syn_recv"
    """The responder's SYN-ACK was seen, or a simultaneous open (conntrack's SYN_SENT2)."""
    ESTABLISHED = "established"
    """Handshake completed, or a connection picked up mid-stream."""
    FIN_WAIT = "fin_wait"
    """A FIN was seen from one side (``Flow.closer``)."""
    CLOSE_WAIT = "close_wait"
    """The other side acknowledged that FIN and may still send (half-close)."""
    LAST_ACK = "last_ack"
    """FINs were seen from both sides; waiting for the active closer's last ACK."""
    TIME_WAIT = "time_wait"
    """The last ACK was seen (RFC 9293 3.6: the active closer lingers for 2 MSL)."""
    CLOSE = "close"
    """A RST was seen."""
    # UDP (nf_conntrack_proto_udp.c)
    UNREPLIED = "unreplied"
    """Traffic seen in the original direction only."""
    REPLIED = "replied"
    """Traffic seen both ways: a UDP "stream"."""
    # ICMP / ICMPv6 echo (nf_conntrack_proto_icmp.c, nf_conntrack_proto_icmpv6.c)
    ECHO = "echo"
    """An echo request was seen; its replies are expected."""
    # Everything else (nf_conntrack_proto_generic.c)
    GENERIC = "generic"
    """Any other protocol. SCTP is tracked here too, by its ports: Linux runs a full SCTP chunk
    state machine, but SCTP sockets aren't available on the machines we run on, so we keep it
    simple; an association keeps one port pair for its lifetime, which is all the association
    of reply traffic needs (each address pair of a multi-homed association is its own flow)."""


# On the common per-packet path states are compared by identity: hashing an Enum runs Python code,
# so sets of states and dicts keyed by FlowState are only used off that path.
_SYN_ACCEPTING_STATES = frozenset(
    {FlowState.ESTABLISHED, FlowState.FIN_WAIT, FlowState.CLOSE_WAIT, FlowState.LAST_ACK}
)


@dataclass(frozen=True)
class FlowTimeouts:
    """Seconds of inactivity after which a flow in each state is forgotten.

    Defaults are the Linux defaults of the matching ``net.netfilter`` sysctls.
    """

    tcp_syn_sent: float = 120
    """nf_conntrack_tcp_timeout_syn_sent"""
    tcp_syn_recv: float = 60
    """nf_conntrack_tcp_timeout_syn_recv"""
    tcp_established: float = 432000
    """nf_conntrack_tcp_timeout_established (5 days)"""
    tcp_fin_wait: float = 120
    """nf_conntrack_tcp_timeout_fin_wait"""
    tcp_close_wait: float = 60
    """nf_conntrack_tcp_timeout_close_wait"""
    tcp_last_ack: float = 30
    """nf_conntrack_tcp_timeout_last_ack"""
    tcp_time_wait: float = 120
    """nf_conntrack_tcp_timeout_time_wait"""
    tcp_close: float = 10
    """nf_conntrack_tcp_timeout_close"""
    tcp_unacknowledged: float = 300
    """nf_conntrack_tcp_timeout_unacknowledged: the cap on any TCP state's timeout while nothing
    has been seen from the other side (e.g. a connection picked up mid-stream), so that one-sided
    junk cannot hold an entry for the 5 days of ESTABLISHED."""
    udp: float = 30
    """nf_conntrack_udp_timeout (UNREPLIED)"""
    udp_stream: float = 120
    """nf_conntrack_udp_timeout_stream (REPLIED)"""
    icmp: float = 30
    """nf_conntrack_icmp_timeout and nf_conntrack_icmpv6_timeout"""
    generic: float = 600
    """nf_conntrack_generic_timeout"""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"timeout {f.name} must be positive, got {value!r}")

    def for_state(self, state: FlowState) -> float:
        """The timeout of ``state`` (without the unacknowledged cap)."""
        return {
            FlowState.SYN_SENT: self.tcp_syn_sent,
            FlowState.SYN_RECV: self.tcp_syn_recv,
            FlowState.ESTABLISHED: self.tcp_established,
            FlowState.FIN_WAIT: self.tcp_fin_wait,
            FlowState.CLOSE_WAIT: self.tcp_close_wait,
            FlowState.LAST_ACK: self.tcp_last_ack,
            FlowState.TIME_WAIT: self.tcp_time_wait,
            FlowState.CLOSE: self.tcp_close,
            FlowState.UNREPLIED: self.udp,
            FlowState.REPLIED: self.udp_stream,
            FlowState.ECHO: self.icmp,
            FlowState.GENERIC: self.generic,
        }[state]


DEFAULT_TIMEOUTS = FlowTimeouts()


@dataclass(slots=True, eq=False)
class Flow:
    """One tracked connection. Owned by its FlowTable; read freely, mutate only ``generation``.

    Compared and hashed by identity: a flow is a live, mutable entity, not a value.
    """

    key: FlowKey
    """The key of the ORIGINAL direction: that of the packet that created the flow."""
    reply_key: FlowKey
    """The key of the REPLY direction (``reverse_key(key)``)."""
    state: FlowState
    created: float
    """``now`` when the flow was created, in seconds."""
    last_seen: float
    """``now`` of the last valid packet, in seconds."""
    expires: float
    """Absolute time, in seconds, at which the flow is dead unless another packet refreshes it."""
    generation: int
    """The policy-table generation this flow was last checked against (set by the decision)."""
    timeout: float = 0.0
    """The timeout that set ``expires``: the state's, possibly capped while unacknowledged."""
    fin_original: bool = False
    """A TCP FIN was seen in the ORIGINAL direction."""
    fin_reply: bool = False
    """A TCP FIN was seen in the REPLY direction."""
    closer: FlowDirection | None = None
    """The direction of the first FIN: the active closer, whose ACK of the other FIN ends the
    connection (RFC 9293 3.6). None until a FIN is seen."""
    simultaneous: bool = False
    """The TCP handshake was a simultaneous open (RFC 9293 figure 8): SYNs crossed."""
    packets: list[int] = field(default_factory=lambda: [0, 0])
    """Valid packets seen, indexed by ``FlowDirection.value``: [original, reply]."""
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    """Bytes of valid packets seen (``PacketInfo.length``): [original, reply]."""

    @property
    def assured(self) -> bool:
        """Conntrack's ASSURED: an established, two-way connection, the last kind to evict."""
        if self.packets[1] == 0:
            return False
        state = self.state
        return state is FlowState.ESTABLISHED or state is FlowState.REPLIED


def _echo_fits(protocol: int, icmp_type: int | None, direction: FlowDirection) -> bool:
    """Echo requests travel only in the ORIGINAL direction and replies only in the REPLY one."""
    if direction is FlowDirection.ORIGINAL:
        return icmp_type == _ECHO_REQUEST[protocol]
    return icmp_type == _ECHO_REPLY[protocol]


def _tcp_transition(flow: Flow, direction: FlowDirection, flags: int) -> bool:
    """Move ``flow`` along the TCP state machine for one segment; False if it is INVALID.

    Modelled on the state table of nf_conntrack_proto_tcp.c (``tcp_conntracks``) without window
    tracking. Where Linux *ignores* a segment (passes it without a state change, "sIG"), so do we.
    """
    core = flags & _TCP_CORE
    if core not in _TCP_VALID:
        return False
    state = flow.state
    original = direction is FlowDirection.ORIGINAL

    if core & TCP_RST:
        # A reset ends the connection from any state. Linux also checks that its sequence number
        # is in the window; we can't, and a RST from the flow's own tuple can only tear down an
        # allowed connection, never open anything.
        flow.state = FlowState.CLOSE
        return True

    if core == TCP_SYN:
        if state is FlowState.SYN_SENT:
            if not original:
                # The responder sent its own SYN: a simultaneous open (RFC 9293 figure 8), which
                # Linux accepts (SYN_SENT2). Both sides now send SYN-ACKs.
                flow.state = FlowState.SYN_RECV
                flow.simultaneous = True
            # else: a retransmitted SYN.
            return True
        if state is FlowState.SYN_RECV:
            # The originator retransmits its SYN when the SYN-ACK was lost; the responder's own
            # SYN may only be retransmitted in a simultaneous open.
            return original or flow.simultaneous
        if state in _SYN_ACCEPTING_STATES:
            # The originator lost the connection and reconnects on the same tuple. Linux ignores
            # the SYN (passes it, keeps the state), so the new handshake can get through; the tuple
            # is the one policy already allowed. The responder never sends a bare SYN here.
            return original
        # TIME_WAIT / CLOSE: a new connection reusing the tuple. lookup() never hands such a SYN
        # to advance() (the caller must evaluate policy for it and create() a new flow).
        return False

    if core == _TCP_SYNACK:
        if original:
            # The originator sent a SYN; only the responder answers with SYN-ACK, except that in a
            # simultaneous open both sides do.
            return state is FlowState.SYN_RECV and flow.simultaneous
        if state is FlowState.SYN_SENT:
            flow.state = FlowState.SYN_RECV
        # else: a retransmitted SYN-ACK (the originator's ACK was lost); the originator must see
        # it to ACK again. Linux ignores it; pass it without a state change.
        return True

    if core == _TCP_FINACK:
        if state is FlowState.SYN_SENT:
            # Nobody may send a FIN before the handshake got a SYN-ACK (Linux: INVALID).
            return False
        if original:
            flow.fin_original = True
        else:
            flow.fin_reply = True
        if state is FlowState.SYN_RECV or state is FlowState.ESTABLISHED:
            flow.closer = direction
            flow.state = FlowState.FIN_WAIT
        elif (
            state is FlowState.FIN_WAIT or state is FlowState.CLOSE_WAIT
        ) and direction is not flow.closer:
            # The passive closer's FIN (often FIN+ACK acknowledging the first FIN as well).
            flow.state = FlowState.LAST_ACK
        # else: a retransmitted FIN; in TIME_WAIT the active closer must ACK it again (RFC 9293
        # 3.10.7.4), so it passes and restarts the TIME_WAIT timer like in the kernel.
        return True

    # A segment with ACK and maybe data.
    if state is FlowState.SYN_SENT:
        # The originator has nothing to acknowledge before the SYN-ACK: INVALID, as in Linux. The
        # responder may answer a SYN on a tuple it thinks is still open with a challenge ACK
        # (RFC 5961 4.2), to which the originator replies RST; Linux lets it through.
        return not original
    if state is FlowState.SYN_RECV:
        if original or flow.simultaneous:
            # The third packet of the handshake (or, after a simultaneous open, either side's).
            flow.state = FlowState.ESTABLISHED
        return True
    if state is FlowState.FIN_WAIT and direction is not flow.closer:
        flow.state = FlowState.CLOSE_WAIT
    elif state is FlowState.LAST_ACK and direction is flow.closer:
        flow.state = FlowState.TIME_WAIT
    return True


class FlowTable:
    """The tracked connections, found by either of their keys. Not thread-safe: the queue loop
    thread alone calls it.

    Bookkeeping, all O(1) per packet:
    - ``_index`` maps both keys of every flow to it.
    - ``_buckets`` groups flows by their current timeout, each group an OrderedDict in refresh
      order. With one timeout per group and ``now`` never decreasing, the front of a group is the
      flow that expires first, so ``expire()`` only ever looks at expired flows and group fronts.
    - ``_unassured`` and ``_assured`` hold every flow once, in least-recently-used order, so the
      eviction victim is always at the front of one of them.
    """

    __slots__ = (
        "_assured",
        "_buckets",
        "_index",
        "_max_flows",
        "_state_timeouts",
        "_timeouts",
        "_unack",
        "_unassured",
        "evictions",
        "expirations",
    )

    def __init__(self, max_flows: int = 262144, timeouts: FlowTimeouts = DEFAULT_TIMEOUTS) -> None:
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, got {max_flows}")
        self._max_flows = max_flows
        self._timeouts = timeouts
        self._state_timeouts: dict[FlowState, float] = {s: timeouts.for_state(s) for s in FlowState}
        self._unack = timeouts.tcp_unacknowledged
        self._index: dict[FlowKey, Flow] = {}
        self._unassured: OrderedDict[FlowKey, Flow] = OrderedDict()
        self._assured: OrderedDict[FlowKey, Flow] = OrderedDict()
        self._buckets: dict[float, OrderedDict[FlowKey, Flow]] = {
            t: OrderedDict() for t in {*self._state_timeouts.values(), self._unack}
        }
        self.evictions = 0
        """Flows dropped to make room for a new one (the table was full)."""
        self.expirations = 0
        """Flows removed because their timeout passed."""

    @property
    def max_flows(self) -> int:
        return self._max_flows

    @property
    def timeouts(self) -> FlowTimeouts:
        return self._timeouts

    def __len__(self) -> int:
        return len(self._unassured) + len(self._assured)

    def __iter__(self) -> Iterator[Flow]:
        """Every flow held, as a snapshot: the caller may remove flows while iterating.

        Flows past their expiry that nobody reaped yet are included; call ``expire()`` first.
        """
        return iter(list(chain(self._unassured.values(), self._assured.values())))

    def clear(self) -> None:
        """Forget every flow (the counters keep counting)."""
        self._index.clear()
        self._unassured.clear()
        self._assured.clear()
        for bucket in self._buckets.values():
            bucket.clear()

    def lookup(self, packet: PacketInfo, now: float) -> tuple[Flow, FlowDirection] | None:
        """The live flow ``packet`` belongs to and the packet's direction in it, or None.

        Changes nothing except that it removes an expired flow it finds, and a TCP flow in
        TIME_WAIT or CLOSE when a bare SYN reuses its tuple: that SYN opens a new connection
        (RFC 9293 3.6.1, RFC 1122 4.2.2.13; conntrack restarts tracking too), which the caller must
        evaluate afresh. This holds in either direction, since the old responder may be the one
        reconnecting, and policy must judge that direction on its own. ICMP errors are never a
        flow's own packets: see ``related``.
        """
        protocol = packet.protocol
        if protocol in (_ICMP, _ICMPV6) and _is_icmp_error(packet):
            return None
        key = _own_key(packet)
        if key is None:
            return None
        flow = self._live(key, now)
        if flow is None:
            return None
        direction = FlowDirection.ORIGINAL if key == flow.key else FlowDirection.REPLY
        state = flow.state
        if (
            protocol == _TCP
            and (state is FlowState.TIME_WAIT or state is FlowState.CLOSE)
            and (packet.tcp_flags & _TCP_CORE) == TCP_SYN
        ):
            self._discard(flow)
            return None
        if state is FlowState.ECHO and not _echo_fits(key[0], packet.icmp_type, direction):
            # Only possible with identifier 0: then the keys of "A pings B" and "B pings A" are
            # the same pair, and a request matching the reply key is a new ping the other way.
            return None
        return flow, direction

    def advance(self, flow: Flow, direction: FlowDirection, packet: PacketInfo, now: float) -> bool:
        """Account a packet of ``flow`` (as found by ``lookup``) and move its state along.

        Returns False, changing nothing, when the packet is INVALID for the flow's state (or the
        flow is no longer in the table); the caller should drop it. Otherwise refreshes
        ``last_seen``, ``expires`` and the counters and returns True.
        """
        key = flow.key
        if self._index.get(key) is not flow:
            return False
        was_assured = flow.assured
        state = flow.state
        if key[0] == _TCP:
            if not _tcp_transition(flow, direction, packet.tcp_flags):
                return False
        elif state is FlowState.UNREPLIED:
            if direction is FlowDirection.REPLY:
                # Traffic both ways: conntrack calls it a stream and gives it the stream timeout.
                # (Newer kernels wait until the flow is still active 2 s after the first reply,
                # so that a lone DNS exchange keeps the short timeout; we don't.)
                flow.state = FlowState.REPLIED
        elif state is FlowState.ECHO and not _echo_fits(key[0], packet.icmp_type, direction):
            # Repeated requests and replies are fine while the flow lives (ping sends a series
            # with one identifier); a request in the REPLY direction or a reply in the ORIGINAL
            # one is not a packet of this flow.
            return False
        # REPLIED and GENERIC: anything goes in both directions.
        packets = flow.packets
        if direction is FlowDirection.ORIGINAL:
            i = 0
            first_reply = False
        else:
            i = 1
            first_reply = packets[1] == 0
        packets[i] += 1
        flow.bytes[i] += packet.length
        flow.last_seen = now
        if flow.state is state and not first_reply:
            # The common case: same state, so same timeout and same assured-ness. Just move the
            # flow to the young end of its bucket and of its LRU.
            timeout = flow.timeout
            flow.expires = now + timeout
            self._buckets[timeout].move_to_end(key)
            (self._assured if was_assured else self._unassured).move_to_end(key)
            return True
        self._refresh(flow, now)
        assured = flow.assured
        if assured is was_assured:
            (self._assured if assured else self._unassured).move_to_end(key)
        elif assured:
            del self._unassured[key]
            self._assured[key] = flow
        else:
            del self._assured[key]
            self._unassured[key] = flow
        return True

    def create(self, packet: PacketInfo, now: float, generation: int) -> Flow:
        """Start tracking a new, allowed connection; ``packet`` is its first ORIGINAL packet.

        TCP: a SYN starts at SYN_SENT. Any other segment is picked up mid-stream as ESTABLISHED
        (Linux with nf_conntrack_tcp_loose=1, e.g. after an agent restart), and the segment itself
        then counts: a FIN makes it FIN_WAIT, a RST (or a flag combination no TCP sends) CLOSE.
        UDP starts UNREPLIED, an ICMP echo request ECHO, anything else GENERIC.

        A flow already holding either key is replaced. When the table is full, expired flows go
        first, then the least recently used unassured flow, then the least recently used flow.

        Raises ValueError if the packet cannot be tracked (``flow_key`` is None) or is an ICMP
        echo reply or error, which never start a flow.
        """
        key = _own_key(packet)
        if key is None:
            raise ValueError("packet cannot belong to a tracked flow")
        protocol = key[0]
        reply_key = reverse_key(key)
        closer: FlowDirection | None = None
        if protocol == _TCP:
            core = packet.tcp_flags & _TCP_CORE
            if core not in _TCP_VALID or core & TCP_RST:
                state = FlowState.CLOSE
            elif core == TCP_SYN:
                state = FlowState.SYN_SENT
            elif core == _TCP_FINACK:
                state = FlowState.FIN_WAIT
                closer = FlowDirection.ORIGINAL
            else:
                state = FlowState.ESTABLISHED
        elif protocol == _UDP:
            state = FlowState.UNREPLIED
        elif protocol in (_ICMP, _ICMPV6):
            if packet.icmp_type != _ECHO_REQUEST[protocol]:
                raise ValueError("only an ICMP echo request starts a flow")
            state = FlowState.ECHO
        else:
            state = FlowState.GENERIC

        for k in (key, reply_key):
            old = self._index.get(k)
            if old is not None:
                self._discard(old)
        if len(self) >= self._max_flows:
            self._make_room(now)

        flow = Flow(
            key=key,
            reply_key=reply_key,
            state=state,
            created=now,
            last_seen=now,
            expires=now,
            generation=generation,
            fin_original=closer is not None,
            closer=closer,
        )
        flow.packets[0] = 1
        flow.bytes[0] = packet.length
        timeout = self._timeout_of(flow)
        flow.timeout = timeout
        flow.expires = now + timeout
        self._buckets[timeout][key] = flow
        self._index[key] = flow
        self._index[reply_key] = flow
        # A new flow has no reply yet, so it is never assured.
        self._unassured[key] = flow
        return flow

    def related(self, packet: PacketInfo, now: float) -> Flow | None:
        """For an ICMP/ICMPv6 error, the live flow of the packet it quotes; None otherwise.

        The quoted packet may be from either direction of the flow. The error must be addressed
        to the quoted packet's source: errors go back to the sender of the offending packet
        (RFC 792, RFC 4443 2.4), and anything else is not an error about this flow. Read-only
        apart from removing an expired flow: errors don't keep a flow alive (nor do they in Linux).
        """
        if not _is_icmp_error(packet):
            return None
        quoted = packet.embedded
        if quoted is None or _is_icmp_error(quoted):
            return None
        if quoted.family != packet.family or packet.dst != quoted.src:
            return None
        key = _own_key(quoted)
        if key is None:
            return None
        return self._live(key, now)

    def _live(self, key: FlowKey, now: float) -> Flow | None:
        """The flow indexed under ``key`` unless it has expired (then it is removed)."""
        flow = self._index.get(key)
        if flow is None:
            return None
        if flow.expires <= now:
            self._discard(flow)
            self.expirations += 1
            return None
        return flow

    def remove(self, flow: Flow) -> None:
        """Stop tracking ``flow``; a no-op if it is no longer in the table."""
        if self._index.get(flow.key) is flow:
            self._discard(flow)

    def expire(self, now: float, budget: int = 1024) -> int:
        """Remove up to ``budget`` expired flows; returns how many were removed.

        Costs O(number of distinct timeouts + removed), so it can run often (e.g. once per batch
        of packets) to reclaim memory; correctness doesn't depend on it, as lookups never return
        an expired flow.
        """
        removed = 0
        for bucket in self._buckets.values():
            while removed < budget and bucket:
                flow = next(iter(bucket.values()))
                if flow.expires > now:
                    break
                self._discard(flow)
                removed += 1
        self.expirations += removed
        return removed

    # internals

    def _timeout_of(self, flow: Flow) -> float:
        timeout = self._state_timeouts[flow.state]
        if flow.packets[1] == 0 and timeout > self._unack and flow.key[0] == _TCP:
            # Linux caps the timeout of a TCP connection that has seen no reply at
            # nf_conntrack_tcp_timeout_unacknowledged.
            return self._unack
        return timeout

    def _refresh(self, flow: Flow, now: float) -> None:
        timeout = self._timeout_of(flow)
        flow.expires = now + timeout
        key = flow.key
        if timeout == flow.timeout:
            self._buckets[timeout].move_to_end(key)
        else:
            del self._buckets[flow.timeout][key]
            self._buckets[timeout][key] = flow
            flow.timeout = timeout

    def _discard(self, flow: Flow) -> None:
        """Remove a flow known to be in the table."""
        key = flow.key
        del self._index[key]
        if flow.reply_key != key:  # a flow from a socket to itself has one key
            del self._index[flow.reply_key]
        if self._unassured.pop(key, None) is None:
            del self._assured[key]
        del self._buckets[flow.timeout][key]

    def _make_room(self, now: float) -> None:
        self.expire(now)
        # Linux's early_drop() evicts a connection that is not ASSURED. When every flow is
        # assured we still evict the least recently used one: unlike the kernel we don't drop
        # the new packet, and an evicted connection is only re-evaluated against policy when its
        # next packet arrives.
        while len(self) >= self._max_flows:
            victims = self._unassured or self._assured
            self._discard(next(iter(victims.values())))
            self.evictions += 1
