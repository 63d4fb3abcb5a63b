"""Tests for agent/manifests.py: manifest files in, validated Kubernetes objects out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import manifests as manifests_module
from agent.manifests import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_LOAD_BYTES,
    MAX_NODES,
    MAX_OBJECTS,
    MAX_REPLICAS,
    Manifest,
    ManifestError,
    load_manifests,
    printable,
)

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels:
    team: a
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  containers:
  - name: app
    image: nginx
    ports:
    - containerPort: 80
      name: http
"""

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-db
spec:
  podSelector:
    matchLabels:
      app: db
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - port: {port}
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: prod
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
        tier: front
    spec:
      containers:
      - name: app
        image: nginx
        ports:
        - containerPort: 8080
          name: http
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def summary(manifests: list[Manifest]) -> list[tuple[str, str, str | None, str]]:
    """(kind, name, namespace, source) for each manifest, sources relative to the directory."""
    return [
        (
            m.obj["kind"],
            m.obj["metadata"]["name"],
            m.obj["metadata"].get("namespace"),
            Path(m.source).name,
        )
        for m in manifests
    ]


def load_error(tmp_path: Path, text: str, name: str = "objects.yaml") -> ManifestError:
    path = write(tmp_path, name, text)
    with pytest.raises(ManifestError) as caught:
        load_manifests([path])
    return caught.value


# -- reading ------------------------------------------------------------------------------


def test_single_document(tmp_path: Path) -> None:
    path = write(tmp_path, "ns.yaml", NAMESPACE)
    manifests = load_manifests([path])
    assert manifests == [
        Manifest(
            source=path,
            obj={
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "prod", "labels": {"team": "a"}},
            },
        )
    ]


def test_multi_document_file(tmp_path: Path) -> None:
    text = "---\n" + NAMESPACE + "---\n" + POD + "---\n" + POLICY.format(port=5432) + "---\n"
    manifests = load_manifests([write(tmp_path, "all.yaml", text)])
    assert summary(manifests) == [
        ("Namespace", "prod", None, "all.yaml#1"),
        ("Pod", "web", "default", "all.yaml#2"),
        ("NetworkPolicy", "allow-db", "default", "all.yaml#3"),
    ]


def test_empty_documents_are_skipped_but_counted(tmp_path: Path) -> None:
    # A comment before the first "---" is not a document (YAML 1.1); "---\n---" holds an empty one.
    text = "# only a comment\n---\n" + NAMESPACE + "---\n---\n" + POD + "---\n# trailing\n"
    manifests = load_manifests([write(tmp_path, "gaps.yaml", text)])
    assert summary(manifests) == [
        ("Namespace", "prod", None, "gaps.yaml#1"),
        ("Pod", "web", "default", "gaps.yaml#3"),
    ]


def test_empty_file(tmp_path: Path) -> None:
    assert load_manifests([write(tmp_path, "empty.yaml", "")]) == []
    assert load_manifests([write(tmp_path, "empty.json", "  \n")]) == []


LIST = """\
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: a
  spec:
    podSelector: {}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: b
    namespace: prod
  spec:
    podSelector: {}
"""

# As `kubectl get networkpolicies -o yaml` may print it: items without kind and apiVersion.
TYPED_LIST = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
items:
- metadata:
    name: a
  spec:
    podSelector: {}
- metadata:
    name: b
    namespace: prod
  spec:
    podSelector: {}
