#!/usr/bin/python3
"""Runs inside the QEMU guest of tests/test_site_qemu.py (Debian's kernel has md and device-mapper): every
data-area kind of the A/B install on file-backed loop disks, with the layerboot package of the guest's image.

For each kind: the install disk's partition 5 as ab.plan_layout makes it, then the kind's declared actions
(build/data_layout.py). A first run builds everything and releases it; a second run must find everything in
place (nothing redone); a file written to the data filesystem is still there after another release and
bring-up. Then the refusals: a data disk holding a filesystem is refused without --wipe and taken with it.
Prints one ``LBSTORAGE {json}`` line per scenario on stdout (the unit sends it to the serial console).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
import uuid
from pathlib import Path

from layerboot.build.data_layout import PART_TYPES, DataRelease, data_layout, plan_data, preflight
from layerboot.build.disk_actions import TYPE_LINUX, DiskContext, DiskLabel, Partition, execute, probe
from layerboot.errors import LayerbootError
from layerboot.run import run

MiB = 1 << 20


def say(**fields: object) -> None:
    print("LBSTORAGE " + json.dumps(fields, sort_keys=True), flush=True)


def loop(path: Path, mib: int) -> str:
    with open(path, "wb") as handle:
        handle.truncate(mib * MiB)
    return run(["losetup", "--find", "--show", "--partscan", path]).text.strip()


def failure(kind: str, err: Exception) -> dict:
    """What went wrong, for the host's assertion: the frames without the 'Traceback' header (the host's scan of
    the console for uncaught tracebacks would take it for one) and the block devices' state as the guest saw it."""
    state = []
    for argv in (["lsblk", "-o", "NAME,MAJ:MIN,TYPE,SIZE,FSTYPE"], ["losetup", "-l"], ["sh", "-c",
                 "grep . /sys/block/loop*/loop/partscan /sys/module/loop/parameters/* 2>&1; "
                 "for d in $(losetup -nO NAME); do partx --show $d; partx -u -v $d; done 2>&1; dmesg | tail -15"]):
        result = run(argv, check=False)
        state.append(result.text + result.stderr.decode(errors="replace"))
    return {"kind": kind, "error": f"{type(err).__name__}: {err}",
            "trace": "".join(traceback.format_tb(err.__traceback__))[-1500:], "state": "\n".join(state)[-3000:]}


def install_disk(ctx: DiskContext, kind: str) -> None:
    """The install disk's GPT with partitions 1-4 (1 MiB each here: only their numbers matter) and partition 5,
    the data partition, of the type ``kind`` wants, as ab.plan_layout lays them out (sfdisk -N 5 on a table
    without 1-4 would make partition 1)."""
    names = ("layerboot-bios", "layerboot-esp", "layerboot-a", "layerboot-b")
    execute([DiskLabel("ptable", (*names, "layerboot-data")),
             *(Partition(f"part-{n}", n, n, 1, TYPE_LINUX, name) for n, name in enumerate(names, 1)),
             Partition("part-data", 5, 5, 0, PART_TYPES[kind], "layerboot-data")], ctx, report=lambda line: None)


def outcomes(reports: list) -> dict[str, str]:
    return {r.id: r.outcome for r in reports}


def up_and_check(actions: list, ctx: DiskContext, device: str, work: Path, write: str | None) -> str:
    """Bring the area up (every action but the release), mount it, write or read a file, release it."""
    reports = execute(actions[:-1], ctx, report=lambda line: None)
    assert all(r.outcome == "ok (already)" for r in reports), outcomes(reports)
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    run(["mount", device, mnt])
    try:
        if write is not None:
            (mnt / "data.txt").write_text(write)
        text = (mnt / "data.txt").read_text()
    finally:
        run(["umount", mnt])
    execute(actions[-1:], ctx, report=lambda line: None)
    return text


