"""The queue loop's sans-I/O parts: deciding raw bytes, the default verdict, the reports.

Binding a real queue is covered end to end in tests/e2e (it needs root and a namespace).
"""

from __future__ import annotations

import pytest
from scapy.all import IP, TCP

from enforcement.compiler import compile_tables
from enforcement.events import EventBuffer
from enforcement.firewall import MARK_ACCEPTED, MARK_CACHE, MARK_HOST, MARK_KERNEL_REPLY
from enforcement.flows import FlowTable
from enforcement.queue import DECISION_BUCKETS_NS, QueueWorker, TablesHolder
from enforcement.tables import AllowTables
from enforcement.verdict import Reason
from tests.builders import cluster, make_namespace, make_pod, make_policy, peer, rule, selector


def worker(fail_open: bool, tables: AllowTables | None = None) -> QueueWorker:
    snapshot = cluster(
        make_namespace("x"),
        make_pod("x", "a", "10.244.1.2", labels={"pod": "a"}),
        make_pod("x", "b", "10.244.1.3", labels={"pod": "b"}),
        make_policy("x", "deny-b", selector(pod="b"), types=["Ingress"]),
    )
    holder = TablesHolder(tables or compile_tables(snapshot, "node-1", 1))
    return QueueWorker(1000, holder, FlowTable(), fail_open=fail_open, clock=lambda: 1.0)


SYN_A_TO_B = bytes(IP(src="10.244.1.2", dst="10.244.1.3") / TCP(sport=40000, dport=80, flags="S"))


def test_decides_raw_packet_bytes() -> None:
    info, verdict = worker(fail_open=False).decide_payload(SYN_A_TO_B, mark=0)
    assert info is not None and info.dst_port == 80
    assert verdict.reason is Reason.DENIED_INGRESS


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_malformed_packets_are_dropped_whatever_the_mode(fail_open: bool) -> None:
    _info, verdict = worker(fail_open).decide_payload(SYN_A_TO_B[:30], mark=0)
    assert verdict.reason is Reason.MALFORMED and not verdict.accepted


class BrokenTables:
    """Tables whose lookup fails: stands for any internal error while deciding."""

    generation = 1

    def evaluate(self, *args: object) -> Reason:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("fail_open", "expected"),
    [(False, Reason.FAIL_CLOSED), (True, Reason.FAIL_OPEN)],
    ids=["fail-closed-drops", "fail-open-accepts"],
)
def test_an_internal_error_gets_the_default_verdict(fail_open: bool, expected: Reason) -> None:
    subject = worker(fail_open, tables=BrokenTables())  # type: ignore[arg-type]
    _info, verdict = subject.decide_payload(SYN_A_TO_B, mark=0)
    assert verdict.reason is expected
    assert subject.stats.errors == 1


def test_decision_buckets_are_increasing_1_2_5_steps() -> None:
    assert list(DECISION_BUCKETS_NS) == sorted(DECISION_BUCKETS_NS)
    assert DECISION_BUCKETS_NS[0] == 1_000 and DECISION_BUCKETS_NS[-1] == 5_000_000


def _with_events(*, audit: bool = False, trace_all: bool = False) -> QueueWorker:
    plain = worker(fail_open=False)
    return QueueWorker(
        1000,
        plain.tables,
        FlowTable(),
        fail_open=False,
        fast_path=False,
        events=EventBuffer(),
        audit=audit,
        trace_all=trace_all,
        clock=lambda: 1.0,
    )


SYN_ACK_B_TO_A = bytes(
    IP(src="10.244.1.3", dst="10.244.1.2") / TCP(sport=80, dport=40000, flags="SA")
)


def test_a_decided_connection_becomes_an_event_with_its_provenance() -> None:
    queue = _with_events()
    assert queue.handle(SYN_A_TO_B, mark=0) is False
    assert queue.events is not None
    (event,) = queue.events.drain()
    assert event.outcome.reason is Reason.DENIED_INGRESS and event.enforced
    assert [ref.name for ref in event.outcome.refs] == ["deny-b"]
    assert event.tables is queue.tables.current
    assert queue.stats.kinds == {(Reason.DENIED_INGRESS, 6, 4): 1}


