"""Sources of cluster state: each feeds Kubernetes objects into an ``agent.state.ClusterState``.

A source runs on its own thread until ``stop`` is set; it only writes into the cache, which marks
the agent's state dirty. Compiling and firewall syncs happen elsewhere, coalesced.
"""

from __future__ import annotations

import threading
from typing import Protocol

from agent.state import ClusterState


class Source(Protocol):
    def run(self, state: ClusterState, stop: threading.Event) -> None:
        """Feed ``state`` until ``stop`` is set; never raise for bad input or lost connections."""
        ...
