"""``explain`` over every case the project has: it must agree with the expected reachability of
each pair and name what the dataplane names.

The corpora: the upstream e2e NetworkPolicy cases (tests/e2e/netpol_cases.py, on one node and
on two), the network-policy-api ClusterNetworkPolicy conformance cases (tests/e2e/cnp_cases.py,
both apiVersions, on two nodes) and the examples (examples/*/expected.yaml). Each is built as
its compiled test builds it (the same placement and addresses), then every probed pair is
explained for the cluster (egress on the source's node, ingress on the destination's) and:

- the verdict must be the expected reachability (the examples' rule that a target must listen
  is applied as their compiled test applies it);
- ``decided_by`` must be the refs the compiled tables of the nodes on the way record (the
  source's node, then the destination's, up to the first denial): what the flow log names;
- a denial names at least one policy, and every name refers to a policy of the snapshot.

No root, no lab: the lab tests prove the compiled tables are what the dataplane does, and
tests/e2e/test_explain_lab.py checks explain against real packets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.explain_cli import snapshot_from_objects
from enforcement.compiler import compile_tables
from enforcement.explain import explain
from enforcement.explanation import Endpoint, Explanation, find_endpoint
from enforcement.model import PROTOCOL_NUMBERS, ClusterSnapshot, IPAddress
from enforcement.tables import AllowTables
from enforcement.verdict import Reason, RuleRef
from tests.e2e import cnp_cases, netpol_cases
from tests.e2e.test_cnp_cases_compiled import CompiledCluster as CnpCluster
from tests.e2e.test_netpol_cases_compiled import CompiledCluster as NetpolCluster
from tests.examples.expectations import (
    Probe,
    example_directories,
    expected_matrix,
    load_example,
    render_diff,
)
from tests.examples.test_examples_compiled import NODE, example_snapshot, predicted_matrix


def _check_refs(
    snapshot: ClusterSnapshot,
    tables: Mapping[str | None, AllowTables],
    got: Explanation,
    where: str,
) -> list[str]:
    """Problems with ``got``'s references, compared with what the nodes' tables record."""
    src, dst = got.source, got.destination
    nodes: list[str | None] = []
    for party in (src, dst):
        if party.pod is not None and party.pod.node_name not in nodes:
            nodes.append(party.pod.node_name)
    expected: tuple[RuleRef, ...] = ()
    assert src.address is not None and dst.address is not None
    for node in nodes:
        outcome = tables[node].outcome(
            src.address.packed, dst.address.packed, got.protocol, got.port
        )
        expected += outcome.refs
        if not outcome.verdict.accepted:
            break
    problems = []
    if got.decided_by != expected:
        problems.append(f"{where}: decided_by {got.decided_by} != tables' {expected}")
    if not got.allowed and got.reason is not Reason.UNKNOWN_ENDPOINT and not got.decided_by:
        problems.append(f"{where}: denied, naming nothing")
    known = {("NetworkPolicy", p.namespace, p.name) for p in snapshot.policies}
    known |= {("ClusterNetworkPolicy", None, p.name) for p in snapshot.cluster_policies}
    for ref in got.decided_by:
        if (ref.kind, ref.namespace, ref.name) not in known:
            problems.append(
                f"{where}: names {ref.kind} {ref.namespace}/{ref.name}, not in the cluster"
            )
    return problems


# -- upstream NetworkPolicy e2e cases ---------------------------------------------------------


def _netpol_matrix(
    cluster: NetpolCluster, port: int, protocol: str
) -> tuple[dict[str, dict[str, bool]], list[str]]:
    snapshot = cluster.snapshot()
    tables: dict[str | None, AllowTables] = {
        f"node-{i}": compile_tables(snapshot, f"node-{i}") for i in range(1, cluster.nodes + 1)
    }
    pods = sorted(pod.key for pod in snapshot.pods)
    matrix: dict[str, dict[str, bool]] = {}
    problems: list[str] = []
    number = PROTOCOL_NUMBERS["TCP" if protocol == "TCP" else "UDP"]
    for source in pods:
        row = matrix[source] = {}
        for target in pods:
            if source == target:
                row[target] = True  # loopback: never reaches the enforcer
                continue
            got = explain(
                snapshot,
                find_endpoint(snapshot, source),
                find_endpoint(snapshot, target),
                number,
                port,
            )
            row[target] = got.allowed
            problems += _check_refs(
                snapshot, tables, got, f"{source} -> {target} {protocol}/{port}"
            )
    return matrix, problems


@pytest.mark.parametrize("nodes", [1, 2], ids=["1-node", "2-nodes"])
@pytest.mark.parametrize("case", netpol_cases.CASES, ids=[case.id for case in netpol_cases.CASES])
def test_netpol_case_explained(case: netpol_cases.Case, nodes: int) -> None:
    cluster = NetpolCluster(nodes)
    cluster.apply(netpol_cases.CLUSTER_MANIFEST)
    failures: list[str] = []
    for number, step in enumerate(case.steps, 1):
        if isinstance(step, netpol_cases.Apply):
            cluster.apply(step.render(cluster.pod_ips()))
        elif isinstance(step, netpol_cases.Delete):
            cluster.delete(step.render(cluster.pod_ips()))
        else:
            matrix, problems = _netpol_matrix(cluster, step.port, step.protocol)
            difference = step.expected.diff(matrix)
            if difference:
                failures.append(f"step {number}: probe {step.port}/{step.protocol}\n{difference}")
            failures += problems
    assert not failures, f"{case.name} [{case.protocol}]\n" + "\n\n".join(failures)


# -- ClusterNetworkPolicy conformance cases ---------------------------------------------------


@pytest.mark.parametrize("case", cnp_cases.CASES, ids=[case.id for case in cnp_cases.CASES])
def test_cnp_case_explained(case: cnp_cases.Case) -> None:
    cluster = CnpCluster()
    cluster.apply(case.cluster)
    failures: list[str] = []
    snapshot: ClusterSnapshot | None = None
    tables: dict[str | None, AllowTables] = {}
    for step in case.steps:
        if isinstance(step, netpol_cases.Apply):
            cluster.apply(step.render(cluster.pod_ips()))
            snapshot = None
        elif isinstance(step, netpol_cases.Delete):
            cluster.delete(step.render(cluster.pod_ips()))
            snapshot = None
        else:
            if snapshot is None:
                snapshot, notes = snapshot_from_objects(cluster.objects.values())
                assert not notes, notes
                tables = {f"node-{i}": compile_tables(snapshot, f"node-{i}") for i in (1, 2)}
            source = find_endpoint(snapshot, step.source)
            target = find_endpoint(snapshot, step.target)
            got = explain(snapshot, source, target, PROTOCOL_NUMBERS[step.protocol], step.port)
            if got.allowed != step.expected:
                failures.append(f"{step}: explained {got.reason.value}")
            failures += _check_refs(snapshot, tables, got, str(step))
    assert not failures, "\n".join(failures)


# -- the examples -----------------------------------------------------------------------------


def _example_cases() -> list[object]:
    return [
        pytest.param(directory, probe, id=f"{directory.name}/{probe.name}")
        for directory in example_directories()
        for probe in load_example(directory).probes
    ]


@pytest.mark.parametrize(("directory", "probe"), _example_cases())
def test_example_explained(directory: Path, probe: Probe) -> None:
    example = load_example(directory)
    snapshot, addresses = example_snapshot(example, probe.stage)
    tables: dict[str | None, AllowTables] = {NODE: compile_tables(snapshot, NODE)}
    protocol = PROTOCOL_NUMBERS[probe.protocol]
    problems: list[str] = []

    def reaches(source: str, target: str, src: IPAddress, dst: IPAddress) -> bool:
        got = explain(snapshot, Endpoint(address=src), Endpoint(address=dst), protocol, probe.port)
        problems.extend(_check_refs(snapshot, tables, got, f"{source} -> {target}"))
        return got.allowed

    actual = predicted_matrix(example, probe, addresses, reaches)
    expected = expected_matrix(example, probe)
    assert actual == expected, "\n" + render_diff(probe, expected, actual, source="explain")
    assert not problems, "\n".join(problems)
