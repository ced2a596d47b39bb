"""stage1's net stage against real peers in network namespaces: its DHCPv4 and DHCPv6 clients against dnsmasq,
SLAAC from dnsmasq's router advertisements, static IPv4/IPv6, choosing the boot interface among several NICs
(BOOTIF, carrier, ifname= renames), and what it leaves for the booted system (net.json, net.env, resolv.conf,
the host name). Each test runs main.bring_up_network, the function PID 1 calls, in a client namespace (and a
UTS namespace, so the host name it sets is its own).

The host kernel here has no bonding or 802.1Q, so bonds and VLANs are tested under QEMU
(tests/test_boot_net_qemu.py), where the guest kernel has them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.initrd.stage1.dhcp import DISCOVER, OFFER, build_packet, dns_names, lease_from, parse_packet
from layerboot.run import Process, require_tool, run

from pxenet import wait_for

MAC = "52:54:00:aa:bb:cc"
MAC2 = "52:54:00:aa:bb:dd"

STAGE1 = r"""
import json, sys
from layerboot.initrd.stage1.cmdline import parse_cmdline
from layerboot.initrd.stage1.console import StageError
from layerboot.initrd.stage1.main import Boot, bring_up_network
options = parse_cmdline(sys.argv[1])
boot = Boot()
try:
    written = bring_up_network(options, boot, run_dir=sys.argv[2] + "/run", etc=sys.argv[2] + "/etc")
except StageError as err:
    print(json.dumps({"error": str(err)}))
    raise SystemExit(0)
print(json.dumps({"written": written, "node": boot.node,
                  "hostname": open("/proc/sys/kernel/hostname").read().strip(),
                  "record": json.load(open(sys.argv[2] + "/run/net.json"))}))
"""


class Netns:
    """A client namespace (stage1's side) and a server namespace, joined by veth pairs (client NIC <-> port)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.tag = f"lbn{os.getpid() % 100000}"
        self.server, self.client = f"{self.tag}s", f"{self.tag}c"
        self.processes: list[Process] = []

    def __enter__(self) -> "Netns":
        for ns in (self.server, self.client):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.processes:
            proc.terminate(timeout=5)
        for ns in (self.server, self.client):
            run(["ip", "netns", "del", ns], check=False)

    def link(self, nic: str, port: str, mac: str, *, up: bool = True, cidrs: tuple[str, ...] = ()) -> None:
        run(["ip", "link", "add", port, "netns", self.server, "type", "veth", "peer", "name", nic,
             "netns", self.client])
        run(["ip", "-n", self.client, "link", "set", nic, "address", mac])
        for cidr in cidrs:
            run(["ip", "-n", self.server, "addr", "add", cidr, "dev", port] + (["nodad"] if ":" in cidr else []))
        if up:
            run(["ip", "-n", self.server, "link", "set", port, "up"])

    def dnsmasq(self, port: str, *args: str) -> Path:
        require_tool("dnsmasq", package="dnsmasq-base")
        log = self.tmp / f"dnsmasq-{port}.log"
        proc = Process(["ip", "netns", "exec", self.server, "dnsmasq", "--keep-in-foreground",
                        "--conf-file=/dev/null", "--port=0", f"--interface={port}", "--bind-interfaces",
                        "--log-dhcp", "--log-facility=-", f"--dhcp-leasefile={self.tmp}/{port}.leases",
                        "--pid-file=", *args], stdout=open(log, "wb"), stderr=open(log, "ab"))
        self.processes.append(proc)
        assert wait_for(lambda: "started" in log.read_text() or proc.poll() is not None, 10), log.read_text()
        assert proc.poll() is None, log.read_text()
        return log

    def stage1(self, cmdline: str, *, timeout: float = 90) -> dict:
        """Run stage1's net stage in the client namespace (own UTS namespace); its JSON result."""
        root = self.tmp / "stage1"
        root.mkdir(exist_ok=True)
        result = run(["ip", "netns", "exec", self.client, "unshare", "--uts", sys.executable, "-c", STAGE1,
                      cmdline, root], timeout=timeout, env={"PYTHONPATH": os.pathsep.join(sys.path)})
        return json.loads(result.text.strip().splitlines()[-1])

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.client, *args]).text

    def ping(self, address: str) -> None:
        run(["ip", "netns", "exec", self.client, "busybox", "ping", "-c1", "-W5", address])

    def links(self) -> dict[str, dict]:
        return {link["ifname"]: link for link in json.loads(self.ip("-j", "link", "show"))}


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Netns]:
    with Netns(tmp_path) as net:
        yield net


