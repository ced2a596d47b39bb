"""stage1's side of the A/B contract (``layerboot.slot=``) on a slot written by the real installer on a loop
disk: found by UUID, PARTLABEL or path without udev, mounted read-only, manifest verified with the trusted key,
every layer checked before it is handed out (through dm-verity over the slot's tree file where the kernel has it,
else hashed whole); a tampered layer, a foreign key, a missing manifest and a replayed serial each end in one clear
line. This host's kernel has no dm-verity: the dm-verity path itself runs in tests/test_ab_stage1_boot.py (QEMU)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from abdisk import bootable_profile, loop_disk
from layerboot.build import ab
from layerboot.build.ab import PART_A
from layerboot.build.disk_actions import DiskContext, execute, partition_path
from layerboot.initrd.stage1 import slot as slotmod
from layerboot.initrd.stage1.slot import SlotError, open_slot
from layerboot.overlays.keys import generate_key, load_public_key
from layerboot.run import run

pytestmark = pytest.mark.root


@pytest.fixture
def installed(profiles, make_layer, tmp_path: Path) -> Iterator[tuple[str, str, bytes, list[str]]]:  # noqa: ANN001
    """(disk, slot A partition, trusted key, chain digests base first) after 'layerboot install'."""
    base = bootable_profile(profiles, make_layer, tmp_path)
    top = make_layer({"etc/top": "top\n"}, base=base)
    profiles.add("node", top)
    public = load_public_key(profiles.paths.public_key)
    with loop_disk(tmp_path) as device:
        source = ab.source_from_store(profiles, "node", None, public)
        execute(ab.plan_install(device, source, public, slot_mib=64, tries=3),
                DiskContext(device, workdir=tmp_path), report=lambda line: None)
        yield device, partition_path(device, PART_A), public, [base, top]


def _mounted(path: Path) -> bool:
    return f" {path} " in Path("/proc/mounts").read_text()


def _edit_slot(part: str, tmp_path: Path, change) -> None:  # noqa: ANN001 - change(Path) -> None
    """Change the slot's files the way an attacker or a bad disk would (outside layerboot)."""
    rw = tmp_path / "rw"
    rw.mkdir(exist_ok=True)
    run(["mount", "-t", "ext4", part, rw])
    try:
        change(rw)
    finally:
        run(["umount", rw])


def test_a_good_slot_is_found_mounted_read_only_and_yields_verified_layers(installed, tmp_path: Path) -> None:
    device, part, public, chain = installed
    uuid = run(["blkid", "-p", "-s", "UUID", "-o", "value", part]).text.strip()
    sys_block = tmp_path / "sys-block"      # only this disk: other tests' loop disks carry the same names
    sys_block.mkdir()
    for name in (os.path.basename(device), os.path.basename(part)):
        (sys_block / name).symlink_to(f"/sys/class/block/{name}")
    assert slotmod.gpt_partition_name(device, PART_A) == "layerboot-a"
    assert slotmod.resolve_partlabel("layerboot-a", dev="/nonexistent-udev", sys_block=str(sys_block)) is None
    assert slotmod.resolve_slot("PARTLABEL=layerboot-a", dev="/dev", sys_block=str(sys_block)) == part
    assert slotmod.resolve_slot(f"UUID={uuid}") == part
    with pytest.raises(SlotError, match="use a device path, LABEL=, UUID= or PARTLABEL="):
        slotmod.resolve_slot("SERIAL=xyz")

    for spec in (f"UUID={uuid}", part):
        mnt = tmp_path / "slot"
        lines: list[str] = []
        slot = open_slot(spec, public, str(mnt), say=lines.append)
        assert _mounted(mnt) and lines == [f"{part} mounted read-only at {mnt}"]
        assert " ro," in next(l for l in Path("/proc/mounts").read_text().splitlines() if f" {mnt} " in l)
        assert slot.manifest.profile == "node" and slot.manifest.generation == 2
        paths = list(slot.layer_paths(dm_verity=False))
        assert [os.path.basename(p) for p in paths] == chain
        assert all(hashlib.sha256(Path(p).read_bytes()).hexdigest() == d for p, d in zip(paths, chain))
        slot.close()
        slot.close()
        assert not _mounted(mnt)


