"""Capture, bake and squash edge cases that used to break or silently change a node's data (issue 11, item 13).

Everything runs through the real parts: xattrs set on a tmpfs upper dir through a real overlayfs mount,
archives made by GNU tar, tar2sqfs, loop-mounted squashfs layers and overlayfs stacks compared with treecompare.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.bake import BakeLimits, UploadRejected, bake_archive
from layerboot.overlays.capture import capture, data_segments
from layerboot.overlays.chain import mount, mount_squashfs
from layerboot.overlays.squash import squash_layers
from layerboot.overlays.store import Store
from layerboot.overlays.tarwriter import PAX_HEADER_MAX, gnu_escape, gnu_unescape
from layerboot.run import run
from test_capture_bake import LIMITS, build_base, roundtrip, untar
from test_hostile_uploads import fine, info, tar_of, zst
from test_squash import layer_from_changes, view
from treecompare import snapshot, tree_differences

ODD_NAMES = ["user.a=b", "user.p%3Dq", "user.%25", "user.x=%=y", "user.==", os.fsdecode(b"user.latin1-\xe9"),
             os.fsdecode(b"user.\xff=\xfe%"), "trusted.k=v", "security.odd=name", "user.\u00fc=\u2713"]


@pytest.fixture
def base(store: Store, tmp_path: Path) -> str:
    tree = build_base(tmp_path / "base-tree")
    return store.import_tree(tree, kind="base", description="rich base").digest


@contextlib.contextmanager
def tmpfs_upper(path: Path):
    """A tmpfs directory, as a node's overlay upper dir is."""
    with contextlib.ExitStack() as stack:
        path.mkdir(parents=True)
        yield mount(stack, "tmpfs", path, fstype="tmpfs", options="mode=0755")


def value_of(name: str) -> bytes:
    return b"\x00value of " + name.encode("utf-8", "surrogateescape") + b"\xff"


# -- xattr names ------------------------------------------------------------------------------------------------

def test_gnu_escaping_matches_gnu_tar_and_round_trips() -> None:
    assert gnu_escape(b"user.a=b%c") == b"user.a%3Db%25c"
    assert gnu_unescape("user.a%3Db%25c") == "user.a=b%c"
    assert gnu_unescape("user.x%41%3d%2") == "user.x%41%3d%2", "GNU tar decodes only %3D and %25"
    for name in ODD_NAMES:
        raw = name.encode("utf-8", "surrogateescape")
        assert gnu_unescape(gnu_escape(raw).decode("utf-8", "surrogateescape")) == name


@pytest.mark.root
def test_odd_xattr_names_survive_capture_bake_mount(store: Store, base: str, tmp_path: Path) -> None:
    """Names with '=', '%' and non-UTF-8 bytes, set through overlayfs, come back byte for byte."""
    def change(m: Path) -> None:
        (m / "etc/odd").write_text("odd\n")
        for name in ODD_NAMES:
            os.setxattr(m / "etc/odd", name, value_of(name))
        os.setxattr(m / "etc/motd", "user.copied=up", b"lower file, xattr added on the node")
        os.symlink("odd", m / "etc/odd.link")
        os.setxattr(m / "etc/odd.link", "trusted.link=x", b"on a symlink", follow_symlinks=False)

    problems, archive, layer = roundtrip(store, base, tmp_path, change)
    assert problems == []
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(layer), tmp_path / "layer")
        assert sorted(os.listxattr(root / "etc/odd")) == sorted(ODD_NAMES)
        assert all(os.getxattr(root / "etc/odd", name) == value_of(name) for name in ODD_NAMES)
    # GNU tar reads a capture the same way (it wrote the escaping this follows)
    dest = tmp_path / "gnu"
    dest.mkdir()
    run(["tar", "-I", "zstd", "--xattrs", "--xattrs-include=*", "-xpf", archive, "-C", dest])
    assert sorted(os.listxattr(dest / "etc/odd")) == sorted(ODD_NAMES)
    assert all(os.getxattr(dest / "etc/odd", name) == value_of(name) for name in ODD_NAMES)


