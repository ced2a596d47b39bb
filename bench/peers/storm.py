"""The boot storm's parts: the chain and store, the servers (layerbootd, nginx, nginx rack mirrors) inside the
storm network, and one storm (N node processes released at once, their results, the servers' CPU and egress).

Used by bench/bench_storm.py and tests/test_mirror_storm.py. Every server runs in its namespace of
:class:`peers.stormnet.StormNet`; every node is ``peers/storm_node.py`` under stage1's interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import generate_key
from layerboot.overlays.mirrors import MirrorPolicy
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.run import Process, require_tool, run

from peers.stormnet import Host, StormNet

REPO = Path(__file__).resolve().parents[2]
NODE = Path(__file__).resolve().parent / "storm_node.py"
PYTHON = "/usr/bin/python3.11"           # stage1's interpreter (build/initrd.py)
ORIGIN_PORT = 8080
IMAGE_PORT = 8081
MIRROR_PORT = 8080
CLK_TCK = os.sysconf("SC_CLK_TCK")
STORM_PROFILE = "storm"


# -- the chain ---------------------------------------------------------------------------------------------------
@dataclass
class Chain:
    """A store with profile ``storm`` (no mirrors) and ``storm-rackR`` (the rack's mirror first, then the
    others), all the same layers; and the same bytes as one image for nginx."""

    paths: Paths
    digests: list[str]
    sizes: list[int]
    image: Path
    image_digest: str

    @property
    def size(self) -> int:
        return sum(self.sizes)


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            out.write(chunk)
            left -= len(chunk)


def build_chain(work: Path, base_mb: int, layers_mb: tuple[int, ...], racks: int, mirror_urls: list[str]) -> Chain:
    """A fresh store: a base of ``base_mb`` MiB of random data (incompressible, so the squashfs is that big)
    and one overlay per ``layers_mb`` entry; profiles as :class:`Chain` says; the image file for nginx."""
    shutil.rmtree(work / "store", ignore_errors=True)
    paths = Paths(work / "store")
    store = Store(paths)
    store.init()
    generate_key(paths.signing_key, paths.public_key)
    trees = work / "trees"
    shutil.rmtree(trees, ignore_errors=True)
    (trees / "base" / "srv").mkdir(parents=True)
    (trees / "base" / "etc").mkdir()
    (trees / "base" / "etc" / "os-release").write_text("ID=storm\n")
    _random_file(trees / "base" / "srv" / "payload", base_mb << 20)
    base = store.import_tree(trees / "base", kind="base", all_root=True, description="storm base").digest
    digests = [base]
    for index, size in enumerate(layers_mb):
        tree = trees / f"layer{index}" / "srv"
        tree.mkdir(parents=True)
        _random_file(tree / f"layer{index}", size << 20)
        digests.append(store.import_tree(tree.parent, kind="overlay", base=base, all_root=True,
                                         description=f"storm layer {index}").digest)
    shutil.rmtree(trees)
    per_rack = {f"{STORM_PROFILE}-rack{r}": tuple(mirror_urls[r - 1:] + mirror_urls[:r - 1])
                for r in range(1, racks + 1)} if mirror_urls else {}
    policy = MirrorPolicy(tuple(mirror_urls), "listed", per_rack | {STORM_PROFILE: ()})
    profiles = Profiles(store, mirrors=policy)
    for name in (STORM_PROFILE, *per_rack):
        profiles.create(name, base)
        for digest in digests[1:]:
            profiles.add(name, digest)
    (work / "www").mkdir(exist_ok=True)
    image = work / "www" / "image.bin"
    digest = hashlib.sha256()
    with open(image, "wb") as out:
        for layer in digests:
            with open(paths.object(layer), "rb") as src:
                while block := src.read(4 << 20):
                    digest.update(block)
                    out.write(block)
    return Chain(paths, digests, [paths.object(d).stat().st_size for d in digests], image, digest.hexdigest())


# -- servers -----------------------------------------------------------------------------------------------------
def _family(pid: int) -> list[tuple[int, list[str]]]:
    """A process and its children (nginx's workers): (pid, /proc/PID/stat fields after the name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(entry.name) == pid or int(fields[1]) == pid:
            found.append((int(entry.name), fields))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (nginx workers), from /proc."""
    return sum(int(fields[11]) + int(fields[12]) for _, fields in _family(pid)) / CLK_TCK


def listening(ns: str, port: int) -> bool:
    result = run(["ss", "-N", ns, "-H", "-ltn", f"sport = :{port}"], check=False)
    return bool(result.text.strip())


@dataclass
class Server:
    name: str
    host: Host
    port: int
    process: Process
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{self.port}"

    def wait(self, timeout: float = 60.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LayerbootError(f"{self.name} exited with status {self.process.poll()} at start",
                                     hint=f"see {self.log}")
            if listening(self.host.ns, self.port):
                return self
            time.sleep(0.1)
        raise LayerbootError(f"{self.name} did not listen within {timeout:.0f} s", hint=f"see {self.log}")

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate(timeout=10)

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (a crash: no graceful close of its transfers)."""
        workers = [pid for pid, _ in _family(self.process.pid) if pid != self.process.pid]
        self.process.kill()              # the master first, so it cannot start new workers
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def spawn(name: str, host: Host, port: int, argv: list[str], log: Path) -> Server:
    with open(log, "ab") as out:
        process = Process([*StormNet.exec_argv(host.ns), *argv], stdout=out, stderr=out)
    return Server(name, host, port, process, log)


def start_layerbootd(work: Path, chain: Chain, host: Host, mirror_urls: list[str], *, database: str = "") -> Server:
    """The origin. Limits for a storm: see bench/README.md ("Boot storms")."""
    lines = [f'[store]\nroot = "{chain.paths.root}"\n', "[server]",
             f'public_url = "http://{host.ip}:{ORIGIN_PORT}"',
             "max_connections_per_client = 256",     # a mirror's address forwards its whole rack's misses
             "max_downloads_per_node = 8"]           # stage1 opens 4; the default, stated
    if database:
        lines.append(f'database = "{database}"')
    if mirror_urls:
        lines.append("\n[mirrors]\nurls = [" + ", ".join(f'"{u}"' for u in mirror_urls) + ']\norder = "listed"')
    config = work / "layerboot.toml"
    config.write_text("\n".join(lines) + "\n")
    return spawn("layerbootd", host, ORIGIN_PORT, [sys.executable, "-m", "layerboot.server.main", "--config",
                                                    str(config), "--listen", "0.0.0.0", "--port", str(ORIGIN_PORT)],
                 work / "layerbootd.log").wait()


NGINX_IMAGE_CONF = """\
worker_processes auto;
daemon off;
user root;
pid {work}/nginx-image.pid;
error_log {work}/nginx-image-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-image-tmp;
    proxy_temp_path {work}/nginx-image-tmp;
    fastcgi_temp_path {work}/nginx-image-tmp;
    uwsgi_temp_path {work}/nginx-image-tmp;
    scgi_temp_path {work}/nginx-image-tmp;
    default_type application/octet-stream;
    server {{
        listen {port};
        location = /image.bin {{ alias {image}; }}
    }}
}}
"""


def start_nginx_image(work: Path, chain: Chain, host: Host) -> Server:
    """The baseline: nginx serving the chain's bytes as one image (no credential, no manifest)."""
    conf = work / "nginx-image.conf"
    conf.write_text(NGINX_IMAGE_CONF.format(work=work, port=IMAGE_PORT, image=chain.image))
    return spawn("nginx (image)", host, IMAGE_PORT, [require_tool("nginx", package="nginx-light"), "-c", str(conf),
                                                     "-p", str(work)], work / "nginx-image.log").wait()


def start_mirror(work: Path, origin: str, host: Host, rack: int, *, slice_size: str = "8m") -> Server:
    """A rack mirror: nginx with the configuration 'layerboot mirror nginx-config --full' writes."""
    run_dir = work / f"mirror{rack}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    conf = run_dir / "nginx.conf"
    run([sys.executable, "-m", "layerboot", "mirror", "nginx-config", "--origin", origin, "--listen",
         str(MIRROR_PORT), "--cache-dir", str(run_dir / "cache"), "--max-size", "20g", "--slice", slice_size,
         "--full", "--user", "root", "--run-dir", str(run_dir), "--foreground", "-o", str(conf)])
    return spawn(f"mirror {rack}", host, MIRROR_PORT, [require_tool("nginx", package="nginx-light"), "-c", str(conf),
                                                       "-p", str(run_dir)], run_dir / "nginx.log").wait()


def warm(origin: Server, chain: Chain, node: Host) -> None:
    """Before a storm: every object verified by layerbootd once (its first serve hashes it) and page-cached."""
    admin = (chain.paths.admin_token).read_text().strip()
    for digest in chain.digests:
        run([*StormNet.exec_argv(node.ns), "curl", "-sf", "-o", "/dev/null", "-r", "0-0", "-H",
             f"Authorization: Bearer {admin}", f"{origin.url}/objects/{digest}"], timeout=300)
    for path in [chain.image, *(chain.paths.object(d) for d in chain.digests)]:
        with open(path, "rb") as handle:
            while handle.read(16 << 20):
                pass


# -- one storm ---------------------------------------------------------------------------------------------------
@dataclass
class NodeJob:
    host: Host
    job: dict


@dataclass
class Storm:
    """What one storm measured."""

    name: str
    nodes: int
    results: list[dict]
    wall: float                                   # seconds from the release to the last node's end
    cpu: dict[str, float]                         # server name -> CPU seconds during the storm
    egress: dict[str, int]                        # server name -> bytes its uplink sent during the storm
    node_cpu: float = 0.0
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.results if r.get("ok")]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if not r.get("ok")]

    def times(self) -> list[float]:
        return sorted(r["done"] - r["t0"] for r in self.ok)

    def percentile(self, q: float) -> float:
        """The nearest-rank percentile of the nodes' boot times (every node that booted)."""
        times = self.times()
        if not times:
            return float("nan")
        return times[max(0, math.ceil(q / 100 * len(times)) - 1)]

    def summary(self) -> dict:
        return {"name": self.name, "nodes": self.nodes, "booted": len(self.ok), "failed": len(self.failed),
                "all_booted_s": round(self.wall, 2), "p50_s": round(self.percentile(50), 2),
                "p99_s": round(self.percentile(99), 2), "server_cpu_s": {k: round(v, 2) for k, v in self.cpu.items()},
                "egress_bytes": self.egress, "node_cpu_s": round(self.node_cpu, 1), "events": self.events,
                "errors": sorted({r.get("error", "") for r in self.failed})[:5]}


