"""``layerboot``: the admin and node-side command line. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from layerboot import __version__
from layerboot.log import run_main, setup_logging
from layerboot.tools import cmd_config, cmd_demo, cmd_key, cmd_layer, cmd_manifest, cmd_profile, cmd_store
from layerboot.tools import cmd_bake, cmd_capture
from layerboot.tools import cmd_db, cmd_nodes, cmd_upload
from layerboot.tools import cmd_pxe
from layerboot.tools import cmd_base
from layerboot.tools import cmd_install
from layerboot.tools import cmd_initrd
from layerboot.tools import cmd_heartbeat, cmd_incidents, cmd_power
from layerboot.tools import cmd_services
from layerboot.tools.context import Context

COMMAND_GROUPS = (cmd_store, cmd_layer, cmd_profile, cmd_manifest, cmd_key, cmd_config, cmd_demo, cmd_install,
                  cmd_capture, cmd_bake, cmd_pxe, cmd_base, cmd_nodes, cmd_db, cmd_upload, cmd_initrd,
                  cmd_incidents, cmd_power, cmd_heartbeat, cmd_services)

DESCRIPTION = """\
Boot diskless Linux nodes from a signed base squashfs plus ordered overlay layers.

The store holds immutable layers named by their sha256; profiles list layers (base first) in numbered
generations; every generation gets a manifest signed with the store's Ed25519 key and a serial that only
ever grows. Nodes verify the signature and serial before they fetch a byte of a layer.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerboot", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"layerboot {__version__}")
    parser.add_argument("-c", "--config", type=_path, metavar="FILE",
                        help="TOML config (default: $LAYERBOOT_CONFIG or /etc/layerboot/layerboot.toml)")
    parser.add_argument("-s", "--store", metavar="DIR", help="layer store directory (overrides store.root)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log what happens (-vv: debug)")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def _path(text: str):  # noqa: ANN202 - argparse type
    from pathlib import Path
    return Path(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose, debug=args.debug)
    return run_main(lambda: args.func(Context(args)), debug=args.debug, prog="layerboot")


if __name__ == "__main__":
    sys.exit(main())
