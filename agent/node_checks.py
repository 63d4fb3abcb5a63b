"""Checks of the node the agent runs on, for set-ups where the firewall would not see traffic.

Bridged pod networks (minikube's ``--cni=bridge``, the reference ``bridge`` CNI plugin) switch
same-node pod traffic inside the bridge: it never reaches the iptables FORWARD chain unless the
``br_netfilter`` module is loaded and ``net.bridge.bridge-nf-call-iptables`` (and ``-ip6tables``)
is 1 (kernel Documentation/networking/ip-sysctl.rst, "bridge-nf-call-iptables"). The agent cannot
enforce what it never sees, so it says so at start-up instead of enforcing silently nothing.
"""

from __future__ import annotations

from pathlib import Path


def bridged_traffic_problems(
    sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")
) -> list[str]:
    """What keeps bridged pod traffic from iptables in this network namespace ([] if nothing).

    Reads sysfs and procfs only (paths are parameters so tests can point at a prepared tree).
    """
    bridges = []
    net = sys_root / "class" / "net"
    if net.is_dir():
        for device in sorted(net.iterdir()):
            ports = device / "brif"
            if ports.is_dir() and any(ports.iterdir()):
                bridges.append(device.name)
    if not bridges:
        return []
    problems = []
    names = ", ".join(bridges)
    for family in ("iptables", "ip6tables"):
        setting = proc_root / "sys" / "net" / "bridge" / f"bridge-nf-call-{family}"
        if not setting.exists():
            return [
                f"bridges with ports ({names}) but the br_netfilter module is not loaded: bridged "
                "pod-to-pod traffic bypasses iptables and is NOT enforced; run "
                "'modprobe br_netfilter' on the node"
            ]
        if setting.read_text().strip() != "1":
            problems.append(
                f"bridges with ports ({names}) but net.bridge.bridge-nf-call-{family} is "
                f"{setting.read_text().strip()}: bridged pod-to-pod traffic bypasses {family} and "
                f"is NOT enforced; set it to 1 on the node"
            )
    return problems
