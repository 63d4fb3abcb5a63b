"""Stopping the agent on SIGTERM or SIGINT without deadlocking.

A Python signal handler runs in the main thread between two bytecodes, also in the middle of
another handler. A handler that calls ``threading.Event.set`` takes the event's lock; a second
signal that arrives while the first handler holds it (the lab's supervisor forwards SIGTERM to
an agent that ``kill`` already reached through its process group) runs the handler again, which
waits forever for the lock its own thread holds: the agent never stops, and is killed with its
rules half removed. So the handler only records the signal (``list.append`` takes no lock a
handler could be holding) and a watcher thread, where no handler ever runs, sets the event.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
"""How often the watcher looks for a recorded signal: the delay it adds to a shutdown."""


def stop_on_signals(
    stop: threading.Event, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """Set ``stop`` soon after one of ``signals`` arrives (call from the main thread)."""
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    def watch() -> None:
        while not stop.wait(POLL_SECONDS):
            if received:
                name = signal.Signals(received[0]).name
                log.info("received %s, shutting down", name, extra={"fields": {"signal": name}})
                stop.set()

    for signum in signals:
        signal.signal(signum, record)
    threading.Thread(target=watch, name="signals", daemon=True).start()
