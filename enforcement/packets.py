"""Stage: packet parsing. Bounds-checked header parsing of the bytes NFQUEUE hands us.

``parse_packet(data)`` turns one raw IP packet (starting at the IP header; NFQUEUE gives no link
layer) into a ``PacketInfo``: addresses, the transport protocol, ports, TCP flags, ICMP type, code
and echo identifier, and for ICMP errors the quoted offending packet. It is a pure function on the
packet path: no I/O, no globals written, no allocation beyond the records it returns.

Contract:

- Every offset is checked against the end of the data before it is read. A header that runs past
  the end raises ``TruncatedPacket``; a field value that cannot be right raises ``CorruptPacket``.
  Both are ``MalformedPacket`` (a ``ValueError``); no other exception escapes for any input.
- The end of the data is the smaller of the captured length and the IP length field. NFQUEUE may
  copy only a prefix of a packet (``copy_range``), so a length field larger than the capture is
  not an error by itself; it only matters if a header we need is missing.
- Only the headers the decision needs are required: the IP header (IPv4 options and the IPv6
  extension header chain included) and the transport header. A first fragment too short to hold
  its transport header is truncated, which also stops the tiny-fragment attack (RFC 1858 3.1).
- A non-first fragment has ``fragment=True`` and no ports: its transport header is in another
  fragment (RFC 791, RFC 8200 4.5).
- An ICMPv6 neighbour discovery message (RFC 4861: types 133-137) gets ``neighbor_discovery=True``
  only when it passes every check RFC 4861 tells a receiver to make before it accepts one (the IP
  hop limit, the code, the length, the addresses, the options; see
  ``neighbor_discovery_problem``). A message that fails them is still a well-formed ICMPv6
  packet: it keeps ``neighbor_discovery=False`` and the reason in ``nd_problem``, and the decision
  judges it like any other packet. Only ND-typed messages pay for the checks.
- An ICMP or ICMPv6 error is parsed together with the packet it quotes (``embedded``). Quotes are
  short by design (RFC 792 quotes the IP header and 8 bytes), so a quote is parsed leniently: its
  length field may exceed what is there and only the first 8 transport bytes are required. A quote
  that still cannot be parsed (too short for its addresses or ports, wrong IP version, corrupt)
  leaves ``embedded=None`` instead of failing the whole packet: the decision then finds no related
  flow and drops the error, the safe side, while a well-formed error still gets a verdict.

Protocols: IPv4 (RFC 791), IPv6 (RFC 8200) with Hop-by-Hop, Routing, Fragment, Destination
Options and AH (RFC 4302) extension headers, TCP (RFC 9293), UDP (RFC 768), UDP-Lite (RFC 3828),
SCTP (RFC 9260), DCCP (RFC 4340), ICMP (RFC 792), ICMPv6 (RFC 4443) and its neighbour discovery
messages (RFC 4861, RFC 6980). Anything else is returned with its protocol number and no ports.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .model import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

# IANA protocol numbers beyond those in model.py. In IPv6 the extension headers share the
# next-header number space with the transport protocols.
IPPROTO_HOPOPTS = 0
IPPROTO_DCCP = 33
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_UDPLITE = 136

MAX_EXTENSION_HEADERS = 8
"""Longest IPv6 extension header chain we walk. RFC 8200 4.1 recommends at most one of each
header (two Destination Options), i.e. six; a longer chain is an attack on the walker."""

# Header layouts, network byte order. "x" skips fields the decision does not need.
_IPV4 = struct.Struct("!BxH2xHxB2x4s4s")
"""Version/IHL, total length, flags/fragment offset, protocol, source, destination."""
_IPV6 = struct.Struct("!4xHBB16s16s")
"""Payload length, next header, hop limit, source, destination."""
_PORTS = struct.Struct("!HH")
"""Source and destination port: the first 4 bytes of TCP, UDP, UDP-Lite, SCTP and DCCP."""
_TCP = struct.Struct("!HH8xBB")
"""Ports, data offset (high nibble), flags."""
_ICMP = struct.Struct("!BB2xH")
"""Type, code, and the identifier of an echo request or reply."""

_IPV4_HEADER_LEN = 20
_IPV6_HEADER_LEN = 40
_TCP_HEADER_LEN = 20
_ICMP_HEADER_LEN = 8
"""Every ICMP and ICMPv6 message has at least 8 bytes of header (RFC 792, RFC 4443 2.1)."""
_QUOTED_TRANSPORT_LEN = 8
"""How much of the transport header an ICMP error is sure to quote (RFC 792: 64 bits)."""

_IPV4_MORE_FRAGMENTS = 0x2000
_IPV4_FRAGMENT_OFFSET = 0x1FFF

_PORT_HEADER_LEN: dict[int, int] = {
    IPPROTO_UDP: 8,  # RFC 768
    IPPROTO_UDPLITE: 8,  # RFC 3828 3.1
    IPPROTO_SCTP: 12,  # RFC 9260 3.1, the common header
    IPPROTO_DCCP: 12,  # RFC 4340 5.1, the generic header without extended sequence numbers
}
"""Protocols other than TCP whose header starts with the two ports, and their header length."""

_IPV6_EXTENSION_HEADERS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_DSTOPTS}
)
"""The headers the walk steps over. ESP (50) hides everything after it and No Next Header (59)
has nothing after it, so both end the walk as the packet's protocol, as in Linux's
ipv6_skip_exthdr."""

_ICMP_PROTOCOLS = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})
_ICMP_ECHO = frozenset({0, 8})
_ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
"""Destination unreachable, source quench, redirect, time exceeded, parameter problem: the ICMP
messages that quote the offending packet (RFC 792)."""
_ICMPV6_ECHO = frozenset({128, 129})
_ICMPV6_ERRORS = frozenset({1, 2, 3, 4})
"""Destination unreachable, packet too big, time exceeded, parameter problem (RFC 4443 3)."""

# RFC 4861 section 4: the neighbour discovery messages.
ND_ROUTER_SOLICITATION = 133
ND_ROUTER_ADVERTISEMENT = 134
ND_NEIGHBOR_SOLICITATION = 135
ND_NEIGHBOR_ADVERTISEMENT = 136
ND_REDIRECT = 137
NEIGHBOR_DISCOVERY_TYPES = frozenset(
    {
        ND_ROUTER_SOLICITATION,
        ND_ROUTER_ADVERTISEMENT,
        ND_NEIGHBOR_SOLICITATION,
        ND_NEIGHBOR_ADVERTISEMENT,
        ND_REDIRECT,
    }
)
ND_HOP_LIMIT = 255
"""The hop limit every ND message is sent with and must arrive with (RFC 4861 6.1, 7.1, 8.1): a
router on the way would have decremented it, so 255 proves the sender is on the same link."""

_ND_RULES: dict[int, tuple[int, str]] = {
    ND_ROUTER_SOLICITATION: (8, "RFC 4861 6.1.1"),
    ND_ROUTER_ADVERTISEMENT: (16, "RFC 4861 6.1.2"),
    ND_NEIGHBOR_SOLICITATION: (24, "RFC 4861 7.1.1"),
    ND_NEIGHBOR_ADVERTISEMENT: (24, "RFC 4861 7.1.2"),
    ND_REDIRECT: (40, "RFC 4861 8.1"),
}
"""Per message: the least ICMP length a receiver accepts (the fixed part before the options,
RFC 4861 4.1-4.5), and the section that lists the receiver's validity checks."""
_ND_TARGET = 8
"""Offset of the Target Address in a neighbour solicitation, advertisement and redirect."""
_ND_REDIRECT_DESTINATION = 24
"""Offset of a redirect's Destination Address (RFC 4861 4.5)."""
_ND_SOLICITED_FLAG = 0x40
"""The S flag, in the first byte after an advertisement's ICMP header (RFC 4861 4.4)."""
_ND_OPTION_SOURCE_LINK_LAYER = 1
"""Source Link-Layer Address option (RFC 4861 4.6.1)."""
_IPV6_UNSPECIFIED = bytes(16)
_SOLICITED_NODE_PREFIX = bytes.fromhex("ff0200000000000000000001ff")
"""ff02::1:ff00:0/104, the solicited-node multicast prefix (RFC 4291 2.7.1)."""


