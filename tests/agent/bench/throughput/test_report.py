"""The throughput report (agent/bench/throughput/report.py, chart.py): medians, ratios to the
baseline, targets, the table, the JSON and the chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.bench.stats import Percentiles
from agent.bench.throughput.chart import write_chart
from agent.bench.throughput.config import LOAD_FIGURES, Settings
from agent.bench.throughput.report import ModeRun, Report, render_table

GBIT = 1e9


def run(round_number: int, mode: str, **figures: float) -> ModeRun:
    return ModeRun(round=round_number, mode=mode, figures=dict(figures))  # type: ignore[arg-type]


def loads(tcp1: float, tcp4: float, udp: float, conns: float) -> dict[str, float]:
    return {
        "tcp_1_stream_bps": tcp1 * GBIT,
        "tcp_4_streams_bps": tcp4 * GBIT,
        "udp_small_pps": udp,
        "tcp_connections_per_s": conns,
    }


def sample_report() -> Report:
    report = Report(settings=Settings(rounds=3), machine={"cpus": 2, "kernel": "6.1"}, started="t")
    for number, (none, kernel, fast, per_packet) in enumerate(
        [
            (20.0, 18.0, 19.6, 5.0),
            (22.0, 19.0, 21.0, 6.0),  # the medians: round 2 throughout
            (24.0, 20.0, 23.0, 7.0),
        ],
        1,
    ):
        report.runs += [
            run(number, "none", **loads(none, none, 100e3, 16e3)),
            run(number, "kernel", **loads(kernel, kernel, 100e3, 15e3)),
            run(number, "fast", **loads(fast, fast, 100e3, 10e3), decision_mean_s=20e-6),
            run(number, "fast-no-cache", **loads(fast, fast, 100e3, 8e3), decision_mean_s=20e-6),
            run(
                number,
                "fast-flow-log",
                **loads(fast, fast, 100e3, 9.6e3),
                decision_mean_s=21e-6,
            ),
            run(
                number,
                "per-packet",
                **loads(per_packet, per_packet, 25e3, 3e3),
                decision_mean_s=15e-6,
                worker_pps=30e3,
                worker_pps_per_cpu=55e3,
            ),
        ]
    report.replay = {
        "first": Percentiles(p50=11e-6, p99=40e-6, mean=13e-6, samples=100),
        "established": Percentiles(p50=9e-6, p99=20e-6, mean=9e-6, samples=100),
    }
    return report


def test_medians_and_ratios_to_the_baseline_of_the_same_run() -> None:
    report = sample_report()
    medians = report.medians()
    assert medians["none"]["tcp_1_stream_bps"] == 22.0 * GBIT
    assert medians["per-packet"]["worker_pps"] == 30e3
    ratios = report.ratios()
    assert ratios["none"]["tcp_1_stream_bps"] == 1.0
    assert ratios["fast"]["tcp_1_stream_bps"] == pytest.approx(21.0 / 22.0)
    assert ratios["kernel"]["tcp_connections_per_s"] == pytest.approx(15 / 16)
    # The agent's own figures have no baseline to compare with.
    assert "decision_mean_s" not in ratios["fast"]
    assert set(ratios["per-packet"]) == set(LOAD_FIGURES)


def test_ratios_without_a_baseline_figure_are_left_out() -> None:
    report = Report(settings=Settings(), machine={}, started="t")
    report.runs = [run(1, "fast", tcp_1_stream_bps=1.0), run(1, "none", udp_small_pps=5.0)]
    assert report.ratios()["fast"] == {}


def test_targets() -> None:
    targets = {target.name: target for target in sample_report().targets()}
    fast_bulk = targets["TCP bulk 1 stream, fast / none"]
    assert fast_bulk.value == pytest.approx(21 / 22) and fast_bulk.met is True
    conns = targets["new TCP connections/s, fast / kernel"]
    assert conns.value == pytest.approx(10 / 15) and conns.met is False
    cache = targets["new TCP connections/s, fast / fast without verdict cache"]
    assert cache.value == pytest.approx(10 / 8) and cache.met is True
    logging = targets["new TCP connections/s, fast with flow log / without"]
    assert logging.value == pytest.approx(0.96) and logging.met is True
    worker = targets["packets/s through one per-packet worker"]
    assert worker.value == 30e3 and worker.met is False
    assert worker.note == "55k per CPU-second of the agent"
    assert targets["TCP bulk 1 stream, per-packet / none"].met is False  # 6 / 22
    p99 = targets["decision time p99 (replay)"]
    assert p99.value == 40e-6 and p99.met is True


def test_targets_not_measured() -> None:
    targets = Report(settings=Settings(), machine={}, started="t").targets()
    assert all(target.met is None and target.value is None for target in targets)


def test_table() -> None:
    table = render_table(sample_report())
    lines = table.splitlines()
    assert lines[0].split("  ")[0] == "figure"
    assert "no enforcement" in lines[0] and "agent per-packet" in lines[0]
    bulk = next(line for line in lines if line.startswith("TCP bulk, 1 stream (Gbit/s)"))
    assert bulk.split() == [
        *["TCP", "bulk,", "1", "stream", "(Gbit/s)"],
        "22.00",
        "19.00",
        "(0.86x)",
        "21.00",
        "(0.95x)",
        "21.00",
        "(0.95x)",
        "21.00",
        "(0.95x)",
        "6.00",
        "(0.27x)",
    ]
    worker = next(line for line in lines if line.startswith("agent worker, UDP load"))
    assert worker.split()[-6:] == ["-", "-", "-", "-", "-", "30.0"]
    assert "medians of 3 interleaved rounds, 3 s per load" in table
    assert "first: p50 11.0 µs, p99 40.0 µs" in table
    assert "  new TCP connections/s, fast / kernel: 0.67 (target ≥ 1.0): NOT met" in lines
    assert (
        "  packets/s through one per-packet worker: 30.0k (target ≥ 100k): NOT met "
        "(55k per CPU-second of the agent)" in lines
    )
    assert "  decision time p99 (replay): 40.0 µs (target ≤ 50 µs): met" in table


def test_json_has_every_figure_in_si_units() -> None:
    data = json.loads(json.dumps(sample_report().to_json()))
    assert data["benchmark"] == "throughput"
    assert data["units"]["tcp_1_stream_bps"] == "bit/s"
    assert data["units"]["decision_mean_s"] == "s"
    assert data["medians"]["per-packet"]["worker_pps_per_cpu"] == 55e3
    assert data["ratios_to_baseline"]["fast"]["tcp_4_streams_bps"] == pytest.approx(21 / 22)
    assert data["decision_replay_s"]["first"]["p99"] == 40e-6
    assert len(data["runs"]) == 18  # 3 rounds of 6 configurations
    assert {target["name"] for target in data["targets"]} >= {
        "TCP bulk 1 stream, fast / none",
        "decision time p99 (replay)",
    }


def test_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    write_chart(sample_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
