"""Tests of enforcement/tables.py: the lookup structures and the AllowTables API."""

from __future__ import annotations

import tracemalloc

import pytest

from enforcement.compiler import compile_tables
from enforcement.model import IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, Direction
from enforcement.tables import (
    ALL_TRAFFIC,
    UNKNOWN_EGRESS,
    UNKNOWN_IDENTITY,
    UNKNOWN_INGRESS,
    AddressMap,
    AllowTables,
    Endpoint,
    PolicyTable,
    PortMatch,
)
from enforcement.verdict import Reason
from tests.builders import (
    METADATA_NAME,
    cluster,
    cpeer,
    crule,
    ip,
    make_cluster_policy,
    make_namespace,
    make_pod,
    make_policy,
    make_unreadable_pod,
    named_port,
    peer,
    port,
    rule,
    selector,
    subject,
)

TCP, UDP, SCTP, ICMP = IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMP


# --- PortMatch ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "protocol", "number", "names", "allowed"),
    [
        pytest.param(ALL_TRAFFIC, ICMP, None, None, True, id="all-icmp"),
        pytest.param(PortMatch(False, [(TCP, 80, 80)]), TCP, 80, None, True, id="exact"),
        pytest.param(PortMatch(False, [(TCP, 80, 80)]), UDP, 80, None, False, id="other-proto"),
        pytest.param(PortMatch(False, [(TCP, 80, 90)]), TCP, 91, None, False, id="past-range"),
        pytest.param(PortMatch(False, [(TCP, 80, 90)]), TCP, None, None, False, id="no-port"),
        pytest.param(
            PortMatch(False, [], [(TCP, "http")]),
            TCP,
            8080,
            {(TCP, 8080): frozenset({"http"})},
            True,
            id="named-resolved-at-lookup",
        ),
        pytest.param(
            PortMatch(False, [], [(TCP, "http")]),
            TCP,
            8080,
            {(UDP, 8080): frozenset({"http"})},
            False,
            id="named-other-protocol",
        ),
        pytest.param(
            PortMatch(False, [], [(TCP, "http")]), TCP, 8080, None, False, id="named-no-pod"
        ),
        pytest.param(PortMatch(), TCP, 80, None, False, id="nothing"),
    ],
)
def test_port_match_allows(
    match: PortMatch,
    protocol: int,
    number: int | None,
    names: dict[tuple[int, int], frozenset[str]] | None,
    allowed: bool,
) -> None:
    assert match.allows(protocol, number, names) is allowed


def test_port_match_canonical_and_hashable() -> None:
    a = PortMatch(False, [(TCP, 5, 9), (TCP, 1, 4), (UDP, 7, 7)], [(TCP, "x")])
    b = PortMatch(False, [(UDP, 7, 7), (TCP, 1, 9)], [(TCP, "x"), (TCP, "x")])
    assert a == b
    assert hash(a) == hash(b)
    assert a.ranges[TCP] == ((1,), (9,))  # adjacent ranges merged
    assert PortMatch(True, [(TCP, 1, 2)]) == ALL_TRAFFIC
    assert {a, b} == {a}


def test_port_match_union_and_resolve() -> None:
    web = PortMatch(False, [(TCP, 80, 80)])
    named = PortMatch(False, [(UDP, 53, 53)], [(TCP, "http"), (TCP, "gone")])
    both = web.union(named)
    assert both.allows(TCP, 80, None) and both.allows(UDP, 53, None)
    assert web.union(ALL_TRAFFIC) is ALL_TRAFFIC
    resolved = both.resolve({(TCP, "http"): 8080, (UDP, "http"): 9})
    assert not resolved.named
    assert resolved.allows(TCP, 8080, None)
    assert not resolved.allows(UDP, 9, None)
    assert PortMatch(False, [], [(TCP, "gone")]).resolve({}).is_empty


# --- AddressMap --------------------------------------------------------------------------


def test_address_map_lookup() -> None:
    m1, m2 = PortMatch(False, [(TCP, 1, 1)]), PortMatch(False, [(TCP, 2, 2)])
    amap = AddressMap([(10, 19, m1), (30, 30, m2)])
    assert [amap.lookup(a) for a in (9, 10, 19, 20, 30, 31)] == [None, m1, m1, None, m2, None]
    assert len(amap) == 2
    with pytest.raises(ValueError, match="disjoint"):
        AddressMap([(10, 19, m1), (15, 30, m2)])


