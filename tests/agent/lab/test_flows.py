"""Reading the lab agents' flow logs: merged in time order, filtered, followed."""

from __future__ import annotations

import json
from pathlib import Path

from agent.lab.flows import FlowFilter, follow_flows, read_flows


def _line(time: str, src: str, dst: str, verdict: str = "allowed") -> str:
    return json.dumps({"time": time, "src": src, "dst": dst, "verdict": verdict}) + "\n"


def test_nodes_are_merged_in_time_order_and_broken_lines_skipped(tmp_path: Path) -> None:
    one, two = tmp_path / "flows-node-1.jsonl", tmp_path / "flows-node-2.jsonl"
    one.write_text(_line("2026-01-01T00:00:02Z", "x/a", "x/b") + "not json\n[1]\n")
    two.write_text(_line("2026-01-01T00:00:01Z", "x/c", "x/b", "denied") + '{"time": "2026-0')
    records = read_flows([one, two, tmp_path / "flows-node-3.jsonl"])
    assert [record["src"] for record in records] == ["x/c", "x/a"]
    assert read_flows([one, two], FlowFilter(verdict="denied"))[0]["src"] == "x/c"
    assert read_flows([one, two], FlowFilter(pod="x/a"))[0]["dst"] == "x/b"
    assert read_flows([one, two], FlowFilter(pod="x/b", verdict="allowed"))[0]["src"] == "x/a"


def test_following_reads_only_what_is_written_after_it_started(tmp_path: Path) -> None:
    path = tmp_path / "flows-node-1.jsonl"
    path.write_text(_line("2026-01-01T00:00:01Z", "x/old", "x/b"))
    turns = iter(range(100))
    written = {3: _line("2026-01-01T00:00:02Z", "x/a", "x/b") + '{"time": "2026-01-01T00:00:03'}

    def stop() -> bool:
        turn = next(turns)
        if turn in written:
            with path.open("a") as stream:
                stream.write(written[turn])
        if turn == 5:  # the line cut short above is completed later
            with path.open("a") as stream:
                stream.write('Z", "src": "x/c", "dst": "x/b", "verdict": "denied"}\n')
        return turn >= 8

    seen = list(follow_flows(lambda: [path], stop=stop, interval=0))
    assert [record["src"] for record in seen] == ["x/a", "x/c"]
