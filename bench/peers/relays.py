"""Issue 18's open measurement: nbdkit alternatives against layerboot's own stream relay (streamd.py).

Two systems for bench/bench_boot.py, each layerboot with ``layerboot.fetch=stream`` from a store and layerbootd
of its own (peers/layerboot.py), booting a **bench-only initrd**: layerboot's cached initrd with one more cpio
archive appended (the kernel unpacks both; the later one wins). That archive holds relay_stage1.py as
``stage1/stream.pyc`` (the product stream.py renamed ``stream_product.pyc`` beside it) and the relay's programs
with the shared libraries ``ldd`` names that the initrd lacks (what dracut's ``inst_binary`` would add):

  layerboot-nbdkit-curl   nbdkit + its curl plugin + truncate filter in the initramfs, HTTP Range requests to
                          layerbootd with the node's credential (``bench.relay=nbdkit-curl``)
  layerboot-nbd-client    nbd-client in the initramfs against nbdkit's file plugin serving the store's objects
                          read-only on the host (``bench.relay=nbd-client bench.nbd=10.0.2.2:PORT``), behind a
                          counting relay that adds to the same byte count as layerbootd's

With ``--read-mb N`` (``bench.read_mb=N``) the bench stage1 also reads N MiB of each streamed layer through
dm-verity before the switch, and ``layerboot-stream`` boots the product relay from such an initrd too
(``bench.relay=streamd``, nothing but the bench module added), so the three differ only in their relay.

The product initrd and stage1's import path are untouched: nothing here is reachable from a normal boot.
"""

from __future__ import annotations

import dataclasses
import py_compile
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layerboot.ports import free_port, wait_listening
from layerboot.run import Process, require_tool, run

from peers.layerboot import _system
from peers.serve import CountingRelay
from peers.system import Bench, System, Unavailable

HERE = Path(__file__).resolve().parent
STAGE1 = HERE.parent.parent / "initrd" / "stage1"
NBDKIT_DIR = Path("/usr/lib/x86_64-linux-gnu/nbdkit")
PROGRAMS = {
    "nbdkit-curl": (Path("/usr/bin/nbdkit"), NBDKIT_DIR / "plugins/nbdkit-curl-plugin.so",
                    NBDKIT_DIR / "filters/nbdkit-truncate-filter.so"),
    "nbd-client": (Path("/usr/sbin/nbd-client"),),
    "streamd": (),                   # the product relay, for --read-mb (the bench module reads through it)
}
LIBDIR = "usr/lib/x86_64-linux-gnu"
ZSTD = ("-15", "-q", "-T0")          # what dracut --zstd runs
_LDD = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")
_READ_LINE = re.compile(r"bench-read: (\d+) bytes of \S+ in ([\d.]+) s")
_OBJECT_REQUEST = re.compile(r" (?:GET|HEAD) /objects/")   # layerbootd's access log lines
_MARKS = tuple(re.compile(r"^\[\s*([\d.]+)\] " + text, re.M) for text in (
    r"layerboot: manifest: ", r"layerboot: streaming \d+ layers", r"layerboot: switching to the new root", r"ROOTFS-UP "))


@dataclasses.dataclass(frozen=True)
class Added:
    """What a relay adds to the initramfs: files (uncompressed bytes) and the appended archive (compressed)."""

    files: dict[str, int]
    archive_bytes: int

    @property
    def file_bytes(self) -> int:
        return sum(self.files.values())


def libraries(programs: tuple[Path, ...]) -> set[Path]:
    """The shared libraries ``programs`` load (ldd, transitively resolved by the dynamic loader)."""
    found: set[Path] = set()
    for program in programs:
        for match in _LDD.finditer(run(["ldd", program]).text):
            found.add(Path(match.group(1)))
    return found


def initrd_files(initrd: Path) -> set[str]:
    """Paths in ``initrd`` (a zstd cpio, as build/initrd.py makes), without a leading ``./``."""
    data = run([require_tool("zstd"), "-dc", initrd], timeout=120).stdout
    listing = run([require_tool("cpio", package="cpio"), "-t", "--quiet"], input=data, timeout=120).text
    return {line.removeprefix("./") for line in listing.splitlines()}


