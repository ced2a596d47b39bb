"""Every node query of the console and the API in one place: the node record, the nodes table, one node.

A :class:`NodeRecord` is the node as registered (server/nodes.py ``Node``) joined with its live status
(server/monitor/status.py ``NodeStatus``) and, for a named node, its fleet record (server/fleet ``FleetNode``: name,
cluster, groups, interfaces); :meth:`NodeRecord.to_dict` merges their own ``to_dict`` output, so a field added to
any of them appears in the API, ``layerboot nodes list --json`` and the console's node pages without touching
this module. One node (:func:`node_detail`) adds what a named node boots with (:func:`fleet_detail`).

The nodes table is sorted, filtered and paged here, on the server: a check of 2000 nodes is one query per table
(bench/bench_monitor.py measures it); a page sends only ``per_page`` rows to the browser.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.server.fleet.queries import Fleet
from layerboot.server.fleet.records import FleetNode, fleet_defaults
from layerboot.server.monitor.detectors import STATES, Limits
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.monitor.status import NodeStatus, fleet_status
from layerboot.server.nodes import Node

SORT_KEYS = ("mac", "name", "profile", "state", "heartbeat_age", "generation", "last_seen", "boots",
             "failures")
PER_PAGE = (25, 50, 100, 200, 500)
# worst first when sorting by state (what an admin scans a fleet for)
STATE_ORDER = {name: i for i, name in enumerate(("failed", "stuck", "down", "booting", "unknown", "booted", "up"))}


@dataclass(frozen=True)
class NodeRecord:
    node: Node
    status: NodeStatus
    named: FleetNode | None = None     # a named node's fleet record; None: registered by MAC only

    @property
    def mac(self) -> str:
        return self.node.mac

    def to_dict(self, *, heartbeat: bool = False) -> dict[str, Any]:
        """The node's fields (``name`` and ``cluster`` too, None and '' for a node known by MAC only), then its
        live status (``state``, ``heartbeat_age``, ``generation`` it runs, ``newest``, ``incidents``), then a
        named node's ``groups`` and ``interfaces``; the last heartbeat itself only with ``heartbeat``."""
        data = self.node.to_dict() | self.status.to_dict()
        if self.named is not None:
            data |= {"groups": list(self.named.groups), "interfaces": [i.to_dict() for i in self.named.interfaces]}
        if not heartbeat:
            data.pop("heartbeat", None)
        return data


def fleet_of(state: Any) -> Fleet:
    """The daemon's Fleet, or one on the registry's database (a CLI stand-in has none of its own)."""
    return getattr(state, "fleet", None) or Fleet(state.registry.db)


def node_records(state: Any, now: float | None = None) -> list[NodeRecord]:
    """Every node with its live status and fleet record (``state`` is the daemon's ServerState or a CLI
    stand-in with ``registry``, ``profiles``, ``config`` and ``paths``), in MAC order."""
    registry = state.registry
    nodes = {n.mac: n for n in registry.all()}
    named = {n.mac: n for n in fleet_of(state).nodes()}
    statuses = fleet_status(registry, MonitorRecords(registry.db), state.profiles, Limits.from_config(state.config),
                            now=now)
    return [NodeRecord(nodes[s.mac], s, named.get(s.mac)) for s in statuses if s.mac in nodes]


def node_record(state: Any, ref: str) -> NodeRecord:
    """One node's record, by its name or any of its MACs (NotFoundError: no such node)."""
    mac = fleet_of(state).resolve(ref)
    for record in node_records(state):
        if record.mac == mac:
            return record
    state.registry.get(mac)          # "no node ... is registered"
    raise AssertionError("unreachable")


def node_detail(state: Any, ref: str) -> dict[str, Any]:
    """One node as ``layerboot nodes show --json`` and ``GET /api/v1/nodes/NODE`` give it: its record with the
    last heartbeat, its SSH keys and its recent boot events (oldest first), and for a named node ``fleet``: what
    it boots with (:func:`fleet_detail`)."""
    record = node_record(state, ref)
    registry = state.registry
    data = record.to_dict(heartbeat=True) | {"ssh_keys": registry.ssh_keys(record.mac),
                                             "events": [e.to_dict() for e in registry.events(record.mac)]}
    if record.named is not None:
        data["fleet"] = fleet_detail(state, record.named)
    return data


def fleet_detail(state: Any, node: FleetNode) -> dict[str, Any]:
    """A named node's configuration as it boots (``sources``: where each value comes from: the node, a group,
    its cluster or the fleet settings), its per-node manifest and its SSH host keys."""
    from layerboot.server.fleet.hostkeys import host_keys
    fleet = fleet_of(state)
    data = fleet.effective(node, base=fleet_defaults(state.config)).to_dict()
    row = fleet.manifest_row(node.mac)
    data["manifest"] = None if row is None else {"profile": row.profile, "generation": row.generation,
                                                 "serial": row.serial, "layer": row.layer, "created": row.created}
    data["host_keys"] = [{"type": k.type, "fingerprint": k.fingerprint}
                         for k in host_keys(state.paths, node.machine_id, tuple(state.config.fleet_ssh_host_key_types))]
    return data


