"""Tests of agent/state.py: the cache that sources fill and the compiler reads.

The rule under test is issue 7's "bad data about a pod must never open that pod": a Pod object
that cannot be converted stays in the state as an unreadable pod (an unknown endpoint, denied
both ways on its node), its error is reported, and nothing a source hands in can make the cache
raise or lose the other objects.
"""

from __future__ import annotations

import copy
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiClient

from agent.sources.kubernetes import KubernetesSource, api_client_from
from agent.state import ClusterState
from enforcement.compiler import compile_tables
from enforcement.model import UnreadablePod
from enforcement.verdict import Reason
from tests.agent.sources.fake_apiserver import FakeApiServer
from tests.builders import ip

NODE = "node-1"
WEB_IP = "10.244.1.3"
CLIENT_IP = "10.244.1.4"
TCP = 6


def k8s_pod(
    name: str = "web",
    address: str = WEB_IP,
    ns: str = "prod",
    labels: Mapping[str, Any] | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A running Pod as the API server returns it."""
    container: dict[str, Any] = {"name": "app", "image": "app:1"}
    if ports is not None:
        container["ports"] = ports
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": dict(labels or {"app": name})},
        "spec": {"nodeName": NODE, "containers": [container]},
        "status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]},
    }


def k8s_namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def default_deny(ns: str = "prod") -> dict[str, Any]:
    """Isolates every pod of ``ns`` both ways and allows nothing."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": "default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def verdicts(state: ClusterState, address: str = WEB_IP) -> tuple[Reason, Reason]:
    """(client -> pod, pod -> client) as node-1 decides them from the state's snapshot."""
    tables = compile_tables(state.view().snapshot, NODE)
    return (
        tables.evaluate(ip(CLIENT_IP), ip(address), TCP, 80),
        tables.evaluate(ip(address), ip(CLIENT_IP), TCP, 80),
    )


def isolated_cluster() -> ClusterState:
    """prod/web isolated by a default-deny policy; other/client is not isolated."""
    state = ClusterState()
    state.replace("Namespace", [k8s_namespace("prod"), k8s_namespace("other")])
    state.replace("Pod", [k8s_pod(), k8s_pod("client", CLIENT_IP, ns="other")])
    state.replace("NetworkPolicy", [default_deny()])
    assert verdicts(state) == (Reason.DENIED_INGRESS, Reason.DENIED_EGRESS)
    return state


# -- the cache keeps unreadable pods --------------------------------------------------------


def test_unreadable_pod_is_kept_with_its_address_and_reported() -> None:
    state = ClusterState()
    state.upsert("Pod", k8s_pod(labels={"app": "bad value!"}))
    snapshot = state.view().snapshot
    assert snapshot.pods == ()
    assert len(snapshot.unreadable_pods) == 1
    unreadable = snapshot.unreadable_pods[0]
    assert (unreadable.key, unreadable.node_name) == ("prod/web", NODE)
    assert unreadable.ips == (ipaddress.ip_address(WEB_IP),)
    [error] = state.errors()
    assert (error.kind, error.key) == ("Pod", ("prod", "web"))
    assert error.message.startswith("Pod prod/web: metadata.labels[app]: ")
    assert "unknown endpoint" in error.message and WEB_IP in error.message
    assert unreadable.error in error.message


def test_an_update_makes_a_pod_unreadable_and_back() -> None:
    state = ClusterState()
    state.upsert("Pod", k8s_pod())
    revision = state.revision
    state.upsert("Pod", k8s_pod(labels={"app": "-bad"}))
    snapshot = state.view().snapshot
    assert (len(snapshot.pods), len(snapshot.unreadable_pods)) == (0, 1)
    assert state.revision > revision and len(state.errors()) == 1
    state.upsert("Pod", k8s_pod())
    snapshot = state.view().snapshot
    assert (len(snapshot.pods), len(snapshot.unreadable_pods)) == (1, 0)
    assert state.errors() == []
    state.upsert("Pod", k8s_pod(labels={"app": "-bad"}))
    state.delete("Pod", k8s_pod())
    snapshot = state.view().snapshot
    assert (snapshot.pods, snapshot.unreadable_pods, state.errors()) == ((), (), [])


def test_a_relist_with_a_malformed_object_keeps_every_other_object() -> None:
    # Before: a Pod whose metadata is not a map made the whole relist raise, after the table
    # had been cleared: every pod listed after it was gone (un-isolated).
    state = ClusterState()
    malformed = {"apiVersion": "v1", "kind": "Pod", "metadata": "oops", "status": []}
    state.replace("Pod", [k8s_pod("a", "10.244.1.5"), malformed, k8s_pod("b", "10.244.1.6")])
    snapshot = state.view().snapshot
    assert {pod.name for pod in snapshot.pods} == {"a", "b"}
    assert snapshot.unreadable_pods == (
        UnreadablePod("", "", (), None, snapshot.unreadable_pods[0].error),
    )
    assert len(state.errors()) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(
        [
            ("metadata",),
            ("metadata", "labels"),
            ("metadata", "name"),
            ("spec",),
            ("spec", "nodeName"),
            ("spec", "hostNetwork"),
            ("spec", "containers"),
            ("spec", "initContainers"),
            ("status", "phase"),
            ("status", "podIPs"),
        ]
    ),
    value=json_values,
)
def test_no_pod_object_makes_the_cache_raise_or_lose_the_address(
    path: tuple[str, ...], value: Any
) -> None:
    """Whatever one field holds, upsert never raises, and a pod whose status.podIP is still
    readable keeps that address in the snapshot (readable or not) unless the field says the pod
    no longer owns it (host network, terminal phase), or its name changed."""
    obj = k8s_pod(name="web")
    obj["status"].pop("podIPs")  # podIP alone: the field under test may be podIPs
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    state = ClusterState()
    state.upsert("Pod", obj)
    snapshot = state.view().snapshot
    claimed = {
        address for pod in (*snapshot.pods, *snapshot.unreadable_pods) for address in pod.ips
    }
    gives_up_address = (path == ("spec", "hostNetwork") and value is True) or (
        path == ("status", "phase") and value in ("Succeeded", "Failed")
    )
    if not gives_up_address and path != ("status", "podIPs"):
        assert ipaddress.ip_address(WEB_IP) in claimed
    assert len(snapshot.pods) + len(snapshot.unreadable_pods) == 1


