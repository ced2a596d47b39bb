"""The one command runner. No other module imports subprocess.

Every external command runs from an argv list (never a shell), with stdin from /dev/null unless input is
given, a timeout, a minimal environment, and failures raised as :class:`CommandError` naming the command,
its status and its stderr tail. This module is stdlib-only so stage1 can ship it.

The environment is a fixed PATH plus what a user sets on purpose and a command should see: proxy
variables, ``SOURCE_DATE_EPOCH`` (reproducible builds), the locale (``C.UTF-8`` when none is set), ``TZ`` and
``TMPDIR``. Nothing else of the caller's environment leaks into a command.

A long command can stream its output lines (stdout and stderr, split at ``\n`` and ``\r`` so progress bars
count) into a callback, e.g. a :class:`layerboot.progress.Progress`, while it runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import shlex
import shutil
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from layerboot.errors import CommandError, LayerbootError

log = logging.getLogger("layerboot.run")

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}
DEFAULT_LOCALE = {"LANG": "C.UTF-8"}
# what the caller set on purpose and commands should see (curl, apt, debootstrap, pip honour the proxies)
PASSED_THROUGH = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy",
                  "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY", "NO_PROXY",
                  "SOURCE_DATE_EPOCH", "TZ", "TMPDIR", "LANG", "LANGUAGE")
# for commands whose messages are parsed or that run inside a chroot without the caller's locales
C_LOCALE = {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
DEFAULT_TIMEOUT = 600.0
_LINE_END = re.compile(rb"[\r\n]")


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def passed_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's variables a command gets: proxies, SOURCE_DATE_EPOCH, locale, TZ, TMPDIR."""
    environ = os.environ if environ is None else environ
    kept = {k: v for k, v in environ.items() if k in PASSED_THROUGH or k.startswith("LC_")}
    if not any(k == "LANG" or k.startswith("LC_") for k in kept):
        kept.update(DEFAULT_LOCALE)
    return kept


def _env(extra: Mapping[str, str | None] | None) -> dict[str, str]:
    """BASE_ENV + the passed-through variables + ``extra`` (a value of None removes that variable)."""
    env = dict(BASE_ENV)
    env.update(passed_environment())
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def require_tool(name: str, *, package: str | None = None) -> str:
    """Return the full path of an external tool, or fail with a hint naming the package to install."""
    found = shutil.which(name, path=BASE_ENV["PATH"])
    if not found:
        raise LayerbootError(f"required tool {name!r} is not installed",
                             hint=f"install the Debian package {package or name!r}")
    return found


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    stdin: IO[bytes] | int | None = None,
    stdout: IO[bytes] | int | None = None,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    lines: Callable[[str], None] | None = None,
    terminal: bool = False,
) -> Result:
    """Run a command to completion and return its output; raise CommandError on failure when check is set.

    stdout is captured unless a file object is given (for streaming large outputs to disk). With ``lines``,
    every output line (stdout unless redirected, and stderr) is passed to it as it arrives; ``terminal`` gives
    the command a pseudo-terminal as stdout, for tools that draw progress only on a terminal (mksquashfs).
    """
    args = [os.fspath(a) for a in argv]
    log.debug("run: %s", shlex.join(args))
    if input is not None and stdin is not None:
        raise ValueError("give input or stdin, not both")
    if lines is not None:
        return _run_streaming(args, lines, input=input, stdin=stdin, stdout=stdout, check=check, timeout=timeout,
                              env=env, cwd=cwd, terminal=terminal)
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=stdin if stdin is not None else (None if input is not None else subprocess.DEVNULL),
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            env=_env(env),
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError:
        raise LayerbootError(f"command {args[0]!r} not found", hint="is the package that provides it installed?")
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode("utf-8", "replace")
        raise CommandError(args, None, stderr, timed_out=True) from None
    result = Result(args, proc.returncode, proc.stdout or b"", proc.stderr or b"")
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, result.stderr.decode("utf-8", "replace"))
    return result


def _read_terminal(fd: int) -> Callable[[int], bytes]:
    def read(size: int) -> bytes:
        try:
            return os.read(fd, size)
        except OSError:          # EIO: the child closed its end of the pseudo-terminal
            return b""
    return read


