"""Real power controllers on loopback for tests: OpenIPMI's ipmi_sim BMC, the sushy-tools Redfish emulator, and
a QEMU guest with a QMP socket. Each is started in a temporary directory and stopped by its context manager."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layerboot.ports import free_port, wait_listening
from layerboot.run import Process, devnull, require_tool, tool_path

BMC_USER, BMC_PASSWORD = "admin", "bmc-secret-7f3a"

# A chassis for ipmi_sim: it runs "PROG get power" and "PROG set power 0|1" (ipmi_lan(5), chassis_control)
CHASSIS = """#!/bin/sh
state={state}
echo "$@" >> {calls}
op=$1; shift
case "$op" in
get) for p in "$@"; do [ "$p" = power ] && echo "power:$(cat "$state" 2>/dev/null || echo 0)"; done ;;
set) while [ $# -gt 1 ]; do [ "$1" = power ] && echo "$2" > "$state"; shift 2; done ;;
esac
exit 0
"""
LAN_CONF = """name "lbtest"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{chassis}"
  user 1 true  ""     "unused" user     10       none md2 md5 straight
  user 2 true  "{user}" "{password}" admin  10       none md2 md5 straight
"""
EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""
SUSHY_CONFIG = """SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_AUTH_FILE = {auth!r}
SUSHY_EMULATOR_STATE_DIR = {state!r}
SUSHY_EMULATOR_FAKE_SYSTEMS = [{{"uuid": "27946b59-9e44-4fa7-8e91-f3527a1ef094", "name": "node1",
                                "power_state": "Off", "nics": [{{"mac": "52:54:00:12:34:56"}}]}}]
"""


@contextmanager
def ipmi_bmc(work: Path) -> Iterator[dict]:
    """ipmi_sim on 127.0.0.1 (UDP); yields the power-file entry and the chassis's call log."""
    simulator = tool_path("ipmi_sim")
    if simulator is None:
        raise RuntimeError("ipmi_sim is missing: apt-get install openipmi (see .ci/install)")
    work.mkdir(parents=True, exist_ok=True)
    (work / "state").mkdir(exist_ok=True)
    chassis, calls = work / "chassis.sh", work / "calls"
    chassis.write_text(CHASSIS.format(state=work / "power", calls=calls))
    chassis.chmod(0o755)
    port = free_port()
    (work / "lan.conf").write_text(LAN_CONF.format(port=port, chassis=chassis, user=BMC_USER, password=BMC_PASSWORD))
    (work / "cmds.emu").write_text(EMU)
    proc = Process([simulator, "-c", work / "lan.conf", "-f", work / "cmds.emu", "-s", work / "state", "-n"],
                   stdout=devnull(), stderr=devnull())
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"ipmi_sim exited with status {proc.poll()}")
        yield {"entry": {"driver": "ipmi", "host": "127.0.0.1", "port": port, "username": BMC_USER,
                         "password": BMC_PASSWORD}, "calls": calls}
    finally:
        proc.terminate()


@contextmanager
def redfish_bmc(work: Path) -> Iterator[dict]:
    """sushy-emulator (sushy-tools) with its fake driver and HTTP basic auth; yields the power-file entry."""
    import bcrypt

    work.mkdir(parents=True, exist_ok=True)
    auth = work / "htpasswd"
    auth.write_text(f"{BMC_USER}:{bcrypt.hashpw(BMC_PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
    config = work / "emulator.conf"
    config.write_text(SUSHY_CONFIG.format(auth=str(auth), state=str(work / "state")))
    port = free_port()
    emulator = Path(sys.executable).parent / "sushy-emulator"
    argv = [str(emulator)] if emulator.exists() else [sys.executable, "-m", "sushy_tools.emulator.main"]
    proc = Process([*argv, "--config", config, "-i", "127.0.0.1", "-p", str(port), "--fake"],
                   stdout=devnull(), stderr=open(work / "emulator.log", "wb"),
                   env={"PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        wait_listening(port, proc, "sushy-emulator", log=work / "emulator.log")
        yield {"entry": {"driver": "redfish", "url": f"http://127.0.0.1:{port}", "username": BMC_USER,
                         "password": BMC_PASSWORD}, "log": work / "emulator.log"}
    finally:
        proc.terminate()


@contextmanager
def qmp_guest(work: Path, *, paused: bool = True) -> Iterator[dict]:
    """A QEMU guest with no disk (it sits in the BIOS) and a QMP socket; yields the power-file entry."""
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "node.qmp"
    argv = [require_tool("qemu-system-x86_64", package="qemu-system-x86"), "-accel", "tcg", "-m", "32",
            "-nodefaults", "-display", "none", "-no-shutdown", "-qmp", f"unix:{sock},server=on,wait=off"]
    proc = Process([*argv, *(["-S"] if paused else [])], stdout=devnull(), stderr=devnull())
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("QEMU did not create its QMP socket")
            time.sleep(0.05)
        yield {"entry": {"driver": "qmp", "socket": str(sock)}, "process": proc}
    finally:
        proc.terminate()


def write_power_file(path: Path, entries: dict[str, dict]) -> Path:
    """The root-only power file, written as an admin would (TOML, mode 0600)."""
    lines = []
    for mac, entry in entries.items():
        lines.append(f'["{mac}"]')
        for key, value in entry.items():
            lines.append(f"{key} = {value!r}".replace("'", '"') if not isinstance(value, bool) else
                         f"{key} = {'true' if value else 'false'}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path