# -- the compiled tables: bad data never opens the pod ---------------------------------------


@pytest.mark.parametrize(
    ("change", "address", "expected"),
    [
        pytest.param(
            lambda pod: pod["status"].update(podIP="010.244.1.3", podIPs=[{"ip": "010.244.1.3"}]),
            WEB_IP,
            (Reason.DENIED_INGRESS, Reason.DENIED_EGRESS),
            id="sloppy-status-ip-is-the-same-pod",
        ),
        pytest.param(
            lambda pod: pod["status"].update(
                podIP="::ffff:10.244.1.3", podIPs=[{"ip": "::ffff:10.244.1.3"}]
            ),
            WEB_IP,
            (Reason.DENIED_INGRESS, Reason.DENIED_EGRESS),
            id="ipv4-mapped-status-ip-is-the-same-pod",
        ),
        pytest.param(
            lambda pod: pod["metadata"]["labels"].update(app="not valid!"),
            WEB_IP,
            (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT),
            id="bad-label-value",
        ),
        pytest.param(
            lambda pod: pod["spec"]["containers"][0].update(
                ports=[
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 81, "name": "http"},
                ]
            ),
            WEB_IP,
            (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT),
            id="duplicate-port-names",
        ),
        pytest.param(
            lambda pod: pod["status"].update(
                podIPs=[{"ip": "010.244.1.3"}, {"ip": "10.244.1.999"}]
            ),
            WEB_IP,
            (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT),
            id="one-bad-address-of-two",
        ),
        pytest.param(
            lambda pod: pod["status"].update(podIPs=[{"ip": "10.244.1.3"}, {"ip": "10.244.1.9"}]),
            "10.244.1.9",
            (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT),
            id="two-ipv4-addresses-both-denied",
        ),
        pytest.param(
            lambda pod: pod["spec"].update(nodeName=["node-1"]),
            WEB_IP,
            (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT),
            id="node-unreadable-enforced-everywhere",
        ),
    ],
)
def test_bad_data_about_an_isolated_pod_never_opens_it(
    change: Callable[[dict[str, Any]], None], address: str, expected: tuple[Reason, Reason]
) -> None:
    state = isolated_cluster()
    pod = k8s_pod()
    change(pod)
    state.upsert("Pod", pod)
    assert verdicts(state, address) == expected
    tables = compile_tables(state.view().snapshot, NODE)
    assert ip(address) in tables.isolated_local_addresses()  # queued, so the agent drops it
    # And back: the fixed object is enforced by its policies again.
    state.upsert("Pod", k8s_pod())
    assert verdicts(state) == (Reason.DENIED_INGRESS, Reason.DENIED_EGRESS)
    assert state.errors() == []


