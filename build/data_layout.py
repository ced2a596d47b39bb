"""The data area of an A/B disk: plain ext4, mdadm RAID1, LVM, LVM on RAID1, or a ZFS mirror across disks.

The data area is partition 5 of the install disk (``layerboot-data``) plus every ``--data-disk``: each of those
gets a GPT with one partition (``layerboot-data-2``, ``-3``, ...) of the type its layout wants. The members then
become, by kind:

========== ==========================================================================================
plain      ext4 on partition 5 (no data disks); ``layerboot.cache=LABEL=layerboot-data`` can use it
raid1      one mdadm RAID1 (metadata 1.2, internal bitmap) over all members, ext4 on it
lvm        one LVM volume group ``layerboot`` over all members, one linear volume ``data`` (all of it), ext4
raid1-lvm  RAID1 over the members, the volume group on the array, ext4 on the volume
zfs-mirror one ZFS pool ``layerboot`` mirrored over all members, dataset ``layerboot/data`` (mountpoint /data)
========== ==========================================================================================

Every step is a declared action (build/disk_actions.py protocol: satisfied / conflict / apply), so a second run
finds everything in place and an interrupted one resumes: an array whose members carry its superblock is
assembled, not created again; a volume group is activated, a pool imported. A member that holds something
else (a filesystem, another array, another volume group) is refused unless ``--wipe``. The last action,
``data-release``, stops the array, deactivates the volume group or exports the pool, so the disks leave the
installing machine clean; the installed node's system assembles them by UUID and name (Debian's mdadm, lvm2 and
zfsutils-linux do it at boot). What was built is recorded in ``layerboot/layout.json`` on the ESP (its
``data`` section; ``layerboot ab status`` shows it). stage1 uses only a plain data area as a layer cache.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerboot.build.disk_actions import (TYPE_LINUX, Action, DiskContext, DiskLabel, Format, Partition,
                                          partition_path, probe)
from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run, tool_path

KINDS = ("plain", "raid1", "lvm", "raid1-lvm", "zfs-mirror")
TYPE_RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"      # Linux RAID
TYPE_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"       # Linux LVM
TYPE_ZFS = "6A898CC3-1DD2-11B2-99A6-080020736631"       # Solaris /usr & Apple ZFS: what zpool itself uses
PART_TYPES = {"plain": TYPE_LINUX, "raid1": TYPE_RAID, "lvm": TYPE_LVM, "raid1-lvm": TYPE_RAID, "zfs-mirror": TYPE_ZFS}
DATA_LABEL = "layerboot-data"
MD_NAME = "layerboot-data"
MD_DEVICE = f"/dev/md/{MD_NAME}"
VG, LV = "layerboot", "data"
LV_DEVICE = f"/dev/mapper/{VG}-{LV}"
POOL = "layerboot"
DATASET = f"{POOL}/data"
ZFS_MOUNTPOINT = "/data"
MIN_MEMBERS = {"plain": 1, "raid1": 2, "lvm": 1, "raid1-lvm": 2, "zfs-mirror": 2}
ZFS_HINT = ("ZFS needs zfsutils-linux and the zfs kernel module (Debian contrib: zfs-dkms builds it for the "
            "running kernel)")


def new_md_uuid() -> str:
    """An mdadm array UUID as mdadm prints it (four groups of eight hex digits)."""
    digits = uuid.uuid4().hex
    return ":".join(digits[i:i + 8] for i in range(0, 32, 8))


@dataclass(frozen=True)
class DataLayout:
    """What the data area is made of; recorded in layout.json's ``data`` section."""

    kind: str = "plain"
    disks: tuple[str, ...] = ()        # the extra data disks (whole disks), in order
    members: tuple[str, ...] = ()      # member devices at install time: the install disk's partition 5 first
    md_uuid: str = ""                  # raid1, raid1-lvm
    vg: str = ""                       # lvm, raid1-lvm
    pool: str = ""                     # zfs-mirror

    @property
    def device(self) -> str:
        """Where the data filesystem is: a block device (ext4), or the ZFS dataset."""
        if self.kind == "zfs-mirror":
            return DATASET
        if self.kind in ("lvm", "raid1-lvm"):
            return LV_DEVICE
        if self.kind == "raid1":
            return MD_DEVICE
        return self.members[0] if self.members else ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "disks": list(self.disks), "members": list(self.members), "md_uuid": self.md_uuid,
                "vg": self.vg, "pool": self.pool, "device": self.device}

    @classmethod
    def from_dict(cls, data: Any) -> "DataLayout":
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            raise ValueError("data")
        return cls(data["kind"], tuple(map(str, data.get("disks", ()))), tuple(map(str, data.get("members", ()))),
                   str(data.get("md_uuid", "")), str(data.get("vg", "")), str(data.get("pool", "")))

    def describe(self) -> str:
        names = {"plain": "ext4", "raid1": "mdadm RAID1 + ext4", "lvm": "LVM + ext4", "raid1-lvm": "RAID1 + LVM + ext4",
                 "zfs-mirror": "ZFS mirror"}
        return f"{names[self.kind]} on {', '.join(self.members)}" + (f" ({self.device})" if self.kind != "plain" else "")


