"""The site services' files as rendered (no daemons run here: tests/test_services_daemons.py runs them).

Each rendered file is looked at: the server's rsyslog, chrony and dnsmasq drop-ins, the hosts file and the
syslog node table, the node-side files, the DHCP options of 'layerboot pxe'; and bad settings are one error.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from layerboot.errors import LayerbootError
from layerboot.paths import Paths
from layerboot.server.dnsmasq import render_config
from layerboot.server.pxe import PxePlan
from layerboot.server.services import node as node_side
from layerboot.server.services import syslog as syslog_module
from layerboot.server.services.base import Site, make_site
from layerboot.server.services.hosts import (HostRecord, default_name, host_records, hosts_text, node_table,
                                             read_leases)
from layerboot.server.services.manage import SERVICES, dhcp_options, select
from layerboot.settings import load_config
from layerboot.tools.cli import main

SYSLOG, TIME, DNS = SERVICES


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "layerboot.toml"
    path.write_text(f"""
[store]
root = "{tmp_path}/store"
[services]
address = "10.20.0.1"
networks = ["10.20.0.0/24", "fd20::/64"]
root = "{tmp_path}/root"
[services.syslog]
enabled = true
dir = "{tmp_path}/logs"
[services.time]
enabled = true
upstream = ["pool:2.debian.pool.ntp.org", "192.0.2.7"]
[services.dns]
enabled = true
domain = "Rack1.Example"
upstream = ["192.0.2.53"]
""")
    return path


def site(tmp_path: Path, records: list[HostRecord] | None = None) -> Site:
    config = load_config(config_file(tmp_path))
    registry = SimpleNamespace(all=lambda: [SimpleNamespace(mac=r.mac) for r in records or []])
    return make_site(config, Paths(config.store_root), registry)


def test_rsyslog_server_dropin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syslog_module, "relp_available", lambda: True)
    s = site(tmp_path)
    [(path, text)] = SYSLOG.files(s).items()
    assert path == tmp_path / "root/etc/rsyslog.d/40-layerboot-nodes.conf"
    lines = text.splitlines()
    for wanted in ('module(load="imudp")', 'module(load="imtcp")', 'module(load="imrelp")',
                   'input(type="imudp" port="514" ruleset="layerboot_nodes")',
                   'input(type="imtcp" port="514" ruleset="layerboot_nodes")',
                   'input(type="imrelp" port="2514" ruleset="layerboot_nodes")',
                   f'  constant(value="{tmp_path}/logs/")',
                   '    set $.lb_node = "unregistered/" & $fromhost-ip;'):
        assert wanted in lines, wanted
    assert f'lookup_table(name="layerboot_nodes" file="{tmp_path}/store/state/services/syslog-nodes.json"' in text
    # every message of these inputs ends in the ruleset: none reaches the server's own files
    assert text.count("stop") >= 1 and "ruleset(name=\"layerboot_nodes\")" in text
    assert [p.label for p in SYSLOG.ports(s.config)] == ["udp/514", "tcp/514", "relp/2514"]

    monkeypatch.setattr(syslog_module, "relp_available", lambda: False)
    text = next(iter(SYSLOG.files(site(tmp_path)).values()))
    assert "imrelp" not in text                                  # no rsyslog-relp: no RELP input


def test_rsyslog_ports_off_and_unregistered_dropped(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    path.write_text(path.read_text().replace('[services.syslog]\n', '[services.syslog]\nudp_port = 0\n'
                                             'unregistered = "drop"\n'))
    config = load_config(path)
    text = next(iter(SYSLOG.files(make_site(config, Paths(config.store_root))).values()))
    assert "imudp" not in text and 'input(type="imtcp" port="514"' in text
    assert "unregistered/" not in text.split("ruleset(")[1] and "    stop\n" in text


def test_chrony_dropin_allows_the_boot_networks(tmp_path: Path) -> None:
    s = site(tmp_path)
    [(path, text)] = TIME.files(s).items()
    assert path == tmp_path / "root/etc/chrony/conf.d/layerboot.conf"
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["allow 10.20.0.0/24", "allow fd20::/64", "local stratum 10 orphan",
                     "pool 2.debian.pool.ntp.org iburst", "server 192.0.2.7 iburst"]
    assert [p.label for p in TIME.ports(s.config)] == ["ntp/123"]


def test_dnsmasq_dropin_hosts_and_node_table(tmp_path: Path) -> None:
    records = [HostRecord("node-525400000002", ("10.20.0.12", "fd20::12"), "52:54:00:00:00:02"),
               HostRecord("node-525400000001", ("10.20.0.11",), "52:54:00:00:00:01")]
    s = site(tmp_path, records=records)
    [(path, text)] = DNS.files(s).items()
    assert path == tmp_path / "root/etc/dnsmasq.d/layerboot-dns.conf"
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["listen-address=10.20.0.1", "bind-interfaces",
                     f"hostsdir={tmp_path}/store/state/services/hosts", "domain=rack1.example",
                     "local=/rack1.example/", "domain-needed", "no-resolv", "server=192.0.2.53"]
    hosts = hosts_text(host_records(s, [lambda _: records]), "rack1.example").splitlines()
    assert hosts[1:] == ["10.20.0.11\tnode-525400000001.rack1.example node-525400000001",
                         "10.20.0.12\tnode-525400000002.rack1.example node-525400000002",
                         "fd20::12\tnode-525400000002.rack1.example node-525400000002"]
    table = json.loads(node_table(host_records(s, [lambda _: records])))
    assert table["nomatch"] == "" and table["type"] == "string"
    assert {e["index"]: e["value"] for e in table["table"]} == {
        "10.20.0.11": "node-525400000001", "10.20.0.12": "node-525400000002", "fd20::12": "node-525400000002"}
    assert [p.label for p in DNS.ports(s.config)] == ["udp/53", "tcp/53"]


def test_records_come_from_registry_and_live_leases(tmp_path: Path) -> None:
    nodes = [HostRecord("", (), "52:54:00:00:00:01"), HostRecord("", (), "52:54:00:00:00:02")]
    s = site(tmp_path, records=nodes)
    leases = s.paths.state / "pxe" / "dnsmasq.leases"
    leases.parent.mkdir(parents=True)
    leases.write_text("0 52:54:00:00:00:01 10.20.0.11 * 01:52:54:00:00:00:01\n"          # never expires
                      "1 52:54:00:00:00:02 10.20.0.99 * *\n"                              # long expired
                      "4102444800 52:54:00:00:00:09 10.20.0.50 other *\n"                 # not registered
                      "duid 00:01:00:01:2c:aa\n4102444800 1234 fd20::5 * 00:01\n")        # IPv6 lines
    assert [(lease.mac, lease.address) for lease in read_leases(leases)] == [
        ("52:54:00:00:00:01", "10.20.0.11"), ("52:54:00:00:00:09", "10.20.0.50")]
    assert host_records(s) == [HostRecord("node-525400000001", ("10.20.0.11",), "52:54:00:00:00:01"),
                               HostRecord("node-525400000002", (), "52:54:00:00:00:02")]
    assert default_name("52:54:00:AB:cd:01") == "node-525400abcd01"


def test_records_first_source_wins_and_bad_ones_are_left_out(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    s = site(tmp_path)
    fleet = [HostRecord("web1", ("10.20.0.21",), "52:54:00:00:00:01"), HostRecord("Bad_Name", ("10.20.0.22",)),
             HostRecord("web2", ("10.20.0.23", "not-an-address"))]
    registry = [HostRecord("node-525400000001", ("10.20.0.11",), "52:54:00:00:00:01"),       # same MAC as web1
                HostRecord("web2", ("10.20.0.24",)),                                           # same name as web2
                HostRecord("db1", ("10.20.0.21",)),                                            # web1's address
                HostRecord("unregistered", ("10.20.0.30",))]                                   # reserved name
    records = host_records(s, [lambda _: fleet, lambda _: registry])
    assert records == [HostRecord("db1", ()), HostRecord("web1", ("10.20.0.21",), "52:54:00:00:00:01"),
                       HostRecord("web2", ("10.20.0.23",))]
    assert "'Bad_Name' is not a usable host name" in caplog.text
    assert "address 10.20.0.21 of node db1 is already node web1's" in caplog.text


def test_node_files(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    files = node_side.node_files(config, {"name": "n001"})
    assert sorted(files) == ["/etc/chrony/chrony.conf", "/etc/rsyslog.d/20-layerboot-forward.conf",
                             "/etc/systemd/journald.conf.d/50-layerboot.conf",
                             "/etc/systemd/timesyncd.conf.d/50-layerboot.conf"]
    forward = files["/etc/rsyslog.d/20-layerboot-forward.conf"]
    assert 'action(type="omfwd" target="10.20.0.1" port="514"' in forward
    assert 'protocol="tcp" TCP_Framing="octet-counted"' in forward
    for queue in ('queue.type="LinkedList"', 'queue.spoolDirectory="/var/spool/rsyslog"',
                  'queue.maxDiskSpace="256m"', 'queue.saveOnShutdown="on"', 'action.resumeRetryCount="-1"'):
        assert queue in forward
    assert forward.rstrip().endswith("stop") and "(syslog, n001)" in forward
    assert "Storage=volatile" in files["/etc/systemd/journald.conf.d/50-layerboot.conf"]
    assert "ForwardToSyslog=yes" in files["/etc/systemd/journald.conf.d/50-layerboot.conf"]
    chrony = [line for line in files["/etc/chrony/chrony.conf"].splitlines() if not line.startswith("#")]
    assert chrony[0] == "server 10.20.0.1 iburst" and not any(line.startswith(("pool", "log")) for line in chrony)
    assert "NTP=10.20.0.1\nFallbackNTP=\n" in files["/etc/systemd/timesyncd.conf.d/50-layerboot.conf"]

    # a node's own lists (a fleet record): 'server' is services.address; [] means none on purpose
    files = node_side.node_files(config, {"syslog": ["server", "192.0.2.9"], "ntp": [], "name": "x\ninject"})
    assert sorted(files) == ["/etc/rsyslog.d/20-layerboot-forward.conf",
                             "/etc/systemd/journald.conf.d/50-layerboot.conf"]
    forward = files["/etc/rsyslog.d/20-layerboot-forward.conf"]
    assert 'target="10.20.0.1"' in forward and 'target="192.0.2.9"' in forward
    assert 'queue.filename="layerboot-forward-2"' in forward and "inject" not in forward

    relp_path = config_file(tmp_path)
    relp_path.write_text(relp_path.read_text().replace("[services.syslog]\n", '[services.syslog]\nnode_protocol = '
                                                       '"relp"\nnode_queue = "2g"\n'))
    forward = node_side.node_files(load_config(relp_path))["/etc/rsyslog.d/20-layerboot-forward.conf"]
    assert 'module(load="omrelp")' in forward and 'action(type="omrelp" target="10.20.0.1" port="2514"' in forward
    assert "TCP_Framing" not in forward and 'queue.maxDiskSpace="2g"' in forward


@pytest.mark.parametrize("key, value, message", [
    ("node_queue", '"lots"', "services.syslog.node_queue: 'lots' is not a size"),
    ("dir", '"/var/log/my logs"', "services.syslog.dir: '/var/log/my logs' must be an absolute path"),
])
def test_bad_syslog_values_are_one_error(tmp_path: Path, key: str, value: str, message: str) -> None:
    path = config_file(tmp_path)
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith(f"{key} ="))
    path.write_text(text.replace("[services.syslog]\n", f"[services.syslog]\n{key} = {value}\n"))
    config = load_config(path)
    with pytest.raises(LayerbootError, match=message):
        if key == "node_queue":
            node_side.node_files(config)
        else:
            SYSLOG.files(make_site(config, Paths(config.store_root)))


def test_bad_network_domain_and_upstream_are_one_error(tmp_path: Path) -> None:
    for old, new, message in (('networks = ["10.20.0.0/24", "fd20::/64"]', 'networks = ["10.20.0.1/24"]',
                               "services.networks: '10.20.0.1/24' is not a network"),
                              ('domain = "Rack1.Example"', 'domain = "rack 1"', "services.dns.domain: 'rack 1'"),
                              ('upstream = ["192.0.2.53"]', 'upstream = ["-bad-"]', "services.dns.upstream"),
                              ('address = "10.20.0.1"', 'address = "10.20.0.300"', "services.address")):
        path = config_file(tmp_path)
        path.write_text(path.read_text().replace(old, new))
        config = load_config(path)
        with pytest.raises(LayerbootError, match=message):
            s = make_site(config, Paths(config.store_root))
            for service in SERVICES:
                service.files(s)


def test_time_needs_a_network(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    path.write_text(path.read_text().replace('networks = ["10.20.0.0/24", "fd20::/64"]\n', ""))
    config = load_config(path)
    with pytest.raises(LayerbootError, match="services.time: no network may ask for time"):
        TIME.files(make_site(config, Paths(config.store_root)))


def test_pxe_sends_the_enabled_services_by_dhcp(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    options = dhcp_options(config, "10.20.0.1")
    assert options == ["option:log-server,10.20.0.1", "option:ntp-server,10.20.0.1", "option:dns-server,10.20.0.1",
                       "option:domain-name,rack1.example", "option:domain-search,rack1.example"]
    plan = PxePlan(interface="eth1", network=ipaddress.IPv4Network("10.20.0.0/24"),
                   address=ipaddress.IPv4Address("10.20.0.1"), server_url="http://10.20.0.1:8080",
                   tftp_root=Path("/srv/tftp"), state_dir=tmp_path, proxy=False,
                   range_start=ipaddress.IPv4Address("10.20.0.100"), range_end=ipaddress.IPv4Address("10.20.0.200"),
                   dhcp_options=tuple(options))
    lines = render_config(plan).splitlines()
    assert "dhcp-option=option:log-server,10.20.0.1" in lines and "dhcp-option=option:ntp-server,10.20.0.1" in lines
    path = config_file(tmp_path)
    path.write_text(path.read_text().replace("enabled = true", "enabled = false"))
    assert dhcp_options(load_config(path), "10.20.0.1") == [] and select(None, load_config(path)) == []


def test_cli_render_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path)
    assert main(["-c", str(path), "store", "init"]) == 0
    capsys.readouterr()
    assert main(["-c", str(path), "services", "render", "time"]) == 0
    out = capsys.readouterr().out
    assert f"# ---- {tmp_path}/root/etc/chrony/conf.d/layerboot.conf\n" in out and "allow 10.20.0.0/24" in out
    assert main(["-c", str(path), "services", "render", "--node", "-o", str(tmp_path / "node")]) == 0
    assert (tmp_path / "node/etc/chrony/chrony.conf").read_text().startswith("# written by layerboot")
    assert main(["-c", str(path), "services", "render", "mail"]) == 1
    assert "layerboot: error: no service 'mail'" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()                       # render writes nothing under services.root
    path.write_text(path.read_text().replace("enabled = true", "enabled = false"))
    assert main(["-c", str(path), "services", "apply"]) == 1
    assert "no site service is enabled" in capsys.readouterr().err
