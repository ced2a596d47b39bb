"""A QEMU node on a namespace-only network with the site services: one boot, several checks.

The server namespace runs the real layerbootd (refreshing DNS and the syslog node table every second),
`layerboot pxe` (full DHCP: it hands out the log server, NTP server, DNS server and domain), and the daemons
`layerboot services apply` configured: rsyslog, chrony (``-x``: it never sets this machine's clock) and dnsmasq
for DNS. The node PXE-boots the Debian base (tests/debian_base.py: with rsyslog, chrony, mdadm, lvm2) plus
Debian's kernel modules plus an overlay holding node_files()' configuration (what the fleet's per-node layer
will carry) and a unit that, once the system is up, logs a runtime message, waits for chrony, resolves its
own name, runs the data-area scenarios on loop disks (tests/guest_storage.py; md and device-mapper are in
Debian's kernel, not in this host's) and powers off.

Checked: stage1's boot messages and the node's runtime logs arrive in the node's directory on the server,
nothing is logged to the node's disk, the node's clock follows the server, DNS answers for the node, and
RAID1, LVM and LVM on RAID1 build, resume and refuse as declared.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.build.modules_layer import import_modules_layer
from layerboot.overlays.profile import Profiles
from layerboot.paths import Paths
from layerboot.run import tool_path
from layerboot.server.services.node import node_files
from layerboot.settings import load_config

from debian_base import console_unit, debian_base
from pxenet import Lan, wait_for
from sitelab import SiteLab
from test_boot_qemu import CACHE, CMDLINE, store_with_cached_key
from test_pxe_dnsmasq import tmp_tftp
from test_pxe_qemu import start_daemon, start_guest

pytestmark = [pytest.mark.qemu, pytest.mark.root, pytest.mark.skipif(
    not all(tool_path(t) for t in ("debootstrap", "dracut", "dnsmasq", "rsyslogd", "chronyd")),
    reason="needs debootstrap, dracut, dnsmasq, rsyslog and chrony")]

MAC = "52:54:00:4c:42:19"
NODE = "node-5254004c4219"
NET = "10.98.0"
PASS = "LBSITE-PASS"
HERE = Path(__file__).resolve().parent
UNIT = console_unit("layerboot test: the site services and the data area, seen from the node",
                    "/usr/local/sbin/lbtest-site", wants="network-online.target",
                    after="network-online.target rsyslog.service chrony.service", stderr=True)
SCRIPT = """#!/bin/sh
. /run/layerboot/net.env
name="node-$(echo "$LAYERBOOT_NODE_MAC" | tr -d :)"
address="${LAYERBOOT_ADDRESSES%%/*}"
logger -t lbtest-runtime "runtime message from $name"
echo "LBSITE local-logs $(ls /var/log/syslog /var/log/messages /var/log/kern.log /var/log/auth.log 2>/dev/null | wc -l)"
echo "LBSITE journal $(ls /var/log/journal 2>/dev/null | wc -l) $(ls /run/log/journal 2>/dev/null | wc -l)"
echo "LBSITE net.json $(cat /run/layerboot/net.env | grep -E 'NTP|LOG_SERVERS|DOMAIN' | tr '\\n' ' ')"
chronyc waitsync 90 0.5 0 1 >/dev/null 2>&1
echo "LBSITE waitsync $?"
chronyc -n tracking | sed 's/^/LBSITE tracking /'
echo "LBSITE dns $(getent hosts "$name.cluster.internal")"
echo "LBSITE rdns $(getent hosts "$address")"
python3 /usr/local/lib/lbtest/storage.py
logger -t lbtest-runtime "runtime done"
echo "LBSITE-PASS"
"""


def overlay_tree(root: Path, config_path: Path) -> Path:
    """node_files() (as a fleet per-node layer would carry them), the test unit and the scripts."""
    for path, text in node_files(load_config(config_path), {"name": NODE}).items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    units = root / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / "lbtest-site.service").write_text(UNIT)
    (units / "multi-user.target.wants/lbtest-site.service").symlink_to("../lbtest-site.service")
    script = root / "usr/local/sbin/lbtest-site"
    script.parent.mkdir(parents=True)
    script.write_text(SCRIPT)
    script.chmod(0o755)
    storage = root / "usr/local/lib/lbtest/storage.py"
    storage.parent.mkdir(parents=True)
    shutil.copy(HERE / "guest_storage.py", storage)
    return root


@pytest.fixture(scope="module")
def site_boot(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One boot of the node; everything the tests look at, gathered while the LAN is up."""
    tmp = tmp_path_factory.mktemp("site")
    paths = Paths(tmp / "store")
    store = store_with_cached_key(paths)
    built = debian_base()
    base = store.import_squashfs(built.image, kind="base", description=built.layer.description).digest
    kernel = fetch_kernel()
    modules = import_modules_layer(store, kernel, base).digest
    initrd = build_initrd(kernel, paths.public_key, tmp / "initrd.img", cache=CACHE / "initrd")
    profiles = Profiles(store)
    profiles.create("site", base, cmdline=CMDLINE.replace(" quiet", ""),
                    kernel=store.import_boot_file(kernel.image, kind="kernel").digest,
                    initrd=store.import_boot_file(initrd.path, kind="initrd").digest)
    profiles.set_boot("site", modules=modules)
    url = f"http://{NET}.1:8098"
    serial = tmp / "serial.log"
    result: dict = {"tmp": tmp}
    try:
        with Lan() as lan:
            srv = lan.host("srv", f"{NET}.1/24")
            lab = SiteLab(lan, tmp, srv)
            config = lab.config(paths.root, f"{NET}.1", f"{NET}.0/24",
                                extra=f'[server]\npublic_url = "{url}"\n')
            overlay = store.import_tree(overlay_tree(tmp / "overlay", config), kind="overlay", base=base,
                                        all_root=True).digest
            profiles.add("site", overlay)
            lab.cli(config, "nodes", "register", MAC, "--profile", "site")
            result["apply"] = lab.cli(config, "services", "apply", "--no-restart").text
            lab.rsyslogd()
            lab.chronyd()
            lab.dnsmasq()
            start_daemon(lan, srv, config, url, tmp / "layerbootd.log")
            pxe = lan.spawn(srv, [sys.executable, "-m", "layerboot", "-c", str(config), "pxe", "-i", "eth0",
                                  "--tftp-root", str(tmp_tftp(tmp)), "--range", f"{NET}.100,{NET}.120",
                                  "--server-url", url], log=open(tmp / "pxe.log", "wb"))
            assert wait_for(lambda: "TFTP root is" in (tmp / "pxe.log").read_text() or pxe.poll() is not None, 20)
            started = time.monotonic()
            qemu = start_guest(lan, tmp, mac=MAC, memory_mb=1536, serial=serial)

            def console() -> str:
                return serial.read_text(errors="replace") if serial.exists() else ""
            wait_for(lambda: PASS in console() or qemu.poll() is not None, 900, 1.0)
            result["seconds"] = time.monotonic() - started
            result["console"] = console()
            result["powered_off"] = wait_for(lambda: qemu.poll() is not None, 120, 1.0)
            try:
                lab.wait_log(f"{NODE}/lbtest-runtime.log", "runtime done", timeout=20)
            except AssertionError:
                pass
            result["status"] = json.loads(lab.cli(config, "services", "status", "--json").text)["services"]
            result["logs"] = {str(p.relative_to(lab.logs)): p.read_text(errors="replace")
                              for p in lab.logs.rglob("*.log")}
            result["layerbootd"] = (tmp / "layerbootd.log").read_text()
    finally:
        shutil.rmtree(tmp_tftp(tmp), ignore_errors=True)
    text = result["console"]
    line = next((line for line in text.splitlines() if PASS in line), "")
    print(f"site node: PXE to '{PASS}' in {result['seconds']:.0f} s (debootstrap base {built.seconds:.0f} s)")
    assert line, f"no pass line; console tail:\n{text[-5000:]}\n{result['layerbootd'][-2000:]}"
    return result


