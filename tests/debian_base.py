"""One `layerboot base debootstrap` per test session, shared by the tests that need a real Debian base.

Built through the CLI (so the command itself is what is tested) into a store of its own under /var/tmp,
removed when the session ends. The downloads are cached across sessions by the command itself.

Beyond the default packages it has what tests/test_site_qemu.py's node runs: the site services' clients
(rsyslog, chrony) and the data-area tools (mdadm, lvm2, fdisk for sfdisk, e2fsprogs; kmod, whose modprobe loads
md and device-mapper from the modules layer: minbase has none, and the kernel's request_module needs it too).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from layerboot.overlays.layer import Layer
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.run import run


EXTRA_PACKAGES = ("rsyslog", "chrony", "mdadm", "lvm2", "fdisk", "e2fsprogs", "kmod")


def console_unit(description: str, exec_start: str, *, after: str = "", wants: str = "",
                 stderr: bool = False) -> str:
    """A oneshot unit for a test's overlay that runs once the Debian base is up, writes to the serial console
    (where the test reads its pass line) and powers the guest off however it ends.

    It is ordered before the serial getty: serial-getty@ttyS0 is Type=idle, so systemd execs agetty (hanging
    ttyS0 up first: TTYVHangup=yes) when the job queue is empty or 5 s after starting it. Ordered after
    multi-user.target instead, a unit still writing then lost its lines, its last echo failed and the guest
    never powered off (seen in a fresh-clone run for test_pxe_debian_boot, and in CI for test_site_qemu).
    ExecStopPost powers off even when the unit fails, so a failure shows at once, not after the test's wait.
    """
    unit = ["[Unit]", f"Description={description}"]
    unit += [f"Wants={wants}"] if wants else []
    unit += [f"After=basic.target {after}".rstrip(), "Before=serial-getty@ttyS0.service getty.target", "",
             "[Service]", "Type=oneshot", "StandardOutput=tty"]
    unit += ["StandardError=tty"] if stderr else []
    unit += ["TTYPath=/dev/ttyS0", f"ExecStart={exec_start}", "ExecStopPost=/usr/bin/systemctl --no-block poweroff",
             "", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(unit) + "\n"


@dataclass(frozen=True)
class DebianBase:
    store: Store
    layer: Layer
    seconds: float          # how long the build took (cached downloads)
    log: str                # the command's -v output

    @property
    def image(self) -> Path:
        return self.store.path(self.layer)


@functools.cache
def debian_base() -> DebianBase:
    work = Path(tempfile.mkdtemp(prefix="lbt-debian-base-", dir="/var/tmp"))
    atexit.register(shutil.rmtree, work, True)
    store = Store(Paths(work / "store"))
    store.init()
    started = time.monotonic()
    result = run([sys.executable, "-m", "layerboot", "-s", str(store.paths.root), "-v", "base", "debootstrap",
                  "--include", ",".join(EXTRA_PACKAGES)], check=False, timeout=1800)
    assert result.returncode == 0, result.stderr.decode()
    return DebianBase(store, store.get(result.text.strip()), time.monotonic() - started,
                      result.stderr.decode())
