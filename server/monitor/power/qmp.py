"""QEMU guests as power-controlled nodes, through QMP (the QEMU Monitor Protocol) with the qemu.qmp library.

Start the guest with ``-qmp unix:/run/lab/NODE.qmp,server=on,wait=off -no-shutdown``: ``-no-shutdown`` keeps
QEMU (the "chassis") alive when the guest powers itself off, as a real machine stays plugged in.

* status: ``query-status``: running -> on; anything else (shutdown, paused, prelaunch, guest-panicked) -> off;
* on: from off, ``system_reset`` then ``cont`` (a fresh boot, as pressing the power button);
* off: ``stop`` (the vCPUs halt at once: pulling the plug, without losing the chassis);
* cycle: ``system_reset`` (a hard reset) and ``cont`` if the guest was not running.

Don't start the guest with ``-no-reboot``: QEMU then turns every reset, QMP's included, into an exit.
"""

from __future__ import annotations

from typing import Any

from layerboot.server.monitor.power import PowerError, PowerTarget


class QmpDriver:
    def __init__(self, target: PowerTarget, *, timeout: float) -> None:
        self.target = target
        self.socket = str(target.options["socket"])

    async def run(self, action: str) -> str:
        from qemu.qmp import ConnectError, ExecuteError, QMPClient

        client = QMPClient("layerboot")
        try:
            await client.connect(self.socket)
        except ConnectError as err:
            raise PowerError(f"power {action} of {self.target.mac}: cannot connect to QMP socket {self.socket}: "
                             f"{err.exc if getattr(err, 'exc', None) else err}",
                             hint="is the QEMU guest running with -qmp unix:PATH,server=on,wait=off?") from None
        try:
            running = await self._running(client)
            if action == "on" and not running:
                await client.execute("system_reset")
                await client.execute("cont")
            elif action == "off" and running:
                await client.execute("stop")
            elif action == "cycle":
                await client.execute("system_reset")
                if not running:
                    await client.execute("cont")
            return "on" if await self._running(client) else "off"
        except ExecuteError as err:
            raise PowerError(f"power {action} of {self.target.mac}: QEMU refused: {err}") from None
        finally:
            await client.disconnect()

    @staticmethod
    async def _running(client: Any) -> bool:
        status = await client.execute("query-status")
        return bool(status.get("running"))  # type: ignore[union-attr]
