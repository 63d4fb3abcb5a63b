"""Supervision of the queue workers: one slot per queue, its worker (a thread, or a process with
``--queue-workers`` > 1), and what the runner does when one ends.

A worker that ends is noticed by the sync loop (``_supervise``), reported down (``/readyz`` and
``/healthz`` answer 503 naming its queue) and restarted with the snapshot in force after a
back-off that doubles while it keeps dying. Meanwhile its queue has no listener and the kernel
drops what it queues there (fail-closed) or accepts it (``--fail-open``). A worker whose queue
the kernel would not bind is counted per slot (``bind_refused``): a thread by the exception it
ended with, a process by its exit code.

:class:`WorkerSupervision` is the runner's half that does this; ``agent.runner.Agent`` is the
other half (its attributes are declared here for the type checker).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.logs import fields
from enforcement.flows import FlowTable
from enforcement.nfqueue import QueueBindError
from enforcement.queue import QueueWorker, TablesHolder
from enforcement.workerprocess import EXIT_BIND_REFUSED, Publication, RemoteWorker, WorkerSettings

if TYPE_CHECKING:
    from agent.runner import AgentConfig, AgentStatus
    from enforcement.eventpump import RecordBatch
    from enforcement.events import EventBuffer

log = logging.getLogger(__name__)

RESTART_BACKOFF = 0.5
"""Seconds before a dead queue worker's first restart; doubled for each further failure."""
RESTART_BACKOFF_MAX = 30.0
"""The longest wait between restarts (the kubelet's own back-off starts at 10 s, caps at 5 min)."""
STABLE_AFTER = 60.0
"""Seconds a restarted worker must stay bound before its back-off starts from the beginning."""


@dataclass(slots=True)
class WorkerSlot:
    """One queue and the worker deciding it, as the runner supervises it."""

    worker: QueueWorker | RemoteWorker
    thread: threading.Thread | None = None
    """The thread serving the queue (single-queue mode); None for a worker process."""
    error: str | None = None
    """Why the thread ended (its exception), for the health message."""
    down_since: float | None = None
    """Monotonic time the worker was found dead; None while it is up (or starting)."""
    restart_at: float = 0.0
    """Monotonic time of the next restart, while down."""
    failures: int = 0
    """Deaths since the worker last stayed up for ``STABLE_AFTER`` seconds (the back-off)."""
    restarts: int = 0
    """Restarts of this queue's worker since the agent started."""
    bind_refused: int = 0
    """Times the kernel refused to bind this queue (the worker then ended)."""
    started: float = 0.0
    """Monotonic time of the last (re)start."""
    reason: str = ""
    """How the worker last ended."""

    @property
    def queue_num(self) -> int:
        return self.worker.queue_num

    @property
    def alive(self) -> bool:
        if isinstance(self.worker, RemoteWorker):
            return not self.worker.exited.is_set() and self.worker.process.is_alive()
        return self.thread is not None and self.thread.is_alive()


