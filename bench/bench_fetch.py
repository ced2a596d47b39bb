#!/usr/bin/env python3
"""Fetch benchmark: stage1's download-and-verify path against curl, and where its time goes, in one run.

    python3 bench/bench_fetch.py [--size-mb 1024] [--runs 3]                 # the host's CPU
    python3 bench/bench_fetch.py --guest [--size-mb 256] [--cpu qemu64,+rdrand]   # inside a QEMU TCG guest

Host mode serves one random --size-mb layer from nginx (nginx-light, sendfile, loopback) and, interleaved over
--runs rounds, times ``curl -s -o`` into a tmpfs against stage1's own ``fetch_layer`` (run by stage1's
interpreter, /usr/bin/python3.11 -SIB, from initrd/stage1: receive with ``recv_into``, write, SHA-256, verify
against the signed size and digest) into the same tmpfs, with the hash on a second thread and inline;
``layerboot.verify=blocks``'s path (the layer received and written without SHA-256, its 1/128-size tree fetched
and hashed; the dm-verity attach that follows cannot run on a host kernel without dm-verity, its in-guest cost
is in bench/README.md); and the steps alone: receive only, receive + write, SHA-256 engines in memory. Prints
best and median of each and the throughput ratio stage1 / curl (target >= 0.8), with the load average (the
machine is shared).

Guest mode repacks layerboot's initrd with a probe as /init (bench/peers/fetch_probe.py, plus the kernel's
AF_ALG and dm-verity modules and veritysetup), boots it under QEMU TCG (1 vCPU, the boot benchmark's flags
unless --cpu) and runs the same steps there, plus busybox wget (live-boot's fetch) and the ways to check a
cached layer before use: a full re-hash, fs-verity (enable once, measure per boot, cold read through it) and
dm-verity (veritysetup format once, open per boot, cold read through it), on an ext4 disk made with -O verity.

Needs root (tmpfs and loop mounts, QEMU). See bench/README.md, "Fetching layers".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerboot.errors import LayerbootError  # noqa: E402
from layerboot.log import run_main  # noqa: E402
from layerboot.ports import free_port, wait_listening  # noqa: E402
from layerboot.run import Process, require_tool, run, tool_path  # noqa: E402

from bench_serve import NGINX_CONF  # noqa: E402
from layerboot.overlays.verity import merkle_tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "peers" / "fetch_probe.py"
PYTHON = "/usr/bin/python3.11"           # stage1's interpreter (build/initrd.py)
TARGET = 0.8
GUEST_IP = "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"
# Kernel modules the probe guest loads by path (insmod, in this order) on top of what the initrd has.
GUEST_MODULES = ("crypto/af_alg.ko", "crypto/algif_hash.ko", "drivers/md/dm-mod.ko", "drivers/md/dm-bufio.ko",
                 "lib/reed_solomon/reed_solomon.ko", "drivers/md/dm-verity.ko")
_PROBE = re.compile(r"^(PROBE(?:-FAILED|-INFO)?) (.*)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_fetch.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guest", action="store_true", help="measure inside a QEMU TCG guest instead of the host")
    parser.add_argument("--size-mb", type=int, help="layer size in MiB (default 1024 on the host, 256 in a guest)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (host mode)")
    parser.add_argument("--cpu", default="qemu64,+rdrand", help="QEMU -cpu for --guest (default %(default)s)")
    parser.add_argument("--mem", type=int, default=0, help="guest memory in MiB (default: 3x the layer + 512)")
    parser.add_argument("--initrd", type=Path, help="--guest: probe this layerboot initrd (e.g. one built from an "
                                                      "older tree) instead of building this tree's")
    parser.add_argument("--steps", help="--guest: only these probe steps, ';'-separated (peers/fetch_probe.py), "
                                         "with {url} {digest} {size} {root} filled in")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/layerboot-bench-fetch"))
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    args.size_mb = args.size_mb or (256 if args.guest else 1024)
    if args.runs < 1 or args.size_mb < 1:
        parser.error("--runs and --size-mb must be positive")
    return args


def make_layer(path: Path, size_mb: int) -> str:
    """A file of random bytes; returns its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size_mb):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


