"""Stage: the firewall. Which packets the kernel hands to the agent, installed atomically.

The agent owns a few chains of its own (``NETPOL-AGENT-*``) and a few ipsets; it never
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
  The *verdict cache* (``verdict_cache``, on by default) spares the round trip for most new
  connections: an allow the tables gave by the tuple alone comes back with a cache bit of its
  generation's parity (``MARK_CACHE``), the kernel adds (source, protocol:destination port,
  destination) to that parity's ``hash:ip,port,ip`` set as the packet re-enters, and a later new
  connection whose tuple is in the live set is admitted like a queued one, without asking. Every
  change empties the live set before the new tables are published and makes the new
  generation's (flushed) set live once every worker decides with them
  (docs/design-verdict-cache.md).
- ``per-packet``: every packet of an isolated pod is decided in userspace against the agent's
  own flow table (for teaching, tracing and measuring).

Fail-open or fail-closed: with ``--queue-bypass`` the kernel accepts queued packets while no
program listens on the queue (xt_NFQUEUE), otherwise it drops them.

Anti-spoofing (``anti_spoofing``, off by default): the decision trusts a packet's source address
to say which pod sent it, so a pod that writes another pod's address (or an unknown one) into
its packets would be judged as that pod. With the option on, the agent also owns a chain in the
``raw`` table, jumped to first from ``PREROUTING``, that drops a packet whose source does not
route back out of the interface it came in on: strict reverse-path filtering (``-m rpfilter``,
xt_rpfilter, IPv4 and IPv6; RFC 3704 2.2 "strict reverse path forwarding"), the check Calico's
per-interface anti-spoofing and ``rp_filter=1`` make. It runs before conntrack and NAT, so a
spoofed packet creates no connection and never reaches the queue. Checked are packets whose
source lies in the node's pod ranges (``pod_cidrs``: pods cannot pass for each other, or for a pod
the agent does not know) and packets that come in on a pod interface (``pod_interfaces``,
e.g. ``cali+``: a pod cannot pass for anything else either, an external address an ipBlock admits,
another node's pod, the node).

It is correct where the node routes every local pod's addresses to that pod's own interface and
nothing else, and every other address away from the pod interfaces: one /32 and one /128 route
per pod via its veth, as Calico (``cali*``), kindnet and the lab (``np*``) install, with the
other nodes' ranges and the default route on the uplink. Do not turn it on, or leave the
interface out of ``pod_interfaces``, where that does not hold:

- bridge CNIs (flannel's ``cni0``, the bridge plugin): the pods share one interface, so the check
  cannot tell them apart (it still stops addresses from off the bridge), and bridged traffic may
  not reach PREROUTING of the IP tables at all;
- pods that legitimately send with addresses that are not routed to them: routers, NAT or VPN
  gateways and load balancers in pods (e.g. with Direct Server Return), Multus secondary
  interfaces whose addresses the node does not route;
- asymmetric or policy routing towards pods (routing rules by source or mark): the reverse
  lookup, made without the packet's mark, may pick another interface than the one it came in on;
- eBPF datapaths that bypass iptables (Cilium): they have their own source checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from enforcement.nflog import COPY_RANGE

MARK_HOST = 0x0010_0000
MARK_KERNEL_REPLY = 0x0020_0000
MARK_ACCEPTED = 0x0040_0000
"""Fast path: a connection the agent accepted (saved to the connmark)."""
MARK_UNKNOWN = 0x0080_0000
"""The pod side of the packet is an address of this node's pod ranges that no known pod has."""
MARK_LOGGED = 0x0100_0000
"""Flow log: a connection the kernel passes alone whose first packet was logged (connmark), so
that its later packets are not (conntrack calls a connection NEW until it sees a reply)."""
MARK_CACHE_EVEN = 0x0200_0000
MARK_CACHE_ODD = 0x0400_0000
"""Fast path, verdict cache: the agent allowed this packet by its 4-tuple alone (a new
connection's policy verdict) with tables of an even (odd) generation; as the packet re-enters
the hook the kernel adds the tuple to that parity's cache set. Never saved in the connmark."""
MARK_CACHE = (MARK_CACHE_EVEN, MARK_CACHE_ODD)
"""The cache bit of a generation, by its parity (``MARK_CACHE[generation & 1]``)."""
MARK_MASK = (
    MARK_HOST | MARK_KERNEL_REPLY | MARK_ACCEPTED | MARK_UNKNOWN | MARK_LOGGED | MARK_CACHE_EVEN
    | MARK_CACHE_ODD
)  # fmt: skip
"""All bits the agent uses. Chosen clear of kube-proxy's 0x4000/0x8000 and Cilium's 0x0f00."""

