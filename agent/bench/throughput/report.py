"""The throughput benchmark's results (pure): runs, medians, ratios, targets, table and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agent.bench.output import columns
from agent.bench.stats import Percentiles, median
from agent.bench.targets import Target, at_least, at_most, render_targets
from agent.bench.throughput.config import (
    BASELINE,
    DECISION_P99_LIMIT,
    FIGURE_BY_KEY,
    FIGURES,
    LOAD_FIGURES,
    MODE_TITLES,
    MODES,
    Mode,
    Settings,
)


@dataclass(slots=True)
class ModeRun:
    """One configuration's loads in one round."""

    round: int
    mode: Mode
    figures: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    """What else the tools said: retransmits, wrk errors, packets sent, agent counters."""


@dataclass(slots=True)
class Report:
    settings: Settings
    machine: dict[str, Any]
    started: str
    """Local time the run started, ISO 8601."""
    duration_s: float = 0.0
    runs: list[ModeRun] = field(default_factory=list)
    replay: dict[str, Percentiles] = field(default_factory=dict)
    """Decision times of the replay: ``first`` (connection-opening packets) and
    ``established`` (packets of a tracked connection), in seconds."""

    def medians(self) -> dict[Mode, dict[str, float]]:
        """Median of every figure per configuration, over the rounds that produced it."""
        result: dict[Mode, dict[str, float]] = {}
        for mode in MODES:
            values: dict[str, list[float]] = {}
            for run in self.runs:
                if run.mode == mode:
                    for key, value in run.figures.items():
                        values.setdefault(key, []).append(value)
            result[mode] = {key: median(v) for key, v in values.items()}
        return result

    def ratios(self) -> dict[Mode, dict[str, float]]:
        """Each configuration's median load figures divided by the baseline's."""
        medians = self.medians()
        baseline = medians.get(BASELINE, {})
        result: dict[Mode, dict[str, float]] = {}
        for mode in MODES:
            result[mode] = {
                key: value / baseline[key]
                for key, value in medians.get(mode, {}).items()
                if key in LOAD_FIGURES and baseline.get(key)
            }
        return result

    def targets(self) -> list[Target]:
        """The throughput targets of the issue, as far as this run measures them."""
        medians, ratios = self.medians(), self.ratios()
        fast, per_packet = ratios.get("fast", {}), ratios.get("per-packet", {})
        fast_conns = medians.get("fast", {}).get("tcp_connections_per_s")
        kernel_conns = medians.get("kernel", {}).get("tcp_connections_per_s")
        conns = fast_conns / kernel_conns if fast_conns and kernel_conns else None
        uncached_conns = medians.get("fast-no-cache", {}).get("tcp_connections_per_s")
        cache_gain = fast_conns / uncached_conns if fast_conns and uncached_conns else None
        logged_conns = medians.get("fast-flow-log", {}).get("tcp_connections_per_s")
        logging_cost = logged_conns / fast_conns if logged_conns and fast_conns else None
        worker = medians.get("per-packet", {}).get("worker_pps")
        per_cpu = medians.get("per-packet", {}).get("worker_pps_per_cpu")
        p99 = max((p.p99 for p in self.replay.values()), default=None)
        return [
            at_least(
                "TCP bulk 1 stream, fast / none",
                "≥ 0.95",
                fast.get("tcp_1_stream_bps"),
                0.95,
                "ratio",
            ),
            at_least(
                "TCP bulk 4 streams, fast / none",
                "≥ 0.95",
                fast.get("tcp_4_streams_bps"),
                0.95,
                "ratio",
            ),
            at_least("new TCP connections/s, fast / kernel", "≥ 1.0", conns, 1.0, "ratio"),
            at_least(
                "new TCP connections/s, fast / fast without verdict cache",
                "≥ 1.0",
                cache_gain,
                1.0,
                "ratio",
            ),
            at_least(
                "new TCP connections/s, fast with flow log / without",
                "≥ 0.95",
                logging_cost,
                0.95,
                "ratio",
            ),
            at_least(
                "packets/s through one per-packet worker",
                "≥ 100k",
                worker,
                100e3,
                "k",
                f"{per_cpu / 1e3:.0f}k per CPU-second of the agent" if per_cpu else "",
            ),
            at_least(
                "TCP bulk 1 stream, per-packet / none",
                "≥ 0.3",
                per_packet.get("tcp_1_stream_bps"),
                0.3,
                "ratio",
            ),
            at_least(
                "TCP bulk 4 streams, per-packet / none",
                "≥ 0.3",
                per_packet.get("tcp_4_streams_bps"),
                0.3,
                "ratio",
            ),
            at_most(
                "decision time p99 (replay)",
                f"≤ {DECISION_P99_LIMIT * 1e6:.0f} µs",
                p99,
                DECISION_P99_LIMIT,
                "µs",
                "the agent exports only sum and count; p99 from the replay"
                if p99 is not None
                else "",
            ),
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "throughput",
            "started": self.started,
            "duration_s": round(self.duration_s, 1),
            "settings": asdict(self.settings),
            "machine": self.machine,
            "units": {figure.key: _si_unit(figure.key) for figure in FIGURES},
            "medians": self.medians(),
            "ratios_to_baseline": self.ratios(),
            "decision_replay_s": {kind: asdict(p) for kind, p in self.replay.items()},
            "targets": [asdict(target) for target in self.targets()],
            "runs": [asdict(run) for run in self.runs],
        }


