"""`layerboot pxe` against real clients: dnsmasq in a server namespace, DHCP clients in another, one bridge.

Full-DHCP mode is checked with busybox udhcpc (a real client that takes a lease) posing as a BIOS ROM, a UEFI
ROM and iPXE; the boot files are then fetched over TFTP and compared with Debian's. Proxy mode runs a second,
plain dnsmasq as the site's DHCP server and checks that the address comes from it while the boot file comes
from us (through the PXE boot-server request on port 4011, as a ROM does it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.run import tool_path
from layerboot.server.dnsmasq import render_config
from layerboot.server.pxe import PxePlan, check_server_url, parse_range

from pxenet import Lan, wait_for

HERE = Path(__file__).parent
PROBE = str(HERE / "dhcpprobe.py")
IPXE = Path("/usr/lib/ipxe")
BIOS_VENDOR = "PXEClient:Arch:00000:UNDI:002001"
EFI_VENDOR = "PXEClient:Arch:00007:UNDI:003016"
UDHCPC_SCRIPT = "#!/bin/sh\necho \"EVENT=$1\"\nenv | grep -E '^(ip|boot_file|siaddr|serverid)=' | sort\n"
needs_net = pytest.mark.skipif(not (tool_path("dnsmasq") and tool_path("busybox") and IPXE.is_dir()),
                               reason="needs dnsmasq-base, busybox-static and ipxe")


# -- option checks (no network) -----------------------------------------------------------------------------
def test_server_url_must_be_plain_http_base() -> None:
    assert check_server_url("http://10.0.0.1:8080/") == "http://10.0.0.1:8080"
    for bad in ("10.0.0.1:8080", "ftp://x", "http://x:1/boot", "http://x:1/?a", "http://x,y:1",
                "http://${next-server}:1", "http://x:1\\"):          # iPXE would expand or continue these
        with pytest.raises(LayerbootError):
            check_server_url(bad)


def test_range_must_sit_in_the_interface_subnet() -> None:
    net = ipaddress.IPv4Network("10.5.0.0/24")
    assert parse_range("10.5.0.10,10.5.0.20", net) == (ipaddress.IPv4Address("10.5.0.10"),
                                                       ipaddress.IPv4Address("10.5.0.20"))
    for bad in ("10.5.0.10", "10.6.0.1,10.6.0.9", "10.5.0.20,10.5.0.10", "a,b"):
        with pytest.raises(LayerbootError):
            parse_range(bad, net)


def test_rendered_config_per_mode() -> None:
    """What dnsmasq is told, without running it (the namespace tests below run it)."""
    common = dict(interface="eth1", network=ipaddress.IPv4Network("10.7.0.0/24"),
                  address=ipaddress.IPv4Address("10.7.0.1"), server_url="http://10.7.0.1:8080",
                  tftp_root=Path("/srv/tftp"), state_dir=Path("/var/lib/layerboot/state/pxe"))
    full = render_config(PxePlan(**common, proxy=False, range_start=ipaddress.IPv4Address("10.7.0.100"),
                                 range_end=ipaddress.IPv4Address("10.7.0.200"))).splitlines()
    proxy = render_config(PxePlan(**common, proxy=True, efi_binary="ipxe.efi")).splitlines()
    for lines in (full, proxy):
        assert {"port=0", "interface=eth1", "enable-tftp", "tftp-root=/srv/tftp", "dhcp-userclass=set:ipxe,iPXE",
                "dhcp-match=set:ipxe,175"} <= set(lines)
    assert "dhcp-range=10.7.0.100,10.7.0.200,255.255.255.0,1h" in full
    assert [line for line in full if line.startswith("dhcp-boot=")] == [
        "dhcp-boot=tag:ipxe,http://10.7.0.1:8080/boot/${netX/mac}.ipxe",
        "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
        "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe"]
    assert not any(line.startswith("pxe-service") for line in full)
    assert "dhcp-range=10.7.0.0,proxy,255.255.255.0" in proxy
    assert not any(line.startswith("dhcp-boot") for line in proxy)
    services = [line for line in proxy if line.startswith("pxe-service=")]
    assert 'pxe-service=tag:!ipxe,x86-64_EFI,"layerboot: chain to iPXE",ipxe.efi' in services
    assert all(line.endswith(",layerboot.ipxe") for line in services if line.startswith("pxe-service=tag:ipxe"))


# -- helpers --------------------------------------------------------------------------------------------------
def start_pxe(lan: Lan, ns: str, tmp: Path, *args: str):  # noqa: ANN201
    """Start `layerboot pxe` in ns; wait until dnsmasq serves TFTP. Returns (process, log path)."""
    log_path = tmp / f"pxe-{ns}.log"
    log = open(log_path, "wb")
    proc = lan.spawn(ns, [sys.executable, "-m", "layerboot", "-s", str(tmp / "store"), "pxe", "-i", "eth0",
                          "--tftp-root", str(tmp_tftp(tmp)), *args], log=log)
    assert wait_for(lambda: "TFTP root is" in log_path.read_text() or proc.poll() is not None, 20), \
        log_path.read_text()
    assert proc.poll() is None, log_path.read_text()
    return proc, log_path


def tmp_tftp(tmp: Path) -> Path:
    """dnsmasq serves TFTP as 'nobody', so the root must be reachable: pytest's tmp dirs are 0700."""
    root = Path("/tmp") / f"lbt-tftp-{tmp.name}-{os.getpid()}"
    return root


