"""The monitor's records: a node's heartbeat, an incident and the lines of its history.

A heartbeat is what the node agent (server/monitor/agent.py) posts every minute or so; :meth:`Heartbeat.from_json`
checks it field by field (a bad one is a one-line 400 naming the field). Incidents are typed, at most one open
per node and type; their states are ``open`` (the ladder runs), ``paused`` (an admin stopped the ladder; it still
closes by itself) and ``closed`` (history).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from layerboot.errors import LayerbootError

STATES = ("open", "paused", "closed")
MAX_UNITS = 64
MAX_DISKS = 64
DISK_HEALTH = ("ok", "failing", "unknown")


def iso(seconds: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC time (what the CLI and the JSON show)."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _number(data: dict[str, Any], key: str, *, integer: bool = False) -> Any:
    value = data.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        raise LayerbootError(f"heartbeat {key!r} must be a non-negative {'integer' if integer else 'number'} "
                             "or null")
    return value


def _short_text(value: Any, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.isprintable():
        raise LayerbootError(f"heartbeat {what} must be printable text")
    return value[:limit]


@dataclass(frozen=True)
class Disk:
    name: str
    health: str = "unknown"            # ok | failing | unknown
    detail: str = ""


@dataclass(frozen=True)
class Heartbeat:
    """The latest runtime report of a node."""

    received: float = 0.0              # server time (epoch seconds) it arrived
    uptime: float | None = None        # seconds since the node's kernel started
    load: tuple[float, float, float] | None = None
    mem_total: int | None = None       # bytes
    mem_available: int | None = None
    profile: str | None = None         # what stage1 booted (/run/layerboot/status)
    generation: int | None = None
    serial: int | None = None
    failed_units: tuple[str, ...] = ()
    disks: tuple[Disk, ...] = ()
    ab: dict[str, Any] = field(default_factory=dict)   # {"booted": "A", "fallback": false, "states": {...}}
    agent: str = ""

    @property
    def failing_disks(self) -> list[Disk]:
        return [d for d in self.disks if d.health == "failing"]

    @property
    def fell_back(self) -> bool:
        return bool(self.ab.get("fallback"))

    @classmethod
    def from_json(cls, data: Any, *, received: float) -> "Heartbeat":
        if not isinstance(data, dict):
            raise LayerbootError("a heartbeat is a JSON object {uptime, load, memory, generation, serial, ...}")
        load = data.get("load")
        if load is not None and (not isinstance(load, list) or len(load) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in load)):
            raise LayerbootError("heartbeat 'load' must be [1 min, 5 min, 15 min] load averages")
        memory = data.get("memory") or {}
        if not isinstance(memory, dict):
            raise LayerbootError("heartbeat 'memory' must be an object {total, available} in bytes")
        units = data.get("failed_units") or []
        if not isinstance(units, list) or len(units) > MAX_UNITS:
            raise LayerbootError(f"heartbeat 'failed_units' must be a list of at most {MAX_UNITS} unit names")
        disks = data.get("disks") or []
        if not isinstance(disks, list) or len(disks) > MAX_DISKS:
            raise LayerbootError(f"heartbeat 'disks' must be a list of at most {MAX_DISKS} objects")
        parsed_disks = []
        for item in disks:
            if not isinstance(item, dict) or item.get("health", "unknown") not in DISK_HEALTH:
                raise LayerbootError("each heartbeat disk is {name, health: ok|failing|unknown, detail}")
            parsed_disks.append(Disk(_short_text(item.get("name"), "disk name", 64),
                                     item.get("health", "unknown"),
                                     _short_text(item.get("detail", ""), "disk detail")))
        ab = data.get("ab") or {}
        if not isinstance(ab, dict) or len(json.dumps(ab)) > 2000:
            raise LayerbootError("heartbeat 'ab' must be a small object {booted, fallback, states}")
        if "fallback" in ab and not isinstance(ab["fallback"], bool):
            raise LayerbootError("heartbeat 'ab.fallback' must be true or false")
        profile = data.get("profile")
        if profile is not None:
            profile = _short_text(profile, "'profile'", 64)
        return cls(received=received, uptime=_number(data, "uptime"),
                   load=tuple(float(x) for x in load) if load is not None else None,  # type: ignore[arg-type]
                   mem_total=_number(memory, "total", integer=True),
                   mem_available=_number(memory, "available", integer=True),
                   profile=profile, generation=_number(data, "generation", integer=True),
                   serial=_number(data, "serial", integer=True),
                   failed_units=tuple(_short_text(u, "unit name") for u in units), disks=tuple(parsed_disks),
                   ab=ab, agent=_short_text(data.get("agent", ""), "'agent'", 80))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Heartbeat":
        load = (row["load1"], row["load5"], row["load15"]) if row["load1"] is not None else None
        return cls(received=row["received"], uptime=row["uptime"], load=load, mem_total=row["mem_total"],
                   mem_available=row["mem_available"], profile=row["profile"], generation=row["generation"],
                   serial=row["serial"], failed_units=tuple(json.loads(row["failed_units"])),
                   disks=tuple(Disk(**d) for d in json.loads(row["disks"])), ab=json.loads(row["ab"]),
                   agent=row["agent"])

    def to_dict(self) -> dict[str, Any]:
        return {"received": iso(self.received), "uptime": self.uptime, "load": list(self.load) if self.load else None,
                "mem_total": self.mem_total, "mem_available": self.mem_available, "profile": self.profile,
                "generation": self.generation, "serial": self.serial, "failed_units": list(self.failed_units),
                "disks": [asdict(d) for d in self.disks], "ab": self.ab, "agent": self.agent}


@dataclass(frozen=True)
class Incident:
    id: int
    mac: str
    type: str
    state: str
    summary: str
    opened: float
    updated: float
    closed: float | None = None
    closed_by: str = ""
    clear_since: float | None = None
    step: int = 0                      # index of the next ladder step
    tries: int = 0                     # times that step already ran
    next_at: float | None = None       # when it is due (None: the ladder is done)
    flagged: bool = False
    reopened: int = 0                  # it reopened within the flap window this many times in a row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Incident":
        return cls(id=row["id"], mac=row["mac"], type=row["type"], state=row["state"], summary=row["summary"],
                   opened=row["opened"], updated=row["updated"], closed=row["closed"], closed_by=row["closed_by"],
                   clear_since=row["clear_since"], step=row["step"], tries=row["tries"], next_at=row["next_at"],
                   flagged=bool(row["flagged"]), reopened=row["reopened"])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("opened", "updated", "closed", "clear_since", "next_at"):
            data[key] = iso(data[key])
        return data


@dataclass(frozen=True)
class LogEntry:
    """One line of an incident's history: opened, step, notify, paused, resumed, closed, note."""

    time: float
    kind: str
    action: str = ""
    result: str = ""                   # ok | failed | skipped
    message: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "LogEntry":
        return cls(time=row["time"], kind=row["kind"], action=row["action"], result=row["result"],
                   message=row["message"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"time": iso(self.time)}
