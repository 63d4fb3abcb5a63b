"""The network-policy-api conformance suite for ClusterNetworkPolicy, as data.

Upstream (kubernetes-sigs/network-policy-api, ``conformance/``, read at :data:`UPSTREAM_COMMIT`)
builds four namespaces, one per Hogwarts house, each with a two-replica StatefulSet whose pods
serve TCP 80 (container port named ``web``) and 8080, UDP 53 (named ``dns``) and 5353, and SCTP
9003 and 9005; a fifth namespace holds two hostNetwork pods ("centaur") serving eight ports on
their nodes' own addresses, for the ``nodes`` peer tests. Each upstream test applies one
manifest of ClusterNetworkPolicies (CNPs; the integration test also a NetworkPolicy), then runs
subtests in order; a subtest may patch a policy (swap two rules, change an action or a priority,
insert a rule, turn a port into a named port), relabel a namespace or delete the NetworkPolicy,
and then connects from one pod to another pod's IP on one port and protocol, expecting the
connection to work or to time out. State carries from one subtest to the next.

The cases here are written afresh from what those tests check. The facts carry over (names,
labels, ports, rule order, expected verdicts); the structure is ours:

- :data:`CLUSTER_MANIFEST` is the four house namespaces and their eight pods, as plain Pods
  (the lab expands Deployments, not StatefulSets). Upstream declares only the named ports; every
  served port is declared here (the lab serves declared ports only), the unnamed ones without a
  name, so named-port resolution is as upstream's. :data:`NODE_PEER_CLUSTER_MANIFEST` adds the
  forbidden-forest namespace with its hostNetwork pods.
- A ClusterNetworkPolicy is a :class:`Cnp` value (rules are :class:`CnpRule` values), rendered
  for either apiVersion (:data:`CNP_API_VERSIONS`: ``v1alpha2``, what upstream's suite applies,
  and ``v1beta1``, the same type on upstream's main branch); patches are new values
  (:meth:`Cnp.swapped`, :meth:`Cnp.with_rule`, ...), applied whole.
- An :class:`UpstreamTest` is one upstream ``ConformanceTest``; its subtests are
  :class:`Subtest` values of steps. A :class:`Case` is one subtest for one apiVersion, made
  self-contained: its steps are the test's setup, then the state-changing steps (not the probes)
  of every earlier subtest, then its own steps. So each case starts from the pristine cluster,
  and the patches upstream makes between subtests are still applied as patches (a policy
  update, not a fresh policy).

How a runner drives a case (the compiled runner and the lab runner, mirroring
test_netpol_cases_compiled.py and test_netpol_cases_lab.py):

1. Start from ``case.cluster`` (``lab up -f`` it, or ``CompiledCluster.apply``), no policies,
   on at least ``case.min_nodes`` nodes. Every node carries at least :data:`NODE_LABELS` (the
   kubelet sets them on every Linux node; the node-peer cases select nodes by them). A
   hostNetwork pod has its node's addresses (``lab get pods`` lists them), and the two
   centaurs hold the same host ports, so they need a node each (:data:`NODE_PEER_MIN_NODES`).
2. Run ``case.steps`` in order. :class:`~tests.e2e.netpol_cases.Apply`: render with the pod
   IPv4 map (``step.render(pod_ips)``; a few rules name pod addresses) and apply it (objects of
   every kind: Namespaces and Pods are label updates, CNPs are cluster-scoped).
   :class:`~tests.e2e.netpol_cases.Delete`: delete what it names. :class:`Probe`: connect from
   ``source`` to ``target``'s IPv4 address on ``port``/``protocol`` and compare with
   ``expected`` (True: the connection works; False: it is dropped: upstream requires a timeout,
   not a refusal). Through the compiler: the source's node tables must allow the flow as egress
   and the target's node tables as ingress. In the lab: ``lab probe`` gives the whole matrix for
   a port and protocol; read the pair from it (consecutive probes with one port and protocol can
   share a matrix). SCTP probes (``probe.on_wire`` False) are compiled only: the lab's kernel has
   no SCTP sockets.
3. Afterwards delete every ClusterNetworkPolicy and NetworkPolicy the case applied and, if it
   relabelled (``case.relabels``), apply ``case.cluster`` again.
4. ``case.lab_skip`` names why the lab cannot run a case (it is compiled only); None means both.
   Every case runs in the lab today: the lab models hostNetwork pods (``agent.lab.hostnet``).

Semantics (apis/v1alpha2/clusternetworkpolicy_types.go and REFERENCE.md section 4): Admin tier by
priority and rule order (first match: Accept, Deny, or Pass to the NetworkPolicy tier), then
NetworkPolicy if one isolates the pod, then the Baseline tier, then allow. Comments on the cases
name the rule that decides where it is not obvious.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

from agent.lab.lab import SERVED_PROTOCOLS
from enforcement.clusterpolicy import RuleAction, Tier
from enforcement.model import Direction, PortProtocol
from tests.e2e.netpol_cases import METADATA_NAME, Apply, Delete, PodIPs, host_cidr, join_documents

# -- upstream ---------------------------------------------------------------------------------

UPSTREAM_REPOSITORY = "kubernetes-sigs/network-policy-api"
UPSTREAM_COMMIT = "0eec1b0e5fa92715b4c0f4c48d3c8d2913ed2159"
"""The commit read (main, 2026-07-01). Its ``conformance/`` last changed in 371fc24a; the only
API version it holds is ``v1alpha2`` (the suite's Go client is ``apis/v1alpha2``)."""

UPSTREAM_TEST_COUNT = 24
"""``ConformanceTest`` values in ``conformance/tests/`` at :data:`UPSTREAM_COMMIT`."""
UPSTREAM_SUBTEST_COUNT = 92
"""``t.Run`` subtests in those tests at :data:`UPSTREAM_COMMIT`."""

CNP_GROUP = "policy.networking.k8s.io"
CNP_KIND = "ClusterNetworkPolicy"
CNP_API_VERSIONS = (f"{CNP_GROUP}/v1alpha2", f"{CNP_GROUP}/v1beta1")
"""Every case is emitted once per apiVersion, same content."""
ApiVersion: TypeAlias = str

Feature = Literal[
    "ClusterNetworkPolicy", "ClusterNetworkPolicyNamedPorts", "ClusterNetworkPolicyEgressNodePeers"
]
"""Upstream's ``SupportedFeature`` names (conformance/utils/suite/features.go)."""
STANDARD: tuple[Feature, ...] = ("ClusterNetworkPolicy",)
"""The standard feature every test needs; the profile's extended (experimental) features are
named ports and egress node peers."""
EXTENDED_FEATURES: frozenset[Feature] = frozenset(
    {"ClusterNetworkPolicyNamedPorts", "ClusterNetworkPolicyEgressNodePeers"}
)

PROBE_PROTOCOLS: tuple[PortProtocol, ...] = ("TCP", "UDP", "SCTP")
"""What upstream probes with (agnhost connect --protocol)."""
WIRE_PROTOCOLS = frozenset(protocol for protocol in PROBE_PROTOCOLS if protocol in SERVED_PROTOCOLS)
"""What the lab can send and serve (TCP, UDP); SCTP probes are compiled only."""

# -- the cluster ------------------------------------------------------------------------------

NAMESPACE_PREFIX = "network-policy-conformance-"
HOUSE_LABEL = "conformance-house"
"""The one label on every namespace and pod; a pod's value is its namespace's."""
IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
"""What upstream runs; the lab ignores the image and serves the declared ports itself."""
REPLICAS = 2
NODE_LABELS: Mapping[str, str] = {"kubernetes.io/os": "linux"}
"""Labels every node must carry: the node-peer policies select nodes by them."""


@dataclass(frozen=True, slots=True)
class ServedPort:
    """A port a conformance pod serves, as its container port declares it."""

    port: int
    protocol: PortProtocol
    name: str | None = None
    """The container port's name; upstream names only ``web`` and ``dns`` (and the centaurs')."""


WEB = 80
"""TCP, the container port named ``web``."""
TCP_8080 = 8080
DNS = 53
"""UDP, the container port named ``dns``."""
UDP_5353 = 5353
SCTP_9003 = 9003
SCTP_9005 = 9005
HOUSE_PORTS = (
    ServedPort(WEB, "TCP", "web"),
    ServedPort(TCP_8080, "TCP"),
    ServedPort(UDP_5353, "UDP"),
    ServedPort(DNS, "UDP", "dns"),
    ServedPort(SCTP_9003, "SCTP"),
    ServedPort(SCTP_9005, "SCTP"),
)

HOST_PORTS = tuple(range(34345, 34353))
"""Upstream's default ``HostNetworkPorts`` (eight from 34345; configurable there, fixed here)."""
CENTAUR_PORTS = (
    ServedPort(HOST_PORTS[0], "TCP", f"web-{HOST_PORTS[0]}"),
    ServedPort(HOST_PORTS[1], "TCP", f"web-{HOST_PORTS[1]}"),
    ServedPort(HOST_PORTS[2], "UDP", f"dns-{HOST_PORTS[2]}"),
    ServedPort(HOST_PORTS[4], "UDP", f"dns-{HOST_PORTS[4]}"),
    ServedPort(HOST_PORTS[6], "SCTP"),
    ServedPort(HOST_PORTS[7], "SCTP"),
)
"""What the hostNetwork centaurs serve on their node (ports 3 and 5 are their UDP servers' HTTP
ports upstream, not declared there and never probed)."""


@dataclass(frozen=True, slots=True)
class House:
    """One conformance namespace and its StatefulSet's pods."""

    name: str
    """The ``conformance-house`` label value; the namespace is ``NAMESPACE_PREFIX + name``."""
    workload: str
    """The StatefulSet's name; its pods are ``<workload>-0`` and ``<workload>-1``."""
    ports: tuple[ServedPort, ...] = HOUSE_PORTS
    host_network: bool = False

    @property
    def namespace(self) -> str:
        return NAMESPACE_PREFIX + self.name

    def pod(self, index: int) -> str:
        """``namespace/name`` of replica ``index``."""
        if not 0 <= index < REPLICAS:
            raise IndexError(f"{self.workload} has replicas 0..{REPLICAS - 1}, not {index}")
        return f"{self.namespace}/{self.workload}-{index}"


GRYFFINDOR = House("gryffindor", "harry-potter")
SLYTHERIN = House("slytherin", "draco-malfoy")
HUFFLEPUFF = House("hufflepuff", "cedric-diggory")
RAVENCLAW = House("ravenclaw", "luna-lovegood")
FOREST = House("forbidden-forrest", "centaur", CENTAUR_PORTS, host_network=True)
"""Upstream's spelling; hostNetwork pods, so never a subject nor a pod peer."""
HOUSES = (GRYFFINDOR, SLYTHERIN, HUFFLEPUFF, RAVENCLAW)

# Short names for the pods the probes use: house initial and replica.
G0, G1 = GRYFFINDOR.pod(0), GRYFFINDOR.pod(1)
S0, S1 = SLYTHERIN.pod(0), SLYTHERIN.pod(1)
H0, H1 = HUFFLEPUFF.pod(0), HUFFLEPUFF.pod(1)
R0, R1 = RAVENCLAW.pod(0), RAVENCLAW.pod(1)
C1 = FOREST.pod(1)
"""The hostNetwork server the node-peer tests connect to (its address is its node's)."""

# -- YAML in our style ------------------------------------------------------------------------
# Every string value is written as a JSON string, so nothing is read as a boolean or a number
# (go-yaml, which kubectl uses, reads y, n, on, off, yes, no as booleans).

YamlValue: TypeAlias = (
    "str | int | bool | Mapping[str, YamlValue] | list[YamlValue] | tuple[YamlValue, ...] | None"
)

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})