# -- DHCPv4 packets (no network) -----------------------------------------------------------------------------
def test_dhcp_packets_round_trip() -> None:
    discover = build_packet(DISCOVER, 0x1234, MAC)
    assert discover[0] == 1 and discover[28:34] == bytes.fromhex("525400aabbcc")
    # A server reply is the same layout with op=2, yiaddr and options.
    reply = bytearray(build_packet(OFFER, 0x1234, MAC, requested="10.9.8.7"))
    reply[0] = 2
    reply[16:20] = bytes([10, 9, 8, 7])
    kind, address, options = parse_packet(bytes(reply), 0x1234)
    assert (kind, address, options[50]) == (OFFER, "10.9.8.7", bytes([10, 9, 8, 7]))
    assert parse_packet(bytes(reply), 0x9999) is None          # another transaction
    assert parse_packet(discover, 0x1234) is None              # a request, not a reply
    assert parse_packet(bytes(reply[:100]), 0x1234) is None    # truncated


def test_dhcp_options_decode() -> None:
    # Option 119 (RFC 3397 example): "eng.apple.com" and "marketing.apple.com" with a compression pointer.
    search = b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"
    assert dns_names(search) == ("eng.apple.com", "marketing.apple.com")
    assert dns_names(b"\x03eng\xc0\x00") == ()                         # a pointer loop ends, no hang
    options = {1: bytes([255, 255, 240, 0]), 3: bytes([10, 0, 0, 1]), 6: bytes([10, 0, 0, 2, 10, 0, 0, 3]),
               12: b"node-1\x00", 15: b"lab.example", 26: (1400).to_bytes(2, "big"), 42: bytes([10, 0, 0, 4]),
               7: bytes([10, 0, 0, 5]), 119: search, 54: bytes([10, 0, 0, 1]), 51: (3600).to_bytes(4, "big")}
    lease = lease_from("10.0.0.9", options)
    assert (lease.address, lease.prefix, lease.router, lease.dns) == ("10.0.0.9", 20, "10.0.0.1",
                                                                      ("10.0.0.2", "10.0.0.3"))
    assert (lease.hostname, lease.domain, lease.mtu, lease.ntp, lease.log_servers, lease.lifetime) == (
        "node-1", "lab.example", 1400, ("10.0.0.4",), ("10.0.0.5",), 3600)
    assert lease.search == ("eng.apple.com", "marketing.apple.com")
    assert lease_from("10.0.0.9", {12: b"bad name;rm"}).hostname == ""  # not a host name: dropped


def test_malformed_dhcp_options_are_dropped_not_fatal() -> None:
    lease = lease_from("10.0.0.9", {1: b"\xff\xff", 3: b"\x0a", 6: b"\x0a\x00\x00\x02\x0a", 26: b"\x05",
                                    119: b"\x09truncated", 15: "lab\u00e9".encode()})
    assert (lease.prefix, lease.router, lease.dns, lease.mtu, lease.search, lease.domain) == (
        24, "", ("10.0.0.2",), 0, (), "")


