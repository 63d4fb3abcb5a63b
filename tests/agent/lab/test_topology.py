"""Tests of agent/lab/netns.py and agent/lab/topology.py.

The plan builders are pure and tested without root. Tests marked ``root`` build real namespaces
under a random ``npt-`` prefix and always remove them, also when they fail.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from agent.lab import netns
from agent.lab.topology import (
    GATEWAY_V4,
    GATEWAY_V6,
    ExternalAttachment,
    IpBatch,
    NodeSpec,
    Plan,
    PodAttachment,
    Sysctls,
    activate_pod,
    activate_pod_plan,
    attach_external,
    attach_external_plan,
    attach_pod,
    attach_pod_plan,
    create_node,
    create_node_plan,
    detach_external,
    detach_pod,
    list_namespaces,
    remove_namespaces,
    veth_name,
)

# -- builders -----------------------------------------------------------------------------------


def make_node(netns_name: str = "lab-node", v6: bool = True) -> NodeSpec:
    return NodeSpec(
        name="node-1",
        netns=netns_name,
        pod_cidr_v4="10.244.1.0/24",
        pod_cidr_v6="fd00:10:244:1::/64" if v6 else None,
        node_ip_v4="172.18.0.2",
        node_ip_v6="fd00:172:18::2" if v6 else None,
    )


def make_pod(
    index: int = 0, lab: str = "lab-", ipv4: str | None = "", ipv6: str | None = ""
) -> PodAttachment:
    name = f"pod-{chr(ord('a') + index)}"
    key = f"default/{name}"
    return PodAttachment(
        key=key,
        netns=f"{lab}{name}",
        node_veth=veth_name(lab, key),
        ipv4=f"10.244.1.{10 + index}" if ipv4 == "" else ipv4,
        ipv6=f"fd00:10:244:1::{10 + index:x}" if ipv6 == "" else ipv6,
    )


def make_external(lab: str = "lab-", addresses: tuple[str, ...] = ()) -> ExternalAttachment:
    return ExternalAttachment(
        name="web",
        netns=f"{lab}ext-web",
        node_veth=veth_name(lab, "web", prefix="nx"),
        addresses=addresses or ("203.0.113.10", "2001:db8::10"),
    )


def commands_in(plan: Plan, netns_name: str | None) -> list[str]:
    return [c for s in plan if isinstance(s, IpBatch) and s.netns == netns_name for c in s.commands]


def sysctls_in(plan: Plan, netns_name: str) -> dict[str, str]:
    return {
        k: v
        for s in plan
        if isinstance(s, Sysctls) and s.netns == netns_name
        for k, v in s.settings
    }


# -- pure: names and validation -----------------------------------------------------------------


def test_veth_name_is_short_stable_and_distinct() -> None:
    name = veth_name("npa-demo-", "default/a-pod-with-a-rather-long-name")
    assert name.startswith("np") and len(name) == 10
    assert name == veth_name("npa-demo-", "default/a-pod-with-a-rather-long-name")
    assert name != veth_name("npa-other-", "default/a-pod-with-a-rather-long-name")
    assert name != veth_name("npa-demo-", "default/another")
    assert veth_name("npa-demo-", "web", prefix="nx").startswith("nx")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"netns": "a/b"}, id="slash-in-netns"),
        pytest.param({"netns": ""}, id="empty-netns"),
        pytest.param({"pod_cidr_v4": "fd00::/64"}, id="v6-cidr-as-v4"),
        pytest.param({"pod_cidr_v4": "10.244.1.1/24"}, id="cidr-with-host-bits"),
        pytest.param({"node_ip_v4": "fd00::1"}, id="v6-node-ip-as-v4"),
        pytest.param({"node_ip_v6": "10.0.0.1"}, id="v4-node-ip-as-v6"),
        pytest.param({"pod_cidr_v6": "not-a-cidr"}, id="garbage-cidr"),
    ],
)
def test_node_spec_rejects(kwargs: dict[str, str]) -> None:
    fields = {
        "name": "n",
        "netns": "lab-node",
        "pod_cidr_v4": "10.244.1.0/24",
        "pod_cidr_v6": "fd00:10:244:1::/64",
        "node_ip_v4": "172.18.0.2",
        "node_ip_v6": "fd00:172:18::2",
    }
    with pytest.raises(ValueError):
        NodeSpec(**(fields | kwargs))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"node_veth": "a-name-longer-than-15"}, id="veth-too-long"),
        pytest.param({"node_veth": "np.dots"}, id="veth-with-dot"),
        pytest.param({"node_veth": ""}, id="veth-empty"),
        pytest.param({"ipv4": None, "ipv6": None}, id="no-address"),
        pytest.param({"ipv4": "fd00::1"}, id="v6-as-v4"),
        pytest.param({"ipv6": "10.0.0.1"}, id="v4-as-v6"),
        pytest.param({"netns": "two words"}, id="space-in-netns"),
    ],
)
def test_pod_attachment_rejects(kwargs: dict[str, str | None]) -> None:
    fields: dict[str, str | None] = {
        "key": "default/a",
        "netns": "lab-a",
        "node_veth": "np01234567",
        "ipv4": "10.244.1.10",
        "ipv6": "fd00:10:244:1::a",
    }
    with pytest.raises(ValueError):
        PodAttachment(**(fields | kwargs))  # type: ignore[arg-type]


def test_external_attachment_rejects_no_or_bad_addresses() -> None:
    with pytest.raises(ValueError):
        ExternalAttachment("web", "lab-ext", "nx01234567", ())
    with pytest.raises(ValueError):
        ExternalAttachment("web", "lab-ext", "nx01234567", ("example.com",))


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "tab\there", "nl\n"])
def test_netns_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        netns.netns_path(name)


def test_netns_path() -> None:
    assert netns.netns_path("npt-x-node") == "/run/netns/npt-x-node"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("link add x type veth", id="link"),
        pytest.param("addr add 10.0.0.1/32 dev lo", id="addr"),
        pytest.param("route add default via 10.0.0.1", id="route"),
        pytest.param("netns exec x true", id="netns-exec"),
        pytest.param("netns add a\nlink del eth0", id="smuggled-line"),
    ],
)
def test_ip_batch_refuses_anything_but_netns_add_del_outside_a_namespace(command: str) -> None:
    # Raises before any process runs, so this needs no root and cannot touch the machine.
    with pytest.raises(ValueError):
        netns.ip_batch([command], None)


# -- pure: plans --------------------------------------------------------------------------------


def all_plans() -> list[Plan]:
    node, pod = make_node(), make_pod()
    return [
        create_node_plan(node),
        attach_pod_plan(node, pod, link_up=True),
        attach_pod_plan(node, pod, link_up=False),
        activate_pod_plan(node, pod),
        attach_external_plan(node, make_external()),
    ]


@pytest.mark.parametrize("plan", all_plans(), ids=["node", "pod-up", "pod-down", "act", "ext"])
def test_plans_never_configure_the_root_namespace(plan: Plan) -> None:
    for step in plan:
        if isinstance(step, IpBatch) and step.netns is None:
            assert all(c.startswith(("netns add ", "netns del ")) for c in step.commands)
        assert step.netns is None or step.netns.startswith("lab-")


def test_create_node_plan() -> None:
    plan = create_node_plan(make_node())
    assert plan[0] == IpBatch(None, ("netns add lab-node",))
    settings = sysctls_in(plan, "lab-node")
    assert settings["net.ipv4.ip_forward"] == "1"
    assert settings["net.ipv6.conf.all.forwarding"] == "1"
    assert settings["net.ipv4.conf.all.rp_filter"] == "0"
    assert settings["net.ipv6.conf.default.accept_dad"] == "0"
    assert "net.netfilter.nf_conntrack_tcp_loose" not in settings
    assert commands_in(plan, "lab-node") == [
        "link set lo up",
        "addr add 172.18.0.2/32 dev lo",
        "addr add fd00:172:18::2/128 dev lo",
    ]


def test_create_node_plan_ipv4_only() -> None:
    commands = commands_in(create_node_plan(make_node(v6=False)), "lab-node")
    assert not any(":" in c for c in commands)


def test_attach_pod_plan_wires_both_sides() -> None:
    node, pod = make_node(), make_pod()
    plan = attach_pod_plan(node, pod, link_up=True)
    veth = pod.node_veth
    assert commands_in(plan, None) == ["netns add lab-pod-a"]
    assert sysctls_in(plan, "lab-pod-a")["net.ipv6.conf.default.accept_dad"] == "0"
    assert sysctls_in(plan, "lab-node") == {f"net.ipv4.conf.{veth}.proxy_arp": "1"}
    assert commands_in(plan, "lab-node") == [
        f"link add {veth} type veth peer name eth0 netns lab-pod-a",
        f"addr add {GATEWAY_V4}/32 dev {veth}",
        f"addr add {GATEWAY_V6}/64 dev {veth} nodad",
        f"link set {veth} up",
        f"route add 10.244.1.10/32 dev {veth} src 172.18.0.2",
        f"route add fd00:10:244:1::a/128 dev {veth} src fd00:172:18::2",
    ]
    assert commands_in(plan, "lab-pod-a") == [
        "link set lo up",
        "link set eth0 up",
        "addr add 10.244.1.10/32 dev eth0",
        "addr add fd00:10:244:1::a/128 dev eth0 nodad",
        "route add 0.0.0.0/0 via 169.254.1.1 dev eth0 onlink",
        "route add ::/0 via fe80::1 dev eth0 onlink",
    ]
    # The sysctls of the pod come before its eth0 exists, so eth0 inherits conf/default.
    kinds = [(type(s).__name__, s.netns) for s in plan]
    assert kinds.index(("Sysctls", "lab-pod-a")) < kinds.index(("IpBatch", "lab-node"))


def test_attach_pod_plan_with_link_down_leaves_the_node_side_unrouted() -> None:
    node, pod = make_node(), make_pod()
    down = attach_pod_plan(node, pod, link_up=False)
    assert not any("route" in c or " up" in c for c in commands_in(down, "lab-node"))
    assert down + activate_pod_plan(node, pod) == attach_pod_plan(node, pod, link_up=True)
    assert (
        commands_in(activate_pod_plan(node, pod), "lab-node")[0] == f"link set {pod.node_veth} up"
    )


def test_single_stack_pods_get_single_stack_routes() -> None:
    node = make_node()
    v4 = attach_pod_plan(node, make_pod(ipv6=None))
    assert not any(":" in c for c in commands_in(v4, "lab-pod-a") + commands_in(v4, "lab-node")[3:])
    v6 = attach_pod_plan(node, make_pod(ipv4=None))
    assert not any("0.0.0.0/0" in c or "/32 dev" in c for c in commands_in(v6, "lab-pod-a"))


def test_ipv6_pod_on_ipv4_only_node_routes_without_src() -> None:
    commands = commands_in(activate_pod_plan(make_node(v6=False), make_pod()), "lab-node")
    assert commands[-1].endswith("/128 dev " + make_pod().node_veth)


def test_attach_external_plan_routes_every_address() -> None:
    ext = make_external(addresses=("203.0.113.10", "198.51.100.7", "2001:db8::10"))
    node_commands = commands_in(attach_external_plan(make_node(), ext), "lab-node")
    routes = [c for c in node_commands if c.startswith("route add")]
    assert routes == [
        f"route add 203.0.113.10/32 dev {ext.node_veth} src 172.18.0.2",
        f"route add 198.51.100.7/32 dev {ext.node_veth} src 172.18.0.2",
        f"route add 2001:db8::10/128 dev {ext.node_veth} src fd00:172:18::2",
    ]


@pytest.mark.parametrize("name", ["", "..", "a/b", "a b", "a\n"], ids=repr)
def test_remove_namespaces_refuses_unusable_names(name: str) -> None:
    with pytest.raises(ValueError):
        remove_namespaces([name])


def under(prefix: str) -> list[str]:
    """The test's own namespaces (its prefix is random, so no one else's start with it)."""
    return [name for name in list_namespaces() if name.startswith(prefix)]


# -- root: real namespaces ----------------------------------------------------------------------


@dataclass
class LabNet:
    """A built lab: node, pods and one external host, all under ``prefix``."""

    prefix: str
    node: NodeSpec
    pods: list[PodAttachment]
    external: ExternalAttachment


@contextmanager
def built_lab(
    pod_count: int = 3,
    external_addresses: tuple[str, ...] = ("203.0.113.10", "2001:db8::10"),
) -> Iterator[LabNet]:
    """Node + ``pod_count`` pods + one external host under a fresh ``npt-`` prefix.

    Everything under the prefix is removed on exit, also when building or the test failed.
    """
    prefix = f"npt-{secrets.token_hex(3)}-"
    node = make_node(f"{prefix}node")
    try:
        create_node(node)
        pods = [make_pod(i, lab=prefix) for i in range(pod_count)]
        for pod in pods:
            attach_pod(node, pod)
        external = make_external(lab=prefix, addresses=external_addresses)
        attach_external(node, external)
        yield LabNet(prefix, node, pods, external)
    finally:
        remove_namespaces(under(prefix))
        assert under(prefix) == []


def ping(source_netns: str, address: str) -> bool:
    family = "-6" if ":" in address else "-4"
    proc = netns.run(
        ["ping", family, "-c", "1", "-W", "1", address], netns=source_netns, check=False
    )
    return proc.returncode == 0


@pytest.fixture(scope="module")
def lab() -> Iterator[LabNet]:
    with built_lab() as built:
        yield built


@pytest.mark.root
@pytest.mark.parametrize("family", [4, 6])
def test_pods_reach_each_other_the_node_and_externals_through_the_node(
    lab: LabNet, family: int
) -> None:
    a, b, _ = lab.pods
    a_ip, b_ip = (str(a.ipv4), str(b.ipv4)) if family == 4 else (str(a.ipv6), str(b.ipv6))
    node_ip = lab.node.node_ip_v4 if family == 4 else lab.node.node_ip_v6
    external_ip = next(x for x in lab.external.addresses if (":" in x) == (family == 6))
    assert ping(a.netns, b_ip)
    assert ping(b.netns, a_ip)
    assert ping(a.netns, str(node_ip))
    assert ping(lab.node.netns, a_ip)
    assert ping(a.netns, external_ip)
    assert ping(lab.external.netns, b_ip)


@pytest.mark.root
def test_the_node_talks_to_pods_from_its_own_address(lab: LabNet) -> None:
    pod = lab.pods[0]
    for address, node_ip in ((pod.ipv4, lab.node.node_ip_v4), (pod.ipv6, lab.node.node_ip_v6)):
        route = netns.run(["ip", "-n", lab.node.netns, "route", "get", str(address)]).stdout
        assert f"src {node_ip}" in route


@pytest.mark.root
def test_forwarded_packets_cross_the_node(lab: LabNet) -> None:
    # The TTL drops by one on the way: the node routes, nothing bridges.
    a, b, _ = lab.pods
    out = netns.run(["ping", "-c", "1", "-W", "1", str(b.ipv4)], netns=a.netns).stdout
    assert "ttl=63" in out


@pytest.mark.root
def test_entered_switches_only_the_calling_thread_and_always_returns(lab: LabNet) -> None:
    pod = lab.pods[0]
    home = netns.thread_netns_id()
    # A thread that exists before the switch stays where it is (setns acts on the caller only);
    # one created inside would inherit the caller's namespace, as clone() copies it.
    look, seen = threading.Event(), list[int]()

    def report_where_i_am() -> None:
        look.wait(5)
        seen.append(netns.thread_netns_id())

    bystander = threading.Thread(target=report_where_i_am)
    bystander.start()
    with netns.entered(pod.netns):
        inside = netns.thread_netns_id()
        look.set()
        bystander.join()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert inside != home
    assert seen == [home]
    assert netns.thread_netns_id() == home
    try:
        # Created inside, used outside: the socket still lives in the pod.
        sock.connect((str(lab.pods[1].ipv4), 9))
        assert sock.getsockname()[0] == pod.ipv4
    finally:
        sock.close()
    with pytest.raises(RuntimeError), netns.entered(pod.netns):
        raise RuntimeError("boom")
    assert netns.thread_netns_id() == home


@pytest.mark.root
def test_a_pod_attached_link_down_is_cut_off_until_activated(lab: LabNet) -> None:
    late = make_pod(5, lab=lab.prefix)
    attach_pod(lab.node, late, link_up=False)
    try:
        assert not ping(lab.pods[0].netns, str(late.ipv4))
        activate_pod(lab.node, late)
        assert ping(lab.pods[0].netns, str(late.ipv4))
        assert ping(lab.pods[0].netns, str(late.ipv6))
    finally:
        detach_pod(late, node=lab.node)
    assert not netns.netns_exists(late.netns)
    links = netns.run(["ip", "-n", lab.node.netns, "-o", "link"]).stdout
    assert late.node_veth not in links
    routes = netns.run(["ip", "-n", lab.node.netns, "route"]).stdout
    assert str(late.ipv4) not in routes


@pytest.mark.root
def test_detach_pod_without_node_still_removes_the_veth(lab: LabNet) -> None:
    extra = make_pod(6, lab=lab.prefix)
    attach_pod(lab.node, extra)
    detach_pod(extra)
    assert not netns.netns_exists(extra.netns)
    assert extra.node_veth not in netns.run(["ip", "-n", lab.node.netns, "-o", "link"]).stdout


@pytest.mark.root
def test_detach_external(lab: LabNet) -> None:
    other = ExternalAttachment(
        "other", f"{lab.prefix}ext-other", veth_name(lab.prefix, "other", "nx"), ("198.51.100.7",)
    )
    attach_external(lab.node, other)
    assert ping(lab.pods[0].netns, "198.51.100.7")
    detach_external(lab.node, other)
    assert not netns.netns_exists(other.netns)
    assert not ping(lab.pods[0].netns, "198.51.100.7")


@pytest.mark.root
def test_failed_attach_leaves_nothing_behind(lab: LabNet) -> None:
    clash = PodAttachment(  # same veth name as pod-a: the kernel refuses the second one
        "default/clash", f"{lab.prefix}clash", lab.pods[0].node_veth, "10.244.1.99", None
    )
    with pytest.raises(netns.CommandError, match="exists"):
        attach_pod(lab.node, clash)
    assert not netns.netns_exists(clash.netns)
    assert ping(lab.node.netns, str(lab.pods[0].ipv4))  # the original is untouched


@pytest.mark.root
def test_attaching_over_an_existing_namespace_leaves_that_namespace_alone(lab: LabNet) -> None:
    squatter = f"{lab.prefix}squat"
    netns.ip_batch([f"netns add {squatter}"], None)
    try:
        pod = PodAttachment("default/squat", squatter, "npsquat0", "10.244.1.98", None)
        with pytest.raises(netns.CommandError, match="exists"):
            attach_pod(lab.node, pod)
        assert netns.netns_exists(squatter), "a failed attach removed a namespace not its own"
    finally:
        remove_namespaces([squatter])


@pytest.mark.root
def test_remove_namespaces_deletes_exactly_the_named_ones_and_stops_their_processes() -> None:
    prefix = f"npt-{secrets.token_hex(3)}-"
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        node = make_node(f"{prefix}node")
        create_node(node)
        attach_pod(node, make_pod(0, lab=prefix))
        # A namespace whose name starts with another's (labs "relq" and "relq-x"): it stays.
        netns.ip_batch([f"netns add {prefix}node-x"], None)
        sleeper = subprocess.Popen(["ip", "netns", "exec", f"{prefix}pod-a", "sleep", "60"])
        assert under(prefix) == [f"{prefix}node", f"{prefix}node-x", f"{prefix}pod-a"]
        # Wait until the sleeper has entered the namespace (ip netns exec execs sleep).
        for _ in range(100):
            if sleeper.pid in netns.pids_in(f"{prefix}pod-a"):
                break
            threading.Event().wait(0.02)
        removed = remove_namespaces([f"{prefix}node", f"{prefix}pod-a", f"{prefix}gone"])
        assert removed == [f"{prefix}node", f"{prefix}pod-a"]
        assert under(prefix) == [f"{prefix}node-x"]
        assert sleeper.wait(timeout=5) != 0  # terminated by a signal
        assert remove_namespaces([f"{prefix}node", f"{prefix}pod-a"]) == []
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        remove_namespaces(under(prefix))
