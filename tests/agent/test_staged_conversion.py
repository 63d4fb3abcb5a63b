"""The staged annotation at the edge (agent/convert.py ``staged_annotation``, both policy kinds).

Strict (files people write: ``lab apply``, manifest validation): ``"true"`` stages, ``"false"``
or no annotation enforces, anything else (and a key that looks like a slip for it) is an error
naming the annotation and the values it takes. Lenient (objects from the API server, through
``agent.kinds``' ``fail_closed`` and the state cache): a malformed annotation leaves the policy
*enforced* and is reported; an annotation change is a change of the record.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agent.convert import ConversionError, policy_from_k8s
from agent.kinds import CLUSTER_NETWORK_POLICY, NETWORK_POLICY
from agent.kinds.clusterpolicy import cluster_policy_from_k8s
from agent.manifests import ManifestError, load_manifests
from agent.state import ClusterState
from enforcement.model import STAGED_ANNOTATION

VALUES = '"true" (staged: evaluated and reported, not enforced) or "false" (enforced)'


def network_policy(annotations: Any = None, spec: Any = None) -> dict[str, Any]:
    """A default-deny NetworkPolicy of namespace prod, with these annotations."""
    metadata: dict[str, Any] = {"namespace": "prod", "name": "deny-all"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]} if spec is None else spec,
    }


def cluster_policy(annotations: Any = None, ingress: Any = None) -> dict[str, Any]:
    """An Admin ClusterNetworkPolicy denying every pod's ingress, with these annotations."""
    metadata: dict[str, Any] = {"name": "guard"}
    if annotations is not None:
        metadata["annotations"] = annotations
    rules = [{"action": "Deny", "from": [{"namespaces": {}}]}] if ingress is None else ingress
    return {
        "apiVersion": "policy.networking.k8s.io/v1beta1",
        "kind": "ClusterNetworkPolicy",
        "metadata": metadata,
        "spec": {
            "tier": "Admin",
            "priority": 10,
            "subject": {"namespaces": {}},
            "ingress": rules,
        },
    }


KINDS = [
    pytest.param(network_policy, policy_from_k8s, "NetworkPolicy prod/deny-all", id="np"),
    pytest.param(cluster_policy, cluster_policy_from_k8s, "ClusterNetworkPolicy guard", id="cnp"),
]

READ_CASES = [
    pytest.param({STAGED_ANNOTATION: "true"}, True, id="true"),
    pytest.param({STAGED_ANNOTATION: "false"}, False, id="false"),
    pytest.param(None, False, id="no-annotations"),
    pytest.param({}, False, id="empty-annotations"),
    pytest.param({"team": "web", "example.com/staged": "true"}, False, id="other-keys"),
]


@pytest.mark.parametrize(("make", "convert", "label"), KINDS)
@pytest.mark.parametrize(("annotations", "staged"), READ_CASES)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_the_annotation_stages_a_policy(
    make: Any, convert: Any, label: str, annotations: Any, staged: bool, strict: bool
) -> None:
    assert convert(make(annotations), strict=strict).staged is staged


BAD_CASES = [
    pytest.param(
        {STAGED_ANNOTATION: "yes"},
        f'metadata.annotations[{STAGED_ANNOTATION}]: must be {VALUES}, got string "yes"',
        id="yes",
    ),
    pytest.param(
        {STAGED_ANNOTATION: "True"},
        f'metadata.annotations[{STAGED_ANNOTATION}]: must be {VALUES}, got string "True"',
        id="capitalised",
    ),
    pytest.param(
        {STAGED_ANNOTATION: ""},
        f'metadata.annotations[{STAGED_ANNOTATION}]: must be {VALUES}, got string ""',
        id="empty",
    ),
    pytest.param(
        {STAGED_ANNOTATION: True},
        f'metadata.annotations[{STAGED_ANNOTATION}]: must be the string "true" or "false", got '
        'boolean true (annotations are strings: quote it, "true")',
        id="unquoted-yaml-boolean",
    ),
    pytest.param(
        ["staged"],
        "metadata.annotations: must be an object, got list",
        id="annotations-not-a-map",
    ),
    pytest.param(
        {"netpol-agent.io/stage": "true"},
        f"metadata.annotations[netpol-agent.io/stage]: unknown netpol-agent annotation (did you "
        f'mean "{STAGED_ANNOTATION}"? "true" stages the policy: evaluated and reported, not '
        "enforced)",
        id="typo-in-the-name",
    ),
    pytest.param(
        {"netpol-agent/staged": "true"},
        "metadata.annotations[netpol-agent/staged]: unknown netpol-agent annotation (did you "
        f'mean "{STAGED_ANNOTATION}"? "true" stages the policy: evaluated and reported, not '
        "enforced)",
        id="domain-slip",
    ),
    pytest.param(
        {"netpol-agent.io/dry-run": "true", STAGED_ANNOTATION: "true"},
        "metadata.annotations[netpol-agent.io/dry-run]: unknown netpol-agent annotation (did "
        f'you mean "{STAGED_ANNOTATION}"? "true" stages the policy: evaluated and reported, not '
        "enforced)",
        id="another-key-of-ours",
    ),
]


