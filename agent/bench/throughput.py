"""The throughput benchmark: what enforcing a NetworkPolicy costs, side by side, in one run.

Five configurations of the same lab (one node; pods ``bench/client``, ``bench/server`` and
``bench/other``; one policy that isolates the server for ingress and allows the client on TCP 80,
TCP 5201 and UDP 5201):

- ``none``: no enforcement at all (``lab up --no-agent``): the physical limit of this machine;
- ``kernel``: the same policy compiled into plain iptables rules (``enforcement.kernel_peer``,
  what Calico's or kube-router's iptables mode does), installed in the node namespace, no agent;
- ``fast``: the agent in its default mode (first packet of a connection decided in userspace,
  the rest passed by the kernel through a connmark), without a flow log;
- ``fast-flow-log``: the same with ``--flow-log`` to a file (one JSON line per connection,
  and the NFLOG reader of the connections the kernel passes alone);
- ``per-packet``: the agent deciding every packet of the isolated server in userspace.

Switching: every configuration gets a lab of its own, built and removed around its loads
(``Lab.up`` with or without an agent, then ``Lab.down``), so each one starts from fresh
namespaces, an empty conntrack table and no rules left by the previous one, and the agent runs
exactly as the lab runs it. Rounds interleave the five (none, kernel, fast, fast-flow-log,
per-packet, none, ...), so slow drifts of the machine (thermal, other load) spread over all of
them; the report gives the median per configuration and its ratio to the baseline measured in
the same run.

Loads, from real tools, client pod to server pod, each ``seconds`` long:

- TCP bulk throughput with 1 and with 4 streams: ``iperf3 -J`` (``sum_received``);
- small UDP packets: ``iperf3 -u -l 64 -b 0`` (unlimited rate); the figure is the packets the
  server received per second (sent minus lost);
- new TCP connections per second: ``wrk -H "Connection: close"`` against nginx (one worker),
  one request per connection;
- with an agent: its mean decision time (``netpol_agent_decision_seconds_sum`` over
  ``netpol_agent_packets_total``, across all loads) and, in per-packet mode, the packets its
  worker decided per second during the UDP load.

The agent exposes only a sum and a count of decision times, so p50 and p99 come from a replay:
the same parse-and-decide code (``parse_packet`` + ``decide``) against the tables compiled from
the lab's own cluster state, timed per packet, for connection-opening packets (what the fast
path decides) and for packets of an established connection (what per-packet mode adds).

Safety: everything happens inside the lab's network namespaces (servers, clients, rules); the
lab is removed on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.health import DEFAULT_HEALTH_PORT

if TYPE_CHECKING:
    from agent.lab.lab import Lab
    from enforcement.model import ClusterSnapshot

Mode = Literal["none", "kernel", "fast", "fast-flow-log", "per-packet"]
MODES: tuple[Mode, ...] = ("none", "kernel", "fast", "fast-flow-log", "per-packet")
BASELINE: Mode = "none"
AGENT_MODES: tuple[Mode, ...] = ("fast", "fast-flow-log", "per-packet")
MODE_TITLES: Mapping[Mode, str] = {
    "none": "no enforcement",
    "kernel": "kernel iptables",
    "fast": "agent fast path",
    "fast-flow-log": "fast path + flow log",
    "per-packet": "agent per-packet",
}

NAMESPACE = "bench"
CLIENT, SERVER, OTHER = f"{NAMESPACE}/client", f"{NAMESPACE}/server", f"{NAMESPACE}/other"
IPERF_PORT = 5201
HTTP_PORT = 80
METRICS_PORT = DEFAULT_HEALTH_PORT
"""The lab's agents serve /metrics here, inside the node namespace."""