@pytest.mark.root
def test_gnu_tar_archives_with_escaped_xattr_names_bake_unchanged(store: Store, base: str, tmp_path: Path) -> None:
    with tmpfs_upper(tmp_path / "tree") as tree:
        (tree / "f").write_text("f\n")
        for name in ODD_NAMES:
            os.setxattr(tree / "f", name, value_of(name))
        run(["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "-C", tree, "-cf", tmp_path / "g.tar", "."])
    run(["zstd", "-q", tmp_path / "g.tar", "-o", tmp_path / "g.tar.zst"])
    layer = bake_archive(store, tmp_path / "g.tar.zst", base=base, parent=None, description="", limits=LIMITS)
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(layer), tmp_path / "layer")
        assert {n: os.getxattr(root / "f", n) for n in os.listxattr(root / "f")} == {n: value_of(n) for n in ODD_NAMES}


# -- xattrs larger than tar2sqfs takes ------------------------------------------------------------------------

@pytest.mark.root
def test_xattrs_tar2sqfs_cannot_take_are_refused_at_capture(store: Store, base: str, tmp_path: Path) -> None:
    with tmpfs_upper(tmp_path / "upper") as upper:
        (upper / "etc").mkdir()
        (upper / "etc/fits").write_text("fits\n")
        os.setxattr(upper / "etc/fits", "user.big", os.urandom(65000))            # tar2sqfs takes this
        capture(upper, tmp_path / "ok.tar.zst")
        layer = bake_archive(store, tmp_path / "ok.tar.zst", base=base, parent=None, description="", limits=LIMITS)
        with contextlib.ExitStack() as stack:
            root = mount_squashfs(stack, store.path(layer), tmp_path / "layer")
            assert os.getxattr(root / "etc/fits", "user.big") == os.getxattr(upper / "etc/fits", "user.big")

        (upper / "etc/big").write_text("big\n")                                   # tmpfs holds 80 kB of xattrs
        os.setxattr(upper / "etc/big", "user.one", os.urandom(40000))
        os.setxattr(upper / "etc/big", "user.two", os.urandom(40000))
        with pytest.raises(LayerbootError, match=r"^cannot capture 'etc/big': its names and xattrs need a \d+-byte "
                                                 rf"tar header; tar2sqfs accepts at most {PAX_HEADER_MAX} bytes"):
            capture(upper, tmp_path / "big.tar.zst")
        assert not (tmp_path / "big.tar.zst").exists() and not list(tmp_path.glob(".big*"))
        (upper / "etc/big").unlink()

        (upper / "etc/b64").write_text("b64\n")       # 60 kB fits GNU tar's header, not the base64 form tar2sqfs
        os.setxattr(upper / "etc/b64", "user.a=b", os.urandom(60000))          # needs for a name with '='
        with pytest.raises(LayerbootError, match="cannot capture 'etc/b64': its names and xattrs need"):
            capture(upper, tmp_path / "b64.tar.zst")


def test_bake_refuses_an_xattr_header_tar2sqfs_cannot_take_with_one_line(store: Store, base: str,
                                                                          tmp_path: Path) -> None:
    big = "v" * 40000
    archive = tmp_path / "big.tar.zst"
    archive.write_bytes(zst(tar_of(info("f", data=b"x", pax={"SCHILY.xattr.user.a": big, "SCHILY.xattr.user.b": big}))))
    with pytest.raises(UploadRejected, match=r"^upload rejected: 'f': its names and xattrs need a \d+-byte tar "
                                             r"header; tar2sqfs accepts at most 65536 bytes per entry"):
        bake_archive(store, archive, base=base, parent=None, description="", limits=LIMITS)
    assert os.listdir(store.paths.tmp) == []


# -- hard links ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("linkname", ["h", "./h"])
def test_hard_link_to_itself_is_refused_clearly(store: Store, base: str, tmp_path: Path, linkname: str) -> None:
    archive = tmp_path / "self.tar.zst"
    archive.write_bytes(zst(tar_of(fine("a"), info("h", tarfile.LNKTYPE, linkname=linkname))))
    with pytest.raises(UploadRejected) as caught:
        bake_archive(store, archive, base=base, parent=None, description="", limits=LIMITS)
    assert str(caught.value) == "upload rejected: 'h': is a hard link to itself"
    assert os.listdir(store.paths.tmp) == []


# -- sparse files from GNU tar --------------------------------------------------------------------------------

SPARSE_FORMATS = {
    "gnu-default": ["--sparse"],                              # old GNU 'S' members (GNU tar's default format)
    "oldgnu": ["--format=oldgnu", "--sparse"],
    "pax-0.0": ["--format=pax", "--sparse", "--sparse-version=0.0"],
    "pax-0.1": ["--format=pax", "--sparse", "--sparse-version=0.1"],
    "pax-1.0": ["--format=pax", "--sparse", "--sparse-version=1.0"],
}


def sparse_tree(root: Path) -> Path:
    """Holes at the start, the end, in between (60 segments: old GNU needs extension headers), only holes."""
    root.mkdir()
    page = 4096
    with open(root / "many", "wb") as handle:
        handle.truncate(400 * page)
        for index in range(0, 400, 7):
            handle.seek(index * page)
            handle.write(b"%03d" % index * 300)
    with open(root / "end-hole", "wb") as handle:
        handle.write(b"a" * 5000)
        handle.truncate(3 << 20)
    with open(root / "start-hole", "wb") as handle:
        handle.truncate(3 << 20)
        handle.seek((3 << 20) - 10)
        handle.write(b"z" * 10)
    with open(root / "all-hole", "wb") as handle:
        handle.truncate(2 << 20)
    (root / "plain").write_bytes(b"p" * 10000)
    return root


@pytest.mark.root
@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_gnu_tar_sparse_members_bake_to_what_gnu_tar_extracts(store: Store, base: str, tmp_path: Path,
                                                              fmt: str) -> None:
    with tmpfs_upper(tmp_path / "src") as src:
        tree = sparse_tree(src / "tree")
        run(["tar", *SPARSE_FORMATS[fmt], "-C", tree, "-cf", tmp_path / "s.tar", "."])
    assert (tmp_path / "s.tar").stat().st_size < 1 << 20, "GNU tar stored the holes sparse"
    extracted = tmp_path / "gnu"
    extracted.mkdir()
    run(["tar", "-xf", tmp_path / "s.tar", "-C", extracted])
    run(["zstd", "-q", tmp_path / "s.tar", "-o", tmp_path / "s.tar.zst"])
    layer = bake_archive(store, tmp_path / "s.tar.zst", base=base, parent=None, description="", limits=LIMITS)
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(layer), tmp_path / "layer")
        for name in sorted(os.listdir(extracted)):
            assert (root / name).read_bytes() == (extracted / name).read_bytes(), name
        assert os.stat(root / "all-hole").st_blocks == 0, "the holes stay holes in the layer"


