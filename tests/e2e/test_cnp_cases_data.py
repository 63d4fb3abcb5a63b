"""The conformance cases of cnp_cases.py as data: checks that need no compiler and no lab.

They keep the translation honest on its own terms: the counts pinned to the upstream commit
read, both apiVersions emitted with the same content, every manifest readable by the loader
(go-yaml's reading, so no label turns into a boolean), every ClusterNetworkPolicy within what
the CRD's schema and CEL rules accept, every probe naming pods that exist and a port its target
serves, and every case replaying the earlier subtests' state changes. Whether the expected
verdicts are right is the compiled runner's job (it comes with the tiered compiler).
"""

from __future__ import annotations

import functools
import ipaddress
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.convert import namespace_from_k8s, pod_from_k8s
from agent.manifests import load_manifests
from enforcement.clusterpolicy import (
    MAX_PRIORITY,
    MAX_RULE_NAME,
    MAX_RULES,
    MIN_PRIORITY,
    RuleAction,
    Tier,
)
from enforcement.model import Pod
from tests.e2e.cnp_cases import (
    CASES,
    CLUSTER_MANIFEST,
    CNP_API_VERSIONS,
    CNP_KIND,
    EXCLUDED,
    EXTENDED_FEATURES,
    FOREST,
    HOUSES,
    NODE_LABELS,
    NODE_PEER_CLUSTER_MANIFEST,
    NODE_PEER_MIN_NODES,
    UPSTREAM_SUBTEST_COUNT,
    UPSTREAM_TEST_COUNT,
    UPSTREAM_TESTS,
    Case,
    Probe,
    Step,
    namespace_manifest,
    to_yaml,
)
from tests.e2e.netpol_cases import Apply, Delete

CASE_IDS = [case.id for case in CASES]

SUBTESTS_AT_UPSTREAM_COMMIT: Mapping[str, int] = {
    "CNPAdminTierIngressTCP": 6,
    "CNPAdminTierIngressUDP": 6,
    "CNPAdminTierIngressSCTP": 6,
    "CNPAdminTierEgressTCP": 6,
    "CNPAdminTierEgressUDP": 6,
    "CNPAdminTierEgressSCTP": 6,
    "CNPAdminTierGress": 6,
    "CNPAdminTierEgressInlineCIDRPeers": 2,
    "CNPAdminTierPriorityField": 3,
    "CNPAdminTierIntegration": 6,
    "CNPAdminTierIngressNamedPort": 1,
    "CNPAdminTierEgressNamedPort": 1,
    "CNPAdminTierEgressNodePeers": 3,
    "CNPBaselineTierIngressTCP": 4,
    "CNPBaselineTierIngressUDP": 4,
    "CNPBaselineTierIngressSCTP": 4,
    "CNPBaselineTierEgressTCP": 4,
    "CNPBaselineTierEgressUDP": 4,
    "CNPBaselineTierEgressSCTP": 4,
    "CNPBaselineTierGress": 4,
    "CNPBaselineTierEgressInlineCIDRPeers": 2,
    "CNPBaselineTierIngressNamedPort": 1,
    "CNPBaselineTierEgressNamedPort": 1,
    "CNPBaselineTierEgressNodePeers": 2,
}
"""Upstream's tests and their ``t.Run`` counts at UPSTREAM_COMMIT (a re-read of a newer commit
updates this table, and a test added upstream shows up as a difference here)."""

FAKE_POD_IPS = {
    f"{house.namespace}/{house.workload}-{index}": f"10.244.1.{number * 2 + index + 2}"
    for number, house in enumerate((*HOUSES, FOREST))
    for index in range(2)
}
"""Addresses for rendering manifests that name pod addresses (any distinct ones will do)."""


# -- counts -----------------------------------------------------------------------------------


