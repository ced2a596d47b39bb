"""The fs-verity digest of a layer, for the signed manifest (stage1 compares it with the kernel's, see below).

A node's cache disk keeps layers with fs-verity on (initrd/stage1/cache.py); the kernel then reports each file's
fs-verity digest in O(1) and checks every block as it reads it. For that to prove anything the expected digest
must come from the signed manifest, not from the disk, so the store computes it here once per layer and the
manifest carries it as the optional per-layer ``fsverity`` field.

The digest is fs-verity's (Documentation/filesystems/fsverity.rst), with SHA-256, 4096-byte blocks and no salt,
which is what stage1 asks the kernel for: a Merkle tree whose level 0 holds the SHA-256 of every data block (the
last one zero-padded), each further level the SHA-256 of every block of the level below (hashes packed 128 to a
block, the last block zero-padded), until one hash is left: the root (a one-block file's root is the hash of
that block; an empty file's is zeros). The digest is the SHA-256 of
the 256-byte ``fsverity_descriptor`` holding the root hash and the file size. ``fsverity digest`` from
fsverity-utils prints the same value (tests/test_manifest.py checks it); computing it here avoids a tool on the
server and costs one extra pass over a layer at import.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

BLOCK = 4096
DIGEST = 32
READ = 1 << 20      # a multiple of BLOCK
ALGORITHM_SHA256 = 1
LOG_BLOCK = 12


def _hash_blocks(data: bytes | memoryview) -> bytes:
    """The concatenated SHA-256 of each BLOCK of ``data`` (the last block zero-padded)."""
    out = bytearray()
    view = memoryview(data)
    for start in range(0, len(view), BLOCK):
        block = view[start:start + BLOCK]
        if len(block) < BLOCK:
            block = bytes(block) + bytes(BLOCK - len(block))
        out += hashlib.sha256(block).digest()
    return bytes(out)


def fsverity_digest(path: Path) -> str:
    """The hex fs-verity SHA-256 digest of the file at ``path`` (4 KiB blocks, no salt)."""
    level = bytearray()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(READ):             # READ bytes (a multiple of BLOCK) except at the end
            size += len(chunk)
            level += _hash_blocks(chunk)
    while len(level) > DIGEST:                        # until one hash is left: the root
        level = bytearray(_hash_blocks(level))        # each block of this level's hashes, zero-padded
    root = bytes(level) or bytes(DIGEST)              # an empty file's root is all zeros
    descriptor = struct.pack("<BBBBIQ64s32s144s", 1, ALGORITHM_SHA256, LOG_BLOCK, 0, 0, size, root, b"", b"")
    return hashlib.sha256(descriptor).hexdigest()
