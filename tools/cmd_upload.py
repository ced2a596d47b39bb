"""``layerboot upload``: send a captured layer (tar.zst) to layerbootd from a node; returns at once."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.parser import examples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upload", help="send a tar.zst from 'layerboot capture' to layerbootd (node side)",
        description="PUT FILE to the server as this node's upload. Returns as soon as the server has the whole "
                    "file (202 + upload id); the server bakes it later. --wait polls until it is baked. Server, "
                    "node and token default to layerboot.server=, layerboot.node= and layerboot.token= on "
                    "/proc/cmdline, or $LAYERBOOT_SERVER, $LAYERBOOT_NODE, $LAYERBOOT_TOKEN.")
    p.add_argument("file", type=Path, help="the tar.zst made by 'layerboot capture'")
    p.add_argument("--server", metavar="URL", help="layerbootd's URL (default: layerboot.server= on the kernel "
                                                   "command line)")
    p.add_argument("--node", metavar="MAC", help="this node's MAC (default: layerboot.node=)")
    p.add_argument("--token", help="this node's token (default: layerboot.token=)")
    p.add_argument("--name", help="name on the server (default: the file's name)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to SECONDS for the bake to finish")
    p.set_defaults(func=cmd_upload)
    examples(p, "layerboot upload /run/change.tar.zst --wait 120",
             "layerboot upload change.tar.zst --server http://10.0.0.1:8080 --node 52:54:00:12:34:56 --token T")


def _cmdline() -> dict[str, str]:
    try:
        words = Path("/proc/cmdline").read_text().split()
    except OSError:
        return {}
    return dict(w.removeprefix("layerboot.").split("=", 1) for w in words
                if w.startswith("layerboot.") and "=" in w)


def cmd_upload(ctx: Context) -> int:
    from layerboot.server.client import upload, upload_status
    a, boot = ctx.args, _cmdline()
    server = a.server or os.environ.get("LAYERBOOT_SERVER") or boot.get("server")
    node = a.node or os.environ.get("LAYERBOOT_NODE") or boot.get("node")
    token = a.token or os.environ.get("LAYERBOOT_TOKEN") or boot.get("token")
    missing = [label for label, value in (("--server", server), ("--node", node), ("--token", token)) if not value]
    if missing:
        raise LayerbootError(f"missing {', '.join(missing)}", hint="pass them, or run on a node booted by layerboot")
    reply = upload(a.file, server=server, mac=node, token=token, name=a.name)
    print(f"upload {reply['id']}: {reply['size']} bytes received, {reply['state']}")
    if a.wait:
        deadline = time.monotonic() + a.wait
        while True:
            status = upload_status(reply["id"], server=server, mac=node, token=token)
            if status["state"] in ("baked", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(f"upload {reply['id']}: {status['state']}"
              + (f", layer {status['layer'][:12]}" if status.get("layer") else "")
              + (f", generation {status['generation']}" if status.get("generation") else "")
              + (f" ({status['message']})" if status.get("message") else ""))
        if status["state"] == "failed":
            return 1
    return 0
