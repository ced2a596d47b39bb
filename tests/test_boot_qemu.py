"""End to end: a QEMU node netboots through iPXE from the real layerbootd, stage1 stacks the signed layers,
the node captures a change and uploads it, the server bakes it, the node reboots and sees it. Plus the
failure cases a user will meet: a tampered layer, a manifest with a wrong signature, the server gone.

Kernel (Debian's cloud kernel), initrd and the client layer are built once per session and cached by their
inputs under /var/cache/layerboot, so a warm run spends its time booting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.build.client_layer import client_layer_image
from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.build.qemu import NodeConfig, QemuNode
from layerboot.overlays.keys import generate_key
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from server_daemon import MAC, Daemon, write_config

pytestmark = [pytest.mark.qemu, pytest.mark.root]

CACHE = Path(os.environ.get("LAYERBOOT_TEST_CACHE", "/var/cache/layerboot/test"))
# no_timer_check: under a loaded host, TCG can fail the kernel's IO-APIC timer check and panic at boot.
CMDLINE = "console=ttyS0 quiet no_timer_check layerboot.emergency=poweroff layerboot.debug"
# Later options win: tests append their own layerboot.emergency= etc.
# In the profile's command line only (so it goes through iPXE): words that look like iPXE syntax but are one
# word each; iPXE must hand them to the kernel unchanged (issue 11 item 4).
IPXE_WORDS = "lbipxe=a||b;c#d&&e$HOME{x} lbipxe2=;#"
NODE_UUID = "3f0e8a52-7c1d-4b6e-a9d2-5e4f3c2b1a07"     # QEMU -uuid / -smbios: DMI product_uuid and serial,
NODE_SERIAL = "LB-TEST-0001"                            # the node's asset key
WHITEOUT = 0o020000 | 0o600
# The node's /sbin/init: prove every layer and the whiteout, then capture + upload a change once.
NODE_INIT = r"""#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root
ok=yes
for f in /etc/base-file /etc/layer1 /etc/layer2 /usr/bin/python3; do
  [ -e "$f" ] || { echo "NODE: missing $f"; ok=no; }
done
[ -e /etc/doomed ] && { echo "NODE: /etc/doomed survived its whiteout"; ok=no; }
[ "$ok" = yes ] && echo "ROOTFS-PASS base=$(cat /etc/base-file) l1=$(cat /etc/layer1) l2=$(cat /etc/layer2) whiteout=ok"
echo "NODE-CMDLINE $(cat /proc/cmdline)"
if grep -q lbtest=tamper: /proc/cmdline; then
  # What root on a node can do to its cache disk: replace a cached layer with an altered copy, mtime put back.
  L=/run/layerboot/cache/layers/$(sed -n 's/.*lbtest=tamper:\([0-9a-f]*\).*/\1/p' /proc/cmdline)
  cp -p "$L" /tmp/orig && cp "$L" /tmp/x && printf X | dd of=/tmp/x bs=1 seek=100 conv=notrunc 2>/dev/null && \
    rm -f "$L" && cp /tmp/x "$L" && touch -r /tmp/orig "$L" && chmod 444 "$L" && \
    echo "NODE-TAMPERED $(stat -c '%s %Y' "$L") was $(stat -c '%s %Y' /tmp/orig)"
  poweroff -f
fi
if grep -q lbtest=check /proc/cmdline; then
  echo "NODE-STATUS $(cat /run/layerboot/status)"
  echo "NODE-DM-LOWERS $(grep -c '^/dev/dm-[0-9]* /run/layerboot/lower/' /proc/mounts)"
  echo "NODE-SECRET $(stat -c '%a %u' /run/layerboot/node.secret 2>&1)"
  echo NODE-PID $$ $(ls /run/layerboot/rw)
  poweroff -f
fi
if [ -e /etc/captured ]; then
  echo "NODE-SEES-CAPTURE $(cat /etc/captured)"
  poweroff -f
