"""Atomic file writes: write to a temp file in the same directory, fsync, rename, fsync the directory.

A reader sees the old file or the new one, never a half-written one, even across a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, tmp_dir: Path | None = None) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it atomically replaces ``path``; on error it is removed.

    ``tmp_dir`` must be on the same filesystem as ``path`` (defaults to its directory).
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=tmp_dir or directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)
