"""Queue balancing over processes: a queue worker in a process of its own, and the runner's
handle on it.

With ``--queue-workers N`` the firewall spreads connections over N queues (``--queue-balance``;
xt_NFQUEUE hashes the address pair symmetrically, so both directions of a connection reach the
same queue and the same flow table). Each queue gets a process of its own, so deciding uses N
cores instead of one GIL. A worker receives every new cluster snapshot over a pipe and compiles
it itself: the compiler is pure and deterministic, so every process holds the same tables for
the same generation. Workers report their counters back once a second (:class:`WorkerReport`),
and their verdict records as they are made.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from typing import Any

from enforcement.eventpump import DEFAULT_RATE, EventCounts, EventPump, RecordBatch, Sink
from enforcement.events import EventBuffer
from enforcement.flows import FlowTable
from enforcement.latency import compile_quietly, pieces_of, prefer_decisions, release_gradually
from enforcement.model import ClusterSnapshot
from enforcement.nfqueue import QueueBindError
from enforcement.queue import QueueStats, QueueWorker, TablesHolder
from enforcement.verdict import Reason

EXIT_BIND_REFUSED = 3
"""Exit code of a worker process whose queue the kernel would not bind (counted by the runner)."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    queue_num: int
    fail_open: bool
    fast_path: bool
    max_len: int
    copy_range: int
    max_flows: int
    node_name: str
    events: bool = True
    """Report decisions as events (pumped to the runner as records)."""
    trace_all: bool = False
    audit: bool = False
    verdict_cache: bool = False
    record_rate: float | None = DEFAULT_RATE
    """Records a second the worker's pump admits (None: no limit)."""


@dataclass(frozen=True, slots=True)
class Publication:
    """What the runner sends a worker process: a snapshot to compile as ``generation``."""

    snapshot: ClusterSnapshot
    generation: int


PUBLICATION_CHUNK = 1000
"""Records (pods, policies, namespaces) per message when a snapshot is sent to a worker. The
worker unpickles one message at a time: unpickling a whole 100k-pod snapshot in one call held
its interpreter lock for a quarter of a second at a time (a memo of millions of entries grown
and freed in C), while its queue thread waited."""


@dataclass(frozen=True, slots=True)
class SnapshotPart:
    """Some records of one field of the snapshot being sent (a message on the pipe)."""

    field: str
    """The ``ClusterSnapshot`` field the records belong to."""
    records: tuple[object, ...]
    whole: bool = False
    """The field is no tuple of records: ``records`` holds its one value."""


@dataclass(frozen=True, slots=True)
class PublicationEnd:
    """The last message of a publication: the parts sent since the previous one are the
    whole snapshot of ``generation``."""

    generation: int


def publication_messages(publication: Publication) -> Iterator[SnapshotPart | PublicationEnd]:
    """``publication`` as pipe messages: its snapshot's fields in chunks, then the end."""
    snapshot = publication.snapshot
    for each in fields(snapshot):
        value = getattr(snapshot, each.name)
        if not isinstance(value, tuple):
            yield SnapshotPart(each.name, (value,), whole=True)
            continue
        for start in range(0, len(value), PUBLICATION_CHUNK):
            yield SnapshotPart(each.name, value[start : start + PUBLICATION_CHUNK])
    yield PublicationEnd(publication.generation)


