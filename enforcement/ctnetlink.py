"""The kernel's conntrack table over netlink, lean: requests built and replies parsed by hand.

Sans-I/O codec (this module builds bytes and parses bytes) plus one small socket class. Only what
revocation needs: dump the entries carrying a mark, optionally only those whose original or reply
tuple has a given source address (``CTA_FILTER``, Linux 5.8+), and delete entries by their
original tuple and id. A general netlink library (pyroute2) builds an object per attribute; for
tens of thousands of entries that costs more than the revocation's whole time budget, so the
parser here unpacks only the attributes it needs and skips the rest by length.

Wire format (include/uapi/linux/netlink.h, include/uapi/linux/netfilter/nfnetlink.h,
nfnetlink_conntrack.h): each message is an ``nlmsghdr`` (length, type, flags, sequence, port id;
host byte order), then an ``nfgenmsg`` (family, version, resource id), then attributes, each a
``nlattr`` (length, type; host byte order) with its payload padded to 4 bytes. Attribute values
of ctnetlink (addresses, ports, mark, id, zone) are in network byte order. Nested attributes may
carry ``NLA_F_NESTED`` in their type.

The parser trusts nothing: every length is checked against what is left, a malformed message or
entry is reported as :class:`NetlinkParseError` (the caller then judges conservatively), never an
IndexError or a struct error.
"""

from __future__ import annotations

import errno
import operator
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from enforcement.model import IPPROTO_ICMP, IPPROTO_ICMPV6

# include/uapi/linux/netlink.h
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

# include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_ID = 12
CTA_ZONE = 18
CTA_MARK_MASK = 21
CTA_FILTER = 25
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_REPLY_FLAGS = 2
CTA_FILTER_FLAG_IP_SRC = 1 << 0
"""``CTA_FILTER_FLAG(CTA_IP_SRC)``: match the tuple's source address only."""

_HEADER = struct.Struct("=IHHII")
_ATTRIBUTE = struct.Struct("=HH")
_NFGENMSG = struct.Struct("=BBH")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_ERRNO = struct.Struct("=i")
_ENTRY_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
_ADDRESS_ATTRIBUTES: dict[int, tuple[int, int, int]] = {
    socket.AF_INET: (CTA_IP_V4_SRC, CTA_IP_V4_DST, 4),
    socket.AF_INET6: (CTA_IP_V6_SRC, CTA_IP_V6_DST, 16),
}
_PORTLESS = (IPPROTO_ICMP, IPPROTO_ICMPV6)

_Item = TypeVar("_Item")

RECEIVE_BUFFER = 1 << 20
"""Bytes asked for the socket's receive buffer: a dump answers in many 16-32 KiB batches."""
DELETE_BATCH = 256
"""Requests (deletes) written in one ``send`` before their acknowledgements are read."""
TIMEOUT = 5.0
"""Seconds to wait for the kernel before giving up on a request (it answers in microseconds)."""


class NetlinkParseError(ValueError):
    """Bytes from the kernel that do not have the shape ctnetlink documents."""


class NetlinkRequestError(OSError):
    """The kernel refused a request (its errno is in ``errno``)."""


