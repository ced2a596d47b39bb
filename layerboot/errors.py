"""The one error type for expected failures: a message a user can act on, plus an optional hint."""

from __future__ import annotations

import errno as errnos
from typing import NoReturn


class LayerbootError(Exception):
    """An expected failure. The CLI prints it as one line (plus its hint) and exits with ``exit_code``."""

    exit_code = 1
    http_status = 400   # what layerbootd answers when a request ends in this error

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFoundError(LayerbootError):
    """The named thing (profile, layer, node, upload) does not exist: layerbootd answers 404 for it."""

    http_status = 404


class StorageError(LayerbootError):
    """A full, read-only or failing filesystem (``errno`` is ENOSPC, EDQUOT, EROFS or EIO).

    Nothing is wrong with the input: the same operation succeeds once the disk is fixed, so the bake queue
    retries it. The message names the file and the filesystem (layerboot.diskspace builds it).
    """

    def __init__(self, message: str, *, errno: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno

    @property
    def http_status(self) -> int:  # type: ignore[override]
        """507 Insufficient Storage for a full disk or quota, 503 for a read-only or failing one."""
        return 507 if self.errno in (errnos.ENOSPC, errnos.EDQUOT) else 503


class CommandError(LayerbootError):
    """An external command failed: names the command, its exit status or signal, and its stderr tail."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str, *, timed_out: bool = False) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        if timed_out:
            status = "timed out"
        elif returncode is not None and returncode < 0:
            status = f"was killed by signal {-returncode}"
        else:
            status = f"exited with status {returncode}"
        tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:] if line.strip())
        message = f"command {argv[0]} {status}" + (f": {tail}" if tail else "")
        super().__init__(message, hint="command line: " + " ".join(self.argv))


def die(message: str, *, hint: str | None = None) -> NoReturn:
    """Abort the current operation with a one-line user-facing error."""
    raise LayerbootError(message, hint=hint)
