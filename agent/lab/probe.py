"""Reachability probes: who can open a connection to whom, as a matrix.

For every ordered (source, target) pair a socket is created *inside the source's network
namespace* (:func:`agent.lab.netns.entered`, on the calling thread) and aimed at the target's
address. A socket keeps the namespace it was created in, so all the I/O afterwards runs from
wherever the caller is, every pair at once, in one ``selectors`` loop: a whole matrix takes
about one timeout no matter how many pairs it has. Targets run :mod:`agent.lab.responder`.

A pair counts as connected only when the target echoes our unique payload back within the
timeout: TCP connects, sends one line and reads it back; UDP sends a datagram every
:data:`UDP_RESEND_SECONDS` until the echo arrives. Refused, reset, unreachable or silent → False.
"""

from __future__ import annotations

import errno
import resource
import secrets
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Literal

from agent.lab.netns import entered

Protocol = Literal["TCP", "UDP"]
Matrix = dict[str, dict[str, bool]]
"""``matrix[source_key][target_key]``: True when the source reached the target."""

UDP_RESEND_SECONDS = 0.3
"""Interval between UDP retransmissions of one probe (a first datagram may be lost)."""

ALLOWED_MARK = "."
BLOCKED_MARK = "X"


@dataclass(frozen=True, slots=True)
class ProbeEndpoint:
    """Something that can probe or be probed: a pod or an external host. A hostNetwork pod is
    its node's namespace and addresses (``agent.lab.hostnet``): probes from it are the node's."""

    key: str
    """Row/column name in the matrix, e.g. ``"ns/name"``."""
    netns: str
    """The network namespace probes from this endpoint start in (a hostNetwork pod's node's)."""
    address_v4: str | None
    """Where probes of family 4 aimed at this endpoint go; None if it has no IPv4 address."""
    address_v6: str | None
    """Where probes of family 6 aimed at this endpoint go; None if it has no IPv6 address."""

    def address(self, family: int) -> str | None:
        """The endpoint's address of IP version ``family`` (4 or 6), if any."""
        return self.address_v4 if family == 4 else self.address_v6


@dataclass(slots=True)
class _Attempt:
    """One pair's probe in flight."""

    source: str
    target: str
    sock: socket.socket | None
    payload: bytes
    result: bool | None = None
    """None while undecided."""
    sent: bool = False
    """TCP: the handshake completed and the payload is on its way."""
    received: bytearray = field(default_factory=bytearray)


def _check_arguments(port: int, protocol: str, family: int, timeout: float) -> None:
    if protocol not in ("TCP", "UDP"):
        raise ValueError(f"protocol must be TCP or UDP, not {protocol!r}")
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout}")


def _check_unique(endpoints: Sequence[ProbeEndpoint], what: str) -> None:
    keys = [e.key for e in endpoints]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate {what} keys: {', '.join(duplicates)}")


def _default_concurrency() -> int:
    """Pairs probed at once: bounded by the open-files limit (one socket per pair)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft - 128))


def probe_matrix(
    sources: Sequence[ProbeEndpoint],
    targets: Sequence[ProbeEndpoint],
    port: int,
    protocol: Protocol,
    family: int = 4,
    timeout: float = 1.5,
    max_concurrent: int | None = None,
) -> Matrix:
    """Probe every ordered (source, target) pair, a pod to itself included.

    ``timeout`` (seconds) bounds each pair; all pairs run concurrently (at most
    ``max_concurrent`` at a time, by default what the open-files limit allows), so the whole
    matrix takes about one timeout. Every target needs an address of ``family``, else
    ValueError: a missing address must not look like a blocked connection.
    """
    _check_arguments(port, protocol, family, timeout)
    _check_unique(sources, "source")
    _check_unique(targets, "target")
    missing = [t.key for t in targets if t.address(family) is None]
    if missing:
        raise ValueError(f"no IPv{family} address to probe on: {', '.join(missing)}")
    pairs = [(source, target) for source in sources for target in targets]
    chunk = max_concurrent if max_concurrent is not None else _default_concurrency()
    if chunk < 1:
        raise ValueError("max_concurrent must be at least 1")
    matrix: Matrix = {source.key: {} for source in sources}
    for start in range(0, len(pairs), chunk):
        for attempt in _probe_pairs(pairs[start : start + chunk], port, protocol, family, timeout):
            matrix[attempt.source][attempt.target] = bool(attempt.result)
    # Keep the caller's column order whatever order the attempts finished in.
    return {
        source.key: {target.key: matrix[source.key][target.key] for target in targets}
        for source in sources
    }


def probe_one(
    source: ProbeEndpoint,
    target: ProbeEndpoint,
    port: int,
    protocol: Protocol,
    family: int = 4,
    timeout: float = 1.5,
) -> bool:
    """Probe a single pair; True when ``source`` reached ``target`` on ``port``/``protocol``."""
    _check_arguments(port, protocol, family, timeout)
    if target.address(family) is None:
        raise ValueError(f"no IPv{family} address to probe on: {target.key}")
    (attempt,) = _probe_pairs([(source, target)], port, protocol, family, timeout)
    return bool(attempt.result)


def _probe_pairs(
    pairs: Sequence[tuple[ProbeEndpoint, ProbeEndpoint]],
    port: int,
    protocol: Protocol,
    family: int,
    timeout: float,
) -> list[_Attempt]:
    """Open every pair's socket in its source namespace, then drive them all to a verdict."""
    token = secrets.token_hex(6)
    attempts: list[_Attempt] = []
    try:
        for source, group in groupby(pairs, key=lambda pair: pair[0]):
            # One setns round trip per source, not per pair.
            with entered(source.netns):
                for source_, target in group:
                    payload = f"netpol-probe {token} {len(attempts)} {source_.key} {target.key}\n"
                    attempt = _Attempt(source_.key, target.key, None, payload.encode())
                    attempts.append(attempt)
                    address = target.address(family)
                    assert address is not None
                    _start(attempt, address, port, protocol, family)
        _drive(attempts, protocol, timeout)
    finally:
        for attempt in attempts:
            _finish(attempt, attempt.result is True)
    return attempts


