"""The decision-time flow mix (seeded): new flows that reach node-1's isolated pods."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from typing import Final

from agent.bench.scale.cluster import SyntheticCluster
from agent.bench.scale.sizes import NODE, SWEEP
from enforcement.model import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPAddress,
    IPNetwork,
    Pod,
)

EXTERNAL_V4: Final = tuple(
    ipaddress.IPv4Network(n) for n in ("203.0.113.0/24", "198.51.100.0/24", "192.168.0.0/16")
)
EXTERNAL_V6: Final = (ipaddress.IPv6Network("2001:db8::/32"),)
"""Addresses outside the cluster that flows of the mix reach (documentation and private ranges)."""

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
