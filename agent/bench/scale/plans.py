"""Synthetic namespaces, workloads and pods (seeded), as converted objects would be."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from agent.bench.scale.sizes import Size
from enforcement.compiler import METADATA_NAME_LABEL as METADATA_NAME
from enforcement.model import (
    ContainerPort,
    IPAddress,
    Labels,
    Namespace,
    Pod,
    PortProtocol,
)

TIER_PORTS: Final[Mapping[str, tuple[tuple[str, int, PortProtocol], ...]]] = {
    "frontend": (("http", 8080, "TCP"), ("metrics", 9090, "TCP")),
    "api": (("http", 8080, "TCP"), ("grpc", 50051, "TCP"), ("metrics", 9090, "TCP")),
    "backend": (("http", 8080, "TCP"), ("metrics", 9090, "TCP")),
    "worker": (("metrics", 9090, "TCP"),),
    "db": (("db", 5432, "TCP"), ("metrics", 9187, "TCP")),
    "cache": (("redis", 6379, "TCP"), ("metrics", 9121, "TCP")),
    "dns": (("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")),
    "monitoring": (("web", 9090, "TCP"),),
}
"""Named container ports of each tier's pods."""
DEPLOYMENT_TIERS: Final = ("frontend", "api", "backend", "worker")
STATEFUL_TIERS: Final = ("db", "cache")
ENVS: Final = ("prod", "staging", "dev")


@dataclass(frozen=True, slots=True)
class Workload:
    """A Deployment or StatefulSet: pods with one label set (StatefulSet pods add their name)."""

    namespace: str
    app: str
    tier: str
    replicas: int
    stateful: bool = False
    host_network: bool = False
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NamespacePlan:
    namespace: Namespace
    workloads: tuple[Workload, ...]


def _quota(size: Size, index: int) -> int:
    share, extra = divmod(size.pods, size.namespaces)
    return share + (1 if index < extra else 0)


def namespace_plan(rng: random.Random, size: Size, index: int) -> NamespacePlan:
    quota = _quota(size, index)
    workloads: list[Workload] = []
    if index == 0:
        name = "kube-system"
        labels = {"team": "platform", "env": "prod"}
        workloads.append(_workload(rng, name, "coredns", "dns", 2, app_key="k8s-app"))
        workloads.append(
            _workload(rng, name, "node-exporter", "monitoring", size.nodes, host_network=True)
        )
    elif index == 1:
        name = "monitoring"
        labels = {"team": "platform", "env": "prod"}
        workloads.append(_workload(rng, name, "prometheus", "monitoring", 2))
    else:
        name = f"app-{index:04d}"
        teams = max(3, size.namespaces // 10)
        labels = {"team": f"team-{rng.randrange(teams)}", "env": rng.choice(ENVS)}
    remaining = quota - sum(w.replicas for w in workloads)
    if remaining < 0:
        # A tiny namespace quota: trim the system workloads to fit.
        trimmed: list[Workload] = []
        left = quota
        for workload in workloads:
            take = min(workload.replicas, left)
            if take:
                trimmed.append(_resize(workload, take))
            left -= take
        workloads, remaining = trimmed, 0
    number = 0
    while remaining > 0:
        if rng.random() < 0.15:
            tier = rng.choice(STATEFUL_TIERS)
            replicas, stateful = 3, True
        else:
            tier = rng.choice(DEPLOYMENT_TIERS)
            replicas, stateful = rng.randint(10, 20), False
        replicas = min(replicas, remaining)
        workloads.append(_workload(rng, name, f"{tier}-{number}", tier, replicas, stateful))
        remaining -= replicas
        number += 1
    namespace = Namespace(name, Labels({**labels, METADATA_NAME: name}))
    return NamespacePlan(namespace, tuple(workloads))


def _workload(
    rng: random.Random,
    namespace: str,
    app: str,
    tier: str,
    replicas: int,
    stateful: bool = False,
    host_network: bool = False,
    app_key: str = "app",
) -> Workload:
    labels = {app_key: app, "tier": tier}
    if stateful:
        labels["controller-revision-hash"] = f"{app}-{rng.getrandbits(32):08x}"
    else:
        labels["pod-template-hash"] = f"{rng.getrandbits(40):010x}"
    return Workload(
        namespace, app, tier, replicas, stateful, host_network, tuple(sorted(labels.items()))
    )


def _resize(workload: Workload, replicas: int) -> Workload:
    return Workload(
        workload.namespace,
        workload.app,
        workload.tier,
        replicas,
        workload.stateful,
        workload.host_network,
        workload.labels,
    )


def generate_pods(
    rng: random.Random, size: Size, plans: Sequence[NamespacePlan]
) -> tuple[Pod, ...]:
    """Every pod of every workload, each with its own records (as converted objects would be)."""
    next_host = [0] * (size.nodes + 1)
    pods: list[Pod] = []
    for plan in plans:
        names: set[str] = set()
        for workload in plan.workloads:
            for replica in range(workload.replicas):
                if workload.host_network:
                    node = replica % size.nodes + 1
                else:
                    node = rng.randrange(size.nodes) + 1
                labels = dict(workload.labels)
                if workload.stateful:
                    name = f"{workload.app}-{replica}"
                    labels["statefulset.kubernetes.io/pod-name"] = name
                else:
                    prefix = workload.app
                    if not workload.host_network:
                        prefix += "-" + labels["pod-template-hash"][:6]
                    name = f"{prefix}-{rng.getrandbits(20):05x}"
                    while name in names:
                        name = f"{prefix}-{rng.getrandbits(20):05x}"
                names.add(name)
                ips: tuple[IPAddress, ...]
                if workload.host_network:
                    ips = (_node_address(node),)
                else:
                    next_host[node] += 1
                    ips = _pod_addresses(node, next_host[node])
                ports = tuple(
                    ContainerPort(number, protocol, port_name)
                    for port_name, number, protocol in TIER_PORTS[workload.tier]
                )
                pods.append(
                    Pod(
                        namespace=plan.namespace.name,
                        name=name,
                        labels=Labels(labels),
                        ips=ips,
                        ports=ports,
                        node_name=f"node-{node}",
                        host_network=workload.host_network,
                    )
                )
    return tuple(pods)


def _pod_addresses(node: int, host: int) -> tuple[IPAddress, ...]:
    """Host ``host`` of node ``node``: 10.N.x.y (N < 256, host < 65535) and fd00:0:0:N::host."""
    v4 = ipaddress.IPv4Address((10 << 24) | (node << 16) | host)
    v6 = ipaddress.IPv6Address((0xFD00 << 112) | (node << 64) | host)
    return (v4, v6)


def _node_address(node: int) -> IPAddress:
    return ipaddress.IPv4Address((172 << 24) | (18 << 16) | node)
