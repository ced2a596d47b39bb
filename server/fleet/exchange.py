"""Nodes, groups and clusters as files: TOML (everything) and CSV (nodes, one row per interface).

TOML::

    [clusters.c1]
    domain = "c1.example"
    [groups.compute]
    profile = "hpc"
    kernel_args = "mitigations=off"
    [nodes.n001]
    cluster = "c1"
    groups = ["compute"]
    asset_key = "4c4c4544-...:7XK2L3"
    [[nodes.n001.interfaces]]
    device = "eth0"
    mac = "52:54:00:00:01:01"
    ipv4 = "10.0.0.1/24"
    gateway = "10.0.0.254"

Every field of the records (server/fleet/records.py) may appear; unknown ones are errors naming the table.
CSV: a header row, then one row per interface; a node's further interfaces are rows with the same name whose
node columns are empty (or the same); a first interface without a device is ``eth0``. Columns: ``name``, the interface's (``device``, ``mac``, ``ipv4``,
``gateway``, ``ipv6``, ``gateway6``, ``mtu``, ``vlan``, ``bond``, ``bond_options``), the node's (``profile``,
``cluster``, ``groups``, ``kernel_args``, ``domain``, ``dns``, ``ntp``, ``syslog``, ``asset_key``; lists space
separated, an empty cell is unset) and ``var:KEY`` for each template variable.
"""

from __future__ import annotations

import csv
import io
import tomllib
from collections.abc import Callable
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.server.fleet.queries import Fleet
from layerboot.server.fleet.records import FleetNode, Group, Interface, RecordError

IFACE_COLUMNS = ("device", "mac", "ipv4", "gateway", "ipv6", "gateway6", "mtu", "vlan", "bond", "bond_options")
NODE_COLUMNS = ("profile", "cluster", "groups", "kernel_args", "domain", "dns", "ntp", "syslog", "asset_key")
LISTS = ("groups", "dns", "ntp", "syslog")
MAX_ROWS = 200_000


def parse_file(text: str, fmt: str, source: str) -> dict[str, Any]:
    """{"clusters": {...}, "groups": {...}, "nodes": {name: table}} from TOML or CSV text."""
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError) as err:
            raise LayerbootError(f"{source}: not valid TOML: {str(err).split(';')[0]}") from None
        unknown = sorted(set(data) - {"clusters", "groups", "nodes"})
        if unknown:
            raise LayerbootError(f"{source}: unknown table [{unknown[0]}]", hint="use [clusters.X], [groups.X], "
                                 "[nodes.X]")
        for key in ("clusters", "groups", "nodes"):
            if not isinstance(data.get(key, {}), dict):
                raise LayerbootError(f"{source}: {key} must be tables ([{key}.NAME])")
        return {k: data.get(k, {}) for k in ("clusters", "groups", "nodes")}
    return {"clusters": {}, "groups": {}, "nodes": _parse_csv(text, source)}


