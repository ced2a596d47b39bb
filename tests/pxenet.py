"""A throwaway L2 network of network namespaces for the PXE tests: one bridge, one namespace per host.

Nothing leaves it: the bridge lives in its own namespace, hosts are joined to it by veth pairs, and a QEMU
guest joins through a tap device on the same bridge. Every name carries a per-test tag, and everything
(processes first, then namespaces) is removed on exit, whatever happened.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Sequence
from typing import IO

from layerboot.run import Process, Result, run

_counter = itertools.count()


class Lan:
    def __init__(self) -> None:
        self.tag = f"lbt{os.getpid() % 100000}x{next(_counter)}"
        self.bridge_ns = f"{self.tag}-lan"
        self.namespaces: list[str] = []
        self.processes: list[Process] = []

    def __enter__(self) -> "Lan":
        self._add_ns(self.bridge_ns)
        self.ip(self.bridge_ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self.ip(self.bridge_ns, "link", "set", "br0", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for proc in reversed(self.processes):
                try:
                    proc.terminate(timeout=5)
                except Exception:  # noqa: BLE001 - keep tearing down; the namespaces must go
                    proc.kill()
        finally:
            for ns in reversed(self.namespaces):
                run(["ip", "netns", "del", ns], check=False)

    def _add_ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")

    @staticmethod
    def ip(ns: str, *args: str) -> Result:
        return run(["ip", "-n", ns, *args])

    def host(self, role: str, cidr: str | None = None) -> str:
        """A new namespace with eth0 on the bridge (and an address if given); returns the namespace name."""
        ns = f"{self.tag}-{role}"
        self._add_ns(ns)
        port = f"v-{role}"[:15]
        self.ip(self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.ip(self.bridge_ns, "link", "set", port, "master", "br0", "up")
        self.ip(ns, "link", "set", "eth0", "up")
        if cidr:
            self.ip(ns, "addr", "add", cidr, "dev", "eth0")
        self._wait_up(ns, "eth0")
        self._wait_up(self.bridge_ns, port)
        self._wait_up(self.bridge_ns, "br0")
        return ns

    def tap(self, name: str) -> str:
        """A tap device on the bridge, for `qemu -netdev tap` run inside the bridge namespace."""
        self.ip(self.bridge_ns, "tuntap", "add", "dev", name, "mode", "tap")
        self.ip(self.bridge_ns, "link", "set", name, "master", "br0", "up")
        return name

    def _wait_up(self, ns: str, dev: str) -> None:
        """A fresh veth drops packets until the kernel's link watcher marks it up (up to ~1 s): wait for that."""
        def up() -> bool:
            result = run(["ip", "-n", ns, "-j", "link", "show", "dev", dev], check=False)
            return result.returncode == 0 and json.loads(result.text)[0].get("operstate") == "UP"
        wait_for(up, 10)

    def run(self, ns: str, argv: Sequence[str], **kwargs: object) -> Result:
        return run(["ip", "netns", "exec", ns, *argv], **kwargs)  # type: ignore[arg-type]

    def spawn(self, ns: str, argv: Sequence[str], *, log: IO[bytes] | None = None) -> Process:
        proc = Process(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=log)
        self.processes.append(proc)
        return proc


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
