"""Streamed layers in QEMU (layerboot.fetch=stream): nbd + dm-verity + squashfs, fed by the stream daemon.

One boot through a byte-flipping proxy in front of the real layerbootd: the node boots having fetched a small
part of its layers; a byte flipped in a served block after boot reads as EIO (dm-verity), never as data;
layerbootd stopped while the node reads leaves the read waiting, and it completes when layerbootd is back.
Then the cache disk: a first boot keeps the blocks it read, a second boots from them with no server at all, and
a cached block that root on the node altered reads as EIO.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.build.qemu import NodeConfig, QemuNode
from layerboot.overlays.profile import Profiles
from layerboot.paths import Paths
from server_daemon import MAC, Daemon, free_port, write_config
from tamper_proxy import TamperProxy
from test_boot_qemu import CACHE, NODE_SERIAL, NODE_UUID, TRACEBACK, store_with_cached_key

pytestmark = [pytest.mark.qemu, pytest.mark.root]

CMDLINE = "console=ttyS0 quiet no_timer_check layerboot.emergency=poweroff layerboot.fetch=stream"
NODE_INIT = """#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
echo "ROOTFS-PASS base=$(cat /etc/base-file) l1=$(cat /etc/layer1) small=$(wc -c < /usr/share/stream/small)"
echo "NODE-STREAM $(cat /run/layerboot/stream.json)"
exec /bin/sh
"""
FAIL = (r"layerboot: FAILED", r"Kernel panic", r"Traceback", r"NODE: ")
MIB = 1 << 20
EIO = "sha256sum: can't read '/zz/{}.bin': Input/output error"


@pytest.fixture(scope="module")
def stream_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A busybox base with three 3 MiB random files (never read at boot), an overlay, kernel and initrd."""
    kernel = fetch_kernel()
    work = tmp_path_factory.mktemp("stream-store")
    paths = Paths(work / "store")
    store = store_with_cached_key(paths)
    tree = build_busybox_tree(work / "base", init_script=NODE_INIT)
    (tree / "etc/base-file").write_text("b\n")
    (tree / "usr/share/stream").mkdir(parents=True)
    (tree / "usr/share/stream/small").write_bytes(os.urandom(5000))
    big = {}
    (tree / "zz").mkdir()
    for name in ("x.bin", "y.bin", "z.bin"):
        big[name] = os.urandom(3 * MIB)                       # random: squashfs keeps it uncompressed
        (tree / "zz" / name).write_bytes(big[name])
    base = store.import_tree(tree, kind="base", all_root=True).digest
    (work / "one/etc").mkdir(parents=True)
    (work / "one/etc/layer1").write_text("1\n")
    layer1 = store.import_tree(work / "one", kind="overlay", base=base, all_root=True).digest
    initrd = build_initrd(kernel, paths.public_key, work / "initrd.img", cache=CACHE / "initrd")
    profiles = Profiles(store)
    profiles.create("node", base, cmdline=CMDLINE,
                    kernel=store.import_boot_file(kernel.image, kind="kernel").digest,
                    initrd=store.import_boot_file(initrd.path, kind="initrd").digest)
    profiles.add("node", layer1)
    image = store.path(base).read_bytes()
    # where 1 MiB into each big file sits in the base layer (the node reads through the same offsets)
    offsets = {name: image.index(data[MIB:MIB + 256]) for name, data in big.items()}
    return {"paths": paths, "kernel": kernel, "initrd": initrd.path, "base": base, "layer1": layer1,
            "tree": store.get(base).verity.tree,
            "size": len(image), "offsets": offsets, "work": work,
            "sums": {name: hashlib.sha256(data).hexdigest() for name, data in big.items()}}


