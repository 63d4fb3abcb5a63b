"""Stage: the queue loop. The only code that touches the NFQUEUE socket.

It reads packets the firewall queued, asks ``decide`` for a verdict and hands it back to the
kernel. The callback knows its default answer (fail-open: accept, fail-closed: drop) before it
parses anything; a malformed packet is dropped with reason ``malformed``, and any other exception
yields the default answer, bumps a counter and keeps the loop alive.

Queue mechanics (nfnetlink_queue, net/netfilter/nfnetlink_queue.c):

- Only the first ``copy_range`` bytes of a packet are copied to userspace: headers are all the
  decision reads (an ICMP error's quote included), so bulk payload is never copied.
- ``NFQA_CFG_F_GSO``: the kernel hands over GSO super-packets whole instead of segmenting them
  first, so per-packet mode pays once per up-to-64 KiB super-packet, not per 1448-byte segment.
- ``NFQA_CFG_F_FAIL_OPEN`` with ``--fail-open``: a full queue accepts instead of dropping.
  netfilterqueue exposes neither flag, so the worker sends the NFQNL_MSG_CONFIG message itself on
  the queue's own netlink socket (the kernel only lets the socket that bound a queue configure it).

Threading: ``QueueWorker.serve`` runs on one thread and owns the flow table. New tables arrive by
the runner swapping ``TablesHolder.current`` (one reference assignment, atomic under the GIL), so
the packet path never waits for a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from enforcement.decide import ACCEPTING, admit_audited, decide, decide_with_outcome
from enforcement.eventpump import DEFAULT_RATE, EventCounts, EventPump, RecordBatch, Sink
from enforcement.events import POLICY_DENIALS, QUIET_REASONS, EventBuffer, VerdictEvent
from enforcement.firewall import (
    MARK_ACCEPTED,
    MARK_CACHE,
    MARK_HOST,
    MARK_KERNEL_REPLY,
    MARK_UNKNOWN,
)
from enforcement.flows import FlowTable
from enforcement.latency import (
    compile_quietly,
    pieces_of,
    prefer_decisions,
    release_gradually,
)
from enforcement.model import ClusterSnapshot
from enforcement.packets import MalformedPacket, PacketInfo, parse_packet
from enforcement.tables import OUTCOMES, AllowTables, Outcome
from enforcement.verdict import VERDICTS, Reason, Verdict

if TYPE_CHECKING:
    from netfilterqueue import Packet

log = logging.getLogger(__name__)

# linux/netfilter/nfnetlink.h, nfnetlink_queue.h, netlink.h
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_CONFIG = 2
_NLM_F_REQUEST = 0x1
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_GSO = 0x4


def _attribute(kind: int, payload: bytes) -> bytes:
    """A netlink attribute (struct nlattr, host byte order) padded to 4 bytes."""
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def queue_flags_message(queue_num: int, flags: int, mask: int, sequence: int = 1) -> bytes:
    """The NFQNL_MSG_CONFIG request that sets ``flags`` (under ``mask``) on a bound queue.

    nfgenmsg's res_id carries the queue number in network byte order; NFQA_CFG_MASK and
    NFQA_CFG_FLAGS are big-endian u32 (nfnetlink_queue.c, nfqnl_recv_config).
    """
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue_num))
    body += _attribute(_NFQA_CFG_MASK, struct.pack("!I", mask))
    body += _attribute(_NFQA_CFG_FLAGS, struct.pack("!I", flags))
    message_type = (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), message_type, _NLM_F_REQUEST, sequence, 0) + body


class TablesHolder:
    """The one mutable reference through which compiled tables are published."""

    __slots__ = ("current",)

    def __init__(self, tables: AllowTables) -> None:
        self.current = tables


DECISION_BUCKETS_NS: tuple[int, ...] = tuple(
    int(micros * 1000) for micros in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
)
"""Upper bounds of the decision-time histogram's buckets, in nanoseconds (1-2-5 steps)."""


