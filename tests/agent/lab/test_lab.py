"""The lab's integrity: names, teardown, process identity, all-or-nothing changes, addresses,
private files, and a node agent that is restarted when it dies.

The first part needs no root: everything it checks is refused or decided before a namespace is
made. The second part (``root``) drives real labs through the real ``netpol-agent`` command, as
``tests/e2e/labctl.py`` does; each lab has one node and a few pods.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.kinds.node import node_from_k8s
from agent.lab import processes
from agent.lab.lab import (
    LAB_ROOT_ENV,
    Lab,
    LabError,
    LabNode,
    LabPod,
    LabRecord,
    lab_namespace_pattern,
    node_objects,
    validate_lab_name,
)
from agent.lab.netns import entered, ip_batch, netns_exists
from agent.lab.processes import ProcessRef
from agent.manifests import load_manifests
from agent.sources.lab_store import LabStoreSource, read_store
from agent.state import ClusterState
from enforcement.firewall import CACHE_LIVENESS
from tests.e2e.labctl import COMMAND, REPO, LabCommandError, LabDriver, live_cache_members

# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "relq", "relq-x", "0", "a-b-c", "abcdefghijklmnop"], ids=str)
def test_good_lab_names(name: str) -> None:
    assert validate_lab_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("relq\n", id="trailing-newline"),
        pytest.param("", id="empty"),
        pytest.param("-a", id="leading-dash"),
        pytest.param("a-", id="trailing-dash"),
        pytest.param("Relq", id="upper-case"),
        pytest.param("abcdefghijklmnopq", id="17-characters"),
        pytest.param("a_b", id="underscore"),
        pytest.param("a/b", id="slash"),
        pytest.param("a b", id="space"),
        pytest.param("\nrelq", id="leading-newline"),
    ],
)
def test_bad_lab_names_are_refused(name: str) -> None:
    with pytest.raises(LabError, match="must be 1-16 lowercase"):
        validate_lab_name(name)
    with pytest.raises(LabError):
        Lab(name)


def cli(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], input="", capture_output=True, text=True, cwd=REPO, check=False,
        env={**os.environ, LAB_ROOT_ENV: str(root)},
    )  # fmt: skip


def test_a_bad_lab_name_is_refused_cleanly_and_leaves_nothing(tmp_path: Path) -> None:
    """A name with a trailing newline passed ``re.match(...$)``, crashed, left a folder."""
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    for verb in (["up"], ["apply", "-f", "-"], ["down"]):
        result = cli("lab", verb[0], "--lab", "relq\n", *verb[1:], root=tmp_path)
        assert result.returncode == 1, result
        assert "must be 1-16 lowercase" in result.stderr
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not [name for name in after - before if "relq" in name]


def test_apply_to_a_missing_lab_creates_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "ns.yaml"
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    root = tmp_path / "labs"
    result = cli("lab", "apply", "--lab", "nolab", "-f", str(manifest), root=root)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not root.exists() or list(root.iterdir()) == []


OWN_SUFFIXES = ["node-1", "node-9", "node-16", "underlay", "0123abcd", "x0123abcd"]


@pytest.mark.parametrize("suffix", OWN_SUFFIXES)
def test_the_namespace_pattern_matches_the_labs_own_names(suffix: str) -> None:
    assert lab_namespace_pattern("relq").fullmatch(f"npa-relq-{suffix}")


@pytest.mark.parametrize("other", ["relq-x", "relq-node", "relq-underlay", "relq-0", "relq-x1"])
@pytest.mark.parametrize("suffix", [*OWN_SUFFIXES, "12345678", "node-12345678"])
def test_the_namespace_pattern_never_matches_another_labs_names(other: str, suffix: str) -> None:
    """Lab ``relq``'s prefix ``npa-relq-`` is a prefix of every name of lab ``relq-...``."""
    assert not lab_namespace_pattern("relq").fullmatch(f"npa-{other}-{suffix}")


def test_the_namespace_pattern_refuses_more_nodes_than_a_lab_has() -> None:
    assert not lab_namespace_pattern("relq").fullmatch("npa-relq-node-17")


