"""The edge of the pipeline: Kubernetes objects in, netpol-agent's frozen records out.

Objects arrive as plain dicts in the shape of the Kubernetes API's JSON (camelCase keys): parsed
from YAML/JSON manifests, or as the API server returns them. Objects of the ``kubernetes`` client
library must first go through ``ApiClient().sanitize_for_serialization(obj)``, which gives that
shape (``obj.to_dict()`` gives snake_case keys and is *not* accepted).

Validation happens here, once, and follows what the API server does (k8s
``pkg/apis/networking/validation/validation.go``, ``ValidateNetworkPolicySpec`` and friends, and
apimachinery's label and selector validation), so that a manifest the cluster would reject is
rejected here too, with the field path the API would name. Where a choice had to be made:

- ``policyTypes`` omitted (or ``[]``) defaults to ``[Ingress]``, plus ``Egress`` when the policy
  has at least one egress rule. This is ``SetDefaults_NetworkPolicy`` in
  k8s ``pkg/apis/networking/v1/defaults.go``: ``if len(obj.Spec.Egress) != 0``. So ``egress: []``
  does *not* add Egress; write ``policyTypes: [Egress]`` for a default-deny-egress policy.
- ``policyTypes`` with more than two entries is an error; duplicates such as
  ``[Ingress, Ingress]`` are accepted, because ``ValidateNetworkPolicySpec`` accepts them too (it
  only checks the count and each value); the result is a set anyway.
- ``spec.podSelector`` omitted means ``{}`` (every pod of the namespace). The Go type is a value,
  not a pointer, so the API server decodes a missing selector as the empty one and accepts it;
  kubernetes/kubernetes#131354 made the docs and OpenAPI schema say so. A missing ``spec`` is
  likewise the empty spec (select all, Ingress, no rules).
- Addresses (``status.podIPs``) and ``ipBlock`` CIDRs are legacy fields for the API server:
  it validates them with ``IsValidIPForLegacyField`` / ``IsValidCIDRForLegacyField``
  (apimachinery ``pkg/api/validation/ip.go``), which parse with k8s.io/utils/net
  ``ParseIPSloppy`` / ``ParseCIDRSloppy``: Go 1.16's parser, kept for values already stored.
  It reads IPv4 octets with leading zeros as *decimal* (``010.244.1.3`` is 10.244.1.3, never
  octal 8.244.1.3), takes an IPv4-mapped IPv6 address (``::ffff:10.244.1.3``) as the IPv4
  address (Go's ``net.IP.To4``; a mapped CIDR such as ``::ffff:10.0.0.0/104`` is 10.0.0.0/8),
  and allows leading zeros in a prefix length (``/08``). Only with the feature gate
  StrictIPCIDRValidation does the API refuse those forms, and then only in new values (an
  unchanged old value is let through on update: ratcheting), so objects read from a cluster
  may carry them whatever its version: ``strict=False`` (objects from the API server) accepts
  them with the sloppy parser's meaning. ``strict=True`` (files people write) refuses them, as
  the strict gate does for new objects: they are ambiguous to the eye (octal or decimal?).
  In both modes host bits may be set in a CIDR (``10.0.0.1/24`` means ``10.0.0.0/24``), as the
  legacy validation allows, and zones (``fe80::1%eth0``) are refused.
- Container port names must be unique within one container (``validateContainerPorts``
  refuses a duplicate); across containers the API only warns ("services and probes that
  select ports by name will use" the first), so there the first declaration wins.
- A string ``port`` is always a port *name*, as with the API's IntOrString: ``"80"`` is a name,
  and fails IANA_SVC_NAME validation because it has no letter.
- A ``null`` entry in a list of structs (``ingress: [null]``) is the zero struct, as Go's JSON
  decoder makes it: a ``null`` ingress rule is ``{}`` and allows everything, as in the cluster.
- Unknown fields depend on where the object comes from. ``policy_from_k8s(obj, strict=True)``
  rejects any unknown field anywhere in a NetworkPolicy (top level, ``metadata``, ``spec``,
  rules, peers, ``ipBlock``, ports, label selectors and their requirements), as ``kubectl apply``
  does by default (server-side field validation ``Strict``: "strict decoding error: unknown
  field"), naming the field's path and, for the usual slips, what was probably meant (``to`` in
  an ingress rule, ``podselector``, ``excepts``, labels written straight under a selector).
  This is for files people write (``agent.manifests`` loads them strictly): there, an ignored
  field is a rule that silently allows more than intended (``to:`` in an ingress rule leaves a
  rule without peers, which allows every source). ``metadata``'s fields are the ObjectMeta ones;
  only the names are checked there, not what ``ownerReferences`` or ``managedFields`` hold.
  The default, ``strict=False``, ignores unknown fields, like the API server's pruning: it is for
  objects read from the API server (``agent.state``), which has validated them already and may
  be newer than we are, with fields we do not know yet.
  Pods are lenient in both modes except for the entries of a container's ``ports``, which give
  the named ports that policies refer to: ``pod_from_k8s(obj, strict=True)`` rejects unknown
  fields there (in containers and sidecars, the ones whose ports we read). Namespaces always
  ignore unknown fields. A wrong type is an error naming the field in every mode.
- Staged policies (``enforcement.model.STAGED_ANNOTATION``, read by :func:`staged_annotation`
  for both policy kinds): ``"true"`` stages the policy (evaluated and reported, not enforced),
  ``"false"`` or no annotation enforces it. Anything else, and an annotation key that looks
  like a slip for it (``netpol-agent.io/stage``, ``netpol-agent/staged``, any other key under
  ``netpol-agent.io/``), is an error with ``strict=True``: a slip there would enforce a policy
  its author meant only to try. With ``strict=False`` such a policy is *enforced*, never lifted
  because of a malformed annotation (fail-closed), and the problem is reported with the
  object's errors (``agent.kinds``). An unquoted YAML ``true`` is a boolean, which the API
  server refuses (annotations are strings): the error says to quote it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Final

from enforcement.model import (
    SELECT_ALL,
    STAGED_ANNOTATION,
    ContainerPort,
    Direction,
    IPAddress,
    IPBlock,
    IPNetwork,
    LabelRequirement,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    PortProtocol,
    Rule,
    SelectorOperator,
    UnreadablePod,
)

NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
"""Set on every Namespace by the API server to the namespace's name, so selectors can use it."""

