"""Snapshot a directory tree (usually a mounted overlay's merged view) and compare two snapshots.

A snapshot records, per relative path: the kind, permission bits, owner, mtime (seconds), content (sha256 of a
file, target of a symlink, device numbers of a device), xattrs except overlayfs' private ones, plus which
paths are hard links of each other. A name readdir lists but lstat cannot find is recorded as such.
``tree_differences`` lists what differs in plain sentences.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    content: str
    xattrs: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Tree:
    entries: dict[str, Entry]
    links: frozenset[frozenset[str]]      # groups of paths that are one inode (only groups of 2+)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


def _xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    found = []
    for name in names:
        if name.startswith(IGNORED_XATTR_PREFIXES):
            continue
        found.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return tuple(sorted(found))


def _sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(root: Path, *, include_root: bool = False, upper: Path | None = None) -> Tree:
    """Walk ``root`` without following symlinks. Paths are bytes-safe strings (surrogateescape).

    Hard-link groups come from inode numbers. A live overlay shows a copied-up file with its lower inode
    number but a new link to it with the upper one, so pass its ``upper`` dir to take inodes from there.
    """
    entries: dict[str, Entry] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    base = os.fsencode(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = base + b"/" + rel if rel else base
        try:
            st = os.lstat(full)
        except FileNotFoundError:       # listed by readdir, unknown to lookup (e.g. a whiteout overlayfs shows)
            entries[os.fsdecode(rel)] = Entry("listed but not found", 0, 0, 0, 0, "", ())
            continue
        kind = _kind(st.st_mode)
        if kind == "file":
            content = _sha256(full)
        elif kind == "symlink":
            content = os.fsdecode(os.readlink(full))
        elif kind in ("chardev", "blockdev"):
            content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        else:
            content = ""
        name = os.fsdecode(rel)
        if rel or include_root:
            entries[name] = Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime),
                                  content, _xattrs(full))
        if kind != "dir" and st.st_nlink > 1:
            if upper is not None and os.path.lexists(os.fsencode(upper) + b"/" + rel):
                st = os.lstat(os.fsencode(upper) + b"/" + rel)
            inodes.setdefault((st.st_dev, st.st_ino), []).append(name)
        if kind == "dir":
            stack.extend((rel + b"/" + child if rel else child) for child in sorted(os.listdir(full)))
    links = frozenset(frozenset(group) for group in inodes.values() if len(group) > 1)
    return Tree(entries, links)


def tree_differences(expected: Tree, actual: Tree, *, mtimes: bool = True, limit: int = 20) -> list[str]:
    """Sentences naming each difference (empty when the trees are identical)."""
    problems = []
    for path in sorted(expected.entries.keys() - actual.entries.keys()):
        problems.append(f"missing: {path!r} ({expected.entries[path].kind})")
    for path in sorted(actual.entries.keys() - expected.entries.keys()):
        problems.append(f"unexpected: {path!r} ({actual.entries[path].kind})")
    for path in sorted(expected.entries.keys() & actual.entries.keys()):
        want, got = expected.entries[path], actual.entries[path]
        for field in ("kind", "mode", "uid", "gid", "content", "xattrs") + (("mtime",) if mtimes else ()):
            if getattr(want, field) != getattr(got, field):
                shown = (oct if field == "mode" else repr)
                problems.append(f"{path!r}: {field} {shown(getattr(want, field))} != {shown(getattr(got, field))}")
    if expected.links != actual.links:
        problems.append(f"hard links differ: {sorted(map(sorted, expected.links ^ actual.links))}")
    return problems[:limit]