@pytest.mark.parametrize(("make", "convert", "label"), KINDS)
@pytest.mark.parametrize(("annotations", "message"), BAD_CASES)
def test_strict_mode_refuses_a_malformed_annotation(
    make: Any, convert: Any, label: str, annotations: Any, message: str
) -> None:
    with pytest.raises(ConversionError) as caught:
        convert(make(annotations), strict=True)
    assert str(caught.value) == f"{label}: {message}"


@pytest.mark.parametrize(("make", "convert", "label"), KINDS)
@pytest.mark.parametrize(("annotations", "message"), BAD_CASES)
def test_lenient_mode_enforces_a_policy_whose_annotation_is_malformed(
    make: Any, convert: Any, label: str, annotations: Any, message: str
) -> None:
    """Fail-closed: never lift a policy because of its annotation; report the problem."""
    spec = NETWORK_POLICY if make is network_policy else CLUSTER_NETWORK_POLICY
    result = spec.fail_closed(make(annotations))
    assert result.record == convert(make(None), strict=True)
    assert result.record is not None and not result.record.staged
    assert result.error == f"{label}: {message}; enforced, not staged"


def test_manifest_validation_names_the_file_and_the_annotation(tmp_path: Path) -> None:
    path = tmp_path / "deny.yaml"
    path.write_text(
        "apiVersion: networking.k8s.io/v1\n"
        "kind: NetworkPolicy\n"
        "metadata:\n"
        "  name: deny-all\n"
        "  namespace: prod\n"
        "  annotations:\n"
        f"    {STAGED_ANNOTATION}: true\n"  # unquoted: a YAML boolean
        "spec:\n"
        "  podSelector: {}\n"
    )
    with pytest.raises(ManifestError) as caught:
        load_manifests([str(path)])
    text = str(caught.value)
    assert str(path) in text
    assert f"metadata.annotations[{STAGED_ANNOTATION}]" in text
    assert 'quote it, "true"' in text
    path.write_text(path.read_text().replace(": true\n", ': "true"\n'))
    [manifest] = load_manifests([str(path)])
    assert policy_from_k8s(manifest.obj, strict=True).staged


def test_a_stand_in_for_a_staged_policy_is_staged_too() -> None:
    """A staged policy that cannot be read: its author asked for it not to be enforced, so its
    fail-closed stand-in is only evaluated and reported as well, and the report says so."""
    broken_np = network_policy({STAGED_ANNOTATION: "true"}, {"podSelector": {}, "ingress": 7})
    result = NETWORK_POLICY.fail_closed(broken_np)
    assert result.record is not None and result.record.staged
    assert "enforced fail-closed" in result.error
    assert result.error.endswith("; staged, so only evaluated and reported, not enforced")
    broken_cnp = cluster_policy({STAGED_ANNOTATION: "true"}, [{"action": "Allow"}])
    result_cnp = CLUSTER_NETWORK_POLICY.fail_closed(broken_cnp)
    assert result_cnp.record is not None and result_cnp.record.staged
    assert result_cnp.error.endswith("; staged, so only evaluated and reported, not enforced")
    # A malformed annotation on a broken policy: the stand-in is enforced, both reported.
    both = network_policy({STAGED_ANNOTATION: "yes"}, {"podSelector": {}, "ingress": 7})
    result = NETWORK_POLICY.fail_closed(both)
    assert result.record is not None and not result.record.staged
    assert "enforced fail-closed" in result.error
    assert result.error.endswith('got string "yes"; enforced, not staged')


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        pytest.param("NetworkPolicy", network_policy, id="np"),
        pytest.param("ClusterNetworkPolicy", cluster_policy, id="cnp"),
    ],
)
def test_an_annotation_change_is_a_change_of_the_state(kind: str, make: Any) -> None:
    """What the Kubernetes source hands in on a watch event: staging, unstaging or breaking
    the annotation changes the record (or its error), so the runner recompiles."""
    state = ClusterState()
    state.replace(kind, [make(None)])

    def staged() -> bool:
        snapshot = state.view().snapshot
        [policy] = snapshot.policies if kind == "NetworkPolicy" else snapshot.cluster_policies
        return policy.staged

    assert not staged()
    revision = state.revision
    state.upsert(kind, make({STAGED_ANNOTATION: "true"}))
    assert (state.revision, staged()) == (revision + 1, True)
    same = copy.deepcopy(make({STAGED_ANNOTATION: "true"}))
    same["metadata"]["resourceVersion"] = "42"  # the record as it was: no change
    state.upsert(kind, same)
    assert state.revision == revision + 1
    state.upsert(kind, make({STAGED_ANNOTATION: "maybe"}))
    assert (state.revision, staged()) == (revision + 2, False)
    [error] = state.errors()
    assert f"metadata.annotations[{STAGED_ANNOTATION}]" in error.message
    state.upsert(kind, make({STAGED_ANNOTATION: "true"}))
    assert (state.revision, staged(), state.errors()) == (revision + 3, True, [])
    state.upsert(kind, make(None))
    assert (state.revision, staged()) == (revision + 4, False)