class MalformedPacket(ValueError):
    """The bytes are not a packet we can judge. The decision drops these."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} at offset {offset}")
        self.offset = offset
        """Byte offset into the data where the problem is."""


class TruncatedPacket(MalformedPacket):
    """A header runs past the end of the data (the capture or the IP length, whichever is less)."""


class CorruptPacket(MalformedPacket):
    """A header field holds a value that cannot be right."""


@dataclass(slots=True)
class PacketInfo:
    """What the decision needs from one packet; addresses stay packed bytes (cheap dict keys)."""

    family: int
    """4 or 6."""
    src: bytes
    """Packed source address: 4 bytes for IPv4, 16 for IPv6."""
    dst: bytes
    protocol: int
    """The transport protocol number (after IPv6 extension headers): 6 TCP, 17 UDP, 132 SCTP,
    1 ICMP, 58 ICMPv6, ... For a non-first IPv6 fragment: the Fragment header's next header."""
    src_port: int | None = None
    """TCP/UDP/SCTP ports; None for protocols without ports and for non-first fragments."""
    dst_port: int | None = None
    tcp_flags: int = 0
    """The TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...); 0 otherwise."""
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    """The echo identifier for ICMP/ICMPv6 echo request and reply; None otherwise."""
    embedded: PacketInfo | None = None
    """For ICMP/ICMPv6 error messages: the offending packet's header quoted in the error."""
    fragment: bool = False
    """True for a non-first fragment, which carries no transport header (RFC 791, RFC 8200 4.5)."""
    length: int = 0
    """Total length of the packet in bytes, as handed over by the kernel. For an embedded packet:
    the number of quoted bytes."""
    neighbor_discovery: bool = False
    """True only for an ICMPv6 neighbour discovery message that passes every validity check of
    RFC 4861 (and RFC 6980): what a receiver on the link would accept. Never set in a quote."""
    nd_problem: str | None = None
    """For an ND-typed message (ICMPv6 133-137) that fails those checks: the first one it
    fails, for logs. None otherwise."""


