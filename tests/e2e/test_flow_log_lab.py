"""The flow log on real packets: every probed connection is recorded with the verdict the probe
saw and the rules that decided it, in each way the agent can decide (one queue thread, two
worker processes, per-packet mode), and ``--audit`` lets through what it reports as denied.

The lab runs examples/platform-tiers (NetworkPolicies and ClusterNetworkPolicies of both tiers,
pods and external hosts) with its teams' policies in force, and probes what its expected.yaml
describes for that stage. For every probed pair that passes a node (not a pod to itself, not
one external host to another), ``lab flows -o json`` must hold a record made after the probe
started whose verdict agrees with the probe wherever the target listens, and whose
``decided_by`` names exactly the rules the compiled tables name for that flow (which
tests/examples/test_platform_tiers.py pins to the README's sentences).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from enforcement.model import PROTOCOL_NUMBERS
from enforcement.tables import AllowTables
from tests.e2e.labctl import LabDriver, lab_session, netpol_agent
from tests.examples.expectations import EXAMPLES_DIR, Example, Probe, load_example
from tests.examples.test_examples_compiled import compile_example

pytestmark = pytest.mark.root

STAGE = ("platform.yaml", "teams.yaml")


@cache
def _example() -> Example:
    return load_example(EXAMPLES_DIR / "platform-tiers")


def _probes() -> list[Probe]:
    """The example's IPv4 probes of the stage, and UDP to the DNS port (with external hosts)."""
    probes = [probe for probe in _example().probes if probe.stage == STAGE and probe.family == 4]
    udp = Probe("dns", 53, "UDP", 4, True, STAGE, default=True, exceptions=())
    return [*probes, udp]


