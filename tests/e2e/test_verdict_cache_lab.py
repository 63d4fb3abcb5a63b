"""The kernel-side verdict cache on real packets (docs/design-verdict-cache.md): the next
connection of an allowed tuple is admitted without the queue and still recorded with the rule
that allowed it; a change that denies the tuple denies the next connection at once, also while
connections keep being opened during the change; ``--no-verdict-cache`` turns it off.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.lab.lab import Lab, LabPod
from agent.lab.netns import entered
from tests.e2e.labctl import LabDriver, ipset, lab_session, live_cache_members, netpol_agent
from tests.e2e.test_dataplane import B_FROM_A_ANY, CLUSTER, DENY_INGRESS_B
from tests.e2e.test_queue_modes import EchoServer, connect, echoes

pytestmark = pytest.mark.root

PORT = 8080


def _records(lab: LabDriver, a: LabPod, b: LabPod) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(
        netpol_agent("lab", "flows", "--lab", lab.name, "-o", "json")
    )
    return [r for r in records if (r["src_ip"], r["dst_ip"]) == (a.ipv4, b.ipv4)]


def _record_of(lab: LabDriver, a: LabPod, b: LabPod, src_port: int) -> dict[str, Any]:
    """The flow record of the connection from ``src_port``; the flow log is written in batches."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in _records(lab, a, b) if r["src_port"] == src_port]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(found) == 1, f"records of port {src_port}: {found}"
    return found[0]


def _cache_members(netns: str) -> str:
    """What the node's live IPv4 cache answers from: the members of the sets its list holds."""
    return "\n".join(ipset(netns, "list", name) for name in live_cache_members(netns))


def _cached_connections(lab: LabDriver) -> int:
    """The agent's count of connections the cache admitted, once it has read the counter (every
    few seconds: the jump check's interval)."""
    path = Lab(lab.name).dir / "status-node-1.json"
    deadline = time.monotonic() + 10
    while True:
        count: int = json.loads(path.read_text()).get("cached_connections", 0)
        if count or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def _pods(lab: LabDriver) -> tuple[LabPod, LabPod, str]:
    record = Lab(lab.name).record()
    a, b = record.pods["x/a"], record.pods["x/b"]
    assert a.ipv4 and b.ipv4
    return a, b, record.nodes[0].netns


def test_the_next_connection_of_an_allowed_tuple_is_admitted_by_the_cache(
    tmp_path: Path,
) -> None:
    with lab_session("vc", tmp_path) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        a, b, node = _pods(lab)
        assert b.ipv4
        server = EchoServer(b.netns, PORT)
        try:
            first = connect(a.netns, b.ipv4, PORT)
            assert echoes(first)
            assert f"{a.ipv4},tcp:{PORT},{b.ipv4}" in _cache_members(node)
            second = connect(a.netns, b.ipv4, PORT)
            assert echoes(second)
            queued = _record_of(lab, a, b, first.getsockname()[1])
            cached = _record_of(lab, a, b, second.getsockname()[1])
            counted = _cached_connections(lab)
            first.close()
            second.close()
        finally:
            server.close()
    assert "cached" not in queued and cached["cached"] is True
    assert counted >= 1, "the agent's status counts connections the cache admitted"
    for record in (queued, cached):
        assert record["verdict"] == "allowed" and record["dst_port"] == PORT
        assert [(ref["name"], ref["rule"]) for ref in record["decided_by"]] == [("b-from-a-any", 0)]


def _opens(netns: str, address: str) -> bool:
    with entered(netns):
        client = socket.socket()
    client.settimeout(0.3)
    try:
        client.connect((address, PORT))
        return True
    except OSError:
        return False
    finally:
        client.close()


def test_a_denying_change_is_in_force_for_the_next_connection_while_connections_keep_coming(
    tmp_path: Path,
) -> None:
    """A client opens connections in a loop; the policy admitting it is replaced by a deny. Once
    ``apply`` returns (the change is in force), no connection opened afterwards gets through,
    from the cache or otherwise."""
    with lab_session("vc", tmp_path) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        a, b, node = _pods(lab)
        assert b.ipv4
        server = EchoServer(b.netns, PORT)
        opened_after: list[float] = []
        in_force = [float("inf")]
        stop = threading.Event()
        attempts = [0]

        def keep_connecting() -> None:
            assert b.ipv4
            while not stop.is_set():
                started = time.monotonic()
                attempts[0] += 1
                if _opens(a.netns, b.ipv4) and started > in_force[0]:
                    opened_after.append(started)

        try:
            assert _opens(a.netns, b.ipv4)
            client = threading.Thread(target=keep_connecting, daemon=True)
            client.start()
            time.sleep(0.5)
            lab.apply(DENY_INGRESS_B)
            lab.delete(B_FROM_A_ANY)
            in_force[0] = time.monotonic()
            time.sleep(1.0)
            stop.set()
            client.join(timeout=5)
            leftover = _cache_members(node)
        finally:
            server.close()
    assert attempts[0] > 5
    assert not opened_after, f"{len(opened_after)} connections opened after the change"
    assert f"{a.ipv4},tcp:{PORT},{b.ipv4}" not in leftover


def test_without_the_cache_every_connection_goes_to_the_queue(tmp_path: Path) -> None:
    with lab_session("vc", tmp_path, up_args=["--no-verdict-cache"]) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        a, b, node = _pods(lab)
        assert b.ipv4
        server = EchoServer(b.netns, PORT)
        try:
            ports = []
            for _ in range(2):
                client = connect(a.netns, b.ipv4, PORT)
                assert echoes(client)
                ports.append(client.getsockname()[1])
                client.close()
            records = [_record_of(lab, a, b, port) for port in ports]
        finally:
            server.close()
        listing = ipset(node, "list", "-n")
    assert all("cached" not in record for record in records)
    assert "cache" not in listing
