"""HTTP endpoints of the daemon: liveness (/healthz), readiness (/readyz), Prometheus (/metrics).

Metrics are collected at scrape time from counters the agent keeps anyway (a custom collector), so
the packet path pays nothing for them: it never touches a Prometheus object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from enforcement.queue import DECISION_BUCKETS_NS
from enforcement.verdict import VERDICTS

if TYPE_CHECKING:
    from agent.runner import Agent

log = logging.getLogger(__name__)

PREFIX = "netpol_agent"
STALE_AFTER = 30.0
"""Seconds without a turn of the sync loop after which the agent reports itself unhealthy."""


class AgentCollector(Collector):
    """Reads an ``Agent``'s counters when Prometheus scrapes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        agent = self.agent
        packets = CounterMetricFamily(
            f"{PREFIX}_packets",
            "Packets decided, by verdict and reason.",
            labels=["queue", "action", "reason"],
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_decision_errors",
            "Packets that got the default (fail-open/closed) verdict because deciding failed.",
            labels=["queue"],
        )
        decision_seconds = HistogramMetricFamily(
            f"{PREFIX}_decision_seconds",
            "Time the agent took to decide a queued packet, from the callback's start to its "
            "verdict (parsing included).",
            labels=["queue"],
        )
        flows = GaugeMetricFamily(
            f"{PREFIX}_flows", "Connections in the agent's flow table.", labels=["queue"]
        )
        evictions = CounterMetricFamily(
            f"{PREFIX}_flow_evictions",
            "Flows evicted because the flow table was full.",
            labels=["queue"],
        )
        for worker in agent.workers:
            queue = str(worker.queue_num)
            stats = worker.stats
            for reason, count in list(stats.verdicts.items()):
                action = VERDICTS[reason].action.value
                packets.add_metric([queue, action, reason.value], count)
            errors.add_metric([queue], stats.errors)
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*DECISION_BUCKETS_NS, None), stats.decision_buckets, strict=True
            ):
                cumulative += count
                buckets.append(("+Inf" if bound is None else repr(bound / 1e9), cumulative))
            decision_seconds.add_metric([queue], buckets, sum_value=stats.decision_ns_total / 1e9)
            flows.add_metric([queue], len(worker.flows))
            evictions.add_metric([queue], worker.flows.evictions)
        yield from (packets, errors, decision_seconds, flows, evictions)

        status = agent.status
        for name, text, value in (
            ("ready", "1 when enforcement is active.", 1.0 if agent.ready.is_set() else 0.0),
            ("generation", "Generation of the tables in force.", status.generation),
            ("pods", "Pods known in the cluster.", status.pods),
            ("local_addresses", "Addresses of this node's pods.", status.local_pods),
            (
                "isolated_addresses",
                "Addresses of this node's pods that a policy isolates (queued).",
                status.isolated_addresses,
            ),
            ("policies", "NetworkPolicies known in the cluster.", status.policies),
            (
                "pod_cidrs",
                "This node's pod ranges guarded against unknown (too new) pods; 0: guard off.",
                len(status.pod_cidrs),
            ),
            ("object_errors", "Objects taken with an error (see the log).", len(status.errors)),
            ("last_sync_seconds", "Duration of the last firewall sync.", status.last_sync_seconds),
            ("last_compile_seconds", "Duration of the last compile.", status.compile_seconds),
        ):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=float(value))
        yield CounterMetricFamily(
            f"{PREFIX}_syncs", "Compiles published to the dataplane.", value=status.syncs
        )
        yield CounterMetricFamily(
            f"{PREFIX}_revoked_connections",
            "Established connections cut because a policy change denied them.",
            value=status.revoked,
        )
        yield from self._source_metrics()

    def _source_metrics(self) -> Iterator[Any]:
        """List/watch counters of the Kubernetes source (absent for the lab's store)."""
        stats = getattr(self.agent.source, "stats", None)
        if stats is None:
            return
        families = {
            name: CounterMetricFamily(f"{PREFIX}_source_{name}", text, labels=["kind"])
            for name, text in (
                ("lists", "Complete lists of a kind (the first and every relist)."),
                ("relists", "Lists after the first (410 Gone, ERROR events, failed lists)."),
                ("watches", "Watch requests the API server accepted."),
                ("events", "Watch events applied to the state cache."),
                ("errors", "Failed requests, dropped connections and undecodable events."),
            )
        }
        for kind, counters in stats().items():
            for name, family in families.items():
                family.add_metric([kind], getattr(counters, name))
        yield from families.values()


class HealthServer:
    """Serves the endpoints on a daemon thread until ``close``."""

    def __init__(self, agent: Agent, address: str, port: int) -> None:
        registry = CollectorRegistry()
        registry.register(AgentCollector(agent))
        handler = _handler(agent, registry)
        self.server = ThreadingHTTPServer((address, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        log.info("health and metrics on port %d", self.port)
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(agent: Agent, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                age = time.monotonic() - agent.heartbeat
                if age < STALE_AFTER:
                    self._reply(200, b"ok\n")
                else:
                    self._reply(503, f"sync loop stalled for {age:.0f}s\n".encode())
            elif path == "/readyz":
                if agent.ready.is_set():
                    self._reply(200, b"ready\n")
                else:
                    self._reply(503, b"not enforcing yet\n")
            elif path == "/metrics":
                self._reply(200, generate_latest(registry), "text/plain; version=0.0.4")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health: " + format, *args)

    return Handler
