"""Streaming validation of an uploaded layer tar: the policy every member must pass before it is baked.

The tar is read once, front to back, with :mod:`tarfile` in stream mode (never extracted by it). Each member
comes out as a :class:`Member` built from checked values only; anything hostile or malformed raises
:class:`UploadRejected` with a one-line reason naming the member:

* names: no absolute paths, no ``..``, no empty or ``.`` components, no member below a symlink or any other
  non-directory, no duplicates, components of at most 255 bytes;
* hard links only to regular files, symlinks or fifos that came earlier in the same upload (never to itself);
* the content policy (:mod:`layerboot.overlays.content`, per profile): by default no setuid/setgid files, no
  file capabilities and no device nodes other than overlayfs whiteouts (char 0/0); fifos per
  ``bake.special_files``;
* xattrs only in the user/trusted/security namespaces, overlayfs' own xattrs per :func:`overlay_xattr`; names
  in ``SCHILY.xattr.`` keywords are unescaped as GNU tar does (``%3D`` is ``=``, ``%25`` is ``%``);
* sparse files in every GNU dialect tarfile reads (old GNU ``S`` members, PAX 0.0, 0.1 and 1.0), with maps
  that are ordered, inside the file and no larger than the data the member stores;
* quotas: unpacked stream bytes and apparent file sizes (``bake.max_bytes``), member count (``bake.max_files``),
  and a per-member bound on header bytes so a giant pax header cannot fill memory;
* the archive must end with a proper end-of-archive block followed by nothing but zero padding.
"""

from __future__ import annotations

import base64
import tarfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from layerboot.errors import LayerbootError
from layerboot.overlays.content import content_violation
from layerboot.overlays.tarwriter import MAX_MTIME, Attrs, Reader, gnu_unescape

HEADER_BUDGET = 4 << 20           # bytes of headers (pax records, long names, sparse maps) one member may use
STREAM_BUFSIZE = 256 << 10
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095
MAX_XATTR_VALUE = 65536
XATTR_NAMESPACES = ("user.", "trusted.", "security.")

OVERLAY_PREFIXES = ("trusted.overlay.", "user.overlay.")
OPAQUE_XATTR = "trusted.overlay.opaque"
# what a hard link member may point at (never a dir or a whiteout)
LINKABLE = ("file", "symlink", "fifo", "chardev", "blockdev")
# overlayfs bookkeeping for the upper dir's own mount; meaningless in a lower layer, so dropped
OVERLAY_DROPPED = {"origin", "impure", "nlink", "upper", "uuid", "protattr"}
OVERLAY_REFUSED = {
    "redirect": "a directory renamed with redirect_dir=on (trusted.overlay.redirect names lower paths); "
                "layerboot does not carry redirects: mount the node overlay with redirect_dir=off",
    "metacopy": "a metadata-only copy-up (metacopy=on) keeps its data in a lower layer; "
                "mount the node overlay with metacopy=off",
    "whiteout": "an xattr whiteout (trusted.overlay.whiteout) is not supported; use char 0/0 whiteouts",
    "whiteouts": "an xattr whiteout directory (trusted.overlay.whiteouts) is not supported",
}


class UploadRejected(LayerbootError):
    """A hostile or malformed upload: one line saying which member broke which rule."""


@dataclass(frozen=True)
class BakeLimits:
    max_bytes: int
    max_files: int
    special_files: str  # "reject" | "keep"
    allow: frozenset[str] = frozenset()   # content classes the profile allows (overlays.content.CLASSES)

    @classmethod
    def from_config(cls, config: Any, *, allow: frozenset[str] = frozenset()) -> "BakeLimits":
        return cls(max_bytes=config.bake_max_bytes, max_files=config.bake_max_files,
                   special_files=config.bake_special_files, allow=allow)


@dataclass(frozen=True)
class Member:
    """One checked entry: ``path`` is relative without a leading './' ('' is the layer's root)."""

    path: str
    kind: str                      # dir | file | symlink | hardlink | whiteout | fifo | chardev | blockdev
    attrs: Attrs
    size: int = 0                  # apparent size of a file
    target: str = ""               # symlink target, or the path a hard link points at
    sparse: tuple[tuple[int, int], ...] | None = None   # (offset, size) data segments of a sparse file
    rdev: tuple[int, int] = (0, 0)                       # (major, minor) of a device node


def overlay_xattr(name: str, value: bytes) -> tuple[str, bytes] | None:
    """Decide what one overlayfs xattr becomes in a layer: kept (name, value), dropped (None), or refused.

    ``user.overlay.*`` (the ``userxattr`` mount option's variant) maps to ``trusted.overlay.*``, the
    namespace a root-mounted node stack reads. Raises ValueError with the reason for what cannot be carried.
    """
    key = name.split(".", 2)[2]
    if key == "opaque":
        if value != b"y":
            raise ValueError(f"{name}={value!r} is not a plain opaque marker ('y')")
        return OPAQUE_XATTR, b"y"
    if key in OVERLAY_DROPPED:
        return None
    if key in OVERLAY_REFUSED:
        raise ValueError(OVERLAY_REFUSED[key])
    raise ValueError(f"unknown overlayfs xattr {name}")


