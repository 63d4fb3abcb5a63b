"""Keeping queued packets from waiting behind a compile in the same process.

A queue thread and a compiling thread share one interpreter lock. Two things made a queued
packet wait for the lock far longer than a decision takes (measured in docs/benchmarks.md,
"Packets during a compile"):

- **The cyclic garbage collector.** A compile allocates millions of objects; every few thousand
  allocations the collector runs, and a full collection walks the whole heap (the tables in
  force, the snapshot, the state cache) in one C call that never lets the lock go: up to 1.6 s
  at 100k pods. The agent's long-lived objects hold no reference cycles (frozen dataclasses,
  tuples, dicts; :func:`compile_leaves_no_cycles` checks it), so the collector has nothing to
  find in them: automatic collection is off while a compile runs, and after it everything alive
  is moved to the permanent generation (``gc.freeze``), which later collections never walk.
- **The switch interval.** A thread waiting for the lock asks the running one to drop it and
  gets it after at most ``sys.getswitchinterval()`` (5 ms by default); the queue thread waits
  again after each of its system calls (poll, recv, the verdict), so a packet paid several
  intervals. :data:`SWITCH_INTERVAL` makes each wait short; the compile thread loses a little
  throughput to the extra switches.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

SWITCH_INTERVAL = 0.0005
"""Seconds a thread holding the interpreter lock keeps it while another waits (CPython's
default is 0.005). Half a millisecond bounds what a queued packet waits behind pure-Python
work; long C calls (a huge ``dict`` copy, freeing a large structure) still hold it longer."""

T = TypeVar("T")
P = ParamSpec("P")


def prefer_decisions() -> None:
    """Set up this process for deciding packets next to other work (call once, at start)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.freeze()  # what the process has imported and built so far is never walked again


@contextlib.contextmanager
def quiet_collector() -> Iterator[None]:
    """Run the body without automatic garbage collection, then freeze what survived.

    Objects the body frees by reference counting are freed as always; only the cycle
    collector is paused. Nested use keeps the outer pause.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()


def compile_quietly(compile: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``compile(...)`` under :func:`quiet_collector`: the result is frozen with the rest."""
    with quiet_collector():
        return compile(*args, **kwargs)


def compile_leaves_no_cycles(compile: Callable[[], object]) -> int:
    """How many objects in reference cycles ``compile()`` left unreachable (0 is the contract).

    Freezing moves objects out of the collector's reach for good, so cyclic garbage frozen with
    them would never be freed; this counts what a collection would have found. For tests.
    """
    gc.collect()
    previous = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        result = compile()
        del result
        found = gc.collect()
        gc.garbage.clear()
        return found
    finally:
        gc.set_debug(previous)
