"""``layerboot groups`` and ``layerboot clusters``: defaults that member nodes inherit (docs/nodes.md)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from layerboot.errors import LayerbootError
from layerboot.server.fleet.records import Defaults, Group
from layerboot.tools import fleet_args as fa
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import RESULT_JSON, add_json, examples, print_json

HELP = {
    "group": ("node groups (tags) with defaults their members inherit",
              "A group carries settings its member nodes inherit and may override: profile, kernel args, DNS/NTP/"
              "log servers, domain, authorized keys, template variables and interface defaults (by device name: "
              "gateway, MTU, dhcp). A node in several groups takes the later group's value. Templates in a template "
              "directory's groups/NAME/ apply to its members."),
    "cluster": ("clusters: a node's /etc/hosts lists the members of its cluster only",
                "A cluster carries defaults like a group (below every group a node is in), and it bounds what a node "
                "learns of others: /etc/hosts in a node's layer lists the members of its own cluster, never another "
                "cluster's."),
}


EXAMPLE_NAME = {"group": "compute", "cluster": "c1"}
EXAMPLES = {
    ("group", "add"): ("layerboot groups add compute --profile compute --interface eth0 --gateway 10.0.0.254 "
                       "--mtu 9000", "layerboot groups add gpu --var cuda=12 --kernel-args 'iommu=pt'"),
    ("group", "set"): ("layerboot groups set compute --profile compute-v2",
                       "layerboot groups set compute --authorized-key ops.pub --ntp server"),
    ("cluster", "add"): ("layerboot clusters add c1 --domain c1.example --dns 10.0.0.53",),
    ("cluster", "set"): ("layerboot clusters set c1 --syslog 10.0.0.5 --description 'rack 1'",),
}


def register(sub: argparse._SubParsersAction) -> None:
    for kind in ("group", "cluster"):
        short, description = HELP[kind]
        parser = sub.add_parser(f"{kind}s", help=short, description=description)
        parser.set_defaults(func=cmd_list, kind=kind)
        add_json(parser)
        examples(parser, f"layerboot {kind}s", f"layerboot {kind}s --json")
        actions = parser.add_subparsers(dest="action", metavar="ACTION", help="what to do (default: list)")
        for action, func, text in (("add", cmd_add, f"create a {kind}"), ("set", cmd_set, f"change a {kind}")):
            p = actions.add_parser(action, help=text, description=f"{text.capitalize()}: the defaults its members "
                                   "inherit (a member's own settings win).")
            p.add_argument("name", help=f"the {kind}'s name")
            p.add_argument("--description", help=f"what the {kind} is for (shown in '{kind}s list')")
            fa.add_settings(p)
            fa.add_interface(p, counting=False)
            add_json(p, RESULT_JSON)
            p.set_defaults(func=func, kind=kind)
            examples(p, *EXAMPLES[kind, action])
        p = actions.add_parser("list", help=f"every {kind} with its member count",
                               description=f"Every {kind} with its member count and what it sets.")
        add_json(p)
        p.set_defaults(func=cmd_list, kind=kind)
        examples(p, f"layerboot {kind}s list", f"layerboot {kind}s list --json")
        p = actions.add_parser("show", help=f"a {kind}'s defaults and members",
                               description=f"A {kind}'s defaults and its members.")
        p.add_argument("name", help=f"the {kind}'s name")
        add_json(p)
        p.set_defaults(func=cmd_show, kind=kind)
        examples(p, f"layerboot {kind}s show {EXAMPLE_NAME[kind]}")
        p = actions.add_parser("remove", help=f"remove a {kind} that has no members",
                               description=f"Remove a {kind}; one that still has members is refused.")
        p.add_argument("name", help=f"the {kind}'s name")
        add_json(p, RESULT_JSON)
        p.set_defaults(func=cmd_remove, kind=kind)
        examples(p, f"layerboot {kind}s remove {EXAMPLE_NAME[kind]}")


def _changed(group: Group, a: argparse.Namespace) -> Group:
    owner = f"{group.kind} {group.name}"
    defaults = fa.apply_settings(group.defaults, a, owner)
    interfaces = fa.apply_interface(group.defaults.interfaces, a, 0, owner) if (
        fa.interface_given(a) or a.remove_interface) else group.defaults.interfaces
    return replace(group, description=group.description if a.description is None else a.description,
                   defaults=replace(defaults, interfaces=interfaces))


def _done(ctx: Context, group: Group, verb: str, changed: list[str]) -> int:
    members = fa.fleet(ctx).members(group.kind, group.name)
    text = f"{verb} {group.kind} {group.name} ({len(members)} node(s))" + (
        f"; new profile for {', '.join(changed)}" if changed else "")
    return fa.done(ctx, text, group.to_dict() | {"members": len(members), "profile_changed": changed})


def cmd_add(ctx: Context) -> int:
    a = ctx.args
    if a.interface is not None and not a.interface:
        raise LayerbootError("--interface needs a device name")
    group = _changed(Group(name=a.name, kind=a.kind, defaults=Defaults()), a)
    changed = fa.fleet(ctx).save_group(group, create=True, check_profile=fa.check_profile(ctx))
    return _done(ctx, group, "added", changed)


def cmd_set(ctx: Context) -> int:
    a = ctx.args
    f = fa.fleet(ctx)
    group = _changed(f.group(a.kind, a.name), a)
    changed = f.save_group(group, create=False, check_profile=fa.check_profile(ctx))
    return _done(ctx, group, "changed", changed)


def cmd_list(ctx: Context) -> int:
    f = fa.fleet(ctx)
    kind = ctx.args.kind
    groups = [g for (k, _), g in f.groups(kind).items()]
    counts = {g.name: len(f.members(kind, g.name)) for g in groups}
    if ctx.args.json:
        return print_json({f"{kind}s": [g.to_dict() | {"members": counts[g.name]} for g in groups]})
    rows = [[g.name, counts[g.name], g.defaults.profile or "-", g.defaults.domain or "-",
             ", ".join(sorted(g.defaults.to_dict())) or "-", g.description] for g in groups]
    print(table(["NAME", "NODES", "PROFILE", "DOMAIN", "SETS", "DESCRIPTION"], rows) if rows
          else f"no {kind}s yet (layerboot {kind}s add NAME ...)")
    return 0


def cmd_show(ctx: Context) -> int:
    f = fa.fleet(ctx)
    group = f.group(ctx.args.kind, ctx.args.name)
    members = [n.name for n in f.nodes(**{ctx.args.kind: group.name})]
    data = group.to_dict() | {"members": members}
    if ctx.args.json:
        return print_json(data)
    print(f"{group.kind} {group.name}" + (f": {group.description}" if group.description else ""))
    for key, value in group.defaults.to_dict().items():
        print(f"{key}: {value}")
    print(f"members ({len(members)}): {' '.join(members) or '-'}")
    return 0


def cmd_remove(ctx: Context) -> int:
    fa.fleet(ctx).remove_group(ctx.args.kind, ctx.args.name)
    return fa.done(ctx, f"removed {ctx.args.kind} {ctx.args.name}", {"name": ctx.args.name, "removed": True})
