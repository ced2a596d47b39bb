"""``layerboot capture``: pack a node's overlayfs upper dir as a tar.zst layer upload (client side)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.capture import ZSTD_LEVEL, capture, capture_to
from layerboot.settings import MAX_THREADS
from layerboot.tools.args import int_range
from layerboot.tools.context import Context
from layerboot.tools.output import human_size
from layerboot.tools.parser import examples


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "capture", help="pack an overlayfs upper dir as a tar.zst (whiteouts, opaque dirs, xattrs, links)",
        description="Pack the upper dir of a node's overlay (its changes) as a zstd-compressed tar that "
                    "'layerboot bake' turns into a layer. Keeps whiteouts, opaque dirs, hard links, symlinks, "
                    "modes, owners, mtimes (seconds), xattrs (incl. file capabilities), device nodes, fifos and "
                    "sparse files; the server's upload policy decides whether it takes setuid files, "
                    "capabilities and devices. Refuses, naming the file: redirect_dir renames and metacopy files "
                    "(mount the overlay with redirect_dir=off, the default, and metacopy=off), POSIX ACLs, "
                    "xattrs larger than tar2sqfs takes (64 KiB of header per file) and sockets. Files that "
                    "vanish or change while being read, and mtimes squashfs cannot store, are warnings.")
    parser.add_argument("--upper", type=Path, required=True, metavar="DIR", help="the overlayfs upper dir")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="where the tar.zst goes ('-' for standard output)")
    parser.add_argument("--threads", type=int_range(0, MAX_THREADS),
                        help="zstd threads (default: bake.threads; 0 = one per core)")
    parser.add_argument("--level", type=int_range(1, 22), default=ZSTD_LEVEL,
                        help="zstd level, 1 to 22 (default %(default)s)")
    parser.add_argument("--skip-sockets", action="store_true", help="leave sockets out instead of refusing")
    parser.set_defaults(func=cmd_capture)
    examples(parser, "layerboot capture --upper /run/layerboot/rw/upper -o /run/change.tar.zst",
             "layerboot capture --upper /run/layerboot/rw/upper -o - | ssh server 'cat > change.tar.zst'")


def cmd_capture(ctx: Context) -> int:
    a = ctx.args
    threads = ctx.config.bake_threads if a.threads is None else a.threads
    options = {"threads": threads, "level": a.level, "skip_sockets": a.skip_sockets}
    if a.output == "-":
        if sys.stdout.isatty():
            raise LayerbootError("refusing to write a binary tar.zst to a terminal", hint="redirect it or use -o FILE")
        stats = capture_to(a.upper, sys.stdout.buffer, **options)  # type: ignore[arg-type]
        sys.stdout.buffer.flush()
    else:
        stats = capture(a.upper, Path(a.output), **options)
    print(f"captured {stats.members} entries, {human_size(stats.data_bytes)} of file data"
          + (f", {stats.warnings} warning(s) above" if stats.warnings else ""), file=sys.stderr)
    return 0
