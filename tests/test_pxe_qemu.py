"""A QEMU guest PXE-boots through `layerboot pxe` on a namespace-only network and reaches the per-MAC URL.

The guest's NIC ROM is iPXE (ipxe-qemu). Its DHCP request carries user class "iPXE", so in full-DHCP mode it
is handed layerbootd's URL ``http://HOST:PORT/boot/${netX/mac}.ipxe`` directly; in proxy mode (a second plain
dnsmasq hands out the address) it fetches our TFTP chain script first. A small HTTP server stands in for
layerbootd: it answers ``/boot/<mac>.ipxe`` with a script that fetches a marker URL and powers the guest off.
The test passes when the server saw both requests, in order, with the guest's MAC expanded by iPXE. (Debian's
iPXE ROMs print to the VGA console only, so the HTTP requests are the evidence; QEMU is then stopped.)
"""

from __future__ import annotations

import re
import sys
import time
from urllib.parse import unquote
from pathlib import Path

import pytest

from layerboot.run import Process, run, tool_path

from pxenet import Lan, wait_for
from server_daemon import boot_profile, write_config
from test_pxe_dnsmasq import start_pxe, tmp_tftp

MAC = "52:54:00:4c:42:01"
HTTP_SERVER = r'''
import http.server, sys
LOG = open(sys.argv[2], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        LOG.write(self.path + "\n")
        if self.path.startswith("/boot/") and self.path.endswith(".ipxe"):
            body = ("#!ipxe\necho layerboot-pxe-test: script for ${net0/mac}\n"
                    "imgfetch http://${next-server}:%s/marker/${net0/mac} || imgfetch %s/marker/${net0/mac}\n"
                    "poweroff || exit\n" % (sys.argv[1], sys.argv[3])).encode()
        elif self.path.startswith("/marker/"):
            body = b"ok\n"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
'''

