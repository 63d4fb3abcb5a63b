"""The daemon's HTTP endpoints, over real HTTP against an agent that is not enforcing yet."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.health import STALE_AFTER, HealthServer
from agent.logs import JsonFormatter
from agent.runner import Agent, AgentConfig
from agent.sources.lab_store import LabStoreSource


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Agent, str]]:
    agent = Agent(AgentConfig(node_name="node-1"), LabStoreSource(tmp_path / "store.json"))
    server = HealthServer(agent, "127.0.0.1", 0).start()
    try:
        yield agent, f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


def get(url: str) -> tuple[int, str]:
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        with direct.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_readiness_follows_enforcement(served: tuple[Agent, str]) -> None:
    agent, base = served
    assert get(f"{base}/readyz")[0] == 503
    agent.ready.set()
    assert get(f"{base}/readyz") == (200, "ready\n")


def test_liveness_fails_when_the_sync_loop_stalls(served: tuple[Agent, str]) -> None:
    agent, base = served
    assert get(f"{base}/healthz") == (200, "ok\n")
    agent.heartbeat = time.monotonic() - STALE_AFTER - 1
    status, body = get(f"{base}/healthz")
    assert status == 503 and "stalled" in body


def test_metrics_are_prometheus_text(served: tuple[Agent, str]) -> None:
    agent, base = served
    agent.status.policies = 3
    status, body = get(f"{base}/metrics")
    assert status == 200
    assert "netpol_agent_ready 0.0" in body
    assert "netpol_agent_policies 3.0" in body
    assert "# TYPE netpol_agent_syncs_total counter" in body


def test_decision_time_is_a_histogram(served: tuple[Agent, str]) -> None:
    agent, base = served
    from enforcement.flows import FlowTable
    from enforcement.queue import QueueWorker

    worker = QueueWorker(7, agent.tables, FlowTable(), fail_open=False)
    worker.stats.decision_buckets[1] = 3  # three decisions between 1 and 2 µs
    worker.stats.decision_buckets[-1] = 1  # one slower than 5 ms
    worker.stats.decision_ns_total = 5_000_000 + 3 * 1_500
    agent.workers.append(worker)
    body = get(f"{base}/metrics")[1]
    assert 'netpol_agent_decision_seconds_bucket{le="1e-06",queue="7"} 0.0' in body
    assert 'netpol_agent_decision_seconds_bucket{le="2e-06",queue="7"} 3.0' in body
    assert 'netpol_agent_decision_seconds_bucket{le="+Inf",queue="7"} 4.0' in body
    assert 'netpol_agent_decision_seconds_count{queue="7"} 4.0' in body


def test_unknown_path_is_404(served: tuple[Agent, str]) -> None:
    assert get(f"{served[1]}/nope")[0] == 404


def test_json_logs_are_one_object_per_line() -> None:
    record = logging.LogRecord("agent.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert (
        entry["level"] == "warning" and entry["message"] == "a b" and entry["logger"] == "agent.x"
    )
    assert entry["time"].endswith("Z")
