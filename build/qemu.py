"""A reusable QEMU node for tests, benchmarks and the demo: TCG guest, serial console captured with timestamps.

KVM is not used (it hangs on these machines): ``-accel tcg -cpu qemu64,+rdrand`` (rdrand so the guest's first
getrandom() does not stall). The serial console is read by a thread; every line is written to a log file with
its time since QEMU started and kept in memory so tests can wait for a line, with patterns that fail early.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.run import Process, devnull, require_tool

DEFAULT_MAC = "52:54:00:12:34:56"
OVMF_DIR = Path("/usr/share/OVMF")
# firmware -> (code image, variable store template). "secureboot": Debian's OVMF with Microsoft's and Debian's
# keys enrolled (OVMF_VARS_4M.ms.fd), Secure Boot enforced; it needs q35 with SMM.
FIRMWARE = {"uefi": ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
            "secureboot": ("OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.fd")}
# Lines that mean the boot went wrong, whatever the test waits for.
KERNEL_FAILURES = (r"Kernel panic", r"Traceback \(most recent call last\)", r"Attempted to kill init")


class QemuError(LayerbootError):
    pass


@dataclass(frozen=True)
class Line:
    seconds: float   # since QEMU was started
    text: str


@dataclass
class NodeConfig:
    """How to boot: direct kernel (kernel + initrd + append) or PXE through the NIC's iPXE ROM (tftp_dir)."""

    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    tftp_dir: Path | None = None
    bootfile: str = ""
    mac: str = DEFAULT_MAC
    uuid: str = ""                # SMBIOS system UUID (the guest's /sys/class/dmi/id/product_uuid); "" = QEMU's
    serial: str = ""              # SMBIOS system serial (product_serial); with uuid, the node's asset key
    memory_mb: int = 1024
    cpus: int = 1
    no_reboot: bool = True
    disks: list[Path] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    nics: list[str] | None = None   # -netdev/-device arguments instead of the user-mode NIC (taps, sockets)
    namespace: str = ""             # run QEMU in this network namespace (where its taps are)
    nic: str = "virtio-net-pci"          # QEMU NIC model: e1000e, rtl8139, e1000, vmxnet3, ...
    nic_rom: str | None = None           # romfile= for the NIC ("" for none: OVMF's own driver); None: QEMU's
    disk_bus: str = "virtio"             # virtio or ahci (disks on an AHCI controller, as SATA disks)
    firmware: str = "bios"               # bios (SeaBIOS), uefi (OVMF) or secureboot (OVMF, Secure Boot on)
    vars_file: Path | None = None        # writable copy of the UEFI variable store (made from the template)
    netdev: str = ""                     # -netdev spec instead of QEMU's user networking (e.g. a tap device)

    def argv(self) -> list[str]:
        argv = [require_tool("qemu-system-x86_64", package="qemu-system-x86"),
                "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", str(self.memory_mb), "-smp", str(self.cpus),
                "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio",
                "-device", "virtio-rng-pci"]
        if self.uuid:
            argv += ["-uuid", self.uuid]
        if self.serial:
            argv += ["-smbios", f"type=1,serial={self.serial.replace(',', ',,')}"]
        argv += self.firmware_argv()
        if self.nics is not None:
            argv += self.nics
        else:
            netdev = self.netdev or "user,id=n0"
            if self.tftp_dir is not None and not self.netdev:
                netdev += f",tftp={self.tftp_dir},bootfile={self.bootfile}"
            rom = "" if self.nic_rom is None else f",romfile={self.nic_rom}"
            argv += ["-netdev", netdev, "-device", f"{self.nic},netdev=n0,mac={self.mac}{rom}"]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
            argv += ["-append", self.append]
        else:
            argv += ["-boot", "n"]   # PXE: the NIC's iPXE ROM (a NIC with romfile= in nics has none)
        if self.disk_bus == "ahci" and self.disks:
            argv += ["-device", "ahci,id=ahci0"]
        for index, disk in enumerate(self.disks):
            if self.disk_bus == "ahci":
                argv += ["-drive", f"file={disk},if=none,format=raw,id=disk{index}",
                         "-device", f"ide-hd,drive=disk{index},bus=ahci0.{index}"]
            else:
                argv += ["-drive", f"file={disk},if=virtio,format=raw,index={index}"]
        if self.no_reboot:
            argv.append("-no-reboot")
        prefix = ["ip", "netns", "exec", self.namespace] if self.namespace else []
        return prefix + argv + self.extra

    def firmware_argv(self) -> list[str]:
        """SeaBIOS needs nothing; OVMF is two pflash drives: the read-only code and a writable variable store."""
        if self.firmware == "bios":
            return []
        if self.firmware not in FIRMWARE:
            raise QemuError(f"unknown firmware {self.firmware!r}: use bios, uefi or secureboot")
        code, template = (OVMF_DIR / name for name in FIRMWARE[self.firmware])
        if not code.is_file() or not template.is_file():
            raise QemuError(f"{code} or {template} is missing", hint="apt-get install ovmf")
        if self.vars_file is None:
            raise QemuError("UEFI boots need NodeConfig.vars_file (a writable copy of the variable store)")
        if not self.vars_file.exists():
            self.vars_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template, self.vars_file)
        argv = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars_file}"]
        if self.firmware == "secureboot":
            argv = ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on", *argv]
        return argv


