"""Differential property tests of enforcement/compiler.py against tests/reference.py.

Hypothesis builds small random clusters (namespaces and pods labelled from a tiny alphabet so
selectors often match; dual-stack, named ports, pods on another node, hostNetwork pods, pods
without addresses, addresses shared by two pods) and random policies (selectors with every
matchExpressions operator, every peer shape, ipBlocks with excepts around the pod addresses,
numeric, ranged and named ports, every policyTypes combination), then random flows between pod
and outside addresses. The compiled tables must allow exactly what the naive walk allows.

Profiles: ``compiler`` (default, a few seconds) and ``compiler-thorough``; pick one with the
environment variable ``COMPILER_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcement.compiler import compile_tables, explain
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
    Peer,
    Pod,
    PolicyPort,
    PortProtocol,
    Rule,
)
from enforcement.verdict import Reason
from tests.builders import METADATA_NAME, ip
from tests.reference import reference_allows

settings.register_profile(
    "compiler",
    max_examples=250,
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
VALUES = ("x", "y", "z")
PORT_NAMES = ("http", "dns")
PORT_NUMBERS = (53, 80, 81, 8080)
PROTOCOLS: tuple[PortProtocol, ...] = ("TCP", "UDP", "SCTP")
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
    operator = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
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
def namespace_selector_st(draw: st.DrawFn) -> LabelSelector:
    # Namespace labels are random too; also select by the metadata.name label now and then.
    if draw(st.integers(0, 4)) == 0:
        return LabelSelector(((METADATA_NAME, draw(st.sampled_from(NAMESPACES))),))
    return draw(selector_st())


@st.composite
def pod_st(draw: st.DrawFn, index: int) -> Pod:
    # Addresses come from a small pool, so two pods sometimes share one.
    number = draw(st.integers(1, 10))
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if draw(st.integers(0, 9)) > 0:
        addresses.append(ipaddress.IPv4Address(v4(number)))
        if draw(st.booleans()):
            addresses.append(ipaddress.IPv6Address(v6(number)))
    ports = draw(
        st.lists(
            st.builds(
                ContainerPort,
                port=st.sampled_from(PORT_NUMBERS),
                protocol=st.sampled_from(PROTOCOLS),
                name=st.one_of(st.none(), st.sampled_from(PORT_NAMES)),
            ),
            max_size=3,
        )
    )
    return Pod(
        namespace=draw(st.sampled_from((*NAMESPACES, *NAMESPACES, "ns-ghost"))),
        name=f"pod-{index}",
        labels=Labels(draw(labels_st)),
        ips=tuple(addresses),
        ports=tuple(ports),
        node_name=draw(st.sampled_from((*NODES, NODES[0]))),
        host_network=draw(st.integers(0, 11)) == 0,
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
    excepts = []
    for candidate in draw(st.lists(network_st(version), max_size=2)):
        # An except must lie inside the cidr (validated at the edge): clip it there.
        if candidate.prefixlen >= cidr.prefixlen and candidate.subnet_of(cidr):  # type: ignore[arg-type]
            excepts.append(candidate)
        elif cidr.prefixlen < cidr.max_prefixlen:
            excepts.append(next(cidr.subnets(prefixlen_diff=1)))
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
    protocol = draw(st.sampled_from((*PROTOCOLS, "TCP")))
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return PolicyPort(protocol)
    if shape == 1:
        return PolicyPort(protocol, draw(st.sampled_from(PORT_NAMES)))
    first = draw(st.sampled_from(PORT_NUMBERS))
    if shape == 2:
        return PolicyPort(protocol, first)
    return PolicyPort(protocol, first, first + draw(st.integers(-1, 8000)))


rule_st = st.builds(
    Rule,
    peers=st.lists(peer_st(), max_size=2).map(tuple),
    ports=st.lists(policy_port_st(), max_size=2).map(tuple),
)


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
        pod_selector=draw(selector_st()),
        policy_types=types,
        ingress=tuple(draw(st.lists(rule_st, max_size=2))),
        egress=tuple(draw(st.lists(rule_st, max_size=2))),
    )


@st.composite
def snapshot_st(draw: st.DrawFn) -> ClusterSnapshot:
    names = draw(st.lists(st.sampled_from(NAMESPACES), unique=True, max_size=2))
    namespaces = tuple(
        Namespace(name, Labels({**draw(labels_st), METADATA_NAME: name})) for name in names
    )
    pod_count = draw(st.integers(0, 7))
    pods = tuple(draw(pod_st(i)) for i in range(pod_count))
    policy_count = draw(st.integers(1, 4))
    policies = tuple(draw(policy_st(i)) for i in range(policy_count))
    return ClusterSnapshot(namespaces, pods, policies)


# --- flows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    protocol: int
    port: int | None


@st.composite
def flows_st(draw: st.DrawFn, snapshot: ClusterSnapshot) -> list[Flow]:
    pod_v4 = sorted({str(a) for p in snapshot.pods for a in p.ips if a.version == 4})
    pod_v6 = sorted({str(a) for p in snapshot.pods for a in p.ips if a.version == 6})
    flows = []
    for _ in range(draw(st.integers(1, 16))):
        version = draw(st.sampled_from((4, 4, 6)))
        pods, outside = (pod_v4, OUTSIDE_V4) if version == 4 else (pod_v6, OUTSIDE_V6)
        # Mostly pod addresses: that is where isolation, selectors and named ports play.
        pool = [*pods, *pods, *pods, *outside] if pods else list(outside)
        src, dst = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
        protocol = draw(
            st.sampled_from(
                (
                    IPPROTO_TCP,
                    IPPROTO_TCP,
                    IPPROTO_UDP,
                    IPPROTO_SCTP,
                    IPPROTO_ICMP if version == 4 else IPPROTO_ICMPV6,
                )
            )
        )
        port: int | None = None
        if protocol not in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            # Mostly the numbers pods and policies use; a fragment (None) or any port sometimes.
            port = draw(
                st.one_of(
                    st.sampled_from(PORT_NUMBERS),
                    st.sampled_from((*PORT_NUMBERS, None)),
                    st.integers(0, 65535),
                )
            )
        flows.append(Flow(src, dst, protocol, port))
    return flows


# --- properties ----------------------------------------------------------------------------


@PROFILE
@given(data=st.data(), snapshot=snapshot_st(), node=st.sampled_from(NODES))
def test_compiled_tables_agree_with_reference(
    data: st.DataObject, snapshot: ClusterSnapshot, node: str
) -> None:
    tables = compile_tables(snapshot, node)
    for flow in data.draw(flows_st(snapshot)):
        verdict = tables.evaluate(ip(flow.src), ip(flow.dst), flow.protocol, flow.port)
        expected = reference_allows(snapshot, node, flow.src, flow.dst, flow.protocol, flow.port)
        assert (verdict in (Reason.ALLOWED, Reason.NOT_ISOLATED)) == expected, (flow, verdict)


@PROFILE
@given(data=st.data(), snapshot=snapshot_st(), node=st.sampled_from(NODES))
def test_explain_agrees_with_tables(
    data: st.DataObject, snapshot: ClusterSnapshot, node: str
) -> None:
    tables = compile_tables(snapshot, node)
    for flow in data.draw(flows_st(snapshot)):
        verdict = tables.evaluate(ip(flow.src), ip(flow.dst), flow.protocol, flow.port)
        lines = explain(snapshot, node, flow.src, flow.dst, flow.protocol, flow.port)
        assert lines[-1] == f"verdict: {verdict.value}", (flow, lines)


@PROFILE
@given(snapshot=snapshot_st(), node=st.sampled_from(NODES))
def test_address_sets_match_endpoints(snapshot: ClusterSnapshot, node: str) -> None:
    tables = compile_tables(snapshot, node)
    expected_local = {
        a.packed for p in snapshot.pods if p.node_name == node and not p.host_network for a in p.ips
    }
    # A shared address belongs to a local pod whenever any local pod claims it.
    assert tables.local_addresses() == expected_local
    for address in tables.isolated_local_addresses():
        endpoint = tables.endpoint(address)
        assert endpoint is not None and endpoint.local
        assert endpoint.ingress_isolated or endpoint.egress_isolated
