"""Non-virtio hardware under QEMU, with Debian's generic kernel and the ``hardware`` driver set.

* an Intel e1000e NIC that PXE-boots through its own iPXE ROM, with the layer cache on an AHCI (SATA) disk;
* a Realtek RTL8139 NIC (two drivers claim it: 8139cp binds, 8139too declines);
* UEFI firmware (OVMF, Secure Boot off) network-booting through the NIC's iPXE EFI driver;
* Secure Boot enforced (OVMF with Microsoft's keys): Debian's signed shim -> signed GRUB -> signed kernel ->
  stage1, through `layerboot pxe --efi-binary shimx64.efi` and layerbootd on a namespace network. The node then
  reads lockdown "integrity" and still loads signed modules.

In each the node proves what it booted: which driver runs its NIC, that its cache is the SATA disk, that it is a
UEFI machine, and that it can load a module that is not in the initramfs (``dummy``, from the modules layer the
profile stacks above the base). The store, the generic kernel, the initramfs and the modules layer are shared by
the whole session (kernel and images are cached under /var/cache/layerboot); each scenario boots once.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.build.drivers import plan_drivers
from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.build.modules_layer import import_modules_layer
from layerboot.build.qemu import NodeConfig, QemuNode
from layerboot.overlays.profile import Profiles
from layerboot.paths import Paths
from layerboot.run import run
from layerboot.server.pxe import GRUB_NET, SHIM
from server_daemon import Daemon, write_config
from test_boot_qemu import CACHE, CMDLINE, assert_clean, cache_disk, pxe_dir, store_with_cached_key

pytestmark = [pytest.mark.qemu, pytest.mark.root]

MACS = {"e1000e": "52:54:00:4c:48:01", "rtl8139": "52:54:00:4c:48:02", "uefi": "52:54:00:4c:48:03"}
# The node's /sbin/init: what drives the NIC, where the cache is, UEFI or not, and a module from the modules layer.
HW_INIT = r"""#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
nic=$(basename "$(readlink /sys/class/net/eth0/device/driver)")
efi=no; [ -d /sys/firmware/efi ] && efi=yes
cache=$(awk '$2 == "/run/layerboot/cache" {print $1}' /proc/mounts)
mod=no; modprobe dummy && grep -q '^dummy ' /proc/modules && mod=yes
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
echo "HW-PASS nic=$nic efi=$efi cache=${cache:-none} modprobe-dummy=$mod kernel=$(uname -r)"
echo "HW-MODULES $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "HW-LOCKDOWN $(cat /sys/kernel/security/lockdown 2>/dev/null)"
poweroff -f
"""
FAIL = (r"layerboot: FAILED", r"Kernel panic", r"Traceback", r"booting without a cache")
needs_secure_boot = pytest.mark.skipif(not (SHIM.is_file() and GRUB_NET.is_file()),
                                       reason="needs shim-signed and grub-efi-amd64-signed")


@pytest.fixture(scope="session")
def generic_kernel():  # noqa: ANN201
    return fetch_kernel(flavour="generic")


@pytest.fixture(scope="session")
def hw_store(tmp_path_factory: pytest.TempPathFactory, generic_kernel) -> dict:  # noqa: ANN001
    """busybox base + the generic kernel, the hardware initramfs and the kernel's modules layer."""
    work = tmp_path_factory.mktemp("hw-store")
    paths = Paths(work / "store")
    store = store_with_cached_key(paths)
    base = store.import_tree(build_busybox_tree(work / "base", init_script=HW_INIT), kind="base",
                             all_root=True, description="busybox base").digest
    plan = plan_drivers(generic_kernel, "hardware")
    initrd = build_initrd(generic_kernel, paths.public_key, work / "initrd.img", cache=CACHE / "initrd", drivers=plan)
    modules = import_modules_layer(store, generic_kernel, base).digest
    profiles = Profiles(store)
    profiles.create("hw", base, cmdline=CMDLINE, kernel=store.import_boot_file(generic_kernel.image, kind="kernel").digest,
                    initrd=store.import_boot_file(initrd.path, kind="initrd").digest)
    profiles.set_boot("hw", modules=modules)
    return {"paths": paths, "profiles": profiles, "work": work, "initrd": initrd, "modules": modules}


