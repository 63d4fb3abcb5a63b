"""Signals stop the agent, also when several arrive at once (a handler interrupted by the next:
the lab's supervisor forwards SIGTERM to an agent that ``kill`` reached through its group)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.e2e.labctl import REPO

ROUNDS = 10

BURST = textwrap.dedent(
    f"""
    import os, signal, subprocess, sys, threading, time
    from agent.signals import stop_on_signals

    pid = os.getpid()
    for _ in range({ROUNDS}):
        stop = threading.Event()
        stop_on_signals(stop)
        # Three signals from another process while the main thread, where handlers run, waits
        # as the agent's loop does (a blocking wait runs handlers only when it returns, so the
        # loop wakes up regularly).
        sender = subprocess.Popen(
            ["sh", "-c", f"sleep 0.1; kill -TERM {{pid}}; kill -INT {{pid}}; kill -TERM {{pid}}"]
        )
        deadline = time.monotonic() + 5
        while not stop.wait(0.05):
            if time.monotonic() > deadline:
                sys.exit(3)
        sender.wait()
    print("stopped")
    """
)


def test_signals_arriving_together_stop_the_agent_and_never_hang_it() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BURST], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped"


INTERRUPTED = textwrap.dedent(
    """
    import signal, threading
    from agent.signals import stop_on_signals

    stop = threading.Event()
    stop_on_signals(stop)
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    # As if the handler had been interrupted by the next signal inside Event.set, which holds
    # the event's lock (CPython's Event keeps it in _cond): the next handler must not wait for
    # it, or it waits forever on its own thread.
    with stop._cond:
        handler(signal.SIGTERM, None)
    assert stop.wait(5)
    print("stopped")
    """
)


def test_a_handler_interrupted_by_the_next_signal_does_not_wait_for_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped"