def test_overlapping_ipblocks_are_merged_per_segment() -> None:
    snapshot = cluster(
        make_namespace("a"),
        make_pod("a", "p", "10.0.0.1"),
        make_policy(
            "a",
            "in",
            selector(),
            [
                rule(peer(cidr="192.0.2.0/24"), ports=[port(80)]),
                rule(peer(cidr="192.0.2.0/25", excepts=["192.0.2.64/26"]), ports=[port(443)]),
                rule(peer(cidr="192.0.2.200/32"), ports=[port(443)]),
            ],
        ),
    )
    tables = compile_tables(snapshot, "node-1")
    endpoint = tables.endpoint(ip("10.0.0.1"))
    assert endpoint is not None and endpoint.ingress_table is not None
    v4 = endpoint.ingress_table.v4
    assert v4 is not None
    # 0-63: 80+443, 64-127: 80, 128-199: 80, 200: 80+443, 201-255: 80 -> neighbours joined.
    assert len(v4) == 4
    dst = ip("10.0.0.1")
    expected = {
        ("192.0.2.1", 80): Reason.ALLOWED,
        ("192.0.2.1", 443): Reason.ALLOWED,
        ("192.0.2.100", 443): Reason.DENIED_INGRESS,
        ("192.0.2.100", 80): Reason.ALLOWED,
        ("192.0.2.200", 443): Reason.ALLOWED,
        ("192.0.2.201", 443): Reason.DENIED_INGRESS,
        ("192.0.3.1", 80): Reason.DENIED_INGRESS,
    }
    for (src, number), reason in expected.items():
        assert tables.evaluate(ip(src), dst, TCP, number) is reason, (src, number)


# --- AllowTables -------------------------------------------------------------------------


def _cluster() -> tuple[AllowTables, AllowTables]:
    snapshot = cluster(
        make_namespace("a"),
        make_namespace("b"),
        make_pod("a", "web-1", "10.0.0.1", {"app": "web"}, [("http", 80)], ipv6="fd00::1"),
        make_pod("a", "web-2", "10.0.0.2", {"app": "web"}, [("http", 80)]),
        make_pod("a", "web-3", "10.0.0.3", {"app": "web"}, [("http", 8080)]),
        make_pod("a", "open", "10.0.0.4", {"app": "open"}),
        make_pod("a", "egress-only", "10.0.0.5", {"app": "out"}),
        make_pod("b", "far", "10.0.1.1", {"app": "web"}, node="node-2"),
        make_pod("a", "host", "10.9.0.1", {"app": "web"}, host_network=True),
        make_pod("a", "pending", None, {"app": "web"}),
        make_policy("a", "web", selector(app="web"), [rule(ports=[port("http")])]),
        make_policy("a", "out", selector(app="out"), egress=[], types=["Egress"]),
    )
    return compile_tables(snapshot, "node-1", generation=7), compile_tables(snapshot, "node-2")


def test_endpoint_records() -> None:
    tables, _ = _cluster()
    web = tables.endpoint(ip("fd00::1"))
    assert web is not None
    assert (web.namespace, web.name, web.key, web.local) == ("a", "web-1", "a/web-1", True)
    assert web.ingress_isolated and not web.egress_isolated
    assert tables.endpoint(ip("10.0.0.1")) is web
    out = tables.endpoint(ip("10.0.0.5"))
    assert out is not None and out.egress_isolated and not out.ingress_isolated
    far = tables.endpoint(ip("10.0.1.1"))
    assert far is not None and not far.local and not far.ingress_isolated
    assert far.node_name == "node-2"
    assert tables.endpoint(ip("10.9.0.1")) is None  # hostNetwork: the node, not a pod
    assert tables.endpoint(ip("192.0.2.1")) is None


