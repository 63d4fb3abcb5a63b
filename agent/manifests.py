"""Manifest files in: the lab's and the CLI's way of feeding Kubernetes objects to the agent.

``load_manifests`` reads YAML (several documents per file) and JSON files, directories of them
and stdin, expands ``List`` kinds, fills in the namespace the way ``kubectl apply`` would, and
validates the kinds netpol-agent understands by running the same converters the agent uses
(``agent.convert``). It is all-or-nothing: it returns every object or raises ``ManifestError``
for the first problem, naming the file, the document, the object and the field, so a caller can
refuse a whole batch and change nothing.

The files are written by people, so the converters run in strict mode, as ``kubectl apply``
validates by default: an unknown field anywhere in a NetworkPolicy is an error with a hint
(``spec.ingress[0].to: unknown field (did you mean "from"? ...)``), because ignoring it would
make a rule that allows more than was meant. Pods (and Deployments' pod templates) are strict
only in their containers' ``ports`` entries, which define named ports; Namespaces, the rest of
Pods and Deployments, and kinds netpol-agent does not read are not checked for unknown fields.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from agent.convert import (
    ConversionError,
    FieldError,
    labels_from_k8s,
    namespace_from_k8s,
    object_name,
    pod_from_k8s,
    policy_from_k8s,
    selector_from_k8s,
)

STDIN: Final = "-"
MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")

API_VERSIONS: Final[Mapping[str, str]] = {
    "Namespace": "v1",
    "Pod": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Deployment": "apps/v1",
}
"""The kinds validated here, and the only apiVersion accepted for each."""

CLUSTER_SCOPED_KINDS: Final = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "StorageClass",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "APIService",
        "PriorityClass",
        "RuntimeClass",
        "IngressClass",
        "CSIDriver",
        "CSINode",
        "VolumeAttachment",
        "CertificateSigningRequest",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "AdminNetworkPolicy",
        "BaselineAdminNetworkPolicy",
    }
)
"""Kinds without a namespace; every other kind is namespaced and defaults to "default"."""

DEFAULT_NAMESPACE: Final = "default"


@dataclass(frozen=True, slots=True)
class Manifest:
    """One Kubernetes object read from a manifest, normalised (namespace filled in)."""

    source: str
    """Where it came from: the file path (``<stdin>`` for stdin), plus ``#N`` (the document
    number, 1-based) when the file has several documents, and ``#N.I`` / ``#I`` for item I of a
    List."""
    obj: dict[str, Any]


class ManifestError(ValueError):
    """A manifest that cannot be loaded; the message names file, document, object and field.

    e.g. ``examples/db.yaml (document 2): NetworkPolicy default/allow-db:
    spec.ingress[0].ports[0].port: must be between 1 and 65535, got 70000``.
    """

    def __init__(self, path: str, where: str | None, detail: str) -> None:
        self.path = path
        """The file (``<stdin>`` for stdin)."""
        self.where = where
        """``document 2``, ``item 3``, ``document 2, item 3``, ``line 7, column 3``, or None."""
        self.detail = detail
        super().__init__(f"{path} ({where}): {detail}" if where else f"{path}: {detail}")


def load_manifests(paths: Sequence[str]) -> list[Manifest]:
    """Every object of every path, validated, in order; or ManifestError for the first problem.

    A path is a file, a directory (its ``*.yaml``, ``*.yml`` and ``*.json`` files, sorted by
    name, not recursive) or ``-`` for stdin. Empty documents are skipped.
    """
    manifests: list[Manifest] = []
    for path in paths:
        for file_path, text in _read(path):
            manifests.extend(_load_text(file_path, text, json_only=file_path.endswith(".json")))
    return manifests


# -- reading ------------------------------------------------------------------------------


def _read(path: str) -> Iterator[tuple[str, str]]:
    if path == STDIN:
        yield "<stdin>", sys.stdin.read()
        return
    try:
        if os.path.isdir(path):
            names = sorted(
                name
                for name in os.listdir(path)
                if name.endswith(MANIFEST_SUFFIXES) and os.path.isfile(os.path.join(path, name))
            )
            for name in names:
                yield from _read(os.path.join(path, name))
            return
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise ManifestError(path, None, f"cannot read: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ManifestError(path, None, f"not UTF-8 text: {error.reason}") from error
    yield path, text


@dataclass(frozen=True, slots=True)
class _Location:
    path: str
    document: int | None = None
    """1-based, only when the file has several documents."""
    item: int | None = None
    """1-based, only for an item of a List."""

    @property
    def source(self) -> str:
        parts = [str(n) for n in (self.document, self.item) if n is not None]
        return f"{self.path}#{'.'.join(parts)}" if parts else self.path

    @property
    def where(self) -> str | None:
        words = []
        if self.document is not None:
            words.append(f"document {self.document}")
        if self.item is not None:
            words.append(f"item {self.item}")
        return ", ".join(words) or None

    def error(self, detail: str) -> ManifestError:
        return ManifestError(self.path, self.where, detail)


def _load_text(path: str, text: str, *, json_only: bool) -> list[Manifest]:
    documents = _parse(path, text, json_only=json_only)
    present = [(number, doc) for number, doc in enumerate(documents, 1) if doc is not None]
    several = len(present) > 1
    manifests: list[Manifest] = []
    for number, document in present:
        location = _Location(path, number if several else None)
        for item_location, obj in _expand(location, document):
            manifests.append(Manifest(item_location.source, _check(item_location, obj)))
    return manifests


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys, as kubectl's strict decoding does.

    PyYAML keeps the last of two equal keys silently; for a policy that can mean a second
    ``ingress:`` replacing the first, which is a change nobody wrote on purpose.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse(path: str, text: str, *, json_only: bool) -> list[Any]:
    if json_only:
        try:
            return [json.loads(text, object_pairs_hook=_no_duplicate_keys)] if text.strip() else []
        except json.JSONDecodeError as error:
            where = f"line {error.lineno}, column {error.colno}"
            raise ManifestError(path, where, f"JSON syntax error: {error.msg}") from error
        except ValueError as error:
            raise ManifestError(path, None, f"JSON error: {error}") from error
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))  # _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        position = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = error.problem or error.context or "invalid YAML"
        raise ManifestError(path, position, f"YAML syntax error: {problem}") from error
    except yaml.YAMLError as error:
        raise ManifestError(path, None, f"YAML error: {error}") from error


def _expand(location: _Location, document: Any) -> Iterator[tuple[_Location, Any]]:
    """The document itself, or the items of a List (``List``, ``NetworkPolicyList``, ...)."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List")):
        yield location, document
        return
    if kind != "List" and "items" not in document:
        yield location, document  # some other kind whose name happens to end in "List"
        return
    items = document.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise location.error(f"{kind}: items: must be a list")
    # A typed list (NetworkPolicyList) may leave kind and apiVersion off its items.
    item_kind = None if kind == "List" else kind.removesuffix("List")
    for index, item in enumerate(items, 1):
        item_location = _Location(location.path, location.document, index)
        if isinstance(item, dict) and item_kind is not None:
            item = {"apiVersion": document.get("apiVersion"), "kind": item_kind, **item}
        nested = item.get("kind") if isinstance(item, dict) else None
        if isinstance(nested, str) and nested.endswith("List") and "items" in item:
            raise item_location.error(f"{nested}: a List inside a List is not supported")
        yield item_location, item


