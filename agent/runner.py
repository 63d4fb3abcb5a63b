"""The daemon's main loop: source → state cache → compiler → tables → firewall and queue.

One thread per source and per queue worker; this loop is the only writer of tables and firewall.

- Readiness gate: nothing is enforced from a partial view. The runner waits until the source has
  listed every kind once, then compiles, binds the queue, and only then fills the address sets
  that send traffic to the queue.
- Coalescing: a burst of changes (a ``kubectl apply`` of many objects, a relist) marks the state
  dirty many times but is compiled once: after a change the runner waits ``settle`` seconds for
  more, and never compiles more often than that.
- Publishing: new tables are published to the queue workers by swapping one reference before the
  address sets change, so a packet that newly reaches the queue always meets tables that know why.
- Supervision (``agent.workers``): a queue worker (thread or process) that ends is reported down
  (``/readyz`` and ``/healthz`` answer 503 naming its queue) and restarted with the current
  snapshot after a backoff that doubles while it keeps dying. Meanwhile its queue has no
  listener, and the kernel drops what it queues there (fail-closed) or accepts it
  (``--fail-open``, the queue's bypass flag). Publishing to a dead worker never raises out of
  the loop.
- Latency: compiles run with the cycle collector paused and freeze what they build, and the
  previous tables are freed record by record (``enforcement.latency``), so a packet queued
  meanwhile waits a switch interval, not a collection of the whole heap.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.logs import fields
from agent.metrics import DelayHistogram
from agent.sources import Source
from agent.state import ClusterState, PodRanges, StateView
from agent.workers import RESTART_BACKOFF, WorkerSlot, WorkerSupervision
from enforcement.clusterpolicy import describe_tie, priority_ties
from enforcement.compiler import compile_tables
from enforcement.conntrack import Revoker
from enforcement.eventpump import DEFAULT_RATE, EventCounts, EventPump, RecordBatch, Sink
from enforcement.events import (
    EventBuffer,
    TupleOutcomes,
    cache_decided,
    kernel_decided,
    revoked_in_kernel,
)
from enforcement.firewall import (
    CACHE_LIVENESS,
    CACHED_PREFIX,
    Firewall,
    FirewallConfig,
    FirewallError,
)
from enforcement.latency import compile_quietly, pieces_of, prefer_decisions, release_gradually
from enforcement.model import ClusterSnapshot
from enforcement.nflog import NflogReader
from enforcement.queue import QueueWorker, TablesHolder
from enforcement.tables import AllowTables
from enforcement.workerprocess import Publication, RemoteWorker

log = logging.getLogger(__name__)

__all__ = ["RESTART_BACKOFF", "Agent", "AgentConfig", "AgentStatus", "WorkerSlot"]
"""``RESTART_BACKOFF`` and ``WorkerSlot`` live in ``agent.workers``; named here as before."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    max_flows: int = 262144
    queue_max_len: int = 4096
    settle: float = 0.01
    """Seconds to wait after a change for more changes before compiling."""
    status_file: Path | None = None
    """Where to write the agent's status (JSON) after every sync; the lab waits on it."""
    jump_check_interval: float = 5.0
    """Seconds between checks that the agent's jumps are still first in their chains."""
    cleanup_on_exit: bool | None = None
    """Remove rules on a clean exit. None: remove when fail-open, keep when fail-closed."""
    flow_log: str | None = None
    """Where the flow log goes: a file path, ``-`` for standard output, None for nowhere."""
    record_rate: float = DEFAULT_RATE
    """Flow-log records a second per queue worker; the rest are counted as suppressed."""
    trace: bool = False
    """Every packet's verdict is logged with what decided it (slow; for people)."""
    audit: bool = False
    """Decide and report, enforce nothing that policy denies (``--audit``)."""
    policy_metrics: bool = False
    """Expose connections per policy (``--policy-metrics``; bounded cardinality)."""

    @property
    def removes_rules_on_exit(self) -> bool:
        if self.cleanup_on_exit is not None:
            return self.cleanup_on_exit
        return self.firewall.fail_open