def parse_packet(data: bytes) -> PacketInfo:
    """Parse one raw IPv4 or IPv6 packet, starting at the IP header.

    Raises ``TruncatedPacket`` or ``CorruptPacket`` (both ``MalformedPacket``) and nothing else.
    """
    if not data:
        raise TruncatedPacket("empty packet", 0)
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data, 0, len(data), False)
    if version == 6:
        return _parse_ipv6(data, 0, len(data), False)
    raise CorruptPacket(f"IP version {version}", 0)


def _parse_ipv4(data: bytes, start: int, end: int, quoted: bool) -> PacketInfo:
    """The IPv4 packet at ``data[start:end]`` (RFC 791 3.1); ``quoted`` for an ICMP quote."""
    length = end - start
    if length < _IPV4_HEADER_LEN:
        raise TruncatedPacket(f"IPv4 header needs 20 bytes, has {length}", start)
    ver_ihl, total_length, fragment_field, protocol, src, dst = _IPV4.unpack_from(data, start)
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < _IPV4_HEADER_LEN:
        raise CorruptPacket(f"IPv4 IHL {header_len // 4} < 5", start)
    if total_length < header_len:
        raise CorruptPacket(f"IPv4 total length {total_length} < header length {header_len}", start)
    # The datagram ends at its total length; bytes after it are not ours. A total length beyond
    # the capture is fine (partial copy, or a quote in an ICMP error): the capture bounds us.
    if start + total_length < end:
        end = start + total_length
    offset = start + header_len
    if offset > end:
        raise TruncatedPacket(f"IPv4 options need {header_len - 20} bytes", start + 20)
    fragment_offset = fragment_field & _IPV4_FRAGMENT_OFFSET
    if fragment_offset:
        # RFC 1858 3.2: a TCP fragment at offset 1 (8 bytes) can only exist to overwrite the
        # flags of the first fragment's header when reassembled; no sender produces one.
        if fragment_offset == 1 and protocol == IPPROTO_TCP:
            raise CorruptPacket("IPv4 TCP fragment offset 1 (RFC 1858)", start + 6)
        # A non-first fragment: its transport header travels in the first fragment (RFC 791).
        return PacketInfo(4, src, dst, protocol, fragment=True, length=length)
    # A first fragment (MF set, offset 0) starts with the transport header: parse it normally.
    return _parse_transport(data, offset, end, 4, src, dst, protocol, length, quoted)


