"""What the two modes promise beyond the verdicts: how much reaches userspace, cutting established
connections on a denying change, GSO, and fail-open when the queue is full."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from agent.health import DEFAULT_HEALTH_PORT
from agent.lab.lab import Lab
from agent.lab.netns import entered
from tests.e2e.labctl import LabDriver, lab_session
from tests.e2e.test_dataplane import (
    ALL_PAIRS,
    B_FROM_A_ANY,
    CLUSTER,
    DENY_INGRESS_B,
    ISOLATE_B_ALLOW_ALL,
    MODES,
    everything,
)

pytestmark = pytest.mark.root


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def metrics(lab: LabDriver) -> dict[str, float]:
    """The node agent's Prometheus samples, read from inside the node namespace."""
    node = Lab(lab.name).record().nodes[0]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with (
        entered(node.netns),
        direct.open(f"http://127.0.0.1:{DEFAULT_HEALTH_PORT}/metrics", timeout=5) as reply,
    ):
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def queued(lab: LabDriver) -> float:
    return sum(v for k, v in metrics(lab).items() if k.startswith("netpol_agent_packets_total"))


class EchoServer:
    """A TCP echo server inside a pod, for long-lived connections (the lab's responder closes
    after one line)."""

    def __init__(self, netns: str, port: int) -> None:
        with entered(netns):
            self.listener = socket.create_server(("0.0.0.0", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(1 << 16):
                connection.sendall(data)

    def close(self) -> None:
        self.listener.close()


def connect(netns: str, address: str, port: int) -> socket.socket:
    with entered(netns):
        client = socket.socket()
    client.settimeout(2)
    client.connect((address, port))
    return client


def echoes(client: socket.socket, timeout: float = 1.0) -> bool:
    client.settimeout(timeout)
    try:
        client.sendall(b"ping")
        return client.recv(16) == b"ping"
    except OSError:
        return False


@pytest.mark.parametrize("mode", MODES)
def test_a_denying_change_cuts_established_connections(workdir: Path, mode: str) -> None:
    with lab_session("cut", workdir, up_args=["--mode", mode]) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        pods = Lab(lab.name).record().pods
        a, b = pods["x/a"], pods["x/b"]
        assert a.ipv4 and b.ipv4
        server = EchoServer(b.netns, 8080)
        try:
            client = connect(a.netns, b.ipv4, 8080)
            assert echoes(client), "allowed before the change"
            lab.delete(B_FROM_A_ANY)
            lab.apply(DENY_INGRESS_B)
            # `apply` returned: the change is in force. The very next exchange must fail,
            # well within one second.
            assert not echoes(client, timeout=1.0), "the established connection survived"
            client.close()
        finally:
            server.close()


def test_fast_path_decides_only_first_packets(workdir: Path) -> None:
    with lab_session("fast", workdir, up_args=["--mode", "fast"]) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        pods = Lab(lab.name).record().pods
        server = EchoServer(pods["x/b"].netns, 8080)
        try:
            client = connect(pods["x/a"].netns, str(pods["x/b"].ipv4), 8080)
            before = queued(lab)
            for _ in range(200):
                assert echoes(client)
            client.close()
            # One connection, 400 segments or more each way: userspace saw a handful at most.
            assert queued(lab) - before <= 3
        finally:
            server.close()


def test_per_packet_mode_sees_gso_super_packets(workdir: Path) -> None:
    with lab_session("gso", workdir, up_args=["--mode", "per-packet"]) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        pods = Lab(lab.name).record().pods
        server = EchoServer(pods["x/b"].netns, 8080)
        try:
            client = connect(pods["x/a"].netns, str(pods["x/b"].ipv4), 8080)
            before = queued(lab)
            payload = b"x" * (8 << 20)
            sender = threading.Thread(target=client.sendall, args=(payload,))
            sender.start()
            received = 0
            client.settimeout(10)
            while received < len(payload):
                received += len(client.recv(1 << 20))
            sender.join()
            client.close()
            segments = 2 * len(payload) // 1448  # both directions, at one MSS per packet
            decided = queued(lab) - before
            assert decided > 0, "per-packet mode decides the connection's packets"
            assert decided < segments / 2, f"{decided} decisions for {segments} segments"
        finally:
            server.close()


@pytest.mark.parametrize(
    ("mode", "reachable"),
    [
        pytest.param("--fail-open", ALL_PAIRS, id="fail-open-accepts-when-the-queue-is-full"),
        pytest.param(
            "--fail-closed",
            {p for p in ALL_PAIRS if "x/b" not in p} | {("x/b", "x/b")},
            id="fail-closed-drops-when-the-queue-is-full",
        ),
    ],
)
def test_full_queue(workdir: Path, mode: str, reachable: set[tuple[str, str]]) -> None:
    with lab_session("full", workdir, up_args=[mode, "--queue-max-len", "2"]) as lab:
        lab.up(CLUSTER, ISOLATE_B_ALLOW_ALL)
        agent = Lab(lab.name).record().nodes[0].agent_pid
        assert agent is not None
        os.killpg(agent, signal.SIGSTOP)  # bound but not reading: the queue fills up
        try:
            time.sleep(0.1)
            lab.probe(80)  # fills the two places of the queue
            assert everything(lab.probe(80)) == reachable
        finally:
            os.killpg(agent, signal.SIGCONT)


@pytest.mark.parametrize("mode", MODES)
def test_queue_balancing_over_worker_processes(workdir: Path, mode: str) -> None:
    up_args = ["--mode", mode, "--queue-workers", "2"]
    with lab_session("qbal", workdir, up_args=up_args) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        for _round in range(3):
            matrix = lab.probe(80)
            assert matrix["x/a"]["x/b"] and not matrix["x/c"]["x/b"]
        # Which queue a connection lands on is the kernel's hash of its address pair (seeded
        # per rule): a few pairs may all land on one queue. So: both queues have a listener
        # (the kernel's own table), each is a worker process of its own, and the decisions
        # were made by the workers, wherever they fell.
        node = Lab(lab.name).record().nodes[0]
        with entered(node.netns), open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
            bound = {int(line.split()[0]) for line in f if line.strip()}
        assert {1000, 1001} <= bound, bound
        status = json.loads((Lab(lab.name).dir / f"status-{node.name}.json").read_text())
        pids = {entry["queue"]: entry["pid"] for entry in status["workers"]}
        assert set(pids) == {1000, 1001} and len(set(pids.values())) == 2, pids
        assert node.agent_pid not in pids.values(), "deciding happens in the worker processes"
        per_queue = {
            queue: sum(
                value
                for name, value in metrics(lab).items()
                if name.startswith("netpol_agent_packets_total") and f'queue="{queue}"' in name
            )
            for queue in ("1000", "1001")
        }
        assert sum(per_queue.values()) > 0, per_queue
        # A change is in force in every worker when `apply` returns.
        lab.delete(B_FROM_A_ANY)
        lab.apply(DENY_INGRESS_B)
        status = json.loads((Lab(lab.name).dir / f"status-{node.name}.json").read_text())
        assert {entry["generation"] for entry in status["workers"]} == {status["generation"]}
        assert not lab.probe(80)["x/a"]["x/b"]