fi
echo "changed on the node" > /etc/captured
python3 -m layerboot capture --upper /run/layerboot/rw/upper -o /run/change.tar.zst 2>&1 && \
  python3 -m layerboot upload /run/change.tar.zst --wait 240 2>&1 && echo "NODE-UPLOADED"
reboot -f
"""
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


def cached_signing_key() -> tuple[Path, Path]:
    """One signing key for all test sessions, so the initrd (which embeds its public half) stays cached."""
    keys = CACHE / "keys"
    if not (keys / "signing.pub").is_file():
        keys.mkdir(parents=True, exist_ok=True)
        generate_key(keys / "signing.key", keys / "signing.pub")
    return keys / "signing.key", keys / "signing.pub"


def store_with_cached_key(paths: Paths) -> Store:
    """A new store at ``paths`` signing with the tests' persistent key (see cached_signing_key)."""
    store = Store(paths)
    store.init()
    private, public = cached_signing_key()
    shutil.copyfile(private, paths.signing_key)
    paths.signing_key.chmod(0o600)
    shutil.copyfile(public, paths.public_key)
    return store


@pytest.fixture(scope="session")
def kernel():  # noqa: ANN201
    return fetch_kernel()


@pytest.fixture(scope="session")
def node_store(tmp_path_factory: pytest.TempPathFactory, kernel) -> dict:  # noqa: ANN001
    """A store with a busybox base, two overlays (one whites out a base file), the client layer, kernel, initrd."""
    work = tmp_path_factory.mktemp("qemu-store")
    paths = Paths(work / "store")
    store = store_with_cached_key(paths)
    base_tree = build_busybox_tree(work / "base", init_script=NODE_INIT)
    (base_tree / "etc/base-file").write_text("b\n")
    (base_tree / "etc/doomed").write_text("this file is deleted by layer 2\n")
    base = store.import_tree(base_tree, kind="base", all_root=True, description="busybox base").digest
    one = work / "one"
    (one / "etc").mkdir(parents=True)
    (one / "etc/layer1").write_text("1\n")
    layer1 = store.import_tree(one, kind="overlay", base=base, all_root=True).digest
    two = work / "two"
    (two / "etc").mkdir(parents=True)
    (two / "etc/layer2").write_text("2\n")
    os.mknod(two / "etc/doomed", WHITEOUT, os.makedev(0, 0))
    layer2 = store.import_tree(two, kind="overlay", base=base, all_root=True).digest
    client_image = client_layer_image(work / "client.squashfs", cache=CACHE)
    client = store.import_squashfs(client_image, kind="overlay", base=base, description="layerboot client").digest
    initrd = build_initrd(kernel, paths.public_key, work / "initrd.img", cache=CACHE / "initrd")
    kernel_digest = store.import_boot_file(kernel.image, kind="kernel").digest
    initrd_digest = store.import_boot_file(initrd.path, kind="initrd").digest
    profiles = Profiles(store)
    profiles.create("node", base, cmdline=f"{CMDLINE} {IPXE_WORDS}", kernel=kernel_digest, initrd=initrd_digest)
    for layer in (layer1, layer2, client):
        profiles.add("node", layer)
    return {"paths": paths, "profiles": profiles, "work": work, "initrd": initrd, "layers": (base, layer1, layer2),
            "client": client}


@pytest.fixture(scope="session")
def daemon(node_store: dict) -> Iterator[Daemon]:
    paths: Paths = node_store["paths"]
    config = write_config(node_store["work"] / "layerboot.toml", paths, upload_policy="auto")
    daemon = Daemon(paths, config, node_store["work"] / "layerbootd.log")
    _, secret = daemon.registry().register(MAC, "node", replace=True, asset_key=f"{NODE_UUID}:{NODE_SERIAL}")
    daemon.node_secret = secret  # type: ignore[attr-defined]
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def pxe_dir(tmp_path: Path, port: int) -> Path:
    """What QEMU's TFTP serves: a script for the NIC's iPXE ROM that chains to layerbootd's per-MAC script."""
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    (tftp / "boot.ipxe").write_text(f"#!ipxe\nchain http://10.0.2.2:{port}/boot/${{net0/mac}}.ipxe\n")
    return tftp


