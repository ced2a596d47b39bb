#!/usr/bin/env python3
"""Boot storm: N nodes power on at once; how long until every one holds its verified chain, and what it costs.

    python3 bench/bench_storm.py                                   # 100 nodes, the three set-ups, ~8 min
    python3 bench/bench_storm.py --nodes 50,100,200 --base-mb 192  # the issue's three sizes
    python3 bench/bench_storm.py --nodes 20 --base-mb 32 --layers-mb 4,2,1   # a quick look

Each node is a process in its own network namespace running stage1's real code under stage1's interpreter
(bench/peers/storm_node.py: GET and verify the signed manifest, rank the mirrors, fetch_layers with sha256 on
a second thread, post the boot event), released all at once. The network (bench/peers/stormnet.py): racks of
nodes, a rack mirror per rack, the origin behind a router; the origin's and each mirror's uplink shaped to
--rate (HTB; 1 Gbit/s). Three set-ups, one after the other, on the same network and the same bytes:

  nginx       the baseline: nginx on the origin host serving the chain as one image (no credential, no manifest)
  layerbootd  every node from layerbootd on the origin host
  mirrors     layerbootd plus one nginx rack mirror per rack ('layerboot mirror nginx-config', cold cache);
              each rack's profile lists its own mirror first, the others next, the origin last

For each: time until every node booted, per-node p50/p99, the servers' CPU seconds and uplink egress, and the
ratios against nginx measured in the same run; the issue's targets for the mirrors set-up (origin egress at
most 0.3x nginx's, every node booted, all booted no later than nginx) are checked. Needs root. Figures and
method: bench/README.md, "Boot storms".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerboot.errors import LayerbootError  # noqa: E402
from layerboot.log import run_main  # noqa: E402
from layerboot.server.auth.boottoken import open_boot_tokens  # noqa: E402
from layerboot.server.db import connect  # noqa: E402
from layerboot.server.nodes import Registry  # noqa: E402

from peers.storm import (IMAGE_PORT, MIRROR_PORT, STORM_PROFILE, NodeJob, Storm, build_chain,  # noqa: E402
                         run_storm, start_layerbootd, start_mirror, start_nginx_image, warm)
from peers.stormnet import PREFIX, StormNet  # noqa: E402

SETUPS = ("nginx", "layerbootd", "mirrors")
EGRESS_TARGET = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_storm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="100", help="node counts, comma separated (default %(default)s)")
    parser.add_argument("--racks", type=int, default=2, help="racks, one mirror each (default %(default)s)")
    parser.add_argument("--base-mb", type=int, default=160, help="the base layer, MiB (default %(default)s)")
    parser.add_argument("--layers-mb", default="16,8,4", help="overlay layers above it, MiB (default %(default)s)")
    parser.add_argument("--rate", default="1gbit", help="each server uplink, tc units (default %(default)s)")
    parser.add_argument("--slice", default="8m", help="the mirrors' cache slice (default %(default)s)")
    parser.add_argument("--setups", default=",".join(SETUPS), help="which set-ups, in order (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/layerboot-bench-storm"))
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (store, logs) afterwards")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        args.counts = [int(n) for n in args.nodes.split(",")]
        args.layer_sizes = tuple(int(n) for n in args.layers_mb.split(",") if n)
    except ValueError:
        parser.error("--nodes and --layers-mb are comma-separated integers")
    args.setups = [s for s in args.setups.split(",") if s]
    if not set(args.setups) <= set(SETUPS) or not args.setups:
        parser.error(f"--setups: choose from {', '.join(SETUPS)}")
    if min(args.counts) < 1 or args.racks < 1 or args.base_mb < 1 or max(args.counts) > 240 * args.racks:
        parser.error("--nodes, --racks and --base-mb must be positive, at most 240 nodes per rack")
    return args


def mac(setup: int, index: int) -> str:
    return f"52:54:{setup:02x}:00:{index >> 8:02x}:{index & 0xff:02x}"


def jobs_for(setup: str, hosts: list, chain, origin_url: str, image_url: str, tokens, registry: Registry) -> list:
    jobs = []
    number = SETUPS.index(setup) + 1
    for index, host in enumerate(hosts):
        if setup == "nginx":
            job = {"mode": "image", "server": image_url, "timeout": 30.0, "mac": mac(number, index),
                   "image": {"digest": chain.image_digest, "size": chain.image.stat().st_size, "path": "image.bin"}}
        else:
            profile = STORM_PROFILE if setup == "layerbootd" else f"{STORM_PROFILE}-rack{host.rack}"
            node = mac(number, index)
            if registry.find(node) is None:
                registry.register(node, profile)
            job = {"mode": "layerboot", "server": origin_url, "mac": node, "token": tokens.mint(node),
                   "profile": profile, "key": str(chain.paths.public_key), "timeout": 30.0}
        jobs.append(NodeJob(host, job))
    return jobs


def describe(storm: Storm, baseline: Storm | None, chain_size: int) -> list[str]:
    s = storm.summary()
    origin_cpu = s["server_cpu_s"].get("origin", 0.0)
    egress = storm.egress.get("origin", 0)
    line = (f"  {storm.name:<11} booted {s['booted']}/{storm.nodes}  all booted {s['all_booted_s']:7.2f} s  "
            f"p50 {s['p50_s']:6.2f} s  p99 {s['p99_s']:6.2f} s  origin CPU {origin_cpu:6.1f} s  "
            f"origin egress {egress / 1e6:8.1f} MB")
    mirrors = {k: v for k, v in storm.egress.items() if k.startswith("mirror")}
    if mirrors:
        line += "  mirrors " + ", ".join(f"{v / 1e6:.0f} MB ({s['server_cpu_s'].get(k, 0.0):.1f} s CPU)"
                                         for k, v in sorted(mirrors.items()))
    lines = [line]
    if baseline is not None and baseline is not storm and baseline.egress.get("origin"):
        lines.append(f"  {'':<11} vs nginx: time {storm.wall / baseline.wall:.2f}x, origin egress "
                     f"{egress / baseline.egress['origin']:.3f}x, origin CPU "
                     f"{origin_cpu / max(baseline.cpu.get('origin', 0.0), 0.01):.2f}x")
    if s["errors"]:
        lines.append(f"  {'':<11} failures: {'; '.join(s['errors'])}")
    for event in storm.events:
        lines.append(f"  {'':<11} {event}")
    return lines


def bench(args: argparse.Namespace) -> dict:
    if os.geteuid() != 0:
        raise LayerbootError("bench_storm.py needs root (network namespaces, tc)")
    for tool in ("nginx", "curl", "tc", "ss"):
        if shutil.which(tool) is None:
            raise LayerbootError(f"{tool} is missing", hint="bash .ci/install")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    mirror_urls = [f"http://{PREFIX}.{rack}.2:{MIRROR_PORT}" for rack in range(1, args.racks + 1)]
    print(f"building the chain: base {args.base_mb} MiB + layers {', '.join(map(str, args.layer_sizes))} MiB",
          flush=True)
    chain = build_chain(work, args.base_mb, args.layer_sizes, args.racks, mirror_urls)
    print(f"chain {chain.size / 1e6:.1f} MB in {len(chain.digests)} layers; load {os.getloadavg()[0]:.1f}",
          flush=True)
    report: dict = {"chain_bytes": chain.size, "layers": chain.sizes, "rate": args.rate, "racks": args.racks,
                    "load_start": os.getloadavg(), "runs": []}
    registry = Registry(connect(chain.paths.database))
    tokens = open_boot_tokens(chain.paths.boot_token_key, 86400)
    with StormNet(args.racks, rate=args.rate) as net:
        report["delays"] = net.delays
        origin_host = net.origin()
        mirror_hosts = [net.mirror(rack) for rack in range(1, args.racks + 1)]
        hosts = net.nodes(max(args.counts))
        origin = start_layerbootd(work, chain, origin_host, mirror_urls)
        image = start_nginx_image(work, chain, origin_host)
        servers = [origin, image]
        try:
            warm(origin, chain, hosts[0])
            for count in args.counts:
                print(f"\n{count} nodes, {args.racks} racks, uplinks {args.rate}, chain {chain.size / 1e6:.0f} MB "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
                storms: dict[str, Storm] = {}
                for setup in args.setups:
                    mirrors = []
                    if setup == "mirrors":
                        mirrors = [start_mirror(work, origin.url, host, host.rack, slice_size=args.slice)
                                   for host in mirror_hosts]
                    watched = {"origin": image if setup == "nginx" else origin}
                    watched.update({f"mirror{m.host.rack}": m for m in mirrors})
                    jobs = jobs_for(setup, hosts[:count], chain, origin.url,
                                    f"http://{origin_host.ip}:{IMAGE_PORT}", tokens, registry)
                    try:
                        storm = run_storm(f"{setup}-{count}", jobs, watched, work)
                    finally:
                        for server in mirrors:
                            server.stop()
                    storm.name = setup
                    storms[setup] = storm
                    for line in describe(storm, storms.get("nginx"), chain.size):
                        print(line, flush=True)
                report["runs"].append(verdict(count, storms, chain.size, args.racks))
        finally:
            for server in servers:
                server.stop()
    report["load_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return report


def verdict(count: int, storms: dict[str, Storm], chain_size: int, racks: int) -> dict:
    run = {"nodes": count, "setups": {name: storm.summary() for name, storm in storms.items()}}
    nginx, mirrors = storms.get("nginx"), storms.get("mirrors")
    if nginx is not None and mirrors is not None and nginx.egress.get("origin"):
        egress = mirrors.egress["origin"] / nginx.egress["origin"]
        predicted = (racks * chain_size) / (count * chain_size)
        run["mirrors_vs_nginx"] = {"origin_egress": round(egress, 4), "predicted_egress": round(predicted, 4),
                                   "time": round(mirrors.wall / nginx.wall, 3)}
        checks = [(f"origin egress {egress:.3f}x nginx's (target <= {EGRESS_TARGET}x; predicted {racks} chains / "
                   f"{count} = {predicted:.3f}x)", egress <= EGRESS_TARGET),
                  (f"every node booted ({len(mirrors.ok)}/{count})", len(mirrors.ok) == count),
                  (f"all booted in {mirrors.wall:.1f} s against nginx's {nginx.wall:.1f} s "
                   f"({mirrors.wall / nginx.wall:.2f}x, target <= 1.0x)", mirrors.wall <= nginx.wall)]
        print("  targets (mirrors against nginx):")
        for text, ok in checks:
            print(f"    {'MET ' if ok else 'MISSED'} {text}")
        run["targets_met"] = all(ok for _, ok in checks)
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        started = time.monotonic()
        report = bench(args)
        report["seconds"] = round(time.monotonic() - started, 1)
        print(f"\ndone in {report['seconds']:.0f} s; load {report['load_start'][0]:.1f} at the start, "
              f"{report['load_end'][0]:.1f} at the end; netem delays: {'yes' if report['delays'] else 'no (kernel)'}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return 0 if all(run.get("targets_met", True) for run in report["runs"]) else 1

    return run_main(body, debug=args.debug, prog="bench_storm.py")


if __name__ == "__main__":
    sys.exit(main())
