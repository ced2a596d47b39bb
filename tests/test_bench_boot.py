"""The boot benchmark's own logic: marker parsing, cache keys, mirror lookup, the counting server, the
figures and ratios it reports, and its command line. Booting the peers is the benchmark itself (minutes of
QEMU per system), so it is not part of the suite."""

from __future__ import annotations

import re
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.run import run

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from peers import layerboot as bench_layerboot  # noqa: E402
from peers.boot import MARKER_PATTERN, Guest, node_config  # noqa: E402
from peers.cache import cached, input_key  # noqa: E402
from peers.report import Measured, SystemResult, describe, mb, ratio_lines, ratios, stream_lines  # noqa: E402
from peers.rootfs import MARKER_SCRIPT, filler_bytes, parse_marker, rootfs_image  # noqa: E402
from peers.serve import CountingRelay, CountingServer  # noqa: E402


def test_marker_line_is_found_with_uptime_and_version() -> None:
    found = parse_marker("[   12.345] ROOTFS-UP 11.02 version=v2\r")
    assert found is not None and found.uptime == 11.02 and found.version == "v2" and found.used_kb is None
    found = parse_marker("[   12.345] ROOTFS-UP 11.02 version=v2 used_kb=81234\r")
    assert found is not None and found.version == "v2" and found.used_kb == 81234
    assert parse_marker("echo \"ROOTFS-UP $up version=$(cat /etc/bench-version)\"") is None
    assert parse_marker("random kernel line") is None
    assert re.search(MARKER_PATTERN, "ROOTFS-UP 11.02 version=v2") and not re.search(MARKER_PATTERN, "ROOTFS-UP")


def test_marker_script_prints_what_the_parser_expects(tmp_path: Path) -> None:
    """Run the init's echo line with a fake uptime and version: the parser must accept its output."""
    echo = next(line for line in MARKER_SCRIPT.splitlines() if line.startswith("echo"))
    (tmp_path / "v").write_text("v7\n")
    script = f"up=3.50; used=2048; {echo.replace('/etc/bench-version', str(tmp_path / 'v'))}"
    out = run(["sh", "-c", script]).text
    assert parse_marker(out) == parse_marker("ROOTFS-UP 3.50 version=v7 used_kb=2048")
    used = next(line for line in MARKER_SCRIPT.splitlines() if line.startswith("used="))
    out = run(["sh", "-c", f"{used}; echo $used"]).text   # this host's RAM in use, as the guest computes it
    assert 0 < int(out) < 1 << 40


def test_filler_is_deterministic_and_incompressible() -> None:
    data = filler_bytes(1 << 20)
    assert data == filler_bytes(1 << 20) and len(data) == 1 << 20
    assert len(zlib.compress(data, 9)) > 0.99 * len(data)


def test_input_key_changes_with_any_input_and_is_unambiguous() -> None:
    assert input_key("a", ("b", "c")) == input_key("a", ("b", "c"))
    assert input_key("a", "bc") != input_key("ab", "c")
    assert input_key(b"x") != input_key(b"y")


