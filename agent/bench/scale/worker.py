"""The worker: one size measured in a fresh process, its figures as JSON lines."""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from agent.bench.command import SCALE_COMPILE_TIMEOUT, SCALE_FLOWS, SCALE_SEED
from agent.bench.machine import current_rss_bytes, peak_rss_bytes
from agent.bench.scale.changes import CHANGES, ClusterMaps, make_change
from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.flows import generate_flows
from agent.bench.scale.sizes import NODE, Size, parse_size, sweep_counts
from agent.bench.scale.timing import time_decisions, verdict_counts
from agent.bench.stats import percentile
from enforcement.compiler import compile_tables


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process measures."""

    size: Size
    seed: int = SCALE_SEED
    flows: int = SCALE_FLOWS
    rounds: int = 3
    """Interleaved rounds of the decision sweep."""
    change_repeats: int = 3
    """Measurements of each change kind (fewer when a compile is slow, see ``change_budget``)."""
    change_budget: float = 60.0
    """Seconds the change measurements may take in all; at least one of each kind runs."""
    compile_timeout: float = SCALE_COMPILE_TIMEOUT
    """The full compile is abandoned after this many seconds and reported as exceeded."""

    def to_json(self) -> str:
        data = asdict(self)
        data["size"] = str(self.size)
        return json.dumps(data)

    @staticmethod
    def from_json(text: str) -> WorkerSpec:
        data = json.loads(text)
        data["size"] = parse_size(data["size"])
        return WorkerSpec(**data)


class CompileTimeout(Exception):
    """The full compile did not finish within the worker's ``compile_timeout``."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise CompileTimeout

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_worker(spec: WorkerSpec, emit: Callable[[dict[str, Any]], None]) -> None:
    """Measure one size; ``emit`` each phase's figures as it completes.

    Phases: ``cluster`` (sizes, baseline and snapshot memory, generation time), ``compile``
    (full compile time, peak memory, table counts) or ``compile_timeout``, ``change`` (one per
    measurement), ``decision`` (the sweep).
    """
    gc.collect()
    baseline_peak = peak_rss_bytes()
    baseline_now = current_rss_bytes()
    started = time.perf_counter()
    cluster = generate_cluster(spec.size, spec.seed)
    snapshot = cluster.snapshot()
    generated = time.perf_counter() - started
    emit(
        {
            "phase": "cluster",
            "size": str(spec.size),
            "pods": len(snapshot.pods),
            "policies": len(snapshot.policies),
            "namespaces": len(snapshot.namespaces),
            "nodes": spec.size.nodes,
            "local_pods": sum(1 for p in snapshot.pods if p.node_name == NODE),
            "generate_s": generated,
            "baseline_peak_rss_bytes": baseline_peak,
            "baseline_rss_bytes": baseline_now if baseline_now is not None else baseline_peak,
            "snapshot_rss_bytes": current_rss_bytes(),
        }
    )

    try:
        with _deadline(spec.compile_timeout):
            started = time.perf_counter()
            tables = compile_tables(snapshot, NODE, 1)
            compiled = time.perf_counter() - started
    except CompileTimeout:
        emit(
            {
                "phase": "compile_timeout",
                "timeout_s": spec.compile_timeout,
                "peak_rss_bytes": peak_rss_bytes(),
            }
        )
        return
    emit(
        {
            "phase": "compile",
            "compile_s": compiled,
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_after_bytes": current_rss_bytes(),
            "identities": tables.identity_count,
            "tables": tables.table_count,
            "local_pods": tables.local_pod_count,
            "addresses": tables.address_count,
            "isolated_local_addresses": len(tables.isolated_local_addresses()),
        }
    )

    # One change in force, the way the runner does it: new snapshot from the maps, full compile.
    # The current tables stay alive meanwhile, as they do in the agent.
    maps = ClusterMaps(snapshot)
    budget_end = time.perf_counter() + spec.change_budget
    for repeat in range(spec.change_repeats):
        if repeat > 0 and time.perf_counter() > budget_end:
            break
        for kind in CHANGES:
            change = make_change(cluster, kind, repeat)
            original = maps.current(change)
            started = time.perf_counter()
            maps.apply(change)
            changed = maps.snapshot()
            built = time.perf_counter()
            new_tables = compile_tables(changed, NODE, 2 + repeat)
            done = time.perf_counter()
            emit(
                {
                    "phase": "change",
                    "change": kind,
                    "repeat": repeat,
                    "snapshot_s": built - started,
                    "compile_s": done - built,
                    "in_force_s": done - started,
                    "generation": new_tables.generation,
                }
            )
            del new_tables, changed
            maps.undo(change, original)
    emit({"phase": "memory", "peak_rss_bytes": peak_rss_bytes()})

    # Decision time against the number of policies, same pods, same flows.
    flows = generate_flows(cluster, spec.flows, spec.seed)
    counts = sweep_counts(len(cluster.policies))
    swept = {count: compile_tables(cluster.adopted(count), NODE, 1) for count in counts[:-1]}
    swept[counts[-1]] = tables
    del maps, snapshot
    timings = time_decisions(swept, flows, spec.rounds)
    for count in counts:
        timing = timings[count]
        emit(
            {
                "phase": "decision",
                "policies": count,
                "flows": len(flows),
                "rounds": spec.rounds,
                "p50_s": percentile(timing.samples, 0.5),
                "p99_s": percentile(timing.samples, 0.99),
                "mean_s": timing.mean_s,
                "verdicts": verdict_counts(swept[count], flows),
            }
        )


def worker_main(spec_text: str) -> int:
    """``python -m agent.bench.scale --worker SPEC``: JSON lines on standard output."""
    spec = WorkerSpec.from_json(spec_text)

    def emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    run_worker(spec, emit)
    return 0