# -- checking -----------------------------------------------------------------------------


def _check(location: _Location, obj: Any) -> dict[str, Any]:
    """The object with its namespace filled in, or ManifestError."""
    if not isinstance(obj, dict):
        raise location.error(f"expected a Kubernetes object (a mapping), got {type(obj).__name__}")
    normalised: dict[str, Any] = obj
    try:
        normalised = _normalise(obj)
        _validate(normalised)
    except FieldError as error:
        kind = normalised.get("kind")
        label = kind if isinstance(kind, str) and kind else "object"
        raise location.error(str(error.within(label, object_name(normalised)))) from error
    except ConversionError as error:
        raise location.error(str(error)) from error
    return normalised


def _normalise(obj: dict[str, Any]) -> dict[str, Any]:
    for field in ("apiVersion", "kind"):
        value = obj.get(field)
        if value is None or value == "":
            raise FieldError(field, "required")
        if not isinstance(value, str):
            raise FieldError(field, f"must be a string, got {type(value).__name__}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise FieldError("metadata", "required" if metadata is None else "must be a mapping")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError("metadata.name", "required" if not name else "must be a string")
    namespace = metadata.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise FieldError("metadata.namespace", f"must be a string, got {type(namespace).__name__}")
    metadata = dict(metadata)
    if obj["kind"] in CLUSTER_SCOPED_KINDS:
        # The API server clears the namespace of cluster-scoped objects.
        metadata.pop("namespace", None)
    elif not namespace:
        metadata["namespace"] = DEFAULT_NAMESPACE
    return {**obj, "metadata": metadata}


def _validate(obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    expected = API_VERSIONS.get(kind)
    if expected is None:
        return  # not ours: the caller decides what to do with it
    if obj["apiVersion"] != expected:
        raise FieldError(
            "apiVersion", f"must be {expected} for kind {kind}, got {obj['apiVersion']}"
        )
    if kind == "Namespace":
        namespace_from_k8s(obj)
    elif kind == "Pod":
        pod_from_k8s(obj, strict=True)
    elif kind == "NetworkPolicy":
        policy_from_k8s(obj, strict=True)
    else:
        _validate_deployment(obj)


def _validate_deployment(obj: dict[str, Any]) -> None:
    """The parts of an apps/v1 Deployment the lab needs to expand it into Pods."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise FieldError("spec", "required" if spec is None else "must be a mapping")
    replicas = spec.get("replicas")
    if replicas is not None and (
        not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0
    ):
        raise FieldError("spec.replicas", f"must be a non-negative integer, got {replicas!r}")
    if spec.get("selector") is None:
        raise FieldError("spec.selector", "required")
    selector = selector_from_k8s(spec["selector"], "spec.selector")
    if selector.is_empty:
        raise FieldError("spec.selector", "must not be empty")
    template = spec.get("template")
    if not isinstance(template, dict):
        raise FieldError("spec.template", "required" if template is None else "must be a mapping")
    template_metadata = template.get("metadata")
    if not isinstance(template_metadata, dict):
        raise FieldError("spec.template.metadata.labels", "must be a mapping")
    raw_labels = template_metadata.get("labels")
    if not isinstance(raw_labels, dict):
        raise FieldError("spec.template.metadata.labels", "must be a mapping")
    labels = labels_from_k8s(raw_labels, "spec.template.metadata.labels")
    if not selector.matches(labels):
        raise FieldError("spec.selector", "does not match spec.template.metadata.labels")
    # The template must make a valid Pod: run the Pod converter on it, with its field paths.
    metadata = obj["metadata"]
    pod = {
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": raw_labels,
        },
        "spec": template.get("spec"),
    }
    try:
        pod_from_k8s(pod, strict=True)
    except ConversionError as error:
        field = error.field
        if field == "spec" or field.startswith("spec."):
            field = "spec.template." + field
        raise FieldError(field, error.reason) from error
