"""The edge for ClusterNetworkPolicy: API objects in, ``enforcement.clusterpolicy`` records out.

Both served versions of ``policy.networking.k8s.io`` are read into the one model: ``v1alpha2``
(release v0.2.0) and ``v1beta1`` (upstream's next version, the storage version there). Facts
below are from kubernetes-sigs/network-policy-api ``apis/v1alpha2/clusternetworkpolicy_types.go``
and ``apis/v1beta1/clusternetworkpolicy_types.go`` (kubebuilder markers and CEL rules), and the
generated CRDs in ``config/crd/{standard,experimental}/``.

Validation follows the CRD's OpenAPI schema and CEL rules, so that an object the cluster would
refuse is refused here too, naming the field path the API would name:

- ``spec.tier`` Admin or Baseline; ``spec.priority`` an integer 0-1000; ``spec.subject`` exactly
  one of ``namespaces`` and ``pods``; ``pods`` needs ``podSelector`` (``namespaceSelector`` is
  optional, empty or absent selects every namespace).
- ``ingress`` and ``egress`` at most 25 rules each (none is fine: the direction is then not
  affected); a rule's ``name`` at most 100 characters; ``action`` Accept, Deny or Pass. No CEL
  rule of either version forbids Pass in the Baseline tier: there it skips the rest of the tier,
  to the default (allow).
- ``from``/``to`` 1-25 peers, each exactly one field: ingress peers ``namespaces`` or ``pods``;
  egress peers also ``nodes``, ``networks`` and ``domainNames``.
- ``networks`` 1-25 CIDRs, a set (no duplicates), each at most 43 characters and valid for CEL's
  ``isCIDR`` (k8s ``apiserver/pkg/cel/library/cidr.go``: ``netip.ParsePrefix``, so no leading
  zeros, no IPv4-mapped IPv6, no zone; that is ``parse_cidr(strict=True)`` in both modes).
  **The two versions differ here**: ``v1alpha2`` has ``isCIDR(self)`` alone, which accepts host
  bits (``10.0.0.1/24`` means 10.0.0.0/24); ``v1beta1`` adds ``cidr(self) ==
  cidr(self).masked()`` and refuses them. (The other differences do not change what is read:
  ``v1beta1`` marks ``destinationNamedPort`` experimental, so only its experimental channel's
  CRD serves it, fixes a typo in the ``domainNames`` pattern, and is the storage version.)
- ``protocols`` 1-25 entries (absent: all traffic), each exactly one of ``tcp``, ``udp``,
  ``sctp`` and ``destinationNamedPort``; ``tcp``/``udp``/``sctp`` need ``destinationPort``
  (MinProperties=1) with exactly one of ``number`` (1-65535) and ``range`` (``start`` and
  ``end`` 1-65535, CEL ``self.start < self.end``).
- The egress rule's CEL rule: a rule with a ``networks``, ``nodes`` or ``domainNames`` peer
  cannot have a ``destinationNamedPort`` (there are no named ports for them). It is in the
  experimental channel's CRD only; the standard channel of ``v1alpha2`` would store such a rule.
  It is enforced here in both modes: what such a rule means is not defined upstream, so one
  read from a cluster is enforced fail-closed (below) rather than guessed at.
- ``destinationNamedPort``: the CRD puts no pattern on it. An empty name is an error in both
  modes (Go cannot tell it from an unset field, so the entry would have no field set).
  ``strict=True`` also refuses a name that is not a valid container port name (IANA service
  name): it could never match a port.
- ``domainNames`` peers are **not enforced** by netpol-agent (matching names needs the DNS
  answers the pods get): refused with a message saying so in both modes; read from a cluster,
  the rule that holds one is enforced fail-closed.
- Label selectors are validated as apimachinery does (``agent.convert.selector_from_k8s``): the
  CRD's schema checks only their types, but ``LabelSelectorAsSelector`` refuses the rest, so
  implementations cannot use such a selector either.

``strict=True`` (files people write) refuses unknown fields anywhere, with hints for the usual
slips (``ports`` for ``protocols``, ``ipBlock`` for ``networks``, ``namespaceSelector`` in a
subject...); ``strict=False`` ignores them, as the API server's pruning does.

Fail-closed (``fail_closed_cluster_policy``, for objects read from a cluster): a
ClusterNetworkPolicy that cannot be read must never open anything. The API's rule for a peer
with no field it knows (an older implementation than the CRD) is the model: "For Accept rules,
fail closed means treat the rule as matching no traffic; for Deny and Pass rules, treat the rule
as a 'Deny all' rule". netpol-agent applies it to every problem it can pin to one rule, and
extends it to the object as a whole:

1. **A rule that cannot be read** (a peer without a known field, a ``domainNames`` peer, a bad
   port, a missing action...) keeps its place, so later rules keep their index (provenance names
   rules by index): an Accept rule matches nothing (its one peer is an unsatisfiable namespace
   selector; the record's peers stay non-empty); a Deny or Pass rule, or one whose action cannot
   be read, becomes a Deny rule for all traffic: every pod (all an ingress rule can ever match)
   for ingress, every pod and every address (``0.0.0.0/0``, ``::/0``) for egress. The other
   rules are enforced as written. Neither change can open anything: matching less with Accept,
   or denying what Pass would have handed on, only closes.
2. **An object whose policy-level fields cannot be read** (name, apiVersion, tier, priority,
   subject, or a rule list that is not a list or too long): its rules cannot be trusted with the
   tier and subject they would apply at, so the stand-in is one deny-all rule in each direction
   the object has (a direction whose list is present and not empty, or unreadable; both when
   ``spec`` is not an object), at the object's tier and priority where those are readable,
   else **Admin** (before everything) and **0** (first in the tier): the most closed reading.
3. **A subject that cannot be read** selects every pod of the namespaces its ``pods`` part's
   namespace selector selects, if that part is readable, else **every pod in the cluster**.
   Why: selecting nothing would silently lift whatever the policy denies for the pods it meant;
   denying too much is loud (the error is reported) and is undone by fixing the object. The API
   server's schema makes an unreadable subject impossible for a CRD of the versions known here,
   so in practice this needs a newer CRD (a subject type netpol-agent does not know), exactly
   the case the API's own fail-closed rule is written for.

A stand-in for a policy annotated as staged (``agent.convert.staged_annotation``, read
leniently: a malformed annotation is not staged) is staged too: its author asked for the policy
not to be enforced, so what stands in for it is only evaluated and reported. The last resort
for a bug in the stand-in itself is never staged.

``fail_closed_cluster_policy`` returns ``None`` only for something that is not an object at all:
no name, no tier, nothing to stand in for (a source never hands such a thing over).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from agent.convert import (
    OBJECT_META,
    PROTOCOLS,
    SELECTOR_REQUIREMENT,
    ConversionError,
    FieldError,
    ListOf,
    Struct,
    describe,
    dns_subdomain_problem,
    labels_from_k8s,
    list_field,
    mapping_field,
    object_name,
    parse_cidr,
    port_name_problem,
    port_number,
    reject_unknown_fields,
    required_name,
    selector_from_k8s,
    show,
    staged_annotation,
    string_field,
    type_name,
)
from agent.kinds.base import FailClosed
from enforcement.clusterpolicy import (
    MAX_PRIORITY,
    MAX_RULE_NAME,
    MAX_RULES,
    MIN_PRIORITY,
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    ClusterSubject,
    NamespacedPods,
    RuleAction,
    Tier,
)
from enforcement.model import (
    SELECT_ALL,
    IPNetwork,
    LabelRequirement,
    LabelSelector,
    PolicyPort,
    PortProtocol,
)

KIND: Final = "ClusterNetworkPolicy"
GROUP: Final = "policy.networking.k8s.io"
PLURAL: Final = "clusternetworkpolicies"
Version = Literal["v1beta1", "v1alpha2"]
VERSIONS: Final[tuple[Version, ...]] = ("v1beta1", "v1alpha2")
"""Served versions read, preferred first."""
API_VERSIONS: Final = tuple(f"{GROUP}/{version}" for version in VERSIONS)

MAX_CIDR_LENGTH: Final = 43
"""Longest ``networks`` entry (kubebuilder MaxLength on the CIDR type)."""

Direction = Literal["ingress", "egress"]
INGRESS_PEER_FIELDS: Final = ("namespaces", "pods")
EGRESS_PEER_FIELDS: Final = ("namespaces", "pods", "nodes", "networks", "domainNames")
PROTOCOL_FIELDS: Final = ("tcp", "udp", "sctp", "destinationNamedPort")
PORT_FIELDS: Final = ("number", "range")
NO_NAMED_PORT_PEERS: Final = ("networks", "nodes", "domainNames")
"""Egress peers that may not share a rule with ``destinationNamedPort`` (the egress rule's CEL
rule)."""

DOMAIN_NAMES_REFUSAL: Final = (
    "netpol-agent does not enforce domainNames peers (matching domain names needs the DNS "
    "answers the pods get); use networks with the addresses instead"
)

FAIL_CLOSED_KEY: Final = "netpol-agent/fail-closed"
MATCH_NOTHING: Final = LabelSelector(
    match_expressions=(
        LabelRequirement(FAIL_CLOSED_KEY, "Exists"),
        LabelRequirement(FAIL_CLOSED_KEY, "DoesNotExist"),
    )
)
"""A selector no label set satisfies: the peer of an Accept rule enforced as matching nothing."""
MATCH_NOTHING_PEERS: Final = (ClusterPeer(namespaces=MATCH_NOTHING),)
EVERY_ADDRESS: Final[tuple[IPNetwork, ...]] = (
    ipaddress.IPv4Network("0.0.0.0/0"),
    ipaddress.IPv6Network("::/0"),
)
DENY_ALL_PEERS: Final[Mapping[Direction, tuple[ClusterPeer, ...]]] = {
    # Ingress peers can only ever be pods: every pod is all an ingress rule could match.
    "ingress": (ClusterPeer(namespaces=SELECT_ALL),),
    "egress": (ClusterPeer(namespaces=SELECT_ALL), ClusterPeer(networks=EVERY_ADDRESS)),
}
"""The peers of a rule enforced as 'Deny all' (the API's fail-closed reading of Deny/Pass)."""


# -- public converters ----------------------------------------------------------------------


def cluster_policy_from_k8s(obj: Mapping[str, Any], *, strict: bool) -> ClusterNetworkPolicy:
    """A ClusterNetworkPolicy of ``policy.networking.k8s.io/v1beta1`` or ``/v1alpha2``,
    validated as the CRD does (see the module docstring); raises ConversionError.

    ``strict=True`` also refuses unknown fields anywhere, before anything else, naming the first
    (depth first) with a hint: for files people write. ``strict=False`` ignores them, as the API
    server's pruning does: for objects read from the cluster.
    """
    try:
        version = _version(obj)
        if strict:
            reject_unknown_fields(obj, _CLUSTER_NETWORK_POLICY, "")
        head = _head(obj)
        staged = staged_annotation(obj, strict=strict)
        ingress = tuple(
            _rule(item, f"spec.ingress[{index}]", "ingress", version, strict=strict)
            for index, item in enumerate(head.ingress)
        )
        egress = tuple(
            _rule(item, f"spec.egress[{index}]", "egress", version, strict=strict)
            for index, item in enumerate(head.egress)
        )
    except FieldError as error:
        raise error.within(KIND, object_name(obj)) from None
    return ClusterNetworkPolicy(
        name=head.name,
        tier=head.tier,
        priority=head.priority,
        subject=head.subject,
        ingress=ingress,
        egress=egress,
        staged=staged,
    )


def fail_closed_cluster_policy(obj: Any) -> FailClosed[ClusterNetworkPolicy]:
    """What to enforce for a ClusterNetworkPolicy read from a cluster, whatever it holds; never
    raises. The object's own policy when it converts (``error`` empty); else its fail-closed
    stand-in (see the module docstring) and the error, with what is enforced instead."""
    try:
        return FailClosed(cluster_policy_from_k8s(obj, strict=False), "")
    except ConversionError as error:
        first_error = str(error)
    except Exception as error:  # a bug must not open anything either
        first_error = f"{KIND} {object_name(obj)}: cannot be read ({type(error).__name__})"
    if not isinstance(obj, Mapping):
        return FailClosed(None, f"{first_error}; left out (not an object)")
    try:
        return _stand_in(obj, first_error)
    except Exception:  # a bug in the stand-in itself: the most closed reading there is
        policy = ClusterNetworkPolicy(
            name="",
            tier=Tier.ADMIN,
            priority=MIN_PRIORITY,
            subject=ClusterSubject(namespaces=SELECT_ALL),
            ingress=_deny_all("ingress"),
            egress=_deny_all("egress"),
        )
        what = "all traffic of every pod in the cluster denied at tier Admin, priority 0"
        return FailClosed(policy, f"{first_error}; enforced fail-closed: {what}")


# -- fail-closed stand-ins --------------------------------------------------------------------


def _stand_in(obj: Mapping[str, Any], first_error: str) -> FailClosed[ClusterNetworkPolicy]:
    """Rule by rule when the policy-level fields are readable, else for the whole object."""
    try:
        version = _version(obj)
        head = _head(obj)
    except Exception:
        return _whole_object_stand_in(obj, first_error)
    ingress, ingress_problems = _rules_fail_closed(head.ingress, "ingress", version)
    egress, egress_problems = _rules_fail_closed(head.egress, "egress", version)
    problems = ingress_problems + egress_problems
    if not problems:
        # The parts convert one by one but not together: nothing here can be pinned to a rule.
        return _whole_object_stand_in(obj, first_error)
    policy = ClusterNetworkPolicy(
        name=head.name,
        tier=head.tier,
        priority=head.priority,
        subject=head.subject,
        ingress=ingress,
        egress=egress,
        staged=staged_annotation(obj, strict=False),
    )
    reasons = "; ".join(reason for reason, _ in problems)
    effects = ", ".join(effect for _, effect in problems)
    return FailClosed(policy, f"{KIND} {head.name}: {reasons}; enforced fail-closed: {effects}")


def _rules_fail_closed(
    items: Sequence[Any], direction: Direction, version: Version
) -> tuple[tuple[ClusterRule, ...], list[tuple[str, str]]]:
    """Each rule as written, or its stand-in; and (problem, what is enforced) per stand-in."""
    rules: list[ClusterRule] = []
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        field = f"spec.{direction}[{index}]"
        try:
            rules.append(_rule(item, field, direction, version, strict=False))
        except Exception as error:
            reason = str(error) if isinstance(error, FieldError) else f"{field}: cannot be read"
            rule, effect = _rule_stand_in(item, direction)
            rules.append(rule)
            problems.append((reason, f"{direction} rule {index} {effect}"))
    return tuple(rules), problems


def _rule_stand_in(value: Any, direction: Direction) -> tuple[ClusterRule, str]:
    """The API's fail-closed reading of one rule: Accept matches nothing, the rest deny all."""
    rule = value if isinstance(value, Mapping) else {}
    raw_name = rule.get("name")
    name = raw_name if isinstance(raw_name, str) and len(raw_name) <= MAX_RULE_NAME else ""
    action = rule.get("action")
    if action == RuleAction.ACCEPT.value:
        return (
            ClusterRule(action=RuleAction.ACCEPT, peers=MATCH_NOTHING_PEERS, name=name),
            "(Accept) matches nothing",
        )
    written = action if action in (RuleAction.DENY.value, RuleAction.PASS.value) else "unreadable"
    return (
        ClusterRule(action=RuleAction.DENY, peers=DENY_ALL_PEERS[direction], name=name),
        f"({written}) denies all traffic",
    )


def _whole_object_stand_in(obj: Mapping[str, Any], error: str) -> FailClosed[ClusterNetworkPolicy]:
    metadata = obj.get("metadata")
    raw_name = metadata.get("name") if isinstance(metadata, Mapping) else None
    name = raw_name if isinstance(raw_name, str) else ""
    raw_spec = obj.get("spec")
    spec = raw_spec if isinstance(raw_spec, Mapping) else {}
    try:
        tier = _tier(spec.get("tier"))
    except FieldError:
        tier = Tier.ADMIN
    try:
        priority = _priority(spec.get("priority"))
    except FieldError:
        priority = MIN_PRIORITY
    try:
        subject = _subject(spec.get("subject"), "spec.subject")
        whom = "its subjects"
    except FieldError:
        subject = _subject_fail_closed(spec.get("subject"))
        whom = _describe_subject(subject)
    unreadable_spec = raw_spec is not None and not isinstance(raw_spec, Mapping)
    directions: list[Direction] = [
        direction
        for direction in _DIRECTIONS
        if unreadable_spec or spec.get(direction) not in (None, [], ())
    ]
    policy = ClusterNetworkPolicy(
        name=name,
        tier=tier,
        priority=priority,
        subject=subject,
        ingress=_deny_all("ingress") if "ingress" in directions else (),
        egress=_deny_all("egress") if "egress" in directions else (),
        staged=staged_annotation(obj, strict=False),
    )
    if directions:
        what = (
            f"all {' and '.join(directions)} traffic of {whom} denied at tier {tier.value}, "
            f"priority {priority}"
        )
    else:
        what = "no rules, so it affects nothing"
    return FailClosed(policy, f"{error}; enforced fail-closed: {what}")


_DIRECTIONS: Final[tuple[Direction, ...]] = ("ingress", "egress")


def _deny_all(direction: Direction) -> tuple[ClusterRule, ...]:
    return (ClusterRule(action=RuleAction.DENY, peers=DENY_ALL_PEERS[direction]),)


def _subject_fail_closed(value: Any) -> ClusterSubject:
    """Every pod the subject could mean: the namespaces its ``pods`` part names, if readable."""
    subject = value if isinstance(value, Mapping) else {}
    pods = subject.get("pods")
    if isinstance(pods, Mapping) and subject.get("namespaces") is None:
        try:
            namespaces = selector_from_k8s(
                pods.get("namespaceSelector"), "spec.subject.pods.namespaceSelector"
            )
        except FieldError:
            pass
        else:
            return ClusterSubject(pods=NamespacedPods(namespaces, SELECT_ALL))
    return ClusterSubject(namespaces=SELECT_ALL)


def _describe_subject(subject: ClusterSubject) -> str:
    if subject.namespaces is not None and subject.namespaces.is_empty:
        return "every pod in the cluster (its subject cannot be read)"
    return "every pod of the namespaces its subject's pods.namespaceSelector selects"


# -- objects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Head:
    """The policy-level fields of an object, read; its rules still raw."""

    name: str
    tier: Tier
    priority: int
    subject: ClusterSubject
    ingress: list[Any]
    egress: list[Any]


def _version(obj: Any) -> Version:
    if not isinstance(obj, Mapping):
        raise FieldError("", f"must be an object, got {type_name(obj)}")
    api_version = obj.get("apiVersion")
    for version, text in zip(VERSIONS, API_VERSIONS, strict=True):
        if api_version == text:
            return version
    if api_version is None or api_version == "":
        raise FieldError("apiVersion", "required")
    raise FieldError("apiVersion", f"must be {' or '.join(API_VERSIONS)}, got {show(api_version)}")


def _head(obj: Mapping[str, Any]) -> _Head:
    metadata = mapping_field(obj.get("metadata"), "metadata")
    name = required_name(metadata, "metadata.name", dns_subdomain_problem)
    labels_from_k8s(metadata.get("labels"), "metadata.labels")  # ValidateObjectMeta does too
    spec = mapping_field(obj.get("spec"), "spec")
    return _Head(
        name=name,
        tier=_tier(spec.get("tier")),
        priority=_priority(spec.get("priority")),
        subject=_subject(spec.get("subject"), "spec.subject"),
        ingress=_bounded(spec.get("ingress"), "spec.ingress", "rule", 0, MAX_RULES),
        egress=_bounded(spec.get("egress"), "spec.egress", "rule", 0, MAX_RULES),
    )


def _tier(value: Any) -> Tier:
    if value is None:
        raise FieldError("spec.tier", "required")
    for tier in Tier:
        if value == tier.value:
            return tier
    raise FieldError(
        "spec.tier", f"must be Admin or Baseline, got {show(value)}{_case_hint(value, Tier)}"
    )


def _priority(value: Any) -> int:
    if value is None:
        raise FieldError("spec.priority", "required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError("spec.priority", f"must be an integer, got {describe(value)}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise FieldError(
            "spec.priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {value}"
        )
    return value


def _action(value: Any, field: str) -> RuleAction:
    if value is None:
        raise FieldError(field, "required")
    for action in RuleAction:
        if value == action.value:
            return action
    hint = _case_hint(value, RuleAction)
    if value == "Allow":
        hint = " (v1alpha2 renamed Allow to Accept)"
    raise FieldError(field, f"must be Accept, Deny or Pass, got {show(value)}{hint}")


def _case_hint(value: Any, values: type[Tier] | type[RuleAction]) -> str:
    if isinstance(value, str):
        for member in values:
            if value.casefold() == member.value.casefold():
                return f' (did you mean "{member.value}"? values are case-sensitive)'
    return ""


def _subject(value: Any, field: str) -> ClusterSubject:
    if value is None:
        raise FieldError(field, "required")
    subject = mapping_field(value, field)
    key = _one_of(subject, ("namespaces", "pods"), field)
    if key == "namespaces":
        return ClusterSubject(namespaces=selector_from_k8s(subject[key], f"{field}.namespaces"))
    return ClusterSubject(pods=_namespaced_pods(subject[key], f"{field}.pods"))


def _namespaced_pods(value: Any, field: str) -> NamespacedPods:
    pods = mapping_field(value, field)
    if pods.get("podSelector") is None:
        raise FieldError(f"{field}.podSelector", "required ({} selects every pod)")
    return NamespacedPods(
        namespace_selector=selector_from_k8s(
            pods.get("namespaceSelector"), f"{field}.namespaceSelector"
        ),
        pod_selector=selector_from_k8s(pods["podSelector"], f"{field}.podSelector"),
    )


def _rule(
    value: Any, field: str, direction: Direction, version: Version, *, strict: bool
) -> ClusterRule:
    rule = mapping_field(value, field)
    name = string_field(rule.get("name"), f"{field}.name")
    if len(name) > MAX_RULE_NAME:
        raise FieldError(
            f"{field}.name", f"must be no more than {MAX_RULE_NAME} characters, got {len(name)}"
        )
    action = _action(rule.get("action"), f"{field}.action")
    peers_key = "from" if direction == "ingress" else "to"
    peers_field = f"{field}.{peers_key}"
    raw_peers = rule.get(peers_key)
    if raw_peers is None:
        raise FieldError(peers_field, "required (at least one peer)")
    peers = [
        _peer(item, f"{peers_field}[{index}]", direction, version)
        for index, item in enumerate(_bounded(raw_peers, peers_field, "peer", 1, MAX_RULES))
    ]
    ports: tuple[PolicyPort, ...] = ()
    raw_protocols = rule.get("protocols")
    if raw_protocols is not None:
        entries = _bounded(raw_protocols, f"{field}.protocols", "entry", 1, MAX_RULES)
        ports, named_port = _protocols(entries, f"{field}.protocols", strict=strict)
        if named_port is not None:
            _check_named_port_peers(rule.get(peers_key), peers_field, named_port)
    return ClusterRule(action=action, peers=tuple(peers), ports=ports, name=name)


def _check_named_port_peers(raw_peers: Any, peers_field: str, named_port: str) -> None:
    """The egress rule's CEL rule: no named port with networks, nodes or domainNames peers."""
    for index, item in enumerate(raw_peers):
        for key in NO_NAMED_PORT_PEERS:
            if isinstance(item, Mapping) and item.get(key) is not None:
                raise FieldError(
                    named_port,
                    f"cannot be combined with the {key} peer {peers_field}[{index}]: there are "
                    "no named ports for networks, nodes or domainNames peers",
                )


def _peer(value: Any, field: str, direction: Direction, version: Version) -> ClusterPeer:
    peer = mapping_field(value, field)
    known = INGRESS_PEER_FIELDS if direction == "ingress" else EGRESS_PEER_FIELDS
    key = _one_of(peer, known, field)
    path = f"{field}.{key}"
    if key == "namespaces":
        return ClusterPeer(namespaces=selector_from_k8s(peer[key], path))
    if key == "pods":
        return ClusterPeer(pods=_namespaced_pods(peer[key], path))
    if key == "nodes":
        return ClusterPeer(nodes=selector_from_k8s(peer[key], path))
    if key == "networks":
        return ClusterPeer(networks=_networks(peer[key], path, version))
    raise FieldError(path, DOMAIN_NAMES_REFUSAL)


def _networks(value: Any, field: str, version: Version) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(_bounded(value, field, "CIDR", 1, MAX_RULES)):
        path = f"{field}[{index}]"
        if not isinstance(item, str):
            raise FieldError(path, f"must be a CIDR string, got {type_name(item)}")
        if len(item) > MAX_CIDR_LENGTH:
            raise FieldError(
                path, f"must be no more than {MAX_CIDR_LENGTH} characters, got {len(item)}"
            )
        if item in seen:
            raise FieldError(
                path, f"duplicate entry {show(item)} (also {field}[{seen[item]}]): a set"
            )
        seen[item] = index
        try:
            network = parse_cidr(item, strict=True)  # CEL isCIDR: netip.ParsePrefix
        except ValueError as error:
            raise FieldError(path, f"{error}, got {show(item)}") from None
        if version == "v1beta1" and ipaddress.ip_interface(item).ip != network.network_address:
            raise FieldError(
                path,
                f"must be a network address without host bits in {GROUP}/v1beta1 "
                f"({network}, not {item})",
            )
        networks.append(network)
    return tuple(networks)


def _protocols(
    entries: list[Any], field: str, *, strict: bool
) -> tuple[tuple[PolicyPort, ...], str | None]:
    """The rule's ports, and the path of its first ``destinationNamedPort`` (or None)."""
    ports: list[PolicyPort] = []
    named_port: str | None = None
    for index, item in enumerate(entries):
        path = f"{field}[{index}]"
        entry = mapping_field(item, path)
        key = _one_of(entry, PROTOCOL_FIELDS, path)
        if key == "destinationNamedPort":
            name = _named_port(entry[key], f"{path}.{key}", strict=strict)
            # Resolved on each destination pod, whatever its protocol: one entry per protocol.
            ports.extend(PolicyPort(protocol=protocol, port=name) for protocol in PROTOCOLS)
            named_port = named_port or f"{path}.{key}"
        else:
            ports.append(_destination_port(entry[key], f"{path}.{key}", _PROTOCOL_OF[key]))
    return tuple(dict.fromkeys(ports)), named_port


_PROTOCOL_OF: Final[Mapping[str, PortProtocol]] = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


def _named_port(value: Any, field: str, *, strict: bool) -> str:
    if not isinstance(value, str):
        raise FieldError(field, f"must be a port name, got {describe(value)}")
    if not value:
        raise FieldError(field, "must be a port name, got an empty string")
    problem = port_name_problem(value)
    if strict and problem is not None:
        raise FieldError(
            field,
            f"a container port name {problem}, got {show(value)}, so it can never match a port",
        )
    return value


def _destination_port(value: Any, field: str, protocol: PortProtocol) -> PolicyPort:
    match = mapping_field(value, field)
    raw = match.get("destinationPort")
    path = f"{field}.destinationPort"
    if raw is None:
        raise FieldError(
            field,
            "must specify destinationPort: {number: 80} or {range: {start: 8000, end: 8080}}",
        )
    if isinstance(raw, int) and not isinstance(raw, bool):
        raise FieldError(path, f"must be an object such as {{number: {raw}}}, got integer {raw}")
    port = mapping_field(raw, path)
    key = _one_of(port, PORT_FIELDS, path)
    if key == "number":
        return PolicyPort(protocol=protocol, port=port_number(port[key], f"{path}.number"))
    range_field = f"{path}.range"
    bounds = mapping_field(port[key], range_field)
    ends: list[int] = []
    for end in ("start", "end"):
        if bounds.get(end) is None:
            raise FieldError(f"{range_field}.{end}", "required")
        ends.append(port_number(bounds[end], f"{range_field}.{end}"))
    start, last = ends
    if start >= last:
        raise FieldError(range_field, f"start ({start}) must be less than end ({last})")
    return PolicyPort(protocol=protocol, port=start, end_port=last)


# -- scalars and lists ----------------------------------------------------------------------


def _one_of(value: Mapping[str, Any], known: tuple[str, ...], field: str) -> str:
    """The one field of ``known`` set in ``value`` (MinProperties=1, MaxProperties=1 after the
    API server prunes unknown fields and nulls)."""
    present = [key for key in known if value.get(key) is not None]
    if len(present) == 1:
        return present[0]
    if present:
        raise FieldError(field, f"must specify only one of {_or(known)}, got {_and(present)}")
    reason = f"must specify one of {_or(known)}"
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        reason += f" (unknown fields: {', '.join(unknown)})"
    raise FieldError(field, reason)


def _bounded(value: Any, field: str, noun: str, minimum: int, maximum: int) -> list[Any]:
    items = list_field(value, field)
    plural = "entries" if noun == "entry" else f"{noun}s"
    if len(items) < minimum:
        raise FieldError(field, f"must have at least {minimum} {noun}")
    if len(items) > maximum:
        raise FieldError(field, f"must have at most {maximum} {plural}, got {len(items)}")
    return items


def _or(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# -- strict decoding: the fields each struct knows --------------------------------------


_SELECTOR: Final = Struct(
    "label selectors",
    {"matchLabels": None, "matchExpressions": ListOf(SELECTOR_REQUIREMENT)},
    meant={"labels": "matchLabels", "expressions": "matchExpressions"},
    notes={
        **dict.fromkeys(
            ("key", "operator", "values"),
            "label selectors have matchLabels and matchExpressions; key, operator and values go "
            "in an entry of matchExpressions",
        ),
        **{
            key: f"{key} is a field of peers and subjects, not of label selectors: check the "
            "indentation"
            for key in ("namespaces", "pods", "nodes", "networks", "domainNames")
        },
        **{
            key: f"{key} goes in pods, next to the other selector: "
            "pods: {namespaceSelector: ..., podSelector: ...}"
            for key in ("namespaceSelector", "podSelector")
        },
    },
    otherwise=(
        "label selectors have matchLabels and matchExpressions; to select on the label {key}, "
        "write matchLabels: {{{key}: ...}}"
    ),
)
_NAMESPACED_PODS: Final = Struct(
    "pods selections",
    {"namespaceSelector": _SELECTOR, "podSelector": _SELECTOR},
    meant={"namespaces": "namespaceSelector", "pods": "podSelector"},
    notes=dict.fromkeys(
        ("matchLabels", "matchExpressions"),
        "pods has namespaceSelector and podSelector; matchLabels and matchExpressions go in one "
        "of them",
    ),
)
_SELECTOR_NOTES: Final = dict.fromkeys(
    ("matchLabels", "matchExpressions"),
    "matchLabels and matchExpressions go in a selector: namespaces: {matchLabels: ...}",
)
_SUBJECT: Final = Struct(
    "subjects",
    {"namespaces": _SELECTOR, "pods": _NAMESPACED_PODS},
    meant={"namespaceSelector": "namespaces", "podSelector": "pods"},
    notes={
        **_SELECTOR_NOTES,
        "podSelector": "pods: {namespaceSelector: ..., podSelector: ...}",
    },
)
_EGRESS_ONLY_NOTE: Final = (
    "ingress peers are namespaces and pods; networks, nodes and domainNames are egress peers only"
)
_PEER_PROTOCOLS_NOTE: Final = "protocols belong to the rule, next to from or to, not to a peer"
_INGRESS_PEER: Final = Struct(
    "ingress peers",
    {"namespaces": _SELECTOR, "pods": _NAMESPACED_PODS},
    meant={"namespaceSelector": "namespaces", "podSelector": "pods"},
    notes={
        **_SELECTOR_NOTES,
        **dict.fromkeys(("networks", "nodes", "domainNames", "ipBlock"), _EGRESS_ONLY_NOTE),
        **dict.fromkeys(("protocols", "ports"), _PEER_PROTOCOLS_NOTE),
    },
)
_EGRESS_PEER: Final = Struct(
    "egress peers",
    {
        "namespaces": _SELECTOR,
        "pods": _NAMESPACED_PODS,
        "nodes": _SELECTOR,
        "networks": None,
        "domainNames": None,
    },
    meant={
        "namespaceSelector": "namespaces",
        "podSelector": "pods",
        "nodeSelector": "nodes",
        "ipBlock": "networks",
        "cidr": "networks",
    },
    notes={
        **_SELECTOR_NOTES,
        **dict.fromkeys(("ipBlock", "cidr"), "networks is a list of CIDRs: networks: [10.0.0.0/8]"),
        **dict.fromkeys(("protocols", "ports"), _PEER_PROTOCOLS_NOTE),
    },
)
_PORT_RANGE: Final = Struct(
    "port ranges", {"start": None, "end": None}, meant={"endPort": "end", "port": "start"}
)
_DESTINATION_PORT: Final = Struct(
    "destination ports",
    {"number": None, "range": _PORT_RANGE},
    meant={"port": "number", "portRange": "range"},
    notes=dict.fromkeys(
        ("start", "end", "endPort"), "a range goes in range: range: {start: 8000, end: 8080}"
    ),
)
_PROTOCOL_MATCH: Final = Struct(
    "tcp, udp and sctp matches",
    {"destinationPort": _DESTINATION_PORT},
    meant={"port": "destinationPort", "ports": "destinationPort"},
    notes=dict.fromkeys(
        ("number", "range"), "number and range go in destinationPort: destinationPort: {number: 80}"
    ),
)
_PROTOCOL_ENTRY_NOTE: Final = (
    "a protocols entry is one of tcp, udp, sctp or destinationNamedPort: "
    "protocols: [{tcp: {destinationPort: {number: 80}}}]"
)
_PROTOCOL: Final = Struct(
    "protocols entries",
    {
        "tcp": _PROTOCOL_MATCH,
        "udp": _PROTOCOL_MATCH,
        "sctp": _PROTOCOL_MATCH,
        "destinationNamedPort": None,
    },
    meant={"namedPort": "destinationNamedPort"},
    notes=dict.fromkeys(
        ("port", "protocol", "endPort", "destinationPort", "number"), _PROTOCOL_ENTRY_NOTE
    ),
)
_PORTS_NOTE: Final = "protocols: [{tcp: {destinationPort: {number: 80}}}]"
_INGRESS_RULE: Final = Struct(
    "ingress rules",
    {"name": None, "action": None, "from": ListOf(_INGRESS_PEER), "protocols": ListOf(_PROTOCOL)},
    meant={"to": "from", "ports": "protocols"},
    notes={
        "ports": _PORTS_NOTE,
        **dict.fromkeys(
            ("namespaces", "pods"), "peers go in a list under from: from: [{namespaces: ...}]"
        ),
    },
)
_EGRESS_RULE: Final = Struct(
    "egress rules",
    {"name": None, "action": None, "to": ListOf(_EGRESS_PEER), "protocols": ListOf(_PROTOCOL)},
    meant={"from": "to", "ports": "protocols"},
    notes={
        "ports": _PORTS_NOTE,
        **dict.fromkeys(
            ("namespaces", "pods", "nodes", "networks", "domainNames"),
            "peers go in a list under to: to: [{namespaces: ...}]",
        ),
    },
)
_SPEC: Final = Struct(
    "ClusterNetworkPolicy specs",
    {
        "tier": None,
        "priority": None,
        "subject": _SUBJECT,
        "ingress": ListOf(_INGRESS_RULE),
        "egress": ListOf(_EGRESS_RULE),
    },
    meant={"podSelector": "subject", "order": "priority"},
    notes={
        "podSelector": "a ClusterNetworkPolicy selects pods with subject: {namespaces: ...} or "
        "subject: {pods: {namespaceSelector: ..., podSelector: ...}}",
        "policyTypes": "ClusterNetworkPolicy has no policyTypes: a policy affects a direction "
        "when it has rules for it",
        **dict.fromkeys(("namespaces", "pods"), "it belongs in subject"),
        **dict.fromkeys(("from", "to", "action", "protocols"), "it belongs in a rule"),
    },
)
_CLUSTER_NETWORK_POLICY: Final = Struct(
    "ClusterNetworkPolicies",
    {
        "apiVersion": None,
        "kind": None,
        "metadata": OBJECT_META,
        "spec": _SPEC,
        "status": None,
    },
    notes={
        **dict.fromkeys(_SPEC.fields, "it belongs in spec"),
        **dict.fromkeys(OBJECT_META.fields, "it belongs in metadata"),
    },
)
