"""The declared disk actions on real file-backed loop disks: layout, idempotence, refusals, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abdisk import bootable_profile, loop_disk
from layerboot.build import ab, bootloader
from layerboot.build.bootloader import Esp
from layerboot.build.disk_actions import DiskContext, execute, partition_path, probe, read_table
from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_public_key
from layerboot.run import run


def test_partition_names_follow_the_kernel_convention() -> None:
    assert partition_path("/dev/sda", 3) == "/dev/sda3"
    assert partition_path("/dev/vda", 1) == "/dev/vda1"
    assert partition_path("/dev/loop7", 2) == "/dev/loop7p2"
    assert partition_path("/dev/nvme0n1", 5) == "/dev/nvme0n1p5"


@pytest.fixture
def source(profiles, make_layer, tmp_path: Path) -> tuple[ab.SlotSource, bytes]:
    bootable_profile(profiles, make_layer, tmp_path)
    public = load_public_key(profiles.paths.public_key)
    return ab.source_from_store(profiles, "node", None, public), public


def _install(disk: str, source: tuple[ab.SlotSource, bytes], tmp_path: Path, *, wipe: bool = False,
             upto: str | None = None) -> tuple[list, list[str]]:
    actions = ab.plan_install(disk, source[0], source[1], slot_mib=64, wipe=wipe)
    if upto:
        actions = actions[:[a.id for a in actions].index(upto) + 1]
    lines: list[str] = []
    return execute(actions, DiskContext(disk, wipe=wipe, workdir=tmp_path), report=lines.append), lines


@pytest.mark.root
def test_fresh_disk_gets_the_declared_layout_and_grub(source, tmp_path: Path) -> None:
    with loop_disk(tmp_path) as disk:
        reports, lines = _install(disk, source, tmp_path)
        ids = [r.id for r in reports]
        assert ids == ["ptable", "part-bios", "part-esp", "part-slot-a", "part-slot-b", "part-data", "fmt-esp",
                       "fmt-slot-a", "fmt-slot-b", "fmt-data", "bootloader", "write-slot", "activate"]
        assert all(r.outcome == "done" for r in reports)
        # each action is reported when it starts and when it ends
        assert lines[0].startswith("[ptable] ptable: GPT") and lines[1].startswith("[ptable] done")

        table = read_table(disk)
        assert table["label"] == "gpt"
        parts = {p["name"]: p for p in table["partitions"]}
        assert list(parts) == ["layerboot-bios", "layerboot-esp", "layerboot-a", "layerboot-b", "layerboot-data"]
        assert parts["layerboot-bios"]["type"] == "21686148-6449-6E6F-744E-656564454649"
        assert parts["layerboot-esp"]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        assert parts["layerboot-a"]["size"] == parts["layerboot-b"]["size"] == 64 * 2048

        layout = ab.AbDisk(disk).layout()
        for number, fstype, label, uuid in ((2, "vfat", "LAYERBOOT", layout.esp_fs_uuid()),
                                            (3, "ext4", "layerboot-a", layout.slot_uuids["A"]),
                                            (4, "ext4", "layerboot-b", layout.slot_uuids["B"]),
                                            (5, "ext4", "layerboot-data", layout.data_uuid)):
            found = probe(partition_path(disk, number))
            assert (found["TYPE"], found["LABEL"], found["UUID"].upper()) == (fstype, label, uuid.upper())

        # BIOS: GRUB's boot code in the MBR (keeping the GPT's protective entry), core.img in partition 1
        with open(disk, "rb") as handle:
            mbr = handle.read(512)
        assert mbr[510:512] == b"\x55\xaa" and b"GRUB " in mbr[:440]
        with open(partition_path(disk, 1), "rb") as handle:
            core = handle.read(512)
        assert core[:32] == (bootloader.GRUB_LIB / "i386-pc" / "diskboot.img").read_bytes()[:32]
        # UEFI: a PE image on the removable path; the menu names both slots by filesystem UUID
        esp = Esp(partition_path(disk, 2))
        assert esp.read(bootloader.EFI_PATH)[:2] == b"MZ"
        cfg = esp.read(bootloader.CFG_PATH).decode()
        assert f"--fs-uuid --set=root {layout.slot_uuids['A']}" in cfg
        assert f"--fs-uuid --set=root {layout.slot_uuids['B']}" in cfg
        state = ab.AbDisk(disk).state()
        assert state.order == ("A", "B") and state.slots["A"] == ab.SlotState("trial", ab.DEFAULT_TRIES)


@pytest.mark.root
def test_running_the_plan_again_changes_nothing(source, tmp_path: Path) -> None:
    with loop_disk(tmp_path) as disk:
        _install(disk, source, tmp_path)
        before = (run(["sfdisk", "--dump", disk]).text, ab.AbDisk(disk).esp.read(bootloader.ENV_PATH),
                  ab.AbDisk(disk).read_record("A"))
        reports, _ = _install(disk, source, tmp_path)
        assert {r.outcome for r in reports} == {"ok (already)"}
        after = (run(["sfdisk", "--dump", disk]).text, ab.AbDisk(disk).esp.read(bootloader.ENV_PATH),
                 ab.AbDisk(disk).read_record("A"))
        assert after == before


@pytest.mark.root
def test_a_disk_with_other_data_is_refused_unless_wiped(source, tmp_path: Path) -> None:
    with loop_disk(tmp_path) as disk:
        run(["sfdisk", "--quiet", disk], input=b"label: dos\n,100M,L\n")
        run(["partx", "-u", disk])
        run(["mkfs.ext4", "-q", "-L", "precious", partition_path(disk, 1)])
        with pytest.raises(LayerbootError, match=r"action ptable refused: .* holds a dos partition table; "
                                                 r"pass --wipe"):
            _install(disk, source, tmp_path)
        assert read_table(disk)["label"] == "dos"
        assert probe(partition_path(disk, 1))["LABEL"] == "precious"

        reports, _ = _install(disk, source, tmp_path, wipe=True)
        assert reports[-1].id == "activate" and read_table(disk)["label"] == "gpt"


@pytest.mark.root
def test_a_partition_with_other_geometry_is_refused(source, tmp_path: Path) -> None:
    with loop_disk(tmp_path) as disk:
        run(["sfdisk", "--quiet", disk], input=b'label: gpt\nstart=2048,size=2048,name="layerboot-bios",'
                                                b'type=21686148-6449-6E6F-744E-656564454649\n'
                                                b'start=4096,size=10M,name="layerboot-esp"\n')
        with pytest.raises(LayerbootError, match="action part-esp refused: partition 2 exists with another "
                                                 "geometry"):
            _install(disk, source, tmp_path)
        assert len(read_table(disk)["partitions"]) == 2


@pytest.mark.root
def test_an_interrupted_install_resumes_with_the_filesystems_it_made(source, tmp_path: Path) -> None:
    with loop_disk(tmp_path) as disk:
        _install(disk, source, tmp_path, upto="fmt-data")
        uuid_a = probe(partition_path(disk, 3))["UUID"]
        reports, _ = _install(disk, source, tmp_path)
        outcomes = {r.id: r.outcome for r in reports}
        assert outcomes["fmt-slot-a"] == "ok (already)" and outcomes["bootloader"] == "done"
        assert ab.AbDisk(disk).layout().slot_uuids["A"] == uuid_a


@pytest.mark.root
def test_a_disk_too_small_for_two_slots_is_refused_before_anything(source, tmp_path: Path) -> None:
    with loop_disk(tmp_path, size_mib=128) as disk:
        with pytest.raises(LayerbootError, match="cannot hold two 64 MiB slots"):
            _install(disk, source, tmp_path)
        assert read_table(disk) is None


@pytest.mark.root
def test_install_plan_cli_prints_every_action_without_touching_the_disk(source, profiles, tmp_path: Path,
                                                                        capsys) -> None:
    from layerboot.tools.cli import main
    with loop_disk(tmp_path) as disk:
        store = str(profiles.paths.root)
        assert main(["--store", store, "install", "plan", "--disk", disk, "--profile", "node",
                     "--slot-size", "64M", "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["type"] for r in rows][:2] == ["ptable", "partition"] and rows[-1]["type"] == "activate"
        assert rows[-2]["profile"] == "node" and rows[-2]["generation"] == 1
        assert read_table(disk) is None