MANIFEST = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}, labels: {{role: client}}}}
spec: {{containers: [{{name: load, image: iperf3-and-wrk}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NAMESPACE}, labels: {{role: server}}}}
spec: {{containers: [{{name: serve, image: iperf3-and-nginx}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: {NAMESPACE}, labels: {{role: other}}}}
spec: {{containers: [{{name: idle, image: none}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server-from-client, namespace: {NAMESPACE}}}
spec:
  podSelector: {{matchLabels: {{role: server}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]
    ports:
    - {{protocol: TCP, port: {IPERF_PORT}}}
    - {{protocol: UDP, port: {IPERF_PORT}}}
    - {{protocol: TCP, port: {HTTP_PORT}}}
"""
"""The lab of the benchmark. No container ports are declared, so the lab starts no echo
responders: the servers are iperf3 and nginx. ``other`` is there to check, before the loads,
that enforcement is really on (it must not reach the server)."""

TOOLS: Mapping[str, str] = {
    "ip": "iproute2",
    "iptables-restore": "iptables",
    "iperf3": "iperf3",
    "wrk": "wrk",
    "nginx": "nginx-light",
}
"""Programs the benchmark runs, and the Debian package that provides each."""


BUSY_WARNING = 0.15
"""Share of CPU in use before the run above which the run warns that the machine is busy."""


class BenchError(RuntimeError):
    """The benchmark cannot run or a load failed; the message says what and why."""


# -- figures -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    key: str
    """Key in the JSON results; values are in SI units (bit/s, packets/s, seconds)."""
    label: str
    unit: str
    """Unit of the displayed value."""
    scale: float
    """Displayed value = value / scale."""
    digits: int
    compared: bool
    """Compared with the baseline (a load figure), or the agent's own figure."""


FIGURES: tuple[Figure, ...] = (
    Figure("tcp_1_stream_bps", "TCP bulk, 1 stream", "Gbit/s", 1e9, 2, True),
    Figure("tcp_4_streams_bps", "TCP bulk, 4 streams", "Gbit/s", 1e9, 2, True),
    Figure("udp_small_pps", "UDP 64 B, received", "kpackets/s", 1e3, 1, True),
    Figure("tcp_connections_per_s", "new TCP connections", "k/s", 1e3, 2, True),
    Figure("decision_mean_s", "agent decision, mean", "µs", 1e-6, 1, False),
    Figure("worker_pps", "agent worker, UDP load", "kpackets/s", 1e3, 1, False),
    Figure("worker_pps_per_cpu", "agent worker, per CPU-second", "kpackets", 1e3, 1, False),
)
FIGURE_BY_KEY: Mapping[str, Figure] = {figure.key: figure for figure in FIGURES}
LOAD_FIGURES = tuple(figure.key for figure in FIGURES if figure.compared)

MODE_FIGURES: Mapping[Mode, tuple[str, ...]] = {
    "none": LOAD_FIGURES,
    "kernel": LOAD_FIGURES,
    "fast": (*LOAD_FIGURES, "decision_mean_s"),
    "fast-flow-log": (*LOAD_FIGURES, "decision_mean_s"),
    "per-packet": (*LOAD_FIGURES, "decision_mean_s", "worker_pps", "worker_pps_per_cpu"),
}
"""The figures each configuration must produce."""


# -- parsing the tools' output (pure) ----------------------------------------------------------


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


# -- statistics and the report (pure) ----------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.5 is the median of an odd count)."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int = 3
    seconds: int = 3
    """Duration of each load."""
    streams: int = 4
    """Streams of the multi-stream TCP load."""
    udp_length: int = 64
    """UDP payload bytes."""
    http_connections: int = 32
    """wrk's concurrent connections."""
    replay_packets: int = 20000
    """Packets per kind timed in the decision replay."""
    quick: bool = False

    @classmethod
    def from_args(cls, quick: bool, rounds: int | None, seconds: int | None) -> Settings:
        settings = cls(rounds=1, seconds=1, replay_packets=5000, quick=True) if quick else cls()
        if rounds is not None:
            if rounds < 1:
                raise BenchError("--rounds must be at least 1")
            settings = _replace(settings, rounds=rounds)
        if seconds is not None:
            if seconds < 1:
                raise BenchError("--seconds must be at least 1")
            settings = _replace(settings, seconds=seconds)
        return settings


def _replace(settings: Settings, **changes: Any) -> Settings:
    return Settings(**{**asdict(settings), **changes})


@dataclass(slots=True)
class ModeRun:
    """One configuration's loads in one round."""

    round: int
    mode: Mode
    figures: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    """What else the tools said: retransmits, wrk errors, packets sent, agent counters."""


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p99: float
    mean: float
    samples: int


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue's table, checked against this run."""

    name: str
    condition: str
    value: float | None
    met: bool | None
    """None when the figure is missing."""
    note: str = ""


@dataclass(slots=True)
class Report:
    settings: Settings
    machine: dict[str, Any]
    started: str
    """Local time the run started, ISO 8601."""
    duration_s: float = 0.0
    runs: list[ModeRun] = field(default_factory=list)
    replay: dict[str, Percentiles] = field(default_factory=dict)
    """Decision times of the replay: ``first`` (connection-opening packets) and
    ``established`` (packets of a tracked connection), in seconds."""

    def medians(self) -> dict[Mode, dict[str, float]]:
        """Median of every figure per configuration, over the rounds that produced it."""
        result: dict[Mode, dict[str, float]] = {}
        for mode in MODES:
            values: dict[str, list[float]] = {}
            for run in self.runs:
                if run.mode == mode:
                    for key, value in run.figures.items():
                        values.setdefault(key, []).append(value)
            result[mode] = {key: statistics.median(v) for key, v in values.items()}
        return result

    def ratios(self) -> dict[Mode, dict[str, float]]:
        """Each configuration's median load figures divided by the baseline's."""
        medians = self.medians()
        baseline = medians.get(BASELINE, {})
        result: dict[Mode, dict[str, float]] = {}
        for mode in MODES:
            result[mode] = {
                key: value / baseline[key]
                for key, value in medians.get(mode, {}).items()
                if key in LOAD_FIGURES and baseline.get(key)
            }
        return result

    def targets(self) -> list[Target]:
        """The throughput targets of the issue, as far as this run measures them."""
        medians, ratios = self.medians(), self.ratios()

        def at_least(name: str, value: float | None, bound: float, shown: str) -> Target:
            if value is None:
                return Target(name, f"≥ {shown}", None, None)
            return Target(name, f"≥ {shown}", value, value >= bound)

        fast, per_packet = ratios.get("fast", {}), ratios.get("per-packet", {})
        fast_conns = medians.get("fast", {}).get("tcp_connections_per_s")
        kernel_conns = medians.get("kernel", {}).get("tcp_connections_per_s")
        conns = fast_conns / kernel_conns if fast_conns and kernel_conns else None
        logged_conns = medians.get("fast-flow-log", {}).get("tcp_connections_per_s")
        logging_cost = logged_conns / fast_conns if logged_conns and fast_conns else None
        worker = medians.get("per-packet", {}).get("worker_pps")
        per_cpu = medians.get("per-packet", {}).get("worker_pps_per_cpu")
        targets = [
            at_least("TCP bulk 1 stream, fast / none", fast.get("tcp_1_stream_bps"), 0.95, "0.95"),
            at_least(
                "TCP bulk 4 streams, fast / none", fast.get("tcp_4_streams_bps"), 0.95, "0.95"
            ),
            at_least("new TCP connections/s, fast / kernel", conns, 1.0, "1.0"),
            at_least(
                "new TCP connections/s, fast with flow log / without",
                logging_cost,
                0.95,
                "0.95",
            ),
            _with_note(
                at_least("packets/s through one per-packet worker", worker, 100e3, "100k"),
                f"{per_cpu / 1e3:.0f}k per CPU-second of the agent" if per_cpu else "",
            ),
            at_least(
                "TCP bulk 1 stream, per-packet / none",
                per_packet.get("tcp_1_stream_bps"),
                0.3,
                "0.3",
            ),
            at_least(
                "TCP bulk 4 streams, per-packet / none",
                per_packet.get("tcp_4_streams_bps"),
                0.3,
                "0.3",
            ),
        ]
        p99 = max((p.p99 for p in self.replay.values()), default=None)
        if p99 is None:
            targets.append(Target("decision time p99 (replay)", "≤ 50 µs", None, None))
        else:
            targets.append(
                Target(
                    "decision time p99 (replay)",
                    "≤ 50 µs",
                    p99,
                    p99 <= 50e-6,
                    "the agent exports only sum and count; p99 from the replay",
                )
            )
        return targets

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "throughput",
            "started": self.started,
            "duration_s": round(self.duration_s, 1),
            "settings": asdict(self.settings),
            "machine": self.machine,
            "units": {figure.key: _si_unit(figure.key) for figure in FIGURES},
            "medians": self.medians(),
            "ratios_to_baseline": self.ratios(),
            "decision_replay_s": {kind: asdict(p) for kind, p in self.replay.items()},
            "targets": [asdict(target) for target in self.targets()],
            "runs": [asdict(run) for run in self.runs],
        }


def _with_note(target: Target, note: str) -> Target:
    return Target(target.name, target.condition, target.value, target.met, note)


def _si_unit(key: str) -> str:
    if key.endswith("_per_cpu"):
        return "packets per CPU-second of the agent"
    if key.endswith("_bps"):
        return "bit/s"
    if key.endswith("_pps"):
        return "packets/s"
    if key.endswith("_per_s"):
        return "1/s"
    return "s"


def _display(key: str, value: float) -> str:
    figure = FIGURE_BY_KEY[key]
    return f"{value / figure.scale:.{figure.digits}f}"


def render_table(report: Report) -> str:
    """The results as text: absolute medians, ratios to the baseline, the replay, the targets."""
    medians, ratios = report.medians(), report.ratios()
    header = ["figure", *(MODE_TITLES[mode] for mode in MODES)]
    rows = [header]
    for figure in FIGURES:
        row = [f"{figure.label} ({figure.unit})"]
        for mode in MODES:
            value = medians.get(mode, {}).get(figure.key)
            if value is None:
                row.append("-")
                continue
            cell = _display(figure.key, value)
            ratio = ratios.get(mode, {}).get(figure.key)
            if ratio is not None and mode != BASELINE:
                cell += f" ({ratio:.2f}x)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    rounds = report.settings.rounds
    lines.append("")
    lines.append(
        f"medians of {rounds} interleaved round{'s' if rounds != 1 else ''}, "
        f"{report.settings.seconds} s per load; (N.NNx) = ratio to {MODE_TITLES[BASELINE]} "
        "in the same run"
    )
    if report.replay:
        parts = [
            f"{kind}: p50 {p.p50 * 1e6:.1f} µs, p99 {p.p99 * 1e6:.1f} µs, "
            f"mean {p.mean * 1e6:.1f} µs"
            for kind, p in report.replay.items()
        ]
        lines.append("decision replay (parse + decide, per packet): " + "; ".join(parts))
    lines.append("")
    lines.append("targets:")
    for target in report.targets():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target.met]
        shown = "-" if target.value is None else _target_value(target)
        note = f" ({target.note})" if target.note else ""
        lines.append(f"  {target.name}: {shown} (target {target.condition}): {verdict}{note}")
    return "\n".join(lines)


def _target_value(target: Target) -> str:
    assert target.value is not None
    if "µs" in target.condition:
        return f"{target.value * 1e6:.1f} µs"
    if "k" in target.condition:
        return f"{target.value / 1e3:.1f}k"
    return f"{target.value:.2f}"


def write_chart(report: Report, path: Path) -> None:
    """A PNG: one panel per load figure (bars per configuration, ratio on top), one for the
    agent's decision times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians, ratios = report.medians(), report.ratios()
    colours = {
        "none": "#7f7f7f",
        "kernel": "#1f77b4",
        "fast": "#2ca02c",
        "fast-flow-log": "#98df8a",
        "per-packet": "#d62728",
    }
    figure, axes = plt.subplots(
        1, 5, figsize=(21, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.4]}
    )
    for axis, key in zip(axes[:4], LOAD_FIGURES, strict=True):
        spec = FIGURE_BY_KEY[key]
        modes = [mode for mode in MODES if key in medians.get(mode, {})]
        values = [medians[mode][key] / spec.scale for mode in modes]
        bars = axis.bar(
            [MODE_TITLES[m].replace(" ", "\n", 1) for m in modes],
            values,
            color=[colours[m] for m in modes],
        )
        for bar, mode in zip(bars, modes, strict=True):
            ratio = ratios.get(mode, {}).get(key)
            text = "baseline" if mode == BASELINE else f"{ratio:.2f}x" if ratio else ""
            axis.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        axis.set_title(f"{spec.label}\n({spec.unit})", fontsize=10)
        axis.tick_params(axis="x", labelsize=8)
        axis.margins(y=0.15)
    axis = axes[4]
    labels: list[str] = []
    values = []
    for mode in AGENT_MODES:
        mean = medians.get(mode, {}).get("decision_mean_s")
        if mean is not None:
            labels.append(f"agent\n{mode}\nmean")
            values.append(mean * 1e6)
    for kind, times in report.replay.items():
        labels += [f"replay\n{kind}\np50", f"replay\n{kind}\np99"]
        values += [times.p50 * 1e6, times.p99 * 1e6]
    axis.bar(labels, values, color="#9467bd")
    axis.axhline(50, color="black", linestyle="--", linewidth=1)
    axis.annotate("p99 target 50 µs", (0, 50), va="bottom", fontsize=8)
    axis.set_title("decision time per packet\n(µs)", fontsize=10)
    axis.tick_params(axis="x", labelsize=7)
    figure.suptitle(
        f"netpol-agent bench (throughput), {report.started}, {report.machine.get('cpus')} CPUs, "
        f"kernel {report.machine.get('kernel')}: medians of {report.settings.rounds} round(s)",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- the decision replay -----------------------------------------------------------------------


def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int, payload: int = 0) -> bytes:
    """An IPv4/TCP packet as the queue hands it over (checksums are not verified there)."""
    length = 40 + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        length,
        0,
        0x4000,
        64,
        6,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0)
    return ip + tcp + b"\0" * payload


_SYN, _ACK, _PSH = 0x02, 0x10, 0x08


def replay_decisions(
    snapshot: ClusterSnapshot, node_name: str, client: str, server: str, port: int, count: int
) -> dict[str, Percentiles]:
    """Time ``parse_packet`` + ``decide`` per packet against the tables of ``snapshot``.

    ``first``: ``count`` connection-opening SYNs, each from another source port (every one is a
    table lookup and a new tracked flow: what the fast path sends to userspace). ``established``:
    ``count`` packets of one tracked connection, both directions (what per-packet mode adds).
    """
    from enforcement.compiler import compile_tables
    from enforcement.decide import decide
    from enforcement.flows import FlowTable
    from enforcement.packets import parse_packet

    tables = compile_tables(snapshot, node_name, 1)
    flows = FlowTable()
    clock = time.monotonic
    timer = time.perf_counter_ns

    def timed(packets: Sequence[bytes]) -> list[float]:
        times = []
        for payload in packets:
            started = timer()
            decide(parse_packet(payload), tables, flows, clock())
            times.append((timer() - started) / 1e9)
        return times

    first = [tcp_packet(client, server, 1024 + i % 60000, port, _SYN, 0) for i in range(count)]
    first_times = timed(first)
    handshake = [
        tcp_packet(client, server, 65000, port, _SYN),
        tcp_packet(server, client, port, 65000, _SYN | _ACK),
        tcp_packet(client, server, 65000, port, _ACK),
    ]
    timed(handshake)
    data = tcp_packet(client, server, 65000, port, _PSH | _ACK, 1400)
    ack = tcp_packet(server, client, port, 65000, _ACK)
    established_times = timed([data if i % 2 == 0 else ack for i in range(count)])
    return {
        "first": _percentiles(first_times),
        "established": _percentiles(established_times),
    }


def _percentiles(values: Sequence[float]) -> Percentiles:
    return Percentiles(
        p50=percentile(values, 0.5),
        p99=percentile(values, 0.99),
        mean=statistics.fmean(values),
        samples=len(values),
    )


# -- running it (I/O) --------------------------------------------------------------------------


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
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        problems.append(
            "missing the Python package matplotlib for the chart "
            "(.venv/bin/pip install 'matplotlib>=3.7,<4', or the project's 'bench' extra)"
        )
    if problems:
        raise BenchError("cannot run the benchmark: " + "; ".join(problems))


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPUs, kernel, tool versions."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return "?"
        text = (done.stdout or done.stderr).strip().splitlines()
        return text[0] if text else "?"

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iperf3": version(["iperf3", "--version"]),
        "wrk": version(["wrk", "--version"]),
        "nginx": version(["nginx", "-v"]),
    }


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_timeout 0;
  server {{
    listen {port} backlog=8192;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""
"""One nginx worker answering every request with a 3-byte body and closing the connection."""


@dataclass(slots=True)
class _LabView:
    """What a configuration's loads need to know about its lab."""

    node_name: str
    node_netns: str
    netns: dict[str, str]
    """Pod key -> network namespace."""
    address: dict[str, str]
    """Pod key -> IPv4 address."""
    agent_pid: int | None
    """The node agent's process, when the configuration has one."""


class ThroughputBench:
    """One run of the benchmark; ``run`` builds and removes its labs."""

    def __init__(
        self, settings: Settings, workdir: Path, say: Callable[[str], None] = print
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.say = say
        self.lab_name = f"bench-{uuid.uuid4().hex[:6]}"
        self.manifest = workdir / "bench.yaml"
        self._replay: tuple[ClusterSnapshot, str, str, str] | None = None
        """What the decision replay needs: the lab's snapshot, node, client and server."""

    def run(self) -> Report:
        from agent.lab.lab import Lab

        self.manifest.write_text(MANIFEST)
        busy = cpu_busy_fraction()
        if busy > BUSY_WARNING:
            self.say(
                f"warning: {busy:.0%} of the CPUs were busy before the run started; other "
                "load makes the figures noisy (ratios within one run stay comparable)"
            )
        report = Report(
            settings=self.settings,
            machine={**machine_info(), "cpu_busy_before": round(busy, 3)},
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        started = time.monotonic()
        try:
            for round_number in range(1, self.settings.rounds + 1):
                for mode in MODES:
                    self.say(f"round {round_number}/{self.settings.rounds}: {MODE_TITLES[mode]}")
                    run = self._run_mode(round_number, mode)
                    report.runs.append(run)
                    self.say("  " + _summary(run))
        finally:
            Lab(self.lab_name).down()  # the per-mode teardown normally did it already
        if self._replay is not None:
            snapshot, node, client, server = self._replay
            self.say("replaying decisions")
            report.replay = replay_decisions(
                snapshot, node, client, server, IPERF_PORT, self.settings.replay_packets
            )
        report.duration_s = time.monotonic() - started
        return report

    def _run_mode(self, round_number: int, mode: Mode) -> ModeRun:
        from agent.lab.lab import Lab

        lab = Lab(self.lab_name)
        agent_mode = "per-packet" if mode == "per-packet" else "fast"
        lab.up(
            [str(self.manifest)],
            mode=agent_mode,
            agents=mode in AGENT_MODES,
            flow_log=mode == "fast-flow-log",
            ipv6=False,
        )
        try:
            view = self._lab_view(lab)
            if self._replay is None:
                self._replay = (
                    snapshot_from_store(lab.store_path),
                    view.node_name,
                    view.address[CLIENT],
                    view.address[SERVER],
                )
            if mode == "kernel":
                self._install_kernel_peer(lab, view)
            with self._servers(view):
                self._check_enforcement(mode, view)
                return self._loads(round_number, mode, view)
        finally:
            lab.down()

    def _lab_view(self, lab: Lab) -> _LabView:
        record = lab.record()
        node = record.nodes[0]
        netns = {key: pod.netns for key, pod in record.pods.items()}
        address = {key: str(pod.ipv4) for key, pod in record.pods.items()}
        # The agent itself, not its supervisor (node.agent_pid), whose CPU time is nil.
        agent = lab.agent_process(node.name)
        return _LabView(node.name, node.netns, netns, address, agent.pid if agent else None)

    def _install_kernel_peer(self, lab: Lab, view: _LabView) -> None:
        from enforcement.kernel_peer import compile_kernel_peer

        rules = compile_kernel_peer(snapshot_from_store(lab.store_path), view.node_name, 4)
        _run(
            [rules.restore_command, "--noflush"],
            view.node_netns,
            stdin=rules.install_payload(),
            what="installing the kernel peer's rules",
        )

    @contextlib.contextmanager
    def _servers(self, view: _LabView) -> Iterator[None]:
        """iperf3 and nginx in the server pod, for the duration of the block."""
        directory = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.workdir))
        (directory / "nginx.conf").write_text(NGINX_CONF.format(dir=directory, port=HTTP_PORT))
        netns = view.netns[SERVER]
        processes: list[subprocess.Popen[bytes]] = []
        try:
            iperf_log = directory / "iperf3.log"
            with open(iperf_log, "wb") as log:
                processes.append(
                    _spawn(
                        ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"], netns, stdout=log
                    )
                )
            with open(directory / "nginx.log", "wb") as log:
                processes.append(
                    _spawn(
                        ["nginx", "-c", str(directory / "nginx.conf"), "-p", str(directory)],
                        netns,
                        stdout=log,
                    )
                )
            deadline = time.monotonic() + 10
            while "Server listening" not in iperf_log.read_text(errors="replace") or not (
                _connects(view.netns[CLIENT], view.address[SERVER], HTTP_PORT, 0.5)
            ):
                exited = [process for process in processes if process.poll() is not None]
                if exited or time.monotonic() > deadline:
                    raise BenchError(
                        "iperf3 and nginx did not start serving in the server pod:\n"
                        + _logs(directory)
                    )
                time.sleep(0.05)
            yield
        finally:
            for process in processes:
                _stop(process)
            shutil.rmtree(directory, ignore_errors=True)

    def _check_enforcement(self, mode: Mode, view: _LabView) -> None:
        """The client reaches the server; ``other`` does so only without enforcement."""
        server = view.address[SERVER]
        if not _connects(view.netns[CLIENT], server, HTTP_PORT, 2.0):
            raise BenchError(f"{MODE_TITLES[mode]}: the client cannot reach the server")
        reached = _connects(view.netns[OTHER], server, HTTP_PORT, 0.3)
        if reached != (mode == BASELINE):
            state = "reaches" if reached else "does not reach"
            raise BenchError(
                f"{MODE_TITLES[mode]}: the pod outside the policy {state} the server; "
                "the configuration is not what it claims to be"
            )

    def _loads(self, round_number: int, mode: Mode, view: _LabView) -> ModeRun:
        client, server = view.netns[CLIENT], view.address[SERVER]
        run = ModeRun(round=round_number, mode=mode, figures={})
        agent = mode in AGENT_MODES
        before = self._counters(view) if agent else None

        for key, streams in (("tcp_1_stream_bps", 1), ("tcp_4_streams_bps", self.settings.streams)):
            report = self._iperf3(client, server, ["-P", str(streams)])
            run.figures[key] = tcp_bits_per_second(report)
            run.details[f"{key}_retransmits"] = report["end"]["sum_sent"].get("retransmits")

        udp_before = self._counters(view) if agent else None
        cpu_before = cpu_seconds(view.agent_pid) if view.agent_pid else None
        report = self._iperf3(
            client, server, ["-u", "-l", str(self.settings.udp_length), "-b", "0"]
        )
        cpu_after = cpu_seconds(view.agent_pid) if view.agent_pid else None
        udp_after = self._counters(view) if agent else None
        udp = udp_result(report)
        run.figures["udp_small_pps"] = udp.received_per_second
        run.details["udp_sent_pps"] = udp.sent / udp.seconds if udp.seconds else 0.0
        if mode == "per-packet" and udp_before is not None and udp_after is not None:
            decided = (udp_after - udp_before).packets
            run.figures["worker_pps"] = decided / udp.seconds
            if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
                used = cpu_after - cpu_before
                run.figures["worker_pps_per_cpu"] = decided / used
                run.details["agent_cpu_share_udp"] = used / udp.seconds

        cpu_before = cpu_seconds(view.agent_pid) if view.agent_pid else None
        wrk = self._wrk(client, server)
        cpu_after = cpu_seconds(view.agent_pid) if view.agent_pid else None
        if cpu_before is not None and cpu_after is not None:
            run.details["agent_cpu_share_conns"] = (cpu_after - cpu_before) / wrk.seconds
        run.figures["tcp_connections_per_s"] = wrk.requests_per_second
        run.details["wrk_requests"] = wrk.requests
        run.details["wrk_socket_errors"] = dict(wrk.socket_errors)
        run.details["wrk_non_2xx_3xx"] = wrk.non_success

        if before is not None:
            spent = self._counters(view) - before
            run.details["agent_packets"] = spent.packets
            if spent.packets > 0:
                run.figures["decision_mean_s"] = spent.decision_seconds / spent.packets
        missing = [key for key in MODE_FIGURES[mode] if run.figures.get(key, 0) <= 0]
        if missing:
            raise BenchError(f"{MODE_TITLES[mode]}: no value for {', '.join(missing)}: {run}")
        return run

    def _iperf3(self, netns: str, server: str, extra: Sequence[str]) -> dict[str, Any]:
        seconds = self.settings.seconds
        argv = ["iperf3", "-c", server, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *extra]
        output = _run(argv, netns, timeout=seconds + 30, what="iperf3", check=False)
        return parse_iperf3(output)

    def _wrk(self, netns: str, server: str) -> WrkResult:
        seconds = self.settings.seconds
        argv = [
            "wrk", "-t1", f"-c{self.settings.http_connections}", f"-d{seconds}s",
            "--timeout", "2s", "-H", "Connection: close", f"http://{server}:{HTTP_PORT}/",
        ]  # fmt: skip
        return parse_wrk(_run(argv, netns, timeout=seconds + 30, what="wrk"))

    def _counters(self, view: _LabView) -> AgentCounters:
        from agent.lab.netns import entered

        with entered(view.node_netns):
            connection = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=5)
            connection.connect()  # the socket is created here, inside the node namespace
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        return agent_counters(parse_metrics(text))


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process and its threads so far (proc(5) stat fields 14,
    15), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy_fraction(interval: float = 1.0) -> float:
    """Share of all CPUs in use (not idle, not waiting) over ``interval`` seconds (proc(5))."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values[:8]) - idle, sum(values[:8])

    busy_before, total_before = sample()
    time.sleep(interval)
    busy_after, total_after = sample()
    total = total_after - total_before
    return (busy_after - busy_before) / total if total > 0 else 0.0


def _summary(run: ModeRun) -> str:
    return ", ".join(
        f"{FIGURE_BY_KEY[key].label} {_display(key, value)} {FIGURE_BY_KEY[key].unit}"
        for key, value in run.figures.items()
    )


def snapshot_from_store(store_path: Path) -> ClusterSnapshot:
    """The ClusterSnapshot the lab's agents would build from its store."""
    from agent.sources.lab_store import read_store
    from agent.state import KINDS, ClusterState

    revision, objects = read_store(store_path)
    state = ClusterState()
    state.replace_all(
        {kind: [obj for obj in objects if obj.get("kind") == kind] for kind in KINDS},
        str(revision),
    )
    return state.view().snapshot


def _run(
    argv: Sequence[str],
    netns: str,
    *,
    stdin: str | None = None,
    timeout: float = 30.0,
    what: str,
    check: bool = True,
) -> str:
    """Run ``argv`` inside a lab namespace; its standard output, or BenchError with stderr."""
    from agent.lab.netns import CommandError
    from agent.lab.netns import run as netns_run

    try:
        done = netns_run(argv, netns=netns, input=stdin, timeout=timeout, check=check)
    except CommandError as error:
        raise BenchError(f"{what} failed: {error}") from None
    return done.stdout


def _spawn(argv: Sequence[str], netns: str, stdout: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, *argv],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process group this module started (TERM, then KILL)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=3)


def _logs(directory: Path) -> str:
    return "\n".join(
        f"--- {path.name}:\n{path.read_text(errors='replace').strip()[-2000:]}"
        for path in sorted(directory.glob("*.log"))
    )


def _connects(netns: str, address: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection from inside ``netns`` to ``address:port`` is accepted."""
    from agent.lab.netns import entered

    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def write_results(report: Report, output: Path) -> tuple[Path, Path]:
    """Write ``throughput-<timestamp>.json`` and ``.png`` into ``output``; their paths."""
    output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = output / f"throughput-{stamp}.json"
    png_path = output / f"throughput-{stamp}.png"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    write_chart(report, png_path)
    return json_path, png_path


def run_command(args: argparse.Namespace) -> int:
    """``netpol-agent bench``: run, print the table, write the files; the exit status."""
    from agent.lab.lab import LabError

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

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
        json_path, png_path = write_results(report, args.output)
    except (BenchError, LabError) as error:
        print(f"netpol-agent bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("netpol-agent bench: interrupted; the lab was removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render_table(report))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.bench.throughput``: the same as ``netpol-agent bench``."""
    from agent.bench import add_bench_arguments

    parser = argparse.ArgumentParser(prog="netpol-agent bench")
    add_bench_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