@pytest.fixture(scope="module")
def server(stream_store: dict) -> Iterator[Daemon]:
    paths: Paths = stream_store["paths"]
    config = write_config(stream_store["work"] / "layerboot.toml", paths)
    daemon = Daemon(paths, config, stream_store["work"] / "layerbootd.log")
    daemon.registry().register(MAC, "node", replace=True, asset_key=f"{NODE_UUID}:{NODE_SERIAL}")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def boot(stream_store: dict, log: Path, port: int, token: str, extra: str = "",
         disks: tuple[Path, ...] = ()) -> QemuNode:
    append = (f"{CMDLINE} layerboot.server=http://10.0.2.2:{port} layerboot.node={MAC} layerboot.profile=node "
              f"layerboot.token={token} {extra}")
    return QemuNode(NodeConfig(kernel=stream_store["kernel"].image, initrd=stream_store["initrd"], append=append,
                               mac=MAC, uuid=NODE_UUID, serial=NODE_SERIAL, disks=list(disks)), log)


def run(node: QemuNode, command: str, tag: str, timeout: float = 120) -> str:
    """Run a shell command on the node's console; returns what it printed after ``tag``."""
    start = len(node.lines)
    node.send(f"{command}; echo {tag}-END\n")
    line = node.wait_for(rf"^{tag} ", timeout=timeout, start=start, fail=(r"Kernel panic",))
    return line.text.split(" ", 1)[1]


def check(node: QemuNode, path: str, tag: str, timeout: float = 120) -> str:
    """sha256 of a file on the node, or the error reading it gave."""
    text = run(node, f'echo "{tag} $(sha256sum {path} 2>&1)"', tag, timeout)
    return text.split()[0] if re.match(r"[0-9a-f]{64} ", text) else text


def test_stream_boot_tamper_is_eio_and_a_server_restart_is_waited_out(stream_store: dict, server: Daemon,
                                                                      tmp_path: Path) -> None:
    sums, base = stream_store["sums"], stream_store["base"]
    with TamperProxy(server.port) as proxy, \
            boot(stream_store, tmp_path / "serial.log", proxy.port, server.boot_token()) as node:
        passed = node.wait_for(r"ROOTFS-PASS", timeout=240, fail=FAIL)
        assert passed.text == "ROOTFS-PASS base=b l1=1 small=5000"
        node.wait_for(r"layerboot: streaming 2 layers$")
        listed = json.loads(node.wait_for(r"^NODE-STREAM ").text.split(" ", 1)[1])
        devices = listed["devices"]
        # the daemon stage1 forked carries the name systemd's shutdown spares (argv[0] starting with '@')
        name = run(node, f"echo NAME $(tr '\\0' ' ' < /proc/{listed['daemon_pid']}/cmdline)", "NAME")
        assert name.strip() == "@layerboot-stream", name
        assert [d["digest"] for d in devices] == [base, stream_store["layer1"]]
        assert all(re.fullmatch(r"/dev/nbd\d+", d["nbd"]) and re.fullmatch(r"/dev/dm-\d+", d["verity"])
                   for d in devices)
        # nbd was loaded with the layer stack in one modprobe, its options from the initramfs's modprobe.d: no
        # spare nbd devices, and no loop devices either (nothing was fetched whole, so loop was never loaded)
        blocks = run(node, "echo BLOCKS $(ls /sys/block)", "BLOCKS").split()
        assert sorted(b for b in blocks if b.startswith(("nbd", "loop"))) == \
            sorted(d["nbd"].removeprefix("/dev/") for d in devices), blocks
        # the node booted without downloading its layers: a fraction of the base crossed the network
        at_boot = proxy.bytes_for(base)
        assert 0 < at_boot < stream_store["size"] / 4, (at_boot, stream_store["size"])
        assert "node secret: claimed" in node.text()         # the daemon reads with it (it does not expire)
        # a block never read so far, altered on its way to the node: the read fails with EIO, never returns data
        proxy.arm(base, stream_store["offsets"]["x.bin"] + 100)
        assert check(node, "/zz/x.bin", "X") == EIO.format("x")
        assert proxy.flipped >= 1
        assert re.search(r"verity: .*data block \d+ is corrupted", run(node, "echo DM $(dmesg | grep verity)", "DM"))
        assert check(node, "/zz/z.bin", "Z") == sums["z.bin"]              # other blocks still read fine
        # layerbootd stops while the node reads something new: the read waits, then completes once it is back
        server.stop()
        start = len(node.lines)
        node.send('echo "Y $(sha256sum /zz/y.bin | cut -d" " -f1)"\n')
        time.sleep(8)
        assert not any(line.text.startswith("Y ") for line in node.lines[start:]), "read did not wait"
        server.start()
        assert node.wait_for(r"^Y ", timeout=120, start=start).text == f"Y {sums['y.bin']}"
        kernel_log = run(node, "echo LOG $(dmesg | grep layerboot-stream | tr '\\n' '|')", "LOG")
        assert "server unreachable" in kernel_log and "server back after" in kernel_log
        stats = json.loads(run(node, "sleep 2.5; echo STATS $(cat /run/layerboot/stream-stats.json)", "STATS"))
        assert stats["server_down_since"] is None and stats["devices"][0]["errors"] == 0   # none failed for good
        # the daemon's own count (layer + tree, /run/layerboot/stream-stats.json) is what crossed the network
        assert stats["devices"][0]["fetched_bytes"] == proxy.bytes_for(base) + proxy.bytes_for(stream_store["tree"])
        node.send("poweroff -f\n")
        node.wait_exit(60)
    assert not TRACEBACK.search(node.text())
    print(f"stream: {at_boot / 1e6:.2f} MB of the {stream_store['size'] / 1e6:.1f} MB base fetched to boot; "
          f"rootfs at {passed.seconds:.1f} s")


