"""Stage: the firewall. Which packets the kernel hands to the agent, installed atomically.

The agent owns a few chains of its own (``NETPOL-AGENT-*``) and two ipsets of addresses; it never
edits anyone else's rules except for one jump per built-in chain. Everything is written with
``iptables-restore --noflush`` (one atomic transaction per family) and ``ipset restore`` with a
swap (RFC-free but kernel-atomic: ``ipset swap`` exchanges two sets in one netlink call), so a
packet never sees a half-written rule set.

What goes to userspace (the queue): every packet from or to a *local pod that some policy
isolates*. Traffic of pods that no policy selects never leaves the kernel. Three hooks see pod
traffic on a node:

- FORWARD: pod to pod (same node and across nodes) and pod to anything beyond the node;
- INPUT: pod to the node itself (the pod's egress applies, and replies to node-opened flows);
- OUTPUT: the node to a pod (always allowed, but the agent must see it to track its replies).

Before queueing, hint bits are OR-ed into the packet mark, which NFQUEUE hands to userspace with
the packet (``nfqnl_msg_packet_hdr`` + NFQA_MARK):

- ``MARK_HOST`` on OUTPUT traffic: the node itself sent it.
- ``MARK_KERNEL_REPLY`` when conntrack classifies the packet as ``--ctdir REPLY``: the kernel has
  confirmed the connection's first packet earlier (so that packet was accepted by every hook).

Two modes:

- ``fast`` (the default): only the first packet of a connection goes to the queue. The agent
  accepts it with ``MARK_ACCEPTED`` added and an NF_REPEAT verdict, so the packet re-enters the
  hook, the mark is saved into the connection (CONNMARK), and the kernel passes every later
  packet of that connection, replies included, without asking (the first rule of each chain).
  Policy changes that deny such a connection delete its conntrack entry (``conntrack.py``).
- ``per-packet``: every packet of an isolated pod is decided in userspace against the agent's
  own flow table (for teaching, tracing and measuring).

Fail-open or fail-closed: with ``--queue-bypass`` the kernel accepts queued packets while no
program listens on the queue (xt_NFQUEUE), otherwise it drops them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

MARK_HOST = 0x0010_0000
MARK_KERNEL_REPLY = 0x0020_0000
MARK_ACCEPTED = 0x0040_0000
"""Fast path: a connection the agent accepted (saved to the connmark)."""
MARK_UNKNOWN = 0x0080_0000
"""The pod side of the packet is an address of this node's pod ranges that no known pod has."""
MARK_MASK = MARK_HOST | MARK_KERNEL_REPLY | MARK_ACCEPTED | MARK_UNKNOWN
"""All bits the agent uses. Chosen clear of kube-proxy's 0x4000/0x8000 and Cilium's 0x0f00."""

Mode = Literal["fast", "per-packet"]
MODES: tuple[Mode, ...] = ("fast", "per-packet")

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)

Runner = Callable[[Sequence[str], str | None], str]
"""Runs a command with optional standard input and returns its standard output; raises on error."""


class FirewallError(RuntimeError):
    """An iptables or ipset command failed; the message carries the command and its stderr."""


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    queue_num: int = 1000
    """NFQUEUE number. kindnet and kube-network-policies default to 100; we stay clear of it."""
    queue_count: int = 1
    """With more than one, ``--queue-balance queue_num:queue_num+queue_count-1``."""
    fail_open: bool = False
    """Accept (True) or drop (False) what would be queued while no agent listens."""
    mode: Mode = "fast"
    pod_cidrs: tuple[str, ...] = ()
    """This node's pod ranges. Traffic of an address in them that is no known pod (a pod whose
    address has not reached the agent yet) is queued and dropped until the pod is known, so a new
    pod is enforced from its first packet."""
    chain_prefix: str = "NETPOL-AGENT"
    set_prefix: str = "npa"
    iptables: str = "iptables"
    ip6tables: str = "ip6tables"

    def chain(self, hook: str) -> str:
        return f"{self.chain_prefix}-{hook}"

    def isolated_set(self, family: Family) -> str:
        return f"{self.set_prefix}-isolated-v{family}"

    def local_set(self, family: Family) -> str:
        return f"{self.set_prefix}-local-v{family}"

    def pod_cidr_set(self, family: Family) -> str:
        return f"{self.set_prefix}-podcidr-v{family}"

    def family_pod_cidrs(self, family: Family) -> list[str]:
        return [c for c in self.pod_cidrs if ipaddress.ip_network(c).version == family]

    def restore_command(self, family: Family) -> str:
        return f"{self.iptables if family == 4 else self.ip6tables}-restore"

    def command(self, family: Family) -> str:
        return self.iptables if family == 4 else self.ip6tables


