"""Mounts, kernel modules, loop devices and the switch into the real root, for PID 1 in the initramfs.

Python's ``os`` has no mount(2), so mounts go through busybox's ``mount`` applet (static, already shipped for the
emergency shell); loop devices are set up in-process with the LOOP_CTL_GET_FREE and LOOP_CONFIGURE ioctls
(one ioctl per layer instead of a losetup child). Modules are loaded with busybox ``modprobe -a`` in one child.
"""

from __future__ import annotations

import os
import struct
import time

from .console import BUSYBOX, StageError, busybox, debug, spawn

MODULES = ("loop", "squashfs", "overlay")   # the layer stack; hardware drivers come from modaliases (drivers.py)
# layerboot.cache=/slot=: SCSI/SATA disks appear late; ext4 may be a module, and it needs crc32c (a crypto API
# lookup the kernel cannot resolve without a usermode modprobe); and the kernel's SHA-NI/AVX2 SHA-256 that
# fs-verity uses on the cache disk (absent on CPUs without SSSE3: then the generic C one is used)
CACHE_MODULES = ("sd_mod", "crc32c_generic", "ext4", "sha256_ssse3")
RUN_DIR = "/run/layerboot"
RW_DIR = RUN_DIR + "/rw"          # tmpfs with upper/ and work/; the node sees it at the same path
LAYER_DIR = RUN_DIR + "/layers"    # verified layer files, in RAM: a tmpfs sized to the chain (ram_for_layers)
LOWER_DIR = RUN_DIR + "/lower"     # squashfs mount points, one per layer
NEWROOT = "/sysroot"

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# struct loop_info64 { u64 device, inode, rdevice, offset, sizelimit; u32 number, encrypt_type, encrypt_key_size,
#                      flags; u8 file_name[64], crypt_name[64], encrypt_key[32]; u64 init[2]; }
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")


def is_mountpoint(path: str) -> bool:
    try:
        here = os.stat(path)
        parent = os.stat(os.path.join(path, ".."))
    except OSError:
        return False
    return here.st_dev != parent.st_dev or here.st_ino == parent.st_ino


