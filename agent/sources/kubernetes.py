"""The Kubernetes API as a source of cluster state: list, then watch, per kind.

One thread per kind of the registry (``agent.kinds.KINDS``: Namespaces, Pods and NetworkPolicies
in all namespaces, ClusterNetworkPolicies, Nodes) runs the list/watch loop every controller runs:

1. **List** the kind in pages (``limit`` / ``continue``; a 410 on a continue token restarts the
   list) and hand the full list to the cache with ``ClusterState.replace``: whatever is not in
   it is gone, so a deletion missed while disconnected is never forgotten.
2. **Watch** from the list's resourceVersion with bookmarks on. ADDED/MODIFIED upsert, DELETED
   deletes, BOOKMARK only advances the resourceVersion, an ERROR event ends the watch and relists
   (410 Gone/Expired is the expected case: the resourceVersion was compacted away).
3. A watch that ends (its ``timeoutSeconds`` ran out) or whose connection drops is resumed from
   the last resourceVersion seen, without a relist. Only 410 (or another ERROR event) relists.
4. An unreachable API server, a 5xx or any other failure is retried with capped exponential
   backoff with jitter. The cache keeps the last known state meanwhile; it is never cleared.

Nodes. ClusterNetworkPolicy ``nodes`` peers need every Node's labels and addresses, so every
Node is listed and watched (one loop), into the cache; a Node update that changes neither labels
nor addresses (status heartbeats) changes nothing there. The same stream gives the agent's own
Node (``--node-name``) its pod ranges (``spec.podCIDRs``, the legacy ``spec.podCIDR``), which turn
on the new-pod guard (``enforcement.firewall``). A missing own Node, one without podCIDRs (some
network plugins allocate pod addresses themselves) or a malformed value is reported (logged, in
the status, in the metrics) and enforcement goes on, with the ranges last known or without the
guard; ``--pod-cidr`` replaces the ranges (the Nodes are still read, for ``nodes`` peers). No
permission to read Nodes (a ClusterRole from before ClusterNetworkPolicy) is an error that does
not hold readiness up: no Node is known, so no ``nodes`` peer matches anything.

ClusterNetworkPolicies are a CustomResourceDefinition that may be absent. Their loop asks API
discovery (``GET /apis``, then ``/apis/GROUP/VERSION``: what ``kubectl api-resources`` reads,
allowed to every authenticated user) which of the kind's versions is served, preferring
``v1beta1``, then ``v1alpha2``, and lists and watches that version. Not served: a warning,
enforcement of the other kinds goes on, readiness does not wait for the kind, and discovery is
asked again every ``discovery_interval`` seconds, so a CRD installed later is picked up. Removed
while running (its list or watch answers 404, and discovery names no other version serving it): a
warning, its policies are dropped (they no longer exist), and discovery is asked again. A version
served later beside the one read (say ``v1beta1`` added to a CRD serving ``v1alpha2``) is taken up
only when the one read stops being served: both hold the same objects, so they are then listed at
the other version without being dropped first (which would lift their Deny rules for a moment).
Every discovery also looks for the policy kinds netpol-agent refuses
(``agent.kinds.REFUSED_POLICY_KINDS``: AdminNetworkPolicy v1alpha1, Cilium's, Calico's, Antrea's):
each one served is logged once as not enforced. Discovery runs at the start and while
ClusterNetworkPolicy is not served, not on a timer while it is (a refused kind's CRD installed
while the agent runs is logged at its next start): every agent of a large cluster asking every
``discovery_interval`` seconds would be a steady load on the API server for nothing.

Handlers only write into the cache (which marks the agent dirty); compiling happens elsewhere,
coalesced. Responses are read raw (``_preload_content=False``) and parsed here as JSON, so the
objects reach the cache in the API's own camelCase shape; list items get back the ``kind`` and
``apiVersion`` that list responses leave out. Stopping is prompt: ``run`` shuts down the socket
of every response in flight as soon as ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from agent import kinds
from agent.kinds import KindSpec
from agent.logs import fields
from agent.state import ClusterState, Kind, PodRanges

log = logging.getLogger(__name__)

GONE = 410
"""HTTP 410 Gone: a resourceVersion or continue token older than the server keeps."""

STOP_GRACE = 2.0
"""Seconds ``run`` waits for its threads after ``stop`` was set and their reads interrupted."""

MAX_LIST_RESTARTS = 5
"""How often one list restarts after its continue token expired before it counts as failed."""

SourceKind = Kind
"""What the source lists and watches: the cache's kinds (``agent.state.KINDS``)."""

