"""The decision stage: policy plus flow state, without any kernel (sans-I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    IPv6,
    IPv6ExtHdrFragment,
    Raw,
)

from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.compiler import compile_tables
from enforcement.decide import decide, decide_with_outcome
from enforcement.flows import FlowTable
from enforcement.model import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ClusterSnapshot,
    NetworkPolicy,
)
from enforcement.packets import PacketInfo, parse_packet
from enforcement.tables import AllowTables
from enforcement.verdict import Reason
from tests.builders import (
    cluster,
    cpeer,
    crule,
    ip,
    make_cluster_policy,
    make_namespace,
    make_pod,
    make_policy,
    peer,
    port,
    rule,
    subject,
)
from tests.builders import selector as sel

A, B, NODE = "10.244.1.2", "10.244.1.3", "172.18.0.2"
SYN, SYN_ACK, ACK, RST = 0x02, 0x12, 0x10, 0x04


def snapshot(*policies: NetworkPolicy | ClusterNetworkPolicy) -> ClusterSnapshot:
    return cluster(
        make_namespace("x"),
        make_pod("x", "a", A, labels={"pod": "a"}, ports=[("serve-80", 80)]),
        make_pod("x", "b", B, labels={"pod": "b"}, ports=[("serve-80", 80)]),
        *policies,
    )


def tables(*policies: NetworkPolicy, generation: int = 1) -> AllowTables:
    return compile_tables(snapshot(*policies), "node-1", generation)


def tcp(src: str, sport: int, dst: str, dport: int, flags: int = SYN) -> PacketInfo:
    return PacketInfo(4, ip(src), ip(dst), IPPROTO_TCP, sport, dport, tcp_flags=flags)


def udp(src: str, sport: int, dst: str, dport: int) -> PacketInfo:
    return PacketInfo(4, ip(src), ip(dst), IPPROTO_UDP, sport, dport)


def echo(src: str, dst: str, ident: int = 7, reply: bool = False) -> PacketInfo:
    return PacketInfo(
        4, ip(src), ip(dst), IPPROTO_ICMP, icmp_type=0 if reply else 8, icmp_code=0, icmp_id=ident
    )


DENY_INGRESS_A = make_policy("x", "deny-in-a", sel(pod="a"), types=["Ingress"])
DENY_INGRESS_B = make_policy("x", "deny-in-b", sel(pod="b"), types=["Ingress"])
DENY_EGRESS_B = make_policy("x", "deny-out-b", sel(pod="b"), egress=[], types=["Egress"])
DENY_EGRESS_A = make_policy("x", "deny-out-a", sel(pod="a"), egress=[], types=["Egress"])
B_FROM_A_TCP80 = make_policy(
    "x", "b-from-a", sel(pod="b"), ingress=[rule(peer(pods=sel(pod="a")), ports=[port(80)])]
)
B_FROM_A_ANY = make_policy(
    "x", "b-from-a-any", sel(pod="b"), ingress=[rule(peer(pods=sel(pod="a")))]
)


def run(packets: list[tuple[PacketInfo, dict[str, bool]]], table: AllowTables) -> list[Reason]:
    flows = FlowTable()
    return [
        decide(p, table, flows, 1.0 + i, **hints).reason for i, (p, hints) in enumerate(packets)
    ]


NONE: dict[str, bool] = {}


@pytest.mark.parametrize(
    ("policies", "packets", "expected"),
    [
        pytest.param(
            (),
            [(tcp(A, 40000, B, 80), NONE), (tcp(B, 80, A, 40000, SYN_ACK), NONE)],
            [Reason.NOT_ISOLATED, Reason.FLOW],
            id="no-policy-everything-passes-and-is-tracked",
        ),
        pytest.param(
            (DENY_INGRESS_B,),
            [(tcp(A, 40000, B, 80), NONE)],
            [Reason.DENIED_INGRESS],
            id="ingress-isolated-destination-drops-new-connection",
        ),
        pytest.param(
            (DENY_INGRESS_A,),
            [(tcp(A, 40000, B, 80), NONE), (tcp(B, 80, A, 40000, SYN_ACK), NONE)],
            [Reason.NOT_ISOLATED, Reason.FLOW],
            id="reply-to-ingress-isolated-client-passes",
        ),
        pytest.param(
            (DENY_EGRESS_B,),
            [(tcp(A, 40000, B, 80), NONE), (tcp(B, 80, A, 40000, SYN_ACK), NONE)],
            [Reason.NOT_ISOLATED, Reason.FLOW],
            id="egress-only-policy-lets-replies-of-allowed-connections-back",
        ),
        pytest.param(
            (DENY_EGRESS_B,),
            [(tcp(B, 40000, A, 80), NONE)],
            [Reason.DENIED_EGRESS],
            id="egress-isolated-source-cannot-open",
        ),
        pytest.param(
            (DENY_INGRESS_A,),
            [
                (udp(B, 5353, A, 9999), NONE),
                (udp(A, 9999, B, 5353), NONE),
                (udp(B, 5353, A, 9999), NONE),
            ],
            [Reason.DENIED_INGRESS, Reason.NOT_ISOLATED, Reason.FLOW],
            id="udp-reply-only-after-the-allowed-request",
        ),
        pytest.param(
            (DENY_INGRESS_A,),
            [(tcp(B, 80, A, 40000, SYN_ACK), NONE)],
            [Reason.DENIED_INGRESS],
            id="a-reply-to-a-connection-never-made-is-judged-as-new-and-dropped",
        ),
        pytest.param(
            (B_FROM_A_TCP80,),
            [(tcp(A, 40000, B, 80), NONE), (tcp(A, 40000, B, 81), NONE), (udp(A, 4, B, 80), NONE)],
            [Reason.ALLOWED, Reason.DENIED_INGRESS, Reason.DENIED_INGRESS],
            id="port-and-protocol-matter",
        ),
        pytest.param(
            (B_FROM_A_TCP80,),
            [(echo(A, B), NONE)],
            [Reason.DENIED_INGRESS],
            id="icmp-never-matches-a-rule-with-ports",
        ),
        pytest.param(
            (B_FROM_A_ANY, DENY_EGRESS_A),
            [(echo(B, A), NONE), (echo(A, B, reply=True), NONE), (echo(A, B), NONE)],
            [Reason.NOT_ISOLATED, Reason.FLOW, Reason.DENIED_EGRESS],
            id="icmp-echo-reply-is-tracked-but-a-new-echo-is-not",
        ),
        pytest.param(
            (DENY_INGRESS_A,),
            [
                (tcp(NODE, 50000, A, 80), {"from_host": True}),
                (tcp(A, 80, NODE, 50000, SYN_ACK), NONE),
            ],
            [Reason.HOST, Reason.FLOW],
            id="node-to-own-pod-always-allowed-with-replies",
        ),
        pytest.param(
            (DENY_INGRESS_A,),
            # A (ingress-isolated) had opened A:40000 -> B:80 before the agent knew of it.
            [(tcp(B, 80, A, 40000, ACK), {"kernel_reply": True})],
            [Reason.FLOW],
            id="kernel-confirmed-reply-of-an-allowed-direction-is-picked-up",
        ),
        pytest.param(
            (DENY_EGRESS_A, DENY_INGRESS_A),
            [(tcp(B, 80, A, 40000, ACK), {"kernel_reply": True})],
            [Reason.DENIED_EGRESS],
            id="kernel-reply-hint-still-needs-the-original-direction-allowed",
        ),
    ],
)
def test_decide_sequences(
    policies: tuple[NetworkPolicy, ...],
    packets: list[tuple[PacketInfo, dict[str, bool]]],
    expected: list[Reason],
) -> None:
    assert run(packets, tables(*policies)) == expected


def test_policy_change_revokes_an_established_flow_on_its_next_packet() -> None:
    flows = FlowTable()
    before = tables(generation=1)
    after = tables(DENY_INGRESS_B, generation=2)
    assert decide(tcp(A, 40000, B, 80), before, flows, 1.0).reason is Reason.NOT_ISOLATED
    assert decide(tcp(B, 80, A, 40000, SYN_ACK), before, flows, 1.1).reason is Reason.FLOW
    assert decide(tcp(A, 40000, B, 80, ACK), after, flows, 1.2).reason is Reason.REVOKED
    assert len(flows) == 0
    # Nothing of it survives: the reply direction is now a new, unsolicited packet.
    assert decide(tcp(B, 80, A, 40000, ACK), after, flows, 1.3).reason is Reason.NOT_ISOLATED


def test_policy_change_keeps_flows_it_still_allows() -> None:
    flows = FlowTable()
    assert decide(tcp(A, 40000, B, 80), tables(generation=1), flows, 1.0).accepted
    later = tables(B_FROM_A_TCP80, generation=2)
    assert decide(tcp(B, 80, A, 40000, SYN_ACK), later, flows, 1.1).reason is Reason.FLOW


def test_host_flows_survive_policy_changes() -> None:
    flows = FlowTable()
    decide(tcp(NODE, 50000, A, 80), tables(generation=1), flows, 1.0, from_host=True)
    later = tables(DENY_INGRESS_A, DENY_EGRESS_A, generation=2)
    assert decide(tcp(A, 80, NODE, 50000, SYN_ACK), later, flows, 1.1).reason is Reason.FLOW


def test_icmp_error_about_a_tracked_flow_is_related() -> None:
    flows = FlowTable()
    table = tables(DENY_INGRESS_A)
    request = udp(A, 9999, B, 5353)
    assert decide(request, table, flows, 1.0).accepted
    unreachable = PacketInfo(
        4, ip(B), ip(A), IPPROTO_ICMP, icmp_type=3, icmp_code=3, embedded=request
    )
    assert decide(unreachable, table, flows, 1.1).reason is Reason.RELATED


def test_icmp_error_about_nothing_tracked_is_judged_as_new_traffic() -> None:
    flows = FlowTable()
    quoted = udp(A, 9999, B, 5353)
    unreachable = PacketInfo(
        4, ip(B), ip(A), IPPROTO_ICMP, icmp_type=3, icmp_code=3, embedded=quoted
    )
    assert decide(unreachable, tables(DENY_INGRESS_A), flows, 1.0).reason is Reason.DENIED_INGRESS


# -- neighbour discovery: only what RFC 4861 says a receiver accepts ----------------------------

A6, B6 = "fd00:10:244:1::2", "fd00:10:244:1::3"
SOLICITED_B6 = "ff02::1:ff00:3"
MAC = "02:00:00:00:00:0a"
SECRET = b"policy keeps a and b apart"


def tables6(*policies: NetworkPolicy) -> AllowTables:
    return compile_tables(
        cluster(
            make_namespace("x"),
            make_pod("x", "a", A, labels={"pod": "a"}, ipv6=A6),
            make_pod("x", "b", B, labels={"pod": "b"}, ipv6=B6),
            *policies,
        ),
        "node-1",
        1,
    )


def nd(src: str, dst: str, *layers: Any, hlim: int = 255) -> PacketInfo:
    """The ND-typed packet as the agent parses it from the wire."""
    packet = IPv6(src=src, dst=dst, hlim=hlim)
    if isinstance(layers[0], Raw):
        packet.nh = 58
    for layer in layers:
        packet = packet / layer
    return parse_packet(bytes(packet))


def carrying(data: bytes) -> Any:
    """An option of a type no one knows, holding ``data`` (padded to 8-byte units)."""
    return ICMPv6NDOptUnknown(type=250, data=data + b"\0" * (-(len(data) + 2) % 8))


VALID_ND = [
    pytest.param(
        nd(A6, SOLICITED_B6, ICMPv6ND_NS(tgt=B6), ICMPv6NDOptSrcLLAddr(lladdr=MAC)),
        id="ns-address-resolution",
    ),
    pytest.param(nd("::", SOLICITED_B6, ICMPv6ND_NS(tgt=B6)), id="ns-duplicate-address-detection"),
    pytest.param(nd(A6, "fe80::1", ICMPv6ND_NS(tgt="fe80::1")), id="ns-to-the-gateway"),
    pytest.param(nd(B6, A6, ICMPv6ND_NA(tgt=B6, S=1)), id="na-solicited"),
    pytest.param(nd("fe80::b", "ff02::2", ICMPv6ND_RS()), id="rs"),
    pytest.param(nd("fe80::1", "ff02::1", ICMPv6ND_RA()), id="ra"),
    pytest.param(nd("fe80::1", A6, ICMPv6ND_Redirect(tgt="fe80::9", dst=B6)), id="redirect"),
]


@pytest.mark.parametrize("packet", VALID_ND)
def test_valid_neighbor_discovery_passes_between_isolated_pods(packet: PacketInfo) -> None:
    table = tables6(DENY_INGRESS_A, DENY_INGRESS_B, DENY_EGRESS_A, DENY_EGRESS_B)
    flows = FlowTable()
    assert decide(packet, table, flows, 1.0).reason is Reason.NEIGHBOR_DISCOVERY
    # A new pod (not known to the agent yet) must resolve its gateway before anything else.
    verdict = decide(packet, table, flows, 1.1, unknown_endpoint=True)
    assert verdict.reason is Reason.NEIGHBOR_DISCOVERY
    assert len(flows) == 0, "ND opens no flow"


ND_TYPED_NOT_ND = [
    pytest.param(
        # Exactly what a pod gets from the node when it routes a valid NS: one hop less.
        nd(A6, B6, ICMPv6ND_NS(tgt=B6), carrying(SECRET), hlim=254),
        id="ns-with-data-routed-hop-limit-254",
    ),
    pytest.param(nd(A6, B6, ICMPv6ND_NA(tgt=A6), carrying(SECRET), hlim=64), id="na-hop-64"),
    pytest.param(nd(A6, B6, ICMPv6ND_NS(tgt=B6, code=1), carrying(SECRET)), id="ns-code-1"),
    pytest.param(nd(A6, B6, Raw(bytes([135, 0, 0, 0]) + SECRET[:12])), id="ns-truncated"),
    pytest.param(
        nd(A6, B6, ICMPv6ND_NS(tgt=B6), Raw(b"\xfa\x00" + SECRET)), id="ns-zero-length-option"
    ),
    pytest.param(nd(A6, B6, ICMPv6ND_NA(tgt="ff02::1"), carrying(SECRET)), id="na-multicast-tgt"),
    pytest.param(nd(A6, B6, ICMPv6ND_RA(), carrying(SECRET)), id="ra-from-a-pod-address"),
    pytest.param(
        nd(A6, B6, ICMPv6ND_Redirect(tgt="fe80::9", dst=B6), carrying(SECRET)),
        id="redirect-from-a-pod-address",
    ),
    pytest.param(
        nd(A6, B6, IPv6ExtHdrFragment(), ICMPv6ND_NS(tgt=B6), carrying(SECRET)),
        id="ns-in-a-fragment",
    ),
]


@pytest.mark.parametrize("packet", ND_TYPED_NOT_ND)
def test_nd_typed_packets_that_fail_the_checks_are_judged_by_policy(packet: PacketInfo) -> None:
    assert not packet.neighbor_discovery and packet.nd_problem is not None
    denied = decide(packet, tables6(DENY_INGRESS_B), FlowTable(), 1.0)
    assert denied.reason is Reason.DENIED_INGRESS and not denied.accepted
    egress = decide(packet, tables6(DENY_EGRESS_A), FlowTable(), 1.0)
    assert egress.reason is Reason.DENIED_EGRESS and not egress.accepted
    # Policy decides, not a blanket ban: a rule that admits all of a's traffic admits it too.
    assert decide(packet, tables6(B_FROM_A_ANY), FlowTable(), 1.0).reason is Reason.ALLOWED


def test_nd_from_an_unknown_source_of_the_pod_range_is_dropped_unless_valid() -> None:
    stranger = "fd00:10:244:1::99"
    routed = nd(stranger, B6, ICMPv6ND_NA(tgt=stranger), carrying(SECRET), hlim=254)
    verdict = decide(routed, tables6(), FlowTable(), 1.0, unknown_endpoint=True)
    assert verdict.reason is Reason.UNKNOWN_ENDPOINT and not verdict.accepted


def test_an_nd_type_alone_is_not_trusted() -> None:
    """Only the parser's checks make a packet ND: a record that merely has the type is not."""
    solicitation = PacketInfo(
        6, ip(A6), ip(SOLICITED_B6), IPPROTO_ICMPV6, icmp_type=135, icmp_code=0
    )
    assert not solicitation.neighbor_discovery
    verdict = decide(solicitation, tables6(DENY_EGRESS_A), FlowTable(), 1.0)
    assert verdict.reason is Reason.DENIED_EGRESS


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(B_FROM_A_TCP80, Reason.DENIED_INGRESS, id="port-rule-cannot-match-a-fragment"),
        pytest.param(B_FROM_A_ANY, Reason.ALLOWED, id="all-ports-rule-matches-a-fragment"),
    ],
)
def test_non_first_fragments_have_no_ports(policy: NetworkPolicy, expected: Reason) -> None:
    fragment = PacketInfo(4, ip(A), ip(B), IPPROTO_TCP, fragment=True)
    assert decide(fragment, tables(policy), FlowTable(), 1.0).reason is expected


