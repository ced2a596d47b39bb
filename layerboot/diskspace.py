"""Full and failing disks: which filesystem a path is on, how much room it has, and one-line errors.

Every failure that comes from the disk rather than from the input (ENOSPC, EDQUOT, EROFS, EIO, and SQLite's
"database or disk is full" and I/O errors) becomes a :class:`StorageError` naming the file, the device and
its mount point, e.g. ``no space left on /dev/sdb1 mounted at /var/lib/layerboot (writing
/var/lib/layerboot/tmp/object.x; 0 MB free of 500000 MB)``. The CLI's top-level handler (layerboot.log) uses
:func:`storage_error` for whatever OSError escapes a command, so the README's promise "expected failures
print one line and exit 1" holds for a full or failing disk too.

Sizes are in MB (10^6 bytes), as ``df -H`` prints them. Free space is what this process may still use:
root may write into ext4's reserved blocks, so for root it is ``f_bfree``, otherwise ``f_bavail``, less
what the filesystem keeps for itself (:attr:`Filesystem.margin`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from layerboot.errors import CommandError, StorageError

CAUSES = {
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only filesystem",
    errno.EIO: "I/O error",
}
HINTS = {
    errno.ENOSPC: "free space on {mount} (or grow it), then try again; nothing was half-written",
    errno.EDQUOT: "raise the disk quota on {mount} or free space, then try again",
    errno.EROFS: "{mount} is mounted read-only (after disk errors the kernel does this: see dmesg); "
                 "fix the disk and remount it read-write",
    errno.EIO: "the disk under {mount} failed a read or write: check 'dmesg' and the device ({device})",
}
# SQLite primary result codes (the low byte of sqlite_errorcode) that mean the disk, not the query
SQLITE_CODES = {13: errno.ENOSPC, 10: errno.EIO, 8: errno.EROFS}

_databases: list[Path] = []


@dataclass(frozen=True)
class Filesystem:
    device: str          # /dev/sdb1, or the fstype for virtual filesystems (tmpfs)
    mountpoint: str
    fstype: str
    total: int           # bytes
    free: int            # bytes this process may still write, by statvfs

    def __str__(self) -> str:
        return f"{self.device} mounted at {self.mountpoint}"

    @property
    def margin(self) -> int:
        """Free space statvfs reports that no file can use: ext4 keeps min(2%, 4096 clusters) for itself
        (counted in f_bfree), XFS a reserve pool. Below this a filesystem is full (at least 4 MB)."""
        return max(4 * 10**6, min(self.total // 50, 64 * 2**20))

    @property
    def usable(self) -> int:
        return max(0, self.free - self.margin)


def mb(size: int) -> str:
    value = size / 10**6
    return f"{value:.1f} MB" if value < 10 else f"{value:.0f} MB"


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(source, mount point, fstype) of the mount holding ``path`` (the longest mount-point prefix)."""
    real = os.path.realpath(path)
    best = ("?", "/", "?")
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return best
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mountpoint = _unescape(fields[4])
        inside = real == mountpoint or real.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best[1]):
            source = _unescape(tail[1])
            best = (source if source.startswith("/") else tail[0], mountpoint, tail[0])
    return best


def filesystem(path: Path) -> Filesystem:
    """The filesystem ``path`` (or its nearest existing parent) is on, with its size and free space."""
    where = _existing(path)
    device, mountpoint, fstype = _mount_of(where)
    try:
        st = os.statvfs(where)
        total = st.f_blocks * st.f_frsize
        free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    except OSError:
        total = free = 0
    return Filesystem(device, mountpoint, fstype, total, free)


def describe(code: int, path: Path | None, *, doing: str = "") -> StorageError:
    """A StorageError for ``code`` (an errno in CAUSES) at ``path``: cause, device, mount point, file."""
    if path is None:   # e.g. a write() error: the kernel does not say which file
        return StorageError(f"{CAUSES.get(code, os.strerror(code))} on a filesystem this command writes to",
                            errno=code, hint="see 'df -h' (and dmesg for I/O errors), fix it, then try again")
    fs = filesystem(path)
    detail = [f"{doing} {path}".strip()]
    if code in (errno.ENOSPC, errno.EDQUOT):
        detail.append(f"{mb(fs.usable)} free of {mb(fs.total)}")
    message = f"{CAUSES.get(code, os.strerror(code))} on {fs} ({'; '.join(detail)})"
    hint = HINTS.get(code, "").format(mount=fs.mountpoint, device=fs.device) or None
    return StorageError(message, errno=code, hint=hint)


def storage_error(err: BaseException, path: Path | str | None = None, *, doing: str = "") -> StorageError | None:
    """The StorageError an OSError or sqlite3 error stands for, or None when it is not about the disk."""
    if isinstance(err, StorageError):
        return err
    if isinstance(err, OSError) and err.errno in CAUSES:
        where = path if path is not None else err.filename
        return describe(err.errno, Path(os.fsdecode(where)) if where is not None else None, doing=doing)
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(err, sqlite3.Error):
        code = SQLITE_CODES.get((getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF)
        if code is not None:
            where = Path(path) if path is not None else (_databases[-1] if _databases else None)
            return describe(code, where, doing=doing or "the database")
    return None


def note_database(path: Path) -> None:
    """Remember a database this process opened, so an SQLite 'disk is full' error can name it."""
    if path not in _databases:
        _databases.append(path)


def require_space(path: Path, needed: int, *, what: str) -> None:
    """Refuse before starting when ``path``'s filesystem has less than ``needed`` bytes free."""
    fs = filesystem(path)
    if fs.total and fs.usable < needed:
        raise StorageError(f"no space left on {fs} for {what} (needed ~{mb(needed)}, free {mb(fs.usable)})",
                           errno=errno.ENOSPC,
                           hint=HINTS[errno.ENOSPC].format(mount=fs.mountpoint, device=fs.device))


def full_after_failure(path: Path, *, needed: int, free_before: int, what: str) -> StorageError | None:
    """After a writer failed: a StorageError when ``path``'s filesystem is (nearly) full, else None.

    Call it before the failed writer's partial output is removed, so the filesystem is still as full as the
    writer found it. ``free_before`` is what was free when the writer started.
    """
    fs = filesystem(path)
    if not fs.total or fs.free >= fs.margin:
        return None
    usable = max(0, free_before - fs.margin)
    return StorageError(f"no space left on {fs} for {what} (needed more than {mb(max(needed, usable + 1))}, "
                        f"free {mb(usable)})", errno=errno.ENOSPC,
                        hint=HINTS[errno.ENOSPC].format(mount=fs.mountpoint, device=fs.device))


@contextlib.contextmanager
def watch_output(path: Path, *, needed: int, what: str) -> Iterator[None]:
    """Around an external tool that writes ``path``: when it fails on a full filesystem, say so.

    mksquashfs and tar2sqfs delete their output when a write fails and report the failure vaguely (tar2sqfs
    blames its input: "FILE: I/O error"). This creates ``path`` first and holds it open while the tool runs
    (both open an existing output with O_TRUNC, so they write into this inode); after a failure the blocks it
    wrote are still allocated, so the filesystem can be measured as the tool found it. A failure on a full
    filesystem becomes StorageError ("no space left on DEVICE mounted at MOUNT (needed ~N MB, free M MB)");
    any other failure is re-raised unchanged.
    """
    before = filesystem(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        yield
    except CommandError as err:
        written = os.fstat(fd).st_size
        full = full_after_failure(path.parent, needed=max(needed, written), free_before=before.free, what=what)
        if full is not None:
            raise full from err
        raise
    finally:
        os.close(fd)
