"""``netpol-agent bench scale``: what large clusters cost the compiler (pure computation).

No root, no network namespaces, no traffic: a seeded generator builds synthetic clusters
(:func:`generate_cluster`) and the compiler (:func:`enforcement.compiler.compile_tables`) and
the tables' lookup (:meth:`enforcement.tables.AllowTables.evaluate`) are timed on them. Each
size is measured in a fresh worker process (``python -m agent.bench.scale --worker SPEC``) so
that its peak memory is its own; the worker reports its figures as JSON lines on standard output
and the parent (:func:`run_scale`) gathers them into a :class:`ScaleReport`, prints a table,
checks the issue's targets and writes ``scale-<timestamp>.json`` and ``.png``.

Figures per size:

- *full compile*: ``compile_tables(snapshot, "node-1")`` on the whole snapshot, and the peak
  resident memory of the worker when it is done (and the baseline before the snapshot existed);
- *one change in force*: what the runner does today after a watch event, the new snapshot built
  from the state's maps (as ``ClusterState.view``) and compiled in full, for a pod relabel, a
  namespace relabel and a policy added. Converting the one changed object and syncing the
  firewall (node-local address sets) come on top and are not measured here;
- *decision time*: ``AllowTables.evaluate`` on a fixed mix of flows, each touching a local pod
  that is isolated at every policy count, with the same pods and 10, 100, ... policies (the
  clusters with fewer policies are namespaces adopting NetworkPolicy one after the other, see
  :meth:`SyntheticCluster.adoption_order`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import json
import math
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from enforcement.compiler import compile_tables
from enforcement.model import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ClusterSnapshot,
    ContainerPort,
    Direction,
    IPAddress,
    IPBlock,
    IPNetwork,
    LabelRequirement,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    PortProtocol,
    Rule,
    SelectorOperator,
)
from enforcement.tables import AllowTables

DEFAULT_OUTPUT = Path("bench-results")
NODE: Final = "node-1"
"""The node the tables are compiled for; it holds about 1/nodes of the pods."""
METADATA_NAME: Final = "kubernetes.io/metadata.name"
KiB: Final = 1024
GiB: Final = 1024**3

# -- sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Size:
    """One synthetic cluster size."""

    pods: int
    policies: int
    namespaces: int

    @property
    def nodes(self) -> int:
        """Nodes the pods are spread over: one per thousand pods, at least 10, at most 100."""
        return min(100, max(10, self.pods // 1000))

    @property
    def label(self) -> str:
        return f"{_short(self.pods)} pods/{_short(self.policies)} pol/{_short(self.namespaces)} ns"

    def __str__(self) -> str:
        return f"{self.pods}:{self.policies}:{self.namespaces}"


FULL_SIZES: Final = (Size(1_000, 100, 10), Size(10_000, 1_000, 100), Size(100_000, 10_000, 1_000))
QUICK_SIZES: Final = FULL_SIZES[:2]
TARGET_SIZE: Final = Size(100_000, 10_000, 1_000)
"""The size the issue's compile, memory and change targets are stated for."""
MIN_PODS: Final = 100
"""Fewer pods might leave node-1 without any, and nothing to measure."""
MAX_PODS: Final = 1_000_000
"""Addresses are 10.N.x.y with N the node (at most 100) and at most 65,534 pods per node."""
SWEEP: Final = (10, 100, 1_000, 10_000)
"""Policy counts of the decision-time sweep (up to the size's own count)."""


def parse_size(text: str) -> Size:
    """``PODS:POLICIES:NAMESPACES``, each a number with an optional ``k`` (thousands)."""
    parts = text.lower().split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PODS:POLICIES:NAMESPACES")
    numbers: list[int] = []
    for part in parts:
        factor = 1_000 if part.endswith("k") else 1
        try:
            number = int(float(part.removesuffix("k")) * factor)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {part!r} is not a number") from None
        numbers.append(number)
    pods, policies, namespaces = numbers
    if pods < MIN_PODS or policies < 1 or namespaces < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r}: need at least {MIN_PODS} pods, 1 policy and 2 namespaces"
        )
    if namespaces > pods:
        raise argparse.ArgumentTypeError(f"{text!r}: more namespaces than pods")
    if pods > MAX_PODS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_PODS} pods")
    return Size(pods, policies, namespaces)


def sweep_counts(policies: int) -> tuple[int, ...]:
    """Policy counts at which a size's decision time is measured: 10, 100, ... up to its own."""
    counts = [count for count in SWEEP if count < policies]
    return (*counts, policies)


def _short(number: int) -> str:
    if number >= 1_000 and number % 1_000 == 0:
        return f"{number // 1_000}k"
    return str(number)


# -- the synthetic cluster -----------------------------------------------------------------------

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
EXTERNAL_V4: Final = tuple(
    ipaddress.IPv4Network(n) for n in ("203.0.113.0/24", "198.51.100.0/24", "192.168.0.0/16")
)
EXTERNAL_V6: Final = (ipaddress.IPv6Network("2001:db8::/32"),)


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


@dataclass(frozen=True, slots=True)
class SyntheticCluster:
    """A generated cluster: the records, and the plan the policies and flows were drawn from."""

    size: Size
    seed: int
    plans: tuple[NamespacePlan, ...]
    pods: tuple[Pod, ...]
    policies: tuple[NetworkPolicy, ...]

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return tuple(plan.namespace for plan in self.plans)

    def snapshot(self) -> ClusterSnapshot:
        """The snapshot of the whole cluster."""
        return ClusterSnapshot(self.namespaces, self.pods, self.policies)

    def adoption_order(self) -> tuple[NetworkPolicy, ...]:
        """Every policy, grouped by namespace, namespaces with the most node-1 pods first.

        The decision sweep's clusters with fewer policies take a prefix of this order: as if
        namespaces adopted NetworkPolicy one after the other, each with its whole set (default
        deny first, then its allows). The namespaces that adopt first are those with pods on
        the node being measured, so that the node has isolated pods at every policy count.
        """
        local: dict[str, int] = {}
        for pod in self.pods:
            if pod.node_name == NODE and not pod.host_network:
                local[pod.namespace] = local.get(pod.namespace, 0) + 1
        rank = {
            plan.namespace.name: (-local.get(plan.namespace.name, 0), index)
            for index, plan in enumerate(self.plans)
        }
        return tuple(sorted(self.policies, key=lambda policy: rank[policy.namespace]))

    def adopted(self, policies: int) -> ClusterSnapshot:
        """The same pods with the first ``policies`` policies of :meth:`adoption_order`."""
        return ClusterSnapshot(self.namespaces, self.pods, self.adoption_order()[:policies])


