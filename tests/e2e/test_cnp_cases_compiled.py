"""The network-policy-api ClusterNetworkPolicy conformance cases, through the compiler.

Every case of :mod:`tests.e2e.cnp_cases` (both apiVersions, SCTP included) is replayed on a
small in-memory cluster of two nodes: the objects go through the agent's own state cache (the
same converters and fail-closed rules as Kubernetes mode), each node compiles its tables, and a
probe is allowed when the source's node allows it as egress and the target's node as ingress.
A hostNetwork target stands for its node: only the source's egress decides (a node is never a
subject). The lab runs the same cases on real packets (``test_cnp_cases_lab.py``).
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from agent.state import ClusterState
from enforcement.compiler import compile_tables
from enforcement.model import PROTOCOL_NUMBERS
from enforcement.tables import AllowTables
from enforcement.verdict import Reason
from tests.e2e.cnp_cases import CASES, NODE_LABELS, Case, Probe
from tests.e2e.netpol_cases import Apply, Delete

ACCEPTED = frozenset({Reason.ALLOWED, Reason.NOT_ISOLATED})
NODES = 2

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name)."""


def node_address(index: int) -> str:
    """The lab's node addresses (kind's node network): node N is 172.18.0.(N+1)."""
    return str(ipaddress.IPv4Address("172.18.0.1") + index)


def _documents(text: str) -> Iterator[dict[str, Any]]:
    for document in yaml.safe_load_all(text):
        if document:
            yield document


@dataclass
class CompiledCluster:
    """Objects by key; pods placed round robin on two nodes with fixed addresses."""

    objects: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    placed: int = 0

    def __post_init__(self) -> None:
        for index in range(1, NODES + 1):
            name = f"node-{index}"
            self.objects[("Node", "", name)] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {**NODE_LABELS, "kubernetes.io/hostname": name},
                },
                "status": {"addresses": [{"type": "InternalIP", "address": node_address(index)}]},
            }

    def apply(self, text: str) -> None:
        for obj in _documents(text):
            obj = copy.deepcopy(obj)
            metadata = obj["metadata"]
            if obj["kind"] in ("Pod", "NetworkPolicy"):
                metadata.setdefault("namespace", "default")
            key = (obj["kind"], metadata.get("namespace", ""), metadata["name"])
            previous = self.objects.get(key)
            if obj["kind"] == "Pod":
                if previous is None:
                    self._place(obj)
                else:  # a label update: same node, same addresses
                    obj["spec"]["nodeName"] = previous["spec"]["nodeName"]
                    obj["status"] = previous["status"]
            self.objects[key] = obj

    def delete(self, text: str) -> None:
        for obj in _documents(text):
            metadata = obj["metadata"]
            namespace = metadata.get("namespace", "default" if obj["kind"] != "Namespace" else "")
            if obj["kind"] in ("Namespace", "ClusterNetworkPolicy"):
                namespace = ""
            self.objects.pop((obj["kind"], namespace, metadata["name"]), None)

    def _place(self, obj: dict[str, Any]) -> None:
        node = self.placed % NODES + 1
        self.placed += 1
        obj["spec"]["nodeName"] = f"node-{node}"
        if obj["spec"].get("hostNetwork"):
            address = node_address(node)
        else:
            address = str(ipaddress.IPv4Network(f"10.244.{node}.0/24")[self.placed + 1])
        obj["status"] = {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}

    def pods(self) -> dict[str, dict[str, Any]]:
        return {
            f"{namespace}/{name}": obj
            for (kind, namespace, name), obj in self.objects.items()
            if kind == "Pod"
        }

    def pod_ips(self) -> dict[str, str]:
        return {key: obj["status"]["podIP"] for key, obj in self.pods().items()}

    def tables(self) -> dict[str, AllowTables]:
        state = ClusterState()
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for (kind, _namespace, _name), obj in sorted(self.objects.items()):
            by_kind.setdefault(kind, []).append(obj)
        state.replace_all(by_kind, "1")
        errors = state.errors()
        assert not errors, [error.message for error in errors]
        snapshot = state.view().snapshot
        return {
            f"node-{index}": compile_tables(snapshot, f"node-{index}", generation=1)
            for index in range(1, NODES + 1)
        }

    def allows(self, probe: Probe, tables: dict[str, AllowTables]) -> bool:
        pods = self.pods()
        source, target = pods[probe.source], pods[probe.target]
        src = ipaddress.ip_address(source["status"]["podIP"]).packed
        dst = ipaddress.ip_address(target["status"]["podIP"]).packed
        deciders = [tables[source["spec"]["nodeName"]]]
        if not target["spec"].get("hostNetwork"):
            deciders.append(tables[target["spec"]["nodeName"]])
        number = PROTOCOL_NUMBERS[probe.protocol]
        return all(
            node_tables.evaluate(src, dst, number, probe.port) in ACCEPTED
            for node_tables in {id(t): t for t in deciders}.values()
        )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_conformance_case_through_the_compiler(case: Case) -> None:
    cluster = CompiledCluster()
    cluster.apply(case.cluster)
    failures = []
    tables: dict[str, AllowTables] | None = None
    for step in case.steps:
        if isinstance(step, Apply):
            cluster.apply(step.render(cluster.pod_ips()))
            tables = None
        elif isinstance(step, Delete):
            cluster.delete(step.render(cluster.pod_ips()))
            tables = None
        else:
            if tables is None:
                tables = cluster.tables()
            if cluster.allows(step, tables) != step.expected:
                failures.append(str(step))
    assert not failures, "\n".join(failures)
