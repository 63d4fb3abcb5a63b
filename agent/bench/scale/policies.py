"""Synthetic NetworkPolicies (seeded): ten shapes that every namespace receives in turn."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from typing import Final

from agent.bench.scale.plans import ENVS, NamespacePlan, Workload
from enforcement.compiler import METADATA_NAME_LABEL as METADATA_NAME
from enforcement.model import (
    Direction,
    IPBlock,
    LabelRequirement,
    LabelSelector,
    NetworkPolicy,
    Peer,
    PolicyPort,
    PortProtocol,
    Rule,
    SelectorOperator,
)

TCP_: Final[PortProtocol] = "TCP"
UDP_: Final[PortProtocol] = "UDP"
"""Typed protocol names for the policies' ports (``PolicyPort`` takes a ``PortProtocol``)."""


def selector(
    *expressions: LabelRequirement, labels: Mapping[str, str] | None = None
) -> LabelSelector:
    """A selector of ``labels`` (matchLabels) and ``expressions`` (matchExpressions)."""
    return LabelSelector(tuple(sorted((labels or {}).items())), tuple(expressions))


def requirement(key: str, operator: SelectorOperator, *values: str) -> LabelRequirement:
    """One matchExpressions entry."""
    return LabelRequirement(key, operator, frozenset(values))


def _pick(rng: random.Random, plan: NamespacePlan, tiers: Sequence[str]) -> Workload | None:
    candidates = [w for w in plan.workloads if w.tier in tiers and not w.host_network]
    return rng.choice(candidates) if candidates else None


def _app_selector(workload: Workload | None, tier: str) -> LabelSelector:
    """Select a workload by app (its own key), or the tier when the namespace has none."""
    if workload is None:
        return selector(labels={"tier": tier})
    key = "k8s-app" if workload.tier == "dns" else "app"
    return selector(labels={key: workload.app})


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


def generate_policy(
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
            namespace, name, selector(), frozenset({Direction.INGRESS, Direction.EGRESS})
        )
    if shape == "allow-dns":
        dns = Peer(
            pod_selector=selector(labels={"k8s-app": "coredns"}),
            namespace_selector=selector(labels={METADATA_NAME: "kube-system"}),
        )
        rule = Rule((dns,), ports((UDP_, 53, None), (TCP_, 53, None)))
        return NetworkPolicy(namespace, name, selector(), egress_only, egress=(rule,))
    if shape == "allow-tier":
        # Backends (one app, or a tier) accept their frontends / callers on a named port.
        target = _pick(rng, plan, ("backend", "api", "db", "cache"))
        tier = target.tier if target is not None else "backend"
        callers = {"backend": "frontend", "api": "frontend", "db": "backend", "cache": "api"}
        caller = rng.choice([callers[tier], "worker"])
        named = {"db": "db", "cache": "redis"}.get(tier, "http")
        rule = Rule(
            (Peer(pod_selector=selector(labels={"tier": caller})),), ports((TCP_, named, None))
        )
        return NetworkPolicy(
            namespace, name, _app_selector(target, tier), ingress_only, ingress=(rule,)
        )
    if shape == "allow-team":
        target = _pick(rng, plan, ("api", "frontend"))
        team = rng.choice(teams)
        rule = Rule(
            (Peer(namespace_selector=selector(labels={"team": team})),),
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
                    pod_selector=selector(labels={"tier": "frontend"}),
                    namespace_selector=selector(labels={"env": env}),
                ),
            ),
            ports((TCP_, first, first + rng.choice((10, 100, 1000)))),
        )
        return NetworkPolicy(
            namespace, name, selector(labels={"tier": "api"}), ingress_only, ingress=(rule,)
        )
    if shape == "allow-expressions":
        excluded = rng.choice(teams)
        peer = Peer(
            pod_selector=selector(
                requirement("tier", "In", "frontend", "api"), requirement("app", "Exists")
            ),
            namespace_selector=selector(
                requirement("env", "In", "prod", "staging"), requirement("team", "NotIn", excluded)
            ),
        )
        rule = Rule((peer,), ports((TCP_, "http", None), (TCP_, 9090, None)))
        subjects = selector(
            requirement("tier", "In", "backend", "api", "worker"),
            requirement("canary", "DoesNotExist"),
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
            namespace, name, selector(labels={"tier": "frontend"}), ingress_only, ingress=(rule,)
        )
    if shape == "allow-backends-egress":
        partner = rng.randrange(256)
        api = IPBlock(
            ipaddress.IPv4Network(f"198.51.100.{partner & 0xF0}/28"),
            (ipaddress.IPv4Network(f"198.51.100.{(partner & 0xF0) | 8}/29"),),
        )
        rules: tuple[Rule, ...] = (
            Rule((Peer(pod_selector=selector(labels={"tier": "db"})),), ports((TCP_, "db", None))),
            Rule(
                (Peer(pod_selector=selector(labels={"tier": "cache"})),), ports((TCP_, 6379, None))
            ),
            Rule((Peer(ip_block=api),), ports((TCP_, 443, None))),
        )
        subjects = selector(requirement("tier", "In", "backend", "api", "worker"))
        return NetworkPolicy(namespace, name, subjects, egress_only, egress=rules)
    if shape == "allow-monitoring":
        peer = Peer(
            pod_selector=selector(labels={"app": "prometheus"}),
            namespace_selector=selector(labels={METADATA_NAME: "monitoring"}),
        )
        rule = Rule((peer,), ports((TCP_, "metrics", None)))
        return NetworkPolicy(namespace, name, selector(), ingress_only, ingress=(rule,))
    # allow-namespace-egress: within the namespace, and to the APIs of the team's namespaces.
    team = plan.namespace.labels.get("team", "platform")
    rules = (
        Rule((Peer(pod_selector=selector()),)),
        Rule(
            (
                Peer(
                    pod_selector=selector(labels={"tier": "api"}),
                    namespace_selector=selector(labels={"team": team}),
                ),
            ),
            ports((TCP_, 8080, None), (UDP_, 5000, 5100)),
        ),
    )
    return NetworkPolicy(namespace, name, selector(), egress_only, egress=rules)
