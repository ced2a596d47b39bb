"""Kernel command line → stage1 Options: the options a user writes in a profile's cmdline or iPXE script."""

import pytest

from layerboot.initrd.stage1.cmdline import CmdlineError, Options, parse_cmdline, raw_emergency, split_cmdline
from layerboot.initrd.stage1.netcmd import IfaceConfig, NetPlan


def test_split_like_the_kernel() -> None:
    assert split_cmdline('  a=1  b="x y"  "c d"=2\n') == ["a=1", "b=x y", "c d=2"]
    assert split_cmdline('e=""') == ["e="]
    assert split_cmdline("") == []


def test_typical_ipxe_cmdline() -> None:
    opts = parse_cmdline("console=ttyS0 quiet ip=dhcp layerboot.server=http://10.0.2.2:8080/ "
                         "layerboot.node=52:54:00:AB:CD:EF layerboot.profile=web layerboot.token=tok3n "
                         "layerboot.emergency=poweroff layerboot.debug init=/bin/sh root=ignored")
    assert opts == Options(server="http://10.0.2.2:8080", node="52:54:00:ab:cd:ef", profile="web", token="tok3n",
                           emergency="poweroff", debug=True, init="/bin/sh",
                           net=NetPlan(configs=(IfaceConfig(v4="dhcp", text="dhcp"),)))


def test_a_network_boot_names_the_profile_it_is_for() -> None:
    """Without it stage1 could not refuse another profile's manifest (issue 11 item 1)."""
    with pytest.raises(CmdlineError, match="layerboot.server= without layerboot.profile="):
        parse_cmdline("layerboot.server=http://10.0.2.2:8080 layerboot.token=t")
    # a disk slot boots by itself (the server only takes boot events): its GRUB entry names the profile anyway
    assert parse_cmdline("layerboot.slot=UUID=x layerboot.server=http://a").profile == ""
    assert parse_cmdline("layerboot.profile=a layerboot.server=http://b layerboot.profile=c").profile == "c"


def test_defaults() -> None:
    opts = parse_cmdline("console=ttyS0")
    assert (opts.server, opts.emergency, opts.init, opts.breaks, opts.debug, opts.retries) == (
        "", "shell", "/sbin/init", (), False, 4)


def test_where_layers_live() -> None:
    assert parse_cmdline("layerboot.cache=LABEL=c").layers == ""          # main.py: on the cache disk
    assert parse_cmdline("layerboot.cache=LABEL=c layerboot.layers=ram").layers == "ram"
    assert parse_cmdline("layerboot.cache=/dev/vdb layerboot.layers=cache").layers == "cache"


def test_verify_mode_is_whole_unless_blocks_is_asked_for() -> None:
    assert parse_cmdline("console=ttyS0").verify == "whole"              # hash every fetched layer whole
    assert parse_cmdline("layerboot.verify=blocks").verify == "blocks"   # dm-verity: fetch.py
    assert parse_cmdline("layerboot.verify=blocks layerboot.verify=whole").verify == "whole"   # the last one wins


def test_break_lists_accumulate_and_bare_break_means_switch_root() -> None:
    assert parse_cmdline("layerboot.break=net,layers layerboot.break=mount").breaks == ("net", "layers", "mount")
    assert parse_cmdline("layerboot.break").breaks == ("switch_root",)
    assert parse_cmdline("layerboot.debug=0").debug is False


@pytest.mark.parametrize("cmdline, message", [
    ("layerboot.emergency=explode", "use one of shell, reboot, poweroff"),
    ("layerboot.break=fetch", "known stages are"),
    ("layerboot.retries=many", "is not a number"),
    ("layerboot.retries=0", "must be positive"),
    ("layerboot.timeout=-1", "must be positive"),
    ("layerboot.servr=http://x", "unknown kernel option layerboot.servr"),
    ("layerboot.server=https://x", "must be an http:// URL"),
    ("init=sbin/init", "must be an absolute path"),
    ("layerboot.layers=disk", "layerboot.layers='disk': use one of ram, cache"),
    ("layerboot.layers=cache", "layerboot.layers=cache needs layerboot.cache="),
    ("layerboot.verify=none", "layerboot.verify='none': use one of whole, blocks"),
    ("layerboot.retries=" + "9" * 5000, "is not a number"),
])
def test_bad_values_are_one_clear_error(cmdline: str, message: str) -> None:
    with pytest.raises(CmdlineError, match=message):
        parse_cmdline(cmdline)


def test_options_are_frozen_records() -> None:
    opts = parse_cmdline("layerboot.server=http://a layerboot.profile=p")
    with pytest.raises(AttributeError, match="frozen"):
        opts.server = "http://b"  # type: ignore[misc]
    same = Options(server="http://a", profile="p")
    assert opts == same and hash(opts) == hash(same)
    assert opts != Options(server="http://b", profile="p")
    assert repr(opts).startswith("Options(server='http://a', node=''")
    with pytest.raises(TypeError, match="unexpected or repeated field 'colour'"):
        Options(colour="red")  # type: ignore[call-arg]


@pytest.mark.parametrize(("cmdline", "action"), [
    ("console=ttyS0", "shell"),
    ("layerboot.emergency=poweroff layerboot.nonsense=1", "poweroff"),          # the rest does not parse
    ("layerboot.emergency=reboot console=ttyS0 layerboot.emergency=poweroff", "poweroff"),   # last one wins
    ("layerboot.emergency=reboot layerboot.emergency=explode", "reboot"),         # invalid values are ignored
])
def test_emergency_action_is_found_even_when_the_command_line_is_bad(cmdline: str, action: str) -> None:
    assert raw_emergency(cmdline) == action
    try:
        parsed = parse_cmdline(cmdline).emergency
    except CmdlineError:
        return
    assert parsed == action   # and it agrees with the full parser whenever that one succeeds
