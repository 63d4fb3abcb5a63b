"""The lab: a one-machine cluster built from ordinary Kubernetes manifests.

A lab NAME lives in ``$NETPOL_AGENT_LAB_ROOT/NAME`` (default ``/run/netpol-agent/labs/NAME``):

- ``store.json``: every object the lab was given, like an API server's storage, with the fields
  a cluster would fill in (``spec.nodeName``, ``status.podIPs``), and a Node object for each of
  the lab's nodes (see "Nodes" below). The agents read it (``agent.sources.lab_store``).
- ``lab.json``: the lab's own record: nodes, where each pod lives (network namespace, veth,
  addresses; for a hostNetwork pod, its node), external hosts, and the processes it started
  (agents, echo responders).
- ``status-NODE.json``, ``agent-NODE.log`` and ``supervisor-NODE.json``: each node agent's
  status, its log, and the state of the supervisor that restarts it (``agent.lab.supervisor``).

The directory is private: 0700, and every file in it 0600 (the lab's commands run with umask
077, which the agents and responders they start inherit).

Every change follows the same order, so that what the manifests say is in force before a packet
can flow and the command returns only then: validate everything (refuse the whole batch on the
first error, changing nothing) → create network namespaces for new pods with their links down and
start their echo responders (a hostNetwork pod's in its node's namespace) → write the store →
wait until every agent reports that store revision in force → bring new pods' links up → remove
what was deleted. A change is all or nothing: when a step fails, everything the change did is
undone (namespaces and responders removed, the store written back as it was) and the command
says what failed.

Kinds. The lab takes every kind netpol-agent reads (``agent.kinds.KINDS``: Namespaces, Pods,
NetworkPolicies, ClusterNetworkPolicies in both apiVersions, Nodes), Deployments (expanded into
Pods) and its own ExternalHosts; a policy kind netpol-agent does not enforce is refused by the
manifest loader, naming the kind; any other kind is ignored with a note. Cluster-scoped objects
(ClusterNetworkPolicy) are applied and deleted by name, with no namespace.

Nodes. Each lab node ``node-N`` has a Node object in the store, as a cluster's kubelet registers
one: labels ``kubernetes.io/hostname: node-N`` and ``kubernetes.io/os: linux``, and its node
address(es) (``172.18.0.(N+1)``, and ``fc00:f853:ccd:e793::(N+1)`` in a dual-stack lab) as
``InternalIP``: the address a pod reaches its node at (held on the node's ``lo``), which
ClusterNetworkPolicy ``nodes`` peers match. ``lab apply`` of a Node manifest sets the labels of
the lab node of that name (besides the lab's own two, which stay); nothing else of a Node is
the manifest's to say (a ``spec`` or ``status`` is refused), and a name that is no lab node is
refused. ``lab delete`` of a Node manifest takes those labels off again: the node stays.

hostNetwork pods. A pod with ``spec.hostNetwork: true`` runs in its node's network namespace:
no namespace, veth or address of its own, its node's addresses as ``status.podIPs``, its
declared ports served on the node's addresses, and two of them on one node cannot hold the same
port (placement skips such nodes, as kube-scheduler does; a lab without a free node refuses the
pod). Probes reach it at its node's address and send from the node. ``agent.lab.hostnet`` says
how, and what the agents then enforce.

Teardown goes by exact names: the lab records every namespace *before* creating it and removes
only those (a lab's name may be a prefix of another's, ``relq`` and ``relq-x``). Processes are
recorded with their start time (``agent.lab.processes``) and signalled only while both match.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.kinds import CLUSTER_NETWORK_POLICY, KINDS, NODE
from agent.lab import WAIT_SECONDS, hostnet, processes, supervisor, topology
from agent.lab.hostnet import LabHostPod
from agent.lab.netns import CommandError, netns_exists
from agent.lab.probe import ProbeEndpoint, probe_matrix
from agent.lab.processes import ProcessRef
from agent.manifests import Manifest, ManifestError, load_manifests
from agent.sources.lab_store import read_store
from enforcement.clusterpolicy import describe_tie, priority_ties

LAB_ROOT_ENV = "NETPOL_AGENT_LAB_ROOT"
DEFAULT_LAB_ROOT = Path("/run/netpol-agent/labs")
LAB_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?")
"""A lab's name, matched with ``fullmatch`` (``$`` in ``re.match`` would accept a final newline)."""
MAX_NODES = 16
"""Nodes per lab at most (node N gets 10.244.N.0/24)."""
LAB_FLOW_LOG_RATE = 10000
"""Flow-log records a second a lab agent writes at most (bursts of as many): ten times a node's
default, so that ``lab flows`` shows every connection of a probe (a 50-pod lab makes a few
thousand in a second) while a flood still cannot make a lab agent log without bound."""
PRIVATE_UMASK = 0o077
"""The lab's files are root's alone: directories 0700, files 0600."""

POD_CIDR_V4 = ipaddress.IPv4Network("10.244.0.0/16")
"""kind's default pod subnet; node N gets 10.244.N.0/24."""
POD_CIDR_V6 = ipaddress.IPv6Network("fd00:10:244::/56")
"""kind's default IPv6 pod subnet; node N gets fd00:10:244:N::/64."""
NODE_NET_V4 = ipaddress.IPv4Network("172.18.0.0/16")
"""kind's default node network; node N is 172.18.0.(N+1)."""
NODE_NET_V6 = ipaddress.IPv6Network("fc00:f853:ccd:e793::/64")

EXTERNAL_KIND = "ExternalHost"
EXTERNAL_API_VERSION = "lab.netpol-agent.io/v1"
LAB_KINDS = {*(spec.kind for spec in KINDS), "Deployment", EXTERNAL_KIND}
"""Every kind netpol-agent reads, the Deployments the lab expands and its own external hosts."""

NODE_LABELS = ("kubernetes.io/hostname", "kubernetes.io/os")
"""The labels the lab gives each Node (well-known labels every kubelet sets); a Node manifest
cannot change them."""

ROLLBACK_WAIT_SECONDS = 10.0
"""How long undoing a failed change waits for the agents to enforce the restored store."""

DOCUMENTATION_NETWORKS = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)
"""Where external hosts may live: the ranges reserved for documentation (RFC 5737 TEST-NET-1/2/3,
RFC 3849), so a lab never claims an address that exists somewhere else."""

RESPONDER_START_SECONDS = 10.0
"""How long an echo responder may take to report that it listens."""

SERVED_PROTOCOLS = ("TCP", "UDP")
"""What the echo responder can serve: this kernel has no SCTP sockets (CONFIG_IP_SCTP unset)."""


class LabError(RuntimeError):
    """A lab command could not do what was asked; the message says why (and nothing changed)."""


def lab_root() -> Path:
    return Path(os.environ.get(LAB_ROOT_ENV, str(DEFAULT_LAB_ROOT)))