def stage_relay(relay: str, have: set[str], stage: Path) -> dict[str, int]:
    """Put ``relay``'s programs, the libraries ``have`` lacks and the bench stage1 module under ``stage``."""
    names = {Path(p).name for p in have if p.startswith((LIBDIR + "/", "lib/x86_64-linux-gnu/"))}
    files: dict[str, int] = {}

    def put(source: Path, target: str) -> None:
        dest = stage / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.resolve(), dest)
        files[target] = dest.stat().st_size

    for program in PROGRAMS[relay]:
        put(program, str(program).lstrip("/"))
    for library in sorted(libraries(PROGRAMS[relay])):
        if library.name not in names and not library.name.startswith("ld-linux"):
            put(library, f"{LIBDIR}/{library.name}")
    modules = stage / "usr/lib/layerboot/stage1"
    modules.mkdir(parents=True, exist_ok=True)
    for source, name in ((HERE / "relay_stage1.py", "stream.pyc"), (STAGE1 / "stream.py", "stream_product.pyc")):
        py_compile.compile(str(source), cfile=str(modules / name), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return files


def relay_initrd(base: Path, relay: str, out: Path) -> tuple[Path, Added]:
    """Write ``base`` + an appended zstd cpio with ``relay`` to ``out`` (a few seconds: made every run)."""
    stage = out.parent / f"{out.name}.stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        files = stage_relay(relay, initrd_files(base), stage)
        listing = run(["find", ".", "-mindepth", "1"], cwd=stage).stdout
        archive = run([require_tool("cpio", package="cpio"), "-o", "-H", "newc", "--quiet", "--reproducible"],
                      input=listing, cwd=stage, timeout=120).stdout
        packed = run([require_tool("zstd"), *ZSTD, "-c"], input=archive, timeout=300).stdout
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    data = base.read_bytes()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data + b"\0" * (-len(data) % 4) + packed)
    tmp.rename(out)
    return out, Added(files, len(packed))


def phases(log: Path) -> dict[str, float]:
    """From a timestamped serial log, seconds of: ``attach`` (manifest verified -> 'streaming N layers': devices
    and relay started), ``mount`` (-> 'switching to the new root': squashfs and overlay mounted, the first
    reads), ``rootfs`` (-> the marker: the rootfs init's reads)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    marks = [pattern.search(text) for pattern in _MARKS]
    if not all(marks):
        return {}
    times = [float(mark.group(1)) for mark in marks]   # type: ignore[union-attr]
    found = {name: round(end - start, 3) for name, start, end in zip(("attach", "mount", "rootfs"), times, times[1:])}
    reads = _READ_LINE.findall(text)
    if reads:   # --read-mb: the bulk read happened inside 'attach'; keep it apart
        found["read"] = round(sum(float(took) for _, took in reads), 3)
        found["read_bytes"] = sum(int(n) for n, _ in reads)
        found["attach"] = round(found["attach"] - found["read"], 3)
    return found


def _check_tools(relay: str) -> None:
    missing = [str(p) for p in PROGRAMS[relay] if not p.exists()]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (apt-get install nbdkit nbd-client, "
                          "as .ci/install does)")


ADDED: dict[str, Added] = {}        # per system name, for the report


def _cmdline(bench: Bench, relay: str, extra: str = "") -> str:
    return (f" layerboot.fetch=stream bench.relay={relay}{extra}"
            + (f" bench.read_mb={bench.read_mb}" if bench.read_mb else ""))


def _relay_system(bench: Bench, found: System, relay: str) -> System:
    initrd, added = relay_initrd(found.initrd, relay, bench.workdir / f"{found.name}-initrd.img")
    ADDED[found.name] = added
    return dataclasses.replace(found, initrd=initrd, cache_variant=None)


@contextmanager
def stream_read_system(bench: Bench) -> Iterator[System]:
    """(a) for --read-mb: layerboot's own relay, unchanged, on a bench initrd whose stage1 also reads the layers."""
    with _system(bench, "layerboot-stream", _cmdline(bench, "streamd")) as found:
        yield _relay_system(bench, found, "streamd")


@contextmanager
def curl_system(bench: Bench) -> Iterator[System]:
    """(b) nbdkit's curl plugin inside the initramfs, HTTP Range requests to layerbootd with the node's token."""
    _check_tools("nbdkit-curl")
    with _system(bench, "layerboot-nbdkit-curl", _cmdline(bench, "nbdkit-curl")) as found:
        yield _relay_system(bench, found, "nbdkit-curl")


@contextmanager
def client_system(bench: Bench) -> Iterator[System]:
    """(c) nbd-client inside the initramfs against nbdkit (file plugin, read-only) serving the store's objects."""
    _check_tools("nbd-client")
    nbdkit = require_tool("nbdkit", package="nbdkit")
    name = "layerboot-nbd-client"
    port = free_port()
    store = bench.workdir / f"{name}-store"
    log_path = bench.logs / f"{name}-nbdkit.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log, CountingRelay(port) as relay:
        with _system(bench, name, _cmdline(bench, "nbd-client", f" bench.nbd=10.0.2.2:{bench.guest_port(relay.port)}")) as found:
            relay.traffic = found.traffic          # NBD bytes and layerbootd's bytes in one count
            server = Process([nbdkit, "-r", "-f", "-i", "127.0.0.1", "-p", str(port), "--filter=truncate",
                              "file", f"dir={store / 'objects'}", "round-up=4096"], stdout=log, stderr=log)
            try:
                wait_listening(port, server, "nbdkit", log=log_path, timeout=30)
                yield _relay_system(bench, found, "nbd-client")
            finally:
                server.terminate()


