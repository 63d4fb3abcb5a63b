"""Kubernetes mode end to end: ``netpol-agent run --kubeconfig`` in a lab node namespace.

The lab builds the network only (``--no-agent``); the test's API server (the list/watch protocol
over real HTTP) holds the cluster's objects, and a real agent learns them from it, as on a node of
a real cluster. Loopback is per network namespace, so the server's socket is created inside the
node namespace, where the agent can reach 127.0.0.1. ClusterNetworkPolicy in this mode (the
CRD served, absent, removed) is in test_kubernetes_mode_tiers.py, on the helpers here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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
    def __init__(self, process: subprocess.Popen[bytes], status: Path, log: Path) -> None:
        self.process = process
        self.status_path = status
        self.log_path = log

    def log(self) -> str:
        """What the agent logged so far."""
        return self.log_path.read_text(errors="replace")

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
    """x/a, x/b, x/c and y/c2 on one node; the API server serves no ClusterNetworkPolicy CRD."""
    extra_namespace = 'apiVersion: v1\nkind: Namespace\nmetadata: {name: "y"}'
    with lab_session("k8s", tmp_path) as lab:
        lab.up(CLUSTER, extra_namespace, pod("c2", "y"), extra=["--no-agent"])
        server = FakeApiServer()
        serve_lab_objects(lab, server)
        with agent_on_node_1(tmp_path, lab, server, health_port=9099) as agent:
            yield lab, server, agent


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

    # No ClusterNetworkPolicy CRD: ready all the same, and a warning says none is enforced.
    [absent] = [
        line for line in agent.log().splitlines() if "ClusterNetworkPolicy: not served" in line
    ]
    assert "WARNING" in absent and "none enforced" in absent, absent
    assert "NetworkPolicy enforcement goes on" in absent, absent
    assert 'netpol_agent_source_lists_total{kind="ClusterNetworkPolicy"} 0.0' in metrics

    # A deleted pod is no longer a member of anything: its address is a stranger.
    generation = agent.status()["generation"]
    server.delete("Pod", "c2", "y")
    took = agent.wait(lambda s: s["generation"] > generation and s["pods"] == 3, 5)
    assert took < IN_FORCE_WITHIN
    assert not lab.probe(80)["y/c2"]["x/b"]


# -- the new-pod guard from the Node's spec.podCIDRs -------------------------------------------

NEW_POD = "x/new"
"""A pod the lab runs but the API server does not know yet (its object has not reached it)."""


def lab_node(name: str, cidrs: Sequence[str]) -> dict[str, Any]:
    """The lab node's Node object, as the controller manager leaves it (podCIDR = podCIDRs[0])."""
    spec: dict[str, Any] = {"podCIDRs": list(cidrs), "podCIDR": cidrs[0]} if cidrs else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


def serve_lab_objects(lab: LabDriver, server: FakeApiServer, *withheld: str) -> None:
    """The lab's Namespaces and Pods onto the API server, but the pods named in ``withheld``
    (``namespace/name``)."""
    for obj in read_store(Lab(lab.name).store_path)[1]:
        metadata = obj["metadata"]
        if obj["kind"] == "Pod" and f"{metadata['namespace']}/{metadata['name']}" in withheld:
            continue
        if obj["kind"] in ("Namespace", "Pod"):
            server.create(obj["kind"], obj)


@contextlib.contextmanager
def agent_on_node_1(
    tmp_path: Path,
    lab: LabDriver,
    server: FakeApiServer,
    *extra: str,
    health_port: int = 0,
    wait_ready: bool = True,
) -> Iterator[RunningAgent]:
    """``netpol-agent run --kubeconfig`` in the lab's first node, with the DaemonSet's arguments
    (no ``--pod-cidr``) and ``extra``, its health endpoints on ``health_port`` (0: none); ready
    unless ``wait_ready`` is False; stopped, the API server too, log printed on failure."""
    node = Lab(lab.name).record().nodes[0]
    with entered(node.netns):
        server.start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    status, log_path = tmp_path / "status.json", tmp_path / "agent.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, *COMMAND, "run", "--kubeconfig", str(kubeconfig),
             "--node-name", node.name, "--status-file", str(status),
             "--health-port", str(health_port), *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "NO_PROXY": "*", "no_proxy": "*"},
        )  # fmt: skip
        try:
            agent = RunningAgent(process, status, log_path)
            if wait_ready:
                agent.wait(lambda s: bool(s.get("ready")), timeout=30)
            yield agent
        except BaseException:
            print(log_path.read_text())
            raise
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
            server.stop()


