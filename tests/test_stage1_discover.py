"""stage1's discovery boot (initrd/stage1/discover.py): the facts it reads from sysfs and /proc, and the report /
wait / accepted loop against the real layerbootd on loopback."""

from __future__ import annotations

from pathlib import Path

from layerboot.initrd.stage1 import discover as disc
from layerboot.initrd.stage1.cmdline import parse_cmdline
from layerboot.overlays.profile import Profiles
from layerboot.server.fleet.enroll import accept
from layerboot.server.fleet.queries import Fleet
from server_daemon import Daemon, boot_profile, write_config

MAC = "52:54:00:f9:10:01"


def fake_sysfs(root: Path) -> dict[str, str]:
    files = {"dmi/sys_vendor": "Dell Inc.\n", "dmi/product_name": "PowerEdge R650\n", "dmi/product_serial": "7XK2L3\n",
             "dmi/product_uuid": "4C4C4544-0058-4B10-8032-B7C04F4C3233\n", "dmi/board_name": "0XYZ\n",
             "net/eno1/address": MAC + "\n", "net/eno2/address": "52:54:00:f9:10:02\n", "net/lo/address": "0\n",
             "net/bond9/address": "52:54:00:f9:10:09\n", "block/sda/size": "3907029168\n",
             "block/sda/device/model": "PERC H755\n", "block/nvme0n1/size": "1000215216\n",
             "block/nvme0n1/device/serial": "S6EWNX0T\n", "block/loop0/size": "8\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for nic in ("eno1", "eno2"):
        (root / "net" / nic / "device").mkdir()          # physical NICs have a device link; bonds do not
    return {"dmi": str(root / "dmi"), "net": str(root / "net"), "block": str(root / "block")}


def test_facts_come_from_sysfs(tmp_path: Path) -> None:
    found = disc.facts(**fake_sysfs(tmp_path))
    assert found["macs"] == [{"name": "eno1", "mac": MAC}, {"name": "eno2", "mac": "52:54:00:f9:10:02"}]
    assert found["dmi"] == {"vendor": "Dell Inc.", "product": "PowerEdge R650", "serial": "7XK2L3",
                            "uuid": "4c4c4544-0058-4b10-8032-b7c04f4c3233", "board": "0XYZ"}
    assert found["disks"] == [{"name": "nvme0n1", "size": 1000215216 * 512, "model": "", "serial": "S6EWNX0T"},
                              {"name": "sda", "size": 3907029168 * 512, "model": "PERC H755", "serial": ""}]
    assert found["memory"] > 0 and found["cpus"] >= 1
    assert disc.unquote("n%2D01%20x") == "n-01 x" and disc.unquote("100%") == "100%"
    options = parse_cmdline(f"layerboot.server=http://10.0.0.1:8080 layerboot.discover layerboot.node={MAC} "
                            "layerboot.clone=n001 layerboot.name=n%30%30%37")
    assert options.discover and not options.profile and (options.clone, options.name) == ("n001", "n%30%30%37")


def test_report_wait_and_be_accepted(profiles: Profiles, make_layer, tmp_path: Path) -> None:  # noqa: ANN001
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, unknown_mac="discover")
    config.write_text(config.read_text() + '[fleet]\ndiscovery_profile = "p1"\ndiscovery_poll = 1\n')
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log").start()
    lines: list[str] = []
    disc.say = lines.append                                     # the console, for this test
    try:
        report = disc.facts(**fake_sysfs(tmp_path / "sys"))
        state = disc.discover(daemon.url, MAC, clone="n001", name="n%30%30%37", rounds=2, report=report,
                              sleep=lambda s: None)
        assert state == "waiting" and "asking to become n007, a clone of n001" in lines[0]
        fleet = Fleet(daemon.registry().db)
        record = fleet.discovery(MAC)
        assert record["request"] == {"clone_of": "n001", "name": "n007"} and record["facts"]["dmi"]["serial"] == "7XK2L3"
        accept(fleet, MAC, name="n007", profile="p1")
        assert disc.discover(daemon.url, MAC, rounds=3, report=report, sleep=lambda s: None) == "accepted"
        assert lines[-1] == f"discovery: {MAC} was accepted"
    finally:
        disc.say = __import__("layerboot.initrd.stage1.console", fromlist=["say"]).say
        daemon.stop()
