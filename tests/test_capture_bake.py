"""Capture + bake, checked against the kernel: changes made through a real overlayfs mount (lower = base
squashfs, upper = tmpfs) must look exactly the same when the baked layer is stacked on the base instead."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from layerboot.errors import LayerbootError
from layerboot.overlays.bake import BakeLimits, bake_archive
from layerboot.overlays.capture import capture
from layerboot.overlays.content import CLASSES
from layerboot.overlays.chain import mount, mount_chain, mount_overlay, mount_squashfs
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.tools.cli import main
from treecompare import snapshot, tree_differences

LIMITS = BakeLimits(max_bytes=1 << 34, max_files=100_000, special_files="keep", allow=frozenset(CLASSES))
CAP = bytes.fromhex("0100000200200000000000000000000000000000")   # cap_net_raw+ep


def build_base(root: Path) -> Path:
    """A base tree with owners, setuid, symlinks, a hard-linked pair, xattrs, a sparse file, deep dirs."""
    files = {
        "etc/hostname": "base\n", "etc/motd": "welcome\n", "etc/old.conf": "old\n",
        "usr/bin/tool": "#!/bin/sh\necho tool\n", "usr/share/doc/a/README": "a\n", "usr/share/doc/b/README": "b\n",
        "var/lib/app/state": "1\n", "var/lib/app/cache/x": "x\n", "opt/moveme/inner/f": "inner\n",
        "opt/wipe/keep": "k\n", "srv/data.bin": "d" * 5000, "home/user/.profile": "export A=1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.chown(root / "home/user", 1000, 1000)
    os.chown(root / "home/user/.profile", 1000, 1000)
    os.symlink("hostname", root / "etc/hostname.link")
    os.symlink("/usr/bin/tool", root / "usr/bin/tool-abs")
    os.link(root / "srv/data.bin", root / "srv/data.hard")
    os.setxattr(root / "usr/bin/tool", "security.capability", CAP)
    os.setxattr(root / "etc/motd", "user.origin", b"base")
    with open(root / "srv/sparse.img", "wb") as handle:
        handle.truncate(8 << 20)
        handle.seek(4 << 20)
        handle.write(b"middle")
    return root


def rich_changes(m: Path) -> None:
    """Every case capture must keep, applied through the merged view."""
    (m / "etc/motd").write_text("changed on the node\n")                          # modify (copy-up)
    (m / "etc/new.conf").write_text("new\n")                                      # create
    (m / "etc/old.conf").unlink()                                                 # whiteout
    shutil.rmtree(m / "usr/share/doc/a")                                          # whiteout of a dir
    shutil.rmtree(m / "var/lib/app")                                              # rm -rf then recreate:
    (m / "var/lib/app").mkdir()                                                   # -> opaque dir
    (m / "var/lib/app/fresh").write_text("fresh\n")
    shutil.copytree(m / "opt/moveme", m / "opt/moved", symlinks=True)             # mv of a lower dir
    shutil.rmtree(m / "opt/moveme")                                               # (redirect_dir=off)
    os.rename(m / "etc/hostname", m / "etc/hostname.renamed")                     # rename a lower file
    (m / "newdir/sub").mkdir(parents=True)                                        # rename an upper dir
    (m / "newdir/sub/f").write_text("f\n")
    os.rename(m / "newdir", m / "newdir2")
    os.chown(m / "etc/new.conf", 1234, 5678)                                      # owner (clears setuid)
    os.chmod(m / "opt/wipe", 0o1777)                                              # sticky dir (copy-up)
    os.chown(m / "srv/data.bin", 42, 43)                                          # chown a lower file
    os.setxattr(m / "etc/new.conf", "security.capability", CAP)                   # setcap
    os.setxattr(m / "etc/new.conf", "user.note", b"\x00\xffbinary")
    os.chmod(m / "etc/new.conf", 0o6750)                                          # setuid + setgid
    os.setxattr(m / "etc/motd", "trusted.layerboot-test", b"t")
    os.link(m / "etc/new.conf", m / "etc/new.hard")                               # hard link (upper)
    os.link(m / "usr/share/doc/b/README", m / "usr/share/doc/b/README.hard")      # hard link to a lower file
    os.symlink("../etc/new.conf", m / "opt/rel-link")                             # symlinks
    os.symlink("/nowhere/at/all", m / "opt/dangling")
    (m / "etc/hostname.link").unlink()
    os.symlink("motd", m / "etc/hostname.link")                                   # replace a lower symlink
    (m / "home/user/.profile").unlink()
    (m / "home/user/.profile").mkdir()                                            # file -> dir
    (m / "opt/wipe/keep").unlink()
    shutil.rmtree(m / "usr/share/doc/b")
    (m / "usr/share/doc/b").write_text("dir -> file\n")                          # dir -> file
    with open(m / "srv/sparse.new", "wb") as handle:                             # sparse
        handle.truncate(64 << 20)
        handle.seek(32 << 20)
        handle.write(b"data in the middle")
    with open(m / "srv/sparse.img", "r+b") as handle:                            # sparse copy-up + change
        handle.seek(6 << 20)
        handle.write(b"more")
    for name in ("ünïcødé ✓", "with space", "tab\tand\nnewline", "x" * 255):       # names
        (m / "opt" / name).write_text(name + "\n")
    os.close(os.open(os.fsencode(m / "opt") + b"/latin1-\xe9", os.O_CREAT | os.O_WRONLY, 0o644))
    deep = m / "deep" / ("d" * 90) / ("e" * 90) / ("f" * 90)
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep\n")
    os.mkfifo(m / "srv/fifo")
    (m / "srv/empty").touch()
    os.chmod(m / "srv/empty", 0)
    os.utime(m / "etc/new.conf", (1_000_000_000, 1_000_000_000))
    (m / "etc/sub/private").mkdir(parents=True)
    os.chmod(m / "etc/sub/private", 0o700)


@contextlib.contextmanager
def node_overlay(base_image: Path, work: Path):
    """Mount lower = base squashfs, upper = tmpfs; yield (merged, upper, close_overlay)."""
    with contextlib.ExitStack() as outer:
        lower = mount_squashfs(outer, base_image, work / "base")
        (work / "rw").mkdir(parents=True)
        mount(outer, "tmpfs", work / "rw", fstype="tmpfs", options="mode=0755")
        (work / "rw/upper").mkdir()
        (work / "rw/work").mkdir()
        inner = contextlib.ExitStack()
        outer.callback(inner.close)
        merged = mount_overlay(inner, [lower], work / "merged", upper=work / "rw/upper", work=work / "rw/work")
        yield merged, work / "rw/upper", inner.close


def roundtrip(store: Store, base_digest: str, work: Path, change: Callable[[Path], None],
              limits: BakeLimits = LIMITS) -> tuple[list[str], Path, str]:
    """Apply ``change`` through overlayfs, capture, bake, stack; return the differences, archive, layer."""
    base_image = store.path(base_digest)
    archive = work / "changes.tar.zst"
    with node_overlay(base_image, work / "node") as (merged, upper, close_overlay):
        change(merged)
        before = snapshot(merged, upper=upper)
        close_overlay()
        capture(upper, archive)
    layer = bake_archive(store, archive, base=base_digest, parent=None, description="test", limits=limits)
    with contextlib.ExitStack() as stack:
        merged = mount_chain(stack, [base_image, store.path(layer)], work / "after")
        after = snapshot(merged)
    return tree_differences(before, after), archive, layer.digest


def untar(archive: Path) -> tarfile.TarFile:
    """Open a capture with Python's tarfile (an independent reader)."""
    data = zstandard.ZstdDecompressor().stream_reader(archive.read_bytes()).read()
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape")


