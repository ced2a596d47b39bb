"""Building and checking squashfs images with squashfs-tools (mksquashfs) and squashfs-tools-ng (tar2sqfs)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

from layerboot.errors import LayerbootError
from layerboot.progress import Progress
from layerboot.run import passed_environment, require_tool, run

SQUASHFS_MAGIC = b"hsqs"
_BAR = re.compile(r"\]\s+(\d+)/(\d+)\s+\d+%")


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


def newest_mtime(tree: Path) -> int:
    """The newest modification time of anything in ``tree`` (not following symlinks), in whole seconds."""
    newest = int(os.lstat(tree).st_mtime)
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            try:
                newest = max(newest, int(os.lstat(os.path.join(directory, name)).st_mtime))
            except FileNotFoundError:
                continue
    return newest


def _bar_blocks(line: str) -> tuple[float, float] | None:
    """mksquashfs's progress bar, ``[====\\   ] 400/800  50%``, as (blocks done, blocks in all)."""
    match = _BAR.search(line)
    return (float(match.group(1)), float(match.group(2))) if match else None


def mksquashfs(tree: Path, output: Path, *, compression: str = "zstd", block_size: int = 131072,
               processors: int = 0, all_root: bool = False, owner: tuple[int, int] | None = None,
               mtime: int | None = None, reproducible: bool = False) -> None:
    """Pack a directory tree into a squashfs image, keeping owners, modes, xattrs, hardlinks and mtimes.

    The same tree gives the same image: mksquashfs sorts directories and packs reproducibly; the superblock
    time is ``mtime`` when given (every file gets it too), else $SOURCE_DATE_EPOCH (mksquashfs clamps newer
    file times to it), else the newest time in the tree. ``all_root`` or ``owner`` (uid, gid) normalise owners.
    ``reproducible`` (rendered per-node layers) goes further: every time stamp is 0 and xattrs are left out, so
    the same files give the same bytes whatever their times on disk.
    """
    require_tool("mksquashfs", package="squashfs-tools")
    if not tree.is_dir():
        raise LayerbootError(f"{tree} is not a directory")
    argv: list[str | Path] = ["mksquashfs", tree, output, "-noappend", "-comp", compression, "-b",
                              str(block_size), "-processors", str(threads(processors)),
                              "-no-xattrs" if reproducible else "-xattrs"]
    if reproducible:
        mtime = 0
    env: dict[str, str | None] | None = None
    if mtime is not None:
        argv += ["-all-time", str(mtime), "-mkfs-time", str(mtime)]
        env = {"SOURCE_DATE_EPOCH": None}   # mksquashfs refuses both; the explicit option wins
    elif "SOURCE_DATE_EPOCH" not in passed_environment():
        argv += ["-mkfs-time", str(newest_mtime(tree))]
    if all_root:
        argv.append("-all-root")
    elif owner is not None:
        argv += ["-force-uid", str(owner[0]), "-force-gid", str(owner[1])]
    with Progress(f"packing {tree.name or tree} with mksquashfs", unit="blocks", parse=_bar_blocks) as step:
        run(argv, timeout=None, env=env, lines=step.line, terminal=True)


def tar2sqfs(stream: BinaryIO | int, output: Path, *, compression: str = "zstd", block_size: int = 131072,
             workers: int = 0) -> None:
    """Turn an uncompressed tar stream on a file descriptor straight into a squashfs image."""
    require_tool("tar2sqfs", package="squashfs-tools-ng")
    argv = ["tar2sqfs", "--quiet", "--no-skip", "--force", "--compressor", compression,
            "--block-size", str(block_size), "--num-jobs", str(threads(workers)), output]
    run(argv, stdin=stream, timeout=None)
