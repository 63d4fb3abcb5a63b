"""Manifest files in: the lab's and the CLI's way of feeding Kubernetes objects to the agent.

``load_manifests`` reads YAML (several documents per file) and JSON files, directories of them
and stdin, expands ``List`` kinds, fills in the namespace the way ``kubectl apply`` would, and
validates the kinds netpol-agent understands by running the same converters the agent uses
(the registry ``agent.kinds``: Namespace, Pod, NetworkPolicy, ClusterNetworkPolicy in both of
its apiVersions, Node), plus the lab's Deployments. A policy kind netpol-agent does not enforce
(``agent.kinds.REFUSED_POLICY_KINDS``: AdminNetworkPolicy v1alpha1, Cilium's, Calico's,
Antrea's) is refused with a message naming it, never passed on to be silently ignored.
It is all-or-nothing: it returns every object or raises ``ManifestError``
for the first problem, naming the file, the document, the object and the field, so a caller can
refuse a whole batch and change nothing.

The files are written by people, so the converters run in strict mode, as ``kubectl apply``
validates by default: an unknown field anywhere in a NetworkPolicy is an error with a hint
(``spec.ingress[0].to: unknown field (did you mean "from"? ...)``), because ignoring it would
make a rule that allows more than was meant. Pods (and Deployments' pod templates) are strict
only in their containers' ``ports`` entries, which define named ports; Namespaces, the rest of
Pods and Deployments, and kinds netpol-agent does not read are not checked for unknown fields.

Bad input. The files may come from anyone, so every malformed file is one ``ManifestError``
(never another exception), found with bounded time and memory:

- Limits (the ``MAX_*`` constants below) are checked before the work they bound: the size of a
  file and of a whole load before it is parsed, nesting depth and the number of nodes (aliases
  counted as what they expand to, so a "billion laughs" file is refused) while the YAML event
  stream is read, before any value is built, and Deployment replicas before the lab expands a
  Deployment into Pods.
- YAML is read the way ``kubectl`` reads it (``sigs.k8s.io/yaml``, which uses go-yaml v2), not the
  way PyYAML's YAML 1.1 loader would: see ``_plain_scalar_tag``. Where kubectl would turn
  something into a value the converters would judge differently (a non-string mapping key, a
  merge key, a tag with no JSON value), it is refused with a message instead.
- Messages never carry control characters from a file to a terminal: ``ManifestError`` escapes
  them (``\\x1b``), and ``printable`` does the same for callers.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

from agent.convert import (
    ConversionError,
    FieldError,
    labels_from_k8s,
    object_name,
    pod_from_k8s,
    selector_from_k8s,
    type_name,
)
from agent.kinds import KINDS, REFUSED_POLICY_KINDS, kind_spec, refusal

STDIN: Final = "-"
MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")

# -- limits -------------------------------------------------------------------------------
# One home for every bound on what a load may cost. Each is checked before the work it bounds.

MIB: Final = 1024 * 1024

MAX_FILE_BYTES: Final = 3 * MIB
"""The largest manifest file (or stdin) read, in bytes: the most the API server takes in one
request (its default request size limit), plenty for the lab's files. Checked while reading,
before parsing (building the values of an ordinary manifest costs a second or two per MiB)."""

MAX_LOAD_BYTES: Final = 16 * MIB
"""The most bytes all files of one load may hold together."""

MAX_FILES: Final = 1000
"""The most files one load reads (files named plus the manifest files of directories named)."""

MAX_DEPTH: Final = 100
"""The deepest nesting of lists and mappings, the document's top level being 1, counted with
aliases expanded. Kubernetes objects rarely pass 20; the bound keeps every later step (the
converters, ``copy.deepcopy``, ``json.dumps``) far from Python's recursion limit. Checked while
reading the YAML event stream (or scanning JSON text), before anything is built."""

MAX_NODES: Final = 500_000
"""The most values (scalars, lists and mappings, mapping keys included) one load may stand for,
every alias counted as the nodes it expands to, and each Deployment's pod template counted once
per replica. Reading costs about 10 microseconds per value in Python, so this bounds a load to
a few seconds; a 3 MiB file of ordinary manifests has about 420,000 values. Refuses alias bombs
("billion laughs": a few KiB that expand to billions of values) while the event stream is read,
before the aliases are expanded."""

MAX_OBJECTS: Final = 10_000
"""The most Kubernetes objects one load may hold, after ``List`` expansion, counting each
Deployment replica as the Pod it becomes."""

MAX_REPLICAS: Final = 1000
"""The largest ``spec.replicas`` of a Deployment: the lab turns every replica into a Pod with its
own network namespace and veth pair."""

# -- kinds --------------------------------------------------------------------------------

DEPLOYMENT_API_VERSION: Final = "apps/v1"
"""The lab's Deployments (expanded into Pods) take this apiVersion only."""

