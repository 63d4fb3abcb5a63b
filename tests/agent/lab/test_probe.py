"""Tests of agent/lab/probe.py and agent/lab/responder.py.

Root tests build a node, three pods and an external host (tests.agent.lab.test_topology's
``built_lab``), run the real responder in every leaf and probe real matrices; a firewall rule is
only ever added inside the lab's NODE namespace.
"""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.lab import netns
from agent.lab.probe import ProbeEndpoint, Protocol, format_matrix, probe_matrix, probe_one
from agent.lab.responder import PortSpec, parse_port
from tests.agent.lab.test_topology import LabNet, built_lab

REPO = Path(__file__).resolve().parents[3]
PORT = 80
CLOSED_PORT = 81
TIMEOUT = 1.0

# -- pure ---------------------------------------------------------------------------------------


def endpoint(key: str, v4: str | None = "10.0.0.1", v6: str | None = None) -> ProbeEndpoint:
    return ProbeEndpoint(key=key, netns=f"lab-{key}", address_v4=v4, address_v6=v6)


def test_format_matrix_rows_are_sources_and_columns_targets() -> None:
    matrix = {
        "default/a": {"default/a": True, "default/b": False},
        "default/b": {"default/a": True, "default/b": True},
    }
    assert format_matrix(matrix).splitlines() == [
        "from \\ to  default/a  default/b",
        "default/a      .          X",
        "default/b      .          .",
        "legend: . connected, X blocked, ? not probed (rows: from, columns: to); "
        "3 of 4 pairs connected",
    ]


def test_format_matrix_marks_missing_pairs() -> None:
    text = format_matrix({"a": {"a": True, "b": False}, "b": {"a": True}})
    assert text.splitlines()[2].split() == ["b", ".", "?"]
    assert "2 of 3 pairs connected" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"protocol": "SCTP"}, "protocol", id="sctp"),
        pytest.param({"family": 5}, "family", id="family-5"),
        pytest.param({"port": 0}, "port", id="port-0"),
        pytest.param({"timeout": 0}, "timeout", id="no-timeout"),
        pytest.param({"family": 6}, "no IPv6 address", id="target-without-v6"),
        pytest.param({"targets": [endpoint("a"), endpoint("a")]}, "duplicate", id="dup-keys"),
    ],
)
def test_probe_matrix_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    # Raises before any namespace is entered: no root needed.
    arguments: dict[str, object] = {
        "sources": [endpoint("a")],
        "targets": [endpoint("a")],
        "port": 80,
        "protocol": "TCP",
    }
    with pytest.raises(ValueError, match=message):
        probe_matrix(**(arguments | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        pytest.param("80", PortSpec(80, "TCP"), id="bare"),
        pytest.param("80/TCP", PortSpec(80, "TCP"), id="tcp"),
        pytest.param("53/udp", PortSpec(53, "UDP"), id="udp-lowercase"),
    ],
)
def test_responder_parses_ports(text: str, spec: PortSpec) -> None:
    assert parse_port(text) == spec


@pytest.mark.parametrize("text", ["80/SCTP", "80/ICMP", "http", "0", "70000/TCP"])
def test_responder_refuses_bad_ports(text: str) -> None:
    with pytest.raises(ValueError):
        parse_port(text)


# -- root: a lab with responders ----------------------------------------------------------------


def start_responder(netns_name: str, *ports: str) -> subprocess.Popen[bytes]:
    """Start the responder in a namespace and wait for its "ready" line."""
    argv = ["ip", "netns", "exec", netns_name, sys.executable, "-m", "agent.lab.responder"]
    for port in ports:
        argv += ["--port", port]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=10) and proc.stdout.readline() == b"ready\n"
    if not ready:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"responder in {netns_name} did not become ready")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


