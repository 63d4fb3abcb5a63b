"""The lab's kubelet: restarts with back-off, logs every exit, kills leftovers, stops cleanly.

The supervised "agents" here are small shell commands, so no root is needed; the lab's real
agent under its supervisor is tested end to end in ``test_lab.py``. Back-off delays are checked
from what the supervisor logs it will wait (computed, not measured), so the machine's speed does
not matter; only the reset-after-a-healthy-run case depends on time, with a wide margin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.lab import processes
from agent.lab.supervisor import Backoff, SupervisorState, describe_exit, read_state

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("previous", "ran_for", "expected"),
    [
        pytest.param(None, 0.1, 1.0, id="first-crash-waits-the-initial-delay"),
        pytest.param(1.0, 0.1, 2.0, id="a-quick-second-crash-doubles"),
        pytest.param(8.0, 0.1, 16.0, id="doubles-up-to-the-cap"),
        pytest.param(16.0, 0.1, 16.0, id="stays-at-the-cap"),
        pytest.param(16.0, 29.9, 16.0, id="a-run-just-short-of-reset-keeps-the-delay"),
        pytest.param(16.0, 30.0, 1.0, id="a-run-of-reset-after-counts-as-healthy"),
    ],
)
def test_backoff(previous: float | None, ran_for: float, expected: float) -> None:
    assert Backoff(1.0, 16.0, 30.0).next_delay(previous, ran_for) == expected


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        pytest.param(0, "exit code 0", id="clean"),
        pytest.param(3, "exit code 3", id="error"),
        pytest.param(-9, "killed by signal SIGKILL", id="sigkill"),
        pytest.param(-15, "killed by signal SIGTERM", id="sigterm"),
    ],
)
def test_describe_exit(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text


@dataclass
class Supervised:
    process: subprocess.Popen[bytes]
    log: Path
    state: Path
    status: Path

    def read_state(self) -> SupervisorState | None:
        return read_state(self.state)

    def wait_for(self, condition: Callable[[SupervisorState], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.read_state()
            if state is not None and condition(state):
                return
            assert self.process.poll() is None, f"supervisor exited:\n{self.log.read_text()}"
            time.sleep(0.01)
        raise AssertionError(f"not reached; state {self.read_state()}\n{self.log.read_text()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    started: list[Supervised] = []

    def start(script: str, *options: str) -> Supervised:
        log, state, status = tmp_path / "agent.log", tmp_path / "state.json", tmp_path / "st"
        argv = [sys.executable, "-m", "agent.lab.supervisor", "--log", str(log)]
        argv += ["--state", str(state), "--status-file", str(status), *options]
        process = subprocess.Popen([*argv, "--", "sh", "-c", script], cwd=REPO)
        supervised = Supervised(process, log, state, status)
        started.append(supervised)
        return supervised

    yield start
    for supervised in started:
        if supervised.process.poll() is None:
            supervised.process.kill()
            supervised.process.wait()


FAST = ("--initial-backoff", "0.05", "--max-backoff", "0.2", "--reset-after", "30")


def test_a_crashing_agent_is_restarted_with_doubling_capped_delays(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    stale = tmp_path / "stale"
    # The "agent" complains if it finds a status file at its start, writes one, and fails.
    supervised = supervise(
        f'test -e "$STATUS" && echo stale >> {stale}; echo up > "$STATUS"; exit 3', *FAST
    )
    supervised.wait_for(lambda state: state.starts >= 5)
    assert supervised.stop() == 0
    log = supervised.log.read_text()
    delays = [
        line.split("restarting it in ")[1].split(" s")[0]
        for line in log.splitlines()
        if "restarting it in" in line
    ]
    assert delays[:4] == ["0.05", "0.1", "0.2", "0.2"], log
    assert "exited after" in log and "exit code 3" in log
    assert "started the agent again" in log
    assert not stale.exists(), "an agent started with the dead agent's status file in place"
    final = supervised.read_state()
    assert final is not None and final.phase == "stopped"
    # The stop may find the agent dead (its last crash) or just started again (then the stop's
    # own SIGTERM ended it): either is the truth; the crashes themselves are in the log above.
    assert final.last_exit in ("exit code 3", "killed by signal SIGTERM")


@pytest.fixture(autouse=True)
def status_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATUS", str(tmp_path / "st"))


def test_a_healthy_run_resets_the_backoff(supervise: Callable[..., Supervised]) -> None:
    # Each run lasts 0.5 s, past --reset-after 0.2 s: every restart waits the initial delay.
    options = ("--initial-backoff", "0.05", "--max-backoff", "5", "--reset-after", "0.2")
    supervised = supervise("sleep 0.5; exit 1", *options)
    supervised.wait_for(lambda state: state.starts >= 4)
    supervised.stop()
    log = supervised.log.read_text()
    delays = [line for line in log.splitlines() if "restarting it in" in line]
    assert len(delays) >= 3
    assert all("restarting it in 0.05 s" in line for line in delays), log


def test_a_killed_agent_is_restarted_and_the_kill_is_logged(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise("exec sleep 60", *FAST)
    supervised.wait_for(lambda state: state.phase == "running")
    first = supervised.read_state()
    assert first is not None
    agent = first.agent()
    assert agent is not None and processes.is_running(agent)
    os.kill(agent.pid, signal.SIGKILL)
    supervised.wait_for(lambda state: state.starts == 2 and state.phase == "running")
    second = supervised.read_state()
    assert second is not None and second.agent() != agent
    assert second.last_exit == "killed by signal SIGKILL" and second.restarts == 1
    assert "killed by signal SIGKILL; restarting it in 0.05 s" in supervised.log.read_text()
    assert supervised.stop() == 0


def test_what_a_dead_agent_left_behind_is_killed(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    # The agent starts a helper (as the agent starts queue workers) and dies; the helper would
    # hold on to the agent's queue. The supervisor, a child subreaper, inherits it and kills it.
    helper_pid = tmp_path / "helper"
    supervised = supervise(
        f"test -e {helper_pid} && exec sleep 60; sleep 60 & echo $! > {helper_pid}; exit 1",
        *FAST,
    )
    supervised.wait_for(lambda state: state.starts == 2 and state.phase == "running")
    helper = processes.identify(int(helper_pid.read_text()))
    # Killed and reaped before the restart (its pid is free, or already someone else's).
    assert helper is None or not processes.is_running(helper), "the dead agent's helper runs"
    assert "1 leftover process(es) killed" in supervised.log.read_text()
    supervised.stop()


def test_stop_terminates_the_agent_and_does_not_restart_it(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise("exec sleep 60", *FAST)
    supervised.wait_for(lambda state: state.phase == "running")
    state = supervised.read_state()
    assert state is not None
    agent = state.agent()
    assert agent is not None
    assert supervised.stop() == 0
    assert not processes.is_running(agent)
    final = supervised.read_state()
    assert final is not None and final.phase == "stopped" and final.starts == 1
    assert final.last_exit == "killed by signal SIGTERM"
    assert "stopping the agent" in supervised.log.read_text()


def test_an_agent_that_ignores_sigterm_is_killed_after_the_grace(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise("trap '' TERM; sleep 60 & wait", *FAST, "--stop-grace", "0.3")
    supervised.wait_for(lambda state: state.phase == "running")
    assert supervised.stop() == 0
    final = supervised.read_state()
    assert final is not None and final.last_exit == "killed by signal SIGKILL"
    assert "did not exit within" in supervised.log.read_text()


def test_refuses_to_start_without_a_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.lab.supervisor", "--log", str(tmp_path / "l"),
         "--state", str(tmp_path / "s")],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "no command" in result.stderr
