"""The kernel peer: the same NetworkPolicies compiled into plain iptables rules.

This is what Calico's or kube-router's iptables mode does, reduced to its essentials, and it is
what ``netpol-agent bench`` measures netpol-agent against: a policy enforced entirely in the
kernel, rule by rule, with no userspace on the packet path. It shares nothing with the compiler
and the allow tables except the model (``enforcement/model.py``) and the namespace-label
defaulting, so it is also an independent second opinion on the semantics (the root test in
``tests/agent/bench/test_kernel_peer.py`` probes a lab enforced by these rules and compares).

Pure, like the compiler: a :class:`ClusterSnapshot` and a node name in, the text of an
``iptables-restore --noflush`` transaction out; no I/O.

The rules, per address family, for one node (only its own, non-hostNetwork pods are subjects):

- ``KPEER-FORWARD`` (jumped from FORWARD, pod to pod and pod to beyond the node) starts with
  ``ctstate RELATED,ESTABLISHED -j ACCEPT``: replies and the rest of an allowed connection never
  see a policy rule. Then, per local pod isolated for egress, ``-s POD -j KPEER-E-n``; then, per
  local pod isolated for ingress, ``-d POD -j KPEER-I-n``.
- ``KPEER-INPUT`` (jumped from INPUT, pod to its node): the same established shortcut, IPv6
  neighbour discovery, and the egress jumps (a pod's egress applies to its node too, as in the
  agent). Node-to-pod traffic (OUTPUT) is always allowed and has no rules.
- A direction chain (``KPEER-E-n`` egress, ``KPEER-I-n`` ingress) holds one ``-j RETURN`` per
  allowed (peer, port) pair of the union of the policies selecting the pod, and ends in
  ``-j DROP``. Pod-to-pod traffic needs both checks, so a chain that allows RETURNs to the hook
  chain, which goes on to the other direction's jump; traffic that both allow (or that no chain
  concerns) falls off the end of the hook chain into the built-in chain's policy (ACCEPT).
- Peers are expanded to pod addresses (``-s``/``-d`` per address; plain rules are fine at the
  benchmark's size, ipsets would be the next step). An ipBlock with ``except`` entries jumps to a
  small chain (``KPEER-X-n``) that RETURNs for each except and otherwise sets the allow bit of the
  packet mark; the direction chain RETURNs when the bit is set (and clears it on entry).
- Ports: ``-p PROTO --dport N`` or ``--dport A:B`` for ranges; named ports resolve against the
  destination pod: for ingress the subject itself, for egress each destination pod (an egress
  named port towards an ipBlock or towards every peer expands to the pods inside it that declare
  the name); a rule without ports matches every protocol, ICMP included.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from enforcement.compiler import namespace_labels
from enforcement.firewall import FAMILIES, MARK_MASK, Family
from enforcement.model import (
    ClusterSnapshot,
    Direction,
    IPAddress,
    IPBlock,
    IPNetwork,
    Labels,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Rule,
)

MARK_ALLOW = 1 << MARK_MASK.bit_length()
"""The packet-mark bit an except chain sets for "allowed": the bit just above every bit the agent
uses (``enforcement.firewall.MARK_MASK``), so the two never share one even where the agent's set
grows; above kube-proxy's 0x4000/0x8000 and Cilium's 0x0f00 too."""
if MARK_ALLOW > 0xFFFF_FFFF:  # the packet mark is 32 bits (skb->mark)
    raise ImportError("the agent's mark bits leave no bit above them for the kernel peer")

HOOKS = ("FORWARD", "INPUT")
"""Built-in chains the kernel peer hooks into."""

NEIGHBOR_DISCOVERY_TYPES = (133, 134, 135, 136, 137)
"""ICMPv6 router/neighbour solicitation/advertisement and redirect (RFC 4861 section 4)."""


@dataclass(frozen=True, slots=True)
class KernelPeerConfig:
    chain_prefix: str = "KPEER"
    """Prefix of every chain (chain names stay under iptables' 28 characters)."""
    allow_mark: int = MARK_ALLOW
    """Mark bit used by the except chains (see the module docstring)."""

    def chain(self, name: str) -> str:
        return f"{self.chain_prefix}-{name}"


@dataclass(frozen=True, slots=True)
class KernelPeerRules:
    """One family's rules for one node, ready for ``iptables-restore --noflush``."""

    family: Family
    chains: tuple[str, ...]
    """Every chain of the kernel peer, the hook chains first."""
    jumps: tuple[tuple[str, str], ...]
    """(built-in chain, our chain) pairs: one jump each, inserted at the top."""
    rules: tuple[str, ...]
    """``-A CHAIN ...`` lines, in order."""

    @property
    def restore_command(self) -> str:
        return "iptables-restore" if self.family == 4 else "ip6tables-restore"

    def install_payload(self) -> str:
        """Create the chains and their rules, then hook them in; one atomic transaction.

        Meant for a namespace without these chains: each run inserts the jumps again.
        """
        lines = ["*filter"]
        lines += [f":{chain} - [0:0]" for chain in self.chains]
        lines += self.rules
        lines += [f"-I {hook} 1 -j {chain}" for hook, chain in self.jumps]
        lines += ["COMMIT", ""]
        return "\n".join(lines)

    def removal_payload(self) -> str:
        """Unhook, flush and delete every chain of the kernel peer; one atomic transaction."""
        lines = ["*filter"]
        lines += [f"-D {hook} -j {chain}" for hook, chain in self.jumps]
        lines += [f":{chain} - [0:0]" for chain in self.chains]
        lines += [f"-X {chain}" for chain in self.chains]
        lines += ["COMMIT", ""]
        return "\n".join(lines)


def kernel_peer_rules(
    snapshot: ClusterSnapshot, node_name: str, config: KernelPeerConfig | None = None
) -> dict[Family, KernelPeerRules]:
    """The kernel peer's rules of node ``node_name``, for both families."""
    return {family: compile_kernel_peer(snapshot, node_name, family, config) for family in FAMILIES}


def compile_kernel_peer(
    snapshot: ClusterSnapshot,
    node_name: str,
    family: Family,
    config: KernelPeerConfig | None = None,
) -> KernelPeerRules:
    """The ``family`` rules that enforce the snapshot's policies for ``node_name``'s pods."""
    return _PeerCompiler(snapshot, node_name, family, config or KernelPeerConfig()).compile()


Allowance = tuple[str, ...]
"""The lines of a direction chain that RETURN for one (peer, port) pair; kept together."""


@dataclass(frozen=True, slots=True)
class _Target:
    """One peer of a rule as addresses: a pod's address, an ipBlock, or anything (``None``)."""

    network: IPNetwork | None
    excepts: tuple[IPNetwork, ...] = ()
    pod: Pod | None = None
    block: IPBlock | None = None


class _PeerCompiler:
    """One compilation (one node, one family)."""

    def __init__(
        self, snapshot: ClusterSnapshot, node_name: str, family: Family, config: KernelPeerConfig
    ) -> None:
        self._snapshot = snapshot
        self._node_name = node_name
        self._family = family
        self._config = config
        self._ns_labels: Mapping[str, Labels] = namespace_labels(snapshot)
        self._pods = sorted(
            (pod for pod in snapshot.pods if not pod.host_network and _address(pod, family)),
            key=lambda pod: pod.key,
        )
        """Pods that can be peers in this family: an address of it, not hostNetwork."""
        self._chains: list[str] = []
        self._rules: list[str] = []
        self._except_chains: dict[tuple[str, IPBlock], str] = {}

    def compile(self) -> KernelPeerRules:
        forward, input_ = self._config.chain("FORWARD"), self._config.chain("INPUT")
        self._chains += [forward, input_]
        established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        hook_rules = [f"-A {forward} {established}", f"-A {input_} {established}"]
        if self._family == 6:
            hook_rules += [
                f"-A {input_} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j ACCEPT"
                for kind in NEIGHBOR_DISCOVERY_TYPES
            ]
        egress_jumps: list[str] = []
        ingress_jumps: list[str] = []
        local = [pod for pod in self._pods if pod.node_name == self._node_name]
        for number, pod in enumerate(local):
            address = _host(_address(pod, self._family))
            for direction in (Direction.EGRESS, Direction.INGRESS):
                policies = [
                    policy
                    for policy in self._snapshot.policies
                    if policy.namespace == pod.namespace
                    and direction in policy.policy_types
                    and policy.pod_selector.matches(pod.labels)
                ]
                if not policies:
                    continue
                letter = "E" if direction is Direction.EGRESS else "I"
                chain = self._config.chain(f"{letter}-{number}")
                self._direction_chain(chain, direction, pod, policies)
                comment = f'-m comment --comment "{pod.key} {direction.value.lower()}"'
                if direction is Direction.EGRESS:
                    for hook in (forward, input_):
                        egress_jumps.append(f"-A {hook} -s {address} {comment} -j {chain}")
                else:
                    ingress_jumps.append(f"-A {forward} -d {address} {comment} -j {chain}")
        # Egress jumps first in each hook chain: a source's egress, then a destination's ingress.
        rules = hook_rules + egress_jumps + ingress_jumps + self._rules
        return KernelPeerRules(
            family=self._family,
            chains=tuple(self._chains),
            jumps=(("FORWARD", forward), ("INPUT", input_)),
            rules=tuple(rules),
        )

    def _direction_chain(
        self, chain: str, direction: Direction, subject: Pod, policies: Sequence[NetworkPolicy]
    ) -> None:
        """The chain of ``subject``'s ``direction``: RETURN on what any policy allows, else DROP."""
        self._chains.append(chain)
        allowances: list[Allowance] = []
        for policy in policies:
            for rule in policy.rules(direction):
                allowances += self._allowances(chain, direction, subject, policy, rule)
        # The same allowance twice is one; an allowance's lines stay together.
        lines = [line for allowance in dict.fromkeys(allowances) for line in allowance]
        mark = f"0x{self._config.allow_mark:x}"
        if any(f"--mark {mark}/{mark}" in line for line in lines):
            self._rules.append(f"-A {chain} -j MARK --set-xmark 0x0/{mark}")
        self._rules += lines
        self._rules.append(f"-A {chain} -j DROP")

    def _allowances(
        self,
        chain: str,
        direction: Direction,
        subject: Pod,
        policy: NetworkPolicy,
        rule: Rule,
    ) -> list[Allowance]:
        side = "-s" if direction is Direction.INGRESS else "-d"
        allowances: list[Allowance] = []
        for target in self._targets(policy, rule):
            if not rule.ports:
                allowances.append(self._allow(chain, side, target, ""))
                continue
            numeric = [p for p in rule.ports if not isinstance(p.port, str)]
            named = [p for p in rule.ports if isinstance(p.port, str)]
            if direction is Direction.INGRESS:
                # Named ports of an ingress rule resolve against the subject, the destination.
                numeric += _resolved(named, subject)
                named = []
            elif target.pod is not None:
                numeric += _resolved(named, target.pod)
                named = []
            for policy_port in numeric:
                allowances.append(self._allow(chain, side, target, _port_match(policy_port)))
            if named:
                # Egress named ports towards addresses: each destination pod in range that
                # declares the name, at the number it gives it.
                for pod in self._pods:
                    address = _address(pod, self._family)
                    assert address is not None
                    if not _covers(target, address):
                        continue
                    for policy_port in _resolved(named, pod):
                        host = _Target(_host(address), pod=pod)
                        allowances.append(self._allow(chain, side, host, _port_match(policy_port)))
        return allowances

    def _targets(self, policy: NetworkPolicy, rule: Rule) -> list[_Target]:
        """The rule's peers as address targets of this family (none: nothing of this family)."""
        if not rule.peers:
            return [_Target(None)]
        targets: list[_Target] = []
        for peer in rule.peers:
            block = peer.ip_block
            if block is not None:
                if block.cidr.version == self._family:
                    excepts = tuple(e for e in block.excepts if e.version == self._family)
                    targets.append(_Target(block.cidr, excepts, block=block))
                continue
            for pod in self._selected(policy, peer):
                address = _address(pod, self._family)
                assert address is not None
                targets.append(_Target(_host(address), pod=pod))
        return targets

    def _selected(self, policy: NetworkPolicy, peer: Peer) -> list[Pod]:
        """Pods a selector peer stands for (podSelector alone: the policy's own namespace)."""
        pods, namespaces = peer.pod_selector, peer.namespace_selector
        if pods is None and namespaces is None:
            return []  # an empty peer: rejected by the API, matches nothing
        selected = []
        for pod in self._pods:
            if namespaces is None:
                in_scope = pod.namespace == policy.namespace
            else:
                in_scope = namespaces.matches(self._ns_labels.get(pod.namespace, Labels()))
            if in_scope and (pods is None or pods.matches(pod.labels)):
                selected.append(pod)
        return selected

    def _allow(self, chain: str, side: str, target: _Target, ports: str) -> Allowance:
        """Lines of ``chain`` that RETURN for ``target`` on ``ports`` (``""``: everything)."""
        match = f"{side} {target.network} " if target.network is not None else ""
        match += f"{ports} " if ports else ""
        if not target.excepts:
            return (f"-A {chain} {match}-j RETURN",)
        assert target.block is not None
        except_chain = self._except_chain(side, target.block, target.excepts)
        mark = f"0x{self._config.allow_mark:x}"
        return (
            f"-A {chain} {match}-j {except_chain}",
            f"-A {chain} -m mark --mark {mark}/{mark} -j RETURN",
        )

    def _except_chain(self, side: str, block: IPBlock, excepts: Iterable[IPNetwork]) -> str:
        key = (side, block)
        chain = self._except_chains.get(key)
        if chain is None:
            chain = self._except_chains[key] = self._config.chain(f"X-{len(self._except_chains)}")
            self._chains.append(chain)
            self._rules += [f"-A {chain} {side} {hole} -j RETURN" for hole in excepts]
            mark = f"0x{self._config.allow_mark:x}"
            self._rules.append(f"-A {chain} -j MARK --set-xmark {mark}/{mark}")
        return chain


def _address(pod: Pod, family: Family) -> IPAddress | None:
    return next((address for address in pod.ips if address.version == family), None)


def _host(address: IPAddress | None) -> IPNetwork:
    assert address is not None
    return ipaddress.ip_network(address)


def _covers(target: _Target, address: IPAddress) -> bool:
    if target.block is not None:
        return target.block.contains(address)
    return target.network is None or address in target.network


def _resolved(ports: Iterable[PolicyPort], pod: Pod) -> list[PolicyPort]:
    """Named ``ports`` as numbers on ``pod``; a name the pod does not declare matches nothing."""
    resolved = []
    for policy_port in ports:
        assert isinstance(policy_port.port, str)
        number = pod.named_port(policy_port.port, policy_port.protocol)
        if number is not None:
            resolved.append(PolicyPort(protocol=policy_port.protocol, port=number))
    return resolved


def _port_match(policy_port: PolicyPort) -> str:
    """``-p PROTO [-m PROTO --dport N[:M]]`` for one numeric (or absent) port."""
    protocol = policy_port.protocol.lower()
    if policy_port.port is None:
        return f"-p {protocol}"
    assert isinstance(policy_port.port, int)
    ports = str(policy_port.port)
    if policy_port.end_port is not None and policy_port.end_port != policy_port.port:
        ports += f":{policy_port.end_port}"
    return f"-p {protocol} -m {protocol} --dport {ports}"