@pytest.fixture
def base(store: Store, tmp_path: Path) -> str:
    tree = build_base(tmp_path / "base-tree")
    digest = store.import_tree(tree, kind="base", description="rich base").digest
    shutil.rmtree(tree)
    return digest


@pytest.mark.root
def test_rich_scenario_is_identical_through_the_kernel(store: Store, base: str, tmp_path: Path) -> None:
    problems, archive, _ = roundtrip(store, base, tmp_path, rich_changes)
    assert problems == []
    assert archive.stat().st_size < 1 << 20, "sparse holes are not sent (64 MiB sparse file)"


@pytest.mark.root
def test_opaque_and_whiteouts_really_hide_the_base(store: Store, base: str, tmp_path: Path) -> None:
    """Guard against a vacuous comparison: the stacked view hides what the changes removed."""
    _, _, layer = roundtrip(store, base, tmp_path, rich_changes)
    with contextlib.ExitStack() as stack:
        merged = mount_chain(stack, [store.path(base), store.path(layer)], tmp_path / "check")
        assert not (merged / "etc/old.conf").exists()
        assert sorted(os.listdir(merged / "var/lib/app")) == ["fresh"]
        assert (merged / "opt/moved/inner/f").read_text() == "inner\n" and not (merged / "opt/moveme").exists()
        assert os.getxattr(merged / "etc/new.conf", "security.capability") == CAP
        assert stat.S_IMODE(os.stat(merged / "etc/new.conf").st_mode) == 0o6750


