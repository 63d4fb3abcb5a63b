"""The verdict event stream: the bounded buffer, records of events, kernel-decided connections."""

from __future__ import annotations

import socket

from enforcement.compiler import compile_tables
from enforcement.events import (
    EventBuffer,
    EventKind,
    TupleOutcomes,
    VerdictEvent,
    cache_decided,
    format_time,
    kernel_decided,
    record_of,
)
from enforcement.model import IPPROTO_TCP, IPPROTO_UDP
from enforcement.packets import PacketInfo
from enforcement.tables import OUTCOMES, AllowTables
from enforcement.verdict import Reason
from tests.builders import cluster, ip, make_namespace, make_pod, make_policy, peer, rule, selector

A, B, C, REMOTE, OUTSIDE = "10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.2.2", "192.0.2.9"


def _tables() -> AllowTables:
    """b admits only a; c is isolated by nothing; remote runs on another node."""
    return compile_tables(
        cluster(
            make_namespace("x"),
            make_pod("x", "a", A, {"app": "a"}),
            make_pod("x", "b", B, {"app": "b"}),
            make_pod("x", "c", C, {"app": "c"}),
            make_pod("x", "remote", REMOTE, {"app": "r"}, node="node-2"),
            make_policy("x", "only-a", selector(app="b"), ingress=[rule(peer(selector(app="a")))]),
        ),
        "node-1",
        1,
    )


def _tcp(src: str, dst: str, dport: int = 80) -> PacketInfo:
    return PacketInfo(4, ip(src), ip(dst), IPPROTO_TCP, 40000, dport, tcp_flags=0x02)


def _event(tables: AllowTables, packet: PacketInfo, enforced: bool = True) -> VerdictEvent:
    outcome = tables.outcome(packet.src, packet.dst, packet.protocol, packet.dst_port)
    return VerdictEvent(1_700_000_000.25, packet, outcome, tables, enforced)


def test_the_buffer_is_bounded_and_counts_what_it_refuses() -> None:
    tables = _tables()
    buffer = EventBuffer(capacity=3)
    events = [_event(tables, _tcp(A, B, port)) for port in range(5)]
    for event in events:
        buffer.offer(event)
    assert len(buffer) == 3 and buffer.dropped == 2
    assert buffer.drain() == events[:3]  # oldest first, the newest refused
    assert len(buffer) == 0 and buffer.drain() == []
    buffer.offer(events[4])
    assert buffer.drain() == [events[4]] and buffer.dropped == 2


def test_an_allowed_connection_names_the_rule_and_both_pods() -> None:
    tables = _tables()
    record = record_of(_event(tables, _tcp(A, B)), "node-1")
    data = record.as_dict()
    assert (data["src"], data["dst"], data["src_ip"], data["dst_ip"]) == ("x/a", "x/b", A, B)
    assert (data["protocol"], data["family"], data["src_port"], data["dst_port"]) == (
        "TCP", 4, 40000, 80,
    )  # fmt: skip
    assert data["verdict"] == "allowed" and data["reason"] == "allowed"
    assert data["event"] == EventKind.CONNECTION and data["enforced"] is True
    assert data["directions"] == ["egress", "ingress"]
    refs = [
        (r["kind"], r["namespace"], r["name"], r["rule"], r["action"]) for r in data["decided_by"]
    ]
    assert refs == [("NetworkPolicy", "x", "only-a", 0, "Allow")]
    assert data["time"] == "2023-11-14T22:13:20.250000Z"
    assert "staged" not in data


def test_a_denied_connection_names_the_isolating_policy() -> None:
    tables = _tables()
    data = record_of(_event(tables, _tcp(C, B)), "node-1").as_dict()
    assert data["verdict"] == "denied" and data["reason"] == Reason.DENIED_INGRESS.value
    assert [(r["name"], r["rule"], r["action"]) for r in data["decided_by"]] == [
        ("only-a", None, "Isolate")
    ]


def test_nothing_isolating_either_side_names_nothing() -> None:
    tables = _tables()
    data = record_of(_event(tables, _tcp(A, C)), "node-1").as_dict()
    assert data["verdict"] == "allowed" and data["reason"] == "not-isolated"
    assert data["decided_by"] == []


def test_addresses_that_no_pod_has_are_named_by_address_and_remote_pods_by_name() -> None:
    tables = _tables()
    outside = record_of(_event(tables, _tcp(OUTSIDE, B)), "node-1").as_dict()
    assert outside["src"] == OUTSIDE and outside["directions"] == ["ingress"]
    remote = record_of(_event(tables, _tcp(B, REMOTE)), "node-1").as_dict()
    assert remote["dst"] == "x/remote" and remote["directions"] == ["egress"]


def test_an_audited_denial_is_reported_as_not_enforced() -> None:
    tables = _tables()
    data = record_of(_event(tables, _tcp(C, B), enforced=False), "node-1").as_dict()
    assert data["verdict"] == "denied" and data["enforced"] is False


def test_a_revocation_and_an_unparsed_packet() -> None:
    tables = _tables()
    revoked = VerdictEvent(1.0, _tcp(C, B), OUTCOMES[Reason.REVOKED], tables)
    assert record_of(revoked, "n").event == EventKind.REVOKED
    unparsed = record_of(VerdictEvent(1.0, None, OUTCOMES[Reason.MALFORMED], tables), "n")
    assert unparsed.verdict == "denied" and unparsed.reason == "malformed" and unparsed.src == ""


