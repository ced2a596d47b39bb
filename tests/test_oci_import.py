"""`layerboot base import-oci`: an OCI image the test writes itself (layout files, gzip, zstd and plain layers
with OCI whiteouts and opaque directories), archived locally with skopeo, imported flattened and per layer;
the per-layer chain stacked with overlayfs must equal the flattened base."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from layerboot.overlays.chain import mount_overlay, mount_squashfs
from layerboot.overlays.profile import Profiles
from layerboot.run import run, tool_path
from layerboot.tools.cli import main
from treecompare import snapshot, tree_differences

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (tool_path("skopeo") and tool_path("umoci")), reason="needs skopeo and umoci")]

T = 1_700_000_000


def _entry(name: str, kind: str = "file", data: bytes = b"", mode: int = 0o644, uid: int = 0,
           target: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.mode = T, uid, uid, mode
    if kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, mode if mode != 0o644 else 0o755
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, target
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, target
    else:
        info.size = len(data)
    return info, data


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


LAYER1 = [_entry("etc", "dir"), _entry("etc/os-release", data=b"one\n"), _entry("etc/hostname", data=b"base\n"),
          _entry("etc/issue", data=b"issue\n"), _entry("etc/link", "symlink", target="os-release"),
          _entry("usr", "dir"), _entry("usr/bin", "dir"), _entry("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
          _entry("usr/bin/tool2", "hardlink", target="usr/bin/tool"), _entry("usr/share", "dir"),
          _entry("usr/share/doc", "dir"), _entry("usr/share/doc/a", "dir"),
          _entry("usr/share/doc/a/README", data=b"a\n"), _entry("usr/share/doc/b", "dir"),
          _entry("usr/share/doc/b/README", data=b"b\n"), _entry("var", "dir"), _entry("var/lib", "dir"),
          _entry("var/lib/data", data=b"old\n"), _entry("home", "dir"), _entry("home/user", "dir", uid=1000),
          _entry("home/user/file", data=b"mine\n", uid=1000, mode=0o600)]
# the opaque marker comes before its directory's entry; the whiteout deletes a file
LAYER2 = [_entry("etc", "dir"), _entry("etc/.wh.hostname"), _entry("etc/motd", data=b"two\n"),
          _entry("usr/share/doc/.wh..wh..opq"), _entry("usr/share/doc", "dir", mode=0o775),
          _entry("usr/share/doc/c", "dir"), _entry("usr/share/doc/c/README", data=b"c\n")]
# a whiteout deletes a directory; an opaque directory no entry lists
LAYER3 = [_entry("var/.wh.lib"), _entry("etc/motd", data=b"three\n"), _entry("opt/new/.wh..wh..opq"),
          _entry("opt/new/file", data=b"new\n")]


def write_layout(root: Path, *, ref: str = "v1", corrupt: bool = False) -> Path:
    """An OCI image layout written file by file: gzip, zstd and uncompressed layers."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    tars = [_tar(LAYER1), _tar(LAYER2), _tar(LAYER3)]
    zstd_layer = run(["zstd", "-q", "-c", "-"], input=tars[1]).stdout
    layers = [blob(gzip.compress(tars[0], mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"),
              blob(zstd_layer, "application/vnd.oci.image.layer.v1.tar+zstd"),
              blob(tars[2], "application/vnd.oci.image.layer.v1.tar")]
    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "created": "2023-11-14T00:00:00Z",
                              "config": {}, "rootfs": {"type": "layers", "diff_ids": [
                                  f"sha256:{hashlib.sha256(t).hexdigest()}" for t in tars]}}).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": layers}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    index_path = root / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"].append({**manifest, "annotations": {"org.opencontainers.image.ref.name": ref}})
    index_path.write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    if corrupt:
        victim = blobs / str(layers[0]["digest"]).split(":")[1]
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    return root


def _cli(profiles: Profiles, *argv: str) -> int:
    return main(["--store", str(profiles.paths.root), *argv])


@contextlib.contextmanager
def mounted_chain(profiles: Profiles, digests: list[str], work: Path):
    with contextlib.ExitStack() as stack:
        lowers = [mount_squashfs(stack, profiles.store.path(d), work / f"l{i}") for i, d in enumerate(digests)]
        yield lowers, (lowers[0] if len(lowers) == 1 else mount_overlay(stack, lowers, work / "merged"))