def _flows(lab: LabDriver, since: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(
        netpol_agent("lab", "flows", "--lab", lab.name, "-o", "json")
    )
    return [record for record in records if record.get("time", "") >= since]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _addresses(lab: LabDriver) -> dict[str, str]:
    """Endpoint key -> the IPv4 address a record names it by (pods are named by key)."""
    names = {pod["namespace"] + "/" + pod["name"]: pod["namespace"] + "/" + pod["name"]
             for pod in lab.pods()}  # fmt: skip
    for obj in _example().objects:
        if obj["kind"] == "ExternalHost":
            v4 = [a for a in obj["spec"]["addresses"] if ipaddress.ip_address(a).version == 4]
            names[f"external/{obj['metadata']['name']}"] = v4[0]
    return names


def _pairs(probe: Probe, matrix: dict[str, dict[str, bool]]) -> Iterator[tuple[str, str, bool]]:
    for source, row in matrix.items():
        for target, connected in row.items():
            if source == target or (
                source.startswith("external/") and target.startswith("external/")
            ):
                continue
            yield source, target, connected


def _check_probe(
    lab: LabDriver, probe: Probe, tables: AllowTables, names: dict[str, str], audit: bool
) -> tuple[list[str], int]:
    """Problems with the records of one probe, and how many pairs were checked."""
    listening = {e.key for e in _example().endpoints if (probe.port, probe.protocol) in e.serves}
    since = _now()
    matrix = lab.probe(probe.port, probe.protocol, external=probe.external)
    time.sleep(0.3)  # the pumps hand records over every 50 ms
    records = _flows(lab, since)
    problems = []
    checked = 0
    for source, target, connected in _pairs(probe, matrix):
        checked += 1
        mine = [
            r for r in records
            if r["src"] == names[source] and r["dst"] == names[target]
            and r["protocol"] == probe.protocol and r["dst_port"] == probe.port
            and r["event"] == "connection"
        ]  # fmt: skip
        where = f"{probe.protocol}/{probe.port} {source} -> {target}"
        if not mine:
            problems.append(f"{where}: no record (probe: {connected})")
            continue
        first = mine[0]
        outcome = tables.outcome(
            ipaddress.ip_address(first["src_ip"]).packed,
            ipaddress.ip_address(first["dst_ip"]).packed,
            PROTOCOL_NUMBERS[probe.protocol],
            probe.port,
        )
        expected_verdict = "allowed" if outcome.verdict.accepted else "denied"
        expected_refs = [ref.as_dict() for ref in outcome.refs]
        for record in mine:
            if record["verdict"] != expected_verdict:
                problems.append(f"{where}: recorded {record['verdict']}, tables {expected_verdict}")
            if record["decided_by"] != expected_refs:
                problems.append(f"{where}: decided_by {record['decided_by']} != {expected_refs}")
            if record["enforced"] != (not audit or record["verdict"] == "allowed"):
                problems.append(f"{where}: enforced {record['enforced']} (audit {audit})")
        if target in listening:
            passes = audit or all(record["verdict"] == "allowed" for record in mine)
            if passes != connected:
                problems.append(
                    f"{where}: probe {connected}, records {[r['verdict'] for r in mine]}"
                )
    return problems, checked


@pytest.mark.parametrize(
    "up_args",
    [
        pytest.param((), id="fast-one-queue"),
        pytest.param(("--queue-workers", "2"), id="fast-two-workers"),
        pytest.param(("--mode", "per-packet"), id="per-packet"),
        pytest.param(("--audit",), id="audit"),
        pytest.param(("--audit", "--mode", "per-packet"), id="audit-per-packet"),
    ],
)
def test_every_probed_connection_is_recorded(up_args: tuple[str, ...], tmp_path: Path) -> None:
    example = _example()
    tables, _ = compile_example(example, STAGE)
    audit = "--audit" in up_args
    problems: list[str] = []
    with lab_session("flows", tmp_path, up_args) as lab:
        lab.up(example.cluster, *example.stage_paths(STAGE))
        names = _addresses(lab)
        probes = _probes()
        assert probes, "platform-tiers has no IPv4 probe of this stage"
        checked = 0
        for probe in probes:
            found, count = _check_probe(lab, probe, tables, names, audit)
            problems += found
            checked += count
        assert checked >= 50 * len(probes) // 2, f"only {checked} pairs checked"
        table = netpol_agent("lab", "flows", "--lab", lab.name)
        assert "DECIDED BY" in table and "payments-lockdown" in table
    assert not problems, "\n".join(problems)


STAGED_DENY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: try-default-deny
  namespace: monitoring
  annotations: {{netpol-agent.io/staged: "{staged}"}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress]
"""


def test_a_staged_default_deny_changes_nothing_and_reports_what_it_would_deny(
    tmp_path: Path,
) -> None:
    """A staged default-deny of the monitoring namespace: every probe connects as before, and
    exactly the connections it would block are reported as would-deny, naming it."""
    example = _example()
    staged_file, enforced_file = tmp_path / "staged.yaml", tmp_path / "enforced.yaml"
    staged_file.write_text(STAGED_DENY.format(staged="true"))
    enforced_file.write_text(STAGED_DENY.format(staged="false"))
    before, _ = compile_example(example, STAGE)
    after, _ = compile_example(example, (*STAGE, str(enforced_file)))
    probe = Probe("prometheus-web", 9090, "TCP", 4, False, STAGE, default=True, exceptions=())
    problems: list[str] = []
    would_deny = 0
    with lab_session("staged", tmp_path) as lab:
        lab.up(example.cluster, *example.stage_paths(STAGE), staged_file)
        since = _now()
        matrix = lab.probe(probe.port, probe.protocol)
        time.sleep(0.3)
        records = _flows(lab, since)
        for source, target, connected in _pairs(probe, matrix):
            if target != "monitoring/prometheus":
                continue
            mine = [r for r in records if (r["src"], r["dst"]) == (source, target)
                    and r["dst_port"] == 9090 and r["event"] == "connection"]  # fmt: skip
            if not mine:
                problems.append(f"{source} -> {target}: no record")
                continue
            record = mine[0]
            src, dst = ip_of(record["src_ip"]), ip_of(record["dst_ip"])
            enforced = before.outcome(src, dst, 6, 9090).verdict.accepted
            staged = after.outcome(src, dst, 6, 9090).verdict.accepted
            if connected != enforced:
                problems.append(f"{source} -> {target}: probe {connected}, enforced {enforced}")
            report = record.get("staged")
            if report is None:
                problems.append(f"{source} -> {target}: no staged report in {record}")
                continue
            expected = enforced and not staged
            would_deny += expected
            if report["would_deny"] != expected:
                problems.append(f"{source} -> {target}: would_deny {report['would_deny']}")
            names = [ref["name"] for ref in report["changed_by"]]
            if names != (["try-default-deny"] if expected else []):
                problems.append(f"{source} -> {target}: changed_by {names}")
            if expected and not all(ref["staged"] for ref in report["changed_by"]):
                problems.append(f"{source} -> {target}: changed_by not marked staged")
    assert not problems, "\n".join(problems)
    assert would_deny >= 4, "the staged policy would deny too little to prove anything"


def ip_of(text: str) -> bytes:
    return ipaddress.ip_address(text).packed