API_VERSIONS: Final[Mapping[str, tuple[str, ...]]] = {
    **{spec.kind: spec.api_versions for spec in KINDS},
    "Deployment": (DEPLOYMENT_API_VERSION,),
}
"""The kinds validated here, and the apiVersions accepted for each (the registry's kinds, with
their converters, and the lab's Deployments)."""

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
        *(spec.kind for spec in KINDS if not spec.namespaced),
        *(refused.kind for refused in REFUSED_POLICY_KINDS if not refused.namespaced),
    }
)
"""Kinds without a namespace; every other kind is namespaced and defaults to "default"."""

WELL_KNOWN_KINDS: Final = frozenset(
    {
        *API_VERSIONS,
        *CLUSTER_SCOPED_KINDS,
        *(refused.kind for refused in REFUSED_POLICY_KINDS),
        "List",
        "ExternalHost",  # the lab's own kind (agent.lab)
        "Service",
        "Endpoints",
        "EndpointSlice",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ReplicaSet",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "Ingress",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "LimitRange",
        "ResourceQuota",
        "ReplicationController",
    }
)
"""Kinds whose misspellings get a hint. Kinds are case-sensitive (``kubectl`` refuses
``kind: networkpolicy``: no such kind), so a kind that differs from one of these only in case or
by a plural is refused instead of being passed on as an unknown kind the lab would ignore."""

DEFAULT_NAMESPACE: Final = "default"

_KIND_SYNTAX: Final = re.compile(r"[A-Za-z]([-A-Za-z0-9]*[A-Za-z0-9])?")
"""What a kind may look like: a CustomResourceDefinition's kind must be a DNS-1035 label once
lowercased (apiextensions validation), and every built-in kind is CamelCase letters."""


def _kind_spellings() -> dict[str, str]:
    spellings: dict[str, str] = {}
    for kind in sorted(WELL_KNOWN_KINDS):
        for name in (kind, kind + "List"):
            lowered = name.lower()
            plurals = [lowered + "s", lowered + "es"]
            if lowered.endswith("y"):
                plurals.append(lowered[:-1] + "ies")
            for spelling in (lowered, *plurals):
                spellings.setdefault(spelling, name)
    return spellings