"""


@pytest.mark.parametrize(
    "text", [pytest.param(LIST, id="list"), pytest.param(TYPED_LIST, id="typed")]
)
def test_list_is_expanded(tmp_path: Path, text: str) -> None:
    manifests = load_manifests([write(tmp_path, "list.yaml", text)])
    assert summary(manifests) == [
        ("NetworkPolicy", "a", "default", "list.yaml#1"),
        ("NetworkPolicy", "b", "prod", "list.yaml#2"),
    ]
    assert all(m.obj["apiVersion"] == "networking.k8s.io/v1" for m in manifests)


def test_list_in_a_multi_document_file(tmp_path: Path) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [_ns("a")]}
    text = NAMESPACE + "---\n" + json.dumps(listing) + "\n"
    manifests = load_manifests([write(tmp_path, "mixed.yaml", text)])
    assert [Path(m.source).name for m in manifests] == ["mixed.yaml#1", "mixed.yaml#2.1"]


def test_empty_list(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: List\nitems: []\n"
    assert load_manifests([write(tmp_path, "list.yaml", text)]) == []


def test_json_file(tmp_path: Path) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [_ns("a"), {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}],
    }
    manifests = load_manifests([write(tmp_path, "objects.json", json.dumps(obj, indent=2))])
    assert summary(manifests) == [
        ("Namespace", "a", None, "objects.json#1"),
        ("Pod", "p", "default", "objects.json#2"),
    ]


def test_directory_reads_manifest_files_sorted(tmp_path: Path) -> None:
    write(tmp_path, "b-pod.yml", POD)
    write(tmp_path, "a-ns.yaml", NAMESPACE)
    write(tmp_path, "c-ns.json", json.dumps(_ns("other")))
    write(tmp_path, "README.md", "not a manifest: [")
    (tmp_path / "sub.yaml").mkdir()
    manifests = load_manifests([str(tmp_path)])
    assert summary(manifests) == [
        ("Namespace", "prod", None, "a-ns.yaml"),
        ("Pod", "web", "default", "b-pod.yml"),
        ("Namespace", "other", None, "c-ns.json"),
    ]


def test_several_paths_keep_their_order(tmp_path: Path) -> None:
    pod = write(tmp_path, "pod.yaml", POD)
    ns = write(tmp_path, "ns.yaml", NAMESPACE)
    assert [m.obj["kind"] for m in load_manifests([pod, ns])] == ["Pod", "Namespace"]


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(NAMESPACE + "---\n" + POD))
    manifests = load_manifests(["-"])
    assert [m.source for m in manifests] == ["<stdin>#1", "<stdin>#2"]


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ManifestError) as caught:
        load_manifests([path])
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


# -- normalising --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "namespace"),
    [
        pytest.param(POD, "default", id="namespaced-defaults"),
        pytest.param(
            POD.replace("  name: web\n", "  name: web\n  namespace: prod\n"), "prod", id="kept"
        ),
        pytest.param(SERVICE, "default", id="other-kind-defaults-too"),
        pytest.param(
            NAMESPACE.replace("  name: prod\n", "  name: prod\n  namespace: x\n"),
            None,
            id="namespace-kind-has-none",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n", None, id="cluster-scoped"
        ),
    ],
)
def test_namespace_defaulting(tmp_path: Path, text: str, namespace: str | None) -> None:
    (manifest,) = load_manifests([write(tmp_path, "obj.yaml", text)])
    assert manifest.obj["metadata"].get("namespace") == namespace


def test_other_kinds_are_returned_as_they_are(tmp_path: Path) -> None:
    (manifest,) = load_manifests([write(tmp_path, "svc.yaml", SERVICE)])
    assert manifest.obj["kind"] == "Service"
    assert manifest.obj["spec"] == {"selector": {"app": "web"}, "ports": [{"port": 80}]}


def test_deployment_is_accepted(tmp_path: Path) -> None:
    (manifest,) = load_manifests([write(tmp_path, "deploy.yaml", DEPLOYMENT)])
    assert manifest.obj["spec"]["replicas"] == 2


# -- errors -------------------------------------------------------------------------------


def test_bad_object_names_file_document_object_and_field(tmp_path: Path) -> None:
    text = NAMESPACE + "---\n" + POD + "---\n" + POLICY.format(port=70000)
    error = load_error(tmp_path, text, "db.yaml")
    path = str(tmp_path / "db.yaml")
    assert str(error) == (
        f"{path} (document 3): NetworkPolicy default/allow-db: "
        "spec.ingress[0].ports[0].port: must be between 1 and 65535, got 70000"
    )
    assert (error.path, error.where) == (path, "document 3")


def test_bad_single_document_names_file_only(tmp_path: Path) -> None:
    error = load_error(tmp_path, POLICY.format(port='"80"'), "db.yaml")
    assert str(error).startswith(f"{tmp_path / 'db.yaml'}: NetworkPolicy default/allow-db: ")
    assert "spec.ingress[0].ports[0].port: a named port must contain at least one letter" in str(
        error
    )


def test_bad_list_item_names_the_item(tmp_path: Path) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [_ns("a"), _ns("B")]}
    error = load_error(tmp_path, json.dumps(listing), "list.json")
    assert error.where == "item 2"
    assert "Namespace B: metadata.name: must be a DNS-1123 label" in str(error)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = NAMESPACE + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [web\n"
    error = load_error(tmp_path, text, "broken.yaml")
    assert error.path == str(tmp_path / "broken.yaml")
    assert error.where is not None and error.where.startswith("line 12, column")
    assert str(error).startswith(f"{tmp_path / 'broken.yaml'} (line 12, column ")
    assert "YAML syntax error" in str(error)


def test_yaml_indentation_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "apiVersion: v1\nkind: Pod\n metadata: {}\n")
    assert error.where is not None and error.where.startswith("line 3")


def test_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, '{\n  "apiVersion": "v1",\n  "kind": \n}\n', "bad.json")
    assert error.where == "line 4, column 1"
    assert "JSON syntax error" in str(error)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("- a\n- b\n", "expected a Kubernetes object (a mapping), got list", id="list"),
        pytest.param(
            "just text\n", "expected a Kubernetes object (a mapping), got string", id="str"
        ),
        pytest.param(
            "kind: Pod\nmetadata:\n  name: web\n",
            "Pod web: apiVersion: required",
            id="no-api-version",
        ),
        pytest.param(
            "apiVersion: v1\nmetadata:\n  name: web\n",
            "object web: kind: required",
            id="no-kind",
        ),
        pytest.param(
            "apiVersion: v1\nkind: [Pod]\nmetadata:\n  name: web\n",
            "kind: must be a string, got list",
            id="kind-not-string",
        ),
        pytest.param("apiVersion: v1\nkind: Pod\n", "Pod ?: metadata: required", id="no-metadata"),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {}\n",
            "Pod ?: metadata.name: required",
            id="no-name",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: 42\n",
            "metadata.name: must be a string",
            id="name-not-string",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: [a]\n",
            "metadata.namespace: must be a string, got list",
            id="namespace-not-string",
        ),
        pytest.param(
            "apiVersion: v1\nkind: List\nitems: {}\n", "List: items: must be a list", id="items"
        ),
        pytest.param(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n",
            "List: a List inside a List is not supported",
            id="nested-list",
        ),
    ],
)
def test_structural_errors(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(load_error(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            POLICY.format(port=80).replace("networking.k8s.io/v1", "extensions/v1beta1"),
            "NetworkPolicy default/allow-db: apiVersion: must be networking.k8s.io/v1 for kind "
            "NetworkPolicy, got extensions/v1beta1",
            id="networkpolicy",
        ),
        pytest.param(
            POD.replace("apiVersion: v1", "apiVersion: apps/v1"),
            "Pod default/web: apiVersion: must be v1 for kind Pod, got apps/v1",
            id="pod",
        ),
        pytest.param(
            NAMESPACE.replace("apiVersion: v1", "apiVersion: core/v1"),
            "Namespace prod: apiVersion: must be v1 for kind Namespace, got core/v1",
            id="namespace",
        ),
        pytest.param(
            DEPLOYMENT.replace("apps/v1", "extensions/v1beta1"),
            "Deployment prod/web: apiVersion: must be apps/v1 for kind Deployment, "
            "got extensions/v1beta1",
            id="deployment",
        ),
    ],
)
def test_api_version_mismatch(tmp_path: Path, text: str, message: str) -> None:
    assert str(load_error(tmp_path, text)).endswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            POD.replace("containerPort: 80", "containerPort: 0"),
            "Pod default/web: spec.containers[0].ports[0].containerPort: "
            "must be between 1 and 65535, got 0",
            id="pod",
        ),
        pytest.param(
            NAMESPACE.replace("team: a", "team: true"),
            "Namespace prod: metadata.labels[team]: must be a string, got boolean true "
            "(quote it in YAML)",
            id="namespace-yaml-boolean-label",
        ),
    ],
)
def test_known_kinds_are_converted(tmp_path: Path, text: str, message: str) -> None:
    assert str(load_error(tmp_path, text)).endswith(message)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param(
            "replicas: 2",
            "replicas: -1",
            "spec.replicas: must be a non-negative integer, got -1",
            id="negative-replicas",
        ),
        pytest.param(
            "replicas: 2",
            "replicas: two",
            "spec.replicas: must be a non-negative integer",
            id="replicas-not-int",
        ),
        pytest.param(
            "replicas: 2",
            "replicas: true",
            "spec.replicas: must be a non-negative integer",
            id="replicas-bool",
        ),
        pytest.param(
            "  selector:\n    matchLabels:\n      app: web\n",
            "",
            "spec.selector: required",
            id="no-selector",
        ),
        pytest.param(
            "    matchLabels:\n      app: web\n  template:",
            "    matchLabels: {}\n  template:",
            "spec.selector: must not be empty",
            id="empty-selector",
        ),
        pytest.param(
            "      app: web\n  template:",
            "      app: api\n  template:",
            "spec.selector: does not match spec.template.metadata.labels",
            id="selector-mismatch",
        ),
        pytest.param(
            "      labels:\n        app: web\n        tier: front\n",
            "      labels: app=web\n",
            "spec.template.metadata.labels: must be a mapping",
            id="labels-not-mapping",
        ),
        pytest.param(
            "      labels:\n        app: web\n        tier: front\n",
            "      annotations: {}\n",
            "spec.template.metadata.labels: must be a mapping",
            id="labels-missing",
        ),
        pytest.param(
            "        tier: front\n",
            "        tier: front end\n",
            "spec.template.metadata.labels[tier]: must be empty or consist",
            id="label-invalid",
        ),
        pytest.param(
            "containerPort: 8080",
            "containerPort: 80800",
            "spec.template.spec.containers[0].ports[0].containerPort: "
            "must be between 1 and 65535, got 80800",
            id="template-container-port",
        ),
        pytest.param(
            "          name: http",
            "          name: HTTP",
            "spec.template.spec.containers[0].ports[0].name: must contain only lowercase",
            id="template-port-name",
        ),
        pytest.param(
            "  name: web\n  namespace: prod",
            "  name: Web\n  namespace: prod",
            "metadata.name: must be a DNS-1123 subdomain",
            id="bad-name",
        ),
    ],
)
def test_deployment_checks(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in DEPLOYMENT
    error = load_error(tmp_path, DEPLOYMENT.replace(old, new))
    assert "Deployment prod/" in str(error)
    assert message in str(error)


# -- strict unknown fields ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            POLICY.format(port=5432).replace("  - from:", "  - to:"),
            "NetworkPolicy default/allow-db: spec.ingress[0].to: unknown field "
            '(did you mean "from"? ingress rules have from and ports)',
            id="ingress-rule-to",
        ),
        pytest.param(
            POLICY.format(port=5432).replace("    ports:\n    - port: 5432", "    port: 5432"),
            "NetworkPolicy default/allow-db: spec.ingress[0].port: unknown field "
            '(did you mean "ports"? a rule\'s ports are a list: '
            "ports: [{protocol: TCP, port: 80}])",
            id="port-at-rule-level",
        ),
        pytest.param(
            POLICY.format(port=5432).replace("    - podSelector:", "    - podselector:"),
            "NetworkPolicy default/allow-db: spec.ingress[0].from[0].podselector: unknown field "
            '(did you mean "podSelector"? peers have podSelector, namespaceSelector and ipBlock)',
            id="peer-case",
        ),
        pytest.param(
            POLICY.format(port=5432).replace(
                "    - podSelector:\n        matchLabels:\n          app: web\n",
                "    - ipBlock:\n        cidr: 10.0.0.0/8\n        excepts: [10.1.0.0/16]\n",
            ),
            "NetworkPolicy default/allow-db: spec.ingress[0].from[0].ipBlock.excepts: "
            'unknown field (did you mean "except"? ipBlocks have cidr and except)',
            id="ipblock-excepts",
        ),
        pytest.param(
            POLICY.format(port=5432).replace("    matchLabels:\n      app: db\n", "    app: db\n"),
            "NetworkPolicy default/allow-db: spec.podSelector.app: unknown field (label selectors "
            "have matchLabels and matchExpressions; to select on the label app, write "
            "matchLabels: {app: ...})",
            id="selector-without-match-labels",
        ),
        pytest.param(
            POD.replace("    - containerPort: 80", "    - port: 80"),
            "Pod default/web: spec.containers[0].ports[0].port: unknown field "
            '(did you mean "containerPort"? container ports have containerPort, protocol, name, '
            "hostPort and hostIP)",
            id="pod-container-port",
        ),
        pytest.param(
            DEPLOYMENT.replace("          name: http", "          Name: http"),
            "Deployment prod/web: spec.template.spec.containers[0].ports[0].Name: unknown field "
            '(did you mean "name"? container ports have containerPort, protocol, name, hostPort '
            "and hostIP)",
            id="deployment-template-port",
        ),
    ],
)
def test_unknown_fields_are_errors(tmp_path: Path, text: str, message: str) -> None:
    # As `kubectl apply` (strict field validation): in a file, an ignored field is a rule that
    # allows more than was meant.
    assert str(load_error(tmp_path, text)).endswith(message)


# As `kubectl get networkpolicy allow-db -o yaml` prints it.
SERVED_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy"}
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 1
  labels:
    app: db
  managedFields:
  - apiVersion: networking.k8s.io/v1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        f:podSelector: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2024-05-01T10:00:00Z"
  name: allow-db
  namespace: default
  resourceVersion: "4711"
  uid: 7c1b2f9e-0000-4000-8000-000000000000
spec:
  podSelector:
    matchLabels:
      app: db
  policyTypes:
  - Ingress
status: {}
"""


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(SERVED_POLICY, id="served-networkpolicy"),
        pytest.param(
            NAMESPACE + "spec:\n  finalizers: [kubernetes]\nstatus:\n  phase: Active\n",
            id="namespace-lenient",
        ),
        pytest.param(
            POD.replace("    image: nginx\n", "    image: nginx\n    futureField: 1\n")
            + "  dnsPolicy: ClusterFirst\nstatus:\n  phase: Running\n",
            id="pod-lenient-but-ports",
        ),
        pytest.param(
            DEPLOYMENT.replace("  replicas: 2\n", "  replicas: 2\n  strategy: {}\n"),
            id="deployment-lenient-but-ports",
        ),
        pytest.param(
            SERVICE.replace("  - port: 80", "  - port: 80\n    futureField: 1"), id="other"
        ),
    ],
)
def test_strict_accepts_what_kubectl_accepts(tmp_path: Path, text: str) -> None:
    (manifest,) = load_manifests([write(tmp_path, "obj.yaml", text)])
    assert manifest.obj["metadata"]["name"] in ("allow-db", "prod", "web")


