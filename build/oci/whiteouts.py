"""An OCI layer's tar members as overlayfs upper-dir members (what a layerboot overlay layer holds).

The OCI image spec marks deletions with files: ``DIR/.wh.NAME`` deletes ``NAME`` from the layers below, and
``DIR/.wh..wh..opq`` hides everything below ``DIR`` (an opaque directory). overlayfs marks the same with a
character device 0/0 named ``NAME`` and the xattr ``trusted.overlay.opaque=y`` on ``DIR``. The members come
from :func:`layerboot.overlays.tarscan.scan_tar` (the bake's checks: no traversal, links only within the
layer, quotas), so a hostile image is refused the same way a hostile upload is.

Directories need care. A layer may leave out the entries of directories it only adds to (``usr/`` when it
adds ``usr/bin/x``); in OCI that means "unchanged", but in a stacked overlay the topmost copy of a directory
decides its owner, mode and time. So such directories are written with the attributes the layers below gave
them (:class:`Directories` carries them from layer to layer), and directories no layer ever lists get mode
0755, owner root and the image's creation time. An opaque marker may come before its directory's entry or
without one; a first pass over the layer (:func:`index_layer`) finds the opaque and the listed directories.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from layerboot.overlays.tarscan import OPAQUE_XATTR, BakeLimits, Member, UploadRejected, scan_tar
from layerboot.overlays.tarwriter import Attrs, Reader

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
IMPLIED_DIR_MODE = 0o755


@dataclass(frozen=True)
class LayerIndex:
    opaque: frozenset[str]       # directories holding an opaque marker
    listed: frozenset[str]       # directories the layer has an entry for


@dataclass
class Directories:
    """Directory attributes as the layers imported so far leave them (path -> Attrs, no overlay xattrs)."""

    created: int                               # the image's creation time: for directories no layer lists
    attrs: dict[str, Attrs] = field(default_factory=dict)

    def of(self, path: str) -> Attrs:
        return self.attrs.get(path) or Attrs(IMPLIED_DIR_MODE, 0, 0, self.created)

    def set(self, path: str, attrs: Attrs) -> None:
        self.attrs[path] = replace(attrs, xattrs=tuple(x for x in attrs.xattrs if x[0] != OPAQUE_XATTR))

    def drop_below(self, path: str, *, keep_self: bool) -> None:
        prefix = path + "/" if path else ""
        for known in [p for p in self.attrs if p.startswith(prefix) or (p == path and not keep_self)]:
            del self.attrs[known]


def index_layer(stream: BinaryIO, limits: BakeLimits) -> LayerIndex:
    """First pass: which directories are opaque, and which directories the layer lists."""
    opaque, listed = set(), set()
    for member, _ in scan_tar(stream, limits):
        if posixpath.basename(member.path) == OPAQUE_MARKER:
            opaque.add(posixpath.dirname(member.path))
        elif member.kind == "dir":
            listed.add(member.path)
    return LayerIndex(frozenset(opaque), frozenset(listed))


def _with_opaque(attrs: Attrs) -> Attrs:
    kept = tuple(x for x in attrs.xattrs if x[0] != OPAQUE_XATTR)
    return replace(attrs, xattrs=tuple(sorted((*kept, (OPAQUE_XATTR, b"y")))))


def _ancestors(path: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b'] (top down; the root '' is tar2sqfs's own)."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def overlay_members(stream: BinaryIO, limits: BakeLimits, index: LayerIndex, dirs: Directories, *,
                    base: bool) -> Iterator[tuple[Member, Reader | None]]:
    """Second pass: the layer's members with OCI whiteouts as overlayfs ones, unlisted parent directories
    written with the attributes from below; ``dirs`` is updated for the next layer. In a ``base`` (the image's
    first layer) there is nothing below to delete or hide, so markers are dropped."""
    written: set[str] = set()
    for directory in index.opaque:            # what an opaque directory hid is gone for the layers above
        dirs.drop_below(directory, keep_self=True)
    for member, data in scan_tar(stream, limits):
        name = posixpath.basename(member.path)
        parent = posixpath.dirname(member.path)
        implied = _ancestors(member.path) + ([parent] if name == OPAQUE_MARKER and parent else [])
        for directory in implied:
            if directory in index.listed or directory in written:
                continue
            attrs = dirs.of(directory)
            written.add(directory)
            dirs.set(directory, attrs)
            yield Member(directory, "dir", _with_opaque(attrs) if directory in index.opaque and not base
                         else attrs), None
        if name == OPAQUE_MARKER:
            continue
        if name.startswith(WHITEOUT_PREFIX):
            if member.kind != "file":
                raise UploadRejected(f"layer rejected: {member.path!r}: a whiteout must be a regular file")
            target = posixpath.join(parent, name[len(WHITEOUT_PREFIX):])
            dirs.drop_below(target, keep_self=False)
            if base:
                continue
            member, data = Member(target, "whiteout", Attrs(0o600, 0, 0, member.attrs.mtime)), None
        elif member.kind == "dir":
            dirs.set(member.path, member.attrs)
            if not base and member.path in index.opaque:
                member = replace(member, attrs=_with_opaque(member.attrs))
        if member.path in written:
            raise UploadRejected(f"layer rejected: {member.path!r} is both deleted (a whiteout) and added in the "
                                 "same layer")
        written.add(member.path)
        yield member, data