OPTIONAL_KINDS: frozenset[Kind] = frozenset(
    {kinds.NODE.kind, *(spec.kind for spec in kinds.KINDS if spec.custom)}
)
"""Kinds whose reading may be denied without holding readiness up (``_CacheSink.optional``):
the ones a ClusterRole from before ClusterNetworkPolicy did not grant in full."""

NOT_FOUND = 404
"""HTTP 404: the kind is not served (its CustomResourceDefinition is absent or was deleted)."""

ACCESS_DENIED = (401, 403)
"""HTTP statuses that no retry cures: the credentials or the ClusterRole must change."""

DISCOVERY_INTERVAL = 30.0
"""Seconds between API discoveries while a custom kind is not served (``run
--discovery-interval``)."""


def api_client_from(kubeconfig: str | None) -> ApiClient:
    """An API client for ``kubeconfig``, or for the pod's service account when it is None.

    The configuration is loaded into a fresh ``Configuration``; the client library's global
    default configuration is never touched. TCP keepalive is on, so a watch through a proxy or
    load balancer that silently forgot the connection is noticed.
    """
    configuration = Configuration()
    if kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.keep_alive = True
    return ApiClient(configuration)


@dataclass(frozen=True, slots=True)
class WatchStats:
    """Counters of one kind's list/watch loop (all monotonic, since the source was made)."""

    kind: SourceKind
    lists: int = 0
    """Complete lists handed to the cache (the first one and every relist)."""
    relists: int = 0
    """Lists after the first: after 410 Gone, an ERROR event or a failed list."""
    watches: int = 0
    """Watch requests the server accepted."""
    events: int = 0
    """ADDED, MODIFIED and DELETED events applied to the cache."""
    bookmarks: int = 0
    """BOOKMARK events (they only advance the resourceVersion)."""
    errors: int = 0
    """Failed requests, dropped connections, ERROR events and undecodable event lines."""
    resource_version: str | None = None
    """The resourceVersion the next watch resumes from; None until the first list."""


class _Gone(Exception):
    """The server no longer has what we asked for (410): relist."""


class _WatchError(Exception):
    """The watch stream carried an ERROR event other than 410: relist after a backoff."""


class _Dropped(Exception):
    """The watch connection broke before any event came through (already logged)."""