def test_upstream_tests_and_subtests_are_all_accounted_for() -> None:
    translated = Counter(case.test for case in CASES if case.api_version == CNP_API_VERSIONS[0])
    excluded_tests = {exclusion.test for exclusion in EXCLUDED if exclusion.subtest is None}
    excluded_subtests = Counter(
        exclusion.test for exclusion in EXCLUDED if exclusion.subtest is not None
    )
    assert (UPSTREAM_TEST_COUNT, UPSTREAM_SUBTEST_COUNT) == (24, 92)
    assert len(translated) + len(excluded_tests) == UPSTREAM_TEST_COUNT
    assert sum(translated.values()) + sum(excluded_subtests.values()) == UPSTREAM_SUBTEST_COUNT
    counted = {name: translated[name] + excluded_subtests[name] for name in translated}
    assert counted == dict(SUBTESTS_AT_UPSTREAM_COMMIT)
    assert [test.name for test in UPSTREAM_TESTS] == list(SUBTESTS_AT_UPSTREAM_COMMIT)


def test_exclusions_name_upstream_tests_and_give_reasons() -> None:
    for exclusion in EXCLUDED:
        assert exclusion.test in SUBTESTS_AT_UPSTREAM_COMMIT, exclusion
        assert exclusion.reason.strip(), exclusion


def test_extended_tests_are_the_named_port_and_node_peer_ones() -> None:
    extended = {test.name for test in UPSTREAM_TESTS if test.extended}
    assert extended == {
        "CNPAdminTierIngressNamedPort",
        "CNPAdminTierEgressNamedPort",
        "CNPAdminTierEgressNodePeers",
        "CNPBaselineTierIngressNamedPort",
        "CNPBaselineTierEgressNamedPort",
        "CNPBaselineTierEgressNodePeers",
    }
    for test in UPSTREAM_TESTS:
        assert test.features[0] == "ClusterNetworkPolicy", test.name
        assert set(test.features[1:]) <= EXTENDED_FEATURES, test.name


# -- ids and apiVersions ----------------------------------------------------------------------


def test_case_ids_are_unique() -> None:
    assert len(CASE_IDS) == len(set(CASE_IDS))


def test_every_subtest_is_a_case_for_both_api_versions() -> None:
    versions: dict[tuple[str, str], set[str]] = {}
    for case in CASES:
        versions.setdefault((case.test, case.subtest), set()).add(case.api_version)
    assert len(versions) == UPSTREAM_SUBTEST_COUNT
    assert all(found == set(CNP_API_VERSIONS) for found in versions.values())
    assert CNP_API_VERSIONS == (
        "policy.networking.k8s.io/v1alpha2",
        "policy.networking.k8s.io/v1beta1",
    )


def test_api_versions_differ_in_the_api_version_alone() -> None:
    by_subtest: dict[tuple[str, str], dict[str, Case]] = {}
    for case in CASES:
        by_subtest.setdefault((case.test, case.subtest), {})[case.api_version] = case
    first, second = CNP_API_VERSIONS
    for pair in by_subtest.values():
        old, new = pair[first], pair[second]
        assert old.probes == new.probes, old.id
        old_texts = [_render(step) for step in old.steps if not isinstance(step, Probe)]
        new_texts = [_render(step) for step in new.steps if not isinstance(step, Probe)]
        assert [text.replace(first, second) for text in old_texts] == new_texts, old.id
        for text in new_texts:
            for obj in _objects(text):
                if obj["kind"] == CNP_KIND:
                    assert obj["apiVersion"] == second, new.id


# -- manifests --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_manifest_loads(case: Case) -> None:
    """The cluster and every manifest a step applies or deletes, through the lab's loader.

    ClusterNetworkPolicy is not a kind the loader validates yet: it passes through as an
    unknown kind, so its shape is checked here (``_check_cnp``) against the CRD's rules.
    """
    texts = [case.cluster, *(_render(step) for step in case.steps if not isinstance(step, Probe))]
    for text in texts:
        _check_manifest(text)


