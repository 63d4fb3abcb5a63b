"""Tests for enforcement/flows.py: the conntrack-style flow table."""

from __future__ import annotations

from typing import TypeAlias

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from enforcement.flows import (
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    Flow,
    FlowDirection,
    FlowKey,
    FlowState,
    FlowTable,
    FlowTimeouts,
    flow_key,
    reverse_key,
    tcp_flags_valid,
)
from enforcement.packets import PacketInfo
from tests.builders import ip

ORIGINAL = FlowDirection.ORIGINAL
REPLY = FlowDirection.REPLY
SS = FlowState.SYN_SENT
SR = FlowState.SYN_RECV
ES = FlowState.ESTABLISHED
FW = FlowState.FIN_WAIT
CW = FlowState.CLOSE_WAIT
LA = FlowState.LAST_ACK
TW = FlowState.TIME_WAIT
CL = FlowState.CLOSE
SYNACK = TCP_SYN | TCP_ACK
FINACK = TCP_FIN | TCP_ACK
RSTACK = TCP_RST | TCP_ACK
DATA = TCP_ACK | TCP_PSH

CLIENT = ip("10.0.0.1")
SERVER = ip("10.0.0.2")
ROUTER = ip("192.0.2.1")
CLIENT6 = ip("fd00::1")
SERVER6 = ip("fd00::2")
ROUTER6 = ip("2001:db8::1")
CPORT = 40000
SPORT = 80

DEFAULTS = FlowTimeouts()


# builders


def _family(address: bytes) -> int:
    return 4 if len(address) == 4 else 6


def tcp(src: bytes, sport: int, dst: bytes, dport: int, flags: int, length: int = 60) -> PacketInfo:
    return PacketInfo(_family(src), src, dst, 6, sport, dport, tcp_flags=flags, length=length)


def udp(src: bytes, sport: int, dst: bytes, dport: int, length: int = 100) -> PacketInfo:
    return PacketInfo(_family(src), src, dst, 17, sport, dport, length=length)


def echo(src: bytes, dst: bytes, ident: int, reply: bool = False) -> PacketInfo:
    """An ICMP (IPv4 addresses) or ICMPv6 (IPv6 addresses) echo request or reply."""
    if _family(src) == 4:
        protocol, icmp_type = 1, 0 if reply else 8
    else:
        protocol, icmp_type = 58, 129 if reply else 128
    return PacketInfo(
        _family(src), src, dst, protocol, icmp_type=icmp_type, icmp_code=0, icmp_id=ident, length=84
    )


def icmp_error(
    src: bytes, dst: bytes, quoted: PacketInfo | None, icmp_type: int = -1
) -> PacketInfo:
    """An ICMP error quoting ``quoted``; the default type is destination unreachable (3 / 1)."""
    family = _family(src)
    if icmp_type == -1:
        icmp_type = 3 if family == 4 else 1
    protocol = 1 if family == 4 else 58
    return PacketInfo(
        family, src, dst, protocol, icmp_type=icmp_type, icmp_code=0, embedded=quoted, length=96
    )


def quote(packet: PacketInfo) -> PacketInfo:
    """``packet`` as an ICMP error quotes it: an IPv4 error carries only the first 8 bytes of the
    transport header (RFC 792), so no TCP flags."""
    return PacketInfo(
        packet.family,
        packet.src,
        packet.dst,
        packet.protocol,
        packet.src_port,
        packet.dst_port,
        icmp_type=packet.icmp_type,
        icmp_code=packet.icmp_code,
        icmp_id=packet.icmp_id,
    )


def c(flags: int) -> PacketInfo:
    """A TCP segment from the client to the server."""
    return tcp(CLIENT, CPORT, SERVER, SPORT, flags)


def s(flags: int) -> PacketInfo:
    """A TCP segment from the server to the client."""
    return tcp(SERVER, SPORT, CLIENT, CPORT, flags)


SENDERS = {"c": c, "s": s}

Step: TypeAlias = tuple[str, int, FlowState]
"""(sender "c" or "s", TCP flags, state after the segment)."""

HANDSHAKE: list[Step] = [("c", TCP_SYN, SS), ("s", SYNACK, SR), ("c", TCP_ACK, ES)]


def play(table: FlowTable, steps: list[Step], now: float = 0.0) -> Flow:
    """Create a flow from the first step, then look up and advance each later segment, checking
    the direction and the state after each one. Returns the flow."""
    (first_sender, first_flags, first_state), *rest = steps
    flow = table.create(SENDERS[first_sender](first_flags), now, generation=1)
    assert flow.state is first_state
    for sender, flags, state in rest:
        packet = SENDERS[sender](flags)
        hit = table.lookup(packet, now)
        assert hit is not None, (sender, flags)
        assert hit == (flow, ORIGINAL if sender == first_sender else REPLY)
        assert table.advance(flow, hit[1], packet, now), (sender, flags, flow.state)
        assert flow.state is state, (sender, flags)
    return flow


