"""The edge for Nodes: a v1 Node in, an ``enforcement.model.Node`` out (for ``nodes`` peers).

A ClusterNetworkPolicy ``nodes`` peer selects nodes by their labels and matches "the IPs
present in the node.Status.Addresses field of the node" (network-policy-api,
``ClusterNetworkPolicyEgressPeer.Nodes``). Of those, the addresses of types ``InternalIP`` and
``ExternalIP`` are IP addresses; ``Hostname``, ``InternalDNS`` and ``ExternalDNS`` are names and
are passed over. Addresses are read as the API server reads legacy IP fields
(``agent.convert.parse_ip``): sloppily for objects from a cluster, strictly for files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from agent.convert import (
    FieldError,
    dns_subdomain_problem,
    labels_from_k8s,
    list_field,
    mapping_field,
    object_name,
    parse_ip,
    required_name,
    show,
    string_field,
    type_name,
)
from enforcement.model import IPAddress, Node

NODE_ADDRESS_TYPES: Final = ("InternalIP", "ExternalIP")
"""The ``status.addresses`` types that hold an IP address of the node."""


def node_from_k8s(obj: Mapping[str, Any], *, strict: bool = False) -> Node:
    """A v1 Node: name, labels, and its InternalIP and ExternalIP addresses (each once, in
    the order listed); raises ConversionError. ``strict=True`` refuses addresses in the sloppy
    legacy forms (leading zeros, IPv4-mapped IPv6), as ``agent.convert.parse_ip`` does."""
    try:
        if not isinstance(obj, Mapping):
            raise FieldError("", f"must be an object, got {type_name(obj)}")
        metadata = mapping_field(obj.get("metadata"), "metadata")
        name = required_name(metadata, "metadata.name", dns_subdomain_problem)
        labels = labels_from_k8s(metadata.get("labels"), "metadata.labels")
        status = mapping_field(obj.get("status"), "status")
        addresses: list[IPAddress] = []
        for index, item in enumerate(list_field(status.get("addresses"), "status.addresses")):
            field = f"status.addresses[{index}]"
            entry = mapping_field(item, field)
            if string_field(entry.get("type"), f"{field}.type") not in NODE_ADDRESS_TYPES:
                continue
            text = entry.get("address")
            if not isinstance(text, str) or not text:
                raise FieldError(f"{field}.address", f"must be an IP address, got {show(text)}")
            try:
                address = parse_ip(text, strict=strict)
            except ValueError as error:
                raise FieldError(f"{field}.address", f"{error}, got {show(text)}") from None
            if address not in addresses:
                addresses.append(address)
    except FieldError as error:
        raise error.within("Node", object_name(obj)) from None
    return Node(name=name, labels=labels, addresses=tuple(addresses))
