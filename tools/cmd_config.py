"""``layerboot config``: show the effective settings and their reference."""

from __future__ import annotations

import argparse

from layerboot.settings import SETTINGS, config_as_toml, settings_reference
from layerboot.tools.context import Context
from layerboot.tools.parser import add_json, examples, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show the effective configuration",
                            description="Settings come from /etc/layerboot/layerboot.toml ($LAYERBOOT_CONFIG, "
                                        "--config); every key is in 'config reference'.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    show = actions.add_parser("show", help="print the effective settings as TOML",
                              description="Print every setting's effective value (file, then defaults) as TOML.")
    add_json(show)
    show.set_defaults(func=cmd_show)
    examples(show, "layerboot config show", "layerboot --config ./test.toml config show --json")
    ref = actions.add_parser("reference", help="print every setting with its default and meaning (Markdown)",
                             description="Print the settings table of docs/config.md.")
    ref.set_defaults(func=lambda ctx: print(settings_reference(), end="") or 0)
    examples(ref, "layerboot config reference")


def cmd_show(ctx: Context) -> int:
    if ctx.args.json:
        return print_json({s.key: getattr(ctx.config, s.field) for s in SETTINGS})
    print(config_as_toml(ctx.config), end="")
    return 0
