"""dm-verity hash trees of layers (overlays/verity.py): the bytes veritysetup makes, stored at import, named by the
signed manifest, readable by stage1, served to the layer's nodes, kept and dropped with their layer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from layerboot.overlays.manifest import Artifact, Manifest, ManifestError
from layerboot.overlays.profile import Profiles
from layerboot.overlays.verity import VerityTree, merkle_tree
from layerboot.run import run, tool_path

BLOCK = 4096


def veritysetup(*args: object) -> str:
    if tool_path("veritysetup") is None:
        pytest.skip("veritysetup (cryptsetup-bin) is not installed")
    return run(["veritysetup", *args], timeout=300).text


def padded_copy(path: Path, out: Path) -> Path:
    """The data as dm-verity reads it from a device: zero-padded to whole blocks (what the node's device gives)."""
    shutil.copyfile(path, out)
    with open(out, "r+b") as handle:
        handle.truncate(-(-path.stat().st_size // BLOCK) * BLOCK)
    return out


# 1 block (no hash levels at all), one and two level-0 blocks, a size that is not whole blocks, three levels
@pytest.mark.parametrize("size", [BLOCK, 128 * BLOCK, 129 * BLOCK, 1_000_003, 128 * 128 * BLOCK + 1])
def test_the_tree_is_what_veritysetup_makes_and_verifies(tmp_path: Path, size: int) -> None:
    data = tmp_path / "layer"
    data.write_bytes(os.urandom(size))
    tree = merkle_tree(data)
    device = padded_copy(data, tmp_path / "device")
    out = veritysetup("format", "--no-superblock", "--salt=-", "--hash=sha256", "--data-block-size=4096",
                      "--hash-block-size=4096", device, tmp_path / "hash")
    assert f"Root hash:      \t{tree.root}" in out
    assert tree.tree == (tmp_path / "hash").read_bytes()
    # veritysetup checks every data and hash block against our root hash (in user space: no dm needed)
    veritysetup("verify", "--no-superblock", "--salt=-", "--hash=sha256", "--data-block-size=4096",
                "--hash-block-size=4096", f"--data-blocks={-(-size // BLOCK)}", device, tmp_path / "hash",
                tree.root)
    with open(device, "r+b") as handle:          # one flipped bit anywhere in the data: verify fails
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(Exception, match="[Vv]erification (of root hash |of data )?failed|corrupted"):
        veritysetup("verify", "--no-superblock", "--salt=-", "--hash=sha256", "--data-block-size=4096",
                    "--hash-block-size=4096", f"--data-blocks={-(-size // BLOCK)}", device, tmp_path / "hash",
                    tree.root)


def test_import_stores_the_tree_and_the_manifest_names_it(profiles: Profiles, make_layer) -> None:  # noqa: ANN001
    from layerboot.initrd.stage1.verify import parse_payload
    from layerboot.server.objects import ProfileIndex

    store = profiles.store
    files = {f"usr/share/f{i}": os.urandom(3000).hex() for i in range(60)}   # a few hundred KB: two levels
    base = make_layer(files, kind="base")
    record = store.get(base)
    tree = merkle_tree(store.path(base))
    assert record.verity == VerityTree(root=tree.root, tree=record.verity.tree, tree_size=len(tree.tree))
    assert store.path(record.verity.tree).read_bytes() == tree.tree            # an object of its own
    assert record.fsverity == tree.fsverity                                    # the same pass made both
    assert not profiles.paths.object_meta(record.verity.tree).exists()         # named by the layer's record
    profiles.create("node", base)
    payload = json.loads(profiles.signed_manifest("node").decode())["payload"]
    entry = json.loads(payload)["layers"][0]["verity"]
    assert entry == {"root": tree.root, "tree": record.verity.tree, "tree_size": len(tree.tree),
                     "tree_path": f"objects/{record.verity.tree}", "algorithm": "sha256", "data_block": 4096,
                     "hash_block": 4096, "salt": "", "format": 1}
    layer = parse_payload(payload).layers[0]                                   # what stage1 reads
    assert (layer.verity.root, layer.verity.tree, layer.verity.tree_size, layer.verity.tree_path) == \
        (tree.root, record.verity.tree, len(tree.tree), f"objects/{record.verity.tree}")
    assert Manifest.from_json(payload).layers[0].verity == record.verity       # and the host
    # the profile's nodes may fetch the tree; nothing else about the index changed
    assert ProfileIndex(profiles).allows("node", record.verity.tree)
    assert ProfileIndex(profiles).allows("node", base)


def test_trees_in_manifests_are_checked(profiles: Profiles, make_layer) -> None:  # noqa: ANN001
    from layerboot.initrd.stage1.verify import VerifyError, parse_payload

    base = make_layer({"etc/a": "a\n"}, kind="base")
    profiles.create("node", base)
    data = json.loads(json.loads(profiles.signed_manifest("node").decode())["payload"])
    entry = data["layers"][0]["verity"]

    def with_entry(**changes: object) -> str:
        return json.dumps({**data, "layers": [{**data["layers"][0], "verity": {**entry, **changes}}]})

    for bad in ({"root": "zz"}, {"tree_size": 100}, {"tree_path": "/etc/shadow"}, {"tree": None}):
        with pytest.raises(VerifyError):
            parse_payload(with_entry(**bad))
    # a tree made with parameters this stage1 does not use: the layer has no usable tree (fetched whole)
    assert parse_payload(with_entry(salt="00ff")).layers[0].verity is None
    assert parse_payload(with_entry(data_block=1024)).layers[0].verity is None
    with pytest.raises(ManifestError, match="has the path"):
        Artifact.from_dict({**data["layers"][0], "verity": {**entry, "tree_path": "objects/" + "0" * 64}})
    # a manifest without trees (an older server) reads as before, on both sides
    data["layers"][0].pop("verity")
    assert parse_payload(json.dumps(data)).layers[0].verity is None
    assert Manifest.from_dict({**data, "created": "now"}).layers[0].verity is None


def test_a_record_from_before_trees_gets_one_with_its_next_manifest(profiles: Profiles,
                                                                     make_layer) -> None:  # noqa: ANN001
    store = profiles.store
    base = make_layer({"etc/a": "a\n"}, kind="base")
    tree = store.get(base).verity
    meta = profiles.paths.object_meta(base)
    record = json.loads(meta.read_text())
    del record["verity"]
    meta.write_text(json.dumps(record))
    store.path(tree.tree).unlink()
    assert store.get(base).verity is None
    profiles.create("node", base)
    assert store.get(base).verity == tree and store.path(tree.tree).is_file()


def test_the_tree_lives_and_goes_with_its_layer(profiles: Profiles, make_layer, tmp_path: Path) -> None:  # noqa: ANN001
    from layerboot.overlays.leftovers import find_unrecorded_objects

    store = profiles.store
    base = make_layer({"etc/a": "a\n"}, kind="base")
    extra = make_layer({"etc/big": os.urandom(20000).hex()}, base=base)
    tree = store.get(extra).verity.tree
    assert store.digests() == sorted([base, extra])                 # trees are not layers of their own
    assert find_unrecorded_objects(profiles.paths) == []             # fsck --repair leaves them alone
    assert store.fsck() == []
    store.path(tree).chmod(0o644)
    store.path(tree).write_bytes(b"x" * 4096)                        # a damaged tree is an fsck problem
    problems = store.fsck()
    assert [p.digest for p in problems] == [tree] and problems[0].damaged
    assert f"the dm-verity tree of {extra[:12]}" in problems[0].problem
    store.path(tree).unlink()
    assert [p.digest for p in store.fsck()] == [tree]
    profiles.create("node", base)
    profiles.add("node", extra)                                      # its next manifest makes it again
    assert store.path(tree).is_file() and store.fsck() == []
    profiles.create("other", base)
    profiles.remove("node", extra)
    # referenced by the profiles' history: kept with its layer
    assert not profiles.drop_unused_layer(extra) and store.path(tree).is_file()
    store.path(tree).chmod(0o644)
    orphan = tmp_path / "orphan"
    orphan.write_bytes(b"not named by any record")
    digest, _ = store.objects.put_file(orphan)
    assert [leftover.path.name for leftover in find_unrecorded_objects(profiles.paths)] == [digest]
