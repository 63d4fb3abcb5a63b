"""Fuzzing the packet path: ``parse_packet`` and ``QueueWorker.decide_payload`` on hostile bytes.

The inputs are real packets built with scapy (IPv4 and IPv6, options and extension headers,
fragments, ICMP errors quoting packets, neighbour discovery) and then mutated: bytes overwritten,
cut, inserted or deleted, length and hop-limit fields set to edge values, two packets spliced,
plus plain random bytes. They are fed in short sequences, with random packet marks, through one
worker, so the flow table's state is fuzzed too. For every packet:

- no exception escapes the decision (the worker's error counter stays 0: an exception there
  would have been swallowed into the default verdict);
- a verdict is always returned, one of the preallocated ones;
- bytes ``parse_packet`` refuses get ``Reason.MALFORMED`` and are dropped; bytes it accepts are
  decided from exactly what it returns;
- fail-closed: between two pods that policy keeps apart, nothing is accepted except neighbour
  discovery, and only with the IPv6 hop limit 255 and code 0 in the bytes themselves.

A quick run is part of the suite. A long run is one command (a few ms per example)::

    NETPOL_FUZZ_EXAMPLES=1000000 .venv/bin/python -m pytest -q \
        tests/enforcement/test_packet_path_fuzz.py

Hypothesis keeps any failing input in ``.hypothesis/`` and replays it first on the next run.
"""

from __future__ import annotations

import itertools
import os
import random
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
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRedirectedHdr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    ICMPv6PacketTooBig,
    IPOption_RR,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.sctp import SCTP

from enforcement.compiler import compile_tables
from enforcement.firewall import MARK_HOST, MARK_KERNEL_REPLY, MARK_UNKNOWN
from enforcement.flows import FlowTable
from enforcement.packets import MalformedPacket, PacketInfo, parse_packet
from enforcement.queue import QueueWorker, TablesHolder
from enforcement.verdict import VERDICTS, Reason, Verdict
from tests.builders import cluster, ip, make_namespace, make_pod, make_policy, selector


def _examples() -> int:
    text = os.environ.get("NETPOL_FUZZ_EXAMPLES", "2000")
    try:
        value = int(text)
    except ValueError:
        message = f"NETPOL_FUZZ_EXAMPLES must be a whole number, not {text!r}"
        raise pytest.UsageError(message) from None
    if value < 1:
        raise pytest.UsageError(f"NETPOL_FUZZ_EXAMPLES must be at least 1, not {value}")
    return value


EXAMPLES = _examples()
"""Examples per fuzz target: 2000 in the suite (a few seconds), more for a long run."""

A4, B4, A6, B6 = "10.244.1.2", "10.244.1.3", "fd00:10:244:1::2", "fd00:10:244:1::3"
OUTSIDE4, OUTSIDE6 = "198.51.100.7", "2001:db8::7"
SOLICITED_B6 = "ff02::1:ff00:3"
APART = {frozenset({ip(A4), ip(B4)}), frozenset({ip(A6), ip(B6)})}
"""Address pairs of the two pods that every policy keeps apart."""
MAC = "02:00:00:00:00:0a"


