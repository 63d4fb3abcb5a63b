"""What the benchmarks print and write: text tables, progress lines, the JSON and PNG files."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.bench.charts import have_matplotlib


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` (the first is the header) as left-aligned columns, a dashed line under the
    header, trailing blanks removed."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def progress(text: str) -> None:
    """A progress line, on standard error so that standard output holds only the report."""
    print(text, file=sys.stderr, flush=True)


def write_results(
    data: Mapping[str, Any], output: Path, name: str, draw: Callable[[Path], None]
) -> tuple[Path, Path | None]:
    """Write ``NAME-<timestamp>.json`` and, with matplotlib, ``.png`` (``draw(path)``) into
    ``output``; their paths (None for the chart without matplotlib)."""
    output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = output / f"{name}-{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    if not have_matplotlib():
        return json_path, None
    png_path = output / f"{name}-{stamp}.png"
    draw(png_path)
    return json_path, png_path


def wrote(json_path: Path, png_path: Path | None) -> str:
    """The report's last line: which files were written."""
    if png_path is None:
        return f"\nwrote {json_path}; no chart: matplotlib is missing (the project's 'bench' extra)"
    return f"\nwrote {json_path} and {png_path}"
