"""The whole path on a namespace-only network: `layerboot pxe` (full DHCP + TFTP) -> the NIC's iPXE -> the real
layerbootd's per-MAC script -> Debian's cloud kernel + layerboot's stage1 initrd -> the signed chain of a
`layerboot base debootstrap` base plus a marker layer -> systemd in that Debian base, which prints a pass line
on the serial console and powers off.

Slow (a debootstrap build from the cached downloads plus a systemd boot under TCG): one test.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.overlays.profile import Profiles
from layerboot.paths import Paths
from layerboot.run import run, tool_path

from debian_base import console_unit, debian_base
from pxenet import Lan, wait_for
from server_daemon import write_config
from test_boot_qemu import CACHE, CMDLINE, store_with_cached_key
from test_pxe_dnsmasq import start_pxe, tmp_tftp
from test_pxe_qemu import start_daemon, start_guest

pytestmark = [pytest.mark.qemu, pytest.mark.root,
              pytest.mark.skipif(not (tool_path("debootstrap") and tool_path("dracut") and tool_path("dnsmasq")),
                                 reason="needs debootstrap, dracut and dnsmasq")]

MAC = "52:54:00:4c:42:02"
PASS = "DEBIAN-BASE-PASS"
# A unit in an overlay layer: runs once systemd has brought the Debian base up, proves what it booted.
MARKER_UNIT = console_unit(
    "layerboot test marker",
    f"""/bin/sh -c 'echo "{PASS} debian=$(cat /etc/debian_version) init=$(readlink /proc/1/exe) \
client=$(/usr/sbin/layerboot --version) marker=$(cat /etc/layerboot-marker)"'""")


def test_pxe_boots_the_debootstrap_base_to_systemd(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "store")
    store = store_with_cached_key(paths)

    built = debian_base()
    base = store.import_squashfs(built.image, kind="base", description=built.layer.description).digest
    build_seconds = built.seconds
    marker = tmp_path / "marker"
    unit_dir = marker / "etc/systemd/system"
    (unit_dir / "multi-user.target.wants").mkdir(parents=True)
    (unit_dir / "lbtest-marker.service").write_text(MARKER_UNIT)
    (unit_dir / "multi-user.target.wants/lbtest-marker.service").symlink_to("../lbtest-marker.service")
    (marker / "etc/layerboot-marker").write_text("from-the-overlay\n")
    overlay = store.import_tree(marker, kind="overlay", base=base, all_root=True).digest

    kernel = fetch_kernel()
    initrd = build_initrd(kernel, paths.public_key, tmp_path / "initrd.img", cache=CACHE / "initrd")
    profiles = Profiles(store)
    profiles.create("debian", base, cmdline=CMDLINE.replace(" quiet", ""),
                    kernel=store.import_boot_file(kernel.image, kind="kernel").digest,
                    initrd=store.import_boot_file(initrd.path, kind="initrd").digest)
    profiles.add("debian", overlay)
    run([sys.executable, "-m", "layerboot", "-s", str(paths.root), "nodes", "register", MAC, "--profile", "debian"])
    config = write_config(tmp_path / "layerbootd.toml", paths, debug=True)

    net = "10.89.0"
    url = f"http://{net}.1:8097"
    serial = tmp_path / "serial.log"
    try:
        with Lan() as lan:
            srv = lan.host("srv", f"{net}.1/24")
            daemon_log = tmp_path / "layerbootd.log"
            start_daemon(lan, srv, config, url, daemon_log)
            start_pxe(lan, srv, tmp_path, "--range", f"{net}.100,{net}.120", "--server-url", url)
            booted = time.monotonic()
            qemu = start_guest(lan, tmp_path, mac=MAC, memory_mb=1024, serial=serial)

            def console() -> str:
                return serial.read_text(errors="replace") if serial.exists() else ""
            wait_for(lambda: PASS in console() or qemu.poll() is not None, 600, 1.0)
            seconds = time.monotonic() - booted
            text = console()
            line = next((l for l in text.splitlines() if PASS in l), "")
            print(f"debootstrap base: built in {build_seconds:.0f} s; PXE to systemd pass line in {seconds:.0f} s: "
                  f"{line.strip()}")
            assert line, f"no pass line; console tail:\n{text[-4000:]}\n{daemon_log.read_text()[-2000:]}"
            assert re.search(r"debian=12\.\d+ init=/usr/lib/systemd/systemd client=layerboot \S+ "
                             r"marker=from-the-overlay", line), line
            assert wait_for(lambda: qemu.poll() is not None, 120, 1.0), "the guest did not power off"
            assert "Traceback" not in text
    finally:
        shutil.rmtree(tmp_tftp(tmp_path), ignore_errors=True)