# flow keys


@pytest.mark.parametrize(
    ("packet", "key"),
    [
        pytest.param(
            tcp(CLIENT, CPORT, SERVER, SPORT, TCP_SYN), (6, CLIENT, CPORT, SERVER, SPORT), id="tcp"
        ),
        pytest.param(udp(CLIENT, 53000, SERVER, 53), (17, CLIENT, 53000, SERVER, 53), id="udp"),
        pytest.param(
            PacketInfo(6, CLIENT6, SERVER6, 132, 5000, 38412),
            (132, CLIENT6, 5000, SERVER6, 38412),
            id="sctp-has-ports",
        ),
        pytest.param(
            PacketInfo(4, CLIENT, SERVER, 47), (47, CLIENT, 0, SERVER, 0), id="gre-has-no-ports"
        ),
        pytest.param(echo(CLIENT, SERVER, 7), (1, CLIENT, 7, SERVER, 0), id="echo-request"),
        pytest.param(
            echo(SERVER, CLIENT, 7, reply=True), (1, SERVER, 0, CLIENT, 7), id="echo-reply"
        ),
        pytest.param(echo(CLIENT6, SERVER6, 9), (58, CLIENT6, 9, SERVER6, 0), id="echo6-request"),
        pytest.param(
            echo(SERVER6, CLIENT6, 9, reply=True), (58, SERVER6, 0, CLIENT6, 9), id="echo6-reply"
        ),
        pytest.param(
            icmp_error(ROUTER, CLIENT, quote(c(TCP_SYN))),
            (6, CLIENT, CPORT, SERVER, SPORT),
            id="error-has-quoted-key",
        ),
        pytest.param(icmp_error(ROUTER, CLIENT, None), None, id="error-without-quote"),
        pytest.param(
            icmp_error(ROUTER, CLIENT, icmp_error(CLIENT, SERVER, quote(c(TCP_SYN)))),
            None,
            id="error-about-error",
        ),
        pytest.param(
            PacketInfo(4, CLIENT, SERVER, 17, fragment=True), None, id="non-first-fragment"
        ),
        pytest.param(PacketInfo(4, CLIENT, SERVER, 6), None, id="tcp-without-ports"),
        pytest.param(
            PacketInfo(6, CLIENT6, SERVER6, 58, icmp_type=133, icmp_code=0),
            None,
            id="router-solicitation",
        ),
        pytest.param(
            PacketInfo(4, CLIENT, SERVER, 1, icmp_type=13, icmp_code=0, icmp_id=1),
            None,
            id="timestamp-request",
        ),
    ],
)
def test_flow_key(packet: PacketInfo, key: FlowKey | None) -> None:
    assert flow_key(packet) == key


def test_reply_key_of_echo_is_the_reply_packets_key() -> None:
    request, reply = echo(CLIENT, SERVER, 7), echo(SERVER, CLIENT, 7, reply=True)
    key = flow_key(request)
    assert key is not None
    assert reverse_key(key) == flow_key(reply)


@pytest.mark.parametrize(
    ("flags", "valid"),
    [
        pytest.param(TCP_SYN, True, id="syn"),
        pytest.param(TCP_SYN | TCP_ECE | TCP_CWR, True, id="ecn-setup-syn"),
        pytest.param(SYNACK, True, id="syn-ack"),
        pytest.param(DATA | TCP_URG, True, id="ack-psh-urg"),
        pytest.param(FINACK, True, id="fin-ack"),
        pytest.param(TCP_RST, True, id="rst"),
        pytest.param(RSTACK, True, id="rst-ack"),
        pytest.param(0, False, id="null"),
        pytest.param(TCP_FIN, False, id="fin-without-ack"),
        pytest.param(TCP_FIN | TCP_PSH | TCP_URG, False, id="xmas"),
        pytest.param(TCP_SYN | TCP_FIN, False, id="syn-fin"),
        pytest.param(TCP_SYN | TCP_RST, False, id="syn-rst"),
        pytest.param(TCP_RST | TCP_FIN | TCP_ACK, False, id="rst-fin"),
    ],
)
def test_tcp_flags_valid(flags: int, valid: bool) -> None:
    assert tcp_flags_valid(flags) is valid