def test_an_unknown_address_of_the_node_pod_range_gets_nothing() -> None:
    flows = FlowTable()
    stranger = "10.244.1.99"
    verdict = decide(tcp(stranger, 40000, B, 80), tables(), flows, 1.0, unknown_endpoint=True)
    assert verdict.reason is Reason.UNKNOWN_ENDPOINT and not verdict.accepted
    assert len(flows) == 0
    # The node itself is still allowed to reach it (kubelet probes a starting pod).
    assert decide(
        tcp(NODE, 50000, stranger, 80), tables(), flows, 1.1, from_host=True, unknown_endpoint=True
    ).accepted


# -- the decision with its provenance ---------------------------------------------------------

DENY_B_FROM_A = make_cluster_policy(
    "deny-b-from-a",
    applies_to=subject(pods=sel(pod="b")),
    ingress=[crule("Deny", cpeer(pods=sel(pod="a")), ports=[port(80)], name="no-a")],
)
PACKETS = (
    tcp(A, 40000, B, 80),
    tcp(B, 80, A, 40000, SYN_ACK),
    tcp(A, 40000, B, 80, ACK),
    tcp(B, 40001, A, 80),
    tcp(A, 80, B, 40001, SYN_ACK),
    udp(A, 5353, B, 53),
    udp(B, 53, A, 5353),
    echo(A, B),
    echo(B, A, reply=True),
    tcp(NODE, 50000, B, 80),
)
GENERATIONS = (
    (),
    (B_FROM_A_TCP80,),
    (DENY_INGRESS_B,),
    (DENY_EGRESS_A, B_FROM_A_ANY),
    (DENY_B_FROM_A,),
    (DENY_B_FROM_A, B_FROM_A_ANY),
)
"""Policies of successive generations: allowing, denying, cluster-scoped, all mixed."""


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(PACKETS),
            st.sampled_from(range(len(GENERATIONS))),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_decide_with_outcome_decides_as_decide(
    steps: list[tuple[PacketInfo, int, bool, bool]],
) -> None:
    """Differential: the same packets against the same tables, from two flow tables, give the
    same verdicts and leave the same flows; the outcome agrees with the verdict."""
    compiled = [
        compile_tables(snapshot(*objects), "node-1", number + 1)
        for number, objects in enumerate(GENERATIONS)
    ]
    plain, explained = FlowTable(), FlowTable()
    for now, (packet, generation, from_host, kernel_reply) in enumerate(steps):
        current = compiled[generation]
        flags = {"from_host": from_host, "kernel_reply": kernel_reply}
        verdict = decide(packet, current, plain, float(now), **flags)
        same, outcome = decide_with_outcome(packet, current, explained, float(now), **flags)
        assert same is verdict
        assert len(plain) == len(explained)
        if verdict.reason in (Reason.ALLOWED, Reason.NOT_ISOLATED, Reason.DENIED_INGRESS,
                              Reason.DENIED_EGRESS):  # fmt: skip
            assert outcome.verdict is verdict
        if verdict.reason is Reason.REVOKED:
            assert outcome.reason in (Reason.DENIED_EGRESS, Reason.DENIED_INGRESS)


