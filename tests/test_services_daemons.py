"""The site services with the real daemons, in network namespaces: rsyslog, chrony and dnsmasq configured by
`layerboot services apply`, node-side rsyslog and chrony configured by node_files(), stage1's sender, layerbootd
keeping DNS current, and `layerboot pxe` handing the services out by DHCP.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from layerboot.paths import Paths
from layerboot.run import Process, tool_path
from layerboot.server.db import open_database
from layerboot.server.nodes import Registry
from layerboot.server.services.base import make_site
from layerboot.server.services.manage import refresh
from layerboot.server.services.node import node_files
from layerboot.server.services.syslog import relp_available
from layerboot.settings import load_config

from pxenet import Lan, wait_for
from sitelab import SiteLab

pytestmark = [pytest.mark.root, pytest.mark.skipif(
    not all(tool_path(t) for t in ("rsyslogd", "chronyd", "dnsmasq", "busybox", "logger")),
    reason="needs rsyslog, chrony, dnsmasq-base, busybox-static and util-linux's logger")]

STAGE1 = Path(__file__).resolve().parent.parent / "initrd"
NODE_MAC, OTHER_MAC = "52:54:00:5e:00:0a", "52:54:00:5e:00:14"
NODE_NAME, OTHER_NAME = "node-5254005e000a", "node-5254005e0014"


def registry(config_path: Path) -> Registry:
    config = load_config(config_path)
    return Registry(open_database(config, Paths(config.store_root)))


def lease(store: Path, mac: str, address: str) -> None:
    """A live DHCP lease as 'layerboot pxe' (dnsmasq) writes it."""
    path = store / "state" / "pxe" / "dnsmasq.leases"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{int(time.time()) + 3600} {mac} {address} * *\n")


@pytest.fixture
def site_store(profiles, make_layer) -> Path:  # noqa: ANN001
    base = make_layer({"etc/os-release": "test\n"}, kind="base")
    profiles.create("p", base)
    return profiles.paths.root


class NodeRsyslog:
    """A node's rsyslog as Debian runs it, with node_files()' forwarding file: the main file's rules write
    ``local`` (Debian's /var/log/syslog) for whatever reaches them."""

    def __init__(self, lab: SiteLab, ns: str, config_path: Path) -> None:
        self.lab, self.ns = lab, ns
        self.dir = lab.tmp / f"node-{ns}"
        self.local = self.dir / "local-syslog"
        self.socket = self.dir / "log.sock"
        (self.dir / "etc/rsyslog.d").mkdir(parents=True, exist_ok=True)
        (lab.tmp / "node-spool").mkdir(exist_ok=True)
        for path, text in node_files(load_config(config_path), {"name": "n1"}).items():
            if path.startswith("/etc/rsyslog.d/"):
                (self.dir / path.lstrip("/")).write_text(text)
        self.main = self.dir / "rsyslog.conf"
        self.main.write_text(f'module(load="imuxsock" SysSock.Use="off")\n'
                             f'input(type="imuxsock" Socket="{self.socket}")\n'
                             f'global(workDirectory="{self.dir}")\n'
                             f"$IncludeConfig {self.dir}/etc/rsyslog.d/*.conf\n"
                             f"*.* {self.local}\n")
        self.proc: Process | None = None

    def start(self) -> None:
        pid = self.dir / "pid"
        pid.unlink(missing_ok=True)
        self.proc = self.lab.lan.spawn(self.ns, ["rsyslogd", "-n", "-f", str(self.main), "-i", str(pid)],
                                       log=open(self.dir / "rsyslogd.log", "ab"))
        assert wait_for(lambda: self.socket.exists() and pid.exists(), 20), (self.dir / "rsyslogd.log").read_text()

    def stop(self) -> None:
        assert self.proc is not None
        self.lab.stop(self.proc)
        self.proc = None

    def log(self, tag: str, *messages: str) -> None:
        for message in messages:
            self.lab.lan.run(self.ns, ["logger", "-u", str(self.socket), "-t", tag, message])


def stage1_send(lab: SiteLab, ns: str, target: str, *lines: str) -> str:
    """stage1's remotelog.py, run by this machine's Python in ``ns``: lines said before the network is up, then
    start() (the net stage), then more lines."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from stage1 import remotelog\n"
            "remotelog.record('say', 'said before the network was up')\n"
            "print(remotelog.start(sys.argv[2], ['10.93.0.1'], hostname='n1'))\n"
            "for line in sys.argv[3:]: remotelog.record('error' if line.startswith('FAILED') else 'say', line)\n"
            "remotelog.close()\n")
    return lab.lan.run(ns, [sys.executable, "-S", "-c", code, str(STAGE1), target, *lines]).text.strip()


def test_syslog_per_node_per_tag_with_a_queue_that_waits_for_the_server(tmp_path: Path, site_store: Path) -> None:
    with Lan() as lan:
        srv = lan.host("srv", "10.93.0.1/24")
        node_ns = lan.host("node", "10.93.0.10/24")
        other_ns = lan.host("other", "10.93.0.20/24")
        lab = SiteLab(lan, tmp_path, srv)
        config = lab.config(site_store, "10.93.0.1", "10.93.0.0/24", enabled=("syslog",))
        registry(config).register(NODE_MAC, "p")
        lease(site_store, NODE_MAC, "10.93.0.10")
        applied = lab.cli(config, "services", "apply", "--no-restart")
        assert "syslog: wrote " in applied.text

        # the node's rsyslog starts while the server is away: what it logs waits in its queue
        node = NodeRsyslog(lab, node_ns, config)
        node.start()
        node.log("lbtest-app", *(f"queued {i}" for i in range(20)))
        time.sleep(2)
        server = lab.rsyslogd()
        text = lab.wait_log(f"{NODE_NAME}/lbtest-app.log", "queued 19", timeout=30)
        # all of them, in order; plain TCP delivers at least once (rsyslog may send the line that found the server
        # away once more after reconnecting): RELP, below, is for exactly once
        arrived = [line.split()[-1] for line in text.splitlines()]
        assert list(dict.fromkeys(arrived)) == [str(i) for i in range(20)], arrived

        node.log("layerboot-heartbeat", "heartbeat ok")
        lab.wait_log(f"{NODE_NAME}/layerboot/heartbeat.log", "heartbeat ok")
        node.log("sshd", "Accepted publickey for root")
        lab.wait_log(f"{NODE_NAME}/sshd.log", "Accepted publickey")
        assert not node.local.exists(), "the node kept a local log file"

        # stage1's boot messages: UDP by default, TCP when asked; the line said before the network was up first
        said = stage1_send(lab, node_ns, "", "boot interface eth0 (BOOTIF)", "FAILED: layers: test failure")
        assert said == "boot messages go to the log server udp://10.93.0.1:514"
        text = lab.wait_log(f"{NODE_NAME}/layerboot/stage1.log", "FAILED: layers: test failure")
        lines = [line for line in text.splitlines() if "layerboot-stage1" in line]
        assert ["said before the network" in lines[0], "boot interface eth0" in lines[1]] == [True, True]
        stage1_send(lab, node_ns, "tcp://10.93.0.1:514", "over tcp")
        lab.wait_log(f"{NODE_NAME}/layerboot/stage1.log", "over tcp")

        # another sender: not a registered node, kept apart; no tag or a path-like tag: untagged.log
        stage1_send(lab, other_ns, "10.93.0.1", "from elsewhere")
        lab.wait_log("unregistered/10.93.0.20/layerboot/stage1.log", "from elsewhere")
        raw = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               "s.sendto(b'<14>1 - other - - - - no tag at all', ('10.93.0.1', 514))\n"
               "s.sendto(b'<14>1 - other ../../../tmp/escape - - - path tag', ('10.93.0.1', 514))\n")
        lan.run(other_ns, [sys.executable, "-c", raw])
        text = lab.wait_log("unregistered/10.93.0.20/untagged.log", "path tag")
        assert "no tag at all" in text
        assert not list(tmp_path.rglob("escape*")) and not Path("/tmp/escape.log").exists()

        # layerbootd's refresh (run here directly): the other address becomes a node, rsyslog hears of it
        registry(config).register(OTHER_MAC, "p")
        lease(site_store, OTHER_MAC, "10.93.0.20")
        site = make_site(load_config(config), Paths(site_store), registry(config))
        [outcome] = refresh(site)
        assert outcome.service == "syslog" and "signalled rsyslogd" in outcome.actions[0], outcome
        assert refresh(site) == []                                       # nothing changed: nothing done
        stage1_send(lab, other_ns, "10.93.0.1", "now a node")
        lab.wait_log(f"{OTHER_NAME}/layerboot/stage1.log", "now a node")

        status = json.loads(lab.cli(config, "services", "status", "--json").text)["services"]
        syslog = next(s for s in status if s["name"] == "syslog")
        assert syslog["configured"] == "yes" and syslog["pid"] == int(lab.pid_file("rsyslogd").read_text())
        wanted = ["udp/514", "tcp/514"] + (["relp/2514"] if relp_available() else [])
        assert syslog["listening"] == wanted and syslog["missing"] == []
        table = lab.cli(config, "services", "status").text
        assert f"pid {syslog['pid']}" in table and " ".join(wanted) in table
        lab.stop(server)
        node.stop()


@pytest.mark.skipif(not relp_available(), reason="needs rsyslog-relp")
def test_relp_forwarding_keeps_the_queue_across_a_server_outage_and_a_node_restart(tmp_path: Path,
                                                                                 site_store: Path) -> None:
    with Lan() as lan:
        srv = lan.host("srv", "10.94.0.1/24")
        node_ns = lan.host("node", "10.94.0.10/24")
        lab = SiteLab(lan, tmp_path, srv)
        config = lab.config(site_store, "10.94.0.1", "10.94.0.0/24", enabled=("syslog",))
        config.write_text(config.read_text().replace("[services.syslog]\n",
                                                     '[services.syslog]\nnode_protocol = "relp"\n'))
        registry(config).register(NODE_MAC, "p")
        lease(site_store, NODE_MAC, "10.94.0.10")
        lab.cli(config, "services", "apply", "--no-restart")
        server = lab.rsyslogd()
        node = NodeRsyslog(lab, node_ns, config)
        assert 'action(type="omrelp" target="10.94.0.1" port="2514"' in \
            (node.dir / "etc/rsyslog.d/20-layerboot-forward.conf").read_text()
        node.start()
        node.log("lbtest-app", "before the outage")
        lab.wait_log(f"{NODE_NAME}/lbtest-app.log", "before the outage")

        lab.stop(server)                                  # the server goes away ...
        node.log("lbtest-app", *(f"during {i}" for i in range(30)))
        node.stop()                                        # ... the node's rsyslog stops: its queue goes to disk
        spool = tmp_path / "node-spool"
        assert list(spool.glob("layerboot-forward-1*.qi")), sorted(p.name for p in spool.iterdir())
        node.start()
        server = lab.rsyslogd()
        text = lab.wait_log(f"{NODE_NAME}/lbtest-app.log", "during 29", timeout=40)
        during = list(dict.fromkeys(line.split()[-1] for line in text.splitlines() if " during " in line))
        # Every line, in order, but the one rsyslog was retrying when it was stopped: it cancels that worker at
        # shutdown and loses its message (rsyslog issue #3941; docs/services.md says so). RELP may repeat one.
        assert during in ([str(i) for i in range(30)], [str(i) for i in range(1, 30)]), during
        lab.stop(server)
        node.stop()


def test_chrony_serves_time_to_the_boot_network_only(tmp_path: Path, site_store: Path) -> None:
    with Lan() as lan:
        srv = lan.host("srv", "10.95.0.1/24")
        inside = lan.host("node", "10.95.0.10/24")
        outside = lan.host("far", "10.95.0.200/24")       # on the wire, but not in the allowed network
        lab = SiteLab(lan, tmp_path, srv)
        config = lab.config(site_store, "10.95.0.1", "10.95.0.0/25", enabled=("time",))
        lab.cli(config, "services", "apply", "--no-restart")
        lab.chronyd()
        client = tmp_path / "client.conf"
        text = node_files(load_config(config))["/etc/chrony/chrony.conf"]
        assert "server 10.95.0.1 iburst" in text
        client.write_text(text.replace("/var/lib/chrony/chrony.drift", str(tmp_path / "drift"))
                          + f"pidfile {tmp_path}/client.pid\ncmdport 0\nbindcmdaddress /\n")

        def ask(ns: str) -> str:
            result = lan.run(ns, ["chronyd", "-Q", "-t", "12", "-u", "root", "-f", str(client)], check=False,
                             timeout=30)
            return result.text + result.stderr.decode()
        answer = ask(inside)
        assert "System clock wrong by" in answer, answer
        assert "No suitable source" in ask(outside)

        status = json.loads(lab.cli(config, "services", "status", "--json").text)["services"]
        time_status = next(s for s in status if s["name"] == "time")
        assert time_status["listening"] == ["ntp/123"] and time_status["configured"] == "yes"


def test_dns_follows_the_registry_through_layerbootd(tmp_path: Path, site_store: Path) -> None:
    from server_daemon import Daemon

    with Lan() as lan:
        srv = lan.host("srv", "10.96.0.1/24")
        client = lan.host("cli", "10.96.0.50/24")
        lab = SiteLab(lan, tmp_path, srv)
        config = lab.config(site_store, "10.96.0.1", "10.96.0.0/24", enabled=("dns",))
        lab.cli(config, "services", "apply", "--no-restart")
        lab.dnsmasq()
        paths = Paths(site_store)
        daemon = Daemon(paths, config, tmp_path / "layerbootd.log").start()
        try:
            def lookup(name: str) -> str:
                result = lan.run(client, ["busybox", "nslookup", name, "10.96.0.1"], check=False, timeout=15)
                return result.text + result.stderr.decode()

            registry(config).register(NODE_MAC, "p")
            lease(site_store, NODE_MAC, "10.96.0.10")
            assert wait_for(lambda: "10.96.0.10" in lookup(f"{NODE_NAME}.cluster.internal"), 15), \
                (tmp_path / "layerbootd.log").read_text()
            assert "10.96.0.10" in lookup(NODE_NAME)                             # the short name too
            assert f"{NODE_NAME}.cluster.internal" in lookup("10.96.0.10")       # and the reverse

            registry(config).remove(NODE_MAC)
            assert wait_for(lambda: "10.96.0.10" not in lookup(f"{NODE_NAME}.cluster.internal"), 15)
            log = (tmp_path / "layerbootd.log").read_text()
            assert "site services: refreshing dns from the registry every 1 s" in log
            assert "services: dns: updated" in log and "signalled dnsmasq" in log
        finally:
            daemon.stop()
        status = json.loads(lab.cli(config, "services", "status", "--json").text)["services"]
        dns = next(s for s in status if s["name"] == "dns")
        assert dns["listening"] == ["udp/53", "tcp/53"] and dns["last_error"] == ""


UDHCPC_SCRIPT = "#!/bin/sh\necho \"EVENT=$1\"\nenv | grep -E '^(ip|opt7|ntpsrv|dns|domain|search)=' | sort\n"


def test_pxe_hands_the_services_out_by_dhcp(tmp_path: Path, site_store: Path) -> None:
    from test_pxe_dnsmasq import tmp_tftp

    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    try:
        with Lan() as lan:
            srv = lan.host("srv", "10.97.0.1/24")
            cli = lan.host("cli")
            lab = SiteLab(lan, tmp_path, srv)
            config = lab.config(site_store, "10.97.0.1", "10.97.0.0/24")
            proc = lan.spawn(srv, [sys.executable, "-m", "layerboot", "-c", str(config), "pxe", "-i", "eth0",
                                   "--tftp-root", str(tmp_tftp(tmp_path)), "--range", "10.97.0.100,10.97.0.120",
                                   "--server-url", "http://10.97.0.1:8080"], log=open(tmp_path / "pxe.log", "wb"))
            assert wait_for(lambda: "TFTP root is" in (tmp_path / "pxe.log").read_text() or proc.poll() is not None,
                            20), (tmp_path / "pxe.log").read_text()
            result = lan.run(cli, ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-s", str(script), "-t", "6",
                                   "-T", "1", "-O", "7", "-O", "ntpsrv", "-O", "search"], timeout=30)
            values = dict(line.split("=", 1) for line in result.text.splitlines() if "=" in line)
            assert values["EVENT"] == "bound", result.text
            # busybox names option 7 (log server) only by number: its value in hex
            assert (values["opt7"], values["ntpsrv"], values["dns"]) == ("0a610001", "10.97.0.1", "10.97.0.1")
            assert values["domain"] == "cluster.internal" and values["search"] == "cluster.internal"
    finally:
        shutil.rmtree(tmp_tftp(tmp_path), ignore_errors=True)
