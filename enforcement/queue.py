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
  the queue's own netlink socket (the kernel only lets the socket that bound a queue configure it)
  and reads the kernel's answer (``enforcement.nfqueue``). A refusal is logged and counted, and
  the worker goes on deciding: without the flags the kernel segments GSO packets before queueing
  them (slower, same verdicts) and a full queue drops (fail-closed), so a refusal can cost speed
  or turn a full queue's accept into a drop, never open anything.

Worker processes (``--queue-workers`` > 1) run this same worker, one queue each, in
``enforcement.workerprocess``.

Threading: ``QueueWorker.serve`` runs on one thread and owns the flow table. New tables arrive by
the runner swapping ``TablesHolder.current`` (one reference assignment, atomic under the GIL), so
the packet path never waits for a lock.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from enforcement.decide import ACCEPTING, admit_audited, decide, decide_with_outcome
from enforcement.events import POLICY_DENIALS, QUIET_REASONS, EventBuffer, VerdictEvent
from enforcement.firewall import (
    MARK_ACCEPTED,
    MARK_CACHE,
    MARK_HOST,
    MARK_KERNEL_REPLY,
    MARK_UNKNOWN,
)
from enforcement.flows import FlowTable
from enforcement.nfqueue import (
    NFQA_CFG_F_FAIL_OPEN,
    NFQA_CFG_F_GSO,
    QUEUE_FLAGS_MASK,
    AnswerWatcher,
    QueueBindError,
    config_request,
)
from enforcement.packets import MalformedPacket, PacketInfo, parse_packet
from enforcement.tables import OUTCOMES, AllowTables, Outcome
from enforcement.verdict import VERDICTS, Reason, Verdict

if TYPE_CHECKING:
    from netfilterqueue import NetfilterQueue, Packet

log = logging.getLogger(__name__)


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
    """Packets by (reason, protocol number, IP family), for the packet metrics; (reason, -1, 0)
    for a packet that could not be parsed."""
    config_refused: int = 0
    """Times the kernel refused the queue's configuration (GSO and fail-open flags)."""


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
        self.queue_flags = NFQA_CFG_F_GSO | (NFQA_CFG_F_FAIL_OPEN if fail_open else 0)
        """The ``NFQA_CFG_F_*`` flags the worker sets on its queue once bound."""
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
        else:
            stats.kinds[(verdict.reason, -1, 0)] += 1
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

    def _configure(self, queue: NetfilterQueue) -> None:
        """Set the queue's flags and read the kernel's answer; packets queued meanwhile are
        decided as usual (``enforcement.nfqueue.AnswerWatcher``)."""
        flags = self.queue_flags
        with AnswerWatcher(os.dup(queue.get_fd())) as watcher:
            watcher.send(config_request(self.queue_num, flags, flags | QUEUE_FLAGS_MASK))
            queue.run_socket(watcher)
        answer = watcher.answer
        if answer is None:
            log.warning(
                "no answer from the kernel to the queue's configuration",
                extra={"fields": {"queue": self.queue_num, "flags": flags, "lost": watcher.lost}},
            )
        elif answer:
            self.stats.config_refused += 1
            error = errno.errorcode.get(answer, str(answer))
            where = {"fields": {"queue": self.queue_num, "flags": flags, "error": error}}
            log.error(
                "the kernel refused the queue's configuration; deciding on without it "
                "(GSO packets are segmented first, a full queue drops)",
                extra=where,
            )

    def serve(self, stop: threading.Event) -> None:
        """Bind the queue and decide packets until ``stop`` is set, then unbind."""
        from netfilterqueue import NetfilterQueue  # the only import of the queue library

        queue = NetfilterQueue()
        try:
            queue.bind(self.queue_num, self._callback, max_len=self.max_len, range=self.copy_range)
        except OSError as error:
            log.error(
                "the kernel refused to bind the queue",
                extra={"fields": {"queue": self.queue_num, "error": str(error)}},
            )
            raise QueueBindError(f"binding NFQUEUE {self.queue_num}: {error}") from None
        try:
            self._configure(queue)
            self.bound.set()
            poller = select.poll()
            poller.register(queue.get_fd(), select.POLLIN)
            while not stop.is_set():
                if poller.poll(200):
                    queue.run(block=False)  # drains what is ready, then returns on EAGAIN
        finally:
            queue.unbind()
            self.bound.clear()
