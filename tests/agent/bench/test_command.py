"""The ``bench`` command line (agent/bench/command.py), and that nothing but ``bench`` loads
benchmark code: ``netpol-agent run`` and every module of the daemon import only this parser
module of ``agent.bench`` (checked in a fresh interpreter's ``sys.modules``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bench.command import (
    DEFAULT_OUTPUT,
    SCALE_COMPILE_TIMEOUT,
    SCALE_FLOWS,
    SCALE_SEED,
    add_bench_arguments,
    add_bench_parser,
    run_bench,
)

REPO = Path(__file__).resolve().parents[3]
PARSER_MODULES = ["agent.bench", "agent.bench.command"]
"""The package (its ``__init__`` holds no code) and the parser module."""


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(prog="netpol-agent")
    add_bench_parser(commands.add_subparsers(dest="command"))
    return commands


def test_bench_options() -> None:
    args = parser().parse_args(["bench", "--quick", "--output", "out"])
    assert (args.command, args.quick, args.output, args.rounds, args.seconds) == (
        "bench",
        True,
        Path("out"),
        None,
        None,
    )
    assert args.bench_command is None
    standalone = argparse.ArgumentParser()
    add_bench_arguments(standalone)
    assert standalone.parse_args(["--rounds", "2"]).rounds == 2


def test_scale_options_and_their_defaults() -> None:
    args = parser().parse_args(["bench", "scale"])
    assert args.bench_command == "scale"
    assert (args.quick, args.output, args.sizes) == (False, DEFAULT_OUTPUT, None)
    assert (args.flows, args.seed, args.compile_timeout) == (
        SCALE_FLOWS,
        SCALE_SEED,
        SCALE_COMPILE_TIMEOUT,
    )


def test_scale_sizes_are_parsed_by_the_scale_harness() -> None:
    from agent.bench.scale.sizes import Size

    args = parser().parse_args(["bench", "scale", "--sizes", "1k:100:10", "200:20:4"])
    assert args.sizes == [Size(1_000, 100, 10), Size(200, 20, 4)]


def test_a_bad_size_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "scale", "--sizes", "10:1:2"])
    assert "need at least 100 pods" in capsys.readouterr().err


_IMPORTS = """
import importlib, json, sys
from pathlib import Path

from agent.cli import build_parser, main

loaded = {}
parser = build_parser()
parser.parse_args(["run", "--node-name", "node-1"])
parser.parse_args(["bench", "--quick"])
loaded["parser"] = sorted(m for m in sys.modules if m.startswith("agent.bench"))
try:
    main(["run"])  # no node name: the run path imports the daemon, then refuses (exit 2)
except SystemExit as exit:
    loaded["run_exit"] = exit.code
loaded["run"] = sorted(m for m in sys.modules if m.startswith("agent.bench"))
daemon = []
for package in ("agent", "enforcement"):
    for path in sorted(Path(package).rglob("*.py")):
        name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        if not name.startswith("agent.bench") and not name.endswith("__main__"):
            daemon.append(name)
            importlib.import_module(name)
loaded["daemon_modules"] = len(daemon)
loaded["all"] = sorted(m for m in sys.modules if m.startswith("agent.bench"))
print(json.dumps(loaded))
"""


def test_the_daemon_imports_no_benchmark_code() -> None:
    env = {key: value for key, value in os.environ.items() if key != "NODE_NAME"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        check=True,
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["parser"] == PARSER_MODULES
    assert loaded["run_exit"] == 2
    assert loaded["run"] == PARSER_MODULES
    assert loaded["daemon_modules"] > 30  # every module of agent/ and enforcement/ was imported
    assert loaded["all"] == PARSER_MODULES


def test_the_dispatch_runs_the_scale_harness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parser().parse_args(
        ["bench", "scale", "--sizes", "200:20:4", "--flows", "500", "--output", str(tmp_path)]
    )
    assert run_bench(args) == 0
    assert "200 pods/20 pol/4 ns" in capsys.readouterr().out
    [result] = tmp_path.glob("scale-*.json")
    assert json.loads(result.read_text())["benchmark"] == "scale"