def test_an_unreadable_pod_is_denied_even_without_a_policy() -> None:
    # Its labels are unknown: whether a policy would select it cannot be known either.
    state = ClusterState()
    state.replace("Pod", [k8s_pod(labels={"app": "bad!"}), k8s_pod("client", CLIENT_IP)])
    assert verdicts(state) == (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT)


# -- end to end: the Kubernetes source against the fake API server ---------------------------

TOKEN = "state-test-token"


@pytest.fixture
def api_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeApiServer, ApiClient]]:
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)  # straight to 127.0.0.1
    with FakeApiServer(token=TOKEN) as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: fake, cluster: {{server: '{server.url}'}}}}]\n"
            f"users: [{{name: tester, user: {{token: {TOKEN}}}}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: tester}}]\n"
            "current-context: fake\n"
        )
        client = api_client_from(str(kubeconfig))
        try:
            yield server, client
        finally:
            client.close()


@contextmanager
def running(client: ApiClient, state: ClusterState) -> Iterator[None]:
    source = KubernetesSource(
        client, watch_timeout=30, connect_timeout=1.0, backoff_initial=0.02, backoff_max=0.2
    )
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(state, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the source did not stop"


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def test_kubernetes_source_never_opens_a_pod_whose_object_turns_bad(
    api_client: tuple[FakeApiServer, ApiClient],
) -> None:
    server, client = api_client
    for name in ("prod", "other"):
        server.create("Namespace", k8s_namespace(name))
    server.create("Pod", k8s_pod())
    server.create("Pod", k8s_pod("client", CLIENT_IP, ns="other"))
    server.create("NetworkPolicy", default_deny())
    state = ClusterState()
    denied = (Reason.DENIED_INGRESS, Reason.DENIED_EGRESS)
    unknown = (Reason.UNKNOWN_ENDPOINT, Reason.UNKNOWN_ENDPOINT)
    with running(client, state):
        eventually(lambda: state.ready and verdicts(state) == denied, "web denied")
        # The attack: the status IP in the sloppy form the API server stores.
        # (A label changes too, so the update is a change of the record: an update that
        # leaves the record as it was changes nothing in the cache.)
        sloppy = k8s_pod(labels={"app": "web", "update": "sloppy"})
        sloppy["status"].update(podIP="010.244.1.3", podIPs=[{"ip": "010.244.1.3"}])
        server.update("Pod", sloppy)
        revision = state.revision
        eventually(lambda: state.revision > revision, "the update seen")
        assert verdicts(state) == denied
        assert state.errors() == []
        # An object the agent cannot read fully: denied as an unknown endpoint, reported.
        duplicate = copy.deepcopy(sloppy)
        duplicate["spec"]["containers"][0]["ports"] = [
            {"containerPort": 80, "name": "http"},
            {"containerPort": 81, "name": "http"},
        ]
        server.update("Pod", duplicate)
        eventually(lambda: verdicts(state) == unknown, "web an unknown endpoint")
        [error] = state.errors()
        assert "duplicate port name" in error.message
        # Fixed again: its policies apply again.
        server.update("Pod", k8s_pod())
        eventually(lambda: state.errors() == [] and verdicts(state) == denied, "web readable")
    # A fresh list (an agent restart) finds the same: the unreadable pod is not left out.
    server.update("Pod", duplicate)
    restarted = ClusterState()
    with running(client, restarted):
        eventually(lambda: restarted.ready, "relisted")
        assert verdicts(restarted) == unknown


# -- every kind of the registry ----------------------------------------------------------------


def k8s_cluster_policy(name: str, action: str = "Deny", priority: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "policy.networking.k8s.io/v1beta1",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "tier": "Admin",
            "priority": priority,
            "subject": {"namespaces": {}},
            "ingress": [{"action": action, "from": [{"namespaces": {}}]}],
        },
    }


