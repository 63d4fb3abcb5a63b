"""Processes the lab started, named so that a reused PID is never mistaken for one of them.

A PID alone does not name a process for long: once a process has exited and been reaped, the
kernel hands its number to the next new process. The lab records every process it starts (node
agents' supervisors, echo responders) as a :class:`ProcessRef`: the PID *and* the process's start
time, field 22 of ``/proc/PID/stat`` (proc(5): ``starttime``, clock ticks after boot). Two
processes can share a PID over time, but not a PID and a start time within one boot, so a record
that survived a crash, a reboot of the lab's processes or a stale ``lab.json`` can be checked
before anything is signalled: when the pair does not match, the process is left alone.

Signals to a single process go through a pidfd (``pidfd_open(2)``, ``pidfd_send_signal(2)``):
the identity is checked *after* the pidfd is opened, so the pidfd is known to refer to the
recorded process and the signal cannot reach a process that took the PID in between.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

STAT_STATE = 0
"""Index of ``state`` (proc(5) field 3) among the fields after the command name."""
STAT_PGRP = 2
"""Index of ``pgrp`` (field 5)."""
STAT_STARTTIME = 19
"""Index of ``starttime`` (field 22)."""

GONE_STATES = ("Z", "X")
"""A zombie (Z) or dead (X) process has released its sockets and namespaces: it counts as gone."""


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """One process, for the lifetime of this boot."""

    pid: int
    """Its process id."""
    start: int
    """Its start time (proc(5) ``/proc/PID/stat`` field 22, clock ticks after boot)."""


def recorded(pid: int | None, start: int | None) -> ProcessRef | None:
    """The process a record names, or None if the record lacks either field."""
    return ProcessRef(pid, start) if pid is not None and start is not None else None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None if there is no such pid.

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses,
    so the fields are split after its *last* closing parenthesis."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()
    return fields if len(fields) > STAT_STARTTIME else None


def identify(pid: int) -> ProcessRef | None:
    """The reference of the process that has ``pid`` now, or None if there is none."""
    fields = _stat_fields(pid)
    return ProcessRef(pid, int(fields[STAT_STARTTIME])) if fields is not None else None


def matches(ref: ProcessRef) -> bool:
    """True while ``ref.pid`` is still the recorded process (running or a zombie)."""
    fields = _stat_fields(ref.pid)
    return fields is not None and int(fields[STAT_STARTTIME]) == ref.start


def is_running(ref: ProcessRef) -> bool:
    """True while the recorded process runs; reaps it if it is our own exited child."""
    fields = _stat_fields(ref.pid)
    if fields is None or int(fields[STAT_STARTTIME]) != ref.start:
        return False
    if fields[STAT_STATE] not in GONE_STATES:
        return True
    # Our own child: reap it so the zombie does not linger (and cannot be confused later).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(ref.pid, os.WNOHANG)
    return False


def send(ref: ProcessRef, sig: signal.Signals) -> bool:
    """Send ``sig`` to the recorded process only; returns whether it was sent."""
    try:
        pidfd = os.pidfd_open(ref.pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd_open(2) (Linux < 5.3): check, then signal by pid
        if not matches(ref):
            return False
        try:
            os.kill(ref.pid, sig)
        except ProcessLookupError:
            return False
        return True
    try:
        # The pidfd pins the process it was opened for: if the identity matches now, the signal
        # below reaches this process or nothing (ESRCH once it has been reaped).
        if not matches(ref):
            return False
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, sig)
            return True
        return False
    finally:
        os.close(pidfd)


def send_group(ref: ProcessRef, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group the recorded process leads; returns whether it was sent.

    Only when the recorded process is still there (running or a zombie) and leads its group:
    while it exists, the kernel cannot give its number to a new process or group, so the group
    is the one the lab started."""
    fields = _stat_fields(ref.pid)
    if fields is None or int(fields[STAT_STARTTIME]) != ref.start:
        return False
    if int(fields[STAT_PGRP]) != ref.pid:
        return send(ref, sig)  # not a group leader (any more): the process alone
    try:
        os.killpg(ref.pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop(ref: ProcessRef | None, grace: float = 3.0, *, group: bool = True) -> None:
    """SIGTERM the recorded process (and its group), SIGKILL it if it lingers past ``grace``.

    Does nothing when the record no longer names a running process (a reused PID is left
    alone)."""
    if ref is None or not is_running(ref):
        return
    deliver = send_group if group else send
    deliver(ref, signal.SIGTERM)
    deliver(ref, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and is_running(ref):
        time.sleep(0.02)
    deliver(ref, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and is_running(ref):
        time.sleep(0.02)
