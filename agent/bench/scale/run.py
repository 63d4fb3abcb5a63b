"""``netpol-agent bench scale``: a fresh worker process per size, the report, the files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

from agent.bench.command import SCALE_COMPILE_TIMEOUT, SCALE_FLOWS, SCALE_SEED, add_scale_arguments
from agent.bench.machine import machine_info
from agent.bench.output import progress, write_results, wrote
from agent.bench.scale.chart import write_chart
from agent.bench.scale.results import ScaleReport, SizeResult
from agent.bench.scale.sizes import FULL_SIZES, QUICK_SIZES, Size
from agent.bench.scale.table import describe, render_table, seconds
from agent.bench.scale.worker import WorkerSpec, worker_main


def measure_size(
    spec: WorkerSpec, timeout: float, progress: Callable[[str], None] | None = None
) -> SizeResult:
    """Run one worker process for ``spec`` and gather its figures (bounded by ``timeout`` s).

    The worker's JSON lines are read as they come, so progress shows live and a worker stopped
    at the timeout still leaves the figures of the phases it finished.
    """
    result = SizeResult(spec.size, nodes=spec.size.nodes)
    command = [sys.executable, "-m", "agent.bench.scale", "--worker", spec.to_json()]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                if line.startswith("{"):
                    record = json.loads(line)
                    result.absorb(record)
                    if progress is not None:
                        progress(describe(spec.size, record))

        reader = threading.Thread(target=read, name="scale-worker-output", daemon=True)
        reader.start()
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        errors.seek(0)
        error_text = errors.read()
    result.worker_s = time.perf_counter() - started
    if code is None:
        result.error = f"worker stopped after {seconds(timeout)}"
    elif code != 0:
        tail = error_text.strip().splitlines()[-1:] or [f"exit status {code}"]
        result.error = f"worker failed: {tail[0]}"
    return result


def run(
    sizes: Sequence[Size],
    *,
    quick: bool = False,
    seed: int = SCALE_SEED,
    flows: int = SCALE_FLOWS,
    compile_timeout: float = SCALE_COMPILE_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> ScaleReport:
    """Measure every size in its own worker process, in order."""
    report = ScaleReport(
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        quick=quick,
        seed=seed,
        machine=machine_info(),
    )
    started = time.perf_counter()
    for size in sizes:
        if progress is not None:
            progress(f"{size.label} ({size.nodes} nodes): fresh worker")
        spec = WorkerSpec(size, seed=seed, flows=flows, compile_timeout=compile_timeout)
        # The compile may take its whole budget; changes and the sweep get as long again, twice.
        result = measure_size(spec, timeout=3 * compile_timeout + 120, progress=progress)
        report.results.append(result)
    report.duration_s = time.perf_counter() - started
    return report


def run_scale(args: argparse.Namespace) -> int:
    """``netpol-agent bench scale``: run, print the table, write the files; the exit status."""
    sizes: Sequence[Size] = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    progress(f"netpol-agent bench scale: {len(sizes)} size(s), each in a fresh process")
    try:
        report = run(
            sizes,
            quick=args.quick,
            seed=args.seed,
            flows=args.flows,
            compile_timeout=args.compile_timeout,
            progress=progress,
        )
        paths = write_results(
            report.to_json(), args.output, "scale", lambda path: write_chart(report, path)
        )
    except KeyboardInterrupt:
        print("netpol-agent bench scale: interrupted", file=sys.stderr)
        return 130
    print(render_table(report))
    print(wrote(*paths))
    return 1 if any(r.error for r in report.results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.bench.scale``: the same as ``netpol-agent bench scale``; with
    ``--worker SPEC`` the worker process of one size."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--worker"] and len(arguments) == 2:
        return worker_main(arguments[1])
    parser = argparse.ArgumentParser(prog="netpol-agent bench scale")
    add_scale_arguments(parser)
    return run_scale(parser.parse_args(arguments))
