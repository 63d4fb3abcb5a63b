"""Tests for agent/kinds/clusterpolicy.py: ClusterNetworkPolicy objects in, records out."""

from __future__ import annotations

import ipaddress
from copy import deepcopy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.convert import ConversionError
from agent.kinds.clusterpolicy import (
    API_VERSIONS,
    DENY_ALL_PEERS,
    DOMAIN_NAMES_REFUSAL,
    MATCH_NOTHING,
    MATCH_NOTHING_PEERS,
    cluster_policy_from_k8s,
    fail_closed_cluster_policy,
)
from enforcement.clusterpolicy import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    ClusterSubject,
    NamespacedPods,
    RuleAction,
    Tier,
)
from enforcement.model import SELECT_ALL, Labels, PolicyPort
from tests.builders import expr, selector

V1BETA1, V1ALPHA2 = API_VERSIONS
VERSIONS = [pytest.param(V1BETA1, id="v1beta1"), pytest.param(V1ALPHA2, id="v1alpha2")]
MODES = [pytest.param(False, id="lenient"), pytest.param(True, id="strict")]
ALL_NAMESPACES = {"namespaces": {}}
"""A valid peer (and subject): every namespace."""


def cnp(
    spec: Any = None,
    *,
    api_version: str = V1BETA1,
    name: str = "guard",
    **spec_fields: Any,
) -> dict[str, Any]:
    """A ClusterNetworkPolicy object; ``spec`` whole, or its fields over a valid default."""
    if spec is None:
        spec = {"tier": "Admin", "priority": 10, "subject": ALL_NAMESPACES, **spec_fields}
    return {
        "apiVersion": api_version,
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def ingress(*rules: Any, **fields: Any) -> dict[str, Any]:
    return cnp(ingress=list(rules), **fields)


def egress(*rules: Any, **fields: Any) -> dict[str, Any]:
    return cnp(egress=list(rules), **fields)


def accept_from(*peers: Any, **rule_fields: Any) -> dict[str, Any]:
    return {"action": "Accept", "from": list(peers), **rule_fields}


def accept_to(*peers: Any, **rule_fields: Any) -> dict[str, Any]:
    return {"action": "Accept", "to": list(peers), **rule_fields}


def tcp(number: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"number": number}}}


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def one_rule(policy: ClusterNetworkPolicy) -> ClusterRule:
    rules = policy.ingress + policy.egress
    assert len(rules) == 1
    return rules[0]


def convert(obj: Any, strict: bool = True) -> ClusterNetworkPolicy:
    return cluster_policy_from_k8s(obj, strict=strict)


# -- valid shapes --------------------------------------------------------------------------

WEB = selector(app="web")
PROD = selector(env="prod")

POLICY_CASES = [
    pytest.param(
        cnp(),
        ClusterNetworkPolicy("guard", Tier.ADMIN, 10, ClusterSubject(namespaces=SELECT_ALL)),
        id="no-rules",
    ),
    pytest.param(
        cnp(tier="Baseline", priority=0, subject={"namespaces": {"matchLabels": {"env": "prod"}}}),
        ClusterNetworkPolicy("guard", Tier.BASELINE, 0, ClusterSubject(namespaces=PROD)),
        id="baseline-priority-0-namespaces-subject",
    ),
    pytest.param(
        cnp(priority=1000, subject={"pods": {"podSelector": {"matchLabels": {"app": "web"}}}}),
        ClusterNetworkPolicy(
            "guard", Tier.ADMIN, 1000, ClusterSubject(pods=NamespacedPods(SELECT_ALL, WEB))
        ),
        id="priority-1000-pods-subject-without-namespace-selector",
    ),
    pytest.param(
        cnp(
            subject={
                "pods": {
                    "namespaceSelector": {
                        "matchExpressions": [{"key": "env", "operator": "In", "values": ["a"]}]
                    },
                    "podSelector": {},
                }
            }
        ),
        ClusterNetworkPolicy(
            "guard",
            Tier.ADMIN,
            10,
            ClusterSubject(pods=NamespacedPods(selector(expr("env", "In", "a")), SELECT_ALL)),
        ),
        id="pods-subject-with-both-selectors",
    ),
    pytest.param(
        cnp(ingress=[], egress=None),
        ClusterNetworkPolicy("guard", Tier.ADMIN, 10, ClusterSubject(namespaces=SELECT_ALL)),
        id="empty-and-null-rule-lists",
    ),
]


@pytest.mark.parametrize("strict", MODES)
@pytest.mark.parametrize("api_version", VERSIONS)
@pytest.mark.parametrize(("obj", "expected"), POLICY_CASES)
def test_policy_fields(
    obj: dict[str, Any], expected: ClusterNetworkPolicy, api_version: str, strict: bool
) -> None:
    obj["apiVersion"] = api_version
    assert convert(obj, strict) == expected


