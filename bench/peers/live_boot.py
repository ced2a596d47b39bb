"""Debian live-boot (initramfs-tools): ``boot=live fetch=http://...`` downloads the squashfs and boots it.

initramfs-tools and live-boot conflict with the host's dracut, so the initrd is built in a throwaway
``debootstrap --variant=minbase`` chroot from the host's own Debian mirror (build/debootstrap.py's
``host_mirror``), with the benchmark kernel's module
tree copied in. The initrd is the stock one (``MODULES=most``, zstd) plus the virtio/squashfs/overlay/loop
modules listed in ``/etc/initramfs-tools/modules``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from layerboot.build.debootstrap import host_mirror
from layerboot.build.kernel import Kernel
from layerboot.run import require_tool, run

from peers.cache import cached, input_key
from peers.system import MODULES, Bench, System

SUITE = "bookworm"
PACKAGES = ("initramfs-tools", "live-boot", "live-boot-initramfs-tools", "busybox", "zstd", "wget")
FAIL = re.compile(r"Kernel panic|Unable to find a medium|\(initramfs\)|Unable to find a live file system")
CHROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}


def _mount(stack: ExitStack, argv: list[str], target: Path) -> None:
    run(["mount", *argv, target])
    stack.callback(run, ["umount", "-l", target])


def _chroot_mounts(stack: ExitStack, root: Path) -> None:
    """/proc, /sys and /dev inside the chroot, unmounted (lazily, so nothing pins them) on exit."""
    _mount(stack, ["-t", "proc", "proc"], root / "proc")
    _mount(stack, ["-t", "sysfs", "sysfs"], root / "sys")
    _mount(stack, ["--bind", "/dev"], root / "dev")


def _in_chroot(root: Path, *argv: str, timeout: float = 1800) -> None:
    run(["chroot", root, *argv], env=CHROOT_ENV, timeout=timeout)


def build_chroot(cache: Path, mirror: str, *, rebuild: bool = False) -> Path:
    """The minbase chroot with initramfs-tools and live-boot installed (cached by mirror and package list)."""
    debootstrap = require_tool("debootstrap")

    def build(root: Path) -> None:
        run([debootstrap, "--variant=minbase", SUITE, root, mirror], timeout=1800)
        (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")   # start no services
        (root / "usr/sbin/policy-rc.d").chmod(0o755)
        (root / "etc/apt/apt.conf.d/99bench").write_text('Acquire::Check-Valid-Until "false";\n')
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
        with ExitStack() as stack:
            _chroot_mounts(stack, root)
            _in_chroot(root, "apt-get", "update", "-q")
            _in_chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    return cached(cache, "live-boot-chroot", input_key("chroot/1", mirror, SUITE, PACKAGES), build,
                  rebuild=rebuild)


def build_initrd(cache: Path, kernel: Kernel, chroot: Path, *, rebuild: bool = False) -> Path:
    """mkinitramfs inside the chroot for the benchmark kernel (cached by chroot and kernel)."""
    def build(out: Path) -> None:
        moddir = chroot / "lib/modules" / kernel.version
        shutil.rmtree(moddir, ignore_errors=True)
        shutil.copytree(kernel.moddir, moddir, symlinks=True)
        (chroot / "boot").mkdir(exist_ok=True)
        if kernel.config.is_file():
            shutil.copy2(kernel.config, chroot / "boot" / kernel.config.name)
        (chroot / "etc/initramfs-tools/modules").write_text("".join(m + "\n" for m in MODULES))
        conf = chroot / "etc/initramfs-tools/initramfs.conf"
        conf.write_text(re.sub(r"(?m)^COMPRESS=.*$", "COMPRESS=zstd", conf.read_text()))
        with ExitStack() as stack:
            _chroot_mounts(stack, chroot)
            _in_chroot(chroot, "mkinitramfs", "-o", "/boot/initrd.img-bench", kernel.version, timeout=900)
        shutil.move(chroot / "boot/initrd.img-bench", out)
    return cached(cache, "initrd-live-boot", input_key("live-boot/1", chroot.name, kernel.version, MODULES),
                  build, suffix=".img", rebuild=rebuild)


def cmdline(url: str) -> str:
    return f"console=ttyS0 boot=live fetch={url} ip=dhcp init=/marker panic=-1"


@contextmanager
def system(bench: Bench) -> Iterator[System]:
    chroot = build_chroot(bench.cache, host_mirror(), rebuild=bench.rebuild)
    initrd = build_initrd(bench.cache, bench.kernel, chroot, rebuild=bench.rebuild)
    urls = {v: bench.server.publish(f"rootfs-{v}.squashfs", image) for v, image in bench.images.items()}
    yield System("live-boot", initrd, lambda version: cmdline(urls[version]), FAIL, bench.server.traffic)