def _parse_ipv6(data: bytes, start: int, end: int, quoted: bool) -> PacketInfo:
    """The IPv6 packet at ``data[start:end]`` (RFC 8200 3-4); ``quoted`` for an ICMPv6 quote."""
    length = end - start
    if length < _IPV6_HEADER_LEN:
        raise TruncatedPacket(f"IPv6 header needs 40 bytes, has {length}", start)
    payload_length, next_header, hop_limit, src, dst = _IPV6.unpack_from(data, start)
    offset = start + _IPV6_HEADER_LEN
    captured_end = end
    # Payload length 0 announces a jumbogram (RFC 2675), whose real length is in a Hop-by-Hop
    # option; we do not read it and let the capture bound the packet instead.
    if payload_length and offset + payload_length < end:
        end = offset + payload_length
    fragmented = False
    if next_header in _IPV6_EXTENSION_HEADERS:
        offset, next_header, fragmented, fragment_offset = _walk_ipv6_extensions(
            data, offset, end, next_header
        )
        if fragment_offset:
            # A non-first fragment: what follows is the middle of the original payload.
            return PacketInfo(6, src, dst, next_header, fragment=True, length=length)
    info = _parse_transport(data, offset, end, 6, src, dst, next_header, length, quoted)
    if next_header == IPPROTO_ICMPV6 and info.icmp_type in NEIGHBOR_DISCOVERY_TYPES and not quoted:
        # Only ND-typed messages pay for the checks; the rest pay one or two comparisons.
        datagram_end = start + _IPV6_HEADER_LEN + payload_length if payload_length else 0
        problem = neighbor_discovery_problem(
            data, offset, datagram_end, captured_end, src, dst, hop_limit, fragmented
        )
        info.neighbor_discovery = problem is None
        info.nd_problem = problem
    return info


def _walk_ipv6_extensions(
    data: bytes, offset: int, end: int, next_header: int
) -> tuple[int, int, bool, int]:
    """Step over the IPv6 extension headers starting at ``offset``.

    Returns where the upper-layer header starts, its protocol number, whether a Fragment header
    was passed, and that header's fragment offset (non-zero: a non-first fragment, whose
    "upper-layer header" is the middle of the original payload).
    """
    count = 0
    fragmented = False
    while next_header in _IPV6_EXTENSION_HEADERS:
        if count == MAX_EXTENSION_HEADERS:
            raise CorruptPacket(f"more than {MAX_EXTENSION_HEADERS} IPv6 extension headers", offset)
        # RFC 8200 4.3: Hop-by-Hop Options may only follow the IPv6 header immediately.
        if next_header == IPPROTO_HOPOPTS and count:
            raise CorruptPacket("IPv6 Hop-by-Hop Options header not first", offset)
        count += 1
        # Every extension header is at least 8 bytes long (RFC 8200 4.2-4.6; AH has 12).
        if end - offset < 8:
            raise TruncatedPacket(f"IPv6 extension header {next_header} needs 8 bytes", offset)
        if next_header == IPPROTO_FRAGMENT:
            # RFC 8200 4.5: fixed 8 bytes; offset in 8-byte units in the top 13 bits of 2..3.
            fragment_offset = (data[offset + 2] << 5) | (data[offset + 3] >> 3)
            next_header = data[offset]
            offset += 8
            fragmented = True
            if fragment_offset:
                return offset, next_header, fragmented, fragment_offset
            # A first (or atomic, RFC 6946) fragment: the header chain continues in it.
            continue
        if next_header == IPPROTO_AH:
            # RFC 4302 2.2: AH counts its length in 4-byte words, minus 2.
            header_len = (data[offset + 1] + 2) * 4
        else:
            # RFC 8200 4.3-4.6: Hop-by-Hop, Routing and Destination Options count their length
            # in 8-byte units, not including the first 8 bytes.
            header_len = (data[offset + 1] + 1) * 8
        if end - offset < header_len:
            raise TruncatedPacket(
                f"IPv6 extension header {next_header} needs {header_len} bytes", offset
            )
        next_header = data[offset]
        offset += header_len
    return offset, next_header, fragmented, 0


