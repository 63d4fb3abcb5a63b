"""Packets the firewall logs with NFLOG: how the flow log learns of connections the kernel
passes alone.

Between pods that no policy isolates the firewall queues nothing (that is what keeps them at
kernel speed), so the agent would never hear of them. When a flow log is on, the firewall ends
each of its chains with an ``NFLOG`` rule for the first packet of a connection (``--ctstate
NEW``): only traffic that no earlier rule queued reaches it, so a connection the queue decides
(and reports itself) costs nothing here, and a logged one costs the kernel one copy of its first
128 bytes. This module reads those copies from nfnetlink_log (``NETLINK_NETFILTER``, subsystem
``NFNL_SUBSYS_ULOG``; linux/netfilter/nfnetlink_log.h) and parses them with the packet path's
bounds-checked parser.

Why not conntrack's new-entry events: the kernel builds an event message for every new
connection as soon as anyone listens, the queued ones too, inside the packet's own path (the
queue's verdict call, in the fast path); that cost about a tenth of the agent's CPU per
connection in ``netpol-agent bench``, even when a socket filter threw the message away.

One socket per log group and network namespace may bind (the kernel answers EPERM to the next,
``nfulnl_recv_config``): ``NflogReader`` raises ``NetlinkRequestError`` then, and the caller
says so.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from enforcement.ctnetlink import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NetlinkParseError,
    NetlinkRequestError,
    attribute,
    attributes,
    error_code,
    messages,
    netfilter_message,
)
from enforcement.packets import MalformedPacket, PacketInfo, parse_packet

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

COPY_RANGE = 128
"""Bytes of each packet copied: the IP header, its extension headers and the ports."""
BATCH_PACKETS = 64
"""The kernel sends logged packets in batches of up to this many (``NFULA_CFG_QTHRESH``)..."""
BATCH_TIMEOUT_CS = 10
"""...or after this many hundredths of a second (``NFULA_CFG_TIMEOUT``), whichever is first."""
RECEIVE_BUFFER = 4 << 20
"""Bytes of backlog; past it the kernel drops logged packets (the reader sees ENOBUFS)."""

_PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
_CONFIG_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
_NFGENMSG_SIZE = 4
_BE32 = struct.Struct("!I")


def bind_request(group: int, sequence: int = 1) -> bytes:
    """The configuration message that binds ``group`` to the sending socket, copying packets
    (``COPY_RANGE`` bytes) in batches; acknowledged, so a refusal comes back as an error."""
    config = (
        attribute(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
        # struct nfulnl_msg_config_mode: __be32 copy_range, __u8 copy_mode, __u8 pad
        + attribute(NFULA_CFG_MODE, _BE32.pack(COPY_RANGE) + bytes([NFULNL_COPY_PACKET, 0]))
        + attribute(NFULA_CFG_QTHRESH, _BE32.pack(BATCH_PACKETS))
        + attribute(NFULA_CFG_TIMEOUT, _BE32.pack(BATCH_TIMEOUT_CS))
    )
    return netfilter_message(
        _CONFIG_TYPE,
        NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        socket.AF_UNSPEC,
        config,
        resource=group,
    )


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    packet: PacketInfo
    prefix: str
    """The rule's ``--nflog-prefix`` (empty without one): which rule logged the packet."""


def logged_packets(data: bytes) -> tuple[list[LoggedPacket], int]:
    """The packets of one read from the log socket, and how many messages were malformed."""
    packets: list[LoggedPacket] = []
    malformed = 0
    try:
        for message in messages(data):
            if message.kind != _PACKET_TYPE:
                continue
            try:
                payload, prefix = None, b""
                for kind, value in attributes(message.payload, _NFGENMSG_SIZE):
                    if kind == NFULA_PAYLOAD:
                        payload = value
                    elif kind == NFULA_PREFIX:
                        prefix = value.split(b"\0", 1)[0]  # NUL-terminated (nfulnl_log_packet)
                if payload is None:
                    malformed += 1
                    continue
                packets.append(
                    LoggedPacket(parse_packet(payload), prefix.decode("ascii", "replace"))
                )
            except (NetlinkParseError, MalformedPacket):
                malformed += 1
    except NetlinkParseError:
        malformed += 1
    return packets, malformed


class NflogReader:
    """The packets logged to one NFLOG group of the current network namespace (CAP_NET_ADMIN).

    ``receive`` returns what arrived within ``timeout``; an overrun of the receive buffer is
    counted in ``lost``, malformed messages in ``skipped``; neither is raised.
    """

    def __init__(self, group: int, timeout: float = 0.2) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._socket.bind((0, 0))
            self._socket.settimeout(2.0)
            self._socket.send(bind_request(group))
            self._acknowledged(group)
            self._socket.settimeout(timeout)
        except OSError:
            self._socket.close()
            raise
        self.lost = 0
        """Times the kernel reported logged packets lost to a full receive buffer."""
        self.skipped = 0

    def _acknowledged(self, group: int) -> None:
        while True:
            for message in messages(self._socket.recv(65536)):
                if message.kind == NLMSG_ERROR:
                    code = error_code(message)
                    if code:
                        raise NetlinkRequestError(
                            code, f"binding NFLOG group {group}: {errno.errorcode.get(code, code)}"
                        )
                    return

    def close(self) -> None:
        self._socket.close()

    def receive(self) -> list[LoggedPacket]:
        """The packets of one read (empty after ``timeout`` with nothing new)."""
        try:
            data = self._socket.recv(RECEIVE_BUFFER)
        except TimeoutError:
            return []
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            self.lost += 1
            return []
        packets, malformed = logged_packets(data)
        self.skipped += malformed
        return packets
