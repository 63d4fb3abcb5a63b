"""The queue's bind refused by the kernel, as the supervision counts it: another socket holds the
queue in a namespace of the test's own, and a worker thread, then a worker process, tries to
bind it (real NFQUEUE; the thread's other failures are in tests/agent/test_runner.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.netns import entered
from agent.metrics import AgentCollector
from agent.runner import Agent, AgentConfig
from agent.sources.lab_store import LabStoreSource
from agent.workers import WorkerSlot
from enforcement.flows import FlowTable
from enforcement.queue import QueueWorker
from enforcement.workerprocess import EXIT_BIND_REFUSED, Publication, RemoteWorker, WorkerSettings
from tests.agent.test_metrics import Samples, value
from tests.builders import cluster, make_namespace

pytestmark = pytest.mark.root

QUEUE = 4242


@pytest.fixture
def held(scratch_netns: str) -> Iterator[str]:
    """The scratch namespace, with queue ``QUEUE`` bound by a socket of the test."""
    from netfilterqueue import NetfilterQueue

    with entered(scratch_netns):
        holder = NetfilterQueue()
        holder.bind(QUEUE, lambda packet: packet.drop(), max_len=16, range=128)
    try:
        yield scratch_netns
    finally:
        holder.unbind()


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    subject = Agent(AgentConfig(node_name="node-1"), LabStoreSource(tmp_path / "store.json"))
    subject._stop = threading.Event()
    return subject


def collected(agent: Agent) -> Samples:
    found: Samples = {}
    for family in AgentCollector(agent).collect():
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_a_thread_whose_bind_is_refused_is_counted(agent: Agent, held: str) -> None:
    slot = WorkerSlot(QueueWorker(QUEUE, agent.tables, FlowTable(), fail_open=False))
    agent.slots.append(slot)
    with entered(held):  # the thread starts in the namespace of the thread that starts it
        agent._serve_in_thread(slot)
    assert slot.thread is not None
    slot.thread.join(timeout=10)
    assert not slot.thread.is_alive()
    assert slot.bind_refused == 1 and slot.error is not None
    assert slot.error.startswith("QueueBindError: binding NFQUEUE 4242")
    assert value(collected(agent), "netpol_agent_queue_bind_refused_total", queue="4242") == 1


def test_a_process_whose_bind_is_refused_exits_with_its_code_and_is_counted(
    agent: Agent, held: str
) -> None:
    settings = WorkerSettings(
        queue_num=QUEUE, fail_open=False, fast_path=True, max_len=16, copy_range=512,
        max_flows=1024, node_name="node-1",
    )  # fmt: skip
    exited = threading.Event()
    with entered(held):  # the process is started, and binds, in the namespace
        remote = RemoteWorker(settings, Publication(cluster(make_namespace("x")), 1), exited.set)
    slot = WorkerSlot(remote)
    agent.slots.append(slot)
    try:
        assert exited.wait(60), "the worker process did not end"
        remote.process.join(10)
        assert remote.process.exitcode == EXIT_BIND_REFUSED
        agent._supervise()
        assert slot.down_since is not None and slot.bind_refused == 1
        assert value(collected(agent), "netpol_agent_queue_bind_refused_total", queue="4242") == 1
    finally:
        remote.stop(timeout=5)
