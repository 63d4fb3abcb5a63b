"""Stage 1 of the pipeline: the policy compiler.

    ClusterSnapshot (model.py) --compile_tables--> AllowTables (tables.py) --> decision

Pure: cluster state in, immutable tables out; no I/O, no clock, no globals, and the same
snapshot always yields tables that decide every packet the same way. All caches live in one
:class:`_Compiler` object that exists for the duration of one compilation.

How it scales (Cilium's ideas, in Python):

- Pods are grouped into *identities*: same namespace, same labels, same named ports. Selectors
  are evaluated once per identity (not per pod) through label indexes ((key, value) -> items),
  and each distinct selector once per scope (memoised).
- Only local pods (this node, not hostNetwork) get tables. Pods selected by the same policies
  share one table per direction (interned); ingress tables, whose named ports resolve against
  the selected pod itself, are also keyed by its named ports when the policies use any.
- Peers that select every pod of a namespace, or every pod, become one entry instead of one per
  identity; large selections are shared between tables instead of copied into each (so a
  policy admitting "every namespace labelled team=x" costs one set, not one per table); ipBlocks
  become a merged interval map per address family.

Measured on one core of the development machine: 100k pods, 10k policies, 1000 namespaces,
all pods local, compile in about 3 s with a peak of about 200 MiB allocated; about half of that
time is CPython's cyclic garbage collector, which the caller may tune (``gc.freeze()`` after
building the snapshot); a pure compiler does not touch it.

Semantics are networking.k8s.io/v1
(https://kubernetes.io/docs/concepts/services-networking/network-policies/) with choices
the API leaves open: ipBlocks also match pod addresses (the upstream e2e suite expects it), and
when two pods claim one address the local pod wins, then the smaller "namespace/name". A pod
whose Namespace is not in the snapshot is taken to be in a namespace labelled only with
``kubernetes.io/metadata.name`` (which the API server always sets).

ClusterNetworkPolicies (``ClusterSnapshot.cluster_policies``, with ``nodes`` for their node
peers) are compiled by :class:`enforcement.tiers.TierCompiler` from this compiler's indexes and
memoised selections into per-direction plans for the local pods they select. The NetworkPolicy
rules one by one, which name the rule that allowed a flow (policies by name), are built on first
use from this compiler's memos (:mod:`enforcement.provenance`): the packet path never needs them.

Staged policies (``staged``, from ``model.STAGED_ANNOTATION``) are left out of the tables;
when there are any, the same compiler object compiles a second set with them enforced too
(``AllowTables.staged``), reusing its indexes and memos: see :func:`compile_tables`.

Pods whose objects could not be read (``ClusterSnapshot.unreadable_pods``) are unknown
endpoints, fail-closed: their labels are unknown, so whether a policy selects them or admits
them cannot be known. Each address one claims goes into the ipcache as an unknown endpoint
(whoever else claims it: an address in doubt is unknown); if it runs here (or its node is
unknown, or a local pod shares the address) it is isolated both ways by tables that allow
nothing, and ``evaluate`` answers UNKNOWN_ENDPOINT for every flow that touches it; elsewhere it
is a peer that no selector matches and only ipBlocks admit.

Why a flow is allowed or denied, for people, is not worked out here: enforcement/explain.py
walks the policies itself, sharing nothing with the tables but model.py, so each checks the
other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.model import (
    PROTOCOL_NUMBERS,
    ClusterSnapshot,
    ContainerPort,
    Direction,
    IPBlock,
    Labels,
    LabelSelector,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Rule,
    UnreadablePod,
)
from enforcement.provenance import NetworkPolicyRules
from enforcement.tables import (
    ALL_TRAFFIC,
    MAX_PORT,
    NO_PORT_NAMES,
    UNKNOWN_EGRESS,
    UNKNOWN_IDENTITY,
    UNKNOWN_INGRESS,
    AddressMap,
    AllowTables,
    DirectionPlan,
    Endpoint,
    PeerSelection,
    PodSet,
    PolicyTable,
    PortMatch,
    PortNames,
    TierPlans,
)
from enforcement.tiers import TierCompiler

METADATA_NAME_LABEL = "kubernetes.io/metadata.name"

_T = TypeVar("_T", bound=Hashable)

PortKey = tuple[tuple[tuple[int, str], int], ...]
"""A pod's named ports as sorted ((protocol, name), number) pairs: part of its identity."""