@dataclass(frozen=True, slots=True)
class TupleEnds:
    """One direction of a conntrack entry: addresses and, for protocols with ports, ports."""

    src: bytes
    """Packed source address (4 or 16 bytes)."""
    dst: bytes
    protocol: int
    """IP protocol number."""
    src_port: int | None
    """None for protocols without ports (ICMP, GRE, ...) or when the kernel sent none."""
    dst_port: int | None


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One kernel conntrack entry, as much as revocation needs of it."""

    family: int
    """``socket.AF_INET`` or ``socket.AF_INET6``."""
    original: TupleEnds
    """The direction of the packet that opened the connection, as the kernel first saw it."""
    reply: TupleEnds
    """The direction of the answers, with NAT applied (after DNAT its source is the real
    destination)."""
    mark: int
    entry_id: int | None
    """The kernel's id of the entry (``CTA_ID``): a delete by tuple and id never hits a newer
    entry that reuses the tuple."""
    zone: int | None
    original_attribute: bytes
    """The ``CTA_TUPLE_ORIG`` attribute as received (header included), sent back to delete."""


# -- building requests ------------------------------------------------------------------------


def attribute(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _ATTRIBUTE.size + len(payload)
    return _ATTRIBUTE.pack(length, kind) + payload + b"\0" * (-length % 4)


def netfilter_message(
    kind: int, flags: int, sequence: int, family: int, attributes: bytes, resource: int = 0
) -> bytes:
    """An nfnetlink message: ``nlmsghdr``, ``nfgenmsg`` (``resource``: a queue or log group,
    big-endian), then the attributes."""
    body = _NFGENMSG.pack(family, 0, socket.htons(resource)) + attributes
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, sequence, 0) + body


def dump_request(
    family: int,
    sequence: int,
    mark: int,
    mark_mask: int,
    *,
    original_src: bytes | None = None,
    reply_src: bytes | None = None,
) -> bytes:
    """A dump of the ``family`` entries whose mark has ``mark`` under ``mark_mask``, filtered in
    the kernel; with ``original_src`` or ``reply_src`` (not both) also by that source address of
    the original or the reply tuple (net/netfilter/nf_conntrack_netlink.c,
    ``ctnetlink_alloc_filter``)."""
    attributes = attribute(CTA_MARK, _BE32.pack(mark)) + attribute(
        CTA_MARK_MASK, _BE32.pack(mark_mask)
    )
    source, _destination, width = _ADDRESS_ATTRIBUTES[family]
    for tuple_kind, flags_kind, address in (
        (CTA_TUPLE_ORIG, CTA_FILTER_ORIG_FLAGS, original_src),
        (CTA_TUPLE_REPLY, CTA_FILTER_REPLY_FLAGS, reply_src),
    ):
        if address is None:
            continue
        if len(address) != width:
            raise ValueError(f"a {width}-byte address is needed for this family")
        ip = attribute(CTA_TUPLE_IP | NLA_F_NESTED, attribute(source, address))
        attributes += attribute(tuple_kind | NLA_F_NESTED, ip)
        flags = attribute(flags_kind, struct.pack("=I", CTA_FILTER_FLAG_IP_SRC))
        attributes += attribute(CTA_FILTER | NLA_F_NESTED, flags)
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return netfilter_message(kind, NLM_F_REQUEST | NLM_F_DUMP, sequence, family, attributes)


def _tuple_attribute(kind: int, family: int, ends: TupleEnds) -> bytes:
    source, destination, _width = _ADDRESS_ATTRIBUTES[family]
    ip = attribute(source, ends.src) + attribute(destination, ends.dst)
    proto = attribute(CTA_PROTO_NUM, bytes([ends.protocol]))
    if ends.src_port is not None and ends.dst_port is not None:
        proto += attribute(CTA_PROTO_SRC_PORT, _BE16.pack(ends.src_port))
        proto += attribute(CTA_PROTO_DST_PORT, _BE16.pack(ends.dst_port))
    nested = attribute(CTA_TUPLE_IP | NLA_F_NESTED, ip)
    nested += attribute(CTA_TUPLE_PROTO | NLA_F_NESTED, proto)
    return attribute(kind | NLA_F_NESTED, nested)


def create_request(
    family: int, original: TupleEnds, reply: TupleEnds, mark: int, timeout: int, sequence: int
) -> bytes:
    """Create an entry (for tests and benchmarks that fill a table: UDP or other protocols
    without state to give; ``conntrack -I`` spawns a process per entry)."""
    attributes = _tuple_attribute(CTA_TUPLE_ORIG, family, original)
    attributes += _tuple_attribute(CTA_TUPLE_REPLY, family, reply)
    attributes += attribute(CTA_TIMEOUT, _BE32.pack(timeout))
    attributes += attribute(CTA_MARK, _BE32.pack(mark))
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
    return netfilter_message(kind, flags, sequence, family, attributes)


def delete_request(entry: ConntrackEntry, sequence: int) -> bytes:
    """Delete ``entry`` by its original tuple, its zone and its id, asking for an ack."""
    attributes = entry.original_attribute
    if entry.entry_id is not None:
        attributes += attribute(CTA_ID, _BE32.pack(entry.entry_id))
    if entry.zone is not None:
        attributes += attribute(CTA_ZONE, _BE16.pack(entry.zone))
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    return netfilter_message(kind, NLM_F_REQUEST | NLM_F_ACK, sequence, entry.family, attributes)


# -- parsing replies --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message of a reply: its type, flags, sequence and payload (after nlmsghdr)."""

    kind: int
    flags: int
    sequence: int
    payload: bytes


