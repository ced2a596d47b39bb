"""The modules layer: a kernel's whole /lib/modules/VERSION tree as a squashfs, stacked just above the base.

The initramfs carries only the drivers needed to reach the network and the disks; once the node has switched
root, it loads everything else (a GPU, a USB device, a filesystem) from /lib/modules/$(uname -r) of the booted
system. A base image made without that kernel has no such tree, so ``layerboot initrd build --profile`` stores
one per kernel version and base layout and records it on the generation (``Generation.modules``); the manifest
lists it right above the base. A kernel taken from the base itself (``--kernel-from``) needs none.

The tree goes where the base keeps its modules: ``usr/lib/modules`` when the base's /lib is a symlink
(merged /usr, Debian 12), ``lib/modules`` otherwise. An overlay directory would otherwise hide the base's
/lib symlink and with it every library. Images are cached next to the unpacked kernel.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from layerboot.build.kernel import Kernel
from layerboot.errors import LayerbootError
from layerboot.overlays.layer import Layer
from layerboot.overlays.squashfs import mksquashfs
from layerboot.overlays.store import Store
from layerboot.run import require_tool, run


def modules_prefix(base_image: Path) -> str:
    """``usr/lib/modules`` if the image's /lib is a symlink (merged /usr), else ``lib/modules``."""
    require_tool("unsquashfs", package="squashfs-tools")
    for line in run(["unsquashfs", "-lls", base_image, "lib"], timeout=600).text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == "squashfs-root/lib":
            return "usr/lib/modules" if fields[0].startswith("l") else "lib/modules"
    return "lib/modules"


def modules_image(kernel: Kernel, prefix: str, *, processors: int = 0) -> Path:
    """The squashfs holding ``<prefix>/<version>/`` (everything depmod left in the tree), built once."""
    if not kernel.moddir.is_dir():
        raise LayerbootError(f"kernel {kernel.version} has no module tree at {kernel.moddir}")
    image = kernel.root / f"modules-{prefix.replace('/', '-')}.squashfs"
    if image.is_file():
        return image
    with tempfile.TemporaryDirectory(dir=kernel.root, prefix=".modules-") as tmp:
        tree = Path(tmp) / "tree"
        (tree / prefix).mkdir(parents=True)
        run(["cp", "-al", kernel.moddir, tree / prefix / kernel.version], timeout=600)   # hard links: no copy
        partial = Path(tmp) / "modules.squashfs"
        mksquashfs(tree, partial, processors=processors, all_root=True)
        partial.rename(image)
    return image


def import_modules_layer(store: Store, kernel: Kernel, base: str) -> Layer:
    """Store (once) the modules layer of ``kernel`` laid out for base layer ``base``; returns its record."""
    prefix = modules_prefix(store.path(base))
    image = modules_image(kernel, prefix)
    return store.import_squashfs(image, kind="modules", source=f"kernel:{kernel.version}",
                                 description=f"kernel modules {kernel.version} (/{prefix})")