def test_all_or_nothing(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", NAMESPACE)
    write(tmp_path, "b.yaml", POD)
    write(tmp_path, "c.yaml", POLICY.format(port=0))
    with pytest.raises(ManifestError) as caught:
        load_manifests([str(tmp_path)])
    assert caught.value.path == str(tmp_path / "c.yaml")


def _ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        pytest.param(
            "dup.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
            "spec:\n  podSelector: {}\n  ingress: []\n  ingress:\n  - {}\n",
            "duplicate key 'ingress' (first at line 6)",
            id="yaml-duplicate-key",
        ),
        pytest.param(
            "dup.json",
            '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "name": "b"}}',
            "duplicate key 'name'",
            id="json-duplicate-key",
        ),
    ],
)
def test_duplicate_keys_are_refused(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        load_manifests([str(path)])
    assert fragment in str(caught.value) and str(path) in str(caught.value)


# -- malformed input: the corpus ----------------------------------------------------------
# Every file in manifest_corpus/ is malformed; each must be refused with one clear
# ManifestError (no other exception), within bounded time and memory, and the message must be
# safe to print. Files too big for git are generated below (GENERATED).

CORPUS = Path(__file__).parent / "manifest_corpus"

PEAK_BYTES = 64 * 1024 * 1024
"""Generous: a refused file costs a few MiB; the old loader took 486 MiB for alias-bomb.yaml."""
SECONDS = 30.0
"""Generous: a refused file takes well under a second on a laptop; this is not a speed test."""

CORPUS_EXPECTED: dict[str, str] = {
    # keys: JSON has only string keys; PyYAML raised TypeError for a list key
    "list-key.yaml": "(line 1, column 3): mapping keys must be strings, got list",
    "mapping-key.yaml": "(line 5, column 5): mapping keys must be strings, got mapping",
    "integer-key.yaml": "mapping keys must be strings, got integer '80' (quote it: \"80\")",
    "boolean-key.yaml": "mapping keys must be strings, got boolean 'on' (quote it: \"on\")",
    "null-key.yaml": "mapping keys must be strings, got null '~'",
    "duplicate-key.yaml": "(line 7, column 3): duplicate key 'ingress' (first at line 6)",
    "duplicate-key.json": "JSON error: duplicate key 'name'",
    "merge-key.yaml": "(line 3, column 3): merge keys (<<) are not supported",
    # aliases
    "alias-bomb.yaml": f"(line 11, column 34): alias *e stands for 66,430 values: more than "
    f"{MAX_NODES:,} values in this load",
    "recursive-alias.yaml": "(line 5, column 9): alias *d is inside the node it names",
    "undefined-alias.yaml": "(line 4, column 7): YAML syntax error: alias *nowhere has no anchor",
    # numbers, the way kubectl reads them (go-yaml v2), not YAML 1.1's
    "port-base-60.yaml": "spec.ingress[0].ports[0].port: a named port must contain only "
    "lowercase letters, digits and '-', got \"1:20\"",
    "port-exponent.yaml": "spec.ingress[0].ports[0].port: must be a port number or a port "
    "name, got number 1000.0",
    "int-tag-base-60.yaml": "(line 11, column 13): cannot read '1:20' as !!int",
    "infinity.yaml": "(line 11, column 13): .inf is not a finite number",
    "integer-past-64-bits.yaml": "integer 18446744073709551616 does not fit in 64 bits",
    "not-a-number.json": "JSON error: NaN is not JSON",
    "float-overflow.json": "JSON error: number 1e400 is out of range",
    "label-value-y.yaml": "metadata.labels[enabled]: must be a string, got boolean true",
    "replicas-float.yaml": "spec.replicas: must be a non-negative integer, got 1000000000.0",
    # the lab's cost
    "huge-replicas.yaml": "Deployment default/web: spec.replicas: at most 1000 in the lab "
    "(each replica becomes a Pod with its own network namespace), got 1000000000",
    # kinds
    "kind-lowercase.yaml": 'kind: unknown kind "networkpolicy": did you mean "NetworkPolicy"?',
    "kind-plural.yaml": 'kind: unknown kind "NetworkPolicies": did you mean "NetworkPolicy"?',
    "kind-lowercase-list.yaml": 'kind: unknown kind "list": did you mean "List"?',
    "kind-not-a-name.yaml": "kind: must be a kind such as NetworkPolicy (letters and digits), "
    "got 'Pod\\x1b[2J'",
    # control characters never reach the terminal
    "control-characters-in-name.yaml": "Namespace prod\\x1b]0;pwned\\x07\\x1b[2J: metadata.name: "
    "must not hold control or invisible characters",
    "control-characters-in-field.yaml": 'protocol: must be one of TCP, UDP, SCTP, got "TCP',
    "bidi-override-in-name.yaml": "Service abc\\u202edef: metadata.name: must not hold control",
    "raw-control-character.yaml": "(line 4, column 9): YAML syntax error: character U+001B is "
    "not allowed",
    # text that is not UTF-8
    "invalid-utf8.yaml": "(line 4, byte 11): not UTF-8 text: invalid continuation byte (byte c3)",
    "invalid-utf8.json": "(line 1, byte 65): not UTF-8 text: invalid start byte (byte ff)",
    "utf16.yaml": "(line 1, byte 1): not UTF-8 text",
    # syntax
    "tab-indent.yaml": "(line 4, column 1): YAML syntax error: found character",
    "bad-indent.yaml": "(line 3, column 10): YAML syntax error: mapping values are not allowed",
    "unterminated-flow.yaml": "(line 5, column 1): YAML syntax error",
    "json-syntax.json": "(line 4, column 1): JSON syntax error: Expecting value",
    "json-trailing-comma.json": "JSON syntax error: Expecting property name",
    "json-unterminated-string.json": "JSON syntax error: Unterminated string",
    # tags with no JSON value, or none at all
    "binary-tag.yaml": "(line 5, column 8): the tag !!binary is not supported",
    "python-tag.yaml": "the tag !!python/object/apply:os.system is not supported",
    "set-tag.yaml": "the tag !!set is not supported",
    "local-tag.yaml": "the tag !secret is not supported",
    # documents and Lists that are not objects
    "document-scalar.yaml": "expected a Kubernetes object (a mapping), got string",
    "document-list.yaml": "expected a Kubernetes object (a mapping), got list",
    "document-null-in-list.json": "(item 1): expected a Kubernetes object (a mapping), got null",
    "list-items-not-a-list.yaml": "List: items: must be a list, got mapping",
    "list-item-scalar.yaml": "(item 1): expected a Kubernetes object (a mapping), got integer",
    "list-in-list.yaml": "(item 1): List: a List inside a List is not supported",
    "list-in-list-without-items.yaml": "(item 1): List: a List inside a List is not supported",
}


def _deployment(name: str, replicas: int, labels: int = 1) -> dict[str, Any]:
    extra = {f"l{index}": "x" for index in range(labels - 1)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **extra}},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]},
            },
        },
    }


