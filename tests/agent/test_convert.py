"""Tests for agent/convert.py: Kubernetes dicts in, validated model records out."""

from __future__ import annotations

import ipaddress
import re
from copy import deepcopy
from typing import Any

import pytest

from agent.convert import (
    ConversionError,
    fail_closed_pod,
    fail_closed_policy,
    namespace_from_k8s,
    object_label,
    parse_cidr,
    parse_ip,
    pod_from_k8s,
    policy_from_k8s,
)
from enforcement.model import (
    SELECT_ALL,
    ContainerPort,
    Direction,
    IPBlock,
    Labels,
    Rule,
    UnreadablePod,
)
from tests.builders import expr, make_namespace, peer, port, rule, selector

INGRESS = frozenset({Direction.INGRESS})
EGRESS = frozenset({Direction.EGRESS})
BOTH = frozenset(Direction)

MODES = [pytest.param(False, id="lenient"), pytest.param(True, id="strict")]
"""Valid objects convert the same with and without strict unknown-field checks."""


def k8s_policy(spec: Any, name: str = "allow-db", ns: str | None = "default") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if ns is not None:
        metadata["namespace"] = ns
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": spec,
    }


def ingress_ports(*ports: Any) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"ports": list(ports)}]}


def ingress_from(*peers: Any) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"from": list(peers)}]}


def egress_to(*peers: Any) -> dict[str, Any]:
    return {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": list(peers)}]}


def pod_selector(value: Any) -> dict[str, Any]:
    return {"podSelector": value}


def k8s_pod(
    spec: Any = None, status: Any = None, labels: Any = None, name: str = "web"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": spec if spec is not None else {"containers": [{"name": "c", "image": "x"}]},
    }
    if labels is not None:
        obj["metadata"]["labels"] = labels
    if status is not None:
        obj["status"] = status
    return obj


def addresses(*texts: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return tuple(ipaddress.ip_address(text) for text in texts)


# -- ConversionError ----------------------------------------------------------------------


def test_error_message_names_kind_object_field_and_reason() -> None:
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(k8s_policy(ingress_ports({"port": 70000})))
    error = caught.value
    assert str(error) == (
        "NetworkPolicy default/allow-db: spec.ingress[0].ports[0].port: "
        "must be between 1 and 65535, got 70000"
    )
    assert (error.kind, error.object_name, error.field) == (
        "NetworkPolicy",
        "default/allow-db",
        "spec.ingress[0].ports[0].port",
    )
    assert error.reason == "must be between 1 and 65535, got 70000"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("obj", "label"),
    [
        pytest.param(k8s_policy({}), "NetworkPolicy default/allow-db", id="namespaced"),
        pytest.param(
            {"kind": "Namespace", "metadata": {"name": "prod"}}, "Namespace prod", id="cluster"
        ),
        pytest.param({"metadata": {"name": "x"}}, "object x", id="no-kind"),
        pytest.param({"kind": "Pod", "metadata": "junk"}, "Pod ?", id="junk-metadata"),
    ],
)
def test_object_label(obj: dict[str, Any], label: str) -> None:
    assert object_label(obj) == label


# -- NetworkPolicy: conversion ------------------------------------------------------------


@pytest.mark.parametrize("strict", MODES)
def test_policy_converts_every_part(strict: bool) -> None:
    spec = {
        "podSelector": {
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "example.com/legacy", "operator": "DoesNotExist"},
            ],
        },
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {"podSelector": {"matchLabels": {"app": "web"}}},
                    {
                        "namespaceSelector": {"matchLabels": {"team": "a"}},
                        "podSelector": {},
                    },
                    {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}},
                ],
                "ports": [
                    {"port": 5432},
                    {"protocol": "UDP", "port": "dns"},
                    {"protocol": "SCTP", "port": 1000, "endPort": 2000},
                    {"protocol": "TCP"},
                ],
            }
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/64"}}]}],
    }
    policy = policy_from_k8s(k8s_policy(spec), strict=strict)
    assert (policy.namespace, policy.name, policy.key) == (
        "default",
        "allow-db",
        "default/allow-db",
    )
    assert policy.pod_selector == selector(
        expr("tier", "In", "a", "b"), expr("example.com/legacy", "DoesNotExist"), app="db"
    )
    assert policy.policy_types == BOTH
    assert policy.ingress == (
        rule(
            peer(pods=selector(app="web")),
            peer(pods=selector(), namespaces=selector(team="a")),
            peer(cidr="10.0.0.0/16", excepts=["10.0.1.0/24"]),
            ports=[port(5432), port("dns", "UDP"), port(1000, "SCTP", end=2000), port()],
        ),
    )
    assert policy.egress == (rule(peer(cidr="2001:db8::/64")),)


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        pytest.param({"podSelector": {}}, INGRESS, id="nothing-ingress-only"),
        pytest.param({"podSelector": {}, "ingress": [{}]}, INGRESS, id="ingress-rules"),
        pytest.param({"podSelector": {}, "egress": [{}]}, BOTH, id="egress-rules-add-egress"),
        pytest.param(
            {"podSelector": {}, "ingress": [{}], "egress": [{"ports": [{"port": 53}]}]},
            BOTH,
            id="both-rules",
        ),
        # SetDefaults_NetworkPolicy: len(Egress) != 0, so an empty egress list adds nothing.
        pytest.param({"podSelector": {}, "egress": []}, INGRESS, id="empty-egress-list"),
        pytest.param({"podSelector": {}, "egress": None}, INGRESS, id="null-egress"),
        pytest.param({"podSelector": {}, "policyTypes": []}, INGRESS, id="empty-types-default"),
        pytest.param(
            {"podSelector": {}, "policyTypes": [], "egress": [{}]}, BOTH, id="empty-types-egress"
        ),
        pytest.param({"podSelector": {}, "policyTypes": ["Egress"]}, EGRESS, id="egress-only"),
        pytest.param(
            {"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]},
            INGRESS,
            id="explicit-wins-over-egress-rules",
        ),
        pytest.param(
            {"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}, BOTH, id="explicit-both"
        ),
        # ValidateNetworkPolicySpec checks the count and the values, not duplicates.
        pytest.param(
            {"podSelector": {}, "policyTypes": ["Egress", "Egress"]}, EGRESS, id="duplicate"
        ),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_policy_types_defaulting(
    spec: dict[str, Any], types: frozenset[Direction], strict: bool
) -> None:
    assert policy_from_k8s(k8s_policy(spec), strict=strict).policy_types == types


@pytest.mark.parametrize(
    ("spec", "ingress"),
    [
        pytest.param({"podSelector": {}}, (), id="no-ingress-section"),
        pytest.param({"podSelector": {}, "ingress": []}, (), id="empty-ingress"),
        pytest.param({"podSelector": {}, "ingress": [{}]}, (Rule(),), id="allow-all-rule"),
        pytest.param({"podSelector": {}, "ingress": [None]}, (Rule(),), id="null-rule-is-empty"),
        pytest.param(
            {"podSelector": {}, "ingress": [{"from": [], "ports": []}]},
            (Rule(),),
            id="empty-from-and-ports",
        ),
        pytest.param(
            {"podSelector": {}, "ingress": [{"from": None, "ports": None}]},
            (Rule(),),
            id="null-from-and-ports",
        ),
        pytest.param(
            {"podSelector": {}, "ingress": [{"ports": [None]}]},
            (rule(ports=[port()]),),
            id="null-port-is-all-tcp",
        ),
        pytest.param(
            {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]},
            (rule(peer(namespaces=SELECT_ALL)),),
            id="all-namespaces",
        ),
        pytest.param(
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/24"}}]}]},
            (rule(peer(cidr="10.0.0.0/24")),),
            id="cidr-host-bits-normalised",
        ),
        pytest.param(
            {
                "podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": []}}]}],
            },
            (rule(peer(cidr="10.0.0.0/8")),),
            id="empty-except",
        ),
        pytest.param(
            {
                "podSelector": {},
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fd00::1/128"]}}]}
                ],
            },
            (rule(peer(cidr="fd00::/8", excepts=["fd00::1/128"])),),
            id="ipv6-except",
        ),
        pytest.param(
            {"podSelector": {}, "ingress": [{"ports": [{"port": 1, "endPort": 1}]}]},
            (rule(ports=[port(1, end=1)]),),
            id="endport-equal",
        ),
        pytest.param(
            {"podSelector": {}, "ingress": [{"ports": [{"port": "a-1"}]}]},
            (rule(ports=[port("a-1")]),),
            id="port-name-with-digit-and-hyphen",
        ),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_policy_rules(spec: dict[str, Any], ingress: tuple[Rule, ...], strict: bool) -> None:
    assert policy_from_k8s(k8s_policy(spec), strict=strict).ingress == ingress


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({}, id="spec-without-pod-selector"),
        pytest.param({"podSelector": None}, id="null-pod-selector"),
        pytest.param(None, id="no-spec"),
        pytest.param({"podSelector": {"matchLabels": {}, "matchExpressions": []}}, id="empty"),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_omitted_pod_selector_selects_all(spec: Any, strict: bool) -> None:
    # The Go type is a value: the API server decodes a missing selector as {} (k8s #131354).
    policy = policy_from_k8s(k8s_policy(spec), strict=strict)
    assert policy.pod_selector == SELECT_ALL
    assert policy.policy_types == INGRESS


