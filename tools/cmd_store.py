"""``layerboot store``: create the store, check it (``fsck``, ``fsck --repair``), collect garbage."""

from __future__ import annotations

import argparse

from layerboot.errors import LayerbootError
from layerboot.overlays import leftovers
from layerboot.overlays.leftovers import Leftover
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

FSCK_HELP = """\
Re-hash every object against its name, cross-check the metadata records and every profile generation, and
look for what an interrupted run left behind: temp files of atomic writes, scratch in tmp/, signed manifests
whose generation was never committed, objects without a record, and upload-queue files no upload needs.

Output: one line per finding -- BAD (damage: an object whose bytes are wrong, unreadable or missing; a
generation naming a missing layer), LEFTOVER (removable) -- then a summary. Exit status 0 when the store is
healthy, 1 when anything was found.

With --repair: leftovers are removed (REMOVED lines; scratch with a filesystem still mounted inside is left
and named), and damaged objects are moved to quarantine/ (QUARANTINED lines) so nothing serves them. Importing
the same bytes again ('layerboot layer import FILE') then restores a quarantined or damaged object. The exit
status is 1 while damage remains. The upload queue is only checked while no layerbootd runs on the store
(layerbootd cleans it itself at every start).
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

    fsck = actions.add_parser("fsck", help="re-hash every object, cross-check records, find crash leftovers",
                              description=FSCK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsck.add_argument("--repair", action="store_true",
                      help="remove leftovers and move damaged objects to quarantine/")
    fsck.set_defaults(func=cmd_fsck)
    examples(fsck, "layerboot store fsck", "layerboot store fsck --repair")

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


def _queue_leftovers(ctx: Context, *, repair: bool) -> tuple[list[Leftover], list[Leftover], str]:
    """Upload-queue leftovers (found, removed), checked only while no layerbootd holds the store."""
    from layerboot.server.daemonlock import DaemonLock
    from layerboot.server.db import open_database
    from layerboot.server.uploads import UploadRecords, queue_dir
    if not ctx.config.server_database and not ctx.paths.database.exists() and not (queue_dir(ctx.paths).is_dir() and any(queue_dir(ctx.paths).iterdir())):
        return [], [], ""   # no daemon ever ran here: nothing to check (and no database to create)
    try:
        lock = DaemonLock(ctx.paths, purpose="layerboot store fsck").acquire()
    except LayerbootError as err:
        return [], [], f"upload queue not checked: {err.message}"
    try:
        db = open_database(ctx.config, ctx.paths)
        try:
            found = UploadRecords(db, ctx.paths).queue_leftovers()
        finally:
            db.close()
        removed = [item for item in found if repair and leftovers.remove(item)]
    finally:
        lock.release()
    return found, removed, ""


def cmd_fsck(ctx: Context) -> int:
    store = ctx.ready_store()
    repair = ctx.args.repair
    root = ctx.paths.root
    problems = store.fsck()
    profile_problems = ctx.profiles.check()
    found, removed = leftovers.sweep(ctx.paths, repair=repair)
    queue_found, queue_removed, note = _queue_leftovers(ctx, repair=repair)
    found, removed = found + queue_found, removed + queue_removed
    for problem in problems:
        print(f"BAD {problem}")
    for line in profile_problems:
        print(f"BAD {line}")
    quarantined = 0
    if repair:
        for problem in problems:
            if problem.damaged and store.objects.quarantine(problem.digest, reason=problem.problem):
                print(f"QUARANTINED {problem.digest[:12]}: moved to quarantine/")
                quarantined += 1
    for item in found:
        print(f"{'REMOVED' if item in removed else 'LEFTOVER'} {item.describe(root)}")
    if note:
        print(f"note: {note}")
    for path, size in store.quarantined():
        print(f"note: {path.relative_to(root)} ({size} bytes) is a damaged object kept for inspection; "
              "delete it when done")
    checked = len(store.digests())
    remaining = [item for item in found if item not in removed]
    damage = len(problems) + len(profile_problems)
    if damage or remaining:
        parts = ([f"{damage} problem(s)"] if damage else []) + ([f"{len(remaining)} leftover(s)"] if remaining else [])
        hints = [] if repair else ["run 'layerboot store fsck --repair' to remove the leftovers and quarantine "
                                   "damaged objects"]
        if damage:
            hints.append("importing the good bytes again ('layerboot layer import FILE') restores a damaged "
                         "object; or remove it from the profiles that use it")
        done = f" (removed {len(removed)} leftover(s), quarantined {quarantined} object(s))" if repair else ""
        raise LayerbootError(f"fsck found {' and '.join(parts)} in {checked} object(s){done}",
                             hint="; ".join(hints) or None)
    print(f"fsck: {checked} object(s) checked, all intact" + (f"; removed {len(removed)} leftover(s)" if removed else ""))
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
