"""Corrupt objects are never served, re-importing the good bytes repairs them, fsck --repair quarantines them.

The daemon tests run the real layerbootd: an object damaged on disk (before its first serve, or after it,
with its size and mtime put back) is answered with a 5xx naming it, never with its bytes, and moved to
quarantine/; a disk read error (real EIO on a loop device) is a 503 naming the disk and quarantines nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.tools.cli import main
from server_daemon import Daemon, boot_profile, write_config
from smallfs import BLOCK, BrokenTail, physical_extents, small_ext4


def damage(path: Path, *, keep_mtime: bool = False) -> None:
    """Flip one byte in the middle of a stored (read-only) object, as bit rot or a bad disk would."""
    st = path.stat()
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.seek(st.st_size // 2)
        byte = handle.read(1)
        handle.seek(st.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(0o444)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_reimporting_the_good_bytes_repairs_a_damaged_object(store: Store, make_layer, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    base = make_layer({"etc/os-release": "base\n"}, kind="base")
    good = tmp_path / "good.squashfs"
    shutil.copyfile(store.path(base), good)
    damage(store.path(base))
    root = store.paths.root

    assert main(["--store", str(root), "store", "fsck"]) == 1
    out, err = capsys.readouterr()
    assert f"BAD {base[:12]}: content hash is" in out
    assert "importing the good bytes again ('layerboot layer import FILE') restores" in err

    assert store.import_squashfs(good, kind="base").digest == base       # the same bytes again
    assert store.objects.verify(base) is None and store.path(base).read_bytes() == good.read_bytes()
    [(kept, _)] = store.quarantined()
    assert kept.name.startswith(base + ".") and kept.read_bytes() != good.read_bytes()
    assert main(["--store", str(root), "store", "fsck"]) == 0
    assert f"{kept.name} ({kept.stat().st_size} bytes) is a damaged object kept" in capsys.readouterr().out


def test_fsck_repair_quarantines_damaged_objects_and_reimport_restores_them(
        store: Store, make_layer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_layer({"etc/os-release": "base\n"}, kind="base")
    good = tmp_path / "good.squashfs"
    shutil.copyfile(store.path(base), good)
    damage(store.path(base))
    root = store.paths.root
    assert main(["--store", str(root), "store", "fsck", "--repair"]) == 1
    out, err = capsys.readouterr()
    assert f"BAD {base[:12]}" in out and f"QUARANTINED {base[:12]}: moved to quarantine/" in out
    assert "quarantined 1 object(s)" in err and not store.path(base).exists()
    assert main(["--store", str(root), "layer", "import", str(good)]) == 0
    assert store.objects.verify(base) is None
    assert main(["--store", str(root), "store", "fsck"]) == 0


@pytest.fixture
def served(profiles: Profiles, make_layer, tmp_path: Path):  # noqa: ANN201
    digests = boot_profile(profiles, make_layer, tmp_path)
    daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths),
                    tmp_path / "layerbootd.log").start()
    token = (profiles.paths.state / "admin.token").read_text().strip()
    yield daemon, token, digests
    daemon.stop()


def test_a_damaged_object_is_refused_quarantined_and_served_again_after_reimport(served, tmp_path: Path) -> None:
    daemon, token, digests = served
    kernel = digests["kernel"]
    path = daemon.paths.object(kernel)
    good = path.read_bytes()
    damage(path)
    for attempt in range(2):   # first the hash check fails; later the object is in quarantine
        reply = daemon.get(f"/objects/{kernel}", token=token, headers={"Accept": "application/json"})
        assert reply.status == 500, reply.text
        assert f"object {kernel[:12]} is damaged on the server" in reply.json()["error"]
        assert len(reply.body) < 1000 and good[:64] not in reply.body and "immutable" not in reply.headers.get(
            "cache-control", "")
    assert not path.exists() and len(list(daemon.paths.quarantine.glob(f"{kernel}.*"))) == 1
    deadline = time.monotonic() + 10   # (the start-up verification may be the one that moved it: it logs after)
    while f"object {kernel[:12]} failed its hash check before serving" not in daemon.log.read_text():
        assert time.monotonic() < deadline, daemon.log.read_text()
        time.sleep(0.05)
    (tmp_path / "vmlinuz-again").write_bytes(good)
    assert main(["--store", str(daemon.paths.root), "layer", "import", str(tmp_path / "vmlinuz-again"),
                 "--kind", "kernel"]) == 0
    reply = daemon.get(f"/objects/{kernel}", token=token)
    assert reply.status == 200 and reply.body == good


def test_damage_after_the_first_serve_is_caught_even_with_size_and_mtime_put_back(served) -> None:
    daemon, token, digests = served
    initrd = digests["initrd"]
    first = daemon.get(f"/objects/{initrd}", token=token)
    assert first.status == 200 and first.headers["cache-control"].endswith("immutable")
    again = daemon.get(f"/objects/{initrd}", token=token)   # verified once, remembered
    assert again.status == 200 and again.body == first.body
    damage(daemon.paths.object(initrd), keep_mtime=True)
    reply = daemon.get(f"/objects/{initrd}", token=token)
    assert reply.status == 500 and first.body[:64] not in reply.body


@pytest.mark.root
def test_a_read_error_is_a_503_naming_the_disk_and_quarantines_nothing(tmp_path: Path, make_layer,
                                                                     profiles: Profiles) -> None:
    digests = boot_profile(profiles, make_layer, tmp_path)
    objects = profiles.paths.objects
    moved = tmp_path / "objects-copy"
    shutil.copytree(objects, moved)
    with small_ext4(tmp_path / "objects.img", objects, mb=16) as device:
        for item in moved.iterdir():
            shutil.copy2(item, objects / item.name)
        kernel = digests["kernel"]
        broken = BrokenTail(tmp_path / "objects.img", objects / kernel)   # before the daemon first reads it
        daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths),
                        tmp_path / "layerbootd.log").start()
        try:
            token = (profiles.paths.state / "admin.token").read_text().strip()
            reply = daemon.get(f"/objects/{kernel}", token=token, headers={"Accept": "application/json"})
            assert reply.status == 503, reply.text
            assert reply.json()["error"].startswith(f"I/O error on {device} mounted at {objects} (reading "
                                                    f"{objects / kernel}")
            assert (objects / kernel).exists() and not profiles.paths.quarantine.exists()
            broken.heal()
            reply = daemon.get(f"/objects/{kernel}", token=token)
            assert reply.status == 200 and reply.body == (moved / kernel).read_bytes()
        finally:
            daemon.stop()


@pytest.mark.root
def test_bit_rot_under_the_filesystem_is_found_by_the_scrub(tmp_path: Path, make_layer, profiles: Profiles) -> None:
    """Bytes changed on the disk itself: size, mtime and ctime stay as they were, only a re-hash can tell.

    The page cache still holds the good bytes of the object just served: the scrub reads past it."""
    digests = boot_profile(profiles, make_layer, tmp_path)
    objects = profiles.paths.objects
    saved = {p.name: p.read_bytes() for p in objects.iterdir()}
    with small_ext4(tmp_path / "objects.img", objects, mb=16):
        for name, data in saved.items():
            with open(objects / name, "wb") as handle:
                handle.write(data)
                os.fsync(handle.fileno())   # on the device now: nothing cached will overwrite the rot below
        kernel = digests["kernel"]
        config = write_config(tmp_path / "layerboot.toml", profiles.paths, scrub_interval=1)
        daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log").start()
        try:
            token = (profiles.paths.state / "admin.token").read_text().strip()
            assert daemon.get(f"/objects/{kernel}", token=token).status == 200
            [(block, _), *_] = physical_extents(objects / kernel)
            with open(tmp_path / "objects.img", "r+b") as image:   # below the filesystem
                image.seek(block * BLOCK + 100)
                byte = image.read(1)
                image.seek(block * BLOCK + 100)
                image.write(bytes([byte[0] ^ 0xFF]))
            deadline = time.monotonic() + 20
            while not re.search(r"scrub: \d+ object\(s\) checked in \d+s, 1 with a problem", daemon.log.read_text()):
                assert time.monotonic() < deadline, daemon.log.read_text()
                time.sleep(0.1)
            assert not (objects / kernel).exists()
            assert daemon.get(f"/objects/{kernel}", token=token).status == 500
        finally:
            daemon.stop()


def test_squash_refuses_a_damaged_layer_instead_of_laundering_it(profiles: Profiles, make_layer,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base = make_layer({"etc/os-release": "base\n"}, kind="base")
    profiles.create("p", base)
    first = make_layer({"etc/a": "a\n"}, base=base)
    profiles.add("p", first)
    profiles.add("p", make_layer({"etc/b": "b\n"}, base=base))
    damage(profiles.store.path(first))
    assert main(["--store", str(profiles.paths.root), "squash", "p", "--from", "1", "--to", "2"]) == 1
    err = capsys.readouterr().err
    assert f"layer {first[:12]} is damaged (content hash is" in err and "squashing it would bake" in err
    assert profiles.current("p").number == 3 and set(profiles.store.digests()) == {base, first,
                                                                                   profiles.current("p").layers[2]}
