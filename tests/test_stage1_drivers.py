"""stage1's modalias driver loading (initrd/stage1/drivers.py) against real modules.alias files and a /sys tree."""

from __future__ import annotations

import fnmatch
import os
import random
from pathlib import Path

import pytest

from layerboot.build.kernel import DEFAULT_CACHE, cached_kernel
from layerboot.initrd.stage1 import drivers
from layerboot.initrd.stage1.drivers import (blacklisted, device_modaliases, glob_match, modules_for, read_aliases,
                                             unclaimed_devices)


def generic_aliases() -> Path:
    kernel = cached_kernel(DEFAULT_CACHE, "generic") or cached_kernel(DEFAULT_CACHE, "cloud")
    if kernel is None:
        pytest.skip("no unpacked Debian kernel in the cache (the initrd and QEMU tests fetch one)")
    return kernel.moddir / "modules.alias"


@pytest.mark.parametrize("pattern,text", [
    ("pci:v00008086d000010D3sv*sd*bc*sc*i*", "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"),
    ("pci:v00008086d000010D3sv*sd*bc*sc*i*", "pci:v00008086d000010D4sv00008086sd0000A01Fbc02sc00i00"),
    ("usb:v0BDAp8153d[0-2]*dc*", "usb:v0BDAp8153d3000dcFF"), ("usb:v0BDAp8153d[0-2]*dc*", "usb:v0BDAp8153d2000dcFF"),
    ("a[!b]c", "abc"), ("a[!b]c", "axc"), ("a?c*", "abcdef"), ("*", ""), ("scsi:t-0x00*", "scsi:t-0x00"),
    ("x*y*z", "xaaayzz"), ("x*y*z", "xaaaz"), ("[", "["),
])
def test_glob_matches_like_fnmatch(pattern: str, text: str) -> None:
    assert glob_match(pattern, text) == fnmatch.fnmatchcase(text, pattern)


def test_every_alias_of_a_real_kernel_matches_like_fnmatch() -> None:
    """Each alias of Debian's kernel, against an instance built from it and against a near miss."""
    table = read_aliases(str(generic_aliases()))
    patterns = [pattern for entries in table.values() for _, pattern, _ in entries]
    assert len(patterns) > 1000
    rng = random.Random(13)
    for pattern in rng.sample(patterns, 3000):
        instance = pattern.replace("*", "0A").replace("?", "Z")
        while "[" in instance and "]" in instance[instance.index("["):]:
            start = instance.index("[")
            end = instance.index("]", start + 1)
            body = instance[start + 1:end].lstrip("!^")
            instance = instance[:start] + (body[0] if not instance[start + 1:end].startswith(("!", "^")) else "\x01") \
                + instance[end + 1:]
        for text in (instance, instance[:-1] + "#", "x" + instance):
            assert glob_match(pattern, text) == fnmatch.fnmatchcase(text, pattern), (pattern, text)


def test_real_devices_find_their_drivers() -> None:
    table = read_aliases(str(generic_aliases()))
    # QEMU's e1000e, rtl8139 (two drivers claim it), virtio-net and AHCI as their modalias files read.
    assert "e1000e" in modules_for(table, "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00")
    if "8139too" in {m for entries in table.values() for *_, m in entries}:
        assert {"8139cp", "8139too"} <= set(modules_for(table, "pci:v000010ECd00008139sv00001AF4sd00001100bc02sc00i00"))
        assert modules_for(table, "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01") == ["ahci"]
        assert "sd_mod" in modules_for(table, "scsi:t-0x00")
    assert modules_for(table, "virtio:d00000001v00001AF4") == ["virtio_net"]
    assert modules_for(table, "pci:v0000FFFFd0000FFFFsv00000000sd00000000bc02sc00i00") == []


def fake_sys(root: Path, devices: dict[str, tuple[str, str | None, bool]]) -> Path:
    """/sys/bus/<bus>/devices/<name>/{modalias,class,driver} for 'bus/name': (modalias, class, bound)."""
    for key, (alias, klass, bound) in devices.items():
        bus, name = key.split("/")
        device = root / bus / "devices" / name
        device.mkdir(parents=True)
        (device / "modalias").write_text(alias + "\n")
        if klass:
            (device / "class").write_text(klass + "\n")
        if bound:
            (device / "driver").mkdir()
    return root