# -- NetworkPolicy: validation ------------------------------------------------------------

BAD_POLICIES = [
    # metadata
    pytest.param(
        {"metadata": {"namespace": "default"}, "spec": {}},
        "metadata.name",
        "required",
        id="name-missing",
    ),
    pytest.param(
        {"metadata": {"name": "allow-db"}, "spec": {}},
        "metadata.namespace",
        "required",
        id="namespace-missing",
    ),
    pytest.param(
        k8s_policy({}, name="Allow_DB"),
        "metadata.name",
        "must be a DNS-1123 subdomain: lowercase alphanumeric characters, '-' or '.', "
        'starting and ending with an alphanumeric character, got "Allow_DB"',
        id="name-invalid",
    ),
    pytest.param(
        {"metadata": "allow-db", "spec": {}},
        "metadata",
        "must be an object, got string",
        id="metadata-not-mapping",
    ),
    pytest.param(k8s_policy([]), "spec", "must be an object, got list", id="spec-not-mapping"),
    # podSelector and label selectors
    pytest.param(
        k8s_policy(pod_selector("app=db")),
        "spec.podSelector",
        "must be an object, got string",
        id="selector-not-mapping",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": ["app"]})),
        "spec.podSelector.matchLabels",
        "must be an object, got list",
        id="match-labels-not-mapping",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"bad key!": "x"}})),
        "spec.podSelector.matchLabels[bad key!]",
        "invalid key: name part must consist of alphanumeric characters, '-', '_' or '.', "
        "and must start and end with an alphanumeric character",
        id="match-labels-key-chars",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"Example.COM/app": "x"}})),
        "spec.podSelector.matchLabels[Example.COM/app]",
        "invalid key: prefix part must be a DNS-1123 subdomain",
        id="match-labels-key-prefix",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"/app": "x"}})),
        "spec.podSelector.matchLabels[/app]",
        "invalid key: prefix part must be non-empty",
        id="match-labels-key-empty-prefix",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"a/b/c": "x"}})),
        "spec.podSelector.matchLabels[a/b/c]",
        "invalid key: must be a name with an optional DNS subdomain prefix",
        id="match-labels-key-two-slashes",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"k" * 64: "x"}})),
        f"spec.podSelector.matchLabels[{'k' * 64}]",
        "invalid key: name part must be no more than 63 characters",
        id="match-labels-key-too-long",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"app": "-web"}})),
        "spec.podSelector.matchLabels[app]",
        "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start "
        'and end with an alphanumeric character, got "-web"',
        id="match-labels-value-chars",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"app": "v" * 64}})),
        "spec.podSelector.matchLabels[app]",
        "must be no more than 63 characters, got 64",
        id="match-labels-value-too-long",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabels": {"version": 1}})),
        "spec.podSelector.matchLabels[version]",
        "must be a string, got integer 1 (quote it in YAML)",
        id="match-labels-value-not-string",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchExpressions": {"key": "app"}})),
        "spec.podSelector.matchExpressions",
        "must be a list, got object",
        id="match-expressions-not-list",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchExpressions": [{"key": "app", "operator": "In"}]})),
        "spec.podSelector.matchExpressions[0].values",
        "required when `operator` is In",
        id="in-without-values",
    ),
    pytest.param(
        k8s_policy(
            pod_selector({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]})
        ),
        "spec.podSelector.matchExpressions[0].values",
        "required when `operator` is NotIn",
        id="notin-empty-values",
    ),
    pytest.param(
        k8s_policy(
            pod_selector(
                {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
            )
        ),
        "spec.podSelector.matchExpressions[0].values",
        "may not be specified when `operator` is Exists",
        id="exists-with-values",
    ),
    pytest.param(
        k8s_policy(
            pod_selector(
                {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]}
            )
        ),
        "spec.podSelector.matchExpressions[0].values",
        "may not be specified when `operator` is DoesNotExist",
        id="doesnotexist-with-values",
    ),
    pytest.param(
        k8s_policy(
            pod_selector(
                {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}
            )
        ),
        "spec.podSelector.matchExpressions[0].operator",
        'must be one of In, NotIn, Exists, DoesNotExist, got "Equals"',
        id="unknown-operator",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchExpressions": [{"key": "a", "operator": "in"}]})),
        "spec.podSelector.matchExpressions[0].operator",
        'must be one of In, NotIn, Exists, DoesNotExist, got "in"',
        id="operator-case",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchExpressions": [{"key": "a b", "operator": "Exists"}]})),
        "spec.podSelector.matchExpressions[0].key",
        "name part must consist of",
        id="expression-key-invalid",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchExpressions": [{"operator": "Exists"}]})),
        "spec.podSelector.matchExpressions[0].key",
        "must be a label key, got null",
        id="expression-key-missing",
    ),
    pytest.param(
        k8s_policy(
            pod_selector({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x y"]}]})
        ),
        "spec.podSelector.matchExpressions[0].values[0]",
        'and end with an alphanumeric character, got "x y"',
        id="expression-value-invalid",
    ),
    pytest.param(
        k8s_policy(
            pod_selector({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]})
        ),
        "spec.podSelector.matchExpressions[0].values",
        "must be a list, got string",
        id="expression-values-not-list",
    ),
    pytest.param(
        k8s_policy(ingress_from({"namespaceSelector": {"matchLabels": {"team": "a b"}}})),
        "spec.ingress[0].from[0].namespaceSelector.matchLabels[team]",
        "must be empty or consist of",
        id="peer-namespace-selector-invalid",
    ),
    pytest.param(
        k8s_policy(egress_to({"podSelector": {"matchExpressions": [{"key": "a"}]}})),
        "spec.egress[0].to[0].podSelector.matchExpressions[0].operator",
        "got null",
        id="peer-pod-selector-invalid",
    ),
    # policyTypes
    pytest.param(
        k8s_policy({"podSelector": {}, "policyTypes": ["ingress"]}),
        "spec.policyTypes[0]",
        'must be "Ingress" or "Egress", got "ingress"',
        id="policy-type-case",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "policyTypes": ["Ingress", "Both"]}),
        "spec.policyTypes[1]",
        'must be "Ingress" or "Egress", got "Both"',
        id="policy-type-unknown",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]}),
        "spec.policyTypes",
        "may not specify more than two policyTypes, got 3",
        id="policy-types-three",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "policyTypes": "Ingress"}),
        "spec.policyTypes",
        "must be a list, got string",
        id="policy-types-not-list",
    ),
    # rule shapes
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": {"from": []}}),
        "spec.ingress",
        "must be a list, got object",
        id="ingress-not-list",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "egress": ["all"]}),
        "spec.egress[0]",
        "must be an object, got string",
        id="egress-rule-not-mapping",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": [{"from": {"podSelector": {}}}]}),
        "spec.ingress[0].from",
        "must be a list, got object",
        id="from-not-list",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": [{}, {"ports": 80}]}),
        "spec.ingress[1].ports",
        "must be a list, got integer",
        id="ports-not-list",
    ),
    # ports
    pytest.param(
        k8s_policy(ingress_ports({"protocol": "tcp", "port": 80})),
        "spec.ingress[0].ports[0].protocol",
        'must be one of TCP, UDP, SCTP, got "tcp"',
        id="protocol-case",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"protocol": "ICMP"})),
        "spec.ingress[0].ports[0].protocol",
        'must be one of TCP, UDP, SCTP, got "ICMP"',
        id="protocol-icmp",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": 0})),
        "spec.ingress[0].ports[0].port",
        "must be between 1 and 65535, got 0",
        id="port-zero",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": 80}, {"port": 70000})),
        "spec.ingress[0].ports[1].port",
        "must be between 1 and 65535, got 70000",
        id="port-too-big",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": -1})),
        "spec.ingress[0].ports[0].port",
        "must be between 1 and 65535, got -1",
        id="port-negative",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": "80"})),
        "spec.ingress[0].ports[0].port",
        'a named port must contain at least one letter (a-z), got "80" '
        "(a number must not be quoted)",
        id="port-numeric-string",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": "a" * 16})),
        "spec.ingress[0].ports[0].port",
        "a named port must be 1 to 15 characters long",
        id="port-name-too-long",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": ""})),
        "spec.ingress[0].ports[0].port",
        "a named port must be 1 to 15 characters long",
        id="port-name-empty",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": "HTTP"})),
        "spec.ingress[0].ports[0].port",
        "a named port must contain only lowercase letters, digits and '-'",
        id="port-name-uppercase",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": "web_http"})),
        "spec.ingress[0].ports[0].port",
        "a named port must contain only lowercase letters, digits and '-'",
        id="port-name-underscore",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": "web--http"})),
        "spec.ingress[0].ports[0].port",
        "a named port must not contain consecutive hyphens",
        id="port-name-double-hyphen",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": "http-"})),
        "spec.ingress[0].ports[0].port",
        "a named port must not begin or end with a hyphen",
        id="port-name-trailing-hyphen",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": True})),
        "spec.ingress[0].ports[0].port",
        "must be a port number or a port name, got boolean true",
        id="port-boolean",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": 80.5})),
        "spec.ingress[0].ports[0].port",
        "must be a port number or a port name, got number 80.5",
        id="port-float",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"endPort": 90})),
        "spec.ingress[0].ports[0].endPort",
        "may not be specified when `port` is not specified",
        id="endport-without-port",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": "http", "endPort": 90})),
        "spec.ingress[0].ports[0].endPort",
        "may not be specified when `port` is a named port",
        id="endport-with-named-port",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": 2000, "endPort": 1000})),
        "spec.ingress[0].ports[0].endPort",
        "must be greater than or equal to `port` (2000), got 1000",
        id="endport-below-port",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": 2000, "endPort": 70000})),
        "spec.ingress[0].ports[0].endPort",
        "must be between 1 and 65535, got 70000",
        id="endport-too-big",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"port": 2000, "endPort": "3000"})),
        "spec.ingress[0].ports[0].endPort",
        "must be an integer, got string",
        id="endport-string",
    ),
    # peers
    pytest.param(
        k8s_policy(ingress_from({})),
        "spec.ingress[0].from[0]",
        "must specify a peer: podSelector, namespaceSelector or ipBlock",
        id="peer-empty",
    ),
    pytest.param(
        k8s_policy(ingress_from(None)),
        "spec.ingress[0].from[0]",
        "must specify a peer",
        id="peer-null",
    ),
    pytest.param(
        k8s_policy(ingress_from({"podselector": {}})),
        "spec.ingress[0].from[0]",
        "must specify a peer: podSelector, namespaceSelector or ipBlock "
        "(unknown fields: podselector)",
        id="peer-misspelt",
    ),
    pytest.param(
        k8s_policy(ingress_from({"podSelector": {}}, "web")),
        "spec.ingress[0].from[1]",
        "must be an object, got string",
        id="peer-not-mapping",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})),
        "spec.ingress[0].from[0]",
        "may not specify both ipBlock and another peer",
        id="ipblock-and-pod-selector",
    ),
    pytest.param(
        k8s_policy(egress_to({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}})),
        "spec.egress[0].to[0]",
        "may not specify both ipBlock and another peer",
        id="ipblock-and-namespace-selector",
    ),
    # ipBlock
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {}})),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "required",
        id="cidr-missing",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": ""}})),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "required",
        id="cidr-empty",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/33"}})),
        "spec.ingress[0].from[0].ipBlock.cidr",
        'must be a valid CIDR such as 10.0.0.0/16 or 2001:db8::/64, got "10.0.0.0/33"',
        id="cidr-prefix-too-long",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.1"}})),
        "spec.ingress[0].from[0].ipBlock.cidr",
        'must be a valid CIDR such as 10.0.0.0/16 or 2001:db8::/64, got "10.0.0.1"',
        id="cidr-without-prefix",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/255.0.0.0"}})),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "must be a valid CIDR",
        id="cidr-netmask-form",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "fe80::/10%eth0"}})),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "must be a valid CIDR",
        id="cidr-zone",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": 10}})),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "must be a CIDR string, got integer",
        id="cidr-not-string",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/16", "except": "10.0.1.0/24"}})),
        "spec.ingress[0].from[0].ipBlock.except",
        "must be a list, got string",
        id="except-not-list",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/b"]}})),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "must be a valid CIDR",
        id="except-invalid",
    ),
    pytest.param(
        k8s_policy(
            egress_to(
                {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.1.0.0/24"]}}
            )
        ),
        "spec.egress[0].to[0].ipBlock.except[1]",
        "must be a strict subset of cidr 10.0.0.0/16, got 10.1.0.0/24",
        id="except-outside",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}})),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "must be a strict subset of cidr 10.0.0.0/16, got 10.0.0.0/16",
        id="except-equal",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}})),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "must be a strict subset of cidr 10.0.0.0/16, got 10.0.0.0/8",
        id="except-wider",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}})),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        'must be in the same IP family as cidr 10.0.0.0/16, got "fd00::/64"',
        id="except-other-family",
    ),
]


