"""Kubernetes mode end to end with ClusterNetworkPolicy: the CRD served, absent, removed, late.

A real agent (``netpol-agent run --kubeconfig``) in a lab node, the test's API server holding
the cluster (see test_kubernetes_mode.py for the set-up), and real packets between x/a, x/b, x/c
and y/c2. What the source does is unit-tested against the same server
(tests/agent/sources/test_kubernetes.py); here the whole agent must show it on the wire: the tier
order, a CRD that comes and goes, a malformed object read fail-closed, and the readiness gate.
Each test serves the CRD at one of the versions the issue names (v1beta1 only, v1alpha2 only,
both: v1beta1 is read), so that all three are exercised without a lab per version and test.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lab.lab import Lab
from agent.lab.netns import entered
from tests.agent.sources.fake_apiserver import CRD_KIND, FakeApiServer, Kind
from tests.e2e.labctl import LabDriver, lab_session
from tests.e2e.test_dataplane import CLUSTER, pod
from tests.e2e.test_kubernetes_mode import (
    IN_FORCE_WITHIN,
    RunningAgent,
    agent_on_node_1,
    serve_lab_objects,
)

pytestmark = pytest.mark.root

CNP = CRD_KIND
DISCOVERY_INTERVAL = 0.2
"""The agent's ``--discovery-interval``: how soon a CRD installed while it runs is found."""
OTHER_KINDS: tuple[Kind, ...] = ("Namespace", "Pod", "NetworkPolicy", "Node")
PODS = ("x/a", "x/b", "x/c", "y/c2")
Matrix = dict[str, dict[str, bool]]

# -- objects as the API server stores them ----------------------------------------------------


