"""Differential property tests of enforcement/compiler.py against tests/reference.py.

Hypothesis builds small random clusters (namespaces and pods labelled from a tiny alphabet so
selectors often match; dual-stack, named ports whose numbers differ between pods, pods on
another node, hostNetwork pods, pods without addresses, addresses shared by two pods, and
unreadable pods: unknown endpoints on a node, on another or on an unknown one, now and then on
an address a readable pod claims too) and
random policies (selectors with every matchExpressions operator, every peer shape, ipBlocks with
excepts around the pod addresses, numeric, ranged and named ports, every policyTypes
combination). For each cluster every pair of addresses (pods' and outside ones) is tried with a
set of protocol/port probes: the compiled tables must allow exactly what the naive walk allows.

Two things keep one mechanism from hiding another's bug: clusters are also checked as
ingress-only and egress-only variants (a denied egress masks any ingress verdict), and a second
property uses clusters with a single one-rule policy (in a union, one broad rule masks the
others). Compiler thresholds are varied so the shared form of peer selections is exercised too.

ClusterNetworkPolicies of both tiers join most clusters (subjects by namespaces or pods, every
action, priorities that often tie so the name decides, peers by namespaces, pods, nodes (whose
addresses are outside addresses or a pod's) and networks around pod addresses, numeric, ranged
and named ports, or none), and Nodes with labels for the ``nodes`` peers. The tables must then
agree with the reference on the reason of every flow AND on the refs that decided each
direction (``AllowTables.outcome``), and ``evaluate`` must give the outcome's reason.
Mutation checks during development: most single-line bugs in the compiler and tables make these
properties fail within the default profile; a few rare combinations (named ports on egress
through shared selections) are pinned by rows of test_compiler.py instead.

Profiles: ``compiler`` (default, well under 30 s) and ``compiler-thorough``; pick one with the
environment variable ``COMPILER_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcement.clusterpolicy import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    ClusterSubject,
    NamespacedPods,
    RuleAction,
    Tier,
)
from enforcement.compiler import compile_tables
from enforcement.model import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ClusterSnapshot,
    ContainerPort,
    Direction,
    IPBlock,
    LabelRequirement,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    PortProtocol,
    Rule,
    SelectorOperator,
    UnreadablePod,
)
from enforcement.verdict import Reason
from tests.builders import METADATA_NAME, ip
from tests.reference import cluster_subject_selects, reference_outcome, unknown_here

settings.register_profile(
    "compiler",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "compiler-thorough",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("COMPILER_HYPOTHESIS_PROFILE", "compiler"))

NODES = ("node-1", "node-2")
NAMESPACES = ("ns-a", "ns-b")
KEYS = ("app", "tier")
VALUES = ("x", "y")
PORT_NAMES = ("http", "dns")
PORT_NUMBERS = (53, 80, 81, 8080)
PROTOCOLS: tuple[PortProtocol, ...] = ("TCP", "UDP", "SCTP")
OPERATORS: tuple[SelectorOperator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")
OUTSIDE_V4 = ("192.0.2.5", "198.51.100.7", "10.0.0.200", "10.0.1.1")
OUTSIDE_V6 = ("2001:db8::5", "fd00::c8", "fd01::1")


def v4(n: int) -> str:
    return f"10.0.0.{n}"


def v6(n: int) -> str:
    return f"fd00::{n:x}"


# --- clusters ------------------------------------------------------------------------------

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
selector_labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=1)


@st.composite
def requirement_st(draw: st.DrawFn, keys: tuple[str, ...] = KEYS) -> LabelRequirement:
    operator = draw(st.sampled_from(OPERATORS))
    values: frozenset[str] = frozenset()
    if operator in ("In", "NotIn"):
        values = draw(st.frozensets(st.sampled_from(VALUES), min_size=1, max_size=2))
    return LabelRequirement(draw(st.sampled_from(keys)), operator, values)


@st.composite
def selector_st(draw: st.DrawFn) -> LabelSelector:
    # Mostly small selectors, so that they often match something; the empty one often.
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return LabelSelector()
    match_labels = draw(selector_labels_st) if shape != 2 else {}
    expressions = draw(st.lists(requirement_st(), max_size=2)) if shape != 1 else []
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(expressions))


@st.composite
def subject_selector_st(draw: st.DrawFn) -> LabelSelector:
    # A policy's podSelector: mostly all pods or one label, so that most pods get isolated.
    shape = draw(st.integers(0, 4))
    if shape <= 1:
        return LabelSelector()
    if shape <= 3:
        return LabelSelector(((draw(st.sampled_from(KEYS)), draw(st.sampled_from(VALUES))),))
    return draw(selector_st())


@st.composite
def namespace_selector_st(draw: st.DrawFn) -> LabelSelector:
    # Namespace labels are random too; also select by the metadata.name label now and then.
    if draw(sometimes(5)):
        return LabelSelector(((METADATA_NAME, draw(st.sampled_from(NAMESPACES))),))
    return draw(selector_st())


def sometimes(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in ``one_in`` draws (``integers(...) == 0`` would be far likelier:
    Hypothesis favours boundary values)."""
    return st.sampled_from((False,) * (one_in - 1) + (True,))


