"""Turn boot runs into the figures the benchmark reports: medians, ratios against each peer, bytes served.

Pure functions over plain records, so the arithmetic and the wording are unit-tested without booting.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

TARGET = ("live-boot", 0.5)   # issue 5's target: layerboot <= 0.5x live-boot
# issue 20's targets on the size curve: layerboot / live-boot at most this, by rootfs size (MB, from this size up)
SIZE_TARGETS = ((0, 0.5), (500, 1.0))
# issue 18's targets for streamed layers (a 1 GiB base of which the boot reads at most 10%)
STREAM_TARGETS = (("layerboot", 0.25), ("live-boot", 0.15))
STREAM_RAM_TARGET = 0.2   # RAM in use at the rootfs marker, against layerboot's full fetch


@dataclass(frozen=True)
class Measured:
    """One boot as the report needs it (seconds None: the boot failed, with ``failure`` saying why)."""

    seconds: float | None
    http_bytes: int
    failure: str | None = None
    cpu_seconds: float | None = None   # QEMU's CPU time for the boot (guest work; less load-sensitive)
    used_kb: int | None = None         # guest RAM in use at the rootfs marker (MemTotal - MemAvailable)


@dataclass
class SystemResult:
    """All runs of one system in one benchmark, or why it could not be measured (``unavailable``)."""

    name: str
    initrd_bytes: int | None = None
    runs: list[Measured] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs if r.seconds is not None and r.failure is None]

    @property
    def median(self) -> float | None:
        """Median over the runs, only when every run reached the marker (a failed run is not a fast run)."""
        times = self.times
        return statistics.median(times) if times and len(times) == len(self.runs) else None

    @property
    def median_cpu(self) -> float | None:
        cpu = [r.cpu_seconds for r in self.runs if r.cpu_seconds is not None and r.failure is None]
        return statistics.median(cpu) if cpu and len(cpu) == len(self.runs) else None

    @property
    def median_used_kb(self) -> int | None:
        used = [r.used_kb for r in self.runs if r.used_kb is not None and r.failure is None]
        return int(statistics.median(used)) if used and len(used) == len(self.runs) else None

    @property
    def median_bytes(self) -> int | None:
        return int(statistics.median(r.http_bytes for r in self.runs)) if self.runs else None

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "median": self.median, "median_cpu": self.median_cpu,
                "median_bytes": self.median_bytes, "median_used_kb": self.median_used_kb}


def ratios(results: list[SystemResult], subject: str = "layerboot") -> dict[str, float]:
    """``subject``'s median time divided by each other system's, for those measured in this run."""
    by_name = {r.name: r for r in results}
    mine = by_name.get(subject)
    if mine is None or mine.median is None:
        return {}
    return {r.name: mine.median / r.median for r in results
            if r.name != subject and r.median is not None and r.median > 0}


def cpu_ratios(results: list[SystemResult], subject: str = "layerboot") -> dict[str, float]:
    """Like :func:`ratios`, over QEMU's CPU time (which the load of a shared host inflates far less)."""
    by_name = {r.name: r for r in results}
    mine = by_name.get(subject)
    if mine is None or mine.median_cpu is None:
        return {}
    return {r.name: mine.median_cpu / r.median_cpu for r in results
            if r.name != subject and r.median_cpu is not None and r.median_cpu > 0}


def mb(n: int | None) -> str:
    """Bytes for people: MB from 1 MB up, kB below (a cached boot's few kB must not print as 0.0 MB)."""
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n / 1e3:.1f} kB"


def describe(result: SystemResult) -> str:
    """One line: initrd size, median time and each run, bytes served (or why it is missing)."""
    head = f"{result.name:22} initrd {mb(result.initrd_bytes):>9}"
    if result.unavailable:
        return f"{head}   not measured: {result.unavailable}"
    each = " ".join("FAIL" if r.seconds is None or r.failure else f"{r.seconds:.2f}" for r in result.runs)
    median = "no median" if result.median is None else f"median {result.median:6.2f} s"
    cpu = "" if result.median_cpu is None else f", QEMU cpu {result.median_cpu:.1f} s"
    used = "" if result.median_used_kb is None else f", RAM used {result.median_used_kb / 1024:.0f} MiB"
    line = f"{head}   {median} ({each}){cpu}   served {mb(result.median_bytes)}{used}"
    failures = sorted({r.failure for r in result.runs if r.failure})
    return line + "".join(f"\n{'':25}failed: {f}" for f in failures)


