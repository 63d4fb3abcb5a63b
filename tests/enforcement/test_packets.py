"""Tests for enforcement/packets.py: real packet bytes built with scapy, cut and corrupted."""

from __future__ import annotations

import dataclasses
import re
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import (
    ICMP,
    IP,
    TCP,
    UDP,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRedirectedHdr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPOption_RR,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
    Raw,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.sctp import SCTP, SCTPChunkInit

from enforcement.packets import (
    MAX_EXTENSION_HEADERS,
    ND_HOP_LIMIT,
    CorruptPacket,
    MalformedPacket,
    PacketInfo,
    TruncatedPacket,
    format_packet,
    parse_packet,
)

A4, B4, R4 = "10.244.1.2", "10.244.1.3", "10.0.0.1"
A6, B6, R6 = "fd00::1", "fd00::2", "fd00::fe"


def packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def v4(src: str = A4, dst: str = B4, **fields: Any) -> Any:
    return IP(src=src, dst=dst, **fields)


def v6(src: str = A6, dst: str = B6, **fields: Any) -> Any:
    return IPv6(src=src, dst=dst, **fields)


def info(src: str = A4, dst: str = B4, **fields: Any) -> PacketInfo:
    """The expected PacketInfo; ``length`` is filled in by the test from the packet."""
    family = 6 if ":" in src else 4
    return PacketInfo(family=family, src=packed(src), dst=packed(dst), **fields)


def info6(src: str = A6, dst: str = B6, **fields: Any) -> PacketInfo:
    return info(src, dst, **fields)


# --- Raw transport headers scapy has no layer for ---

UDPLITE = struct.pack("!HHHH", 4000, 5000, 8, 0)  # RFC 3828: ports, checksum coverage, checksum
DCCP = struct.pack("!HHBBHB3s", 4001, 5001, 3, 0, 0, 0, b"\x00\x00\x01")  # RFC 4340 5.1, X=0

# --- Offending packets that ICMP errors quote ---

UDP_QUERY = bytes(v4(B4, "8.8.8.8") / UDP(sport=40000, dport=53) / Raw(b"q" * 30))
TCP_SEGMENT = bytes(v4(B4, "1.1.1.1") / TCP(sport=40001, dport=443, flags="PA") / Raw(b"d" * 40))
TCP6_SEGMENT = bytes(
    v6(B6, "2001:db8::9") / TCP(sport=40002, dport=443, flags="A") / Raw(b"d" * 60)
)
UDP6_WITH_EXTENSIONS = bytes(
    v6(B6, "2001:db8::53") / IPv6ExtHdrDestOpt() / UDP(sport=40003, dport=53) / Raw(b"q" * 20)
)
PING = bytes(v4(B4, "9.9.9.9") / ICMP(type=8, id=4242, seq=1) / Raw(b"p" * 56))
PING_UNREACHABLE = bytes(v4("9.9.9.9", B4) / ICMP(type=3, code=1) / Raw(PING[:28]))


def quote(packet: bytes, length: int) -> Raw:
    return Raw(packet[:length])


# (id, packet, expected). The expected length is len(packet) and is filled in by the test.
PARSE_CASES: list[tuple[str, bytes, PacketInfo]] = [
    (
        "tcp4-syn",
        bytes(v4() / TCP(sport=34567, dport=80, flags="S")),
        info(protocol=6, src_port=34567, dst_port=80, tcp_flags=0x02),
    ),
    (
        "tcp6-synack",
        bytes(v6() / TCP(sport=80, dport=34567, flags="SA")),
        info6(protocol=6, src_port=80, dst_port=34567, tcp_flags=0x12),
    ),
    (
        "tcp4-options",
        bytes(
            v4()
            / TCP(
                sport=1,
                dport=2,
                flags="S",
                options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)],
            )
        ),
        info(protocol=6, src_port=1, dst_port=2, tcp_flags=0x02),
    ),
    (
        "tcp4-ip-options",
        bytes(v4(options=[IPOption_RR()]) / TCP(sport=3, dport=4, flags="A")),
        info(protocol=6, src_port=3, dst_port=4, tcp_flags=0x10),
    ),
    (
        "udp4",
        bytes(v4() / UDP(sport=5353, dport=53) / Raw(b"x" * 12)),
        info(protocol=17, src_port=5353, dst_port=53),
    ),
    (
        "udp6",
        bytes(v6() / UDP(sport=546, dport=547)),
        info6(protocol=17, src_port=546, dst_port=547),
    ),
    (
        "sctp4",
        bytes(v4() / SCTP(sport=2905, dport=2906) / SCTPChunkInit()),
        info(protocol=132, src_port=2905, dst_port=2906),
    ),
    (
        "sctp6",
        bytes(v6() / SCTP(sport=36412, dport=36412) / SCTPChunkInit()),
        info6(protocol=132, src_port=36412, dst_port=36412),
    ),
    (
        "udplite4",
        bytes(v4(proto=136) / Raw(UDPLITE)),
        info(protocol=136, src_port=4000, dst_port=5000),
    ),
    (
        "dccp6",
        bytes(v6(nh=33) / Raw(DCCP)),
        info6(protocol=33, src_port=4001, dst_port=5001),
    ),
    (
        "gre4-no-ports",
        bytes(v4(proto=47) / Raw(b"\x00\x00\x08\x00")),
        info(protocol=47),
    ),
    (
        "ipv4-trailing-bytes-ignored",
        bytes(v4() / UDP(sport=7, dport=8)) + b"\xff" * 6,
        info(protocol=17, src_port=7, dst_port=8),
    ),
    (
        "ipv4-total-length-beyond-capture",
        bytes(v4(len=1500) / TCP(sport=9, dport=10, flags="PA")),
        info(protocol=6, src_port=9, dst_port=10, tcp_flags=0x18),
    ),
    (
        "ipv6-payload-length-beyond-capture",
        bytes(v6(plen=1400) / UDP(sport=11, dport=12)),
        info6(protocol=17, src_port=11, dst_port=12),
    ),
    (
        "ipv6-extension-chain",
        bytes(
            v6()
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting(addresses=["fd00::9"])
            / IPv6ExtHdrFragment(offset=0, m=1, id=7)
            / IPv6ExtHdrDestOpt()
            / UDP(sport=13, dport=14)
        ),
        info6(protocol=17, src_port=13, dst_port=14),
    ),
    (
        "ipv6-segment-routing",
        bytes(v6() / IPv6ExtHdrSegmentRouting(addresses=["fd00::9"]) / TCP(sport=15, dport=16)),
        info6(protocol=6, src_port=15, dst_port=16, tcp_flags=0x02),
    ),
    (
        "ipv6-ah",
        bytes(
            v6()
            / IPv6ExtHdrHopByHop()
            / AH(nh=6, payloadlen=1, spi=1, seq=1)
            / TCP(sport=17, dport=18)
        ),
        info6(protocol=6, src_port=17, dst_port=18, tcp_flags=0x02),
    ),
    (
        "ipv6-esp-stops-walk",
        bytes(v6() / IPv6ExtHdrDestOpt() / ESP(spi=1, seq=1, data=b"e" * 16)),
        info6(protocol=50),
    ),
    (
        "ipv6-no-next-header",
        bytes(v6(nh=59) / Raw(b"")),
        info6(protocol=59),
    ),
    (
        "ipv6-atomic-fragment",
        bytes(v6() / IPv6ExtHdrFragment(offset=0, m=0) / UDP(sport=19, dport=20)),
        info6(protocol=17, src_port=19, dst_port=20),
    ),
    (
        "ipv4-first-fragment",
        bytes(v4(flags="MF", frag=0) / UDP(sport=21, dport=22) / Raw(b"f" * 64)),
        info(protocol=17, src_port=21, dst_port=22),
    ),
    (
        "ipv4-non-first-fragment",
        bytes(v4(flags="MF", frag=185, proto=17) / Raw(b"f" * 64)),
        info(protocol=17, fragment=True),
    ),
    (
        "ipv4-last-fragment",
        bytes(v4(frag=370, proto=6) / Raw(b"f" * 3)),
        info(protocol=6, fragment=True),
    ),
    (
        "ipv6-non-first-fragment",
        bytes(v6() / IPv6ExtHdrFragment(nh=6, offset=185, m=1) / Raw(b"f" * 64)),
        info6(protocol=6, fragment=True),
    ),
    (
        "ipv6-non-first-fragment-after-hop-by-hop",
        bytes(v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(nh=17, offset=1) / Raw(b"f")),
        info6(protocol=17, fragment=True),
    ),
    (
        "icmp-echo-request",
        bytes(v4() / ICMP(type=8, id=7, seq=1) / Raw(b"p" * 56)),
        info(protocol=1, icmp_type=8, icmp_code=0, icmp_id=7),
    ),
    (
        "icmp-echo-reply",
        bytes(v4(B4, A4) / ICMP(type=0, id=65535, seq=9)),
        info(B4, A4, protocol=1, icmp_type=0, icmp_code=0, icmp_id=65535),
    ),
    (
        "icmpv6-echo-request",
        bytes(v6() / ICMPv6EchoRequest(id=8, seq=1)),
        info6(protocol=58, icmp_type=128, icmp_code=0, icmp_id=8),
    ),
    (
        "icmpv6-echo-reply",
        bytes(v6(B6, A6) / ICMPv6EchoReply(id=9, seq=1)),
        info6(B6, A6, protocol=58, icmp_type=129, icmp_code=0, icmp_id=9),
    ),
    (
        "icmpv6-neighbor-solicitation",
        bytes(v6(dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=B6)),
        info6(
            dst="ff02::1:ff00:2",
            protocol=58,
            icmp_type=135,
            icmp_code=0,
            neighbor_discovery=True,
        ),
    ),
    (
        "icmp-unreachable-quoting-udp",
        bytes(v4(R4, B4) / ICMP(type=3, code=3) / quote(UDP_QUERY, 28)),
        info(
            R4,
            B4,
            protocol=1,
            icmp_type=3,
            icmp_code=3,
            embedded=info(B4, "8.8.8.8", protocol=17, src_port=40000, dst_port=53, length=28),
        ),
    ),
    (
        "icmp-time-exceeded-quoting-tcp-8-bytes",
        bytes(v4(R4, B4) / ICMP(type=11, code=0) / quote(TCP_SEGMENT, 28)),
        info(
            R4,
            B4,
            protocol=1,
            icmp_type=11,
            icmp_code=0,
            # Only ports and sequence number are quoted: the flags are not there.
            embedded=info(B4, "1.1.1.1", protocol=6, src_port=40001, dst_port=443, length=28),
        ),
    ),
    (
        "icmp-unreachable-quoting-whole-tcp",
        bytes(v4(R4, B4) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(TCP_SEGMENT)),
        info(
            R4,
            B4,
            protocol=1,
            icmp_type=3,
            icmp_code=4,
            embedded=info(
                B4,
                "1.1.1.1",
                protocol=6,
                src_port=40001,
                dst_port=443,
                tcp_flags=0x18,
                length=len(TCP_SEGMENT),
            ),
        ),
    ),
    (
        "icmp-parameter-problem-quoting-udp",
        bytes(v4(R4, B4) / ICMP(type=12, code=0, ptr=8) / quote(UDP_QUERY, 28)),
        info(
            R4,
            B4,
            protocol=1,
            icmp_type=12,
            icmp_code=0,
            embedded=info(B4, "8.8.8.8", protocol=17, src_port=40000, dst_port=53, length=28),
        ),
    ),
    (
        "icmp-unreachable-quoting-echo",
        PING_UNREACHABLE,
        info(
            "9.9.9.9",
            B4,
            protocol=1,
            icmp_type=3,
            icmp_code=1,
            embedded=info(
                B4, "9.9.9.9", protocol=1, icmp_type=8, icmp_code=0, icmp_id=4242, length=28
            ),
        ),
    ),
    (
        "icmp-error-about-icmp-error-not-followed",
        bytes(v4(R4, "9.9.9.9") / ICMP(type=11, code=0) / quote(PING_UNREACHABLE, 28)),
        info(
            R4,
            "9.9.9.9",
            protocol=1,
            icmp_type=11,
            icmp_code=0,
            # RFC 1122 3.2.2: the inner error is recorded, its own quote is not parsed.
            embedded=info("9.9.9.9", B4, protocol=1, icmp_type=3, icmp_code=1, length=28),
        ),
    ),
    (
        "icmp-unreachable-quote-too-short",
        bytes(v4(R4, B4) / ICMP(type=3, code=1) / quote(UDP_QUERY, 16)),
        info(R4, B4, protocol=1, icmp_type=3, icmp_code=1, embedded=None),
    ),
    (
        "icmp-unreachable-quote-without-ports",
        bytes(v4(R4, B4) / ICMP(type=3, code=1) / quote(UDP_QUERY, 22)),
        info(R4, B4, protocol=1, icmp_type=3, icmp_code=1, embedded=None),
    ),
    (
        "icmp-unreachable-quoting-ipv6",
        bytes(v4(R4, B4) / ICMP(type=3, code=1) / quote(TCP6_SEGMENT, 48)),
        info(R4, B4, protocol=1, icmp_type=3, icmp_code=1, embedded=None),
    ),
    (
        "icmp-unreachable-empty-quote",
        bytes(v4(R4, B4) / ICMP(type=3, code=1)),
        info(R4, B4, protocol=1, icmp_type=3, icmp_code=1, embedded=None),
    ),
    (
        "icmpv6-packet-too-big-quoting-tcp",
        bytes(v6(R6, B6) / ICMPv6PacketTooBig(mtu=1280) / Raw(TCP6_SEGMENT)),
        info6(
            R6,
            B6,
            protocol=58,
            icmp_type=2,
            icmp_code=0,
            embedded=info6(
                B6,
                "2001:db8::9",
                protocol=6,
                src_port=40002,
                dst_port=443,
                tcp_flags=0x10,
                length=len(TCP6_SEGMENT),
            ),
        ),
    ),
    (
        "icmpv6-time-exceeded-quoting-udp-with-extension",
        bytes(v6(R6, B6) / ICMPv6TimeExceeded(code=0) / Raw(UDP6_WITH_EXTENSIONS)),
        info6(
            R6,
            B6,
            protocol=58,
            icmp_type=3,
            icmp_code=0,
            embedded=info6(
                B6,
                "2001:db8::53",
                protocol=17,
                src_port=40003,
                dst_port=53,
                length=len(UDP6_WITH_EXTENSIONS),
            ),
        ),
    ),
    (
        "icmpv6-unreachable-quote-cut-after-8-bytes",
        bytes(v6(R6, B6) / ICMPv6DestUnreach(code=4) / quote(TCP6_SEGMENT, 48)),
        info6(
            R6,
            B6,
            protocol=58,
            icmp_type=1,
            icmp_code=4,
            embedded=info6(B6, "2001:db8::9", protocol=6, src_port=40002, dst_port=443, length=48),
        ),
    ),
    (
        # Fewer than the 8 transport bytes RFC 792 / RFC 4443 promise: not a quote we trust.
        "icmpv6-unreachable-quote-cut-after-ports",
        bytes(v6(R6, B6) / ICMPv6DestUnreach(code=4) / quote(TCP6_SEGMENT, 44)),
        info6(R6, B6, protocol=58, icmp_type=1, icmp_code=4, embedded=None),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [pytest.param(data, expected, id=name) for name, data, expected in PARSE_CASES],
)
def test_parse(data: bytes, expected: PacketInfo) -> None:
    assert parse_packet(data) == dataclasses.replace(expected, length=len(data))