# TCP


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(
            [
                *HANDSHAKE,
                ("c", DATA, ES),
                ("s", DATA, ES),
                ("c", FINACK, FW),
                ("s", TCP_ACK, CW),
                ("s", DATA, CW),  # half-close: the server may still send
                ("c", TCP_ACK, CW),
                ("s", FINACK, LA),
                ("c", TCP_ACK, TW),
            ],
            id="client-closes-first",
        ),
        pytest.param(
            [*HANDSHAKE, ("s", FINACK, FW), ("c", FINACK, LA), ("s", TCP_ACK, TW)],
            id="server-closes-first-fin-ack-both",
        ),
        pytest.param(
            [
                *HANDSHAKE,
                ("c", FINACK, FW),
                ("c", FINACK, FW),  # retransmitted FIN
                ("s", FINACK, LA),
                ("s", TCP_ACK, LA),  # not the active closer: not the last ACK
                ("c", TCP_ACK, TW),
                ("s", FINACK, TW),  # the last ACK was lost: FIN again ...
                ("c", TCP_ACK, TW),  # ... and the active closer ACKs it again
            ],
            id="retransmissions-while-closing",
        ),
        pytest.param(
            [("c", TCP_SYN, SS), ("s", SYNACK, SR), ("c", FINACK, FW)],
            id="fin-completes-handshake",
        ),
        pytest.param([("c", TCP_SYN, SS), ("s", RSTACK, CL)], id="connection-refused"),
        pytest.param(
            [*HANDSHAKE, ("c", TCP_RST, CL), ("s", DATA, CL), ("s", TCP_RST, CL)],
            id="rst-by-client-then-packets-in-flight",
        ),
        pytest.param([*HANDSHAKE, ("s", RSTACK, CL)], id="rst-by-server"),
        pytest.param(
            [
                ("c", TCP_SYN, SS),
                ("s", TCP_SYN, SR),
                ("c", SYNACK, SR),
                ("s", SYNACK, SR),
                ("s", TCP_SYN, SR),  # the responder's SYN, retransmitted
                ("s", TCP_ACK, ES),
            ],
            id="simultaneous-open",
        ),
        pytest.param(
            [
                ("c", TCP_SYN, SS),
                ("c", TCP_SYN, SS),  # retransmitted SYN
                ("s", SYNACK, SR),
                ("c", TCP_SYN, SR),  # the SYN-ACK was lost
                ("s", SYNACK, SR),
                ("s", TCP_ACK, SR),  # the responder's ACK does not complete the handshake
                ("c", TCP_ACK, ES),
                ("s", SYNACK, ES),  # the client's ACK was lost: SYN-ACK again
                ("c", TCP_SYN, ES),  # the client reconnects on the same tuple: ignored
            ],
            id="handshake-retransmissions",
        ),
        pytest.param(
            [("c", TCP_SYN, SS), ("s", TCP_ACK, SS), ("c", TCP_RST, CL)],
            id="challenge-ack-in-syn-sent",
        ),
        pytest.param(
            [
                ("c", TCP_SYN | TCP_ECE | TCP_CWR, SS),
                ("s", SYNACK | TCP_ECE, SR),
                ("c", TCP_ACK, ES),
                ("s", DATA | TCP_CWR, ES),
            ],
            id="ecn-flags-are-ignored",
        ),
    ],
)
def test_tcp_valid_sequences(steps: list[Step]) -> None:
    play(FlowTable(), steps)


@pytest.mark.parametrize(
    ("prefix", "sender", "flags"),
    [
        pytest.param([("c", TCP_SYN, SS)], "c", SYNACK, id="syn-ack-from-originator-syn-sent"),
        pytest.param(HANDSHAKE, "c", SYNACK, id="syn-ack-from-originator-established"),
        pytest.param(HANDSHAKE[:2], "c", SYNACK, id="syn-ack-from-originator-syn-recv"),
        pytest.param([("c", TCP_SYN, SS)], "c", TCP_ACK, id="ack-from-originator-syn-sent"),
        pytest.param([("c", TCP_SYN, SS)], "s", FINACK, id="fin-in-syn-sent"),
        pytest.param(HANDSHAKE[:2], "s", TCP_SYN, id="responder-syn-syn-recv"),
        pytest.param(HANDSHAKE, "s", TCP_SYN, id="responder-syn-established"),
        pytest.param(HANDSHAKE, "c", 0, id="null-flags"),
        pytest.param(HANDSHAKE, "c", TCP_SYN | TCP_FIN, id="syn-fin"),
        pytest.param(HANDSHAKE, "s", TCP_FIN, id="fin-without-ack"),
        pytest.param(HANDSHAKE, "c", TCP_SYN | TCP_RST, id="syn-rst"),
        pytest.param(HANDSHAKE, "s", TCP_FIN | TCP_PSH | TCP_URG, id="xmas"),
    ],
)
def test_tcp_invalid_segment_changes_nothing(prefix: list[Step], sender: str, flags: int) -> None:
    table = FlowTable()
    flow = play(table, prefix)
    packet = SENDERS[sender](flags)
    hit = table.lookup(packet, 5.0)
    assert hit is not None
    before = (flow.state, list(flow.packets), list(flow.bytes), flow.last_seen, flow.expires)
    assert not table.advance(flow, hit[1], packet, 5.0)
    assert (flow.state, flow.packets, flow.bytes, flow.last_seen, flow.expires) == before


