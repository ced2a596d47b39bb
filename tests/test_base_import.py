"""Base import: live ISOs built here with xorriso (Debian-live and Fedora-LiveOS layouts, malformed ones) and a
real debootstrap of Debian bookworm whose node-side client is run inside the image.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from layerboot.build.debootstrap import DebootstrapSpec, host_mirror
from layerboot.overlays.store import Store
from layerboot.run import run, tool_path

from debian_base import debian_base

needs_iso_tools = pytest.mark.skipif(not (tool_path("xorriso") and tool_path("mksquashfs")),
                                     reason="needs xorriso and squashfs-tools")


def cli(store: Store, *args: str, check: bool = True):  # noqa: ANN201
    result = run([sys.executable, "-m", "layerboot", "-s", str(store.paths.root), *args], check=False, timeout=1800)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def make_iso(tmp: Path, name: str, files: dict[str, bytes]) -> Path:
    tree = write_files(tmp / f"{name}-tree", files)
    iso = tmp / f"{name}.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", name.upper()[:16], "-o", iso, tree])
    return iso


def squashfs_of(tmp: Path, name: str, files: dict[str, bytes]) -> bytes:
    tree = write_files(tmp / f"{name}-root", files)
    image = tmp / f"{name}.squashfs"
    run(["mksquashfs", tree, image, "-noappend", "-quiet", "-no-progress", "-comp", "zstd", "-all-root"])
    return image.read_bytes()


def squashfs_listing(path: Path) -> set[str]:
    return {line.strip() for line in run(["unsquashfs", "-l", "-d", "", path]).text.splitlines() if line.strip()}


def store_is_empty(store: Store) -> bool:
    return not any(store.paths.objects.iterdir()) and not any(store.paths.meta.iterdir()) \
        and not any(store.paths.tmp.iterdir())


ROOTFS = {"etc/os-release": b'PRETTY_NAME="Test Live"\n', "usr/bin/hello": b"#!/bin/sh\necho hello\n"}
KERNEL = b"MZ fake kernel " + os.urandom(4096)
INITRD = b"\x1f\x8b fake initrd " + os.urandom(2048)


@needs_iso_tools
def test_debian_live_iso_becomes_base_kernel_initrd(store: Store, tmp_path: Path) -> None:
    squashfs = squashfs_of(tmp_path, "debian", ROOTFS)
    iso = make_iso(tmp_path, "debianlive", {
        "live/filesystem.squashfs": squashfs,
        "live/vmlinuz-6.1.0-99-amd64": KERNEL,
        "live/initrd.img-6.1.0-99-amd64": INITRD,
        "isolinux/isolinux.cfg": b"default live\n",
        "boot/grub/grub.cfg": b"menuentry live {}\n",
        "install/vmlinuz": b"installer kernel, not the live one",
        "install/initrd.gz": b"installer initrd",
    })
    out = cli(store, "base", "import-iso", str(iso)).text
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    assert lines["base"][-1] == "/live/filesystem.squashfs"
    assert lines["kernel"][-1] == "/live/vmlinuz-6.1.0-99-amd64"
    assert lines["initrd"][-1] == "/live/initrd.img-6.1.0-99-amd64"
    base, kernel, initrd = (store.get(lines[k][1]) for k in ("base", "kernel", "initrd"))
    assert (base.kind, kernel.kind, initrd.kind) == ("base", "kernel", "initrd")
    assert store.path(base).read_bytes() == squashfs       # stored as it was, not repacked
    assert store.path(kernel).read_bytes() == KERNEL
    assert store.path(initrd).read_bytes() == INITRD
    assert store.fsck() == []
    assert not any(store.paths.tmp.iterdir())
    # importing the same ISO again changes nothing
    assert cli(store, "base", "import-iso", str(iso)).text == out


@needs_iso_tools
@pytest.mark.root
def test_fedora_liveos_with_ext4_rootfs_is_repacked(store: Store, tmp_path: Path) -> None:
    tree = write_files(tmp_path / "fedora-rootfs", ROOTFS)
    ext4 = tmp_path / "rootfs.img"
    run(["mkfs.ext4", "-q", "-F", "-L", "Fedora-Live", "-d", tree, ext4, "16M"])
    squashfs = squashfs_of(tmp_path, "fedora", {"LiveOS/rootfs.img": ext4.read_bytes()})
    iso = make_iso(tmp_path, "fedoralive", {
        "LiveOS/squashfs.img": squashfs,
        "images/pxeboot/vmlinuz": KERNEL,
        "images/pxeboot/initrd.img": INITRD,
        "isolinux/vmlinuz": KERNEL,
        "isolinux/initrd.img": INITRD,
        "EFI/BOOT/grub.cfg": b"set default=0\n",
    })
    out = cli(store, "base", "import-iso", str(iso)).text
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    assert "ext4 image repacked" in out
    assert lines["kernel"][-1] == "/images/pxeboot/vmlinuz"
    base = store.get(lines["base"][1])
    listing = squashfs_listing(store.path(base))
    assert {"/etc/os-release", "/usr/bin/hello"} <= listing       # the tree, not the disk image
    assert not any(entry.startswith("/LiveOS") for entry in listing)
    assert store.path(store.get(lines["initrd"][1])).read_bytes() == INITRD
    assert run(["findmnt", "-n", "-o", "TARGET"]).text.count(str(store.paths.tmp)) == 0   # unmounted again
    assert not any(store.paths.tmp.iterdir())


@needs_iso_tools
def test_fedora_liveos_plain_squashfs(store: Store, tmp_path: Path) -> None:
    squashfs = squashfs_of(tmp_path, "fedora-new", ROOTFS)
    iso = make_iso(tmp_path, "fedoranew", {"LiveOS/squashfs.img": squashfs, "images/pxeboot/vmlinuz": KERNEL,
                                           "images/pxeboot/initrd.img": INITRD})
    out = cli(store, "base", "import-iso", str(iso)).text
    base_digest = out.splitlines()[0].split()[1]
    assert store.path(store.get(base_digest)).read_bytes() == squashfs


@needs_iso_tools
@pytest.mark.parametrize("layout", [
    {"casper/filesystem.squashfs": "root", "casper/vmlinuz": "kernel", "casper/initrd": "initrd",
     "casper/filesystem.manifest": "", "boot/grub/x86_64-efi/grub.cfg": ""},                       # Ubuntu
    {"arch/x86_64/airootfs.sfs": "root", "arch/boot/x86_64/vmlinuz-linux": "kernel",
     "arch/boot/x86_64/initramfs-linux-fallback.img": "", "arch/boot/x86_64/initramfs-linux.img": "initrd",
     "arch/boot/intel-ucode.img": ""},                                                               # Arch
], ids=["ubuntu-casper", "arch"])
def test_other_live_layouts(store: Store, tmp_path: Path, layout: dict[str, str]) -> None:
    squashfs = squashfs_of(tmp_path, "other", ROOTFS)
    content = {"root": squashfs, "kernel": KERNEL, "initrd": INITRD}
    iso = make_iso(tmp_path, "other", {path: content.get(role, b"decoy " + path.encode())
                                       for path, role in layout.items()})
    out = cli(store, "base", "import-iso", str(iso)).text
    chosen = {line.split()[0]: line.split()[-1].lstrip("/") for line in out.splitlines()}
    expected = {("base" if role == "root" else role): path for path, role in layout.items() if role}
    assert chosen == expected
    for line in out.splitlines():
        kind, digest = line.split()[:2]
        assert store.path(store.get(digest)).read_bytes() == content["root" if kind == "base" else kind]


@needs_iso_tools
@pytest.mark.parametrize("case", ["garbage", "truncated", "cut-short", "no-squashfs", "fake-squashfs", "no-kernel"])
def test_malformed_iso_is_one_line_and_writes_nothing(store: Store, tmp_path: Path, case: str) -> None:
    good = {"live/filesystem.squashfs": squashfs_of(tmp_path, "ok", ROOTFS), "live/vmlinuz": KERNEL,
            "live/initrd.img": INITRD}
    if case == "garbage":
        iso = tmp_path / "garbage.iso"
        iso.write_bytes(os.urandom(256 * 1024))
        expected = "is not a readable ISO 9660 image"
    elif case == "truncated":
        full = make_iso(tmp_path, "full", good)
        iso = tmp_path / "truncated.iso"
        iso.write_bytes(full.read_bytes()[:40 * 1024])
        expected = "is not a readable ISO 9660 image"
    elif case == "cut-short":       # headers and directories intact, file data missing (an interrupted download)
        full = make_iso(tmp_path, "full", {**good, "live/filesystem.squashfs": squashfs_of(
            tmp_path, "big", {**ROOTFS, "blob": os.urandom(1 << 20)})})
        iso = tmp_path / "cut.iso"
        iso.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
        expected = "is truncated:"
    elif case == "no-squashfs":
        iso = make_iso(tmp_path, "installer", {"install/vmlinuz": KERNEL, "install/initrd.gz": INITRD})
        expected = "no live root filesystem found"
    elif case == "fake-squashfs":
        iso = make_iso(tmp_path, "fake", {**good, "live/filesystem.squashfs": b"not a squashfs at all" * 100})
        expected = "is not a squashfs image (bad magic)"
    else:
        iso = make_iso(tmp_path, "nokernel", {k: v for k, v in good.items() if "vmlinuz" not in k})
        expected = "no kernel (vmlinuz*) found"
    result = cli(store, "base", "import-iso", str(iso), check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.startswith("layerboot: error:") and expected in err, err
    assert "Traceback" not in err
    assert store_is_empty(store)


@needs_iso_tools
def test_explicit_paths_override_the_search(store: Store, tmp_path: Path) -> None:
    other_kernel = b"second kernel " + os.urandom(64)
    iso = make_iso(tmp_path, "two", {"live/filesystem.squashfs": squashfs_of(tmp_path, "two", ROOTFS),
                                     "live/vmlinuz": KERNEL, "live/initrd.img": INITRD,
                                     "alt/vmlinuz-rt": other_kernel})
    out = cli(store, "base", "import-iso", str(iso), "--kernel", "/alt/vmlinuz-rt").text
    kernel = store.get(out.splitlines()[1].split()[1])
    assert store.path(kernel).read_bytes() == other_kernel
    bad = cli(store, "base", "import-iso", str(iso), "--kernel", "/nope", check=False)
    assert bad.returncode == 1 and "--kernel /nope is not a file" in bad.stderr.decode()


# -- debootstrap ------------------------------------------------------------------------------------------------
def test_host_mirror_reads_deb822_and_legacy_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n")
    assert host_mirror(tmp_path) == "http://mirror.example/debian"
    shutil.rmtree(tmp_path / "sources.list.d")
    (tmp_path / "sources.list").write_text("# x\ndeb http://sec.example/debian-security bookworm-security main\n"
                                           "deb [arch=amd64] http://legacy.example/debian bookworm main\n")
    assert host_mirror(tmp_path) == "http://legacy.example/debian"
    (tmp_path / "sources.list").unlink()
    assert host_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_debootstrap_spec_key_depends_on_what_is_downloaded() -> None:
    a = DebootstrapSpec(include=("zstd", "python3"))
    assert a.key == DebootstrapSpec(include=("python3", "zstd", "zstd")).key
    assert a.key != DebootstrapSpec(include=("python3",)).key
    assert a.key != DebootstrapSpec(include=("zstd", "python3"), mirror="http://other/debian").key


def test_debootstrap_refuses_bad_names_before_downloading(store: Store, tmp_path: Path) -> None:
    for args, message in ((["--suite", "Bookworm;rm"], "is not a Debian suite name"),
                          (["--include", "ok,Bad_Name"], "not Debian package names: Bad_Name"),
                          (["--mirror", "deb.debian.org"], "is not an http(s)://"),
                          (["--arch", "AMD;64"], "is not a Debian architecture name")):
        result = cli(store, "base", "debootstrap", "--cache-dir", str(tmp_path / "cache"), *args, check=False)
        assert result.returncode == 1 and message in result.stderr.decode(), result.stderr.decode()
    assert not (tmp_path / "cache").exists()
    assert store_is_empty(store)


@pytest.mark.root
@pytest.mark.skipif(not tool_path("debootstrap"), reason="needs debootstrap")
def test_debootstrap_base_runs_the_node_client(tmp_path: Path) -> None:
    """A real bookworm minbase (downloads cached under /var/cache/layerboot/debootstrap); then, inside the image
    stacked as a node stacks it, the node-side client captures an upper dir."""
    built = debian_base()
    store, layer = built.store, built.layer
    assert layer.kind == "base" and "bookworm" in layer.description
    assert store.fsck() == [] and not any(store.paths.tmp.iterdir())
    listing = squashfs_listing(store.path(layer))
    for path in ("/usr/sbin/layerboot", "/usr/bin/python3", "/usr/sbin/init", "/usr/bin/zstd", "/etc/debian_version",
                 "/usr/lib/python3/dist-packages/layerboot/overlays/capture.py",
                 "/usr/lib/python3/dist-packages/zstandard", "/usr/lib/python3/dist-packages/cryptography",
                 "/usr/bin/mcopy", "/etc/systemd/system/multi-user.target.wants/layerboot-mark-good.service",
                 "/etc/systemd/system/timers.target.wants/layerboot-heartbeat.timer"):
        assert path in listing, path
    assert not any(p.startswith("/var/cache/apt/archives/") and p.endswith(".deb") for p in listing)

    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, merged):
        d.mkdir()
    run(["mount", "-o", "loop,ro", "-t", "squashfs", store.path(layer), lower])
    try:
        run(["mount", "-t", "tmpfs", "tmpfs", merged])
        for d in (upper, work):
            (merged / d.name).mkdir()
        # the node's view: squashfs below, tmpfs upper; then a change and a capture of it, run in the image
        view = tmp_path / "view"
        view.mkdir()
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={merged / 'upper'},workdir={merged / 'work'}", view])
        try:
            (view / "etc/motd").write_text("changed on the node\n")
            (view / "srv").mkdir(exist_ok=True)
            version = run(["chroot", view, "/usr/sbin/layerboot", "--version"]).text
            assert version.startswith("layerboot ")
            # the A/B hook is a unit systemd accepts, enabled, and calls a command the client has
            verify = run(["chroot", view, "systemd-analyze", "verify", "--man=no",
                          "/etc/systemd/system/layerboot-mark-good.service"], check=False)
            assert verify.returncode == 0, verify.stderr.decode()
            assert "mark-good" in run(["chroot", view, "/usr/sbin/layerboot", "mark-good", "--help"]).text
            # the heartbeat timer too, and the agent it starts runs with the image's python3
            verify = run(["chroot", view, "systemd-analyze", "verify", "--man=no",
                          "/etc/systemd/system/layerboot-heartbeat.timer",
                          "/etc/systemd/system/layerboot-heartbeat.service"], check=False)
            assert verify.returncode == 0 and "layerboot-heartbeat" not in verify.stderr.decode(), \
                verify.stderr.decode()
            beat = json.loads(run(["chroot", view, "/usr/bin/python3", "-m", "layerboot", "heartbeat", "--print"]).text)
            assert beat == {"agent": beat["agent"]} and beat["agent"].startswith("layerboot ")   # no /proc here
            run(["mount", "--bind", merged / "upper", view / "srv"])
            try:
                run(["chroot", view, "/usr/sbin/layerboot", "capture", "--upper", "/srv", "-o", "/tmp/change.tar.zst"])
            finally:
                run(["umount", view / "srv"])
            capture = merged / "upper" / "tmp" / "change.tar.zst"
            assert capture.stat().st_size > 0
            names = run(["tar", "--zstd", "-tf", capture]).text.split()
            assert any(name.endswith("etc/motd") for name in names), names
        finally:
            run(["umount", view])
    finally:
        run(["umount", "-R", merged], check=False)
        run(["umount", lower], check=False)
    cache = Path(os.environ.get("LAYERBOOT_DEBOOTSTRAP_CACHE", "/var/cache/layerboot/debootstrap"))
    assert list(cache.glob("bookworm-amd64-*.tgz")), "downloads are cached for the next build"
