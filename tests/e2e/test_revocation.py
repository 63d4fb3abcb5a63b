"""Cutting accepted connections a change denies, end to end: through a kube-proxy-style Service
(DNAT in the node), direct, to a deleted pod's address, and in a table of thousands of entries.

The lab's Service is the iptables DNAT kube-proxy's iptables mode installs in the node's nat
PREROUTING chain (as in test_dataplane.py's Service test).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.bench import revocation as bench
from agent.lab import topology
from agent.lab.lab import Lab
from agent.lab.netns import entered
from enforcement.compiler import compile_tables
from enforcement.conntrack import Revoker
from enforcement.ctnetlink import CtNetlink
from enforcement.firewall import MARK_ACCEPTED, MARK_HOST
from tests.e2e.labctl import LabDriver, lab_session, netpol_agent
from tests.e2e.test_dataplane import (
    B_FROM_A_ANY,
    CLUSTER,
    DENY_INGRESS_B,
    MODES,
    pod,
    udp_delivered,
)
from tests.e2e.test_queue_modes import EchoServer, connect, echoes

pytestmark = pytest.mark.root

SERVICE_IP = "10.96.0.10"
"""A ClusterIP, as kind's service range would give; no interface has it."""
SERVICE_PORT = 80
TARGET_PORT = 8080


def add_service(node_netns: str, pod_ip: str) -> None:
    """kube-proxy's iptables mode, reduced to one endpoint: DNAT the ClusterIP in PREROUTING."""
    subprocess.run(
        ["ip", "netns", "exec", node_netns, "iptables", "-t", "nat", "-A", "PREROUTING",
         "-d", SERVICE_IP, "-p", "tcp", "--dport", str(SERVICE_PORT),
         "-j", "DNAT", "--to-destination", f"{pod_ip}:{TARGET_PORT}"],
        check=True,
    )  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["service", "direct"])
def test_a_denying_change_cuts_the_connection(tmp_path: Path, mode: str, path: str) -> None:
    """a talks to b, through the ClusterIP or directly; the policy admitting a goes away and b
    denies all ingress: the next exchange fails, well within one second."""
    with lab_session("rvk", tmp_path, up_args=["--mode", mode]) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        record = Lab(lab.name).record()
        a, b = record.pods["x/a"], record.pods["x/b"]
        assert a.ipv4 and b.ipv4
        add_service(record.nodes[0].netns, b.ipv4)
        server = EchoServer(b.netns, TARGET_PORT)
        try:
            if path == "service":
                client = connect(a.netns, SERVICE_IP, SERVICE_PORT)
            else:
                client = connect(a.netns, b.ipv4, TARGET_PORT)
            assert echoes(client), "allowed before the change"
            lab.delete(B_FROM_A_ANY)
            lab.apply(DENY_INGRESS_B)
            # `apply` returned: the change is in force.
            assert not echoes(client, timeout=1.0), f"the {path} connection survived the change"
            client.close()
            _assert_revocation_recorded(lab, a.ipv4, b.ipv4)
        finally:
            server.close()


def _assert_revocation_recorded(lab: LabDriver, a: str, b: str) -> None:
    """The flow log names the cut connection and the policy that cut it (the fast path's
    revocation in conntrack, or per-packet mode's on the connection's next packet)."""
    deadline = time.monotonic() + 5
    while True:
        records = json.loads(netpol_agent("lab", "flows", "--lab", lab.name, "-o", "json"))
        revoked = [
            r for r in records
            if r["event"] == "revoked" and (r["src_ip"], r["dst_ip"]) == (a, b)
        ]  # fmt: skip
        if revoked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert revoked, f"no revoked record of {a} -> {b} in {records}"
    record = revoked[0]
    assert (record["src"], record["dst"], record["dst_port"]) == ("x/a", "x/b", TARGET_PORT)
    assert record["verdict"] == "denied" and record["reason"] == "revoked"
    assert [(ref["name"], ref["action"]) for ref in record["decided_by"]] == [
        ("deny-in-b", "Isolate")
    ]


@pytest.mark.parametrize("mode", MODES)
def test_a_deleted_pods_connections_do_not_pass_for_its_address(tmp_path: Path, mode: str) -> None:
    """b talked to a over UDP (accepted: b is isolated). b is deleted and something else shows up
    at b's address before the agent knows any pod there: what it sends as b's old flow must not
    pass on the old connection's verdict."""
    with lab_session("rvk", tmp_path, up_args=["--mode", mode]) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        record = Lab(lab.name).record()
        node, a, b = record.nodes[0], record.pods["x/a"], record.pods["x/b"]
        assert a.ipv4 and b.ipv4
        assert udp_delivered(a.netns, (a.ipv4, 4001), b.netns, (b.ipv4, 4000))
        assert udp_delivered(b.netns, (b.ipv4, 4000), a.netns, (a.ipv4, 4001)), "the reply"
        lab.delete(pod("b"))
        rogue = topology.PodAttachment(
            key="x/rogue", netns=f"{record.prefix}rogue", node_veth="nprogue0",
            ipv4=b.ipv4, ipv6=None,
        )  # fmt: skip
        topology.attach_pod(node.spec, rogue)
        try:
            assert not udp_delivered(rogue.netns, (b.ipv4, 4000), a.netns, (a.ipv4, 4001)), (
                "a packet of the deleted pod's accepted flow passed"
            )
        finally:
            topology.detach_pod(rogue)


def test_thousands_of_entries_only_the_denied_ones_are_deleted(scratch_netns: str) -> None:
    """3000 accepted Service connections to 50 pods, plus unmarked and node-opened ones; one
    pod's policy becomes deny-all: exactly its 60 connections go, the others stay."""
    count = 3000
    with entered(scratch_netns), CtNetlink() as netlink:
        assert netlink.create(bench.service_entries(count)) == count
        extra = list(bench.service_entries(count + 2 * bench.REMOTE_PODS))[count:]
        unmarked = [(f, o, r, 0, t) for f, o, r, _m, t in extra[: bench.REMOTE_PODS]]
        host = [
            (f, o, r, MARK_ACCEPTED | MARK_HOST, t) for f, o, r, _m, t in extra[bench.REMOTE_PODS :]
        ]
        assert netlink.create(unmarked + host) == len(unmarked) + len(host)

        revoker = Revoker()
        before = bench.cluster()
        first = revoker.revoke_denied(
            compile_tables(before, bench.NODE, 1), before, (bench.POD_CIDR,)
        )
        assert (first.cut, first.judged) == (0, count + len(host))

        denied_pod = 3
        after = bench.cluster(denied=denied_pod)
        change = revoker.revoke_denied(
            compile_tables(after, bench.NODE, 2), after, (bench.POD_CIDR,)
        )
        server = socket.inet_aton(bench.local_address(denied_pod))
        expected = count // bench.LOCAL_PODS
        assert (change.cut, change.full) == (expected, False)
        left = [entry for family in (socket.AF_INET,) for entry in netlink.dump(family, 0, 0)]
        assert len(left) == count + len(unmarked) + len(host) - expected
        survivors_to_denied = [e for e in left if e.reply.src == server]
        # Only the node's own connections to the denied pod stay (NetworkPolicy always allows
        # the node); the unmarked ones were never accepted by the agent, so they are not its to cut.
        assert all(e.mark & MARK_HOST or not e.mark & MARK_ACCEPTED for e in survivors_to_denied)
