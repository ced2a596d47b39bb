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
    assert {"8021q.ko", "bonding.ko"} <= modules   # vlan= and bond= (with their dependencies: dracut resolves)
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
    # nbd's options for the one modprobe that loads it with the layer stack (no spare devices or partitions)
    options = run(["lsinitrd", "-f", "etc/modprobe.d/layerboot.conf", initrd.path]).text
    assert options.strip() == "options nbd nbds_max=0 max_part=0"
    # The same inputs come from the cache; the output is byte-identical.
    again = build_initrd(kernel, store.paths.public_key, tmp_path / "again.img", cache=tmp_path / "cache")
    assert again.cached and again.path.read_bytes() == initrd.path.read_bytes()


def test_cli_builds_imports_and_sets_it_on_a_profile(kernel, store, profiles: Profiles, make_layer,  # noqa: ANN001
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles.create("web", make_layer({"etc/hostname": "web\n"}, kind="base"))
    out = tmp_path / "out.img"
    assert main(["--store", str(store.paths.root), "initrd", "build", "--kernel", "cloud", "--output", str(out),
                 "--profile", "web"]) == 0
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


# -- kernels and driver sets (build/drivers.py, build/kernel.py, build/modules_layer.py) ----------------------
@pytest.fixture(scope="module")
def generic_kernel():  # noqa: ANN201
    return fetch_kernel(flavour="generic")


def test_driver_sets_follow_the_kernel(kernel, generic_kernel) -> None:  # noqa: ANN001
    from layerboot.build.drivers import SERVER_NICS, plan_drivers
    from layerboot.errors import LayerbootError

    generic = plan_drivers(generic_kernel, "hardware")
    assert set(SERVER_NICS) <= set(generic.modules) and not generic.not_in_kernel
    assert {"bnx2x", "r8169"} <= set(generic.missing_firmware)   # non-free firmware is not on this machine
    cloud = plan_drivers(kernel, "hardware")                       # the cloud kernel has VM drivers only
    assert "e1000e" in cloud.not_in_kernel and "virtio_net" in cloud.modules
    assert "e1000e" not in plan_drivers(generic_kernel, "hardware", omit=["e1000e,igb"]).modules
    with pytest.raises(LayerbootError, match="has no module e1000e"):
        plan_drivers(kernel, "virtio", add=["e1000e"])
    with pytest.raises(LayerbootError, match="stage1 needs them"):
        plan_drivers(kernel, "virtio", omit=["squashfs"])
    with pytest.raises(LayerbootError, match="not a kernel module name"):
        plan_drivers(kernel, "virtio", add=["../etc"])


def test_hardware_image_carries_server_drivers_and_found_firmware(generic_kernel, store,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    from layerboot.build.drivers import plan_drivers

    firmware = tmp_path / "firmware"
    (firmware / "rtl_nic").mkdir(parents=True)
    (firmware / "rtl_nic" / "rtl8168h-2.fw").write_bytes(b"test firmware\n")
    plan = plan_drivers(generic_kernel, "hardware", add=["dummy"], firmware_dirs=(firmware,))
    assert firmware / "rtl_nic" / "rtl8168h-2.fw" in plan.firmware
    assert "rtl_nic/rtl8168h-2.fw" not in plan.missing_firmware.get("r8169", ())
    initrd = build_initrd(generic_kernel, store.paths.public_key, tmp_path / "hw.img", drivers=plan)
    files = listing(initrd.path)
    modules = {Path(p).name for p in files if p.endswith(".ko")}
    for name in ("e1000e", "igb", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "tg3", "bnx2x", "r8169", "vmxnet3",
                 "nvme", "ahci", "megaraid_sas", "mpt3sas", "virtio_net", "dummy", "crc32c_generic"):
        assert f"{name}.ko" in modules, name
    assert any(p.endswith("rtl_nic/rtl8168h-2.fw") for p in files)
    alias = run(["lsinitrd", "-f", f"usr/lib/modules/{generic_kernel.version}/modules.alias", initrd.path]).text
    assert "e1000e" in alias    # what stage1 matches the hardware's modaliases against
    print(f"generic kernel, hardware set: {initrd.size / 1048576:.1f} MiB")


def test_cli_kernel_from_a_layer_and_the_modules_layer(kernel, store, profiles: Profiles,  # noqa: ANN001
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--kernel-from takes /boot/vmlinuz-V and /usr/lib/modules/V out of a (merged-/usr) base: no modules layer;
    a downloaded kernel gets one, laid out like the base (/usr/lib/modules behind the /lib symlink)."""
    import shutil

    tree = tmp_path / "base"
    (tree / "boot").mkdir(parents=True)
    (tree / "usr/lib/modules").mkdir(parents=True)
    (tree / "lib").symlink_to("usr/lib")
    shutil.copyfile(kernel.image, tree / "boot" / kernel.image.name)
    shutil.copytree(kernel.moddir, tree / "usr/lib/modules" / kernel.version, symlinks=True)
    base = store.import_tree(tree, kind="base", all_root=True).digest
    profiles.create("img", base)
    root = ["--store", str(store.paths.root), "initrd", "build", "--drivers", "virtio"]
    import layerboot.build.kernel

    with monkeypatch.context() as patch:   # kernels taken from this test's layers stay out of the shared cache
        patch.setattr(layerboot.build.kernel, "DEFAULT_CACHE", tmp_path / "kernels")
        assert main([*root, "--kernel-from", base[:12], "--profile", "img"]) == 0
    assert (tmp_path / "kernels" / f"layer-{base[:16]}-{kernel.version}" / ".complete").is_file()
    gen = profiles.current("img")
    assert store.paths.object(gen.kernel).read_bytes() == kernel.image.read_bytes() and gen.modules is None
    assert main([*root, "--kernel", "cloud", "--profile", "img"]) == 0
    printed = capsys.readouterr().out
    gen = profiles.current("img")
    assert gen.modules and "kernel modules" in printed
    assert profiles.manifest_for(gen).layers[1].digest == gen.modules     # just above the base
    names = run(["unsquashfs", "-l", store.paths.object(gen.modules)]).text
    assert f"squashfs-root/usr/lib/modules/{kernel.version}/modules.dep" in names
    assert store.get(gen.modules).kind == "modules"
    # a base without a kernel: one clear error
    profiles.create("empty", make := store.import_tree(tmp_path / "base" / "boot", kind="base", all_root=True).digest)
    assert make and main([*root, "--kernel-from", make[:12], "--profile", "empty"]) == 1
    assert "has no kernel" in capsys.readouterr().err