HOOKS = ("FORWARD", "INPUT", "OUTPUT")


def render_rules(config: FirewallConfig, family: Family) -> str:
    """The ``iptables-restore --noflush`` payload that (re)writes the agent's chains.

    Declaring a chain with ``:NAME - [0:0]`` in a --noflush restore flushes just that chain, so the
    whole content is replaced in the same transaction; built-in chains are only appended to by
    ``render_jumps``.
    """
    isolated = config.isolated_set(family)
    queue = config.chain("QUEUE")
    accept = config.chain("ACCEPT")
    if config.queue_count > 1:
        last = config.queue_num + config.queue_count - 1
        target = f"NFQUEUE --queue-balance {config.queue_num}:{last}"
    else:
        target = f"NFQUEUE --queue-num {config.queue_num}"
    if config.fail_open:
        target += " --queue-bypass"
    lines = ["*filter"]
    lines += [f":{config.chain(hook)} - [0:0]" for hook in HOOKS]
    unknown = config.chain("UNKNOWN")
    lines += [f":{queue} - [0:0]", f":{accept} - [0:0]", f":{unknown} - [0:0]"]
    forward, input_, output = (config.chain(hook) for hook in HOOKS)
    if config.mode == "fast":
        accepted = f"0x{MARK_ACCEPTED:x}/0x{MARK_ACCEPTED:x}"
        saved = f"0x{MARK_ACCEPTED | MARK_HOST:x}"
        for chain in (forward, input_, output):
            lines += [
                # A connection the agent accepted: the kernel passes it, both directions.
                f"-A {chain} -m connmark --mark {accepted} -j ACCEPT",
                # The first packet, back from the queue with an NF_REPEAT verdict.
                f"-A {chain} -m mark --mark {accepted} -j {accept}",
            ]
        lines += [
            f"-A {accept} -j CONNMARK --save-mark --nfmask {saved} --ctmask {saved}",
            f"-A {accept} -j ACCEPT",
        ]
    if config.family_pod_cidrs(family):
        ranges, known = config.pod_cidr_set(family), config.local_set(family)
        for chain, sides in ((forward, ("src", "dst")), (input_, ("src",))):
            lines += [
                f"-A {chain} -m set --match-set {ranges} {side} -m set ! --match-set {known} "
                f"{side} -j {unknown}"
                for side in sides
            ]
        lines += [
            f"-A {unknown} -j MARK --or-mark 0x{MARK_UNKNOWN:x}",
            f"-A {unknown} -j {queue}",
        ]
    lines += [
        f"-A {forward} -m set --match-set {isolated} src -j {queue}",
        f"-A {forward} -m set --match-set {isolated} dst -j {queue}",
        f"-A {input_} -m set --match-set {isolated} src -j {queue}",
        f"-A {output} -m set --match-set {isolated} dst -j MARK --or-mark 0x{MARK_HOST:x}",
        f"-A {output} -m set --match-set {isolated} dst -j {queue}",
        f"-A {queue} -m conntrack --ctdir REPLY -j MARK --or-mark 0x{MARK_KERNEL_REPLY:x}",
        f"-A {queue} -j {target}",
        "COMMIT",
        "",
    ]
    return "\n".join(lines)