RELAY_SYSTEMS = ("layerboot-stream", "layerboot-nbdkit-curl", "layerboot-nbd-client")
LACKS = {   # what layerboot-stream's relay has (docs/stage1.md "Streaming layers") that each alternative lacks
    "layerboot-nbdkit-curl": "a safe place for the credential (it is on nbdkit's command line, readable in "
                             "/proc/PID/cmdline; header-script= could read it from a file), the 401 -> node-secret "
                             "switch, mirrors (one URL per process), the read-through cache disk (the cache filter "
                             "keeps a temporary file only), the stats file; reconnects need --filter=retry (5 tries "
                             "by default, not forever); two processes per layer",
    "layerboot-nbd-client": "per-node access control (NBD authenticates only by TLS, and nbdkit ties no identity to "
                            "exports: any client that connects reads every object of the store), mirrors, the cache disk, the stats file; a second daemon "
                            "per server; reconnects need nbd-client -persist kept running",
}


def _median(values: list) -> float | None:  # noqa: ANN001
    import statistics

    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def relay_figures(results: dict, logs: Path, runs: int) -> dict[str, dict]:  # noqa: ANN001 - name -> SystemResult
    """Per relay system measured: the report's medians, the phases from the serial logs, requests, added bytes."""
    figures = {}
    for name in RELAY_SYSTEMS:
        result = results.get(name)
        if result is None or result.unavailable:
            continue
        split = [phases(logs / f"{name}-v1-run{run}.log") for run in range(1, runs + 1)]
        added = ADDED.get(name, Added({}, 0))
        try:
            daemon_log = (logs / f"{name}-layerbootd.log").read_text(errors="replace")
        except OSError:
            daemon_log = ""
        figures[name] = {"median": result.median, "median_cpu": result.median_cpu, "median_bytes": result.median_bytes,
                         "object_requests": len(_OBJECT_REQUEST.findall(daemon_log)) / runs,
                         "initrd_bytes": result.initrd_bytes, "phase_runs": split,
                         **{key: _median([p.get(key) for p in split])
                            for key in ("attach", "mount", "rootfs", "read", "read_bytes")},
                         "added_archive_bytes": added.archive_bytes, "added_file_bytes": added.file_bytes,
                         "added_files": added.files}
    return figures


def relay_lines(figures: dict[str, dict]) -> list[str]:
    """The comparison table and the ratios against layerboot's own relay, measured in the same run."""
    def show(value: float | None, unit: str = "s") -> str:
        return "-" if value is None else f"{value:.2f} {unit}"

    lines = []
    for name, f in figures.items():
        added = (f"+{f['added_archive_bytes'] / 1e6:.2f} MB zstd ({f['added_file_bytes'] / 1e6:.1f} MB of files)"
                 if f["added_file_bytes"] else "+0")
        read = "" if f["read"] is None else \
            f"  read {f['read_bytes'] / 1e6:.0f} MB in {show(f['read'])} ({f['read_bytes'] / f['read'] / 1e6:.1f} MB/s)"
        lines.append(f"{name:22} marker {show(f['median']):>8}  QEMU cpu {show(f['median_cpu']):>8}  "
                     f"attach {show(f['attach']):>7}  mount {show(f['mount']):>7}  rootfs {show(f['rootfs']):>7}{read}"
                     f"  served {(f['median_bytes'] or 0) / 1e6:.2f} MB in {f['object_requests']:.0f} HTTP object "
                     f"requests  initrd {added}")
    base = figures.get("layerboot-stream")
    for name, f in figures.items():
        if name == "layerboot-stream" or base is None:
            continue
        parts = [f"{label} {f[key] / base[key]:.2f}x"
                 for key, label in (("median", "marker"), ("median_cpu", "QEMU cpu"), ("attach", "attach"),
                                    ("mount", "mount"), ("rootfs", "rootfs"), ("read", "read"),
                                    ("median_bytes", "served"))
                 if f[key] is not None and base[key]]
        lines.append(f"ratio {name} / layerboot-stream: " + (", ".join(parts) or "no figures"))
    lines += [f"{name} lacks: {LACKS[name]}" for name in figures if name in LACKS]
    return lines