@pytest.mark.parametrize(
    "flags", ["S", "SA", "A", "PA", "FA", "F", "R", "RA", "SEC", "U", "FSRPAUEC", ""]
)
def test_tcp_flags(flags: str) -> None:
    segment = TCP(sport=1, dport=2, flags=flags)
    assert parse_packet(bytes(v4() / segment)).tcp_flags == int(segment.flags)
    assert parse_packet(bytes(v6() / segment)).tcp_flags == int(segment.flags)


# --- Truncation: every prefix shorter than the needed headers is TruncatedPacket ---

# (id, packet, bytes needed to parse it). Longer prefixes must parse.
NEEDED: list[tuple[str, bytes, int]] = [
    ("tcp4", bytes(v4() / TCP(sport=1, dport=2) / Raw(b"x" * 10)), 40),
    ("tcp4-options", bytes(v4() / TCP(options=[("MSS", 1460), ("WScale", 7)])), 48),
    ("tcp4-ip-options", bytes(v4(options=[IPOption_RR()]) / TCP()), 44),
    ("udp4", bytes(v4() / UDP() / Raw(b"x" * 10)), 28),
    ("sctp4", bytes(v4() / SCTP() / SCTPChunkInit()), 32),
    ("udplite4", bytes(v4(proto=136) / Raw(UDPLITE)), 28),
    ("dccp4", bytes(v4(proto=33) / Raw(DCCP)), 32),
    ("icmp4-echo", bytes(v4() / ICMP(id=3) / Raw(b"p" * 8)), 28),
    ("ipv4-first-fragment", bytes(v4(flags="MF") / TCP()), 40),
    ("ipv4-non-first-fragment", bytes(v4(frag=9, proto=6) / Raw(b"f" * 8)), 20),
    ("tcp6", bytes(v6() / TCP()), 60),
    ("udp6", bytes(v6() / UDP() / Raw(b"x" * 4)), 48),
    ("icmpv6-echo", bytes(v6() / ICMPv6EchoRequest()), 48),
    (
        "ipv6-extension-chain",
        bytes(
            v6()
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrRouting(addresses=["fd00::9"])
            / IPv6ExtHdrFragment(m=1)
            / AH(nh=60, payloadlen=1, spi=1, seq=1)
            / IPv6ExtHdrDestOpt()
            / TCP()
        ),
        40 + 8 + 24 + 8 + 12 + 8 + 20,
    ),
    (
        "ipv6-non-first-fragment",
        bytes(v6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(offset=5) / Raw(b"f" * 8)),
        56,
    ),
    ("icmp4-error", bytes(v4(R4) / ICMP(type=3) / quote(UDP_QUERY, 28)), 28),
    ("icmpv6-error", bytes(v6(R6) / ICMPv6PacketTooBig() / Raw(TCP6_SEGMENT)), 48),
]