_KIND_SPELLINGS: Final = _kind_spellings()
"""Lowercased kinds and their plurals, to the kind meant."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """One Kubernetes object read from a manifest, normalised (namespace filled in)."""

    source: str
    """Where it came from: the file path (``<stdin>`` for stdin), plus ``#N`` (the document
    number, 1-based) when the file has several documents, and ``#N.I`` / ``#I`` for item I of a
    List. Control characters in the path are escaped (``printable``): it is for messages."""
    obj: dict[str, Any]
    """The object, as JSON would hold it: keys are strings, values are strings, integers,
    finite floats, booleans, None, lists and dicts (aliases may share sub-objects)."""


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped, for a terminal or a log.

    Control characters (``\\x1b`` starts terminal escape sequences, ``\\r`` and ``\\n`` can fake
    lines), invisible formatting characters (``\\u202e`` reverses the text shown after it) and
    lone surrogates (which ``print`` cannot encode) become ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``; the space is kept. ``str.isprintable`` is the test.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class ManifestError(ValueError):
    """A manifest that cannot be loaded; the message names file, document, object and field.

    e.g. ``examples/db.yaml (document 2): NetworkPolicy default/allow-db:
    spec.ingress[0].ports[0].port: must be between 1 and 65535, got 70000``. Every part is
    passed through ``printable``: the message holds text from the file, and is printed.
    """

    def __init__(self, path: str, where: str | None, detail: str) -> None:
        self.path = printable(path)
        """The file (``<stdin>`` for stdin)."""
        self.where = printable(where) if where is not None else None
        """``document 2``, ``item 3``, ``document 2, item 3``, ``line 7, column 3``, or None."""
        self.detail = printable(detail)
        super().__init__(
            f"{self.path} ({self.where}): {self.detail}"
            if self.where
            else f"{self.path}: {self.detail}"
        )


def load_manifests(paths: Sequence[str]) -> list[Manifest]:
    """Every object of every path, validated, in order; or ManifestError for the first problem.

    A path is a file, a directory (its ``*.yaml``, ``*.yml`` and ``*.json`` files, sorted by
    name, not recursive) or ``-`` for stdin. Empty documents are skipped. The ``MAX_*`` limits
    apply to the whole load.
    """
    budget = _Budget()
    manifests: list[Manifest] = []
    for path in paths:
        for file_path, text in _read(path, budget):
            manifests.extend(
                _load_text(file_path, text, budget, json_only=file_path.endswith(".json"))
            )
    return manifests


# -- reading ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Budget:
    """What one load has used so far of the ``MAX_*`` limits (mutable: one per load)."""

    files: int = 0
    """Files read."""
    bytes: int = 0
    """Bytes read, all files together."""
    nodes: int = 0
    """YAML/JSON nodes, aliases expanded, Deployment templates once per replica."""
    objects: int = 0
    """Kubernetes objects, each Deployment replica counted as a Pod."""

    def add_nodes(self, count: int) -> None:
        """Count ``count`` more nodes; ``_Problem`` past ``MAX_NODES``."""
        self.nodes += count
        if self.nodes > MAX_NODES:
            raise _Problem(
                f"more than {MAX_NODES:,} values in this load (lists, mappings, keys and "
                "scalars, every alias counted as what it expands to): refused before building "
                "them; split the manifests into several loads"
            )


class _Problem(Exception):
    """A problem found while reading one file; the caller adds the file's name."""

    def __init__(self, detail: str, mark: _Mark | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None


class _Mark(Protocol):
    """A position in a YAML text: PyYAML's ``Mark`` and libyaml's both have these."""

    @property
    def line(self) -> int: ...
    @property
    def column(self) -> int: ...


def _read(path: str, budget: _Budget) -> Iterator[tuple[str, str]]:
    if path == STDIN:
        try:
            data = _read_stdin()
        except OSError as error:  # e.g. standard input is a directory
            raise ManifestError(
                "<stdin>", None, f"cannot read: {error.strerror or error}"
            ) from error
        yield "<stdin>", _decode("<stdin>", data, budget)
        return
    try:
        if os.path.isdir(path):
            names = sorted(
                name
                for name in os.listdir(path)
                if name.endswith(MANIFEST_SUFFIXES) and os.path.isfile(os.path.join(path, name))
            )
            if budget.files + len(names) > MAX_FILES:
                raise ManifestError(
                    path,
                    None,
                    f"{len(names)} manifest files here, more than the {MAX_FILES} one load may "
                    "read",
                )
            for name in names:
                yield from _read(os.path.join(path, name), budget)
            return
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ManifestError(path, None, f"cannot read: {error.strerror or error}") from error
    yield path, _decode(path, data, budget)


def _read_stdin() -> bytes:
    if sys.stdin is None:  # started with standard input closed
        raise OSError("standard input is closed")
    binary = getattr(sys.stdin, "buffer", None)
    if binary is not None:
        data: bytes = binary.read(MAX_FILE_BYTES + 1)
        return data
    # A text stream without bytes under it (tests replace sys.stdin with io.StringIO): its
    # characters take at least one byte each, so this reads past the limit when there is more.
    return str(sys.stdin.read(MAX_FILE_BYTES + 1)).encode("utf-8", "surrogatepass")


def _decode(path: str, data: bytes, budget: _Budget) -> str:
    """The text of a file's bytes, counted against the load's limits; ManifestError if not."""
    budget.files += 1
    if budget.files > MAX_FILES:
        raise ManifestError(path, None, f"more than {MAX_FILES} files in one load")
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError(
            path,
            None,
            f"larger than {MAX_FILE_BYTES // MIB} MiB, the most one manifest file may hold "
            "(the API server takes requests of at most 3 MiB)",
        )
    budget.bytes += len(data)
    if budget.bytes > MAX_LOAD_BYTES:
        raise ManifestError(
            path,
            None,
            f"this load's files hold more than {MAX_LOAD_BYTES // MIB} MiB together, the most "
            "one load may read",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        bad = data[error.start : error.end].hex(" ")
        raise ManifestError(
            path,
            f"line {line}, byte {column}",
            f"not UTF-8 text: {error.reason} (byte {bad}); manifests are UTF-8",
        ) from error
    # A byte order mark is allowed at the start, as go-yaml allows it.
    return text.removeprefix("\ufeff")


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
        return printable(f"{self.path}#{'.'.join(parts)}" if parts else self.path)

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


def _load_text(path: str, text: str, budget: _Budget, *, json_only: bool) -> list[Manifest]:
    try:
        documents = _parse_json(text, budget) if json_only else _parse_yaml(text, budget)
    except _Problem as problem:
        raise ManifestError(path, problem.where, problem.detail) from problem
    except RecursionError as error:  # cannot happen within MAX_DEPTH; a clear error if it does
        raise ManifestError(path, None, "nested too deeply to read") from error
    present = [(number, doc) for number, doc in enumerate(documents, 1) if doc is not None]
    several = len(present) > 1
    manifests: list[Manifest] = []
    for number, document in present:
        location = _Location(path, number if several else None)
        for item_location, obj in _expand(location, document, budget):
            manifests.append(Manifest(item_location.source, _check(item_location, obj, budget)))
    return manifests


# -- YAML, the way kubectl reads it ----------------------------------------------------------

_TAG: Final = "tag:yaml.org,2002:"
_STR: Final = _TAG + "str"
_INT: Final = _TAG + "int"
_FLOAT: Final = _TAG + "float"
_BOOL: Final = _TAG + "bool"
_NULL: Final = _TAG + "null"
_SEQ: Final = _TAG + "seq"
_MAP: Final = _TAG + "map"
_MERGE: Final = _TAG + "merge"

# go-yaml v2's table of words (resolve.go): YAML 1.1's booleans, including y/n and on/off,
# which YAML 1.2 reads as strings. kubectl reads them as booleans, so we do too: a label value
# `on` is then refused as "must be a string (quote it in YAML)", as the API server refuses it.
_WORDS: Final[Mapping[str, tuple[str, Any]]] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE"), (_BOOL, True)),
    **dict.fromkeys(("on", "On", "ON"), (_BOOL, True)),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE"), (_BOOL, False)),
    **dict.fromkeys(("off", "Off", "OFF"), (_BOOL, False)),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), (_NULL, None)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), (_FLOAT, math.nan)),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), (_FLOAT, math.inf)),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), (_FLOAT, -math.inf)),
}

