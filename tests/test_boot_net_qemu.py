"""Boot networks a real fleet has, under QEMU (TCG) with the real layerbootd in a network namespace:

1. PXE through the NIC's iPXE ROM on the *second* NIC (the first has a link but no DHCP): layerbootd's iPXE
   script passes BOOTIF, stage1 bonds that NIC with a third one (active-backup), takes DHCPv4 with host name,
   domain, search list, DNS, NTP and log server, plus SLAAC and stateless DHCPv6; the booted system sees all of
   it (host name, /etc/hostname, /etc/resolv.conf, /run/layerboot/net.json and net.env) and survives a failover.
2. Direct kernel boot whose two NICs form an 802.3ad bond with a second QEMU guest playing the switch (a Linux
   802.3ad bond: tests/netswitch.py), VLAN 42 on top with MTU 9000, static IPv4 and IPv6, and the server
   reached over IPv6.
3. An IPv6-only boot network: iPXE (Debian's ROM has IPv6) gets its address and boot URL by DHCPv6 and
   fetches kernel and initrd over IPv6; stage1 uses DHCPv6 (address, DNS, search, NTP, FQDN) and router
   advertisements.

One boot per scenario; each ends on the node's explicit pass line and a scan of the serial log for tracebacks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.build.qemu import NodeConfig, QemuNode
from layerboot.overlays.profile import Profiles
from layerboot.paths import Paths
from layerboot.server.auth.boottoken import open_boot_tokens
from layerboot.server.db import connect
from layerboot.server.nodes import Registry
from netswitch import switch_initrd
from pxenet import Lan
from server_daemon import write_config
from test_boot_qemu import CACHE, assert_clean, store_with_cached_key
from test_pxe_qemu import needs_qemu, start_daemon

pytestmark = [pytest.mark.qemu, pytest.mark.root, needs_qemu]

CMDLINE = "console=ttyS0 quiet no_timer_check layerboot.emergency=poweroff layerboot.debug"
FAILS = (r"layerboot: FAILED", r"Kernel panic", r"Traceback", r"NET-FAILOVER failed")
# The node's /sbin/init: print what the boot network left in the booted system, then power off.
NET_INIT = r"""#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
echo "NET-HOSTNAME $(hostname)"
echo "NET-ETC-HOSTNAME $(readlink /etc/hostname) $(cat /etc/hostname)"
echo "NET-RESOLV $(readlink /etc/resolv.conf) $(grep -v '^#' /etc/resolv.conf | tr '\n' ';')"
echo "NET-JSON $(cat /run/layerboot/net.json)"
echo "NET-STATUS $(cat /run/layerboot/status)"
. /run/layerboot/net.env && echo "NET-ENV ntp=$LAYERBOOT_NTP log=$LAYERBOOT_LOG_SERVERS boot=$LAYERBOOT_BOOT_INTERFACE"
for b in /proc/net/bonding/*; do [ -e "$b" ] && echo "NET-BOND $(basename $b) $(tr '\n' ';' < $b)"; done
if grep -q lbtest=failover /proc/cmdline; then
  host=$(echo "$LAYERBOOT_SERVER" | sed -e 's#http://##' -e 's#:[0-9]*$##')
  echo eth2 > /sys/class/net/bond0/bonding/active_slave
  sleep 1
  if ping -c 2 -W 3 "$host" >/dev/null; then echo "NET-FAILOVER ok $(cat /sys/class/net/bond0/bonding/active_slave)"
  else echo "NET-FAILOVER failed"; fi
fi
echo ROOTFS-NET-DONE
poweroff -f
"""


@pytest.fixture(scope="module")
def net_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return busybox_store(tmp_path_factory.mktemp("net-store"), NET_INIT, "busybox base that prints the boot network")


def busybox_store(work: Path, init: str, description: str) -> dict:
    """A store in ``work`` with a busybox base running ``init``, the kernel and layerboot's initrd imported."""
    kernel = fetch_kernel()
    paths = Paths(work / "store")
    store = store_with_cached_key(paths)
    base = store.import_tree(build_busybox_tree(work / "base", init_script=init), kind="base", all_root=True,
                             description=description).digest
    initrd = build_initrd(kernel, paths.public_key, work / "initrd.img", cache=CACHE / "initrd")
    return {"paths": paths, "profiles": Profiles(store), "work": work, "kernel": kernel, "initrd": initrd.path,
            "base": base, "kernel_digest": store.import_boot_file(kernel.image, kind="kernel").digest,
            "initrd_digest": store.import_boot_file(initrd.path, kind="initrd").digest}


def profile_and_node(net_store: dict, name: str, cmdline: str, mac: str) -> str:
    """A profile with the net-printing base and ``cmdline``; node ``mac`` registered with it. Returns a boot
    token for it (what the iPXE script would put on the kernel command line)."""
    net_store["profiles"].create(name, net_store["base"], cmdline=f"{CMDLINE} {cmdline}".strip(),
                                 kernel=net_store["kernel_digest"], initrd=net_store["initrd_digest"])
    Registry(connect(net_store["paths"].database)).register(mac, name, replace=True)
    return open_boot_tokens(net_store["paths"].boot_token_key, 3600).mint(mac)


def tap_nic(lan: Lan, netdev: str, tap: str, mac: str, *, rom: bool = False, bridged: bool = True) -> list[str]:
    if bridged:
        lan.tap(tap)
    else:   # a link with carrier on which nothing answers
        lan.ip(lan.bridge_ns, "tuntap", "add", "dev", tap, "mode", "tap")
        lan.ip(lan.bridge_ns, "link", "set", tap, "up")
    return ["-netdev", f"tap,id={netdev},ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev={netdev},mac={mac}" + ("" if rom else ",romfile=")]


def socket_nic(netdev: str, mac: str, port: int, peer: int) -> list[str]:
    """A point-to-point link to another guest over UDP on the namespace's loopback (with the speed and duplex
    802.3ad needs to aggregate a port)."""
    return ["-netdev", f"socket,id={netdev},udp=127.0.0.1:{peer},localaddr=127.0.0.1:{port}",
            "-device", f"virtio-net-pci,netdev={netdev},mac={mac},romfile=,speed=1000,duplex=full"]


def dnsmasq(lan: Lan, ns: str, tmp: Path, *args: str) -> Path:
    log = tmp / "dnsmasq.log"
    lan.spawn(ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--interface=eth0",
                   "--bind-interfaces", "--log-dhcp", "--log-facility=-", "--pid-file=",
                   f"--dhcp-leasefile={tmp}/leases", *args], log=open(log, "wb"))
    return log


def line(node: QemuNode, prefix: str) -> str:
    return node.wait_for(rf"^{prefix} ", timeout=30).text[len(prefix) + 1:]


def net_json(node: QemuNode) -> dict:
    return json.loads(line(node, "NET-JSON"))


def boot_and_check(node: QemuNode, tmp: Path, timeout: float = 360) -> None:
    done = node.wait_for(r"^ROOTFS-NET-DONE", timeout=timeout, fail=FAILS)
    timings = json.loads(line(node, "NET-STATUS"))["timings"]
    print(f"{tmp.name}: pass line {done.seconds:.1f}s after QEMU started; stage1's net stage {timings['net']:.2f}s, "
          f"modules {timings['modules']:.2f}s")


def test_pxe_on_the_second_nic_active_backup_bond_and_dhcp_options(net_store: dict, tmp_path: Path) -> None:
    nic0, nic1, nic2 = "52:54:00:71:00:00", "52:54:00:71:00:01", "52:54:00:71:00:02"
    url = "http://10.71.0.1:8071"
    profile_and_node(net_store, "pxe", "bond=bond0:eth1,eth2:mode=active-backup,miimon=100 ip=dhcp,auto6 "
                                       "lbtest=failover", nic1)
    config = write_config(tmp_path / "layerbootd.toml", net_store["paths"], debug=True)
    with Lan() as lan:
        srv = lan.host("srv", "10.71.0.1/24")
        lan.ip(srv, "addr", "add", "fd71::1/64", "dev", "eth0", "nodad")
        start_daemon(lan, srv, config, url, tmp_path / "layerbootd.log")
        dnsmasq(lan, srv, tmp_path, "--dhcp-range=10.71.0.100,10.71.0.120,255.255.255.0,1h",
                f"--dhcp-host={nic1},10.71.0.77,pxe-node", "--dhcp-option=3,10.71.0.1",
                "--dhcp-option=6,10.71.0.1", "--dhcp-option=option:domain-name,lab.example",
                "--dhcp-option=option:domain-search,lab.example,example.org",
                "--dhcp-option=option:ntp-server,10.71.0.1", "--dhcp-option=option:log-server,10.71.0.1",
                "--dhcp-userclass=set:ipxe,iPXE", f"--dhcp-boot=tag:ipxe,{url}/boot/${{netX/mac}}.ipxe",
                "--enable-ra", "--dhcp-range=fd71::,ra-stateless,64", "--dhcp-option=option6:dns-server,[fd71::1]")
        nics = (tap_nic(lan, "n0", "tapx", nic0, bridged=False) + tap_nic(lan, "n1", "tap1", nic1, rom=True)
                + tap_nic(lan, "n2", "tap2", nic2))
        with QemuNode(NodeConfig(nics=nics, namespace=lan.bridge_ns), tmp_path / "serial.log") as node:
            boot_and_check(node, tmp_path)
            record = net_json(node)
            hostname, etc_hostname = line(node, "NET-HOSTNAME"), line(node, "NET-ETC-HOSTNAME")
            resolv, env, bond = line(node, "NET-RESOLV"), line(node, "NET-ENV"), line(node, "NET-BOND")
            failover = line(node, "NET-FAILOVER")
            node.wait_exit(60)
    assert_clean(node)
    text = node.text()
    # stage1 booted the NIC iPXE booted from, by BOOTIF (the first NIC has a link too)
    assert re.search(rf"boot interface bond0 \(BOOTIF {nic1} on eth1\), host name pxe-node", text), text[-3000:]
    assert record["boot_interface"] == "bond0" and record["node_mac"] == nic1
    interfaces = {i["name"]: i for i in record["interfaces"]}
    assert interfaces["bond0"]["mode"] == "active-backup" and interfaces["bond0"]["slaves"] == ["eth1", "eth2"]
    assert interfaces["bond0"]["mac"] == nic1                  # the BOOTIF NIC was enslaved first
    assert "eth0" not in interfaces
    addresses = interfaces["bond0"]["addresses"]
    assert "10.71.0.77/24" in addresses and any(a.startswith("fd71::") and a.endswith("/64") for a in addresses)
    # DHCP's options in the booted system
    assert (hostname, record["hostname"], record["domain"]) == ("pxe-node", "pxe-node", "lab.example")
    assert etc_hostname == "/run/layerboot/hostname pxe-node"
    assert resolv == ("/run/layerboot/resolv.conf search lab.example example.org;nameserver 10.71.0.1;"
                      "nameserver fd71::1;")
    assert (record["ntp"], record["log_servers"]) == (["10.71.0.1"], ["10.71.0.1"])
    assert env == "ntp=10.71.0.1 log=10.71.0.1 boot=bond0"
    assert "Bonding Mode: fault-tolerance (active-backup)" in bond and "Currently Active Slave: eth1" in bond
    assert failover == "ok eth2"
    assert f"GET /boot/{nic1}.ipxe 200" in (tmp_path / "layerbootd.log").read_text()   # iPXE's ${netX/mac}


def test_lacp_bond_with_a_vlan_static_dual_stack_and_an_ipv6_server(net_store: dict, tmp_path: Path) -> None:
    mac = "52:54:00:72:00:01"
    port = 8072
    token = profile_and_node(net_store, "lacp", "", mac)
    kernel = net_store["kernel"]
    switch_image = switch_initrd(kernel, tmp_path / "switch-initrd.img")
    config = write_config(tmp_path / "layerbootd.toml", net_store["paths"], debug=True)
    append = (f"{CMDLINE} bond=bond0:eth0,eth1:mode=802.3ad,lacp_rate=fast,miimon=100,xmit_hash_policy=layer3+4 "
              "vlan=bond0.42:bond0 ip=10.72.42.5::10.72.42.1:24:static-node:bond0.42:none:9000 "
              "ip=[fd72::5]::[fd72::1]:64::bond0.42:none nameserver=10.72.42.1 "
              f"layerboot.server=http://[fd72::1]:{port} layerboot.node={mac} layerboot.profile=lacp "
              f"layerboot.token={token}")
    with Lan() as lan:
        srv = lan.host("srv", "10.72.42.1/24")
        lan.ip(srv, "addr", "add", "fd72::1/64", "dev", "eth0", "nodad")
        start_daemon(lan, srv, config, f"http://[fd72::1]:{port}", tmp_path / "layerbootd.log", listen="::")
        switch_nics = (socket_nic("s0", "52:54:00:72:5e:00", 40100, 40000)
                       + socket_nic("s1", "52:54:00:72:5e:01", 40101, 40001)
                       + tap_nic(lan, "s2", "tapsw", "52:54:00:72:5e:02"))
        switch = QemuNode(NodeConfig(kernel=kernel.image, initrd=switch_image, memory_mb=256, nics=switch_nics,
                                     append="console=ttyS0 quiet no_timer_check panic=-1",
                                     namespace=lan.bridge_ns), tmp_path / "switch.log")
        node_nics = socket_nic("n0", mac, 40000, 40100) + socket_nic("n1", "52:54:00:72:00:02", 40001, 40101)
        with switch:
            switch_mac = switch.wait_for(r"^SWITCH-READY ", timeout=180).text.split()[1]
            config = NodeConfig(kernel=kernel.image, initrd=net_store["initrd"], append=append, nics=node_nics,
                                namespace=lan.bridge_ns)
            with QemuNode(config, tmp_path / "serial.log") as node:
                boot_and_check(node, tmp_path)
                record, bond = net_json(node), line(node, "NET-BOND")
                hostname, resolv = line(node, "NET-HOSTNAME"), line(node, "NET-RESOLV")
                node.wait_exit(60)
            partner = switch.wait_for(r"^SWITCH-PARTNER ", timeout=60).text.split()[1]
    assert_clean(node)
    assert record["boot_interface"] == "bond0.42" and record["server"] == f"http://[fd72::1]:{port}"
    interfaces = {i["name"]: i for i in record["interfaces"]}
    assert interfaces["bond0.42"]["kind"] == "vlan" and interfaces["bond0.42"]["parent"] == "bond0"
    assert set(interfaces["bond0.42"]["addresses"]) == {"10.72.42.5/24", "fd72::5/64"}
    assert (interfaces["bond0.42"]["gateway"], interfaces["bond0.42"]["gateway6"]) == ("10.72.42.1", "fd72::1")
    assert interfaces["bond0"]["mode"] == "802.3ad"
    assert interfaces["bond0.42"]["mtu"] == interfaces["bond0"]["mtu"] == 9000   # the VLAN's MTU raised its bond's
    # LACP came up with the switch's bond on both links: each side names the other as its partner
    assert f"Partner Mac Address: {switch_mac}" in bond and "Number of ports: 2" in bond, bond
    assert partner == interfaces["bond0"]["mac"]
    assert (hostname, record["dns"]) == ("static-node", ["10.72.42.1"])
    assert resolv == "/run/layerboot/resolv.conf nameserver 10.72.42.1;"
    served = (tmp_path / "layerbootd.log").read_text()
    assert f"fd72::5 GET /nodes/{mac}/manifest 200" in served, served[-2000:]


def test_ipv6_only_boot_network_through_ipxe_and_dhcpv6(net_store: dict, tmp_path: Path) -> None:
    mac = "52:54:00:73:00:01"
    url = "http://[fd73::1]:8073"
    profile_and_node(net_store, "six", "ip=dhcp6", mac)
    config = write_config(tmp_path / "layerbootd.toml", net_store["paths"], debug=True)
    with Lan() as lan:
        srv = lan.host("srv")
        lan.ip(srv, "addr", "add", "fd73::1/64", "dev", "eth0", "nodad")
        start_daemon(lan, srv, config, url, tmp_path / "layerbootd.log", listen="::")
        dnsmasq(lan, srv, tmp_path, "--enable-ra", "--dhcp-range=fd73::100,fd73::1ff,64,1h",
                f"--dhcp-host=id:00:03:00:01:{mac},node-six", "--domain=six.example",
                f"--dhcp-option=option6:bootfile-url,{url}/boot/${{netX/mac}}.ipxe",
                "--dhcp-option=option6:dns-server,[fd73::1]", "--dhcp-option=option6:domain-search,six.example",
                "--dhcp-option=option6:ntp-server,[fd73::1]")
        nics = tap_nic(lan, "n0", "tap0", mac, rom=True)
        with QemuNode(NodeConfig(nics=nics, namespace=lan.bridge_ns), tmp_path / "serial.log") as node:
            boot_and_check(node, tmp_path)
            record, hostname, resolv = net_json(node), line(node, "NET-HOSTNAME"), line(node, "NET-RESOLV")
            node.wait_exit(60)
    assert_clean(node)
    eth0 = {i["name"]: i for i in record["interfaces"]}["eth0"]
    lease = eth0["leases"][0]
    assert lease["source"] == "dhcp6" and lease["address"].startswith("fd73::1") and lease["prefix"] == 128
    assert all(":" in a for a in eth0["addresses"]) and eth0["gateway"] == ""   # no IPv4 anywhere
    assert (hostname, record["domain"], record["dns"], record["ntp"]) == ("node-six", "six.example", ["fd73::1"],
                                                                         ["fd73::1"])
    assert resolv == "/run/layerboot/resolv.conf search six.example;nameserver fd73::1;"
    assert record["server"] == url
    # iPXE fetched its script, kernel and initrd over IPv6, and stage1 the manifest (layerbootd's access log)
    served = (tmp_path / "layerbootd.log").read_text()
    assert re.search(rf"fd73::1[0-9a-f]{{2}} GET /boot/{mac}.ipxe 200", served), served[-2000:]
    assert re.search(rf"fd73::1[0-9a-f]{{2}} GET /nodes/{mac}/manifest 200", served), served[-2000:]
