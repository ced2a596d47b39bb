"""dm-verity devices through the device-mapper ioctls on /dev/mapper/control (no veritysetup, no dmsetup).

A verity device is three ioctls: DM_DEV_CREATE (a named, empty device), DM_TABLE_LOAD (one ``verity`` target,
read-only) and DM_DEV_SUSPEND without the suspend flag (resume: the table goes live). The kernel then checks
every block read through ``/dev/dm-N`` against the hash tree and the root hash given here, and answers a block
that does not match with EIO. veritysetup would do the same with libcryptsetup, libdevmapper, libcrypto,
json-c and argon2 in the image and a process per device: 0.21 s of CPU and 0.6 s of wall time per layer under
TCG (docs/stage1.md, "Cached layers"), against a few milliseconds for these ioctls. Layouts:
linux/dm-ioctl.h (struct dm_ioctl, struct dm_target_spec). Nothing happens at import time.
"""

from __future__ import annotations

import os
import struct

CONTROL = "/dev/mapper/control"
MODULES = ("dm_mod", "dm_verity")     # what a verity device needs (in every driver set: build/drivers.py)
DM_READONLY_FLAG = 1 << 0
# _IOWR(0xfd, cmd, struct dm_ioctl) with sizeof(struct dm_ioctl) == 312
_IOCTL = 0xC138FD00
DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD = _IOCTL | 3, _IOCTL | 4, _IOCTL | 6, _IOCTL | 9
# version[3], data_size, data_start, target_count, open_count, flags, event_nr, padding, dev, name, uuid, data[7]
_DM_IOCTL = struct.Struct("=3IIIIiIIIQ128s129s7s")
_TARGET = struct.Struct("=QQiI16s")     # sector_start, length, status, next, target_type
SECTOR = 512


class DmError(Exception):
    pass


def _call(control: int, request: int, name: str, *, flags: int = 0, targets: bytes = b"", count: int = 0) -> int:
    """One device-mapper ioctl on device ``name``; returns the ``dev`` field of the answer."""
    import fcntl

    size = _DM_IOCTL.size + len(targets)
    buffer = bytearray(_DM_IOCTL.pack(4, 0, 0, size, _DM_IOCTL.size, count, 0, flags, 0, 0, 0,
                                      name.encode()[:127], b"", b"") + targets)
    try:
        fcntl.ioctl(control, request, buffer)
    except OSError as err:
        raise DmError(f"device-mapper {name}: {err.strerror or err}") from None
    return _DM_IOCTL.unpack_from(buffer)[10]


def verity_table(data: str, hash_dev: str, data_blocks: int, hash_start: int, root: str, *,
                 block: int = 4096, salt: str = "") -> str:
    """The ``verity`` target's arguments (Documentation/admin-guide/device-mapper/verity.rst), format 1."""
    return f"1 {data} {hash_dev} {block} {block} {data_blocks} {hash_start} sha256 {root} {salt or '-'}"


def create_verity(name: str, data: str, hash_dev: str, data_blocks: int, hash_start: int, root: str, *,
                  block: int = 4096) -> str:
    """Make ``/dev/dm-N`` checking ``data`` (``MAJ:MIN`` or a path) against the tree on ``hash_dev`` from block
    ``hash_start`` and the signed ``root``; returns the device path. Fails without leaving a device behind."""
    params = verity_table(data, hash_dev, data_blocks, hash_start, root, block=block).encode() + b"\0"
    params += b"\0" * (-len(params) % 8)
    spec = _TARGET.pack(0, data_blocks * block // SECTOR, 0, _TARGET.size + len(params), b"verity") + params
    try:
        control = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise DmError(f"{CONTROL}: {err.strerror} (is dm_mod loaded?)") from None
    try:
        dev = _call(control, DM_DEV_CREATE, name)
        try:
            _call(control, DM_TABLE_LOAD, name, flags=DM_READONLY_FLAG, targets=spec, count=1)
            _call(control, DM_DEV_SUSPEND, name)          # no DM_SUSPEND_FLAG: resume, the table goes live
        except DmError:
            try:
                _call(control, DM_DEV_REMOVE, name)
            except DmError:
                pass
            raise
    finally:
        os.close(control)
    return f"/dev/dm-{os.minor(dev)}"


def remove(name: str) -> None:
    control = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        _call(control, DM_DEV_REMOVE, name)
    finally:
        os.close(control)


def device_number(path: str) -> str:
    """``MAJ:MIN`` of a block device node (dm tables name devices so, without a /dev lookup in the kernel)."""
    st = os.stat(path)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
