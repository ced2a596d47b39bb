"""``layerboot manifest``: print and verify signed manifests."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.tools.context import Context
from layerboot.tools.parser import add_json, examples, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("manifest", help="print and verify signed manifests",
                            description="A signed manifest is the JSON envelope {format, key_id, signature, "
                                        "payload}; the Ed25519 signature covers the exact bytes of payload.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    show = actions.add_parser("show", help="print a profile generation's signed manifest",
                              description="Print the signed envelope exactly as layerbootd serves it.")
    show.add_argument("profile", help="profile name")
    show.add_argument("-g", "--generation", type=int, help="default: the current generation")
    show.add_argument("--payload", action="store_true", help="print only the manifest inside the envelope "
                                                             "(after checking its signature)")
    add_json(show)
    show.set_defaults(func=cmd_show)
    examples(show, "layerboot manifest show web", "layerboot manifest show web -g 2 --payload",
             "layerboot manifest show web --json       # the envelope with the payload parsed")
    verify = actions.add_parser("verify", help="check a signed manifest's signature (and serial, profile, node)",
                                description="Exit 0 when FILE (or - for stdin) carries a valid signature by "
                                            "the trusted key and, with --min-serial, a serial at least that high; "
                                            "with --profile/--node, only if it is that profile's (and not made "
                                            "for another node).")
    verify.add_argument("file", help="signed manifest file, or - for standard input")
    verify.add_argument("--key", type=Path, help="public key file (default: the store's public key)")
    verify.add_argument("--min-serial", type=int, default=0, help="refuse a lower serial (anti-replay)")
    verify.add_argument("--profile", help="refuse a manifest of another profile")
    verify.add_argument("--node", metavar="MAC", help="refuse a manifest made for another node")
    verify.set_defaults(func=cmd_verify)
    examples(verify, "layerboot manifest verify web-7.json --key signing.pub --min-serial 6",
             "curl -s http://server:8080/profiles/web/manifest -H 'Authorization: Bearer ...' | "
             "layerboot manifest verify -")


def cmd_show(ctx: Context) -> int:
    data = ctx.profiles.signed_manifest(ctx.args.profile, ctx.args.generation)
    if ctx.args.payload:
        public = load_public_key(ctx.paths.public_key)
        print(verify_manifest(data, public, profile=ctx.args.profile).to_json())
    elif ctx.args.json:
        envelope = json.loads(data)
        return print_json({**envelope, "payload": json.loads(envelope["payload"])})
    else:
        sys.stdout.write(data.decode("utf-8"))
    return 0


def cmd_verify(ctx: Context) -> int:
    a = ctx.args
    try:
        data = sys.stdin.buffer.read() if a.file == "-" else Path(a.file).read_bytes()
    except OSError as err:
        raise LayerbootError(f"cannot read {a.file}: {err.strerror}") from None
    public = load_public_key(a.key or ctx.paths.public_key)
    manifest = verify_manifest(data, public, min_serial=a.min_serial, profile=a.profile, node=a.node)
    print(f"OK: {manifest.profile} generation {manifest.generation}, serial {manifest.serial}, "
          f"{len(manifest.layers)} layer(s)")
    return 0
