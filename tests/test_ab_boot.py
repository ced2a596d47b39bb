"""The A/B disk booted by real firmware in QEMU: SeaBIOS and OVMF load our GRUB, which counts tries in its
environment block on the ESP, boots the slot's own kernel/initrd with ``layerboot.slot=``, and after a broken
update falls back to the good slot by itself (no host in the loop between the boots).

The initrds are tiny busybox scripts (stage1 is tested elsewhere): the good one prints its command line and
powers off; the broken one exits, so the kernel panics and (``panic=-1``) reboots into GRUB again."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from abdisk import big_generation, kill_writer_mid_copy, loop_disk
from layerboot.build import ab
from layerboot.build.disk_actions import DiskContext, execute
from layerboot.build.kernel import fetch_kernel
from layerboot.overlays.keys import load_public_key
from layerboot.run import run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GOOD_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "LBTEST-SLOT: $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
"""
BROKEN_INIT = "#!/bin/busybox sh\necho 'LBTEST-BROKEN: this update cannot boot'\nexit 1\n"


def _initrd(directory: Path, init: str) -> Path:
    tree = directory / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "proc").mkdir()
    shutil.copy("/bin/busybox", tree / "bin" / "busybox")
    (tree / "init").write_text(init)
    (tree / "init").chmod(0o755)
    names = run(["find", "."], cwd=tree).stdout
    image = directory / "initrd.cpio"
    with open(image, "wb") as out:
        run(["cpio", "-o", "-H", "newc", "--quiet"], input=names, stdout=out, cwd=tree)
    return image


@pytest.fixture(scope="module")
def kernel_image() -> Path:
    return fetch_kernel().image


@pytest.fixture
def node(profiles, make_layer, tmp_path: Path, kernel_image: Path):  # noqa: ANN201
    """A profile booting the real kernel with the good initrd; returns a function making a broken generation."""
    store = profiles.store
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    kernel = store.import_boot_file(kernel_image, kind="kernel").digest
    good = store.import_boot_file(_initrd(tmp_path / "good", GOOD_INIT), kind="initrd").digest
    base = make_layer({"etc/os-release": "ID=test\n"}, kind="base")
    profiles.create("node", base, kernel=kernel, initrd=good, cmdline="console=ttyS0 panic=-1 quiet")

    def broken() -> None:
        bad = store.import_boot_file(_initrd(tmp_path / "bad", BROKEN_INIT), kind="initrd").digest
        profiles.set_boot("node", initrd=bad)
    return broken


def _qemu(image: Path, log: Path, *, uefi: bool = False, tmp_path: Path) -> str:
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "512", "-display", "none",
            "-nic", "none", "-serial", f"file:{log}", "-drive", f"file={image},format=raw,if=virtio"]
    if uefi:
        vars_copy = tmp_path / "vars.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={vars_copy}"]
    run(argv, timeout=240)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", log.read_text(errors="replace"))


def _install(device: str, profiles, tmp_path: Path, tries: int, slot_mib: int = 64) -> ab.AbDisk:
    public = load_public_key(profiles.paths.public_key)
    source = ab.source_from_store(profiles, "node", None, public)
    execute(ab.plan_install(device, source, public, slot_mib=slot_mib, tries=tries),
            DiskContext(device, workdir=tmp_path), report=lambda line: None)
    return ab.AbDisk(device, workdir=tmp_path)


@pytest.mark.qemu
@pytest.mark.root
def test_bios_boot_of_a_broken_update_rolls_back_by_itself(profiles, node, tmp_path: Path) -> None:
    public = load_public_key(profiles.paths.public_key)
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, tmp_path, tries=3)
        uuids = disk.layout().slot_uuids
        disk.mark_good("A")                              # the node confirmed generation 1 earlier
        node()                                           # generation 2: an initrd that cannot boot
        assert disk.update(ab.source_from_store(profiles, "node", None, public), public, tries=2) == "B"
        run(["partx", "-d", device], check=False)
        image = Path(run(["losetup", "--noheadings", "-O", "BACK-FILE", device]).text.strip())

        serial = _qemu(image, tmp_path / "bios.log", tmp_path=tmp_path)
        booted = re.findall(r"Booting `layerboot slot (\w)'", serial)
        assert booted == ["B", "B", "A"], serial[-3000:]
        assert serial.count("LBTEST-BROKEN") == 2 and "Kernel panic" in serial
        assert (f"LBTEST-SLOT: BOOT_IMAGE=/boot/vmlinuz layerboot.slot=UUID={uuids['A']} layerboot.profile=node "
                f"panic=10 layerboot.emergency=reboot console=ttyS0") in serial

        run(["partx", "-u", device])
        state = disk.state()
        assert state.slots == {"A": ab.SlotState("good"), "B": ab.SlotState("bad")} and state.booted == "A"


@pytest.mark.qemu
@pytest.mark.root
def test_power_cut_while_writing_a_slot_still_boots_the_old_slot(profiles, node, tmp_path: Path) -> None:
    with loop_disk(tmp_path, size_mib=420) as device:
        disk = _install(device, profiles, tmp_path, tries=3, slot_mib=160)
        uuid_a = disk.layout().slot_uuids["A"]
        disk.mark_good("A")
        big_generation(profiles, profiles.current("node").base, tmp_path, 100)
        kill_writer_mid_copy(profiles, device, tmp_path)
        run(["partx", "-d", device], check=False)
        image = Path(run(["losetup", "--noheadings", "-O", "BACK-FILE", device]).text.strip())
        serial = _qemu(image, tmp_path / "cut.log", tmp_path=tmp_path)
        assert re.findall(r"Booting `layerboot slot (\w)'", serial) == ["A"], serial[-3000:]
        assert f"LBTEST-SLOT: BOOT_IMAGE=/boot/vmlinuz layerboot.slot=UUID={uuid_a}" in serial


@pytest.mark.qemu
@pytest.mark.root
@pytest.mark.skipif(not OVMF_CODE.exists(), reason="OVMF (Debian package ovmf) is not installed")
def test_uefi_boot_counts_a_try_on_the_esp(profiles, node, tmp_path: Path) -> None:
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, tmp_path, tries=3)
        uuid_a = disk.layout().slot_uuids["A"]
        run(["partx", "-d", device], check=False)
        image = Path(run(["losetup", "--noheadings", "-O", "BACK-FILE", device]).text.strip())
        serial = _qemu(image, tmp_path / "uefi.log", uefi=True, tmp_path=tmp_path)
        assert f"LBTEST-SLOT: BOOT_IMAGE=/boot/vmlinuz layerboot.slot=UUID={uuid_a}" in serial, serial[-3000:]
        assert "error:" not in serial
        run(["partx", "-u", device])
        assert disk.state().slots["A"] == ab.SlotState("trial", 2)
