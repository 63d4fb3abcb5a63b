"""enforcement/staged.py and the staged tables of enforcement/compiler.py, row by row.

Each row is a small cluster on node-1, one flow, and what the enforced tables decide, what the
staged tables would decide, and which staged refs ``staged_verdict`` names for the change.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import pytest

from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.compiler import compile_tables
from enforcement.model import IPPROTO_TCP, ClusterSnapshot, NetworkPolicy
from enforcement.staged import staged_verdict
from enforcement.verdict import Reason, RuleRef
from tests.builders import (
    ClusterObject,
    cluster,
    cpeer,
    crule,
    ip,
    make_cluster_policy,
    make_namespace,
    make_pod,
    make_policy,
    peer,
    rule,
    selector,
    subject,
)

WEB = make_pod("prod", "web", "10.244.1.2", labels={"app": "web"})
CLIENT = make_pod("dev", "client", "10.244.1.4", labels={"app": "client"})
BASE = (make_namespace("prod"), make_namespace("dev"), WEB, CLIENT)
PROD = subject(namespaces=selector(labels={"kubernetes.io/metadata.name": "prod"}))
FROM_DEV = cpeer(namespaces=selector(labels={"kubernetes.io/metadata.name": "dev"}))

DENY_ALL = make_policy("prod", "deny-all")
ALLOW_DEV = make_policy("prod", "allow-dev", ingress=[rule(peer(namespaces=selector()))])
GUARD = make_cluster_policy(
    "guard", applies_to=PROD, ingress=[crule("Deny", FROM_DEV, name="no-dev")]
)
ACCEPT_DEV = make_cluster_policy(
    "accept-dev", priority=20, applies_to=PROD, ingress=[crule("Accept", FROM_DEV)]
)
PASS_DEV = make_cluster_policy(
    "pass-dev", priority=5, applies_to=PROD, ingress=[crule("Pass", FROM_DEV, name="hand-on")]
)


P = TypeVar("P", NetworkPolicy, ClusterNetworkPolicy)


def staged(policy: P) -> P:
    return replace(policy, staged=True)


def np_isolation(name: str) -> RuleRef:
    return RuleRef("NetworkPolicy", "prod", name, "NetworkPolicy", None, "", "Isolate", True)


CASES = [
    pytest.param(
        (staged(DENY_ALL),),
        Reason.NOT_ISOLATED,
        Reason.DENIED_INGRESS,
        (np_isolation("deny-all"),),
        id="staged-default-deny-would-deny",
    ),
    pytest.param(
        (staged(GUARD),),
        Reason.NOT_ISOLATED,
        Reason.DENIED_INGRESS,
        (RuleRef("ClusterNetworkPolicy", None, "guard", "Admin", 0, "no-dev", "Deny", True),),
        id="staged-cluster-deny-would-deny",
    ),
    pytest.param(
        (DENY_ALL, staged(ALLOW_DEV)),
        Reason.DENIED_INGRESS,
        Reason.ALLOWED,
        (RuleRef("NetworkPolicy", "prod", "allow-dev", "NetworkPolicy", 0, "", "Allow", True),),
        id="staged-allow-would-allow",
    ),
    pytest.param(
        (DENY_ALL, staged(GUARD)),
        Reason.DENIED_INGRESS,
        Reason.DENIED_INGRESS,
        (),
        id="already-denied-no-change",
    ),
    pytest.param(
        (ALLOW_DEV, staged(DENY_ALL)),
        Reason.ALLOWED,
        Reason.ALLOWED,
        (),
        id="staged-isolation-under-an-enforced-allow-no-change",
    ),
    pytest.param(
        (DENY_ALL, ACCEPT_DEV, staged(PASS_DEV)),
        Reason.ALLOWED,
        Reason.DENIED_INGRESS,
        (),  # the staged Pass decides nothing: the enforced deny-all does (module docstring)
        id="staged-pass-changes-without-deciding",
    ),
]


@pytest.mark.parametrize(("policies", "enforced", "would", "changed_by"), CASES)
def test_what_staged_policies_would_change(
    policies: tuple[ClusterObject, ...],
    enforced: Reason,
    would: Reason,
    changed_by: tuple[RuleRef, ...],
) -> None:
    tables = compile_tables(cluster(*BASE, *policies), "node-1", 7)
    assert tables.staged is not None and tables.staged.generation == 7
    flow = (ip("10.244.1.4"), ip("10.244.1.2"), IPPROTO_TCP, 80)
    now, then = tables.outcome(*flow), tables.staged.outcome(*flow)
    assert (now.reason, then.reason) == (enforced, would)
    assert tables.evaluate(*flow) is enforced
    report = staged_verdict(now, then)
    assert report.verdict is then.verdict
    assert report.changed == (now.verdict.action is not then.verdict.action)
    assert report.changed_by == changed_by
    assert report.would_deny == (now.verdict.accepted and not then.verdict.accepted)


def test_a_staged_default_deny_isolates_nobody() -> None:
    """Nothing staged is queued: the firewall never sees a pod only staged policies select."""
    tables = compile_tables(cluster(*BASE, staged(DENY_ALL), staged(GUARD)), "node-1")
    assert tables.isolated_local_addresses() == frozenset()
    assert tables.staged is not None
    assert tables.staged.isolated_local_addresses() == {ip("10.244.1.2")}
    web = tables.endpoint(ip("10.244.1.2"))
    assert web is not None and not (web.ingress_isolated or web.tiered)


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param(ClusterSnapshot(), id="empty"),
        pytest.param(cluster(*BASE, DENY_ALL, GUARD), id="nothing-staged"),
    ],
)
def test_without_staged_policies_there_are_no_staged_tables(snapshot: ClusterSnapshot) -> None:
    assert compile_tables(snapshot, "node-1").staged is None


def test_refs_say_whether_their_policy_is_staged() -> None:
    ref = np_isolation("deny-all")
    assert ref.as_dict() == {
        "kind": "NetworkPolicy",
        "namespace": "prod",
        "name": "deny-all",
        "tier": "NetworkPolicy",
        "rule": None,
        "rule_name": "",
        "action": "Isolate",
        "staged": True,
    }
    assert replace(ref, staged=False).as_dict()["staged"] is False
