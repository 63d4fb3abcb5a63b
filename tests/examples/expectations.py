"""Expected reachability of the examples under ``examples/``: what ``lab probe`` should print.

Each example directory holds ``cluster.yaml`` (namespaces, pods, Deployments, ExternalHosts),
one or more policy files and ``expected.yaml``, a list of probes::

    - name: allow-frontend          # optional; the test id (default: stage, protocol, port, family)
      stage: [policies.yaml]        # policy files in force (default [policies.yaml]; [] = none)
      port: 80
      protocol: TCP                 # TCP or UDP
      family: 4                     # 4 or 6 (default 4)
      external: true                # include the ExternalHosts as sources and targets
      default: allowed              # allowed or blocked
      except:                       # pairs that get the opposite answer
        - "default/frontend-* -> default/backend-*"

Keys are ``namespace/name`` for pods and ``external/NAME`` for external hosts; ``*``, ``?`` and
``[...]`` are shell wildcards over the whole key (so ``*`` alone is every endpoint). Two rules
hold whatever a probe says, because they are how the lab's probe works rather than policy:

- a target that does not listen on the port and protocol is always false (a pod listens on its
  declared container ports, an external host on its ``spec.ports``); that includes the
  endpoint itself;
- a self-pair goes over loopback, which no policy filters: it is true whenever the endpoint
  listens.

So a probe only has to describe the pairs of two different endpoints whose target listens. An
``except`` entry that changes no such pair is an error: it is a typo or a misunderstanding.

This module is pure (no root, no lab): both the compiled test and the lab test use it.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.manifests import load_manifests

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXTERNAL_KIND = "ExternalHost"
DEFAULT_STAGE = ("policies.yaml",)

Matrix = dict[str, dict[str, bool]]
"""``matrix[from][to]``: whether a connection from ``from`` to ``to`` succeeds."""

Protocol = Literal["TCP", "UDP"]


class ExpectationError(ValueError):
    """An ``expected.yaml`` (or the cluster it talks about) that does not make sense."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One row and column of a probe matrix: a pod or an external host."""

    key: str
    """``namespace/name`` for a pod, ``external/NAME`` for an external host."""
    serves: frozenset[tuple[int, str]]
    """(port, protocol) pairs the lab's echo responder listens on."""
    external: bool = False


@dataclass(frozen=True, slots=True)
class Probe:
    """One ``lab probe`` run and the matrix it should print."""

    name: str
    port: int
    protocol: Protocol
    family: Literal[4, 6]
    external: bool
    stage: tuple[str, ...]
    """Policy files (relative to the example) in force, in the order they are applied."""
    default: bool
    """The answer for a listening, non-self pair that no ``except`` entry names."""
    exceptions: tuple[tuple[str, str], ...]
    """(from pattern, to pattern) pairs that get ``not default``."""

    @property
    def description(self) -> str:
        stage = ", ".join(self.stage) or "no policies"
        where = " with external hosts" if self.external else ""
        return f"{self.name}: {self.protocol} {self.port} IPv{self.family}{where} (stage: {stage})"


@dataclass(frozen=True, slots=True)
class Example:
    name: str
    directory: Path
    objects: tuple[dict[str, Any], ...]
    """cluster.yaml's objects, normalised by ``load_manifests``, Deployments expanded into pods
    (each pod right after its Deployment, as the lab stores them)."""
    endpoints: tuple[Endpoint, ...]
    """Pods in order of appearance, then external hosts in order of appearance."""
    probes: tuple[Probe, ...]

    @property
    def cluster(self) -> Path:
        return self.directory / "cluster.yaml"

    def stage_paths(self, stage: Sequence[str]) -> list[Path]:
        return [self.directory / name for name in stage]

    def stages(self) -> list[tuple[str, ...]]:
        """Every distinct stage of the probes, in order of first appearance."""
        return list(dict.fromkeys(probe.stage for probe in self.probes))

    def probe_endpoints(self, probe: Probe) -> list[Endpoint]:
        return [e for e in self.endpoints if probe.external or not e.external]


# -- loading ------------------------------------------------------------------------------


def example_directories(root: Path = EXAMPLES_DIR) -> list[Path]:
    """Every directory under ``root`` that has an ``expected.yaml``, sorted by name."""
    return sorted(path.parent for path in root.glob("*/expected.yaml"))


