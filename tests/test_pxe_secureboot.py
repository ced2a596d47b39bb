"""`layerboot pxe --efi-binary shimx64.efi`: by client architecture, BIOS ROMs still get iPXE while UEFI ROMs get
Debian's signed shim; the TFTP root holds shim, the signed GRUB network image, grub/grub.cfg and a GRUB entry per
registered node (kernel + initrd by digest, a boot token that layerbootd accepts). Real dnsmasq and busybox
clients in network namespaces; the QEMU boots through this chain are in tests/test_hardware_qemu.py."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from layerboot.run import run
from layerboot.server.pxe import GRUB_NET, SHIM, grub_main_config
from pxenet import Lan
from server_daemon import boot_profile
from test_pxe_dnsmasq import BIOS_VENDOR, EFI_VENDOR, needs_net, script, start_pxe, tmp_tftp, udhcpc  # noqa: F401

pytestmark = [pytest.mark.root, needs_net,
              pytest.mark.skipif(not (SHIM.is_file() and GRUB_NET.is_file()),
                                 reason="needs shim-signed and grub-efi-amd64-signed")]
MAC = "52:54:00:4c:53:42"


def test_uefi_gets_shim_bios_gets_ipxe_and_nodes_get_grub_entries(tmp_path: Path, script: Path,  # noqa: F811
                                                                   profiles, make_layer) -> None:  # noqa: ANN001
    store = profiles.store
    digests = boot_profile(profiles, make_layer, tmp_path)
    run([sys.executable, "-m", "layerboot", "-s", str(store.paths.root), "nodes", "register", MAC, "--profile", "p1"])
    try:
        with Lan() as lan:
            srv = lan.host("srv", "10.93.0.1/24")
            cli = lan.host("cli")
            _, log = start_pxe(lan, srv, tmp_path, "--range", "10.93.0.100,10.93.0.120",
                               "--server-url", "http://10.93.0.1:8080", "--efi-binary", "shimx64.efi")
            assert re.search(rf"GRUB entry {MAC}: profile p1 generation \d+", log.read_text()), log.read_text()
            assert udhcpc(lan, cli, script, "-V", BIOS_VENDOR, "-x", "0x5d:0000")["boot_file"] == "undionly.kpxe"
            uefi = udhcpc(lan, cli, script, "-V", EFI_VENDOR, "-x", "0x5d:0007")
            assert uefi["boot_file"] == "shimx64.efi"
            lan.ip(cli, "addr", "add", f"{uefi['ip']}/24", "dev", "eth0")

            def fetch(name: str) -> bytes:
                local = tmp_path / "got"
                lan.run(cli, ["busybox", "tftp", "-g", "-r", name, "-l", str(local), "10.93.0.1"], timeout=120)
                return local.read_bytes()
            assert fetch("shimx64.efi") == SHIM.read_bytes()
            assert fetch("grubx64.efi") == GRUB_NET.read_bytes()     # shim loads it from the same directory
            assert fetch("grub/grub.cfg").decode() == grub_main_config()
            entry = fetch(f"grub/nodes/{MAC}.cfg").decode()
            assert f"linux /layerboot/{digests['kernel']} console=ttyS0 quiet BOOTIF=01-{MAC.replace(':', '-')} " \
                   f"layerboot.server=http://10.93.0.1:8080 layerboot.node={MAC} layerboot.profile=p1 " \
                   "layerboot.token=" in entry
            assert f"initrd /layerboot/{digests['initrd']}\n" in entry
            assert fetch(f"layerboot/{digests['kernel']}") == store.paths.object(digests["kernel"]).read_bytes()
    finally:
        shutil.rmtree(tmp_tftp(tmp_path), ignore_errors=True)
    # the token in the entry is a boot token layerbootd accepts for that node
    from layerboot.server.auth.boottoken import open_boot_tokens

    token = re.search(r"layerboot\.token=(\S+)", entry).group(1)  # type: ignore[union-attr]
    assert open_boot_tokens(store.paths.boot_token_key, 3600).verify(token).mac == MAC


def test_grub_entries_follow_nodes_and_profiles(tmp_path: Path, profiles, make_layer) -> None:  # noqa: ANN001
    """Entries are rewritten (new token) only when what they boot changed or they got old; removed nodes lose
    theirs; kernel and initrd are copied once by digest."""
    from layerboot.server.pxe import export_grub_nodes

    digests = boot_profile(profiles, make_layer, tmp_path)
    minted: list[str] = []

    def issue(mac: str) -> str:
        minted.append(mac)
        return f"tok{len(minted)}"

    root = tmp_path / "tftp"
    entry = root / "grub" / "nodes" / f"{MAC}.cfg"
    export = lambda nodes, now: export_grub_nodes(root, "http://10.0.0.1:8080", nodes, profiles, issue,  # noqa: E731
                                                  max_age=1000, now=now)
    assert export([(MAC, "p1")], 0) == [f"{MAC}: profile p1 generation 2"]
    assert "layerboot.token=tok1\n" in entry.read_text()
    assert (root / "layerboot" / digests["kernel"]).read_bytes() == profiles.store.path(digests["kernel"]).read_bytes()
    mtime = entry.stat().st_mtime
    assert export([(MAC, "p1")], mtime + 10) == [] and minted == [MAC]          # nothing changed: same token
    profiles.set_boot("p1", cmdline="console=ttyS0")
    assert export([(MAC, "p1")], mtime + 20) == [f"{MAC}: profile p1 generation 3"]
    assert "linux /layerboot/" in entry.read_text() and " quiet " not in entry.read_text()
    assert "layerboot.token=tok2\n" in entry.read_text()
    assert export([(MAC, "p1")], entry.stat().st_mtime + 2000) == [f"{MAC}: profile p1 generation 3"]   # old
    assert export([], 0) == [f"{MAC}: no longer registered; entry removed"] and not entry.exists()