def withheld_pod(lab: LabDriver) -> dict[str, Any]:
    _revision, objects = read_store(Lab(lab.name).store_path)
    return next(o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"] == "new")


@pytest.mark.parametrize("assigned", ["at-start", "later"])
def test_the_node_pod_ranges_hold_a_pod_until_it_is_known(tmp_path: Path, assigned: str) -> None:
    """Without --pod-cidr, the agent takes its node's pod ranges from the Node object: traffic
    of a pod whose address reached no agent yet is dropped, both ways, until the pod is known.

    ``later``: the Node has no podCIDRs when the agent starts (a node that just joined); the
    guard is off and says so, and comes on as soon as the Node's ranges are assigned."""
    with lab_session("k8snode", tmp_path) as lab:
        lab.up(CLUSTER, pod("new"), extra=["--no-agent"])
        node = Lab(lab.name).record().nodes[0]
        cidrs = [node.spec.pod_cidr_v4, str(node.spec.pod_cidr_v6)]
        server, withheld = FakeApiServer(), withheld_pod(lab)
        serve_lab_objects(lab, server, NEW_POD)
        server.create("Node", lab_node(node.name, cidrs if assigned == "at-start" else []))
        with agent_on_node_1(tmp_path, lab, server) as agent:
            if assigned == "later":
                agent.wait(lambda s: any("--pod-cidr" in e for e in s["errors"]), timeout=10)
                assert agent.status()["pod_cidrs"] == []
                assert lab.probe(80)[NEW_POD]["x/a"], "no ranges, no guard: the stranger passes"
                server.update("Node", lab_node(node.name, cidrs))

            agent.wait(lambda s: sorted(s.get("pod_cidrs", [])) == sorted(cidrs), timeout=10)
            assert agent.status()["pods"] == 3
            for family in (4, 6):
                matrix = lab.probe(80, family=family)
                assert not matrix[NEW_POD]["x/a"], f"IPv{family}: an unknown source passed"
                assert not matrix["x/a"][NEW_POD], f"IPv{family}: an unknown destination passed"
                assert matrix["x/a"]["x/b"] and matrix["x/b"]["x/a"], "known pods are not held"

            server.create("Pod", withheld)  # the pod reaches the API server's watchers
            took = agent.wait(lambda s: s["pods"] == 4, timeout=5)
            assert took < IN_FORCE_WITHIN
            matrix = lab.probe(80)
            assert matrix[NEW_POD]["x/a"] and matrix["x/a"][NEW_POD], "known now: it passes"
            assert agent.status()["errors"] == []


def pinned_pod(name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}
spec:
  nodeName: {node}
  containers:
  - name: serve
    image: agnhost
    ports:
    - {{containerPort: 80, name: serve-80-tcp}}
"""


def test_a_cluster_wide_pod_cidr_override_holds_only_pods_no_one_knows(tmp_path: Path) -> None:
    """``--pod-cidr`` replaces the Node's ranges (its spec.podCIDRs are ignored). A range wider
    than the node's own, here the whole cluster's, as a DaemonSet's one value for every node
    would be: known pods of the other node pass through it, a pod of the other node that the
    agent does not know yet is held like a local one."""
    with lab_session("k8swide", tmp_path) as lab:
        namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}"
        pods = [pinned_pod("a", "node-1"), pinned_pod("b", "node-2"), pinned_pod("far", "node-2")]
        lab.up(namespace, *pods, nodes=2, extra=["--no-agent"])
        server = FakeApiServer()
        objects = read_store(Lab(lab.name).store_path)[1]
        far = next(o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"] == "far")
        serve_lab_objects(lab, server, "x/far")
        server.create("Node", lab_node("node-1", ["10.244.1.0/24"]))
        wide = ["10.244.0.0/16", "fd00:10:244::/48"]
        flags = [arg for cidr in wide for arg in ("--pod-cidr", cidr)]
        with agent_on_node_1(tmp_path, lab, server, *flags) as agent:
            agent.wait(lambda s: s["pods"] == 2, timeout=10)
            assert sorted(agent.status()["pod_cidrs"]) == sorted(wide)
            for family in (4, 6):
                matrix = lab.probe(80, family=family)
                assert matrix["x/a"]["x/b"] and matrix["x/b"]["x/a"], f"IPv{family}: known held"
                assert not matrix["x/a"]["x/far"], f"IPv{family}: unknown destination passed"
                assert not matrix["x/far"]["x/a"], f"IPv{family}: unknown source passed"

            server.create("Pod", far)
            agent.wait(lambda s: s["pods"] == 3, timeout=5)
            matrix = lab.probe(80)
            assert matrix["x/a"]["x/far"] and matrix["x/far"]["x/a"]
            assert sorted(agent.status()["pod_cidrs"]) == sorted(wide), "the Node changed nothing"
        # Nodes are still read (ClusterNetworkPolicy ``nodes`` peers need every Node's labels
        # and addresses); with --pod-cidr their ranges are not used: node-1's /24 above never
        # replaced the wide override.
