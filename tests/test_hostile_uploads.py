"""Hostile or malformed uploads: each gets one clear line and leaves the store exactly as it was."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from layerboot.overlays.bake import BakeLimits, UploadRejected, bake_archive
from layerboot.overlays.chain import mount_squashfs
from layerboot.overlays.store import Store
from layerboot.run import run
from layerboot.tools.cli import main

LIMITS = BakeLimits(max_bytes=64 << 20, max_files=1000, special_files="reject")


def info(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", linkname: str = "",
         major: int = 0, minor: int = 0, pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.size = len(data) if kind == tarfile.REGTYPE else 0
    member.linkname = linkname
    member.devmajor, member.devminor = major, minor
    member.mode = 0o644
    member.pax_headers = pax or {}
    return member, data


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if member.type == tarfile.REGTYPE else None)
    return out.getvalue()


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(data)


def fine(name: str = "etc/ok", data: bytes = b"ok\n") -> tuple[tarfile.TarInfo, bytes]:
    return info(name, data=data)


def sparse_bomb() -> bytes:
    """A GNU PAX 1.0 sparse member claiming 1 TiB with 512 bytes of data."""
    block = b"1\n0\n512\n".ljust(512, b"\0")
    member, _ = info("GNUSparseFile.0/bomb", data=block + b"x" * 512,
                     pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "bomb",
                          "GNU.sparse.realsize": str(1 << 40)})
    return tar_of((member, block + b"x" * 512))


def giant_pax_size() -> bytes:
    """A pax header that claims 1 GiB, followed by 50 MiB of filler: must not be read into memory."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 1 << 30
    return header.tobuf(tarfile.USTAR_FORMAT) + b"9" * (50 << 20)


def cut_before_end() -> bytes:
    data = tar_of(fine("a"), fine("b"))
    return data[:data.index(b"ok\n", 1024) + 512]          # ends after b's data block: no end-of-archive


def garbage_header() -> bytes:
    data = tar_of(fine("a"))
    return data[:1024] + b"\x07garbage".ljust(512, b"\x01") + data[1024:]


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "dotdot": (lambda: zst(tar_of(fine("../evil"))), r"climbs out with '\.\.'"),
    "nested-dotdot": (lambda: zst(tar_of(fine("etc/../../evil"))), r"climbs out"),
    "absolute": (lambda: zst(tar_of(fine("/etc/passwd"))), r"absolute path"),
    "through-symlink": (lambda: zst(tar_of(info("lnk", tarfile.SYMTYPE, linkname="/etc"), fine("lnk/passwd"))),
                        r"below 'lnk', which is a symlink"),
    "through-file": (lambda: zst(tar_of(fine("f"), fine("f/x"))), r"below 'f', which is a file"),
    "hardlink-dotdot": (lambda: zst(tar_of(info("h", tarfile.LNKTYPE, linkname="../../etc/shadow"))), r"climbs out"),
    "hardlink-absolute": (lambda: zst(tar_of(info("h", tarfile.LNKTYPE, linkname="/etc/shadow"))), r"absolute"),
    "hardlink-unknown": (lambda: zst(tar_of(info("h", tarfile.LNKTYPE, linkname="etc/shadow"))),
                         r"not a file, symlink, fifo or device earlier in the upload"),
    "hardlink-to-dir": (lambda: zst(tar_of(info("d", tarfile.DIRTYPE), info("h", tarfile.LNKTYPE, linkname="d"))),
                        r"not a file, symlink, fifo or device"),
    "hardlink-to-whiteout": (lambda: zst(tar_of(info("w", tarfile.CHRTYPE),
                                                info("h", tarfile.LNKTYPE, linkname="w"))),
                             r"not a file, symlink, fifo or device"),
    "char-device": (lambda: zst(tar_of(info("dev/null", tarfile.CHRTYPE, major=1, minor=3))), r"device node 1:3"),
    "block-device": (lambda: zst(tar_of(info("dev/sda", tarfile.BLKTYPE, major=8))), r"block device"),
    "fifo": (lambda: zst(tar_of(info("run/fifo", tarfile.FIFOTYPE))), r"fifos are not allowed"),
    "unknown-type": (lambda: zst(tar_of(info("vol", b"V"))), r"unsupported tar member type"),
    "duplicate": (lambda: zst(tar_of(fine("a"), fine("a"))), r"appears twice"),
    "dir-then-file": (lambda: zst(tar_of(info("a", tarfile.DIRTYPE), fine("a"))), r"appears twice"),
    "file-over-implied-dir": (lambda: zst(tar_of(fine("d/x"), fine("d"))), r"earlier members put files below"),
    "root-not-dir": (lambda: zst(tar_of(fine("."))), r"root must be a directory"),
    "long-name": (lambda: zst(tar_of(fine("x" * 256))), r"component longer than 255 bytes"),
    "truncated-zstd": (lambda: zst(tar_of(fine("a", os.urandom(200_000))))[:60_000], r"zstd data is truncated"),
    "truncated-tar": (lambda: zst(tar_of(fine("a", os.urandom(200_000)))[:100_000]), r"file data is truncated"),
    "no-end-marker": (lambda: zst(cut_before_end()), r"no end-of-archive block"),
    "garbage-header": (lambda: zst(garbage_header()), r"truncated or has a corrupt header"),
    "trailing-data": (lambda: zst(tar_of(fine("a")) + b"\x01more"), r"data follows the end"),
    "gzip": (lambda: gzip.compress(tar_of(fine("a"))), r"not zstd-compressed"),
    "plain-tar": (lambda: tar_of(fine("a")), r"not zstd-compressed"),
    "empty": (lambda: b"", r"not zstd-compressed"),
    "not-a-tar": (lambda: zst(os.urandom(4096)), r"not a readable tar stream"),
    "bomb": (lambda: zst(tar_of(fine("zeros", bytes(100 << 20)))), r"more than the 67108864-byte quota"),
    "padding-bomb": (lambda: zst(tar_of(fine("a")) + bytes(100 << 20)), r"unpacks to more than the 67108864-byte"),
    "sparse-bomb": (lambda: zst(sparse_bomb()), r"files add up to more than"),
    "too-many-files": (lambda: zst(tar_of(*(fine(f"f{i}") for i in range(1001)))), r"more than 1000 members"),
    "huge-pax-header": (lambda: zst(tar_of(info("a", pax={"comment": "x" * (6 << 20)}))),
                        r"member header is larger than"),
    "giant-pax-size": (lambda: zst(giant_pax_size()), r"member header is larger than"),
    "redirect": (lambda: zst(tar_of(info("d", tarfile.DIRTYPE, pax={"SCHILY.xattr.trusted.overlay.redirect": "/x"}))),
                 r"redirect_dir"),
    "metacopy": (lambda: zst(tar_of(info("f", pax={"SCHILY.xattr.trusted.overlay.metacopy": ""}))), r"metacopy"),
    "acl": (lambda: zst(tar_of(info("f", pax={"SCHILY.xattr.system.posix_acl_access": "\x02"}))), r"ACLs"),
    "odd-xattr": (lambda: zst(tar_of(info("f", pax={"SCHILY.xattr.os2.weird": "1"}))), r"outside the user/trusted"),
}