def neighbor_discovery_problem(
    data: bytes,
    offset: int,
    datagram_end: int,
    captured_end: int,
    src: bytes,
    dst: bytes,
    hop_limit: int,
    fragmented: bool,
) -> str | None:
    """Why the ND message at ``data[offset:]`` is not one a receiver may accept, or None.

    ``datagram_end`` is where the IPv6 payload length says the packet ends (0 for a jumbogram),
    ``captured_end`` where the captured bytes end; ``fragmented``: a Fragment header came before.
    The caller has checked that the ICMPv6 header (8 bytes) is there and its type is 133-137.

    The checks are the receiver's validity checks of RFC 4861 6.1.1 (router solicitation), 6.1.2
    (router advertisement), 7.1.1 (neighbour solicitation), 7.1.2 (neighbour advertisement) and
    8.1 (redirect), in the order below, plus RFC 6980 5 (a receiver ignores ND in a fragmented
    packet; Linux drops those too, net.ipv6.conf.*.suppress_frag_ndisc=1). Not checked:

    - the ICMPv6 checksum: it guards against corruption, not against a sender, who can always
      make it right; and the agent may hold only a prefix of the packet (NFQUEUE's copy range);
    - an Authentication Header's validity (the receiver's IPsec state), and the redirect rule
      "sent by the current first-hop router for that destination" (the receiver's routing table).

    The whole message must lie within the captured bytes, or its options cannot be checked: a
    longer one (more than the copy range) is not taken for ND. The hop limit check is what keeps
    ND on one link: routers decrement it before forwarding, Linux before the FORWARD hook runs
    (ip6_forward), so a message routed through the node never shows 255 to the agent.
    """
    icmp_type = data[offset]
    minimum, section = _ND_RULES[icmp_type]
    if fragmented:
        return "in a fragmented packet (RFC 6980 5)"
    if hop_limit != ND_HOP_LIMIT:
        return f"hop limit {hop_limit}, not {ND_HOP_LIMIT} ({section})"
    code = data[offset + 1]
    if code:
        return f"code {code}, not 0 ({section})"
    if not datagram_end:
        return "in a jumbogram: no ICMP length to check (RFC 2675)"
    icmp_length = datagram_end - offset
    if icmp_length < minimum:
        return f"ICMP length {icmp_length} < {minimum} ({section})"
    if datagram_end > captured_end:
        return f"ends at byte {datagram_end}, past the {captured_end} captured: options unchecked"
    if src[0] == 0xFF:
        return "multicast source address (RFC 4291 2.7)"
    unspecified = src == _IPV6_UNSPECIFIED
    if icmp_type in (ND_ROUTER_ADVERTISEMENT, ND_REDIRECT) and not _is_link_local(src):
        return f"source address not link-local ({section})"
    if (
        icmp_type in (ND_NEIGHBOR_SOLICITATION, ND_NEIGHBOR_ADVERTISEMENT)
        and data[offset + _ND_TARGET] == 0xFF
    ):
        return f"multicast target address ({section})"
    if icmp_type == ND_NEIGHBOR_SOLICITATION:
        if unspecified and not dst.startswith(_SOLICITED_NODE_PREFIX):
            return f"unspecified source to a non-solicited-node destination ({section})"
    elif icmp_type == ND_NEIGHBOR_ADVERTISEMENT:
        if dst[0] == 0xFF and data[offset + 4] & _ND_SOLICITED_FLAG:
            return f"solicited flag set towards a multicast destination ({section})"
    elif icmp_type == ND_REDIRECT:
        target = data[offset + _ND_TARGET : offset + _ND_REDIRECT_DESTINATION]
        destination = data[offset + _ND_REDIRECT_DESTINATION : offset + minimum]
        if destination[0] == 0xFF:
            return f"multicast destination address ({section})"
        if not _is_link_local(target) and target != destination:
            return f"target neither link-local nor the destination ({section})"
    # RFC 4861 4.6: options follow the fixed part, each with a length in units of 8 octets.
    option = offset + minimum
    while option < datagram_end:
        if datagram_end - option < 2:
            return f"option at byte {option} cut short ({section})"
        units = data[option + 1]
        if not units:
            return f"option at byte {option} has length 0 ({section})"
        if option + units * 8 > datagram_end:
            return f"option at byte {option} runs past the message ({section})"
        if unspecified and data[option] == _ND_OPTION_SOURCE_LINK_LAYER:
            return f"source link-layer address option from the unspecified address ({section})"
        option += units * 8
    return None


