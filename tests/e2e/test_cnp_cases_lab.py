"""The network-policy-api ClusterNetworkPolicy conformance tests on real packets, in the lab.

Each upstream test of :mod:`tests.e2e.cnp_cases` runs as upstream runs it, through the
``netpol-agent lab`` command line: its setup, then its subtests in order with the state carried
from one to the next, probing as it goes. (The self-contained ``CASES`` are for the compiled
runner: replayed here they would take half again as many probe rounds and three times the
applies.) Afterwards, also when it fails, every ClusterNetworkPolicy and NetworkPolicy the test
applied is deleted and, if it re-applied a Namespace or a Pod, the cluster manifest is applied
again, so the next test starts from the pristine cluster. All of a test's mismatches are
reported together, each with its subtest, step, pair and expectation.

Probing. ``lab probe`` connects every ordered pair of pods at once on one port and protocol. A
dropped pair costs the probe's timeout (the default 1.5 s, as every other lab test uses), so a
matrix with a denied pair takes about 1.7 s whatever its size, one with none about 0.3 s (an
apply or a delete takes about 0.3 s). The probes between two state changes (an apply or a
delete) share one matrix per port and protocol, and those matrices are taken concurrently, so a
round of probes costs about one timeout. TCP and UDP go on the wire; SCTP probes are not sent
(the lab's kernel has no SCTP sockets), but their policies are applied all the same, so the
lab's acceptance of them is shown; the compiled runner (test_cnp_cases_compiled.py) checks
their verdicts.

Where each runs (:data:`LAYOUTS`): ``v1alpha2`` in a one-node lab and ``v1beta1`` in a two-node
lab, where the pods are spread over both nodes, so some probes cross nodes (each side enforced
by its own agent) and some stay on one. So every upstream test runs in both apiVersions and
both layouts are covered, in about four minutes on the two-core test machine. Each further
(apiVersion, layout) pair would add about two minutes, past the module's budget of about seven;
both apiVersions convert to the same model, so what a second layout per version would add is
the dataplane run again, not a rule.

An upstream test whose ``lab_skip`` is set is skipped with that reason (none today). A test runs
in a lab of at least its ``min_nodes`` nodes: the node-peer tests, whose servers are hostNetwork
pods serving the same ports on their nodes' addresses (one per node, as upstream's), run in a
two-node lab built from their own cluster manifest for both apiVersions; pod addresses come from
``lab get pods`` (a hostNetwork pod's is its node's).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.e2e.cnp_cases import (
    CNP_API_VERSIONS,
    CNP_KIND,
    UPSTREAM_TESTS,
    ApiVersion,
    Probe,
    Step,
    Subtest,
    UpstreamTest,
    version_name,
)
from tests.e2e.labctl import LabCommandError, LabDriver, lab_session
from tests.e2e.netpol_cases import Apply, Delete

pytestmark = pytest.mark.root

LAYOUTS: dict[ApiVersion, tuple[int, ...]] = {
    CNP_API_VERSIONS[0]: (1,),  # v1alpha2, what upstream's suite applies
    CNP_API_VERSIONS[1]: (2,),  # v1beta1
}
"""The node counts of the labs each apiVersion runs in; see the module docstring for why."""

POLICY_KINDS = frozenset({CNP_KIND, "NetworkPolicy"})
"""What the clean-up deletes; Namespaces and Pods are restored by re-applying the cluster."""
CLUSTER_KINDS = frozenset({"Namespace", "Pod"})

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name); the namespace is "" for a cluster-scoped object."""
MatrixKey = tuple[int, str]
"""(port, protocol) of one ``lab probe``."""
Matrix = dict[str, dict[str, bool]]


def _documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def _object_key(document: dict[str, Any]) -> ObjectKey:
    kind = document["kind"]
    metadata = document["metadata"]
    namespace = "" if kind in (CNP_KIND, "Namespace") else metadata.get("namespace") or "default"
    return (kind, namespace, metadata["name"])


@dataclass(frozen=True, slots=True)
class Layout:
    """What a lab is built from."""

    cluster: str
    """The cluster manifest given to ``lab up``."""
    nodes: int


@dataclass(frozen=True, slots=True)
class Run:
    """One upstream test, in one apiVersion, in one layout: one pytest item."""

    test: UpstreamTest
    api_version: ApiVersion
    layout: Layout

    @property
    def id(self) -> str:
        nodes = f"{self.layout.nodes}-node{'s' if self.layout.nodes > 1 else ''}"
        return f"{self.test.name}/{version_name(self.api_version)}/{nodes}"

    def __str__(self) -> str:
        return (
            f"{self.test.name} [{version_name(self.api_version)}] with {self.layout.nodes} node(s)"
        )