def messages(data: bytes) -> Iterator[Message]:
    """Split a buffer read from a netlink socket into its messages (bounds-checked)."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise NetlinkParseError(f"truncated netlink header at offset {offset}")
        length, kind, flags, sequence, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or length > len(data) - offset:
            raise NetlinkParseError(f"netlink message length {length} at offset {offset}")
        yield Message(kind, flags, sequence, data[offset + _HEADER.size : offset + length])
        offset += (length + 3) & ~3


def attributes(data: bytes, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type without flags, payload) of each attribute in ``data[start:]`` (bounds-checked)."""
    offset = start
    while offset < len(data):
        length, kind = _header(data, offset, len(data))
        yield kind, data[offset + _ATTRIBUTE.size : offset + length]
        offset += (length + 3) & ~3


def error_code(message: Message) -> int:
    """The (positive) errno of an NLMSG_ERROR message; 0 for an acknowledgement."""
    if len(message.payload) < _ERRNO.size:
        raise NetlinkParseError("truncated netlink error message")
    return -int(_ERRNO.unpack_from(message.payload)[0])


def _header(data: bytes, offset: int, end: int) -> tuple[int, int]:
    """(length, type without flags) of the attribute at ``offset``, checked against ``end``."""
    if end - offset < _ATTRIBUTE.size:
        raise NetlinkParseError(f"truncated attribute header at offset {offset}")
    length, kind = _ATTRIBUTE.unpack_from(data, offset)
    if length < _ATTRIBUTE.size or length > end - offset:
        raise NetlinkParseError(f"attribute length {length} at offset {offset}")
    return length, kind & NLA_TYPE_MASK


_Layout = tuple[struct.Struct, Callable[[tuple[object, ...]], object], tuple[int, ...]]
"""A tuple layout: its struct, a getter of its header fields, and their expected values."""


def _layout(width: int) -> _Layout:
    """The tuple layout the kernel writes for TCP/UDP/SCTP (``ctnetlink_dump_tuples``): IP
    (source, destination) then protocol (number, source port, destination port), each nested
    attribute flagged ``NLA_F_NESTED``. One unpack, then every header compared with what it
    must be; anything else takes the general walk."""
    layout = struct.Struct(f"=HHHH{width}sHH{width}sHHHHB3xHHH2xHHH2x")
    headers = (0, 1, 2, 3, 5, 6, 8, 9, 10, 11, 13, 14, 16, 17)
    expected = (
        4 + 2 * (4 + width), CTA_TUPLE_IP | NLA_F_NESTED,
        4 + width, CTA_IP_V4_SRC if width == 4 else CTA_IP_V6_SRC,
        4 + width, CTA_IP_V4_DST if width == 4 else CTA_IP_V6_DST,
        28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM,
        6, CTA_PROTO_SRC_PORT, 6, CTA_PROTO_DST_PORT,
    )  # fmt: skip
    return layout, operator.itemgetter(*headers), expected


_LAYOUTS: dict[int, _Layout] = {socket.AF_INET: _layout(4), socket.AF_INET6: _layout(16)}


