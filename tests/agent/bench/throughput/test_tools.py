"""Parsing what the load tools and the agent print (agent/bench/throughput/tools.py).

The fixtures at the bottom are output captured from the tools in a lab on the development
machine (iperf3 3.12, wrk 4.1.0, the agent's /metrics); only iperf3's per-interval and
per-stream entries were left out.
"""

from __future__ import annotations

import pytest

from agent.bench.throughput.config import BenchError
from agent.bench.throughput.tools import (
    AgentCounters,
    agent_counters,
    parse_iperf3,
    parse_metrics,
    parse_wrk,
    tcp_bits_per_second,
    udp_result,
)


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