# Go's strconv.ParseInt(text, 0, 64) syntax, which go-yaml v2 applies after deleting every "_":
# 0x/0o/0b prefixes and C-style octal (a leading 0). Not YAML 1.1's base 60 (`1:20` is 80 for
# PyYAML but a string for kubectl) and not YAML 1.2's decimal `017` (15 for kubectl).
_GO_INT: Final = re.compile(
    r"(?P<sign>[-+]?)(?:0[xX](?P<hex>[0-9a-fA-F]+)|0[oO](?P<oct>[0-7]+)|0[bB](?P<bin>[01]+)"
    r"|(?P<c_oct>0[0-7]*)|(?P<dec>[1-9][0-9]*))"
)
# go-yaml v2's yamlStyleFloat: no dot needed (`1e3` is 1000.0, not the string PyYAML makes).
_GO_FLOAT: Final = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
# strconv.ParseFloat for the plain scalars go-yaml v2 hands it, those starting with ".".
_DOT_FLOAT: Final = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?")
_INT_RANGE: Final = range(-(2**63), 2**64)
"""int64 (ParseInt) or uint64 (ParseUint), what go-yaml v2 reads an integer into."""


def _plain_scalar_tag(text: str) -> str:
    """The type go-yaml v2 (resolve.go, used by kubectl through sigs.k8s.io/yaml) gives a plain
    (unquoted, untagged) scalar.

    Differences from PyYAML's YAML 1.1 resolver, each one a value that would silently change
    meaning: no base-60 numbers (``1:20`` stays a string; PyYAML makes it 80), ``0o17`` is 15
    (PyYAML: a string), ``1e3`` and ``09`` are floats (PyYAML: strings, so ``port: 1e3`` would
    be a port *name*), ``y``/``n`` are booleans (as ``yes``/``no``/``on``/``off``, for both),
    timestamps stay strings (go-yaml keeps them strings in untyped data; PyYAML makes dates),
    and ``=`` is a string. A number too large for a float stays a string, as in go-yaml.
    """
    if text == "<<":
        return _MERGE
    word = _WORDS.get(text)
    if word is not None:
        return word[0]
    if not text or text[0] not in "+-.0123456789":
        return _STR
    if text[0] == ".":
        if _DOT_FLOAT.fullmatch(text) and math.isfinite(float(text)):
            return _FLOAT
        return _STR
    plain = text.replace("_", "")
    if _GO_INT.fullmatch(plain):
        return _INT  # out of 64 bits it is refused when built, see _int
    if _GO_FLOAT.fullmatch(plain) and math.isfinite(float(plain)):
        return _FLOAT
    return _STR


def _int(text: str) -> int | None:
    """The integer go-yaml v2 reads in ``text``, or None if it reads none."""
    match = _GO_INT.fullmatch(text.replace("_", ""))
    if match is None:
        return None
    sign = -1 if match["sign"] == "-" else 1
    if match["hex"]:
        digits, base = match["hex"], 16
    elif match["oct"]:
        digits, base = match["oct"], 8
    elif match["bin"]:
        digits, base = match["bin"], 2
    elif match["c_oct"]:
        digits, base = match["c_oct"], 8
    else:
        digits, base = match["dec"], 10
    # More than 64 digits is past 64 bits in any base; int() would be slow, or refuse.
    value = sign * int(digits, base) if len(digits.lstrip("0")) <= 64 else None
    if value is None or value not in _INT_RANGE:
        shown = text if len(text) <= 30 else text[:27] + "..."
        raise _Problem(
            f"integer {shown} does not fit in 64 bits (kubectl would make it a float or a big "
            "number; no field takes it)"
        )
    return value


