"""The changes an admin makes from the console or the API, done once for both.

Each function takes the daemon's ServerState and ``who`` (the admin account, or "admin token"), does one
change with the same code the CLI uses (profiles, upload records, incident records, power drivers), writes one
audit line to the log (``console: alice approved upload ...``), and returns the changed record. Blocking work
(database, store, signing) is for a worker thread: the handlers call these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.safetext import printable
from layerboot.server.nodes import normalize_mac

log = logging.getLogger("layerboot.server.console")

INCIDENT_ACTIONS = {"pause": "paused", "resume": "open", "close": "closed"}
POWER_ACTIONS = ("on", "off", "cycle", "status")


def _records(state: Any) -> Any:
    from layerboot.server.uploads import UploadRecords
    return UploadRecords(state.registry.db, state.paths, default_policy=state.config.server_upload_policy)


def approve_upload(state: Any, upload_id: str, who: str) -> Any:
    upload = _records(state).approve(upload_id, state.profiles)
    log.info("console: %s approved upload %s: layer %s is generation %s of %s", who, upload.id,
             (upload.layer or "-")[:12], upload.generation, upload.profile)
    return upload


def reject_upload(state: Any, upload_id: str, who: str) -> Any:
    upload = _records(state).reject(upload_id, state.profiles)
    log.info("console: %s rejected upload %s (%s)", who, upload.id, upload.message)
    return upload


def rollback(state: Any, profile: str, generation: Any, who: str) -> Any:
    number = _generation_number(generation)
    gen = state.profiles.rollback(profile, number)
    log.info("console: %s rolled %s back to generation %d: generation %d, serial %d", who, profile, number,
             gen.number, gen.serial)
    return gen


def cherry_pick(state: Any, profile: str, source: str, layer: str, who: str) -> Any:
    if not isinstance(source, str) or not isinstance(layer, str) or not source or not layer:
        raise LayerbootError("a cherry-pick needs the source profile and the layer (digest or prefix)")
    gen = state.profiles.cherry_pick(profile, source, layer)
    log.info("console: %s cherry-picked %s from %s onto %s: generation %d", who, printable(layer[:64]), source,
             profile, gen.number)
    return gen


def incident(state: Any, incident_id: Any, action: str, who: str) -> Any:
    from layerboot.server.monitor.records import MonitorRecords

    if action not in INCIDENT_ACTIONS:
        raise LayerbootError(f"an incident action is one of {', '.join(INCIDENT_ACTIONS)}")
    if isinstance(incident_id, bool) or not str(incident_id).isdigit():
        raise LayerbootError(f"{printable(str(incident_id)[:20])!r} is not an incident number")
    changed = MonitorRecords(state.registry.db).set_state(int(incident_id), INCIDENT_ACTIONS[action], by=who)
    log.info("console: %s: incident #%d (%s on %s) is %s", who, changed.id, changed.type, changed.mac,
             changed.state)
    return changed


async def power(state: Any, mac: str, action: str, who: str) -> dict[str, Any]:
    """Power ``action`` through the node's BMC (the power file); the record ``layerboot power --json`` prints
    for one node."""
    from layerboot.server.monitor.power import Targets, power as drive, power_file

    mac = normalize_mac(mac)
    if action not in POWER_ACTIONS:
        raise LayerbootError(f"a power action is one of {', '.join(POWER_ACTIONS)}")
    state.registry.get(mac)
    targets = state.monitor.targets if state.monitor is not None else Targets(power_file(state.config, state.paths))
    target = targets.get(mac)
    result = await drive(target, action, timeout=float(state.config.monitor_power_timeout))
    if action != "status":
        log.info("console: %s: power %s %s via %s: %s", who, action, mac, target.describe(), result)
    return {"mac": mac, "driver": target.driver, "state": result, "error": None}


def start_import(state: Any, kind: str, params: Any, who: str) -> Any:
    job = state.jobs.start(kind, params, who)
    log.info("console: %s started base import %s (%s)", who, job.id, kind)
    return job


def _generation_number(value: Any) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or not 1 <= int(value) <= 10**9:
        raise LayerbootError(f"{printable(str(value)[:20])!r} is not a generation number")
    return int(value)