@st.composite
def pod_st(draw: st.DrawFn, index: int) -> Pod:
    # Addresses are mostly the pod's own; now and then two pods share one.
    number = draw(st.integers(1, 3)) if draw(sometimes(10)) else index + 1
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if not draw(sometimes(10)):
        addresses.append(ipaddress.IPv4Address(v4(number)))
        if draw(st.booleans()):
            addresses.append(ipaddress.IPv6Address(v6(number)))
    # Most pods name a TCP port "http", with different numbers: what makes one named-port
    # rule mean different things on different pods. Then a few random ports.
    ports: list[ContainerPort] = []
    if not draw(sometimes(4)):
        ports.append(ContainerPort(draw(st.sampled_from(PORT_NUMBERS)), "TCP", "http"))
    ports += draw(
        st.lists(
            st.builds(
                ContainerPort,
                port=st.sampled_from(PORT_NUMBERS),
                protocol=st.sampled_from(PROTOCOLS),
                name=st.sampled_from((*PORT_NAMES, None)),
            ),
            max_size=2,
        )
    )
    return Pod(
        namespace=draw(st.sampled_from((*NAMESPACES, *NAMESPACES, *NAMESPACES, "ns-ghost"))),
        name=f"pod-{index}",
        labels=Labels(draw(labels_st)),
        ips=tuple(addresses),
        ports=tuple(ports),
        node_name=draw(st.sampled_from((*NODES, NODES[0], NODES[0]))),
        host_network=draw(sometimes(12)),
    )


@st.composite
def unreadable_pod_st(draw: st.DrawFn, index: int, pod_count: int) -> UnreadablePod:
    """A pod whose object could not be read: its own addresses, or now and then a readable
    pod's (the address is then in doubt), on a node, another, or an unknown one (None)."""
    shared = draw(sometimes(4))
    number = draw(st.integers(1, pod_count)) if shared else pod_count + index + 1
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if not draw(sometimes(8)):
        addresses.append(ipaddress.IPv4Address(v4(number)))
    if draw(st.booleans()):
        addresses.append(ipaddress.IPv6Address(v6(number)))
    return UnreadablePod(
        namespace=draw(st.sampled_from(NAMESPACES)),
        name=f"unreadable-{index}",
        ips=tuple(addresses),
        node_name=draw(st.sampled_from((*NODES, NODES[0], None))),
        error="test",
    )