CACHE_TIMEOUT = 60
"""Seconds a cached verdict lives without a change flushing it first; the next connection of
the tuple after that asks the queue again (and caches it again)."""
CACHE_LIVENESS = 3
"""Seconds the live cache answers after the agent last said it is alive
(``keep_cache_alive``): an agent that dies or hangs leaves every new connection to the queue
again (fail-closed or fail-open, as configured) this long after, not ``CACHE_TIMEOUT``."""
CACHE_MAX = 65536
"""Tuples a cache set holds at most; a full set refuses new ones (those go to the queue)."""
CACHED_PREFIX = "cached"
OFFERED_COMMENT = "npa-flow-log-offered"
"""The comment of the rules that count the connections offered to the flow log's NFLOG rules."""
LOGGED_COMMENT = "npa-flow-log-logged"
"""The comment of the NFLOG rules (their counters: the connections handed to the agent)."""
"""NFLOG prefix of connections admitted by the verdict cache (with a flow log)."""

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
    anti_spoofing: bool = False
    """Drop packets whose source does not route back out of the interface they came in on
    (strict reverse-path filtering in ``raw`` PREROUTING; see the module docstring): those with a
    source in the pod ranges (``pod_cidrs``, or learnt later) and those that come in on
    ``pod_interfaces``. With neither, it checks nothing."""
    pod_interfaces: tuple[str, ...] = ()
    """This node's pod interfaces, in iptables' ``-i`` syntax (a trailing ``+`` is a wildcard:
    ``cali+`` for Calico, ``veth+`` for kindnet). With ``anti_spoofing``, every packet that
    comes in on one is checked, whatever its source."""
    verdict_cache: bool = True
    """Fast mode: let the kernel remember, per (source, destination, protocol, destination
    port), the queue's allow verdicts for new connections, and admit the next connection of the
    same tuple without asking (docs/design-verdict-cache.md); flushed at every change."""
    log_rate: int | None = None
    """Connections a second the NFLOG rules hand to the agent at most (``-m limit``, bursts of
    ``log_burst``; None: all): the flow log's rate limit, applied before the agent pays for a
    packet it would only count as suppressed. What the limit holds back is counted by the
    rules' counters (``Firewall.unlogged``)."""
    log_burst: int | None = None
    """Connections the limit lets through at once; None: one second's worth, as the agent's
    own limit (``eventpump.burst_of``), at most xt_limit's largest burst, 10000."""
    log_unqueued: bool = False
    """End each chain with an NFLOG rule (group ``log_group``) for the first packet of a
    connection of a local pod that nothing queued: the flow log's view of what the kernel
    passes alone (``enforcement/nflog.py``)."""
    chain_prefix: str = "NETPOL-AGENT"
    set_prefix: str = "npa"
    iptables: str = "iptables"
    ip6tables: str = "ip6tables"

    @property
    def log_group(self) -> int:
        """The NFLOG group of ``log_unqueued``: the queue's number, clear of the groups other
        programs use by default (ulogd's 0 and 1, Calico's flow logs' 1 and 2)."""
        return self.queue_num

    def chain(self, hook: str) -> str:
        return f"{self.chain_prefix}-{hook}"

    def isolated_set(self, family: Family) -> str:
        return f"{self.set_prefix}-isolated-v{family}"

    def local_set(self, family: Family) -> str:
        return f"{self.set_prefix}-local-v{family}"

    @property
    def uses_cache(self) -> bool:
        return self.verdict_cache and self.mode == "fast"

    def cache_set(self, family: Family, generation: int) -> str:
        """The set that remembers the verdicts of tables of ``generation``'s parity."""
        return f"{self.set_prefix}-cache-{'odd' if generation & 1 else 'even'}-v{family}"

    def live_cache_set(self, family: Family) -> str:
        """The ``list:set`` the lookup rules match: it holds the cache set of the generation in
        force, or nothing while a change is being made."""
        return f"{self.set_prefix}-cache-v{family}"

    def pod_cidr_set(self, family: Family) -> str:
        return f"{self.set_prefix}-podcidr-v{family}"

    def family_pod_cidrs(self, family: Family) -> list[str]:
        return [c for c in self.pod_cidrs if ipaddress.ip_network(c).version == family]

    def restore_command(self, family: Family) -> str:
        return f"{self.iptables if family == 4 else self.ip6tables}-restore"

    def command(self, family: Family) -> str:
        return self.iptables if family == 4 else self.ip6tables