def test_address_sets_and_stats() -> None:
    tables, remote = _cluster()
    assert tables.generation == 7 and tables.node_name == "node-1"
    assert remote.generation == 0 and remote.node_name == "node-2"
    local = {ip(a) for a in ("10.0.0.1", "fd00::1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5")}
    assert tables.local_addresses() == local
    assert tables.isolated_local_addresses() == local - {ip("10.0.0.4")}
    assert remote.local_addresses() == {ip("10.0.1.1")}
    assert remote.isolated_local_addresses() == frozenset()
    assert tables.pod_count == 6  # no hostNetwork pod, no pod without an address
    assert tables.local_pod_count == 5
    assert tables.address_count == 7
    # a/web(http=80), a/web(http=8080), a/open, a/out, b/web
    assert tables.identity_count == 5
    # ingress for http=80 and for http=8080 (named ports differ), one egress table
    assert tables.table_count == 3
    assert tables.policy_count == 2
    assert "node-1" in repr(tables)


def test_tables_are_interned() -> None:
    tables, _ = _cluster()
    one, two, three = (tables.endpoint(ip(f"10.0.0.{n}")) for n in (1, 2, 3))
    assert one is not None and two is not None and three is not None
    assert one.ingress_table is two.ingress_table  # same policies, same named ports
    assert one.ingress_table is not three.ingress_table  # "http" means another number
    assert one.ingress_table is not None
    assert one.ingress_table.direction is Direction.INGRESS
    assert one.ingress_table.policies == ("a/web",)


def test_tables_without_named_ports_are_shared_across_port_sets() -> None:
    snapshot = cluster(
        make_pod("a", "x", "10.0.0.1", ports=[("http", 80)]),
        make_pod("a", "y", "10.0.0.2", ports=[("http", 81)]),
        make_policy("a", "p", selector(), [rule(ports=[port(80)])]),
    )
    tables = compile_tables(snapshot, "node-1")
    x, y = tables.endpoint(ip("10.0.0.1")), tables.endpoint(ip("10.0.0.2"))
    assert x is not None and y is not None
    assert x.identity != y.identity
    assert x.ingress_table is y.ingress_table
    assert tables.table_count == 1


def test_large_selections_are_shared_not_copied() -> None:
    many = [make_namespace(f"ns-{i}", team="a") for i in range(40)]
    pods = [make_pod(f"ns-{i}", "p", f"10.0.{i}.1", {"app": str(i)}) for i in range(40)]
    snapshot = cluster(
        *many,
        *pods,
        *(
            make_policy(
                f"ns-{i}", "from-team-a", selector(), [rule(peer(namespaces=selector(team="a")))]
            )
            for i in range(40)
        ),
        make_policy("ns-0", "extra", selector(), [rule(ports=[port(1)])]),
    )
    tables = compile_tables(snapshot, "node-1")
    first, second = tables.endpoint(ip("10.0.0.1")), tables.endpoint(ip("10.0.1.1"))
    assert first is not None and second is not None
    assert first.ingress_table is not None and second.ingress_table is not None
    assert first.ingress_table is not second.ingress_table
    assert not first.ingress_table.namespaces  # 40 namespaces: not copied into the table
    (shared_first,) = first.ingress_table.selections
    (shared_second,) = second.ingress_table.selections
    assert shared_first.namespaces is shared_second.namespaces
    assert len(shared_first.namespaces) == 40
    assert tables.evaluate(ip("10.0.39.1"), ip("10.0.0.1"), TCP, 80) is Reason.ALLOWED
    assert tables.evaluate(ip("192.0.2.1"), ip("10.0.0.1"), TCP, 1) is Reason.ALLOWED
    assert tables.evaluate(ip("192.0.2.1"), ip("10.0.1.1"), TCP, 1) is Reason.DENIED_INGRESS


def test_evaluate_checks_egress_before_ingress() -> None:
    snapshot = cluster(
        make_pod("a", "x", "10.0.0.1"),
        make_pod("a", "y", "10.0.0.2"),
        make_policy("a", "deny", selector(), ingress=[], egress=[]),
    )
    tables = compile_tables(snapshot, "node-1")
    assert tables.evaluate(ip("10.0.0.1"), ip("10.0.0.2"), TCP, 1) is Reason.DENIED_EGRESS
    assert tables.evaluate(ip("192.0.2.1"), ip("10.0.0.2"), TCP, 1) is Reason.DENIED_INGRESS