def receive_publication(connection: Connection) -> Publication | None:
    """Read messages until a publication is complete; None when told to stop or the pipe ends.

    Each message is unpickled with the collector paused (enforcement.latency): a snapshot's
    millions of objects would otherwise be walked again by every full collection.
    """
    parts: dict[str, list[object]] = {each.name: [] for each in fields(ClusterSnapshot)}
    wholes: dict[str, object] = {}
    while True:
        try:
            data = connection.recv_bytes()  # waits without the interpreter lock
        except (EOFError, OSError):
            return None
        message = compile_quietly(pickle.loads, data)
        del data
        if isinstance(message, SnapshotPart) and message.whole:
            wholes[message.field] = message.records[0]
        elif isinstance(message, SnapshotPart):
            parts[message.field].extend(message.records)
        elif isinstance(message, PublicationEnd):
            values: dict[str, Any] = {name: tuple(records) for name, records in parts.items()}
            values.update(wholes)
            return Publication(ClusterSnapshot(**values), message.generation)
        else:
            return None  # None: the runner says stop


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What a worker process sends back about itself."""

    bound: bool
    generation: int
    """The generation of the tables this worker decides with."""
    verdicts: dict[Reason, int]
    errors: int
    decision_ns_total: int
    decision_buckets: list[int]
    packets: int
    flows: int
    evictions: int
    kinds: dict[tuple[Reason, int, int], int]
    events: EventCounts
    config_refused: int = 0


def worker_process_main(settings: WorkerSettings, connection: Connection) -> None:
    """Entry point of a worker process (runs until the pipe closes or says stop)."""
    from enforcement.compiler import compile_tables

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    prefer_decisions()
    first = receive_publication(connection)
    if first is None:
        return
    holder = TablesHolder(
        compile_quietly(compile_tables, first.snapshot, settings.node_name, first.generation)
    )
    buffer = EventBuffer() if settings.events else None
    worker = QueueWorker(
        settings.queue_num,
        holder,
        FlowTable(max_flows=settings.max_flows),
        fail_open=settings.fail_open,
        fast_path=settings.fast_path,
        max_len=settings.max_len,
        copy_range=settings.copy_range,
        events=buffer,
        trace_all=settings.trace_all,
        audit=settings.audit,
        verdict_cache=settings.verdict_cache,
    )
    stop = threading.Event()
    send_lock = threading.Lock()

    def send(message: object) -> None:
        with send_lock:
            connection.send(message)

    pump = (
        EventPump(buffer, settings.node_name, send, rate=settings.record_rate)
        if buffer is not None
        else None
    )

    def report() -> None:
        stats = worker.stats
        events = EventCounts() if pump is None else pump.counts
        send(
            WorkerReport(
                worker.bound.is_set(),
                holder.current.generation,
                dict(stats.verdicts),
                stats.errors,
                stats.decision_ns_total,
                list(stats.decision_buckets),
                stats.packets,
                len(worker.flows),
                worker.flows.evictions,
                dict(stats.kinds),
                EventCounts(
                    Counter(events.outcomes),
                    events.records,
                    events.suppressed,
                    events.dropped,
                    events.folded,
                    events.events,
                ),
                stats.config_refused,
            )
        )

    def receive() -> None:
        while (publication := receive_publication(connection)) is not None:
            snapshot, generation = publication.snapshot, publication.generation
            del publication
            previous = holder.current
            holder.current = compile_quietly(
                compile_tables, snapshot, settings.node_name, generation
            )
            report()  # tells the runner this generation is in force here
            # The previous tables and this process's copy of the snapshot are needed no more:
            # free them record by record.
            records = pieces_of(previous) + pieces_of(snapshot)
            del previous, snapshot
            release_gradually(records)
        stop.set()

    def reporter() -> None:
        worker.bound.wait()
        report()  # tells the runner the queue is bound
        while not stop.wait(1.0):
            report()

    threading.Thread(target=receive, name="publications", daemon=True).start()
    threading.Thread(target=reporter, name="reports", daemon=True).start()
    if pump is not None:
        threading.Thread(target=pump.run, args=(stop,), name="events", daemon=True).start()
    try:
        worker.serve(stop)
    except QueueBindError:  # logged by serve; the runner counts it by the exit code
        raise SystemExit(EXIT_BIND_REFUSED) from None


class _FlowCounts:
    """Stands in for a remote worker's flow table in metrics: its size and evictions."""

    __slots__ = ("evictions", "size")

    def __init__(self) -> None:
        self.size = 0
        self.evictions = 0

    def __len__(self) -> int:
        return self.size