@pytest.mark.parametrize(
    ("data", "cut"),
    [
        pytest.param(data, cut, id=f"{name}-{cut}")
        for name, data, needed in NEEDED
        for cut in range(needed)
    ],
)
def test_truncated_prefix(data: bytes, cut: int) -> None:
    with pytest.raises(TruncatedPacket):
        parse_packet(data[:cut])


@pytest.mark.parametrize(
    ("data", "needed"), [pytest.param(data, needed, id=name) for name, data, needed in NEEDED]
)
def test_long_enough_prefix_parses(data: bytes, needed: int) -> None:
    whole = parse_packet(data)
    for cut in range(needed, len(data) + 1):
        prefix = parse_packet(data[:cut])
        assert prefix.length == cut
        assert (prefix.src_port, prefix.dst_port, prefix.fragment) == (
            whole.src_port,
            whole.dst_port,
            whole.fragment,
        )


def test_icmp_error_quote_cut_anywhere() -> None:
    """A quote too short to name the flow leaves ``embedded`` None; it never fails the packet."""
    data = bytes(v4(R4, B4) / ICMP(type=3, code=3) / Raw(UDP_QUERY))
    for cut in range(28, len(data) + 1):
        embedded = parse_packet(data[:cut]).embedded
        if cut < 28 + 20 + 8:
            assert embedded is None, cut
        else:
            assert embedded is not None
            assert (embedded.src_port, embedded.dst_port) == (40000, 53), cut


