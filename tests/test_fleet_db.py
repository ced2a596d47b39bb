"""The fleet's queries (server/fleet/queries.py) on SQLite and PostgreSQL: named nodes, uniqueness, a new MAC
moving a node's rows, group defaults reaching members, import/export, discoveries, acceptance and rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from layerboot.errors import LayerbootError
from layerboot.server.auth.nodesecret import NodeSecrets
from layerboot.server.db import connect
from layerboot.server.fleet.enroll import accept, auto_accept, check_facts, check_rule, clone_node
from layerboot.server.fleet.exchange import apply_import, export_csv, export_toml, parse_file
from layerboot.server.fleet.queries import DiscoveryFull, Fleet
from layerboot.server.fleet.records import Defaults, FleetNode, Group, Interface
from layerboot.server.nodes import Event, Registry

UUID = "3f0e8a52-7c1d-4b6e-a9d2-5e4f3c2b1a07"


@pytest.fixture
def fleet(database_url: str) -> Fleet:
    db = connect(database_url)
    yield Fleet(db)
    db.close()


def node(name: str, mac: str, ip: str = "", **kw) -> FleetNode:  # noqa: ANN003
    return FleetNode(name=name, mac=mac, interfaces=(Interface(device="eth0", mac=mac, ipv4=ip),),
                     own=Defaults(profile=kw.pop("profile", "web")), **kw)


def facts(mac: str, serial: str = "S1", uuid: str = UUID) -> dict:
    return {"macs": [{"name": "eth0", "mac": mac}, {"name": "eth1", "mac": "52:54:00:aa:00:99"}], "cpus": 4,
            "cpu_model": "QEMU Virtual CPU", "memory": 1 << 30,
            "disks": [{"name": "vda", "size": 1 << 34, "model": "", "serial": "d1"}],
            "dmi": {"vendor": "QEMU", "product": "Standard PC", "serial": serial, "uuid": uuid, "board": ""}}


def test_named_nodes_are_found_by_name_or_any_mac_and_stay_unique(fleet: Fleet) -> None:
    a = FleetNode(name="n001", mac="52:54:00:00:01:01", interfaces=(
        Interface(device="eth0", mac="52:54:00:00:01:01", ipv4="10.0.0.1/24"),
        Interface(device="ib0", mac="52:54:00:00:02:01", ipv4="10.1.0.1/24")), own=Defaults(profile="web"))
    saved = fleet.save([a, node("n002", "52:54:00:00:01:02", "10.0.0.2/24")])
    assert len(saved[0].machine_id) == 32 and saved[0].machine_id != saved[1].machine_id
    assert fleet.resolve("n001") == fleet.resolve("52-54-00-00-02-01") == "52:54:00:00:01:01"
    assert fleet.get("52:54:00:00:02:01").interfaces[1].device == "ib0"
    assert [n.name for n in fleet.nodes()] == ["n001", "n002"]
    for bad, message in ((node("n003", "52:54:00:00:02:01"), "MAC 52:54:00:00:02:01 belongs to node n001"),
                         (node("n003", "52:54:00:00:01:03", "10.0.0.2/24"), "n002 and n003 would both have"),
                         (node("n003", "52:54:00:00:01:03", profile=""), "n003 has no profile")):
        with pytest.raises(LayerbootError, match=message):
            fleet.save([node("n004", "52:54:00:00:01:04", "10.0.0.4/24"), bad])    # all or nothing
        assert fleet.find("n004") is None
    with pytest.raises(LayerbootError, match="no node named 'n009'"):
        fleet.get("n009")


def test_a_new_first_mac_moves_the_nodes_rows_and_a_mac_only_node_is_adopted(fleet: Fleet) -> None:
    registry = Registry(fleet.db)
    _, secret = registry.register("52:54:00:00:00:07", "web")
    registry.record_event("52:54:00:00:00:07", Event(stage="switch-root", ok=True))
    adopted = fleet.save([node("n007", "52:54:00:00:00:07", "10.0.0.7/24")])[0]     # keeps its secret and history
    assert NodeSecrets(fleet.db).node_of(secret) == adopted.mac and len(registry.events(adopted.mac)) == 1
    moved = replace(adopted, mac="52:54:00:00:00:77",
                    interfaces=(replace(adopted.interfaces[0], mac="52:54:00:00:00:77"),))
    fleet.save([moved])
    assert registry.find("52:54:00:00:00:07") is None and fleet.resolve("n007") == "52:54:00:00:00:77"
    assert NodeSecrets(fleet.db).node_of(secret) == "52:54:00:00:00:77"
    assert [e.stage for e in registry.events("52:54:00:00:00:77")] == ["switch-root"]
    assert fleet.get("n007").machine_id == adopted.machine_id            # same machine: same host keys


def test_group_and_cluster_defaults_reach_their_members(fleet: Fleet) -> None:
    registry = Registry(fleet.db)
    fleet.save_group(Group(name="compute", defaults=Defaults(profile="hpc")), create=True)
    fleet.save_group(Group(name="c1", kind="cluster"), create=True)
    member = replace(node("n001", "52:54:00:00:01:01", profile=""), groups=("compute",), cluster="c1")
    fleet.save([member, node("n002", "52:54:00:00:01:02")])
    assert registry.get("52:54:00:00:01:01").profile == "hpc"
    registry.pin("52:54:00:00:01:01", 1, "test")
    changed = fleet.save_group(Group(name="compute", defaults=Defaults(profile="hpc2")), create=False)
    assert changed == ["n001"]
    moved = registry.get("52:54:00:00:01:01")
    assert moved.profile == "hpc2" and moved.pinned_generation is None     # a pin belongs to the old profile
    assert fleet.members("cluster", "c1") == ["52:54:00:00:01:01"]
    with pytest.raises(LayerbootError, match="group compute still has 1 node"):
        fleet.remove_group("group", "compute")
    with pytest.raises(LayerbootError, match="would have no profile"):
        fleet.save_group(Group(name="compute"), create=False)


def test_import_export_round_trip_and_all_or_nothing(fleet: Fleet) -> None:
    text = """
