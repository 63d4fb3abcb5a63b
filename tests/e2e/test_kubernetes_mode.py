"""Kubernetes mode end to end: ``netpol-agent run --kubeconfig`` in a lab node namespace.

The lab builds the network only (``--no-agent``); the test's API server (the list/watch protocol
over real HTTP) holds the cluster's objects, and a real agent learns them from it, as on a node of
a real cluster. Loopback is per network namespace, so the server's socket is created inside the
node namespace, where the agent can reach 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lab.lab import Lab
from agent.lab.netns import entered
from agent.sources.lab_store import read_store
from tests.agent.sources.fake_apiserver import FakeApiServer
from tests.agent.sources.test_kubernetes import write_kubeconfig
from tests.e2e.labctl import COMMAND, REPO, LabDriver, lab_session
from tests.e2e.test_dataplane import CLUSTER, pod

pytestmark = pytest.mark.root

IN_FORCE_WITHIN = 1.0
"""Seconds within which a change on the API server must be enforced (the issue's promise)."""


def policy_b_from(peer: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "b-ingress", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{"from": [json.loads(peer)]}],
        },
    }


class RunningAgent:
    def __init__(self, process: subprocess.Popen[bytes], status: Path) -> None:
        self.process = process
        self.status_path = status

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def wait(self, condition: Callable[[dict[str, Any]], bool], timeout: float) -> float:
        """Seconds until ``condition(status)`` held; fails after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.process.poll() is None, "the agent exited"
            if condition(self.status()):
                return time.monotonic() - started
            time.sleep(0.005)
        raise AssertionError(f"not in force within {timeout}s; status: {self.status()}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LabDriver, FakeApiServer, RunningAgent]]:
    extra_namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}"
    with lab_session("k8s", tmp_path) as lab:
        lab.up(CLUSTER, extra_namespace, pod("c2", "y"), extra=["--no-agent"])
        record = Lab(lab.name).record()
        node = record.nodes[0]
        server = FakeApiServer()
        _revision, objects = read_store(Lab(lab.name).store_path)
        for obj in objects:
            if obj["kind"] in ("Namespace", "Pod"):
                server.create(obj["kind"], obj)
        with entered(node.netns):
            server.start()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        status = tmp_path / "status.json"
        log = (tmp_path / "agent.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, *COMMAND, "run", "--kubeconfig", str(kubeconfig),
             "--node-name", node.name, "--status-file", str(status), "--health-port", "9099"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "NO_PROXY": "*", "no_proxy": "*"},
        )  # fmt: skip
        agent = RunningAgent(process, status)
        try:
            agent.wait(lambda s: bool(s.get("ready")), timeout=30)
            yield lab, server, agent
        except BaseException:
            print((tmp_path / "agent.log").read_text())
            raise
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
            log.close()
            server.stop()


def test_run_follows_the_api_server(
    cluster: tuple[LabDriver, FakeApiServer, RunningAgent],
) -> None:
    lab, server, agent = cluster
    assert agent.status()["pods"] == 4
    assert lab.probe(80)["y/c2"]["x/b"]

    # A new policy: b admits only namespace y pods labelled team=blue... none yet.
    generation = agent.status()["generation"]
    server.create(
        "NetworkPolicy",
        policy_b_from('{"namespaceSelector": {"matchLabels": {"team": "blue"}}}'),
    )
    took = agent.wait(lambda s: s["generation"] > generation and s["policies"] == 1, 5)
    assert took < IN_FORCE_WITHIN
    matrix = lab.probe(80)
    assert not matrix["y/c2"]["x/b"] and not matrix["x/a"]["x/b"]

    # A namespace relabel opens it for every pod of the namespace.
    generation = agent.status()["generation"]
    server.update(
        "Namespace",
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "y", "labels": {"team": "blue", "kubernetes.io/metadata.name": "y"}}},
    )  # fmt: skip
    took = agent.wait(lambda s: s["generation"] > generation, 5)
    assert took < IN_FORCE_WITHIN
    assert lab.probe(80)["y/c2"]["x/b"]

    # The source's list/watch counters are exported with the agent's own.
    node = Lab(lab.name).record().nodes[0]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    with entered(node.netns), direct.open("http://127.0.0.1:9099/metrics") as reply:
        metrics = reply.read().decode()
    assert 'netpol_agent_source_events_total{kind="Namespace"} 1.0' in metrics
    assert 'netpol_agent_source_lists_total{kind="NetworkPolicy"} 1.0' in metrics
    assert "netpol_agent_ready 1.0" in metrics

    # A deleted pod is no longer a member of anything: its address is a stranger.
    generation = agent.status()["generation"]
    server.delete("Pod", "c2", "y")
    took = agent.wait(lambda s: s["generation"] > generation and s["pods"] == 3, 5)
    assert took < IN_FORCE_WITHIN
    assert not lab.probe(80)["y/c2"]["x/b"]