HOOKS = ("FORWARD", "INPUT", "OUTPUT")
"""Built-in chains of the filter table that jump to the agent's chain of the same name."""
LOG_CHAIN = "LOG"
"""The chain (``log_unqueued``) that logs the first packet of connections nothing queued."""
CACHED_CHAIN = "CACHED"
"""The chain (``verdict_cache``) that admits a new connection whose tuple the cache holds."""

ANTI_SPOOFING_HOOK = "PREROUTING"
"""The built-in chain of the raw table that jumps to the anti-spoofing chain (xt_rpfilter is
only valid in PREROUTING of the raw and mangle tables)."""
ANTI_SPOOFING_CHAIN = "ANTISPOOF"


def table_jumps(config: FirewallConfig, table: str) -> dict[str, str]:
    """The jumps the agent keeps first in ``table``'s built-in chains: built-in chain -> ours."""
    if table == "filter":
        return {hook: config.chain(hook) for hook in HOOKS}
    if table == "raw" and config.anti_spoofing:
        return {ANTI_SPOOFING_HOOK: config.chain(ANTI_SPOOFING_CHAIN)}
    return {}


TABLES = ("filter", "raw")
"""The tables the agent has chains in."""


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
        if config.uses_cache:
            lines += _cache_adds(config, family, accept)
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
    if config.uses_cache:
        lines[1:1] = [f":{config.chain(CACHED_CHAIN)} - [0:0]"]
        lines += _cache_lookups(config, family, (forward, input_), accept)
    lines += [
        f"-A {forward} -m set --match-set {isolated} src -j {queue}",
        f"-A {forward} -m set --match-set {isolated} dst -j {queue}",
        f"-A {input_} -m set --match-set {isolated} src -j {queue}",
        f"-A {output} -m set --match-set {isolated} dst -j MARK --or-mark 0x{MARK_HOST:x}",
        f"-A {output} -m set --match-set {isolated} dst -j {queue}",
        f"-A {queue} -m conntrack --ctdir REPLY -j MARK --or-mark 0x{MARK_KERNEL_REPLY:x}",
        f"-A {queue} -j {target}",
    ]
    if config.log_unqueued:
        lines[1:1] = [f":{config.chain(LOG_CHAIN)} - [0:0]"]
        lines += _log_rules(config, family, (forward, input_, output))
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def _log_rules(config: FirewallConfig, family: Family, hooks: Sequence[str]) -> list[str]:
    """What reaches the end of a hook's chain was not queued: log the first packet of each
    connection where a local pod takes part, once (``MARK_LOGGED`` in the connmark: conntrack
    calls every packet NEW until a reply, so retransmitted SYNs and one-way UDP would repeat)."""
    chain, local = config.chain(LOG_CHAIN), config.local_set(family)
    logged = f"0x{MARK_LOGGED:x}/0x{MARK_LOGGED:x}"
    lines = [f"-A {hook} -m conntrack --ctstate NEW -j {chain}" for hook in hooks]
    return [
        *lines,
        f"-A {chain} -m connmark --mark {logged} -j RETURN",
        *(
            f"-A {chain} -m set --match-set {local} {side} -j CONNMARK --or-mark 0x{MARK_LOGGED:x}"
            for side in ("src", "dst")
        ),
        f"-A {chain} -m connmark --mark {logged} -m comment --comment {OFFERED_COMMENT}",
        f"-A {chain} -m connmark --mark {logged} {_nflog(config)}",
    ]