def _seeds() -> list[bytes]:
    """Real packets that reach every branch of the parser and the decision."""
    udp4 = IP(src=A4, dst=OUTSIDE4) / UDP(sport=40000, dport=53) / Raw(b"q" * 30)
    tcp6 = IPv6(src=A6, dst=OUTSIDE6) / TCP(sport=40001, dport=443, flags="PA") / Raw(b"d" * 40)
    layers: list[Any] = [
        IP(src=A4, dst=B4) / TCP(sport=40000, dport=80, flags="S"),
        IP(src=B4, dst=A4) / TCP(sport=80, dport=40000, flags="SA"),
        IP(src=A4, dst=B4) / TCP(sport=40000, dport=80, flags="S", options=[("MSS", 1460)]),
        IP(src=A4, dst=B4, options=[IPOption_RR()]) / UDP(sport=1, dport=2) / Raw(b"x"),
        IP(src=A4, dst=B4) / UDP(sport=40000, dport=53) / Raw(b"payload"),
        IP(src=A4, dst=B4, flags="MF") / UDP(sport=40000, dport=53) / Raw(b"f" * 24),
        IP(src=A4, dst=B4, frag=3, proto=17) / Raw(b"f" * 24),
        IP(src=A4, dst=B4, frag=1, proto=6) / Raw(b"f" * 24),
        IP(src=A4, dst=B4) / SCTP(sport=5000, dport=5001),
        IP(src=A4, dst=B4) / ICMP(type=8, id=7, seq=1) / Raw(b"p" * 16),
        IP(src=B4, dst=A4) / ICMP(type=0, id=7, seq=1),
        IP(src=OUTSIDE4, dst=A4) / ICMP(type=3, code=3) / Raw(bytes(udp4)[:28]),
        IP(src=B4, dst=A4) / ICMP(type=11) / Raw(bytes(udp4)),
        IP(src=A4, dst=B4) / ESP(spi=1, seq=1) / Raw(b"e" * 16),
        IP(src=A4, dst=B4, proto=47) / Raw(b"\x00" * 8),
        IPv6(src=A6, dst=B6) / TCP(sport=40000, dport=80, flags="S"),
        IPv6(src=A6, dst=B6) / UDP(sport=40000, dport=53) / Raw(b"payload"),
        IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2),
        IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / TCP(dport=80),
        IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(m=1) / UDP(sport=1, dport=2) / Raw(b"f" * 16),
        IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=5, nh=17) / Raw(b"f" * 16),
        IPv6(src=A6, dst=B6) / AH(nh=6) / TCP(dport=80),
        IPv6(src=A6, dst=B6) / ESP(spi=1, seq=1) / Raw(b"e" * 16),
        IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=9, seq=1),
        IPv6(src=OUTSIDE6, dst=A6) / ICMPv6DestUnreach(code=4) / Raw(bytes(tcp6)[:48]),
        IPv6(src=OUTSIDE6, dst=A6) / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(tcp6)),
        IPv6(src=A6, dst=SOLICITED_B6) / ICMPv6ND_NS(tgt=B6) / ICMPv6NDOptSrcLLAddr(lladdr=MAC),
        IPv6(src="::", dst=SOLICITED_B6) / ICMPv6ND_NS(tgt=B6),
        IPv6(src=B6, dst=A6) / ICMPv6ND_NA(tgt=B6, S=1),
        IPv6(src="fe80::a", dst="ff02::2") / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=MAC),
        IPv6(src="fe80::1", dst="ff02::1")
        / ICMPv6ND_RA()
        / ICMPv6NDOptPrefixInfo(prefix="fd00::", prefixlen=64)
        / ICMPv6NDOptMTU(),
        IPv6(src="fe80::1", dst=A6)
        / ICMPv6ND_Redirect(tgt="fe80::9", dst=B6)
        / ICMPv6NDOptRedirectedHdr(pkt=IPv6(src=A6, dst=B6) / UDP()),
        IPv6(src=A6, dst=B6, hlim=254) / ICMPv6ND_NS(tgt=B6) / ICMPv6NDOptUnknown(data=b"x" * 6),
        IPv6(src=A6, dst=B6) / ICMPv6ND_NA(tgt=A6) / Raw(b"data between isolated pods"),
    ]
    return [bytes(layer) for layer in layers]


SEEDS = _seeds()


_LENGTH_FIELDS = {4: (2, 6), 6: (4,)}
"""16-bit fields that steer the parser: IPv4 total length and flags/fragment offset, IPv6
payload length."""
_BYTE_FIELDS = {4: (0, 9, 20, 21), 6: (6, 7, 40, 41)}
"""Bytes that steer it: IPv4 version/IHL and protocol, IPv6 next header and hop limit, and the
first two bytes after a bare header (the ICMP type and code, or a next header's)."""
_EDGES = (0, 1, 8, 40, 44, 58, 128, 133, 135, 137, 254, 255)


_MUTATIONS = ("byte", "length", "field", "insert", "delete", "splice")


def mutated(rng: random.Random) -> bytes:
    """A seed, changed in a few of the ways an attacker or a broken sender would.

    The changes come from ``rng`` (seeded by Hypothesis, so a failure replays), not from
    Hypothesis draws: a fuzzer needs many cheap inputs more than it needs shrinking, and the
    failure message shows the bytes.
    """
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(_MUTATIONS)
        version = data[0] >> 4 if data else 0
        if kind == "byte" and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "length" and version in _LENGTH_FIELDS and len(data) >= 42:
            value = rng.choice([0, 1, 8, 0xFFFF, len(data), len(data) - 40, rng.randrange(65536)])
            struct.pack_into("!H", data, rng.choice(_LENGTH_FIELDS[version]), min(value, 0xFFFF))
        elif kind == "field" and version in _BYTE_FIELDS and len(data) >= 42:
            value = rng.choice(_EDGES) if rng.random() < 0.7 else rng.randrange(256)
            data[rng.choice(_BYTE_FIELDS[version])] = value
        elif kind == "insert":
            at = rng.randint(0, len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == "delete" and data:
            at = rng.randrange(len(data))
            del data[at : at + rng.randint(1, 16)]
        elif kind == "splice":
            other = rng.choice(SEEDS)
            data = data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]
    if rng.random() < 0.3:
        data = data[: rng.randint(0, len(data))]  # a short capture or a cut packet
    return bytes(data)


