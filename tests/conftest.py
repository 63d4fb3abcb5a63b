"""Test-wide hooks: tests marked ``root`` run only where they can (root and ``ip netns``)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest


@functools.cache
def _root_skip_reason() -> str | None:
    """Why root tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: creates network namespaces and firewall rules inside them"
    if shutil.which("ip") is None:
        return "needs iproute2's ip for network namespaces"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"'ip netns' is unavailable here: {exc}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        reason = _root_skip_reason()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    """An empty network namespace of the test's own (``npt-...``), removed afterwards."""
    name = f"npt-{uuid.uuid4().hex[:12]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
