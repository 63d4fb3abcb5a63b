"""The scale benchmark's chart: time, memory and decision time against the cluster's size."""

from __future__ import annotations

from pathlib import Path

from agent.bench.charts import panels
from agent.bench.machine import GiB, MiB
from agent.bench.scale.changes import CHANGE_TITLES, CHANGES
from agent.bench.scale.results import (
    CHANGE_LIMIT_S,
    COMPILE_LIMIT_S,
    MEMORY_LIMIT_BYTES,
    ScaleReport,
)
from agent.bench.scale.sizes import short


def write_chart(report: ScaleReport, path: Path) -> None:
    """Three panels: full compile and one change in force against pods, peak memory against
    pods, decision time against policies (one line per pod count). A compile abandoned at the
    timeout is drawn at the timeout, marked with a triangle."""
    title = (
        f"netpol-agent bench scale, {report.started}, {report.machine.get('cpus')} CPUs, "
        f"Python {report.machine.get('python')}"
    )
    with panels(path, title, 3, (16, 4.8)) as (left, middle, right):
        done = [r for r in report.results if r.compile_s is not None]
        abandoned = [r for r in report.results if r.compile_timeout_s is not None]
        if done:
            left.plot(
                [r.size.pods for r in done], [r.compile_s for r in done], "o-", label="full compile"
            )
        if abandoned:
            left.plot(
                [r.size.pods for r in abandoned],
                [r.compile_timeout_s for r in abandoned],
                "^",
                color="red",
                label="full compile abandoned (timeout)",
            )
        for kind in CHANGES:
            points = [(r.size.pods, r.change_in_force(kind)) for r in report.results]
            shown = [(x, y) for x, y in points if y is not None]
            if shown:
                xs, ys = zip(*shown, strict=True)
                left.plot(xs, ys, "s--", label=f"in force: {CHANGE_TITLES[kind]}")
        compile_label = f"compile target {COMPILE_LIMIT_S:g} s"
        change_label = f"change target {CHANGE_LIMIT_S * 1e3:g} ms"
        left.axhline(
            COMPILE_LIMIT_S, color="black", linestyle=":", linewidth=1, label=compile_label
        )
        left.axhline(CHANGE_LIMIT_S, color="grey", linestyle=":", linewidth=1, label=change_label)
        left.set(xscale="log", yscale="log", xlabel="pods", ylabel="seconds", title="time")
        left.legend(fontsize=8)

        measured = [r for r in report.results if r.peak_rss_bytes is not None]
        if measured:
            pods = [r.size.pods for r in measured]
            middle.plot(
                pods, [(r.peak_rss_bytes or 0) / MiB for r in measured], "o-", label="peak RSS"
            )
            middle.plot(
                pods,
                [(r.net_peak_rss_bytes or 0) / MiB for r in measured],
                "o--",
                label="peak RSS minus baseline",
            )
            middle.set_xscale("log")
        memory_label = f"target {MEMORY_LIMIT_BYTES / GiB:g} GiB"
        middle.axhline(
            MEMORY_LIMIT_BYTES / MiB, color="black", linestyle=":", linewidth=1, label=memory_label
        )
        middle.set(xlabel="pods", ylabel="MiB", title="memory (full compile)")
        middle.legend(fontsize=8)

        for result in report.results:
            counts = sorted(result.decisions)
            if not counts:
                continue
            label = short(result.size.pods)
            p50 = [float(result.decisions[c]["p50_s"]) * 1e6 for c in counts]
            p99 = [float(result.decisions[c]["p99_s"]) * 1e6 for c in counts]
            (line,) = right.plot(counts, p50, "o-", label=f"{label} pods, p50")
            right.plot(counts, p99, "x:", color=line.get_color(), label=f"{label} pods, p99")
            right.set_xscale("log")
        right.set(xlabel="policies", ylabel="µs per decision", title="decision time (same flows)")
        right.set_ylim(bottom=0)
        if right.lines:
            right.legend(fontsize=8)