def _one(name: str, content: str | bytes) -> Callable[[Path], list[str]]:
    """A generator of one file, for GENERATED."""

    def make(directory: Path) -> list[str]:
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return [str(path)]

    return make


def _many(count: int, size: int) -> Callable[[Path], list[str]]:
    """``count`` files of ``size`` bytes of YAML comments, for the load limits."""

    def make(directory: Path) -> list[str]:
        line = "#" * 1023 + "\n"
        for index in range(count):
            (directory / f"{index:05}.yaml").write_text(line * (size // 1024))
        return [str(directory)]

    return make


DEEP = 20_000
GENERATED: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "deep-yaml-flow": (
        _one("deep.yaml", "[" * DEEP + "]" * DEEP + "\n"),
        "(line 1, column ",  # libyaml stops at 1000 levels, even before we stop at 100
    ),
    "deep-yaml-block": (
        _one("deep.yaml", "- " * DEEP + "x\n"),
        f"(line 1, column 201): nested deeper than {MAX_DEPTH} levels",
    ),
    "deep-yaml-mappings": (
        _one("deep.yaml", "".join(" " * level + "a:\n" for level in range(2000))),
        f"(line 100, column 100): nested deeper than {MAX_DEPTH} levels",
    ),
    "deep-json-lists": (
        _one("deep.json", "[" * DEEP + "]" * DEEP),
        f"(line 1, column 101): nested deeper than {MAX_DEPTH} levels",
    ),
    "deep-json-objects": (
        _one("deep.json", '{"a":' * DEEP + "1" + "}" * DEEP),
        f"(line 1, column 497): nested deeper than {MAX_DEPTH} levels",
    ),
    "deep-alias": (
        # 10 levels, each nesting the previous one 10 deep: 100+ deep only once expanded.
        _one(
            "deep.yaml",
            "l0: &l0 x\n"
            + "".join(
                f"l{n}: &l{n} " + "[" * 10 + f"*l{n - 1}" + "]" * 10 + "\n" for n in range(1, 12)
            ),
        ),
        f"alias *l9 nests deeper than {MAX_DEPTH} levels",
    ),
    "oversize-file": (
        _one("big.yaml", "#" * (MAX_FILE_BYTES + 1)),
        f"big.yaml: larger than {MAX_FILE_BYTES // 2**20} MiB",
    ),
    "50-mib-file": (
        _one("big.yaml", b"a: b\n" * (10 * 2**20)),
        f"big.yaml: larger than {MAX_FILE_BYTES // 2**20} MiB",
    ),
    "too-many-objects": (
        _one(
            "list.json",
            json.dumps({"apiVersion": "v1", "kind": "List", "items": [{}] * (MAX_OBJECTS + 1)}),
        ),
        f"more than {MAX_OBJECTS:,} objects in this load",
    ),
    "replicas-add-up-to-too-many-objects": (
        _one(
            "deployments.json",
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": [
                        _deployment(f"web-{n}", MAX_REPLICAS)
                        for n in range(MAX_OBJECTS // MAX_REPLICAS + 1)
                    ],
                }
            ),
        ),
        f"(item {MAX_OBJECTS // MAX_REPLICAS}): more than {MAX_OBJECTS:,} objects in this load",
    ),
    "replicas-times-template-too-many-nodes": (
        _one("big-template.json", json.dumps(_deployment("web", MAX_REPLICAS, labels=600))),
        f"spec.replicas: {MAX_REPLICAS} copies of spec.template: more than {MAX_NODES:,} values",
    ),
    "too-many-files": (
        _many(MAX_FILES + 1, 0),
        f"{MAX_FILES + 1} manifest files here, more than the {MAX_FILES} one load may read",
    ),
    "too-many-bytes-in-one-load": (
        _many(MAX_LOAD_BYTES // MAX_FILE_BYTES + 1, MAX_FILE_BYTES),
        f"{MAX_LOAD_BYTES // MAX_FILE_BYTES:05}.yaml: this load's files hold more than "
        f"{MAX_LOAD_BYTES // 2**20} MiB together",
    ),
}


