"""Neighbour discovery abuse (issue 7, finding 2): ND types are no pass between isolated pods.

Every pod of namespace ``x`` is isolated both ways; only ``c`` may talk to ``d``. From inside
``a``, hand-made ICMPv6 packets of the ND types (133-137) carry a marker to ``b``'s address
(``tests/e2e/wire.py``): well-formed ones sent at hop limit 255 with the marker in an option
(which the node's routing turns into hop limit 254, so they are not on-link ND any more), invalid
ones (wrong code, too short), and ones from an unknown source of the pod range. None may reach
``b``. Meanwhile real neighbour discovery must keep working: with every neighbour cache emptied,
``c`` still reaches ``d`` over IPv6, which needs the node and the pods to resolve each other
through the agent (the pods are isolated, so their ND with global addresses is queued).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.all import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptUnknown,
    IPv6,
    Raw,
)

from agent.lab.lab import Lab, LabRecord
from tests.e2e.labctl import LabDriver, lab_session
from tests.e2e.test_dataplane import pod
from tests.e2e.wire import capture, send_raw

pytestmark = pytest.mark.root

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-to-d, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  egress: [{to: [{podSelector: {matchLabels: {pod: d}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: d-from-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: d}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]
"""

CLUSTER = "\n---\n".join(
    ["apiVersion: v1\nkind: Namespace\nmetadata: {name: x}", *(pod(n) for n in "abcd"), POLICIES]
)

UNKNOWN_SOURCE = "fd00:10:244:1::c8"
"""An address of the lab node's IPv6 pod range that no pod has."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    with lab_session("ndabuse", tmp_path_factory.mktemp("nd")) as driver:
        driver.up(CLUSTER, extra=["--trace"])
        yield driver


def record(lab: LabDriver) -> LabRecord:
    return Lab(lab.name).record()


def ipv6_of(lab: LabDriver, key: str) -> str:
    address = record(lab).pods[key].ipv6
    assert address, f"{key} has no IPv6 address"
    return address


def carrying(marker: bytes) -> Any:
    """An ND option of an unknown type holding ``marker``: receivers skip it (RFC 4861 4.6)."""
    return ICMPv6NDOptUnknown(type=250, data=marker + b"\0" * (-(len(marker) + 2) % 8))


def attack(kind: str, source: str, target: str, marker: bytes) -> bytes:
    """One ND-typed packet carrying ``marker`` from ``source`` to ``target``."""
    header = IPv6(src=source, dst=target, hlim=255)
    messages: dict[str, Any] = {
        "ns": ICMPv6ND_NS(tgt=target) / carrying(marker),
        "na": ICMPv6ND_NA(tgt=source, S=1) / carrying(marker),
        "rs": ICMPv6ND_RS() / carrying(marker),
        "ra": ICMPv6ND_RA() / carrying(marker),
        "redirect": ICMPv6ND_Redirect(tgt="fe80::9", dst=target) / carrying(marker),
        "ns-code-1": ICMPv6ND_NS(tgt=target, code=1) / carrying(marker),
        "na-raw-payload": ICMPv6ND_NA(tgt=source) / Raw(marker),
    }
    if kind == "ns-truncated":
        header.nh = 58
        return bytes(header / Raw(bytes([135, 0, 0, 0]) + marker[:16]))
    return bytes(header / messages[kind])


KINDS = ["ns", "na", "rs", "ra", "redirect", "ns-code-1", "na-raw-payload", "ns-truncated"]


@pytest.mark.parametrize(
    ("kind", "spoofed"),
    [pytest.param(kind, False, id=kind) for kind in KINDS]
    + [pytest.param(kind, True, id=f"{kind}-from-unknown-source") for kind in ("ns", "na")],
)
def test_nd_typed_packets_carry_nothing_between_isolated_pods(
    lab: LabDriver, kind: str, spoofed: bool
) -> None:
    pods = record(lab).pods
    marker = f"nd{uuid.uuid4().hex[:14]}".encode()
    source = UNKNOWN_SOURCE if spoofed else ipv6_of(lab, "x/a")
    packet = attack(kind, source, ipv6_of(lab, "x/b"), marker)
    with capture(pods["x/b"].netns) as at_b:
        send_raw(pods["x/a"].netns, packet)
        assert not at_b.seen(marker, within=1.5), f"{kind} from a reached b"


def test_the_capture_sees_what_policy_allows(lab: LabDriver) -> None:
    """The control for the test above: the same kind of packet from c to d (which policy allows)
    does arrive, so "not seen" there means "dropped", not "missed"."""
    pods = record(lab).pods
    marker = f"nd{uuid.uuid4().hex[:14]}".encode()
    packet = attack("ns", ipv6_of(lab, "x/c"), ipv6_of(lab, "x/d"), marker)
    with capture(pods["x/d"].netns) as at_d:
        send_raw(pods["x/c"].netns, packet)
        assert at_d.seen(marker, within=1.5)


def flush_neighbours(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "-6", "neigh", "flush", "all"], check=True)


def test_real_neighbor_discovery_still_works(lab: LabDriver) -> None:
    lab_record = record(lab)
    for netns in [lab_record.nodes[0].netns, *(p.netns for p in lab_record.pods.values())]:
        flush_neighbours(netns)
    for protocol in ("TCP", "UDP"):
        matrix = lab.probe(80, protocol, family=6)
        assert matrix["x/c"]["x/d"], f"c must reach d over IPv6 ({protocol})"
        assert not matrix["x/a"]["x/b"] and not matrix["x/d"]["x/c"], protocol
    assert "accept neighbor-discovery" in lab.logs(), "ND was queued and let through"