def compile_tables(
    snapshot: ClusterSnapshot,
    node_name: str,
    generation: int = 0,
    *,
    large_selection: int | None = None,
) -> AllowTables:
    """Compile the allow tables that node ``node_name`` enforces for its own pods.

    Pods of every node are peers; only this node's pods (not hostNetwork) are subjects: the
    egress of a local source and the ingress of a local destination are enforced here.
    ``generation`` is stored in the result, untouched, for the caller's bookkeeping.
    ``large_selection`` overrides :data:`LARGE_SELECTION` (tests use it to exercise both forms);
    it changes the shape of the tables, never a decision.

    Staged policies (``staged`` on either kind, set by ``model.STAGED_ANNOTATION``) are left out
    of these tables entirely: they decide every flow exactly as the tables of the snapshot
    without them would (a staged default-deny isolates nobody). When the snapshot holds at
    least one, the result's ``staged`` holds the tables of the same snapshot with them enforced
    too (same generation; their refs have ``staged`` set), to report what they would change
    (``enforcement.staged``). Both come from one compiler object, so the pod and namespace
    indexes and the memoised selections and port matches are built once; without staged
    policies ``staged`` is None and nothing more is compiled.
    """
    threshold = LARGE_SELECTION if large_selection is None else large_selection
    compiler = _Compiler(snapshot, node_name, threshold)
    try:
        if not any(policy.staged for policy in snapshot.policies) and not any(
            policy.staged for policy in snapshot.cluster_policies
        ):
            return compiler.compile(generation)
        staged = compiler.compile(generation)
        compiler.use_policies(
            tuple(policy for policy in snapshot.policies if not policy.staged),
            tuple(policy for policy in snapshot.cluster_policies if not policy.staged),
        )
        return compiler.compile(generation, staged=staged)
    finally:
        # The tier compiler holds the compiler's own bound methods (a reference cycle): cut it,
        # so the compiler is freed by reference counting, never left to the cyclic collector,
        # which the agent pauses during compiles and then freezes (enforcement/latency.py).
        del compiler._tiers


def namespace_labels(snapshot: ClusterSnapshot) -> dict[str, Labels]:
    """Labels of every namespace the snapshot mentions, by name.

    A namespace that only pods or policies mention gets the ``kubernetes.io/metadata.name``
    label the API server would have given it, so it still answers to selectors on that label.
    """
    labels = {namespace.name: namespace.labels for namespace in snapshot.namespaces}
    for name in [pod.namespace for pod in snapshot.pods] + [
        policy.namespace for policy in snapshot.policies
    ]:
        if name not in labels:
            labels[name] = Labels({METADATA_NAME_LABEL: name})
    return labels


def port_numbers(pod: Pod) -> dict[tuple[int, str], int]:
    """(protocol number, name) -> number for the pod's named container ports.

    The first declaration wins, as in :meth:`Pod.named_port`.
    """
    numbers: dict[tuple[int, str], int] = {}
    for container_port in pod.ports:
        if container_port.name is not None:
            key = (PROTOCOL_NUMBERS[container_port.protocol], container_port.name)
            numbers.setdefault(key, container_port.port)
    return numbers


class _LabelIndex(Generic[_T]):
    """Items (namespaces or identities) by label, to evaluate selectors without a full scan.

    ``select`` intersects the sets of the positive requirements (matchLabels, In, Exists),
    smallest first, then removes the items the negative ones (NotIn, DoesNotExist) exclude;
    only a selector without positive requirements starts from every item. Memoised per
    selector: many policies repeat the same selectors.
    """

    __slots__ = ("_by_key", "_by_pair", "_items", "_memo")

    def __init__(self) -> None:
        self._items: set[_T] = set()
        self._by_pair: dict[tuple[str, str], set[_T]] = {}
        self._by_key: dict[str, set[_T]] = {}
        self._memo: dict[LabelSelector, frozenset[_T]] = {}

    def add(self, item: _T, labels: Iterable[tuple[str, str]]) -> None:
        """Index ``item`` under its (key, value) label pairs."""
        self._items.add(item)
        for key, value in labels:
            self._by_pair.setdefault((key, value), set()).add(item)
            self._by_key.setdefault(key, set()).add(item)
        if self._memo:
            self._memo.clear()

    def select(self, selector: LabelSelector) -> frozenset[_T]:
        selected = self._memo.get(selector)
        if selected is None:
            selected = self._memo[selector] = self._select(selector)
        return selected

    def _select(self, selector: LabelSelector) -> frozenset[_T]:
        positive: list[set[_T]] = []
        negative: list[set[_T]] = []
        for key, value in selector.match_labels:
            positive.append(self._by_pair.get((key, value), set()))
        for requirement in selector.match_expressions:
            with_value: set[_T] = set()
            if requirement.operator in ("In", "NotIn"):
                for value in requirement.values:
                    with_value |= self._by_pair.get((requirement.key, value), set())
            if requirement.operator == "In":
                positive.append(with_value)
            elif requirement.operator == "NotIn":
                # Items without the key satisfy NotIn: remove only those holding a listed value.
                negative.append(with_value)
            elif requirement.operator == "Exists":
                positive.append(self._by_key.get(requirement.key, set()))
            else:
                negative.append(self._by_key.get(requirement.key, set()))
        if positive:
            positive.sort(key=len)
            result = set(positive[0])
            for other in positive[1:]:
                if not result:
                    break
                result &= other
        else:
            result = set(self._items)
        for excluded in negative:
            if not result:
                break
            result -= excluded
        return frozenset(result)