def _refused_within_bounds(paths: list[str]) -> ManifestError:
    """The ManifestError ``load_manifests(paths)`` raises; fails past PEAK_BYTES or SECONDS."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ManifestError) as caught:
            load_manifests(paths)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"refusing took {peak / 2**20:.0f} MiB"
    assert elapsed < SECONDS, f"refusing took {elapsed:.1f} s"
    message = str(caught.value)
    assert message.isprintable(), f"unescaped characters in {message!r}"
    return caught.value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("nodes.yaml", "[" + "0, " * 10_000 + "0]", id="yaml-flow"),
        pytest.param("nodes.yaml", "- 0\n" * 10_001, id="yaml-block"),
        pytest.param("nodes.json", "[" + "0," * 10_000 + "0]", id="json"),
        pytest.param(
            "nodes.yaml", "".join(f"---\nk{n}: v\n" for n in range(3_400)), id="yaml-documents"
        ),
    ],
)
def test_the_node_limit_stops_reading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, text: str
) -> None:
    # At the real limit this takes seconds; the code path is the same at 10,000.
    monkeypatch.setattr(manifests_module, "MAX_NODES", 10_000)
    error = _refused_within_bounds([write(tmp_path, name, text)])
    assert "more than 10,000 values in this load" in str(error)
    assert error.where is not None and error.where.startswith("line ")


def test_the_node_limit_counts_the_whole_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(manifests_module, "MAX_NODES", 10_000)
    half = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: [" + "0, " * 6_000 + "0]"
    paths = [write(tmp_path, "a.yaml", half), write(tmp_path, "b.yaml", half)]
    error = _refused_within_bounds(paths)
    assert error.path == paths[1]


def test_corpus_is_complete() -> None:
    names = sorted(path.name for path in CORPUS.iterdir() if not path.name.startswith("."))
    assert names == sorted(CORPUS_EXPECTED)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [pytest.param(name, fragment, id=name) for name, fragment in sorted(CORPUS_EXPECTED.items())],
)
def test_corpus_file_is_refused(name: str, fragment: str) -> None:
    path = str(CORPUS / name)
    error = _refused_within_bounds([path])
    assert error.path == path
    assert fragment in str(error)


@pytest.mark.parametrize("case", sorted(GENERATED), ids=str)
def test_generated_input_is_refused(tmp_path: Path, case: str) -> None:
    make, fragment = GENERATED[case]
    error = _refused_within_bounds(make(tmp_path))
    assert fragment in str(error)


def test_the_whole_corpus_in_one_load_names_the_first_bad_file() -> None:
    error = _refused_within_bounds([str(CORPUS)])
    assert error.path == str(CORPUS / sorted(CORPUS_EXPECTED)[0])


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        pytest.param("list-key.yaml", "got list", id="list-key"),
        pytest.param("alias-bomb.yaml", "alias *e stands for 66,430 values", id="alias-bomb"),
        pytest.param("recursive-alias.yaml", "inside the node it names", id="recursive-alias"),
        pytest.param("merge-key.yaml", "merge keys", id="merge-key"),
        pytest.param("raw-control-character.yaml", "U+001B is not allowed", id="raw-control"),
        pytest.param("python-tag.yaml", "!!python/object/apply:os.system", id="python-tag"),
        pytest.param("port-base-60.yaml", 'got "1:20"', id="base-60"),
    ],
)
def test_without_libyaml_the_same(
    monkeypatch: pytest.MonkeyPatch, name: str, fragment: str
) -> None:
    # PyYAML built without libyaml falls back to its pure-Python parser: same results.
    monkeypatch.setattr(manifests_module.yaml, "__with_libyaml__", False)
    assert fragment in str(_refused_within_bounds([str(CORPUS / name)]))


def test_deep_yaml_without_libyaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(manifests_module.yaml, "__with_libyaml__", False)
    error = _refused_within_bounds(_one("deep.yaml", "[" * DEEP + "]" * DEEP)(tmp_path))
    assert f"(line 1, column {MAX_DEPTH + 1}): nested deeper than {MAX_DEPTH} levels" in str(error)


# -- limits: what is allowed still loads --------------------------------------------------


def test_a_file_of_exactly_the_limit_loads(tmp_path: Path) -> None:
    text = NAMESPACE + "#" * (MAX_FILE_BYTES - len(NAMESPACE) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_BYTES
    assert [m.obj["kind"] for m in load_manifests([write(tmp_path, "ns.yaml", text)])] == [
        "Namespace"
    ]


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    # The document is level 1, metadata 2, annotations... no: a ConfigMap's data nests freely.
    inner = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{x: {inner}}}\n"
    (manifest,) = load_manifests([write(tmp_path, "deep.yaml", text)])
    value = manifest.obj["data"]["x"]
    for _ in range(MAX_DEPTH - 3):
        (value,) = value
    assert value == []
    deeper = text.replace(inner, "[" + inner + "]")
    assert "nested deeper than" in str(load_error(tmp_path, deeper))
    json_text = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c"},
            "data": {"x": json.loads(inner)},
        }
    )
    assert load_manifests([write(tmp_path, "deep.json", json_text)])


def test_aliases_are_shared_and_counted_not_copied(tmp_path: Path) -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        "data:\n  a: &ports [{port: 80}, {port: 443}]\n  b: *ports\n  c: *ports\n"
    )
    (manifest,) = load_manifests([write(tmp_path, "alias.yaml", text)])
    data = manifest.obj["data"]
    assert data["a"] == data["b"] == data["c"] == [{"port": 80}, {"port": 443}]


@pytest.mark.parametrize("replicas", [0, 1, MAX_REPLICAS], ids=str)
def test_replicas_up_to_the_limit_load(tmp_path: Path, replicas: int) -> None:
    text = DEPLOYMENT.replace("replicas: 2", f"replicas: {replicas}")
    (manifest,) = load_manifests([write(tmp_path, "deploy.yaml", text)])
    assert manifest.obj["spec"]["replicas"] == replicas


def test_replicas_past_the_limit(tmp_path: Path) -> None:
    text = DEPLOYMENT.replace("replicas: 2", f"replicas: {MAX_REPLICAS + 1}")
    assert str(load_error(tmp_path, text)).endswith(
        f"Deployment prod/web: spec.replicas: at most {MAX_REPLICAS} in the lab (each replica "
        f"becomes a Pod with its own network namespace), got {MAX_REPLICAS + 1}"
    )


# -- YAML, the way kubectl reads it -------------------------------------------------------


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        # YAML 1.1 base 60 is gone (PyYAML: 80, 45000)
        pytest.param("1:20", "1:20", id="base-60-int"),
        pytest.param("12:30:00", "12:30:00", id="base-60-time"),
        pytest.param("1:20.5", "1:20.5", id="base-60-float"),
        # Go's integer syntax (strconv.ParseInt base 0, after removing "_")
        pytest.param("017", 15, id="c-octal"),
        pytest.param("0o17", 15, id="0o-octal"),
        pytest.param("0x1F", 31, id="hex"),
        pytest.param("-0x1F", -31, id="negative-hex"),
        pytest.param("0b101", 5, id="binary"),
        pytest.param("1_000", 1000, id="underscores"),
        pytest.param("+80", 80, id="plus"),
        pytest.param("-9223372036854775808", -(2**63), id="int64-min"),
        pytest.param("18446744073709551615", 2**64 - 1, id="uint64-max"),
        # go-yaml's floats: no dot needed
        pytest.param("1e3", 1000.0, id="exponent"),
        pytest.param("09", 9.0, id="not-octal-is-float"),
        pytest.param(".5", 0.5, id="dot"),
        pytest.param("-.5", -0.5, id="minus-dot"),
        pytest.param("1.", 1.0, id="trailing-dot"),
        pytest.param("1e400", "1e400", id="float-overflow-is-a-string"),
        pytest.param("1.2.3", "1.2.3", id="version"),
        # go-yaml v2's booleans and nulls (YAML 1.1's, plus y and n)
        pytest.param("yes", True, id="yes"),
        pytest.param("y", True, id="y"),
        pytest.param("On", True, id="on"),
        pytest.param("NO", False, id="no"),
        pytest.param("n", False, id="n"),
        pytest.param("off", False, id="off"),
        pytest.param("~", None, id="tilde"),
        pytest.param("", None, id="empty"),
        pytest.param("Null", None, id="null"),
        pytest.param("nothing", "nothing", id="word"),
        # strings where PyYAML makes other things
        pytest.param("2024-01-01", "2024-01-01", id="date"),
        pytest.param("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z", id="timestamp"),
        pytest.param("=", "=", id="value-key"),
        # quoted and tagged
        pytest.param("'1:20'", "1:20", id="single-quoted"),
        pytest.param('"yes"', "yes", id="double-quoted"),
        pytest.param("!!str 80", "80", id="str-tag"),
        pytest.param("! 80", "80", id="non-specific-tag"),
        pytest.param("!!int 0x10", 16, id="int-tag"),
        pytest.param("!!float 1", 1.0, id="float-tag-on-int"),
        pytest.param("!!bool y", True, id="bool-tag"),
        pytest.param("!!null ~", None, id="null-tag"),
    ],
)
def test_plain_scalars_read_as_kubectl_reads_them(tmp_path: Path, scalar: str, value: Any) -> None:
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  x: {scalar}\n"
    (manifest,) = load_manifests([write(tmp_path, "c.yaml", text)])
    assert manifest.obj["data"]["x"] == value
    assert type(manifest.obj["data"]["x"]) is type(value)


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        pytest.param("0o17", 15, id="0o"),
        pytest.param("0x50", 80, id="hex"),
        pytest.param("1_0_0", 100, id="underscores"),
        pytest.param("http", "http", id="name"),
    ],
)
def test_policy_ports_read_as_kubectl_reads_them(tmp_path: Path, port: str, expected: Any) -> None:
    (manifest,) = load_manifests([write(tmp_path, "p.yaml", POLICY.format(port=port))])
    assert manifest.obj["spec"]["ingress"][0]["ports"][0]["port"] == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("!!float x", "cannot read 'x' as !!float", id="float-tag"),
        pytest.param("!!bool maybe", "cannot read 'maybe' as !!bool", id="bool-tag"),
        pytest.param("!!null 0", "cannot read '0' as !!null", id="null-tag"),
        pytest.param("!!timestamp 2024-01-01", "the tag !!timestamp is not supported", id="ts"),
        pytest.param("!!omap [{a: 1}]", "the tag !!omap is not supported", id="omap"),
        pytest.param("-.inf", "-.inf is not a finite number", id="minus-inf"),
        pytest.param(".NaN", ".NaN is not a finite number", id="nan"),
        pytest.param("0x1" + "0" * 16, "does not fit in 64 bits", id="hex-65-bits"),
        pytest.param("-9223372036854775809", "does not fit in 64 bits", id="below-int64"),
        pytest.param("1" * 5000, "does not fit in 64 bits", id="5000-digits"),
    ],
)
def test_values_without_a_json_meaning_are_refused(
    tmp_path: Path, text: str, fragment: str
) -> None:
    yaml_text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  x: {text}\n"
    error = load_error(tmp_path, yaml_text)
    assert error.where == "line 5, column 6"
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("1.5: x", "got number '1.5'", id="float"),
        pytest.param("yes: x", "got boolean 'yes'", id="yes"),
        pytest.param("? [a]\n  : x", "got list", id="list"),
        pytest.param("? {a: b}\n  : x", "got mapping", id="mapping"),
    ],
)
def test_mapping_keys_must_be_strings(tmp_path: Path, text: str, fragment: str) -> None:
    yaml_text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  {text}\n"
    error = load_error(tmp_path, yaml_text)
    assert error.where == f"line 5, column {5 if text.startswith('?') else 3}"
    assert f"mapping keys must be strings, {fragment}" in str(error)


def test_string_keys_that_look_special_may_be_quoted(tmp_path: Path) -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        "data: {'80': a, \"yes\": b, '<<': c, !!str 1.5: d}\n"
    )
    (manifest,) = load_manifests([write(tmp_path, "c.yaml", text)])
    assert manifest.obj["data"] == {"80": "a", "yes": "b", "<<": "c", "1.5": "d"}


def test_an_alias_key_must_name_a_string(tmp_path: Path) -> None:
    text = "key: &k [a]\nmap:\n  *k : 1\n"
    assert "(line 3, column 3): mapping keys must be strings, got list" in str(
        load_error(tmp_path, text)
    )


def test_anchors_may_be_redefined(tmp_path: Path) -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        "data: {a: &x one, b: *x, c: &x two, d: *x}\n"
    )
    (manifest,) = load_manifests([write(tmp_path, "c.yaml", text)])
    assert manifest.obj["data"] == {"a": "one", "b": "one", "c": "two", "d": "two"}


def test_anchors_do_not_cross_documents(tmp_path: Path) -> None:
    text = (
        NAMESPACE.replace("team: a", "team: &t a")
        + "---\n"
        + NAMESPACE.replace("team: a", "team: *t")
    )
    assert "alias *t has no anchor" in str(load_error(tmp_path, text))


# -- other paths in -----------------------------------------------------------------------


def test_stdin_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(NAMESPACE.encode()), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    assert [m.source for m in load_manifests(["-"])] == ["<stdin>"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param(b"a: \xff\n", "<stdin> (line 1, byte 4): not UTF-8 text", id="not-utf8"),
        pytest.param(
            b"#" * (MAX_FILE_BYTES + 1),
            f"<stdin>: larger than {MAX_FILE_BYTES // 2**20} MiB",
            id="oversize",
        ),
        pytest.param(b"? [a]\n: b\n", "mapping keys must be strings", id="list-key"),
    ],
)
def test_bad_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes, fragment: str) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert fragment in str(_refused_within_bounds(["-"]))


class _FailingReader(io.RawIOBase):
    """A byte stream whose reads fail, like a standard input that is a directory."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise IsADirectoryError(21, "Is a directory")


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [
        pytest.param(None, "<stdin>: cannot read: standard input is closed", id="closed"),
        pytest.param(
            io.TextIOWrapper(io.BufferedReader(_FailingReader())),
            "<stdin>: cannot read: Is a directory",
            id="directory",
        ),
    ],
)
def test_unreadable_stdin(monkeypatch: pytest.MonkeyPatch, stdin: Any, fragment: str) -> None:
    monkeypatch.setattr("sys.stdin", stdin)
    assert str(_refused_within_bounds(["-"])) == fragment


