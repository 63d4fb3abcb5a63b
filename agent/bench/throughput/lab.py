"""The throughput benchmark's lab (I/O): what runs in its namespaces, and what it knows of them.

Every command and server runs inside a lab network namespace (``ip netns exec`` or
``agent.lab.netns``); servers are process groups of their own, stopped on every exit path.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bench.kernel_peer import compile_kernel_peer
from agent.bench.throughput.config import (
    CLIENT,
    HTTP_PORT,
    IPERF_PORT,
    METRICS_PORT,
    SERVER,
    BenchError,
)
from agent.bench.throughput.tools import AgentCounters, agent_counters, parse_metrics
from agent.lab.lab import Lab
from agent.lab.netns import CommandError, entered
from agent.lab.netns import run as netns_run
from agent.sources.lab_store import read_store
from agent.state import KINDS, ClusterState
from enforcement.model import ClusterSnapshot

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
class LabView:
    """What a configuration's loads need to know about its lab."""

    node_name: str
    node_netns: str
    netns: dict[str, str]
    """Pod key -> network namespace."""
    address: dict[str, str]
    """Pod key -> IPv4 address."""
    agent_pid: int | None
    """The node agent's process, when the configuration has one."""


def lab_view(lab: Lab) -> LabView:
    """The node, pods and agent process of a running lab."""
    record = lab.record()
    node = record.nodes[0]
    netns = {key: pod.netns for key, pod in record.pods.items()}
    address = {key: str(pod.ipv4) for key, pod in record.pods.items()}
    # The agent itself, not its supervisor (node.agent_pid), whose CPU time is nil.
    agent = lab.agent_process(node.name)
    return LabView(node.name, node.netns, netns, address, agent.pid if agent else None)


def snapshot_from_store(store_path: Path) -> ClusterSnapshot:
    """The ClusterSnapshot the lab's agents would build from its store."""
    revision, objects = read_store(store_path)
    state = ClusterState()
    state.replace_all(
        {kind: [obj for obj in objects if obj.get("kind") == kind] for kind in KINDS},
        str(revision),
    )
    return state.view().snapshot


def install_kernel_peer(lab: Lab, view: LabView) -> None:
    """The lab's policies as the kernel peer's IPv4 rules, in the node namespace."""
    rules = compile_kernel_peer(snapshot_from_store(lab.store_path), view.node_name, 4)
    run_in(
        [rules.restore_command, "--noflush"],
        view.node_netns,
        stdin=rules.install_payload(),
        what="installing the kernel peer's rules",
    )


def agent_counters_of(view: LabView) -> AgentCounters:
    """The node agent's packet and decision-time counters, from its /metrics."""
    with entered(view.node_netns):
        connection = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=5)
        connection.connect()  # the socket is created here, inside the node namespace
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return agent_counters(parse_metrics(text))


@contextlib.contextmanager
def servers(view: LabView, workdir: Path) -> Iterator[None]:
    """iperf3 and nginx in the server pod, for the duration of the block."""
    directory = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
    (directory / "nginx.conf").write_text(NGINX_CONF.format(dir=directory, port=HTTP_PORT))
    netns = view.netns[SERVER]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        iperf_log = directory / "iperf3.log"
        with open(iperf_log, "wb") as log:
            processes.append(
                _spawn(["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"], netns, stdout=log)
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
            connects(view.netns[CLIENT], view.address[SERVER], HTTP_PORT, 0.5)
        ):
            exited = [process for process in processes if process.poll() is not None]
            if exited or time.monotonic() > deadline:
                raise BenchError(
                    "iperf3 and nginx did not start serving in the server pod:\n" + _logs(directory)
                )
            time.sleep(0.05)
        yield
    finally:
        for process in processes:
            _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def run_in(
    argv: Sequence[str],
    netns: str,
    *,
    stdin: str | None = None,
    timeout: float = 30.0,
    what: str,
    check: bool = True,
) -> str:
    """Run ``argv`` inside a lab namespace; its standard output, or BenchError with stderr."""
    try:
        done = netns_run(argv, netns=netns, input=stdin, timeout=timeout, check=check)
    except CommandError as error:
        raise BenchError(f"{what} failed: {error}") from None
    return done.stdout


def connects(netns: str, address: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection from inside ``netns`` to ``address:port`` is accepted."""
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
