"""Spoofed source addresses (issue 7, finding 5): a pod may only send with its own addresses.

Pod ``c`` admits pod ``b`` and an external range (203.0.113.0/24, 2001:db8:203::/48), not ``a``.
From inside ``a``, hand-made packets (``tests/e2e/wire.py``) carry someone else's source address:
``b``'s, an unknown address of the node's pod range, or one of the admitted external range. Were
the source trusted, ``c`` would receive them as ``b``'s (or the outside's). The lab's agent runs
with ``--anti-spoofing --pod-interface np+``: strict reverse-path filtering drops them in the node
before conntrack and the queue. The same packets with ``b``'s own source, sent by ``b``, do
arrive: the check stops the lie, not the traffic.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from scapy.all import IP, TCP, UDP, IPv6

from agent.lab.lab import Lab, LabRecord
from enforcement.firewall import Firewall, FirewallConfig, subprocess_runner
from tests.e2e.labctl import LabDriver, lab_session
from tests.e2e.test_dataplane import pod, udp_delivered
from tests.e2e.wire import capture, send_raw

pytestmark = pytest.mark.root

ADMITTED_V4, ADMITTED_V6 = "203.0.113.0/24", "2001:db8:203::/48"

CLUSTER = "\n---\n".join(
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}",
        pod("a"),
        pod("b"),
        pod("c"),
        f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: c-from-b, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: c}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{pod: b}}}}
    - ipBlock: {{cidr: {ADMITTED_V4}}}
    - ipBlock: {{cidr: {ADMITTED_V6}}}
""",
    ]
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    with lab_session("spoof", tmp_path_factory.mktemp("spoof")) as driver:
        driver.up(CLUSTER)
        yield driver


def record(lab: LabDriver) -> LabRecord:
    return Lab(lab.name).record()


def address(lab: LabDriver, key: str, family: int) -> str:
    found = record(lab).pods[key]
    value = found.ipv4 if family == 4 else found.ipv6
    assert value, f"{key} has no IPv{family} address"
    return value


def segment(protocol: str, marker: bytes) -> Any:
    """A UDP datagram or a TCP SYN to port 80 that carries ``marker`` (a SYN may carry data)."""
    if protocol == "UDP":
        return UDP(sport=40000, dport=80) / marker
    return TCP(sport=40000, dport=80, flags="S", seq=1) / marker


def forged(source: str, destination: str, protocol: str, marker: bytes) -> bytes:
    header = IPv6(src=source, dst=destination) if ":" in source else IP(src=source, dst=destination)
    return bytes(header / segment(protocol, marker))


def arrives(lab: LabDriver, sender: str, packet: bytes, marker: bytes) -> bool:
    """Send ``packet`` from pod ``sender`` (three times); did it reach pod ``c``'s interface?"""
    pods = record(lab).pods
    with capture(pods["x/c"].netns) as at_c:
        send_raw(pods[sender].netns, packet)
        # A delivered packet shows up within milliseconds; the control cases below prove that
        # this window is enough on this machine.
        return at_c.seen(marker, within=1.5)


def source_of(lab: LabDriver, who: str, family: int) -> str:
    """The source address a case forges: a pod's, or an unknown or external one."""
    if who == "unknown-pod-address":
        return "10.244.1.200" if family == 4 else "fd00:10:244:1::c8"
    if who == "admitted-external-address":
        return "203.0.113.7" if family == 4 else "2001:db8:203::7"
    return address(lab, who, family)


CASES = [
    pytest.param(family, protocol, who, id=f"ipv{family}-{protocol.lower()}-as-{who}")
    for family in (4, 6)
    for protocol in ("UDP", "TCP")
    for who in ("x/b", "unknown-pod-address", "admitted-external-address")
]


@pytest.mark.parametrize(("family", "protocol", "who"), CASES)
def test_a_pod_cannot_send_with_another_source(
    lab: LabDriver, family: int, protocol: str, who: str
) -> None:
    marker = f"spoofed-{uuid.uuid4().hex}".encode()
    source = source_of(lab, who, family)
    packet = forged(source, address(lab, "x/c", family), protocol, marker)
    assert not arrives(lab, "x/a", packet, marker), f"a reached c posing as {source}"


@pytest.mark.parametrize(
    ("family", "protocol"),
    [pytest.param(f, p, id=f"ipv{f}-{p.lower()}") for f in (4, 6) for p in ("UDP", "TCP")],
)
def test_the_same_packet_from_its_real_owner_arrives(
    lab: LabDriver, family: int, protocol: str
) -> None:
    """The control: b's own packets, built the same way, reach c (c's policy admits b)."""
    marker = f"genuine-{uuid.uuid4().hex}".encode()
    packet = forged(address(lab, "x/b", family), address(lab, "x/c", family), protocol, marker)
    assert arrives(lab, "x/b", packet, marker)


def test_normal_traffic_still_flows(lab: LabDriver) -> None:
    for family in (4, 6):
        for protocol in ("TCP", "UDP"):
            matrix = lab.probe(80, protocol, family=family)
            assert matrix["x/b"]["x/c"] and not matrix["x/a"]["x/c"], f"IPv{family} {protocol}"
            assert matrix["x/a"]["x/b"] and matrix["x/c"]["x/a"], f"IPv{family} {protocol}"
    pods = record(lab).pods
    a, b = pods["x/a"], pods["x/b"]
    assert a.ipv4 and b.ipv4
    assert udp_delivered(a.netns, (a.ipv4, 5000), b.netns, (b.ipv4, 5001))


def test_drops_are_counted(lab: LabDriver) -> None:
    node = record(lab).nodes[0].netns

    def run(argv: Sequence[str], stdin: str | None) -> str:
        return subprocess_runner(["ip", "netns", "exec", node, *argv], stdin)

    raw = run(["iptables-save", "-t", "raw"], None)
    assert raw.splitlines().count("-A PREROUTING -j NETPOL-AGENT-ANTISPOOF") == 1, raw
    counter = Firewall(FirewallConfig(), run=run)
    before = counter.spoofed_drops()
    marker = f"counted-{uuid.uuid4().hex}".encode()
    packet = forged(address(lab, "x/b", 4), address(lab, "x/c", 4), "UDP", marker)
    assert not arrives(lab, "x/a", packet, marker)
    assert counter.spoofed_drops() == before + 3, "each of the three copies counted once"
    # The agent reports the same counters (status file and metrics), read every few seconds.
    lab_dir = Lab(lab.name).dir
    deadline = time.monotonic() + 15
    reported = 0
    while time.monotonic() < deadline:
        status = json.loads((lab_dir / "status-node-1.json").read_text())
        reported = status["spoofed_packets"]
        if reported >= before + 3:
            break
        time.sleep(0.2)
    assert reported >= before + 3, f"the agent reports {reported} spoofed packets"
