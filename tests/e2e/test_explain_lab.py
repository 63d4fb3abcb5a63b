"""``lab explain`` against real packets: for every probed pair, its verdict is what the probe saw
and its ``decided_by`` is what the agents' flow records name.

The lab runs examples/platform-tiers (NetworkPolicies and ClusterNetworkPolicies of the Admin
and Baseline tiers, external hosts) with the teams' policies in force and a staged
default-deny of the monitoring namespace, on two nodes, so that a pod's egress and another's
ingress are decided by different agents. For each probe of that stage (and UDP to the DNS
port), every ordered pair of endpoints that passes a node is explained with
``lab explain -o json`` (in-process, through the command's own entry point; one call goes
through a subprocess, as a person would run it), then:

- where the target listens, the explanation's verdict is the probe's result;
- ``decided_by`` is the flow records' ``decided_by`` of the source's node, then (if that
  record allowed it) of the destination's node: what each agent decided, in order;
- where a record carries a staged report, the explanation's ``staged`` says the same
  (``would_deny``, ``changed_by``).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from tests.e2e.labctl import LabDriver, lab_session, netpol_agent
from tests.e2e.test_flow_log_lab import (
    STAGE,
    STAGED_DENY,
    _addresses,
    _example,
    _flows,
    _now,
    _pairs,
    _probes,
)

pytestmark = pytest.mark.root


def lab_explain(
    lab: LabDriver, source: str, target: str, port: int, protocol: str
) -> dict[str, Any]:
    """``netpol-agent lab explain ... -o json``, through the command's entry point."""
    args = ["lab", "explain", "--lab", lab.name, "--from", source, "--to", target]
    args += ["--port", str(port), "--protocol", protocol, "-o", "json"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0, out.getvalue()
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def _recorded(records: list[dict[str, Any]], explained: dict[str, Any]) -> list[dict[str, Any]]:
    """What the nodes on the way recorded, in the order they decided (source's node first)."""
    by_node: dict[str, dict[str, Any]] = {}
    for record in records:
        by_node.setdefault(record["node"], record)
    order = [explained[end]["node"] for end in ("src", "dst") if explained[end]["pod"]]
    chosen = []
    for node in dict.fromkeys(order):
        if node in by_node:
            chosen.append(by_node[node])
            if by_node[node]["verdict"] == "denied":
                break
    return chosen


def test_lab_explain_agrees_with_probes_and_flow_records(tmp_path: Path) -> None:
    example = _example()
    staged = tmp_path / "staged.yaml"
    staged.write_text(STAGED_DENY.format(staged="true"))
    problems: list[str] = []
    checked = named = across = staged_checked = 0
    with lab_session("explain", tmp_path) as lab:
        lab.up(example.cluster, *example.stage_paths(STAGE), staged, nodes=2)
        names = _addresses(lab)
        text = netpol_agent(
            "lab", "explain", "--lab", lab.name, "--from", "shop/frontend",
            "--to", "shop/backend", "--port", "8080",
        )  # fmt: skip
        assert text.startswith("ALLOWED  shop/frontend"), text
        for probe in _probes():
            listening = {
                e.key for e in example.endpoints if (probe.port, probe.protocol) in e.serves
            }
            since = _now()
            matrix = lab.probe(probe.port, probe.protocol, external=probe.external)
            time.sleep(0.3)  # the pumps hand records over every 50 ms
            records = _flows(lab, since)
            for source, target, connected in _pairs(probe, matrix):
                where = f"{probe.protocol}/{probe.port} {source} -> {target}"
                explained = lab_explain(
                    lab, names[source], names[target], probe.port, probe.protocol
                )
                checked += 1
                named += bool(explained["decided_by"])
                across += explained["src"]["node"] != explained["dst"]["node"]
                allowed = explained["verdict"] == "allowed"
                if target in listening and allowed != connected:
                    problems.append(f"{where}: explained {explained['verdict']}, probe {connected}")
                mine = [
                    r for r in records
                    if r["src"] == names[source] and r["dst"] == names[target]
                    and r["protocol"] == probe.protocol and r["dst_port"] == probe.port
                    and r["event"] == "connection"
                ]  # fmt: skip
                chosen = _recorded(mine, explained)
                if not chosen:
                    problems.append(f"{where}: no record")
                    continue
                recorded = [ref for record in chosen for ref in record["decided_by"]]
                if explained["decided_by"] != recorded:
                    problems.append(
                        f"{where}: explained {explained['decided_by']}, recorded {recorded}"
                    )
                if all(r["verdict"] == "allowed" for r in chosen) != allowed:
                    problems.append(f"{where}: records {[r['verdict'] for r in chosen]}")
                report = chosen[-1].get("staged")
                nodes = {explained[end]["node"] for end in ("src", "dst") if explained[end]["pod"]}
                if report is not None and "staged" in explained and len(nodes) == 1:
                    mine_staged = {k: explained["staged"][k] for k in ("would_deny", "changed_by")}
                    theirs = {k: report[k] for k in ("would_deny", "changed_by")}
                    staged_checked += 1
                    if mine_staged != theirs:
                        problems.append(f"{where}: staged {mine_staged}, recorded {theirs}")
    assert checked >= 100, f"only {checked} pairs checked"
    # Rules decided many of them, on two nodes, and staged reports were compared.
    assert named >= 30 and across >= 30 and staged_checked >= 5, (named, across, staged_checked)
    assert not problems, "\n".join(problems)