def test_flattened_and_per_layer_imports_boot_the_same_tree(profiles: Profiles, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    layout = write_layout(tmp_path / "layout")
    archive = tmp_path / "image.tar"
    run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:v1", f"oci-archive:{archive}"])

    assert _cli(profiles, "base", "import-oci", str(archive), "-d", "test image") == 0
    flat = capsys.readouterr().out.split()
    assert flat[0] == "base" and len(flat) == 4
    assert _cli(profiles, "base", "import-oci", str(layout), "--ref", "v1", "--layers", "--profile", "img") == 0
    out = capsys.readouterr().out.splitlines()
    digests = [line.split()[1] for line in out[:3]]
    assert [line.split()[0] for line in out[:3]] == ["base", "overlay", "overlay"]
    assert out[3] == "profile img: generation 3, 3 layer(s)"
    records = [profiles.store.get(d) for d in digests]
    assert [r.base for r in records[1:]] == [digests[0]] * 2 and records[2].parent == digests[1]
    assert profiles.current("img").layers == tuple(digests)

    with mounted_chain(profiles, [flat[1]], tmp_path / "flat") as (_, merged_flat), \
            mounted_chain(profiles, digests, tmp_path / "chain") as (lowers, merged):
        tree = snapshot(merged_flat)
        # directories no layer lists ('opt', 'opt/new'): umoci dates them when it unpacks, layerboot with the
        # image's creation time (reproducible); everything else must be the same
        differences = tree_differences(tree, snapshot(merged), limit=50)
        assert [d.split(":")[0] for d in differences] == ["'opt'", "'opt/new'"], differences
        assert all(d.endswith("!= 1699920000") for d in differences), differences
        root = merged_flat
        assert (root / "etc/motd").read_text() == "three\n" and not (root / "etc/hostname").exists()
        assert sorted(os.listdir(root / "usr/share/doc")) == ["c"]
        assert sorted(os.listdir(root / "var")) == [] and (root / "opt/new/file").read_text() == "new\n"
        assert os.readlink(root / "etc/link") == "os-release"
        tool = os.stat(root / "usr/bin/tool")
        assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_nlink == 2
        assert os.stat(root / "home/user/file").st_uid == 1000
        assert not [p for p in root.rglob(".wh.*")]
        # the overlay layers hold overlayfs' own markers
        hostname = os.lstat(lowers[1] / "etc/hostname")
        assert stat.S_ISCHR(hostname.st_mode) and hostname.st_rdev == 0
        assert os.getxattr(lowers[1] / "usr/share/doc", "trusted.overlay.opaque") == b"y"
        assert stat.S_IMODE(os.stat(lowers[1] / "usr/share/doc").st_mode) == 0o775
        assert os.getxattr(lowers[2] / "opt/new", "trusted.overlay.opaque") == b"y"
        assert stat.S_ISCHR(os.lstat(lowers[2] / "var/lib").st_mode)
        assert not os.path.lexists(lowers[0] / "etc/.wh.hostname")


def test_bad_images_are_one_line_errors_and_change_nothing(profiles: Profiles, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in profiles.paths.objects.iterdir())
    not_an_image = tmp_path / "notes.tar"
    not_an_image.write_bytes(_tar([_entry("hello.txt", data=b"hi\n")]))
    assert _cli(profiles, "base", "import-oci", str(not_an_image)) == 1
    err = capsys.readouterr().err
    assert err.startswith("layerboot: error: ") and "notes.tar is not an OCI image skopeo can read:" in err
    assert len(err.splitlines()) == 2 and "Traceback" not in err
    corrupt = write_layout(tmp_path / "corrupt", corrupt=True)
    assert _cli(profiles, "base", "import-oci", str(corrupt), "--layers") == 1
    err = capsys.readouterr().err
    assert "corrupt: a blob does not match its digest (writing blob: happened during read: Digest did not" in err
    assert "hint: the image is damaged" in err and "level=fatal" not in err
    two = write_layout(write_layout(tmp_path / "two", ref="a"), ref="b")
    assert _cli(profiles, "base", "import-oci", str(two)) == 1
    err = capsys.readouterr().err
    assert "pick one with --ref NAME" in err
    assert _cli(profiles, "base", "import-oci", str(tmp_path / "missing")) == 1
    assert "missing does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in profiles.paths.objects.iterdir()) == before
    assert not list(profiles.paths.tmp.iterdir())