@dataclass(slots=True)
class AgentStatus:
    ready: bool = False
    generation: int = 0
    source_version: str | None = None
    pods: int = 0
    unreadable_pods: int = 0
    """Pods whose objects could not be read: enforced as unknown endpoints (fail-closed)."""
    local_pods: int = 0
    isolated_addresses: int = 0
    policies: int = 0
    cluster_policies: int = 0
    """ClusterNetworkPolicies in force (fail-closed stand-ins included); 0 too while their CRD
    is not served."""
    last_sync_seconds: float = 0.0
    compile_seconds: float = 0.0
    syncs: int = 0
    revoked: int = 0
    """Accepted connections cut because a change denied them (fast path)."""
    spoofed_packets: int = 0
    cached_connections: int = 0
    """New connections the kernel's verdict cache admitted without asking the queue (read from
    the cache rule's counter every few seconds)."""
    unlogged_connections: int = 0
    """Connections the flow log's NFLOG rules held back by their rate limit (the flow log says
    so as suppressed records)."""
    """Packets the anti-spoofing rules dropped (read from their counters every few seconds)."""
    pod_cidrs: list[str] = field(default_factory=list)
    """This node's pod ranges the new-pod guard covers (``--pod-cidr`` or the Node's); empty:
    the guard is off."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """What is enforced but may surprise: ClusterNetworkPolicies that tie in priority (the API
    leaves their order undefined)."""
    workers_down: list[str] = field(default_factory=list)
    """Queue workers that are not deciding: which queue, why, and when it restarts."""
    worker_restarts: int = 0
    """Queue workers restarted since the agent started."""
    workers: list[dict[str, Any]] = field(default_factory=list)
    """Per queue: its number, the worker's pid, whether it is deciding, its restarts and the
    generation of the tables it decides with."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "generation": self.generation,
            "source_version": self.source_version,
            "pods": self.pods,
            "unreadable_pods": self.unreadable_pods,
            "local_pods": self.local_pods,
            "isolated_addresses": self.isolated_addresses,
            "policies": self.policies,
            "cluster_policies": self.cluster_policies,
            "last_sync_seconds": self.last_sync_seconds,
            "compile_seconds": self.compile_seconds,
            "syncs": self.syncs,
            "revoked": self.revoked,
            "spoofed_packets": self.spoofed_packets,
            "cached_connections": self.cached_connections,
            "unlogged_connections": self.unlogged_connections,
            "pod_cidrs": self.pod_cidrs,
            "errors": self.errors,
            "warnings": self.warnings,
            "workers_down": self.workers_down,
            "worker_restarts": self.worker_restarts,
            "workers": self.workers,
            "pid": os.getpid(),
        }


