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
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.sources import Source
from agent.state import ClusterState, PodRanges, StateView
from enforcement.compiler import compile_tables
from enforcement.conntrack import Revoker
from enforcement.firewall import Firewall, FirewallConfig, FirewallError
from enforcement.flows import FlowTable
from enforcement.model import ClusterSnapshot
from enforcement.queue import (
    Publication,
    QueueWorker,
    RemoteWorker,
    TablesHolder,
    Tracer,
    WorkerSettings,
)
from enforcement.tables import AllowTables

log = logging.getLogger(__name__)


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
    local_pods: int = 0
    isolated_addresses: int = 0
    policies: int = 0
    last_sync_seconds: float = 0.0
    compile_seconds: float = 0.0
    syncs: int = 0
    revoked: int = 0
    """Accepted connections cut because a change denied them (fast path)."""
    pod_cidrs: list[str] = field(default_factory=list)
    """This node's pod ranges the new-pod guard covers (``--pod-cidr`` or the Node's); empty:
    the guard is off."""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "generation": self.generation,
            "source_version": self.source_version,
            "pods": self.pods,
            "local_pods": self.local_pods,
            "isolated_addresses": self.isolated_addresses,
            "policies": self.policies,
            "last_sync_seconds": self.last_sync_seconds,
            "compile_seconds": self.compile_seconds,
            "syncs": self.syncs,
            "revoked": self.revoked,
            "pod_cidrs": self.pod_cidrs,
            "errors": self.errors,
            "pid": os.getpid(),
        }


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        source: Source,
        *,
        firewall: Firewall | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.firewall = firewall or Firewall(config.firewall)
        self.conntrack = Revoker()
        self.tracer = tracer
        self.status = AgentStatus()
        self._dirty = threading.Event()
        self.state = ClusterState(on_change=self._dirty.set)
        self.tables = TablesHolder(compile_tables(ClusterSnapshot(), config.node_name, 0))
        self.workers: list[QueueWorker | RemoteWorker] = []
        """One per queue: a thread with one queue, processes with ``--queue-workers`` > 1."""
        self.ready = threading.Event()
        """Set once enforcement is active (for readiness probes)."""
        self.heartbeat = time.monotonic()
        """When the sync loop last turned (for liveness probes)."""

    def run(self, stop: threading.Event) -> None:
        """Enforce until ``stop`` is set. Raises only for set-up failures (no rules, no queue)."""
        threads = [
            threading.Thread(
                target=self.source.run, args=(self.state, stop), name="source", daemon=True
            )
        ]
        threads[0].start()
        log.info("waiting for the first full list of namespaces, pods and policies")
        while not self.state.ready:
            self.heartbeat = time.monotonic()
            if stop.wait(0.02):
                return
        try:
            self._start_enforcing(stop, threads)
            self._sync_loop(stop)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
            for worker in self.workers:
                if isinstance(worker, RemoteWorker):
                    worker.stop()
            if self.config.removes_rules_on_exit:
                log.info("removing the agent's rules (clean exit)")
                self.firewall.remove()
            else:
                log.info("leaving the queue rules in place: fail-closed until the agent returns")
            self.ready.clear()
            self.status.ready = False
            self._write_status()

    def _start_enforcing(self, stop: threading.Event, threads: list[threading.Thread]) -> None:
        view = self.state.view()
        tables = self._compile(view)
        self.tables.current = tables
        self.firewall.install()
        if self.config.firewall.queue_count > 1:
            self._start_worker_processes(Publication(view.snapshot, tables.generation))
        else:
            self._start_worker_thread(stop, threads)
        for worker in self.workers:
            if not worker.bound.wait(30):
                raise RuntimeError(f"could not bind NFQUEUE {worker.queue_num}")
        self._publish(view, tables)
        self.ready.set()
        log.info("enforcing on node %s", self.config.node_name)

    def _start_worker_thread(self, stop: threading.Event, threads: list[threading.Thread]) -> None:
        config = self.config.firewall
        worker = QueueWorker(
            config.queue_num,
            self.tables,
            FlowTable(max_flows=self.config.max_flows),
            fail_open=config.fail_open,
            fast_path=config.mode == "fast",
            max_len=self.config.queue_max_len,
            tracer=self.tracer,
        )
        thread = threading.Thread(
            target=worker.serve, args=(stop,), name=f"queue-{worker.queue_num}", daemon=True
        )
        thread.start()
        threads.append(thread)
        self.workers.append(worker)

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
            )
            self.workers.append(RemoteWorker(settings, first))

    def _sync_loop(self, stop: threading.Event) -> None:
        applied = self.state.revision
        next_check = time.monotonic() + self.config.jump_check_interval
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if self.heartbeat >= next_check:
                next_check = self.heartbeat + self.config.jump_check_interval
                for where in self.firewall.ensure_first():
                    log.warning("another rule had been put above the agent's jump in %s", where)
            if not self._dirty.wait(0.5):
                continue
            # Let a burst of changes land before compiling it once.
            time.sleep(self.config.settle)
            self._dirty.clear()
            view = self.state.view()
            if view.revision == applied:
                continue
            tables = self._compile(view)
            self.tables.current = tables
            for worker in self.workers:
                if isinstance(worker, RemoteWorker):
                    worker.publish(Publication(view.snapshot, tables.generation))
            self._publish(view, tables)
            applied = view.revision

    def _compile(self, view: StateView) -> AllowTables:
        started = time.perf_counter()
        generation = self.tables.current.generation + 1
        tables = compile_tables(view.snapshot, self.config.node_name, generation)
        self.status.compile_seconds = time.perf_counter() - started
        return tables

    def _publish(self, view: StateView, tables: AllowTables) -> None:
        started = time.perf_counter()
        for worker in self.workers:
            if isinstance(worker, RemoteWorker) and not worker.wait_generation(
                tables.generation, timeout=30
            ):
                log.error("queue worker %d did not take generation %d", worker.queue_num,
                          tables.generation)  # fmt: skip
        isolated = tables.isolated_local_addresses()
        self.firewall.sync(isolated, self._known(view, tables))
        ranges_problem = None if view.pod_ranges is None else self._guard(view.pod_ranges)
        status = self.status
        if self.config.firewall.mode == "fast":
            # Tables first, then the cut: a connection deleted here is re-decided by new tables.
            # Judged by the real endpoints; only connections of addresses the change touched.
            revocation = self.conntrack.revoke_denied(
                tables, view.snapshot, self.firewall.config.pod_cidrs
            )
            if revocation.cut:
                log.info("cut %d established connections the change denies", revocation.cut)
            status.revoked += revocation.cut
        status.ready = True
        status.generation = tables.generation
        status.source_version = view.source_version
        status.pods = len(view.snapshot.pods)
        status.local_pods = len(tables.local_addresses())
        status.isolated_addresses = len(isolated)
        status.policies = len(view.snapshot.policies)
        status.last_sync_seconds = time.perf_counter() - started
        status.syncs += 1
        status.errors = [error.message for error in self.state.errors()]
        for message in status.errors:
            log.warning("%s", message)
        status.pod_cidrs = list(self.firewall.config.pod_cidrs)
        if ranges_problem is not None:  # already logged where it was found
            status.errors.append(ranges_problem)
        self._write_status()
        log.info(
            "in force: generation %d, source version %s, %d isolated addresses",
            tables.generation,
            view.source_version,
            len(isolated),
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
                log.info("new-pod guard on the pod ranges: %s", ", ".join(ranges.cidrs) or "none")
        except (FirewallError, ValueError) as error:
            log.error("could not set the pod ranges %s: %s", ", ".join(ranges.cidrs), error)
            return f"could not set the pod ranges {', '.join(ranges.cidrs)}: {error}"
        return ranges.problem

    def _write_status(self) -> None:
        path = self.config.status_file
        if path is None:
            return
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.status.as_dict()))
        os.replace(temporary, path)


def run_until_signalled(agent: Agent, install_handlers: Callable[[threading.Event], None]) -> None:
    """Run ``agent`` until a handler installed by ``install_handlers`` sets the stop event."""
    stop = threading.Event()
    install_handlers(stop)
    agent.run(stop)