def test_tcp_teardown_to_time_wait_then_expiry() -> None:
    table = FlowTable()
    flow = play(
        table,
        [*HANDSHAKE, ("c", FINACK, FW), ("s", FINACK, LA), ("c", TCP_ACK, TW)],
        now=100.0,
    )
    assert flow.expires == 100.0 + DEFAULTS.tcp_time_wait
    assert flow.fin_original and flow.fin_reply and flow.closer is ORIGINAL
    assert table.lookup(s(TCP_ACK), 219.0) == (flow, REPLY)
    assert table.lookup(s(TCP_ACK), 220.0) is None
    assert len(table) == 0
    assert table.expirations == 1


CLOSING: list[Step] = [
    *HANDSHAKE,
    ("c", FINACK, FW),
    ("s", TCP_ACK, CW),
    ("s", FINACK, LA),
    ("c", TCP_ACK, TW),
]


@pytest.mark.parametrize(
    ("steps", "timeout"),
    [
        pytest.param(CLOSING[:1], DEFAULTS.tcp_syn_sent, id="syn-sent"),
        pytest.param(CLOSING[:2], DEFAULTS.tcp_syn_recv, id="syn-recv"),
        pytest.param(CLOSING[:3], DEFAULTS.tcp_established, id="established"),
        pytest.param(CLOSING[:4], DEFAULTS.tcp_fin_wait, id="fin-wait"),
        pytest.param(CLOSING[:5], DEFAULTS.tcp_close_wait, id="close-wait"),
        pytest.param(CLOSING[:6], DEFAULTS.tcp_last_ack, id="last-ack"),
        pytest.param(CLOSING[:7], DEFAULTS.tcp_time_wait, id="time-wait"),
        pytest.param([*HANDSHAKE, ("c", TCP_RST, CL)], DEFAULTS.tcp_close, id="close"),
    ],
)
def test_tcp_state_timeouts(steps: list[Step], timeout: float) -> None:
    flow = play(FlowTable(), steps, now=10.0)
    assert flow.expires == 10.0 + timeout


@pytest.mark.parametrize(
    ("teardown", "sender"),
    [
        pytest.param(
            [("c", FINACK, FW), ("s", FINACK, LA), ("c", TCP_ACK, TW)], "c", id="time-wait-client"
        ),
        pytest.param(
            [("c", FINACK, FW), ("s", FINACK, LA), ("c", TCP_ACK, TW)], "s", id="time-wait-server"
        ),
        pytest.param([("s", RSTACK, CL)], "c", id="close-client"),
        pytest.param([("c", TCP_RST, CL)], "s", id="close-server"),
    ],
)
def test_new_syn_reuses_tuple_after_close(teardown: list[Step], sender: str) -> None:
    table = FlowTable()
    old = play(table, [*HANDSHAKE, *teardown])
    syn = SENDERS[sender](TCP_SYN)
    assert table.lookup(syn, 1.0) is None
    assert len(table) == 0
    table.remove(old)  # already gone: a no-op
    assert len(table) == 0
    new = table.create(syn, 1.0, generation=2)
    assert new is not old
    assert new.state is SS
    assert new.key == flow_key(syn)
    assert new.generation == 2


def test_syn_in_time_wait_is_not_advanced() -> None:
    """advance() refuses what lookup() treats as a new connection."""
    table = FlowTable()
    flow = play(table, [*HANDSHAKE, ("c", TCP_RST, CL)])
    assert not table.advance(flow, ORIGINAL, c(TCP_SYN), 1.0)


@pytest.mark.parametrize(
    ("flags", "state"),
    [
        pytest.param(TCP_ACK, ES, id="ack"),
        pytest.param(DATA, ES, id="data"),
        pytest.param(SYNACK, ES, id="syn-ack"),
        pytest.param(FINACK, FW, id="fin"),
        pytest.param(RSTACK, CL, id="rst"),
        pytest.param(0, CL, id="null-flags"),
    ],
)
def test_mid_stream_pickup(flags: int, state: FlowState) -> None:
    table = FlowTable()
    flow = table.create(c(flags), 0.0, generation=1)
    assert flow.state is state
    assert flow.expires == min(DEFAULTS.for_state(state), DEFAULTS.tcp_unacknowledged)
    assert not flow.assured


def test_mid_stream_pickup_is_capped_until_the_other_side_answers() -> None:
    table = FlowTable()
    flow = table.create(c(DATA), 0.0, generation=1)
    assert (flow.state, flow.expires) == (ES, DEFAULTS.tcp_unacknowledged)
    assert table.advance(flow, ORIGINAL, c(DATA), 10.0)
    assert flow.expires == 10.0 + DEFAULTS.tcp_unacknowledged
    assert table.advance(flow, REPLY, s(TCP_ACK), 20.0)
    assert flow.expires == 20.0 + DEFAULTS.tcp_established
    assert flow.assured