def test_dhcpv6_replies_are_matched_and_decoded() -> None:
    from layerboot.initrd.stage1 import dhcp6

    client = dhcp6.duid(MAC)
    solicit = dhcp6.build_message(dhcp6.SOLICIT, 0xABCDEF, MAC, ia_na=b"")
    assert solicit[0] == dhcp6.SOLICIT and solicit[1:4] == bytes.fromhex("abcdef")
    assert dhcp6.parse_options(solicit[4:])[dhcp6.OPT_CLIENTID] == [client]
    address = bytes.fromhex("fd770000000000000000000000000123")
    iaaddr = dhcp6.option(dhcp6.OPT_IAADDR, address + (3600).to_bytes(4, "big") + (7200).to_bytes(4, "big"))
    ntp = dhcp6.option(1, bytes.fromhex("fd770000000000000000000000000001")) + dhcp6.option(3, b"\x03ntp\x03lab\x00")
    reply = ((dhcp6.REPLY << 24) | 0xABCDEF).to_bytes(4, "big") + b"".join([
        dhcp6.option(dhcp6.OPT_CLIENTID, client), dhcp6.option(dhcp6.OPT_SERVERID, b"\x00\x01srv"),
        dhcp6.option(dhcp6.OPT_IA_NA, b"\x00" * 12 + iaaddr),
        dhcp6.option(dhcp6.OPT_DNS, bytes.fromhex("fd770000000000000000000000000053")),
        dhcp6.option(dhcp6.OPT_DOMAINS, b"\x03lab\x07example\x00"), dhcp6.option(dhcp6.OPT_NTP, ntp),
        dhcp6.option(dhcp6.OPT_FQDN, b"\x01\x05node7\x03lab\x07example\x00")])
    kind, options = dhcp6.parse_reply(reply, 0xABCDEF, client)
    lease = dhcp6.lease_from(options)
    assert (kind, lease.address, lease.prefix, lease.lifetime) == (dhcp6.REPLY, "fd77::123", 128, 7200)
    assert (lease.dns, lease.search, lease.ntp) == (("fd77::53",), ("lab.example",), ("fd77::1", "ntp.lab"))
    assert (lease.hostname, lease.domain, lease.server) == ("node7", "lab.example", b"\x00\x01srv".hex())
    assert dhcp6.parse_reply(reply, 0x123456, client) is None                  # another transaction
    assert dhcp6.parse_reply(reply, 0xABCDEF, dhcp6.duid(MAC2)) is None        # another client
    assert dhcp6.parse_reply(reply[:3], 0xABCDEF, client) is None              # truncated
    assert dhcp6.lease_from(dhcp6.parse_options(b"\x00\x03\x00\x04abcd")).address == ""   # short IA_NA