def validate_lab_name(name: str) -> str:
    """Return ``name`` if it can name a lab, else raise LabError (before anything is created)."""
    if not isinstance(name, str) or not LAB_NAME.fullmatch(name):
        raise LabError(
            f"lab name {name!r} must be 1-16 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def lab_namespace_pattern(name: str) -> re.Pattern[str]:
    """The names of every network namespace lab ``name`` can make, and of no other lab's.

    Another lab's names are ``npa-OTHER-SUFFIX``; when OTHER starts with ``name-`` (``relq-x``
    for ``relq``) what follows ``npa-relq-`` holds a '-' and at least 8 characters after it,
    which no suffix below has. Used only when the lab's record is lost (``lab down`` after a
    crash); otherwise teardown goes by the names recorded in ``lab.json``."""
    nodes = "|".join(str(index) for index in range(1, MAX_NODES + 1))
    suffix = rf"node-(?:{nodes})|underlay|x?[0-9a-f]{{8}}"
    return re.compile(rf"npa-{re.escape(validate_lab_name(name))}-(?:{suffix})")


@dataclass
class LabNode:
    name: str
    index: int
    netns: str
    agent_pid: int | None = None
    """The process group running the node's agent: its supervisor (the group's leader), which
    restarts the agent when it exits, and the agent. Signalling the group reaches both."""
    agent_start: int | None = None
    """The supervisor's start time, so a reused pid is never signalled (see ProcessRef)."""

    @property
    def supervisor(self) -> ProcessRef | None:
        if self.agent_pid is None or self.agent_start is None:
            return None
        return ProcessRef(self.agent_pid, self.agent_start)

    @property
    def spec(self) -> topology.NodeSpec:
        return topology.NodeSpec(
            name=self.name,
            netns=self.netns,
            pod_cidr_v4=str(ipaddress.IPv4Network(f"10.244.{self.index}.0/24")),
            pod_cidr_v6=str(ipaddress.IPv6Network(f"fd00:10:244:{self.index:x}::/64")),
            node_ip_v4=str(NODE_NET_V4.network_address + self.index + 1),
            node_ip_v6=str(NODE_NET_V6.network_address + self.index + 1),
        )


@dataclass
class LabPod:
    key: str
    node: str
    netns: str
    veth: str
    ipv4: str | None
    ipv6: str | None
    ports: list[list[Any]] = field(default_factory=list)
    """[[port, protocol], ...] served by the responder."""
    responder_pid: int | None = None
    responder_start: int | None = None
    """The responder's start time (see ProcessRef)."""
    active: bool = False

    @property
    def responder(self) -> ProcessRef | None:
        return processes.recorded(self.responder_pid, self.responder_start)

    def attachment(self) -> topology.PodAttachment:
        return topology.PodAttachment(
            key=self.key, netns=self.netns, node_veth=self.veth, ipv4=self.ipv4, ipv6=self.ipv6
        )


@dataclass
class LabExternal:
    name: str
    node: str
    netns: str
    veth: str
    addresses: list[str]
    ports: list[list[Any]] = field(default_factory=list)
    responder_pid: int | None = None
    responder_start: int | None = None

    @property
    def responder(self) -> ProcessRef | None:
        return processes.recorded(self.responder_pid, self.responder_start)

    def attachment(self) -> topology.ExternalAttachment:
        return topology.ExternalAttachment(
            name=self.name, netns=self.netns, node_veth=self.veth, addresses=tuple(self.addresses)
        )


@dataclass
class LabRecord:
    name: str
    prefix: str
    fail_open: bool
    queue_num: int
    ipv6: bool
    mode: str = "fast"
    """The agents' mode: fast or per-packet."""
    queue_max_len: int = 4096
    """The kernel queue's length given to the agents."""
    queue_workers: int = 1
    """Decision processes per agent (queue balancing)."""
    trace: bool = False
    """Agents log every verdict with its reason (see ``lab logs``)."""
    audit: bool = False
    """Agents in audit mode: they report what policy denies but let it through."""
    flow_log: bool = True
    """Agents write flow logs (``lab flows``); off only to measure what that costs."""
    flow_log_rate: float = LAB_FLOW_LOG_RATE
    """Flow-log records a second each agent writes at most (``run --flow-log-rate``)."""
    verdict_cache: bool = True
    """Fast mode: the kernel remembers the agents' allow verdicts per tuple (``run
    --no-verdict-cache`` when False)."""
    agents: bool = True
    """False for a lab built with --no-agent: the network only, enforced by whatever you run."""
    underlay: str | None = None
    """The namespace joining the nodes (labs of two nodes or more), recorded before it exists."""
    nodes: list[LabNode] = field(default_factory=list)
    pods: dict[str, LabPod] = field(default_factory=dict)
    host_pods: dict[str, LabHostPod] = field(default_factory=dict)
    """hostNetwork pods, by key: they live in their node's namespace (``agent.lab.hostnet``)."""
    externals: dict[str, LabExternal] = field(default_factory=dict)

    def namespaces(self) -> list[str]:
        """Every network namespace of the lab, by its exact name: leaves first, nodes last
        (hostNetwork pods have none of their own)."""
        names = [pod.netns for pod in self.pods.values()]
        names += [external.netns for external in self.externals.values()]
        names += [node.netns for node in self.nodes]
        return [*names, self.underlay] if self.underlay else names

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabRecord:
        record = cls(
            name=data["name"],
            prefix=data["prefix"],
            fail_open=data["fail_open"],
            queue_num=data["queue_num"],
            ipv6=data["ipv6"],
            mode=data.get("mode", "fast"),
            queue_max_len=data.get("queue_max_len", 4096),
            queue_workers=data.get("queue_workers", 1),
            trace=data.get("trace", False),
            audit=data.get("audit", False),
            flow_log=data.get("flow_log", True),
            flow_log_rate=data.get("flow_log_rate", LAB_FLOW_LOG_RATE),
            verdict_cache=data.get("verdict_cache", True),
            agents=data.get("agents", True),
            underlay=data.get("underlay"),
        )
        record.nodes = [LabNode(**node) for node in data["nodes"]]
        record.pods = {key: LabPod(**pod) for key, pod in data["pods"].items()}
        hosts = data.get("host_pods", {})
        record.host_pods = {key: LabHostPod(**pod) for key, pod in hosts.items()}
        record.externals = {key: LabExternal(**ext) for key, ext in data["externals"].items()}
        return record

    def all_pods(self) -> list[LabPod | LabHostPod]:
        """Every pod of the lab, with a namespace of its own or its node's."""
        return [*self.pods.values(), *self.host_pods.values()]

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"lab {self.name} has no node {name}")


ObjectId = tuple[str, str, str]
"""(kind, namespace, name)."""


def object_id(obj: dict[str, Any]) -> ObjectId:
    metadata = obj.get("metadata") or {}
    return (str(obj.get("kind")), str(metadata.get("namespace") or ""), str(metadata["name"]))


