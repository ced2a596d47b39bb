"""``layerboot layer``: import layers and boot files, list and show them."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.layer import IMPORTABLE_KINDS, Layer
from layerboot.tools.context import Context
from layerboot.tools.output import human_size, table


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("layer", help="import, list and describe stored layers")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    imp = actions.add_parser(
        "import", help="add a directory tree or squashfs image as a layer, or a kernel/initrd",
        description="Import PATH into the store. A directory is packed with mksquashfs (zstd); a squashfs "
                    "file is stored as it is. Prints the new layer's digest.")
    imp.add_argument("path", type=Path)
    imp.add_argument("--kind", choices=IMPORTABLE_KINDS, default="base", help="what PATH is (default: base)")
    imp.add_argument("--base", metavar="REF", help="for an overlay: the base layer it was made on")
    imp.add_argument("--parent", metavar="REF", help="for an overlay: the top layer it was captured from")
    imp.add_argument("-d", "--description", default="", help="free text shown by 'layer list'")
    imp.add_argument("--all-root", action="store_true", help="make every file owned by root (trees only)")
    imp.set_defaults(func=cmd_import)

    lst = actions.add_parser("list", help="list every stored layer")
    lst.set_defaults(func=cmd_list)

    show = actions.add_parser("show", help="print one layer's record (JSON)")
    show.add_argument("ref", help="digest or unique prefix")
    show.set_defaults(func=cmd_show)


def cmd_import(ctx: Context) -> int:
    store = ctx.ready_store()
    path: Path = ctx.args.path
    kind = ctx.args.kind
    if kind in ("kernel", "initrd"):
        layer = store.import_boot_file(path, kind=kind, description=ctx.args.description)
    elif path.is_dir():
        layer = store.import_tree(path, kind=kind, description=ctx.args.description, base=ctx.args.base,
                                  parent=ctx.args.parent, all_root=ctx.args.all_root)
    elif path.is_file():
        layer = store.import_squashfs(path, kind=kind, description=ctx.args.description, base=ctx.args.base,
                                      parent=ctx.args.parent)
    else:
        raise LayerbootError(f"{path} does not exist")
    print(layer.digest)
    return 0


def _row(layer: Layer) -> list[object]:
    return [layer.short, layer.kind, human_size(layer.size), layer.created,
            layer.base[:12] if layer.base else "-", layer.description]


def cmd_list(ctx: Context) -> int:
    layers = ctx.ready_store().layers()
    if not layers:
        print("no layers yet (import one with 'layerboot layer import')")
        return 0
    print(table(["LAYER", "KIND", "SIZE", "CREATED", "BASE", "DESCRIPTION"], [_row(layer) for layer in layers]))
    return 0


def cmd_show(ctx: Context) -> int:
    print(ctx.ready_store().get(ctx.args.ref).to_json(), end="")
    return 0