def test_outcome_names_the_rule_behind_a_verdict() -> None:
    current = compile_tables(snapshot(DENY_B_FROM_A, B_FROM_A_ANY), "node-1", 1)
    verdict, outcome = decide_with_outcome(tcp(A, 40000, B, 80), current, FlowTable(), 0.0)
    assert verdict.reason is Reason.DENIED_INGRESS
    assert [ref.as_dict() for ref in outcome.ingress] == [
        {"kind": "ClusterNetworkPolicy", "namespace": None, "name": "deny-b-from-a",
         "tier": "Admin", "rule": 0, "rule_name": "no-a", "action": "Deny", "staged": False},
    ]  # fmt: skip
    verdict, outcome = decide_with_outcome(tcp(A, 40000, B, 81), current, FlowTable(), 0.0)
    assert verdict.reason is Reason.ALLOWED
    assert [(ref.kind, ref.name, ref.rule, ref.action) for ref in outcome.ingress] == [
        ("NetworkPolicy", "b-from-a-any", 0, "Allow")
    ]
    verdict, outcome = decide_with_outcome(tcp(NODE, 40000, B, 80), current, FlowTable(), 0.0,
                                           from_host=True)  # fmt: skip
    assert (verdict.reason, outcome.refs) == (Reason.HOST, ())
