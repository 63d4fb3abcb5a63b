"""Start-up checks against prepared sysfs/procfs trees (the real files' layout, in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.node_checks import bridged_traffic_problems


def tree(
    tmp_path: Path, bridge_ports: list[str] | None, calls: tuple[str, str] | None
) -> tuple[Path, Path]:
    sys_root, proc_root = tmp_path / "sys", tmp_path / "proc"
    (sys_root / "class" / "net" / "eth0").mkdir(parents=True)
    if bridge_ports is not None:
        brif = sys_root / "class" / "net" / "cni0" / "brif"
        brif.mkdir(parents=True)
        for port in bridge_ports:
            (brif / port).mkdir()
    if calls is not None:
        bridge = proc_root / "sys" / "net" / "bridge"
        bridge.mkdir(parents=True)
        (bridge / "bridge-nf-call-iptables").write_text(calls[0] + "\n")
        (bridge / "bridge-nf-call-ip6tables").write_text(calls[1] + "\n")
    return sys_root, proc_root


@pytest.mark.parametrize(
    ("bridge_ports", "calls", "expected"),
    [
        pytest.param(None, None, [], id="routed-node-no-bridge"),
        pytest.param([], None, [], id="bridge-without-ports"),
        pytest.param(["veth1"], ("1", "1"), [], id="bridge-with-netfilter"),
        pytest.param(["veth1"], None, ["br_netfilter module is not loaded"], id="no-module"),
        pytest.param(["veth1"], ("0", "1"), ["bridge-nf-call-iptables is 0"], id="ipv4-calls-off"),
        pytest.param(
            ["veth1"],
            ("0", "0"),
            ["bridge-nf-call-iptables is 0", "bridge-nf-call-ip6tables is 0"],
            id="both-off",
        ),
    ],
)
def test_bridged_traffic_problems(
    tmp_path: Path,
    bridge_ports: list[str] | None,
    calls: tuple[str, str] | None,
    expected: list[str],
) -> None:
    problems = bridged_traffic_problems(*tree(tmp_path, bridge_ports, calls))
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem and "cni0" in problem