def test_datagram_end_bounds_transport() -> None:
    """Bytes past the IPv4 total length are not the datagram's, even if they were captured."""
    data = bytearray(bytes(v4() / TCP()))
    struct.pack_into("!H", data, 2, 30)  # the datagram ends 10 bytes into the TCP header
    with pytest.raises(TruncatedPacket, match="TCP header needs 20 bytes"):
        parse_packet(bytes(data))


# --- Corrupt packets ---


def patched(packet: bytes, offset: int, value: int) -> bytes:
    data = bytearray(packet)
    data[offset] = value
    return bytes(data)


TCP4 = bytes(v4() / TCP(sport=1, dport=2))
TCP6 = bytes(v6() / TCP(sport=1, dport=2))


def dest_opts_chain(count: int) -> bytes:
    """An IPv6 packet with ``count`` Destination Options headers each pointing at the next."""
    layers = v6()
    for _ in range(count):
        layers = layers / IPv6ExtHdrDestOpt()
    return bytes(layers / UDP())


def mixed_chain(count: int) -> bytes:
    """Hop-by-Hop first, then ``count - 1`` headers alternating Routing and Destination Options."""
    layers = v6() / IPv6ExtHdrHopByHop()
    for i in range(count - 1):
        layers = layers / (IPv6ExtHdrRouting() if i % 2 else IPv6ExtHdrDestOpt())
    return bytes(layers / UDP())


