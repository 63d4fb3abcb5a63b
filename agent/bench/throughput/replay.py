"""The decision replay: the agent's parse-and-decide code timed per packet (pure CPU).

The agent exports only a sum and a count of its decision times, so the benchmark's p50 and p99
come from here: the same ``parse_packet`` + ``decide`` against the tables compiled from the lab's
own cluster state, for connection-opening packets (what the fast path decides) and for packets
of an established connection (what per-packet mode adds).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence

from agent.bench.stats import Percentiles, summarize
from enforcement.compiler import compile_tables
from enforcement.decide import decide
from enforcement.flows import TCP_ACK, TCP_PSH, TCP_SYN, FlowTable
from enforcement.model import IPPROTO_TCP, ClusterSnapshot
from enforcement.packets import parse_packet


def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int, payload: int = 0) -> bytes:
    """An IPv4/TCP packet as the queue hands it over (checksums are not verified there)."""
    length = 40 + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, header of 5 words (RFC 791 3.1)
        0,
        length,
        0,
        0x4000,  # don't fragment
        64,
        IPPROTO_TCP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0)
    return ip + tcp + b"\0" * payload


def replay_decisions(
    snapshot: ClusterSnapshot, node_name: str, client: str, server: str, port: int, count: int
) -> dict[str, Percentiles]:
    """Time ``parse_packet`` + ``decide`` per packet against the tables of ``snapshot``.

    ``first``: ``count`` connection-opening SYNs, each from another source port (every one is a
    table lookup and a new tracked flow: what the fast path sends to userspace). ``established``:
    ``count`` packets of one tracked connection, both directions (what per-packet mode adds).
    """
    tables = compile_tables(snapshot, node_name, 1)
    flows = FlowTable()
    clock = time.monotonic
    timer = time.perf_counter_ns

    def timed(packets: Sequence[bytes]) -> list[float]:
        times = []
        for payload in packets:
            started = timer()
            decide(parse_packet(payload), tables, flows, clock())
            times.append((timer() - started) / 1e9)
        return times

    first = [tcp_packet(client, server, 1024 + i % 60000, port, TCP_SYN) for i in range(count)]
    first_times = timed(first)
    handshake = [
        tcp_packet(client, server, 65000, port, TCP_SYN),
        tcp_packet(server, client, port, 65000, TCP_SYN | TCP_ACK),
        tcp_packet(client, server, 65000, port, TCP_ACK),
    ]
    timed(handshake)
    data = tcp_packet(client, server, 65000, port, TCP_PSH | TCP_ACK, 1400)
    ack = tcp_packet(server, client, port, 65000, TCP_ACK)
    established_times = timed([data if i % 2 == 0 else ack for i in range(count)])
    return {"first": summarize(first_times), "established": summarize(established_times)}
