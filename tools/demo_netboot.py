"""The netboot half of ``layerboot demo``: a real layerbootd on loopback and a QEMU node PXE-booting from it.

The node's NIC ROM (QEMU's iPXE) gets a one-line script over QEMU's built-in TFTP that chains to layerbootd's
per-MAC script; stage1 in the initramfs claims the node's secret (proving its DMI UUID and serial, which QEMU
sets with ``-uuid`` and ``-smbios``),
verifies the signed manifest and every layer, stacks them and switch_roots into the demo's /sbin/init. That init proves what it sees, changes a file, captures the change
and uploads it; the server bakes it into a new generation, the node reboots and shows the change.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from layerboot.build.qemu import DEFAULT_MAC, Line, NodeConfig, QemuError, QemuNode
from layerboot.errors import LayerbootError
from layerboot.paths import Paths
from layerboot.ports import free_port, wait_listening
from layerboot.run import Process

# The profile's kernel command line. no_timer_check: a loaded host can make TCG fail the kernel's timer check.
NODE_CMDLINE = "console=ttyS0 quiet no_timer_check layerboot.emergency=poweroff"
# /sbin/init of the demo base (busybox sh). First boot: show the layers, change a file, capture and upload
# it, reboot. Second boot (the change is now a baked layer): show it and power off.
NODE_INIT = r"""#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root
status=$(cat /run/layerboot/status 2>/dev/null)
generation=$(echo "$status" | sed -n 's/.*"generation": *\([0-9]*\).*/\1/p')
issue=present; [ -e /etc/issue ] || issue=gone
echo "DEMO: booted generation $generation with $(ls /run/layerboot/lower | wc -l) layers;" \
     "motd: $(cat /etc/motd); /etc/issue: $issue (whiteout)"
if [ -e /etc/demo-change ]; then
  echo "DEMO: the change made on the last boot is here: $(cat /etc/demo-change)"
  echo "DEMO-DONE"
  poweroff -f
fi
echo "written on the node during generation $generation" > /etc/demo-change
echo "DEMO: changed /etc/demo-change; capturing /run/layerboot/rw/upper and uploading it"
if layerboot capture --upper /run/layerboot/rw/upper -o /run/change.tar.zst 2>&1 &&
   layerboot upload /run/change.tar.zst --wait 300 2>&1; then
  echo "DEMO: upload baked; rebooting"
  reboot -f
fi
echo "DEMO-FAILED: the change was not captured, uploaded and baked (see the lines above)"
poweroff -f
"""
PROGRESS = r"^(layerboot: |DEMO)"
DEMO_UUID = "1b6f0c2e-5d3a-4e8f-9c71-2a4b6d8e0f13"
FAILURES = (r"layerboot: FAILED", r"Kernel panic", r"Traceback \(most recent call last\)")


@dataclass(frozen=True)
class DemoNode:
    mac: str = DEFAULT_MAC
    uuid: str = DEMO_UUID         # DMI product UUID and serial (QEMU -uuid, -smbios): the node's asset key
    serial: str = "LB-DEMO-0001"

    @property
    def asset_key(self) -> str:
        """What stage1 reads from DMI and proves (layerboot asset-key prints it on a node)."""
        return f"{self.uuid}:{self.serial}".lower()
    boot_timeout: float = 600.0   # PXE to the rootfs under TCG takes tens of seconds on a loaded host


@contextmanager
def running_daemon(paths: Paths, workdir: Path) -> Iterator[int]:
    """Start layerbootd on a free loopback port for ``paths`` (auto-append uploads); yield the port."""
    port = free_port()
    config = workdir / "layerboot.toml"
    config.write_text(f'[store]\nroot = "{paths.root}"\n\n[server]\nlisten = "127.0.0.1"\nport = {port}\n'
                      'upload_policy = "auto"\n')
    log = workdir / "layerbootd.log"
    with open(log, "ab") as handle:
        process = Process([sys.executable, "-m", "layerboot.server.main", "--config", str(config)],
                          stdout=handle, stderr=handle)
    try:
        wait_listening(port, process, "layerbootd", log=log)
        yield port
    finally:
        process.terminate(timeout=10)


def pxe_script(tftp: Path, port: int) -> str:
    """What QEMU's TFTP hands the NIC's iPXE ROM: chain to layerbootd's per-MAC script (10.0.2.2 = host lo)."""
    tftp.mkdir(parents=True, exist_ok=True)
    (tftp / "boot.ipxe").write_text(f"#!ipxe\nchain http://10.0.2.2:{port}/boot/${{net0/mac}}.ipxe\n")
    return "boot.ipxe"


def _relay_until(node: QemuNode, pattern: str, start: int, timeout: float) -> int:
    """Print the guest's layerboot/DEMO lines until one matches ``pattern``; return the index after it."""
    deadline = time.monotonic() + timeout
    wanted = re.compile(pattern)
    index = start
    while True:
        line: Line = node.wait_for(PROGRESS, start=index, timeout=max(deadline - time.monotonic(), 1.0),
                                   fail=FAILURES)
        index = node.lines.index(line, index) + 1
        print(f"    node [{line.seconds:6.1f}s] {line.text}", flush=True)
        if line.text.startswith(("layerboot: FAILED", "DEMO-FAILED")):
            raise QemuError(line.text)
        if wanted.search(line.text):
            return index


def boot_node(port: int, workdir: Path, demo: DemoNode = DemoNode()) -> Path:
    """PXE-boot the node twice (change, capture, upload; then see the baked change). Returns the serial log."""
    tftp = workdir / "tftp"
    config = NodeConfig(tftp_dir=tftp, bootfile=pxe_script(tftp, port), mac=demo.mac, uuid=demo.uuid,
                        serial=demo.serial, no_reboot=False)
    log = workdir / "node-serial.log"
    try:
        with QemuNode(config, log) as node:
            index = _relay_until(node, r"^DEMO: booted", 0, demo.boot_timeout)
            index = _relay_until(node, r"^DEMO: upload baked", index, demo.boot_timeout)
            _relay_until(node, r"^DEMO-DONE", index, demo.boot_timeout)
            node.wait_exit(120)
    except QemuError as err:
        raise LayerbootError(f"the demo node did not boot as expected: {str(err).splitlines()[0]}",
                             hint=f"serial log: {log}; server log: {workdir / 'layerbootd.log'}") from None
    return log
