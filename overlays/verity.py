"""A layer's Merkle tree, computed once at import: its fs-verity digest and its dm-verity hash tree.

Both come from the same tree. fs-verity (Documentation/filesystems/fsverity.rst) and dm-verity
(Documentation/admin-guide/device-mapper/verity.rst, format 1) with SHA-256, 4096-byte data and hash blocks and
**no salt** hash the same way: level 0 holds the SHA-256 of every data block (the last one zero-padded), each
further level the SHA-256 of every block of the level below (128 hashes to a block, the last block zero-padded),
until one block is left, whose hash is the **root hash** (a one-block file's root is the hash of that block).

* The **fs-verity digest** is the SHA-256 of the 256-byte ``fsverity_descriptor`` holding the root hash and the
  file size; ``fsverity digest`` (fsverity-utils) prints the same value. A node's cache turns fs-verity on for
  a cached layer and compares the kernel's digest with the signed one in O(1) (initrd/stage1/cache.py).
* The **dm-verity tree** is those levels stored top level first, each padded to whole blocks, with no
  superblock: byte for byte what ``veritysetup format --no-superblock --salt=-`` writes (tests/test_verity.py
  checks it, and ``veritysetup verify`` against it). It is stored as an object of its own (kind ``verity``,
  named by its sha256), and the signed manifest names it with the root hash (:class:`VerityTree`), so a node can
  attach the layer as a block device, stack dm-verity on it with the signed root, and have the kernel check
  every block it reads (initrd/stage1/stream.py): layers streamed over the network, cached or in an A/B slot
  are then used without hashing them whole first.

Why no salt: a salt only makes precomputed attacks on the hash harder, which SHA-256 does not need here, and
with none the two trees are one (computed in one pass at import, ~1 s per GiB on the server's CPU). The root
hash is signed either way (in the manifest's ``verity`` field, and inside the signed fs-verity digest).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.overlays.names import check_digest

BLOCK = 4096
DIGEST = 32
READ = 1 << 20      # a multiple of BLOCK
ALGORITHM_SHA256 = 1
LOG_BLOCK = 12
VERITY_FORMAT = 1   # dm-verity's hash format version (1: the salt, here empty, goes before the block)


@dataclass(frozen=True)
class VerityTree:
    """Where a layer's dm-verity hash tree is and how to use it: what the signed manifest carries per layer.

    ``tree`` is the sha256 of the tree object in the store (``tree_size`` bytes, top level first, no
    superblock: the hash device starts at block 0). ``root`` is the root hash dm-verity is given.
    """

    root: str
    tree: str
    tree_size: int
    algorithm: str = "sha256"
    data_block: int = BLOCK
    hash_block: int = BLOCK
    salt: str = ""
    format: int = VERITY_FORMAT

    def __post_init__(self) -> None:
        check_digest(self.root)
        check_digest(self.tree)
        if isinstance(self.tree_size, bool) or not isinstance(self.tree_size, int) or self.tree_size < 0 \
                or self.tree_size % self.hash_block:
            raise LayerbootError(f"dm-verity tree {self.tree[:12]} has an invalid size {self.tree_size!r}")
        if (self.algorithm, self.data_block, self.hash_block, self.salt, self.format) != \
                ("sha256", BLOCK, BLOCK, "", VERITY_FORMAT):
            raise LayerbootError("only dm-verity trees with sha256, 4096-byte blocks, no salt and format 1 are "
                                 f"made and read here (got {self.algorithm}, {self.data_block}/{self.hash_block}, "
                                 f"salt {self.salt!r}, format {self.format})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "VerityTree":
        if not isinstance(data, dict):
            raise LayerbootError("a dm-verity record is not a JSON object")
        try:
            return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except TypeError as err:
            raise LayerbootError(f"malformed dm-verity record: {err}") from None


@dataclass(frozen=True)
class MerkleTree:
    """One pass over a file: its size, the fs-verity digest, and the dm-verity root hash and tree bytes."""

    size: int
    fsverity: str
    root: str
    tree: bytes


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


def _padded(level: bytes) -> bytes:
    return level + bytes(-len(level) % BLOCK)


def merkle_tree(path: Path) -> MerkleTree:
    """Hash the file at ``path`` once and return both verity forms of its Merkle tree (see the module text)."""
    level = bytearray()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(READ):             # READ bytes (a multiple of BLOCK) except at the end
            size += len(chunk)
            level += _hash_blocks(chunk)
    stored: list[bytes] = []                          # the levels below the root, level 0 first
    while len(level) > DIGEST:                        # until one hash is left: the root
        stored.append(_padded(bytes(level)))
        level = bytearray(_hash_blocks(level))        # each block of this level's hashes, zero-padded
    root = bytes(level) or bytes(DIGEST)              # an empty file's root is all zeros
    descriptor = struct.pack("<BBBBIQ64s32s144s", 1, ALGORITHM_SHA256, LOG_BLOCK, 0, 0, size, root, b"", b"")
    return MerkleTree(size, hashlib.sha256(descriptor).hexdigest(), root.hex(), b"".join(reversed(stored)))


def fsverity_digest(path: Path) -> str:
    """The hex fs-verity SHA-256 digest of the file at ``path`` (4 KiB blocks, no salt)."""
    return merkle_tree(path).fsverity
