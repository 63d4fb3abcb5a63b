"""Parsing what the load tools and the agent print (pure): iperf3 and wrk reports, /metrics."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.bench.throughput.config import BenchError


def parse_iperf3(text: str) -> dict[str, Any]:
    """An ``iperf3 -J`` report; raises BenchError for iperf3's own error reports."""
    try:
        report = json.loads(text)
    except json.JSONDecodeError as error:
        raise BenchError(f"iperf3 printed no JSON report ({error}): {text[:200]!r}") from None
    if not isinstance(report, dict):
        raise BenchError("iperf3's report is not a JSON object")
    if report.get("error"):
        raise BenchError(f"iperf3: {report['error']}")
    return report


def tcp_bits_per_second(report: Mapping[str, Any]) -> float:
    """What the receiver got, in bit/s, summed over the streams (``end.sum_received``)."""
    try:
        return float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError) as error:
        raise BenchError(f"iperf3 TCP report without end.sum_received ({error!r})") from None


@dataclass(frozen=True, slots=True)
class UdpResult:
    sent: int
    """Datagrams the client sent."""
    received: int
    """Datagrams the server received (sent minus lost)."""
    seconds: float

    @property
    def received_per_second(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


def udp_result(report: Mapping[str, Any]) -> UdpResult:
    """Sent and received datagrams of an ``iperf3 -u -J`` report (the receiver's ``sum``)."""
    try:
        received = report["end"]["sum_received"]
        sent = report["end"]["sum_sent"]
        packets = int(received["packets"])
        lost = int(received["lost_packets"])
        return UdpResult(
            sent=int(sent["packets"]), received=packets - lost, seconds=float(received["seconds"])
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BenchError(f"iperf3 UDP report without end.sum_received ({error!r})") from None


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    """Completed requests (with ``Connection: close``: completed connections)."""
    seconds: float
    requests_per_second: float
    """wrk's own ``Requests/sec``."""
    socket_errors: Mapping[str, int] = field(default_factory=dict)
    """connect/read/write/timeout error counts, when wrk reported any."""
    non_success: int = 0
    """Responses that were not 2xx or 3xx."""


_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
_WRK_RATE = re.compile(r"^Requests/sec:\s*([\d.]+)", re.MULTILINE)
_WRK_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_WRK_NON_SUCCESS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(text: str) -> WrkResult:
    """wrk's summary: requests, duration, Requests/sec and the error lines."""
    total, rate = _WRK_TOTAL.search(text), _WRK_RATE.search(text)
    if total is None or rate is None:
        raise BenchError(f"wrk printed no summary: {text.strip()[:300]!r}")
    errors: dict[str, int] = {}
    found = _WRK_ERRORS.search(text)
    if found is not None:
        names = ("connect", "read", "write", "timeout")
        errors = dict(zip(names, map(int, found.groups()), strict=True))
    non_success = _WRK_NON_SUCCESS.search(text)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _DURATION_UNITS[total.group(3)],
        requests_per_second=float(rate.group(1)),
        socket_errors=errors,
        non_success=int(non_success.group(1)) if non_success else 0,
    )


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition: ``{'name{labels}': value}`` (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[name] = float(value)
    return samples


@dataclass(frozen=True, slots=True)
class AgentCounters:
    packets: float
    """Packets decided (every queue, every verdict)."""
    decision_seconds: float
    """Time spent deciding them."""

    def __sub__(self, earlier: AgentCounters) -> AgentCounters:
        return AgentCounters(
            self.packets - earlier.packets, self.decision_seconds - earlier.decision_seconds
        )


def agent_counters(samples: Mapping[str, float]) -> AgentCounters:
    """Sum the agent's packet and decision-time counters over their labels."""

    def total(name: str) -> float:
        return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))

    return AgentCounters(
        total("netpol_agent_packets_total"), total("netpol_agent_decision_seconds_sum")
    )