def load_example(directory: Path) -> Example:
    objects = tuple(expand_deployments(load_objects([directory / "cluster.yaml"])))
    endpoints = tuple(cluster_endpoints(objects))
    keys = [endpoint.key for endpoint in endpoints]
    if len(set(keys)) != len(keys):
        raise ExpectationError(f"{directory.name}: cluster.yaml: duplicate endpoint keys {keys}")
    path = directory / "expected.yaml"
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, list) or not document:
        raise ExpectationError(f"{path}: must be a non-empty list of probes")
    probes = tuple(
        _probe(directory, endpoints, entry, f"{path} probe {index}")
        for index, entry in enumerate(document, 1)
    )
    names = [probe.name for probe in probes]
    if len(set(names)) != len(names):
        raise ExpectationError(f"{path}: probe names must be unique, got {names}")
    return Example(directory.name, directory, objects, endpoints, probes)


def load_objects(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The objects of manifest files, validated and normalised the way the lab reads them."""
    return [manifest.obj for manifest in load_manifests([str(path) for path in paths])]


def expand_deployments(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Objects with each Deployment followed by its pods ``<name>-0``, ``<name>-1``, ...

    Each pod gets the template's labels and spec, as the lab makes them.
    """
    expanded: list[dict[str, Any]] = []
    for obj in objects:
        expanded.append(dict(obj))
        if obj.get("kind") != "Deployment":
            continue
        metadata = obj["metadata"]
        spec = obj.get("spec") or {}
        template = spec.get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        for index in range(spec.get("replicas", 1)):
            expanded.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{metadata['name']}-{index}",
                        "namespace": metadata["namespace"],
                        "labels": dict(labels),
                    },
                    "spec": copy.deepcopy(template.get("spec") or {}),
                }
            )
    return expanded


def cluster_endpoints(objects: Iterable[Mapping[str, Any]]) -> list[Endpoint]:
    """Pods (in order of appearance), then external hosts (in order of appearance)."""
    pods: list[Endpoint] = []
    externals: list[Endpoint] = []
    for obj in objects:
        kind = obj.get("kind")
        metadata = obj["metadata"]
        if kind == "Pod":
            serves = frozenset(
                (port["containerPort"], port.get("protocol", "TCP"))
                for container in (obj.get("spec") or {}).get("containers") or []
                for port in container.get("ports") or []
            )
            pods.append(Endpoint(f"{metadata['namespace']}/{metadata['name']}", serves))
        elif kind == EXTERNAL_KIND:
            serves = frozenset(
                (port["port"], port.get("protocol", "TCP"))
                for port in (obj.get("spec") or {}).get("ports") or []
            )
            externals.append(Endpoint(f"external/{metadata['name']}", serves, external=True))
    return pods + externals


