"""The issue's targets, checked against a run: one record, one check per direction, one line.

Every benchmark states its targets as :class:`Target` records (in its JSON under ``targets``)
and prints them with :func:`render_targets`, each ``met``, ``NOT met`` or ``not measured``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from agent.bench.machine import GiB, MiB

Unit = Literal["s", "µs", "bytes", "k", "ratio"]
"""How a target's value is shown; the value itself is always in SI units (seconds, bytes,
counts, plain ratios): ``s`` seconds as s or ms, ``µs`` seconds as µs, ``bytes`` as MiB or GiB,
``k`` a count in thousands, ``ratio`` a plain number."""


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue's table, checked against this run."""

    name: str
    condition: str
    """The target as the issue states it, e.g. ``≤ 50 ms`` or ``≥ 0.95``."""
    value: float | None
    """The measured figure in SI units; None when it was not measured."""
    limit: float
    """The bound of ``condition``, in the unit of ``value``."""
    unit: Unit
    met: bool | None
    """None when the figure is missing."""
    note: str = ""

    def render(self) -> str:
        """``NAME: VALUE (target CONDITION): met|NOT met|not measured (NOTE)``."""
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        shown = "-" if self.value is None else in_unit(self.value, self.unit)
        note = f" ({self.note})" if self.note else ""
        return f"{self.name}: {shown} (target {self.condition}): {verdict}{note}"


def in_unit(value: float, unit: Unit) -> str:
    """``value`` (SI) as ``unit`` shows it."""
    if unit == "s":
        return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms"
    if unit == "µs":
        return f"{value * 1e6:.1f} µs"
    if unit == "bytes":
        return f"{value / GiB:.2f} GiB" if value >= GiB else f"{value / MiB:.0f} MiB"
    if unit == "k":
        return f"{value / 1e3:.1f}k"
    return f"{value:.2f}"


def at_most(
    name: str, condition: str, value: float | None, limit: float, unit: Unit, note: str = ""
) -> Target:
    """Met when ``value <= limit``; the note starts with the value as a multiple of the limit
    (by how much it is missed, or the margin)."""
    if value is None:
        return Target(name, condition, None, limit, unit, None, note)
    met = value <= limit
    factor = value / limit if limit else math.inf
    how = f"{factor:.2f}x the limit" if met else f"{factor:.1f}x the limit"
    return Target(name, condition, value, limit, unit, met, f"{how}; {note}" if note else how)


def at_least(
    name: str, condition: str, value: float | None, bound: float, unit: Unit, note: str = ""
) -> Target:
    """Met when ``value >= bound`` (the value, mostly a ratio already, says by how much)."""
    if value is None:
        return Target(name, condition, None, bound, unit, None, note)
    return Target(name, condition, value, bound, unit, value >= bound, note)


def with_note(target: Target, note: str) -> Target:
    """``target`` with its note replaced."""
    return replace(target, note=note)


def render_targets(targets: Iterable[Target]) -> list[str]:
    """The ``targets:`` block of a benchmark's printed report."""
    return ["targets:", *(f"  {target.render()}" for target in targets)]
