"""Loopback ports for services layerboot starts itself (the demo's layerbootd, benchmarks, tests)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.run import Process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: Process, what: str, *, log: Path | None = None,
                   timeout: float = 30.0) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; a clear error if ``process`` exits or time runs out."""
    hint = f"see its log {log}" if log is not None else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = process.poll()
        if status is not None:
            raise LayerbootError(f"{what} exited with status {status} at start", hint=hint)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise LayerbootError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s", hint=hint)
