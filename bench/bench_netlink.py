#!/usr/bin/env python3
"""The pyroute2 question: stage1's own rtnetlink against pyroute2, busybox ``ip`` and the old ioctls, in one run.

    python3 bench/bench_netlink.py [--runs 5] [--no-qemu] [--json FILE]      # as root

Every approach runs the same steps (bench/netlink_ops.py: NIC up, MTU, VLAN, IPv4 + IPv6 address, IPv4 + IPv6
default route, read the addresses back, an active-backup bond) in a fresh Debian python3.11 process, so its
import cost is paid each time as at boot. Twice: on this host's CPU (in a network namespace, on veth pairs: the
host kernel has no VLAN or bonding) and under QEMU TCG, as stage1 runs (Debian's cloud kernel, a throwaway
initramfs holding python3.11 with exactly the modules the four approaches import, compiled as unchecked-hash
.pyc like stage1's image; ``-accel tcg -cpu qemu64,+rdrand``, 1 vCPU). Runs are interleaved across approaches;
medians are printed with the ratios against stage1's netlink, and what each approach would add to the initrd
(modules, bytes of .pyc and shared libraries, zstd-compressed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerboot.build.busybox_tree import find_busybox  # noqa: E402
from layerboot.build.client_layer import _libraries  # noqa: E402
from layerboot.build.initrd import EXTRA_MODULES, PYTHON, STAGE1_DIR  # noqa: E402
from layerboot.build.kernel import fetch_kernel  # noqa: E402
from layerboot.build.qemu import NodeConfig, QemuNode  # noqa: E402
from layerboot.errors import LayerbootError  # noqa: E402
from layerboot.log import run_main  # noqa: E402
from layerboot.run import run  # noqa: E402

APPROACHES = ("stage1", "pyroute2", "busybox", "ioctl")
OPS = ROOT / "bench" / "netlink_ops.py"
MODULES = ("virtio_pci", "virtio_net", "8021q", "bonding")
# Imports everything the four approaches load; prints {module: file} for the payload.
COLLECT = r"""
import importlib, json, sys
sys.path[:0] = sys.argv[1:3]
for name in sys.argv[3].split(","):   # what build/initrd.py ships for lazily imported paths (encodings.ascii, ...)
    importlib.import_module(name)
import stage1.dhcp6, stage1.net, stage1.net6, stage1.netcmd, stage1.netlink, stage1.netstate
stage1_set = set(sys.modules)
import fcntl, pyroute2
from pyroute2 import IPRoute
files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
print(json.dumps({"files": {n: f for n, f in files.items() if f}, "stage1": sorted(stage1_set)}))
"""
GUEST_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci virtio_net 8021q; do modprobe $m; done
modprobe bonding max_bonds=0
n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
for run in $(seq 1 RUNS); do for a in APPROACHES; do
  /usr/bin/python3.11 -S -I -B /opt/netlink_ops.py $a $run eth0 /opt/layerboot /opt/site --vlan --bond
done; done
echo BENCH-DONE
poweroff -f
"""


def payload(tree: Path) -> dict:
    """stage1, pyroute2 and the stdlib they import, as unchecked-hash .pyc under ``tree``; returns what each side
    adds to an initrd: modules, bytes (.pyc and extension modules), zstd -15 of those, shared libraries."""
    import pyroute2
    import zstandard

    site = Path(pyroute2.__file__).resolve().parent.parent
    shutil.copytree(STAGE1_DIR, tree / "opt/layerboot/stage1", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(site / "pyroute2", tree / "opt/site/pyroute2", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(OPS, tree / "opt/netlink_ops.py")
    found = json.loads(run([PYTHON, "-S", "-I", "-B", "-c", COLLECT, tree / "opt/layerboot", tree / "opt/site",
                            ",".join(EXTRA_MODULES)], timeout=120).text)
    sides: dict[str, list[Path]] = {"stage1": [], "pyroute2": []}
    for name, path in found["files"].items():
        source = Path(path)
        if not str(source).startswith(str(tree)):   # the stdlib: copy it in
            target = tree / str(source).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            source = target
        sides["stage1" if name in found["stage1"] else "pyroute2"].append(source)
    run([PYTHON, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", "-s", str(tree),
         "-p", "/", tree], timeout=600)

    def shipped(source: Path) -> Path:   # what an initrd carries for a module: its .pyc, or the .so itself
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"
        return pyc if source.suffix == ".py" else source

    figures: dict = {"modules": {}, "bytes": {}, "zstd": {}}
    for side, files in sides.items():
        data = b"".join(shipped(f).read_bytes() for f in sorted(files))
        figures["modules"][side], figures["bytes"][side] = len(files), len(data)
        figures["zstd"][side] = len(zstandard.ZstdCompressor(level=15).compress(data))
    extensions = {side: [Path("/") / f.relative_to(tree) for f in files if f.suffix == ".so"]
                  for side, files in sides.items()}
    base_libs = _libraries([Path(PYTHON), *extensions["stage1"]])
    all_libs = _libraries([Path(PYTHON), *extensions["stage1"], *extensions["pyroute2"]])
    for library in [*all_libs, Path(PYTHON)]:
        target = tree / str(library).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, target)
    figures["pyroute2_libraries"] = sorted(str(p) for p in all_libs - base_libs)
    figures["pyroute2_library_bytes"] = sum(p.stat().st_size for p in all_libs - base_libs)
    return figures


def host_runs(tree: Path, runs: int) -> list[dict]:
    ns = f"lbbench{os.getpid()}"
    run(["ip", "netns", "add", ns])
    results = []
    try:
        for r in range(1, runs + 1):
            for a in APPROACHES:
                nic = f"h{r}{a[:2]}"
                run(["ip", "-n", ns, "link", "add", nic, "type", "veth", "peer", "name", f"{nic}p"])
                out = run(["ip", "netns", "exec", ns, PYTHON, "-S", "-I", "-B", tree / "opt/netlink_ops.py", a,
                           str(r), nic, tree / "opt/layerboot", tree / "opt/site"], timeout=120).text
                results.append(_bench_line(out))
    finally:
        run(["ip", "netns", "del", ns], check=False)
    return results


def _bench_line(text: str) -> dict:
    return json.loads(next(line for line in text.splitlines() if line.startswith("BENCH "))[6:])


def guest_runs(tree: Path, runs: int, work: Path) -> list[dict]:
    kernel = fetch_kernel()
    (tree / "bin").mkdir(exist_ok=True)
    shutil.copy2(find_busybox(), tree / "bin/busybox")
    (tree / "init").write_text(GUEST_INIT.replace("RUNS", str(runs)).replace("APPROACHES", " ".join(APPROACHES)))
    (tree / "init").chmod(0o755)
    moddir = tree / "lib/modules" / kernel.version
    deps = {Path(p).name.removesuffix(".ko"): [p, *rest.split()] for p, _, rest in
            (line.partition(":") for line in (kernel.moddir / "modules.dep").read_text().splitlines())}
    for rel in {p for m in MODULES for p in deps[m]} | {"modules.dep"}:
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel.moddir / rel, moddir / rel)
    for d in ("proc", "sys", "dev"):
        (tree / d).mkdir(exist_ok=True)
    listing = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))) + "\n"
    archive = run(["cpio", "-o", "-H", "newc", "--quiet"], input=listing.encode(), cwd=tree, timeout=300).stdout
    image = work / "bench-initrd.img"
    image.write_bytes(run(["gzip", "-1", "-n"], input=archive, timeout=300).stdout)
    config = NodeConfig(kernel=kernel.image, initrd=image, append="console=ttyS0 quiet no_timer_check panic=-1",
                        memory_mb=1024)
    with QemuNode(config, work / "serial.log") as node:
        node.wait_for(r"^BENCH-DONE", timeout=600 * runs, fail=(r"Kernel panic",))
        lines = [line.text for line in node.lines if line.text.startswith("BENCH {")]
    if len(lines) != runs * len(APPROACHES):
        tail = "\n".join(node.text().splitlines()[-30:])
        raise LayerbootError(f"the guest printed {len(lines)} of {runs * len(APPROACHES)} results:\n{tail}")
    return [json.loads(line[6:]) for line in lines]