def data_layout(kind: str, install_disk: str, data_disks: Sequence[str], part_data: int,
                previous: DataLayout | None = None) -> DataLayout:
    """The layout asked for, checked; the array UUID of ``previous`` is kept when it is the same layout."""
    if kind not in KINDS:
        raise LayerbootError(f"--data {kind!r}: choose one of {', '.join(KINDS)}")
    disks = tuple(data_disks)
    if len(set(disks)) != len(disks) or install_disk in disks:
        raise LayerbootError("--data-disk: each disk once, and not the install disk itself")
    if kind == "plain" and disks:
        raise LayerbootError("--data-disk needs a layout that spans disks: --data raid1, lvm, raid1-lvm or zfs-mirror")
    members = (partition_path(install_disk, part_data), *(partition_path(d, 1) for d in disks))
    if len(members) < MIN_MEMBERS[kind]:
        raise LayerbootError(f"--data {kind} needs at least {MIN_MEMBERS[kind] - 1} --data-disk (a mirror has two "
                             "sides: partition 5 of the install disk and another disk)")
    if previous is not None and previous.kind == kind and previous.members == members:
        return previous
    return DataLayout(kind, disks, members, md_uuid=new_md_uuid() if kind in ("raid1", "raid1-lvm") else "",
                      vg=VG if kind in ("lvm", "raid1-lvm") else "", pool=POOL if kind == "zfs-mirror" else "")


def preflight(kind: str) -> None:
    """Refuse, before any disk is touched, a data area this machine cannot build (its tools, its kernel)."""
    if kind in ("raid1", "raid1-lvm"):
        require_tool("mdadm", package="mdadm")
        if not _kernel_feature(Path("/proc/mdstat").exists, "raid1"):
            raise LayerbootError("this kernel has no software RAID (md): /proc/mdstat is missing and 'modprobe raid1' "
                                 "did not load it", hint="install from a system whose kernel has md (Debian's has)")
    if kind in ("lvm", "raid1-lvm"):
        require_tool("lvm", package="lvm2")
        if not _kernel_feature(lambda: "device-mapper" in Path("/proc/misc").read_text(), "dm_mod"):
            raise LayerbootError("this kernel has no device-mapper: LVM cannot work here",
                                 hint="install from a system whose kernel has dm_mod (Debian's has)")
    if kind == "zfs-mirror":
        if tool_path("zpool") is None or not _kernel_feature(Path("/sys/module/zfs").exists, "zfs"):
            raise LayerbootError("ZFS is not available on this machine", hint=ZFS_HINT)


def _kernel_feature(present: Any, module: str) -> bool:
    """``present()``, after loading ``module`` when it is not (best effort: no modprobe, no module)."""
    if present():
        return True
    modprobe = tool_path("modprobe")
    if modprobe:
        run([modprobe, module], check=False, timeout=60)
    return bool(present())