def check_xattr(name: str, value: bytes) -> tuple[str, bytes] | None:
    """The xattr policy shared by capture and bake (None: drop it; ValueError: refuse the entry)."""
    if name.startswith(OVERLAY_PREFIXES):
        return overlay_xattr(name, value)
    if name.startswith("system.posix_acl"):
        raise ValueError(f"{name}: squashfs cannot store POSIX ACLs (remove them with 'setfacl -b')")
    if not name.startswith(XATTR_NAMESPACES) or len(name.encode("utf-8", "surrogateescape")) > 255:
        raise ValueError(f"xattr {name!r} is outside the user/trusted/security namespaces squashfs keeps")
    if len(value) > MAX_XATTR_VALUE:
        raise ValueError(f"xattr {name} is larger than {MAX_XATTR_VALUE} bytes")
    return name, value


def clean_path(name: str, *, what: str = "") -> str:
    """Normalise an archive name ('./a/b' -> 'a/b', '.' -> ''); reject anything that could escape or alias.

    Error messages start with ``what`` (e.g. "hard link target") when given, else with the bare verb."""
    label = f"{what} {name[:80]!r} " if what else ""
    if "\0" in name:
        raise ValueError(f"{label}contains a NUL byte")
    if name.startswith("/"):
        raise ValueError(f"{label}is an absolute path")
    parts = name.split("/")
    while parts and parts[0] == ".":
        parts.pop(0)
    if parts == [""]:
        parts = []
    for part in parts:
        if part == "..":
            raise ValueError(f"{label}climbs out with '..'")
        if part in ("", "."):
            raise ValueError(f"{label}has an empty or '.' component")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise ValueError(f"{label}has a component longer than {MAX_NAME_BYTES} bytes")
    path = "/".join(parts)
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise ValueError(f"{label}is longer than {MAX_PATH_BYTES} bytes")
    return path


class _Budget:
    """The decompressed tar stream as a forward-only seekable file for TarFile's plain 'r' mode.

    Counts every byte against the quota, and the bytes read while a header is parsed against the header
    budget. (TarFile's own stream mode re-copies its whole read buffer on every 512-byte header read.)
    """

    def __init__(self, raw: BinaryIO, max_bytes: int) -> None:
        self.raw = raw
        self.max_bytes = max_bytes
        self.total = 0                  # bytes taken from raw
        self.offset = 0                 # position of the next byte handed out
        self.buf = b""
        self.index = 0
        self.header_left: int | None = None

    def _fill(self) -> bytes:
        data = self.raw.read(STREAM_BUFSIZE)      # bounded, whatever size a (hostile) header asks for
        self.total += len(data)
        if self.total > self.max_bytes:
            raise UploadRejected(f"upload rejected: it unpacks to more than the {self.max_bytes}-byte quota "
                                 f"(bake.max_bytes)")
        if self.header_left is not None:
            self.header_left -= len(data)
            if self.header_left < 0:
                raise UploadRejected(f"upload rejected: a member header is larger than {HEADER_BUDGET} bytes")
        return data

    def read(self, size: int = -1) -> bytes:
        if size < 0:                              # TarFile always asks for a size; never slurp the stream
            size = STREAM_BUFSIZE
        have = len(self.buf) - self.index
        if size <= have:
            data = self.buf[self.index:self.index + size]
            self.index += size
        else:
            parts = [self.buf[self.index:]] if have else []
            while have < size:
                chunk = self._fill()
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            joined = b"".join(parts)
            data, self.buf, self.index = joined[:size], joined, min(size, len(joined))
        self.offset += len(data)
        return data

    def tell(self) -> int:
        return self.offset

    def seek(self, position: int, whence: int = 0) -> int:
        if whence != 0 or position < self.offset:
            raise OSError("the upload is read front to back; a backward seek is not possible")
        while self.offset < position:
            if not self.read(min(position - self.offset, STREAM_BUFSIZE)):
                break
        return self.offset


def _reject(member: str, reason: str) -> UploadRejected:
    shown = member if len(member) <= 120 else member[:120] + "…"
    return UploadRejected(f"upload rejected: {shown!r}: {reason}")


