"""Writing layer contents as a PAX tar stream: the one tar writer behind capture, bake and squash.

Every member is written from explicit, already-checked attributes (never from a foreign tar header), so the
stream tar2sqfs reads holds exactly what layerboot decided to keep. Xattrs travel as ``SCHILY.xattr.*``
records (binary values survive), sparse files as GNU PAX sparse 1.0 members, whiteouts as char devices 0/0.
The stream needs no seeking, so it can go into a pipe or a zstd compressor.
"""

from __future__ import annotations

import io
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


class _Counting:
    """Write-only stream with tell(), so TarFile runs in its plain 'w' mode (no 10 KiB re-buffering)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos


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


class TarWriter:
    """Add members one by one; ``close()`` writes the end-of-archive blocks (the output stays open)."""

    def __init__(self, output: BinaryIO) -> None:
        self._out = _Counting(output)
        self._tar = tarfile.TarFile(fileobj=self._out, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[arg-type]
                                    encoding="utf-8", errors="surrogateescape")
        self._tar.copybufsize = COPY_CHUNK
        self.members = 0

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
        self._tar.addfile(info, data)  # type: ignore[arg-type]
        self._tar.members.clear()      # TarFile remembers every member; we never look back
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
        self._tar.close()


def empty_reader() -> Reader:
    return io.BytesIO(b"")