PROTOCOLS: Final[tuple[PortProtocol, ...]] = ("TCP", "UDP", "SCTP")
OPERATORS: Final[tuple[SelectorOperator, ...]] = ("In", "NotIn", "Exists", "DoesNotExist")
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
"""Pod phases in which the pod no longer owns its address (the CNI may give it to a new pod)."""


class FieldError(ValueError):
    """A problem at one field of an object; the caller adds the object's kind and name."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        """Path of the offending field, e.g. ``spec.ingress[0].from[1].ipBlock.except[0]``."""
        self.reason = reason

    def within(self, kind: str, object_name: str) -> ConversionError:
        return ConversionError(kind, object_name, self.field, self.reason)


class ConversionError(ValueError):
    """A Kubernetes object that cannot become a netpol-agent record.

    ``str()`` reads ``NetworkPolicy default/allow-db: spec.ingress[0].ports[0].port: must be
    between 1 and 65535, got 70000``.
    """

    def __init__(self, kind: str, object_name: str, field: str, reason: str) -> None:
        self.kind = kind
        self.object_name = object_name
        """``namespace/name`` for namespaced objects, ``name`` otherwise."""
        self.field = field
        """Path of the offending field; empty when the whole object is wrong."""
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.kind} {self.object_name}: {where}{self.reason}"


# -- public converters ----------------------------------------------------------------------


def object_label(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` (or ``Kind name``) for messages; never raises."""
    kind = obj.get("kind") if isinstance(obj, Mapping) else None
    return f"{kind if isinstance(kind, str) and kind else 'object'} {object_name(obj)}"


def object_name(obj: Mapping[str, Any]) -> str:
    """``namespace/name``, or ``name`` without a namespace, best effort; never raises."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(metadata, Mapping):
        return "?"
    name = metadata.get("name")
    namespace = metadata.get("namespace")
    name_text = name if isinstance(name, str) and name else "?"
    if isinstance(namespace, str) and namespace:
        return f"{namespace}/{name_text}"
    return name_text


def namespace_from_k8s(obj: Mapping[str, Any]) -> Namespace:
    """A v1 Namespace. Its labels always include ``kubernetes.io/metadata.name: <name>``."""
    try:
        metadata = _metadata(obj)
        name = _name(metadata, "metadata.name", _dns_label_problem)
        labels = labels_from_k8s(metadata.get("labels"), "metadata.labels")
    except FieldError as error:
        raise error.within("Namespace", object_name(obj)) from None
    # The API server sets this label on every namespace (overriding any other value).
    return Namespace(name=name, labels=Labels({**labels, NAMESPACE_NAME_LABEL: name}))


def pod_from_k8s(obj: Mapping[str, Any], *, strict: bool = False) -> Pod:
    """A v1 Pod: labels, addresses, node, hostNetwork and the declared container ports.

    A Pod this refuses must not simply be left out by a caller that enforces: that would take
    its addresses out of the tables and un-isolate it. ``fail_closed_pod`` gives what to
    enforce instead.

    Addresses come from ``status.podIPs`` or else ``status.podIP``; a pod without status has
    none yet. A pod in phase Succeeded or Failed has none either: it no longer runs, and its
    address may already belong to a new pod, which must not be mistaken for the old one.
    Ports come from ``spec.containers`` and from sidecars (``spec.initContainers`` with
    ``restartPolicy: Always``); plain init containers have finished before the pod serves.

    ``strict=True`` rejects unknown fields in those ports' entries (they define the named ports
    policies refer to) and addresses in the sloppy legacy forms; the rest of a Pod is lenient
    in both modes (see the module docstring).
    """
    try:
        return _pod(obj, strict=strict)
    except FieldError as error:
        raise error.within("Pod", object_name(obj)) from None


def fail_closed_pod(obj: Any, error: str = "") -> UnreadablePod:
    """The stand-in enforced for a Pod that ``pod_from_k8s`` rejects; never raises.

    Why: a pod is isolated through its addresses; dropping a pod that cannot be read would
    leave its traffic un-isolated (fail-open). The stand-in keeps every address that can be
    read leniently (each parseable entry of ``status.podIPs`` and ``status.podIP``, with the
    sloppy parser) and the node, and is enforced as an unknown endpoint
    (``enforcement.model.UnreadablePod``): all its traffic denied on its node, matched by no
    selector elsewhere. As for a readable pod, a pod in phase Succeeded or Failed, or with
    ``hostNetwork: true``, claims no address; a node that cannot be read is None (every node
    then treats the pod as its own).
    """
    metadata = _mapping_or_empty(obj.get("metadata") if isinstance(obj, Mapping) else None)
    spec = _mapping_or_empty(obj.get("spec") if isinstance(obj, Mapping) else None)
    status = _mapping_or_empty(obj.get("status") if isinstance(obj, Mapping) else None)
    namespace, name, node = (
        value if isinstance(value, str) else ""
        for value in (metadata.get("namespace"), metadata.get("name"), spec.get("nodeName"))
    )
    ips: list[IPAddress] = []
    phase = status.get("phase")
    terminal = isinstance(phase, str) and phase in TERMINAL_PHASES
    if spec.get("hostNetwork") is not True and not terminal:
        raw_entries = status.get("podIPs")
        entries = list(raw_entries) if isinstance(raw_entries, list | tuple) else []
        texts = [entry.get("ip") for entry in entries if isinstance(entry, Mapping)]
        texts.append(status.get("podIP"))
        for text in texts:
            if not isinstance(text, str):
                continue
            try:
                address = parse_ip(text, strict=False)
            except ValueError:
                continue
            if address not in ips:
                ips.append(address)
    return UnreadablePod(
        namespace=namespace,
        name=name,
        ips=tuple(ips),
        node_name=node or None,
        error=error,
    )


def policy_from_k8s(obj: Mapping[str, Any], *, strict: bool = False) -> NetworkPolicy:
    """A networking.k8s.io/v1 NetworkPolicy, validated and defaulted like the API server does.

    ``strict=True`` also rejects unknown fields anywhere in the object, before anything else, as
    ``kubectl apply`` does, but naming only the first (depth first): for files people write. The
    default ignores them, as the API server's pruning does: for objects read from the API server
    (see the module docstring).
    """
    try:
        if strict:
            _reject_unknown_fields(obj, _NETWORK_POLICY, "")
        return _policy(obj, strict=strict)
    except FieldError as error:
        raise error.within("NetworkPolicy", object_name(obj)) from None


def fail_closed_policy(obj: Mapping[str, Any]) -> NetworkPolicy:
    """The stand-in enforced for a NetworkPolicy that ``policy_from_k8s`` rejects; never raises.

    Why: policies only ever *add* allowed traffic, and isolation comes from being selected.
    Ignoring a broken policy would leave the pods it meant to isolate open whenever no other
    policy selects them (fail-open). The stand-in instead selects what the policy selects (its
    ``podSelector`` if that part converts, else every pod of its namespace), isolates the
    directions it declares (its ``policyTypes``, defaulted as usual, if readable, else both) and
    has no rules. Being a union member with no rules, it can never open traffic; it only closes
    traffic until the policy is fixed, and the error says so.

    A policy annotated as staged (``staged_annotation``, read leniently) has a staged stand-in:
    its author asked for it not to be enforced, so what stands in for it is only evaluated and
    reported too (a malformed annotation is not staged: the stand-in is then enforced).
    """
    metadata = _mapping_or_empty(obj.get("metadata") if isinstance(obj, Mapping) else None)
    namespace = metadata.get("namespace")
    name = metadata.get("name")
    raw_spec = obj.get("spec") if isinstance(obj, Mapping) else None
    spec = _mapping_or_empty(raw_spec)
    try:
        selector = selector_from_k8s(spec.get("podSelector"), "spec.podSelector")
    except FieldError:
        selector = SELECT_ALL
    try:
        policy_types = _policy_types(_mapping(raw_spec, "spec"))
    except FieldError:
        policy_types = frozenset(Direction)
    return NetworkPolicy(
        namespace=namespace if isinstance(namespace, str) else "",
        name=name if isinstance(name, str) else "",
        pod_selector=selector,
        policy_types=policy_types,
        staged=staged_annotation(obj, strict=False),
    )


STAGED_VALUES: Final = {"true": True, "false": False}
"""The values of ``STAGED_ANNOTATION`` and what they mean: staged or not."""
STAGED_FIELD: Final = f"metadata.annotations[{STAGED_ANNOTATION}]"
_OWN_ANNOTATIONS: Final = STAGED_ANNOTATION.partition("/")[0] + "/"
"""netpol-agent's own annotation prefix: every key under it is one of ours, or a slip."""


