"""stage1's localverity (a local layer file under dm-verity) with real loop devices: what it refuses before it
touches device-mapper, and that a kernel without dm-verity is one clear error that leaves no loop device behind.
This host's kernel has no dm-verity; the attach itself (a good layer mounts and reads, a flipped byte is EIO,
a wrong root hash is refused) runs against the real kernel in the A/B slot boot (tests/test_ab_stage1_boot.py
runs tests/data/localverity_check.py in the node), and here too on a host that has dm-verity."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from layerboot.initrd.stage1 import localverity
from layerboot.initrd.stage1.localverity import LocalVerityError, VerityUnavailable
from layerboot.overlays.verity import merkle_tree
from layerboot.run import run

pytestmark = pytest.mark.root


def _layer(tmp_path: Path, make_layer, store) -> tuple[Path, Path, str, int]:  # noqa: ANN001
    digest = make_layer({"etc/hello": "hello\n" * 4000}, kind="base")
    path = store.path(digest)
    tree = merkle_tree(path)
    tree_file = tmp_path / "layer.verity"
    tree_file.write_bytes(tree.tree)
    return path, tree_file, tree.root, len(tree.tree)


def _dm_verity_here() -> bool:
    try:
        localverity.load_modules()
    except VerityUnavailable:
        return False
    return True


def _loops_of(path: Path) -> str:
    return run(["losetup", "-j", str(path)]).text.strip()


def test_missing_or_wrong_sized_trees_and_unpadded_layers_are_refused_up_front(tmp_path: Path, make_layer,
                                                                                store) -> None:  # noqa: ANN001
    path, tree, root, size = _layer(tmp_path, make_layer, store)
    layer_size = path.stat().st_size
    with pytest.raises(LocalVerityError, match=r"^no hash tree missing.verity next to the layer$"):
        localverity.attach(str(path), str(tmp_path / "missing.verity"), layer_size, root, size, name="lv-test")
    with pytest.raises(LocalVerityError, match=rf"^the hash tree layer.verity has {size} bytes, the signed manifest "
                                               rf"says {size + 4096}$"):
        localverity.attach(str(path), str(tree), layer_size, root, size + 4096, name="lv-test")
    with pytest.raises(LocalVerityError, match=r"is not whole 4096-byte blocks \(a squashfs made without padding\)"):
        localverity.attach(str(path), str(tree), layer_size - 1, root, size, name="lv-test")
    assert not _loops_of(path) and not _loops_of(tree)
    assert localverity.tree_path("/run/layerboot/slot/layers/ab") == "/run/layerboot/slot/layers/ab.verity"


def test_attach_on_this_kernel(tmp_path: Path, make_layer, store) -> None:  # noqa: ANN001
    """Without dm-verity (this VM's kernel): one error, no loop device left behind. With it: the node's own
    check (tests/data/localverity_check.py, also run in the QEMU slot boot) passes here too."""
    path, tree, root, size = _layer(tmp_path, make_layer, store)
    if not _dm_verity_here():
        with pytest.raises(VerityUnavailable, match=r"^no dm-verity in this kernel \("):
            localverity.load_modules()
        with pytest.raises(VerityUnavailable, match=r"/dev/mapper/control|No such device"):
            localverity.attach(str(path), str(tree), path.stat().st_size, root, size, name="lv-test")
        assert not _loops_of(path) and not _loops_of(tree)      # the autoclear loop devices went with the fds
        return
    slot = tmp_path / "slot"
    (slot / "layers").mkdir(parents=True)
    digest = path.name
    os.link(path, slot / "layers" / digest)
    os.link(tree, slot / "layers" / f"{digest}.verity")
    payload = {"layers": [{"digest": digest, "size": path.stat().st_size, "verity": {"root": root, "tree_size": size}}]}
    (slot / "manifest.json").write_text(json.dumps({"payload": json.dumps(payload)}))
    script = Path(__file__).parent / "data" / "localverity_check.py"
    result = run([sys.executable, script, slot, tmp_path / "work"], check=False)
    assert "LOCALVERITY-CHECK-PASS" in result.text, result.text
