"""What the benchmark needs to know about one system under test, and what every system is given."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from layerboot.build.kernel import Kernel

from peers.link import ShapedLink
from peers.serve import CountingServer, Traffic

# Drivers every initrd must have for this guest: the virtio NIC, and what a squashfs-over-overlayfs root needs.
MODULES = ("virtio_net", "virtio_pci", "squashfs", "overlay", "loop")


class Unavailable(Exception):
    """This system cannot be measured in this tree yet (reported as such, never as a figure)."""


@dataclass(frozen=True)
class Bench:
    """The shared inputs: cache dir, kernel, the rootfs image per version, the peers' HTTP server."""

    cache: Path
    kernel: Kernel
    images: dict[str, Path]          # "v1" (first boot), "v2" (one-file change) -> squashfs
    server: CountingServer
    workdir: Path                    # scratch space, removed after the run
    logs: Path                       # serial logs and daemon logs, kept
    rebuild: bool = False
    cpus: int = 1                    # vCPUs of every guest (--cpus)
    read_mb: int = 0                 # --read-mb: the relay systems read this much of each layer (peers/relays.py)
    link: ShapedLink | None = None   # --link-mbit: the boot network's speed (peers/link.py); None: unshaped

    def guest_port(self, port: int) -> int:
        """A port the guests fetch from: its traffic to them goes through the shaped link, if there is one."""
        return self.link.shape(port) if self.link is not None else port


@dataclass(frozen=True)
class System:
    """A bootable system: its initrd, its command line per rootfs version, its failure lines, its traffic."""

    name: str
    initrd: Path
    cmdline: Callable[[str], str]
    fail: re.Pattern[str]
    traffic: Traffic
    mac: dict[str, str] = field(default_factory=dict)   # per rootfs version, when the system needs a fixed one
    cache_variant: System | None = None   # the same system booting with a local cache disk (layerboot.cache=)


def name_list(text: str, known: object, what: str) -> list[str]:
    """``a,b`` -> [a, b] for a command-line option naming members of ``known``; argparse's error otherwise."""
    import argparse

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]  # type: ignore[operator]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what}(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(known)}")  # type: ignore[call-overload]
    return names
