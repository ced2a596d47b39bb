"""bench/bench_netlink.py's own logic: medians over runs, the ratio against stage1 on the same steps, and one
real host run of every approach in a network namespace (the QEMU half is the benchmark itself)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_netlink  # noqa: E402


def result(approach: str, run: int, imported: float, step: float | None, modules: int) -> dict:
    steps = {name: step for name in ("up", "mtu", "addr4")}
    if approach == "ioctl":
        steps["addr4"] = None
    return {"approach": approach, "run": run, "import": imported, "steps": steps, "modules": modules}


def test_medians_and_ratios_compare_like_with_like() -> None:
    runs = [result("stage1", r, 0.01 * r, 0.001 * r, 16) for r in (1, 2, 3)] + \
           [result("pyroute2", r, 1.0, 0.01, 337) for r in (1, 2, 3)] + \
           [result("ioctl", r, 0.0, 0.0005, 4) for r in (1, 2, 3)]
    table = bench_netlink.medians(runs)
    assert table["stage1"]["import"] == 0.02 and table["stage1"]["ops"] == pytest.approx(0.006)
    assert table["ioctl"]["steps"]["addr4"] is None and table["ioctl"]["ops"] == pytest.approx(0.001)
    lines = bench_netlink.report("t", table)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "ms" in line}
    assert rows["stage1"].endswith("| 1.00x |")
    assert rows["pyroute2"].endswith(f"| {(1.0 + 0.03) / (0.02 + 0.006):.2f}x |")
    assert "2/3" in rows["ioctl"] and rows["ioctl"].endswith(f"| {0.001 / (0.02 + 0.004):.2f}x |")


@pytest.mark.root
def test_one_host_run_of_each_approach(tmp_path: Path) -> None:
    pytest.importorskip("pyroute2")
    if not os.path.exists(bench_netlink.PYTHON):
        pytest.skip(f"{bench_netlink.PYTHON} missing")
    sizes = bench_netlink.payload(tmp_path / "root")
    assert sizes["modules"]["pyroute2"] > 100 and sizes["bytes"]["pyroute2"] > sizes["bytes"]["stage1"]
    results = bench_netlink.host_runs(tmp_path / "root", 1)
    by = {r["approach"]: r for r in results}
    assert set(by) == set(bench_netlink.APPROACHES)
    # On veth pairs (no VLAN or bonding in the host kernel) every approach but the IPv4-only ioctls does 7 steps.
    assert sum(v is not None for v in by["stage1"]["steps"].values()) == 7
    assert sum(v is not None for v in by["ioctl"]["steps"].values()) == 5
    assert by["pyroute2"]["modules"] > 10 * by["stage1"]["modules"]
