"""Writing layer contents as a PAX tar stream: the one tar writer behind capture, bake and squash.

Every member is written from explicit, already-checked attributes (never from a foreign tar header), so the
stream tar2sqfs reads holds exactly what layerboot decided to keep. Headers are built here byte by byte
(plain ustar when a member fits it, else a pax extended header first): names, link targets and xattr names
are bytes to the kernel, and tarfile's writer can only encode keywords that are valid UTF-8. Sparse files go
as GNU PAX sparse 1.0 members, whiteouts as char devices 0/0. The stream needs no seeking, so it can go into a
pipe or a zstd compressor.

Xattrs are pax records in one of two dialects (``style``):

* ``gnu`` (captures: what nodes upload): ``SCHILY.xattr.NAME=VALUE`` with ``%`` written as ``%25`` and ``=``
  as ``%3D`` in NAME (a keyword ends at its first ``=``) and every other byte raw, exactly as GNU tar 1.34
  writes and reads them, so a capture extracts with ``tar --xattrs`` unchanged. A name that is not valid UTF-8
  is written raw too (GNU tar does the same and reads it back byte for byte; tarscan decodes it losslessly).
* ``tar2sqfs`` (the stream bake and squash feed to tar2sqfs): tar2sqfs 1.2 takes SCHILY names verbatim (no
  unescaping), so a name containing ``=`` goes as ``LIBARCHIVE.xattr.<url-quoted name>=<base64 value>``, the
  form it does decode.

Limits of tar2sqfs (squashfs-tools-ng 1.2.0, Debian 12), measured by piping tars into it and kept here, where
the headers are made: one member's pax extended header may hold at most 65536 bytes (``TAR_MAX_PAX_LEN``: a
single 65000-byte xattr value passes, 65535 bytes fail with "rejecting PAX header with size 65585", so do two
values of 40000 bytes each), and a sparse map at most 65536 entries (``TAR_MAX_SPARSE_ENT``). A header over
the first limit raises :class:`HeaderTooLarge` before anything of the member is written, in both dialects, so
capture refuses such a file instead of producing an upload the bake must refuse. A sparse map over the second
limit is coalesced (the smallest holes are sent as zeros; the file's content does not change).
"""

from __future__ import annotations

import base64
import re
import tarfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from layerboot.errors import LayerbootError

XATTR_KEY = "SCHILY.xattr."
LIBARCHIVE_XATTR_KEY = "LIBARCHIVE.xattr."
STYLES = ("gnu", "tar2sqfs")
COPY_CHUNK = 1 << 20
MAX_MTIME = 2 ** 32 - 1          # squashfs keeps 32-bit unsigned seconds
PAX_HEADER_MAX = 65536           # tar2sqfs: largest pax extended header of one member (TAR_MAX_PAX_LEN)
SPARSE_ENTRIES_MAX = 65536       # tar2sqfs: most entries in a GNU sparse 1.0 map (TAR_MAX_SPARSE_ENT)
BLOCK = tarfile.BLOCKSIZE
_GNU_UNESCAPE = re.compile("%(25|3D)")


@dataclass(frozen=True)
class Attrs:
    """What a layer keeps about every entry besides its content."""

    mode: int                                  # permission bits incl. setuid/setgid/sticky (0o7777)
    uid: int
    gid: int
    mtime: int
    xattrs: tuple[tuple[str, bytes], ...] = ()  # names are str with surrogateescape for non-UTF-8 bytes


class Reader(Protocol):
    def read(self, size: int = -1) -> bytes: ...


class HeaderTooLarge(LayerbootError):
    """A member's names and xattrs need a larger pax header than tar2sqfs accepts."""


def gnu_escape(name: bytes) -> bytes:
    """An xattr name as GNU tar writes it in a ``SCHILY.xattr.`` keyword."""
    return name.replace(b"%", b"%25").replace(b"=", b"%3D")


def gnu_unescape(name: str) -> str:
    """The inverse, as GNU tar's reader does it: only ``%25`` and ``%3D``, left to right; others stay literal."""
    return _GNU_UNESCAPE.sub(lambda m: "%" if m.group(1) == "25" else "=", name)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"LEN KEY=VALUE\\n"`` record; LEN counts the whole record including its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    size = len(body) + 1
    while size != len(body) + len(str(size)):
        size = len(body) + len(str(size))
    return str(size).encode("ascii") + body


def xattr_records(xattrs: Sequence[tuple[str, bytes]], style: str) -> list[tuple[bytes, bytes]]:
    records = []
    for name, value in xattrs:
        raw = name.encode("utf-8", "surrogateescape")
        if style == "tar2sqfs" and b"=" in raw:
            records.append(((LIBARCHIVE_XATTR_KEY + urllib.parse.quote_from_bytes(raw, safe="")).encode("ascii"),
                            base64.b64encode(value)))
        elif style == "tar2sqfs":
            records.append((XATTR_KEY.encode("ascii") + raw, value))
        else:
            records.append((XATTR_KEY.encode("ascii") + gnu_escape(raw), value))
    return records


