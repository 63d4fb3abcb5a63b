"""The lab: a one-machine cluster built from ordinary Kubernetes manifests.

A lab NAME lives in ``$NETPOL_AGENT_LAB_ROOT/NAME`` (default ``/run/netpol-agent/labs/NAME``):

- ``store.json``: every object the lab was given, like an API server's storage, with the fields
  a cluster would fill in (``spec.nodeName``, ``status.podIPs``). The agents read it
  (``agent.sources.lab_store``).
- ``lab.json``: the lab's own record: nodes, where each pod lives (network namespace, veth,
  addresses), external hosts, and the processes it started (agents, echo responders).
- ``status-NODE.json`` and ``agent-NODE.log``: each node agent's status and log.

Every change follows the same order, so that what the manifests say is in force before a packet
can flow and the command returns only then: validate everything (refuse the whole batch on the
first error, changing nothing) → create network namespaces for new pods with their links down →
write the store → wait until every agent reports that store revision in force → bring new pods'
links up and start their responders → remove what was deleted.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.lab import topology
from agent.lab.probe import ProbeEndpoint, probe_matrix
from agent.manifests import Manifest, ManifestError, load_manifests
from agent.sources.lab_store import read_store

LAB_ROOT_ENV = "NETPOL_AGENT_LAB_ROOT"
DEFAULT_LAB_ROOT = Path("/run/netpol-agent/labs")
LAB_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$")

POD_CIDR_V4 = ipaddress.IPv4Network("10.244.0.0/16")
"""kind's default pod subnet; node N gets 10.244.N.0/24."""
POD_CIDR_V6 = ipaddress.IPv6Network("fd00:10:244::/56")
"""kind's default IPv6 pod subnet; node N gets fd00:10:244:N::/64."""
NODE_NET_V4 = ipaddress.IPv4Network("172.18.0.0/16")
"""kind's default node network; node N is 172.18.0.(N+1)."""
NODE_NET_V6 = ipaddress.IPv6Network("fc00:f853:ccd:e793::/64")

EXTERNAL_KIND = "ExternalHost"
EXTERNAL_API_VERSION = "lab.netpol-agent.io/v1"
LAB_KINDS = {"Namespace", "Pod", "NetworkPolicy", "Deployment", EXTERNAL_KIND}

WAIT_SECONDS = 30.0


class LabError(RuntimeError):
    """A lab command could not do what was asked; the message says why (and nothing changed)."""


def lab_root() -> Path:
    return Path(os.environ.get(LAB_ROOT_ENV, str(DEFAULT_LAB_ROOT)))


@dataclass
class LabNode:
    name: str
    index: int
    netns: str
    agent_pid: int | None = None

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
    active: bool = False

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
    agents: bool = True
    """False for a lab built with --no-agent: the network only, enforced by whatever you run."""
    nodes: list[LabNode] = field(default_factory=list)
    pods: dict[str, LabPod] = field(default_factory=dict)
    externals: dict[str, LabExternal] = field(default_factory=dict)

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
            agents=data.get("agents", True),
        )
        record.nodes = [LabNode(**node) for node in data["nodes"]]
        record.pods = {key: LabPod(**pod) for key, pod in data["pods"].items()}
        record.externals = {key: LabExternal(**ext) for key, ext in data["externals"].items()}
        return record

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


