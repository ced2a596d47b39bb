"""Small real filesystems for disk-full and disk-error tests: ext4 on a loop device, filled and broken on purpose.

* :func:`small_ext4` mounts a fresh ext4 of a few MB (a sparse image file, a loop device, ``mount``) and
  undoes all of it afterwards;
* :func:`fill` takes the free space down to what is asked for (one ``posix_fallocate``d filler file);
* :class:`BrokenTail` makes reads of one file fail with a real EIO: the loop device's backing file is cut
  short under the blocks of that file (the kernel's loop driver answers reads past the backing file's end
  with an I/O error), and :meth:`BrokenTail.heal` puts the cut bytes back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from layerboot.run import run

BLOCK = 4096


@contextlib.contextmanager
def small_ext4(image: Path, mountpoint: Path, *, mb: int) -> Iterator[str]:
    """Mount a new ext4 of ``mb`` MB at ``mountpoint``; yields its loop device."""
    with open(image, "wb") as handle:
        handle.truncate(mb * 1024 * 1024)
    run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0",
         str(image)])
    mountpoint.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "loop,noatime", str(image), str(mountpoint)])   # autoclear: the loop goes with the mount
    try:
        yield run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(mountpoint)]).text.strip()
    finally:
        if run(["umount", str(mountpoint)], check=False).returncode != 0:
            run(["umount", "-l", str(mountpoint)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def fill(mountpoint: Path, *, leave: int, name: str = "filler") -> Path:
    """Allocate a filler file so that about ``leave`` bytes stay free (0: completely full)."""
    filler = mountpoint / name
    with open(filler, "ab") as handle:
        want = free_bytes(mountpoint) - leave
        while want > 0:
            try:
                os.posix_fallocate(handle.fileno(), os.fstat(handle.fileno()).st_size, want)
                break
            except OSError as err:   # metadata needs a few blocks too: ask for a little less
                if err.errno != errno.ENOSPC:
                    raise
                want -= 16 * BLOCK
        if leave == 0:   # the last blocks, one at a time, until nothing is left
            while True:
                try:
                    os.posix_fallocate(handle.fileno(), os.fstat(handle.fileno()).st_size, BLOCK)
                except OSError:
                    break
    return filler


def physical_extents(path: Path) -> list[tuple[int, int]]:
    """(first block, block count) of each extent of ``path`` on its device (filefrag -v)."""
    text = run(["filefrag", "-v", "-b" + str(BLOCK), str(path)]).text
    extents = []
    for line in text.splitlines():
        match = re.match(r"\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+):", line)
        if match:
            extents.append((int(match.group(1)), int(match.group(3))))
    return extents


class BrokenTail:
    """Make reads of ``victim`` fail with EIO by cutting the loop device's backing ``image`` before it."""

    def __init__(self, image: Path, victim: Path) -> None:
        self.image = image
        extents = physical_extents(victim)
        assert extents, f"no extents for {victim}"
        self.cut = min(first for first, _ in extents) * BLOCK
        with open(victim, "rb") as handle:   # forget the cached pages, so the next read goes to the device
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        self.size = image.stat().st_size
        with open(image, "rb") as handle:
            handle.seek(self.cut)
            self.tail = handle.read()
        os.truncate(image, self.cut)

    def heal(self) -> None:
        with open(self.image, "r+b") as handle:
            handle.seek(self.cut)
            handle.write(self.tail)
            handle.flush()
            os.fsync(handle.fileno())
        assert self.image.stat().st_size == self.size