def render_jumps(config: FirewallConfig, present: Iterable[str]) -> str:
    """Insert at the top of each built-in chain the jump that is not already ``present``."""
    missing = [hook for hook in HOOKS if hook not in set(present)]
    if not missing:
        return ""
    lines = ["*filter"]
    lines += [f"-I {hook} 1 -j {config.chain(hook)}" for hook in missing]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def _set_type(family: Family, kind: str = "hash:ip") -> str:
    ipset_family = "inet" if family == 4 else "inet6"
    return f"{kind} family {ipset_family} hashsize 1024 maxelem 1048576"


def render_set(config: FirewallConfig, family: Family, addresses: Iterable[bytes]) -> str:
    """The ``ipset restore`` payload that atomically replaces the isolated set's members."""
    return render_members(config.isolated_set(family), family, addresses)


def render_members(
    name: str, family: Family, addresses: Iterable[bytes], kind: str = "hash:ip"
) -> str:
    """An ``ipset restore`` payload that atomically replaces set ``name``'s members."""
    staging = f"{name}-new"
    create = _set_type(family, kind)
    lines = [
        f"create {name} {create} -exist",
        f"create {staging} {create} -exist",
        f"flush {staging}",
    ]
    width = 4 if family == 4 else 16
    members = sorted(address for address in addresses if len(address) == width)
    lines += [f"add {staging} {ipaddress.ip_address(address)}" for address in members]
    lines += [f"swap {staging} {name}", f"destroy {staging}", ""]
    return "\n".join(lines)


def render_networks(name: str, family: Family, networks: Iterable[str]) -> str:
    """An ``ipset restore`` payload that atomically replaces the members of the ``hash:net`` set
    ``name`` (a family's pod ranges) with ``networks``; a network of the other family raises
    ``ValueError``."""
    staging = f"{name}-new"
    create = _set_type(family, "hash:net")
    lines = [f"create {name} {create} -exist", f"create {staging} {create} -exist"]
    lines.append(f"flush {staging}")
    for network in networks:
        if ipaddress.ip_network(network).version != family:
            raise ValueError(f"set {name} holds IPv{family} ranges, not {network}")
        lines.append(f"add {staging} {network}")
    lines += [f"swap {staging} {name}", f"destroy {staging}", ""]
    return "\n".join(lines)


def _network_order(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int]:
    return (network.version, int(network.network_address), network.prefixlen)


def subprocess_runner(argv: Sequence[str], stdin: str | None) -> str:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FirewallError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


