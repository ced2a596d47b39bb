#!/usr/bin/env python3
"""Benchmark layerbootd serving layers against nginx serving the same store objects, in the same run.

    python3 bench/bench_serve.py [--clients 20] [--size-mb 200] [--repeat 3] [--workdir /var/tmp/layerboot-bench-serve]

Builds a store with one profile whose kernel slot holds a --size-mb object of random bytes and --clients nodes of
that profile (each curl downloads as its own node, with its own token, so layerbootd's default limits apply),
starts layerbootd and nginx (nginx-light, a generated config: sendfile, loopback, serving the store's objects/
dir) on free loopback ports, warms the page cache, then for each server runs --clients concurrent ``curl``
downloads of the object (to /dev/null) --repeat times, alternating servers. Prints each run's aggregate
throughput (bytes of all clients / wall time from first start to last finish), the best run of each, and the
ratio layerbootd / nginx; the target is >= 0.8.

layerbootd checks a node token and the profile's digest set on every request; nginx serves the files with no
check at all. curl (C) is the client so the clients do not eat the CPU the servers need.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import generate_key
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.ports import free_port, wait_listening
from layerboot.run import Process, devnull, require_tool
from layerboot.server.db import connect
from layerboot.server.nodes import Registry

TARGET_RATIO = 0.8
MAC_PREFIX = "52:54:00:00"

NGINX_CONF = """\
worker_processes auto;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location /objects/ {{
            alias {objects}/;
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
    }}
}}
"""


def build_store(work: Path, size_mb: int, nodes: int) -> tuple[Paths, str, list[str]]:
    """A store with profile 'bench' whose kernel is the big object, and ``nodes`` nodes of it; returns
    (paths, digest, node tokens): each client downloads as its own node, as nodes do (the server's default
    per-node download limit applies)."""
    paths = Paths(work / "store")
    store = Store(paths)
    store.init()
    generate_key(paths.signing_key, paths.public_key)
    big = work / "layer.bin"
    with open(big, "wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1 << 20))
    base_tree = work / "base"
    (base_tree / "etc").mkdir(parents=True)
    (base_tree / "etc" / "os-release").write_text("bench\n")
    base = store.import_tree(base_tree, kind="base", all_root=True).digest
    digest = store.import_boot_file(big, kind="kernel").digest
    big.unlink()
    Profiles(store).create("bench", base, kernel=digest)
    registry = Registry(connect(paths.database))
    tokens = [registry.register(f"{MAC_PREFIX}:{n // 256:02x}:{n % 256:02x}", "bench")[1] for n in range(nodes)]
    assert all(tokens)
    return paths, digest, tokens  # type: ignore[return-value]


def download_run(url: str, clients: int, headers: list[list[str]], expected: int) -> float:
    """Start ``clients`` curls at once (client n sends headers[n], if any); returns aggregate bytes/second."""
    curl = require_tool("curl")
    argv = [curl, "-s", "-f", "-o", "/dev/null", "-w", "%{size_download}"]
    start = time.monotonic()
    procs = [Process([*argv, *(a for h in (headers[n] if headers else []) for a in ("-H", h)), url],
                     stderr=devnull()) for n in range(clients)]
    total = 0
    for proc in procs:
        rc = proc.wait(timeout=600)
        out = proc.stdout.read().decode() if proc.stdout else ""
        proc.terminate()
        if rc != 0 or int(out or 0) != expected:
            raise SystemExit(f"a download from {url} failed (curl status {rc}, {out or 0} of {expected} bytes)")
        total += int(out)
    return total / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/layerboot-bench-serve"))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    nginx = require_tool("nginx", package="nginx-light")
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    print(f"building a store with a {args.size_mb} MB object in {args.workdir} ...", flush=True)
    paths, digest, tokens = build_store(args.workdir, args.size_mb, args.clients)
    size = paths.object(digest).stat().st_size

    lb_port, ng_port = free_port(), free_port()
    config = args.workdir / "layerboot.toml"
    config.write_text(f'[store]\nroot = "{paths.root}"\n[server]\nlisten = "127.0.0.1"\nport = {lb_port}\n'
                      'access_log = false\n')   # like nginx's 'access_log off' below
    (args.workdir / "nginx.conf").write_text(NGINX_CONF.format(work=args.workdir, port=ng_port, objects=paths.objects))
    with open(args.workdir / "layerbootd.log", "wb") as lb_log, open(args.workdir / "nginx.log", "wb") as ng_log:
        daemon = Process([sys.executable, "-m", "layerboot.server.main", "--config", config], stdout=lb_log,
                         stderr=lb_log)
        server = Process([nginx, "-c", args.workdir / "nginx.conf", "-p", args.workdir], stdout=ng_log, stderr=ng_log)
    results: dict[str, list[float]] = {"layerbootd": [], "nginx": []}
    try:
        try:
            wait_listening(lb_port, daemon, "layerbootd", log=args.workdir / "layerbootd.log")
            wait_listening(ng_port, server, "nginx", log=args.workdir / "nginx.log")
        except LayerbootError as err:
            raise SystemExit(f"bench_serve: {err}") from None
        with open(paths.object(digest), "rb") as handle:   # warm the page cache for both
            while handle.read(1 << 24):
                pass
        targets = {
            "layerbootd": (f"http://127.0.0.1:{lb_port}/objects/{digest}",
                           [[f"Authorization: Bearer {token}"] for token in tokens]),
            "nginx": (f"http://127.0.0.1:{ng_port}/objects/{digest}", []),
        }
        for name, (url, headers) in targets.items():   # one warm-up round each
            download_run(url, 2, headers, size)
        for round_number in range(args.repeat):
            for name, (url, headers) in targets.items():
                rate = download_run(url, args.clients, headers, size)
                results[name].append(rate)
                print(f"run {round_number + 1}: {name:10s} {args.clients} x {size / 1e6:.0f} MB: "
                      f"{rate / 1e6:8.0f} MB/s aggregate", flush=True)
    finally:
        daemon.terminate()
        server.terminate()
    best = {name: max(rates) for name, rates in results.items()}
    median = {name: statistics.median(rates) for name, rates in results.items()}
    ratio = best["layerbootd"] / best["nginx"]
    print(f"\nbest of {args.repeat}: layerbootd {best['layerbootd'] / 1e6:.0f} MB/s, nginx {best['nginx'] / 1e6:.0f} MB/s")
    print(f"median: layerbootd {median['layerbootd'] / 1e6:.0f} MB/s, nginx {median['nginx'] / 1e6:.0f} MB/s "
          f"({median['layerbootd'] / median['nginx']:.2f}x)")
    print(f"ratio layerbootd / nginx: {ratio:.2f}x (target >= {TARGET_RATIO}x): "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"clients": args.clients, "size": size, "runs": results, "best": best, "median": median,
                                         "ratio": ratio}, indent=2) + "\n")
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
