"""Queue workers killed under load (finding 7): the agent notices, says so, restarts the worker,
and a policy change afterwards is applied by the same agent and enforced.

Which queue a connection lands on is the kernel's balance hash over the address pair (seeded
per rule), so nothing here depends on it: every worker is killed in turn, and what is checked
per queue comes from the agent (its status and metrics) and the kernel
(/proc/net/netfilter/nfnetlink_queue), not from where traffic happened to go.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.health import DEFAULT_HEALTH_PORT
from agent.lab.lab import Lab
from agent.lab.netns import entered
from tests.e2e.labctl import LabDriver, lab_session
from tests.e2e.test_dataplane import B_FROM_A_ANY, CLUSTER, DENY_INGRESS_B, MODES
from tests.e2e.test_queue_modes import metrics

pytestmark = pytest.mark.root

QUEUES = (1000, 1001)
WAIT = 60.0
"""Seconds a restart may take at most on a loaded machine (spawn, import, compile, bind)."""


def status(lab: LabDriver) -> dict[str, Any]:
    path = Lab(lab.name).dir / "status-node-1.json"
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def workers(lab: LabDriver) -> dict[int, dict[str, Any]]:
    return {entry["queue"]: entry for entry in status(lab)["workers"]}


def bound_queues(lab: LabDriver) -> dict[int, int]:
    """Queue number -> netlink port id of its listener, from the node namespace's kernel."""
    node = Lab(lab.name).record().nodes[0]
    with entered(node.netns), open("/proc/thread-self/net/netfilter/nfnetlink_queue") as table:
        rows = [line.split() for line in table if line.strip()]
    return {int(row[0]): int(row[1]) for row in rows}


def health(lab: LabDriver, path: str) -> tuple[int, str]:
    node = Lab(lab.name).record().nodes[0]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with (
            entered(node.netns),
            direct.open(f"http://127.0.0.1:{DEFAULT_HEALTH_PORT}{path}", timeout=5) as reply,
        ):
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, ValueError, KeyError):
            pass  # a status file being replaced, a worker not listed yet
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Load:
    """Connections from a to b, one after the other, on a thread, until stopped."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        self.attempts = 0
        self._stop = threading.Event()
        self._netns, self._address, self._port = netns, address, port
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with entered(self._netns):
                client = socket.socket()
            with client:
                client.settimeout(0.3)
                with contextlib.suppress(OSError):  # refused or dropped: the load goes on
                    client.connect((self._address, self._port))
            self.attempts += 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("mode", MODES)
def test_killed_workers_are_noticed_restarted_and_enforce_later_changes(
    tmp_path: Path, mode: str
) -> None:
    up_args = ["--mode", mode, "--queue-workers", "2"]
    with lab_session("wkill", tmp_path, up_args=up_args) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        agent_pid = Lab(lab.name).record().nodes[0].agent_pid
        pods = Lab(lab.name).record().pods
        a, b = pods["x/a"], pods["x/b"]
        assert a.ipv4 and b.ipv4
        assert set(bound_queues(lab)) >= set(QUEUES)
        load = Load(a.netns, b.ipv4, 80)
        try:
            for queue in QUEUES:
                before = workers(lab)[queue]
                assert before["up"], before
                os.kill(before["pid"], signal.SIGKILL)
                wait_for(
                    lambda q=queue, old=before["pid"]: (
                        workers(lab)[q]["pid"] != old and workers(lab)[q]["up"]
                    ),
                    f"queue {queue}'s worker to be restarted and bound",
                )
                after = workers(lab)[queue]
                assert after["restarts"] == before["restarts"] + 1
                assert queue in bound_queues(lab), "the restarted worker listens on its queue"
                assert health(lab, "/readyz") == (200, "ready\n")
                assert health(lab, "/healthz") == (200, "ok\n")
                samples = metrics(lab)
                assert samples[f'netpol_agent_queue_worker_restarts_total{{queue="{queue}"}}'] == 1
        finally:
            load.stop()
        assert load.attempts > 0
        log = lab.logs()
        for queue in QUEUES:
            assert f'queue={queue} reason="process ' in log and "killed by SIGKILL" in log, log
        # A change after the restarts: applied by the same agent, in force in both workers.
        lab.delete(B_FROM_A_ANY)
        lab.apply(DENY_INGRESS_B)
        assert Lab(lab.name).record().nodes[0].agent_pid == agent_pid, "the agent survived"
        generation = status(lab)["generation"]
        assert all(entry["generation"] == generation for entry in workers(lab).values())
        matrix = lab.probe(80)
        assert not matrix["x/a"]["x/b"], "the restarted workers enforce the new policy"
        assert matrix["x/a"]["x/c"], "and let through what no policy isolates"


def test_a_dead_worker_is_reported_before_it_returns(tmp_path: Path) -> None:
    """While a worker is down, /readyz and /healthz say which queue; a policy change published
    meanwhile does not kill the agent (it crashed on BrokenPipeError before)."""
    with lab_session("wdown", tmp_path, up_args=["--queue-workers", "2"]) as lab:
        lab.up(CLUSTER, B_FROM_A_ANY)
        agent_pid = Lab(lab.name).record().nodes[0].agent_pid
        victim = workers(lab)[1001]
        # The agent waits RESTART_BACKOFF (0.5 s) before restarting it, and it is not ready
        # until the new process has bound the queue: a window of more than half a second.
        os.kill(victim["pid"], signal.SIGKILL)
        seen: list[tuple[int, str]] = []

        def reported_down() -> bool:
            answer = health(lab, "/readyz")
            seen.append(answer)
            return answer[0] == 503 and "queue 1001" in answer[1]

        wait_for(reported_down, "/readyz to report queue 1001 down", timeout=10)
        lab.delete(B_FROM_A_ANY)  # published while the worker is down or restarting
        lab.apply(DENY_INGRESS_B)
        assert Lab(lab.name).record().nodes[0].agent_pid == agent_pid
        wait_for(lambda: workers(lab)[1001]["up"], "queue 1001's worker to return")
        assert workers(lab)[1001]["generation"] == status(lab)["generation"]
        assert not lab.probe(80)["x/a"]["x/b"]
