"""dracut livenet + dmsquash-live: ``root=live:http://...`` downloads the squashfs and boots it.

Built with the host's dracut (dracut-core, dracut-network, dracut-live) as a generic initrd
(``--no-hostonly``) for the benchmark kernel, with the ``network-legacy`` DHCP stack (the one that honours
``ip=dhcp`` without NetworkManager or systemd-networkd), zstd-compressed like the other initrds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layerboot.build.kernel import Kernel
from layerboot.run import require_tool, run

from peers.cache import cached, input_key
from peers.system import MODULES, Bench, System

DRACUT_MODULES = ("livenet", "dmsquash-live", "network-legacy")
PACKAGES = ("dracut-core", "dracut-network", "dracut-live")
FAIL = re.compile(r"Kernel panic|Could not boot|starting timeout scripts|Entering emergency mode|dracut:/#")


def dracut_versions() -> str:
    """The installed dracut packages and versions: part of the initrd's cache key."""
    return run(["dpkg-query", "-W", *PACKAGES]).text.strip()


def build_initrd(cache: Path, kernel: Kernel, *, rebuild: bool = False) -> Path:
    dracut = require_tool("dracut", package="dracut-core")
    argv_tail = ["--no-hostonly", "--no-hostonly-cmdline", "--zstd", "--add", " ".join(DRACUT_MODULES),
                 "--add-drivers", " ".join(MODULES)]

    def build(out: Path) -> None:
        run([dracut, "--force", "--quiet", "--kver", kernel.version, "--kmoddir", kernel.moddir, *argv_tail, out],
            timeout=900)
    key = input_key("dracut/1", dracut_versions(), kernel.version, argv_tail)
    return cached(cache, "initrd-dracut-livenet", key, build, suffix=".img", rebuild=rebuild)


def cmdline(url: str) -> str:
    return f"console=ttyS0 root=live:{url} rd.live.overlay.overlayfs=1 ip=dhcp rd.neednet=1 init=/marker panic=-1"


@contextmanager
def system(bench: Bench) -> Iterator[System]:
    initrd = build_initrd(bench.cache, bench.kernel, rebuild=bench.rebuild)
    urls = {v: bench.server.publish(f"rootfs-{v}.squashfs", image) for v, image in bench.images.items()}
    yield System("dracut-livenet", initrd, lambda version: cmdline(urls[version]), FAIL, bench.server.traffic)