def _tuple(family: int, data: bytes, start: int, end: int) -> TupleEnds:
    """The tuple whose nested attributes are ``data[start:end]``.

    The kernel's usual layout is read with one unpack (this runs twice for every entry of a
    dump: tens of thousands per change); anything else is walked by offsets, every length
    checked by :func:`_header`.
    """
    layout, headers, expected = _LAYOUTS[family]
    if end - start == layout.size:
        values = layout.unpack_from(data, start)
        if headers(values) == expected:
            protocol = values[12]
            if protocol in _PORTLESS:
                return TupleEnds(values[4], values[7], protocol, None, None)
            return TupleEnds(
                values[4], values[7], protocol, socket.ntohs(values[15]), socket.ntohs(values[18])
            )
    return _walk_tuple(family, data, start, end)


def _walk_tuple(family: int, data: bytes, start: int, end: int) -> TupleEnds:
    source_kind, destination_kind, width = _ADDRESS_ATTRIBUTES[family]
    src = dst = None
    protocol = src_port = dst_port = None
    offset = start
    while offset < end:
        length, kind = _header(data, offset, end)
        if kind in (CTA_TUPLE_IP, CTA_TUPLE_PROTO):
            inner, inner_end = offset + _ATTRIBUTE.size, offset + length
            while inner < inner_end:
                inner_length, inner_kind = _header(data, inner, inner_end)
                value = inner + _ATTRIBUTE.size
                size = inner_length - _ATTRIBUTE.size
                if kind == CTA_TUPLE_IP:
                    if inner_kind == source_kind:
                        src = data[value : value + size]
                    elif inner_kind == destination_kind:
                        dst = data[value : value + size]
                elif inner_kind == CTA_PROTO_NUM and size == 1:
                    protocol = data[value]
                elif inner_kind == CTA_PROTO_SRC_PORT and size == 2:
                    src_port = _BE16.unpack_from(data, value)[0]
                elif inner_kind == CTA_PROTO_DST_PORT and size == 2:
                    dst_port = _BE16.unpack_from(data, value)[0]
                inner += (inner_length + 3) & ~3
        offset += (length + 3) & ~3
    if src is None or dst is None or len(src) != width or len(dst) != width:
        raise NetlinkParseError(f"tuple without {width}-byte source and destination addresses")
    if protocol is None:
        raise NetlinkParseError("tuple without a protocol number")
    if protocol in _PORTLESS:
        src_port = dst_port = None
    return TupleEnds(src, dst, protocol, src_port, dst_port)


def parse_entry(message: Message) -> ConntrackEntry:
    """The entry one ctnetlink ``IPCTNL_MSG_CT_NEW`` message (a dump's element) describes."""
    if message.kind != _ENTRY_TYPE:
        raise NetlinkParseError(f"not a conntrack entry: message type {message.kind:#x}")
    data = message.payload
    end = len(data)
    if end < _NFGENMSG.size:
        raise NetlinkParseError("truncated nfgenmsg")
    family = data[0]
    if family not in _ADDRESS_ATTRIBUTES:
        raise NetlinkParseError(f"unexpected address family {family}")
    original = reply = None
    original_attribute = b""
    mark = 0
    entry_id = zone = None
    offset = _NFGENMSG.size
    while offset < end:
        length, kind = _header(data, offset, end)
        value, size = offset + _ATTRIBUTE.size, length - _ATTRIBUTE.size
        if kind == CTA_TUPLE_ORIG:
            original = _tuple(family, data, value, offset + length)
            original_attribute = attribute(
                CTA_TUPLE_ORIG | NLA_F_NESTED, data[value : value + size]
            )
        elif kind == CTA_TUPLE_REPLY:
            reply = _tuple(family, data, value, offset + length)
        elif kind == CTA_MARK and size == 4:
            mark = _BE32.unpack_from(data, value)[0]
        elif kind == CTA_ID and size == 4:
            entry_id = _BE32.unpack_from(data, value)[0]
        elif kind == CTA_ZONE and size == 2:
            zone = _BE16.unpack_from(data, value)[0]
        offset += (length + 3) & ~3
    if original is None or reply is None:
        raise NetlinkParseError("entry without both an original and a reply tuple")
    return ConntrackEntry(family, original, reply, mark, entry_id, zone, original_attribute)


