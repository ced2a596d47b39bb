"""``layerboot nodes add|set|list|show|clone|import|export|render``: named nodes (server/fleet; docs/nodes.md)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.server.fleet.ranges import expand
from layerboot.server.fleet.records import Defaults, FleetNode, Interface, check_name
from layerboot.tools import fleet_args as fa
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import RESULT_JSON, add_json, examples, print_json


def register_actions(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("add", help="add named nodes: one, or many at once (n[001-100], MACs and IPs counted up)",
                           description="Add nodes by name. With a host list (n[001-100]) every node gets the next "
                                       "MAC and the next address after the first one's (--mac-step/--ip-step). A "
                                       "node registered by MAC only is adopted when its MAC is given.")
    p.add_argument("names", metavar="NAMES", help="a name or a host list: n[001-100], rack[1-2]-n[01-20], a,b")
    p.add_argument("--cluster", default="", help="the cluster it belongs to (its /etc/hosts lists that cluster)")
    p.add_argument("--group", action="append", default=[], metavar="GROUP", help="a group (repeatable, in order)")
    p.add_argument("--asset-key", metavar="UUID:SERIAL", help="SMBIOS identity (one node only): lets it claim its "
                   "node secret, which it needs for its own layer")
    fa.add_settings(p)
    fa.add_interface(p)
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_add)
    examples(p, "layerboot nodes add web1 --mac 52:54:00:00:10:01 --ip 10.0.0.10/24 --gateway 10.0.0.1 --profile web",
             "layerboot nodes add 'n[001-100]' --mac 52:54:00:00:00:01 --ip 10.0.0.1/24 --cluster c1 --group compute")

    p = actions.add_parser("set", help="change nodes: name, cluster, groups, settings, an interface, asset key",
                           description="Change one node or many (a host list, 'all', or --in-group/--in-cluster/"
                                       "--with-profile). Over several nodes --mac and --ip count up in name order: "
                                       "re-address a whole range in one command. A node registered by MAC only "
                                       "takes --profile, --asset-key and --name (which makes it a named node).")
    fa.add_selection(p)
    p.add_argument("--name", help="rename (one node); a node known by MAC only becomes a named node")
    p.add_argument("--cluster", help="move to this cluster ('' for none)")
    p.add_argument("--groups", metavar="LIST", help="set the groups, comma separated, in order ('' for none)")
    p.add_argument("--add-group", action="append", default=[], metavar="GROUP",
                   help="add to this group, after its others (repeatable)")
    p.add_argument("--remove-group", action="append", default=[], metavar="GROUP",
                   help="take out of this group (repeatable)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--asset-key", metavar="UUID:SERIAL", help="the node's SMBIOS identity as 'layerboot "
                     "asset-key' prints it on the node (what its claims prove)")
    key.add_argument("--no-asset-key", action="store_true", help="forget the asset key: no more claims")
    fa.add_settings(p)
    fa.add_interface(p)
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_set)
    examples(p, "layerboot nodes set 52:54:00:12:34:56 --profile db",
             "layerboot nodes set 52:54:00:12:34:56 --asset-key 4c4c4544-0042-...:CZJ1234567",
             "layerboot nodes set web1 --interface eth1 --mac 52:54:00:00:20:01 --ip dhcp",
             "layerboot nodes set 'n[051-100]' --ip 10.5.0.10/16 --ip-step 2 --gateway 10.5.0.1",
             "layerboot nodes set all --in-group compute --kernel-args nosmt")

    p = actions.add_parser("clone", help="a new node with another node's configuration, new name, MACs, "
                           "addresses, credentials and host keys",
                           description="A new node with SRC's cluster, groups, settings and interfaces, but its own "
                                       "name, MACs, addresses, machine id and host keys (and no node secret yet).")
    p.add_argument("source", metavar="SRC", help="the node to copy (name or MAC)")
    p.add_argument("name", metavar="NEW", help="the new node's name")
    p.add_argument("--mac", action="append", default=[], required=True,
                   help="the new node's MAC; repeat for each NIC of SRC, in SRC's order")
    p.add_argument("--ip", default="", metavar="ADDR/PREFIX", help="its first address (default: the next free "
                   "one after SRC's in the same subnet)")
    p.add_argument("--ip6", default="", metavar="ADDR/PREFIX", help="its first IPv6 address (default: the next "
                   "free one after SRC's)")
    p.add_argument("--asset-key", metavar="UUID:SERIAL", help="the new machine's SMBIOS identity (lets it claim its "
                   "node secret)")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_clone)
    examples(p, "layerboot nodes clone web1 web2 --mac 52:54:00:00:10:02",
             "layerboot nodes clone web1 web3 --mac 52:54:00:00:10:03 --mac 52:54:00:00:20:03 --ip 10.0.0.30/24")

    p = actions.add_parser("import", help="add or update nodes, groups and clusters from a CSV or TOML file",
                           description="All or nothing, in one transaction. Nodes are matched by name; a node not "
                                       "in the file is left alone. Formats: docs/nodes.md.")
    p.add_argument("file", type=Path, metavar="FILE", help="the file ('-' for standard input with --format)")
    p.add_argument("--format", choices=("csv", "toml"), help="default: from the file name")
    p.add_argument("--dry-run", action="store_true", help="check everything, change nothing")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_import)
    examples(p, "layerboot nodes import fleet.toml --dry-run", "layerboot nodes import nodes.csv",
             "layerboot nodes import - --format csv < nodes.csv")

    p = actions.add_parser("export", help="nodes (and the groups and clusters they use) as CSV or TOML",
                           description="Write the nodes (all, or a selection) in the format 'nodes import' reads; "
                                       "TOML also carries the groups and clusters.")
    fa.add_selection(p, required=False)
    p.add_argument("--format", choices=("csv", "toml"), default="toml", help="file format (default: toml)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (mode 0600: asset keys are in it)")
    p.set_defaults(func=cmd_export, json=False)
    examples(p, "layerboot nodes export -o fleet.toml", "layerboot nodes export --in-cluster c1 --format csv")

    p = actions.add_parser("render", help="render nodes' per-node layers and manifests now (or show what would "
                           "change with --diff)",
                           description="layerbootd renders a node when it asks for its manifest; this does it ahead "
                                       "of time. A node whose files, profile generation and kernel command line "
                                       "are unchanged keeps its manifest; otherwise it gets a new layer and a "
                                       "manifest with a new serial.")
    fa.add_selection(p, required=False)
    p.add_argument("--diff", action="store_true", help="show what would change (secrets are only named); change "
                   "nothing")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_render)
    examples(p, "layerboot nodes render --diff", "layerboot nodes render 'n[001-010]'",
             "layerboot nodes render all --in-group compute")


# -- add / set / clone ---------------------------------------------------------------------------------------------
def cmd_add(ctx: Context) -> int:
    a = ctx.args
    names = expand(a.names)
    for name in names:
        check_name(name)
    if a.asset_key and len(names) > 1:
        raise LayerbootError("--asset-key is one machine's: give it to one node at a time")
    if not a.mac:
        raise LayerbootError("a new node needs the MAC it boots from", hint="--mac 52:54:00:... (counted up over a "
                             "host list)")
    f = fa.fleet(ctx)
    nodes = []
    for index, name in enumerate(names):
        interfaces = fa.apply_interface((), a, index, name)
        own = fa.apply_settings(Defaults(), a, f"node {name}")
        nodes.append(FleetNode(name=name, mac=fa.key_of(interfaces), cluster=a.cluster, groups=tuple(a.group),
                               interfaces=interfaces, own=own, asset_key=_asset_key(a.asset_key)))
    saved = f.save(nodes, check_profile=fa.check_profile(ctx))
    first, last = saved[0], saved[-1]
    text = (f"added {first.name} ({first.mac}{_address(first)})" if len(saved) == 1 else
            f"added {len(saved)} nodes: {first.name} ({first.mac}{_address(first)}) .. {last.name} "
            f"({last.mac}{_address(last)})")
    return fa.done(ctx, text, {"nodes": [n.to_dict() for n in saved]})


def _asset_key(text: str | None) -> str | None:
    from layerboot.server.nodes import normalize_asset_key
    return normalize_asset_key(text) if text else None


def _address(node: FleetNode) -> str:
    first = next((i for i in node.interfaces if i.static4 or i.static6), None)
    return f", {first.static4 or first.static6}" if first else ""


def cmd_set(ctx: Context) -> int:
    a = ctx.args
    f = fa.fleet(ctx)
    if a.nodes != "all" and "[" not in a.nodes and "," not in a.nodes and f.find(a.nodes) is None:
        return _set_unnamed(ctx, fa.key_mac(ctx, a.nodes))
    nodes = fa.select(ctx)
    if a.name and len(nodes) > 1:
        raise LayerbootError("--name renames one node; this selection has several")
    if a.asset_key and len(nodes) > 1:
        raise LayerbootError("--asset-key is one machine's: give it to one node at a time")
    if not (a.name or a.cluster is not None or a.groups is not None or a.add_group or a.remove_group or a.asset_key
            or a.no_asset_key or fa.settings_given(a) or fa.interface_given(a) or a.remove_interface):
        raise LayerbootError("nothing to change", hint="see 'layerboot nodes set --help'")
    changed, old_macs = [], {}
    for index, node in enumerate(nodes):
        groups = list(node.groups) if a.groups is None else [g for g in a.groups.split(",") if g]
        groups += [g for g in a.add_group if g not in groups]
        groups = [g for g in groups if g not in a.remove_group]
        interfaces = fa.apply_interface(node.interfaces, a, index, node.name)
        asset = node.asset_key if not (a.asset_key or a.no_asset_key) else _asset_key(a.asset_key)
        new = replace(node, name=a.name or node.name, cluster=node.cluster if a.cluster is None else a.cluster,
                      groups=tuple(groups), interfaces=interfaces, mac=fa.key_of(interfaces, node.mac),
                      own=fa.apply_settings(node.own, a, f"node {node.name}"), asset_key=asset)
        old_macs[new.name] = node.mac
        changed.append(new)
    saved = f.save(changed, check_profile=fa.check_profile(ctx), old_macs=old_macs)
    text = "\n".join(f"{n.name}: {n.mac}{_address(n)}, profile {f.effective(n).profile}" for n in saved)
    return fa.done(ctx, text + "\n(applied at each node's next boot; 'layerboot nodes render' does it now)",
                   {"nodes": [n.to_dict() for n in saved]})


def _set_unnamed(ctx: Context, mac: str) -> int:
    """``nodes set MAC`` on a node registered by MAC only: profile, asset key, or a name."""
    from layerboot.server.nodes import Registry
    a = ctx.args
    registry = Registry(ctx.database())
    if fa.interface_given(a) or a.cluster or a.groups or a.add_group or (fa.settings_given(a) and not a.profile) \
            or a.remove_interface:
        raise LayerbootError(f"node {mac} was registered by MAC only: give it a name first",
                             hint=f"layerboot nodes set {mac} --name NAME (it then takes every option)")
    if not (a.profile or a.asset_key or a.no_asset_key or a.name):
        raise LayerbootError("nothing to change", hint="give --profile, --asset-key, --no-asset-key or --name")
    node = registry.get(mac)
    if a.profile:
        ctx.profiles.current(a.profile)
        node = registry.set_profile(node.mac, a.profile)
    if a.asset_key or a.no_asset_key:
        node = registry.set_asset_key(node.mac, None if a.no_asset_key else a.asset_key)
    if a.name:
        named = FleetNode(name=check_name(a.name), mac=node.mac, interfaces=(Interface(device="eth0", mac=node.mac),),
                          own=Defaults(profile=node.profile), asset_key=node.asset_key)
        fa.fleet(ctx).save([named], check_profile=fa.check_profile(ctx))
    text = f"{node.mac}: profile {node.profile}, asset key {node.asset_key or 'none (no secret claims)'}" + (
        f"; now named {a.name} (interface eth0, DHCP)" if a.name else "")
    return fa.done(ctx, text, fa.fleet(ctx).find(node.mac).to_dict() if a.name else node.public_dict())


def cmd_clone(ctx: Context) -> int:
    from layerboot.server.fleet.enroll import clone_node
    a = ctx.args
    f = fa.fleet(ctx)
    source = f.get(a.source)
    node = clone_node(f, source, a.name, a.mac, ipv4=a.ip, ipv6=a.ip6, asset_key=_asset_key(a.asset_key))
    saved = f.save([node], check_profile=fa.check_profile(ctx))[0]
    return fa.done(ctx, f"cloned {source.name} as {saved.name} ({saved.mac}{_address(saved)}); new machine id and "
                        "host keys, no node secret yet" + ("" if saved.asset_key else
                                                            " (and no asset key: it cannot claim one)"),
                   saved.to_dict())


# -- list / show -------------------------------------------------------------------------------------------------
def cmd_list(ctx: Context) -> int:
    from layerboot.server.api.fleet import node_records
    a = ctx.args
    group, cluster, profile, state = a.filter_group, a.filter_cluster, a.filter_profile, a.filter_state
    filtering = group is not None or cluster is not None
    members = {n.mac for n in fa.fleet(ctx).nodes(group=group, cluster=cluster)} if filtering else set()
    records = [r for r in node_records(ctx.server_state()) if (r.mac in members or not filtering)
               and (profile is None or r.node.profile == profile) and (state is None or r.status.state == state)]
    records.sort(key=lambda r: (r.node.name is None, r.node.name or "", r.mac))
    if a.json:      # the records of GET /api/v1/nodes
        return print_json({"nodes": [r.to_dict() for r in records]})
    rows = []
    for r in records:
        n, named = r.node, r.named
        last = f"{n.last_stage} {'ok' if n.last_ok else 'FAILED'}" if n.last_stage else "-"
        rows.append([n.name or "-", n.mac, n.profile + (" (auto)" if n.auto else ""), n.cluster or "-",
                     ",".join(named.groups) if named and named.groups else "-",
                     _address(named)[2:] if named and _address(named) else "-", _when(n.last_seen),
                     n.last_generation if n.last_generation is not None else "-", last, n.failures, n.boots])
    print(table(["NAME", "MAC", "PROFILE", "CLUSTER", "GROUPS", "ADDRESS", "LAST SEEN", "GEN BOOTED", "LAST REPORT",
                 "FAILURES", "BOOTS"], rows) if rows else
          "no nodes" + (" match" if filtering or profile or state else " registered yet (layerboot nodes add NAME "
                                                                       "--mac MAC --profile P)"))
    return 0


def _when(value: str | None) -> str:
    return value.replace("+00:00", "Z") if value else "never"


def print_fleet_details(data: dict[str, Any]) -> None:
    print(f"name {data['name']}; cluster {data.get('cluster') or '-'}; groups {', '.join(data.get('groups', [])) or '-'}"
          f"; machine id {data.get('machine_id', '-')}")
    rows = [[i["device"], i.get("mac", "-"), i.get("ipv4", "-"), i.get("gateway", "-"), i.get("ipv6", "-"),
             i.get("mtu", "-"), i.get("vlan", "-"), i.get("bond", "") or i.get("bond_options", "-")]
            for i in data["interfaces"]]
    print(table(["DEVICE", "MAC", "IPV4", "GATEWAY", "IPV6", "MTU", "VLAN", "BOND"], rows))
    sources = data.get("sources", {})
    for key in ("profile", "domain", "dns", "ntp", "syslog", "kernel_args"):
        if key in data:
            value = data[key] if isinstance(data[key], str) else ", ".join(data[key]) or "(none)"
            print(f"{key}: {value}  [{sources.get(key, 'node')}]")
    for key, value in data.get("vars", {}).items():
        print(f"var {key} = {value!r}  [{sources.get('vars.' + key, 'node')}]")
    if data.get("authorized_keys"):
        print(f"authorized keys: {len(data['authorized_keys'])}")
    for key in data["host_keys"]:
        print(f"ssh host key {key['type']}: {key['fingerprint']}")
    m = data["manifest"]
    print("per-node manifest: " + (f"{m['profile']} generation {m['generation']}, serial {m['serial']}, node layer "
                                   f"{m['layer'][:12]} ({m['created']})" if m else "not rendered yet"))


# -- import / export -----------------------------------------------------------------------------------------
def cmd_import(ctx: Context) -> int:
    from layerboot.server.fleet.exchange import apply_import, parse_file
    a = ctx.args
    fmt = a.format or (a.file.suffix.lstrip(".") if a.file.suffix in (".csv", ".toml") else None)
    if fmt is None:
        raise LayerbootError(f"cannot tell the format of {a.file}", hint="give --format csv or --format toml")
    if str(a.file) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = a.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LayerbootError(f"cannot read {a.file}: {getattr(err, 'strerror', None) or err}") from None
    data = parse_file(text, fmt, str(a.file))
    summary = apply_import(fa.fleet(ctx), data, dry_run=a.dry_run, check_profile=fa.check_profile(ctx))
    verb = "would import" if a.dry_run else "imported"
    return fa.done(ctx, f"{verb} {summary['clusters']} cluster(s), {summary['groups']} group(s), "
                        f"{len(summary['added'])} new node(s), {len(summary['updated'])} updated node(s)", summary)


def cmd_export(ctx: Context) -> int:
    from layerboot.atomic import write_text
    from layerboot.server.fleet.exchange import export_csv, export_toml
    a = ctx.args
    f = fa.fleet(ctx)
    nodes = fa.select(ctx) if a.nodes or a.in_group or a.in_cluster or a.with_profile else f.nodes()
    text = export_csv(nodes) if a.format == "csv" else export_toml(nodes, f.groups())
    if a.output:
        write_text(a.output, text, mode=0o600)
        print(f"wrote {len(nodes)} node(s) to {a.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# -- render --------------------------------------------------------------------------------------------------------
def cmd_render(ctx: Context) -> int:
    from layerboot.server.fleet.manifest import NodeManifests, diff_lines
    a = ctx.args
    f = fa.fleet(ctx)
    nodes = fa.select(ctx) if a.nodes or a.in_group or a.in_cluster or a.with_profile else f.nodes()
    if not nodes:
        raise LayerbootError("no named nodes to render", hint="layerboot nodes add NAME --mac MAC --profile P")
    manifests = NodeManifests(f, ctx.profiles, ctx.config)
    groups = f.groups()
    results, lines = [], []
    started = time.monotonic()
    for node in nodes:
        build = manifests.build(node.mac, groups)
        old = f.manifest_row(node.mac)
        changes = diff_lines(build, old)
        if a.diff:
            lines += changes or [f"{node.name}: no change"]
            results.append({"name": node.name, "changed": bool(changes), "diff": changes})
            continue
        row, changed = manifests.commit(build)
        lines.append(f"{node.name}: " + (f"serial {row.serial}, node layer {row.layer[:12]} ({len(build.tree.files)} "
                                         f"files; {sum(1 for c in changes if c.startswith('+++'))} text files "
                                         "changed)" if changed else f"unchanged (serial {row.serial})"))
        if not node.asset_key and ctx.config.server_node_secret_claim != "mac":
            lines.append(f"{node.name}: warning: no asset key, so it cannot claim its node secret, which it needs for "
                         f"its own layer (layerboot nodes set {node.name} --asset-key UUID:SERIAL)")
        results.append({"name": node.name, "changed": changed, "serial": row.serial, "layer": row.layer,
                        "generation": row.generation, "profile": row.profile})
    if not a.diff:
        lines.append(f"rendered {len(nodes)} node(s) in {time.monotonic() - started:.1f} s")
    return fa.done(ctx, "\n".join(lines), {"nodes": results})
