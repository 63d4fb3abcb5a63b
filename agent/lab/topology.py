"""Lab topology: a node namespace that routes pod and external-host namespaces over veth pairs.

This is Calico's routed model on one machine (REFERENCE.md §2):

* every pod (and every simulated external host) is a network namespace with one interface,
  ``eth0``, holding its addresses as /32 and /128, and a default route via ``169.254.1.1`` /
  ``fe80::1`` *on-link*, so the pod sends everything to the node whatever the destination;
* the node end of each veth holds ``169.254.1.1/32`` (with ``proxy_arp`` on) and ``fe80::1/64``,
  and the node namespace has one /32 and one /128 route per pod pointing at that veth, with the
  node's own address as preferred source, so node-originated traffic carries the node address;
* the node namespace forwards (IPv4 and IPv6); the agent enforces there.

The node addresses live on the node namespace's ``lo``: this kernel is built without the
``dummy`` link type (CONFIG_DUMMY is not set), and an address on ``lo`` is just as local.

The module is split the sans-I/O way: ``*_plan`` functions are pure and return the commands a
step needs as a :data:`Plan` (unit-testable without root); ``apply`` and the verbs without
``_plan`` run them. Nothing here touches the root namespace's networking: every ``ip`` command
runs with ``-n NS`` except ``netns add/del``, and sysctls run through ``ip netns exec NS``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass

from agent.lab import netns as _netns

GATEWAY_V4 = "169.254.1.1"
"""The pods' IPv4 next hop: link-local, the same on every node-side veth (as in Calico)."""

GATEWAY_V6 = "fe80::1"
"""The pods' IPv6 next hop: a link-local address on every node-side veth."""

LEAF_IFNAME = "eth0"
"""The single interface inside a pod or external-host namespace."""

POD_VETH_PREFIX = "np"
"""How the node-side veth of every pod starts (``veth_name``): the agent's ``--pod-interface``."""

NODE_ADDRESS_DEVICE = "lo"
"""Where the node's own addresses live inside the node namespace (see the module docstring)."""

MAX_IFNAME_LEN = 15
"""IFNAMSIZ - 1: the kernel's limit on interface names."""

_IFNAME_RE = re.compile(r"[A-Za-z0-9_-]{1,15}")
# No dots: sysctl keys such as net.ipv4.conf.IFNAME.proxy_arp use dots as separators.

NODE_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.forwarding", "1"),
    # A new namespace copies its IPv4 conf/all and conf/default from the root namespace
    # (net.core.devconf_inherit_init_net=0), so rp_filter could be anything: pin it off. Reverse
    # path filtering would also drop replies whose source the node reaches over another veth.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    # Duplicate address detection keeps a new IPv6 address "tentative" (unusable as a source)
    # for about a second; the kernel skips DAD only when both all.accept_dad and the interface's
    # accept_dad are below 1. New interfaces copy conf/default.
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
)
"""Sysctls of the node namespace, set before any interface exists so new ones inherit them.
net.netfilter.nf_conntrack_tcp_loose is deliberately left at its default."""

LEAF_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
)
"""Sysctls of a pod or external-host namespace, set before its ``eth0`` arrives."""


def _check_ifname(name: str, what: str) -> None:
    if not _IFNAME_RE.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not a usable interface name "
            f"(1-{MAX_IFNAME_LEN} characters of letters, digits, '_' and '-')"
        )


def _check_ip(value: str, version: int, what: str) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if address.version != version:
        raise ValueError(f"{what}: {value!r} is not an IPv{version} address")