def udhcpc(lan: Lan, ns: str, script: Path, *options: str) -> dict[str, str]:
    result = lan.run(ns, ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-s", str(script),
                          "-t", "6", "-T", "1", *options], check=False, timeout=30)
    values = dict(line.split("=", 1) for line in result.text.splitlines() if "=" in line)
    assert values.get("EVENT") == "bound", result.text + result.stderr.decode()
    return values


def probe(lan: Lan, ns: str, *args: str, count: int = 0) -> list[dict]:
    """Offers seen by the probe; with ``count`` it stops once that many came (it still waits when fewer do)."""
    result = lan.run(ns, [sys.executable, PROBE, "--interface", "eth0", "--count", str(count), *args], timeout=30)
    return json.loads(result.text)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "udhcpc.sh"
    path.write_text(UDHCPC_SCRIPT)
    path.chmod(0o755)
    return path


@pytest.fixture
def tftp_cleanup(tmp_path: Path):  # noqa: ANN201
    yield
    import shutil
    shutil.rmtree(tmp_tftp(tmp_path), ignore_errors=True)


# -- full DHCP -----------------------------------------------------------------------------------------------
@pytest.mark.root
@needs_net
def test_full_dhcp_boot_file_per_client_and_tftp_bytes(tmp_path: Path, script: Path, tftp_cleanup: None) -> None:
    with Lan() as lan:
        srv = lan.host("srv", "10.91.0.1/24")
        cli = lan.host("cli")
        _, log = start_pxe(lan, srv, tmp_path, "--range", "10.91.0.100,10.91.0.120",
                           "--server-url", "http://10.91.0.1:8080")
        # no layerbootd on this network: said at start, and dnsmasq is started all the same
        assert "layerboot: warning: layerbootd does not answer at http://10.91.0.1:8080" in log.read_text()

        bios = udhcpc(lan, cli, script, "-V", BIOS_VENDOR, "-x", "0x5d:0000")
        assert ipaddress.IPv4Address(bios["ip"]) in ipaddress.IPv4Network("10.91.0.96/27")
        assert 100 <= int(bios["ip"].rsplit(".", 1)[1]) <= 120
        assert bios["boot_file"] == "undionly.kpxe"
        assert bios["siaddr"] == "10.91.0.1"

        efi = udhcpc(lan, cli, script, "-V", EFI_VENDOR, "-x", "0x5d:0007")
        assert efi["boot_file"] == "snponly.efi"
        efi9 = udhcpc(lan, cli, script, "-V", "PXEClient:Arch:00009:UNDI:003016", "-x", "0x5d:0009")
        assert efi9["boot_file"] == "snponly.efi"

        # iPXE: user class "iPXE" -> straight to layerbootd's per-MAC script, whatever the arch
        ipxe = udhcpc(lan, cli, script, "-x", "0x5d:0000", "-x", "0x4d:69505845")
        assert ipxe["boot_file"] == "http://10.91.0.1:8080/boot/${netX/mac}.ipxe"
        # iPXE also recognised by option 175 alone
        ipxe175 = udhcpc(lan, cli, script, "-x", "0x5d:0007", "-x", "0xaf:b10101")
        assert ipxe175["boot_file"] == "http://10.91.0.1:8080/boot/${netX/mac}.ipxe"

        lan.ip(cli, "addr", "add", f"{bios['ip']}/24", "dev", "eth0")
        for name in ("undionly.kpxe", "snponly.efi", "ipxe.efi", "layerboot.ipxe"):
            local = tmp_path / f"got-{name}"
            lan.run(cli, ["busybox", "tftp", "-g", "-r", name, "-l", str(local), "10.91.0.1"], timeout=60)
            if name == "layerboot.ipxe":
                assert "chain --autofree http://10.91.0.1:8080/boot/${netX/mac}.ipxe" in local.read_text()
            else:
                assert local.read_bytes() == (IPXE / name).read_bytes(), name


