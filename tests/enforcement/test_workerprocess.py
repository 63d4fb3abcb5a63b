"""Worker processes: a publication crosses the pipe whole, and a worker process that dies is
noticed without publishing to it ever raising (real NFQUEUE, in a namespace of the test's own).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from agent.lab.netns import entered
from enforcement.workerprocess import (
    PUBLICATION_CHUNK,
    Publication,
    RemoteWorker,
    SnapshotPart,
    WorkerSettings,
    publication_messages,
    receive_publication,
)
from tests.builders import cluster, make_namespace, make_pod, make_policy, selector

# -- a worker process that dies (real NFQUEUE, in a namespace of the test's own) ---------------


@pytest.mark.root
def test_a_dead_worker_process_is_noticed_and_publishing_to_it_never_raises(
    scratch_netns: str,
) -> None:
    """Finding 7: publishing to a killed worker raised BrokenPipeError and killed the agent."""
    first = Publication(
        cluster(make_namespace("x"), make_pod("x", "a", "10.244.1.2", labels={"pod": "a"})), 1
    )
    settings = WorkerSettings(
        queue_num=1000, fail_open=False, fast_path=True, max_len=64, copy_range=512,
        max_flows=1024, node_name="node-1",
    )  # fmt: skip
    exited = threading.Event()
    with entered(scratch_netns):  # the process is started, and binds its queue, in the namespace
        remote = RemoteWorker(settings, first, on_exit=exited.set)
    try:
        assert remote.bound.wait(60), "the worker did not bind its queue"
        assert remote.wait_generation(1, timeout=60)
        assert remote.pid is not None
        os.kill(remote.pid, signal.SIGKILL)
        assert exited.wait(30), "the death went unnoticed"
        assert remote.exited.is_set() and not remote.bound.is_set()
        assert remote.exit_description() == "killed by SIGKILL"
        for generation in (2, 3):  # the pipe is closed now: no BrokenPipeError, just False
            assert remote.publish(Publication(first.snapshot, generation)) is False
        started = time.monotonic()
        assert remote.wait_generation(2, timeout=30) is False
        assert time.monotonic() - started < 10, "waited for a generation a dead worker never takes"
    finally:
        remote.stop(timeout=5)


def test_a_publication_crosses_the_pipe_in_chunks_and_arrives_whole() -> None:
    import multiprocessing

    pods = [make_pod("x", f"p{i}", f"10.244.{i // 250}.{i % 250 + 1}") for i in range(2500)]
    snapshot = cluster(make_namespace("x"), *pods, make_policy("x", "p", selector(pod="b")))
    messages = list(publication_messages(Publication(snapshot, 7)))
    assert [type(m).__name__ for m in messages].count("SnapshotPart") == 1 + 3 + 1
    assert all(len(m.records) <= PUBLICATION_CHUNK for m in messages if isinstance(m, SnapshotPart))
    sender, receiver = multiprocessing.Pipe()
    writer = threading.Thread(
        target=lambda: [sender.send(m) for m in [*messages, *messages, None]], daemon=True
    )
    writer.start()
    for _ in range(2):
        received = receive_publication(receiver)
        assert received == Publication(snapshot, 7)
    assert receive_publication(receiver) is None, "None tells the worker to stop"
    sender.close()
    assert receive_publication(receiver) is None, "so does the end of the pipe"
    writer.join(timeout=5)
