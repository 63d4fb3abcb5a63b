"""hostNetwork pods in the lab (agent/lab/hostnet.py and their place in agent/lab/lab.py).

The first part needs no root: placement and host ports, the objects the lab stores for such a
pod and what the agent makes of them (never a subject nor a pod peer; ``nodes`` peers match its
address because it is its node's). The second part (``root``) drives a real two-node lab through
the real command: responders on the node's addresses, a taken port refused, a failed change
undone, a deleted pod's responder stopped, nothing left after ``lab down``. Packets under policy
are tests/e2e/test_hostnet_lab.py's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.health import DEFAULT_HEALTH_PORT
from agent.lab import processes
from agent.lab.hostnet import (
    HostNetworkError,
    HostPort,
    LabHostPod,
    node_addresses,
    place,
    spec_problem,
)
from agent.lab.lab import (
    LAB_ROOT_ENV,
    Lab,
    LabError,
    LabNode,
    LabPod,
    LabRecord,
    node_objects,
    place_object,
)
from agent.manifests import load_manifests
from agent.sources.lab_store import LabStoreSource
from agent.state import ClusterState
from enforcement.compiler import compile_tables
from enforcement.model import IPPROTO_TCP
from enforcement.verdict import Reason
from tests.agent.lab.test_lab import connects
from tests.e2e.cnp_cases import FOREST, HOST_PORTS, NODE_PEER_CLUSTER_MANIFEST
from tests.e2e.labctl import COMMAND, REPO, LabDriver, lab_session

# -- placement ------------------------------------------------------------------------------------

WEB: HostPort = (8080, "TCP")
HELD_ON_NODE_1: Mapping[str, Mapping[HostPort, str]] = {"node-1": {WEB: "host/first"}}


@pytest.mark.parametrize(
    ("ports", "requested", "ranked", "held", "node"),
    [
        pytest.param([WEB], None, ["node-2", "node-1"], {}, "node-2", id="the-lab's-order"),
        pytest.param([WEB], None, ["node-1", "node-2"], HELD_ON_NODE_1, "node-2", id="skips-taken"),
        pytest.param(
            [(8080, "UDP")], None, ["node-1"], HELD_ON_NODE_1, "node-1", id="other-protocol-free"
        ),
        pytest.param([(8081, "TCP")], None, ["node-1"], HELD_ON_NODE_1, "node-1", id="other-port"),
        pytest.param([WEB], "node-2", ["node-1", "node-2"], HELD_ON_NODE_1, "node-2", id="asked"),
        pytest.param([], None, ["node-1"], HELD_ON_NODE_1, "node-1", id="no-ports"),
    ],
)
def test_a_host_network_pod_goes_where_its_ports_are_free(
    ports: list[HostPort],
    requested: str | None,
    ranked: list[str],
    held: Mapping[str, Mapping[HostPort, str]],
    node: str,
) -> None:
    assert place("host/new", ports, requested, ranked, held) == node


@pytest.mark.parametrize(
    ("requested", "ranked", "message"),
    [
        pytest.param(
            "node-1",
            ["node-2", "node-1"],
            "Pod host/new: spec.nodeName: on node-1 TCP/8080 held by hostNetwork pod host/first; "
            "the kubelet rejects a pod whose host ports are taken",
            id="asked-for-a-taken-port",
        ),
        pytest.param(
            None,
            ["node-1"],
            "Pod host/new: spec.hostNetwork: no lab node has its host ports free (on node-1 "
            "TCP/8080 held by hostNetwork pod host/first); a cluster would leave it Pending",
            id="no-node-fits",
        ),
    ],
)
def test_a_taken_host_port_is_refused_naming_who_holds_it(
    requested: str | None, ranked: list[str], message: str
) -> None:
    with pytest.raises(HostNetworkError) as caught:
        place("host/new", [WEB, (53, "UDP")], requested, ranked, HELD_ON_NODE_1)
    assert message in str(caught.value)


def ports_spec(host_network: bool, **port: Any) -> dict[str, Any]:
    return {"hostNetwork": host_network, "containers": [{"name": "c", "ports": [port]}]}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        pytest.param(ports_spec(True, containerPort=80), None, id="defaulted"),
        pytest.param(ports_spec(True, containerPort=80, hostPort=80), None, id="equal"),
        pytest.param(
            ports_spec(True, containerPort=80, hostPort=8080),
            "spec.containers[0].ports[0].hostPort: 8080: must match containerPort when "
            "hostNetwork is true",
            id="different",
        ),
        pytest.param(ports_spec(False, containerPort=80, hostPort=8080), None, id="pod-network"),
    ],
)
def test_a_host_port_must_be_the_container_port(spec: dict[str, Any], problem: str | None) -> None:
    assert spec_problem(spec) == problem


# -- the lab's plan and store ---------------------------------------------------------------------


def two_node_record(nodes: int = 2) -> LabRecord:
    record = LabRecord(name="hn", prefix="npa-hn-", fail_open=False, queue_num=1000, ipv6=True)
    record.nodes = [
        LabNode(name=f"node-{i}", index=i, netns=f"npa-hn-node-{i}") for i in range(1, nodes + 1)
    ]
    return record


def planned_cluster(
    tmp_path: Path, record: LabRecord, text: str
) -> tuple[Lab, dict[tuple[str, str, str], dict[str, Any]], list[tuple[Any, dict[str, Any]]]]:
    """The store's objects for manifest ``text`` and the lab's plan for its pods, as a change
    makes them before anything exists (each pod's node and status written in)."""
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    lab = Lab(record.name, root=tmp_path)
    objects = lab._merged(record, node_objects(record), load_manifests([str(path)]))
    pods = [obj for (kind, _ns, _name), obj in objects.items() if kind == "Pod"]
    planned = lab._plan_pods(record, pods)
    for pod, obj in planned:
        place_object(record, pod, obj)
    return lab, objects, planned


def test_the_conformance_centaurs_get_a_node_each_and_its_addresses(tmp_path: Path) -> None:
    record = two_node_record()
    lab, _objects, planned = planned_cluster(tmp_path, record, NODE_PEER_CLUSTER_MANIFEST)
    centaurs = {pod.key: (pod, obj) for pod, obj in planned if isinstance(pod, LabHostPod)}
    assert sorted(centaurs) == [FOREST.pod(0), FOREST.pod(1)]
    houses = [pod for pod, _obj in planned if isinstance(pod, LabPod)]
    assert len(houses) == 8 and {pod.node for pod in houses} == {"node-1", "node-2"}
    for index, key in enumerate(sorted(centaurs)):
        pod, obj = centaurs[key]
        node = record.nodes[index]
        assert pod.node == node.name, "the second finds the first's ports taken on node-1"
        assert pod.host_ports == [
            [HOST_PORTS[0], "TCP"],
            [HOST_PORTS[1], "TCP"],
            [HOST_PORTS[2], "UDP"],
            [HOST_PORTS[4], "UDP"],
            [HOST_PORTS[6], "SCTP"],
            [HOST_PORTS[7], "SCTP"],
        ]
        assert pod.ports == [p for p in pod.host_ports if p[1] != "SCTP"], "no SCTP sockets"
        addresses = node_addresses(node.spec, ipv6=True)
        assert addresses == [f"172.18.0.{node.index + 1}", f"fc00:f853:ccd:e793::{node.index + 1}"]
        assert obj["spec"]["nodeName"] == node.name
        assert obj["status"]["podIPs"] == [{"ip": address} for address in addresses]
        assert obj["status"]["hostIPs"] == obj["status"]["podIPs"]
        assert obj["status"]["podIP"] == obj["status"]["hostIP"] == addresses[0]
    notes = [note for note in lab.messages if FOREST.namespace in note]
    assert len(notes) == 4 and all("SCTP port" in note for note in notes)


def test_a_one_node_lab_cannot_run_both_centaurs(tmp_path: Path) -> None:
    with pytest.raises(LabError) as caught:
        planned_cluster(tmp_path, two_node_record(nodes=1), NODE_PEER_CLUSTER_MANIFEST)
    message = str(caught.value)
    assert message.startswith(f"refused, nothing changed: Pod {FOREST.pod(1)}: spec.hostNetwork")
    assert f"held by hostNetwork pod {FOREST.pod(0)}" in message
    assert "build the lab with more --nodes" in message


def test_lab_up_refuses_it_before_anything_exists(tmp_path: Path) -> None:
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(NODE_PEER_CLUSTER_MANIFEST)
    root = tmp_path / "labs"
    result = subprocess.run(
        [*COMMAND, "lab", "up", "--lab", "centaurs", "-f", str(manifest)],
        capture_output=True, text=True, cwd=REPO, check=False,
        env={**os.environ, LAB_ROOT_ENV: str(root)},
    )  # fmt: skip
    assert result.returncode == 1, result
    assert "no lab node has its host ports free" in result.stderr
    assert "Traceback" not in result.stderr
    assert not root.exists() or list(root.iterdir()) == []


GUARD = """\
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {{name: guard}}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {{}}
  egress:
  - name: forest-pods
    action: Deny
    to:
    - pods:
        namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: "{forest}"}}}}
        podSelector: {{}}
  - name: nodes
    action: {nodes}
    to:
    - nodes: {{matchLabels: {{kubernetes.io/os: linux}}}}
"""


@pytest.mark.parametrize(
    ("nodes", "reason"),
    [
        pytest.param("Accept", Reason.ALLOWED, id="nodes-accepted"),
        pytest.param("Deny", Reason.DENIED_EGRESS, id="nodes-denied"),
    ],
)
def test_the_agent_sees_a_host_network_pod_as_its_node_never_as_a_pod(
    tmp_path: Path, nodes: str, reason: Reason
) -> None:
    """The objects as the lab stores them, read by the agent's lab source and compiled: the
    centaurs claim no address, are no subjects, and a ``pods`` peer selecting them all matches
    nothing; their address is their node's, which ``nodes`` peers match."""
    record = two_node_record()
    text = NODE_PEER_CLUSTER_MANIFEST + "---\n" + GUARD.format(forest=FOREST.namespace, nodes=nodes)
    _lab, objects, planned = planned_cluster(tmp_path, record, text)
    store = tmp_path / "store.json"
    store.write_text(json.dumps({"revision": 1, "objects": list(objects.values())}))
    state = ClusterState()
    LabStoreSource(store)._load(state)
    assert state.errors() == []
    snapshot = state.view().snapshot
    centaurs = [pod for pod in snapshot.pods if pod.namespace == FOREST.namespace]
    assert len(centaurs) == 2 and all(pod.host_network for pod in centaurs)
    client = next(pod for pod, _obj in planned if isinstance(pod, LabPod) and pod.node == "node-1")
    assert client.ipv4 is not None
    for node in record.nodes:
        tables = compile_tables(snapshot, node.name, generation=1)
        assert tables.local_pod_count == 4, "the houses' pods; a centaur is no subject"
        assert tables.pod_count == 8
        for other in record.nodes:
            for address in node_addresses(other.spec, ipv6=True):
                assert tables.endpoint(ipaddress.ip_address(address).packed) is None
    tables = compile_tables(snapshot, "node-1", generation=1)
    for target in record.nodes:  # its own node (INPUT) and the other one (FORWARD)
        verdict = tables.evaluate(
            ipaddress.ip_address(client.ipv4).packed,
            ipaddress.ip_address(target.spec.node_ip_v4).packed,
            IPPROTO_TCP,
            HOST_PORTS[0],
        )
        assert verdict is reason, target.name


# -- root: a real two-node lab --------------------------------------------------------------------

HOSTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: host}
---
apiVersion: v1
kind: Pod
metadata: {name: first, namespace: host}
spec:
  hostNetwork: true
  nodeName: node-1
  containers:
  - {name: c, ports: [{containerPort: 7000}, {containerPort: 7001, protocol: UDP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: second, namespace: host}
spec:
  hostNetwork: true
  containers:
  - {name: c, ports: [{containerPort: 7000}]}
"""


def host_pod(name: str, node: str, port: int) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: host}}
spec:
  hostNetwork: true
  nodeName: {node}
  containers:
  - {{name: c, ports: [{{containerPort: {port}}}]}}
"""


def tcp_answers(netns: str, address: str, port: int) -> bool:
    return connects(netns, address, port, timeout=1.0)


def apply_fails(lab: LabDriver, manifest: str) -> str:
    result = subprocess.run(
        [*COMMAND, "lab", "apply", "--lab", lab.name, "-f", "-"],
        input=manifest, capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabDriver]:
    with lab_session("hn", tmp_path) as driver:
        yield driver


@pytest.mark.root
def test_host_network_pods_in_a_real_lab(lab: LabDriver) -> None:
    lab.up(HOSTS, nodes=2)
    record = Lab(lab.name).record()
    node_1, node_2 = record.nodes
    first, second = record.host_pods["host/first"], record.host_pods["host/second"]
    assert (first.node, second.node) == ("node-1", "node-2"), "7000/TCP is taken on node-1"
    assert not record.pods and len(record.namespaces()) == 3, "two nodes and the underlay"
    listed = {pod["name"]: pod["ips"] for pod in lab.pods()}
    assert listed == {
        "first": node_addresses(node_1.spec, ipv6=True),
        "second": node_addresses(node_2.spec, ipv6=True),
    }

    # Served in the node's namespace on the node's addresses only.
    for node in (node_1, node_2):
        for address in node_addresses(node.spec, ipv6=True):
            assert tcp_answers(node.netns, address, 7000), (node.name, address)
        assert not tcp_answers(node.netns, "127.0.0.1", 7000), "bound to the node's addresses"
    assert lab.probe(7001, "UDP")["host/second"]["host/first"], "from node-2 to node-1"

    # A port a hostNetwork pod holds: refused, nothing changed.
    store = Lab(lab.name).store_path
    before = store.read_text()
    refused = apply_fails(lab, host_pod("third", "node-1", 7000))
    assert "spec.nodeName: on node-1 TCP/7000 held by hostNetwork pod host/first" in refused
    assert store.read_text() == before

    # A port something else in the node's namespace holds (the agent's health port): the
    # responder cannot start, the change is undone, and so is the rest of its batch.
    batch = host_pod("fourth", "node-2", 7002) + "---\n"
    batch += host_pod("fifth", "node-1", DEFAULT_HEALTH_PORT)
    failed = apply_fails(lab, batch)
    assert "refused, nothing changed" in failed and "its echo responder did not start" in failed
    assert store.read_text() == before
    assert set(Lab(lab.name).record().host_pods) == {"host/first", "host/second"}
    assert not tcp_answers(node_2.netns, node_2.spec.node_ip_v4, 7002), "fourth is undone"

    # Deleting one stops its responder; the other still serves.
    lab.delete(host_pod("first", "node-1", 7000))
    assert first.responder is not None and not processes.is_running(first.responder)
    assert not tcp_answers(node_1.netns, node_1.spec.node_ip_v4, 7000)
    assert tcp_answers(node_2.netns, node_2.spec.node_ip_v4, 7000)
    assert set(Lab(lab.name).record().host_pods) == {"host/second"}
    # Its port is free on node-1 again.
    lab.apply(host_pod("third", "node-1", 7000))
    assert tcp_answers(node_1.netns, node_1.spec.node_ip_v4, 7000)

    # Teardown stops every responder (lab_session checks the namespaces are gone).
    responders = [pod.responder for pod in Lab(lab.name).record().host_pods.values()]
    lab.down()
    assert all(ref is not None and not processes.is_running(ref) for ref in responders)