def staged_annotation(obj: Any, *, strict: bool) -> bool:
    """Whether a policy object (either kind) is staged: ``STAGED_ANNOTATION`` is ``"true"``.

    ``strict=True`` raises FieldError for any other value and for a key that looks like a slip
    for it; ``strict=False`` reads those as not staged (the policy is enforced: fail-closed)
    and :func:`staged_problem` says what is wrong. A missing or malformed ``metadata`` reads as
    not staged here: the converter reports it.
    """
    try:
        return _staged(obj)
    except FieldError:
        if strict:
            raise
        return False


def staged_problem(obj: Any) -> str | None:
    """What is wrong with a policy object's staged annotation (``field: reason``), or None;
    never raises. For the report of an object read leniently, which is then enforced."""
    try:
        _staged(obj)
    except FieldError as error:
        return str(error)
    return None


def _staged(obj: Any) -> bool:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(metadata, Mapping):
        return False
    annotations = metadata.get("annotations")
    if annotations is None:
        return False
    if not isinstance(annotations, Mapping):
        raise FieldError("metadata.annotations", f"must be an object, got {type_name(annotations)}")
    for key in annotations:
        if key != STAGED_ANNOTATION and (
            not isinstance(key, str)
            or key.startswith(_OWN_ANNOTATIONS)
            or _near_miss(key, (STAGED_ANNOTATION,)) is not None
        ):
            raise FieldError(
                f"metadata.annotations[{key}]",
                f'unknown netpol-agent annotation (did you mean "{STAGED_ANNOTATION}"? '
                f'"true" stages the policy: evaluated and reported, not enforced)',
            )
    value = annotations.get(STAGED_ANNOTATION)
    if value is None:
        return False
    if isinstance(value, bool):
        quoted = json.dumps(str(value).lower())
        raise FieldError(
            STAGED_FIELD,
            f"must be the string {_or_values()}, got boolean {str(value).lower()} "
            f"(annotations are strings: quote it, {quoted})",
        )
    staged = STAGED_VALUES.get(value) if isinstance(value, str) else None
    if staged is None:
        raise FieldError(
            STAGED_FIELD,
            'must be "true" (staged: evaluated and reported, not enforced) or "false" (enforced), '
            f"got {_describe(value)}",
        )
    return staged


def _or_values() -> str:
    return " or ".join(json.dumps(value) for value in STAGED_VALUES)


def labels_from_k8s(value: Any, field: str) -> Labels:
    """A ``metadata.labels``-style map: qualified-name keys, label-value values."""
    labels: dict[str, str] = {}
    for key, label_value in _mapping(value, field).items():
        if not isinstance(key, str):
            raise FieldError(field, f"keys must be strings, got {_describe(key)}")
        key_field = f"{field}[{key}]"
        problem = _qualified_name_problem(key)
        if problem is not None:
            raise FieldError(key_field, f"invalid key: {problem}")
        labels[key] = _label_value(label_value, key_field)
    return Labels(labels)


