"""The one error type for expected failures: a message a user can act on, plus an optional hint."""

from __future__ import annotations


class LayerbootError(Exception):
    """An expected failure. The CLI prints it as one line (plus its hint) and exits with ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFoundError(LayerbootError):
    """The named thing (profile, layer, node, upload) does not exist: layerbootd answers 404 for it."""


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


def die(message: str, *, hint: str | None = None) -> "NoReturn":  # noqa: F821 - typing only
    """Abort the current operation with a one-line user-facing error."""
    raise LayerbootError(message, hint=hint)