class _Exact:
    """Hand out exactly ``size`` bytes from ``source``; a short source is a clear error, not padding."""

    def __init__(self, source: Reader, size: int, what: str, prefix: bytes = b"") -> None:
        self.source = source
        self.left = size
        self.what = what
        self.prefix = prefix

    def read(self, size: int = -1) -> bytes:
        """Return exactly ``size`` bytes (the copy loop insists on full reads) or the rest."""
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


class _ZeroFilled:
    """The data of coalesced segments: the original segments' bytes with the holes between them as zeros."""

    def __init__(self, source: Reader, pieces: list[tuple[bool, int]]) -> None:
        self.source = source
        self.pieces = pieces                   # (is_data, length) in file order
        self.index = 0
        self.left = pieces[0][1] if pieces else 0

    def read(self, size: int = -1) -> bytes:
        while self.left == 0:
            self.index += 1
            if self.index >= len(self.pieces):
                return b""
            self.left = self.pieces[self.index][1]
        want = self.left if size < 0 else min(size, self.left)
        chunk = self.source.read(want) if self.pieces[self.index][0] else bytes(want)
        self.left -= len(chunk)
        return chunk


def sparse_map_block(realsize: int, segments: Sequence[tuple[int, int]]) -> bytes:
    """The GNU sparse 1.0 map that precedes the data: count, then offset/size pairs, padded to 512 bytes."""
    numbers = [len(segments)] + [n for segment in segments for n in segment]
    text = "".join(f"{n}\n" for n in numbers).encode("ascii")
    return text + b"\0" * (-len(text) % BLOCK)