def test_duplicate_address_prefers_local_then_smaller_key() -> None:
    snapshot = cluster(
        make_pod("a", "remote", "10.0.0.1", node="node-2"),
        make_pod("a", "z-local", "10.0.0.1"),
        make_pod("a", "b-local", "10.0.0.1"),
    )
    endpoint = compile_tables(snapshot, "node-1").endpoint(ip("10.0.0.1"))
    assert endpoint is not None and endpoint.key == "a/b-local"
    endpoint = compile_tables(snapshot, "node-2").endpoint(ip("10.0.0.1"))
    assert endpoint is not None and endpoint.key == "a/remote"


def test_empty_snapshot() -> None:
    tables = compile_tables(cluster(), "node-1")
    assert tables.local_addresses() == frozenset()
    assert tables.pod_count == tables.identity_count == tables.table_count == 0
    assert tables.evaluate(ip("10.0.0.1"), ip("10.0.0.2"), UDP, 53) is Reason.NOT_ISOLATED


def test_compile_is_deterministic() -> None:
    first, _ = _cluster()
    second, _ = _cluster()
    addresses = [ip(f"10.0.0.{n}") for n in range(1, 6)] + [ip("10.0.1.1"), ip("192.0.2.1")]
    for src in addresses:
        for dst in addresses:
            for number in (80, 8080, None):
                assert first.evaluate(src, dst, TCP, number) is second.evaluate(
                    src, dst, TCP, number
                )
    assert first.table_count == second.table_count


def test_tables_are_read_only() -> None:
    tables, _ = _cluster()
    with pytest.raises(AttributeError):
        tables.generation = 8  # type: ignore[misc]
    endpoint = tables.endpoint(ip("10.0.0.1"))
    assert endpoint is not None
    with pytest.raises(AttributeError):
        endpoint.local = False  # type: ignore[misc]
    assert endpoint.ingress_table is not None
    with pytest.raises(TypeError):
        endpoint.ingress_table.identities[0] = ALL_TRAFFIC  # type: ignore[index]


# --- unknown endpoints (pods whose objects could not be read) ------------------------------


def _number(address: str) -> int:
    return int.from_bytes(ip(address), "big")


def _endpoint(identity: int, unknown: bool, local: bool = False) -> Endpoint:
    return Endpoint("prod", "p", "prod/p", "node-2", local, identity, unknown=unknown)


@pytest.mark.parametrize(
    "table",
    [
        pytest.param(PolicyTable(Direction.INGRESS, (), all_pods=ALL_TRAFFIC), id="all-pods"),
        pytest.param(
            PolicyTable(Direction.INGRESS, (), namespaces={"prod": ALL_TRAFFIC}), id="namespace"
        ),
        pytest.param(
            PolicyTable(Direction.INGRESS, (), identities={UNKNOWN_IDENTITY: ALL_TRAFFIC}),
            id="identity",
        ),
    ],
)
def test_selector_parts_never_match_an_unknown_peer(table: PolicyTable) -> None:
    address = ip("10.0.8.1")
    assert not table.allows(_endpoint(UNKNOWN_IDENTITY, True), address, TCP, 80, None)
    # The same table admits a readable pod of that namespace and identity.
    assert table.allows(_endpoint(UNKNOWN_IDENTITY, False), address, TCP, 80, None)


def test_address_parts_still_match_an_unknown_peer() -> None:
    unknown = _endpoint(UNKNOWN_IDENTITY, True)
    any_peer = PolicyTable(Direction.INGRESS, (), any_peer=ALL_TRAFFIC)
    block = PolicyTable(
        Direction.INGRESS,
        (),
        v4=AddressMap([(_number("10.0.8.0"), _number("10.0.8.255"), ALL_TRAFFIC)]),
    )
    assert any_peer.allows(unknown, ip("10.0.8.1"), TCP, 80, None)
    assert block.allows(unknown, ip("10.0.8.1"), TCP, 80, None)
    assert not block.allows(unknown, ip("10.0.9.1"), TCP, 80, None)


def test_unknown_tables_allow_nothing() -> None:
    for table in (UNKNOWN_INGRESS, UNKNOWN_EGRESS):
        assert not table.allows(None, ip("192.0.2.1"), TCP, 80, None)
        assert not table.allows(_endpoint(0, False), ip("10.0.1.1"), IPPROTO_ICMP, None, None)