CORRUPT_CASES: list[tuple[str, bytes, str, int]] = [
    # (id, packet, message fragment, offset)
    ("version-0", patched(TCP4, 0, 0x05), "IP version 0", 0),
    ("version-5", patched(TCP4, 0, 0x55), "IP version 5", 0),
    ("version-15", patched(TCP6, 0, 0xF0), "IP version 15", 0),
    ("ihl-4", patched(TCP4, 0, 0x44), "IHL 4 < 5", 0),
    ("ihl-0", patched(TCP4, 0, 0x40), "IHL 0 < 5", 0),
    ("total-length-19", patched(patched(TCP4, 2, 0), 3, 19), "total length 19", 0),
    ("total-length-below-ihl", patched(TCP4, 0, 0x4F), "total length 40 < header length 60", 0),
    ("tcp4-data-offset-4", patched(TCP4, 32, 0x40), "TCP data offset 4 < 5", 32),
    ("tcp4-data-offset-0", patched(TCP4, 32, 0x00), "TCP data offset 0 < 5", 32),
    ("tcp6-data-offset-1", patched(TCP6, 52, 0x10), "TCP data offset 1 < 5", 52),
    (
        "tcp4-fragment-offset-1",
        bytes(v4(frag=1, proto=6) / Raw(b"x" * 16)),
        "fragment offset 1 (RFC 1858)",
        6,
    ),
    (
        "ipv6-extension-loop",
        dest_opts_chain(MAX_EXTENSION_HEADERS + 1),
        "more than 8 IPv6 extension headers",
        40 + 8 * MAX_EXTENSION_HEADERS,
    ),
    (
        "ipv6-extension-chain-too-long",
        mixed_chain(MAX_EXTENSION_HEADERS + 1),
        "more than 8 IPv6 extension headers",
        40 + 8 * MAX_EXTENSION_HEADERS,
    ),
    (
        "ipv6-hop-by-hop-not-first",
        bytes(v6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()),
        "Hop-by-Hop Options header not first",
        48,
    ),
]


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [pytest.param(data, msg, offset, id=name) for name, data, msg, offset in CORRUPT_CASES],
)
def test_corrupt(data: bytes, message: str, offset: int) -> None:
    with pytest.raises(CorruptPacket, match=re.escape(message)) as caught:
        parse_packet(data)
    assert caught.value.offset == offset
    assert str(caught.value).endswith(f"at offset {offset}")


def test_longest_allowed_extension_chain() -> None:
    assert parse_packet(dest_opts_chain(MAX_EXTENSION_HEADERS)).protocol == 17
    assert parse_packet(mixed_chain(MAX_EXTENSION_HEADERS)).protocol == 17


def test_errors_are_value_errors() -> None:
    assert issubclass(TruncatedPacket, MalformedPacket)
    assert issubclass(CorruptPacket, MalformedPacket)
    assert issubclass(MalformedPacket, ValueError)
    with pytest.raises(TruncatedPacket, match="empty packet at offset 0"):
        parse_packet(b"")


# --- Neighbour discovery (RFC 4861) ---

LL_A, LL_ROUTER, SOLICITED_B = "fe80::a", "fe80::1", "ff02::1:ff00:2"
MAC = "02:00:00:00:00:0a"


def nd(src: str, dst: str, *layers: Any, hlim: int = ND_HOP_LIMIT) -> bytes:
    """An ND message as a host on the link sends it (hop limit 255 unless said otherwise)."""
    packet = IPv6(src=src, dst=dst, hlim=hlim)
    if isinstance(layers[0], Raw):
        packet.nh = 58  # scapy cannot tell that raw bytes are ICMPv6
    for layer in layers:
        packet = packet / layer
    return bytes(packet)


def cut_icmp(layer: Any, length: int) -> Raw:
    """The first ``length`` bytes of an ICMPv6 message: a truncated one, IP length included."""
    return Raw(bytes(IPv6() / layer)[40 : 40 + length])


VALID_NS = nd(A6, SOLICITED_B, ICMPv6ND_NS(tgt=B6), ICMPv6NDOptSrcLLAddr(lladdr=MAC))