def site_lines(boot: dict, prefix: str) -> list[str]:
    return [line.split(prefix, 1)[1].strip() for line in boot["console"].splitlines() if prefix in line]


def test_boot_and_runtime_logs_reach_the_server(site_boot: dict) -> None:
    logs = site_boot["logs"]
    stage1 = logs.get(f"{NODE}/layerboot/stage1.log", "")
    assert "boot messages go to the log server udp://10.98.0.1:514" in stage1, sorted(logs)
    # the lines of the stages before the network came up were kept and sent first, in order
    order = [stage1.find(text) for text in ("drivers:", "boot interface", "manifest: profile site",
                                           "switching to the new root")]
    assert -1 not in order and order == sorted(order), stage1[:3000]
    assert "FAILED" not in stage1
    runtime = logs.get(f"{NODE}/lbtest-runtime.log", "")
    assert f"runtime message from {NODE}" in runtime and "runtime done" in runtime
    assert "Reached target" in logs.get(f"{NODE}/systemd.log", ""), sorted(logs)      # the journal, forwarded
    assert f"{NODE}/kernel.log" in logs                                                 # the kernel's, by rsyslog
    assert not any(name.startswith("unregistered/") for name in logs), sorted(logs)
    # and the node kept none of it on its own disk: no /var/log/syslog & co., the journal only in RAM
    assert site_lines(site_boot, "LBSITE local-logs") == ["0"]
    assert site_lines(site_boot, "LBSITE journal") == ["0 1"]
    assert "Traceback" not in site_boot["console"]


