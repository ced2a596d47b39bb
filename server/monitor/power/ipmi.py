"""IPMI v2.0 (RMCP+, ``lanplus``) power control with ipmitool (Debian's ipmitool package).

ipmitool runs through layerboot.run in a worker thread, so the event loop never waits on a BMC. The password
goes in ipmitool's environment (``-E`` reads ``IPMI_PASSWORD``), never on its command line, where ``ps`` would
show it. ``chassis power cycle`` is refused by BMCs while the chassis is off, so a cycle of an off node is a
power on.
"""

from __future__ import annotations

import asyncio
import re

from layerboot.errors import CommandError
from layerboot.run import require_tool, run
from layerboot.server.monitor.power import PowerError, PowerTarget

_STATE = re.compile(r"Chassis Power is (on|off)", re.IGNORECASE)


class IpmiDriver:
    def __init__(self, target: PowerTarget, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout

    def _ipmitool(self, *command: str) -> str:
        options = self.target.options
        argv = [require_tool("ipmitool"), "-I", str(options.get("interface", "lanplus")), "-H", str(options["host"]),
                "-p", str(options.get("port", 623)), "-U", str(options.get("username", "")), "-E", "-N", "2",
                "-R", "2", *command]
        try:
            return run(argv, env={"IPMI_PASSWORD": self.target.password}, timeout=self.timeout).text
        except CommandError as err:
            tail = (err.stderr or "").strip().splitlines()
            raise PowerError(f"ipmitool {' '.join(command)} for {self.target.mac} at {options['host']} failed: "
                             f"{tail[-1] if tail else err}", hint="check host, port, user and password in the "
                                                                  "power file") from None

    def _status(self) -> str:
        text = self._ipmitool("chassis", "power", "status")
        match = _STATE.search(text)
        if not match:
            raise PowerError(f"ipmitool printed no power state for {self.target.mac}: {text.strip()[:200]!r}")
        return match.group(1).lower()

    def _run(self, action: str) -> str:
        state = self._status()
        if action == "cycle" and state == "off":
            action = "on"
        if action != "status" and action != state:
            self._ipmitool("chassis", "power", action)
            state = self._status()
        return state

    async def run(self, action: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._run, action)
