"""Tests for agent/manifests.py: manifest files in, validated Kubernetes objects out."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from agent.manifests import Manifest, ManifestError, load_manifests

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
        pytest.param("just text\n", "expected a Kubernetes object (a mapping), got str", id="str"),
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