def medians(results: list[dict]) -> dict:
    table = {}
    for a in APPROACHES:
        mine = [r for r in results if r["approach"] == a]
        if not mine:
            continue
        steps = {s: (None if any(r["steps"][s] is None for r in mine) else
                     statistics.median(r["steps"][s] for r in mine)) for s in mine[0]["steps"]}
        table[a] = {"import": statistics.median(r["import"] for r in mine), "steps": steps,
                    "ops": sum(v for v in steps.values() if v is not None), "modules": mine[0]["modules"],
                    "runs": len(mine)}
    return table


def report(title: str, table: dict) -> list[str]:
    base = table["stage1"]
    lines = [f"## {title}", "", "| approach | import (modules) | steps it can do | those steps | import + steps vs "
             "stage1 doing the same steps |",
             "|---|---|---|---|---|"]
    for a, row in table.items():
        can = [s for s, v in row["steps"].items() if v is not None]
        same = sum(v for s, v in base["steps"].items() if s in can and v is not None)
        ratio = (row["import"] + row["ops"]) / (base["import"] + same) if base["import"] + same else 0
        lines.append(f"| {a} | {row['import'] * 1000:.1f} ms ({row['modules']}) | {len(can)}/{len(row['steps'])}"
                     f" | {row['ops'] * 1000:.1f} ms | {ratio:.2f}x |")
    lines.append("")
    lines.append("per step, ms: " + "; ".join(
        f"{a}: " + ", ".join(f"{s} {v * 1000:.1f}" if v is not None else f"{s} -" for s, v in row["steps"].items())
        for a, row in table.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per approach (default 5)")
    parser.add_argument("--no-qemu", action="store_true", help="host CPU only")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="layerboot-bench-netlink-") as tmp:
        tree = Path(tmp) / "root"
        sizes = payload(tree)
        figures = {"load": load, "sizes": sizes, "host": medians(host_runs(tree, args.runs))}
        if not args.no_qemu:
            figures["tcg"] = medians(guest_runs(tree, args.runs, Path(tmp)))
    out = [f"load average at start {load:.1f}; {args.runs} runs per approach, medians", ""]
    out += report("host CPU (network namespace, veth; no VLAN/bond in this kernel)", figures["host"])
    if "tcg" in figures:
        out += [""] + report("QEMU TCG (Debian cloud kernel, 1 vCPU)", figures["tcg"])
    out += ["", f"initrd cost: stage1's net stage with the interpreter's start-up imports {sizes['modules']['stage1']} modules, "
                f"{sizes['bytes']['stage1'] / 1e3:.0f} kB of .pyc/.so ({sizes['zstd']['stage1'] / 1e3:.0f} kB zstd "
                f"-15); pyroute2 adds {sizes['modules']['pyroute2']} modules, {sizes['bytes']['pyroute2'] / 1e6:.2f} MB "
                f"({sizes['zstd']['pyroute2'] / 1e6:.2f} MB zstd -15) and "
                f"{sizes['pyroute2_library_bytes'] / 1e6:.2f} MB of shared libraries "
                f"({', '.join(Path(p).name for p in sizes['pyroute2_libraries'])})"]
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, debug="--debug" in sys.argv, prog="bench_netlink.py"))