@pytest.fixture(scope="session")
def hw_daemon(hw_store: dict) -> Iterator[Daemon]:
    paths: Paths = hw_store["paths"]
    daemon = Daemon(paths, write_config(hw_store["work"] / "layerboot.toml", paths), hw_store["work"] / "layerbootd.log")
    for mac in MACS.values():
        daemon.registry().register(mac, "hw", replace=True)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def boot(node: QemuNode, timeout: float = 420) -> dict[str, str]:
    """Wait for the node's report; returns HW-PASS's fields plus the module and lockdown lines."""
    with node:
        passed = node.wait_for(r"^HW-PASS ", timeout=timeout, fail=FAIL)
        modules = node.wait_for(r"^HW-MODULES ", timeout=30, fail=FAIL)
        lockdown = node.wait_for(r"^HW-LOCKDOWN", timeout=30, fail=FAIL)
        assert node.wait_exit(120) == 0
    assert_clean(node)
    fields = dict(item.split("=", 1) for item in passed.text.split()[1:])
    fields["modules"] = modules.text
    fields["lockdown"] = lockdown.text
    fields["drivers"] = next((line for line in node.text().splitlines() if "layerboot: drivers: " in line
                              and "no driver" not in line), "")
    print(f"{node.log_path.parent.name}: {passed.text} ({passed.seconds:.0f} s after QEMU start)")
    return fields


def test_e1000e_pxe_with_the_cache_on_an_ahci_disk(hw_daemon: Daemon, hw_store: dict, generic_kernel,  # noqa: ANN001
                                                   tmp_path: Path) -> None:
    disk = cache_disk(tmp_path / "cache.img", 512)
    mac = MACS["e1000e"]
    hw_store["profiles"].set_boot("hw", cmdline=CMDLINE + " layerboot.cache=LABEL=layerboot-cache")
    try:
        config = NodeConfig(tftp_dir=pxe_dir(tmp_path, hw_daemon.port), bootfile="boot.ipxe", mac=mac, nic="e1000e",
                            disks=[disk], disk_bus="ahci", memory_mb=1536)
        fields = boot(QemuNode(config, tmp_path / "serial.log"))
    finally:
        hw_store["profiles"].set_boot("hw", cmdline=CMDLINE)
    assert fields["nic"] == "e1000e" and fields["efi"] == "no"
    assert fields["cache"] == "/dev/sda", fields          # the SATA disk behind the AHCI controller
    assert fields["modprobe-dummy"] == "yes" and fields["kernel"] == generic_kernel.version
    assert {"e1000e", "ahci", "sd_mod"} <= set(fields["modules"].split()[1:])
    assert "e1000e" in fields["drivers"] and "ahci" in fields["drivers"]
    # the modules layer came from the cache disk's copy on a second look: it was admitted there
    listing = run(["debugfs", "-R", "ls -p /layers", disk]).text
    assert hw_store["modules"] in listing


def test_rtl8139_direct_boot(hw_daemon: Daemon, hw_store: dict, generic_kernel, tmp_path: Path) -> None:  # noqa: ANN001
    mac = MACS["rtl8139"]
    append = (f"{CMDLINE} layerboot.server=http://10.0.2.2:{hw_daemon.port} layerboot.node={mac} "
              f"layerboot.profile=hw layerboot.token={hw_daemon.boot_token(mac)}")
    config = NodeConfig(kernel=generic_kernel.image, initrd=hw_store["initrd"].path, append=append, mac=mac,
                        nic="rtl8139", memory_mb=1536)
    fields = boot(QemuNode(config, tmp_path / "serial.log"))
    # QEMU's RTL8139 is a C+ chip: 8139cp drives it; 8139too is loaded too (same PCI ID) and declines
    assert fields["nic"] == "8139cp", fields
    assert {"8139cp", "8139too"} <= set(fields["modules"].split()[1:])
    assert fields["modprobe-dummy"] == "yes"


def test_uefi_ovmf_ipxe_boot(hw_daemon: Daemon, hw_store: dict, tmp_path: Path) -> None:
    """OVMF without Secure Boot: the NIC's iPXE EFI driver PXE-boots; the node runs as a UEFI machine."""
    mac = MACS["uefi"]
    config = NodeConfig(tftp_dir=pxe_dir(tmp_path, hw_daemon.port), bootfile="boot.ipxe", mac=mac, firmware="uefi",
                        vars_file=tmp_path / "OVMF_VARS.fd", memory_mb=1536)
    fields = boot(QemuNode(config, tmp_path / "serial.log"), timeout=600)
    assert fields["efi"] == "yes" and fields["nic"] == "virtio_net"
    assert "[none]" in fields["lockdown"], fields["lockdown"]   # Secure Boot off: no lockdown
    assert fields["modprobe-dummy"] == "yes"
    assert os.path.getsize(tmp_path / "OVMF_VARS.fd") > 0
    assert re.search(r"drivers: .*virtio_net", fields["drivers"]), fields["drivers"]


