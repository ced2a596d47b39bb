"""Writing layer contents as a PAX tar stream: the one tar writer behind capture, bake and squash.

Every member is written from explicit, already-checked attributes (never from a foreign tar header), so the
stream tar2sqfs reads holds exactly what layerboot decided to keep. Xattrs travel as ``SCHILY.xattr.*``
records (binary values survive), sparse files as GNU PAX sparse 1.0 members, whiteouts as char devices 0/0.
The stream needs no seeking, so it can go into a pipe or a zstd compressor.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from layerboot.errors import LayerbootError

XATTR_KEY = "SCHILY.xattr."
COPY_CHUNK = 1 << 20
MAX_MTIME = 2 ** 32 - 1          # squashfs keeps 32-bit unsigned seconds


@dataclass(frozen=True)
class Attrs:
    """What a layer keeps about every entry besides its content."""

    mode: int                                  # permission bits incl. setuid/setgid/sticky (0o7777)
    uid: int
    gid: int
    mtime: int
    xattrs: tuple[tuple[str, bytes], ...] = ()


class Reader(Protocol):
    def read(self, size: int = -1) -> bytes: ...


class _Exact:
    """Hand out exactly ``size`` bytes from ``source``; a short source is a clear error, not padding."""

    def __init__(self, source: Reader, size: int, what: str, prefix: bytes = b"") -> None:
        self.source = source
        self.left = size
        self.what = what
        self.prefix = prefix

    def read(self, size: int = -1) -> bytes:
        """Return exactly ``size`` bytes (tarfile's copy loop insists on full reads) or the rest."""
        want = self.left if size < 0 else min(size, self.left)
        parts: list[bytes] = []
        if self.prefix:
            parts.append(self.prefix[:want])
            self.prefix = self.prefix[want:]
            want -= len(parts[0])
        while want > 0:
            chunk = self.source.read(want)
            if not chunk:
                raise LayerbootError(f"{self.what} ended early (was it changed while being read?)")
            parts.append(chunk)
            want -= len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.left -= len(data)
        return data


def sparse_map_block(realsize: int, segments: Sequence[tuple[int, int]]) -> bytes:
    """The GNU sparse 1.0 map that precedes the data: count, then offset/size pairs, padded to 512 bytes."""
    numbers = [len(segments)] + [n for segment in segments for n in segment]
    text = "".join(f"{n}\n" for n in numbers).encode("ascii")
    return text + b"\0" * (-len(text) % tarfile.BLOCKSIZE)


def normalize_segments(realsize: int, segments: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop empty segments and end with a zero-length one at EOF when the file ends in a hole (as GNU tar)."""
    kept = [(offset, size) for offset, size in segments if size > 0]
    end = kept[-1][0] + kept[-1][1] if kept else 0
    if end < realsize or not kept:
        kept.append((realsize, 0))
    return kept


def _octal(value: int, width: int) -> bytes | None:
    return b"%0*o\0" % (width - 1, value) if 0 <= value < 8 ** (width - 1) else None


def ustar_header(info: tarfile.TarInfo) -> bytes | None:
    """The plain ustar header tarfile would write for a member that needs no pax record, or None.

    Most members (short ASCII names, no xattrs) take this path; it skips TarFile's generic header code, which
    dominated capture time on trees of small files.
    """
    name = info.name + "/" if info.type == tarfile.DIRTYPE and not info.name.endswith("/") else info.name
    if not (name.isascii() and info.linkname.isascii()) or len(name) > 100 or len(info.linkname) > 100:
        return None
    numbers = [_octal(info.mode, 8), _octal(info.uid, 8), _octal(info.gid, 8), _octal(info.size, 12),
               _octal(int(info.mtime), 12), _octal(info.devmajor, 8), _octal(info.devminor, 8)]
    if None in numbers or "\0" in name:
        return None
    mode, uid, gid, size, mtime, major, minor = numbers
    if info.type not in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        major = minor = b"\0" * 8
    header = b"".join([name.encode("ascii").ljust(100, b"\0"), mode, uid, gid, size, mtime,  # type: ignore[list-item]
                       b" " * 8, info.type, info.linkname.encode("ascii").ljust(100, b"\0"), b"ustar\x0000",
                       b"\0" * 64, major, minor, b"\0" * 167])  # type: ignore[list-item]
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


class TarWriter:
    """Add members one by one; ``close()`` writes the end-of-archive blocks (the output stays open)."""

    def __init__(self, output: BinaryIO) -> None:
        self._out = output
        self.offset = 0
        self.members = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.offset += len(data)

    def _info(self, name: str, kind: bytes, attrs: Attrs) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name or ".")
        info.type = kind
        info.mode = attrs.mode & 0o7777
        info.uid, info.gid = attrs.uid, attrs.gid
        info.uname = info.gname = ""
        info.mtime = min(max(int(attrs.mtime), 0), MAX_MTIME)
        info.pax_headers = {XATTR_KEY + key: value.decode("utf-8", "surrogateescape") for key, value in attrs.xattrs}
        return info

    def _add(self, info: tarfile.TarInfo, data: Reader | None = None) -> None:
        header = None if info.pax_headers else ustar_header(info)
        self._write(header or info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if data is not None and info.size:
            left = info.size
            while left:
                chunk = data.read(min(COPY_CHUNK, left))
                self._write(chunk)
                left -= len(chunk)
            if info.size % tarfile.BLOCKSIZE:
                self._write(b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE))
        self.members += 1

    def directory(self, name: str, attrs: Attrs) -> None:
        self._add(self._info(name, tarfile.DIRTYPE, attrs))

    def symlink(self, name: str, attrs: Attrs, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, attrs)
        info.linkname = target
        self._add(info)

    def hardlink(self, name: str, attrs: Attrs, target: str) -> None:
        info = self._info(name, tarfile.LNKTYPE, attrs)
        info.linkname = target
        self._add(info)

    def whiteout(self, name: str, attrs: Attrs) -> None:
        info = self._info(name, tarfile.CHRTYPE, attrs)
        info.devmajor = info.devminor = 0
        self._add(info)

    def fifo(self, name: str, attrs: Attrs) -> None:
        self._add(self._info(name, tarfile.FIFOTYPE, attrs))

    def regular(self, name: str, attrs: Attrs, size: int, data: Reader) -> None:
        info = self._info(name, tarfile.REGTYPE, attrs)
        info.size = size
        self._add(info, _Exact(data, size, f"file {name!r}"))

    def sparse(self, name: str, attrs: Attrs, realsize: int, segments: Sequence[tuple[int, int]],
               data: Reader) -> None:
        """A sparse file: ``data`` yields the bytes of ``segments`` (offset, size) back to back."""
        segments = normalize_segments(realsize, segments)
        block = sparse_map_block(realsize, segments)
        stored = sum(size for _, size in segments)
        info = self._info("GNUSparseFile.0/data", tarfile.REGTYPE, attrs)
        info.size = len(block) + stored
        info.pax_headers.update({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name or ".",
                                 "GNU.sparse.realsize": str(realsize)})
        self._add(info, _Exact(data, info.size, f"file {name!r}", prefix=block))

    def close(self) -> None:
        """End-of-archive (two zero blocks), padded to a whole 10 KiB record like tar does."""
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))
        if self.offset % tarfile.RECORDSIZE:
            self._write(b"\0" * (tarfile.RECORDSIZE - self.offset % tarfile.RECORDSIZE))