class Lab:
    """One lab; every public method takes the lab's lock for its whole duration."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        if not LAB_NAME.match(name):
            raise LabError(
                f"lab name {name!r} must be 1-16 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit"
            )
        self.name = name
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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

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
        ipv6: bool = True,
        agents: bool = True,
    ) -> None:
        """Build the lab, start an agent on every node, apply ``files``; return when in force.

        With ``agents=False`` only the network is built: nothing enforces until you run an agent
        (or another enforcer) in the node namespaces yourself, and commands do not wait for one.
        """
        if nodes < 1 or nodes > 16:
            raise LabError("--nodes must be between 1 and 16")
        manifests = self._load_manifests(files)
        with self._locked():
            if self.exists():
                raise LabError(
                    f"lab {self.name} already exists: use 'lab apply' to change it or "
                    f"'lab down --lab {self.name}' first"
                )
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
                agents=agents,
            )
            try:
                self._write_objects(0, {})
                for index in range(1, nodes + 1):
                    node = LabNode(
                        name=f"node-{index}", index=index, netns=f"{record.prefix}node-{index}"
                    )
                    record.nodes.append(node)
                    self._save(record)
                    topology.create_node(node.spec)
                if nodes > 1:
                    self._build_underlay(record)
                for node in record.nodes if agents else ():
                    node.agent_pid = self._start_agent(record, node)
                    self._save(record)
                self._wait_in_force(record, 0)
                self._apply(record, manifests)
            except BaseException:
                self._teardown(record)
                raise

    def apply(self, files: Sequence[str]) -> None:
        manifests = self._load_manifests(files)
        with self._locked():
            self._apply(self._load(), manifests)

    def delete(self, files: Sequence[str]) -> None:
        manifests = self._load_manifests(files)
        with self._locked():
            record = self._load()
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
            self._commit(record, revision, remaining, objects)

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
            ProbeEndpoint(key=pod.key, netns=pod.netns, address_v4=pod.ipv4, address_v6=pod.ipv6)
            for pod in sorted(record.pods.values(), key=lambda pod: pod.key)
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
        """Stop every process of the lab and remove every namespace and file it made."""
        with self._locked():
            record: LabRecord | None = None
            with contextlib.suppress(Exception):
                record = self._load()
            if record is not None:
                self._teardown(record)
            else:
                topology.remove_all(f"npa-{self.name}-")
        shutil.rmtree(self.dir, ignore_errors=True)

    def record(self) -> LabRecord:
        """The lab's record: nodes, pods with their namespaces and addresses, processes."""
        return self._load()

    def agent_logs(self) -> dict[str, str]:
        return {
            path.stem.removeprefix("agent-"): path.read_text(errors="replace")
            for path in sorted(self.dir.glob("agent-*.log"))
        }

    # -- internals -------------------------------------------------------------------------------

    def _load_manifests(self, files: Sequence[str]) -> list[Manifest]:
        if not files:
            return []
        try:
            return load_manifests(files)
        except ManifestError as error:
            raise LabError(f"refused, nothing changed: {error}") from error

    def _apply(self, record: LabRecord, manifests: list[Manifest]) -> None:
        revision, objects = self._read_objects()
        updated = dict(objects)
        for manifest in manifests:
            kind = manifest.obj.get("kind")
            if kind not in LAB_KINDS:
                self.messages.append(
                    f"{manifest.source}: ignored {kind} "
                    f"{manifest.obj.get('metadata', {}).get('name')}: the lab models Namespaces, "
                    "Pods, Deployments, NetworkPolicies and ExternalHosts"
                )
                continue
            try:
                for obj in self._expand(manifest.obj):
                    self._merge(updated, obj)
            except LabError as error:
                raise LabError(f"refused, nothing changed: {manifest.source}: {error}") from error
        for identity in updated:
            if identity[0] not in ("Namespace", EXTERNAL_KIND):
                namespace = identity[1]
                if ("Namespace", "", namespace) not in updated:
                    raise LabError(
                        f"refused, nothing changed: {describe(identity)}: metadata.namespace: "
                        f'namespace "{namespace}" not found (declare it in a Namespace manifest)'
                    )
        self._commit(record, revision, updated, objects)

    def _expand(self, obj: dict[str, Any], objects_only: bool = False) -> list[dict[str, Any]]:
        """The objects a manifest stands for in the lab (a Deployment stands for its pods)."""
        kind = obj.get("kind")
        if kind != "Deployment":
            return [obj]
        metadata = obj["metadata"]
        namespace = metadata.get("namespace") or "default"
        spec = obj.get("spec") or {}
        template = spec.get("template") or {}
        replicas = spec.get("replicas", 1)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": metadata["name"], "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        if objects_only:
            return [deployment]
        pods = []
        for index in range(replicas):
            pods.append(
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
            )
        return [deployment, *pods]

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
            if spec.get("hostNetwork"):
                raise LabError(
                    f"{describe(identity)}: spec.hostNetwork: the lab does not model hostNetwork "
                    "pods (they would be the node itself)"
                )
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
    ) -> None:
        """Make ``updated`` the lab's state in the order that keeps enforcement ahead of traffic."""
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
        created: list[LabPod] = []
        created_externals: list[LabExternal] = []
        try:
            for obj in new_pods:
                created.append(self._create_pod(record, obj))
            for obj in new_externals:
                created_externals.append(self._create_external(record, obj))
        except BaseException:
            for pod in created:
                self._destroy_pod(record, pod)
            for external in created_externals:
                self._destroy_external(record, external)
            raise
        self._save(record)
        revision += 1
        self._write_objects(revision, updated)
        self._wait_in_force(record, revision)
        for pod in created:
            topology.activate_pod(record.node(pod.node).spec, pod.attachment())
            pod.responder_pid = self._start_responder(pod.netns, pod.ports, pod.key)
            pod.active = True
            self._save(record)
        for external in created_externals:
            external.responder_pid = self._start_responder(
                external.netns, external.ports, f"external/{external.name}"
            )
            self._save(record)
        for identity in gone_pods:
            gone_pod = record.pods.get(f"{identity[1]}/{identity[2]}")
            if gone_pod is not None:
                self._destroy_pod(record, gone_pod)
        for identity in gone_externals:
            gone_external = record.externals.get(identity[2])
            if gone_external is not None:
                self._destroy_external(record, gone_external)
        self._save(record)

    def _build_underlay(self, record: LabRecord) -> None:
        """Join the nodes like kind's nodes on their docker network: one L2 segment (a bridge in
        a namespace of the lab's own), and on each node a route to every other node's pod range
        via that node, as kindnet installs them. Cross-node pod traffic is not encapsulated."""
        underlay = f"{record.prefix}underlay"
        topology.apply(topology.create_underlay_plan(underlay))
        specs = [node.spec for node in record.nodes]
        for node, spec in zip(record.nodes, specs, strict=True):
            topology.apply(
                topology.connect_node_plan(
                    underlay, spec, node.name, NODE_NET_V4.prefixlen, NODE_NET_V6.prefixlen
                )
            )
        for spec in specs:
            topology.apply(topology.node_routes_plan(spec, specs))

    def _create_pod(self, record: LabRecord, obj: dict[str, Any]) -> LabPod:
        metadata, spec = obj["metadata"], obj["spec"]
        key = f"{metadata['namespace']}/{metadata['name']}"
        node_name = spec.get("nodeName")
        if node_name is None:
            # Spread evenly: the node with the fewest pods, lowest index first.
            counts = {node.name: 0 for node in record.nodes}
            for pod in record.pods.values():
                counts[pod.node] = counts.get(pod.node, 0) + 1
            node_name = min(record.nodes, key=lambda node: (counts[node.name], node.index)).name
        elif node_name not in {node.name for node in record.nodes}:
            names = ", ".join(node.name for node in record.nodes)
            raise LabError(
                f"Pod {key}: spec.nodeName: no lab node {node_name!r} (the lab has {names})"
            )
        node = record.node(node_name)
        ipv4, ipv6 = self._allocate(record, node)
        ports = [
            [port["containerPort"], port.get("protocol", "TCP")]
            for container in spec.get("containers") or []
            for port in container.get("ports") or []
        ]
        digest = _short_hash(f"{record.name}/{key}")
        pod = LabPod(
            key=key,
            node=node.name,
            netns=f"{record.prefix}{digest}",
            veth=f"np{digest}",
            ipv4=ipv4,
            ipv6=ipv6,
            ports=ports,
        )
        record.pods[key] = pod
        self._save(record)
        topology.attach_pod(node.spec, pod.attachment(), link_up=False)
        spec["nodeName"] = node.name
        obj["status"] = {
            "phase": "Running",
            "podIP": ipv4,
            "podIPs": [{"ip": address} for address in (ipv4, ipv6) if address],
        }
        return pod

    def _create_external(self, record: LabRecord, obj: dict[str, Any]) -> LabExternal:
        name = obj["metadata"]["name"]
        spec = obj["spec"]
        digest = _short_hash(f"{record.name}/external/{name}")
        external = LabExternal(
            name=name,
            node=record.nodes[0].name,
            netns=f"{record.prefix}x{digest}",
            veth=f"nx{digest}",
            addresses=[str(address) for address in spec["addresses"]],
            ports=[[port["port"], port.get("protocol", "TCP")] for port in spec.get("ports", [])],
        )
        record.externals[name] = external
        self._save(record)
        gateway = record.node(external.node).spec
        topology.attach_external(gateway, external.attachment())
        for node in record.nodes:
            if node.name != external.node:
                topology.apply(
                    topology.external_routes_plan(node.spec, gateway, external.addresses)
                )
        return external

    def _allocate(self, record: LabRecord, node: LabNode) -> tuple[str, str | None]:
        spec = node.spec
        used = {pod.ipv4 for pod in record.pods.values()} | {
            pod.ipv6 for pod in record.pods.values()
        }
        network_v4 = ipaddress.IPv4Network(spec.pod_cidr_v4)
        network_v6 = ipaddress.IPv6Network(spec.pod_cidr_v6)
        # .0 is the network and .1 is customarily the node's; pods start at .2.
        for offset in range(2, network_v4.num_addresses - 1):
            ipv4 = str(network_v4.network_address + offset)
            ipv6 = str(network_v6.network_address + offset)
            if ipv4 not in used:
                return ipv4, (ipv6 if record.ipv6 else None)
        raise LabError(f"node {node.name} has no pod addresses left")

    def _destroy_pod(self, record: LabRecord, pod: LabPod) -> None:
        _stop_process(pod.responder_pid)
        with contextlib.suppress(Exception):
            topology.detach_pod(pod.attachment())
        record.pods.pop(pod.key, None)

    def _destroy_external(self, record: LabRecord, external: LabExternal) -> None:
        _stop_process(external.responder_pid)
        with contextlib.suppress(Exception):
            topology.detach_external(record.node(external.node).spec, external.attachment())
        record.externals.pop(external.name, None)

    def _start_agent(self, record: LabRecord, node: LabNode) -> int:
        status = self.dir / f"status-{node.name}.json"
        status.unlink(missing_ok=True)
        argv = [
            "ip", "netns", "exec", node.netns,
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
        ]  # fmt: skip
        with open(self.dir / f"agent-{node.name}.log", "ab") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        return process.pid

    def _start_responder(self, netns: str, ports: list[list[Any]], what: str) -> int | None:
        if not ports:
            return None
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "agent.lab.responder"]
        for port, protocol in ports:
            argv += ["--port", f"{port}/{protocol}"]
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        assert process.stdout is not None
        line = process.stdout.readline()
        process.stdout.close()
        if line.strip() != b"ready":
            _stop_process(process.pid)
            raise LabError(f"the echo responder of {what} did not start")
        return process.pid

    def _wait_in_force(self, record: LabRecord, revision: int) -> None:
        """Block until every node's agent reports store ``revision`` (or later) in force."""
        deadline = time.monotonic() + WAIT_SECONDS
        pending = {node.name for node in record.nodes} if record.agents else set()
        while pending:
            for node in record.nodes:
                if node.name not in pending:
                    continue
                if node.agent_pid is not None and not _alive(node.agent_pid):
                    raise LabError(
                        f"the agent of {node.name} exited; its log:\n{self._log_tail(node.name)}"
                    )
                with contextlib.suppress(OSError, ValueError):
                    status = json.loads((self.dir / f"status-{node.name}.json").read_text())
                    version = status.get("source_version")
                    if status.get("ready") and version is not None and int(version) >= revision:
                        pending.discard(node.name)
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise LabError(
                    f"timed out waiting for the agents of {names} to enforce revision {revision}"
                )
            time.sleep(0.01)

    def _log_tail(self, node_name: str, lines: int = 30) -> str:
        path = self.dir / f"agent-{node_name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _teardown(self, record: LabRecord) -> None:
        for pod in list(record.pods.values()):
            _stop_process(pod.responder_pid)
        for external in list(record.externals.values()):
            _stop_process(external.responder_pid)
        for node in record.nodes:
            _stop_process(node.agent_pid)
        topology.remove_all(record.prefix)
        record.pods.clear()
        record.externals.clear()