class Nginx:
    """nginx serving ``objects`` on a free loopback port (the same configuration bench_serve.py uses)."""

    def __init__(self, work: Path, objects: Path) -> None:
        self.work, self.port = work, free_port()
        (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, port=self.port, objects=objects))
        self.log = work / "nginx.log"
        with open(self.log, "wb") as log:
            self.process = Process([require_tool("nginx", package="nginx-light"), "-c", work / "nginx.conf",
                                    "-p", work], stdout=log, stderr=log)

    def __enter__(self) -> "Nginx":
        wait_listening(self.port, self.process, "nginx", log=self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()


def probe_argv(*step: object) -> list[str]:
    return [PYTHON, "-S", "-I", "-B", str(PROBE), str(REPO / "initrd"), *(str(s) for s in step)]


def parse_probe(text: str) -> tuple[dict[str, tuple[float, int, str]], list[str]]:
    """PROBE lines -> {step: (seconds, bytes, detail)} (a repeated step keeps its first) and failure lines."""
    found: dict[str, tuple[float, int, str]] = {}
    failed = []
    for line in text.splitlines():
        match = _PROBE.match(line.split("] ", 1)[-1].strip())
        if not match:
            continue
        kind, rest = match.groups()
        if kind == "PROBE-FAILED":
            failed.append(rest)
        elif kind == "PROBE":
            name, seconds, size, *detail = rest.split(" ", 3) + [""]
            if name in found:                                 # a step run again: name its repeats apart
                name = f"{name}#{sum(1 for key in found if key.split('#')[0] == name) + 1}"
            found[name] = (float(seconds), int(size), detail[0].strip())
    return found, failed


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child) and output of one command."""
    started, cpu = time.monotonic(), _children_cpu()
    result = run(argv, timeout=900)
    return time.monotonic() - started, _children_cpu() - cpu, result.text


def host_bench(args: argparse.Namespace) -> dict:
    for tool, package in ((PYTHON, "python3-minimal"),):
        if not Path(tool).is_file():
            raise LayerbootError(f"{tool} is missing", hint=f"apt-get install {package}")
    curl = require_tool("curl")
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    (work / "www").mkdir(parents=True)
    dest = work / "dest"
    dest.mkdir()
    size = args.size_mb << 20
    print(f"making a {args.size_mb} MiB layer in {work} ...", flush=True)
    digest = make_layer(work / "www" / "layer", args.size_mb)
    tree = merkle_tree(work / "www" / "layer")             # layerboot.verify=blocks: the layer's signed tree
    (work / "www" / "tree").write_bytes(tree.tree)
    tree_digest = hashlib.sha256(tree.tree).hexdigest()
    run(["mount", "-t", "tmpfs", "-o", f"size={2 * size + (64 << 20)}", "tmpfs", dest])
    rounds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        with Nginx(work, work / "www") as nginx:
            url = f"http://127.0.0.1:{nginx.port}/objects/layer"
            run([curl, "-s", "-o", "/dev/null", url])                     # warm the page cache
            steps = {
                "curl -o tmpfs": [curl, "-s", "-f", "-o", dest / "curl", url],
                "stage1 fetch (hash thread)": probe_argv("fetch", url, digest, size, dest, "thread"),
                "stage1 fetch (hash inline)": probe_argv("fetch", url, digest, size, dest, "inline"),
                # the dm attach that follows cannot run here (no dm-verity in this host's kernel): README figures
                "stage1 fetch, verify=blocks": probe_argv("fetch-blocks", url, digest, size, dest,
                                                          url.replace("/layer", "/tree"), tree_digest,
                                                          len(tree.tree), tree.root),
                "receive only": probe_argv("receive", url),
                "receive + write": probe_argv("receive-write", url, dest / "rw"),
                "sha256 openssl (memory)": probe_argv("hash", "openssl", size),
                "sha256 python (memory)": probe_argv("hash", "python", size),
                # checking a cached layer (page-cached here: the CPU's part): a full re-hash per boot, or
                # building fs-verity's / dm-verity's Merkle tree once (the kernel's own steps need a kernel
                # with fs-verity and dm-verity: --guest measures those)
                "re-hash a cached layer": probe_argv("rehash", work / "www" / "layer"),
            }
            if tool_path("fsverity"):
                steps["fs-verity tree (user space)"] = ["fsverity", "digest", "--hash-alg=sha256",
                                                        "--block-size=4096", work / "www" / "layer"]
            if tool_path("veritysetup"):
                steps["dm-verity tree (veritysetup)"] = ["veritysetup", "format", "--salt=-", work / "www" / "layer",
                                                         dest / "layer.hash"]
            for round_number in range(1, args.runs + 1):
                for name, argv in steps.items():
                    seconds, used, out = timed(argv)
                    found, failed = parse_probe(out)
                    if failed:
                        raise LayerbootError(f"{name}: {failed[0]}")
                    rounds.setdefault(name, []).append(seconds)
                    cpu.setdefault(name, []).append(used)
                    (dest / "curl").unlink(missing_ok=True)
                    (dest / "layer.hash").unlink(missing_ok=True)
                    detail = next(iter(found.values()))[2] if found else ""
                    print(f"  round {round_number}: {name:28} {seconds:6.2f} s {size / seconds / 1e6:7.0f} MB/s, "
                          f"CPU {used:5.2f} s {detail}  (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        run(["umount", dest], check=False)
    return {"size": size, "rounds": rounds, "cpu": cpu, "load": os.getloadavg()[0]}


def report_host(result: dict) -> list[str]:
    """Wall time (best, median) and CPU time (user + system, median) per step, and the ratios to curl.

    On a shared host the wall times mostly measure the CPU share a step got; CPU time per byte does not
    depend on it, so the CPU-time ratio is printed next to the throughput ratio.
    """
    size, rounds, cpu = result["size"], result["rounds"], result["cpu"]
    lines = [f"{'step':28} {'best':>7} {'median':>7} {'MB/s best':>9}  {'CPU median':>10}  (load {result['load']:.1f})"]
    for name, times in rounds.items():
        lines.append(f"{name:28} {min(times):6.2f}s {statistics.median(times):6.2f}s {size / min(times) / 1e6:9.0f}  "
                     f"{statistics.median(cpu[name]):9.2f}s")
    curl = rounds["curl -o tmpfs"]
    for name in ("stage1 fetch (hash thread)", "stage1 fetch (hash inline)", "stage1 fetch, verify=blocks"):
        best, median = min(curl) / min(rounds[name]), statistics.median(curl) / statistics.median(rounds[name])
        by_cpu = statistics.median(cpu["curl -o tmpfs"]) / statistics.median(cpu[name])
        verdict = "met" if best >= TARGET else "NOT met"
        lines.append(f"throughput {name} / curl: best {best:.2f}x, median {median:.2f}x (target >= {TARGET}x: "
                     f"{verdict}); curl's CPU time / stage1's: {by_cpu:.2f}x")
    return lines


# -- guest mode -----------------------------------------------------------------------------------------------
def repack_initrd(initrd: Path, kernel, out: Path, work: Path) -> Path:  # noqa: ANN001 - build.kernel.Kernel
    """layerboot's initrd with the probe as /init, the extra kernel modules, and veritysetup with its libraries."""
    tree = work / "initrd-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    zstd, cpio = require_tool("zstd"), require_tool("cpio")
    unpacked = run([zstd, "-dc", initrd], timeout=300).stdout
    run([cpio, "-id", "--quiet"], input=unpacked, cwd=tree)
    shutil.copyfile(PROBE, tree / "usr/lib/layerboot/fetch_probe.py")
    (tree / "init").write_text(f"#!{PYTHON} -SIB\nexec(compile(open('/usr/lib/layerboot/fetch_probe.py').read(), "
                               "'fetch_probe', 'exec'))\n")
    (tree / "probe-ko").mkdir()
    for index, rel in enumerate(GUEST_MODULES):
        shutil.copyfile(kernel.moddir / "kernel" / rel, tree / "probe-ko" / f"{index}-{Path(rel).name}")
    veritysetup = require_tool("veritysetup", package="cryptsetup-bin")
    shutil.copyfile(veritysetup, tree / "usr/sbin/veritysetup")
    (tree / "usr/sbin/veritysetup").chmod(0o755)
    for line in run(["ldd", veritysetup]).text.splitlines():
        if "=>" in line and "/" in line:
            library = line.split("=>")[1].split()[0]
            target = tree / library.lstrip("/")
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(library, target)
    names = run(["find", "."], cwd=tree).stdout
    archive = run([cpio, "-o", "-H", "newc", "--quiet"], input=names, cwd=tree, timeout=300).stdout
    out.write_bytes(run([zstd, "-q", "-3", "-c"], input=archive, timeout=300).stdout)
    shutil.rmtree(tree)
    return out


