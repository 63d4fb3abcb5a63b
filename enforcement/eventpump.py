"""The pump: drains a worker's :class:`enforcement.events.EventBuffer` off the packet path.

One pump runs beside each queue worker (a thread in the runner, or in the worker's process),
waking every ``interval`` seconds. Per drained event it

1. folds denied packets of one connection within ``fold_window`` seconds: the first is
   recorded at once, the rest are counted and recorded as one ``repeat`` when the window ends
   (a refused client retransmits its SYN; a flood repeats a packet millions of times);
2. counts the connection for metrics (every event not folded, before anything is held back by
   the rate limit, by its interned outcome: labels are made when metrics are scraped);
3. admits records under a rate limit (a token bucket of ``rate`` records a second, bursts up to
   ``burst``); what it holds back is counted as suppressed, before any name is looked up;
4. turns the admitted events into records and hands them, in one :class:`RecordBatch`, to its
   sink (the flow log and the trace in the runner, or the pipe of a worker process).

Everything but the sink call is pure bookkeeping with the clock passed in, so tests drive
:meth:`EventPump.pump` directly.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from enforcement.events import (
    QUIET_REASONS,
    EventBuffer,
    EventKind,
    VerdictEvent,
    VerdictRecord,
    record_of,
)
from enforcement.model import PROTOCOL_NAMES
from enforcement.tables import Outcome
from enforcement.verdict import Reason

FOLD_WINDOW = 5.0
"""Seconds within which further denied packets of one connection are folded into one record
(Linux retransmits an unanswered SYN after 1, 3, 7 s: a refused connect is one record and a
repeat, not one line per retry)."""
FOLDED_FLOWS_MAX = 65536
"""Connections folded at once; beyond it, denials are recorded unfolded (and rate-limited)."""
DEFAULT_RATE = 1000.0
"""Records a second admitted by default, per worker."""


def burst_of(rate: float) -> int:
    """The records a rate limit lets through at once: one second's worth. (Ten seconds' worth,
    as before, let a flood of new connections cost a loaded node ten seconds of full-rate
    logging at once, which is what ``netpol-agent bench`` measured as the flow log's cost.)"""
    return max(1, int(rate))


POLICY_SERIES_MAX = 1000
"""Distinct (policy, rule action, direction, verdict) series the per-policy counters keep;
further policies are counted under the name ``_other`` (bounded cardinality for Prometheus)."""
OTHER_POLICY = "_other"

ConnectionKey = tuple[str, str, str, str, int]
"""(verdict, reason, direction, protocol, family): the labels of the connection counter."""
PolicyKey = tuple[str, str, str, str, str, str, str]
"""(kind, namespace, name, tier, action, direction, verdict): the labels of the per-policy
counter."""


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """What one pump turn hands its sink."""

    records: tuple[VerdictRecord, ...]
    suppressed: int = 0
    """Records the rate limit held back since the previous batch."""
    dropped: int = 0
    """Events the full buffer refused since the previous batch."""


Sink = Callable[[RecordBatch], None]


@dataclass(slots=True)
class EventCounts:
    """The pump's counters (cumulative; read by the metrics endpoint, sent by worker
    processes in their reports).

    Connections are counted by their interned Outcome, protocol number and family: one
    dictionary update per event, no name or label work on the way; the labels of the
    connection and per-policy metrics are derived from the outcomes when they are scraped
    (:func:`connection_series`, :func:`policy_series`).
    """

    outcomes: Counter[tuple[Outcome, int, int, bool]] = field(default_factory=Counter)
    """(outcome, protocol number or -1, family, revoked) -> connections."""
    records: int = 0
    suppressed: int = 0
    dropped: int = 0
    folded: int = 0
    """Denied packets folded into a ``repeat`` record instead of a record of their own."""
    events: int = 0
    """Events drained from the buffer (every packet's with ``--trace``)."""


def direction_label(outcome: Outcome) -> str:
    """Whose policies decided: ``egress`` (the source's), ``ingress`` (the destination's),
    ``both``, or ``none`` (nothing isolates either side, or no tables were asked)."""
    if outcome.reason is Reason.DENIED_EGRESS:
        return "egress"
    if outcome.reason is Reason.DENIED_INGRESS:
        return "ingress"
    if outcome.egress and outcome.ingress:
        return "both"
    return "egress" if outcome.egress else "ingress" if outcome.ingress else "none"


def connection_series(counts: Iterable[EventCounts]) -> Counter[ConnectionKey]:
    """Connections by (verdict, reason, direction, protocol, family), over ``counts``."""
    series: Counter[ConnectionKey] = Counter()
    for each in counts:
        for (outcome, protocol, family, revoked), number in list(each.outcomes.items()):
            verdict = "allowed" if outcome.verdict.accepted and not revoked else "denied"
            name = PROTOCOL_NAMES.get(protocol, "other") if protocol >= 0 else ""
            reason = Reason.REVOKED.value if revoked else outcome.reason.value
            series[(verdict, reason, direction_label(outcome), name, family)] += number
    return series