def test_counters_per_direction() -> None:
    table = FlowTable()
    flow = table.create(tcp(CLIENT, CPORT, SERVER, SPORT, TCP_SYN, length=60), 0.0, 7)
    assert table.advance(flow, REPLY, tcp(SERVER, SPORT, CLIENT, CPORT, SYNACK, length=60), 1.0)
    assert table.advance(flow, ORIGINAL, tcp(CLIENT, CPORT, SERVER, SPORT, DATA, length=500), 2.0)
    assert table.advance(flow, ORIGINAL, tcp(CLIENT, CPORT, SERVER, SPORT, DATA, length=40), 3.0)
    assert flow.packets == [3, 1]
    assert flow.bytes == [600, 60]
    assert (flow.created, flow.last_seen, flow.generation) == (0.0, 3.0, 7)


# UDP


def test_udp_unreplied_then_replied() -> None:
    table = FlowTable()
    query = udp(CLIENT, 53000, SERVER, 53)
    answer = udp(SERVER, 53, CLIENT, 53000)
    flow = table.create(query, 0.0, generation=1)
    assert (flow.state, flow.expires, flow.assured) == (FlowState.UNREPLIED, 30.0, False)
    assert table.lookup(query, 10.0) == (flow, ORIGINAL)
    assert table.advance(flow, ORIGINAL, query, 10.0)
    assert (flow.state, flow.expires) == (FlowState.UNREPLIED, 40.0)
    assert table.lookup(answer, 20.0) == (flow, REPLY)
    assert table.advance(flow, REPLY, answer, 20.0)
    assert (flow.state, flow.expires, flow.assured) == (FlowState.REPLIED, 140.0, True)
    assert table.advance(flow, ORIGINAL, query, 30.0)
    assert (flow.state, flow.expires) == (FlowState.REPLIED, 150.0)
    assert table.lookup(answer, 149.9) == (flow, REPLY)
    assert table.lookup(answer, 150.0) is None


def test_udp_unreplied_expires() -> None:
    table = FlowTable()
    table.create(udp(CLIENT, 53000, SERVER, 53), 0.0, generation=1)
    assert table.lookup(udp(SERVER, 53, CLIENT, 53000), 30.0) is None
    assert len(table) == 0


# ICMP echo


@pytest.mark.parametrize(
    ("requester", "responder"),
    [pytest.param(CLIENT, SERVER, id="icmp"), pytest.param(CLIENT6, SERVER6, id="icmpv6")],
)
def test_echo(requester: bytes, responder: bytes) -> None:
    table = FlowTable()
    request = echo(requester, responder, 4242)
    reply = echo(responder, requester, 4242, reply=True)
    flow = table.create(request, 0.0, generation=1)
    assert (flow.state, flow.expires) == (FlowState.ECHO, DEFAULTS.icmp)
    for now in (1.0, 2.0):  # ping sends a series with one identifier
        assert table.lookup(reply, now) == (flow, REPLY)
        assert table.advance(flow, REPLY, reply, now)
        assert table.lookup(request, now) == (flow, ORIGINAL)
        assert table.advance(flow, ORIGINAL, request, now)
    assert flow.packets == [3, 2]
    # Another identifier is another flow, never created: its reply is not ours.
    assert table.lookup(echo(responder, requester, 4243, reply=True), 3.0) is None
    # A request from the responder is not a packet of this flow, nor a reply from the requester.
    assert not table.advance(flow, REPLY, echo(responder, requester, 4242), 3.0)
    assert not table.advance(flow, ORIGINAL, echo(requester, responder, 4242, reply=True), 3.0)
    assert table.lookup(reply, 2.0 + DEFAULTS.icmp) is None


def test_echo_identifier_zero_both_ways() -> None:
    """With identifier 0, "A pings B" and "B pings A" have the same two keys: a request that
    matches a flow's reply key is a new ping the other way, not a packet of that flow."""
    table = FlowTable()
    a_to_b = table.create(echo(CLIENT, SERVER, 0), 0.0, generation=1)
    assert table.lookup(echo(SERVER, CLIENT, 0), 1.0) is None
    b_to_a = table.create(echo(SERVER, CLIENT, 0), 1.0, generation=1)
    assert len(table) == 1
    assert table.lookup(echo(CLIENT, SERVER, 0, reply=True), 1.0) == (b_to_a, REPLY)
    assert table.advance(a_to_b, ORIGINAL, echo(CLIENT, SERVER, 0), 1.0) is False  # replaced


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(echo(SERVER, CLIENT, 1, reply=True), id="echo-reply"),
        pytest.param(echo(SERVER6, CLIENT6, 1, reply=True), id="echo6-reply"),
        pytest.param(icmp_error(ROUTER, CLIENT, quote(c(TCP_SYN))), id="icmp-error"),
        pytest.param(icmp_error(ROUTER6, CLIENT6, None, icmp_type=2), id="icmpv6-error"),
        pytest.param(
            PacketInfo(6, CLIENT6, SERVER6, 58, icmp_type=135, icmp_code=0), id="neighbor-sol"
        ),
        pytest.param(PacketInfo(4, CLIENT, SERVER, 6, fragment=True), id="fragment"),
    ],
)
def test_create_refuses_untrackable_packets(packet: PacketInfo) -> None:
    table = FlowTable()
    with pytest.raises(ValueError):
        table.create(packet, 0.0, generation=1)
    assert len(table) == 0


