"""What the boot network leaves for the booted system: precedence of values (command line, DHCP, rd.peerdns=0)
and of files (a layer above the base wins over stage1; stage1 wins over the base image)."""

from __future__ import annotations

import os
from pathlib import Path

from layerboot.initrd.stage1.cmdline import parse_cmdline
from layerboot.initrd.stage1.dhcp import Lease
from layerboot.initrd.stage1.net import NetResult
from layerboot.initrd.stage1.netstate import env_text, link_into_root, resolv_text, summary, write_run_files


def record_for(cmdline: str, leases: tuple[tuple[str, Lease], ...], hostname: str = "") -> dict:
    options = parse_cmdline(cmdline)
    result = NetResult("eth1", "52:54:00:00:00:01", "BOOTIF", leases, hostname, links=())
    return summary(options.net, result, "http://10.0.0.1:8080")


BOOT = Lease("10.0.0.5", 24, router="10.0.0.1", dns=("10.0.0.1",), hostname="n1", domain="lab.example",
             ntp=("10.0.0.2",), log_servers=("10.0.0.3",))
OTHER = Lease("10.9.0.5", 24, dns=("10.9.0.1", "10.0.0.1"), search=("other.example",), ntp=("10.9.0.2",),
              domain="other.example")


def test_values_come_from_the_command_line_then_the_boot_interface_then_others() -> None:
    record = record_for("nameserver=192.0.2.1 ip=eth1:dhcp ip=10.9.0.5::10.9.0.1:24::eth2:none:192.0.2.2",
                        (("eth2", OTHER), ("eth1", BOOT)), hostname="n1")
    assert record["dns"] == ["192.0.2.1", "192.0.2.2", "10.0.0.1", "10.9.0.1"]
    assert record["search"] == ["lab.example", "other.example"]     # a lease's domain when it has no search list
    assert (record["ntp"], record["log_servers"]) == (["10.0.0.2", "10.9.0.2"], ["10.0.0.3"])
    assert (record["hostname"], record["domain"], record["boot_interface"]) == ("n1", "lab.example", "eth1")
    peerdns_off = record_for("rd.peerdns=0 nameserver=192.0.2.1", (("eth1", BOOT),))
    assert (peerdns_off["dns"], peerdns_off["search"], peerdns_off["ntp"]) == (["192.0.2.1"], [], ["10.0.0.2"])
    assert record_for("", (), hostname="n7.site.example")["domain"] == "site.example"


def test_env_and_resolv_conf_text() -> None:
    record = record_for("nameserver=192.0.2.1 nameserver=192.0.2.2 nameserver=192.0.2.3 nameserver=192.0.2.4",
                        (("eth1", BOOT),), hostname="n1")
    resolv = resolv_text(record).splitlines()
    assert resolv[0].startswith("# written by layerboot stage1 for eth1")
    assert resolv[1:] == ["search lab.example", "nameserver 192.0.2.1", "nameserver 192.0.2.2",
                          "nameserver 192.0.2.3"]                     # glibc reads three
    env = env_text({**record, "server": "http://x/it's"})
    assert "LAYERBOOT_HOSTNAME='n1'\n" in env and "LAYERBOOT_NTP='10.0.0.2'\n" in env
    assert "LAYERBOOT_SERVER='http://x/it'\\''s'\n" in env


def test_run_files_are_written_only_when_there_is_something_to_say(tmp_path: Path) -> None:
    bare = record_for("", (("eth1", Lease("10.0.0.5", 24)),))
    assert write_run_files(bare, str(tmp_path / "run"), str(tmp_path / "etc")) == ["net.json", "net.env"]
    assert not (tmp_path / "etc/resolv.conf").exists()
    full = record_for("", (("eth1", BOOT),), hostname="n1")
    written = write_run_files(full, str(tmp_path / "run"), str(tmp_path / "etc"))
    assert written == ["net.json", "net.env", "resolv.conf", "hostname"]
    assert (tmp_path / "run/hostname").read_text() == "n1\n"
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_the_new_roots_files_point_at_the_run_files_unless_a_layer_above_the_base_has_them(tmp_path: Path) -> None:
    root, base, site, node = (tmp_path / n for n in ("root", "lower0", "lower1", "lower2"))
    for d in (root / "etc", base / "etc", site, node / "etc"):
        d.mkdir(parents=True)
    # the base image's resolv.conf (debootstrap copies the build host's) and hostname: stage1's win
    (base / "etc/resolv.conf").write_text("nameserver 10.255.255.53\n")
    (root / "etc/resolv.conf").write_text("nameserver 10.255.255.53\n")
    lowers = [str(base), str(site), str(node)]
    linked = link_into_root(str(root), lowers, ["net.json", "resolv.conf", "hostname"], run_dir="/run/layerboot")
    assert linked == ["/etc/resolv.conf", "/etc/hostname"]
    assert os.readlink(root / "etc/resolv.conf") == "/run/layerboot/resolv.conf"
    assert os.readlink(root / "etc/hostname") == "/run/layerboot/hostname"
    # a per-node layer (or any layer above the base) that has the file: left alone
    root2 = tmp_path / "root2"
    (root2 / "etc").mkdir(parents=True)
    (node / "etc/hostname").write_text("node-from-layer\n")
    (root2 / "etc/hostname").write_text("node-from-layer\n")
    (root2 / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")   # systemd-resolved's
    assert link_into_root(str(root2), lowers, ["resolv.conf", "hostname"]) == []
    assert (root2 / "etc/hostname").read_text() == "node-from-layer\n"
    assert os.readlink(root2 / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    # nothing learnt, nothing linked
    root3 = tmp_path / "root3"
    (root3 / "etc").mkdir(parents=True)
    assert link_into_root(str(root3), [str(base)], ["net.json", "net.env"]) == []
    assert os.listdir(root3 / "etc") == []
