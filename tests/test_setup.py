"""The set-up installs every program the code and the tests run.

A test that runs ``ping`` passes on a machine that happens to have it and fails on a fresh one.
This test finds the programs the project runs (argv lists in the Python sources, command words in
the shell scripts) and checks that each is installed and comes from a Debian package that
``scripts/setup.sh`` installs, from a dependency of one, or from a package every Debian system has
(Priority: required, or Essential). Programs of the virtualenv (pip packages) count as installed
by the set-up too.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON_TREES = ("agent", "enforcement", "tests")
SCRIPT_GLOBS = ("scripts/*.sh", ".ci/run", "Makefile")

# One comma-separated string, so that a word here is not taken for a program that this file
# runs by scans that look for quoted program names (like the before-stop check).
_WELL_KNOWN = (
    "arping,bridge,chromium,chromedriver,conntrack,curl,dot,ethtool,hping3,ip,ip6tables,"
    "ip6tables-restore,ip6tables-save,iperf3,ipset,iptables,iptables-restore,iptables-save,nc,"
    "nft,nginx,nsenter,perf,ping,socat,ss,sysctl,tc,tcpdump,traceroute,unshare,wget,wrk"
)
WELL_KNOWN_PROGRAMS = frozenset(_WELL_KNOWN.split(","))
"""Programs looked for even where they are not installed, so that a fresh machine, which lacks
them, still notices they are used."""

SHELL_BUILTINS = frozenset({"cd", "echo", "exec", "exit", "set", "test", "true", "false", "trap"})


def apt_packages() -> frozenset[str]:
    """The packages in ``APT_PACKAGES=( ... )`` of scripts/setup.sh."""
    text = (REPO / "scripts" / "setup.sh").read_text()
    match = re.search(r"^APT_PACKAGES=\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "scripts/setup.sh has no APT_PACKAGES=( ... ) list"
    words = []
    for line in match.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    return frozenset(words)


def _argv_programs(tree: ast.AST) -> Iterator[tuple[str, int, bool]]:
    """Program names in argv-shaped literals: the first string of a list or tuple, the program
    after ``ip netns exec NAME``, and the argument of ``shutil.which``; with whether the literal
    is surely a command line (a call's first argument, ``ip netns exec``, ``shutil.which``)
    rather than a list that merely starts with a word that names a program."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            parent = parents.get(node)
            # Rows of a table, `x in ("a", "b")` and pytest ids are data, not command lines.
            if isinstance(parent, ast.List | ast.Tuple | ast.Set | ast.Compare) or (
                isinstance(parent, ast.keyword) and parent.arg == "ids"
            ):
                continue
            items = node.elts
            first = items[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                called = (
                    isinstance(parent, ast.Call)
                    and parent.args[:1] == [node]
                    # pytest.mark.parametrize(("name", ...), ...) names arguments, not programs
                    and not (
                        isinstance(parent.func, ast.Attribute) and parent.func.attr == "parametrize"
                    )
                )
                yield first.value, node.lineno, bool(called)
            for index in range(len(items) - 3):
                words = [i.value if isinstance(i, ast.Constant) else None for i in items[index:]]
                if words[:2] == ["netns", "exec"] and isinstance(words[3], str):
                    yield words[3], node.lineno, True
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "which"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, node.lineno, True


_PROGRAM_NAME = re.compile(r"[a-z][a-z0-9.+-]*\Z")
_SHELL_COMMAND = re.compile(r"(?:^|[;&|(]|\$\(|\bthen\b|\bdo\b|\bexec\b)\s*([a-z][a-z0-9.+-]*)")


def programs_used() -> dict[str, str]:
    """Program name -> one place that runs it (``path:line``)."""
    used: dict[str, str] = {}
    for top in PYTHON_TREES:
        for path in sorted((REPO / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for name, line, command_line in _argv_programs(tree):
                if not _PROGRAM_NAME.match(name):
                    continue
                # A list that merely starts with a word naming some installed program (a test
                # table's "scalar" column, git's scalar) is not a command line.
                if name in WELL_KNOWN_PROGRAMS or (command_line and shutil.which(name)):
                    used.setdefault(name, f"{path.relative_to(REPO)}:{line}")
    for pattern in SCRIPT_GLOBS:
        for path in sorted(REPO.glob(pattern)):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
                for name in _SHELL_COMMAND.findall(code):
                    if name in SHELL_BUILTINS:
                        continue
                    if name in WELL_KNOWN_PROGRAMS or shutil.which(name) is not None:
                        used.setdefault(name, f"{path.relative_to(REPO)}:{number}")
    return used


@functools.cache
def _dpkg_query(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["dpkg-query", *args], capture_output=True, text=True, check=False, timeout=30
        )
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def owning_package(path: str) -> str | None:
    """The Debian package that ships ``path`` (trying the merged-/usr twins), or None."""
    candidates = [os.path.realpath(path), path]
    for candidate in list(candidates):
        for merged, split in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
            if candidate.startswith(merged):
                candidates.append(split + candidate[len(merged) :])
            elif candidate.startswith(split):
                candidates.append(merged + candidate[len(split) :])
    for candidate in candidates:
        found = _dpkg_query("-S", candidate)
        if found:
            return found.split(":", 1)[0].split(",")[0].strip()
    return None


def always_present(package: str) -> bool:
    fields = _dpkg_query("-W", "-f=${Priority} ${Essential}", package) or ""
    return fields.startswith("required") or fields.endswith(" yes")


def provided_by_setup() -> frozenset[str]:
    """The set-up's packages and what they depend on directly (e.g. nginx-light -> nginx)."""
    packages = set(apt_packages())
    for package in apt_packages():
        depends = _dpkg_query("-W", "-f=${Depends}, ${Pre-Depends}", package) or ""
        for alternative in depends.split(","):
            for choice in alternative.split("|"):
                name = choice.strip().split(" ", 1)[0].split(":", 1)[0]
                if name:
                    packages.add(name)
    return frozenset(packages)


def test_the_setup_lists_packages() -> None:
    assert {"iptables", "iproute2", "ipset", "conntrack", "iputils-ping"} <= apt_packages()


def test_programs_are_found_in_argv_lists_and_scripts() -> None:
    used = programs_used()
    for program in ("ip", "iptables", "ipset", "ping", "wrk", "iperf3", "nginx"):
        assert program in used, f"{program} is run by the project but the scan missed it"


def test_every_program_the_project_runs_is_installed_by_the_setup() -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system: the set-up's apt packages cannot be checked here")
    venv_bin = str(Path(sys.executable).parent)
    setup = provided_by_setup()
    problems = []
    for program, where in sorted(programs_used().items()):
        path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
        if path is None:
            problems.append(f"{program} (run at {where}) is not installed: add its package")
            continue
        if os.path.dirname(path) == venv_bin:
            continue  # a pip package's program, installed into .venv by the set-up
        package = owning_package(path)
        if package is None:
            problems.append(f"{program} (run at {where}) at {path} comes from no Debian package")
        elif package not in setup and not always_present(package):
            problems.append(
                f"{program} (run at {where}) comes from {package}, which scripts/setup.sh "
                "does not install"
            )
    assert not problems, "\n".join(problems)