# -- against dnsmasq ---------------------------------------------------------------------------------------------
@pytest.mark.root
def test_dhcpv4_options_reach_the_record_resolv_conf_and_host_name(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, cidrs=("10.77.0.1/24",))
    netns.dnsmasq("s0", "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h", f"--dhcp-host={MAC},node-a",
                  "--dhcp-option=3,10.77.0.1", "--dhcp-option=6,10.77.0.1,10.77.0.2",
                  "--dhcp-option=option:domain-name,lab.example",
                  "--dhcp-option=option:domain-search,lab.example,example.org",
                  "--dhcp-option=option:ntp-server,10.77.0.3", "--dhcp-option=option:log-server,10.77.0.4",
                  "--dhcp-option=option:mtu,1400")
    started = time.monotonic()
    out = netns.stage1("layerboot.server=http://10.77.0.1:8080 layerboot.profile=p nameserver=10.77.0.9")
    elapsed = time.monotonic() - started
    record = out["record"]
    assert record["boot_interface"] == "eth0" and out["node"] == MAC and record["node_mac"] == MAC
    assert (record["hostname"], record["domain"], out["hostname"]) == ("node-a", "lab.example", "node-a")
    # nameserver= first, then DHCP's, without duplicates
    assert record["dns"] == ["10.77.0.9", "10.77.0.1", "10.77.0.2"]
    assert record["search"] == ["lab.example", "example.org"]
    assert (record["ntp"], record["log_servers"], record["server"]) == (["10.77.0.3"], ["10.77.0.4"],
                                                                       "http://10.77.0.1:8080")
    eth0 = record["interfaces"][0]
    assert eth0["name"] == "eth0" and eth0["mtu"] == 1400 and eth0["gateway"] == "10.77.0.1"
    assert eth0["addresses"][0].startswith("10.77.0.5") and eth0["addresses"][0].endswith("/24")
    assert eth0["leases"][0]["source"] == "dhcp" and eth0["leases"][0]["server"] == "10.77.0.1"
    assert f"inet {eth0['addresses'][0]}" in netns.ip("-4", "addr", "show", "eth0")
    assert "default via 10.77.0.1 dev eth0" in netns.ip("route")
    run_dir = netns.tmp / "stage1/run"
    assert (run_dir / "resolv.conf").read_text().splitlines()[1:] == [
        "search lab.example example.org", "nameserver 10.77.0.9", "nameserver 10.77.0.1", "nameserver 10.77.0.2"]
    assert (run_dir / "hostname").read_text() == "node-a\n"
    assert (netns.tmp / "stage1/etc/resolv.conf").read_text() == (run_dir / "resolv.conf").read_text()
    env = run(["sh", "-c", f". {run_dir}/net.env && echo \"$LAYERBOOT_HOSTNAME|$LAYERBOOT_NTP|$LAYERBOOT_DNS|"
                           "$LAYERBOOT_GATEWAY|$LAYERBOOT_BOOT_INTERFACE\""]).text.strip()
    assert env == "node-a|10.77.0.3|10.77.0.9 10.77.0.1 10.77.0.2|10.77.0.1|eth0"
    assert sorted(out["written"]) == ["hostname", "net.env", "net.json", "resolv.conf"]
    assert elapsed < 30, f"DHCP took {elapsed:.1f}s"


@pytest.mark.root
def test_peerdns_0_keeps_only_the_command_lines_servers(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, cidrs=("10.77.0.1/24",))
    netns.dnsmasq("s0", "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h", "--dhcp-option=6,10.77.0.1",
                  "--dhcp-option=option:domain-search,lab.example")
    record = netns.stage1("rd.peerdns=0 nameserver=192.0.2.53")["record"]
    assert (record["dns"], record["search"]) == (["192.0.2.53"], [])


@pytest.mark.root
def test_bootif_picks_the_second_nic_and_ifname_renames_it(netns: Netns) -> None:
    """Two NICs with carrier, only the second has a DHCP server: BOOTIF decides, not the order."""
    netns.link("eth0", "s0", MAC, cidrs=("10.76.0.1/24",))            # carrier, but nobody answers DHCP
    netns.link("eth1", "s1", MAC2, cidrs=("10.77.0.1/24",))
    netns.dnsmasq("s1", "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h")
    bootif = "01-" + MAC2.replace(":", "-")
    out = netns.stage1(f"BOOTIF={bootif} ifname=bootnet:{MAC2} rd.net.timeout.dhcp=8")
    assert "error" not in out, out
    assert out["record"]["boot_interface"] == "bootnet" and out["node"] == MAC2
    links = netns.links()
    assert links["bootnet"]["address"] == MAC2 and "eth1" not in links
    assert "inet 10.77.0.5" in netns.ip("-4", "addr", "show", "bootnet")
    assert "inet " not in netns.ip("-4", "addr", "show", "eth0")


LINK_STATES = r"""
import json, sys
from layerboot.initrd.stage1.net import ifindex
from layerboot.initrd.stage1.netlink import Netlink
nl = Netlink()
print(json.dumps({name: nl.link_state(ifindex(name)) for name in sys.argv[1:]}))
"""


