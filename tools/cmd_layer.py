"""``layerboot layer``: import layers and boot files, list, show and remove them."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.layer import IMPORTABLE_KINDS, KINDS, Layer
from layerboot.tools.context import Context
from layerboot.tools.output import human_size, table
from layerboot.tools.parser import add_json, examples, print_json

IMPORT_DESCRIPTION = """\
Import PATH into the store and print the new layer's digest. A directory is packed with mksquashfs (zstd);
a squashfs file is stored as it is; --kind kernel or initrd stores a boot file. Importing the same bytes
twice stores them once.

A directory imports reproducibly: the same tree gives the same digest. mksquashfs sorts every directory;
the filesystem's own timestamp is $SOURCE_DATE_EPOCH when set (file times newer than it are clamped to it,
as https://reproducible-builds.org/ specifies), else the newest time in the tree. --mtime and --owner
normalise what differs between copies of a tree (checkout times, the user who unpacked it).
"""


def _owner(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not uid.isdigit() or (sep and not gid.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not UID:GID (numbers, e.g. 0:0)")
    return int(uid), int(gid or uid)


def _mtime(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a time in seconds since 1970 (e.g. 1700000000)")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("layer", help="import, list, describe and remove stored layers",
                            description="Layers are immutable squashfs images (and kernels, initrds) named by "
                                        "the sha256 of their bytes. Refer to one by its digest or a unique "
                                        "prefix of at least 6 hex digits.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")

    imp = actions.add_parser(
        "import", help="add a directory tree or squashfs image as a layer, or a kernel/initrd",
        description=IMPORT_DESCRIPTION)
    imp.add_argument("path", type=Path, help="a directory tree, a squashfs image, or a kernel/initrd file")
    imp.add_argument("--kind", choices=IMPORTABLE_KINDS, default="base", help="what PATH is (default: base)")
    imp.add_argument("--base", metavar="REF", help="for an overlay: the base layer it was made on")
    imp.add_argument("--parent", metavar="REF", help="for an overlay: the top layer it was captured from")
    imp.add_argument("-d", "--description", default="", help="free text shown by 'layer list'")
    owners = imp.add_mutually_exclusive_group()
    owners.add_argument("--all-root", action="store_true", help="make every file owned by root (trees only)")
    owners.add_argument("--owner", type=_owner, metavar="UID:GID",
                        help="make every file owned by UID:GID (trees only)")
    imp.add_argument("--mtime", type=_mtime, metavar="SECONDS",
                     help="set every file's time to SECONDS since 1970 (trees only; overrides $SOURCE_DATE_EPOCH)")
    imp.set_defaults(func=cmd_import)
    examples(imp, "layerboot layer import ./rootfs/ -d 'debian minbase'             # a tree: mksquashfs, zstd",
             "layerboot layer import ./image.squashfs                              # stored as it is",
             "layerboot layer import ./extra/ --kind overlay --base 6291d0d9",
             "SOURCE_DATE_EPOCH=1700000000 layerboot layer import ./rootfs/ --all-root  # reproducible digest",
             "layerboot layer import ./vmlinuz --kind kernel")

    lst = actions.add_parser("list", help="list every stored layer",
                             description="List every layer and boot file, oldest first.")
    add_json(lst)
    lst.add_argument("--kind", choices=KINDS, help="only layers of this kind")
    lst.set_defaults(func=cmd_list)
    examples(lst, "layerboot layer list", "layerboot layer list --kind overlay --json")

    show = actions.add_parser("show", help="print one layer's record",
                              description="Print one layer's record: digest, kind, size, created, source, base, "
                                          "parent, description, and the profiles whose generations use it.")
    show.add_argument("ref", help="digest or unique prefix (6+ hex digits)")
    add_json(show)
    show.set_defaults(func=cmd_show)
    examples(show, "layerboot layer show 6291d0d9", "layerboot layer show 6291d0d9 --json")

    remove = actions.add_parser(
        "remove", help="delete a layer nothing uses any more",
        description="Delete a layer (object and record) from the store. Refused while anything references it: "
                    "any generation of any profile (old ones too: drop them with 'store gc' first), an upload "
                    "waiting for approval, or another layer made on it as its base.")
    remove.add_argument("ref", help="digest or unique prefix (6+ hex digits)")
    remove.set_defaults(func=cmd_remove)
    examples(remove, "layerboot layer remove 4999dce1")


def cmd_import(ctx: Context) -> int:
    store = ctx.ready_store()
    a = ctx.args
    path: Path = a.path
    kind = a.kind
    tree_only = [name for name, given in (("--all-root", a.all_root), ("--owner", a.owner), ("--mtime", a.mtime))
                 if given not in (None, False)]
    if tree_only and not path.is_dir():
        raise LayerbootError(f"{', '.join(tree_only)} apply to a directory tree only; {path} is not one")
    if kind in ("kernel", "initrd"):
        layer = store.import_boot_file(path, kind=kind, description=a.description)
    elif path.is_dir():
        layer = store.import_tree(path, kind=kind, description=a.description, base=a.base, parent=a.parent,
                                  all_root=a.all_root, owner=a.owner, mtime=a.mtime)
    elif path.is_file():
        layer = store.import_squashfs(path, kind=kind, description=a.description, base=a.base, parent=a.parent)
    else:
        raise LayerbootError(f"{path} does not exist")
    print(layer.digest)
    return 0


def _row(layer: Layer) -> list[object]:
    return [layer.short, layer.kind, human_size(layer.size), layer.created,
            layer.base[:12] if layer.base else "-", layer.description]


def cmd_list(ctx: Context) -> int:
    if ctx.args.json:
        from layerboot.server.api.store import layer_records
        return print_json({"layers": [record for record in layer_records(ctx.ready_store(), ctx.profiles)
                                      if ctx.args.kind in (None, record["kind"])]})
    layers = [layer for layer in ctx.ready_store().layers() if ctx.args.kind in (None, layer.kind)]
    if not layers:
        print("no layers yet (import one with 'layerboot layer import')")
        return 0
    print(table(["LAYER", "KIND", "SIZE", "CREATED", "BASE", "DESCRIPTION"], [_row(layer) for layer in layers]))
    return 0


def cmd_show(ctx: Context) -> int:
    from layerboot.overlays.gc import references

    layer = ctx.ready_store().get(ctx.args.ref)
    used = references(ctx.profiles, layer.digest)
    if ctx.args.json:
        return print_json({**layer.__dict__, "used_by": used})
    for key, value in layer.__dict__.items():
        print(f"{key + ':':<13}{value if value not in (None, '') else '-'}")
    print(f"{'used by:':<13}{'; '.join(used) or 'nothing'}")
    return 0


def cmd_remove(ctx: Context) -> int:
    from layerboot.overlays.gc import remove_layer

    layer = remove_layer(ctx.profiles, ctx.args.ref, ctx.held_layers())
    print(f"removed {layer.kind} layer {layer.digest} ({human_size(layer.size)})")
    return 0