def _parse_csv(text: str, source: str) -> dict[str, dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    known = {"name", *IFACE_COLUMNS, *NODE_COLUMNS}
    bad = [c for c in columns if c not in known and not c.startswith("var:")]
    if "name" not in columns or bad:
        raise LayerbootError(f"{source}: " + (f"unknown column {bad[0]!r}" if bad else "no 'name' column"),
                             hint="columns: name, " + ", ".join(IFACE_COLUMNS + NODE_COLUMNS) + ", var:KEY")
    nodes: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(reader, start=2):
        if number > MAX_ROWS:
            raise LayerbootError(f"{source}: more than {MAX_ROWS} rows")
        where = f"{source}, line {number}"
        if None in row:
            raise LayerbootError(f"{where}: more cells than columns")
        name = (row.get("name") or "").strip()
        if not name:
            raise LayerbootError(f"{where}: no name")
        node = nodes.setdefault(name, {"interfaces": []})
        for column in NODE_COLUMNS:
            value = (row.get(column) or "").strip()
            if not value:
                continue
            value = value.split() if column in LISTS else value
            if column in ("dns", "ntp", "syslog") and value == ["none"]:
                value = []
            if column in node and node[column] != value:
                raise LayerbootError(f"{where}: {column} differs from the node's first row")
            node[column] = value
        for column in columns:
            if column.startswith("var:") and (row.get(column) or ""):
                node.setdefault("vars", {})[column[4:]] = row[column]
        iface = {c: (row.get(c) or "").strip() for c in IFACE_COLUMNS if (row.get(c) or "").strip()}
        if iface:
            if "device" not in iface:
                if node["interfaces"]:
                    raise LayerbootError(f"{where}: a node's second interface needs its device name")
                iface["device"] = "eth0"          # a node's only (first) interface: eth0 unless named
            node["interfaces"].append(iface)
    return nodes


def records(data: dict[str, Any]) -> tuple[list[Group], list[FleetNode]]:
    groups = [Group.from_dict(table, kind=kind, name=name) for kind, key in (("cluster", "clusters"), ("group", "groups"))
              for name, table in data[key].items()]
    nodes = []
    for name, table in data["nodes"].items():
        if not isinstance(table, dict):
            raise RecordError(f"node {name}: not a table")
        nodes.append(FleetNode.from_dict(table, name=name))
    return groups, nodes


def apply_import(fleet: Fleet, data: dict[str, Any], *, dry_run: bool,
                 check_profile: Callable[[str], Any] | None) -> dict[str, Any]:
    groups, nodes = records(data)
    added, updated = fleet.import_all(groups, nodes, dry_run=dry_run, check_profile=check_profile)
    return {"clusters": sum(g.kind == "cluster" for g in groups), "groups": sum(g.kind == "group" for g in groups),
            "added": added, "updated": updated, "dry_run": dry_run}


def export_toml(nodes: list[FleetNode], groups: dict[tuple[str, str], Group]) -> str:
    import tomli_w

    used = {("cluster", n.cluster) for n in nodes if n.cluster} | {("group", g) for n in nodes for g in n.groups}
    data: dict[str, Any] = {"clusters": {}, "groups": {}, "nodes": {}}
    for (kind, name), group in sorted(groups.items()):
        if (kind, name) in used:
            table = group.to_dict()
            del table["name"], table["kind"]
            data["clusters" if kind == "cluster" else "groups"][name] = table
    for node in nodes:
        table = node.to_dict()
        del table["name"], table["mac"]
        data["nodes"][node.name] = table
    header = "# layerboot nodes export: 'layerboot nodes import FILE' reads it back (docs/nodes.md)\n"
    return header + tomli_w.dumps({k: v for k, v in data.items() if v})


def export_csv(nodes: list[FleetNode]) -> str:
    keys = sorted({k for n in nodes for k in n.own.vars})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", *IFACE_COLUMNS, *NODE_COLUMNS, *(f"var:{k}" for k in keys)])
    for node in nodes:
        own = node.own.to_dict()
        values = {"cluster": node.cluster, "groups": " ".join(node.groups), "asset_key": node.asset_key or ""}
        for key in ("profile", "kernel_args", "domain"):
            values[key] = own.get(key, "")
        for key in ("dns", "ntp", "syslog"):
            values[key] = "" if key not in own else " ".join(own[key]) or "none"
        interfaces = node.interfaces or (Interface(device="eth0", mac=node.mac),)
        for index, iface in enumerate(interfaces):
            data = iface.to_dict()
            writer.writerow([node.name, *(data.get(c, "") for c in IFACE_COLUMNS),
                             *((values.get(c, "") for c in NODE_COLUMNS) if index == 0 else ("",) * len(NODE_COLUMNS)),
                             *((node.own.vars.get(k, "") for k in keys) if index == 0 else ("",) * len(keys))])
    return out.getvalue()