@pytest.mark.parametrize("sparse,reason", [
    ([(0, 512), (100, 512)], "unordered, overlapping"),
    ([(0, 512), (1 << 30, 1)], "beyond the file size"),
    ([(0, 4096)], "more data than the member stores"),
])
def test_inconsistent_sparse_maps_are_refused(store: Store, base: str, tmp_path: Path, sparse: list,
                                              reason: str) -> None:
    numbers = [len(sparse)] + [n for segment in sparse for n in segment]
    block = "".join(f"{n}\n" for n in numbers).encode().ljust(512, b"\0")
    member, _ = info("GNUSparseFile.0/f", data=block + b"x" * 1024,
                     pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "f",
                          "GNU.sparse.realsize": str(1 << 20)})
    archive = tmp_path / "map.tar.zst"
    archive.write_bytes(zst(tar_of((member, block + b"x" * 1024))))
    with pytest.raises(UploadRejected, match=f"^upload rejected: 'f': sparse map .*{reason}"):
        bake_archive(store, archive, base=base, parent=None, description="", limits=LIMITS)


def test_sparse_member_with_8_gib_of_data_keeps_its_apparent_size() -> None:
    """Past 8 GiB of stored data the size goes in a pax record; it must follow GNU.sparse.realsize (tarfile
    takes the last one as .size and finds the next header from it), and the scanner reads the real size from
    the GNU record. Only the headers are made here: 9 GiB of data would not fit a test."""
    import io

    from layerboot.overlays.tarscan import scan_tar
    from layerboot.overlays.tarwriter import Attrs, TarWriter, sparse_map_block

    class HeaderOnly:
        def read(self, size: int = -1) -> bytes:
            raise EOFError("headers only")

    out = io.BytesIO()
    segments, realsize = [(0, 9 << 30)], 20 << 30
    with pytest.raises(EOFError):
        TarWriter(out).sparse("big.img", Attrs(0o644, 0, 0, 0), realsize, segments, HeaderOnly())
    header = out.getvalue()
    assert header.index(b" GNU.sparse.realsize=") < header.index(b" size=")
    stream = io.BytesIO(header + sparse_map_block(realsize, segments + [(realsize, 0)]) + bytes(1 << 20))
    member, _ = next(scan_tar(stream, BakeLimits(max_bytes=1 << 40, max_files=10, special_files="reject")))
    assert (member.path, member.size, member.sparse) == ("big.img", realsize, ((0, 9 << 30),))


