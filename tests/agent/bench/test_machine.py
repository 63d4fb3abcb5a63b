"""The machine's description and process figures (agent/bench/machine.py), on this machine."""

from __future__ import annotations

import os
import platform
import sys

from agent.bench.machine import (
    cpu_busy_fraction,
    cpu_seconds,
    current_rss_bytes,
    machine_info,
    peak_rss_bytes,
)


def test_machine_info_describes_this_machine_and_the_tools() -> None:
    info = machine_info({"interpreter": [sys.executable, "--version"], "absent": ["/nonexistent"]})
    assert info["cpus"] == os.cpu_count()
    assert info["kernel"] == os.uname().release
    assert info["load_before"] >= 0
    assert info["python"] == platform.python_version()
    assert info["interpreter"] == f"Python {platform.python_version()}"  # its first line
    assert info["absent"] == "?"
    assert set(machine_info()) == {
        "cpus",
        "cpu_model",
        "kernel",
        "machine",
        "python",
        "implementation",
        "load_before",
    }


def test_cpu_seconds_of_this_process() -> None:
    used = cpu_seconds(os.getpid())
    assert used is not None and used >= 0
    assert cpu_seconds(2**22 + 1) is None  # above pid_max's default: no such process


def test_cpu_busy_fraction_is_a_share() -> None:
    assert 0.0 <= cpu_busy_fraction(0.05) <= 1.0


def test_memory_of_this_process() -> None:
    before = current_rss_bytes()
    block = bytearray(64 * 2**20)  # zero-filled: every page is touched
    during = current_rss_bytes()
    assert before is not None and during is not None
    assert during - before >= 60 * 2**20
    del block
    # The kernel's peak (hiwater_rss) and /proc's statm count pages a little apart.
    assert peak_rss_bytes() >= 0.95 * during