def _burst(config: FirewallConfig) -> int:
    if config.log_burst is not None:
        return config.log_burst
    return min(10000, max(1, config.log_rate or 1))


def _nflog(config: FirewallConfig, prefix: str = "") -> str:
    """The NFLOG target of the flow log's rules, behind its rate limit; counted apart."""
    limit = ""
    if config.log_rate is not None:
        limit = f"-m limit --limit {max(1, config.log_rate)}/second --limit-burst {_burst(config)} "
    named = f" --nflog-prefix {prefix}" if prefix else ""
    return (
        f"{limit}-m comment --comment {LOGGED_COMMENT} "
        f"-j NFLOG --nflog-group {config.log_group}{named} --nflog-size {COPY_RANGE}"
    )


def _cache_adds(config: FirewallConfig, family: Family, accept: str) -> list[str]:
    """Where an allowed first packet, back from the queue, leaves its tuple in the cache set of
    the parity of the tables that decided it (``MARK_CACHE``)."""
    return [
        f"-A {accept} -m mark --mark 0x{bit:x}/0x{bit:x} "
        f"-j SET --add-set {config.cache_set(family, parity)} src,dst,dst --exist"
        for parity, bit in enumerate(MARK_CACHE)
    ]


def _cache_lookups(
    config: FirewallConfig, family: Family, hooks: Sequence[str], accept: str
) -> list[str]:
    """A new connection whose tuple the live cache holds is admitted as if the queue had: with
    ``MARK_ACCEPTED`` saved into its connmark. Only the original direction of a connection
    conntrack has not confirmed (a reply of a connection the kernel confirmed alone is judged
    by its reversed tuple, and its connmark would admit both directions), and not in OUTPUT
    (the node's own traffic is allowed anyway; a pod that forges the node's address must not
    inherit its verdicts)."""
    cached, live = config.chain(CACHED_CHAIN), config.live_cache_set(family)
    lines = [
        f"-A {hook} -m conntrack --ctstate NEW --ctdir ORIGINAL "
        f"-m set --match-set {live} src,dst,dst -j {cached}"
        for hook in hooks
    ]
    if config.log_unqueued:
        lines.append(f"-A {cached} -m comment --comment {OFFERED_COMMENT}")
        lines.append(f"-A {cached} {_nflog(config, CACHED_PREFIX)}")
    return [
        *lines,
        f"-A {cached} -j MARK --or-mark 0x{MARK_ACCEPTED:x}",
        f"-A {cached} -j {accept}",
    ]


def render_cache_sets(config: FirewallConfig, family: Family) -> str:
    """The ``ipset restore`` payload that creates the cache sets, empty."""
    ipset_family = "inet" if family == 4 else "inet6"
    kind = (
        f"hash:ip,port,ip family {ipset_family} hashsize 1024 maxelem {CACHE_MAX} "
        f"timeout {CACHE_TIMEOUT}"
    )
    sets = [config.cache_set(family, parity) for parity in (0, 1)]
    live = config.live_cache_set(family)
    lines = [f"create {name} {kind} -exist" for name in sets]
    lines.append(f"create {live} list:set size 8 timeout {CACHE_LIVENESS} -exist")
    # What an earlier run left (rules stay in place after a fail-closed exit) is forgotten: it
    # came from tables that may no longer be the ones in force.
    lines += [f"flush {live}", *(f"flush {name}" for name in sets), ""]
    return "\n".join(lines)


