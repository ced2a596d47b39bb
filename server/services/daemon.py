"""A running daemon as the site services see it: its pid, the sockets it listens on, restarting and signalling it.

The pid comes from the daemon's pid file when it has one and the process named there is that daemon, else from
systemd (``MainPID`` of its unit) when systemd runs this machine. Listening sockets are read from
``/proc/PID/net/{tcp,tcp6,udp,udp6}`` (the daemon's own network namespace) and matched to the daemon's open
sockets through ``/proc/PID/fd``, so a port held by another program does not count.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from layerboot.run import run, tool_path

SYSTEMD_RUNNING = Path("/run/systemd/system")      # sd_booted(): systemd is PID 1
TCP_LISTEN, UDP_BOUND = "0A", "07"


def systemd_running() -> bool:
    return SYSTEMD_RUNNING.is_dir()


@dataclass(frozen=True)
class Daemon:
    exe: str             # the process name (/proc/PID/comm), e.g. "rsyslogd"
    unit: str            # its systemd unit, e.g. "rsyslog.service"
    package: str         # the Debian package that has it
    pid_file: str = ""

    @property
    def installed(self) -> bool:
        return tool_path(self.exe) is not None

    def pid(self) -> int | None:
        """The daemon's pid, or None when it does not run (or cannot be found)."""
        if self.pid_file:
            try:
                pid = int(Path(self.pid_file).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = 0
            if pid > 0 and self._is_ours(pid):
                return pid
        if systemd_running() and self.unit:
            result = run(["systemctl", "show", "--property=MainPID", "--value", self.unit], check=False, timeout=15)
            text = result.text.strip()
            if result.returncode == 0 and text.isdigit() and int(text) > 0 and self._is_ours(int(text)):
                return int(text)
        return None

    def _is_ours(self, pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() == self.exe[:15]
        except OSError:
            return False

    def listening(self, pid: int) -> set[tuple[str, int]]:
        """(protocol, port) of every TCP socket listening and UDP socket bound by process ``pid``."""
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            return set()
        found = set()
        for protocol, state in (("tcp", TCP_LISTEN), ("udp", UDP_BOUND)):
            for family in ("", "6"):
                try:
                    lines = Path(f"/proc/{pid}/net/{protocol}{family}").read_text().splitlines()[1:]
                except OSError:
                    continue
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == state and fields[9] in inodes:
                        found.add((protocol, int(fields[1].rsplit(":", 1)[1], 16)))
        return found

    def restart(self) -> str:
        """Restart it so it reads its new configuration; returns what was done (one line for the report)."""
        if systemd_running():
            run(["systemctl", "restart", self.unit], timeout=120)     # a failure is a CommandError naming it
            return f"restarted {self.unit}"
        pid = self.pid()
        if pid is None:
            return f"{self.exe} is not running: start it to use the new configuration"
        return f"{self.exe} (pid {pid}) runs without systemd: restart it to use the new configuration"

    def hangup(self) -> str:
        """SIGHUP (re-read hosts files, lookup tables); returns what was done."""
        pid = self.pid()
        if pid is None:
            return f"{self.exe} is not running"
        try:
            os.kill(pid, signal.SIGHUP)
        except PermissionError:
            return f"{self.exe} (pid {pid}) could not be signalled (permission denied)"
        except ProcessLookupError:
            return f"{self.exe} (pid {pid}) exited"
        return f"signalled {self.exe} (pid {pid}, SIGHUP)"