@pytest.mark.root
def test_capture_refuses_redirect_dir_renames(store: Store, base: str, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "opt/moved").mkdir(parents=True)
    os.setxattr(upper / "opt/moved", "trusted.overlay.redirect", b"/opt/moveme")
    with pytest.raises(LayerbootError, match="redirect_dir=off"):
        capture(upper, tmp_path / "x.tar.zst")
    assert not (tmp_path / "x.tar.zst").exists() and not list(tmp_path.glob(".x.tar.zst*"))


@pytest.mark.root
def test_userxattr_opaque_becomes_the_trusted_marker(store: Store, base: str, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "var/lib/app").mkdir(parents=True)
    (upper / "var/lib/app/only").write_text("only\n")
    os.setxattr(upper / "var/lib/app", "user.overlay.opaque", b"y")
    os.setxattr(upper / "var/lib/app", "trusted.overlay.origin", b"\x00bookkeeping")
    capture(upper, tmp_path / "u.tar.zst")
    layer = bake_archive(store, tmp_path / "u.tar.zst", base=base, parent=None, description="", limits=LIMITS)
    with contextlib.ExitStack() as stack:
        merged = mount_chain(stack, [store.path(base), store.path(layer)], tmp_path / "m")
        assert os.listdir(merged / "var/lib/app") == ["only"]
        layer_root = tmp_path / "m/layers/1"
        assert os.getxattr(layer_root / "var/lib/app", "trusted.overlay.opaque") == b"y"
        assert "trusted.overlay.origin" not in os.listxattr(layer_root / "var/lib/app")


@pytest.mark.root
def test_cli_capture_then_bake_into_a_profile(store: Store, base: str, tmp_path: Path, profiles) -> None:
    profiles.create("web", base)
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/motd").write_text("from the cli\n")
    archive = tmp_path / "c.tar.zst"
    assert main(["--store", str(store.paths.root), "capture", "--upper", str(upper), "-o", str(archive)]) == 0
    assert main(["--store", str(store.paths.root), "bake", str(archive), "--profile", "web"]) == 0
    gen = profiles.current("web")
    assert gen.number == 2 and len(gen.layers) == 2
    layer = store.get(gen.layers[1])
    assert (layer.kind, layer.base, layer.parent) == ("overlay", base, base)
    with contextlib.ExitStack() as stack:
        merged = mount_chain(stack, [store.path(d) for d in gen.layers], tmp_path / "m")
        assert (merged / "etc/motd").read_text() == "from the cli\n"
        assert (merged / "etc/hostname").read_text() == "base\n"


# -- property test: random operation sequences --------------------------------------------------------------

NAMES = ["a", "b", "c", "ü"]
DIRS = ["", "etc", "var/lib/app", "usr/share/doc", "newd"]
paths_st = st.builds(lambda d, n: f"{d}/{n}" if d else n, st.sampled_from(DIRS), st.sampled_from(NAMES + ["README"]))
xattr_names_st = st.builds(
    lambda prefix, rest: prefix + os.fsdecode(rest), st.sampled_from(["user.", "trusted.", "security."]),
    st.one_of(st.sampled_from([b"a=b", b"%", b"%3D", b"%25=", b"\xe9", b"=\xff%"]),
              st.binary(min_size=1, max_size=30).filter(lambda b: b"\0" not in b)))