# -- squash --------------------------------------------------------------------------------------------------

def add_then_remove(first: bool):
    def change(m: Path) -> None:
        if first:
            (m / "newd/sub").mkdir(parents=True)
            for name in ("gone", "stays", "sub/gone"):
                (m / "newd" / name).write_text(name + "\n")
            (m / "srv/fresh").write_text("fresh\n")
        else:
            (m / "newd/gone").unlink()                 # whiteouts in a directory only the squashed range holds
            (m / "newd/sub/gone").unlink()
            (m / "srv/fresh").unlink()                 # ... in a directory the base has, hiding nothing there
            (m / "etc/motd").unlink()                  # a whiteout that hides a base file: must stay
    return change


@pytest.mark.root
def test_squash_drops_whiteouts_that_hide_nothing(store: Store, base: str, tmp_path: Path) -> None:
    chain = [base]
    for index, first in enumerate((True, False)):
        chain.append(layer_from_changes(store, chain, tmp_path / f"node{index}", add_then_remove(first)))
    expected = view(store, chain, tmp_path / "before")
    assert "newd/gone" not in expected.entries and "newd/stays" in expected.entries
    squashed = squash_layers(store, chain[1:], below=chain[:1], description="")
    after = view(store, [base, squashed.digest], tmp_path / "after")
    assert tree_differences(expected, after) == []
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(squashed), tmp_path / "layer")
        assert sorted(os.listdir(root / "newd")) == ["stays", "sub"] and os.listdir(root / "newd/sub") == []
        assert "fresh" not in os.listdir(root / "srv")
        motd = os.lstat(root / "etc/motd")
        assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0, "the whiteout hiding the base file stays"