@dataclass(frozen=True, slots=True)
class _NamedPorts:
    """The named container ports of a pod, in the three forms the compiler needs."""

    key: PortKey
    numbers: Mapping[tuple[int, str], int]
    """(protocol, name) -> number, to resolve named ports at compile time."""
    names: PortNames
    """(protocol, number) -> names, to resolve named ports at lookup."""

    @staticmethod
    def of(pod: Pod) -> _NamedPorts:
        numbers = port_numbers(pod)
        names: dict[tuple[int, int], set[str]] = {}
        for (protocol, name), number in numbers.items():
            names.setdefault((protocol, number), set()).add(name)
        return _NamedPorts(
            key=tuple(sorted(numbers.items())),
            numbers=MappingProxyType(numbers),
            names=MappingProxyType({k: frozenset(v) for k, v in names.items()}),
        )


_NO_NAMED_PORTS = _NamedPorts((), MappingProxyType({}), MappingProxyType({}))


@dataclass(slots=True, eq=False)
class _Identity:
    """Pods that no selector and no named port can tell apart."""

    number: int
    namespace: str
    labels: Labels
    label_pairs: tuple[tuple[str, str], ...]
    port_key: PortKey
    numbers: Mapping[tuple[int, str], int]
    """(protocol, name) -> number, to resolve named ports at compile time."""
    names: PortNames
    """(protocol, number) -> names, to resolve named ports at lookup."""
    local: bool = False
    """At least one pod of this identity runs on the node being compiled for."""


_Target = PodSet
"""One object per distinct (namespace scope, pod selector, namespace selector): tables and
rules that share a target share its sets."""

_NO_TARGET = _Target(False, frozenset(), frozenset())
_ALL_PODS = _Target(True, frozenset(), frozenset())

LARGE_SELECTION = 32
"""Selections with more members than this are shared between tables instead of copied in."""


