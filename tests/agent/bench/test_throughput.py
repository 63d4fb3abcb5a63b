"""The throughput benchmark (agent/bench/throughput/): parsing real tool output, the
statistics and the report; and, as root, ``netpol-agent bench --quick`` end to end.

The fixtures at the bottom are output captured from the tools in a lab on the development
machine (iperf3 3.12, wrk 4.1.0, the agent's /metrics); only iperf3's per-interval and
per-stream entries were left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bench.stats import Percentiles
from agent.bench.throughput.chart import write_chart
from agent.bench.throughput.config import (
    FIGURES,
    LOAD_FIGURES,
    MANIFEST,
    MODE_FIGURES,
    MODES,
    BenchError,
    Settings,
)
from agent.bench.throughput.replay import replay_decisions, tcp_packet
from agent.bench.throughput.report import ModeRun, Report, render_table
from agent.bench.throughput.run import check_prerequisites
from agent.bench.throughput.tools import (
    AgentCounters,
    agent_counters,
    parse_iperf3,
    parse_metrics,
    parse_wrk,
    tcp_bits_per_second,
    udp_result,
)
from tests.builders import (
    cluster,
    make_namespace,
    make_pod,
    make_policy,
    peer,
    port,
    rule,
    selector,
)

REPO = Path(__file__).resolve().parents[3]

# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bits_per_second"),
    [
        pytest.param("IPERF3_TCP_1_STREAM", 21235418808.06807, id="1-stream"),
        pytest.param("IPERF3_TCP_4_STREAMS", 19964891219.05047, id="4-streams"),
    ],
)
def test_iperf3_tcp_throughput_is_what_the_receiver_got(text: str, bits_per_second: float) -> None:
    report = parse_iperf3(globals()[text])
    assert tcp_bits_per_second(report) == bits_per_second
    assert report["end"]["sum_sent"]["retransmits"] >= 0


def test_iperf3_udp_received_packets_per_second() -> None:
    result = udp_result(parse_iperf3(IPERF3_UDP_64_BYTES))
    assert result.sent == 364170
    assert result.received == 364061 - 193816
    assert result.seconds == 2.005405
    assert result.received_per_second == pytest.approx(170245 / 2.005405)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("IPERF3_REFUSED", "iperf3: unable to connect to server", id="error-report"),
        pytest.param("iperf3: error - the server is busy", "no JSON report", id="not-json"),
        pytest.param("[1, 2]", "not a JSON object", id="not-an-object"),
    ],
)
def test_iperf3_errors(text: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        parse_iperf3(globals().get(text, text))


def test_iperf3_report_without_the_figure() -> None:
    with pytest.raises(BenchError, match="sum_received"):
        tcp_bits_per_second({"end": {}})
    with pytest.raises(BenchError, match="sum_received"):
        udp_result(parse_iperf3(IPERF3_TCP_1_STREAM))


def test_wrk_summary() -> None:
    result = parse_wrk(WRK_CONNECTION_CLOSE)
    assert result.requests == 32876
    assert result.seconds == 2.0
    assert result.requests_per_second == 16410.55
    assert result.socket_errors == {}
    assert result.non_success == 0


def test_wrk_socket_errors() -> None:
    result = parse_wrk(WRK_SOCKET_ERRORS)
    assert result.requests == 3231
    assert result.requests_per_second == 1612.11
    assert result.socket_errors == {"connect": 0, "read": 3, "write": 13422, "timeout": 0}


@pytest.mark.parametrize(
    ("line", "seconds"),
    [
        pytest.param("  10 requests in 500.00ms, 1.00KB read", 0.5, id="ms"),
        pytest.param("  10 requests in 1.00m, 1.00KB read", 60.0, id="minutes"),
        pytest.param("  10 requests in 3.01s, 1.00KB read", 3.01, id="seconds"),
    ],
)
def test_wrk_duration_units(line: str, seconds: float) -> None:
    result = parse_wrk(f"{line}\nRequests/sec:     20.00\n")
    assert result.seconds == pytest.approx(seconds)


def test_wrk_without_summary() -> None:
    with pytest.raises(BenchError, match="unable to connect"):
        parse_wrk(WRK_UNABLE_TO_CONNECT)


def test_agent_counters_sum_over_labels() -> None:
    samples = parse_metrics(AGENT_METRICS)
    assert samples['netpol_agent_flows{queue="1000"}'] == 5554.0
    counters = agent_counters(samples)
    assert counters == AgentCounters(packets=5705.0 + 56271.0, decision_seconds=1.031033447)
    assert counters - AgentCounters(1000.0, 0.031033447) == AgentCounters(60976.0, 1.0)


# -- the report -----------------------------------------------------------------------------------

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
        "6.00",
        "(0.27x)",
    ]
    worker = next(line for line in lines if line.startswith("agent worker, UDP load"))
    assert worker.split()[-5:] == ["-", "-", "-", "-", "30.0"]
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
    assert len(data["runs"]) == 15
    assert {target["name"] for target in data["targets"]} >= {
        "TCP bulk 1 stream, fast / none",
        "decision time p99 (replay)",
    }


def test_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    write_chart(sample_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- settings, command line, prerequisites ---------------------------------------------------------


@pytest.mark.parametrize(
    ("quick", "rounds", "seconds", "expected"),
    [
        pytest.param(False, None, None, (3, 3), id="default"),
        pytest.param(True, None, None, (1, 1), id="quick"),
        pytest.param(True, 2, None, (2, 1), id="quick-two-rounds"),
        pytest.param(False, None, 5, (3, 5), id="longer-loads"),
    ],
)
def test_settings(
    quick: bool, rounds: int | None, seconds: int | None, expected: tuple[int, int]
) -> None:
    settings = Settings.from_args(quick, rounds, seconds)
    assert (settings.rounds, settings.seconds) == expected
    assert settings.quick is quick


@pytest.mark.parametrize(("rounds", "seconds"), [(0, None), (None, 0)])
def test_settings_refuse_nonsense(rounds: int | None, seconds: int | None) -> None:
    with pytest.raises(BenchError, match="at least 1"):
        Settings.from_args(False, rounds, seconds)


def test_missing_tools_are_named_with_their_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda tool: None if tool in ("wrk", "nginx") else tool)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(BenchError) as error:
        check_prerequisites()
    message = str(error.value)
    assert "needs root" in message
    assert "missing programs: wrk, nginx" in message
    assert "apt-get install nginx-light wrk" in message


def test_every_mode_has_its_figures() -> None:
    assert set(MODE_FIGURES) == set(MODES)
    keys = {figure.key for figure in FIGURES}
    assert all(set(figures) <= keys for figures in MODE_FIGURES.values())


def test_the_lab_manifest_is_valid(tmp_path: Path) -> None:
    from agent.manifests import load_manifests

    path = tmp_path / "bench.yaml"
    path.write_text(MANIFEST)
    kinds = [manifest.obj["kind"] for manifest in load_manifests([str(path)])]
    assert kinds == ["Namespace", "Pod", "Pod", "Pod", "NetworkPolicy"]


# -- the decision replay ---------------------------------------------------------------------------


def test_replayed_packets_parse_as_built() -> None:
    from enforcement.packets import parse_packet

    info = parse_packet(tcp_packet("10.0.0.1", "10.0.0.2", 40000, 5201, 0x02, payload=100))
    assert (info.family, info.protocol, info.src_port, info.dst_port) == (4, 6, 40000, 5201)
    assert info.tcp_flags == 0x02 and info.length == 140


def test_replay_times_allowed_decisions() -> None:
    snapshot = cluster(
        make_namespace("bench"),
        make_pod("bench", "client", "10.244.1.2", {"role": "client"}),
        make_pod("bench", "server", "10.244.1.3", {"role": "server"}),
        make_policy(
            "bench",
            "p",
            selector(role="server"),
            ingress=[rule(peer(pods=selector(role="client")), ports=[port(5201)])],
        ),
    )
    times = replay_decisions(snapshot, "node-1", "10.244.1.2", "10.244.1.3", 5201, 200)
    assert set(times) == {"first", "established"}
    for result in times.values():
        assert result.samples == 200
        assert 0 < result.p50 <= result.p99


# -- end to end -----------------------------------------------------------------------------------


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


# -- captured tool output -------------------------------------------------------------------------

IPERF3_TCP_1_STREAM = """\
{
 "start": {
  "version": "iperf 3.12",
  "system_info": "Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
  "test_start": {
   "protocol": "TCP",
   "num_streams": 1,
   "blksize": 131072,
   "omit": 0,
   "duration": 2,
   "bytes": 0,
   "blocks": 0,
   "reverse": 0,
   "tos": 0,
   "target_bitrate": 0
  }
 },
 "intervals": [],
 "end": {
  "sum_sent": {
   "start": 0,
   "end": 2.00008,
   "seconds": 2.00008,
   "bytes": 5317853184,
   "bits_per_second": 21270561913.523457,
   "retransmits": 90,
   "sender": true
  },
  "sum_received": {
   "start": 0,
   "end": 2.000131,
   "seconds": 2.000131,
   "bytes": 5309202432,
   "bits_per_second": 21235418808.06807,
   "sender": true
  },
  "cpu_utilization_percent": {
   "host_total": 22.213166463369593,
   "host_user": 1.5163931971675493,
   "host_system": 20.696773266202044,
   "remote_total": 73.46225052458645,
   "remote_user": 2.629606723905793,
   "remote_system": 70.8325938043554
  },
  "sender_tcp_congestion": "bbr",
  "receiver_tcp_congestion": "bbr"
 }
}
"""
"""``iperf3 -c SERVER -p 5201 -t 2 -J`` between two lab pods, no enforcement (start and
end sections; per-interval and per-stream entries left out)."""

IPERF3_TCP_4_STREAMS = """\
{
 "start": {
  "version": "iperf 3.12",
  "system_info": "Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
  "test_start": {
   "protocol": "TCP",
   "num_streams": 4,
   "blksize": 131072,
   "omit": 0,
   "duration": 2,
   "bytes": 0,
   "blocks": 0,
   "reverse": 0,
   "tos": 0,
   "target_bitrate": 0
  }
 },
 "intervals": [],
 "end": {
  "sum_sent": {
   "start": 0,
   "end": 2.003922,
   "seconds": 2.003922,
   "bytes": 5045354496,
   "bits_per_second": 20141919679.50848,
   "retransmits": 4,
   "sender": true
  },
  "sum_received": {
   "start": 0,
   "end": 2.0073,
   "seconds": 2.0073,
   "bytes": 5009440768,
   "bits_per_second": 19964891219.05047,
   "sender": true
  },
  "cpu_utilization_percent": {
   "host_total": 40.713293628609264,
   "host_user": 1.6174581522643865,
   "host_system": 39.0959348623876,
   "remote_total": 57.36887334573796,
   "remote_user": 1.0691396218331453,
   "remote_system": 56.2996839061134
  },
  "sender_tcp_congestion": "bbr",
  "receiver_tcp_congestion": "bbr"
 }
}
"""
"""The same with ``-P 4``."""

IPERF3_UDP_64_BYTES = """\
{
 "start": {
  "version": "iperf 3.12",
  "system_info": "Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
  "test_start": {
   "protocol": "UDP",
   "num_streams": 1,
   "blksize": 64,
   "omit": 0,
   "duration": 2,
   "bytes": 0,
   "blocks": 0,
   "reverse": 0,
   "tos": 0,
   "target_bitrate": 0
  }
 },
 "intervals": [],
 "end": {
  "sum": {
   "start": 0,
   "end": 2.005405,
   "seconds": 2.005405,
   "bytes": 23306880,
   "bits_per_second": 92982001.02629007,
   "jitter_ms": 0.0010303010346769262,
   "lost_packets": 193816,
   "packets": 364170,
   "lost_percent": 53.2212977455584,
   "sender": true
  },
  "sum_sent": {
   "start": 0,
   "end": 2.005281,
   "seconds": 2.005281,
   "bytes": 23306880,
   "bits_per_second": 92982001.02629007,
   "jitter_ms": 0,
   "lost_packets": 0,
   "packets": 364170,
   "lost_percent": 0,
   "sender": true
  },
  "sum_received": {
   "start": 0,
   "end": 2.005405,
   "seconds": 2.005405,
   "bytes": 10895680,
   "bits_per_second": 43465255.14796263,
   "jitter_ms": 0.0010303010346769262,
   "lost_packets": 193816,
   "packets": 364061,
   "lost_percent": 53.2212977455584,
   "sender": false
  },
  "cpu_utilization_percent": {
   "host_total": 50.348450257419785,
   "host_user": 7.171561700015347,
   "host_system": 43.177188493068236,
   "remote_total": 28.429348612004528,
   "remote_user": 2.5243715748899227,
   "remote_system": 25.90492717199974
  }
 }
}
"""
"""``iperf3 -c SERVER -p 5201 -t 2 -u -l 64 -b 0 -J``: the receiver lost half the datagrams."""

IPERF3_REFUSED = """\
{
    "start":    {
        "connected":    [],
        "version":    "iperf 3.12",
        "system_info":    "Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
    },
    "intervals":    [],
    "end":    {
    },
    "error":    "unable to connect to server: Connection refused"
}
"""
"""``iperf3 -J`` against a pod where no iperf3 server listens."""

WRK_CONNECTION_CLOSE = """\
Running 2s test @ http://10.244.1.3/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   306.52us  195.94us   4.34ms   90.54%
    Req/Sec    16.53k   436.61    17.01k    80.00%
  32876 requests in 2.00s, 4.55MB read
