"""Staged policies arriving by list and watch (Kubernetes mode) are reported, never enforced.

The real KubernetesSource reads the fake API server over HTTP into a ClusterState; the tables
are compiled from its snapshot as the runner compiles them. A NetworkPolicy default-deny and a
ClusterNetworkPolicy Deny, both annotated staged, decide nothing and queue nobody while their
staged tables deny; removing the annotation (a watch event like any other update) makes them
decide; staging again lifts them; a malformed annotation leaves the policy enforced and is
reported with the state's errors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient

from agent.state import ClusterState
from enforcement.compiler import compile_tables
from enforcement.model import IPPROTO_TCP, STAGED_ANNOTATION
from enforcement.tables import AllowTables
from enforcement.verdict import Reason
from tests.agent.sources import test_kubernetes as source_tests
from tests.agent.sources.fake_apiserver import FakeApiServer
from tests.agent.sources.test_kubernetes import eventually, make_source, namespace, pod, running
from tests.builders import ip

NODE = "node-1"
WEB, CLIENT = "10.244.1.2", "10.244.1.4"
FLOW = (ip(CLIENT), ip(WEB), IPPROTO_TCP, 80)
STAGED = {STAGED_ANNOTATION: "true"}

# The source tests' fixtures: a fake API server serving the CRD, a client of it, no proxies.
_no_proxy = source_tests._no_proxy
server = source_tests.server
api_client = source_tests.api_client


def deny_all(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "prod", "name": "deny-all", "annotations": annotations or {}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def guard(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Admin tier: pods of prod take nothing from dev."""
    return {
        "apiVersion": "policy.networking.k8s.io/v1beta1",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "guard", "annotations": annotations or {}},
        "spec": {
            "tier": "Admin",
            "priority": 10,
            "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}}},
            "ingress": [
                {
                    "name": "no-dev",
                    "action": "Deny",
                    "from": [
                        {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}}
                    ],
                }
            ],
        },
    }


def compiled(state: ClusterState) -> AllowTables:
    return compile_tables(state.view().snapshot, NODE, state.revision)


def deciding(state: ClusterState) -> tuple[Reason, tuple[str, ...]]:
    """What the enforced tables decide for client -> web:80, and the policies they name."""
    outcome = compiled(state).outcome(*FLOW)
    return outcome.reason, tuple(ref.name for ref in outcome.refs)


def becomes(state: ClusterState, expected: tuple[Reason, tuple[str, ...]]) -> Callable[[], bool]:
    return lambda: state.ready and deciding(state) == expected


def test_staged_policies_from_the_api_server_are_not_enforced(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    for name in ("prod", "dev"):
        server.create("Namespace", namespace(name, **{"kubernetes.io/metadata.name": name}))
    server.create("Pod", pod("prod", "web", WEB, app="web"))
    server.create("Pod", pod("dev", "client", CLIENT, app="client"))
    server.create("NetworkPolicy", deny_all(STAGED))
    server.create("ClusterNetworkPolicy", guard(STAGED))
    state = ClusterState()
    with running(make_source(api_client), state):
        eventually(
            lambda: state.ready and len(state.view().snapshot.cluster_policies) == 1, "listed"
        )
        tables = compiled(state)
        assert tables.isolated_local_addresses() == frozenset(), "nobody isolated"
        assert tables.outcome(*FLOW).reason is Reason.NOT_ISOLATED
        assert tables.staged is not None
        would = tables.staged.outcome(*FLOW)
        assert would.reason is Reason.DENIED_INGRESS
        assert [(ref.name, ref.staged) for ref in would.refs] == [("guard", True)]

        # The NetworkPolicy loses its annotation: it isolates web (the CNP stays staged).
        server.update("NetworkPolicy", deny_all())
        eventually(becomes(state, (Reason.DENIED_INGRESS, ("deny-all",))), "deny-all enforced")
        # Staged again; the ClusterNetworkPolicy loses its annotation instead.
        server.update("NetworkPolicy", deny_all(STAGED))
        server.update("ClusterNetworkPolicy", guard())
        eventually(becomes(state, (Reason.DENIED_INGRESS, ("guard",))), "guard enforced")
        server.update("ClusterNetworkPolicy", guard(STAGED))
        eventually(becomes(state, (Reason.NOT_ISOLATED, ())), "both staged again")
        assert state.errors() == []

        # A malformed annotation never lifts a policy: enforced, and reported.
        malformed = copy.deepcopy(deny_all({STAGED_ANNOTATION: "yes"}))
        server.update("NetworkPolicy", malformed)
        eventually(becomes(state, (Reason.DENIED_INGRESS, ("deny-all",))), "enforced when bad")
        [error] = state.errors()
        assert error.key == ("prod", "deny-all")
        assert f'metadata.annotations[{STAGED_ANNOTATION}]: must be "true"' in error.message
        assert error.message.endswith("enforced, not staged")
