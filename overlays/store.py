"""The layer store: import squashfs layers and boot files, look them up, check them with fsck."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from layerboot.atomic import fsync_dir, scratch_dir, write_text
from layerboot.diskspace import watch_output
from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.layer import SQUASHFS_KINDS, Layer
from layerboot.overlays.leftovers import tree_size
from layerboot.overlays.names import DIGEST_RE
from layerboot.overlays.objects import ObjectStore
from layerboot.overlays.serial import locked
from layerboot.overlays.squashfs import is_squashfs, mksquashfs, require_squashfs
from layerboot.overlays.verity import VerityTree, merkle_tree
from layerboot.paths import Paths

log = logging.getLogger("layerboot.store")


@dataclass(frozen=True)
class FsckProblem:
    digest: str
    problem: str
    damaged: bool = False     # the object file exists but its bytes are wrong or unreadable

    def __str__(self) -> str:
        return f"{self.digest[:12]}: {self.problem}"


class Store:
    def __init__(self, paths: Paths, *, compression: str = "zstd", block_size: int = 131072) -> None:
        self.paths = paths
        self.objects = ObjectStore(paths)
        self.compression = compression
        self.block_size = block_size

    # -- set-up ------------------------------------------------------------------------------------------
    def init(self) -> None:
        self.paths.create()

    def require_initialized(self) -> None:
        if not self.paths.objects.is_dir() or not self.paths.meta.is_dir():
            raise LayerbootError(f"no layer store at {self.paths.root}",
                                 hint="create one with 'layerboot store init' (or pass --store DIR)")

    # -- records -----------------------------------------------------------------------------------------
    def record(self, layer: Layer) -> Layer:
        write_text(self.paths.object_meta(layer.digest), layer.to_json())
        return layer

    def get(self, ref: str) -> Layer:
        """Look a layer up by full digest or by a unique prefix of at least 6 hex characters."""
        digest = self.resolve(ref)
        meta = self.paths.object_meta(digest)
        try:
            return Layer.from_json(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LayerbootError(f"layer {ref} has no record in the store") from None

    def resolve(self, ref: str) -> str:
        ref = ref.strip().lower().removeprefix("sha256:")
        if DIGEST_RE.fullmatch(ref):
            if not self.paths.object_meta(ref).exists():
                raise NotFoundError(f"no layer {ref[:12]} in the store", hint="see 'layerboot layer list'")
            return ref
        if len(ref) < 6 or any(c not in "0123456789abcdef" for c in ref):
            raise LayerbootError(f"{ref!r} is not a layer digest or digest prefix (6+ hex characters)")
        matches = [d for d in self.digests() if d.startswith(ref)]
        if not matches:
            raise NotFoundError(f"no layer matches {ref!r}", hint="see 'layerboot layer list'")
        if len(matches) > 1:
            raise LayerbootError(f"layer prefix {ref!r} is ambiguous ({len(matches)} matches); give more digits")
        return matches[0]

    def digests(self) -> list[str]:
        if not self.paths.meta.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in self.paths.meta.glob("*.json")
                      if DIGEST_RE.fullmatch(p.name.removesuffix(".json")))

    def layers(self) -> list[Layer]:
        return sorted((self.get(d) for d in self.digests()), key=lambda layer: (layer.created, layer.digest))

    def path(self, layer: Layer | str) -> Path:
        return self.objects.path(layer.digest if isinstance(layer, Layer) else layer)

    # -- imports -----------------------------------------------------------------------------------------
    def import_squashfs(self, image: Path, *, kind: str = "base", source: str = "", description: str = "",
                        base: str | None = None, parent: str | None = None, move: bool = False,
                        private: bool = False) -> Layer:
        """Add an existing squashfs image. Importing identical bytes twice returns the same layer.

        ``private``: the object file is root-only (mode 0400; a node layer holds that node's private keys)."""
        require_squashfs(image)
        if kind not in SQUASHFS_KINDS:
            raise LayerbootError(f"a squashfs image must be a base, overlay or modules layer, not {kind!r}")
        if kind == "overlay" and base is None:
            raise LayerbootError("an overlay layer needs the base it was made on", hint="pass --base DIGEST")
        base_digest = self.get(base).digest if base else None
        parent_digest = self.get(parent).digest if parent else None
        digest, size = self.objects.put_file(image, move=move, mode=0o400 if private else 0o444)
        return self._remember(Layer(digest=digest, kind=kind, size=size, source=source or str(image),
                                    base=base_digest, parent=parent_digest, description=description))

    def import_tree(self, tree: Path, *, kind: str = "base", description: str = "", base: str | None = None,
                    parent: str | None = None, all_root: bool = False, owner: tuple[int, int] | None = None,
                    mtime: int | None = None, processors: int = 0) -> Layer:
        """Pack a directory tree with mksquashfs and add it (reproducibly: see squashfs.mksquashfs)."""
        with scratch_dir(self.paths.tmp, prefix="import.") as scratch:
            image = scratch / "layer.squashfs"
            log.info("packing %s with mksquashfs (%s)", tree, self.compression)
            with watch_output(image, needed=0, what=f"packing {tree}"):
                mksquashfs(tree, image, compression=self.compression, block_size=self.block_size,
                           processors=processors, all_root=all_root, owner=owner, mtime=mtime)
            return self.import_squashfs(image, kind=kind, source=f"tree:{tree}", description=description,
                                        base=base, parent=parent, move=True)

    def import_boot_file(self, path: Path, *, kind: str, description: str = "") -> Layer:
        if kind not in ("kernel", "initrd"):
            raise LayerbootError(f"a boot file is a kernel or an initrd, not {kind!r}")
        if not path.is_file():
            raise LayerbootError(f"{path} does not exist or is not a regular file")
        digest, size = self.objects.put_file(path)
        return self._remember(Layer(digest=digest, kind=kind, size=size, source=str(path),
                                    description=description or path.name))

    def with_verity(self, layer: Layer, *, save: bool = True) -> Layer:
        """The layer with its fs-verity digest and dm-verity tree (computed in one pass over the object and
        recorded the first time; overlays/verity.py). The tree is an object with no record of its own: the
        layer's record names it (leftovers.find_unrecorded_objects knows; a tree lost to a concurrent
        ``store fsck --repair`` is made again here, by the next manifest that names the layer)."""
        if not layer.is_squashfs or (layer.fsverity is not None and layer.verity is not None
                                     and self.objects.exists(layer.verity.tree)):
            return layer
        tree = merkle_tree(self.path(layer))
        digest, size = self.objects.put_stream(io.BytesIO(tree.tree), name=f"the dm-verity tree of {layer.short}")
        layer = replace(layer, fsverity=tree.fsverity, verity=VerityTree(root=tree.root, tree=digest, tree_size=size))
        return self.record(layer) if save else layer

    def trees(self) -> dict[str, str]:
        """Each recorded squashfs layer's dm-verity tree: {layer digest: tree digest}."""
        return {layer.digest: layer.verity.tree for layer in self.layers() if layer.verity is not None}

    def _remember(self, layer: Layer) -> Layer:
        existing = self.paths.object_meta(layer.digest)
        if existing.exists():
            known = self.with_verity(self.get(layer.digest))
            log.info("layer %s is already in the store", known.short)
            return known
        layer = self.with_verity(layer, save=False)
        with locked(self.paths.store_lock):   # 'store fsck --repair' removes unrecorded objects under this lock
            if not self.objects.exists(layer.digest):
                raise LayerbootError(f"object {layer.short} vanished before its record was written",
                                     hint="was 'layerboot store fsck --repair' running? import it again")
            self.record(layer)
        log.info("stored %s layer %s (%d bytes)", layer.kind, layer.short, layer.size)
        return layer

    def describe(self, ref: str, description: str) -> Layer:
        return self.record(replace(self.get(ref), description=description))

    def delete(self, digest: str) -> None:
        """Remove an object and its record (the caller has checked that nothing references it)."""
        self.objects.remove(digest)
        self.paths.object_meta(digest).unlink(missing_ok=True)
        fsync_dir(self.paths.objects)
        fsync_dir(self.paths.meta)

    # -- checks ------------------------------------------------------------------------------------------
    def fsck(self, digests: Iterable[str] | None = None) -> list[FsckProblem]:
        """Re-hash every recorded object and cross-check records; return the problems (empty when healthy).

        Objects without a record are crash leftovers: overlays.leftovers finds (and removes) them.
        """
        self.require_initialized()
        problems: list[FsckProblem] = []
        recorded = set(self.digests())
        for digest in sorted(digests if digests is not None else recorded):
            if digest not in recorded:
                problems.append(FsckProblem(digest, "object has no metadata record"))
                continue
            problem = self.objects.verify(digest)
            if problem:
                problems.append(FsckProblem(digest, problem, damaged=self.objects.exists(digest)))
                continue
            layer = self.get(digest)
            if layer.is_squashfs and not is_squashfs(self.objects.path(digest)):
                problems.append(FsckProblem(digest, "recorded as a squashfs layer but is not one"))
            if layer.size != self.objects.path(digest).stat().st_size:
                problems.append(FsckProblem(digest, f"size differs from its record ({layer.size})"))
            if layer.verity is not None:
                problem = self.objects.verify(layer.verity.tree)
                if problem:
                    problems.append(FsckProblem(layer.verity.tree, f"the dm-verity tree of {layer.short}: {problem} "
                                                "(the next manifest that names the layer makes it again)",
                                                damaged=self.objects.exists(layer.verity.tree)))
            for label, ref in (("base", layer.base), ("parent", layer.parent)):
                if ref and ref not in recorded:
                    problems.append(FsckProblem(digest, f"its {label} {ref[:12]} is not in the store"))
        return problems

    def quarantined(self) -> list[tuple[Path, int]]:
        """Files in quarantine/ (damaged objects moved aside) with their sizes."""
        if not self.paths.quarantine.is_dir():
            return []
        return [(p, tree_size(p)) for p in sorted(self.paths.quarantine.iterdir())]