def test_stdin_text_stream_with_a_lone_surrogate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a: \udcff\n"))
    assert "not UTF-8 text" in str(_refused_within_bounds(["-"]))


def test_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + NAMESPACE.encode())
    assert [m.obj["kind"] for m in load_manifests([str(path)])] == ["Namespace"]


def test_directory_unreadable_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    error = _refused_within_bounds([str(missing) + "/"])
    assert "cannot read" in str(error)


def test_file_names_are_escaped(tmp_path: Path) -> None:
    write(tmp_path, "evil\x1b[2J.yaml", NAMESPACE)
    (manifest,) = load_manifests([str(tmp_path)])
    assert manifest.source == str(tmp_path / "evil\\x1b[2J.yaml")
    write(tmp_path, "evil\x1b[2J.yaml", "? [a]\n: b\n")
    error = _refused_within_bounds([str(tmp_path)])
    assert str(error).startswith(str(tmp_path / "evil\\x1b[2J.yaml"))


def test_empty_inputs_load_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_manifests([write(tmp_path, "e.yaml", "")]) == []
    assert load_manifests([write(tmp_path, "c.yaml", "# nothing\n---\n---\n")]) == []
    assert load_manifests([write(tmp_path, "e.json", "\n")]) == []
    (tmp_path / "empty-dir").mkdir()
    assert load_manifests([str(tmp_path / "empty-dir")]) == []
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert load_manifests(["-"]) == []


