"""The scale benchmark's results (pure): per size, the report, and the issue's targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from agent.bench.machine import GiB
from agent.bench.scale.changes import CHANGE_TITLES, CHANGES
from agent.bench.scale.sizes import NODE, TARGET_SIZE, Size, short
from agent.bench.stats import median
from agent.bench.targets import Target, at_most, in_unit, with_note


@dataclass(slots=True)
class SizeResult:
    """Everything measured for one size (None: not measured, see ``error``)."""

    size: Size
    nodes: int = 0
    local_pods: int | None = None
    identities: int | None = None
    tables: int | None = None
    generate_s: float | None = None
    baseline_rss_bytes: int | None = None
    """RSS of the fresh worker before the snapshot was built (interpreter, imports)."""
    baseline_peak_rss_bytes: int | None = None
    """Peak RSS of the fresh worker at that point (imports may have peaked above it)."""
    snapshot_rss_bytes: int | None = None
    """RSS once the snapshot was built (before compiling)."""
    compile_s: float | None = None
    compile_timeout_s: float | None = None
    """Set when the full compile was abandoned after this many seconds."""
    peak_rss_bytes: int | None = None
    """Peak RSS of the worker when the full compile is done (baseline included)."""
    rss_after_compile_bytes: int | None = None
    """RSS right after the full compile (snapshot and tables alive)."""
    peak_rss_change_bytes: int | None = None
    """Peak RSS after the change measurements (old and new tables alive together)."""
    changes: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Change kind -> one {snapshot_s, compile_s, in_force_s} per measurement."""
    decisions: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Policy count -> {p50_s, p99_s, mean_s, flows, rounds, verdicts}."""
    worker_s: float | None = None
    error: str | None = None

    @property
    def net_peak_rss_bytes(self) -> int | None:
        if self.peak_rss_bytes is None or self.baseline_rss_bytes is None:
            return None
        return self.peak_rss_bytes - self.baseline_rss_bytes

    def change_in_force(self, kind: str) -> float | None:
        """Median in-force time of ``kind`` over its measurements."""
        values = [m["in_force_s"] for m in self.changes.get(kind, [])]
        return median(values) if values else None

    def absorb(self, record: Mapping[str, Any]) -> None:
        """Take one JSON line of the worker."""
        phase = record.get("phase")
        if phase == "cluster":
            self.nodes = int(record["nodes"])
            self.local_pods = int(record["local_pods"])
            self.generate_s = float(record["generate_s"])
            self.baseline_rss_bytes = int(record["baseline_rss_bytes"])
            self.baseline_peak_rss_bytes = int(record["baseline_peak_rss_bytes"])
            snapshot_rss = record.get("snapshot_rss_bytes")
            self.snapshot_rss_bytes = None if snapshot_rss is None else int(snapshot_rss)
        elif phase == "compile":
            self.compile_s = float(record["compile_s"])
            self.peak_rss_bytes = int(record["peak_rss_bytes"])
            after = record.get("rss_after_bytes")
            self.rss_after_compile_bytes = None if after is None else int(after)
            self.identities = int(record["identities"])
            self.tables = int(record["tables"])
        elif phase == "compile_timeout":
            self.compile_timeout_s = float(record["timeout_s"])
            self.peak_rss_bytes = int(record["peak_rss_bytes"])
        elif phase == "change":
            self.changes.setdefault(str(record["change"]), []).append(
                {k: float(record[k]) for k in ("snapshot_s", "compile_s", "in_force_s")}
            )
        elif phase == "memory":
            self.peak_rss_change_bytes = int(record["peak_rss_bytes"])
        elif phase == "decision":
            self.decisions[int(record["policies"])] = {
                k: record[k] for k in ("p50_s", "p99_s", "mean_s", "flows", "rounds", "verdicts")
            }

    def to_json(self) -> dict[str, Any]:
        return {
            "pods": self.size.pods,
            "policies": self.size.policies,
            "namespaces": self.size.namespaces,
            "nodes": self.nodes,
            "local_pods": self.local_pods,
            "identities": self.identities,
            "tables": self.tables,
            "generate_s": self.generate_s,
            "compile_s": self.compile_s,
            "compile_timeout_s": self.compile_timeout_s,
            "baseline_rss_bytes": self.baseline_rss_bytes,
            "baseline_peak_rss_bytes": self.baseline_peak_rss_bytes,
            "snapshot_rss_bytes": self.snapshot_rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "net_peak_rss_bytes": self.net_peak_rss_bytes,
            "rss_after_compile_bytes": self.rss_after_compile_bytes,
            "peak_rss_change_bytes": self.peak_rss_change_bytes,
            "changes": {
                kind: {"in_force_s": self.change_in_force(kind), "measurements": values}
                for kind, values in self.changes.items()
            },
            "decisions": {str(count): values for count, values in self.decisions.items()},
            "worker_s": self.worker_s,
            "error": self.error,
        }


COMPILE_LIMIT_S: Final = 10.0
"""Seconds: the target for a full compile at :data:`TARGET_SIZE`."""
MEMORY_LIMIT_BYTES: Final = GiB
"""The target for the peak memory of that compile."""
CHANGE_LIMIT_S: Final = 0.05
"""Seconds: the target for one change in force at that size."""
DECISION_RATIO_LIMIT: Final = 1.2
"""The target for decision time at 10,000 policies over that at 10 (p50)."""


def evaluate_targets(results: Sequence[SizeResult]) -> list[Target]:
    """The issue's scale targets, from the figures of ``results``.

    Compile, memory and change targets are read at the 100k pods / 10k policies size (not
    measured when it was not run, e.g. ``--quick``); the decision ratio at the largest size whose
    sweep has 10 and 10,000 (or more) policies.
    """
    target = next((r for r in results if r.size == TARGET_SIZE), None)
    missing = f"needs the {TARGET_SIZE.label} size"
    compile_name = "full compile, 100k pods/10k pol"
    compile_condition = f"≤ {COMPILE_LIMIT_S:.0f} s"
    memory_name, memory_condition = "peak memory, 100k pods/10k pol", "≤ 1 GiB"
    checks: list[Target] = []
    if target is None:
        checks.append(at_most(compile_name, compile_condition, None, COMPILE_LIMIT_S, "s"))
        checks.append(at_most(memory_name, memory_condition, None, MEMORY_LIMIT_BYTES, "bytes"))
        checks = [with_note(c, missing) for c in checks]
    else:
        if target.compile_s is None and target.compile_timeout_s is not None:
            timeout = target.compile_timeout_s
            how = f"at least {timeout / COMPILE_LIMIT_S:.0f}x the limit"
            checks.append(
                Target(
                    compile_name,
                    compile_condition,
                    timeout,
                    COMPILE_LIMIT_S,
                    "s",
                    False,
                    f"abandoned after {timeout:.0f} s: {how}",
                )
            )
        else:
            checks.append(
                at_most(compile_name, compile_condition, target.compile_s, COMPILE_LIMIT_S, "s")
            )
        net = target.net_peak_rss_bytes
        memory_note = "" if net is None else f"net of the baseline {in_unit(net, 'bytes')}"
        checks.append(
            at_most(
                memory_name,
                memory_condition,
                target.peak_rss_bytes,
                MEMORY_LIMIT_BYTES,
                "bytes",
                memory_note,
            )
        )
    for kind in CHANGES:
        name = f"one change in force ({CHANGE_TITLES[kind]}), 100k pods"
        value = target.change_in_force(kind) if target is not None else None
        check = at_most(name, f"≤ {CHANGE_LIMIT_S * 1e3:.0f} ms", value, CHANGE_LIMIT_S, "s")
        checks.append(check if target is not None else with_note(check, missing))
    ratio, where = decision_ratio(results)
    checks.append(
        at_most(
            "decision time, 10k pol / 10 pol (p50)",
            f"≤ {DECISION_RATIO_LIMIT}",
            ratio,
            DECISION_RATIO_LIMIT,
            "ratio",
            where,
        )
    )
    return checks


def decision_ratio(results: Sequence[SizeResult]) -> tuple[float | None, str]:
    """Median decision time at the most policies (≥ 10,000) over that at 10, at the largest
    size that measured both; and a note saying where (and the p99 and mean ratios)."""
    for result in sorted(results, key=lambda r: r.size.pods, reverse=True):
        most = max(result.decisions, default=0)
        if most >= 10_000 and 10 in result.decisions:
            low, high = result.decisions[10], result.decisions[most]
            ratio = float(high["p50_s"]) / float(low["p50_s"])
            p99 = float(high["p99_s"]) / float(low["p99_s"])
            mean = float(high["mean_s"]) / float(low["mean_s"])
            note = f"at {short(result.size.pods)} pods; p99 ratio {p99:.2f}, mean ratio {mean:.2f}"
            return ratio, note
    return None, "needs a size with 10,000 policies"


@dataclass(slots=True)
class ScaleReport:
    started: str
    quick: bool
    seed: int
    machine: dict[str, Any]
    results: list[SizeResult] = field(default_factory=list)
    duration_s: float = 0.0

    def targets(self) -> list[Target]:
        return evaluate_targets(self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "scale",
            "started": self.started,
            "duration_s": self.duration_s,
            "quick": self.quick,
            "seed": self.seed,
            "node": NODE,
            "machine": self.machine,
            "sizes": [result.to_json() for result in self.results],
            "targets": [asdict(check) for check in self.targets()],
        }
