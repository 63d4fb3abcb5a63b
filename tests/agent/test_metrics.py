"""What /metrics says, scraped over real HTTP from a real Agent whose queue worker decides real
packet bytes (sans-I/O ``handle``), and docs/observability.md, which must list exactly the
metrics the agent exposes."""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.all import IP, TCP, UDP

from agent.health import HealthConfig, HealthServer
from agent.lab.netns import entered
from agent.metrics import PROGRAMMING_BUCKETS, AgentCollector, DelayHistogram, version
from agent.runner import Agent, AgentConfig, WorkerSlot
from agent.sources.lab_store import LabStoreSource
from enforcement.compiler import compile_tables
from enforcement.flows import FlowTable
from enforcement.queue import QueueWorker
from tests.agent.test_health import get
from tests.builders import cluster, make_namespace, make_pod, make_policy, selector

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "observability.md"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

A, B, C = "10.244.1.2", "10.244.1.3", "10.244.1.4"
SYN_A_TO_B = bytes(IP(src=A, dst=B) / TCP(sport=40000, dport=80, flags="S"))
SYN_C_TO_A = bytes(IP(src=C, dst=A) / TCP(sport=40001, dport=80, flags="S"))
UDP_C_TO_A = bytes(IP(src=C, dst=A) / UDP(sport=40002, dport=53))


def make_agent(tmp_path: Path, *, policy_metrics: bool = False) -> Agent:
    config = AgentConfig(node_name="node-1", policy_metrics=policy_metrics)
    agent = Agent(config, LabStoreSource(tmp_path / "store.json"))
    agent.tables.current = compile_tables(
        cluster(
            make_namespace("x"),
            make_pod("x", "a", A, labels={"pod": "a"}),
            make_pod("x", "b", B, labels={"pod": "b"}),
            make_pod("x", "c", C, labels={"pod": "c"}),
            make_policy("x", "deny-b", selector(pod="b"), types=["Ingress"]),
        ),
        "node-1",
        1,
    )
    return agent


def deciding(agent: Agent, queue: int = 7) -> QueueWorker:
    """A worker of ``agent`` that reports to its event stream, as the runner starts one."""
    worker = QueueWorker(
        queue, agent.tables, FlowTable(), fail_open=False, events=agent.events, clock=lambda: 1.0
    )
    agent.slots.append(WorkerSlot(worker))
    return worker


@pytest.fixture
def scrape(tmp_path: Path) -> Iterator[tuple[Agent, str]]:
    agent = make_agent(tmp_path, policy_metrics=True)
    server = HealthServer(agent, HealthConfig(address="127.0.0.1", port=0)).start()
    try:
        yield agent, f"http://127.0.0.1:{server.port}/metrics"
    finally:
        server.close()


def samples(url: str) -> Samples:
    status, text = get(url)
    assert status == 200, text
    return parse(text)


def parse(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, metric: str, /, **labels: str) -> float:
    return found.get((metric, frozenset(labels.items())), 0.0)


def test_packets_by_action_reason_protocol_and_family(scrape: tuple[Agent, str]) -> None:
    agent, url = scrape
    worker = deciding(agent)
    assert worker.handle(SYN_A_TO_B, mark=0) is False
    assert worker.handle(SYN_A_TO_B, mark=0) is False
    assert worker.handle(UDP_C_TO_A, mark=0) is True
    assert worker.handle(SYN_A_TO_B[:30], mark=0) is False  # malformed: cannot be parsed
    found = samples(url)
    packets = "netpol_agent_packets_total"
    v4 = {"queue": "7", "family": "4"}
    assert value(found, packets, action="drop", reason="denied-ingress", protocol="TCP", **v4) == 2
    assert value(found, packets, action="accept", reason="not-isolated", protocol="UDP", **v4) == 1
    unparsed = {"queue": "7", "protocol": "", "family": ""}
    assert value(found, packets, action="drop", reason="malformed", **unparsed) == 1
    assert sum(v for (name, _), v in found.items() if name == packets) == 4


def test_connections_and_the_event_stream_counters(scrape: tuple[Agent, str]) -> None:
    agent, url = scrape
    worker = deciding(agent)
    for payload in (SYN_A_TO_B, SYN_A_TO_B, SYN_C_TO_A, UDP_C_TO_A):
        worker.handle(payload, mark=0)
    agent.pump.pump(time.monotonic())
    found = samples(url)
    connections = "netpol_agent_connections_total"
    # a -> b twice: one connection, its retransmission folded.
    assert value(found, connections, verdict="denied", reason="denied-ingress",
                 direction="ingress", protocol="TCP", family="4") == 1  # fmt: skip
    for protocol in ("TCP", "UDP"):
        assert value(found, connections, verdict="allowed", reason="not-isolated",
                     direction="none", protocol=protocol, family="4") == 1  # fmt: skip
    assert value(found, "netpol_agent_events_total") == 4
    # The second denial of the same connection is folded into the first one's record.
    assert value(found, "netpol_agent_events_folded_total") == 1
    assert value(found, "netpol_agent_event_records_total") == 3
    assert value(found, "netpol_agent_event_records_suppressed_total") == 0
    assert value(found, "netpol_agent_events_dropped_total") == 0