class _Compiler:
    """One compilation: the indexes of one snapshot and the memo caches that use them."""

    def __init__(self, snapshot: ClusterSnapshot, node_name: str, large_selection: int) -> None:
        self._snapshot = snapshot
        self._node_name = node_name
        self._large_selection = large_selection
        self._namespaces = _LabelIndex[str]()
        for name, labels in namespace_labels(snapshot).items():
            self._namespaces.add(name, labels.items())
        self._identities: list[_Identity] = []
        self._pods: list[tuple[Pod, _Identity]] = []
        self._all_identities = _LabelIndex[int]()
        self._by_namespace: dict[str, _LabelIndex[int]] = {}
        self._local_by_namespace: dict[str, _LabelIndex[int]] = {}
        self._group_pods()
        self._port_matches: dict[tuple[PolicyPort, ...], PortMatch] = {}
        self._interned: dict[PortMatch, PortMatch] = {}
        self._unions: dict[tuple[PortMatch, PortMatch], PortMatch] = {}
        self._resolved: dict[tuple[PortMatch, PortKey], PortMatch] = {}
        self._targets: dict[tuple[str, LabelSelector | None, LabelSelector | None], _Target] = {}
        self._peer_targets: dict[tuple[str, int], _Target] = {}
        self._blocks: dict[IPBlock, tuple[int, tuple[tuple[int, int], ...]]] = {}
        self._address_maps: dict[tuple[tuple[int, int, PortMatch], ...], AddressMap] = {}
        self._ports_by_rule: dict[int, PortMatch] = {}
        self.use_policies(snapshot.policies, snapshot.cluster_policies)

    def use_policies(
        self,
        policies: tuple[NetworkPolicy, ...],
        cluster_policies: tuple[ClusterNetworkPolicy, ...],
    ) -> None:
        """Compile these policies (of the snapshot) from now on: the snapshot's, or the
        enforced ones among them after the staged tables were compiled with every policy.

        The pod and namespace indexes and the memos stay: they depend on the pods, and on the
        policies only through the live rule and peer objects they are keyed by (the same
        objects in both lists), so what one compilation memoised is right for the next."""
        self._policies = policies
        self._provenance = NetworkPolicyRules(
            policies,
            self._peer_targets,
            _NO_TARGET,
            self._ports_by_rule,
            port_match,
            block_ranges,
        )
        """Names the rule behind a NetworkPolicy verdict, built when first asked for: it keeps
        the memos it reads, not this compiler."""
        self._tiers = TierCompiler(
            cluster_policies,
            self._snapshot.nodes,
            select_namespaces=self._namespaces.select,
            local_identities=self._local_identities,
            pod_set=lambda pods, namespaces: self._selection("", pods, namespaces),
            port_match=self._port_match,
        )

    def _group_pods(self) -> None:
        """Give every pod that can be a peer or a subject its identity."""
        by_key: dict[tuple[str, Labels, PortKey], _Identity] = {}
        # Pods of one workload declare the same ports: work their named ports out once.
        by_ports: dict[tuple[ContainerPort, ...], _NamedPorts] = {(): _NO_NAMED_PORTS}
        for pod in self._snapshot.pods:
            if pod.host_network or not pod.ips:
                # hostNetwork pods are the node, not pods; pods without addresses can neither
                # send nor receive anything we could attribute to them.
                continue
            named = by_ports.get(pod.ports)
            if named is None:
                named = by_ports[pod.ports] = _NamedPorts.of(pod)
            key = (pod.namespace, pod.labels, named.key)
            identity = by_key.get(key)
            if identity is None:
                identity = _Identity(
                    number=len(self._identities),
                    namespace=pod.namespace,
                    labels=pod.labels,
                    label_pairs=tuple(pod.labels.items()),
                    port_key=named.key,
                    numbers=named.numbers,
                    names=named.names,
                )
                by_key[key] = identity
                self._identities.append(identity)
                self._all_identities.add(identity.number, identity.label_pairs)
                index = self._by_namespace.get(pod.namespace)
                if index is None:
                    index = self._by_namespace[pod.namespace] = _LabelIndex()
                index.add(identity.number, identity.label_pairs)
            if not identity.local and pod.node_name == self._node_name:
                identity.local = True
                index = self._local_by_namespace.get(pod.namespace)
                if index is None:
                    index = self._local_by_namespace[pod.namespace] = _LabelIndex()
                index.add(identity.number, identity.label_pairs)
            self._pods.append((pod, identity))

    def compile(self, generation: int, *, staged: AllowTables | None = None) -> AllowTables:
        """The tables of the policies in use (``use_policies``); ``staged``: what the result
        carries as its staged tables."""
        ingress_selecting: dict[int, list[int]] = {}
        egress_selecting: dict[int, list[int]] = {}
        for index, policy in enumerate(self._policies):
            subjects = self._local_by_namespace.get(policy.namespace)
            if subjects is None:
                continue
            ingress = Direction.INGRESS in policy.policy_types
            egress = Direction.EGRESS in policy.policy_types
            for number in subjects.select(policy.pod_selector):
                if ingress:
                    ingress_selecting.setdefault(number, []).append(index)
                if egress:
                    egress_selecting.setdefault(number, []).append(index)

        named_ingress = [_uses_named_ports(policy.ingress) for policy in self._policies]
        interned: dict[tuple[Direction, tuple[int, ...], PortKey], PolicyTable] = {}
        ingress_tables: dict[int, PolicyTable] = {}
        egress_tables: dict[int, PolicyTable] = {}
        for direction, selecting, tables in (
            (Direction.INGRESS, ingress_selecting, ingress_tables),
            (Direction.EGRESS, egress_selecting, egress_tables),
        ):
            for number in sorted(selecting):
                indices = tuple(selecting[number])
                identity = self._identities[number]
                port_key: PortKey = ()
                if direction is Direction.INGRESS and any(named_ingress[i] for i in indices):
                    port_key = identity.port_key
                key = (direction, indices, port_key)
                table = interned.get(key)
                if table is None:
                    table = interned[key] = self._table(direction, indices, identity)
                tables[number] = table

        # ClusterNetworkPolicies: local identities they select get a plan per direction.
        tiers: dict[int, TierPlans] = {}
        if self._tiers:
            interned_tiers: dict[tuple[DirectionPlan | None, DirectionPlan | None], TierPlans] = {}
            for number, indices in self._tiers.subjects().items():
                plans = (
                    self._tiers.plan(Direction.INGRESS, indices, ingress_tables.get(number)),
                    self._tiers.plan(Direction.EGRESS, indices, egress_tables.get(number)),
                )
                found = interned_tiers.get(plans)
                if found is None:
                    found = interned_tiers[plans] = TierPlans(*plans)
                tiers[number] = found

        ipcache: dict[bytes, Endpoint] = {}
        node_name = self._node_name
        for pod, identity in self._pods:
            local = pod.node_name == node_name
            number = identity.number
            endpoint = Endpoint(
                pod.namespace,
                pod.name,
                pod.key,
                pod.node_name,
                local,
                number,
                identity.names,
                ingress_tables.get(number) if local else None,
                egress_tables.get(number) if local else None,
                False,
                tiers.get(number) if local else None,
            )
            for address in pod.ips:
                packed = address.packed
                other = ipcache.get(packed)
                if other is None or _preferred(endpoint, other):
                    ipcache[packed] = endpoint
        unknown = 0
        for unreadable in self._snapshot.unreadable_pods:
            if unreadable.ips:
                unknown += 1
            for address in unreadable.ips:
                packed = address.packed
                ipcache[packed] = _unknown_endpoint(unreadable, node_name, ipcache.get(packed))
        return AllowTables(
            generation=generation,
            node_name=self._node_name,
            ipcache=ipcache,
            pod_count=len(self._pods) + unknown,
            identity_count=len(self._identities),
            table_count=len(interned),
            policy_count=len(self._policies),
            staged=staged,
        )

    def _table(
        self, direction: Direction, indices: tuple[int, ...], subject: _Identity
    ) -> PolicyTable:
        """The union of the ``direction`` rules of the policies ``indices``.

        ``subject`` is one of the selected pods' identity; ingress named ports resolve against
        it (tables are interned by named ports when that matters).
        """
        any_peer: PortMatch | None = None
        all_pods: PortMatch | None = None
        identities: dict[int, PortMatch] = {}
        namespaces: dict[str, PortMatch] = {}
        blocks: dict[int, list[tuple[int, int, PortMatch]]] = {4: [], 6: []}
        large: dict[_Target, PortMatch] = {}
        for index in indices:
            policy = self._policies[index]
            for rule in policy.rules(direction):
                match = self._rule_ports(rule)
                if direction is Direction.INGRESS:
                    match = self._resolve(match, subject)
                if match.is_empty:
                    continue  # only named ports, none of which the destination has
                if not rule.peers:
                    any_peer = self._union(any_peer, match)
                    continue
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        family, ranges = self._block(peer.ip_block)
                        blocks[family].extend((first, last, match) for first, last in ranges)
                        continue
                    target = self._target(policy.namespace, peer)
                    if target.all_pods:
                        all_pods = self._union(all_pods, match)
                        continue
                    if target.is_larger_than(self._large_selection):
                        # Shared, not copied; named ports resolve at lookup (the destination's).
                        large[target] = self._union(large.get(target), match)
                        continue
                    for namespace in target.namespaces:
                        namespaces[namespace] = self._union(namespaces.get(namespace), match)
                    # Egress named ports resolve against the peer, known here for identities.
                    resolve = direction is Direction.EGRESS and bool(match.named)
                    for number in target.identities:
                        peer_match = (
                            self._resolve(match, self._identities[number]) if resolve else match
                        )
                        if not peer_match.is_empty:
                            identities[number] = self._union(identities.get(number), peer_match)
        return PolicyTable(
            direction=direction,
            policies=tuple(self._policies[i].key for i in indices),
            indices=indices,
            provenance_source=self._provenance,
            any_peer=any_peer,
            v4=self._address_map(blocks[4]),
            v6=self._address_map(blocks[6]),
            identities=MappingProxyType(identities),
            namespaces=MappingProxyType(namespaces),
            all_pods=all_pods,
            selections=tuple(
                PeerSelection(target.identities, target.namespaces, match)
                for target, match in large.items()
            ),
        )

    def _rule_ports(self, rule: Rule) -> PortMatch:
        """:meth:`_port_match` of a rule's ports, memoised by the (live) rule object too."""
        match = self._ports_by_rule.get(id(rule))
        if match is None:
            match = self._ports_by_rule[id(rule)] = self._port_match(rule.ports)
        return match

    def _local_identities(self, namespace: str, pods: LabelSelector) -> frozenset[int]:
        index = self._local_by_namespace.get(namespace)
        return frozenset() if index is None else index.select(pods)

    def _intern(self, match: PortMatch) -> PortMatch:
        return self._interned.setdefault(match, match)

    def _port_match(self, ports: tuple[PolicyPort, ...]) -> PortMatch:
        match = self._port_matches.get(ports)
        if match is None:
            match = self._port_matches[ports] = self._intern(port_match(ports))
        return match

    def _union(self, current: PortMatch | None, added: PortMatch) -> PortMatch:
        if current is None or current is added:
            return added
        key = (current, added)
        result = self._unions.get(key)
        if result is None:
            result = self._unions[key] = self._intern(current.union(added))
        return result

    def _resolve(self, match: PortMatch, destination: _Identity) -> PortMatch:
        if not match.named:
            return match
        key = (match, destination.port_key)
        result = self._resolved.get(key)
        if result is None:
            result = self._resolved[key] = self._intern(match.resolve(destination.numbers))
        return result

    def _block(self, block: IPBlock) -> tuple[int, tuple[tuple[int, int], ...]]:
        ranges = self._blocks.get(block)
        if ranges is None:
            ranges = self._blocks[block] = (block.cidr.version, block_ranges(block))
        return ranges

    def _target(self, policy_namespace: str, peer: Peer) -> _Target:
        pods, namespaces = peer.pod_selector, peer.namespace_selector
        # Only a peer without a namespace selector depends on the policy's namespace.
        scope = policy_namespace if namespaces is None else ""
        # First by the peer object (the snapshot keeps it alive while we compile): hashing a
        # selector walks all of it, and the tables and the provenance rules ask for each peer.
        target = self._peer_targets.get((scope, id(peer)))
        if target is None:
            target = self._peer_targets[(scope, id(peer))] = self._selection(
                policy_namespace, pods, namespaces
            )
        return target

    def _selection(
        self, policy_namespace: str, pods: LabelSelector | None, namespaces: LabelSelector | None
    ) -> _Target:
        """The pods a peer with these selectors stands for (memoised by the selectors)."""
        key = (policy_namespace if namespaces is None else "", pods, namespaces)
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = self._find_target(policy_namespace, pods, namespaces)
        return target

    def _find_target(
        self,
        policy_namespace: str,
        pods: LabelSelector | None,
        namespaces: LabelSelector | None,
    ) -> _Target:
        every_pod = pods is None or pods.is_empty
        if namespaces is None:
            if pods is None:
                return _NO_TARGET  # an empty peer: rejected by the API, matches nothing here
            index = self._by_namespace.get(policy_namespace)
            if index is None:
                return _NO_TARGET
            if every_pod:
                return _Target(False, frozenset((policy_namespace,)), frozenset())
            return _Target(False, frozenset(), index.select(pods))
        if namespaces.is_empty and every_pod:
            return _ALL_PODS
        if namespaces.is_empty:
            assert pods is not None
            return _Target(False, frozenset(), self._all_identities.select(pods))
        selected = [n for n in self._namespaces.select(namespaces) if n in self._by_namespace]
        if every_pod:
            return _Target(False, frozenset(selected), frozenset())
        assert pods is not None
        numbers: set[int] = set()
        for namespace in selected:
            numbers |= self._by_namespace[namespace].select(pods)
        return _Target(False, frozenset(), frozenset(numbers))

    def _address_map(self, items: list[tuple[int, int, PortMatch]]) -> AddressMap | None:
        """Merge possibly overlapping (first, last, match) into disjoint intervals.

        A sweep over the interval boundaries: each elementary segment gets the union of the
        matches covering it; neighbours with equal matches are joined.
        """
        if not items:
            return None
        # Tables of different policy sets often share their ipBlocks: build each map once.
        key = tuple(sorted(items, key=lambda item: (item[0], item[1])))
        cached = self._address_maps.get(key)
        if cached is not None:
            return cached
        opening: dict[int, list[PortMatch]] = {}
        closing: dict[int, list[PortMatch]] = {}
        for first, last, match in key:
            opening.setdefault(first, []).append(match)
            closing.setdefault(last + 1, []).append(match)
        points = sorted(opening.keys() | closing.keys())
        active: Counter[PortMatch] = Counter()
        unions: dict[frozenset[PortMatch], PortMatch] = {}
        segments: list[tuple[int, int, PortMatch]] = []
        for position, point in enumerate(points):
            for match in closing.get(point, ()):
                active[match] -= 1
                if not active[match]:
                    del active[match]
            for match in opening.get(point, ()):
                active[match] += 1
            if not active or position + 1 == len(points):
                continue
            covering = frozenset(active)
            merged = unions.get(covering)
            if merged is None:
                merged = None
                # Unions are canonical values: the order of this loop cannot change the result.
                for match in covering:
                    merged = self._union(merged, match)
                assert merged is not None
                unions[covering] = merged
            last = points[position + 1] - 1
            if segments and segments[-1][1] + 1 == point and segments[-1][2] == merged:
                segments[-1] = (segments[-1][0], last, merged)
            else:
                segments.append((point, last, merged))
        result = self._address_maps[key] = AddressMap(segments)
        return result


