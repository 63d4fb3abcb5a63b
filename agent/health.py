"""HTTP endpoints of the daemon: liveness (/healthz), readiness (/readyz), Prometheus (/metrics).

Metrics are collected at scrape time from counters the agent keeps anyway (``agent.metrics``),
so the packet path pays nothing for them: it never touches a Prometheus object.

The port is on the node's network (the agent runs with ``hostNetwork``), so every pod can reach
it and no NetworkPolicy can protect it (policies select pods, and the agent is not one the CNI
enforces). The server is therefore built to be flooded: one thread whatever the number of
connections, a deadline on every request, a bound on open connections, and an allow-list of
sources (``--health-allow``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest

from agent.logs import fields
from agent.metrics import agent_registry
from enforcement.model import IPNetwork

if TYPE_CHECKING:
    from agent.runner import Agent

log = logging.getLogger(__name__)

STALE_AFTER = 30.0
"""Seconds without a turn of the sync loop after which the agent reports itself unhealthy."""
DEFAULT_HEALTH_PORT = 9877
"""The default port of /healthz, /readyz and /metrics, on the node's addresses. Chosen clear of
what else listens on nodes: Calico Felix's health port (9099), node-exporter (9100), Cilium's
agent, operator and Hubble ports (9962-9965, 9879, 9890), and the kubelet, kube-proxy,
controller-manager and scheduler (10248-10259)."""
READ_TIMEOUT = 3.0
"""Seconds a client has to send its request; the kubelet's probes send it at once and give up
after their own ``timeoutSeconds`` (3 in daemonset.yaml)."""
MAX_CONNECTIONS = 64
"""Connections held open at once (a probe or scrape needs one for a few milliseconds)."""
LISTEN_BACKLOG = 1024
"""The listen backlog; the kernel caps it at net.core.somaxconn (4096 since Linux 5.4)."""
LINGER = 1.0
"""Seconds a connection is kept after its response, reading until the client closes."""
MAX_REQUEST_HEAD = 8192
"""Bytes of request line and headers read at most; a longer head is answered 431."""


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Where and how the endpoints are served."""

    address: str = "0.0.0.0"
    """Address to listen on; ``0.0.0.0`` or ``::`` for all of the node's addresses."""
    port: int = DEFAULT_HEALTH_PORT
    """TCP port; 0 picks a free one (tests)."""
    allow: tuple[IPNetwork, ...] = ()
    """Source ranges that may connect; empty allows every source. The node itself (a connection
    to the listening address from that same address, as the kubelet's probes are) is always
    allowed."""
    read_timeout: float = READ_TIMEOUT
    """Seconds a client has to send its whole request before the connection is closed."""
    max_connections: int = MAX_CONNECTIONS
    """Connections held open at once; a new one beyond this closes the oldest."""
    backlog: int = LISTEN_BACKLOG
    """Listen backlog: connections the kernel completes before the server accepts them."""


def parse_allow(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``--health-allow`` values as networks; ValueError names the value that is not a CIDR."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--health-allow {value!r}: not an address or CIDR") from None
    return tuple(networks)


@dataclass(slots=True)
class _Connection:
    """One client connection of the event loop."""

    sock: socket.socket
    deadline: float
    """Monotonic time at which the connection is closed, answered or not."""
    received: bytearray = field(default_factory=bytearray)
    outgoing: memoryview | None = None
    """The response still to send, once the request has been read."""
    draining: bool = False
    """The response is sent; reading what the client still sends until it closes."""