@pytest.mark.parametrize(("obj", "field", "reason"), BAD_POLICIES)
def test_policy_validation(obj: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(obj)
    assert caught.value.kind == "NetworkPolicy"
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value).endswith(f": {field}: {caught.value.reason}")


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    # peer-misspelt is a peer with only an unknown field: strict mode names that field instead.
    [row for row in BAD_POLICIES if row.id != "peer-misspelt"],
)
def test_policy_validation_is_the_same_in_strict_mode(
    obj: dict[str, Any], field: str, reason: str
) -> None:
    # Wrong types and values are not unknown fields: strict checks pass over them.
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(obj, strict=True)
    assert caught.value.field == field
    assert reason in caught.value.reason


# -- NetworkPolicy: unknown fields ----------------------------------------------------------

UNKNOWN_FIELDS = [
    # rules: to and from swapped, peers or port fields straight in the rule
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": [{"to": [{"podSelector": {}}]}]}),
        "spec.ingress[0].to",
        'did you mean "from"? ingress rules have from and ports',
        id="ingress-rule-to",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "egress": [{"from": [{"podSelector": {}}]}]}),
        "spec.egress[0].from",
        'did you mean "to"? egress rules have to and ports',
        id="egress-rule-from",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": [{"form": [{"podSelector": {}}]}]}),
        "spec.ingress[0].form",
        'did you mean "from"? ingress rules have from and ports',
        id="ingress-rule-form-typo",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "port": 80}]}),
        "spec.ingress[0].port",
        'did you mean "ports"? a rule\'s ports are a list: ports: [{protocol: TCP, port: 80}]',
        id="rule-port",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "egress": [{"ports": [{"port": 53}], "protocol": "UDP"}]}),
        "spec.egress[0].protocol",
        "a rule's ports are a list: ports: [{protocol: TCP, port: 80}]",
        id="rule-protocol",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": [{"podSelector": {"matchLabels": {"a": "b"}}}]}),
        "spec.ingress[0].podSelector",
        "peers go in a list under from: from: [{podSelector: ...}]",
        id="ingress-rule-peer-without-from",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "egress": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}),
        "spec.egress[0].ipBlock",
        "peers go in a list under to: to: [{podSelector: ...}]",
        id="egress-rule-peer-without-to",
    ),
    # peers
    pytest.param(
        k8s_policy(
            ingress_from({"podselector": {"matchLabels": {"app": "web"}}, "namespaceSelector": {}})
        ),
        "spec.ingress[0].from[0].podselector",
        'did you mean "podSelector"? peers have podSelector, namespaceSelector and ipBlock',
        id="peer-case",
    ),
    pytest.param(
        k8s_policy(egress_to({"namspaceSelector": {}})),
        "spec.egress[0].to[0].namspaceSelector",
        'did you mean "namespaceSelector"? peers have podSelector, namespaceSelector and ipBlock',
        id="peer-typo",
    ),
    pytest.param(
        k8s_policy(ingress_from({"podSelector": {}, "nodeSelector": {}})),
        "spec.ingress[0].from[0].nodeSelector",
        'did you mean "podSelector"? peers have podSelector, namespaceSelector and ipBlock',
        id="peer-node-selector",
    ),
    pytest.param(
        k8s_policy(ingress_from({"podSelector": {}, "ports": [{"port": 80}]})),
        "spec.ingress[0].from[0].ports",
        "ports belong to the rule, next to from or to, not to a peer",
        id="peer-ports",
    ),
    pytest.param(
        k8s_policy(egress_to({"cidr": "10.0.0.0/8"})),
        "spec.egress[0].to[0].cidr",
        "cidr and except go in ipBlock: {cidr: ...}",
        id="peer-cidr",
    ),
    # ipBlock
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"cidr": "10.0.0.0/8", "excepts": ["10.1.0.0/16"]}})),
        "spec.ingress[0].from[0].ipBlock.excepts",
        'did you mean "except"? ipBlocks have cidr and except',
        id="ipblock-excepts",
    ),
    pytest.param(
        k8s_policy(ingress_from({"ipBlock": {"CIDR": "10.0.0.0/8"}})),
        "spec.ingress[0].from[0].ipBlock.CIDR",
        'did you mean "cidr"? ipBlocks have cidr and except',
        id="ipblock-case",
    ),
    # policy ports
    pytest.param(
        k8s_policy(ingress_ports({"port": 8000, "endport": 9000})),
        "spec.ingress[0].ports[0].endport",
        'did you mean "endPort"? policy ports have protocol, port and endPort',
        id="port-case",
    ),
    pytest.param(
        k8s_policy(ingress_ports({"targetPort": 80})),
        "spec.ingress[0].ports[0].targetPort",
        'did you mean "port"? policy ports have protocol, port and endPort',
        id="port-target-port",
    ),
    # label selectors
    pytest.param(
        k8s_policy(pod_selector({"app": "db"})),
        "spec.podSelector.app",
        "label selectors have matchLabels and matchExpressions; to select on the label app, "
        "write matchLabels: {app: ...}",
        id="selector-labels-without-match-labels",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchlabels": {"app": "db"}})),
        "spec.podSelector.matchlabels",
        'did you mean "matchLabels"? label selectors have matchLabels and matchExpressions',
        id="selector-case",
    ),
    pytest.param(
        k8s_policy(pod_selector({"matchLabel": {"app": "db"}})),
        "spec.podSelector.matchLabel",
        'did you mean "matchLabels"? label selectors have matchLabels and matchExpressions',
        id="selector-singular",
    ),
    pytest.param(
        k8s_policy(pod_selector({"key": "app", "operator": "Exists"})),
        "spec.podSelector.key",
        "label selectors have matchLabels and matchExpressions; key, operator and values go in "
        "an entry of matchExpressions",
        id="selector-requirement-without-match-expressions",
    ),
    pytest.param(
        k8s_policy(ingress_from({"podSelector": {"matchLabels": {}, "namespaceSelector": {}}})),
        "spec.ingress[0].from[0].podSelector.namespaceSelector",
        "namespaceSelector is a field of peers, not of label selectors: check the indentation",
        id="selector-nested-in-selector",
    ),
    pytest.param(
        k8s_policy(
            pod_selector({"matchExpressions": [{"key": "a", "operator": "In", "value": ["x"]}]})
        ),
        "spec.podSelector.matchExpressions[0].value",
        'did you mean "values"? label selector requirements have key, operator and values',
        id="requirement-singular",
    ),
    # spec
    pytest.param(
        k8s_policy({"podSelector": {}, "policyType": ["Egress"]}),
        "spec.policyType",
        'did you mean "policyTypes"? NetworkPolicy specs have podSelector, policyTypes, ingress '
        "and egress",
        id="spec-singular",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "Ingress": [{"from": [{"podSelector": {}}]}]}),
        "spec.Ingress",
        'did you mean "ingress"? NetworkPolicy specs have podSelector, policyTypes, ingress and '
        "egress",
        id="spec-case",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "from": [{"podSelector": {}}]}),
        "spec.from",
        "from belongs in an ingress rule: ingress: [{from: [...]}]",
        id="spec-from",
    ),
    pytest.param(
        k8s_policy({"podSelector": {}, "ingress": [], "ports": [{"port": 80}]}),
        "spec.ports",
        "ports belong in a rule: ingress: [{ports: [...]}] or egress: [{ports: [...]}]",
        id="spec-ports",
    ),
    # top level and metadata
    pytest.param(
        {**k8s_policy(None), "podSelector": {"matchLabels": {"app": "db"}}},
        "podSelector",
        "it belongs in spec",
        id="top-level-spec-field",
    ),
    pytest.param(
        {**k8s_policy({}), "Spec": {}},
        "Spec",
        'did you mean "spec"? NetworkPolicies have apiVersion, kind, metadata, spec and status',
        id="top-level-case",
    ),
    pytest.param(
        {**k8s_policy(None), "labels": {"app": "db"}},
        "labels",
        "it belongs in metadata",
        id="top-level-metadata-field",
    ),
    pytest.param(
        {"metadata": {"name": "allow-db", "namespace": "default", "spec": {"podSelector": {}}}},
        "metadata.spec",
        "it belongs at the top level, not in metadata: check the indentation",
        id="metadata-indented-spec",
    ),
    pytest.param(
        {"metadata": {"name": "allow-db", "namespace": "default", "Labels": {}}},
        "metadata.Labels",
        'did you mean "labels"?',
        id="metadata-case",
    ),
]


