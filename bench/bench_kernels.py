#!/usr/bin/env python3
"""What each kernel choice costs: initramfs size and boot time, against the small cloud/virtio image, in one run.

    python3 bench/bench_kernels.py [--runs 3] [--variants cloud-virtio,generic-virtio,generic-hardware,...]

Variants (kernel, driver set, modules layer):

  cloud-virtio               Debian's cloud kernel, virtio driver set: the small VM image (the reference)
  generic-virtio             Debian's generic kernel (linux-image-amd64), virtio driver set
  generic-hardware           generic kernel, hardware driver set (server NICs, RAID/HBA, NVMe, AHCI, virtio)
  generic-hardware-modules   the same, plus the kernel's modules layer in the chain (what a real profile from
                             'layerboot initrd build --profile' boots: /lib/modules on the node)

Each boots the benchmark rootfs (bench/peers/rootfs.py, the same image as bench_boot.py) as the base layer from a
fresh store served by layerbootd on loopback (behind the byte-counting relay), under QEMU TCG with a virtio NIC,
1 vCPU, 1.5 GiB; the figure is QEMU start to the rootfs marker, median of --runs, runs interleaved. Prints sizes,
medians (wall and QEMU CPU), bytes served and every variant's ratio to cloud-virtio. Needs root.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerboot.errors import LayerbootError  # noqa: E402
from layerboot.log import run_main  # noqa: E402
from layerboot.ports import free_port, wait_listening  # noqa: E402
from layerboot.run import Process, run  # noqa: E402

from peers.cache import DEFAULT_CACHE  # noqa: E402
from peers.layerboot import _TOKEN, FAIL, _script, _signing_key, cmdline  # noqa: E402
from peers.report import Measured, SystemResult, describe, mb  # noqa: E402
from peers.serve import CountingRelay  # noqa: E402
from peers.system import name_list  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    flavour: str
    drivers: str
    modules_layer: bool


VARIANTS = {v.name: v for v in (
    Variant("cloud-virtio", "cloud", "virtio", False),
    Variant("generic-virtio", "generic", "virtio", False),
    Variant("generic-hardware", "generic", "hardware", False),
    Variant("generic-hardware-modules", "generic", "hardware", True),
)}
REFERENCE = "cloud-virtio"


def variant_list(text: str) -> list[str]:
    return name_list(text, VARIANTS, "variant")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_kernels.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="boots per variant (the median is reported)")
    parser.add_argument("--variants", type=variant_list, default=list(VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--filler-mb", type=int, default=14, help="incompressible filler in the rootfs")
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds before a boot counts as failed")
    parser.add_argument("--mem", type=int, default=1536, help="guest memory in MiB")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="artefact cache (default %(default)s)")
    parser.add_argument("--logs", type=Path, help="serial logs here (default: <cache>/logs/kernels-<time>)")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def prepare(names: list[str], root: Path, cache: Path, rootfs: Path, workdir: Path) -> dict[str, dict]:
    """One store: the rootfs as base; per variant a kernel, an initrd, a profile and a registered node."""
    from layerboot.build.drivers import plan_drivers
    from layerboot.build.initrd import DEFAULT_CACHE as INITRD_CACHE
    from layerboot.build.initrd import build_initrd
    from layerboot.build.kernel import fetch_kernel
    from layerboot.build.modules_layer import import_modules_layer
    from layerboot.overlays.profile import Profiles
    from layerboot.overlays.store import Store
    from layerboot.paths import Paths

    paths = Paths(root)
    store = Store(paths)
    store.init()
    _signing_key(cache, paths.signing_key, paths.public_key)
    base = store.import_squashfs(rootfs, kind="base", description="bench rootfs v1").digest
    profiles = Profiles(store)
    prepared = {}
    for index, name in enumerate(names):
        variant = VARIANTS[name]
        kernel = fetch_kernel(flavour=variant.flavour)
        plan = plan_drivers(kernel, variant.drivers)
        initrd = build_initrd(kernel, paths.public_key, workdir / f"{name}.img", cache=INITRD_CACHE, drivers=plan)
        modules = import_modules_layer(store, kernel, base) if variant.modules_layer else None
        profiles.create(name, base, cmdline="console=ttyS0",
                        kernel=store.import_boot_file(kernel.image, kind="kernel").digest,
                        initrd=store.import_boot_file(initrd.path, kind="initrd").digest)
        if modules is not None:
            profiles.set_boot(name, modules=modules.digest)
        mac = f"52:54:00:be:01:{index:02x}"
        out = run([_script("layerboot"), "--store", root, "nodes", "register", mac, "--profile", name]).text
        token = _TOKEN.search(out)
        if token is None:
            raise LayerbootError(f"'layerboot nodes register' printed no token: {out.strip()!r}")
        prepared[name] = {"kernel": kernel, "initrd": initrd.path, "mac": mac, "token": token.group(1),
                          "modules_bytes": modules.size if modules else 0, "initrd_bytes": initrd.size,
                          "kernel_bytes": kernel.image.stat().st_size}
        print(f"  {name}: kernel {kernel.version} {mb(prepared[name]['kernel_bytes'])}, initrd "
              f"{mb(initrd.size)} ({len(plan.modules)} drivers asked for)"
              + (f", modules layer {mb(modules.size)}" if modules else ""), flush=True)
    return prepared


def bench_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise LayerbootError("bench_kernels.py needs root", hint="it runs dracut and QEMU")
    from peers.boot import Guest, boot
    from peers.rootfs import rootfs_image

    logs = args.logs or args.cache / "logs" / time.strftime("kernels-%Y%m%d-%H%M%S", time.gmtime())
    rootfs = rootfs_image(args.cache, version="v1", filler_mb=args.filler_mb)
    load_before = os.getloadavg()[0]
    print(f"rootfs {mb(rootfs.stat().st_size)}; {os.cpu_count()} cores, load {load_before:.1f}; logs in {logs}",
          flush=True)
    results = {name: SystemResult(name) for name in args.variants}
    with tempfile.TemporaryDirectory(prefix="bench-kernels-") as tmp:
        work = Path(tmp)
        print("preparing ...", flush=True)
        prepared = prepare(args.variants, work / "store", args.cache, rootfs, work)
        port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        log = (logs / "layerbootd.log").open("wb")
        daemon = Process([_script("layerbootd"), "--store", work / "store", "--listen", "127.0.0.1", "--port",
                          str(port), "--ssh-port", "0"], stdout=log, stderr=log)
        try:
            wait_listening(port, daemon, "layerbootd", log=logs / "layerbootd.log", timeout=60)
            with CountingRelay(port) as relay:
                server = f"http://10.0.2.2:{relay.port}"
                for number in range(1, args.runs + 1):
                    for name in args.variants:
                        item = prepared[name]
                        guest = Guest(item["kernel"].image, item["initrd"],
                                      cmdline(server, item["mac"], item["token"]), mem_mb=args.mem, mac=item["mac"])
                        relay.traffic.reset()
                        result = boot(guest, logs / f"{name}-run{number}.log", timeout=args.timeout, fail=FAIL)
                        measured = Measured(result.seconds, relay.traffic.bytes, result.failure,
                                            round(result.cpu_seconds, 2))
                        results[name].runs.append(measured)
                        shown = f"{result.seconds:.2f} s (QEMU cpu {result.cpu_seconds:.1f} s)" \
                            if result.seconds is not None else f"FAILED ({result.failure})"
                        label = f"{name}-run{number}"
                        print(f"  {label:30} {shown}, {mb(relay.traffic.bytes)} served", flush=True)
        finally:
            daemon.terminate()
            log.close()
    for name, result in results.items():
        result.initrd_bytes = prepared[name]["initrd_bytes"]
    load_after = os.getloadavg()[0]
    print(f"\nboot to the rootfs marker (QEMU TCG, median of {args.runs}; host load {load_before:.1f} at the start, "
          f"{load_after:.1f} at the end):")
    for result in results.values():
        print("  " + describe(result))
    reference = results.get(REFERENCE)
    if reference is not None and reference.median:
        for name, result in results.items():
            if name != REFERENCE and result.median:
                print(f"  {name} / {REFERENCE}: {result.median / reference.median:.2f}x wall"
                      + (f", {result.median_cpu / reference.median_cpu:.2f}x QEMU CPU"
                         if result.median_cpu and reference.median_cpu else "")
                      + f"; initrd {result.initrd_bytes / reference.initrd_bytes:.2f}x")
    return 0 if all(r.median is not None for r in results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: bench_main(args), debug=args.debug, prog="bench_kernels.py")


if __name__ == "__main__":
    sys.exit(main())
