"""Plain-text rendering shared by the commands: sizes and aligned tables."""

from __future__ import annotations

from collections.abc import Sequence

from layerboot.progress import human_size

__all__ = ["human_size", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)
