"""The metrics on real packets: a probe of a lab moves the connection, packet, per-policy and
kernel-queue series by what it did, and a policy change shows in the programming delay; with one
queue thread and with two worker processes (whose counters the agent sums with its own pump's,
which counts the connections the kernel passes alone).

Lab x has pods a, b, c serving port 80; ``deny-in-b`` isolates b's ingress. So a -> b and
c -> b are denied by it (queued, since b is isolated); b -> a and b -> c are queued and allowed
(nothing isolates their egress or the destination); a <-> c pass in the kernel, known to the
agent only through the NFLOG log chain that lab agents' flow log turns on.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.health import DEFAULT_HEALTH_PORT
from agent.lab.lab import Lab
from agent.lab.netns import entered
from agent.metrics import version
from tests.e2e.labctl import LabDriver, lab_session
from tests.e2e.test_dataplane import B_FROM_A_ANY, CLUSTER, DENY_INGRESS_B

pytestmark = pytest.mark.root

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

REPORT_WAIT = 1.5
"""Seconds for the pumps (every 50 ms) and worker processes' reports (every second) to land."""


def scrape(lab: LabDriver) -> Samples:
    node = Lab(lab.name).record().nodes[0]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with (
        entered(node.netns),
        direct.open(f"http://127.0.0.1:{DEFAULT_HEALTH_PORT}/metrics", timeout=5) as reply,
    ):
        text = reply.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(found: Samples, metric: str, /, **labels: str) -> float:
    """The sum of ``metric``'s series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (each, have), value in found.items() if each == metric and wanted <= have)


def by_queue(found: Samples, name: str) -> dict[str, float]:
    return {
        dict(labels)["queue"]: value
        for (each, labels), value in found.items()
        if each == name and "queue" in dict(labels)
    }


@pytest.mark.parametrize(
    "up_args",
    [pytest.param((), id="one-queue"), pytest.param(("--queue-workers", "2"), id="two-workers")],
)
def test_a_probe_moves_the_series_by_what_it_did(up_args: tuple[str, ...], tmp_path: Path) -> None:
    queues = {"1000", "1001"} if up_args else {"1000"}
    with lab_session("metrics", tmp_path, up_args) as lab:
        lab.up(CLUSTER, DENY_INGRESS_B)
        time.sleep(REPORT_WAIT)
        before = scrape(lab)
        matrix = lab.probe(80)
        assert not matrix["x/a"]["x/b"] and not matrix["x/c"]["x/b"]
        assert matrix["x/b"]["x/a"] and matrix["x/a"]["x/c"] and matrix["x/c"]["x/a"]
        time.sleep(REPORT_WAIT)
        after = scrape(lab)

        def moved(metric: str, /, **labels: str) -> float:
            return total(after, metric, **labels) - total(before, metric, **labels)

        tcp4 = {"protocol": "TCP", "family": "4"}
        connections = "netpol_agent_connections_total"
        # Denied: a -> b and c -> b, once each (their SYN retransmissions are folded).
        denied = {"verdict": "denied", "reason": "denied-ingress", "direction": "ingress"}
        assert moved(connections, **denied, **tcp4) == 2
        # Allowed without isolation: b -> a, b -> c (queued), a <-> c (the kernel, via NFLOG).
        free = {"verdict": "allowed", "reason": "not-isolated", "direction": "none"}
        assert moved(connections, **free, **tcp4) >= 4
        assert moved("netpol_agent_events_total") >= 6
        assert moved("netpol_agent_event_records_total") >= 6
        assert moved("netpol_agent_events_dropped_total") == 0
        packets = "netpol_agent_packets_total"
        assert moved(packets, action="drop", reason="denied-ingress", **tcp4) >= 2
        assert set(by_queue(after, packets)) <= queues
        assert moved(
            "netpol_agent_policy_connections_total",
            kind="NetworkPolicy", namespace="x", name="deny-in-b", tier="NetworkPolicy",
            action="Isolate", direction="ingress", verdict="denied",
        ) == 2  # fmt: skip

        # The kernel's own queue table, per queue of the node's namespace.
        assert set(by_queue(after, "netpol_agent_nfqueue_copy_range")) == queues
        assert set(by_queue(after, "netpol_agent_nfqueue_copy_range").values()) == {512}
        assert set(by_queue(after, "netpol_agent_nfqueue_copy_mode").values()) == {2}
        assert all(
            portid != 0 for portid in by_queue(after, "netpol_agent_nfqueue_peer_portid").values()
        )
        queued = sum(by_queue(after, "netpol_agent_nfqueue_packet_id").values()) - sum(
            by_queue(before, "netpol_agent_nfqueue_packet_id").values()
        )
        assert queued >= 4, "the SYNs of a -> b, c -> b, b -> a, b -> c were queued"
        assert total(after, "netpol_agent_nfqueue_queue_dropped_total") == 0
        assert total(after, "netpol_agent_nfqueue_user_dropped_total") == 0
        assert total(after, "netpol_agent_nfqueue_unparsed_lines_total") == 0
        assert total(after, "netpol_agent_queue_config_refused_total") == 0
        assert total(after, "netpol_agent_build_info", version=version()) == 1

        # A change: its delay from the lab store to the rules in force is observed once.
        delay = "netpol_agent_policy_programming_seconds"
        lab.apply(B_FROM_A_ANY)
        assert lab.probe(80)["x/a"]["x/b"]
        changed = scrape(lab)
        observed = total(changed, f"{delay}_count") - total(after, f"{delay}_count")
        assert observed == 1
        seconds = total(changed, f"{delay}_sum") - total(after, f"{delay}_sum")
        assert 0 < seconds < 10, seconds
        assert total(changed, f"{delay}_bucket", le="+Inf") == total(changed, f"{delay}_count")
