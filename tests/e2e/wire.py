"""Hand-made packets for attack tests: send any bytes from inside a pod, see what reaches another.

An attacker in a pod with CAP_NET_RAW (which container runtimes grant by default) can write any
IP header it likes: a raw socket of protocol ``IPPROTO_RAW`` sends the packet as given, source
address and hop limit included (``IP_HDRINCL`` is implied for IPv4 and IPv6, raw(7), ipv6(7)).
The pod's own kernel still routes it by its destination, to the node, where the agent decides.

What "arrives" means here: the frame appears on the target pod's ``eth0``, seen by a packet
socket (packet(7)) before the target's own IP stack could drop it. So "nothing arrived" is the
strongest claim: neither the kernel nor any program in the target pod ever saw the bytes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

from agent.lab.netns import entered
from agent.lab.topology import LEAF_IFNAME

ETH_P_ALL = 0x0003
"""linux/if_ether.h: every protocol, for a packet socket."""
_ETHERNET_HEADER_LEN = 14


def send_raw(netns: str, packet: bytes, count: int = 3) -> None:
    """Send the IP packet ``packet`` (header included) ``count`` times from inside ``netns``."""
    family = socket.AF_INET6 if packet[0] >> 4 == 6 else socket.AF_INET
    destination = (
        socket.inet_ntop(socket.AF_INET6, packet[24:40])
        if family == socket.AF_INET6
        else socket.inet_ntop(socket.AF_INET, packet[16:20])
    )
    with entered(netns):
        sender = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with sender:
        for _ in range(count):
            sender.sendto(packet, (destination, 0))


class Capture:
    """Every frame on ``eth0`` of a pod namespace from the moment it is opened."""

    def __init__(self, netns: str) -> None:
        with entered(netns):
            self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self._socket.bind((LEAF_IFNAME, 0))
        self._socket.setblocking(False)
        self.frames: list[bytes] = []

    def close(self) -> None:
        self._socket.close()

    def _drain(self, wait: float) -> None:
        poller = select.poll()
        poller.register(self._socket, select.POLLIN)
        if not poller.poll(int(wait * 1000)):
            return
        while True:
            try:
                frame = self._socket.recv(65535)
            except BlockingIOError:
                return
            self.frames.append(frame[_ETHERNET_HEADER_LEN:])

    def seen(self, marker: bytes, within: float) -> bool:
        """Whether a packet holding ``marker`` arrived, waiting up to ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            if any(marker in frame for frame in self.frames):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._drain(min(left, 0.1))


@contextlib.contextmanager
def capture(netns: str) -> Iterator[Capture]:
    """A ``Capture`` on ``netns``'s ``eth0``, closed afterwards."""
    sniffer = Capture(netns)
    try:
        yield sniffer
    finally:
        sniffer.close()
