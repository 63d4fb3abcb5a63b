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
  intervals. :data:`SWITCH_INTERVAL` makes each wait short, but only while a compile (or an
  unpickling, or a gradual release) runs: set for the whole life of the process it cost the
  fast path about a fifth of its new connections per second (docs/benchmarks.md, "Policy
  tiers: what they cost"), the queue thread then trading the lock with every idle thread.
- **Freeing.** Dropping the last reference to the previous tables (or a worker's copy of a
  snapshot) frees millions of objects in one C call; :func:`pieces_of` and
  :func:`release_gradually` free them record by record instead.
- **Unpickling.** A worker process receives a snapshot in messages of ``PUBLICATION_CHUNK``
  records (enforcement/queue.py), each unpickled with the collector paused.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

SWITCH_INTERVAL = 0.0001
"""Seconds a thread waiting for the interpreter lock waits before it asks the holder to drop it
(CPython's default is 0.005). The queue thread waits for the lock after each of its system calls
(poll, recv, the verdict), two or three per packet: at 5 ms a packet paid up to 15 ms behind a
compile, and at 1,000 packets a second the queue thread fell ever further behind. Costs the
compile only switches, and only while packets arrive. Long C calls still hold the lock longer.
In force only inside :func:`short_switches` (compiles, unpickling, gradual releases)."""

T = TypeVar("T")
P = ParamSpec("P")


def prefer_decisions() -> None:
    """Set up this process for deciding packets next to other work (call once, at start)."""
    gc.freeze()  # what the process has imported and built so far is never walked again


_short_switch_depth = 0
"""How many :func:`short_switches` bodies run now (any thread): the interval is restored when
the last ends."""
_short_switch_lock = threading.Lock()
_interval_before: float | None = None


@contextlib.contextmanager
def short_switches() -> Iterator[None]:
    """Run the body with :data:`SWITCH_INTERVAL`, then restore the interval it replaced.

    The interval is process-wide; bodies may nest or overlap across threads, and the interval
    stays short until the last one ends.
    """
    global _short_switch_depth, _interval_before
    with _short_switch_lock:
        if _short_switch_depth == 0:
            _interval_before = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL)
        _short_switch_depth += 1
    try:
        yield
    finally:
        with _short_switch_lock:
            _short_switch_depth -= 1
            if _short_switch_depth == 0 and _interval_before is not None:
                sys.setswitchinterval(_interval_before)
                _interval_before = None


@contextlib.contextmanager
def quiet_collector() -> Iterator[None]:
    """Run the body without automatic garbage collection, then freeze what survived.

    Objects the body frees by reference counting are freed as always; only the cycle
    collector is paused. Nested use keeps the outer pause. Cyclic garbage that another thread
    drops while the body runs, or that survived into the oldest generation, is frozen with the
    rest and never freed: the agent's own threads make little (a compile none, see
    :func:`compile_leaves_no_cycles`).
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        # Frozen objects are never collected: collect the young generations first, so that
        # reference cycles other threads dropped lately are freed rather than frozen. Cheap:
        # they hold only what was allocated since the last freeze or collection.
        gc.collect(1)
    gc.disable()
    try:
        with short_switches():
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


def release_gradually(references: list[object]) -> None:
    """Drop the references in ``references`` one at a time, emptying the list.

    Freeing a large structure through its last reference is one C call that frees everything
    under it with the interpreter lock held (tens of milliseconds for a 100k-pod snapshot).
    Freed from a Python loop, one record at a time, the lock changes hands between records.
    """
    with short_switches():
        while references:
            references.pop()


def pieces_of(structure: object) -> list[object]:
    """The records held by ``structure``'s containers (its dicts' keys and values, its tuples',
    lists' and sets' members), one level down, so that the caller can drop ``structure`` itself
    cheaply and the records with :func:`release_gradually`. Reads only: nothing is changed, so
    a structure another thread still uses stays whole."""
    pieces: list[object] = []
    for child in gc.get_referents(structure):
        if isinstance(child, dict):
            pieces.extend(child.values())
        elif isinstance(child, tuple | list | frozenset | set):
            pieces.extend(child)
    return pieces