def test_generic_and_sctp() -> None:
    table = FlowTable()
    sctp = table.create(PacketInfo(4, CLIENT, SERVER, 132, 5000, 38412), 0.0, generation=1)
    gre = table.create(PacketInfo(4, CLIENT, SERVER, 47), 0.0, generation=1)
    assert sctp.state is gre.state is FlowState.GENERIC
    assert sctp.expires == gre.expires == DEFAULTS.generic
    back = PacketInfo(4, SERVER, CLIENT, 132, 38412, 5000)
    assert table.lookup(back, 1.0) == (sctp, REPLY)
    assert table.advance(sctp, REPLY, back, 1.0)
    assert table.lookup(PacketInfo(4, SERVER, CLIENT, 132, 38412, 5001), 1.0) is None
    assert table.lookup(PacketInfo(4, SERVER, CLIENT, 47), 1.0) == (gre, REPLY)


# never-created flows


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(s(SYNACK), id="tcp-syn-ack"),
        pytest.param(s(DATA), id="tcp-data"),
        pytest.param(tcp(SERVER, SPORT, CLIENT, CPORT + 1, SYNACK), id="tcp-other-port"),
        pytest.param(udp(SERVER, 53, CLIENT, 53000), id="udp"),
        pytest.param(echo(SERVER, CLIENT, 1, reply=True), id="echo-reply"),
        pytest.param(echo(SERVER6, CLIENT6, 1, reply=True), id="echo6-reply"),
        pytest.param(PacketInfo(4, SERVER, CLIENT, 17, fragment=True), id="fragment"),
    ],
)
def test_reply_to_flow_never_created_is_not_found(packet: PacketInfo) -> None:
    table = FlowTable()
    table.create(udp(CLIENT, 53001, SERVER, 53), 0.0, generation=1)
    table.create(echo(CLIENT, SERVER, 2), 0.0, generation=1)
    assert table.lookup(packet, 0.0) is None


# ICMP errors


def _related_table() -> tuple[FlowTable, Flow, Flow]:
    table = FlowTable()
    v4 = play(table, HANDSHAKE)
    v6 = table.create(udp(CLIENT6, 5353, SERVER6, 53), 0.0, generation=1)
    return table, v4, v6


@pytest.mark.parametrize(
    ("error", "which"),
    [
        pytest.param(icmp_error(ROUTER, CLIENT, quote(c(TCP_SYN))), "v4", id="to-originator"),
        pytest.param(
            icmp_error(ROUTER, SERVER, quote(s(DATA)), icmp_type=11), "v4", id="to-responder"
        ),
        pytest.param(icmp_error(SERVER, CLIENT, quote(c(DATA))), "v4", id="from-destination"),
        pytest.param(
            icmp_error(ROUTER6, CLIENT6, quote(udp(CLIENT6, 5353, SERVER6, 53)), icmp_type=2),
            "v6",
            id="packet-too-big",
        ),
        pytest.param(
            icmp_error(ROUTER, SERVER, quote(c(DATA))), None, id="not-addressed-to-quoted-source"
        ),
        pytest.param(
            icmp_error(ROUTER, CLIENT, quote(tcp(CLIENT, CPORT, SERVER, 443, TCP_SYN))),
            None,
            id="untracked-flow",
        ),
        pytest.param(icmp_error(ROUTER, CLIENT, None), None, id="no-quote"),
        pytest.param(
            icmp_error(ROUTER, CLIENT, PacketInfo(4, CLIENT, SERVER, 6, fragment=True)),
            None,
            id="quote-of-a-fragment",
        ),
        pytest.param(
            icmp_error(ROUTER, CLIENT, icmp_error(CLIENT, ROUTER, quote(c(TCP_SYN)))),
            None,
            id="error-about-error",
        ),
        pytest.param(echo(ROUTER, CLIENT, 1), None, id="not-an-error"),
    ],
)
def test_related(error: PacketInfo, which: str | None) -> None:
    table, v4, v6 = _related_table()
    expected = {"v4": v4, "v6": v6, None: None}[which]
    assert table.related(error, 1.0) is expected
    # An error is never a flow's own packet.
    assert table.lookup(error, 1.0) is None


def test_related_ignores_non_errors() -> None:
    table, _, _ = _related_table()
    assert table.related(c(TCP_ACK), 1.0) is None