def test_evaluate_names_the_unknown_endpoint_first() -> None:
    # web is isolated and denies everything too: the unknown endpoint is still the reason given,
    # whichever end it is.
    snapshot = cluster(
        make_pod("prod", "web", "10.0.1.1"),
        make_policy("prod", "deny", selector(), egress=[]),
        make_unreadable_pod("prod", "bad", "10.0.8.1"),
    )
    tables = compile_tables(snapshot, "node-1")
    for src, dst in (("10.0.1.1", "10.0.8.1"), ("10.0.8.1", "10.0.1.1")):
        assert tables.evaluate(ip(src), ip(dst), TCP, 80) is Reason.UNKNOWN_ENDPOINT
    assert tables.evaluate(ip("10.0.1.1"), ip("192.0.2.1"), TCP, 80) is Reason.DENIED_EGRESS
    assert tables.pod_count == 2 and tables.local_pod_count == 2


# --- provenance: interned, nothing allocated per packet -------------------------------------


def _provenance_cluster() -> tuple[AllowTables, list[tuple[bytes, bytes, int, int | None]]]:
    """Tables with every kind of decision (cluster rules of both tiers, NetworkPolicy allows
    and isolation, no opinion), and flows that reach each of them."""
    snapshot = cluster(
        make_namespace("a"),
        make_namespace("b"),
        make_pod("a", "web", "10.0.0.1", {"app": "web"}, [("http", 8080)], ipv6="fd00::1"),
        make_pod("a", "db", "10.0.0.2", labels={"app": "db"}),
        make_pod("b", "client", "10.0.0.3", labels={"app": "client"}, ipv6="fd00::3"),
        make_pod("b", "remote", "10.0.1.4", None, [("http", 8080)], "node-2", "fd00::104"),
        make_policy("a", "web-in", selector(app="web"), ingress=[rule(peer(selector(app="db")))]),
        make_policy("b", "client-out", selector(app="client"), egress=[rule(ports=[port(53)])]),
        make_cluster_policy(
            "monitoring",
            applies_to=subject(namespaces=selector(labels={METADATA_NAME: "a"})),
            ingress=[crule("Pass", cpeer(pods=selector(app="db"))),
                     crule("Deny", cpeer(namespaces=selector()), ports=[port(22)])],
            egress=[crule("Accept", cpeer(networks=["fd00::/64"]), ports=named_port("http"))],
        ),
        make_cluster_policy(
            "baseline",
            "Baseline",
            egress=[crule("Deny", cpeer(networks=["192.0.2.0/24"]))],
        ),
    )  # fmt: skip
    addresses = [ip(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.4", "192.0.2.1")]
    flows = [
        (src, dst, protocol, number)
        for src in addresses
        for dst in addresses
        for protocol, number in ((TCP, 22), (TCP, 53), (TCP, 8080), (UDP, 53), (ICMP, None))
    ]
    flows += [
        (ip("fd00::1"), ip("fd00::104"), TCP, 8080),
        (ip("fd00::104"), ip("fd00::3"), TCP, 53),
    ]
    return compile_tables(snapshot, "node-1"), flows


def test_outcomes_are_interned() -> None:
    tables, flows = _provenance_cluster()
    first = [tables.outcome(*flow) for flow in flows]
    assert all(tables.outcome(*flow) is outcome for flow, outcome in zip(flows, first, strict=True))
    # Every kind of answer is reached, so the check above covers all of them.
    assert {o.reason for o in first} == {
        Reason.ALLOWED, Reason.NOT_ISOLATED, Reason.DENIED_EGRESS, Reason.DENIED_INGRESS
    }  # fmt: skip
    assert {ref.action for o in first for ref in o.refs} == {
        "Accept", "Deny", "Allow", "Isolate"
    }  # fmt: skip


def test_warm_tables_allocate_nothing_per_packet() -> None:
    tables, flows = _provenance_cluster()
    for flow in flows:  # warm-up: the outcome pairs seen once are interned
        tables.outcome(*flow)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(50):
            for flow in flows:
                tables.outcome(*flow)
                tables.evaluate(*flow)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 50 x several hundred lookups: anything kept per packet would show as kilobytes here.
    assert after - before < 512, after - before