def _unknown_endpoint(pod: UnreadablePod, node_name: str, other: Endpoint | None) -> Endpoint:
    """The endpoint of an address an unreadable pod claims, ``other`` being its owner so far.

    An address in doubt is unknown, whoever else claims it; it is local (denied both ways
    here) when any claimant is local: a local pod sharing it must not be opened by it.
    """
    local = pod.runs_on(node_name) or (other is not None and other.local)
    namespace, name, key, node = pod.namespace, pod.name, pod.key, pod.node_name
    if other is not None and other.unknown and other.key < key:
        namespace, name, key, node = other.namespace, other.name, other.key, other.node_name
    return Endpoint(
        namespace,
        name,
        key,
        node,
        local,
        UNKNOWN_IDENTITY,
        NO_PORT_NAMES,
        UNKNOWN_INGRESS if local else None,
        UNKNOWN_EGRESS if local else None,
        unknown=True,
    )


def _preferred(candidate: Endpoint, current: Endpoint) -> bool:
    """Which pod owns an address two pods claim: the local one, then the smaller key."""
    if candidate.local != current.local:
        return candidate.local
    return candidate.key < current.key


def _uses_named_ports(rules: Iterable[Rule]) -> bool:
    return any(isinstance(p.port, str) for rule in rules for p in rule.ports)