# -- proxy DHCP ----------------------------------------------------------------------------------------------
def pxe_menu(option43_hex: str) -> list[int]:
    """Boot item types from a PXE vendor option (suboption 9, the boot menu)."""
    data = bytes.fromhex(option43_hex)
    i, items = 0, []
    while i < len(data) and data[i] != 255:
        code, length = data[i], data[i + 1]
        body = data[i + 2:i + 2 + length]
        if code == 9:
            j = 0
            while j + 3 <= len(body):
                items.append(int.from_bytes(body[j:j + 2], "big"))
                j += 3 + body[j + 2]
        i += 2 + length
    return items


@pytest.mark.root
@needs_net
def test_proxy_dhcp_keeps_the_site_server_in_charge(tmp_path: Path, tftp_cleanup: None) -> None:
    with Lan() as lan:
        srv = lan.host("srv", "10.92.0.1/24")
        site = lan.host("site", "10.92.0.2/24")
        cli = lan.host("cli")
        site_log = tmp_path / "site.log"
        lan.spawn(site, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--pid-file=",
                         "--interface=eth0", "--bind-interfaces", "--log-facility=-",
                         "--dhcp-range=10.92.0.50,10.92.0.59,1h", f"--dhcp-leasefile={tmp_path}/site.leases"],
                  log=open(site_log, "wb"))
        assert wait_for(lambda: "DHCP, IP range" in site_log.read_text(), 10)
        _, log = start_pxe(lan, srv, tmp_path, "--server-url", "http://10.92.0.1:8080")

        # a plain client (no PXE vendor class) hears only the site's server
        plain = probe(lan, cli)
        assert [o["server_id"] for o in plain] == ["10.92.0.2"]

        # a BIOS PXE ROM: an address from the site, a boot menu (no address) from us
        offers = probe(lan, cli, "--arch", "0", "--vendor", BIOS_VENDOR, count=2)
        by_server = {o["server_id"]: o for o in offers}
        assert set(by_server) == {"10.92.0.1", "10.92.0.2"}, offers
        assert ipaddress.IPv4Address(by_server["10.92.0.2"]["yiaddr"]) in ipaddress.IPv4Network("10.92.0.48/28")
        ours = by_server["10.92.0.1"]
        assert ours["yiaddr"] == "0.0.0.0" and ours["vendor_class"] == "PXEClient"
        menu = pxe_menu(ours["pxe_options"])
        assert len(menu) == 1, ours

        # the ROM takes the site's address, then asks our boot server (port 4011) for the file
        address = by_server["10.92.0.2"]["yiaddr"]
        lan.ip(cli, "addr", "add", f"{address}/24", "dev", "eth0")
        ack = probe(lan, cli, "--arch", "0", "--vendor", BIOS_VENDOR, "--boot-server", "10.92.0.1",
                    "--boot-item", str(menu[0]), count=1)
        assert [a["file"] for a in ack] == ["undionly.kpxe"]

        # iPXE (user class) is given the TFTP chain script instead
        ipxe = [o for o in probe(lan, cli, "--arch", "0", "--vendor", BIOS_VENDOR, "--user-class", "iPXE", count=2)
                if o["server_id"] == "10.92.0.1"]
        item = pxe_menu(ipxe[0]["pxe_options"])
        ack = probe(lan, cli, "--arch", "0", "--vendor", BIOS_VENDOR, "--user-class", "iPXE",
                    "--boot-server", "10.92.0.1", "--boot-item", str(item[0]), count=1)
        assert [a["file"] for a in ack] == ["layerboot.ipxe"]

        # UEFI: our offer names us as next server; the boot-server answer is the EFI build
        efi = [o for o in probe(lan, cli, "--arch", "7", "--vendor", EFI_VENDOR, count=2)
               if o["server_id"] == "10.92.0.1"]
        assert efi and efi[0]["siaddr"] == "10.92.0.1"
        # UEFI ROMs get no menu; dnsmasq numbers its pxe-service lines 0x8000 + index (ours: line 2)
        ack = probe(lan, cli, "--arch", "7", "--vendor", EFI_VENDOR, "--boot-server", "10.92.0.1",
                    "--boot-item", str(0x8001), count=1)
        assert [a["file"] for a in ack] == ["snponly.efi"]
        assert "proxy" in log.read_text()


