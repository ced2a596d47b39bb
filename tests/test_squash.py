"""Squash: several adjacent layers become one, and the kernel's merged view of the chain stays identical."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerboot.errors import LayerbootError
from layerboot.overlays.bake import BakeLimits, bake_archive
from layerboot.overlays.capture import capture
from layerboot.overlays.content import CLASSES
from layerboot.overlays.chain import mount, mount_chain, mount_overlay, mount_squashfs
from layerboot.overlays.profile import Profiles
from layerboot.overlays.squash import squash_layers, squash_profile
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.tools.cli import main
from test_capture_bake import apply_op, build_base, ops_st
from treecompare import snapshot, tree_differences

LIMITS = BakeLimits(max_bytes=1 << 34, max_files=100_000, special_files="keep", allow=frozenset(CLASSES))


def layer_from_changes(store: Store, chain: Sequence[str], work: Path, change: Callable[[Path], None]) -> str:
    """Boot-like: mount the chain with a tmpfs upper, change it, capture the upper dir, bake it."""
    with contextlib.ExitStack() as outer:
        lowers = [mount_squashfs(outer, store.path(d), work / "layers" / str(i)) for i, d in enumerate(chain)]
        (work / "rw").mkdir(parents=True)
        mount(outer, "tmpfs", work / "rw", fstype="tmpfs", options="mode=0755")
        (work / "rw/upper").mkdir()
        (work / "rw/work").mkdir()
        with contextlib.ExitStack() as inner:
            merged = mount_overlay(inner, lowers, work / "merged", upper=work / "rw/upper", work=work / "rw/work")
            change(merged)
        capture(work / "rw/upper", work / "changes.tar.zst")
    return bake_archive(store, work / "changes.tar.zst", base=chain[0], parent=chain[-1], description="",
                        limits=LIMITS).digest


def view(store: Store, chain: Sequence[str], work: Path):
    with contextlib.ExitStack() as stack:
        return snapshot(mount_chain(stack, [store.path(d) for d in chain], work, writable=False))


def one(m: Path) -> None:
    (m / "etc/motd").write_text("one\n")
    (m / "etc/one").write_text("1\n")
    shutil.rmtree(m / "var/lib/app")
    (m / "var/lib/app").mkdir()
    (m / "var/lib/app/from-one").write_text("1\n")
    (m / "etc/old.conf").unlink()
    os.link(m / "etc/one", m / "etc/one.hard")
    (m / "opt/dir-one/deeper").mkdir(parents=True)
    (m / "opt/dir-one/deeper/f").write_text("f\n")


def two(m: Path) -> None:
    (m / "etc/one").unlink()                                   # delete what layer one added (hard link stays)
    (m / "etc/old.conf").write_text("back again\n")          # recreate what layer one whited out
    (m / "var/lib/app/from-two").write_text("2\n")           # add to layer one's opaque dir
    shutil.rmtree(m / "opt/dir-one")
    (m / "opt/dir-one").write_text("now a file\n")           # dir -> file
    shutil.rmtree(m / "usr/share/doc/a")                      # whiteout of a base dir
    os.setxattr(m / "etc/motd", "user.two", b"2")


def three(m: Path) -> None:
    (m / "opt/dir-one").unlink()
    (m / "opt/dir-one").mkdir()                               # file -> dir again: opaque towards the base
    (m / "opt/dir-one/new").write_text("new\n")
    (m / "usr/share/doc/a").mkdir()                           # recreated over a whiteout from layer two
    (m / "usr/share/doc/a/NEW").write_text("new\n")
    os.chmod(m / "etc", 0o750)
    shutil.rmtree(m / "srv")


@pytest.fixture
def chain(store: Store, tmp_path: Path) -> list[str]:
    tree = build_base(tmp_path / "base-tree")
    digests = [store.import_tree(tree, kind="base").digest]
    for index, change in enumerate((one, two, three)):
        digests.append(layer_from_changes(store, digests, tmp_path / f"node{index}", change))
    return digests


@pytest.mark.root
@pytest.mark.parametrize("first,last", [(1, 3), (1, 2), (2, 3)])
def test_squashed_chain_looks_the_same(store: Store, chain: list[str], tmp_path: Path, first: int, last: int) -> None:
    expected = view(store, chain, tmp_path / "before")
    squashed = squash_layers(store, chain[first:last + 1], below=chain[:first], description="")
    new_chain = chain[:first] + [squashed.digest] + chain[last + 1:]
    assert len(new_chain) == len(chain) - (last - first)
    assert tree_differences(expected, view(store, new_chain, tmp_path / "after")) == []


@pytest.mark.root
def test_squash_keeps_whiteouts_that_hide_the_base(store: Store, chain: list[str], tmp_path: Path) -> None:
    squashed = squash_layers(store, chain[1:], below=chain[:1], description="")
    with contextlib.ExitStack() as stack:
        layer = mount_squashfs(stack, store.path(squashed), tmp_path / "m")
        assert os.stat(layer / "usr/share/doc/a").st_nlink >= 2, "recreated dir is present"
        assert os.getxattr(layer / "usr/share/doc/a", "trusted.overlay.opaque") == b"y"
        assert os.getxattr(layer / "var/lib/app", "trusted.overlay.opaque") == b"y"
        srv = os.lstat(layer / "srv")
        assert (srv.st_mode & 0o170000, srv.st_rdev) == (0o020000, 0), "srv is a whiteout"


@pytest.mark.root
def test_cli_squash_writes_a_new_generation(store: Store, chain: list[str], profiles: Profiles, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    profiles.create("web", chain[0])
    for digest in chain[1:]:
        profiles.add("web", digest)
    expected = view(store, chain, tmp_path / "before")
    assert main(["--store", str(store.paths.root), "squash", "web", "--from", "1", "--to", "3"]) == 0
    gen = profiles.current("web")
    assert gen.number == 5 and len(gen.layers) == 2 and gen.action.startswith("squash 1..3")
    assert capsys.readouterr().out.splitlines()[0] == gen.layers[1]
    assert tree_differences(expected, view(store, list(gen.layers), tmp_path / "after")) == []
    assert store.get(gen.layers[1]).parent == chain[0]


def test_squash_refuses_bad_ranges(store: Store, make_layer, profiles: Profiles) -> None:
    base = make_layer({"a": "a"}, kind="base")
    profiles.create("p", base)
    profiles.add("p", make_layer({"b": "b"}, base=base))
    with pytest.raises(LayerbootError, match="at least two"):
        squash_profile(profiles, "p", 1, 1)
    profiles.add("p", make_layer({"c": "c"}, base=base))
    for first, last in ((0, 2), (2, 2), (1, 3), (2, 1)):
        with pytest.raises(LayerbootError, match="positions must satisfy"):
            squash_profile(profiles, "p", first, last)
    assert profiles.current("p").number == 3, "nothing was committed"


@pytest.mark.root
def test_random_layer_stacks_squash_to_the_same_view(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("squashprop")
    store = Store(Paths(root / "store"))
    store.init()
    tree = root / "base"
    for rel in ("etc/motd", "etc/a", "var/lib/app/a", "usr/share/doc/README", "b"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel + "\n")
    base = store.import_tree(tree, kind="base").digest

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(layers=st.lists(ops_st, min_size=2, max_size=3))
    def check(layers: list[list[tuple]]) -> None:
        work = Path(tempfile.mkdtemp(dir=root))
        try:
            digests = [base]
            for index, ops in enumerate(layers):
                digests.append(layer_from_changes(store, digests, work / f"n{index}",
                                                  lambda m, ops=ops: [apply_op(m, op) for op in ops]))
            expected = view(store, digests, work / "before")
            squashed = squash_layers(store, digests[1:], below=[base], description="")
            assert tree_differences(expected, view(store, [base, squashed.digest], work / "after")) == [], layers
        finally:
            shutil.rmtree(work)

    check()
