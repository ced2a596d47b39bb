"""The store-wide manifest serial: strictly increasing across every profile and every generation."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layerboot.atomic import write_text
from layerboot.errors import LayerbootError


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path`` (created if needed) for the duration of the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def current_serial(serial_file: Path) -> int:
    try:
        text = serial_file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        raise LayerbootError(f"{serial_file} is corrupt (expected a number, found {text[:20]!r})")
    return int(text)


def next_serial(serial_file: Path) -> int:
    """Take the next serial. The caller must hold the store lock."""
    serial = current_serial(serial_file) + 1
    write_text(serial_file, f"{serial}\n")
    return serial
