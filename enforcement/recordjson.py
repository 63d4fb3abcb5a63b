"""The flow log's JSON line of a record, written without building a dict first.

``VerdictRecord.as_dict`` defines the JSON form; :func:`json_line` gives exactly what
``json.dumps(record.as_dict(), separators=(",", ":"))`` gives (a property test holds them
together), at a third of the cost: at full load a node writes a thousand records a second, and
building and encoding the dict was the larger part of what a record costs. What repeats between
records is encoded once: the rules that decided (one tuple of references per outcome, shared by
every record of it) and the current second of the time.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING

from enforcement.verdict import RuleRef

if TYPE_CHECKING:
    from enforcement.events import VerdictRecord

_COMPACT = json.JSONEncoder(separators=(",", ":"))
_REFS_CACHED = 4096
"""Distinct tuples of references whose JSON is kept (tables of a generation have a few)."""

_refs_json: dict[int, tuple[tuple[RuleRef, ...], str]] = {}
_second: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text up to the seconds (replaced as one tuple:
pumps of several threads format times)."""


def json_line(record: VerdictRecord) -> str:
    """``record.as_dict()`` as compact JSON."""
    if record.staged is not None:
        return _COMPACT.encode(record.as_dict())  # rare: staged policies exist
    port = record.src_port
    dst_port = record.dst_port
    end = ',"cached":true}' if record.cached else "}"
    return (
        f'{{"time":"{time_text(record.time)}","node":{string(record.node)},'
        f'"event":{string(record.event)},"src":{string(record.src)},'
        f'"dst":{string(record.dst)},"src_ip":{string(record.src_ip)},'
        f'"dst_ip":{string(record.dst_ip)},"protocol":{string(record.protocol)},'
        f'"family":{record.family},"src_port":{"null" if port is None else port},'
        f'"dst_port":{"null" if dst_port is None else dst_port},'
        f'"directions":[{",".join(string(d) for d in record.directions)}],'
        f'"verdict":{string(record.verdict)},"reason":{string(record.reason)},'
        f'"decided_by":{refs_json(record.decided_by)},'
        f'"enforced":{"true" if record.enforced else "false"},"packets":{record.packets}{end}'
    )


def string(text: str) -> str:
    """``json.dumps(text)``, quickly for the plain ASCII that names and addresses are."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def refs_json(refs: tuple[RuleRef, ...]) -> str:
    """The JSON list of ``refs``, encoded once per tuple (outcomes share theirs)."""
    cached = _refs_json.get(id(refs))
    # The entry holds the tuple itself: its id cannot be reused while it is cached.
    if cached is not None and cached[0] is refs:
        return cached[1]
    if len(_refs_json) >= _REFS_CACHED:
        _refs_json.clear()
    text = _COMPACT.encode([ref.as_dict() for ref in refs])
    _refs_json[id(refs)] = (refs, text)
    return text


def time_text(seconds: float) -> str:
    """``events.format_time``: RFC 3339 in UTC with microseconds, rounded as ``datetime`` does
    (half to even, carrying into the next second)."""
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    global _second
    known, text = _second
    if known != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return f"{text}.{micros:06d}Z"