# -- helpers ------------------------------------------------------------------------------------------------
def _export(argv: list[str]) -> dict[str, str]:
    """``KEY=value`` lines of a tool (mdadm --export, blkid -o export); {} when it fails."""
    result = run(argv, check=False, timeout=60)
    if result.returncode != 0:
        return {}
    values = {}
    for line in result.text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _wait_for(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise LayerbootError(f"{path} did not appear", hint="is udev running? see the kernel log")
        time.sleep(0.05)


def _refusal(ctx: DiskContext, devices: Sequence[str], ours: str) -> str | None:
    """Why the devices may not be used: one holds something other than ``ours`` (a blkid TYPE) and there is no
    ``--wipe``; None when they may."""
    if ctx.wipe:
        return None
    for device in devices:
        found = probe(device).get("TYPE")
        if found and found != ours:
            return f"{device} holds {found}; pass --wipe to reuse it"
    return None


def _wipe(devices: Sequence[str]) -> None:
    for device in devices:
        run([require_tool("wipefs", package="util-linux"), "--all", "--quiet", device])


# -- mdadm ----------------------------------------------------------------------------------------------------
def _mdadm() -> str:
    return require_tool("mdadm", package="mdadm")


def md_active(md_uuid: str) -> bool:
    return _export([_mdadm(), "--detail", "--export", MD_DEVICE]).get("MD_UUID") == md_uuid


@dataclass
class MdRaid1(Action):
    """An mdadm RAID1 over the members; assembled (not created again) when they already carry its superblock."""

    id: str
    members: tuple[str, ...]
    md_uuid: str
    type: str = "md-raid1"

    def describe(self) -> str:
        return f"mdadm RAID1 {MD_DEVICE} over {', '.join(self.members)}, uuid {self.md_uuid}"

    def satisfied(self, ctx: DiskContext) -> bool:
        if md_active(self.md_uuid):
            return True
        if all(_export([_mdadm(), "--examine", "--export", m]).get("MD_UUID") == self.md_uuid for m in self.members):
            run([_mdadm(), "--assemble", MD_DEVICE, f"--uuid={self.md_uuid}", *self.members])
            _wait_for(MD_DEVICE)
            return True
        return False

    def conflict(self, ctx: DiskContext) -> str | None:
        for member in () if ctx.wipe else self.members:
            other = _export([_mdadm(), "--examine", "--export", member]).get("MD_UUID")
            if other and other != self.md_uuid:
                return f"{member} belongs to another md array ({other}); pass --wipe to reuse it"
        return _refusal(ctx, self.members, "linux_raid_member")

    def apply(self, ctx: DiskContext) -> None:
        if ctx.wipe:
            _wipe(self.members)
        run([_mdadm(), "--create", MD_DEVICE, "--run", "--level=1", f"--raid-devices={len(self.members)}",
             "--metadata=1.2", f"--name={MD_NAME}", f"--uuid={self.md_uuid}", "--homehost=any",
             "--bitmap=internal", *self.members], timeout=300)
        _wait_for(MD_DEVICE)


# -- LVM --------------------------------------------------------------------------------------------------------
def _lvm(*args: str, check: bool = True) -> Any:
    return run([require_tool("lvm", package="lvm2"), *args], check=check, timeout=120)


def _pv_groups(devices: Sequence[str]) -> dict[str, str]:
    """PV -> its volume group name ("" for a PV in none), for the devices that are PVs."""
    result = _lvm("pvs", "--noheadings", "--separator", "|", "-o", "pv_name,vg_name", *devices, check=False)
    groups = {}
    for line in result.text.splitlines():
        name, _, group = line.strip().partition("|")
        if name:
            groups[name] = group
    return groups


@dataclass
class LvmPhysical(Action):
    id: str
    devices: tuple[str, ...]
    type: str = "lvm-pv"

    def describe(self) -> str:
        return f"LVM physical volumes on {', '.join(self.devices)}"

    def satisfied(self, ctx: DiskContext) -> bool:
        return all(probe(d).get("TYPE") == "LVM2_member" for d in self.devices)

    def conflict(self, ctx: DiskContext) -> str | None:
        return _refusal(ctx, self.devices, "LVM2_member")

    def apply(self, ctx: DiskContext) -> None:
        if ctx.wipe:
            _wipe(self.devices)
        fresh = [d for d in self.devices if probe(d).get("TYPE") != "LVM2_member"]
        _lvm("pvcreate", "--yes", *fresh)


@dataclass
class LvmGroup(Action):
    id: str
    vg: str
    devices: tuple[str, ...]
    type: str = "lvm-vg"

    def describe(self) -> str:
        return f"LVM volume group {self.vg} on {', '.join(self.devices)}"

    def satisfied(self, ctx: DiskContext) -> bool:
        groups = _pv_groups(self.devices)
        return len(groups) == len(self.devices) and set(groups.values()) == {self.vg}

    def conflict(self, ctx: DiskContext) -> str | None:
        for device, group in _pv_groups(self.devices).items():
            if group and group != self.vg:
                return f"{device} belongs to volume group {group}"
        if _lvm("vgs", self.vg, check=False).returncode == 0:
            return f"a volume group {self.vg} already exists on other disks (vgrename it, or remove it)"
        return None

    def apply(self, ctx: DiskContext) -> None:
        _lvm("vgcreate", "--yes", self.vg, *self.devices)


@dataclass
class LvmVolume(Action):
    id: str
    vg: str
    lv: str
    type: str = "lvm-lv"

    def describe(self) -> str:
        return f"LVM volume {self.vg}/{self.lv} on all of the group ({LV_DEVICE})"

    def satisfied(self, ctx: DiskContext) -> bool:
        if _lvm("lvs", f"{self.vg}/{self.lv}", check=False).returncode != 0:
            return False
        _lvm("lvchange", "--activate", "y", f"{self.vg}/{self.lv}")
        _wait_for(LV_DEVICE)
        return True

    def apply(self, ctx: DiskContext) -> None:
        _lvm("lvcreate", "--yes", "--wipesignatures", "y", "--name", self.lv, "--extents", "100%FREE", self.vg)
        _wait_for(LV_DEVICE)


# -- ZFS ----------------------------------------------------------------------------------------------------------
def _zpool(*args: str, check: bool = True) -> Any:
    tool = tool_path("zpool")
    if tool is None:
        raise LayerbootError("zpool is not installed", hint=ZFS_HINT)
    return run([tool, *args], check=check, timeout=300)


def zpool_create_argv(pool: str, members: Sequence[str], altroot: Path) -> list[str]:
    """``zpool create`` for a mirror: 4 KiB sectors, lz4, no atime, POSIX ACLs and xattrs in the inode; the pool
    itself is not mounted, and ``altroot`` keeps the dataset off this machine's /data while installing."""
    return ["create", "-o", "ashift=12", "-O", "compression=lz4", "-O", "atime=off", "-O", "xattr=sa",
            "-O", "acltype=posixacl", "-O", "mountpoint=none", "-O", "canmount=off", "-R", str(altroot),
            pool, "mirror", *members]


@dataclass
class ZpoolMirror(Action):
    id: str
    pool: str
    members: tuple[str, ...]
    type: str = "zfs-pool"

    def describe(self) -> str:
        return f"ZFS pool {self.pool}: a mirror of {', '.join(self.members)}"

    def _altroot(self, ctx: DiskContext) -> Path:
        return ctx.workdir / "zfs-altroot"

    def satisfied(self, ctx: DiskContext) -> bool:
        if _zpool("list", "-H", "-o", "name", self.pool, check=False).returncode == 0:
            return True
        if self.pool in _zpool("import", check=False).text.split():     # exported by an earlier run: take it back
            _zpool("import", "-N", "-R", str(self._altroot(ctx)), self.pool)
            return True
        return False

    def conflict(self, ctx: DiskContext) -> str | None:
        if tool_path("zpool") is None or not Path("/sys/module/zfs").exists():
            return f"ZFS is not available on this machine: {ZFS_HINT}"
        return _refusal(ctx, self.members, "zfs_member")

    def apply(self, ctx: DiskContext) -> None:
        if ctx.wipe:
            _wipe(self.members)
        _zpool(*zpool_create_argv(self.pool, self.members, self._altroot(ctx)))


@dataclass
class ZfsDataset(Action):
    id: str
    dataset: str
    type: str = "zfs-dataset"

    def describe(self) -> str:
        return f"ZFS dataset {self.dataset}, mounted at {ZFS_MOUNTPOINT} on the node"

    def satisfied(self, ctx: DiskContext) -> bool:
        return run([tool_path("zfs") or "zfs", "list", "-H", "-o", "name", self.dataset], check=False).returncode == 0

    def apply(self, ctx: DiskContext) -> None:
        run([require_tool("zfs", package="zfsutils-linux"), "create", "-o", f"mountpoint={ZFS_MOUNTPOINT}",
             self.dataset])


# -- release ------------------------------------------------------------------------------------------------------
@dataclass
class DataRelease(Action):
    """Stop what the install started (array, volume group, pool): the disks leave this machine clean."""

    id: str
    layout: DataLayout = field(default_factory=DataLayout)
    type: str = "data-release"

    def describe(self) -> str:
        return {"raid1": f"stop {MD_DEVICE}", "lvm": f"deactivate volume group {VG}",
                "raid1-lvm": f"deactivate volume group {VG}, stop {MD_DEVICE}",
                "zfs-mirror": f"export ZFS pool {POOL}"}[self.layout.kind]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "kind": self.layout.kind}

    def _active(self) -> list[str]:
        kind, active = self.layout.kind, []
        if kind in ("lvm", "raid1-lvm") and "a" in _lvm("lvs", "--noheadings", "-o", "lv_attr", f"{VG}/{LV}",
                                                          check=False).text.strip()[4:5]:
            active.append("lvm")
        if kind in ("raid1", "raid1-lvm") and md_active(self.layout.md_uuid):
            active.append("md")
        if kind == "zfs-mirror" and _zpool("list", "-H", "-o", "name", POOL, check=False).returncode == 0:
            active.append("zfs")
        return active

    def satisfied(self, ctx: DiskContext) -> bool:
        return not self._active()

    def apply(self, ctx: DiskContext) -> None:
        active = self._active()
        if "lvm" in active:
            _lvm("vgchange", "--activate", "n", VG)
        if "md" in active:
            run([_mdadm(), "--stop", MD_DEVICE])
        if "zfs" in active:
            _zpool("export", POOL)


