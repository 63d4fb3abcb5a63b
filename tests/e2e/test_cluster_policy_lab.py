"""ClusterNetworkPolicy on real packets in the lab: the tier order, both apiVersions, both modes.

A small cluster (x/a, x/b, y/c) and a sequence a platform team would write: an Admin tier Deny
that closes namespace x to namespace y, a Pass that hands one pod's traffic to NetworkPolicy,
and a Baseline default-deny that a namespace's own NetworkPolicy may open. The full upstream
conformance suite runs through the compiler (test_cnp_cases_compiled.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from enforcement.firewall import MODES
from tests.e2e.labctl import COMMAND, REPO, LabDriver, lab_session
from tests.e2e.test_dataplane import pod, policy

CLUSTER = "\n---\n".join(
    [
        'apiVersion: v1\nkind: Namespace\nmetadata: {name: "x"}',
        'apiVersion: v1\nkind: Namespace\nmetadata: {name: "y"}',
        pod("a"),
        pod("b"),
        pod("c", namespace="y"),
    ]
)
VERSIONS = ("policy.networking.k8s.io/v1alpha2", "policy.networking.k8s.io/v1beta1")


def admin_deny_y_to_x(api_version: str, action: str = "Deny") -> str:
    return f"""
apiVersion: {api_version}
kind: ClusterNetworkPolicy
metadata: {{name: "x-closed-to-y"}}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {{matchLabels: {{kubernetes.io/metadata.name: "x"}}}}
  ingress:
  - name: "pass-b"
    action: Pass
    from:
    - pods:
        namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: "y"}}}}
        podSelector: {{}}
    protocols: [{{tcp: {{destinationPort: {{number: 81}}}}}}]
  - name: "from-y"
    action: {action}
    from:
    - namespaces: {{matchLabels: {{kubernetes.io/metadata.name: "y"}}}}
"""


def baseline_deny_all(api_version: str) -> str:
    return f"""
apiVersion: {api_version}
kind: ClusterNetworkPolicy
metadata: {{name: "default-deny"}}
spec:
  tier: Baseline
  priority: 100
  subject:
    namespaces: {{}}
  ingress:
  - name: "deny-all"
    action: Deny
    from:
    - namespaces: {{}}
"""


@pytest.fixture(params=[(mode, version) for mode in MODES for version in VERSIONS],
                ids=[f"{mode}-{version.rsplit('/', 1)[1]}" for mode in MODES
                     for version in VERSIONS])  # fmt: skip
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LabDriver, str]]:
    mode, version = request.param
    with lab_session("cnp", tmp_path, up_args=["--mode", mode]) as driver:
        yield driver, version


@pytest.mark.root
def test_tiers_on_real_packets(lab: tuple[LabDriver, str]) -> None:
    driver, version = lab
    driver.up(CLUSTER)
    assert driver.probe(80)["y/c"]["x/a"], "nothing applied yet: open"

    # Admin Deny: y cannot reach x, whatever NetworkPolicy says; x inside still works.
    driver.apply(admin_deny_y_to_x(version))
    matrix = driver.probe(80)
    assert not matrix["y/c"]["x/a"] and not matrix["y/c"]["x/b"], matrix
    assert matrix["x/a"]["x/b"] and matrix["x/a"]["y/c"], matrix

    # The same rule as Accept, and a Baseline default-deny: Admin Accept wins over Baseline,
    # everything else of x is closed by the Baseline tier.
    driver.apply(admin_deny_y_to_x(version, action="Accept"), baseline_deny_all(version))
    matrix = driver.probe(80)
    assert matrix["y/c"]["x/a"], "Admin Accept is decided before the Baseline Deny"
    assert not matrix["x/a"]["x/b"], "Baseline default-deny"

    # A namespace's NetworkPolicy opens what the Baseline tier closes.
    driver.apply(
        policy("b-from-a", "b", "  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]")
    )
    matrix = driver.probe(80)
    assert matrix["x/a"]["x/b"], "NetworkPolicy decides before the Baseline tier"
    assert not matrix["x/b"]["x/a"], "x/a has no NetworkPolicy: the Baseline Deny applies"

    # Pass (port 81) skips the Admin tier: x/b's NetworkPolicy decides (only a may enter).
    matrix = driver.probe(81)
    assert not matrix["y/c"]["x/b"], "passed to NetworkPolicy, which admits only x/a"
    assert not matrix["y/c"]["x/a"], "passed, no NetworkPolicy: the Baseline Deny"

    # Deleting the cluster policies by name restores what NetworkPolicy alone says.
    driver.delete(admin_deny_y_to_x(version), baseline_deny_all(version))
    matrix = driver.probe(80)
    assert matrix["y/c"]["x/a"] and matrix["x/b"]["x/a"], matrix
    assert not matrix["y/c"]["x/b"], "x/b stays isolated by its NetworkPolicy"


def competing_admin_policy(name: str, action: str) -> str:
    return f"""
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {{name: "{name}"}}
spec:
  tier: Admin
  priority: 50
  subject:
    namespaces: {{matchLabels: {{kubernetes.io/metadata.name: "x"}}}}
  ingress:
  - name: "from-y"
    action: {action}
    from:
    - namespaces: {{matchLabels: {{kubernetes.io/metadata.name: "y"}}}}
"""


@pytest.mark.root
def test_a_priority_tie_is_decided_by_name_and_reported(tmp_path: Path) -> None:
    """The API leaves the order of equal priorities undefined; netpol-agent's is by name, and
    both the lab and the agent say so."""
    with lab_session("cnptie", tmp_path) as driver:
        driver.up(CLUSTER)
        manifest = tmp_path / "tie.yaml"
        manifest.write_text(
            competing_admin_policy("b-accept", "Accept")
            + "---\n"
            + competing_admin_policy("a-deny", "Deny")
        )
        applied = subprocess.run(
            [*COMMAND, "lab", "apply", "--lab", driver.name, "-f", str(manifest)],
            capture_output=True, text=True, cwd=REPO, check=True,
        )  # fmt: skip
        notes = applied.stderr  # notes go to standard error, the result to standard output
        assert (
            "warning: ClusterNetworkPolicies a-deny, b-accept share priority 50 in the Admin"
            in notes
        )
        assert not driver.probe(80)["y/c"]["x/a"], "a-deny comes first by name"

        driver.apply(competing_admin_policy("0-accept", "Accept"))
        assert driver.probe(80)["y/c"]["x/a"], "0-accept now comes first by name"
        assert "0-accept, a-deny, b-accept share priority 50" in driver.logs()