def test_packets_of_decided_connections_become_events_only_when_traced() -> None:
    open_tables = compile_tables(cluster(make_namespace("x")), "node-1", 1)
    syn = IP(src="10.244.9.1", dst="10.244.9.2") / TCP(sport=20, dport=80, flags="S")
    reply = IP(src="10.244.9.2", dst="10.244.9.1") / TCP(sport=80, dport=20, flags="SA")
    for trace_all, expected in ((False, 1), (True, 2)):
        queue = _with_events(trace_all=trace_all)
        queue.tables = TablesHolder(open_tables)
        # Nothing isolated: the SYN opens a connection, its reply is a packet of it.
        assert queue.handle(bytes(syn), mark=0) and queue.handle(bytes(reply), mark=0)
        assert queue.events is not None and len(queue.events.drain()) == expected


def test_audit_lets_a_denied_connection_through_and_tracks_it() -> None:
    queue = _with_events(audit=True)
    assert queue.handle(SYN_A_TO_B, mark=0) is True  # denied by policy, passes all the same
    assert queue.handle(SYN_ACK_B_TO_A, mark=0) is True  # its reply: a packet of the connection
    assert queue.events is not None
    (event,) = queue.events.drain()  # one event: the connection, not its reply
    assert event.outcome.reason is Reason.DENIED_INGRESS and not event.enforced
    assert queue.stats.verdicts[Reason.FLOW] == 1


def test_audit_still_drops_what_cannot_be_judged() -> None:
    queue = _with_events(audit=True)
    assert queue.handle(b"\x45\x00", mark=0) is False  # malformed: the agent's own safety


def _cached(tables: AllowTables, *, audit: bool = False) -> QueueWorker:
    return QueueWorker(
        1000,
        TablesHolder(tables),
        FlowTable(),
        fail_open=False,
        audit=audit,
        verdict_cache=True,
        clock=lambda: 1.0,
    )


def _isolated_b_from_a(generation: int) -> AllowTables:
    snapshot = cluster(
        make_namespace("x"),
        make_pod("x", "a", "10.244.1.2", labels={"pod": "a"}),
        make_pod("x", "b", "10.244.1.3", labels={"pod": "b"}),
        make_pod("x", "c", "10.244.1.4", labels={"pod": "c"}),
        make_policy("x", "b-from-a", selector(pod="b"), ingress=[rule(peer(selector(pod="a")))]),
    )
    return compile_tables(snapshot, "node-1", generation)


SYN_C_TO_B = bytes(IP(src="10.244.1.4", dst="10.244.1.3") / TCP(sport=40001, dport=80, flags="S"))


@pytest.mark.parametrize("generation", [1, 2])
def test_an_allow_by_the_tuple_is_marked_for_the_cache_of_its_generation(generation: int) -> None:
    queue = _cached(_isolated_b_from_a(generation))
    assert queue.marks(SYN_A_TO_B, mark=0) == MARK_ACCEPTED | MARK_CACHE[generation & 1]
    assert MARK_CACHE[0] != MARK_CACHE[1]


def test_what_the_cache_must_not_learn_gets_no_cache_bit() -> None:
    queue = _cached(_isolated_b_from_a(1))
    assert queue.marks(SYN_C_TO_B, mark=0) is None  # denied
    assert queue.marks(SYN_A_TO_B, mark=0) == MARK_ACCEPTED | MARK_CACHE[1]
    assert queue.marks(SYN_ACK_B_TO_A, mark=0) == MARK_ACCEPTED  # a packet of a tracked flow
    from_node = bytes(IP(src="10.244.1.1", dst="10.244.1.3") / TCP(sport=9, dport=80, flags="S"))
    assert queue.marks(from_node, mark=MARK_HOST) == MARK_ACCEPTED  # the node's own traffic
    reply = bytes(IP(src="10.244.1.3", dst="10.244.1.2") / TCP(sport=80, dport=41000, flags="A"))
    # The reply of a connection the kernel confirmed alone: judged by its reversed tuple.
    assert queue.marks(reply, mark=MARK_KERNEL_REPLY) == MARK_ACCEPTED
    audited = _cached(_isolated_b_from_a(1), audit=True)
    assert audited.marks(SYN_C_TO_B, mark=0) == MARK_ACCEPTED  # passes, but is no allow


def test_per_packet_mode_never_marks_for_the_cache() -> None:
    queue = QueueWorker(
        1000,
        TablesHolder(_isolated_b_from_a(1)),
        FlowTable(),
        fail_open=False,
        fast_path=False,
        verdict_cache=True,
        clock=lambda: 1.0,
    )
    assert queue.marks(SYN_A_TO_B, mark=0) == MARK_ACCEPTED