def _is_link_local(address: bytes) -> bool:
    """fe80::/10 (RFC 4291 2.5.6)."""
    return address[0] == 0xFE and address[1] & 0xC0 == 0x80


def _parse_transport(
    data: bytes,
    offset: int,
    end: int,
    family: int,
    src: bytes,
    dst: bytes,
    protocol: int,
    length: int,
    quoted: bool,
) -> PacketInfo:
    """The transport header at ``data[offset:end]``, and the ``PacketInfo`` of the whole packet.

    In a quote (``quoted``) only the first 8 transport bytes are required (RFC 792), the TCP
    data offset is not checked, TCP flags are read only if the quote reaches them (else 0), and a
    quoted ICMP error is not parsed further (RFC 1122 3.2.2: no ICMP error is sent about an ICMP
    error, so its quote names no flow of ours).
    """
    available = end - offset
    if protocol == IPPROTO_TCP:
        if quoted:
            if available < _QUOTED_TRANSPORT_LEN:
                raise TruncatedPacket(f"quoted TCP header needs 8 bytes, has {available}", offset)
            src_port, dst_port = _PORTS.unpack_from(data, offset)
            flags = data[offset + 13] if available > 13 else 0
            return PacketInfo(family, src, dst, protocol, src_port, dst_port, flags, length=length)
        if available < _TCP_HEADER_LEN:
            raise TruncatedPacket(f"TCP header needs 20 bytes, has {available}", offset)
        src_port, dst_port, data_offset, flags = _TCP.unpack_from(data, offset)
        header_len = (data_offset >> 4) * 4
        if header_len < _TCP_HEADER_LEN:
            raise CorruptPacket(f"TCP data offset {header_len // 4} < 5", offset + 12)
        if header_len > available:
            raise TruncatedPacket(f"TCP options need {header_len - 20} bytes", offset + 20)
        return PacketInfo(family, src, dst, protocol, src_port, dst_port, flags, length=length)

    header_len = _PORT_HEADER_LEN.get(protocol, 0)
    if header_len:
        if quoted and header_len > _QUOTED_TRANSPORT_LEN:
            header_len = _QUOTED_TRANSPORT_LEN
        if available < header_len:
            raise TruncatedPacket(
                f"protocol {protocol} header needs {header_len} bytes, has {available}", offset
            )
        src_port, dst_port = _PORTS.unpack_from(data, offset)
        return PacketInfo(family, src, dst, protocol, src_port, dst_port, length=length)

    if protocol in _ICMP_PROTOCOLS:
        if available < _ICMP_HEADER_LEN:
            raise TruncatedPacket(f"ICMP header needs 8 bytes, has {available}", offset)
        icmp_type, icmp_code, identifier = _ICMP.unpack_from(data, offset)
        if protocol == IPPROTO_ICMP:
            echo, error, quote_version = icmp_type in _ICMP_ECHO, icmp_type in _ICMP_ERRORS, 4
        else:
            echo, error, quote_version = icmp_type in _ICMPV6_ECHO, icmp_type in _ICMPV6_ERRORS, 6
        if echo:
            return PacketInfo(
                family,
                src,
                dst,
                protocol,
                icmp_type=icmp_type,
                icmp_code=icmp_code,
                icmp_id=identifier,
                length=length,
            )
        embedded = None
        if error and not quoted:
            embedded = _parse_quote(data, offset + _ICMP_HEADER_LEN, end, quote_version)
        return PacketInfo(
            family,
            src,
            dst,
            protocol,
            icmp_type=icmp_type,
            icmp_code=icmp_code,
            embedded=embedded,
            length=length,
        )

    # No ports to find: ESP, AH in IPv4, No Next Header, GRE, ...
    return PacketInfo(family, src, dst, protocol, length=length)


