"""The benchmarks' one way to draw a PNG chart (matplotlib, headless).

matplotlib is optional (the project's ``bench`` extra): it is imported only while a chart is
drawn, never when a benchmark module is imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DPI = 110
"""Resolution of every chart (the panels stay legible at a page's width)."""


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


@contextlib.contextmanager
def panels(
    path: Path,
    title: str,
    count: int,
    size: tuple[float, float],
    width_ratios: Sequence[float] | None = None,
) -> Iterator[Sequence[Any]]:
    """``count`` side-by-side axes to draw on; on leaving the block the figure gets ``title``
    and is written to ``path`` as a PNG, then closed (also when drawing fails)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    options: dict[str, Any] = {"figsize": size}
    if width_ratios is not None:
        options["gridspec_kw"] = {"width_ratios": list(width_ratios)}
    figure, axes = plt.subplots(1, count, **options)
    try:
        yield list(axes) if count > 1 else [axes]
        figure.suptitle(title, fontsize=11)
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
