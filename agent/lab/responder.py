"""The lab's echo server: what a pod "serves" so probes can tell allowed from blocked.

Run inside a pod's namespace::

    ip netns exec POD python -m agent.lab.responder --port 80/TCP --port 53/UDP

Every port listens on all addresses of the namespace, IPv4 and IPv6 alike (one ``::`` socket
with IPV6_V6ONLY off; IPv4 peers appear as ``::ffff:a.b.c.d``). TCP: read one line, write it
back, close. UDP: send each datagram back to its sender, *from the address it was sent to*
(IPV6_PKTINFO), so a probe's connected socket accepts the reply even on a multi-address host.

With ``--address`` (repeatable) every port listens on those addresses only, one socket per
address and port: what a hostNetwork pod in a node namespace does (``agent.lab.hostnet``), which
must leave the node's other addresses, and the ports other hostNetwork pods hold, alone. A UDP
socket bound to one address replies from it.

Standard library only and one ``selectors`` loop, so it starts in a few tens of milliseconds
and serves hundreds of concurrent probes. Prints exactly one line, ``ready``, once every socket
listens; errors go to stderr with exit status 1. SIGTERM and SIGINT end it with status 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal, NoReturn

Protocol = Literal["TCP", "UDP"]

MAX_LINE = 65536
"""Bytes of a TCP line at most; a longer line is echoed as far as it was read."""

IDLE_SECONDS = 10.0
"""A TCP connection that has not finished within this many seconds is closed."""

LISTEN_BACKLOG = 1024
"""Pending TCP connections per port (the kernel caps it at net.core.somaxconn)."""

_PKTINFO = struct.Struct("16sI")  # struct in6_pktinfo: in6_addr ipi6_addr; int ipi6_ifindex


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One port to serve."""

    port: int
    protocol: Protocol


def parse_port(text: str) -> PortSpec:
    """Parse ``80``, ``80/TCP`` or ``53/udp``; TCP when no protocol is given."""
    number, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if proto == "SCTP":
        raise ValueError(f"{text}: SCTP sockets are not available on this kernel")
    if proto not in ("TCP", "UDP"):
        raise ValueError(f"{text}: protocol must be TCP or UDP")
    try:
        port = int(number)
    except ValueError:
        raise ValueError(f"{text}: not a port number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{text}: port out of range")
    return PortSpec(port, "TCP" if proto == "TCP" else "UDP")


