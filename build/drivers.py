"""Which kernel modules go into the initramfs: named driver sets, ``--add-drivers``/``--omit-drivers``, firmware.

stage1 loads what the hardware asks for (initrd/stage1/drivers.py), so the image only has to *carry* the drivers
a node may need. Two sets:

* ``virtio``: virtual machines (virtio NIC/disk/SCSI, AHCI, NVMe): the small image;
* ``hardware``: ``virtio`` plus the NICs and storage controllers of common servers (below).

Every set also carries the layer stack (loop, squashfs, overlay), what a cache or slot disk needs (sd_mod,
ext4, vfat), and the network block device and dm-verity (nbd, dm_mod, dm_verity: streamed layers,
``layerboot.fetch=stream``, and dm-verity checked cache and slot layers). A name may also be dracut's
``=drivers/net/ethernet`` (every module under that directory of the kernel tree). Modules a kernel does not have (the cloud kernel carries no e1000e) are left out of a set with a
note; a module asked for with ``--add-drivers`` that the kernel does not have is an error. Firmware the chosen
modules declare (``modinfo -F firmware``) is copied from the firmware directories when present; what is missing
is reported, since Debian ships most of it in non-free-firmware packages.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from layerboot.build.kernel import Kernel
from layerboot.errors import LayerbootError
from layerboot.run import run

STACK = ("loop", "squashfs", "overlay")
NET_STACK = ("8021q", "bonding")        # vlan= and bond= on the kernel command line (stage1/net.py loads them)
STREAM = ("nbd", "dm_mod", "dm_verity")  # layerboot.fetch=stream (stage1/stream.py loads them); dm-verity for disks
DISK = ("sd_mod", "ext4", "crc32c_generic", "vfat",   # ext4 asks the crypto API for crc32c: no symbol dependency
        "sha256_ssse3")                               # SHA-NI/AVX2 SHA-256 for fs-verity on a cache disk
VIRTIO = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "ahci", "nvme")
SERVER_NICS = ("e1000", "e1000e", "igb", "ixgbe", "i40e", "ice",          # Intel
               "mlx4_en", "mlx5_core",                                     # Mellanox/NVIDIA
               "bnxt_en", "tg3", "bnx2x",                                  # Broadcom
               "r8169", "8139cp", "8139too",                               # Realtek
               "vmxnet3")                                                  # VMware
SERVER_STORAGE = ("megaraid_sas", "mpt3sas", "ata_piix")   # ata_piix: SATA in IDE/legacy mode
DRIVER_SETS = {
    "virtio": STACK + NET_STACK + STREAM + DISK + VIRTIO,
    "hardware": STACK + NET_STACK + STREAM + DISK + VIRTIO + SERVER_NICS + SERVER_STORAGE,
}
DEFAULT_FIRMWARE_DIRS = (Path("/lib/firmware/updates"), Path("/lib/firmware"))
_NAME = re.compile(r"^(=[\w./-]+|[\w-]+)$")


@dataclass(frozen=True)
class DriverPlan:
    """What the image will carry: module names (and =dir entries) for dracut, and the firmware it needs."""

    kernel: str
    driver_set: str
    modules: tuple[str, ...]             # given to dracut's instmods, in order
    not_in_kernel: tuple[str, ...]       # set members this kernel does not have (left out)
    firmware: tuple[Path, ...]           # firmware files found, to copy
    missing_firmware: dict[str, tuple[str, ...]]   # module -> firmware names not found anywhere
    firmware_dirs: tuple[Path, ...] = DEFAULT_FIRMWARE_DIRS

    def key(self) -> str:
        """A digest of everything that changes the image (names, firmware bytes)."""
        digest = hashlib.sha256("\n".join([*self.modules, *map(str, self.firmware_dirs)]).encode())
        for path in self.firmware:
            digest.update(str(path).encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def summary(self) -> list[str]:
        lines = [f"drivers: {self.driver_set} set, {len(self.modules)} modules for kernel {self.kernel}"]
        if self.not_in_kernel:
            lines.append(f"drivers: not in this kernel, left out: {' '.join(self.not_in_kernel)}")
        if self.firmware:
            size = sum(p.stat().st_size for p in self.firmware)
            lines.append(f"firmware: {len(self.firmware)} files ({size / 1048576:.1f} MiB)")
        if self.missing_firmware:
            lines.append("firmware: not found (install the firmware packages, e.g. from Debian's non-free-firmware, "
                         "or pass --firmware-dir): " + ", ".join(f"{m} ({len(f)} files)"
                                                                 for m, f in sorted(self.missing_firmware.items())))
        return lines


def split_names(values: list[str] | tuple[str, ...] | None) -> list[str]:
    """``--add-drivers a,b --add-drivers c`` -> [a, b, c]; each checked against a strict pattern."""
    names = []
    for value in values or ():
        for name in value.replace(",", " ").split():
            if not _NAME.match(name) or ".." in name:
                raise LayerbootError(f"{name!r} is not a kernel module name (or =directory of the module tree)")
            names.append(name if name.startswith("=") else name.replace("-", "_"))
    return names


class ModuleIndex:
    """The kernel's modules by name (modules.dep) and built-ins (modules.builtin)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.paths: dict[str, str] = {}
        self.deps: dict[str, list[str]] = {}
        dep = kernel.moddir / "modules.dep"
        if not dep.is_file():
            raise LayerbootError(f"kernel {kernel.version} has no modules.dep in {kernel.moddir}",
                                 hint="run depmod for it (layerboot does so when it unpacks a kernel)")
        for line in dep.read_text().splitlines():
            path, _, needs = line.partition(":")
            name = self._name(path)
            self.paths[name] = path
            self.deps[name] = [self._name(p) for p in needs.split()]
        builtin = kernel.moddir / "modules.builtin"
        self.builtin = {self._name(p) for p in builtin.read_text().split()} if builtin.is_file() else set()

    @staticmethod
    def _name(path: str) -> str:
        return Path(path).name.split(".ko")[0].replace("-", "_")

    def has(self, name: str) -> bool:
        if name.startswith("="):
            return (self.kernel.moddir / "kernel" / name[1:].strip("/")).is_dir()
        return name in self.paths or name in self.builtin

    def closure(self, names: list[str]) -> list[str]:
        """The loadable modules ``names`` need, dependencies included (=dir entries expanded)."""
        out: list[str] = []
        todo = []
        for name in names:
            if name.startswith("="):
                prefix = "kernel/" + name[1:].strip("/") + "/"
                todo += [m for m, p in self.paths.items() if p.startswith(prefix)]
            else:
                todo.append(name)
        while todo:
            name = todo.pop()
            if name in out or name not in self.paths:
                continue
            out.append(name)
            todo += self.deps.get(name, [])
        return sorted(out)

    def firmware(self, name: str) -> list[str]:
        text = run(["modinfo", "-F", "firmware", self.kernel.moddir / self.paths[name]]).text
        return [line.strip() for line in text.splitlines() if line.strip()]


