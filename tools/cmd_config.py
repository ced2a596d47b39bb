"""``layerboot config``: show the effective settings and their reference."""

from __future__ import annotations

import argparse

from layerboot.settings import config_as_toml, settings_reference
from layerboot.tools.context import Context


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show the effective configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("show", help="print the effective settings as TOML").set_defaults(func=cmd_show)
    actions.add_parser("reference", help="print every setting with its default and meaning (Markdown)"
                       ).set_defaults(func=lambda ctx: print(settings_reference(), end="") or 0)


def cmd_show(ctx: Context) -> int:
    print(config_as_toml(ctx.config), end="")
    return 0
