"""Plain-text rendering shared by the commands: sizes and aligned tables.

Cells may hold text from nodes (boot-event messages, upload names and errors): :func:`table` escapes control
characters and terminal escape sequences in every cell (layerboot.safetext), so one row stays one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from layerboot.progress import human_size
from layerboot.safetext import printable


__all__ = ["human_size", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[printable(h) for h in headers]] + [[printable(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


