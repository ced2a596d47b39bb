"""A local layer file under dm-verity: the layer and its hash-tree file on read-only loop devices, a ``verity``
target over them with the **signed** root hash, and the squashfs mounted from ``/dev/dm-N``.

Used for A/B slots (slot.py): a slot holds ``layers/<digest>`` and, next to it, ``layers/<digest>.verity`` (the
tree object the signed manifest names: overlays/verity.py, no superblock, so the hash device starts at block 0).
Nothing is hashed up front: the kernel checks every block against the tree, and the tree's top against the
signed root, as it is read, so a block altered on the disk reads as EIO (``device-mapper: verity: ... data block
N is corrupted`` in the kernel log), never as data. One block is read at attach: it proves the tree's top
matches the signed root (dm-verity itself accepts any root at table load and only fails reads) and that the
squashfs superblock is intact, so a wrong root or a damaged start is refused at once, in one line.

Loop devices come from system.attach_loop (LOOP_CONFIGURE, read-only, autoclear: they go away with the dm
device), the dm device from dm.create_verity (three ioctls, no veritysetup). Measured under TCG (docs/stage1.md,
"Cached layers"): a few milliseconds per layer, against 16.9 ms/MB for the re-hash it replaces.
Nothing happens at import time.
"""

from __future__ import annotations

import os

BLOCK = 4096
TREE_SUFFIX = ".verity"


class LocalVerityError(Exception):
    """Why a layer cannot be attached through dm-verity: one line (the caller says it, or turns it into a
    StageError)."""


class VerityUnavailable(LocalVerityError):
    """This kernel has no device-mapper or no dm-verity (nothing to do with the layer itself)."""


class VerityRefused(LocalVerityError):
    """dm-verity refused the layer's first block: wrong root hash, or the layer/tree was altered or damaged."""


def tree_path(layer_path: str) -> str:
    """Where a layer's hash tree lives next to it (slot layout: ``layers/<digest>.verity``)."""
    return layer_path + TREE_SUFFIX


def load_modules() -> None:
    """dm_mod and dm_verity (carried by every driver set: build/drivers.py); VerityUnavailable when they can't."""
    if os.path.isdir("/sys/module/dm_verity"):
        return
    from .console import BUSYBOX, spawn
    from .dm import MODULES

    code, output = spawn([BUSYBOX, "modprobe", "-a", *MODULES], quiet=True)
    if code and not os.path.isdir("/sys/module/dm_verity"):
        raise VerityUnavailable(f"no dm-verity in this kernel ({output.splitlines()[-1] if output else code})")


def check_files(path: str, tree: str, size: int, tree_size: int) -> None:
    """The layer has its signed ``size`` in whole 4 KiB blocks (a loop device cannot pad) and the tree file
    exists with the signed ``tree_size``; LocalVerityError names what is wrong."""
    if size % BLOCK:
        raise LocalVerityError(f"{size} bytes is not whole {BLOCK}-byte blocks (a squashfs made without padding)")
    try:
        got = os.stat(tree).st_size
    except FileNotFoundError:
        raise LocalVerityError(f"no hash tree {os.path.basename(tree)} next to the layer") from None
    except OSError as err:
        raise LocalVerityError(f"cannot read the hash tree {tree}: {err.strerror}") from None
    if got != tree_size:
        raise LocalVerityError(f"the hash tree {os.path.basename(tree)} has {got} bytes, the signed manifest says "
                               f"{tree_size}")


def attach(path: str, tree: str, size: int, root: str, tree_size: int, *, name: str) -> str:
    """Attach the layer file ``path`` (``size`` bytes, signed) and its tree file ``tree`` (``tree_size`` bytes)
    as the read-only dm-verity device ``name`` checked against the signed ``root``; returns ``/dev/dm-N``.

    Leaves nothing behind when it fails: the loop devices are autoclear, the dm device is removed.
    """
    from .console import StageError
    from .dm import DmError, create_verity, device_number, remove
    from .system import attach_loop

    check_files(path, tree, size, tree_size)
    blocks = size // BLOCK
    fds = []
    try:
        try:
            data, fd = attach_loop(path)
            fds.append(fd)
            hashes, start = data, blocks    # a one-block layer has no tree (its root is its block's hash)
            if tree_size:
                hashes, fd = attach_loop(tree)
                fds.append(fd)
                start = 0
        except StageError as err:
            raise LocalVerityError(str(err)) from None
        try:
            device = create_verity(name, device_number(data), device_number(hashes), blocks, start, root)
        except DmError as err:
            if "/dev/mapper/control" in str(err) or "No such device" in str(err):
                raise VerityUnavailable(str(err)) from None
            raise LocalVerityError(str(err)) from None
    finally:
        for fd in fds:       # the dm table holds the loop devices now (or nothing does: autoclear frees them)
            os.close(fd)
    try:
        _first_block(device)
    except OSError as err:
        try:
            remove(name)
        except (DmError, OSError):
            pass
        raise VerityRefused(f"dm-verity refuses its first block ({err.strerror}): the signed root hash does not "
                            "match the layer and its tree") from None
    return device


def _first_block(device: str) -> None:
    import time

    for _ in range(100):      # devtmpfs makes the node asynchronously
        if os.path.exists(device):
            break
        time.sleep(0.01)
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.pread(fd, BLOCK, 0)
    finally:
        os.close(fd)