def _runs() -> list[Run]:
    """Every (test, apiVersion), grouped by layout so that each lab is built once."""
    runs = [
        # A test that needs more nodes (the node-peer tests: a hostNetwork server per node)
        # runs in a lab of that many.
        Run(test, version, Layout(test.cluster, max(nodes, test.min_nodes)))
        for test in UPSTREAM_TESTS
        for version in CNP_API_VERSIONS
        for nodes in LAYOUTS[version]
    ]
    layouts = list(dict.fromkeys(run.layout for run in runs))
    return sorted(runs, key=lambda run: layouts.index(run.layout))


RUNS = _runs()


@dataclass
class LabCluster:
    """A lab up in one layout, and what a test applied to it (to be cleaned up)."""

    lab: LabDriver
    layout: Layout
    pod_ips: dict[str, str]
    """``namespace/name`` -> IPv4, as ``lab get pods`` reports them."""
    policies: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    """Policies applied and not yet deleted, by identity (the last version applied)."""
    relabelled: bool = False
    """Whether a Namespace or a Pod was re-applied since the last :meth:`reset`."""

    def apply(self, text: str) -> None:
        self.lab.apply(text)
        for document in _documents(text):
            if document["kind"] in POLICY_KINDS:
                self.policies[_object_key(document)] = document
            self.relabelled |= document["kind"] in CLUSTER_KINDS

    def delete(self, text: str) -> None:
        self.lab.delete(text)
        for document in _documents(text):
            self.policies.pop(_object_key(document), None)

    def probe(self, keys: Sequence[MatrixKey]) -> dict[MatrixKey, Matrix]:
        """One ``lab probe`` per (port, protocol), all at once: each takes about one timeout,
        mostly spent waiting for dropped pairs, so together they take about one too."""
        if not keys:
            return {}
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            matrices = pool.map(lambda key: self.lab.probe(key[0], key[1]), keys)
            return dict(zip(keys, matrices, strict=True))

    def reset(self) -> None:
        """Delete every policy left and restore the original labels."""
        if self.policies:
            # JSON documents (valid YAML): nothing in them can be read as a boolean.
            self.lab.delete("---\n".join(json.dumps(p) + "\n" for p in self.policies.values()))
            self.policies.clear()
        if self.relabelled:
            self.lab.apply(self.layout.cluster)
            self.relabelled = False


def _expected_pods(cluster: str) -> tuple[set[str], set[str]]:
    """Every pod of a cluster manifest, and the hostNetwork ones among them."""
    pods, host_network = set(), set()
    for document in _documents(cluster):
        if document["kind"] == "Pod":
            key = f"{document['metadata']['namespace']}/{document['metadata']['name']}"
            pods.add(key)
            if document["spec"].get("hostNetwork"):
                host_network.add(key)
    return pods, host_network


