"""dracut's network syntax on the kernel command line → stage1's NetPlan: every documented form, every refusal.

The cases follow ``man dracut.cmdline`` ("Network") and docs/stage1.md, which is the contract layerbootd's
per-node iPXE script and admins write to.
"""

from __future__ import annotations

import pytest

from layerboot.initrd.stage1.cmdline import CmdlineError, parse_cmdline
from layerboot.initrd.stage1.netcmd import (Bond, IfaceConfig, NetPlan, Route, Vlan, parse_bond, parse_bootif,
                                            parse_ip, split_fields, vlan_id)


def plan(text: str) -> NetPlan:
    return parse_cmdline(text).net


def test_no_network_options_means_dhcp_on_the_boot_interface_later() -> None:
    assert plan("console=ttyS0 quiet") == NetPlan()


@pytest.mark.parametrize("value, v4, v6", [
    ("dhcp", "dhcp", ""), ("on", "dhcp", ""), ("any", "dhcp", ""), ("", "dhcp", ""),
    ("dhcp6", "", "dhcp6"), ("auto6", "", "auto6"), ("either6", "", "either6"), ("link6", "", "link6"),
    ("dhcp,auto6", "dhcp", "auto6"), ("dhcp6,dhcp", "dhcp", "dhcp6"),
])
def test_ip_method_only(value: str, v4: str, v6: str) -> None:
    assert parse_ip(value) == IfaceConfig(v4=v4, v6=v6, text=value)


def test_ip_interface_method_mtu_mac() -> None:
    assert parse_ip("eth1:dhcp") == IfaceConfig(device="eth1", v4="dhcp", text="eth1:dhcp")
    config = parse_ip("bootnet:dhcp,dhcp6:9000:52:54:00:AA:BB:CC")
    assert (config.device, config.v4, config.v6, config.mtu, config.mac) == (
        "bootnet", "dhcp", "dhcp6", 9000, "52:54:00:aa:bb:cc")
    assert parse_ip("eth0:auto6::52:54:00:aa:bb:cc").mac == "52:54:00:aa:bb:cc"   # MTU left empty
    assert parse_ip("eth0:on:1400").mtu == 1400


def test_ip_static_ipv4_all_fields() -> None:
    config = parse_ip("10.1.2.3:10.1.2.9:10.1.2.1:255.255.255.0:node-7.lab:eth0:none")
    assert config == IfaceConfig(device="eth0", v4="static", address4="10.1.2.3", prefix4=24, gateway4="10.1.2.1",
                                 hostname="node-7.lab", text=config.text)
    assert parse_ip("10.1.2.3::10.1.2.1:22::eth0:off").prefix4 == 22          # prefix length as the netmask
    assert parse_ip("10.1.2.3/20:::::eth0:none").prefix4 == 20                 # or on the address
    assert parse_ip("10.1.2.3:::255.255.255.0:::none").device == ""            # the boot interface


def test_ip_static_with_dns_or_mtu_and_mac() -> None:
    dns = parse_ip("10.0.0.5::10.0.0.1:24:n1:eth0:none:10.0.0.53:[fd00::53]")
    assert dns.dns == ("10.0.0.53", "fd00::53") and dns.mtu == 0
    mtu = parse_ip("10.0.0.5::10.0.0.1:24:n1:eth0:none:9000:52:54:00:12:34:56")
    assert (mtu.mtu, mtu.mac, mtu.dns) == (9000, "52:54:00:12:34:56", ())
    assert parse_ip("10.0.0.5::10.0.0.1:24:n1:eth0:none::52-54-00-12-34-56").mac == "52:54:00:12:34:56"


def test_ip_static_ipv6_in_brackets() -> None:
    config = parse_ip("[2001:DB8::5]::[2001:db8::1]:64:n1:eth0:none")
    assert (config.v4, config.v6, config.address6, config.prefix6, config.gateway6) == (
        "", "static", "2001:db8::5", 64, "2001:db8::1")
    assert parse_ip("[fd00::5/56]:::::eth0:none").prefix6 == 56
    assert split_fields("[fe80::1]::[fe80::2]:64") == ["[fe80::1]", "", "[fe80::2]", "64"]


