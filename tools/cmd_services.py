"""``layerboot services``: central syslog, time and DNS next to the boot server (server/services/, docs/services.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import add_json, examples, print_json

DESCRIPTION = """\
Configure the site services on this server's own daemons, from the [services] settings and the node registry:
rsyslog receives nodes' logs (syslog), chrony serves time (time), dnsmasq answers for every node's name (dns).
'apply' checks the configuration with each daemon before writing anything, writes what changed under
services.root (/etc/rsyslog.d, /etc/chrony/conf.d, /etc/dnsmasq.d) and restarts the daemon (systemd); layerbootd
keeps the node-dependent parts current afterwards. See docs/services.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("services", help="site services: central syslog, time and DNS for the nodes",
                            description=DESCRIPTION)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")

    p = actions.add_parser("status", help="each service: enabled, configured, running, listening, last error")
    add_json(p)
    p.set_defaults(func=cmd_status)
    examples(p, "layerboot services status", "layerboot services status --json")

    p = actions.add_parser("render", help="print the files 'apply' would write (or write them to a directory)")
    p.add_argument("service", nargs="*", metavar="SERVICE", help="syslog, time, dns (default: the enabled ones)")
    p.add_argument("--node", action="store_true",
                   help="the node side instead: files for a node's per-node layer (rsyslog forwarding, journald, "
                        "chrony, timesyncd)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="write the files below DIR (as paths from /) instead of printing them")
    p.set_defaults(func=cmd_render)
    examples(p, "layerboot services render dns",
             "layerboot services render --node -o /tmp/site-node      # the node-side files, for an overlay layer")

    p = actions.add_parser("apply", help="check, write and restart: the services' configuration goes live")
    p.add_argument("service", nargs="*", metavar="SERVICE", help="syslog, time, dns (default: the enabled ones)")
    p.add_argument("--no-restart", action="store_true",
                   help="write the files but leave the daemons alone (restart them yourself)")
    p.set_defaults(func=cmd_apply)
    examples(p, "layerboot services apply                # every enabled service",
             "layerboot services apply dns --no-restart")


def _site(ctx: Context):  # noqa: ANN202
    from layerboot.server.db import open_database
    from layerboot.server.nodes import Registry
    from layerboot.server.services.base import make_site

    registry = Registry(open_database(ctx.config, ctx.paths)) if ctx.paths.state.is_dir() else None
    return make_site(ctx.config, ctx.paths, registry)


def cmd_status(ctx: Context) -> int:
    from layerboot.server.services.manage import status

    try:
        site = _site(ctx)
    except LayerbootError as err:
        site = err
    rows = status(site, ctx.config, ctx.paths)
    if ctx.args.json:
        print_json({"services": [row.as_dict() for row in rows]})
        return 0
    lines = []
    for row in rows:
        running = f"pid {row.pid}" if row.pid else ("no" if row.installed else "not installed")
        listening = " ".join(row.listening) or "-"
        if row.missing:
            listening += f" (not: {' '.join(row.missing)})"
        lines.append([row.name, "yes" if row.enabled else "no", row.configured, running, listening,
                      row.last_error or "-"])
    print(table(["service", "enabled", "configured", "running", "listening", "last error"], lines))
    return 0


def cmd_render(ctx: Context) -> int:
    from layerboot.server.services.manage import rendered, select

    site = _site(ctx)
    if ctx.args.node:
        if ctx.args.service:
            raise LayerbootError("--node renders the node side of every enabled service; name no service")
        from layerboot.server.services.node import node_files

        files = {Path(path): text for path, text in node_files(ctx.config).items()}
        if not files:
            raise LayerbootError("no site service is enabled: nodes need no files",
                                 hint="set services.syslog.enabled or services.time.enabled in the config")
    else:
        services = select(ctx.args.service, ctx.config)
        if not services:
            raise LayerbootError("no site service is enabled", hint="name one (syslog, time, dns) or enable it "
                                 "in the config ([services.syslog] enabled = true, ...)")
        files = {}
        for service in services:
            config_files, data = rendered(site, service)
            files.update(config_files)
            files.update(data)
    if ctx.args.output:
        for path, text in files.items():
            target = ctx.args.output / path.relative_to(path.anchor)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(target)
        return 0
    for path, text in files.items():
        print(f"# ---- {path}")
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_apply(ctx: Context) -> int:
    from layerboot.server.services.manage import apply, select

    services = select(ctx.args.service, ctx.config)
    if not services:
        raise LayerbootError("no site service is enabled", hint="name one (syslog, time, dns) or enable it in the "
                             "config ([services.syslog] enabled = true, ...)")
    outcomes = apply(_site(ctx), services, restart=not ctx.args.no_restart)
    failed = False
    for outcome in outcomes:
        if outcome.error:
            failed = True
            print(f"{outcome.service}: FAILED: {outcome.error}")
            continue
        what = f"wrote {', '.join(outcome.changed)}" if outcome.changed else "unchanged"
        print(f"{outcome.service}: {what}" + "".join(f"; {action}" for action in outcome.actions))
    if failed:
        raise LayerbootError("some services were not applied (see above)", hint="'layerboot services status'")
    return 0