@pytest.mark.parametrize(("obj", "field", "hint"), UNKNOWN_FIELDS)
def test_strict_rejects_unknown_fields_with_a_hint(obj: Any, field: str, hint: str) -> None:
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(obj, strict=True)
    assert (caught.value.kind, caught.value.object_name) == ("NetworkPolicy", "default/allow-db")
    assert caught.value.field == field
    assert caught.value.reason == f"unknown field ({hint})"


@pytest.mark.parametrize(("obj", "field", "hint"), UNKNOWN_FIELDS)
def test_lenient_ignores_unknown_fields(obj: Any, field: str, hint: str) -> None:
    # As if the field were absent: the same policy, or the same error at the same field.
    assert outcome(obj) == outcome(without(obj, field))


def test_lenient_mode_is_why_files_are_strict() -> None:
    # `to` in an ingress rule leaves a rule without peers, which allows every source.
    obj = k8s_policy({"podSelector": {}, "ingress": [{"to": [{"podSelector": {}}]}]})
    assert policy_from_k8s(obj).ingress == (Rule(),)


def test_strict_names_an_unknown_field_without_a_near_miss() -> None:
    obj = k8s_policy({})
    obj["metadata"]["clusterName"] = "east"  # removed from ObjectMeta in Kubernetes 1.25
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(obj, strict=True)
    assert (
        str(caught.value) == "NetworkPolicy default/allow-db: metadata.clusterName: unknown field"
    )