def to_yaml(obj: Mapping[str, YamlValue]) -> str:
    """One YAML document, block style, lists at their key's indent (as kubectl prints them)."""
    return "\n".join(_emit(obj, 0)) + "\n"


def _emit(value: YamlValue, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            head = f"{pad}{_key(key)}:"
            if isinstance(item, Mapping) and item:
                lines += [head, *_emit(item, indent + 2)]
            elif isinstance(item, list | tuple) and item:
                lines += [head, *_emit(item, indent)]
            else:
                lines.append(f"{head} {_flow(item)}")
        return lines
    assert isinstance(value, list | tuple), value
    for item in value:
        if isinstance(item, Mapping) and item:
            body = _emit(item, indent + 2)
            lines += [f"{pad}- {body[0].lstrip()}", *body[1:]]
        else:
            lines.append(f"{pad}- {_flow(item)}")
    return lines


def _key(key: str) -> str:
    if _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS:
        return key
    return json.dumps(key)


def _flow(value: YamlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        assert not value, "non-empty mappings are written in block style"
        return "{}"
    assert not value, "non-empty lists are written in block style"
    return "[]"


# -- cluster manifests ------------------------------------------------------------------------


def namespace_manifest(house: House, label: str | None = None) -> str:
    """The house's Namespace; ``label`` replaces its ``conformance-house`` value (a relabel).

    The API server (and the lab) adds ``kubernetes.io/metadata.name`` itself.
    """
    return to_yaml(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": house.namespace, "labels": {HOUSE_LABEL: label or house.name}},
        }
    )


def pod_manifest(house: House, index: int) -> str:
    """Replica ``index`` of the house's StatefulSet, as a Pod: one container per served port
    (named ``<workload>-<port>``, as upstream) plus the idle client container upstream execs in.
    """
    containers: list[YamlValue] = [{"name": f"{house.workload}-client", "image": IMAGE}]
    for served in house.ports:
        port: dict[str, YamlValue] = {"containerPort": served.port, "protocol": served.protocol}
        if served.name is not None:
            port["name"] = served.name
        containers.append(
            {
                "name": f"{house.workload}-{served.port}-{served.protocol.lower()}",
                "image": IMAGE,
                "ports": [port],
            }
        )
    spec: dict[str, YamlValue] = {"containers": containers}
    if house.host_network:
        spec = {"hostNetwork": True, **spec}
    return to_yaml(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{house.workload}-{index}",
                "namespace": house.namespace,
                "labels": {HOUSE_LABEL: house.name},
            },
            "spec": spec,
        }
    )


def _house_manifest(houses: Sequence[House]) -> str:
    return join_documents(
        *(namespace_manifest(house) for house in houses),
        *(pod_manifest(house, index) for house in houses for index in range(REPLICAS)),
    )


CLUSTER_MANIFEST = _house_manifest(HOUSES)
"""The four house namespaces and their eight pods, as ``lab up -f`` takes it; no policies."""
NODE_PEER_CLUSTER_MANIFEST = _house_manifest((*HOUSES, FOREST))
""":data:`CLUSTER_MANIFEST` plus the forbidden-forest namespace and its two hostNetwork pods."""
NODE_PEER_MIN_NODES = REPLICAS
"""Nodes the node-peer cluster needs: the centaurs declare the same ports, which a hostNetwork
pod holds on its node, so no node runs two of them (kube-scheduler's NodePorts filter places
them one per node; on fewer nodes one stays Pending upstream, and the lab refuses it)."""

# -- ClusterNetworkPolicy values --------------------------------------------------------------

Selector: TypeAlias = Mapping[str, YamlValue]
Entry: TypeAlias = Mapping[str, YamlValue]
"""One ``from``/``to`` peer, or one ``protocols`` entry, as it appears in the manifest."""


def labels_selector(labels: Mapping[str, str]) -> Selector:
    return {"matchLabels": dict(labels)}


def by_name(house: House) -> Selector:
    """The house's namespace by the label the API server sets."""
    return labels_selector({METADATA_NAME: house.namespace})


def by_house(house: House) -> Selector:
    """Namespaces (or pods) labelled with the house."""
    return labels_selector({HOUSE_LABEL: house.name})


def namespaces_peer(selector: Selector) -> Entry:
    return {"namespaces": selector}


def pods_peer(house: House) -> Entry:
    """The house's pods: namespace and pod both selected by ``conformance-house``."""
    return {"pods": {"namespaceSelector": by_house(house), "podSelector": by_house(house)}}


def nodes_peer(labels: Mapping[str, str]) -> Entry:
    return {"nodes": labels_selector(labels)}


def networks_peer(*cidrs: str) -> Entry:
    return {"networks": list(cidrs)}


EVERYWHERE = networks_peer("0.0.0.0/0", "::/0")
"""Every address of both families: pods' addresses too (the API says so for ``networks``)."""


def port(protocol: PortProtocol, number: int) -> Entry:
    return {protocol.lower(): {"destinationPort": {"number": number}}}


def port_range(protocol: PortProtocol, start: int, end: int) -> Entry:
    return {protocol.lower(): {"destinationPort": {"range": {"start": start, "end": end}}}}


def named_port(name: str) -> Entry:
    return {"destinationNamedPort": name}


def subject_namespaces(selector: Selector) -> Mapping[str, YamlValue]:
    return {"namespaces": selector}


def subject_pods(house: House) -> Mapping[str, YamlValue]:
    return {"pods": {"namespaceSelector": by_house(house), "podSelector": by_house(house)}}


@dataclass(frozen=True, slots=True)
class CnpRule:
    """One ingress or egress rule, as written in the manifest."""

    name: str
    action: RuleAction
    peers: tuple[Entry, ...]
    """``from`` (ingress) or ``to`` (egress)."""
    protocols: tuple[Entry, ...] = ()
    """Empty: the field is left out (all traffic)."""

    def body(self, direction: Direction) -> dict[str, YamlValue]:
        peers_key = "from" if direction is Direction.INGRESS else "to"
        body: dict[str, YamlValue] = {
            "name": self.name,
            "action": self.action.value,
            peers_key: list(self.peers),
        }
        if self.protocols:
            body["protocols"] = list(self.protocols)
        return body


