"""Plain-text rendering shared by the commands: sizes and aligned tables.

Cells may hold text from nodes (boot-event messages, upload names and errors): :func:`table` escapes control
characters and terminal escape sequences in every cell (layerboot.safetext), so one row stays one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from layerboot.safetext import printable


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[printable(h) for h in headers]] + [[printable(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def print_json(data: object) -> None:
    """What every ``--json`` prints: indented, keys sorted, one document."""
    import json

    print(json.dumps(data, indent=2, sort_keys=True))
