"""One layerbootd per store, or several replicas: a flock on state/layerbootd.lock, held for the daemon's life.

Alone (``server.replicas = false``, the default) a daemon takes the lock exclusively. Two such daemons on one
store would both bake from one queue, both "recover" each other's bakes at start and both clean each other's
files, so the second one refuses to start with one line naming the PID that holds the lock (the holder
writes its PID into the file).

Replicas (``server.replicas = true``, with a PostgreSQL ``server.database``) take it *shared*: any number of
replicas run together, coordinated through the database (per-claim owners and leases on uploads, a lease for
the monitor: server/replica/), while a daemon that thinks it is alone, or ``layerboot store fsck --repair``
(which takes it exclusively while it cleans the upload queue), cannot start beside them, nor they beside it.
On a store shared over the network the filesystem must carry flock between hosts (CephFS does; NFSv4 maps
it to byte-range locks).

The kernel drops the lock when the holder exits, however it exits (``kill -9`` included), so a stale lock file
never blocks a start.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.paths import Paths

REPLICAS = "replicas"        # what replicas write into the lock file instead of one PID


class DaemonLock:
    def __init__(self, paths: Paths, *, purpose: str = "layerbootd", shared: bool = False) -> None:
        """``purpose`` is written beside the PID for whoever is refused ("" writes nothing); ``shared``: a
        replica's lock (server.replicas)."""
        self.path: Path = paths.daemon_lock
        self.root = paths.root
        self.purpose = purpose
        self.shared = shared
        self.fd: int | None = None

    def acquire(self) -> "DaemonLock":
        """Take the lock or raise LayerbootError naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refusal() from None
        if self.shared:
            os.pwrite(fd, f"{REPLICAS} {socket.gethostname()}\n".encode(), 0)   # a hint; others may write too
        elif self.purpose:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        self.fd = fd
        return self

    def _refusal(self) -> LayerbootError:
        pid, purpose = holder(self.path)
        if purpose == REPLICAS:
            if self.shared:   # shared locks do not block each other: an exclusive holder wrote that file last
                return LayerbootError(f"another process holds {self.path} alone", hint="wait for it to finish")
            return LayerbootError(f"layerbootd replicas (server.replicas = true) are using the store at {self.root}"
                                  f" (they hold {self.path})",
                                  hint="set server.replicas = true (and the same PostgreSQL server.database) for "
                                       "this one too, or stop them first")
        who = f"{purpose} (PID {pid})" if pid else "another layerbootd"
        if self.shared:
            return LayerbootError(f"{who} is using the store at {self.root} alone (it holds {self.path})",
                                  hint="stop it first, or set server.replicas = true for it too")
        return LayerbootError(f"{who} is already using the store at {self.root} (it holds {self.path})",
                              hint="stop it first (systemctl stop layerbootd), or give this one another --store")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing drops the flock; the file stays (its content is only a hint)
            self.fd = None

    def __enter__(self) -> "DaemonLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: Path) -> tuple[int | None, str]:
    """(PID, what it is) as written by the lock's holder; (None, "replicas") for replicas; (None, "") when
    unreadable."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").split(maxsplit=1)
    except OSError:
        return None, ""
    if text and text[0] == REPLICAS:
        return None, REPLICAS
    if not text or not text[0].isdigit():
        return None, ""
    return int(text[0]), (text[1].strip() if len(text) > 1 else "layerbootd")