def _si_unit(key: str) -> str:
    if key.endswith("_per_cpu"):
        return "packets per CPU-second of the agent"
    if key.endswith("_bps"):
        return "bit/s"
    if key.endswith("_pps"):
        return "packets/s"
    if key.endswith("_per_s"):
        return "1/s"
    return "s"


def display(key: str, value: float) -> str:
    """A figure's value in its displayed unit, with its number of digits."""
    figure = FIGURE_BY_KEY[key]
    return f"{value / figure.scale:.{figure.digits}f}"


def summary(run: ModeRun) -> str:
    """One configuration's figures of one round, on one line (the progress output)."""
    return ", ".join(
        f"{FIGURE_BY_KEY[key].label} {display(key, value)} {FIGURE_BY_KEY[key].unit}"
        for key, value in run.figures.items()
    )


def render_table(report: Report) -> str:
    """The results as text: absolute medians, ratios to the baseline, the replay, the targets."""
    medians, ratios = report.medians(), report.ratios()
    rows = [["figure", *(MODE_TITLES[mode] for mode in MODES)]]
    for figure in FIGURES:
        row = [f"{figure.label} ({figure.unit})"]
        for mode in MODES:
            value = medians.get(mode, {}).get(figure.key)
            if value is None:
                row.append("-")
                continue
            cell = display(figure.key, value)
            ratio = ratios.get(mode, {}).get(figure.key)
            if ratio is not None and mode != BASELINE:
                cell += f" ({ratio:.2f}x)"
            row.append(cell)
        rows.append(row)
    lines = columns(rows)
    rounds = report.settings.rounds
    lines.append("")
    lines.append(
        f"medians of {rounds} interleaved round{'s' if rounds != 1 else ''}, "
        f"{report.settings.seconds} s per load; (N.NNx) = ratio to {MODE_TITLES[BASELINE]} "
        "in the same run"
    )
    if report.replay:
        parts = [
            f"{kind}: p50 {p.p50 * 1e6:.1f} µs, p99 {p.p99 * 1e6:.1f} µs, "
            f"mean {p.mean * 1e6:.1f} µs"
            for kind, p in report.replay.items()
        ]
        lines.append("decision replay (parse + decide, per packet): " + "; ".join(parts))
    lines.append("")
    lines += render_targets(report.targets())
    return "\n".join(lines)
