"""The upstream connectivity cases (netpol_cases.py) through the compiler, without a kernel.

Every case's manifests go through ``agent/convert.py`` into a snapshot, the snapshot through
``compile_tables``, and each probe becomes 81 ``AllowTables.evaluate`` calls. This proves the
expectations and the compiler agree; the lab test (test_netpol_cases_lab.py) then proves the
dataplane does what the compiler says.

Pods get fixed addresses from the lab's scheme (node N: 10.244.N.0/24, fd00:10:244:N::/64). With
two nodes the pods are spread as the lab spreads them, and a flow is allowed only when the
source's node (its egress) and the destination's node (its ingress) both allow it, each with its
own tables: that is how a multi-node cluster enforces.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from agent.convert import namespace_from_k8s, pod_from_k8s, policy_from_k8s
from enforcement.compiler import compile_tables
from enforcement.model import PROTOCOL_NUMBERS, ClusterSnapshot
from enforcement.tables import AllowTables
from enforcement.verdict import Reason
from tests.e2e.netpol_cases import CASES, CLUSTER_MANIFEST, PODS, Apply, Case, Delete, Probe
from tests.e2e.reachability import Reachability

ACCEPTED = frozenset({Reason.ALLOWED, Reason.NOT_ISOLATED})

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name)."""


def _key(obj: dict[str, Any]) -> ObjectKey:
    metadata = obj["metadata"]
    return (obj["kind"], metadata.get("namespace") or "", metadata["name"])


@dataclass
class CompiledCluster:
    """A tiny API server: objects by key, pods placed on nodes with fixed addresses."""

    nodes: int
    objects: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    _placed: int = 0

    def apply(self, text: str) -> None:
        for obj in _documents(text):
            key = _key(obj)
            obj = copy.deepcopy(obj)
            previous = self.objects.get(key)
            if obj["kind"] == "Pod":
                if previous is None:
                    self._place(obj)
                else:  # a label update: the pod keeps its node and addresses
                    obj["spec"]["nodeName"] = previous["spec"]["nodeName"]
                    obj["status"] = previous["status"]
            self.objects[key] = obj

    def delete(self, text: str) -> None:
        for obj in _documents(text):
            self.objects.pop(_key(obj), None)

    def _place(self, obj: dict[str, Any]) -> None:
        # Round robin, as the lab's "fewest pods, lowest index first" works out for new pods.
        node = self._placed % self.nodes + 1
        host = self._placed // self.nodes + 2  # .0 is the network, .1 the node's
        self._placed += 1
        obj["spec"]["nodeName"] = f"node-{node}"
        ipv4 = ipaddress.IPv4Network(f"10.244.{node}.0/24")[host]
        ipv6 = ipaddress.IPv6Network(f"fd00:10:244:{node:x}::/64")[host]
        obj["status"] = {
            "phase": "Running",
            "podIP": str(ipv4),
            "podIPs": [{"ip": str(ipv4)}, {"ip": str(ipv6)}],
        }

    def pod_ips(self) -> dict[str, str]:
        """``namespace/name`` -> IPv4, what ``lab get pods`` tells the lab runner."""
        return {
            f"{namespace}/{name}": obj["status"]["podIP"]
            for (kind, namespace, name), obj in self.objects.items()
            if kind == "Pod"
        }

    def snapshot(self) -> ClusterSnapshot:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for (kind, _namespace, _name), obj in sorted(self.objects.items()):
            by_kind.setdefault(kind, []).append(obj)
        return ClusterSnapshot(
            namespaces=tuple(namespace_from_k8s(obj) for obj in by_kind.get("Namespace", [])),
            pods=tuple(pod_from_k8s(obj) for obj in by_kind.get("Pod", [])),
            policies=tuple(policy_from_k8s(obj) for obj in by_kind.get("NetworkPolicy", [])),
        )

    def probe(self, port: int, protocol: str) -> dict[str, dict[str, bool]]:
        """The matrix ``lab probe`` would print, decided by each node's compiled tables."""
        snapshot = self.snapshot()
        tables = {
            f"node-{index}": compile_tables(snapshot, f"node-{index}", generation=1)
            for index in range(1, self.nodes + 1)
        }
        pods = {
            f"{namespace}/{name}": obj
            for (kind, namespace, name), obj in self.objects.items()
            if kind == "Pod"
        }
        number = PROTOCOL_NUMBERS["TCP" if protocol == "TCP" else "UDP"]
        matrix: dict[str, dict[str, bool]] = {}
        for source, source_obj in pods.items():
            row = matrix[source] = {}
            for target, target_obj in pods.items():
                if source == target:
                    row[target] = True  # loopback: never reaches the enforcer
                    continue
                src = ipaddress.ip_address(source_obj["status"]["podIP"]).packed
                dst = ipaddress.ip_address(target_obj["status"]["podIP"]).packed
                deciders = _unique(
                    [tables[source_obj["spec"]["nodeName"]], tables[target_obj["spec"]["nodeName"]]]
                )
                row[target] = all(
                    node_tables.evaluate(src, dst, number, port) in ACCEPTED
                    for node_tables in deciders
                )
        return matrix


