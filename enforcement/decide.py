"""Stage: the decision. ``decide(packet, tables, flows, now)`` is a plain function: no socket,
no clock, no lock. The queue loop (``enforcement/queue.py``), its caller, is what touches the
kernel.

Order of questions, cheapest and most common first:

1. IPv6 neighbour discovery is let through (RFC 4861): without it the network does not work. Only
   a message that passes the receiver's validity checks of RFC 4861 counts (``packets.py`` sets
   ``neighbor_discovery``; the hop limit must be 255, so it was sent on this link and is never
   a routed one). Anything else with an ND type is an ordinary ICMPv6 packet and policy judges it
   below: between pods that policy keeps apart it is dropped, like any other packet. That is
   also what the pods themselves would do: a receiver silently discards an invalid ND message
   (RFC 4861 6.1, 7.1, 8.1), so judging it by policy takes nothing from them that they needed.
   Why no hook check: ND is link-scoped. Its hop limit of 255 makes it "immune to off-link
   senders" (RFC 4861 3.1), routers never forward link-local traffic (RFC 4291 2.5.6, 2.7), and
   Linux decrements the hop limit before the FORWARD hook (ip6_forward), so pod-to-pod ND routed
   through the node reaches the agent with a hop limit of at most 254 and fails the check. Valid
   ND only arrives on INPUT (pod to node, e.g. for the gateway fe80::1) and OUTPUT (the node's
   own answers); on a bridged node (br_netfilter) FORWARD also sees ND between pods on the same
   bridge, unrouted and at 255, which is their link's own traffic and must pass.
   Traffic of an address of the node's pod ranges that no known pod has is dropped: its
   policies cannot be known yet (a pod newer than the agent's view), so nothing opens early.
   (Valid ND of such a pod is let through first: a new pod must resolve its gateway.)
2. Does the packet belong to a tracked connection (either direction)? Then it is accepted, provided
   the connection is still allowed by the current tables (a policy change re-checks each flow on
   its next packet, so a denying change cuts it at once) and the packet fits the flow's state.
3. Is it an ICMP error about a tracked connection? Then it is RELATED and accepted.
4. Is it traffic from the pod's own node? Always allowed (kubelet probes; NetworkPolicy docs:
   "traffic to and from the node where a Pod is running is always allowed").
5. Did the kernel's conntrack see this packet as the REPLY of a connection it confirmed before the
   agent knew it (an agent restart, or a pod that just became isolated)? Then judge the original
   direction under the current tables: the reply of an allowed connection is allowed.
6. Otherwise it opens a new connection: the tables decide, and an accepted one is tracked.

:func:`decide` answers a :class:`Verdict` (a singleton per reason) and is the hot path.
:func:`decide_with_outcome` asks the same questions in the same order and also returns the
:class:`enforcement.tables.Outcome` the tables gave (what decided each direction, interned), for
consumers that name the rule behind a verdict (flow logs, trace). Both are kept in step by a
differential test (tests/enforcement/test_decide.py).
"""

from __future__ import annotations

from enforcement.flows import Flow, FlowDirection, FlowTable
from enforcement.model import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP
from enforcement.packets import PacketInfo
from enforcement.tables import OUTCOMES, AllowTables, Outcome
from enforcement.verdict import VERDICTS, Reason, Verdict

_ICMP_ECHO_REQUEST = {IPPROTO_ICMP: 8, IPPROTO_ICMPV6: 128}
_ICMP_ECHO_REPLY = {IPPROTO_ICMP: 0, IPPROTO_ICMPV6: 129}
_TCP_ACK = 0x10

ACCEPTING = frozenset({Reason.ALLOWED, Reason.NOT_ISOLATED})
"""The reasons ``AllowTables.evaluate`` gives for traffic that may pass."""

PINNED_GENERATION = -1
"""Generation of flows that no policy can revoke (opened by the node itself)."""


