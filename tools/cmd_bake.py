"""``layerboot bake`` and ``layerboot squash``: turn uploads into layers, merge adjacent layers (server side)."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.bake import BakeLimits, bake_archive
from layerboot.overlays.content import parse_classes
from layerboot.overlays.squash import squash_profile
from layerboot.settings import MAX_THREADS
from layerboot.tools.args import int_range
from layerboot.tools.context import Context
from layerboot.tools.parser import examples


def register(sub: argparse._SubParsersAction) -> None:
    bake = sub.add_parser(
        "bake", help="check a tar.zst upload and turn it into an overlay layer (optionally add it to a profile)",
        description="Check FILE (a tar.zst from 'layerboot capture') member by member against the upload "
                    "policy (bake.* settings, and the content policy: no setuid/setgid files, file capabilities "
                    "or device nodes unless allowed) and pack it into a squashfs overlay layer in the store. "
                    "With --profile the layer is made on that profile's base and appended as a new generation, "
                    "and the content classes the profile allows ('uploads policy') apply. A rejected upload "
                    "changes nothing in the store. Prints the layer digest.")
    bake.add_argument("file", type=Path, help="the tar.zst made by 'layerboot capture'")
    target = bake.add_mutually_exclusive_group(required=True)
    target.add_argument("--profile", metavar="NAME", help="append the layer to this profile")
    target.add_argument("--base", metavar="REF", help="the base layer the changes were made on (no profile)")
    bake.add_argument("--parent", metavar="REF", help="with --base: the top layer the node ran")
    bake.add_argument("-d", "--description", default="", help="free text shown by 'layer list'")
    bake.add_argument("--threads", type=int_range(0, MAX_THREADS),
                      help="tar2sqfs jobs (default: bake.threads; 0 = one per core)")
    bake.add_argument("--allow", action="append", default=[], metavar="CLASSES",
                      help="also allow these content classes for this bake: setuid, caps, devices, all")
    bake.set_defaults(func=cmd_bake)
    examples(bake, "layerboot bake change.tar.zst --profile web", "layerboot bake change.tar.zst --base 6291d0d9 "
             "-d 'node 12 changes'")

    squash = sub.add_parser(
        "squash", help="merge adjacent overlay layers of a profile into one layer (new generation)",
        description="Replace positions FROM..TO of the profile's current generation (1 is just above the "
                    "base) by one layer whose stacked result is identical.")
    squash.add_argument("profile", help="profile name")
    squash.add_argument("--from", dest="first", type=int, required=True, metavar="N",
                        help="first position to merge (1 is just above the base)")
    squash.add_argument("--to", dest="last", type=int, required=True, metavar="M", help="last position to merge")
    squash.add_argument("--threads", type=int_range(0, MAX_THREADS), help="tar2sqfs jobs (default: bake.threads)")
    squash.set_defaults(func=cmd_squash)
    examples(squash, "layerboot squash web --from 2 --to 4")


def _threads(ctx: Context) -> int:
    return ctx.config.bake_threads if ctx.args.threads is None else ctx.args.threads


def cmd_bake(ctx: Context) -> int:
    a = ctx.args
    store = ctx.ready_store()
    if not a.file.is_file():
        raise LayerbootError(f"{a.file} does not exist or is not a regular file")
    if a.profile:
        if a.parent:
            raise LayerbootError("--parent goes with --base; with --profile the parent is its top layer")
        gen = ctx.profiles.current(a.profile)
        base, parent = gen.base, gen.layers[-1]
    else:
        base, parent = a.base, a.parent
    allow = parse_classes(a.allow)
    if a.profile:
        from layerboot.server.uploads import UploadRecords
        allow |= UploadRecords(ctx.database(), ctx.paths).allowed(a.profile)
    layer = bake_archive(store, a.file, base=base, parent=parent, description=a.description or a.file.name,
                         limits=BakeLimits.from_config(ctx.config, allow=allow), threads=_threads(ctx))
    print(layer.digest)
    if a.profile:
        gen = ctx.profiles.add(a.profile, layer.digest)
        print(f"profile {a.profile}: generation {gen.number} ({gen.action})")
    return 0


def cmd_squash(ctx: Context) -> int:
    a = ctx.args
    gen = squash_profile(ctx.profiles, a.profile, a.first, a.last, threads=_threads(ctx))
    print(gen.layers[a.first])
    print(f"profile {a.profile}: generation {gen.number} ({gen.action})")
    return 0
