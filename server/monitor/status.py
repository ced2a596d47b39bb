"""Live status of every node in one place: what ``layerboot nodes status`` prints and ``/metrics`` exports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.overlays.profile import Profiles
from layerboot.server.monitor.detectors import Limits, booted_generation, node_state
from layerboot.server.monitor.model import Heartbeat, iso
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.nodes import Registry


@dataclass(frozen=True)
class NodeStatus:
    mac: str
    profile: str
    state: str                          # see detectors.STATES
    heartbeat_age: float | None         # seconds since the last heartbeat (None: never)
    generation: int | None              # the generation it runs (heartbeat, else stage1's last report)
    newest: int | None                  # its profile's newest generation
    good_generation: int | None
    pinned_generation: int | None
    last_seen: str | None
    incidents: tuple[str, ...] = ()     # "TYPE #ID" of its open incidents
    heartbeat: Heartbeat | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["incidents"] = list(self.incidents)
        data["heartbeat"] = self.heartbeat.to_dict() if self.heartbeat is not None else None
        return data


def newest_generations(profiles: Profiles) -> Any:
    """A function profile -> its newest generation number (None for a profile that does not exist)."""
    cache: dict[str, int | None] = {}

    def newest(name: str) -> int | None:
        if name not in cache:
            try:
                numbers = profiles.numbers(name)
            except LayerbootError:
                numbers = []
            cache[name] = numbers[-1] if numbers else None
        return cache[name]

    return newest


def fleet_status(registry: Registry, records: MonitorRecords, profiles: Profiles, limits: Limits,
                 now: float | None = None) -> list[NodeStatus]:
    now = time.time() if now is None else now
    beats: dict[str, Heartbeat] = records.heartbeats()
    open_incidents: dict[str, list[str]] = {}
    for incident in records.list():
        open_incidents.setdefault(incident.mac, []).append(f"{incident.type} #{incident.id}"
                                                           + (" (paused)" if incident.state == "paused" else ""))
    newest = newest_generations(profiles)
    result = []
    for node in registry.all():
        beat = beats.get(node.mac)
        result.append(NodeStatus(
            mac=node.mac, profile=node.profile, state=node_state(node, beat, limits, now),
            heartbeat_age=round(now - beat.received, 1) if beat else None,
            generation=booted_generation(node, beat, limits, now), newest=newest(node.profile),
            good_generation=node.good_generation, pinned_generation=node.pinned_generation,
            last_seen=node.last_seen, incidents=tuple(sorted(open_incidents.get(node.mac, []))),
            heartbeat=beat))
    return result


__all__ = ["NodeStatus", "fleet_status", "newest_generations", "iso"]
