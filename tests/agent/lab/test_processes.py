"""Process identity: a recorded PID is signalled only while it still names the same process.

No root needed: the processes are the test's own children (``sleep``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab import processes
from agent.lab.processes import ProcessRef


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of its own session (so it leads a process group), killed afterwards."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def starttime_from_proc(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read independently of the module."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])


def test_identify_reads_the_start_time_of_proc_stat_field_22() -> None:
    me = processes.identify(os.getpid())
    assert me == ProcessRef(os.getpid(), starttime_from_proc(os.getpid()))
    assert processes.matches(me)
    assert processes.is_running(me)


def test_identify_a_process_whose_name_holds_parentheses_and_spaces(tmp_path: Path) -> None:
    # proc(5): field 2 is the command name in parentheses and may hold ") (" itself.
    odd = tmp_path / "a) b (c"
    sleep = shutil.which("sleep")
    assert sleep is not None
    shutil.copy(sleep, odd)
    process = subprocess.Popen([str(odd), "60"])
    try:
        ref = processes.identify(process.pid)
        assert ref is not None
        assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "a) b (c"
        assert ref.start == starttime_from_proc(process.pid)
        assert processes.is_running(ref)
    finally:
        process.kill()
        process.wait()


def test_no_such_process() -> None:
    # Above pid_max (at most 2**22 on Linux), so no process can have it.
    ref = ProcessRef(2**22 + 1, 1)
    assert processes.identify(ref.pid) is None
    assert not processes.is_running(ref)
    assert not processes.send(ref, signal.SIGTERM)
    assert not processes.send_group(ref, signal.SIGTERM)
    processes.stop(ref)  # nothing to do, no error


@pytest.mark.parametrize("group", [True, False], ids=["group", "process"])
def test_a_reused_pid_is_left_alone(sleeper: subprocess.Popen[bytes], group: bool) -> None:
    """A record whose PID now belongs to another process (same PID, other start time) must not
    signal it: the record of a lab process that died, whose PID the kernel gave to this one."""
    live = processes.identify(sleeper.pid)
    assert live is not None
    stale = ProcessRef(sleeper.pid, live.start - 1)
    assert not processes.matches(stale) and not processes.is_running(stale)
    assert not processes.send(stale, signal.SIGKILL)
    assert not processes.send_group(stale, signal.SIGKILL)
    processes.stop(stale, grace=0.2, group=group)
    assert sleeper.poll() is None, "a process that merely reuses a recorded PID was signalled"
    # The true record does stop it: identity, not breakage, is why it was left alone.
    processes.stop(live, grace=2.0, group=group)
    assert not processes.matches(live), "the recorded process was not stopped"  # and reaped


def test_a_reused_pid_of_our_parent_is_left_alone() -> None:
    """The brief's case: a fake record naming a live, unrelated process (our parent)."""
    parent = processes.identify(os.getppid())
    assert parent is not None
    stale = ProcessRef(parent.pid, parent.start + 12345)
    processes.stop(stale, grace=0.2)
    assert not processes.send(stale, signal.SIGTERM)
    assert processes.is_running(parent)


def test_send_group_reaches_the_whole_group(tmp_path: Path) -> None:
    # sh leads its own group and runs sleep in it; one signal to the group stops both.
    child_pid = tmp_path / "child"
    script = f"sleep 60 & echo $! > {child_pid}.tmp; mv {child_pid}.tmp {child_pid}; wait"
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        for _ in range(500):
            if child_pid.exists():
                break
            time.sleep(0.01)
        child = processes.identify(int(child_pid.read_text()))
        ref = processes.identify(process.pid)
        assert ref is not None and child is not None
        assert processes.send_group(ref, signal.SIGKILL)
        assert process.wait(timeout=5) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while processes.is_running(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not processes.is_running(child), "the group's other member was not signalled"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_exited_child_is_not_running_and_is_reaped() -> None:
    process = subprocess.Popen(["true"])
    ref = processes.identify(process.pid)
    assert ref is not None
    while processes.is_running(ref):
        pass  # true exits at once; then is_running reaps the zombie
    with pytest.raises(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)
    process.returncode = 0  # reaped above; keep Popen from waiting again
