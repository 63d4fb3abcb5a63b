"""The scale benchmark's cluster sizes: parsing, the defaults, the decision sweep's counts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

NODE: Final = "node-1"
"""The node the tables are compiled for; it holds about 1/nodes of the pods."""


@dataclass(frozen=True, slots=True)
class Size:
    """One synthetic cluster size."""

    pods: int
    policies: int
    namespaces: int

    @property
    def nodes(self) -> int:
        """Nodes the pods are spread over: one per thousand pods, at least 10, at most 100."""
        return min(100, max(10, self.pods // 1000))

    @property
    def label(self) -> str:
        return f"{short(self.pods)} pods/{short(self.policies)} pol/{short(self.namespaces)} ns"

    def __str__(self) -> str:
        return f"{self.pods}:{self.policies}:{self.namespaces}"


FULL_SIZES: Final = (Size(1_000, 100, 10), Size(10_000, 1_000, 100), Size(100_000, 10_000, 1_000))
QUICK_SIZES: Final = FULL_SIZES[:2]
TARGET_SIZE: Final = Size(100_000, 10_000, 1_000)
"""The size the issue's compile, memory and change targets are stated for."""
MIN_PODS: Final = 100
"""Fewer pods might leave node-1 without any, and nothing to measure."""
MAX_PODS: Final = 1_000_000
"""Addresses are 10.N.x.y with N the node (at most 100) and at most 65,534 pods per node."""
SWEEP: Final = (10, 100, 1_000, 10_000)
"""Policy counts of the decision-time sweep (up to the size's own count)."""


def parse_size(text: str) -> Size:
    """``PODS:POLICIES:NAMESPACES``, each a number with an optional ``k`` (thousands)."""
    parts = text.lower().split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PODS:POLICIES:NAMESPACES")
    numbers: list[int] = []
    for part in parts:
        factor = 1_000 if part.endswith("k") else 1
        try:
            number = int(float(part.removesuffix("k")) * factor)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {part!r} is not a number") from None
        numbers.append(number)
    pods, policies, namespaces = numbers
    if pods < MIN_PODS or policies < 1 or namespaces < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r}: need at least {MIN_PODS} pods, 1 policy and 2 namespaces"
        )
    if namespaces > pods:
        raise argparse.ArgumentTypeError(f"{text!r}: more namespaces than pods")
    if pods > MAX_PODS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_PODS} pods")
    return Size(pods, policies, namespaces)


def sweep_counts(policies: int) -> tuple[int, ...]:
    """Policy counts at which a size's decision time is measured: 10, 100, ... up to its own."""
    counts = [count for count in SWEEP if count < policies]
    return (*counts, policies)


def short(number: int) -> str:
    """``number`` for labels: whole thousands as ``10k``."""
    if number >= 1_000 and number % 1_000 == 0:
        return f"{number // 1_000}k"
    return str(number)
