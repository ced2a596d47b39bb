"""``layerboot key``: the store's Ed25519 manifest signing key."""

from __future__ import annotations

import argparse

from layerboot.overlays.keys import generate_key, key_id, load_public_key
from layerboot.tools.context import Context
from layerboot.tools.parser import add_json, examples, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("key", help="manage the manifest signing key",
                            description="The store signs every manifest with its Ed25519 key (keys/signing.key); "
                                        "nodes trust the public key built into their initrd.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    gen = actions.add_parser("generate", help="create the store's Ed25519 key pair (refuses to overwrite)",
                             description="Create keys/signing.key (mode 0600, owned by the store's owner) "
                                         "and keys/signing.pub. Refuses to overwrite an existing key.")
    gen.set_defaults(func=cmd_generate)
    examples(gen, "layerboot key generate")
    show = actions.add_parser("show", help="print the public key (base64) and its id",
                              description="Print the public key (base64 of the raw 32 bytes) and its key id.")
    add_json(show)
    show.set_defaults(func=cmd_show)
    examples(show, "layerboot key show", "layerboot key show --json")


def cmd_generate(ctx: Context) -> int:
    ctx.store.init()
    kid = generate_key(ctx.paths.signing_key, ctx.paths.public_key)
    ctx.paths.adopt(ctx.paths.signing_key, ctx.paths.public_key)
    print(f"signing key {kid} written to {ctx.paths.signing_key} (public key: {ctx.paths.public_key})")
    return 0


def cmd_show(ctx: Context) -> int:
    raw = load_public_key(ctx.paths.public_key)
    text = ctx.paths.public_key.read_text().strip()
    if ctx.args.json:
        return print_json({"public_key": text, "key_id": key_id(raw), "file": ctx.paths.public_key})
    print(text)
    print(f"key id: {key_id(raw)}")
    return 0