@dataclass(frozen=True, slots=True)
class Cnp:
    """A ClusterNetworkPolicy manifest as a value; patches make new values."""

    name: str
    tier: Tier
    priority: int
    subject: Mapping[str, YamlValue]
    ingress: tuple[CnpRule, ...] = ()
    egress: tuple[CnpRule, ...] = ()

    def manifest(self, api_version: ApiVersion) -> str:
        spec: dict[str, YamlValue] = {
            "tier": self.tier.value,
            "priority": self.priority,
            "subject": self.subject,
        }
        for direction, rules in (
            (Direction.INGRESS, self.ingress),
            (Direction.EGRESS, self.egress),
        ):
            if rules:
                spec[direction.value.lower()] = [rule.body(direction) for rule in rules]
        return to_yaml(
            {
                "apiVersion": api_version,
                "kind": CNP_KIND,
                "metadata": {"name": self.name},
                "spec": spec,
            }
        )

    def rules(self, direction: Direction) -> tuple[CnpRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def _with_rules(self, direction: Direction, rules: Sequence[CnpRule]) -> Cnp:
        if direction is Direction.INGRESS:
            return replace(self, ingress=tuple(rules))
        return replace(self, egress=tuple(rules))

    def swapped(self, first: int, second: int, *directions: Direction) -> Cnp:
        """Rules ``first`` and ``second`` trade places in each direction named."""
        result = self
        for direction in directions:
            rules = list(result.rules(direction))
            rules[first], rules[second] = rules[second], rules[first]
            result = result._with_rules(direction, rules)
        return result

    def with_rule(self, direction: Direction, index: int, rule: CnpRule) -> Cnp:
        """Rule ``index`` replaced by ``rule``."""
        rules = list(self.rules(direction))
        rules[index] = rule
        return self._with_rules(direction, rules)

    def with_inserted(self, direction: Direction, index: int, rule: CnpRule) -> Cnp:
        rules = list(self.rules(direction))
        rules.insert(index, rule)
        return self._with_rules(direction, rules)


def with_action(rule: CnpRule, action: RuleAction) -> CnpRule:
    return replace(rule, action=action)


def with_protocols(rule: CnpRule, *protocols: Entry) -> CnpRule:
    return replace(rule, protocols=protocols)


ACCEPT, DENY, PASS = RuleAction.ACCEPT, RuleAction.DENY, RuleAction.PASS
INGRESS, EGRESS = Direction.INGRESS, Direction.EGRESS


def network_policy(namespace: str, name: str, spec: Mapping[str, YamlValue]) -> str:
    """A networking.k8s.io/v1 NetworkPolicy manifest."""
    return to_yaml(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


# -- steps, subtests, tests and cases --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """Connect from ``source`` to ``target``'s address; ``expected`` says whether it works."""

    source: str
    """``namespace/name`` of the client pod."""
    target: str
    """``namespace/name`` of the server pod (a hostNetwork pod stands for its node)."""
    port: int
    protocol: PortProtocol
    expected: bool
    """True: the connection works; False: it is dropped (times out)."""

    @property
    def on_wire(self) -> bool:
        """Whether the lab can send it (SCTP is compiled only)."""
        return self.protocol in WIRE_PROTOCOLS

    def __str__(self) -> str:
        verdict = "allowed" if self.expected else "denied"
        return f"{self.source} -> {self.target} {self.protocol}/{self.port} {verdict}"


def allowed(source: str, target: str, port_number: int, protocol: PortProtocol) -> Probe:
    return Probe(source, target, port_number, protocol, True)


def denied(source: str, target: str, port_number: int, protocol: PortProtocol) -> Probe:
    return Probe(source, target, port_number, protocol, False)


Step = Apply | Delete | Probe


@dataclass(frozen=True, slots=True)
class Subtest:
    """One upstream ``t.Run``: its steps, in order."""

    slug: str
    """Short and unique within the test: part of the case id."""
    name: str
    """The upstream subtest's name, verbatim (grep upstream for it)."""
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Script:
    """What an upstream test does for one apiVersion."""

    setup: tuple[Step, ...]
    """The test's ``Manifests``, applied before its first subtest."""
    subtests: tuple[Subtest, ...]


@dataclass(frozen=True, slots=True)
class UpstreamTest:
    """One upstream ``ConformanceTest``."""

    name: str
    """Its ``ShortName``, e.g. ``CNPAdminTierIngressTCP``."""
    source: str
    """The file under ``conformance/tests/`` that defines it."""
    manifest: str
    """The base manifest it applies (under ``conformance/``)."""
    features: tuple[Feature, ...]
    script: Callable[[ApiVersion], Script]
    cluster: str = CLUSTER_MANIFEST
    lab_skip: str | None = None
    """Why the lab cannot run it (then it is compiled only); None: the lab can."""
    min_nodes: int = 1
    """The fewest nodes its cluster can run on."""

    @property
    def extended(self) -> bool:
        """Whether it needs an extended (experimental) feature."""
        return any(feature in EXTENDED_FEATURES for feature in self.features)


@dataclass(frozen=True, slots=True)
class Case:
    """One upstream subtest for one apiVersion, self-contained (see the module docstring)."""

    id: str
    """``<test>/<subtest slug>/<version>``: the pytest id."""
    test: str
    """The upstream test's ``ShortName``."""
    subtest: str
    """The upstream subtest's name."""
    api_version: ApiVersion
    """The ClusterNetworkPolicies' apiVersion."""
    features: tuple[Feature, ...]
    """The upstream features the test needs (the first is always the standard one)."""
    cluster: str
    """The manifest the case starts from."""
    steps: tuple[Step, ...]
    """The test's setup, the earlier subtests' state changes, then this subtest's steps."""
    lab_skip: str | None = None
    """Why the lab cannot run the case (it is compiled only); None: it can."""
    min_nodes: int = 1
    """The fewest nodes ``cluster`` can run on (a lab needs ``--nodes`` at least this)."""
    replayed: int = 0
    """How many of ``steps`` (after the setup) replay earlier subtests' state changes."""

    @property
    def probes(self) -> tuple[Probe, ...]:
        return tuple(step for step in self.steps if isinstance(step, Probe))

    @property
    def wire_probes(self) -> tuple[Probe, ...]:
        """The probes the lab can send (none for the SCTP tests: their policies are still
        applied in the lab, which shows they are accepted, but nothing is probed)."""
        return tuple(probe for probe in self.probes if probe.on_wire)

    @property
    def relabels(self) -> bool:
        """Whether a step re-applies a Namespace or a Pod (the runner then restores labels)."""
        return any(
            isinstance(step, Apply)
            and isinstance(step.manifest, str)
            and any(
                f"\nkind: {json.dumps(kind)}\n" in "\n" + step.manifest
                for kind in ("Namespace", "Pod")
            )
            for step in self.steps
        )


_TESTS: list[UpstreamTest] = []


def upstream_test(
    name: str,
    source: str,
    manifest: str,
    features: tuple[Feature, ...] = STANDARD,
    *,
    cluster: str = CLUSTER_MANIFEST,
    lab_skip: str | None = None,
    min_nodes: int = 1,
) -> Callable[[Callable[[ApiVersion], Script]], Callable[[ApiVersion], Script]]:
    """Register the script of upstream test ``name``."""

    def register(script: Callable[[ApiVersion], Script]) -> Callable[[ApiVersion], Script]:
        _TESTS.append(
            UpstreamTest(
                name=name,
                source=source,
                manifest=manifest,
                features=features,
                script=script,
                cluster=cluster,
                lab_skip=lab_skip,
                min_nodes=min_nodes,
            )
        )
        return script

    return register


def apply_cnp(policy: Cnp, api_version: ApiVersion) -> Apply:
    return Apply(policy.manifest(api_version))


def subtest(slug: str, name: str, *steps: Step) -> Subtest:
    return Subtest(slug, name, steps)


# -- the rule-order tests: one policy, seven rules (Admin) or five (Baseline) -----------------
# Upstream's per-protocol and "gress" tests share one shape: Accept, Deny and Pass of everything
# from (or to) one house, in that order, so only the first one counts; Deny and then Pass of some
# ports of a second house; Accept of some ports of a third house, then Deny of the rest of it.
# Subtests then swap rules 0 and 1 (Deny first), 0 and 2 (Pass first) and 3 and 4 (Pass first).
# Baseline policies have no Pass rules (five rules) and only the first swap.


def ordered_rules(
    direction: Direction,
    tier: Tier,
    *,
    everything: House,
    limited: House,
    limited_ports: tuple[Entry, ...],
    allowed_house: House,
    allowed_ports: tuple[Entry, ...],
    suffixes: tuple[str, str, str],
) -> tuple[CnpRule, ...]:
    """The rules, named as upstream names them; ``suffixes`` end the names of the limited Deny,
    the limited Pass and the allowed Accept (upstream's own wording, e.g. ``at-port-80``)."""
    way = "from" if direction is Direction.INGRESS else "to"
    deny_suffix, pass_suffix, allow_suffix = suffixes

    def peer(house: House) -> tuple[Entry, ...]:
        return (namespaces_peer(by_name(house)),)

    rules = [
        CnpRule(f"allow-{way}-{everything.name}-everything", ACCEPT, peer(everything)),
        CnpRule(f"deny-{way}-{everything.name}-everything", DENY, peer(everything)),
        CnpRule(f"pass-{way}-{everything.name}-everything", PASS, peer(everything)),
        CnpRule(f"deny-{way}-{limited.name}-{deny_suffix}", DENY, peer(limited), limited_ports),
        CnpRule(f"pass-{way}-{limited.name}-{pass_suffix}", PASS, peer(limited), limited_ports),
        CnpRule(
            f"allow-{way}-{allowed_house.name}-{allow_suffix}",
            ACCEPT,
            peer(allowed_house),
            allowed_ports,
        ),
        CnpRule(f"deny-{way}-{allowed_house.name}-everything-else", DENY, peer(allowed_house)),
    ]
    if tier is Tier.BASELINE:
        rules = [rule for rule in rules if rule.action is not PASS]
    return tuple(rules)


def single_protocol_policy(
    name: str,
    tier: Tier,
    priority: int,
    direction: Direction,
    subject: House,
    protocol: PortProtocol,
    *,
    everything: House,
    limited_port: int,
    allowed_house: House,
    allowed_port: int,
) -> Cnp:
    """The policy of a per-protocol rule-order test (the slytherin rules use ``limited_port``)."""
    rules = ordered_rules(
        direction,
        tier,
        everything=everything,
        limited=SLYTHERIN,
        limited_ports=(port(protocol, limited_port),),
        allowed_house=allowed_house,
        allowed_ports=(port(protocol, allowed_port),),
        suffixes=(f"at-port-{limited_port}", f"at-port-{limited_port}", f"at-port-{allowed_port}"),
    )
    return Cnp(
        name=name,
        tier=tier,
        priority=priority,
        subject=subject_namespaces(by_name(subject)),
        ingress=rules if direction is Direction.INGRESS else (),
        egress=rules if direction is Direction.EGRESS else (),
    )


RuleOrderProbes = Mapping[str, tuple[Probe, ...]]
"""Probes by subtest slug (see :func:`rule_order_script`)."""


def rule_order_script(
    policy: Cnp,
    api_version: ApiVersion,
    directions: tuple[Direction, ...],
    what: str,
    probes: RuleOrderProbes,
) -> Script:
    """The six (Admin) or four (Baseline) rule-order subtests around ``policy``.

    ``what`` is upstream's wording in the subtest names: ``ingress``/``egress`` plus the protocol
    (``for TCP protocol``), or ``gress`` for the combined tests (``across different protocols``).
    """
    if what.startswith("gress"):
        kind, phrase, ports = "gress", "across different protocols", "ports"
    else:
        kind, protocol = what.split()
        phrase, ports = f"for {protocol} protocol", "port"

    tail = "" if kind == "gress" else "; ensure rule ordering is respected"

    def order(verdict: str) -> str:
        return f"Should support an '{verdict}-{kind}' policy {phrase}{tail}"

    def at_port(verdict: str) -> str:
        article = "an" if verdict == "allow" else "a"
        return (
            f"Should support {article} '{verdict}-{kind}' policy {phrase} at the specified {ports}"
        )

    deny_first = policy.swapped(0, 1, *directions)
    subtests = [
        subtest("allow-rule-order", order("allow"), *probes["allow-rule-order"]),
        subtest("allow-at-port", at_port("allow"), *probes["allow-at-port"]),
        subtest(
            "deny-rule-order",
            order("deny"),
            apply_cnp(deny_first, api_version),
            *probes["deny-rule-order"],
        ),
        subtest("deny-at-port", at_port("deny"), *probes["deny-at-port"]),
    ]
    if policy.tier is Tier.ADMIN:
        pass_first = deny_first.swapped(0, 2, *directions)
        pass_port_first = pass_first.swapped(3, 4, *directions)
        subtests += [
            subtest(
                "pass-rule-order",
                order("pass"),
                apply_cnp(pass_first, api_version),
                *probes["pass-rule-order"],
            ),
            subtest(
                "pass-at-port",
                at_port("pass"),
                apply_cnp(pass_port_first, api_version),
                *probes["pass-at-port"],
            ),
        ]
    return Script(setup=(apply_cnp(policy, api_version),), subtests=tuple(subtests))


# -- Admin tier, one protocol per test --------------------------------------------------------


@upstream_test(
    "CNPAdminTierIngressTCP",
    "admin-network-policy-standard-ingress-tcp-rules.go",
    "base/admin_tier/standard-ingress-tcp-rules.yaml",
)
def _admin_ingress_tcp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        "ingress-tcp", Tier.ADMIN, 3, INGRESS, GRYFFINDOR, "TCP",
        everything=RAVENCLAW, limited_port=WEB, allowed_house=HUFFLEPUFF, allowed_port=WEB,
    )  # fmt: skip
    return rule_order_script(
        policy,
        v,
        (INGRESS,),
        "ingress TCP",
        {
            "allow-rule-order": (allowed(R0, G0, WEB, "TCP"), allowed(R1, G0, TCP_8080, "TCP")),
            "allow-at-port": (allowed(H0, G1, WEB, "TCP"), denied(H1, G1, TCP_8080, "TCP")),
            "deny-rule-order": (denied(R0, G1, WEB, "TCP"), denied(R1, G1, TCP_8080, "TCP")),
            # Slytherin on 8080 matches no rule: no NetworkPolicy, no Baseline: allowed.
            "deny-at-port": (denied(S0, G0, WEB, "TCP"), allowed(S1, G0, TCP_8080, "TCP")),
            # Pass skips the Admin tier's Accept and Deny; nothing below decides: allowed.
            "pass-rule-order": (allowed(R0, G0, WEB, "TCP"), allowed(R1, G0, TCP_8080, "TCP")),
            "pass-at-port": (allowed(S0, G0, WEB, "TCP"), allowed(S1, G0, TCP_8080, "TCP")),
        },
    )


ADMIN_INGRESS_UDP = single_protocol_policy(
    "ingress-udp", Tier.ADMIN, 4, INGRESS, HUFFLEPUFF, "UDP",
    everything=RAVENCLAW, limited_port=UDP_5353, allowed_house=GRYFFINDOR, allowed_port=DNS,
)  # fmt: skip
"""Also the policy of the ingress named-port test."""


@upstream_test(
    "CNPAdminTierIngressUDP",
    "admin-network-policy-standard-ingress-udp-rules.go",
    "base/admin_tier/standard-ingress-udp-rules.yaml",
)
def _admin_ingress_udp(v: ApiVersion) -> Script:
    return rule_order_script(
        ADMIN_INGRESS_UDP,
        v,
        (INGRESS,),
        "ingress UDP",
        {
            "allow-rule-order": (allowed(R0, H0, DNS, "UDP"), allowed(R1, H0, UDP_5353, "UDP")),
            "allow-at-port": (allowed(G0, H1, DNS, "UDP"), denied(G1, H1, UDP_5353, "UDP")),
            "deny-rule-order": (denied(R0, H1, DNS, "UDP"), denied(R1, H1, UDP_5353, "UDP")),
            "deny-at-port": (denied(S0, H0, UDP_5353, "UDP"), allowed(S1, H0, DNS, "UDP")),
            "pass-rule-order": (allowed(R0, H1, UDP_5353, "UDP"), allowed(R1, H1, DNS, "UDP")),
            "pass-at-port": (allowed(S0, H0, UDP_5353, "UDP"), allowed(S1, H0, DNS, "UDP")),
        },
    )


@upstream_test(
    "CNPAdminTierIngressSCTP",
    "admin-network-policy-standard-ingress-sctp-rules.go",
    "base/admin_tier/standard-ingress-sctp-rules.yaml",
)
def _admin_ingress_sctp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        "ingress-sctp", Tier.ADMIN, 5, INGRESS, RAVENCLAW, "SCTP",
        everything=GRYFFINDOR, limited_port=SCTP_9003, allowed_house=HUFFLEPUFF,
        allowed_port=SCTP_9003,
    )  # fmt: skip
    s1, s2 = SCTP_9003, SCTP_9005
    return rule_order_script(
        policy,
        v,
        (INGRESS,),
        "ingress SCTP",
        {
            "allow-rule-order": (allowed(G0, R0, s1, "SCTP"), allowed(G1, R0, s2, "SCTP")),
            "allow-at-port": (allowed(H0, R1, s1, "SCTP"), denied(H1, R1, s2, "SCTP")),
            "deny-rule-order": (denied(G0, R1, s1, "SCTP"), denied(G1, R1, s2, "SCTP")),
            "deny-at-port": (denied(S0, R0, s1, "SCTP"), allowed(S1, R0, s2, "SCTP")),
            "pass-rule-order": (allowed(G0, R1, s1, "SCTP"), allowed(G1, R1, s2, "SCTP")),
            "pass-at-port": (allowed(S0, R0, s1, "SCTP"), allowed(S1, R0, s2, "SCTP")),
        },
    )


