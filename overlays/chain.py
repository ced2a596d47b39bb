"""Stacking a layer chain: squashfs images loop-mounted read-only, combined by overlayfs.

A chain is given base first (as profiles and manifests list it); overlayfs wants ``lowerdir=`` top first.
:func:`lowerdir_option` is the one place that turns one order into the other. This module is stdlib-only
(plus the command runner) so stage1 uses the same code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.run import run

_UNSAFE = (":", ",", "\\", "\n")


def _check_mount_path(path: Path) -> str:
    text = os.fspath(path)
    if any(ch in text for ch in _UNSAFE):
        raise LayerbootError(f"path {text!r} cannot be used in overlayfs options (contains ':', ',' or '\\')")
    return text


def lowerdir_option(base_first: Sequence[Path]) -> str:
    """Turn a base-first list of layer directories into overlayfs's top-first ``lowerdir=`` value."""
    if not base_first:
        raise LayerbootError("an overlay needs at least one lower layer")
    return ":".join(_check_mount_path(p) for p in reversed(base_first))


def attach_loop(stack: contextlib.ExitStack, image: Path) -> str:
    """Attach ``image`` to a free loop device, read-only; detached when the stack closes."""
    device = run(["losetup", "--find", "--show", "--read-only", image]).text.strip()
    stack.callback(run, ["losetup", "--detach", device], check=False)
    return device


def mount(stack: contextlib.ExitStack, source: str, target: Path, *, fstype: str, options: str = "") -> Path:
    """Mount and register the unmount on ``stack``."""
    argv = ["mount", "-t", fstype]
    if options:
        argv += ["-o", options]
    run([*argv, source, target])
    stack.callback(run, ["umount", target], check=False)
    return target


def mount_squashfs(stack: contextlib.ExitStack, image: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    device = attach_loop(stack, image)
    return mount(stack, device, target, fstype="squashfs", options="ro")


def mount_overlay(stack: contextlib.ExitStack, lowers_base_first: Sequence[Path], target: Path, *,
                  upper: Path | None = None, work: Path | None = None, extra: str = "") -> Path:
    """Mount overlayfs; with no upper dir the result is read-only (needs at least two lowers)."""
    target.mkdir(parents=True, exist_ok=True)
    options = [f"lowerdir={lowerdir_option(lowers_base_first)}"]
    if upper is not None:
        if work is None:
            raise LayerbootError("an overlay with an upper dir needs a work dir on the same filesystem")
        options += [f"upperdir={_check_mount_path(upper)}", f"workdir={_check_mount_path(work)}"]
    elif len(lowers_base_first) < 2:
        raise LayerbootError("a read-only overlay needs at least two lower layers")
    if extra:
        options.append(extra)
    return mount(stack, "overlay", target, fstype="overlay", options=",".join(options))


def mount_chain(stack: contextlib.ExitStack, images_base_first: Sequence[Path], workdir: Path, *,
                writable: bool = True, upper_size: str = "50%") -> Path:
    """Mount a whole chain under ``workdir`` and return the merged root.

    Layout: workdir/layers/<i> (squashfs, base is 0), workdir/rw (tmpfs holding upper/ and work/) and
    workdir/merged. ``rw/upper`` is the directory ``layerboot capture`` packs.
    """
    lowers = [mount_squashfs(stack, image, workdir / "layers" / str(i)) for i, image in enumerate(images_base_first)]
    merged = workdir / "merged"
    if not writable and len(lowers) >= 2:
        return mount_overlay(stack, lowers, merged)
    rw = workdir / "rw"
    rw.mkdir(parents=True, exist_ok=True)
    mount(stack, "tmpfs", rw, fstype="tmpfs", options=f"mode=0755,size={upper_size}")
    (rw / "upper").mkdir()
    (rw / "work").mkdir()
    return mount_overlay(stack, lowers, merged, upper=rw / "upper", work=rw / "work")