def describe(identity: ObjectId) -> str:
    kind, namespace, name = identity
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def node_object(
    record: LabRecord, node: LabNode, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The Node object of a lab node, with ``labels`` (from a Node manifest) added to the lab's
    own: what a kubelet registers, as far as netpol-agent reads it."""
    spec = node.spec
    addresses = [spec.node_ip_v4, *([spec.node_ip_v6] if record.ipv6 and spec.node_ip_v6 else [])]
    own = dict(zip(NODE_LABELS, (node.name, "linux"), strict=True))
    return {
        "apiVersion": NODE.api_versions[0],
        "kind": NODE.kind,
        "metadata": {"name": node.name, "labels": {**(labels or {}), **own}},
        "status": {
            "addresses": [
                *({"type": "InternalIP", "address": address} for address in addresses),
                {"type": "Hostname", "address": node.name},
            ]
        },
    }


def node_objects(record: LabRecord) -> dict[ObjectId, dict[str, Any]]:
    """The Node objects of every lab node, with the lab's labels only."""
    objects = (node_object(record, node) for node in record.nodes)
    return {object_id(obj): obj for obj in objects}


def _labelled_node(record: LabRecord, obj: dict[str, Any]) -> dict[str, Any]:
    """A Node manifest applied to the lab node of its name: its labels on the lab's Node."""
    name = obj["metadata"]["name"]
    identity = object_id(obj)
    nodes = {node.name: node for node in record.nodes}
    if name not in nodes:
        raise LabError(
            f"{describe(identity)}: metadata.name: no lab node {name!r} (the lab has "
            f"{', '.join(nodes)}); a Node manifest labels one of them"
        )
    for field_name in ("spec", "status"):
        if obj.get(field_name):
            raise LabError(
                f"{describe(identity)}: {field_name}: the lab's nodes have their own addresses "
                "and ranges; a Node manifest may only set metadata.labels"
            )
    labels = dict(obj["metadata"].get("labels") or {})
    own = node_object(record, nodes[name])["metadata"]["labels"]
    for key in NODE_LABELS:
        if labels.get(key, own[key]) != own[key]:
            raise LabError(
                f"{describe(identity)}: metadata.labels: {key} is the lab's own label of the "
                "node and cannot be changed"
            )
    return node_object(record, nodes[name], labels)


class Lab:
    """One lab; every public method takes the lab's lock for its whole duration."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        self.name = validate_lab_name(name)
        self.dir = (root or lab_root()) / name
        self.messages: list[str] = []
        """Notes for the person running the command (ignored kinds and the like)."""

    # -- paths and persistence -------------------------------------------------------------------

    @property
    def store_path(self) -> Path:
        return self.dir / "store.json"

    @property
    def record_path(self) -> Path:
        return self.dir / "lab.json"

    def exists(self) -> bool:
        return self.record_path.exists()

    def flow_log_path(self, node_name: str) -> Path:
        """The flow log of the node's agent (JSON lines, see ``agent.flowlog``)."""
        return self.dir / f"flows-{node_name}.jsonl"

    def flow_log_paths(self) -> list[Path]:
        """The flow logs of every node of the lab."""
        return [self.flow_log_path(node.name) for node in self._load().nodes]

    def supervisor_state_path(self, node_name: str) -> Path:
        """Where the supervisor of ``node_name``'s agent writes its state."""
        return self.dir / f"supervisor-{node_name}.json"

    @contextlib.contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[None]:
        """Hold the lab's lock with the private umask; ``create`` makes the lab's directory.

        Without ``create`` a lab that does not exist is an error and nothing is made."""
        previous = os.umask(PRIVATE_UMASK)
        try:
            if create:
                _private_directory(self.dir)
            elif not self.dir.is_dir():
                raise LabError(
                    f"lab {self.name} does not exist (start it with 'netpol-agent lab up')"
                )
            descriptor = os.open(self.dir / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        finally:
            os.umask(previous)

    def _load(self) -> LabRecord:
        if not self.exists():
            raise LabError(f"lab {self.name} does not exist (start it with 'netpol-agent lab up')")
        return LabRecord.from_json(json.loads(self.record_path.read_text()))

    def _save(self, record: LabRecord) -> None:
        _write_json(self.record_path, asdict(record))

    def _read_objects(self) -> tuple[int, dict[ObjectId, dict[str, Any]]]:
        if not self.store_path.exists():
            return 0, {}
        revision, objects = read_store(self.store_path)
        return revision, {object_id(obj): obj for obj in objects}

    def _write_objects(self, revision: int, objects: dict[ObjectId, dict[str, Any]]) -> None:
        _write_json(self.store_path, {"revision": revision, "objects": list(objects.values())})

    # -- commands --------------------------------------------------------------------------------

    def up(
        self,
        files: Sequence[str],
        *,
        nodes: int = 1,
        fail_open: bool = False,
        queue_num: int = 1000,
        mode: str = "fast",
        queue_max_len: int = 4096,
        queue_workers: int = 1,
        trace: bool = False,
        audit: bool = False,
        flow_log: bool = True,
        flow_log_rate: float = LAB_FLOW_LOG_RATE,
        verdict_cache: bool = True,
        ipv6: bool = True,
        agents: bool = True,
        timeout: float = WAIT_SECONDS,
    ) -> None:
        """Build the lab, start an agent on every node, apply ``files``; return when in force.

        With ``agents=False`` only the network is built: nothing enforces until you run an agent
        (or another enforcer) in the node namespaces yourself, and commands do not wait for one.
        All or nothing: when any step fails, everything made so far is removed again.
        """
        if nodes < 1 or nodes > MAX_NODES:
            raise LabError(f"--nodes must be between 1 and {MAX_NODES}")
        manifests = self._load_manifests(files)
        record = LabRecord(
            name=self.name,
            prefix=f"npa-{self.name}-",
            fail_open=fail_open,
            queue_num=queue_num,
            ipv6=ipv6,
            mode=mode,
            queue_max_len=queue_max_len,
            queue_workers=queue_workers,
            trace=trace,
            audit=audit,
            flow_log=flow_log,
            flow_log_rate=flow_log_rate,
            verdict_cache=verdict_cache,
            agents=agents,
        )
        record.nodes = [
            LabNode(name=f"node-{index}", index=index, netns=f"{record.prefix}node-{index}")
            for index in range(1, nodes + 1)
        ]
        if self.exists():
            raise self._already_exists()
        self._preflight(record, manifests)
        with self._locked(create=True):
            if self.exists():
                raise self._already_exists()
            try:
                self._write_objects(0, node_objects(record))
                self._save(record)  # every node recorded before it exists: teardown finds it
                for node in record.nodes:
                    topology.create_node(node.spec)
                if nodes > 1:
                    self._build_underlay(record)
                for node in record.nodes if agents else ():
                    self._start_supervisor(record, node)
                    self._save(record)
                self._wait_in_force(record, 0, timeout, first_start=True)
                self._apply(record, manifests, timeout)
            except BaseException as error:
                self._teardown(record)
                shutil.rmtree(self.dir, ignore_errors=True)  # a failed up leaves nothing
                if isinstance(error, CommandError):
                    raise LabError(
                        f"could not build lab {self.name}, removed it: {error}"
                    ) from None
                raise

    def apply(self, files: Sequence[str], *, timeout: float = WAIT_SECONDS) -> None:
        """Create or replace the objects of ``files``; return when in force (all or nothing)."""
        manifests = self._load_manifests(files)
        with self._locked():
            record = self._load()
            self._revive_supervisors(record)
            self._apply(record, manifests, timeout)

    def delete(self, files: Sequence[str], *, timeout: float = WAIT_SECONDS) -> None:
        """Delete the objects of ``files``; return when in force (all or nothing)."""
        manifests = self._load_manifests(files)
        with self._locked():
            record = self._load()
            self._revive_supervisors(record)
            revision, objects = self._read_objects()
            doomed: set[ObjectId] = set()
            for manifest in manifests:
                for obj in self._expand(manifest.obj, objects_only=True):
                    doomed.add(object_id(obj))
            # Deleting a namespace deletes what lives in it, as the API server's namespace
            # controller does; deleting a Deployment deletes its pods.
            namespaces = {name for kind, _ns, name in doomed if kind == "Namespace"}
            deployments = {(ns, name) for kind, ns, name in doomed if kind == "Deployment"}
            for identity, obj in objects.items():
                if identity[1] in namespaces or _owner(obj) in deployments:
                    doomed.add(identity)
            missing = [describe(identity) for identity in doomed if identity not in objects]
            for what in sorted(missing):
                self.messages.append(f"{what} not found; nothing to delete")
            remaining = {k: v for k, v in objects.items() if k not in doomed}
            # A lab node stays as long as the lab: deleting its Node takes the labels a Node
            # manifest gave it off again.
            for identity, obj in node_objects(record).items():
                if identity in objects:
                    remaining.setdefault(identity, obj)
            self._commit(record, revision, remaining, objects, timeout)

    def pods(self) -> list[dict[str, Any]]:
        _revision, objects = self._read_objects()
        result = []
        for (kind, namespace, name), obj in sorted(objects.items()):
            if kind != "Pod":
                continue
            ips = [entry["ip"] for entry in obj.get("status", {}).get("podIPs", [])]
            labels = dict(obj.get("metadata", {}).get("labels") or {})
            result.append({"namespace": namespace, "name": name, "ips": ips, "labels": labels})
        return result

    def probe(
        self,
        port: int,
        protocol: str,
        *,
        family: int = 4,
        timeout: float = 1.5,
        include_external: bool = False,
    ) -> dict[str, dict[str, bool]]:
        record = self._load()
        endpoints = [
            _pod_endpoint(record, pod)
            for pod in sorted(record.all_pods(), key=lambda pod: pod.key)
            if pod.active
        ]
        if include_external:
            for external in sorted(record.externals.values(), key=lambda ext: ext.name):
                v4 = next((a for a in external.addresses if ":" not in a), None)
                v6 = next((a for a in external.addresses if ":" in a), None)
                if (v4 if family == 4 else v6) is None:
                    continue  # no address of this family: nothing to probe
                endpoints.append(
                    ProbeEndpoint(
                        key=f"external/{external.name}",
                        netns=external.netns,
                        address_v4=v4,
                        address_v6=v6,
                    )
                )
        if family == 6 and not record.ipv6:
            raise LabError(f"lab {self.name} was built without IPv6")
        return probe_matrix(endpoints, endpoints, port, protocol, family=family, timeout=timeout)  # type: ignore[arg-type]

    def down(self) -> None:
        """Stop every process of the lab and remove every namespace and file it made.

        Only this lab's: the namespaces recorded in its ``lab.json`` (and, should the record be
        lost, those :func:`lab_namespace_pattern` names), and processes by recorded identity."""
        if not self.dir.is_dir():
            topology.remove_namespaces(self._pattern_namespaces())
            return
        with self._locked():
            record: LabRecord | None = None
            with contextlib.suppress(Exception):
                record = self._load()
            if record is not None:
                self._teardown(record)
            else:
                topology.remove_namespaces(self._pattern_namespaces())
            shutil.rmtree(self.dir, ignore_errors=True)

    def record(self) -> LabRecord:
        """The lab's record: nodes, pods with their namespaces and addresses, processes."""
        return self._load()

    def objects(self) -> list[dict[str, Any]]:
        """Every object of the lab's store, as its agents read it (Pods with their node and
        addresses, the Nodes, the policies; Deployments and ExternalHosts too), for offline
        tools (``lab explain``, ``lab describe``). The store is replaced atomically, so this
        reads one consistent state without taking the lab's lock."""
        if not self.exists():
            raise LabError(f"lab {self.name} does not exist (start it with 'netpol-agent lab up')")
        try:
            _revision, objects = self._read_objects()
        except (OSError, ValueError) as error:
            raise LabError(f"cannot read the lab's store: {error}") from error
        return list(objects.values())

    def agent_logs(self) -> dict[str, str]:
        return {
            path.stem.removeprefix("agent-"): path.read_text(errors="replace")
            for path in sorted(self.dir.glob("agent-*.log"))
        }

    def supervision(self, node_name: str) -> supervisor.SupervisorState | None:
        """What the supervisor of ``node_name``'s agent last reported, if anything."""
        return supervisor.read_state(self.supervisor_state_path(node_name))

    def agent_process(self, node_name: str) -> ProcessRef | None:
        """The agent process running on ``node_name`` now (it changes when it is restarted)."""
        state = self.supervision(node_name)
        agent = state.agent() if state is not None else None
        return agent if agent is not None and processes.is_running(agent) else None

    def restart_summary(self, node_name: str) -> str | None:
        """One line on the agent's restarts (None if it never exited), for ``lab logs``."""
        state = self.supervision(node_name)
        if state is None or state.last_exit is None:
            return None
        times = "time" if state.restarts == 1 else "times"
        text = f"agent restarted {state.restarts} {times}; last exit: {state.last_exit}"
        if state.phase == "waiting" and state.restart_at is not None:
            text += f"; next start in {max(state.restart_at - time.time(), 0):.0f} s"
        elif state.phase == "stopped":
            text += "; its supervisor has stopped"
        return text

    # -- internals -------------------------------------------------------------------------------

    def _load_manifests(self, files: Sequence[str]) -> list[Manifest]:
        if not files:
            return []
        try:
            return load_manifests(files)
        except ManifestError as error:
            raise LabError(f"refused, nothing changed: {error}") from error

    def _preflight(self, record: LabRecord, manifests: list[Manifest]) -> None:
        """Check a new lab's manifests as far as can be done before anything exists: objects,
        nodes and addresses of its pods (raises LabError; the notes come again later)."""
        notes = len(self.messages)
        updated = self._merged(record, node_objects(record), manifests)
        self._plan_pods(record, [obj for identity, obj in updated.items() if identity[0] == "Pod"])
        del self.messages[notes:]

    def _apply(self, record: LabRecord, manifests: list[Manifest], timeout: float) -> None:
        revision, objects = self._read_objects()
        updated = self._merged(record, objects, manifests)
        self._commit(record, revision, updated, objects, timeout)
        self._note_priority_ties(updated, {object_id(manifest.obj) for manifest in manifests})

    def _note_priority_ties(
        self, objects: dict[ObjectId, dict[str, Any]], applied: set[ObjectId]
    ) -> None:
        """Say when an applied ClusterNetworkPolicy ties in priority with another: the API
        leaves their order undefined, so the result may differ under another enforcer."""
        spec = CLUSTER_NETWORK_POLICY
        policies = [
            spec.convert(obj, strict=False)
            for identity, obj in objects.items()
            if identity[0] == spec.kind
        ]
        applied_names = {identity[2] for identity in applied if identity[0] == spec.kind}
        for group in priority_ties(policies):
            if any(policy.name in applied_names for policy in group):
                self.messages.append(f"warning: {describe_tie(group)}")

    def _merged(
        self,
        record: LabRecord,
        objects: dict[ObjectId, dict[str, Any]],
        manifests: list[Manifest],
    ) -> dict[ObjectId, dict[str, Any]]:
        """``objects`` with ``manifests`` applied (a new dict), every object checked."""
        updated = dict(objects)
        for manifest in manifests:
            kind = manifest.obj.get("kind")
            if kind not in LAB_KINDS:
                self.messages.append(
                    f"{manifest.source}: ignored {kind} "
                    f"{manifest.obj.get('metadata', {}).get('name')}: the lab models Namespaces, "
                    "Pods, Deployments, NetworkPolicies, ClusterNetworkPolicies, Nodes (labels) "
                    "and ExternalHosts"
                )
                continue
            try:
                for obj in self._expand(manifest.obj):
                    if obj.get("kind") == NODE.kind:
                        obj = _labelled_node(record, obj)
                    self._merge(updated, obj)
            except LabError as error:
                raise LabError(f"refused, nothing changed: {manifest.source}: {error}") from error
        for identity in updated:
            # Cluster-scoped objects (Namespaces, Nodes, ClusterNetworkPolicies) have none.
            if identity[1] and identity[0] != EXTERNAL_KIND:
                namespace = identity[1]
                if ("Namespace", "", namespace) not in updated:
                    raise LabError(
                        f"refused, nothing changed: {describe(identity)}: metadata.namespace: "
                        f'namespace "{namespace}" not found (declare it in a Namespace manifest)'
                    )
        return updated

    def _expand(self, obj: dict[str, Any], objects_only: bool = False) -> list[dict[str, Any]]:
        """The objects a manifest stands for in the lab (a Deployment stands for its pods)."""
        kind = obj.get("kind")
        if kind != "Deployment":
            return [obj]
        metadata = obj["metadata"]
        namespace = metadata.get("namespace") or "default"
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas", 1)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": metadata["name"], "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        if objects_only:
            return [deployment]
        return [deployment, *deployment_pods(obj)]

    def _merge(self, objects: dict[ObjectId, dict[str, Any]], obj: dict[str, Any]) -> None:
        identity = object_id(obj)
        kind = identity[0]
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        if kind == "Namespace":
            labels = metadata.setdefault("labels", {}) or {}
            labels["kubernetes.io/metadata.name"] = metadata["name"]
            metadata["labels"] = labels
        if kind == "Deployment":
            # Scaling down removes the pods past the new replica count.
            namespace, name = identity[1], identity[2]
            for other in list(objects):
                other_obj = objects[other]
                if _owner(other_obj) == (namespace, name):
                    index = other[2].removeprefix(f"{name}-")
                    if index.isdigit() and int(index) >= obj["spec"]["replicas"]:
                        del objects[other]
        if kind == EXTERNAL_KIND:
            _validate_external(obj)
        if kind == "Pod":
            spec = obj.setdefault("spec", {})
            problem = hostnet.spec_problem(spec)
            if problem is not None:
                raise LabError(f"{describe(identity)}: {problem}")
            previous = objects.get(identity)
            if previous is not None:
                # Like the API server, only labels (metadata) of an existing pod may change.
                old_spec = {k: v for k, v in previous["spec"].items() if k != "nodeName"}
                new_spec = {k: v for k, v in spec.items() if k != "nodeName"}
                if old_spec != new_spec or spec.get("nodeName") not in (
                    None,
                    previous["spec"].get("nodeName"),
                ):
                    raise LabError(
                        f"{describe(identity)}: spec: pod updates may not change fields other "
                        "than metadata (delete the pod and apply it again)"
                    )
                spec["nodeName"] = previous["spec"].get("nodeName")
                obj["status"] = previous.get("status", {})
        objects[identity] = obj

    def _commit(
        self,
        record: LabRecord,
        revision: int,
        updated: dict[ObjectId, dict[str, Any]],
        previous: dict[ObjectId, dict[str, Any]],
        timeout: float,
    ) -> None:
        """Make ``updated`` the lab's state in the order that keeps enforcement ahead of traffic.

        All or nothing: what can be checked is checked before anything is made; when a later step
        fails, everything this change made is removed and the store is written back as it was
        (under a new revision, so the agents enforce it again)."""
        new_pods = [
            obj
            for identity, obj in updated.items()
            if identity[0] == "Pod" and identity not in previous
        ]
        gone_pods = [
            identity for identity in previous if identity[0] == "Pod" and identity not in updated
        ]
        new_externals = [
            obj
            for identity, obj in updated.items()
            if identity[0] == EXTERNAL_KIND and identity not in previous
        ]
        gone_externals = [
            identity
            for identity in previous
            if identity[0] == EXTERNAL_KIND and identity not in updated
        ]
        changed_externals = [
            identity
            for identity, obj in updated.items()
            if identity[0] == EXTERNAL_KIND and identity in previous and previous[identity] != obj
        ]
        if changed_externals:
            raise LabError(
                f"refused, nothing changed: {describe(changed_externals[0])}: spec: external hosts "
                "cannot be changed in place (delete it and apply it again)"
            )
        # 1. Plan: nodes, addresses, names and ports, checked before anything is made.
        planned_pods = self._plan_pods(record, new_pods)
        planned_externals = [self._plan_external(record, obj) for obj in new_externals]
        leaves = [(pod, obj) for pod, obj in planned_pods if isinstance(pod, LabPod)]
        host_pods = [(pod, obj) for pod, obj in planned_pods if isinstance(pod, LabHostPod)]
        for what, netns in [(f"Pod {pod.key}", pod.netns) for pod, _obj in leaves] + [
            (f"{EXTERNAL_KIND} {external.name}", external.netns) for external in planned_externals
        ]:
            if netns_exists(netns):
                raise LabError(
                    f"refused, nothing changed: {what}: its network namespace {netns} exists "
                    f"already and is not this lab's (remove it with 'ip netns del {netns}')"
                )
        # 2. Build what is new, invisible to the agents and cut off: namespaces, links down,
        #    responders listening (a hostNetwork pod's on its node: see agent.lab.hostnet on
        #    why that opens nothing early).
        built_pods: list[LabPod | LabHostPod] = []
        built_externals: list[LabExternal] = []
        try:
            for pod, obj in leaves:
                self._attach_pod(record, pod)
                built_pods.append(pod)
                self._serve(pod)
                place_object(record, pod, obj)
            for host_pod, obj in host_pods:
                record.host_pods[host_pod.key] = host_pod
                self._save(record)  # recorded before its responder starts: teardown finds it
                built_pods.append(host_pod)
                self._serve_on_node(record, host_pod)
                place_object(record, host_pod, obj)
            for external in planned_externals:
                self._attach_external(record, external)
                built_externals.append(external)
                self._serve(external)
        except BaseException as error:
            self._discard(record, built_pods, built_externals)
            if isinstance(error, LabError):
                raise LabError(f"refused, nothing changed: {error}") from None
            raise
        self._save(record)
        # 3. Publish, wait until every agent enforces it, then let the new pods' traffic flow.
        in_force = False
        try:
            self._write_objects(revision + 1, updated)
            self._wait_in_force(record, revision + 1, timeout)
            in_force = True
            for built in built_pods:
                if isinstance(built, LabPod):  # a hostNetwork pod's node is up already
                    topology.activate_pod(record.node(built.node).spec, built.attachment())
                built.active = True
            self._save(record)
        except BaseException as error:
            outcome = self._roll_back(
                record, revision + 2, previous, built_pods, built_externals, wait=in_force
            )
            if isinstance(error, LabError | CommandError):
                raise LabError(f"{error}\n{outcome}") from None
            raise
        # 4. Remove what was deleted, now that no agent counts on it.
        for identity in gone_pods:
            key = f"{identity[1]}/{identity[2]}"
            gone_pod = record.pods.get(key) or record.host_pods.get(key)
            if gone_pod is not None:
                self._destroy_pod(record, gone_pod)
        for identity in gone_externals:
            gone_external = record.externals.get(identity[2])
            if gone_external is not None:
                self._destroy_external(record, gone_external)
        self._save(record)

    def _roll_back(
        self,
        record: LabRecord,
        revision: int,
        previous: dict[ObjectId, dict[str, Any]],
        pods: list[LabPod | LabHostPod],
        externals: list[LabExternal],
        *,
        wait: bool,
    ) -> str:
        """Undo a change that was published: the store as it was, the new namespaces gone.

        Waits for the agents to enforce the restored store only if they enforced the change
        (``wait``): otherwise they are not answering, and will read the restored store when
        they are back. Returns a sentence for the person running the command."""
        self._write_objects(revision, previous)
        confirmed = ""
        if wait:
            try:
                self._wait_in_force(record, revision, ROLLBACK_WAIT_SECONDS)
                confirmed = "; the agents enforce the previous state again"
            except LabError as error:
                confirmed = f"; the agents have not confirmed it yet: {error}"
        self._discard(record, pods, externals)
        return (
            "rolled back, nothing changed: the store is as before this command and the "
            f"namespaces it created are removed{confirmed}"
        )

    def _discard(
        self, record: LabRecord, pods: list[LabPod | LabHostPod], externals: list[LabExternal]
    ) -> None:
        """Remove pods and external hosts this command made (responders, namespaces, record)."""
        for pod in pods:
            self._destroy_pod(record, pod)
        for external in externals:
            self._destroy_external(record, external)
        self._save(record)

    def _build_underlay(self, record: LabRecord) -> None:
        """Join the nodes like kind's nodes on their docker network: one L2 segment (a bridge in
        a namespace of the lab's own), and on each node a route to every other node's pod range
        via that node, as kindnet installs them. Cross-node pod traffic is not encapsulated."""
        record.underlay = f"{record.prefix}underlay"
        self._save(record)  # recorded before it exists: teardown finds it
        topology.apply(topology.create_underlay_plan(record.underlay))
        specs = [node.spec for node in record.nodes]
        for node, spec in zip(record.nodes, specs, strict=True):
            topology.apply(
                topology.connect_node_plan(
                    record.underlay, spec, node.name, NODE_NET_V4.prefixlen, NODE_NET_V6.prefixlen
                )
            )
        for spec in specs:
            topology.apply(topology.node_routes_plan(spec, specs))

    def _plan_pods(
        self, record: LabRecord, objs: list[dict[str, Any]]
    ) -> list[tuple[LabPod | LabHostPod, dict[str, Any]]]:
        """Node, addresses, names and served ports of each new pod; nothing is made yet.

        A hostNetwork pod goes where its host ports are free and gets no address of its own
        (``agent.lab.hostnet``)."""
        counts = {node.name: 0 for node in record.nodes}
        for existing in record.all_pods():
            counts[existing.node] = counts.get(existing.node, 0) + 1
        used = {address for pod in record.pods.values() for address in (pod.ipv4, pod.ipv6)}
        host_pods = list(record.host_pods.values())
        planned: list[tuple[LabPod | LabHostPod, dict[str, Any]]] = []
        for obj in objs:
            metadata, spec = obj["metadata"], obj["spec"]
            key = f"{metadata['namespace']}/{metadata['name']}"
            node_name = spec.get("nodeName")
            if node_name is not None and node_name not in counts:
                names = ", ".join(node.name for node in record.nodes)
                raise LabError(
                    f"refused, nothing changed: Pod {key}: spec.nodeName: no lab node "
                    f"{node_name!r} (the lab has {names})"
                )
            # Spread evenly: the node with the fewest pods, lowest index first.
            ranked = sorted(record.nodes, key=lambda node: (counts[node.name], node.index))
            if hostnet.is_host_network(spec):
                ports = hostnet.host_ports(spec)
                try:
                    node_name = hostnet.place(
                        key, ports, node_name, [n.name for n in ranked], hostnet.holders(host_pods)
                    )
                except hostnet.HostNetworkError as error:
                    raise LabError(f"refused, nothing changed: {error}") from None
                host_pod = LabHostPod(
                    key=key,
                    node=node_name,
                    host_ports=[[port, protocol] for port, protocol in ports],
                    ports=self._served_ports(key, spec),
                )
                host_pods.append(host_pod)
                planned.append((host_pod, obj))
                counts[node_name] += 1
                continue
            node = record.node(node_name or ranked[0].name)
            ipv4, ipv6 = _allocate(record, node, used)
            used.update((ipv4, ipv6))
            counts[node.name] += 1
            digest = _short_hash(f"{record.name}/{key}")
            pod = LabPod(
                key=key,
                node=node.name,
                netns=f"{record.prefix}{digest}",
                veth=f"np{digest}",
                ipv4=ipv4,
                ipv6=ipv6,
                ports=self._served_ports(key, spec),
            )
            planned.append((pod, obj))
        return planned

    def _served_ports(self, key: str, spec: dict[str, Any]) -> list[list[Any]]:
        """The container ports the echo responder serves; a note for each it cannot.

        The lab's kernel has no SCTP sockets (REFERENCE.md §2), so an SCTP port is declared (the
        pod exists and its policies are enforced like any other) but nothing listens on it: a
        probe of it would fail whatever the policies say, and the note says so."""
        served: list[list[Any]] = []
        for c_index, container in enumerate(spec.get("containers") or []):
            for p_index, port in enumerate(container.get("ports") or []):
                entry = [port["containerPort"], port.get("protocol", "TCP")]
                if entry[1] not in SERVED_PROTOCOLS:
                    self.messages.append(
                        f"Pod {key}: spec.containers[{c_index}].ports[{p_index}]: "
                        f"{entry[1]} port {entry[0]} is not served: this kernel has no "
                        f"{entry[1]} sockets; the pod is created and enforced, but nothing "
                        "in it listens on that port"
                    )
                elif entry not in served:
                    served.append(entry)
        return served

    def _plan_external(self, record: LabRecord, obj: dict[str, Any]) -> LabExternal:
        name = obj["metadata"]["name"]
        spec = obj["spec"]
        digest = _short_hash(f"{record.name}/external/{name}")
        return LabExternal(
            name=name,
            node=record.nodes[0].name,
            netns=f"{record.prefix}x{digest}",
            veth=f"nx{digest}",
            addresses=[str(address) for address in spec["addresses"]],
            ports=[[port["port"], port.get("protocol", "TCP")] for port in spec.get("ports", [])],
        )

    def _attach_pod(self, record: LabRecord, pod: LabPod) -> None:
        """Create the pod's namespace, its link down; recorded first, unrecorded on failure."""
        record.pods[pod.key] = pod
        self._save(record)  # recorded before it exists: teardown finds it
        try:
            topology.attach_pod(record.node(pod.node).spec, pod.attachment(), link_up=False)
        except (CommandError, ValueError) as error:
            del record.pods[pod.key]  # attach_pod removed what it made
            self._save(record)
            raise LabError(
                f"Pod {pod.key}: could not create its network namespace {pod.netns}: {error}"
            ) from None

    def _attach_external(self, record: LabRecord, external: LabExternal) -> None:
        """Create an external host's namespace and routes; recorded first."""
        record.externals[external.name] = external
        self._save(record)
        gateway = record.node(external.node).spec
        try:
            topology.attach_external(gateway, external.attachment())
        except (CommandError, ValueError) as error:
            del record.externals[external.name]
            self._save(record)
            raise LabError(
                f"{EXTERNAL_KIND} {external.name}: could not create its network namespace "
                f"{external.netns}: {error}"
            ) from None
        try:
            for node in record.nodes:
                if node.name != external.node:
                    topology.apply(
                        topology.external_routes_plan(node.spec, gateway, external.addresses)
                    )
        except CommandError as error:
            self._destroy_external(record, external)
            self._save(record)
            raise LabError(
                f"{EXTERNAL_KIND} {external.name}: could not route to it: {error}"
            ) from None

    def _serve(self, leaf: LabPod | LabExternal) -> None:
        """Start the leaf's echo responder and record it."""
        what = f"Pod {leaf.key}" if isinstance(leaf, LabPod) else f"{EXTERNAL_KIND} {leaf.name}"
        ref = self._start_responder(leaf.netns, leaf.ports, what)
        if ref is not None:
            leaf.responder_pid, leaf.responder_start = ref.pid, ref.start

    def _serve_on_node(self, record: LabRecord, pod: LabHostPod) -> None:
        """Start a hostNetwork pod's echo responder in its node's namespace, on the node's
        addresses only, and record it."""
        node = record.node(pod.node)
        addresses = hostnet.node_addresses(node.spec, record.ipv6)
        ref = self._start_responder(
            node.netns, pod.ports, f"Pod {pod.key} (hostNetwork, on {node.name})", addresses
        )
        if ref is not None:
            pod.responder_pid, pod.responder_start = ref.pid, ref.start

    def _destroy_pod(self, record: LabRecord, pod: LabPod | LabHostPod) -> None:
        processes.stop(pod.responder)
        if isinstance(pod, LabHostPod):  # its namespace is its node's: only the responder goes
            record.host_pods.pop(pod.key, None)
            return
        with contextlib.suppress(Exception):
            topology.detach_pod(pod.attachment())
        record.pods.pop(pod.key, None)

    def _destroy_external(self, record: LabRecord, external: LabExternal) -> None:
        processes.stop(external.responder)
        with contextlib.suppress(Exception):
            topology.detach_external(record.node(external.node).spec, external.attachment())
        record.externals.pop(external.name, None)

    # -- agents ----------------------------------------------------------------------------------

    def _start_supervisor(self, record: LabRecord, node: LabNode) -> None:
        """Start the node's agent under its supervisor, inside the node namespace."""
        status = self.dir / f"status-{node.name}.json"
        status.unlink(missing_ok=True)
        state = self.supervisor_state_path(node.name)
        state.unlink(missing_ok=True)
        log = self.dir / f"agent-{node.name}.log"
        agent = [
            sys.executable, "-m", "agent.cli", "run",
            "--source", "lab",
            "--lab-store", str(self.store_path),
            "--node-name", node.name,
            "--status-file", str(status),
            "--queue-num", str(record.queue_num),
            "--fail-open" if record.fail_open else "--fail-closed",
            "--mode", record.mode,
            "--queue-max-len", str(record.queue_max_len),
            "--queue-workers", str(record.queue_workers),
            "--pod-cidr", node.spec.pod_cidr_v4,
            *_pod_cidr_v6_args(record, node),
            # A pod may only send with its own addresses, as Calico and rp_filter enforce.
            "--anti-spoofing", "--pod-interface", f"{topology.POD_VETH_PREFIX}+",
            *(["--trace"] if record.trace else []),
            *(["--audit"] if record.audit else []),
            "--policy-metrics",  # a lab has few policies: their series cost nothing
            *([] if record.verdict_cache else ["--no-verdict-cache"]),
            # Lab agents log their flows: `lab flows` reads them.
            *(
                ["--flow-log", str(self.flow_log_path(node.name)),
                 "--flow-log-rate", f"{record.flow_log_rate:g}"]
                if record.flow_log
                else []
            ),
        ]  # fmt: skip
        argv = [
            "ip", "netns", "exec", node.netns,
            sys.executable, "-m", "agent.lab.supervisor",
            "--log", str(log), "--state", str(state), "--status-file", str(status),
            "--", *agent,
        ]  # fmt: skip
        with open(log, "ab") as output:
            process = subprocess.Popen(
                argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        # Our unreaped child: its pid cannot have been reused yet.
        ref = processes.identify(process.pid)
        if ref is None:  # pragma: no cover - the child exists until we reap it
            raise LabError(f"the agent supervisor of {node.name} vanished at once")
        node.agent_pid, node.agent_start = ref.pid, ref.start

    def _stop_agent(self, node: LabNode) -> None:
        """Stop the node's supervisor and agent, each only if it is still the recorded process."""
        processes.stop(node.supervisor, grace=supervisor.STOP_GRACE + 1.0)
        # An agent whose supervisor was killed alone runs on, reparented: stop it by identity.
        state = self.supervision(node.name)
        agent = state.agent() if state is not None else None
        processes.stop(agent, group=False)

    def _revive_supervisors(self, record: LabRecord) -> None:
        """Start a supervisor again for every node whose supervisor is gone (killed with its
        agent, say), as an init system restarts a dead kubelet, and say so."""
        if not record.agents:
            return
        for node in record.nodes:
            ref = node.supervisor
            if ref is not None and processes.is_running(ref):
                continue
            self._stop_agent(node)
            self._log_line(node.name, "the agent's supervisor was not running: starting it again")
            self._start_supervisor(record, node)
            self._save(record)
            self.messages.append(
                f"{node.name}: the agent was not running (its supervisor was gone); started it "
                "again"
            )

    def _log_line(self, node_name: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        with open(self.dir / f"agent-{node_name}.log", "a") as log:
            log.write(f"{stamp} WARNING netpol-agent.lab: {message}\n")

    def _start_responder(
        self, netns: str, ports: list[list[Any]], what: str, addresses: Sequence[str] = ()
    ) -> ProcessRef | None:
        """Start an echo responder serving ``ports`` in ``netns`` (on ``addresses`` only, if
        any); None when there is nothing to serve."""
        if not ports:
            return None
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "agent.lab.responder"]
        for port, protocol in ports:
            argv += ["--port", f"{port}/{protocol}"]
        for address in addresses:
            argv += ["--address", address]
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        ref = processes.identify(process.pid)
        ready, _, _ = select.select([process.stdout], [], [], RESPONDER_START_SECONDS)
        line = process.stdout.readline() if ready else b""
        process.stdout.close()
        if line.strip() != b"ready" or ref is None:
            processes.stop(ref)
            problem = process.stderr.read().decode(errors="replace").strip()
            process.stderr.close()
            process.wait()
            reason = f": {problem.removeprefix('responder: ')}" if problem else ""
            raise LabError(f"{what}: its echo responder did not start{reason}")
        process.stderr.close()  # it writes to stderr only when it fails to start
        return ref

    def _wait_in_force(
        self, record: LabRecord, revision: int, timeout: float, *, first_start: bool = False
    ) -> None:
        """Block until every node's agent reports store ``revision`` (or later) in force.

        An agent that exits is restarted by its supervisor, and this keeps waiting for the new
        one, up to ``timeout`` seconds. It fails at once only when the agent cannot come back
        (its supervisor is gone), or with ``first_start`` when the first agent exits (a lab
        that cannot start its agents is not built)."""
        deadline = time.monotonic() + timeout
        pending = {node.name for node in record.nodes} if record.agents else set()
        while pending:
            for node in record.nodes:
                if node.name not in pending:
                    continue
                ref = node.supervisor
                if ref is None or not processes.is_running(ref):
                    raise LabError(
                        f"the agent of {node.name} is not running and cannot come back: its "
                        f"supervisor has exited; its log:\n{self._log_tail(node.name)}"
                    )
                state = self.supervision(node.name)
                if first_start and state is not None and state.last_exit is not None:
                    raise LabError(
                        f"the agent of {node.name} exited ({state.last_exit}) before it "
                        f"enforced anything; its log:\n{self._log_tail(node.name)}"
                    )
                with contextlib.suppress(OSError, ValueError):
                    status = json.loads((self.dir / f"status-{node.name}.json").read_text())
                    version = status.get("source_version")
                    if status.get("ready") and version is not None and int(version) >= revision:
                        pending.discard(node.name)
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "; ".join(self._waiting_for(name) for name in sorted(pending))
                tails = "\n".join(
                    f"-- log of {name}:\n{self._log_tail(name)}" for name in sorted(pending)
                )
                raise LabError(
                    f"timed out after {timeout:g} s waiting for the agents to enforce revision "
                    f"{revision}: {details}\n{tails}"
                )
            time.sleep(0.01)

    def _waiting_for(self, node_name: str) -> str:
        summary = self.restart_summary(node_name)
        if summary is None:
            return f"{node_name}: the agent runs but has not reported it"
        return f"{node_name}: {summary}"

    def _log_tail(self, node_name: str, lines: int = 30) -> str:
        path = self.dir / f"agent-{node_name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _teardown(self, record: LabRecord) -> None:
        """Stop the lab's processes (by recorded identity) and remove its namespaces (by exact
        recorded name, plus any :func:`lab_namespace_pattern` finds)."""
        for pod in record.all_pods():
            processes.stop(pod.responder)
        for external in list(record.externals.values()):
            processes.stop(external.responder)
        for node in record.nodes:
            self._stop_agent(node)
        names = set(record.namespaces()) | set(self._pattern_namespaces())
        topology.remove_namespaces(sorted(names))
        record.pods.clear()
        record.host_pods.clear()
        record.externals.clear()

    def _pattern_namespaces(self) -> list[str]:
        pattern = lab_namespace_pattern(self.name)
        return [name for name in topology.list_namespaces() if pattern.fullmatch(name)]

    def _already_exists(self) -> LabError:
        return LabError(
            f"lab {self.name} already exists: use 'lab apply' to change it or "
            f"'lab down --lab {self.name}' first"
        )


def deployment_pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods a (validated) apps/v1 Deployment stands for: ``NAME-0``, ``NAME-1``, ...,
    each with the template's labels and spec, owned by the Deployment."""
    metadata = obj["metadata"]
    namespace = metadata.get("namespace") or "default"
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{metadata['name']}-{index}",
                "namespace": namespace,
                "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                "ownerReferences": [{"kind": "Deployment", "name": metadata["name"]}],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
        }
        for index in range(spec.get("replicas", 1))
    ]


def place_object(record: LabRecord, pod: LabPod | LabHostPod, obj: dict[str, Any]) -> None:
    """Write where a new pod runs into its object, as the scheduler and the kubelet would:
    ``spec.nodeName`` and a running ``status`` with its addresses (a hostNetwork pod's are its
    node's)."""
    obj["spec"]["nodeName"] = pod.node
    if isinstance(pod, LabHostPod):
        node = record.node(pod.node).spec
        obj["status"] = hostnet.pod_status(hostnet.node_addresses(node, record.ipv6))
        return
    obj["status"] = {
        "phase": "Running",
        "podIP": pod.ipv4,
        "podIPs": [{"ip": address} for address in (pod.ipv4, pod.ipv6) if address],
    }


def _pod_endpoint(record: LabRecord, pod: LabPod | LabHostPod) -> ProbeEndpoint:
    """What probes of a pod use: its namespace and addresses, or for a hostNetwork pod its
    node's (probes from it are the node's own traffic)."""
    if isinstance(pod, LabPod):
        return ProbeEndpoint(key=pod.key, netns=pod.netns, address_v4=pod.ipv4, address_v6=pod.ipv6)
    node = record.node(pod.node)
    addresses = hostnet.node_addresses(node.spec, record.ipv6)
    v6 = next((address for address in addresses if ":" in address), None)
    return ProbeEndpoint(key=pod.key, netns=node.netns, address_v4=addresses[0], address_v6=v6)


def _pod_cidr_v6_args(record: LabRecord, node: LabNode) -> list[str]:
    cidr = node.spec.pod_cidr_v6
    return ["--pod-cidr", cidr] if record.ipv6 and cidr else []


def _allocate(record: LabRecord, node: LabNode, used: set[str | None]) -> tuple[str, str | None]:
    """The node's first free pod addresses (``used``: every address taken so far)."""
    spec = node.spec
    network_v4 = ipaddress.IPv4Network(spec.pod_cidr_v4)
    network_v6 = ipaddress.IPv6Network(spec.pod_cidr_v6)
    # .0 is the network and .1 is customarily the node's; pods start at .2.
    for offset in range(2, network_v4.num_addresses - 1):
        ipv4 = str(network_v4.network_address + offset)
        ipv6 = str(network_v6.network_address + offset)
        if ipv4 not in used:
            return ipv4, (ipv6 if record.ipv6 else None)
    raise LabError(
        f"refused, nothing changed: node {node.name} has no pod addresses left in "
        f"{network_v4} (delete pods or build the lab with more --nodes)"
    )


def _external_address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` cannot be an external host's, or None if it can.

    External hosts stand for machines outside the cluster, reached through the node's routes:
    an address that is not global unicast would mean something else to the kernel (link-local
    ones are the pods' gateway, 169.254.1.1 and fe80::1, and are never forwarded; loopback never
    leaves a namespace), and the lab keeps to the documentation ranges so that it never claims
    an address that exists on a real network."""
    if address.is_unspecified:
        return "the unspecified address is no host's"
    if address.is_loopback:
        return "loopback addresses never leave a network namespace"
    if address.is_link_local:
        return (
            "link-local addresses are not routed (and 169.254.1.1 / fe80::1 are the pods' "
            "gateway on every node)"
        )
    if address.is_multicast:
        return "a multicast address is a group, not a host"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "write an IPv4-mapped address as the IPv4 address it maps"
    for reserved in (POD_CIDR_V4, POD_CIDR_V6, NODE_NET_V4, NODE_NET_V6):
        if address.version == reserved.version and address in reserved:
            return f"{address} is inside the lab's {reserved}; external hosts live outside it"
    if not any(
        address.version == network.version and address in network
        for network in DOCUMENTATION_NETWORKS
    ):
        ranges = ", ".join(str(network) for network in DOCUMENTATION_NETWORKS)
        return f"external hosts must use the documentation ranges ({ranges})"
    return None


def _validate_external(obj: dict[str, Any]) -> None:
    name = obj["metadata"]["name"]
    where = f"{EXTERNAL_KIND} {name}"
    if obj.get("apiVersion") != EXTERNAL_API_VERSION:
        raise LabError(f"{where}: apiVersion: must be {EXTERNAL_API_VERSION}")
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("addresses"), list):
        raise LabError(f"{where}: spec.addresses: a list of IP addresses is required")
    if not spec["addresses"]:
        raise LabError(f"{where}: spec.addresses: at least one address is required")
    families = set()
    for index, text in enumerate(spec["addresses"]):
        if not isinstance(text, str):
            raise LabError(f"{where}: spec.addresses[{index}]: an IP address string is required")
        try:
            address = ipaddress.ip_address(text)
        except ValueError as error:
            raise LabError(f"{where}: spec.addresses[{index}]: {error}") from None
        if address.version in families:
            raise LabError(f"{where}: spec.addresses[{index}]: at most one address per family")
        families.add(address.version)
        problem = _external_address_problem(address)
        if problem is not None:
            raise LabError(f"{where}: spec.addresses[{index}]: {address}: {problem}")
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        raise LabError(f"{where}: spec.ports: a list is required")
    for index, port in enumerate(ports):
        if (
            not isinstance(port, dict)
            or not isinstance(port.get("port"), int)
            or isinstance(port.get("port"), bool)
        ):
            raise LabError(f"{where}: spec.ports[{index}].port: an integer is required")
        if not 1 <= port["port"] <= 65535:
            raise LabError(f"{where}: spec.ports[{index}].port: must be between 1 and 65535")
        if port.get("protocol", "TCP") not in SERVED_PROTOCOLS:
            raise LabError(f"{where}: spec.ports[{index}].protocol: must be TCP or UDP")


def _owner(obj: dict[str, Any]) -> tuple[str, str] | None:
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("kind") == "Deployment":
            return (obj["metadata"].get("namespace") or "default", reference["name"])
    return None


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _private_directory(path: Path) -> None:
    """Make ``path`` (and its parents) 0700; tighten it if an older version made it wider."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for directory in (path.parent, path):
        if directory.stat().st_mode & 0o077:
            directory.chmod(0o700)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, then rename), mode 0600."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(data, indent=1))
    os.replace(temporary, path)