def node_text(tmp_path: Path) -> str:
    return (tmp_path / "serial.log").read_text()


def cache_disk(path: Path, megabytes: int) -> Path:
    """An empty ext4 image labelled for layerboot.cache=LABEL=layerboot-cache (stage1 never formats one)."""
    from layerboot.run import run

    with open(path, "wb") as f:
        f.truncate(megabytes << 20)
    run(["mkfs.ext4", "-q", "-L", "layerboot-cache", path])
    return path


def assert_clean(node: QemuNode) -> None:
    text = node.text()
    assert not TRACEBACK.search(text), f"traceback on the serial console ({node.log_path})"


def test_pxe_boot_layers_capture_upload_bake_reboot(daemon: Daemon, node_store: dict, kernel,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    profiles: Profiles = node_store["profiles"]
    generation = profiles.current("node").number
    config = NodeConfig(tftp_dir=pxe_dir(tmp_path, daemon.port), bootfile="boot.ipxe", mac=MAC, uuid=NODE_UUID,
                        serial=NODE_SERIAL, no_reboot=False)
    with QemuNode(config, tmp_path / "serial.log") as node:
        first = node.wait_for(r"ROOTFS-PASS", timeout=180, fail=(r"layerboot: FAILED", r"NODE: ", r"Kernel panic",
                                                                   r"Traceback"))
        assert first.text == "ROOTFS-PASS base=b l1=1 l2=2 whiteout=ok"
        manifest_line = node.wait_for(r"layerboot: manifest:")
        assert f"generation {generation} " in manifest_line.text
        # the write credential was claimed with the DMI UUID; the upload below uses it, not the boot token
        node.wait_for(r"layerboot: node secret: claimed with the asset key, stored in /run/layerboot/node.secret")
        # real iPXE passed the iPXE-looking words on as they are, then layerbootd's own options
        cmdline = node.wait_for(r"^NODE-CMDLINE ").text.split(" ", 1)[1]
        bootif = "BOOTIF=01-" + MAC.replace(":", "-")    # iPXE filled in the NIC it booted from
        assert f"{CMDLINE} {IPXE_WORDS} {bootif} layerboot.server=http://10.0.2.2:{daemon.port} " \
               f"layerboot.node={MAC} layerboot.profile=node layerboot.token=lbb1." in cmdline
        uploaded = node.wait_for(r"NODE-UPLOADED", timeout=300, start=node.lines.index(first))
        second = node.wait_for(r"ROOTFS-PASS", timeout=180, start=node.lines.index(uploaded),
                               fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
        seen = node.wait_for(r"NODE-SEES-CAPTURE", timeout=60, start=node.lines.index(second))
        assert seen.text == "NODE-SEES-CAPTURE changed on the node"
        node.wait_exit(60)
    assert_clean(node)
    text = node.text()
    assert f"generation {generation + 1} " in text.split("NODE-UPLOADED", 1)[1]
    current = profiles.current("node")
    assert current.number == generation + 1 and len(current.layers) == 5
    # the baked capture holds the node's change, never the node secret (it lives on /run, outside the overlay)
    from layerboot.run import run
    described = run(["rdsquashfs", "--describe", str(node_store["paths"].object(current.layers[-1]))]).text
    assert "etc/captured" in described and "node.secret" not in described
    # The boot reports reached the server.
    events = daemon.get(f"/nodes/{MAC}", token=daemon.node_secret, headers={"Accept": "application/json"}).json()
    assert any(e["ok"] and e["generation"] == generation + 1 for e in events["events"])
    print(f"first boot: rootfs marker at {first.seconds:.1f}s after QEMU start")


def direct(node_store: dict, kernel, tmp_path: Path, server: str, token: str, extra: str = "",  # noqa: ANN001
           disks: tuple[Path, ...] = (), uuid: str = "", serial: str = "") -> QemuNode:
    """A direct kernel boot with the options layerbootd's iPXE script would give (``token``: a boot token)."""
    append = (f"{CMDLINE} layerboot.server={server} layerboot.node={MAC} layerboot.profile=node "
              f"layerboot.token={token} {extra}")
    config = NodeConfig(kernel=kernel.image, initrd=node_store["initrd"].path, append=append, mac=MAC,
                        disks=list(disks), uuid=uuid, serial=serial)
    return QemuNode(config, tmp_path / "serial.log")


def expect_failure(node: QemuNode, message: str) -> str:
    with node:
        line = node.wait_for(r"layerboot: FAILED: ", timeout=120, fail=(r"ROOTFS-PASS", r"Kernel panic"))
        node.wait_for(r"emergency action: poweroff", timeout=30)
        assert node.wait_exit(60) == 0
    assert_clean(node)
    assert re.search(message, line.text), line.text
    assert "ROOTFS-PASS" not in node.text()
    # The same line went to the kernel log (printed with its kernel timestamp under 'quiet': level err).
    assert re.search(r"\[ *\d+\.\d+\] " + re.escape(line.text), node.text()), "no /dev/kmsg copy"
    return line.text


def test_tampered_layer_is_refused(daemon: Daemon, node_store: dict, kernel, tmp_path: Path) -> None:  # noqa: ANN001
    digest = node_store["layers"][1]
    paths: Paths = node_store["paths"]
    obj = paths.object(digest)
    original = obj.read_bytes()
    tampered = original[:-1] + bytes([original[-1] ^ 1])
    # layerbootd itself hashes an object before serving it: it refuses the tampered layer and quarantines it
    obj.chmod(0o644)
    try:
        obj.write_bytes(tampered)
        reply = daemon.get(f"/objects/{digest}", token=daemon.boot_token(), headers={"Accept": "application/json"})
        assert reply.status == 500 and f"object {digest[:12]} is damaged" in reply.json()["error"]
        assert not obj.exists() and list(paths.quarantine.glob(f"{digest}.*"))
    finally:
        obj.write_bytes(original)
        obj.chmod(0o444)
    # stage1 checks every byte itself: a copy of the store served without that check stands in for a man in
    # the middle who alters the layer on the way
    copy = Paths(tmp_path / "mitm-store")
    shutil.copytree(paths.root, copy.root)
    copy.object(digest).chmod(0o644)
    copy.object(digest).write_bytes(tampered)
    config = write_config(tmp_path / "mitm.toml", copy, verify_objects=False)
    mitm = Daemon(copy, config, tmp_path / "mitm.log").start()
    try:
        expect_failure(direct(node_store, kernel, tmp_path, f"http://10.0.2.2:{mitm.port}", daemon.boot_token()),
                       rf"layers: layer {digest[:12]} failed verification: got {len(original)} bytes with sha256 ")
    finally:
        mitm.stop()
    # QEMU's own UUID is not the node's asset key: no secret, one line, and the boot went on read-only
    assert re.search(r"layerboot: node secret: not claimed \(403 the asset key proof of .* does not match "
                     r".*\); booting read-only", node_text(tmp_path))


def test_manifest_with_a_wrong_signature_is_refused(daemon: Daemon, node_store: dict, kernel,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    profiles: Profiles = node_store["profiles"]
    gen = profiles.current("node")
    path = profiles.manifest_path("node", gen.number)
    original = path.read_bytes()
    envelope = json.loads(original)
    envelope["payload"] = envelope["payload"].replace(f'"serial": {gen.serial}', f'"serial": {gen.serial + 100}')
    path.chmod(0o644)
    try:
        path.write_text(json.dumps(envelope))
        expect_failure(direct(node_store, kernel, tmp_path, f"http://10.0.2.2:{daemon.port}", daemon.boot_token()),
                       r"manifest: manifest signature does not verify")
    finally:
        path.write_bytes(original)


def test_server_down_is_a_clear_error(node_store: dict, kernel, tmp_path: Path) -> None:  # noqa: ANN001
    from server_daemon import free_port

    port = free_port()   # nothing listens there
    expect_failure(direct(node_store, kernel, tmp_path, f"http://10.0.2.2:{port}", "x"),
                   rf"manifest: GET http://10.0.2.2:{port}/nodes/{MAC}/manifest: Connection refused")


def test_static_ip_break_shell_and_status_file(daemon: Daemon, node_store: dict, kernel,  # noqa: ANN001
                                               tmp_path: Path) -> None:
    """ip= skips DHCP; layerboot.break=mount opens a shell with the verified layers; the node sees its status."""
    node = direct(node_store, kernel, tmp_path, f"http://10.0.2.2:{daemon.port}", daemon.boot_token(),
                  "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off layerboot.break=mount lbtest=check", uuid=NODE_UUID,
                  serial=NODE_SERIAL)
    with node:
        configured = node.wait_for(r"layerboot: eth0 ", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic"))
        assert configured.text.endswith("10.0.2.15/24 via 10.0.2.2 (static)")
        node.wait_for(r"layerboot.break=mount: starting a shell", timeout=60)
        node.send("echo LAYERS $(ls /run/layerboot/layers | wc -l) MOUNTED $(grep -c squashfs /proc/mounts)\n")
        layers = len(node_store["profiles"].current("node").layers)
        assert node.wait_for(r"^LAYERS ", timeout=30).text == f"LAYERS {layers} MOUNTED 0"
        node.send("exit\n")
        node.wait_for(r"ROOTFS-PASS", timeout=60, fail=(r"layerboot: FAILED", r"Kernel panic"))
        status = json.loads(node.wait_for(r"^NODE-STATUS ", timeout=30).text.split(" ", 1)[1])
        assert status["ok"] is True and status["stage"] == "switch_root" and status["generation"] >= 1
        assert set(status["timings"]) == {"modules", "net", "manifest", "layers", "mount"}
        # the claimed secret, as the booted system sees it: root's only, outside the overlay (never captured)
        assert node.wait_for(r"^NODE-SECRET ", timeout=30).text == "NODE-SECRET 600 0"
        # PID 1 is the rootfs init; the rw dir is where docs/stage1.md says.
        assert node.wait_for(r"^NODE-PID ", timeout=30).text == "NODE-PID 1 upper work"
        node.wait_exit(60)
    assert_clean(node)
    assert "DHCP" not in node.text()


def test_emergency_shell_shows_the_status_then_reboots(node_store: dict, kernel, tmp_path: Path) -> None:  # noqa: ANN001
    from server_daemon import free_port

    node = direct(node_store, kernel, tmp_path, f"http://10.0.2.2:{free_port()}", "x",
                  "layerboot.emergency=shell")
    with node:
        failed = node.wait_for(r"layerboot: FAILED: ", timeout=120, fail=(r"ROOTFS-PASS", r"Kernel panic"))
        assert "Connection refused" in failed.text
        node.wait_for(r"emergency: starting a shell", timeout=30)
        node.send("echo STATUS $(cat /run/layerboot/status)\n")
        status = json.loads(node.wait_for(r"^STATUS ", timeout=30).text.split(" ", 1)[1])
        assert status["ok"] is False and status["stage"] == "manifest" and "Connection refused" in status["message"]
        node.send("exit\n")
        node.wait_for(r"emergency shell exited: rebooting", timeout=30)
        assert node.wait_exit(60) == 0   # -no-reboot: the guest's reboot ends QEMU
    assert_clean(node)


def test_missing_init_and_bad_options_stop_before_switching(daemon: Daemon, node_store: dict, kernel,  # noqa: ANN001
                                                            tmp_path: Path) -> None:
    server = f"http://10.0.2.2:{daemon.port}"
    expect_failure(direct(node_store, kernel, tmp_path / "init", server, daemon.boot_token(), "init=/sbin/nope"),
                   r"FAILED: mount: init=/sbin/nope is not an executable file in the new root")
    # An unknown option: the emergency action still comes from the raw command line.
    expect_failure(direct(node_store, kernel, tmp_path / "opt", server, daemon.boot_token(), "layerboot.colour=red"),
                   r"FAILED: cmdline: kernel command line: unknown kernel option layerboot.colour$")
    # Asked for another profile (as if a man in the middle swapped the manifest, issue 11 item 1): the server's
    # valid, signed manifest of profile node is refused, in one line, before any layer is fetched.
    expect_failure(direct(node_store, kernel, tmp_path / "bind", server, daemon.boot_token(),
                          "layerboot.profile=other"),
                   r"FAILED: manifest: the server's manifest is for profile node, but this boot is for profile "
                   r"other \(layerboot.profile=\): refusing another profile's manifest$")


def test_cache_disk_boots_offline_after_a_server_boot(daemon: Daemon, node_store: dict, kernel,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    """The layerboot.cache= seam: a first boot fills the cache disk, a second boots from it with no server.

    The disk has no fs-verity (plain mkfs.ext4): the filling boot keeps each layer's signed dm-verity tree next
    to it, and the offline boot attaches every cached layer through dm-verity instead of re-hashing it."""
    from server_daemon import free_port

    disk = cache_disk(tmp_path / "cache.img", 128)
    options = "layerboot.cache=LABEL=layerboot-cache lbtest=check"
    with direct(node_store, kernel, tmp_path / "online", f"http://10.0.2.2:{daemon.port}", daemon.boot_token(),
                options, disks=(disk,)) as node:
        node.wait_for(r"ROOTFS-PASS", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
        node.wait_exit(60)
    assert "without a cache" not in node.text()
    assert "layerboot: cache: no fs-verity on the cache filesystem (" in node.text()
    assert "fetching the dm-verity tree" not in node.text()
    with direct(node_store, kernel, tmp_path / "offline", f"http://10.0.2.2:{free_port()}", daemon.boot_token(),
                options, disks=(disk,)) as node:
        node.wait_for(r"booting the cached manifest", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic"))
        node.wait_for(r"ROOTFS-PASS", timeout=60, fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
        lowers = node.wait_for(r"NODE-DM-LOWERS", timeout=30, fail=(r"Kernel panic",))
        node.wait_exit(60)
    assert_clean(node)
    profiles: Profiles = node_store["profiles"]
    current = profiles.current("node")
    text = node.text()
    assert text.count(": from the cache") == len(current.layers)
    # No re-hash: every cached layer is a dm-verity device over the file and its kept tree (signed root hash).
    assert text.count(": from the cache through dm-verity") == len(current.layers)
    assert (f"layerboot: cache: {len(current.layers)} cached layers attached through dm-verity (signed root hashes, "
            "every block checked as it is read), nothing re-hashed for them") in text
    assert "re-hashed" not in text.replace("(else re-hashed on every boot)", "").replace("nothing re-hashed", "")
    assert lowers.text == f"NODE-DM-LOWERS {len(current.layers)}"
    # Replay: the server hands out an older, validly signed manifest; the cache remembers the newer serial.
    path = profiles.manifest_path("node", current.number)
    original = path.read_bytes()
    path.chmod(0o644)
    try:
        path.write_bytes(profiles.signed_manifest("node", 1))
        expect_failure(direct(node_store, kernel, tmp_path / "replay", f"http://10.0.2.2:{daemon.port}",
                              daemon.boot_token(), "layerboot.cache=LABEL=layerboot-cache", disks=(disk,)),
                       rf"manifest: manifest serial 1 is lower than the last accepted {current.serial} ")
    finally:
        path.write_bytes(original)
    # No network at all (an interface that never appears): the cached chain boots after a bounded wait.
    with direct(node_store, kernel, tmp_path / "nonet", f"http://10.0.2.2:{daemon.port}", daemon.boot_token(),
                options + " layerboot.interface=eth9 layerboot.timeout=2", disks=(disk,)) as node:
        node.wait_for(r"no network; booting the cached manifest", timeout=120, fail=(r"layerboot: FAILED",))
        node.wait_for(r"ROOTFS-PASS", timeout=60, fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
        node.wait_exit(60)
    assert "no network interface eth9 appeared within 2s" in node.text()


def test_verify_blocks_boot_attaches_fetched_layers_through_dm_verity(daemon: Daemon, node_store: dict,  # noqa: ANN001
                                                                     kernel, tmp_path: Path) -> None:
    """layerboot.verify=blocks (issue 20): every layer of the chain (each has a tree) is downloaded without SHA-256,
    its tree fetched and checked, and the layer mounted from a dm-verity device with the signed root; the
    rootfs works and nothing was hashed whole."""
    layers = node_store["profiles"].current("node").layers
    with direct(node_store, kernel, tmp_path / "blocks", f"http://10.0.2.2:{daemon.port}", daemon.boot_token(),
                "layerboot.verify=blocks lbtest=check") as node:
        node.wait_for(r"ROOTFS-PASS", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
        lowers = node.wait_for(r"NODE-DM-LOWERS", timeout=30, fail=(r"Kernel panic",))
        node.wait_exit(60)
    assert_clean(node)
    assert (f"layerboot: layerboot.verify=blocks: {len(layers)} layers downloaded without hashing and attached "
            "through dm-verity (every block checked as it is read), 0 without a tree and 0 a mirror may serve "
            "hashed whole") in node.text()
    assert lowers.text == f"NODE-DM-LOWERS {len(layers)}"
    print("verify=blocks: every layer attached through dm-verity, none hashed whole; rootfs works")


def test_cache_layers_are_verified_before_use(daemon: Daemon, node_store: dict, kernel,  # noqa: ANN001
                                              tmp_path: Path) -> None:
    """A cache made with fs-verity (mkfs.ext4 -O verity): the filling boot turns fs-verity on for each layer,
    a cached boot checks each against the signed manifest's fs-verity digest in O(1) (no re-hash), and a layer
    that root on the node replaced with an altered copy, mtime put back, is refused on the next boot with one
    line and fetched again."""
    from layerboot.run import run

    disk = tmp_path / "cache.img"
    with open(disk, "wb") as f:
        f.truncate(128 << 20)
    run(["mkfs.ext4", "-q", "-O", "verity", "-b", "4096", "-L", "layerboot-cache", disk])   # verity: 4K blocks
    server = f"http://10.0.2.2:{daemon.port}"
    options = "layerboot.cache=LABEL=layerboot-cache"
    layers = node_store["profiles"].current("node").layers
    victim = node_store["layers"][1]
    with direct(node_store, kernel, tmp_path / "fill", server, daemon.boot_token(), options + " lbtest=check",
                disks=(disk,)) as node:
        node.wait_for(r"ROOTFS-PASS", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
        node.wait_exit(60)
    assert_clean(node)
    assert "layerboot: cache:" not in node.text()          # no fallback note: fs-verity is on for every layer
    with direct(node_store, kernel, tmp_path / "tamper", server, daemon.boot_token(),
                f"{options} lbtest=tamper:{victim}", disks=(disk,)) as node:
        tampered = node.wait_for(r"NODE-TAMPERED", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic"))
        node.wait_exit(60)
    assert_clean(node)
    size_mtime, _, before = tampered.text.removeprefix("NODE-TAMPERED ").partition(" was ")
    assert size_mtime == before                            # same size, same mtime: only the bytes differ
    assert node.text().count(": from the cache") == len(layers) and "layerboot: cache:" not in node.text()
    with direct(node_store, kernel, tmp_path / "after", server, daemon.boot_token(), options + " lbtest=check",
                disks=(disk,)) as node:
        refused = node.wait_for(r"layerboot: cache: ", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic"))
        node.wait_for(r"ROOTFS-PASS", timeout=60, fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
        node.wait_exit(60)
    assert_clean(node)
    assert refused.text == (f"layerboot: cache: layer {victim[:12]} does not match its signed fs-verity digest "
                            "(altered or damaged): removed, fetching it again")
    assert node.text().count(": from the cache") == len(layers) - 1
    assert re.search(rf"layer {victim[:12]}: \d+ bytes in ", node.text())   # fetched again from the server
    print("cache: altered layer refused and fetched again; cached layers checked by fs-verity")


def test_layers_come_through_a_rack_mirror_after_a_dead_one(daemon: Daemon, node_store: dict, kernel,  # noqa: ANN001
                                                            tmp_path: Path) -> None:
    """A profile whose signed manifest names a dead mirror, then a real nginx mirror made by 'layerboot mirror
    nginx-config': stage1 drops the dead one in one line, fetches every layer through the mirror, boots."""
    from layerboot.overlays.mirrors import MirrorPolicy
    from layerboot.ports import free_port, wait_listening
    from layerboot.run import Process, require_tool
    from layerboot.tools.cli import main

    port, dead, mac = free_port(), free_port(), "52:54:00:12:34:57"
    run_dir, conf = tmp_path / "mirror", tmp_path / "mirror.conf"
    assert main(["mirror", "nginx-config", "--origin", daemon.url, "--listen", f"127.0.0.1:{port}", "--full",
                 "--user", "root", "--run-dir", str(run_dir), "--cache-dir", str(run_dir / "cache"), "--foreground",
                 "-o", str(conf)]) == 0
    run_dir.mkdir()
    mirrors = (f"http://10.0.2.2:{dead}", f"http://10.0.2.2:{port}")    # the host, as the guest reaches it
    node = node_store["profiles"].current("node")
    mirrored = Profiles(node_store["profiles"].store, mirrors=MirrorPolicy(mirrors, "listed"))
    name = f"mirrored-{port}"
    mirrored.create(name, node.base, cmdline=CMDLINE, kernel=node.kernel, initrd=node.initrd)
    for layer in node.layers[1:]:
        mirrored.add(name, layer)
    daemon.registry().register(mac, name, replace=True)
    server = f"http://10.0.2.2:{daemon.port}"
    append = (f"{CMDLINE} layerboot.server={server} layerboot.node={mac} layerboot.profile={name} "
              f"layerboot.token={daemon.boot_token(mac)} lbtest=check")
    nginx = Process([require_tool("nginx", package="nginx-light"), "-c", conf, "-p", run_dir])
    try:
        wait_listening(port, nginx, "the mirror's nginx", log=run_dir / "error.log")
        config = NodeConfig(kernel=kernel.image, initrd=node_store["initrd"].path, append=append, mac=mac)
        with QemuNode(config, tmp_path / "serial.log") as guest:
            order = guest.wait_for(r"layerboot: mirrors \(listed\): ", timeout=120,
                                   fail=(r"layerboot: FAILED", r"Kernel panic"))
            guest.wait_for(r"ROOTFS-PASS", timeout=120, fail=(r"layerboot: FAILED", r"Kernel panic", r"Traceback"))
            guest.wait_exit(60)
    finally:
        nginx.terminate()
    assert_clean(guest)
    assert order.text == f"layerboot: mirrors (listed): {mirrors[0]}, {mirrors[1]}; then the origin {server}"
    dropped = [line for line in guest.text().splitlines() if f"layerboot: mirror {mirrors[0]}: " in line]
    assert len(dropped) == 1 and dropped[0].endswith("Connection refused; using the next source"), dropped
    served = (run_dir / "access.log").read_text()
    for digest in mirrored.current(name).chain:           # every layer came through the mirror
        assert re.search(rf"GET /objects/{digest} 200 \d+ cache=MISS", served), digest
    print("mirror: a dead mirror dropped in one line, every layer through the nginx mirror")