def mount(source: str, target: str, fstype: str, options: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    args = ["mount", "-t", fstype]
    if options:
        args += ["-o", options]
    busybox(*args, source, target)


def mount_api_filesystems() -> None:
    """/proc /sys /dev /run, skipping any already there (mkinitcpio's init mounts them before our hook)."""
    for fstype, target, options in (("proc", "/proc", "nosuid,noexec,nodev"),
                                    ("sysfs", "/sys", "nosuid,noexec,nodev"),
                                    ("devtmpfs", "/dev", "mode=0755,nosuid"),
                                    ("tmpfs", "/run", "mode=0755,nosuid,nodev")):
        if not is_mountpoint(target):
            mount(fstype, target, fstype, options)


def load_modules(names: tuple[str, ...] = MODULES, *, optional: tuple[str, ...] = ()) -> list[str]:
    """Load ``names`` and the drivers of the hardware present (drivers.py); ``optional`` may fail.

    Built-in drivers are fine: modprobe succeeds for them. busybox's modprobe (modules.dep from dracut's depmod;
    Debian's modules are uncompressed): kmod would bring libcrypto, liblzma and libzstd, 5.7 MB, into the image.
    Returns the hardware drivers that were loaded.
    """
    from .drivers import load_hardware_drivers

    try:
        with open("/proc/cmdline", encoding="utf-8", errors="replace") as f:
            cmdline = f.read()
    except OSError:
        cmdline = ""
    loaded = load_hardware_drivers(always=names, cmdline=cmdline)
    for name in optional:
        if spawn([BUSYBOX, "modprobe", "-q", name], quiet=True)[0]:
            debug(f"optional module {name} not available")
    return loaded


RAM_RESERVE = 96 << 20           # what the node must keep besides its layers: the new root's init, page cache
RAM_SLACK = 1 << 20              # per layer: a download may run one byte past its signed size before it stops


def mem_available(meminfo: str = "/proc/meminfo") -> int:
    """The kernel's estimate of memory available without swapping, in bytes (0 when unknown)."""
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def ram_for_layers(needed: int, count: int, directory: str = LAYER_DIR, *, room: int = 0,
                   meminfo: str = "/proc/meminfo") -> None:
    """Give the layers that will be downloaded into RAM (``needed`` bytes) a tmpfs of their own.

    Refuses up front, in one line, when the node has not got the memory: otherwise the download would stop at
    ENOSPC, or the kernel's OOM killer would end it, far into the boot. The tmpfs is sized to ``room`` (the
    whole chain, so a cached layer that fails its check can still be fetched; a tmpfs only uses what it holds)
    or ``needed``. A tmpfs of its own also frees the chain from the 50 % limit of the /run tmpfs.
    """
    available = mem_available(meminfo)
    if available and needed + RAM_RESERVE > available:
        raise StageError(f"the layers need {needed / 1e6:.0f} MB of RAM, the node has {available / 1e6:.0f} MB "
                         f"available (and keeps {RAM_RESERVE >> 20} MiB for itself): give it more memory, or keep "
                         "the layers on a local disk with layerboot.cache= (docs/stage1.md, 'RAM and disk')")
    size = max(room, needed) + RAM_SLACK * (count + 1)
    mount("tmpfs", directory, "tmpfs", f"mode=0755,size={size}")
    debug(f"layers in RAM: {needed} bytes to fetch, tmpfs of {size} bytes, {available} bytes available")


def attach_loop(path: str) -> tuple[str, int]:
    """Attach ``path`` read-only to a free loop device; return its path and an open fd.

    The device is autoclear: it detaches when its last user goes, so the caller keeps the fd open until the
    squashfs mount holds the device, then closes it.
    """
    import fcntl  # builtin in Debian's python3.11

    if not os.path.exists("/dev/loop-control"):   # a streamed boot loads loop only for a layer fetched whole
        busybox("modprobe", "loop")
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        backing = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for _ in range(20):
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                for _ in range(100):  # devtmpfs creates the node asynchronously
                    if os.path.exists(device):
                        break
                    time.sleep(0.01)
                loop = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
                attached = False
                try:
                    name = os.path.basename(path).encode()[:63]
                    config = _LOOP_CONFIG.pack(backing, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                               LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR, name, b"", b"",
                                               0, 0, *([0] * 8))
                    try:
                        fcntl.ioctl(loop, LOOP_CONFIGURE, config)
                    except OSError as err:
                        if err.errno == 16:  # EBUSY: another process took it; ask again
                            continue
                        raise StageError(f"cannot attach {path} to {device}: {err.strerror}") from None
                    attached = True
                    return device, loop
                finally:
                    if not attached:
                        os.close(loop)
        finally:
            os.close(backing)
    finally:
        os.close(ctl)
    raise StageError(f"no free loop device for {path}")


def lowerdir_option(mountpoints_base_first: list[str]) -> str:
    """overlayfs wants the topmost layer first in ``lowerdir=``; layer lists are base first."""
    return ":".join(reversed(mountpoints_base_first))


def stack(layer_files_base_first: list[str], upper_size: str) -> None:
    """Mount each verified layer (a file: through a loop device; a block device such as a dm-verity device
    over a streamed layer: directly), then overlayfs over them with a tmpfs upper at RW_DIR, at NEWROOT."""
    lowers = []
    for index, path in enumerate(layer_files_base_first):
        target = f"{LOWER_DIR}/{index}"
        if path.startswith("/dev/"):
            mount(path, target, "squashfs", "ro")
            device = path
        else:
            device, fd = attach_loop(path)
            try:
                mount(device, target, "squashfs", "ro")
            finally:
                os.close(fd)
        debug(f"layer {index}: {os.path.basename(path)[:12]} on {device} at {target}")
        lowers.append(target)
    mount("tmpfs", RW_DIR, "tmpfs", f"mode=0755,size={upper_size}")
    os.makedirs(RW_DIR + "/upper", mode=0o755, exist_ok=True)
    os.makedirs(RW_DIR + "/work", mode=0o755, exist_ok=True)
    mount("overlay", NEWROOT, "overlay",
          f"lowerdir={lowerdir_option(lowers)},upperdir={RW_DIR}/upper,workdir={RW_DIR}/work")


def resolve_in_root(root: str, path: str, hops: int = 40) -> str:
    """Where ``path`` (absolute, inside ``root``) leads, following symlinks as if ``root`` were /."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    while parts:
        if hops <= 0:
            raise StageError(f"too many symlinks resolving {path} in the new root")
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = root + "/" + "/".join(done + [part])
        if os.path.islink(here):
            hops -= 1
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return root + "/" + "/".join(done)


def check_init(init: str) -> None:
    real = resolve_in_root(NEWROOT, init)
    if not os.path.isfile(real) or not os.access(real, os.X_OK):
        raise StageError(f"init={init} is not an executable file in the new root")


def switch_root(init: str) -> None:
    """Move the API filesystems into the new root and exec busybox ``switch_root`` (stays PID 1).

    busybox switch_root deletes the initramfs' files (freeing their RAM; mount points are not crossed, so the
    layers on /run stay), moves NEWROOT onto /, chroots and execs ``init``. Only returns on failure.
    """
    for path in ("/dev", "/proc", "/sys", "/run"):
        target = NEWROOT + path
        os.makedirs(target, exist_ok=True)
        busybox("mount", "--move", path, target)
    os.execv(BUSYBOX, [BUSYBOX, "switch_root", NEWROOT, init])