def store_state(store: Store) -> tuple[list[str], list[str], list[str]]:
    return (sorted(os.listdir(store.paths.objects)), sorted(os.listdir(store.paths.meta)),
            sorted(os.listdir(store.paths.tmp)) if store.paths.tmp.exists() else [])


@pytest.fixture
def base(store: Store, make_layer) -> str:
    return make_layer({"etc/motd": "base\n"}, kind="base")


@pytest.mark.parametrize("case", CASES)
def test_hostile_upload_is_rejected_and_changes_nothing(case: str, store: Store, base: str, tmp_path: Path) -> None:
    build, pattern = CASES[case]
    archive = tmp_path / "upload.tar.zst"
    archive.write_bytes(build())
    before = store_state(store)
    with pytest.raises(UploadRejected) as caught:
        bake_archive(store, archive, base=base, parent=None, description="", limits=LIMITS)
    message = str(caught.value)
    assert message.startswith("upload rejected") and "\n" not in message
    assert re.search(pattern, message), message
    assert store_state(store) == before


def test_cli_prints_one_line_and_fails(store: Store, base: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "evil.tar.zst"
    archive.write_bytes(zst(tar_of(fine("../../etc/cron.d/evil"))))
    assert main(["--store", str(store.paths.root), "bake", str(archive), "--base", base]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["layerboot: error: upload rejected: '../../etc/cron.d/evil': climbs out with '..'"]


@pytest.mark.root
def test_fifo_is_kept_when_the_policy_says_keep(store: Store, base: str, tmp_path: Path) -> None:
    archive = tmp_path / "fifo.tar.zst"
    archive.write_bytes(zst(tar_of(info("run", tarfile.DIRTYPE), info("run/fifo", tarfile.FIFOTYPE))))
    keep = BakeLimits(max_bytes=1 << 20, max_files=10, special_files="keep")
    layer = bake_archive(store, archive, base=base, parent=None, description="", limits=keep)
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(layer), tmp_path / "m")
        assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)


@pytest.mark.root
def test_gnu_tar_upload_with_sparse_files_and_xattrs_is_accepted(store: Store, base: str, tmp_path: Path) -> None:
    """Uploads made by GNU tar (./ prefixes, PAX sparse, SCHILY xattrs) bake to the same content."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/conf").write_text("conf\n")
    os.setxattr(tree / "etc/conf", "user.k", b"v")
    with open(tree / "etc/sparse", "wb") as handle:
        handle.truncate(16 << 20)
        handle.seek(1 << 20)
        handle.write(b"x")
    tar_file = tmp_path / "gnu.tar"
    run(["tar", "--format=pax", "--sparse", "--xattrs", "--xattrs-include=*", "-C", tree, "-cf", tar_file, "."])
    archive = tmp_path / "gnu.tar.zst"
    run(["zstd", "-q", "-f", tar_file, "-o", archive])
    layer = bake_archive(store, archive, base=base, parent=None, description="", limits=LIMITS)
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(layer), tmp_path / "m")
        assert os.getxattr(root / "etc/conf", "user.k") == b"v"
        assert (root / "etc/sparse").read_bytes() == (tree / "etc/sparse").read_bytes()


def test_concurrent_bakes_from_worker_threads(store: Store, base: str, tmp_path: Path) -> None:
    """The daemon bakes from worker threads: a hostile upload next to good ones spoils nothing."""
    from concurrent.futures import ThreadPoolExecutor

    uploads = {}
    for index in range(3):
        uploads[index] = tmp_path / f"good{index}.tar.zst"
        uploads[index].write_bytes(zst(tar_of(fine(f"etc/file{index}", os.urandom(300_000)))))
    evil = tmp_path / "evil.tar.zst"
    evil.write_bytes(zst(tar_of(fine("a", os.urandom(300_000)), fine("../escape"))))

    def bake(path: Path) -> str:
        try:
            return bake_archive(store, path, base=base, parent=None, description="", limits=LIMITS).digest
        except UploadRejected as err:
            return str(err)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(bake, [evil, *uploads.values()]))
    assert results[0].startswith("upload rejected: '../escape'")
    assert len(set(results[1:])) == 3 and all(store.get(digest).kind == "overlay" for digest in results[1:])
    assert os.listdir(store.paths.tmp) == []
