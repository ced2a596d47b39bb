"""One rung of an action ladder, carried out: power actions, pinning the last good generation, messages, flags.

A rung that fails (no power control configured, a BMC that does not answer, a mail server that refuses) is
recorded as failed in the incident's history and the ladder moves on: the next rung is the escalation, and a
broken power controller must not stop the notify and flag rungs from being reached.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from layerboot.errors import LayerbootError
from layerboot.server.monitor.config import POWER_ACTIONS, IncidentType, Step
from layerboot.server.monitor.model import Incident, iso
from layerboot.server.monitor.notify import Message, summarize
from layerboot.server.monitor.pins import check_pin
from layerboot.server.monitor.power import power

if TYPE_CHECKING:
    from layerboot.server.monitor.engine import Monitor

log = logging.getLogger("layerboot.monitor")


def describe(incident: Incident, itype: IncidentType, history: list | None = None) -> str:
    """The text of a message about an incident: what, where, since when, the ladder, the history."""
    lines = [f"incident #{incident.id}: {incident.type} on node {incident.mac} ({incident.state})",
             f"what: {incident.summary}", f"opened: {iso(incident.opened)}"]
    if incident.closed is not None:
        lines.append(f"closed: {iso(incident.closed)} ({incident.closed_by})")
    lines.append("ladder:")
    for index, step in enumerate(itype.ladder):
        marker = "->" if index == incident.step and incident.state != "closed" else "  "
        lines.append(f"  {marker} {index + 1}. {step.describe()}")
    if history:
        lines.append("history:")
        lines += [f"  {iso(h.time)} {h.kind}{' ' + h.action if h.action else ''}"
                  f"{' [' + h.result + ']' if h.result else ''}{': ' + h.message if h.message else ''}"
                  for h in history]
    lines.append(f"see: layerboot incidents show {incident.id}")
    return "\n".join(lines) + "\n"


async def run_step(monitor: "Monitor", incident: Incident) -> Incident:
    """Carry out the incident's current rung and schedule the next; returns the incident as stored after."""
    itype = monitor.types[incident.type]
    if incident.step >= len(itype.ladder):       # the ladder got shorter since (config change): it is done
        return await asyncio.to_thread(monitor.records.step_done, incident, Step("wait"), 0, action="wait",
                                       result="skipped", message="the ladder has no more steps")
    step = itype.ladder[incident.step]
    result, flag = "ok", False
    try:
        if step.action in POWER_ACTIONS:
            message = await _power_step(monitor, incident, step)
        elif step.action == "pin-last-good":
            message = await asyncio.to_thread(pin_last_good, monitor, incident)
        elif step.action in ("notify", "flag"):
            flag = step.action == "flag"
            message = await _message_step(monitor, incident, itype, step)
        else:
            message = "waited"
    except LayerbootError as err:
        result, message = "failed", err.message
    if result == "failed":
        log.warning("incident #%d (%s on %s): step %d %s failed: %s", incident.id, incident.type, incident.mac,
                    incident.step + 1, step.action, message)
    else:
        log.info("incident #%d (%s on %s): step %d %s: %s", incident.id, incident.type, incident.mac,
                 incident.step + 1, step.action, message)
    return await asyncio.to_thread(monitor.records.step_done, incident, step, len(itype.ladder),
                                   action=step.action, result=result, message=message, flag=flag)


def pin_last_good(monitor: "Monitor", incident: Incident) -> str:
    """Pin the node to the generation it last ran well on; raises when there is none to pin."""
    registry, profiles = monitor.state.registry, monitor.state.profiles
    node = registry.get(incident.mac)
    good = node.good_generation
    if good is None:
        raise LayerbootError(f"node {node.mac} has no known-good generation (no heartbeat ever reported one)")
    if node.pinned_generation == good:
        return f"already pinned to generation {good}"
    if node.pinned_generation is None and profiles.current(node.profile).number == good:
        return f"its last good generation {good} is the newest already"
    check_pin(profiles, node, good)
    registry.pin(node.mac, good, reason=f"incident #{incident.id} ({incident.type})")
    return f"pinned to its last good generation {good} of {node.profile}"


async def _power_step(monitor: "Monitor", incident: Incident, step: Step) -> str:
    notes = []
    if step.boot == "last-good":
        try:
            notes.append(await asyncio.to_thread(pin_last_good, monitor, incident))
        except LayerbootError as err:          # power-cycle all the same: it is still the fix for a hung node
            notes.append(f"not pinned: {err.message}")
    action = step.action.removeprefix("power-")
    target = monitor.targets.get(incident.mac)
    try:
        state = await power(target, action, timeout=monitor.power_timeout)
    except LayerbootError:
        monitor.count_power(target.driver, action, "failed")
        raise
    monitor.count_power(target.driver, action, "ok")
    notes.append(f"power {action} through {target.driver}: now {state}")
    return "; ".join(notes)


async def _message_step(monitor: "Monitor", incident: Incident, itype: IncidentType, step: Step) -> str:
    history = await asyncio.to_thread(monitor.records.history, incident.id)
    headline = step.message or ("needs an admin" if step.action == "flag" else "still open")
    message = Message(subject=f"[layerboot] {incident.type} on {incident.mac}: {headline}",
                      body=describe(incident, itype, history), event=step.action, incident=incident.to_dict(),
                      line=f"incident #{incident.id} ({incident.type} on {incident.mac}): {headline}")
    outcomes = await monitor.notifier.send(step.channels or itype.notify, message)
    failed = [o for o in outcomes if not o.ok]
    text = summarize(outcomes)
    if failed and len(failed) == len(outcomes):
        raise LayerbootError(text)
    return ("flagged for an admin; " if step.action == "flag" else "") + text
