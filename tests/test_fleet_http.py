"""Named nodes against the real layerbootd on loopback: the per-node iPXE script carries the node's network in
dracut's syntax, its manifest names it and tops its profile's chain with its own layer, which only its node secret
fetches; its cluster's hosts are in it and no other cluster's; serials grow with every change (and a pin). Unknown
MACs get the discovery boot, report, wait and are accepted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.initrd.stage1.cmdline import parse_cmdline
from layerboot.initrd.stage1.verify import VerifyError, verify_envelope
from layerboot.overlays.keys import load_public_key
from layerboot.overlays.profile import Profiles
from layerboot.run import run
from layerboot.server.auth.claim import claim_proof
from layerboot.server.fleet.queries import Fleet
from layerboot.server.fleet.records import Defaults, FleetNode, Group, Interface
from layerboot.server.ipxe import ipxe_commands
from layerboot.tools.cli import main
from server_daemon import Daemon, boot_profile, write_config

N1, N1_IB, N2, X1 = "52:54:00:f1:00:01", "52:54:00:f1:01:01", "52:54:00:f1:00:02", "52:54:00:f2:00:01"
UNKNOWN = "52:54:00:f9:00:01"
KEY1 = "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a01:lb-0001"
KEY2 = "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a02:lb-0002"
JSON = {"Accept": "application/json"}


def fleet_node(name: str, mac: str, ip: str, cluster: str, key: str | None = None,
               extra: tuple[Interface, ...] = ()) -> FleetNode:
    return FleetNode(name=name, mac=mac, cluster=cluster, groups=("compute",), asset_key=key,
                     interfaces=(Interface(device="eth0", mac=mac, ipv4=ip, gateway="10.0.0.254"), *extra))


@pytest.fixture
def daemon(profiles: Profiles, make_layer, tmp_path: Path) -> Iterator[Daemon]:  # noqa: ANN001
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, public_url="http://10.0.0.250:8080",
                          unknown_mac="discover")
    config.write_text(config.read_text() + '[fleet]\ndiscovery_profile = "p1"\nmenu_timeout = 0\n'
                      'discovery_requests_per_minute = 8\nssh_host_key_types = ["ed25519"]\n')
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    fleet = Fleet(daemon.registry().db)
    fleet.save_group(Group(name="compute", defaults=Defaults(profile="p1", kernel_args="nosmt")), create=True)
    for cluster in ("c1", "c2"):
        fleet.save_group(Group(name=cluster, kind="cluster", defaults=Defaults(domain=f"{cluster}.example")),
                         create=True)
    fleet.save([fleet_node("n001", N1, "10.0.0.1/24", "c1", KEY1,
                           (Interface(device="ib0", mac=N1_IB, ipv4="10.1.0.1/16"),)),
                fleet_node("n002", N2, "10.0.0.2/24", "c1", KEY2), fleet_node("x001", X1, "10.0.0.3/24", "c2")])
    daemon.fleet = fleet  # type: ignore[attr-defined]
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def boot_script(daemon: Daemon, mac: str) -> tuple[list[str], str]:
    text = daemon.get(f"/boot/{mac}.ipxe").text
    kernel = next(c for c in ipxe_commands(text) if c[0] == "kernel")
    return kernel[2:], kernel[1]


def secret_of(daemon: Daemon, mac: str, key: str) -> str:
    token = daemon.boot_token(mac)
    reply = daemon.request("POST", f"/nodes/{mac}/secret", token=token, headers=JSON,
                           body=json.dumps({"proof": claim_proof(key, token)}).encode())
    assert reply.status == 201, reply.text
    return reply.json()["secret"]


def layer_files(daemon: Daemon, body: bytes, tmp_path: Path) -> dict[str, str]:
    image = tmp_path / "node.squashfs"
    image.write_bytes(body)
    out = tmp_path / "node-tree"
    run(["unsquashfs", "-no-progress", "-d", out, image])
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}


def test_the_per_node_script_carries_the_nodes_network_from_any_of_its_nics(daemon: Daemon) -> None:
    args, _ = boot_script(daemon, N1)
    assert args[:3] == ["initrd=initrd", "console=ttyS0", "quiet"] and "nosmt" in args
    assert "ip=10.0.0.1::10.0.0.254:24:n001:eth0:none" in args and "ifname=ib0:52:54:00:f1:01:01" in args
    assert "nameserver=10.0.0.250" in args and f"layerboot.node={N1}" in args
    options = parse_cmdline(" ".join(a.replace("${netX/mac:hexhyp}", "52-54-00-f1-01-01") for a in args[1:]))
    assert options.net.config_for("eth0").hostname == "n001" and options.net.config_for("ib0").address4 == "10.1.0.1"
    # PXE from its second NIC: the same node (its key MAC, its token), BOOTIF tells stage1 which NIC booted
    second, _ = boot_script(daemon, N1_IB)
    token = next(a for a in second if a.startswith("layerboot.token=")).split("=", 1)[1]
    assert f"layerboot.node={N1}" in second and token.startswith("lbb1.525400f10001.")
    assert daemon.get(f"/nodes/{N1}/manifest", token=token).status == 200


def test_a_named_nodes_grub_entry_carries_the_same_words_as_its_ipxe_script(daemon: Daemon, tmp_path: Path,
                                                                            profiles: Profiles) -> None:
    """The Secure Boot path (no HTTP in signed GRUB): the entry written ahead boots with the node's network too."""
    from layerboot.server.fleet.netargs import fleet_cmdline
    from layerboot.server.pxe import export_grub_nodes
    from layerboot.settings import load_config

    config = load_config(daemon.config)
    root = tmp_path / "tftp"
    export_grub_nodes(root, "http://10.0.0.250:8080", [(N1, "p1"), (X1, "p1")], profiles, lambda mac: "tok",
                      max_age=1000, node_cmdline=lambda mac, line: fleet_cmdline(daemon.fleet, config, mac, line))
    script, _ = boot_script(daemon, N1)
    entry = (root / "grub" / "nodes" / f"{N1}.cfg").read_text()
    linux = next(line.split()[2:] for line in entry.splitlines() if line.strip().startswith("linux "))
    words = [w for w in script[1:] if not w.startswith(("BOOTIF=", "layerboot.token="))]
    assert [w for w in linux if not w.startswith(("BOOTIF=", "layerboot.token="))] == words
    assert "ip=10.0.0.1::10.0.0.254:24:n001:eth0:none" in linux and "nosmt" in linux
    other = (root / "grub" / "nodes" / f"{X1}.cfg").read_text()
    assert "ip=10.0.0.3::10.0.0.254:24:x001:eth0:none" in other and "n001" not in other


