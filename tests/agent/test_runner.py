"""The runner's supervision of its queue worker, in single-queue (thread) mode.

The queue thread's failure is injected by a worker whose ``serve`` raises the way the queue
library does when the kernel's socket buffer overflows (ENOBUFS); the runner's loop is driven
one turn at a time. Worker processes are tested end to end with real NFQUEUE in
tests/e2e/test_worker_supervision.py and tests/enforcement/test_queue.py.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runner import RESTART_BACKOFF, Agent, AgentConfig, WorkerSlot
from agent.sources.lab_store import LabStoreSource
from enforcement.flows import FlowTable
from enforcement.queue import QueueWorker


class FailingWorker(QueueWorker):
    """Binds, then fails ``failures`` times (like an overflowed netlink socket), then serves
    until stopped."""

    def __init__(self, agent: Agent, failures: int) -> None:
        super().__init__(1000, agent.tables, FlowTable(), fail_open=False)
        self.failures = failures
        self.serves = 0

    def serve(self, stop: threading.Event) -> None:
        self.serves += 1
        self.bound.set()
        try:
            if self.serves <= self.failures:
                raise OSError(errno.ENOBUFS, "recv failed")
            stop.wait()
        finally:
            self.bound.clear()


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    subject = Agent(
        AgentConfig(node_name="node-1", status_file=tmp_path / "status.json"),
        LabStoreSource(tmp_path / "store.json"),
    )
    subject.ready.set()
    return subject


def start(agent: Agent, failures: int) -> tuple[WorkerSlot, FailingWorker]:
    worker = FailingWorker(agent, failures)
    slot = WorkerSlot(worker)
    agent.slots.append(slot)
    agent._serve_in_thread(slot)
    return slot, worker


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_failed_queue_thread_is_reported_then_restarted(agent: Agent) -> None:
    stop = threading.Event()
    agent._stop = stop
    slot, worker = start(agent, failures=1)
    try:
        wait_until(lambda: slot.thread is not None and not slot.thread.is_alive())
        agent._supervise()
        assert slot.down_since is not None
        (line,) = agent.workers_down()
        assert line.startswith("queue 1000: worker down (thread ended: OSError")
        assert "No buffer space" in line or "recv failed" in line
        (written,) = agent.status.workers_down  # the status file says it too
        assert written.startswith("queue 1000: worker down (thread ended: OSError")
        wait_until(lambda: time.monotonic() >= slot.restart_at)
        agent._supervise()
        assert slot.down_since is None and slot.restarts == 1
        wait_until(lambda: worker.bound.is_set())
        agent._supervise()
        assert agent.workers_down() == [] and agent.status.worker_restarts == 1
        assert worker.serves == 2, "the same worker (its flow table) serves again"
        assert agent.status.workers == [
            {"queue": 1000, "pid": agent.status.as_dict()["pid"], "up": True, "restarts": 1,
             "generation": 0}
        ]  # fmt: skip
    finally:
        stop.set()


def test_the_backoff_doubles_while_the_thread_keeps_failing(agent: Agent) -> None:
    stop = threading.Event()
    agent._stop = stop
    slot, _worker = start(agent, failures=3)
    delays = []
    try:
        for _ in range(3):
            wait_until(lambda: slot.thread is not None and not slot.thread.is_alive())
            agent._supervise()
            assert slot.down_since is not None
            delays.append(slot.restart_at - slot.down_since)
            wait_until(lambda: time.monotonic() >= slot.restart_at)
            agent._supervise()
        assert delays == pytest.approx([RESTART_BACKOFF, 2 * RESTART_BACKOFF, 4 * RESTART_BACKOFF])
        assert slot.restarts == 3
    finally:
        stop.set()
