"""Reproducible imports: the same tree imports to the same digest; SOURCE_DATE_EPOCH, --mtime and --owner make
copies of a tree (fresh checkout times, another owner) import to the same digest too."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from layerboot.run import run

EPOCH = 1_600_000_000


def make_tree(root: Path) -> Path:
    for rel, text in {"etc/motd": "hello\n", "etc/app/conf": "a=1\n", "usr/bin/tool": "#!/bin/sh\n",
                      "var/lib/empty/.keep": ""}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "usr/bin/tool").chmod(0o755)
    (root / "etc/link").symlink_to("motd")
    os.link(root / "etc/motd", root / "etc/motd.hard")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (EPOCH + 500, EPOCH + 500), follow_symlinks=False)
    return root


def import_digest(store: Path, tree: Path, *options: str, env: dict[str, str] | None = None) -> str:
    if not (store / "objects").is_dir():
        run([sys.executable, "-m", "layerboot", "--store", store, "store", "init"])
    result = run([sys.executable, "-m", "layerboot", "--store", store, "layer", "import", tree, *options],
                 env={"PYTHONPATH": os.pathsep.join(sys.path), **(env or {})})
    return result.text.strip()


def fresh_copy(tree: Path, target: Path) -> Path:
    """A copy as a checkout or an unpack makes it: same content, links and modes, new modification times."""
    run(["cp", "-R", "-P", "--preserve=mode,links", tree, target])
    return target


def test_the_same_tree_imports_to_the_same_digest(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = import_digest(tmp_path / "s1", tree, "--all-root")
    assert import_digest(tmp_path / "s2", tree, "--all-root") == first      # another store, another day
    moved = tmp_path / "elsewhere" / "other-name"
    moved.parent.mkdir()
    run(["cp", "-a", tree, moved])                                          # same metadata, other path
    assert import_digest(tmp_path / "s3", moved, "--all-root") == first


def test_source_date_epoch_and_mtime_make_fresh_copies_match(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    copy = fresh_copy(tree, tmp_path / "copy")
    assert import_digest(tmp_path / "a", tree, "--all-root") != import_digest(tmp_path / "b", copy, "--all-root")
    sde = {"SOURCE_DATE_EPOCH": str(EPOCH)}                 # both trees are newer: every time clamps to it
    clamped = import_digest(tmp_path / "c", tree, "--all-root", env=sde)
    assert import_digest(tmp_path / "d", copy, "--all-root", env=sde) == clamped
    fixed = import_digest(tmp_path / "e", tree, "--all-root", "--mtime", str(EPOCH - 7))
    assert import_digest(tmp_path / "f", copy, "--all-root", "--mtime", str(EPOCH - 7)) == fixed
    assert import_digest(tmp_path / "g", copy, "--all-root", "--mtime", str(EPOCH - 7), env=sde) == fixed
    assert fixed != clamped


@pytest.mark.root
def test_owner_option_normalises_who_unpacked_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    mine = import_digest(tmp_path / "a", tree, "--owner", "0:0")
    for path in [tree, *tree.rglob("*")]:
        os.lchown(path, 1234, 1234)
    os.utime(tree, (EPOCH + 500, EPOCH + 500))
    assert import_digest(tmp_path / "b", tree) != mine
    assert import_digest(tmp_path / "c", tree, "--owner", "0:0") == mine
    assert import_digest(tmp_path / "d", tree, "--all-root") == mine