def test_static_plus_the_other_family_in_one_method_list() -> None:
    config = parse_ip("10.0.0.5::10.0.0.1:24::eth0:none,auto6")
    assert (config.v4, config.v6, config.address4) == ("static", "auto6", "10.0.0.5")
    config = parse_ip("[fd00::5]:::64::eth0:none,dhcp")
    assert (config.v4, config.v6) == ("dhcp", "static")


def test_full_form_with_dhcp_takes_hostname_and_device() -> None:
    config = parse_ip(":::::eth0:dhcp")
    assert (config.device, config.v4) == ("eth0", "dhcp")
    assert parse_ip("::::node9:eth0:dhcp6").hostname == "node9"


def test_several_ip_lines_merge_per_interface_by_family() -> None:
    net = plan("ip=10.0.0.5::10.0.0.1:24:n1:eth0:none ip=[fd00::5]::[fd00::1]:64::eth0:none ip=eth1:dhcp")
    assert [c.device for c in net.configs] == ["eth0", "eth1"]
    eth0 = net.config_for("eth0")
    assert (eth0.address4, eth0.address6, eth0.gateway6, eth0.hostname) == ("10.0.0.5", "fd00::5", "fd00::1", "n1")
    assert net.config_for("eth1").v4 == "dhcp" and net.config_for("") is None
    assert plan("ip=dhcp ip=auto6").configs == (IfaceConfig(v4="dhcp", v6="auto6", text="dhcp auto6"),)


def test_vlan_names_and_ids() -> None:
    assert [vlan_id(n) for n in ("vlan0005", "vlan5", "eth0.0005", "eth0.5", "bond0.4094")] == [5, 5, 5, 5, 4094]
    net = plan("vlan=vlan42:eth0 vlan=bond0.7:bond0 bond=bond0:eth1,eth2")
    assert net.vlans == (Vlan("vlan42", "eth0", 42), Vlan("bond0.7", "bond0", 7))


def test_bond_forms() -> None:
    assert parse_bond(None) == Bond("bond0", ("eth0", "eth1"))
    assert parse_bond("bond1") == Bond("bond1", ("eth0", "eth1"))
    assert parse_bond("bond0:eth0,eth1") == Bond("bond0", ("eth0", "eth1"))
    bond = parse_bond("bond0:eth0,eth1:miimon=100,mode=802.3ad,lacp_rate=fast,arp_ip_target=10.0.0.1;10.0.0.2:9000")
    assert bond.options == (("mode", "802.3ad"), ("miimon", "100"), ("lacp_rate", "fast"),
                            ("arp_ip_target", "10.0.0.1,10.0.0.2"))          # mode first: it needs no slaves yet
    assert (bond.mtu, bond.mode) == (9000, "802.3ad")
    assert parse_bond("bond0:eth0,eth1:mode=1").mode == "active-backup"      # numeric modes are named
    assert plan("bond").bonds == (Bond("bond0", ("eth0", "eth1")),)
    assert Bond("b", ("x",)).mode == "balance-rr"