def test_related_to_expired_flow() -> None:
    table, _, v6 = _related_table()
    error = icmp_error(ROUTER6, CLIENT6, quote(udp(CLIENT6, 5353, SERVER6, 53)))
    assert table.related(error, v6.expires) is None
    assert len(table) == 1


# expiry and eviction


def test_expire_removes_only_expired_flows_within_budget() -> None:
    table = FlowTable()
    for port in range(10):
        table.create(udp(CLIENT, 1000 + port, SERVER, 53), 0.0, generation=1)  # 30 s
    tcp_flow = table.create(c(TCP_SYN), 0.0, generation=1)  # 120 s
    late = table.create(udp(CLIENT, 999, SERVER, 53), 5.0, generation=1)  # until 35 s
    assert table.expire(29.9) == 0
    assert table.expire(30.0, budget=3) == 3
    assert table.expire(30.0) == 7
    assert table.expire(30.0) == 0
    assert set(table) == {tcp_flow, late}
    assert table.expire(1000.0) == 2
    assert len(table) == 0
    assert table.expirations == 12


def test_refresh_keeps_a_flow_alive() -> None:
    table = FlowTable()
    query = udp(CLIENT, 1000, SERVER, 53)
    flow = table.create(query, 0.0, generation=1)
    table.create(udp(CLIENT, 1001, SERVER, 53), 0.0, generation=1)
    assert table.advance(flow, ORIGINAL, query, 20.0)
    assert table.expire(30.0) == 1
    assert list(table) == [flow]
    assert table.lookup(query, 49.9) == (flow, ORIGINAL)
    assert table.lookup(query, 50.0) is None


def _udp_flow(table: FlowTable, port: int, now: float, replied: bool) -> Flow:
    flow = table.create(udp(CLIENT, port, SERVER, 53), now, generation=1)
    if replied:
        assert table.advance(flow, REPLY, udp(SERVER, 53, CLIENT, port), now)
    return flow


def test_eviction_prefers_least_recently_used_unassured_flow() -> None:
    table = FlowTable(max_flows=4)
    oldest_assured = _udp_flow(table, 1, 0.0, replied=True)
    old_unassured = _udp_flow(table, 2, 1.0, replied=False)
    new_unassured = _udp_flow(table, 3, 2.0, replied=False)
    assured = _udp_flow(table, 4, 3.0, replied=True)
    table.create(udp(CLIENT, 5, SERVER, 53), 4.0, generation=1)
    assert set(table) >= {oldest_assured, new_unassured, assured}
    assert old_unassured not in set(table)
    assert table.evictions == 1
    # Using a flow makes it the most recently used one.
    assert table.advance(new_unassured, ORIGINAL, udp(CLIENT, 3, SERVER, 53), 5.0)
    table.create(udp(CLIENT, 6, SERVER, 53), 6.0, generation=1)
    assert new_unassured in set(table)
    assert len(table) == 4
    assert table.evictions == 2


def test_eviction_falls_back_to_least_recently_used_flow() -> None:
    table = FlowTable(max_flows=3)
    flows = [_udp_flow(table, port, float(port), replied=True) for port in (1, 2, 3)]
    assert table.advance(flows[0], ORIGINAL, udp(CLIENT, 1, SERVER, 53), 10.0)
    table.create(udp(CLIENT, 4, SERVER, 53), 11.0, generation=1)
    assert flows[1] not in set(table)
    assert {flows[0], flows[2]} <= set(table)
    assert table.evictions == 1


def test_full_table_drops_expired_flows_before_evicting() -> None:
    table = FlowTable(max_flows=2)
    expiring = _udp_flow(table, 1, 0.0, replied=False)
    kept = table.create(c(TCP_SYN), 0.0, generation=1)
    table.create(udp(CLIENT, 2, SERVER, 53), 31.0, generation=1)
    assert expiring not in set(table) and kept in set(table)
    assert (table.evictions, table.expirations) == (0, 1)


def test_flood_of_new_flows_never_exceeds_max_flows() -> None:
    table = FlowTable(max_flows=64)
    established = play(table, HANDSHAKE)
    for n in range(2000):
        table.create(tcp(ip("10.1.0.1"), 1024 + n, SERVER, 80, TCP_SYN), n / 1000, 1)
        assert len(table) <= 64
    assert table.evictions == 2000 + 1 - 64
    # The SYN flood evicted unassured flows only.
    assert established in set(table)


def test_iteration_is_a_snapshot_and_clear_forgets_everything() -> None:
    table = FlowTable()
    for port in range(5):
        table.create(udp(CLIENT, port, SERVER, 53), 0.0, generation=1)
    for flow in table:
        table.remove(flow)
    assert len(table) == 0
    flow = table.create(c(TCP_SYN), 0.0, generation=1)
    table.clear()
    assert len(table) == 0 and list(table) == []
    assert table.lookup(c(TCP_SYN), 0.0) is None
    assert not table.advance(flow, ORIGINAL, c(TCP_SYN), 0.0)


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError):
        FlowTimeouts(tcp_close=0)
    with pytest.raises(ValueError):
        FlowTable(max_flows=0)
    table = FlowTable(max_flows=10, timeouts=FlowTimeouts(udp=5))
    assert (table.max_flows, table.timeouts) == (10, FlowTimeouts(udp=5))
    assert table.create(udp(CLIENT, 1, SERVER, 53), 0.0, generation=1).expires == 5.0


