"""The lab's object store as a source of cluster state.

The lab keeps every object it was given, like an API server would, in one JSON file:
``{"revision": N, "objects": [<Kubernetes objects>]}``, replaced atomically (write + rename) on
every change. This source notices a new file (by its inode and modification time, checked every
``poll_interval`` seconds) and hands the whole object list to the cache, tagged with the revision,
so the agent can report exactly which revision is in force.

A store that cannot be read or parsed is logged and ignored: the last good state stays enforced.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from agent.logs import fields
from agent.state import KINDS, ClusterState, Kind

log = logging.getLogger(__name__)


def read_store(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """The revision and objects of a store file; raises ValueError if it is not a store."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise ValueError(f"{path}: not a lab store (expected an object with 'objects')")
    revision = data.get("revision")
    if not isinstance(revision, int):
        raise ValueError(f"{path}: 'revision' must be an integer")
    return revision, [obj for obj in data["objects"] if isinstance(obj, dict)]


class LabStoreSource:
    def __init__(self, path: Path, poll_interval: float = 0.02) -> None:
        self.path = path
        self.poll_interval = poll_interval

    def run(self, state: ClusterState, stop: threading.Event) -> None:
        seen: tuple[int, int] | None = None
        while not stop.is_set():
            try:
                status = os.stat(self.path)
                identity = (status.st_ino, status.st_mtime_ns)
                if identity != seen:
                    seen = identity
                    self._load(state)
            except FileNotFoundError:
                pass
            except Exception:  # a broken store must not stop the agent; keep the last state
                log.exception("could not load the lab store %s", self.path)
            stop.wait(self.poll_interval)

    def _load(self, state: ClusterState) -> None:
        try:
            revision, objects = read_store(self.path)
        except (OSError, ValueError) as error:
            log.error("ignoring an unreadable lab store", extra=fields(error=str(error)))
            return
        by_kind: dict[Kind, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for obj in objects:
            kind = obj.get("kind")
            if kind in by_kind:
                by_kind[kind].append(obj)
        state.replace_all(by_kind, source_version=str(revision))
        log.info("loaded the lab store", extra=fields(revision=revision, objects=len(objects)))
