"""KubernetesSource against a fake API server: the real client, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException

from agent import kinds
from agent.sources.kubernetes import (
    KubernetesSource,
    WatchStats,
    api_client_from,
    pod_cidrs_from_node,
)
from agent.state import KINDS, ClusterState, Kind, PodRanges
from tests.agent.sources.fake_apiserver import FakeApiServer

TOKEN = "test-token"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")

# -- builders: objects as the API server stores them ---------------------------------------


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, address: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]},
    }


def policy(ns: str, name: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def seed(server: FakeApiServer, namespaces: int = 7, pods: int = 8, policies: int = 4) -> None:
    """More objects of each kind than one list page holds (PAGE_SIZE)."""
    for i in range(namespaces):
        server.create("Namespace", namespace(f"ns-{i}", team=f"t{i % 2}"))
    for i in range(pods):
        server.create("Pod", pod(f"ns-{i % 3}", f"pod-{i}", f"10.0.0.{i + 1}", app="web"))
    for i in range(policies):
        server.create("NetworkPolicy", policy(f"ns-{i % 2}", f"deny-{i}"))


# -- fixtures and helpers ---------------------------------------------------------------

PAGE_SIZE = 3


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests go straight to 127.0.0.1, whatever the environment says about proxies."""
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer(token=TOKEN) as fake:
        fake.install_crd("v1beta1", "v1alpha2")  # as upstream's main branch serves it
        yield fake


def write_kubeconfig(path: Path, url: str, token: str = TOKEN) -> Path:
    path.write_text(
        f"""\
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
users:
- name: tester
  user:
    token: {token}
contexts:
- name: fake
  context:
    cluster: fake
    user: tester
current-context: fake
"""
    )
    return path


@pytest.fixture
def api_client(server: FakeApiServer, tmp_path: Path) -> Iterator[ApiClient]:
    made = api_client_from(str(write_kubeconfig(tmp_path / "kubeconfig", server.url)))
    yield made
    made.close()


def make_source(api_client: ApiClient, **overrides: Any) -> KubernetesSource:
    settings: dict[str, Any] = {
        "page_size": PAGE_SIZE,
        "watch_timeout": 30,
        "connect_timeout": 1.0,
        "list_timeout": 5.0,
        "read_grace": 5.0,
        "backoff_initial": 0.02,
        "backoff_max": 0.2,
    }
    settings.update(overrides)
    return KubernetesSource(api_client, **settings)


class RecordingState(ClusterState):
    """A ClusterState that also keeps every object handed to it, to check their shape."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[str, Kind, Mapping[str, Any]]] = []
        self.replacements: list[tuple[Kind, list[str]]] = []
        """Every ``replace``: the kind and the names of its objects (empty ones too)."""

    def replace(self, kind: Kind, objects: Any) -> None:
        objects = list(objects)
        self.received.extend(("replace", kind, obj) for obj in objects)
        self.replacements.append((kind, sorted(obj["metadata"]["name"] for obj in objects)))
        super().replace(kind, objects)

    def upsert(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        self.received.append(("upsert", kind, obj))
        super().upsert(kind, obj)


@contextmanager
def running(source: KubernetesSource, state: ClusterState) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(state, stop), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the source did not stop"


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def keys(state: ClusterState, kind: Kind) -> set[str]:
    snapshot = state.view().snapshot
    if kind == "Namespace":
        return {ns.name for ns in snapshot.namespaces}
    if kind == "ClusterNetworkPolicy":
        return {policy.name for policy in snapshot.cluster_policies}
    if kind == "Node":
        return {node.name for node in snapshot.nodes}
    records = snapshot.pods if kind == "Pod" else snapshot.policies
    return {f"{r.namespace}/{r.name}" for r in records}


def server_keys(server: FakeApiServer, kind: Kind) -> set[str]:
    result = set()
    for obj in server.objects(kind):
        metadata = obj["metadata"]
        ns = metadata.get("namespace")
        result.add(f"{ns}/{metadata['name']}" if ns else metadata["name"])
    return result


def matches_server(state: ClusterState, server: FakeApiServer) -> bool:
    if any(keys(state, kind) != server_keys(server, kind) for kind in KINDS):
        return False
    labels = {ns.name: dict(ns.labels) for ns in state.view().snapshot.namespaces}
    return all(
        labels[obj["metadata"]["name"]].items() >= obj["metadata"]["labels"].items()
        for obj in server.objects("Namespace")
    )


def namespace_labels(state: ClusterState, name: str) -> dict[str, str] | None:
    for ns in state.view().snapshot.namespaces:
        if ns.name == name:
            return dict(ns.labels)
    return None


def total(source: KubernetesSource, counter: str) -> int:
    return sum(getattr(stats, counter) for stats in source.stats().values())


def stats(source: KubernetesSource, kind: Kind) -> WatchStats:
    return source.stats()[kind]


def all_watching(server: FakeApiServer) -> Callable[[], bool]:
    return lambda: all(server.open_watches(kind) == 1 for kind in KINDS)


def list_requests(server: FakeApiServer, kind: Kind) -> int:
    return len(server.requests_for(kind, watch=False))


# -- the initial list --------------------------------------------------------------------


def test_paginated_list_fills_the_state_and_makes_it_ready(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    state = RecordingState()
    source = make_source(api_client)
    assert not state.ready
    with running(source, state):
        eventually(lambda: state.ready, "state ready")
        assert matches_server(state, server)
        assert state.errors() == []
    pod_lists = server.requests_for("Pod", watch=False)
    assert len(pod_lists) == 3  # 8 pods, 3 per page
    assert [r.query.get("limit") for r in pod_lists] == [str(PAGE_SIZE)] * 3
    assert "continue" not in pod_lists[0].query
    assert all(r.query.get("continue") for r in pod_lists[1:])
    replaced = [(kind, obj) for how, kind, obj in state.received if how == "replace"]
    assert len(replaced) == 7 + 8 + 4
    api_versions = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1"}
    for kind, obj in replaced:
        assert (obj["kind"], obj["apiVersion"]) == (kind, api_versions[kind])
    for kind in KINDS:
        assert (stats(source, kind).lists, stats(source, kind).relists) == (1, 0)
        assert stats(source, kind).resource_version is not None


def test_an_empty_cluster_is_ready_too(server: FakeApiServer, api_client: ApiClient) -> None:
    state = ClusterState()
    with running(make_source(api_client), state):
        eventually(lambda: state.ready, "state ready")
    assert state.view().snapshot.namespaces == ()


def test_expired_continue_token_restarts_the_list(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    server.fail_next("Pod", 410, when="continue")
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(lambda: state.ready, "state ready")
        assert matches_server(state, server)
    pod_lists = server.requests_for("Pod", watch=False)
    starts = [r for r in pod_lists if "continue" not in r.query]
    assert len(starts) == 2
    assert [r.status for r in pod_lists].count(410) == 1
    assert (stats(source, "Pod").lists, stats(source, "Pod").relists) == (1, 0)


def test_fake_server_expires_a_continue_token_after_compaction(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    """The genuine expiry the source handles above: the token's snapshot was compacted."""
    seed(server)
    core = client.CoreV1Api(api_client)
    first = core.list_pod_for_all_namespaces(limit=PAGE_SIZE)
    assert len(first.items) == PAGE_SIZE and first.metadata.var_continue
    server.compact()
    with pytest.raises(ApiException) as raised:
        core.list_pod_for_all_namespaces(limit=PAGE_SIZE, _continue=first.metadata.var_continue)
    assert raised.value.status == 410
    assert '"reason": "Expired"' in raised.value.body


