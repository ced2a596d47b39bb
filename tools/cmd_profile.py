"""``layerboot profile``: compose profiles from layers, with generations, rollback and cherry-pick."""

from __future__ import annotations

import argparse

from layerboot.overlays.profile import Generation
from layerboot.tools.context import Context
from layerboot.tools.output import print_json, table


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("profile", help="compose profiles (ordered layer lists with generations)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str, func) -> argparse.ArgumentParser:  # noqa: A002, ANN001
        p = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        p.set_defaults(func=func)
        return p

    p = action("create", "create a profile on a base layer (generation 1)", cmd_create)
    p.add_argument("name")
    p.add_argument("--base", required=True, metavar="REF")
    _boot_options(p)

    p = action("list", "list profiles with their current generation", cmd_list)
    p.add_argument("--json", action="store_true", help="the records of GET /api/v1/profiles")

    p = action("show", "show a generation's layers (the current one by default)", cmd_show)
    p.add_argument("name")
    p.add_argument("-g", "--generation", type=int)
    p.add_argument("--json", action="store_true", help="the generation's record")

    p = action("add", "stack a layer on a profile (top by default)", cmd_add)
    p.add_argument("name")
    p.add_argument("ref")
    p.add_argument("--position", type=int, help="1 puts it just above the base")
    p.add_argument("--force", action="store_true", help="accept a layer made on another base")

    p = action("remove", "take a layer out of a profile", cmd_remove)
    p.add_argument("name")
    p.add_argument("ref")

    p = action("move", "move a layer to another position (reorder)", cmd_move)
    p.add_argument("name")
    p.add_argument("ref")
    p.add_argument("position", type=int)

    p = action("rollback", "make a new generation with the layers of generation N", cmd_rollback)
    p.add_argument("name")
    p.add_argument("generation", type=int)

    p = action("cherry-pick", "copy one layer from another profile onto this one", cmd_cherry_pick)
    p.add_argument("name")
    p.add_argument("ref")
    p.add_argument("--from", dest="source", required=True, metavar="PROFILE")
    p.add_argument("--position", type=int)
    p.add_argument("--force", action="store_true", help="accept a layer made on another base")

    p = action("set", "change the kernel, initrd, kernel command line or modules layer", cmd_set)
    p.add_argument("name")
    _boot_options(p)
    p.add_argument("--modules", metavar="REF",
                   help="the kernel's modules layer, stacked above the base ('none' drops it; "
                        "'layerboot initrd build --profile' sets it with the kernel)")

    p = action("log", "list every generation with what changed", cmd_log)
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="every generation's record, newest first")

    p = action("diff", "compare two generations", cmd_diff)
    p.add_argument("name")
    p.add_argument("old", type=int)
    p.add_argument("new", type=int)
    p.add_argument("--json", action="store_true", help="the record of GET /api/v1/profiles/NAME/diff")


def _boot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", metavar="REF", help="stored kernel to boot")
    parser.add_argument("--initrd", metavar="REF", help="stored initrd to boot")
    parser.add_argument("--cmdline", help="kernel command line")


def _report(gen: Generation) -> int:
    print(f"{gen.profile}: generation {gen.number} ({gen.action}), manifest serial {gen.serial}")
    return 0


def cmd_create(ctx: Context) -> int:
    a = ctx.args
    cmdline = ctx.config.manifest_cmdline if a.cmdline is None else a.cmdline
    return _report(ctx.profiles.create(a.name, a.base, cmdline=cmdline, kernel=a.kernel, initrd=a.initrd))


def cmd_list(ctx: Context) -> int:
    profiles = ctx.profiles
    if ctx.args.json:
        from layerboot.server.api.store import profile_summaries
        print_json({"profiles": profile_summaries(profiles)})
        return 0
    rows = []
    for name in profiles.names():
        gen = profiles.current(name)
        rows.append([name, gen.number, len(gen.layers), gen.serial, gen.created])
    print(table(["PROFILE", "GENERATION", "LAYERS", "SERIAL", "CHANGED"], rows) if rows else "no profiles yet")
    return 0


def cmd_show(ctx: Context) -> int:
    profiles, a = ctx.profiles, ctx.args
    gen = profiles.current(a.name) if a.generation is None else profiles.generation(a.name, a.generation)
    if a.json:
        print_json(gen.to_dict())
        return 0
    print(f"profile {gen.profile}, generation {gen.number}, serial {gen.serial}, created {gen.created}")
    print(f"kernel:  {gen.kernel or '-'}\ninitrd:  {gen.initrd or '-'}\ncmdline: {gen.cmdline}")
    rows = []
    for position, digest in enumerate(gen.layers):
        layer = profiles.store.get(digest)
        rows.append([position, layer.short, layer.kind, layer.description])
        if position == 0 and gen.modules:   # stacked above the base, with the kernel (not a position)
            modules = profiles.store.get(gen.modules)
            rows.append(["-", modules.short, modules.kind, modules.description])
    print(table(["POS", "LAYER", "KIND", "DESCRIPTION"], rows))
    return 0


def cmd_add(ctx: Context) -> int:
    a = ctx.args
    return _report(ctx.profiles.add(a.name, a.ref, position=a.position, force=a.force))


def cmd_remove(ctx: Context) -> int:
    return _report(ctx.profiles.remove(ctx.args.name, ctx.args.ref))


def cmd_move(ctx: Context) -> int:
    return _report(ctx.profiles.move(ctx.args.name, ctx.args.ref, ctx.args.position))


def cmd_rollback(ctx: Context) -> int:
    return _report(ctx.profiles.rollback(ctx.args.name, ctx.args.generation))


def cmd_cherry_pick(ctx: Context) -> int:
    a = ctx.args
    return _report(ctx.profiles.cherry_pick(a.name, a.source, a.ref, force=a.force, position=a.position))


def cmd_set(ctx: Context) -> int:
    a = ctx.args
    modules = None if a.modules is None else ("" if a.modules == "none" else a.modules)
    return _report(ctx.profiles.set_boot(a.name, kernel=a.kernel, initrd=a.initrd, cmdline=a.cmdline,
                                         modules=modules))


def cmd_log(ctx: Context) -> int:
    if ctx.args.json:
        print_json({"generations": [g.to_dict() for g in reversed(ctx.profiles.history(ctx.args.name))]})
        return 0
    rows = [[g.number, g.serial, g.created, len(g.layers), g.action] for g in reversed(ctx.profiles.history(ctx.args.name))]
    print(table(["GEN", "SERIAL", "CREATED", "LAYERS", "ACTION"], rows))
    return 0


def cmd_diff(ctx: Context) -> int:
    a = ctx.args
    diff = ctx.profiles.diff(a.name, a.old, a.new)
    if a.json:
        print_json({"profile": a.name, "old": a.old, "new": a.new} | diff.to_dict())
        return 0
    if diff.empty:
        print(f"generations {a.old} and {a.new} boot the same chain")
        return 0
    for digest in diff.added:
        print(f"+ {digest[:12]} {ctx.profiles.store.get(digest).description}")
    for digest in diff.removed:
        print(f"- {digest[:12]} {ctx.profiles.store.get(digest).description}")
    if diff.reordered:
        print("~ layer order changed")
    for change in diff.changes:
        print(f"~ {change}")
    return 0
