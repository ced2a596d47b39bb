"""One timed QEMU boot: start the guest, timestamp every serial line, stop at the marker or a failure.

Every system is booted the same way: direct kernel boot of the same kernel with its own initrd and command
line, ``-accel tcg -cpu qemu64,+rdrand``, one vCPU, user networking with a virtio NIC, serial console on
stdout. The clock starts just before QEMU is spawned and stops when the marker line arrives on the host.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from layerboot.run import Process, require_tool

from peers.rootfs import MARKER, MarkerLine, parse_marker

GRACE_AFTER_FAILURE = 2.0   # seconds of console kept after a failure line (the error's context)
GRACE_AFTER_MARKER = 5.0    # the rootfs powers off by itself; kill QEMU if it has not after this


@dataclass(frozen=True)
class Guest:
    """What to boot: kernel, initrd, command line, and the QEMU machine size."""

    kernel: Path
    initrd: Path
    append: str
    mem_mb: int = 1024
    cpus: int = 1
    mac: str | None = None


def qemu_argv(guest: Guest) -> list[str]:
    nic = "virtio-net-pci,netdev=n0,romfile=" + (f",mac={guest.mac}" if guest.mac else "")
    return [require_tool("qemu-system-x86_64", package="qemu-system-x86"),
            "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", str(guest.mem_mb), "-smp", str(guest.cpus),
            "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-netdev", "user,id=n0", "-device", nic,
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", guest.append]


@dataclass(frozen=True)
class BootRun:
    """One boot's outcome. ``seconds`` is host time from QEMU start to the marker (None: no marker)."""

    seconds: float | None
    marker: MarkerLine | None
    failure: str | None
    exit_seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.failure is None


def boot(guest: Guest, log: Path, *, timeout: float, fail: re.Pattern[str] | None = None) -> BootRun:
    """Boot once, writing the timestamped serial console to ``log``."""
    argv = qemu_argv(guest)
    log.parent.mkdir(parents=True, exist_ok=True)
    seconds: float | None = None
    marker: MarkerLine | None = None
    failure: str | None = None
    start = time.monotonic()
    deadline = [start + timeout]
    with open(log, "w", encoding="utf-8", errors="replace") as out, \
            open(log.with_suffix(".stderr"), "wb") as err:
        out.write("# " + " ".join(argv) + "\n")
        proc = Process(argv, stderr=err)
        stop = threading.Event()

        def watchdog() -> None:
            while not stop.wait(0.2):
                if time.monotonic() > deadline[0]:
                    proc.kill()
                    return

        threading.Thread(target=watchdog, name="qemu-watchdog", daemon=True).start()
        try:
            assert proc.stdout is not None
            pending = b""
            while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
                now = time.monotonic() - start
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    out.write(f"[{now:8.3f}] {line}\n")
                    if seconds is None and MARKER in line and (found := parse_marker(line)):
                        seconds, marker = now, found
                        deadline[0] = min(deadline[0], time.monotonic() + GRACE_AFTER_MARKER)
                    elif failure is None and seconds is None and fail is not None and fail.search(line):
                        failure = line.strip()
                        deadline[0] = min(deadline[0], time.monotonic() + GRACE_AFTER_FAILURE)
            proc.wait()
        finally:
            stop.set()
            proc.terminate()
        exit_seconds = time.monotonic() - start
        if seconds is None and failure is None:
            failure = f"no {MARKER} line within {timeout:.0f} s" if exit_seconds >= timeout else \
                f"QEMU exited after {exit_seconds:.1f} s without a {MARKER} line"
        out.write(f"# exit after {exit_seconds:.3f} s; marker {seconds}; failure {failure}\n")
    return BootRun(seconds, marker, failure, exit_seconds, log)