@pytest.mark.root
def test_treecompare_reports_whiteouts_overlayfs_lists_but_cannot_find(tmp_path: Path) -> None:
    """The defect the squash fix removes, made on purpose with real overlayfs: a whiteout in a directory only
    the upper lower layer holds is listed by readdir, unknown to lookup; treecompare must say so."""
    with tmpfs_upper(tmp_path / "lowers") as lowers, contextlib.ExitStack() as stack:
        (lowers / "base/etc").mkdir(parents=True)
        (lowers / "top/only-here").mkdir(parents=True)
        (lowers / "top/only-here/real").write_text("real\n")
        os.mknod(lowers / "top/only-here/ghost", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        (tmp_path / "merged").mkdir()
        merged = mount(stack, "overlay", tmp_path / "merged", fstype="overlay",
                       options=f"lowerdir={lowers / 'top'}:{lowers / 'base'}")
        assert sorted(os.listdir(merged / "only-here")) == ["ghost", "real"]
        assert not os.path.lexists(merged / "only-here/ghost")
        tree = snapshot(merged)
    assert tree.entries["only-here/ghost"].kind == "listed but not found"
    clean = {k: v for k, v in tree.entries.items() if k != "only-here/ghost"}
    assert tree_differences(type(tree)(clean, tree.links), tree) == ["unexpected: 'only-here/ghost' "
                                                                     "(listed but not found)"]


def sparse_then_setuid(m: Path) -> None:
    """A file of two holes and a tail that tar2sqfs packs into a fragment, followed in the inode table by a
    setuid file: Linux 6.16+'s squashfs SEEK_DATA reads that inode's mode as a block size and fails with EIO."""
    block = 128 << 10
    with open(m / "srv/a-sparse", "wb") as handle:
        handle.truncate(2 * block + 100)
        handle.seek(2 * block)
        handle.write(b"t" * 100)
    (m / "srv/b-setuid").write_text("x\n")
    os.chmod(m / "srv/b-setuid", 0o4755)
    with open(m / "srv/c-sparse", "wb") as handle:
        handle.write(b"d" * 1000)
        handle.truncate(3 * block + 77)
        handle.seek(3 * block)
        handle.write(b"u" * 77)
    (m / "srv/d-sticky").mkdir()
    os.chmod(m / "srv/d-sticky", 0o1777)


@pytest.mark.root
def test_squash_reads_sparse_files_when_squashfs_seek_fails(store: Store, base: str, tmp_path: Path) -> None:
    chain = [base]
    for index, change in enumerate((sparse_then_setuid, lambda m: (m / "etc/more").write_text("more\n"))):
        chain.append(layer_from_changes(store, chain, tmp_path / f"node{index}", change))
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(chain[1]), tmp_path / "layer1")
        for name in ("a-sparse", "c-sparse"):
            fd = os.open(root / "srv" / name, os.O_RDONLY)
            try:
                try:
                    os.lseek(fd, 0, os.SEEK_DATA)
                    os.lseek(fd, 0, os.SEEK_HOLE)
                    seek_failed = False
                except OSError as err:
                    assert err.errno == errno.EIO
                    seek_failed = True
                size = os.fstat(fd).st_size
                segments = data_segments(fd, size, os.fstat(fd).st_blocks, name)
                if seek_failed:
                    assert segments == [(0, size)], "a failing seek means a plain copy"
                data = bytearray(size)
                for offset, length in segments:
                    data[offset:offset + length] = os.pread(fd, length, offset)
                assert bytes(data) == (root / "srv" / name).read_bytes()
            finally:
                os.close(fd)
    expected = view(store, chain, tmp_path / "before")
    squashed = squash_layers(store, chain[1:], below=chain[:1], description="")
    assert tree_differences(expected, view(store, [base, squashed.digest], tmp_path / "after")) == []


@pytest.mark.root
def test_squash_keeps_devices_setuid_and_caps(store: Store, base: str, tmp_path: Path) -> None:
    """Squash works on accepted layers: what a profile allowed (or the admin imported) is kept as is."""
    def privileged(m: Path) -> None:
        os.mknod(m / "srv/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(m / "srv/disk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
        (m / "srv/su").write_text("su\n")
        os.chmod(m / "srv/su", 0o4755)

    chain = [base]
    for index, change in enumerate((privileged, lambda m: (m / "etc/more").write_text("more\n"))):
        chain.append(layer_from_changes(store, chain, tmp_path / f"node{index}", change))
    expected = view(store, chain, tmp_path / "before")
    squashed = squash_layers(store, chain[1:], below=chain[:1], description="")
    assert tree_differences(expected, view(store, [base, squashed.digest], tmp_path / "after")) == []
    assert expected.entries["srv/disk"].kind == "blockdev" and expected.entries["srv/null"].content == "1:3"


# -- siblings: names, numbers, times --------------------------------------------------------------------------

def long_names_and_numbers(m: Path) -> None:
    deep = m / "/".join(["d" * 200] * 19)                                  # a 3.8 kB path
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("leaf\n")
    os.symlink("t" * 4000, m / "etc/long-target")                        # a 4000-byte link target
    os.symlink("ü" * 1500, m / "etc/utf8-target")
    os.symlink(b"latin1-\xe9-target", os.fsencode(m / "etc") + b"/latin1-\xe9-link")    # needs hdrcharset=BINARY
    os.link(m / "etc/hostname", os.fsencode(m / "etc") + b"/hard-\xff")
    (m / "etc/newline\nname").write_text("nl\n")
    (m / "etc/huge-ids").write_text("ids\n")
    os.chown(m / "etc/huge-ids", 4_000_000_000, 4_294_967_294)           # beyond ustar's 8-digit fields
    (m / "etc/times-2100").write_text("t\n")
    os.utime(m / "etc/times-2100", (4_102_444_800.75, 4_102_444_800.75))  # after 2038, before 2106
    os.utime(m / "etc/motd", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))   # sub-second
    os.mkfifo(m / "etc/fifo")
    os.link(m / "etc/fifo", m / "etc/fifo.hard")
    os.setxattr(m / "etc/huge-ids", "security.selinux", b"system_u:object_r:etc_t:s0\0")


