"""One run of the throughput benchmark (I/O): a lab per configuration, the loads, the replay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.bench.machine import cpu_busy_fraction, cpu_seconds, machine_info
from agent.bench.throughput.config import (
    AGENT_MODES,
    BASELINE,
    BUSY_WARNING,
    CLIENT,
    HTTP_PORT,
    IPERF_PORT,
    MANIFEST,
    MODE_FIGURES,
    MODE_TITLES,
    MODES,
    OTHER,
    SERVER,
    TOOL_VERSIONS,
    BenchError,
    Mode,
    Settings,
)
from agent.bench.throughput.lab import (
    LabView,
    agent_counters_of,
    connects,
    install_kernel_peer,
    lab_view,
    run_in,
    servers,
    snapshot_from_store,
)
from agent.bench.throughput.replay import replay_decisions
from agent.bench.throughput.report import ModeRun, Report, summary
from agent.bench.throughput.tools import (
    WrkResult,
    parse_iperf3,
    parse_wrk,
    tcp_bits_per_second,
    udp_result,
)
from agent.lab.lab import Lab
from enforcement.eventpump import DEFAULT_RATE
from enforcement.model import ClusterSnapshot


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
        self.manifest.write_text(MANIFEST)
        busy = cpu_busy_fraction()
        if busy > BUSY_WARNING:
            self.say(
                f"warning: {busy:.0%} of the CPUs were busy before the run started; other "
                "load makes the figures noisy (ratios within one run stay comparable)"
            )
        report = Report(
            settings=self.settings,
            machine={**machine_info(TOOL_VERSIONS), "cpu_busy_before": round(busy, 3)},
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        started = time.monotonic()
        try:
            for round_number in range(1, self.settings.rounds + 1):
                for mode in MODES:
                    self.say(f"round {round_number}/{self.settings.rounds}: {MODE_TITLES[mode]}")
                    run = self._run_mode(round_number, mode)
                    report.runs.append(run)
                    self.say("  " + summary(run))
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
        lab = Lab(self.lab_name)
        agent_mode = "per-packet" if mode == "per-packet" else "fast"
        lab.up(
            [str(self.manifest)],
            mode=agent_mode,
            agents=mode in AGENT_MODES,
            flow_log=mode == "fast-flow-log",
            # What a node runs with a flow log, not the lab's generous rate.
            flow_log_rate=DEFAULT_RATE,
            verdict_cache=mode != "fast-no-cache",
            ipv6=False,
        )
        try:
            view = lab_view(lab)
            if self._replay is None:
                self._replay = (
                    snapshot_from_store(lab.store_path),
                    view.node_name,
                    view.address[CLIENT],
                    view.address[SERVER],
                )
            if mode == "kernel":
                install_kernel_peer(lab, view)
            with servers(view, self.workdir):
                self._check_enforcement(mode, view)
                return self._loads(round_number, mode, view)
        finally:
            lab.down()

    def _check_enforcement(self, mode: Mode, view: LabView) -> None:
        """The client reaches the server; ``other`` does so only without enforcement."""
        server = view.address[SERVER]
        if not connects(view.netns[CLIENT], server, HTTP_PORT, 2.0):
            raise BenchError(f"{MODE_TITLES[mode]}: the client cannot reach the server")
        reached = connects(view.netns[OTHER], server, HTTP_PORT, 0.3)
        if reached != (mode == BASELINE):
            state = "reaches" if reached else "does not reach"
            raise BenchError(
                f"{MODE_TITLES[mode]}: the pod outside the policy {state} the server; "
                "the configuration is not what it claims to be"
            )

    def _loads(self, round_number: int, mode: Mode, view: LabView) -> ModeRun:
        client, server = view.netns[CLIENT], view.address[SERVER]
        run = ModeRun(round=round_number, mode=mode, figures={})
        agent = mode in AGENT_MODES
        before = agent_counters_of(view) if agent else None

        for key, streams in (("tcp_1_stream_bps", 1), ("tcp_4_streams_bps", self.settings.streams)):
            report = self._iperf3(client, server, ["-P", str(streams)])
            run.figures[key] = tcp_bits_per_second(report)
            run.details[f"{key}_retransmits"] = report["end"]["sum_sent"].get("retransmits")

        udp_before = agent_counters_of(view) if agent else None
        cpu_before = cpu_seconds(view.agent_pid) if view.agent_pid else None
        report = self._iperf3(
            client, server, ["-u", "-l", str(self.settings.udp_length), "-b", "0"]
        )
        cpu_after = cpu_seconds(view.agent_pid) if view.agent_pid else None
        udp_after = agent_counters_of(view) if agent else None
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
            spent = agent_counters_of(view) - before
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
        output = run_in(argv, netns, timeout=seconds + 30, what="iperf3", check=False)
        return parse_iperf3(output)

    def _wrk(self, netns: str, server: str) -> WrkResult:
        seconds = self.settings.seconds
        argv = [
            "wrk", "-t1", f"-c{self.settings.http_connections}", f"-d{seconds}s",
            "--timeout", "2s", "-H", "Connection: close", f"http://{server}:{HTTP_PORT}/",
        ]  # fmt: skip
        return parse_wrk(run_in(argv, netns, timeout=seconds + 30, what="wrk"))