ops_st = st.lists(st.one_of(
    st.tuples(st.just("write"), paths_st, st.binary(max_size=300)),
    st.tuples(st.just("append"), paths_st, st.binary(min_size=1, max_size=50)),
    st.tuples(st.just("rm"), st.one_of(paths_st, st.sampled_from(DIRS[1:]))),
    st.tuples(st.just("mkdir"), paths_st),
    st.tuples(st.just("symlink"), paths_st, st.sampled_from(["a", "/etc/motd", "../x"])),
    st.tuples(st.just("hardlink"), paths_st, paths_st),
    st.tuples(st.just("chmod"), paths_st, st.sampled_from([0o644, 0o600, 0o4755, 0o1777, 0o700])),
    st.tuples(st.just("chown"), paths_st, st.integers(0, 70000)),
    st.tuples(st.just("xattr"), paths_st, st.binary(max_size=20)),
    st.tuples(st.just("mv"), st.one_of(paths_st, st.sampled_from(DIRS[1:])), paths_st),
    # what used to break or silently change data: odd xattr names, big xattrs, capabilities, devices, sparse
    # files (incl. tails tar2sqfs packs into fragments), times squashfs can store, long link targets
    st.tuples(st.just("xattr-name"), paths_st, xattr_names_st, st.binary(max_size=3000)),
    st.tuples(st.just("setcap"), paths_st),
    st.tuples(st.just("mknod"), paths_st, st.sampled_from([stat.S_IFCHR, stat.S_IFBLK]), st.integers(1, 300),
              st.integers(0, 1 << 19)),
    st.tuples(st.just("sparse"), paths_st, st.integers(1, 3 << 18), st.integers(0, 3 << 18), st.binary(max_size=5000)),
    st.tuples(st.just("mtime"), paths_st, st.floats(0, 2 ** 32 - 1, allow_nan=False)),
    st.tuples(st.just("longlink"), paths_st, st.integers(100, 4000)),
), max_size=12)


def apply_op(m: Path, op: tuple) -> None:
    kind, path = op[0], m / op[1]
    try:
        if kind == "write":
            path.write_bytes(op[2])
        elif kind == "append":
            with open(path, "ab") as handle:
                handle.write(op[2])
        elif kind == "rm":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        elif kind == "mkdir":
            path.mkdir()
        elif kind == "symlink":
            os.symlink(op[2], path)
        elif kind == "hardlink":
            os.link(path, m / op[2], follow_symlinks=False)
        elif kind == "chmod":
            if not path.is_symlink():                                                # Linux cannot chmod a symlink
                os.chmod(path, op[2])
        elif kind == "chown":
            os.chown(path, op[2], op[2] // 2, follow_symlinks=False)
        elif kind == "xattr":
            os.setxattr(path, "user.prop", op[2], follow_symlinks=False)
        elif kind == "xattr-name":
            if op[2] != "security.capability" and not op[2].startswith("trusted.overlay."):
                os.setxattr(path, op[2], op[3], follow_symlinks=False)
        elif kind == "setcap":
            os.setxattr(path, "security.capability", CAP)
        elif kind == "mknod":
            os.mknod(path, op[2] | 0o640, os.makedev(op[3], op[4]))
        elif kind == "sparse":
            with open(path, "wb") as handle:
                handle.truncate(op[2])
                handle.seek(op[3])
                handle.write(op[4])
        elif kind == "mtime":
            os.utime(path, (op[2], op[2]), follow_symlinks=False)
        elif kind == "longlink":
            os.symlink("l" * op[2], path)
        elif kind == "mv":
            target = m / op[2]
            try:
                os.rename(path, target)
            except OSError as err:
                if err.errno != 18 or not path.is_dir():                           # EXDEV: what mv does
                    raise
                shutil.copytree(path, target, symlinks=True)
                shutil.rmtree(path)
    except OSError:
        pass                                                                       # invalid op: skip it


@pytest.mark.root
def test_random_operation_sequences_survive_capture_and_bake(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("prop")
    store = Store(Paths(root / "store"))
    store.init()
    tree = root / "base"
    for rel in ("etc/motd", "etc/a", "var/lib/app/a", "var/lib/app/b", "usr/share/doc/README", "b"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel + "\n")
    os.link(tree / "etc/a", tree / "etc/c")
    base = store.import_tree(tree, kind="base").digest

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ops=ops_st)
    @example(ops=[("symlink", "usr/share/doc/a", "a"), ("hardlink", "usr/share/doc/a", "a")])  # linked symlinks
    def check(ops: list[tuple]) -> None:
        work = Path(tempfile.mkdtemp(dir=root))
        try:
            problems, _, _ = roundtrip(store, base, work, lambda m: [apply_op(m, op) for op in ops])
            assert problems == [], ops
        finally:
            shutil.rmtree(work)

    check()


# -- the tar itself -------------------------------------------------------------------------------------------

def test_plain_headers_match_tarfile_byte_for_byte() -> None:
    """Members that need no pax record get exactly the ustar header tarfile writes."""
    from layerboot.overlays.tarwriter import Attrs, TarWriter
    attrs = Attrs(mode=0o4755, uid=1000, gid=5, mtime=1_234_567_890)
    cases = ((tarfile.REGTYPE, "etc/passwd", ""), (tarfile.DIRTYPE, "d" * 99, ""), (tarfile.SYMTYPE, "a/b", "/x/y"),
             (tarfile.CHRTYPE, "wo", ""), (tarfile.LNKTYPE, "h", "etc/passwd"), (tarfile.FIFOTYPE, "f" * 100, ""))
    for kind, name, link in cases:
        out = io.BytesIO()
        writer = TarWriter(out)
        if kind == tarfile.REGTYPE:
            writer.regular(name, attrs, 77, io.BytesIO(b"x" * 77))
        elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            (writer.symlink if kind == tarfile.SYMTYPE else writer.hardlink)(name, attrs, link)
        else:
            {tarfile.DIRTYPE: writer.directory, tarfile.CHRTYPE: writer.whiteout, tarfile.FIFOTYPE: writer.fifo}[kind](
                name, attrs)
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, 0o4755, 1000, 5, 1_234_567_890
        info.size, info.linkname, info.uname, info.gname = (77 if kind == tarfile.REGTYPE else 0), link, "", ""
        assert out.getvalue()[:512] == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), (kind, name)
    out = io.BytesIO()
    TarWriter(out).directory("ü" * 3, attrs)
    assert out.getvalue()[156:157] == tarfile.XHDTYPE, "non-ASCII names need a pax record"


