"""Every query of the fleet's tables (migration 6), the same SQL on SQLite and PostgreSQL.

Nodes stay rows of ``nodes`` keyed by their MAC (server/nodes.py keeps credentials, boots and pins there); a
named node adds its name, cluster, config JSON and machine id, its interface MACs in ``node_macs`` and its groups
in ``node_groups``. ``nodes.profile`` always holds the node's *effective* profile (its own, else its groups' or
cluster's), so everything that reads it (boot scripts, object access, the monitor) needs to know nothing of
inheritance; saving a node or a group keeps it up to date in the same transaction.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.layer import utc_now
from layerboot.server.fleet.records import Defaults, Effective, FleetNode, Group, RecordError, effective
from layerboot.server.nodes import MAC_RE, normalize_mac

if TYPE_CHECKING:
    from layerboot.server.db import Database, Transaction

log = logging.getLogger("layerboot.fleet")

# Tables whose rows name a node by its MAC: moved with it when its first NIC's MAC changes.
MAC_TABLES = (("ssh_keys", "mac"), ("events", "mac"), ("node_secrets", "mac"), ("pinned_manifests", "mac"),
              ("heartbeats", "mac"), ("node_macs", "node"), ("node_groups", "node"), ("node_manifests", "mac"),
              ("uploads", "mac"), ("incidents", "mac"), ("conditions", "mac"))


@dataclass(frozen=True)
class ManifestRow:
    mac: str
    fingerprint: str
    files: dict[str, Any]
    layer: str
    previous_layer: str | None
    profile: str
    generation: int
    serial: int
    cmdline: str
    envelope: bytes
    created: str


def _node_from_row(row: Mapping[str, Any]) -> FleetNode:
    data = json.loads(row["config"] or "{}")
    data.update(name=row["name"], mac=row["mac"], cluster=row["cluster"], machine_id=row["machine_id"] or "",
                asset_key=row["asset_key"])
    return FleetNode.from_dict(data)


class Fleet:
    """Named nodes, groups and clusters, per-node manifest rows, discoveries and enrollment rules."""

    def __init__(self, db: "Database") -> None:
        self.db = db

    # -- groups and clusters ---------------------------------------------------------------------------------
    def groups(self, kind: str | None = None) -> dict[tuple[str, str], Group]:
        sql = "SELECT * FROM fleet_sets" + (" WHERE kind = ?" if kind else "") + " ORDER BY kind, name"
        rows = self.db.all(sql, (kind,) if kind else None)
        return {(r["kind"], r["name"]): Group.from_dict(json.loads(r["defaults"]) | {"description": r["description"]},
                                                         kind=r["kind"], name=r["name"]) for r in rows}

    def group(self, kind: str, name: str) -> Group:
        row = self.db.one("SELECT * FROM fleet_sets WHERE kind = ? AND name = ?", (kind, name))
        if row is None:
            raise NotFoundError(f"no {kind} named {name!r}", hint=f"see 'layerboot {kind}s list'")
        return Group.from_dict(json.loads(row["defaults"]) | {"description": row["description"]}, kind=kind,
                               name=name)

    def save_group(self, group: Group, *, create: bool, check_profile: Callable[[str], Any] | None = None) -> list[str]:
        """Create or update a group or cluster; members' effective profiles follow. Returns the member nodes
        whose profile changed."""
        with self.db.transaction() as tx:
            return self._save_group(tx, group, create, check_profile)

    def _save_group(self, tx: "Transaction", group: Group, create: bool | None,
                    check_profile: Callable[[str], Any] | None) -> list[str]:
        """``create``: True must be new, False must exist, None either."""
        if group.defaults.profile and check_profile:
            check_profile(group.defaults.profile)
        exists = tx.scalar("SELECT count(*) FROM fleet_sets WHERE kind = ? AND name = ?", (group.kind, group.name))
        if create and exists:
            raise LayerbootError(f"{group.kind} {group.name} exists already",
                                 hint=f"change it with 'layerboot {group.kind}s set {group.name}'")
        if create is False and not exists:
            raise NotFoundError(f"no {group.kind} named {group.name!r}", hint=f"layerboot {group.kind}s add")
        now = utc_now()
        defaults = json.dumps(group.defaults.to_dict(), sort_keys=True)
        if exists:
            tx.execute("UPDATE fleet_sets SET description = ?, defaults = ?, updated = ? WHERE kind = ? AND "
                       "name = ?", (group.description, defaults, now, group.kind, group.name))
        else:
            tx.execute("INSERT INTO fleet_sets (kind, name, description, defaults, created, updated) VALUES "
                       "(?, ?, ?, ?, ?, ?)", (group.kind, group.name, group.description, defaults, now, now))
        return self._refresh_profiles(tx, self._members(tx, group.kind, group.name), check_profile)

    def remove_group(self, kind: str, name: str) -> None:
        with self.db.transaction() as tx:
            members = self._members(tx, kind, name)
            if members:
                raise LayerbootError(f"{kind} {name} still has {len(members)} node(s)",
                                     hint=f"move them out first (layerboot nodes set ... --"
                                          f"{'remove-group' if kind == 'group' else 'cluster'} ...)")
            if not tx.execute("DELETE FROM fleet_sets WHERE kind = ? AND name = ?", (kind, name)):
                raise NotFoundError(f"no {kind} named {name!r}")

    def members(self, kind: str, name: str) -> list[str]:
        with self.db.transaction(write=False) as tx:
            return self._members(tx, kind, name)

    @staticmethod
    def _members(tx: "Transaction", kind: str, name: str) -> list[str]:
        if kind == "cluster":
            rows = tx.all("SELECT mac FROM nodes WHERE name IS NOT NULL AND cluster = ? ORDER BY name", (name,))
        else:
            rows = tx.all("SELECT n.mac FROM node_groups g JOIN nodes n ON n.mac = g.node WHERE g.name = ? "
                          "ORDER BY n.name", (name,))
        return [r["mac"] for r in rows]

    def _refresh_profiles(self, tx: "Transaction", macs: list[str],
                          check_profile: Callable[[str], Any] | None) -> list[str]:
        groups = self._groups_in(tx)
        changed = []
        for mac in macs:
            row = tx.one("SELECT * FROM nodes WHERE mac = ?", (mac,))
            eff = effective(_node_from_row(row), groups)
            if not eff.profile:
                raise LayerbootError(f"node {row['name']} would have no profile",
                                     hint="set one on the node, one of its groups or its cluster")
            if eff.profile != row["profile"]:
                if check_profile:
                    check_profile(eff.profile)
                self._set_profile(tx, mac, eff.profile)
                changed.append(row["name"])
        return changed

    @staticmethod
    def _groups_in(tx: "Transaction") -> dict[tuple[str, str], Group]:
        return {(r["kind"], r["name"]): Group.from_dict(json.loads(r["defaults"]), kind=r["kind"], name=r["name"])
                for r in tx.all("SELECT * FROM fleet_sets")}

    @staticmethod
    def _set_profile(tx: "Transaction", mac: str, profile: str) -> None:
        """As Registry.set_profile: a pin and the last good generation belong to the old profile."""
        tx.execute("UPDATE nodes SET profile = ?, pinned_generation = NULL, pin_reason = '', good_generation = NULL "
                   "WHERE mac = ?", (profile, mac))
        tx.execute("DELETE FROM pinned_manifests WHERE mac = ?", (mac,))

    # -- nodes: reading ----------------------------------------------------------------------------------------
    def key_of(self, mac: str) -> str | None:
        """The node a MAC belongs to (any of a named node's NICs, or a MAC-only node's own MAC), or None."""
        mac = normalize_mac(mac)
        row = self.db.one("SELECT node FROM node_macs WHERE mac = ?", (mac,))
        if row is not None:
            return row["node"]
        return mac if self.db.scalar("SELECT count(*) FROM nodes WHERE mac = ?", (mac,)) else None

    def resolve(self, ref: str) -> str:
        """A node's key MAC from its name or any of its MACs; NotFoundError otherwise."""
        text = ref.strip()
        if MAC_RE.fullmatch(text.lower()):
            key = self.key_of(text)
            if key is None:
                raise NotFoundError(f"no node {normalize_mac(text)} is registered", hint="see 'layerboot nodes list'")
            return key
        row = self.db.one("SELECT mac FROM nodes WHERE name = ?", (text.lower(),))
        if row is None:
            raise NotFoundError(f"no node named {text[:64]!r}", hint="see 'layerboot nodes list'")
        return row["mac"]

    def find(self, ref: str) -> FleetNode | None:
        """The named node ``ref`` (name or MAC); None for a node registered by MAC only, or none at all."""
        try:
            mac = self.resolve(ref)
        except NotFoundError:
            return None
        row = self.db.one("SELECT * FROM nodes WHERE mac = ? AND name IS NOT NULL", (mac,))
        return _node_from_row(row) if row else None

    def get(self, ref: str) -> FleetNode:
        node = self.find(ref)
        if node is None:
            mac = self.resolve(ref)      # NotFoundError for an unknown one
            raise LayerbootError(f"node {mac} has no name: it was registered by MAC only",
                                 hint=f"give it one: layerboot nodes set {mac} --name NAME")
        return node

    def nodes(self, *, names: Iterable[str] | None = None, group: str | None = None, cluster: str | None = None,
              profile: str | None = None) -> list[FleetNode]:
        """Named nodes, by name; filters combine."""
        sql = "SELECT * FROM nodes n WHERE n.name IS NOT NULL"
        params: list[Any] = []
        if cluster is not None:
            sql += " AND n.cluster = ?"
            params.append(cluster)
        if profile is not None:
            sql += " AND n.profile = ?"
            params.append(profile)
        if group is not None:
            sql += " AND EXISTS (SELECT 1 FROM node_groups g WHERE g.node = n.mac AND g.name = ?)"
            params.append(group)
        found = [_node_from_row(r) for r in self.db.all(sql + " ORDER BY n.name", tuple(params))]
        if names is not None:
            wanted = set(names)
            found = [n for n in found if n.name in wanted]
        return found

    def effective(self, node: FleetNode, groups: Mapping[tuple[str, str], Group] | None = None,
                  base: Defaults | None = None) -> Effective:
        return effective(node, self.groups() if groups is None else groups, base)

    def cluster_members(self, cluster: str) -> list[FleetNode]:
        return self.nodes(cluster=cluster) if cluster else []

    # -- nodes: writing ----------------------------------------------------------------------------------------
    def save(self, nodes: list[FleetNode], *, check_profile: Callable[[str], Any] | None = None,
             old_macs: Mapping[str, str] | None = None) -> list[FleetNode]:
        """Create or update named nodes, all in one transaction (all or nothing).

        A node is matched by its name, else by ``old_macs[name]`` (its key MAC before a rename), else it is new:
        a MAC-only node with its MAC is adopted (keeps its secrets and history). Names, MACs and static
        addresses must be unique across the fleet. Returns the saved records (with machine ids).
        """
        with self.db.transaction() as tx:
            return self._save_nodes(tx, nodes, old_macs or {}, check_profile)

    def _save_nodes(self, tx: "Transaction", nodes: list[FleetNode], old_macs: Mapping[str, str],
                    check_profile: Callable[[str], Any] | None) -> list[FleetNode]:
        groups = self._groups_in(tx)
        saved = [self._save_one(tx, node, groups, old_macs.get(node.name), check_profile) for node in nodes]
        self._check_unique_addresses(tx)
        return saved

    def import_all(self, groups: list[Group], nodes: list[FleetNode], *, dry_run: bool = False,
                   check_profile: Callable[[str], Any] | None = None) -> tuple[list[str], list[str]]:
        """Groups and clusters (created or updated), then nodes (created or updated, matched by name), in one
        transaction; with ``dry_run`` everything is checked and rolled back. Returns (added, updated) names."""
        class DryRun(Exception):
            pass

        added: list[str] = []
        updated: list[str] = []
        try:
            with self.db.transaction() as tx:
                for group in groups:
                    self._save_group(tx, group, None, check_profile)
                merged = []
                for node in nodes:
                    row = tx.one("SELECT * FROM nodes WHERE name = ?", (node.name,))
                    (updated if row is not None else added).append(node.name)
                    if row is not None and node.asset_key is None:       # not in the file: keep it
                        node = replace(node, asset_key=row["asset_key"])
                    merged.append(node)
                self._save_nodes(tx, merged, {}, check_profile)
                if dry_run:
                    raise DryRun()
        except DryRun:
            pass
        return added, updated

    def _save_one(self, tx: "Transaction", node: FleetNode, groups: Mapping[tuple[str, str], Group],
                  old_mac: str | None, check_profile: Callable[[str], Any] | None) -> FleetNode:
        eff = effective(node, groups)
        if not eff.profile:
            raise RecordError(f"node {node.name} has no profile",
                              hint="give it --profile, or put it in a group or cluster that has one")
        if check_profile:
            check_profile(eff.profile)
        from layerboot.server.fleet.netargs import network_args
        network_args(eff)                                  # stage1 would refuse it: refuse it now
        current = tx.one("SELECT * FROM nodes WHERE name = ?", (node.name,))
        if current is None and old_mac:
            current = tx.one("SELECT * FROM nodes WHERE mac = ?", (old_mac,))
        if current is None:
            current = tx.one("SELECT * FROM nodes WHERE mac = ?", (node.mac,))
            if current is not None and current["name"] is not None:
                raise LayerbootError(f"MAC {node.mac} belongs to node {current['name']}")
        for mac in node.macs:
            owner = tx.one("SELECT node FROM node_macs WHERE mac = ?", (mac,))
            if owner is None and mac != node.mac:
                owner = tx.one("SELECT mac AS node FROM nodes WHERE mac = ?", (mac,))
            if owner is not None and (current is None or owner["node"] != current["mac"]):
                other = tx.scalar("SELECT coalesce(name, mac) FROM nodes WHERE mac = ?", (owner["node"],))
                raise LayerbootError(f"node {node.name}: MAC {mac} belongs to node {other}")
        machine_id = node.machine_id or (current["machine_id"] if current is not None and current["machine_id"]
                                         else secrets.token_hex(16))
        node = replace(node, machine_id=machine_id)
        config = json.dumps(node.config_dict(), sort_keys=True)
        if current is None:
            tx.execute("INSERT INTO nodes (mac, profile, auto, created, asset_key, tokens_not_before, name, cluster, "
                       "config, machine_id) VALUES (?, ?, 0, ?, ?, 0, ?, ?, ?, ?)",
                       (node.mac, eff.profile, utc_now(), node.asset_key, node.name, node.cluster, config, machine_id))
        else:
            if current["mac"] != node.mac:
                self._move_mac(tx, current["mac"], node.mac)
            tx.execute("UPDATE nodes SET name = ?, cluster = ?, config = ?, machine_id = ?, asset_key = ?, auto = 0 "
                       "WHERE mac = ?", (node.name, node.cluster, config, machine_id, node.asset_key, node.mac))
            if current["profile"] != eff.profile:
                self._set_profile(tx, node.mac, eff.profile)
        tx.execute("DELETE FROM node_macs WHERE node = ?", (node.mac,))
        for mac in node.macs:
            tx.execute("INSERT INTO node_macs (mac, node) VALUES (?, ?)", (mac, node.mac))
        tx.execute("DELETE FROM node_groups WHERE node = ?", (node.mac,))
        for position, group in enumerate(node.groups):
            tx.execute("INSERT INTO node_groups (node, name, position) VALUES (?, ?, ?)", (node.mac, group, position))
        return node

    @staticmethod
    def _move_mac(tx: "Transaction", old: str, new: str) -> None:
        """A node's first NIC has a new MAC: its row and every row naming it move to the new key. Boot tokens
        minted for the old MAC stop working (they name a node that is gone)."""
        if tx.scalar("SELECT count(*) FROM nodes WHERE mac = ?", (new,)):
            other = tx.scalar("SELECT coalesce(name, mac) FROM nodes WHERE mac = ?", (new,))
            raise LayerbootError(f"MAC {new} belongs to node {other}")
        row = dict(tx.one("SELECT * FROM nodes WHERE mac = ?", (old,)))
        tx.execute("UPDATE nodes SET name = NULL WHERE mac = ?", (old,))
        row["mac"] = new
        columns = ", ".join(row)
        tx.execute(f"INSERT INTO nodes ({columns}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))
        for table, column in MAC_TABLES:
            tx.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (new, old))
        tx.execute("DELETE FROM nodes WHERE mac = ?", (old,))
        log.info("node %s: key MAC %s -> %s", row["name"], old, new)

    @staticmethod
    def _check_unique_addresses(tx: "Transaction") -> None:
        """No static address on two nodes (checked after the writes, over every row)."""
        owners: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
        for row in tx.all("SELECT name, config FROM nodes WHERE name IS NOT NULL"):
            for iface in json.loads(row["config"]).get("interfaces", []):
                for key in ("ipv4", "ipv6"):
                    value = iface.get(key, "")
                    if "/" in value:
                        address = ipaddress.ip_interface(value).ip
                        if address in owners and owners[address] != row["name"]:
                            raise LayerbootError(f"nodes {owners[address]} and {row['name']} would both have the "
                                                 f"address {address}")
                        owners[address] = row["name"]

    def remove(self, mac: str) -> None:
        self.db.execute("DELETE FROM nodes WHERE mac = ?", (mac,))

    # -- per-node manifests ------------------------------------------------------------------------------------
    def manifest_row(self, mac: str) -> ManifestRow | None:
        row = self.db.one("SELECT * FROM node_manifests WHERE mac = ?", (mac,))
        if row is None:
            return None
        return ManifestRow(mac=row["mac"], fingerprint=row["fingerprint"], files=json.loads(row["files"]),
                           layer=row["layer"], previous_layer=row["previous_layer"], profile=row["profile"],
                           generation=row["generation"], serial=row["serial"], cmdline=row["cmdline"],
                           envelope=row["envelope"].encode("utf-8"), created=row["created"])

    def save_manifest_row(self, row: ManifestRow) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM node_manifests WHERE mac = ?", (row.mac,))
            tx.execute("INSERT INTO node_manifests (mac, fingerprint, files, layer, previous_layer, profile, "
                       "generation, serial, cmdline, envelope, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.mac, row.fingerprint, json.dumps(row.files, sort_keys=True), row.layer,
                        row.previous_layer, row.profile, row.generation, row.serial, row.cmdline,
                        row.envelope.decode("utf-8"), row.created))

    def layer_owner(self, digest: str) -> str | None:
        """The node whose per-node layer (current or previous) ``digest`` is, or None."""
        row = self.db.one("SELECT mac FROM node_manifests WHERE layer = ? OR previous_layer = ?", (digest, digest))
        return row["mac"] if row else None

    def layer_in_use(self, digest: str) -> bool:
        return self.layer_owner(digest) is not None

    # -- discoveries -------------------------------------------------------------------------------------------
    def discovery(self, mac: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT * FROM discoveries WHERE mac = ?", (normalize_mac(mac),))
        return _discovery(row) if row else None

    def discoveries(self, state: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM discoveries" + (" WHERE state = ?" if state else "") + " ORDER BY first_seen, mac"
        return [_discovery(r) for r in self.db.all(sql, (state,) if state else None)]

    def record_discovery(self, mac: str, facts: dict[str, Any], request: dict[str, Any], remote: str, *,
                         max_pending: int, keep: float, now: float | None = None) -> dict[str, Any]:
        """A discovery report: a new pending record, or the same machine reporting again (a report whose DMI
        identity differs from the first is a *conflict*, which only an admin's --force accepts)."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM discoveries WHERE state <> 'accepted' AND last_seen < ?", (now - keep,))
            row = tx.one("SELECT * FROM discoveries WHERE mac = ?" + tx.for_update(), (mac,))
            if row is None:
                count = tx.scalar("SELECT count(*) FROM discoveries WHERE state = 'pending'")
                if count >= max_pending:
                    raise DiscoveryFull(f"{count} machines are pending already (fleet.max_pending)")
                tx.execute("INSERT INTO discoveries (mac, state, facts, remote, first_seen, last_seen, reports, "
                           "request) VALUES (?, 'pending', ?, ?, ?, ?, 1, ?)",
                           (mac, json.dumps(facts, sort_keys=True), remote, now, now, json.dumps(request)))
            else:
                first = json.loads(row["facts"]).get("dmi", {})
                conflict = row["conflict"]
                if row["state"] == "pending" and not conflict and any(
                        first.get(k, "") != facts.get("dmi", {}).get(k, "") for k in ("uuid", "serial")):
                    conflict = (f"report {row['reports'] + 1} from {remote} gives DMI {facts['dmi'].get('uuid')}/"
                                f"{facts['dmi'].get('serial')}, the first gave {first.get('uuid')}/"
                                f"{first.get('serial')}")
                    log.warning("discovery %s: conflicting reports: %s", mac, conflict)
                tx.execute("UPDATE discoveries SET last_seen = ?, reports = reports + 1, remote = ?, conflict = ?, "
                           "request = CASE WHEN ? <> '{}' THEN ? ELSE request END WHERE mac = ?",
                           (now, remote, conflict, json.dumps(request), json.dumps(request), mac))
            return _discovery(tx.one("SELECT * FROM discoveries WHERE mac = ?", (mac,)))

    def set_discovery_state(self, mac: str, state: str, *, node: str = "", message: str = "") -> None:
        if not self.db.execute("UPDATE discoveries SET state = ?, node = ?, message = ? WHERE mac = ?",
                               (state, node, message, normalize_mac(mac))):
            raise NotFoundError(f"no machine {normalize_mac(mac)} is pending", hint="see 'layerboot nodes pending'")

    def drop_discovery(self, mac: str) -> None:
        self.db.execute("DELETE FROM discoveries WHERE mac = ?", (normalize_mac(mac),))

    # -- enrollment rules ------------------------------------------------------------------------------------
    def rules(self) -> list[tuple[int, dict[str, Any]]]:
        return [(r["id"], json.loads(r["rule"])) for r in self.db.all("SELECT * FROM enroll_rules ORDER BY id")]

    def add_rule(self, rule: dict[str, Any]) -> int:
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO enroll_rules (rule, created) VALUES (?, ?)", (json.dumps(rule, sort_keys=True),
                                                                                 utc_now()))
            return int(tx.scalar("SELECT max(id) FROM enroll_rules"))

    def remove_rule(self, rule_id: int) -> None:
        if not self.db.execute("DELETE FROM enroll_rules WHERE id = ?", (rule_id,)):
            raise NotFoundError(f"no enrollment rule {rule_id}", hint="see 'layerboot nodes rules list'")


class DiscoveryFull(LayerbootError):
    http_status = 503


def _discovery(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"mac": row["mac"], "state": row["state"], "facts": json.loads(row["facts"]), "remote": row["remote"],
            "first_seen": row["first_seen"], "last_seen": row["last_seen"], "reports": row["reports"],
            "conflict": row["conflict"], "request": json.loads(row["request"]), "node": row["node"],
            "message": row["message"]}