@functools.cache
def _check_manifest(text: str) -> None:
    """Loads, holds no object twice, and every ClusterNetworkPolicy is well formed (cached: the
    cases share most of their manifests)."""
    objects = _objects(text)  # load_manifests: ManifestError for any problem
    assert objects, f"empty manifest:\n{text}"
    identities = [
        (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in objects
    ]
    assert len(identities) == len(set(identities)), f"duplicate objects:\n{text}"
    # As written (the loader does not know ClusterNetworkPolicy is cluster-scoped yet and fills
    # in a namespace); every string is quoted, so PyYAML reads it as kubectl does.
    for obj in yaml.safe_load_all(text):
        if obj["kind"] == CNP_KIND:
            _check_cnp(obj, obj["metadata"]["name"])


def test_cluster_manifests_are_the_upstream_houses() -> None:
    namespaces, pods = _cluster(CLUSTER_MANIFEST)
    assert sorted(namespaces) == sorted(house.namespace for house in HOUSES)
    assert sorted(pods) == sorted(
        f"{house.namespace}/{house.workload}-{index}" for house in HOUSES for index in (0, 1)
    )
    for key, pod in pods.items():
        assert pod.labels == {"conformance-house": namespaces[pod.namespace]["conformance-house"]}
        assert not pod.host_network, key
        # The named ports upstream declares, and every port it serves, declared.
        assert pod.named_port("web", "TCP") == 80
        assert pod.named_port("dns", "UDP") == 53
        assert {(p.port, p.protocol) for p in pod.ports} == {
            (80, "TCP"),
            (8080, "TCP"),
            (53, "UDP"),
            (5353, "UDP"),
            (9003, "SCTP"),
            (9005, "SCTP"),
        }
        assert sum(p.name is not None for p in pod.ports) == 2, key

    forest_namespaces, forest_pods = _cluster(NODE_PEER_CLUSTER_MANIFEST)
    assert set(forest_namespaces) - set(namespaces) == {FOREST.namespace}
    centaurs = {key: pod for key, pod in forest_pods.items() if key not in pods}
    assert sorted(centaurs) == [FOREST.pod(0), FOREST.pod(1)]
    assert all(pod.host_network for pod in centaurs.values())


@pytest.mark.parametrize(
    ("label", "written"),
    [
        ("y", '"y"'),
        ("n", '"n"'),
        ("on", '"on"'),
        ("off", '"off"'),
        ("yes", '"yes"'),
        ("no", '"no"'),
        ("true", '"true"'),
        ("80", '"80"'),
        ("1e3", '"1e3"'),
        ("null", '"null"'),
    ],
    ids=lambda value: str(value),
)
def test_yaml_quotes_what_go_yaml_would_read_as_another_type(
    label: str, written: str, tmp_path: Path
) -> None:
    text = to_yaml(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "ns", "labels": {label: label}},
        }
    )
    assert f": {written}\n" in text
    path = tmp_path / "ns.yaml"
    path.write_text(text)
    (manifest,) = load_manifests([str(path)])
    assert namespace_from_k8s(manifest.obj).labels[label] == label


def test_relabelling_a_namespace_is_an_update_of_its_labels() -> None:
    (obj,) = _objects(namespace_manifest(HOUSES[1], "denied-namespace-label"))
    assert obj["metadata"] == {
        "name": HOUSES[1].namespace,
        "labels": {"conformance-house": "denied-namespace-label"},
    }
    relabelling = [case for case in CASES if case.relabels]
    assert relabelling, "the inline CIDR tests relabel slytherin"
    assert {case.test for case in relabelling} == {
        "CNPAdminTierEgressInlineCIDRPeers",
        "CNPBaselineTierEgressInlineCIDRPeers",
    }


# -- probes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_probes_name_existing_pods_and_served_ports(case: Case) -> None:
    _namespaces, pods = _cluster(case.cluster)
    assert case.probes, f"{case.id}: no probe"
    for probe in case.probes:
        assert isinstance(probe.expected, bool), probe
        assert probe.protocol in ("TCP", "UDP", "SCTP"), probe
        assert probe.source in pods, probe
        assert not pods[probe.source].host_network, f"{probe}: clients are ordinary pods"
        assert probe.target in pods, probe
        assert probe.source != probe.target, f"{probe}: a pod to itself never meets a policy"
        served = {(p.port, p.protocol) for p in pods[probe.target].ports}
        assert (probe.port, probe.protocol) in served, f"{probe}: not served by the target"