@dataclass
class ProbeLab:
    net: LabNet
    endpoints: list[ProbeEndpoint]
    """pods a, b, c, then the external host (key "external/web")."""
    responders: list[subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def plab() -> Iterator[ProbeLab]:
    with built_lab(external_addresses=("203.0.113.10", "198.51.100.7", "2001:db8::10")) as net:
        responders: list[subprocess.Popen[bytes]] = []
        try:
            endpoints = [ProbeEndpoint(p.key, p.netns, p.ipv4, p.ipv6) for p in net.pods]
            endpoints.append(
                ProbeEndpoint("external/web", net.external.netns, "203.0.113.10", "2001:db8::10")
            )
            for e in endpoints:
                responders.append(start_responder(e.netns, f"{PORT}/TCP", f"{PORT}/UDP"))
            yield ProbeLab(net, endpoints, responders)
        finally:
            for proc in responders:
                stop(proc)


@dataclass
class NodeDrop:
    """An iptables DROP rule for traffic to one address, in the lab's NODE namespace only.

    ``new_only`` drops only packets that open a connection (conntrack state NEW); without it
    the rule also drops the replies the victim receives to its own connections.
    """

    node_netns: str
    address: str
    new_only: bool = False

    def _rule(self, action: str) -> list[str]:
        tool = "ip6tables" if ":" in self.address else "iptables"
        match = ["-m", "conntrack", "--ctstate", "NEW"] if self.new_only else []
        return [tool, "-w", action, "FORWARD", "-d", self.address, *match, "-j", "DROP"]

    def __enter__(self) -> NodeDrop:
        netns.run(self._rule("-A"), netns=self.node_netns)
        return self

    def __exit__(self, *exc: object) -> None:
        netns.run(self._rule("-D"), netns=self.node_netns)


def blocked_pairs(matrix: dict[str, dict[str, bool]]) -> set[tuple[str, str]]:
    return {(src, dst) for src, row in matrix.items() for dst, ok in row.items() if not ok}


@pytest.mark.root
@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
@pytest.mark.parametrize("family", [4, 6])
def test_everyone_reaches_everyone_without_a_firewall(
    plab: ProbeLab, protocol: Protocol, family: int
) -> None:
    started = time.monotonic()
    matrix = probe_matrix(
        plab.endpoints,
        plab.endpoints,
        PORT,
        protocol,
        family=family,
        timeout=TIMEOUT,
    )
    elapsed = time.monotonic() - started
    keys = [e.key for e in plab.endpoints]
    assert list(matrix) == keys
    assert all(list(row) == keys for row in matrix.values())
    assert all(all(row.values()) for row in matrix.values()), format_matrix(matrix)
    assert elapsed < TIMEOUT / 2  # nothing waits when everything answers


@pytest.mark.root
@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("new_only", [True, False], ids=["new-only", "stateless"])
def test_a_node_drop_rule_closes_exactly_what_it_drops(
    plab: ProbeLab, protocol: Protocol, family: int, new_only: bool
) -> None:
    victim = plab.endpoints[1]
    address = victim.address(family)
    assert address is not None
    with NodeDrop(plab.net.node.netns, address, new_only):
        started = time.monotonic()
        matrix = probe_matrix(
            plab.endpoints, plab.endpoints, PORT, protocol, family=family, timeout=TIMEOUT
        )
        elapsed = time.monotonic() - started
    others = [e.key for e in plab.endpoints if e is not victim]
    # Nobody can open a connection to the victim: its column closes, except the self-probe,
    # which never leaves the victim's namespace.
    expected = {(other, victim.key) for other in others}
    if not new_only:
        # "-d VICTIM -j DROP" also drops the answers to the victim's own connections.
        expected |= {(victim.key, other) for other in others}
    assert blocked_pairs(matrix) == expected, format_matrix(matrix)
    # The 4x4 matrix costs one timeout, not one per blocked pair.
    assert TIMEOUT <= elapsed < TIMEOUT + 0.5, f"{elapsed:.3f} s"
    # And the rule is gone again.
    assert probe_one(plab.endpoints[0], victim, PORT, protocol, family=family, timeout=TIMEOUT)


@pytest.mark.root
@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_a_closed_port_fails_fast(plab: ProbeLab, protocol: Protocol) -> None:
    # TCP gets a RST, UDP an ICMP port unreachable: no waiting for the timeout.
    a, b = plab.endpoints[:2]
    started = time.monotonic()
    assert not probe_one(a, b, CLOSED_PORT, protocol, timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT / 2


@pytest.mark.root
def test_udp_replies_come_from_the_address_that_was_probed(plab: ProbeLab) -> None:
    # The external host has two IPv4 addresses; a reply from the other one would be ignored by
    # the probe's connected socket.
    a = plab.endpoints[0]
    ext = plab.endpoints[-1]
    second = ProbeEndpoint("external/web-2", ext.netns, "198.51.100.7", None)
    assert probe_one(a, second, PORT, "UDP", timeout=TIMEOUT)
    assert probe_one(a, second, PORT, "TCP", timeout=TIMEOUT)


@pytest.mark.root
def test_probes_never_leave_the_callers_thread_in_another_namespace(plab: ProbeLab) -> None:
    home = netns.thread_netns_id()
    probe_matrix(plab.endpoints[:2], plab.endpoints[:2], PORT, "TCP", timeout=TIMEOUT)
    assert netns.thread_netns_id() == home


@pytest.mark.root
def test_a_large_matrix_is_one_timeout_and_works_in_small_chunks(plab: ProbeLab) -> None:
    # 4 x 4 pairs run 5 at a time still agree with the all-at-once run.
    chunked = probe_matrix(plab.endpoints, plab.endpoints, PORT, "UDP", max_concurrent=5)
    assert all(all(row.values()) for row in chunked.values())


@pytest.mark.root
def test_nine_by_nine_matrix_takes_about_one_timeout() -> None:
    with built_lab(pod_count=8) as net:
        endpoints = [ProbeEndpoint(p.key, p.netns, p.ipv4, p.ipv6) for p in net.pods]
        endpoints.append(ProbeEndpoint("external/web", net.external.netns, "203.0.113.10", None))
        responders = []
        try:
            for e in endpoints:
                responders.append(start_responder(e.netns, f"{PORT}/TCP"))
            victim = endpoints[3]
            with NodeDrop(net.node.netns, str(victim.address_v4), new_only=True):
                started = time.monotonic()
                matrix = probe_matrix(endpoints, endpoints, PORT, "TCP", timeout=TIMEOUT)
                elapsed = time.monotonic() - started
        finally:
            for proc in responders:
                stop(proc)
    assert blocked_pairs(matrix) == {(e.key, victim.key) for e in endpoints if e is not victim}
    assert elapsed < TIMEOUT + 0.5, f"{elapsed:.3f} s"


@pytest.mark.root
def test_responder_serves_ipv4_and_ipv6_and_stops_on_sigterm() -> None:
    with built_lab(pod_count=2) as net:
        a, b = (ProbeEndpoint(p.key, p.netns, p.ipv4, p.ipv6) for p in net.pods)
        started = time.monotonic()
        proc = start_responder(b.netns, "8080/TCP", "5353/UDP")
        startup = time.monotonic() - started
        try:
            for family in (4, 6):
                assert probe_one(a, b, 8080, "TCP", family=family, timeout=TIMEOUT)
                assert probe_one(a, b, 5353, "UDP", family=family, timeout=TIMEOUT)
                assert not probe_one(a, b, 8080, "UDP", family=family, timeout=TIMEOUT)
        finally:
            code = stop(proc)
        assert code == 0
        assert startup < 2.0, f"responder took {startup:.2f} s to start"


@pytest.mark.root
def test_responder_reports_a_port_in_use_on_stderr() -> None:
    with built_lab(pod_count=1) as net:
        pod = net.pods[0]
        first = start_responder(pod.netns, "80/TCP")
        try:
            argv = ["ip", "netns", "exec", pod.netns, sys.executable, "-m", "agent.lab.responder"]
            second = subprocess.run(
                [*argv, "--port", "80/TCP"], cwd=REPO, capture_output=True, text=True, timeout=10
            )
        finally:
            stop(first)
        assert second.returncode == 1
        assert second.stdout == ""
        assert "80/TCP" in second.stderr