class LabPool:
    """At most one lab up at a time, in the layout the running test needs.

    The runs are ordered by layout (:func:`_runs`), so each layout's lab is built once; a lab
    whose clean-up failed is discarded, so the next test gets a fresh one.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._current: LabCluster | None = None
        self._stack = contextlib.ExitStack()

    def get(self, layout: Layout) -> LabCluster:
        if self._current is not None and self._current.layout == layout:
            return self._current
        self.close()
        workdir = self._tmp_path_factory.mktemp(f"cnp-cases-{layout.nodes}-node")
        with contextlib.ExitStack() as stack:
            # A failure from here on leaves the session: the lab is torn down, its logs printed.
            lab = stack.enter_context(lab_session("cnpcase", workdir))
            lab.up(layout.cluster, nodes=layout.nodes)
            self._current = LabCluster(lab, layout, _pod_ips(lab, layout))
            self._stack = stack.pop_all()
        return self._current

    def close(self) -> None:
        self._current = None
        self._stack.close()


def _pod_ips(lab: LabDriver, layout: Layout) -> dict[str, str]:
    """Each pod's IPv4 address, checked against the cluster manifest and the layout."""
    pods = lab.pods()
    pod_ips = {
        f"{pod['namespace']}/{pod['name']}": next(ip for ip in pod["ips"] if ":" not in ip)
        for pod in pods
    }
    expected, host_network = _expected_pods(layout.cluster)
    assert set(pod_ips) == expected, pods
    # Node N gives pods addresses from 10.244.N.0/24 (a hostNetwork pod has its node's own):
    # the pods must sit on every node.
    subnets = {
        address.rsplit(".", 1)[0] for key, address in pod_ips.items() if key not in host_network
    }
    assert len(subnets) == layout.nodes, f"pods not spread over {layout.nodes} nodes: {pod_ips}"
    return pod_ips


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPool]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, iptables, NFQUEUE)")
    pool = LabPool(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()


# -- running a test ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    """A step and where it sits in the upstream test."""

    subtest: Subtest | None
    """None: the test's setup."""
    number: int
    """1-based, within the subtest (or the setup)."""
    step: Step

    def where(self) -> str:
        if self.subtest is None:
            return f"setup, step {self.number}"
        return f"subtest {self.subtest.slug} ({self.subtest.name!r}), step {self.number}"


def _placed_steps(run: Run) -> list[Placed]:
    script = run.test.script(run.api_version)
    placed = [Placed(None, number, step) for number, step in enumerate(script.setup, 1)]
    for subtest in script.subtests:
        placed += [Placed(subtest, number, step) for number, step in enumerate(subtest.steps, 1)]
    return placed


@dataclass
class Outcome:
    """What a run found."""

    failures: list[str] = field(default_factory=list)
    sent: int = 0
    """Probes sent on the wire (TCP, UDP)."""
    not_sent: int = 0
    """SCTP probes: their policies are applied, the probes are not sent."""


def _check_probes(cluster: LabCluster, probes: Sequence[Placed], outcome: Outcome) -> None:
    """Probe, with one matrix per port and protocol, what was asked since the last change."""
    wire = [placed for placed in probes if isinstance(placed.step, Probe) and placed.step.on_wire]
    outcome.not_sent += len(probes) - len(wire)
    outcome.sent += len(wire)
    keys: list[MatrixKey] = []
    for placed in wire:
        assert isinstance(placed.step, Probe)
        key = (placed.step.port, placed.step.protocol)
        if key not in keys:
            keys.append(key)
    matrices = cluster.probe(keys)
    for placed in wire:
        probe = placed.step
        assert isinstance(probe, Probe)
        observed = matrices[probe.port, probe.protocol].get(probe.source, {}).get(probe.target)
        if observed is not probe.expected:
            seen = "missing" if observed is None else ("allowed" if observed else "denied")
            outcome.failures.append(
                f"{placed.where()}: {probe.source} -> {probe.target} "
                f"{probe.protocol}/{probe.port}: expected "
                f"{'allowed' if probe.expected else 'denied'}, observed {seen}"
            )


def run_upstream_test(cluster: LabCluster, run: Run) -> Outcome:
    """Every step in order; probes are gathered until the next state change."""
    outcome = Outcome()
    pending: list[Placed] = []
    for placed in _placed_steps(run):
        step = placed.step
        if isinstance(step, Probe):
            pending.append(placed)
            continue
        _check_probes(cluster, pending, outcome)
        pending = []
        try:
            if isinstance(step, Apply):
                cluster.apply(step.render(cluster.pod_ips))
            elif isinstance(step, Delete):
                cluster.delete(step.render(cluster.pod_ips))
        except LabCommandError as error:
            # The state the later steps expect was not reached: stop here.
            outcome.failures.append(f"{placed.where()}: {error}")
            return outcome
    _check_probes(cluster, pending, outcome)
    return outcome


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(
            run,
            id=run.id,
            marks=[pytest.mark.skip(reason=run.test.lab_skip)] if run.test.lab_skip else [],
        )
        for run in RUNS
    ],
)
def test_upstream_test_in_lab(labs: LabPool, run: Run) -> None:
    cluster = labs.get(run.layout)
    try:
        outcome = run_upstream_test(cluster, run)
    finally:
        try:
            cluster.reset()
        except BaseException:
            labs.close()  # in an unknown state: the next test builds a fresh lab
            raise
    if outcome.failures:
        sys.stderr.write(cluster.lab.logs())  # the agents' side of the story, shown on failure
    assert not outcome.failures, (
        f"{run}: {len(outcome.failures)} failure(s); {outcome.sent} probes sent, "
        f"{outcome.not_sent} SCTP probes not sent\n" + "\n".join(outcome.failures)
    )