def _entry(src: str, dst: str, protocol: int = IPPROTO_TCP) -> PacketInfo:
    """The first packet of a connection, as the firewall logs it."""
    return PacketInfo(4, ip(src), ip(dst), protocol, 40000, 80)


def test_kernel_decided_connections_are_those_no_policy_isolates() -> None:
    tables = _tables()
    event = kernel_decided(_entry(A, C, IPPROTO_UDP), tables, 5.0)
    assert event is not None and event.outcome.reason is Reason.NOT_ISOLATED
    data = record_of(event, "node-1").as_dict()
    assert (data["src"], data["dst"], data["protocol"], data["dst_port"]) == (
        "x/a", "x/c", "UDP", 80,
    )  # fmt: skip
    # b is isolated: the queue decided (and reported) every connection of it.
    assert kernel_decided(_entry(A, B), tables, 5.0) is None
    assert kernel_decided(_entry(B, C), tables, 5.0) is None
    # No pod of this node takes part: the node's own traffic, or another node's pods.
    assert kernel_decided(_entry(OUTSIDE, "192.0.2.10"), tables, 5.0) is None
    assert kernel_decided(_entry(OUTSIDE, REMOTE), tables, 5.0) is None
    assert kernel_decided(_entry(OUTSIDE, C), tables, 5.0) is not None


def test_a_connection_the_cache_admitted_names_the_rule_the_queue_would_have() -> None:
    tables = _tables()
    queued = record_of(_event(tables, _tcp(A, B)), "node-1").as_dict()
    cached = record_of(cache_decided(_tcp(A, B), tables, 1_700_000_000.25), "node-1").as_dict()
    assert cached.pop("cached") is True and "cached" not in queued
    assert cached == queued


def test_tuple_outcomes_are_asked_once_per_generation_and_bounded() -> None:
    tables, memo = _tables(), TupleOutcomes(limit=2)
    first = memo.of(_tcp(A, B), tables)
    assert first is tables.outcome(ip(A), ip(B), IPPROTO_TCP, 80)
    assert memo.of(_tcp(A, B), tables) is first
    assert memo.of(_tcp(C, B), tables).reason is Reason.DENIED_INGRESS
    assert memo.of(_tcp(A, C), tables).reason is Reason.NOT_ISOLATED  # past the limit: anew
    later = compile_tables(cluster(make_namespace("x"), make_pod("x", "b", B)), "node-1", 2)
    assert memo.of(_tcp(A, B), later).reason is Reason.NOT_ISOLATED  # other tables, other answer


def test_times_are_rfc3339_utc() -> None:
    assert format_time(0.0) == "1970-01-01T00:00:00.000000Z"


def test_a_connection_cut_in_the_kernel_names_the_rules_that_now_deny_it() -> None:
    from enforcement.conntrack import TrackedConnection
    from enforcement.ctnetlink import ConntrackEntry, TupleEnds
    from enforcement.events import revoked_in_kernel

    tables = _tables()
    original = TupleEnds(ip(C), ip("10.96.0.10"), IPPROTO_TCP, 40000, 80)  # a Service address
    reply = TupleEnds(ip(B), ip(C), IPPROTO_TCP, 8080, 40000)  # DNATed to b
    entry = ConntrackEntry(socket.AF_INET, original, reply, 0, 1, None, b"")
    connection = TrackedConnection(ip(C), ip(B), IPPROTO_TCP, 8080, 0, entry)
    data = record_of(revoked_in_kernel(connection, tables, 3.0), "node-1").as_dict()
    assert (data["event"], data["verdict"], data["reason"]) == ("revoked", "denied", "revoked")
    assert (data["src"], data["dst"], data["src_port"], data["dst_port"]) == (
        "x/c", "x/b", 40000, 8080,
    )  # fmt: skip
    assert [(r["name"], r["action"]) for r in data["decided_by"]] == [("only-a", "Isolate")]


def test_staged_policies_are_reported_with_what_they_would_change() -> None:
    from dataclasses import replace

    staged_deny = replace(make_policy("x", "try-deny", selector(app="c"), ingress=[]), staged=True)
    tables = compile_tables(
        cluster(
            make_namespace("x"),
            make_pod("x", "a", A, {"app": "a"}),
            make_pod("x", "c", C, {"app": "c"}),
            staged_deny,
        ),
        "node-1",
        1,
    )
    data = record_of(_event(tables, _tcp(A, C)), "node-1").as_dict()
    assert data["verdict"] == "allowed" and data["decided_by"] == []  # not enforced
    staged = data["staged"]
    assert staged["verdict"] == "denied" and staged["would_deny"] and not staged["would_allow"]
    assert [(r["name"], r["staged"]) for r in staged["changed_by"]] == [("try-deny", True)]
    unchanged = record_of(_event(tables, _tcp(C, A)), "node-1").as_dict()["staged"]
    assert unchanged["verdict"] == "allowed" and unchanged["changed_by"] == []
    assert not unchanged["would_deny"]
    # Without staged policies, records carry no staged report.
    assert "staged" not in record_of(_event(_tables(), _tcp(A, C)), "node-1").as_dict()
