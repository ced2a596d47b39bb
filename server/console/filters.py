"""Jinja2 filters of the console: ages, sizes, times, short digests, state colours."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from layerboot.tools.output import human_size

# node and incident states -> a CSS class (static/console.css colours them)
STATE_CLASS = {"up": "good", "booted": "good", "done": "good", "baked": "good", "ok": "good",
               "booting": "busy", "running": "busy", "queued": "busy", "received": "busy", "baking": "busy",
               "receiving": "busy", "retry": "warn", "paused": "warn", "held": "warn", "unknown": "none",
               "closed": "none", "stuck": "bad", "failed": "bad", "down": "bad", "open": "bad"}


def seconds_of(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO time string (the records use both)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}" if seconds >= 10 * size or unit == "d" else \
                f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def ago(value: Any) -> str:
    """'3 min ago' for a time (ISO string or epoch seconds); 'never' for none."""
    when = seconds_of(value)
    if when is None:
        return "never"
    return f"{duration(time.time() - when)} ago" if when <= time.time() else f"in {duration(when - time.time())}"


def age(seconds: Any) -> str:
    """'42 s ago' for an age in seconds (heartbeat_age)."""
    return "never" if seconds is None else f"{duration(float(seconds))} ago"


def when(value: Any) -> str:
    """A time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    stamp = seconds_of(value)
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def size(value: Any) -> str:
    return "-" if value is None else human_size(int(value))


def short(digest: Any) -> str:
    return str(digest)[:12] if digest else "-"


def state_class(state: Any) -> str:
    return STATE_CLASS.get(str(state), "none")


def dash(value: Any) -> Any:
    return "-" if value is None or value == "" else value


FILTERS = {"ago": ago, "age": age, "when": when, "size": size, "short": short, "state_class": state_class,
           "dash": dash, "duration": duration}
