#!/usr/bin/env python3
"""Benchmark capture and bake against the raw tools, measured in the same run on the same files.

    python3 bench/bench_bake.py [--size-mb 400] [--workdir /var/tmp/layerboot-bench] [--repeat 2]

Copies a few hundred MB of real files (/usr/lib, /usr/share) into a work dir, then times (best of --repeat,
warm page cache, outputs fsynced):

  capture          layerboot capture of the tree             vs  tar -I 'zstd -T0 -3' (tar | zstd)
  bake             layerboot bake of that tar.zst (checks,    vs  tar2sqfs reading the same tar.zst
                   re-serialised tar -> tar2sqfs, hash+store)     zstd -d | tar -x, then mksquashfs
                                                                  mksquashfs straight from the tree
Prints seconds, MB/s of file data and the ratios; the target is bake <= 1.2x tar2sqfs. Needs root (owners
and trusted xattrs are copied as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from layerboot.overlays.bake import BakeLimits, bake_archive
from layerboot.overlays.capture import capture
from layerboot.overlays.squashfs import threads as default_threads
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.run import run

SOURCES = ["/usr/lib/python3.11", "/usr/lib/python3", "/usr/share/doc", "/usr/share/man", "/usr/lib/gcc",
           "/usr/share/locale", "/usr/lib/x86_64-linux-gnu", "/usr/share"]
TARGET_RATIO = 1.2


def tree_bytes(root: Path) -> tuple[int, int]:
    total = files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
            files += 1
    return total, files


def build_tree(dest: Path, size_mb: int) -> None:
    """Copy whole source directories until the tree holds about ``size_mb`` MB."""
    dest.mkdir(parents=True)
    budget = size_mb << 20
    for source in SOURCES:
        if not os.path.isdir(source):
            continue
        size, _ = tree_bytes(Path(source))
        if size > budget * 1.3:
            continue
        run(["cp", "-a", source, dest / source.strip("/").replace("/", "_")], timeout=None)
        budget -= size
        if budget < (size_mb << 20) * 0.15:
            break


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def best_of(repeat: int, step: Callable[[], None], cleanup: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        cleanup()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    cleanup()
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/layerboot-bench"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the copied tree for the next run")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_bake: needs root", file=sys.stderr)
        return 2
    work = args.workdir
    tree = work / "tree"
    if not tree.is_dir():
        print(f"building a ~{args.size_mb} MB tree of real files in {tree} ...", flush=True)
        build_tree(tree, args.size_mb)
    data, files = tree_bytes(tree)
    mb = data / 1e6
    jobs = default_threads(0)
    print(f"tree: {files} files, {mb:.0f} MB of file data; {jobs} cores", flush=True)
    run(["tar", "-C", tree, "-cf", "/dev/null", "."], timeout=None)          # warm the page cache

    out = Path(tempfile.mkdtemp(dir=work, prefix="run."))
    raw_tzst, our_tzst = out / "raw.tar.zst", out / "ours.tar.zst"
    image, extract = out / "raw.sqfs", out / "extract"
    store = Store(Paths(out / "store"))
    store.init()
    base_tree = out / "base"
    base_tree.mkdir()
    base = store.import_tree(base_tree, kind="base").digest
    limits = BakeLimits(max_bytes=1 << 40, max_files=10_000_000, special_files="keep")
    results: dict[str, float] = {}
    sizes: dict[str, int] = {}

    def rm(*paths: Path) -> Callable[[], None]:
        def clean() -> None:
            for path in paths:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return clean

    def raw_capture() -> None:
        run(["tar", "-I", "zstd -T0 -3 -q", "--xattrs", "--xattrs-include=*", "-C", tree, "-cf", raw_tzst, "."],
            timeout=None)
        fsync_file(raw_tzst)
        sizes["raw tar.zst"] = raw_tzst.stat().st_size

    def raw_tar2sqfs() -> None:
        with open(our_tzst, "rb") as stream:
            run(["tar2sqfs", "--quiet", "--no-skip", "--force", "--compressor", "zstd", "--num-jobs", str(jobs),
                 image], stdin=stream, timeout=None)
        fsync_file(image)

    def raw_extract_mksquashfs() -> None:
        extract.mkdir()
        run(["tar", "-I", "zstd", "--xattrs", "--xattrs-include=*", "-C", extract, "-xf", our_tzst], timeout=None)
        run(["mksquashfs", extract, image, "-noappend", "-quiet", "-no-progress", "-comp", "zstd", "-processors",
             str(jobs), "-xattrs"], timeout=None)
        fsync_file(image)

    def raw_mksquashfs() -> None:
        run(["mksquashfs", tree, image, "-noappend", "-quiet", "-no-progress", "-comp", "zstd", "-processors",
             str(jobs), "-xattrs"], timeout=None)
        fsync_file(image)

    def clean_store() -> None:
        for meta in store.paths.meta.glob("*.json"):
            if meta.stem != base:
                store.objects.remove(meta.stem)
                meta.unlink()

    steps = [
        ("raw tar | zstd", raw_capture, rm(raw_tzst)),
        ("layerboot capture", lambda: capture(tree, our_tzst), lambda: None),
        ("raw tar2sqfs", raw_tar2sqfs, rm(image)),
        ("raw zstd -d | tar -x + mksquashfs", raw_extract_mksquashfs, rm(image, extract)),
        ("raw mksquashfs (from the tree)", raw_mksquashfs, rm(image)),
        ("layerboot bake", lambda: bake_archive(store, our_tzst, base=base, parent=None, description="bench",
                                                limits=limits), clean_store),
    ]
    try:
        for name, step, cleanup in steps:
            results[name] = best_of(args.repeat, step, cleanup)
            print(f"  {name:36} {results[name]:7.2f} s  {mb / results[name]:7.1f} MB/s", flush=True)
        sizes["layerboot tar.zst"] = our_tzst.stat().st_size
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    ratios = {
        "capture / tar|zstd": results["layerboot capture"] / results["raw tar | zstd"],
        "bake / tar2sqfs": results["layerboot bake"] / results["raw tar2sqfs"],
        "bake / extract+mksquashfs": results["layerboot bake"] / results["raw zstd -d | tar -x + mksquashfs"],
        "bake / mksquashfs from tree": results["layerboot bake"] / results["raw mksquashfs (from the tree)"],
    }
    print("ratios:")
    for name, value in ratios.items():
        print(f"  {name:36} {value:6.2f}x")
    verdict = "PASS" if ratios["bake / tar2sqfs"] <= TARGET_RATIO else "MISS"
    print(f"target bake <= {TARGET_RATIO}x tar2sqfs: {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"files": files, "data_bytes": data, "cores": jobs, "seconds": results,
                                         "ratios": ratios, "sizes": sizes}, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(tree, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
