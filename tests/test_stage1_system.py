"""stage1's mount helpers on the host: overlayfs lowerdir order, symlinks resolved inside the new root, and the
in-process loop device set-up (LOOP_CTL_GET_FREE + LOOP_CONFIGURE) on a real squashfs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from layerboot.initrd.stage1.console import StageError
from layerboot.initrd.stage1.system import (attach_loop, is_mountpoint, lowerdir_option, mem_available, mount,
                                            ram_for_layers, resolve_in_root)
from layerboot.run import run


def test_lowerdir_is_top_layer_first() -> None:
    assert lowerdir_option(["/l/0", "/l/1", "/l/2"]) == "/l/2:/l/1:/l/0"


def test_symlinks_resolve_inside_the_new_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_text("")
    (root / "sbin").mkdir()
    (root / "sbin" / "init").symlink_to("/bin/busybox")            # absolute: must stay inside root
    (root / "sbin" / "rel").symlink_to("../bin/busybox")
    (root / "sbin" / "up").symlink_to("../../../../etc/passwd")    # cannot climb out of the root
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(str(root), "/sbin/init") == f"{root}/bin/busybox"
    assert resolve_in_root(str(root), "/sbin/rel") == f"{root}/bin/busybox"
    assert resolve_in_root(str(root), "/sbin/up") == f"{root}/etc/passwd"
    with pytest.raises(StageError, match="too many symlinks"):
        resolve_in_root(str(root), "/loop")


@pytest.mark.root
def test_loop_attach_is_read_only_autoclear_and_mountable(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello").write_text("layer\n")
    image = tmp_path / "layer.squashfs"
    run(["mksquashfs", tree, image, "-quiet", "-noappend", "-comp", "zstd"])
    device, fd = attach_loop(str(image))
    name = Path(device).name
    target = tmp_path / "mnt"
    try:
        sysfs = Path("/sys/block") / name
        assert (sysfs / "ro").read_text().strip() == "1"
        assert (sysfs / "loop" / "backing_file").read_text().strip() == str(image)
        assert (sysfs / "loop" / "autoclear").read_text().strip() == "1"
        mount(device, str(target), "squashfs", "ro")
    finally:
        os.close(fd)
    try:
        assert is_mountpoint(str(target)) and (target / "hello").read_text() == "layer\n"
    finally:
        run(["umount", target])
    # Autoclear: with the mount gone and our fd closed, the device lets go of the file (the kernel may do
    # this from a work queue, so allow it a moment).
    backing = Path("/sys/block") / name / "loop" / "backing_file"
    for _ in range(100):
        if not backing.exists():
            break
        time.sleep(0.02)
    assert not backing.exists()


def test_layers_in_ram_get_a_tmpfs_of_their_own_or_one_clear_refusal(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1000000 kB\nMemAvailable:     500000 kB\n")
    assert mem_available(str(meminfo)) == 512_000_000
    target = tmp_path / "layers"
    with pytest.raises(StageError, match=r"^the layers need 600 MB of RAM, the node has 512 MB available .*"
                                         r"layerboot.cache= \(docs/stage1.md, 'RAM and disk'\)$"):
        ram_for_layers(600_000_000, 2, str(target), meminfo=str(meminfo))
    assert not is_mountpoint(str(target))
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    ram_for_layers(300_000_000, 2, str(target), meminfo=str(meminfo))
    try:
        assert is_mountpoint(str(target))
        stats = os.statvfs(target)
        assert 300_000_000 < stats.f_blocks * stats.f_frsize <= 300_000_000 + 4 * (1 << 20)
    finally:
        run(["umount", target])
