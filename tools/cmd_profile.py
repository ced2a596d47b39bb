"""``layerboot profile``: compose profiles from layers, with generations, rollback and cherry-pick."""

from __future__ import annotations

import argparse

from layerboot.errors import LayerbootError
from layerboot.overlays.profile import Generation
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import add_json, examples, print_json

NAME_HELP = "profile name (lowercase letters, digits, '.', '_', '-')"
REF_HELP = "layer digest or unique prefix (6+ hex digits)"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("profile", help="compose profiles (ordered layer lists with generations)",
                            description="A profile is a named, ordered list of layers (base first) plus kernel, "
                                        "initrd and kernel command line. Every change writes a new generation "
                                        "with a new signed manifest; generations are never rewritten.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")

    def action(name: str, help: str, func, *lines: str) -> argparse.ArgumentParser:  # noqa: A002, ANN001
        p = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        p.set_defaults(func=func)
        examples(p, *lines)
        return p

    p = action("create", "create a profile on a base layer (generation 1)", cmd_create,
               "layerboot profile create web --base 6291d0d9",
               "layerboot profile create web --base 6291d0d9 --kernel 11aa22 --initrd 22bb33 --cmdline console=ttyS0")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("--base", required=True, metavar="REF", help="the base layer (a complete root filesystem)")
    _boot_options(p)

    p = action("list", "list profiles with their current generation", cmd_list,
               "layerboot profile list", "layerboot profile list --json")
    add_json(p)

    p = action("show", "show a generation's layers (the current one by default)", cmd_show,
               "layerboot profile show web", "layerboot profile show web --generation 2 --json")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("-g", "--generation", type=int, help="generation number (default: the current one)")
    add_json(p)

    p = action("add", "stack a layer on a profile (top by default)", cmd_add,
               "layerboot profile add web 4999dce1", "layerboot profile add web a6292a92 --position 1")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("ref", help=REF_HELP)
    p.add_argument("--position", type=int, help="1 puts it just above the base (default: on top)")
    p.add_argument("--force", action="store_true", help="accept a layer made on another base")

    p = action("remove", "take a layer out of a profile", cmd_remove, "layerboot profile remove web 4999dce1")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("ref", help=REF_HELP)

    p = action("move", "move a layer to another position (reorder)", cmd_move, "layerboot profile move web a6292a92 2")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("ref", help=REF_HELP)
    p.add_argument("position", type=int, help="new position (1 is just above the base)")

    p = action("rollback", "make a new generation with the layers of generation N", cmd_rollback,
               "layerboot profile rollback web 2     # a new generation, with a new, higher serial")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("generation", type=int, help="the generation whose layers, kernel, initrd and cmdline to take")

    p = action("cherry-pick", "copy one layer from another profile onto this one", cmd_cherry_pick,
               "layerboot profile cherry-pick db a6292a92 --from web")
    p.add_argument("name", help="the profile that gets the layer")
    p.add_argument("ref", help=REF_HELP)
    p.add_argument("--from", dest="source", required=True, metavar="PROFILE", help="the profile that has it")
    p.add_argument("--position", type=int, help="1 puts it just above the base (default: on top)")
    p.add_argument("--force", action="store_true", help="accept a layer made on another base")

    p = action("set", "change the kernel, initrd, kernel command line or modules layer", cmd_set,
               "layerboot profile set web --cmdline 'console=ttyS0 quiet'",
               "layerboot profile set web --kernel 11aa22 --initrd 22bb33")
    p.add_argument("name", help=NAME_HELP)
    _boot_options(p)
    p.add_argument("--modules", metavar="REF",
                   help="the kernel's modules layer, stacked above the base ('none' drops it; "
                        "'layerboot initrd build --profile' sets it with the kernel)")

    p = action("log", "list every generation with what changed", cmd_log,
               "layerboot profile log web", "layerboot profile log web --json")
    p.add_argument("name", help=NAME_HELP)
    add_json(p)

    p = action("diff", "compare two generations", cmd_diff, "layerboot profile diff web 2 4")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("old", type=int, help="the older generation")
    p.add_argument("new", type=int, help="the newer generation")
    add_json(p)

    p = actions.add_parser(
        "delete", help="delete a profile with all its generations and manifests",
        description="Delete a profile: all its generations and signed manifests. Refused while registered "
                    "nodes boot it (move them with 'nodes set-profile'). Its layers stay in the store; 'store "
                    "gc' deletes those no other profile uses.")
    p.add_argument("name", help=NAME_HELP)
    p.set_defaults(func=cmd_delete)
    examples(p, "layerboot profile delete old-web && layerboot store gc")


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
        return print_json({"profiles": profile_summaries(profiles)})
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
        return print_json(gen.to_dict())
    print(f"profile {gen.profile}, generation {gen.number}, serial {gen.serial}, created {gen.created}")
    print(f"kernel:  {gen.kernel or '-'}\ninitrd:  {gen.initrd or '-'}\ncmdline: {gen.cmdline}")
    rows = []
    for position, layer in enumerate(profiles.store.get(digest) for digest in gen.layers):
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
    history = list(reversed(ctx.profiles.history(ctx.args.name)))
    if ctx.args.json:
        return print_json({"generations": [g.to_dict() for g in history]})
    rows = [[g.number, g.serial, g.created, len(g.layers), g.action] for g in history]
    print(table(["GEN", "SERIAL", "CREATED", "LAYERS", "ACTION"], rows))
    return 0


def cmd_diff(ctx: Context) -> int:
    a = ctx.args
    diff = ctx.profiles.diff(a.name, a.old, a.new)
    if a.json:
        return print_json({"profile": a.name, "old": a.old, "new": a.new} | diff.to_dict())
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


def cmd_delete(ctx: Context) -> int:
    from layerboot.overlays.gc import delete_profile

    name = ctx.args.name
    if name == ctx.config.server_default_profile:
        raise LayerbootError(f"profile {name} is server.default_profile (what unknown MACs boot)",
                             hint="set server.default_profile to another profile first")
    count = delete_profile(ctx.profiles, name, nodes=ctx.nodes_booting(name))
    print(f"deleted profile {name} ({count} generation(s)); its layers stay until 'layerboot store gc'")
    return 0
