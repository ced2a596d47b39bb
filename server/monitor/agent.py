"""The node agent: what ``layerboot heartbeat`` collects on a booted node and posts to layerbootd.

Runs on the node (stdlib plus layerboot.run; no server dependencies). On systemd bases a timer runs it once a
minute (``layerboot-heartbeat.timer``, shipped in the client layer and in debootstrap bases); on busybox bases
``layerboot heartbeat --loop`` is the loop (start it from inittab or the init script).

A heartbeat carries: uptime, load averages, memory, the profile/generation/serial stage1 booted
(``/run/layerboot/status``), failed systemd units, SMART health of the disks when smartctl is installed, and,
on an A/B install, which slot booted and whether GRUB fell back to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from layerboot import __version__
from layerboot.errors import LayerbootError
from layerboot.run import run, tool_path

STATUS_FILE = Path("/run/layerboot/status")
SKIP_DISKS = ("loop", "ram", "zram", "sr", "nbd", "dm-", "md", "fd")
UNIT_DIR = Path(__file__).parent / "units"
UNITS = ("layerboot-heartbeat.service", "layerboot-heartbeat.timer")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def collect(proc: Path = Path("/proc"), status_file: Path = STATUS_FILE) -> dict[str, Any]:
    """The heartbeat document (see server/monitor/model.py Heartbeat.from_json for the fields)."""
    data: dict[str, Any] = {"agent": f"layerboot {__version__}"}
    uptime = _read(proc / "uptime")
    if uptime:
        data["uptime"] = round(float(uptime.split()[0]), 1)
    load = _read(proc / "loadavg")
    if load:
        data["load"] = [float(x) for x in load.split()[:3]]
    meminfo = _read(proc / "meminfo") or ""
    memory = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable") and rest.split():
            memory["total" if name == "MemTotal" else "available"] = int(rest.split()[0]) * 1024
    if memory:
        data["memory"] = memory
    status = _read(status_file)
    if status:
        try:
            booted = json.loads(status)
            data.update({k: booted[k] for k in ("profile", "generation", "serial") if booted.get(k) is not None})
        except (ValueError, AttributeError):
            pass
    if os.path.isdir("/run/systemd/system"):
        data["failed_units"] = failed_units()
    disks = disk_health()
    if disks:
        data["disks"] = disks
    cmdline = _read(proc / "cmdline") or ""
    if "layerboot.slot=" in cmdline:
        data["ab"] = ab_state(cmdline)
    return data


def failed_units() -> list[str]:
    result = run(["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"],
                 check=False, timeout=20)
    return [line.split()[0] for line in result.text.splitlines() if line.split()][:64]


def disk_health(sys_block: Path = Path("/sys/block")) -> list[dict[str, str]]:
    """SMART overall health (``smartctl -H``) of each real disk; nothing when smartctl is not installed."""
    smartctl = tool_path("smartctl")
    if smartctl is None or not sys_block.is_dir():
        return []
    disks = []
    for entry in sorted(sys_block.iterdir()):
        if entry.name.startswith(SKIP_DISKS):
            continue
        result = run([smartctl, "-H", f"/dev/{entry.name}"], check=False, timeout=30)
        text = result.text
        if "PASSED" in text or "SMART Health Status: OK" in text:
            health, detail = "ok", ""
        elif "FAILED" in text:
            health = "failing"
            detail = next((line.strip() for line in text.splitlines() if "FAILED" in line), "")[:200]
        else:
            health, detail = "unknown", ""
        disks.append({"name": entry.name, "health": health, "detail": detail})
    return disks


def ab_state(cmdline: str) -> dict[str, Any]:
    """Booted slot and fallback of an A/B install: GRUB fell back when the slot it booted is not the first one
    of its order (the newer slot failed its tries and was marked bad)."""
    try:
        from layerboot.build.ab import AbDisk
        from layerboot.tools.cmd_install import booted_disk

        disk = AbDisk(booted_disk(cmdline))
        state = disk.state()
        booted = disk.booted_slot(cmdline) or ""
    except (LayerbootError, OSError) as err:
        return {"error": str(err)[:200]}
    wanted = state.order[0]
    return {"booted": booted, "wanted": wanted, "fallback": bool(booted) and booted != wanted,
            "states": {slot: state.slots[slot].state for slot in state.order}}


def install_units(root: Path, *, enable: bool = True) -> list[Path]:
    """Put the heartbeat service and timer under ``root``/etc/systemd/system, the timer enabled."""
    target = root / "etc/systemd/system"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        (target / name).write_text((UNIT_DIR / name).read_text())
        written.append(target / name)
    if enable:
        wants = target / "timers.target.wants"
        wants.mkdir(exist_ok=True)
        link = wants / "layerboot-heartbeat.timer"
        link.unlink(missing_ok=True)
        link.symlink_to("/etc/systemd/system/layerboot-heartbeat.timer")
    return written