Requests/sec:  16410.55
Transfer/sec:      2.27MB
"""
"""``wrk -t1 -c8 -d2s -H "Connection: close"`` against nginx in the server pod."""

WRK_SOCKET_ERRORS = """\
Running 2s test @ http://10.244.1.3:80/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.52ms  631.00us   9.23ms   82.20%
    Req/Sec     3.24k   246.37     3.75k    60.00%
  3231 requests in 2.00s, 457.51KB read
  Socket errors: connect 0, read 3, write 13422, timeout 0
Requests/sec:   1612.11
Transfer/sec:    228.28KB
"""
"""wrk while nginx was stopped half-way (per-packet mode): the socket-errors line."""

WRK_UNABLE_TO_CONNECT = """\
unable to connect to 10.244.1.3:80 Connection timed out
"""
"""wrk from a pod the policy does not admit: no summary at all."""

AGENT_METRICS = """\
# HELP netpol_agent_packets_total Packets decided, by verdict and reason.
# TYPE netpol_agent_packets_total counter
netpol_agent_packets_total{action="accept",queue="1000",reason="allowed"} 5705.0
netpol_agent_packets_total{action="accept",queue="1000",reason="flow"} 56271.0
# HELP netpol_agent_decision_errors_total Packets that got the default (fail-open/closed) verdict because deciding failed.
# TYPE netpol_agent_decision_errors_total counter
netpol_agent_decision_errors_total{queue="1000"} 0.0
# HELP netpol_agent_decision_seconds Time the agent took to decide a queued packet, from the callback's start to its verdict (parsing included).
# TYPE netpol_agent_decision_seconds histogram
netpol_agent_decision_seconds_bucket{le="1e-06",queue="1000"} 0.0
netpol_agent_decision_seconds_bucket{le="5e-06",queue="1000"} 0.0
netpol_agent_decision_seconds_bucket{le="1e-05",queue="1000"} 41022.0
netpol_agent_decision_seconds_bucket{le="2e-05",queue="1000"} 60114.0
netpol_agent_decision_seconds_bucket{le="5e-05",queue="1000"} 61904.0
netpol_agent_decision_seconds_bucket{le="+Inf",queue="1000"} 61976.0
netpol_agent_decision_seconds_count{queue="1000"} 61976.0
netpol_agent_decision_seconds_sum{queue="1000"} 1.031033447
# HELP netpol_agent_flows Connections in the agent's flow table.
# TYPE netpol_agent_flows gauge
netpol_agent_flows{queue="1000"} 5554.0
# HELP netpol_agent_flow_evictions_total Flows evicted because the flow table was full.
# TYPE netpol_agent_flow_evictions_total counter
netpol_agent_flow_evictions_total{queue="1000"} 0.0
"""  # noqa: E501
"""The first lines of an agent's /metrics in per-packet mode after a few loads."""
