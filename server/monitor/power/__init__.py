"""Power control: on, off, cycle and status of a node through its BMC or power controller.

Drivers: ``ipmi`` (ipmitool, IPMI v2.0 lanplus), ``redfish`` (HTTP(S), the DMTF REST API) and ``qmp`` (a QEMU
guest's QMP socket, for labs and tests). Which node uses what lives in one TOML file, root-only, because it
holds BMC passwords (``monitor.power_file``; by default ``state/power.toml`` in the store)::

    ["52:54:00:12:34:56"]
    driver = "ipmi"
    host = "10.0.0.50"          # port = 623, interface = "lanplus", cipher_suite = 3
    username = "admin"
    password = "..."

    ["52:54:00:12:34:57"]
    driver = "redfish"
    url = "https://10.0.0.51"   # system = "/redfish/v1/Systems/1" (default: the first), verify_tls = true
    username = "root"
    password = "..."

    ["52:54:00:12:34:58"]
    driver = "qmp"
    socket = "/run/lab/node58.qmp"

The file is refused unless it is owned by the user reading it (root) and has no group/other permissions.
Passwords never appear in logs, errors or argv (ipmitool reads it from its environment). Every driver is
async: nothing blocks the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.paths import Paths
from layerboot.server.nodes import normalize_mac

log = logging.getLogger("layerboot.monitor.power")

ACTIONS = ("on", "off", "cycle", "status")
DRIVERS = ("ipmi", "redfish", "qmp")
_KEYS = {
    "ipmi": {"driver", "host", "port", "username", "password", "interface", "cipher_suite"},
    "redfish": {"driver", "url", "username", "password", "system", "verify_tls"},
    "qmp": {"driver", "socket"},
}
_REQUIRED = {"ipmi": ("host",), "redfish": ("url",), "qmp": ("socket",)}


class PowerError(LayerbootError):
    """The BMC or power controller failed or refused: layerbootd answers 502 (Bad Gateway)."""

    http_status = 502


@dataclass(frozen=True)
class PowerTarget:
    """How to reach one node's power control. ``password`` never shows in a repr."""

    mac: str
    driver: str
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    password: str = field(default="", repr=False)

    @property
    def address(self) -> str:
        return str(self.options.get("host") or self.options.get("url") or self.options.get("socket") or "?")

    def describe(self) -> str:
        return f"{self.driver} {self.address}"


def power_file(config: Any, paths: Paths) -> Path:
    return Path(config.monitor_power_file) if config.monitor_power_file else paths.power_file


def check_private(path: Path, what: str) -> None:
    """Refuse a secrets file others can read or that someone else owns (as ssh does)."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise LayerbootError(f"{what} {path} belongs to uid {info.st_uid}, not to the user reading it",
                             hint=f"chown root: {path}")
    if info.st_mode & 0o077:
        raise LayerbootError(f"{what} {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o})",
                             hint=f"it holds passwords: chmod 600 {path}")


def load_targets(path: Path) -> dict[str, PowerTarget]:
    """Every node's power target from the file; {} when it does not exist. Errors name the file and key."""
    try:
        check_private(path, "power file")
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except PermissionError:
        raise LayerbootError(f"cannot read the power file {path}", hint="BMC credentials are root-only: "
                                                                         "run as root") from None
    except tomllib.TOMLDecodeError as err:
        raise LayerbootError(f"{path}: not valid TOML: {err}") from None
    targets: dict[str, PowerTarget] = {}
    for key, entry in table.items():
        try:
            mac = normalize_mac(key)
        except LayerbootError:
            raise LayerbootError(f"{path}: [{key!r}] is not a MAC address",
                                 hint='each node is a table named by its MAC: ["52:54:00:12:34:56"]') from None
        targets[mac] = _target(mac, entry, f"{path}: [\"{key}\"]")
    return targets


def _target(mac: str, entry: Any, where: str) -> PowerTarget:
    if not isinstance(entry, dict):
        raise LayerbootError(f"{where} must be a table with a driver")
    driver = entry.get("driver")
    if driver not in DRIVERS:
        raise LayerbootError(f"{where}.driver: expected one of {', '.join(DRIVERS)}, got {driver!r}")
    for key, value in entry.items():
        if key not in _KEYS[driver]:
            raise LayerbootError(f"{where}.{key}: unknown key for the {driver} driver "
                                 f"(known: {', '.join(sorted(_KEYS[driver]))})")
        expected = bool if key == "verify_tls" else int if key in ("port", "cipher_suite") else str
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise LayerbootError(f"{where}.{key}: expected a {expected.__name__}")
    for key in _REQUIRED[driver]:
        if not entry.get(key):
            raise LayerbootError(f"{where}.{key}: the {driver} driver needs it")
    options = {k: v for k, v in entry.items() if k not in ("driver", "password")}
    return PowerTarget(mac, driver, options, entry.get("password", ""))


class Targets:
    """The power file, re-read when it changes (so editing it needs no daemon restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._targets: dict[str, PowerTarget] = {}

    def get(self, mac: str) -> PowerTarget:
        mac = normalize_mac(mac)
        try:
            info = self.path.stat()
            stamp = (info.st_mtime, info.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or stamp is None:
            self._targets = load_targets(self.path) if stamp is not None else {}
            self._stamp = stamp
        target = self._targets.get(mac)
        if target is None:
            raise NotFoundError(f"node {mac} has no power control configured in {self.path}",
                                hint="add a table for it (see docs/monitor.md, 'Power control')")
        return target


async def power(target: PowerTarget, action: str, *, timeout: float = 30.0) -> str:
    """Do ``action`` (on, off, cycle, status) and return the power state after it ("on", "off", ...)."""
    if action not in ACTIONS:
        raise PowerError(f"unknown power action {action!r} (known: {', '.join(ACTIONS)})")
    if target.driver == "qmp":
        from layerboot.server.monitor.power.qmp import QmpDriver as Driver
    elif target.driver == "redfish":
        from layerboot.server.monitor.power.redfish import RedfishDriver as Driver  # type: ignore[assignment]
    else:
        from layerboot.server.monitor.power.ipmi import IpmiDriver as Driver  # type: ignore[assignment]
    driver = Driver(target, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            state = await driver.run(action)
    except TimeoutError:
        raise PowerError(f"power {action} of {target.mac} ({target.describe()}) took longer than {timeout:.0f} s",
                         hint="is the BMC reachable? monitor.power_timeout sets the limit") from None
    log.info("power %s %s via %s: %s", action, target.mac, target.describe(), state)
    return state
