"""Helpers for the A/B disk tests: file-backed loop disks, a bootable profile, and GRUB run in grub-emu."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from layerboot.build.ab import PART_B, PART_ESP
from layerboot.build.disk_actions import partition_path
from layerboot.overlays.profile import Profiles
from layerboot.run import Process, run, tool_path

MiB = 1024 * 1024


@contextlib.contextmanager
def loop_disk(directory: Path, size_mib: int = 320, name: str = "disk.img") -> Iterator[str]:
    """A sparse image attached with partition scanning; partitions are dropped and the loop detached after."""
    image = directory / name
    with open(image, "wb") as handle:
        handle.truncate(size_mib * MiB)
    device = run(["losetup", "--find", "--show", "--partscan", image]).text.strip()
    try:
        yield device
    finally:
        for line in Path("/proc/mounts").read_text().splitlines():
            source, target = line.split()[:2]
            if source.startswith(device + "p"):
                run(["umount", "-l", target.replace("\\040", " ")], check=False)
        run(["partx", "-d", device], check=False)
        run(["losetup", "--detach", device], check=False)


def bootable_profile(profiles: Profiles, make_layer: Callable[..., str], tmp_path: Path, *,
                     name: str = "node", files: dict[str, str] | None = None) -> str:
    """A profile with a base layer, a fake kernel and initrd (the disk tests never boot them)."""
    base = make_layer(files or {"etc/os-release": "ID=test\n", "bin/marker": "base\n"}, kind="base")
    boot = {}
    for kind in ("kernel", "initrd"):
        path = tmp_path / f"{name}.{kind}"
        path.write_bytes(os.urandom(64 * 1024))
        boot[kind] = profiles.store.import_boot_file(path, kind=kind).digest
    profiles.create(name, base, kernel=boot["kernel"], initrd=boot["initrd"], cmdline="console=ttyS0")
    return base


def grub_emu() -> str | None:
    return tool_path("grub-emu")


def grub_boot(disk: str) -> tuple[str, dict[str, str]]:
    """One boot's slot selection by the real GRUB: grub-emu sources the select script from the disk's ESP.

    Returns (picked slot or "", the variables GRUB saw after the script). GRUB writes the state file back to the
    disk itself with save_env, exactly as firmware-booted GRUB does.
    """
    with tempfile.TemporaryDirectory(prefix="grub-emu.") as scratch:
        device_map = Path(scratch) / "device.map"
        device_map.write_text(f"(hd0) {disk}\n")
        part = int(partition_path(disk, PART_ESP).rsplit("p", 1)[-1])
        script = (f"set prefix=(hd0,gpt{part})/grub\nset lb_env=$prefix/layerboot.env\n"
                  "source $prefix/layerboot-select.cfg\n"
                  'echo "LBPICK=[$lb_pick] A=[$lb_A_state/$lb_A_tries] B=[$lb_B_state/$lb_B_tries]"\nhalt\n')
        result = run([grub_emu() or "grub-emu", "-d", scratch, "-m", device_map, "-r", "host"],
                     input=script.encode(), timeout=60)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", result.stdout.decode("utf-8", "replace"))
    match = re.search(r"^LBPICK=\[(\w*)\] A=\[(\w+)/(\d+)\] B=\[(\w+)/(\d+)\]", text, re.MULTILINE)
    assert match, f"grub-emu did not run the select script: {text[-800:]}"
    pick, a_state, a_tries, b_state, b_tries = match.groups()
    return pick, {"A": f"{a_state}/{a_tries}", "B": f"{b_state}/{b_tries}"}


def big_generation(profiles: Profiles, base: str, tmp_path: Path, mib: int) -> None:
    """A new generation of "node" with an incompressible layer of ``mib`` MiB (a slot write copies every byte)."""
    tree = tmp_path / "big"
    (tree / "opt").mkdir(parents=True)
    with open(tree / "opt" / "blob", "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(1 << 20))
    layer = profiles.store.import_tree(tree, kind="overlay", base=base, all_root=True)
    shutil.rmtree(tree)
    profiles.add("node", layer.digest)


def kill_writer_mid_copy(profiles: Profiles, device: str, tmp_path: Path) -> None:
    """Run 'layerboot ab update' in a child and SIGKILL it once it has copied its first bytes into slot B.

    That is a power cut as far as the disk is concerned: no cleanup, no state change. The writer's mount is
    detached afterwards, as a reboot would.
    """
    slot_b = partition_path(device, PART_B)
    writer = Process([sys.executable, "-m", "layerboot", "--store", str(profiles.paths.root), "ab", "update",
                      "--disk", device, "--profile", "node"], cwd=tmp_path)
    deadline = time.monotonic() + 60

    def copied() -> int:
        for line in Path("/proc/mounts").read_text().splitlines():
            source, target = line.split()[:2]
            layers = Path(target) / "layers"
            if source == slot_b and layers.is_dir():
                return sum(p.stat().st_size for p in layers.iterdir())
        return 0

    while copied() == 0:
        if writer.poll() is not None or time.monotonic() > deadline:
            writer.kill()
            raise AssertionError("the writer never began copying: " +
                                 (writer.stderr.read().decode() if writer.stderr else ""))
        time.sleep(0.002)
    writer.kill()
    assert writer.wait() == -9, writer.stderr.read().decode() if writer.stderr else ""
    run(["umount", "-l", slot_b], check=False)
