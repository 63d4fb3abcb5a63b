"""This machine and the benchmarks' own processes, as the figures depend on them (proc(5)).

One description of the machine for every benchmark's JSON (:func:`machine_info`), and the
process figures the harnesses read: CPU time of a process, how busy the CPUs are, resident
memory of the running process.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

KiB: Final = 1024
MiB: Final = 1024**2
GiB: Final = 1024**3


def machine_info(tools: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """What the figures depend on: CPUs, kernel, Python, the load, and each tool's version.

    ``tools`` maps a name to the command that prints its version (``{"wrk": ["wrk",
    "--version"]}``); the first line it prints is kept, ``"?"`` when it cannot run.
    ``load_before`` is the 1-minute load average now, at the start of a run (above zero, other
    processes shared the CPUs).
    """
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "load_before": os.getloadavg()[0],
    }
    for name, argv in (tools or {}).items():
        info[name] = _version(argv)
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def _version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process and its threads so far (proc(5) stat fields 14,
    15), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy_fraction(interval: float = 1.0) -> float:
    """Share of all CPUs in use (not idle, not waiting) over ``interval`` seconds (proc(5))."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values[:8]) - idle, sum(values[:8])

    busy_before, total_before = sample()
    time.sleep(interval)
    busy_after, total_after = sample()
    total = total_after - total_before
    return (busy_after - busy_before) / total if total > 0 else 0.0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB


def current_rss_bytes() -> int | None:
    """Resident set size now, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")
