"""Fleet records (server/fleet/records.py): round trips through their JSON/TOML forms, inheritance from clusters and
groups, name ranges and counted addresses, and the per-node kernel command line checked with stage1's own parser."""

from __future__ import annotations

from dataclasses import replace

import pytest
import tomli_w
import tomllib

from layerboot.errors import LayerbootError
from layerboot.initrd.stage1.netcmd import parse_network
from layerboot.server.fleet.netargs import network_args, node_kernel_args
from layerboot.server.fleet.ranges import expand, nth_address, nth_mac
from layerboot.server.fleet.records import (Defaults, FleetNode, Group, Interface, RecordError, effective,
                                            fleet_defaults)
from layerboot.settings import Config

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIhyWCm6u0NxQx4pUjnsXe/yPnt6a2uBTc1U61ZwKclN admin@desk"


def bonded_node() -> FleetNode:
    return FleetNode.from_dict({
        "name": "n001", "cluster": "c1", "groups": ["compute", "gpu"], "kernel_args": "nosmt",
        "vars": {"rack": "7"}, "asset_key": "3F0E8A52-7C1D-4B6E-A9D2-5E4F3C2B1A07:LB-1",
        "interfaces": [
            {"device": "eth0", "mac": "52-54-00-00-01-01", "ipv4": "10.0.0.1/24", "ipv6": "auto6"},
            {"device": "eth1", "mac": "52:54:00:00:02:01", "bond": "bond0"},
            {"device": "eth2", "mac": "52:54:00:00:03:01", "bond": "bond0"},
            {"device": "bond0", "bond_options": "mode=802.3ad,miimon=100", "vlan": 42, "mtu": 9000,
             "ipv4": "10.42.0.1/16", "ipv6": "fd42::1/64", "gateway6": "fd42::fe"}]})


def test_a_node_round_trips_through_json_and_toml() -> None:
    node = bonded_node()
    assert node.mac == "52:54:00:00:01:01" and node.asset_key == "3f0e8a52-7c1d-4b6e-a9d2-5e4f3c2b1a07:lb-1"
    assert FleetNode.from_dict(node.to_dict()) == node
    table = node.to_dict()
    del table["name"]
    assert FleetNode.from_dict(tomllib.loads(tomli_w.dumps({"n": table}))["n"], name="n001") == node
    group = Group.from_dict({"profile": "hpc", "dns": [], "interfaces": [{"device": "eth0", "gateway": "10.0.0.254",
                                                                          "mtu": 1500}]}, kind="group", name="compute")
    assert Group.from_dict(group.to_dict(), kind="group") == group
    assert group.to_dict()["dns"] == []        # "no DNS servers" is kept apart from "inherit"


