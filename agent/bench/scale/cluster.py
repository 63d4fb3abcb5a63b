"""A synthetic cluster: its pods, its policies and the order in which namespaces adopt them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agent.bench.scale.plans import NamespacePlan, generate_pods, namespace_plan
from agent.bench.scale.policies import generate_policy
from agent.bench.scale.sizes import NODE, Size
from enforcement.model import (
    ClusterSnapshot,
    Namespace,
    NetworkPolicy,
    Pod,
)


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
      ``i // namespaces`` (see ``generate_policy``): default deny, DNS egress, and allows from
      pods, namespaces, both, matchExpressions, ipBlocks with excepts, numeric, named and ranged
      ports.
    """
    count = size.policies if policies is None else policies
    rng = random.Random(f"netpol-agent-scale:{seed}:{size.pods}:{size.namespaces}:pods")
    plans = tuple(namespace_plan(rng, size, index) for index in range(size.namespaces))
    pods = generate_pods(rng, size, plans)
    teams = sorted({plan.namespace.labels["team"] for plan in plans})
    generated = tuple(
        generate_policy(random.Random(f"netpol-agent-scale:{seed}:policy:{i}"), plans, teams, i)
        for i in range(count)
    )
    return SyntheticCluster(size, seed, plans, pods, generated)
