"""Declared disk actions: an ordered list of steps with ids, each reported, each idempotent or refusing clearly.

Modelled on curtin's storage config: the plan is data (printable with ``layerboot install plan`` before anything
is touched), and the executor walks it. Every action answers three questions before it acts:

* ``satisfied``: is the disk already as this action wants it? Then it is reported as ``ok (already)`` and skipped,
  so running an install twice changes nothing the first run did.
* ``conflict``: is something there that this action would destroy and was not asked to? Then the run stops with
  one line naming the action and what is in the way (``--wipe`` is the explicit permission).
* ``apply``: do it, with the one command runner.

The A/B specific actions (writing a slot, switching to it) live in :mod:`layerboot.build.ab` and follow the
same protocol.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run

log = logging.getLogger("layerboot.disk")

MiB = 1024 * 1024
SECTOR = 512
TYPE_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@dataclass
class DiskContext:
    """What every action may consult: the disk, the permission to wipe, scratch space and run-time values."""

    disk: str
    wipe: bool = False
    workdir: Path = Path("/tmp")
    values: dict[str, Any] = field(default_factory=dict)   # shared between actions (e.g. the slot written)

    def partition(self, number: int) -> str:
        return partition_path(self.disk, number)


def partition_path(disk: str, number: int) -> str:
    """/dev/sda + 3 -> /dev/sda3; /dev/loop0 or /dev/nvme0n1 + 3 -> ...p3 (names ending in a digit)."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def read_table(disk: str) -> dict[str, Any] | None:
    """The disk's partition table as sfdisk reports it, or None when it has none."""
    result = run([require_tool("sfdisk", package="fdisk"), "--json", disk], check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.text)["partitiontable"]


def probe(device: str) -> dict[str, str]:
    """Low-level probe (no cache, no udev): TYPE, UUID, LABEL, PART_ENTRY_* of what is on ``device``."""
    result = run([require_tool("blkid", package="util-linux"), "-p", "-o", "export", device], check=False)
    values: dict[str, str] = {}
    for line in result.text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def settle_partitions(disk: str, numbers: Sequence[int], timeout: float = 10.0) -> None:
    """Make the kernel see the partition table and wait for the device nodes.

    ``partx -u`` adds what the kernel lacks through BLKPG, so this also works on kernels that do not parse GPT
    themselves and on loop devices without partition scanning.
    """
    run([require_tool("partx", package="util-linux"), "-u", disk], check=False)
    deadline = time.monotonic() + timeout
    missing = [partition_path(disk, n) for n in numbers]
    while missing:
        missing = [p for p in missing if not os.path.exists(p)]
        if missing and time.monotonic() > deadline:
            raise LayerbootError(f"partitions {', '.join(missing)} did not appear after writing the table",
                                 hint=f"check 'partx --show {disk}' and the kernel log")
        if missing:
            time.sleep(0.05)


class Action:
    """One declared step. Subclasses are dataclasses with ``id`` first."""

    id: str
    type: str = "action"

    def describe(self) -> str:
        raise NotImplementedError

    def satisfied(self, ctx: DiskContext) -> bool:
        return False

    def conflict(self, ctx: DiskContext) -> str | None:
        return None

    def apply(self, ctx: DiskContext) -> None:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"id": self.id, "type": self.type, **data}


@dataclass
class DiskLabel(Action):
    """A GPT on the whole disk. A disk with anything else on it is only touched with ``wipe``."""

    id: str
    ours: tuple[str, ...] = ()          # the partition names the plan creates
    type: str = "ptable"
    disk: str = ""                      # another disk than the install disk (a data disk); "": ctx.disk

    def describe(self) -> str:
        return "GPT partition table" + (f" on {self.disk}" if self.disk else "")

    def _foreign(self, ctx: DiskContext) -> str | None:
        disk = self.disk or ctx.disk
        table = read_table(disk)
        if table is None:
            found = probe(disk).get("TYPE")
            return f"a {found} filesystem on the whole disk" if found else None
        if table.get("label") != "gpt":
            return f"a {table.get('label')} partition table"
        names = [p.get("name", "") for p in table.get("partitions", [])]
        strangers = [n or "(unnamed)" for n in names if n not in self.ours]
        return f"partitions layerboot did not make: {', '.join(strangers)}" if strangers else None

    def satisfied(self, ctx: DiskContext) -> bool:
        table = read_table(self.disk or ctx.disk)
        return table is not None and table.get("label") == "gpt" and self._foreign(ctx) is None

    def conflict(self, ctx: DiskContext) -> str | None:
        found = self._foreign(ctx)
        if found and not ctx.wipe:
            return f"{self.disk or ctx.disk} holds {found}; pass --wipe to erase the whole disk"
        return None

    def apply(self, ctx: DiskContext) -> None:
        disk = self.disk or ctx.disk
        run([require_tool("sfdisk", package="fdisk"), "--quiet", "--wipe", "always", disk], input=b"label: gpt\n")
        run([require_tool("partx", package="util-linux"), "-d", disk], check=False)