def port_match(ports: Sequence[PolicyPort]) -> PortMatch:
    """The PortMatch of one rule's ``ports`` (empty: everything, ICMP included)."""
    if not ports:
        return ALL_TRAFFIC
    ranges: list[tuple[int, int, int]] = []
    named: list[tuple[int, str]] = []
    for policy_port in ports:
        protocol = PROTOCOL_NUMBERS[policy_port.protocol]
        if policy_port.port is None:
            ranges.append((protocol, 0, MAX_PORT))
        elif isinstance(policy_port.port, str):
            named.append((protocol, policy_port.port))
        else:
            last = policy_port.port if policy_port.end_port is None else policy_port.end_port
            ranges.append((protocol, policy_port.port, last))
    return PortMatch(False, ranges, named)


def block_ranges(block: IPBlock) -> tuple[tuple[int, int], ...]:
    """The integer address ranges of ``cidr`` minus every ``except``, sorted and disjoint."""
    first = int(block.cidr.network_address)
    last = int(block.cidr.broadcast_address)
    holes = sorted(
        (int(hole.network_address), int(hole.broadcast_address))
        for hole in block.excepts
        if hole.version == block.cidr.version
    )
    ranges: list[tuple[int, int]] = []
    cursor = first
    for hole_first, hole_last in holes:
        if hole_last < cursor:
            continue
        if hole_first > last:
            break
        if hole_first > cursor:
            ranges.append((cursor, hole_first - 1))
        cursor = max(cursor, hole_last + 1)
    if cursor <= last:
        ranges.append((cursor, last))
    return tuple(ranges)