def run_storm(name: str, jobs: list[NodeJob], servers: dict[str, Server], work: Path, *,
              timeout: float = 1800.0, during=None) -> Storm:  # noqa: ANN001 - during(elapsed) -> str | None
    """Spawn every node, wait until all have imported stage1, release them at once, collect their lines.

    ``during`` is called about every 0.2 s with the seconds since the release; a string it returns is recorded
    as an event (the mirror test kills a mirror from there).
    """
    out_dir = work / f"nodes-{name}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    go_read, go_write = os.pipe()
    procs: list[tuple[Process, Path]] = []
    try:
        for index, item in enumerate(jobs):
            out = out_dir / f"{index}.out"
            job = dict(item.job, scratch=str(out_dir / f"{index}.d"))
            with open(out, "wb") as handle:
                procs.append((Process([*StormNet.exec_argv(item.host.ns), PYTHON, "-S", "-I", "-B", str(NODE),
                                       str(REPO / "initrd"), json.dumps(job)], stdin=go_read, stdout=handle,
                                      stderr=handle), out))
        _wait_ready(procs, timeout=120 + 0.5 * len(procs))
        cpu0 = {k: s.cpu() for k, s in servers.items()}
        tx0 = {k: StormNet.tx_bytes(s.host.ns) for k, s in servers.items()}
        t0 = time.monotonic()
        os.write(go_write, b"g" * len(procs))
        events = []
        while any(p.poll() is None for p, _ in procs):
            if time.monotonic() - t0 > timeout:
                raise LayerbootError(f"storm {name}: nodes still running after {timeout:.0f} s")
            if during is not None:
                note = during(time.monotonic() - t0)
                if note:
                    events.append(f"{time.monotonic() - t0:.1f}s: {note}")
            time.sleep(0.2)
        wall_end = time.monotonic()
        cpu = {k: s.cpu() - cpu0[k] for k, s in servers.items() if s.process.poll() is None}
        egress = {k: StormNet.tx_bytes(s.host.ns) - tx0[k] for k, s in servers.items()}
    finally:
        os.close(go_write)
        os.close(go_read)
        for process, _ in procs:
            process.kill()
    results = []
    for index, (_, out) in enumerate(procs):
        line = next((ln for ln in out.read_text(errors="replace").splitlines() if ln.startswith("STORM ")), None)
        result = json.loads(line[6:]) if line else {"ok": False, "error": "no result: " + out.read_text()[-300:]}
        result["t0"] = t0
        result["host"] = jobs[index].host.ns
        results.append(result)
    last = max((r["done"] for r in results if r.get("ok")), default=wall_end)
    return Storm(name, len(jobs), results, last - t0, cpu, egress,
                 node_cpu=sum(r.get("cpu", 0.0) for r in results), events=events)


def _wait_ready(procs: list[tuple[Process, Path]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(procs)
    while waiting:
        if time.monotonic() > deadline:
            raise LayerbootError(f"{len(waiting)} storm nodes did not start within {timeout:.0f} s",
                                 hint=f"see {waiting[0][1]}")
        still = []
        for process, out in waiting:
            if b"READY" in out.read_bytes():
                continue
            if process.poll() is not None:
                raise LayerbootError(f"a storm node exited at start: {out.read_text()[-500:]}")
            still.append((process, out))
        waiting = still
        if waiting:
            time.sleep(0.1)
