"""The lab's kubelet: keeps a node's agent running, restarting it with back-off when it exits.

On a cluster the agent is a DaemonSet pod, and the kubelet restarts its container whenever it
exits (``restartPolicy: Always``), waiting longer after each crash: CrashLoopBackOff starts at
10 s and doubles up to five minutes, and resets once the container has run for ten minutes
(Kubernetes docs, "Pod Lifecycle: Container restart policy"). The lab does the same on a lab's
time scale::

    ip netns exec NODE python -m agent.lab.supervisor --log LOG --state STATE \\
        --status-file STATUS -- python -m agent.cli run ...

- the agent runs as this process's child, in the same process group (signalling the group
  stops both: ``lab down``, and the tests that kill "the agent" for good, do that);
- when the agent exits, everything it left behind (its worker processes, reparented here because
  this process is a child subreaper, prctl(2) ``PR_SET_CHILD_SUBREAPER``) is killed, as a
  container runtime kills every process of a dead container; then the agent is started again
  after :attr:`Backoff.initial` seconds, doubling up to :attr:`Backoff.cap`, back to the initial
  delay once a run lasted :attr:`Backoff.reset_after` seconds;
- every exit and restart is written to the node's agent log (so ``lab logs`` shows it) and to a
  small JSON state file the lab reads while it waits for an agent;
- while the agent is down nothing changes in the node's firewall: a fail-closed agent leaves its
  queue rules in place when it dies, so isolated pods' packets are dropped until it is back;
- SIGTERM, SIGINT or SIGHUP stop it: the agent gets SIGTERM (SIGKILL after a grace period), the
  supervisor does not restart it, and exits.

The agent's status file is removed before every start, so a status written by a dead agent is
never taken for the new one's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from agent.lab import processes

INITIAL_BACKOFF = 1.0
"""Seconds before the first restart (the kubelet's is 10 s; a lab is smaller and faster)."""
MAX_BACKOFF = 16.0
"""The longest wait between restarts (the kubelet's is 300 s). Below the lab's wait for an
agent (``lab.WAIT_SECONDS``), so a crashing agent gets another try while a command waits."""
RESET_AFTER = 30.0
"""A run this long counts as healthy: the next crash waits :data:`INITIAL_BACKOFF` again (the
kubelet resets after ten minutes)."""
STOP_GRACE = 5.0
"""Seconds the agent gets to exit after SIGTERM before it is killed."""

PR_SET_CHILD_SUBREAPER = 36
"""prctl(2) option (linux/prctl.h): orphaned descendants are reparented to this process."""

POLL_SECONDS = 0.05
"""How often the loop looks at the agent and the stop flag."""

Phase = Literal["running", "waiting", "stopped"]

log = logging.getLogger("netpol-agent.supervisor")


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before each restart: CrashLoopBackOff's rule with the lab's numbers."""

    initial: float = INITIAL_BACKOFF
    """Seconds before the first restart, and after a run of at least ``reset_after``."""
    cap: float = MAX_BACKOFF
    """Seconds at most."""
    reset_after: float = RESET_AFTER
    """Seconds of running after which a crash counts as a first crash again."""

    def next_delay(self, previous: float | None, ran_for: float) -> float:
        """The delay after a run of ``ran_for`` seconds when the last delay was ``previous``."""
        if previous is None or ran_for >= self.reset_after:
            return self.initial
        return min(previous * 2, self.cap)


@dataclass(frozen=True, slots=True)
class SupervisorState:
    """What the supervisor is doing, as written to its state file after every change."""

    supervisor_pid: int
    """The supervisor's own pid (the process group's leader)."""
    phase: Phase
    """running: an agent runs; waiting: the agent exited and a restart is due; stopped: done."""
    agent_pid: int | None
    """The running agent's pid (None while waiting or stopped)."""
    agent_start: int | None
    """The running agent's start time (see :class:`agent.lab.processes.ProcessRef`)."""
    starts: int
    """How many times an agent was started (1 until the first restart)."""
    last_exit: str | None
    """How the last agent ended, e.g. ``killed by signal SIGKILL``; None before any exit."""
    restart_at: float | None
    """When the next start is due (``time.time()`` seconds), while waiting."""

    @property
    def restarts(self) -> int:
        """Restarts so far (starts after the first one, and the one being waited for)."""
        return max(self.starts - 1, 0) + (1 if self.phase == "waiting" else 0)

    def agent(self) -> processes.ProcessRef | None:
        """The running agent, if any."""
        if self.agent_pid is None or self.agent_start is None:
            return None
        return processes.ProcessRef(self.agent_pid, self.agent_start)


def read_state(path: Path) -> SupervisorState | None:
    """The state in ``path``, or None when there is none (yet) or it cannot be read."""
    try:
        data = json.loads(path.read_text())
        return SupervisorState(**data)
    except (OSError, ValueError, TypeError):
        return None