# -- the socket -------------------------------------------------------------------------------


class CtNetlink:
    """A NETLINK_NETFILTER socket of the current network namespace (needs CAP_NET_ADMIN).

    Not thread-safe: one caller at a time. Parse problems of single entries are counted in
    ``skipped`` and the entry left out; a malformed message framing raises.
    """

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._socket.bind((0, 0))
            self._socket.settimeout(TIMEOUT)
        except OSError:
            self._socket.close()
            raise
        self._sequence = int.from_bytes(os.urandom(2), "big")
        self.skipped = 0
        """Entries left out of dumps because they could not be parsed."""

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> CtNetlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        return self._sequence

    def dump(
        self,
        family: int,
        mark: int,
        mark_mask: int,
        *,
        original_src: bytes | None = None,
        reply_src: bytes | None = None,
    ) -> list[ConntrackEntry]:
        """The entries :func:`dump_request` describes."""
        sequence = self._next_sequence()
        request = dump_request(
            family, sequence, mark, mark_mask, original_src=original_src, reply_src=reply_src
        )
        self._socket.send(request)
        entries: list[ConntrackEntry] = []
        while True:
            data = self._socket.recv(RECEIVE_BUFFER)
            for message in messages(data):
                if message.sequence != sequence:
                    continue  # a late answer to an earlier request
                if message.kind == NLMSG_DONE:
                    return entries
                if message.kind == NLMSG_ERROR:
                    code = error_code(message)
                    raise NetlinkRequestError(code, f"conntrack dump: {os.strerror(code)}")
                try:
                    entries.append(parse_entry(message))
                except NetlinkParseError:
                    self.skipped += 1

    def delete(self, entries: Iterable[ConntrackEntry]) -> int:
        """Delete the entries; returns how many the kernel deleted (gone ones are not counted)."""
        return self._batched(entries, delete_request, tolerated=errno.ENOENT)

    def create(self, entries: Iterable[tuple[int, TupleEnds, TupleEnds, int, int]]) -> int:
        """Create entries given as (family, original, reply, mark, timeout); returns how many
        were created (for tests and benchmarks)."""

        def request(item: tuple[int, TupleEnds, TupleEnds, int, int], sequence: int) -> bytes:
            family, original, reply, mark, timeout = item
            return create_request(family, original, reply, mark, timeout, sequence)

        return self._batched(entries, request, tolerated=errno.EEXIST)

    def _batched(
        self, items: Iterable[_Item], build: Callable[[_Item, int], bytes], tolerated: int
    ) -> int:
        batch: list[_Item] = []
        done = 0
        for item in items:
            batch.append(item)
            if len(batch) == DELETE_BATCH:
                done += self._send_batch(batch, build, tolerated)
                batch = []
        if batch:
            done += self._send_batch(batch, build, tolerated)
        return done

    def _send_batch(
        self, batch: list[_Item], build: Callable[[_Item, int], bytes], tolerated: int
    ) -> int:
        """Write the requests in one ``send``, then read one acknowledgement per request."""
        pending = set()
        requests = bytearray()
        for item in batch:
            sequence = self._next_sequence()
            pending.add(sequence)
            requests += build(item, sequence)
        self._socket.send(bytes(requests))
        done = 0
        while pending:
            data = self._socket.recv(RECEIVE_BUFFER)
            for message in messages(data):
                if message.kind != NLMSG_ERROR or message.sequence not in pending:
                    continue
                pending.discard(message.sequence)
                code = error_code(message)
                if code == 0:
                    done += 1
                elif code != tolerated:  # e.g. ENOENT: it ended meanwhile, nothing left to cut
                    raise NetlinkRequestError(code, f"conntrack request: {os.strerror(code)}")
        return done