def test_per_policy_connections(scrape: tuple[Agent, str]) -> None:
    agent, url = scrape
    worker = deciding(agent)
    worker.handle(SYN_A_TO_B, mark=0)
    worker.handle(bytes(IP(src=C, dst=B) / TCP(sport=1, dport=80, flags="S")), mark=0)
    agent.pump.pump(time.monotonic())
    found = samples(url)
    assert value(found, "netpol_agent_policy_connections_total", kind="NetworkPolicy",
                 namespace="x", name="deny-b", tier="NetworkPolicy", action="Isolate",
                 direction="ingress", verdict="denied") == 2  # fmt: skip


def test_per_policy_connections_only_when_asked(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, policy_metrics=False)
    names = {family.name for family in AgentCollector(agent).collect()}
    assert "netpol_agent_connections" in names
    assert "netpol_agent_policy_connections" not in names


def test_programming_delay_histogram(scrape: tuple[Agent, str]) -> None:
    agent, url = scrape
    for seconds in (0.003, 0.04, 0.04, 120.0):
        agent.programming_delay.observe(seconds)
    found = samples(url)
    name = "netpol_agent_policy_programming_seconds"
    assert value(found, f"{name}_bucket", le="0.005") == 1
    assert value(found, f"{name}_bucket", le="0.05") == 3
    assert value(found, f"{name}_bucket", le="60.0") == 3
    assert value(found, f"{name}_bucket", le="+Inf") == 4
    assert value(found, f"{name}_count") == 4
    assert value(found, f"{name}_sum") == pytest.approx(120.083)


def test_delay_buckets_are_increasing() -> None:
    assert list(PROGRAMMING_BUCKETS) == sorted(set(PROGRAMMING_BUCKETS))
    histogram = DelayHistogram()
    histogram.observe(PROGRAMMING_BUCKETS[0])  # a bound belongs to its own bucket (le)
    assert histogram.counts[0] == 1


def test_queue_refusals_per_queue(scrape: tuple[Agent, str]) -> None:
    agent, url = scrape
    worker = deciding(agent, queue=9)
    worker.stats.config_refused = 1
    agent.slots[0].bind_refused = 2
    found = samples(url)
    assert value(found, "netpol_agent_queue_config_refused_total", queue="9") == 1
    assert value(found, "netpol_agent_queue_bind_refused_total", queue="9") == 2


def test_build_info_and_process_metrics(scrape: tuple[Agent, str]) -> None:
    _, url = scrape
    found = samples(url)
    assert version() == metadata.version("netpol-agent")
    info = {"version": version(), "python_version": platform.python_version()}
    assert value(found, "netpol_agent_build_info", **info) == 1
    names = {name for name, _ in found}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert "python_info" in names


@pytest.mark.root
def test_kernel_queue_counters_of_the_agent_s_namespace(tmp_path: Path, scratch_netns: str) -> None:
    """Collected in the namespace of the thread that scrapes, as the agent's health thread does
    in the node's namespace."""
    from netfilterqueue import NetfilterQueue

    agent = make_agent(tmp_path)
    with entered(scratch_netns):
        queue = NetfilterQueue()
        queue.bind(1000, lambda packet: packet.drop(), max_len=16, range=512)
        try:
            families = list(AgentCollector(agent).collect())
        finally:
            queue.unbind()
    found: Samples = {}
    for family in families:
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    assert value(found, "netpol_agent_nfqueue_copy_range", queue="1000") == 512
    assert value(found, "netpol_agent_nfqueue_copy_mode", queue="1000") == 2
    assert value(found, "netpol_agent_nfqueue_peer_portid", queue="1000") != 0
    assert value(found, "netpol_agent_nfqueue_queue_length", queue="1000") == 0
    assert value(found, "netpol_agent_nfqueue_queue_dropped_total", queue="1000") == 0
    assert value(found, "netpol_agent_nfqueue_unparsed_lines_total") == 0
    assert {labels for name, labels in found if name == "netpol_agent_nfqueue_copy_range"} == {
        frozenset({("queue", "1000")})
    }, "only the queues of the namespace"


# -- docs/observability.md ----------------------------------------------------------------------


def exposed_names(text: str) -> set[str]:
    """Metric names as the exposition's TYPE lines give them (counters with ``_total``)."""
    return set(re.findall(r"^# TYPE (\S+) \S+$", text, flags=re.MULTILINE))


def documented_names() -> set[str]:
    """The names in the first column of the tables of the doc's metrics section."""
    metrics = DOC.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", metrics, flags=re.MULTILINE))


def test_the_doc_lists_exactly_the_metrics_exposed(scrape: tuple[Agent, str]) -> None:
    """Every family the agent serves, with --policy-metrics and a queue worker, and with the
    Kubernetes source's list/watch counters (scraped from a second agent that reads one)."""
    from kubernetes.client import ApiClient

    from agent.sources.kubernetes import KubernetesSource

    agent, url = scrape
    deciding(agent)
    status, text = get(url)
    assert status == 200
    exposed = exposed_names(text)
    kubernetes = Agent(AgentConfig(node_name="node-1"), KubernetesSource(ApiClient()))
    server = HealthServer(kubernetes, HealthConfig(address="127.0.0.1", port=0)).start()
    try:
        exposed |= exposed_names(get(f"http://127.0.0.1:{server.port}/metrics")[1])
    finally:
        server.close()
    documented = documented_names()
    assert sorted(exposed - documented) == [], "exposed, not in docs/observability.md"
    assert sorted(documented - exposed) == [], "in docs/observability.md, not exposed"
