"""Consumers of the verdict records: the flow log (JSON lines) and the trace (log lines).

Records come in batches from the event pumps (``enforcement.eventpump``): one pump beside the
queue thread, or one per worker process, whose batches arrive over its pipe. Both consumers are
called from those threads, so each writes under a lock of its own.

The flow log is one JSON object per line (``VerdictRecord.as_dict``), to a file opened for
appending (``logrotate``'s ``copytruncate`` rotates it) or to standard output. When a pump's rate
limit held records back, or its buffer refused events, a line with ``"event": "suppressed"`` says
how many, so a reader knows the log is incomplete and by how much.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from agent.logs import fields, json_fields
from enforcement.eventpump import RecordBatch
from enforcement.events import format_time
from enforcement.recordjson import json_line

log = logging.getLogger(__name__)
trace_log = logging.getLogger("netpol-agent.trace")

SUPPRESSED = "suppressed"
_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""One encoder for every line (``json.dumps`` with options builds a new one per call)."""
"""The ``event`` of a flow-log line that counts records left out."""


class FlowLogWriter:
    """Writes record batches as JSON lines to ``target`` (a path, or ``-`` for stdout)."""

    def __init__(self, target: str, node: str) -> None:
        self.target = target
        self.node = node
        self._lock = threading.Lock()
        self._stream: IO[str]
        if target == "-":
            self._stream = sys.stdout
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = path.open("a", encoding="utf-8")
        self.lines = 0
        self.errors = 0

    def __call__(self, batch: RecordBatch) -> None:
        lines = [json_line(record) for record in batch.records]
        if batch.suppressed or batch.dropped:
            lines.append(
                _COMPACT.encode(
                    {
                        "time": format_time(time.time()),
                        "node": self.node,
                        "event": SUPPRESSED,
                        "records": batch.suppressed,
                        "events_dropped": batch.dropped,
                    }
                )
            )
        if not lines:
            return
        with self._lock:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
                self.lines += len(lines)
            except (OSError, ValueError) as error:  # a full disk must not stop deciding
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    log.error(
                        "cannot write the flow log",
                        extra=fields(target=self.target, error=str(error)),
                    )

    def close(self) -> None:
        with self._lock:
            if self._stream is not sys.stdout:
                self._stream.close()


class TraceWriter:
    """Logs every record as one line for people (``run --trace``)."""

    def __call__(self, batch: RecordBatch) -> None:
        for record in batch.records:
            data = record.as_dict()
            trace_log.info(format_trace(data), extra=json_fields(data))
        if batch.suppressed or batch.dropped:
            trace_log.warning(
                "trace incomplete",
                extra=fields(records=batch.suppressed, events_dropped=batch.dropped),
            )


def describe_refs(refs: Iterable[Mapping[str, Any]]) -> str:
    """``decided_by`` in words: ``NetworkPolicy prod/db ingress rule 0 (Allow)``, ..."""
    words = []
    for ref in refs:
        name = f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else ref["name"]
        text = f"{ref['kind']} {name}"
        if ref.get("rule") is not None:
            text += f" rule {ref['rule']}"
            if ref.get("rule_name"):
                text += f" ({ref['rule_name']})"
        if ref.get("action"):
            text += f" {ref['action']}"
        if ref.get("staged"):
            text += " [staged]"
        words.append(text)
    return "; ".join(words) or "-"


def _endpoint(name: str, port: Any) -> str:
    return name if port is None else f"{name}:{port}"


def _staged_words(staged: Mapping[str, Any] | None, separator: str) -> str:
    """``staged: would deny by ...`` when staged policies would change the verdict."""
    if not staged or not (staged.get("would_deny") or staged.get("would_allow")):
        return ""
    change = "would deny" if staged.get("would_deny") else "would allow"
    by = staged.get("changed_by") or []
    return f"{separator}staged: {change}" + (f" by {describe_refs(by)}" if by else "")


def format_record(data: Mapping[str, Any]) -> str:
    """One record (as_dict form) as a line: who, what, verdict, and what decided."""
    if data.get("event") == SUPPRESSED:
        return (
            f"{data['node']}: {data['records']} records suppressed, "
            f"{data['events_dropped']} events dropped"
        )
    verdict = data["verdict"].upper()
    if not data.get("enforced", True):
        verdict += " (audit: let through)"
    if data.get("event") == "repeat":
        verdict += f" x{data['packets']} more"
    elif data.get("event") == "revoked":
        verdict = "REVOKED"
    text = (
        f"{data['protocol']} {_endpoint(data['src'], data.get('src_port'))} -> "
        f"{_endpoint(data['dst'], data.get('dst_port'))} {verdict} [{data['reason']}] by "
        f"{describe_refs(data['decided_by'])}"
    )
    text += _staged_words(data.get("staged"), "; ")
    return text


def format_trace(data: Mapping[str, Any]) -> str:
    """A traced packet: what happened to it first (``accept``/``drop``), then why, who, and
    the rules that decided, e.g. ``drop denied-ingress TCP x/c:40000 -> x/b:80 by ...``."""
    passed = data["verdict"] == "allowed" or not data.get("enforced", True)
    action = "accept" if passed else "drop"
    if not data.get("enforced", True):
        action += " (audit)"
    return (
        f"{action} {data['reason']} {data['protocol']} "
        f"{_endpoint(data['src'], data.get('src_port'))} -> "
        f"{_endpoint(data['dst'], data.get('dst_port'))} by {describe_refs(data['decided_by'])}"
    )


def format_table(records: Iterable[Mapping[str, Any]]) -> str:
    """Records as the table ``lab flows`` prints (what a person reads while a probe runs)."""
    rows = [("TIME", "NODE", "SRC", "DST", "PROTO", "VERDICT", "DECIDED BY")]
    for data in records:
        if data.get("event") == SUPPRESSED:
            rows.append(
                (
                    data["time"][11:23],
                    data["node"],
                    "-",
                    "-",
                    "-",
                    f"{data['records']} SUPPRESSED",
                    f"{data['events_dropped']} events dropped",
                )
            )
            continue
        verdict = data["verdict"]
        if not data.get("enforced", True):
            verdict += " (audit)"
        if data.get("event") == "revoked":
            verdict = "revoked"
        elif data.get("event") == "repeat":
            verdict += f" x{data['packets']}"
        verdict += _staged_words(data.get("staged"), ", ")
        port = "" if data.get("dst_port") is None else f"/{data['dst_port']}"
        rows.append(
            (
                data["time"][11:23],
                data["node"],
                data["src"],
                data["dst"],
                f"{data['protocol']}{port}",
                verdict,
                describe_refs(data["decided_by"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    )