# -- the plan -----------------------------------------------------------------------------------------------------
def plan_data(layout: DataLayout, fs_uuid: str, part_data: int) -> list[Action]:
    """The data area's actions, after the install disk's partitions (partition 5 is made by ab.plan_layout)."""
    actions: list[Action] = []
    for number, disk in enumerate(layout.disks, start=2):
        name = f"{DATA_LABEL}-{number}"
        actions += [DiskLabel(f"data{number}-ptable", (name,), disk=disk),
                    Partition(f"data{number}-part", 1, 1, 0, PART_TYPES[layout.kind], name, disk=disk)]
    kind = layout.kind
    if kind == "plain":
        return actions + [Format("fmt-data", part_data, "ext4", DATA_LABEL, fs_uuid)]
    if kind in ("raid1", "raid1-lvm"):
        actions.append(MdRaid1("md-data", layout.members, layout.md_uuid))
    if kind in ("lvm", "raid1-lvm"):
        pvs = (MD_DEVICE,) if kind == "raid1-lvm" else layout.members
        actions += [LvmPhysical("lvm-pv", pvs), LvmGroup("lvm-vg", VG, pvs), LvmVolume("lvm-lv", VG, LV)]
    if kind == "zfs-mirror":
        actions += [ZpoolMirror("zfs-pool", POOL, layout.members), ZfsDataset("zfs-data", DATASET)]
    else:
        actions.append(Format("fmt-data", part_data, "ext4", DATA_LABEL, fs_uuid, device=layout.device))
    return actions + [DataRelease("data-release", layout)]