def _xattrs(info: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    found: dict[str, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):], errors="surrogateescape")
            try:
                found.setdefault(name, base64.b64decode(value + "=" * (-len(value) % 4)))
            except ValueError:
                raise ValueError(f"xattr {name!r} has a malformed base64 value") from None
        elif key.startswith("SCHILY.xattr."):
            found[gnu_unescape(key[len("SCHILY.xattr."):])] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("SCHILY.acl."):
            raise ValueError("squashfs cannot store POSIX ACLs")
    kept = []
    for name, value in sorted(found.items()):
        decided = check_xattr(name, value)
        if decided:
            kept.append(decided)
    return tuple(sorted(set(kept)))


class _Scanner:
    def __init__(self, limits: BakeLimits) -> None:
        self.limits = limits
        self.kinds: dict[str, str] = {}        # path -> kind; "implied" for parents never listed
        self.links: dict[str, str] = {}        # hard link path -> the first member of its inode
        self.count = 0
        self.apparent = 0

    def member(self, info: tarfile.TarInfo, stored: int) -> Member:
        """Check one member; ``stored`` is how many data bytes it has in the stream (sparse maps must fit)."""
        self.count += 1
        if self.count > self.limits.max_files:
            raise UploadRejected(f"upload rejected: more than {self.limits.max_files} members (bake.max_files)")
        try:
            path = clean_path(info.name)
            member = self._check(path, info, stored)
        except ValueError as err:
            raise _reject(info.name, str(err)) from None
        refused = content_violation(member.kind, member.attrs, member.rdev, self.limits.allow)
        if refused:
            raise _reject(info.name, refused)
        return member

    def _check(self, path: str, info: tarfile.TarInfo, stored: int) -> Member:
        kind = self._kind(info)
        if path == "" and kind != "dir":
            raise ValueError("the archive root must be a directory")
        self._place(path, kind)
        for label, value in (("uid", info.uid), ("gid", info.gid)):
            if not 0 <= value < 2 ** 32:
                raise ValueError(f"{label} {value} is out of range")
        attrs = Attrs(mode=info.mode & 0o7777, uid=info.uid, gid=info.gid,
                      mtime=min(max(int(info.mtime), 0), MAX_MTIME), xattrs=_xattrs(info))
        if kind == "file":
            size = self._apparent_size(info)
            self.apparent += size
            if self.apparent > self.limits.max_bytes:
                raise UploadRejected(f"upload rejected: its files add up to more than the {self.limits.max_bytes}"
                                     f"-byte quota (bake.max_bytes)")
            sparse = self._sparse(info, size, stored) if info.sparse is not None else None
            return Member(path, kind, attrs, size=size, sparse=sparse)
        if kind == "symlink":
            target = info.linkname
            if not target or "\0" in target or len(target.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
                raise ValueError(f"symlink target {target[:60]!r} is empty or too long")
            return Member(path, kind, attrs, target=target)
        if kind == "hardlink":
            return Member(path, kind, attrs, target=self._link_target(path, info.linkname))
        if kind in ("chardev", "blockdev"):
            return Member(path, kind, attrs, rdev=(info.devmajor, info.devminor))
        return Member(path, kind, attrs)

    def _kind(self, info: tarfile.TarInfo) -> str:
        if info.isdir():
            return "dir"
        if info.isreg():
            return "file"
        if info.issym():
            return "symlink"
        if info.islnk():
            return "hardlink"
        if info.ischr() or info.isblk():
            for number in (info.devmajor, info.devminor):
                if not 0 <= number < 2 ** 20:
                    raise ValueError(f"device number {number} is out of range")
            if info.ischr() and info.devmajor == 0 and info.devminor == 0:
                return "whiteout"
            return "chardev" if info.ischr() else "blockdev"   # the content policy decides
        if info.isfifo():
            if self.limits.special_files != "keep":
                raise ValueError("fifos are not allowed (bake.special_files = \"reject\")")
            return "fifo"
        raise ValueError(f"unsupported tar member type {info.type!r}")

    def _place(self, path: str, kind: str) -> None:
        """Record ``path``; refuse duplicates and members below anything that is not a directory."""
        previous = self.kinds.get(path)
        if previous is not None and not (previous == "implied" and kind == "dir"):
            raise ValueError("appears twice in the archive" if previous != "implied"
                             else f"is a {kind} but earlier members put files below it")
        self.kinds[path] = kind
        parent = path
        while parent:
            parent = parent.rpartition("/")[0]
            seen = self.kinds.get(parent)
            if seen is None:
                self.kinds[parent] = "implied"
                continue
            if seen not in ("dir", "implied"):
                raise ValueError(f"lies below {parent or '.'!r}, which is a {seen}, not a directory")
            break

    def _link_target(self, path: str, linkname: str) -> str:
        target = clean_path(linkname, what="hard link target")
        if target == path:
            raise ValueError("is a hard link to itself")
        kind = self.kinds.get(target)
        if kind == "hardlink":
            return self.links[target]
        if kind not in LINKABLE:
            raise ValueError(f"hard link to {linkname!r}, which is not a file, symlink, fifo or device earlier in "
                             "the upload")
        self.links[path] = target
        return target

    @staticmethod
    def _apparent_size(info: tarfile.TarInfo) -> int:
        """A file's size; for a PAX sparse member the GNU.sparse record, which tarfile's .size holds only when
        no pax 'size' record (a stored size of 8 GiB or more) comes after it."""
        if info.sparse is not None:
            for key in ("GNU.sparse.realsize", "GNU.sparse.size"):
                if key in info.pax_headers:
                    value = int(info.pax_headers[key])
                    if value < 0:
                        raise ValueError(f"{key} {value} is negative")
                    return value
        return info.size

    @staticmethod
    def _sparse(info: tarfile.TarInfo, size: int, stored: int) -> tuple[tuple[int, int], ...]:
        """The data segments of a sparse member. Zero-length entries carry no data and are dropped: GNU tar ends
        a map with (size, 0) when the file ends in a hole, and an old-GNU header pads its 4 slots with (0, 0)."""
        segments = tuple((offset, length) for offset, length in info.sparse or () if length != 0)
        end = 0
        for offset, length in segments:
            if offset < end or length < 0 or offset + length > size:
                raise ValueError("sparse map is unordered, overlapping or beyond the file size")
            end = offset + length
        if sum(length for _, length in segments) > stored:
            raise ValueError("sparse map lists more data than the member stores")
        return segments


def _info_class(state: dict[str, bool]) -> type[tarfile.TarInfo]:
    """A TarInfo that notes whether the last header block read was all zeros (the end of the archive).

    Pythons with the 2025 tarfile fixes (3.12.11+, 3.13.4+, and Debian 12's patched 3.11.2) read headers
    through ``_frombuf`` instead of ``frombuf``: both are hooked, or no upload would ever pass there."""
    def note(buf: bytes) -> None:
        state["zero_block"] = len(buf) == tarfile.BLOCKSIZE and buf.count(0) == tarfile.BLOCKSIZE

    class Info(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:  # type: ignore[override]
            note(buf)
            return super().frombuf(buf, encoding, errors)

        if hasattr(tarfile.TarInfo, "_frombuf"):
            @classmethod
            def _frombuf(cls, buf: bytes, encoding: str, errors: str, **options: Any) -> tarfile.TarInfo:
                note(buf)
                return super()._frombuf(buf, encoding, errors, **options)  # type: ignore[misc]
    return Info


def scan_tar(stream: BinaryIO, limits: BakeLimits) -> Iterator[tuple[Member, Reader | None]]:
    """Yield every member of an uncompressed tar stream after checking it, with a reader for file data.

    The consumer must read a file's data (exactly ``size`` bytes, or the sparse segments back to back) before
    asking for the next member. Raises UploadRejected on the first problem.
    """
    budget = _Budget(stream, limits.max_bytes)
    state = {"zero_block": False}
    scanner = _Scanner(limits)
    try:
        budget.header_left = HEADER_BUDGET + STREAM_BUFSIZE    # open() already reads the first header
        tar = tarfile.TarFile(fileobj=budget, mode="r", tarinfo=_info_class(state),  # type: ignore[arg-type]
                              encoding="utf-8", errors="surrogateescape")
        while True:
            budget.header_left = HEADER_BUDGET + STREAM_BUFSIZE
            info = tar.next()
            budget.header_left = None
            tar.members.clear()
            if info is None:
                break
            member = scanner.member(info, stored=max(0, tar.offset - info.offset_data))
            reader: Reader | None = None
            if member.kind == "file":
                stored = member.size if member.sparse is None else sum(size for _, size in member.sparse)
                reader = _MemberData(budget, info.offset_data, stored, member.path)
            yield member, reader
        if not state["zero_block"]:
            raise UploadRejected("upload rejected: the tar stream is truncated or has a corrupt header "
                                 "(no end-of-archive block)")
        while chunk := budget.read(STREAM_BUFSIZE):
            if chunk.count(0) != len(chunk):
                raise UploadRejected("upload rejected: data follows the end of the tar archive")
    except UploadRejected:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError, UnicodeError) as err:
        raise UploadRejected(f"upload rejected: not a readable tar stream ({err})") from None


class _MemberData:
    """A member's stored bytes (for a sparse file: its data segments back to back), read from the stream."""

    def __init__(self, stream: Any, offset: int, length: int, path: str) -> None:
        self.stream = stream
        self.offset: int | None = offset
        self.left = length
        self.path = path

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        if want <= 0:
            return b""
        try:
            if self.offset is not None:
                self.stream.seek(self.offset)
                self.offset = None
            data = self.stream.read(want)
        except UploadRejected:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            raise _reject(self.path, f"file data is unreadable ({err})") from None
        if len(data) < want:
            raise _reject(self.path, "file data is truncated")
        self.left -= len(data)
        return data