RULE_CASES = [
    pytest.param(
        ingress(accept_from(ALL_NAMESPACES)),
        ClusterRule(RuleAction.ACCEPT, (ClusterPeer(namespaces=SELECT_ALL),)),
        id="ingress-namespaces-peer",
    ),
    pytest.param(
        ingress(
            {
                "name": "from-web",
                "action": "Deny",
                "from": [
                    {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
                    {"namespaces": {"matchLabels": {"env": "prod"}}},
                ],
            }
        ),
        ClusterRule(
            RuleAction.DENY,
            (
                ClusterPeer(pods=NamespacedPods(SELECT_ALL, WEB)),
                ClusterPeer(namespaces=PROD),
            ),
            name="from-web",
        ),
        id="ingress-pods-and-namespaces-peers-named",
    ),
    pytest.param(
        egress(
            {"action": "Pass", "to": [{"nodes": {}}, {"nodes": {"matchLabels": {"app": "web"}}}]}
        ),
        ClusterRule(RuleAction.PASS, (ClusterPeer(nodes=SELECT_ALL), ClusterPeer(nodes=WEB))),
        id="egress-nodes-peers-pass",
    ),
    pytest.param(
        egress(accept_to({"networks": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]})),
        ClusterRule(
            RuleAction.ACCEPT,
            (ClusterPeer(networks=nets("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")),),
        ),
        id="egress-networks-ipv4-and-ipv6",
    ),
    pytest.param(
        egress(
            accept_to(
                {"pods": {"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {}}}
            )
        ),
        ClusterRule(RuleAction.ACCEPT, (ClusterPeer(pods=NamespacedPods(PROD, SELECT_ALL)),)),
        id="egress-pods-peer",
    ),
    pytest.param(
        ingress(
            accept_from(
                ALL_NAMESPACES,
                protocols=[
                    tcp(80),
                    {"udp": {"destinationPort": {"range": {"start": 5000, "end": 5010}}}},
                    {"sctp": {"destinationPort": {"number": 9}}},
                    tcp(80),
                ],
            )
        ),
        ClusterRule(
            RuleAction.ACCEPT,
            (ClusterPeer(namespaces=SELECT_ALL),),
            ports=(
                PolicyPort("TCP", 80),
                PolicyPort("UDP", 5000, 5010),
                PolicyPort("SCTP", 9),
            ),
        ),
        id="protocols-number-range-sctp-duplicate-once",
    ),
    pytest.param(
        egress(accept_to(ALL_NAMESPACES, protocols=[{"destinationNamedPort": "http"}, tcp(1)])),
        ClusterRule(
            RuleAction.ACCEPT,
            (ClusterPeer(namespaces=SELECT_ALL),),
            ports=(
                PolicyPort("TCP", "http"),
                PolicyPort("UDP", "http"),
                PolicyPort("SCTP", "http"),
                PolicyPort("TCP", 1),
            ),
        ),
        id="named-port-one-entry-per-protocol",
    ),
    pytest.param(
        ingress(
            accept_from(
                ALL_NAMESPACES,
                protocols=[{"tcp": {"destinationPort": {"range": {"start": 1, "end": 65535}}}}],
            )
        ),
        ClusterRule(
            RuleAction.ACCEPT,
            (ClusterPeer(namespaces=SELECT_ALL),),
            ports=(PolicyPort("TCP", 1, 65535),),
        ),
        id="widest-range",
    ),
    pytest.param(
        ingress(accept_from(*[ALL_NAMESPACES] * 25, name="n" * 100)),
        ClusterRule(RuleAction.ACCEPT, (ClusterPeer(namespaces=SELECT_ALL),) * 25, name="n" * 100),
        id="25-peers-and-a-100-character-name",
    ),
    pytest.param(
        egress(accept_to({"networks": [f"10.0.{i}.0/24" for i in range(25)]})),
        ClusterRule(
            RuleAction.ACCEPT,
            (ClusterPeer(networks=nets(*[f"10.0.{i}.0/24" for i in range(25)])),),
        ),
        id="25-cidrs",
    ),
    pytest.param(
        ingress(accept_from(ALL_NAMESPACES, protocols=[tcp(i) for i in range(1, 26)])),
        ClusterRule(
            RuleAction.ACCEPT,
            (ClusterPeer(namespaces=SELECT_ALL),),
            ports=tuple(PolicyPort("TCP", i) for i in range(1, 26)),
        ),
        id="25-protocols",
    ),
    pytest.param(
        cnp(tier="Baseline", ingress=[{"action": "Pass", "from": [ALL_NAMESPACES]}]),
        ClusterRule(RuleAction.PASS, (ClusterPeer(namespaces=SELECT_ALL),)),
        id="pass-in-baseline-no-cel-rule-forbids-it",
    ),
]


@pytest.mark.parametrize("strict", MODES)
@pytest.mark.parametrize("api_version", VERSIONS)
@pytest.mark.parametrize(("obj", "expected"), RULE_CASES)
def test_rules(obj: dict[str, Any], expected: ClusterRule, api_version: str, strict: bool) -> None:
    obj["apiVersion"] = api_version
    assert one_rule(convert(obj, strict)) == expected


@pytest.mark.parametrize("strict", MODES)
def test_rules_keep_their_order_per_direction(strict: bool) -> None:
    obj = cnp(
        ingress=[
            {"name": f"in-{i}", "action": action, "from": [ALL_NAMESPACES]}
            for i, action in enumerate(["Deny", "Accept", "Pass"] * 8 + ["Deny"])
        ],
        egress=[{"name": "out", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}],
    )
    policy = convert(obj, strict)
    assert [rule.name for rule in policy.ingress] == [f"in-{i}" for i in range(25)]
    assert [rule.action for rule in policy.ingress[:3]] == [
        RuleAction.DENY,
        RuleAction.ACCEPT,
        RuleAction.PASS,
    ]
    assert [rule.name for rule in policy.egress] == ["out"]
    assert policy.key == "guard"


@pytest.mark.parametrize("strict", MODES)
def test_host_bits_are_masked_in_v1alpha2(strict: bool) -> None:
    obj = egress(accept_to({"networks": ["10.1.2.3/16", "2001:db8::1/64"]}), api_version=V1ALPHA2)
    assert one_rule(convert(obj, strict)).peers[0].networks == nets("10.1.0.0/16", "2001:db8::/64")


# -- validation ----------------------------------------------------------------------------


def spec_error(**fields: Any) -> dict[str, Any]:
    return cnp(**fields)


def network_peer(*cidrs: Any) -> dict[str, Any]:
    return egress(accept_to(ALL_NAMESPACES, {"networks": list(cidrs)}))


def protocols(*entries: Any) -> dict[str, Any]:
    return ingress(accept_from(ALL_NAMESPACES, protocols=list(entries)))


def destination_port(value: Any) -> dict[str, Any]:
    return protocols({"udp": {"destinationPort": value}})


def with_metadata(metadata: Any) -> dict[str, Any]:
    obj = cnp()
    obj["metadata"] = metadata
    return obj


INVALID_CASES = [
    # apiVersion and metadata
    pytest.param(
        cnp(api_version="policy.networking.k8s.io/v1alpha1"),
        "apiVersion",
        "must be policy.networking.k8s.io/v1beta1 or policy.networking.k8s.io/v1alpha2",
        id="api-version-v1alpha1",
    ),
    pytest.param(cnp(api_version=""), "apiVersion", "required", id="api-version-empty"),
    pytest.param(with_metadata({}), "metadata.name", "required", id="name-missing"),
    pytest.param(
        with_metadata({"name": "Guard"}), "metadata.name", "DNS-1123 subdomain", id="name-upper"
    ),
    pytest.param(
        with_metadata({"name": "g", "labels": {"a": 1}}),
        "metadata.labels[a]",
        "must be a string",
        id="label-value-integer",
    ),
    pytest.param(cnp(spec=[]), "spec", "must be an object, got list", id="spec-list"),
    # tier and priority
    pytest.param(
        cnp(spec={"priority": 1, "subject": ALL_NAMESPACES}),
        "spec.tier",
        "required",
        id="tier-missing",
    ),
    pytest.param(
        spec_error(tier="admin"),
        "spec.tier",
        'must be Admin or Baseline, got "admin" (did you mean "Admin"?',
        id="tier-lowercase",
    ),
    pytest.param(
        spec_error(tier="NetworkPolicy"), "spec.tier", "must be Admin or Baseline", id="tier-np"
    ),
    pytest.param(
        cnp(spec={"tier": "Admin", "subject": ALL_NAMESPACES}),
        "spec.priority",
        "required",
        id="priority-missing",
    ),
    pytest.param(
        spec_error(priority=1001), "spec.priority", "between 0 and 1000, got 1001", id="1001"
    ),
    pytest.param(spec_error(priority=-1), "spec.priority", "between 0 and 1000, got -1", id="-1"),
    pytest.param(
        spec_error(priority="5"), "spec.priority", 'must be an integer, got string "5"', id="str"
    ),
    pytest.param(spec_error(priority=True), "spec.priority", "must be an integer", id="bool"),
    pytest.param(spec_error(priority=1.5), "spec.priority", "must be an integer", id="float"),
    # subject
    pytest.param(
        cnp(spec={"tier": "Admin", "priority": 1}), "spec.subject", "required", id="no-subject"
    ),
    pytest.param(
        spec_error(subject={}),
        "spec.subject",
        "must specify one of namespaces or pods",
        id="subject-empty",
    ),
    pytest.param(
        spec_error(subject={"namespaces": {}, "pods": {"podSelector": {}}}),
        "spec.subject",
        "must specify only one of namespaces or pods, got namespaces and pods",
        id="subject-both",
    ),
    pytest.param(
        spec_error(subject={"pods": {"namespaceSelector": {}}}),
        "spec.subject.pods.podSelector",
        "required",
        id="subject-pods-without-pod-selector",
    ),
    pytest.param(
        spec_error(subject={"namespaces": {"matchExpressions": [{"key": "a", "operator": "in"}]}}),
        "spec.subject.namespaces.matchExpressions[0].operator",
        "must be one of In, NotIn, Exists, DoesNotExist",
        id="subject-selector-operator",
    ),
    # rule lists and rules
    pytest.param(
        spec_error(ingress=[accept_from(ALL_NAMESPACES)] * 26),
        "spec.ingress",
        "must have at most 25 rules, got 26",
        id="26-ingress-rules",
    ),
    pytest.param(
        spec_error(egress=[accept_to(ALL_NAMESPACES)] * 26),
        "spec.egress",
        "must have at most 25 rules, got 26",
        id="26-egress-rules",
    ),
    pytest.param(spec_error(egress={}), "spec.egress", "must be a list", id="egress-object"),
    pytest.param(
        ingress(accept_from(ALL_NAMESPACES, name="n" * 101)),
        "spec.ingress[0].name",
        "must be no more than 100 characters, got 101",
        id="name-101",
    ),
    pytest.param(
        ingress(accept_from(ALL_NAMESPACES, name=7)),
        "spec.ingress[0].name",
        "must be a string",
        id="name-integer",
    ),
    pytest.param(
        ingress({"from": [ALL_NAMESPACES]}), "spec.ingress[0].action", "required", id="no-action"
    ),
    pytest.param(
        ingress({"action": "Allow", "from": [ALL_NAMESPACES]}),
        "spec.ingress[0].action",
        'must be Accept, Deny or Pass, got "Allow" (v1alpha2 renamed Allow to Accept)',
        id="action-allow",
    ),
    pytest.param(
        egress({"action": "deny", "to": [ALL_NAMESPACES]}),
        "spec.egress[0].action",
        'did you mean "Deny"?',
        id="action-lowercase",
    ),
    pytest.param(
        ingress({"action": "Accept"}), "spec.ingress[0].from", "required", id="from-missing"
    ),
    pytest.param(
        egress({"action": "Accept", "to": []}),
        "spec.egress[0].to",
        "must have at least 1 peer",
        id="to-empty",
    ),
    pytest.param(
        ingress(accept_from(*[ALL_NAMESPACES] * 26)),
        "spec.ingress[0].from",
        "must have at most 25 peers, got 26",
        id="26-peers",
    ),
    pytest.param(
        ingress(accept_from(ALL_NAMESPACES, {})),
        "spec.ingress[0].from[1]",
        "must specify one of namespaces or pods",
        id="peer-empty",
    ),
    pytest.param(
        ingress(accept_from({"namespaces": {}, "pods": {"podSelector": {}}})),
        "spec.ingress[0].from[0]",
        "must specify only one of namespaces or pods, got namespaces and pods",
        id="ingress-peer-two-fields",
    ),
    pytest.param(
        egress(accept_to({"nodes": {}, "networks": ["10.0.0.0/8"]})),
        "spec.egress[0].to[0]",
        "must specify only one of namespaces, pods, nodes, networks or domainNames, "
        "got nodes and networks",
        id="egress-peer-two-fields",
    ),
    pytest.param(
        egress(accept_to({"pods": {}})),
        "spec.egress[0].to[0].pods.podSelector",
        "required",
        id="pods-peer-without-pod-selector",
    ),
    pytest.param(
        egress(accept_to({"domainNames": ["example.com"]})),
        "spec.egress[0].to[0].domainNames",
        DOMAIN_NAMES_REFUSAL,
        id="domain-names-refused",
    ),
    # networks
    pytest.param(network_peer(), "spec.egress[0].to[1].networks", "at least 1 CIDR", id="no-cidrs"),
    pytest.param(
        network_peer(*[f"10.0.{i}.0/24" for i in range(26)]),
        "spec.egress[0].to[1].networks",
        "must have at most 25 CIDRs, got 26",
        id="26-cidrs",
    ),
    pytest.param(
        network_peer("10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/33"),
        "spec.egress[0].to[1].networks[3]",
        'must be a valid CIDR such as 10.0.0.0/16 or 2001:db8::/64, got "10.3.0.0/33"',
        id="cidr-prefix-too-long",
    ),
    pytest.param(
        network_peer("10.0.0.1"),
        "spec.egress[0].to[1].networks[0]",
        "must be a valid CIDR",
        id="address-without-prefix",
    ),
    pytest.param(
        network_peer("010.0.0.0/8"),
        "spec.egress[0].to[1].networks[0]",
        "without leading zeros",
        id="leading-zeros",
    ),
    pytest.param(
        network_peer("10.0.0.0/08"),
        "spec.egress[0].to[1].networks[0]",
        "without leading zeros in the prefix length",
        id="prefix-leading-zero",
    ),
    pytest.param(
        network_peer("::ffff:10.0.0.0/104"),
        "spec.egress[0].to[1].networks[0]",
        "not an IPv4-mapped IPv6 address",
        id="ipv4-mapped",
    ),
    pytest.param(
        network_peer("fe80::/64%eth0"),
        "spec.egress[0].to[1].networks[0]",
        "must be a valid CIDR",
        id="zone",
    ),
    pytest.param(
        network_peer("10.0.0.0/8", "10.0.0.0/8"),
        "spec.egress[0].to[1].networks[1]",
        'duplicate entry "10.0.0.0/8" (also spec.egress[0].to[1].networks[0])',
        id="duplicate-cidr",
    ),
    pytest.param(
        network_peer("0000:0000:0000:0000:0000:0001:192.168.100.200/128"),
        "spec.egress[0].to[1].networks[0]",
        "must be no more than 43 characters, got 49",
        id="cidr-too-long",
    ),
    pytest.param(
        network_peer(10), "spec.egress[0].to[1].networks[0]", "must be a CIDR string", id="int"
    ),
    # protocols
    pytest.param(
        protocols(), "spec.ingress[0].protocols", "must have at least 1 entry", id="no-entries"
    ),
    pytest.param(
        protocols(*[tcp(1)] * 26),
        "spec.ingress[0].protocols",
        "must have at most 25 entries, got 26",
        id="26-entries",
    ),
    pytest.param(
        protocols(tcp(80), {}),
        "spec.ingress[0].protocols[1]",
        "must specify one of tcp, udp, sctp or destinationNamedPort",
        id="entry-empty",
    ),
    pytest.param(
        protocols({**tcp(80), "udp": {"destinationPort": {"number": 53}}}),
        "spec.ingress[0].protocols[0]",
        "must specify only one of tcp, udp, sctp or destinationNamedPort, got tcp and udp",
        id="entry-tcp-and-udp",
    ),
    pytest.param(
        protocols({"tcp": {}}),
        "spec.ingress[0].protocols[0].tcp",
        "must specify destinationPort",
        id="tcp-without-destination-port",
    ),
    pytest.param(
        destination_port({}),
        "spec.ingress[0].protocols[0].udp.destinationPort",
        "must specify one of number or range",
        id="port-empty",
    ),
    pytest.param(
        destination_port({"number": 53, "range": {"start": 1, "end": 2}}),
        "spec.ingress[0].protocols[0].udp.destinationPort",
        "must specify only one of number or range, got number and range",
        id="number-and-range",
    ),
    pytest.param(
        destination_port({"number": 0}),
        "spec.ingress[0].protocols[0].udp.destinationPort.number",
        "must be between 1 and 65535, got 0",
        id="port-0",
    ),
    pytest.param(
        destination_port({"number": 65536}),
        "spec.ingress[0].protocols[0].udp.destinationPort.number",
        "must be between 1 and 65535, got 65536",
        id="port-65536",
    ),
    pytest.param(
        destination_port({"number": "53"}),
        "spec.ingress[0].protocols[0].udp.destinationPort.number",
        "must be an integer",
        id="port-string",
    ),
    pytest.param(
        destination_port(53),
        "spec.ingress[0].protocols[0].udp.destinationPort",
        "must be an object such as {number: 53}",
        id="port-bare-number",
    ),
    pytest.param(
        destination_port({"range": {"start": 10}}),
        "spec.ingress[0].protocols[0].udp.destinationPort.range.end",
        "required",
        id="range-without-end",
    ),
    pytest.param(
        destination_port({"range": {"start": 0, "end": 10}}),
        "spec.ingress[0].protocols[0].udp.destinationPort.range.start",
        "must be between 1 and 65535, got 0",
        id="range-start-0",
    ),
    pytest.param(
        destination_port({"range": {"start": 80, "end": 80}}),
        "spec.ingress[0].protocols[0].udp.destinationPort.range",
        "start (80) must be less than end (80)",
        id="range-start-equals-end",
    ),
    pytest.param(
        destination_port({"range": {"start": 90, "end": 80}}),
        "spec.ingress[0].protocols[0].udp.destinationPort.range",
        "start (90) must be less than end (80)",
        id="range-backwards",
    ),
    pytest.param(
        protocols({"destinationNamedPort": ""}),
        "spec.ingress[0].protocols[0].destinationNamedPort",
        "must be a port name, got an empty string",
        id="named-port-empty",
    ),
    pytest.param(
        protocols({"destinationNamedPort": 80}),
        "spec.ingress[0].protocols[0].destinationNamedPort",
        "must be a port name, got integer 80",
        id="named-port-integer",
    ),
    # the egress rule's CEL rule
    pytest.param(
        egress(
            accept_to(
                ALL_NAMESPACES,
                {"networks": ["10.0.0.0/8"]},
                protocols=[tcp(80), {"destinationNamedPort": "http"}],
            )
        ),
        "spec.egress[0].protocols[1].destinationNamedPort",
        "cannot be combined with the networks peer spec.egress[0].to[1]",
        id="named-port-with-networks",
    ),
    pytest.param(
        egress(accept_to({"nodes": {}}, protocols=[{"destinationNamedPort": "http"}])),
        "spec.egress[0].protocols[0].destinationNamedPort",
        "cannot be combined with the nodes peer spec.egress[0].to[0]",
        id="named-port-with-nodes",
    ),
    # whole objects
    pytest.param([], "", "must be an object, got list", id="not-an-object"),
]


@pytest.mark.parametrize("strict", MODES)
@pytest.mark.parametrize(("obj", "field", "message"), INVALID_CASES)
def test_invalid(obj: Any, field: str, message: str, strict: bool) -> None:
    with pytest.raises(ConversionError) as caught:
        convert(obj, strict)
    assert caught.value.kind == "ClusterNetworkPolicy"
    assert caught.value.field == field
    assert message in caught.value.reason
    where = f"{field}: " if field else ""
    assert str(caught.value).startswith(f"ClusterNetworkPolicy {caught.value.object_name}: {where}")


@pytest.mark.parametrize("strict", MODES)
def test_error_names_the_policy(strict: bool) -> None:
    with pytest.raises(ConversionError, match=r"^ClusterNetworkPolicy guard: spec\.tier: required"):
        convert(cnp(spec={"priority": 1, "subject": ALL_NAMESPACES}), strict)


@pytest.mark.parametrize("strict", MODES)
def test_host_bits_are_refused_in_v1beta1(strict: bool) -> None:
    obj = egress(accept_to({"networks": ["10.0.0.0/8", "2001:db8::1/64"]}))
    with pytest.raises(ConversionError) as caught:
        convert(obj, strict)
    assert caught.value.field == "spec.egress[0].to[0].networks[1]"
    assert "without host bits in policy.networking.k8s.io/v1beta1 (2001:db8::/64" in str(
        caught.value
    )


def test_lenient_names_the_fields_of_a_peer_it_does_not_know() -> None:
    # Strict mode refuses networks in an ingress peer as an unknown field (see below).
    with pytest.raises(ConversionError) as caught:
        convert(ingress(accept_from({"networks": ["10.0.0.0/8"]})), strict=False)
    assert caught.value.field == "spec.ingress[0].from[0]"
    assert caught.value.reason == (
        "must specify one of namespaces or pods (unknown fields: networks)"
    )


def test_named_port_with_pods_peers_is_fine_in_egress() -> None:
    obj = egress(
        accept_to({"pods": {"podSelector": {}}}, protocols=[{"destinationNamedPort": "dns"}])
    )
    assert one_rule(convert(obj)).ports[0] == PolicyPort("TCP", "dns")


def test_an_invalid_port_name_is_refused_in_strict_mode_only() -> None:
    obj = protocols({"destinationNamedPort": "HTTP"})
    with pytest.raises(ConversionError) as caught:
        convert(obj, strict=True)
    assert caught.value.field == "spec.ingress[0].protocols[0].destinationNamedPort"
    assert "so it can never match a port" in caught.value.reason
    # The CRD has no pattern on it: the cluster stores it, and it matches no container port.
    assert one_rule(convert(obj, strict=False)).ports[0] == PolicyPort("TCP", "HTTP")


# -- strict decoding -------------------------------------------------------------------------


def mutate(obj: dict[str, Any], path: tuple[Any, ...], key: str, value: Any) -> dict[str, Any]:
    """``obj`` with ``value`` set under ``key`` at ``path`` (keys and list indexes)."""
    obj = deepcopy(obj)
    target: Any = obj
    for step in path:
        target = target[step]
    target[key] = value
    return obj


FULL = cnp(
    subject={"pods": {"namespaceSelector": {}, "podSelector": {}}},
    ingress=[accept_from({"pods": {"podSelector": {}}}, protocols=[tcp(80)])],
    egress=[
        accept_to(
            {"namespaces": {}},
            {"networks": ["10.0.0.0/8"]},
            protocols=[{"udp": {"destinationPort": {"range": {"start": 1, "end": 2}}}}],
        )
    ],
)
"""A valid object with every struct present, for the unknown-field cases."""
IN = ("spec", "ingress", 0)
OUT = ("spec", "egress", 0)

UNKNOWN_FIELD_CASES = [
    pytest.param((), "tier", "tier", "it belongs in spec", id="tier-at-top"),
    pytest.param(("metadata",), "labelz", "metadata.labelz", 'did you mean "labels"?', id="meta"),
    pytest.param(
        ("spec",), "podSelector", "spec.podSelector", 'did you mean "subject"?', id="podSelector"
    ),
    pytest.param(
        ("spec",), "policyTypes", "spec.policyTypes", "has no policyTypes", id="policyTypes"
    ),
    pytest.param(("spec",), "priorty", "spec.priorty", 'did you mean "priority"?', id="typo"),
    pytest.param(
        ("spec", "subject"),
        "podSelector",
        "spec.subject.podSelector",
        'did you mean "pods"? pods: {namespaceSelector',
        id="subject-podSelector",
    ),
    pytest.param(
        ("spec", "subject", "pods"),
        "namespaces",
        "spec.subject.pods.namespaces",
        'did you mean "namespaceSelector"?',
        id="pods-namespaces",
    ),
    pytest.param(IN, "to", "spec.ingress[0].to", 'did you mean "from"?', id="ingress-to"),
    pytest.param(OUT, "from", "spec.egress[0].from", 'did you mean "to"?', id="egress-from"),
    pytest.param(OUT, "ports", "spec.egress[0].ports", 'did you mean "protocols"?', id="ports"),
    pytest.param(
        (*IN, "from", 0),
        "networks",
        "spec.ingress[0].from[0].networks",
        "networks, nodes and domainNames are egress peers only",
        id="networks-in-ingress-peer",
    ),
    pytest.param(
        (*OUT, "to", 1),
        "ipBlock",
        "spec.egress[0].to[1].ipBlock",
        'did you mean "networks"? networks is a list of CIDRs',
        id="ipBlock",
    ),
    pytest.param(
        (*OUT, "to", 0),
        "namespaceSelector",
        "spec.egress[0].to[0].namespaceSelector",
        'did you mean "namespaces"?',
        id="peer-namespaceSelector",
    ),
    pytest.param(
        (*OUT, "to", 0, "namespaces"),
        "podSelector",
        "spec.egress[0].to[0].namespaces.podSelector",
        "podSelector goes in pods",
        id="podSelector-in-namespaces-selector",
    ),
    pytest.param(
        (*OUT, "to", 0, "namespaces"),
        "team",
        "spec.egress[0].to[0].namespaces.team",
        "write matchLabels: {team: ...}",
        id="label-under-selector",
    ),
    pytest.param(
        (*IN, "protocols", 0),
        "TCP",
        "spec.ingress[0].protocols[0].TCP",
        'did you mean "tcp"?',
        id="protocol-upper-case",
    ),
    pytest.param(
        (*IN, "protocols", 0),
        "port",
        "spec.ingress[0].protocols[0].port",
        "a protocols entry is one of tcp, udp, sctp or destinationNamedPort",
        id="port-in-protocol-entry",
    ),
    pytest.param(
        (*IN, "protocols", 0, "tcp"),
        "port",
        "spec.ingress[0].protocols[0].tcp.port",
        'did you mean "destinationPort"?',
        id="tcp-port",
    ),
    pytest.param(
        (*OUT, "protocols", 0, "udp", "destinationPort"),
        "portRange",
        "spec.egress[0].protocols[0].udp.destinationPort.portRange",
        'did you mean "range"?',
        id="portRange",
    ),
    pytest.param(
        (*OUT, "protocols", 0, "udp", "destinationPort"),
        "endPort",
        "spec.egress[0].protocols[0].udp.destinationPort.endPort",
        "a range goes in range",
        id="endPort",
    ),
    pytest.param(
        (*OUT, "protocols", 0, "udp", "destinationPort", "range"),
        "stop",
        "spec.egress[0].protocols[0].udp.destinationPort.range.stop",
        "port ranges have start and end",
        id="range-stop",
    ),
]


@pytest.mark.parametrize(("path", "key", "field", "hint"), UNKNOWN_FIELD_CASES)
def test_strict_refuses_unknown_fields_with_a_hint(
    path: tuple[Any, ...], key: str, field: str, hint: str
) -> None:
    with pytest.raises(ConversionError) as caught:
        convert(mutate(FULL, path, key, {}), strict=True)
    assert caught.value.field == field
    assert caught.value.reason.startswith("unknown field")
    assert hint in caught.value.reason


@pytest.mark.parametrize(("path", "key", "field", "hint"), UNKNOWN_FIELD_CASES)
def test_lenient_ignores_unknown_fields_beside_known_ones(
    path: tuple[Any, ...], key: str, field: str, hint: str
) -> None:
    assert convert(mutate(FULL, path, key, {}), strict=False) == convert(FULL)


def test_strict_reports_unknown_fields_before_bad_values() -> None:
    obj = mutate(cnp(tier="Nope"), ("spec",), "bogus", 1)
    with pytest.raises(ConversionError, match=r"spec\.bogus: unknown field"):
        convert(obj, strict=True)


def test_a_cluster_scoped_namespace_is_passed_over() -> None:
    obj = mutate(cnp(), ("metadata",), "namespace", "default")
    assert convert(obj).name == "guard"


# -- fail-closed -----------------------------------------------------------------------------

DENY_ALL_INGRESS = ClusterRule(RuleAction.DENY, DENY_ALL_PEERS["ingress"])
DENY_ALL_EGRESS = ClusterRule(RuleAction.DENY, DENY_ALL_PEERS["egress"])


def test_a_valid_object_is_its_own_record() -> None:
    result = fail_closed_cluster_policy(FULL)
    assert result.record == convert(FULL)
    assert result.error == ""


UNKNOWN_PEER = {"serviceAccounts": {"names": ["x"]}}
"""A peer of a newer CRD than netpol-agent knows: no field set, as far as it can tell."""

RULE_STAND_IN_CASES = [
    pytest.param(
        ingress(
            {"name": "keep", "action": "Deny", "from": [ALL_NAMESPACES]},
            accept_from(ALL_NAMESPACES, UNKNOWN_PEER, name="odd"),
            {"action": "Accept", "from": [{"pods": {"podSelector": {}}}]},
        ),
        "ingress",
        1,
        ClusterRule(RuleAction.ACCEPT, MATCH_NOTHING_PEERS, name="odd"),
        "spec.ingress[1].from[1]: must specify one of namespaces or pods (unknown fields: "
        "serviceAccounts); enforced fail-closed: ingress rule 1 (Accept) matches nothing",
        id="accept-with-unknown-peer-matches-nothing",
    ),
    pytest.param(
        ingress(
            {"name": "keep", "action": "Deny", "from": [ALL_NAMESPACES]},
            {"name": "odd", "action": "Deny", "from": [UNKNOWN_PEER]},
        ),
        "ingress",
        1,
        ClusterRule(RuleAction.DENY, DENY_ALL_PEERS["ingress"], name="odd"),
        "enforced fail-closed: ingress rule 1 (Deny) denies all traffic",
        id="deny-with-unknown-peer-denies-all",
    ),
    pytest.param(
        egress(
            accept_to(ALL_NAMESPACES),
            {"name": "odd", "action": "Pass", "to": [ALL_NAMESPACES, UNKNOWN_PEER]},
        ),
        "egress",
        1,
        ClusterRule(RuleAction.DENY, DENY_ALL_PEERS["egress"], name="odd"),
        "enforced fail-closed: egress rule 1 (Pass) denies all traffic",
        id="pass-with-unknown-peer-denies-all",
    ),
    pytest.param(
        egress(accept_to(ALL_NAMESPACES), accept_to({"domainNames": ["example.com"]})),
        "egress",
        1,
        ClusterRule(RuleAction.ACCEPT, MATCH_NOTHING_PEERS),
        "domainNames: netpol-agent does not enforce domainNames peers",
        id="domain-names-accept-matches-nothing",
    ),
    pytest.param(
        egress(accept_to(ALL_NAMESPACES), {"action": "Deny", "to": [{"domainNames": ["a.io"]}]}),
        "egress",
        1,
        DENY_ALL_EGRESS,
        "egress rule 1 (Deny) denies all traffic",
        id="domain-names-deny-denies-all",
    ),
    pytest.param(
        egress(accept_to(ALL_NAMESPACES), {"action": "Drop", "to": [ALL_NAMESPACES]}),
        "egress",
        1,
        DENY_ALL_EGRESS,
        "egress rule 1 (unreadable) denies all traffic",
        id="unreadable-action-denies-all",
    ),
    pytest.param(
        ingress(
            accept_from(ALL_NAMESPACES),
            accept_from(ALL_NAMESPACES, protocols=[{"tcp": {"destinationPort": {"number": 0}}}]),
        ),
        "ingress",
        1,
        ClusterRule(RuleAction.ACCEPT, MATCH_NOTHING_PEERS),
        "spec.ingress[1].protocols[0].tcp.destinationPort.number: must be between 1 and 65535",
        id="accept-with-bad-port-matches-nothing",
    ),
    pytest.param(
        egress(
            accept_to(ALL_NAMESPACES),
            {
                "action": "Deny",
                "to": [{"networks": ["10.0.0.0/8"]}],
                "protocols": [{"destinationNamedPort": "http"}],
            },
        ),
        "egress",
        1,
        DENY_ALL_EGRESS,
        "cannot be combined with the networks peer",
        id="standard-channel-named-port-with-networks-denies-all",
    ),
]


@pytest.mark.parametrize(("obj", "direction", "index", "stand_in", "error"), RULE_STAND_IN_CASES)
def test_a_rule_that_cannot_be_read_stands_in_at_its_place(
    obj: dict[str, Any], direction: str, index: int, stand_in: ClusterRule, error: str
) -> None:
    result = fail_closed_cluster_policy(obj)
    assert result.record is not None
    rules = result.record.ingress if direction == "ingress" else result.record.egress
    assert rules[index] == stand_in
    # Every other rule as written; the policy-level fields as written.
    raw_rules = obj["spec"][direction]
    for other, raw in enumerate(raw_rules):
        if other != index:
            single = deepcopy(obj)
            single["spec"][direction] = [raw]
            assert rules[other] == one_rule(convert(single, strict=False))
    assert (result.record.name, result.record.tier, result.record.priority) == (
        "guard",
        Tier.ADMIN,
        10,
    )
    assert result.record.subject == ClusterSubject(namespaces=SELECT_ALL)
    assert result.error.startswith("ClusterNetworkPolicy guard: spec.")
    assert error in result.error


def test_every_broken_rule_is_reported() -> None:
    obj = cnp(
        ingress=[accept_from(UNKNOWN_PEER)],
        egress=[accept_to(ALL_NAMESPACES), {"action": "Deny", "to": []}],
    )
    result = fail_closed_cluster_policy(obj)
    assert result.record is not None
    assert result.record.ingress == (ClusterRule(RuleAction.ACCEPT, MATCH_NOTHING_PEERS),)
    assert result.record.egress[1] == DENY_ALL_EGRESS
    assert result.error == (
        "ClusterNetworkPolicy guard: spec.ingress[0].from[0]: must specify one of namespaces or "
        "pods (unknown fields: serviceAccounts); spec.egress[1].to: must have at least 1 peer; "
        "enforced fail-closed: ingress rule 0 (Accept) matches nothing, egress rule 1 (Deny) "
        "denies all traffic"
    )


def test_the_match_nothing_selector_matches_no_labels() -> None:
    for labels in ({}, {"netpol-agent/fail-closed": "x"}, {"a": "b"}):
        assert not MATCH_NOTHING.matches(Labels(labels))


BOTH_RULES = {"ingress": [accept_from(ALL_NAMESPACES)], "egress": [accept_to(ALL_NAMESPACES)]}

WHOLE_OBJECT_CASES = [
    pytest.param(
        cnp(tier="admin", priority=7, **BOTH_RULES),
        (Tier.ADMIN, 7, ClusterSubject(namespaces=SELECT_ALL)),
        "both",
        "spec.tier: must be Admin or Baseline",
        "all ingress and egress traffic of its subjects denied at tier Admin, priority 7",
        id="bad-tier-admin-at-its-priority",
    ),
    pytest.param(
        cnp(tier="Baseline", priority=5000, egress=BOTH_RULES["egress"]),
        (Tier.BASELINE, 0, ClusterSubject(namespaces=SELECT_ALL)),
        "egress",
        "spec.priority: must be between 0 and 1000, got 5000",
        "all egress traffic of its subjects denied at tier Baseline, priority 0",
        id="bad-priority-first-in-its-tier",
    ),
    pytest.param(
        cnp(subject={"serviceAccounts": {}}, ingress=BOTH_RULES["ingress"], priority=3),
        (Tier.ADMIN, 3, ClusterSubject(namespaces=SELECT_ALL)),
        "ingress",
        "spec.subject: must specify one of namespaces or pods (unknown fields: serviceAccounts)",
        "all ingress traffic of every pod in the cluster (its subject cannot be read) denied",
        id="unknown-subject-every-pod",
    ),
    pytest.param(
        cnp(
            subject={
                "pods": {
                    "namespaceSelector": {"matchLabels": {"env": "prod"}},
                    "podSelector": {"matchLabels": {"bad key": "x"}},
                }
            },
            **BOTH_RULES,
        ),
        (Tier.ADMIN, 10, ClusterSubject(pods=NamespacedPods(PROD, SELECT_ALL))),
        "both",
        "spec.subject.pods.podSelector.matchLabels[bad key]: invalid key",
        "of every pod of the namespaces its subject's pods.namespaceSelector selects",
        id="bad-pod-selector-every-pod-of-its-namespaces",
    ),
    pytest.param(
        cnp(spec="Admin"),
        (Tier.ADMIN, 0, ClusterSubject(namespaces=SELECT_ALL)),
        "both",
        "spec: must be an object, got string",
        "all ingress and egress traffic of every pod in the cluster",
        id="spec-not-an-object",
    ),
    pytest.param(
        cnp(ingress=[accept_from(ALL_NAMESPACES)] * 26),
        (Tier.ADMIN, 10, ClusterSubject(namespaces=SELECT_ALL)),
        "ingress",
        "spec.ingress: must have at most 25 rules, got 26",
        "all ingress traffic of its subjects denied at tier Admin, priority 10",
        id="too-many-rules",
    ),
    pytest.param(
        cnp(egress="all", api_version="policy.networking.k8s.io/v9"),
        (Tier.ADMIN, 10, ClusterSubject(namespaces=SELECT_ALL)),
        "egress",
        "apiVersion: must be policy.networking.k8s.io/v1beta1 or",
        "all egress traffic of its subjects denied",
        id="unknown-version-and-unreadable-egress",
    ),
    pytest.param(
        cnp(tier=None),
        (Tier.ADMIN, 10, ClusterSubject(namespaces=SELECT_ALL)),
        "none",
        "spec.tier: required",
        "enforced fail-closed: no rules, so it affects nothing",
        id="no-rules-affects-nothing",
    ),
]


@pytest.mark.parametrize(("obj", "head", "directions", "error", "what"), WHOLE_OBJECT_CASES)
def test_an_object_that_cannot_be_read_denies_the_directions_it_has(
    obj: dict[str, Any],
    head: tuple[Tier, int, ClusterSubject],
    directions: str,
    error: str,
    what: str,
) -> None:
    result = fail_closed_cluster_policy(obj)
    policy = result.record
    assert policy is not None
    assert (policy.name, policy.tier, policy.priority, policy.subject) == ("guard", *head)
    has_ingress = directions in ("both", "ingress")
    has_egress = directions in ("both", "egress")
    assert policy.ingress == ((DENY_ALL_INGRESS,) if has_ingress else ())
    assert policy.egress == ((DENY_ALL_EGRESS,) if has_egress else ())
    assert result.error.startswith(f"ClusterNetworkPolicy guard: {error}")
    assert what in result.error


def test_something_that_is_not_an_object_is_left_out() -> None:
    result = fail_closed_cluster_policy(["not", "a", "policy"])
    assert result.record is None
    assert (
        result.error
        == "ClusterNetworkPolicy ?: must be an object, got list; left out (not an object)"
    )


def test_deny_all_covers_every_peer_a_rule_can_match() -> None:
    # Ingress peers are only ever pods; egress ones any address, pods included.
    assert DENY_ALL_PEERS["ingress"] == (ClusterPeer(namespaces=SELECT_ALL),)
    every = ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0")
    assert ClusterPeer(networks=every) in DENY_ALL_PEERS["egress"]


# -- properties ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
"""Any JSON value."""


def maybe(valid: st.SearchStrategy[Any], odds: int = 3) -> st.SearchStrategy[Any]:
    """Mostly a valid value (``odds`` to 1), sometimes any JSON value."""
    return st.integers(0, odds).flatmap(lambda draw: valid if draw else JSON)


def rarely_wrong(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """For the policy-level fields: wrong often enough, but rules get reached too."""
    return maybe(valid, odds=12)


SELECTORS = maybe(
    st.sampled_from(
        [
            {},
            {"matchLabels": {"app": "web"}},
            {"matchExpressions": [{"key": "env", "operator": "Exists"}]},
        ]
    ),
    odds=8,
)
PODS = maybe(
    st.fixed_dictionaries({"podSelector": SELECTORS}, optional={"namespaceSelector": SELECTORS})
)
CIDRS = maybe(st.sampled_from(["10.0.0.0/8", "10.0.0.1/8", "2001:db8::/32", "0.0.0.0/0", "x"]))
PEERS = maybe(
    st.one_of(
        st.fixed_dictionaries({"namespaces": SELECTORS}),
        st.fixed_dictionaries({"pods": PODS}),
        st.fixed_dictionaries({"nodes": SELECTORS}),
        st.fixed_dictionaries({"networks": st.lists(CIDRS, max_size=3)}),
        st.fixed_dictionaries({"domainNames": st.just(["example.com"])}),
    )
)
PORTS = maybe(
    st.one_of(
        st.fixed_dictionaries({"number": maybe(st.integers(0, 70000))}),
        st.fixed_dictionaries(
            {"range": st.fixed_dictionaries({"start": st.integers(1, 9), "end": st.integers(1, 9)})}
        ),
    )
)
PROTOCOL_ENTRIES = maybe(
    st.one_of(
        st.fixed_dictionaries(
            {
                st.sampled_from(["tcp", "udp", "sctp"]): st.fixed_dictionaries(
                    {"destinationPort": PORTS}
                )
            }
        ),
        st.fixed_dictionaries({"destinationNamedPort": st.sampled_from(["http", "", "HTTP"])}),
    )
)


def rules(peers_key: str) -> st.SearchStrategy[Any]:
    return maybe(
        st.fixed_dictionaries(
            {
                "action": maybe(st.sampled_from(["Accept", "Deny", "Pass"])),
                peers_key: maybe(st.lists(PEERS, max_size=3)),
            },
            optional={
                "name": maybe(st.text(max_size=4)),
                "protocols": maybe(st.lists(PROTOCOL_ENTRIES, max_size=3)),
            },
        )
    )


SPECS = rarely_wrong(
    st.fixed_dictionaries(
        {
            "tier": rarely_wrong(st.sampled_from(["Admin", "Baseline"])),
            "priority": rarely_wrong(st.integers(-1, 1001)),
            "subject": rarely_wrong(
                st.one_of(
                    st.fixed_dictionaries({"namespaces": SELECTORS}),
                    st.fixed_dictionaries({"pods": PODS}),
                )
            ),
        },
        optional={
            "ingress": maybe(st.lists(rules("from"), max_size=3)),
            "egress": maybe(st.lists(rules("to"), max_size=3)),
        },
    )
)
OBJECTS = maybe(
    st.fixed_dictionaries(
        {
            "apiVersion": rarely_wrong(st.sampled_from(API_VERSIONS)),
            "metadata": rarely_wrong(st.just({"name": "guard"})),
            "spec": SPECS,
        }
    ),
    odds=6,
)
"""Anything, mostly shaped like a ClusterNetworkPolicy, with any part possibly wrong."""

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(obj=OBJECTS, strict=st.booleans())
def test_any_object_converts_or_raises_conversion_error(obj: Any, strict: bool) -> None:
    try:
        policy = cluster_policy_from_k8s(obj, strict=strict)
    except ConversionError as error:
        assert error.kind == "ClusterNetworkPolicy"
    else:
        assert isinstance(policy, ClusterNetworkPolicy)


@PROPERTY
@given(obj=OBJECTS)
def test_fail_closed_never_raises_and_never_opens(obj: Any) -> None:
    result = fail_closed_cluster_policy(obj)
    try:
        converted = cluster_policy_from_k8s(obj, strict=False)
    except ConversionError:
        converted = None
    if converted is not None:
        assert result == type(result)(converted, "")
        return
    assert result.error
    if not isinstance(obj, dict):
        assert result.record is None
        return
    policy = result.record
    assert isinstance(policy, ClusterNetworkPolicy)
    # A stand-in keeps an Accept or Pass rule only where that rule converts on its own.
    for direction, rules_ in (("ingress", policy.ingress), ("egress", policy.egress)):
        for index, rule_ in enumerate(rules_):
            if rule_.action is RuleAction.DENY or rule_.peers == MATCH_NOTHING_PEERS:
                continue
            single = deepcopy(obj)
            single["spec"] = {**obj["spec"], "ingress": [], "egress": []}
            single["spec"][direction] = [obj["spec"][direction][index]]
            assert rule_ == one_rule(cluster_policy_from_k8s(single, strict=False))


def test_a_bug_in_a_rule_is_that_rules_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> ClusterRule:
        raise RuntimeError("bug")

    monkeypatch.setattr("agent.kinds.clusterpolicy._rule", broken)
    result = fail_closed_cluster_policy(
        cnp(ingress=[accept_from(ALL_NAMESPACES)], egress=[{"action": "Pass", "to": []}])
    )
    assert result.record is not None
    assert result.record.ingress == (ClusterRule(RuleAction.ACCEPT, MATCH_NOTHING_PEERS),)
    assert result.record.egress == (DENY_ALL_EGRESS,)
    assert result.error == (
        "ClusterNetworkPolicy guard: spec.ingress[0]: cannot be read; spec.egress[0]: cannot be "
        "read; enforced fail-closed: ingress rule 0 (Accept) matches nothing, egress rule 0 "
        "(Pass) denies all traffic"
    )


def test_a_bug_in_the_stand_in_closes_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("agent.kinds.clusterpolicy._whole_object_stand_in", broken)
    result = fail_closed_cluster_policy(cnp(tier="Nope", ingress=[accept_from(ALL_NAMESPACES)]))
    assert result.record == ClusterNetworkPolicy(
        "",
        Tier.ADMIN,
        0,
        ClusterSubject(namespaces=SELECT_ALL),
        ingress=(DENY_ALL_INGRESS,),
        egress=(DENY_ALL_EGRESS,),
    )
    assert result.error == (
        'ClusterNetworkPolicy guard: spec.tier: must be Admin or Baseline, got "Nope"; enforced '
        "fail-closed: all traffic of every pod in the cluster denied at tier Admin, priority 0"
    )
