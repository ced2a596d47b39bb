"""Content-addressed immutable objects: each file is stored once under the sha256 of its bytes.

Importing bytes whose digest is already stored checks the stored file first: a damaged copy (wrong hash,
unreadable) is replaced atomically by the good bytes being imported, so re-importing is how a corrupt
object is repaired. :meth:`ObjectStore.quarantine` moves a damaged object out of ``objects/`` into
``quarantine/`` (never served, kept for inspection) so nothing can hand its bytes out again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO

from layerboot.atomic import fsync_dir, locked_tmp
from layerboot.diskspace import require_space, storage_error
from layerboot.errors import LayerbootError
from layerboot.overlays.names import check_digest
from layerboot.paths import Paths
from layerboot.progress import Progress

log = logging.getLogger("layerboot.objects")

CHUNK = 1 << 20


def sha256_file(path: Path, step: Progress | None = None) -> tuple[str, int]:
    """Return (hex digest, size) of a file, read in 1 MiB chunks (reported to ``step`` when given)."""
    with open(path, "rb") as handle:
        return sha256_stream(handle, step)


def sha256_stream(handle: BinaryIO, step: Progress | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if step is not None:
            step.advance(len(chunk))
    return digest.hexdigest(), size


def _read_error(err: OSError, source: Path | str) -> LayerbootError:
    return storage_error(err, Path(source), doing="reading") or LayerbootError(
        f"cannot read {source}: {err.strerror}")


class ObjectStore:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def path(self, digest: str) -> Path:
        return self.paths.object(check_digest(digest))

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_stream(self, source: BinaryIO, *, name: str = "the input", mode: int = 0o444) -> tuple[str, int]:
        """Copy a stream into the store while hashing it; returns (digest, size). Atomic and idempotent."""
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = locked_tmp(self.paths.tmp, prefix="object.", suffix="")
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = source.read(CHUNK)
                    except OSError as err:
                        raise _read_error(err, name) from None
                    if not chunk:
                        break
                    digest.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as err:
                        raise storage_error(err, tmp, doing="writing") or err from None
                    size += len(chunk)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as err:
                    raise storage_error(err, tmp, doing="writing") or err from None
                return self._publish(tmp, digest.hexdigest(), mode), size   # published while still locked
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, source: Path, *, move: bool = False, mode: int = 0o444) -> tuple[str, int]:
        """Store a file. With ``move`` a file already inside the store's tmp/ is renamed rather than copied.

        ``mode`` 0o400 keeps an object root-only (a node's private layer: it holds that node's SSH host keys)."""
        if move:
            with Progress(f"hashing {source.name}", total=source.stat().st_size) as step:
                digest, size = sha256_file(source, step)
            with open(source, "rb+") as handle:
                os.fsync(handle.fileno())
            try:
                return self._publish(source, digest, mode), size
            finally:
                source.unlink(missing_ok=True)
        try:
            handle = open(source, "rb")
        except OSError as err:
            raise _read_error(err, source) from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            require_space(self.paths.tmp, size, what=f"importing {source}")
            with Progress(f"copying {source.name} into the store", total=size) as step:
                return self.put_stream(step.reader(handle), name=str(source), mode=mode)  # type: ignore[arg-type]

    def _publish(self, tmp: Path, digest: str, mode: int = 0o444) -> str:
        target = self.path(digest)
        if target.exists():
            problem = self.verify(digest)
            if problem is None:
                return digest
            self.quarantine(digest, reason=f"was damaged ({problem}) and is replaced by the imported copy")
        tmp.chmod(mode)
        self.paths.objects.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        return digest

    def verify(self, digest: str) -> str | None:
        """Re-hash one object; return a problem description or None when it is intact."""
        path = self.path(digest)
        if not path.is_file():
            return "object file is missing"
        try:
            actual, _ = sha256_file(path)
        except OSError as err:
            return f"cannot be read: {_read_error(err, path).message}"
        if actual != digest:
            return f"content hash is {actual[:16]}…, not its name"
        return None

    def quarantine(self, digest: str, *, reason: str) -> Path | None:
        """Move a damaged object to quarantine/<digest>.<UTC time>; returns where (None if it was gone)."""
        source = self.path(digest)
        self.paths.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.paths.quarantine / f"{digest}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        try:
            try:
                os.rename(source, target)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                shutil.move(source, target)   # objects/ on its own filesystem
        except FileNotFoundError:
            return None
        fsync_dir(self.paths.quarantine)
        fsync_dir(self.paths.objects)
        log.error("object %s %s; the damaged file is kept as %s", digest[:12], reason, target)
        return target

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> list[str]:
        if not self.paths.objects.is_dir():
            return []
        return sorted(p.name for p in self.paths.objects.iterdir() if not p.name.startswith("."))

    def copy_out(self, digest: str, destination: Path) -> None:
        shutil.copyfile(self.path(digest), destination)