def describe_exit(returncode: int) -> str:
    """``exit code N`` or ``killed by signal NAME`` for a :class:`subprocess.Popen` returncode."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit code {returncode}"


def _write_state(path: Path, state: SupervisorState) -> None:
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(asdict(state)))
    os.replace(temporary, path)


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


def _children() -> list[int]:
    """Pids whose parent is this process (proc(5) stat field 4)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
            if int(fields[1]) == me:
                found.append(int(entry))
    return found


def _kill_leftovers() -> int:
    """Kill and reap every process the dead agent left behind; returns how many were killed.

    Only call when the agent itself has been reaped: every child of this process is then a
    leftover of the agent (reparented here). Killing one may reparent its own children here, so
    this repeats until none is left."""
    killed = 0
    for _round in range(100):
        children = _children()
        if not children:
            break
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return killed


class Supervisor:
    """Runs ``argv`` until stopped; see the module docstring."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        state_path: Path,
        status_path: Path | None,
        backoff: Backoff,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.state_path = state_path
        self.status_path = status_path
        self.backoff = backoff
        self.stop_grace = stop_grace
        self.stopping = threading.Event()
        """Set by SIGTERM/SIGINT/SIGHUP: stop the agent, do not restart it."""
        self._starts = 0
        self._last_exit: str | None = None

    def request_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping.is_set():
            log.info("received %s: stopping the agent", signal.Signals(signum).name)
        self.stopping.set()

    def _state(
        self,
        phase: Phase,
        agent: processes.ProcessRef | None = None,
        restart_at: float | None = None,
    ) -> None:
        _write_state(
            self.state_path,
            SupervisorState(
                supervisor_pid=os.getpid(),
                phase=phase,
                agent_pid=agent.pid if agent else None,
                agent_start=agent.start if agent else None,
                starts=self._starts,
                last_exit=self._last_exit,
                restart_at=restart_at,
            ),
        )

    def _start(self) -> subprocess.Popen[bytes]:
        if self.status_path is not None:
            self.status_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as output:
            agent = subprocess.Popen(
                self.argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._starts += 1
        self._state("running", processes.identify(agent.pid))
        if self._starts > 1:
            log.info("started the agent again: pid %d (restart %d)", agent.pid, self._starts - 1)
        return agent

    def _wait(self, agent: subprocess.Popen[bytes]) -> int:
        """Wait for the agent to exit; on a stop request, TERM it, then KILL it after the grace."""
        while agent.poll() is None and not self.stopping.wait(POLL_SECONDS):
            pass
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                log.warning("the agent did not exit within %.0f s of SIGTERM: killing it",
                            self.stop_grace)  # fmt: skip
                agent.kill()
                agent.wait()
        return agent.returncode

    def run(self) -> int:
        """Supervise until stopped; returns the supervisor's exit status (0)."""
        _become_subreaper()
        delay: float | None = None
        while not self.stopping.is_set():
            agent = self._start()
            started = time.monotonic()
            returncode = self._wait(agent)
            ran_for = time.monotonic() - started
            leftovers = _kill_leftovers()
            self._last_exit = describe_exit(returncode)
            if self.stopping.is_set():
                log.info("the agent (pid %d) stopped: %s", agent.pid, self._last_exit)
                break
            delay = self.backoff.next_delay(delay, ran_for)
            self._state("waiting", restart_at=time.time() + delay)
            log.warning(
                "the agent (pid %d) exited after %.1f s: %s%s; restarting it in %g s (restart "
                "%d; back-off %g s doubling to %g s, reset after %g s of running)",
                agent.pid,
                ran_for,
                self._last_exit,
                f", {leftovers} leftover process(es) killed" if leftovers else "",
                delay,
                self._starts,
                self.backoff.initial,
                self.backoff.cap,
                self.backoff.reset_after,
            )
            self.stopping.wait(delay)
        self._state("stopped")
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.lab.supervisor",
        description="Run a lab node's agent and restart it with back-off when it exits.",
    )
    parser.add_argument("--log", type=Path, required=True, help="the node's agent log (appended)")
    parser.add_argument("--state", type=Path, required=True, help="state file (JSON) to write")
    parser.add_argument("--status-file", type=Path, help="the agent's status file (removed "
                        "before each start)")  # fmt: skip
    parser.add_argument("--initial-backoff", type=float, default=INITIAL_BACKOFF)
    parser.add_argument("--max-backoff", type=float, default=MAX_BACKOFF)
    parser.add_argument("--reset-after", type=float, default=RESET_AFTER)
    parser.add_argument("--stop-grace", type=float, default=STOP_GRACE)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        print("supervisor: no command to run (give it after --)", file=sys.stderr)
        return 2
    if not 0 < args.initial_backoff <= args.max_backoff:
        print("supervisor: need 0 < --initial-backoff <= --max-backoff", file=sys.stderr)
        return 2
    handler = logging.FileHandler(args.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    supervisor = Supervisor(
        command,
        log_path=args.log,
        state_path=args.state,
        status_path=args.status_file,
        backoff=Backoff(args.initial_backoff, args.max_backoff, args.reset_after),
        stop_grace=args.stop_grace,
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    raise SystemExit(main())