def generate_cluster(size: Size, seed: int = 1, policies: int | None = None) -> SyntheticCluster:
    """A deterministic cluster of ``size`` (``policies`` overrides the policy count).

    Pods and namespaces depend only on (seed, pods, namespaces): a cluster with fewer policies
    has the same pods, and its policies are a prefix of the larger cluster's.

    - Namespace 0 is ``kube-system`` (CoreDNS and a hostNetwork node exporter), 1 is
      ``monitoring`` (Prometheus); the others ``app-NNNN`` with ``team`` and ``env`` labels.
    - Pods come in Deployments of 10-20 replicas with one label set (app, tier,
      pod-template-hash) and StatefulSets of 3 whose pods also carry their own name, so there are
      several times fewer identities than pods; named container ports by tier; one IPv4 address
      from 10.N.0.0/16 and one IPv6 address from fd00:0:0:N::/64 on node N; pods spread at
      random over ``size.nodes`` nodes.
    - Policy ``i`` lives in namespace ``i % namespaces`` and its shape follows from
      ``i // namespaces`` (see :func:`_policy`): default deny, DNS egress, and allows from pods,
      namespaces, both, matchExpressions, ipBlocks with excepts, numeric, named and ranged ports.
    """
    count = size.policies if policies is None else policies
    rng = random.Random(f"netpol-agent-scale:{seed}:{size.pods}:{size.namespaces}:pods")
    plans = tuple(_plan(rng, size, index) for index in range(size.namespaces))
    pods = _pods(rng, size, plans)
    teams = sorted({plan.namespace.labels["team"] for plan in plans})
    generated = tuple(
        _policy(random.Random(f"netpol-agent-scale:{seed}:policy:{i}"), plans, teams, i)
        for i in range(count)
    )
    return SyntheticCluster(size, seed, plans, pods, generated)


def _quota(size: Size, index: int) -> int:
    share, extra = divmod(size.pods, size.namespaces)
    return share + (1 if index < extra else 0)


def _plan(rng: random.Random, size: Size, index: int) -> NamespacePlan:
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


def _pods(rng: random.Random, size: Size, plans: Sequence[NamespacePlan]) -> tuple[Pod, ...]:
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


# -- policies ------------------------------------------------------------------------------------

TCP_: Final[PortProtocol] = "TCP"
UDP_: Final[PortProtocol] = "UDP"


def _sel(*expressions: LabelRequirement, labels: Mapping[str, str] | None = None) -> LabelSelector:
    return LabelSelector(tuple(sorted((labels or {}).items())), tuple(expressions))


def _expr(key: str, operator: SelectorOperator, *values: str) -> LabelRequirement:
    return LabelRequirement(key, operator, frozenset(values))


def _pick(rng: random.Random, plan: NamespacePlan, tiers: Sequence[str]) -> Workload | None:
    candidates = [w for w in plan.workloads if w.tier in tiers and not w.host_network]
    return rng.choice(candidates) if candidates else None


def _app_selector(workload: Workload | None, tier: str) -> LabelSelector:
    """Select a workload by app (its own key), or the tier when the namespace has none."""
    if workload is None:
        return _sel(labels={"tier": tier})
    key = "k8s-app" if workload.tier == "dns" else "app"
    return _sel(labels={key: workload.app})


SHAPES: Final = (
    "default-deny",
    "allow-dns",
    "allow-tier",
    "allow-team",
    "allow-env-frontends",
    "allow-expressions",
    "allow-external",
    "allow-backends-egress",
    "allow-monitoring",
    "allow-namespace-egress",
)
"""Policy shapes in the order every namespace receives them; later ones repeat 2.. at random."""