@pytest.mark.root
def test_netlink_reports_the_carrier_of_a_link_that_is_down(netns: Netns) -> None:
    """What link_up's shortcut rests on (net.Bringup.link_ready): a NIC with carrier while down (lo here, a virtio
    NIC in a guest) is seen as such before it goes up; sysfs cannot tell (reading carrier of a down link fails)."""
    netns.link("eth0", "s0", MAC)
    run(["ip", "-n", netns.client, "link", "set", "lo", "down"])
    states = json.loads(run(["ip", "netns", "exec", netns.client, sys.executable, "-c", LINK_STATES, "lo", "eth0"],
                            env={"PYTHONPATH": os.pathsep.join(sys.path)}).text)
    assert states == {"lo": [False, True], "eth0": [False, False]}   # a veth end has no carrier until it is up


@pytest.mark.root
def test_without_bootif_the_first_nic_with_carrier_boots(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, up=False)                          # no carrier: its port is down
    netns.link("eth1", "s1", MAC2, cidrs=("10.77.0.1/24",))
    netns.dnsmasq("s1", "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h")
    out = netns.stage1("ip=dhcp layerboot.timeout=3")
    assert out["record"]["boot_interface"] == "eth1" and out["node"] == MAC2
    assert "UP" not in netns.links()["eth0"]["flags"]                  # put back down: not used


@pytest.mark.root
def test_static_ipv4_and_ipv6_with_mtu_and_mac_no_dhcp(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, cidrs=("10.77.0.1/24", "fd77::1/64"))
    out = netns.stage1("ip=10.77.0.5::10.77.0.1:255.255.255.0:static-node.lab.example:eth0:none:1280:"
                       "52:54:00:00:00:77 ip=[fd77::5]::[fd77::1]:64::eth0:none nameserver=[fd77::53] "
                       "rd.route=192.168.50.0/24:10.77.0.1 rd.route=[fd99::/48]:[fd77::1]")
    record = out["record"]
    assert (record["hostname"], record["domain"], out["hostname"]) == (
        "static-node.lab.example", "lab.example", "static-node.lab.example")
    eth0 = record["interfaces"][0]
    assert (eth0["mac"], eth0["mtu"], eth0["gateway"], eth0["gateway6"]) == (
        "52:54:00:00:00:77", 1280, "10.77.0.1", "fd77::1")
    assert "10.77.0.5/24" in eth0["addresses"] and "fd77::5/64" in eth0["addresses"]
    assert record["dns"] == ["fd77::53"] and [lease["source"] for lease in eth0["leases"]] == ["static", "static"]
    assert "192.168.50.0/24 via 10.77.0.1 dev eth0" in netns.ip("route")
    assert "fd99::/48 via fd77::1 dev eth0" in netns.ip("-6", "route")
    # The addresses work right away (optimistic DAD): the server answers a ping on both families.
    netns.ping("10.77.0.1")
    netns.ping("fd77::1")


@pytest.mark.root
def test_dhcpv6_stateful_with_router_advertisements(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, cidrs=("fd77::1/64",))
    log = netns.dnsmasq("s0", "--enable-ra", "--dhcp-range=fd77::100,fd77::1ff,64,1h",
                        f"--dhcp-host=id:00:03:00:01:{MAC},node6", "--domain=v6.example",
                        "--dhcp-option=option6:dns-server,[fd77::1]", "--dhcp-option=option6:domain-search,v6.example",
                        "--dhcp-option=option6:ntp-server,[fd77::123]")
    out = netns.stage1("ip=dhcp6 layerboot.server=http://[fd77::1]:8080 layerboot.profile=p")
    assert "error" not in out, (out, log.read_text()[-2000:])
    record = out["record"]
    eth0 = record["interfaces"][0]
    lease = eth0["leases"][0]
    assert lease["source"] == "dhcp6" and lease["prefix"] == 128 and lease["address"].startswith("fd77::1")
    assert f"{lease['address']}/128" in eth0["addresses"]
    assert (record["dns"], record["search"], record["ntp"]) == (["fd77::1"], ["v6.example"], ["fd77::123"])
    assert (record["hostname"], record["domain"]) == ("node6", "v6.example")   # from the FQDN option
    assert eth0["gateway6"].startswith("fe80::")                      # the default route from the RA
    netns.ping("fd77::1")


