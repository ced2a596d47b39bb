"""Benchmark artefacts (rootfs images, builder chroot, peer initrds) cached under names keyed by their inputs.

A peer initrd takes minutes to build (debootstrap + apt + mkinitramfs, or dracut), so each artefact is kept
under ``<cache>/<name>-<key>``, where the key hashes everything that went into it. A changed input gives a new
key and a rebuild; an interrupted build leaves only a ``.tmp-`` entry that the next build removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from layerboot.errors import LayerbootError

DEFAULT_CACHE = Path(os.environ.get("LAYERBOOT_BENCH_CACHE", "/var/cache/layerboot/bench"))


def input_key(*parts: object) -> str:
    """A short stable hash of the inputs; parts are joined unambiguously (length-prefixed)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else repr(part).encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (a builder chroot must have none left before it is deleted)."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _remove(path: Path) -> None:
    busy = mounts_under(path) if path.exists() else []
    if busy:
        raise LayerbootError(f"{path} still has mounts ({', '.join(busy)}); not deleting it",
                             hint=f"umount them (umount -R {path}) and rerun")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def cached(cache: Path, name: str, key: str, build: Callable[[Path], None], *, suffix: str = "",
           rebuild: bool = False) -> Path:
    """Return ``<cache>/<name>-<key><suffix>``, calling ``build(tmp)`` to make it first when it is missing.

    ``build`` creates the file or directory at the path it is given; it is renamed into place only when
    ``build`` returns, so a failed or interrupted build never looks complete.
    """
    final = cache / f"{name}-{key}{suffix}"
    if final.exists() and not rebuild:
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".tmp-{name}-{key}{suffix}"
    _remove(tmp)
    try:
        build(tmp)
    except BaseException:
        _remove(tmp)
        raise
    _remove(final)
    tmp.rename(final)
    return final