def test_cached_builds_once_and_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(out: Path) -> None:
        calls.append(out)
        out.write_text("artefact")

    first = cached(tmp_path, "thing", "k1", build, suffix=".img")
    assert first.name == "thing-k1.img" and first.read_text() == "artefact"
    assert cached(tmp_path, "thing", "k1", build, suffix=".img") == first and len(calls) == 1
    cached(tmp_path, "thing", "k1", build, suffix=".img", rebuild=True)
    assert len(calls) == 2

    def broken(out: Path) -> None:
        out.mkdir()
        (out / "half").write_text("x")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        cached(tmp_path, "other", "k2", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing-k1.img"]


@pytest.mark.root
def test_a_failed_build_with_a_mount_left_inside_is_not_deleted(tmp_path: Path) -> None:
    """A builder chroot has /dev bind-mounted: deleting it with a mount still inside would delete /dev."""
    def leaves_a_mount(out: Path) -> None:
        (out / "dev").mkdir(parents=True)
        (out / "dev" / "keep").mkdir()
        run(["mount", "-t", "tmpfs", "tmpfs", out / "dev" / "keep"])
        (out / "dev" / "keep" / "precious").write_text("x")
        raise RuntimeError("apt failed")

    tmp = tmp_path / ".tmp-chroot-k"
    try:
        with pytest.raises(LayerbootError, match="still has mounts"):
            cached(tmp_path, "chroot", "k", leaves_a_mount)
        assert (tmp / "dev" / "keep" / "precious").read_text() == "x"
    finally:
        run(["umount", tmp / "dev" / "keep"], check=False)


def test_rootfs_image_has_the_marker_init_and_the_version_file(tmp_path: Path) -> None:
    image = rootfs_image(tmp_path, version="v2", filler_mb=1)
    assert image.name.startswith("rootfs-v2-") and image.suffix == ".squashfs"
    assert run(["unsquashfs", "-cat", image, "etc/bench-version"]).text == "v2\n"
    for init in ("sbin/init", "marker"):
        assert run(["unsquashfs", "-cat", image, init]).text == MARKER_SCRIPT
    listing = run(["unsquashfs", "-lls", image]).text
    assert "usr/share/bench/filler.bin" in listing and "bin/busybox" in listing
    assert rootfs_image(tmp_path, version="v2", filler_mb=1) == image   # cached: same inputs, same file


def test_counting_server_counts_body_bytes_per_boot(tmp_path: Path) -> None:
    image = tmp_path / "image.bin"
    image.write_bytes(b"x" * 300_000)
    www = tmp_path / "www"
    www.mkdir()
    with CountingServer(www) as server:
        url = server.publish("rootfs.squashfs", image)
        assert url == f"http://10.0.2.2:{server.port}/rootfs.squashfs"
        local = f"http://127.0.0.1:{server.port}/rootfs.squashfs"
        assert urllib.request.urlopen(local).read() == image.read_bytes()
        assert server.traffic.bytes == 300_000
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/missing")
        assert [(r.path, r.status, r.bytes) for r in server.traffic.requests] == \
            [("/rootfs.squashfs", 200, 300_000), ("/missing", 404, 0)]
        server.traffic.reset()
        urllib.request.urlopen(local).read()
        assert server.traffic.bytes == 300_000


def test_relay_forwards_and_counts_what_the_server_sends(tmp_path: Path) -> None:
    (tmp_path / "layer").write_bytes(b"y" * 100_000)
    with CountingServer(tmp_path) as server, CountingRelay(server.port) as relay:
        body = urllib.request.urlopen(f"http://127.0.0.1:{relay.port}/layer").read()
        assert body == b"y" * 100_000
        # headers are counted too (bytes on the wire), so a little more than the body
        assert 100_000 < relay.traffic.bytes < 101_000


def test_median_needs_every_run_and_ratios_use_only_measured_systems() -> None:
    live = SystemResult("live-boot", 30_000_000, [Measured(16.0, 10), Measured(18.0, 10), Measured(17.0, 10)])
    dracut = SystemResult("dracut-livenet", 29_000_000, [Measured(40.0, 10), Measured(None, 0, "timeout")])
    ours = SystemResult("layerboot", 12_000_000, [Measured(8.0, 5), Measured(7.0, 5), Measured(9.0, 5)])
    assert live.median == 17.0 and dracut.median is None and ours.median == 8.0
    assert ratios([live, dracut, ours]) == {"live-boot": 8.0 / 17.0}
    assert ratio_lines([live, dracut, ours]) == ["ratio layerboot / live-boot: 0.47x",
                                                 "target layerboot <= 0.5x live-boot: PASS"]
    assert ratio_lines([ours, dracut]) == ["ratios: no peer has a median in this run, so no ratios"]
    slow = SystemResult("layerboot", None, [Measured(9.0, 5)])
    assert ratio_lines([live, slow])[-1] == "target layerboot <= 0.5x live-boot: MISS"
    assert "failed: timeout" in describe(dracut) and "FAIL" in describe(dracut)
    assert "median  17.00 s (16.00 18.00 17.00)" in describe(live) and "cpu" not in describe(live)
    timed = SystemResult("layerboot", 1, [Measured(8.0, 5, None, 3.0), Measured(7.0, 5, None, 2.0),
                                          Measured(9.0, 5, None, 4.0)])
    assert timed.median_cpu == 3.0 and "QEMU cpu 3.0 s" in describe(timed)
    assert mb(15_663_104) == "15.7 MB" and mb(9_312) == "9.3 kB" and mb(None) == "-"


def test_streaming_is_judged_against_the_full_fetch_and_live_boot() -> None:
    live = SystemResult("live-boot", 1, [Measured(20.0, 10)])
    full = SystemResult("layerboot", 1, [Measured(12.0, 10)])
    stream = SystemResult("layerboot-stream", 1, [Measured(2.4, 1)])
    assert stream_lines([live, full, stream]) == [
        "ratio layerboot-stream / live-boot: 0.12x", "ratio layerboot-stream / layerboot: 0.20x",
        "target layerboot-stream <= 0.25x layerboot: PASS", "target layerboot-stream <= 0.15x live-boot: PASS"]
    lean = SystemResult("layerboot-stream", 1, [Measured(2.4, 1, used_kb=60_000)])
    assert stream_lines([SystemResult("layerboot", 1, [Measured(12.0, 10, used_kb=400_000)]), lean])[-1] == \
        "RAM at the marker layerboot-stream / layerboot: 0.15x; target <= 0.2x: PASS"
    assert "RAM used 59 MiB" in describe(lean)
    slow = SystemResult("layerboot-stream", 1, [Measured(4.0, 1)])
    assert stream_lines([live, full, slow])[-2:] == ["target layerboot-stream <= 0.25x layerboot: MISS",
                                                     "target layerboot-stream <= 0.15x live-boot: MISS"]
    assert stream_lines([live, SystemResult("layerboot-stream", 1, [Measured(None, 0, "timeout")])]) == \
        ["layerboot-stream: no ratios in this run"]


def test_an_unavailable_system_is_reported_as_such_never_as_a_figure() -> None:
    missing = SystemResult("layerboot", unavailable="not yet available: build/initrd.py not in this tree")
    line = describe(missing)
    assert "not measured: not yet available" in line and " s " not in line
    assert ratio_lines([SystemResult("live-boot", None, [Measured(16.0, 1)]), missing]) == \
        ["ratios: layerboot has no median in this run, so no ratios"]


def test_qemu_boots_under_tcg_with_rdrand_and_the_given_command_line() -> None:
    guest = Guest(Path("/k"), Path("/i"), "console=ttyS0 boot=live", mem_mb=512, mac="52:54:00:be:00:02",
                  disks=(Path("/c.img"),))
    argv = node_config(guest).argv()
    assert argv[argv.index("-accel") + 1] == "tcg" and argv[argv.index("-cpu") + 1] == "qemu64,+rdrand"
    assert argv[argv.index("-append") + 1] == "console=ttyS0 boot=live"
    assert argv[argv.index("-m") + 1] == "512" and argv[argv.index("-initrd") + 1] == "/i"
    assert any("mac=52:54:00:be:00:02" in a for a in argv) and any(a.startswith("file=/c.img") for a in argv)


def test_layerboot_variant_reads_the_token_and_builds_its_command_line() -> None:
    token = "lbb1.525400be0001.1000.2000." + "a" * 32
    printed = token + "\n"                                   # tools/cmd_nodes.py's 'nodes boot-token' output
    found = bench_layerboot._TOKEN.search(printed)
    assert found is not None and found.group(1) == token
    assert bench_layerboot._TOKEN.search("node secret (shown once, only its hash is stored): lbs1.ab\n") is None
    line = bench_layerboot.cmdline("http://10.0.2.2:1234", "52:54:00:be:00:01", token, "bench-v1")
    assert "layerboot.server=http://10.0.2.2:1234" in line and "layerboot.node=52:54:00:be:00:01" in line
    assert f"layerboot.token={token}" in line and "layerboot.emergency=poweroff" in line
    assert "layerboot.profile=bench-v1" in line
    assert bench_layerboot.FAIL_CACHED.search("layerboot: cache: no device matches X; booting without a cache")
    assert not bench_layerboot.FAIL.search("layerboot: cache: no device matches X; booting without a cache")


def test_help_runs_and_unknown_systems_are_one_line_errors() -> None:
    script = BENCH / "bench_boot.py"
    out = run([sys.executable, script, "--help"]).text
    assert "--runs" in out and "live-boot" in out and "dracut-livenet" in out and "layerboot" in out
    bad = run([sys.executable, script, "--systems", "live-boot,nosuch"], check=False)
    assert bad.returncode == 2 and b"unknown system(s) nosuch" in bad.stderr


def test_the_size_curve_parses_sizes_sizes_memory_and_reports_each_size() -> None:
    import bench_boot
    from peers.report import size_table, size_target

    args = bench_boot.parse_args(["--filler-mb", "14,256,768"])
    assert args.filler_mb == [14, 256, 768] and args.mem == 2816          # one memory size for the whole curve
    assert bench_boot.parse_args([]).mem == 1024 and bench_boot.parse_args(["--mem", "512"]).mem == 512
    assert bench_boot.parse_args([]).link_mbit == 0 and bench_boot.parse_args(["--link-mbit", "1000"]).link_mbit == 1000
    with pytest.raises(SystemExit):
        bench_boot.parse_args(["--link-mbit", "-1"])
    with pytest.raises(SystemExit):
        bench_boot.parse_args(["--filler-mb", "14,big"])
    assert size_target(269_000_000) == 0.5 and size_target(806_000_000) == 1.0

    def result(name: str, seconds: float | None) -> SystemResult:
        return SystemResult(name, 1, [Measured(seconds, 10, None if seconds else "no marker",
                                               seconds / 2 if seconds else None)])

    table = size_table([(16_000_000, [result("live-boot", 14.0), result("layerboot", 4.0)], [1.0, 2.0]),
                        (806_000_000, [result("live-boot", 24.0), result("layerboot", 30.0)], [2.0, 3.0]),
                        (269_000_000, [result("live-boot", 18.0), result("layerboot", None)], [1.0, 1.0])])
    assert "0.29x" in table[1] and "<= 0.5x PASS" in table[1] and table[1].startswith("  16.0 MB")
    assert table[1].split("PASS")[1].split()[0] == "0.29x"                # the same ratio in QEMU CPU time
    assert "1.25x" in table[2] and "<= 1.0x MISS" in table[2]
    assert "<= 0.5x -" in table[3]                                         # a failed boot has no verdict


def test_relay_phases_come_from_the_serial_log_and_keep_the_bulk_read_apart(tmp_path: Path) -> None:
    from peers.relays import phases

    log = tmp_path / "boot.log"
    log.write_text("[   7.500] layerboot: manifest: profile bench-v1 generation 1 serial 1, 1 layers\n"
                   "[   9.000] bench-relay: streamd attached 1 layers in 0.30 s\n"
                   "[  10.000] bench-read: 12582912 bytes of /dev/dm-0 in 1.20 s (10.5 MB/s)\n"
                   "[  10.100] layerboot: streaming 1 layers\n"
                   "[  10.400] layerboot: switching to the new root (9.1s since boot), exec /sbin/init\n"
                   "[  11.000] ROOTFS-UP 9.60 version=v1 used_kb=1\n")
    assert phases(log) == {"attach": 1.4, "mount": 0.3, "rootfs": 0.6, "read": 1.2, "read_bytes": 12582912}
    log.write_text(log.read_text().replace("ROOTFS-UP", "Kernel panic"))
    assert phases(log) == {}          # a boot that never reached its rootfs has no phases, never partial ones
    assert phases(tmp_path / "missing.log") == {}


def test_relay_initrd_appends_the_relay_and_only_the_libraries_the_initrd_lacks(tmp_path: Path) -> None:
    from peers.relays import PROGRAMS, initrd_files, libraries, relay_initrd

    have = tmp_path / "have"
    lib = have / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    libc = next(p for p in libraries(PROGRAMS["nbd-client"]) if p.name.startswith("libc.so"))
    (lib / libc.name).write_bytes(b"already there")
    listing = run(["find", ".", "-mindepth", "1"], cwd=have).stdout
    base = tmp_path / "base.img"
    base.write_bytes(run(["zstd", "-q", "-c"], input=run(["cpio", "-o", "-H", "newc", "--quiet"], input=listing,
                                                               cwd=have).stdout).stdout)
    out, added = relay_initrd(base, "nbd-client", tmp_path / "relay.img")
    assert out.read_bytes().startswith(base.read_bytes())        # the product initrd itself is untouched
    assert "usr/sbin/nbd-client" in added.files and f"usr/lib/x86_64-linux-gnu/{libc.name}" not in added.files
    assert any(name.startswith("usr/lib/x86_64-linux-gnu/libgnutls") for name in added.files)
    appended = tmp_path / "appended.img"
    appended.write_bytes(out.read_bytes()[-added.archive_bytes:])
    inside = initrd_files(appended)
    assert {"usr/lib/layerboot/stage1/stream.pyc", "usr/lib/layerboot/stage1/stream_product.pyc",
            "usr/sbin/nbd-client"} <= inside