ADMIN_EGRESS_TCP = single_protocol_policy(
    "egress-tcp", Tier.ADMIN, 6, EGRESS, GRYFFINDOR, "TCP",
    everything=RAVENCLAW, limited_port=WEB, allowed_house=HUFFLEPUFF, allowed_port=TCP_8080,
)  # fmt: skip
"""Also the policy of the egress named-port test."""


@upstream_test(
    "CNPAdminTierEgressTCP",
    "admin-network-policy-standard-egress-tcp-rules.go",
    "base/admin_tier/standard-egress-tcp-rules.yaml",
)
def _admin_egress_tcp(v: ApiVersion) -> Script:
    return rule_order_script(
        ADMIN_EGRESS_TCP,
        v,
        (EGRESS,),
        "egress TCP",
        {
            "allow-rule-order": (allowed(G0, R0, WEB, "TCP"), allowed(G1, R0, TCP_8080, "TCP")),
            "allow-at-port": (allowed(G0, H1, TCP_8080, "TCP"), denied(G1, H1, WEB, "TCP")),
            "deny-rule-order": (denied(G0, R1, WEB, "TCP"), denied(G1, R1, TCP_8080, "TCP")),
            "deny-at-port": (denied(G0, S0, WEB, "TCP"), allowed(G1, S0, TCP_8080, "TCP")),
            "pass-rule-order": (allowed(G0, R0, WEB, "TCP"), allowed(G1, R0, TCP_8080, "TCP")),
            "pass-at-port": (allowed(G0, S0, WEB, "TCP"), allowed(G1, S0, TCP_8080, "TCP")),
        },
    )