def test_strict_reports_unknown_fields_before_bad_values() -> None:
    # Like kubectl: decoding fails before validation, and the slip is likelier the cause.
    spec = {"podSelector": {}, "ingress": [{"ports": [{"port": 0}], "to": [{}]}]}
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(k8s_policy(spec), strict=True)
    assert caught.value.field == "spec.ingress[0].to"


def test_strict_reports_the_first_unknown_field() -> None:
    spec = {"podSelector": {"app": "db"}, "ingress": [{"to": []}]}
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(k8s_policy(spec), strict=True)
    assert caught.value.field == "spec.podSelector.app"


def test_strict_accepts_every_object_meta_field_and_status() -> None:
    # As `kubectl get networkpolicy -o yaml` prints it; ObjectMeta's contents are not checked.
    obj = k8s_policy({"podSelector": {}, "policyTypes": ["Ingress"]})
    obj["metadata"].update(
        {
            "generateName": "allow-",
            "selfLink": "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/allow-db",
            "uid": "7c1b2f9e-0000-4000-8000-000000000000",
            "resourceVersion": "4711",
            "generation": 3,
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "deletionTimestamp": "2024-05-02T10:00:00Z",
            "deletionGracePeriodSeconds": 0,
            "labels": {"app": "db"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u"}],
            "finalizers": ["example.com/keep"],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}, "anything": 1}],
        }
    )
    obj["status"] = {"conditions": []}
    assert policy_from_k8s(obj, strict=True) == policy_from_k8s(obj)


def test_strict_passes_over_non_mappings() -> None:
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s("junk", strict=True)  # type: ignore[arg-type]
    assert caught.value.reason == "must be an object, got string"


def outcome(obj: Any) -> Any:
    """The lenient conversion's policy, or the field it fails at."""
    try:
        return policy_from_k8s(obj)
    except ConversionError as error:
        return ("error", error.field)


def without(obj: Any, path: str) -> Any:
    """A copy of ``obj`` without the field at ``path`` (``spec.ingress[0].to``; no dotted keys)."""
    copy = deepcopy(obj)
    *parents, last = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node = copy
    for step in parents:
        node = node[int(step[1:-1])] if step.startswith("[") else node[step]
    del node[last]
    return copy


# -- fail_closed_policy -------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "field", "reason"), BAD_POLICIES)
def test_fail_closed_never_allows_anything(obj: dict[str, Any], field: str, reason: str) -> None:
    stand_in = fail_closed_policy(obj)
    assert stand_in.ingress == ()
    assert stand_in.egress == ()
    assert stand_in.policy_types  # isolates at least one direction


@pytest.mark.parametrize(
    ("spec", "pod_selector", "types"),
    [
        pytest.param(
            {
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]},
                "ingress": [{}],
            },
            SELECT_ALL,
            INGRESS,
            id="broken-selector-selects-all",
        ),
        pytest.param(
            {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"ports": [{"port": 70000}]}],
            },
            selector(app="db"),
            INGRESS,
            id="broken-ports-keep-selector",
        ),
        pytest.param(
            {
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{}]}],
            },
            selector(app="db"),
            EGRESS,
            id="declared-egress-only",
        ),
        pytest.param(
            {"podSelector": {"matchLabels": {"app": "db"}}, "egress": [{"to": [{}]}]},
            selector(app="db"),
            BOTH,
            id="defaulted-types-with-egress-rules",
        ),
        pytest.param(
            {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["ingres"]},
            selector(app="db"),
            BOTH,
            id="unreadable-types-both",
        ),
        pytest.param(
            {"podSelector": {}, "egress": "everything"},
            SELECT_ALL,
            BOTH,
            id="unreadable-egress-both",
        ),
        pytest.param("junk", SELECT_ALL, BOTH, id="spec-not-mapping"),
    ],
)
def test_fail_closed_policy(spec: Any, pod_selector: Any, types: frozenset[Direction]) -> None:
    obj = k8s_policy(spec)
    with pytest.raises(ConversionError):
        policy_from_k8s(obj)
    stand_in = fail_closed_policy(obj)
    assert (stand_in.namespace, stand_in.name) == ("default", "allow-db")
    assert stand_in.pod_selector == pod_selector
    assert stand_in.policy_types == types
    assert stand_in.ingress == stand_in.egress == ()


def test_fail_closed_policy_survives_garbage() -> None:
    stand_in = fail_closed_policy({"metadata": ["x"], "spec": 3})
    assert (stand_in.namespace, stand_in.name) == ("", "")
    assert stand_in.pod_selector == SELECT_ALL
    assert stand_in.policy_types == BOTH


# -- Namespace ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            {"metadata": {"name": "prod", "labels": {"team": "a"}}},
            make_namespace("prod", team="a"),
            id="labels-plus-name-label",
        ),
        pytest.param({"metadata": {"name": "prod"}}, make_namespace("prod"), id="no-labels"),
        pytest.param(
            {"metadata": {"name": "prod", "labels": {"kubernetes.io/metadata.name": "other"}}},
            make_namespace("prod"),
            id="name-label-overridden",
        ),
    ],
)
def test_namespace(obj: dict[str, Any], expected: Any) -> None:
    namespace = namespace_from_k8s(obj)
    assert namespace == expected
    assert namespace.labels["kubernetes.io/metadata.name"] == "prod"


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        pytest.param({"metadata": {}}, "metadata.name", "required", id="no-name"),
        pytest.param(
            {"metadata": {"name": "prod.eu"}},
            "metadata.name",
            "must be a DNS-1123 label",
            id="name-not-label",
        ),
        pytest.param(
            {"metadata": {"name": "prod", "labels": {"team": True}}},
            "metadata.labels[team]",
            "must be a string, got boolean true",
            id="label-not-string",
        ),
        pytest.param(
            {"metadata": {"name": "prod", "labels": {"team": None}}},
            "metadata.labels[team]",
            "must be a string, got null (quote it in YAML)",
            id="label-null",
        ),
        pytest.param(
            {"metadata": {"name": "prod", "labels": "team=a"}},
            "metadata.labels",
            "must be an object, got string",
            id="labels-not-mapping",
        ),
    ],
)
def test_namespace_validation(obj: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ConversionError) as caught:
        namespace_from_k8s(obj)
    assert caught.value.kind == "Namespace"
    assert caught.value.field == field
    assert reason in caught.value.reason


