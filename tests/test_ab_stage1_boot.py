"""An A/B disk installed by ``layerboot install`` boots through layerboot's own stage1, with no network: SeaBIOS
-> our GRUB -> the slot's kernel and initrd -> stage1 mounts the slot read-only (``layerboot.slot=UUID=...``),
verifies its signed manifest, attaches each layer through dm-verity over the slot's layer and tree files (nothing
hashed whole) and stacks the chain -> the rootfs init proves every layer and a whiteout, and runs
tests/data/localverity_check.py (stage1's localverity against the node's real loop and dm-verity: a flipped
byte is EIO on read, a wrong root hash is refused). A slot B whose layer had a byte flipped on the disk under
the filesystem is refused by stage1, the node reboots (``layerboot.emergency=reboot``), GRUB uses up B's try and
falls back to slot A by itself.

The initrd is the one tests/test_boot_qemu.py builds (same key, same inputs: cached under /var/cache/layerboot).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from abdisk import loop_disk
from layerboot.build import ab
from layerboot.build.ab import PART_B
from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.build.client_layer import _libraries, _put, client_layer_image
from layerboot.build.disk_actions import partition_path
from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.build.qemu import NodeConfig, QemuNode
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.run import run
from layerboot.tools.cli import main as cli
from server_daemon import MAC, Daemon, write_config
from test_boot_qemu import CACHE, WHITEOUT, cached_signing_key

pytestmark = [pytest.mark.qemu, pytest.mark.root]

# Tries use up on a stage1 failure only if the node reboots: emergency=reboot, as an unattended A/B node wants.
CMDLINE = "console=ttyS0 quiet no_timer_check panic=-1 layerboot.emergency=reboot"
SLOT_INIT = r"""#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
ok=yes
for f in /etc/base-file /etc/layer1 /etc/layer2; do
  [ -e "$f" ] || { echo "NODE: missing $f"; ok=no; }
done
[ -e /etc/doomed ] && { echo "NODE: /etc/doomed survived its whiteout"; ok=no; }
grep -q " /run/layerboot/slot ext4 ro," /proc/mounts || { echo "NODE: the slot is not mounted read-only"; ok=no; }
echo "DM-LOWERS: $(grep -c '^/dev/dm-[0-9]* /run/layerboot/lower/' /proc/mounts)"
mkdir -p /tmp/lv && mount -t tmpfs -o size=160m tmpfs /tmp/lv && python3 /localverity-check.py /run/layerboot/slot /tmp/lv
umount /tmp/lv
[ "$ok" = yes ] && echo "SLOT-ROOTFS-PASS base=$(cat /etc/base-file) l1=$(cat /etc/layer1) l2=$(cat /etc/layer2)" \
  "l3=$(cat /etc/layer3 2>/dev/null || echo none) whiteout=ok $(grep -o 'layerboot.slot=[^ ]*' /proc/cmdline)"
# The client layer (python3 + layerboot) and mtools are in the chain: confirm the slot from the node itself.
[ "$ok" = yes ] && echo "MARK-GOOD: $(layerboot mark-good --disk /dev/vda 2>&1)"
poweroff -f
"""
SLOT_SIZE = "96M"   # the chain with the client layer, kernel and initrd is ~45 MB
FAILURES = (r"Kernel panic", r"Traceback", r"NODE: ")


@pytest.fixture(scope="session")
def slot_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store whose profile 'disk' boots layerboot's initrd: busybox base, two overlays (one whiteout)."""
    kernel = fetch_kernel()
    work = tmp_path_factory.mktemp("ab-stage1")
    paths = Paths(work / "store")
    store = Store(paths)
    store.init()
    for cached, target in zip(cached_signing_key(), (paths.signing_key, paths.public_key)):
        shutil.copyfile(cached, target)   # the shared test key: the cached initrd embeds its public half
    paths.signing_key.chmod(0o600)
    base_tree = build_busybox_tree(work / "base", init_script=SLOT_INIT)
    shutil.copyfile(Path(__file__).parent / "data" / "localverity_check.py", base_tree / "localverity-check.py")
    (base_tree / "etc/base-file").write_text("b\n")
    (base_tree / "etc/doomed").write_text("deleted by layer 2\n")
    base = store.import_tree(base_tree, kind="base", all_root=True).digest
    layers = [base]
    for name, files in (("one", {"etc/layer1": "1\n"}), ("two", {"etc/layer2": "2\n"}),
                        ("three", {"etc/layer3": "3\n"})):
        tree = work / name
        (tree / "etc").mkdir(parents=True)
        for rel, text in files.items():
            (tree / rel).write_text(text)
        if name == "two":
            os.mknod(tree / "etc/doomed", WHITEOUT, os.makedev(0, 0))
        layers.append(store.import_tree(tree, kind="overlay", base=base, all_root=True).digest)
    client_image = client_layer_image(work / "client.squashfs", cache=CACHE)
    layers.append(store.import_squashfs(client_image, kind="overlay", base=base, description="client").digest)
    layers.append(store.import_tree(_mtools_tree(work / "mtools"), kind="overlay", base=base, all_root=True,
                                    description="mtools for mark-good").digest)
    initrd = build_initrd(kernel, paths.public_key, work / "initrd.img", cache=CACHE / "initrd")
    profiles = Profiles(store)
    profiles.create("disk", base, cmdline=CMDLINE, kernel=store.import_boot_file(kernel.image, kind="kernel").digest,
                    initrd=store.import_boot_file(initrd.path, kind="initrd").digest)
    for layer in (layers[1], layers[2], layers[4], layers[5]):
        profiles.add("disk", layer)
    good = profiles.current("disk").number               # base, 1, 2 (whiteout), client, mtools
    profiles.add("disk", layers[3])                      # the update adds layer 3
    return {"paths": paths, "profiles": profiles, "layers": layers, "initrd": initrd, "good": good,
            "update": good + 1}


