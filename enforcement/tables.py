"""Stage 2 of the pipeline: the compiled allow tables (the lookup side).

    ClusterSnapshot (model.py) --compiler.py--> AllowTables (this module) --> decision

Everything here is immutable once built and is published by swapping one reference, so the
packet path reads it without locks. Every decision structure is filled in by the compiler; the
one thing filled at lookup is the intern table of provenance (:meth:`AllowTables.outcome`: one
Outcome per pair of deciders, made the first time that pair decides a flow), which threads may
fill concurrently without harm.

Deciding a packet costs a fixed number of dict lookups and bisections, whatever the number of
pods and policies:

1. the *ipcache* (packed address -> :class:`Endpoint`) finds the pod behind each address;
2. each local pod that is isolated for a direction points at one :class:`PolicyTable` for that
   direction, shared by every pod selected by the same policies (interned by the compiler);
3. a table answers "may this peer use this protocol and port?" with five lookups, each
   yielding a :class:`PortMatch`: rules with no peers (any address), the peer's address in a
   disjoint interval map built from ipBlocks, the peer's identity, the peer's namespace, and
   rules that select every pod; plus one set-membership test per *large* peer selection.

Large selections (a namespace selector matching hundreds of namespaces, a pod selector matching
thousands of identities across namespaces) are not copied into every table: each is one shared
:class:`PeerSelection` whose sets are built once per distinct selector. Their number in a table
is bounded by the rules of the policies selecting that table's pods, never by the number of
pods or policies in the cluster; small selections are merged into the per-table dicts.

Named ports are resolved by the compiler wherever the destination's identity is known (every
ingress table, and egress entries keyed by a peer identity); the remaining ones (egress entries
for ipBlocks, namespaces and all pods) are resolved at lookup against the destination endpoint's
named ports, through :attr:`Endpoint.port_names`. A named port never matches a destination that
is not a pod.

Tiers (ClusterNetworkPolicy, ``enforcement/tiers.py``): a local pod some ClusterNetworkPolicy
selects carries :class:`TierPlans`, one :class:`DirectionPlan` per direction (Admin rules, its
NetworkPolicy table, Baseline rules; first match, Pass leaves the tier). Pods no
ClusterNetworkPolicy selects are decided exactly as before; ``evaluate`` checks one flag to
know whether any pod is tiered at all. Provenance: ``outcome`` names what decided each
direction (:class:`Outcome`, naming RuleRefs), interned.

Staged policies (``enforcement.model.STAGED_ANNOTATION``) are in no table that decides a
packet. When the snapshot has some, :attr:`AllowTables.staged` holds a second set of tables
with them enforced too, built by the same compilation and read only to report what they would
change (``enforcement.staged``); the RuleRefs of staged policies carry ``staged=True``.

An :class:`Endpoint` marked ``unknown`` stands for a pod whose object could not be read: no
selector part of a table matches it (only addresses do), and a local one carries
:data:`UNKNOWN_INGRESS` / :data:`UNKNOWN_EGRESS`, which allow nothing and make ``evaluate``
answer UNKNOWN_ENDPOINT.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from enforcement.clusterpolicy import RuleAction
from enforcement.model import Direction
from enforcement.verdict import VERDICTS, Reason, RuleRef, Verdict

PortNames = Mapping[tuple[int, int], frozenset[str]]
"""Of one pod: (protocol number, port number) -> the container port names with that number."""

NO_PORT_NAMES: PortNames = MappingProxyType({})

MAX_PORT = 65535


class PortMatch:
    """The protocols and ports one or more rules allow towards one peer: an immutable value.

    Either everything (``all_traffic``: a rule without ``ports``, which also admits ICMP and
    packets without ports), or per protocol sorted disjoint inclusive port ranges plus named
    ports not resolved yet. Equal matches compare and hash equal so the compiler can intern and
    memoise unions.
    """

    __slots__ = ("_hash", "_key", "all_traffic", "named", "ranges")

    all_traffic: bool
    """Every protocol and port, and packets without ports (ICMP, non-first fragments)."""
    ranges: Mapping[int, tuple[tuple[int, ...], tuple[int, ...]]]
    """Protocol number -> (range starts, range ends), sorted, disjoint, not adjacent."""
    named: Mapping[int, frozenset[str]]
    """Protocol number -> named ports still to be resolved against the destination pod."""

    def __init__(
        self,
        all_traffic: bool = False,
        ranges: Iterable[tuple[int, int, int]] = (),
        named: Iterable[tuple[int, str]] = (),
    ) -> None:
        """``ranges`` are (protocol, first port, last port) triples, in any order, overlapping
        or not; empty ranges (last < first) are dropped. ``named`` are (protocol, name) pairs."""
        self.all_traffic = all_traffic
        by_protocol: dict[int, list[tuple[int, int]]] = {}
        names: dict[int, set[str]] = {}
        if not all_traffic:
            # Everything is allowed anyway: keep one canonical form so equal matches are equal.
            for protocol, first, last in ranges:
                if first <= last:
                    by_protocol.setdefault(protocol, []).append((max(first, 0), last))
            for protocol, name in named:
                names.setdefault(protocol, set()).add(name)
        merged: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for protocol in sorted(by_protocol):
            starts: list[int] = []
            ends: list[int] = []
            for first, last in sorted(by_protocol[protocol]):
                if ends and first <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], last)
                else:
                    starts.append(first)
                    ends.append(last)
            merged[protocol] = (tuple(starts), tuple(ends))
        self.ranges = MappingProxyType(merged)
        self.named = MappingProxyType({p: frozenset(names[p]) for p in sorted(names)})
        self._key = (
            all_traffic,
            tuple((p, tuple(zip(s, e, strict=True))) for p, (s, e) in merged.items()),
            tuple((p, tuple(sorted(n))) for p, n in self.named.items()),
        )
        self._hash = hash(self._key)

    def allows(self, protocol: int, port: int | None, port_names: PortNames | None) -> bool:
        """Whether a packet with this protocol and destination port matches.

        ``port`` is None for packets without ports, which only rules without ``ports`` admit.
        ``port_names`` are the destination pod's named ports, None if the destination is no pod.
        """
        if self.all_traffic:
            return True
        if port is None:
            return False
        bounds = self.ranges.get(protocol)
        if bounds is not None:
            starts, ends = bounds
            index = bisect_right(starts, port) - 1
            if index >= 0 and port <= ends[index]:
                return True
        if port_names:
            wanted = self.named.get(protocol)
            if wanted:
                names = port_names.get((protocol, port))
                if names and not wanted.isdisjoint(names):
                    return True
        return False

    @property
    def is_empty(self) -> bool:
        """Matches no packet at all (a rule whose named ports exist on no destination)."""
        return not self.all_traffic and not self.ranges and not self.named

    def union(self, other: PortMatch) -> PortMatch:
        if self.all_traffic or other is self:
            return self
        if other.all_traffic:
            return other
        return PortMatch(
            False,
            [*self._range_triples(), *other._range_triples()],
            [*self._named_pairs(), *other._named_pairs()],
        )

    def resolve(self, numbers: Mapping[tuple[int, str], int]) -> PortMatch:
        """This match with named ports replaced by their numbers on one destination pod.

        ``numbers`` maps (protocol, name) to the pod's port; names it lacks match nothing there.
        """
        if not self.named:
            return self
        resolved = [
            (protocol, numbers[(protocol, name)], numbers[(protocol, name)])
            for protocol, name in self._named_pairs()
            if (protocol, name) in numbers
        ]
        return PortMatch(False, [*self._range_triples(), *resolved])

    def _range_triples(self) -> list[tuple[int, int, int]]:
        return [
            (protocol, first, last)
            for protocol, (starts, ends) in self.ranges.items()
            for first, last in zip(starts, ends, strict=True)
        ]

    def _named_pairs(self) -> list[tuple[int, str]]:
        return [(protocol, name) for protocol, names in self.named.items() for name in names]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PortMatch):
            return NotImplemented
        return self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        if self.all_traffic:
            return "PortMatch(all)"
        parts = [
            f"{protocol}:{first}" + (f"-{last}" if last != first else "")
            for protocol, first, last in self._range_triples()
        ]
        parts += [f"{protocol}:{name!r}" for protocol, name in self._named_pairs()]
        return f"PortMatch({', '.join(parts) or 'nothing'})"


ALL_TRAFFIC = PortMatch(all_traffic=True)
"""The match of a rule without ``ports``."""


class AddressMap:
    """Integer addresses of one family -> PortMatch, as sorted disjoint inclusive intervals."""

    __slots__ = ("_ends", "_matches", "_starts")

    def __init__(self, segments: Iterable[tuple[int, int, PortMatch]]) -> None:
        """``segments`` must be sorted and disjoint (the compiler merges overlapping ipBlocks)."""
        starts: list[int] = []
        ends: list[int] = []
        matches: list[PortMatch] = []
        for first, last, match in segments:
            if starts and first <= ends[-1]:
                raise ValueError("address segments must be sorted and disjoint")
            starts.append(first)
            ends.append(last)
            matches.append(match)
        self._starts = tuple(starts)
        self._ends = tuple(ends)
        self._matches = tuple(matches)

    def lookup(self, address: int) -> PortMatch | None:
        index = bisect_right(self._starts, address) - 1
        if index >= 0 and address <= self._ends[index]:
            return self._matches[index]
        return None

    def segments(self) -> list[tuple[int, int, PortMatch]]:
        return list(zip(self._starts, self._ends, self._matches, strict=True))

    def __len__(self) -> int:
        return len(self._starts)


class AddressSet:
    """Integer addresses of one family, as sorted disjoint inclusive intervals."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        """``ranges`` in any order, overlapping or not; merged here."""
        starts: list[int] = []
        ends: list[int] = []
        for first, last in sorted(ranges):
            if ends and first <= ends[-1] + 1:
                ends[-1] = max(ends[-1], last)
            else:
                starts.append(first)
                ends.append(last)
        self._starts = tuple(starts)
        self._ends = tuple(ends)

    def __contains__(self, address: int) -> bool:
        index = bisect_right(self._starts, address) - 1
        return index >= 0 and address <= self._ends[index]

    def __len__(self) -> int:
        return len(self._starts)


@dataclass(frozen=True, slots=True, eq=False)
class PodSet:
    """The pods one selector peer stands for, in the cheapest form to record.

    One object per distinct selector and scope, made by the compiler and shared by every table
    and rule that uses it (its sets are never copied).
    """

    all_pods: bool
    """Every pod of every namespace."""
    namespaces: frozenset[str]
    """Namespaces all of whose pods are selected."""
    identities: frozenset[int]
    """Identity numbers selected one by one."""

    def is_larger_than(self, threshold: int) -> bool:
        return len(self.namespaces) + len(self.identities) > threshold

    def contains(self, peer: Endpoint) -> bool:
        """Whether the (known) pod ``peer`` is one of these."""
        return (
            self.all_pods or peer.identity in self.identities or peer.namespace in self.namespaces
        )


RefFields = tuple[str, str | None, str, str, int | None, str, str, bool]
"""The fields of a :class:`RuleRef`, in order (``staged`` last): kept by the tables instead of
the RuleRef itself, which is made only for outcomes that happen (a tuple costs a fraction of a
frozen dataclass, and the compiler makes one per NetworkPolicy rule)."""


class RuleMatch:
    """One rule, matched as written: tier rules (ClusterNetworkPolicy) are walked in order, and
    NetworkPolicy rules one by one to name the one that allowed a flow their union allows.

    Subject-independent: named ports are resolved at lookup against the destination's
    ``port_names`` (for ingress the subject itself, for egress the peer), so one object serves
    every pod the rule applies to. Immutable by convention: a plain slotted class, because the
    compiler makes one per NetworkPolicy rule and a frozen dataclass costs several times more
    to build (compile time at 10k policies).
    """

    __slots__ = ("action", "allows", "any_peer", "origin", "pods", "ports", "v4", "v6")

    ports: PortMatch
    """The rule's protocols and ports, named ports unresolved."""
    any_peer: bool
    """A NetworkPolicy rule without peers: every address."""
    v4: AddressSet | None
    """Addresses matched whoever owns them (ipBlocks, ``networks``, nodes' addresses)."""
    v6: AddressSet | None
    pods: tuple[PodSet, ...]
    """Selector peers, shared with the compiler's memo (never copied)."""
    action: RuleAction | None
    """Accept, Deny or Pass for a tier rule; None for a NetworkPolicy rule (it only allows)."""
    allows: bool
    """What a match decides: allowed (Accept, a NetworkPolicy rule) or denied (Deny)."""
    origin: RefFields
    """What to name when this rule decides."""

    def __init__(
        self,
        ports: PortMatch,
        any_peer: bool,
        v4: AddressSet | None,
        v6: AddressSet | None,
        pods: tuple[PodSet, ...],
        action: RuleAction | None,
        origin: RefFields,
    ) -> None:
        self.ports = ports
        self.any_peer = any_peer
        self.v4 = v4
        self.v6 = v6
        self.pods = pods
        self.action = action
        self.allows = action is not RuleAction.DENY
        self.origin = origin

    def matches(
        self,
        peer: Endpoint | None,
        address: bytes,
        protocol: int,
        port: int | None,
        port_names: PortNames | None,
    ) -> bool:
        """Whether the flow to or from ``peer`` at ``address`` with this protocol and port
        matches this rule (``port_names``: the destination's, None if it is no pod)."""
        if not self.ports.allows(protocol, port, port_names):
            return False
        if self.any_peer:
            return True
        addresses = self.v4 if len(address) == 4 else self.v6
        if addresses is not None and int.from_bytes(address, "big") in addresses:
            return True
        if peer is None or peer.unknown:
            return False  # selectors only match pods whose labels are known
        # A loop, not any(): no generator object per packet.
        for pods in self.pods:  # noqa: SIM110
            if pods.contains(peer):
                return True
        return False

    def __repr__(self) -> str:
        return f"RuleMatch({self.origin!r})"


