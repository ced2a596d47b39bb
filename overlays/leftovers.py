"""What a crash leaves in the store, found, reported and removed.

A process killed in the middle of a write (``kill -9``, OOM, a power cut) can leave:

* **temp files** (``.NAME.XXXX.tmp``) in meta/, profiles/P/, manifests/P/, state/ and keys/: an atomic write
  that never reached its rename;
* **scratch** in tmp/: ``object.*`` copies of an import, ``bake.*``/``squash.*``/``import.*``/… directories;
* **orphan manifests**: manifests/P/N.json whose generation profiles/P/N.json was never created (the commit
  signs the manifest first);
* **unrecorded objects**: objects/DIGEST with no meta/DIGEST.json (an import killed between the two), unless a
  layer's record names it as its dm-verity tree (overlays/verity.py: trees have no record of their own).

Temp files and scratch are held under flock while in use (layerboot.atomic), so one that is not locked is a
leftover, whatever its age; orphan manifests and unrecorded objects are judged under the store lock that
commits and imports take. Scratch with a filesystem still mounted inside (a killed ``squash``) is reported
but never removed: removal never crosses a mount point.

Used by ``layerboot store fsck`` (report; ``--repair`` removes) and by layerbootd's start (removes, logs).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from layerboot.atomic import TMP_SUFFIX, in_use
from layerboot.overlays.names import DIGEST_RE
from layerboot.overlays.serial import locked
from layerboot.paths import Paths

log = logging.getLogger("layerboot.leftovers")


@dataclass(frozen=True)
class Leftover:
    kind: str            # "temp file", "scratch", "orphan manifest", "unrecorded object"
    path: Path
    size: int
    detail: str = ""
    blocked: str = ""    # why it cannot be removed automatically ("" when it can)

    def describe(self, root: Path) -> str:
        where = self.path.relative_to(root) if self.path.is_relative_to(root) else self.path
        text = f"{self.kind} {where} ({_size(self.size)})"
        if self.detail:
            text += f": {self.detail}"
        if self.blocked:
            text += f"; not removed: {self.blocked}"
        return text


def _size(size: int) -> str:
    return f"{size} B" if size < 10_000 else f"{size / 1e6:.1f} MB"


def tree_size(path: Path) -> int:
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def mounts_inside(path: Path) -> list[Path]:
    """Mount points below ``path`` (a scratch dir a killed ``squash`` left with squashfs images mounted)."""
    if not path.is_dir() or path.is_symlink():
        return []
    if os.path.ismount(path):
        return [path]
    found = []
    top = os.lstat(path).st_dev
    for dirpath, dirnames, _ in os.walk(path):
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            try:
                if os.lstat(full).st_dev != top or os.path.ismount(full):
                    found.append(Path(full))
                    dirnames.remove(name)
            except OSError:
                dirnames.remove(name)
    return found


def _temp_dirs(paths: Paths) -> Iterator[Path]:
    for directory in (paths.meta, paths.state, paths.keys, paths.root, paths.objects):
        yield directory
    for parent in (paths.profiles, paths.manifests):
        if parent.is_dir():
            yield from sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink())


def find_temp_files(paths: Paths) -> list[Leftover]:
    found = []
    for directory in _temp_dirs(paths):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.endswith(TMP_SUFFIX) and path.is_file() and not path.is_symlink() and not in_use(path):
                found.append(Leftover("temp file", path, tree_size(path), "an interrupted atomic write"))
    return found


def find_scratch(paths: Paths) -> list[Leftover]:
    if not paths.tmp.is_dir():
        return []
    found = []
    for path in sorted(paths.tmp.iterdir()):
        if in_use(path):
            continue
        mounted = mounts_inside(path)
        blocked = ("still mounted: " + ", ".join(f"umount {m}" for m in mounted)) if mounted else ""
        found.append(Leftover("scratch", path, tree_size(path), "left by an interrupted import, bake or squash",
                              blocked))
    return found


def find_orphan_manifests(paths: Paths) -> list[Leftover]:
    """Signed manifests without their generation record. Call with the store lock held."""
    found = []
    if not paths.manifests.is_dir():
        return found
    for directory in sorted(paths.manifests.iterdir()):
        if not directory.is_dir():
            continue
        for manifest in sorted(directory.glob("*.json")):
            if manifest.stem.isdigit() and not (paths.profile_dir(directory.name) / manifest.name).exists():
                found.append(Leftover("orphan manifest", manifest, tree_size(manifest),
                                      f"generation {manifest.stem} of {directory.name} was never committed"))
    return found


def _named_trees(paths: Paths) -> set[str]:
    """The dm-verity trees the layer records name (an unreadable record names none: fsck reports it)."""
    from layerboot.errors import LayerbootError
    from layerboot.overlays.layer import Layer

    trees = set()
    for meta in paths.meta.glob("*.json") if paths.meta.is_dir() else ():
        try:
            verity = Layer.from_json(meta.read_text(encoding="utf-8")).verity
        except (OSError, UnicodeDecodeError, LayerbootError):
            continue
        if verity is not None:
            trees.add(verity.tree)
    return trees


def find_unrecorded_objects(paths: Paths) -> list[Leftover]:
    """Objects without a metadata record (and not a layer's dm-verity tree). Call with the store lock held."""
    found = []
    if not paths.objects.is_dir():
        return found
    trees = _named_trees(paths)
    for path in sorted(paths.objects.iterdir()):
        if DIGEST_RE.match(path.name) and not paths.object_meta(path.name).exists() and path.name not in trees:
            found.append(Leftover("unrecorded object", path, tree_size(path),
                                  "an import stopped before writing its record; nothing refers to it"))
    return found


def remove(leftover: Leftover) -> bool:
    """Remove one leftover (never across a mount point); False when it must stay."""
    if leftover.blocked or mounts_inside(leftover.path):
        return False
    path = leftover.path
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return True


def age(path: Path) -> float:
    """Seconds since anything in ``path`` (a file, or a directory tree) last changed."""
    newest = 0.0
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for dirpath, dirnames, filenames in os.walk(path):
                for name in dirnames + filenames:
                    try:
                        newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                    except OSError:
                        pass
    except OSError:
        pass
    return time.time() - newest


def sweep(paths: Paths, *, repair: bool, min_age: float = 0.0) -> tuple[list[Leftover], list[Leftover]]:
    """Find every leftover; with ``repair`` remove what can be removed. Returns (found, removed).

    ``min_age``: temp files and scratch that changed less than this many seconds ago are not leftovers yet
    (replicas on a shared store: another host's work in progress, should its flock not reach this host).
    """
    found = [item for item in find_temp_files(paths) + find_scratch(paths) if not min_age or age(item.path) >= min_age]
    removed = []
    if repair:
        removed += [item for item in found if remove(item)]
    if paths.state.is_dir():
        with locked(paths.store_lock):
            later = find_orphan_manifests(paths) + find_unrecorded_objects(paths)
            if repair:
                removed += [item for item in later if remove(item)]
        found += later
    for item in removed:
        log.info("removed %s", item.describe(paths.root))
    return found, removed