def _start(attempt: _Attempt, address: str, port: int, protocol: Protocol, family: int) -> None:
    """Create the socket (in the thread's current namespace) and send the first packet."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    sock = socket.socket(af, kind)
    attempt.sock = sock
    sock.setblocking(False)
    try:
        if protocol == "TCP":
            code = sock.connect_ex((address, port))
            if code not in (0, errno.EINPROGRESS):
                _finish(attempt, False)
        else:
            # A connected UDP socket only accepts datagrams from the target, and an ICMP port
            # unreachable comes back as ECONNREFUSED on the next send or receive.
            sock.connect((address, port))
            sock.send(attempt.payload)
    except OSError:
        _finish(attempt, False)


def _finish(attempt: _Attempt, result: bool) -> None:
    if attempt.result is None:
        attempt.result = result
    if attempt.sock is not None:
        # Close at once: every open socket also pins its namespace.
        attempt.sock.close()
        attempt.sock = None


def _drive(attempts: list[_Attempt], protocol: Protocol, timeout: float) -> None:
    """Run all attempts until each has a result or ``timeout`` seconds have passed."""
    selector = selectors.DefaultSelector()
    pending: dict[int, _Attempt] = {}

    def settle(attempt: _Attempt) -> None:
        if attempt.result is not None and pending.pop(id(attempt), None) is not None:
            assert attempt.sock is not None
            selector.unregister(attempt.sock)
            _finish(attempt, attempt.result)

    try:
        events = selectors.EVENT_WRITE if protocol == "TCP" else selectors.EVENT_READ
        for attempt in attempts:
            if attempt.result is None and attempt.sock is not None:
                selector.register(attempt.sock, events, attempt)
                pending[id(attempt)] = attempt
        now = time.monotonic()
        deadline = now + timeout
        next_round = now + UDP_RESEND_SECONDS
        while pending and now < deadline:
            if protocol == "UDP" and now >= next_round:
                for attempt in list(pending.values()):
                    _udp_resend(attempt)
                    settle(attempt)
                next_round = now + UDP_RESEND_SECONDS
            wake = min(deadline, next_round) if protocol == "UDP" else deadline
            for key, ready in selector.select(max(0.0, wake - now)):
                attempt = key.data
                assert isinstance(attempt, _Attempt)
                if protocol == "TCP":
                    _tcp_step(attempt, ready, selector)
                else:
                    _udp_step(attempt)
                settle(attempt)
            now = time.monotonic()
    finally:
        selector.close()


def _tcp_step(attempt: _Attempt, events: int, selector: selectors.BaseSelector) -> None:
    sock = attempt.sock
    assert sock is not None
    try:
        if not attempt.sent:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                attempt.result = False  # refused, unreachable, reset
                return
            sock.send(attempt.payload)  # a few dozen bytes fit any fresh send buffer
            attempt.sent = True
            selector.modify(sock, selectors.EVENT_READ, attempt)
            return
        if events & selectors.EVENT_READ:
            data = sock.recv(4096)
            attempt.received += data
            if attempt.received == attempt.payload:
                attempt.result = True
            elif not data or not attempt.payload.startswith(bytes(attempt.received)):
                attempt.result = False  # closed early or echoed something else
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        attempt.result = False


def _udp_step(attempt: _Attempt) -> None:
    sock = attempt.sock
    assert sock is not None
    while attempt.result is None:
        try:
            data = sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            attempt.result = False  # ECONNREFUSED: ICMP port unreachable
            return
        if data == attempt.payload:
            attempt.result = True


def _udp_resend(attempt: _Attempt) -> None:
    """Retransmit an undecided UDP probe (the first datagram may have been dropped)."""
    if attempt.result is not None or attempt.sock is None:
        return
    try:
        attempt.sock.send(attempt.payload)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        attempt.result = False


def format_matrix(matrix: Matrix) -> str:
    """A table for people: one row per source ("from"), one column per target ("to").

    ``.`` marks a connection that got through, ``X`` one that did not; a pair missing from
    the matrix shows ``?``. A legend line and a count close the table.
    """
    rows = list(matrix)
    columns: list[str] = []
    for row in rows:
        for column in matrix[row]:
            if column not in columns:
                columns.append(column)
    corner = "from \\ to"
    row_width = max([len(corner), *(len(row) for row in rows)])
    widths = [max(1, len(column)) for column in columns]
    header = [c.center(w) for c, w in zip(columns, widths, strict=True)]
    lines = ["  ".join([corner.ljust(row_width), *header]).rstrip()]
    allowed = total = 0
    for row in rows:
        cells = []
        for column, width in zip(columns, widths, strict=True):
            value = matrix[row].get(column)
            if value is None:
                mark = "?"
            else:
                mark = ALLOWED_MARK if value else BLOCKED_MARK
                total += 1
                allowed += value
            cells.append(mark.center(width))
        lines.append("  ".join([row.ljust(row_width), *cells]).rstrip())
    lines.append(
        f"legend: {ALLOWED_MARK} connected, {BLOCKED_MARK} blocked, ? not probed "
        f"(rows: from, columns: to); {allowed} of {total} pairs connected"
    )
    return "\n".join(lines)
