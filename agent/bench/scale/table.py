"""The scale benchmark's printed report: the tables, the targets, the progress lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.bench.machine import MiB
from agent.bench.output import columns
from agent.bench.scale.changes import CHANGE_TITLES, CHANGES
from agent.bench.scale.results import ScaleReport
from agent.bench.scale.sizes import Size, short
from agent.bench.targets import in_unit, render_targets


def seconds(value: float | None) -> str:
    """Seconds as s or ms, ``-`` when not measured."""
    return "-" if value is None else in_unit(value, "s")


def micro(value: float | None) -> str:
    """Seconds as a number of µs."""
    return "-" if value is None else f"{value * 1e6:.2f}"


def mib(value: int | None) -> str:
    """Bytes as a number of MiB."""
    return "-" if value is None else f"{value / MiB:.0f}"


def render_table(report: ScaleReport) -> str:
    """Two tables (cost per size; decision time per policy count) and the targets."""
    rows: list[list[str]] = [
        [
            "size",
            "identities",
            "full compile",
            "peak RSS MiB (net)",
            *(CHANGE_TITLES[kind] for kind in CHANGES),
        ]
    ]
    for result in report.results:
        compile_text = seconds(result.compile_s)
        if result.compile_s is None and result.compile_timeout_s is not None:
            compile_text = f"> {seconds(result.compile_timeout_s)} (timeout)"
        if result.error and result.compile_s is None:
            compile_text += " (failed)"
        memory = f"{mib(result.peak_rss_bytes)} ({mib(result.net_peak_rss_bytes)})"
        rows.append(
            [
                result.size.label,
                "-" if result.identities is None else str(result.identities),
                compile_text,
                memory,
                *(seconds(result.change_in_force(kind)) for kind in CHANGES),
            ]
        )
    lines = columns(rows)
    lines.append(
        "change columns: one change in force = new snapshot + full compile (median of the "
        "measurements)"
    )
    decision_rows: list[list[str]] = [
        ["pods", "policies", "p50 µs", "p99 µs", "mean µs", "p50 vs 10 policies"]
    ]
    for result in report.results:
        low = result.decisions.get(10)
        for count, figures in sorted(result.decisions.items()):
            ratio = "-"
            if low is not None:
                ratio = f"{float(figures['p50_s']) / float(low['p50_s']):.2f}x"
            decision_rows.append(
                [
                    short(result.size.pods),
                    short(count),
                    micro(float(figures["p50_s"])),
                    micro(float(figures["p99_s"])),
                    micro(float(figures["mean_s"])),
                    ratio,
                ]
            )
    if len(decision_rows) > 1:
        lines.append("")
        lines += columns(decision_rows)
        flows = next(r.decisions[c]["flows"] for r in report.results for c in r.decisions)
        lines.append(
            f"decision time: AllowTables.evaluate over the same {flows} flows per row (per size), "
            "each with an isolated node-1 pod at one end"
        )
    errors = [f"{r.size.label}: {r.error}" for r in report.results if r.error]
    if errors:
        lines.append("")
        lines += [f"error: {text}" for text in errors]
    lines.append("")
    lines += render_targets(report.targets())
    return "\n".join(lines)


def describe(size: Size, record: Mapping[str, Any]) -> str:
    """One progress line for a record of the worker."""
    phase = record.get("phase")
    if phase == "cluster":
        return f"  {size.label}: generated in {record['generate_s']:.1f} s"
    if phase == "compile":
        return (
            f"  {size.label}: full compile {seconds(record['compile_s'])}, "
            f"{record['identities']} identities, {record['tables']} tables"
        )
    if phase == "compile_timeout":
        return f"  {size.label}: full compile abandoned after {seconds(record['timeout_s'])}"
    if phase == "change":
        return (
            f"  {size.label}: {CHANGE_TITLES[record['change']]} in force in "
            f"{seconds(record['in_force_s'])}"
        )
    if phase == "decision":
        return (
            f"  {size.label}: {record['policies']} policies, decision p50 "
            f"{record['p50_s'] * 1e6:.2f} µs"
        )
    return f"  {size.label}: {phase}"