@dataclass(slots=True)
class QueueStats:
    """Counters of one worker, read by the metrics endpoint (reads are racy but monotonic)."""

    verdicts: Counter[Reason] = field(default_factory=Counter)
    errors: int = 0
    """Exceptions other than malformed packets: each one got the default verdict."""
    decision_ns_total: int = 0
    packets: int = 0
    decision_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(DECISION_BUCKETS_NS) + 1)
    )
    """Decisions per bucket of ``DECISION_BUCKETS_NS`` (not cumulative); the last is +Inf."""
    kinds: Counter[tuple[Reason, int, int]] = field(default_factory=Counter)
    """Parsed packets by (reason, protocol number, IP family), for the packet metrics."""


class QueueWorker:
    """Binds one NFQUEUE number and decides its packets until ``stop`` is set."""

    HOUSEKEEPING_INTERVAL = 1.0
    """Seconds between flow-table expiry passes."""

    def __init__(
        self,
        queue_num: int,
        tables: TablesHolder,
        flows: FlowTable,
        *,
        fail_open: bool,
        fast_path: bool = True,
        max_len: int = 4096,
        copy_range: int = 512,
        events: EventBuffer | None = None,
        trace_all: bool = False,
        audit: bool = False,
        verdict_cache: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``events``: where decisions worth reporting go (None: nobody listens, and the
        cheaper ``decide`` runs). ``trace_all``: every packet becomes an event, not only
        decided connections. ``audit``: what policy denies passes all the same (``--audit``).
        ``verdict_cache`` (fast path): an allow the tables gave by the packet's tuple alone is
        marked for the kernel's verdict cache (``firewall.MARK_CACHE``)."""
        self.queue_num = queue_num
        self.tables = tables
        self.flows = flows
        self.fail_open = fail_open
        self.fast_path = fast_path
        self.max_len = max_len
        self.copy_range = copy_range
        self.events = events
        self.trace_all = trace_all
        self.audit = audit
        self.verdict_cache = verdict_cache and fast_path
        self.stats = QueueStats()
        self._clock = clock
        self._default = VERDICTS[Reason.FAIL_OPEN if fail_open else Reason.FAIL_CLOSED]
        self._next_housekeeping = 0.0
        self.bound = threading.Event()
        """Set once the queue is bound: from then on packets are decided, not bypassed."""

    def decide_payload(self, payload: bytes, mark: int) -> tuple[PacketInfo | None, Verdict]:
        """Decide raw packet bytes (sans-I/O; the tests use this)."""
        info, verdict, _ = self._decide(payload, mark, self.tables.current)
        return info, verdict

    def _decide(
        self, payload: bytes, mark: int, tables: AllowTables
    ) -> tuple[PacketInfo | None, Verdict, Outcome]:
        """Decide, with the provenance when events are wanted (else a reason's bare outcome)."""
        verdict = self._default
        outcome = OUTCOMES[verdict.reason]
        info: PacketInfo | None = None
        try:
            info = parse_packet(payload)
            now = self._clock()
            flags = {
                "from_host": bool(mark & MARK_HOST),
                "kernel_reply": bool(mark & MARK_KERNEL_REPLY),
                "unknown_endpoint": bool(mark & MARK_UNKNOWN),
            }
            if self.events is None:
                verdict = decide(info, tables, self.flows, now, **flags)
                outcome = OUTCOMES[verdict.reason]
            else:
                verdict, outcome = decide_with_outcome(info, tables, self.flows, now, **flags)
            if self.audit and verdict.reason in POLICY_DENIALS:
                # Audit mode: the packet passes, and so must the rest of its connection, as an
                # allowed one would (the flow log reports it once, as denied, not enforced).
                admit_audited(info, self.flows, now)
            if now >= self._next_housekeeping:
                self.flows.expire(now)
                self._next_housekeeping = now + self.HOUSEKEEPING_INTERVAL
        except MalformedPacket:
            verdict = VERDICTS[Reason.MALFORMED]
            outcome = OUTCOMES[Reason.MALFORMED]
        except Exception:  # the loop must survive anything; the default verdict stands
            self.stats.errors += 1
            log.exception("error deciding a packet; applied the default verdict")
        return info, verdict, outcome

    def handle(self, payload: bytes, mark: int) -> bool:
        """Decide one queued packet, count it and report it; True when it may pass.

        Everything the callback does but talk to the kernel (sans-I/O: tests call this).
        """
        return self.marks(payload, mark) is not None

    def marks(self, payload: bytes, mark: int) -> int | None:
        """:meth:`handle`, answering None when the packet must be dropped, else the mark bits
        the fast path adds as it passes it: ``MARK_ACCEPTED``, and the cache bit of the
        deciding tables' generation when the verdict may be cached (docs/design-verdict-cache.md:
        the tables allowed a new connection by its tuple alone)."""
        started = time.perf_counter_ns()
        tables = self.tables.current
        try:
            info, verdict, outcome = self._decide(payload, mark, tables)
        except Exception:
            info, verdict, outcome = None, self._default, OUTCOMES[self._default.reason]
            self.stats.errors += 1
        stats = self.stats
        elapsed = time.perf_counter_ns() - started
        stats.packets += 1
        stats.verdicts[verdict.reason] += 1
        stats.decision_ns_total += elapsed
        stats.decision_buckets[bisect_left(DECISION_BUCKETS_NS, elapsed)] += 1
        if info is not None:
            stats.kinds[(verdict.reason, info.protocol, info.family)] += 1
        audited = self.audit and verdict.reason in POLICY_DENIALS
        events = self.events
        if events is not None and (self.trace_all or verdict.reason not in QUIET_REASONS):
            revoked = verdict.reason is Reason.REVOKED
            events.offer(VerdictEvent(time.time(), info, outcome, tables, not audited, revoked))
        if not (verdict.accepted or audited):
            return None
        if self.verdict_cache and verdict.reason in ACCEPTING:
            # ALLOWED and NOT_ISOLATED come only from the tables' verdict on the packet's own
            # tuple (decide.py, question 6): replies, host traffic and tracked flows say FLOW,
            # HOST or RELATED. Audited denials are no allow.
            return MARK_ACCEPTED | MARK_CACHE[tables.generation & 1]
        return MARK_ACCEPTED

    def _callback(self, packet: Packet) -> None:
        try:
            marks = self.marks(packet.get_payload(), packet.get_mark())
        except Exception:  # never leave a packet without a verdict
            marks = MARK_ACCEPTED if self._default.accepted else None
        if marks is None:
            packet.drop()
        elif self.fast_path:
            # Re-enter the hook with the mark set: the firewall saves it into the connection,
            # and the kernel passes the rest of the connection without the queue.
            packet.set_mark(packet.get_mark() | marks)
            packet.repeat()
        else:
            packet.accept()

    def serve(self, stop: threading.Event) -> None:
        """Bind the queue and decide packets until ``stop`` is set, then unbind."""
        from netfilterqueue import NetfilterQueue  # the only import of the queue library

        queue = NetfilterQueue()
        queue.bind(self.queue_num, self._callback, max_len=self.max_len, range=self.copy_range)
        fd = queue.get_fd()
        flags = NFQA_CFG_F_GSO | (NFQA_CFG_F_FAIL_OPEN if self.fail_open else 0)
        with socket.socket(fileno=os.dup(fd)) as control:
            control.send(
                queue_flags_message(self.queue_num, flags, NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN)
            )
        self.bound.set()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while not stop.is_set():
                if poller.poll(200):
                    queue.run(block=False)  # drains what is ready, then returns on EAGAIN
        finally:
            queue.unbind()
            self.bound.clear()


# -- queue balancing over processes ------------------------------------------------------------
#
# With ``--queue-workers N`` the firewall spreads connections over N queues
# (``--queue-balance``; xt_NFQUEUE hashes the address pair symmetrically, so both directions of a
# connection reach the same queue and the same flow table). Each queue gets a process of its own,
# so deciding uses N cores instead of one GIL. A worker receives every new cluster snapshot over
# a pipe and compiles it itself: the compiler is pure and deterministic, so every process holds
# the same tables for the same generation. Workers report their counters back once a second.


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
                ),
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
    worker.serve(stop)


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
            self.event_counts = report.events
            self.flows.size = report.flows
            self.flows.evictions = report.evictions
            with self._reported:
                self.generation = report.generation
                self._reported.notify_all()
            if report.bound:
                self.bound.set()