class QemuNode:
    """One running guest. Use as a context manager; the guest is always killed on exit."""

    def __init__(self, config: NodeConfig, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.lines: list[Line] = []
        self._cond = threading.Condition()
        self._process: Process | None = None
        self._reader: threading.Thread | None = None
        self._console_in: int | None = None
        self.started = 0.0

    def start(self) -> "QemuNode":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        read_end, self._console_in = os.pipe()
        try:
            self._process = Process(self.config.argv(), stdin=read_end, stderr=devnull())
        finally:
            os.close(read_end)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self._process.stdout:
                text = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
                line = Line(round(time.monotonic() - self.started, 3), text)
                log.write(f"[{line.seconds:8.3f}] {text}\n")
                log.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _describe(self) -> str:
        tail = "\n".join(f"  {line.text}" for line in self.lines[-25:])
        return f"(serial log {self.log_path}, last lines:\n{tail})"

    def wait_for(self, pattern: str, *, timeout: float = 120.0, fail: tuple[str, ...] = KERNEL_FAILURES,
                 start: int = 0) -> Line:
        """The first line from index ``start`` matching ``pattern``; QemuError on a fail pattern, exit or timeout."""
        wanted = re.compile(pattern)
        failing = [re.compile(p) for p in fail]
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    index += 1
                    if wanted.search(line.text):
                        return line
                    for bad in failing:
                        if bad.search(line.text):
                            raise QemuError(f"guest printed {line.text!r} while waiting for {pattern!r} "
                                            f"{self._describe()}")
                reader_done = self._reader is not None and not self._reader.is_alive()
                if reader_done:
                    raise QemuError(f"QEMU exited while waiting for {pattern!r} {self._describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QemuError(f"no line matching {pattern!r} within {timeout:.0f}s {self._describe()}")
                self._cond.wait(min(left, 1.0))

    def wait_exit(self, timeout: float = 120.0) -> int:
        """Wait for the guest to power off (or reset, with -no-reboot); returns QEMU's exit status."""
        assert self._process is not None
        rc = self._process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return rc

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console (e.g. commands for an emergency or break shell)."""
        assert self._console_in is not None
        os.write(self._console_in, text.encode())

    def text(self) -> str:
        with self._cond:
            return "\n".join(line.text for line in self.lines)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
        if self._reader is not None:
            self._reader.join(timeout=10)   # reads to EOF before the pipes are closed
        if self._process is not None:
            self._process.terminate()
        if self._console_in is not None:
            os.close(self._console_in)
            self._console_in = None

    def __enter__(self) -> "QemuNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
