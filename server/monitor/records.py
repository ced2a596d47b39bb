"""The monitor's tables (heartbeats, conditions, incidents, incident_log): every query on them lives here.

:meth:`MonitorRecords.reconcile` is the incident model in one transaction: given the conditions that are bad
right now, it opens an incident once a condition has held for its type's ``after`` (at most one open per node
and type, a partial unique index guarantees it), and closes one whose condition has been gone for its
``clear_after`` (flap damping both ways). An incident that opens again within ``flap_window`` of the last one
closing goes on up the ladder where the last one stopped instead of starting again at the bottom.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.layer import utc_now
from layerboot.server.monitor.model import Heartbeat, Incident, LogEntry, STATES

if TYPE_CHECKING:
    from layerboot.server.db import Database, Transaction
    from layerboot.server.monitor.config import IncidentTypes, Step
    from layerboot.server.nodes import Node

LOG_KEPT = 500                      # history lines kept per incident


@dataclass
class Changes:
    """What one reconcile did, for the notifications that follow it."""

    opened: list[Incident] = field(default_factory=list)
    closed: list[Incident] = field(default_factory=list)


class MonitorRecords:
    def __init__(self, db: "Database") -> None:
        self.db = db

    # -- heartbeats ----------------------------------------------------------------------------------------
    def record_heartbeat(self, node: "Node", beat: Heartbeat) -> None:
        """Keep the node's latest heartbeat; its generation becomes the node's last good one (same profile)."""
        load = beat.load or (None, None, None)
        values = (node.mac, beat.received, beat.uptime, *load, beat.mem_total, beat.mem_available, beat.profile,
                  beat.generation, beat.serial, json.dumps(list(beat.failed_units)),
                  json.dumps([d.__dict__ for d in beat.disks]), json.dumps(beat.ab, sort_keys=True), beat.agent)
        good = beat.generation if beat.profile == node.profile else None
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM heartbeats WHERE mac = ?", (node.mac,))
            tx.execute("INSERT INTO heartbeats (mac, received, uptime, load1, load5, load15, mem_total, "
                       "mem_available, profile, generation, serial, failed_units, disks, ab, agent) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            tx.execute("UPDATE nodes SET last_seen = ?, good_generation = COALESCE(?, good_generation) "
                       "WHERE mac = ?", (utc_now(), good, node.mac))

    def heartbeat(self, mac: str) -> Heartbeat | None:
        row = self.db.one("SELECT * FROM heartbeats WHERE mac = ?", (mac,))
        return Heartbeat.from_row(row) if row else None

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {r["mac"]: Heartbeat.from_row(r) for r in self.db.all("SELECT * FROM heartbeats")}

    # -- the incident model --------------------------------------------------------------------------------
    def reconcile(self, bad: dict[tuple[str, str], str], types: "IncidentTypes", known: set[str],
                  now: float | None = None) -> Changes:
        """Open and close incidents from the conditions that are bad now ({(mac, type): what is wrong})."""
        now = time.time() if now is None else now
        changes = Changes()
        with self.db.transaction() as tx:
            conditions = {(r["mac"], r["type"]): r for r in tx.all("SELECT * FROM conditions")}
            current = {(i.mac, i.type): i for i in map(Incident.from_row, tx.all(
                "SELECT * FROM incidents WHERE state <> 'closed'"))}
            for key, detail in bad.items():
                itype = types[key[1]]
                if not itype.enabled:
                    continue
                since = conditions[key]["since"] if key in conditions else now
                if key not in conditions:
                    tx.execute("INSERT INTO conditions (mac, type, since, detail) VALUES (?, ?, ?, ?)",
                               (*key, now, detail))
                elif conditions[key]["detail"] != detail:
                    tx.execute("UPDATE conditions SET detail = ? WHERE mac = ? AND type = ?", (detail, *key))
                incident = current.get(key)
                if incident is not None:
                    if incident.clear_since is not None or incident.summary != detail:
                        tx.execute("UPDATE incidents SET clear_since = NULL, summary = ?, updated = ? WHERE id = ?",
                                   (detail, now, incident.id))
                        if incident.clear_since is not None:
                            self._log(tx, incident.id, now, "note", message=f"condition back: {detail}")
                elif now - since >= itype.after:
                    changes.opened.append(self._open(tx, key, detail, len(itype.ladder), itype.flap_window, now))
            for key in conditions.keys() - bad.keys():
                tx.execute("DELETE FROM conditions WHERE mac = ? AND type = ?", key)
            for key, incident in current.items():
                if key in bad and types[key[1]].enabled:
                    continue
                if key[0] not in known:
                    changes.closed.append(self._close(tx, incident, "node removed", now))
                elif incident.clear_since is None and types[key[1]].clear_after > 0:
                    tx.execute("UPDATE incidents SET clear_since = ?, updated = ? WHERE id = ?",
                               (now, now, incident.id))
                    self._log(tx, incident.id, now, "note", message="condition gone; closes if it stays gone")
                elif now - (incident.clear_since or now) >= types[key[1]].clear_after:
                    changes.closed.append(self._close(tx, incident, "cleared", now))
        return changes

    def _open(self, tx: "Transaction", key: tuple[str, str], detail: str, rungs: int, flap_window: float,
              now: float) -> Incident:
        last = tx.one("SELECT * FROM incidents WHERE mac = ? AND type = ? AND state = 'closed' "
                      "ORDER BY id DESC LIMIT 1", key)
        step, reopened, note = 0, 0, ""
        if last is not None and last["closed_by"] == "cleared" and now - last["closed"] <= flap_window:
            # the fix did not hold: go on where the last incident's ladder stopped (escalation)
            step = max(0, min(last["step"], rungs - 1))
            reopened = last["reopened"] + 1
            note = f" (again within the flap window: ladder resumes at step {step + 1})"
        tx.execute("INSERT INTO incidents (mac, type, state, summary, opened, updated, step, tries, next_at, "
                   "reopened) VALUES (?, ?, 'open', ?, ?, ?, ?, 0, ?, ?)",
                   (*key, detail, now, now, step, now if step < rungs else None, reopened))
        row = tx.one("SELECT * FROM incidents WHERE mac = ? AND type = ? AND state = 'open'", key)
        assert row is not None
        self._log(tx, row["id"], now, "opened", message=detail + note)
        return Incident.from_row(row)

    def _close(self, tx: "Transaction", incident: Incident, by: str, now: float) -> Incident:
        tx.execute("UPDATE incidents SET state = 'closed', closed = ?, closed_by = ?, updated = ?, next_at = NULL "
                   "WHERE id = ?", (now, by, now, incident.id))
        self._log(tx, incident.id, now, "closed", message={"cleared": "the condition cleared",
                                                           "admin": "closed by an admin"}.get(by, by))
        row = tx.one("SELECT * FROM incidents WHERE id = ?", (incident.id,))
        return Incident.from_row(row)  # type: ignore[arg-type]

    @staticmethod
    def _log(tx: "Transaction", incident: int, now: float, kind: str, *, action: str = "", result: str = "",
             message: str = "") -> None:
        tx.execute("INSERT INTO incident_log (incident, time, kind, action, result, message) VALUES (?, ?, ?, ?, ?, ?)",
                   (incident, now, kind, action, result, message[:2000]))

    # -- the ladder ----------------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[Incident]:
        """Open incidents whose next ladder step is due."""
        rows = self.db.all("SELECT * FROM incidents WHERE state = 'open' AND next_at IS NOT NULL AND next_at <= ? "
                           "ORDER BY next_at, id", (time.time() if now is None else now,))
        return [Incident.from_row(r) for r in rows]

    def step_done(self, incident: Incident, step: "Step", rungs: int, *, action: str, result: str, message: str,
                  flag: bool = False, now: float | None = None) -> Incident:
        """Record one try of the current step and schedule what comes next (another try, the next step, or
        nothing once the ladder is done). An incident closed or paused meanwhile keeps its state."""
        now = time.time() if now is None else now
        if incident.tries + 1 < step.tries:
            fields = (incident.step, incident.tries + 1, now + step.wait * step.backoff ** incident.tries)
        else:
            following = incident.step + 1
            fields = (following, 0, now + step.wait if following < rungs else None)
        with self.db.transaction() as tx:
            tx.execute("UPDATE incidents SET step = ?, tries = ?, next_at = ?, updated = ?, flagged = flagged + ? "
                       "WHERE id = ? AND state <> 'closed'", (*fields, now, int(flag), incident.id))
            self._log(tx, incident.id, now, "step", action=action, result=result, message=message)
        return self.get(incident.id)

    def note(self, incident_id: int, kind: str, message: str, *, action: str = "", result: str = "") -> None:
        with self.db.transaction() as tx:
            self._log(tx, incident_id, time.time(), kind, action=action, result=result, message=message)
            tx.execute("DELETE FROM incident_log WHERE incident = ? AND id NOT IN (SELECT id FROM incident_log "
                       "WHERE incident = ? ORDER BY id DESC LIMIT ?)", (incident_id, incident_id, LOG_KEPT))

    # -- reading -------------------------------------------------------------------------------------------
    def get(self, incident_id: int) -> Incident:
        row = self.db.one("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if row is None:
            raise NotFoundError(f"no incident {incident_id}", hint="see 'layerboot incidents list --all'")
        return Incident.from_row(row)

    def list(self, *, states: tuple[str, ...] = ("open", "paused"), mac: str | None = None,
             type: str | None = None, limit: int = 1000) -> list[Incident]:
        sql = "SELECT * FROM incidents WHERE state IN (" + ", ".join("?" for _ in states) + ")"
        params: list[Any] = list(states)
        if mac:
            sql += " AND mac = ?"
            params.append(mac)
        if type:
            sql += " AND type = ?"
            params.append(type)
        sql += " ORDER BY id DESC LIMIT ?"
        return [Incident.from_row(r) for r in self.db.all(sql, (*params, limit))]

    def history(self, incident_id: int) -> list[LogEntry]:
        return [LogEntry.from_row(r) for r in self.db.all(
            "SELECT * FROM incident_log WHERE incident = ? ORDER BY id", (incident_id,))]

    def open_counts(self) -> dict[str, int]:
        return {r["type"]: r["n"] for r in self.db.all(
            "SELECT type, count(*) AS n FROM incidents WHERE state <> 'closed' GROUP BY type")}

    def opened_counts(self) -> dict[str, int]:
        return {r["type"]: r["n"] for r in self.db.all("SELECT type, count(*) AS n FROM incidents GROUP BY type")}

    def step_counts(self) -> list[dict[str, Any]]:
        """Ladder steps taken, by incident type, action and result (for /metrics)."""
        return [dict(r) for r in self.db.all(
            "SELECT incidents.type AS type, incident_log.action AS action, incident_log.result AS result, "
            "count(*) AS n FROM incident_log JOIN incidents ON incidents.id = incident_log.incident "
            "WHERE incident_log.kind = 'step' GROUP BY incidents.type, incident_log.action, incident_log.result")]

    # -- admin actions -------------------------------------------------------------------------------------
    def set_state(self, incident_id: int, state: str, *, by: str = "admin") -> Incident:
        """pause / resume / close from the CLI; the monitor picks the new state up on its next check."""
        if state not in STATES:
            raise LayerbootError(f"unknown incident state {state!r}")
        incident = self.get(incident_id)
        if incident.state == "closed":
            raise LayerbootError(f"incident {incident_id} is closed already")
        if incident.state == state:
            raise LayerbootError(f"incident {incident_id} is {state} already")
        now = time.time()
        with self.db.transaction() as tx:
            if state == "closed":
                self._close(tx, incident, by, now)
                # the condition must hold for the type's 'after' again before a new incident opens
                tx.execute("DELETE FROM conditions WHERE mac = ? AND type = ?", (incident.mac, incident.type))
            else:
                tx.execute("UPDATE incidents SET state = ?, updated = ? WHERE id = ?", (state, now, incident_id))
                self._log(tx, incident_id, now, "paused" if state == "paused" else "resumed",
                          message=f"{'paused' if state == 'paused' else 'resumed'} by {by}")
        return self.get(incident_id)
