"""A rendered file tree as a small, deterministic squashfs in the store: the node's private per-node layer.

The tree is written into a scratch directory under the store's tmp/ (mode 0700, removed after), directories
0755 except /root and /root/.ssh (0700: in an overlay the topmost layer's directory wins), every file owned by
root, every time stamp 0, no xattrs: the same files always give the same bytes, so the same digest. The object
is stored root-only (mode 0400) as a layer of kind ``node``: it holds the node's SSH host keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerboot.atomic import scratch_dir
from layerboot.overlays.layer import Layer
from layerboot.overlays.squashfs import mksquashfs
from layerboot.overlays.store import Store
from layerboot.server.fleet.render import PRIVATE_DIRS, Tree


def write_tree(tree: Tree, root: Path) -> None:
    """The files under ``root`` with their modes (parents made 0755, or 0700 for PRIVATE_DIRS)."""
    for f in tree.files:
        target = root / f.path
        parts = Path(f.path).parts[:-1]
        for depth in range(1, len(parts) + 1):
            rel = "/".join(parts[:depth])
            directory = root / rel
            directory.mkdir(exist_ok=True)
            os.chmod(directory, PRIVATE_DIRS.get(rel, 0o755))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(f.data)
        os.chmod(target, f.mode)


def store_node_layer(store: Store, tree: Tree, *, name: str, mac: str, base: str) -> Layer:
    """Pack ``tree`` and store it (idempotent: an unchanged tree is the layer already there)."""
    with scratch_dir(store.paths.tmp, prefix="nodelayer.") as scratch:
        os.chmod(scratch, 0o700)
        root = scratch / "root"
        root.mkdir(mode=0o755)
        write_tree(tree, root)
        image = scratch / "node.squashfs"
        mksquashfs(root, image, compression=store.compression, block_size=store.block_size, processors=1,
                   all_root=True, reproducible=True)
        return store.import_squashfs(image, kind="node", source=f"fleet:{name}", description=f"node layer of {name} "
                                     f"({mac})", base=base, move=True, private=True)


def drop_node_layer(store: Store, digest: str) -> None:
    """Forget a node layer nothing serves any more (record first, then the object, under the store lock)."""
    from layerboot.overlays.serial import locked

    with locked(store.paths.store_lock):
        record = store.paths.object_meta(digest)
        if record.exists():
            record.unlink()
        store.objects.remove(digest)