def selector_from_k8s(value: Any, field: str) -> LabelSelector:
    """A metav1.LabelSelector; ``None`` (absent or null) is the empty selector."""
    selector = _mapping(value, field)
    match_labels = labels_from_k8s(selector.get("matchLabels"), f"{field}.matchLabels")
    requirements = tuple(
        _requirement(item, f"{field}.matchExpressions[{index}]")
        for index, item in _items(selector.get("matchExpressions"), f"{field}.matchExpressions")
    )
    return LabelSelector(
        match_labels=tuple(sorted(match_labels.items())),
        match_expressions=requirements,
    )


# -- objects ------------------------------------------------------------------------------


def _pod(obj: Mapping[str, Any], *, strict: bool) -> Pod:
    metadata = _metadata(obj)
    name = _name(metadata, "metadata.name", _dns_subdomain_problem)
    namespace = _name(metadata, "metadata.namespace", _dns_label_problem)
    labels = labels_from_k8s(metadata.get("labels"), "metadata.labels")
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")

    ports: list[ContainerPort] = []
    for index, item in _items(spec.get("containers"), "spec.containers"):
        ports.extend(_container_ports(item, f"spec.containers[{index}]", strict=strict))
    for index, item in _items(spec.get("initContainers"), "spec.initContainers"):
        field = f"spec.initContainers[{index}]"
        container = _mapping(item, field)
        if _string(container.get("restartPolicy"), f"{field}.restartPolicy") == "Always":
            ports.extend(_container_ports(container, field, strict=strict))

    phase = _string(status.get("phase"), "status.phase")
    ips = _pod_ips(status, strict=strict)
    return Pod(
        namespace=namespace,
        name=name,
        labels=labels,
        ips=() if phase in TERMINAL_PHASES else ips,
        ports=tuple(dict.fromkeys(ports)),
        node_name=_string(spec.get("nodeName"), "spec.nodeName") or None,
        host_network=_boolean(spec.get("hostNetwork"), "spec.hostNetwork"),
    )


def _container_ports(value: Any, field: str, *, strict: bool) -> list[ContainerPort]:
    """One container's ports, validated as ``validateContainerPorts`` does (names unique)."""
    container = _mapping(value, field)
    ports: list[ContainerPort] = []
    named: dict[str, str] = {}
    for index, item in _items(container.get("ports"), f"{field}.ports"):
        port_field = f"{field}.ports[{index}]"
        entry = _mapping(item, port_field)
        if strict:
            _reject_unknown_fields(entry, _CONTAINER_PORT, port_field)
        raw_number = entry.get("containerPort")
        if raw_number is None:
            raise FieldError(f"{port_field}.containerPort", "required")
        number = _port_number(raw_number, f"{port_field}.containerPort")
        protocol = _protocol(entry.get("protocol"), f"{port_field}.protocol")
        name = _string(entry.get("name"), f"{port_field}.name") or None
        if name is not None:
            problem = _port_name_problem(name)
            if problem is not None:
                raise FieldError(f"{port_field}.name", f"{problem}, got {_show(name)}")
            if name in named:
                raise FieldError(
                    f"{port_field}.name",
                    f"duplicate port name {_show(name)} (also {named[name]}): port names must "
                    "be unique within a container",
                )
            named[name] = f"{port_field}.name"
        ports.append(ContainerPort(port=number, protocol=protocol, name=name))
    return ports


def _pod_ips(status: Mapping[str, Any], *, strict: bool) -> tuple[IPAddress, ...]:
    texts: list[tuple[str, Any]] = []
    for index, item in _items(status.get("podIPs"), "status.podIPs"):
        field = f"status.podIPs[{index}]"
        texts.append((f"{field}.ip", _mapping(item, field).get("ip")))
    if not texts and status.get("podIP") not in (None, ""):
        texts.append(("status.podIP", status.get("podIP")))

    ips: list[IPAddress] = []
    for field, text in texts:
        if not isinstance(text, str) or not text:
            raise FieldError(field, f"must be an IP address, got {_show(text)}")
        address = _ip_address(text, field, strict=strict)
        for other in ips:
            if other.version == address.version:
                raise FieldError(
                    field, f"at most one address per IP family, already have {other}, got {text}"
                )
        ips.append(address)
    return tuple(ips)


def _policy(obj: Mapping[str, Any], *, strict: bool) -> NetworkPolicy:
    metadata = _metadata(obj)
    name = _name(metadata, "metadata.name", _dns_subdomain_problem)
    namespace = _name(metadata, "metadata.namespace", _dns_label_problem)
    labels_from_k8s(metadata.get("labels"), "metadata.labels")  # ValidateObjectMeta does too
    staged = staged_annotation(obj, strict=strict)
    spec = _mapping(obj.get("spec"), "spec")
    pod_selector = selector_from_k8s(spec.get("podSelector"), "spec.podSelector")
    ingress = tuple(
        _rule(item, f"spec.ingress[{index}]", "from", strict=strict)
        for index, item in _items(spec.get("ingress"), "spec.ingress")
    )
    egress = tuple(
        _rule(item, f"spec.egress[{index}]", "to", strict=strict)
        for index, item in _items(spec.get("egress"), "spec.egress")
    )
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=_policy_types(spec),
        ingress=ingress,
        egress=egress,
        staged=staged,
    )


def _policy_types(spec: Mapping[str, Any]) -> frozenset[Direction]:
    declared = _list(spec.get("policyTypes"), "spec.policyTypes")
    if len(declared) > len(Direction):
        raise FieldError(
            "spec.policyTypes", f"may not specify more than two policyTypes, got {len(declared)}"
        )
    types: set[Direction] = set()
    for index, item in enumerate(declared):
        if item not in ("Ingress", "Egress"):
            raise FieldError(
                f"spec.policyTypes[{index}]", f'must be "Ingress" or "Egress", got {_show(item)}'
            )
        types.add(Direction(item))
    if not types:
        # SetDefaults_NetworkPolicy (k8s pkg/apis/networking/v1/defaults.go).
        types.add(Direction.INGRESS)
        if _list(spec.get("egress"), "spec.egress"):
            types.add(Direction.EGRESS)
    return frozenset(types)


