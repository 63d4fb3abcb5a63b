"""Tests for agent/kinds/__init__.py and base.py: the kind registry and the refused kinds."""

from __future__ import annotations

from typing import Any

import pytest

from agent.convert import (
    fail_closed_policy,
    namespace_from_k8s,
    pod_from_k8s,
    policy_from_k8s,
)
from agent.kinds import (
    CLUSTER_NETWORK_POLICY,
    KINDS,
    NAMESPACE,
    NETWORK_POLICY,
    NODE,
    POD,
    REFUSED_POLICY_KINDS,
    kind_spec,
    kinds_named,
    refusal,
)
from agent.kinds.clusterpolicy import cluster_policy_from_k8s, fail_closed_cluster_policy
from enforcement.model import UnreadablePod

SUPPORTED = (
    "netpol-agent enforces networking.k8s.io/v1 NetworkPolicy and policy.networking.k8s.io "
    "ClusterNetworkPolicy; "
)


def test_each_kind_once() -> None:
    keys = [(spec.group, spec.kind) for spec in KINDS]
    assert len(keys) == len(set(keys))
    assert [spec.kind for spec in KINDS] == [
        "Namespace",
        "Pod",
        "NetworkPolicy",
        "ClusterNetworkPolicy",
        "Node",
    ]


SPEC_CASES = [
    pytest.param(NAMESPACE, ("v1",), "/api/v1/namespaces", False, False, id="Namespace"),
    pytest.param(POD, ("v1",), "/api/v1/pods", True, False, id="Pod"),
    pytest.param(
        NETWORK_POLICY,
        ("networking.k8s.io/v1",),
        "/apis/networking.k8s.io/v1/networkpolicies",
        True,
        False,
        id="NetworkPolicy",
    ),
    pytest.param(
        CLUSTER_NETWORK_POLICY,
        ("policy.networking.k8s.io/v1beta1", "policy.networking.k8s.io/v1alpha2"),
        "/apis/policy.networking.k8s.io/v1beta1/clusternetworkpolicies",
        False,
        True,
        id="ClusterNetworkPolicy-prefers-v1beta1",
    ),
    pytest.param(NODE, ("v1",), "/api/v1/nodes", False, False, id="Node"),
]


@pytest.mark.parametrize(("spec", "api_versions", "path", "namespaced", "custom"), SPEC_CASES)
def test_where_the_api_serves_each_kind(
    spec: Any, api_versions: tuple[str, ...], path: str, namespaced: bool, custom: bool
) -> None:
    assert spec.api_versions == api_versions
    assert spec.list_path(spec.versions[0]) == path
    assert (spec.namespaced, spec.custom) == (namespaced, custom)


def test_the_converters_are_the_kinds_own() -> None:
    assert POD.convert is pod_from_k8s
    assert NETWORK_POLICY.convert is policy_from_k8s
    assert CLUSTER_NETWORK_POLICY.convert is cluster_policy_from_k8s
    # The policy kinds' fail_closed also reports a malformed staged annotation; otherwise it
    # is the kind's own.
    cnp = {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "x"},
        "spec": {"tier": "Admin", "priority": 0, "subject": {"namespaces": {}}},
    }
    assert CLUSTER_NETWORK_POLICY.fail_closed(cnp) == fail_closed_cluster_policy(cnp)
    namespace = {"metadata": {"name": "prod"}}
    assert NAMESPACE.convert(namespace, strict=True) == namespace_from_k8s(namespace)


LOOKUP_CASES = [
    pytest.param("v1", "Pod", POD, id="pod"),
    pytest.param("networking.k8s.io/v1", "NetworkPolicy", NETWORK_POLICY, id="np"),
    pytest.param(
        "policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy", CLUSTER_NETWORK_POLICY, id="a2"
    ),
    pytest.param(
        "policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy", CLUSTER_NETWORK_POLICY, id="b1"
    ),
    pytest.param("policy.networking.k8s.io/v1", "ClusterNetworkPolicy", None, id="unknown-version"),
    pytest.param("crd.antrea.io/v1beta1", "ClusterNetworkPolicy", None, id="other-group"),
    pytest.param("apps/v1", "Deployment", None, id="not-read"),
]


@pytest.mark.parametrize(("api_version", "kind", "expected"), LOOKUP_CASES)
def test_kind_spec(api_version: str, kind: str, expected: Any) -> None:
    assert kind_spec(api_version, kind) is expected


def test_kinds_named() -> None:
    assert kinds_named("ClusterNetworkPolicy") == (CLUSTER_NETWORK_POLICY,)
    assert kinds_named("Deployment") == ()