# (id, packet, None for valid ND or a fragment of the problem reported)
ND_CASES: list[tuple[str, bytes, str | None]] = [
    ("rs", nd(LL_A, "ff02::2", ICMPv6ND_RS(), ICMPv6NDOptSrcLLAddr(lladdr=MAC)), None),
    ("rs-from-unspecified", nd("::", "ff02::2", ICMPv6ND_RS()), None),
    (
        "ra-with-prefix-mtu-and-source",
        nd(
            LL_ROUTER,
            "ff02::1",
            ICMPv6ND_RA(),
            ICMPv6NDOptPrefixInfo(prefix="fd00::", prefixlen=64),
            ICMPv6NDOptMTU(mtu=1500),
            ICMPv6NDOptSrcLLAddr(lladdr=MAC),
        ),
        None,
    ),
    ("ns-address-resolution", VALID_NS, None),
    ("ns-duplicate-address-detection", nd("::", SOLICITED_B, ICMPv6ND_NS(tgt=B6)), None),
    ("ns-unreachability-detection", nd(A6, B6, ICMPv6ND_NS(tgt=B6)), None),
    (
        "ns-after-destination-options",
        nd(A6, SOLICITED_B, IPv6ExtHdrDestOpt(), ICMPv6ND_NS(tgt=B6)),
        None,
    ),
    (
        # RFC 4861 4.6: receivers ignore options they do not know. A valid message may carry
        # bytes that way; the hop limit keeps it on one link (see enforcement/decide.py).
        "ns-with-an-unknown-option",
        nd(A6, SOLICITED_B, ICMPv6ND_NS(tgt=B6), ICMPv6NDOptUnknown(type=200, data=b"x" * 14)),
        None,
    ),
    (
        "na-solicited",
        nd(B6, A6, ICMPv6ND_NA(tgt=B6, S=1), ICMPv6NDOptDstLLAddr(lladdr=MAC)),
        None,
    ),
    ("na-unsolicited-to-all-nodes", nd(B6, "ff02::1", ICMPv6ND_NA(tgt=B6, S=0)), None),
    (
        "redirect-to-a-router",
        nd(
            LL_ROUTER,
            A6,
            ICMPv6ND_Redirect(tgt="fe80::9", dst="2001:db8::9"),
            ICMPv6NDOptRedirectedHdr(pkt=IPv6(src=A6, dst="2001:db8::9") / UDP()),
        ),
        None,
    ),
    (
        "redirect-on-link",
        nd(LL_ROUTER, A6, ICMPv6ND_Redirect(tgt="2001:db8::9", dst="2001:db8::9")),
        None,
    ),
    ("ns-hop-limit-254", nd(A6, B6, ICMPv6ND_NS(tgt=B6), hlim=254), "hop limit 254, not 255"),
    ("na-hop-limit-64", nd(B6, A6, ICMPv6ND_NA(tgt=B6), hlim=64), "hop limit 64, not 255"),
    ("ra-hop-limit-1", nd(LL_ROUTER, "ff02::1", ICMPv6ND_RA(), hlim=1), "hop limit 1, not 255"),
    ("ns-code-1", nd(A6, B6, ICMPv6ND_NS(tgt=B6, code=1)), "code 1, not 0 (RFC 4861 7.1.1)"),
    ("rs-code-9", nd(LL_A, "ff02::2", ICMPv6ND_RS(code=9)), "code 9, not 0 (RFC 4861 6.1.1)"),
    ("ns-truncated", nd(A6, B6, cut_icmp(ICMPv6ND_NS(tgt=B6), 20)), "ICMP length 20 < 24"),
    ("na-truncated", nd(B6, A6, cut_icmp(ICMPv6ND_NA(tgt=B6), 8)), "ICMP length 8 < 24"),
    ("ra-truncated", nd(LL_ROUTER, "ff02::1", cut_icmp(ICMPv6ND_RA(), 12)), "ICMP length 12 < 16"),
    (
        "redirect-truncated",
        nd(LL_ROUTER, A6, cut_icmp(ICMPv6ND_Redirect(tgt="fe80::9", dst=B6), 32)),
        "ICMP length 32 < 40",
    ),
    (
        "ns-zero-length-option",
        nd(A6, SOLICITED_B, ICMPv6ND_NS(tgt=B6), Raw(b"\x01\x00" + b"\x00" * 6)),
        "length 0",
    ),
    (
        "ns-option-past-the-message",
        nd(A6, SOLICITED_B, ICMPv6ND_NS(tgt=B6), Raw(b"\x01\x02" + b"\x00" * 6)),
        "runs past the message",
    ),
    (
        "ns-option-cut-short",
        nd(A6, SOLICITED_B, ICMPv6ND_NS(tgt=B6), ICMPv6NDOptSrcLLAddr(lladdr=MAC), Raw(b"\x01")),
        "cut short",
    ),
    (
        "ns-from-unspecified-to-unicast",
        nd("::", B6, ICMPv6ND_NS(tgt=B6)),
        "unspecified source to a non-solicited-node destination",
    ),
    (
        "ns-from-unspecified-with-source-link-layer-option",
        nd("::", SOLICITED_B, ICMPv6ND_NS(tgt=B6), ICMPv6NDOptSrcLLAddr(lladdr=MAC)),
        "source link-layer address option from the unspecified address",
    ),
    (
        "rs-from-unspecified-with-source-link-layer-option",
        nd("::", "ff02::2", ICMPv6ND_RS(), ICMPv6NDOptSrcLLAddr(lladdr=MAC)),
        "source link-layer address option from the unspecified address",
    ),
    ("ns-multicast-target", nd(A6, B6, ICMPv6ND_NS(tgt="ff02::1")), "multicast target"),
    ("na-multicast-target", nd(B6, A6, ICMPv6ND_NA(tgt="ff02::1")), "multicast target"),
    (
        "na-solicited-to-multicast",
        nd(B6, "ff02::1", ICMPv6ND_NA(tgt=B6, S=1)),
        "solicited flag set towards a multicast destination",
    ),
    ("ra-from-a-global-address", nd(B6, "ff02::1", ICMPv6ND_RA()), "not link-local (RFC 4861 6"),
    (
        "redirect-from-a-global-address",
        nd(B6, A6, ICMPv6ND_Redirect(tgt="fe80::9", dst="2001:db8::9")),
        "not link-local (RFC 4861 8.1)",
    ),
    (
        "redirect-multicast-destination",
        nd(LL_ROUTER, A6, ICMPv6ND_Redirect(tgt="fe80::9", dst="ff0e::9")),
        "multicast destination",
    ),
    (
        "redirect-global-target-elsewhere",
        nd(LL_ROUTER, A6, ICMPv6ND_Redirect(tgt=B6, dst="2001:db8::9")),
        "target neither link-local nor the destination",
    ),
    ("multicast-source", nd("ff02::1", B6, ICMPv6ND_NA(tgt=B6)), "multicast source"),
    (
        "ns-in-an-atomic-fragment",
        nd(A6, SOLICITED_B, IPv6ExtHdrFragment(), ICMPv6ND_NS(tgt=B6)),
        "fragmented packet (RFC 6980",
    ),
    (
        "ns-longer-than-the-capture",
        VALID_NS[:-4],
        "past the 68 captured",
    ),
]