class WorkerSupervision:
    """Starting, watching and restarting the queue workers (the runner's sync loop only)."""

    config: AgentConfig
    status: AgentStatus
    tables: TablesHolder
    events: EventBuffer
    slots: list[WorkerSlot]
    _stop: threading.Event
    _dirty: threading.Event
    _published: Publication
    _worker_states: tuple[tuple[int, int, bool, bool], ...]
    _dispatch_records: Callable[[RecordBatch], None]
    """Hands a worker process's record batches to the sinks (the runner's)."""
    _write_status: Callable[[], None]
    """Writes the status file (the runner's)."""

    def workers_down(self) -> list[str]:
        """One line per queue whose worker is not deciding (read by the health endpoints)."""
        now = time.monotonic()
        lines = []
        for slot in list(self.slots):
            if slot.down_since is not None:
                lines.append(
                    f"queue {slot.queue_num}: worker down ({slot.reason}), restart "
                    f"{slot.restarts + 1} in {max(0.0, slot.restart_at - now):.1f}s"
                )
            elif slot.restarts and not slot.worker.bound.is_set():
                lines.append(
                    f"queue {slot.queue_num}: worker restarted ({slot.reason}), not bound yet"
                )
        return lines

    def _start_worker_thread(self) -> None:
        config = self.config.firewall
        worker = QueueWorker(
            config.queue_num,
            self.tables,
            FlowTable(max_flows=self.config.max_flows),
            fail_open=config.fail_open,
            fast_path=config.mode == "fast",
            max_len=self.config.queue_max_len,
            events=self.events,
            trace_all=self.config.trace,
            audit=self.config.audit,
            verdict_cache=config.uses_cache,
        )
        slot = WorkerSlot(worker)
        self.slots.append(slot)
        self._serve_in_thread(slot)

    def _serve_in_thread(self, slot: WorkerSlot) -> None:
        worker = slot.worker
        assert isinstance(worker, QueueWorker)

        def serve() -> None:
            try:
                worker.serve(self._stop)
            except QueueBindError as error:  # logged where it happened
                slot.error = f"{type(error).__name__}: {error}"
                slot.bind_refused += 1
            except Exception as error:  # reported and restarted by the sync loop
                slot.error = f"{type(error).__name__}: {error}"
                log.exception("the queue thread failed", extra=fields(queue=worker.queue_num))
            else:
                slot.error = "returned"
            finally:
                self._dirty.set()  # wakes the sync loop, which notices the thread is gone

        slot.error = None
        slot.started = time.monotonic()
        slot.thread = threading.Thread(target=serve, name=f"queue-{worker.queue_num}", daemon=True)
        slot.thread.start()

    def _start_worker_processes(self, first: Publication) -> None:
        config = self.config.firewall
        for offset in range(config.queue_count):
            settings = WorkerSettings(
                queue_num=config.queue_num + offset,
                fail_open=config.fail_open,
                fast_path=config.mode == "fast",
                max_len=self.config.queue_max_len,
                copy_range=512,
                max_flows=self.config.max_flows,
                node_name=self.config.node_name,
                trace_all=self.config.trace,
                audit=self.config.audit,
                verdict_cache=config.uses_cache,
                record_rate=None if self.config.trace else self.config.record_rate,
            )
            slot = WorkerSlot(
                RemoteWorker(
                    settings, first, on_exit=self._dirty.set, on_records=self._dispatch_records
                )
            )
            slot.started = time.monotonic()
            self.slots.append(slot)

    def _supervise(self) -> None:
        """Notice dead workers and restart those whose back-off has passed (sync loop only)."""
        now = time.monotonic()
        for slot in self.slots:
            if self._stop.is_set():
                return
            if slot.down_since is None:
                if slot.alive:
                    if slot.failures and now - slot.started >= STABLE_AFTER:
                        slot.failures = 0
                    continue
                slot.reason = self._how_it_ended(slot)
                if (
                    isinstance(slot.worker, RemoteWorker)
                    and slot.worker.process.exitcode == EXIT_BIND_REFUSED
                ):
                    slot.bind_refused += 1
                slot.failures += 1
                slot.down_since = now
                delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2 ** (slot.failures - 1))
                slot.restart_at = now + delay
                log.error(
                    "queue worker down; its queue has no listener until it restarts",
                    extra=fields(
                        queue=slot.queue_num,
                        reason=slot.reason,
                        queued_packets="accepted" if self.config.firewall.fail_open else "dropped",
                        restart_in_seconds=round(delay, 3),
                    ),
                )
            elif now >= slot.restart_at:
                self._restart(slot)
        states = tuple(
            (slot.queue_num, slot.restarts, slot.down_since is None, slot.worker.bound.is_set())
            for slot in self.slots
        )
        if states != self._worker_states:  # written when a worker dies, restarts or binds
            self._worker_states = states
            self.status.workers_down = self.workers_down()
            self.status.workers = self._worker_summaries()
            self._write_status()

    def _worker_summaries(self) -> list[dict[str, Any]]:
        summaries = []
        for slot in self.slots:
            worker = slot.worker
            summaries.append(
                {
                    "queue": slot.queue_num,
                    "pid": worker.pid if isinstance(worker, RemoteWorker) else os.getpid(),
                    "up": slot.down_since is None and worker.bound.is_set(),
                    "restarts": slot.restarts,
                    "generation": worker.generation
                    if isinstance(worker, RemoteWorker)
                    else self.tables.current.generation,
                }
            )
        return summaries

    def _how_it_ended(self, slot: WorkerSlot) -> str:
        if isinstance(slot.worker, RemoteWorker):
            return f"process {slot.worker.pid} {slot.worker.exit_description()}"
        return f"thread ended: {slot.error or 'unknown'}"

    def _restart(self, slot: WorkerSlot) -> None:
        slot.restarts += 1
        self.status.worker_restarts += 1
        log.warning(
            "restarting the queue worker",
            extra=fields(queue=slot.queue_num, restart=slot.restarts),
        )
        old = slot.worker
        if isinstance(old, RemoteWorker):
            old.stop(timeout=1.0)
            try:
                slot.worker = RemoteWorker(
                    old.settings,
                    self._published,
                    on_exit=self._dirty.set,
                    on_records=self._dispatch_records,
                )
            except OSError as error:  # no process could start: try again after the back-off
                slot.reason = f"could not start a process: {error}"
                slot.restart_at = time.monotonic() + RESTART_BACKOFF_MAX
                return
            slot.started = time.monotonic()
        else:
            self._serve_in_thread(slot)
        slot.down_since = None

    def _next_wait(self) -> float:
        """Seconds the sync loop may sleep: until the next restart is due, at most 0.5."""
        due = [slot.restart_at for slot in self.slots if slot.down_since is not None]
        if not due:
            return 0.5
        return max(0.01, min(0.5, min(due) - time.monotonic()))