def test_fake_server_satisfies_the_official_client(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    """Discovery, namespaced lists and the client's own Watch helper work against the fake."""
    seed(server)
    assert client.VersionApi(api_client).get_code().git_version == "v1.33.0-fake"
    core = client.CoreV1Api(api_client)
    pods = core.list_namespaced_pod("ns-0")
    assert sorted(p.metadata.name for p in pods.items) == ["pod-0", "pod-3", "pod-6"]
    listed = core.list_namespace()
    server.create("Namespace", namespace("watched", team="w"))
    events = list(
        watch.Watch().stream(
            core.list_namespace,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "watched")]
    assert events[0]["object"].metadata.labels == {"team": "w"}
    with pytest.raises(ApiException) as raised:
        core.read_namespace("ns-0")  # not served: a proper 404 Status
    assert raised.value.status == 404


def test_in_cluster_config_outside_a_cluster_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException):
        api_client_from(None)


def test_server_errors_are_retried_with_backoff(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    server.fail_next(None, 503, count=4, when="list")
    server.fail_next(None, 500, count=2, when="watch")
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(lambda: state.ready, "state ready despite 5xx")
        eventually(all_watching(server), "all kinds watching despite 5xx")
        assert matches_server(state, server)
        server.create("Namespace", namespace("late"))
        eventually(lambda: "late" in keys(state, "Namespace"), "event after the errors")
    assert total(source, "errors") == 6
    assert total(source, "relists") == 0


def test_wrong_token_never_gets_ready(server: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url, token="wrong")
    wrong = api_client_from(str(kubeconfig))
    state = ClusterState()
    source = make_source(wrong)
    with running(source, state):
        eventually(lambda: total(source, "errors") >= 6, "repeated 401s")
        assert not state.ready
    wrong.close()
    assert {r.status for r in server.requests} == {401}


def test_api_client_from_kubeconfig_leaves_the_global_configuration_alone(
    server: FakeApiServer, tmp_path: Path
) -> None:
    default_host = Configuration.get_default_copy().host
    fresh = api_client_from(str(write_kubeconfig(tmp_path / "kubeconfig", server.url)))
    try:
        assert fresh.configuration.host == server.url
        assert fresh.configuration.api_key["BearerToken"] == f"Bearer {TOKEN}"
    finally:
        fresh.close()
    assert Configuration.get_default_copy().host == default_host


# -- watching ----------------------------------------------------------------------------


def test_watch_events_reach_the_state_within_a_second(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(lambda: state.ready, "state ready")
        eventually(all_watching(server), "all kinds watching")

        server.create("Namespace", namespace("new", team="t9"))
        eventually(lambda: "new" in keys(state, "Namespace"), "namespace added", timeout=1)

        server.update("Namespace", namespace("ns-0", team="relabelled"))
        eventually(
            lambda: (namespace_labels(state, "ns-0") or {}).get("team") == "relabelled",
            "namespace relabelled",
            timeout=1,
        )

        server.create("Pod", pod("new", "fresh", "10.0.1.1"))
        eventually(lambda: "new/fresh" in keys(state, "Pod"), "pod added", timeout=1)
        server.delete("Pod", "pod-0", "ns-0")
        eventually(lambda: "ns-0/pod-0" not in keys(state, "Pod"), "pod deleted", timeout=1)

        server.create("NetworkPolicy", policy("new", "allow"))
        eventually(lambda: "new/allow" in keys(state, "NetworkPolicy"), "policy added", timeout=1)
        server.delete("NetworkPolicy", "deny-0", "ns-0")
        eventually(
            lambda: "ns-0/deny-0" not in keys(state, "NetworkPolicy"), "policy gone", timeout=1
        )
        assert matches_server(state, server)
    assert total(source, "events") == 6
    counts = (total(source, "lists"), total(source, "relists"), total(source, "errors"))
    assert counts == (len(KINDS), 0, 0)
    watch = server.requests_for("Pod", watch=True)[0]
    assert watch.query["allowWatchBookmarks"] == "true"
    assert watch.query["timeoutSeconds"] == "30"
    assert watch.query["resourceVersion"]


def test_bookmarks_advance_the_resource_version_without_changing_state(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(all_watching(server), "all kinds watching")
        server.create("Pod", pod("ns-1", "other-kind", "10.0.2.1"))
        eventually(lambda: "ns-1/other-kind" in keys(state, "Pod"), "pod added")
        before = stats(source, "Namespace").resource_version
        assert before is not None and int(before) < int(server.resource_version)
        revision = state.revision

        server.bookmark()
        eventually(
            lambda: stats(source, "Namespace").resource_version == server.resource_version,
            "bookmark applied",
        )
        assert stats(source, "Namespace").bookmarks == 1
        assert state.revision == revision
        assert stats(source, "Namespace").events == 0


def test_watch_timeout_resumes_from_the_last_resource_version(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client, watch_timeout=1)
    with running(source, state):
        eventually(all_watching(server), "all kinds watching")
        server.create("Namespace", namespace("first"))
        eventually(lambda: "first" in keys(state, "Namespace"), "namespace added")
        version = stats(source, "Namespace").resource_version
        eventually(
            lambda: len(server.requests_for("Namespace", watch=True)) >= 2,
            "a second watch after timeoutSeconds",
            timeout=4,
        )
        server.create("Namespace", namespace("second"))
        eventually(lambda: "second" in keys(state, "Namespace"), "event on the new watch")
    second = server.requests_for("Namespace", watch=True)[1]
    assert second.query["resourceVersion"] == version
    assert second.query["timeoutSeconds"] == "1"
    assert list_requests(server, "Namespace") == 3
    assert (total(source, "relists"), total(source, "errors")) == (0, 0)


def test_a_dropped_watch_is_resumed_without_a_relist(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(all_watching(server), "all kinds watching")
        server.create("Namespace", namespace("before"))
        eventually(lambda: "before" in keys(state, "Namespace"), "namespace added")
        version = stats(source, "Namespace").resource_version
        lists = {kind: list_requests(server, kind) for kind in KINDS}

        assert server.drop_watches() == len(KINDS)
        server.create("Namespace", namespace("during"))  # likely while reconnecting
        eventually(lambda: "during" in keys(state, "Namespace"), "change made during the drop")
        eventually(all_watching(server), "all kinds watching again")
        server.create("Namespace", namespace("after"))
        eventually(lambda: "after" in keys(state, "Namespace"), "change after the drop")
        assert matches_server(state, server)

    assert {kind: list_requests(server, kind) for kind in KINDS} == lists
    assert total(source, "relists") == 0
    resumed = server.requests_for("Namespace", watch=True)[1]
    assert resumed.query["resourceVersion"] == version


@pytest.mark.parametrize("how", ["error-event", "http-status"])
def test_gone_triggers_a_relist_and_the_state_matches_the_server(
    server: FakeApiServer, api_client: ApiClient, how: str
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(all_watching(server), "all kinds watching")
        for kind, obj in (
            ("Namespace", namespace("seen")),
            ("Pod", pod("seen", "seen", "10.0.3.1")),
            ("NetworkPolicy", policy("seen", "seen")),
        ):
            server.create(kind, obj)  # each stream has worked before the 410 ends it
        eventually(lambda: matches_server(state, server), "events seen")
        # Changes the watches never see: only a relist can bring them in.
        server.pause_watches()
        server.delete("Namespace", "ns-6")
        server.update("Namespace", namespace("ns-1", team="moved"))
        server.create("Namespace", namespace("unseen"))
        server.delete("Pod", "pod-1", "ns-1")
        server.create("NetworkPolicy", policy("ns-3", "unseen"))
        if how == "error-event":
            server.expire_watches()
        else:
            server.compact()
            for kind in KINDS:
                server.fail_next(kind, 410, when="watch")
            server.drop_watches()
        server.resume_watches()
        eventually(lambda: matches_server(state, server), "state matches the server after 410")
        eventually(all_watching(server), "all kinds watching again")
        server.create("Namespace", namespace("after"))
        eventually(lambda: "after" in keys(state, "Namespace"), "watching after the relist")
    for kind in KINDS:
        assert (stats(source, kind).lists, stats(source, kind).relists) == (2, 1), kind
    assert total(source, "events") == 3 + 1


def test_an_error_event_other_than_gone_relists(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(all_watching(server), "all kinds watching")
        server.create("Pod", pod("ns-1", "first", "10.0.3.1"))  # the stream has worked
        eventually(lambda: "ns-1/first" in keys(state, "Pod"), "pod added")
        server.inject_raw(
            "Pod",
            b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},'
            b'"status":"Failure","message":"internal error","reason":"InternalError","code":500}}',
        )
        eventually(lambda: stats(source, "Pod").relists == 1, "relist after the ERROR event")
        assert matches_server(state, server)
    assert stats(source, "Pod").errors == 1


def test_malformed_event_lines_are_logged_and_ignored(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(all_watching(server), "all kinds watching")
        server.inject_raw("Namespace", b"{not json")
        server.inject_raw("Namespace", b'{"type": "ADDED"}')
        server.inject_raw("Namespace", b"[1, 2]")
        server.inject_raw("Namespace", b'{"type": "SOMETHING", "object": {}}')
        # A well-formed event with an object the cache cannot convert: recorded as an error.
        server.inject_raw(
            "Namespace", b'{"type": "ADDED", "object": {"metadata": {"name": "Not_A_Label"}}}'
        )
        server.create("Namespace", namespace("after"))
        eventually(lambda: "after" in keys(state, "Namespace"), "the watch went on")
        assert [e.key for e in state.errors()] == [("", "Not_A_Label")]
    assert len(server.requests_for("Namespace", watch=True)) == 1
    assert stats(source, "Namespace").errors == 4
    assert stats(source, "Namespace").relists == 0


# -- the API server going away -------------------------------------------------------------


def _go_away(server: FakeApiServer, source: KubernetesSource, state: ClusterState) -> None:
    """Stop the server and check the source keeps the state while it retries."""
    revision = state.revision
    before = state.view().snapshot
    errors = total(source, "errors")
    server.stop()
    eventually(lambda: total(source, "errors") >= errors + 6, "retries while away")
    assert state.ready
    assert state.revision == revision
    assert state.view().snapshot == before


@pytest.mark.parametrize("compacted", [True, False], ids=["compacted-relist", "resumed-watch"])
def test_an_object_deleted_while_the_server_was_away_is_gone_after_the_reconnect(
    server: FakeApiServer, api_client: ApiClient, compacted: bool
) -> None:
    seed(server)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(all_watching(server), "all kinds watching")
        _go_away(server, source, state)

        server.delete("Namespace", "ns-2")
        server.delete("Pod", "pod-3", "ns-0")
        server.update("Namespace", namespace("ns-4", team="while-away"))
        if compacted:
            server.compact()
        server.start()

        eventually(lambda: matches_server(state, server), "state matches after the reconnect")
        assert "ns-2" not in keys(state, "Namespace")
        assert "ns-0/pod-3" not in keys(state, "Pod")
        eventually(all_watching(server), "all kinds watching again")
        server.create("Namespace", namespace("after"))
        eventually(lambda: "after" in keys(state, "Namespace"), "watching after the reconnect")

    if compacted:  # the old resourceVersion is gone: 410, relist
        assert stats(source, "Namespace").relists == 1
        assert stats(source, "Pod").relists == 1
    else:  # the watch resumed and the server delivered the DELETED events
        assert total(source, "relists") == 0
        assert stats(source, "Namespace").events == 3
        assert stats(source, "Pod").events == 1


def test_unreachable_at_start_then_the_server_appears(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    server.stop()
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(lambda: total(source, "errors") >= 6, "retries while unreachable")
        assert not state.ready
        server.start()
        eventually(lambda: state.ready, "ready once the server is up")
        assert matches_server(state, server)


# -- stopping ------------------------------------------------------------------------------


@pytest.mark.parametrize("situation", ["watching", "backing-off", "server-gone"])
def test_stop_is_prompt(server: FakeApiServer, api_client: ApiClient, situation: str) -> None:
    seed(server)
    state = ClusterState()
    # Long watches and long backoff: only an interrupt can make the stop prompt.
    source = make_source(api_client, watch_timeout=300, backoff_initial=30.0, backoff_max=60.0)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(state, stop), daemon=True)
    thread.start()
    try:
        eventually(all_watching(server), "all kinds watching")
        if situation == "backing-off":
            server.drop_watches()
            eventually(lambda: total(source, "errors") >= 3, "every kind backing off")
        elif situation == "server-gone":
            server.stop()
            eventually(lambda: total(source, "errors") >= 3, "every kind backing off")
    finally:
        started = time.monotonic()
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0


def test_backoff_doubles_up_to_the_cap_with_jitter(api_client: ApiClient) -> None:
    low = make_source(api_client, backoff_initial=0.5, backoff_max=4.0, jitter=lambda: 0.0)
    high = make_source(api_client, backoff_initial=0.5, backoff_max=4.0, jitter=lambda: 1.0)
    assert [low.backoff(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [high.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


# -- the agent's own Node: its pod ranges ------------------------------------------------------

NODE = "node-1"


def node(name: str, *cidrs: object, legacy: object = None, **status: str) -> dict[str, Any]:
    """A Node as the API server stores it; ``status`` stands for its frequent status updates."""
    spec: dict[str, Any] = {}
    if cidrs:
        spec["podCIDRs"] = list(cidrs)
    if legacy is not None:
        spec["podCIDR"] = legacy
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True", **status}]},
    }


def ranges(state: ClusterState) -> PodRanges | None:
    return state.view().pod_ranges


def ranges_are(state: ClusterState, *cidrs: str) -> Callable[[], bool]:
    return lambda: (found := ranges(state)) is not None and found.cidrs == cidrs


@pytest.mark.parametrize(
    ("spec", "cidrs", "errors"),
    [
        pytest.param(
            node(NODE, "10.244.1.0/24", "fd00:10:244:1::/64", legacy="10.244.1.0/24"),
            ("10.244.1.0/24", "fd00:10:244:1::/64"),
            [],
            id="dual-stack-with-legacy-field",
        ),
        pytest.param(node(NODE, legacy="10.244.2.0/24"), ("10.244.2.0/24",), [], id="legacy-only"),
        pytest.param(node(NODE), (), [], id="none-assigned"),
        pytest.param({"metadata": {"name": NODE}}, (), [], id="no-spec"),
        pytest.param(
            node(NODE, "10.244.1.7/24"), ("10.244.1.0/24",), [], id="host-bits-cleared-like-go"
        ),
        pytest.param(
            node(NODE, "010.244.001.000/24"),
            ("10.244.1.0/24",),
            [],
            id="leading-zeros-decimal-like-the-api-server",
        ),
        pytest.param(
            node(NODE, "fd00:10:244:1::/64", "10.244.1.0/24", "10.244.1.0/24"),
            ("10.244.1.0/24", "fd00:10:244:1::/64"),
            [],
            id="sorted-without-duplicates",
        ),
        pytest.param(
            node(NODE, "10.244.1.0/24", "10.244.1.0/33"),
            ("10.244.1.0/24",),
            ["spec.podCIDRs[1] is not a CIDR: '10.244.1.0/33'"],
            id="prefix-too-long",
        ),
        pytest.param(
            node(NODE, "not-a-cidr", 24, None),
            (),
            [
                "spec.podCIDRs[0] is not a CIDR: 'not-a-cidr'",
                "spec.podCIDRs[1] is not a string: 24",
                "spec.podCIDRs[2] is not a string: None",
            ],
            id="garbage",
        ),
        pytest.param(
            node(NODE, "0.0.0.0/0", "::/0", "fd00::/8"),
            ("fd00::/8",),
            [
                "spec.podCIDRs[0] covers every address, which is no node's pod range: 0.0.0.0/0",
                "spec.podCIDRs[1] covers every address, which is no node's pod range: ::/0",
            ],
            id="whole-address-space-refused",
        ),
        pytest.param(
            {"metadata": {"name": NODE}, "spec": {"podCIDRs": "10.244.1.0/24"}},
            (),
            ["spec.podCIDRs is not a list: '10.244.1.0/24'"],
            id="not-a-list",
        ),
        pytest.param(
            {"metadata": {"name": NODE}, "spec": ["10.244.1.0/24"]},
            (),
            ["spec is not an object: ['10.244.1.0/24']"],
            id="spec-not-an-object",
        ),
    ],
)
def test_pod_cidrs_from_node(
    spec: dict[str, Any], cidrs: tuple[str, ...], errors: list[str]
) -> None:
    assert pod_cidrs_from_node(spec) == (cidrs, errors)


def test_the_source_learns_the_pod_ranges_of_its_own_node_only(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    seed(server)
    server.create("Node", node(NODE, "10.244.1.0/24", "fd00:10:244:1::/64"))
    server.create("Node", node("node-2", "10.244.2.0/24"))
    state = ClusterState()
    source = make_source(api_client, node_name=NODE)
    with running(source, state):
        eventually(ranges_are(state, "10.244.1.0/24", "fd00:10:244:1::/64"), "the node's ranges")
        eventually(lambda: state.ready, "state ready")
        assert matches_server(state, server)
        found = ranges(state)
        assert found is not None and found.problem is None
        eventually(lambda: server.open_watches("Node") == 1, "watching the Node")

        # Nodes change all the time (conditions, heartbeats): neither the agent's own Node's
        # status nor another Node may cause a recompile.
        revision = state.revision
        server.update("Node", node(NODE, "10.244.1.0/24", "fd00:10:244:1::/64", reason="x"))
        server.update("Node", node("node-2", "10.244.9.0/24"))
        server.create("Namespace", namespace("marker"))
        eventually(lambda: "marker" in keys(state, "Namespace"), "a later event")
        eventually(lambda: stats(source, "Node").events == 2, "both Nodes' updates seen")
        assert state.revision == revision + 1, "only the namespace changed the cache"
        assert keys(state, "Node") == {NODE, "node-2"}
    # Every Node is read (ClusterNetworkPolicy nodes peers), in one list/watch.
    requests = server.requests_for("Node")
    assert requests and all("fieldSelector" not in r.query for r in requests)
    assert {r.watch for r in requests} == {False, True}
    assert stats(source, "Node").errors == 0


def test_pod_ranges_assigned_after_start_are_followed(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    seed(server)
    server.create("Node", node(NODE))  # joined, but the IPAM controller has not got to it yet
    state = ClusterState()
    with running(make_source(api_client, node_name=NODE), state):
        eventually(lambda: ranges(state) is not None, "the Node read")
        eventually(lambda: state.ready, "ready: a Node without podCIDRs holds nothing up")
        found = ranges(state)
        assert found is not None and found.cidrs == ()
        assert found.problem is not None
        assert "has no spec.podCIDRs" in found.problem and "--pod-cidr" in found.problem
        assert "new-pod guard is off" in found.problem
        assert any(
            r.levelname == "WARNING" and "--pod-cidr" in r.getMessage() for r in caplog.records
        )

        server.update("Node", node(NODE, "10.244.1.0/24"))
        eventually(ranges_are(state, "10.244.1.0/24"), "ranges assigned late")
        found = ranges(state)
        assert found is not None and found.problem is None

        server.update("Node", node(NODE, "10.244.1.0/24", "fd00:10:244:1::/64"))
        eventually(ranges_are(state, "10.244.1.0/24", "fd00:10:244:1::/64"), "second family")


def test_no_access_to_nodes_is_reported_and_enforcement_goes_on(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    seed(server)
    server.create("Node", node(NODE, "10.244.1.0/24"))
    server.forbid("Node")
    state = ClusterState()
    source = make_source(api_client, node_name=NODE)
    with running(source, state):
        eventually(lambda: ranges(state) is not None, "the failure reported")
        found = ranges(state)
        assert found is not None and found.cidrs == ()
        assert found.problem is not None
        assert "cannot read Node node-1 (HTTP 403 Forbidden)" in found.problem
        assert "get, list and watch on nodes" in found.problem and "--pod-cidr" in found.problem
        eventually(lambda: state.ready, "the other kinds listed all the same")
        server.create("Pod", pod("ns-0", "while-forbidden", "10.0.5.1"))
        eventually(lambda: "ns-0/while-forbidden" in keys(state, "Pod"), "pods still followed")
        eventually(lambda: stats(source, "Node").errors >= 3, "retried with backoff")
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "403" in r.getMessage()]
        assert len(errors) == 1, "logged once as an error, not at every retry"

        server.permit("Node")  # the ClusterRole is fixed
        eventually(ranges_are(state, "10.244.1.0/24"), "ranges once allowed")
        found = ranges(state)
        assert found is not None and found.problem is None

        # Losing access later keeps what was learnt: a failure never drops the guard.
        server.forbid("Node")
        eventually(lambda: "403" in str(getattr(ranges(state), "problem", "")), "the loss reported")
        found = ranges(state)
        assert found is not None and found.cidrs == ("10.244.1.0/24",)
        assert "the new-pod guard covers 10.244.1.0/24" in str(found.problem)


def test_malformed_pod_cidrs_are_left_out_with_an_error(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    seed(server)
    server.create("Node", node(NODE, "10.244.1.0/24", "10.244.1.0/33", legacy="garbage"))
    state = ClusterState()
    with running(make_source(api_client, node_name=NODE), state):
        eventually(ranges_are(state, "10.244.1.0/24"), "the valid range")
        found = ranges(state)
        assert found is not None and found.problem is not None
        assert "spec.podCIDRs[1] is not a CIDR: '10.244.1.0/33'" in found.problem
        assert "spec.podCIDR is not a CIDR: 'garbage'" in found.problem
        assert any(
            r.levelname == "ERROR" and "'10.244.1.0/33'" in r.getMessage() for r in caplog.records
        )
        # Only garbage: nothing enters the guard, and the agent says the guard is off.
        server.update("Node", node(NODE, "10.244.1.0/33"))
        eventually(ranges_are(state), "no valid range left")
        assert "new-pod guard is off" in str(getattr(ranges(state), "problem", ""))


@pytest.mark.parametrize("how", ["missing-at-start", "deleted-later"])
def test_a_missing_node_is_reported_and_known_ranges_are_kept(
    server: FakeApiServer, api_client: ApiClient, how: str
) -> None:
    seed(server)
    if how == "deleted-later":
        server.create("Node", node(NODE, "10.244.1.0/24"))
    state = ClusterState()
    with running(make_source(api_client, node_name=NODE), state):
        eventually(lambda: ranges(state) is not None, "the Node looked for")
        eventually(lambda: state.ready, "ready without the Node")
        if how == "missing-at-start":
            found = ranges(state)
            assert found is not None and found.cidrs == ()
            assert "Node node-1 does not exist" in str(found.problem)
            server.create("Node", node(NODE, "10.244.1.0/24"))  # the node registers itself
            eventually(ranges_are(state, "10.244.1.0/24"), "the registered Node's ranges")
        else:
            eventually(lambda: server.open_watches("Node") == 1, "watching the Node")
            server.delete("Node", NODE)
            eventually(
                lambda: "was deleted" in str(getattr(ranges(state), "problem", "")), "deletion"
            )
            found = ranges(state)
            assert found is not None and found.cidrs == ("10.244.1.0/24",)
            assert "the new-pod guard covers 10.244.1.0/24" in str(found.problem)


def test_without_a_node_name_nodes_are_read_for_peers_only(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    """--pod-cidr given: no pod ranges are read, but every Node is, for nodes peers."""
    seed(server)
    server.create("Node", node(NODE, "10.244.1.0/24"))
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(lambda: state.ready, "state ready")
        assert keys(state, "Node") == {NODE}
    assert state.view().pod_ranges is None


def test_nodes_forbidden_hold_nothing_up(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A ClusterRole from before ClusterNetworkPolicy (no list on every Node): the other kinds
    are enforced, no Node is known (no nodes peer matches), and the failure is logged."""
    seed(server)
    server.create("Node", node(NODE, "10.244.1.0/24"))
    server.forbid("Node")
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        eventually(lambda: stats(source, "Node").errors >= 1, "the Node list refused")
        eventually(lambda: state.ready, "ready without Nodes")
        assert keys(state, "Node") == set()
        assert "HTTP 403" in caplog.text
        server.permit("Node")
        eventually(lambda: keys(state, "Node") == {NODE}, "Nodes read once permitted")
        assert state.ready


@pytest.mark.parametrize(
    ("selector", "listed", "watched"),
    [
        pytest.param("metadata.name=node-1", ["node-1"], ["node-1"], id="equals"),
        pytest.param("metadata.name==node-2", ["node-2"], ["node-2"], id="double-equals"),
        pytest.param(
            "metadata.name!=node-1", ["node-2", "node-3"], ["node-4", "node-2"], id="not-equals"
        ),
        pytest.param("metadata.name=nowhere", [], [], id="no-match"),
        pytest.param(
            "", ["node-1", "node-2", "node-3"], ["node-4", "node-1", "node-2"], id="empty"
        ),
    ],
)
def test_fake_server_field_selector(
    server: FakeApiServer,
    api_client: ApiClient,
    selector: str,
    listed: list[str],
    watched: list[str],
) -> None:
    for name in ("node-1", "node-2", "node-3"):
        server.create("Node", node(name))
    core = client.CoreV1Api(api_client)
    nodes = core.list_node(field_selector=selector)
    assert [n.metadata.name for n in nodes.items] == listed
    server.create("Node", node("node-4"))
    for name in ("node-1", "node-2"):
        server.update("Node", node(name, "10.244.0.0/24"))
    events = watch.Watch().stream(
        core.list_node,
        field_selector=selector,
        resource_version=nodes.metadata.resource_version,
        timeout_seconds=1,
    )
    assert [e["object"].metadata.name for e in events] == watched


def test_fake_server_refuses_an_unknown_field_selector(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    with pytest.raises(ApiException) as raised:
        client.CoreV1Api(api_client).list_node(field_selector="spec.podCIDR=10.0.0.0/24")
    assert raised.value.status == 400
    assert "field label not supported" in raised.value.body


# -- ClusterNetworkPolicy: a CustomResourceDefinition that may be absent ------------------------

CNP = "ClusterNetworkPolicy"
CNP_PATH = "/apis/policy.networking.k8s.io/{}/clusternetworkpolicies"


def cnp(name: str, priority: int = 10, **spec: Any) -> dict[str, Any]:
    """A valid ClusterNetworkPolicy (Admin tier, every namespace, one Deny rule)."""
    return {
        "metadata": {"name": name},
        "spec": {
            "tier": "Admin",
            "priority": priority,
            "subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            **spec,
        },
    }


def cnp_paths(server: FakeApiServer) -> set[str]:
    return {r.path for r in server.requests_for(CNP)}


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        pytest.param(("v1beta1", "v1alpha2"), "v1beta1", id="both-prefers-v1beta1"),
        pytest.param(("v1alpha2", "v1beta1"), "v1beta1", id="v1beta1-not-preferred-by-server"),
        pytest.param(("v1alpha2",), "v1alpha2", id="v1alpha2-only"),
        pytest.param(("v1beta1",), "v1beta1", id="v1beta1-only"),
    ],
)
def test_cluster_network_policies_at_the_preferred_served_version(
    server: FakeApiServer, api_client: ApiClient, served: tuple[str, ...], expected: str
) -> None:
    server.install_crd(*served)
    seed(server)
    server.create(CNP, cnp("first"))
    state = RecordingState()
    source = make_source(api_client)
    with running(source, state):
        eventually(lambda: state.ready and keys(state, CNP) == {"first"}, "listed")
        eventually(lambda: server.open_watches(CNP) == 1, "watching")
        server.create(CNP, cnp("second", priority=20))
        eventually(lambda: keys(state, CNP) == {"first", "second"}, "watched")
        server.delete(CNP, "first")
        eventually(lambda: keys(state, CNP) == {"second"}, "deleted")
        assert matches_server(state, server)
    assert cnp_paths(server) == {CNP_PATH.format(expected)}
    received = [(how, obj["apiVersion"]) for how, kind, obj in state.received if kind == CNP]
    api_version = f"policy.networking.k8s.io/{expected}"
    assert received == [("replace", api_version), ("upsert", api_version)], "listed, watched"
    [policy] = state.view().snapshot.cluster_policies
    assert (policy.name, policy.priority) == ("second", 20)
    assert stats(source, CNP).resource_version is not None


def test_not_ready_until_the_served_cluster_network_policies_are_listed(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    """The readiness gate waits for the kind while its CRD is served, however slow its list."""
    seed(server)
    server.create(CNP, cnp("held"))
    server.hold_lists(CNP)
    state = ClusterState()
    source = make_source(api_client)
    with running(source, state):
        others = [kind for kind in KINDS if kind != CNP]
        eventually(
            lambda: server.held_lists(CNP) == 1 and all(stats(source, k).lists for k in others),
            "every other kind listed, ClusterNetworkPolicy's list held",
        )
        assert not state.ready
        server.release_lists(CNP)
        eventually(lambda: state.ready, "ready once listed")
        assert keys(state, CNP) == {"held"}
    assert server.held_lists(CNP) == 0


def test_crd_absent_is_a_warning_and_enforcement_goes_on(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.install_crd()  # not installed
    seed(server)
    state = ClusterState()
    source = make_source(api_client, discovery_interval=0.05)
    with running(source, state):
        eventually(lambda: state.ready, "ready without ClusterNetworkPolicies")
        assert matches_server(state, server)
        assert state.view().snapshot.policies, "NetworkPolicies are enforced"
        discoveries = lambda: sum(r.path == "/apis" for r in server.requests)  # noqa: E731
        eventually(lambda: discoveries() >= 3, "discovery asked again")
    assert server.requests_for(CNP) == [], "no list of a kind not served"
    warnings = [r for r in caplog.records if "ClusterNetworkPolicy: not served" in r.message]
    assert len(warnings) == 1, "said once, not at every discovery"
    assert warnings[0].levelname == "WARNING"
    assert "NetworkPolicy enforcement goes on" in warnings[0].message


def test_crd_installed_later_is_picked_up(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.sources.kubernetes")
    server.install_crd()
    seed(server)
    state = ClusterState()
    source = make_source(api_client, discovery_interval=0.05)
    with running(source, state):
        eventually(lambda: state.ready, "ready without the CRD")
        server.install_crd("v1alpha2")
        server.create(CNP, cnp("late"))
        eventually(lambda: keys(state, CNP) == {"late"}, "the CRD found, its policies listed")
        eventually(lambda: state.ready, "ready again once listed")
    assert "served as policy.networking.k8s.io/v1alpha2" in caplog.text


def test_crd_removed_while_running_drops_its_policies(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    seed(server)
    server.create(CNP, cnp("doomed"))
    state = ClusterState()
    source = make_source(api_client, discovery_interval=0.05)
    with running(source, state):
        eventually(lambda: state.ready and keys(state, CNP) == {"doomed"}, "listed")
        eventually(lambda: server.open_watches(CNP) == 1, "watching")
        server.remove_crd()
        eventually(lambda: keys(state, CNP) == set(), "its policies dropped")
        assert state.ready, "readiness does not wait for a kind no longer served"
        # The other kinds are still followed.
        server.create("Namespace", namespace("after"))
        eventually(lambda: "after" in keys(state, "Namespace"), "namespaces still watched")
        # Installed again: picked up again.
        server.install_crd("v1beta1")
        server.create(CNP, cnp("back"))
        eventually(lambda: keys(state, CNP) == {"back"}, "the CRD back")
    assert "is no longer served (HTTP 404" in caplog.text
    assert "its policies are dropped" in caplog.text


def test_a_version_no_longer_served_beside_another_is_left_without_dropping_anything(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRD updated to stop serving the version read while it serves another: the same
    objects, read at the other version, and never dropped meanwhile (an empty moment would lift
    their Deny rules)."""
    caplog.set_level(logging.INFO, logger="agent.sources.kubernetes")
    seed(server)
    server.create(CNP, cnp("kept"))
    state = RecordingState()
    source = make_source(api_client, discovery_interval=0.05)
    with running(source, state):
        eventually(lambda: state.ready and keys(state, CNP) == {"kept"}, "listed")
        eventually(lambda: server.open_watches(CNP) == 1, "watching")
        server.install_crd("v1alpha2")  # v1beta1 no longer served
        eventually(
            lambda: (
                CNP_PATH.format("v1alpha2") in cnp_paths(server) and server.open_watches(CNP) == 1
            ),
            "watching v1alpha2",
        )
        server.create(CNP, cnp("new"))
        eventually(lambda: keys(state, CNP) == {"kept", "new"}, "followed at v1alpha2")
    assert [names for kind, names in state.replacements if kind == CNP] == [["kept"], ["kept"]]
    assert "v1beta1 is no longer served" in caplog.text
    assert "dropped" not in caplog.text


def test_a_404_while_discovery_still_names_the_version_backs_off(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    """Discovery says the CRD serves the version, its list answers 404 (discovery lags behind a
    CRD's removal): each 404 in a row backs off before discovery is asked again, instead of
    the two requests alternating as fast as the server answers."""
    seed(server)
    server.create(CNP, cnp("found"))
    server.fail_next(CNP, 404, count=3, when="list")
    backoffs: list[float] = []

    def jitter() -> float:  # only consulted for a backoff; no other kind fails here
        backoffs.append(0.0)
        return 0.0

    state = ClusterState()
    with running(make_source(api_client, jitter=jitter, discovery_interval=0.05), state):
        eventually(lambda: keys(state, CNP) == {"found"}, "listed after the 404s")
    assert len(backoffs) == 3
    assert list_requests(server, CNP) == 4


def test_a_malformed_cluster_network_policy_is_enforced_fail_closed(
    server: FakeApiServer, api_client: ApiClient
) -> None:
    """The API server has validated what it stores, but a CRD of another version (or a
    schema-less one) may let anything through: never dropped, never opening anything."""
    seed(server)
    bad = cnp("bad", ingress=[{"action": "Allow", "from": [{"namespaces": {}}]}])  # no Allow
    server.create(CNP, bad)
    server.create(CNP, cnp("good"))
    state = ClusterState()
    with running(make_source(api_client), state):
        eventually(lambda: keys(state, CNP) == {"bad", "good"}, "both in the snapshot")
        [error] = state.errors()
    assert (error.kind, error.key) == (CNP, ("", "bad"))
    assert "enforced fail-closed" in error.message
    stand_in = next(p for p in state.view().snapshot.cluster_policies if p.name == "bad")
    assert all(rule.action.value == "Deny" for rule in (*stand_in.ingress, *stand_in.egress))
    assert stand_in.ingress or stand_in.egress


def test_served_refused_policy_kinds_are_logged_once_as_not_enforced(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.serve_api(
        "policy.networking.k8s.io",
        "v1alpha1",
        "AdminNetworkPolicy",
        "adminnetworkpolicies",
        namespaced=False,
    )
    server.serve_api(
        "cilium.io", "v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies", namespaced=True
    )
    server.install_crd()  # discovery is asked again and again: each kind still said once
    seed(server)
    state = ClusterState()
    source = make_source(api_client, discovery_interval=0.05)
    with running(source, state):
        eventually(lambda: state.ready, "ready")
        discoveries = lambda: sum(r.path == "/apis" for r in server.requests)  # noqa: E731
        eventually(lambda: discoveries() >= 3, "discovery asked again")
    refused = [r.message for r in caplog.records if "is not enforced" in r.message]
    assert sorted(refused) == sorted(
        [
            kinds.refusal("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy")
            + ": the API serves it, and its objects are not enforced",
            kinds.refusal("cilium.io/v2", "CiliumNetworkPolicy")
            + ": the API serves it, and its objects are not enforced",
        ]
    )
    assert all(r.levelname == "WARNING" for r in caplog.records if "is not enforced" in r.message)


def test_discovery_forbidden_holds_nothing_up(
    server: FakeApiServer, api_client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    seed(server)
    server.forbid_discovery()
    state = ClusterState()
    source = make_source(api_client, discovery_interval=0.05)
    with running(source, state):
        eventually(lambda: state.ready, "ready without knowing whether the CRD is served")
        assert keys(state, CNP) == set()
        server.forbid_discovery(False)
        server.create(CNP, cnp("found"))
        eventually(lambda: keys(state, CNP) == {"found"}, "found once discovery answers")
    assert "API discovery failed (HTTP 403" in caplog.text