def _policy(
    rng: random.Random, plans: Sequence[NamespacePlan], teams: Sequence[str], index: int
) -> NetworkPolicy:
    """Policy ``index``: in namespace ``index % len(plans)``, shape ``index // len(plans)`` of
    :data:`SHAPES` (past the last one, a random shape from the third on)."""
    plan = plans[index % len(plans)]
    slot = index // len(plans)
    shape = SHAPES[slot] if slot < len(SHAPES) else SHAPES[rng.randrange(2, len(SHAPES))]
    namespace = plan.namespace.name
    name = f"{shape}-{slot}"
    ingress_only = frozenset({Direction.INGRESS})
    egress_only = frozenset({Direction.EGRESS})

    def ports(*spec: tuple[PortProtocol, int | str, int | None]) -> tuple[PolicyPort, ...]:
        return tuple(PolicyPort(protocol, number, end) for protocol, number, end in spec)

    if shape == "default-deny":
        # Every pod of the namespace, both directions, no rules.
        return NetworkPolicy(
            namespace, name, _sel(), frozenset({Direction.INGRESS, Direction.EGRESS})
        )
    if shape == "allow-dns":
        dns = Peer(
            pod_selector=_sel(labels={"k8s-app": "coredns"}),
            namespace_selector=_sel(labels={METADATA_NAME: "kube-system"}),
        )
        rule = Rule((dns,), ports((UDP_, 53, None), (TCP_, 53, None)))
        return NetworkPolicy(namespace, name, _sel(), egress_only, egress=(rule,))
    if shape == "allow-tier":
        # Backends (one app, or a tier) accept their frontends / callers on a named port.
        target = _pick(rng, plan, ("backend", "api", "db", "cache"))
        tier = target.tier if target is not None else "backend"
        callers = {"backend": "frontend", "api": "frontend", "db": "backend", "cache": "api"}
        caller = rng.choice([callers[tier], "worker"])
        named = {"db": "db", "cache": "redis"}.get(tier, "http")
        rule = Rule((Peer(pod_selector=_sel(labels={"tier": caller})),), ports((TCP_, named, None)))
        return NetworkPolicy(
            namespace, name, _app_selector(target, tier), ingress_only, ingress=(rule,)
        )
    if shape == "allow-team":
        target = _pick(rng, plan, ("api", "frontend"))
        team = rng.choice(teams)
        rule = Rule(
            (Peer(namespace_selector=_sel(labels={"team": team})),),
            ports((TCP_, 8080, None), (TCP_, "grpc", None)),
        )
        return NetworkPolicy(
            namespace, name, _app_selector(target, "api"), ingress_only, ingress=(rule,)
        )
    if shape == "allow-env-frontends":
        # namespaceSelector AND podSelector in one peer, a port range.
        env = rng.choice(ENVS)
        first = rng.choice((8000, 8080, 9000))
        rule = Rule(
            (
                Peer(
                    pod_selector=_sel(labels={"tier": "frontend"}),
                    namespace_selector=_sel(labels={"env": env}),
                ),
            ),
            ports((TCP_, first, first + rng.choice((10, 100, 1000)))),
        )
        return NetworkPolicy(
            namespace, name, _sel(labels={"tier": "api"}), ingress_only, ingress=(rule,)
        )
    if shape == "allow-expressions":
        excluded = rng.choice(teams)
        peer = Peer(
            pod_selector=_sel(_expr("tier", "In", "frontend", "api"), _expr("app", "Exists")),
            namespace_selector=_sel(
                _expr("env", "In", "prod", "staging"), _expr("team", "NotIn", excluded)
            ),
        )
        rule = Rule((peer,), ports((TCP_, "http", None), (TCP_, 9090, None)))
        subjects = _sel(
            _expr("tier", "In", "backend", "api", "worker"), _expr("canary", "DoesNotExist")
        )
        return NetworkPolicy(namespace, name, subjects, ingress_only, ingress=(rule,))
    if shape == "allow-external":
        # ipBlocks with excepts, both families: the internet but not the cluster's ranges.
        v4 = IPBlock(
            ipaddress.IPv4Network("0.0.0.0/0"),
            (ipaddress.IPv4Network("10.0.0.0/8"), ipaddress.IPv4Network("172.16.0.0/12")),
        )
        v6 = IPBlock(ipaddress.IPv6Network("::/0"), (ipaddress.IPv6Network("fd00::/8"),))
        rule = Rule(
            (Peer(ip_block=v4), Peer(ip_block=v6)),
            ports((TCP_, 443, None), (TCP_, 80, None), (TCP_, "http", None)),
        )
        return NetworkPolicy(
            namespace, name, _sel(labels={"tier": "frontend"}), ingress_only, ingress=(rule,)
        )
    if shape == "allow-backends-egress":
        partner = rng.randrange(256)
        api = IPBlock(
            ipaddress.IPv4Network(f"198.51.100.{partner & 0xF0}/28"),
            (ipaddress.IPv4Network(f"198.51.100.{(partner & 0xF0) | 8}/29"),),
        )
        rules: tuple[Rule, ...] = (
            Rule((Peer(pod_selector=_sel(labels={"tier": "db"})),), ports((TCP_, "db", None))),
            Rule((Peer(pod_selector=_sel(labels={"tier": "cache"})),), ports((TCP_, 6379, None))),
            Rule((Peer(ip_block=api),), ports((TCP_, 443, None))),
        )
        subjects = _sel(_expr("tier", "In", "backend", "api", "worker"))
        return NetworkPolicy(namespace, name, subjects, egress_only, egress=rules)
    if shape == "allow-monitoring":
        peer = Peer(
            pod_selector=_sel(labels={"app": "prometheus"}),
            namespace_selector=_sel(labels={METADATA_NAME: "monitoring"}),
        )
        rule = Rule((peer,), ports((TCP_, "metrics", None)))
        return NetworkPolicy(namespace, name, _sel(), ingress_only, ingress=(rule,))
    # allow-namespace-egress: within the namespace, and to the APIs of the team's namespaces.
    team = plan.namespace.labels.get("team", "platform")
    rules = (
        Rule((Peer(pod_selector=_sel()),)),
        Rule(
            (
                Peer(
                    pod_selector=_sel(labels={"tier": "api"}),
                    namespace_selector=_sel(labels={"team": team}),
                ),
            ),
            ports((TCP_, 8080, None), (UDP_, 5000, 5100)),
        ),
    )
    return NetworkPolicy(namespace, name, _sel(), egress_only, egress=rules)


# -- changes -------------------------------------------------------------------------------------

CHANGES: Final = ("pod_relabel", "namespace_relabel", "policy_added")
CHANGE_TITLES: Final = {
    "pod_relabel": "pod relabel",
    "namespace_relabel": "namespace relabel",
    "policy_added": "policy added",
}


