"""One layerbootd per store: an exclusive flock on state/layerbootd.lock, held for the daemon's life.

Two daemons on one store would both bake from one queue, both "recover" each other's bakes at start and both
clean each other's files. The second one refuses to start with one line naming the PID that holds the lock
(the holder writes its PID into the file). The kernel drops the lock when the holder exits, however it
exits (``kill -9`` included), so a stale lock file never blocks a start.

``layerboot store fsck --repair`` takes the same lock while it cleans the upload queue, so it never runs
beside a daemon that is using the queue.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.paths import Paths


class DaemonLock:
    def __init__(self, paths: Paths, *, purpose: str = "layerbootd") -> None:
        """``purpose`` is written beside the PID for whoever is refused ("" writes nothing)."""
        self.path: Path = paths.daemon_lock
        self.root = paths.root
        self.purpose = purpose
        self.fd: int | None = None

    def acquire(self) -> "DaemonLock":
        """Take the lock or raise LayerbootError naming the PID that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, purpose = holder(self.path)
            who = f"{purpose} (PID {pid})" if pid else "another layerbootd"
            raise LayerbootError(f"{who} is already using the store at {self.root} (it holds {self.path})",
                                 hint="stop it first (systemctl stop layerbootd), or give this one another --store")
        if self.purpose:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing drops the flock; the file stays (its content is only a hint)
            self.fd = None

    def __enter__(self) -> "DaemonLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: Path) -> tuple[int | None, str]:
    """(PID, what it is) as written by the lock's holder; (None, "") when unreadable."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").split(maxsplit=1)
    except OSError:
        return None, ""
    if not text or not text[0].isdigit():
        return None, ""
    return int(text[0]), (text[1].strip() if len(text) > 1 else "layerbootd")