def normalize_segments(realsize: int, segments: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop empty segments and end with a zero-length one at EOF when the file ends in a hole (as GNU tar)."""
    kept = [(offset, size) for offset, size in segments if size > 0]
    end = kept[-1][0] + kept[-1][1] if kept else 0
    if end < realsize or not kept:
        kept.append((realsize, 0))
    return kept


def coalesce_segments(segments: Sequence[tuple[int, int]], limit: int) -> tuple[list[tuple[int, int]],
                                                                                list[tuple[bool, int]]]:
    """Merge neighbouring data segments across the smallest holes until at most ``limit`` remain.

    Returns the merged segments and the (is_data, length) pieces that make up their bytes in order."""
    segments = [s for s in segments if s[1] > 0]
    pieces = [(True, size) for _, size in segments]
    if len(segments) <= limit:
        return segments, pieces
    gaps = [segments[i + 1][0] - sum(segments[i]) for i in range(len(segments) - 1)]
    threshold = sorted(gaps)[len(segments) - limit - 1]    # merging every gap up to this one is enough
    merged, pieces = [segments[0]], [(True, segments[0][1])]
    for (offset, size), gap in zip(segments[1:], gaps):
        if gap <= threshold:
            merged[-1] = (merged[-1][0], offset + size - merged[-1][0])
            pieces += [(False, gap), (True, size)]
        else:
            merged.append((offset, size))
            pieces.append((True, size))
    return merged, pieces


def _octal(value: int, width: int) -> bytes | None:
    return b"%0*o\0" % (width - 1, value) if 0 <= value < 8 ** (width - 1) else None


def ustar_block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes, link: bytes = b"",
                major: int = 0, minor: int = 0) -> bytes:
    """One ustar header block; a number that does not fit its field is written as 0 (a pax record has it)."""
    mode_f, uid_f, gid_f, size_f, mtime_f = (_octal(value, width) or _octal(0, width) for value, width in
                                             ((mode, 8), (uid, 8), (gid, 8), (size, 12), (mtime, 12)))
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        devices = (_octal(major, 8) or _octal(0, 8)) + (_octal(minor, 8) or _octal(0, 8))
    else:
        devices = b"\0" * 16
    header = b"".join([name[:100].ljust(100, b"\0"), mode_f, uid_f, gid_f, size_f, mtime_f,  # type: ignore[list-item]
                       b" " * 8, kind, link[:100].ljust(100, b"\0"), b"ustar\x0000", b"\0" * 64, devices,
                       b"\0" * 167])
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


def _needs_path_record(raw: bytes) -> bool:
    return len(raw) > 100 or not raw.isascii() or b"\0" in raw


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class TarWriter:
    """Add members one by one; ``close()`` writes the end-of-archive blocks (the output stays open)."""

    def __init__(self, output: BinaryIO, *, style: str = "gnu") -> None:
        if style not in STYLES:
            raise ValueError(f"unknown tar style {style!r}")
        self._out = output
        self.style = style
        self.offset = 0
        self.members = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.offset += len(data)

    def _pax(self, path: bytes, link: bytes, attrs: Attrs, size: int, extra: Sequence[tuple[bytes, bytes]],
             style: str) -> bytes:
        records: list[tuple[bytes, bytes]] = []
        if (path and not _is_utf8(path)) or (link and not _is_utf8(link)):
            records.append((b"hdrcharset", b"BINARY"))
        if _needs_path_record(path):
            records.append((b"path", path))
        if link and _needs_path_record(link):
            records.append((b"linkpath", link))
        for key, value, width in ((b"uid", attrs.uid, 8), (b"gid", attrs.gid, 8), (b"mtime", attrs.mtime, 12)):
            if _octal(value, width) is None:
                records.append((key, str(value).encode("ascii")))
        records += extra
        if _octal(size, 12) is None:      # after GNU.sparse.realsize: tarfile lets the last record set .size, and
            records.append((b"size", str(size).encode("ascii")))   # finds the next header from it
        records += xattr_records(attrs.xattrs, style)
        return b"".join(pax_record(k, v) for k, v in records)

    def _header(self, kind: bytes, name: str, attrs: Attrs, *, size: int = 0, link: str = "",
                rdev: tuple[int, int] = (0, 0), extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        """The header block(s) of one member, checked against tar2sqfs's header limit."""
        path = (name or ".").encode("utf-8", "surrogateescape")
        if kind == tarfile.DIRTYPE and not path.endswith(b"/"):
            path += b"/"
        link_raw = link.encode("utf-8", "surrogateescape")
        records = self._pax(path, link_raw, attrs, size, extra, self.style)
        sqfs = len(records)
        if self.style != "tar2sqfs" and any("=" in key or "%" in key for key, _ in attrs.xattrs):
            sqfs = len(self._pax(path, link_raw, attrs, size, extra, "tar2sqfs"))    # what the bake will write
        if sqfs > PAX_HEADER_MAX:
            raise HeaderTooLarge(f"its names and xattrs need a {sqfs}-byte tar header; tar2sqfs accepts at most "
                                 f"{PAX_HEADER_MAX} bytes per entry (xattrs: "
                                 f"{sum(len(n) + len(v) for n, v in attrs.xattrs)} bytes)")
        header = ustar_block(path, attrs.mode & 0o7777, attrs.uid, attrs.gid, size, attrs.mtime, kind, link_raw,
                             *rdev)
        if not records:
            return header
        pax = ustar_block(b"././@PaxHeader", 0o644, 0, 0, len(records), 0, tarfile.XHDTYPE)
        return pax + records + b"\0" * (-len(records) % BLOCK) + header

    def _add(self, header: bytes, size: int = 0, data: Reader | None = None) -> None:
        self._write(header)
        if data is not None and size:
            left = size
            while left:
                chunk = data.read(min(COPY_CHUNK, left))
                self._write(chunk)
                left -= len(chunk)
            if size % BLOCK:
                self._write(b"\0" * (BLOCK - size % BLOCK))
        self.members += 1

    def directory(self, name: str, attrs: Attrs) -> None:
        self._add(self._header(tarfile.DIRTYPE, name, attrs))

    def symlink(self, name: str, attrs: Attrs, target: str) -> None:
        self._add(self._header(tarfile.SYMTYPE, name, attrs, link=target))

    def hardlink(self, name: str, attrs: Attrs, target: str) -> None:
        self._add(self._header(tarfile.LNKTYPE, name, attrs, link=target))

    def whiteout(self, name: str, attrs: Attrs) -> None:
        self._add(self._header(tarfile.CHRTYPE, name, attrs))

    def device(self, name: str, attrs: Attrs, kind: str, major: int, minor: int) -> None:
        """A character ("chardev") or block ("blockdev") device node."""
        self._add(self._header(tarfile.CHRTYPE if kind == "chardev" else tarfile.BLKTYPE, name, attrs,
                               rdev=(major, minor)))

    def fifo(self, name: str, attrs: Attrs) -> None:
        self._add(self._header(tarfile.FIFOTYPE, name, attrs))

    def regular(self, name: str, attrs: Attrs, size: int, data: Reader) -> None:
        self._add(self._header(tarfile.REGTYPE, name, attrs, size=size), size, _Exact(data, size, f"file {name!r}"))

    def sparse(self, name: str, attrs: Attrs, realsize: int, segments: Sequence[tuple[int, int]],
               data: Reader) -> None:
        """A sparse file: ``data`` yields the bytes of ``segments`` (offset, size) back to back."""
        merged, pieces = coalesce_segments(segments, SPARSE_ENTRIES_MAX - 1)
        if len(pieces) != len(merged):
            data = _ZeroFilled(data, pieces)
        merged = normalize_segments(realsize, merged)
        block = sparse_map_block(realsize, merged)
        size = len(block) + sum(size for _, size in merged)
        extra = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                 (b"GNU.sparse.name", (name or ".").encode("utf-8", "surrogateescape")),
                 (b"GNU.sparse.realsize", str(realsize).encode("ascii"))]
        header = self._header(tarfile.REGTYPE, "GNUSparseFile.0/data", attrs, size=size, extra=extra)
        self._add(header, size, _Exact(data, size, f"file {name!r}", prefix=block))

    def close(self) -> None:
        """End-of-archive (two zero blocks), padded to a whole 10 KiB record like tar does."""
        self._write(b"\0" * (2 * BLOCK))
        if self.offset % tarfile.RECORDSIZE:
            self._write(b"\0" * (tarfile.RECORDSIZE - self.offset % tarfile.RECORDSIZE))