@dataclass
class Partition(Action):
    """One GPT partition at a fixed start (MiB); ``size_mib`` 0 means up to the end of the disk."""

    id: str
    number: int
    start_mib: int
    size_mib: int
    part_type: str
    name: str
    type: str = "partition"
    disk: str = ""                      # another disk than the install disk (a data disk); "": ctx.disk

    def describe(self) -> str:
        size = f"{self.size_mib} MiB" if self.size_mib else "rest of disk"
        where = f" of {self.disk}" if self.disk else ""
        return f"partition {self.number}{where} {self.name!r} at {self.start_mib} MiB, {size}"

    def _existing(self, ctx: DiskContext) -> dict[str, Any] | None:
        table = read_table(self.disk or ctx.disk) or {}
        for part in table.get("partitions", []):
            if part["node"] == partition_path(self.disk or ctx.disk, self.number):
                return part
        return None

    def _matches(self, part: dict[str, Any]) -> bool:
        same = (part["start"] == self.start_mib * MiB // SECTOR and part["type"].upper() == self.part_type
                and part.get("name", "") == self.name)
        return same and (self.size_mib == 0 or part["size"] == self.size_mib * MiB // SECTOR)

    def satisfied(self, ctx: DiskContext) -> bool:
        part = self._existing(ctx)
        if part is not None and self._matches(part):
            settle_partitions(self.disk or ctx.disk, [self.number])
            return True
        return False

    def conflict(self, ctx: DiskContext) -> str | None:
        part = self._existing(ctx)
        if part is not None and not self._matches(part):
            return (f"partition {self.number} exists with another geometry or name "
                    f"({part.get('name', '')!r}, start {part['start']}, size {part['size']} sectors)")
        return None

    def apply(self, ctx: DiskContext) -> None:
        line = f"start={self.start_mib * MiB // SECTOR}, type={self.part_type}, name=\"{self.name}\""
        if self.size_mib:
            line += f", size={self.size_mib * MiB // SECTOR}"
        disk = self.disk or ctx.disk
        run([require_tool("sfdisk", package="fdisk"), "--quiet", "--no-reread", "--no-tell-kernel",
             "-N", str(self.number), disk], input=(line + "\n").encode())
        settle_partitions(disk, [self.number])


@dataclass
class Format(Action):
    """A filesystem with a fixed label and UUID (GRUB and stage1 find it by them). Never over another one."""

    id: str
    number: int
    fstype: str              # "vfat" or "ext4"
    label: str
    uuid: str                # ext4: a UUID; vfat: the 8-hex-digit volume id
    type: str = "format"
    device: str = ""         # a device other than the partition (an md array, an LVM volume); "": partition

    def describe(self) -> str:
        where = self.device or f"partition {self.number}"
        return f"{self.fstype} on {where}, label {self.label}, uuid {self.fs_uuid}"

    def _device(self, ctx: DiskContext) -> str:
        return self.device or ctx.partition(self.number)

    @property
    def fs_uuid(self) -> str:
        """How blkid and GRUB spell it (vfat: XXXX-XXXX)."""
        if self.fstype == "vfat":
            return f"{self.uuid[:4]}-{self.uuid[4:]}".upper()
        return self.uuid

    def satisfied(self, ctx: DiskContext) -> bool:
        found = probe(self._device(ctx))
        return (found.get("TYPE") == self.fstype and found.get("UUID", "").upper() == self.fs_uuid.upper()
                and found.get("LABEL") == self.label)

    def conflict(self, ctx: DiskContext) -> str | None:
        found = probe(self._device(ctx)).get("TYPE")
        if found and not ctx.wipe:
            where = self.device or f"partition {self.number}"
            return f"{where} already holds a {found} filesystem; pass --wipe to reformat it"
        return None

    def apply(self, ctx: DiskContext) -> None:
        device = self._device(ctx)
        if self.fstype == "vfat":
            run([require_tool("mkfs.vfat", package="dosfstools"), "-n", self.label.upper(), "-i", self.uuid,
                 device])
        elif self.fstype == "ext4":
            mkfs_ext4(device, label=self.label, uuid=self.uuid)
        else:
            raise LayerbootError(f"action {self.id}: unsupported filesystem {self.fstype!r}")


def mkfs_ext4(device: str, *, label: str, uuid: str) -> None:
    """A fresh ext4 (always over whatever is there: callers decide whether that is allowed)."""
    run([require_tool("mkfs.ext4", package="e2fsprogs"), "-F", "-q", "-L", label, "-U", uuid,
         "-E", "lazy_itable_init=0,lazy_journal_init=0", device])


@dataclass(frozen=True)
class Report:
    id: str
    type: str
    outcome: str             # "done", "ok (already)"
    seconds: float


def execute(actions: Sequence[Action], ctx: DiskContext,
            report: Callable[[str], None] = print) -> list[Report]:
    """Run the plan in order, reporting each action as it starts and ends; stop at the first refusal."""
    reports: list[Report] = []
    for action in actions:
        report(f"[{action.id}] {action.type}: {action.describe()}")
        started = time.monotonic()
        if action.satisfied(ctx):
            outcome = "ok (already)"
        else:
            reason = action.conflict(ctx)
            if reason:
                raise LayerbootError(f"action {action.id} refused: {reason}",
                                     hint="nothing after this action was done; 'layerboot install plan' "
                                          "shows the whole list")
            action.apply(ctx)
            outcome = "done"
        elapsed = time.monotonic() - started
        report(f"[{action.id}] {outcome} ({elapsed:.2f} s)")
        reports.append(Report(action.id, action.type, outcome, elapsed))
    return reports


def disk_size(disk: str) -> int:
    """Size in bytes of a block device or an image file."""
    fd = os.open(disk, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
