"""Tests for enforcement/nflog.py: the nfnetlink_log codec with crafted bytes, and a real log
group in a network namespace of the test's own."""

from __future__ import annotations

import errno
import socket
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lab.netns import entered
from enforcement.ctnetlink import NetlinkRequestError, attribute, netfilter_message
from enforcement.nflog import (
    COPY_RANGE,
    NFNL_SUBSYS_ULOG,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    NFULNL_MSG_PACKET,
    NflogReader,
    bind_request,
    logged_packets,
)

PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
NFULA_PACKET_HDR = 1


def _ipv4_udp(src: str, dst: str, sport: int, dport: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return header + struct.pack("!HHHH", sport, dport, 8, 0)


def _logged(*attributes: bytes) -> bytes:
    return netfilter_message(PACKET_TYPE, 0, 0, socket.AF_INET, b"".join(attributes))


def test_a_logged_packet_is_parsed_from_its_payload_attribute() -> None:
    packet = _ipv4_udp("10.244.1.2", "10.244.1.3", 40000, 53)
    data = _logged(
        attribute(NFULA_PACKET_HDR, b"\x08\x00\x01\x00"), attribute(NFULA_PAYLOAD, packet)
    )
    packets, malformed = logged_packets(data + _logged(attribute(NFULA_PAYLOAD, packet)))
    assert malformed == 0 and len(packets) == 2
    first = packets[0].packet
    assert first.src == socket.inet_aton("10.244.1.2") and first.dst_port == 53
    assert [logged.prefix for logged in packets] == ["", ""]


def test_the_prefix_says_which_rule_logged_the_packet() -> None:
    packet = _ipv4_udp("10.244.1.2", "10.244.1.3", 40000, 53)
    data = _logged(attribute(NFULA_PREFIX, b"cached\0"), attribute(NFULA_PAYLOAD, packet))
    packets, malformed = logged_packets(data)
    assert malformed == 0 and [logged.prefix for logged in packets] == ["cached"]


def test_messages_without_a_packet_or_with_a_broken_one_are_counted_not_raised() -> None:
    no_payload = _logged(attribute(NFULA_PACKET_HDR, b"\x08\x00\x01\x00"))
    broken = _logged(attribute(NFULA_PAYLOAD, b"\x45\x00"))
    packets, malformed = logged_packets(no_payload + broken)
    assert (packets, malformed) == ([], 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_packets_and_a_count_and_nothing_else(data: bytes) -> None:
    packets, malformed = logged_packets(data)
    assert malformed >= 0 and isinstance(packets, list)


def test_the_bind_request_names_the_group_and_asks_for_an_acknowledgement() -> None:
    request = bind_request(1234)
    length, _kind, flags, _sequence, _port = struct.unpack_from("=IHHII", request)
    assert length == len(request) and flags & 0x04  # NLM_F_ACK
    assert struct.unpack_from("!H", request, 16 + 2)[0] == 1234  # nfgenmsg res_id, big-endian
    assert struct.pack("!I", COPY_RANGE) in request


@pytest.mark.root
def test_a_log_group_delivers_first_packets_and_refuses_a_second_reader(
    scratch_netns: str,
) -> None:
    netns = ["ip", "netns", "exec", scratch_netns]
    subprocess.run([*netns, "ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(
        [*netns, "iptables", "-A", "OUTPUT", "-p", "udp", "-m", "conntrack", "--ctstate",
         "NEW", "-j", "NFLOG", "--nflog-group", "77", "--nflog-size", str(COPY_RANGE)],
        check=True,
    )  # fmt: skip
    with entered(scratch_netns):
        reader = NflogReader(77, timeout=0.5)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(NetlinkRequestError) as refused, entered(scratch_netns):
            NflogReader(77)
        assert refused.value.errno == errno.EPERM  # nfnetlink_log: bound by another socket
        for port in (9001, 9002):
            sender.sendto(b"x", ("127.0.0.1", port))
        seen = []
        while packets := reader.receive():
            seen += [(logged.packet.protocol, logged.packet.dst_port) for logged in packets]
        assert seen == [(socket.IPPROTO_UDP, 9001), (socket.IPPROTO_UDP, 9002)]
    finally:
        sender.close()
        reader.close()