# -- Pod ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ips"),
    [
        pytest.param(None, (), id="no-status"),
        pytest.param({}, (), id="empty-status"),
        pytest.param({"phase": "Pending"}, (), id="pending"),
        pytest.param({"podIP": "10.0.0.5"}, addresses("10.0.0.5"), id="podip-fallback"),
        pytest.param({"podIP": "", "podIPs": []}, (), id="empty-podip"),
        pytest.param(
            {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]},
            addresses("10.0.0.5", "fd00::5"),
            id="dual-stack",
        ),
        pytest.param(
            {"podIPs": [{"ip": "fd00::5"}, {"ip": "10.0.0.5"}]},
            addresses("fd00::5", "10.0.0.5"),
            id="ipv6-primary",
        ),
        pytest.param(
            {"podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.5"}]},
            addresses("10.0.0.5"),
            id="podips-preferred",
        ),
        pytest.param(
            {"phase": "Running", "podIP": "10.0.0.5"}, addresses("10.0.0.5"), id="running"
        ),
        pytest.param({"phase": "Succeeded", "podIP": "10.0.0.5"}, (), id="succeeded-no-ip"),
        pytest.param({"phase": "Failed", "podIPs": [{"ip": "10.0.0.5"}]}, (), id="failed-no-ip"),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_pod_ips(status: Any, ips: tuple[Any, ...], strict: bool) -> None:
    assert pod_from_k8s(k8s_pod(status=status), strict=strict).ips == ips


@pytest.mark.parametrize("strict", MODES)
def test_pod_record(strict: bool) -> None:
    spec = {
        "nodeName": "node-2",
        "hostNetwork": True,
        "initContainers": [
            {"name": "setup", "ports": [{"containerPort": 9999, "name": "setup"}]},
            {
                "name": "proxy",
                "restartPolicy": "Always",
                "ports": [{"containerPort": 15001, "name": "proxy"}],
            },
        ],
        "containers": [
            {
                "name": "app",
                "ports": [
                    {"containerPort": 8080, "name": "http"},
                    {"containerPort": 53, "protocol": "UDP", "name": "dns"},
                    {"containerPort": 9090, "hostPort": 9090},
                ],
            },
            {"name": "metrics", "ports": [{"containerPort": 9100, "protocol": "SCTP"}]},
            {"name": "no-ports"},
        ],
    }
    obj = k8s_pod(spec, labels={"app": "web"}, status={"podIP": "10.0.0.5"})
    pod = pod_from_k8s(obj, strict=strict)
    assert (pod.namespace, pod.name, pod.key) == ("prod", "web", "prod/web")
    assert pod.labels == Labels({"app": "web"})
    assert pod.node_name == "node-2"
    assert pod.host_network is True
    assert pod.ports == (
        ContainerPort(8080, "TCP", "http"),
        ContainerPort(53, "UDP", "dns"),
        ContainerPort(9090),
        ContainerPort(9100, "SCTP"),
        ContainerPort(15001, "TCP", "proxy"),
    )
    assert pod.named_port("proxy", "TCP") == 15001  # sidecar ports count
    assert pod.named_port("setup", "TCP") is None  # plain init containers do not


@pytest.mark.parametrize("strict", MODES)
def test_pod_defaults(strict: bool) -> None:
    pod = pod_from_k8s(k8s_pod(), strict=strict)
    assert pod.ports == ()
    assert pod.node_name is None
    assert pod.host_network is False
    assert pod.labels == Labels()


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        pytest.param(
            {"metadata": {"name": "web"}}, "metadata.namespace", "required", id="no-namespace"
        ),
        pytest.param(
            k8s_pod(name="Web"), "metadata.name", "must be a DNS-1123 subdomain", id="bad-name"
        ),
        pytest.param(
            k8s_pod(labels={"app": ["web"]}),
            "metadata.labels[app]",
            "must be a string, got list",
            id="label-not-string",
        ),
        pytest.param(
            k8s_pod(status={"podIPs": [{"ip": "10.0.0.5"}, {"ip": "10.0.0.6"}]}),
            "status.podIPs[1].ip",
            "at most one address per IP family, already have 10.0.0.5, got 10.0.0.6",
            id="two-ipv4",
        ),
        pytest.param(
            k8s_pod(status={"podIPs": [{"ip": "10.0.0.256"}]}),
            "status.podIPs[0].ip",
            'must be a valid IP address, got "10.0.0.256"',
            id="bad-ip",
        ),
        pytest.param(
            k8s_pod(status={"podIPs": [{}]}),
            "status.podIPs[0].ip",
            "must be an IP address, got null",
            id="podips-entry-without-ip",
        ),
        pytest.param(
            k8s_pod(status={"podIPs": "10.0.0.5"}),
            "status.podIPs",
            "must be a list, got string",
            id="podips-not-list",
        ),
        pytest.param(
            k8s_pod(status={"podIP": 167772165}),
            "status.podIP",
            "must be an IP address, got 167772165",
            id="podip-not-string",
        ),
        pytest.param(
            k8s_pod({"containers": {"name": "app"}}),
            "spec.containers",
            "must be a list, got object",
            id="containers-not-list",
        ),
        pytest.param(
            k8s_pod({"containers": [{"ports": [{"name": "http"}]}]}),
            "spec.containers[0].ports[0].containerPort",
            "required",
            id="container-port-missing",
        ),
        pytest.param(
            k8s_pod({"containers": [{"ports": [{"containerPort": 0}]}]}),
            "spec.containers[0].ports[0].containerPort",
            "must be between 1 and 65535, got 0",
            id="container-port-zero",
        ),
        pytest.param(
            k8s_pod({"containers": [{"ports": [{"containerPort": "8080"}]}]}),
            "spec.containers[0].ports[0].containerPort",
            'must be an integer, got string "8080"',
            id="container-port-string",
        ),
        pytest.param(
            k8s_pod({"containers": [{}, {"ports": [{"containerPort": 80, "protocol": "HTTP"}]}]}),
            "spec.containers[1].ports[0].protocol",
            'must be one of TCP, UDP, SCTP, got "HTTP"',
            id="container-protocol",
        ),
        pytest.param(
            k8s_pod({"containers": [{"ports": [{"containerPort": 80, "name": "Web"}]}]}),
            "spec.containers[0].ports[0].name",
            "must contain only lowercase letters, digits and '-', got \"Web\"",
            id="container-port-name",
        ),
        pytest.param(
            k8s_pod(
                {
                    "containers": [],
                    "initContainers": [
                        {"restartPolicy": "Always", "ports": [{"containerPort": 99999}]}
                    ],
                }
            ),
            "spec.initContainers[0].ports[0].containerPort",
            "must be between 1 and 65535, got 99999",
            id="sidecar-port",
        ),
        pytest.param(
            k8s_pod({"containers": [], "hostNetwork": "yes"}),
            "spec.hostNetwork",
            'must be a boolean, got string "yes"',
            id="host-network-not-bool",
        ),
        pytest.param(
            k8s_pod({"containers": [], "nodeName": 7}),
            "spec.nodeName",
            "must be a string, got integer",
            id="node-name-not-string",
        ),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_pod_validation(obj: dict[str, Any], field: str, reason: str, strict: bool) -> None:
    with pytest.raises(ConversionError) as caught:
        pod_from_k8s(obj, strict=strict)
    assert caught.value.kind == "Pod"
    assert caught.value.field == field
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("ports", "field", "hint"),
    [
        pytest.param(
            [{"port": 80}],
            "spec.containers[0].ports[0].port",
            'did you mean "containerPort"? container ports have containerPort, protocol, name, '
            "hostPort and hostIP",
            id="port",
        ),
        pytest.param(
            [{"containerPort": 80}, {"containerport": 8080, "name": "http"}],
            "spec.containers[0].ports[1].containerport",
            'did you mean "containerPort"? container ports have containerPort, protocol, name, '
            "hostPort and hostIP",
            id="case",
        ),
        pytest.param(
            [{"hostIp": "0.0.0.0"}],
            "spec.containers[0].ports[0].hostIp",
            'did you mean "hostIP"? container ports have containerPort, protocol, name, '
            "hostPort and hostIP",
            id="host-ip-case",
        ),
    ],
)
def test_pod_strict_rejects_unknown_port_fields(ports: Any, field: str, hint: str) -> None:
    obj = k8s_pod({"containers": [{"name": "app", "ports": ports}]})
    with pytest.raises(ConversionError) as caught:
        pod_from_k8s(obj, strict=True)
    assert caught.value.field == field
    assert caught.value.reason == f"unknown field ({hint})"
    with pytest.raises(ConversionError) as lenient:  # ignored: the entry has no containerPort
        pod_from_k8s(obj)
    assert lenient.value.field == field.rpartition(".")[0] + ".containerPort"


