"""Secure Boot netboot under OVMF with Secure Boot enforced (Microsoft's and Debian's keys enrolled):
firmware PXE -> Debian's signed shim -> Debian's signed GRUB network image -> Debian's signed generic kernel
(checked by GRUB through shim_lock) -> layerboot's stage1 -> the signed layer chain -> the node's init.

The node proves the kernel saw Secure Boot (lockdown "integrity", which Debian turns on under Secure Boot) and
that signed modules still load after switch_root (``dummy`` from the modules layer). The firmware's own
VirtioNetDxe drives the NIC (no option ROM: QEMU's iPXE ROMs are unsigned). Everything GRUB reads comes over
TFTP (QEMU's built-in server here): the signed GRUB image has no http module. Booted once: OVMF under TCG is slow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from layerboot.build.qemu import NodeConfig, QemuNode
from layerboot.server.pxe import SHIM, GRUB_NET, SHIM_BINARY, grub_node_config, install_secure_boot_loaders
from server_daemon import Daemon
from test_hardware_qemu import CMDLINE, MACS, boot, hw_daemon, hw_store, generic_kernel  # noqa: F401 - fixtures

pytestmark = [pytest.mark.qemu, pytest.mark.root,
              pytest.mark.skipif(not (SHIM.is_file() and GRUB_NET.is_file()),
                                 reason="needs shim-signed and grub-efi-amd64-signed")]


def test_secure_boot_chain_shim_grub_signed_kernel_stage1(hw_daemon: Daemon, hw_store: dict,  # noqa: F811
                                                          generic_kernel, tmp_path: Path) -> None:  # noqa: F811, ANN001
    mac = MACS["uefi"]
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    served = install_secure_boot_loaders(tftp)
    assert {p.name for p in served} == {"shimx64.efi", "grubx64.efi", "grub.cfg"}
    (tftp / "layerboot").mkdir()
    shutil.copyfile(generic_kernel.image, tftp / "layerboot" / "vmlinuz")
    shutil.copyfile(hw_store["initrd"].path, tftp / "layerboot" / "initrd.img")
    cmdline = (f"{CMDLINE} layerboot.server=http://10.0.2.2:{hw_daemon.port} layerboot.node={mac} "
               f"layerboot.token={hw_daemon.tokens[mac]}")  # type: ignore[attr-defined]
    (tftp / "grub" / "nodes" / f"{mac}.cfg").write_text(
        grub_node_config(mac, "layerboot/vmlinuz", "layerboot/initrd.img", cmdline))
    config = NodeConfig(tftp_dir=tftp, bootfile=SHIM_BINARY, mac=mac, firmware="secureboot", nic_rom="",
                        vars_file=tmp_path / "OVMF_VARS.fd", memory_mb=1536)
    node = QemuNode(config, tmp_path / "serial.log")
    fields = boot(node, timeout=1200)
    text = node.text()
    assert "Fetching Netboot Image grubx64.efi" in text          # shim fetched GRUB from the same TFTP directory
    assert f"layerboot: booting {mac}" in text                    # GRUB ran the node's file
    assert fields["efi"] == "yes"
    assert "[integrity]" in fields["lockdown"], fields["lockdown"]   # the kernel booted with Secure Boot on
    assert fields["modprobe-dummy"] == "yes"                      # signed modules load under lockdown
    assert fields["kernel"] == generic_kernel.version
