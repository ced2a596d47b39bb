"""``layerboot nodes`` and ``layerboot uploads``: the node registry and the upload queue (server side).

Both work on the daemon's database directly (server.database; by default the store's SQLite file), so they
work whether layerbootd runs or not.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.tools import fleet_args as fa
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import RESULT_JSON, add_json, examples, print_json


NODE_HELP = "the node: its name or any of its MACs (52:54:00:12:34:56; '-' or no separators also work)"
MAC_HELP = "the node's MAC address (52:54:00:12:34:56; '-' or no separators also work)"
UPLOAD_STATES = ("receiving", "received", "baking", "retry", "baked", "failed", "held")


def register(sub: argparse._SubParsersAction) -> None:
    from layerboot.tools import cmd_nodes_enroll, cmd_nodes_fleet

    parser = sub.add_parser("nodes", help="named nodes with interfaces, groups and clusters; registration, "
                            "credentials, boots, enrollment", description="Without an action: list the nodes with "
                            "their last boot report. Named nodes, groups, templates and enrollment: docs/nodes.md; "
                            "credentials (boot tokens, node secrets, asset keys): docs/security.md. A node is named "
                            "by its name or any of its MACs.")
    parser.set_defaults(func=cmd_nodes_fleet.cmd_list, filter_group=None, filter_cluster=None, filter_profile=None,
                        filter_state=None)
    add_json(parser)
    examples(parser, "layerboot nodes", "layerboot nodes --json")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", help="what to do (default: list)")
    cmd_nodes_fleet.register_actions(actions)
    cmd_nodes_enroll.register_actions(actions)

    p = actions.add_parser("register", help="register a node by MAC only; prints its node secret (write "
                           "credential) once",
                           description="Register a node by MAC for a profile. Prints its first node secret once; "
                                       "only its hash is stored. 'nodes add' registers a named node.")
    p.add_argument("mac", help=MAC_HELP)
    p.add_argument("--profile", required=True, help="the profile the node boots")
    p.add_argument("--asset-key", metavar="UUID:SERIAL",
                   help="the node's SMBIOS identity as 'layerboot asset-key' prints it on the node: lets the "
                        "diskless node claim its own node secret at boot")
    p.add_argument("--ssh-key", type=Path, action="append", default=[], metavar="FILE",
                   help="OpenSSH public key file allowed to upload over SFTP (repeatable)")
    p.add_argument("--replace", action="store_true",
                   help="re-register: new secret, forget old secrets, keys and reports, revoke boot tokens")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_register)
    examples(p, "layerboot nodes register 52:54:00:12:34:56 --profile web",
             "layerboot nodes register 52:54:00:12:34:56 --profile web --asset-key UUID:SERIAL --ssh-key node.pub")

    p = actions.add_parser("secret", help="node secrets (write credentials): rotate or list them",
                           description="Node secrets are the nodes' write credentials (uploads, heartbeats).")
    secret = p.add_subparsers(dest="secret_action", metavar="ACTION", required=True, help="rotate or list")
    q = secret.add_parser("rotate", help="forget every secret of the node and print a new one (once)",
                          description="Forget every secret of the node and print a new one, once.")
    q.add_argument("mac", metavar="NODE", help=NODE_HELP)
    add_json(q, RESULT_JSON)
    q.set_defaults(func=cmd_secret_rotate)
    examples(q, "layerboot nodes secret rotate 52:54:00:12:34:56", "layerboot nodes secret rotate n001")
    q = secret.add_parser("list", help="the node's secrets: origin, created, last used (never the secrets)",
                          description="The node's secrets: origin, created, last used (never the secrets).")
    q.add_argument("mac", metavar="NODE", help=NODE_HELP)
    add_json(q)
    q.set_defaults(func=cmd_secret_list)
    examples(q, "layerboot nodes secret list 52:54:00:12:34:56", "layerboot nodes secret list n001 --json")

    p = actions.add_parser("revoke-tokens", help="refuse every boot token the node was given so far",
                           description="Refuse every boot token issued to the node until now (it gets a new one "
                                       "at its next PXE boot).")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_revoke_tokens)
    examples(p, "layerboot nodes revoke-tokens 52:54:00:12:34:56")

    p = actions.add_parser("boot-token", help="print a read-only boot token for a node (e.g. for the command "
                           "line of an A/B disk that reports boot events)",
                           description="Print a read-only boot token for a node.")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="valid this long (default server.boot_token_ttl)")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_boot_token)
    examples(p, "layerboot nodes boot-token 52:54:00:12:34:56 --ttl 3600")

    p = actions.add_parser("list", help="list nodes: name, MAC, profile, cluster, groups, address, last boot",
                           description="Every node (named, or registered by MAC only) with its last boot report, "
                                       "filtered. --json prints the records of GET /api/v1/nodes.")
    p.add_argument("--group", dest="filter_group", metavar="GROUP", help="only members of this group")
    p.add_argument("--cluster", dest="filter_cluster", metavar="CLUSTER", help="only members of this cluster")
    p.add_argument("--profile", dest="filter_profile", metavar="PROFILE", help="only nodes booting this profile")
    p.add_argument("--state", dest="filter_state", metavar="STATE",
                   choices=("up", "down", "booting", "stuck", "failed", "booted", "unknown"),
                   help="only nodes the monitor sees in this state (see 'nodes status')")
    add_json(p)
    p.set_defaults(func=cmd_nodes_fleet.cmd_list)
    examples(p, "layerboot nodes list", "layerboot nodes list --cluster c1 --state down",
             "layerboot nodes list --json")

    p = actions.add_parser("show", help="one node: its configuration as it boots (and where each value comes "
                           "from), host keys, manifest, recent boot reports",
                           description="Show one node: profile, last seen, generation booted, failures, asset "
                                       "key, secrets, SSH keys and its recent boot reports with their timings; for "
                                       "a named node also its interfaces and settings as it boots (with where "
                                       "each comes from), its SSH host keys and per-node manifest. --json prints "
                                       "the record of GET /api/v1/nodes/NODE.")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    add_json(p)
    p.set_defaults(func=cmd_show)
    examples(p, "layerboot nodes show 52:54:00:12:34:56", "layerboot nodes show n001 --json")

    p = actions.add_parser("status", help="live status: state, heartbeat age, generation, pin, open incidents",
                           description="Each node's state as layerbootd's monitor sees it (up, down, booting, "
                                       "stuck, failed, booted, unknown; see docs/monitor.md), its last heartbeat, "
                                       "the generation it runs against its profile's newest, its last good and "
                                       "pinned generation and its open incidents.")
    p.add_argument("macs", nargs="*", metavar="NODE", help="only these nodes (names or MACs)")
    add_json(p)
    p.set_defaults(func=cmd_status)
    examples(p, "layerboot nodes status", "layerboot nodes status 52:54:00:12:34:56 --json")

    p = actions.add_parser("pin", help="boot a node on one generation of its profile, not the newest",
                           description="GET /nodes/MAC/manifest then serves that generation, signed afresh with "
                                       "a new serial (so nodes with a cache disk accept it). The pin stays until "
                                       "'nodes unpin' or 'nodes set-profile'.")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    p.add_argument("generation", type=int, help="the generation of its profile to boot")
    p.add_argument("--reason", default="", help="why (shown in 'nodes status --json' and 'nodes show')")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_pin)
    examples(p, "layerboot nodes pin 52:54:00:12:34:56 4 --reason 'generation 5 breaks the NIC driver'")

    p = actions.add_parser("unpin", help="boot the profile's newest generation again",
                           description="Drop a node's generation pin: it boots its profile's newest generation.")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_unpin)
    examples(p, "layerboot nodes unpin 52:54:00:12:34:56")

    p = actions.add_parser("remove", help="forget a node (its tokens stop working at once; a named node's host "
                           "keys and node layers go too)",
                           description="Forget a node: its secrets, SSH keys and reports; a named node's host keys "
                                       "and node layers too.")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_remove)
    examples(p, "layerboot nodes remove 52:54:00:12:34:56", "layerboot nodes remove n001")

    p = actions.add_parser("set-profile", help="boot a node from another profile",
                           description="Boot a node from another profile from its next boot on (a named node: "
                                       "its own profile setting, above its groups' and cluster's).")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    p.add_argument("profile", help="the profile it boots from now on")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_set_profile)
    examples(p, "layerboot nodes set-profile 52:54:00:12:34:56 db")

    p = actions.add_parser("add-key", help="allow another SSH public key for a node's SFTP uploads",
                           description="Allow another OpenSSH public key to upload over SFTP as this node.")
    p.add_argument("mac", metavar="NODE", help=NODE_HELP)
    p.add_argument("key", type=Path, metavar="FILE", help="OpenSSH public key file (one line)")
    add_json(p, RESULT_JSON)
    p.set_defaults(func=cmd_add_key)
    examples(p, "layerboot nodes add-key 52:54:00:12:34:56 node2.pub")

    uploads = sub.add_parser("uploads", help="uploads received by layerbootd: list, approve held ones, policy",
                             description="Without an action: list the uploads.")
    uploads.set_defaults(func=cmd_uploads_list, state=None)
    add_json(uploads)
    examples(uploads, "layerboot uploads", "layerboot uploads --json")
    uactions = uploads.add_subparsers(dest="action", metavar="ACTION", help="what to do (default: list)")
    p = uactions.add_parser("list", help="list uploads: state, bake attempts, next try, last error",
                            description="List uploads: id, node, profile, size, state, attempts, next try, "
                                        "layer, generation, message. --json prints the records of "
                                        "GET /api/v1/uploads (newest first).")
    p.add_argument("--state", choices=UPLOAD_STATES,
                   help="only uploads in this state ('held': baked, waiting for approval)")
    add_json(p)
    p.set_defaults(func=cmd_uploads_list)
    examples(p, "layerboot uploads list --state held", "layerboot uploads list --json")
    p = uactions.add_parser("approve", help="append a held upload's layer to its profile (new generation)",
                            description="Append a held upload's layer to its profile as a new generation.")
    p.add_argument("id", help="upload id (from 'uploads list')")
    p.set_defaults(func=cmd_uploads_approve)
    examples(p, "layerboot uploads approve 20250101120000-1a2b3c4d")
    p = uactions.add_parser("reject", help="drop a held upload (its layer is not appended), or a queued one",
                            description="Drop a held upload (its layer is not appended and is removed unless "
                                        "something else uses it), or one waiting in the queue.")
    p.add_argument("id", help="upload id (from 'uploads list')")
    p.set_defaults(func=cmd_uploads_reject)
    examples(p, "layerboot uploads reject 20250101120000-1a2b3c4d")
    p = uactions.add_parser("retry", help="bake uploads waiting to retry now (after fixing what failed)",
                            description="Make one upload (ID) or every upload in state 'retry' due at once; "
                                        "a running layerbootd takes them within a few seconds.")
    p.add_argument("id", nargs="?", help="upload id (default: every upload waiting to retry)")
    p.set_defaults(func=cmd_uploads_retry)
    examples(p, "layerboot uploads retry", "layerboot uploads retry 20250101120000-1a2b3c4d")
    p = uactions.add_parser("usage", help="what each node keeps on the server against its quota",
                            description="Per node: queued, failed (kept), held uploads and SFTP files, against "
                                        "server.node_max_uploads and server.node_max_bytes.")
    add_json(p)
    p.set_defaults(func=cmd_uploads_usage)
    examples(p, "layerboot uploads usage", "layerboot uploads usage --json")
    p = uactions.add_parser(
        "policy", help="show or set a profile's upload policy (auto/hold, and the content it may carry)",
        description="Without options: show the profile's policy. 'auto' appends each baked upload as a new "
                    "generation, 'hold' waits for 'uploads approve'. Uploads carrying setuid/setgid files "
                    "(setuid), file capabilities (caps) or device nodes (devices) are refused unless the "
                    "profile allows that class; --allow adds classes, --deny removes them (each takes a "
                    "comma-separated list, or 'all').")
    p.add_argument("profile", help="profile name")
    p.add_argument("policy", nargs="?", choices=("auto", "hold"),
                   help="auto: append each baked upload; hold: wait for 'uploads approve'")
    p.add_argument("--allow", action="append", default=[], metavar="CLASSES",
                   help="allow these content classes: setuid, caps, devices, all")
    p.add_argument("--deny", action="append", default=[], metavar="CLASSES",
                   help="refuse these content classes again")
    p.set_defaults(func=cmd_uploads_policy)
    examples(p, "layerboot uploads policy web", "layerboot uploads policy web auto --allow setuid,caps")


def _registry(ctx: Context):  # noqa: ANN202
    from layerboot.server.nodes import Registry
    return Registry(ctx.database())


def _mac(ctx: Context) -> str:
    """The node the command names (ctx.args.mac: a name or any of its MACs), as its key MAC."""
    return fa.key_mac(ctx, ctx.args.mac)


def _secrets(ctx: Context):  # noqa: ANN202
    from layerboot.server.auth.nodesecret import NodeSecrets
    return NodeSecrets(_registry(ctx).db)


def _records(ctx: Context):  # noqa: ANN202
    from layerboot.server.uploads import UploadRecords
    return UploadRecords(_registry(ctx).db, ctx.paths, default_policy=ctx.config.server_upload_policy)


def _read_key(path: Path) -> str:
    from layerboot.server.sshkeys import check_public_key
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise LayerbootError(f"cannot read SSH key {path}: {err.strerror}") from None
    return check_public_key(text, source=str(path))


def cmd_register(ctx: Context) -> int:
    a = ctx.args
    ctx.profiles.current(a.profile)   # the profile must exist
    keys = tuple(_read_key(p) for p in a.ssh_key)
    node, secret = _registry(ctx).register(a.mac, a.profile, ssh_keys=keys, replace=a.replace,
                                           asset_key=a.asset_key)
    text = (f"registered {node.mac} with profile {node.profile}" + (f" and {len(keys)} SSH key(s)" if keys else "")
            + (", asset key set: it claims its own secret at boot" if node.asset_key else "")
            + f"\nnode secret (shown once, only its hash is stored): {secret}")
    return fa.done(ctx, text, node.public_dict() | {"secret": secret})


def cmd_secret_rotate(ctx: Context) -> int:
    node = _registry(ctx).get(_mac(ctx))
    secret = _secrets(ctx).rotate(node.mac)
    return fa.done(ctx, f"{node.mac}: every earlier secret is revoked\nnode secret (shown once, only its hash is "
                        f"stored): {secret}", {"node": node.mac, "secret": secret})


def cmd_secret_list(ctx: Context) -> int:
    node = _registry(ctx).get(_mac(ctx))
    secrets = _secrets(ctx).list(node.mac)
    if ctx.args.json:
        return print_json({"node": node.mac, "secrets": [{"hash": r.hash[:12], "origin": r.origin,
                                                          "created": r.created, "last_used": r.last_used}
                                                         for r in secrets]})
    rows = [[r.hash[:12], r.origin, _epoch(r.created), _epoch(r.last_used)] for r in secrets]
    print(table(["HASH", "ORIGIN", "CREATED", "LAST USED"], rows) if rows else f"{node.mac} has no node secret")
    return 0


def cmd_revoke_tokens(ctx: Context) -> int:
    node = _registry(ctx).revoke_tokens(_mac(ctx))
    return fa.done(ctx, f"{node.mac}: boot tokens issued until {_epoch(node.tokens_not_before)} are refused; the node "
                        "gets a new one at its next PXE boot", {"node": node.mac,
                                                                "tokens_not_before": node.tokens_not_before})


def cmd_boot_token(ctx: Context) -> int:
    from layerboot.server.auth.boottoken import open_boot_tokens
    if ctx.args.ttl is not None and ctx.args.ttl <= 0:
        raise LayerbootError(f"--ttl {ctx.args.ttl}: a boot token must stay valid for at least one second")
    node = _registry(ctx).get(_mac(ctx))
    tokens = open_boot_tokens(ctx.paths.boot_token_key, ctx.config.server_boot_token_ttl)
    token = tokens.mint(node.mac, ttl=ctx.args.ttl)
    return fa.done(ctx, token, {"node": node.mac, "token": token})


def _epoch(value: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value)) if value else "never"


def _when(value: str | None) -> str:
    return value.replace("+00:00", "Z") if value else "never"


def cmd_show(ctx: Context) -> int:
    from layerboot.server.api.fleet import fleet_detail, node_detail
    from layerboot.tools.cmd_nodes_fleet import print_fleet_details
    if ctx.args.json:       # the record of GET /api/v1/nodes/NODE
        return print_json(node_detail(ctx.server_state(), ctx.args.mac))
    registry = _registry(ctx)
    node = registry.get(_mac(ctx))
    events = registry.events(node.mac)
    named = fa.fleet(ctx).find(node.mac)
    details = fleet_detail(ctx.server_state(), named) if named is not None else None
    print(f"node {node.name or node.mac}: {node.mac}, profile {node.profile}"
          f"{' (auto-registered)' if node.auto else ''}, registered {_when(node.created)}")
    if details:
        print_fleet_details(details)
    print(f"last seen: {_when(node.last_seen)}; generation booted: {node.last_generation or '-'}; "
          f"boots: {node.boots}; failures: {node.failures}")
    from layerboot.server.auth.nodesecret import NodeSecrets
    secrets = NodeSecrets(registry.db).list(node.mac)
    print(f"ssh keys: {len(registry.ssh_keys(node.mac))}; node secrets: {len(secrets)}; asset key: "
          f"{node.asset_key or 'none'}"
          + (f"; boot tokens until {_epoch(node.tokens_not_before)} revoked" if node.tokens_not_before else ""))
    if node.good_generation is not None or node.pinned_generation is not None:
        print(f"last good generation: {node.good_generation or '-'}; pinned: "
              + (f"generation {node.pinned_generation} ({node.pin_reason})" if node.pinned_generation else "no"))
    if events:
        rows = [[_when(e.time), e.stage, "ok" if e.ok else "FAILED", e.generation if e.generation is not None else "-",
                 f"{e.elapsed:.2f}s" if e.elapsed is not None else "-", e.message,
                 " ".join(f"{k}={v:.2f}" for k, v in e.timings.items()) or "-"] for e in events]
        print(table(["TIME", "STAGE", "RESULT", "GEN", "ELAPSED", "MESSAGE", "TIMINGS"], rows))
    else:
        print("no boot reports yet")
    return 0


def cmd_status(ctx: Context) -> int:
    from layerboot.server.monitor.detectors import Limits
    from layerboot.server.monitor.records import MonitorRecords
    from layerboot.server.monitor.status import fleet_status

    registry = _registry(ctx)
    fleet = fleet_status(registry, MonitorRecords(registry.db), ctx.profiles, Limits.from_config(ctx.config))
    if ctx.args.macs:
        wanted = {fa.key_mac(ctx, m) for m in ctx.args.macs}     # "no node named ..." for an unknown one
        fleet = [n for n in fleet if n.mac in wanted]
    if ctx.args.json:
        return print_json({"nodes": [n.to_dict() for n in fleet]})
    rows = [[n.mac, n.profile, n.state, f"{n.heartbeat_age:.0f}s ago" if n.heartbeat_age is not None else "never",
             f"{n.generation if n.generation is not None else '-'}/{n.newest if n.newest is not None else '-'}",
             n.good_generation if n.good_generation is not None else "-",
             n.pinned_generation if n.pinned_generation is not None else "-", ", ".join(n.incidents) or "-"]
            for n in fleet]
    print(table(["MAC", "PROFILE", "STATE", "HEARTBEAT", "GEN/NEWEST", "GOOD", "PINNED", "INCIDENTS"], rows)
          if rows else "no nodes registered yet (layerboot nodes register MAC --profile P)")
    return 0


def cmd_pin(ctx: Context) -> int:
    from layerboot.server.monitor.pins import check_pin
    registry = _registry(ctx)
    node = registry.get(_mac(ctx))
    gen = check_pin(ctx.profiles, node, ctx.args.generation)
    node = registry.pin(node.mac, gen.number, ctx.args.reason or "pinned by an admin")
    return fa.done(ctx, f"{node.mac} boots generation {gen.number} of {node.profile} (newest: "
                        f"{ctx.profiles.current(node.profile).number}) until 'layerboot nodes unpin {node.mac}'",
                   node.public_dict())


def cmd_unpin(ctx: Context) -> int:
    registry = _registry(ctx)
    node = registry.get(_mac(ctx))
    if node.pinned_generation is None:
        raise LayerbootError(f"node {node.mac} is not pinned")
    node = registry.unpin(node.mac)
    return fa.done(ctx, f"{node.mac} boots the newest generation of {node.profile} again "
                        f"({ctx.profiles.current(node.profile).number})", node.public_dict())


def cmd_remove(ctx: Context) -> int:
    from layerboot.server.fleet.hostkeys import forget
    from layerboot.server.fleet.nodelayer import drop_node_layer
    registry = _registry(ctx)
    node = registry.get(_mac(ctx))
    f = fa.fleet(ctx)
    record, row = f.find(node.mac), f.manifest_row(node.mac)
    registry.remove(node.mac)
    if record is not None:
        forget(ctx.paths, record.machine_id)
    for digest in (row.layer, row.previous_layer) if row is not None else ():
        if digest:
            drop_node_layer(ctx.store, digest)
    return fa.done(ctx, f"removed {node.name or node.mac}" + (" (its host keys and node layers too)" if record else ""),
                   {"node": node.mac, "name": node.name, "removed": True})


def cmd_set_profile(ctx: Context) -> int:
    ctx.profiles.current(ctx.args.profile)
    mac = _mac(ctx)
    f = fa.fleet(ctx)
    record = f.find(mac)
    if record is not None:      # a named node: its own profile setting (groups' and cluster's stay below it)
        from dataclasses import replace
        f.save([replace(record, own=replace(record.own, profile=ctx.args.profile))],
               check_profile=lambda name: ctx.profiles.current(name))
        node = _registry(ctx).get(mac)
    else:
        node = _registry(ctx).set_profile(mac, ctx.args.profile)
    return fa.done(ctx, f"{node.name or node.mac} now boots profile {node.profile}", node.public_dict())


def cmd_add_key(ctx: Context) -> int:
    registry = _registry(ctx)
    mac = _mac(ctx)
    registry.add_ssh_key(mac, _read_key(ctx.args.key))
    count = len(registry.ssh_keys(mac))
    return fa.done(ctx, f"{mac}: {count} SSH key(s)", {"node": mac, "ssh_keys": count})


def cmd_uploads_list(ctx: Context) -> int:
    records = _records(ctx)
    uploads = records.listed(getattr(ctx.args, "state", None))
    if ctx.args.json:       # the records of GET /api/v1/uploads, newest first
        return print_json({"uploads": [u.public_dict() for u in reversed(uploads)]})
    rows = [[u.id, u.mac, u.profile, u.name, u.size, "held" if u.held else u.state, u.attempts,
             _epoch(u.next_try) if u.state == "retry" else "-", (u.layer or "-")[:12], u.generation or "-",
             u.last_error if u.state == "retry" else u.message] for u in uploads]
    print(table(["ID", "NODE", "PROFILE", "NAME", "BYTES", "STATE", "ATTEMPTS", "NEXT TRY", "LAYER", "GEN",
                 "MESSAGE"], rows) if rows else "no uploads")
    return 0


def cmd_uploads_retry(ctx: Context) -> int:
    count = _records(ctx).retry_now(ctx.args.id)
    print(f"{count} upload(s) due now" + ("" if count else " (only uploads in state 'retry' wait for a retry)"))
    return 0


def cmd_uploads_usage(ctx: Context) -> int:
    from layerboot.server.quota import node_usage
    records = _records(ctx)
    cfg = ctx.config
    rows = []
    for node in _registry(ctx).all():
        usage = node_usage(records, ctx.store, node.mac)
        rows.append([node.mac, usage.pending, usage.failed, usage.held, usage.area, usage.count,
                     cfg.server_node_max_uploads or "-", usage.bytes, cfg.server_node_max_bytes or "-"])
    if ctx.args.json:
        return print_json({"usage": [dict(zip(("node", "queued", "failed", "held", "sftp", "uploads", "max_uploads",
                                                "bytes", "max_bytes"), row)) for row in rows]})
    print(table(["NODE", "QUEUED", "FAILED", "HELD", "SFTP", "UPLOADS", "MAX", "BYTES", "MAX BYTES"], rows)
          if rows else "no nodes registered")
    return 0


def cmd_uploads_approve(ctx: Context) -> int:
    upload = _records(ctx).approve(ctx.args.id, ctx.profiles)
    print(f"upload {upload.id}: layer {upload.layer[:12] if upload.layer else '-'} is generation "
          f"{upload.generation} of {upload.profile}")
    return 0


def cmd_uploads_reject(ctx: Context) -> int:
    upload = _records(ctx).reject(ctx.args.id, ctx.profiles)
    if not upload.layer:
        print(f"upload {upload.id}: rejected; its file is removed")
    elif ctx.store.paths.object_meta(upload.layer).exists():
        print(f"upload {upload.id}: rejected; layer {upload.layer[:12]} stays (something else uses it)")
    else:
        print(f"upload {upload.id}: rejected; layer {upload.layer[:12]} is removed from the store")
    return 0


def cmd_uploads_policy(ctx: Context) -> int:
    from layerboot.overlays.content import CLASSES, format_classes, parse_classes
    a = ctx.args
    records = _records(ctx)
    allow, deny = parse_classes(a.allow), parse_classes(a.deny)
    if allow & deny:
        raise LayerbootError(f"{format_classes(allow & deny)} is both allowed and denied")
    if a.policy or a.allow or a.deny:
        ctx.profiles.current(a.profile)
    if a.policy:
        records.set_policy(a.profile, a.policy)
    if a.allow or a.deny:
        records.set_allowed(a.profile, (records.allowed(a.profile) | allow) - deny)
    allowed = records.allowed(a.profile)
    refused = frozenset(CLASSES) - allowed
    print(f"{a.profile}: {records.policy(a.profile)}; content allowed: {format_classes(allowed)}; "
          f"refused: {format_classes(refused)}")
    return 0