def test_ifname_bootif_nameservers_routes_and_switches() -> None:
    net = plan("ifname=bootnet:52:54:00:AA:BB:01 BOOTIF=01-52-54-00-aa-bb-01 nameserver=10.0.0.53 "
               "nameserver=[fd00::53] nameserver=fd00::54 rd.route=192.168.0.0/16:10.0.0.1:bootnet "
               "rd.route=[fd01::/48]:[fd00::1] rd.route=[fd02::]/64:[fd00::1]:bootnet "
               "rd.route=172.16.0.0/255.240.0.0:10.0.0.1 rd.peerdns=0 rd.neednet=1 rd.net.timeout.dhcp=30 "
               "rd.net.timeout.carrier=5 rd.net.dhcp.retry=3 bootdev=bootnet")
    assert net.names == (("bootnet", "52:54:00:aa:bb:01"),) and net.bootif == "52:54:00:aa:bb:01"
    assert net.nameservers == ("10.0.0.53", "fd00::53", "fd00::54")
    assert net.routes == (Route("192.168.0.0/16", "10.0.0.1", "bootnet"), Route("fd01::/48", "fd00::1"),
                          Route("fd02::/64", "fd00::1", "bootnet"), Route("172.16.0.0/12", "10.0.0.1"))
    assert (net.peerdns, net.neednet, net.dhcp_retry, net.bootdev) == (False, True, 3, "bootnet")
    assert net.timeout("dhcp", 1) == 30 and net.timeout("carrier", 1) == 5 and net.timeout("iflink", 7) == 7


@pytest.mark.parametrize("value", ["01-52-54-00-12-34-56", "52-54-00-12-34-56", "52:54:00:12:34:56",
                                   "01-52-54-00-12-34-56".upper()])
def test_bootif_forms(value: str) -> None:
    assert parse_bootif(value) == "52:54:00:12:34:56"


def test_rd_bootif_0_ignores_bootif() -> None:
    assert plan("BOOTIF=01-52-54-00-12-34-56 rd.bootif=0").bootif == ""