class RemoteWorker:
    """The runner's handle on a worker process; mirrors ``QueueWorker``'s stats for metrics.

    Nothing here raises when the process is gone: ``publish`` says whether the message went,
    ``wait_generation`` returns as soon as the process is known dead, and ``exited`` is set
    (and ``on_exit`` called, from the report thread) when the pipe reaches end-of-file, which
    is when the process ends, however it ends.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        first: Publication,
        on_exit: Callable[[], None] | None = None,
        on_records: Sink | None = None,
    ) -> None:
        """``on_records`` receives the worker's record batches (on the report thread)."""
        import multiprocessing

        # spawn, not fork: the runner already has threads (the source), and forking a
        # multi-threaded process can copy a held lock into the child.
        context = multiprocessing.get_context("spawn")
        self.settings = settings
        self.queue_num = settings.queue_num
        self.stats = QueueStats()
        self.flows = _FlowCounts()
        self.event_counts = EventCounts()
        self.bound = threading.Event()
        self.exited = threading.Event()
        """Set once the process is gone (pipe end-of-file, or a failed send)."""
        self.generation = first.generation
        self._on_exit = on_exit
        self._on_records = on_records
        self._reported = threading.Condition()
        self._connection, child = context.Pipe()
        self.process = context.Process(
            target=worker_process_main,
            args=(settings, child),
            name=f"netpol-agent-queue-{settings.queue_num}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self._reader = threading.Thread(target=self._read, name="worker-reports", daemon=True)
        self._reader.start()
        self.publish(first)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def publish(self, publication: Publication) -> bool:
        """Send ``publication``; False (and the worker marked exited) if the process is gone."""
        if self.exited.is_set():
            return False
        try:
            for message in publication_messages(publication):
                self._connection.send(message)
        except (OSError, EOFError, ValueError):  # BrokenPipeError, a closed connection
            self._mark_exited()
            return False
        return True

    def wait_generation(self, generation: int, timeout: float) -> bool:
        """Block until the worker decides with ``generation`` (or later) tables.

        False after ``timeout``, or at once when the process has exited.
        """
        with self._reported:
            self._reported.wait_for(
                lambda: self.generation >= generation or self.exited.is_set(), timeout
            )
            return self.generation >= generation and not self.exited.is_set()

    def exit_description(self) -> str:
        """How the process ended, for logs and health messages."""
        # Reaps it: its pipe may reach end-of-file a moment before the kernel reports the exit.
        self.process.join(2.0 if self.exited.is_set() else 0)
        code = self.process.exitcode
        if code is None:
            return "lost its pipe" if self.exited.is_set() else "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._connection.send(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        with contextlib.suppress(OSError):
            self._connection.close()

    def _mark_exited(self) -> None:
        if self.exited.is_set():
            return
        with self._reported:
            self.exited.set()
            self.bound.clear()
            self._reported.notify_all()
        if self._on_exit is not None:
            self._on_exit()

    def _read(self) -> None:
        while True:
            try:
                message: WorkerReport | RecordBatch = self._connection.recv()
            except (EOFError, OSError):
                self._mark_exited()
                return
            if isinstance(message, RecordBatch):
                if self._on_records is not None:
                    self._on_records(message)
                continue
            report = message
            self.stats.verdicts = Counter(report.verdicts)
            self.stats.errors = report.errors
            self.stats.decision_ns_total = report.decision_ns_total
            self.stats.decision_buckets = report.decision_buckets
            self.stats.packets = report.packets
            self.stats.kinds = Counter(report.kinds)
            self.stats.config_refused = report.config_refused
            self.event_counts = report.events
            self.flows.size = report.flows
            self.flows.evictions = report.evictions
            with self._reported:
                self.generation = report.generation
                self._reported.notify_all()
            if report.bound:
                self.bound.set()