def test_stream_cache_boots_offline_and_altered_cached_blocks_are_eio(stream_store: dict, server: Daemon,
                                                                      tmp_path: Path) -> None:
    from layerboot.run import run as host_run

    disk = tmp_path / "cache.img"
    with open(disk, "wb") as f:
        f.truncate(128 * MIB)
    host_run(["mkfs.ext4", "-q", "-L", "layerboot-cache", disk])
    base, sums = stream_store["base"], stream_store["sums"]
    cache = "layerboot.cache=LABEL=layerboot-cache"
    with boot(stream_store, tmp_path / "fill.log", server.port, server.boot_token(), cache, (disk,)) as node:
        node.wait_for(r"ROOTFS-PASS", timeout=240, fail=FAIL)
        assert check(node, "/zz/z.bin", "Z") == sums["z.bin"]
        assert check(node, "/zz/y.bin", "Y") == sums["y.bin"]
        held = run(node, f"echo HELD $(du -k /run/layerboot/cache/stream/{base} | cut -f1)", "HELD")
        # root on the node alters one cached block of z.bin (its file stays the same size)
        offset = stream_store["offsets"]["z.bin"] + 100
        run(node, f"printf Q | dd of=/run/layerboot/cache/stream/{base} bs=1 seek={offset} conv=notrunc "
                  "2>/dev/null; sync; echo DONE x", "DONE")
        node.send("poweroff -f\n")
        node.wait_exit(60)
    assert not TRACEBACK.search(node.text())
    # sparse: what was read (y.bin, z.bin, the boot), not the 3 MiB of x.bin
    assert 6 * MIB < int(held) * 1024 < stream_store["size"] - 2.5 * MIB
    # no server at all: the cached manifest, and the blocks the first boot read, boot the node
    with boot(stream_store, tmp_path / "offline.log", free_port(), server.boot_token(),
              f"{cache} layerboot.stream_giveup=3", (disk,)) as node:
        node.wait_for(r"booting the cached manifest", timeout=240, fail=FAIL)
        node.wait_for(r"ROOTFS-PASS", timeout=120, fail=FAIL)
        assert check(node, "/zz/y.bin", "Y") == sums["y.bin"]              # read in the first boot: cached
        assert check(node, "/zz/z.bin", "Z") == EIO.format("z")   # altered in the cache
        assert check(node, "/zz/x.bin", "X") == EIO.format("x")   # never read, no server
        node.send("poweroff -f\n")
        node.wait_exit(60)
    assert not TRACEBACK.search(node.text())
    print(f"stream cache: {int(held) / 1024:.1f} MiB of blocks kept by the first boot; the offline boot read them, "
          "and an altered one and a never-read one gave EIO")