def test_a_tampered_layer_is_refused_before_use(installed, tmp_path: Path) -> None:
    _, part, public, chain = installed

    def flip(root: Path) -> None:
        layer = root / "layers" / chain[1]
        data = bytearray(layer.read_bytes())
        data[-1] ^= 1
        layer.chmod(0o644)
        layer.write_bytes(bytes(data))
    _edit_slot(part, tmp_path, flip)
    slot = open_slot(part, public, str(tmp_path / "slot"), say=lambda line: None)
    try:
        layers = slot.layer_paths(dm_verity=False)
        assert os.path.basename(next(layers)) == chain[0]      # the base is fine and comes first
        with pytest.raises(SlotError, match=rf"^layer {chain[1][:12]} in the slot failed verification: sha256 "):
            next(layers)
    finally:
        slot.close()

    _edit_slot(part, tmp_path, lambda root: (root / "layers" / chain[0]).unlink())
    slot = open_slot(part, public, str(tmp_path / "slot"), say=lambda line: None)
    try:
        with pytest.raises(SlotError, match=rf"^layer {chain[0][:12]} named by the signed manifest is missing"):
            list(slot.layer_paths(dm_verity=False))
    finally:
        slot.close()


def _dm_verity_here() -> bool:
    from layerboot.initrd.stage1.localverity import VerityUnavailable, load_modules

    try:
        load_modules()
    except VerityUnavailable:
        return False
    return True


