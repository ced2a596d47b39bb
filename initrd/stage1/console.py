"""Talking to the operator from PID 1: console lines, /dev/kmsg, the status file, child processes, emergencies.

Stdlib only and no ``subprocess`` (it pulls in selectors, signal handling and more): children are started with
``os.posix_spawn`` and reaped with ``waitpid``. Everything here must work when /proc, /dev or /run are missing.
"""

from __future__ import annotations

import os
import time

from . import remotelog

STATUS_DIR = "/run/layerboot"
STATUS_FILE = STATUS_DIR + "/status"
BUSYBOX = "/bin/busybox"
_debug = False
_t0 = time.monotonic()


class StageError(Exception):
    """An expected boot failure: its message is the one console line the operator sees."""


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def one_line(text: str) -> str:
    """``text`` with control characters and escape sequences written as ``\\xNN``/``\\uNNNN``: messages carry
    text from the server (HTTP error bodies), which must not drive the console or add lines to it."""
    if text.isprintable():
        return text
    return "".join(c if c == " " or c.isprintable() else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else
                   f"\\U{ord(c):08x}" for c in text)


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "replace")
    while data:
        try:
            written = os.write(fd, data)
        except OSError:
            return
        data = data[written:]


def kmsg(level: int, text: str) -> None:
    try:
        fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _write(fd, f"<{level}>layerboot: {one_line(text)}\n")
    finally:
        os.close(fd)


def _remote(kind: str, line: str) -> None:
    """The line to the site's log server too (remotelog.py); a server that stops taking lines is said once."""
    note = remotelog.record(kind, line)
    if note:
        _write(2, f"layerboot: {note}\n")


def say(text: str) -> None:
    """One line on the console (stderr of PID 1 is the kernel console)."""
    line = one_line(text)
    _write(2, f"layerboot: {line}\n")
    _remote("say", line)


def debug(text: str) -> None:
    if _debug:
        line = one_line(text)
        _write(2, f"layerboot[{time.monotonic() - _t0:7.3f}]: {line}\n")
        _remote("debug", line)


def error(text: str) -> None:
    """The one clear failure line: console, kernel log and the log server."""
    line = one_line(text)
    _write(2, f"layerboot: FAILED: {line}\n")
    kmsg(3, f"FAILED: {text}")
    _remote("error", f"FAILED: {line}")


def write_status(text: str) -> None:
    """Record the outcome where the booted system (or an emergency shell) can read it: /run/layerboot/status."""
    try:
        os.makedirs(STATUS_DIR, exist_ok=True)
        tmp = STATUS_FILE + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.rename(tmp, STATUS_FILE)
    except OSError:
        pass


def spawn(argv: list[str], *, quiet: bool = False, console: bool = False) -> tuple[int, str]:
    """Run a command to completion; return (status, stderr+stdout text). ``console`` attaches it to the console."""
    if console:
        pid = os.posix_spawn(argv[0], argv, os.environ)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), ""
    read_end, write_end = os.pipe()
    try:
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_DUP2, write_end, 2)]
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    except OSError as err:
        os.close(read_end)
        os.close(write_end)
        return 127, f"{argv[0]}: {err.strerror}"
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    output = b"".join(chunks).decode("utf-8", "replace").strip()
    code = os.waitstatus_to_exitcode(status)
    if code and not quiet:
        debug(f"{' '.join(argv)} -> {code}: {output}")
    return code, output


def busybox(*args: str) -> None:
    """Run a busybox applet; raise StageError with its message when it fails."""
    code, output = spawn([BUSYBOX, *args])
    if code:
        tail = output.splitlines()[-1] if output else f"status {code}"
        raise StageError(f"{args[0]} {' '.join(args[1:])}: {tail}")


def shell(reason: str) -> None:
    """An interactive busybox shell on the console; returns when the operator exits it."""
    say(f"{reason}: starting a shell (exit to continue)")
    os.environ.setdefault("PS1", "layerboot# ")
    try:
        spawn([BUSYBOX, "sh", "-i"], console=True)
    except OSError as err:
        say(f"cannot start {BUSYBOX} sh: {err.strerror}")


def emergency(action: str) -> None:
    """Act on layerboot.emergency= after a failure. PID 1 never returns from here and never exits."""
    while True:
        if action == "shell":
            shell("emergency")
            say("emergency shell exited: rebooting")
            action = "reboot"
            continue
        os.sync()
        say(f"emergency action: {action}")
        spawn([BUSYBOX, action, "-f"], quiet=True)
        # Still here (the applet is missing?): do not let PID 1 exit, which would panic the kernel.
        while True:
            time.sleep(3600)