def test_a_node_gets_its_own_signed_manifest_and_layer_and_nobody_elses(daemon: Daemon, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    token1, token2 = daemon.boot_token(N1), daemon.boot_token(N2)
    reply = daemon.get(f"/nodes/{N1}/manifest", token=token1)
    assert reply.status == 200
    public = load_public_key(daemon.paths.public_key)
    manifest = verify_envelope(reply.body, public, profile="p1", node=N1)      # what stage1 checks
    assert manifest.node == N1 and "ip=10.0.0.1::10.0.0.254:24:n001:eth0:none" in manifest.cmdline
    with pytest.raises(VerifyError, match=f"was made for node {N1}, not for this node {N2}"):
        verify_envelope(reply.body, public, profile="p1", node=N2)
    assert daemon.get(f"/nodes/{N1}/manifest", token=token1).body == reply.body     # unchanged: same bytes
    layer = manifest.layers[-1]
    assert len(manifest.layers) == 3 and layer.digest not in daemon.get("/profiles/p1/manifest", token=token1).text
    assert daemon.get(f"/nodes/{N2}/manifest", token=token1).status == 403                # another node's manifest

    denied = daemon.get(f"/{layer.path}", token=token1)
    assert denied.status == 403 and "node secret only" in denied.text      # a boot token is readable on the node
    assert daemon.get(f"/{layer.path}?token={token1}").status == 403
    secret1, secret2 = secret_of(daemon, N1, KEY1), secret_of(daemon, N2, KEY2)
    assert daemon.get(f"/{layer.path}", token=secret2).status == 403                      # another node's secret
    got = daemon.get(f"/{layer.path}", token=secret1)
    assert got.status == 200 and got.headers["cache-control"] == "private, no-store"
    assert hashlib.sha256(got.body).hexdigest() == layer.digest
    assert oct((daemon.paths.object(layer.digest)).stat().st_mode & 0o777) == "0o400"
    other = verify_envelope(daemon.get(f"/nodes/{N2}/manifest", token=token2).body, public, profile="p1", node=N2)
    assert daemon.get(f"/{other.layers[-1].path}", token=secret1).status == 403

    files = layer_files(daemon, got.body, tmp_path)
    assert files["etc/hostname"] == "n001\n" and len(files["etc/machine-id"]) == 33
    hosts = files["etc/hosts"]
    assert "10.0.0.1\tn001.c1.example n001\n" in hosts and "10.0.0.2\tn002.c1.example n002\n" in hosts
    assert "10.1.0.1\tn001-ib0\n" in hosts and "x001" not in hosts and "10.0.0.3" not in hosts   # c2 stays out
    assert files["etc/resolv.conf"].splitlines()[1:] == ["search c1.example", "nameserver 10.0.0.250"]
    # the host key pair in the layer is the one the server keeps (and shows), as OpenSSH reads it
    (tmp_path / "key").write_text(files["etc/ssh/ssh_host_ed25519_key"])
    (tmp_path / "key").chmod(0o600)
    derived = run(["ssh-keygen", "-y", "-f", tmp_path / "key"]).text.split()[:2]
    assert derived == files["etc/ssh/ssh_host_ed25519_key.pub"].split()[:2]
    fingerprint = run(["ssh-keygen", "-lf", tmp_path / "key"]).text.split()[1]
    assert main(["--store", str(daemon.paths.root), "--config", str(daemon.config), "nodes", "show", "n001"]) == 0
    assert f"ssh host key ed25519: {fingerprint}" in capsys.readouterr().out
    assert json.loads(files["etc/layerboot/node.json"])["name"] == "n001"


def test_every_change_signs_a_new_manifest_with_a_higher_serial(daemon: Daemon, capsys) -> None:  # noqa: ANN001
    token = daemon.boot_token(N1)
    serial = int(daemon.get(f"/nodes/{N1}/manifest", token=token).headers["x-layerboot-serial"])
    fleet: Fleet = daemon.fleet  # type: ignore[attr-defined]
    root = str(daemon.paths.root)
    # a new member of its cluster changes its /etc/hosts: --diff shows it first, the boot signs it
    fleet.save([fleet_node("n003", "52:54:00:f1:00:03", "10.0.0.4/24", "c1")])
    assert main(["--store", root, "--config", str(daemon.config), "nodes", "render", "--diff", "n001"]) == 0
    out = capsys.readouterr().out
    assert "+10.0.0.4\tn003.c1.example n003" in out
    after = int(daemon.get(f"/nodes/{N1}/manifest", token=token).headers["x-layerboot-serial"])
    assert after > serial
    assert main(["--store", root, "--config", str(daemon.config), "nodes", "render", "--diff", "n001"]) == 0
    assert capsys.readouterr().out.strip() == "n001: no change"
    # a pin is the one choice of generation (monitor/pins.py): signed afresh, higher again; and back
    daemon.fleet.db.execute("UPDATE nodes SET pinned_generation = 1 WHERE mac = ?", (N1,))  # type: ignore[attr-defined]
    pinned = daemon.get(f"/nodes/{N1}/manifest", token=token)
    assert pinned.headers["x-layerboot-generation"] == "1" and int(pinned.headers["x-layerboot-serial"]) > after
    daemon.fleet.db.execute("UPDATE nodes SET pinned_generation = NULL WHERE mac = ?", (N1,))  # type: ignore[attr-defined]
    back = daemon.get(f"/nodes/{N1}/manifest", token=token)
    assert back.headers["x-layerboot-generation"] == "2"
    assert int(back.headers["x-layerboot-serial"]) > int(pinned.headers["x-layerboot-serial"])
    # a template of the admin's (per group) changes the files too
    (daemon.paths.root / "templates/groups/compute/etc").mkdir(parents=True)
    (daemon.paths.root / "templates/groups/compute/etc/motd.j2").write_text("{{ node.name }} in rack "
                                                                            "{{ vars.rack | default('?') }}\n")
    newest = daemon.get(f"/nodes/{N1}/manifest", token=token)
    assert int(newest.headers["x-layerboot-serial"]) > int(back.headers["x-layerboot-serial"])
    assert fleet.manifest_row(N1).files["etc/motd"]["text"] == "n001 in rack ?\n"


def test_an_unknown_mac_gets_the_discovery_boot_reports_and_is_accepted(daemon: Daemon, capsys,  # noqa: ANN001
                                                                      tmp_path: Path) -> None:
    script = daemon.get(f"/boot/{UNKNOWN}.ipxe").text
    kernel = next(c for c in ipxe_commands(script) if c[0] == "kernel")
    assert "layerboot.discover" in kernel and not any(a.startswith("layerboot.profile=") for a in kernel)
    assert not any(a.startswith("layerboot.token=") for a in kernel)     # stage1 needs none to report
    token = kernel[1].split("?token=")[1]                                   # iPXE's, for kernel and initrd
    assert daemon.get(kernel[1].split("10.0.0.250:8080", 1)[1]).status == 200     # the discovery kernel
    assert daemon.get(f"/nodes/{UNKNOWN}/manifest", token=token).status == 403     # nothing else
    assert daemon.get(f"/profiles/p1/manifest", token=token).status in (401, 403)
    facts = {"macs": [{"name": "eth0", "mac": UNKNOWN}], "cpus": 2, "cpu_model": "QEMU", "memory": 1 << 30,
             "disks": [], "dmi": {"vendor": "QEMU", "product": "pc", "serial": "SER-1",
                                  "uuid": "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a50", "board": ""}}
    reply = daemon.request("POST", f"/discover/{UNKNOWN}", body=json.dumps(facts).encode(), headers=JSON)
    assert reply.status == 200 and reply.json() == {"state": "pending", "poll": 10}
    bad = daemon.request("POST", f"/discover/{UNKNOWN}", body=b'{"cpus": -1}', headers=JSON)
    assert bad.status == 400 and "cpus must be a whole number" in bad.json()["error"]
    big = daemon.request("POST", f"/discover/{UNKNOWN}", body=b"{" + b" " * (20 << 10) + b"}", headers=JSON)
    assert big.status == 413
    root = str(daemon.paths.root)
    config = str(daemon.config)
    assert main(["--store", root, "--config", config, "nodes", "pending", "--json"]) == 0
    pending = json.loads(capsys.readouterr().out)["machines"]
    assert [(m["mac"], m["facts"]["dmi"]["serial"]) for m in pending] == [(UNKNOWN, "SER-1")]
    assert main(["--store", root, "--config", config, "nodes", "accept", UNKNOWN, "--name", "n050", "--profile",
                 "p1", "--ip", "10.0.0.50/24", "--gateway", "10.0.0.254"]) == 0
    assert "accepted 52:54:00:f9:00:01 as node n050" in capsys.readouterr().out
    assert daemon.get(f"/discover/{UNKNOWN}", source="127.0.0.9").json()["state"] == "accepted"
    args, _ = boot_script(daemon, UNKNOWN)
    assert "ip=10.0.0.50::10.0.0.254:24:n050:eth0:none" in args and "layerboot.discover" not in args
    assert daemon.fleet.get("n050").asset_key == "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a50:ser-1"  # type: ignore
    # anonymous requests are rate-limited per client address
    statuses = [daemon.get(f"/discover/52:54:00:f9:00:0{i}", source="127.0.0.7").status for i in range(10)]
    assert 429 in statuses and statuses[0] == 200
    assert "Traceback" not in daemon.log.read_text()
