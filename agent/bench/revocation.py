"""What a policy change costs the fast path's revocation, against a full conntrack table.

    sudo .venv/bin/python -m agent.bench.revocation [--entries 10000 30000] [--rounds 3]

Builds a network namespace of its own (``npt-revoke-bench``, removed at the end), fills its
conntrack table with accepted Service connections (UDP, as kube-proxy's DNAT leaves them: the
original tuple towards a ClusterIP, the reply tuple from the pod) spread over the local pods of
a synthetic cluster, and times ``Revoker.revoke_denied`` for four changes:

- ``first sync``: nothing to compare with, every accepted connection is read and judged;
- ``no endpoint touched``: a policy of another namespace changes;
- ``one pod denied``: one local pod's policy becomes deny-all (its connections are cut);
- ``namespace relabelled``: every pod's namespace changes labels (every address is touched:
  one full read, filtered here).

Nothing outside the namespace is touched. Each figure is the median over ``--rounds``, the
table refilled before each round.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import subprocess
import time
from collections.abc import Iterator

from agent.bench.stats import median
from enforcement.compiler import METADATA_NAME_LABEL, compile_tables
from enforcement.conntrack import Revoker
from enforcement.ctnetlink import CtNetlink, TupleEnds
from enforcement.firewall import MARK_ACCEPTED
from enforcement.model import (
    IPPROTO_UDP,
    ClusterSnapshot,
    Direction,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    Rule,
)

NODE = "node-1"
NAMESPACE = "npt-revoke-bench"
LOCAL_PODS = 50
REMOTE_PODS = 200
POD_CIDR = "10.244.1.0/24"
SERVICE_NETWORK = ipaddress.IPv4Network("10.96.0.0/16")
TIMEOUT = 600
"""Seconds the inserted entries live (longer than any run)."""


def local_address(index: int) -> str:
    return f"10.244.1.{index + 2}"


def remote_address(index: int) -> str:
    return f"10.244.2.{index + 2}"


def cluster(
    relabelled: bool = False, denied: int | None = None, other: bool = False
) -> ClusterSnapshot:
    """``LOCAL_PODS`` pods on this node, each admitting its namespace's pods; remote clients.

    ``denied``: that local pod's policy admits nothing; ``other``: one more policy in another
    namespace; ``relabelled``: the namespace has one more label.
    """
    labels = {METADATA_NAME_LABEL: "bench"}
    if relabelled:
        labels["touched"] = "yes"
    pods = [
        Pod("bench", f"server-{i}", Labels({"app": f"s{i}"}),
            (ipaddress.ip_address(local_address(i)),), node_name=NODE)
        for i in range(LOCAL_PODS)
    ] + [
        Pod("bench", f"client-{i}", Labels({"app": "client"}),
            (ipaddress.ip_address(remote_address(i)),), node_name="node-2")
        for i in range(REMOTE_PODS)
    ]  # fmt: skip
    admit_namespace = (Rule(peers=(Peer(pod_selector=LabelSelector()),)),)
    policies = [
        NetworkPolicy("bench", f"server-{i}", LabelSelector((("app", f"s{i}"),)),
                      frozenset({Direction.INGRESS}), () if i == denied else admit_namespace)
        for i in range(LOCAL_PODS)
    ]  # fmt: skip
    if other:
        policies.append(
            NetworkPolicy("elsewhere", "p", LabelSelector(), frozenset({Direction.INGRESS}))
        )
    return ClusterSnapshot((Namespace("bench", Labels(labels)),), tuple(pods), tuple(policies))


def service_entries(count: int) -> Iterator[tuple[int, TupleEnds, TupleEnds, int, int]]:
    """``count`` accepted Service connections: client -> ClusterIP:80, DNATed to pod:8080."""
    for n in range(count):
        client = socket.inet_aton(remote_address(n % REMOTE_PODS))
        server = socket.inet_aton(local_address(n % LOCAL_PODS))
        service = (SERVICE_NETWORK.network_address + 10 + n % LOCAL_PODS).packed
        port = 10000 + n // REMOTE_PODS
        original = TupleEnds(client, service, IPPROTO_UDP, port, 80)
        reply = TupleEnds(server, client, IPPROTO_UDP, 8080, port)
        yield socket.AF_INET, original, reply, MARK_ACCEPTED, TIMEOUT


def fill(count: int) -> int:
    """Flush the current namespace's table and insert ``count`` accepted connections."""
    subprocess.run(["conntrack", "-F"], check=True, capture_output=True)
    with CtNetlink() as netlink:
        return netlink.create(service_entries(count))


def measure(count: int) -> dict[str, float]:
    """Seconds per change (one round) with ``count`` connections in the table."""
    fill(count)
    base = cluster()
    revoker = Revoker()
    results: dict[str, float] = {}
    changes = [
        ("first sync", base),
        ("no endpoint touched", cluster(other=True)),
        ("one pod denied", cluster(other=True, denied=3)),
        ("namespace relabelled", cluster(other=True, denied=3, relabelled=True)),
    ]
    for generation, (name, snapshot) in enumerate(changes, start=1):
        tables = compile_tables(snapshot, NODE, generation)
        started = time.perf_counter()
        outcome = revoker.revoke_denied(tables, snapshot, (POD_CIDR,))
        results[name] = time.perf_counter() - started
        results[f"{name}: judged"] = outcome.judged
        results[f"{name}: cut"] = outcome.cut
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10000, 30000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from agent.lab.netns import entered

    subprocess.run(["ip", "netns", "add", NAMESPACE], check=True)
    try:
        with entered(NAMESPACE):
            for count in args.entries:
                rounds = [measure(count) for _ in range(args.rounds)]
                print(f"{count} accepted connections")
                for name in rounds[0]:
                    values = [r[name] for r in rounds]
                    if name.endswith((": judged", ": cut")):
                        print(f"  {name:34} {int(values[0])}")
                    else:
                        print(f"  {name:34} {median(values) * 1000:9.1f} ms")
    finally:
        subprocess.run(["ip", "netns", "del", NAMESPACE], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
