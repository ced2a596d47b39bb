"""Rules: from what the server knows of each node (boot reports, its heartbeat, its profile) to its state and
to the conditions that are bad right now, one per incident type.

A node's state is one of:

* ``unknown``  never seen;
* ``booting``  it fetched its iPXE script, or booted again and its agent has not reported yet;
* ``stuck``    it fetched its iPXE script more than ``monitor.stuck_after`` ago and stage1 never reported;
* ``failed``   its latest boot report is a failure (stage1 could not fetch, verify or mount);
* ``up``       its last heartbeat is younger than ``monitor.heartbeat_timeout``;
* ``down``     it sent heartbeats before, and neither a heartbeat nor boot activity came for that long;
* ``booted``   stage1 reported a good boot and the node has no heartbeat agent (nothing more is known).

Conditions (the incident types of server/monitor/config.py): node-down, boot-failing, boot-stuck,
stale-generation (running an older generation than its profile's newest, unless pinned), ab-fallback (GRUB
fell back to the other slot), bad-hardware (a disk's SMART health is failing), units-failed (systemd units).
What is wrong is said in words that do not change while it lasts (times, not ages), so a check writes nothing
for an incident whose condition is unchanged.
A node gets at most one of node-down / boot-failing / boot-stuck at a time, so two ladders never power-cycle
the same node for one cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from layerboot.server.monitor.model import Heartbeat, iso
from layerboot.server.nodes import Node

STATES = ("unknown", "booting", "stuck", "failed", "up", "down", "booted")


@dataclass(frozen=True)
class Limits:
    heartbeat_timeout: float = 300.0
    stuck_after: float = 600.0

    @classmethod
    def from_config(cls, config: Any) -> "Limits":
        return cls(float(config.monitor_heartbeat_timeout), float(config.monitor_stuck_after))


def seconds(text: str | None) -> float | None:
    """An ISO time from the nodes table (utc_now) as epoch seconds."""
    if not text:
        return None
    return datetime.fromisoformat(text).timestamp()


def node_state(node: Node, beat: Heartbeat | None, limits: Limits, now: float) -> str:
    seen = seconds(node.last_seen)
    if seen is None and beat is None:
        return "unknown"
    if node.last_ok is False:
        return "failed"
    if node.last_stage == "ipxe":
        return "stuck" if now - (seen or now) > limits.stuck_after else "booting"
    if beat is not None:
        if now - beat.received <= limits.heartbeat_timeout:
            return "up"
        if seen is not None and now - seen <= limits.heartbeat_timeout:
            return "booting"
        return "down"
    return "booted"


def failure_kind(message: str) -> str:
    """signature / hash / fetch / other, from stage1's one-line failure message."""
    text = message.lower()
    if "signature" in text or "signed by key" in text or "serial" in text:
        return "signature"
    if "verification" in text or "sha256" in text:
        return "hash"
    if any(word in text for word in ("get http", "connection", "timed out", "unreachable", "http ")):
        return "fetch"
    return "other"


def booted_generation(node: Node, beat: Heartbeat | None, limits: Limits, now: float) -> int | None:
    """The generation the node runs: its fresh heartbeat's (same profile), else stage1's last report."""
    if beat is not None and now - beat.received <= limits.heartbeat_timeout and beat.profile == node.profile:
        return beat.generation
    return node.last_generation


def conditions(nodes: list[Node], beats: dict[str, Heartbeat], newest: Callable[[str], int | None],
               limits: Limits, now: float | None = None) -> dict[tuple[str, str], str]:
    """{(mac, incident type): what is wrong} for every condition that is bad now."""
    now = time.time() if now is None else now
    bad: dict[tuple[str, str], str] = {}
    for node in nodes:
        beat = beats.get(node.mac)
        state = node_state(node, beat, limits, now)
        seen = seconds(node.last_seen) or now
        if state == "down":
            assert beat is not None
            bad[(node.mac, "node-down")] = (f"no heartbeat since {iso(beat.received)} "
                                            f"(limit {limits.heartbeat_timeout:.0f} s)")
        elif state == "failed":
            message = node.last_message or "no message"
            bad[(node.mac, "boot-failing")] = (f"boot failed ({failure_kind(message)}) in stage "
                                               f"{message.split(':', 1)[0] if ':' in message else node.last_stage}: "
                                               f"{message}")
        elif state == "stuck":
            bad[(node.mac, "boot-stuck")] = (f"fetched its iPXE script at {iso(seen)} and stage1 never reported "
                                             f"(limit {limits.stuck_after:.0f} s)")
        if state in ("up", "booted") and node.pinned_generation is None:
            running, latest = booted_generation(node, beat, limits, now), newest(node.profile)
            if running is not None and latest is not None and running < latest:
                bad[(node.mac, "stale-generation")] = (f"runs generation {running} of {node.profile}; the newest "
                                                       f"is {latest}")
        if state != "up" or beat is None:
            continue
        if beat.fell_back:
            bad[(node.mac, "ab-fallback")] = (f"booted A/B slot {beat.ab.get('booted') or '?'} after falling back "
                                              f"from {beat.ab.get('wanted') or 'the newer slot'}")
        if beat.failing_disks:
            bad[(node.mac, "bad-hardware")] = "disk health failing: " + ", ".join(
                f"{d.name}" + (f" ({d.detail})" if d.detail else "") for d in beat.failing_disks)
        if beat.failed_units:
            bad[(node.mac, "units-failed")] = "failed units: " + ", ".join(beat.failed_units[:10]) + (
                f" and {len(beat.failed_units) - 10} more" if len(beat.failed_units) > 10 else "")
    return bad
