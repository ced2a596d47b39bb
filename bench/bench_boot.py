#!/usr/bin/env python3
"""Boot benchmark: time from QEMU start to the rootfs marker, layerboot against its peers, in one run.

    python3 bench/bench_boot.py [--runs 3] [--systems live-boot,dracut-livenet,layerboot] [--second-boot]
    python3 bench/bench_boot.py --filler-mb 14,256,768 --runs 1      # the size curve (issue 20)
    python3 bench/bench_boot.py --filler-mb 1024 --link-mbit 1000 --systems live-boot,layerboot,layerboot-stream
    python3 bench/bench_boot.py --filler-mb 1024 --systems layerboot-stream,layerboot-nbdkit-curl,layerboot-nbd-client

Every system boots the same Debian cloud kernel (build/kernel.py) under QEMU TCG (``-accel tcg -cpu
qemu64,+rdrand``, 1 vCPU, 1 GiB, user networking, virtio NIC) with its own initrd, fetches the same squashfs
rootfs over HTTP from 127.0.0.1 (10.0.2.2 in the guest), and runs that rootfs's init, which prints
``ROOTFS-UP`` and powers off. With ``--link-mbit N`` what the servers send the guests goes through a boot
network shaped to N Mbit/s (tc on the host's loopback, peers/link.py; issue 18's condition is 1000):

  live-boot        Debian live-boot (initramfs-tools), boot=live fetch=http://.../rootfs.squashfs
  dracut-livenet   dracut livenet + dmsquash-live, root=live:http://.../rootfs.squashfs
  layerboot        layerboot's Python stage1 initrd, the rootfs as the base layer served by layerbootd
  layerboot-stream the same with layerboot.fetch=stream: the layer is a network block device with dm-verity on
                   top, and only the blocks the boot reads are fetched (issue 18)
  layerboot-nbdkit-curl, layerboot-nbd-client   the same boot with nbdkit's curl plugin, or nbd-client against
                   nbdkit on the server, instead of layerboot's relay: a bench-only initrd (peers/relays.py)
  layerboot-blocks the full fetch with layerboot.verify=blocks: downloaded without SHA-256, attached through
                   dm-verity with the signed tree (issue 20)

Runs are interleaved (run 1 of every system, then run 2, ...) so drifts of the shared VM hit all alike.
Prints per system the initrd size, the median and every run, the bytes served per boot, and the ratios of
layerboot against each peer. ``--second-boot`` also boots after a one-file change of the rootfs (issue 6):
bytes and time, which the peers pay in full because they refetch the whole image. Several ``--filler-mb``
sizes measure the size curve: every system at each size, one guest memory for all (enough for the largest),
then a table of medians and ratios per size. Peer initrds, the builder chroot and the rootfs images are
cached under --cache (keyed by their inputs). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerboot.errors import LayerbootError  # noqa: E402
from layerboot.log import run_main  # noqa: E402

from peers import dracut_livenet, layerboot, live_boot, relays  # noqa: E402
from peers.cache import DEFAULT_CACHE  # noqa: E402
from peers.link import ShapedLink  # noqa: E402
from peers.report import (Measured, SystemResult, describe, mb, ratio_lines, ratios, size_table,  # noqa: E402
                          size_target, stream_lines)
from peers.system import Bench, System, Unavailable, name_list  # noqa: E402

SYSTEMS: dict[str, Callable[[Bench], AbstractContextManager[System]]] = {
    "live-boot": live_boot.system,
    "dracut-livenet": dracut_livenet.system,
    "layerboot": layerboot.system,
    "layerboot-stream": layerboot.stream_system,
    "layerboot-nbdkit-curl": relays.curl_system,      # issue 18's alternatives to layerboot-stream's relay
    "layerboot-nbd-client": relays.client_system,
    "layerboot-blocks": layerboot.blocks_system,
}
RELAYS = ("layerboot-nbdkit-curl", "layerboot-nbd-client")


def system_list(text: str) -> list[str]:
    return name_list(text, SYSTEMS, "system")


def size_list(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give MiB as whole numbers, e.g. 14,256,768") from None
    if not sizes or any(size < 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more sizes in MiB, e.g. 14,256,768")
    return sizes


def auto_memory(sizes: list[int]) -> int:
    """Guest MiB for the largest image: room for a peer's copy in RAM twice over, at least 1 GiB."""
    need = 3 * max(sizes) + 512
    return max(1024, -(-need // 256) * 256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_boot.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="boots per system (the median is reported)")
    parser.add_argument("--systems", type=system_list, default=[name for name in SYSTEMS if name not in RELAYS],
                        help="comma-separated subset of: " + ", ".join(SYSTEMS) + " (default: all but the "
                             "nbdkit relays)")
    parser.add_argument("--second-boot", action="store_true",
                        help="also measure a boot after a one-file change of the rootfs (bytes and time)")
    parser.add_argument("--filler-mb", type=size_list, default=[14],
                        help="incompressible filler in the rootfs, MiB (the image is this plus ~1.5 MB of "
                             "busybox); a comma-separated list measures each size")
    parser.add_argument("--read-mb", type=int, default=0,
                        help="with the relay systems: stage1 also reads this many MiB of each streamed layer through "
                             "dm-verity before the switch (the relays' per-byte path); layerboot-stream then boots a "
                             "bench initrd too")
    parser.add_argument("--link-mbit", type=int, default=0,
                        help="the boot network's speed: what the servers send the guests is shaped to this many "
                             "Mbit/s (tc on the host's loopback, peers/link.py; issue 18 measures at 1000); "
                             "default 0: unshaped, as the size curve's figures were taken")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a boot counts as failed")
    parser.add_argument("--mem", type=int, default=0,
                        help="guest memory in MiB (default: 1024, or 3x the largest image + 512)")
    parser.add_argument("--cpus", type=int, default=1,
                        help="vCPUs of every guest (default 1; under TCG each is a host thread)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="artefact cache (default %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild cached initrds and images")
    parser.add_argument("--logs", type=Path, help="serial logs here (default: <cache>/logs/<time>)")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.cpus < 1 or args.read_mb < 0 or args.link_mbit < 0:
        parser.error("--runs and --cpus must be at least 1, --read-mb and --link-mbit at least 0")
    args.mem = args.mem or auto_memory(args.filler_mb)
    return args


def boot_once(bench: Bench, system: System, version: str, label: str, *, timeout: float, mem: int,
              disks: tuple[Path, ...] = ()) -> Measured:
    """One boot of ``system`` with rootfs ``version``: time to the marker and bytes served, or why it failed."""
    from peers.boot import Guest, boot   # imported late: --help works without QEMU installed
    guest = Guest(bench.kernel.image, system.initrd, system.cmdline(version), mem_mb=mem, cpus=bench.cpus,
                  mac=system.mac.get(version), disks=disks)
    system.traffic.reset()
    result = boot(guest, bench.logs / f"{label}.log", timeout=timeout, fail=system.fail)
    failure = result.failure
    if failure is None and result.marker is not None and result.marker.version != version:
        failure = f"booted rootfs {result.marker.version}, expected {version}"
    measured = Measured(result.seconds if failure is None else None, system.traffic.bytes, failure,
                        round(result.cpu_seconds, 2), result.marker.used_kb if result.marker else None)
    shown = f"{result.seconds:.2f} s (QEMU cpu {result.cpu_seconds:.1f} s)" if measured.seconds is not None \
        else f"FAILED ({failure})"
    print(f"  {label:30} {shown}, {mb(measured.http_bytes)} served", flush=True)
    return measured


def measure(bench: Bench, systems: dict[str, System], version: str, runs: int, *, timeout: float,
            mem: int) -> dict[str, list[Measured]]:
    """Boot every system ``runs`` times with rootfs ``version``, interleaved; failures are recorded, not raised."""
    found: dict[str, list[Measured]] = {name: [] for name in systems}
    for run in range(1, runs + 1):
        for name, system in systems.items():
            found[name].append(boot_once(bench, system, version, f"{name}-{version}-run{run}", timeout=timeout,
                                         mem=mem))
    return found


def measure_cached(bench: Bench, system: System, runs: int, *, timeout: float, mem: int) -> list[Measured]:
    """Per run: a fresh cache disk, a v1 boot that fills it, then the v2 boot (one-file change) that is measured."""
    from peers.layerboot import make_cache_disk
    found = []
    for run in range(1, runs + 1):
        disk = make_cache_disk(bench.workdir / "cache-disk.img",
                               max(128, 2 * bench.images["v1"].stat().st_size // (1 << 20) + 64))
        fill = boot_once(bench, system, "v1", f"{system.name}-v1-fill-run{run}", timeout=timeout, mem=mem,
                         disks=(disk,))
        if fill.failure is not None:
            found.append(Measured(None, 0, f"the boot that fills the cache failed: {fill.failure}"))
            continue
        found.append(boot_once(bench, system, "v2", f"{system.name}-v2-run{run}", timeout=timeout, mem=mem,
                               disks=(disk,)))
    return found


def measure_size(args: argparse.Namespace, kernel, filler_mb: int, logs: Path) -> dict:  # noqa: ANN001
    """Every system at one rootfs size: prepare, boot (interleaved), report; returns the JSON-able figures."""
    from peers.rootfs import rootfs_image
    from peers.serve import CountingServer

    versions = ["v1", "v2"] if args.second_boot else ["v1"]
    images = {v: rootfs_image(args.cache, version=v, filler_mb=filler_mb, rebuild=args.rebuild) for v in versions}
    load_before = os.getloadavg()[0]
    print(f"kernel {kernel.version}; rootfs {images['v1'].stat().st_size / 1e6:.1f} MB squashfs; guest "
          f"{args.mem} MiB, {args.cpus} vCPU; {os.cpu_count()} cores, load {load_before:.1f}; logs in {logs}",
          flush=True)
    results = {name: SystemResult(name) for name in args.systems}
    with ExitStack() as stack:
        www = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-www-")))
        server = stack.enter_context(CountingServer(www))
        link = stack.enter_context(ShapedLink(args.link_mbit)) if args.link_mbit else None
        bench = Bench(args.cache, kernel, images, server, www, logs, rebuild=args.rebuild, cpus=args.cpus,
                      read_mb=args.read_mb, link=link)
        bench.guest_port(server.port)
        systems: dict[str, System] = {}
        for name in args.systems:
            print(f"preparing {name} ...", flush=True)
            try:
                factory = relays.stream_read_system if name == "layerboot-stream" and args.read_mb else SYSTEMS[name]
                systems[name] = stack.enter_context(factory(bench))
            except Unavailable as why:
                results[name].unavailable = str(why)
                print(f"  {name}: {why}", flush=True)
                continue
            except LayerbootError as err:   # the other systems are still measured; this one says why not
                results[name].unavailable = f"could not be prepared: {err}"
                print(f"  {name}: could not be prepared: {err}" + (f" ({err.hint})" if err.hint else ""),
                      flush=True)
                continue
            results[name].initrd_bytes = systems[name].initrd.stat().st_size
        first = measure(bench, systems, "v1", args.runs, timeout=args.timeout, mem=args.mem)
        second = measure(bench, systems, "v2", args.runs, timeout=args.timeout, mem=args.mem) \
            if args.second_boot else {}
        cached = systems["layerboot"].cache_variant if "layerboot" in systems else None
        if args.second_boot and cached is not None:
            second[cached.name] = measure_cached(bench, cached, args.runs, timeout=args.timeout, mem=args.mem)
        shaped = f"{link.describe()}, {mb(link.shaped_bytes())} through it" if link else "link not shaped"
    for name, runs in first.items():
        results[name].runs = runs
    load_after = os.getloadavg()[0]
    print(f"\nboot to the rootfs marker (QEMU TCG, median of {args.runs}; host load {load_before:.1f} at the start, "
          f"{load_after:.1f} at the end; {shaped}):")
    for result in results.values():
        print("  " + describe(result))
    for line in ratio_lines(list(results.values()), target=size_target(images["v1"].stat().st_size)):
        print("  " + line)
    if "layerboot-stream" in results:
        for line in stream_lines(list(results.values())):
            print("  " + line)
        if not link:
            print("  (issue 18's targets are for a link shaped to 1 Gbit/s: --link-mbit 1000)")
    relay_figures = relays.relay_figures(results, logs, args.runs)
    if len(relay_figures) > 1:
        print("\nstream relays (issue 18): time to the marker, QEMU CPU, manifest -> devices attached (serial log), "
              "bytes served, initramfs added; medians:")
        for line in relays.relay_lines(relay_figures):
            print("  " + line)
    if "layerboot-blocks" in results:
        for line in ratio_lines(list(results.values()), "layerboot-blocks",
                                target=size_target(images["v1"].stat().st_size)):
            print("  " + line)
    second_results = [SystemResult(name, results[name.removesuffix("-cache")].initrd_bytes, runs)
                      for name, runs in second.items()]
    if args.second_boot:
        print("\nsecond boot after a one-file change (/etc/bench-version v1 -> v2); -cache: after a v1 boot that "
              "filled the node's cache disk:")
        for result in second_results:
            print("  " + describe(result))
        if "layerboot" in systems and cached is None:
            print("  layerboot-cache: not measured, the node cache (initrd/stage1/cache.py, issue 6) is not in "
                  "this tree yet")
    return {"filler_mb": filler_mb, "rootfs_bytes": images["v1"].stat().st_size, "load": [load_before, load_after],
            "link_mbit": args.link_mbit,
            "first_boot": [r.to_json() for r in results.values()], "ratios": ratios(list(results.values())),
            "stream_ratios": ratios(list(results.values()), "layerboot-stream"), "relays": relay_figures,
            "blocks_ratios": ratios(list(results.values()), "layerboot-blocks"),
            "second_boot": [r.to_json() for r in second_results], "results": list(results.values())}


def bench_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise LayerbootError("bench_boot.py needs root", hint="it mounts a builder chroot and runs dracut")
    from layerboot.build.kernel import fetch_kernel

    logs = args.logs or args.cache / "logs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    kernel = fetch_kernel()
    curve = []
    for filler_mb in args.filler_mb:
        if len(args.filler_mb) > 1:
            print(f"\n=== rootfs with {filler_mb} MiB of filler ===", flush=True)
        curve.append(measure_size(args, kernel, filler_mb, logs / f"filler-{filler_mb}" if len(args.filler_mb) > 1
                                  else logs))
    if len(curve) > 1:
        print(f"\nsize curve (QEMU TCG, guest {args.mem} MiB, median of {args.runs} per system and size):")
        for line in size_table([(point["rootfs_bytes"], point["results"], point["load"]) for point in curve]):
            print("  " + line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        points = [{k: v for k, v in point.items() if k != "results"} for point in curve]
        document = {"kernel": kernel.version, "runs": args.runs, "cores": os.cpu_count(), "mem": args.mem,
                    **(points[0] if len(points) == 1 else {"curve": points})}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(r.median is not None or r.unavailable for point in curve for r in point["results"]) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: bench_main(args), debug=args.debug, prog="bench_boot.py")


if __name__ == "__main__":
    sys.exit(main())
