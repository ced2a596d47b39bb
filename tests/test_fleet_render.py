"""Per-node files from templates (server/fleet/render.py) and the node layer they become: every default template's
output for a bonded, VLANed node on a base with systemd-networkd, ifupdown, chrony, timesyncd and rsyslog; overrides
per group, cluster and profile; template errors as one line; a deterministic squashfs that stays root-only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.store import Store
from layerboot.run import run
from layerboot.server.fleet.hostkeys import host_keys
from layerboot.server.fleet.nodelayer import store_node_layer
from layerboot.server.fleet.probe import PROBES, probe_chain
from layerboot.server.fleet.records import Defaults, FleetNode, Group, Interface, effective
from layerboot.server.fleet.render import Inputs, find_templates, render

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIhyWCm6u0NxQx4pUjnsXe/yPnt6a2uBTc1U61ZwKclN admin@desk"
EVERYTHING = {name: True for name in PROBES}


def node_inputs(store: Store, base: dict[str, bool], dirs: tuple[Path, ...] = ()) -> Inputs:
    node = FleetNode(name="n001", mac="52:54:00:00:01:01", cluster="c1", groups=("compute",),
                     machine_id="0123456789abcdef0123456789abcdef", interfaces=(
                         Interface(device="eth0", mac="52:54:00:00:01:01", ipv4="10.0.0.1/24", gateway="10.0.0.254",
                                   ipv6="auto6"),
                         Interface(device="eth1", mac="52:54:00:00:02:01", bond="bond0"),
                         Interface(device="eth2", mac="52:54:00:00:03:01", bond="bond0"),
                         Interface(device="bond0", bond_options="mode=4,miimon=100", vlan=42, mtu=9000,
                                   ipv4="10.42.0.1/16")))
    groups = {("cluster", "c1"): Group(name="c1", kind="cluster", defaults=Defaults(
                  domain="c1.example", dns=("server", "10.0.0.253"), ntp=("server",), syslog=("10.0.0.252",),
                  authorized_keys=(KEY,))),
              ("group", "compute"): Group(name="compute", defaults=Defaults(profile="web", vars={"rack": "7"}))}
    eff = effective(node, groups)
    peer = effective(FleetNode(name="n002", mac="52:54:00:00:01:02", cluster="c1", groups=("compute",),
                               interfaces=(Interface(device="eth0", mac="52:54:00:00:01:02", ipv4="10.0.0.2/24"),)),
                     groups)
    keys = tuple(host_keys(store.paths, node.machine_id, ("ed25519",)))
    return Inputs(node=eff, members=(eff, peer), host_keys=keys, base=base, server_host="10.0.0.250",
                  server_url="http://10.0.0.250:8080", template_dirs=dirs)


def test_the_default_templates_for_a_base_with_everything(store: Store) -> None:
    tree = render(node_inputs(store, EVERYTHING))
    files = {f.path: f for f in tree.files}
    text = {p: f.data.decode() for p, f in files.items()}
    assert text["etc/hostname"] == "n001\n" and text["etc/machine-id"] == "0123456789abcdef0123456789abcdef\n"
    assert "10.0.0.2\tn002.c1.example n002\n" in text["etc/hosts"] and "10.42.0.1\tn001-bond0-42\n" in text["etc/hosts"]
    assert text["etc/resolv.conf"].splitlines()[1:] == ["search c1.example", "nameserver 10.0.0.250",
                                                        "nameserver 10.0.0.253"]
    assert files["root/.ssh/authorized_keys"].mode == 0o600 and KEY in text["root/.ssh/authorized_keys"]
    eth0 = text["etc/systemd/network/10-layerboot-eth0.network"]
    assert "MACAddress=52:54:00:00:01:01" in eth0 and "Address=10.0.0.1/24" in eth0 and "Gateway=10.0.0.254" in eth0
    assert "DHCP=no" in eth0 and "IPv6AcceptRA=yes" in eth0 and "DNS=10.0.0.250" in eth0 and "NTP=10.0.0.250" in eth0
    assert "Bond=bond0" in text["etc/systemd/network/10-layerboot-eth1.network"]
    assert "VLAN=bond0.42" in text["etc/systemd/network/10-layerboot-bond0.network"]
    assert "Mode=802.3ad" in text["etc/systemd/network/10-layerboot-bond0.netdev"]
    assert "Id=42" in text["etc/systemd/network/10-layerboot-bond0.42.netdev"]
    assert "etc/systemd/network/10-layerboot-eth0.netdev" not in files          # empty output: no file
    ifupdown = text["etc/network/interfaces.d/layerboot"]
    assert "iface eth0 inet static\n    address 10.0.0.1/24\n    gateway 10.0.0.254\n" in ifupdown
    assert "auto eth0\n" in ifupdown and "iface eth0 inet6 auto" in ifupdown and "bond-mode 802.3ad" in ifupdown
    assert "vlan-raw-device bond0" in ifupdown and "iface eth1" not in ifupdown          # slaves belong to the bond
    assert text["etc/chrony/sources.d/layerboot.sources"].splitlines()[1] == "server 10.0.0.250 iburst"
    assert "NTP=10.0.0.250" in text["etc/systemd/timesyncd.conf.d/layerboot.conf"]
    assert "*.* @10.0.0.252:514" in text["etc/rsyslog.d/60-layerboot-remote.conf"]
    assert files["etc/ssh/ssh_host_ed25519_key"].mode == 0o600 and files["etc/ssh/ssh_host_ed25519_key"].secret
    assert text["etc/ssh/ssh_host_ed25519_key.pub"].endswith(" root@n001\n")
    index = tree.index()
    assert index["etc/ssh/ssh_host_ed25519_key"]["text"] is None and index["etc/hosts"]["text"] == text["etc/hosts"]


def test_a_busybox_base_gets_only_what_it_can_use(store: Store) -> None:
    files = {f.path for f in render(node_inputs(store, {name: False for name in PROBES})).files}
    assert files == {"etc/hostname", "etc/hosts", "etc/machine-id", "etc/resolv.conf", "root/.ssh/authorized_keys",
                     "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "etc/layerboot/node.json"}


def test_admin_templates_override_per_group_cluster_profile_and_add_files(store: Store, tmp_path: Path) -> None:
    site, store_dir = tmp_path / "site", store.paths.root / "templates"
    for directory, rel, text in ((site, "etc/motd.j2", "site {{ node.name }}\n"),
                                 (store_dir, "profiles/web/etc/motd.j2", "profile web\n"),
                                 (store_dir, "clusters/c1/etc/motd.j2", "cluster {{ cluster.name }}\n"),
                                 (site, "groups/compute/etc/issue.j2", "{# mode: 0600 #}rack {{ vars.rack }}\n"),
                                 (store_dir, "etc/hostname.j2", "{{ node.fqdn }}\n")):
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    inputs = node_inputs(store, EVERYTHING, (site, store_dir))
    chosen = find_templates(inputs.template_dirs, inputs.node)
    assert chosen["etc/motd.j2"] == store_dir / "clusters/c1/etc/motd.j2"       # cluster beats profile and plain
    files = {f.path: f for f in render(inputs).files}
    assert files["etc/motd"].data == b"cluster c1\n" and files["etc/hostname"].data == b"n001.c1.example\n"
    assert files["etc/issue"].data == b"rack 7\n" and files["etc/issue"].mode == 0o600
    (store_dir / "etc/hosts.j2").write_text("{{ node.nope }}\n")
    with pytest.raises(LayerbootError, match=r"templates/etc/hosts.j2.*'dict object' has no attribute 'nope'"):
        render(inputs)
    (store_dir / "etc/hosts.j2").write_text("{% if %}\n")
    with pytest.raises(LayerbootError, match=r"templates/etc/hosts.j2, line 1: "):
        render(inputs)


def test_the_node_layer_is_deterministic_root_only_and_probes_read_the_chain(store: Store, tmp_path: Path,
                                                                             make_layer) -> None:  # noqa: ANN001
    tree = render(node_inputs(store, EVERYTHING))
    first = store_node_layer(store, tree, name="n001", mac="52:54:00:00:01:01", base=make_layer(
        {"usr/sbin/sshd": "", "usr/lib/systemd/systemd-networkd": ""}, kind="base"))
    path = store.path(first)
    assert first.kind == "node" and oct(path.stat().st_mode & 0o777) == "0o400"
    data = path.read_bytes()
    path.chmod(0o600)
    path.unlink()
    (store.paths.object_meta(first.digest)).unlink()
    again = store_node_layer(store, tree, name="n001", mac="52:54:00:00:01:01", base=first.base)
    assert again.digest == first.digest == hashlib.sha256(data).hexdigest()     # same files, same bytes
    listing = run(["unsquashfs", "-lls", "-d", "r", store.path(again)]).text
    assert "-rw------- root/root" in listing and "r/etc/ssh/ssh_host_ed25519_key\n" in listing
    assert "drwx------ root/root" in listing.split("r/root\n")[0].splitlines()[-1]       # /root stays 0700
    found = probe_chain(store, (first.base,))
    assert found["sshd"] and found["networkd"] and not found["ifupdown"]
