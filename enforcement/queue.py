"""Stage: the queue loop. The only code that touches the NFQUEUE socket.

It reads packets the firewall queued, asks ``decide`` for a verdict and hands it back to the
kernel. The callback knows its default answer (fail-open: accept, fail-closed: drop) before it
parses anything; a malformed packet is dropped with reason ``malformed``, and any other exception
yields the default answer, bumps a counter and keeps the loop alive.

Threading: ``QueueWorker.serve`` runs on one thread and owns the flow table. New tables arrive by
the runner swapping ``TablesHolder.current`` (one reference assignment, atomic under the GIL), so
the packet path never waits for a lock.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from enforcement.decide import decide
from enforcement.firewall import MARK_HOST, MARK_KERNEL_REPLY
from enforcement.flows import FlowTable
from enforcement.packets import MalformedPacket, PacketInfo, parse_packet
from enforcement.tables import AllowTables
from enforcement.verdict import VERDICTS, Reason, Verdict

if TYPE_CHECKING:
    from netfilterqueue import Packet

log = logging.getLogger(__name__)

Tracer = Callable[[PacketInfo | None, Verdict], None]
"""Called with every decision when tracing is on (slow; for people, not for benchmarks)."""


class TablesHolder:
    """The one mutable reference through which compiled tables are published."""

    __slots__ = ("current",)

    def __init__(self, tables: AllowTables) -> None:
        self.current = tables


@dataclass(slots=True)
class QueueStats:
    """Counters of one worker, read by the metrics endpoint (reads are racy but monotonic)."""

    verdicts: Counter[Reason] = field(default_factory=Counter)
    errors: int = 0
    """Exceptions other than malformed packets: each one got the default verdict."""
    decision_ns_total: int = 0
    packets: int = 0


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
        max_len: int = 4096,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue_num = queue_num
        self.tables = tables
        self.flows = flows
        self.fail_open = fail_open
        self.max_len = max_len
        self.tracer = tracer
        self.stats = QueueStats()
        self._clock = clock
        self._default = VERDICTS[Reason.FAIL_OPEN if fail_open else Reason.FAIL_CLOSED]
        self._next_housekeeping = 0.0
        self.bound = threading.Event()
        """Set once the queue is bound: from then on packets are decided, not bypassed."""

    def decide_payload(self, payload: bytes, mark: int) -> tuple[PacketInfo | None, Verdict]:
        """Decide raw packet bytes (sans-I/O; the callback and the tests use this)."""
        verdict = self._default
        info: PacketInfo | None = None
        try:
            info = parse_packet(payload)
            now = self._clock()
            verdict = decide(
                info,
                self.tables.current,
                self.flows,
                now,
                from_host=bool(mark & MARK_HOST),
                kernel_reply=bool(mark & MARK_KERNEL_REPLY),
            )
            if now >= self._next_housekeeping:
                self.flows.expire(now)
                self._next_housekeeping = now + self.HOUSEKEEPING_INTERVAL
        except MalformedPacket:
            verdict = VERDICTS[Reason.MALFORMED]
        except Exception:  # the loop must survive anything; the default verdict stands
            self.stats.errors += 1
            log.exception("error deciding a packet; applied the default verdict")
        return info, verdict

    def _callback(self, packet: Packet) -> None:
        started = time.perf_counter_ns()
        try:
            info, verdict = self.decide_payload(packet.get_payload(), packet.get_mark())
        except Exception:
            info, verdict = None, self._default
            self.stats.errors += 1
        stats = self.stats
        stats.packets += 1
        stats.verdicts[verdict.reason] += 1
        stats.decision_ns_total += time.perf_counter_ns() - started
        if self.tracer is not None:
            self.tracer(info, verdict)
        if verdict.accepted:
            packet.accept()
        else:
            packet.drop()

    def serve(self, stop: threading.Event) -> None:
        """Bind the queue and decide packets until ``stop`` is set, then unbind."""
        from netfilterqueue import NetfilterQueue  # the only import of the queue library

        queue = NetfilterQueue()
        queue.bind(self.queue_num, self._callback, max_len=self.max_len)
        self.bound.set()
        fd = queue.get_fd()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while not stop.is_set():
                if poller.poll(200):
                    queue.run(block=False)  # drains what is ready, then returns on EAGAIN
        finally:
            queue.unbind()
            self.bound.clear()
