"""The monitor's structured configuration: incident types with their thresholds, damping and action ladders.

In the TOML config each type is a table under ``[monitor.incidents]``; what a table leaves out keeps the
built-in default below, and a ``ladder`` given replaces the default ladder whole::

    [monitor.incidents.node-down]
    after = "2m"                 # the condition must hold this long before an incident opens
    clear_after = "1m"           # ... and be gone this long before it closes by itself
    notify = ["log", "email"]    # who hears that an incident opened or closed
    ladder = [
      { action = "power-cycle", wait = "5m" },
      { action = "power-cycle", boot = "last-good", wait = "10m" },
      { action = "notify" },
      { action = "flag" },
    ]

Errors name the full key path (``monitor.incidents.node-down.ladder[2].wait``). Stdlib only: layerboot/settings.py
imports this module, and the node-side CLI loads the settings too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from layerboot.errors import LayerbootError

TYPES = ("node-down", "boot-failing", "boot-stuck", "stale-generation", "ab-fallback", "bad-hardware",
         "units-failed")
ACTIONS = ("power-cycle", "power-on", "power-off", "pin-last-good", "notify", "flag", "wait")
POWER_ACTIONS = ("power-cycle", "power-on", "power-off")
CHANNELS = ("log", "email", "webhook")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """A bad value; ``path`` is the key path below the section (joined by the caller)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def duration(value: Any, path: str = "") -> float:
    """Seconds from 30, 2.5, "90s", "5m", "2h", "1d" or "250ms"; never negative."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration (seconds, or a string like \"5m\"), got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ConfigError(path, f"expected a duration (seconds, or a string like \"5m\", \"90s\", \"2h\"), "
                                f"got {value!r}")
    if seconds < 0:
        raise ConfigError(path, f"a duration cannot be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Step:
    """One rung of a ladder: do ``action`` (``tries`` times, ``wait`` apart, each wait ``backoff`` times the
    last), then wait ``wait`` before the next rung."""

    action: str
    wait: float = 0.0
    tries: int = 1
    backoff: float = 1.0
    boot: str = ""                      # "last-good": pin the last good generation first (power actions)
    channels: tuple[str, ...] = ()      # notify/flag: these channels (default: the type's notify list)
    message: str = ""

    def describe(self) -> str:
        text = self.action + (" (boot the last good generation)" if self.boot else "")
        if self.tries > 1:
            text += f" x{self.tries}"
        if self.wait:
            text += f", then wait {format_duration(self.wait)}"
        return text

    def to_toml(self) -> str:
        parts = [f'action = "{self.action}"']
        if self.wait:
            parts.append(f'wait = "{format_duration(self.wait)}"')
        if self.tries != 1:
            parts.append(f"tries = {self.tries}")
        if self.backoff != 1.0:
            parts.append(f"backoff = {self.backoff:g}")
        if self.boot:
            parts.append(f'boot = "{self.boot}"')
        if self.channels:
            parts.append("channels = [" + ", ".join(f'"{c}"' for c in self.channels) + "]")
        if self.message:
            parts.append("message = " + _toml_string(self.message))
        return "{ " + ", ".join(parts) + " }"


@dataclass(frozen=True)
class IncidentType:
    name: str
    after: float = 0.0                  # condition held this long -> incident opens
    clear_after: float = 60.0           # condition gone this long -> incident closes
    flap_window: float = 3600.0         # reopened within this after closing: the ladder goes on where it stopped
    notify: tuple[str, ...] = ("log",)  # told when an incident opens and closes
    enabled: bool = True
    ladder: tuple[Step, ...] = field(default_factory=tuple)

    def to_toml(self) -> str:
        lines = [f"[monitor.incidents.{self.name}]", f"enabled = {'true' if self.enabled else 'false'}",
                 f'after = "{format_duration(self.after)}"', f'clear_after = "{format_duration(self.clear_after)}"',
                 f'flap_window = "{format_duration(self.flap_window)}"',
                 "notify = [" + ", ".join(f'"{c}"' for c in self.notify) + "]"]
        lines.append("ladder = [" + "".join(f"\n  {s.to_toml()}," for s in self.ladder) + ("\n]" if self.ladder
                                                                                           else "]"))
        return "\n".join(lines) + "\n"


_POWER_LADDER = (Step("power-cycle", wait=300.0), Step("power-cycle", boot="last-good", wait=600.0),
                 Step("notify"), Step("flag"))
_DEFAULTS: dict[str, IncidentType] = {
    "node-down": IncidentType("node-down", after=0.0, ladder=_POWER_LADDER),
    "boot-failing": IncidentType("boot-failing", after=0.0, ladder=_POWER_LADDER),
    "boot-stuck": IncidentType("boot-stuck", after=0.0, ladder=(Step("power-cycle", wait=600.0), Step("notify"),
                                                                Step("flag"))),
    "stale-generation": IncidentType("stale-generation", after=86400.0, clear_after=0.0, ladder=(Step("notify"),)),
    "ab-fallback": IncidentType("ab-fallback", ladder=(Step("notify"), Step("flag"))),
    "bad-hardware": IncidentType("bad-hardware", ladder=(Step("notify"), Step("flag"))),
    "units-failed": IncidentType("units-failed", after=600.0, ladder=(Step("notify"),)),
}


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _channels(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ConfigError(path, f"expected a list of channels ({', '.join(CHANNELS)}), got {value!r}")
    for channel in value:
        if channel not in CHANNELS:
            raise ConfigError(path, f"unknown channel {channel!r} (known: {', '.join(CHANNELS)})")
    return tuple(dict.fromkeys(value))


def _step(value: Any, path: str) -> Step:
    if not isinstance(value, dict):
        raise ConfigError(path, f"a ladder step is a table like {{ action = \"power-cycle\", wait = \"5m\" }}, "
                                f"got {value!r}")
    known = {"action", "wait", "tries", "backoff", "boot", "channels", "message"}
    for key in value:
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown key (a step has {', '.join(sorted(known))})")
    action = value.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"{path}.action", f"expected one of {', '.join(ACTIONS)}, got {action!r}")
    tries = value.get("tries", 1)
    if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= 100:
        raise ConfigError(f"{path}.tries", f"expected a whole number from 1 to 100, got {tries!r}")
    backoff = value.get("backoff", 1.0)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 1.0 <= backoff <= 100.0:
        raise ConfigError(f"{path}.backoff", f"expected a factor from 1 to 100, got {backoff!r}")
    boot = value.get("boot", "")
    if boot not in ("", "last-good"):
        raise ConfigError(f"{path}.boot", f"expected \"last-good\", got {boot!r}")
    if boot and action not in ("power-cycle", "power-on"):
        raise ConfigError(f"{path}.boot", f"only power-cycle and power-on boot a generation, not {action}")
    message = value.get("message", "")
    if not isinstance(message, str):
        raise ConfigError(f"{path}.message", f"expected a string, got {message!r}")
    channels = _channels(value["channels"], f"{path}.channels") if "channels" in value else ()
    if channels and action not in ("notify", "flag"):
        raise ConfigError(f"{path}.channels", f"only notify and flag steps send messages, not {action}")
    return Step(action=action, wait=duration(value.get("wait", 0), f"{path}.wait"), tries=tries,
                backoff=float(backoff), boot=boot, channels=channels, message=message)


def _incident_type(name: str, value: Any, path: str) -> IncidentType:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a table, got {value!r}")
    base = _DEFAULTS[name]
    changes: dict[str, Any] = {}
    for key, raw in value.items():
        here = f"{path}.{key}"
        if key in ("after", "clear_after", "flap_window"):
            changes[key] = duration(raw, here)
        elif key == "notify":
            changes[key] = _channels(raw, here)
        elif key == "enabled":
            if not isinstance(raw, bool):
                raise ConfigError(here, f"expected true or false, got {raw!r}")
            changes[key] = raw
        elif key == "ladder":
            if not isinstance(raw, list):
                raise ConfigError(here, "expected a list of steps: ladder = [ { action = \"notify\" }, ... ]")
            changes[key] = tuple(_step(item, f"{here}[{index}]") for index, item in enumerate(raw))
        else:
            raise ConfigError(here, "unknown key (an incident type has enabled, after, clear_after, "
                                    "flap_window, notify, ladder)")
    return replace(base, **changes)


@dataclass(frozen=True)
class IncidentTypes:
    """Every incident type by name (hashable, as the frozen Config wants its defaults)."""

    types: tuple[IncidentType, ...]

    def __getitem__(self, name: str) -> IncidentType:
        for itype in self.types:
            if itype.name == name:
                return itype
        raise KeyError(name)

    def values(self) -> tuple[IncidentType, ...]:
        return self.types


def parse_incident_types(table: Any) -> IncidentTypes:
    """``[monitor.incidents]`` -> every type (configured ones over the defaults). ConfigError names the path."""
    if not isinstance(table, dict):
        raise ConfigError("", f"expected a table of incident types, got {table!r}")
    types = dict(_DEFAULTS)
    for name, value in table.items():
        if name not in _DEFAULTS:
            raise ConfigError(name, f"unknown incident type (known: {', '.join(TYPES)})")
        types[name] = _incident_type(name, value, name)
    return IncidentTypes(tuple(types.values()))


def render_incident_types(types: IncidentTypes) -> str:
    return "\n".join(t.to_toml() for t in types.values())


def check_channels(types: IncidentTypes, available: set[str]) -> None:
    """Every channel a type or step names must be configured (e.g. email needs notify.email_to)."""
    for itype in types.values():
        wanted = [("notify", c) for c in itype.notify]
        wanted += [(f"ladder[{i}].channels", c) for i, s in enumerate(itype.ladder) for c in s.channels]
        for where, channel in wanted:
            if channel not in available:
                need = {"email": "notify.email_to", "webhook": "notify.webhook_url"}.get(channel, channel)
                raise LayerbootError(f"monitor.incidents.{itype.name}.{where}: channel {channel!r} is not "
                                     f"configured", hint=f"set {need}, or drop {channel!r} from the list")


DEFAULT_TYPES = IncidentTypes(tuple(_DEFAULTS.values()))