@needs_secure_boot
def test_secure_boot_through_layerboot_pxe_and_layerbootd(hw_store: dict, generic_kernel,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    """The whole path on a namespace-only network: `layerboot pxe --efi-binary shimx64.efi` (dnsmasq: DHCP by
    client architecture, TFTP; the node's GRUB entry from the store) and the real layerbootd; OVMF with Secure
    Boot enforced (Microsoft's and Debian's keys enrolled) PXE-boots Debian's signed shim -> Debian's signed GRUB
    network image -> the profile's signed kernel (checked by GRUB through shim_lock) + initrd -> stage1 -> the
    node's init. The firmware's own VirtioNetDxe drives the NIC (QEMU's iPXE ROMs are unsigned); GRUB reads
    everything over TFTP (the signed GRUB image has no http module). Booted once: OVMF under TCG is slow."""
    from layerboot.server.db import connect
    from layerboot.server.nodes import Registry
    from pxenet import Lan, wait_for
    from test_pxe_dnsmasq import tmp_tftp
    from test_pxe_qemu import start_daemon

    # a store of its own (objects hard-linked): the session's layerbootd keeps the shared one locked
    paths = Paths(tmp_path / "store")
    shutil.copytree(hw_store["paths"].root, paths.root, copy_function=os.link,
                    ignore=shutil.ignore_patterns("layerbootd.lock", "*.sqlite*"))
    for name in ("state", "keys"):    # files that get written are copies, not links into the shared store
        for path in (paths.root / name).iterdir():
            if path.is_file():
                linked = path.with_name(path.name + ".link")
                path.rename(linked)
                shutil.copy2(linked, path)     # mode kept: the daemon refuses keys others can read
                linked.unlink()
    mac = "52:54:00:4c:48:05"
    Registry(connect(paths.database)).register(mac, "hw", replace=True)
    net = "10.88.0"
    url = f"http://{net}.1:8096"
    tftp = tmp_tftp(tmp_path)
    try:
        with Lan() as lan:
            srv = lan.host("srv", f"{net}.1/24")
            start_daemon(lan, srv, write_config(tmp_path / "layerbootd.toml", paths), url, tmp_path / "layerbootd.log")
            pxe_log = tmp_path / "pxe.log"
            lan.spawn(srv, [sys.executable, "-m", "layerboot", "-s", str(paths.root), "pxe", "-i", "eth0",
                            "--range", f"{net}.100,{net}.120", "--server-url", url, "--efi-binary", "shimx64.efi",
                            "--tftp-root", str(tftp)], log=open(pxe_log, "wb"))
            assert wait_for(lambda: "TFTP root is" in pxe_log.read_text(), 30), pxe_log.read_text()
            assert f"GRUB entry {mac}: profile hw" in pxe_log.read_text()
            tap = lan.tap("tap0")
            config = NodeConfig(mac=mac, firmware="secureboot", nic_rom="", vars_file=tmp_path / "OVMF_VARS.fd",
                                memory_mb=1536, netdev=f"tap,id=n0,ifname={tap},script=no,downscript=no",
                                namespace=lan.bridge_ns)
            node = QemuNode(config, tmp_path / "serial.log")
            fields = boot(node, timeout=1200)
            assert "Fetching Netboot Image grubx64.efi" in node.text()   # shim took GRUB from its own directory
            assert f"layerboot: booting {mac}" in node.text()               # GRUB ran the node's entry
            assert "[integrity]" in fields["lockdown"] and fields["efi"] == "yes"   # the kernel saw Secure Boot
            assert fields["modprobe-dummy"] == "yes"                                # signed modules still load
            assert fields["kernel"] == generic_kernel.version
            log = pxe_log.read_text()
            assert re.search(r"sent \S*shimx64\.efi to", log) and re.search(r"sent \S*grubx64\.efi to", log), log[-3000:]
    finally:
        shutil.rmtree(tftp, ignore_errors=True)