@pytest.mark.parametrize("data, message", [
    ({"name": "N_1", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01"}]}, "not a host name"),
    ({"name": "525400000001", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01"}]}, "not a host name"),
    ({"name": "n1", "interfaces": [{"device": "eth0"}]}, "has no interface with a MAC"),
    ({"name": "n1", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01", "ipv4": "10.0.0.0/24"}]},
     "network address"),
    ({"name": "n1", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01", "ipv4": "10.0.0.5/24",
                                    "gateway": "10.1.0.1"}]}, "not in 10.0.0.0/24"),
    ({"name": "n1", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01", "bond": "bond0",
                                    "ipv4": "10.0.0.5/24"}]}, "addresses and VLANs go on bond0"),
    ({"name": "n1", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01", "ipv4": "10.0.0.5"}]},
     "needs a prefix length"),
    ({"name": "n1", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01", "speed": 10}]}, "unknown field"),
    ({"name": "n1", "kernel_args": "ip=dhcp", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01"}]},
     "ip= is written by layerboot"),
    ({"name": "n1", "kernel_args": "a;b ; c", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01"}]},
     "iPXE command separator"),
    ({"name": "n1", "vars": {"Bad-Key": "x"}, "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01"}]},
     "var name"),
    ({"name": "n1", "dns": ["not a host"], "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:01"}]},
     "not an address"),
])
def test_bad_records_are_one_clear_error(data: dict, message: str) -> None:
    with pytest.raises(LayerbootError, match=message):
        FleetNode.from_dict(data)


def test_nodes_inherit_from_cluster_then_groups_in_order_and_override() -> None:
    node = bonded_node()
    groups = {
        ("cluster", "c1"): Group.from_dict({"domain": "c1.example", "dns": ["10.0.0.253"], "kernel_args": "quiet",
                                            "vars": {"rack": "1", "site": "b"}, "authorized_keys": [KEY]},
                                           kind="cluster", name="c1"),
        ("group", "compute"): Group.from_dict({"profile": "hpc", "ntp": ["10.0.0.252"],
                                               "interfaces": [{"device": "eth0", "gateway": "10.0.0.254",
                                                               "mtu": 1500}]}, kind="group", name="compute"),
        ("group", "gpu"): Group.from_dict({"profile": "gpu", "dns": []}, kind="group", name="gpu"),
    }
    eff = effective(node, groups, fleet_defaults(Config()))
    assert eff.profile == "gpu" and eff.sources["profile"] == "group gpu"          # the later group wins
    assert eff.settings.dns == () and eff.sources["dns"] == "group gpu"           # none, on purpose
    assert eff.settings.ntp == ("10.0.0.252",) and eff.settings.syslog == ("server",)   # fleet settings below
    assert eff.settings.kernel_args == "quiet nosmt" and eff.settings.vars == {"rack": "7", "site": "b"}
    assert eff.settings.domain == "c1.example" and eff.settings.authorized_keys == (KEY,)
    eth0 = eff.interfaces[0]
    assert (eth0.gateway, eth0.mtu, eth0.ipv4) == ("10.0.0.254", 1500, "10.0.0.1/24")   # filled, not replaced
    assert replace(node, own=replace(node.own, profile="own")).own.profile == "own"
    assert effective(replace(node, own=replace(node.own, profile="own")), groups).profile == "own"
    with pytest.raises(LayerbootError, match="in group nope, which does not exist"):
        effective(replace(node, groups=("nope",)), groups)
    with pytest.raises(LayerbootError, match="a MAC or a static address belongs to one node"):
        Group.from_dict({"interfaces": [{"device": "eth0", "ipv4": "10.0.0.9/24"}]}, kind="group", name="g")


def test_name_ranges_and_counted_addresses() -> None:
    assert expand("n[001-003]") == ["n001", "n002", "n003"]
    assert expand("n[1-3,7],login") == ["n1", "n2", "n3", "n7", "login"]
    assert expand("r[1-2]-n[01-02]") == ["r1-n01", "r1-n02", "r2-n01", "r2-n02"]
    assert expand("n[01-10:4]") == ["n01", "n05", "n09"]
    assert len(expand("n[001-100]")) == 100
    for bad in ("n[1-", "n]1[", "n[3-1]", "n[a-b]", "n[1-2],,x", "n[1-999999]"):
        with pytest.raises(LayerbootError):
            expand(bad)
    assert nth_mac("52:54:00:00:00:ff", 1) == "52:54:00:00:01:00"
    assert nth_mac("52:54:00:00:00:00", 3, 2) == "52:54:00:00:00:06"
    assert nth_address("10.0.0.250/24", 3) == "10.0.0.253/24"
    assert nth_address("fd00::ff/64", 2, 16) == "fd00::11f/64"
    with pytest.raises(LayerbootError, match="n006 would be outside 10.0.0.0/24"):
        nth_address("10.0.0.250/24", 5, name="n006")        # .255 is the broadcast address
    with pytest.raises(LayerbootError, match="runs out of MAC space"):
        nth_mac("ff:ff:ff:ff:ff:ff", 1)


def test_the_network_is_dracut_syntax_that_stage1_parses_back() -> None:
    node = bonded_node()
    eff = effective(node, {("cluster", "c1"): Group(name="c1", kind="cluster"),
                           ("group", "compute"): Group(name="compute"), ("group", "gpu"): Group(name="gpu")},
                    fleet_defaults(Config()))
    words = network_args(eff, host="10.0.0.250")
    assert words == ["ifname=eth0:52:54:00:00:01:01", "ifname=eth1:52:54:00:00:02:01", "ifname=eth2:52:54:00:00:03:01",
                     "bond=bond0:eth1,eth2:mode=802.3ad,miimon=100:9000", "vlan=bond0.42:bond0",
                     "ip=10.0.0.1:::24:n001:eth0:none,auto6", "ip=10.42.0.1:::16::bond0.42:none:9000",
                     "ip=[fd42::1]::[fd42::fe]:64::bond0.42:none:9000", "nameserver=10.0.0.250"]
    plan = parse_network([(w.partition("=")[0], w.partition("=")[2]) for w in words])
    boot = plan.config_for("eth0")
    assert (boot.address4, boot.prefix4, boot.hostname, boot.v6) == ("10.0.0.1", 24, "n001", "auto6")
    vlan = plan.config_for("bond0.42")
    assert (vlan.address4, vlan.address6, vlan.gateway6, vlan.mtu) == ("10.42.0.1", "fd42::1", "fd42::fe", 9000)
    assert plan.bonds[0].mode == "802.3ad" and plan.nameservers == ("10.0.0.250",)
    # the profile's own network words give way to the node's; its other words stay
    line = node_kernel_args("console=ttyS0 ip=dhcp quiet", eff, host="10.0.0.250")
    assert line.startswith("console=ttyS0 quiet nosmt ifname=eth0:") and "ip=dhcp" not in line
    dhcp = FleetNode.from_dict({"name": "d1", "interfaces": [{"device": "eth0", "mac": "52:54:00:00:00:09"}]})
    assert network_args(effective(dhcp, {})) == ["ifname=eth0:52:54:00:00:00:09", "ip=::::d1:eth0:dhcp"]


def test_stage1s_refusals_are_refused_when_the_record_is_made() -> None:
    """A bond option stage1 does not know is caught here, not at the node's boot."""
    node = FleetNode.from_dict({"name": "n1", "interfaces": [
        {"device": "eth0", "mac": "52:54:00:00:00:01", "bond": "bond0"},
        {"device": "bond0", "bond_options": "mode=active-backup,frobnicate=1", "ipv4": "dhcp"}]})
    with pytest.raises(RecordError, match="node n1: stage1 would refuse its network: .*unknown bonding option "
                                          "'frobnicate'"):
        network_args(effective(node, {}))


def test_defaults_check_normalises_and_refuses() -> None:
    d = Defaults(domain="C1.Example.", dns=("10.0.0.1", "server", "ns.Example.org")).check("x")
    assert d.domain == "c1.example" and d.dns == ("10.0.0.1", "server", "ns.example.org")
    with pytest.raises(LayerbootError, match="not an OpenSSH public key"):
        Defaults(authorized_keys=("ssh-ed25519 AAAAnotakey",)).check("x")
    with pytest.raises(LayerbootError, match="interface eth0: bond_options"):
        Interface(device="eth0", bond_options="mode active")
