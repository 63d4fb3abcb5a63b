"""The changes whose time in force is measured, and the state maps they are applied to."""

from __future__ import annotations

from typing import Final

from agent.bench.scale.cluster import SyntheticCluster
from agent.bench.scale.policies import selector
from agent.bench.scale.sizes import NODE
from enforcement.model import (
    ClusterSnapshot,
    Direction,
    Labels,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Rule,
)

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
            (Peer(namespace_selector=selector(labels={"env": "prod"})),),
            (PolicyPort("TCP", 8443), PolicyPort("TCP", "metrics")),
        )
        return NetworkPolicy(
            pod.namespace,
            f"added-{number}",
            selector(labels={"tier": pod.labels.get("tier", "")}),
            frozenset({Direction.INGRESS}),
            ingress=(rule,),
        )
    raise ValueError(f"unknown change {kind!r}")
