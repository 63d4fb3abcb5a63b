"""``netpol-agent bench``: check what it needs, run, print the table, write the files."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agent.bench.charts import have_matplotlib
from agent.bench.command import add_bench_arguments
from agent.bench.output import progress, write_results, wrote
from agent.bench.throughput.bench import ThroughputBench
from agent.bench.throughput.chart import write_chart
from agent.bench.throughput.config import MODES, TOOLS, BenchError, Settings
from agent.bench.throughput.report import render_table
from agent.lab.lab import LabError


def check_prerequisites() -> None:
    """Raise BenchError naming everything missing: root, programs, matplotlib."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (it builds a lab of network namespaces)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(sorted({TOOLS[tool] for tool in missing}))
        problems.append(
            f"missing programs: {', '.join(missing)} (Debian/Ubuntu: apt-get install {packages};"
            " scripts/setup.sh installs them)"
        )
    if not have_matplotlib():
        problems.append(
            "missing the Python package matplotlib for the chart "
            "(.venv/bin/pip install 'matplotlib>=3.7,<4', or the project's 'bench' extra)"
        )
    if problems:
        raise BenchError("cannot run the benchmark: " + "; ".join(problems))


def run_command(args: argparse.Namespace) -> int:
    """``netpol-agent bench``: run, print the table, write the files; the exit status."""

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        settings = Settings.from_args(args.quick, args.rounds, args.seconds)
        check_prerequisites()
        with tempfile.TemporaryDirectory(prefix="netpol-bench-") as workdir:
            bench = ThroughputBench(settings, Path(workdir), progress)
            progress(
                f"netpol-agent bench: lab {bench.lab_name}, {settings.rounds} round(s) of "
                f"{len(MODES)} configurations, {settings.seconds} s per load"
            )
            report = bench.run()
        paths = write_results(
            report.to_json(), args.output, "throughput", lambda path: write_chart(report, path)
        )
    except (BenchError, LabError) as error:
        print(f"netpol-agent bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("netpol-agent bench: interrupted; the lab was removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render_table(report))
    print(wrote(*paths))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.bench.throughput``: the same as ``netpol-agent bench``."""
    parser = argparse.ArgumentParser(prog="netpol-agent bench")
    add_bench_arguments(parser)
    return run_command(parser.parse_args(argv))