def test_pod_strict_checks_only_the_ports_it_reads() -> None:
    # Pods are lenient but for the ports entries that define named ports: unknown fields
    # elsewhere, and in plain init containers' ports (never read), are not errors.
    obj = k8s_pod(
        {
            "containers": [
                {
                    "name": "app",
                    "image": "nginx",
                    "resources": {"limits": {"cpu": "1"}},
                    "futureField": True,
                    "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": "0.0.0.0"}],
                }
            ],
            "initContainers": [{"name": "setup", "ports": [{"port": 1}]}],
            "volumes": [],
        },
        status={"podIP": "10.0.0.5", "conditions": []},
    )
    obj["metadata"]["uid"] = "u"
    obj["metadata"]["futureField"] = 1
    assert pod_from_k8s(obj, strict=True) == pod_from_k8s(obj)


# -- addresses as the API server reads them (ParseIPSloppy, ParseCIDRSloppy) -------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("010.244.1.3", "10.244.1.3", id="leading-zero-is-decimal-not-octal"),
        pytest.param("010.010.010.010", "10.10.10.10", id="every-octet"),
        pytest.param("0000000000255.0.0.01", "255.0.0.1", id="many-zeros"),
        pytest.param("000.0.0.0", "0.0.0.0", id="zeros-only"),
        pytest.param("10.244.1.3", "10.244.1.3", id="plain-ipv4"),
        pytest.param("::ffff:10.244.1.3", "10.244.1.3", id="ipv4-mapped-is-ipv4"),
        pytest.param("::ffff:010.244.1.3", "10.244.1.3", id="ipv4-mapped-with-leading-zero"),
        pytest.param("::FFFF:af4:103", "10.244.1.3", id="ipv4-mapped-in-hex"),
        pytest.param("::10.244.1.3", "::af4:103", id="ipv4-compatible-stays-ipv6"),
        pytest.param("64:ff9b::010.0.0.1", "64:ff9b::a00:1", id="embedded-ipv4-leading-zero"),
        pytest.param("FD00:0:0:0:0:0:0:1", "fd00::1", id="non-canonical-ipv6"),
    ],
)
def test_parse_ip_sloppy(text: str, expected: str) -> None:
    assert parse_ip(text, strict=False) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("10.244.1.256", id="octet-too-big"),
        pytest.param("0777.1.1.1", id="octal-looking-too-big"),
        pytest.param("1.2.3", id="three-octets"),
        pytest.param("1.2.3.4.5", id="five-octets"),
        pytest.param("", id="empty"),
        pytest.param("0x0a.1.2.3", id="hex-octet"),
        pytest.param("1_0.1.2.3", id="underscore"),
        pytest.param("\uff11.2.3.4", id="non-ascii-digit"),
        pytest.param(" 10.0.0.1", id="leading-space"),
        pytest.param("10.0.0.1\n", id="trailing-newline"),
        pytest.param("fe80::1%eth0", id="zone"),
        pytest.param("::ffff:1.2.3", id="short-embedded-ipv4"),
        pytest.param("1" + "0" * 5000 + ".0.0.1", id="huge-octet"),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_parse_ip_refuses(text: str, strict: bool) -> None:
    with pytest.raises(ValueError, match="must be a valid IP address"):
        parse_ip(text, strict=strict)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("010.244.1.3", "without leading zeros", id="leading-zero"),
        pytest.param("::ffff:010.1.2.3", "without leading zeros", id="mapped-leading-zero"),
        pytest.param("::ffff:10.244.1.3", "not an IPv4-mapped IPv6 address", id="mapped"),
    ],
)
def test_parse_ip_strict_refuses_the_sloppy_forms(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_ip(text, strict=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("010.0.0.0/8", "10.0.0.0/8", id="leading-zero-is-decimal"),
        pytest.param("10.0.0.0/08", "10.0.0.0/8", id="prefix-leading-zero"),
        pytest.param("10.0.0.1/24", "10.0.0.0/24", id="host-bits"),
        pytest.param("::ffff:10.0.0.0/104", "10.0.0.0/8", id="ipv4-mapped-is-ipv4"),
        pytest.param("::ffff:10.1.2.3/128", "10.1.2.3/32", id="ipv4-mapped-host"),
        pytest.param("::ffff:10.0.0.0/90", "::ffc0:0:0/90", id="mapped-prefix-below-96"),
        pytest.param("2001:db8::1/64", "2001:db8::/64", id="ipv6"),
    ],
)
def test_parse_cidr_sloppy(text: str, expected: str) -> None:
    assert parse_cidr(text, strict=False) == ipaddress.ip_network(expected)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("10.0.0.0/33", id="prefix-too-long"),
        pytest.param("::ffff:10.0.0.0/129", id="mapped-prefix-too-long"),
        pytest.param("10.0.0.0", id="no-prefix"),
        pytest.param("10.0.0.0/", id="empty-prefix"),
        pytest.param("10.0.0.0/-1", id="negative-prefix"),
        pytest.param("10.0.0.0/255.0.0.0", id="netmask"),
        pytest.param("fe80::/10%eth0", id="zone"),
        pytest.param("10.0.0.0/8 ", id="trailing-space"),
        pytest.param("010.0.0.256/8", id="bad-address"),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_parse_cidr_refuses(text: str, strict: bool) -> None:
    with pytest.raises(ValueError, match="must be a valid CIDR"):
        parse_cidr(text, strict=strict)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("010.0.0.0/8", "without leading zeros", id="leading-zero"),
        pytest.param("10.0.0.0/08", "without leading zeros in the prefix", id="prefix-zero"),
        pytest.param("::ffff:10.0.0.0/104", "not an IPv4-mapped", id="mapped"),
    ],
)
def test_parse_cidr_strict_refuses_the_sloppy_forms(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cidr(text, strict=True)


def test_pod_ip_with_leading_zeros_is_read_as_the_api_server_reads_it() -> None:
    # The attack of issue 7: the API server stores "010.244.1.3" (sloppy legacy validation);
    # every Go component reads 10.244.1.3. So must we, or the pod drops out of the tables.
    obj = k8s_pod(status={"podIP": "010.244.1.3", "podIPs": [{"ip": "010.244.1.3"}]})
    assert pod_from_k8s(obj).ips == addresses("10.244.1.3")
    # A file a person writes is held to the strict rule, with a clear error.
    with pytest.raises(ConversionError) as caught:
        pod_from_k8s(obj, strict=True)
    assert caught.value.field == "status.podIPs[0].ip"
    assert "without leading zeros" in caught.value.reason


def test_pod_ipv4_mapped_address_counts_as_ipv4() -> None:
    obj = k8s_pod(status={"podIPs": [{"ip": "::ffff:10.0.0.5"}, {"ip": "10.0.0.6"}]})
    with pytest.raises(ConversionError) as caught:
        pod_from_k8s(obj)
    assert caught.value.field == "status.podIPs[1].ip"
    assert "at most one address per IP family" in caught.value.reason


def test_ip_block_with_leading_zeros_is_read_as_the_api_server_reads_it() -> None:
    obj = k8s_policy(
        ingress_from({"ipBlock": {"cidr": "010.0.0.0/08", "except": ["010.1.0.0/16"]}})
    )
    block = policy_from_k8s(obj).ingress[0].peers[0].ip_block
    expected = IPBlock(ipaddress.ip_network("10.0.0.0/8"), (ipaddress.ip_network("10.1.0.0/16"),))
    assert block == expected
    with pytest.raises(ConversionError) as caught:
        policy_from_k8s(obj, strict=True)
    assert caught.value.field == "spec.ingress[0].from[0].ipBlock.cidr"
    assert "without leading zeros" in caught.value.reason


def test_ip_block_ipv4_mapped_except_is_ipv4() -> None:
    # Go matches a mapped except against IPv4 addresses: it must cut the IPv4 range here too.
    obj = k8s_policy(
        ingress_from({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["::ffff:10.1.0.0/112"]}})
    )
    block = policy_from_k8s(obj).ingress[0].peers[0].ip_block
    assert block is not None and block.excepts == (ipaddress.ip_network("10.1.0.0/16"),)
    assert not block.contains(ipaddress.ip_address("10.1.2.3"))


