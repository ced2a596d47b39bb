"""``layerboot heartbeat``: report this node's health to layerbootd (node side; see server/monitor/agent.py)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.parser import examples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heartbeat", help="send this node's health (uptime, load, memory, generation, failed units) to layerbootd",
        description="Collect this node's state and POST it to layerbootd's /nodes/MAC/heartbeat with the node's "
                    "write credential, its node secret (the boot token is not accepted). Server and node default "
                    "to layerboot.server= and layerboot.node= on /proc/cmdline (or $LAYERBOOT_SERVER, "
                    "$LAYERBOOT_NODE), the secret to /run/layerboot/node.secret, which stage1 writes when it claims "
                    "one. Systemd bases run it from layerboot-heartbeat.timer, which skips nodes without a secret; "
                    "busybox bases run it with --loop.")
    p.add_argument("--server", metavar="URL", help="layerbootd's URL (default: layerboot.server= on the kernel "
                                                   "command line, or $LAYERBOOT_SERVER)")
    p.add_argument("--node", metavar="MAC", help="this node's MAC (default: layerboot.node=, or $LAYERBOOT_NODE)")
    p.add_argument("--loop", action="store_true", help="keep sending, every --interval seconds (never exits)")
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between heartbeats with --loop (default 60)")
    p.add_argument("--print", dest="show", action="store_true", help="print the heartbeat instead of sending it")
    p.add_argument("--secret-file", type=Path, metavar="FILE",
                   help="file holding the node secret (default /run/layerboot/node.secret, which stage1 writes; "
                        "root only)")
    p.set_defaults(func=cmd_heartbeat)
    examples(p, "layerboot heartbeat", "layerboot heartbeat --loop --interval 60     # busybox bases",
             "layerboot heartbeat --print")


def cmd_heartbeat(ctx: Context) -> int:
    from layerboot.server.client import boot_options, post_heartbeat, read_secret
    from layerboot.server.monitor.agent import collect

    a = ctx.args
    if a.interval < 1:
        raise LayerbootError("--interval must be at least 1 second")
    if a.show:
        print(json.dumps(collect(), indent=1, sort_keys=True))
        return 0
    boot = boot_options()
    server = a.server or os.environ.get("LAYERBOOT_SERVER") or boot.get("server")
    node = a.node or os.environ.get("LAYERBOOT_NODE") or boot.get("node")
    missing = [label for label, value in (("--server", server), ("--node", node)) if not value]
    if missing:
        raise LayerbootError(f"missing {', '.join(missing)}", hint="run on a node booted by layerboot, or pass "
                                                                    "--server and --node")
    secret = read_secret(a.secret_file)
    while True:
        try:
            post_heartbeat(collect(), server=server, mac=node, secret=secret)  # type: ignore[arg-type]
            if not a.loop:
                print(f"heartbeat sent to {server}")
        except LayerbootError as err:
            if not a.loop:
                raise
            print(f"layerboot heartbeat: {err.message}", file=sys.stderr, flush=True)
        if not a.loop:
            return 0
        time.sleep(a.interval * random.uniform(0.9, 1.1))   # spread a fleet's heartbeats out
