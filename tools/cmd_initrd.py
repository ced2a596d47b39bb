"""``layerboot initrd build``: the stage1 initramfs (dracut) for a kernel and a driver set, optionally imported
and set on a profile together with the kernel and its modules layer."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from layerboot.tools.context import Context
from layerboot.tools.parser import examples

BUILD_DESCRIPTION = """\
Build the initramfs with dracut: Python stage1 as /init, the stdlib subset it needs as .pyc, busybox, the
kernel modules of a driver set (stage1 loads what the hardware asks for) with their firmware, and the store's
public key. Prints its size. With --profile, imports the kernel and initrd into the store and sets them on the
profile, together with a layer holding the kernel's /lib/modules tree (so the booted node can load any driver).

kernels: --kernel generic (Debian's linux-image-amd64, every driver; default, initrd.kernel), --kernel cloud
(linux-image-cloud-amd64: VM drivers only, smaller), --kernel-version V (an unpacked kernel in the cache) or
--kernel-from LAYER (the /boot/vmlinuz-V and /lib/modules/V inside a base layer; no modules layer needed).
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("initrd", help="build the layerboot initramfs (Python stage1, dracut)",
                            description="Nodes boot Debian's cloud kernel with layerboot's initramfs: Python "
                                        "stage1 as /init, trusting the store's public key.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    build = actions.add_parser(
        "build", help="build the initramfs for a Debian kernel and a driver set, trusting the store's public key",
        description=BUILD_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = build.add_mutually_exclusive_group()
    which.add_argument("--kernel", choices=("generic", "cloud"),
                       help="fetch/reuse Debian's generic or cloud kernel (initrd.kernel, default generic)")
    which.add_argument("--kernel-version", metavar="VERSION", help="an unpacked kernel under the kernel cache")
    which.add_argument("--kernel-from", metavar="LAYER",
                       help="take the kernel and its modules from this layer (e.g. the profile's base)")
    build.add_argument("--drivers", choices=("hardware", "virtio"),
                       help="driver set: server NICs + storage + virtio, or virtio only (initrd.drivers)")
    build.add_argument("--add-drivers", action="append", metavar="NAMES",
                       help="more kernel modules, comma separated, or =DIR of the module tree (repeatable)")
    build.add_argument("--omit-drivers", action="append", metavar="NAMES",
                       help="leave these modules of the driver set out, comma separated (repeatable)")
    build.add_argument("--firmware-dir", action="append", type=Path, metavar="DIR",
                       help="where to look for the firmware the drivers name (repeatable; initrd.firmware_dirs)")
    build.add_argument("--no-modules-layer", action="store_true",
                       help="with --profile: do not add the kernel's /lib/modules layer to the chain")
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


def _kernel(ctx: Context):  # noqa: ANN202 - (Kernel, digest of the layer it came from or None)
    from layerboot.build.kernel import DEFAULT_CACHE, cached_version, fetch_kernel, kernel_from_layer
    from layerboot.errors import LayerbootError

    args = ctx.args
    if args.kernel_version:
        return cached_version(DEFAULT_CACHE, args.kernel_version), None
    if args.kernel_from:
        layer = ctx.ready_store().get(args.kernel_from)
        if not layer.is_squashfs:
            raise LayerbootError(f"--kernel-from {layer.short}: a {layer.kind} is not an image with a kernel in it",
                                 hint="give a base (or overlay) layer that has /boot/vmlinuz-* and /lib/modules")
        return kernel_from_layer(ctx.store.path(layer.digest), layer.digest, DEFAULT_CACHE), layer.digest
    return fetch_kernel(flavour=args.kernel or ctx.config.initrd_kernel), None


def _driver_plan(ctx: Context, kernel):  # noqa: ANN001, ANN202 - DriverPlan
    from layerboot.build.drivers import plan_drivers

    args, config = ctx.args, ctx.config
    for directory in args.firmware_dir or ():
        if not directory.is_dir():
            from layerboot.errors import LayerbootError
            raise LayerbootError(f"--firmware-dir {directory} is not a directory")
    dirs = tuple(args.firmware_dir or (Path(d) for d in config.initrd_firmware_dirs.split(":") if d))
    return plan_drivers(kernel, args.drivers or config.initrd_drivers,
                        add=[config.initrd_add_drivers, *(args.add_drivers or [])],
                        omit=[config.initrd_omit_drivers, *(args.omit_drivers or [])], firmware_dirs=dirs)


def cmd_build(ctx: Context) -> int:
    from layerboot.build.initrd import build_initrd
    from layerboot.errors import LayerbootError

    args = ctx.args
    if args.output is None and args.profile is None:
        raise LayerbootError("say where the initramfs goes", hint="give --output FILE and/or --profile NAME")
    ctx.ready_store()
    if args.profile:
        ctx.profiles.current(args.profile)   # fail before downloading or building anything
    kernel, from_layer = _kernel(ctx)
    plan = _driver_plan(ctx, kernel)
    for line in plan.summary():
        print(line)
    with tempfile.TemporaryDirectory(prefix="layerboot-initrd-out-") as tmp:
        output = args.output or Path(tmp) / "initrd.img"
        initrd = build_initrd(kernel, ctx.paths.public_key, output, drivers=plan)
        print(f"initrd {initrd.path}: {initrd.size} bytes ({initrd.size / 1048576:.1f} MiB), kernel {kernel.version}, "
              f"{len(initrd.modules)} Python modules, built in {initrd.seconds:.1f}s")
        if args.profile:
            _set_on_profile(ctx, kernel, from_layer, output)
    return 0


def _set_on_profile(ctx: Context, kernel, from_layer: str | None, initrd: Path) -> None:  # noqa: ANN001
    from layerboot.build.modules_layer import import_modules_layer
    from layerboot.errors import LayerbootError

    store, name = ctx.store, ctx.args.profile
    gen = ctx.profiles.current(name)
    kernel_layer = store.import_boot_file(kernel.image, kind="kernel", description=f"linux {kernel.version}")
    initrd_layer = store.import_boot_file(initrd, kind="initrd", description=f"layerboot stage1 for {kernel.version}")
    modules = ""   # none: the kernel came from an image in the chain, or the admin said so
    if from_layer is not None and from_layer not in gen.layers:
        print(f"note: layer {from_layer[:12]} is not in profile {name}: its /lib/modules is not on the nodes")
    if from_layer is None and not ctx.args.no_modules_layer:
        layer = import_modules_layer(store, kernel, gen.base)
        modules = layer.digest
        print(f"modules layer {layer.short}: {layer.description}, {layer.size / 1048576:.1f} MiB")
    try:
        gen = ctx.profiles.set_boot(name, kernel=kernel_layer.digest, initrd=initrd_layer.digest, modules=modules)
        print(f"profile {name}: generation {gen.number} boots kernel {kernel_layer.short} initrd {initrd_layer.short}"
              + (f" with modules layer {gen.modules[:12]}" if gen.modules else ""))
    except LayerbootError as err:
        if not str(err).startswith("nothing to change"):
            raise
        print(f"profile {name} already boots kernel {kernel_layer.short} initrd {initrd_layer.short}")


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
