"""``layerboot nodes`` and ``layerboot uploads``: the node registry and the upload queue (server side).

Both work on the daemon's sqlite database directly (Paths.database), so they work whether layerbootd runs or not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import add_json, examples, print_json

MAC_HELP = "the node's MAC address (52:54:00:12:34:56; '-' or no separators also work)"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("nodes", help="register nodes (MAC -> profile, token, SSH key) and see their boots",
                            description="Without an action: list the nodes with their last boot report.")
    parser.set_defaults(func=cmd_list)
    add_json(parser)
    examples(parser, "layerboot nodes", "layerboot nodes --json")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", help="what to do (default: list)")

    p = actions.add_parser("register", help="register a node; prints its upload token once",
                           description="Register a node by MAC for a profile. Prints its upload token once; "
                                       "only its hash is stored.")
    p.add_argument("mac", help=MAC_HELP)
    p.add_argument("--profile", required=True, help="the profile the node boots")
    p.add_argument("--ssh-key", type=Path, action="append", default=[], metavar="FILE",
                   help="OpenSSH public key file allowed to upload over SFTP (repeatable)")
    p.add_argument("--replace", action="store_true", help="re-register: new token, forget old keys and reports")
    p.set_defaults(func=cmd_register)
    examples(p, "layerboot nodes register 52:54:00:12:34:56 --profile web",
             "layerboot nodes register 52:54:00:12:34:56 --profile web --ssh-key node.pub --replace")

    p = actions.add_parser("list", help="list nodes with last seen, generation booted, failures",
                           description="List the registered nodes with their last boot report.")
    add_json(p)
    p.set_defaults(func=cmd_list)
    examples(p, "layerboot nodes list", "layerboot nodes list --json")

    p = actions.add_parser("show", help="one node with its recent boot reports",
                           description="Show one node: profile, last seen, generation booted, failures, SSH "
                                       "keys and its recent boot reports with their timings.")
    p.add_argument("mac", help=MAC_HELP)
    add_json(p)
    p.set_defaults(func=cmd_show)
    examples(p, "layerboot nodes show 52:54:00:12:34:56", "layerboot nodes show 52:54:00:12:34:56 --json")

    p = actions.add_parser("remove", help="forget a node (its tokens stop working at once)",
                           description="Forget a node: its tokens, SSH keys and reports.")
    p.add_argument("mac", help=MAC_HELP)
    p.set_defaults(func=cmd_remove)
    examples(p, "layerboot nodes remove 52:54:00:12:34:56")

    p = actions.add_parser("set-profile", help="boot a node from another profile",
                           description="Boot a node from another profile from its next boot on.")
    p.add_argument("mac", help=MAC_HELP)
    p.add_argument("profile", help="the profile it boots from now on")
    p.set_defaults(func=cmd_set_profile)
    examples(p, "layerboot nodes set-profile 52:54:00:12:34:56 db")

    p = actions.add_parser("add-key", help="allow another SSH public key for a node's SFTP uploads",
                           description="Allow another OpenSSH public key to upload over SFTP as this node.")
    p.add_argument("mac", help=MAC_HELP)
    p.add_argument("key", type=Path, metavar="FILE", help="OpenSSH public key file (one line)")
    p.set_defaults(func=cmd_add_key)
    examples(p, "layerboot nodes add-key 52:54:00:12:34:56 node2.pub")

    uploads = sub.add_parser("uploads", help="uploads received by layerbootd: list, approve held ones, policy",
                             description="Without an action: list the uploads.")
    uploads.set_defaults(func=cmd_uploads_list, state=None)
    add_json(uploads)
    examples(uploads, "layerboot uploads", "layerboot uploads --json")
    uactions = uploads.add_subparsers(dest="action", metavar="ACTION", help="what to do (default: list)")
    p = uactions.add_parser("list", help="list uploads and their states",
                            description="List uploads: id, node, profile, size, state, layer, generation.")
    p.add_argument("--state", choices=("receiving", "received", "baking", "baked", "failed", "held"),
                   help="only uploads in this state ('held': baked, waiting for approval)")
    add_json(p)
    p.set_defaults(func=cmd_uploads_list)
    examples(p, "layerboot uploads list --state held", "layerboot uploads list --json")
    p = uactions.add_parser("approve", help="append a held upload's layer to its profile (new generation)",
                            description="Append a held upload's layer to its profile as a new generation.")
    p.add_argument("id", help="upload id (from 'uploads list')")
    p.set_defaults(func=cmd_uploads_approve)
    examples(p, "layerboot uploads approve 20250101120000-1a2b3c4d")
    p = uactions.add_parser("reject", help="drop a held upload (its layer is not appended)",
                            description="Drop a held upload: its layer is not appended ('store gc' deletes it).")
    p.add_argument("id", help="upload id (from 'uploads list')")
    p.set_defaults(func=cmd_uploads_reject)
    examples(p, "layerboot uploads reject 20250101120000-1a2b3c4d")
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
    return Registry(ctx.database(), boot_token_ttl=ctx.config.server_boot_token_ttl)


def _records(ctx: Context):  # noqa: ANN202
    from layerboot.server.uploads import UploadRecords
    return UploadRecords(_registry(ctx).conn, ctx.paths, default_policy=ctx.config.server_upload_policy)


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
    node, token = _registry(ctx).register(a.mac, a.profile, ssh_keys=keys, replace=a.replace)
    print(f"registered {node.mac} with profile {node.profile}" + (f" and {len(keys)} SSH key(s)" if keys else ""))
    print(f"upload token (shown once, only its hash is stored): {token}")
    return 0


def _when(value: str | None) -> str:
    return value.replace("+00:00", "Z") if value else "never"


def cmd_list(ctx: Context) -> int:
    nodes = _registry(ctx).all()
    if ctx.args.json:
        return print_json([n.to_dict() for n in nodes])
    rows = []
    for n in nodes:
        last = f"{n.last_stage} {'ok' if n.last_ok else 'FAILED'}" if n.last_stage else "-"
        rows.append([n.mac, n.profile + (" (auto)" if n.auto else ""), _when(n.last_seen),
                     n.last_generation if n.last_generation is not None else "-", last, n.failures, n.boots])
    print(table(["MAC", "PROFILE", "LAST SEEN", "GEN BOOTED", "LAST REPORT", "FAILURES", "BOOTS"], rows)
          if rows else "no nodes registered yet (layerboot nodes register MAC --profile P)")
    return 0


def cmd_show(ctx: Context) -> int:
    registry = _registry(ctx)
    node = registry.get(ctx.args.mac)
    events = registry.events(node.mac)
    if ctx.args.json:
        data = node.to_dict() | {"ssh_keys": registry.ssh_keys(node.mac), "events": [e.__dict__ for e in events]}
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(f"node {node.mac}: profile {node.profile}{' (auto-registered)' if node.auto else ''}, "
          f"registered {_when(node.created)}")
    print(f"last seen: {_when(node.last_seen)}; generation booted: {node.last_generation or '-'}; "
          f"boots: {node.boots}; failures: {node.failures}")
    print(f"ssh keys: {len(registry.ssh_keys(node.mac))}")
    if events:
        rows = [[_when(e.time), e.stage, "ok" if e.ok else "FAILED", e.generation if e.generation is not None else "-",
                 f"{e.elapsed:.2f}s" if e.elapsed is not None else "-", e.message,
                 " ".join(f"{k}={v:.2f}" for k, v in e.timings.items()) or "-"] for e in events]
        print(table(["TIME", "STAGE", "RESULT", "GEN", "ELAPSED", "MESSAGE", "TIMINGS"], rows))
    else:
        print("no boot reports yet")
    return 0


def cmd_remove(ctx: Context) -> int:
    registry = _registry(ctx)
    node = registry.get(ctx.args.mac)
    registry.remove(node.mac)
    print(f"removed {node.mac}")
    return 0


def cmd_set_profile(ctx: Context) -> int:
    ctx.profiles.current(ctx.args.profile)
    node = _registry(ctx).set_profile(ctx.args.mac, ctx.args.profile)
    print(f"{node.mac} now boots profile {node.profile}")
    return 0


def cmd_add_key(ctx: Context) -> int:
    registry = _registry(ctx)
    registry.add_ssh_key(ctx.args.mac, _read_key(ctx.args.key))
    print(f"{registry.get(ctx.args.mac).mac}: {len(registry.ssh_keys(ctx.args.mac))} SSH key(s)")
    return 0


def cmd_uploads_list(ctx: Context) -> int:
    records = _records(ctx)
    state = getattr(ctx.args, "state", None)
    uploads = records.list(state=None if state == "held" else state)
    if state == "held":
        uploads = [u for u in uploads if u.held]
    if ctx.args.json:
        return print_json([u.to_dict() | {"held": u.held} for u in uploads])
    rows = [[u.id, u.mac, u.profile, u.name, u.size, "held" if u.held else u.state, (u.layer or "-")[:12],
             u.generation or "-", u.message] for u in uploads]
    print(table(["ID", "NODE", "PROFILE", "NAME", "BYTES", "STATE", "LAYER", "GEN", "MESSAGE"], rows)
          if rows else "no uploads")
    return 0


def cmd_uploads_approve(ctx: Context) -> int:
    upload = _records(ctx).approve(ctx.args.id, ctx.profiles)
    print(f"upload {upload.id}: layer {upload.layer[:12] if upload.layer else '-'} is generation "
          f"{upload.generation} of {upload.profile}")
    return 0


def cmd_uploads_reject(ctx: Context) -> int:
    upload = _records(ctx).reject(ctx.args.id)
    print(f"upload {upload.id}: rejected (layer {upload.layer[:12] if upload.layer else '-'} stays unused)")
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
