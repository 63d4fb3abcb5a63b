"""The flow log's writer and the words people read (table, trace)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.flowlog import (
    SUPPRESSED,
    FlowLogWriter,
    TraceWriter,
    describe_refs,
    format_record,
    format_table,
    format_trace,
)
from enforcement.eventpump import RecordBatch
from enforcement.events import VerdictEvent, VerdictRecord, record_of
from enforcement.model import IPPROTO_TCP
from enforcement.packets import PacketInfo
from tests.builders import ip
from tests.enforcement.test_events import A, B, C, _tables


def _record(src: str, dst: str, *, enforced: bool = True) -> VerdictRecord:
    tables = _tables()
    packet = PacketInfo(4, ip(src), ip(dst), IPPROTO_TCP, 40000, 80, tcp_flags=0x02)
    outcome = tables.outcome(packet.src, packet.dst, IPPROTO_TCP, 80)
    return record_of(VerdictEvent(1.5, packet, outcome, tables, enforced), "node-1")


def test_records_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "flows.jsonl"
    writer = FlowLogWriter(str(path), "node-1")
    writer(RecordBatch((_record(A, B), _record(C, B))))
    writer(RecordBatch((), suppressed=7, dropped=2))
    writer.close()
    again = FlowLogWriter(str(path), "node-1")  # a restarted agent appends
    again(RecordBatch((_record(A, C),)))
    again.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r.get("src"), r.get("dst"), r.get("verdict")) for r in lines] == [
        ("x/a", "x/b", "allowed"),
        ("x/c", "x/b", "denied"),
        (None, None, None),
        ("x/a", "x/c", "allowed"),
    ]
    assert lines[2]["event"] == SUPPRESSED
    assert (lines[2]["records"], lines[2]["events_dropped"]) == (7, 2)
    assert lines[1]["decided_by"][0]["name"] == "only-a"


def test_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    writer = FlowLogWriter("-", "node-1")
    writer(RecordBatch((_record(A, B),)))
    writer.close()  # never closes stdout
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["dst"] == "x/b"


def test_words_for_people() -> None:
    allowed, denied = _record(A, B).as_dict(), _record(C, B).as_dict()
    assert describe_refs(allowed["decided_by"]) == "NetworkPolicy x/only-a rule 0 Allow"
    assert describe_refs(denied["decided_by"]) == "NetworkPolicy x/only-a Isolate"
    assert describe_refs([]) == "-"
    assert format_record(denied) == (
        "TCP x/c:40000 -> x/b:80 DENIED [denied-ingress] by NetworkPolicy x/only-a Isolate"
    )
    assert format_trace(denied).startswith("drop denied-ingress TCP x/c:40000 -> x/b:80 by")
    audited = _record(C, B, enforced=False).as_dict()
    assert format_trace(audited).startswith("accept (audit) denied-ingress")
    assert "audit" in format_record(audited)
    table = format_table([allowed, denied]).splitlines()
    assert table[0].split() == ["TIME", "NODE", "SRC", "DST", "PROTO", "VERDICT", "DECIDED", "BY"]
    assert table[2].split()[1:6] == ["node-1", "x/c", "x/b", "TCP/80", "denied"]


def test_the_trace_logs_every_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="netpol-agent.trace"):
        TraceWriter()(RecordBatch((_record(A, B), _record(C, B)), suppressed=1))
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("accept allowed TCP x/a:40000 -> x/b:80")
    assert messages[1].startswith("drop denied-ingress")
    assert messages[2] == "trace incomplete"
