"""``layerboot nodes pending|accept|reject|forget|rules``: machines that came in by the discovery boot."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.tools import fleet_args as fa
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import RESULT_JSON, add_json, examples, print_json

PENDING_HELP = "the machine's boot MAC (from 'nodes pending')"


def register_actions(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("pending", help="unknown machines waiting in their discovery boot (server.unknown_mac = "
                           "\"discover\")",
                           description="Machines that booted the discovery boot and wait to be accepted, with what "
                                       "they report: DMI vendor, product, serial and UUID, CPUs, memory, disks, "
                                       "NICs, and a name the operator asked for at their console.")
    p.add_argument("--all", action="store_true", help="also accepted and rejected ones")
    add_json(p)
    p.set_defaults(func=cmd_pending)
    examples(p, "layerboot nodes pending", "layerboot nodes pending --all --json")

    p = actions.add_parser("accept", help="make a node of a waiting machine (its DMI UUID and serial become its "
                           "asset key); it reboots into its own boot",
                           description="Without --name: the name (and clone source) the operator asked for in the "
                                       "discovery menu, if any. --clone-of copies an existing node's configuration "
                                       "(new addresses: the next free ones after its).")
    p.add_argument("mac", metavar="MAC", help=PENDING_HELP)
    p.add_argument("--name", help="the node's name (default: the one asked for at its console)")
    p.add_argument("--profile", default="", help="the profile it boots (default: from its groups or cluster)")
    p.add_argument("--cluster", default="", help="the cluster it joins")
    p.add_argument("--group", action="append", default=[], metavar="GROUP", help="a group (repeatable, in order)")
    p.add_argument("--ip", default="", metavar="ADDR/PREFIX", help="its address (default: DHCP; for a clone, the "
                   "next free one)")
    p.add_argument("--gateway", default="", metavar="ADDR", help="its IPv4 gateway")
    p.add_argument("--clone-of", default="", metavar="NODE", help="copy this node's configuration")
    p.add_argument("--force", action="store_true", help="accept although its reports conflict")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_accept)
    examples(p, "layerboot nodes accept 52:54:00:00:09:01 --name n101 --profile compute --ip 10.0.1.101/24",
             "layerboot nodes accept 52:54:00:00:09:02 --name n102 --clone-of n101")

    p = actions.add_parser("reject", help="refuse a waiting machine: it powers off, and its discovery boots are "
                           "refused until 'nodes forget'",
                           description="Refuse a waiting machine: it powers off at its next poll, and its discovery "
                                       "boots are refused until 'nodes forget'.")
    p.add_argument("mac", metavar="MAC", help=PENDING_HELP)
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_reject)
    examples(p, "layerboot nodes reject 52:54:00:00:09:03")

    p = actions.add_parser("forget", help="drop a machine's discovery record (a rejected one may report again)",
                           description="Drop a machine's discovery record; a rejected machine may report again.")
    p.add_argument("mac", metavar="MAC", help=PENDING_HELP)
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_forget)
    examples(p, "layerboot nodes forget 52:54:00:00:09:03")

    p = actions.add_parser("rules", help="auto-accept rules for discovered machines: by MAC range or DMI serials",
                           description="Rules that accept discovered machines as they report, tried in order.")
    rules = p.add_subparsers(dest="rules_action", metavar="ACTION", required=True, help="add, list or remove")
    q = rules.add_parser("add", help="accept matching machines as soon as they report",
                         description="A machine whose boot MAC is in --macs, or whose DMI serial is in --serials "
                                     "(each serial once), becomes a node named by the first free name of --names, "
                                     "with the given profile, cluster, groups and (counted from --ip) address. A "
                                     "machine whose reports conflict is never auto-accepted. This trusts the boot "
                                     "network as DHCP does: the first machine to report a matching MAC or serial "
                                     "gets the name.")
    match = q.add_mutually_exclusive_group(required=True)
    match.add_argument("--macs", metavar="FIRST-LAST", help="a MAC range, e.g. 52:54:00:00:01:00-52:54:00:00:01:ff")
    match.add_argument("--serials", metavar="LIST", help="DMI serial numbers, comma separated (or @FILE, one a line)")
    q.add_argument("--names", required=True, metavar="HOSTLIST", help="names to take, in order: n[101-200]")
    q.add_argument("--profile", default="", help="the profile they boot (default: from their groups or cluster)")
    q.add_argument("--cluster", default="", help="the cluster they join")
    q.add_argument("--group", action="append", default=[], metavar="GROUP", help="a group (repeatable, in order)")
    q.add_argument("--ip", default="", metavar="ADDR/PREFIX", help="first address to hand out (next free ones)")
    q.add_argument("--gateway", default="", metavar="ADDR", help="their IPv4 gateway")
    add_json(q, RESULT_JSON)
    q.set_defaults(func=cmd_rules_add)
    examples(q, "layerboot nodes rules add --macs 52:54:00:00:01:00-52:54:00:00:01:ff --names 'n[101-200]' "
                "--profile compute --ip 10.0.1.101/24",
             "layerboot nodes rules add --serials @serials.txt --names 'db[1-4]' --cluster c2 --group db")
    q = rules.add_parser("list", help="the rules, in the order they are tried",
                         description="The auto-accept rules with their ids, in the order they are tried.")
    add_json(q)
    q.set_defaults(func=cmd_rules_list)
    examples(q, "layerboot nodes rules list", "layerboot nodes rules list --json")
    q = rules.add_parser("remove", help="remove a rule", description="Remove an auto-accept rule by its id.")
    q.add_argument("id", type=int, help="the rule's id (from 'nodes rules list')")
    add_json(q, RESULT_JSON)
    q.set_defaults(func=cmd_rules_remove)
    examples(q, "layerboot nodes rules remove 2")


def _age(seconds: float) -> str:
    ago = time.time() - seconds
    return f"{ago:.0f}s ago" if ago < 120 else f"{ago / 60:.0f}m ago" if ago < 7200 else f"{ago / 3600:.0f}h ago"


def cmd_pending(ctx: Context) -> int:
    records = fa.fleet(ctx).discoveries(None if ctx.args.all else "pending")
    if ctx.args.json:
        return print_json({"machines": records})
    rows = []
    for r in records:
        f = r["facts"]
        dmi = f["dmi"]
        request = r["request"]
        note = "; ".join(filter(None, (
            f"asks to be {request.get('name', '?')}, a clone of {request.get('clone_of', '?')}" if request else "",
            f"CONFLICT: {r['conflict']}" if r["conflict"] else "",
            f"node {r['node']}" if r["node"] else "", r["message"] if r["state"] != "pending" else "")))
        rows.append([r["mac"], r["state"], f"{dmi['vendor']} {dmi['product']}".strip() or "-", dmi["serial"] or "-",
                     dmi["uuid"] or "-", f["cpus"], f"{f['memory'] >> 20} MB", len(f["disks"]), len(f["macs"]),
                     r["remote"], _age(r["last_seen"]), note or "-"])
    print(table(["MAC", "STATE", "MACHINE", "SERIAL", "UUID", "CPUS", "MEMORY", "DISKS", "NICS", "FROM", "SEEN",
                 "NOTE"], rows) if rows else "no machine is waiting" + (
        "" if ctx.config.server_unknown_mac == "discover" else " (discovery is off: server.unknown_mac)"))
    return 0


def cmd_accept(ctx: Context) -> int:
    from layerboot.server.fleet.enroll import accept
    a = ctx.args
    f = fa.fleet(ctx)
    record = f.discovery(a.mac)
    if record is None:
        raise LayerbootError(f"no machine {a.mac} is pending", hint="see 'layerboot nodes pending'")
    name = a.name or record["request"].get("name")
    clone_of = a.clone_of or ("" if a.name or a.profile else record["request"].get("clone_of", ""))
    if not name:
        raise LayerbootError(f"give {record['mac']} a name", hint=f"layerboot nodes accept {record['mac']} --name "
                                                                  "NAME --profile PROFILE")
    node = accept(f, a.mac, force=a.force, check_profile=fa.check_profile(ctx), name=name, profile=a.profile,
                  cluster=a.cluster, groups=a.group, ipv4=a.ip, gateway=a.gateway, clone_of=clone_of)
    how = f" as a clone of {clone_of}" if clone_of else ""
    return fa.done(ctx, f"accepted {record['mac']} as node {node.name}{how} (asset key "
                        f"{'from its DMI UUID and serial' if node.asset_key else 'none: its UUID is a placeholder'}); "
                        "it reboots into its own boot at its next poll", node.to_dict())


def cmd_reject(ctx: Context) -> int:
    fa.fleet(ctx).set_discovery_state(ctx.args.mac, "rejected", message="rejected by the admin")
    return fa.done(ctx, f"rejected {ctx.args.mac}: it powers off at its next poll", {"mac": ctx.args.mac,
                                                                                      "state": "rejected"})


def cmd_forget(ctx: Context) -> int:
    fa.fleet(ctx).drop_discovery(ctx.args.mac)
    return fa.done(ctx, f"forgot {ctx.args.mac}", {"mac": ctx.args.mac, "state": "forgotten"})


def cmd_rules_add(ctx: Context) -> int:
    from layerboot.server.fleet.enroll import check_rule
    a = ctx.args
    serials: list[str] = []
    if a.serials:
        if a.serials.startswith("@"):
            try:
                serials = Path(a.serials[1:]).read_text(encoding="utf-8").split()
            except (OSError, UnicodeDecodeError) as err:
                raise LayerbootError(f"cannot read {a.serials[1:]}: {getattr(err, 'strerror', None) or err}") from None
        else:
            serials = [s.strip() for s in a.serials.split(",") if s.strip()]
    if a.profile:
        ctx.profiles.current(a.profile)
    rule = check_rule({"macs": a.macs or "", "serials": serials, "names": a.names, "profile": a.profile,
                       "cluster": a.cluster, "groups": a.group, "ipv4": a.ip, "gateway": a.gateway})
    rule_id = fa.fleet(ctx).add_rule({k: v for k, v in rule.items() if v})
    return fa.done(ctx, f"rule {rule_id}: " + _describe(rule), {"id": rule_id, "rule": rule})


def _describe(rule: dict) -> str:
    match = f"MACs {rule['macs']}" if rule.get("macs") else f"{len(rule.get('serials', []))} DMI serial(s)"
    return (f"{match} -> names {rule['names']}, profile {rule.get('profile') or '(from groups)'}"
            + (f", cluster {rule['cluster']}" if rule.get("cluster") else "")
            + (f", groups {','.join(rule['groups'])}" if rule.get("groups") else "")
            + (f", addresses from {rule['ipv4']}" if rule.get("ipv4") else ", DHCP"))


def cmd_rules_list(ctx: Context) -> int:
    rules = fa.fleet(ctx).rules()
    if ctx.args.json:
        return print_json({"rules": [{"id": i, "rule": r} for i, r in rules]})
    print("\n".join(f"{i}: {_describe(r)}" for i, r in rules) or "no enrollment rules")
    return 0


def cmd_rules_remove(ctx: Context) -> int:
    fa.fleet(ctx).remove_rule(ctx.args.id)
    return fa.done(ctx, f"removed rule {ctx.args.id}", {"id": ctx.args.id, "removed": True})