# -- messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("plain text", "plain text", id="printable"),
        pytest.param("\x1b[31mred", "\\x1b[31mred", id="escape"),
        pytest.param("a\r\nb\tc\x00", "a\\x0d\\x0ab\\x09c\\x00", id="c0"),
        pytest.param("\x7f\x85\x9b", "\\x7f\\x85\\x9b", id="del-and-c1"),
        pytest.param("abc\u202edef\u200b", "abc\\u202edef\\u200b", id="bidi-and-zero-width"),
        pytest.param("\udcff", "\\udcff", id="lone-surrogate"),
        pytest.param("\U000e0041", "\\U000e0041", id="tag-character"),
        pytest.param("naïve café 東京", "naïve café 東京", id="unicode-letters"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_manifest_error_escapes_every_part() -> None:
    error = ManifestError("a\x1b.yaml", "line\n1", "bad \x9b value")
    assert str(error) == "a\\x1b.yaml (line\\x0a1): bad \\x9b value"
    assert (error.path, error.where, error.detail) == (
        "a\\x1b.yaml",
        "line\\x0a1",
        "bad \\x9b value",
    )


# -- whatever the input: a list of manifests or one ManifestError --------------------------

_YAML_ATOMS = [
    "apiVersion: v1\n",
    "kind: Pod\n",
    "kind: NetworkPolicy\n",
    "metadata:\n",
    "  name: a\n",
    "spec:\n",
    "  ingress:\n",
    "  - ports:\n",
    "    - port: 1:20\n",
    "? [a]\n: b\n",
    "&a [*a]\n",
    "*a\n",
    "&a x\n",
    "<<: *a\n",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ": ",
    ", ",
    "---\n",
    "!!binary x\n",
    "!!python/name:os.system\n",
    "\t",
    "\x1b",
    '"\\e"',
    "'",
    '"',
    "\n",
    " ",
    "0o17",
    "y",
    "items: [1]\n",
    "kind: List\n",
    "replicas: 99999999999\n",
    "%YAML 1.1\n",
    "|\n  x\n",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_YAML_ATOMS), max_size=40), st.booleans())
def test_any_input_is_loaded_or_refused_cleanly(atoms: list[str], as_json: bool) -> None:
    # Hypothesis runs the body many times: a temporary directory per example, not tmp_path.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ("fuzz.json" if as_json else "fuzz.yaml")
        path.write_text("".join(atoms))
        try:
            loaded = load_manifests([str(path)])
        except ManifestError as error:
            assert str(error).isprintable()
        else:
            for manifest in loaded:
                assert all(isinstance(v, JSON_TYPES) for v in _walk(manifest.obj))
                json.dumps(manifest.obj)  # what the lab stores must be JSON


JSON_TYPES = (dict, list, str, int, float, bool, type(None))


