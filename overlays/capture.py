"""Capture an overlayfs upper dir (a node's changes) as a zstd-compressed tar stream.

Everything overlayfs needs survives: whiteouts (char 0/0), opaque directories (``trusted.overlay.opaque``,
or ``user.overlay.opaque`` from a ``userxattr`` mount, which is written as the trusted variant), hard links,
symlinks, modes incl. setuid/setgid/sticky, owners, mtimes, xattrs incl. ``security.capability``, sparse
files (GNU PAX sparse 1.0: holes are never read or sent) and any file name. Redirects (``redirect_dir=on``)
and metacopy files are refused with a clear message: they refer to lower paths a layer cannot carry; with
the default ``redirect_dir=off`` overlayfs copies renamed directories instead. Sockets cannot be stored in a
tar and are refused unless ``skip_sockets`` is set. Overlayfs' bookkeeping xattrs (origin, impure, nlink, …)
are dropped.

Memory stays bounded: one directory listing per level being walked plus the table of multiply-linked files;
file data streams through in 1 MiB chunks into a multithreaded zstd compressor.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from layerboot.errors import LayerbootError
from layerboot.overlays.tarscan import OPAQUE_XATTR, check_xattr
from layerboot.overlays.tarwriter import Attrs, TarWriter

log = logging.getLogger("layerboot.capture")

ZSTD_LEVEL = 3


@dataclass(frozen=True)
class CaptureStats:
    members: int
    data_bytes: int


def read_xattrs(path: Path, name: str) -> tuple[tuple[str, bytes], ...]:
    """The entry's xattrs after the layer policy (overlayfs bookkeeping dropped, the rest checked)."""
    kept = []
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    for key in names:
        try:
            value = os.getxattr(path, key, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.ENODATA:
                continue
            raise
        try:
            decided = check_xattr(key, value)
        except ValueError as reason:
            raise LayerbootError(f"cannot capture {name or '.'!r}: {reason}") from None
        if decided:
            kept.append(decided)
    return tuple(sorted(set(kept)))


def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """The (offset, size) ranges of a file that hold data, found with SEEK_DATA/SEEK_HOLE."""
    segments: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        segments.append((start, end - start))
        pos = end
    return segments


class _Segments:
    """Read the given data ranges of an open file back to back."""

    def __init__(self, fd: int, segments: list[tuple[int, int]]) -> None:
        self.fd = fd
        self.segments = segments
        self.index = 0
        self.pos = segments[0][0] if segments else 0
        self.left = segments[0][1] if segments else 0

    def read(self, size: int = -1) -> bytes:
        while self.left == 0:
            self.index += 1
            if self.index >= len(self.segments):
                return b""
            self.pos, self.left = self.segments[self.index]
        want = self.left if size < 0 else min(size, self.left)
        chunk = os.pread(self.fd, want, self.pos)
        self.pos += len(chunk)
        self.left -= len(chunk)
        return chunk


class EntryWriter:
    """Writes filesystem entries (lstat, xattrs, content) as layer members; shared by capture and squash."""

    def __init__(self, writer: TarWriter, *, skip_sockets: bool = False) -> None:
        self.writer = writer
        self.skip_sockets = skip_sockets
        self.links: dict[tuple[int, int, int], str] = {}
        self.data_bytes = 0

    def add(self, source: Path, name: str, st: os.stat_result | None = None, *, opaque: bool | None = None,
            link_scope: object = None) -> None:
        """Add ``source`` as member ``name``. ``opaque`` overrides the opaque marker of a directory;
        ``link_scope`` separates inode numbers of different filesystems (squash reads several layers)."""
        st = st or os.lstat(source)
        xattrs = read_xattrs(source, name)
        if opaque is not None:
            xattrs = tuple(x for x in xattrs if x[0] != OPAQUE_XATTR) + (((OPAQUE_XATTR, b"y"),) if opaque else ())
        attrs = Attrs(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, mtime=int(st.st_mtime),
                      xattrs=tuple(sorted(xattrs)))
        mode = st.st_mode
        w = self.writer
        if stat.S_ISDIR(mode):
            w.directory(name, attrs)
        elif stat.S_ISREG(mode):
            self._regular(source, name, st, attrs, link_scope)
        elif stat.S_ISLNK(mode):
            if not self._linked(name, st, attrs, link_scope):
                w.symlink(name, attrs, os.readlink(source))
        elif stat.S_ISCHR(mode) and st.st_rdev == 0:
            w.whiteout(name, attrs)   # never linked: overlayfs shares one whiteout inode among unrelated paths
        elif stat.S_ISFIFO(mode):
            if not self._linked(name, st, attrs, link_scope):
                w.fifo(name, attrs)
        elif stat.S_ISSOCK(mode) and self.skip_sockets:
            log.warning("skipping socket %s (a tar cannot carry sockets)", name)
        elif stat.S_ISSOCK(mode):
            raise LayerbootError(f"cannot capture socket {name!r}: a tar cannot carry sockets",
                                 hint="pass --skip-sockets to leave sockets out")
        else:
            raise LayerbootError(f"cannot capture device node {name!r}: layers carry no device nodes "
                                 f"except overlay whiteouts (char 0/0)")

    def _linked(self, name: str, st: os.stat_result, attrs: Attrs, scope: object) -> bool:
        """Write ``name`` as a hard link if its inode was already written (True), else remember it (False)."""
        if st.st_nlink < 2:
            return False
        key = (id(scope), st.st_dev, st.st_ino)
        first = self.links.get(key)
        if first is not None:
            self.writer.hardlink(name, attrs, first)
            return True
        self.links[key] = name
        return False

    def _regular(self, source: Path, name: str, st: os.stat_result, attrs: Attrs, scope: object) -> None:
        if self._linked(name, st, attrs, scope):
            return
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = st.st_size
            if size and st.st_blocks * 512 < size:
                segments = data_segments(fd, size)
                if sum(s for _, s in segments) < size:
                    self.writer.sparse(name, attrs, size, segments, _Segments(fd, segments))
                    self.data_bytes += sum(s for _, s in segments)
                    return
            with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
                self.writer.regular(name, attrs, size, handle)
            self.data_bytes += size
        finally:
            os.close(fd)


def walk(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every entry below ``root`` (root itself first, as ''), parents before children, names sorted."""
    yield "", root, os.lstat(root)
    stack: list[tuple[str, Path, Iterator[os.DirEntry[str]]]] = []

    def listing(path: Path) -> Iterator[os.DirEntry[str]]:
        with os.scandir(path) as entries:
            return iter(sorted(entries, key=lambda e: e.name))

    stack.append(("", root, listing(root)))
    while stack:
        rel, path, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        child = path / entry.name
        yield name, child, st
        if stat.S_ISDIR(st.st_mode):
            stack.append((name, child, listing(child)))


def capture_to(upper: Path, output: BinaryIO, *, threads: int = 0, level: int = ZSTD_LEVEL,
               skip_sockets: bool = False) -> CaptureStats:
    """Write the tar.zst of ``upper`` to ``output`` (left open)."""
    if not upper.is_dir():
        raise LayerbootError(f"{upper} is not a directory")
    compressor = zstandard.ZstdCompressor(level=level, threads=threads if threads > 0 else -1)
    with compressor.stream_writer(output, closefd=False) as compressed:
        writer = TarWriter(compressed)  # type: ignore[arg-type]
        entries = EntryWriter(writer, skip_sockets=skip_sockets)
        for name, path, st in walk(upper):
            entries.add(path, name, st)
        writer.close()
    return CaptureStats(members=writer.members, data_bytes=entries.data_bytes)


def capture(upper: Path, output: Path, **options: object) -> CaptureStats:
    """Capture ``upper`` into the file ``output``, atomically (a temp file renamed into place)."""
    tmp = output.with_name(f".{output.name}.partial")
    try:
        with open(tmp, "wb") as handle:
            stats = capture_to(upper, handle, **options)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise LayerbootError(f"capture of {upper} failed: {err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stats