def start_guest(lan: Lan, tmp_path: Path, *, mac: str = MAC, memory_mb: int = 256,
                serial: Path | None = None) -> Process:
    """A diskless guest on a tap device on the test bridge, network boot only; its NIC ROM is iPXE."""
    tap = lan.tap("tap0")
    console = ["-serial", f"file:{serial}", "-device", "virtio-rng-pci"] if serial else ["-vga", "std"]
    return lan.spawn(lan.bridge_ns, [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", str(memory_mb), "-nodefaults",
        "-display", "none", "-monitor", "none", *console, "-boot", "n", "-no-reboot",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={mac}"], log=open(tmp_path / "qemu.log", "wb"))


def start_daemon(lan: Lan, ns: str, config: Path, url: str, log: Path, listen: str = "0.0.0.0") -> None:
    """The real layerbootd inside the server namespace, listening on every address there; waits until it answers."""
    port = url.rsplit(":", 1)[1]
    lan.spawn(ns, [sys.executable, "-m", "layerboot.server.main", "--config", str(config), "--port", port,
                   "--listen", listen], log=open(log, "wb"))
    answers = [sys.executable, "-c", "import sys, urllib.request as u, urllib.error as e\n"
               "try: u.urlopen(sys.argv[1], timeout=2)\nexcept e.HTTPError: pass", url + "/"]
    assert wait_for(lambda: lan.run(ns, answers, check=False).returncode == 0, 20), log.read_text()


needs_qemu = pytest.mark.skipif(
    not (tool_path("qemu-system-x86_64") and tool_path("dnsmasq") and Path("/usr/share/qemu").is_dir()),
    reason="needs qemu-system-x86, ipxe-qemu and dnsmasq-base")


@pytest.mark.qemu
@pytest.mark.root
@needs_qemu
@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_qemu_ipxe_rom_chains_to_the_per_mac_url(tmp_path: Path, mode: str) -> None:
    net = "10.97.0" if mode == "full" else "10.98.0"
    url = f"http://{net}.1:8099"
    try:
        with Lan() as lan:
            srv = lan.host("srv", f"{net}.1/24")
            http_log = tmp_path / "http.log"
            http_log.touch()
            server = tmp_path / "server.py"
            server.write_text(HTTP_SERVER)
            lan.spawn(srv, [sys.executable, str(server), "8099", str(http_log), url])
            if mode == "full":
                _, pxe_log = start_pxe(lan, srv, tmp_path, "--range", f"{net}.100,{net}.120", "--server-url", url)
            else:
                site = lan.host("site", f"{net}.2/24")
                lan.spawn(site, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                                 "--pid-file=", "--interface=eth0", "--bind-interfaces", "--log-facility=-",
                                 "--log-dhcp",
                                 f"--dhcp-range={net}.50,{net}.59,1h", f"--dhcp-leasefile={tmp_path}/site.leases"],
                          log=open(tmp_path / "site.log", "wb"))
                _, pxe_log = start_pxe(lan, srv, tmp_path, "--server-url", url)
            started = time.monotonic()
            qemu = start_guest(lan, tmp_path)

            def requests() -> list[str]:
                # iPXE percent-encodes the MAC's colons in the URL; a server sees the decoded path.
                # ("/" is `layerboot pxe` checking at start that the server answers.)
                return [unquote(line) for line in http_log.read_text().split() if line != "/"]
            reached = wait_for(lambda: f"/marker/{MAC}" in requests() or qemu.poll() is not None, 240, 0.5)
            elapsed = time.monotonic() - started
            print(f"{mode}: iPXE ran the per-MAC script {elapsed:.1f} s after QEMU started; requests {requests()}")
            assert reached and qemu.poll() is None, f"QEMU exited early ({qemu.poll()})"
            assert requests()[:2] == [f"/boot/{MAC}.ipxe", f"/marker/{MAC}"], requests()
            # dnsmasq's log lines reach us through a pipe: give the last ones a moment
            # (dnsmasq logs the boot file as "bootfile name: F" or, sent as option 67, "bootfile-name  F")
            boot_file = f"{url}/boot/${{netX/mac}}.ipxe" if mode == "full" else "layerboot.ipxe"
            expected = [r"user class: iPXE", r"bootfile.name:?\s+" + re.escape(boot_file)]
            if mode == "proxy":
                expected.append(r"dnsmasq-tftp.*sent \S*/layerboot\.ipxe to")
            assert wait_for(lambda: all(re.search(e, pxe_log.read_text()) for e in expected), 10), \
                pxe_log.read_text()[-3000:]
            if mode == "proxy":
                assert f"DHCPACK(eth0) {net}.5" in (tmp_path / "site.log").read_text()   # address: the site's
    finally:
        import shutil
        shutil.rmtree(tmp_tftp(tmp_path), ignore_errors=True)


@pytest.mark.qemu
@pytest.mark.root
@needs_qemu
def test_qemu_pxe_into_the_real_layerbootd(tmp_path: Path, profiles, make_layer) -> None:  # noqa: ANN001
    """`layerboot pxe` + the real layerbootd on one namespace network: the guest's iPXE takes the per-MAC
    script from the daemon and fetches the kernel and initrd it names (fake ones: the boot itself is tested
    by test_boot_qemu; this is about getting there)."""
    net, port = "10.96.0", 8098
    url = f"http://{net}.1:{port}"
    store = profiles.store
    digests = boot_profile(profiles, make_layer, tmp_path)
    base_cmd = [sys.executable, "-m", "layerboot", "-s", str(store.paths.root)]
    run([*base_cmd, "nodes", "register", MAC, "--profile", "p1"])
    config = write_config(tmp_path / "layerbootd.toml", store.paths, debug=True)
    try:
        with Lan() as lan:
            srv = lan.host("srv", f"{net}.1/24")
            daemon_log = tmp_path / "layerbootd.log"
            start_daemon(lan, srv, config, url, daemon_log)
            _, pxe_log = start_pxe(lan, srv, tmp_path, "--range", f"{net}.100,{net}.120", "--server-url", url)
            assert "layerbootd does not answer" not in pxe_log.read_text()
            started = time.monotonic()
            qemu = start_guest(lan, tmp_path)

            def served(fragment: str) -> bool:
                return re.search(r"GET \S*" + re.escape(fragment) + r"\S* 200", daemon_log.read_text()) is not None
            reached = wait_for(lambda: served(digests["initrd"]) or qemu.poll() is not None, 240, 0.5)
            print(f"iPXE fetched kernel and initrd from layerbootd {time.monotonic() - started:.1f} s after start")
            log = daemon_log.read_text()
            # The guest may already be gone: with fake boot files iPXE fails to boot them, and -no-reboot
            # ends QEMU. What counts is that it fetched them first (the daemon's log says so).
            assert reached and served(digests["initrd"]), log[-3000:]
            assert served(f"/boot/{MAC}.ipxe"), log[-3000:]
            assert served(f"/objects/{digests['kernel']}"), log[-3000:]
    finally:
        import shutil
        shutil.rmtree(tmp_tftp(tmp_path), ignore_errors=True)
