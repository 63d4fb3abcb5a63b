"""The daemon's HTTP endpoints, over real HTTP on loopback, against an agent that is not
enforcing yet; and the server's defences: floods, slow clients, the allow-list."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.health import (
    DEFAULT_HEALTH_PORT,
    STALE_AFTER,
    HealthConfig,
    HealthServer,
    parse_allow,
)
from agent.runner import Agent, AgentConfig, WorkerSlot
from agent.sources.lab_store import LabStoreSource


def make_agent(tmp_path: Path) -> Agent:
    return Agent(AgentConfig(node_name="node-1"), LabStoreSource(tmp_path / "store.json"))


@contextlib.contextmanager
def serving(agent: Agent, config: HealthConfig) -> Iterator[HealthServer]:
    server = HealthServer(agent, config).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Agent, str]]:
    agent = make_agent(tmp_path)
    with serving(agent, HealthConfig(address="127.0.0.1", port=0)) as server:
        yield agent, f"http://127.0.0.1:{server.port}"


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
    agent.status.unreadable_pods = 2
    agent.status.spoofed_packets = 5
    status, body = get(f"{base}/metrics")
    assert status == 200
    assert "netpol_agent_ready 0.0" in body
    assert "netpol_agent_policies 3.0" in body
    assert "netpol_agent_unreadable_pods 2.0" in body
    assert "netpol_agent_spoofed_packets_total 5.0" in body
    assert "# TYPE netpol_agent_syncs_total counter" in body


def test_decision_time_is_a_histogram(served: tuple[Agent, str]) -> None:
    agent, base = served
    from enforcement.flows import FlowTable
    from enforcement.queue import QueueWorker

    worker = QueueWorker(7, agent.tables, FlowTable(), fail_open=False)
    worker.stats.decision_buckets[1] = 3  # three decisions between 1 and 2 µs
    worker.stats.decision_buckets[-1] = 1  # one slower than 5 ms
    worker.stats.decision_ns_total = 5_000_000 + 3 * 1_500
    agent.slots.append(WorkerSlot(worker))
    body = get(f"{base}/metrics")[1]
    assert 'netpol_agent_decision_seconds_bucket{le="1e-06",queue="7"} 0.0' in body
    assert 'netpol_agent_decision_seconds_bucket{le="2e-06",queue="7"} 3.0' in body
    assert 'netpol_agent_decision_seconds_bucket{le="+Inf",queue="7"} 4.0' in body
    assert 'netpol_agent_decision_seconds_count{queue="7"} 4.0' in body


def test_unknown_path_is_404(served: tuple[Agent, str]) -> None:
    assert get(f"{served[1]}/nope")[0] == 404


# -- a worker that is down ---------------------------------------------------------------------


def test_a_dead_worker_makes_both_probes_fail_naming_its_queue(
    served: tuple[Agent, str],
) -> None:
    agent, base = served
    from enforcement.flows import FlowTable
    from enforcement.queue import QueueWorker

    agent.ready.set()
    slot = WorkerSlot(QueueWorker(1001, agent.tables, FlowTable(), fail_open=False))
    agent.slots.append(slot)
    slot.worker.bound.set()
    assert get(f"{base}/readyz") == (200, "ready\n")
    slot.down_since, slot.reason = time.monotonic(), "process 4242 killed by SIGKILL"
    slot.restart_at = time.monotonic() + 2
    for path in ("/readyz", "/healthz"):
        status, body = get(f"{base}{path}")
        assert status == 503, path
        assert "queue 1001" in body and "killed by SIGKILL" in body, body
    assert 'netpol_agent_queue_worker_up{queue="1001"} 0.0' in get(f"{base}/metrics")[1]
    slot.down_since, slot.restarts = None, 1
    slot.worker.bound.clear()  # restarted, not bound yet: not ready, but alive
    assert get(f"{base}/readyz")[0] == 503
    slot.worker.bound.set()
    assert get(f"{base}/readyz") == (200, "ready\n")
    body = get(f"{base}/metrics")[1]
    assert 'netpol_agent_queue_worker_restarts_total{queue="1001"} 1.0' in body
    assert 'netpol_agent_queue_worker_up{queue="1001"} 1.0' in body


# -- the server under attack -------------------------------------------------------------------


def test_default_port_clashes_with_no_well_known_node_port() -> None:
    taken = {9099, 9100, 9879, 9890, *range(9962, 9966), *range(10248, 10260)}
    assert DEFAULT_HEALTH_PORT not in taken


def test_a_flood_of_silent_connections_costs_no_threads(tmp_path: Path) -> None:
    """Finding 6: 3,000 half-open connections grew the agent to 2,692 threads and slowed
    /healthz. Here 500 connect and say nothing; the server keeps one thread and answers."""
    agent = make_agent(tmp_path)
    with serving(agent, HealthConfig(address="127.0.0.1", port=0, read_timeout=30)) as server:
        threads_before = threading.active_count()
        flood = []
        try:
            for _ in range(500):
                flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            deadline = time.monotonic() + 10  # let the server accept them all
            while server.refused < 500 - server.config.max_connections:
                assert time.monotonic() < deadline, f"only {server.refused} closed"
                time.sleep(0.02)
            assert threading.active_count() <= threads_before, "a thread per connection"
            started = time.monotonic()
            status, body = get(f"http://127.0.0.1:{server.port}/healthz")
            assert (status, body) == (200, "ok\n")
            assert time.monotonic() - started < 3.0, "/healthz waited behind the flood"
        finally:
            for sock in flood:
                sock.close()


def receive_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (or ``timeout`` passes: then fail)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize(
    "dribble",
    [pytest.param(False, id="silent-after-a-partial-line"), pytest.param(True, id="slowloris")],
)
def test_a_slow_client_is_dropped_after_the_read_timeout(tmp_path: Path, dribble: bool) -> None:
    agent = make_agent(tmp_path)
    config = HealthConfig(address="127.0.0.1", port=0, read_timeout=0.5)
    with serving(agent, config) as server:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        started = time.monotonic()
        client.sendall(b"GET /healthz HTTP/1.1\r\n")
        if dribble:  # one header byte at a time, each well within the timeout
            with contextlib.suppress(OSError):
                for byte in b"X-Slow: " + b"a" * 40:
                    client.sendall(bytes([byte]))
                    time.sleep(0.05)
        assert receive_all(client, timeout=10) == b"", "answered an incomplete request"
        elapsed = time.monotonic() - started
        client.close()
        assert 0.4 <= elapsed < 5.0, f"closed after {elapsed:.2f}s, the timeout is 0.5s"


def test_the_allow_list_closes_other_sources_without_an_answer(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    config = HealthConfig(address="127.0.0.2", port=0, allow=parse_allow(["127.0.0.5/32"]))
    with serving(agent, config) as server:

        def ask(source: str) -> bytes:
            client = socket.create_connection(
                ("127.0.0.2", server.port), timeout=5, source_address=(source, 0)
            )
            with client:
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    return receive_all(client, timeout=5)
                except ConnectionResetError:
                    return b""

        assert ask("127.0.0.5").startswith(b"HTTP/1.0 200 OK"), "an allowed scraper"
        assert ask("127.0.0.2").startswith(b"HTTP/1.0 200 OK"), "the node itself (probes)"
        assert ask("127.0.0.3") == b"", "a source outside the allow-list"
        assert server.refused == 1


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"POST /healthz HTTP/1.1\r\n\r\n", 405, id="post"),
        pytest.param(b"nonsense\r\n\r\n", 400, id="garbage"),
        pytest.param(b"GET /" + b"a" * 9000, 431, id="head-too-large"),
    ],
)
def test_bad_requests_get_a_clear_status(tmp_path: Path, request_bytes: bytes, status: int) -> None:
    agent = make_agent(tmp_path)
    with (
        serving(agent, HealthConfig(address="127.0.0.1", port=0)) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as client,
    ):
        client.sendall(request_bytes)
        assert receive_all(client, timeout=5).startswith(f"HTTP/1.0 {status} ".encode())


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], (), id="none"),
        pytest.param(["10.0.0.0/8"], (ipaddress.ip_network("10.0.0.0/8"),), id="v4"),
        pytest.param(["2001:db8::1"], (ipaddress.ip_network("2001:db8::1/128"),), id="v6-host"),
    ],
)
def test_parse_allow(values: list[str], expected: tuple[object, ...]) -> None:
    assert parse_allow(values) == expected


def test_parse_allow_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300/8'"):
        parse_allow(["10.0.0.300/8"])


class BrokenStats:
    """A source whose counters fail: stands for any error while collecting metrics."""

    def stats(self) -> dict[str, object]:
        raise RuntimeError("boom")


def test_a_failing_metric_answers_500_and_the_server_keeps_serving(
    served: tuple[Agent, str],
) -> None:
    agent, base = served
    agent.source = BrokenStats()  # type: ignore[assignment]
    status, body = get(f"{base}/metrics")
    assert status == 500 and "internal error" in body
    assert get(f"{base}/healthz") == (200, "ok\n")


def test_serves_on_an_ipv6_address(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    agent = make_agent(tmp_path)
    with serving(agent, HealthConfig(address="::1", port=0)) as server:
        assert get(f"http://[::1]:{server.port}/healthz") == (200, "ok\n")
