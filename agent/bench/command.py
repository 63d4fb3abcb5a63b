"""``netpol-agent bench [scale]``: the command line, and the dispatch to the harnesses.

The only bench module ``agent.cli`` imports: it builds the parser from the standard library
alone, so that ``netpol-agent run`` and every other command load no benchmark code. The
harnesses (``agent.bench.throughput``, ``agent.bench.scale``) are imported when ``bench`` runs,
and ``--sizes`` is parsed by the scale harness's own parser, imported only then.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # for the annotation only: the module is imported when --sizes is parsed
    from agent.bench.scale.sizes import Size

DEFAULT_OUTPUT: Final = Path("bench-results")
"""Where results go unless ``--output`` says otherwise (relative to the working directory)."""
SCALE_FLOWS: Final = 100_000
"""Flows in the scale benchmark's decision-time mix."""
SCALE_SEED: Final = 1
"""Seed of the scale benchmark's synthetic clusters."""
SCALE_COMPILE_TIMEOUT: Final = 300.0
"""Seconds after which the scale benchmark abandons a full compile."""


def _output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"directory for the JSON results and the PNG chart (default {DEFAULT_OUTPUT}/)",
    )


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The throughput benchmark's options (``netpol-agent bench [OPTIONS]``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one round of one-second loads (under a minute) instead of three rounds of "
        "three-second loads (under five minutes)",
    )
    _output_argument(parser)
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


def _size(text: str) -> Size:
    """A ``--sizes`` value, parsed by the scale harness (imported only when one is given)."""
    from agent.bench.scale.sizes import parse_size

    return parse_size(text)


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``netpol-agent bench scale``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="stop at 10k pods (about 15 s) instead of going on to 100k pods (about a minute); "
        "the targets, stated for 100k pods, are then not measured",
    )
    _output_argument(parser)
    parser.add_argument(
        "--sizes",
        type=_size,
        nargs="+",
        metavar="PODS:POLICIES:NAMESPACES",
        help="cluster sizes to measure, e.g. 1k:100:10 50k:5k:500 (default 1k:100:10 "
        "10k:1k:100 100k:10k:1000; --quick drops the last)",
    )
    parser.add_argument(
        "--flows",
        type=int,
        default=SCALE_FLOWS,
        metavar="N",
        help=f"flows in the decision-time mix (default {SCALE_FLOWS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=SCALE_SEED,
        help=f"seed of the synthetic clusters (default {SCALE_SEED})",
    )
    parser.add_argument(
        "--compile-timeout",
        type=float,
        default=SCALE_COMPILE_TIMEOUT,
        metavar="S",
        help="abandon a full compile after S seconds and report it as exceeded "
        f"(default {SCALE_COMPILE_TIMEOUT:.0f})",
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
        from agent.bench.scale.run import run_scale

        return run_scale(args)
    from agent.bench.throughput.run import run_command

    return run_command(args)
