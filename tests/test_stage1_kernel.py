"""build/kernel.py without the network: the metapackage's dependency names the real image; the cache is reused."""

from pathlib import Path

import pytest

from layerboot.build.kernel import Kernel, _real_package, cached_kernel
from layerboot.errors import LayerbootError
from layerboot.run import run


def metapackage(tmp_path: Path, depends: str) -> Path:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: linux-image-cloud-amd64\nVersion: 6.1.99-1\nArchitecture: amd64\n"
        f"Maintainer: test <t@example.org>\nDepends: {depends}\nDescription: test\n")
    deb = tmp_path / "meta.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", root, deb])
    return deb


def test_real_package_comes_from_the_metapackage_dependency(tmp_path: Path) -> None:
    deb = metapackage(tmp_path, "linux-image-6.1.0-99-cloud-amd64 (= 6.1.99-1)")
    assert _real_package(deb) == ("linux-image-6.1.0-99-cloud-amd64", "6.1.0-99-cloud-amd64")


def test_a_metapackage_naming_no_cloud_image_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LayerbootError, match="names no cloud kernel image"):
        _real_package(metapackage(tmp_path, "linux-image-6.1.0-99-amd64"))


def test_cached_kernel_is_the_newest_complete_tree(tmp_path: Path) -> None:
    assert cached_kernel(tmp_path / "none") is None
    for version, complete in (("6.1.0-9-cloud-amd64", True), ("6.1.0-10-cloud-amd64", False)):
        (tmp_path / version / "boot").mkdir(parents=True)
        (tmp_path / version / "boot" / f"config-{version}").write_text("CONFIG_SQUASHFS=m\n# CONFIG_X is not set\n")
        if complete:
            (tmp_path / version / ".complete").write_text("pkg\n")
    kernel = cached_kernel(tmp_path)
    assert kernel == Kernel("6.1.0-9-cloud-amd64", tmp_path / "6.1.0-9-cloud-amd64")
    assert kernel.image.name == "vmlinuz-6.1.0-9-cloud-amd64" and kernel.moddir.name == kernel.version
    assert kernel.config_value("SQUASHFS") == "m" and kernel.config_value("X") is None
    (tmp_path / "6.1.0-10-cloud-amd64" / ".complete").write_text("pkg\n")
    assert cached_kernel(tmp_path).version == "6.1.0-10-cloud-amd64"   # by number, not as a string
