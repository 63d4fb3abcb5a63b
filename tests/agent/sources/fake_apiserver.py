"""A fake Kubernetes API server on 127.0.0.1 speaking the list/watch protocol over real HTTP.

It serves Namespaces, Pods, NetworkPolicies, Nodes and (when its CustomResourceDefinition is
installed) ClusterNetworkPolicies the way kube-apiserver does, closely enough that the official
client cannot tell:

- ``GET /api/v1/namespaces``, ``/api/v1/pods``, ``/apis/networking.k8s.io/v1/networkpolicies``,
  ``/api/v1/nodes`` and the namespaced variants (``/api/v1/namespaces/{ns}/pods``, ...);
  ``/version``, ``/api`` and ``/apis`` answer minimal discovery documents, and so do
  ``/apis/GROUP`` (APIGroup) and ``/apis/GROUP/VERSION`` (APIResourceList) for the groups served.
- ClusterNetworkPolicies (``/apis/policy.networking.k8s.io/VERSION/clusternetworkpolicies``) are
  served only at the versions ``install_crd`` names, one storage for all of them, as a CRD with
  several served versions is; any other version is 404. ``remove_crd`` deletes the CRD while
  running: its objects are gone, its open watches end, and every later request is 404. Objects
  come back at the version asked for (lists and watch events alike): the versions of a CRD
  without a conversion webhook differ in ``apiVersion`` only.
  ``serve_api`` adds a resource to discovery only (a kind the agent refuses, like Cilium's).
- ``fieldSelector`` ``metadata.name=NAME`` (also ``==`` and ``!=``, comma-separated terms ANDed)
  filters lists and watches; any other field is refused with 400, as the real server refuses a
  field it does not index for that kind.
- Lists are consistent snapshots, paginated with ``limit`` and an opaque ``continue`` token. Items
  come without ``kind``/``apiVersion``; the list carries ``metadata.resourceVersion``. A continue
  token older than the compaction point is answered with HTTP 410 ``Expired``.
- ``watch=true`` answers ``200`` with a ``Transfer-Encoding: chunked`` stream of JSON lines
  ``{"type": ..., "object": ...}`` for every change newer than ``resourceVersion``; a
  resourceVersion older than the compaction point gets a single ``ERROR`` event carrying a 410
  ``Status``. ``timeoutSeconds`` ends the stream cleanly; ``allowWatchBookmarks=true`` lets
  ``bookmark()`` send ``BOOKMARK`` events.
- Errors are ``Status`` objects with the matching HTTP code, like the real server's.

resourceVersions come from one counter for all kinds, as in etcd. The objects live in the test's
process, apart from the HTTP listener, so ``stop()`` (every connection closed, the port refused)
and ``start()`` (the same port again) simulate an API server that goes away and comes back while
tests keep changing objects.

Test controls: ``create``/``update``/``delete``, ``compact()``, ``bookmark()``, ``drop_watches()``,
``inject_raw()`` (a raw line into open watch streams), ``fail_next()`` (canned error answers),
``forbid()``/``permit()`` (403 for a kind, as when RBAC does not grant it), ``install_crd()``/
``remove_crd()``/``serve_api()``, ``hold_lists()``/``release_lists()`` (a list left unanswered,
as a slow server's is), ``stop()``/``start()`` and the request log ``requests``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Kind = Literal["Namespace", "Pod", "NetworkPolicy", "Node", "ClusterNetworkPolicy"]
Phase = Literal["any", "list", "continue", "watch"]


@dataclass(frozen=True)
class Resource:
    kind: Kind
    api_version: str
    plural: str
    namespaced: bool

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


RESOURCES: dict[Kind, Resource] = {
    "Namespace": Resource("Namespace", "v1", "namespaces", namespaced=False),
    "Pod": Resource("Pod", "v1", "pods", namespaced=True),
    "NetworkPolicy": Resource("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", True),
    "Node": Resource("Node", "v1", "nodes", namespaced=False),
    "ClusterNetworkPolicy": Resource(
        "ClusterNetworkPolicy",
        "policy.networking.k8s.io/v1alpha2",
        "clusternetworkpolicies",
        namespaced=False,
    ),
}
"""Each kind served; ClusterNetworkPolicy's ``api_version`` names its group (its versions are
the ones ``install_crd`` serves)."""

CRD_KIND: Kind = "ClusterNetworkPolicy"
CRD_GROUP = "policy.networking.k8s.io"

SELECTABLE_FIELDS = ("metadata.name",)
"""The fields ``fieldSelector`` may name (the real server adds per-kind ones we do not need)."""

FieldSelector = tuple[tuple[str, bool, str], ...]
"""(field, equal?, value) terms, all of which must hold."""


def parse_field_selector(text: str) -> FieldSelector:
    """``metadata.name=x,metadata.name!=y`` into terms; ``ValueError`` names what is wrong."""
    terms = []
    for term in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if match is None:
            raise ValueError(f"invalid field selector term {term!r}")
        name, operator, value = match.groups()
        if name not in SELECTABLE_FIELDS:
            raise ValueError(f'field label not supported: "{name}"')
        terms.append((name, operator != "!=", value))
    return tuple(terms)


def selected(obj: Mapping[str, Any], selector: FieldSelector) -> bool:
    for name, equal, value in selector:
        actual = obj.get("metadata", {}).get("name") if name == "metadata.name" else None
        if (actual == value) != equal:
            return False
    return True


_ROUTES: list[tuple[re.Pattern[str], Kind]] = [
    (
        re.compile(rf"^/apis/{re.escape(CRD_GROUP)}/(?P<version>[^/]+)/clusternetworkpolicies$"),
        CRD_KIND,
    )
]
for _resource in RESOURCES.values():
    if _resource.kind == CRD_KIND:
        continue
    _ROUTES.append((re.compile(rf"^{_resource.prefix}/{_resource.plural}$"), _resource.kind))
    if _resource.namespaced:
        _ROUTES.append(
            (
                re.compile(rf"^{_resource.prefix}/namespaces/(?P<ns>[^/]+)/{_resource.plural}$"),
                _resource.kind,
            )
        )

DEFAULT_WATCH_SECONDS = 1800


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (or began to answer, for a watch)."""

    method: str
    path: str
    query: Mapping[str, str]
    kind: Kind | None
    watch: bool
    status: int

    @property
    def is_list(self) -> bool:
        return self.kind is not None and not self.watch


