"""NetworkPolicy provenance, built when first asked for: which rule allowed, which policy isolated.

A NetworkPolicy table decides by the union of its policies' rules (enforcement/tables.py
``PolicyTable``); to *name* the rule that allowed a flow, the rules are also kept one by one
(``RuleMatch``), and to name what denied it, the isolating policies. Nothing on the packet path
needs them: ``AllowTables.evaluate`` decides with the union alone, and only ``outcome`` (flow
logs, explain) asks. Building them for every policy at compile time cost about a tenth of a
full compile (1k and 10k pods in ``bench scale``), so each table asks this object the first
time its provenance is read, and the answer is kept (per policy here, per table there).

What it needs of the compilation that made the tables is kept by reference, not recomputed:
the selector peers' pod sets and the rules' port matches, memoised by the compiler by the
identity of the live rule and peer objects (this object holds the policies, so those objects
stay alive and their ids stay theirs). By the time anyone asks, the compilation is over and
every table has been built, so every peer of a rule that can match some pod has its pod set
in the memo; a peer missing from it belongs to an ingress rule whose named ports no selected
pod has, a rule that matches nothing, so it stands for no pod. The compiler object itself is
not kept (its indexes are freed with it).

Thread safety: the memo dicts are only added to, with values that are equal whoever computes
them, so two threads asking at once at worst build one policy's rules twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from enforcement.model import Direction, IPBlock, NetworkPolicy, PolicyPort, Rule
from enforcement.tables import AddressSet, PodSet, PortMatch, RefFields, RuleMatch
from enforcement.tiers import network_policy_isolation_ref, network_policy_rule_ref

Provenance = tuple[tuple[tuple[RuleMatch, ...], ...], tuple[RefFields, ...]]
"""Per policy (by name) its rules one by one; and the isolating policies (by name)."""


class NetworkPolicyRules:
    """The provenance source of one compilation's NetworkPolicy tables."""

    def __init__(
        self,
        policies: Sequence[NetworkPolicy],
        peer_targets: Mapping[tuple[str, int], PodSet],
        no_target: PodSet,
        rule_ports: Mapping[int, PortMatch],
        port_match: Callable[[Sequence[PolicyPort]], PortMatch],
        block_ranges: Callable[[IPBlock], tuple[tuple[int, int], ...]],
    ) -> None:
        self._policies = policies
        self._peer_targets = peer_targets
        """(scope, id(peer)) -> pod set, the compiler's memo (see ``_Compiler._target``)."""
        self._no_target = no_target
        self._rule_ports = rule_ports
        """id(rule) -> port match, the compiler's memo."""
        self._port_match = port_match
        self._block_ranges = block_ranges
        self._built: dict[tuple[Direction, int], tuple[RuleMatch, ...]] = {}
        self._isolation: dict[int, RefFields] = {}
        self._rank: list[int] | None = None

    def provenance(self, indices: tuple[int, ...], direction: Direction) -> Provenance:
        """For a table uniting the policies ``indices``: their rules and isolation refs, policies
        ordered by name (the order provenance names them in; the snapshot's is arbitrary)."""
        by_name = sorted(indices, key=self._policy_rank().__getitem__)
        return (
            tuple([self._rules(index, direction) for index in by_name]),
            tuple([self._isolation_ref(index) for index in by_name]),
        )

    def _policy_rank(self) -> list[int]:
        if self._rank is None:
            order = sorted(range(len(self._policies)), key=lambda i: self._policies[i].key)
            rank = [0] * len(order)
            for position, index in enumerate(order):
                rank[index] = position
            self._rank = rank
        return self._rank

    def _isolation_ref(self, index: int) -> RefFields:
        ref = self._isolation.get(index)
        if ref is None:
            ref = self._isolation[index] = network_policy_isolation_ref(self._policies[index])
        return ref

    def _rules(self, index: int, direction: Direction) -> tuple[RuleMatch, ...]:
        """The rules of NetworkPolicy ``index`` one by one, built once per direction."""
        rules = self._built.get((direction, index))
        if rules is None:
            policy = self._policies[index]
            rules = self._built[(direction, index)] = tuple(
                [
                    self._rule(policy, number, rule)
                    for number, rule in enumerate(policy.rules(direction))
                ]
            )
        return rules

    def _rule(self, policy: NetworkPolicy, number: int, rule: Rule) -> RuleMatch:
        v4 = v6 = None
        pods: tuple[PodSet, ...] = ()
        if rule.peers:
            v4, v6 = self._address_sets(rule)
            # Only a peer without a namespace selector depends on the policy's namespace (the
            # compiler's memo key, ``_Compiler._target``).
            pods = tuple(
                [
                    self._peer_targets.get(
                        (policy.namespace if peer.namespace_selector is None else "", id(peer)),
                        self._no_target,
                    )
                    for peer in rule.peers
                    if peer.ip_block is None
                ]
            )
        ports = self._rule_ports.get(id(rule))
        if ports is None:
            ports = self._port_match(rule.ports)
        return RuleMatch(
            ports, not rule.peers, v4, v6, pods, None, network_policy_rule_ref(policy, number)
        )

    def _address_sets(self, rule: Rule) -> tuple[AddressSet | None, AddressSet | None]:
        """The IPv4 and IPv6 addresses the ipBlocks of ``rule`` match."""
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for peer in rule.peers:
            if peer.ip_block is not None:
                ranges[peer.ip_block.cidr.version].extend(self._block_ranges(peer.ip_block))
        return (
            AddressSet(ranges[4]) if ranges[4] else None,
            AddressSet(ranges[6]) if ranges[6] else None,
        )
