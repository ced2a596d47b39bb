"""A tiny but real root filesystem tree from Debian's busybox-static, for demos and boot tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.run import run

BUSYBOX = Path("/bin/busybox")
DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "mnt", "var/log")


def find_busybox() -> Path:
    if not BUSYBOX.is_file():
        raise LayerbootError("busybox is not installed", hint="apt-get install busybox-static")
    if b"statically linked" not in run(["file", "-b", BUSYBOX]).stdout:
        raise LayerbootError(f"{BUSYBOX} is not statically linked", hint="apt-get install busybox-static")
    return BUSYBOX


def build_busybox_tree(root: Path, *, init_script: str | None = None) -> Path:
    """Create ``root`` with busybox, its applet links, passwd/group and an optional /sbin/init script."""
    busybox = find_busybox()
    for name in DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin/busybox")
    applets = run([root / "bin/busybox", "--list-full"]).text.split()
    for applet in applets:
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", link)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/hostname").write_text("layerboot-node\n")
    (root / "etc/os-release").write_text('NAME="layerboot busybox demo"\nID=layerboot-demo\n')
    if init_script is not None:
        init = root / "sbin/init"
        if init.is_symlink() or init.exists():
            init.unlink()
        init.write_text(init_script)
        init.chmod(0o755)
    return root
