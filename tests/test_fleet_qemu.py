"""Fleet identity under QEMU (TCG): the real layerbootd and dnsmasq in a network namespace, nodes PXE-booting
through their NIC's iPXE ROM.

1. Two nodes of one profile (two MACs, described with ``nodes add n[01-02]``) boot at once, node 2 streaming the
   profile's base (``layerboot.fetch=stream``), and come up as themselves: their own host name, the static
   address of their per-node iPXE script, the SSH host key the server generated for them (private half
   root-only), each listing the other in /etc/hosts. From inside node 1, node 2's manifest and layer are refused
   with both credentials node 1 has (boot token, node secret).
2. An unknown MAC gets the discovery boot, reports and waits; ``nodes accept`` makes it node x01 of another
   cluster (its DMI UUID and serial become its asset key); rebooted, it boots as itself, with its own cluster's
   hosts and none of the first cluster's.

One boot per node and scenario; each ends on the node's explicit pass line and a scan for tracebacks.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from layerboot.build.qemu import NodeConfig, QemuNode
from pxenet import Lan
from server_daemon import write_config
from test_boot_net_qemu import busybox_store, dnsmasq, tap_nic
from test_boot_qemu import assert_clean
from test_pxe_qemu import needs_qemu, start_daemon

pytestmark = [pytest.mark.qemu, pytest.mark.root, needs_qemu]

CMDLINE = "console=ttyS0 quiet no_timer_check layerboot.emergency=poweroff"
FAILS = (r"layerboot: FAILED", r"Kernel panic", r"Traceback")
N1, N2, X1 = "52:54:00:74:00:01", "52:54:00:74:00:02", "52:54:00:74:09:01"
UUIDS = {N1: "7a0e4c12-0001-4b2a-9d2e-5c1f00740001", N2: "7a0e4c12-0002-4b2a-9d2e-5c1f00740002",
         X1: "7a0e4c12-0901-4b2a-9d2e-5c1f00740901"}
URL = "http://10.74.0.1:8074"
# The node's /sbin/init: print who it is and what it may fetch, then power off.
FLEET_INIT = r"""#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
. /run/layerboot/net.env
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
me=$(arg layerboot.node); token=$(arg layerboot.token); secret=$(cat /run/layerboot/node.secret 2>/dev/null)
echo "FLEET-HOSTNAME $(hostname) $(cat /etc/hostname)"
echo "FLEET-ADDR $(ip -4 addr show dev eth0 | grep -o 'inet [0-9./]*' | tr '\n' ';')"
echo "FLEET-HOSTS $(grep -v '^#' /etc/hosts | tr '\t\n' ' ;')"
echo "FLEET-KEY $(cat /etc/ssh/ssh_host_ed25519_key.pub)"
echo "FLEET-PRIVATE $(stat -c %a /etc/ssh/ssh_host_ed25519_key) $(sha256sum < /etc/ssh/ssh_host_ed25519_key)"
get() {   # get NAME PATH CREDENTIAL: one line with wget's status and error
  out=$(wget -q -O /dev/null --header "Authorization: Bearer $3" "$LAYERBOOT_SERVER$2" 2>&1)
  echo "FLEET-GET $1 $? $out" | tr '\n' ' '; echo
}
get own-manifest "/nodes/$me/manifest" "$token"
other=$(arg lbtest.other)
if [ -n "$other" ]; then
  mac=${other%%,*}; layer=${other#*,}
  get other-manifest-token "/nodes/$mac/manifest" "$token"
  get other-manifest-secret "/nodes/$mac/manifest" "$secret"
  get other-layer-token "/objects/$layer" "$token"
  get other-layer-secret "/objects/$layer" "$secret"
fi
echo FLEET-DONE
poweroff -f
"""


@pytest.fixture(scope="module")
def fleet_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("fleet-store")
    built = busybox_store(work, FLEET_INIT, "busybox base that prints who the node is")
    paths = built["paths"]
    built["profiles"].create("fleet", built["base"], cmdline=CMDLINE, kernel=built["kernel_digest"],
                             initrd=built["initrd_digest"])
    config = write_config(work / "layerbootd.toml", paths, public_url=URL, unknown_mac="discover", debug=True)
    config.write_text(config.read_text() + '[fleet]\ndiscovery_profile = "fleet"\nmenu_timeout = 0\n'
                      'discovery_poll = 2\nssh_host_key_types = ["ed25519"]\n')
    described = {"paths": paths, "config": config}
    for cluster in ("c1", "c2"):
        layerboot(described, "clusters", "add", cluster, "--domain", f"{cluster}.example")
    return described


def layerboot(store: dict, *args: str) -> str:
    """One admin command (the CLI as typed); its stdout."""
    done = subprocess.run([sys.executable, "-m", "layerboot", "--store", str(store["paths"].root), "--config",
                           str(store["config"]), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"layerboot {' '.join(args)}: {done.stderr}"
    return done.stdout


def node(lan: Lan, tmp: Path, mac: str, tap: str, name: str) -> QemuNode:
    return QemuNode(NodeConfig(nics=tap_nic(lan, "n0", tap, mac, rom=True), namespace=lan.bridge_ns,
                               uuid=UUIDS[mac], serial=f"lb-{mac[-5:].replace(':', '')}"), tmp / f"{name}.log")


def report(node: QemuNode) -> dict[str, str]:
    node.wait_for(r"^FLEET-DONE", timeout=900, fail=FAILS)
    return {m.group(1): m.group(2) for m in re.finditer(r"^FLEET-([A-Z-]+) ?(.*?)\r?$", node.text(), re.M)}


def gets(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^FLEET-GET (\S+) (.*?)\s*$", text, re.M)}


def fingerprint(public: str, tmp: Path) -> str:
    (tmp / "key.pub").write_text(public + "\n")
    return subprocess.run(["ssh-keygen", "-lf", tmp / "key.pub"], capture_output=True, text=True,
                          check=True).stdout.split()[1]


@pytest.fixture(scope="module")
def lan(fleet_store: dict, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("fleet-lan")
    with Lan() as lan:
        srv = lan.host("srv", "10.74.0.1/24")
        start_daemon(lan, srv, fleet_store["config"], URL, tmp / "layerbootd.log")
        dnsmasq(lan, srv, tmp, "--dhcp-range=10.74.0.100,10.74.0.120,255.255.255.0,1h",
                "--dhcp-userclass=set:ipxe,iPXE", f"--dhcp-boot=tag:ipxe,{URL}/boot/${{netX/mac}}.ipxe")
        lan.daemon_log = tmp / "layerbootd.log"  # type: ignore[attr-defined]
        yield lan


def test_two_nodes_boot_as_themselves_and_not_as_each_other(fleet_store: dict, lan: Lan, tmp_path: Path) -> None:
    store = fleet_store
    layerboot(store, "groups", "add", "compute", "--profile", "fleet", "--interface", "eth0",
              "--gateway", "10.74.0.1")
    added = layerboot(store, "nodes", "add", "n[01-02]", "--mac", N1, "--ip", "10.74.0.11/24", "--cluster", "c1",
                      "--group", "compute")
    assert added.startswith("added 2 nodes: n01 (52:54:00:74:00:01, 10.74.0.11/24)"), added
    for mac, name in ((N1, "n01"), (N2, "n02")):
        layerboot(store, "nodes", "set", name, "--asset-key", f"{UUIDS[mac]}:lb-{mac[-5:].replace(':', '')}")
    rendered = {n["name"]: n for n in json.loads(layerboot(store, "nodes", "render", "--json"))["nodes"]}
    layerboot(store, "nodes", "set", "n01", "--kernel-args", f"lbtest.other={N2},{rendered['n02']['layer']}")
    layerboot(store, "nodes", "set", "n02", "--kernel-args", "layerboot.fetch=stream")
    keys = {name: json.loads(layerboot(store, "nodes", "show", name, "--json"))["fleet"]["host_keys"][0]
            for name in ("n01", "n02")}
    private = {name: (store["paths"].state / "nodekeys" /
                      json.loads(layerboot(store, "nodes", "show", name, "--json"))["fleet"]["machine_id"] /
                      "ssh_host_ed25519_key").read_bytes() for name in ("n01", "n02")}

    with node(lan, tmp_path, N1, "tap1", "n01") as one, node(lan, tmp_path, N2, "tap2", "n02") as two:
        seen = {"n01": report(one), "n02": report(two)}
        fetched = gets(one.text())
        one.wait_exit(60)
        two.wait_exit(60)
    for booted in (one, two):
        assert_clean(booted)
    for name, address, other in (("n01", "10.74.0.11", "n02"), ("n02", "10.74.0.12", "n01")):
        lines = seen[name]
        assert lines["HOSTNAME"] == f"{name} {name}"
        assert lines["ADDR"] == f"inet {address}/24;"                # static, from its own iPXE script
        hosts = lines["HOSTS"]
        assert f"{address} {name}.c1.example {name};" in hosts and f" {other}.c1.example {other};" in hosts
        assert fingerprint(lines["KEY"], tmp_path) == keys[name]["fingerprint"]
        assert lines["PRIVATE"].split()[:2] == ["600", hashlib.sha256(private[name]).hexdigest()]
    assert seen["n01"]["KEY"] != seen["n02"]["KEY"]
    # node 2 streams its profile's base (nbd + dm-verity) and fetches its own layer whole (node layers carry no
    # tree), through a loop device whose module stage1 loads only then; node 1 fetches both layers whole
    assert re.search(r"^layerboot: streaming 1 layers; 1 without a dm-verity tree are fetched whole\r?$",
                     two.text(), re.M), two.text()[-3000:]
    assert "layerboot: streaming" not in one.text()
    # node 1 reaches the server (its own manifest) but gets nothing of node 2's, with either credential
    assert fetched.pop("own-manifest").startswith("0"), fetched
    assert set(fetched) == {"other-manifest-token", "other-manifest-secret", "other-layer-token",
                            "other-layer-secret"}
    for what, result in fetched.items():
        assert result.startswith("1 ") and "403" in result, (what, result)
    served = lan.daemon_log.read_text()  # type: ignore[attr-defined]
    assert re.search(rf"10\.74\.0\.11 GET /nodes/{N1}/manifest 200", served), served[-3000:]
    print("PASS: two nodes of one profile booted as themselves; node 1 got nothing of node 2's")


def test_an_unknown_mac_enrolls_is_accepted_and_boots_as_itself(fleet_store: dict, lan: Lan,
                                                                 tmp_path: Path) -> None:
    store = fleet_store
    with node(lan, tmp_path, X1, "tapx", "discovery") as discovering:
        discovering.wait_for(rf"discovery: {X1} is not registered; reporting", timeout=900, fail=FAILS)
        pending = json.loads(layerboot(store, "nodes", "pending", "--json"))
        assert pending, "nothing pending"
        accepted = layerboot(store, "nodes", "accept", X1, "--name", "x01", "--profile", "fleet", "--cluster",
                             "c2", "--ip", "10.74.0.21/24", "--gateway", "10.74.0.1")
        discovering.wait_for(rf"discovery: {X1} was accepted", timeout=120, fail=FAILS)
        discovering.wait_exit(120)                       # it reboots (QEMU runs with -no-reboot: it exits)
    assert_clean(discovering)
    shown = json.loads(layerboot(store, "nodes", "show", "x01", "--json"))["fleet"]
    assert shown["asset_key"] == f"{UUIDS[X1]}:lb-0901", (accepted, shown)
    with node(lan, tmp_path, X1, "tapx2", "x01") as itself:
        lines = report(itself)
        itself.wait_exit(60)
    assert_clean(itself)
    assert lines["HOSTNAME"] == "x01 x01" and lines["ADDR"] == "inet 10.74.0.21/24;"
    assert "x01.c2.example x01;" in lines["HOSTS"]
    assert "n01" not in lines["HOSTS"] and "10.74.0.11" not in lines["HOSTS"]     # the other cluster stays out
    assert "node secret: claimed with the asset key" in itself.text()
    print("PASS: an unknown MAC enrolled, was accepted and booted as itself")
