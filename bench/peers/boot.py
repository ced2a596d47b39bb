"""One timed boot: build/qemu.py's QEMU node, stopped at the rootfs marker or at a failure line.

Every system is booted the same way: direct kernel boot of the same kernel with its own initrd and command
line, ``-accel tcg -cpu qemu64,+rdrand``, one vCPU, user networking with a virtio NIC, serial console read with
timestamps from QEMU's start. The figure is the timestamp of the marker line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from layerboot.build.qemu import DEFAULT_MAC, KERNEL_FAILURES, NodeConfig, QemuError, QemuNode
from layerboot.errors import CommandError

from peers.rootfs import MARKER, MarkerLine, parse_marker

MARKER_PATTERN = rf"{MARKER} \S+ version=\S+"
EXIT_WAIT = 10.0   # the rootfs powers off by itself right after the marker


@dataclass(frozen=True)
class Guest:
    """What to boot: kernel, initrd, command line, and the QEMU machine."""

    kernel: Path
    initrd: Path
    append: str
    mem_mb: int = 1024
    cpus: int = 1
    mac: str | None = None
    disks: tuple[Path, ...] = ()


def node_config(guest: Guest) -> NodeConfig:
    return NodeConfig(kernel=guest.kernel, initrd=guest.initrd, append=guest.append, mac=guest.mac or DEFAULT_MAC,
                      memory_mb=guest.mem_mb, cpus=guest.cpus, disks=list(guest.disks))


@dataclass(frozen=True)
class BootRun:
    """One boot's outcome. ``seconds`` is time from QEMU start to the marker (None: no marker, see failure).

    ``cpu_seconds`` is the CPU time QEMU used over its whole life (user + system, from the reaped child): guest
    work under TCG, which the load of a shared host inflates far less than the wall time.
    """

    seconds: float | None
    marker: MarkerLine | None
    failure: str | None
    log: Path
    cpu_seconds: float = 0.0


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def boot(guest: Guest, log: Path, *, timeout: float, fail: re.Pattern[str] | None = None) -> BootRun:
    """Boot once, the timestamped serial console going to ``log``."""
    failing = (*KERNEL_FAILURES, *((fail.pattern,) if fail is not None else ()))
    cpu_before = _children_cpu()
    line = failure = None
    with QemuNode(node_config(guest), log) as node:
        try:
            line = node.wait_for(MARKER_PATTERN, timeout=timeout, fail=failing)
        except QemuError as err:
            failure = str(err).split(" (serial log")[0].split(" while waiting for ")[0]
        else:
            try:
                node.wait_exit(timeout=EXIT_WAIT)
            except CommandError:
                pass   # still running: the context exit kills it; the figure is already taken
    cpu = _children_cpu() - cpu_before   # QEMU is reaped when the node's context ends
    if line is None:
        return BootRun(None, None, failure, log, cpu)
    return BootRun(line.seconds, parse_marker(line.text), None, log, cpu)