def _check_cidr(value: str, version: int, what: str) -> None:
    try:
        network = ipaddress.ip_network(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if network.version != version:
        raise ValueError(f"{what}: {value!r} is not an IPv{version} network")


def veth_name(lab: str, key: str, prefix: str = POD_VETH_PREFIX) -> str:
    """A stable node-side veth name for ``key`` in lab ``lab``: ``prefix`` + 8 hex digits.

    Interface names are limited to 15 characters and pod keys are not, so the name is a hash
    of the lab name and the key (32 bits: collisions are negligible at lab sizes, and the
    kernel would refuse a duplicate name loudly). Use ``"np"`` for pods, ``"nx"`` for externals.
    """
    digest = hashlib.sha256(f"{lab}\0{key}".encode()).hexdigest()[:8]
    name = f"{prefix}{digest}"
    _check_ifname(name, "veth name")
    return name


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node: one network namespace that routes its pods and runs the agent."""

    name: str
    """The node's name as pods' ``spec.nodeName`` gives it."""
    netns: str
    """Name of the node's network namespace (under /run/netns)."""
    pod_cidr_v4: str
    """The IPv4 range pod addresses of this node come from (for the allocator; informative)."""
    pod_cidr_v6: str | None
    """The IPv6 range of this node's pods, or None for an IPv4-only node."""
    node_ip_v4: str
    """The node's own IPv4 address: held on the node's ``lo``, source of node-to-pod traffic."""
    node_ip_v6: str | None
    """The node's own IPv6 address, or None."""

    def __post_init__(self) -> None:
        _netns.validate_netns_name(self.netns)
        _check_cidr(self.pod_cidr_v4, 4, "pod_cidr_v4")
        _check_ip(self.node_ip_v4, 4, "node_ip_v4")
        if self.pod_cidr_v6 is not None:
            _check_cidr(self.pod_cidr_v6, 6, "pod_cidr_v6")
        if self.node_ip_v6 is not None:
            _check_ip(self.node_ip_v6, 6, "node_ip_v6")


@dataclass(frozen=True, slots=True)
class PodAttachment:
    """A pod's network namespace and how it hangs off its node."""

    key: str
    """The pod's ``namespace/name``."""
    netns: str
    """Name of the pod's network namespace."""
    node_veth: str
    """The node-side veth's name (at most 15 characters; see :func:`veth_name`)."""
    ipv4: str | None
    """The pod's IPv4 address, or None for an IPv6-only pod."""
    ipv6: str | None
    """The pod's IPv6 address, or None for an IPv4-only pod."""

    def __post_init__(self) -> None:
        _netns.validate_netns_name(self.netns)
        _check_ifname(self.node_veth, "node_veth")
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError(f"pod {self.key!r} needs an IPv4 or an IPv6 address")
        if self.ipv4 is not None:
            _check_ip(self.ipv4, 4, f"pod {self.key!r} ipv4")
        if self.ipv6 is not None:
            _check_ip(self.ipv6, 6, f"pod {self.key!r} ipv6")

    @property
    def addresses(self) -> tuple[str, ...]:
        """The pod's addresses, IPv4 first."""
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)


