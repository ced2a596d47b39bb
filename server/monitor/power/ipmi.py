"""IPMI v2.0 (RMCP+, ``lanplus``) power control with ipmitool (Debian's ipmitool package).

ipmitool runs through layerboot.run in a worker thread, so the event loop never waits on a BMC. The password
goes in ipmitool's environment (``-E`` reads ``IPMI_PASSWORD``), never on its command line, where ``ps`` would
show it. ``chassis power cycle`` is refused by BMCs while the chassis is off, so a cycle of an off node is a
power on. Cipher suite 3 (RAKP-HMAC-SHA1, AES-CBC-128: what IPMI v2.0 BMCs offer by default) is asked for
directly (``cipher_suite`` in the power file changes it): ipmitool's negotiation costs seconds per call on
BMCs that do not answer "Get Channel Cipher Suites".
"""

from __future__ import annotations

import asyncio
import re
import time

from layerboot.errors import CommandError
from layerboot.run import require_tool, run
from layerboot.server.monitor.power import PowerError, PowerTarget

SETTLE = 30.0           # seconds a power action may take to show in the chassis status
_STATE = re.compile(r"Chassis Power is (on|off)", re.IGNORECASE)


class IpmiDriver:
    def __init__(self, target: PowerTarget, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout

    def _ipmitool(self, *command: str) -> str:
        options = self.target.options
        argv = [require_tool("ipmitool"), "-I", str(options.get("interface", "lanplus")),
                "-C", str(options.get("cipher_suite", 3)), "-H", str(options["host"]),
                "-p", str(options.get("port", 623)), "-U", str(options.get("username", "")), "-E", "-N", "2", "-R", "2",
                *command]
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
        if action == "status" or action == state:
            return state
        self._ipmitool("chassis", "power", action)
        # BMCs apply a cycle (off, then on a moment later) and often on/off asynchronously: wait for the state
        wanted = "off" if action == "off" else "on"
        deadline = time.monotonic() + min(SETTLE, self.timeout / 2)
        while True:
            state = self._status()
            if state == wanted or time.monotonic() >= deadline:
                return state
            time.sleep(0.5)

    async def run(self, action: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._run, action)
