"""Staged policies on real packets in the lab: reported, never enforced, until unstaged.

A small cluster (x/a, x/b, y/c) with a NetworkPolicy default-deny of namespace x and an Admin
ClusterNetworkPolicy closing x to y, both annotated ``netpol-agent.io/staged: "true"``: every
probed connection stays open. Applying a policy again without the annotation (or with
``"false"``) makes it bite, and only it; staging it again lifts it. ``lab apply`` refuses a
malformed annotation and changes nothing. Both queue modes (fast path and per packet). What the
staged policies would deny is compiled beside the enforced tables (tests/enforcement/
test_staged*.py); here the wire must show that they deny nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcement.firewall import MODES
from enforcement.model import STAGED_ANNOTATION
from tests.e2e.labctl import LabCommandError, lab_session
from tests.e2e.test_dataplane import pod

CLUSTER = "\n---\n".join(
    [
        'apiVersion: v1\nkind: Namespace\nmetadata: {name: "x"}',
        'apiVersion: v1\nkind: Namespace\nmetadata: {name: "y"}',
        pod("a"),
        pod("b"),
        pod("c", namespace="y"),
    ]
)
PAIRS = [(src, dst) for src in ("x/a", "x/b", "y/c") for dst in ("x/a", "x/b", "y/c") if src != dst]


def annotations(staged: str | None) -> str:
    if staged is None:
        return ""
    return f"\n  annotations: {{{STAGED_ANNOTATION}: {staged}}}"


def default_deny_x(staged: str | None) -> str:
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: x{annotations(staged)}
spec:
  podSelector: {{}}
  policyTypes: [Ingress]
"""


def x_closed_to_y(staged: str | None) -> str:
    return f"""
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata:
  name: x-closed-to-y{annotations(staged)}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {{matchLabels: {{kubernetes.io/metadata.name: "x"}}}}
  ingress:
  - name: from-y
    action: Deny
    from:
    - namespaces: {{matchLabels: {{kubernetes.io/metadata.name: "y"}}}}
"""


def open_pairs(matrix: dict[str, dict[str, bool]]) -> set[tuple[str, str]]:
    return {(src, dst) for src, dst in PAIRS if matrix[src][dst]}


@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_staged_policies_change_no_connection_until_unstaged(tmp_path: Path, mode: str) -> None:
    with lab_session("staged", tmp_path, up_args=["--mode", mode]) as lab:
        lab.up(CLUSTER, default_deny_x('"true"'), x_closed_to_y('"true"'))
        assert open_pairs(lab.probe(80)) == set(PAIRS), "staged: nothing denied"

        # The NetworkPolicy unstaged: x takes nothing in; y itself stays open.
        lab.apply(default_deny_x(None))
        assert open_pairs(lab.probe(80)) == {("x/a", "y/c"), ("x/b", "y/c")}

        # Staged again, and the ClusterNetworkPolicy unstaged ("false"): only y -> x closes.
        lab.apply(default_deny_x('"true"'), x_closed_to_y('"false"'))
        assert open_pairs(lab.probe(80)) == set(PAIRS) - {("y/c", "x/a"), ("y/c", "x/b")}

        # A malformed annotation is refused by lab apply, and nothing changes.
        with pytest.raises(LabCommandError) as refused:
            lab.apply(x_closed_to_y('"yes"'))
        assert f'metadata.annotations[{STAGED_ANNOTATION}]: must be "true"' in str(refused.value)
        assert "refused, nothing changed" in str(refused.value)

        # Staged again: everything open as before.
        lab.apply(x_closed_to_y('"true"'))
        assert open_pairs(lab.probe(80)) == set(PAIRS)
