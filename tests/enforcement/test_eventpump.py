"""The event pump: counting, folding repeated denials, the rate limit, and metric series."""

from __future__ import annotations

import threading

from enforcement.eventpump import (
    OTHER_POLICY,
    EventPump,
    RecordBatch,
    connection_series,
    direction_label,
    policy_series,
)
from enforcement.events import EventBuffer, EventKind, VerdictEvent
from enforcement.model import IPPROTO_TCP
from enforcement.packets import PacketInfo
from enforcement.tables import OUTCOMES, AllowTables
from enforcement.verdict import Reason
from tests.builders import ip
from tests.enforcement.test_events import A, B, C, _tables


def _tcp(src: str, dst: str, sport: int = 40000, dport: int = 80) -> PacketInfo:
    return PacketInfo(4, ip(src), ip(dst), IPPROTO_TCP, sport, dport, tcp_flags=0x02)


def _event(tables: AllowTables, packet: PacketInfo) -> VerdictEvent:
    outcome = tables.outcome(packet.src, packet.dst, packet.protocol, packet.dst_port)
    return VerdictEvent(1.0, packet, outcome, tables)


class Collected:
    def __init__(self) -> None:
        self.batches: list[RecordBatch] = []

    def __call__(self, batch: RecordBatch) -> None:
        self.batches.append(batch)

    @property
    def records(self) -> list[tuple[str, str, str, str, int]]:
        return [
            (r.event, r.src, r.dst, r.verdict, r.packets)
            for batch in self.batches
            for r in batch.records
        ]


def _pump(**options: object) -> tuple[EventBuffer, EventPump, Collected]:
    buffer, sink = EventBuffer(), Collected()
    pump = EventPump(buffer, "node-1", sink, wall_clock=lambda: 2.0, **options)  # type: ignore[arg-type]
    return buffer, pump, sink


def test_denials_of_one_connection_are_folded_within_the_window() -> None:
    tables = _tables()
    buffer, pump, sink = _pump(fold_window=5.0)
    for _ in range(3):  # a refused SYN and two retransmissions
        buffer.offer(_event(tables, _tcp(C, B)))
    buffer.offer(_event(tables, _tcp(A, B)))
    pump.pump(100.0)
    assert sink.records == [
        (EventKind.CONNECTION, "x/c", "x/b", "denied", 1),
        (EventKind.CONNECTION, "x/a", "x/b", "allowed", 1),
    ]
    buffer.offer(_event(tables, _tcp(C, B)))
    pump.pump(104.0)  # still within the window: folded, nothing new
    assert len(sink.records) == 2
    pump.pump(105.0)  # the window ends: one repeat for the three folded packets
    assert sink.records[2:] == [(EventKind.REPEAT, "x/c", "x/b", "denied", 3)]
    assert pump.counts.folded == 3
    buffer.offer(_event(tables, _tcp(C, B)))  # after the window: a new first record
    pump.pump(106.0)
    assert sink.records[3:] == [(EventKind.CONNECTION, "x/c", "x/b", "denied", 1)]
    # Metrics count the connection once per window, not its retransmissions: two denied
    # connections (before and after the window) and one allowed.
    assert connection_series([pump.counts]) == {
        ("denied", "denied-ingress", "ingress", "TCP", 4): 2,
        ("allowed", "allowed", "ingress", "TCP", 4): 1,
    }


def test_another_source_port_is_another_connection() -> None:
    tables = _tables()
    buffer, pump, sink = _pump()
    buffer.offer(_event(tables, _tcp(C, B, sport=1)))
    buffer.offer(_event(tables, _tcp(C, B, sport=2)))
    pump.pump(1.0)
    assert len(sink.records) == 2


def test_the_last_turn_reports_every_fold() -> None:
    tables = _tables()
    buffer, pump, sink = _pump()
    buffer.offer(_event(tables, _tcp(C, B)))
    buffer.offer(_event(tables, _tcp(C, B)))
    stop = threading.Event()
    stop.set()
    pump.run(stop)  # stop already set: one final turn
    assert sink.records == [
        (EventKind.CONNECTION, "x/c", "x/b", "denied", 1),
        (EventKind.REPEAT, "x/c", "x/b", "denied", 1),
    ]


