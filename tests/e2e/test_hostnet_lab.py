"""hostNetwork servers on real packets: ClusterNetworkPolicy ``nodes`` peers, same node and other.

A two-node lab: pod x/a on node-1, x/b on node-2, and a hostNetwork server on each node (host/h1,
host/h2) listening on its node's addresses (agent/lab/hostnet.py). An Admin policy for namespace
x accepts TCP 7000 to node-1 and denies every other egress to the nodes, so each verdict is
seen from both sides: a pod's egress to its own node (which the node's INPUT hook sees: the
counters say so) and to the other node (FORWARD on the pod's node). From the hostNetwork side,
a server's traffic is its node's: to a pod on the same node always allowed, from another node
judged by the pod's ingress rules like any address that is no pod.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.lab import Lab, LabNode
from enforcement.firewall import CACHED_CHAIN, FirewallConfig
from tests.agent.lab.test_hostnet import tcp_answers
from tests.e2e.labctl import LabDriver, lab_session

pytestmark = pytest.mark.root

WEB = 7000
DNS = 7001
SERVED = f"[{{containerPort: {WEB}}}, {{containerPort: {DNS}, protocol: UDP}}]"


def pod(namespace: str, name: str, node: str, *, host_network: bool = False) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{pod: {name}}}}}
spec:
  nodeName: {node}
  hostNetwork: {"true" if host_network else "false"}
  containers:
  - {{name: serve, ports: {SERVED}}}
"""


CLUSTER = "---\n".join(
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: host}\n",
        pod("x", "a", "node-1"),
        pod("x", "b", "node-2"),
        pod("host", "h1", "node-1", host_network=True),
        pod("host", "h2", "node-2", host_network=True),
    ]
)

NODE_1_WEB_ONLY = f"""\
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {{name: nodes}}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {{matchLabels: {{kubernetes.io/metadata.name: x}}}}
  egress:
  - name: node-1-web
    action: Accept
    to:
    - nodes: {{matchLabels: {{kubernetes.io/hostname: node-1}}}}
    protocols: [{{tcp: {{destinationPort: {{number: {WEB}}}}}}}]
  - name: no-nodes
    action: Deny
    to:
    - nodes: {{matchLabels: {{kubernetes.io/os: linux}}}}
"""

A_FROM_X_ONLY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-x, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}]}]
"""


def queued(node: LabNode, hook: str) -> int:
    """Packets the agent's chain for ``hook`` on ``node`` has decided (IPv4): sent to the queue,
    or admitted by the verdict cache for the queue (a tuple the queue allowed before)."""
    config = FirewallConfig()
    listing = subprocess.run(
        ["ip", "netns", "exec", node.netns, "iptables", "-w", "-n", "-v", "-x", "-L",
         config.chain(hook)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rules = [line.split() for line in listing.splitlines()[2:]]
    decided = (config.chain("QUEUE"), config.chain(CACHED_CHAIN))
    return sum(int(rule[0]) for rule in rules if rule[2] in decided)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabDriver]:
    with lab_session("hnet", tmp_path) as driver:
        yield driver


def test_node_peers_decide_egress_to_host_network_servers(lab: LabDriver) -> None:
    lab.up(CLUSTER, nodes=2)
    record = Lab(lab.name).record()
    node_1, node_2 = record.nodes
    a = record.pods["x/a"]
    assert a.ipv4 is not None
    matrix = lab.probe(WEB)
    assert all(matrix[source][target] for source in matrix for target in matrix), matrix

    lab.apply(NODE_1_WEB_ONLY)
    web = lab.probe(WEB)
    assert web["x/a"]["host/h1"], "Accept: own node"
    assert web["x/b"]["host/h1"], "Accept: the other node"
    assert not web["x/a"]["host/h2"], "Deny: the other node"
    assert not web["x/b"]["host/h2"], "Deny: own node"
    assert web["x/a"]["x/b"] and web["x/b"]["x/a"], "pods are no nodes"
    assert web["host/h1"]["host/h2"], "nothing isolates a node"
    dns = lab.probe(DNS, "UDP")
    assert not [t for s in ("x/a", "x/b") for t in ("host/h1", "host/h2") if dns[s][t]], dns
    web_v6 = lab.probe(WEB, family=6)
    assert web_v6["x/a"]["host/h1"] and not web_v6["x/a"]["host/h2"], "IPv6 node addresses"

    # A pod's egress to its own node's address: the node's INPUT hook; to the other node's:
    # FORWARD on its own node. Nothing else sends meanwhile.
    before = {hook: queued(node_1, hook) for hook in ("INPUT", "FORWARD")}
    assert tcp_answers(a.netns, node_1.spec.node_ip_v4, WEB)
    after_own = {hook: queued(node_1, hook) for hook in ("INPUT", "FORWARD")}
    assert after_own["INPUT"] > before["INPUT"] and after_own["FORWARD"] == before["FORWARD"]
    assert not tcp_answers(a.netns, node_2.spec.node_ip_v4, WEB)
    after_other = {hook: queued(node_1, hook) for hook in ("INPUT", "FORWARD")}
    assert after_other["FORWARD"] > after_own["FORWARD"]
    assert after_other["INPUT"] == after_own["INPUT"]

    # From the hostNetwork side: its node's traffic. x/a admits only pods of x, yet its own
    # node always gets in; the other node is judged as an address that is no pod.
    lab.apply(A_FROM_X_ONLY)
    web = lab.probe(WEB)
    assert web["host/h1"]["x/a"], "the pod's own node: always allowed"
    assert not web["host/h2"]["x/a"], "another node: no pod of x"
    assert web["x/b"]["x/a"]
