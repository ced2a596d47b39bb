"""The node page's boot timing chart: inline SVG drawn on the server (no script, no chart library).

One row per boot report (newest at the top), one segment per step stage1 timed (``timings``: modules, net,
manifest, layers, mount, ...), in the order stage1 runs them, each step in the same colour in every row; a failed boot is
marked. Colours are SVG presentation attributes, so the page's Content-Security-Policy (no inline styles)
allows them.
"""

from __future__ import annotations

from html import escape
from typing import Any

from markupsafe import Markup

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
ROW, LABEL, WIDTH, GAP = 22, 170, 760, 6
# the order stage1 runs its steps in (initrd/stage1/main.py); the server stores timings sorted by name
STAGE1_ORDER = ("mounts", "cmdline", "modules", "net", "network", "claim", "manifest", "layers", "stack", "mount",
                "switch_root")


def _ticks(total: float) -> list[float]:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600):
        if total / step <= 8:
            return [i * step for i in range(int(total / step) + 1)]
    return [0.0, total]


def timing_chart(events: list[dict[str, Any]], *, rows: int = 12) -> Markup:
    """SVG of the per-step timings of the newest ``rows`` boot reports that carry timings ('' if none)."""
    timed = [e for e in events if e.get("timings")][-rows:][::-1]
    if not timed:
        return Markup("")
    names = {step for event in timed for step in event["timings"]}
    steps = [s for s in STAGE1_ORDER if s in names] + sorted(names - set(STAGE1_ORDER))
    colour = {step: PALETTE[i % len(PALETTE)] for i, step in enumerate(steps)}
    total = max(sum(e["timings"].values()) for e in timed) or 1.0
    scale = (WIDTH - LABEL - 50) / total
    legend_rows = (len(steps) + 5) // 6
    height = 24 + len(timed) * ROW + 26 + legend_rows * 18
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
             f'width="{WIDTH}" height="{height}" role="img" aria-label="boot step timings">']
    for tick in _ticks(total):
        x = LABEL + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="14" x2="{x:.1f}" y2="{20 + len(timed) * ROW}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="10" font-size="10" text-anchor="middle" fill="#666">{tick:g} s</text>')
    for row, event in enumerate(timed):
        y = 20 + row * ROW
        label = f"{event.get('time', '')[:19].replace('T', ' ')} gen {event.get('generation') or '-'}"
        parts.append(f'<text x="0" y="{y + 14}" font-size="11" fill="#333">{escape(label)}</text>')
        x = float(LABEL)
        for step in steps:
            seconds = event["timings"].get(step)
            if not seconds:
                continue
            width = max(seconds * scale, 1.0)
            parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{width:.1f}" height="{ROW - GAP}" '
                         f'fill="{colour[step]}"><title>{escape(step)}: {seconds:.2f} s</title></rect>')
            x += width
        mark = "ok" if event.get("ok") else "FAILED at " + str(event.get("stage", "?"))
        fill = "#2e7d32" if event.get("ok") else "#c62828"
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 14}" font-size="11" fill="{fill}">'
                     f'{sum(event["timings"].values()):.1f} s {escape(mark)}</text>')
    top = 20 + len(timed) * ROW + 16
    for i, step in enumerate(steps):
        x, y = (i % 6) * 125, top + (i // 6) * 18
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colour[step]}"/>'
                     f'<text x="{x + 16}" y="{y + 10}" font-size="11" fill="#333">{escape(step)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