@dataclass(frozen=True, slots=True)
class ExternalAttachment:
    """A simulated host outside the cluster, routed through the node like a pod.

    Give it documentation addresses (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
    2001:db8::/32) so policies' ipBlocks have something realistic to match.
    """

    name: str
    """A name for people and probe matrices."""
    netns: str
    """Name of the host's network namespace."""
    node_veth: str
    """The node-side veth's name (see :func:`veth_name`, prefix ``"nx"``)."""
    addresses: tuple[str, ...]
    """All of the host's addresses (IPv4 and/or IPv6), each routed to it by the node."""

    def __post_init__(self) -> None:
        _netns.validate_netns_name(self.netns)
        _check_ifname(self.node_veth, "node_veth")
        if not self.addresses:
            raise ValueError(f"external host {self.name!r} needs at least one address")
        for address in self.addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError as exc:
                raise ValueError(f"external host {self.name!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class IpBatch:
    """Step: ``ip`` commands (without the leading ``ip``) run as one ``ip [-n NETNS] -batch -``."""

    netns: str | None
    """Namespace to run in; None only for ``netns add/del`` lines."""
    commands: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sysctls:
    """Step: ``ip netns exec NETNS sysctl -q -w KEY=VALUE ...``."""

    netns: str
    settings: tuple[tuple[str, str], ...]


Step = IpBatch | Sysctls
Plan = tuple[Step, ...]
"""Steps run in order; a failing step stops the plan."""


def apply(plan: Plan) -> None:
    """Run a plan's steps in order; raises :class:`agent.lab.netns.CommandError` on failure."""
    for step in plan:
        if isinstance(step, IpBatch):
            _netns.ip_batch(step.commands, step.netns)
        else:
            args = [f"{key}={value}" for key, value in step.settings]
            _netns.run(["sysctl", "-q", "-w", *args], netns=step.netns)


# -- node ---------------------------------------------------------------------------------------


def create_node_plan(node: NodeSpec) -> Plan:
    """Commands that create the node namespace: forwarding on, node addresses on ``lo``."""
    addresses = [f"addr add {node.node_ip_v4}/32 dev {NODE_ADDRESS_DEVICE}"]
    if node.node_ip_v6 is not None:
        # No DAD on loopback, so no nodad needed.
        addresses.append(f"addr add {node.node_ip_v6}/128 dev {NODE_ADDRESS_DEVICE}")
    return (
        IpBatch(None, (f"netns add {node.netns}",)),
        Sysctls(node.netns, NODE_SYSCTLS),
        IpBatch(node.netns, (f"link set {NODE_ADDRESS_DEVICE} up", *addresses)),
    )


def create_node(node: NodeSpec) -> None:
    """Create the node namespace; on failure remove what was made and re-raise."""
    try:
        apply(create_node_plan(node))
    except BaseException:
        with suppress(Exception):
            delete_node(node)
        raise


def delete_node(node: NodeSpec) -> None:
    """Remove the node namespace after stopping every process left in it (the agent, if any).

    Its veths go with it, which also removes the peers in pod namespaces; the pod namespaces
    themselves stay (use :func:`detach_pod` or :func:`remove_namespaces`).
    """
    _remove_netns(node.netns)


# -- pods and external hosts (leaves) -----------------------------------------------------------


def _leaf_attach_plan(
    node: NodeSpec, netns: str, node_veth: str, addresses: Sequence[str]
) -> list[Step]:
    """Everything except bringing the node side up and routing to the leaf (see activation)."""
    versions = {ipaddress.ip_address(a).version for a in addresses}
    leaf_commands = ["link set lo up", f"link set {LEAF_IFNAME} up"]
    for address in addresses:
        if ipaddress.ip_address(address).version == 4:
            leaf_commands.append(f"addr add {address}/32 dev {LEAF_IFNAME}")
        else:
            # nodad: usable at once instead of "tentative" for a second (accept_dad=0 too).
            leaf_commands.append(f"addr add {address}/128 dev {LEAF_IFNAME} nodad")
    # "onlink": the gateway is in no subnet of the leaf (it holds only /32 and /128), so tell the
    # kernel to treat it as directly reachable on eth0. The leaf side must be up for this.
    if 4 in versions:
        leaf_commands.append(f"route add 0.0.0.0/0 via {GATEWAY_V4} dev {LEAF_IFNAME} onlink")
    if 6 in versions:
        leaf_commands.append(f"route add ::/0 via {GATEWAY_V6} dev {LEAF_IFNAME} onlink")
    return [
        IpBatch(None, (f"netns add {netns}",)),
        Sysctls(netns, LEAF_SYSCTLS),
        # Both ends are created directly in lab namespaces: the command runs inside the node
        # namespace and "netns" places the peer straight into the leaf's.
        IpBatch(
            node.netns,
            (
                f"link add {node_veth} type veth peer name {LEAF_IFNAME} netns {netns}",
                f"addr add {GATEWAY_V4}/32 dev {node_veth}",
                f"addr add {GATEWAY_V6}/64 dev {node_veth} nodad",
            ),
        ),
        # Holding 169.254.1.1 already makes the node answer the leaf's ARP for its gateway.
        # proxy_arp is what Calico uses instead (the kernel answers ARP for any target it routes
        # out of a *different* interface); it is kept as in the recipe verified in REFERENCE.md
        # §2, and it also answers a leaf that ARPs for another target if its routes change.
        Sysctls(node.netns, ((f"net.ipv4.conf.{node_veth}.proxy_arp", "1"),)),
        IpBatch(netns, tuple(leaf_commands)),
    ]


def _leaf_activate_plan(node: NodeSpec, node_veth: str, addresses: Sequence[str]) -> list[Step]:
    """Bring the node side up and add the host routes to the leaf.

    The routes come after ``link set up`` because the kernel refuses a route whose device is
    down ("Device for nexthop is not up"). ``src`` makes node-originated traffic to the leaf use
    the node's address rather than 169.254.1.1.
    """
    commands = [f"link set {node_veth} up"]
    for address in addresses:
        if ipaddress.ip_address(address).version == 4:
            src = f" src {node.node_ip_v4}"
            commands.append(f"route add {address}/32 dev {node_veth}{src}")
        else:
            src = f" src {node.node_ip_v6}" if node.node_ip_v6 is not None else ""
            commands.append(f"route add {address}/128 dev {node_veth}{src}")
    return [IpBatch(node.netns, tuple(commands))]


def attach_pod_plan(node: NodeSpec, pod: PodAttachment, link_up: bool = True) -> Plan:
    """Commands that create the pod namespace and wire it to the node.

    With ``link_up=False`` the node end stays down and unrouted: no packet can flow until
    :func:`activate_pod` (so the pod can be published to the agent first).
    """
    steps = _leaf_attach_plan(node, pod.netns, pod.node_veth, pod.addresses)
    if link_up:
        steps += _leaf_activate_plan(node, pod.node_veth, pod.addresses)
    return tuple(steps)


def activate_pod_plan(node: NodeSpec, pod: PodAttachment) -> Plan:
    """Commands that let traffic flow to and from a pod attached with ``link_up=False``."""
    return tuple(_leaf_activate_plan(node, pod.node_veth, pod.addresses))


def attach_pod(node: NodeSpec, pod: PodAttachment, link_up: bool = True) -> None:
    """Create and wire the pod namespace; on failure remove it again and re-raise."""
    _apply_leaf_plan(attach_pod_plan(node, pod, link_up), pod.netns, pod.node_veth)


def activate_pod(node: NodeSpec, pod: PodAttachment) -> None:
    """Bring the node side of the pod's veth up and route the pod's addresses to it."""
    apply(activate_pod_plan(node, pod))


def detach_pod(pod: PodAttachment, *, node: NodeSpec | None = None) -> None:
    """Remove the pod: stop the processes left in it, delete its veth and its namespace.

    The node's routes to the pod go with the veth. With ``node`` it also checks that the
    node-side veth is really gone (so a pod re-created under the same key can be wired at once).
    """
    _detach_leaf(node, pod.netns, pod.node_veth)


def attach_external_plan(node: NodeSpec, ext: ExternalAttachment) -> Plan:
    """Commands that create an external host namespace routed through the node (always up)."""
    steps = _leaf_attach_plan(node, ext.netns, ext.node_veth, ext.addresses)
    steps += _leaf_activate_plan(node, ext.node_veth, ext.addresses)
    return tuple(steps)


def attach_external(node: NodeSpec, ext: ExternalAttachment) -> None:
    """Create and wire an external host; on failure remove it again and re-raise."""
    _apply_leaf_plan(attach_external_plan(node, ext), ext.netns, ext.node_veth)


def _apply_leaf_plan(plan: Plan, netns: str, node_veth: str) -> None:
    """Run a leaf's attach plan; on failure remove what *this call* created, and only that.

    The first step creates the namespace (``netns add``): when it fails, the name belongs to
    someone else (it existed already) and nothing is touched. After it, the namespace is ours and
    a failure removes it again with its veth."""
    first, rest = plan[0], plan[1:]
    apply((first,))
    try:
        apply(rest)
    except BaseException:
        with suppress(Exception):
            _detach_leaf(None, netns, node_veth)
        raise


def detach_external(node: NodeSpec, ext: ExternalAttachment) -> None:
    """Remove an external host (processes, veth, namespace); see :func:`detach_pod`."""
    _detach_leaf(node, ext.netns, ext.node_veth)


def _detach_leaf(node: NodeSpec | None, netns: str, node_veth: str) -> None:
    # Delete the leaf's eth0 from inside the leaf: removing one end of a veth removes the pair
    # synchronously, whereas "ip netns del" only drops a reference and the kernel tears the
    # namespace down later (or never, while a socket or process still holds it). Going through
    # the leaf's own namespace also guarantees it can only ever hit this leaf's veth, never a
    # node-side veth of the same name that belongs to someone else.
    if _netns.netns_exists(netns):
        _netns.kill_pids_in(netns)
        _netns.run(["ip", "-n", netns, "link", "del", LEAF_IFNAME], check=False)
        _netns.ip_batch([f"netns del {netns}"], None)
    if node is not None and _netns.netns_exists(node.netns):
        probe = ["ip", "-n", node.netns, "link", "show", "dev", node_veth]
        if _netns.run(probe, check=False).returncode == 0:
            raise _netns.CommandError(probe, 0, f"{node_veth} is still there after detaching")


def _remove_netns(name: str) -> None:
    if not _netns.netns_exists(name):
        return
    _netns.kill_pids_in(name)
    _netns.ip_batch([f"netns del {name}"], None)


# -- the underlay between nodes --------------------------------------------------------------------

UNDERLAY_BRIDGE = "br0"
"""The bridge in the underlay namespace that joins the nodes' uplinks, like a node network."""
NODE_UPLINK = "uplink"
"""The node's interface towards the underlay."""


def create_underlay_plan(netns: str) -> Plan:
    """A namespace holding one bridge: the L2 segment the nodes share (kind's docker network)."""
    return (
        IpBatch(None, (f"netns add {netns}",)),
        IpBatch(
            netns,
            (
                "link set lo up",
                f"link add {UNDERLAY_BRIDGE} type bridge",
                f"link set {UNDERLAY_BRIDGE} up",
            ),
        ),
    )


def connect_node_plan(
    underlay: str, node: NodeSpec, port: str, node_prefix_v4: int, node_prefix_v6: int
) -> Plan:
    """Plug a node into the underlay: a veth from the bridge to the node's ``uplink``.

    The node's addresses also go on the uplink with the node network's prefix, so the other
    nodes are on-link and ARP/NDP resolve them (IPv6 neighbour solicitations are only answered
    for addresses of the receiving interface, RFC 4861 7.2.3).
    """
    _check_ifname(port, "underlay port")
    node_commands = [
        f"link set {NODE_UPLINK} up",
        f"addr add {node.node_ip_v4}/{node_prefix_v4} dev {NODE_UPLINK}",
    ]
    if node.node_ip_v6 is not None:
        node_commands.append(f"addr add {node.node_ip_v6}/{node_prefix_v6} dev {NODE_UPLINK} nodad")
    return (
        IpBatch(
            underlay,
            (
                f"link add {port} type veth peer name {NODE_UPLINK} netns {node.netns}",
                f"link set {port} master {UNDERLAY_BRIDGE}",
                f"link set {port} up",
            ),
        ),
        IpBatch(node.netns, tuple(node_commands)),
    )


def node_routes_plan(node: NodeSpec, peers: Sequence[NodeSpec]) -> Plan:
    """Routes from ``node`` to every other node's pod range via that node, as kindnet installs."""
    commands = []
    for peer in peers:
        if peer.netns == node.netns:
            continue
        commands.append(f"route add {peer.pod_cidr_v4} via {peer.node_ip_v4} dev {NODE_UPLINK}")
        if peer.pod_cidr_v6 is not None and peer.node_ip_v6 is not None:
            commands.append(f"route add {peer.pod_cidr_v6} via {peer.node_ip_v6} dev {NODE_UPLINK}")
    return (IpBatch(node.netns, tuple(commands)),) if commands else ()


def external_routes_plan(node: NodeSpec, gateway: NodeSpec, addresses: Sequence[str]) -> Plan:
    """Routes from ``node`` to an external host that hangs off another node, ``gateway``."""
    commands = []
    for address in addresses:
        if ipaddress.ip_address(address).version == 4:
            commands.append(f"route add {address}/32 via {gateway.node_ip_v4} dev {NODE_UPLINK}")
        elif gateway.node_ip_v6 is not None:
            commands.append(f"route add {address}/128 via {gateway.node_ip_v6} dev {NODE_UPLINK}")
    return (IpBatch(node.netns, tuple(commands)),) if commands else ()


# -- whole labs ---------------------------------------------------------------------------------


def list_namespaces() -> list[str]:
    """Names of all named network namespaces on the machine, sorted."""
    return _netns.list_netns()


def remove_namespaces(names: Iterable[str]) -> list[str]:
    """Delete exactly the named namespaces that exist; returns the names removed.

    Never by prefix: a lab's name may be a prefix of another lab's (``relq`` and ``relq-x``),
    so callers pass the exact names they recorded. Processes still inside them are stopped
    first (TERM, then KILL) so no namespace lingers. Raises CommandError if any of them could
    not be removed.
    """
    wanted = [_netns.validate_netns_name(name) for name in dict.fromkeys(names)]
    present = _still_there(wanted)
    if not present:
        return []
    pids = [pid for name in present for pid in _netns.pids_in(name)]
    _netns.kill_pids(pids)
    try:
        _netns.ip_batch([f"netns del {name}" for name in present], None)
    except _netns.CommandError:
        # Something vanished or refused midway: go one by one and report what is left.
        for name in _still_there(present):
            _netns.run(["ip", "netns", "del", name], check=False)
        left = _still_there(present)
        if left:
            raise _netns.CommandError(
                ["ip", "netns", "del", *left], 1, "these namespaces could not be removed"
            ) from None
    return present


def _still_there(names: Iterable[str]) -> list[str]:
    return [name for name in names if _netns.netns_exists(name)]
