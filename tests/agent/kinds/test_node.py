"""Tests for agent/kinds/node.py: v1 Nodes in, Node records (for ``nodes`` peers) out."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from agent.convert import ConversionError
from agent.kinds.node import node_from_k8s
from enforcement.model import Labels, Node


def k8s_node(addresses: Any = None, labels: Any = None, name: Any = "node-1") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": metadata}
    if addresses is not None:
        obj["status"] = {"addresses": addresses}
    return obj


def addresses(*texts: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return tuple(ipaddress.ip_address(text) for text in texts)


VALID_CASES = [
    pytest.param(k8s_node(), Node("node-1"), id="no-status"),
    pytest.param(
        k8s_node(
            [
                {"type": "Hostname", "address": "node-1"},
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "InternalIP", "address": "fd00::5"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "InternalDNS", "address": "node-1.internal"},
                {"type": "ExternalIP", "address": "10.0.0.5"},
            ],
            labels={"kubernetes.io/hostname": "node-1", "zone": "a"},
        ),
        Node(
            "node-1",
            Labels({"kubernetes.io/hostname": "node-1", "zone": "a"}),
            addresses("10.0.0.5", "fd00::5", "203.0.113.5"),
        ),
        id="ip-types-only-each-once-in-order",
    ),
]


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
@pytest.mark.parametrize(("obj", "expected"), VALID_CASES)
def test_valid(obj: dict[str, Any], expected: Node, strict: bool) -> None:
    assert node_from_k8s(obj, strict=strict) == expected


def test_sloppy_addresses_are_read_from_a_cluster_and_refused_in_files() -> None:
    obj = k8s_node([{"type": "InternalIP", "address": "010.000.000.005"}])
    assert node_from_k8s(obj).addresses == addresses("10.0.0.5")
    with pytest.raises(ConversionError, match=r"status\.addresses\[0\]\.address: .*leading zeros"):
        node_from_k8s(obj, strict=True)


INVALID_CASES = [
    pytest.param(k8s_node(name=None), "metadata.name", "required", id="no-name"),
    pytest.param(k8s_node(name="Node_1"), "metadata.name", "DNS-1123 subdomain", id="bad-name"),
    pytest.param(
        k8s_node(labels={"zone": ["a"]}), "metadata.labels[zone]", "must be a string", id="label"
    ),
    pytest.param(
        k8s_node([{"type": "InternalIP", "address": "10.0.0.500"}]),
        "status.addresses[0].address",
        "must be a valid IP address",
        id="bad-address",
    ),
    pytest.param(
        k8s_node([{"type": "ExternalIP"}]),
        "status.addresses[0].address",
        "must be an IP address, got null",
        id="no-address",
    ),
    pytest.param(
        k8s_node([{"type": 4, "address": "10.0.0.1"}]),
        "status.addresses[0].type",
        "must be a string",
        id="type-integer",
    ),
    pytest.param(k8s_node({"a": 1}), "status.addresses", "must be a list", id="not-a-list"),
    pytest.param("node-1", "", "must be an object, got string", id="not-an-object"),
]


@pytest.mark.parametrize(("obj", "field", "message"), INVALID_CASES)
def test_invalid(obj: Any, field: str, message: str) -> None:
    with pytest.raises(ConversionError) as caught:
        node_from_k8s(obj)
    assert caught.value.kind == "Node"
    assert caught.value.field == field
    assert message in caught.value.reason