def _pod_cidr_v6_args(record: LabRecord, node: LabNode) -> list[str]:
    cidr = node.spec.pod_cidr_v6
    return ["--pod-cidr", cidr] if record.ipv6 and cidr else []


def _validate_external(obj: dict[str, Any]) -> None:
    name = obj["metadata"]["name"]
    where = f"{EXTERNAL_KIND} {name}"
    if obj.get("apiVersion") != EXTERNAL_API_VERSION:
        raise LabError(f"{where}: apiVersion: must be {EXTERNAL_API_VERSION}")
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("addresses"), list):
        raise LabError(f"{where}: spec.addresses: a list of IP addresses is required")
    families = set()
    for index, text in enumerate(spec["addresses"]):
        try:
            address = ipaddress.ip_address(str(text))
        except ValueError as error:
            raise LabError(f"{where}: spec.addresses[{index}]: {error}") from error
        if address.version in families:
            raise LabError(f"{where}: spec.addresses[{index}]: at most one address per family")
        families.add(address.version)
        for reserved in (POD_CIDR_V4, POD_CIDR_V6, NODE_NET_V4, NODE_NET_V6):
            if address.version == reserved.version and address in reserved:
                raise LabError(
                    f"{where}: spec.addresses[{index}]: {address} is inside the lab's "
                    f"{reserved}; external hosts live outside the cluster"
                )
    for index, port in enumerate(spec.get("ports") or []):
        if not isinstance(port, dict) or not isinstance(port.get("port"), int):
            raise LabError(f"{where}: spec.ports[{index}].port: an integer is required")
        if not 1 <= port["port"] <= 65535:
            raise LabError(f"{where}: spec.ports[{index}].port: must be between 1 and 65535")
        if port.get("protocol", "TCP") not in ("TCP", "UDP"):
            raise LabError(f"{where}: spec.ports[{index}].protocol: must be TCP or UDP")


def _owner(obj: dict[str, Any]) -> tuple[str, str] | None:
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("kind") == "Deployment":
            return (obj["metadata"].get("namespace") or "default", reference["name"])
    return None


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def _alive(pid: int) -> bool:
    try:
        waited, _status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_process(pid: int | None, grace: float = 3.0) -> None:
    """SIGTERM a process group we started, then SIGKILL it if it lingers."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
