"""Squash several adjacent overlay layers into one whose stacked result is identical.

The layers are loop-mounted read-only and applied bottom-up to an in-memory tree with overlayfs' rules:

* a whiteout (char 0/0) replaces whatever was there; it stays only if it hides something below the range
  (the layers beneath are mounted too and looked at without following symlinks). A whiteout that hides
  nothing is not harmless: overlayfs filters whiteouts only in directories it merges, so in a directory only
  the squashed layer holds (new in the range, or opaque) ``ls`` would list a name that ``stat`` cannot find;
* a non-directory replaces whatever was there (a whole directory included);
* a directory over a directory merges with it (the higher one's attributes and xattrs win) unless it is
  opaque; an opaque directory, or a directory over a whiteout or a non-directory, replaces it and is marked
  opaque in the result, because it hid everything below it in the original stack too.

The tree is then written as a tar (content read from the layer that supplies each entry, hard links kept
within a layer, sparse files kept sparse: see capture.data_segments for squashfs's SEEK_DATA bug) straight
into tar2sqfs, and the image is stored as one overlay layer. Squash works on layers the admin already
accepted, so the upload content policy does not apply: setuid files, capabilities and devices are kept.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from layerboot.atomic import scratch_dir
from layerboot.errors import LayerbootError
from layerboot.overlays.bake import build_squashfs
from layerboot.overlays.capture import EntryWriter
from layerboot.overlays.chain import mount_overlay, mount_squashfs
from layerboot.overlays.layer import Layer
from layerboot.overlays.profile import Generation, Profiles
from layerboot.overlays.store import Store
from layerboot.overlays.tarwriter import TarWriter
from layerboot.progress import Progress

log = logging.getLogger("layerboot.squash")

OPAQUE_NAMES = ("trusted.overlay.opaque", "user.overlay.opaque")


@dataclass
class Node:
    layer: int                      # index of the layer that supplies this entry (attributes and content)
    kind: str                       # dir | whiteout | other
    opaque: bool = False
    children: dict[str, "Node"] = field(default_factory=dict)


def is_opaque(path: str) -> bool:
    for name in OPAQUE_NAMES:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError as err:
            if err.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    return False


def _apply(node: Node, directory: str, index: int) -> None:
    with os.scandir(directory) as listing:
        entries = list(listing)
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        existing = node.children.get(entry.name)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            node.children[entry.name] = Node(index, "whiteout")
        elif stat.S_ISDIR(st.st_mode):
            opaque = is_opaque(entry.path)
            if existing is not None and existing.kind == "dir" and not opaque:
                existing.layer = index
            else:
                existing = Node(index, "dir", opaque=opaque or existing is not None)
                node.children[entry.name] = existing
            _apply(existing, entry.path, index)
        else:
            node.children[entry.name] = Node(index, "other")


def merge_layers(roots_base_first: Sequence[Path]) -> Node:
    """The combined tree of mounted layers (lowest first) as one overlay layer would hold it."""
    top = Node(0, "dir")
    for index, root in enumerate(roots_base_first):
        top.layer = index
        _apply(top, os.fspath(root), index)
    return top


def drop_hiding_nothing(node: Node, lower: Path | None) -> int:
    """Remove the whiteouts below ``node`` that hide nothing in ``lower`` (the merged view beneath the range at
    this directory; None when nothing beneath shows through). Returns how many were removed."""
    dropped = 0
    for name, child in list(node.children.items()):
        if child.kind == "whiteout":
            if lower is None or not os.path.lexists(lower / name):
                del node.children[name]
                dropped += 1
        elif child.kind == "dir":
            below = None
            if lower is not None and not child.opaque:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISDIR(os.lstat(lower / name).st_mode):    # a symlink is never walked through
                        below = lower / name
            dropped += drop_hiding_nothing(child, below)
    return dropped


def _count(node: Node) -> int:
    return 1 + sum(_count(child) for child in node.children.values())


def _write(entries: EntryWriter, node: Node, rel: str, roots: Sequence[Path], step: Progress) -> None:
    root = roots[node.layer]
    source = root / rel if rel else root
    entries.add(source, rel, opaque=node.opaque if node.kind == "dir" else None, link_scope=root)
    step.advance(1)
    for name in sorted(node.children):
        _write(entries, node.children[name], f"{rel}/{name}" if rel else name, roots, step)


def squash_layers(store: Store, digests_base_first: Sequence[str], *, below: Sequence[str], description: str,
                  threads: int = 0) -> Layer:
    """Merge the given layers (lowest first) into one new overlay layer in the store.

    ``below`` is the chain beneath them, base first (at least the base): the new layer records its first and
    last element as base and parent, and whiteouts that hide nothing in it are dropped."""
    if len(digests_base_first) < 2:
        raise LayerbootError("squashing needs at least two layers")
    if not below:
        raise LayerbootError("squashing needs the layers beneath the range (at least the base)")
    layers = [store.get(d) for d in digests_base_first]
    beneath = [store.get(d) for d in below]
    for layer in layers + beneath:
        if not layer.is_squashfs:
            raise LayerbootError(f"{layer.short} is a {layer.kind}, not a squashfs layer")
        if problem := store.objects.verify(layer.digest):   # else the damage would live on, validly hashed
            raise LayerbootError(f"layer {layer.short} is damaged ({problem}); squashing it would bake the damage "
                                 "into a new layer", hint="repair it first: import its good bytes again "
                                 "(layerboot layer import FILE); see 'layerboot store fsck'")
    store.paths.tmp.mkdir(parents=True, exist_ok=True)
    with scratch_dir(store.paths.tmp, prefix="squash.") as scratch_name:
        scratch = Path(scratch_name)
        image = scratch / "layer.squashfs"
        with contextlib.ExitStack() as stack:
            roots = [mount_squashfs(stack, store.path(layer), scratch / "layers" / str(i))
                     for i, layer in enumerate(layers)]
            lowers = [mount_squashfs(stack, store.path(layer), scratch / "below" / str(i))
                      for i, layer in enumerate(beneath)]
            lower = lowers[0] if len(lowers) == 1 else mount_overlay(stack, lowers, scratch / "below-merged")
            tree = merge_layers(roots)
            dropped = drop_hiding_nothing(tree, lower)
            if dropped:
                log.info("dropped %d whiteout(s) that hide nothing beneath the squashed range", dropped)

            def fill(writer: TarWriter) -> None:
                _write(EntryWriter(writer, action="squash"), tree, "", roots, step)

            with Progress(f"squashing {len(layers)} layers", total=_count(tree), unit="entries") as step:
                build_squashfs(fill, image, compression=store.compression, block_size=store.block_size,
                               threads=threads, scratch=scratch)
        log.info("squashed %d layers into one image", len(layers))
        return store.import_squashfs(image, kind="overlay", source="squash:" + ",".join(l.short for l in layers),
                                     description=description, base=beneath[0].digest, parent=beneath[-1].digest,
                                     move=True)


def squash_profile(profiles: Profiles, name: str, first: int, last: int, *, threads: int = 0) -> Generation:
    """Replace positions ``first``..``last`` (1 = just above the base) of the current generation by one layer."""
    gen = profiles.current(name)
    top = len(gen.layers) - 1
    if top < 2:
        raise LayerbootError(f"profile {name} has {top} overlay layer(s); squashing needs at least two")
    if not 1 <= first < last <= top:
        raise LayerbootError(f"positions must satisfy 1 <= from < to <= {top} (1 is just above the base)")
    chosen = gen.layers[first:last + 1]
    layer = squash_layers(profiles.store, chosen, below=gen.layers[:first],
                          description=f"squash of {name} positions {first}-{last} (generation {gen.number})",
                          threads=threads)
    if layer.digest in gen.layers:
        raise LayerbootError(f"the squashed layer {layer.short} is already in {name}")
    new_layers = gen.layers[:first] + (layer.digest,) + gen.layers[last + 1:]
    return profiles.replace_layers(name, new_layers, f"squash {first}..{last} into {layer.short}",
                                   expect_number=gen.number)
