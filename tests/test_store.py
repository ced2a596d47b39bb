import hashlib
import os
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.layer import Layer
from layerboot.overlays.store import Store
from layerboot.tools.cli import main


def test_import_tree_is_content_addressed(store: Store, make_layer) -> None:
    digest = make_layer({"etc/hostname": "node\n"}, kind="base")
    path = store.path(digest)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.read_bytes()[:4] == b"hsqs"
    layer = store.get(digest)
    assert layer.kind == "base" and layer.size == path.stat().st_size
    assert path.stat().st_mode & 0o222 == 0, "stored objects are read-only"


def test_importing_the_same_image_twice_keeps_one_layer(store: Store, make_layer, tmp_path: Path) -> None:
    digest = make_layer({"a": "1"}, kind="base")
    copy = tmp_path / "copy.squashfs"
    copy.write_bytes(store.path(digest).read_bytes())
    again = store.import_squashfs(copy, kind="base", description="second import")
    assert again.digest == digest
    assert store.digests() == [digest]
    assert store.get(digest).description == "", "first record wins; imports never rewrite metadata"


def test_non_squashfs_file_is_refused_and_store_untouched(store: Store, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not a filesystem" * 100)
    with pytest.raises(LayerbootError, match="not a squashfs image"):
        store.import_squashfs(junk)
    assert store.digests() == [] and store.objects.digests() == []


def test_overlay_import_requires_known_base(store: Store, make_layer) -> None:
    base = make_layer({"a": "1"}, kind="base")
    overlay = make_layer({"b": "2"}, base=base)
    assert store.get(overlay).base == base
    with pytest.raises(LayerbootError, match="needs the base"):
        make_layer({"c": "3"}, base=None)


def test_prefix_lookup(store: Store, make_layer) -> None:
    digest = make_layer({"a": "1"}, kind="base")
    assert store.get(digest[:8]).digest == digest
    with pytest.raises(LayerbootError, match="no layer matches"):
        store.get("ffffff" if not digest.startswith("ffffff") else "000000")
    with pytest.raises(LayerbootError, match="not a layer digest"):
        store.get("../../etc/passwd")


def test_layer_record_round_trips() -> None:
    layer = Layer(digest="a" * 64, kind="overlay", size=10, source="upload:x", base="b" * 64, parent="c" * 64,
                  description="unicode ✓")
    assert Layer.from_json(layer.to_json()) == layer


def test_fsck_reports_corruption_and_missing_objects(store: Store, make_layer, capsys) -> None:
    good = make_layer({"a": "1"}, kind="base")
    bad = make_layer({"b": "2"}, base=good)
    gone = make_layer({"c": "3"}, base=good)
    assert store.fsck() == []
    bad_path = store.path(bad)
    bad_path.chmod(0o644)
    data = bytearray(bad_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad_path.write_bytes(bytes(data))
    store.path(gone).unlink()
    problems = {p.digest: p.problem for p in store.fsck()}
    assert set(problems) == {bad, gone}
    assert "content hash" in problems[bad] and "missing" in problems[gone]

    code = main(["--store", str(store.paths.root), "store", "fsck"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"BAD {bad[:12]}" in out and f"BAD {gone[:12]}" in out
    assert "fsck found 2 problem(s)" in err and "Traceback" not in err


def test_fsck_on_a_healthy_store_via_cli(store: Store, make_layer, capsys) -> None:
    make_layer({"a": "1"}, kind="base")
    assert main(["--store", str(store.paths.root), "store", "fsck"]) == 0
    assert "all intact" in capsys.readouterr().out
