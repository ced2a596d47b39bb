"""The chain a profile describes, mounted for real: loop devices, squashfs, overlayfs."""

import contextlib
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.chain import lowerdir_option, mount_chain
from layerboot.overlays.keys import load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.overlays.profile import Profiles
from layerboot.run import run


def test_lowerdir_option_is_top_first() -> None:
    assert lowerdir_option([Path("/l/base"), Path("/l/one"), Path("/l/two")]) == "/l/two:/l/one:/l/base"


@pytest.mark.parametrize("bad", ["/l/a:b", "/l/a,b", "/l/a\\b"])
def test_lowerdir_option_refuses_separator_characters(bad: str) -> None:
    with pytest.raises(LayerbootError, match="cannot be used in overlayfs options"):
        lowerdir_option([Path("/l/base"), Path(bad)])


def mounted_view(profiles: Profiles, name: str, workdir: Path, stack: contextlib.ExitStack) -> Path:
    """Mount exactly what the profile's signed manifest names, in its order."""
    manifest = verify_manifest(profiles.signed_manifest(name), load_public_key(profiles.paths.public_key))
    return mount_chain(stack, [profiles.store.path(a.digest) for a in manifest.layers], workdir)


def loop_devices() -> set[str]:
    return {line.split(":")[0] for line in run(["losetup", "--list", "--noheadings", "--output", "NAME"]).text.split()}


@pytest.mark.root
def test_profile_chain_merges_with_upper_layers_shadowing(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    base = make_layer({"etc/issue": "base\n", "etc/motd": "base motd\n", "usr/share/doc/readme": "doc\n"},
                      kind="base")
    one = make_layer({"etc/motd": "motd from one\n", "opt/one": "1\n"}, base=base)
    two = make_layer({"opt/two": "2\n"}, base=base, whiteouts=("usr/share/doc/readme",))
    profiles.create("web", base)
    profiles.add("web", one)
    profiles.add("web", two)
    loops_before = loop_devices()
    with contextlib.ExitStack() as stack:
        root = mounted_view(profiles, "web", tmp_path / "node", stack)
        assert (root / "etc/issue").read_text() == "base\n"
        assert (root / "etc/motd").read_text() == "motd from one\n"
        assert (root / "opt/one").read_text() == "1\n" and (root / "opt/two").read_text() == "2\n"
        assert not (root / "usr/share/doc/readme").exists(), "the whiteout in layer two hides the base file"
        (root / "etc/new").write_text("written on the node\n")
        assert (tmp_path / "node/rw/upper/etc/new").read_text() == "written on the node\n"
    assert loop_devices() == loops_before, "every loop device is detached again"
    assert not any(line.split()[1].startswith(str(tmp_path)) for line in Path("/proc/mounts").read_text().splitlines())


@pytest.mark.root
def test_layer_order_decides_which_file_wins(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    base = make_layer({"etc/role": "base\n"}, kind="base")
    web = make_layer({"etc/role": "web\n"}, base=base)
    db = make_layer({"etc/role": "db\n"}, base=base)
    profiles.create("node", base)
    profiles.add("node", web)
    profiles.add("node", db)
    with contextlib.ExitStack() as stack:
        assert (mounted_view(profiles, "node", tmp_path / "a", stack) / "etc/role").read_text() == "db\n"
    profiles.move("node", db, 1)
    with contextlib.ExitStack() as stack:
        assert (mounted_view(profiles, "node", tmp_path / "b", stack) / "etc/role").read_text() == "web\n"
    profiles.rollback("node", 1)
    with contextlib.ExitStack() as stack:
        assert (mounted_view(profiles, "node", tmp_path / "c", stack) / "etc/role").read_text() == "base\n"