@pytest.mark.root
def test_long_names_big_numbers_and_late_mtimes_round_trip(store: Store, base: str, tmp_path: Path) -> None:
    problems, _, layer = roundtrip(store, base, tmp_path, long_names_and_numbers)
    assert problems == []
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(layer), tmp_path / "layer")
        st = os.stat(root / "etc/huge-ids")
        assert (st.st_uid, st.st_gid) == (4_000_000_000, 4_294_967_294)
        assert os.stat(root / "etc/times-2100").st_mtime == 4_102_444_800


@pytest.mark.root
def test_mtimes_squashfs_cannot_store_are_clamped_with_a_warning(store: Store, base: str, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with tmpfs_upper(tmp_path / "upper") as upper:
        for name, when in (("before-1970", -86400), ("after-2106", 2 ** 32 + 5)):
            (upper / name).write_text(name)
            os.utime(upper / name, (when, when))
        with caplog.at_level("WARNING", logger="layerboot.capture"):
            stats = capture(upper, tmp_path / "t.tar.zst")
    assert stats.warnings == 2
    assert "'before-1970': mtime -86400 is outside what squashfs stores (1970 to 2106); the layer gets 0" in caplog.text
    layer = bake_archive(store, tmp_path / "t.tar.zst", base=base, parent=None, description="", limits=LIMITS)
    with contextlib.ExitStack() as stack:
        root = mount_squashfs(stack, store.path(layer), tmp_path / "layer")
        assert os.stat(root / "before-1970").st_mtime == 0
        assert os.stat(root / "after-2106").st_mtime == 2 ** 32 - 1


@pytest.mark.root
def test_acls_are_refused_by_name(tmp_path: Path) -> None:
    with tmpfs_upper(tmp_path / "upper") as upper:
        (upper / "shared").write_text("s\n")
        run(["setfacl", "-m", "u:1234:r", upper / "shared"])
        with pytest.raises(LayerbootError, match=r"^cannot capture 'shared': system.posix_acl_access: squashfs "
                                                 r"cannot store POSIX ACLs \(remove them with 'setfacl -b'\)"):
            capture(upper, tmp_path / "acl.tar.zst")


@pytest.mark.root
def test_files_that_vanish_or_change_during_capture(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A live node keeps writing: a file deleted after its directory was listed is left out, a file appended
    to while it is read is kept as read (its size when capture reached it) and named in a warning."""
    with tmpfs_upper(tmp_path / "upper") as upper:
        (upper / "log").mkdir()
        first = os.urandom(48 << 20)
        (upper / "log/a-grows").write_bytes(first)
        (upper / "log/b-vanishes").write_text("tmp\n")
        (upper / "log/c-stays").write_text("last\n")
        partial = tmp_path / ".live.tar.zst.partial"
        done = threading.Event()

        def meddle() -> None:          # once capture is well into a-grows: delete b, append to a
            while not done.is_set() and (not partial.exists() or partial.stat().st_size < 8 << 20):
                time.sleep(0.001)
            (upper / "log/b-vanishes").unlink()
            with open(upper / "log/a-grows", "ab") as handle:
                handle.write(b"appended during the capture\n")

        helper = threading.Thread(target=meddle)
        helper.start()
        try:
            with caplog.at_level("WARNING", logger="layerboot.capture"):
                stats = capture(upper, tmp_path / "live.tar.zst", threads=1)
        finally:
            done.set()
            helper.join()
    assert stats.warnings == 2, caplog.text
    assert "'log/a-grows' changed while being captured; kept as read" in caplog.text
    assert "'log/b-vanishes' vanished while being captured; left out" in caplog.text
    with untar(tmp_path / "live.tar.zst") as tar:
        assert tar.getnames() == [".", "log", "log/a-grows", "log/c-stays"]
        assert tar.extractfile("log/a-grows").read() == first