@upstream_test(
    "CNPAdminTierEgressUDP",
    "admin-network-policy-standard-egress-udp-rules.go",
    "base/admin_tier/standard-egress-udp-rules.yaml",
)
def _admin_egress_udp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        "egress-udp", Tier.ADMIN, 7, EGRESS, HUFFLEPUFF, "UDP",
        everything=RAVENCLAW, limited_port=UDP_5353, allowed_house=GRYFFINDOR, allowed_port=DNS,
    )  # fmt: skip
    return rule_order_script(
        policy,
        v,
        (EGRESS,),
        "egress UDP",
        {
            "allow-rule-order": (allowed(H0, R0, DNS, "UDP"), allowed(H1, R0, UDP_5353, "UDP")),
            "allow-at-port": (allowed(H0, G1, DNS, "UDP"), denied(H1, G1, UDP_5353, "UDP")),
            "deny-rule-order": (denied(H0, R1, DNS, "UDP"), denied(H1, R1, UDP_5353, "UDP")),
            "deny-at-port": (denied(H0, S0, UDP_5353, "UDP"), allowed(H1, S0, DNS, "UDP")),
            "pass-rule-order": (allowed(H0, R1, UDP_5353, "UDP"), allowed(H1, R1, DNS, "UDP")),
            "pass-at-port": (allowed(H0, S0, UDP_5353, "UDP"), allowed(H1, S0, DNS, "UDP")),
        },
    )


@upstream_test(
    "CNPAdminTierEgressSCTP",
    "admin-network-policy-standard-egress-sctp-rules.go",
    "base/admin_tier/standard-egress-sctp-rules.yaml",
)
def _admin_egress_sctp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        "egress-sctp", Tier.ADMIN, 8, EGRESS, RAVENCLAW, "SCTP",
        everything=GRYFFINDOR, limited_port=SCTP_9003, allowed_house=HUFFLEPUFF,
        allowed_port=SCTP_9003,
    )  # fmt: skip
    s1, s2 = SCTP_9003, SCTP_9005
    return rule_order_script(
        policy,
        v,
        (EGRESS,),
        "egress SCTP",
        {
            "allow-rule-order": (allowed(R0, G0, s1, "SCTP"), allowed(R1, G0, s2, "SCTP")),
            "allow-at-port": (allowed(R0, H1, s1, "SCTP"), denied(R1, H1, s2, "SCTP")),
            "deny-rule-order": (denied(R0, G1, s1, "SCTP"), denied(R1, G1, s2, "SCTP")),
            "deny-at-port": (denied(R0, S0, s1, "SCTP"), allowed(R1, S0, s2, "SCTP")),
            "pass-rule-order": (allowed(R0, G1, s1, "SCTP"), allowed(R1, G1, s2, "SCTP")),
            "pass-at-port": (allowed(R0, S0, s1, "SCTP"), allowed(R1, S0, s2, "SCTP")),
        },
    )


# -- both directions, three protocols in one rule ---------------------------------------------


def gress_policy(name: str, tier: Tier, priority: int) -> Cnp:
    """The combined ingress and egress rule-order policy on gryffindor (Admin or Baseline)."""
    denied_ports = (port("TCP", WEB), port("UDP", DNS), port("SCTP", SCTP_9003))
    admin = tier is Tier.ADMIN
    egress = ordered_rules(
        EGRESS,
        tier,
        everything=RAVENCLAW,
        limited=SLYTHERIN,
        limited_ports=denied_ports,
        allowed_house=HUFFLEPUFF,
        allowed_ports=(port("TCP", TCP_8080), port("UDP", UDP_5353), port("SCTP", SCTP_9003)),
        # Upstream's names, "ports" and "port" as they are (the Baseline Accept also covers SCTP
        # 9003 although its name stops at 5353).
        suffixes=(
            "at-ports-80-53-9003",
            "at-port-80-53-9003",
            "at-ports-8080-5353-9003" if admin else "at-ports-8080-5353",
        ),
    )
    ingress = ordered_rules(
        INGRESS,
        tier,
        everything=RAVENCLAW,
        limited=SLYTHERIN,
        limited_ports=denied_ports,
        allowed_house=HUFFLEPUFF,
        allowed_ports=(port("TCP", WEB), port("UDP", UDP_5353), port("SCTP", SCTP_9003)),
        suffixes=("at-port-80-53-9003", "at-port-80-53-9003", "at-port-80-5353-9003"),
    )
    return Cnp(
        name=name,
        tier=tier,
        priority=priority,
        subject=subject_namespaces(by_name(GRYFFINDOR)),
        egress=egress,
        ingress=ingress,
    )


GRESS_PROBES: RuleOrderProbes = {
    "allow-rule-order": (
        allowed(G0, R0, WEB, "TCP"),
        allowed(G1, R0, DNS, "UDP"),
        allowed(G0, R0, SCTP_9003, "SCTP"),
        allowed(R0, G0, WEB, "TCP"),
        allowed(R1, G0, DNS, "UDP"),
        allowed(R1, G0, SCTP_9003, "SCTP"),
    ),
    # Egress opens 8080/5353/9003 to hufflepuff, ingress 80/5353/9003 from it.
    "allow-at-port": (
        allowed(G0, H1, TCP_8080, "TCP"),
        denied(G1, H1, WEB, "TCP"),
        allowed(G0, H1, UDP_5353, "UDP"),
        denied(G1, H1, DNS, "UDP"),
        allowed(G0, H1, SCTP_9003, "SCTP"),
        denied(G1, H1, SCTP_9005, "SCTP"),
        allowed(H0, G1, WEB, "TCP"),
        denied(H1, G1, TCP_8080, "TCP"),
        allowed(H0, G1, UDP_5353, "UDP"),
        denied(H1, G1, DNS, "UDP"),
        allowed(H0, G1, SCTP_9003, "SCTP"),
        denied(H1, G1, SCTP_9005, "SCTP"),
    ),
    "deny-rule-order": (
        denied(G0, R1, WEB, "TCP"),
        denied(G1, R1, DNS, "UDP"),
        denied(G0, R1, SCTP_9003, "SCTP"),
        denied(R0, G1, WEB, "TCP"),
        denied(R1, G1, DNS, "UDP"),
        denied(R1, G1, SCTP_9003, "SCTP"),
    ),
    "deny-at-port": (
        denied(G0, S0, WEB, "TCP"),
        allowed(G1, S0, TCP_8080, "TCP"),
        denied(G0, S0, DNS, "UDP"),
        allowed(G1, S0, UDP_5353, "UDP"),
        denied(G0, S0, SCTP_9003, "SCTP"),
        allowed(G1, S0, SCTP_9005, "SCTP"),
        denied(S0, G0, WEB, "TCP"),
        allowed(S1, G0, TCP_8080, "TCP"),
        denied(S0, G0, DNS, "UDP"),
        allowed(S1, G0, UDP_5353, "UDP"),
        denied(S0, G0, SCTP_9003, "SCTP"),
        allowed(S1, G0, SCTP_9005, "SCTP"),
    ),
    "pass-rule-order": (
        allowed(G0, R0, WEB, "TCP"),
        allowed(G0, R0, UDP_5353, "UDP"),
        allowed(G0, R0, SCTP_9003, "SCTP"),
        allowed(R0, G0, WEB, "TCP"),
        allowed(R1, G0, DNS, "UDP"),
        allowed(R1, G0, SCTP_9003, "SCTP"),
    ),
    "pass-at-port": (
        allowed(G0, S0, WEB, "TCP"),
        allowed(G1, S0, TCP_8080, "TCP"),
        allowed(G0, S0, DNS, "UDP"),
        allowed(G1, S0, UDP_5353, "UDP"),
        allowed(G0, S0, SCTP_9003, "SCTP"),
        allowed(G1, S0, SCTP_9005, "SCTP"),
        allowed(S0, G0, WEB, "TCP"),
        allowed(S1, G0, TCP_8080, "TCP"),
        allowed(S0, G0, DNS, "UDP"),
        allowed(S1, G0, UDP_5353, "UDP"),
        allowed(S0, G0, SCTP_9003, "SCTP"),
        allowed(S1, G0, SCTP_9005, "SCTP"),
    ),
}
"""The same probes for the Admin and the Baseline test (Baseline has the first four)."""