@dataclass(frozen=True)
class Event:
    revision: int
    kind: Kind
    type: str
    object: dict[str, Any]


@dataclass
class _Fault:
    kind: Kind | None
    status: int
    when: Phase
    count: int


@dataclass
class _Watcher:
    kind: Kind
    namespace: str | None
    selector: FieldSelector
    connection: socket.socket
    allow_bookmarks: bool
    api_version: str
    """The apiVersion the watch asked for: its objects and bookmarks carry it."""
    raw_lines: list[tuple[int, bytes]] = field(default_factory=list)
    """Injected lines, each after the changes up to the revision it was injected at."""
    bookmarks: int = 0


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata["name"]))


class FakeApiServer:
    """The store and controls; the HTTP listener comes and goes with ``start``/``stop``."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        """The bearer token requests must carry, or None to accept any request."""
        self.port = 0
        self.requests: list[RequestRecord] = []
        self._cond = threading.Condition()
        self._revision = 100
        self._objects: dict[Kind, dict[tuple[str, str], dict[str, Any]]] = {
            kind: {} for kind in RESOURCES
        }
        self._events: list[Event] = []
        self._compacted = 0
        """Watches and continue tokens from before this revision are answered 410."""
        self._snapshots: dict[str, list[dict[str, Any]]] = {}
        """Consistent list snapshots behind continue tokens, by snapshot id."""
        self._watchers: list[_Watcher] = []
        self._faults: list[_Fault] = []
        self._forbidden: set[Kind] = set()
        self._bookmarks = 0
        self._drops = 0
        self._expiries = 0
        self._paused = False
        self._crd_versions: tuple[str, ...] = ()
        """The versions the ClusterNetworkPolicy CRD serves, preferred first; empty: absent."""
        self._crd_removals = 0
        self._discovery_forbidden = False
        self._extra_apis: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._held: set[Kind] = set()
        """Kinds whose list requests wait, unanswered, until ``release_lists``."""
        self._held_requests: dict[Kind, int] = {}
        """List requests waiting now, by kind."""
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> None:
        """Listen on 127.0.0.1 (a free port the first time, the same port after a ``stop``)."""
        if self._httpd is not None:
            return
        httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Go away abruptly: stop listening and cut every open connection, watches included."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._cond:
            self._drops += 1
            self._cond.notify_all()
        httpd.cut_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the store -------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._revision)

    def objects(self, kind: Kind) -> list[dict[str, Any]]:
        """Deep copies of the stored objects of ``kind``."""
        with self._cond:
            return [copy.deepcopy(obj) for _, obj in sorted(self._objects[kind].items())]

    def create(self, kind: Kind, obj: Mapping[str, Any]) -> dict[str, Any]:
        with self._cond:
            stored = self._prepared(kind, obj)
            key = _key(stored)
            if key in self._objects[kind]:
                raise KeyError(f"{kind} {key} already exists")
            stored["metadata"]["uid"] = str(uuid.uuid4())
            stored["metadata"]["creationTimestamp"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
            )
            return self._commit(kind, "ADDED", stored)

    def update(self, kind: Kind, obj: Mapping[str, Any]) -> dict[str, Any]:
        with self._cond:
            stored = self._prepared(kind, obj)
            key = _key(stored)
            old = self._objects[kind].get(key)
            if old is None:
                raise KeyError(f"{kind} {key} does not exist")
            for field_name in ("uid", "creationTimestamp"):
                stored["metadata"][field_name] = old["metadata"][field_name]
            return self._commit(kind, "MODIFIED", stored)

    def delete(self, kind: Kind, name: str, namespace: str = "") -> dict[str, Any]:
        with self._cond:
            old = self._objects[kind].get((namespace, name))
            if old is None:
                raise KeyError(f"{kind} {(namespace, name)} does not exist")
            return self._commit(kind, "DELETED", copy.deepcopy(old))

    def compact(self) -> str:
        """Forget history up to now, like etcd compaction: older watches and tokens get 410."""
        with self._cond:
            return self._compact_locked()

    def _compact_locked(self) -> str:
        self._compacted = self._revision
        self._events = [e for e in self._events if e.revision > self._compacted]
        self._snapshots.clear()
        return str(self._compacted)

    # -- watch controls ----------------------------------------------------------------------

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion on every watch that allows them."""
        with self._cond:
            self._bookmarks += 1
            self._cond.notify_all()

    def drop_watches(self) -> int:
        """Cut every open watch connection abruptly (no final chunk); how many were cut."""
        with self._cond:
            watchers = list(self._watchers)
            self._drops += 1
            self._cond.notify_all()
        for watcher in watchers:
            _cut(watcher.connection)
        return len(watchers)

    def pause_watches(self) -> None:
        """Hold back events from open watches (a lagging watch cache) until ``resume_watches``."""
        with self._cond:
            self._paused = True

    def resume_watches(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def expire_watches(self) -> None:
        """Compact, and end every open watch with a 410 ERROR event, as a lagging watch is."""
        with self._cond:
            self._compact_locked()
            self._expiries += 1
            self._cond.notify_all()

    def inject_raw(self, kind: Kind, line: bytes) -> None:
        """Send ``line`` (plus a newline) as is on every open watch of ``kind``, in order.

        It follows the changes made so far; while watches are paused it is held back with them.
        """
        with self._cond:
            for watcher in self._watchers:
                if watcher.kind == kind:
                    watcher.raw_lines.append((self._revision, line + b"\n"))
            self._cond.notify_all()

    def hold_lists(self, kind: Kind) -> None:
        """Leave every list request of ``kind`` (first pages and continues) unanswered until
        ``release_lists``, as a server slow to answer a large list does; watches are not held."""
        with self._cond:
            self._held.add(kind)

    def release_lists(self, kind: Kind) -> None:
        """Answer the held list requests of ``kind`` (from the state at the time of release)."""
        with self._cond:
            self._held.discard(kind)
            self._cond.notify_all()

    def held_lists(self, kind: Kind) -> int:
        """How many list requests of ``kind`` are waiting for ``release_lists`` now."""
        with self._cond:
            return self._held_requests.get(kind, 0)

    def open_watches(self, kind: Kind | None = None) -> int:
        with self._cond:
            return sum(1 for w in self._watchers if kind is None or w.kind == kind)

    def fail_next(
        self, kind: Kind | None, status: int, count: int = 1, when: Phase = "any"
    ) -> None:
        """Answer the next ``count`` matching requests with an error ``Status`` of ``status``."""
        with self._cond:
            self._faults.append(_Fault(kind, status, when, count))

    def forbid(self, kind: Kind) -> None:
        """Answer every request for ``kind`` with 403 Forbidden until ``permit`` (no RBAC grant);
        open watches of the kind are cut, as when a role binding is removed."""
        with self._cond:
            self._forbidden.add(kind)
            self._cond.notify_all()  # the watches of the kind see it and are cut

    def permit(self, kind: Kind) -> None:
        with self._cond:
            self._forbidden.discard(kind)

    # -- the ClusterNetworkPolicy CRD and discovery --------------------------------------------

    def install_crd(self, *versions: str) -> None:
        """Serve ClusterNetworkPolicies at ``versions`` (the first is the group's preferred
        version in discovery), as installing (or updating) their CRD does; open watches of a
        version no longer served end, as the API server's CRD handler ends them when it replaces
        the CRD's storage."""
        with self._cond:
            self._crd_versions = versions
            self._cond.notify_all()

    def remove_crd(self) -> None:
        """Delete the CRD: its objects are gone (no events: the storage goes with it), its open
        watches end, and its paths answer 404 from now on."""
        with self._cond:
            self._crd_versions = ()
            self._objects[CRD_KIND].clear()
            self._revision += 1
            self._crd_removals += 1
            self._cond.notify_all()

    def forbid_discovery(self, forbidden: bool = True) -> None:
        """Answer ``/apis...`` discovery with 403, as a cluster that removed system:discovery."""
        with self._cond:
            self._discovery_forbidden = forbidden

    def crd_served(self, version: str) -> bool:
        with self._cond:
            return version in self._crd_versions

    def serve_api(
        self, group: str, version: str, kind: str, plural: str, *, namespaced: bool
    ) -> None:
        """List ``kind`` in discovery under ``group/version`` (nothing more is served)."""
        with self._cond:
            self._extra_apis.setdefault((group, version), []).append(
                {"name": plural, "kind": kind, "namespaced": namespaced, "verbs": ["list"]}
            )

    def discovery_apis(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """(group, version) to the APIResource entries of every API group beyond the core."""
        with self._cond:
            apis: dict[tuple[str, str], list[dict[str, Any]]] = {
                ("networking.k8s.io", "v1"): [
                    {"name": "networkpolicies", "kind": "NetworkPolicy", "namespaced": True}
                ]
            }
            for version in self._crd_versions:
                apis[(CRD_GROUP, version)] = [
                    {"name": "clusternetworkpolicies", "kind": CRD_KIND, "namespaced": False}
                ]
            for key, resources in self._extra_apis.items():
                apis.setdefault(key, []).extend(resources)
            return apis

    # -- request log -------------------------------------------------------------------------

    def requests_for(self, kind: Kind, *, watch: bool | None = None) -> list[RequestRecord]:
        with self._cond:
            return [
                r for r in self.requests if r.kind == kind and (watch is None or r.watch == watch)
            ]

    # -- internals (lock held) ---------------------------------------------------------------

    def _prepared(self, kind: Kind, obj: Mapping[str, Any]) -> dict[str, Any]:
        resource = RESOURCES[kind]
        stored = copy.deepcopy(dict(obj))
        stored["kind"] = kind
        stored["apiVersion"] = resource.api_version
        metadata = stored.setdefault("metadata", {})
        if not resource.namespaced:
            metadata.pop("namespace", None)
        elif not metadata.get("namespace"):
            metadata["namespace"] = "default"
        return stored

    def _commit(self, kind: Kind, event_type: str, stored: dict[str, Any]) -> dict[str, Any]:
        self._revision += 1
        stored["metadata"]["resourceVersion"] = str(self._revision)
        if event_type == "DELETED":
            del self._objects[kind][_key(stored)]
        else:
            self._objects[kind][_key(stored)] = stored
        self._events.append(Event(self._revision, kind, event_type, copy.deepcopy(stored)))
        self._cond.notify_all()
        return copy.deepcopy(stored)

    def _take_fault(self, kind: Kind | None, phase: Phase) -> int | None:
        for fault in self._faults:
            if fault.kind not in (None, kind) or fault.when not in ("any", phase):
                continue
            fault.count -= 1
            if fault.count <= 0:
                self._faults.remove(fault)
            return fault.status
        return None

    def _wait_while_held(self, kind: Kind, server: _HTTPServer) -> bool:
        """Block a list request of ``kind`` while lists of it are held; False if the server
        stopped meanwhile (the request is then never answered)."""
        with self._cond:
            self._held_requests[kind] = self._held_requests.get(kind, 0) + 1
            try:
                while kind in self._held and not server.stopped:
                    self._cond.wait(0.05)  # ``stop`` marks the server stopped without notifying
            finally:
                self._held_requests[kind] -= 1
            return not server.stopped

    def _log(self, record: RequestRecord) -> None:
        with self._cond:
            self.requests.append(record)

    # -- request handling (called by the handler threads) --------------------------------------

    def list_page(
        self,
        kind: Kind,
        namespace: str | None,
        limit: int | None,
        token: str | None,
        selector: FieldSelector = (),
    ) -> tuple[int, dict[str, Any]]:
        resource = RESOURCES[kind]
        with self._cond:
            if token:
                try:
                    decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                    snapshot_id, revision, offset = (
                        decoded["id"],
                        int(decoded["rv"]),
                        int(decoded["start"]),
                    )
                except (ValueError, KeyError, TypeError):
                    return 400, status_object(400, "BadRequest", "invalid continue token")
                items = self._snapshots.get(snapshot_id)
                if items is None or revision < self._compacted:
                    return 410, status_object(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter.",
                    )
            else:
                revision, offset = self._revision, 0
                items = [
                    obj
                    for key, obj in sorted(self._objects[kind].items())
                    if (namespace is None or key[0] == namespace) and selected(obj, selector)
                ]
                snapshot_id = uuid.uuid4().hex
            end = len(items) if not limit else min(len(items), offset + limit)
            metadata: dict[str, Any] = {"resourceVersion": str(revision)}
            if end < len(items):
                self._snapshots[snapshot_id] = items
                metadata["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"id": snapshot_id, "rv": revision, "start": end}).encode()
                ).decode()
                metadata["remainingItemCount"] = len(items) - end
            page = []
            for obj in items[offset:end]:
                item = copy.deepcopy(obj)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                page.append(item)
        body = {
            "kind": f"{kind}List",
            "apiVersion": resource.api_version,
            "metadata": metadata,
            "items": page,
        }
        return 200, body


def _cut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeApiServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.stopped = False

    def track(self, connection: socket.socket, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
                if self.stopped:  # accepted just before the stop: cut it too
                    _cut(connection)
            else:
                self._connections.discard(connection)

    def cut_connections(self) -> None:
        with self._connections_lock:
            self.stopped = True
            connections = list(self._connections)
        for connection in connections:
            _cut(connection)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        self.server.track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # the client went away, or the test cut the connection
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def fake(self) -> FakeApiServer:
        return self.server.fake

    def _send_json(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_status(self, code: int, message: str | None = None) -> None:
        reasons = {
            400: "BadRequest",
            401: "Unauthorized",
            403: "Forbidden",
            404: "NotFound",
            405: "MethodNotAllowed",
            410: "Expired",
            429: "TooManyRequests",
            500: "InternalError",
            503: "ServiceUnavailable",
            504: "Timeout",
        }
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self._send_json(
            code, status_object(code, reasons.get(code, "Unknown"), message or phrase.lower())
        )

    def _collect(
        self,
        watcher: _Watcher,
        since: int,
        pending: list[bytes],
        matches: Callable[[Event], bool],
    ) -> int:
        """Queue the events after ``since``, injected lines and a due bookmark, in order.

        Returns the new ``since``. The server's lock is held.
        """
        fake = self.fake
        entries = [
            (e.revision, 0, _event_line(e.type, _served_as(e.object, watcher.api_version)))
            for e in fake._events
            if e.revision > since and matches(e)
        ]
        entries.extend((revision, 1, line) for revision, line in watcher.raw_lines)
        watcher.raw_lines.clear()
        entries.sort(key=lambda entry: entry[:2])
        pending.extend(line for _, _, line in entries)
        # Changes of other kinds are not this watch's business; it is up to date with them.
        since = max(since, fake._revision)
        if watcher.bookmarks != fake._bookmarks:
            watcher.bookmarks = fake._bookmarks
            if watcher.allow_bookmarks:
                bookmark = {
                    "kind": watcher.kind,
                    "apiVersion": watcher.api_version,
                    "metadata": {"resourceVersion": str(fake._revision)},
                }
                pending.append(_event_line("BOOKMARK", bookmark))
        return since

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    # -- requests ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path.rstrip("/") or "/"
        kind: Kind | None = None
        namespace: str | None = None
        version: str | None = None
        for pattern, route_kind in _ROUTES:
            match = pattern.match(path)
            if match:
                kind = route_kind
                namespace = match.groupdict().get("ns")
                version = match.groupdict().get("version")
                break
        watch = query.get("watch") in ("true", "1", "True")

        def log(status: int) -> None:
            self.fake._log(RequestRecord("GET", path, query, kind, watch, status))

        fake = self.fake
        if self.server.stopped:
            self.close_connection = True
            _cut(self.connection)
            return
        if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
            log(401)
            self._send_status(401, "Unauthorized")
            return
        if kind is None:
            with fake._cond:
                discovery_forbidden = fake._discovery_forbidden
            if discovery_forbidden and path.startswith("/apis"):
                log(403)
                self._send_status(403, f'forbidden: User "netpol-agent" cannot get path "{path}"')
                return
            discovery = _discovery(path, fake.discovery_apis())
            log(200 if discovery is not None else 404)
            if discovery is None:
                self._send_status(404, f"the server could not find the requested resource {path}")
            else:
                self._send_json(200, discovery)
            return
        if version is not None and not fake.crd_served(version):
            log(404)
            self._send_status(404, f"the server could not find the requested resource {path}")
            return
        phase: Phase = "watch" if watch else ("continue" if query.get("continue") else "list")
        with fake._cond:
            fault = fake._take_fault(kind, phase)
            forbidden = kind in fake._forbidden
        if forbidden:
            log(403)
            verb = "watch" if watch else "list"
            resource = RESOURCES[kind]
            group = resource.api_version.rpartition("/")[0]
            self._send_status(
                403,
                f'{resource.plural} is forbidden: User "system:serviceaccount:kube-system:'
                f'netpol-agent" cannot {verb} resource "{resource.plural}" in API group '
                f'"{group}" at the cluster scope',
            )
            return
        if fault is not None:
            log(fault)
            self._send_status(fault, f"injected failure {fault}")
            return
        try:
            selector = parse_field_selector(query.get("fieldSelector") or "")
        except ValueError as error:
            log(400)
            self._send_status(400, str(error))
            return
        api_version = RESOURCES[kind].api_version if version is None else f"{CRD_GROUP}/{version}"
        if watch:
            self._watch(kind, namespace, selector, query, api_version, log)
            return
        try:
            limit = int(query["limit"]) if query.get("limit") else None
        except ValueError:
            log(400)
            self._send_status(400, "limit must be an integer")
            return
        if not fake._wait_while_held(kind, self.server):
            self.close_connection = True
            _cut(self.connection)
            return
        status, body = fake.list_page(
            kind, namespace, limit, query.get("continue") or None, selector
        )
        if status == HTTPStatus.OK:  # a Status object keeps its own v1
            body["apiVersion"] = api_version
        log(status)
        self._send_json(status, body)

    def _watch(
        self,
        kind: Kind,
        namespace: str | None,
        selector: FieldSelector,
        query: Mapping[str, str],
        api_version: str,
        log: Callable[[int], None],
    ) -> None:
        fake = self.fake
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1", "True")
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        except ValueError:
            log(400)
            self._send_status(400, "timeoutSeconds must be a number")
            return
        deadline = time.monotonic() + timeout
        requested = query.get("resourceVersion") or ""
        log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def matches(event: Event) -> bool:
            if event.kind != kind or not selected(event.object, selector):
                return False
            return namespace is None or event.object["metadata"].get("namespace") == namespace

        gone: bytes | None = None
        with fake._cond:
            pending: list[bytes] = []
            if requested in ("", "0"):
                # "Any version": synthetic ADDED events for the current state, then changes.
                for key, obj in sorted(fake._objects[kind].items()):
                    if (namespace is None or key[0] == namespace) and selected(obj, selector):
                        pending.append(_event_line("ADDED", _served_as(obj, api_version)))
                since = fake._revision
            else:
                try:
                    since = int(requested)
                except ValueError:
                    since = -1
                if since < fake._compacted:
                    gone = _gone_line(f"too old resource version: {requested} ({fake._compacted})")
            watcher = _Watcher(
                kind,
                namespace,
                selector,
                self.connection,
                bookmarks,
                api_version,
                bookmarks=fake._bookmarks,
            )
            drops, expiries, expired = fake._drops, fake._expiries, False
            removals = fake._crd_removals
            if gone is None:
                fake._watchers.append(watcher)
        if gone is not None:
            self._chunk(gone)
            self._chunk(b"")
            return
        try:
            while True:
                with fake._cond:
                    while True:
                        if fake._drops != drops or kind in fake._forbidden:
                            self.close_connection = True
                            _cut(self.connection)  # abrupt: no final chunk
                            return
                        if fake._expiries != expiries:
                            expired = True
                            break
                        if kind == CRD_KIND and (
                            fake._crd_removals != removals
                            or api_version.rpartition("/")[2] not in fake._crd_versions
                        ):
                            deadline = 0.0  # the CRD was deleted or changed: its watches end
                            break
                        if not fake._paused:
                            since = self._collect(watcher, since, pending, matches)
                        remaining = deadline - time.monotonic()
                        if pending or remaining <= 0:
                            break
                        fake._cond.wait(remaining)
                for line in pending:
                    self._chunk(line)
                pending = []
                if expired:
                    self._chunk(_gone_line("the watch fell behind: too old resource version"))
                    self._chunk(b"")
                    return
                if deadline - time.monotonic() <= 0:
                    self._chunk(b"")  # the clean end of a chunked body
                    return
        finally:
            with fake._cond:
                fake._watchers.remove(watcher)


def _served_as(obj: Mapping[str, Any], api_version: str) -> Mapping[str, Any]:
    """``obj`` as a request for ``api_version`` gets it: a CRD without a conversion webhook
    (strategy None) serves the same stored object at every served version, with only its
    ``apiVersion`` changed (apiextensions-apiserver's nopConverter)."""
    return obj if obj.get("apiVersion") == api_version else {**obj, "apiVersion": api_version}


def _event_line(event_type: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"


def _gone_line(message: str) -> bytes:
    return _event_line("ERROR", status_object(410, "Expired", message))


def _discovery(
    path: str, apis: Mapping[tuple[str, str], list[dict[str, Any]]]
) -> dict[str, Any] | None:
    if path == "/version":
        return {
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-fake",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
            ],
        }
    groups: dict[str, list[str]] = {}
    for group, version in apis:
        groups.setdefault(group, []).append(version)

    def api_group(name: str) -> dict[str, Any]:
        versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
        return {"name": name, "versions": versions, "preferredVersion": versions[0]}

    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [api_group(name) for name in groups],
        }
    parts = path.split("/")
    if len(parts) == 3 and parts[1] == "apis" and parts[2] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **api_group(parts[2])}
    if len(parts) == 4 and parts[1] == "apis" and (parts[2], parts[3]) in apis:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{parts[2]}/{parts[3]}",
            "resources": [
                {"singularName": "", "verbs": ["get", "list", "watch"], **resource}
                for resource in apis[(parts[2], parts[3])]
            ],
        }
    return None