def test_the_rate_limit_counts_what_it_holds_back() -> None:
    tables = _tables()
    buffer, pump, _ = _pump(rate=10.0, burst=3)
    for port in range(5):
        buffer.offer(_event(tables, _tcp(A, B, dport=port)))
    batch = pump.pump(0.0)
    assert len(batch.records) == 3 and batch.suppressed == 2
    for port in range(5):
        buffer.offer(_event(tables, _tcp(A, B, dport=port)))
    batch = pump.pump(0.2)  # 0.2 s at 10 a second: two more tokens
    assert len(batch.records) == 2 and batch.suppressed == 3
    assert pump.counts.suppressed == 5 and pump.counts.records == 5
    assert pump.counts.events == 10
    # Metrics count every connection, held back or not.
    assert sum(connection_series([pump.counts]).values()) == 10


def test_events_the_buffer_refused_are_reported() -> None:
    tables = _tables()
    buffer = EventBuffer(capacity=1)
    sink = Collected()
    pump = EventPump(buffer, "node-1", sink)
    buffer.offer(_event(tables, _tcp(A, B)))
    buffer.offer(_event(tables, _tcp(A, B, sport=2)))
    batch = pump.pump(0.0)
    assert batch.dropped == 1 and len(batch.records) == 1 and pump.counts.dropped == 1
    assert pump.pump(1.0).dropped == 0  # reported once
    assert len(sink.batches) == 1  # an empty turn hands nothing over


def test_packets_of_decided_connections_are_not_counted_as_connections() -> None:
    tables = _tables()
    buffer, pump, _ = _pump(rate=None)
    buffer.offer(VerdictEvent(1.0, _tcp(A, B), OUTCOMES[Reason.FLOW], tables))
    buffer.offer(_event(tables, _tcp(A, B)))
    batch = pump.pump(0.0)
    assert len(batch.records) == 2  # traced, both are recorded
    assert sum(connection_series([pump.counts]).values()) == 1


def test_connection_series_labels() -> None:
    tables = _tables()
    buffer, pump, _ = _pump()
    for packet in (_tcp(A, B), _tcp(A, B, sport=2), _tcp(C, B), _tcp(A, C)):
        buffer.offer(_event(tables, packet))
    pump.pump(0.0)
    assert connection_series([pump.counts, pump.counts]) == {
        ("allowed", "allowed", "ingress", "TCP", 4): 4,
        ("denied", "denied-ingress", "ingress", "TCP", 4): 2,
        ("allowed", "not-isolated", "none", "TCP", 4): 2,
    }


def test_direction_labels() -> None:
    tables = _tables()
    assert direction_label(tables.outcome(ip(C), ip(B), IPPROTO_TCP, 80)) == "ingress"
    assert direction_label(OUTCOMES[Reason.DENIED_EGRESS]) == "egress"
    assert direction_label(OUTCOMES[Reason.NOT_ISOLATED]) == "none"


def test_policy_series_are_bounded() -> None:
    tables = _tables()
    buffer, pump, _ = _pump()
    buffer.offer(_event(tables, _tcp(A, B)))
    buffer.offer(_event(tables, _tcp(C, B)))
    pump.pump(0.0)
    exact = policy_series([pump.counts])
    assert exact == {
        ("NetworkPolicy", "x", "only-a", "NetworkPolicy", "Allow", "ingress", "allowed"): 1,
        ("NetworkPolicy", "x", "only-a", "NetworkPolicy", "Isolate", "ingress", "denied"): 1,
    }
    bounded = policy_series([pump.counts], limit=1)
    assert len(bounded) == 2 and sum(bounded.values()) == 2
    assert any(key[2] == OTHER_POLICY for key in bounded)