class Firewall:
    """Installs, syncs and removes the agent's rules in the current network namespace.

    Not thread-safe: one runner thread owns it.
    """

    def __init__(self, config: FirewallConfig, run: Runner = subprocess_runner) -> None:
        self.config = config
        self._run = run
        self._members: dict[str, frozenset[bytes]] = {}
        """What each set the agent fills holds now (by set name)."""

    def install(self) -> None:
        """Create the sets (empty if new), the chains and the jumps; idempotent."""
        for family in FAMILIES:
            sets = [
                f"create {self.config.isolated_set(family)} {_set_type(family)} -exist",
                f"create {self.config.local_set(family)} {_set_type(family)} -exist",
            ]
            ranges = self.config.pod_cidr_set(family)
            sets += [f"create {ranges} {_set_type(family, 'hash:net')} -exist", f"flush {ranges}"]
            sets += [f"add {ranges} {cidr}" for cidr in self.config.family_pod_cidrs(family)]
            self._run(["ipset", "restore"], "\n".join(sets) + "\n")
            self._run(
                [self.config.restore_command(family), "--noflush"],
                render_rules(self.config, family),
            )
            jumps = render_jumps(self.config, self._present_jumps(family))
            if jumps:
                self._run([self.config.restore_command(family), "--noflush"], jumps)

    def sync(self, isolated: frozenset[bytes], local: frozenset[bytes] = frozenset()) -> bool:
        """Make the sets hold exactly these addresses: ``isolated`` (local pods a policy
        isolates) and ``local`` (every known local pod); returns whether anything changed.

        The known set is filled before the isolated one shrinks or grows, so no packet of a
        known pod is ever taken for an unknown one."""
        changed = False
        for family in FAMILIES:
            width = 4 if family == 4 else 16
            for name, addresses in (
                (self.config.local_set(family), local),
                (self.config.isolated_set(family), isolated),
            ):
                members = frozenset(address for address in addresses if len(address) == width)
                if self._members.get(name) == members:
                    continue
                self._run(["ipset", "restore"], render_members(name, family, members))
                self._members[name] = members
                changed = True
        return changed

    def set_pod_cidrs(self, cidrs: Iterable[str]) -> bool:
        """Make this node's pod ranges (the new-pod guard) exactly ``cidrs``, after ``install``;
        returns whether anything changed.

        For ranges learnt after start (a Node's ``spec.podCIDRs`` assigned late). Each family's
        range set is replaced with one ``ipset`` swap; when a family's ranges appear or all go,
        its chains are then rewritten in one ``iptables-restore`` transaction (the guard's rules
        are rendered only for a family with ranges). An empty set matches nothing, so the state
        between the two steps is safe either way. Call it after ``sync`` filled the known set:
        a known pod missing from it would be taken for an unknown one and dropped. A malformed
        CIDR raises ``ValueError`` before anything is written.
        """
        networks = sorted({ipaddress.ip_network(c) for c in cidrs}, key=_network_order)
        wanted = dataclasses.replace(self.config, pod_cidrs=tuple(str(n) for n in networks))
        changed = False
        for family in FAMILIES:
            before, after = self.config.family_pod_cidrs(family), wanted.family_pod_cidrs(family)
            if set(map(ipaddress.ip_network, before)) == set(map(ipaddress.ip_network, after)):
                continue
            payload = render_networks(wanted.pod_cidr_set(family), family, after)
            self._run(["ipset", "restore"], payload)
            if bool(before) != bool(after):
                self._run(
                    [wanted.restore_command(family), "--noflush"], render_rules(wanted, family)
                )
            others = [c for c in self.config.pod_cidrs if c not in before]
            self.config = dataclasses.replace(self.config, pod_cidrs=(*others, *after))
            changed = True
        return changed

    def remove(self) -> None:
        """Remove the jumps, the chains and the sets; tolerant of parts already gone."""
        for family in FAMILIES:
            command = self.config.command(family)
            for hook in self._present_jumps(family):
                self._try([command, "-D", hook, "-j", self.config.chain(hook)])
            own = (*HOOKS, "UNKNOWN", "QUEUE", "ACCEPT")
            for chain in (self.config.chain(name) for name in own):
                self._try([command, "-F", chain])
                self._try([command, "-X", chain])
            for name in (
                self.config.isolated_set(family),
                self.config.local_set(family),
                self.config.pod_cidr_set(family),
            ):
                self._try(["ipset", "destroy", name])
                self._members.pop(name, None)

    def ensure_first(self) -> list[str]:
        """Put each jump back at the top of its built-in chain if something got above it.

        Others (kube-proxy, a CNI) insert rules of their own at the top of FORWARD/INPUT/OUTPUT;
        an ACCEPT of theirs above our jump would let traffic skip the agent. Returns the
        "family/hook" names it repaired. Cheap when nothing moved: one listing per family.
        """
        repaired = []
        for family in FAMILIES:
            command = self.config.command(family)
            listing = self._run([command, "-S"], None).splitlines()
            for hook in HOOKS:
                jump = f"-A {hook} -j {self.config.chain(hook)}"
                rules = [line for line in listing if line.startswith(f"-A {hook} ")]
                if rules and rules[0] == jump:
                    continue
                if jump in rules:
                    self._run([command, "-D", hook, "-j", self.config.chain(hook)], None)
                self._run([command, "-I", hook, "1", "-j", self.config.chain(hook)], None)
                repaired.append(f"IPv{family}/{hook}")
        return repaired

    def _present_jumps(self, family: Family) -> list[str]:
        listing = self._run([self.config.command(family), "-S"], None)
        present = []
        for hook in HOOKS:
            if f"-A {hook} -j {self.config.chain(hook)}" in listing:
                present.append(hook)
        return present

    def _try(self, argv: Sequence[str]) -> None:
        with contextlib.suppress(FirewallError):
            self._run(argv, None)
