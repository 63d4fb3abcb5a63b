"""The fast JSON line of a flow record is exactly the compact JSON of ``as_dict``."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from enforcement.events import StagedReport, VerdictRecord, format_time
from enforcement.recordjson import json_line, time_text
from enforcement.verdict import RuleRef

TEXT = st.text(max_size=20)
PLAIN = st.from_regex(r"[a-z0-9./:-]{0,30}", fullmatch=True)
PORTS = st.none() | st.integers(0, 65535)
TIMES = st.floats(0, 4e9, allow_nan=False) | st.integers(0, 4_000_000_000).map(
    lambda second: second + 0.9999995
)

REFS = st.builds(
    RuleRef,
    kind=st.sampled_from(["NetworkPolicy", "ClusterNetworkPolicy"]),
    namespace=st.none() | PLAIN,
    name=TEXT,
    tier=st.sampled_from(["Admin", "NetworkPolicy", "Baseline"]),
    rule=st.none() | st.integers(0, 99),
    rule_name=TEXT,
    action=st.sampled_from(["Allow", "Isolate", "Accept", "Deny", "Pass"]),
    staged=st.booleans(),
)

RECORDS = st.builds(
    VerdictRecord,
    time=TIMES,
    node=PLAIN | TEXT,
    event=st.sampled_from(["connection", "revoked", "repeat"]),
    src=PLAIN | TEXT,
    dst=PLAIN | TEXT,
    src_ip=PLAIN,
    dst_ip=PLAIN,
    protocol=st.sampled_from(["TCP", "UDP", "SCTP", "ICMP", "ICMPv6", "47"]),
    family=st.sampled_from([4, 6]),
    src_port=PORTS,
    dst_port=PORTS,
    directions=st.lists(st.sampled_from(["egress", "ingress"]), max_size=2).map(tuple),
    verdict=st.sampled_from(["allowed", "denied"]),
    reason=TEXT,
    decided_by=st.lists(REFS, max_size=3).map(tuple),
    enforced=st.booleans(),
    packets=st.integers(1, 10**6),
    staged=st.none()
    | st.builds(
        StagedReport,
        verdict=st.sampled_from(["allowed", "denied"]),
        would_deny=st.booleans(),
        would_allow=st.booleans(),
        decided_by=st.lists(REFS, max_size=2).map(tuple),
        changed_by=st.lists(REFS, max_size=2).map(tuple),
    ),
    cached=st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(RECORDS)
def test_the_line_is_the_compact_json_of_the_dict(record: VerdictRecord) -> None:
    assert json_line(record) == json.dumps(record.as_dict(), separators=(",", ":"))
    assert json_line(record) == json_line(record)  # cached parts give the same text again


@settings(max_examples=1000, deadline=None)
@given(TIMES)
def test_times_are_formatted_as_format_time_does(seconds: float) -> None:
    assert time_text(seconds) == format_time(seconds)


def test_records_sharing_their_references_share_one_encoding() -> None:
    refs = (RuleRef("NetworkPolicy", "x", "only-a", "NetworkPolicy", 0, "", "Allow"),)
    base = dict(
        node="node-1", event="connection", src="x/a", dst="x/b", src_ip="10.244.1.2",
        dst_ip="10.244.1.3", protocol="TCP", family=4, dst_port=80, directions=("ingress",),
        verdict="allowed", reason="allowed", decided_by=refs,
    )  # fmt: skip
    first = json_line(VerdictRecord(time=1.5, src_port=1, **base))  # type: ignore[arg-type]
    second = json_line(VerdictRecord(time=2.5, src_port=2, **base))  # type: ignore[arg-type]
    assert (
        json.loads(first)["decided_by"] == json.loads(second)["decided_by"] == [refs[0].as_dict()]
    )
