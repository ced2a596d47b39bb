"""Redfish power control over HTTP(S) with aiohttp (already layerbootd's HTTP library).

Three calls of the DMTF Redfish API: the ComputerSystem (``system``, or the first member of
``/redfish/v1/Systems``) gives ``PowerState`` and the ``#ComputerSystem.Reset`` action with its allowed
``ResetType`` values; the action is POSTed with ``On``, ``ForceOff``, and for a cycle ``PowerCycle`` where the
BMC offers it, else ``ForceRestart`` (an off node is simply turned ``On``). HTTP basic authentication; TLS
certificates are verified unless ``verify_tls = false`` (BMCs often carry self-signed ones).

Why not the sushy client library: it is synchronous (requests) and brings a plugin framework; the three calls
are small, and aiohttp keeps them off the event loop's critical path without a thread.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from layerboot.server.monitor.power import PowerError, PowerTarget

SETTLE = 60.0          # seconds a reset may take to show in PowerState (BMCs apply them asynchronously)


class RedfishDriver:
    def __init__(self, target: PowerTarget, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.base = str(target.options["url"]).rstrip("/")

    async def run(self, action: str) -> str:
        import aiohttp

        login = f"{self.target.options.get('username', '')}:{self.target.password}".encode("utf-8")
        headers = {"Accept": "application/json", "Authorization": "Basic " + base64.b64encode(login).decode("ascii")}
        connector = aiohttp.TCPConnector(ssl=None if self.target.options.get("verify_tls", True) else False)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                         headers=headers) as session:
            self.session = session
            system_path = str(self.target.options.get("system") or await self._first_system())
            system = await self._get(system_path)
            state = _state(system)
            if action == "status":
                return state
            reset = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
            target_url = reset.get("target") or f"{system_path}/Actions/ComputerSystem.Reset"
            allowed = reset.get("ResetType@Redfish.AllowableValues") or []
            if action == "cycle" and state == "off":
                action = "on"
            if action == state:
                return state
            kind = {"on": "On", "off": "ForceOff"}.get(action) or (
                "PowerCycle" if "PowerCycle" in allowed else "ForceRestart")
            if allowed and kind not in allowed:
                raise PowerError(f"the Redfish BMC of {self.target.mac} offers no {kind} reset "
                                 f"(it offers {', '.join(allowed)})")
            await self._post(target_url, {"ResetType": kind})
            wanted = "off" if action == "off" else "on"
            return await self._settle(system_path, wanted)

    async def _settle(self, path: str, wanted: str) -> str:
        """Poll PowerState until it shows ``wanted`` (or the time is up: then what it shows)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(SETTLE, self.timeout)
        while True:
            state = _state(await self._get(path))
            if state == wanted or loop.time() >= deadline:
                return state
            await asyncio.sleep(1.0)

    async def _first_system(self) -> str:
        members = (await self._get("/redfish/v1/Systems")).get("Members") or []
        if not members or "@odata.id" not in members[0]:
            raise PowerError(f"the Redfish service at {self.base} lists no systems")
        return str(members[0]["@odata.id"])

    async def _get(self, path: str) -> dict[str, Any]:
        return await self._request("GET", path)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import aiohttp

        url = path if path.startswith(("http://", "https://")) else self.base + path
        try:
            async with self.session.request(method, url, json=body) as response:
                text = await response.text()
                if response.status == 401:
                    raise PowerError(f"the Redfish BMC at {self.base} refused the login for {self.target.mac}",
                                     hint="check username and password in the power file")
                if response.status >= 400:
                    raise PowerError(f"Redfish {method} {path} for {self.target.mac}: HTTP {response.status} "
                                     f"{_message(text)}")
                if not text.strip():
                    return {}
                try:
                    return await response.json(content_type=None)
                except ValueError:
                    raise PowerError(f"Redfish {method} {path}: the answer is not JSON") from None
        except aiohttp.ClientError as err:
            raise PowerError(f"cannot reach the Redfish BMC of {self.target.mac} at {self.base}: {err}") from None


def _state(system: dict[str, Any]) -> str:
    """PowerState On/Off/PoweringOn/PoweringOff -> on/off/powering-on/powering-off."""
    value = str(system.get("PowerState") or "unknown")
    return {"On": "on", "Off": "off", "PoweringOn": "powering-on", "PoweringOff": "powering-off"}.get(value,
                                                                                                    value.lower())


def _message(text: str) -> str:
    import json

    try:
        error = json.loads(text).get("error", {})
        extended = error.get("@Message.ExtendedInfo") or [{}]
        return str(extended[0].get("Message") or error.get("message") or "")[:200]
    except (ValueError, AttributeError):
        return text.strip()[:200]
