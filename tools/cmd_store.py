"""``layerboot store``: create the store, check it, collect garbage."""

from __future__ import annotations

import argparse

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.output import human_size
from layerboot.tools.parser import add_json, examples, print_json

GC_DESCRIPTION = """\
Delete old profile generations and the layers nothing uses any more. Without --delete it is a dry run: it
prints what would go and changes nothing.

A generation is kept when it is its profile's current one, among its last --keep generations, newer than
--days days, or booted by a node within --booted-days days (from the nodes' boot reports, which name the
manifest serial). Then every layer, kernel and initrd that no kept generation names, no upload waiting for
approval holds, and no kept layer was made on goes, unless it was imported within --days days (or within
the last hour). Defaults come from gc.keep_generations, gc.keep_days and gc.booted_days.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("store", help="create, check and clean up the layer store",
                            description="The store holds layers (objects/, meta/), profiles, signed manifests, "
                                        "the signing key and the daemon's state.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    init = actions.add_parser("init", help="create an empty store (directories only; see 'key generate')",
                              description="Create the store's directories (safe to run again).")
    init.set_defaults(func=cmd_init)
    examples(init, "layerboot store init", "layerboot --store /srv/layerboot store init")

    fsck = actions.add_parser("fsck", help="re-hash every object and cross-check the records",
                              description="Re-hash every object and cross-check the records. Prints a BAD line "
                                          "per problem and exits 1 when there is any.")
    fsck.set_defaults(func=cmd_fsck)
    examples(fsck, "layerboot store fsck")

    gc = actions.add_parser("gc", help="delete old generations and unused layers (dry run unless --delete)",
                            description=GC_DESCRIPTION)
    gc.add_argument("--keep", type=int, metavar="N", help="keep the last N generations of every profile "
                                                          "(gc.keep_generations)")
    gc.add_argument("--days", type=float, metavar="D", help="keep generations and unused layers newer than D "
                                                            "days (gc.keep_days)")
    gc.add_argument("--booted-days", type=float, metavar="T", help="keep generations a node booted within T "
                                                                   "days (gc.booted_days)")
    gc.add_argument("--delete", action="store_true", help="really delete (default: only show what would go)")
    add_json(gc)
    gc.set_defaults(func=cmd_gc)
    examples(gc, "layerboot store gc                      # dry run with the configured retention",
             "layerboot store gc --keep 3 --days 7    # what a stricter policy would delete",
             "layerboot store gc --delete             # delete it")


def cmd_init(ctx: Context) -> int:
    ctx.store.init()
    print(f"store ready at {ctx.paths.root}")
    return 0


def cmd_fsck(ctx: Context) -> int:
    store = ctx.ready_store()
    problems = store.fsck()
    checked = len(set(store.digests()) | set(store.objects.digests()))
    for problem in problems:
        print(f"BAD {problem}")
    if problems:
        raise LayerbootError(f"fsck found {len(problems)} problem(s) in {checked} object(s)",
                             hint="a corrupt object must be re-imported or removed from the profiles using it")
    print(f"fsck: {checked} object(s) checked, all intact")
    return 0


def cmd_gc(ctx: Context) -> int:
    from layerboot.overlays.gc import Retention, apply_gc, plan_gc

    a, config = ctx.args, ctx.config
    retention = Retention(keep_generations=config.gc_keep_generations if a.keep is None else a.keep,
                          keep_days=config.gc_keep_days if a.days is None else a.days,
                          booted_days=config.gc_booted_days if a.booted_days is None else a.booted_days)
    for label, value in (("--keep", retention.keep_generations), ("--days", retention.keep_days),
                         ("--booted-days", retention.booted_days)):
        if value < 0:
            raise LayerbootError(f"{label} must not be negative")
    held = ctx.held_layers()
    plan = plan_gc(ctx.profiles, retention, booted_serials=ctx.booted_serials(retention.booted_days), held=held)
    if a.delete:
        plan = apply_gc(ctx.profiles, plan, held=held)
    if a.json:
        return print_json({"deleted" if a.delete else "would_delete": plan.as_dict(),
                           "retention": retention.__dict__})
    verb = "deleted" if a.delete else "would delete"
    for gen in plan.generations:
        print(f"{verb} generation {gen.number} of {gen.profile} (serial {gen.serial}, created {gen.created})")
    for layer in plan.layers:
        print(f"{verb} {layer.kind} layer {layer.short} ({human_size(layer.size)}) {layer.description}")
    for profile, numbers in sorted(plan.booted.items()):
        print(f"kept {profile} generation(s) {', '.join(map(str, numbers))}: booted within "
              f"{retention.booted_days:g} days")
    summary = (f"{len(plan.generations)} generation(s) and {len(plan.layers)} layer(s), "
               f"{human_size(plan.bytes)}")
    if a.delete:
        print(f"gc: deleted {summary}")
    elif plan.empty:
        print("gc: nothing to delete")
    else:
        print(f"gc: would delete {summary}; run 'layerboot store gc --delete' to delete them")
    return 0
