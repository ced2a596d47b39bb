"""Atomic file writes: write to a temp file in the same directory, fsync, rename, fsync the directory.

A reader sees the old file or the new one, never a half-written one, even across a power cut.

Every temp file (and every scratch directory made by :func:`scratch_dir`) is held under an exclusive
``flock`` for as long as it exists under its temporary name. A process that dies (``kill -9``, a power cut)
drops its locks, so a cleaner (layerbootd's start, ``layerboot store fsck --repair``) can tell a leftover
from work in progress at once, without guessing from its age: see :func:`in_use`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage(err: OSError, path: Path) -> Exception:
    from layerboot.diskspace import storage_error   # layerboot.diskspace imports nothing of ours but errors
    return storage_error(err, path, doing="writing") or err


def locked_tmp(directory: Path, *, prefix: str, suffix: str = TMP_SUFFIX) -> tuple[int, Path]:
    """Create a temp file in ``directory`` and take an exclusive flock on it; returns (fd, path)."""
    while True:
        try:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        except OSError as err:   # a full directory block, no inodes left, a read-only filesystem
            raise _storage(err, directory / prefix) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:   # a cleaner removed it between mkstemp and flock: take another name
            return fd, Path(name)
        os.close(fd)


def in_use(path: Path) -> bool:
    """True when a live process holds the flock of this temp file or scratch directory."""
    try:
        if not stat.S_ISREG(mode := os.lstat(path).st_mode) and not stat.S_ISDIR(mode):
            return False   # a symlink, fifo or device node is never ours (and is not opened)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as err:
        if err.errno == errno.ELOOP:   # replaced by a symlink meanwhile
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, tmp_dir: Path | None = None) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it atomically replaces ``path``; on error it is removed.

    ``tmp_dir`` must be on the same filesystem as ``path`` (defaults to its directory). A full or failing
    disk raises StorageError naming ``path`` and its filesystem.
    """
    directory = path.parent
    fd, tmp = locked_tmp(tmp_dir or directory, prefix=f".{path.name}.")
    try:
        try:
            with os.fdopen(fd, "wb") as handle:   # (closing it flushes again: errors there are caught too)
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
                os.fchmod(handle.fileno(), mode)
                os.replace(tmp, path)   # still locked: never seen as a leftover while it has its temp name
        except OSError as err:
            raise _storage(err, path) from None
        fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    with atomic_file(path, mode=mode) as handle:
        handle.write(data)


def write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: Path, data: Any, *, mode: int = 0o644) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=mode)


def create_exclusive(path: Path, data: bytes, *, mode: int = 0o644) -> bool:
    """Publish ``data`` at ``path`` only if nothing is there yet (atomic link). Returns False if it existed."""
    fd, tmp = locked_tmp(path.parent, prefix=f".{path.name}.")
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
                os.fchmod(handle.fileno(), mode)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                tmp.unlink()
        except OSError as err:
            raise _storage(err, path) from None
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(parent: Path, *, prefix: str) -> Iterator[Path]:
    """A scratch directory under ``parent`` (the store's tmp/), flock-held while in use, removed after.

    Unlike tempfile.TemporaryDirectory, a scratch directory left by a killed process is recognised at once
    (its lock is gone) by layerbootd's start and ``store fsck --repair``.
    """
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