def _mtools_tree(tree: Path) -> Path:
    """mtools and the libraries it links (mark-good edits the ESP with it; the ESP is never mounted).

    mtools converts FAT names through iconv's code page 850: without glibc's gconv module for it, every mtools
    command fails with "Error setting code page" (a busybox-only node image lacks it; Debian's libc6 has it).
    """
    mtools = Path("/usr/bin/mtools")
    gconv = Path("/usr/lib/x86_64-linux-gnu/gconv")
    for path in (mtools, *_libraries([mtools]), gconv / "IBM850.so", gconv / "gconv-modules",
                 *sorted((gconv / "gconv-modules.d").glob("*.conf"))):
        _put(tree, path)
    for name in ("mcopy", "mdel", "mren", "mmd", "mdir"):
        (tree / "usr/bin" / name).symlink_to("mtools")
    return tree


def _flip_on_disk(part: str, path: str, offset: int) -> None:
    """Flip one byte of ``path`` on the ext4 ``part`` by writing the partition itself, under the filesystem (a bad
    disk, or an attacker with the disk in hand): the file's size, mtime and metadata stay as they were."""
    block_size = int(re.search(r"^Block size:\s+(\d+)", run(["dumpe2fs", "-h", part]).text, re.M).group(1))
    physical = int(run(["debugfs", "-R", f"bmap {path} {offset // block_size}", part]).text.split()[-1])
    assert physical > 0
    fd = os.open(part, os.O_RDWR)
    try:
        at = physical * block_size + offset % block_size
        os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0x40]), at)
        os.fsync(fd)
    finally:
        os.close(fd)
    run(["blockdev", "--flushbufs", part])


def _layerboot(paths: Paths, *args: str) -> None:
    assert cli(["--store", str(paths.root), *args]) == 0


def _boot(device: str, log: Path) -> QemuNode:
    """Boot the disk (its backing file) through SeaBIOS; the host lets go of the partitions first."""
    run(["partx", "-d", device], check=False)
    image = Path(run(["losetup", "--noheadings", "-O", "BACK-FILE", device]).text.strip())
    # NodeConfig without a kernel asks for '-boot n'; the later '-boot c' wins: SeaBIOS boots the disk.
    return QemuNode(NodeConfig(disks=[image], no_reboot=False, memory_mb=512, extra=["-boot", "c"]), log)


def test_an_installed_disk_boots_its_chain_through_stage1(slot_store: dict, tmp_path: Path) -> None:
    paths: Paths = slot_store["paths"]
    with loop_disk(tmp_path) as device:
        _layerboot(paths, "install", "--disk", device, "--profile", "disk", "-g", str(slot_store["good"]),
                   "--tries", "2", "--slot-size", SLOT_SIZE)
        disk = ab.AbDisk(device, workdir=tmp_path)
        uuid_a = disk.layout().slot_uuids["A"]
        with _boot(device, tmp_path / "serial.log") as node:
            passed = node.wait_for(r"SLOT-ROOTFS-PASS", timeout=150, fail=(r"layerboot: FAILED", *FAILURES))
            assert node.wait_exit(60) == 0
        text = node.text()
        assert passed.text == f"SLOT-ROOTFS-PASS base=b l1=1 l2=2 l3=none whiteout=ok layerboot.slot=UUID={uuid_a}"
        assert re.findall(r"Booting `layerboot slot (\w)'", text) == ["A"]
        assert "network: not used" in text and f"manifest: profile disk generation {slot_store['good']} " in text
        # every layer through dm-verity, none hashed whole, and the squashfs lowers are the dm devices
        attached = re.search(r"layerboot: 5 layers attached through dm-verity in ([\d.]+) s \(signed root "
                             r"hashes, every block checked as it is read\), 0 checked whole", text)
        assert attached and "checked whole (fs-verity" not in text and "DM-LOWERS: 5" in text, text[-3000:]
        check = node.wait_for(r"^LOCALVERITY-CHECK-", timeout=1).text
        assert check.startswith("LOCALVERITY-CHECK-PASS "), check
        assert re.search(r"^LOCALVERITY-WRONG-ROOT: dm-verity refuses its first block \(Input/output error\)", text,
                         re.M)
        assert re.search(r"^LOCALVERITY-SHORT-TREE: the hash tree short.verity has \d+ bytes, the signed manifest",
                         text, re.M)
        assert node.wait_for(r"^MARK-GOOD: ", timeout=1).text == "MARK-GOOD: slot A is good"
        run(["partx", "-u", device])
        state = disk.state()     # GRUB counted the boot (2 -> 1 tries), then the node confirmed its slot
        assert state.slots == {"A": ab.SlotState("good"), "B": ab.SlotState("empty")} and state.booted == "A"
        print(f"A/B disk -> GRUB -> stage1 -> rootfs marker: {passed.seconds:.1f}s after QEMU start; 5 layers "
              f"attached through dm-verity in {attached.group(1)} s; in the node: {check}")


