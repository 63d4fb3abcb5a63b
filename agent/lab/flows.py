"""``lab flows``: the lab agents' flow logs, merged in time order, once or followed.

Each node's agent appends JSON lines to ``flows-<node>.jsonl`` in the lab's directory
(``Lab.flow_log_path``). Reading is tolerant: a line cut short by a write in progress, or one
that is not a JSON object, is skipped (the writer appends whole lines, so only the last line of
a file can be incomplete, and it is read again when it is complete).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FlowFilter:
    """Which records to show: all of them, or those of one pod, one verdict."""

    pod: str | None = None
    """``namespace/name`` (or an address): records whose source or destination it is."""
    verdict: str | None = None
    """``allowed`` or ``denied``."""

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if self.pod is not None and self.pod not in (record.get("src"), record.get("dst")):
            return False
        return self.verdict is None or record.get("verdict") == self.verdict


@dataclass(slots=True)
class _Tail:
    """Where reading one file got to."""

    path: Path
    offset: int = 0
    inode: int | None = None
    partial: bytes = field(default=b"")


def _read_new(tail: _Tail) -> list[Record]:
    """Records appended to ``tail.path`` since the last call (from the start if it was
    replaced or truncated)."""
    try:
        status = tail.path.stat()
    except FileNotFoundError:
        return []
    if tail.inode != status.st_ino or status.st_size < tail.offset:
        tail.inode, tail.offset, tail.partial = status.st_ino, 0, b""
    with tail.path.open("rb") as stream:
        stream.seek(tail.offset)
        data = stream.read()
    tail.offset += len(data)
    data = tail.partial + data
    lines = data.split(b"\n")
    tail.partial = lines.pop()  # empty after a complete last line
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_flows(paths: list[Path], keep: Callable[[Record], bool] = FlowFilter()) -> list[Record]:
    """Every record of ``paths``, in time order."""
    records = [record for path in paths for record in _read_new(_Tail(path)) if keep(record)]
    records.sort(key=lambda record: str(record.get("time", "")))
    return records


def follow_flows(
    paths: Callable[[], list[Path]],
    keep: Callable[[Record], bool] = FlowFilter(),
    *,
    interval: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Record]:
    """Records as they are written, from the current end of each file (``tail -f`` over the
    nodes; ``paths`` is asked again each turn, so a node's log that appears later is read)."""
    tails: dict[Path, _Tail] = {}
    for path in paths():
        tail = tails[path] = _Tail(path)
        _read_new(tail)  # skip what is already there
    while not stop():
        batch: list[Record] = []
        for path in paths():
            tail = tails.setdefault(path, _Tail(path))
            batch.extend(record for record in _read_new(tail) if keep(record))
        batch.sort(key=lambda record: str(record.get("time", "")))
        yield from batch
        time.sleep(interval)
