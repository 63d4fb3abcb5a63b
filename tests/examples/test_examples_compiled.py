"""The examples' expected reachability, checked against the pure compiler (no root, no lab).

For every probe of every ``examples/*/expected.yaml`` this builds the cluster the lab would
build (Deployments expanded into ``<name>-<i>`` pods, pods numbered 10.244.1.2, .3, ... and
fd00:10:244:1::2, ... in order of appearance, all on node-1), converts it with ``agent.convert``
and ``agent.kinds`` (ClusterNetworkPolicies) as the agent does, compiles the allow tables and
asks them about every ordered pair. A pair counts as reachable only if the tables allow it *and*
the target listens on the port, which is what the lab's probe can observe; a pod to itself goes
over loopback, which is never filtered.
The lab test (test_examples_lab.py) checks the same expectations against real packets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import pytest

from agent.convert import namespace_from_k8s, pod_from_k8s, policy_from_k8s
from agent.kinds import CLUSTER_NETWORK_POLICY
from enforcement.compiler import compile_tables
from enforcement.model import PROTOCOL_NUMBERS, ClusterSnapshot, IPAddress, Namespace, Pod
from enforcement.tables import AllowTables
from enforcement.verdict import Reason
from tests.examples.expectations import (
    EXTERNAL_KIND,
    Example,
    Matrix,
    Probe,
    example_directories,
    expand_deployments,
    expected_matrix,
    load_example,
    load_objects,
    render_diff,
)

NODE = "node-1"
POD_NETWORK_V4 = ipaddress.IPv4Network("10.244.1.0/24")
POD_NETWORK_V6 = ipaddress.IPv6Network("fd00:10:244:1::/64")
FIRST_POD_OFFSET = 2
"""The lab gives pods .2, .3, ... of the node's pod subnets (.1 is the node's)."""

REACHABLE = frozenset({Reason.ALLOWED, Reason.NOT_ISOLATED})
POLICY_KINDS = ("NetworkPolicy", CLUSTER_NETWORK_POLICY.kind)
"""What stage files may hold (ClusterNetworkPolicy is cluster-scoped: no namespace)."""


@cache
def _example(name: str) -> Example:
    return load_example(next(d for d in example_directories() if d.name == name))


def _cases() -> list[Any]:
    cases = []
    for directory in example_directories():
        example = load_example(directory)
        for probe in example.probes:
            cases.append(pytest.param(example.name, probe.name, id=f"{example.name}/{probe.name}"))
    return cases


def _with_status(pod: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The pod as the lab stores it: scheduled on node-1 with the index-th pod addresses."""
    ipv4 = POD_NETWORK_V4.network_address + FIRST_POD_OFFSET + index
    ipv6 = POD_NETWORK_V6.network_address + FIRST_POD_OFFSET + index
    return {
        **pod,
        "spec": {**(pod.get("spec") or {}), "nodeName": NODE},
        "status": {"phase": "Running", "podIPs": [{"ip": str(ipv4)}, {"ip": str(ipv6)}]},
    }


Addresses = dict[str, dict[int, IPAddress]]
"""Endpoint key -> IP version -> its address there."""


def compile_example(example: Example, stage: Sequence[str]) -> tuple[AllowTables, Addresses]:
    """node-1's tables with the policy files of ``stage`` in force, and every endpoint's
    addresses (pods as the lab numbers them, external hosts as declared)."""
    snapshot, addresses = example_snapshot(example, stage)
    return compile_tables(snapshot, NODE), addresses


def example_snapshot(example: Example, stage: Sequence[str]) -> tuple[ClusterSnapshot, Addresses]:
    """The cluster state with the policy files of ``stage`` in force, as the lab holds it, and
    every endpoint's addresses."""
    objects = list(example.objects)
    objects += expand_deployments(load_objects(example.stage_paths(stage)))
    namespaces: list[Namespace] = []
    pods: list[Pod] = []
    policies = []
    cluster_policies = []
    addresses: Addresses = {}
    for obj in objects:
        kind = obj["kind"]
        if kind == "Namespace":
            namespaces.append(namespace_from_k8s(obj))
        elif kind == "Pod":
            pod = pod_from_k8s(_with_status(obj, len(pods)))
            pods.append(pod)
            addresses[pod.key] = {address.version: address for address in pod.ips}
        elif kind == "NetworkPolicy":
            policies.append(policy_from_k8s(obj))
        elif kind == CLUSTER_NETWORK_POLICY.kind:
            cluster_policies.append(CLUSTER_NETWORK_POLICY.convert(obj, strict=True))
        elif kind == EXTERNAL_KIND:
            key = f"external/{obj['metadata']['name']}"
            parsed = [ipaddress.ip_address(text) for text in obj["spec"]["addresses"]]
            addresses[key] = {address.version: address for address in parsed}
    snapshot = ClusterSnapshot(
        tuple(namespaces), tuple(pods), tuple(policies), cluster_policies=tuple(cluster_policies)
    )
    return snapshot, addresses