def test_a_tampered_update_is_refused_by_stage1_and_grub_falls_back(slot_store: dict, tmp_path: Path) -> None:
    paths: Paths = slot_store["paths"]
    with loop_disk(tmp_path) as device:
        _layerboot(paths, "install", "--disk", device, "--profile", "disk", "-g", str(slot_store["good"]),
                   "--slot-size", SLOT_SIZE)
        _layerboot(paths, "mark-good", "--disk", device, "--slot", "A")
        _layerboot(paths, "ab", "update", "--disk", device, "--profile", "disk", "-g", str(slot_store["update"]),
                   "--tries", "1")
        top = slot_store["layers"][3]
        _flip_on_disk(partition_path(device, PART_B), f"/layers/{top}", 1000)   # the attacker / the bad disk
        disk = ab.AbDisk(device, workdir=tmp_path)
        with _boot(device, tmp_path / "serial.log") as node:
            refused = node.wait_for(r"layerboot: FAILED: ", timeout=150, fail=FAILURES)
            passed = node.wait_for(r"SLOT-ROOTFS-PASS", timeout=150, fail=(r"^layerboot: FAILED", *FAILURES),
                                   start=node.lines.index(refused) + 1)
            assert node.wait_exit(60) == 0
        text = node.text()
        assert re.match(rf"layerboot: FAILED: layers: layer {top[:12]} in the slot: dm-verity refuses its first block "
                        r"\(Input/output error\): the signed root hash does not match the layer and its tree; the "
                        r"slot was altered or damaged", refused.text), refused.text
        assert re.findall(r"Booting `layerboot slot (\w)'", text) == ["B", "A"], text[-3000:]
        assert passed.text.startswith("SLOT-ROOTFS-PASS base=b l1=1 l2=2 l3=none whiteout=ok")
        assert "MARK-GOOD: slot A is good (it already was)" in text
        run(["partx", "-u", device])
        state = disk.state()
        assert state.slots == {"A": ab.SlotState("good"), "B": ab.SlotState("bad")} and state.booted == "A"
        print(f"tampered slot B refused at {refused.seconds:.1f}s, fallback to A: rootfs at {passed.seconds:.1f}s")


def test_a_slot_boot_reports_to_the_server_when_one_is_given(slot_store: dict, tmp_path: Path) -> None:
    """The disk boots by itself; layerboot.server= in the profile's command line only adds the boot event."""
    paths: Paths = slot_store["paths"]
    profiles: Profiles = slot_store["profiles"]
    daemon = Daemon(paths, write_config(tmp_path / "layerboot.toml", paths), tmp_path / "layerbootd.log")
    _, secret = daemon.registry().register(MAC, "disk", replace=True)
    daemon.start()
    try:
        # a read-only boot token on the command line (never the node secret): enough to post boot events
        token = daemon.boot_token()
        server = f"layerboot.server=http://10.0.2.2:{daemon.port} layerboot.node={MAC} layerboot.token={token}"
        generation = profiles.set_boot("disk", cmdline=f"{CMDLINE} {server}").number
        with loop_disk(tmp_path) as device:
            _layerboot(paths, "install", "--disk", device, "--profile", "disk", "-g", str(generation),
                       "--slot-size", SLOT_SIZE)
            with _boot(device, tmp_path / "serial.log") as node:
                passed = node.wait_for(r"SLOT-ROOTFS-PASS", timeout=150, fail=(r"layerboot: FAILED", *FAILURES))
                assert node.wait_exit(60) == 0
        assert passed.text.startswith("SLOT-ROOTFS-PASS base=b l1=1 l2=2 l3=3 whiteout=ok")
        assert "network: " not in node.text()          # it came up (QEMU's DHCP) and nothing was said
        events = daemon.get(f"/nodes/{MAC}", token=secret, headers={"Accept": "application/json"}).json()["events"]
        assert [e for e in events if e["ok"] and e["generation"] == generation and e["stage"] == "switch_root"]
        print(f"slot boot with a boot event: rootfs marker {passed.seconds:.1f}s after QEMU start")
    finally:
        daemon.stop()
