"""Drives the lab through the real ``netpol-agent`` command, exactly as a script or person would.

End-to-end tests use this rather than importing the lab, so the command-line contract itself is
what they prove. Every lab is torn down by ``lab_session`` also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

COMMAND = [sys.executable, "-m", "agent.cli"]
REPO = Path(__file__).resolve().parents[2]


class LabCommandError(AssertionError):
    pass


def ipset(netns: str, *args: str) -> str:
    """``ipset ARGS`` inside a lab node's namespace; its standard output."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ipset", *args], capture_output=True, text=True, check=True
    ).stdout


def live_cache_members(netns: str) -> list[str]:
    """The sets the node's live IPv4 verdict cache answers from (none while it is off, and none
    where there is no cache: per-packet mode, ``--no-verdict-cache``)."""
    from enforcement.firewall import FirewallConfig

    listing = subprocess.run(
        ["ip", "netns", "exec", netns, "ipset", "list", FirewallConfig().live_cache_set(4)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if "Members:" not in listing:
        return []
    return [line.split()[0] for line in listing.split("Members:", 1)[1].splitlines() if line]


def netpol_agent(*args: str, input: str | None = None, check: bool = True) -> str:
    """Run ``netpol-agent ARGS`` and return its standard output."""
    result = subprocess.run(
        [*COMMAND, *args], input=input, capture_output=True, text=True, cwd=REPO, check=False
    )
    if check and result.returncode != 0:
        raise LabCommandError(
            f"netpol-agent {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result.stdout


class LabDriver:
    """One lab, by name; manifests may be paths or YAML text (written to a temporary file)."""

    def __init__(self, name: str, workdir: Path, up_args: Sequence[str] = ()) -> None:
        self.name = name
        self.workdir = workdir
        self.up_args = list(up_args)
        """Arguments every ``up`` gets (e.g. the agents' ``--mode``)."""
        self._counter = 0

    def _paths(self, manifests: Sequence[str | Path]) -> list[str]:
        arguments = []
        for manifest in manifests:
            if isinstance(manifest, Path) or "\n" not in manifest:
                arguments += ["-f", str(manifest)]
            else:
                self._counter += 1
                path = self.workdir / f"manifest-{self._counter}.yaml"
                path.write_text(manifest)
                arguments += ["-f", str(path)]
        return arguments

    def up(self, *manifests: str | Path, nodes: int = 1, extra: Sequence[str] = ()) -> str:
        return netpol_agent(
            "lab",
            "up",
            "--lab",
            self.name,
            "--nodes",
            str(nodes),
            *self.up_args,
            *extra,
            *self._paths(manifests),
        )

    def apply(self, *manifests: str | Path) -> str:
        return netpol_agent("lab", "apply", "--lab", self.name, *self._paths(manifests))

    def delete(self, *manifests: str | Path) -> str:
        return netpol_agent("lab", "delete", "--lab", self.name, *self._paths(manifests))

    def pods(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(
            netpol_agent("lab", "get", "pods", "--lab", self.name, "-o", "json")
        )
        return result

    def probe(
        self, port: int, protocol: str = "TCP", *, family: int = 4, external: bool = False
    ) -> dict[str, dict[str, bool]]:
        args = ["lab", "probe", "--lab", self.name, "--port", str(port), "--protocol", protocol]
        args += ["-o", "json", "--family", str(family)]
        if external:
            args.append("--external")
        output = json.loads(netpol_agent(*args))
        assert output["port"] == port and output["protocol"] == protocol
        matrix: dict[str, dict[str, bool]] = output["matrix"]
        return matrix

    def logs(self) -> str:
        return netpol_agent("lab", "logs", "--lab", self.name, "--tail", "80", check=False)

    def down(self) -> None:
        netpol_agent("lab", "down", "--lab", self.name, check=False)


def unique_lab_name(prefix: str) -> str:
    """A short unique lab name (lab names are at most 16 characters)."""
    return f"{prefix[:7]}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def lab_session(prefix: str, workdir: Path, up_args: Sequence[str] = ()) -> Iterator[LabDriver]:
    """A lab that is always torn down; the agents' logs are printed if the body fails."""
    lab = LabDriver(unique_lab_name(prefix), workdir, up_args)
    try:
        yield lab
    except BaseException:
        sys.stderr.write(lab.logs())
        raise
    finally:
        lab.down()
        leftovers = [line for line in _netns_list() if line.startswith(f"npa-{lab.name}-")]
        assert not leftovers, f"lab {lab.name} left network namespaces behind: {leftovers}"


def _netns_list() -> list[str]:
    if not os.path.isdir("/run/netns"):
        return []
    return sorted(os.listdir("/run/netns"))
