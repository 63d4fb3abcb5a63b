"""The state cache: what the agent currently believes the cluster holds.

Sources (the lab's object store, the Kubernetes API) feed Kubernetes objects in as plain dicts;
they are converted to our own records here, at the edge, once. The cache hands out immutable
``ClusterSnapshot`` values to the compiler and tells a listener that something changed; it never
compiles anything itself (watch handlers only mark state dirty, see STYLE.md habit 7).

The kinds and their conversions come from the registry (``agent.kinds.KINDS``): one table per
kind, and each object goes through its kind's ``fail_closed`` converter. Bad input loses nothing
and opens nothing; every object that cannot be converted has its error recorded (``errors()``,
logged by the runner on every sync) and is enforced by what its kind defines:

- a NetworkPolicy by its stand-in (``agent.convert.fail_closed_policy``): it isolates what it
  selects and allows nothing, so a malformed policy can only ever close traffic;
- a ClusterNetworkPolicy by its stand-in (``agent.kinds.clusterpolicy``): an Admin-tier policy
  that denies its subjects' traffic (or, when even the subject cannot be read, every pod's),
  never one that accepts anything;
- a Pod as an *unreadable pod* (``agent.convert.fail_closed_pod``): the addresses that can be
  read stay known, as an unknown endpoint (all its traffic denied on its node, matched by no
  selector). Leaving it out instead would take its addresses out of the tables and un-isolate
  it. An update that makes a readable pod unreadable replaces it the same way, and back;
- a Namespace is left out (its pods are then in a namespace labelled only with its name), and
  so is a Node (its addresses then match no ``nodes`` peer).

Conversion never raises out of the cache, whatever the object holds: a bug or an unexpected
shape is an error of that object, not of the whole list (a relist that stopped halfway would
drop every object after the bad one). An update whose record equals the one held changes
nothing (Nodes and Pods get status updates all the time; they must not cause recompiles).

Readiness: every kind served must have been listed in full. Every kind counts until the source
says it is not served (``set_served``): the Kubernetes source does so for a ``custom`` kind
(ClusterNetworkPolicy) whose CustomResourceDefinition API discovery does not find, and for a
kind it may not read (Nodes under an old ClusterRole), so readiness waits for a kind only while
the API serves it, and never enforces before the source knew whether it does. The lab's store
serves every kind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from agent import kinds
from agent.kinds import KindSpec
from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.model import ClusterSnapshot, Namespace, NetworkPolicy, Node, Pod, UnreadablePod

Kind = str
"""A kind of the registry (``agent.kinds.KINDS``), by its name (``KindSpec.kind``)."""
KINDS: tuple[Kind, ...] = tuple(spec.kind for spec in kinds.KINDS)
_SPECS: dict[Kind, KindSpec[Any]] = {spec.kind: spec for spec in kinds.KINDS}

R = TypeVar("R")

ObjectKey = tuple[str, str]
"""(namespace, name); namespace is "" for Namespaces."""


@dataclass(frozen=True, slots=True)
class ObjectError:
    """An object the cache could not take as it is, and what it did instead."""

    kind: Kind
    key: ObjectKey
    message: str


@dataclass(frozen=True, slots=True)
class PodRanges:
    """This node's pod ranges, as the source read them from the node's own Node object."""

    cidrs: tuple[str, ...]
    """Valid, normalised networks (``ipaddress`` notation), IPv4 and IPv6; empty: none known."""
    problem: str | None = None
    """What keeps them from being complete (no Node, no podCIDRs, a malformed value, no access
    to Nodes), or None."""


@dataclass(frozen=True, slots=True)
class StateView:
    """One consistent reading of the cache."""

    revision: int
    """The cache's own change counter at the time of reading."""
    snapshot: ClusterSnapshot
    source_version: str | None
    """What the source said this state corresponds to (the lab store's revision), if anything."""
    pod_ranges: PodRanges | None = None
    """This node's pod ranges from its Node object; None when the source does not read Nodes
    (the lab's store, or ``--pod-cidr`` given)."""
    changed_at: float | None = None
    """Monotonic time (time.monotonic) at which the cache took the earliest change that no
    earlier view held; None when nothing changed since the previous view. The runner measures
    the policy-programming delay from it (change seen to rules in force)."""


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    """(namespace, name) of any object, however malformed; never raises."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(metadata, Mapping):
        return ("", "")
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


class ClusterState:
    """Thread-safe. Sources call ``replace``/``upsert``/``delete``; the runner calls ``view``."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._tables: dict[Kind, dict[ObjectKey, Any]] = {kind: {} for kind in KINDS}
        self._errors: dict[tuple[Kind, ObjectKey], ObjectError] = {}
        self._synced: set[Kind] = set()
        self._served: dict[Kind, bool] = dict.fromkeys(KINDS, True)
        """Kinds readiness waits for: all, until the source says one is not served."""
        self._revision = 0
        self._source_version: str | None = None
        self._pod_ranges: PodRanges | None = None
        self._on_change = on_change
        self._unviewed_since: float | None = None
        """When the earliest change not yet in any view was taken (see ``StateView``)."""

    # -- writers (sources) -------------------------------------------------------------------

    def replace(self, kind: Kind, objects: Iterable[Mapping[str, Any]]) -> None:
        """Set the full list of ``kind`` (a list, or a relist after 410 Gone or a reconnect).

        Whatever is not in ``objects`` is gone: this is how a deletion that happened while the
        source was disconnected is never forgotten.
        """
        with self._lock:
            self._replace_locked(kind, objects)
            self._changed()

    def replace_all(
        self, objects: Mapping[Kind, Iterable[Mapping[str, Any]]], source_version: str | None
    ) -> None:
        """Replace every kind at once (one change), noting which source version this is."""
        with self._lock:
            for kind in KINDS:
                self._replace_locked(kind, objects.get(kind, ()))
            self._source_version = source_version
            self._changed()

    def upsert(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        with self._lock:
            if self._put(kind, obj):
                self._changed()

    def delete(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        key = object_key(obj)
        with self._lock:
            self._table(kind).pop(key, None)
            self._errors.pop((kind, key), None)
            self._changed()

    def set_served(self, kind: Kind, served: bool) -> None:
        """Whether the source reads ``kind`` (the API serves it, and may be read): readiness
        waits only for kinds served. Not a change of the state by itself; a kind no longer
        served is emptied by the source with ``replace(kind, [])``."""
        with self._lock:
            self._table(kind)  # an unknown kind is a bug of the caller
            self._served[kind] = served

    def set_pod_ranges(self, ranges: PodRanges) -> None:
        """Set this node's pod ranges; a change only when they (or their problem) differ, so a
        Node's frequent status updates do not cause recompiles. Not part of readiness: a cluster
        whose Nodes carry no podCIDRs must still be enforced."""
        with self._lock:
            if ranges == self._pod_ranges:
                return
            self._pod_ranges = ranges
            self._changed()

    # -- readers ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once every kind served has been listed in full: the readiness gate of
        enforcement."""
        with self._lock:
            return all(kind in self._synced for kind, served in self._served.items() if served)

    @property
    def revision(self) -> int:
        """Bumped on every change; lets a runner tell whether a snapshot is current."""
        with self._lock:
            return self._revision

    def errors(self) -> list[ObjectError]:
        with self._lock:
            return list(self._errors.values())

    def view(self) -> StateView:
        """The current revision and an immutable snapshot of it, taken atomically.

        Views are for one consumer, the runner: each carries when its first new change arrived
        (``changed_at``), and the next view starts counting after it."""
        with self._lock:
            changed_at, self._unviewed_since = self._unviewed_since, None
            pods = self._tables[kinds.POD.kind].values()
            snapshot = ClusterSnapshot(
                namespaces=self._records(kinds.NAMESPACE.kind, Namespace),
                pods=tuple(pod for pod in pods if isinstance(pod, Pod)),
                policies=self._records(kinds.NETWORK_POLICY.kind, NetworkPolicy),
                unreadable_pods=tuple(pod for pod in pods if isinstance(pod, UnreadablePod)),
                cluster_policies=self._records(
                    kinds.CLUSTER_NETWORK_POLICY.kind, ClusterNetworkPolicy
                ),
                nodes=self._records(kinds.NODE.kind, Node),
            )
            return StateView(
                self._revision, snapshot, self._source_version, self._pod_ranges, changed_at
            )

    # -- internals (lock held) ------------------------------------------------------------

    def _replace_locked(self, kind: Kind, objects: Iterable[Mapping[str, Any]]) -> None:
        self._table(kind).clear()
        for key in [k for k in self._errors if k[0] == kind]:
            del self._errors[key]
        for obj in objects:
            self._put(kind, obj)
        self._synced.add(kind)

    def _table(self, kind: Kind) -> dict[ObjectKey, Any]:
        table = self._tables.get(kind)
        if table is None:
            raise ValueError(f"not a kind of agent.kinds.KINDS: {kind!r}")
        return table

    def _records(self, kind: Kind, record_type: type[R]) -> tuple[R, ...]:
        return tuple(r for r in self._tables[kind].values() if isinstance(r, record_type))

    def _put(self, kind: Kind, obj: Mapping[str, Any]) -> bool:
        """Take ``obj`` in (its record, or its kind's fail-closed form); False when nothing
        changed (the same record, the same error)."""
        table = self._table(kind)
        key = object_key(obj)
        result = _SPECS[kind].fail_closed(obj)  # never raises (agent.kinds.base)
        error = ObjectError(kind, key, result.error) if result.error else None
        if key in table and table[key] == result.record and self._errors.get((kind, key)) == error:
            return False
        if result.record is None:
            table.pop(key, None)
        else:
            table[key] = result.record
        if error is None:
            self._errors.pop((kind, key), None)
        else:
            self._errors[(kind, key)] = error
        return True

    def _changed(self) -> None:
        self._revision += 1
        if self._unviewed_since is None:
            self._unviewed_since = time.monotonic()
        if self._on_change is not None:
            self._on_change()