def _float(text: str) -> float | None:
    word = _WORDS.get(text)
    if word is not None and word[0] == _FLOAT:
        value: float = word[1]
    elif (_DOT_FLOAT if text[:1] == "." else _GO_FLOAT).fullmatch(text.replace("_", "")):
        value = float(text.replace("_", ""))
    else:
        integer = _int(text)  # an explicit !!float may hold an integer, as go-yaml allows
        if integer is None:
            return None
        value = float(integer)
    return value


class _EventSource(Protocol):
    def get_event(self) -> Event | None: ...
    def peek_event(self) -> Event | None: ...
    def dispose(self) -> None: ...


class _PythonEvents(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's pure-Python parser, when PyYAML was built without libyaml."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


def _events(text: str) -> _EventSource:
    """libyaml's parser (about ten times faster) if PyYAML has it, else PyYAML's own.

    Either gives the event stream without recursion, so nesting is checked by ``_YamlBuilder``
    as events come, before anything deep is built; neither composes nodes here.
    """
    if yaml.__with_libyaml__:
        from yaml._yaml import CParser

        parser: _EventSource = CParser(text)
        return parser
    return _PythonEvents(text)


def _parse_yaml(text: str, budget: _Budget) -> list[Any]:
    source: _EventSource | None = None
    try:
        source = _events(text)  # PyYAML's reader checks every character here
        return list(_YamlBuilder(source, budget).documents())
    except yaml.reader.ReaderError as error:
        # libyaml counts bytes, PyYAML characters: find the character to say where it is.
        position = text.find(chr(error.character))
        position = position if position >= 0 else 0
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        raise _Problem(
            f"YAML syntax error: character U+{error.character:04X} is not allowed in YAML text "
            "(write it as an escape in a double-quoted string)",
            _Position(line - 1, column - 1),
        ) from error
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        raise _Problem(f"YAML syntax error: {problem}", mark) from error
    except yaml.YAMLError as error:
        raise _Problem(f"YAML error: {error}") from error
    finally:
        if source is not None:
            source.dispose()


@dataclass(frozen=True, slots=True)
class _Position:
    line: int
    """0-based, as in yaml.Mark."""
    column: int
    """0-based, as in yaml.Mark."""


@dataclass(frozen=True, slots=True)
class _Anchored:
    """What an anchor names, measured for its aliases."""

    value: Any
    nodes: int
    """The nodes it stands for, its own aliases expanded."""
    height: int
    """Its nesting depth, 1 for a scalar."""


class _YamlBuilder:
    """Builds the documents of a YAML event stream into JSON-like values, kubectl's way.

    It replaces PyYAML's composer and constructor, so that nothing is built before it is
    checked: depth before descending (no recursion past ``MAX_DEPTH``), the node budget at
    every node and alias (an alias costs what it expands to, without being expanded: the value
    is shared, as PyYAML shares it), mapping keys (strings only, no duplicates, no merge keys)
    and tags (only the JSON types).
    """

    def __init__(self, events: _EventSource, budget: _Budget) -> None:
        self._events = events
        self._budget = budget
        self._anchors: dict[str, _Anchored | None] = {}
        """Per document; None while the anchored node is being built (an alias to it is a
        cycle)."""
        self._deepest = 0
        """The deepest level reached in the node being built, aliases expanded."""

    def documents(self) -> Iterator[Any]:
        self._next(StreamStartEvent)
        while not isinstance(self._peek(), StreamEndEvent):
            self._next(DocumentStartEvent)
            self._anchors = {}
            yield self._node(1)
            self._next(DocumentEndEvent)
        self._next(StreamEndEvent)

    def _peek(self) -> Event:
        event = self._events.peek_event()
        if event is None:
            raise _Problem("YAML syntax error: unexpected end of the event stream")
        return event

    def _next(self, kind: type[Event]) -> Event:
        event = self._events.get_event()
        if not isinstance(event, kind):
            raise _Problem(f"YAML syntax error: expected {kind.__name__}, got {event}")
        return event

    def _node(self, depth: int) -> Any:
        event = self._peek()
        if depth > MAX_DEPTH:
            raise _Problem(
                f"nested deeper than {MAX_DEPTH} levels, the most a manifest may nest",
                event.start_mark,
            )
        if isinstance(event, AliasEvent):
            return self._alias(depth)
        if not isinstance(event, ScalarEvent | SequenceStartEvent | MappingStartEvent):
            raise _Problem(f"YAML syntax error: unexpected {event}", event.start_mark)
        self._events.get_event()
        anchor = event.anchor
        if anchor is not None:
            self._anchors[anchor] = None
        start_nodes = self._budget.nodes
        outer_deepest = self._deepest
        self._deepest = depth
        self._count(1, event)
        if isinstance(event, ScalarEvent):
            value: Any = self._scalar(event)
        elif isinstance(event, SequenceStartEvent):
            value = self._sequence(event, depth)
        else:
            value = self._mapping(event, depth)
        height = self._deepest - depth + 1
        self._deepest = max(outer_deepest, self._deepest)
        if anchor is not None:
            self._anchors[anchor] = _Anchored(value, self._budget.nodes - start_nodes, height)
        return value

    def _count(self, nodes: int, event: Event) -> None:
        try:
            self._budget.add_nodes(nodes)
        except _Problem as problem:
            raise _Problem(problem.detail, event.start_mark) from None

    def _alias(self, depth: int) -> Any:
        event = self._events.get_event()
        assert isinstance(event, AliasEvent)
        name = event.anchor or ""
        if name not in self._anchors:
            raise _Problem(
                f"YAML syntax error: alias *{name} has no anchor &{name}", event.start_mark
            )
        anchored = self._anchors[name]
        if anchored is None:
            raise _Problem(
                f"alias *{name} is inside the node it names: a value that contains itself "
                "cannot be sent as JSON",
                event.start_mark,
            )
        if depth + anchored.height - 1 > MAX_DEPTH:
            raise _Problem(
                f"alias *{name} nests deeper than {MAX_DEPTH} levels here, the most a manifest "
                "may nest",
                event.start_mark,
            )
        self._deepest = max(self._deepest, depth + anchored.height - 1)
        try:
            self._budget.add_nodes(anchored.nodes)
        except _Problem as problem:
            raise _Problem(
                f"alias *{name} stands for {anchored.nodes:,} values: {problem.detail}",
                event.start_mark,
            ) from None
        return anchored.value

    def _scalar(self, event: ScalarEvent) -> Any:
        tag = event.tag
        if tag is None:
            tag = _plain_scalar_tag(event.value) if event.implicit[0] else _STR
        elif tag == "!":  # the non-specific tag: a string (YAML 1.2, 6.9.1)
            tag = _STR
        text = event.value
        value: Any
        if tag == _STR:
            return text
        if tag == _MERGE:
            raise _Problem(
                "merge keys (<<) are not supported: write the keys out", event.start_mark
            )
        if tag == _NULL:
            if text not in _WORDS or _WORDS[text][0] != _NULL:
                raise self._cannot(text, "!!null", event)
            return None
        if tag == _BOOL:
            if text not in _WORDS or _WORDS[text][0] != _BOOL:
                raise self._cannot(text, "!!bool", event)
            return _WORDS[text][1]
        try:
            if tag == _INT:
                value = _int(text)
            elif tag == _FLOAT:
                value = _float(text)
            else:
                raise _Problem(self._unsupported_tag(tag))
        except _Problem as problem:
            raise _Problem(problem.detail, event.start_mark) from None
        if value is None:
            raise self._cannot(text, "!!int" if tag == _INT else "!!float", event)
        if isinstance(value, float) and not math.isfinite(value):
            raise _Problem(
                f"{text} is not a finite number: JSON (what kubectl sends) has no infinities "
                "or NaN",
                event.start_mark,
            )
        return value

    @staticmethod
    def _cannot(text: str, tag: str, event: Event) -> _Problem:
        return _Problem(f"cannot read {text!r} as {tag}", event.start_mark)

    @staticmethod
    def _unsupported_tag(tag: str) -> str:
        short = "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag
        return (
            f"the tag {short} is not supported: a manifest holds what JSON can (strings, "
            "numbers, booleans, null, lists and mappings)"
        )

    def _collection_tag(self, event: SequenceStartEvent | MappingStartEvent, tag: str) -> None:
        if event.tag not in (None, "!", tag):
            raise _Problem(self._unsupported_tag(event.tag), event.start_mark)

    def _sequence(self, event: SequenceStartEvent, depth: int) -> list[Any]:
        self._collection_tag(event, _SEQ)
        items = []
        while not isinstance(self._peek(), SequenceEndEvent):
            items.append(self._node(depth + 1))
        self._next(SequenceEndEvent)
        return items

    def _mapping(self, event: MappingStartEvent, depth: int) -> dict[str, Any]:
        self._collection_tag(event, _MAP)
        result: dict[str, Any] = {}
        first_lines: dict[str, int] = {}
        while not isinstance(self._peek(), MappingEndEvent):
            key_event = self._peek()
            self._check_key(key_event)
            key = self._node(depth + 1)
            if not isinstance(key, str):  # an alias to something that is not a string
                raise _Problem(
                    f"mapping keys must be strings, got {_yaml_type(key)}", key_event.start_mark
                )
            if key in result:
                raise _Problem(
                    f"duplicate key {key!r} (first at line {first_lines[key]})",
                    key_event.start_mark,
                )
            first_lines[key] = key_event.start_mark.line + 1 if key_event.start_mark else 0
            result[key] = self._node(depth + 1)
        self._next(MappingEndEvent)
        return result

    @staticmethod
    def _check_key(event: Event) -> None:
        """Only string keys: JSON has no others. kubectl would turn ``80:`` or ``yes:`` into
        "80" and "true" (sigs.k8s.io/yaml), which is never what was meant for ``yes:``."""
        if isinstance(event, SequenceStartEvent | MappingStartEvent):
            got = "list" if isinstance(event, SequenceStartEvent) else "mapping"
            raise _Problem(f"mapping keys must be strings, got {got}", event.start_mark)
        if isinstance(event, ScalarEvent) and event.tag is None and event.implicit[0]:
            tag = _plain_scalar_tag(event.value)
            if tag not in (_STR, _MERGE):
                kind = {_INT: "integer", _FLOAT: "number", _BOOL: "boolean"}.get(tag, "null")
                raise _Problem(
                    f"mapping keys must be strings, got {kind} {event.value!r} "
                    f'(quote it: "{event.value}")',
                    event.start_mark,
                )


# -- JSON -----------------------------------------------------------------------------------

# A JSON text's tokens, enough to measure it before json.loads builds it: a string (its closing
# quote optional, so that an unterminated one ends the scan instead of being retried at every
# later quote), a bracket, or a run of anything else (numbers, true, false, null, garbage).
_JSON_TOKEN: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]|[^\s,:\[\]{}"]+', re.DOTALL)


def _parse_json(text: str, budget: _Budget) -> list[Any]:
    if not text.strip():
        return []
    _measure_json(text, budget)
    try:
        return [
            json.loads(
                text,
                object_pairs_hook=_no_duplicate_keys,
                parse_constant=_no_constant,
                parse_float=_finite_float,
            )
        ]
    except json.JSONDecodeError as error:
        where = _Position(error.lineno - 1, error.colno - 1)
        raise _Problem(f"JSON syntax error: {error.msg}", where) from error
    except ValueError as error:
        raise _Problem(f"JSON error: {error}") from error


def _measure_json(text: str, budget: _Budget) -> None:
    """Nesting depth and node count of a JSON text, checked before ``json.loads`` (which
    recurses once per level and would build everything first)."""
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        first = match.group()[0]
        if first in "]}":
            depth -= 1
            continue
        if first in "[{" or depth + 1 > MAX_DEPTH:  # a scalar is one level below its parent
            depth += 1
            if depth > MAX_DEPTH:
                raise _Problem(
                    f"nested deeper than {MAX_DEPTH} levels, the most a manifest may nest",
                    _text_position(text, match.start()),
                )
        try:
            budget.add_nodes(1)
        except _Problem as problem:
            raise _Problem(problem.detail, _text_position(text, match.start())) from None


def _text_position(text: str, offset: int) -> _Position:
    line_start = text.rfind("\n", 0, offset) + 1
    return _Position(text.count("\n", 0, offset), offset - line_start)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (Python's json module accepts it; the API does not)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


# -- Lists --------------------------------------------------------------------------------


def _expand(location: _Location, document: Any, budget: _Budget) -> Iterator[tuple[_Location, Any]]:
    """The document itself, or the items of a List (``List``, ``NetworkPolicyList``, ...)."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List")):
        _count_object(location, budget, 1)
        yield location, document
        return
    if kind != "List" and "items" not in document:
        _count_object(location, budget, 1)
        yield location, document  # some other kind whose name happens to end in "List"
        return
    items = document.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise location.error(f"{kind}: items: must be a list, got {_yaml_type(items)}")
    _count_object(location, budget, len(items))
    # A typed list (NetworkPolicyList) may leave kind and apiVersion off its items.
    item_kind = None if kind == "List" else kind.removesuffix("List")
    for index, item in enumerate(items, 1):
        item_location = _Location(location.path, location.document, index)
        if isinstance(item, dict) and item_kind is not None:
            item = {"apiVersion": document.get("apiVersion"), "kind": item_kind, **item}
        nested = item.get("kind") if isinstance(item, dict) else None
        if isinstance(nested, str) and (
            nested == "List" or (nested.endswith("List") and "items" in item)
        ):
            raise item_location.error(f"{nested}: a List inside a List is not supported")
        yield item_location, item


def _count_object(location: _Location, budget: _Budget, count: int) -> None:
    budget.objects += count
    if budget.objects > MAX_OBJECTS:
        raise location.error(
            f"more than {MAX_OBJECTS:,} objects in this load (each Deployment replica counted "
            "as the Pod it becomes), the most one load may hold; split it"
        )


# -- checking -----------------------------------------------------------------------------


def _check(location: _Location, obj: Any, budget: _Budget) -> dict[str, Any]:
    """The object with its namespace filled in, or ManifestError."""
    if not isinstance(obj, dict):
        raise location.error(f"expected a Kubernetes object (a mapping), got {_yaml_type(obj)}")
    normalised: dict[str, Any] = obj
    try:
        normalised = _normalise(obj)
        _validate(normalised)
        if normalised["kind"] == "Deployment":
            _count_replicas(location, normalised, budget)
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
            raise FieldError(field, f"must be a string, got {_yaml_type(value)}")
    _check_kind(obj["kind"])
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise FieldError("metadata", "required" if metadata is None else "must be a mapping")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError("metadata.name", "required" if not name else "must be a string")
    namespace = metadata.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise FieldError("metadata.namespace", f"must be a string, got {_yaml_type(namespace)}")
    for field, text in (("metadata.name", name), ("metadata.namespace", namespace or "")):
        # No API server validation lets these through, and callers print names.
        if not text.isprintable():
            raise FieldError(field, f"must not hold control or invisible characters, got {text!r}")
    metadata = dict(metadata)
    if obj["kind"] in CLUSTER_SCOPED_KINDS:
        # The API server clears the namespace of cluster-scoped objects.
        metadata.pop("namespace", None)
    elif not namespace:
        metadata["namespace"] = DEFAULT_NAMESPACE
    return {**obj, "metadata": metadata}


def _check_kind(kind: str) -> None:
    if len(kind) > 63 or not _KIND_SYNTAX.fullmatch(kind):
        raise FieldError(
            "kind", f"must be a kind such as NetworkPolicy (letters and digits), got {kind!r}"
        )
    if kind in WELL_KNOWN_KINDS:
        return
    meant = _KIND_SPELLINGS.get(kind.lower())
    if meant is not None and meant != kind:
        raise FieldError(
            "kind",
            f'unknown kind "{kind}": did you mean "{meant}"? (kinds are singular and '
            "case-sensitive; kubectl refuses this one too)",
        )


def _validate(obj: dict[str, Any]) -> None:
    kind, api_version = obj["kind"], obj["apiVersion"]
    refused = refusal(api_version, kind)
    if refused is not None:
        raise FieldError("kind", refused)
    spec = kind_spec(api_version, kind)
    if spec is not None:
        spec.convert(obj, strict=True)
        return
    expected = API_VERSIONS.get(kind)
    if expected is None:
        return  # not ours: the caller decides what to do with it
    if api_version not in expected:
        raise FieldError(
            "apiVersion", f"must be {' or '.join(expected)} for kind {kind}, got {api_version}"
        )
    _validate_deployment(obj)  # the registry's kinds in a version they take were taken above


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
    if replicas is not None and replicas > MAX_REPLICAS:
        raise FieldError(
            "spec.replicas",
            f"at most {MAX_REPLICAS} in the lab (each replica becomes a Pod with its own "
            f"network namespace), got {replicas}",
        )
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


def _count_replicas(location: _Location, deployment: dict[str, Any], budget: _Budget) -> None:
    """Charge the Pods a (valid) Deployment stands for to the load, before the lab makes them:
    each replica is an object, and a copy of the pod template."""
    spec = deployment["spec"]
    replicas = spec.get("replicas")
    pods = 1 if replicas is None else replicas  # the API server defaults replicas to 1
    if pods == 0:
        return
    _count_object(location, budget, pods)
    try:
        budget.add_nodes(pods * _count_nodes(spec["template"], MAX_NODES // pods + 1))
    except _Problem as problem:
        raise FieldError(
            "spec.replicas", f"{pods} copies of spec.template: {problem.detail}"
        ) from None


def _count_nodes(value: Any, limit: int) -> int:
    """The nodes of a built value (shared parts counted each time), counting stops past
    ``limit``. Iterative: the value is at most ``MAX_DEPTH`` deep anyway."""
    count = 0
    stack = [value]
    while stack and count <= limit:
        current = stack.pop()
        count += 1
        if isinstance(current, dict):
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return count


def _yaml_type(value: Any) -> str:
    """What a value is, in YAML's words (a YAML reader calls a dict a mapping)."""
    return type_name(value, "mapping")