def _pump(read: Callable[[int], bytes], keep: list[bytes], lines: Callable[[str], None]) -> None:
    """Read a child's output to its end: keep every byte, hand each complete line to ``lines``."""
    pending = b""
    while chunk := read(65536):
        keep.append(chunk)
        pending += chunk
        *complete, pending = _LINE_END.split(pending)
        for raw in complete:
            if raw.strip():
                lines(raw.decode("utf-8", "replace").rstrip())
    if pending.strip():
        lines(pending.decode("utf-8", "replace").rstrip())


def _run_streaming(args: list[str], lines: Callable[[str], None], *, input: bytes | None,
                   stdin: IO[bytes] | int | None, stdout: IO[bytes] | int | None, check: bool,
                   timeout: float | None, env: Mapping[str, str | None] | None,
                   cwd: str | os.PathLike[str] | None, terminal: bool) -> Result:
    master = slave = -1
    if terminal and stdout is None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # tools size bars by it
        stdout = slave
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE if input is not None else (stdin if stdin is not None else subprocess.DEVNULL),
            stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
            env=_env(env), cwd=cwd)
    except FileNotFoundError:
        if master >= 0:
            os.close(master)
        raise LayerbootError(f"command {args[0]!r} not found", hint="is the package that provides it installed?")
    finally:
        if slave >= 0:
            os.close(slave)
    out: list[bytes] = []
    err: list[bytes] = []
    assert proc.stderr is not None
    readers: list[tuple[Callable[[int], bytes], list[bytes]]] = [(proc.stderr.read1, err)]  # type: ignore[attr-defined]
    if master >= 0:
        readers.append((_read_terminal(master), out))
    elif proc.stdout is not None:
        readers.append((proc.stdout.read1, out))  # type: ignore[attr-defined]
    pumps = [threading.Thread(target=_pump, args=(read, keep, lines), daemon=True) for read, keep in readers]
    for pump in pumps:
        pump.start()
    if input is not None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(input)
        except BrokenPipeError:
            pass
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for pump in pumps:
            pump.join()
        if master >= 0:
            os.close(master)
        raise CommandError(args, None, b"".join(err).decode("utf-8", "replace"), timed_out=True) from None
    for pump in pumps:
        pump.join()
    if master >= 0:
        os.close(master)
    result = Result(args, proc.returncode, b"".join(out), b"".join(err))
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, result.stderr.decode("utf-8", "replace"))
    return result


class Process:
    """A long-running child (a daemon, a QEMU guest, a pipeline stage) that is always reaped."""

    def __init__(self, argv: Sequence[str | os.PathLike[str]], *, stdin: IO[bytes] | int | None = None,
                 stdout: IO[bytes] | int | None = None, stderr: IO[bytes] | int | None = None,
                 env: Mapping[str, str | None] | None = None, cwd: str | os.PathLike[str] | None = None,
                 pass_fds: Sequence[int] = ()) -> None:
        self.argv = [os.fspath(a) for a in argv]
        log.debug("spawn: %s", shlex.join(self.argv))
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=stderr if stderr is not None else subprocess.PIPE,
                env=_env(env), cwd=cwd, pass_fds=tuple(pass_fds),
            )
        except FileNotFoundError:
            raise LayerbootError(f"command {self.argv[0]!r} not found",
                                 hint="is the package that provides it installed?") from None

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def stdin(self) -> IO[bytes] | None:
        return self._popen.stdin

    @property
    def stdout(self) -> IO[bytes] | None:
        return self._popen.stdout

    @property
    def stderr(self) -> IO[bytes] | None:
        return self._popen.stderr

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None, *, check: bool = False) -> int:
        try:
            rc = self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandError(self.argv, None, "", timed_out=True) from None
        if check and rc != 0:
            err = self._popen.stderr.read().decode("utf-8", "replace") if self._popen.stderr else ""
            raise CommandError(self.argv, rc, err)
        return rc

    def terminate(self, timeout: float = 10.0) -> int:
        """Stop the child: SIGTERM, then SIGKILL after ``timeout`` seconds. Returns its exit status."""
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if pipe:
                pipe.close()
        return self._popen.returncode

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def devnull() -> int:
    return subprocess.DEVNULL


def tool_path(name: str, *extra_dirs: Path) -> str | None:
    """Find a tool on the fixed PATH plus extra directories (None when absent)."""
    path = os.pathsep.join([BASE_ENV["PATH"], *map(str, extra_dirs)])
    return shutil.which(name, path=path)
