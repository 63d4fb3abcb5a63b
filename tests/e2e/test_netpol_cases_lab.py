"""The upstream connectivity cases (netpol_cases.py) against the real lab, through the CLI.

One lab per node layout for the whole module: ``lab up`` with the x/y/z cluster, then every
case in sequence. A case applies and deletes manifests with ``lab apply``/``lab delete`` and
compares each ``lab probe -o json`` matrix with its expectation. After each case (also when it
fails) every NetworkPolicy it applied is deleted and, if it relabelled a Namespace or a Pod, the
original cluster manifest is applied again, so the next case starts from the pristine cluster.

The two-node layout spreads the pods over two nodes (so most flows cross nodes, enforced by
two agents); it is skipped, saying why, when the lab refuses ``--nodes 2``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.e2e.labctl import LabCommandError, LabDriver, lab_session
from tests.e2e.netpol_cases import CASES, CLUSTER_MANIFEST, PODS, Apply, Case, Delete, Probe

pytestmark = pytest.mark.root

PolicyId = tuple[str, str]
"""(namespace, name) of a NetworkPolicy."""


@dataclass
class LabCluster:
    """The module's lab, with what the cases need to run and clean up after themselves."""

    lab: LabDriver
    nodes: int
    pod_ips: dict[str, str]
    """``namespace/name`` -> IPv4, as ``lab get pods`` reports them."""
    policies: dict[PolicyId, dict[str, Any]] = field(default_factory=dict)
    """NetworkPolicies applied and not yet deleted, by identity (the last version applied)."""

    def apply(self, text: str) -> None:
        self.lab.apply(text)
        for document in _documents(text):
            if document.get("kind") == "NetworkPolicy":
                self.policies[_policy_id(document)] = document

    def delete(self, text: str) -> None:
        self.lab.delete(text)
        for document in _documents(text):
            if document.get("kind") == "NetworkPolicy":
                self.policies.pop(_policy_id(document), None)

    def reset(self, relabelled: bool) -> None:
        """Delete every policy left and restore the original labels."""
        if self.policies:
            # JSON documents (valid YAML): PyYAML's dump leaves a value like y unquoted, which
            # the lab, reading YAML as kubectl does, takes for a boolean.
            self.lab.delete("---\n".join(json.dumps(p) + "\n" for p in self.policies.values()))
            self.policies.clear()
        if relabelled:
            self.lab.apply(CLUSTER_MANIFEST)


def _documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def _policy_id(document: dict[str, Any]) -> PolicyId:
    metadata = document["metadata"]
    return (metadata.get("namespace") or "default", metadata["name"])


@pytest.fixture(scope="module", params=[1, 2], ids=["1-node", "2-nodes"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabCluster]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, iptables, NFQUEUE)")
    nodes: int = request.param
    workdir = tmp_path_factory.mktemp(f"netpol-cases-{nodes}-node")
    with lab_session(f"npcase{nodes}", workdir) as lab:
        try:
            lab.up(CLUSTER_MANIFEST, nodes=nodes)
        except LabCommandError as error:
            if nodes > 1 and "--nodes" in str(error):
                pytest.skip(f"the lab refuses --nodes {nodes} (multi-node comes later): {error}")
            raise
        pods = lab.pods()
        pod_ips = {
            f"{pod['namespace']}/{pod['name']}": next(ip for ip in pod["ips"] if ":" not in ip)
            for pod in pods
        }
        assert sorted(pod_ips) == sorted(PODS), pods
        # Node N gives addresses from 10.244.N.0/24: the pods must sit on every node.
        subnets = {address.rsplit(".", 1)[0] for address in pod_ips.values()}
        assert len(subnets) == nodes, f"pods not spread over {nodes} nodes: {pod_ips}"
        yield LabCluster(lab=lab, nodes=nodes, pod_ips=pod_ips)


def run_case(cluster: LabCluster, case: Case) -> list[str]:
    """Run every step; the failures, one message per probe that disagrees."""
    failures = []
    for number, step in enumerate(case.steps, 1):
        if isinstance(step, Apply):
            cluster.apply(step.render(cluster.pod_ips))
        elif isinstance(step, Delete):
            cluster.delete(step.render(cluster.pod_ips))
        elif isinstance(step, Probe):
            observed = cluster.lab.probe(step.port, step.protocol)
            difference = step.expected.diff(observed)
            if difference:
                failures.append(f"step {number}: probe {step.port}/{step.protocol}\n{difference}")
    return failures


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case_in_lab(cluster: LabCluster, case: Case) -> None:
    try:
        failures = run_case(cluster, case)
    finally:
        cluster.reset(case.relabels)
    assert not failures, (
        f"{case.name} [{case.protocol}] with {cluster.nodes} node(s)\n" + "\n\n".join(failures)
    )