def _rule(value: Any, field: str, peers_key: str, *, strict: bool) -> Rule:
    rule = _mapping(value, field)
    ports = tuple(
        _policy_port(item, f"{field}.ports[{index}]")
        for index, item in _items(rule.get("ports"), f"{field}.ports")
    )
    peers = tuple(
        _peer(item, f"{field}.{peers_key}[{index}]", strict=strict)
        for index, item in _items(rule.get(peers_key), f"{field}.{peers_key}")
    )
    return Rule(peers=peers, ports=ports)


def _peer(value: Any, field: str, *, strict: bool) -> Peer:
    peer = _mapping(value, field)
    pod_selector = namespace_selector = None
    ip_block = None
    if peer.get("podSelector") is not None:
        pod_selector = selector_from_k8s(peer["podSelector"], f"{field}.podSelector")
    if peer.get("namespaceSelector") is not None:
        namespace_selector = selector_from_k8s(
            peer["namespaceSelector"], f"{field}.namespaceSelector"
        )
    if peer.get("ipBlock") is not None:
        ip_block = _ip_block(peer["ipBlock"], f"{field}.ipBlock", strict=strict)
    count = sum(part is not None for part in (pod_selector, namespace_selector, ip_block))
    if count == 0:
        reason = "must specify a peer: podSelector, namespaceSelector or ipBlock"
        unknown = sorted(str(key) for key in peer)
        if unknown:
            reason += f" (unknown fields: {', '.join(unknown)})"
        raise FieldError(field, reason)
    if ip_block is not None and count > 1:
        raise FieldError(field, "may not specify both ipBlock and another peer")
    return Peer(pod_selector=pod_selector, namespace_selector=namespace_selector, ip_block=ip_block)


def _ip_block(value: Any, field: str, *, strict: bool) -> IPBlock:
    block = _mapping(value, field)
    if block.get("cidr") in (None, ""):
        raise FieldError(f"{field}.cidr", "required")
    cidr = _cidr(block["cidr"], f"{field}.cidr", strict=strict)
    excepts: list[IPNetwork] = []
    for index, item in _items(block.get("except"), f"{field}.except"):
        except_field = f"{field}.except[{index}]"
        excluded = _cidr(item, except_field, strict=strict)
        if excluded.version != cidr.version:
            raise FieldError(
                except_field, f"must be in the same IP family as cidr {cidr}, got {_show(item)}"
            )
        # ValidateIPBlock: cidr contains the except's address and the except's prefix is longer.
        inside = int(excluded.network_address) & int(cidr.netmask) == int(cidr.network_address)
        if not inside or excluded.prefixlen <= cidr.prefixlen:
            raise FieldError(except_field, f"must be a strict subset of cidr {cidr}, got {item}")
        excepts.append(excluded)
    return IPBlock(cidr=cidr, excepts=tuple(excepts))


def _policy_port(value: Any, field: str) -> PolicyPort:
    entry = _mapping(value, field)
    protocol = _protocol(entry.get("protocol"), f"{field}.protocol")
    raw_port = entry.get("port")
    port: int | str | None = None
    if raw_port is not None:
        if isinstance(raw_port, str):
            problem = _port_name_problem(raw_port)
            if problem is not None:
                hint = " (a number must not be quoted)" if raw_port.isdigit() else ""
                raise FieldError(
                    f"{field}.port",
                    f"a named port {problem}, got {_show(raw_port)}{hint}",
                )
            port = raw_port
        elif isinstance(raw_port, int) and not isinstance(raw_port, bool):
            port = _port_number(raw_port, f"{field}.port")
        else:
            raise FieldError(
                f"{field}.port",
                f"must be a port number or a port name, got {_describe(raw_port)}",
            )
    raw_end = entry.get("endPort")
    end_port: int | None = None
    if raw_end is not None:
        end_field = f"{field}.endPort"
        if not isinstance(raw_end, int) or isinstance(raw_end, bool):
            raise FieldError(end_field, f"must be an integer, got {type_name(raw_end)}")
        if port is None:
            raise FieldError(end_field, "may not be specified when `port` is not specified")
        if isinstance(port, str):
            raise FieldError(end_field, "may not be specified when `port` is a named port")
        if raw_end < port:
            raise FieldError(
                end_field, f"must be greater than or equal to `port` ({port}), got {raw_end}"
            )
        end_port = _port_number(raw_end, end_field)
    return PolicyPort(protocol=protocol, port=port, end_port=end_port)


