"""``netpol-agent bench scale`` end to end (agent/bench/scale/run.py, worker.py, table.py,
chart.py): a tiny run, and a worker stopped at its timeout. No root, nothing timed against a
limit: speed is the benchmark's business."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from agent.bench.command import add_scale_arguments
from agent.bench.scale.results import ScaleReport
from agent.bench.scale.run import measure_size, run_scale
from agent.bench.scale.sizes import Size
from agent.bench.scale.table import render_table
from agent.bench.scale.worker import WorkerSpec


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def test_tiny_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_scale_arguments(parser)
    args = parser.parse_args(
        ["--sizes", "200:20:4", "--flows", "2000", "--output", str(tmp_path / "out")]
    )
    assert run_scale(args) == 0
    printed = capsys.readouterr().out
    assert "200 pods/20 pol/4 ns" in printed
    assert "targets:" in printed

    [json_path] = (tmp_path / "out").glob("scale-*.json")
    assert json_path.with_suffix(".png").stat().st_size > 0
    report = json.loads(json_path.read_text())
    assert report["benchmark"] == "scale"
    [size] = report["sizes"]
    assert (size["pods"], size["policies"], size["namespaces"]) == (200, 20, 4)
    assert size["error"] is None
    assert size["compile_timeout_s"] is None
    for key in (
        "nodes",
        "local_pods",
        "identities",
        "tables",
        "generate_s",
        "compile_s",
        "baseline_rss_bytes",
        "snapshot_rss_bytes",
        "peak_rss_bytes",
        "net_peak_rss_bytes",
        "rss_after_compile_bytes",
        "peak_rss_change_bytes",
        "worker_s",
    ):
        assert _positive(size[key]), key
    assert set(size["changes"]) == {"pod_relabel", "namespace_relabel", "policy_added"}
    for change in size["changes"].values():
        assert _positive(change["in_force_s"])
        for measurement in change["measurements"]:
            assert all(_positive(measurement[k]) for k in ("snapshot_s", "compile_s", "in_force_s"))
    assert set(size["decisions"]) == {"10", "20"}
    for decision in size["decisions"].values():
        assert decision["flows"] == 2000
        assert all(_positive(decision[k]) for k in ("p50_s", "p99_s", "mean_s"))
        assert sum(decision["verdicts"].values()) == 2000
    assert len(report["targets"]) == 6
    assert report["machine"]["cpus"]


def test_a_worker_past_its_timeout_is_stopped_and_reported() -> None:
    # The largest size the bench accepts: generating a million pods alone takes seconds on any
    # machine, so the worker is always still busy when the half-second timeout stops it.
    result = measure_size(WorkerSpec(Size(1_000_000, 100_000, 1_000)), timeout=0.5)
    assert result.error == "worker stopped after 500.0 ms"
    assert result.compile_s is None
    table = render_table(ScaleReport("now", False, 1, {"cpus": 2}, [result]))
    assert "(failed)" in table
    assert "error: 1000k pods/100k pol/1k ns: worker stopped after 500.0 ms" in table