@upstream_test(
    "CNPAdminTierGress",
    "admin-network-policy-standard-gress-rules.go",
    "base/admin_tier/standard-gress-rules-combined.yaml",
)
def _admin_gress(v: ApiVersion) -> Script:
    policy = gress_policy("gress-rules", Tier.ADMIN, 15)
    return rule_order_script(policy, v, (EGRESS, INGRESS), "gress", GRESS_PROBES)


# -- networks peers (CIDRs), also on pod addresses --------------------------------------------


def inline_cidr_script(policy: Cnp, v: ApiVersion) -> Script:
    """Accept to slytherin's pods, then Deny to every address (pods' included)."""
    every_protocol: tuple[tuple[int, PortProtocol], ...] = (
        (WEB, "TCP"),
        (DNS, "UDP"),
        (SCTP_9003, "SCTP"),
    )

    def each(target: str, expected: bool) -> tuple[Probe, ...]:
        return tuple(Probe(G1, target, n, protocol, expected) for n, protocol in every_protocol)

    def with_pod_addresses(pod_ips: PodIPs) -> str:
        # Inserted first: Accept to two pods by address (/32, or /128 on IPv6 upstream).
        rule = CnpRule(
            "allow-egress-to-specific-podIPs",
            ACCEPT,
            (networks_peer(host_cidr(pod_ips[R0]), host_cidr(pod_ips[H0])),),
        )
        return policy.with_inserted(EGRESS, 0, rule).manifest(v)

    return Script(
        setup=(apply_cnp(policy, v),),
        subtests=(
            subtest(
                "deny-egress-cidr",
                "Should support a 'deny-egress' rule policy for egress-cidr-peer",
                *each(R0, False),
                *each(H0, False),
                *each(S0, True),
                # Slytherin relabelled: the pods peer no longer matches, 0.0.0.0/0 denies.
                Apply(namespace_manifest(SLYTHERIN, "denied-namespace-label")),
                *each(S0, False),
                Apply(namespace_manifest(SLYTHERIN)),
                *each(S0, True),
            ),
            subtest(
                "allow-egress-cidr",
                "Should support an 'allow-egress' rule policy for egress-cidr-peer",
                Apply(with_pod_addresses),
                *each(R0, True),
                *each(H0, True),
                *each(R1, False),
                *each(H1, False),
            ),
        ),
    )


def inline_cidr_rules() -> tuple[CnpRule, ...]:
    return (
        CnpRule("allow-egress-to-slytherin", ACCEPT, (pods_peer(SLYTHERIN),)),
        CnpRule("deny-egress-to-internet", DENY, (EVERYWHERE,)),
    )


@upstream_test(
    "CNPAdminTierEgressInlineCIDRPeers",
    "admin-network-policy-standard-egress-inline-cidr-rules.go",
    "base/admin_tier/standard-egress-inline-cidr-rules.yaml",
)
def _admin_inline_cidr(v: ApiVersion) -> Script:
    policy = Cnp(
        "inline-cidr-as-peers-example",
        Tier.ADMIN,
        85,
        subject_pods(GRYFFINDOR),
        egress=inline_cidr_rules(),
    )
    return inline_cidr_script(policy, v)


# -- priorities across policies, Pass down to the Baseline tier -------------------------------


@upstream_test(
    "CNPAdminTierPriorityField",
    "admin-network-policy-standard-priority.go",
    "base/admin_tier/standard-priority-field.yaml",
)
def _admin_priority(v: ApiVersion) -> Script:
    def both(name: str, tier: Tier, priority: int, verb: str, action: RuleAction) -> Cnp:
        return Cnp(
            name,
            tier,
            priority,
            subject_pods(GRYFFINDOR),
            ingress=(
                CnpRule(f"{verb}-all-ingress-from-slytherin", action, (pods_peer(SLYTHERIN),)),
            ),
            egress=(CnpRule(f"{verb}-all-egress-to-slytherin", action, (pods_peer(SLYTHERIN),)),),
        )

    deny_50 = both("priority-50-example", Tier.ADMIN, 50, "deny", DENY)
    pass_60 = both("old-priority-60-new-priority-40-example", Tier.ADMIN, 60, "pass", PASS)
    baseline = both("default", Tier.BASELINE, 10, "allow", ACCEPT)
    setup = Apply(join_documents(*(p.manifest(v) for p in (deny_50, pass_60, baseline))))
    return Script(
        setup=(setup,),
        subtests=(
            subtest(
                "deny-ingress-by-priority",
                "Should Deny traffic from slytherin to gryffindor respecting admin CNP",
                denied(S0, G0, WEB, "TCP"),
                denied(S1, G0, TCP_8080, "TCP"),
            ),
            subtest(
                "deny-egress-by-priority",
                "Should Deny traffic to slytherin from gryffindor respecting admin CNP",
                denied(G0, S0, WEB, "TCP"),
                denied(G1, S0, TCP_8080, "TCP"),
            ),
            subtest(
                "pass-to-baseline-by-priority",
                "Should respect admin CNP priority field; thus passing both ingress and egress "
                "traffic over to baseline CNP",
                # 40 now comes before the Deny at 50: Pass, no NetworkPolicy, Baseline Accept.
                apply_cnp(replace(pass_60, priority=40), v),
                allowed(S0, G0, WEB, "TCP"),
                allowed(S1, G0, TCP_8080, "TCP"),
                allowed(G0, S0, WEB, "TCP"),
                allowed(G1, S0, TCP_8080, "TCP"),
            ),
        ),
    )


# -- Admin, NetworkPolicy and Baseline together -----------------------------------------------

INTEGRATION_NETWORK_POLICY = network_policy(
    GRYFFINDOR.namespace,
    "allow-gress-from-to-slytherin-to-gryffindor",
    {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": by_house(SLYTHERIN)}]}],
        "egress": [{"to": [{"namespaceSelector": by_house(SLYTHERIN)}]}],
    },
)
"""Isolates every gryffindor pod both ways and allows slytherin both ways (upstream leaves
``podSelector`` empty by writing null; ``{}`` is the same selector)."""


@upstream_test(
    "CNPAdminTierIntegration",
    "admin-network-policy-standard-integration.go",
    "base/api_integration/standard-anp-np-banp.yaml",
)
def _admin_integration(v: ApiVersion) -> Script:
    def deny_slytherin(name: str, tier: Tier) -> Cnp:
        return Cnp(
            name,
            tier,
            10,
            subject_namespaces(by_house(GRYFFINDOR)),
            ingress=(
                CnpRule(
                    "deny-all-ingress-from-slytherin",
                    DENY,
                    (namespaces_peer(by_house(SLYTHERIN)),),
                ),
            ),
            egress=(
                CnpRule(
                    "deny-all-egress-to-slytherin", DENY, (namespaces_peer(by_house(SLYTHERIN)),)
                ),
            ),
        )

    admin = deny_slytherin("pass-example", Tier.ADMIN)
    baseline = deny_slytherin("default", Tier.BASELINE)
    ingress_passes = admin.with_rule(INGRESS, 0, with_action(admin.ingress[0], PASS))
    both_pass = ingress_passes.with_rule(EGRESS, 0, with_action(admin.egress[0], PASS))
    setup = Apply(
        join_documents(admin.manifest(v), INTEGRATION_NETWORK_POLICY, baseline.manifest(v))
    )
    return Script(
        setup=(setup,),
        subtests=(
            subtest(
                "admin-deny-ingress",
                "Should Deny traffic from slytherin to gryffindor respecting admin CNP",
                denied(S0, G0, WEB, "TCP"),
                denied(S1, G0, TCP_8080, "TCP"),
            ),
            subtest(
                "admin-deny-egress",
                "Should Deny traffic to slytherin from gryffindor respecting admin CNP",
                denied(G0, S0, WEB, "TCP"),
                denied(G1, S0, TCP_8080, "TCP"),
            ),
            subtest(
                "pass-ingress-to-network-policy",
                "Should support a 'pass-ingress' policy for admin CNP and respect the match for "
                "network policy",
                # Pass, then the NetworkPolicy isolates gryffindor and allows slytherin: it alone
                # decides (the Baseline Deny is never reached).
                apply_cnp(ingress_passes, v),
                allowed(S0, G0, WEB, "TCP"),
                allowed(S1, G0, TCP_8080, "TCP"),
            ),
            subtest(
                "pass-egress-to-network-policy",
                "Should support a 'pass-egress' policy for admin CNP and respect the match for "
                "network policy",
                apply_cnp(both_pass, v),
                allowed(G0, S0, WEB, "TCP"),
                allowed(G1, S0, TCP_8080, "TCP"),
            ),
            subtest(
                "pass-ingress-to-baseline",
                "Should support a 'pass-ingress' policy for admin CNP and respect the match for "
                "baseline cluster network policy",
                # Without the NetworkPolicy nothing isolates gryffindor: the Baseline Deny decides.
                Delete(INTEGRATION_NETWORK_POLICY),
                denied(S0, G0, WEB, "TCP"),
                denied(S1, G0, TCP_8080, "TCP"),
            ),
            subtest(
                "pass-egress-to-baseline",
                "Should support a 'pass-egress' policy for admin CNP and respect the match for "
                "baseline cluster network policy",
                denied(G0, S0, WEB, "TCP"),
                denied(G1, S0, TCP_8080, "TCP"),
            ),
        ),
    )