# -- supervision -----------------------------------------------------------------------------------------------
def dnsmasq_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"dnsmasq\[(\d+)\]: started", log.read_text())]


@pytest.mark.root
@needs_net
def test_supervisor_restarts_dnsmasq_and_stops_on_sigterm(tmp_path: Path, script: Path, tftp_cleanup: None) -> None:
    with Lan() as lan:
        srv = lan.host("srv", "10.93.0.1/24")
        cli = lan.host("cli")
        proc, log = start_pxe(lan, srv, tmp_path, "--range", "10.93.0.100,10.93.0.110",
                              "--server-url", "http://10.93.0.1:8080")
        first, = dnsmasq_pids(log)
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: len(dnsmasq_pids(log)) == 2, 15), log.read_text()
        assert "exited with status -9; restarting" in log.read_text()
        assert wait_for(lambda: "TFTP root is" in log.read_text().split("start #2")[-1], 10)
        lease = udhcpc(lan, cli, script, "-V", BIOS_VENDOR, "-x", "0x5d:0000")
        assert lease["boot_file"] == "undionly.kpxe"

        second = dnsmasq_pids(log)[1]
        os.kill(proc.pid, signal.SIGTERM)       # ip netns exec execs: this is layerboot itself
        assert proc.wait(timeout=15) == 0
        assert not Path(f"/proc/{second}").exists()
        assert "received SIGTERM: stopping" in log.read_text()
        assert "dnsmasq stopped" in log.read_text()


@pytest.mark.root
@needs_net
def test_bad_options_fail_in_one_line_before_starting(tmp_path: Path, tftp_cleanup: None) -> None:
    with Lan() as lan:
        srv = lan.host("srv", "10.94.0.1/24")
        base = [sys.executable, "-m", "layerboot", "-s", str(tmp_path / "store"), "pxe",
                "--tftp-root", str(tmp_tftp(tmp_path)), "--server-url", "http://10.94.0.1:8080"]
        cases = {
            ("-i", "eth0", "--range", "10.95.0.10,10.95.0.20"): "not inside the interface's subnet",
            ("-i", "eth0", "--range", "10.94.0.1,10.94.0.20"): "contains the server's own address",
            ("-i", "nosuch0"): "no network interface 'nosuch0'",
        }
        for args, message in cases.items():
            result = lan.run(srv, [*base, *args], check=False, timeout=30)
            err = result.stderr.decode()
            assert result.returncode == 1, err
            assert message in err and "Traceback" not in err
            assert err.startswith("layerboot: error:")
        bare = lan.host("bare")          # an interface without an IPv4 address
        result = lan.run(bare, [*base, "-i", "eth0"], check=False, timeout=30)
        assert result.returncode == 1 and "interface eth0 has no IPv4 address" in result.stderr.decode()
        assert not (tmp_path / "store" / "state" / "pxe" / "dnsmasq.conf").exists()


@pytest.mark.root
@needs_net
def test_config_file_drives_pxe_and_flags_override(tmp_path: Path, tftp_cleanup: None) -> None:
    config = tmp_path / "layerboot.toml"
    config.write_text(f'[store]\nroot = "{tmp_path / "store"}"\n[server]\npublic_url = "http://10.95.0.1:8080"\n'
                      '[pxe]\ninterface = "eth0"\nrange = "10.95.0.100,10.95.0.110"\nefi_binary = "ipxe.efi"\n')
    with Lan() as lan:
        srv = lan.host("srv", "10.95.0.1/24")
        base = [sys.executable, "-m", "layerboot", "-c", str(config), "pxe", "--print-config"]
        full = lan.run(srv, base, timeout=30).text
        assert "interface=eth0" in full and "dhcp-range=10.95.0.100,10.95.0.110,255.255.255.0,1h" in full
        assert "dhcp-boot=tag:ipxe,http://10.95.0.1:8080/boot/${netX/mac}.ipxe" in full   # server.public_url
        assert "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi" in full
        proxy = lan.run(srv, [*base, "--proxy", "--server-url", "http://10.95.0.1:9000"], timeout=30).text
        assert "dhcp-range=10.95.0.0,proxy,255.255.255.0" in proxy and "dhcp-boot" not in proxy
        assert "10.95.0.100" not in proxy
        config.write_text(f'[store]\nroot = "{tmp_path / "store"}"\n')
        bare = lan.run(srv, base, check=False, timeout=30)
        assert bare.returncode == 1 and "needs an interface and layerbootd's URL" in bare.stderr.decode()