def namespace_named(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def pod_labelled(name: str) -> dict[str, Any]:
    return {"matchLabels": {"pod": name}}


def x_pod(name: str) -> dict[str, Any]:
    """A subject: the pod of namespace x labelled pod=``name``."""
    return {"pods": {"namespaceSelector": namespace_named("x"), "podSelector": pod_labelled(name)}}


def cluster_policy(
    name: str, tier: str, priority: int, subject: dict[str, Any], **rules: list[dict[str, Any]]
) -> dict[str, Any]:
    """A ClusterNetworkPolicy (the server gives it its apiVersion: the version asked for)."""
    spec = {"tier": tier, "priority": priority, "subject": subject, **rules}
    return {"metadata": {"name": name}, "spec": spec}


def deny_y_into_x(action: str = "Deny") -> dict[str, Any]:
    """Admin tier: every pod of x refuses what comes from namespace y (``action``)."""
    from_y = {"name": "from-y", "action": action, "from": [{"namespaces": namespace_named("y")}]}
    return cluster_policy(
        "deny-y", "Admin", 20, {"namespaces": namespace_named("x")}, ingress=[from_y]
    )


PASS_Y_TO_B = cluster_policy(
    "pass-y-to-b",
    "Admin",
    10,
    x_pod("b"),
    ingress=[{"name": "to-b", "action": "Pass", "from": [{"namespaces": namespace_named("y")}]}],
)
"""Before ``deny-y`` (priority 10 < 20): what y sends to x/b is NetworkPolicy's to decide."""

BASELINE_DENY_X = cluster_policy(
    "default-deny",
    "Baseline",
    100,
    {"namespaces": namespace_named("x")},
    ingress=[{"name": "all", "action": "Deny", "from": [{"namespaces": {}}]}],
)


def b_admits(*peers: dict[str, Any]) -> dict[str, Any]:
    """x/b's NetworkPolicy: it admits only ``peers``."""
    return {
        "metadata": {"name": "b-ingress", "namespace": "x"},
        "spec": {"podSelector": pod_labelled("b"), "ingress": [{"from": list(peers)}]},
    }


FROM_Y = {"namespaceSelector": namespace_named("y")}

# -- the node, the server, the agent ----------------------------------------------------------


@contextlib.contextmanager
def kubernetes_node(
    tmp_path: Path,
    crd_versions: tuple[str, ...],
    *objects: tuple[Kind, dict[str, Any]],
    wait_ready: bool = True,
    health_port: int = 0,
    before_start: Callable[[FakeApiServer], None] = lambda server: None,
) -> Iterator[tuple[LabDriver, FakeApiServer, RunningAgent]]:
    """x/a, x/b, x/c, y/c2 on one lab node; the API server serves them, the ClusterNetworkPolicy
    CRD at ``crd_versions`` (the first is the server's preferred one) and ``objects``."""
    y = 'apiVersion: v1\nkind: Namespace\nmetadata: {name: "y"}'
    with lab_session("k8scnp", tmp_path) as lab:
        lab.up(CLUSTER, y, pod("c2", "y"), extra=["--no-agent"])
        server = FakeApiServer()
        server.install_crd(*crd_versions)
        serve_lab_objects(lab, server)
        for kind, obj in objects:
            server.create(kind, obj)
        before_start(server)
        flags = ("--discovery-interval", str(DISCOVERY_INTERVAL))
        with agent_on_node_1(
            tmp_path, lab, server, *flags, health_port=health_port, wait_ready=wait_ready
        ) as agent:
            yield lab, server, agent


def in_force(
    agent: RunningAgent,
    change: Callable[[], object],
    condition: Callable[[dict[str, Any]], bool] = lambda status: True,
    within: float = IN_FORCE_WITHIN,
) -> None:
    """Make ``change`` on the API server; the agent must publish tables with it (a new
    generation whose status satisfies ``condition``) within ``within`` seconds."""
    generation = agent.status()["generation"]
    change()
    took = agent.wait(lambda s: s["generation"] > generation and condition(s), timeout=10)
    assert took < within, f"in force after {took:.2f} s"


def versions_read(server: FakeApiServer) -> set[str]:
    """The versions of ClusterNetworkPolicy the agent listed or watched."""
    return {r.path.split("/")[3] for r in server.requests_for(CNP)}


def opened(before: Matrix, after: Matrix) -> list[str]:
    """Pairs closed in ``before`` and open in ``after``."""
    return [
        f"{source} -> {target}"
        for source in PODS
        for target in PODS
        if source != target and after[source][target] and not before[source][target]
    ]


# -- the tier order, followed as the API server changes ---------------------------------------


def test_tiers_follow_the_api_server(tmp_path: Path) -> None:
    """Served as v1beta1 only. Admin Deny beats a NetworkPolicy allow; Pass hands over to
    NetworkPolicy; a Baseline Deny is opened by a NetworkPolicy; an update and deletes of the
    cluster policies take effect, each within the promised second."""
    with kubernetes_node(tmp_path, ("v1beta1",)) as (lab, server, agent):

        def np_and_admin_deny() -> None:
            server.create("NetworkPolicy", b_admits(FROM_Y, {"podSelector": pod_labelled("a")}))
            server.create(CNP, deny_y_into_x())

        in_force(
            agent, np_and_admin_deny, lambda s: (s["policies"], s["cluster_policies"]) == (1, 1)
        )
        matrix = lab.probe(80)
        assert not matrix["y/c2"]["x/b"], "Admin Deny beats the NetworkPolicy that admits y"
        assert not matrix["y/c2"]["x/a"], "Admin Deny"
        assert matrix["x/a"]["x/b"] and not matrix["x/c"]["x/b"], "x/b's NetworkPolicy"
        assert matrix["x/a"]["x/c"] and matrix["x/b"]["y/c2"], "the rest is open"

        def pass_and_baseline() -> None:
            server.create(CNP, PASS_Y_TO_B)
            server.create(CNP, BASELINE_DENY_X)

        in_force(agent, pass_and_baseline, lambda s: s["cluster_policies"] == 3)
        matrix = lab.probe(80)
        assert matrix["y/c2"]["x/b"], "passed before the Deny: x/b's NetworkPolicy admits y"
        assert not matrix["y/c2"]["x/a"], "not passed: the Admin Deny"
        assert matrix["x/a"]["x/b"], "x/b's NetworkPolicy opens what the Baseline Deny closes"
        assert not matrix["x/c"]["x/b"], "and alone decides for x/b: x/c is not admitted"
        assert not matrix["x/a"]["x/c"] and not matrix["x/b"]["x/a"], "Baseline Deny"
        assert matrix["x/a"]["y/c2"], "y is no subject of the Baseline tier"

        in_force(agent, lambda: server.update(CNP, deny_y_into_x(action="Accept")))
        matrix = lab.probe(80)
        assert matrix["y/c2"]["x/a"] and matrix["y/c2"]["x/c"], "updated: Admin Accept"
        assert not matrix["x/a"]["x/c"], "the Baseline Deny stays for the rest"

        def delete_two() -> None:
            server.delete(CNP, "default-deny")
            server.delete(CNP, "deny-y")

        in_force(agent, delete_two, lambda s: s["cluster_policies"] == 1)
        matrix = lab.probe(80)
        assert matrix["x/a"]["x/c"] and matrix["x/b"]["x/a"], "the Baseline Deny is gone"
        assert matrix["y/c2"]["x/a"] and matrix["y/c2"]["x/b"], "NetworkPolicy decides again"
        assert not matrix["x/c"]["x/b"], "x/b's NetworkPolicy still isolates it"
    assert versions_read(server) == {"v1beta1"}


# -- the CRD removed while the agent runs, and installed again --------------------------------


def test_crd_removed_and_installed_again(tmp_path: Path) -> None:
    """Served as v1alpha2 and v1beta1 (the server preferring v1alpha2): v1beta1 is read. The
    CRD removed: its policies' effect goes, NetworkPolicy enforcement goes on, a warning says so.
    Installed again, as v1alpha2 only: found and enforced."""
    objects: list[tuple[Kind, dict[str, Any]]] = [
        ("NetworkPolicy", b_admits(FROM_Y, {"podSelector": pod_labelled("a")})),
        (CNP, deny_y_into_x()),
    ]
    with kubernetes_node(tmp_path, ("v1alpha2", "v1beta1"), *objects) as (lab, server, agent):
        assert agent.status()["cluster_policies"] == 1
        assert versions_read(server) == {"v1beta1"}
        matrix = lab.probe(80)
        assert not matrix["y/c2"]["x/a"] and not matrix["y/c2"]["x/b"], "Admin Deny"
        assert not matrix["x/c"]["x/b"], "x/b's NetworkPolicy"

        in_force(agent, server.remove_crd, lambda s: s["cluster_policies"] == 0)
        assert "ClusterNetworkPolicy: policy.networking.k8s.io/v1beta1 is no longer served" in (
            agent.log()
        )
        # NetworkPolicies are still followed: a new one isolates x/c, admitting only x/a.
        c_admits_a = {
            "metadata": {"name": "c-ingress", "namespace": "x"},
            "spec": {
                "podSelector": pod_labelled("c"),
                "ingress": [{"from": [{"podSelector": pod_labelled("a")}]}],
            },
        }
        in_force(
            agent, lambda: server.create("NetworkPolicy", c_admits_a), lambda s: s["policies"] == 2
        )
        matrix = lab.probe(80)
        assert matrix["y/c2"]["x/a"] and matrix["y/c2"]["x/b"], "the Admin Deny went with it"
        assert not matrix["x/c"]["x/b"] and matrix["x/a"]["x/b"], "x/b's NetworkPolicy"
        assert not matrix["x/b"]["x/c"] and matrix["x/a"]["x/c"], "the new NetworkPolicy"

        def reinstall() -> None:
            server.install_crd("v1alpha2")
            server.create(CNP, deny_y_into_x())

        in_force(agent, reinstall, lambda s: s["cluster_policies"] == 1, DISCOVERY_INTERVAL + 1)
        matrix = lab.probe(80)
        assert not matrix["y/c2"]["x/a"] and not matrix["y/c2"]["x/b"], "Admin Deny again"
        assert matrix["x/a"]["x/c"] and not matrix["x/b"]["x/c"], "NetworkPolicy as before"
    assert versions_read(server) == {"v1beta1", "v1alpha2"}
    warnings = [line for line in agent.log().splitlines() if " WARNING " in line]
    assert any("is no longer served" in line for line in warnings), warnings
    assert "served as policy.networking.k8s.io/v1alpha2; listing and watching" in agent.log()


# -- malformed objects: fail-closed for their subjects, never opening anything ----------------


def too_many_rules() -> dict[str, Any]:
    """26 ingress rules (the CRD allows 25), each admitting all of x into x/b, which x/b's
    NetworkPolicy does not (Admin Accept would be decided first)."""
    accept_x = {"action": "Accept", "from": [{"namespaces": namespace_named("x")}]}
    return cluster_policy("too-many-rules", "Admin", 20, x_pod("b"), ingress=[accept_x] * 26)


def test_malformed_cluster_network_policies_are_enforced_fail_closed(tmp_path: Path) -> None:
    """Served as v1alpha2 only. Three objects the CRD's schema would refuse, read from the API
    anyway (a CRD without the schema, a newer version): each closes its subjects' traffic in the
    directions it covers, opens nothing, and the status names the object and the field."""
    policy: tuple[Kind, dict[str, Any]] = (
        "NetworkPolicy",
        b_admits(FROM_Y, {"podSelector": pod_labelled("a")}),
    )
    with kubernetes_node(tmp_path, ("v1alpha2",), policy) as (lab, server, agent):
        before = lab.probe(80)
        c2 = Lab(lab.name).record().pods["y/c2"].ipv4
        unknown_action = cluster_policy(
            "unknown-action", "Admin", 10, x_pod("a"),
            ingress=[{"name": "let-in", "action": "Allow", "from": [{"namespaces": {}}]}],
        )  # fmt: skip
        bad_cidr = cluster_policy(
            "bad-cidr", "Admin", 30, x_pod("c"),
            egress=[
                {"name": "to-c2", "action": "Accept",
                 "to": [{"networks": [f"{c2}/32", "10.0.0.0/33"]}]},
                {"name": "rest", "action": "Deny", "to": [{"namespaces": {}}]},
            ],
        )  # fmt: skip

        def create_them() -> None:
            for obj in (unknown_action, too_many_rules(), bad_cidr):
                server.create(CNP, obj)

        in_force(agent, create_them, lambda s: s["cluster_policies"] == 3)
        after = lab.probe(80)
        assert opened(before, after) == [], "a malformed policy opened something"
        # unknown-action: its Deny-or-unreadable rule denies all ingress of x/a, nothing else.
        assert not after["x/b"]["x/a"] and not after["y/c2"]["x/a"]
        assert after["x/a"]["y/c2"], "x/a's egress is not covered"
        # too-many-rules: all ingress of x/b denied; its Accept rules never admit x/c.
        assert not after["x/c"]["x/b"] and not after["y/c2"]["x/b"] and not after["x/a"]["x/b"]
        assert after["x/b"]["y/c2"], "x/b's egress is not covered"
        # bad-cidr: the Accept with a bad CIDR matches nothing (the valid /32 beside it opens
        # nothing), the Deny after it applies; x/c's ingress is not covered.
        assert before["x/c"]["y/c2"] and not after["x/c"]["y/c2"]
        assert after["y/c2"]["x/c"] and after["x/a"]["x/c"]

        errors = agent.status()["errors"]
        for name, field in (
            ("unknown-action", "spec.ingress[0].action"),
            ("too-many-rules", "spec.ingress"),
            ("bad-cidr", "spec.egress[0].to[0].networks[1]"),
        ):
            [message] = [e for e in errors if f"{CNP} {name}:" in e]
            assert field in message and "enforced fail-closed" in message, message
            assert f"{CNP} {name}:" in agent.log()


# -- the readiness gate waits for the ClusterNetworkPolicy list when the CRD is served ----------


def readyz(lab: LabDriver, port: int) -> int:
    node = Lab(lab.name).record().nodes[0]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with entered(node.netns), direct.open(f"http://127.0.0.1:{port}/readyz") as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_not_ready_before_the_cluster_network_policies_are_listed(tmp_path: Path) -> None:
    """Served as v1beta1 and v1alpha2. While the API server sits on the ClusterNetworkPolicy
    list, every other kind listed and watched, the agent is not ready; once the list comes, the
    first tables it enforces already hold the policy."""
    with kubernetes_node(
        tmp_path,
        ("v1beta1", "v1alpha2"),
        (CNP, deny_y_into_x()),
        wait_ready=False,
        health_port=9099,
        before_start=lambda server: server.hold_lists(CNP),
    ) as (lab, server, agent):

        def held_back(_status: dict[str, Any]) -> bool:
            watching = all(server.open_watches(kind) == 1 for kind in OTHER_KINDS)
            return watching and server.held_lists(CNP) == 1

        agent.wait(held_back, timeout=30)
        deadline = time.monotonic() + 1.0  # time enough to get ready, were it not held back
        while time.monotonic() < deadline:
            assert agent.process.poll() is None, "the agent exited"
            assert not agent.status().get("ready"), "ready before its ClusterNetworkPolicies"
            time.sleep(0.02)
        assert readyz(lab, 9099) == 503

        server.release_lists(CNP)
        agent.wait(lambda s: bool(s.get("ready")), timeout=10)
        first = agent.status()
        assert (first["generation"], first["cluster_policies"]) == (1, 1), first
        assert readyz(lab, 9099) == 200
        matrix = lab.probe(80)
        assert not matrix["y/c2"]["x/a"] and not matrix["y/c2"]["x/b"], "Admin Deny from the start"
        assert agent.status()["generation"] == 1, "enforced by the first tables, not a later one"
    assert versions_read(server) == {"v1beta1"}
