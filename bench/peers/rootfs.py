"""The one root filesystem every system boots: busybox, a marker init, and incompressible filler.

Its init (``/sbin/init``, also at ``/marker`` for the peers' ``init=/marker``) prints
``ROOTFS-UP <uptime> version=<v> used_kb=<n>`` on the console and powers off, so the time to that line is the
time until the real rootfs runs, and ``used_kb`` the RAM in use then (MemTotal - MemAvailable: what the boot
holds that the kernel could not hand back, e.g. layers in a tmpfs). ``/etc/bench-version`` is the one file the second-boot benchmark changes (v1 -> v2).
The filler is a deterministic pseudo-random stream (incompressible), so the squashfs is about
``filler_mb`` MB whatever the host has installed, and equal inputs give an equal image.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from layerboot.build.busybox_tree import build_busybox_tree, find_busybox
from layerboot.run import require_tool, run

from peers.cache import cached, input_key

MARKER = "ROOTFS-UP"
MARKER_SCRIPT = """#!/bin/sh
# layerboot boot benchmark: the real rootfs is running; say so with the guest's uptime, then power off.
[ -r /proc/uptime ] || mount -t proc proc /proc
[ -c /dev/console ] && exec >/dev/console 2>&1
read up idle < /proc/uptime
used=$(awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} END {print t - a}' /proc/meminfo)
echo "ROOTFS-UP $up version=$(cat /etc/bench-version) used_kb=$used"
sync
poweroff -f
"""
VERSION_FILE = "etc/bench-version"
FILLER_FILE = "usr/share/bench/filler.bin"
_MARKER_LINE = re.compile(r"ROOTFS-UP (\d+(?:\.\d+)?) version=(\S+)(?: used_kb=(\d+))?")


@dataclass(frozen=True)
class MarkerLine:
    """What the rootfs init printed: the guest's uptime at that moment and the rootfs version it saw."""

    uptime: float
    version: str
    used_kb: int | None = None    # RAM in use at the marker (None: an older marker without it)


def parse_marker(line: str) -> MarkerLine | None:
    """The marker in a console line (None when the line is not the marker)."""
    match = _MARKER_LINE.search(line)
    if not match:
        return None
    return MarkerLine(float(match.group(1)), match.group(2), int(match.group(3)) if match.group(3) else None)


def filler_bytes(size: int, seed: bytes = b"layerboot-bench") -> bytes:
    """``size`` deterministic, incompressible bytes."""
    return hashlib.shake_256(seed).digest(size)


def build_tree(root: Path, *, version: str, filler_mb: int) -> Path:
    """The benchmark rootfs tree at ``root``."""
    build_busybox_tree(root, init_script=MARKER_SCRIPT)
    marker = root / "marker"
    marker.write_text(MARKER_SCRIPT)
    marker.chmod(0o755)
    (root / VERSION_FILE).write_text(version + "\n")
    if filler_mb:
        filler = root / FILLER_FILE
        filler.parent.mkdir(parents=True, exist_ok=True)
        filler.write_bytes(filler_bytes(filler_mb << 20))
    return root


def squash(tree: Path, image: Path) -> None:
    """Pack a tree reproducibly (fixed times, root-owned) with zstd, as every peer's image is packed."""
    run([require_tool("mksquashfs", package="squashfs-tools"), tree, image, "-comp", "zstd", "-noappend",
         "-quiet", "-no-progress", "-all-root", "-mkfs-time", "0", "-all-time", "0"], timeout=600)


def rootfs_key(version: str, filler_mb: int) -> str:
    return input_key("rootfs/1", find_busybox().read_bytes(), MARKER_SCRIPT, version, filler_mb)


def rootfs_image(cache: Path, *, version: str, filler_mb: int, rebuild: bool = False) -> Path:
    """The cached squashfs of the benchmark rootfs with ``/etc/bench-version`` = ``version``."""
    def build(out: Path) -> None:
        tree = out.with_name(out.name + ".tree")
        shutil.rmtree(tree, ignore_errors=True)
        try:
            squash(build_tree(tree, version=version, filler_mb=filler_mb), out)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
    return cached(cache, f"rootfs-{version}", rootfs_key(version, filler_mb), build, suffix=".squashfs",
                  rebuild=rebuild)