# -- process identity in teardown ------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def write_record(root: Path, name: str, node_ref: ProcessRef, responder: ProcessRef) -> None:
    record = LabRecord(name=name, prefix=f"npa-{name}-", fail_open=False, queue_num=1000, ipv6=True)
    record.nodes = [
        LabNode("node-1", 1, f"npa-{name}-node-1", node_ref.pid, node_ref.start),
    ]
    record.pods = {
        "x/a": LabPod(
            "x/a", "node-1", f"npa-{name}-0123abcd", "np0123abcd", "10.244.1.2", None,
            [[80, "TCP"]], responder.pid, responder.start, True,
        )
    }  # fmt: skip
    (root / name).mkdir(parents=True)
    (root / name / "lab.json").write_text(json.dumps(_as_dict(record)))


def _as_dict(record: LabRecord) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(record)


def test_down_does_not_signal_a_reused_pid(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """After a crash, lab.json may name PIDs the kernel has since given to other processes."""
    live = processes.identify(sleeper.pid)
    assert live is not None
    stale = ProcessRef(live.pid, live.start - 1)  # same pid, another process's start time
    write_record(tmp_path, "reuse", stale, stale)
    Lab("reuse", root=tmp_path).down()
    assert sleeper.poll() is None, "lab down signalled a process that only reuses a recorded PID"
    assert not (tmp_path / "reuse").exists()


def test_down_stops_the_recorded_processes(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """The same record with the true identity: the process is stopped (so identity, not a
    broken teardown, is why the reused PID above was left alone)."""
    live = processes.identify(sleeper.pid)
    assert live is not None
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        other_ref = processes.identify(other.pid)
        assert other_ref is not None
        write_record(tmp_path, "mine", live, other_ref)
        Lab("mine", root=tmp_path).down()
        assert not processes.matches(live) and not processes.matches(other_ref)
    finally:
        if other.poll() is None:
            other.kill()
        other.wait()


# -- addresses of external hosts, checked before anything exists -----------------------------------

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - {name: c, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec:
  containers:
  - {name: c, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec:
  containers:
  - {name: c, ports: [{containerPort: 80}]}
"""

B_FROM_A = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
"""

NEW_POD = """
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x, labels: {pod: d}}
spec:
  containers:
  - {name: c, ports: [{containerPort: 80}]}
"""

B_FROM_C = B_FROM_A.replace("b-from-a", "b-from-c").replace("{pod: a}", "{pod: c}")


def external(address: str) -> str:
    return f"""
apiVersion: lab.netpol-agent.io/v1
kind: ExternalHost
metadata: {{name: outside}}
spec:
  addresses: ["{address}"]
"""


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        pytest.param("169.254.10.1", "link-local", id="ipv4-link-local"),
        pytest.param("169.254.1.1", "link-local", id="the-pods-gateway"),
        pytest.param("fe80::10", "link-local", id="ipv6-link-local"),
        pytest.param("127.0.0.2", "loopback", id="ipv4-loopback"),
        pytest.param("::1", "loopback", id="ipv6-loopback"),
        pytest.param("224.0.0.5", "multicast", id="ipv4-multicast"),
        pytest.param("ff02::1", "multicast", id="ipv6-multicast"),
        pytest.param("0.0.0.0", "unspecified", id="ipv4-unspecified"),
        pytest.param("::", "unspecified", id="ipv6-unspecified"),
        pytest.param("10.244.1.7", "inside the lab's 10.244.0.0/16", id="pod-range"),
        pytest.param("172.18.0.2", "inside the lab's 172.18.0.0/16", id="node-network"),
        pytest.param("::ffff:192.0.2.1", "IPv4-mapped", id="ipv4-mapped"),
        pytest.param("8.8.8.8", "documentation ranges", id="a-real-address"),
        pytest.param("2001:4860::8888", "documentation ranges", id="a-real-ipv6-address"),
        pytest.param("192.0.2.1/32", "does not appear to be", id="a-network"),
    ],
)
def test_external_hosts_need_documentation_unicast_addresses(
    tmp_path: Path, address: str, reason: str
) -> None:
    """Refused with file, object and field named, before anything is created (so no root)."""
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(CLUSTER + "---" + external(address))
    root = tmp_path / "labs"
    result = cli("lab", "up", "--lab", "ext", "-f", str(manifest), root=root)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert str(manifest) in result.stderr
    assert "ExternalHost outside: spec.addresses[0]" in result.stderr
    assert reason in result.stderr
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.parametrize(
    "address", ["192.0.2.10", "198.51.100.10", "203.0.113.10", "2001:db8::10"], ids=str
)
def test_documentation_addresses_are_accepted(address: str) -> None:
    from agent.lab.lab import _validate_external

    obj = {
        "apiVersion": "lab.netpol-agent.io/v1",
        "kind": "ExternalHost",
        "metadata": {"name": "outside"},
        "spec": {"addresses": [address]},
    }
    _validate_external(obj)


def test_a_pod_on_a_node_the_lab_does_not_have_is_refused_before_anything_exists(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(
        CLUSTER.replace("spec:\n  containers:", "spec:\n  nodeName: node-7\n  containers:", 1)
    )
    root = tmp_path / "labs"
    result = cli("lab", "up", "--lab", "nodes", "-f", str(manifest), root=root)
    assert result.returncode == 1 and "spec.nodeName: no lab node 'node-7'" in result.stderr
    assert not root.exists() or list(root.iterdir()) == []


def test_pods_beyond_a_nodes_addresses_are_refused_before_anything_exists(tmp_path: Path) -> None:
    manifest = tmp_path / "many.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: many, namespace: x}\n"
        "spec:\n  replicas: 300\n  selector: {matchLabels: {app: many}}\n"
        "  template:\n    metadata: {labels: {app: many}}\n"
        "    spec: {containers: [{name: c}]}\n"
    )
    root = tmp_path / "labs"
    result = cli("lab", "up", "--lab", "many", "-f", str(manifest), root=root)
    assert result.returncode == 1, result
    assert "refused, nothing changed: node node-1 has no pod addresses left" in result.stderr
    assert not root.exists() or list(root.iterdir()) == []


# -- cluster-scoped objects and the lab's Nodes ---------------------------------------------------


def two_node_record(ipv6: bool = True) -> LabRecord:
    record = LabRecord(name="cnp", prefix="npa-cnp-", fail_open=False, queue_num=1000, ipv6=ipv6)
    record.nodes = [LabNode(name=f"node-{i}", index=i, netns=f"npa-cnp-node-{i}") for i in (1, 2)]
    return record


CNP_AND_NODE = """\
apiVersion: {api_version}
kind: ClusterNetworkPolicy
metadata:
  name: guard
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {{}}
  egress:
  - action: Deny
    to:
    - nodes:
        matchLabels:
          role: storage
---
apiVersion: v1
kind: Node
metadata:
  name: node-2
  labels:
    role: storage
"""


@pytest.mark.parametrize(
    "ipv6", [pytest.param(True, id="dual-stack"), pytest.param(False, id="v4")]
)
def test_every_lab_node_has_a_node_object_with_its_address(ipv6: bool) -> None:
    record = two_node_record(ipv6)
    objects = node_objects(record)
    nodes = [node_from_k8s(obj, strict=True) for obj in objects.values()]
    assert [node.name for node in nodes] == ["node-1", "node-2"]
    for node, lab_node in zip(nodes, record.nodes, strict=True):
        assert dict(node.labels) == {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
        }
        # The address a pod reaches its node at: held on the node's lo (agent.lab.topology).
        spec = lab_node.spec
        expected = [spec.node_ip_v4, *([spec.node_ip_v6] if ipv6 else [])]
        assert [str(address) for address in node.addresses] == expected
    assert [str(n.addresses[0]) for n in nodes] == ["172.18.0.2", "172.18.0.3"]


@pytest.mark.parametrize(
    "api_version",
    [
        pytest.param("policy.networking.k8s.io/v1alpha2", id="v1alpha2"),
        pytest.param("policy.networking.k8s.io/v1beta1", id="v1beta1"),
    ],
)
def test_cluster_policies_and_node_labels_are_merged_into_the_store(
    tmp_path: Path, api_version: str
) -> None:
    record = two_node_record()
    path = tmp_path / "objects.yaml"
    path.write_text(CNP_AND_NODE.format(api_version=api_version))
    lab = Lab("cnp", root=tmp_path)
    updated = lab._merged(record, node_objects(record), load_manifests([str(path)]))
    assert lab.messages == []
    assert ("ClusterNetworkPolicy", "", "guard") in updated, "cluster-scoped: by name alone"
    labels = updated[("Node", "", "node-2")]["metadata"]["labels"]
    assert labels == {
        "role": "storage",
        "kubernetes.io/hostname": "node-2",
        "kubernetes.io/os": "linux",
    }
    assert updated[("Node", "", "node-1")] == node_objects(record)[("Node", "", "node-1")]
    # What the agents read from the store: the policy and both nodes, labelled.
    store = tmp_path / "store.json"
    store.write_text(json.dumps({"revision": 3, "objects": list(updated.values())}))
    state = ClusterState()
    LabStoreSource(store)._load(state)
    assert state.ready
    snapshot = state.view().snapshot
    assert [policy.name for policy in snapshot.cluster_policies] == ["guard"]
    assert {node.name: node.labels.get("role") for node in snapshot.nodes} == {
        "node-1": None,
        "node-2": "storage",
    }
    assert state.errors() == []


@pytest.mark.parametrize(
    ("node", "message"),
    [
        pytest.param(
            "metadata: {name: node-9}",
            "Node node-9: metadata.name: no lab node 'node-9' (the lab has node-1, node-2)",
            id="no-such-node",
        ),
        pytest.param(
            "metadata: {name: node-1, labels: {kubernetes.io/hostname: other}}",
            "Node node-1: metadata.labels: kubernetes.io/hostname is the lab's own label",
            id="own-label",
        ),
        pytest.param(
            "metadata: {name: node-1}\n"
            "status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}",
            "Node node-1: status: the lab's nodes have their own addresses",
            id="addresses",
        ),
        pytest.param(
            "metadata: {name: node-1}\nspec: {podCIDR: 10.1.0.0/24}",
            "Node node-1: spec: the lab's nodes have their own addresses",
            id="spec",
        ),
    ],
)
def test_a_node_manifest_may_only_label_a_lab_node(tmp_path: Path, node: str, message: str) -> None:
    record = two_node_record()
    path = tmp_path / "node.yaml"
    path.write_text(f"apiVersion: v1\nkind: Node\n{node}\n")
    lab = Lab("cnp", root=tmp_path)
    with pytest.raises(LabError, match="refused, nothing changed") as caught:
        lab._merged(record, node_objects(record), load_manifests([str(path)]))
    assert message in str(caught.value)


def test_a_refused_policy_kind_is_refused_by_the_lab_naming_the_kind(tmp_path: Path) -> None:
    """The issue's "Done when": lab apply of an unsupported policy kind fails naming it."""
    path = tmp_path / "anp.yaml"
    path.write_text(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n"
        "metadata: {name: old}\nspec: {priority: 1, subject: {namespaces: {}}}\n"
    )
    result = cli("lab", "apply", "--lab", "nolab", "-f", str(path), root=tmp_path / "labs")
    assert result.returncode == 1, result
    assert "AdminNetworkPolicy old: kind: netpol-agent enforces" in result.stderr
    assert "policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy is not enforced" in result.stderr


# -- root: real labs through the real command ------------------------------------------------------


def short_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[list[LabDriver]]:
    """Labs made in a test; every one is brought down afterwards, its logs shown on failure."""
    made: list[LabDriver] = []
    failed = True
    try:
        yield made
        failed = False
    finally:
        for lab in made:
            if failed:
                sys.stderr.write(lab.logs())
            lab.down()
        left = [
            name
            for name in os.listdir("/run/netns")
            for lab in made
            if lab_namespace_pattern(lab.name).fullmatch(name)
        ]
        assert not left, f"namespaces left behind: {left}"


def new_lab(labs: list[LabDriver], workdir: Path, name: str | None = None) -> LabDriver:
    lab = LabDriver(name or short_name("hl"), workdir)
    labs.append(lab)
    return lab


def connects(netns: str, address: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection at ``address``:``port`` from ``netns``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with entered(netns):
        client = socket.socket(family)
    client.settimeout(timeout)
    try:
        client.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        client.close()


def supervisor_of(lab: LabDriver) -> ProcessRef:
    ref = Lab(lab.name).record().nodes[0].supervisor
    assert ref is not None
    return ref


def agent_of(lab: LabDriver, timeout: float = 30) -> ProcessRef:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent = Lab(lab.name).agent_process("node-1")
        if agent is not None:
            return agent
        time.sleep(0.02)
    raise AssertionError(f"no agent runs on node-1 of {lab.name}")


@pytest.mark.root
def test_a_killed_agent_is_restarted_fail_closed_meanwhile(
    labs: list[LabDriver], tmp_path: Path
) -> None:
    """kill -9 the agent under a stream of denied connections: nothing gets through while it is
    down (fail-closed), it comes back by itself, ``lab logs`` says so and ``lab apply`` works."""
    old_umask = os.umask(0o022)  # the lab's files must be private whatever the caller's umask
    try:
        lab = new_lab(labs, tmp_path)
        lab.up(CLUSTER, B_FROM_A)
    finally:
        os.umask(old_umask)
    record = Lab(lab.name).record()
    a, b, c = (record.pods[f"x/{name}"] for name in "abc")
    assert a.ipv4 and b.ipv4 and c.ipv4
    matrix = lab.probe(80)
    assert matrix["x/a"]["x/b"] and not matrix["x/c"]["x/b"], "isolation before the kill"

    # Load: c keeps trying to reach b (denied) from before the kill until the agent is back.
    leaked: list[float] = []
    attempts = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            attempts[0] += 1
            if connects(c.netns, b.ipv4 or "", 80, timeout=0.2):
                leaked.append(time.monotonic())

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        supervisor, agent = supervisor_of(lab), agent_of(lab)
        # Hold the supervisor so the agent stays down while we look (no race with its restart).
        assert processes.send(supervisor, signal.SIGSTOP)
        try:
            os.kill(agent.pid, signal.SIGKILL)
            while processes.is_running(agent):
                time.sleep(0.01)
            # Fail-closed while no agent runs: its queue rules stay (without --queue-bypass) and
            # b's queued traffic is dropped, all of it.
            rules = subprocess.run(
                ["ip", "netns", "exec", record.nodes[0].netns, "iptables-save"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            queue_rules = [line for line in rules.splitlines() if "NFQUEUE" in line]
            assert queue_rules and not [line for line in queue_rules if "bypass" in line]
            assert not connects(c.netns, b.ipv4, 80), "denied traffic passed with no agent"
            # The verdict cache answers for the dead agent's last allows only until its
            # liveness lapses (CACHE_LIVENESS seconds after the last heartbeat).
            died = time.monotonic()
            while live_cache_members(record.nodes[0].netns):
                assert time.monotonic() - died < CACHE_LIVENESS + 2, "the cache outlived the agent"
                time.sleep(0.1)
            assert not connects(a.netns, b.ipv4, 80), "fail-closed: nothing decides for b"
            assert connects(a.netns, c.ipv4, 80), "pods no policy isolates never needed it"
        finally:
            assert processes.send(supervisor, signal.SIGCONT)
        # The supervisor restarts it (after 1 s); apply waits for the new agent, no error. The
        # change (a new pod) keeps c -> b denied, so the stream of attempts goes on meanwhile.
        output = lab.apply(NEW_POD)
        assert "in force" in output
    finally:
        stop.set()
        thread.join(timeout=10)
    assert attempts[0] > 0 and not leaked, f"{len(leaked)} denied connections got through"
    assert agent_of(lab) != agent
    matrix = lab.probe(80)
    assert matrix["x/a"]["x/b"] and not matrix["x/c"]["x/b"] and matrix["x/d"]["x/a"]
    assert "in force" in lab.apply(B_FROM_C)
    assert lab.probe(80)["x/c"]["x/b"], "a policy change is enforced by the restarted agent"
    logs = lab.logs()
    assert "agent restarted 1 time; last exit: killed by signal SIGKILL" in logs
    assert "started the agent again" in logs

    # Its state files are private: directory 0700, files 0600.
    directory = Lab(lab.name).dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
    assert {"lab.json", "store.json", "agent-node-1.log", "status-node-1.json"} <= set(modes)
    assert all(mode == 0o600 for mode in modes.values()), modes


@pytest.mark.root
def test_an_agent_whose_supervisor_died_too_is_started_again_by_apply(
    labs: list[LabDriver], tmp_path: Path
) -> None:
    lab = new_lab(labs, tmp_path)
    lab.up(CLUSTER, B_FROM_A)
    supervisor = supervisor_of(lab)
    os.killpg(supervisor.pid, signal.SIGKILL)  # the supervisor and the agent, for good
    while processes.is_running(supervisor):
        time.sleep(0.01)
    result = subprocess.run(
        [*COMMAND, "lab", "apply", "--lab", lab.name, "-f", "-"],
        input=B_FROM_C, capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "started it again" in result.stderr
    matrix = lab.probe(80)
    assert matrix["x/a"]["x/b"] and matrix["x/c"]["x/b"]
    assert supervisor_of(lab) != supervisor


@pytest.mark.root
def test_down_removes_only_its_own_lab(labs: list[LabDriver], tmp_path: Path) -> None:
    """``relq`` is a prefix of ``relq-x``: downing the first must leave the second working."""
    base = short_name("rq")
    relq = new_lab(labs, tmp_path, base)
    relq_x = new_lab(labs, tmp_path, f"{base}-x")
    relq.up(CLUSTER)
    relq_x.up(CLUSTER, B_FROM_A)
    other = Lab(relq_x.name).record()
    supervisor = supervisor_of(relq_x)
    relq.down()
    assert all(netns_exists(name) for name in other.namespaces()), "relq-x lost namespaces"
    mine = lab_namespace_pattern(base)
    assert not [name for name in os.listdir("/run/netns") if mine.fullmatch(name)]
    assert processes.is_running(supervisor), "relq-x lost its agent"
    assert all(pod.responder and processes.is_running(pod.responder) for pod in other.pods.values())
    matrix = relq_x.probe(80)
    assert matrix["x/a"]["x/b"] and not matrix["x/c"]["x/b"]
    assert "in force" in relq_x.apply(B_FROM_C)


@pytest.mark.root
def test_a_failed_up_leaves_nothing(labs: list[LabDriver], tmp_path: Path) -> None:
    """A lab whose agent cannot start (a queue number NFQUEUE refuses) is removed entirely."""
    lab = new_lab(labs, tmp_path)
    with pytest.raises(LabCommandError, match="exited"):
        lab.up(CLUSTER, extra=["--queue-num", "70000"])
    assert not Lab(lab.name).dir.exists()
    assert not [n for n in os.listdir("/run/netns") if lab_namespace_pattern(lab.name).fullmatch(n)]


SCTP_ONLY = """
apiVersion: v1
kind: Pod
metadata: {name: s, namespace: x, labels: {pod: s}}
spec:
  containers:
  - {name: c, ports: [{containerPort: 9000, protocol: SCTP}]}
"""


def apply_result(lab: LabDriver, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "lab", "apply", "--lab", lab.name, *extra, "-f", "-"],
        input=manifest, capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip


@pytest.mark.root
def test_apply_is_all_or_nothing_and_tells_the_truth(labs: list[LabDriver], tmp_path: Path) -> None:
    lab = new_lab(labs, tmp_path)
    lab.up(CLUSTER, B_FROM_A)
    store = Lab(lab.name).store_path

    def objects() -> list[tuple[str, str]]:
        data = json.loads(store.read_text())
        return sorted((obj["kind"], obj["metadata"]["name"]) for obj in data["objects"])

    before = objects()

    # An SCTP-only pod: the lab cannot serve SCTP (no SCTP sockets on this kernel). The pod is
    # created and enforced, the note says its port is not served, and a second apply agrees.
    first = apply_result(lab, SCTP_ONLY)
    assert first.returncode == 0, first.stderr
    assert "SCTP port 9000 is not served" in first.stderr
    assert "in force" in first.stdout
    assert ("Pod", "s") in objects()
    assert "x/s" in lab.probe(80)
    assert apply_result(lab, SCTP_ONLY).returncode == 0

    # A link-local external host: refused up front, nothing changed, no traceback.
    refused = apply_result(lab, external("fe80::10"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "refused, nothing changed" in refused.stderr and "link-local" in refused.stderr

    # A namespace the lab would use is taken (not the lab's): refused before anything is made,
    # for both pods of the batch, and the squatter is left alone.
    two_pods = NEW_POD + "---" + NEW_POD.replace("name: d", "name: e")
    squatter = Lab(lab.name).record().prefix + _digest(lab.name, "x/e")
    ip_batch([f"netns add {squatter}"], None)
    try:
        taken = apply_result(lab, two_pods)
        assert taken.returncode == 1 and "exists already" in taken.stderr, taken.stderr
        assert netns_exists(squatter)
        pods = Lab(lab.name).record().pods
        assert "x/d" not in pods and "x/e" not in pods
        assert not netns_exists(Lab(lab.name).record().prefix + _digest(lab.name, "x/d"))
    finally:
        ip_batch([f"netns del {squatter}"], None)
    with_sctp = objects()
    assert with_sctp == sorted([*before, ("Pod", "s")])

    # The agent cannot come back in time (its supervisor is held): the apply fails after its
    # timeout, is rolled back (store, pod, namespace), and says so; so does a second try.
    supervisor = supervisor_of(lab)
    agent = agent_of(lab)
    assert processes.send(supervisor, signal.SIGSTOP)
    try:
        os.kill(agent.pid, signal.SIGKILL)
        for _attempt in range(2):
            failed = apply_result(lab, NEW_POD, "--timeout", "2")
            assert failed.returncode == 1, failed.stdout
            assert "timed out after 2 s" in failed.stderr
            assert "rolled back, nothing changed" in failed.stderr
            assert "in force" not in failed.stdout
            assert objects() == with_sctp
            assert "x/d" not in Lab(lab.name).record().pods
            assert not netns_exists(Lab(lab.name).record().prefix + _digest(lab.name, "x/d"))
    finally:
        assert processes.send(supervisor, signal.SIGCONT)
    # Once the agent is back the same apply works and the pod is really there.
    assert "in force" in lab.apply(NEW_POD)
    assert lab.probe(80)["x/d"]["x/a"]
    assert "in force" in apply_result(lab, NEW_POD).stdout


def _digest(lab: str, key: str) -> str:
    from agent.lab.lab import _short_hash

    return _short_hash(f"{lab}/{key}")


@pytest.mark.root
def test_cluster_scoped_objects_and_node_labels_in_a_two_node_lab(
    labs: list[LabDriver], tmp_path: Path
) -> None:
    """A ClusterNetworkPolicy is applied and deleted by name, a Node manifest labels a lab node
    and its deletion takes the labels off; both agents read the one store and put it in force;
    ``lab get pods`` lists pods only."""
    lab = new_lab(labs, tmp_path)
    lab.up("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", nodes=2)
    store = Lab(lab.name).store_path

    def objects() -> dict[tuple[str, str], dict[str, Any]]:
        _revision, found = read_store(store)
        return {(obj["kind"], obj["metadata"]["name"]): obj for obj in found}

    assert {name for kind, name in objects() if kind == "Node"} == {"node-1", "node-2"}
    manifests = CNP_AND_NODE.format(api_version="policy.networking.k8s.io/v1alpha2")
    lab.apply(manifests)
    stored = objects()
    assert "namespace" not in stored[("ClusterNetworkPolicy", "guard")]["metadata"]
    assert stored[("Node", "node-2")]["metadata"]["labels"]["role"] == "storage"
    for node in ("node-1", "node-2"):  # apply returned: both agents enforce this revision
        status = json.loads((Lab(lab.name).dir / f"status-{node}.json").read_text())
        assert status["ready"] is True
    assert lab.pods() == []
    # The other apiVersion names the same object (by name, as the API server stores it).
    lab.apply(manifests.replace("v1alpha2", "v1beta1"))
    assert objects()[("ClusterNetworkPolicy", "guard")]["apiVersion"].endswith("/v1beta1")
    lab.delete(manifests)
    stored = objects()
    assert ("ClusterNetworkPolicy", "guard") not in stored
    assert "role" not in stored[("Node", "node-2")]["metadata"]["labels"], "labels taken off"
    assert ("Node", "node-2") in stored, "the node stays"
