"""Content-addressed immutable objects: each file is stored once under the sha256 of its bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from layerboot.atomic import fsync_dir
from layerboot.errors import LayerbootError
from layerboot.overlays.names import check_digest
from layerboot.paths import Paths
from layerboot.progress import Progress

CHUNK = 1 << 20


def sha256_file(path: Path, step: Progress | None = None) -> tuple[str, int]:
    """Return (hex digest, size) of a file, read in 1 MiB chunks (reported to ``step`` when given)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if step is not None:
                step.advance(len(chunk))
    return digest.hexdigest(), size


class ObjectStore:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def path(self, digest: str) -> Path:
        return self.paths.object(check_digest(digest))

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_stream(self, source: BinaryIO) -> tuple[str, int]:
        """Copy a stream into the store while hashing it; returns (digest, size). Atomic and idempotent."""
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix="object.", dir=self.paths.tmp)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            return self._publish(tmp, digest.hexdigest()), size
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, source: Path, *, move: bool = False) -> tuple[str, int]:
        """Store a file. With ``move`` a file already inside the store's tmp/ is renamed rather than copied."""
        if move:
            with Progress(f"hashing {source.name}", total=source.stat().st_size) as step:
                digest, size = sha256_file(source, step)
            with open(source, "rb+") as handle:
                os.fsync(handle.fileno())
            try:
                return self._publish(source, digest), size
            finally:
                source.unlink(missing_ok=True)
        try:
            with open(source, "rb") as handle, \
                    Progress(f"copying {source.name} into the store", total=os.fstat(handle.fileno()).st_size) as step:
                return self.put_stream(step.reader(handle))  # type: ignore[arg-type]
        except OSError as err:
            raise LayerbootError(f"cannot read {source}: {err.strerror}") from None

    def _publish(self, tmp: Path, digest: str) -> str:
        target = self.path(digest)
        if target.exists():
            return digest
        tmp.chmod(0o444)
        self.paths.objects.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        return digest

    def verify(self, digest: str) -> str | None:
        """Re-hash one object; return a problem description or None when it is intact."""
        path = self.path(digest)
        if not path.is_file():
            return "object file is missing"
        actual, _ = sha256_file(path)
        if actual != digest:
            return f"content hash is {actual[:16]}…, not its name"
        return None

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> list[str]:
        if not self.paths.objects.is_dir():
            return []
        return sorted(p.name for p in self.paths.objects.iterdir() if not p.name.startswith("."))

    def copy_out(self, digest: str, destination: Path) -> None:
        shutil.copyfile(self.path(digest), destination)