@pytest.mark.root
def test_gnu_tar_extracts_a_capture_to_the_same_tree(tmp_path: Path) -> None:
    from layerboot.run import run
    source = build_base(tmp_path / "src")
    os.mknod(source / "etc/whiteout", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.symlink("x" * 150, source / "opt-long-link-target")
    capture(source, tmp_path / "c.tar.zst")
    dest = tmp_path / "dest"
    dest.mkdir()
    run(["tar", "-I", "zstd", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", tmp_path / "c.tar.zst",
         "-C", dest])
    assert tree_differences(snapshot(source), snapshot(dest)) == []


@pytest.mark.root
def test_capture_refuses_sockets_unless_told_and_keeps_devices(tmp_path: Path) -> None:
    import socket
    upper = tmp_path / "upper"
    (upper / "run").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(upper / "run/daemon.sock"))
        with pytest.raises(LayerbootError, match="cannot capture socket 'run/daemon.sock'"):
            capture(upper, tmp_path / "a.tar.zst")
        capture(upper, tmp_path / "a.tar.zst", skip_sockets=True)
    (upper / "run/daemon.sock").unlink()
    os.mknod(upper / "run/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    capture(upper, tmp_path / "b.tar.zst")                     # devices are carried; the server's policy decides
    with untar(tmp_path / "b.tar.zst") as tar:
        null = tar.getmember("run/null")
        assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)


def test_cli_capture_to_stdout_is_a_bakeable_stream(store: Store, base: str, tmp_path: Path,
                                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/motd").write_text("piped\n")
    assert main(["--store", str(store.paths.root), "capture", "--upper", str(upper), "-o", "-"]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out[:4] == b"\x28\xb5\x2f\xfd" and b"captured 3 entries" in captured.err
    (tmp_path / "piped.tar.zst").write_bytes(captured.out)
    layer = bake_archive(store, tmp_path / "piped.tar.zst", base=base, parent=None, description="", limits=LIMITS)
    assert store.get(layer.digest).kind == "overlay"