@st.composite
def network_st(draw: st.DrawFn, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network around the pod addresses, or wider, or unrelated."""
    bits = 32 if version == 4 else 128
    choice = draw(st.integers(0, 3))
    if choice == 0:
        base = ipaddress.ip_address(v4(draw(st.integers(1, 10)))) if version == 4 else None
        base = base or ipaddress.ip_address(v6(draw(st.integers(1, 10))))
        prefix = draw(st.integers(bits - 4, bits))
        return ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    if choice == 1:
        return ipaddress.ip_network("10.0.0.0/24" if version == 4 else "fd00::/112")
    if choice == 2:
        return ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
    return ipaddress.ip_network("192.0.2.0/24" if version == 4 else "2001:db8::/32")


@st.composite
def ip_block_st(draw: st.DrawFn) -> IPBlock:
    version = draw(st.sampled_from((4, 6)))
    cidr = draw(network_st(version))
    excepts: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for candidate in draw(st.lists(network_st(version), max_size=2)):
        # An except must lie inside the cidr (validated at the edge): else take its first half.
        if candidate.prefixlen >= cidr.prefixlen and candidate.subnet_of(cidr):  # type: ignore[arg-type]
            excepts.append(candidate)
        elif cidr.prefixlen < cidr.max_prefixlen:
            excepts.append(ipaddress.ip_network((cidr.network_address, cidr.prefixlen + 1)))
    return IPBlock(cidr, tuple(excepts))


@st.composite
def peer_st(draw: st.DrawFn) -> Peer:
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return Peer(ip_block=draw(ip_block_st()))
    if shape == 1:
        return Peer(pod_selector=draw(selector_st()))
    if shape == 2:
        return Peer(namespace_selector=draw(namespace_selector_st()))
    return Peer(pod_selector=draw(selector_st()), namespace_selector=draw(namespace_selector_st()))


@st.composite
def policy_port_st(draw: st.DrawFn) -> PolicyPort:
    # Hypothesis draws the first alternative of a choice most often: named ports come first.
    protocol = draw(st.sampled_from((*PROTOCOLS, "TCP")))
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return PolicyPort(protocol, draw(st.sampled_from(PORT_NAMES)))
    if shape == 1:
        return PolicyPort(protocol)
    first = draw(st.sampled_from(PORT_NUMBERS))
    if shape == 2:
        return PolicyPort(protocol, first)
    # Ends are probe ports too, so the edges of ranges get tested (an end below the start is
    # rejected by the API; both evaluators must then match nothing).
    return PolicyPort(protocol, first, draw(st.sampled_from((*PORT_NUMBERS, 9000))))


@st.composite
def rule_st(draw: st.DrawFn) -> Rule:
    # Rules without peers or without ports allow a lot and hide the rest: keep them rarer
    # than Hypothesis's taste for empty lists would make them.
    peers = () if draw(sometimes(5)) else draw(st.lists(peer_st(), min_size=1, max_size=2))
    ports = () if draw(sometimes(4)) else draw(st.lists(policy_port_st(), min_size=1, max_size=2))
    return Rule(tuple(peers), tuple(ports))


@st.composite
def policy_st(draw: st.DrawFn, index: int) -> NetworkPolicy:
    types = draw(
        st.sampled_from(
            (
                frozenset({Direction.INGRESS}),
                frozenset({Direction.EGRESS}),
                frozenset({Direction.INGRESS, Direction.EGRESS}),
            )
        )
    )
    return NetworkPolicy(
        namespace=draw(st.sampled_from((*NAMESPACES, *NAMESPACES, "ns-ghost"))),
        name=f"policy-{index}",
        pod_selector=draw(subject_selector_st()),
        policy_types=types,
        ingress=tuple(draw(st.lists(rule_st(), max_size=2))),
        egress=tuple(draw(st.lists(rule_st(), max_size=2))),
    )


@st.composite
def single_rule_policy_st(draw: st.DrawFn) -> NetworkPolicy:
    """One policy, one direction, one rule: whatever that rule does decides the flow."""
    direction = draw(st.sampled_from((Direction.INGRESS, Direction.EGRESS)))
    one_rule = (draw(rule_st()),)
    return NetworkPolicy(
        namespace=draw(st.sampled_from((*NAMESPACES, *NAMESPACES, "ns-ghost"))),
        name="policy-0",
        pod_selector=draw(subject_selector_st()),
        policy_types=frozenset({direction}),
        ingress=one_rule if direction is Direction.INGRESS else (),
        egress=one_rule if direction is Direction.EGRESS else (),
    )


NODE_ADDRESSES = ("10.0.0.200", "10.0.1.1", "fd00::c8", v4(1), v4(2))
"""Nodes' own addresses: outside addresses the flows use, and now and then a pod's."""
CLUSTER_POLICY_NAMES = ("cnp-a", "cnp-b", "cnp-c", "cnp-d")


@st.composite
def node_st(draw: st.DrawFn, name: str) -> Node:
    addresses = draw(st.lists(st.sampled_from(NODE_ADDRESSES), min_size=1, max_size=2, unique=True))
    return Node(name, Labels(draw(labels_st)), tuple(ipaddress.ip_address(a) for a in addresses))


@st.composite
def namespaced_pods_st(draw: st.DrawFn) -> NamespacedPods:
    return NamespacedPods(draw(namespace_selector_st()), draw(selector_st()))


@st.composite
def cluster_peer_st(draw: st.DrawFn, direction: Direction) -> ClusterPeer:
    shapes = 2 if direction is Direction.INGRESS else 4  # networks and nodes: egress only
    shape = draw(st.integers(0, shapes - 1))
    if shape == 0:
        return ClusterPeer(namespaces=draw(namespace_selector_st()))
    if shape == 1:
        return ClusterPeer(pods=draw(namespaced_pods_st()))
    if shape == 2:
        version = draw(st.sampled_from((4, 6)))
        return ClusterPeer(
            networks=tuple(draw(st.lists(network_st(version), min_size=1, max_size=2)))
        )
    return ClusterPeer(nodes=draw(selector_st()))


@st.composite
def cluster_ports_st(draw: st.DrawFn) -> tuple[PolicyPort, ...]:
    """``protocols``: none (all traffic), or entries as the edge converts them."""
    if draw(sometimes(3)):
        return ()
    ports: list[PolicyPort] = []
    for _ in range(draw(st.integers(1, 2))):
        shape = draw(st.integers(0, 2))
        if shape == 0:  # destinationNamedPort: the name on every protocol
            name = draw(st.sampled_from(PORT_NAMES))
            ports.extend(PolicyPort(protocol, name) for protocol in PROTOCOLS)
            continue
        protocol = draw(st.sampled_from(PROTOCOLS))
        first = draw(st.sampled_from(PORT_NUMBERS))
        end = draw(st.sampled_from((*PORT_NUMBERS, 9000))) if shape == 2 else None
        ports.append(PolicyPort(protocol, first, end))
    return tuple(ports)


@st.composite
def cluster_rule_st(draw: st.DrawFn, direction: Direction, number: int) -> ClusterRule:
    return ClusterRule(
        action=draw(st.sampled_from(tuple(RuleAction))),
        peers=tuple(draw(st.lists(cluster_peer_st(direction), min_size=1, max_size=2))),
        ports=draw(cluster_ports_st()),
        name=draw(st.sampled_from(("", f"rule-{number}"))),
    )


@st.composite
def cluster_policy_st(draw: st.DrawFn, name: str) -> ClusterNetworkPolicy:
    if draw(st.booleans()):
        applies_to = ClusterSubject(namespaces=draw(namespace_selector_st()))
    else:
        applies_to = ClusterSubject(
            pods=NamespacedPods(draw(namespace_selector_st()), draw(subject_selector_st()))
        )
    rules = {
        direction: tuple(
            draw(cluster_rule_st(direction, n)) for n in range(draw(st.integers(0, 2)))
        )
        for direction in Direction
    }
    return ClusterNetworkPolicy(
        name=name,
        tier=draw(st.sampled_from(tuple(Tier))),
        # Few priorities: ties are common, and then the name decides.
        priority=draw(st.sampled_from((0, 5, 5, 1000))),
        subject=applies_to,
        ingress=rules[Direction.INGRESS],
        egress=rules[Direction.EGRESS],
    )


@st.composite
def cluster_policies_st(draw: st.DrawFn) -> tuple[ClusterNetworkPolicy, ...]:
    """Up to four, in an order unrelated to their names (the snapshot's order must not count)."""
    count = draw(st.sampled_from((0, 1, 2, 2, 3, 4)))
    names = draw(st.permutations(CLUSTER_POLICY_NAMES))[:count]
    return tuple(draw(cluster_policy_st(name)) for name in names)


@st.composite
def snapshot_st(
    draw: st.DrawFn, single_rule: bool = False, cluster_policies: bool = True
) -> ClusterSnapshot:
    """A small random cluster; ``single_rule``: with one policy of one rule only (and no
    ClusterNetworkPolicy); ``cluster_policies``: with ClusterNetworkPolicies and Nodes."""
    snapshot = draw(_network_policy_snapshot_st(single_rule))
    if single_rule or not cluster_policies:
        return snapshot
    nodes = tuple(draw(node_st(name)) for name in NODES)
    return replace(snapshot, cluster_policies=draw(cluster_policies_st()), nodes=nodes)


@st.composite
def _network_policy_snapshot_st(draw: st.DrawFn, single_rule: bool = False) -> ClusterSnapshot:
    # Usually every namespace exists (a missing one is the "ns-ghost" case, and rarely others).
    names = draw(st.sampled_from(((), NAMESPACES[:1]))) if draw(sometimes(6)) else NAMESPACES
    namespaces = tuple(
        Namespace(name, Labels({**draw(labels_st), METADATA_NAME: name})) for name in names
    )
    pod_count = draw(st.integers(2, 8))
    pods = tuple(draw(pod_st(i)) for i in range(pod_count))
    # Most clusters have an unreadable pod or two (a local one masks what it touches).
    unreadable_count = draw(st.sampled_from((0, 1, 1, 2)))
    unreadable = tuple(draw(unreadable_pod_st(i, pod_count)) for i in range(unreadable_count))
    if single_rule:
        return ClusterSnapshot(namespaces, pods, (draw(single_rule_policy_st()),), unreadable)
    policy_count = draw(st.integers(1, 5))
    policies = [draw(policy_st(i)) for i in range(policy_count)]
    # In an order unrelated to their names: provenance names them by name, not by position.
    return ClusterSnapshot(namespaces, pods, tuple(draw(st.permutations(policies))), unreadable)


# --- flows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    protocol: int
    port: int | None
    packed_src: bytes
    packed_dst: bytes


# Per protocol, the destination ports tried: the numbers pods and policies use, a range end,
# and None (ICMP; a non-first fragment for the others).
PROBES: dict[int, tuple[int | None, ...]] = {
    IPPROTO_TCP: (None, 53, 80, 81, 8080, 9000),
    IPPROTO_UDP: (53, 80, 8080),
    IPPROTO_SCTP: (81, 8080),
}


def all_flows(snapshot: ClusterSnapshot) -> list[Flow]:
    """Every pair of addresses (pods' and outside ones, per family) with every probe.

    Checking all of them, instead of a few random flows, is what makes a small random cluster
    exercise its policies: most random flows would touch no isolated pod at all.
    """
    flows = []
    for version, outside, icmp in ((4, OUTSIDE_V4, IPPROTO_ICMP), (6, OUTSIDE_V6, IPPROTO_ICMPV6)):
        claimants = (*snapshot.pods, *snapshot.unreadable_pods)
        pods = {str(a) for p in claimants for a in p.ips if a.version == version}
        packed = {address: ip(address) for address in sorted(pods | set(outside))}
        for src, src_bytes in packed.items():
            for dst, dst_bytes in packed.items():
                flows.append(Flow(src, dst, icmp, None, src_bytes, dst_bytes))
                for protocol, ports in PROBES.items():
                    flows.extend(
                        Flow(src, dst, protocol, port, src_bytes, dst_bytes) for port in ports
                    )
    return flows


# --- properties ----------------------------------------------------------------------------


def only(snapshot: ClusterSnapshot, direction: Direction | None) -> ClusterSnapshot:
    """The same cluster with ``direction`` as the only policyType any policy may have.

    When most pods are isolated both ways, a source's denied egress hides every ingress bug
    (and the other way round); one-direction variants of the cluster lift that mask.
    """
    if direction is None:
        return snapshot
    policies = tuple(
        replace(policy, policy_types=policy.policy_types & {direction})
        for policy in snapshot.policies
    )
    cluster_policies = tuple(
        replace(
            policy,
            ingress=policy.ingress if direction is Direction.INGRESS else (),
            egress=policy.egress if direction is Direction.EGRESS else (),
        )
        for policy in snapshot.cluster_policies
    )
    return replace(snapshot, policies=policies, cluster_policies=cluster_policies)


def check_against_reference(
    snapshot: ClusterSnapshot, node: str, large_selection: int | None
) -> None:
    # Small clusters never reach the default threshold for shared (large) peer selections;
    # tiny thresholds make the compiler use that form too.
    tables = compile_tables(snapshot, node, large_selection=large_selection)
    for flow in all_flows(snapshot):
        verdict = tables.evaluate(flow.packed_src, flow.packed_dst, flow.protocol, flow.port)
        outcome = tables.outcome(flow.packed_src, flow.packed_dst, flow.protocol, flow.port)
        expected = reference_outcome(snapshot, node, flow.src, flow.dst, flow.protocol, flow.port)
        assert verdict is outcome.reason, (flow, verdict, outcome)
        assert outcome.verdict.reason is outcome.reason
        assert (outcome.reason, outcome.egress, outcome.ingress) == (
            expected.reason,
            expected.egress,
            expected.ingress,
        ), flow
        unknown = any(
            unknown_here(snapshot, node, ipaddress.ip_address(address))
            for address in (flow.src, flow.dst)
        )
        assert (verdict is Reason.UNKNOWN_ENDPOINT) == unknown, (flow, verdict)


LARGE_SELECTIONS = st.sampled_from((0, None, 1))
"""Compiler thresholds for shared peer selections: 0 and 1 make small clusters use them."""


@PROFILE
@given(
    snapshot=snapshot_st(),
    node=st.sampled_from((*NODES, NODES[0])),
    direction=st.sampled_from((None, Direction.INGRESS, Direction.EGRESS)),
    large_selection=LARGE_SELECTIONS,
)
def test_compiled_tables_agree_with_reference(
    snapshot: ClusterSnapshot, node: str, direction: Direction | None, large_selection: int | None
) -> None:
    check_against_reference(only(snapshot, direction), node, large_selection)


@PROFILE
@given(
    snapshot=snapshot_st(single_rule=True),
    node=st.sampled_from((*NODES, NODES[0])),
    large_selection=LARGE_SELECTIONS,
)
def test_single_rule_clusters_agree_with_reference(
    snapshot: ClusterSnapshot, node: str, large_selection: int | None
) -> None:
    # In a big union one broad rule hides the mistakes of the others; here nothing does.
    check_against_reference(snapshot, node, large_selection)


@st.composite
def single_cluster_rule_snapshot_st(draw: st.DrawFn) -> ClusterSnapshot:
    """Clusters whose only policies are ClusterNetworkPolicies of one rule each (of one
    direction), and now and then one NetworkPolicy: nothing broad hides a rule's mistake."""
    snapshot = draw(snapshot_st())
    policies = snapshot.policies[:1] if draw(sometimes(3)) else ()
    # Half the time all in one tier at one priority, with one subject and one direction: only
    # the names order them, and they compete for the same flows.
    tie = draw(st.booleans())
    tier, priority = draw(st.sampled_from(tuple(Tier))), draw(st.sampled_from((0, 5)))
    shared_direction = draw(st.sampled_from(tuple(Direction)))
    cluster_policies: list[ClusterNetworkPolicy] = []
    count = draw(st.integers(2, 3)) if tie else draw(st.integers(1, 3))
    for name in draw(st.permutations(CLUSTER_POLICY_NAMES))[:count]:
        direction = shared_direction if tie else draw(st.sampled_from(tuple(Direction)))
        one = (draw(cluster_rule_st(direction, 0)),)
        if tie and draw(st.booleans()):  # a broad rule: every pod, all traffic
            one = (replace(one[0], peers=(ClusterPeer(namespaces=LabelSelector()),), ports=()),)
        policy = draw(cluster_policy_st(name))
        if tie:
            applies_to = cluster_policies[0].subject if cluster_policies else policy.subject
            policy = replace(policy, tier=tier, priority=priority, subject=applies_to)
        cluster_policies.append(
            replace(
                policy,
                ingress=one if direction is Direction.INGRESS else (),
                egress=one if direction is Direction.EGRESS else (),
            )
        )
    return replace(snapshot, policies=policies, cluster_policies=tuple(cluster_policies))


@PROFILE
@given(
    snapshot=single_cluster_rule_snapshot_st(),
    node=st.sampled_from((*NODES, NODES[0])),
    large_selection=LARGE_SELECTIONS,
)
def test_single_cluster_rule_clusters_agree_with_reference(
    snapshot: ClusterSnapshot, node: str, large_selection: int | None
) -> None:
    check_against_reference(snapshot, node, large_selection)


@settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 4))
@given(snapshot=snapshot_st(), node=st.sampled_from(NODES))
def test_address_sets_match_endpoints(snapshot: ClusterSnapshot, node: str) -> None:
    tables = compile_tables(snapshot, node)
    unreadable_addresses = {a for p in snapshot.unreadable_pods for a in p.ips}
    expected_local = {
        a.packed for p in snapshot.pods if p.node_name == node and not p.host_network for a in p.ips
    } | {a.packed for p in snapshot.unreadable_pods if p.runs_on(node) for a in p.ips}
    # A shared address belongs to a local pod whenever any local pod claims it.
    assert tables.local_addresses() == expected_local
    # Every address a local unreadable pod claims is queued (isolated both ways) and unknown.
    for unreadable in snapshot.unreadable_pods:
        for address in unreadable.ips:
            endpoint = tables.endpoint(address.packed)
            assert endpoint is not None and endpoint.unknown
            if unreadable.runs_on(node):
                assert address.packed in tables.isolated_local_addresses()
    for address in tables.isolated_local_addresses():
        endpoint = tables.endpoint(address)
        assert endpoint is not None and endpoint.local
        assert endpoint.ingress_isolated or endpoint.egress_isolated or endpoint.tiered
    # Every local pod a ClusterNetworkPolicy selects is queued: its tiers must see its traffic.
    for pod in snapshot.pods:
        if pod.node_name != node or any(a in unreadable_addresses for a in pod.ips):
            continue
        if any(cluster_subject_selects(snapshot, cnp, pod) for cnp in snapshot.cluster_policies):
            for address in pod.ips:
                assert address.packed in tables.isolated_local_addresses(), pod