class HealthServer:
    """Serves the endpoints from one thread until ``close``.

    One event loop (``selectors``) instead of a thread per connection: a flood of connections
    costs file descriptors, never threads. Every connection must deliver its request head
    within ``read_timeout`` and gets one response (HTTP/1.0, ``Connection: close``); at most
    ``max_connections`` are held, a new one beyond that closes the oldest. Sources outside
    ``allow`` are closed at once without a response.
    """

    def __init__(self, agent: Agent, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        registry = agent_registry(agent)
        self._agent = agent
        self._registry = registry
        family = socket.AF_INET6 if ":" in self.config.address else socket.AF_INET
        self._listener = socket.create_server(
            (self.config.address, self.config.port),
            family=family,
            backlog=self.config.backlog,
            dualstack_ipv6=family == socket.AF_INET6 and self.config.address == "::",
        )
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._connections: dict[socket.socket, _Connection] = {}
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self._stopping = threading.Event()
        self.refused = 0
        """Connections closed without a response: outside the allow-list, over the bound, or
        too slow."""
        self.thread = threading.Thread(target=self._serve, name="health", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        allowed = ", ".join(map(str, self.config.allow)) or "any source"
        log.info(
            "serving health and metrics",
            extra=fields(address=self.config.address, port=self.port, allow=allowed),
        )
        return self

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wakeup_write.send(b"x")
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for connection in list(self._connections.values()):
            self._drop(connection)
        self._selector.close()
        for sock in (self._listener, self._wakeup_read, self._wakeup_write):
            sock.close()

    # -- event loop (the health thread only) --------------------------------------------------

    def _serve(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wakeup_read, selectors.EVENT_READ)
        while not self._stopping.is_set():
            for key, events in self._selector.select(timeout=self._next_timeout()):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif sock is self._wakeup_read:
                    return
                else:
                    connection = self._connections.get(sock)  # type: ignore[call-overload]
                    if connection is None:
                        continue
                    try:
                        self._service(connection, events)
                    except Exception:  # one bad connection must not end the server
                        log.exception("health: error serving a connection")
                        self._drop(connection)
            self._expire()

    def _service(self, connection: _Connection, events: int) -> None:
        if connection.draining:
            self._drain(connection)
        elif events & selectors.EVENT_READ and connection.outgoing is None:
            self._read(connection)
        elif events & selectors.EVENT_WRITE:
            self._write(connection)

    def _next_timeout(self) -> float:
        if not self._connections:
            return 1.0
        earliest = min(connection.deadline for connection in self._connections.values())
        return max(0.0, min(1.0, earliest - time.monotonic()))

    def _accept(self) -> None:
        # Drain what the kernel completed: a flood must not outgrow the backlog while we wait.
        for _ in range(self.config.backlog):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and friends: keep serving what is open
                log.warning("health: accept failed", extra=fields(error=str(error)))
                return
            if not self._allowed(sock, peer[0]):
                self.refused += 1
                sock.close()
                continue
            if len(self._connections) >= self.config.max_connections:
                oldest = min(self._connections.values(), key=lambda c: c.deadline)
                self.refused += 1
                self._drop(oldest)
            sock.setblocking(False)
            connection = _Connection(sock, time.monotonic() + self.config.read_timeout)
            self._connections[sock] = connection
            self._selector.register(sock, selectors.EVENT_READ)

    def _allowed(self, sock: socket.socket, peer: str) -> bool:
        if not self.config.allow:
            return True
        try:
            source = ipaddress.ip_address(peer.split("%", 1)[0])
            own = ipaddress.ip_address(sock.getsockname()[0].split("%", 1)[0])
        except (ValueError, OSError):
            return False
        if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is not None:
            source = source.ipv4_mapped
        if isinstance(own, ipaddress.IPv6Address) and own.ipv4_mapped is not None:
            own = own.ipv4_mapped
        if source == own:
            # The node itself: a connection to one of the node's addresses from that same
            # address (the kernel picks it as the source of a local connection), which is how
            # the kubelet's probes of a hostNetwork pod arrive.
            return True
        return any(source in network for network in self.config.allow)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(MAX_REQUEST_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(connection)
            return
        if not data:
            self._drop(connection)
            return
        connection.received += data
        head_end = connection.received.find(b"\r\n\r\n")
        if head_end < 0:
            if len(connection.received) >= MAX_REQUEST_HEAD:
                self._respond(connection, 431, b"request head too large\n")
            return
        try:
            answer = self._answer(bytes(connection.received[:head_end]))
        except Exception:  # a failing collector must not take the probes down with it
            log.exception("health: error answering a request")
            answer = (500, b"internal error, see the agent's log\n", "text/plain")
        self._respond(connection, *answer)

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, b"bad request\n", "text/plain"
        method, target = parts[0], parts[1]
        if method != "GET":
            return 405, b"only GET\n", "text/plain"
        return endpoint(self._agent, self._registry, target.split("?", 1)[0])

    def _respond(
        self, connection: _Connection, code: int, body: bytes, content_type: str = "text/plain"
    ) -> None:
        reason = HTTPStatus(code).phrase
        head = (
            f"HTTP/1.0 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        connection.outgoing = memoryview(head + body)
        self._selector.modify(connection.sock, selectors.EVENT_WRITE)
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        outgoing = connection.outgoing
        if outgoing is None:
            return
        try:
            sent = connection.sock.send(outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(connection)
            return
        connection.outgoing = outgoing[sent:]
        if not connection.outgoing:
            # Half-close, then read to the client's end: closing with unread request bytes
            # would send a reset, which can destroy the response before the client reads it
            # (RFC 9112 section 9.6, "tear-down").
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            connection.draining = True
            connection.deadline = min(connection.deadline, time.monotonic() + LINGER)
            self._selector.modify(connection.sock, selectors.EVENT_READ)

    def _drain(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(MAX_REQUEST_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)

    def _expire(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            if not connection.draining:
                self.refused += 1
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        if self._connections.pop(connection.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()


def endpoint(agent: Agent, registry: CollectorRegistry, path: str) -> tuple[int, bytes, str]:
    """The status, body and content type of ``GET path``."""
    if path == "/healthz":
        problems = health_problems(agent)
        if not problems:
            return 200, b"ok\n", "text/plain"
        return 503, ("".join(f"{problem}\n" for problem in problems)).encode(), "text/plain"
    if path == "/readyz":
        if not agent.ready.is_set():
            return 503, b"not enforcing yet\n", "text/plain"
        down = agent.workers_down()
        if down:
            return 503, ("".join(f"{problem}\n" for problem in down)).encode(), "text/plain"
        return 200, b"ready\n", "text/plain"
    if path == "/metrics":
        return 200, generate_latest(registry), "text/plain; version=0.0.4"
    return 404, b"not found\n", "text/plain"


def health_problems(agent: Agent) -> list[str]:
    """Why the agent is unhealthy (empty when it is healthy)."""
    problems = []
    age = time.monotonic() - agent.heartbeat
    if age >= STALE_AFTER:
        problems.append(f"sync loop stalled for {age:.0f}s")
    problems.extend(agent.workers_down())
    return problems
