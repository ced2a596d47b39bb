"""Talking to systemd with the standard library only: sd_notify and the journal's native protocol.

Both are one datagram on an AF_UNIX socket (see sd_notify(3) and https://systemd.io/JOURNAL_NATIVE_PROTOCOL/),
so a dependency (the ``systemd`` package needs libsystemd headers to build) buys nothing here.

* :func:`notify` sends ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``WATCHDOG=1`` and ``STATUS=...`` to
  ``$NOTIFY_SOCKET`` (a no-op when the variable is unset, i.e. not started by systemd with Type=notify);
* :func:`watchdog_interval` says how often to send ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``);
* :class:`JournalHandler` sends log records with structured fields (``PRIORITY``, ``SYSLOG_IDENTIFIER``,
  ``LOGGER``, ``CODE_*`` and whatever the record carries in ``extra={"fields": {...}}``, e.g. an access log
  line's ``REMOTE_ADDR``, ``STATUS``, ``DURATION_MS``), so ``journalctl -u layerbootd STATUS=404`` works.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import time
from collections.abc import Mapping

from layerboot.log import SafeFormatter
from layerboot.safetext import printable

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
FIELD_RE = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")
MAX_DATAGRAM = 200_000       # journald takes datagrams up to its socket buffer; keep well below the default


def _socket_address(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address   # abstract namespace


def notify(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send states to the service manager; False when there is none to tell (not an error)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_socket_address(address))
            sock.sendall("\n".join(states).encode("utf-8"))
    except OSError:
        return False
    return True


def reloading_states() -> tuple[str, str]:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` systemd wants next to it."""
    return "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the configured timeout), or None when no watchdog is set."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when systemd connected stderr to the journal ($JOURNAL_STREAM names stderr's device:inode)."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def encode_fields(fields: Mapping[str, object]) -> bytes:
    """The journal's native datagram: ``KEY=value\\n``, or ``KEY\\n<u64 length><value>\\n`` for multi-line values."""
    out = bytearray()
    for key, value in fields.items():
        if not FIELD_RE.match(key) or value is None:
            continue
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Log records to journald with structured fields; falls back to stderr lines if the socket fails."""

    def __init__(self, identifier: str, *, socket_path: str = JOURNAL_SOCKET,
                 fallback: logging.Handler | None = None) -> None:
        super().__init__()
        self.identifier = identifier
        self.socket_path = socket_path
        self.fallback = fallback
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        # node and client text is escaped here as in every other log line (layerboot.log.SafeFormatter)
        message = printable(record.getMessage())
        if record.exc_info:
            message += "\n" + SafeFormatter().formatException(record.exc_info)
        fields: dict[str, object] = {
            "MESSAGE": message, "PRIORITY": PRIORITIES.get(record.levelno, 6),
            "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name,
            "CODE_FILE": record.pathname, "CODE_LINE": record.lineno, "CODE_FUNC": record.funcName,
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            fields[key.upper()] = printable(value) if isinstance(value, str) else value
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_fields(self.fields(record))
            if len(data) > MAX_DATAGRAM:
                record.msg, record.args = record.getMessage()[:4000] + " [cut]", ()
                data = encode_fields(self.fields(record))
            self._sock.sendto(data, self.socket_path)
        except OSError:
            if self.fallback is not None:
                self.fallback.handle(record)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()
