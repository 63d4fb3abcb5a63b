"""What ``/metrics`` says: Prometheus collectors reading the agent's own counters at scrape time.

The packet path never touches a Prometheus object: the queue worker bumps plain counters
(``QueueStats``, a dictionary increment per packet), the event pump counts outcomes
(``EventCounts``), worker processes send theirs once a second, and the collector turns them all
into metric families only when Prometheus scrapes. Labels are made here, never on the way.

Every metric is listed with its type, labels and meaning in docs/observability.md (a test keeps
the two in step). The HTTP server is ``agent.health``.
"""

from __future__ import annotations

import platform
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from enforcement.eventpump import EventCounts, connection_series, policy_series
from enforcement.model import PROTOCOL_NAMES
from enforcement.nfqueue import read_queue_counters
from enforcement.queue import DECISION_BUCKETS_NS
from enforcement.verdict import VERDICTS

if TYPE_CHECKING:
    from agent.runner import Agent

PREFIX = "netpol_agent"
PACKAGE = "netpol-agent"

PROGRAMMING_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of the policy-programming delay histogram: a change in a small cluster
is in force within the settle time and a compile (milliseconds); one of 100k pods takes
seconds (docs/benchmarks.md). Cilium's ``policy_implementation_delay`` measures the same."""


def version() -> str:
    """The installed package's version (its metadata), or ``unknown`` when run from a tree
    that was never installed."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(slots=True)
class DelayHistogram:
    """Observations of a delay in fixed buckets (not cumulative; the last is +Inf). Written by
    one thread (the sync loop), read by scrapes: reads are racy but each count is monotonic."""

    bounds: tuple[float, ...] = PROGRAMMING_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(PROGRAMMING_BUCKETS) + 1))
    total: float = 0.0
    """Sum of the observed seconds."""

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` label, cumulative count) of per-bucket ``counts``."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, None), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound is None else repr(bound), running))
    return buckets


def _family(number: int) -> str:
    return str(number) if number in (4, 6) else ""


class AgentCollector(Collector):
    """Reads an ``Agent``'s counters when Prometheus scrapes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.unparsed_queue_lines = 0
        """Lines of the kernel's queue table skipped because they did not parse (all scrapes)."""
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        yield from self._queue_metrics()
        yield from self._event_metrics()
        yield from self._kernel_queue_metrics()
        yield from self._status_metrics()
        yield from self._source_metrics()

    # -- queue workers ----------------------------------------------------------------------

    def _queue_metrics(self) -> Iterator[Any]:
        packets = CounterMetricFamily(
            f"{PREFIX}_packets",
            "Packets the queue decided, by action (accept/drop), reason, protocol and IP "
            "family (protocol and family empty for a packet that could not be parsed).",
            labels=["queue", "action", "reason", "protocol", "family"],
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
        restarts = CounterMetricFamily(
            f"{PREFIX}_queue_worker_restarts",
            "Times the queue's worker (thread or process) was restarted after it ended.",
            labels=["queue"],
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_queue_worker_up",
            "1 while the queue's worker is deciding, 0 while it is down or restarting.",
            labels=["queue"],
        )
        config_refused = CounterMetricFamily(
            f"{PREFIX}_queue_config_refused",
            "Times the kernel refused the queue's configuration (GSO and fail-open flags); "
            "the worker decides on without them.",
            labels=["queue"],
        )
        bind_refused = CounterMetricFamily(
            f"{PREFIX}_queue_bind_refused",
            "Times the kernel refused to bind the queue (the worker ended and was restarted).",
            labels=["queue"],
        )
        for slot in list(self.agent.slots):
            worker = slot.worker
            queue = str(worker.queue_num)
            restarts.add_metric([queue], slot.restarts)
            deciding = slot.down_since is None and worker.bound.is_set()
            up.add_metric([queue], 1.0 if deciding else 0.0)
            bind_refused.add_metric([queue], slot.bind_refused)
            stats = worker.stats
            config_refused.add_metric([queue], stats.config_refused)
            for (reason, protocol, family), count in list(stats.kinds.items()):
                action = VERDICTS[reason].action.value
                labels = [queue, action, reason.value, _protocol_name(protocol), _family(family)]
                packets.add_metric(labels, count)
            errors.add_metric([queue], stats.errors)
            decision_seconds.add_metric(
                [queue],
                _cumulative([bound / 1e9 for bound in DECISION_BUCKETS_NS], stats.decision_buckets),
                sum_value=stats.decision_ns_total / 1e9,
            )
            flows.add_metric([queue], len(worker.flows))
            evictions.add_metric([queue], worker.flows.evictions)
        yield from (packets, errors, decision_seconds, flows, evictions, restarts, up)
        yield from (config_refused, bind_refused)

    # -- the verdict-event stream -----------------------------------------------------------

    def _event_metrics(self) -> Iterator[Any]:
        counts: list[EventCounts] = self.agent.event_counts()
        connections = CounterMetricFamily(
            f"{PREFIX}_connections",
            "Connections decided, by verdict, reason, direction (whose policies decided), "
            "protocol and IP family. Connections the kernel passes alone (nothing isolates "
            "either side) or admits from its verdict cache are counted only while the NFLOG "
            "log chain is on (a flow log or --trace).",
            labels=["verdict", "reason", "direction", "protocol", "family"],
        )
        for (verdict, reason, direction, protocol, family), number in connection_series(
            counts
        ).items():
            connections.add_metric([verdict, reason, direction, protocol, _family(family)], number)
        yield connections
        for name, text, attribute in (
            ("events", "Verdict events the pumps drained (every decided connection).", "events"),
            (
                "event_records",
                "Flow records written (handed to the flow log and --trace).",
                "records",
            ),
            (
                "event_records_suppressed",
                "Flow records the rate limit held back (--flow-log-rate), in the agent or "
                "already in the kernel (the NFLOG rules' limit).",
                "suppressed",
            ),
            (
                "events_dropped",
                "Verdict events lost because the buffer was full (the packets were decided).",
                "dropped",
            ),
            (
                "events_folded",
                "Denied packets of a recorded connection folded into one 'repeat' record.",
                "folded",
            ),
        ):
            value = sum(getattr(each, attribute) for each in counts)
            if attribute == "suppressed":  # held back by the NFLOG rules' own limit too
                value += self.agent.status.unlogged_connections
            yield CounterMetricFamily(f"{PREFIX}_{name}", text, value=value)
        if self.agent.config.policy_metrics:
            policies = CounterMetricFamily(
                f"{PREFIX}_policy_connections",
                "Connections each policy's rules decided (--policy-metrics), by kind, "
                "namespace, name, tier, action, direction and the connection's verdict; at "
                "most 1000 series, the rest summed under the name '_other'.",
                labels=["kind", "namespace", "name", "tier", "action", "direction", "verdict"],
            )
            for key, number in policy_series(counts).items():
                policies.add_metric(list(key), number)
            yield policies

    # -- the kernel's queue table -----------------------------------------------------------

    def _kernel_queue_metrics(self) -> Iterator[Any]:
        """/proc/net/netfilter/nfnetlink_queue of the agent's network namespace, per queue."""
        gauges = {
            name: GaugeMetricFamily(f"{PREFIX}_nfqueue_{name}", text, labels=["queue"])
            for name, text in (
                ("queue_length", "Packets waiting in the kernel queue for a verdict now."),
                ("peer_portid", "Netlink port id of the socket bound to the queue."),
                ("copy_mode", "Copy mode: 0 none, 1 packet metadata, 2 packet bytes."),
                ("copy_range", "Bytes of each packet copied to the agent."),
                ("packet_id", "Id of the last packet queued (wraps at 2**32; 0 after a bind)."),
            )
        }
        counters = {
            name: CounterMetricFamily(f"{PREFIX}_nfqueue_{name}", text, labels=["queue"])
            for name, text in (
                (
                    "queue_dropped",
                    "Packets the kernel dropped (accepted, with --fail-open) because the queue "
                    "was full.",
                ),
                (
                    "user_dropped",
                    "Packets netlink could not deliver because the agent's socket buffer was full.",
                ),
            )
        }
        queues, skipped = read_queue_counters()
        with self._lock:
            self.unparsed_queue_lines += skipped
            unparsed = self.unparsed_queue_lines
        for queue in queues:
            label = [str(queue.queue_num)]
            gauges["queue_length"].add_metric(label, queue.queue_total)
            gauges["peer_portid"].add_metric(label, queue.peer_portid)
            gauges["copy_mode"].add_metric(label, queue.copy_mode)
            gauges["copy_range"].add_metric(label, queue.copy_range)
            gauges["packet_id"].add_metric(label, queue.id_sequence)
            counters["queue_dropped"].add_metric(label, queue.queue_dropped)
            counters["user_dropped"].add_metric(label, queue.user_dropped)
        yield from gauges.values()
        yield from counters.values()
        yield CounterMetricFamily(
            f"{PREFIX}_nfqueue_unparsed_lines",
            "Lines of /proc/net/netfilter/nfnetlink_queue skipped because they did not parse "
            "(summed over scrapes).",
            value=unparsed,
        )

    # -- the sync loop's status ---------------------------------------------------------------

    def _status_metrics(self) -> Iterator[Any]:
        agent = self.agent
        status = agent.status
        for name, text, value in (
            ("ready", "1 when enforcement is active.", 1.0 if agent.ready.is_set() else 0.0),
            ("generation", "Generation of the tables in force.", status.generation),
            ("pods", "Pods known in the cluster.", status.pods),
            (
                "unreadable_pods",
                "Pods whose objects could not be read, enforced as unknown endpoints (all "
                "their traffic denied on their node).",
                status.unreadable_pods,
            ),
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
        yield CounterMetricFamily(
            f"{PREFIX}_spoofed_packets",
            "Packets dropped because their source address does not belong to the interface they "
            "came from (--anti-spoofing; read from the rules' counters every few seconds).",
            value=status.spoofed_packets,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cached_connections",
            "New connections the kernel's verdict cache admitted without asking the queue "
            "(fast path; read from the cache rule's counter every few seconds).",
            value=status.cached_connections,
        )
        delay = agent.programming_delay
        programming = HistogramMetricFamily(
            f"{PREFIX}_policy_programming_seconds",
            "Delay from a change the state cache took (a watch or list event, a lab store "
            "update) to the rules that enforce it being in force (tables in every worker, "
            "firewall synced); one observation per sync, from the earliest change it applies.",
        )
        programming.add_metric(
            [], _cumulative(delay.bounds, list(delay.counts)), sum_value=delay.total
        )
        yield programming

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


def _protocol_name(number: int) -> str:
    """The ``protocol`` label: empty for a packet that could not be parsed (-1)."""
    return "" if number < 0 else PROTOCOL_NAMES.get(number, "other")


class BuildInfoCollector(Collector):
    """``netpol_agent_build_info``: always 1, the version and Python in its labels."""

    def __init__(self) -> None:
        self.labels = [version(), platform.python_version()]

    def collect(self) -> Iterator[Any]:
        info = GaugeMetricFamily(
            f"{PREFIX}_build_info",
            "Always 1; the agent's version (package metadata) and Python version as labels.",
            labels=["version", "python_version"],
        )
        info.add_metric(self.labels, 1.0)
        yield info


def agent_registry(agent: Agent) -> CollectorRegistry:
    """A registry of our own (never the process-wide default one): the agent's collector,
    build info, and prometheus_client's process (CPU, memory, file descriptors of the agent's
    own process, not of worker processes) and platform (``python_info``) collectors."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    registry.register(BuildInfoCollector())
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