@dataclass(frozen=True)
class NodeQuery:
    """What the nodes table shows: a search text (part of the name, a MAC or the profile), a state, a profile,
    the sort column and direction, and the page."""

    q: str = ""
    state: str = ""
    profile: str = ""
    sort: str = "mac"
    descending: bool = False
    page: int = 1
    per_page: int = 50

    @classmethod
    def from_params(cls, params: Any) -> "NodeQuery":
        """From query-string parameters (``q``, ``state``, ``profile``, ``sort``, ``order``, ``page``,
        ``per_page``); a bad value is one clear 400 naming the parameter."""
        sort = params.get("sort", "mac") or "mac"
        if sort not in SORT_KEYS:
            raise LayerbootError(f"sort must be one of {', '.join(SORT_KEYS)}")
        order = params.get("order", "asc") or "asc"
        if order not in ("asc", "desc"):
            raise LayerbootError("order must be asc or desc")
        state = params.get("state", "") or ""
        if state and state not in STATES:
            raise LayerbootError(f"state must be one of {', '.join(STATES)}")
        page, per_page = _number(params, "page", 1, 1, 10**6), _number(params, "per_page", 50, 1, 1000)
        q = params.get("q", "") or ""
        if len(q) > 100:
            raise LayerbootError("q is at most 100 characters")
        return cls(q.strip().lower(), state, (params.get("profile", "") or "")[:64], sort, order == "desc",
                   page, per_page)

    def params(self, **changes: Any) -> dict[str, str]:
        """This query as URL parameters (with ``changes``), for links that keep the other choices."""
        values = {"q": self.q, "state": self.state, "profile": self.profile, "sort": self.sort,
                  "order": "desc" if self.descending else "asc", "page": str(self.page),
                  "per_page": str(self.per_page)} | {k: str(v) for k, v in changes.items()}
        return {k: v for k, v in values.items() if v not in ("", None)}


def _number(params: Any, name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text in (None, ""):
        return default
    if not str(text).isdigit() or not low <= int(text) <= high:
        raise LayerbootError(f"{name} must be a whole number from {low} to {high}")
    return int(text)


@dataclass(frozen=True)
class NodePage:
    query: NodeQuery
    rows: list[NodeRecord]
    total: int                         # matching the filter, over all pages
    counts: dict[str, int] = field(default_factory=dict)   # every node by state (unfiltered)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [r.to_dict() for r in self.rows], "total": self.total, "page": self.query.page,
                "per_page": self.query.per_page, "pages": self.pages, "counts": self.counts}


def _sort_value(record: NodeRecord, key: str) -> Any:
    status = record.status
    if key == "state":
        return STATE_ORDER.get(status.state, 99)
    return {"mac": record.mac, "name": record.node.name, "profile": record.node.profile,
            "heartbeat_age": status.heartbeat_age, "generation": status.generation,
            "last_seen": record.node.last_seen, "boots": record.node.boots, "failures": record.node.failures}[key]


def _found(record: NodeRecord, text: str) -> bool:
    """``text`` is part of the node's name, its profile's or one of its MACs (a named node's every NIC)."""
    macs = [i.mac for i in record.named.interfaces if i.mac] if record.named is not None else []
    return any(text in value for value in (record.node.name or "", record.node.profile.lower(), record.mac, *macs))


def query_nodes(records: list[NodeRecord], query: NodeQuery) -> NodePage:
    counts = dict.fromkeys(STATES, 0)
    for record in records:
        counts[record.status.state] = counts.get(record.status.state, 0) + 1
    chosen = [r for r in records
              if (not query.q or _found(r, query.q))
              and (not query.state or r.status.state == query.state)
              and (not query.profile or r.node.profile == query.profile)]
    valued = [r for r in chosen if _sort_value(r, query.sort) is not None]
    valued.sort(key=lambda r: (_sort_value(r, query.sort), r.mac), reverse=query.descending)
    # nodes without a value (never seen, no heartbeat) come last in either direction
    ordered = valued + sorted((r for r in chosen if _sort_value(r, query.sort) is None), key=lambda r: r.mac)
    start = (query.page - 1) * query.per_page
    return NodePage(query, ordered[start:start + query.per_page], len(ordered), counts)


def dashboard(state: Any, now: float | None = None) -> dict[str, Any]:
    """What the dashboard shows: nodes by state, open incidents, boots in the last hour."""
    from datetime import datetime, timezone

    now = time.time() if now is None else now
    records = node_records(state, now)
    counts = dict.fromkeys(STATES, 0)
    for record in records:
        counts[record.status.state] += 1
    since = datetime.fromtimestamp(now - 3600, timezone.utc).replace(microsecond=0).isoformat()
    db = state.registry.db
    boots = db.all("SELECT mac, time, stage, ok, generation, elapsed, message FROM events WHERE time >= ? "
                   "ORDER BY id DESC LIMIT 50", (since,))
    totals = db.one("SELECT count(*) AS events, sum(CASE WHEN ok = 0 THEN 1 ELSE 0 END) AS failed, "
                    "count(DISTINCT mac) AS nodes FROM events WHERE time >= ?", (since,))
    incidents = MonitorRecords(db).list()
    return {"nodes": len(records), "states": counts,
            "boots_last_hour": {"events": totals["events"] if totals else 0,
                                "failed": (totals["failed"] or 0) if totals else 0,
                                "nodes": totals["nodes"] if totals else 0,
                                "recent": [dict(r) | {"ok": bool(r["ok"])} for r in boots]},
            "incidents": [i.to_dict() for i in incidents]}