# property test

ADDRESSES4 = [ip("10.9.0.1"), ip("10.9.0.2")]
ADDRESSES6 = [ip("fd09::1"), ip("fd09::2")]
PORTS = [1, 2]
ECHO_REPLIES = (0, 129)
TCP_FLAGS = [TCP_SYN, SYNACK, TCP_ACK, DATA, FINACK, TCP_RST, RSTACK, 0, TCP_FIN]


@st.composite
def packets(draw: st.DrawFn) -> PacketInfo:
    """Packets over a tiny address and port space, so that flows collide and get reused."""
    kind = draw(st.sampled_from(["tcp", "udp", "echo", "echo6", "gre"]))
    addresses = ADDRESSES6 if kind == "echo6" else ADDRESSES4
    src = draw(st.sampled_from(addresses))
    dst = draw(st.sampled_from(addresses))
    if kind == "tcp":
        sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
        return tcp(src, sport, dst, dport, draw(st.sampled_from(TCP_FLAGS)))
    if kind == "udp":
        return udp(src, draw(st.sampled_from(PORTS)), dst, draw(st.sampled_from(PORTS)))
    if kind == "gre":
        return PacketInfo(4, src, dst, 47, length=50)
    return echo(src, dst, draw(st.sampled_from([0, 1])), reply=draw(st.booleans()))


def probe(key: FlowKey, original: bool) -> PacketInfo:
    """A packet whose own key is ``key`` and that lookup() cannot mistake for a new connection."""
    protocol, src, src_port, dst, dst_port = key
    if protocol == 6:
        return tcp(src, src_port, dst, dst_port, TCP_ACK)
    if protocol == 17:
        return udp(src, src_port, dst, dst_port)
    if protocol in (1, 58):
        return echo(src, dst, src_port if original else dst_port, reply=not original)
    return PacketInfo(_family(src), src, dst, protocol)


class FlowTableMachine(RuleBasedStateMachine):
    """Random traffic through a decision-like loop: lookup → advance, or create if allowed."""

    MAX_FLOWS = 6

    def __init__(self) -> None:
        super().__init__()
        self.table = FlowTable(max_flows=self.MAX_FLOWS)
        self.now = 0.0

    @rule(dt=st.sampled_from([0.0, 0.5, 5.0, 29.0, 31.0, 61.0, 121.0, 301.0, 601.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(packet=packets(), allowed=st.booleans())
    def packet(self, packet: PacketInfo, allowed: bool) -> None:
        hit = self.table.lookup(packet, self.now)
        if hit is not None:
            flow, direction = hit
            assert flow.expires > self.now
            assert (flow.key if direction is ORIGINAL else flow.reply_key) == flow_key(packet)
            self.table.advance(flow, direction, packet, self.now)
        elif allowed and packet.icmp_type not in ECHO_REPLIES:  # replies never create flows
            flow = self.table.create(packet, self.now, generation=0)
            assert self.table.lookup(probe(flow.key, True), self.now) == (flow, ORIGINAL)

    @rule(budget=st.integers(0, 4))
    def expire(self, budget: int) -> None:
        before = len(self.table)
        removed = self.table.expire(self.now, budget)
        assert 0 <= removed <= budget
        assert len(self.table) == before - removed

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        flows = list(self.table)
        if flows:
            self.table.remove(data.draw(st.sampled_from(flows)))

    @invariant()
    def bounded(self) -> None:
        assert len(self.table) <= self.MAX_FLOWS

    @invariant()
    def flows_are_reachable_by_both_keys(self) -> None:
        flows = list(self.table)
        assert len(flows) == len(self.table) == len({id(f) for f in flows})
        keys = [k for f in flows for k in {f.key, f.reply_key}]
        assert len(keys) == len(set(keys)), "two flows share a key"
        for flow in flows:
            assert flow.reply_key == reverse_key(flow.key)
            if flow.expires > self.now:
                assert self.table.lookup(probe(flow.key, True), self.now) == (flow, ORIGINAL)
                if flow.reply_key != flow.key:
                    reply = self.table.lookup(probe(flow.reply_key, False), self.now)
                    assert reply == (flow, REPLY)
            else:
                # Never returned once expired (and removed when met).
                assert self.table.lookup(probe(flow.key, True), self.now) is None
                assert flow not in set(self.table)


FlowTableMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFlowTableProperties = FlowTableMachine.TestCase
