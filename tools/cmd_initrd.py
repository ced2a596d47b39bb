"""``layerboot initrd build``: the stage1 initramfs (dracut), optionally imported and set on a profile."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from layerboot.tools.context import Context
from layerboot.tools.parser import examples


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("initrd", help="build the layerboot initramfs (Python stage1, dracut)",
                            description="Nodes boot Debian's cloud kernel with layerboot's initramfs: Python "
                                        "stage1 as /init, trusting the store's public key.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    build = actions.add_parser(
        "build", help="build the initramfs for Debian's cloud kernel, trusting the store's public key",
        description="Build the initramfs with dracut: Python stage1 as /init, the stdlib subset it needs as .pyc, "
                    "busybox, kmod, the kernel modules and the store's public key. Prints its size. With "
                    "--profile, imports the kernel and initrd into the store and sets them on the profile.")
    build.add_argument("--kernel-version", metavar="VERSION",
                       help="an unpacked kernel under the kernel cache (default: fetch/reuse Debian's "
                            "linux-image-cloud-amd64)")
    build.add_argument("-o", "--output", type=Path, metavar="FILE", help="where to write the initramfs")
    build.add_argument("--profile", metavar="NAME", help="import kernel + initrd and set them on this profile")
    build.set_defaults(func=cmd_build)
    examples(build, "layerboot initrd build --profile web", "layerboot initrd build -o initrd.img")
    payload = actions.add_parser(
        "payload", help="write stage1's files (/init, .pyc, public key) to a directory, for other builders",
        description="Write what the dracut module installs (stage1 and its stdlib subset as .pyc, /init, the "
                    "store's public key) into DIR, e.g. as LAYERBOOT_PAYLOAD for the mkinitcpio hook in "
                    "initrd/mkinitcpio/. Device nodes are not included.")
    payload.add_argument("directory", type=Path, metavar="DIR", help="a new or empty directory")
    payload.set_defaults(func=cmd_payload)
    examples(payload, "layerboot initrd payload /tmp/payload && LAYERBOOT_PAYLOAD=/tmp/payload mkinitcpio ...")


def _kernel(version: str | None):  # noqa: ANN202 - Kernel
    from layerboot.build.kernel import DEFAULT_CACHE, Kernel, fetch_kernel
    from layerboot.errors import LayerbootError

    if version is None:
        return fetch_kernel()
    kernel = Kernel(version, DEFAULT_CACHE / version)
    if not kernel.image.is_file():
        raise LayerbootError(f"no unpacked kernel {version} in {DEFAULT_CACHE}",
                             hint="omit --kernel-version to fetch Debian's linux-image-cloud-amd64")
    return kernel


def cmd_build(ctx: Context) -> int:
    from layerboot.build.initrd import build_initrd
    from layerboot.errors import LayerbootError

    args = ctx.args
    if args.output is None and args.profile is None:
        raise LayerbootError("say where the initramfs goes", hint="give --output FILE and/or --profile NAME")
    store = ctx.ready_store()
    kernel = _kernel(args.kernel_version)
    with tempfile.TemporaryDirectory(prefix="layerboot-initrd-out-") as tmp:
        output = args.output or Path(tmp) / "initrd.img"
        initrd = build_initrd(kernel, ctx.paths.public_key, output)
        print(f"initrd {initrd.path}: {initrd.size} bytes ({initrd.size / 1048576:.1f} MiB), kernel {kernel.version}, "
              f"{len(initrd.modules)} Python modules, built in {initrd.seconds:.1f}s")
        if args.profile:
            ctx.profiles.current(args.profile)   # fail before importing anything
            kernel_layer = store.import_boot_file(kernel.image, kind="kernel", description=f"linux {kernel.version}")
            initrd_layer = store.import_boot_file(output, kind="initrd",
                                                  description=f"layerboot stage1 for {kernel.version}")
            try:
                gen = ctx.profiles.set_boot(args.profile, kernel=kernel_layer.digest, initrd=initrd_layer.digest)
                print(f"profile {args.profile}: generation {gen.number} boots kernel {kernel_layer.short} "
                      f"initrd {initrd_layer.short}")
            except LayerbootError as err:
                if not str(err).startswith("nothing to change"):
                    raise
                print(f"profile {args.profile} already boots kernel {kernel_layer.short} initrd {initrd_layer.short}")
    return 0


def cmd_payload(ctx: Context) -> int:
    from layerboot.build.initrd import collect_payload
    from layerboot.errors import LayerbootError

    target: Path = ctx.args.directory
    if target.exists() and any(target.iterdir()):
        raise LayerbootError(f"{target} is not empty", hint="give a new or empty directory")
    target.mkdir(parents=True, exist_ok=True)
    info = collect_payload(target, ctx.paths.public_key)
    print(f"stage1 payload in {target}: {len(info['compiled'])} compiled modules, "
          f"extension modules to install: {' '.join(info['libraries']) or 'none'}")
    return 0