def verity_disk(path: Path, layer: Path, work: Path) -> str:
    """An ext4 image (-O verity, 4 KiB blocks) holding the layer twice and a dm-verity hash tree of the copy;
    returns that tree's root hash (veritysetup format runs in user space on the host)."""
    tree = work / "disk-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    shutil.copyfile(layer, tree / "layer")
    shutil.copyfile(layer, tree / "copy")
    output = run([require_tool("veritysetup", package="cryptsetup-bin"), "format", "--salt=-", tree / "copy",
                  tree / "copy.hash"], timeout=600).text
    root = next(line.split()[-1] for line in output.splitlines() if line.startswith("Root hash"))
    size = 3 * layer.stat().st_size + (64 << 20)
    with open(path, "wb") as image:
        image.truncate(size)
    run([require_tool("mkfs.ext4", package="e2fsprogs"), "-q", "-F", "-O", "verity", "-b", "4096", "-d", tree,
         path], timeout=600)
    shutil.rmtree(tree)
    return root


class CpuSampler:
    """CPU seconds of QEMU's vCPU thread ("CPU 0/TCG", named with -name debug-threads=on), sampled every 20 ms.

    Under TCG the vCPU thread's CPU time is the guest's work; unlike the guest's wall clock it hardly grows
    when other jobs on the shared host take the CPU away, so the guest steps are reported in both.
    """

    def __init__(self, pid: int, started: float) -> None:
        import threading

        self.pid, self.started = pid, started
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _vcpu_stat(self) -> Path | None:
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                if (task / "comm").read_text().startswith("CPU 0/"):
                    return task / "stat"
            except OSError:
                continue
        return None

    def _run(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        stat = None
        while not self._stop.wait(0.02):
            try:
                stat = stat or self._vcpu_stat()
                if stat is None:
                    continue
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                return
            self.samples.append((time.monotonic() - self.started, (int(fields[11]) + int(fields[12])) / ticks))

    def at(self, seconds: float) -> float:
        """vCPU seconds used by ``seconds`` after QEMU started (the last sample before it)."""
        before = [cpu for when, cpu in self.samples if when <= seconds]
        return before[-1] if before else 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def step_cpu(node, sampler: CpuSampler) -> list[float]:  # noqa: ANN001 - build.qemu.QemuNode
    """vCPU seconds of each PROBE step: between its line and the previous PROBE/PROBE-INFO line."""
    cpu, previous = [], None
    for line in node.lines:
        if line.text.startswith("PROBE-INFO"):
            previous = sampler.at(line.seconds)
        elif line.text.startswith("PROBE ") and previous is not None:
            now = sampler.at(line.seconds)
            cpu.append(now - previous)
            previous = now
    return cpu


def guest_steps(url: str, digest: str, size: int, root: str) -> list[str]:
    memory = min(size, 64 << 20)
    return [
        f"wget,{url},/run/w", f"receive,{url}", f"receive-write,{url},/run/rw",
        f"hash,python,{memory}", f"hash,openssl,{memory}", f"hash,kernel,{memory}",
        f"fetch,{url},{digest},{size},/run,inline",
        "drop-caches", "rehash,/mnt/layer",
        "drop-caches", "verity-enable,/mnt/layer",
        "drop-caches", "verity-measure,/mnt/layer",
        "drop-caches", "read,/mnt/layer",
        "drop-caches", "read,/mnt/copy",
        "drop-caches", "veritysetup-open,/mnt/copy,/mnt/copy.hash," + root,
        "drop-caches", "read,/dev/mapper/probe-verity",
        "veritysetup-format,/mnt/layer,/run/layer.hash",
    ]


def guest_bench(args: argparse.Namespace) -> dict:
    from layerboot.build.initrd import DEFAULT_CACHE as INITRD_CACHE
    from layerboot.build.initrd import build_initrd
    from layerboot.build.kernel import fetch_kernel
    from layerboot.build.qemu import NodeConfig, QemuNode
    from peers.cache import DEFAULT_CACHE
    from peers.layerboot import _signing_key

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    (work / "www").mkdir(parents=True)
    size = args.size_mb << 20
    kernel = fetch_kernel()
    if args.initrd:
        initrd = args.initrd
    else:
        _signing_key(DEFAULT_CACHE, work / "key" / "signing.key", work / "key" / "signing.pub")
        initrd = build_initrd(kernel, work / "key" / "signing.pub", work / "layerboot.img", cache=INITRD_CACHE).path
    probe_initrd = repack_initrd(initrd, kernel, work / "probe.img", work)
    print(f"making a {args.size_mb} MiB layer and a verity disk in {work} ...", flush=True)
    digest = make_layer(work / "www" / "layer", args.size_mb)
    root = verity_disk(work / "disk.img", work / "www" / "layer", work)
    mem = args.mem or 3 * args.size_mb + 512
    with Nginx(work, work / "www") as nginx:
        url = f"http://10.0.2.2:{nginx.port}/objects/layer"
        plan = args.steps.format(url=url, digest=digest, size=size, root=root) if args.steps else \
            ";".join(guest_steps(url, digest, size, root))
        append = (f"console=ttyS0 quiet no_timer_check probe.ip={GUEST_IP} probe.disk=/dev/vda "
                  f"probe.steps={plan}")
        config = NodeConfig(kernel=kernel.image, initrd=probe_initrd, append=append, memory_mb=mem,
                            disks=[work / "disk.img"], extra=["-cpu", args.cpu, "-name", "probe,debug-threads=on"])
        load = os.getloadavg()[0]
        print(f"booting the probe guest (-cpu {args.cpu}, {mem} MiB, load {load:.1f}) ...", flush=True)
        with QemuNode(config, work / "serial.log") as node:
            sampler = CpuSampler(node._process.pid, node.started)
            try:
                node.wait_for(r"^PROBE-DONE", timeout=3600, fail=(r"Kernel panic", r"Traceback"))
            finally:
                sampler.stop()
        text = node.text()
    found, failed = parse_probe(text)
    cpu = step_cpu(node, sampler)
    found = {name: (*value, cpu[index] if index < len(cpu) else None) for index, (name, value) in
             enumerate(found.items())}
    info = next((line.split("PROBE-INFO ", 1)[1] for line in text.splitlines() if "PROBE-INFO " in line), "")
    return {"size": size, "cpu": args.cpu, "info": info, "steps": found, "failed": failed,
            "load": [load, os.getloadavg()[0]], "serial": str(work / "serial.log")}


def report_guest(result: dict) -> list[str]:
    steps, size = result["steps"], result["size"]
    lines = [f"guest: {result['info']}; load {result['load'][0]:.1f} -> {result['load'][1]:.1f}",
             "wall: the guest's clock; vCPU: CPU seconds of QEMU's vCPU thread (the guest's work, load-proof)",
             f"{'step':24} {'wall s':>7} {'vCPU s':>7} {'vCPU ms/MB':>10} {'MB/s (vCPU)':>11}  detail"]
    for name, (seconds, nbytes, detail, cpu) in steps.items():
        cpu = seconds if cpu is None else cpu
        per = cpu / (nbytes / 1e6) * 1000 if nbytes else 0.0
        rate = nbytes / cpu / 1e6 if nbytes and cpu else 0.0
        lines.append(f"{name:24} {seconds:7.2f} {cpu:7.2f} {per:10.1f} {rate:11.1f}  {detail}")
    lines += [f"FAILED {line}" for line in result["failed"]]
    if "wget" in steps and "fetch-inline" in steps:
        lines.append(f"stage1 fetch / busybox wget: {steps['fetch-inline'][0] / steps['wget'][0]:.2f}x wall, "
                     f"{steps['fetch-inline'][3] / steps['wget'][3]:.2f}x vCPU")
    return lines


def bench_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise LayerbootError("bench_fetch.py needs root", hint="it mounts a tmpfs and boots QEMU")
    result = guest_bench(args) if args.guest else host_bench(args)
    print()
    for line in (report_guest(result) if args.guest else report_host(result)):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for entry in args.workdir.iterdir():              # the big files go; the serial log stays
        if entry.name != "serial.log":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return 0 if not result.get("failed") else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: bench_main(args), debug=args.debug, prog="bench_fetch.py")


if __name__ == "__main__":
    sys.exit(main())
