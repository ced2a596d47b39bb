"""``layerboot power``: on, off, cycle or status of nodes through their BMCs (server side, root only).

Reads the power file (``monitor.power_file``, by default state/power.toml in the store), which holds BMC
passwords and is root-only; see docs/monitor.md "Power control".
"""

from __future__ import annotations

import argparse
import asyncio
import os

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import add_json, examples, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "power", help="power nodes on, off, cycle them, or show their power state (IPMI, Redfish, QEMU QMP)",
        description="Acts on each node given (a list of MACs; groups come with fleet identity) at once, through "
                    "the driver its entry in the power file names. Exit status 1 if any node failed.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    for name, text in (("on", "power on"), ("off", "power off at once (not a clean shutdown)"),
                       ("cycle", "power cycle (a hard reset; an off node is powered on)"),
                       ("status", "show the power state")):
        p = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ", for each node given.")
        p.add_argument("nodes", nargs="+", metavar="MAC", help="the nodes (their entries in the power file)")
        add_json(p)
        p.set_defaults(func=cmd_power, verb=name)
        examples(p, f"layerboot power {name} 52:54:00:12:34:56", f"layerboot power {name} 52:54:00:12:34:56 "
                    "52:54:00:12:34:57 --json")
    p = actions.add_parser("list", help="nodes with power control configured (no secrets shown)",
                           description="The nodes of the power file with their driver and address (no secrets).")
    add_json(p)
    p.set_defaults(func=cmd_list)
    examples(p, "layerboot power list", "layerboot power list --json")


def _targets(ctx: Context):  # noqa: ANN202
    from layerboot.server.monitor.power import Targets, power_file
    if os.geteuid() != 0:
        raise LayerbootError("power control reads BMC credentials, which are root-only", hint="run as root")
    return Targets(power_file(ctx.config, ctx.paths))


def cmd_power(ctx: Context) -> int:
    from layerboot.server.monitor.power import power
    from layerboot.server.nodes import normalize_mac

    targets = _targets(ctx)
    macs = list(dict.fromkeys(normalize_mac(m) for m in ctx.args.nodes))
    timeout = float(ctx.config.monitor_power_timeout)

    async def one(mac: str) -> dict:
        try:
            target = targets.get(mac)
            return {"mac": mac, "driver": target.driver,
                    "state": await power(target, ctx.args.verb, timeout=timeout), "error": None}
        except LayerbootError as err:
            return {"mac": mac, "driver": None, "state": None, "error": err.message}

    async def all_of() -> list[dict]:
        return list(await asyncio.gather(*(one(mac) for mac in macs)))

    results = asyncio.run(all_of())
    if ctx.args.json:
        print_json({"action": ctx.args.verb, "nodes": results})
    else:
        print(table(["NODE", "DRIVER", "POWER", "ERROR"], [[r["mac"], r["driver"] or "-", r["state"] or "-",
                                                             r["error"] or ""] for r in results]))
    return 1 if any(r["error"] for r in results) else 0


def cmd_list(ctx: Context) -> int:
    from layerboot.server.monitor.power import load_targets
    targets = _targets(ctx)
    found = load_targets(targets.path)
    if ctx.args.json:
        print_json({"file": str(targets.path), "nodes": [{"mac": t.mac, "driver": t.driver, "address": t.address}
                                                         for t in found.values()]})
    elif found:
        print(table(["NODE", "DRIVER", "ADDRESS"], [[t.mac, t.driver, t.address] for t in found.values()]))
    else:
        print(f"no power control configured ({targets.path} is missing or empty)")
    return 0