class ClusterMaps:
    """The state's maps of records by (namespace, name), as ``agent.state.ClusterState`` keeps
    them; :meth:`snapshot` builds the snapshot the way ``ClusterState.view`` does."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.namespaces = {("", n.name): n for n in snapshot.namespaces}
        self.pods = {(p.namespace, p.name): p for p in snapshot.pods}
        self.policies = {(p.namespace, p.name): p for p in snapshot.policies}

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(
            namespaces=tuple(self.namespaces.values()),
            pods=tuple(self.pods.values()),
            policies=tuple(self.policies.values()),
        )

    def apply(self, change: Namespace | Pod | NetworkPolicy) -> None:
        """Create or replace the object (as ``ClusterState.upsert`` does)."""
        if isinstance(change, Namespace):
            self.namespaces[("", change.name)] = change
        elif isinstance(change, Pod):
            self.pods[(change.namespace, change.name)] = change
        else:
            self.policies[(change.namespace, change.name)] = change

    def current(
        self, change: Namespace | Pod | NetworkPolicy
    ) -> Namespace | Pod | NetworkPolicy | None:
        """The object ``change`` would replace, None if it would create one."""
        if isinstance(change, Namespace):
            return self.namespaces.get(("", change.name))
        if isinstance(change, Pod):
            return self.pods.get((change.namespace, change.name))
        return self.policies.get((change.namespace, change.name))

    def undo(
        self,
        change: Namespace | Pod | NetworkPolicy,
        original: Namespace | Pod | NetworkPolicy | None,
    ) -> None:
        """Put back what :meth:`current` returned before ``change`` was applied."""
        if original is not None:
            self.apply(original)
        elif isinstance(change, Namespace):
            del self.namespaces[("", change.name)]
        elif isinstance(change, Pod):
            del self.pods[(change.namespace, change.name)]
        else:
            del self.policies[(change.namespace, change.name)]


def make_change(
    cluster: SyntheticCluster, kind: str, number: int
) -> Namespace | Pod | NetworkPolicy:
    """The ``number``-th change of ``kind``, on an object that matters to node-1's tables.

    - pod relabel: a local, non-hostNetwork pod gets ``canary: "true"`` and a new app label (a
      new identity, selected differently by the ``allow-expressions`` shape);
    - namespace relabel: an app namespace with local pods flips its ``env`` label (what
      ``namespaceSelector: {env: ...}`` peers select changes);
    - policy added: a new ingress policy in a namespace with local pods.
    """
    local = [p for p in cluster.pods if p.node_name == NODE and not p.host_network]
    if not local:
        raise ValueError("the cluster has no pod on node-1")
    pod = local[(number * 7919) % len(local)]
    if kind == "pod_relabel":
        labels = dict(pod.labels)
        labels["canary"] = "true"
        labels["app"] = f"{labels.get('app', 'pod')}-canary-{number}"
        return Pod(
            pod.namespace, pod.name, Labels(labels), pod.ips, pod.ports, pod.node_name, False
        )
    if kind == "namespace_relabel":
        namespace = next(n for n in cluster.namespaces if n.name == pod.namespace)
        labels = dict(namespace.labels)
        labels["env"] = "staging" if labels.get("env") == "prod" else "prod"
        return Namespace(namespace.name, Labels(labels))
    if kind == "policy_added":
        rule = Rule(
            (Peer(namespace_selector=_sel(labels={"env": "prod"})),),
            (PolicyPort("TCP", 8443), PolicyPort("TCP", "metrics")),
        )
        return NetworkPolicy(
            pod.namespace,
            f"added-{number}",
            _sel(labels={"tier": pod.labels.get("tier", "")}),
            frozenset({Direction.INGRESS}),
            ingress=(rule,),
        )
    raise ValueError(f"unknown change {kind!r}")


# -- flows ---------------------------------------------------------------------------------------

Flow = tuple[bytes, bytes, int, int | None]
"""(packed source, packed destination, protocol, destination port or None)."""


def focus_pods(cluster: SyntheticCluster, policies: int = SWEEP[0]) -> list[Pod]:
    """Node-1 pods of the namespaces that hold the first ``policies`` policies to be adopted.

    Those namespaces hold their whole set of policies (default deny first) at every count of
    the sweep, so each flow of the mix reaches the tables of an isolated pod.
    """
    namespaces = {policy.namespace for policy in cluster.adoption_order()[:policies]}
    return [
        p
        for p in cluster.pods
        if p.node_name == NODE and not p.host_network and p.namespace in namespaces
    ]


def generate_flows(cluster: SyntheticCluster, count: int, seed: int = 1) -> list[Flow]:
    """A fixed mix of new flows, each with a :func:`focus_pods` pod at one end.

    Mix: to and from remote pods (25 % each), to and from other local pods (10 % each), to and
    from external addresses (10 % each), DNS queries to CoreDNS (10 %); IPv4 and IPv6 alike;
    TCP to a port the destination serves (or a random one), 5 % ICMP.
    """
    rng = random.Random(f"netpol-agent-scale:{seed}:flows")
    focus = focus_pods(cluster)
    if not focus:
        focus = [p for p in cluster.pods if p.node_name == NODE and not p.host_network]
    if not focus:
        raise ValueError("the cluster has no pod on node-1")
    peers = [p for p in cluster.pods if not p.host_network]
    remote = [p for p in peers if p.node_name != NODE] or peers
    local = [p for p in peers if p.node_name == NODE]
    dns = [p for p in peers if p.labels.get("k8s-app") == "coredns"] or peers
    flows: list[Flow] = []
    for _ in range(count):
        me = rng.choice(focus)
        family = rng.randrange(2)
        roll = rng.random()
        other: Pod | None
        if roll < 0.5:
            other = rng.choice(remote)
        elif roll < 0.7:
            other = rng.choice(local)
        elif roll < 0.9:
            other = None
        else:
            other = rng.choice(dns)
        mine = me.ips[family]
        theirs = other.ips[family] if other is not None else _external(rng, family)
        if roll >= 0.9:
            flows.append((mine.packed, theirs.packed, IPPROTO_UDP, 53))
            continue
        outgoing = rng.random() < 0.5
        destination = other if outgoing else me
        if rng.random() < 0.05:
            protocol = IPPROTO_ICMP if family == 0 else IPPROTO_ICMPV6
            port: int | None = None
        else:
            protocol = IPPROTO_TCP
            served = destination.ports if destination is not None else ()
            if served and rng.random() < 0.7:
                port = rng.choice(served).port
            else:
                port = rng.choice((80, 443, 8080, 8443, 5432, rng.randrange(1, 65536)))
        if outgoing:
            flows.append((mine.packed, theirs.packed, protocol, port))
        else:
            flows.append((theirs.packed, mine.packed, protocol, port))
    return flows


def _external(rng: random.Random, family: int) -> IPAddress:
    networks: Sequence[IPNetwork] = EXTERNAL_V4 if family == 0 else EXTERNAL_V6
    network = rng.choice(networks)
    offset = rng.randrange(1, min(network.num_addresses - 1, 1 << 16))
    return ipaddress.ip_address(int(network.network_address) + offset)


# -- statistics and memory -----------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` by linear interpolation (sorted or not)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB


def current_rss_bytes() -> int | None:
    """Resident set size now, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


# -- the worker: one size, one fresh process -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process measures."""

    size: Size
    seed: int = 1
    flows: int = 100_000
    rounds: int = 3
    """Interleaved rounds of the decision sweep."""
    change_repeats: int = 3
    """Measurements of each change kind (fewer when a compile is slow, see ``change_budget``)."""
    change_budget: float = 60.0
    """Seconds the change measurements may take in all; at least one of each kind runs."""
    compile_timeout: float = 300.0
    """The full compile is abandoned after this many seconds and reported as exceeded."""

    def to_json(self) -> str:
        data = asdict(self)
        data["size"] = str(self.size)
        return json.dumps(data)

    @staticmethod
    def from_json(text: str) -> WorkerSpec:
        data = json.loads(text)
        data["size"] = parse_size(data["size"])
        return WorkerSpec(**data)


