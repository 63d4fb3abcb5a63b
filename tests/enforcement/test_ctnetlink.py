"""Tests for enforcement/ctnetlink.py: the conntrack netlink codec, with crafted bytes.

The kernel side (a real dump and delete) is exercised by tests/e2e/test_revocation.py."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcement.ctnetlink import (
    CTA_FILTER,
    CTA_FILTER_FLAG_IP_SRC,
    CTA_FILTER_ORIG_FLAGS,
    CTA_FILTER_REPLY_FLAGS,
    CTA_ID,
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_MARK,
    CTA_MARK_MASK,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    CTA_ZONE,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    NFNL_SUBSYS_CTNETLINK,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    Message,
    NetlinkParseError,
    attributes,
    delete_request,
    dump_request,
    error_code,
    messages,
    parse_entry,
)
from enforcement.model import IPPROTO_ICMP, IPPROTO_TCP
from tests.builders import ip

ENTRY = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW


def attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    """One netlink attribute, padded, built independently of the module under test."""
    length = 4 + len(payload)
    flag = NLA_F_NESTED if nested else 0
    return struct.pack("=HH", length, kind | flag) + payload + b"\0" * (-length % 4)


def tuple_attr(
    kind: int,
    src: str,
    dst: str,
    protocol: int = IPPROTO_TCP,
    ports: tuple[int, int] | None = (40000, 80),
) -> bytes:
    v6 = ":" in src
    ip_attrs = attr(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, ip(src)) + attr(
        CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, ip(dst)
    )
    proto = attr(CTA_PROTO_NUM, bytes([protocol]))
    if ports is not None:
        proto += attr(CTA_PROTO_SRC_PORT, struct.pack("!H", ports[0]))
        proto += attr(CTA_PROTO_DST_PORT, struct.pack("!H", ports[1]))
    return attr(kind, attr(CTA_TUPLE_IP, ip_attrs, True) + attr(CTA_TUPLE_PROTO, proto, True), True)


def entry_message(
    body: bytes, family: int = socket.AF_INET, kind: int = ENTRY, sequence: int = 7
) -> bytes:
    payload = struct.pack("=BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, sequence, 0) + payload


SERVICE_ENTRY = (
    tuple_attr(CTA_TUPLE_ORIG, "10.244.1.4", "10.96.0.10", ports=(40000, 80))
    + tuple_attr(CTA_TUPLE_REPLY, "10.244.1.3", "10.244.1.4", ports=(8080, 40000))
    + attr(CTA_MARK, struct.pack("!I", 0x400000))
    + attr(CTA_ID, struct.pack("!I", 0xDEADBEEF))
    + attr(CTA_ZONE, struct.pack("!H", 3))
)


def test_a_service_entry_is_parsed_with_both_tuples() -> None:
    (message,) = list(messages(entry_message(SERVICE_ENTRY)))
    entry = parse_entry(message)
    assert entry.family == socket.AF_INET
    assert (entry.original.src, entry.original.dst) == (ip("10.244.1.4"), ip("10.96.0.10"))
    assert (entry.original.src_port, entry.original.dst_port) == (40000, 80)
    assert (entry.reply.src, entry.reply.src_port) == (ip("10.244.1.3"), 8080)
    assert (entry.mark, entry.entry_id, entry.zone) == (0x400000, 0xDEADBEEF, 3)
    assert entry.original_attribute == tuple_attr(CTA_TUPLE_ORIG, "10.244.1.4", "10.96.0.10")


def test_an_ipv6_icmp_entry_has_no_ports() -> None:
    body = tuple_attr(CTA_TUPLE_ORIG, "fd00::1", "fd00::2", IPPROTO_ICMP, None) + tuple_attr(
        CTA_TUPLE_REPLY, "fd00::2", "fd00::1", IPPROTO_ICMP, None
    )
    entry = parse_entry(next(messages(entry_message(body, socket.AF_INET6))))
    assert entry.original.src == ip("fd00::1")
    assert (entry.original.dst_port, entry.reply.src_port) == (None, None)
    assert (entry.mark, entry.entry_id, entry.zone) == (0, None, None)


def test_the_usual_layout_and_the_general_walk_agree() -> None:
    """The kernel's layout is read with one unpack; the same tuples without NLA_F_NESTED flags
    (or in another attribute order) take the general walk and must give the same entry."""
    fast = parse_entry(next(messages(entry_message(SERVICE_ENTRY))))
    unflagged = SERVICE_ENTRY.replace(struct.pack("=H", CTA_TUPLE_IP | NLA_F_NESTED),
                                      struct.pack("=H", CTA_TUPLE_IP))  # fmt: skip
    assert unflagged != SERVICE_ENTRY
    walked = parse_entry(next(messages(entry_message(unflagged))))
    assert (walked.original, walked.reply) == (fast.original, fast.reply)


def test_a_usual_layout_with_a_wrong_header_is_not_trusted() -> None:
    """Same size as the usual layout, but the source address attribute has another type: the
    walk finds no source address and says so."""
    wrong = SERVICE_ENTRY.replace(struct.pack("=HH", 8, CTA_IP_V4_SRC), struct.pack("=HH", 8, 9))
    with pytest.raises(NetlinkParseError, match="source and destination"):
        parse_entry(next(messages(entry_message(wrong))))


def test_unknown_attributes_are_skipped() -> None:
    body = attr(99, b"whatever") + SERVICE_ENTRY + attr(CTA_MARK, b"\x01")  # short mark: ignored
    entry = parse_entry(next(messages(entry_message(body))))
    assert entry.mark == 0x400000


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"\x10\x00\x00", "truncated netlink header", id="short-header"),
        pytest.param(struct.pack("=IHHII", 8, 0, 0, 0, 0), "length 8", id="length-below-header"),
        pytest.param(struct.pack("=IHHII", 64, 0, 0, 0, 0), "length 64", id="length-past-end"),
    ],
)
def test_malformed_framing_is_a_parse_error(data: bytes, problem: str) -> None:
    with pytest.raises(NetlinkParseError, match=problem):
        list(messages(data))


BAD_ENTRIES = [
    pytest.param(entry_message(SERVICE_ENTRY, kind=NLMSG_ERROR), "not a conntrack entry",
                 id="other-message-type"),
    pytest.param(struct.pack("=IHHII", 17, ENTRY, 0, 7, 0) + b"\x02", "truncated nfgenmsg",
                 id="no-nfgenmsg"),
    pytest.param(entry_message(SERVICE_ENTRY, family=7), "family 7", id="unknown-family"),
    pytest.param(entry_message(SERVICE_ENTRY, family=socket.AF_INET6), "16-byte",
                 id="v4-addresses-in-a-v6-entry"),
    pytest.param(entry_message(tuple_attr(CTA_TUPLE_ORIG, "10.0.0.1", "10.0.0.2")),
                 "both an original and a reply", id="no-reply-tuple"),
    pytest.param(entry_message(attr(CTA_TUPLE_ORIG, attr(CTA_TUPLE_IP, b"", True), True)
                               + tuple_attr(CTA_TUPLE_REPLY, "10.0.0.1", "10.0.0.2")),
                 "addresses", id="tuple-without-addresses"),
    pytest.param(entry_message(attr(CTA_TUPLE_ORIG, attr(CTA_TUPLE_IP,
                                                         attr(CTA_IP_V4_SRC, ip("10.0.0.1"))
                                                         + attr(CTA_IP_V4_DST, ip("10.0.0.2")),
                                                         True), True)
                               + tuple_attr(CTA_TUPLE_REPLY, "10.0.0.1", "10.0.0.2")),
                 "protocol", id="tuple-without-protocol"),
    pytest.param(entry_message(SERVICE_ENTRY[:-3]), "attribute length", id="cut-attribute"),
    pytest.param(entry_message(struct.pack("=HH", 2, CTA_MARK) + b"\0" * 4),
                 "attribute length 2", id="attribute-shorter-than-its-header"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "problem"), BAD_ENTRIES)
def test_malformed_entries_are_parse_errors(data: bytes, problem: str) -> None:
    with pytest.raises(NetlinkParseError, match=problem):
        for message in messages(data):
            parse_entry(message)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300), st.binary(max_size=8))
def test_corrupted_dumps_raise_only_parse_errors(noise: bytes, cut: int, patch: bytes) -> None:
    """Random bytes, and a real entry with bytes overwritten: a NetlinkParseError or an entry,
    never another exception (IndexError, struct.error) that would reach the runner."""
    good = bytearray(entry_message(SERVICE_ENTRY))
    good[cut % len(good) : cut % len(good) + len(patch)] = patch
    for data in (noise, bytes(good), entry_message(noise)):
        try:
            for message in messages(data):
                parse_entry(message)
        except NetlinkParseError:
            pass


def test_dump_request_filters_by_mark_and_reply_source() -> None:
    request = dump_request(socket.AF_INET, 42, 0x400000, 0x400000, reply_src=ip("10.244.1.3"))
    (message,) = list(messages(request))
    assert message.kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    assert message.flags == NLM_F_REQUEST | NLM_F_DUMP
    assert message.sequence == 42
    assert message.payload[:4] == struct.pack("=BBH", socket.AF_INET, 0, 0)
    found = dict(attributes(message.payload, 4))
    assert found[CTA_MARK] == struct.pack("!I", 0x400000)
    assert found[CTA_MARK_MASK] == struct.pack("!I", 0x400000)
    assert CTA_TUPLE_ORIG not in found
    reply_ip = dict(attributes(dict(attributes(found[CTA_TUPLE_REPLY]))[CTA_TUPLE_IP]))
    assert reply_ip == {CTA_IP_V4_SRC: ip("10.244.1.3")}
    flags = dict(attributes(found[CTA_FILTER]))
    assert flags == {CTA_FILTER_REPLY_FLAGS: struct.pack("=I", CTA_FILTER_FLAG_IP_SRC)}


def test_dump_request_filters_by_original_source() -> None:
    request = dump_request(socket.AF_INET6, 1, 1, 1, original_src=ip("fd00::5"))
    found = dict(attributes(next(messages(request)).payload, 4))
    original_ip = dict(attributes(dict(attributes(found[CTA_TUPLE_ORIG]))[CTA_TUPLE_IP]))
    assert original_ip == {CTA_IP_V6_SRC: ip("fd00::5")}
    flags = dict(attributes(found[CTA_FILTER]))
    assert flags == {CTA_FILTER_ORIG_FLAGS: struct.pack("=I", CTA_FILTER_FLAG_IP_SRC)}


def test_dump_request_refuses_an_address_of_the_other_family() -> None:
    with pytest.raises(ValueError, match="16-byte"):
        dump_request(socket.AF_INET6, 1, 1, 1, original_src=ip("10.0.0.1"))


def test_delete_request_names_the_entry_by_original_tuple_id_and_zone() -> None:
    entry = parse_entry(next(messages(entry_message(SERVICE_ENTRY))))
    (message,) = list(messages(delete_request(entry, 9)))
    assert message.kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    assert message.flags == NLM_F_REQUEST | NLM_F_ACK
    found = dict(attributes(message.payload, 4))
    assert set(found) == {CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE}
    assert attr(CTA_TUPLE_ORIG, found[CTA_TUPLE_ORIG], True) == entry.original_attribute
    assert found[CTA_ID] == struct.pack("!I", 0xDEADBEEF)
    assert found[CTA_ZONE] == struct.pack("!H", 3)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(struct.pack("=i", 0) + b"\0" * 16, 0, id="ack"),
        pytest.param(struct.pack("=i", -2) + b"\0" * 16, 2, id="enoent"),
    ],
)
def test_error_code(payload: bytes, code: int) -> None:
    assert error_code(Message(NLMSG_ERROR, 0, 1, payload)) == code


def test_a_truncated_error_message_is_a_parse_error() -> None:
    with pytest.raises(NetlinkParseError):
        error_code(Message(NLMSG_ERROR, 0, 1, b"\0\0"))