def policy_series(
    counts: Iterable[EventCounts], limit: int = POLICY_SERIES_MAX
) -> Counter[PolicyKey]:
    """Connections each policy decided, by (kind, namespace, name, tier, action, direction,
    verdict); ``direction`` is the one the policy's rule decided (``egress`` of the source,
    ``ingress`` of the destination).

    At most ``limit`` series, the busiest kept by name; the rest are summed under the name
    ``_other`` (namespace empty) per kind, tier, action, direction and verdict: bounded
    cardinality whatever the number of policies, at most ``limit`` plus those sums.
    """
    exact: Counter[PolicyKey] = Counter()
    for each in counts:
        for (outcome, _, _, revoked), number in list(each.outcomes.items()):
            verdict = "allowed" if outcome.verdict.accepted and not revoked else "denied"
            for direction, refs in (("egress", outcome.egress), ("ingress", outcome.ingress)):
                for ref in refs:
                    key = (
                        ref.kind,
                        ref.namespace or "",
                        ref.name,
                        ref.tier,
                        ref.action,
                        direction,
                        verdict,
                    )
                    exact[key] += number
    if len(exact) <= limit:
        return exact
    kept: Counter[PolicyKey] = Counter(dict(exact.most_common(limit)))
    for key, number in exact.items():
        if key not in kept:
            kind, _, _, tier, action, direction, verdict = key
            kept[(kind, "", OTHER_POLICY, tier, action, direction, verdict)] += number
    return kept


@dataclass(slots=True)
class _Fold:
    """A denied connection being folded: its first record and what came after it."""

    first: VerdictRecord
    until: float
    """Monotonic time the window ends."""
    folded: int = 0


class EventPump:
    def __init__(
        self,
        buffer: EventBuffer,
        node: str,
        sink: Sink,
        *,
        rate: float | None = DEFAULT_RATE,
        burst: int | None = None,
        fold_window: float = FOLD_WINDOW,
        interval: float = 0.05,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``rate`` None: no limit (tracing, which is for people and slow anyway); ``burst``
        None: :func:`burst_of` the rate."""
        self.buffer = buffer
        self.node = node
        self.sink = sink
        self.rate = rate
        self.burst = burst if burst is not None else burst_of(rate or 0.0)
        self.fold_window = fold_window
        self.interval = interval
        self._wall_clock = wall_clock
        self.counts = EventCounts()
        self._tokens = float(self.burst)
        self._refilled: float | None = None
        self._folding: dict[tuple[object, ...], _Fold] = {}
        self._dropped_seen = 0

    def run(self, stop: threading.Event) -> None:
        """Pump until ``stop`` is set, then once more (what was decided is not lost)."""
        while not stop.wait(self.interval):
            self.pump(time.monotonic())
        self.pump(time.monotonic(), final=True)

    def pump(self, now: float, *, final: bool = False) -> RecordBatch:
        """One turn: drain, count, fold, limit, convert, hand over. Returns the batch."""
        events = self.buffer.drain()
        counts = self.counts
        counts.events += len(events)
        records: list[VerdictRecord] = []
        suppressed = 0
        self._refill(now)
        for event in events:
            # Only denials are folded, so only they need the connection's key.
            key = None if event.outcome.verdict.accepted else _connection_key(event)
            if key is not None:
                fold = self._folding.get(key)
                if fold is not None and now < fold.until:
                    fold.folded += 1
                    counts.folded += 1
                    continue  # a retransmission of a connection counted already
            self._count(event)
            if self._tokens < 1:
                suppressed += 1
                continue
            self._tokens -= 1
            record = record_of(event, self.node)
            records.append(record)
            if key is not None and len(self._folding) < FOLDED_FLOWS_MAX:
                self._folding[key] = _Fold(record, now + self.fold_window)
        records.extend(self._ended_folds(now, final))
        dropped = self.buffer.dropped - self._dropped_seen
        self._dropped_seen += dropped
        counts.records += len(records)
        counts.suppressed += suppressed
        counts.dropped += dropped
        batch = RecordBatch(tuple(records), suppressed, dropped)
        if records or suppressed or dropped:
            self.sink(batch)
        return batch

    def _refill(self, now: float) -> None:
        if self.rate is None:
            self._tokens = float("inf")
            return
        if self._refilled is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def _ended_folds(self, now: float, final: bool) -> list[VerdictRecord]:
        """``repeat`` records of the windows that ended (all of them when ``final``)."""
        ended = [key for key, fold in self._folding.items() if final or now >= fold.until]
        repeats = []
        for key in ended:
            fold = self._folding.pop(key)
            if fold.folded:
                repeats.append(
                    replace(
                        fold.first,
                        time=self._wall_clock(),
                        event=EventKind.REPEAT,
                        packets=fold.folded,
                    )
                )
        return repeats

    def _count(self, event: VerdictEvent) -> None:
        outcome = event.outcome
        if outcome.reason in QUIET_REASONS:
            return  # a traced packet of a decided connection: counted per packet, not here
        packet = event.packet
        if packet is None:
            self.counts.outcomes[(outcome, -1, 0, event.revoked)] += 1
        else:
            self.counts.outcomes[(outcome, packet.protocol, packet.family, event.revoked)] += 1


def _connection_key(event: VerdictEvent) -> tuple[object, ...] | None:
    packet = event.packet
    if packet is None:
        return None
    return (packet.protocol, packet.src, packet.src_port, packet.dst, packet.dst_port)
