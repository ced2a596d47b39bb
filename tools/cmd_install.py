"""``layerboot install``, ``layerboot ab`` and ``layerboot mark-good``: A/B disks with boot counting.

``install`` lays out a disk as a declared action list (``install plan`` prints it first), writes a profile's
signed chain into a slot and makes it boot on trial. ``ab update`` writes a new generation into the inactive
slot; ``mark-good`` (run on the node once it is healthy) confirms the booted slot; ``ab status`` shows both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from layerboot.atomic import scratch_dir
from layerboot.build import ab
from layerboot.build.bootloader import MAX_TRIES, SLOTS
from layerboot.build.data_layout import KINDS, preflight
from layerboot.build.disk_actions import DiskContext, execute
from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_public_key
from layerboot.run import run
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import examples

_SIZE = re.compile(r"^(\d+)\s*([MG]i?B?)?$", re.IGNORECASE)


def size_mib(text: str) -> int:
    """'512M', '2G', '300' (MiB) -> MiB."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512M or 2G")
    value = int(match.group(1))
    return value * 1024 if (match.group(2) or "M").upper().startswith("G") else value


def tries(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_TRIES:
        raise argparse.ArgumentTypeError(f"tries must be 1..{MAX_TRIES}")
    return value


def _install_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    # 'install plan --disk ...' must parse: the parent's copies are checked by hand in cmd_install
    p.add_argument("--disk", required=required, help="block device to install on (all of it), e.g. /dev/vda")
    p.add_argument("--profile", help="profile whose signed chain (from the local store) goes into the slot; with "
                                    "--server, the profile the node's manifest must be for")
    p.add_argument("-g", "--generation", type=int, help="default: the profile's current generation")
    _server_options(p)
    p.add_argument("--slot-size", type=size_mib, metavar="SIZE", help="size of each slot (default: 40%% of the "
                   "disk each; kept from an existing layout)")
    p.add_argument("--tries", type=tries, default=ab.DEFAULT_TRIES,
                   help=f"boot attempts a new slot gets before falling back (default {ab.DEFAULT_TRIES})")
    p.add_argument("--wipe", action="store_true", help="allow erasing a disk that holds anything else")
    p.add_argument("--data", choices=KINDS, default="plain",
                   help="the data area: plain ext4 on partition 5 (default), or across partition 5 and the "
                        "--data-disk disks: raid1 (mdadm), lvm (one linear volume), raid1-lvm, zfs-mirror; "
                        "recorded in layout.json on the ESP (docs/install.md, 'The data area')")
    p.add_argument("--data-disk", action="append", default=[], metavar="DEV",
                   help="a whole disk for the data area (repeatable); it gets a GPT with one partition")


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL", help="fetch this node's manifest and objects from layerbootd instead "
                                                  "of the local store")
    p.add_argument("--node", metavar="MAC", help="with --server: this node's MAC (default layerboot.node= on "
                                                "/proc/cmdline)")
    p.add_argument("--secret-file", "--token-file", dest="secret_file", type=Path, metavar="FILE",
                   help="with --server: file holding the node secret (default /run/layerboot/node.secret)")
    p.add_argument("--key", type=Path, help="with --server: the trusted public key (default: the store's)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("install", help="install a profile on a disk as A/B slots with boot counting",
                            description="Lay out DISK (BIOS boot, ESP, slot A, slot B, data), install GRUB, "
                                        "write the profile's chain into a slot and boot it on trial. Each "
                                        "action is reported; running it again skips what is already done.")
    _install_options(parser, required=False)
    parser.set_defaults(func=cmd_install)
    examples(parser, "layerboot install plan --disk /dev/vda --profile web    # look first",
             "layerboot install --disk /dev/vda --profile web",
             "layerboot install --disk /dev/sda --server http://10.0.0.1:8080 --node 52:54:00:12:34:56 "
             "--token-file /run/token --key signing.pub")
    plans = parser.add_subparsers(dest="action", metavar="ACTION", help="plan: show the actions only")
    plan = plans.add_parser("plan", help="print the action list without touching the disk",
                            description="Print the declared action list 'install' would run, touching nothing.")
    _install_options(plan)
    plan.add_argument("--json", action="store_true", help="one JSON object per action")
    plan.set_defaults(func=cmd_plan)
    examples(plan, "layerboot install plan --disk /dev/vda --profile web --json")

    abp = sub.add_parser("ab", help="A/B slots: status and updates",
                         description="Inspect and update a disk laid out by 'layerboot install'.")
    actions = abp.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    status = actions.add_parser("status", help="the slots' state, tries left and contents",
                                description="Show both slots: state (good, trial, bad, empty), tries left, "
                                            "what they hold, and which one boots next.")
    status.add_argument("--disk", help="default: the disk this system booted from")
    status.add_argument("--verify", action="store_true", help="re-hash each slot against its signed manifest")
    status.add_argument("--key", type=Path, help="with --verify: the trusted public key (default: the store's)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)
    examples(status, "layerboot ab status", "layerboot ab status --disk /dev/vda --verify --json")
    update = actions.add_parser("update", help="write a generation into the inactive slot and boot it on trial",
                                description="From the local store (--profile), or on the node itself from "
                                            "layerbootd (--server): then the node's manifest is verified with "
                                            "--key and only objects not already on the disk are downloaded.")
    update.add_argument("--disk", help="default: the disk this system booted from")
    update.add_argument("--profile", help="take the profile's signed chain from the local store")
    update.add_argument("-g", "--generation", type=int, help="with --profile: default the current generation")
    _server_options(update)
    update.add_argument("--tries", type=tries, default=ab.DEFAULT_TRIES,
                        help=f"boot attempts the new slot gets before falling back (default {ab.DEFAULT_TRIES})")
    update.set_defaults(func=cmd_update)
    examples(update, "layerboot ab update --disk /dev/vda --profile web",
             "layerboot ab update --server http://10.0.0.1:8080 --node 52:54:00:12:34:56 --token-file /run/token "
             "--key /etc/layerboot/signing.pub     # on the node")

    switch = actions.add_parser("switch", help="boot the other (confirmed) slot from now on: a manual rollback",
                                description="Make SLOT boot first from now on (it must hold a confirmed system).")
    switch.add_argument("slot", choices=SLOTS, help="the slot to boot")
    switch.add_argument("--disk", help="default: the disk this system booted from")
    switch.set_defaults(func=cmd_switch)
    examples(switch, "layerboot ab switch A")

    good = sub.add_parser("mark-good", help="confirm the slot this system booted from (stops the countdown)",
                          description="Run on the node once the new system is healthy. Without it, the slot "
                                      "is abandoned after its boot attempts are used up.")
    good.add_argument("--disk", help="default: the disk holding the slot named by layerboot.slot= on the "
                                     "kernel command line")
    good.add_argument("--slot", choices=SLOTS, help="default: the booted slot (from /proc/cmdline)")
    good.set_defaults(func=cmd_mark_good)
    examples(good, "layerboot mark-good", "layerboot mark-good --disk /dev/vda --slot B")


def _source(ctx: Context, disk: ab.AbDisk, target: str, scratch: Path) -> tuple[ab.SlotSource, bytes]:
    """The slot's content: from the local store (--profile) or from layerbootd (--server) into ``scratch``."""
    a = ctx.args
    if not a.server:
        if not a.profile:
            raise LayerbootError("give --profile NAME (local store) or --server URL (fetch from layerbootd)")
        public = load_public_key(ctx.paths.public_key)
        return ab.source_from_store(ctx.profiles, a.profile, a.generation, public), public
    from layerboot.build.ab_fetch import source_from_server
    from layerboot.server.client import boot_options, read_secret

    booted = boot_options()
    node = a.node or booted.get("node")
    if not node:
        raise LayerbootError("--server needs --node MAC (or run it on a node that layerboot booted)")
    if a.generation:
        raise LayerbootError("--generation is for --profile from the local store; the server sends the node's "
                             "current generation")
    secret = read_secret(a.secret_file)
    public = load_public_key(a.key or ctx.paths.public_key)
    source, stats = source_from_server(disk, a.server, node, secret, public, scratch, target=target,
                                       profile=a.profile or booted.get("profile"))
    print(f"fetched {stats.downloaded} object(s), {stats.downloaded_bytes} bytes; reused {stats.reused} "
          f"from the disk, {stats.reused_bytes} bytes")
    return source, public


def _check_disk(disk: str) -> None:
    if not os.path.exists(disk):
        raise LayerbootError(f"{disk} does not exist")
    mounted = [line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()]
    busy = {m for m in mounted if m == disk or (m.startswith(disk) and m[len(disk):].lstrip("p").isdigit())}
    if busy:
        raise LayerbootError(f"{disk} is in use: {', '.join(sorted(busy))} mounted", hint="unmount it first")


def _install_target(disk: ab.AbDisk) -> str:
    """The slot an install writes: the inactive one on a disk that already has A/B state, else A."""
    try:
        return ab.choose_target(disk.state(), disk.booted_slot())
    except LayerbootError:
        return "A"


def cmd_plan(ctx: Context) -> int:
    a = ctx.args
    disk = ab.AbDisk(a.disk, workdir=_scratch(ctx))
    with scratch_dir(_scratch(ctx), prefix="fetch.") as scratch:
        source, public = _source(ctx, disk, _install_target(disk), Path(scratch))
        actions = ab.plan_install(a.disk, source, public, slot_mib=a.slot_size, tries=a.tries, wipe=a.wipe,
                                  data=a.data, data_disks=_data_disks(a))
    for action in actions:
        if a.json:
            print(json.dumps(action.as_dict(), default=str, sort_keys=True))
        else:
            print(f"{action.id:<12} {action.type:<11} {action.describe()}")
    return 0


def cmd_install(ctx: Context) -> int:
    a = ctx.args
    if not a.disk or not (a.profile or a.server):
        raise LayerbootError("install needs --disk DEV and --profile NAME (or --server URL)",
                             hint="'layerboot install plan --disk DEV --profile NAME' shows what it would do")
    _check_disk(a.disk)
    for data_disk in _data_disks(a):
        _check_disk(data_disk)
    disk = ab.AbDisk(a.disk, workdir=_scratch(ctx))
    with scratch_dir(_scratch(ctx), prefix="fetch.") as scratch:
        source, public = _source(ctx, disk, _install_target(disk), Path(scratch))
        actions = ab.plan_install(a.disk, source, public, slot_mib=a.slot_size, tries=a.tries, wipe=a.wipe,
                                  data=a.data, data_disks=_data_disks(a))
        context = DiskContext(a.disk, wipe=a.wipe, workdir=_scratch(ctx))
        preflight(a.data)                      # tools and kernel support, before any disk is touched
        execute(actions, context)
    slot = context.values.get("slot")
    what = f"{source.manifest.profile} generation {source.manifest.generation}"
    if context.values.get("already"):
        print(f"{what} was already installed in slot {slot}; nothing to do")
    else:
        print(f"installed {what} in slot {slot} ({a.tries} boot attempts; confirm with 'layerboot mark-good' "
              "on the node)")
    return 0


def _data_disks(args: argparse.Namespace) -> tuple[str, ...]:
    for disk in args.data_disk:
        if not os.path.exists(disk):
            raise LayerbootError(f"--data-disk {disk} does not exist")
    return tuple(args.data_disk)


def _scratch(ctx: Context) -> Path:
    """Scratch space for mount points: the store's tmp/ when there is a store, else the system's."""
    try:
        tmp = ctx.paths.tmp
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp
    except (OSError, LayerbootError):
        return Path("/tmp")


def booted_disk(cmdline: str | None = None) -> str:
    """The disk holding the slot named by ``layerboot.slot=UUID=...`` on this system's kernel command line."""
    words = (Path("/proc/cmdline").read_text() if cmdline is None else cmdline).split()
    spec = next((w.partition("=")[2] for w in words if w.startswith("layerboot.slot=")), "")
    if not spec.startswith("UUID="):
        raise LayerbootError("this system did not boot from an A/B slot (no layerboot.slot= on the kernel "
                             "command line)", hint="pass --disk DEV")
    device = run(["blkid", "-U", spec[5:]], check=False).text.strip()
    if not device:
        raise LayerbootError(f"no block device has the slot's filesystem {spec}", hint="pass --disk DEV")
    parent = Path("/sys/class/block", os.path.basename(device)).resolve().parent.name
    return f"/dev/{parent}"


def _disk(ctx: Context) -> ab.AbDisk:
    disk = ab.AbDisk(ctx.args.disk or booted_disk(), workdir=_scratch(ctx))
    disk.layout()                     # "no A/B layout on DEV" before anything more specific
    return disk


def cmd_status(ctx: Context) -> int:
    disk = _disk(ctx)
    state = disk.state()
    public = load_public_key(ctx.args.key or ctx.paths.public_key) if ctx.args.verify else None
    booted = disk.booted_slot()
    rows, records = [], {}
    for slot in state.order:
        entry = state.slots[slot]
        if public is not None and entry.state != "empty":
            try:
                record = disk.verify_slot(slot, public)
                check = "verified"
            except LayerbootError as err:
                record, check = None, f"BAD: {err.message}"
        else:
            record = disk.read_record(slot)
            check = "-"
        records[slot] = record
        content = f"{record.profile} gen {record.generation} serial {record.serial}" if record else "(no record)"
        rows.append([slot, entry.state, entry.tries if entry.state == "trial" else "-",
                     "yes" if slot == booted else "", content, check])
    area = disk.layout().data
    if ctx.args.json:
        print(json.dumps({"order": state.order, "booted": booted, "grub_booted": state.booted,
                          "slots": {s: {"state": state.slots[s].state, "tries": state.slots[s].tries,
                                        "content": vars(records[s]) if records[s] else None} for s in SLOTS},
                          "data": area.to_dict()}, indent=1, sort_keys=True))
        return 0
    next_slot, _ = ab.pick_slot(state)
    print(table(["slot", "state", "tries left", "running", "content", "check"], rows))
    print(f"next boot: {next_slot or 'nothing bootable'}")
    print(f"data area: {area.describe() if area.members else 'ext4 on partition 5'}")
    return 0


def cmd_update(ctx: Context) -> int:
    a = ctx.args
    disk = _disk(ctx)
    booted = disk.booted_slot()
    slot = ab.choose_target(disk.state(), booted)
    with scratch_dir(_scratch(ctx), prefix="fetch.") as scratch:
        source, public = _source(ctx, disk, slot, Path(scratch))
        disk.update(source, public, tries=a.tries, slot=slot, progress=print)
    print(f"slot {slot} holds {source.manifest.profile} generation {source.manifest.generation}; it boots next "
          f"({a.tries} attempts)")
    return 0


def cmd_switch(ctx: Context) -> int:
    _disk(ctx).switch(ctx.args.slot)
    print(f"slot {ctx.args.slot} boots first from now on")
    return 0


def cmd_mark_good(ctx: Context) -> int:
    disk = _disk(ctx)
    slot = ctx.args.slot or disk.booted_slot()
    if slot is None:
        raise LayerbootError("cannot tell which slot this system booted from", hint="pass --slot A or --slot B")
    before = disk.state().slots[slot].state
    disk.mark_good(slot)
    print(f"slot {slot} is good" + (" (it already was)" if before == "good" else ""))
    return 0
