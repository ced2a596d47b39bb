"""Node-side credentials and uploads: ``layerboot upload`` sends a captured layer (tar.zst) to layerbootd and
returns at once; ``layerboot asset-key`` prints what the admin registers for this node."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.safetext import printable
from layerboot.server.client import NODE_SECRET
from layerboot.tools.context import Context
from layerboot.tools.parser import examples



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upload", help="send a tar.zst from 'layerboot capture' to layerbootd (node side)",
        description="PUT FILE to the server as this node's upload. Returns as soon as the server has the whole "
                    "file (202 + upload id); the server bakes it later. --wait polls until it is baked. Server and "
                    "node default to layerboot.server= and layerboot.node= on /proc/cmdline (or $LAYERBOOT_SERVER, "
                    f"$LAYERBOOT_NODE). The credential is the node secret, read from {NODE_SECRET} (root only; "
                    "stage1 claims it at boot) or --secret-file; the boot token on the command line is read-only "
                    "and is never used for uploads.")
    p.add_argument("file", type=Path, help="the tar.zst made by 'layerboot capture'")
    p.add_argument("--server", metavar="URL", help="layerbootd's URL (default: layerboot.server= on the kernel "
                                                   "command line)")
    p.add_argument("--node", metavar="MAC", help="this node's MAC (default: layerboot.node=)")
    p.add_argument("--secret-file", type=Path, metavar="FILE",
                   help=f"file holding the node secret (default {NODE_SECRET}; 'layerboot nodes register' and "
                        "'nodes secret rotate' print one)")
    p.add_argument("--name", help="name on the server (default: the file's name)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to SECONDS for the bake to finish")
    p.set_defaults(func=cmd_upload)
    examples(p, "layerboot upload /run/change.tar.zst --wait 120",
             "layerboot upload change.tar.zst --server http://10.0.0.1:8080 --node 52:54:00:12:34:56 "
             "--secret-file node.secret")

    p = sub.add_parser(
        "asset-key", help="print this machine's asset key for 'layerboot nodes register --asset-key' (node, root)",
        description="Print PRODUCT_UUID:PRODUCT_SERIAL from /sys/class/dmi/id, lowercased: what stage1 proves to "
                    "claim the node secret at boot. Run it as root on the node (or on a machine of the same model "
                    "to see the format) and register the value on the server. Treat it like a password: with "
                    "it and a boot token, anyone could claim this node's write credential.")
    p.add_argument("--dmi", type=Path, default=Path("/sys/class/dmi/id"), metavar="DIR",
                   help="where the SMBIOS fields are (default /sys/class/dmi/id)")
    p.set_defaults(func=cmd_asset_key)
    examples(p, "layerboot asset-key")

def cmd_upload(ctx: Context) -> int:
    from layerboot.server.client import boot_options, read_secret, upload, upload_status
    a, boot = ctx.args, boot_options()
    server = a.server or os.environ.get("LAYERBOOT_SERVER") or boot.get("server")
    node = a.node or os.environ.get("LAYERBOOT_NODE") or boot.get("node")
    missing = [label for label, value in (("--server", server), ("--node", node)) if not value]
    if missing:
        raise LayerbootError(f"missing {', '.join(missing)}", hint="pass them, or run on a node booted by layerboot")
    secret = read_secret(a.secret_file)
    reply = upload(a.file, server=server, mac=node, secret=secret, name=a.name)
    print(f"upload {printable(reply['id'])}: {reply['size']} bytes received, {printable(reply['state'])}")
    if a.wait:
        deadline = time.monotonic() + a.wait
        while True:
            status = upload_status(reply["id"], server=server, mac=node, secret=secret)
            if status["state"] in ("baked", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(printable(f"upload {reply['id']}: {status['state']}"
                        + (f", layer {status['layer'][:12]}" if status.get("layer") else "")
                        + (f", generation {status['generation']}" if status.get("generation") else "")
                        + (f" ({status['message']})" if status.get("message") else "")))
        if status["state"] == "failed":
            return 1
    return 0


def cmd_asset_key(ctx: Context) -> int:
    from layerboot.initrd.stage1.claim import read_asset_key

    directory = ctx.args.dmi
    try:
        (directory / "product_uuid").open("rb").close()
    except PermissionError:
        raise LayerbootError(f"{directory}/product_uuid is readable by root only",
                             hint="run it as root (sudo layerboot asset-key)") from None
    except OSError:
        raise LayerbootError(f"this machine has no DMI identity ({directory}/product_uuid is missing)",
                             hint="without one it cannot claim a node secret; place one with --secret-file") from None
    key = read_asset_key(str(directory))
    if not key:
        raise LayerbootError("this machine's DMI UUID is a placeholder (all 0 or all F): no asset key",
                             hint="set a real SMBIOS system UUID in the firmware, or place a node secret by hand")
    print(key)
    return 0