def _unique(items: Iterable[AllowTables]) -> list[AllowTables]:
    result: list[AllowTables] = []
    for item in items:
        if not any(item is seen for seen in result):
            result.append(item)
    return result


def _documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def run_case(case: Case, nodes: int) -> list[str]:
    """Run every step; the failures, one message per probe that disagrees."""
    cluster = CompiledCluster(nodes)
    cluster.apply(CLUSTER_MANIFEST)
    failures = []
    for number, step in enumerate(case.steps, 1):
        if isinstance(step, Apply):
            cluster.apply(step.render(cluster.pod_ips()))
        elif isinstance(step, Delete):
            cluster.delete(step.render(cluster.pod_ips()))
        elif isinstance(step, Probe):
            difference = step.expected.diff(cluster.probe(step.port, step.protocol))
            if difference:
                failures.append(f"step {number}: probe {step.port}/{step.protocol}\n{difference}")
    return failures


@pytest.mark.parametrize("nodes", [1, 2], ids=["1-node", "2-nodes"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case_compiled(case: Case, nodes: int) -> None:
    failures = run_case(case, nodes)
    assert not failures, f"{case.name} [{case.protocol}]\n" + "\n\n".join(failures)


# -- the data itself ------------------------------------------------------------------------


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def test_every_case_probes_and_expects_every_pod() -> None:
    for case in CASES:
        assert case.probes, case.id
        for step in case.probes:
            assert step.expected.pods == PODS, case.id


def test_cluster_manifest_is_nine_pods_in_three_namespaces() -> None:
    cluster = CompiledCluster(1)
    cluster.apply(CLUSTER_MANIFEST)
    snapshot = cluster.snapshot()
    assert sorted(namespace.name for namespace in snapshot.namespaces) == ["x", "y", "z"]
    assert sorted(pod.key for pod in snapshot.pods) == sorted(PODS)
    for pod in snapshot.pods:
        assert pod.labels["pod"] == pod.name
        assert pod.named_port("serve-80-tcp", "TCP") == 80
        assert pod.named_port("serve-81-udp", "UDP") == 81


def test_no_policy_means_everything_is_reachable() -> None:
    cluster = CompiledCluster(2)
    cluster.apply(CLUSTER_MANIFEST)
    for protocol in ("TCP", "UDP"):
        assert Reachability(PODS, True).diff(cluster.probe(80, protocol)) == ""


def test_reachability_selectors_and_loopback() -> None:
    expected = Reachability(PODS, True).expect_peer("*/a", "y/*", False)
    assert not expected.get("x/a", "y/b")
    assert not expected.get("z/a", "y/c")
    assert expected.get("x/b", "y/b")
    assert expected.get("y/a", "y/a")  # a pod always reaches itself
    closed = Reachability(PODS, False).expect_all_egress("x/a", True)
    assert closed.get("x/a", "z/c") and not closed.get("z/c", "x/a")
    assert closed.get("z/c", "z/c")
    assert Reachability(PODS, True).expect_all_ingress("x/b", False).allowed_count() == 81 - 8


def test_reachability_diff_marks_mismatches() -> None:
    expected = Reachability(PODS, True).expect("x/a", "y/b", False)
    assert expected.diff(expected.matrix()) == ""
    observed = Reachability(PODS, True).matrix()
    del observed["z/c"]["z/c"]
    report = expected.diff(observed)
    assert "2 of 81 pairs differ" in report
    assert "x/a -> y/b: expected blocked, observed reachable" in report
    assert "z/c -> z/c: expected reachable, observed missing" in report
    assert "[.]" in report and "[?]" in report