REFUSAL_CASES = [
    pytest.param(
        "policy.networking.k8s.io/v1alpha1",
        "AdminNetworkPolicy",
        "(its successor, ClusterNetworkPolicy with tier Admin, is enforced)",
        id="AdminNetworkPolicy",
    ),
    pytest.param(
        "policy.networking.k8s.io/v1alpha1",
        "BaselineAdminNetworkPolicy",
        "(its successor, ClusterNetworkPolicy with tier Baseline, is enforced)",
        id="BaselineAdminNetworkPolicy",
    ),
    pytest.param("cilium.io/v2", "CiliumNetworkPolicy", "", id="CiliumNetworkPolicy"),
    pytest.param("cilium.io/v2", "CiliumClusterwideNetworkPolicy", "", id="CCNP"),
    pytest.param("projectcalico.org/v3", "NetworkPolicy", "", id="calico-v3-NetworkPolicy"),
    pytest.param("projectcalico.org/v3", "GlobalNetworkPolicy", "", id="calico-v3-global"),
    pytest.param("projectcalico.org/v3", "StagedNetworkPolicy", "", id="calico-v3-staged"),
    pytest.param(
        "projectcalico.org/v3", "StagedGlobalNetworkPolicy", "", id="calico-v3-staged-global"
    ),
    pytest.param(
        "projectcalico.org/v3", "StagedKubernetesNetworkPolicy", "", id="calico-v3-staged-k8s"
    ),
    pytest.param("crd.projectcalico.org/v1", "GlobalNetworkPolicy", "", id="calico-crd-global"),
    pytest.param("crd.projectcalico.org/v1", "NetworkPolicy", "", id="calico-crd-np"),
    pytest.param("crd.antrea.io/v1beta1", "ClusterNetworkPolicy", "", id="antrea-acnp"),
    pytest.param("crd.antrea.io/v1alpha1", "NetworkPolicy", "", id="antrea-anp-old-version"),
]


@pytest.mark.parametrize(("api_version", "kind", "note"), REFUSAL_CASES)
def test_refused_policy_kinds(api_version: str, kind: str, note: str) -> None:
    message = refusal(api_version, kind)
    expected = f"{SUPPORTED}{api_version} {kind} is not enforced"
    assert message == (f"{expected} {note}" if note else expected)
    assert kind_spec(api_version, kind) is None


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy"),
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy"),
        ("policy.networking.k8s.io/v1alpha2", "AdminNetworkPolicy"),
        ("v1", "Pod"),
    ],
)
def test_enforced_and_unrelated_kinds_are_not_refused(api_version: str, kind: str) -> None:
    assert refusal(api_version, kind) is None


def test_refused_kinds_are_listed_once_with_a_plural() -> None:
    keys = [(refused.group, refused.kind) for refused in REFUSED_POLICY_KINDS]
    assert len(keys) == len(set(keys))
    assert all(refused.plural == refused.plural.lower() for refused in REFUSED_POLICY_KINDS)


# -- fail-closed through the registry ------------------------------------------------------


def test_a_valid_object_is_its_record_for_every_kind() -> None:
    objects = {
        "Namespace": {"metadata": {"name": "prod"}},
        "Pod": {"metadata": {"name": "web", "namespace": "prod"}},
        "NetworkPolicy": {"metadata": {"name": "np", "namespace": "prod"}},
        "ClusterNetworkPolicy": {
            "apiVersion": "policy.networking.k8s.io/v1beta1",
            "metadata": {"name": "cnp"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}},
        },
        "Node": {"metadata": {"name": "node-1"}},
    }
    for spec in KINDS:
        obj = objects[spec.kind]
        result = spec.fail_closed(obj)
        assert result.error == ""
        assert result.record == spec.convert(obj, strict=False)


def test_a_bad_pod_is_an_unknown_endpoint() -> None:
    obj = {
        "metadata": {"name": "web", "namespace": "prod", "labels": {"a": 1}},
        "status": {"podIP": "10.0.0.1"},
    }
    result = POD.fail_closed(obj)
    assert isinstance(result.record, UnreadablePod)
    assert result.error == (
        "Pod prod/web: metadata.labels[a]: must be a string, got integer 1 (quote it in YAML); "
        "enforced fail-closed as an unknown endpoint (addresses: 10.0.0.1; all their traffic "
        "denied on its node, matched by no selector)"
    )


def test_a_bad_network_policy_isolates_and_allows_nothing() -> None:
    obj = {"metadata": {"name": "np", "namespace": "prod"}, "spec": {"ingress": [{"from": [{}]}]}}
    result = NETWORK_POLICY.fail_closed(obj)
    assert result.record == fail_closed_policy(obj)
    assert result.error.endswith(
        "; enforced fail-closed (isolates what it selects, allows nothing)"
    )


@pytest.mark.parametrize(
    ("spec", "obj", "what"),
    [
        pytest.param(NAMESPACE, {"metadata": {}}, "left out", id="namespace"),
        pytest.param(
            NODE,
            {"metadata": {"name": "n", "labels": {"a": 1}}},
            "left out (its addresses match no nodes peer)",
            id="node",
        ),
        pytest.param(NAMESPACE, 42, "left out", id="not-an-object"),
    ],
)
def test_left_out(spec: Any, obj: Any, what: str) -> None:
    result = spec.fail_closed(obj)
    assert result.record is None
    assert result.error.endswith(f"; {what}")