def _walk(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, dict):
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)


# -- the lab's commands print the error, never a traceback --------------------------------


@pytest.mark.parametrize(
    ("verb", "name"),
    [
        pytest.param("apply", "list-key.yaml", id="apply-list-key"),
        pytest.param("apply", "alias-bomb.yaml", id="apply-alias-bomb"),
        pytest.param("apply", "huge-replicas.yaml", id="apply-huge-replicas"),
        pytest.param("apply", "kind-lowercase.yaml", id="apply-lowercase-kind"),
        pytest.param("apply", "control-characters-in-name.yaml", id="apply-control-characters"),
        pytest.param("apply", "invalid-utf8.yaml", id="apply-invalid-utf8"),
        pytest.param("up", "port-base-60.yaml", id="up-base-60"),
        pytest.param("delete", "recursive-alias.yaml", id="delete-recursive-alias"),
    ],
)
def test_lab_commands_refuse_bad_manifests_cleanly(tmp_path: Path, verb: str, name: str) -> None:
    # The manifests are loaded before the lab is looked at: no root, no lab, nothing changed.
    path = CORPUS / name
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "lab", verb, "--lab", "npt-input", "-f", str(path)],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=SECONDS,
        env={**os.environ, "NETPOL_AGENT_LAB_ROOT": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    line = result.stderr.removesuffix("\n")
    assert line.isprintable(), f"unescaped characters in {line!r}"
    assert line.startswith(f"netpol-agent lab {verb}: refused, nothing changed: {path}")
    assert CORPUS_EXPECTED[name] in line
    assert list(tmp_path.iterdir()) == []


def test_lab_command_with_a_deep_file(tmp_path: Path) -> None:
    path = write(tmp_path, "deep.json", "[" * DEEP + "]" * DEEP)
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "lab", "apply", "--lab", "npt-input", "-f", path],
        capture_output=True,
        text=True,
        timeout=SECONDS,
        env={**os.environ, "NETPOL_AGENT_LAB_ROOT": str(tmp_path / "labs")},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"netpol-agent lab apply: refused, nothing changed: {path} (line 1, column 101): "
        f"nested deeper than {MAX_DEPTH} levels, the most a manifest may nest\n"
    )


# -- the registry's kinds: ClusterNetworkPolicy, Node, and the refused policy kinds -------------

CLUSTER_POLICY = """\
apiVersion: {api_version}
kind: ClusterNetworkPolicy
metadata:
  name: guard
  namespace: {namespace}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {{}}
  ingress:
  - name: deny-all
    action: Deny
    from:
    - namespaces: {{}}
"""

NODE = """\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    zone: {zone}
status:
  addresses:
  - type: InternalIP
    address: {address}
"""


@pytest.mark.parametrize(
    "api_version",
    [
        pytest.param("policy.networking.k8s.io/v1alpha2", id="v1alpha2"),
        pytest.param("policy.networking.k8s.io/v1beta1", id="v1beta1"),
    ],
)
@pytest.mark.parametrize(
    "namespace", [pytest.param("default", id="namespace-given"), pytest.param("", id="none")]
)
def test_cluster_network_policy_is_accepted_without_a_namespace(
    tmp_path: Path, api_version: str, namespace: str
) -> None:
    text = CLUSTER_POLICY.format(api_version=api_version, namespace=namespace or "null")
    (manifest,) = load_manifests([write(tmp_path, "cnp.yaml", text)])
    assert manifest.obj["apiVersion"] == api_version
    assert "namespace" not in manifest.obj["metadata"], "cluster-scoped: the API clears it"


def test_a_list_mixes_kinds(tmp_path: Path) -> None:
    policy = CLUSTER_POLICY.format(api_version="policy.networking.k8s.io/v1beta1", namespace="x")
    node = NODE.format(zone="a", address="172.18.0.2")
    items = "".join(
        "- " + text.replace("\n", "\n  ").rstrip() + "\n"
        for text in (NAMESPACE, policy, POLICY.format(port=80), node)
    )
    manifests = load_manifests(
        [write(tmp_path, "list.yaml", f"apiVersion: v1\nkind: List\nitems:\n{items}")]
    )
    assert [(m.obj["kind"], m.obj["metadata"].get("namespace")) for m in manifests] == [
        ("Namespace", None),
        ("ClusterNetworkPolicy", None),
        ("NetworkPolicy", "default"),
        ("Node", None),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            CLUSTER_POLICY.format(
                api_version="policy.networking.k8s.io/v1beta1", namespace="x"
            ).replace("action: Deny", "action: Allow"),
            "objects.yaml: ClusterNetworkPolicy guard: spec.ingress[0].action:",
            id="cnp-action",
        ),
        pytest.param(
            CLUSTER_POLICY.format(
                api_version="policy.networking.k8s.io/v1beta1", namespace="x"
            ).replace("  priority: 10\n", "  priority: 10\n  prority: 3\n"),
            "objects.yaml: ClusterNetworkPolicy guard: spec.prority: unknown field",
            id="cnp-unknown-field",
        ),
        pytest.param(
            CLUSTER_POLICY.format(api_version="policy.networking.k8s.io/v1", namespace="x"),
            "ClusterNetworkPolicy guard: apiVersion: must be policy.networking.k8s.io/v1beta1 or "
            "policy.networking.k8s.io/v1alpha2 for kind ClusterNetworkPolicy, got "
            "policy.networking.k8s.io/v1",
            id="cnp-version",
        ),
        pytest.param(
            NODE.format(zone="a", address="172.18.0.02"),
            "objects.yaml: Node node-1: status.addresses[0].address:",
            id="node-address",
        ),
        pytest.param(
            NODE.format(zone="-a", address="172.18.0.2"),
            "objects.yaml: Node node-1: metadata.labels",
            id="node-label",
        ),
    ],
)
def test_registry_kinds_are_validated_strictly(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(load_error(tmp_path, text))


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        pytest.param("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy", id="anp"),
        pytest.param("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy", id="banp"),
        pytest.param("cilium.io/v2", "CiliumNetworkPolicy", id="cilium"),
        pytest.param("cilium.io/v2", "CiliumClusterwideNetworkPolicy", id="cilium-clusterwide"),
        pytest.param("projectcalico.org/v3", "NetworkPolicy", id="calico-networkpolicy"),
        pytest.param("projectcalico.org/v3", "GlobalNetworkPolicy", id="calico-global"),
        pytest.param("crd.projectcalico.org/v1", "GlobalNetworkPolicy", id="calico-crd"),
        pytest.param("crd.antrea.io/v1beta1", "ClusterNetworkPolicy", id="antrea-cnp"),
    ],
)
def test_refused_policy_kinds_are_errors_naming_the_kind(
    tmp_path: Path, api_version: str, kind: str
) -> None:
    text = f"apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: p\nspec: {{}}\n"
    message = str(load_error(tmp_path, text))
    assert f"{api_version} {kind} is not enforced" in message
    assert message.startswith(f"{tmp_path / 'objects.yaml'}: {kind} ")