def _parse_quote(data: bytes, start: int, end: int, version: int) -> PacketInfo | None:
    """The offending packet quoted by an ICMP error at ``data[start:end]``, or None.

    None if the quote is not an IP packet of the error's own version (RFC 792 quotes IPv4,
    RFC 4443 IPv6) or cannot be parsed: see the module docstring for why that is safe.
    """
    if start >= end or data[start] >> 4 != version:
        return None
    try:
        if version == 4:
            return _parse_ipv4(data, start, end, True)
        return _parse_ipv6(data, start, end, True)
    except MalformedPacket:
        return None


# --- Formatting for logs and traces (not on the packet path) ---

_PROTOCOL_NAMES: dict[int, str] = {
    IPPROTO_ICMP: "ICMP",
    IPPROTO_TCP: "TCP",
    IPPROTO_UDP: "UDP",
    IPPROTO_DCCP: "DCCP",
    IPPROTO_ESP: "ESP",
    IPPROTO_AH: "AH",
    IPPROTO_ICMPV6: "ICMPv6",
    IPPROTO_NONE: "no-next-header",
    IPPROTO_SCTP: "SCTP",
    IPPROTO_UDPLITE: "UDP-Lite",
}

_TCP_FLAG_LETTERS = "FSRPAUEC"
"""One letter per TCP flag bit, lowest first (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR), as
scapy writes them."""

_ICMP_TYPE_NAMES: dict[int, str] = {
    0: "echo-reply",
    3: "dest-unreachable",
    4: "source-quench",
    5: "redirect",
    8: "echo-request",
    11: "time-exceeded",
    12: "parameter-problem",
    13: "timestamp-request",
    14: "timestamp-reply",
}
_ICMPV6_TYPE_NAMES: dict[int, str] = {
    1: "dest-unreachable",
    2: "packet-too-big",
    3: "time-exceeded",
    4: "parameter-problem",
    128: "echo-request",
    129: "echo-reply",
    130: "mld-query",
    131: "mld-report",
    132: "mld-done",
    133: "router-solicitation",
    134: "router-advertisement",
    135: "neighbor-solicitation",
    136: "neighbor-advertisement",
    137: "redirect",
    143: "mldv2-report",
}


def format_packet(info: PacketInfo) -> str:
    """One line for logs and traces, e.g. ``TCP 10.244.1.2:34567 -> 10.244.1.3:80 [S]``.

    IPv6 addresses are bracketed when a port follows (``[fd00::1]:80``); an ICMP error ends with
    the quoted packet in parentheses.
    """
    name = _PROTOCOL_NAMES.get(info.protocol, f"proto-{info.protocol}")
    src, dst = _format_address(info.src), _format_address(info.dst)
    if info.src_port is not None and info.dst_port is not None:
        if info.family == 6:
            src, dst = f"[{src}]", f"[{dst}]"
        text = f"{name} {src}:{info.src_port} -> {dst}:{info.dst_port}"
    else:
        text = f"{name} {src} -> {dst}"
    if info.protocol == IPPROTO_TCP and not info.fragment:
        flags = "".join(
            letter for bit, letter in enumerate(_TCP_FLAG_LETTERS) if info.tcp_flags >> bit & 1
        )
        text += f" [{flags or 'none'}]"
    if info.icmp_type is not None:
        names = _ICMPV6_TYPE_NAMES if info.protocol == IPPROTO_ICMPV6 else _ICMP_TYPE_NAMES
        text += " " + names.get(info.icmp_type, f"type={info.icmp_type}")
        if info.icmp_code:
            text += f" code={info.icmp_code}"
        if info.icmp_id is not None:
            text += f" id={info.icmp_id}"
    if info.nd_problem is not None:
        text += f" (not neighbour discovery: {info.nd_problem})"
    if info.fragment:
        text += " fragment"
    if info.embedded is not None:
        text += f" quoting ({format_packet(info.embedded)})"
    return text


def _format_address(packed: bytes) -> str:
    if len(packed) in (4, 16):
        return str(ipaddress.ip_address(packed))
    return packed.hex()  # not an address; show the bytes rather than fail in a log line