def test_every_subtest_probes_after_its_own_steps() -> None:
    for case in CASES:
        own = case.steps[len(case.steps) - _own_step_count(case) :]
        assert any(isinstance(step, Probe) for step in own), case.id
        assert isinstance(case.steps[-1], Probe), f"{case.id}: ends with a change it never probes"


def test_sctp_probes_are_compiled_only_and_every_case_runs_in_the_lab() -> None:
    """The lab models hostNetwork pods (agent.lab.hostnet), so the node-peer cases run there
    too, on their own cluster and on as many nodes as it has centaurs."""
    for case in CASES:
        for probe in case.probes:
            assert probe.on_wire == (probe.protocol != "SCTP"), probe
        assert case.lab_skip is None, case.id
        if "NodePeers" in case.test:
            assert case.cluster == NODE_PEER_CLUSTER_MANIFEST, case.id
            assert case.min_nodes == NODE_PEER_MIN_NODES, case.id
        else:
            assert case.cluster == CLUSTER_MANIFEST, case.id
            assert case.min_nodes == 1, case.id
    sctp = sum(probe.protocol == "SCTP" for case in CASES for probe in case.probes)
    assert sctp > 0


def test_the_centaurs_need_a_node_each() -> None:
    """Both declare the same ports, which a hostNetwork pod holds on its node: one per node."""
    _namespaces, pods = _cluster(NODE_PEER_CLUSTER_MANIFEST)
    centaurs = [pod for pod in pods.values() if pod.host_network]
    assert len(centaurs) == NODE_PEER_MIN_NODES == 2
    assert len({frozenset((p.port, p.protocol) for p in pod.ports) for pod in centaurs}) == 1


def test_node_peer_policies_select_nodes_by_the_labels_every_node_has() -> None:
    selectors = [
        peer["nodes"]
        for case in CASES
        for obj in _case_objects(case)
        if obj["kind"] == CNP_KIND
        for rule in obj["spec"].get("egress", [])
        for peer in rule["to"]
        if "nodes" in peer
    ]
    assert selectors
    assert all(selector == {"matchLabels": dict(NODE_LABELS)} for selector in selectors)


# -- the replay of earlier subtests -----------------------------------------------------------


@pytest.mark.parametrize("test_name", list(SUBTESTS_AT_UPSTREAM_COMMIT))
def test_cases_replay_earlier_state_changes_without_their_probes(test_name: str) -> None:
    for api_version in CNP_API_VERSIONS:
        cases = [c for c in CASES if c.test == test_name and c.api_version == api_version]
        (test,) = [t for t in UPSTREAM_TESTS if t.name == test_name]
        script = test.script(api_version)
        assert [case.subtest for case in cases] == [sub.name for sub in script.subtests]
        changes: list[Step] = []
        for case, sub in zip(cases, script.subtests, strict=True):
            expected = (*script.setup, *changes, *sub.steps)
            assert [_key(step) for step in case.steps] == [_key(step) for step in expected]
            assert case.replayed == len(changes)
            changes += [step for step in sub.steps if not isinstance(step, Probe)]


# -- helpers ----------------------------------------------------------------------------------


def _render(step: Step) -> str:
    assert isinstance(step, Apply | Delete), step
    return step.render(FAKE_POD_IPS)


def _key(step: Step) -> object:
    return step if isinstance(step, Probe) else (type(step).__name__, _render(step))


def _own_step_count(case: Case) -> int:
    (test,) = [t for t in UPSTREAM_TESTS if t.name == case.test]
    script = test.script(case.api_version)
    (sub,) = [sub for sub in script.subtests if sub.name == case.subtest]
    return len(sub.steps)