@dataclass(frozen=True, slots=True, eq=False)
class PeerSelection:
    """A large set of peer pods one or more rules of a table allow, with what they allow."""

    identities: frozenset[int]
    """Identity numbers selected (shared between every table using the same selector)."""
    namespaces: frozenset[str]
    """Namespaces all of whose pods are selected (likewise shared)."""
    match: PortMatch


class ProvenanceSource(Protocol):
    """What builds a NetworkPolicy table's provenance on first use
    (enforcement.provenance.NetworkPolicyRules)."""

    def provenance(
        self, indices: tuple[int, ...], direction: Direction
    ) -> tuple[tuple[tuple[RuleMatch, ...], ...], tuple[RefFields, ...]]: ...


@dataclass(frozen=True, slots=True, eq=False)
class PolicyTable:
    """What one direction of the pods selected by one set of policies allows, by peer.

    Shared (interned) by every local pod with the same selecting policies (and, for ingress,
    the same named ports). A peer is allowed when any of the parts matches it; an empty
    table (only rules that allow nothing, or no rules) isolates without allowing anything.
    """

    direction: Direction
    policies: tuple[str, ...]
    """Keys ("ns/name") of the policies this table unites, in snapshot order; for humans."""
    any_peer: PortMatch | None = None
    """Rules without peers: every address, pods and non-pods alike."""
    v4: AddressMap | None = None
    """ipBlocks on IPv4 addresses (pod addresses included), cidr minus excepts, merged."""
    v6: AddressMap | None = None
    identities: Mapping[int, PortMatch] = field(default_factory=lambda: MappingProxyType({}))
    """Peer identity number -> match, from peers with a non-empty pod selector."""
    namespaces: Mapping[str, PortMatch] = field(default_factory=lambda: MappingProxyType({}))
    """Peer namespace -> match, from peers that select every pod of some namespaces."""
    all_pods: PortMatch | None = None
    """Peers that select every pod of every namespace (``namespaceSelector: {}`` alone)."""
    selections: tuple[PeerSelection, ...] = ()
    """Large selections, kept as shared sets instead of being copied into ``identities``."""
    indices: tuple[int, ...] = ()
    """The united policies' positions in the snapshot (what ``provenance_source`` reads)."""
    provenance_source: ProvenanceSource | None = None
    """Builds :attr:`rules` and :attr:`isolating` the first time one is read
    (enforcement/provenance.py); None: the table has neither (no policy, or a test's table)."""
    _provenance: tuple[tuple[tuple[RuleMatch, ...], ...], tuple[RefFields, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def rules(self) -> tuple[tuple[RuleMatch, ...], ...]:
        """The same rules one by one, per policy (policies by name, rules in order; each
        policy's tuple shared by every table of that policy): read only to name the rule that
        allowed a flow the union above allows (provenance), never to decide."""
        return self._provenance_pair()[0]

    @property
    def isolating(self) -> tuple[RefFields, ...]:
        """The policies that isolate the pods, by name: what a denial names."""
        return self._provenance_pair()[1]

    def _provenance_pair(
        self,
    ) -> tuple[tuple[tuple[RuleMatch, ...], ...], tuple[RefFields, ...]]:
        pair = self._provenance
        if pair is None:
            source = self.provenance_source
            pair = ((), ()) if source is None else source.provenance(self.indices, self.direction)
            # Set once, to a value equal whoever computes it: a frozen table stays what it was.
            object.__setattr__(self, "_provenance", pair)
        return pair

    def allows(
        self,
        peer: Endpoint | None,
        address: bytes,
        protocol: int,
        port: int | None,
        port_names: PortNames | None,
    ) -> bool:
        """Whether the rules allow this peer (the endpoint at ``address``, None if no pod).

        ``port_names`` are the destination's named ports (None if the destination is no pod).
        """
        match = self.any_peer
        if match is not None and match.allows(protocol, port, port_names):
            return True
        addresses = self.v4 if len(address) == 4 else self.v6
        if addresses is not None:
            match = addresses.lookup(int.from_bytes(address, "big"))
            if match is not None and match.allows(protocol, port, port_names):
                return True
        if peer is None or peer.unknown:
            return False  # selectors only match pods whose labels are known
        match = self.identities.get(peer.identity)
        if match is not None and match.allows(protocol, port, port_names):
            return True
        match = self.namespaces.get(peer.namespace)
        if match is not None and match.allows(protocol, port, port_names):
            return True
        match = self.all_pods
        if match is not None and match.allows(protocol, port, port_names):
            return True
        for selection in self.selections:
            if (
                peer.identity in selection.identities or peer.namespace in selection.namespaces
            ) and selection.match.allows(protocol, port, port_names):
                return True
        return False

    def decide(
        self,
        peer: Endpoint | None,
        address: bytes,
        protocol: int,
        port: int | None,
        port_names: PortNames | None,
    ) -> Decider:
        """As :meth:`allows`, saying what decided: the first rule (policies by name, rules in
        order) that allows, or this table itself when none does (denied by isolation)."""
        if self.allows(peer, address, protocol, port, port_names):
            for rules in self.rules:
                for rule in rules:
                    if rule.matches(peer, address, protocol, port, port_names):
                        return rule
        return self


Decider = RuleMatch | PolicyTable | None
"""What decided one direction of a flow: the rule that matched (allowed, or denied by a Deny),
the NetworkPolicy table whose isolation denied it, or None (nothing had an opinion)."""


def _denies(decider: Decider) -> bool:
    if decider is None:
        return False
    if isinstance(decider, RuleMatch):
        return not decider.allows
    return True  # a PolicyTable decides only when nothing in it allows: isolation


@dataclass(frozen=True, slots=True, eq=False)
class DirectionPlan:
    """One direction of the local pods that ClusterNetworkPolicies select: the tiers in order.

    Interned: shared by every local pod with the same admin rules, the same NetworkPolicy table
    and the same baseline rules. Pods no ClusterNetworkPolicy selects have no plan, only their
    :class:`PolicyTable` (the common case, and the fast one).
    """

    direction: Direction
    admin: tuple[RuleMatch, ...]
    """Admin tier rules: policies by (priority, name), rules in order; first match decides."""
    table: PolicyTable | None
    """The NetworkPolicy tier; None when no NetworkPolicy isolates the pods this way."""
    baseline: tuple[RuleMatch, ...]
    """Baseline tier rules, ordered and walked like ``admin``."""
    policies: tuple[str, ...]
    """Names of the ClusterNetworkPolicies whose rules are in ``admin`` and ``baseline``."""

    def decide(
        self,
        peer: Endpoint | None,
        address: bytes,
        protocol: int,
        port: int | None,
        port_names: PortNames | None,
    ) -> Decider:
        """Admin tier (first match; Pass leaves the tier), then the NetworkPolicy tier if it
        isolates, then the Baseline tier likewise, then the default allow (None)."""
        for rule in self.admin:
            if rule.matches(peer, address, protocol, port, port_names):
                if rule.action is RuleAction.PASS:
                    break
                return rule
        if self.table is not None:
            return self.table.decide(peer, address, protocol, port, port_names)
        for rule in self.baseline:
            if rule.matches(peer, address, protocol, port, port_names):
                if rule.action is RuleAction.PASS:
                    break
                return rule
        return None


@dataclass(frozen=True, slots=True, eq=False)
class TierPlans:
    """Both directions' plans of the local pods some ClusterNetworkPolicies select; interned,
    one field of :class:`Endpoint` for the two (a field costs every endpoint its set-up)."""

    ingress: DirectionPlan | None
    """None when those policies have no ingress rules: the NetworkPolicy table alone decides."""
    egress: DirectionPlan | None


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """A pod that owns an address, as the packet path sees it (pods of every node)."""

    namespace: str
    name: str
    key: str
    """"namespace/name"."""
    node_name: str | None
    local: bool
    """Runs on the node these tables were compiled for; only local pods are enforced here."""
    identity: int
    """Number of the pod's identity: same namespace, labels and named ports, same number."""
    port_names: PortNames = field(default_factory=lambda: NO_PORT_NAMES)
    """(protocol, port) -> container port names, to resolve named ports at lookup."""
    ingress_table: PolicyTable | None = None
    """Set only for a local pod isolated for ingress."""
    egress_table: PolicyTable | None = None
    """Set only for a local pod isolated for egress."""
    unknown: bool = False
    """A pod whose object could not be read (model.UnreadablePod): it matches no selector, and
    when local its tables are :data:`UNKNOWN_INGRESS` and :data:`UNKNOWN_EGRESS`."""
    tiers: TierPlans | None = None
    """Set only for a local pod that some ClusterNetworkPolicy selects (its traffic is queued
    and decided through these plans); None for every other pod, the common case."""

    @property
    def tiered(self) -> bool:
        """Some ClusterNetworkPolicy selects this local pod."""
        return self.tiers is not None

    @property
    def ingress_plan(self) -> DirectionPlan | None:
        """The tiers of ingress, when ClusterNetworkPolicies selecting the pod have ingress
        rules (the plan then decides ingress; its ``table`` is ``ingress_table``)."""
        return self.tiers.ingress if self.tiers is not None else None

    @property
    def egress_plan(self) -> DirectionPlan | None:
        """Likewise for egress."""
        return self.tiers.egress if self.tiers is not None else None

    @property
    def ingress_isolated(self) -> bool:
        """Some policy selects this local pod for ingress (always False for remote pods)."""
        return self.ingress_table is not None or self.ingress_plan is not None

    @property
    def egress_isolated(self) -> bool:
        """Some policy selects this local pod for egress (always False for remote pods)."""
        return self.egress_table is not None or self.egress_plan is not None


UNKNOWN_IDENTITY = -1
"""The identity number of unknown endpoints: no table keys an entry by it."""

UNKNOWN_INGRESS = PolicyTable(Direction.INGRESS, ())
"""The ingress table of a local unknown endpoint: allows nothing (fail-closed)."""

UNKNOWN_EGRESS = PolicyTable(Direction.EGRESS, ())
"""The egress table of a local unknown endpoint: allows nothing (fail-closed)."""


@dataclass(frozen=True, slots=True, eq=False)
class Outcome:
    """A decision with its provenance: the reason and what decided each direction.

    Interned: the tables hand out one object per combination, so the packet path allocates
    nothing once warm. A direction that was not looked at (not enforced here, or ingress after
    a denied egress), or where nothing had an opinion, names nothing.
    """

    reason: Reason
    egress: tuple[RuleRef, ...]
    """What decided the source's egress (a local source only)."""
    ingress: tuple[RuleRef, ...]
    """What decided the destination's ingress (a local destination only)."""
    verdict: Verdict
    """The verdict singleton of ``reason``."""

    @property
    def refs(self) -> tuple[RuleRef, ...]:
        """Both directions' refs, egress first (what ``decided_by`` lists)."""
        return self.egress + self.ingress


OUTCOMES: Mapping[Reason, Outcome] = MappingProxyType(
    {reason: Outcome(reason, (), (), VERDICTS[reason]) for reason in Reason}
)
"""The one Outcome of each reason that names no rule (not isolated, unknown endpoint, and the
reasons decided before the tables: flow, related, host, ...)."""


def _refs(decider: Decider) -> tuple[RuleRef, ...]:
    if decider is None:
        return ()
    if isinstance(decider, RuleMatch):
        return (RuleRef(*decider.origin),)
    return tuple(RuleRef(*fields) for fields in decider.isolating)


def _combine(egress: Decider, ingress: Decider) -> Outcome:
    """The Outcome of one direction's decider and the other's (made once per pair)."""
    if _denies(egress):
        return Outcome(Reason.DENIED_EGRESS, _refs(egress), (), VERDICTS[Reason.DENIED_EGRESS])
    if _denies(ingress):
        return Outcome(
            Reason.DENIED_INGRESS, _refs(egress), _refs(ingress), VERDICTS[Reason.DENIED_INGRESS]
        )
    if egress is None and ingress is None:
        return OUTCOMES[Reason.NOT_ISOLATED]
    return Outcome(Reason.ALLOWED, _refs(egress), _refs(ingress), VERDICTS[Reason.ALLOWED])


class AllowTables:
    """The compiled decision tables of one node, for one generation of the cluster state.

    Immutable after construction; build them with :func:`enforcement.compiler.compile_tables`.
    """

    __slots__ = (
        "_generation",
        "_identity_count",
        "_ipcache",
        "_isolated_local",
        "_local",
        "_local_pod_count",
        "_node_name",
        "_outcomes",
        "_pod_count",
        "_policy_count",
        "_staged",
        "_table_count",
        "_tiered",
    )

    def __init__(
        self,
        *,
        generation: int,
        node_name: str,
        ipcache: Mapping[bytes, Endpoint],
        pod_count: int,
        identity_count: int,
        table_count: int,
        policy_count: int,
        staged: AllowTables | None = None,
    ) -> None:
        self._generation = generation
        self._node_name = node_name
        self._ipcache = dict(ipcache)
        local = [(a, e) for a, e in self._ipcache.items() if e.local]
        self._local = frozenset(a for a, _ in local)
        self._isolated_local = frozenset(
            a
            for a, e in local
            if e.ingress_table is not None or e.egress_table is not None or e.tiers is not None
        )
        self._tiered = any(e.tiers is not None for _, e in local)
        """Some local pod is selected by a ClusterNetworkPolicy: flows touching one take the
        tiered path; without any, ``evaluate`` is exactly the NetworkPolicy lookup."""
        self._outcomes: dict[Decider, dict[Decider, Outcome]] = {}
        """egress decider -> ingress decider -> their Outcome, filled on first sight (see
        :meth:`outcome`)."""
        self._pod_count = pod_count
        self._local_pod_count = len({e.key for e in self._ipcache.values() if e.local})
        self._identity_count = identity_count
        self._table_count = table_count
        self._policy_count = policy_count
        self._staged = staged

    @property
    def staged(self) -> AllowTables | None:
        """The tables of the same snapshot with its staged policies enforced too (same
        generation and node), or None when it has none. These tables leave staged policies out
        entirely; the staged ones decide as if the annotation were absent, and their refs to
        staged policies have ``staged`` set: ``staged.outcome(...)`` of a flow, beside this
        one's, says what the staged policies would change (``enforcement.staged``). Never used
        to decide a packet."""
        return self._staged

    @property
    def generation(self) -> int:
        """Counter of the cluster state these tables were compiled from (given by the caller)."""
        return self._generation

    @property
    def node_name(self) -> str:
        """The node whose pods these tables enforce."""
        return self._node_name

    def evaluate(self, src: bytes, dst: bytes, protocol: int, dst_port: int | None) -> Reason:
        """Decide a new flow from packed ``src`` to packed ``dst`` (4 or 16 bytes).

        NOT_ISOLATED when neither a local isolated source (egress) nor a local isolated
        destination (ingress) is involved; UNKNOWN_ENDPOINT when either end is a local pod whose
        object could not be read (fail-closed); otherwise the source's egress is checked first
        (DENIED_EGRESS), then the destination's ingress (DENIED_INGRESS), else ALLOWED.
        ``dst_port`` is None for packets without ports (ICMP, non-first fragments).
        """
        source = self._ipcache.get(src)
        destination = self._ipcache.get(dst)
        if self._tiered and (
            (source is not None and source.tiers is not None)
            or (destination is not None and destination.tiers is not None)
        ):
            return self.outcome(src, dst, protocol, dst_port).reason
        egress = source.egress_table if source is not None else None
        ingress = destination.ingress_table if destination is not None else None
        if egress is None and ingress is None:
            return Reason.NOT_ISOLATED
        if egress is UNKNOWN_EGRESS or ingress is UNKNOWN_INGRESS:
            return Reason.UNKNOWN_ENDPOINT
        port_names = destination.port_names if destination is not None else None
        if egress is not None and not egress.allows(
            destination, dst, protocol, dst_port, port_names
        ):
            return Reason.DENIED_EGRESS
        if ingress is not None and not ingress.allows(source, src, protocol, dst_port, port_names):
            return Reason.DENIED_INGRESS
        return Reason.ALLOWED

    def outcome(self, src: bytes, dst: bytes, protocol: int, dst_port: int | None) -> Outcome:
        """As :meth:`evaluate`, with what decided each direction (an interned :class:`Outcome`).

        Per direction of a local pod: its :class:`DirectionPlan` when ClusterNetworkPolicies
        select it (tiers in order), else its NetworkPolicy table. NOT_ISOLATED when neither
        direction had an opinion; the reason is always the one :meth:`evaluate` gives.

        Each direction ends at a decider (the rule that matched, the isolating table, or None);
        the Outcome of a pair of deciders, with its RuleRefs, is made the first time the pair
        is seen and kept in a dict for the life of these tables (at most one per pair of rules
        and tables that ever decide together): after warm-up nothing is allocated. Two threads
        filling it at once store equal values (``dict.setdefault`` is atomic), so readers need
        no lock.
        """
        source = self._ipcache.get(src)
        destination = self._ipcache.get(dst)
        egress_table = egress_plan = ingress_table = ingress_plan = None
        if source is not None:
            egress_table = source.egress_table
            if source.tiers is not None:
                egress_plan = source.tiers.egress
        if destination is not None:
            ingress_table = destination.ingress_table
            if destination.tiers is not None:
                ingress_plan = destination.tiers.ingress
        if egress_table is UNKNOWN_EGRESS or ingress_table is UNKNOWN_INGRESS:
            return OUTCOMES[Reason.UNKNOWN_ENDPOINT]
        port_names = destination.port_names if destination is not None else None
        egress: Decider = None
        if egress_plan is not None:
            egress = egress_plan.decide(destination, dst, protocol, dst_port, port_names)
        elif egress_table is not None:
            egress = egress_table.decide(destination, dst, protocol, dst_port, port_names)
        ingress: Decider = None
        if not _denies(egress):
            if ingress_plan is not None:
                ingress = ingress_plan.decide(source, src, protocol, dst_port, port_names)
            elif ingress_table is not None:
                ingress = ingress_table.decide(source, src, protocol, dst_port, port_names)
        by_ingress = self._outcomes.get(egress)
        if by_ingress is None:
            by_ingress = self._outcomes.setdefault(egress, {})
        found = by_ingress.get(ingress)
        if found is None:
            found = by_ingress.setdefault(ingress, _combine(egress, ingress))
        return found

    def endpoint(self, address: bytes) -> Endpoint | None:
        """The pod (of any node) that owns this packed address, or None."""
        return self._ipcache.get(address)

    def endpoints(self) -> Mapping[bytes, Endpoint]:
        """Every packed address with its pod, read-only (to compare two generations)."""
        return MappingProxyType(self._ipcache)

    def local_addresses(self) -> frozenset[bytes]:
        """Packed addresses of this node's pods (hostNetwork pods excluded)."""
        return self._local

    def isolated_local_addresses(self) -> frozenset[bytes]:
        """Packed addresses of this node's pods isolated in at least one direction (local
        unknown endpoints included: isolated both ways)."""
        return self._isolated_local

    @property
    def pod_count(self) -> int:
        """Pods with an address that are peers (every node, hostNetwork pods excluded)."""
        return self._pod_count

    @property
    def local_pod_count(self) -> int:
        """Of those, the pods running on this node."""
        return self._local_pod_count

    @property
    def address_count(self) -> int:
        """Entries of the ipcache (a dual-stack pod has two)."""
        return len(self._ipcache)

    @property
    def identity_count(self) -> int:
        """Distinct (namespace, labels, named ports) among the pods counted by pod_count."""
        return self._identity_count

    @property
    def table_count(self) -> int:
        """Distinct PolicyTables (both directions) after interning."""
        return self._table_count

    @property
    def policy_count(self) -> int:
        """NetworkPolicies these tables enforce (all namespaces; staged ones count only in
        :attr:`staged`)."""
        return self._policy_count

    def __repr__(self) -> str:
        return (
            f"AllowTables(node={self._node_name!r}, generation={self._generation}, "
            f"pods={self._pod_count}, local={self._local_pod_count}, "
            f"identities={self._identity_count}, tables={self._table_count}, "
            f"policies={self._policy_count}, staged={self._staged is not None})"
        )