def _requirement(value: Any, field: str) -> LabelRequirement:
    entry = _mapping(value, field)
    operator = entry.get("operator")
    if operator not in OPERATORS:
        raise FieldError(
            f"{field}.operator",
            f"must be one of {', '.join(OPERATORS)}, got {_show(operator)}",
        )
    key = entry.get("key")
    if not isinstance(key, str):
        raise FieldError(f"{field}.key", f"must be a label key, got {_show(key)}")
    problem = _qualified_name_problem(key)
    if problem is not None:
        raise FieldError(f"{field}.key", f"{problem}, got {_show(key)}")
    values = [
        _label_value(item, f"{field}.values[{index}]")
        for index, item in enumerate(_list(entry.get("values"), f"{field}.values"))
    ]
    if operator in ("In", "NotIn") and not values:
        raise FieldError(f"{field}.values", f"required when `operator` is {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise FieldError(f"{field}.values", f"may not be specified when `operator` is {operator}")
    return LabelRequirement(key=key, operator=operator, values=frozenset(values))


# -- strict decoding: the fields each struct knows --------------------------------------


@dataclass(frozen=True, slots=True)
class _ListOf:
    """A field holding a list of structs."""

    item: _Struct


@dataclass(frozen=True, slots=True)
class _Struct:
    """The fields of one Kubernetes struct type, for strict decoding, and hints for slips."""

    what: str
    """The struct in the plural, for the hint ``ingress rules have from and ports``; empty to
    leave the list of fields out (ObjectMeta has too many to be a hint)."""
    fields: Mapping[str, _Struct | _ListOf | None]
    """Each known field and what it holds: a struct, a list of structs, or None for anything
    else (scalars, lists of scalars, maps such as labels), which strict decoding does not enter."""
    meant: Mapping[str, str] = dataclass_field(default_factory=dict)
    """Unknown fields that are a known field under another name (``to`` for ``from`` in an
    ingress rule), beyond the near misses found by spelling (case, a plural ``s``, a typo)."""
    notes: Mapping[str, str] = dataclass_field(default_factory=dict)
    """Unknown fields that belong somewhere else, and where; said instead of the field list."""
    otherwise: str = ""
    """Said for an unknown field without a note or a near miss; ``{key}`` is the field."""


def _reject_unknown_fields(value: Any, struct: _Struct, field: str) -> None:
    """Strict decoding: FieldError for the first field ``struct`` does not know, depth first.

    A value of the wrong type is passed over: the converter names it afterwards.
    """
    if not isinstance(value, Mapping):
        return
    for key, item in value.items():
        path = f"{field}.{key}" if field else str(key)
        if key not in struct.fields:
            hint = _unknown_field_hint(key, struct)
            raise FieldError(path, f"unknown field ({hint})" if hint else "unknown field")
        inner = struct.fields[key]
        if isinstance(inner, _Struct):
            _reject_unknown_fields(item, inner, path)
        elif isinstance(inner, _ListOf) and isinstance(item, list | tuple):
            for index, element in enumerate(item):
                _reject_unknown_fields(element, inner.item, f"{path}[{index}]")


def _unknown_field_hint(key: Any, struct: _Struct) -> str:
    """``did you mean "from"? ingress rules have from and ports``, or a note on where it goes."""
    name = key if isinstance(key, str) else _show(key)
    meant = struct.meant.get(name) or _near_miss(name, struct.fields)
    note = struct.notes.get(name)
    if note is None and meant is None and struct.otherwise:
        note = struct.otherwise.format(key=name)
    if note is None and struct.what:
        note = f"{struct.what} have {_and(list(struct.fields))}"
    return " ".join(([f'did you mean "{meant}"?'] if meant else []) + ([note] if note else []))


def _near_miss(name: str, known: Iterable[str]) -> str | None:
    """The known field ``name`` is a slip for: the same but for case or a plural ``s``, or a typo
    close enough (``podselector``, ``excepts``, ``namspaceSelector``)."""
    by_folded = {field.casefold(): field for field in known}
    folded = name.casefold()
    for candidate in (folded, folded + "s", folded.removesuffix("s")):
        if candidate in by_folded:
            return by_folded[candidate]
    close = difflib.get_close_matches(folded, list(by_folded), n=1, cutoff=0.75)
    return by_folded[close[0]] if close else None


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


_REQUIREMENT: Final = _Struct(
    "label selector requirements", {"key": None, "operator": None, "values": None}
)
_SELECTOR: Final = _Struct(
    "label selectors",
    {"matchLabels": None, "matchExpressions": _ListOf(_REQUIREMENT)},
    meant={"labels": "matchLabels", "expressions": "matchExpressions"},
    notes={
        **dict.fromkeys(
            ("key", "operator", "values"),
            "label selectors have matchLabels and matchExpressions; key, operator and values go "
            "in an entry of matchExpressions",
        ),
        **{
            key: f"{key} is a field of peers, not of label selectors: check the indentation"
            for key in ("podSelector", "namespaceSelector", "ipBlock")
        },
    },
    otherwise=(
        "label selectors have matchLabels and matchExpressions; to select on the label {key}, "
        "write matchLabels: {{{key}: ...}}"
    ),
)
_IP_BLOCK: Final = _Struct("ipBlocks", {"cidr": None, "except": None})
_POLICY_PORT: Final = _Struct(
    "policy ports",
    {"protocol": None, "port": None, "endPort": None},
    meant={"containerPort": "port", "targetPort": "port"},
)
_PEER: Final = _Struct(
    "peers",
    {"podSelector": _SELECTOR, "namespaceSelector": _SELECTOR, "ipBlock": _IP_BLOCK},
    notes={
        **dict.fromkeys(
            ("ports", "port", "protocol", "endPort"),
            "ports belong to the rule, next to from or to, not to a peer",
        ),
        **dict.fromkeys(("cidr", "except"), "cidr and except go in ipBlock: {cidr: ...}"),
        **dict.fromkeys(
            ("matchLabels", "matchExpressions"),
            "peers have podSelector, namespaceSelector and ipBlock; matchLabels and "
            "matchExpressions go in one of the selectors",
        ),
    },
)
_RULE_PORTS_NOTE: Final = "a rule's ports are a list: ports: [{protocol: TCP, port: 80}]"
_INGRESS_RULE: Final = _Struct(
    "ingress rules",
    {"from": _ListOf(_PEER), "ports": _ListOf(_POLICY_PORT)},
    meant={"to": "from"},
    notes={
        **dict.fromkeys(("port", "protocol", "endPort"), _RULE_PORTS_NOTE),
        **dict.fromkeys(
            ("podSelector", "namespaceSelector", "ipBlock"),
            "peers go in a list under from: from: [{podSelector: ...}]",
        ),
    },
)
_EGRESS_RULE: Final = _Struct(
    "egress rules",
    {"to": _ListOf(_PEER), "ports": _ListOf(_POLICY_PORT)},
    meant={"from": "to"},
    notes={
        **dict.fromkeys(("port", "protocol", "endPort"), _RULE_PORTS_NOTE),
        **dict.fromkeys(
            ("podSelector", "namespaceSelector", "ipBlock"),
            "peers go in a list under to: to: [{podSelector: ...}]",
        ),
    },
)
_POLICY_SPEC: Final = _Struct(
    "NetworkPolicy specs",
    {
        "podSelector": _SELECTOR,
        "policyTypes": None,
        "ingress": _ListOf(_INGRESS_RULE),
        "egress": _ListOf(_EGRESS_RULE),
    },
    notes={
        "from": "from belongs in an ingress rule: ingress: [{from: [...]}]",
        "to": "to belongs in an egress rule: egress: [{to: [...]}]",
        "ports": "ports belong in a rule: ingress: [{ports: [...]}] or egress: [{ports: [...]}]",
        **dict.fromkeys(
            ("matchLabels", "matchExpressions"),
            "matchLabels and matchExpressions go in podSelector",
        ),
    },
)
_TOP_LEVEL_FIELDS: Final = ("apiVersion", "kind", "metadata", "spec", "status")
_OBJECT_META: Final = _Struct(
    "",
    dict.fromkeys(
        (
            "name",
            "generateName",
            "namespace",
            "selfLink",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "labels",
            "annotations",
            "ownerReferences",
            "finalizers",
            "managedFields",
        )
    ),
    notes=dict.fromkeys(
        _TOP_LEVEL_FIELDS, "it belongs at the top level, not in metadata: check the indentation"
    ),
)
_NETWORK_POLICY: Final = _Struct(
    "NetworkPolicies",
    {
        "apiVersion": None,
        "kind": None,
        "metadata": _OBJECT_META,
        "spec": _POLICY_SPEC,
        "status": None,
    },
    notes={
        **dict.fromkeys(_POLICY_SPEC.fields, "it belongs in spec"),
        **dict.fromkeys(_OBJECT_META.fields, "it belongs in metadata"),
    },
)
_CONTAINER_PORT: Final = _Struct(
    "container ports",
    dict.fromkeys(("containerPort", "protocol", "name", "hostPort", "hostIP")),
    meant={"port": "containerPort", "targetPort": "containerPort"},
)


# -- scalars ------------------------------------------------------------------------------


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise FieldError("", f"must be an object, got {type_name(obj)}")
    return _mapping(obj.get("metadata"), "metadata")


def _name(metadata: Mapping[str, Any], field: str, check: Callable[[str], str | None]) -> str:
    value = metadata.get(field.rpartition(".")[2])
    if value is None or value == "":
        raise FieldError(field, "required")
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type_name(value)}")
    problem = check(value)
    if problem is not None:
        raise FieldError(field, f"{problem}, got {_show(value)}")
    return value


