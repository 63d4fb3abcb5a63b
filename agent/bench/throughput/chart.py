"""The throughput benchmark's chart: one panel per load figure, one of decision times."""

from __future__ import annotations

from pathlib import Path

from agent.bench.charts import panels
from agent.bench.throughput.config import (
    AGENT_MODES,
    BASELINE,
    DECISION_P99_LIMIT,
    FIGURE_BY_KEY,
    LOAD_FIGURES,
    MODE_TITLES,
    MODES,
    Mode,
)
from agent.bench.throughput.report import Report

COLOURS: dict[Mode, str] = {
    "none": "#7f7f7f",
    "kernel": "#1f77b4",
    "fast": "#2ca02c",
    "fast-no-cache": "#bcbd22",
    "fast-flow-log": "#98df8a",
    "per-packet": "#d62728",
}


def write_chart(report: Report, path: Path) -> None:
    """A PNG: one panel per load figure (bars per configuration, ratio on top), one for the
    agent's decision times."""
    medians, ratios = report.medians(), report.ratios()
    title = (
        f"netpol-agent bench (throughput), {report.started}, {report.machine.get('cpus')} CPUs, "
        f"kernel {report.machine.get('kernel')}: medians of {report.settings.rounds} round(s)"
    )
    with panels(path, title, 5, (21, 4.6), (1, 1, 1, 1, 1.4)) as axes:
        for axis, key in zip(axes[:4], LOAD_FIGURES, strict=True):
            spec = FIGURE_BY_KEY[key]
            modes = [mode for mode in MODES if key in medians.get(mode, {})]
            bars = axis.bar(
                [MODE_TITLES[m].replace(" ", "\n", 1) for m in modes],
                [medians[mode][key] / spec.scale for mode in modes],
                color=[COLOURS[m] for m in modes],
            )
            for bar, mode in zip(bars, modes, strict=True):
                ratio = ratios.get(mode, {}).get(key)
                text = "baseline" if mode == BASELINE else f"{ratio:.2f}x" if ratio else ""
                axis.annotate(
                    text,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=9,
                )
            axis.set_title(f"{spec.label}\n({spec.unit})", fontsize=10)
            axis.tick_params(axis="x", labelsize=8)
            axis.margins(y=0.15)
        axis = axes[4]
        labels: list[str] = []
        values: list[float] = []
        for mode in AGENT_MODES:
            mean = medians.get(mode, {}).get("decision_mean_s")
            if mean is not None:
                labels.append(f"agent\n{mode}\nmean")
                values.append(mean * 1e6)
        for kind, times in report.replay.items():
            labels += [f"replay\n{kind}\np50", f"replay\n{kind}\np99"]
            values += [times.p50 * 1e6, times.p99 * 1e6]
        limit = DECISION_P99_LIMIT * 1e6
        axis.bar(labels, values, color="#9467bd")
        axis.axhline(limit, color="black", linestyle="--", linewidth=1)
        axis.annotate(f"p99 target {limit:.0f} µs", (0, limit), va="bottom", fontsize=8)
        axis.set_title("decision time per packet\n(µs)", fontsize=10)
        axis.tick_params(axis="x", labelsize=7)