def render_cache_generation(config: FirewallConfig, family: Family, generation: int) -> str:
    """The ``ipset restore`` payload that makes the cache answer for tables of ``generation``:
    forget what its parity's set learnt from tables two generations back, and make that set the
    live one (docs/design-verdict-cache.md). Not atomic as a whole, and needs not be: while the
    live list is empty every new connection asks the queue."""
    live, current = config.live_cache_set(family), config.cache_set(family, generation)
    return "\n".join((f"flush {live}", f"flush {current}", f"add {live} {current}", ""))


def render_cache_liveness(config: FirewallConfig, family: Family, generation: int) -> str:
    """The ``ipset restore`` payload that gives the live cache's member another
    ``CACHE_LIVENESS`` seconds (re-adding an element with ``-exist`` resets its timeout)."""
    live, current = config.live_cache_set(family), config.cache_set(family, generation)
    return f"add {live} {current} -exist\n"


def render_anti_spoofing(config: FirewallConfig, family: Family) -> str:
    """The ``iptables-restore --noflush`` payload of the raw table's anti-spoofing chain.

    ``-m rpfilter`` without ``--loose`` is strict: the route back to the source must leave by
    the interface the packet came in on; without ``--accept-local`` a source that is one of the
    node's own addresses fails too. Loopback traffic always passes (xt_rpfilter), as do IPv6
    packets from the unspecified address (duplicate address detection; the kernel never
    forwards them) and IPv4 ones from 0.0.0.0 to a broadcast or local multicast address (DHCP).
    One DROP rule per scope, so ``iptables -t raw -L ... -v`` counts the drops of each.
    """
    chain = config.chain(ANTI_SPOOFING_CHAIN)
    spoofed = "-m rpfilter --invert -j DROP"
    lines = ["*raw", f":{chain} - [0:0]"]
    lines += [f"-A {chain} -i {pattern} {spoofed}" for pattern in config.pod_interfaces]
    # Always there, unlike the new-pod guard's rules: ranges learnt later (a Node's podCIDRs)
    # only fill the set, and an empty set matches nothing.
    lines.append(f"-A {chain} -m set --match-set {config.pod_cidr_set(family)} src {spoofed}")
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def render_jumps(config: FirewallConfig, present: Iterable[str], table: str = "filter") -> str:
    """Insert at the top of each built-in chain of ``table`` the jump not already ``present``."""
    seen = set(present)
    missing = [
        (hook, chain) for hook, chain in table_jumps(config, table).items() if hook not in seen
    ]
    if not missing:
        return ""
    lines = [f"*{table}"]
    lines += [f"-I {hook} 1 -j {chain}" for hook, chain in missing]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def _all_jumps(config: FirewallConfig, table: str) -> dict[str, str]:
    """Every jump the agent may have put in ``table``, whatever ``config`` turns on (removal)."""
    if table == "raw":
        return {ANTI_SPOOFING_HOOK: config.chain(ANTI_SPOOFING_CHAIN)}
    return table_jumps(config, table)


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
        self._cache_generation: int | None = None
        """The generation whose verdicts the live cache holds (None: none, it is empty)."""

    def install(self) -> None:
        """Create the sets (empty if new), the chains and the jumps; idempotent."""
        config = self.config
        for family in FAMILIES:
            sets = [
                f"create {self.config.isolated_set(family)} {_set_type(family)} -exist",
                f"create {self.config.local_set(family)} {_set_type(family)} -exist",
            ]
            ranges = self.config.pod_cidr_set(family)
            sets += [f"create {ranges} {_set_type(family, 'hash:net')} -exist", f"flush {ranges}"]
            sets += [f"add {ranges} {cidr}" for cidr in self.config.family_pod_cidrs(family)]
            self._run(["ipset", "restore"], "\n".join(sets) + "\n")
            if config.uses_cache:
                self._run(["ipset", "restore"], render_cache_sets(config, family))
            self._run(
                [self.config.restore_command(family), "--noflush"],
                render_rules(self.config, family),
            )
            if config.anti_spoofing:
                self._run(
                    [config.restore_command(family), "--noflush"],
                    render_anti_spoofing(config, family),
                )
            else:
                self._remove_table(family, "raw")  # left by an earlier run with the option on
            for table in TABLES:
                if not table_jumps(config, table):
                    continue
                jumps = render_jumps(config, self._present_jumps(family, table), table)
                if jumps:
                    self._run([config.restore_command(family), "--noflush"], jumps)

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

    def retire_cached_verdicts(self) -> None:
        """Stop admitting connections by cached verdicts (empty the live list): call it before
        publishing new tables, then ``cache_generation`` once they decide every packet."""
        if self.config.uses_cache:
            payload = "".join(f"flush {self.config.live_cache_set(f)}\n" for f in FAMILIES)
            self._run(["ipset", "restore"], payload)
            self._cache_generation = None

    def cache_generation(self, generation: int) -> None:
        """Admit connections by the verdicts that tables of ``generation`` give from now on,
        forgetting older ones; call it once every queue worker decides with those tables."""
        if self.config.uses_cache and generation != self._cache_generation:
            payload = "".join(render_cache_generation(self.config, f, generation) for f in FAMILIES)
            self._run(["ipset", "restore"], payload)
            self._cache_generation = generation

    def keep_cache_alive(self) -> None:
        """Say the agent is alive: the live cache answers ``CACHE_LIVENESS`` more seconds. The
        runner calls it every second; without it the kernel stops answering from the cache by
        itself, so a dead agent's cached verdicts do not outlive it by more than that."""
        generation = self._cache_generation
        if self.config.uses_cache and generation is not None:
            payload = "".join(render_cache_liveness(self.config, f, generation) for f in FAMILIES)
            self._run(["ipset", "restore"], payload)

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
        """Remove the jumps, the chains and the sets; tolerant of parts already gone.

        Anti-spoofing rules go too, whether or not this configuration has them on (``cleanup``
        runs with a default configuration)."""
        for family in FAMILIES:
            command = self.config.command(family)
            for hook in self._present_jumps(family, "filter"):
                self._try([command, "-D", hook, "-j", self.config.chain(hook)])
            own = (*HOOKS, "UNKNOWN", "QUEUE", "ACCEPT", LOG_CHAIN, CACHED_CHAIN)
            # All flushed before any is deleted: a chain still jumped to cannot be deleted.
            for action in ("-F", "-X"):
                for chain in (self.config.chain(name) for name in own):
                    self._try([command, action, chain])
            self._remove_table(family, "raw")
            # The live list first: a set cannot be destroyed while a list holds it.
            for name in (
                self.config.isolated_set(family),
                self.config.local_set(family),
                self.config.pod_cidr_set(family),
                self.config.live_cache_set(family),
                *(self.config.cache_set(family, parity) for parity in (0, 1)),
            ):
                self._try(["ipset", "destroy", name])
                self._members.pop(name, None)
        self._cache_generation = None

    def ensure_first(self) -> list[str]:
        """Put each jump back at the top of its built-in chain if something got above it.

        Others (kube-proxy, a CNI) insert rules of their own at the top of FORWARD/INPUT/OUTPUT;
        an ACCEPT of theirs above our jump would let traffic skip the agent. Returns the
        "family/hook" names it repaired (the raw table's PREROUTING too, with anti-spoofing). Cheap
        when nothing moved: one listing per family and table in use.
        """
        repaired = []
        for family in FAMILIES:
            command = self.config.command(family)
            for table in TABLES:
                jumps = table_jumps(self.config, table)
                if not jumps:
                    continue
                listing = self._run([command, "-t", table, "-S"], None).splitlines()
                for hook, chain in jumps.items():
                    jump = f"-A {hook} -j {chain}"
                    rules = [line for line in listing if line.startswith(f"-A {hook} ")]
                    if rules and rules[0] == jump:
                        continue
                    if jump in rules:
                        self._run([command, "-t", table, "-D", hook, "-j", chain], None)
                    self._run([command, "-t", table, "-I", hook, "1", "-j", chain], None)
                    repaired.append(f"IPv{family}/{hook}")
        return repaired

    def spoofed_drops(self) -> int:
        """Packets the anti-spoofing rules dropped so far (both families; 0 when off)."""
        return self._counted("raw", (ANTI_SPOOFING_CHAIN,), lambda words: words[-1] == "DROP")

    def cached_admissions(self) -> int:
        """New connections the verdict cache admitted since the rules were last written (both
        families; 0 when off): the packet counter of the cache chain's last rule. Rewriting the
        rules (``install``, ``set_pod_cidrs``) starts it from 0 again."""
        accept = self.config.chain("ACCEPT")
        return self._counted("filter", (CACHED_CHAIN,), lambda words: words[-1] == accept)

    def unlogged(self) -> int:
        """Connections the flow log's NFLOG rules held back by their rate limit since the rules
        were last written (both families): offered minus logged."""
        chains = (LOG_CHAIN, CACHED_CHAIN)
        offered = self._counted("filter", chains, lambda words: OFFERED_COMMENT in words)
        logged = self._counted("filter", chains, lambda words: LOGGED_COMMENT in words)
        return max(0, offered - logged)

    def _counted(
        self, table: str, names: Sequence[str], wanted: Callable[[list[str]], bool]
    ) -> int:
        """The summed packet counters of the rules of chains ``names`` whose words are
        ``wanted``, both families; 0 for a chain that does not exist."""
        total = 0
        for name in names:
            chain = self.config.chain(name)
            for family in FAMILIES:
                command = [self.config.command(family), "-t", table, "-S", chain, "-v"]
                try:
                    listing = self._run(command, None)
                except FirewallError:
                    continue  # no such chain: the option is off
                for line in listing.splitlines():
                    # "-A NETPOL-AGENT-ANTISPOOF -i np+ -m rpfilter --invert -c 3 180 -j DROP"
                    words = line.split()
                    if words[:2] == ["-A", chain] and "-c" in words and wanted(words):
                        total += int(words[words.index("-c") + 1])
        return total

    def _present_jumps(self, family: Family, table: str = "filter") -> list[str]:
        listing = self._run([self.config.command(family), "-t", table, "-S"], None)
        return [
            hook
            for hook, chain in _all_jumps(self.config, table).items()
            if f"-A {hook} -j {chain}" in listing
        ]

    def _remove_table(self, family: Family, table: str) -> None:
        """Remove the agent's jumps and chain from ``table`` if there (only raw: anti-spoofing)."""
        command = self.config.command(family)
        listing = self._run([command, "-t", table, "-S"], None)
        for hook, chain in _all_jumps(self.config, table).items():
            if f"-A {hook} -j {chain}" in listing:
                self._try([command, "-t", table, "-D", hook, "-j", chain])
        chain = self.config.chain(ANTI_SPOOFING_CHAIN)
        if f"-N {chain}" in listing.splitlines():
            self._try([command, "-t", table, "-F", chain])
            self._try([command, "-t", table, "-X", chain])

    def _try(self, argv: Sequence[str]) -> None:
        with contextlib.suppress(FirewallError):
            self._run(argv, None)