Reaches = Callable[[str, str, IPAddress, IPAddress], bool]
"""Whether a new connection from one endpoint (key, address) to another passes."""


def predicted_matrix(
    example: Example, probe: Probe, addresses: Addresses, reaches: Reaches
) -> Matrix:
    """The matrix ``reaches`` predicts for ``probe``, given who listens where: a target that
    does not serve the probe's port, or an endpoint without an address of its family, is never
    reached, and an endpoint always reaches itself (loopback is never filtered)."""
    endpoints = example.probe_endpoints(probe)
    matrix: Matrix = {}
    for source in endpoints:
        row = matrix[source.key] = {}
        for target in endpoints:
            src = addresses[source.key].get(probe.family)
            dst = addresses[target.key].get(probe.family)
            if src is None or dst is None or (probe.port, probe.protocol) not in target.serves:
                row[target.key] = False
            elif source.key == target.key:
                row[target.key] = True
            else:
                row[target.key] = reaches(source.key, target.key, src, dst)
    return matrix


def compiled_matrix(example: Example, probe: Probe) -> Matrix:
    """The matrix the compiled tables predict for ``probe``, given who listens where."""
    tables, addresses = compile_example(example, probe.stage)
    protocol = PROTOCOL_NUMBERS[probe.protocol]

    def reaches(_source: str, _target: str, src: IPAddress, dst: IPAddress) -> bool:
        return tables.evaluate(src.packed, dst.packed, protocol, probe.port) in REACHABLE

    return predicted_matrix(example, probe, addresses, reaches)


@pytest.mark.parametrize(("example_name", "probe_name"), _cases())
def test_compiled_tables_match_expected(example_name: str, probe_name: str) -> None:
    example = _example(example_name)
    probe = next(p for p in example.probes if p.name == probe_name)
    expected = expected_matrix(example, probe)
    actual = compiled_matrix(example, probe)
    assert actual == expected, "\n" + render_diff(probe, expected, actual, source="compiler")


@pytest.mark.parametrize("directory", example_directories(), ids=lambda d: d.name)
def test_example_is_complete(directory: Any) -> None:
    """Every example has its files, a README, and policy files whose policies don't collide.

    The lab test moves between stages by deleting and applying whole files, so one policy must
    not be defined in two files of the same example.
    """
    for name in ("cluster.yaml", "expected.yaml", "README.md"):
        assert (directory / name).is_file(), f"{directory.name} lacks {name}"
    example = load_example(directory)
    files = sorted({name for stage in example.stages() for name in stage})
    owner: dict[tuple[str, str, str], str] = {}
    for name in files:
        for obj in load_objects([directory / name]):
            kind = obj["kind"]
            assert kind in POLICY_KINDS, f"{name}: only policies belong in stage files"
            metadata = obj["metadata"]
            identity = (kind, metadata.get("namespace", ""), metadata["name"])
            assert identity not in owner, f"{identity} is in both {owner[identity]} and {name}"
            owner[identity] = name
    unused = _policy_files(directory) - set(files)
    assert not unused, f"{directory.name}: policy files no probe uses: {sorted(unused)}"


def _policy_files(directory: Any) -> set[str]:
    return {
        path.name
        for path in directory.glob("*.yaml")
        if path.name not in ("cluster.yaml", "expected.yaml")
    }


def test_every_example_is_indexed() -> None:
    index = (example_directories()[0].parent / "README.md").read_text()
    names: Sequence[str] = [directory.name for directory in example_directories()]
    assert len(names) >= 6
    for name in names:
        assert f"]({name}/)" in index, f"examples/README.md does not link {name}/"