def ratio_lines(results: list[SystemResult], subject: str = "layerboot", target: float | None = None) -> list[str]:
    """The ratios of ``subject`` to each peer, and the verdict on the target against live-boot (default:
    issue 5's 0.5x; the size curve passes the target for the rootfs size)."""
    found = ratios(results, subject)
    if not found:
        mine = next((r for r in results if r.name == subject), None)
        why = f"{subject} has no median" if mine is None or mine.median is None else "no peer has a median"
        return [f"ratios: {why} in this run, so no ratios"]
    cpu = cpu_ratios(results, subject)
    lines = [f"ratio {subject} / {name}: {value:.2f}x" + (f" (QEMU CPU time: {cpu[name]:.2f}x)" if name in cpu else "")
             for name, value in found.items()]
    target_name, default = TARGET
    target = default if target is None else target
    if target_name in found:
        verdict = "PASS" if found[target_name] <= target else "MISS"
        lines.append(f"target {subject} <= {target}x {target_name}: {verdict}")
    return lines


def stream_lines(results: list[SystemResult], subject: str = "layerboot-stream") -> list[str]:
    """Streaming's ratios to each other system measured, and issue 18's verdicts (STREAM_TARGETS)."""
    found = ratios(results, subject)
    if not found:
        return [f"{subject}: no ratios in this run"]
    lines = [f"ratio {subject} / {name}: {value:.2f}x" for name, value in found.items()]
    for name, limit in STREAM_TARGETS:
        if name in found:
            lines.append(f"target {subject} <= {limit}x {name}: {'PASS' if found[name] <= limit else 'MISS'}")
    by_name = {r.name: r for r in results}
    full, mine = by_name.get("layerboot"), by_name[subject]
    if full is not None and full.median_used_kb and mine.median_used_kb is not None:
        share = mine.median_used_kb / full.median_used_kb
        lines.append(f"RAM at the marker {subject} / layerboot: {share:.2f}x; target <= {STREAM_RAM_TARGET}x: "
                     + ("PASS" if share <= STREAM_RAM_TARGET else "MISS"))
    return lines


def size_target(rootfs_bytes: int) -> float:
    """The layerboot / live-boot ratio issue 20 asks for at this rootfs size (0.5x, and 1.0x from 500 MB)."""
    return [limit for start, limit in SIZE_TARGETS if rootfs_bytes >= start * 1_000_000][-1]


def size_table(points: list[tuple[int, list[SystemResult], list[float]]], subject: str = "layerboot") -> list[str]:
    """One row per rootfs size: each system's median, layerboot's ratio to each peer, the target verdict."""
    names = [r.name for r in points[0][1]] if points else []
    peers = [name for name in names if name != subject]
    head = f"{'rootfs':>9}  " + "  ".join(f"{name:>15}" for name in names) + "  " + "  ".join(
        f"{subject + '/' + name:>24}" for name in peers) + "   target      CPU time vs live-boot   load"
    lines = [head]
    for rootfs_bytes, results, load in points:
        by_name = {r.name: r for r in results}
        cells = [f"{by_name[n].median:13.2f} s" if by_name[n].median is not None else f"{'-':>15}" for n in names]
        found = ratios(results, subject)
        shown = [f"{found[n]:23.2f}x" if n in found else f"{'-':>24}" for n in peers]
        limit = size_target(rootfs_bytes)
        verdict = "-" if "live-boot" not in found else ("PASS" if found["live-boot"] <= limit else "MISS")
        cpu = cpu_ratios(results, subject).get("live-boot")
        lines.append(f"{mb(rootfs_bytes):>9}  " + "  ".join(cells) + "  " + "  ".join(shown)
                     + f"   <= {limit:.1f}x {verdict:4}  " + (f"{cpu:21.2f}x" if cpu else f"{'-':>22}")
                     + f"   {load[0]:.1f}-{load[1]:.1f}")
    return lines