def decide(
    packet: PacketInfo,
    tables: AllowTables,
    flows: FlowTable,
    now: float,
    *,
    from_host: bool = False,
    kernel_reply: bool = False,
    unknown_endpoint: bool = False,
) -> Verdict:
    """Decide one packet and update the flow table.

    ``from_host``: the packet was sent by the node itself (the firewall marks OUTPUT traffic).
    ``kernel_reply``: the kernel's conntrack classified the packet as the REPLY direction of a
    connection it had already confirmed (the firewall marks ``--ctdir REPLY``).
    ``unknown_endpoint``: the pod side is an address of this node's pod ranges that no known pod
    has (the firewall marks it): a pod too new for the agent to know its labels.
    """
    if packet.neighbor_discovery:
        return VERDICTS[Reason.NEIGHBOR_DISCOVERY]
    protocol = packet.protocol

    if unknown_endpoint and not from_host:
        return VERDICTS[Reason.UNKNOWN_ENDPOINT]

    found = flows.lookup(packet, now)
    if found is not None:
        flow, direction = found
        if not _still_allowed(flow, tables, flows):
            return VERDICTS[Reason.REVOKED]
        if not flows.advance(flow, direction, packet, now):
            return VERDICTS[Reason.INVALID]
        return VERDICTS[Reason.FLOW]

    if packet.embedded is not None:
        related = flows.related(packet, now)
        if related is not None and _still_allowed(related, tables, flows):
            return VERDICTS[Reason.RELATED]

    if from_host:
        if _opens_flow(packet):
            flows.create(packet, now, PINNED_GENERATION)
        return VERDICTS[Reason.HOST]

    if kernel_reply and (packet.src_port is not None or _is_echo_reply(packet)):
        original = _reversed(packet)
        reason = tables.evaluate(original.src, original.dst, protocol, original.dst_port)
        if reason in ACCEPTING:
            flow = flows.create(original, now, tables.generation)
            if not flows.advance(flow, FlowDirection.REPLY, packet, now):
                flows.remove(flow)
                return VERDICTS[Reason.INVALID]
            return VERDICTS[Reason.FLOW]
        return VERDICTS[reason]

    reason = tables.evaluate(packet.src, packet.dst, protocol, packet.dst_port)
    if reason in ACCEPTING and _opens_flow(packet):
        flows.create(packet, now, tables.generation)
    return VERDICTS[reason]


def decide_with_outcome(
    packet: PacketInfo,
    tables: AllowTables,
    flows: FlowTable,
    now: float,
    *,
    from_host: bool = False,
    kernel_reply: bool = False,
    unknown_endpoint: bool = False,
) -> tuple[Verdict, Outcome]:
    """:func:`decide`, with the provenance of the verdict (same arguments, same effects).

    The Outcome is what the tables said about the flow they judged: the new flow, the original
    direction of a kernel reply (then the verdict may be FLOW), or a tracked flow that a policy
    change no longer allows (the verdict is REVOKED, the outcome names the denying rule). When
    the tables were not asked (neighbour discovery, a tracked flow, the node's own traffic...),
    it is ``OUTCOMES[verdict.reason]``, which names nothing. Nothing is allocated per packet
    but the returned pair.
    """
    if packet.neighbor_discovery:
        return VERDICTS[Reason.NEIGHBOR_DISCOVERY], OUTCOMES[Reason.NEIGHBOR_DISCOVERY]
    protocol = packet.protocol

    if unknown_endpoint and not from_host:
        return VERDICTS[Reason.UNKNOWN_ENDPOINT], OUTCOMES[Reason.UNKNOWN_ENDPOINT]

    found = flows.lookup(packet, now)
    if found is not None:
        flow, direction = found
        denial = _denial(flow, tables, flows)
        if denial is not None:
            return VERDICTS[Reason.REVOKED], denial
        if not flows.advance(flow, direction, packet, now):
            return VERDICTS[Reason.INVALID], OUTCOMES[Reason.INVALID]
        return VERDICTS[Reason.FLOW], OUTCOMES[Reason.FLOW]

    if packet.embedded is not None:
        related = flows.related(packet, now)
        if related is not None and _denial(related, tables, flows) is None:
            return VERDICTS[Reason.RELATED], OUTCOMES[Reason.RELATED]

    if from_host:
        if _opens_flow(packet):
            flows.create(packet, now, PINNED_GENERATION)
        return VERDICTS[Reason.HOST], OUTCOMES[Reason.HOST]

    if kernel_reply and (packet.src_port is not None or _is_echo_reply(packet)):
        original = _reversed(packet)
        outcome = tables.outcome(original.src, original.dst, protocol, original.dst_port)
        if outcome.reason in ACCEPTING:
            flow = flows.create(original, now, tables.generation)
            if not flows.advance(flow, FlowDirection.REPLY, packet, now):
                flows.remove(flow)
                return VERDICTS[Reason.INVALID], outcome
            return VERDICTS[Reason.FLOW], outcome
        return outcome.verdict, outcome

    outcome = tables.outcome(packet.src, packet.dst, protocol, packet.dst_port)
    if outcome.reason in ACCEPTING and _opens_flow(packet):
        flows.create(packet, now, tables.generation)
    return outcome.verdict, outcome