class CompileTimeout(Exception):
    """The full compile did not finish within the worker's ``compile_timeout``."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise CompileTimeout

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_worker(spec: WorkerSpec, emit: Callable[[dict[str, Any]], None]) -> None:
    """Measure one size; ``emit`` each phase's figures as it completes.

    Phases: ``cluster`` (sizes, baseline and snapshot memory, generation time), ``compile``
    (full compile time, peak memory, table counts) or ``compile_timeout``, ``change`` (one per
    measurement), ``decision`` (the sweep).
    """
    gc.collect()
    baseline_peak = peak_rss_bytes()
    baseline_now = current_rss_bytes()
    started = time.perf_counter()
    cluster = generate_cluster(spec.size, spec.seed)
    snapshot = cluster.snapshot()
    generated = time.perf_counter() - started
    emit(
        {
            "phase": "cluster",
            "size": str(spec.size),
            "pods": len(snapshot.pods),
            "policies": len(snapshot.policies),
            "namespaces": len(snapshot.namespaces),
            "nodes": spec.size.nodes,
            "local_pods": sum(1 for p in snapshot.pods if p.node_name == NODE),
            "generate_s": generated,
            "baseline_peak_rss_bytes": baseline_peak,
            "baseline_rss_bytes": baseline_now if baseline_now is not None else baseline_peak,
            "snapshot_rss_bytes": current_rss_bytes(),
        }
    )

    try:
        with _deadline(spec.compile_timeout):
            started = time.perf_counter()
            tables = compile_tables(snapshot, NODE, 1)
            compiled = time.perf_counter() - started
    except CompileTimeout:
        emit(
            {
                "phase": "compile_timeout",
                "timeout_s": spec.compile_timeout,
                "peak_rss_bytes": peak_rss_bytes(),
            }
        )
        return
    emit(
        {
            "phase": "compile",
            "compile_s": compiled,
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_after_bytes": current_rss_bytes(),
            "identities": tables.identity_count,
            "tables": tables.table_count,
            "local_pods": tables.local_pod_count,
            "addresses": tables.address_count,
            "isolated_local_addresses": len(tables.isolated_local_addresses()),
        }
    )

    # One change in force, the way the runner does it: new snapshot from the maps, full compile.
    # The current tables stay alive meanwhile, as they do in the agent.
    maps = ClusterMaps(snapshot)
    budget_end = time.perf_counter() + spec.change_budget
    for repeat in range(spec.change_repeats):
        if repeat > 0 and time.perf_counter() > budget_end:
            break
        for kind in CHANGES:
            change = make_change(cluster, kind, repeat)
            original = maps.current(change)
            started = time.perf_counter()
            maps.apply(change)
            changed = maps.snapshot()
            built = time.perf_counter()
            new_tables = compile_tables(changed, NODE, 2 + repeat)
            done = time.perf_counter()
            emit(
                {
                    "phase": "change",
                    "change": kind,
                    "repeat": repeat,
                    "snapshot_s": built - started,
                    "compile_s": done - built,
                    "in_force_s": done - started,
                    "generation": new_tables.generation,
                }
            )
            del new_tables, changed
            maps.undo(change, original)
    emit({"phase": "memory", "peak_rss_bytes": peak_rss_bytes()})

    # Decision time against the number of policies, same pods, same flows.
    flows = generate_flows(cluster, spec.flows, spec.seed)
    counts = sweep_counts(len(cluster.policies))
    swept = {count: compile_tables(cluster.adopted(count), NODE, 1) for count in counts[:-1]}
    swept[counts[-1]] = tables
    del maps, snapshot
    timings = time_decisions(swept, flows, spec.rounds)
    for count in counts:
        timing = timings[count]
        emit(
            {
                "phase": "decision",
                "policies": count,
                "flows": len(flows),
                "rounds": spec.rounds,
                "p50_s": percentile(timing.samples, 0.5),
                "p99_s": percentile(timing.samples, 0.99),
                "mean_s": timing.mean_s,
                "verdicts": verdict_counts(swept[count], flows),
            }
        )


BATCH: Final = 1_000
"""Flows per timed batch; the garbage collector is off inside a batch."""


@dataclass(slots=True)
class DecisionTiming:
    """Decision times of one set of tables over the flow mix."""

    samples: list[float] = field(default_factory=list)
    """Seconds per flow, one per evaluation timed on its own."""
    total_ns: int = 0
    """Nanoseconds of the untimed tight loops, over ``evaluations`` flows."""
    evaluations: int = 0

    @property
    def mean_s(self) -> float:
        return self.total_ns / 1e9 / max(self.evaluations, 1)


def clock_overhead_ns(reads: int = 10_000) -> float:
    """Median nanoseconds between two consecutive ``perf_counter_ns`` reads."""
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(reads):
        before = clock()
        gaps.append(clock() - before)
    return statistics.median(gaps)


def time_decisions(
    tables: Mapping[int, AllowTables], flows: Sequence[Flow], rounds: int = 1
) -> dict[int, DecisionTiming]:
    """Time ``evaluate`` of each set of tables on every flow, ``rounds`` times.

    The sets are interleaved batch by batch (:data:`BATCH` flows, the order of the sets
    rotating), so that a busy moment of the machine falls on all of them alike. Per flow:
    ``perf_counter_ns`` read right before and after each call, minus the median cost of
    reading the clock twice. Mean: each batch evaluated again in a tight loop with no clock
    inside, total over flows, free of the clock's own cost. The collector is off in a batch.
    """
    clock = time.perf_counter_ns
    overhead = clock_overhead_ns()
    keys = list(tables)
    timings = {key: DecisionTiming() for key in keys}
    enabled = gc.isenabled()
    turn = 0
    for _ in range(max(rounds, 1)):
        for start in range(0, len(flows), BATCH):
            batch = flows[start : start + BATCH]
            turn += 1
            for key in keys[turn % len(keys) :] + keys[: turn % len(keys)]:
                evaluate = tables[key].evaluate
                timing = timings[key]
                samples = timing.samples
                gc.disable()
                try:
                    for src, dst, protocol, port in batch:
                        before = clock()
                        evaluate(src, dst, protocol, port)
                        after = clock()
                        samples.append(max(after - before - overhead, 0) / 1e9)
                    before = clock()
                    for src, dst, protocol, port in batch:
                        evaluate(src, dst, protocol, port)
                    timing.total_ns += clock() - before
                    timing.evaluations += len(batch)
                finally:
                    if enabled:
                        gc.enable()
    return timings


def verdict_counts(tables: AllowTables, flows: Sequence[Flow]) -> dict[str, int]:
    """How many flows of the mix get each verdict (to show that the mix reaches the tables)."""
    counts: dict[str, int] = {}
    for src, dst, protocol, port in flows:
        reason = tables.evaluate(src, dst, protocol, port).value
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def worker_main(spec_text: str) -> int:
    """``python -m agent.bench.scale --worker SPEC``: JSON lines on standard output."""
    spec = WorkerSpec.from_json(spec_text)

    def emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    run_worker(spec, emit)
    return 0


# -- the parent: sizes, report, targets ----------------------------------------------------------


@dataclass(slots=True)
class SizeResult:
    """Everything measured for one size (None: not measured, see ``error``)."""

    size: Size
    nodes: int = 0
    local_pods: int | None = None
    identities: int | None = None
    tables: int | None = None
    generate_s: float | None = None
    baseline_rss_bytes: int | None = None
    """RSS of the fresh worker before the snapshot was built (interpreter, imports)."""
    baseline_peak_rss_bytes: int | None = None
    """Peak RSS of the fresh worker at that point (imports may have peaked above it)."""
    snapshot_rss_bytes: int | None = None
    """RSS once the snapshot was built (before compiling)."""
    compile_s: float | None = None
    compile_timeout_s: float | None = None
    """Set when the full compile was abandoned after this many seconds."""
    peak_rss_bytes: int | None = None
    """Peak RSS of the worker when the full compile is done (baseline included)."""
    rss_after_compile_bytes: int | None = None
    """RSS right after the full compile (snapshot and tables alive)."""
    peak_rss_change_bytes: int | None = None
    """Peak RSS after the change measurements (old and new tables alive together)."""
    changes: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Change kind -> one {snapshot_s, compile_s, in_force_s} per measurement."""
    decisions: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Policy count -> {p50_s, p99_s, mean_s, flows, rounds, verdicts}."""
    worker_s: float | None = None
    error: str | None = None

    @property
    def net_peak_rss_bytes(self) -> int | None:
        if self.peak_rss_bytes is None or self.baseline_rss_bytes is None:
            return None
        return self.peak_rss_bytes - self.baseline_rss_bytes

    def change_in_force(self, kind: str) -> float | None:
        """Median in-force time of ``kind`` over its measurements."""
        values = [m["in_force_s"] for m in self.changes.get(kind, [])]
        return statistics.median(values) if values else None

    def absorb(self, record: Mapping[str, Any]) -> None:
        """Take one JSON line of the worker."""
        phase = record.get("phase")
        if phase == "cluster":
            self.nodes = int(record["nodes"])
            self.local_pods = int(record["local_pods"])
            self.generate_s = float(record["generate_s"])
            self.baseline_rss_bytes = int(record["baseline_rss_bytes"])
            self.baseline_peak_rss_bytes = int(record["baseline_peak_rss_bytes"])
            snapshot_rss = record.get("snapshot_rss_bytes")
            self.snapshot_rss_bytes = None if snapshot_rss is None else int(snapshot_rss)
        elif phase == "compile":
            self.compile_s = float(record["compile_s"])
            self.peak_rss_bytes = int(record["peak_rss_bytes"])
            after = record.get("rss_after_bytes")
            self.rss_after_compile_bytes = None if after is None else int(after)
            self.identities = int(record["identities"])
            self.tables = int(record["tables"])
        elif phase == "compile_timeout":
            self.compile_timeout_s = float(record["timeout_s"])
            self.peak_rss_bytes = int(record["peak_rss_bytes"])
        elif phase == "change":
            self.changes.setdefault(str(record["change"]), []).append(
                {k: float(record[k]) for k in ("snapshot_s", "compile_s", "in_force_s")}
            )
        elif phase == "memory":
            self.peak_rss_change_bytes = int(record["peak_rss_bytes"])
        elif phase == "decision":
            self.decisions[int(record["policies"])] = {
                k: record[k] for k in ("p50_s", "p99_s", "mean_s", "flows", "rounds", "verdicts")
            }

    def to_json(self) -> dict[str, Any]:
        return {
            "pods": self.size.pods,
            "policies": self.size.policies,
            "namespaces": self.size.namespaces,
            "nodes": self.nodes,
            "local_pods": self.local_pods,
            "identities": self.identities,
            "tables": self.tables,
            "generate_s": self.generate_s,
            "compile_s": self.compile_s,
            "compile_timeout_s": self.compile_timeout_s,
            "baseline_rss_bytes": self.baseline_rss_bytes,
            "baseline_peak_rss_bytes": self.baseline_peak_rss_bytes,
            "snapshot_rss_bytes": self.snapshot_rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "net_peak_rss_bytes": self.net_peak_rss_bytes,
            "rss_after_compile_bytes": self.rss_after_compile_bytes,
            "peak_rss_change_bytes": self.peak_rss_change_bytes,
            "changes": {
                kind: {"in_force_s": self.change_in_force(kind), "measurements": values}
                for kind, values in self.changes.items()
            },
            "decisions": {str(count): values for count, values in self.decisions.items()},
            "worker_s": self.worker_s,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """One of the issue's scale targets, checked against this run."""

    name: str
    condition: str
    value: float | None
    limit: float
    unit: str
    met: bool | None
    """None when not measured."""
    note: str = ""

    def render(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        shown = "-" if self.value is None else _in_unit(self.value, self.unit)
        note = f"; {self.note}" if self.note else ""
        return f"{self.name}: {shown} (target {self.condition}): {verdict}{note}"


def _in_unit(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms"
    if unit == "bytes":
        return f"{value / GiB:.2f} GiB" if value >= GiB else f"{value / 2**20:.0f} MiB"
    return f"{value:.2f}"


def check_target(
    name: str, condition: str, value: float | None, limit: float, unit: str, note: str = ""
) -> TargetCheck:
    """Met when ``value <= limit``; the note says by how much it is missed (or the margin)."""
    if value is None:
        return TargetCheck(name, condition, None, limit, unit, None, note)
    met = value <= limit
    factor = value / limit if limit else math.inf
    how = f"{factor:.2f}x the limit" if met else f"{factor:.1f}x the limit"
    text = f"{how}; {note}" if note else how
    return TargetCheck(name, condition, value, limit, unit, met, text)


def evaluate_targets(results: Sequence[SizeResult]) -> list[TargetCheck]:
    """The issue's scale targets, from the figures of ``results``.

    Compile, memory and change targets are read at the 100k pods / 10k policies size (not
    measured when it was not run, e.g. ``--quick``); the decision ratio at the largest size whose
    sweep has 10 and 10,000 (or more) policies.
    """
    target = next((r for r in results if r.size == TARGET_SIZE), None)
    missing = f"needs the {TARGET_SIZE.label} size"
    checks: list[TargetCheck] = []
    if target is None:
        checks.append(check_target("full compile, 100k pods/10k pol", "≤ 10 s", None, 10, "s"))
        checks.append(check_target("peak memory, 100k pods/10k pol", "≤ 1 GiB", None, GiB, "bytes"))
        checks = [_with_note(c, missing) for c in checks]
    else:
        if target.compile_s is None and target.compile_timeout_s is not None:
            timeout = target.compile_timeout_s
            checks.append(
                TargetCheck(
                    "full compile, 100k pods/10k pol",
                    "≤ 10 s",
                    timeout,
                    10,
                    "s",
                    False,
                    f"abandoned after {timeout:.0f} s: at least {timeout / 10:.0f}x the limit",
                )
            )
        else:
            checks.append(
                check_target("full compile, 100k pods/10k pol", "≤ 10 s", target.compile_s, 10, "s")
            )
        net = target.net_peak_rss_bytes
        memory_note = "" if net is None else f"net of the baseline {_in_unit(net, 'bytes')}"
        checks.append(
            check_target(
                "peak memory, 100k pods/10k pol",
                "≤ 1 GiB",
                target.peak_rss_bytes,
                GiB,
                "bytes",
                memory_note,
            )
        )
    for kind in CHANGES:
        name = f"one change in force ({CHANGE_TITLES[kind]}), 100k pods"
        value = target.change_in_force(kind) if target is not None else None
        check = check_target(name, "≤ 50 ms", value, 0.05, "s")
        checks.append(check if target is not None else _with_note(check, missing))
    ratio, where = decision_ratio(results)
    checks.append(
        check_target("decision time, 10k pol / 10 pol (p50)", "≤ 1.2", ratio, 1.2, "ratio", where)
    )
    return checks


def decision_ratio(results: Sequence[SizeResult]) -> tuple[float | None, str]:
    """Median decision time at the most policies (≥ 10,000) over that at 10, at the largest
    size that measured both; and a note saying where (and the p99 and mean ratios)."""
    for result in sorted(results, key=lambda r: r.size.pods, reverse=True):
        most = max(result.decisions, default=0)
        if most >= 10_000 and 10 in result.decisions:
            low, high = result.decisions[10], result.decisions[most]
            ratio = float(high["p50_s"]) / float(low["p50_s"])
            p99 = float(high["p99_s"]) / float(low["p99_s"])
            mean = float(high["mean_s"]) / float(low["mean_s"])
            note = f"at {_short(result.size.pods)} pods; p99 ratio {p99:.2f}, mean ratio {mean:.2f}"
            return ratio, note
    return None, "needs a size with 10,000 policies"


def _with_note(check: TargetCheck, note: str) -> TargetCheck:
    return TargetCheck(
        check.name, check.condition, check.value, check.limit, check.unit, check.met, note
    )


@dataclass(slots=True)
class ScaleReport:
    started: str
    quick: bool
    seed: int
    machine: dict[str, Any]
    results: list[SizeResult] = field(default_factory=list)
    duration_s: float = 0.0

    def targets(self) -> list[TargetCheck]:
        return evaluate_targets(self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "scale",
            "started": self.started,
            "duration_s": self.duration_s,
            "quick": self.quick,
            "seed": self.seed,
            "node": NODE,
            "machine": self.machine,
            "sizes": [result.to_json() for result in self.results],
            "targets": [asdict(check) for check in self.targets()],
        }


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms"


def _micro(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e6:.2f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def render_table(report: ScaleReport) -> str:
    """Two tables (cost per size; decision time per policy count) and the targets."""
    rows: list[list[str]] = [
        [
            "size",
            "identities",
            "full compile",
            "peak RSS MiB (net)",
            *(CHANGE_TITLES[kind] for kind in CHANGES),
        ]
    ]
    for result in report.results:
        compile_text = _seconds(result.compile_s)
        if result.compile_s is None and result.compile_timeout_s is not None:
            compile_text = f"> {_seconds(result.compile_timeout_s)} (timeout)"
        if result.error and result.compile_s is None:
            compile_text += " (failed)"
        memory = f"{_mib(result.peak_rss_bytes)} ({_mib(result.net_peak_rss_bytes)})"
        rows.append(
            [
                result.size.label,
                "-" if result.identities is None else str(result.identities),
                compile_text,
                memory,
                *(_seconds(result.change_in_force(kind)) for kind in CHANGES),
            ]
        )
    lines = _columns(rows)
    lines.append(
        "change columns: one change in force = new snapshot + full compile (median of the "
        "measurements)"
    )
    decision_rows: list[list[str]] = [
        ["pods", "policies", "p50 µs", "p99 µs", "mean µs", "p50 vs 10 policies"]
    ]
    for result in report.results:
        low = result.decisions.get(10)
        for count, figures in sorted(result.decisions.items()):
            ratio = "-"
            if low is not None:
                ratio = f"{float(figures['p50_s']) / float(low['p50_s']):.2f}x"
            decision_rows.append(
                [
                    _short(result.size.pods),
                    _short(count),
                    _micro(float(figures["p50_s"])),
                    _micro(float(figures["p99_s"])),
                    _micro(float(figures["mean_s"])),
                    ratio,
                ]
            )
    if len(decision_rows) > 1:
        lines.append("")
        lines += _columns(decision_rows)
        flows = next(r.decisions[c]["flows"] for r in report.results for c in r.decisions)
        lines.append(
            f"decision time: AllowTables.evaluate over the same {flows} flows per row (per size), "
            "each with an isolated node-1 pod at one end"
        )
    errors = [f"{r.size.label}: {r.error}" for r in report.results if r.error]
    if errors:
        lines.append("")
        lines += [f"error: {text}" for text in errors]
    lines.append("")
    lines.append("targets:")
    lines += [f"  {check.render()}" for check in report.targets()]
    return "\n".join(lines)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def write_chart(report: ScaleReport, path: Path) -> None:
    """Three panels: full compile and one change in force against pods, peak memory against
    pods, decision time against policies (one line per pod count). A compile abandoned at the
    timeout is drawn at the timeout, marked with a triangle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    done = [r for r in report.results if r.compile_s is not None]
    abandoned = [r for r in report.results if r.compile_timeout_s is not None]
    if done:
        left.plot(
            [r.size.pods for r in done], [r.compile_s for r in done], "o-", label="full compile"
        )
    if abandoned:
        left.plot(
            [r.size.pods for r in abandoned],
            [r.compile_timeout_s for r in abandoned],
            "^",
            color="red",
            label="full compile abandoned (timeout)",
        )
    for kind in CHANGES:
        points = [(r.size.pods, r.change_in_force(kind)) for r in report.results]
        shown = [(x, y) for x, y in points if y is not None]
        if shown:
            xs, ys = zip(*shown, strict=True)
            left.plot(xs, ys, "s--", label=f"in force: {CHANGE_TITLES[kind]}")
    left.axhline(10, color="black", linestyle=":", linewidth=1, label="compile target 10 s")
    left.axhline(0.05, color="grey", linestyle=":", linewidth=1, label="change target 50 ms")
    left.set(xscale="log", yscale="log", xlabel="pods", ylabel="seconds", title="time")
    left.legend(fontsize=8)

    measured = [r for r in report.results if r.peak_rss_bytes is not None]
    if measured:
        pods = [r.size.pods for r in measured]
        middle.plot(
            pods, [(r.peak_rss_bytes or 0) / 2**20 for r in measured], "o-", label="peak RSS"
        )
        middle.plot(
            pods,
            [(r.net_peak_rss_bytes or 0) / 2**20 for r in measured],
            "o--",
            label="peak RSS minus baseline",
        )
        middle.set_xscale("log")
    middle.axhline(1024, color="black", linestyle=":", linewidth=1, label="target 1 GiB")
    middle.set(xlabel="pods", ylabel="MiB", title="memory (full compile)")
    middle.legend(fontsize=8)

    for result in report.results:
        counts = sorted(result.decisions)
        if not counts:
            continue
        label = _short(result.size.pods)
        p50 = [float(result.decisions[c]["p50_s"]) * 1e6 for c in counts]
        p99 = [float(result.decisions[c]["p99_s"]) * 1e6 for c in counts]
        (line,) = right.plot(counts, p50, "o-", label=f"{label} pods, p50")
        right.plot(counts, p99, "x:", color=line.get_color(), label=f"{label} pods, p99")
        right.set_xscale("log")
    right.set(xlabel="policies", ylabel="µs per decision", title="decision time (same flows)")
    right.set_ylim(bottom=0)
    if right.lines:
        right.legend(fontsize=8)
    figure.suptitle(
        f"netpol-agent bench scale, {report.started}, {report.machine.get('cpus')} CPUs, "
        f"Python {report.machine.get('python')}",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(report: ScaleReport, output: Path) -> tuple[Path, Path | None]:
    """Write ``scale-<timestamp>.json`` and ``.png`` into ``output``; their paths.

    Without matplotlib (the project's ``bench`` extra) there is no chart: its path is None.
    """
    output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = output / f"scale-{stamp}.json"
    png_path = output / f"scale-{stamp}.png"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return json_path, None
    write_chart(report, png_path)
    return json_path, png_path


def machine_info() -> dict[str, Any]:
    """What the figures depend on; ``load_before`` is the 1-minute load average at the start
    (above zero, other processes shared the CPUs)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "load_before": os.getloadavg()[0],
    }


def measure_size(
    spec: WorkerSpec, timeout: float, progress: Callable[[str], None] | None = None
) -> SizeResult:
    """Run one worker process for ``spec`` and gather its figures (bounded by ``timeout`` s).

    The worker's JSON lines are read as they come, so progress shows live and a worker stopped
    at the timeout still leaves the figures of the phases it finished.
    """
    result = SizeResult(spec.size, nodes=spec.size.nodes)
    command = [sys.executable, "-m", "agent.bench.scale", "--worker", spec.to_json()]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                if line.startswith("{"):
                    record = json.loads(line)
                    result.absorb(record)
                    if progress is not None:
                        progress(_describe(spec.size, record))

        reader = threading.Thread(target=read, name="scale-worker-output", daemon=True)
        reader.start()
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        errors.seek(0)
        error_text = errors.read()
    result.worker_s = time.perf_counter() - started
    if code is None:
        result.error = f"worker stopped after {_seconds(timeout)}"
    elif code != 0:
        tail = error_text.strip().splitlines()[-1:] or [f"exit status {code}"]
        result.error = f"worker failed: {tail[0]}"
    return result


def _describe(size: Size, record: Mapping[str, Any]) -> str:
    phase = record.get("phase")
    if phase == "cluster":
        return f"  {size.label}: generated in {record['generate_s']:.1f} s"
    if phase == "compile":
        return (
            f"  {size.label}: full compile {_seconds(record['compile_s'])}, "
            f"{record['identities']} identities, {record['tables']} tables"
        )
    if phase == "compile_timeout":
        return f"  {size.label}: full compile abandoned after {_seconds(record['timeout_s'])}"
    if phase == "change":
        return (
            f"  {size.label}: {CHANGE_TITLES[record['change']]} in force in "
            f"{_seconds(record['in_force_s'])}"
        )
    if phase == "decision":
        return (
            f"  {size.label}: {record['policies']} policies, decision p50 "
            f"{record['p50_s'] * 1e6:.2f} µs"
        )
    return f"  {size.label}: {phase}"


def run(
    sizes: Sequence[Size],
    *,
    quick: bool = False,
    seed: int = 1,
    flows: int = 100_000,
    compile_timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> ScaleReport:
    """Measure every size in its own worker process, in order."""
    report = ScaleReport(
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        quick=quick,
        seed=seed,
        machine=machine_info(),
    )
    started = time.perf_counter()
    for size in sizes:
        if progress is not None:
            progress(f"{size.label} ({size.nodes} nodes): fresh worker")
        spec = WorkerSpec(size, seed=seed, flows=flows, compile_timeout=compile_timeout)
        # The compile may take its whole budget; changes and the sweep get as long again, twice.
        result = measure_size(spec, timeout=3 * compile_timeout + 120, progress=progress)
        report.results.append(result)
    report.duration_s = time.perf_counter() - started
    return report


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``netpol-agent bench scale``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="stop at 10k pods (about 15 s) instead of going on to 100k pods (about a minute); "
        "the targets, stated for 100k pods, are then not measured",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"directory for the JSON results and the PNG chart (default {DEFAULT_OUTPUT}/)",
    )
    parser.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        metavar="PODS:POLICIES:NAMESPACES",
        help="cluster sizes to measure, e.g. 1k:100:10 50k:5k:500 (default 1k:100:10 "
        "10k:1k:100 100k:10k:1000; --quick drops the last)",
    )
    parser.add_argument(
        "--flows",
        type=int,
        default=100_000,
        metavar="N",
        help="flows in the decision-time mix (default 100000)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the synthetic clusters (default 1)"
    )
    parser.add_argument(
        "--compile-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="abandon a full compile after S seconds and report it as exceeded (default 300)",
    )


def run_scale(args: argparse.Namespace) -> int:
    """``netpol-agent bench scale``: run, print the table, write the files; the exit status."""

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    sizes: Sequence[Size] = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    progress(f"netpol-agent bench scale: {len(sizes)} size(s), each in a fresh process")
    try:
        report = run(
            sizes,
            quick=args.quick,
            seed=args.seed,
            flows=args.flows,
            compile_timeout=args.compile_timeout,
            progress=progress,
        )
        json_path, png_path = write_results(report, args.output)
    except KeyboardInterrupt:
        print("netpol-agent bench scale: interrupted", file=sys.stderr)
        return 130
    print(render_table(report))
    if png_path is None:
        print(f"\nwrote {json_path}; no chart: matplotlib is missing (the project's 'bench' extra)")
    else:
        print(f"\nwrote {json_path} and {png_path}")
    return 1 if any(r.error for r in report.results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.bench.scale``: the same as ``netpol-agent bench scale``; with
    ``--worker SPEC`` the worker process of one size."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--worker"] and len(arguments) == 2:
        return worker_main(arguments[1])
    parser = argparse.ArgumentParser(prog="netpol-agent bench scale")
    add_scale_arguments(parser)
    return run_scale(parser.parse_args(arguments))


if __name__ == "__main__":
    raise SystemExit(main())