@pytest.mark.parametrize(
    ("data", "problem"),
    [pytest.param(data, problem, id=name) for name, data, problem in ND_CASES],
)
def test_neighbor_discovery_validity(data: bytes, problem: str | None) -> None:
    parsed = parse_packet(data)
    assert parsed.protocol == 58 and parsed.icmp_type in range(133, 138)
    if problem is None:
        assert parsed.neighbor_discovery and parsed.nd_problem is None
    else:
        assert not parsed.neighbor_discovery
        assert parsed.nd_problem is not None and problem in parsed.nd_problem


def test_a_jumbogram_is_no_neighbor_discovery() -> None:
    data = bytearray(VALID_NS)
    data[4:6] = b"\x00\x00"  # payload length 0: a jumbogram (RFC 2675)
    parsed = parse_packet(bytes(data))
    assert not parsed.neighbor_discovery
    assert parsed.nd_problem is not None and "jumbogram" in parsed.nd_problem


def test_neighbor_discovery_in_an_icmp_error_quote_is_not_checked_or_trusted() -> None:
    data = bytes(v6(R6, A6) / ICMPv6DestUnreach(code=3) / Raw(VALID_NS[:48]))
    parsed = parse_packet(data)
    assert parsed.embedded is not None and parsed.embedded.icmp_type == 135
    assert not parsed.embedded.neighbor_discovery and parsed.embedded.nd_problem is None
    assert not parsed.neighbor_discovery


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bytes(v6(hlim=255) / ICMPv6EchoRequest(id=1)), id="echo-at-hop-limit-255"),
        pytest.param(bytes(v6(hlim=255) / ICMPv6DestUnreach() / Raw(VALID_NS)), id="error"),
        pytest.param(bytes(v6(hlim=255, nh=58) / Raw(bytes([132, 0]) + bytes(22))), id="type-132"),
        pytest.param(bytes(v6(hlim=255, nh=58) / Raw(bytes([138, 0]) + bytes(22))), id="type-138"),
        pytest.param(bytes(v4(ttl=255, proto=1) / Raw(bytes([135, 0]) + bytes(22))), id="icmpv4"),
    ],
)
def test_only_icmpv6_types_133_to_137_can_be_neighbor_discovery(data: bytes) -> None:
    parsed = parse_packet(data)
    assert not parsed.neighbor_discovery and parsed.nd_problem is None


# --- Properties ---