def admit_audited(packet: PacketInfo, flows: FlowTable, now: float) -> None:
    """Track a connection that policy denies but audit mode lets through (``--audit``).

    Pinned like the node's own connections: no later policy change re-checks it, so the flow
    log reports it once (denied, not enforced), and the rest of it, replies included, passes
    as any tracked connection would instead of being judged again packet by packet.
    """
    if _opens_flow(packet) and flows.lookup(packet, now) is None:
        flows.create(packet, now, PINNED_GENERATION)


def _denial(flow: Flow, tables: AllowTables, flows: FlowTable) -> Outcome | None:
    """As :func:`_still_allowed`: None if the flow is still allowed, else the tables' denial."""
    if flow.generation == tables.generation or flow.generation == PINNED_GENERATION:
        return None
    protocol, src, _src_port, dst, dst_port = flow.key
    port: int | None = dst_port
    if protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        port = None  # echo flows carry the identifier in the key, not a port
    outcome = tables.outcome(src, dst, protocol, port)
    if outcome.reason in ACCEPTING:
        flow.generation = tables.generation
        return None
    flows.remove(flow)
    return outcome


def _still_allowed(flow: Flow, tables: AllowTables, flows: FlowTable) -> bool:
    """Re-check a flow whose verdict predates the current tables; forget it if now denied."""
    if flow.generation == tables.generation or flow.generation == PINNED_GENERATION:
        return True
    protocol, src, _src_port, dst, dst_port = flow.key
    port: int | None = dst_port
    if protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        port = None  # echo flows carry the identifier in the key, not a port
    if tables.evaluate(src, dst, protocol, port) in ACCEPTING:
        flow.generation = tables.generation
        return True
    flows.remove(flow)
    return False


def _opens_flow(packet: PacketInfo) -> bool:
    """Whether an accepted packet starts a connection worth tracking (never replies or errors)."""
    if packet.fragment or packet.embedded is not None:
        return False
    if packet.protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return packet.icmp_type == _ICMP_ECHO_REQUEST[packet.protocol]
    return packet.src_port is not None


def _is_echo_reply(packet: PacketInfo) -> bool:
    echo_reply = _ICMP_ECHO_REPLY.get(packet.protocol)
    return echo_reply is not None and packet.icmp_type == echo_reply and packet.icmp_id is not None


def _reversed(packet: PacketInfo) -> PacketInfo:
    """The packet the other side would have sent to open the connection ``packet`` replies to."""
    if packet.protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return PacketInfo(
            family=packet.family,
            src=packet.dst,
            dst=packet.src,
            protocol=packet.protocol,
            icmp_type=_ICMP_ECHO_REQUEST[packet.protocol],
            icmp_code=0,
            icmp_id=packet.icmp_id,
        )
    # A TCP reply carries ACK; the synthesized original is mid-stream (ACK set), so the flow table
    # picks the connection up as established (nf_conntrack_tcp_loose=1 behaviour).
    flags = _TCP_ACK if packet.protocol == IPPROTO_TCP else 0
    return PacketInfo(
        family=packet.family,
        src=packet.dst,
        dst=packet.src,
        protocol=packet.protocol,
        src_port=packet.dst_port,
        dst_port=packet.src_port,
        tcp_flags=flags,
    )
