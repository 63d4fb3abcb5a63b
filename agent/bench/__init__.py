"""``netpol-agent bench``: what enforcement costs, measured on this machine.

Only the argument parser and the dispatch live here, so that building the command line stays
cheap; the harnesses (``agent.bench.throughput``) are imported when a benchmark runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUTPUT = Path("bench-results")
"""Where results go unless ``--output`` says otherwise (relative to the working directory)."""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The throughput benchmark's options (``netpol-agent bench [OPTIONS]``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one round of one-second loads (under a minute) instead of three rounds of "
        "three-second loads (under five minutes)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"directory for the JSON results and the PNG chart (default {DEFAULT_OUTPUT}/)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="rounds of the four configurations, interleaved (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--seconds",
        type=int,
        metavar="S",
        help="duration of each load (default 3; 1 with --quick)",
    )


def add_bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bench`` on the ``netpol-agent`` command's subparsers."""
    bench = commands.add_parser(
        "bench",
        help="measure what enforcement costs: no enforcement, kernel iptables rules, the "
        "agent's fast path and its per-packet mode, side by side",
        description="Build a lab of its own and measure, interleaved in one run, (a) no "
        "enforcement, (b) the same policy as plain iptables rules (the kernel peer), (c) the "
        "agent's fast path and (d) its per-packet mode: TCP bulk throughput (1 and 4 streams, "
        "iperf3), small UDP packets/s (iperf3), new TCP connections/s (wrk against nginx) and "
        "the agent's decision time. Prints a table of ratios to the baseline and writes JSON "
        "and a PNG chart. Needs root, iperf3, wrk, nginx and matplotlib. Nothing outside the "
        "lab's own network namespaces is touched. 'bench scale' measures the compiler on "
        "synthetic clusters instead (no root).",
    )
    add_bench_arguments(bench)
    from agent.bench.scale import add_scale_arguments

    kinds = bench.add_subparsers(dest="bench_command", metavar="{scale}")
    scale = kinds.add_parser(
        "scale",
        help="what large clusters cost the compiler: full compile time and memory, one change "
        "in force, decision time against policies (synthetic clusters, no root; put its "
        "options after 'scale')",
    )
    add_scale_arguments(scale)


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark ``args`` describe; the exit status (0 done, 1 failed, 130 interrupted)."""
    if getattr(args, "bench_command", None) == "scale":
        from agent.bench.scale import run_scale

        return run_scale(args)
    from agent.bench.throughput import run_command

    return run_command(args)
