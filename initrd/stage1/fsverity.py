"""fs-verity for cached layers: turn it on for a file, and read the file's fs-verity digest back (O(1)).

fs-verity (``CONFIG_FS_VERITY=y`` in Debian's kernels, on ext4 made with ``-O verity``) makes a file read-only
for good and checks every page the kernel reads from it against a Merkle tree; the file's *digest* (SHA-256 of
the fs-verity descriptor, which holds the tree's root hash and the size) identifies its content exactly like
a sha256 of the bytes would. Comparing it with the digest the signed manifest names (the optional per-layer
``fsverity`` field, computed by the server: overlays/verity.py) proves a cached layer intact without reading it;
blocks altered on the disk behind the filesystem's back fail with EIO when read, so altered bytes are never used.
The figures that chose this over re-hashing and over dm-verity are in docs/stage1.md ("Cached layers").

Only the two ioctls are used (no fsverity-utils in the image). Nothing happens at import time.
"""

from __future__ import annotations

import os

SHA256 = 1
BLOCK_SIZE = 4096
# _IOW('f', 133, struct fsverity_enable_arg): 128 bytes; _IOWR('f', 134, struct fsverity_digest): 4 bytes + digest
FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686
ENODATA, EEXIST, ENOTTY, EOPNOTSUPP, EINVAL = 61, 17, 25, 95, 22
UNSUPPORTED = (ENOTTY, EOPNOTSUPP)   # no fs-verity in the kernel, or the filesystem lacks the verity feature


class VerityUnsupported(Exception):
    """This kernel or filesystem cannot do fs-verity (the caller falls back to hashing the whole file)."""


def measure(path: str) -> str | None:
    """The file's fs-verity SHA-256 digest (hex), or None when fs-verity is not enabled on it."""
    import fcntl
    import struct

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buffer = bytearray(struct.pack("=HH", 0, 64) + bytes(64))
        try:
            fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buffer)
        except OSError as err:
            if err.errno == ENODATA:
                return None
            if err.errno in UNSUPPORTED:
                raise VerityUnsupported(err.strerror) from None
            raise
    finally:
        os.close(fd)
    algorithm, size = struct.unpack_from("=HH", buffer)
    if algorithm != SHA256 or size != 32:
        return f"algorithm-{algorithm}"     # never equal to a manifest's sha256 digest
    return bytes(buffer[4:36]).hex()


def enable(path: str) -> None:
    """Turn fs-verity on for ``path`` (SHA-256, 4 KiB blocks, no salt: what the server's digest assumes).

    The kernel hashes the whole file once to build the Merkle tree. Already enabled is fine.
    Raises VerityUnsupported when the kernel or filesystem cannot, OSError otherwise.
    """
    import fcntl
    import struct

    # struct fsverity_enable_arg { u32 version, hash_algorithm, block_size, salt_size; u64 salt_ptr;
    #                              u32 sig_size, reserved; u64 sig_ptr; u64 reserved[11]; }
    argument = struct.pack("=IIIIQIIQ88x", 1, SHA256, BLOCK_SIZE, 0, 0, 0, 0, 0)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, argument)
    except OSError as err:
        if err.errno == EEXIST:
            return
        if err.errno in UNSUPPORTED:
            raise VerityUnsupported(err.strerror) from None
        raise
    finally:
        os.close(fd)
