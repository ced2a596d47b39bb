"""Logging set-up and the top-level handler that turns expected failures into one line and an exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from layerboot.diskspace import storage_error
from layerboot.errors import LayerbootError
from layerboot.safetext import printable

log = logging.getLogger("layerboot")


class SafeFormatter(logging.Formatter):
    """A formatter whose every record is one line with no terminal escapes (see layerboot.safetext).

    Log messages carry text from nodes and HTTP clients (boot-event messages, paths, user agents, file names):
    escaping them here, once, keeps a node from forging log lines or driving the admin's terminal. A traceback
    keeps its lines, each escaped the same way and indented, so that a newline inside an exception's message
    cannot start a line that passes for a record.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        return printable(super().formatMessage(record))

    def formatException(self, ei) -> str:  # noqa: ANN001, N802
        return "\n".join("  " + printable(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join("  " + printable(line) for line in super().formatStack(stack_info).splitlines())


class CliFormatter(SafeFormatter):
    """``layerboot: message`` for info, ``layerboot: warning: message`` and so on: the program's name, never
    a logger's (those are for the daemon's journal fields and for debugging with -vv); escaped as SafeFormatter
    escapes every record."""

    def __init__(self, prog: str = "layerboot") -> None:
        super().__init__("%(message)s")
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = "" if record.levelno == logging.INFO else record.levelname.lower() + ": "
        return f"{self.prog}: {level}{text}"


def setup_logging(*, verbose: int = 0, debug: bool = False, prog: str = "layerboot") -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv or --debug."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    if verbose >= 2 or debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CliFormatter(prog))
    root = logging.getLogger("layerboot")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run_main(body: Callable[[], int | None], *, debug: bool, prog: str) -> int:
    """Run a CLI body; expected errors print ``prog: error: ...`` (and a hint) and return their exit code.

    A full, read-only or failing disk (an OSError with ENOSPC, EDQUOT, EROFS or EIO, or SQLite's "database or
    disk is full" / I/O error) is an expected failure too: one line naming the file and the filesystem.
    Unexpected exceptions are bugs: they print one line too, and the traceback only with --debug.
    """
    try:
        return body() or 0
    except LayerbootError as err:
        return _expected(err, debug=debug, prog=prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:  # a bug: still one line unless --debug
        storage = storage_error(err)
        if storage is not None:
            try:
                return _expected(storage, debug=debug, prog=prog)
            except LayerbootError:
                raise err from None   # --debug: the original traceback
        if debug:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {printable(err)} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 70


def _expected(err: LayerbootError, *, debug: bool, prog: str) -> int:
    print(f"{prog}: error: {printable(err.message)}", file=sys.stderr)
    if err.hint:
        print(f"{prog}: hint: {printable(err.hint)}", file=sys.stderr)
    if debug:
        raise err
    return err.exit_code
