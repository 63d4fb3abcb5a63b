"""The throughput command (agent/bench/throughput/run.py): prerequisites, and, as root,
``netpol-agent bench --quick`` end to end."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bench.throughput.config import MODE_FIGURES, MODES, BenchError
from agent.bench.throughput.run import check_prerequisites

REPO = Path(__file__).resolve().parents[4]


def test_missing_tools_are_named_with_their_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda tool: None if tool in ("wrk", "nginx") else tool)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(BenchError) as error:
        check_prerequisites()
    message = str(error.value)
    assert "needs root" in message
    assert "missing programs: wrk, nginx" in message
    assert "apt-get install nginx-light wrk" in message


def _bench_command() -> list[str]:
    """``netpol-agent bench`` once agent/cli.py registers it, else the module's own entry."""
    from agent.cli import build_parser

    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    if "bench" in commands.choices:
        return [sys.executable, "-m", "agent.cli", "bench"]
    return [sys.executable, "-m", "agent.bench.throughput"]


@pytest.mark.root
def test_bench_quick_end_to_end(tmp_path: Path) -> None:
    """The command runs, removes its lab and writes JSON with every figure present and
    positive. No speed is asserted: that is what the benchmark itself reports."""
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    done = subprocess.run(
        [*_bench_command(), "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {name for name in after - before if name.startswith("npa-bench-")}
    assert "targets:" in done.stdout
    (result,) = tmp_path.glob("throughput-*.json")
    (chart,) = tmp_path.glob("throughput-*.png")
    assert chart.stat().st_size > 0
    data = json.loads(result.read_text())
    for mode, figures in MODE_FIGURES.items():
        for key in figures:
            assert data["medians"][mode][key] > 0, (mode, key)
    assert {run["mode"] for run in data["runs"]} == set(MODES)
    for kind in ("first", "established"):
        assert data["decision_replay_s"][kind]["p99"] > 0