# -- named ports (extended feature ClusterNetworkPolicyNamedPorts) ----------------------------

NAMED_PORTS: tuple[Feature, ...] = (*STANDARD, "ClusterNetworkPolicyNamedPorts")
NODE_PEERS: tuple[Feature, ...] = (*STANDARD, "ClusterNetworkPolicyEgressNodePeers")


def named_port_script(
    policy: Cnp, v: ApiVersion, direction: Direction, index: int, name: str, *probes: Probe
) -> Script:
    """Rule ``index``'s protocols become ``destinationNamedPort: name``, then ``probes``."""
    rule = with_protocols(policy.rules(direction)[index], named_port(name))
    return Script(
        setup=(apply_cnp(policy, v),),
        subtests=(
            subtest(
                f"allow-{direction.value.lower()}-named-port",
                f"Should support an 'allow-{direction.value.lower()}' policy for named port",
                apply_cnp(policy.with_rule(direction, index, rule), v),
                *probes,
            ),
        ),
    )


@upstream_test(
    "CNPAdminTierIngressNamedPort",
    "admin-network-policy-experimental-ingress-rules.go",
    "base/admin_tier/standard-ingress-udp-rules.yaml",
    NAMED_PORTS,
)
def _admin_ingress_named_port(v: ApiVersion) -> Script:
    # "dns" is UDP 53 on every house pod; 5353 falls to the Deny after it.
    return named_port_script(
        ADMIN_INGRESS_UDP,
        v,
        INGRESS,
        5,
        "dns",
        allowed(G0, H1, DNS, "UDP"),
        denied(G1, H1, UDP_5353, "UDP"),
    )


@upstream_test(
    "CNPAdminTierEgressNamedPort",
    "admin-network-policy-experimental-egress-rules.go",
    "base/admin_tier/standard-egress-tcp-rules.yaml",
    NAMED_PORTS,
)
def _admin_egress_named_port(v: ApiVersion) -> Script:
    # The Accept of TCP 8080 becomes "web" (TCP 80 on the destination pod): 8080 is now denied.
    return named_port_script(
        ADMIN_EGRESS_TCP,
        v,
        EGRESS,
        5,
        "web",
        allowed(G0, H1, WEB, "TCP"),
        denied(G1, H1, TCP_8080, "TCP"),
    )


# -- nodes peers (extended feature ClusterNetworkPolicyEgressNodePeers) -----------------------

ON_LINUX_NODES = nodes_peer(NODE_LABELS)


@upstream_test(
    "CNPAdminTierEgressNodePeers",
    "admin-network-policy-experimental-egress-rules.go",
    "base/admin_tier/experimental-egress-selector-rules.yaml",
    NODE_PEERS,
    cluster=NODE_PEER_CLUSTER_MANIFEST,
    min_nodes=NODE_PEER_MIN_NODES,
)
def _admin_node_peers(v: ApiVersion) -> Script:
    policy = Cnp(
        "node-and-cidr-as-peers-example",
        Tier.ADMIN,
        75,
        subject_pods(GRYFFINDOR),
        egress=(
            CnpRule(
                f"allow-egress-to-{HOST_PORTS[0]}-on-nodes",
                ACCEPT,
                (ON_LINUX_NODES,),
                (port("TCP", HOST_PORTS[0]),),
            ),
            CnpRule(
                f"pass-egress-to-{HOST_PORTS[2]}-on-nodes",
                PASS,
                (ON_LINUX_NODES,),
                (port("UDP", HOST_PORTS[2]),),
            ),
            CnpRule(
                "deny-egress-to-slytherin-and-nodes-and-internet",
                DENY,
                (pods_peer(SLYTHERIN), ON_LINUX_NODES, EVERYWHERE),
            ),
        ),
    )
    return Script(
        setup=(apply_cnp(policy, v),),
        subtests=(
            subtest(
                "allow-egress-node",
                "Should support an 'allow-egress' rule policy for egress-node-peer",
                allowed(G1, C1, HOST_PORTS[0], "TCP"),
            ),
            subtest(
                "pass-egress-node",
                "Should support a 'pass-egress' rule policy for egress-node-peer",
                # Pass; no NetworkPolicy nor Baseline policy: allowed.
                allowed(G1, C1, HOST_PORTS[2], "UDP"),
            ),
            subtest(
                "deny-egress-node",
                "Should support a 'deny-egress' rule policy for egress-node-peer",
                denied(G1, C1, HOST_PORTS[1], "TCP"),
                denied(G1, C1, HOST_PORTS[4], "UDP"),
                denied(G1, C1, HOST_PORTS[6], "SCTP"),
            ),
        ),
    )


# -- Baseline tier ----------------------------------------------------------------------------
# Upstream names every Baseline policy "default" (the name BaselineAdminNetworkPolicy required).

BASELINE_NAME = "default"


BASELINE_INGRESS_TCP = single_protocol_policy(
    BASELINE_NAME, Tier.BASELINE, 10, INGRESS, GRYFFINDOR, "TCP",
    everything=RAVENCLAW, limited_port=WEB, allowed_house=HUFFLEPUFF, allowed_port=WEB,
)  # fmt: skip
"""Also the policy of the Baseline ingress named-port test."""


@upstream_test(
    "CNPBaselineTierIngressTCP",
    "baseline-admin-network-policy-standard-ingress-tcp-rules.go",
    "base/baseline_tier/standard-ingress-tcp-rules.yaml",
)
def _baseline_ingress_tcp(v: ApiVersion) -> Script:
    return rule_order_script(
        BASELINE_INGRESS_TCP,
        v,
        (INGRESS,),
        "ingress TCP",
        {
            "allow-rule-order": (allowed(R0, G0, WEB, "TCP"), allowed(R1, G0, TCP_8080, "TCP")),
            "allow-at-port": (allowed(H0, G1, WEB, "TCP"), denied(H1, G1, TCP_8080, "TCP")),
            "deny-rule-order": (denied(R0, G1, WEB, "TCP"), denied(R1, G1, TCP_8080, "TCP")),
            "deny-at-port": (denied(S0, G0, WEB, "TCP"), allowed(S1, G0, TCP_8080, "TCP")),
        },
    )


@upstream_test(
    "CNPBaselineTierIngressUDP",
    "baseline-admin-network-policy-standard-ingress-udp-rules.go",
    "base/baseline_tier/standard-ingress-udp-rules.yaml",
)
def _baseline_ingress_udp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        BASELINE_NAME, Tier.BASELINE, 10, INGRESS, HUFFLEPUFF, "UDP",
        everything=RAVENCLAW, limited_port=UDP_5353, allowed_house=GRYFFINDOR, allowed_port=DNS,
    )  # fmt: skip
    return rule_order_script(
        policy,
        v,
        (INGRESS,),
        "ingress UDP",
        {
            "allow-rule-order": (allowed(R0, H0, DNS, "UDP"), allowed(R1, H0, UDP_5353, "UDP")),
            "allow-at-port": (allowed(G0, H1, DNS, "UDP"), denied(G1, H1, UDP_5353, "UDP")),
            "deny-rule-order": (denied(R0, H1, DNS, "UDP"), denied(R1, H1, UDP_5353, "UDP")),
            "deny-at-port": (denied(S0, H0, UDP_5353, "UDP"), allowed(S1, H0, DNS, "UDP")),
        },
    )


@upstream_test(
    "CNPBaselineTierIngressSCTP",
    "baseline-admin-network-policy-standard-ingress-sctp-rules.go",
    "base/baseline_tier/standard-ingress-sctp-rules.yaml",
)
def _baseline_ingress_sctp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        BASELINE_NAME, Tier.BASELINE, 10, INGRESS, RAVENCLAW, "SCTP",
        everything=GRYFFINDOR, limited_port=SCTP_9003, allowed_house=HUFFLEPUFF,
        allowed_port=SCTP_9003,
    )  # fmt: skip
    s1, s2 = SCTP_9003, SCTP_9005
    return rule_order_script(
        policy,
        v,
        (INGRESS,),
        "ingress SCTP",
        {
            "allow-rule-order": (allowed(G0, R0, s1, "SCTP"), allowed(G1, R0, s2, "SCTP")),
            "allow-at-port": (allowed(H0, R1, s1, "SCTP"), denied(H1, R1, s2, "SCTP")),
            "deny-rule-order": (denied(G0, R1, s1, "SCTP"), denied(G1, R1, s2, "SCTP")),
            "deny-at-port": (denied(S0, R0, s1, "SCTP"), allowed(S1, R0, s2, "SCTP")),
        },
    )