def _resource_version(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        version = metadata.get("resourceVersion")
        if isinstance(version, str) and version:
            return version
    return None


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-terminated lines of a streamed (chunked) response body, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from lines
    if buffer.strip():
        yield buffer


@dataclass(frozen=True, slots=True)
class _Resource:
    kind: SourceKind
    api_version: str
    list_all: Callable[..., Any]
    """The client's list function for the kind across all namespaces (lists and watches)."""
    may_vanish: bool = False
    """A custom kind: a 404 means it is no longer served, and ends the loop's ``run``."""


class _Sink(Protocol):
    """Where one kind's list/watch loop hands what it learns."""

    def replace(self, objects: list[dict[str, Any]]) -> None:
        """The complete list (the first one and every relist)."""
        ...

    def upsert(self, obj: dict[str, Any]) -> None: ...

    def delete(self, obj: dict[str, Any]) -> None: ...

    def failed(self, error: BaseException) -> None:
        """A request failed (it is retried with backoff; the sink keeps what it has)."""
        ...

    def reached(self) -> None:
        """The API server answered a request again after a failure."""
        ...


@dataclass(frozen=True, slots=True)
class _CacheSink:
    """A kind of the cache: objects go into ``ClusterState`` as they are."""

    state: ClusterState
    kind: Kind
    optional: bool = False
    """No permission to read the kind (HTTP 401/403) does not hold readiness up: a ClusterRole
    from before the kind was read (Nodes, ClusterNetworkPolicies) must not stop enforcement of
    the others. The kind counts as not served until a list succeeds."""

    def replace(self, objects: list[dict[str, Any]]) -> None:
        if self.optional:
            self.state.set_served(self.kind, True)
        self.state.replace(self.kind, objects)

    def upsert(self, obj: dict[str, Any]) -> None:
        self.state.upsert(self.kind, obj)

    def delete(self, obj: dict[str, Any]) -> None:
        self.state.delete(self.kind, obj)

    def failed(self, error: BaseException) -> None:
        # The loop logs it; the cache keeps the last known state.
        if self.optional and isinstance(error, ApiException) and error.status in ACCESS_DENIED:
            self.state.set_served(self.kind, False)

    def reached(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _NodesSink:
    """Every Node into the cache, and the agent's own Node's pod ranges (when it has a name)."""

    cache: _CacheSink
    ranges: _NodeRanges | None

    def replace(self, objects: list[dict[str, Any]]) -> None:
        self.cache.replace(objects)
        if self.ranges is not None:
            self.ranges.replace(objects)

    def upsert(self, obj: dict[str, Any]) -> None:
        self.cache.upsert(obj)
        if self.ranges is not None:
            self.ranges.upsert(obj)

    def delete(self, obj: dict[str, Any]) -> None:
        self.cache.delete(obj)
        if self.ranges is not None:
            self.ranges.delete(obj)

    def failed(self, error: BaseException) -> None:
        self.cache.failed(error)
        if self.ranges is not None:
            self.ranges.failed(error)

    def reached(self) -> None:
        if self.ranges is not None:
            self.ranges.reached()


class _NotServed(Exception):
    """A custom kind's list or watch answered 404: its CRD is gone."""


class _KindLoop:
    """The list/watch loop of one kind, run on its own thread."""

    def __init__(self, source: KubernetesSource, resource: _Resource) -> None:
        self.source = source
        self.resource = resource
        self.kind = resource.kind
        self._lock = threading.Lock()
        self._response: Any = None
        self._stats = WatchStats(resource.kind)
        self._failures = 0
        """Failures in a row, for the backoff (only touched by the loop's own thread)."""
        self._down = False
        """Whether a failure happened since the server last answered (to log the recovery)."""

    # -- counters ----------------------------------------------------------------------------

    def stats(self) -> WatchStats:
        with self._lock:
            return self._stats

    def _count(self, **increments: int) -> None:
        with self._lock:
            values = {name: getattr(self._stats, name) + n for name, n in increments.items()}
            self._stats = dataclasses.replace(self._stats, **values)

    def _set_version(self, version: str | None) -> None:
        with self._lock:
            self._stats = dataclasses.replace(self._stats, resource_version=version)

    @property
    def _version(self) -> str | None:
        with self._lock:
            return self._stats.resource_version

    # -- in-flight response, so that stop can interrupt a blocked read -------------------------

    def _hold(self, response: Any, stop: threading.Event) -> None:
        with self._lock:
            self._response = response
        if stop.is_set():
            self.interrupt()

    def _release(self, response: Any, reuse: bool = False) -> None:
        """Forget the response; hand its connection back for reuse, or close it."""
        with self._lock:
            self._response = None
        try:
            if not reuse:
                response.close()
            response.release_conn()
        except Exception:  # closing a broken connection may fail; it is gone either way
            log.debug("closing a %s response failed", self.kind, exc_info=True)

    def interrupt(self) -> None:
        """Unblock a read in progress (called from another thread when stopping)."""
        with self._lock:  # held, so the connection cannot go back to the pool meanwhile
            response = self._response
            if response is None:
                return
            try:
                response.shutdown()  # urllib3 >= 2.3
            except Exception:
                sock = getattr(getattr(response, "connection", None), "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    # -- the loop --------------------------------------------------------------------------

    def run(self, sink: _Sink, stop: threading.Event) -> None:
        need_list = True
        while not stop.is_set():
            try:
                if need_list:
                    self._list(sink, stop)
                    need_list = False
                    self._failures = 0
                elif self._watch(sink, stop):
                    self._failures = 0
            except _Gone as gone:
                if stop.is_set():
                    break
                log.info("relisting", extra=fields(kind=self.kind, reason=str(gone)))
                need_list = True
            except Exception as error:
                if stop.is_set():
                    break
                if (
                    self.resource.may_vanish
                    and isinstance(error, ApiException)
                    and error.status == NOT_FOUND
                ):
                    raise _NotServed(_describe(error)) from None
                self._failures += 1
                self._count(errors=1)
                if isinstance(error, _WatchError):
                    need_list = True
                self._down = True
                sink.failed(error)
                delay = self.source.backoff(self._failures)
                log.log(
                    logging.DEBUG if isinstance(error, _Dropped) else logging.WARNING,
                    "%s: %s; retrying in %.2fs (%s)",
                    self.kind,
                    _describe(error),
                    delay,
                    "relist" if need_list else f"resume from resourceVersion {self._version}",
                )
                stop.wait(delay)

    def _connected(self, sink: _Sink) -> None:
        if self._down:
            self._down = False
            log.info("reached the API server again", extra=fields(kind=self.kind))
            sink.reached()

    def _list(self, sink: _Sink, stop: threading.Event) -> None:
        items: list[dict[str, Any]] = []
        token: str | None = None
        restarts = 0
        while True:
            try:
                page = self._get_page(token, stop)
            except ApiException as error:
                if error.status != GONE or token is None or restarts >= MAX_LIST_RESTARTS:
                    raise
                restarts += 1
                log.info(
                    "list continue token expired (410); restarting the list",
                    extra=fields(kind=self.kind),
                )
                items, token = [], None
                continue
            if stop.is_set():
                return
            if token is None:
                self._connected(sink)
            metadata = page.get("metadata")
            metadata = metadata if isinstance(metadata, Mapping) else {}
            raw_items = page.get("items")
            for item in raw_items if isinstance(raw_items, list) else ():
                if isinstance(item, dict):
                    items.append(self._complete(item))
            next_token = metadata.get("continue")
            if isinstance(next_token, str) and next_token:
                token = next_token
                continue
            version = metadata.get("resourceVersion")
            if not isinstance(version, str) or not version:
                raise ValueError("list response without metadata.resourceVersion")
            break
        first = self.stats().lists == 0
        sink.replace(items)
        self._set_version(version)
        self._count(lists=1, relists=0 if first else 1)
        log.info(
            "listed" if first else "relisted",
            extra=fields(kind=self.kind, objects=len(items), resource_version=version),
        )

    def _get_page(self, token: str | None, stop: threading.Event) -> dict[str, Any]:
        source = self.source
        response = self.resource.list_all(
            limit=source.page_size,
            _continue=token,
            _preload_content=False,
            _request_timeout=(source.connect_timeout, source.list_timeout),
        )
        self._hold(response, stop)
        try:
            body = response.read()
        except BaseException:
            self._release(response)
            raise
        self._release(response, reuse=True)
        page = json.loads(body)
        if not isinstance(page, dict):
            raise ValueError(f"list response is not a JSON object: {type(page).__name__}")
        return page

    def _watch(self, sink: _Sink, stop: threading.Event) -> bool:
        """Watch from the last resourceVersion until the stream ends; True if it was healthy.

        Raises ``_Gone`` when the server no longer has that resourceVersion, ``_WatchError``
        for another ERROR event, and the client's exceptions when the connection fails.
        """
        source = self.source
        version = self._version
        try:
            response = self.resource.list_all(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=source.watch_timeout,
                _preload_content=False,
                _request_timeout=(source.connect_timeout, source.watch_timeout + source.read_grace),
            )
        except ApiException as error:
            if error.status == GONE:
                raise _Gone(f"watch from resourceVersion {version} answered 410 Gone") from None
            raise
        self._hold(response, stop)
        self._connected(sink)
        self._count(watches=1)
        log.debug("%s: watching from resourceVersion %s", self.kind, version)
        applied = 0
        try:
            for line in _lines(response):
                if stop.is_set():
                    break
                if self._apply(sink, line):
                    applied += 1
        except (_Gone, _WatchError):
            raise
        except Exception as error:
            if stop.is_set():
                return True
            log.info(
                "watch connection lost; resuming",
                extra=fields(
                    kind=self.kind, error=_describe(error), resource_version=self._version
                ),
            )
            if not applied:  # nothing came through: back off, the server may be failing
                raise _Dropped(_describe(error)) from error
            self._count(errors=1)  # the stream worked for a while: resume at once
            return True
        finally:
            self._release(response)
        log.debug("%s: watch ended; resuming from resourceVersion %s", self.kind, self._version)
        return True

    def _apply(self, sink: _Sink, line: bytes) -> bool:
        """Apply one watch event line; True if it was a well-formed event."""
        if not line.strip():
            return False
        try:
            event = json.loads(line)
        except ValueError:
            self._count(errors=1)
            log.warning(
                "ignoring an undecodable watch event line",
                extra=fields(kind=self.kind, line=repr(line[:200])),
            )
            return False
        obj = event.get("object") if isinstance(event, dict) else None
        event_type = event.get("type") if isinstance(event, dict) else None
        if not isinstance(obj, dict) or not isinstance(event_type, str):
            self._count(errors=1)
            log.warning(
                "ignoring a malformed watch event",
                extra=fields(kind=self.kind, line=repr(line[:200])),
            )
            return False
        if event_type == "ERROR":
            code = obj.get("code")
            message = f"watch ERROR event {code} {obj.get('reason')}: {obj.get('message')}"
            if code == GONE:
                raise _Gone(message)
            raise _WatchError(message)
        version = _resource_version(obj)
        if event_type == "BOOKMARK":
            self._count(bookmarks=1)
            log.debug("%s: bookmark at resourceVersion %s", self.kind, version)
        elif event_type in ("ADDED", "MODIFIED"):
            sink.upsert(self._complete(obj))
            self._count(events=1)
            log.debug("%s: %s %s", self.kind, event_type, _name(obj))
        elif event_type == "DELETED":
            sink.delete(self._complete(obj))
            self._count(events=1)
            log.debug("%s: DELETED %s", self.kind, _name(obj))
        else:
            self._count(errors=1)
            log.warning(
                "ignoring a watch event of unknown type",
                extra=fields(kind=self.kind, type=repr(event_type)[:200]),
            )
            return False
        if version is not None:
            self._set_version(version)
        return True

    def _complete(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object with the ``kind`` and ``apiVersion`` a list response leaves out."""
        obj.setdefault("kind", self.kind)
        obj.setdefault("apiVersion", self.resource.api_version)
        return obj


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return "?"
    namespace, name = metadata.get("namespace"), metadata.get("name")
    return f"{namespace}/{name}" if namespace else str(name)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


# -- the agent's own Node: its pod ranges ----------------------------------------------------


def _decimal_octets(text: str) -> str:
    """An IPv4 CIDR whose octets carry leading zeros, with them read as decimal, the way the API
    server's own parser reads them (k8s.io/utils/net ParseCIDRSloppy, which Node validation
    uses); anything else unchanged. Python's ``ipaddress`` refuses such octets outright."""
    address, slash, prefix = text.partition("/")
    octets = address.split(".")
    if len(octets) == 4 and all(octet.isdigit() and octet.isascii() for octet in octets):
        return ".".join(str(int(octet)) for octet in octets) + slash + prefix
    return text


def pod_cidrs_from_node(node: Mapping[str, Any]) -> tuple[tuple[str, ...], list[str]]:
    """A Node's pod ranges and what is wrong with its values.

    Reads ``spec.podCIDRs`` and the legacy ``spec.podCIDR`` (which the API server keeps equal to
    the first entry; both are read in case an old or odd writer set only one). Returns the valid
    networks, normalised and sorted, without duplicates, and one message per value that is not
    a valid network: such a value is left out, so it can never widen or narrow anything. Host
    bits are cleared, as Go's CIDR parser does for the API server. A prefix of length 0 is
    refused: it is no node's range, and the kernel's ``hash:net`` sets cannot hold it.
    """
    spec = node.get("spec")
    if spec is None:
        return (), []
    if not isinstance(spec, Mapping):
        return (), [f"spec is not an object: {spec!r:.80}"]
    values: list[tuple[str, object]] = []
    errors: list[str] = []
    listed = spec.get("podCIDRs")
    if isinstance(listed, list):
        values += [(f"spec.podCIDRs[{index}]", value) for index, value in enumerate(listed)]
    elif listed is not None:
        errors.append(f"spec.podCIDRs is not a list: {listed!r:.80}")
    if spec.get("podCIDR") not in (None, ""):
        values.append(("spec.podCIDR", spec.get("podCIDR")))
    networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for where, value in values:
        if not isinstance(value, str):
            errors.append(f"{where} is not a string: {value!r:.80}")
            continue
        try:
            network = ipaddress.ip_network(_decimal_octets(value.strip()), strict=False)
        except ValueError:
            errors.append(f"{where} is not a CIDR: {value!r:.80}")
            continue
        if network.prefixlen == 0:
            errors.append(f"{where} covers every address, which is no node's pod range: {value}")
            continue
        networks.add(network)
    ordered = sorted(networks, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return tuple(str(network) for network in ordered), errors


class _NodeRanges:
    """The agent's own Node, as its list/watch loop sees it, turned into pod ranges in the cache.

    A Node that exists gives its valid ranges. Ranges once known are kept while the Node cannot be
    read or is gone, so a failure never drops the guard; every problem is logged once, when it
    appears, and handed to the cache with the ranges (the runner puts it in the status).
    Only the loop's own thread calls it.
    """

    def __init__(self, node_name: str, state: ClusterState) -> None:
        self.node_name = node_name
        self.state = state
        self._cidrs: tuple[str, ...] = ()
        self._object_problem: str | None = None
        """What is wrong with the Node object (missing, no podCIDRs, malformed values)."""
        self._malformed = False
        self._access_problem: str | None = None
        """Why the Node cannot be read (HTTP 401/403), until it can again."""
        self._reported: PodRanges | None = None

    def replace(self, objects: list[dict[str, Any]]) -> None:
        self._access_problem = None
        mine = [obj for obj in objects if _name(obj) == self.node_name]
        if mine:
            self._take(mine[0])
        else:
            self._gone(f"Node {self.node_name} does not exist")

    def upsert(self, obj: dict[str, Any]) -> None:
        if _name(obj) == self.node_name:  # the stream carries every Node
            self._take(obj)

    def delete(self, obj: dict[str, Any]) -> None:
        if _name(obj) == self.node_name:
            self._gone(f"Node {self.node_name} was deleted")

    def failed(self, error: BaseException) -> None:
        if isinstance(error, ApiException) and error.status in ACCESS_DENIED:
            self._access_problem = (
                f"cannot read Node {self.node_name} ({_describe(error)}): the agent's "
                "ClusterRole must allow get, list and watch on nodes (daemonset.yaml)"
            )
            self._report()

    def reached(self) -> None:
        if self._access_problem is not None:
            self._access_problem = None
            self._report()

    def _take(self, node: Mapping[str, Any]) -> None:
        cidrs, errors = pod_cidrs_from_node(node)
        self._cidrs = cidrs
        self._malformed = bool(errors)
        if errors:
            self._object_problem = f"Node {self.node_name}: ignored " + "; ".join(errors)
        elif not cidrs:
            self._object_problem = (
                f"Node {self.node_name} has no spec.podCIDRs (the network plugin may allocate "
                "pod addresses itself)"
            )
        else:
            self._object_problem = None
        self._report()

    def _gone(self, what: str) -> None:
        self._malformed = False
        self._object_problem = what
        self._report()

    def _report(self) -> None:
        problems = [p for p in (self._access_problem, self._object_problem) if p is not None]
        problem = None
        if problems:
            if self._cidrs:
                effect = f"the new-pod guard covers {', '.join(self._cidrs)}"
            else:
                effect = (
                    "the new-pod guard is off: traffic of a pod too new for the agent to know "
                    "is not dropped; pass --pod-cidr with this node's pod ranges to turn it on "
                    f"(kubectl get node {self.node_name} -o jsonpath='{{.spec.podCIDRs}}')"
                )
            problem = f"{'; '.join(problems)}; {effect}"
        ranges = PodRanges(self._cidrs, problem)
        if ranges == self._reported:
            return
        self._reported = ranges
        if problem is None:
            log.info("the node's pod ranges", extra=fields(node=self.node_name, cidrs=self._cidrs))
        elif self._access_problem is not None or self._malformed:
            log.error("%s", problem)
        else:
            log.warning("%s", problem)
        self.state.set_pod_ranges(ranges)


def _snake(kind: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in kind).lstrip("_")


def _lister(api_client: ApiClient, spec: KindSpec[Any], version: str) -> Callable[..., Any]:
    """The client's list function of every object of ``spec`` at ``version``: the typed one of
    the core group (``list_pod_for_all_namespaces``, ``list_node``), the generic one of any other
    group (same path, ``/apis/GROUP/VERSION/PLURAL``, answered raw as every list here is)."""
    if spec.group:
        custom = client.CustomObjectsApi(api_client)
        return functools.partial(
            custom.list_cluster_custom_object, spec.group, version, spec.plural
        )
    name = f"list_{_snake(spec.kind)}" + ("_for_all_namespaces" if spec.namespaced else "")
    function: Callable[..., Any] = getattr(client.CoreV1Api(api_client), name)
    return function


class _Discovery:
    """What the API serves beyond the core group, as API discovery says (``GET /apis``, then
    ``/apis/GROUP/VERSION``), and the refused policy kinds among it, each logged once."""

    def __init__(self, source: KubernetesSource, api_client: ApiClient) -> None:
        self.source = source
        self.apis = client.ApisApi(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        """(apiVersion, kind) of refused kinds already logged as not enforced."""

    def _json(self, response: Any) -> Any:
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def served(self) -> dict[str, dict[str, set[str]]]:
        """Group to version to the resources (plurals) served there, for the groups of custom
        and refused kinds; raises on failure (the caller retries)."""
        wanted = {spec.group for spec in kinds.KINDS if spec.custom}
        wanted |= {refused.group for refused in kinds.REFUSED_POLICY_KINDS}
        timeout = (self.source.connect_timeout, self.source.list_timeout)
        groups = self._json(
            self.apis.get_api_versions(_preload_content=False, _request_timeout=timeout)
        )
        result: dict[str, dict[str, set[str]]] = {}
        for group in groups.get("groups") or () if isinstance(groups, dict) else ():
            name = group.get("name") if isinstance(group, dict) else None
            if name not in wanted:
                continue
            for entry in group.get("versions") or ():
                version = entry.get("version") if isinstance(entry, dict) else None
                if not isinstance(version, str):
                    continue
                try:
                    listing = self._json(
                        self.custom.get_api_resources(
                            name, version, _preload_content=False, _request_timeout=timeout
                        )
                    )
                except ApiException as error:
                    if error.status == NOT_FOUND:  # gone between the two requests
                        continue
                    raise
                resources = listing.get("resources") if isinstance(listing, dict) else None
                result.setdefault(name, {})[version] = {
                    r["name"]
                    for r in resources or ()
                    if isinstance(r, dict) and isinstance(r.get("name"), str)
                }
        self._log_refused(result)
        return result

    def _log_refused(self, served: dict[str, dict[str, set[str]]]) -> None:
        for refused in kinds.REFUSED_POLICY_KINDS:
            for version, resources in sorted(served.get(refused.group, {}).items()):
                api_version = f"{refused.group}/{version}"
                if refused.plural not in resources or not refused.matches(
                    api_version, refused.kind
                ):
                    continue
                with self._lock:
                    if (api_version, refused.kind) in self._logged:
                        continue
                    self._logged.add((api_version, refused.kind))
                log.warning(
                    "%s: the API serves it, and its objects are not enforced",
                    refused.message(api_version),
                )


class _CustomKind:
    """The loop of a kind served only while its CRD is installed (``KindSpec.custom``): discover
    its preferred served version, list and watch it until it answers 404, and start over."""

    def __init__(
        self,
        source: KubernetesSource,
        spec: KindSpec[Any],
        loop: _KindLoop,
        lister: Callable[[str], Callable[..., Any]],
    ) -> None:
        self.source = source
        self.spec = spec
        self.loop = loop
        self._lister = lister

    def version(self) -> str | None:
        """The first of the kind's versions the API serves, or None; raises on failure."""
        served = self.source.discovery.served().get(self.spec.group, {})
        for version in self.spec.versions:
            if self.spec.plural in served.get(version, set()):
                return version
        return None

    def run(self, sink: _Sink, state: ClusterState, stop: threading.Event) -> None:
        kind, failures, vanished = self.spec.kind, 0, 0
        announced: str | None = None
        """What was last logged: a version served, "absent", or None at the start."""
        while not stop.is_set():
            try:
                version = self.version()
            except Exception as error:
                if isinstance(error, ApiException) and error.status in ACCESS_DENIED:
                    # Discovery is open to every authenticated user by default (ClusterRole
                    # system:discovery); a cluster that closed it must not hold readiness up.
                    state.set_served(kind, False)
                    delay = self.source.discovery_interval
                else:
                    failures += 1
                    delay = self.source.backoff(failures)
                log.warning(
                    "%s: API discovery failed (%s); retrying in %.2fs",
                    kind,
                    _describe(error),
                    delay,
                )
                stop.wait(delay)
                continue
            failures = 0
            if version is None:
                state.set_served(kind, False)
                if announced != "absent":
                    log.warning(
                        "%s: not served (no CustomResourceDefinition serves it as %s): none "
                        "enforced; NetworkPolicy enforcement goes on; looking again every %g s",
                        kind,
                        " or ".join(self.spec.api_versions),
                        self.source.discovery_interval,
                    )
                    state.replace(kind, [])  # none exist
                    announced = "absent"
                stop.wait(self.source.discovery_interval)
                continue
            api_version = self.spec.api_version(version)
            log.info("%s: served as %s; listing and watching it", kind, api_version)
            announced = api_version
            state.set_served(kind, True)
            self.loop.resource = _Resource(
                kind, api_version, self._lister(version), may_vanish=True
            )
            lists = self.loop.stats().lists
            try:
                self.loop.run(sink, stop)
            except _NotServed as gone:
                # 404s in a row without a list in between: discovery still names a version
                # its list no longer has (discovery lags behind a CRD's removal, or the CRD
                # flaps). Backed off below, or discovery and list would alternate as fast as
                # the server answers, on every node.
                vanished = 1 if self.loop.stats().lists > lists else vanished + 1
                delay = self.source.backoff(vanished)
                if self._served_elsewhere(version):
                    # The CRD was changed, not removed: another version serves the same
                    # objects. Their list replaces them at once; dropping them first would lift
                    # their Deny rules for a moment.
                    log.warning(
                        "%s: %s is no longer served (%s), another version is; reading that "
                        "in %.2fs",
                        kind,
                        api_version,
                        gone,
                        delay,
                    )
                    stop.wait(delay)
                    continue
                log.warning(
                    "%s: %s is no longer served (%s; its CustomResourceDefinition was removed "
                    "or changed): its policies are dropped; NetworkPolicy enforcement goes on; "
                    "asking API discovery again in %.2fs",
                    kind,
                    api_version,
                    gone,
                    delay,
                )
                state.set_served(kind, False)
                state.replace(kind, [])
                announced = "removed"
                stop.wait(delay)

    def _served_elsewhere(self, version: str) -> bool:
        """Whether API discovery names a version other than ``version`` serving the kind; False
        when it cannot tell (the kind then counts as removed, as the 404 said)."""
        try:
            now = self.version()
        except Exception as error:
            log.debug("%s: API discovery failed (%s)", self.spec.kind, _describe(error))
            return False
        return now is not None and now != version


class KubernetesSource:
    """Feeds every kind of the registry from the Kubernetes API into the cache, and the pod
    ranges of the agent's own Node when it is told which node that is."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        watch_timeout: int = 300,
        page_size: int = 500,
        connect_timeout: float = 10.0,
        list_timeout: float = 60.0,
        read_grace: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        jitter: Callable[[], float] = random.random,
        node_name: str | None = None,
        discovery_interval: float = DISCOVERY_INTERVAL,
    ) -> None:
        """
        :param watch_timeout: seconds a watch asks the server to keep it open (timeoutSeconds).
        :param page_size: objects per list page (limit).
        :param connect_timeout: seconds to wait for a connection to the API server.
        :param list_timeout: seconds a list page may go without a byte arriving.
        :param read_grace: seconds past ``watch_timeout`` before a silent watch counts as dead.
        :param backoff_initial: seconds to wait after the first failure in a row.
        :param backoff_max: the cap on the doubling wait, in seconds.
        :param jitter: a random number in [0, 1); the wait is scaled by 0.5 + jitter / 2.
        :param node_name: the node whose pod ranges (``spec.podCIDRs``) to follow; None: no
            ranges are read (they come from ``--pod-cidr``, or there is no guard). Every Node is
            read either way, for ClusterNetworkPolicy ``nodes`` peers.
        :param discovery_interval: seconds between API discoveries while a custom kind
            (ClusterNetworkPolicy) is not served, so its CRD installed later is picked up.
        """
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.connect_timeout = connect_timeout
        self.list_timeout = list_timeout
        self.read_grace = read_grace
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._jitter = jitter
        self.node_name = node_name
        self.discovery_interval = discovery_interval
        self.discovery = _Discovery(self, api_client)
        self._custom: dict[Kind, _CustomKind] = {}
        self._loops: dict[Kind, _KindLoop] = {}
        for spec in kinds.KINDS:
            version = spec.versions[0]
            lister = functools.partial(_lister, api_client, spec)
            resource = _Resource(spec.kind, spec.api_version(version), lister(version))
            loop = self._loops[spec.kind] = _KindLoop(self, resource)
            if spec.custom:
                self._custom[spec.kind] = _CustomKind(self, spec, loop, lister)

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (capped doubling, jittered)."""
        base = min(self.backoff_max, self.backoff_initial * 2.0 ** min(failures - 1, 32))
        return base * (0.5 + self._jitter() / 2)

    def stats(self) -> dict[SourceKind, WatchStats]:
        """The counters of each kind's loop, for metrics and tests."""
        return {kind: loop.stats() for kind, loop in self._loops.items()}

    def run(self, state: ClusterState, stop: threading.Event) -> None:
        """List and watch every kind on its own thread until ``stop`` is set; never raises."""
        threads = [
            threading.Thread(
                target=self._run_loop,
                args=(loop, self._sink(loop.kind, state), state, stop),
                name=f"kubernetes-{kind}",
                daemon=True,
            )
            for kind, loop in self._loops.items()
        ]
        for thread in threads:
            thread.start()
        stop.wait()
        for loop in self._loops.values():
            loop.interrupt()
        deadline = time.monotonic() + STOP_GRACE
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                # Blocked before a response arrived; it times out on its own and, seeing stop
                # set, writes nothing more into the cache.
                log.warning(
                    "a list/watch thread did not stop in time",
                    extra=fields(thread=thread.name, seconds=STOP_GRACE),
                )

    def _sink(self, kind: SourceKind, state: ClusterState) -> _Sink:
        cache = _CacheSink(state, kind, optional=kind in OPTIONAL_KINDS)
        if kind == kinds.NODE.kind:
            ranges = None if self.node_name is None else _NodeRanges(self.node_name, state)
            return _NodesSink(cache, ranges)
        return cache

    def _run_loop(
        self, loop: _KindLoop, sink: _Sink, state: ClusterState, stop: threading.Event
    ) -> None:
        custom = self._custom.get(loop.kind)
        while not stop.is_set():
            try:
                if custom is not None:
                    custom.run(sink, state, stop)
                else:
                    loop.run(sink, stop)
            except Exception:  # a bug in the loop itself: log it, wait, start over
                log.exception("list/watch loop failed; restarting it", extra=fields(kind=loop.kind))
                stop.wait(self.backoff_max)