# -- container port names (validateContainerPorts) ----------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param(
            {
                "containers": [
                    {
                        "name": "app",
                        "ports": [
                            {"containerPort": 8080, "name": "http"},
                            {"containerPort": 8081, "name": "http"},
                        ],
                    }
                ]
            },
            "spec.containers[0].ports[1].name",
            id="same-container",
        ),
        pytest.param(
            {
                "containers": [
                    {
                        "name": "app",
                        "ports": [
                            {"containerPort": 53, "name": "dns"},
                            {"containerPort": 53, "protocol": "UDP", "name": "dns"},
                        ],
                    }
                ]
            },
            "spec.containers[0].ports[1].name",
            id="same-container-other-protocol",
        ),
        pytest.param(
            {
                "containers": [{"name": "app"}],
                "initContainers": [
                    {
                        "name": "proxy",
                        "restartPolicy": "Always",
                        "ports": [
                            {"containerPort": 15001, "name": "proxy"},
                            {"containerPort": 15002, "name": "proxy"},
                        ],
                    }
                ],
            },
            "spec.initContainers[0].ports[1].name",
            id="same-sidecar",
        ),
    ],
)
@pytest.mark.parametrize("strict", MODES)
def test_duplicate_port_names_in_one_container_are_refused(
    spec: dict[str, Any], field: str, strict: bool
) -> None:
    with pytest.raises(ConversionError) as caught:
        pod_from_k8s(k8s_pod(spec), strict=strict)
    assert caught.value.field == field
    assert "duplicate port name" in caught.value.reason
    assert field.replace("[1]", "[0]") in caught.value.reason  # names the first one too


@pytest.mark.parametrize("strict", MODES)
def test_duplicate_port_names_across_containers_are_accepted_first_wins(strict: bool) -> None:
    # The API server only warns here ("services and probes that select ports by name will use"
    # the first); a NetworkPolicy named port resolves to the first declaration as well.
    spec = {
        "containers": [
            {"name": "a", "ports": [{"containerPort": 8080, "name": "http"}]},
            {"name": "b", "ports": [{"containerPort": 9090, "name": "http"}]},
        ],
        "initContainers": [
            {
                "name": "proxy",
                "restartPolicy": "Always",
                "ports": [{"containerPort": 15001, "name": "http"}],
            }
        ],
    }
    pod = pod_from_k8s(k8s_pod(spec), strict=strict)
    assert pod.named_port("http", "TCP") == 8080
    assert len(pod.ports) == 3


# -- fail_closed_pod: what is enforced for a pod that cannot be read -----------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            k8s_pod(
                {"nodeName": "node-1"},
                status={"podIP": "10.0.0.5"},
                labels={"app": "bad value!"},
            ),
            UnreadablePod("prod", "web", addresses("10.0.0.5"), "node-1"),
            id="bad-label",
        ),
        pytest.param(
            k8s_pod(
                {"nodeName": "node-1", "containers": "not a list"},
                status={
                    "podIP": "10.0.0.7",
                    "podIPs": [{"ip": "010.0.0.5"}, {"ip": "junk"}, "text", {"ip": "fd00::5"}],
                },
            ),
            UnreadablePod("prod", "web", addresses("10.0.0.5", "fd00::5", "10.0.0.7"), "node-1"),
            id="every-readable-address",
        ),
        pytest.param(
            k8s_pod({"nodeName": 7}, status={"podIPs": "10.0.0.5", "podIP": "10.0.0.5"}),
            UnreadablePod("prod", "web", addresses("10.0.0.5"), None),
            id="node-unknown",
        ),
        pytest.param(
            k8s_pod({"hostNetwork": True, "nodeName": "n"}, status={"podIP": "10.0.0.5"}),
            UnreadablePod("prod", "web", (), "n"),
            id="host-network-claims-no-address",
        ),
        pytest.param(
            k8s_pod({"nodeName": "n"}, status={"phase": "Succeeded", "podIP": "10.0.0.5"}),
            UnreadablePod("prod", "web", (), "n"),
            id="terminal-claims-no-address",
        ),
        pytest.param(
            k8s_pod(
                {"hostNetwork": "yes", "nodeName": "n"},
                status={"phase": ["Succeeded"], "podIP": "10.0.0.5"},
            ),
            UnreadablePod("prod", "web", addresses("10.0.0.5"), "n"),
            id="unreadable-host-network-and-phase-keep-the-address",
        ),
        pytest.param(
            {"metadata": "x", "spec": [], "status": 5}, UnreadablePod("", "", (), None), id="junk"
        ),
        pytest.param(["not", "an", "object"], UnreadablePod("", "", (), None), id="not-a-map"),
    ],
)
def test_fail_closed_pod(obj: Any, expected: UnreadablePod) -> None:
    assert fail_closed_pod(obj, "why") == UnreadablePod(
        expected.namespace, expected.name, expected.ips, expected.node_name, "why"
    )