@pytest.mark.root
def test_slaac_with_stateless_dhcpv6_options_and_dhcpv4_dual_stack(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, cidrs=("10.77.0.1/24", "fd78::1/64"))
    netns.dnsmasq("s0", "--enable-ra", "--dhcp-range=fd78::,ra-stateless,64",
                  "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h",
                  "--dhcp-option=option6:dns-server,[fd78::1]", "--dhcp-option=option6:domain-search,six.example",
                  "--dhcp-option=6,10.77.0.1")
    out = netns.stage1("ip=dhcp,auto6")
    assert "error" not in out, out
    record = out["record"]
    eth0 = record["interfaces"][0]
    sources = [lease["source"] for lease in eth0["leases"]]
    assert sources == ["dhcp", "auto6"]
    slaac = eth0["leases"][1]["address"]
    assert slaac.startswith("fd78::") and f"{slaac}/64" in eth0["addresses"]
    assert record["dns"] == ["10.77.0.1", "fd78::1"] and record["search"] == ["six.example"]


@pytest.mark.root
def test_either6_falls_back_to_dhcpv6_and_link6_stays_link_local(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, cidrs=("fd77::1/64",))
    netns.link("eth1", "s1", MAC2)
    netns.dnsmasq("s0", "--enable-ra", "--dhcp-range=fd77::100,fd77::1ff,64,1h")   # M flag: no SLAAC prefix
    out = netns.stage1("ip=eth0:either6 ip=eth1:link6 bootdev=eth0 rd.net.timeout.ipv6auto=3")
    assert "error" not in out, out
    eth0, eth1 = out["record"]["interfaces"]
    assert [lease["source"] for lease in eth0["leases"]] == ["dhcp6"]
    assert eth1["name"] == "eth1" and eth1["addresses"] == [] and eth1["leases"] == []
    assert "fe80::" in netns.ip("-6", "addr", "show", "eth1")


@pytest.mark.root
@pytest.mark.parametrize("cmdline, message", [
    (f"BOOTIF=01-52-54-00-99-99-99 layerboot.timeout=1", "no network interface with MAC 52:54:00:99:99:99 (BOOTIF) "
                                                         "appeared within 1s (found: eth0)"),
    ("ip=eth7:dhcp rd.net.timeout.iflink=1", "no network interface eth7 appeared within 1s (found: eth0)"),
    ("ip=dhcp rd.net.timeout.dhcp=2", "no DHCP answer on eth0 within 2s"),
    ("ip=dhcp6 rd.net.timeout.dhcp=2", "no DHCPv6 answer on eth0 within 2s"),
    ("ip=auto6 rd.net.timeout.ipv6auto=2", "eth0: no IPv6 address from router advertisements (SLAAC) within 2s"),
])
def test_failures_are_one_line_in_bounded_time(netns: Netns, cmdline: str, message: str) -> None:
    netns.link("eth0", "s0", MAC, cidrs=("10.77.0.1/24",))
    started = time.monotonic()
    out = netns.stage1(cmdline)
    assert out == {"error": message}
    assert time.monotonic() - started < 30


@pytest.mark.root
def test_no_carrier_anywhere_is_a_clear_error(netns: Netns) -> None:
    netns.link("eth0", "s0", MAC, up=False)
    assert netns.stage1("rd.net.timeout.carrier=1") == {
        "error": "no network interface has a link (carrier) after 1s (tried: eth0)"}
    assert netns.stage1("ip=eth0:dhcp rd.net.timeout.carrier=1") == {
        "error": "eth0 has no link (no carrier) after 1s"}
