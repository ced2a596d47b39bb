"""stage1's network setup: its own DHCP client against dnsmasq in network namespaces, ioctl configuration,
and the kernel ``ip=`` syntax."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.initrd.stage1.console import StageError
from layerboot.initrd.stage1.dhcp import DISCOVER, OFFER, build_packet, parse_packet
from layerboot.initrd.stage1.net import parse_ip_option
from layerboot.run import Process, require_tool, run

MAC = "52:54:00:aa:bb:cc"


def test_static_ip_option() -> None:
    lease = parse_ip_option("10.0.2.15::10.0.2.2:255.255.255.0:node:eth0:off:10.0.2.3")
    assert (lease.address, lease.netmask, lease.router, lease.dns) == ("10.0.2.15", "255.255.255.0", "10.0.2.2",
                                                                       ("10.0.2.3",))
    assert parse_ip_option("dhcp") is None and parse_ip_option("") is None
    assert parse_ip_option(":::::eth0:dhcp") is None
    with pytest.raises(StageError, match="neither 'dhcp' nor a static"):
        parse_ip_option("10.0.2.15")


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


@pytest.fixture
def namespaces(tmp_path: Path) -> Iterator[tuple[str, str]]:
    require_tool("dnsmasq", package="dnsmasq-base")
    server, client = f"lbs{os.getpid()}", f"lbc{os.getpid()}"
    run(["ip", "netns", "add", server])
    run(["ip", "netns", "add", client])
    try:
        run(["ip", "link", "add", "vs", "netns", server, "type", "veth", "peer", "name", "eth0", "netns", client])
        run(["ip", "-n", client, "link", "set", "eth0", "address", MAC])
        run(["ip", "-n", server, "addr", "add", "10.77.0.1/24", "dev", "vs"])
        run(["ip", "-n", server, "link", "set", "vs", "up"])
        run(["ip", "-n", client, "link", "set", "lo", "up"])
        yield server, client
    finally:
        run(["ip", "netns", "del", server], check=False)
        run(["ip", "netns", "del", client], check=False)


CLIENT = """
import json, sys
from layerboot.initrd.stage1.net import bring_up, current_address
name, lease = bring_up("", sys.argv[1], "", 5.0)
print(json.dumps({"name": name, "address": lease.address, "netmask": lease.netmask, "router": lease.router,
                  "dns": list(lease.dns), "again": current_address(name)}))
"""


@pytest.mark.root
def test_dhcp_against_dnsmasq_configures_address_and_route(namespaces: tuple[str, str], tmp_path: Path) -> None:
    server, client = namespaces
    log = open(tmp_path / "dnsmasq.log", "wb")
    dnsmasq = Process(["ip", "netns", "exec", server, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
                       "--port=0", "--interface=vs", "--bind-interfaces", "--log-dhcp",
                       "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h", "--dhcp-option=3,10.77.0.1",
                       "--dhcp-option=6,10.77.0.1", f"--dhcp-leasefile={tmp_path / 'leases'}",
                       f"--pid-file={tmp_path / 'pid'}"], stdout=log, stderr=log)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        result = run(["ip", "netns", "exec", client, sys.executable, "-c", CLIENT, MAC], timeout=60,
                     env={"PYTHONPATH": os.pathsep.join(sys.path)})
        elapsed = time.monotonic() - started
    finally:
        dnsmasq.terminate()
        log.close()
    lease = json.loads(result.text)
    assert lease["name"] == "eth0" and lease["address"].startswith("10.77.0.") and lease["again"] == lease["address"]
    assert (lease["netmask"], lease["router"], lease["dns"]) == ("255.255.255.0", "10.77.0.1", ["10.77.0.1"])
    addresses = run(["ip", "-n", client, "-4", "-o", "addr", "show", "eth0"]).text
    assert f"inet {lease['address']}/24" in addresses
    assert "default via 10.77.0.1 dev eth0" in run(["ip", "-n", client, "route"]).text
    assert MAC in (tmp_path / "leases").read_text()
    assert elapsed < 10, f"DHCP took {elapsed:.1f}s"


@pytest.mark.root
def test_no_dhcp_server_is_a_clear_error_in_bounded_time(namespaces: tuple[str, str]) -> None:
    _, client = namespaces
    code = ("from layerboot.initrd.stage1.dhcp import request_lease\n"
            "from layerboot.initrd.stage1.net import link_up\n"
            "link_up('eth0')\n"
            "try:\n    request_lease('eth0', '%s', timeout=1.0)\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n" % MAC)
    started = time.monotonic()
    result = run(["ip", "netns", "exec", client, sys.executable, "-c", code], timeout=60,
                 env={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.text.strip() == "StageError no DHCP answer on eth0 within 12s"
    assert time.monotonic() - started < 20