SEEDS = [data for _, data, _ in PARSE_CASES] + [data for _, data, _, _ in CORRUPT_CASES]


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """A real packet with a few bytes overwritten and maybe cut short: reaches deep branches."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), mutated_packets()))
def test_any_bytes_parse_or_raise_malformed(data: bytes) -> None:
    try:
        parsed = parse_packet(data)
    except MalformedPacket:
        return
    assert parsed.length == len(data)
    assert len(parsed.src) == len(parsed.dst) == (4 if parsed.family == 4 else 16)
    format_packet(parsed)  # must not fail on anything the parser accepts


@settings(max_examples=200, deadline=None)
@given(
    family=st.sampled_from([4, 6]),
    transport=st.sampled_from(["TCP", "UDP"]),
    src=st.integers(0, 2**128 - 1),
    dst=st.integers(0, 2**128 - 1),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    flags=st.integers(0, 255),
    payload=st.binary(max_size=64),
    extension=st.booleans(),
)
def test_agrees_with_scapy(
    family: int,
    transport: str,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    flags: int,
    payload: bytes,
    extension: bool,
) -> None:
    if family == 4:
        network = IP(src=socket.inet_ntop(socket.AF_INET, (src % 2**32).to_bytes(4, "big")))
        network.dst = socket.inet_ntop(socket.AF_INET, (dst % 2**32).to_bytes(4, "big"))
        if extension:
            network.options = [IPOption_RR()]
    else:
        network = IPv6(src=socket.inet_ntop(socket.AF_INET6, src.to_bytes(16, "big")))
        network.dst = socket.inet_ntop(socket.AF_INET6, dst.to_bytes(16, "big"))
        if extension:
            network = network / IPv6ExtHdrDestOpt()
    if transport == "TCP":
        layer = TCP(sport=sport, dport=dport, flags=flags)
    else:
        layer = UDP(sport=sport, dport=dport)
    data = bytes(network / layer / Raw(payload))

    parsed = parse_packet(data)
    scapy_view = (IP if family == 4 else IPv6)(data)
    top = scapy_view[IP] if family == 4 else scapy_view[IPv6]
    segment = scapy_view[TCP] if transport == "TCP" else scapy_view[UDP]
    assert parsed.family == family
    assert parsed.src == packed(top.src)
    assert parsed.dst == packed(top.dst)
    assert parsed.protocol == (6 if transport == "TCP" else 17)
    assert (parsed.src_port, parsed.dst_port) == (segment.sport, segment.dport)
    assert parsed.tcp_flags == (int(segment.flags) if transport == "TCP" else 0)
    assert parsed.length == len(data)
    assert not parsed.fragment and parsed.embedded is None


# --- format_packet ---


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            bytes(v4() / TCP(sport=34567, dport=80, flags="S")),
            "TCP 10.244.1.2:34567 -> 10.244.1.3:80 [S]",
            id="tcp4",
        ),
        pytest.param(
            bytes(v6() / TCP(sport=80, dport=34567, flags="SA")),
            "TCP [fd00::1]:80 -> [fd00::2]:34567 [SA]",
            id="tcp6",
        ),
        pytest.param(
            bytes(v4() / TCP(sport=1, dport=2, flags=0)),
            "TCP 10.244.1.2:1 -> 10.244.1.3:2 [none]",
            id="tcp-no-flags",
        ),
        pytest.param(
            bytes(v6() / UDP(sport=5353, dport=53)),
            "UDP [fd00::1]:5353 -> [fd00::2]:53",
            id="udp6",
        ),
        pytest.param(
            bytes(v4(R4, "10.0.0.2") / ICMP(type=8, id=7)),
            "ICMP 10.0.0.1 -> 10.0.0.2 echo-request id=7",
            id="icmp-echo",
        ),
        pytest.param(
            bytes(v6() / ICMPv6EchoReply(id=9)),
            "ICMPv6 fd00::1 -> fd00::2 echo-reply id=9",
            id="icmpv6-echo",
        ),
        pytest.param(
            bytes(v4(R4, B4) / ICMP(type=3, code=3) / quote(UDP_QUERY, 28)),
            "ICMP 10.0.0.1 -> 10.244.1.3 dest-unreachable code=3"
            " quoting (UDP 10.244.1.3:40000 -> 8.8.8.8:53)",
            id="icmp-error",
        ),
        pytest.param(
            bytes(v6(R6, B6) / ICMPv6PacketTooBig() / Raw(TCP6_SEGMENT)),
            "ICMPv6 fd00::fe -> fd00::2 packet-too-big"
            " quoting (TCP [fd00::2]:40002 -> [2001:db8::9]:443 [A])",
            id="icmpv6-error",
        ),
        pytest.param(
            bytes(v4(frag=100, proto=17) / Raw(b"f" * 8)),
            "UDP 10.244.1.2 -> 10.244.1.3 fragment",
            id="fragment",
        ),
        pytest.param(
            bytes(v4(proto=47) / Raw(b"\x00" * 4)),
            "proto-47 10.244.1.2 -> 10.244.1.3",
            id="unknown-protocol",
        ),
        pytest.param(
            bytes(v6() / ICMPv6ND_NS(tgt=B6)),
            "ICMPv6 fd00::1 -> fd00::2 neighbor-solicitation",
            id="icmpv6-nd",
        ),
        pytest.param(
            bytes(v6(hlim=254) / ICMPv6ND_NS(tgt=B6)),
            "ICMPv6 fd00::1 -> fd00::2 neighbor-solicitation (not neighbour discovery: "
            "hop limit 254, not 255 (RFC 4861 7.1.1))",
            id="icmpv6-nd-typed-but-invalid",
        ),
        pytest.param(
            bytes(v4() / ICMP(type=42, code=1)),
            "ICMP 10.244.1.2 -> 10.244.1.3 type=42 code=1",
            id="icmp-unknown-type",
        ),
    ],
)
def test_format_packet(data: bytes, expected: str) -> None:
    assert format_packet(parse_packet(data)) == expected