def test_sys_scan_blacklist_and_unclaimed_devices(tmp_path: Path) -> None:
    sys_bus = fake_sys(tmp_path / "bus", {
        "pci/0000:00:02.0": ("pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", "0x020000", True),
        "pci/0000:00:03.0": ("pci:v0000FFFFd0000FFFFsv00000000sd00000000bc02sc00i00", "0x020000", False),
        "pci/0000:00:04.0": ("pci:v00001234d00001111sv00000000sd00000000bc03sc00i00", "0x030000", False),
        "virtio/virtio0": ("virtio:d00000001v00001AF4", None, True),
    })
    assert device_modaliases(str(sys_bus))["virtio/virtio0"] == "virtio:d00000001v00001AF4"
    # only the network device without a driver is reported (the VGA one is not watched)
    assert unclaimed_devices(str(sys_bus)) == [
        ("0000:00:03.0", "network", "pci:v0000FFFFd0000FFFFsv00000000sd00000000bc02sc00i00")]
    assert blacklisted("quiet modprobe.blacklist=e1000e,r8169 x=1 modprobe.blacklist=nouveau") == \
        {"e1000e", "r8169", "nouveau"}


def test_load_rounds_pick_up_devices_that_drivers_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """virtio_pci creates virtio0, whose driver is loaded in the next round; blacklisted modules never load."""
    sys_bus = fake_sys(tmp_path / "bus", {
        "pci/0000:00:02.0": ("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "0x020000", True),
        "pci/0000:00:05.0": ("pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", "0x020000", True)})
    aliases = tmp_path / "modules.alias"
    aliases.write_text("# Aliases extracted from modules themselves.\n"
                       "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n"
                       "alias virtio:d00000001v* virtio_net\n"
                       "alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n")
    calls: list[list[str]] = []

    def spawn(argv: list[str], **_: object) -> tuple[int, str]:
        calls.append(argv[2:])
        if "virtio_pci" in argv:
            fake_sys(sys_bus, {"virtio/virtio0": ("virtio:d00000001v00001AF4", None, True)})
        return 0, ""
    monkeypatch.setattr(drivers, "spawn", spawn)
    loaded = drivers.load_hardware_drivers(always=("loop", "overlay"), sys_bus=str(sys_bus), alias_file=str(aliases),
                                           cmdline="modprobe.blacklist=e1000e")
    # the modules stage1 always needs share the first round's modprobe
    assert calls == [["-a", "loop", "overlay", "virtio_pci"], ["-a", "virtio_net"]]
    assert loaded == ["virtio_pci", "virtio_net"]
    assert os.path.isdir(sys_bus / "virtio" / "devices" / "virtio0")


def _one_nic(tmp_path: Path) -> tuple[Path, Path]:
    sys_bus = fake_sys(tmp_path / "bus", {
        "pci/0000:00:02.0": ("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "0x020000", True)})
    aliases = tmp_path / "modules.alias"
    aliases.write_text("alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n")
    return sys_bus, aliases


def test_a_driver_that_fails_to_load_is_reported_and_the_boot_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    sys_bus, aliases = _one_nic(tmp_path)
    calls: list[list[str]] = []

    def spawn(argv: list[str], **_: object) -> tuple[int, str]:
        calls.append(argv[2:])
        return (1, "modprobe: can't load module virtio_pci") if "virtio_pci" in argv else (0, "")
    monkeypatch.setattr(drivers, "spawn", spawn)
    loaded = drivers.load_hardware_drivers(always=("squashfs",), sys_bus=str(sys_bus), alias_file=str(aliases))
    # the combined modprobe failed: the always-needed modules alone tell whose failure it was (not theirs)
    assert calls == [["-a", "squashfs", "virtio_pci"], ["-a", "squashfs"]]
    assert loaded == ["virtio_pci"]
    assert "drivers: modprobe virtio_pci: modprobe: can't load module virtio_pci" in capfd.readouterr().err


def test_a_module_stage1_always_needs_that_fails_to_load_stops_the_boot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys_bus, aliases = _one_nic(tmp_path)

    def spawn(argv: list[str], **_: object) -> tuple[int, str]:
        return (1, "modprobe: module squashfs not found in modules.dep") if "squashfs" in argv else (0, "")
    monkeypatch.setattr(drivers, "spawn", spawn)
    with pytest.raises(drivers.StageError, match="loading kernel modules squashfs failed: modprobe: module squashfs"):
        drivers.load_hardware_drivers(always=("squashfs",), sys_bus=str(sys_bus), alias_file=str(aliases))