def test_the_node_clock_follows_the_server(site_boot: dict) -> None:
    assert site_lines(site_boot, "LBSITE waitsync") == ["0"], site_boot["console"][-3000:]
    tracking = "\n".join(site_lines(site_boot, "LBSITE tracking"))
    assert re.search(r"Reference ID\s*:\s*0A620001 \(10\.98\.0\.1\)", tracking), tracking
    assert re.search(r"Stratum\s*:\s*11", tracking) and re.search(r"Leap status\s*:\s*Normal", tracking), tracking
    [learnt] = site_lines(site_boot, "LBSITE net.json")               # DHCP options 7, 42 and 15 reached stage1
    assert "LAYERBOOT_NTP='10.98.0.1'" in learnt and "LAYERBOOT_LOG_SERVERS='10.98.0.1'" in learnt
    assert "LAYERBOOT_DOMAIN='cluster.internal'" in learnt


def test_dns_answers_for_the_node(site_boot: dict) -> None:
    [forward] = site_lines(site_boot, "LBSITE dns")
    assert re.fullmatch(rf"10\.98\.0\.1(0[0-9]|1[0-9]|20)\s+{NODE}\.cluster\.internal(\s+{NODE})?", forward), forward
    [reverse] = site_lines(site_boot, "LBSITE rdns")
    assert f"{NODE}.cluster.internal" in reverse
    status = {s["name"]: s for s in site_boot["status"]}
    for name, ports in (("syslog", {"udp/514", "tcp/514"}), ("time", {"ntp/123"}), ("dns", {"udp/53", "tcp/53"})):
        assert status[name]["pid"] and ports <= set(status[name]["listening"]), status[name]
        assert status[name]["configured"] == "yes" and status[name]["last_error"] == "", status[name]


def test_data_area_layouts_on_loop_disks_in_the_guest(site_boot: dict) -> None:
    results = {r["kind"]: r for r in (json.loads(x) for x in site_lines(site_boot, "LBSTORAGE"))}
    for kind, pvs in (("raid1", None), ("lvm", 2), ("raid1-lvm", 1)):
        result = results[kind]
        assert "error" not in result, f"{kind}: {result.get('error')}\n{result.get('trace')}\n{result.get('state')}"
        assert set(result["first"].values()) == {"done"}, result["first"]
        # a second run finds it all in place (assembling, activating); only the release does something
        assert {k: v for k, v in result["second"].items() if k != "data-release"} == \
            {k: "ok (already)" for k in result["second"] if k != "data-release"}, result["second"]
        assert result["facts"]["fs"] == ["ext4", "layerboot-data", True]
        if kind != "lvm":
            assert "MD_LEVEL=raid1" in result["facts"]["md"] and "MD_DEVICES=2" in result["facts"]["md"]
            assert result["facts"]["md_uuid_matches"]
        if pvs:
            assert result["facts"]["pvs"] == pvs
        assert result["file"] == ["kept across a release\n"] * 2
        assert result["record"]["kind"] == kind and len(result["record"]["members"]) == 2
    refusal = results["refusal"]
    assert "error" not in refusal, refusal
    assert re.match(r"action data2-ptable refused: /dev/loop\d+ holds a ext4 filesystem on the whole disk; "
                    r"pass --wipe", refusal["refused"]), refusal
    assert refusal["untouched"] and refusal["reported"][-1].startswith("[data2-ptable] ptable")
    assert set(refusal["wiped"].values()) == {"done"}
    zfs = results["zfs-mirror"]
    assert zfs["available"] is False and "ZFS is not available" in zfs["error"]      # Debian's kernel: no zfs.ko