def parse_address(text: str) -> str:
    """An IPv4 or IPv6 address to listen on, in its canonical form."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text}: not an IP address") from None


def open_listener(spec: PortSpec, address: str | None = None) -> socket.socket:
    """A non-blocking socket serving ``spec`` on ``address``, or on every address, IPv6 and
    IPv4, when it is None.

    Every address falls back to IPv4 only when the namespace has no IPv6 (then UDP replies leave
    from the address the kernel's route lookup picks).
    """
    kind = socket.SOCK_STREAM if spec.protocol == "TCP" else socket.SOCK_DGRAM
    bound: tuple[str, int]
    if address is not None:
        bound = (address, spec.port)
        if ipaddress.ip_address(address).version == 4:
            sock = socket.socket(socket.AF_INET, kind)
        else:
            sock = socket.socket(socket.AF_INET6, kind)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    else:
        try:
            sock = socket.socket(socket.AF_INET6, kind)
        except OSError:
            sock = socket.socket(socket.AF_INET, kind)
            bound = ("0.0.0.0", spec.port)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if kind == socket.SOCK_DGRAM:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            bound = ("::", spec.port)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(bound)
        if kind == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class _Connection:
    """An accepted TCP connection: collecting its line, then writing it back."""

    started: float
    received: bytearray = field(default_factory=bytearray)
    outgoing: bytes | None = None
    """None while reading; the bytes still to send once the line is complete."""


class Responder:
    """The selector loop over all listeners and accepted connections."""

    def __init__(self, listeners: dict[socket.socket, PortSpec]) -> None:
        self._selector = selectors.DefaultSelector()
        self._listeners = listeners
        self._connections: dict[socket.socket, _Connection] = {}
        for sock in listeners:
            self._selector.register(sock, selectors.EVENT_READ)

    def serve_forever(self) -> NoReturn:
        """Serve until a signal handler raises (SystemExit on SIGTERM)."""
        while True:
            for key, events in self._selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                spec = self._listeners.get(sock)
                if spec is None:
                    self._on_connection(sock, events)
                elif spec.protocol == "TCP":
                    self._accept(sock)
                else:
                    self._echo_datagrams(sock)
            self._expire(time.monotonic())

    def close(self) -> None:
        for sock in [*self._connections, *self._listeners]:
            sock.close()
        self._connections.clear()
        self._selector.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNABORTED, EMFILE: drop this one, keep serving
                return
            conn.setblocking(False)
            self._connections[conn] = _Connection(started=time.monotonic())
            self._selector.register(conn, selectors.EVENT_READ)

    def _on_connection(self, conn: socket.socket, events: int) -> None:
        state = self._connections[conn]
        try:
            if state.outgoing is None and events & selectors.EVENT_READ:
                self._read(conn, state)
            if state.outgoing is not None:
                self._write(conn, state)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(conn)

    def _read(self, conn: socket.socket, state: _Connection) -> None:
        data = conn.recv(4096)
        if data:
            state.received += data
        newline = state.received.find(b"\n")
        if newline >= 0:
            state.outgoing = bytes(state.received[: newline + 1])
        elif not data or len(state.received) >= MAX_LINE:
            state.outgoing = bytes(state.received)  # EOF or too long: echo what came
        else:
            return
        self._selector.modify(conn, selectors.EVENT_WRITE)

    def _write(self, conn: socket.socket, state: _Connection) -> None:
        assert state.outgoing is not None
        if state.outgoing:
            sent = conn.send(state.outgoing)
            state.outgoing = state.outgoing[sent:]
        if not state.outgoing:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._connections.pop(conn, None)
        self._selector.unregister(conn)
        conn.close()

    def _expire(self, now: float) -> None:
        for conn, state in list(self._connections.items()):
            if now - state.started > IDLE_SECONDS:
                self._drop(conn)

    def _echo_datagrams(self, sock: socket.socket) -> None:
        ancillary_size = socket.CMSG_SPACE(_PKTINFO.size)
        for _ in range(256):  # drain, but let TCP work in between under a flood
            try:
                data, ancdata, _flags, peer = sock.recvmsg(65535, ancillary_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            reply_from = [
                (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _PKTINFO.pack(cdata[:16], 0))
                for level, kind, cdata in ancdata
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
            ]
            # Reply from the address the datagram was sent to (ifindex 0: let routing choose
            # the interface); for an IPv4 peer the kernel accepts the v4-mapped form.
            try:
                sock.sendmsg([data], reply_from, 0, peer)
            except OSError:
                continue


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.lab.responder",
        description="Echo server for lab pods (TCP: one line; UDP: every datagram).",
    )
    parser.add_argument(
        "--port",
        action="append",
        required=True,
        metavar="PORT[/PROTO]",
        help="port to serve, e.g. 80/TCP or 53/UDP (repeatable)",
    )
    parser.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="serve on this address only, IPv4 or IPv6 (repeatable; default: every address)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    listeners: dict[socket.socket, PortSpec] = {}
    try:
        specs = list(dict.fromkeys(parse_port(text) for text in args.port))
        addresses: list[str | None] = [parse_address(text) for text in args.address] or [None]
        for address in dict.fromkeys(addresses):
            for spec in specs:
                where = f"{address} " if address is not None else ""
                try:
                    listeners[open_listener(spec, address)] = spec
                except OSError as exc:
                    raise ValueError(
                        f"{where}{spec.port}/{spec.protocol}: {exc.strerror or exc}"
                    ) from exc
    except ValueError as exc:
        for sock in listeners:
            sock.close()
        print(f"responder: {exc}", file=sys.stderr)
        return 1
    responder = Responder(listeners)
    try:
        print("ready", flush=True)
        responder.serve_forever()
    except SystemExit:
        return 0
    finally:
        responder.close()


if __name__ == "__main__":
    sys.exit(main())
