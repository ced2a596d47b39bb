"""``layerboot``: the admin and node-side command line. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from layerboot import __version__, progress
from layerboot.log import run_main, setup_logging
from layerboot.tools import cmd_config, cmd_demo, cmd_key, cmd_layer, cmd_manifest, cmd_profile, cmd_store
from layerboot.tools import cmd_bake, cmd_capture
from layerboot.tools import cmd_db, cmd_groups, cmd_nodes, cmd_upload
from layerboot.tools import cmd_pxe
from layerboot.tools import cmd_base
from layerboot.tools import cmd_install
from layerboot.tools import cmd_initrd
from layerboot.tools import cmd_admin, cmd_docs, cmd_heartbeat, cmd_incidents, cmd_power
from layerboot.tools import cmd_mirror, cmd_services
from layerboot.tools.context import Context
from layerboot.tools.parser import Parser, add_global_options, examples, spread_global_options

COMMAND_GROUPS = (cmd_store, cmd_layer, cmd_profile, cmd_manifest, cmd_key, cmd_config, cmd_demo, cmd_install,
                  cmd_capture, cmd_bake, cmd_pxe, cmd_base, cmd_nodes, cmd_groups, cmd_db, cmd_upload, cmd_initrd,
                  cmd_incidents, cmd_power, cmd_heartbeat, cmd_docs, cmd_admin, cmd_mirror, cmd_services)

DESCRIPTION = """\
Boot diskless Linux nodes from a signed base squashfs plus ordered overlay layers.

The store holds immutable layers named by their sha256; profiles list layers (base first) in numbered
generations; every generation gets a manifest signed with the store's Ed25519 key and a serial that only
ever grows. Nodes verify the signature and serial before they fetch a byte of a layer.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="layerboot", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"layerboot {__version__}",
                        help="print the version and exit")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do")
    for group in COMMAND_GROUPS:
        group.register(sub)
    examples(parser, "layerboot store init && layerboot key generate",
             "layerboot layer import ./rootfs/ -d 'debian minbase'",
             "layerboot profile create web --base 6291d0d9 --cmdline console=ttyS0",
             "layerboot layer list --json",
             "layerboot COMMAND --help                # every command's options and examples")
    spread_global_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose, debug=args.debug)
    progress.set_mode(args.progress)
    return run_main(lambda: args.func(Context(args)), debug=args.debug, prog="layerboot")


if __name__ == "__main__":
    sys.exit(main())
