"""Capture an overlayfs upper dir (a node's changes) as a zstd-compressed tar stream.

Everything overlayfs needs survives: whiteouts (char 0/0), opaque directories (``trusted.overlay.opaque``,
or ``user.overlay.opaque`` from a ``userxattr`` mount, which is written as the trusted variant), hard links,
symlinks, modes incl. setuid/setgid/sticky, owners, mtimes (whole seconds, as squashfs keeps them), xattrs
incl. ``security.capability`` and any xattr name (see tarwriter for ``=``, ``%`` and non-UTF-8 bytes), device
nodes and fifos (the server's upload policy decides whether it takes them), sparse files (GNU PAX sparse 1.0:
holes are never read or sent) and any file name. Refused with one line naming the entry: redirects
(``redirect_dir=on``) and metacopy files (they refer to lower paths a layer cannot carry; with the default
``redirect_dir=off`` overlayfs copies renamed directories instead), POSIX ACLs (squashfs has no place for
them), xattrs that need a larger tar header than tar2sqfs accepts, and sockets (a tar cannot carry them)
unless ``skip_sockets`` is set. Overlayfs' bookkeeping xattrs (origin, impure, nlink, …) are dropped.

A live node keeps writing while it is captured, so like GNU tar this warns and goes on: an entry that
vanished after its directory was listed is left out, a file whose size, mtime or ctime changed while it was
read is kept as read and named in a warning, and an mtime squashfs cannot store (before 1970, after 2106) is
clamped with a warning.

Memory stays bounded: one directory listing per level being walked plus the table of multiply-linked files;
file data streams through in 1 MiB chunks into a multithreaded zstd compressor.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from layerboot.errors import LayerbootError
from layerboot.overlays.tarscan import OPAQUE_XATTR, check_xattr
from layerboot.overlays.tarwriter import MAX_MTIME, Attrs, HeaderTooLarge, TarWriter

log = logging.getLogger("layerboot.capture")

ZSTD_LEVEL = 3
TAIL_CHECK = 1 << 20          # squashfs block sizes are at most 1 MiB: a tail fragment lies within this of EOF
BLOCKS_SLACK = 64 << 10       # st_blocks may exceed the data by metadata blocks (ext4 extent blocks, …)


@dataclass(frozen=True)
class CaptureStats:
    members: int
    data_bytes: int
    warnings: int = 0


def read_xattrs(path: Path, name: str, action: str = "capture") -> tuple[tuple[str, bytes], ...]:
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
            raise LayerbootError(f"cannot {action} {name or '.'!r}: {reason}") from None
        if decided:
            kept.append(decided)
    return tuple(sorted(set(kept)))


def seek_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """The (offset, size) ranges of a file that hold data, as SEEK_DATA/SEEK_HOLE report them."""
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


def data_segments(fd: int, size: int, blocks: int, name: str = "") -> list[tuple[int, int]]:
    """The data ranges of a sparse file; the whole file when SEEK_DATA/SEEK_HOLE cannot be trusted for it.

    Like overlayfs copy-up, a failing seek means a plain copy (holes read as zeros; tar2sqfs stores zero
    blocks sparse again). The reason here: squashfs's SEEK_DATA/SEEK_HOLE (Linux 6.16 and later) scans one
    block-list entry past the blocks of a file whose tail is packed into a fragment, reading the next inode's
    header as a block size: that fails with EIO, or answers wrongly (a hole, or no data up to EOF) when those
    bytes decode as a valid size. So the map is also distrusted when it ends in a hole whose last MiB holds
    data, or when it covers less than ``st_blocks`` says the file stores.
    """
    try:
        segments = seek_segments(fd, size)
    except OSError as err:
        log.debug("SEEK_DATA/SEEK_HOLE failed on %r (%s); copying it whole", name, err)
        return [(0, size)]
    found = sum(length for _, length in segments)
    end = segments[-1][0] + segments[-1][1] if segments else 0
    if found + BLOCKS_SLACK < blocks * 512:
        log.debug("the hole map of %r misses data st_blocks counts; copying it whole", name)
        return [(0, size)]
    if end < size:
        tail = max(end, size - TAIL_CHECK)
        if os.pread(fd, size - tail, tail).count(0) != size - tail:
            log.debug("the hole map of %r misses data at its end; copying it whole", name)
            return [(0, size)]
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

    def __init__(self, writer: TarWriter, *, skip_sockets: bool = False, action: str = "capture") -> None:
        self.writer = writer
        self.skip_sockets = skip_sockets
        self.action = action
        self.links: dict[tuple[int, int, int], str] = {}
        self.data_bytes = 0
        self.warnings = 0

    def warn(self, message: str, *args: object) -> None:
        self.warnings += 1
        log.warning(message, *args)

    def add(self, source: Path, name: str, st: os.stat_result | None = None, *, opaque: bool | None = None,
            link_scope: object = None) -> None:
        """Add ``source`` as member ``name``. ``opaque`` overrides the opaque marker of a directory;
        ``link_scope`` separates inode numbers of different filesystems (squash reads several layers).
        An entry that vanished since its directory was listed is left out with a warning."""
        try:
            self._add(source, name, st, opaque, link_scope)
        except FileNotFoundError:
            if not name:
                raise
            self.warn("%r vanished while being captured; left out", name)
        except HeaderTooLarge as err:
            raise LayerbootError(f"cannot {self.action} {name or '.'!r}: {err}") from None

    def _add(self, source: Path, name: str, st: os.stat_result | None, opaque: bool | None,
             link_scope: object) -> None:
        st = st or os.lstat(source)
        xattrs = read_xattrs(source, name, self.action)
        if opaque is not None:
            xattrs = tuple(x for x in xattrs if x[0] != OPAQUE_XATTR) + (((OPAQUE_XATTR, b"y"),) if opaque else ())
        mtime = st.st_mtime_ns // 1_000_000_000
        if not 0 <= mtime <= MAX_MTIME:
            self.warn("%r: mtime %d is outside what squashfs stores (1970 to 2106); the layer gets %d", name,
                      mtime, min(max(mtime, 0), MAX_MTIME))
        attrs = Attrs(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, mtime=mtime,
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
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            if not self._linked(name, st, attrs, link_scope):
                w.device(name, attrs, "chardev" if stat.S_ISCHR(mode) else "blockdev", os.major(st.st_rdev),
                         os.minor(st.st_rdev))
        elif stat.S_ISSOCK(mode) and self.skip_sockets:
            self.warn("skipping socket %r (a tar cannot carry sockets)", name)
        else:
            raise LayerbootError(f"cannot {self.action} socket {name!r}: a tar cannot carry sockets",
                                 hint="pass --skip-sockets to leave sockets out" if self.action == "capture"
                                 else "squashfs images with sockets cannot be squashed")

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
            segments = data_segments(fd, size, st.st_blocks, name) if size and st.st_blocks * 512 < size else []
            if segments and sum(s for _, s in segments) < size:
                self.writer.sparse(name, attrs, size, segments, _Segments(fd, segments))
                self.data_bytes += sum(s for _, s in segments)
            else:
                os.lseek(fd, 0, os.SEEK_SET)           # SEEK_DATA/SEEK_HOLE above moved the shared offset
                with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
                    self.writer.regular(name, attrs, size, handle)
                self.data_bytes += size
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (size, st.st_mtime_ns, st.st_ctime_ns):
                self.warn("%r changed while being captured; kept as read (capture again when it is quiet)", name)
        finally:
            os.close(fd)


def walk(root: Path, warn: Callable[..., None] = log.warning) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every entry below ``root`` (root itself first, as ''), parents before children, names sorted.
    Entries and directories that vanish while being walked are left out (``warn`` names them)."""
    yield "", root, os.lstat(root)
    stack: list[tuple[str, Path, Iterator[os.DirEntry[str]]]] = []

    def listing(path: Path) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(path) as entries:
                return iter(sorted(entries, key=lambda e: e.name))
        except (FileNotFoundError, NotADirectoryError):
            if path == root:
                raise
            warn("%r vanished while being captured; its contents are left out", os.fspath(path))
            return iter(())

    stack.append(("", root, listing(root)))
    while stack:
        rel, path, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            warn("%r vanished while being captured; left out", name)
            continue
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
        for name, path, st in walk(upper, entries.warn):
            entries.add(path, name, st)
        writer.close()
    return CaptureStats(members=writer.members, data_bytes=entries.data_bytes, warnings=entries.warnings)


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
