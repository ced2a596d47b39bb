#!/usr/bin/env python3
"""What verifying an object before its first serve costs: layerbootd with and without server.verify_objects.

    python3 bench/bench_verify.py [--size-mb 1024] [--repeat 3] [--workdir /var/tmp/layerboot-bench-verify]

Builds a store whose kernel slot holds a --size-mb object of random bytes, then, --repeat times and
alternating, starts layerbootd with ``server.verify_objects = true`` and with ``false`` on that store and
times one ``curl`` download of the object (to /dev/null, loopback) right after the start:

* first (verify):   the first download after a start, which hashes the object before its first byte;
* again (verify):   a second download from the same daemon (verified already: no hashing);
* first (no verify): the peer, the same download with verification off;

each with a warm page cache and with a cold one (the object's pages dropped with posix_fadvise DONTNEED,
so the hash and the send read the disk). It also times hashlib's sha256 over the file alone. Prints the
medians and the ratio first(verify) / first(no verify): what a node that asks for a layer first after a
daemon restart waits, relative to the transfer itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import build_store  # noqa: E402

from layerboot.errors import LayerbootError  # noqa: E402
from layerboot.ports import free_port, wait_listening  # noqa: E402
from layerboot.run import Process, devnull, require_tool  # noqa: E402


def drop_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


def download(url: str, token: str, expected: int) -> float:
    argv = [require_tool("curl"), "-s", "-f", "-o", "/dev/null", "-w", "%{size_download}",
            "-H", f"Authorization: Bearer {token}", url]
    start = time.monotonic()
    with Process(argv, stderr=devnull()) as proc:
        rc = proc.wait(timeout=900)
        out = proc.stdout.read().decode() if proc.stdout else ""
    if rc != 0 or int(out or 0) != expected:
        raise SystemExit(f"bench_verify: download failed (curl status {rc}, {out or 0} of {expected} bytes)")
    return time.monotonic() - start


def with_daemon(work: Path, root: Path, verify: bool, body):  # noqa: ANN001, ANN201
    port = free_port()
    config = work / "layerboot.toml"
    config.write_text(f'[store]\nroot = "{root}"\n[server]\nlisten = "127.0.0.1"\nport = {port}\n'
                      f"verify_objects = {'true' if verify else 'false'}\n")
    with open(work / "layerbootd.log", "ab") as log:
        daemon = Process([sys.executable, "-m", "layerboot.server.main", "--config", config], stdout=log, stderr=log)
    try:
        try:
            wait_listening(port, daemon, "layerbootd", log=work / "layerbootd.log")
        except LayerbootError as err:
            raise SystemExit(f"bench_verify: {err}") from None
        return body(f"http://127.0.0.1:{port}")
    finally:
        daemon.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/layerboot-bench-verify"))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    print(f"building a store with a {args.size_mb} MB object in {args.workdir} ...", flush=True)
    paths, digest, token = build_store(args.workdir, args.size_mb)
    path = paths.object(digest)
    size = path.stat().st_size
    url_path = f"/objects/{digest}"
    times: dict[str, list[float]] = {key: [] for key in (
        "hash", "first verify warm", "again verify warm", "first plain warm",
        "first verify cold", "first plain cold")}
    for round_number in range(args.repeat):
        warm(path)
        start = time.monotonic()
        with open(path, "rb") as handle:
            hashlib.file_digest(handle, "sha256")
        times["hash"].append(time.monotonic() - start)
        for cache in ("warm", "cold"):
            prepare = warm if cache == "warm" else drop_cache

            def verified(base: str) -> None:
                prepare(path)
                times[f"first verify {cache}"].append(download(base + url_path, token, size))
                if cache == "warm":
                    times["again verify warm"].append(download(base + url_path, token, size))

            def plain(base: str) -> None:
                prepare(path)
                times[f"first plain {cache}"].append(download(base + url_path, token, size))

            with_daemon(args.workdir, paths.root, True, verified)
            with_daemon(args.workdir, paths.root, False, plain)
        print(f"run {round_number + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"\nmedians of {args.repeat} runs, {size / 1e6:.0f} MB object, load average {os.getloadavg()[0]:.1f}:")
    for key, value in median.items():
        print(f"  {key:18s} {value:6.2f} s  ({size / 1e6 / value:6.0f} MB/s)")
    for cache in ("warm", "cold"):
        ratio = median[f"first verify {cache}"] / median[f"first plain {cache}"]
        print(f"first serve with / without verification, {cache} cache: {ratio:.2f}x "
              f"(+{median[f'first verify {cache}'] - median[f'first plain {cache}']:.2f} s once per object "
              "and daemon start)")
    print(f"a verified object served again: {median['again verify warm'] / median['first plain warm']:.2f}x "
          "the unverified serve")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "runs": times, "median": median}, indent=2) + "\n")
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
