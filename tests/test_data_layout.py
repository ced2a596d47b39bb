"""The data area of an A/B install: its plan, its record in layout.json, and refusals, on this machine.

This host's kernel has neither md nor device-mapper (and no modules), so RAID1 and LVM run in a QEMU guest with
Debian's kernel: tests/test_site_qemu.py executes every kind there on file-backed loop disks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abdisk import bootable_profile, loop_disk
from layerboot.build import ab
from layerboot.build.data_layout import (KINDS, MD_DEVICE, DataLayout, data_layout, plan_data, preflight,
                                         zpool_create_argv)
from layerboot.build.disk_actions import read_table
from layerboot.errors import LayerbootError
from layerboot.tools.cli import main


def test_layouts_and_their_record() -> None:
    raid = data_layout("raid1", "/dev/vda", ["/dev/vdb"], 5)
    assert raid.members == ("/dev/vda5", "/dev/vdb1") and raid.device == MD_DEVICE
    assert len(raid.md_uuid) == 35 and raid.md_uuid.count(":") == 3
    assert data_layout("raid1", "/dev/vda", ["/dev/vdb"], 5, previous=raid) is raid        # its UUID is kept
    assert data_layout("raid1", "/dev/vda", ["/dev/vdc"], 5, previous=raid).md_uuid != raid.md_uuid
    lvm = data_layout("lvm", "/dev/nvme0n1", ["/dev/nvme1n1", "/dev/sdc"], 5)
    assert lvm.members == ("/dev/nvme0n1p5", "/dev/nvme1n1p1", "/dev/sdc1") and lvm.vg == "layerboot"
    assert lvm.device == "/dev/mapper/layerboot-data" and lvm.md_uuid == ""
    assert data_layout("lvm", "/dev/vda", [], 5).members == ("/dev/vda5",)           # one PV is fine
    assert data_layout("zfs-mirror", "/dev/vda", ["/dev/vdb"], 5).device == "layerboot/data"
    for kind in KINDS:
        area = data_layout(kind, "/dev/vda", [] if kind in ("plain", "lvm") else ["/dev/vdb"], 5)
        assert DataLayout.from_dict(json.loads(json.dumps(area.to_dict()))) == area

    layout = ab.Layout.new(64, raid)
    record = json.loads(layout.to_json())
    assert record["data"]["kind"] == "raid1" and record["data"]["md_uuid"] == raid.md_uuid
    assert ab.Layout.from_json(layout.to_json()) == layout
    plain = ab.Layout.new(64)
    assert "data" not in json.loads(plain.to_json())          # what older versions wrote, and still read
    assert ab.Layout.from_json(plain.to_json()).data == DataLayout()


@pytest.mark.parametrize("kind, disks, message", [
    ("plain", ["/dev/vdb"], "--data-disk needs a layout that spans disks"),
    ("raid1", [], "--data raid1 needs at least 1 --data-disk"),
    ("zfs-mirror", [], "--data zfs-mirror needs at least 1 --data-disk"),
    ("raid1", ["/dev/vda"], "not the install disk itself"),
    ("lvm", ["/dev/vdb", "/dev/vdb"], "each disk once"),
    ("raid5", ["/dev/vdb"], "choose one of plain, raid1, lvm, raid1-lvm, zfs-mirror"),
])
def test_bad_layouts_are_one_error(kind: str, disks: list[str], message: str) -> None:
    with pytest.raises(LayerbootError, match=message):
        data_layout(kind, "/dev/vda", disks, 5)


def test_action_lists_per_kind() -> None:
    def ids(kind: str, disks: list[str]) -> list[str]:
        return [a.id for a in plan_data(data_layout(kind, "/dev/vda", disks, 5), "u-u-i-d", 5)]
    assert ids("plain", []) == ["fmt-data"]
    assert ids("raid1", ["/dev/vdb"]) == ["data2-ptable", "data2-part", "md-data", "fmt-data", "data-release"]
    assert ids("lvm", ["/dev/vdb", "/dev/vdc"]) == ["data2-ptable", "data2-part", "data3-ptable", "data3-part",
                                                   "lvm-pv", "lvm-vg", "lvm-lv", "fmt-data", "data-release"]
    assert ids("raid1-lvm", ["/dev/vdb"]) == ["data2-ptable", "data2-part", "md-data", "lvm-pv", "lvm-vg", "lvm-lv",
                                             "fmt-data", "data-release"]
    assert ids("zfs-mirror", ["/dev/vdb"]) == ["data2-ptable", "data2-part", "zfs-pool", "zfs-data", "data-release"]
    raid1_lvm = plan_data(data_layout("raid1-lvm", "/dev/vda", ["/dev/vdb"], 5), "u", 5)
    assert raid1_lvm[3].devices == (MD_DEVICE,)                   # the volume group sits on the array
    assert zpool_create_argv("layerboot", ["/dev/vda5", "/dev/vdb1"], Path("/tmp/alt")) == [
        "create", "-o", "ashift=12", "-O", "compression=lz4", "-O", "atime=off", "-O", "xattr=sa",
        "-O", "acltype=posixacl", "-O", "mountpoint=none", "-O", "canmount=off", "-R", "/tmp/alt",
        "layerboot", "mirror", "/dev/vda5", "/dev/vdb1"]


@pytest.fixture
def node_store(profiles, make_layer, tmp_path: Path) -> Path:  # noqa: ANN001
    bootable_profile(profiles, make_layer, tmp_path)
    return profiles.paths.root


@pytest.mark.root
def test_install_plan_with_a_mirror_and_what_this_machine_refuses(node_store: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with loop_disk(tmp_path, name="a.img") as disk, loop_disk(tmp_path, 128, name="b.img") as second:
        store = ["--store", str(node_store)]
        assert main([*store, "install", "plan", "--disk", disk, "--profile", "node", "--slot-size", "64M",
                     "--data", "raid1", "--data-disk", second, "--json"]) == 0
        actions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [a["id"] for a in actions] == [
            "ptable", "part-bios", "part-esp", "part-slot-a", "part-slot-b", "part-data", "fmt-esp", "fmt-slot-a",
            "fmt-slot-b", "bootloader", "data2-ptable", "data2-part", "md-data", "fmt-data", "data-release",
            "write-slot", "activate"]
        by_id = {a["id"]: a for a in actions}
        assert by_id["md-data"]["members"] == [f"{disk}p5", f"{second}p1"]
        assert by_id["part-data"]["part_type"] == by_id["data2-part"]["part_type"] == \
            "A19D880F-05FC-4D3B-A006-743F0F84911E"                    # Linux RAID on both sides
        assert by_id["fmt-data"]["device"] == MD_DEVICE

        assert main([*store, "install", "plan", "--disk", disk, "--profile", "node", "--data", "plain",
                     "--data-disk", second]) == 1
        assert "--data-disk needs a layout that spans disks" in capsys.readouterr().err

        # this machine's kernel cannot build it: one line, before anything is written
        try:
            preflight("raid1")
            pytest.skip("this kernel has md: tests/test_site_qemu.py covers the build")
        except LayerbootError:
            pass
        assert main([*store, "install", "--disk", disk, "--profile", "node", "--slot-size", "64M",
                     "--data", "raid1", "--data-disk", second]) == 1
        err = capsys.readouterr().err
        assert "layerboot: error: this kernel has no software RAID (md)" in err, err
        assert read_table(disk) is None and read_table(second) is None       # both disks untouched
        assert main([*store, "install", "--disk", disk, "--profile", "node", "--data", "zfs-mirror",
                     "--data-disk", second]) == 1
        assert "ZFS is not available on this machine" in capsys.readouterr().err
