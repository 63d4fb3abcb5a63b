"""How long a queued packet waits behind a compile in the same process (run by hand).

``python -m agent.bench.compile_stall PODS [--old]`` (no root, no network). A synthetic
cluster of PODS pods (:func:`agent.bench.scale.cluster.generate_cluster`, one policy per ten
pods, one namespace per hundred) is compiled three times on the main thread, the way the runner
(single queue) or a worker process's receive thread does it, while a second thread stands for
the queue thread: it waits in ``poll`` on a socket without the interpreter lock, and a separate
process writes a timestamp to that socket every millisecond, as the kernel queues packets. For
every tick the thread receives it, decides a SYN with the real ``QueueWorker.decide_payload`` and
records how long after its timestamp the decision was done: the packet's wait.

Phases, each printed with its compile time and the waits' median, 99th percentile and maximum:

- ``idle``: three seconds with nothing else running (the machine's own noise: scheduling);
- ``runner``: ``compile_tables`` on the snapshot, then the swap that frees the previous tables;
- ``worker``: the same preceded by receiving the snapshot as a worker process does (unpickling
  what the runner sent).

``--old`` measures the agent before the fix (collector on, 5 ms switch interval, one message per
snapshot). The daemon never imports this module.
"""

from __future__ import annotations

import argparse
import os
import pickle
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence

from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.sizes import Size
from agent.bench.stats import percentile
from enforcement.compiler import compile_tables
from enforcement.flows import FlowTable
from enforcement.latency import (
    compile_quietly,
    pieces_of,
    prefer_decisions,
    release_gradually,
)
from enforcement.model import ClusterSnapshot
from enforcement.queue import (
    Publication,
    QueueWorker,
    TablesHolder,
    publication_messages,
    receive_publication,
)
from enforcement.tables import AllowTables

TICK = 0.001
"""Seconds between the ticker's timestamps (one queued packet each)."""
_STAMP = struct.Struct("=q")


class _Received:
    """The worker's end of the pipe, with the runner's messages already in it."""

    def __init__(self, messages: Sequence[bytes]) -> None:
        self._messages = list(messages)

    def recv_bytes(self) -> bytes:
        return self._messages.pop(0)


def _ticker(sock: socket.socket) -> None:
    """The child process: a timestamp every ``TICK`` until killed."""
    while True:
        sock.send(_STAMP.pack(time.perf_counter_ns()))
        time.sleep(TICK)


class _QueueStandIn:
    """A thread that decides one SYN per tick and records each tick's wait (seconds)."""

    def __init__(self, tables: TablesHolder) -> None:
        from scapy.all import IP, TCP  # type: ignore[attr-defined]

        self.worker = QueueWorker(1000, tables, FlowTable(), fail_open=False)
        self.syn = bytes(IP(src="10.1.0.2", dst="10.1.0.3") / TCP(sport=40000, dport=80))
        self.waits: list[tuple[float, float]] = []
        """(when decided, wait), both in seconds of ``time.perf_counter``."""
        self._stop = threading.Event()
        self._socket, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._pid = os.fork()
        if self._pid == 0:  # pragma: no cover - the child never returns
            self._socket.close()
            _ticker(child)
        child.close()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._socket.fileno(), select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            while True:
                try:
                    data = self._socket.recv(_STAMP.size, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                self.worker.decide_payload(self.syn, 0)
                now = time.perf_counter_ns()
                self.waits.append((now / 1e9, (now - _STAMP.unpack(data)[0]) / 1e9))

    def between(self, start: float, end: float) -> list[float]:
        return [wait for at, wait in self.waits if start <= at <= end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.kill(self._pid, 9)
        os.waitpid(self._pid, 0)
        self._socket.close()


def _line(phase: str, seconds: Sequence[float], waits: Sequence[float]) -> str:
    took = f"{min(seconds):.2f}-{max(seconds):.2f} s" if seconds else "-"
    return (
        f"{phase:8} compile {took:14} waits: n={len(waits):5} "
        f"p50 {percentile(waits, 0.5) * 1e3:7.2f} ms  p99 {percentile(waits, 0.99) * 1e3:7.2f} ms"
        f"  max {max(waits) * 1e3:7.1f} ms"
    )


def measure(pods: int, old: bool, emit: Callable[[str], None] = print) -> None:
    snapshot = generate_cluster(Size(pods, max(1, pods // 10), max(2, pods // 100))).snapshot()

    def compile_(s: ClusterSnapshot, g: int) -> AllowTables:
        if old:
            return compile_tables(s, "node-1", g)
        return compile_quietly(compile_tables, s, "node-1", g)

    def receive(messages: list[bytes], whole: bytes) -> ClusterSnapshot:
        if old:  # one message, unpickled with the collector on
            publication: Publication | None = pickle.loads(whole)
        else:
            publication = receive_publication(_Received(messages))  # type: ignore[arg-type]
        assert publication is not None
        return publication.snapshot

    holder = TablesHolder(compile_(snapshot, 1))
    whole = pickle.dumps(Publication(snapshot, 2), protocol=pickle.HIGHEST_PROTOCOL)
    messages = [
        pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        for message in publication_messages(Publication(snapshot, 2))
    ]
    if not old:
        prefer_decisions()
    queue = _QueueStandIn(holder)
    try:
        started = time.perf_counter()
        time.sleep(3.0)
        emit(_line("idle", [], queue.between(started + 0.5, time.perf_counter())))
        for phase in ("runner", "worker"):
            seconds, waits = [], []
            for generation in (2, 3, 4):
                started = time.perf_counter()
                received = receive(messages, whole) if phase == "worker" else snapshot
                previous = holder.current
                holder.current = compile_(received, generation)
                if old:  # one C call frees the previous tables (and the worker's snapshot)
                    del previous, received
                else:  # as the runner and worker_process_main free them
                    records = pieces_of(previous)
                    if phase == "worker":
                        records += pieces_of(received)
                    del previous, received
                    release_gradually(records)
                ended = time.perf_counter()
                time.sleep(0.3)  # the ticks of the last moments are decided now
                seconds.append(ended - started)
                waits += queue.between(started, ended + 0.05)
            emit(_line(phase, seconds, waits))
    finally:
        queue.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.compile_stall")
    parser.add_argument("pods", type=int, help="pods in the synthetic cluster (e.g. 100000)")
    parser.add_argument("--old", action="store_true", help="the agent before the fix")
    args = parser.parse_args(argv)
    settings = "old settings" if args.old else "agent settings"
    print(f"{args.pods} pods, {settings}, python {sys.version.split()[0]}", flush=True)
    measure(args.pods, args.old)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