@upstream_test(
    "CNPBaselineTierEgressTCP",
    "baseline-admin-network-policy-standard-egress-tcp-rules.go",
    "base/baseline_tier/standard-egress-tcp-rules.yaml",
)
def _baseline_egress_tcp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        BASELINE_NAME, Tier.BASELINE, 10, EGRESS, GRYFFINDOR, "TCP",
        everything=RAVENCLAW, limited_port=WEB, allowed_house=HUFFLEPUFF, allowed_port=TCP_8080,
    )  # fmt: skip
    return rule_order_script(
        policy,
        v,
        (EGRESS,),
        "egress TCP",
        {
            "allow-rule-order": (allowed(G0, R0, WEB, "TCP"), allowed(G1, R0, TCP_8080, "TCP")),
            "allow-at-port": (allowed(G0, H1, TCP_8080, "TCP"), denied(G1, H1, WEB, "TCP")),
            "deny-rule-order": (denied(G0, R1, WEB, "TCP"), denied(G1, R1, TCP_8080, "TCP")),
            "deny-at-port": (denied(G0, S0, WEB, "TCP"), allowed(G1, S0, TCP_8080, "TCP")),
        },
    )


BASELINE_EGRESS_UDP = single_protocol_policy(
    BASELINE_NAME, Tier.BASELINE, 10, EGRESS, HUFFLEPUFF, "UDP",
    everything=RAVENCLAW, limited_port=UDP_5353, allowed_house=GRYFFINDOR, allowed_port=DNS,
)  # fmt: skip
"""Also the policy of the Baseline egress named-port test."""


@upstream_test(
    "CNPBaselineTierEgressUDP",
    "baseline-admin-network-policy-standard-egress-udp-rules.go",
    "base/baseline_tier/standard-egress-udp-rules.yaml",
)
def _baseline_egress_udp(v: ApiVersion) -> Script:
    return rule_order_script(
        BASELINE_EGRESS_UDP,
        v,
        (EGRESS,),
        "egress UDP",
        {
            "allow-rule-order": (allowed(H0, R0, DNS, "UDP"), allowed(H1, R0, UDP_5353, "UDP")),
            "allow-at-port": (allowed(H0, G1, DNS, "UDP"), denied(H1, G1, UDP_5353, "UDP")),
            "deny-rule-order": (denied(H0, R1, DNS, "UDP"), denied(H1, R1, UDP_5353, "UDP")),
            "deny-at-port": (denied(H0, S0, UDP_5353, "UDP"), allowed(H1, S0, DNS, "UDP")),
        },
    )


@upstream_test(
    "CNPBaselineTierEgressSCTP",
    "baseline-admin-network-policy-standard-egress-sctp-rules.go",
    "base/baseline_tier/standard-egress-sctp-rules.yaml",
)
def _baseline_egress_sctp(v: ApiVersion) -> Script:
    policy = single_protocol_policy(
        BASELINE_NAME, Tier.BASELINE, 10, EGRESS, RAVENCLAW, "SCTP",
        everything=GRYFFINDOR, limited_port=SCTP_9003, allowed_house=HUFFLEPUFF,
        allowed_port=SCTP_9003,
    )  # fmt: skip
    s1, s2 = SCTP_9003, SCTP_9005
    return rule_order_script(
        policy,
        v,
        (EGRESS,),
        "egress SCTP",
        {
            "allow-rule-order": (allowed(R0, G0, s1, "SCTP"), allowed(R1, G0, s2, "SCTP")),
            "allow-at-port": (allowed(R0, H1, s1, "SCTP"), denied(R1, H1, s2, "SCTP")),
            "deny-rule-order": (denied(R0, G1, s1, "SCTP"), denied(R1, G1, s2, "SCTP")),
            "deny-at-port": (denied(R0, S0, s1, "SCTP"), allowed(R1, S0, s2, "SCTP")),
        },
    )


@upstream_test(
    "CNPBaselineTierGress",
    "baseline-admin-network-policy-standard-gress-rules.go",
    "base/baseline_tier/standard-gress-rules-combined.yaml",
)
def _baseline_gress(v: ApiVersion) -> Script:
    policy = gress_policy(BASELINE_NAME, Tier.BASELINE, 10)
    return rule_order_script(policy, v, (EGRESS, INGRESS), "gress", GRESS_PROBES)


@upstream_test(
    "CNPBaselineTierEgressInlineCIDRPeers",
    "baseline-admin-network-policy-standard-egress-inline-cidr-rules.go",
    "base/baseline_tier/standard-egress-inline-cidr-rules.yaml",
)
def _baseline_inline_cidr(v: ApiVersion) -> Script:
    policy = Cnp(
        BASELINE_NAME,
        Tier.BASELINE,
        10,
        subject_namespaces(by_name(GRYFFINDOR)),
        egress=inline_cidr_rules(),
    )
    return inline_cidr_script(policy, v)


@upstream_test(
    "CNPBaselineTierIngressNamedPort",
    "baseline-admin-network-policy-experimental-ingress-rules.go",
    "base/baseline_tier/standard-ingress-tcp-rules.yaml",
    NAMED_PORTS,
)
def _baseline_ingress_named_port(v: ApiVersion) -> Script:
    return named_port_script(
        BASELINE_INGRESS_TCP,
        v,
        INGRESS,
        3,
        "web",
        allowed(H0, G1, WEB, "TCP"),
        denied(H1, G1, TCP_8080, "TCP"),
    )


@upstream_test(
    "CNPBaselineTierEgressNamedPort",
    "baseline-admin-network-policy-experimental-egress-rules.go",
    "base/baseline_tier/standard-egress-udp-rules.yaml",
    NAMED_PORTS,
)
def _baseline_egress_named_port(v: ApiVersion) -> Script:
    return named_port_script(
        BASELINE_EGRESS_UDP,
        v,
        EGRESS,
        3,
        "dns",
        allowed(H0, G1, DNS, "UDP"),
        denied(H1, G1, UDP_5353, "UDP"),
    )


@upstream_test(
    "CNPBaselineTierEgressNodePeers",
    "baseline-admin-network-policy-experimental-egress-rules.go",
    "base/baseline_tier/experimental-egress-selector-rules.yaml",
    NODE_PEERS,
    cluster=NODE_PEER_CLUSTER_MANIFEST,
    min_nodes=NODE_PEER_MIN_NODES,
)
def _baseline_node_peers(v: ApiVersion) -> Script:
    policy = Cnp(
        BASELINE_NAME,
        Tier.BASELINE,
        10,
        subject_namespaces(by_name(GRYFFINDOR)),
        egress=(
            CnpRule(
                f"allow-egress-to-{HOST_PORTS[0]}-on-nodes",
                ACCEPT,
                (ON_LINUX_NODES,),
                (port_range("TCP", HOST_PORTS[0], HOST_PORTS[1]),),
            ),
            CnpRule("deny-egress-to-nodes-and-internet", DENY, (ON_LINUX_NODES, EVERYWHERE)),
        ),
    )
    return Script(
        setup=(apply_cnp(policy, v),),
        subtests=(
            subtest(
                "allow-egress-node",
                "Should support an 'allow-egress' rule policy for egress-node-peer",
                allowed(G0, C1, HOST_PORTS[0], "TCP"),
                allowed(G1, C1, HOST_PORTS[1], "TCP"),
            ),
            subtest(
                "deny-egress-node",
                "Should support a 'deny-egress' rule policy for egress-node-peer",
                denied(G1, C1, HOST_PORTS[4], "UDP"),
                denied(G1, C1, HOST_PORTS[6], "SCTP"),
            ),
        ),
    )


# -- what was not translated ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exclusion:
    """An upstream test or subtest left out, and why."""

    test: str
    subtest: str | None
    """None: the whole test."""
    reason: str


EXCLUDED: tuple[Exclusion, ...] = ()
"""Nothing at :data:`UPSTREAM_COMMIT`: every test is translated; what the lab cannot run is
marked (``lab_skip``, SCTP probes) and still compiled. ``domainNames`` has no upstream
conformance test (it is experimental and netpol-agent refuses it), so there is nothing to
exclude for it."""


# -- the cases --------------------------------------------------------------------------------

UPSTREAM_TESTS: tuple[UpstreamTest, ...] = tuple(_TESTS)
"""Every translated upstream test, in upstream's file order within each tier."""


def version_name(api_version: ApiVersion) -> str:
    """``v1alpha2`` for ``policy.networking.k8s.io/v1alpha2``."""
    return api_version.rpartition("/")[2]


def _build() -> Iterator[Case]:
    for test in UPSTREAM_TESTS:
        for api_version in CNP_API_VERSIONS:
            script = test.script(api_version)
            earlier: list[Step] = []
            for sub in script.subtests:
                yield Case(
                    id=f"{test.name}/{sub.slug}/{version_name(api_version)}",
                    test=test.name,
                    subtest=sub.name,
                    api_version=api_version,
                    features=test.features,
                    cluster=test.cluster,
                    steps=(*script.setup, *earlier, *sub.steps),
                    lab_skip=test.lab_skip,
                    min_nodes=test.min_nodes,
                    replayed=len(earlier),
                )
                earlier += [step for step in sub.steps if not isinstance(step, Probe)]


CASES: tuple[Case, ...] = tuple(_build())
"""Every upstream subtest, once per apiVersion, in a stable order."""