def _probe(directory: Path, endpoints: Sequence[Endpoint], entry: Any, where: str) -> Probe:
    if not isinstance(entry, dict):
        raise ExpectationError(f"{where}: must be a mapping")
    known = {"name", "port", "protocol", "family", "external", "stage", "default", "except"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ExpectationError(f"{where}: unknown keys {unknown}")
    port = entry.get("port")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ExpectationError(f"{where}: port: a number 1-65535 is required, got {port!r}")
    protocol = entry.get("protocol", "TCP")
    if protocol not in ("TCP", "UDP"):
        raise ExpectationError(f"{where}: protocol: must be TCP or UDP, got {protocol!r}")
    family = entry.get("family", 4)
    if family not in (4, 6):
        raise ExpectationError(f"{where}: family: must be 4 or 6, got {family!r}")
    external = entry.get("external", False)
    if not isinstance(external, bool):
        raise ExpectationError(f"{where}: external: must be true or false")
    stage_value = entry.get("stage", list(DEFAULT_STAGE))
    stage = tuple([stage_value] if isinstance(stage_value, str) else stage_value)
    for name in stage:
        if not isinstance(name, str) or not (directory / name).is_file():
            raise ExpectationError(f"{where}: stage: no policy file {name!r} in {directory}")
    if len(set(stage)) != len(stage):
        raise ExpectationError(f"{where}: stage: a file is listed twice: {list(stage)}")
    default = entry.get("default")
    if default not in ("allowed", "blocked"):
        raise ExpectationError(f"{where}: default: must be allowed or blocked, got {default!r}")
    name = entry.get("name") or _default_name(stage, protocol, port, family)
    probe = Probe(
        name=str(name),
        port=port,
        protocol=protocol,
        family=family,
        external=external,
        stage=stage,
        default=default == "allowed",
        exceptions=tuple(_pair(text, f"{where}: except") for text in entry.get("except") or []),
    )
    _check_exceptions(probe, [e for e in endpoints if external or not e.external], where)
    return probe


def _default_name(stage: Sequence[str], protocol: str, port: int, family: int) -> str:
    stem = "+".join(name.removesuffix(".yaml") for name in stage) or "no-policy"
    return f"{stem}-{protocol.lower()}{port}-v{family}"


def _pair(text: Any, where: str) -> tuple[str, str]:
    if not isinstance(text, str) or text.count("->") != 1:
        raise ExpectationError(f'{where}: {text!r}: must read "FROM -> TO"')
    source, target = (part.strip() for part in text.split("->"))
    if not source or not target:
        raise ExpectationError(f'{where}: {text!r}: must read "FROM -> TO"')
    return source, target


def _check_exceptions(probe: Probe, endpoints: Sequence[Endpoint], where: str) -> None:
    for source, target in probe.exceptions:
        sources = [e for e in endpoints if fnmatch.fnmatchcase(e.key, source)]
        targets = [e for e in endpoints if fnmatch.fnmatchcase(e.key, target)]
        if not sources or not targets:
            missing = source if not sources else target
            raise ExpectationError(
                f"{where}: except {source} -> {target}: {missing} matches nothing"
            )
        if not any(s.key != t.key and _listens(t, probe) for s in sources for t in targets):
            raise ExpectationError(
                f"{where}: except {source} -> {target}: changes no pair (every target is the "
                f"source itself or does not listen on {probe.protocol} {probe.port})"
            )


# -- matrices -----------------------------------------------------------------------------


def _listens(endpoint: Endpoint, probe: Probe) -> bool:
    return (probe.port, probe.protocol) in endpoint.serves


def expected_matrix(example: Example, probe: Probe) -> Matrix:
    """The matrix ``lab probe`` should print for ``probe``."""
    endpoints = example.probe_endpoints(probe)
    matrix: Matrix = {}
    for source in endpoints:
        row = matrix[source.key] = {}
        for target in endpoints:
            if not _listens(target, probe):
                row[target.key] = False
            elif source.key == target.key:
                row[target.key] = True
            else:
                flipped = any(
                    fnmatch.fnmatchcase(source.key, s) and fnmatch.fnmatchcase(target.key, t)
                    for s, t in probe.exceptions
                )
                row[target.key] = probe.default != flipped
    return matrix


def differences(expected: Matrix, actual: Matrix) -> list[str]:
    """One line per pair that differs, plus lines for missing or unexpected endpoints."""
    lines: list[str] = []
    expected_keys, actual_keys = set(expected), set(actual)
    if expected_keys != actual_keys:
        missing = sorted(expected_keys - actual_keys)
        extra = sorted(actual_keys - expected_keys)
        lines.append(f"endpoints differ: missing {missing}, unexpected {extra}")
    for source in sorted(expected_keys & actual_keys):
        for target in sorted(expected[source]):
            want = expected[source][target]
            got = actual[source].get(target)
            if got is None:
                lines.append(f"{source} -> {target}: expected {_word(want)}, missing")
            elif got != want:
                lines.append(f"{source} -> {target}: expected {_word(want)}, got {_word(got)}")
    return lines


def render_diff(probe: Probe, expected: Matrix, actual: Matrix, source: str = "lab") -> str:
    """A readable report: the differing pairs, then the actual matrix with them marked."""
    lines = differences(expected, actual)
    if not lines:
        return f"{probe.description}: as expected"
    header = f"{probe.description}: {source} differs from expected.yaml in {len(lines)} pair(s)"
    return "\n".join([header, *(f"  {line}" for line in lines), render_matrix(actual, expected)])


def render_matrix(matrix: Matrix, expected: Matrix | None = None) -> str:
    """Rows are sources, numbered columns are targets: ``+`` allowed, ``.`` blocked, and
    ``!`` / ``?`` for allowed / blocked where ``expected`` says otherwise."""
    keys = list(matrix)
    width = max((len(key) for key in keys), default=0)
    numbers = " ".join(f"{index:>2}" for index in range(1, len(keys) + 1))
    corner = "from \\ to"
    lines = [f"  {corner:<{width + 4}} {numbers}"]
    for index, source in enumerate(keys, 1):
        cells = []
        for target in keys:
            got = matrix[source].get(target)
            want = None if expected is None else expected.get(source, {}).get(target)
            if got is None:
                cells.append(" -")
            elif want is not None and want != got:
                cells.append(" !" if got else " ?")
            else:
                cells.append(" +" if got else " .")
        lines.append(f"  {index:>2}  {source:<{width}} {' '.join(cells)}")
    lines.append(
        "  (+ allowed, . blocked, ! allowed but expected blocked, ? blocked but expected allowed)"
    )
    return "\n".join(lines)


def _word(allowed: bool) -> str:
    return "allowed" if allowed else "blocked"