def scenario(kind: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"lbt-{kind}-", dir="/var/tmp"))
    disks: list[str] = []
    actions: list = []
    ctx = None
    try:
        preflight(kind)
        disks = [loop(work / "install.img", 96), loop(work / "data.img", 96)]
        ctx = DiskContext(disks[0], workdir=work)
        install_disk(ctx, kind)
        fs_uuid = str(uuid.uuid4())
        layout = data_layout(kind, disks[0], disks[1:], 5)
        actions = plan_data(layout, fs_uuid, 5)
        first = outcomes(execute(actions, ctx, report=lambda line: None))
        second = outcomes(execute(actions, ctx, report=lambda line: None))
        # the array or volume group is up again for this check only, then released
        execute(actions[:-1], ctx, report=lambda line: None)
        found = probe(layout.device)
        facts = {"fs": [found.get("TYPE"), found.get("LABEL"), found.get("UUID") == fs_uuid]}
        if kind in ("raid1", "raid1-lvm"):
            detail = run(["mdadm", "--detail", "--export", "/dev/md/layerboot-data"]).text
            facts["md"] = sorted(line for line in detail.splitlines()
                                 if line.startswith(("MD_LEVEL=", "MD_DEVICES=", "MD_UUID=")))
            facts["md_uuid_matches"] = f"MD_UUID={layout.md_uuid}" in detail
        if kind in ("lvm", "raid1-lvm"):
            facts["pvs"] = int(run(["lvm", "vgs", "--noheadings", "-o", "pv_count", "layerboot"]).text.strip())
        execute(actions[-1:], ctx, report=lambda line: None)
        written = up_and_check(actions, ctx, layout.device, work, "kept across a release\n")
        again = up_and_check(actions, ctx, layout.device, work, None)
        return {"kind": kind, "first": first, "second": second, "facts": facts, "record": layout.to_dict(),
                "file": [written, again]}
    except Exception as err:  # noqa: BLE001 - reported to the host, which fails the test with it
        return failure(kind, err)
    finally:
        if ctx is not None and actions:
            try:
                execute([a for a in actions if isinstance(a, DataRelease)], ctx, report=lambda line: None)
            except LayerbootError:
                pass
        for disk in disks:
            run(["losetup", "--detach", disk], check=False)
        shutil.rmtree(work, ignore_errors=True)


def refusal() -> dict:
    """A data disk that holds a filesystem: refused (nothing done after), then taken with --wipe."""
    work = Path(tempfile.mkdtemp(prefix="lbt-refusal-", dir="/var/tmp"))
    disks: list[str] = []
    try:
        disks = [loop(work / "install.img", 96), loop(work / "data.img", 96)]
        run(["mkfs.ext4", "-q", "-F", "-L", "precious", disks[1]])
        ctx = DiskContext(disks[0], workdir=work)
        install_disk(ctx, "raid1")
        actions = plan_data(data_layout("raid1", disks[0], disks[1:], 5), str(uuid.uuid4()), 5)
        lines: list[str] = []
        try:
            execute(actions, ctx, report=lines.append)
            refused = ""
        except LayerbootError as err:
            refused = err.message
        untouched = probe(disks[1]).get("LABEL") == "precious"
        wiped = outcomes(execute(actions, DiskContext(disks[0], wipe=True, workdir=work), report=lambda line: None))
        return {"kind": "refusal", "refused": refused, "untouched": untouched, "reported": lines, "wiped": wiped}
    except Exception as err:  # noqa: BLE001
        return failure("refusal", err)
    finally:
        run(["mdadm", "--stop", "/dev/md/layerboot-data"], check=False)
        for disk in disks:
            run(["losetup", "--detach", disk], check=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    for kind in ("raid1", "lvm", "raid1-lvm"):
        say(**scenario(kind))
    say(**refusal())
    try:
        preflight("zfs-mirror")
        say(kind="zfs-mirror", available=True)
    except LayerbootError as err:
        say(kind="zfs-mirror", available=False, error=err.message)


if __name__ == "__main__":
    main()
