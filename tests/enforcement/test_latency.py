"""Packets are decided while a compile runs in the same process (finding 9, second half).

What the design relies on is checked directly (a compile leaves no reference cycles, so freezing
what it built leaks nothing; the collector is paused while it runs and what survived is frozen
after). One behaviour test runs a queue-like thread next to repeated compiles of a synthetic
20k-pod cluster and checks that no decision waited for a large part of a compile: the old agent
let a full garbage collection of the heap hold the interpreter lock for about half a compile.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from scapy.all import IP, TCP

from agent.bench.scale.cluster import generate_cluster
from agent.bench.scale.sizes import Size
from enforcement.compiler import compile_tables
from enforcement.flows import FlowTable
from enforcement.latency import (
    SWITCH_INTERVAL,
    compile_leaves_no_cycles,
    compile_quietly,
    pieces_of,
    prefer_decisions,
    quiet_collector,
    release_gradually,
    short_switches,
)
from enforcement.model import ClusterSnapshot
from enforcement.queue import QueueWorker, TablesHolder


@pytest.fixture(autouse=True)
def restore_interpreter() -> Iterator[None]:
    """These tests change process-wide settings; give the rest of the suite its own back."""
    interval, enabled = sys.getswitchinterval(), gc.isenabled()
    yield
    sys.setswitchinterval(interval)
    gc.unfreeze()
    if enabled:
        gc.enable()


@pytest.fixture(scope="module")
def large() -> ClusterSnapshot:
    return generate_cluster(Size(20_000, 2_000, 200)).snapshot()


def test_a_compile_leaves_no_reference_cycles(large: ClusterSnapshot) -> None:
    assert compile_leaves_no_cycles(lambda: compile_tables(large, "node-1", 1)) == 0


def test_the_collector_is_paused_during_a_compile_and_what_survived_is_frozen() -> None:
    seen: list[bool] = []

    def compile() -> list[object]:
        seen.append(gc.isenabled())
        return [object() for _ in range(10)]

    gc.enable()
    frozen = gc.get_freeze_count()
    built = compile_quietly(compile)
    assert seen == [False] and gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(built)


def test_nested_pauses_keep_the_outer_one() -> None:
    gc.enable()
    with quiet_collector():
        with quiet_collector():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_switch_interval_is_short_only_while_a_compile_runs() -> None:
    prefer_decisions()
    sys.setswitchinterval(0.005)
    seen: list[float] = []

    def compile() -> None:
        seen.append(sys.getswitchinterval())
        with short_switches():  # nested: the outer body keeps it short
            pass
        seen.append(sys.getswitchinterval())

    compile_quietly(compile)
    assert seen == [pytest.approx(SWITCH_INTERVAL)] * 2
    assert sys.getswitchinterval() == pytest.approx(0.005), "restored: idle threads cost nothing"
    references: list[object] = [object(), object()]
    with short_switches():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        release_gradually(references)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.005) and references == []


def test_packets_are_decided_while_a_compile_runs(large: ClusterSnapshot) -> None:
    prefer_decisions()
    tables = TablesHolder(compile_quietly(compile_tables, large, "node-1", 1))
    worker = QueueWorker(1000, tables, FlowTable(), fail_open=False)
    syn = bytes(IP(src="10.1.0.2", dst="10.1.0.3") / TCP(sport=40000, dport=80, flags="S"))
    done = threading.Event()
    waits: list[tuple[float, float]] = []

    def decide_like_the_queue() -> None:
        # Block outside the interpreter (as poll() and recv() do), then decide: what the
        # thread waits beyond its sleep is what a queued packet waits for the lock.
        while not done.is_set():
            before = time.perf_counter()
            time.sleep(0.001)
            worker.decide_payload(syn, 0)
            waits.append((time.perf_counter(), time.perf_counter() - before - 0.001))

    thread = threading.Thread(target=decide_like_the_queue, daemon=True)
    thread.start()
    spans = []
    try:
        for generation in range(2, 5):
            started = time.perf_counter()
            tables.current = compile_quietly(compile_tables, large, "node-1", generation)
            spans.append((started, time.perf_counter()))
    finally:
        done.set()
        thread.join(timeout=10)
    during = [wait for at, wait in waits if any(a < at < b for a, b in spans)]
    assert len(during) > 10, "the queue thread decided nothing while the compiles ran"
    # Time the queue thread spent waiting for the lock, counting only waits longer than 5 ms
    # (short ones are the switch interval and scheduling), as a share of the compiles' time.
    # The old agent: about half (full garbage collections holding the lock); now a few %.
    blocked = sum(wait for wait in during if wait > 0.005)
    compiling = sum(b - a for a, b in spans)
    assert blocked < compiling / 4, (
        f"the queue thread waited {blocked * 1000:.0f} ms in long waits during "
        f"{compiling * 1000:.0f} ms of compiles (longest {max(during) * 1000:.0f} ms)"
    )


def test_pieces_of_a_structure_hold_its_records_and_change_nothing() -> None:
    inner = {"a": (1, 2), "b": (3,)}
    members = frozenset({b"x", b"y"})

    class Holder:
        __slots__ = ("members", "table")

        def __init__(self) -> None:
            self.table, self.members = inner, members

    holder = Holder()
    pieces = pieces_of(holder)
    assert sorted(map(repr, pieces)) == sorted(map(repr, [(1, 2), (3,), b"x", b"y"]))
    assert holder.table == {"a": (1, 2), "b": (3,)} and holder.members == members


def test_release_gradually_empties_the_list() -> None:
    records: list[object] = [object() for _ in range(100)]
    release_gradually(records)
    assert records == []


class Cycle:
    """An object in a reference cycle with itself."""

    def __init__(self) -> None:
        self.me = self


def test_young_cycles_are_collected_before_a_compile_not_frozen() -> None:
    import weakref

    gc.enable()
    garbage = Cycle()
    alive = weakref.ref(garbage)
    del garbage  # unreachable, but only the cycle collector can free it
    compile_quietly(lambda: None)
    assert alive() is None, "the cycle was frozen instead of collected"