def _port_number(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(field, f"must be an integer, got {_describe(value)}")
    if not 1 <= value <= 65535:
        raise FieldError(field, f"must be between 1 and 65535, got {value}")
    return value


def _protocol(value: Any, field: str) -> PortProtocol:
    if value is None:
        return "TCP"
    for protocol in PROTOCOLS:
        if value == protocol:
            return protocol
    raise FieldError(field, f"must be one of TCP, UDP, SCTP, got {_show(value)}")


def _label_value(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {_describe(value)} (quote it in YAML)")
    if len(value) > 63:
        raise FieldError(field, f"must be no more than 63 characters, got {len(value)}")
    if value and not _NAME_PART.fullmatch(value):
        raise FieldError(field, f"{_LABEL_CHARS}, got {_show(value)}")
    return value


def _cidr(value: Any, field: str, *, strict: bool) -> IPNetwork:
    if not isinstance(value, str):
        raise FieldError(field, f"must be a CIDR string, got {type_name(value)}")
    try:
        return parse_cidr(value, strict=strict)
    except ValueError as error:
        raise FieldError(field, f"{error}, got {_show(value)}") from None


def _ip_address(value: str, field: str, *, strict: bool) -> IPAddress:
    try:
        return parse_ip(value, strict=strict)
    except ValueError as error:
        raise FieldError(field, f"{error}, got {_show(value)}") from None


# -- addresses (k8s.io/utils/net ParseIPSloppy / ParseCIDRSloppy, netip for strict) ----------

_SLOPPY_IPV4 = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)")
_MAPPED_PREFIX = 96
"""Bits before the IPv4 part of an IPv4-mapped IPv6 address (RFC 4291 section 2.5.5.2)."""
_NOT_AN_IP = "must be a valid IP address"
_NOT_A_CIDR = "must be a valid CIDR such as 10.0.0.0/16 or 2001:db8::/64"


def parse_ip(text: str, *, strict: bool) -> IPAddress:
    """An address as the API server reads it; ValueError (with the reason) if it is none.

    ``strict=False`` is ``ParseIPSloppy``: IPv4 octets may have leading zeros, read as decimal
    (``010.244.1.3`` is 10.244.1.3), also in the IPv4 tail of an IPv6 address; an IPv4-mapped
    IPv6 address is its IPv4 address, as Go's ``net.IP`` treats it. ``strict=True`` refuses
    both forms, as the API does under StrictIPCIDRValidation. Zones are refused either way.
    """
    if "%" in text:
        raise ValueError(f"{_NOT_AN_IP} (without a zone)")
    if strict:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            if _sloppy_ip(text) is not None:
                raise ValueError(f"{_NOT_AN_IP}, without leading zeros") from None
            raise ValueError(_NOT_AN_IP) from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            raise ValueError(f"{_NOT_AN_IP}, not an IPv4-mapped IPv6 address")
        return address
    sloppy = _sloppy_ip(text)
    if sloppy is None:
        raise ValueError(_NOT_AN_IP)
    return sloppy


def parse_cidr(text: str, *, strict: bool) -> IPNetwork:
    """A CIDR as the API server reads it (``ParseCIDRSloppy``); host bits may be set.

    ``strict=False`` reads the address as :func:`parse_ip` does and allows leading zeros in the
    prefix length; an IPv4-mapped network (``::ffff:10.0.0.0/104``) is the IPv4 one
    (10.0.0.0/8), as Go's ``net.IPNet`` matches it. ``strict=True`` refuses those forms.
    """
    address_text, slash, prefix_text = text.partition("/")
    if not slash or not _DIGITS.fullmatch(prefix_text):
        raise ValueError(_NOT_A_CIDR)
    try:
        address = parse_ip(address_text, strict=strict)
    except ValueError as error:
        raise ValueError(_NOT_A_CIDR + str(error).removeprefix(_NOT_AN_IP)) from None
    if strict and len(prefix_text) > 1 and prefix_text.startswith("0"):
        raise ValueError(f"{_NOT_A_CIDR}, without leading zeros in the prefix length")
    prefix = int(prefix_text)
    if isinstance(address, ipaddress.IPv4Address) and ":" in address_text:
        # An IPv4-mapped address: its prefix counts the 96 bits before the IPv4 part.
        if prefix > 128:
            raise ValueError(_NOT_A_CIDR)
        if prefix < _MAPPED_PREFIX:
            # Masking clears the ::ffff: marker: an IPv6 network (as Go's ParseCIDR makes it).
            mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
            return ipaddress.IPv6Network((mapped, prefix), strict=False)
        prefix -= _MAPPED_PREFIX
    if prefix > address.max_prefixlen:
        raise ValueError(_NOT_A_CIDR)
    return ipaddress.ip_network((address, prefix), strict=False)


def _sloppy_ip(text: str) -> IPAddress | None:
    """Go 1.16's ``net.ParseIP`` (k8s.io/utils/net ``ParseIPSloppy``), or None."""
    if ":" not in text:
        return _sloppy_ipv4(text)
    head, _, tail = text.rpartition(":")
    if "." in tail:
        embedded = _sloppy_ipv4(tail)
        if embedded is None:
            return None
        text = f"{head}:{embedded}"
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return address.ipv4_mapped or address


def _sloppy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Four decimal octets, each any number of ASCII digits (leading zeros ignored), <= 255."""
    match = _SLOPPY_IPV4.fullmatch(text)
    if match is None:
        return None
    # Go's dtoi stops at 0xFFFFFF; dropping the zeros first also keeps int() off huge strings.
    digits = [octet.lstrip("0") for octet in match.groups()]
    if any(len(octet) > 3 for octet in digits):
        return None
    octets = [int(octet or "0") for octet in digits]
    if any(octet > 255 for octet in octets):
        return None
    return ipaddress.IPv4Address(bytes(octets))


def _string(value: Any, field: str) -> str:
    """An optional string field; absent or null is ""."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type_name(value)}")
    return value