[clusters.c1]
domain = "c1.example"
[groups.compute]
profile = "hpc"
kernel_args = "nosmt"
[[groups.compute.interfaces]]
device = "eth0"
gateway = "10.0.0.254"
[nodes.n001]
cluster = "c1"
groups = ["compute"]
asset_key = "%s:S1"
[nodes.n001.vars]
rack = "7"
[[nodes.n001.interfaces]]
device = "eth0"
mac = "52:54:00:00:01:01"
ipv4 = "10.0.0.1/24"
""" % UUID
    summary = apply_import(fleet, parse_file(text, "toml", "f.toml"), dry_run=True, check_profile=None)
    assert summary["added"] == ["n001"] and fleet.nodes() == [] and fleet.groups() == {}
    apply_import(fleet, parse_file(text, "toml", "f.toml"), dry_run=False, check_profile=None)
    exported = export_toml(fleet.nodes(), fleet.groups())
    again = parse_file(exported, "toml", "export")
    assert again["nodes"]["n001"]["vars"] == {"rack": "7"} and again["groups"]["compute"]["kernel_args"] == "nosmt"
    csv_text = export_csv(fleet.nodes())
    assert csv_text.splitlines()[1].startswith("n001,eth0,52:54:00:00:01:01,10.0.0.1/24,")
    csv_data = parse_file(csv_text + "n001,ib0,52:54:00:00:02:01,10.1.0.1/24,,,,,,,,,,,,,,,,,\n", "csv", "f.csv")
    summary = apply_import(fleet, csv_data, dry_run=False, check_profile=None)
    assert summary["updated"] == ["n001"] and [i.device for i in fleet.get("n001").interfaces] == ["eth0", "ib0"]
    assert fleet.get("n001").asset_key == f"{UUID}:s1"
    bad = text.replace('[nodes.n001]', '[nodes.n002]\ngroups = ["nope"]\n[[nodes.n002.interfaces]]\ndevice = "eth0"\n'
                       'mac = "52:54:00:00:01:09"\n[nodes.n001]')
    with pytest.raises(LayerbootError, match="n002 is in group nope, which does not exist"):
        apply_import(fleet, parse_file(bad, "toml", "f.toml"), dry_run=False, check_profile=None)
    assert fleet.find("n002") is None
    with pytest.raises(LayerbootError, match="f.csv: unknown column 'colour'"):
        parse_file("name,colour\nn1,red\n", "csv", "f.csv")


def test_discoveries_conflicts_acceptance_clones_and_rules(fleet: Fleet) -> None:
    mac = "52:54:00:aa:00:01"
    checked, request = check_facts(facts(mac) | {"request": {"clone_of": "n001", "name": "N009"}}, mac)
    assert request == {"clone_of": "n001", "name": "n009"}
    record = fleet.record_discovery(mac, checked, request, "10.0.0.200", max_pending=2, keep=3600)
    assert record["state"] == "pending" and record["reports"] == 1
    again = fleet.record_discovery(mac, check_facts(facts(mac, serial="OTHER"), mac)[0], {}, "10.0.0.201",
                                   max_pending=2, keep=3600)
    assert "gives DMI" in again["conflict"] and again["request"] == request       # the request is kept
    fleet.save([FleetNode(name="n001", mac="52:54:00:00:01:01", interfaces=(
        Interface(device="eth0", mac="52:54:00:00:01:01", ipv4="10.0.0.1/24", gateway="10.0.0.254"),
        Interface(device="eth1", mac="52:54:00:00:02:01")), own=Defaults(profile="web"))])
    with pytest.raises(LayerbootError, match="conflicting reports"):
        accept(fleet, mac, name="n009", clone_of="n001")
    clone = accept(fleet, mac, force=True, name="n009", clone_of="n001")
    assert clone.interfaces[0].ipv4 == "10.0.0.2/24" and clone.interfaces[1].mac == "52:54:00:aa:00:99"
    assert clone.asset_key == f"{UUID}:s1" and fleet.discovery(mac)["state"] == "accepted"
    assert fleet.get("n009").machine_id != fleet.get("n001").machine_id
    by_hand = clone_node(fleet, fleet.get("n001"), "n010", ["52:54:00:00:01:10", "52:54:00:00:02:10"])
    assert by_hand.interfaces[0].ipv4 == "10.0.0.3/24" and by_hand.asset_key is None   # .2 is n009's
    with pytest.raises(LayerbootError, match="give as many MACs"):
        clone_node(fleet, fleet.get("n001"), "n011", ["52:54:00:00:01:11"])

    fleet.add_rule(check_rule({"macs": "52:54:00:bb:00:00-52:54:00:bb:00:ff", "names": "auto[1-2]",
                               "profile": "web", "ipv4": "10.0.0.100/24", "gateway": "10.0.0.254"}))
    fleet.add_rule(check_rule({"serials": ["SER-9"], "names": "s[1-9]", "profile": "web"}))
    for index, new in enumerate(("52:54:00:bb:00:10", "52:54:00:bb:00:11", "52:54:00:bb:00:12")):
        record = fleet.record_discovery(new, check_facts(facts(new, serial=f"X{index}",
                                                               uuid=UUID[:-1] + str(index)), new)[0],
                                        {}, "", max_pending=10, keep=3600)
        auto = auto_accept(fleet, record)
        assert (auto.name if auto else None) == ("auto1", "auto2", None)[index]      # the names run out
    assert fleet.get("auto2").interfaces[0].ipv4 == "10.0.0.101/24"
    first = fleet.record_discovery("52:54:00:cc:00:01", check_facts(facts("52:54:00:cc:00:01", serial="SER-9"),
                                                                    "52:54:00:cc:00:01")[0], {}, "",
                                   max_pending=10, keep=3600)
    assert auto_accept(fleet, first).name == "s1"
    second = fleet.record_discovery("52:54:00:cc:00:02", check_facts(facts("52:54:00:cc:00:02", serial="SER-9",
                                                                           uuid=UUID[:-1] + "f"),
                                                                     "52:54:00:cc:00:02")[0], {}, "",
                                    max_pending=10, keep=3600)
    assert auto_accept(fleet, second) is None          # a serial is accepted once
    with pytest.raises(DiscoveryFull):
        for index in range(10):
            other = f"52:54:00:dd:00:{index:02x}"
            fleet.record_discovery(other, check_facts(facts(other), other)[0], {}, "", max_pending=3, keep=3600)
    assert fleet.record_discovery("52:54:00:dd:00:00", check_facts(facts("52:54:00:dd:00:00"),
                                                                   "52:54:00:dd:00:00")[0], {}, "",
                                  max_pending=3, keep=3600, now=1e12)["reports"] == 1   # old ones expired