def k8s_node(name: str, address: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": name},
            ]
        },
    }


def test_cluster_policies_and_nodes_reach_the_snapshot() -> None:
    state = ClusterState()
    state.replace("ClusterNetworkPolicy", [k8s_cluster_policy("guard")])
    state.replace("Node", [k8s_node(NODE, "172.18.0.2", zone="a")])
    snapshot = state.view().snapshot
    [policy] = snapshot.cluster_policies
    assert (policy.name, policy.priority, policy.ingress[0].action.value) == ("guard", 10, "Deny")
    [node] = snapshot.nodes
    assert (node.name, dict(node.labels), node.addresses) == (
        NODE,
        {"zone": "a"},
        (ipaddress.ip_address("172.18.0.2"),),
    )
    state.delete("ClusterNetworkPolicy", k8s_cluster_policy("guard"))
    assert state.view().snapshot.cluster_policies == ()


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"action": "Allow"}, id="unknown-action"),
        pytest.param({"priority": 5000}, id="priority-out-of-range"),
        pytest.param({"tier": "Middle"}, id="unknown-tier"),
    ],
)
def test_a_malformed_cluster_policy_is_kept_fail_closed_and_reported(spec: dict[str, Any]) -> None:
    obj = k8s_cluster_policy("bad", action=spec.get("action", "Deny"))
    obj["spec"].update({k: v for k, v in spec.items() if k != "action"})
    state = ClusterState()
    state.replace("ClusterNetworkPolicy", [obj, k8s_cluster_policy("good")])
    names = {policy.name for policy in state.view().snapshot.cluster_policies}
    assert names == {"bad", "good"}, "never dropped"
    [error] = state.errors()
    assert (error.kind, error.key) == ("ClusterNetworkPolicy", ("", "bad"))
    assert "enforced fail-closed" in error.message
    stand_in = next(p for p in state.view().snapshot.cluster_policies if p.name == "bad")
    rules = (*stand_in.ingress, *stand_in.egress)
    assert rules and all(rule.action.value == "Deny" for rule in rules), "opens nothing"
    state.upsert("ClusterNetworkPolicy", k8s_cluster_policy("bad"))  # fixed
    assert state.errors() == []


def test_an_update_that_leaves_the_record_as_it_was_changes_nothing() -> None:
    """Nodes' heartbeats and status conditions must not cause recompiles."""
    state = ClusterState()
    state.replace("Node", [k8s_node(NODE, "172.18.0.2")])
    revision = state.revision
    heartbeat = k8s_node(NODE, "172.18.0.2")
    heartbeat["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    state.upsert("Node", heartbeat)
    assert state.revision == revision
    state.upsert("Node", k8s_node(NODE, "172.18.0.2", zone="b"))  # a label: a change
    assert state.revision == revision + 1


def test_readiness_waits_for_every_kind_served() -> None:
    state = ClusterState()
    for kind in ("Namespace", "Pod", "NetworkPolicy", "Node"):
        state.replace(kind, [])
    assert not state.ready, "ClusterNetworkPolicy counts until the source says it is not served"
    state.set_served("ClusterNetworkPolicy", False)
    assert state.ready
    state.set_served("ClusterNetworkPolicy", True)  # the CRD appears: wait for its list
    state.replace("ClusterNetworkPolicy", [])
    assert state.ready
    with pytest.raises(ValueError, match="not a kind"):
        state.set_served("CiliumNetworkPolicy", False)


# -- when changes arrived (the policy-programming delay) ---------------------------------------


def test_a_view_says_when_its_earliest_new_change_arrived() -> None:
    state = ClusterState()
    assert state.view().changed_at is None, "nothing changed yet"
    before = time.monotonic()
    state.upsert("Namespace", k8s_namespace("prod"))
    first = time.monotonic()
    time.sleep(0.01)
    state.upsert("Pod", k8s_pod())
    view = state.view()
    assert view.changed_at is not None and before <= view.changed_at <= first, "the earliest"
    assert state.view().changed_at is None, "already taken by the previous view"


def test_a_change_that_changes_nothing_has_no_time() -> None:
    state = ClusterState()
    state.upsert("Namespace", k8s_namespace("prod"))
    state.view()
    state.upsert("Namespace", k8s_namespace("prod"))  # the same record: no change
    assert state.view().changed_at is None
