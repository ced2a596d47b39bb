"""``layerboot base import-oci``: an OCI image as one base layer, or as one layerboot layer per image layer.

Flattened (the default): umoci unpacks the image's layers in order into a tree (it applies the whiteouts
itself), and the tree is packed like ``layer import`` (reproducibly). Needs root, like debootstrap: the
files keep their owners. Debian 12's umoci (0.4.7) reads gzip layers only, so skopeo recompresses the layers
with gzip on the way in.

Per layer (``--layers``): each image layer is streamed, once to find opaque directories and once to write it,
through the bake's member checks and the whiteout translation into tar2sqfs; nothing is extracted to disk.
The first becomes a base layer, every other an overlay layer made on it (``parent``: the layer below), so
``profile create --base FIRST`` plus ``profile add`` of the rest in order boots the same tree as the
flattened base. Image content is the admin's choice: setuid files, capabilities and devices are kept.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layerboot.build.oci.layout import Image, layer_tar, normalise, read_image, TAG
from layerboot.build.oci.whiteouts import Directories, index_layer, overlay_members
from layerboot.errors import LayerbootError
from layerboot.overlays.bake import build_squashfs, write_member
from layerboot.overlays.content import CLASSES
from layerboot.overlays.layer import Layer
from layerboot.overlays.store import Store
from layerboot.overlays.tarscan import BakeLimits
from layerboot.overlays.tarwriter import TarWriter
from layerboot.progress import Progress
from layerboot.run import require_tool, run

log = logging.getLogger("layerboot.oci")

LIMITS = BakeLimits(max_bytes=1 << 50, max_files=50_000_000, special_files="keep", allow=frozenset(CLASSES))


@dataclass(frozen=True)
class OciImport:
    layers: tuple[Layer, ...]     # base first
    image: Image


def import_oci(store: Store, source: Path, *, ref: str | None = None, per_layer: bool = False,
               description: str = "", threads: int = 0) -> OciImport:
    """Import the image at ``source`` (OCI archive or layout directory) into ``store``."""
    store.require_initialized()
    if os.geteuid() != 0:
        raise LayerbootError("importing an OCI image needs root (its files keep their owners)", hint="run it as root")
    store.paths.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.paths.tmp, prefix="oci.") as tmp:
        scratch = Path(tmp)
        image = read_image(normalise(source, ref, scratch / "layout", gzip_layers=not per_layer), source.name)
        text = description or image.description
        if per_layer:
            layers = _per_layer(store, image, scratch, text, threads)
        else:
            layers = (_flattened(store, image, scratch, text),)
    return OciImport(layers, image)


def _flattened(store: Store, image: Image, scratch: Path, description: str) -> Layer:
    umoci = require_tool("umoci")
    rootfs = scratch / "bundle"
    with Progress(f"unpacking {len(image.layers)} image layer(s) with umoci") as step:
        run([umoci, "raw", "unpack", "--image", f"{image.layout}:{TAG}", rootfs], timeout=None, lines=step.line)
    return store.import_tree(rootfs, kind="base", description=description)


def _per_layer(store: Store, image: Image, scratch: Path, description: str, threads: int) -> tuple[Layer, ...]:
    made: list[Layer] = []
    count = len(image.layers)
    dirs = Directories(created=image.created)
    for number, blob in enumerate(image.layers, 1):
        is_base = number == 1
        label = f"image layer {number}/{count} ({blob.short})"
        with Progress(f"reading {label}", total=blob.size) as step, layer_tar(blob, step) as stream:
            index = index_layer(stream, LIMITS)   # type: ignore[arg-type]
        image_file = scratch / f"layer{number}.squashfs"

        def fill(writer: TarWriter) -> None:
            with layer_tar(blob, step) as stream:
                members = overlay_members(stream, LIMITS, index, dirs, base=is_base)  # type: ignore[arg-type]
                for member, data in members:
                    write_member(writer, member, data)

        with Progress(f"packing {label}", total=blob.size) as step:
            build_squashfs(fill, image_file, compression=store.compression, block_size=store.block_size,
                           threads=threads, scratch=scratch)
        text = f"{description}, layer {number}/{count}"
        if is_base:
            layer = store.import_squashfs(image_file, kind="base", description=text, move=True,
                                          source=f"oci:{image.source}:{blob.digest}")
        else:
            layer = store.import_squashfs(image_file, kind="overlay", description=text, move=True,
                                          source=f"oci:{image.source}:{blob.digest}", base=made[0].digest,
                                          parent=made[-1].digest)
        log.info("%s -> %s layer %s", label, layer.kind, layer.short)
        made.append(layer)
    return tuple(made)
