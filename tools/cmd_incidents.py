"""``layerboot incidents``: the fleet monitor's incidents (list, show, pause, resume, close).

Works on the daemon's database directly, like ``layerboot nodes``: a running layerbootd picks up a pause,
resume or close at its next check (``monitor.interval``).
"""

from __future__ import annotations

import argparse

from layerboot.server.monitor.config import TYPES
from layerboot.server.monitor.model import iso
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import add_json, examples, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "incidents", help="fleet monitor incidents: list, show, pause, resume, close",
        description="Incidents are opened by layerbootd's monitor when a node's condition (node-down, "
                    "boot-failing, ...) holds past its threshold, and walk their type's action ladder until the "
                    "condition clears (they then close by themselves). See docs/monitor.md.")
    parser.set_defaults(func=cmd_list, all=False, node=None, type=None)
    add_json(parser)
    examples(parser, "layerboot incidents", "layerboot incidents --json")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", help="what to do (default: list)")
    p = actions.add_parser("list", help="open and paused incidents (--all: closed ones too)",
                           description="Open and paused incidents: id, node, type, state, ladder step, opened.")
    p.add_argument("--all", action="store_true", help="include closed incidents (history)")
    p.add_argument("--node", metavar="MAC", help="only this node's")
    p.add_argument("--type", choices=TYPES, help="only this type")
    add_json(p)
    p.set_defaults(func=cmd_list)
    examples(p, "layerboot incidents list", "layerboot incidents list --all --node 52:54:00:12:34:56 --json")
    p = actions.add_parser("show", help="one incident with its ladder position and history",
                           description="One incident: its ladder position and its whole history.")
    p.add_argument("id", type=int, help="incident id (from 'incidents list')")
    add_json(p)
    p.set_defaults(func=cmd_show)
    examples(p, "layerboot incidents show 12", "layerboot incidents show 12 --json")
    for name, state, text in (("pause", "paused", "stop the ladder (the incident still closes by itself)"),
                              ("resume", "open", "let the ladder go on"),
                              ("close", "closed", "close it now (it reopens if the condition persists)")):
        p = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("id", type=int, help="incident id (from 'incidents list')")
        add_json(p)
        p.set_defaults(func=cmd_set_state, state=state)
        examples(p, f"layerboot incidents {name} 12")


def _records(ctx: Context):  # noqa: ANN202
    from layerboot.server.db import open_database
    from layerboot.server.monitor.records import MonitorRecords
    ctx.ready_store()
    return MonitorRecords(open_database(ctx.config, ctx.paths))


def cmd_list(ctx: Context) -> int:
    from layerboot.server.nodes import normalize_mac
    a = ctx.args
    states = ("open", "paused", "closed") if a.all else ("open", "paused")
    incidents = _records(ctx).list(states=states, mac=normalize_mac(a.node) if a.node else None, type=a.type)
    if a.json:
        print_json({"incidents": [i.to_dict() for i in incidents]})
        return 0
    types = ctx.config.monitor_incidents
    rows = []
    for i in incidents:
        ladder = types[i.type].ladder
        step = (f"{i.step + 1}/{len(ladder)} {ladder[i.step].action}" if i.step < len(ladder) and i.state != "closed"
                else "done" if i.state != "closed" else "-")
        rows.append([i.id, i.type, i.mac, i.state + (" FLAGGED" if i.flagged else ""), iso(i.opened),
                     step, i.summary[:70]])
    print(table(["ID", "TYPE", "NODE", "STATE", "OPENED", "NEXT STEP", "WHAT"], rows) if rows else
          "no incidents" + ("" if a.all else " open (--all shows closed ones)"))
    return 0


def cmd_show(ctx: Context) -> int:
    records = _records(ctx)
    incident = records.get(ctx.args.id)
    history = records.history(incident.id)
    if ctx.args.json:
        print_json(incident.to_dict() | {"history": [h.to_dict() for h in history]})
        return 0
    from layerboot.server.monitor.ladder import describe
    print(describe(incident, ctx.config.monitor_incidents[incident.type], history), end="")
    if incident.next_at is not None and incident.state == "open":
        print(f"next step due: {iso(incident.next_at)}")
    return 0


def cmd_set_state(ctx: Context) -> int:
    incident = _records(ctx).set_state(ctx.args.id, ctx.args.state)
    if ctx.args.json:
        print_json(incident.to_dict())
    else:
        print(f"incident {incident.id} ({incident.type} on {incident.mac}) is {incident.state}")
    return 0
