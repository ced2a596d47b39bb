"""``layerboot initrd build`` with the real dracut and Debian's cloud kernel: what ends up in the image."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.overlays.profile import Profiles
from layerboot.run import run
from layerboot.tools.cli import main

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def kernel():  # noqa: ANN201
    return fetch_kernel()


def listing(image: Path) -> dict[str, str]:
    """path -> ls-style mode string, from lsinitrd (dracut's own lister)."""
    entries = {}
    for line in run(["lsinitrd", image]).text.splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[0][0] in "-dlc":
            name = parts[8] if parts[0][0] != "c" else parts[9]
            entries[name] = parts[0]
    return entries


def test_image_holds_stage1_python_busybox_modules_and_the_key(kernel, store, tmp_path: Path) -> None:  # noqa: ANN001
    initrd = build_initrd(kernel, store.paths.public_key, tmp_path / "initrd.img", cache=tmp_path / "cache")
    assert not initrd.cached and initrd.size == (tmp_path / "initrd.img").stat().st_size
    assert initrd.size < 12 * 1024 * 1024, "the initramfs grew past 12 MiB"
    files = listing(initrd.path)
    for path in ("init", "usr/bin/python3.11", "usr/bin/busybox", "usr/lib/python3.11/os.pyc",
                 "usr/lib/python3.11/encodings/utf_8.pyc", "usr/lib/layerboot/stage1/main.pyc",
                 "usr/lib/layerboot/stage1/ed25519.pyc", "etc/layerboot/signing.pub"):
        assert path in files, f"{path} missing from the initramfs"
    assert files["init"].startswith("-rwx")
    for node in ("dev/console", "dev/null", "dev/urandom", "dev/kmsg"):
        assert files.get(node, "").startswith("c"), f"{node} is not a device node in the image"
    modules = {Path(p).name for p in files if p.endswith(".ko")}
    assert {"virtio_net.ko", "virtio_pci.ko", "loop.ko", "squashfs.ko", "overlay.ko"} <= modules
    assert not [p for p in files if p.endswith(".py") and p.startswith("usr/lib/")], "sources shipped"
    # OpenSSL's libcrypto is shipped on purpose, for _hashlib's SHA-256 on layers (stage1/hashing.py); nothing
    # else of OpenSSL (libssl, the ssl module) is.
    assert "usr/lib/python3.11/lib-dynload/_hashlib.cpython-311-x86_64-linux-gnu.so" in files
    assert [p for p in files if "libcrypto.so" in p], "_hashlib's libcrypto is missing"
    assert not [p for p in files if "libssl" in p or "/_ssl." in p], "OpenSSL's TLS crept into the initramfs"
    assert "sha256-ssse3.ko" in modules
    # The key in the image is the store's public key.
    key = run(["lsinitrd", "-f", "etc/layerboot/signing.pub", initrd.path]).text
    assert key.strip() == store.paths.public_key.read_text().strip()
    # The same inputs come from the cache; the output is byte-identical.
    again = build_initrd(kernel, store.paths.public_key, tmp_path / "again.img", cache=tmp_path / "cache")
    assert again.cached and again.path.read_bytes() == initrd.path.read_bytes()


def test_cli_builds_imports_and_sets_it_on_a_profile(kernel, store, profiles: Profiles, make_layer,  # noqa: ANN001
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles.create("web", make_layer({"etc/hostname": "web\n"}, kind="base"))
    out = tmp_path / "out.img"
    assert main(["--store", str(store.paths.root), "initrd", "build", "--output", str(out), "--profile", "web"]) == 0
    printed = capsys.readouterr().out
    assert f"initrd {out}: {out.stat().st_size} bytes" in printed
    gen = profiles.current("web")
    assert gen.number == 2 and gen.kernel and gen.initrd
    assert store.paths.object(gen.initrd).read_bytes() == out.read_bytes()
    assert store.paths.object(gen.kernel).read_bytes() == kernel.image.read_bytes()


def test_cli_needs_an_output_or_a_profile(store, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    assert main(["--store", str(store.paths.root), "initrd", "build"]) == 1
    err = capsys.readouterr().err
    assert "say where the initramfs goes" in err and "Traceback" not in err