class Agent(WorkerSupervision):
    def __init__(
        self,
        config: AgentConfig,
        source: Source,
        *,
        firewall: Firewall | None = None,
        record_sinks: tuple[Sink, ...] = (),
    ) -> None:
        """``record_sinks`` receive every batch of verdict records (the flow log, the trace);
        metrics count the verdict events whether or not there are any."""
        self.config = config
        self.source = source
        if firewall is None:
            # With a record consumer the firewall also logs what it does not queue, so that
            # connections the kernel passes alone are recorded (``_watch_kernel_decisions``).
            # The flow log's rate limit applies in the kernel too: a packet it would only count
            # as suppressed is not worth a trip to the agent (xt_limit takes 10000/s at most).
            rate = None if config.trace or config.record_rate > 10000 else config.record_rate
            firewall = Firewall(
                replace(
                    config.firewall,
                    log_unqueued=bool(record_sinks),
                    log_rate=None if rate is None else int(rate),
                )
            )
        self.firewall = firewall
        self.conntrack = Revoker()
        self.record_sinks = record_sinks
        self.events = EventBuffer()
        """Where the queue thread offers its verdict events (single-queue mode)."""
        self.pump = EventPump(
            self.events,
            config.node_name,
            self._dispatch_records,
            rate=None if config.trace else config.record_rate,
        )
        self.status = AgentStatus()
        self.programming_delay = DelayHistogram()
        """Seconds from a change the state took to its rules in force, per sync (metrics)."""
        self._readings: dict[str, int] = {}
        """Rule counters at their last reading (``_read_counters``)."""
        self._dirty = threading.Event()
        self.state = ClusterState(on_change=self._dirty.set)
        self.tables = TablesHolder(compile_tables(ClusterSnapshot(), config.node_name, 0))
        self.slots: list[WorkerSlot] = []
        """One per queue: a thread with one queue, processes with ``--queue-workers`` > 1."""
        self.ready = threading.Event()
        """Set once enforcement is active (for readiness probes)."""
        self.heartbeat = time.monotonic()
        """When the sync loop last turned (for liveness probes)."""
        self._published = Publication(ClusterSnapshot(), 0)
        """The snapshot and generation in force: what a restarted worker starts from."""
        self._stop = threading.Event()
        self._worker_states: tuple[tuple[int, int, bool, bool], ...] = ()
        """What the status file last said about the workers (queue, restarts, up, bound)."""

    @property
    def workers(self) -> list[QueueWorker | RemoteWorker]:
        """The queue workers, for metrics."""
        return [slot.worker for slot in self.slots]

    def event_counts(self) -> list[EventCounts]:
        """The verdict-event counters of every pump (metrics): the runner's own (the queue
        thread's events with one queue; with any number, the connections the kernel passes
        alone and the revocations), and each worker process's."""
        remote = [
            slot.worker.event_counts for slot in self.slots if isinstance(slot.worker, RemoteWorker)
        ]
        return [self.pump.counts, *remote]

    def _watch_kernel_decisions(self, stop: threading.Event) -> None:
        """Offer an event for every connection the kernel passes without the queue (pods no
        policy isolates), from the first packets the firewall logs, until ``stop``."""
        group = self.firewall.config.log_group
        try:
            logged = NflogReader(group)
        except OSError as error:
            log.error(
                "cannot read the packets the firewall logs: connections between pods that no "
                "policy isolates are left out of the flow log",
                extra=fields(nflog_group=group, error=str(error)),
            )
            return
        outcomes = TupleOutcomes()
        try:
            while not stop.is_set():
                packets = logged.receive()
                if not packets:
                    continue
                tables, now = self.tables.current, time.time()
                for each in packets:
                    if each.prefix == CACHED_PREFIX:
                        self.events.offer(cache_decided(each.packet, tables, now, outcomes))
                        continue
                    event = kernel_decided(each.packet, tables, now)
                    if event is not None:
                        self.events.offer(event)
        except OSError:
            log.exception("reading the firewall's logged packets ended")
        finally:
            logged.close()

    def _dispatch_records(self, batch: RecordBatch) -> None:
        """Hand a batch of verdict records (from any pump) to every sink; a failing sink is
        logged and never stops the others or the pump."""
        for sink in self.record_sinks:
            try:
                sink(batch)
            except Exception:
                log.exception("a verdict-record consumer failed")

    def run(self, stop: threading.Event) -> None:
        """Enforce until ``stop`` is set. Raises only for set-up failures (no rules, no queue)."""
        self._stop = stop
        prefer_decisions()
        threads = [
            threading.Thread(
                target=self.source.run, args=(self.state, stop), name="source", daemon=True
            )
        ]
        threads[0].start()
        pump = threading.Thread(target=self.pump.run, args=(stop,), name="events", daemon=True)
        pump.start()
        threads.append(pump)
        if self.record_sinks:
            # Connections the kernel passes without asking the queue are recorded too.
            kernel = threading.Thread(
                target=self._watch_kernel_decisions, args=(stop,), name="ct-events", daemon=True
            )
            kernel.start()
            threads.append(kernel)
        log.info("waiting for the first full list of namespaces, pods and policies")
        while not self.state.ready:
            self.heartbeat = time.monotonic()
            if stop.wait(0.02):
                return
        try:
            applied = self._start_enforcing(stop)
            self._sync_loop(stop, applied)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
            for slot in self.slots:
                if slot.thread is not None:
                    slot.thread.join(timeout=5)
                if isinstance(slot.worker, RemoteWorker):
                    slot.worker.stop()
            if self.config.removes_rules_on_exit:
                log.info("removing the agent's rules (clean exit)")
                self.firewall.remove()
            else:
                log.info("leaving the queue rules in place: fail-closed until the agent returns")
            self.ready.clear()
            self.status.ready = False
            self._write_status()

    def _start_enforcing(self, stop: threading.Event) -> int:
        """Compile, bind the queues, fill the sets; returns the state revision now in force."""
        view = self.state.view()
        tables = self._compile(view)
        self.tables.current = tables
        self._published = Publication(view.snapshot, tables.generation)
        self.firewall.install()
        if self.config.firewall.queue_count > 1:
            self._start_worker_processes(self._published)
        else:
            self._start_worker_thread()
        for slot in self.slots:
            if not slot.worker.bound.wait(30):
                raise RuntimeError(f"could not bind NFQUEUE {slot.queue_num}")
        self._publish(view, tables)
        self.ready.set()
        log.info(
            "enforcing",
            extra=fields(node=self.config.node_name, queues=[s.queue_num for s in self.slots]),
        )
        return view.revision

    def _sync_loop(self, stop: threading.Event, applied: int) -> None:
        """Compile and publish every change after revision ``applied`` (the one in force).

        Not the state's revision when the loop starts: a change that landed while the first
        tables were being installed would count as applied and wait for the next one."""
        next_check = time.monotonic() + self.config.jump_check_interval
        next_alive = 0.0
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if self.heartbeat >= next_alive:
                next_alive = self.heartbeat + CACHE_LIVENESS / 3
                try:
                    self.firewall.keep_cache_alive()
                except FirewallError as error:  # the cache lapses: connections ask the queue
                    log.warning("could not keep the verdict cache alive: %s", error)
            if self.heartbeat >= next_check:
                next_check = self.heartbeat + self.config.jump_check_interval
                for where in self.firewall.ensure_first():
                    log.warning(
                        "another rule had been put above the agent's jump",
                        extra=fields(chain=where),
                    )
                if self.config.firewall.anti_spoofing:
                    spoofed = self.firewall.spoofed_drops()
                    if spoofed != self.status.spoofed_packets:
                        self.status.spoofed_packets = spoofed
                        self._write_status()
                self._read_counters()
            self._supervise()
            if not self._dirty.wait(self._next_wait()):
                continue
            # Let a burst of changes land before compiling it once.
            time.sleep(self.config.settle)
            self._dirty.clear()
            view = self.state.view()
            if view.revision == applied:
                continue
            tables = self._compile(view)
            previous = self.tables.current
            # No connection is admitted by an older generation's cached verdict from here on;
            # ``_publish`` lets the cache answer again once every worker decides with these.
            self.firewall.retire_cached_verdicts()
            self.tables.current = tables
            self._published = Publication(view.snapshot, tables.generation)
            for slot in self.slots:
                if isinstance(slot.worker, RemoteWorker) and slot.down_since is None:
                    slot.worker.publish(self._published)  # a dead one is noticed below
            self._publish(view, tables)
            applied = view.revision
            # Free the previous tables record by record, not in one C call that holds the
            # interpreter lock while the queue thread waits (enforcement.latency).
            records = pieces_of(previous)
            del previous
            release_gradually(records)

    def _read_counters(self) -> None:
        """Add what the cache's and the flow log's rule counters gained since the last reading:
        connections the cache admitted, and those the NFLOG rules' rate limit held back (told
        to the flow log as suppressed)."""
        config, cached, unlogged = self.firewall.config, 0, 0
        if config.uses_cache:
            cached = self._gained("cached", self.firewall.cached_admissions())
            self.status.cached_connections += cached
        if config.log_unqueued and config.log_rate is not None:
            unlogged = self._gained("unlogged", self.firewall.unlogged())
            self.status.unlogged_connections += unlogged
            if unlogged:
                self._dispatch_records(RecordBatch((), suppressed=unlogged))
        if cached or unlogged:
            self._write_status()

    def _gained(self, counter: str, reading: int) -> int:
        """What a rule counter gained since its last reading (one that went down was reset by
        rewritten rules: all of it is new)."""
        last = self._readings.get(counter, 0)
        self._readings[counter] = reading
        return reading - last if reading >= last else reading

    def _compile(self, view: StateView) -> AllowTables:
        started = time.perf_counter()
        generation = self.tables.current.generation + 1
        tables = compile_quietly(compile_tables, view.snapshot, self.config.node_name, generation)
        self.status.compile_seconds = time.perf_counter() - started
        return tables

    def _publish(self, view: StateView, tables: AllowTables) -> None:
        started = time.perf_counter()
        for slot in self.slots:
            worker = slot.worker
            if (
                isinstance(worker, RemoteWorker)
                and slot.down_since is None
                and not worker.wait_generation(tables.generation, timeout=30)
            ):
                log.error(
                    "queue worker did not take the new tables",
                    extra=fields(
                        queue=worker.queue_num,
                        generation=tables.generation,
                        exited=worker.exited.is_set(),
                    ),
                )
        self._supervise()
        isolated = tables.isolated_local_addresses()
        self.firewall.sync(isolated, self._known(view, tables))
        self.firewall.cache_generation(tables.generation)
        ranges_problem = None if view.pod_ranges is None else self._guard(view.pod_ranges)
        status = self.status
        if self.config.firewall.mode == "fast":
            # Tables first, then the cut: a connection deleted here is re-decided by new tables.
            # Judged by the real endpoints; only connections of addresses the change touched.
            revocation = self.conntrack.revoke_denied(
                tables, view.snapshot, self.firewall.config.pod_cidrs
            )
            if revocation.cut:
                log.info(
                    "cut established connections the change denies",
                    extra=fields(connections=revocation.cut, generation=tables.generation),
                )
            now = time.time()
            for entry in revocation.denied:
                self.events.offer(revoked_in_kernel(entry, tables, now))
            status.revoked += revocation.cut
        status.ready = True
        status.generation = tables.generation
        status.source_version = view.source_version
        status.pods = len(view.snapshot.pods)
        status.unreadable_pods = len(view.snapshot.unreadable_pods)
        status.local_pods = len(tables.local_addresses())
        status.isolated_addresses = len(isolated)
        status.policies = len(view.snapshot.policies)
        status.cluster_policies = len(view.snapshot.cluster_policies)
        status.last_sync_seconds = time.perf_counter() - started
        status.syncs += 1
        status.errors = [error.message for error in self.state.errors()]
        status.workers_down = self.workers_down()
        status.workers = self._worker_summaries()
        for error in self.state.errors():
            log.warning(
                "object taken with an error",
                extra=fields(
                    kind=error.kind,
                    namespace=error.key[0],
                    name=error.key[1],
                    error=error.message,
                ),
            )
        warnings = [describe_tie(group) for group in priority_ties(view.snapshot.cluster_policies)]
        for message in warnings:
            if message not in status.warnings:  # once, not at every sync
                log.warning("cluster policies tie in priority", extra=fields(detail=message))
        status.warnings = warnings
        status.pod_cidrs = list(self.firewall.config.pod_cidrs)
        if ranges_problem is not None:  # already logged where it was found
            status.errors.append(ranges_problem)
        delay = None
        if view.changed_at is not None:  # observed before the status file says it is done
            delay = time.monotonic() - view.changed_at
            self.programming_delay.observe(delay)
        self._write_status()
        log.info(
            "tables in force",
            extra=fields(
                generation=tables.generation,
                source_version=view.source_version,
                isolated_addresses=len(isolated),
                compile_seconds=round(status.compile_seconds, 6),
                sync_seconds=round(status.last_sync_seconds, 6),
                programming_seconds=None if delay is None else round(delay, 6),
            ),
        )

    def _known(self, view: StateView, tables: AllowTables) -> frozenset[bytes]:
        """The addresses the new-pod guard must take for known: this node's pods, and, for
        ranges given with ``--pod-cidr``, every pod of another node inside them that the tables
        know.

        A ``--pod-cidr`` range may be wider than the node's own: a DaemonSet passes one value to
        every node, so it is then the cluster's range. Other nodes' known pods must pass it;
        only pods no one knows yet wait. A Node's ``spec.podCIDRs`` are this node's alone (the
        IPAM controller hands out disjoint ranges), so they need no such pass over every pod,
        which would cost time at every change on a large cluster."""
        local = tables.local_addresses()
        declared = [ipaddress.ip_network(cidr) for cidr in self.config.firewall.pod_cidrs]
        if not declared:
            return local
        elsewhere = {
            address.packed
            for pod in view.snapshot.pods
            if pod.node_name != self.config.node_name
            for address in pod.ips
            if any(address in network for network in declared)
            and tables.endpoint(address.packed) is not None
        }
        return local | elsewhere

    def _guard(self, ranges: PodRanges) -> str | None:
        """Put the node's pod ranges, read from its Node, into the new-pod guard; after ``sync``
        filled the known set (see ``Firewall.set_pod_cidrs``). Returns the problem to report.

        A failure to write them is logged and reported, and enforcement goes on without them:
        the guard only ever adds drops, so going on never opens what policies close."""
        try:
            if self.firewall.set_pod_cidrs(ranges.cidrs):
                log.info("new-pod guard on the pod ranges", extra=fields(cidrs=list(ranges.cidrs)))
        except (FirewallError, ValueError) as error:
            log.error(
                "could not set the pod ranges",
                extra=fields(cidrs=list(ranges.cidrs), error=str(error)),
            )
            return f"could not set the pod ranges {', '.join(ranges.cidrs)}: {error}"
        return ranges.problem

    def _write_status(self) -> None:
        path = self.config.status_file
        if path is None:
            return
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.status.as_dict()))
        os.replace(temporary, path)