def plan_drivers(kernel: Kernel, driver_set: str = "hardware", *, add: list[str] | tuple[str, ...] = (),
                 omit: list[str] | tuple[str, ...] = (),
                 firmware_dirs: tuple[Path, ...] = DEFAULT_FIRMWARE_DIRS) -> DriverPlan:
    """Resolve a driver set plus additions minus omissions against ``kernel``; find the firmware they need."""
    if driver_set not in DRIVER_SETS:
        raise LayerbootError(f"unknown driver set {driver_set!r}", hint="use one of " + ", ".join(DRIVER_SETS))
    index = ModuleIndex(kernel)
    omitted = set(split_names(omit))
    needed = [m for m in STACK if m in omitted]
    if needed:
        raise LayerbootError(f"--omit-drivers {','.join(needed)}: stage1 needs them to stack the layers")
    added = split_names(add)
    unknown = [name for name in added if not index.has(name)]
    if unknown:
        raise LayerbootError(f"kernel {kernel.version} has no module {', '.join(unknown)}",
                             hint=f"see {kernel.moddir}/modules.dep; the cloud kernel has VM drivers only "
                                  "(use --kernel generic)")
    modules: list[str] = []
    not_in_kernel: list[str] = []
    for name in [*DRIVER_SETS[driver_set], *added]:
        if name in omitted or name in modules:
            continue
        if index.has(name):
            modules.append(name)
        else:
            not_in_kernel.append(name)
    firmware: list[Path] = []
    missing: dict[str, tuple[str, ...]] = {}
    for name in index.closure(modules):
        lost = []
        for wanted in index.firmware(name):
            found = _find_firmware(wanted, firmware_dirs, kernel.version)
            if found is None:
                lost.append(wanted)
            elif found not in firmware:
                firmware.append(found)
        if lost:
            missing[name] = tuple(lost)
    return DriverPlan(kernel.version, driver_set, tuple(modules), tuple(not_in_kernel), tuple(sorted(firmware)),
                      missing, tuple(firmware_dirs))


def _find_firmware(name: str, dirs: tuple[Path, ...], version: str) -> Path | None:
    for base in dirs:
        for candidate in (base / version / name, base / name):
            for suffix in ("", ".xz", ".zst"):
                path = candidate.with_name(candidate.name + suffix)
                if path.is_file():
                    return path
    return None
