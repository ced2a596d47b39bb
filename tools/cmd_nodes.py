"""``layerboot nodes`` and ``layerboot uploads``: the node registry and the upload queue (server side).

Both work on the daemon's sqlite database directly (Paths.database), so they work whether layerbootd runs or not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.output import table


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("nodes", help="register nodes (MAC -> profile, token, SSH key) and see their boots",
                            description="Without an action: list the nodes with their last boot report.")
    parser.set_defaults(func=cmd_list)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    p = actions.add_parser("register", help="register a node; prints its upload token once")
    p.add_argument("mac")
    p.add_argument("--profile", required=True)
    p.add_argument("--ssh-key", type=Path, action="append", default=[], metavar="FILE",
                   help="OpenSSH public key file allowed to upload over SFTP (repeatable)")
    p.add_argument("--replace", action="store_true", help="re-register: new token, forget old keys and reports")
    p.set_defaults(func=cmd_register)

    actions.add_parser("list", help="list nodes with last seen, generation booted, failures").set_defaults(
        func=cmd_list)

    p = actions.add_parser("show", help="one node with its recent boot reports")
    p.add_argument("mac")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = actions.add_parser("remove", help="forget a node (its tokens stop working at once)")
    p.add_argument("mac")
    p.set_defaults(func=cmd_remove)

    p = actions.add_parser("set-profile", help="boot a node from another profile")
    p.add_argument("mac")
    p.add_argument("profile")
    p.set_defaults(func=cmd_set_profile)

    p = actions.add_parser("add-key", help="allow another SSH public key for a node's SFTP uploads")
    p.add_argument("mac")
    p.add_argument("key", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_add_key)

    uploads = sub.add_parser("uploads", help="uploads received by layerbootd: list, approve held ones, policy")
    uploads.set_defaults(func=cmd_uploads_list, state=None)
    uactions = uploads.add_subparsers(dest="action", metavar="ACTION")
    p = uactions.add_parser("list", help="list uploads: state, bake attempts, next try, last error")
    p.add_argument("--state", choices=("receiving", "received", "baking", "retry", "baked", "failed", "held"))
    p.set_defaults(func=cmd_uploads_list)
    p = uactions.add_parser("approve", help="append a held upload's layer to its profile (new generation)")
    p.add_argument("id")
    p.set_defaults(func=cmd_uploads_approve)
    p = uactions.add_parser("reject", help="drop a held upload (its layer is not appended), or a queued one")
    p.add_argument("id")
    p.set_defaults(func=cmd_uploads_reject)
    p = uactions.add_parser("retry", help="bake uploads waiting to retry now (after fixing what failed)",
                            description="Make one upload (ID) or every upload in state 'retry' due at once; "
                                        "a running layerbootd takes them within a few seconds.")
    p.add_argument("id", nargs="?")
    p.set_defaults(func=cmd_uploads_retry)
    p = uactions.add_parser("usage", help="what each node keeps on the server against its quota")
    p.set_defaults(func=cmd_uploads_usage)
    p = uactions.add_parser("policy", help="show or set a profile's upload policy (auto: append, hold: wait)")
    p.add_argument("profile")
    p.add_argument("policy", nargs="?", choices=("auto", "hold"))
    p.set_defaults(func=cmd_uploads_policy)


def _registry(ctx: Context):  # noqa: ANN202
    from layerboot.server.db import connect
    from layerboot.server.nodes import Registry
    ctx.ready_store()
    return Registry(connect(ctx.paths.database), boot_token_ttl=ctx.config.server_boot_token_ttl)


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
    rows = []
    for n in _registry(ctx).all():
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
    rows = [[u.id, u.mac, u.profile, u.name, u.size, "held" if u.held else u.state, u.attempts,
             _epoch(u.next_try) if u.state == "retry" else "-", (u.layer or "-")[:12], u.generation or "-",
             safe(u.last_error if u.state == "retry" else u.message)] for u in uploads]
    print(table(["ID", "NODE", "PROFILE", "NAME", "BYTES", "STATE", "ATTEMPTS", "NEXT TRY", "LAYER", "GEN",
                 "MESSAGE"], rows) if rows else "no uploads")
    return 0


def _epoch(value: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value)) if value else "-"


def safe(text: str) -> str:
    """One line, no terminal control characters (messages can quote what a node sent)."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


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
    records = _records(ctx)
    if ctx.args.policy:
        ctx.profiles.current(ctx.args.profile)
        records.set_policy(ctx.args.profile, ctx.args.policy)
    print(f"{ctx.args.profile}: {records.policy(ctx.args.profile)}")
    return 0