def test_the_slot_holds_each_layers_signed_tree_and_boot_uses_it_or_says_why_not(installed, tmp_path: Path) -> None:
    """``layerboot install`` writes ``layers/<digest>.verity`` (checked against the signed tree digest); stage1
    attaches the layers through dm-verity, or says once why not and checks them whole; a slot written before
    trees were (none there) says so once and still boots verified."""
    from layerboot.overlays.manifest import verify_manifest

    _, part, public, chain = installed
    lines: list[str] = []
    slot = open_slot(part, public, str(tmp_path / "slot"), say=lines.append)
    try:
        manifest = verify_manifest(slot.envelope, public)
        for layer in manifest.layers:
            tree = Path(slot.root, "layers", layer.digest + ".verity")
            assert layer.verity is not None and tree.stat().st_size == layer.verity.tree_size
            assert hashlib.sha256(tree.read_bytes()).hexdigest() == layer.verity.tree
        paths = list(slot.layer_paths())
        if _dm_verity_here():      # a host with dm-verity: block devices, nothing hashed
            assert all(p.startswith("/dev/dm-") for p in paths) and len(paths) == len(chain)
            assert lines[-1].startswith(f"{len(chain)} layers attached through dm-verity in ")
        else:                      # this host: one line, then every layer checked whole
            assert [os.path.basename(p) for p in paths] == chain
            assert lines[1:] == [lines[1]] and lines[1].startswith("no dm-verity in this kernel (")
            assert lines[1].endswith("): layers are checked whole (fs-verity, else sha256)")
    finally:
        slot.close()

    def old(root: Path) -> None:              # as 'layerboot ab' wrote slots before this change
        for digest in chain:
            (root / "layers" / f"{digest}.verity").unlink()
        (root / "layers" / chain[1]).chmod(0o644)
        with open(root / "layers" / chain[1], "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))
    _edit_slot(part, tmp_path, old)
    lines.clear()
    slot = open_slot(part, public, str(tmp_path / "slot"), say=lines.append)
    try:
        layers = slot.layer_paths()
        assert os.path.basename(next(layers)) == chain[0]
        assert lines[1:] == ["this slot holds no dm-verity trees (written before 'layerboot ab' put them there): its "
                             "layers are checked whole (fs-verity, else sha256) on every boot; 'layerboot ab update' "
                             "writes them"]
        with pytest.raises(SlotError, match=rf"^layer {chain[1][:12]} in the slot failed verification: sha256 "):
            next(layers)
        assert len(lines) == 2
    finally:
        slot.close()


def test_a_manifest_signed_by_another_key_or_replayed_is_refused_and_the_slot_unmounted(installed,
                                                                                    tmp_path: Path) -> None:
    _, part, public, _ = installed
    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    other = load_public_key(tmp_path / "other.pub")
    mnt = tmp_path / "slot"
    with pytest.raises(SlotError, match=r"^manifest.json in the slot: manifest was signed by key '[0-9a-f]{16}', "
                                        r"not the trusted key"):
        open_slot(part, other, str(mnt))
    assert not _mounted(mnt)
    with pytest.raises(SlotError, match=r"serial 2 is lower than the last accepted 3 \(replay"):
        open_slot(part, public, str(mnt), min_serial=3)
    assert not _mounted(mnt)

    def alter(root: Path) -> None:          # same key id, payload changed: the signature no longer matches
        manifest = root / "manifest.json"
        manifest.write_bytes(manifest.read_bytes().replace(b'\\"generation\\": 2', b'\\"generation\\": 9'))
    _edit_slot(part, tmp_path, alter)
    with pytest.raises(SlotError, match="signature does not verify"):
        open_slot(part, public, str(mnt))


def test_a_slot_without_manifest_or_filesystem_is_one_clear_error(installed, tmp_path: Path) -> None:
    device, part, public, _ = installed
    _edit_slot(part, tmp_path, lambda root: (root / "manifest.json").unlink())
    mnt = tmp_path / "slot"
    with pytest.raises(SlotError, match=r"^the slot has no manifest.json \(not an installed slot"):
        open_slot(part, public, str(mnt))
    assert not _mounted(mnt)
    esp = partition_path(device, ab.PART_ESP)
    with pytest.raises(SlotError, match=rf"^{esp} \(layerboot.slot={esp}\) holds no ext4 filesystem"):
        open_slot(esp, public, str(mnt))
    with pytest.raises(SlotError, match=r"^no device matches layerboot.slot=UUID=00000000-0000-0000-0000-"
                                        r"000000000000 after 0 s"):
        open_slot("UUID=00000000-0000-0000-0000-000000000000", public, str(mnt), wait=0.2)


def test_importing_the_slot_module_loads_nothing_heavy() -> None:
    from layerboot.build.initrd import PYTHON

    src = Path(__file__).resolve().parent.parent / "initrd"
    code = ("import os, sys, __future__; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); import stage1.slot; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('stage1')))")
    assert run([PYTHON if os.path.exists(PYTHON) else "python3", "-S", "-I", "-B", "-c", code, src]).text.strip() \
        == "[]"


def test_the_slot_option_is_parsed_and_makes_the_server_optional() -> None:
    from layerboot.initrd.stage1.cmdline import parse_cmdline

    options = parse_cmdline("BOOT_IMAGE=/boot/vmlinuz layerboot.slot=UUID=0f1e console=ttyS0")
    assert options.slot == "UUID=0f1e" and options.server == ""
    assert parse_cmdline("layerboot.slot=PARTLABEL=layerboot-b").slot == "PARTLABEL=layerboot-b"


def test_with_a_cache_the_slot_serial_is_checked_but_never_recorded(installed, profiles, tmp_path: Path) -> None:
    """A cache's serial floor applies to the slot; the slot's own serial is not written (GRUB's fallback to the
    older slot must still boot)."""
    from layerboot.initrd.stage1.cache import LayerCache
    from layerboot.initrd.stage1.slot import open_boot_slot

    _, part, _, _ = installed
    key = str(profiles.paths.public_key)
    cache = LayerCache(str(tmp_path / "cache"))
    (tmp_path / "cache" / "last-serial").write_text("9\n")
    with pytest.raises(SlotError, match=r"serial 2 is lower than the last accepted 9"):
        open_boot_slot(part, key, cache, say=lambda line: None)
    (tmp_path / "cache" / "last-serial").write_text("1\n")
    slot = open_boot_slot(part, key, cache, say=lambda line: None)
    slot.close()
    assert slot.manifest.serial == 2 and cache.last_serial() == 1 and cache.last_manifest() is None
    with pytest.raises(SlotError, match=r"cannot read the trusted public key /nonexistent.pub"):
        open_boot_slot(part, "/nonexistent.pub", None)
