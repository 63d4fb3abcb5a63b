"""What the throughput benchmark is: its configurations, its lab, its figures, its settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from agent.health import DEFAULT_HEALTH_PORT

Mode = Literal["none", "kernel", "fast", "fast-no-cache", "fast-flow-log", "per-packet"]
MODES: tuple[Mode, ...] = (
    "none", "kernel", "fast", "fast-no-cache", "fast-flow-log", "per-packet"
)  # fmt: skip
BASELINE: Mode = "none"
AGENT_MODES: tuple[Mode, ...] = ("fast", "fast-no-cache", "fast-flow-log", "per-packet")
MODE_TITLES: Mapping[Mode, str] = {
    "none": "no enforcement",
    "kernel": "kernel iptables",
    "fast": "agent fast path",
    "fast-no-cache": "fast, no verdict cache",
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
TOOL_VERSIONS: Mapping[str, tuple[str, ...]] = {
    "iperf3": ("iperf3", "--version"),
    "wrk": ("wrk", "--version"),
    "nginx": ("nginx", "-v"),
}
"""How each load tool prints its version, for the machine's description in the results."""


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
    "fast-no-cache": (*LOAD_FIGURES, "decision_mean_s"),
    "fast-flow-log": (*LOAD_FIGURES, "decision_mean_s"),
    "per-packet": (*LOAD_FIGURES, "decision_mean_s", "worker_pps", "worker_pps_per_cpu"),
}
"""The figures each configuration must produce."""


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
            settings = replace(settings, rounds=rounds)
        if seconds is not None:
            if seconds < 1:
                raise BenchError("--seconds must be at least 1")
            settings = replace(settings, seconds=seconds)
        return settings


DECISION_P99_LIMIT = 50e-6
"""Seconds: the target for the 99th percentile of the agent's decision time per packet."""
