"""``layerboot key``: the store's Ed25519 manifest signing key."""

from __future__ import annotations

import argparse

from layerboot.overlays.keys import generate_key, key_id, load_public_key
from layerboot.tools.context import Context


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("key", help="manage the manifest signing key")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = actions.add_parser("generate", help="create the store's Ed25519 key pair (refuses to overwrite)")
    gen.set_defaults(func=cmd_generate)
    show = actions.add_parser("show", help="print the public key (base64) and its id")
    show.set_defaults(func=cmd_show)


def cmd_generate(ctx: Context) -> int:
    ctx.store.init()
    kid = generate_key(ctx.paths.signing_key, ctx.paths.public_key)
    print(f"signing key {kid} written to {ctx.paths.signing_key} (public key: {ctx.paths.public_key})")
    return 0


def cmd_show(ctx: Context) -> int:
    raw = load_public_key(ctx.paths.public_key)
    print(ctx.paths.public_key.read_text().strip())
    print(f"key id: {key_id(raw)}")
    return 0