def _boolean(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FieldError(field, f"must be a boolean, got {_describe(value)}")
    return value


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    """A struct-typed field: absent or null is the empty struct, as Go decodes it."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(field, f"must be an object, got {type_name(value)}")
    return value


def _mapping_or_empty(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any, field: str) -> list[Any]:
    """A list-typed field: absent or null is the empty list."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise FieldError(field, f"must be a list, got {type_name(value)}")
    return list(value)


def _items(value: Any, field: str) -> Iterator[tuple[int, Any]]:
    return enumerate(_list(value, field))


def type_name(value: Any, mapping: str = "object") -> str:
    """``string``, ``integer``, ``null``...: what a value is, in words for error messages;
    ``mapping`` names a mapping (the API's JSON says "object", a YAML reader "mapping")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return mapping
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _describe(value: Any) -> str:
    """``integer 1``, ``string "x"``, ``null``, ``list``: a wrong value, for messages."""
    if value is None or isinstance(value, Mapping | list | tuple):
        return type_name(value)
    return f"{type_name(value)} {_show(value)}"


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- name syntax (apimachinery pkg/util/validation) -----------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+")
_LABEL_CHARS = (
    "must be empty or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)


def _dns_label_problem(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS_LABEL.fullmatch(value):
        return (
            "must be a DNS-1123 label: lowercase alphanumeric characters or '-', "
            "starting and ending with an alphanumeric character"
        )
    return None


def _dns_subdomain_problem(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS_SUBDOMAIN.fullmatch(value):
        return (
            "must be a DNS-1123 subdomain: lowercase alphanumeric characters, '-' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return None


def _qualified_name_problem(value: str) -> str | None:
    """IsQualifiedName: ``[prefix/]name``, prefix a DNS subdomain, name up to 63 characters."""
    parts = value.split("/")
    if len(parts) > 2:
        return "must be a name with an optional DNS subdomain prefix, e.g. 'example.com/name'"
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            return "prefix part must be non-empty"
        problem = _dns_subdomain_problem(parts[0])
        if problem is not None:
            return f"prefix part {problem}"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _NAME_PART.fullmatch(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return None


def _port_name_problem(value: str) -> str | None:
    """IsValidPortName (IANA_SVC_NAME, RFC 6335 section 5.1)."""
    if not 1 <= len(value) <= 15:
        return "must be 1 to 15 characters long"
    if not _PORT_NAME_CHARS.fullmatch(value):
        return "must contain only lowercase letters, digits and '-'"
    if not any("a" <= char <= "z" for char in value):
        return "must contain at least one letter (a-z)"
    if "--" in value:
        return "must not contain consecutive hyphens"
    if value.startswith("-") or value.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


# -- shared with the converters of other kinds (agent/kinds/) --------------------------------
# Public names for helpers above, so that every kind validates, decodes strictly and words its
# errors the same way. Additive: the names above stay as they are.

Struct = _Struct
ListOf = _ListOf
reject_unknown_fields = _reject_unknown_fields
OBJECT_META = _OBJECT_META
"""The fields of ``metadata`` (ObjectMeta), for strict decoding."""
SELECTOR_REQUIREMENT = _REQUIREMENT
"""The fields of a ``matchExpressions`` entry, for strict decoding."""
mapping_field = _mapping
list_field = _list
string_field = _string
required_name = _name
port_number = _port_number
show = _show
describe = _describe
dns_subdomain_problem = _dns_subdomain_problem
port_name_problem = _port_name_problem