@functools.cache
def _objects(text: str) -> tuple[dict[str, Any], ...]:
    """Objects as kubectl would read them (go-yaml: no YAML 1.1 surprises); do not modify."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "manifest.yaml"
        path.write_text(text)
        return tuple(manifest.obj for manifest in load_manifests([str(path)]))


def _case_objects(case: Case) -> Iterator[dict[str, Any]]:
    for step in case.steps:
        if not isinstance(step, Probe):
            yield from _objects(_render(step))


@functools.cache
def _cluster(text: str) -> tuple[dict[str, dict[str, str]], dict[str, Pod]]:
    """Namespaces (name -> labels) and pods (key -> record) of a cluster manifest."""
    namespaces: dict[str, dict[str, str]] = {}
    pods: dict[str, Pod] = {}
    for obj in _objects(text):
        if obj["kind"] == "Namespace":
            namespace = namespace_from_k8s(obj)
            namespaces[namespace.name] = dict(namespace.labels)
        elif obj["kind"] == "Pod":
            pod = pod_from_k8s(obj, strict=True)
            pods[pod.key] = pod
    return namespaces, pods


def _check_cnp(obj: Mapping[str, Any], where: str) -> None:
    """The CRD's schema and CEL rules (apis/v1alpha2), as far as the cases use the API."""
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, where
    assert set(obj["metadata"]) == {"name"}, f"{where}: cluster-scoped, no namespace written"
    spec = obj["spec"]
    assert set(spec) <= {"tier", "priority", "subject", "ingress", "egress"}, where
    assert spec["tier"] in {tier.value for tier in Tier}, where
    priority = spec["priority"]
    assert isinstance(priority, int) and not isinstance(priority, bool), where
    assert MIN_PRIORITY <= priority <= MAX_PRIORITY, where
    subject = spec["subject"]
    assert len(subject) == 1 and set(subject) <= {"namespaces", "pods"}, where
    _check_selectors(subject, where)
    for direction, peers_key, kinds in (
        ("ingress", "from", {"namespaces", "pods"}),
        ("egress", "to", {"namespaces", "pods", "nodes", "networks"}),
    ):
        rules = spec.get(direction, [])
        assert len(rules) <= MAX_RULES, where
        for index, rule in enumerate(rules):
            at = f"{where}: spec.{direction}[{index}]"
            assert set(rule) <= {"name", "action", peers_key, "protocols"}, at
            assert isinstance(rule["name"], str) and len(rule["name"]) <= MAX_RULE_NAME, at
            assert rule["action"] in {action.value for action in RuleAction}, at
            peers = rule[peers_key]
            assert 1 <= len(peers) <= MAX_RULES, at
            for peer in peers:
                assert len(peer) == 1 and set(peer) <= kinds, at
                if "networks" in peer:
                    assert 1 <= len(peer["networks"]) <= MAX_RULES, at
                    for cidr in peer["networks"]:
                        ipaddress.ip_network(cidr)  # strict: no host bits set
                else:
                    _check_selectors(peer, at)
            protocols = rule.get("protocols")
            if protocols is None:
                continue
            assert 1 <= len(protocols) <= MAX_RULES, at
            for entry in protocols:
                assert len(entry) == 1, at
                ((key, value),) = entry.items()
                if key == "destinationNamedPort":
                    assert isinstance(value, str) and value, at
                    # CEL: no named ports with peers that have none (networks, nodes).
                    assert all(set(peer) <= {"namespaces", "pods"} for peer in peers), at
                    continue
                assert key in {"tcp", "udp", "sctp"}, at
                destination = value["destinationPort"]
                assert len(destination) == 1, at
                if "number" in destination:
                    assert 1 <= destination["number"] <= 65535, at
                else:
                    start, end = destination["range"]["start"], destination["range"]["end"]
                    assert 1 <= start <= end <= 65535, at


def _check_selectors(value: Mapping[str, Any], where: str) -> None:
    """Every label selector under ``value`` has string keys and string values."""
    for key, item in value.items():
        if key == "matchLabels":
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in item.items()), where
        elif isinstance(item, Mapping):
            _check_selectors(item, where)