@pytest.mark.parametrize("cmdline, message", [
    # ip= refusals
    ("ip=ibft", "iBFT"), ("ip=bootp", "BOOTP is not supported"), ("ip=rarp", "RARP"), ("ip=both", "BOOTP/RARP"),
    ("ip=single-dhcp", "pass BOOTIF="), ("ip=dhcp7", "unknown autoconf 'dhcp7'"),
    ("ip=10.0.0.5", "anaconda form"), ("ip=none", "needs a static address"), ("ip=eth0:off", "needs a static"),
    ("ip=dhcp,on", "two methods for one address family"), ("ip=auto6,dhcp6", "two methods"),
    ("ip=10.0.0.5::10.0.0.1:24::eth0:dhcp", "makes no sense with 'dhcp'"),
    ("ip=:::::eth0:none", "without a static client address"),
    ("ip=:::255.255.255.0::eth0:dhcp", "without a static client address"),
    ("ip=10.0.0.5::10.0.0.1:::eth0:none", "needs a netmask or prefix length"),
    ("ip=10.0.0.5/24::10.0.0.1:24::eth0:none", "either as"),
    ("ip=10.0.0.5::10.0.0.1:255.0.255.0::eth0:none", "not a contiguous netmask"),
    ("ip=10.0.0.5::10.0.0.1:33::eth0:none", "out of range 1-32"),
    ("ip=10.0.0.5::fd00::1:24::eth0:none", "IPv6 addresses go in brackets"),
    ("ip=10.0.0.5::10.0.0.1:24::eth0:static", "the 7th field must be the method"),
    ("ip=10.0.0.5::[fd00::1]:24::eth0:none", "is not an IPv4 address"),
    ("ip=10.0.0.999::10.0.0.1:24::eth0:none", "is not an IP address"),
    ("ip=10.0.0.5::10.0.0.1:24:bad_name:eth0:none", "not a valid host name"),
    ("ip=10.0.0.5::10.0.0.1:24::eth0:none:70000", "MTU '70000'"),
    ("ip=eth0:dhcp:1500:52:54:00", "not a MAC address"),
    ("ip=10.0.0.5::10.0.0.1:24::eth0:none:10.0.0.2:10.0.0.3:10.0.0.4", "at most two DNS"),
    ("ip=[fd00::5::10.0.0.1:24::eth0:none", "without a closing"),
    ("ip=[fd00::5]x::10.0.0.1:24::eth0:none", "must be followed by"),
    ("ip=10.0.0.5::10.0.0.1:24::this-name-is-too-long0:none", "not a valid interface name"),
    ("ip=10.0.0.5::10.0.0.1:24", "expected dhcp"),
    ("ip=eth0:dhcp ip=eth0:dhcp", "both configure IPv4 on eth0"),
    ("ip=eth0:auto6 ip=eth0:dhcp6", "both configure IPv6 on eth0"),
    ("ip=10.0.0.5::10.0.0.1:24:a:eth0:none ip=[fd00::5]:::64:b:eth0:none", "disagree on the hostname"),
    ("ip=dhcp ip=eth1:dhcp", "name the interface in each"),
    # the other options
    ("vlan=eth0", "expected vlan=<vlanname>:<phys_device>"), ("vlan=mynet:eth0", "VLAN id comes from the name"),
    ("vlan=vlan5000:eth0", "must be 1-4094"), ("vlan=vlan5:eth0 vlan=vlan5:eth1", "defined twice"),
    ("vlan=vlan5:vlan5", "its own parent"),
    ("bond=bond0:eth0,eth1:mode=fast", "bonding mode 'fast'"), ("bond=bond0:eth0:colour=red", "unknown bonding"),
    ("bond=bond0:eth0:miimon", "is not NAME=VALUE"), ("bond=bond0:eth0,eth0", "listed twice"),
    ("bond=bond0:eth0:mode=1:1500:extra", "expected bond="), ("bond=b0:eth0 bond=b1:eth0", "already a slave"),
    ("bond=b0:eth0 bond=b0:eth1", "defined twice"), ("bond=b0:eth0 ip=eth0:dhcp", "configure b0 instead"),
    ("bond=b0:vlan5 vlan=vlan5:eth0", "not a physical interface"),
    ("bond=b0:eth0,eth1 vlan=eth0.5:eth0", "eth0 is a slave of b0; put the VLAN on b0"),
    ("bond=bond0:eth0:arp_ip_target=10.0.0.1;x", "not an IPv4 address"),
    ("ifname=bootnet", "expected ifname=<interface>:<MAC>"), ("ifname=bootnet:52:54:00", "not a MAC"),
    ("ifname=ib0:" + ":".join(["00"] * 20), "InfiniBand"),
    ("ifname=a:52:54:00:00:00:01 ifname=b:52:54:00:00:00:01", "already has another ifname"),
    ("nameserver=dns.example", "not an IP address"),
    ("rd.route=10.0.0.0:10.0.0.1", "is not <network>/<prefix>"), ("rd.route=10.0.0.0/8", "expected rd.route="),
    ("rd.route=10.1.0.0/8:10.0.0.1", "host bits"), ("rd.route=[fd00::/64]:10.0.0.1", "not an IPv6 address"),
    ("BOOTIF=06-52-54-00-12-34-56", "not Ethernet"), ("BOOTIF=52-54-00", "not a MAC"),
    ("rd.peerdns=maybe", "use 0 or 1"), ("rd.net.timeout.dhcp=soon", "not a number of seconds"),
    ("rd.net.timeout.dhcp=0", "more than 0"), ("rd.net.timeout.route=5", "rd.net.timeout.route is not supported"),
    ("rd.net.dhcp.retry=0", "number of attempts"), ("rd.net.dhcp.vendor-class=x", "is not supported"),
    ("bridge=br0:eth0", "bridges are not set up"), ("team=team0:eth0,eth1", "teaming is not supported"),
    ("bootdev=a/b", "not a valid interface name"),
])
def test_refusals_are_one_clear_line(cmdline: str, message: str) -> None:
    with pytest.raises(CmdlineError, match=message) as info:
        parse_cmdline(f"console=ttyS0 layerboot.server=http://10.0.0.1:8080 layerboot.profile=p {cmdline}")
    assert "\n" not in str(info.value)


def test_unrelated_words_are_not_network_options() -> None:
    # Words that only look similar stay the kernel's or another program's business.
    assert plan("ipv6.disable=0 net.ifnames=0 biosdevname=0 iommu=pt") == NetPlan()
