"""Building and checking squashfs images with squashfs-tools (mksquashfs) and squashfs-tools-ng (tar2sqfs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run

SQUASHFS_MAGIC = b"hsqs"


def is_squashfs(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == SQUASHFS_MAGIC
    except OSError:
        return False


def require_squashfs(path: Path) -> None:
    if not path.is_file():
        raise LayerbootError(f"{path} does not exist or is not a regular file")
    if not is_squashfs(path):
        raise LayerbootError(f"{path} is not a squashfs image (bad magic)")


def threads(requested: int) -> int:
    return requested or (os.cpu_count() or 1)


def mksquashfs(tree: Path, output: Path, *, compression: str = "zstd", block_size: int = 131072,
               processors: int = 0, all_root: bool = False, reproducible: bool = False) -> None:
    """Pack a directory tree into a squashfs image, keeping owners, modes, xattrs, hardlinks and mtimes.

    ``reproducible``: every time stamp (files and the image's own) is 0 and xattrs are left out, so the same
    tree gives the same bytes (mksquashfs orders entries by name and numbers inodes in that order)."""
    require_tool("mksquashfs", package="squashfs-tools")
    if not tree.is_dir():
        raise LayerbootError(f"{tree} is not a directory")
    argv = ["mksquashfs", tree, output, "-noappend", "-quiet", "-no-progress",
            "-comp", compression, "-b", str(block_size), "-processors", str(threads(processors))]
    argv += ["-no-xattrs", "-mkfs-time", "0", "-all-time", "0"] if reproducible else ["-xattrs"]
    if all_root:
        argv.append("-all-root")
    run(argv, timeout=None)


def tar2sqfs(stream: BinaryIO | int, output: Path, *, compression: str = "zstd", block_size: int = 131072,
             workers: int = 0) -> None:
    """Turn an uncompressed tar stream on a file descriptor straight into a squashfs image."""
    require_tool("tar2sqfs", package="squashfs-tools-ng")
    argv = ["tar2sqfs", "--quiet", "--no-skip", "--force", "--compressor", compression,
            "--block-size", str(block_size), "--num-jobs", str(threads(workers)), output]
    run(argv, stdin=stream, timeout=None)