def random_packet(rng: random.Random) -> bytes:
    """Mostly mutated real packets; sometimes bytes that only start like an IP header."""
    roll = rng.random()
    if roll < 0.8:
        return mutated(rng)
    first = rng.choice([0x45, 0x46, 0x4F, 0x60, 0x00, rng.randrange(256)])
    return bytes([first]) + rng.randbytes(rng.randint(0, 120))


MARKS = (0, MARK_HOST, MARK_KERNEL_REPLY, MARK_UNKNOWN, MARK_KERNEL_REPLY | 0x1)
"""Packet marks as the firewall sets them, and one with a bit of someone else's."""
VERDICT_OBJECTS = {id(verdict) for verdict in VERDICTS.values()}


TABLES = compile_tables(
    cluster(
        make_namespace("x"),
        make_pod("x", "a", A4, labels={"pod": "a"}, ipv6=A6),
        make_pod("x", "b", B4, labels={"pod": "b"}, ipv6=B6),
        make_policy("x", "deny-all", selector(), egress=[], types=["Ingress", "Egress"]),
    ),
    "node-1",
    1,
)
"""Tables that isolate pods a and b both ways (compiled once: they are immutable)."""


def worker() -> QueueWorker:
    """A fail-closed worker with a fresh flow table and a clock that ticks 0.1 s per packet."""
    clock = itertools.count()
    return QueueWorker(
        1000,
        TablesHolder(TABLES),
        FlowTable(),
        fail_open=False,
        clock=lambda: next(clock) / 10,
    )


def parsed_or_error(data: bytes) -> PacketInfo | MalformedPacket:
    try:
        return parse_packet(data)
    except MalformedPacket as error:
        return error


def check_one(subject: QueueWorker, data: bytes, mark: int, host_seen: bool) -> None:
    info, verdict = subject.decide_payload(data, mark)
    assert isinstance(verdict, Verdict) and id(verdict) in VERDICT_OBJECTS
    assert subject.stats.errors == 0, f"an exception escaped the decision for {data.hex()}"
    expected = parsed_or_error(data)
    if isinstance(expected, MalformedPacket):
        assert info is None and verdict.reason is Reason.MALFORMED and not verdict.accepted
        return
    assert info == expected, "the decision must judge what the parser returns"
    assert verdict.reason is not Reason.MALFORMED
    if info.neighbor_discovery:
        assert data[0] >> 4 == 6 and data[7] == 255, "ND without hop limit 255 in the bytes"
        assert info.protocol == 58 and info.icmp_type in range(133, 138) and info.icmp_code == 0
        assert info.nd_problem is None
    if verdict.reason is Reason.NEIGHBOR_DISCOVERY:
        assert info.neighbor_discovery
    if frozenset({info.src, info.dst}) in APART and not host_seen and verdict.accepted:
        assert verdict.reason is Reason.NEIGHBOR_DISCOVERY, (
            f"{verdict.reason.value} let through between pods kept apart: {data.hex()}"
        )


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=True))
def test_mutated_real_packets(rng: random.Random) -> None:
    """A short sequence through one worker, so flow state carries from packet to packet."""
    subject = worker()
    host_seen = False
    for _ in range(rng.randint(1, 4)):
        mark = rng.choice(MARKS)
        # A host-opened flow is pinned and may carry later packets between a and b.
        host_seen = host_seen or bool(mark & MARK_HOST)
        check_one(subject, random_packet(rng), mark, host_seen)


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None)
@given(st.binary(max_size=160), st.sampled_from(MARKS))
def test_any_bytes(data: bytes, mark: int) -> None:
    """Bytes with no structure at all (``test_packets.py`` fuzzes the parser alone too)."""
    check_one(worker(), data, mark, host_seen=bool(mark & MARK_HOST))
