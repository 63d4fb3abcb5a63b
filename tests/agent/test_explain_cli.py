"""``netpol-agent explain`` / ``describe`` (and their ``lab`` forms) on files in tmp_path,
through the real entry point: output shapes, and clear errors (exit 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main

CLUSTER = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: lab}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec:
  nodeName: node-1
  containers: [{name: c, image: x}]
status: {podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend}}
spec:
  nodeName: node-2
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.244.2.2}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tool, namespace: lab}
spec:
  replicas: 2
  selector: {matchLabels: {app: tool}}
  template:
    metadata: {labels: {app: tool}}
    spec: {containers: [{name: c, image: x}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: frontend}}}]
      ports: [{port: http}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-lab}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: shop}}}
  ingress:
    - name: lab
      action: Deny
      from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: lab}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: try-deny
  namespace: shop
  annotations: {netpol-agent.io/staged: "true"}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def explain_args(manifest: Path, source: str, target: str, *more: str) -> list[str]:
    return ["explain", "-f", str(manifest), "--from", source, "--to", target, *more]


def test_explain_json(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        *explain_args(manifest, "shop/frontend", "shop/backend", "--port", "8080", "-o", "json"),
    )
    assert code == 0
    data = json.loads(out)
    assert data["verdict"] == "allowed"
    assert data["egress"] == {**data["egress"], "verdict": "allowed", "decided_by": []}
    assert [r["name"] for r in data["ingress"]["decided_by"]] == ["backend-in"]
    assert data["ingress"]["decided_by"][0]["action"] == "Allow"
    # The staged egress deny of the frontend would cut it.
    assert data["staged"]["would_deny"] is True
    assert [r["name"] for r in data["staged"]["changed_by"]] == ["try-deny"]


def test_explain_text_starts_with_the_verdict(
    manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        *explain_args(
            manifest, "lab/tool-1", "shop/backend", "--port", "8080", "--protocol", "tcp"
        ),
    )
    assert code == 0
    lines = out.splitlines()
    # Deployment pods from files have no address (no status): named by name alone.
    assert lines[0] == "DENIED  lab/tool-1 -> shop/backend (10.244.2.2) TCP/8080"
    assert lines[1].startswith("decided by: ClusterNetworkPolicy no-lab rule 0 (lab) Deny")
    assert any("rule 0 (lab) Deny: matches" in line for line in lines)


def test_explain_to_an_address(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        *explain_args(
            manifest, "shop/backend", "192.0.2.7", "--port", "53", "--protocol", "UDP", "-o", "json"
        ),
    )
    assert code == 0
    data = json.loads(out)
    assert data["verdict"] == "allowed" and data["dst"]["pod"] is False
    assert data["ingress"]["enforced"] is False


def test_describe(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "describe", "pod", "shop/backend", "-f", str(manifest))
    assert code == 0 and "ClusterNetworkPolicy no-lab (priority 10)" in out
    code, out, _ = run(capsys, "describe", "policy", "shop/backend-in", "-f", str(manifest))
    assert code == 0 and "Selects now:  shop/backend" in out
    code, out, _ = run(capsys, "describe", "policy", "no-lab", "-f", str(manifest))
    assert code == 0 and "Selects now: shop/backend, shop/frontend" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("--from", "shop/ghost", "--to", "shop/backend", "--port", "80"),
            "no pod shop/ghost",
            id="unknown-pod",
        ),
        pytest.param(
            ("--from", "shop/frontend", "--to", "shop/backend", "--port", "70000"),
            "between 1 and 65535",
            id="bad-port",
        ),
        pytest.param(
            ("--from", "shop/frontend", "--to", "shop/backend", "--port", "x"),
            "not a port number",
            id="port-text",
        ),
        pytest.param(
            (
                "--from",
                "shop/frontend",
                "--to",
                "shop/backend",
                "--port",
                "80",
                "--protocol",
                "ICMP",
            ),
            "TCP, UDP, SCTP",
            id="bad-protocol",
        ),
        pytest.param(
            ("--from", "nonsense", "--to", "shop/backend", "--port", "80"),
            "neither namespace/name",
            id="bad-endpoint",
        ),
        pytest.param(
            ("--from", "shop/frontend", "--to", "shop/backend", "--port", "80", "--family", "6"),
            "pod shop/frontend has no IPv6 address (10.244.1.2)",
            id="no-address-of-the-family",
        ),
        pytest.param(
            ("--from", "shop/frontend", "--to", "shop/backend", "--port", "80", "--node", "n1"),
            "no node n1 (nodes: node-1, node-2)",
            id="unknown-node",
        ),
    ],
)
def test_explain_errors(
    manifest: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, _, err = run(capsys, "explain", "-f", str(manifest), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_malformed_manifest_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CLUSTER.replace("ports: [{port: http}]", "ports: [{port: 99999}]"))
    code, _, err = run(capsys, *explain_args(bad, "shop/frontend", "shop/backend", "--port", "80"))
    assert code == 2 and "bad.yaml" in err and "backend-in" in err and "Traceback" not in err
    code, _, err = run(capsys, "describe", "pod", "shop/x", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err


def test_lab_explain_reads_the_lab_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lab explain`` needs no root network access: it reads the lab's store (the objects
    its agents read), here a store written in the lab's format."""
    from agent.lab.lab import deployment_pods
    from agent.manifests import load_manifests

    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    objects = []
    for loaded in load_manifests([str(path)]):
        objects += (
            deployment_pods(loaded.obj) if loaded.obj["kind"] == "Deployment" else [loaded.obj]
        )
    lab = tmp_path / "labs" / "demo"
    lab.mkdir(parents=True)
    (lab / "lab.json").write_text("{}")
    (lab / "store.json").write_text(json.dumps({"revision": 3, "objects": objects}))
    monkeypatch.setenv("NETPOL_AGENT_LAB_ROOT", str(tmp_path / "labs"))
    code, out, _ = run(
        capsys,
        "lab",
        "explain",
        "--lab",
        "demo",
        "--from",
        "shop/frontend",
        "--to",
        "shop/backend",
        "--port",
        "8080",
        "-o",
        "json",
    )
    assert code == 0 and json.loads(out)["verdict"] == "allowed"
    code, out, _ = run(capsys, "lab", "describe", "--lab", "demo", "policy", "no-lab")
    assert code == 0 and "Tier:        Admin, priority 10" in out
    code, _, err = run(
        capsys, "lab", "explain", "--lab", "nolab", "--from", "a/b", "--to", "a/c", "--port", "1"
    )
    assert code == 1 and "does not exist" in err
    (lab / "store.json").write_text('{"revision": 4, "objects": [')  # cut short
    code, _, err = run(capsys, "lab", "describe", "--lab", "demo", "policy", "no-lab")
    assert code == 1 and "cannot read the lab's store" in err and "Traceback" not in err


def test_a_host_network_pod_is_its_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        CLUSTER
        + """---
apiVersion: v1
kind: Pod
metadata: {name: exporter, namespace: lab}
spec: {nodeName: node-2, hostNetwork: true, containers: [{name: c, image: x}]}
"""
    )
    code, out, _ = run(
        capsys, *explain_args(path, "lab/exporter", "shop/backend", "--port", "8080", "-o", "json")
    )
    data = json.loads(out)
    assert code == 0 and data["src"] == {
        "name": "lab/exporter (hostNetwork: its node)",
        "address": None,
        "pod": False,
        "node": None,
    }
    assert data["egress"]["enforced"] is False
    assert data["reason"] == "host"  # node-2 to its own pod: always allowed
