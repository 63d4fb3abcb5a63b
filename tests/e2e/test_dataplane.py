"""The dataplane end to end: real namespaces, veth pairs, iptables rules and NFQUEUE.

Each test builds its own lab through the real command line, sends real packets, and tears the lab
down also when it fails (``lab_session``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.lab import Lab, LabRecord
from agent.lab.netns import entered
from enforcement.firewall import CACHE_LIVENESS
from tests.e2e.labctl import COMMAND, LabDriver, lab_session, live_cache_members

pytestmark = pytest.mark.root


def pod(name: str, namespace: str = "x", port: int = 80) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: "{name}", namespace: "{namespace}", labels: {{pod: "{name}"}}}}
spec:
  containers:
  - name: serve
    image: agnhost
    ports:
    - {{containerPort: {port}, name: serve-{port}-tcp}}
    - {{containerPort: {port}, protocol: UDP, name: serve-{port}-udp}}
"""


CLUSTER = "\n---\n".join(
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}",
        pod("a"),
        pod("b"),
        pod("c"),
    ]
)


def policy(name: str, pod_name: str, body: str) -> str:
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: {pod_name}}}}}
{body}
"""


ISOLATE_B_ALLOW_ALL = policy("isolate-b", "b", "  ingress: [{}]")
DENY_INGRESS_A = policy("deny-in-a", "a", "  policyTypes: [Ingress]")
DENY_INGRESS_B = policy("deny-in-b", "b", "  policyTypes: [Ingress]")
DENY_EGRESS_B = policy("deny-out-b", "b", "  policyTypes: [Egress]")
B_FROM_A_TCP80 = policy(
    "b-from-a",
    "b",
    "  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n    ports: [{port: 80}]",
)
B_FROM_A_ANY = policy(
    "b-from-a-any", "b", "  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]"
)


MODES = ["fast", "per-packet"]


@pytest.fixture(params=MODES)
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabDriver]:
    """A lab whose agents run in each mode in turn: both modes must pass the same tests."""
    with lab_session("dp", tmp_path, up_args=["--mode", request.param]) as driver:
        yield driver


def record(lab: LabDriver) -> LabRecord:
    return Lab(lab.name).record()


def everything(matrix: dict[str, dict[str, bool]]) -> set[tuple[str, str]]:
    return {(src, dst) for src, row in matrix.items() for dst, ok in row.items() if ok}


ALL_PAIRS = {(s, d) for s in ("x/a", "x/b", "x/c") for d in ("x/a", "x/b", "x/c")}


# -- fail-open and fail-closed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reachable_after_kill"),
    [
        pytest.param(
            "--fail-closed",
            {p for p in ALL_PAIRS if "x/b" not in p} | {("x/b", "x/b")},
            id="fail-closed-drops-isolated-traffic-while-the-agent-is-gone",
        ),
        pytest.param("--fail-open", ALL_PAIRS, id="fail-open-lets-traffic-pass-while-gone"),
    ],
)
def test_agent_absent(
    lab: LabDriver, mode: str, reachable_after_kill: set[tuple[str, str]]
) -> None:
    lab.up(CLUSTER, ISOLATE_B_ALLOW_ALL, extra=[mode])
    assert everything(lab.probe(80)) == ALL_PAIRS
    agent_pid = record(lab).nodes[0].agent_pid
    assert agent_pid is not None
    os.killpg(agent_pid, signal.SIGKILL)  # not a clean exit: the rules stay behind
    time.sleep(0.2)
    # The verdict cache (fast mode) answers for the dead agent's last allows until its
    # liveness lapses, a few seconds later; then nothing decides for b.
    node = record(lab).nodes[0].netns
    died = time.monotonic()
    while live_cache_members(node):
        assert time.monotonic() - died < CACHE_LIVENESS + 2, "the cache outlived the agent"
        time.sleep(0.1)
    # Traffic of pods no policy isolates never depended on the agent.
    assert everything(lab.probe(80)) == reachable_after_kill


@pytest.mark.parametrize(
    ("mode", "rules_left"),
    [
        pytest.param("--fail-open", False, id="fail-open-removes-its-rules"),
        pytest.param("--fail-closed", True, id="fail-closed-keeps-the-queue-rules"),
    ],
)
def test_clean_exit(lab: LabDriver, mode: str, rules_left: bool) -> None:
    lab.up(CLUSTER, ISOLATE_B_ALLOW_ALL, extra=[mode])
    node = record(lab).nodes[0]
    assert node.agent_pid is not None
    os.killpg(node.agent_pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _exists(node.agent_pid):
        time.sleep(0.05)
    saved = subprocess.run(
        ["ip", "netns", "exec", node.netns, "iptables-save"], capture_output=True, text=True
    ).stdout
    assert ("NETPOL-AGENT" in saved) is rules_left


def _exists(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- stateful: return traffic -------------------------------------------------------------------


def udp_delivered(
    src_netns: str, src: tuple[str, int], dst_netns: str, dst: tuple[str, int]
) -> bool:
    """Send one datagram from ``src`` to ``dst`` (real sockets in the pods); did it arrive?"""
    with entered(dst_netns):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with entered(src_netns):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("0.0.0.0", dst[1]))
        receiver.settimeout(0.2)
        sender.bind(("0.0.0.0", src[1]))
        for _attempt in range(5):
            sender.sendto(b"hello", dst)
            try:
                _data, origin = receiver.recvfrom(64)
                return origin == src
            except TimeoutError:
                continue
        return False
    finally:
        receiver.close()
        sender.close()


def test_only_replies_of_allowed_flows_come_back(lab: LabDriver) -> None:
    lab.up(CLUSTER, DENY_INGRESS_A)
    pods = record(lab).pods
    a, b = pods["x/a"], pods["x/b"]
    assert a.ipv4 and b.ipv4
    # An unsolicited "reply" to the isolated pod: nothing was ever allowed, so it is dropped.
    assert not udp_delivered(b.netns, (b.ipv4, 5353), a.netns, (a.ipv4, 9999))
    # The isolated pod opens the flow (its egress is not isolated) ...
    assert udp_delivered(a.netns, (a.ipv4, 9999), b.netns, (b.ipv4, 5353))
    # ... and now the same datagram from b is a reply, and passes.
    assert udp_delivered(b.netns, (b.ipv4, 5353), a.netns, (a.ipv4, 9999))


def test_egress_only_policy_still_lets_replies_back(lab: LabDriver) -> None:
    lab.up(CLUSTER, DENY_EGRESS_B)
    for protocol in ("TCP", "UDP"):
        matrix = lab.probe(80, protocol)
        assert matrix["x/a"]["x/b"], "the reply of b to an allowed connection must pass"
        assert not matrix["x/b"]["x/a"], "b may not open connections"


def ping(netns: str, address: str) -> bool:
    family = "-6" if ":" in address else "-4"
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", family, "-c", "1", "-W", "1", address],
        capture_output=True,
    )
    return result.returncode == 0


def test_icmp_follows_rules_without_ports(lab: LabDriver) -> None:
    lab.up(CLUSTER, B_FROM_A_TCP80)
    pods = record(lab).pods
    a, b = pods["x/a"], pods["x/b"]
    assert a.ipv4 and b.ipv4 and a.ipv6 and b.ipv6
    assert not ping(a.netns, b.ipv4), "a rule with ports never admits ICMP"
    assert ping(b.netns, a.ipv4), "the echo reply of an allowed echo passes b's isolation"
    lab.apply(B_FROM_A_ANY)
    assert ping(a.netns, b.ipv4) and ping(a.netns, b.ipv6)
    assert not ping(pods["x/c"].netns, b.ipv4)


def test_ipv6_is_enforced_like_ipv4(lab: LabDriver) -> None:
    lab.up(CLUSTER, B_FROM_A_TCP80)
    for family in (4, 6):
        matrix = lab.probe(80, "TCP", family=family)
        assert matrix["x/a"]["x/b"] and not matrix["x/c"]["x/b"], f"IPv{family}"


# -- the node -----------------------------------------------------------------------------------


def tcp_echo(netns: str, address: str, port: int) -> bool:
    with entered(netns):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(1.5)
    try:
        client.connect((address, port))
        client.sendall(b"node-probe\n")
        return client.recv(64) == b"node-probe\n"
    except OSError:
        return False
    finally:
        client.close()


def test_node_reaches_its_pods_whatever_the_policy(lab: LabDriver) -> None:
    lab.up(CLUSTER, DENY_INGRESS_B)
    node, b = record(lab).nodes[0], record(lab).pods["x/b"]
    assert b.ipv4
    assert not lab.probe(80)["x/a"]["x/b"]
    assert tcp_echo(node.netns, b.ipv4, 80)


def test_pod_to_node_traffic_obeys_egress_policy(lab: LabDriver) -> None:
    lab.up(CLUSTER)
    node, b = record(lab).nodes[0], record(lab).pods["x/b"]
    assert b.ipv4
    node_ip = node.spec.node_ip_v4
    assert udp_delivered(b.netns, (b.ipv4, 4000), node.netns, (node_ip, 4001))
    lab.apply(DENY_EGRESS_B)
    assert not udp_delivered(b.netns, (b.ipv4, 4000), node.netns, (node_ip, 4001))


# -- the lab's own contract ---------------------------------------------------------------------


def test_relabel_updates_the_pod_in_place(lab: LabDriver) -> None:
    lab.up(CLUSTER, B_FROM_A_TCP80)
    before = {p["name"]: p["ips"] for p in lab.pods()}
    assert not lab.probe(80)["x/c"]["x/b"]
    relabelled = pod("c").replace('labels: {pod: "c"}', 'labels: {pod: "a"}')
    assert relabelled != pod("c"), "the manifest template changed: relabel it another way"
    lab.apply(relabelled)
    assert {p["name"]: p["ips"] for p in lab.pods()} == before
    assert lab.probe(80)["x/c"]["x/b"], "c now carries pod=a and is admitted"


def test_malformed_manifest_is_refused_and_changes_nothing(lab: LabDriver, tmp_path: Path) -> None:
    lab.up(CLUSTER)
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        B_FROM_A_TCP80.replace("ports: [{port: 80}]", "ports: [{port: 70000}]")
        + "---\n"
        + DENY_INGRESS_A
    )
    result = subprocess.run(
        [*COMMAND, "lab", "apply", "--lab", lab.name, "-f", str(broken)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert str(broken) in result.stderr
    assert "NetworkPolicy x/b-from-a" in result.stderr
    assert "spec.ingress[0].ports[0].port" in result.stderr
    # Nothing changed: not even the valid second policy in the same file.
    assert everything(lab.probe(80)) == ALL_PAIRS


def test_new_pod_is_enforced_from_its_first_packet(lab: LabDriver) -> None:
    lab.up(CLUSTER, policy("deny-all-in", "d", "  policyTypes: [Ingress]"))
    lab.apply(pod("d"))
    matrix = lab.probe(80)
    assert not matrix["x/a"]["x/d"]
    assert matrix["x/d"]["x/a"]


def test_deleting_a_namespace_removes_its_pods(lab: LabDriver) -> None:
    lab.up(CLUSTER, 'apiVersion: v1\nkind: Namespace\nmetadata: {name: "y"}', pod("e", "y"))
    assert "y/e" in lab.probe(80)
    lab.delete('apiVersion: v1\nkind: Namespace\nmetadata: {name: "y"}')
    assert "y/e" not in lab.probe(80)
    assert not [p for p in lab.pods() if p["namespace"] == "y"]
    assert not [name for name in os.listdir("/run/netns") if name == record(lab).prefix + "y-e"]


def test_an_undeclared_address_in_the_pod_range_is_cut_off(lab: LabDriver) -> None:
    """A pod the agent does not know yet (here: one no manifest declares) gets nothing through,
    while known pods are unaffected: new pods are enforced from their first packet."""
    from agent.lab import topology

    lab.up(CLUSTER)
    record = Lab(lab.name).record()
    node, a = record.nodes[0], record.pods["x/a"]
    assert a.ipv4
    rogue = topology.PodAttachment(
        key="x/rogue", netns=f"{record.prefix}rogue", node_veth="nprogue0",
        ipv4="10.244.1.250", ipv6=None,
    )  # fmt: skip
    topology.attach_pod(node.spec, rogue)
    try:
        assert not udp_delivered(rogue.netns, ("10.244.1.250", 4000), a.netns, (a.ipv4, 4001))
        assert not udp_delivered(a.netns, (a.ipv4, 4001), rogue.netns, ("10.244.1.250", 4000))
        assert everything(lab.probe(80)) == ALL_PAIRS
    finally:
        topology.detach_pod(rogue)  # not the lab's: 'lab down' removes only what it recorded


def test_pod_to_service_is_enforced_after_kube_proxy_dnat(lab: LabDriver) -> None:
    """kube-proxy (iptables mode) DNATs a ClusterIP to a pod in PREROUTING; the filter hooks see
    the translated destination, so the destination pod's policy applies to Service traffic."""
    lab.up(
        CLUSTER,
        policy("b-from-c", "b", "  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}}]"),
    )
    record = Lab(lab.name).record()
    node, pods = record.nodes[0], record.pods
    service_ip = "10.96.0.10"  # a ClusterIP, as kind's service range would give
    subprocess.run(
        ["ip", "netns", "exec", node.netns, "iptables", "-t", "nat", "-A", "PREROUTING",
         "-d", service_ip, "-p", "tcp", "--dport", "80",
         "-j", "DNAT", "--to-destination", f"{pods['x/b'].ipv4}:80"],
        check=True,
    )  # fmt: skip
    assert tcp_echo(pods["x/c"].netns, service_ip, 80), "c is admitted by b's policy"
    assert not tcp_echo(pods["x/a"].netns, service_ip, 80), "a is not, through the Service too"
